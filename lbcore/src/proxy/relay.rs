//! Moving bytes between the client and the real server.
//!
//! Small reads (HL7 messages, DICOM responses, request/reply traffic) are copied through
//! one buffer per worker thread and written on at once: two system calls per message
//! and no per-connection buffer. When a read fills that buffer the direction is
//! carrying bulk data (DICOM images), and it switches to splice(2): data goes from one
//! socket into a pipe and from the pipe into the other socket inside the kernel, so the
//! payload is never copied through user space. It stays with splice through a few small
//! transfers (the end of one image and the command that opens the next), so a study's
//! images do not each start with a copy through user space. Pipes come from a shared
//! pool and go back to it as soon as they are empty, so an idle connection holds only
//! its two sockets (10,000 idle HL7 links cost almost nothing, in memory or descriptors).
//!
//! Each direction runs until its source says end-of-file, then half-closes the
//! destination (`shutdown(SHUT_WR)`), so protocols that close one side first keep
//! working. The relay ends when both directions are done or either fails. The direction
//! that ends last skips the shutdown: both sockets are closed right after, and closing
//! a socket whose peer has already sent its FIN sends our FIN just the same.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes asked of splice at a time; also the pipe size we request.
const CHUNK: usize = 256 * 1024;
/// The copy buffer of each worker thread. A read that fills it switches its direction
/// to splice; `SMALL_TO_COPY` splices in a row that each move less than this switch it
/// back to copying.
const COPY: usize = 16 * 1024;
/// Small transfers a direction in splice mode allows before it goes back to copying. A
/// DICOM association sends, between two images' data, the tail of one image and the
/// next C-STORE command: two small transfers that should not cost the next image a
/// round through user space. An HL7 link that once carried one large message is back
/// to copying after this many messages.
const SMALL_TO_COPY: u32 = 4;
/// Empty pipes kept for reuse (each is two descriptors and a little kernel memory).
const POOL_MAX: usize = 128;

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub client_to_server: u64,
    pub server_to_client: u64,
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

thread_local! {
    static BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; COPY].into_boxed_slice());
}

impl Pipe {
    /// An empty pipe from the pool, or a new one.
    fn take() -> io::Result<Pipe> {
        if let Some(p) = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(p);
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A larger pipe means fewer system calls per megabyte; the kernel may refuse
        // (pipe-max-size, per-user limits) and then the default 64 KiB serves.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
        Ok(Pipe { read, write })
    }

    /// Gives an empty pipe back for reuse (a pipe still holding data is just dropped).
    fn give_back(self) {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(self);
        }
    }
}

/// Relays until both directions have ended. Errors (a reset, a broken pipe) end both.
/// The caller closes both sockets when it returns.
pub async fn relay(client: &TcpStream, server: &TcpStream) -> io::Result<Transferred> {
    let ended = AtomicBool::new(false);
    let (a, b) = tokio::try_join!(
        one_way(client, server, &ended),
        one_way(server, client, &ended)
    )?;
    Ok(Transferred {
        client_to_server: a,
        server_to_client: b,
    })
}

/// `ended` is set by whichever direction ends first.
async fn one_way(from: &TcpStream, to: &TcpStream, ended: &AtomicBool) -> io::Result<u64> {
    let mut total = 0u64;
    let mut bulk = false;
    // Small splices in a row, while `bulk`.
    let mut small = 0u32;
    // Bytes read but not yet accepted by `to` (only while `to` is slow).
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let moved = if bulk {
            let n = splice_once(from, to).await?;
            small = if n >= COPY { 0 } else { small + 1 };
            bulk = small < SMALL_TO_COPY;
            n
        } else {
            let (n, sent) = when_readable(from, || {
                let (n, sent) = copy_once(from, to, &mut pending)?;
                // A short read emptied the socket's receive queue (recv copies until
                // the queue or the buffer runs out), so the next read would only say
                // EAGAIN: tell tokio now and save that system call per message.
                Ok(((n, sent), n > 0 && n < COPY))
            })
            .await?;
            if sent < n {
                write_all(to, &pending).await?;
                pending = Vec::new();
            }
            if n == COPY {
                bulk = true;
                small = 0;
            }
            n
        };
        if moved == 0 {
            // End of file from the source: pass the half-close on, unless the other
            // direction has ended too and the close that follows does it.
            if !ended.swap(true, Ordering::Relaxed) {
                shutdown_write(to);
            }
            return Ok(total);
        }
        total += moved as u64;
        super::busy_poll::note_traffic();
    }
}

