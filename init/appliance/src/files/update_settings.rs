//! Where the appliance looks for updates online (`/data/config/update.toml`): a setting
//! of each appliance (never replicated to a cluster peer). Absent, or without `url`:
//! no online updates; offline uploads work either way. The update agent writes it.
//!
//! ```toml
//! format = 1
//! url = "https://updates.example.org/medlb/index.json"
//! check = true                 # look for updates every `interval_hours`
//! interval_hours = 24
//! ca_file = "/data/config/update-ca.pem"   # a hospital mirror's own CA, besides the system's
//! proxy = "http://proxy.example.org:3128"  # credentials as http://user:password@host:port
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Strictness, Unknown, Warning};
use crate::atomic::{self, AtomicWriteError};

/// The format this version writes.
pub const FORMAT: u32 = 1;
/// How often the agent looks when nothing else is set.
pub const DEFAULT_INTERVAL_HOURS: u32 = 24;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateSettings {
    #[serde(default)]
    pub format: u32,
    /// The update server's index (HTTPS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Look for updates by itself every `interval_hours`.
    #[serde(default = "yes")]
    pub check: bool,
    #[serde(default = "default_interval")]
    pub interval_hours: u32,
    /// A CA certificate (PEM) trusted besides the system's, for an internal mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// An HTTP proxy (`http://[user:password@]host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown<toml::Value>,
}

fn yes() -> bool {
    true
}

fn default_interval() -> u32 {
    DEFAULT_INTERVAL_HOURS
}

impl Default for UpdateSettings {
    fn default() -> Self {
        UpdateSettings {
            format: FORMAT,
            url: None,
            check: true,
            interval_hours: DEFAULT_INTERVAL_HOURS,
            ca_file: None,
            proxy: None,
            unknown: Unknown::new(),
        }
    }
}

/// Why settings are not acceptable; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{0}: {1}")]
    Syntax(String, String),
    #[error("{0}: unknown setting `{1}`")]
    Unknown(String, String),
    #[error("url: `{0}` is not an https:// address of the update server's index")]
    Url(String),
    #[error("interval_hours: must be 1 to 720 (30 days), got {0}")]
    Interval(u32),
    #[error("proxy: `{0}` is not an http://[user:password@]host:port address")]
    Proxy(String),
    #[error("ca_file: `{0}` must be an absolute path")]
    CaFile(String),
}

impl UpdateSettings {
    /// Reads the file; a missing one is the defaults (no online updates).
    pub fn load(path: &Path) -> Result<(UpdateSettings, Vec<Warning>), SettingsError> {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &name, Strictness::Stored),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok((UpdateSettings::default(), Vec::new()))
            }
            Err(e) => Err(SettingsError::Syntax(name, e.to_string())),
        }
    }

    /// Parses and checks settings (`Submitted`: an unknown key is refused).
    pub fn parse(
        text: &str,
        origin: &str,
        strictness: Strictness,
    ) -> Result<(UpdateSettings, Vec<Warning>), SettingsError> {
        let s: UpdateSettings = toml::from_str(text)
            .map_err(|e| SettingsError::Syntax(origin.into(), e.message().to_string()))?;
        let mut warnings = super::unknown_keys(origin, "", &s.unknown);
        if strictness == Strictness::Submitted {
            if let Some(w) = warnings.first() {
                return Err(SettingsError::Unknown(origin.into(), w.at.clone()));
            }
        }
        s.validate()?;
        warnings.extend(super::newer_format(origin, s.format, FORMAT));
        Ok((s, warnings))
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        if let Some(u) = &self.url {
            let rest = u.strip_prefix("https://").unwrap_or("");
            let host = rest.split('/').next().unwrap_or("");
            if host.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(SettingsError::Url(u.clone()));
            }
        }
        if !(1..=720).contains(&self.interval_hours) {
            return Err(SettingsError::Interval(self.interval_hours));
        }
        if let Some(p) = &self.proxy {
            let rest = p.strip_prefix("http://").unwrap_or("");
            let hostport = rest.rsplit('@').next().unwrap_or("").trim_end_matches('/');
            let ok = hostport
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0));
            if !ok {
                return Err(SettingsError::Proxy(p.clone()));
            }
        }
        if let Some(c) = &self.ca_file {
            if !c.starts_with('/') {
                return Err(SettingsError::CaFile(c.clone()));
            }
        }
        Ok(())
    }

    /// Writes the file atomically (mode 0600: a proxy password may be in it).
    pub fn save(&self, path: &Path) -> Result<(), AtomicWriteError> {
        let mut s = self.clone();
        s.format = FORMAT;
        let text = toml::to_string(&s).unwrap_or_default();
        atomic::write(path, text.as_bytes(), 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_field_by_field() {
        let bad = |t: &str| {
            UpdateSettings::parse(t, "update.toml", Strictness::Submitted)
                .unwrap_err()
                .to_string()
        };
        assert!(bad("url = \"http://x/index.json\"").starts_with("url:"));
        assert!(bad("url = \"https://x/i\"\ninterval_hours = 0").starts_with("interval_hours:"));
        assert!(bad("proxy = \"proxy:3128\"").starts_with("proxy:"));
        assert!(bad("ca_file = \"ca.pem\"").starts_with("ca_file:"));
        assert_eq!(
            bad("urll = \"https://x\""),
            "update.toml: unknown setting `urll`"
        );
        let (s, _) = UpdateSettings::parse(
            "url = \"https://updates.example.org/medlb/index.json\"\nproxy = \"http://u:p@proxy:3128\"",
            "update.toml",
            Strictness::Submitted,
        )
        .unwrap();
        assert!(s.check && s.interval_hours == DEFAULT_INTERVAL_HOURS);
    }

    #[test]
    fn saved_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("update.toml");
        assert_eq!(
            UpdateSettings::load(&path).unwrap().0,
            UpdateSettings::default()
        );
        let s = UpdateSettings {
            url: Some("https://u.example/index.json".into()),
            proxy: Some("http://a:b@p:8080".into()),
            ..UpdateSettings::default()
        };
        s.save(&path).unwrap();
        assert_eq!(UpdateSettings::load(&path).unwrap().0, s);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
