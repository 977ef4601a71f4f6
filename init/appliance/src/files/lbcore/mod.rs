//! lbcore's configuration (`/data/config/lbcore.toml`): virtual services, their real
//! servers, health checks, persistence and fallback.
//!
//! The file is TOML (`file.rs` holds its exact shape); [`load`], [`read`] and [`parse`]
//! turn it into the validated model below, or into a [`ConfigError`] that names the
//! service, the field and what is wrong, with the line and column where known. Every
//! rule about what is valid lives in `file.rs`. lbcore keeps the text as it was
//! submitted, so keys of a newer version survive a rollback untouched; reading the
//! stored file only warns about them ([`crate::files`] has the rules).

pub mod duration;
mod file;

use crate::files::{Strictness, Warning};

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use duration::Span;

/// The format this version reads and writes (`format = 1` at the top of the file;
/// absent means this one).
pub const FORMAT: u32 = 1;

/// A validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Config {
    pub services: Vec<Service>,
}

/// One virtual service: an address and ports that clients connect to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub label: String,
    pub address: IpAddr,
    pub ports: Vec<u16>,
    pub layer: Layer,
    pub scheduler: Scheduler,
    pub persistence: Option<Persistence>,
    pub check: Check,
    /// Used only while no real server is up. `port: None` keeps the port the client used.
    pub fallback: Option<Endpoint>,
    pub real_servers: Vec<RealServer>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "layer")]
pub enum Layer {
    /// Kernel IPVS.
    #[serde(rename = "4")]
    Four {
        forwarding: Forwarding,
        on_failure: OnFailure,
    },
    /// lbcore's own TCP proxy.
    #[serde(rename = "7")]
    Seven(ProxySettings),
}

impl Layer {
    pub fn number(&self) -> u8 {
        match self {
            Layer::Four { .. } => 4,
            Layer::Seven(_) => 7,
        }
    }
}

/// How a Layer 4 service forwards packets to its real servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forwarding {
    #[serde(alias = "dr")]
    DirectRouting,
    #[serde(alias = "masq")]
    Nat,
    Snat,
}

impl Forwarding {
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::DirectRouting => "direct-routing",
            Forwarding::Nat => "nat",
            Forwarding::Snat => "snat",
        }
    }
}

/// What IPVS does with a Layer 4 real server whose health check fails (keepalived's
/// `inhibit_on_failure` is `WeightZero`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// The server leaves the IPVS table; with `expire_nodest_conn` its connections and
    /// persistence entries expire at once.
    #[default]
    Remove,
    /// The server stays with weight 0: no new clients, established flows stay.
    #[serde(alias = "inhibit")]
    WeightZero,
}

/// Settings of the Layer 7 TCP proxy that have no meaning at Layer 4.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxySettings {
    /// Time allowed for one connection attempt to a real server.
    pub connect_timeout: Duration,
    /// Further servers tried after a failed connection attempt.
    pub retries: u32,
    /// Clients allowed to wait when every server is at `max_connections`.
    pub queue_size: u32,
    /// How long a queued client waits for a free slot before it is refused.
    pub queue_timeout: Duration,
    /// TCP keepalive: idle time before the first probe, on both sides.
    pub keepalive_idle: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            connect_timeout: Duration::from_secs(3),
            retries: 2,
            queue_size: 64,
            queue_timeout: Duration::from_secs(5),
            keepalive_idle: Duration::from_secs(60),
        }
    }
}

/// How a service picks a real server for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Round robin (weights ignored).
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connections (weights ignored).
    Lc,
    /// Weighted least connections.
    Wlc,
    /// Source hashing (Layer 4 only).
    Sh,
    /// Maglev hashing (Layer 4 only).
    Mh,
}

impl std::fmt::Display for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Scheduler {
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Sh => "sh",
            Scheduler::Mh => "mh",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Persistence {
    /// A client's entry expires once this long has passed with no connection from it.
    pub timeout: Duration,
    /// Clients in one network of this prefix length share an entry (Layer 4).
    pub netmask: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: Option<u16>,
}

impl Endpoint {
    /// The socket address to use for a client that connected to `service_port`.
    pub fn socket_addr(&self, service_port: u16) -> SocketAddr {
        SocketAddr::new(self.address, self.port.unwrap_or(service_port))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RealServer {
    pub label: String,
    pub address: IpAddr,
    /// `None`: the port the client connected to.
    pub port: Option<u16>,
    pub weight: u32,
    /// 0 = unlimited.
    pub max_connections: u32,
    /// IPVS lower threshold (Layer 4); 0 = none.
    pub min_connections: u32,
}

impl RealServer {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            address: self.address,
            port: self.port,
        }
    }
}

/// How and how often the real servers of a service are checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down server up.
    pub rise: u32,
    /// Consecutive failures that take an up server down.
    pub fall: u32,
    /// Port to probe instead of the real server's own.
    pub port: Option<u16>,
}

