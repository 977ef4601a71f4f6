//! The kernel's IPVS table as lbcore reports it (and as its Layer 4 code reads and
//! writes it): virtual services, their real servers, settings and IPVS's counters.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u16 = 17;

/// A virtual service in the kernel: protocol, address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    pub protocol: u16,
    pub address: IpAddr,
    pub port: u16,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            IPPROTO_TCP => "TCP".to_string(),
            IPPROTO_UDP => "UDP".to_string(),
            p => format!("proto {p}"),
        };
        write!(f, "{proto} {}", socket_text(self.address, self.port))
    }
}

fn socket_text(address: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(address, port).to_string()
}

/// The settings of a virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub scheduler: String,
    /// Persistence timeout in seconds; `None` = not persistent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<u32>,
    /// Prefix length whose clients share a persistence entry.
    pub netmask: u8,
}

/// How IPVS forwards to a real server (`IP_VS_CONN_F_*` & `IP_VS_CONN_F_FWD_MASK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    /// NAT (masquerading): 0.
    Masq,
    /// The appliance itself: 1.
    Local,
    /// IP-in-IP: 2.
    Tunnel,
    /// Direct routing: 3.
    Route,
    /// 4.
    Bypass,
}

impl Forward {
    pub fn name(self) -> &'static str {
        match self {
            Forward::Masq => "masq",
            Forward::Local => "local",
            Forward::Tunnel => "tunnel",
            Forward::Route => "route",
            Forward::Bypass => "bypass",
        }
    }
}

/// A real server of a virtual service in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DestKey {
    pub address: IpAddr,
    pub port: u16,
}

impl fmt::Display for DestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&socket_text(self.address, self.port))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestSpec {
    pub forward: Forward,
    pub weight: u32,
    /// Upper connection threshold (0 = none).
    pub upper: u32,
    /// Lower connection threshold (0 = none).
    pub lower: u32,
}

/// IPVS's own connection counters of one real server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub active: u32,
    pub inactive: u32,
    pub persistent: u32,
    /// Connections scheduled to this server since it entered the table.
    #[serde(default)]
    pub total: u64,
}

/// One virtual service as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub key: ServiceKey,
    pub spec: ServiceSpec,
    pub dests: Vec<Dest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dest {
    pub key: DestKey,
    pub spec: DestSpec,
    pub counters: Counters,
}
