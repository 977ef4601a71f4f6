//! One client connection: pick a server (waiting in the queue when all are at their
//! connection limit), connect with a timeout and retry on another server, then relay
//! until both sides are done or the operator halts the server.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};
use tracing::{debug, info, warn};

use super::relay::relay;
use crate::config::{self, ProxySettings};
use crate::server::{AdminState, Server};
use crate::service::{Choice, ServiceRuntime};

/// How often a queued client looks again even without a wake-up (a safety net).
const QUEUE_POLL: Duration = Duration::from_millis(100);

/// Serves one accepted client. `settings` were read at accept time; `local_port` is the
/// port the client connected to (a real server without its own port gets the same one).
pub async fn serve(
    service: Arc<ServiceRuntime>,
    settings: Arc<config::Service>,
    client: TcpStream,
    peer: SocketAddr,
    local_port: u16,
) {
    let _counted = service.client_connected();
    let Some(proxy) = settings.proxy() else {
        return;
    };
    // The client leg's keepalive and TCP_NODELAY came with the socket from the
    // listener (see listener.rs).

    let mut tried: Vec<Arc<Server>> = Vec::new();
    let mut queue_deadline: Option<Instant> = None;
    // Held while this client waits in the queue; dropping it leaves the queue.
    let mut queue_place = None;
    loop {
        // Created before choosing, so that a slot freed between the choice and the wait
        // still wakes us. Not enabled: slots are announced with `notify_waiters`, which
        // reaches a `Notified` from its creation on, and an enabled one would sit in the
        // service's waiter list (under its lock) for the whole life of the connection.
        let slot_freed = service.slot_notified();
        tokio::pin!(slot_freed);
        match service.choose(peer.ip(), &tried) {
            Choice::Server(lease) => {
                let server = lease.server().clone();
                let target = server.socket_addr(local_port);
                // Subscribed before connecting, so that a Halt during the connect is seen.
                let mut halted = server.halt_signal();
                let failure = match connect(target, proxy).await {
                    Ok(_) if server.admin() == AdminState::Halt => {
                        "server halted while connecting".to_string()
                    }
                    Ok(upstream) => {
                        drop(queue_place.take());
                        service.real_server_connected();
                        debug!(service = %service.label, %peer, server = %server.label, "connected");
                        tokio::select! {
                            r = relay(&client, &upstream) => log_end(&service.label, peer, &server.label, r),
                            _ = halted.changed() => info!(
                                service = %service.label, %peer, server = %server.label,
                                "connection closed: server halted by the operator"
                            ),
                        }
                        return;
                    }
                    Err(e) => e.to_string(),
                };
                warn!(
                    service = %service.label, %peer, server = %server.label, %target,
                    "cannot connect: {failure}; trying another server"
                );
                drop(lease);
                tried.push(server);
                if tried.len() > proxy.retries as usize {
                    service.refuse(peer, &format!("{} connection attempts failed", tried.len()));
                    return;
                }
            }
            Choice::Fallback(endpoint, _lease) => {
                let target = endpoint.socket_addr(local_port);
                match connect(target, proxy).await {
                    Ok(upstream) => {
                        debug!(service = %service.label, %peer, %target, "connected to the fallback server");
                        log_end(
                            &service.label,
                            peer,
                            "fallback",
                            relay(&client, &upstream).await,
                        );
                    }
                    Err(e) => {
                        service.refuse(
                            peer,
                            &format!("cannot connect to the fallback server {target}: {e}"),
                        );
                    }
                }
                return;
            }
            Choice::Full => {
                let deadline =
                    *queue_deadline.get_or_insert_with(|| Instant::now() + proxy.queue_timeout);
                if queue_place.is_none() {
                    queue_place = service.enqueue();
                    if queue_place.is_none() {
                        service.refuse(
                            peer,
                            "every server is at max_connections and the queue is full",
                        );
                        return;
                    }
                }
                let now = Instant::now();
                if now >= deadline {
                    service.refuse(
                        peer,
                        &format!("no server had a free slot within {:?}", proxy.queue_timeout),
                    );
                    return;
                }
                // The poll interval is only a safety net; a freed slot wakes us at once.
                let _ = timeout((deadline - now).min(QUEUE_POLL), slot_freed).await;
            }
            Choice::Unavailable => {
                service.refuse(
                    peer,
                    if tried.is_empty() {
                        "no real server is available (down, drained or halted) and there is no fallback"
                    } else {
                        "every available server failed to connect and there is no fallback"
                    },
                );
                return;
            }
        }
    }
}

async fn connect(target: SocketAddr, proxy: &ProxySettings) -> io::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // Set before connecting: the same system calls, and the leg is tuned from its SYN.
    tune(&socket, proxy);
    let stream = timeout(proxy.connect_timeout, socket.connect(target))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {:?}", proxy.connect_timeout),
            )
        })??;
    Ok(stream)
}

/// Keepalive on both legs, so that a peer that vanished (power loss, a firewall that
/// forgot the flow) is noticed on links that stay idle for days; no Nagle delay, since
/// DICOM and HL7 are request/response. Used on the listening socket too, whose accepted
/// sockets inherit both. Returns whether every option was set.
pub(super) fn tune(socket: &impl AsFd, proxy: &ProxySettings) -> bool {
    let sock = SockRef::from(socket);
    let keepalive = TcpKeepalive::new()
        .with_time(proxy.keepalive_idle)
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    let mut ok = true;
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        debug!("cannot set TCP keepalive: {e}");
        ok = false;
    }
    if let Err(e) = sock.set_tcp_nodelay(true) {
        debug!("cannot set TCP_NODELAY: {e}");
        ok = false;
    }
    ok
}

fn log_end(service: &str, peer: SocketAddr, server: &str, result: io::Result<super::Transferred>) {
    match result {
        Ok(t) => debug!(
            service, %peer, server,
            sent = t.client_to_server, received = t.server_to_client, "connection closed"
        ),
        Err(e) => debug!(service, %peer, server, "connection ended: {e}"),
    }
}
