//! Runs a service's health check against one real server on its interval and turns the
//! results into up/down through rise and fall, logging each change once with its reason.
//! A failed check of a server that is still up is repeated sooner ([`FAST_RECHECK`]).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};

use crate::config::{Check, Probe};
use crate::health::{self, Target};
use crate::server::{Health, Server};

/// The wait before re-checking a server whose check just failed while it still counts
/// as up (HAProxy calls this `fastinter`): a dead server then leaves rotation about
/// `(fall - 1) × FAST_RECHECK` after its first failed check, not `(fall - 1) × interval`,
/// while `fall` still keeps a single lost probe from taking it out.
const FAST_RECHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// What a monitor was started with; a reload restarts it only when this changes.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSpec {
    pub check: Check,
    /// The virtual service (VIP, first port), passed to scripts.
    pub service: SocketAddr,
    /// Where the probe goes.
    pub server: SocketAddr,
}

impl MonitorSpec {
    /// The check target for `server` of a service at `vip` with `ports`.
    pub fn new(
        check: &Check,
        vip: std::net::IpAddr,
        ports: &[u16],
        server: &Server,
    ) -> MonitorSpec {
        let vport = ports.first().copied().unwrap_or(0);
        let port = check.port.or(server.port).unwrap_or(vport);
        MonitorSpec {
            check: check.clone(),
            service: SocketAddr::new(vip, vport),
            server: SocketAddr::new(server.address, port),
        }
    }
}

/// Starts the monitor; `changed` is notified at each change of the server's health
/// (the daemon then brings IPVS in step).
pub fn spawn(
    service: String,
    server: Arc<Server>,
    spec: MonitorSpec,
    changed: Arc<Notify>,
) -> JoinHandle<()> {
    tokio::spawn(run(service, server, spec, changed))
}

async fn run(service: String, server: Arc<Server>, spec: MonitorSpec, changed: Arc<Notify>) {
    let check = &spec.check;
    let target = Target {
        service: spec.service,
        server: spec.server,
    };
    if check.probe == Probe::None {
        if server.force_up() {
            changed.notify_one();
            info!(service, server = %server.label, "server is up (no health check configured)");
        }
        return;
    }
    loop {
        let started = Instant::now();
        let reason = health::probe(&check.probe, &target, check.timeout)
            .await
            .err()
            .map(|e| e.to_string());
        let failed = reason.is_some();
        if let Some(now) = server.record_check(reason.clone(), check.rise, check.fall) {
            changed.notify_one();
            let kind = check.probe.kind();
            match now {
                Health::Up => info!(
                    service, server = %server.label, target = %spec.server,
                    "server is UP: {kind} check passed"
                ),
                _ => warn!(
                    service, server = %server.label, target = %spec.server,
                    "server is DOWN: {kind} check failed: {}", reason.unwrap_or_default()
                ),
            }
        }
        let wait = if failed && server.health() == Health::Up {
            check.interval.min(FAST_RECHECK)
        } else {
            check.interval
        };
        sleep_until(started + wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RealServer;
    use std::time::Duration;

    /// With an interval of a minute, only the quick re-check can take the server down
    /// within seconds after its port closes.
    #[tokio::test]
    async fn a_failed_check_of_an_up_server_is_repeated_soon() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Arc::new(Server::new(&RealServer {
            label: "R".into(),
            address: addr.ip(),
            port: Some(addr.port()),
            weight: 1,
            max_connections: 0,
            min_connections: 0,
        }));
        let check = Check {
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 2,
            ..Check::default()
        };
        let spec = MonitorSpec::new(&check, addr.ip(), &[addr.port()], &server);
        let changed = Arc::new(Notify::new());
        let task = spawn("S".into(), server.clone(), spec, changed.clone());
        tokio::time::timeout(Duration::from_secs(10), changed.notified())
            .await
            .expect("the first check brings the server up");
        assert_eq!(server.health(), Health::Up);

        // refused from now on; a monitor started afresh checks at once (fails: 1 of 2),
        // and its next regular check would be a minute away
        drop(listener);
        task.abort();
        let spec = MonitorSpec::new(&check, addr.ip(), &[addr.port()], &server);
        let task = spawn("S".into(), server.clone(), spec, changed.clone());
        tokio::time::timeout(Duration::from_secs(10), changed.notified())
            .await
            .expect("down within seconds, not after the 60 s interval");
        assert_eq!(server.health(), Health::Down);
        task.abort();
    }
}
