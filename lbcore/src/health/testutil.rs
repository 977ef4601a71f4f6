//! Helpers for the probe tests: free loopback ports, waiting for a spawned peer to listen
//! or a port to be free again, and a server that accepts and never answers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::Target;

/// How much later than its timeout a probe may return in the tests. The tests check
/// *which* deadline ended the probe by its message (a probe's own deadline names the
/// stage it was waiting in; the outer guard of `health::probe` says "probing"), so this
/// bound only has to prove that the probe ended near its timeout rather than hanging: it
/// is wide enough that a stall of a second or two on a busy 2-core machine cannot fail it.
pub const SLACK: Duration = Duration::from_secs(3);

/// A loopback port that was free a moment ago: the kernel picked it for a listener that is
/// closed again before this returns, so connecting to it is refused until someone binds it.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// A port where nothing listens.
pub fn closed_port() -> u16 {
    free_port()
}

/// A target whose service and server are both 127.0.0.1:`port`.
pub fn local(port: u16) -> Target {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    Target {
        service: addr,
        server: addr,
    }
}

/// A loopback server that accepts connections, holds them and never says a word (up at
/// the TCP level, dead above it). Returns its port; aborting the task closes it.
pub async fn silent_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (port, task)
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port} after 5 s");
}

/// Waits until 127.0.0.1:`port` can be bound again (a listener given it up).
pub async fn wait_free(port: u16) {
    for _ in 0..200 {
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("127.0.0.1:{port} is still taken after 5 s");
}
