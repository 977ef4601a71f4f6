//! The network settings file (`/data/config/network.toml`): its model, parsing and
//! validation. The console wizard writes it, the web UI rewrites it, and
//! [`crate::network::apply`] makes the kernel match it.
//!
//! ```toml
//! hostname = "lb1"
//! dns = ["192.0.2.53"]
//! search = ["example.org"]
//!
//! [[interface]]
//! name = "eth0"
//! dhcp = false
//! addresses = ["192.0.2.10/24"]
//! gateway = "192.0.2.1"      # default route through this interface
//! mtu = 1500
//!
//! [[interface]]
//! name = "eth0.20"
//! kind = "vlan"
//! parent = "eth0"
//! vlan_id = 20
//! addresses = ["198.51.100.2/24"]
//!
//! [[interface]]
//! name = "bond0"
//! kind = "bond"
//! members = ["eth1", "eth2"]
//! bond_mode = "active-backup"
//!
//! [[route]]
//! destination = "203.0.113.0/24"
//! gateway = "192.0.2.254"
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

/// An IPv4 address with its prefix length, written `192.0.2.10/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The netmask as an integer.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }
    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Turn a dotted netmask into a prefix length, refusing non-contiguous masks.
pub fn netmask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let prefix = m.leading_ones();
    (m.checked_shl(prefix).unwrap_or(0) == 0).then_some(prefix as u8)
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    /// `a.b.c.d/24`, `a.b.c.d/255.255.255.0` or `a.b.c.d 255.255.255.0`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a.trim(), p.trim()),
            None => match s.split_once(char::is_whitespace) {
                Some((a, p)) => (a.trim(), p.trim()),
                None => {
                    if s.parse::<Ipv4Addr>().is_ok() {
                        return Err(format!(
                            "prefix or netmask missing (e.g. {s}/24 or {s} 255.255.255.0)"
                        ));
                    }
                    (s, "")
                }
            },
        };
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("not an IPv4 address: {a:?}"))?;
        let prefix = if p.contains('.') {
            let mask: Ipv4Addr = p.parse().map_err(|_| format!("not a netmask: {p:?}"))?;
            netmask_to_prefix(mask).ok_or_else(|| format!("netmask {p} is not contiguous"))?
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|n| *n <= 32)
                .ok_or_else(|| format!("prefix must be a number from 0 to 32, not {p:?}"))?
        };
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What kind of link an interface is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A NIC that exists already.
    #[default]
    Ethernet,
    /// An 802.1Q VLAN on `parent`.
    Vlan,
    /// A bond of `members`.
    Bond,
}

/// Bonding modes (the kernel's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BondMode {
    BalanceRr,
    #[default]
    ActiveBackup,
    BalanceXor,
    Broadcast,
    #[serde(rename = "802.3ad")]
    Lacp,
    BalanceTlb,
    BalanceAlb,
}

/// One interface's settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub dhcp: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Ipv4Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond_mode: Option<BondMode>,
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub destination: Ipv4Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// The whole network settings file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, rename = "interface", skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, rename = "route", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// Errors reading or validating the network settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("parsing {0}: {1}")]
    Parse(String, toml::de::Error),
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Check a host name (RFC 1123): labels of letters, digits and hyphens.
pub fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() {
        return Err("hostname is empty".into());
    }
    if h.len() > 253 {
        return Err("hostname is longer than 253 characters".into());
    }
    for label in h.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each part of the hostname must be 1 to 63 characters".into());
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err("hostname may hold only letters, digits, '-' and '.'".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a part of the hostname cannot begin or end with '-'".into());
        }
    }
    Ok(())
}

/// Check a link name as the kernel does (1..15 bytes, no '/', no whitespace).
pub fn check_ifname(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 15 || n.contains('/') || n.contains(char::is_whitespace) {
        return Err(format!(
            "{n:?} is not a valid interface name (1-15 characters)"
        ));
    }
    Ok(())
}

