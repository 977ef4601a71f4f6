//! `lbbench`: the peer servers and load generators of `tests/bench`. Each client command
//! prints one JSON line with its measurement; `serve` runs every server at once.
//!
//! Protocols (all plain TCP, so a proxy sees only bytes):
//! - bulk: the client writes for a fixed time, half-closes, and the server answers with
//!   the number of bytes it received (8 bytes, little endian) — throughput is what
//!   actually arrived, not what sat in socket buffers.
//! - rate: a new connection per request; the client sends 64 bytes whose first four
//!   say how long the reply is, reads the reply and closes. The server answers, then
//!   waits for the client's end-of-file.
//! - mllp: HL7 v2 messages framed by MLLP (VT ... FS CR) on long-lived connections; the
//!   server answers each with an ACK (MSA|AA|<MSH-10>).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream as StdStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REQUEST: usize = 64;
const BULK_CHUNK: usize = 256 * 1024;
const VT: u8 = 0x0b;
const FS: u8 = 0x1c;
const CR: u8 = 0x0d;

#[derive(Parser)]
#[command(about = "Peer servers and load generators for the lbcore benchmarks")]
struct Args {
    /// Tokio worker threads (servers and the rate/mllp/hold clients).
    #[arg(long, default_value_t = 2, global = true)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the bulk, rate and MLLP servers until killed.
    Serve {
        #[arg(long)]
        bulk: SocketAddr,
        #[arg(long)]
        rate: SocketAddr,
        #[arg(long)]
        mllp: SocketAddr,
    },
    /// Bulk throughput over `streams` concurrent connections.
    Bulk {
        target: SocketAddr,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
    },
    /// New connections per second, each one request and reply.
    Rate {
        target: SocketAddr,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
        /// Reply size in bytes.
        #[arg(long, default_value_t = 512)]
        reply: u32,
    },
    /// HL7 MLLP messages per second, one ACK per message, on long-lived connections.
    Mllp {
        target: SocketAddr,
        #[arg(long, default_value_t = 16)]
        conns: usize,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
    },
    /// Opens `count` connections, makes one exchange on each (so the proxy has connected
    /// them through), prints `{"established": N}` and holds them until stdin closes.
    Hold {
        target: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    raise_file_limit();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads.max(1))
            .enable_all()
            .build()
    };
    match args.cmd {
        Cmd::Serve { bulk, rate, mllp } => runtime()?.block_on(serve(bulk, rate, mllp)),
        Cmd::Bulk {
            target,
            streams,
            secs,
        } => bulk_client(target, streams, Duration::from_secs_f64(secs)),
        Cmd::Rate {
            target,
            clients,
            secs,
            warmup,
            reply,
        } => runtime()?.block_on(rate_client(
            target,
            clients,
            Duration::from_secs_f64(secs),
            Duration::from_secs_f64(warmup),
            reply,
        )),
        Cmd::Mllp {
            target,
            conns,
            secs,
            warmup,
        } => runtime()?.block_on(mllp_client(
            target,
            conns,
            Duration::from_secs_f64(secs),
            Duration::from_secs_f64(warmup),
        )),
        Cmd::Hold { target, count } => runtime()?.block_on(hold(target, count)),
    }
}

fn raise_file_limit() {
    // SAFETY: plain system calls on a stack value.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    s.listen(4096)?;
    Ok(TcpListener::from_std(s.into())?)
}

async fn serve(bulk: SocketAddr, rate: SocketAddr, mllp: SocketAddr) -> Result<()> {
    let (b, r, m) = (listen(bulk)?, listen(rate)?, listen(mllp)?);
    tokio::spawn(accept(b, bulk_conn));
    tokio::spawn(accept(r, rate_conn));
    accept(m, mllp_conn).await;
    Ok(())
}

async fn accept<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(handler(s));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn bulk_conn(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; BULK_CHUNK];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    s.write_all(&total.to_le_bytes()).await?;
    s.shutdown().await
}

