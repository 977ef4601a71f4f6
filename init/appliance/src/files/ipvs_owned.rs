//! The IPVS services lbcore made (`/data/config/lbcore-ipvs.json`): lbcore deletes only
//! services it made itself, and this file remembers them across restarts, so that a
//! service removed from the configuration while lbcore was stopped still leaves the
//! kernel. lbcore is its only writer.
//!
//! ```json
//! {"format": 1, "services": [{"protocol": 6, "address": "172.26.11.70", "port": 104}]}
//! ```
//!
//! Format 0 (before format versions) was the bare list; it is still read.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Unknown, Warning};
use crate::atomic::{self, AtomicWriteError};

/// The format this version writes.
pub const FORMAT: u32 = 1;

/// One IPVS virtual service: protocol number (6 = TCP), address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OwnedService {
    pub protocol: u16,
    pub address: IpAddr,
    pub port: u16,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OwnedFile {
    #[serde(default)]
    format: u32,
    #[serde(default)]
    services: BTreeSet<OwnedService>,
    #[serde(flatten)]
    unknown: Unknown<serde_json::Value>,
}

/// Reads the file. A missing one is empty; one that cannot be read is empty with a
/// warning (then services lbcore made earlier and no longer configured stay in the
/// kernel until removed by hand: the safe side, since lbcore never deletes what it
/// cannot prove it made).
pub fn load(path: &Path) -> (BTreeSet<OwnedService>, Vec<Warning>) {
    let name = path.display().to_string();
    let warn = |message: String| {
        vec![Warning {
            file: name.clone(),
            at: String::new(),
            message,
        }]
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (BTreeSet::new(), Vec::new()),
        Err(e) => {
            return (
                BTreeSet::new(),
                warn(format!("cannot be read: {e}; {LEFT}")),
            );
        }
    };
    let parsed = serde_json::from_str::<serde_json::Value>(&text).and_then(|v| {
        if v.is_array() {
            serde_json::from_value(v).map(|services| OwnedFile {
                services,
                ..OwnedFile::default()
            })
        } else {
            serde_json::from_value(v)
        }
    });
    match parsed {
        Ok(f) => {
            let mut w = super::unknown_keys(&name, "", &f.unknown);
            w.extend(super::newer_format(&name, f.format, FORMAT));
            (f.services, w)
        }
        Err(e) => (
            BTreeSet::new(),
            warn(format!("not understood ({e}); {LEFT}")),
        ),
    }
}

const LEFT: &str = "IPVS services lbcore made earlier and no longer configured stay in the kernel";

/// Replaces the file atomically; what a newer version added to it is kept.
pub fn save(path: &Path, services: &BTreeSet<OwnedService>) -> Result<(), AtomicWriteError> {
    let unknown = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<OwnedFile>(&t).ok())
        .map(|f| f.unknown)
        .unwrap_or_default();
    let file = OwnedFile {
        format: FORMAT,
        services: services.clone(),
        unknown,
    };
    let text = serde_json::to_string_pretty(&file).unwrap_or_default();
    atomic::write(path, text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one() -> BTreeSet<OwnedService> {
        BTreeSet::from([OwnedService {
            protocol: 6,
            address: "10.0.0.70".parse().unwrap(),
            port: 104,
        }])
    }

    #[test]
    fn saved_and_read_back_and_the_bare_list_of_format_0_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lbcore-ipvs.json");
        save(&path, &one()).unwrap();
        assert_eq!(load(&path), (one(), vec![]));
        std::fs::write(
            &path,
            r#"[{"protocol":6,"address":"10.0.0.70","port":104}]"#,
        )
        .unwrap();
        assert_eq!(load(&path), (one(), vec![]));
    }

    #[test]
    fn a_damaged_or_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lbcore-ipvs.json");
        assert_eq!(load(&path), (BTreeSet::new(), vec![]));
        std::fs::write(&path, "garbage").unwrap();
        let (owned, warnings) = load(&path);
        assert!(owned.is_empty());
        assert!(
            warnings[0].message.contains("not understood"),
            "{warnings:?}"
        );
    }
}
