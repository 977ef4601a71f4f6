//! The firewall's settings (`/data/config/firewall.toml`), a setting of each appliance
//! (never replicated to a cluster peer): the lockdown, which restricts the management
//! ports to the administrators' networks, and the custom rules (the reference guide's
//! "firewall script"), an nftables snippet in a chain of its own. lbcore writes it.
//!
//! ```toml
//! format = 1
//! lockdown = ["192.0.2.0/24", "2001:db8:10::/64"]   # empty: management from anywhere
//! custom = """
//! tcp dport 161 ip saddr 192.0.2.0/24 accept
//! """
//! ```

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{Strictness, Unknown, Warning};
use crate::atomic::{self, AtomicWriteError};

/// The format this version writes.
pub const FORMAT: u32 = 1;
/// The largest custom snippet accepted.
pub const MAX_CUSTOM: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FirewallSettings {
    #[serde(default)]
    pub format: u32,
    /// The networks management (the web UI, later SSH and SNMP) is reachable from; empty:
    /// from anywhere (lockdown off).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lockdown: Vec<IpNet>,
    /// Rules of the administrator's own, inside the appliance's input chain (nftables
    /// syntax, one rule a line).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub custom: String,
    #[serde(flatten)]
    pub unknown: Unknown<toml::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirewallError {
    #[error("{0}: {1}")]
    Syntax(String, String),
    #[error("{0}: unknown setting `{1}`")]
    Unknown(String, String),
    #[error("lockdown: {0} is not a network (write it as 192.0.2.0/24)")]
    Network(String),
    #[error("custom: the rules are longer than {MAX_CUSTOM} bytes")]
    TooLong,
}

impl FirewallSettings {
    /// Reads the file; a missing one is no lockdown and no custom rules.
    pub fn load(path: &Path) -> Result<(FirewallSettings, Vec<Warning>), FirewallError> {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &name, Strictness::Stored),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok((FirewallSettings::default(), Vec::new()))
            }
            Err(e) => Err(FirewallError::Syntax(name, e.to_string())),
        }
    }

    pub fn parse(
        text: &str,
        origin: &str,
        strictness: Strictness,
    ) -> Result<(FirewallSettings, Vec<Warning>), FirewallError> {
        let s: FirewallSettings = toml::from_str(text).map_err(|e| {
            let m = e.message().to_string();
            if m.contains("invalid IP address") || m.contains("invalid") && m.contains("network") {
                FirewallError::Network(m)
            } else {
                FirewallError::Syntax(origin.into(), m)
            }
        })?;
        let mut warnings = super::unknown_keys(origin, "", &s.unknown);
        if strictness == Strictness::Submitted {
            if let Some(w) = warnings.first() {
                return Err(FirewallError::Unknown(origin.into(), w.at.clone()));
            }
        }
        if s.custom.len() > MAX_CUSTOM {
            return Err(FirewallError::TooLong);
        }
        warnings.extend(super::newer_format(origin, s.format, FORMAT));
        Ok((s, warnings))
    }

    /// Whether `peer` may reach the management ports.
    pub fn allows(&self, peer: IpAddr) -> bool {
        self.lockdown.is_empty() || self.lockdown.iter().any(|n| n.contains(&peer))
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> Result<(), AtomicWriteError> {
        let mut s = self.clone();
        s.format = FORMAT;
        let text = toml::to_string(&s).unwrap_or_default();
        atomic::write(path, text.as_bytes(), 0o644)
    }
}

/// A network as an administrator writes it (`192.0.2.0/24`, or one address), checked.
pub fn parse_network(text: &str) -> Result<IpNet, FirewallError> {
    let t = text.trim();
    if let Ok(n) = t.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    t.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| FirewallError::Network(t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_networks_decide_who_reaches_management() {
        let (s, _) = FirewallSettings::parse(
            "lockdown = [\"192.0.2.0/24\", \"2001:db8::/64\"]\n",
            "firewall.toml",
            Strictness::Submitted,
        )
        .unwrap();
        assert!(s.allows("192.0.2.77".parse().unwrap()));
        assert!(!s.allows("198.51.100.1".parse().unwrap()));
        assert!(s.allows("2001:db8::5".parse().unwrap()));
        assert!(FirewallSettings::default().allows("198.51.100.1".parse().unwrap()));
        assert_eq!(
            parse_network("192.0.2.9/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            parse_network(" 10.1.2.3 ").unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert!(parse_network("10.1.2/24").is_err());
    }

    #[test]
    fn saved_and_read_back_with_a_newer_version_s_keys_warned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firewall.toml");
        let s = FirewallSettings {
            lockdown: vec![parse_network("192.0.2.0/24").unwrap()],
            custom: "tcp dport 161 accept\n".into(),
            ..FirewallSettings::default()
        };
        s.save(&path).unwrap();
        assert_eq!(
            FirewallSettings::load(&path).unwrap().0.lockdown,
            s.lockdown
        );
        std::fs::write(&path, "format = 2\nssh = true\n").unwrap();
        let (_, w) = FirewallSettings::load(&path).unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
    }
}
