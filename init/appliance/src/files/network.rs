//! The network settings file (`/data/config/network.toml`): its model, parsing and
//! validation. The console wizard writes it, the web UI rewrites it, and init's
//! `network::apply` makes the kernel match it.
//!
//! ```toml
//! format = 1
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
use std::net::Ipv4Addr;
use std::path::Path;

use super::{Strictness, Unknown, Warning};
pub use crate::net::{Ipv4Cidr, netmask_to_prefix};

/// The format this version writes.
pub const FORMAT: u32 = 1;

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
    /// Keys of a newer version, kept when the file is rewritten.
    #[serde(flatten)]
    pub unknown: Unknown<toml::Value>,
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub destination: Ipv4Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    /// Keys of a newer version, kept when the file is rewritten.
    #[serde(flatten)]
    pub unknown: Unknown<toml::Value>,
}

/// The whole network settings file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The file's format version (0: written before versions were introduced).
    #[serde(default)]
    pub format: u32,
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
    /// Keys of a newer version, kept when the file is rewritten.
    #[serde(flatten)]
    pub unknown: Unknown<toml::Value>,
}

/// Errors reading or validating the network settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Read(String, #[source] std::io::Error),
    /// Not TOML of the expected shape; the message has the line and the field.
    #[error("{0}: {1}")]
    Parse(String, String),
    /// A key this version does not know, in settings that were submitted.
    #[error("{0}: unknown setting `{1}`")]
    Unknown(String, String),
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
}

fn invalid(field: impl Into<String>, problem: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.to_string(),
    }
}

/// A value that is not acceptable, in words for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Problem(pub String);

impl From<&str> for Problem {
    fn from(s: &str) -> Problem {
        Problem(s.to_string())
    }
}

/// Check a host name (RFC 1123): labels of letters, digits and hyphens.
pub fn check_hostname(h: &str) -> Result<(), Problem> {
    if h.is_empty() {
        return Err(Problem::from("hostname is empty"));
    }
    if h.len() > 253 {
        return Err(Problem::from("hostname is longer than 253 characters"));
    }
    for label in h.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(Problem::from(
                "each part of the hostname must be 1 to 63 characters",
            ));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(Problem::from(
                "hostname may hold only letters, digits, '-' and '.'",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(Problem::from(
                "a part of the hostname cannot begin or end with '-'",
            ));
        }
    }
    Ok(())
}

/// Check a link name as the kernel does (1..15 bytes, no '/', no whitespace).
pub fn check_ifname(n: &str) -> Result<(), Problem> {
    if n.is_empty() || n.len() > 15 || n.contains('/') || n.contains(char::is_whitespace) {
        return Err(Problem(format!(
            "{n:?} is not a valid interface name (1-15 characters)"
        )));
    }
    Ok(())
}

/// Check an address for use on a host: not the subnet's network or broadcast address.
pub fn check_host_address(c: &Ipv4Cidr) -> Result<(), Problem> {
    if c.addr.is_unspecified() || c.addr.is_broadcast() || c.addr.is_multicast() {
        return Err(Problem(format!("{} cannot be a host address", c.addr)));
    }
    if c.addr.is_loopback() {
        return Err(Problem(format!("{} is a loopback address", c.addr)));
    }
    if c.prefix == 0 {
        return Err(Problem::from("prefix must be 1 to 32"));
    }
    if c.prefix <= 30 {
        if c.addr == c.network() {
            return Err(Problem(format!(
                "{} is the network address of {}/{}",
                c.addr,
                c.network(),
                c.prefix
            )));
        }
        if c.addr == c.broadcast() {
            return Err(Problem(format!(
                "{} is the broadcast address of {}/{}",
                c.addr,
                c.network(),
                c.prefix
            )));
        }
    }
    Ok(())
}

/// Check a gateway against the interface's address.
pub fn check_gateway(gw: Ipv4Addr, on: &Ipv4Cidr) -> Result<(), Problem> {
    if gw == on.addr {
        return Err(Problem::from(
            "gateway must differ from the appliance's own address",
        ));
    }
    if !on.contains(gw) {
        return Err(Problem(format!(
            "gateway {gw} is outside the subnet {}/{}",
            on.network(),
            on.prefix
        )));
    }
    if on.prefix <= 30 && (gw == on.network() || gw == on.broadcast()) {
        return Err(Problem(format!(
            "gateway {gw} is the network or broadcast address"
        )));
    }
    Ok(())
}

