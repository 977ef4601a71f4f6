//! Moving bytes between the client and the real server with splice(2): data goes from
//! one socket into a pipe and from the pipe into the other socket inside the kernel,
//! so the proxy never copies payload through user space and holds no per-connection
//! buffers (10,000 idle HL7 links cost almost nothing).
//!
//! Each direction runs until its source says end-of-file, then half-closes the
//! destination (`shutdown(SHUT_WR)`), so protocols that close one side first keep
//! working. The relay ends when both directions are done or either fails.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes asked of splice at a time; also the pipe size we request.
const CHUNK: usize = 256 * 1024;

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

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A larger pipe means fewer system calls per megabyte; the kernel may refuse
        // (pipe-max-size, per-user limits) and then the default 64 KiB serves.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
        Ok(Pipe { read, write })
    }
}

/// Relays until both directions have ended. Errors (a reset, a broken pipe) end both.
pub async fn relay(client: &TcpStream, server: &TcpStream) -> io::Result<Transferred> {
    let up = Pipe::new()?;
    let down = Pipe::new()?;
    let (a, b) = tokio::try_join!(one_way(client, server, &up), one_way(server, client, &down))?;
    Ok(Transferred {
        client_to_server: a,
        server_to_client: b,
    })
}

async fn one_way(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<u64> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        let filled = from
            .async_io(Interest::READABLE, || {
                splice(from.as_fd(), None, &pipe.write, None, CHUNK, flags).map_err(io::Error::from)
            })
            .await?;
        if filled == 0 {
            // End of file from the source: pass the half-close on.
            shutdown_write(to);
            return Ok(total);
        }
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
        total += filled as u64;
    }
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
