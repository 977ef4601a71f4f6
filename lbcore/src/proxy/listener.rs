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
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                reported = false;
                debug!(service = %service.label, %peer, "accepted");
                tokio::spawn(session::serve(service.clone(), stream, peer, address));
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
