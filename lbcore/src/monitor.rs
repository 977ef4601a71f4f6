//! Runs a service's health check against one real server on its interval and turns the
//! results into up/down through rise and fall, logging each change once with its reason.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};

use crate::config::{Check, Probe};
use crate::health::{self, Target};
use crate::server::{Health, Server};

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
        let result = health::probe(&check.probe, &target, check.timeout)
            .await
            .map_err(|e| e.to_string());
        let reason = result.as_ref().err().cloned();
        if let Some(now) = server.record_check(result, check.rise, check.fall) {
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
        sleep_until(started + check.interval).await;
    }
}