/// Runs `op` once `from` is readable. `op` returns its result and whether it drained
/// the socket; then tokio forgets the readiness at once instead of learning it from a
/// read that fails with EAGAIN. Safe against a race with new data: tokio only clears
/// readiness it has not seen change since `op` started (an event that arrives meanwhile
/// bumps its tick and is kept).
async fn when_readable<R>(
    from: &TcpStream,
    mut op: impl FnMut() -> io::Result<(R, bool)>,
) -> io::Result<R> {
    loop {
        from.readable().await?;
        let mut out = None;
        let tried = from.try_io(Interest::READABLE, || {
            let (r, drained) = op()?;
            out = Some(r);
            if drained {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match (out, tried) {
            (Some(r), _) => return Ok(r),
            // Readiness was stale (the read said EAGAIN): wait for the next event.
            (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
            (None, Err(e)) => return Err(e),
            (None, Ok(())) => continue,
        }
    }
}

/// One read into this thread's buffer and an immediate write of what was read. Returns
/// (read, written); what `to` did not take is left in `pending`. Only the read may
/// report WouldBlock, so that tokio clears the right readiness.
fn copy_once(
    from: &TcpStream,
    to: &TcpStream,
    pending: &mut Vec<u8>,
) -> io::Result<(usize, usize)> {
    BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        // SAFETY: the buffer is valid for its length and borrowed mutably here.
        let n = unsafe {
            libc::recv(
                from.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let mut sent = 0;
        while sent < n {
            // SAFETY: the slice is valid; MSG_NOSIGNAL turns SIGPIPE into EPIPE.
            let w = unsafe {
                libc::send(
                    to.as_raw_fd(),
                    buffer[sent..n].as_ptr().cast(),
                    n - sent,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if w < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            sent += w as usize;
        }
        if sent < n {
            pending.extend_from_slice(&buffer[sent..n]);
        }
        Ok((n, sent))
    })
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = to
            .async_io(Interest::WRITABLE, || {
                // SAFETY: as in copy_once.
                let w = unsafe {
                    libc::send(
                        to.as_raw_fd(),
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if w < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(w as usize)
                }
            })
            .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "peer accepted no data",
            ));
        }
        data = &data[n..];
    }
    Ok(())
}

/// One splice from `from` into a pooled pipe and on into `to`; returns the bytes moved
/// (0 at end of file). The pipe goes back to the pool once it is empty.
async fn splice_once(from: &TcpStream, to: &TcpStream) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut pipe: Option<Pipe> = None;
    let filled = from
        .async_io(Interest::READABLE, || {
            if pipe.is_none() {
                pipe = Some(Pipe::take()?);
            }
            let p = pipe.as_ref().expect("taken above");
            let r =
                splice(from.as_fd(), None, &p.write, None, CHUNK, flags).map_err(io::Error::from);
            if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                // Nothing to read after all: an idle connection holds no pipe.
                if let Some(p) = pipe.take() {
                    p.give_back();
                }
            }
            r
        })
        .await?;
    let pipe = pipe.expect("a pipe was taken before splicing");
    let mut left = filled;
    while left > 0 {
        let sent = to
            .async_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, to.as_fd(), None, left, flags).map_err(io::Error::from)
            })
            .await?;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "peer accepted no data",
            ));
        }
        left -= sent;
    }
    pipe.give_back();
    Ok(filled)
}

fn shutdown_write(stream: &TcpStream) {
    // Fails only when the socket is already disconnected, which the other direction
    // will see on its own.
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A proxied pair: (client end, server end), with the relay running between.
    async fn proxied() -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<io::Result<Transferred>>,
    ) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (inner_client, _) = front.accept().await.unwrap();
        let inner_server = TcpStream::connect(back.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = back.accept().await.unwrap();
        let task = tokio::spawn(async move { relay(&inner_client, &inner_server).await });
        (client, server, task)
    }

    #[tokio::test]
    async fn moves_bulk_data_intact_both_ways() {
        let (mut client, mut server, task) = proxied().await;
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&data).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "payload changed in transit");
        // Half-closed by the client, the server can still answer.
        server.write_all(b"stored").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"stored");
        let t = task.await.unwrap().unwrap();
        assert_eq!(t.client_to_server, 5_000_000);
        assert_eq!(t.server_to_client, 6);
    }

    #[tokio::test]
    async fn a_slow_reader_gets_bulk_data_intact() {
        // The server reads in small bites with pauses, so the relay's writes block with
        // data in its pipe while more keeps arriving from the client.
        let (mut client, mut server, task) = proxied().await;
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i * 13 + i / 509) as u8)
            .collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&data).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        let mut bite = vec![0u8; 7_000];
        for reads in 1.. {
            let n = server.read(&mut bite).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&bite[..n]);
            if reads % 25 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        assert!(got == expected, "payload changed in transit");
        drop(server);
        drop(writer.await.unwrap());
        assert_eq!(task.await.unwrap().unwrap().client_to_server, 3_000_000);
    }

    #[tokio::test]
    async fn images_and_small_replies_alternate_intact() {
        // A DICOM association's pattern: a small command, a large data set, a small
        // response, again and again, so each direction switches between copying and
        // splicing many times and must never lose or reorder a byte doing it.
        let (mut client, mut server, task) = proxied().await;
        let image = |i: usize| -> Vec<u8> {
            (0..200_000 + i * 10_007)
                .map(|j| (j * 31 + i * 7 + j / 97) as u8)
                .collect()
        };
        let command = |i: usize| format!("C-STORE-RQ {i:04}").into_bytes();
        let scu = tokio::spawn(async move {
            for i in 0..12 {
                client.write_all(&command(i)).await.unwrap();
                client.write_all(&image(i)).await.unwrap();
                let mut rsp = [0u8; 15];
                client.read_exact(&mut rsp).await.unwrap();
                assert_eq!(&rsp, format!("C-STORE-RSP {i:03}").as_bytes());
            }
            client.shutdown().await.unwrap();
        });
        for i in 0..12 {
            let expected = [command(i), image(i)].concat();
            let mut got = vec![0u8; expected.len()];
            server.read_exact(&mut got).await.unwrap();
            assert!(got == expected, "image {i} changed in transit");
            server
                .write_all(format!("C-STORE-RSP {i:03}").as_bytes())
                .await
                .unwrap();
        }
        scu.await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop(server);
        let t = task.await.unwrap().unwrap();
        assert_eq!(t.server_to_client, 12 * 15);
    }

    #[tokio::test]
    async fn server_half_close_reaches_client() {
        let (mut client, mut server, task) = proxied().await;
        server.write_all(b"banner").await.unwrap();
        server.shutdown().await.unwrap();
        let mut buf = Vec::new();
        client.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"banner");
        // The client may still send after the server's half-close.
        client.write_all(b"late").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"late");
        task.await.unwrap().unwrap();
    }
}
