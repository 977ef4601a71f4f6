//! The System Overview: every virtual service with its real servers, their health,
//! the operator's state and the connections, as the status request answers it (and as
//! lbweb's `GET /api/status` passes it on).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{AdminState, Warning};
use appliance::files::lbcore::{CheckKind, Forwarding, Scheduler};

/// What the System Overview shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// lbcore's version.
    pub version: String,
    /// The version of the control protocol ([`crate::PROTOCOL`]).
    #[serde(default)]
    pub protocol: u32,
    /// The configuration file lbcore runs from.
    pub config: String,
    pub services: Vec<ServiceStatus>,
    /// What lbcore read past in its files on /data (keys of a newer version, a newer
    /// format, a state file it could not read); empty when all was understood.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
    /// The kernel's whole IPVS table (also services lbcore does not own), read over
    /// netlink for this answer; absent when no Layer 4 service is in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipvs: Option<Vec<crate::ipvs::Service>>,
    /// lbcore's own use of the system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessStatus>,
}

/// lbcore's memory and open files, from /proc/self (the appliance's memory budget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// Resident memory now (VmRSS), in KiB.
    pub rss_kib: u64,
    /// The most resident memory since start (VmHWM), in KiB.
    pub peak_rss_kib: u64,
    pub open_files: u64,
}

impl ProcessStatus {
    /// Reads the calling process's figures; `None` where /proc is not mounted.
    pub fn of_self() -> Option<ProcessStatus> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some(ProcessStatus {
            rss_kib: kib("VmRSS")?,
            peak_rss_kib: kib("VmHWM")?,
            open_files: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
        })
    }
}

/// What the health checks say of a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet: treated as up so that a restart of lbcore does not refuse
    /// clients; the first check result decides at once.
    Unknown,
    Up,
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// One virtual service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub label: String,
    pub layer: u8,
    pub address: IpAddr,
    pub ports: Vec<u16>,
    pub scheduler: Scheduler,
    /// Layer 4: how IPVS forwards to the real servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<Forwarding>,
    /// The persistence timeout as the configuration writes it (`300s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<String>,
    pub check: CheckKind,
    /// Client connections open now.
    pub connections: u32,
    pub total_connections: u64,
    pub refused: u64,
    pub queued: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackStatus>,
    pub real_servers: Vec<ServerStatus>,
    /// Something the operator should know about this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A service's fallback server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackStatus {
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// True while no real server is up, so new connections go here.
    pub in_use: bool,
    pub connections: u32,
    pub total_connections: u64,
}

/// One real server of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub label: String,
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub weight: u32,
    pub max_connections: u32,
    pub health: Health,
    pub state: AdminState,
    pub connections: u32,
    pub total_connections: u64,
    /// Why the last check failed, while it keeps failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Seconds since the Unix epoch of the last health change.
    pub since: u64,
    /// Layer 4: this server in the kernel's IPVS table (summed over the service's
    /// ports); `None` when it is not in the table (removed, halted) or not Layer 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipvs: Option<IpvsServerStatus>,
}

/// A real server as IPVS has it, with IPVS's own connection counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpvsServerStatus {
    pub weight: u32,
    pub active: u32,
    pub inactive: u32,
    pub persistent: u32,
    /// Connections IPVS scheduled to it.
    #[serde(default)]
    pub total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_figures_are_read() {
        let p = ProcessStatus::of_self().expect("/proc is mounted where tests run");
        assert!(p.rss_kib > 0 && p.peak_rss_kib >= p.rss_kib, "{p:?}");
        assert!(p.open_files >= 3, "{p:?}");
    }
}