/// Check an address for use on a host: not the subnet's network or broadcast address.
pub fn check_host_address(c: &Ipv4Cidr) -> Result<(), String> {
    if c.addr.is_unspecified() || c.addr.is_broadcast() || c.addr.is_multicast() {
        return Err(format!("{} cannot be a host address", c.addr));
    }
    if c.addr.is_loopback() {
        return Err(format!("{} is a loopback address", c.addr));
    }
    if c.prefix == 0 {
        return Err("prefix must be 1 to 32".into());
    }
    if c.prefix <= 30 {
        if c.addr == c.network() {
            return Err(format!(
                "{} is the network address of {}/{}",
                c.addr,
                c.network(),
                c.prefix
            ));
        }
        if c.addr == c.broadcast() {
            return Err(format!(
                "{} is the broadcast address of {}/{}",
                c.addr,
                c.network(),
                c.prefix
            ));
        }
    }
    Ok(())
}

/// Check a gateway against the interface's address.
pub fn check_gateway(gw: Ipv4Addr, on: &Ipv4Cidr) -> Result<(), String> {
    if gw == on.addr {
        return Err("gateway must differ from the appliance's own address".into());
    }
    if !on.contains(gw) {
        return Err(format!(
            "gateway {gw} is outside the subnet {}/{}",
            on.network(),
            on.prefix
        ));
    }
    if on.prefix <= 30 && (gw == on.network() || gw == on.broadcast()) {
        return Err(format!("gateway {gw} is the network or broadcast address"));
    }
    Ok(())
}