impl Default for Check {
    fn default() -> Self {
        Check {
            probe: Probe::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 2,
            port: None,
        }
    }
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Probe {
    /// No check: the server is always up.
    None,
    /// A TCP connection is accepted.
    Tcp,
    /// ICMP echo.
    Ping,
    /// DICOM association for the Verification SOP class and a C-ECHO with status 0x0000.
    DicomEcho {
        calling_ae: String,
        called_ae: String,
    },
    /// An HL7 message over MLLP, answered by an ACK with MSA-1 AA or CA.
    /// `None` uses the built-in NMD probe message.
    Hl7 { message: Option<String> },
    /// HTTP(S) GET of `path`, expecting `expect_status`.
    Http {
        path: String,
        expect_status: u16,
        tls: bool,
        host: Option<String>,
    },
    /// `script VIP VPORT RIP RPORT`, exit status 0 = up.
    Script { path: PathBuf },
}

/// The kind of a health check, as the configuration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    None,
    Tcp,
    #[serde(alias = "icmp")]
    Ping,
    #[serde(alias = "dicom", alias = "c-echo")]
    DicomEcho,
    #[serde(alias = "mllp")]
    Hl7,
    Http,
    Https,
    #[serde(alias = "external")]
    Script,
}

impl CheckKind {
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp => "tcp",
            CheckKind::Ping => "ping",
            CheckKind::DicomEcho => "dicom-echo",
            CheckKind::Hl7 => "hl7",
            CheckKind::Http => "http",
            CheckKind::Https => "https",
            CheckKind::Script => "script",
        }
    }
}

impl std::fmt::Display for CheckKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Probe {
    pub fn kind(&self) -> CheckKind {
        match self {
            Probe::None => CheckKind::None,
            Probe::Tcp => CheckKind::Tcp,
            Probe::Ping => CheckKind::Ping,
            Probe::DicomEcho { .. } => CheckKind::DicomEcho,
            Probe::Hl7 { .. } => CheckKind::Hl7,
            Probe::Http { tls: false, .. } => CheckKind::Http,
            Probe::Http { tls: true, .. } => CheckKind::Https,
            Probe::Script { .. } => CheckKind::Script,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    /// The text is not TOML of the expected shape; the message carries line and column.
    #[error("{}{message}", origin(.path))]
    Syntax {
        path: Option<PathBuf>,
        message: String,
    },
    /// The TOML is well formed but a value is not acceptable.
    #[error("{0}")]
    Invalid(Box<Invalid>),
}

/// A value that is not acceptable, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{context}{field}: {problem}", origin(.path), location(*.line, *.column))]
pub struct Invalid {
    pub path: Option<PathBuf>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// `service 2 ("PACS"): real_server 1 ("DS1"): ` and the like.
    pub context: String,
    pub field: String,
    pub problem: String,
}

fn origin(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    }
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("line {l}, column {c}: "),
        (Some(l), None) => format!("line {l}: "),
        _ => String::new(),
    }
}

impl ConfigError {
    /// Names the file the text came from (or is meant for) in the message.
    pub fn with_path(self, p: &Path) -> Self {
        match self {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: Some(p.to_path_buf()),
                message,
            },
            ConfigError::Invalid(mut detail) => {
                detail.path = Some(p.to_path_buf());
                ConfigError::Invalid(detail)
            }
            other => other,
        }
    }
}

/// Reads and validates the configuration file at `path`, as stored on /data: keys
/// this version does not know are warnings.
pub fn load(path: &Path) -> Result<(Config, Vec<Warning>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    read(&text, Strictness::Stored, &path.display().to_string()).map_err(|e| e.with_path(path))
}

/// Like [`load`], but a file that does not exist yet is an empty configuration: a fresh
/// appliance runs lbcore before anyone has configured a service. The flag says so.
pub fn load_or_empty(path: &Path) -> Result<(Config, Vec<Warning>, bool), ConfigError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok((Config::default(), Vec::new(), true))
        }
        // Anything else (permissions, I/O) is an error that load() reports in full.
        _ => load(path).map(|(c, w)| (c, w, false)),
    }
}

/// Validates configuration text that a person or a client submitted: a key this
/// version does not know is refused by name (a misspelt `weigth = 100` must not pass
/// as a warning nobody reads).
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    read(text, Strictness::Submitted, "").map(|(c, _)| c)
}

/// Validates configuration text read as `strictness` says; `origin` names the file in
/// warnings.
pub fn read(
    text: &str,
    strictness: Strictness,
    origin: &str,
) -> Result<(Config, Vec<Warning>), ConfigError> {
    let (config, unknown, newer) = file::parse(text, strictness)?;
    let mut warnings: Vec<Warning> = unknown
        .iter()
        .map(|u| {
            let (at, message) = file::unknown_warning(u);
            Warning {
                file: origin.to_string(),
                at,
                message,
            }
        })
        .collect();
    if let Some(format) = newer {
        warnings.extend(crate::files::newer_format(origin, format, FORMAT));
    }
    Ok((config, warnings))
}

impl Config {
    pub fn service(&self, label: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.label == label)
    }
}

impl Service {
    pub fn proxy(&self) -> Option<&ProxySettings> {
        match &self.layer {
            Layer::Seven(p) => Some(p),
            Layer::Four { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests;
