//! The System Overview: what the status request answers. The event loop takes a
//! [`Snapshot`] (the configuration and the services' runtimes, shared, not copied) and a
//! task of its own finishes the answer, since reading the kernel's IPVS table means
//! waiting for the IPVS thread.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use super::Daemon;
use crate::config::{self, Config, Layer};
use crate::ipvs::{self, manager::Manager};
use crate::server::Health;
use crate::service::ServiceRuntime;
use appliance::files::Warning;
use lbcore_control::status::{
    FallbackStatus, IpvsServerStatus, ProcessStatus, ServerStatus, ServiceStatus, Status,
};

/// What a status answer is made from.
pub(super) struct Snapshot {
    config: Arc<Config>,
    config_path: String,
    runtimes: Vec<Arc<ServiceRuntime>>,
    warnings: Vec<Warning>,
    ipvs: Manager,
}

impl Daemon {
    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            config: self.config.clone(),
            config_path: self.opts.config.display().to_string(),
            runtimes: self.services.values().map(|e| e.runtime.clone()).collect(),
            warnings: self
                .file_warnings
                .iter()
                .chain(&self.config_warnings)
                .cloned()
                .collect(),
            ipvs: self.ipvs.clone(),
        }
    }
}

impl Snapshot {
    pub(super) async fn status(self) -> Status {
        let has_l4 = self.config.services.iter().any(|s| s.layer.number() == 4);
        let table = if has_l4 {
            Some(self.ipvs.table().await)
        } else {
            None
        };
        let kernel: &[ipvs::Service] = match &table {
            Some(Ok(t)) => t,
            _ => &[],
        };
        let services = self
            .config
            .services
            .iter()
            .filter_map(|svc| {
                let rt = self.runtimes.iter().find(|r| r.label == svc.label)?;
                let table_error = match &table {
                    Some(Err(e)) => Some(e.to_string()),
                    _ => None,
                };
                Some(service_status(svc, rt, kernel, table_error))
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: lbcore_control::PROTOCOL,
            config: self.config_path,
            services,
            warnings: self.warnings,
            ipvs: match table {
                Some(Ok(t)) => Some(t),
                _ => None,
            },
            process: ProcessStatus::of_self(),
        }
    }
}

/// One service: its real servers with their live state and, at Layer 4, IPVS's own
/// view of them (weights and connection counters).
fn service_status(
    svc: &config::Service,
    rt: &ServiceRuntime,
    kernel: &[ipvs::Service],
    table_error: Option<String>,
) -> ServiceStatus {
    let c = rt.counters();
    let servers = rt.servers();
    let any_up = servers.iter().any(|s| s.takes_new_connections());
    let l4 = svc.layer.number() == 4;
    let in_ipvs = |address, port: Option<u16>| {
        l4.then(|| ipvs_counters(kernel, svc, address, port))
            .flatten()
    };
    let real_servers: Vec<ServerStatus> = servers
        .iter()
        .map(|s| {
            let h = s.health_record();
            let ipvs = in_ipvs(s.address, s.port);
            ServerStatus {
                label: s.label.clone(),
                address: s.address,
                port: s.port,
                weight: s.weight(),
                max_connections: s.max_connections(),
                health: h.health,
                state: s.admin(),
                connections: ipvs.map_or(s.active(), |i| i.active),
                total_connections: ipvs.map_or(s.total(), |i| i.total),
                last_failure: if h.health == Health::Up {
                    None
                } else {
                    h.last_failure
                },
                since: h
                    .since
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                ipvs,
            }
        })
        .collect();
    let fallback_ipvs = svc.fallback.and_then(|f| in_ipvs(f.address, f.port));
    let (connections, total_connections) = if l4 {
        (
            real_servers.iter().map(|r| r.connections).sum::<u32>()
                + fallback_ipvs.map_or(0, |i| i.active),
            real_servers
                .iter()
                .map(|r| r.total_connections)
                .sum::<u64>()
                + fallback_ipvs.map_or(0, |i| i.total),
        )
    } else {
        (c.active, c.total)
    };
    ServiceStatus {
        label: svc.label.clone(),
        layer: svc.layer.number(),
        address: svc.address,
        ports: svc.ports.clone(),
        scheduler: svc.scheduler,
        forwarding: match &svc.layer {
            Layer::Four { forwarding, .. } => Some(*forwarding),
            Layer::Seven(_) => None,
        },
        persistence: svc
            .persistence
            .as_ref()
            .map(|p| config::duration::format(p.timeout)),
        check: svc.check.probe.kind(),
        connections,
        total_connections,
        refused: c.refused,
        queued: c.queued,
        fallback: svc.fallback.map(|f| FallbackStatus {
            address: f.address,
            port: f.port,
            in_use: !any_up,
            connections: fallback_ipvs.map_or(c.fallback_active, |i| i.active),
            total_connections: fallback_ipvs.map_or(c.fallback_total, |i| i.total),
        }),
        real_servers,
        note: match (&svc.layer, table_error) {
            (Layer::Four { .. }, Some(e)) => Some(format!("layer 4: not forwarded: {e}")),
            _ => None,
        },
    }
}

/// A Layer 4 server's entry in the kernel's table, summed over the service's ports.
fn ipvs_counters(
    kernel: &[ipvs::Service],
    svc: &config::Service,
    address: IpAddr,
    port: Option<u16>,
) -> Option<IpvsServerStatus> {
    let mut found: Option<IpvsServerStatus> = None;
    for &vport in &svc.ports {
        let Some(k) = kernel
            .iter()
            .find(|k| k.key.address == svc.address && k.key.port == vport)
        else {
            continue;
        };
        let want = ipvs::DestKey {
            address,
            port: port.unwrap_or(vport),
        };
        if let Some(d) = k.dests.iter().find(|d| d.key == want) {
            let f = found.get_or_insert_default();
            f.weight = f.weight.max(d.spec.weight);
            f.active += d.counters.active;
            f.inactive += d.counters.inactive;
            f.persistent += d.counters.persistent;
            f.total += d.counters.total;
        }
    }
    found
}