impl NetworkConfig {
    /// Read and validate the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read(path.display().to_string(), e))?;
        let cfg: NetworkConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(path.display().to_string(), e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Check everything that can be checked without the kernel.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(h) = &self.hostname {
            check_hostname(h).map_err(|p| invalid("hostname", p))?;
        }
        for s in &self.search {
            check_hostname(s).map_err(|p| invalid("search", p))?;
        }
        let mut names = std::collections::HashSet::new();
        for (i, ifc) in self.interfaces.iter().enumerate() {
            let f = |x: &str| format!("interface[{i}].{x}");
            check_ifname(&ifc.name).map_err(|p| invalid(f("name"), p))?;
            if !names.insert(ifc.name.as_str()) {
                return Err(invalid(f("name"), format!("{} appears twice", ifc.name)));
            }
            if let Some(m) = ifc.mtu
                && !(68..=65535).contains(&m)
            {
                return Err(invalid(f("mtu"), "must be 68 to 65535"));
            }
            for a in &ifc.addresses {
                check_host_address(a).map_err(|p| invalid(f("addresses"), p))?;
            }
            if let Some(gw) = ifc.gateway {
                if ifc.dhcp {
                    return Err(invalid(f("gateway"), "not allowed with dhcp"));
                }
                let Some(first) = ifc.addresses.first() else {
                    return Err(invalid(f("gateway"), "needs an address on the interface"));
                };
                let on = ifc
                    .addresses
                    .iter()
                    .find(|a| a.contains(gw))
                    .unwrap_or(first);
                check_gateway(gw, on).map_err(|p| invalid(f("gateway"), p))?;
            }
            match ifc.kind {
                Kind::Vlan => {
                    let Some(parent) = &ifc.parent else {
                        return Err(invalid(f("parent"), "a vlan needs a parent interface"));
                    };
                    check_ifname(parent).map_err(|p| invalid(f("parent"), p))?;
                    match ifc.vlan_id {
                        Some(1..=4094) => {}
                        _ => return Err(invalid(f("vlan_id"), "must be 1 to 4094")),
                    }
                }
                Kind::Bond => {
                    if ifc.members.is_empty() {
                        return Err(invalid(f("members"), "a bond needs at least one member"));
                    }
                    for m in &ifc.members {
                        check_ifname(m).map_err(|p| invalid(f("members"), p))?;
                    }
                }
                Kind::Ethernet => {
                    if ifc.parent.is_some() || ifc.vlan_id.is_some() || !ifc.members.is_empty() {
                        return Err(invalid(
                            f("kind"),
                            "parent/vlan_id/members need kind = \"vlan\" or \"bond\"",
                        ));
                    }
                }
            }
        }
        let gateways = self
            .interfaces
            .iter()
            .filter(|i| i.gateway.is_some())
            .count();
        if gateways > 1 {
            return Err(invalid(
                "interface.gateway",
                "only one interface may have a gateway",
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.gateway.is_none() && r.interface.is_none() {
                return Err(invalid(
                    format!("route[{i}]"),
                    "needs a gateway or an interface",
                ));
            }
            if let Some(n) = &r.interface
                && !names.contains(n.as_str())
            {
                return Err(invalid(
                    format!("route[{i}].interface"),
                    format!("{n} is not configured"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_forms() {
        let c: Ipv4Cidr = "192.0.2.10/24".parse().unwrap();
        assert_eq!(c.to_string(), "192.0.2.10/24");
        assert_eq!("192.0.2.10/255.255.255.0".parse::<Ipv4Cidr>().unwrap(), c);
        assert_eq!("192.0.2.10 255.255.255.0".parse::<Ipv4Cidr>().unwrap(), c);
        assert!(
            "192.0.2.10"
                .parse::<Ipv4Cidr>()
                .unwrap_err()
                .contains("missing")
        );
        assert!(
            "192.0.2.300/24"
                .parse::<Ipv4Cidr>()
                .unwrap_err()
                .contains("not an IPv4")
        );
        assert!(
            "192.0.2.1/33"
                .parse::<Ipv4Cidr>()
                .unwrap_err()
                .contains("0 to 32")
        );
        assert!(
            "192.0.2.1/255.0.255.0"
                .parse::<Ipv4Cidr>()
                .unwrap_err()
                .contains("contiguous")
        );
        assert_eq!(c.network(), Ipv4Addr::new(192, 0, 2, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(192, 0, 2, 255));
    }

    #[test]
    fn host_and_gateway_checks() {
        let c: Ipv4Cidr = "192.0.2.10/24".parse().unwrap();
        assert!(check_host_address(&c).is_ok());
        assert!(check_host_address(&"192.0.2.0/24".parse().unwrap()).is_err());
        assert!(check_host_address(&"192.0.2.255/24".parse().unwrap()).is_err());
        assert!(check_gateway(Ipv4Addr::new(192, 0, 2, 1), &c).is_ok());
        let e = check_gateway(Ipv4Addr::new(10, 0, 0, 1), &c).unwrap_err();
        assert!(e.contains("outside the subnet 192.0.2.0/24"), "{e}");
        assert!(check_gateway(c.addr, &c).is_err());
    }

    #[test]
    fn hostnames() {
        assert!(check_hostname("lb1").is_ok());
        assert!(check_hostname("lb1.example.org").is_ok());
        assert!(check_hostname("lb_1").is_err());
        assert!(check_hostname("-lb").is_err());
        assert!(check_hostname("").is_err());
    }

    #[test]
    fn round_trip_and_validate() {
        let text = r#"
hostname = "lb1"
dns = ["192.0.2.53"]

[[interface]]
name = "eth0"
addresses = ["192.0.2.10/24"]
gateway = "192.0.2.1"
mtu = 1400

[[interface]]
name = "eth0.20"
kind = "vlan"
parent = "eth0"
vlan_id = 20
addresses = ["198.51.100.2/24"]

[[interface]]
name = "bond0"
kind = "bond"
members = ["eth1", "eth2"]
bond_mode = "802.3ad"

[[route]]
destination = "203.0.113.0/24"
gateway = "192.0.2.254"
"#;
        let cfg: NetworkConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.interfaces[2].bond_mode, Some(BondMode::Lacp));
        let again: NetworkConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let bad = |t: &str| {
            let cfg: NetworkConfig = toml::from_str(t).unwrap();
            cfg.validate().unwrap_err().to_string()
        };
        let e = bad(
            "[[interface]]\nname=\"eth0\"\naddresses=[\"192.0.2.10/24\"]\ngateway=\"10.0.0.1\"",
        );
        assert!(
            e.starts_with("interface[0].gateway: gateway 10.0.0.1 is outside"),
            "{e}"
        );
        let e = bad("[[interface]]\nname=\"v\"\nkind=\"vlan\"\nparent=\"eth0\"\nvlan_id=5000");
        assert!(e.starts_with("interface[0].vlan_id"), "{e}");
        let e = bad("[[interface]]\nname=\"b\"\nkind=\"bond\"");
        assert!(e.starts_with("interface[0].members"), "{e}");
    }
}