impl NetworkConfig {
    /// Reads and validates the file; keys this version does not know are warnings.
    pub fn load(path: &Path) -> Result<(Self, Vec<Warning>), ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(name.clone(), e))?;
        Self::parse(&text, &name, Strictness::Stored)
    }

    /// Parses and validates settings; `origin` names them in messages (a path, or
    /// "the submitted settings").
    pub fn parse(
        text: &str,
        origin: &str,
        strictness: Strictness,
    ) -> Result<(Self, Vec<Warning>), ConfigError> {
        let cfg: NetworkConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let at = line.map_or(String::new(), |l| format!(" (line {l})"));
            ConfigError::Parse(
                origin.to_string(),
                format!("{}{at}", e.message().trim_end()),
            )
        })?;
        let warnings = cfg.unknown_keys(origin);
        if strictness == Strictness::Submitted {
            if let Some(w) = warnings.first() {
                return Err(ConfigError::Unknown(origin.to_string(), w.at.clone()));
            }
        }
        cfg.validate()?;
        let mut warnings = warnings;
        warnings.extend(super::newer_format(origin, cfg.format, FORMAT));
        Ok((cfg, warnings))
    }

    /// The keys of a newer version anywhere in the settings.
    fn unknown_keys(&self, origin: &str) -> Vec<Warning> {
        let mut w = super::unknown_keys(origin, "", &self.unknown);
        for (i, ifc) in self.interfaces.iter().enumerate() {
            w.extend(super::unknown_keys(
                origin,
                &format!("interface[{i}]"),
                &ifc.unknown,
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            w.extend(super::unknown_keys(
                origin,
                &format!("route[{i}]"),
                &r.unknown,
            ));
        }
        w
    }

    /// The file's text, in this version's format.
    pub fn to_toml(&self) -> String {
        let mut current = self.clone();
        current.format = FORMAT;
        toml::to_string(&current).unwrap_or_default()
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
    fn host_and_gateway_checks() {
        let c: Ipv4Cidr = "192.0.2.10/24".parse().unwrap();
        assert!(check_host_address(&c).is_ok());
        assert!(check_host_address(&"192.0.2.0/24".parse().unwrap()).is_err());
        assert!(check_host_address(&"192.0.2.255/24".parse().unwrap()).is_err());
        assert!(check_gateway(Ipv4Addr::new(192, 0, 2, 1), &c).is_ok());
        let e = check_gateway(Ipv4Addr::new(10, 0, 0, 1), &c).unwrap_err();
        assert!(e.0.contains("outside the subnet 192.0.2.0/24"), "{e}");
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
        assert_eq!(again.format, FORMAT, "written in this version's format");
        assert_eq!(NetworkConfig { format: 0, ..again }, cfg);
    }

    const NEWER: &str = r#"
format = 2
hostname = "lb1"
ntp = ["192.0.2.123"]

[[interface]]
name = "eth0"
addresses = ["192.0.2.10/24"]
ipv6 = ["2001:db8::10/64"]
"#;

    #[test]
    fn a_newer_file_is_read_with_warnings_and_its_keys_are_kept() {
        let (cfg, warnings) =
            NetworkConfig::parse(NEWER, "network.toml", Strictness::Stored).unwrap();
        let at: Vec<&str> = warnings.iter().map(|w| w.at.as_str()).collect();
        assert_eq!(at, ["ntp", "interface[0].ipv6", ""], "{warnings:?}");
        assert!(warnings[2].message.contains("format 2"), "{warnings:?}");
        assert_eq!(cfg.interfaces[0].addresses[0].to_string(), "192.0.2.10/24");
        let text = cfg.to_toml();
        assert!(text.contains("ntp = [\"192.0.2.123\"]"), "{text}");
        assert!(text.contains("ipv6 = [\"2001:db8::10/64\"]"), "{text}");
    }

    #[test]
    fn submitted_settings_with_an_unknown_key_are_refused_by_name() {
        let e = NetworkConfig::parse(NEWER, "the submitted settings", Strictness::Submitted)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "the submitted settings: unknown setting `ntp`");
    }

    #[test]
    fn a_file_that_is_not_toml_is_refused_with_its_line() {
        let e = NetworkConfig::parse(
            "hostname = \"lb1\"\ndns = [1\n",
            "network.toml",
            Strictness::Stored,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("network.toml: ") && e.contains("line 2"),
            "{e}"
        );
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
