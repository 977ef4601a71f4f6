//! The control socket: a Unix socket (default `/run/lbcore.sock`) carrying one JSON
//! request per line and one JSON response per line. `lbctl`, the web UI and the tests
//! all speak it; the types here are the whole protocol.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::server::{AdminState, Health};

pub const DEFAULT_SOCKET: &str = "/run/lbcore.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Drain, Halt or Online for one real server.
    SetState {
        service: String,
        server: String,
        state: AdminState,
    },
    /// Reads the configuration file again; an invalid one is refused and the running
    /// configuration stays.
    Reload,
    /// Makes `config` (TOML text) the configuration: validated and its ports bound
    /// first, then written to the configuration file atomically, then applied. A
    /// refused one changes neither the file nor what runs.
    Apply {
        config: String,
    },
    /// The configuration file's text, as the running configuration was read from it.
    ShowConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why a request was refused (absent when it was not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The configuration file's text (`show-config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Response {
        Response {
            ok: true,
            message: Some(message.into()),
            ..Response::default()
        }
    }

    pub fn error(error: impl Into<String>) -> Response {
        Response::refused(Refused::from(error.into()))
    }

    pub fn refused(refused: Refused) -> Response {
        Response {
            ok: false,
            error: Some(refused.reason),
            refusal: Some(refused.kind),
            ..Response::default()
        }
    }
}

/// The kind of a refusal, so that a client (the web API) can tell a wrong request from
/// a missing object or a failure of lbcore's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// The request is wrong: an invalid configuration, a port that cannot be had.
    Invalid,
    /// It names a service or real server that does not exist.
    NotFound,
    /// The request was valid but lbcore could not carry it out (saving the file failed).
    Failed,
}

/// A refused request: its kind and the reason, which names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    pub kind: Refusal,
    pub reason: String,
}

impl Refused {
    pub fn new(kind: Refusal, reason: impl Into<String>) -> Refused {
        Refused {
            kind,
            reason: reason.into(),
        }
    }
}

/// Most refusals are invalid requests; the others are built with [`Refused::new`].
impl From<String> for Refused {
    fn from(reason: String) -> Refused {
        Refused::new(Refusal::Invalid, reason)
    }
}

/// What the System Overview shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub config: String,
    pub services: Vec<ServiceStatus>,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub label: String,
    pub layer: u8,
    pub address: IpAddr,
    pub ports: Vec<u16>,
    pub scheduler: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<String>,
    pub check: String,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FallbackStatus {
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// True while no real server is up, so new connections go here.
    pub in_use: bool,
    pub connections: u32,
    pub total_connections: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to lbcore at {path}: {source} (is lbcore running?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("lost the connection to lbcore: {0}")]
    Io(#[from] std::io::Error),
    #[error("lbcore sent an answer that is not understood: {0}")]
    Protocol(#[from] serde_json::Error),
}

/// Sends one request and waits for its response (blocking; for the CLI and tests).
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    Ok(serde_json::from_str(&answer)?)
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
