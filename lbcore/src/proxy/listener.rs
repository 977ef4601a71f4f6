//! Listening sockets of Layer 7 services and their accept loops.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::session;
use crate::service::ServiceRuntime;

/// A bound socket whose accept loop has not started yet: binding happens before a new
/// configuration is committed, so that a port that cannot be had refuses the change.
pub struct Listener {
    socket: Socket,
    pub address: SocketAddr,
}

/// Binds `address` for a service. IP_FREEBIND lets the socket exist before the service
/// address is configured on an interface; SO_REUSEPORT lets a reload bind the new
/// socket before the old one closes.
pub fn bind(address: SocketAddr) -> io::Result<Listener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if address.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(Listener { socket, address })
}

impl Listener {
    /// Starts accepting for `service`; aborting the handle closes the socket, while
    /// connections already accepted carry on.
    pub fn serve(self, service: Arc<ServiceRuntime>) -> io::Result<JoinHandle<()>> {
        let listener = TcpListener::from_std(self.socket.into())?;
        Ok(tokio::spawn(accept_loop(listener, self.address, service)))
    }
}

async fn accept_loop(listener: TcpListener, address: SocketAddr, service: Arc<ServiceRuntime>) {
    let mut reported = false;
    // The keepalive idle time last set on the listening socket. Linux copies TCP_NODELAY
    // and the keepalive settings (and starts the keepalive timer) into every socket
    // accepted from it, so the client leg costs no system call per connection; a reload
    // that changes the idle time is applied here, at the next accept.
    let mut tuned: Option<Duration> = None;
    // An accepted socket's local port is the listening port; only a listener on a
    // wildcard address still asks each socket (one getsockname), as it always did.
    let wildcard = address.ip().is_unspecified();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                reported = false;
                debug!(service = %service.label, %peer, "accepted");
                let settings = service.settings();
                if let Some(proxy) = settings.proxy() {
                    if tuned != Some(proxy.keepalive_idle) {
                        // This one was accepted before the listener had the settings.
                        session::tune(&stream, proxy);
                        // Should the listener refuse, every socket is tuned on its own.
                        if session::tune(&listener, proxy) {
                            tuned = Some(proxy.keepalive_idle);
                        }
                    }
                }
                let local_port = if wildcard {
                    stream.local_addr().map_or(address.port(), |a| a.port())
                } else {
                    address.port()
                };
                tokio::spawn(session::serve(
                    service.clone(),
                    settings,
                    stream,
                    peer,
                    local_port,
                ));
            }
            Err(e) => {
                // Out of file descriptors or memory: wait and retry rather than spin or
                // give up the port. Reported once per episode.
                if !reported {
                    warn!(service = %service.label, %address, "accept failed: {e}; retrying");
                    reported = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxySettings;
    use socket2::SockRef;

    /// The client leg relies on Linux copying these options from the listening socket
    /// into each accepted one; this checks that the kernel does.
    #[tokio::test]
    async fn accepted_sockets_inherit_keepalive_and_nodelay() {
        let bound = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = TcpListener::from_std(bound.socket.into()).unwrap();
        let proxy = ProxySettings {
            keepalive_idle: Duration::from_secs(123),
            ..ProxySettings::default()
        };
        assert!(session::tune(&listener, &proxy));
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let s = SockRef::from(&accepted);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(123));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 6);
        assert!(s.tcp_nodelay().unwrap());
    }
}