async fn rate_conn(mut s: TcpStream) -> std::io::Result<()> {
    let mut req = [0u8; REQUEST];
    s.read_exact(&mut req).await?;
    let len = u32::from_le_bytes(req[..4].try_into().unwrap()) as usize;
    let reply = vec![b'r'; len.min(1 << 20)];
    s.write_all(&reply).await?;
    // Wait for the client to close first (as an HTTP/1.0 client would).
    let mut rest = [0u8; 64];
    while s.read(&mut rest).await? > 0 {}
    Ok(())
}

async fn mllp_conn(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut out = Vec::with_capacity(512);
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        out.clear();
        let mut start = 0;
        while let Some(end) = find_frame_end(&buf[start..]) {
            let frame = &buf[start..start + end];
            let body = frame.strip_prefix(&[VT]).unwrap_or(frame);
            ack(body, &mut out);
            start += end + 2;
        }
        buf.drain(..start);
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
    }
}

/// Offset of the FS CR that ends the first frame in `b`.
fn find_frame_end(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == [FS, CR])
}

fn ack(message: &[u8], out: &mut Vec<u8>) {
    let msh = message.split(|&c| c == CR).next().unwrap_or(b"");
    let control = msh.split(|&c| c == b'|').nth(9).unwrap_or(b"");
    out.push(VT);
    out.extend_from_slice(b"MSH|^~\\&|BENCH|LAB|SENDER|LAB|20261128120000||ACK^A01|");
    out.extend_from_slice(control);
    out.extend_from_slice(b"|P|2.5\rMSA|AA|");
    out.extend_from_slice(control);
    out.push(CR);
    out.push(FS);
    out.push(CR);
}

fn bulk_client(target: SocketAddr, streams: usize, secs: Duration) -> Result<()> {
    let start = Instant::now();
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            std::thread::spawn(move || -> Result<u64> {
                let mut s = StdStream::connect(target)?;
                let buf = vec![0x5au8; BULK_CHUNK];
                let until = Instant::now() + secs;
                while Instant::now() < until {
                    s.write_all(&buf)?;
                }
                s.shutdown(Shutdown::Write)?;
                let mut n = [0u8; 8];
                s.read_exact(&mut n)?;
                Ok(u64::from_le_bytes(n))
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| anyhow::anyhow!("stream panicked"))??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"bytes\": {total}, \"secs\": {elapsed:.4}, \"gbit_s\": {:.4}}}",
        total as f64 * 8.0 / elapsed / 1e9
    );
    Ok(())
}

struct Tally {
    done: u64,
    errors: u64,
    micros: Vec<u32>,
}

fn report(name: &str, tallies: Vec<Tally>, secs: Duration) {
    let mut micros: Vec<u32> = Vec::new();
    let (mut done, mut errors) = (0, 0);
    for t in tallies {
        done += t.done;
        errors += t.errors;
        micros.extend(t.micros);
    }
    micros.sort_unstable();
    let pct = |p: f64| -> f64 {
        if micros.is_empty() {
            return 0.0;
        }
        let i = ((micros.len() as f64 * p).ceil() as usize).clamp(1, micros.len()) - 1;
        micros[i] as f64 / 1000.0
    };
    println!(
        "{{\"{name}_per_s\": {:.1}, \"count\": {done}, \"errors\": {errors}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
        done as f64 / secs.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    );
}

async fn rate_client(
    target: SocketAddr,
    clients: usize,
    secs: Duration,
    warmup: Duration,
    reply: u32,
) -> Result<()> {
    let begin = Instant::now() + warmup;
    let end = begin + secs;
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(rate_task(target, begin, end, reply)))
        .collect();
    let mut tallies = Vec::new();
    for t in tasks {
        tallies.push(t.await?);
    }
    if tallies.iter().all(|t| t.done == 0) {
        bail!("no request succeeded");
    }
    report("conn", tallies, secs);
    Ok(())
}

async fn rate_task(target: SocketAddr, begin: Instant, end: Instant, reply: u32) -> Tally {
    let mut t = Tally {
        done: 0,
        errors: 0,
        micros: Vec::with_capacity(8192),
    };
    let mut req = [b'q'; REQUEST];
    req[..4].copy_from_slice(&reply.to_le_bytes());
    let mut buf = vec![0u8; reply as usize];
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            return t;
        }
        let r = async {
            let mut s = TcpStream::connect(target).await?;
            s.set_nodelay(true)?;
            s.write_all(&req).await?;
            s.read_exact(&mut buf).await?;
            std::io::Result::Ok(())
        }
        .await;
        let t1 = Instant::now();
        if t0 >= begin && t1 <= end {
            match r {
                Ok(()) => {
                    t.done += 1;
                    t.micros.push((t1 - t0).as_micros() as u32);
                }
                Err(_) => t.errors += 1,
            }
        }
        if r.is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn mllp_client(
    target: SocketAddr,
    conns: usize,
    secs: Duration,
    warmup: Duration,
) -> Result<()> {
    let begin = Instant::now() + warmup;
    let end = begin + secs;
    let mut streams = Vec::new();
    for _ in 0..conns {
        let s = TcpStream::connect(target).await?;
        s.set_nodelay(true)?;
        streams.push(s);
    }
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(mllp_task(s, i, begin, end)))
        .collect();
    let mut tallies = Vec::new();
    for t in tasks {
        tallies.push(t.await??);
    }
    report("msg", tallies, secs);
    Ok(())
}

async fn mllp_task(
    mut s: TcpStream,
    index: usize,
    begin: Instant,
    end: Instant,
) -> std::io::Result<Tally> {
    let mut t = Tally {
        done: 0,
        errors: 0,
        micros: Vec::with_capacity(65536),
    };
    let mut msg = Vec::with_capacity(512);
    let mut buf = vec![0u8; 4096];
    for seq in 0u64.. {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        msg.clear();
        msg.push(VT);
        msg.extend_from_slice(
            format!(
                "MSH|^~\\&|ADT1|HOSP|BENCH|LAB|20261128120000||ADT^A01^ADT_A01|C{index}-{seq}|P|2.5\r\
                 EVN|A01|20261128120000\r\
                 PID|1||PAT{seq:08}^^^HOSP^MR||DOE^JANE^Q||19700101|F|||1 MAIN ST^^TOWN^ST^12345||555-0100\r\
                 PV1|1|I|WARD^101^A|||||||MED||||||||V{seq:08}\r"
            )
            .as_bytes(),
        );
        msg.extend_from_slice(&[FS, CR]);
        s.write_all(&msg).await?;
        // Read one ACK frame.
        let mut have = 0;
        loop {
            let n = s.read(&mut buf[have..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            have += n;
            if have >= 2 && buf[have - 2..have] == [FS, CR] {
                break;
            }
            if have == buf.len() {
                return Err(std::io::Error::other("ACK too long"));
            }
        }
        if !buf[..have].windows(7).any(|w| w == b"MSA|AA|") {
            return Err(std::io::Error::other("not an AA acknowledgement"));
        }
        let t1 = Instant::now();
        if t0 >= begin && t1 <= end {
            t.done += 1;
            t.micros.push((t1 - t0).as_micros() as u32);
        }
    }
    Ok(t)
}

async fn hold(target: SocketAddr, count: usize) -> Result<()> {
    let sem = Arc::new(tokio::sync::Semaphore::new(128));
    let failed = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let sem = sem.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.ok()?;
                if failed.load(Ordering::Relaxed) {
                    return None;
                }
                let r = async {
                    let mut s = TcpStream::connect(target).await?;
                    let mut req = [b'h'; REQUEST];
                    req[..4].copy_from_slice(&1u32.to_le_bytes());
                    s.write_all(&req).await?;
                    let mut one = [0u8; 1];
                    s.read_exact(&mut one).await?;
                    std::io::Result::Ok(s)
                };
                match tokio::time::timeout(Duration::from_secs(10), r).await {
                    Ok(Ok(s)) => Some(s),
                    _ => {
                        failed.store(true, Ordering::Relaxed);
                        None
                    }
                }
            })
        })
        .collect();
    let mut held = Vec::with_capacity(count);
    for t in tasks {
        if let Some(s) = t.await? {
            held.push(s);
        }
    }
    println!("{{\"established\": {}}}", held.len());
    // Hold until the driver closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    drop(held);
    Ok(())
}
