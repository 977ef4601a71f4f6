//! The operator's Drain and Halt settings (`/data/config/lbcore-state.json`), kept so
//! that a real server put into maintenance stays out of rotation across a restart of
//! lbcore, a reboot or an update. lbcore is its only writer.
//!
//! ```json
//! {"format": 1, "servers": {"PACS": {"DS1": "drain", "DS2": "halt"}}}
//! ```
//!
//! Format 0 (before format versions) was the bare `servers` map; it is still read. A
//! state this version does not know (a newer one's) is read as Drain: it takes the
//! server out of rotation without closing its connections, the cautious reading of
//! "the operator set something here".

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Unknown, Warning};
use crate::atomic::{self, AtomicWriteError};

/// The format this version writes.
pub const FORMAT: u32 = 1;

/// What the operator asked of a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new connections when healthy.
    Online,
    /// No new connections; established ones stay.
    Drain,
    /// No new connections; established ones are closed.
    Halt,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Online => "online",
            AdminState::Drain => "drain",
            AdminState::Halt => "halt",
        }
    }

    fn parse(s: &str) -> Option<AdminState> {
        [AdminState::Online, AdminState::Drain, AdminState::Halt]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The file as it is on disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct StateFile {
    #[serde(default)]
    format: u32,
    /// service -> server -> state; Online is the default and is not stored. The states
    /// are kept as text so that one a newer version wrote survives a rewrite.
    #[serde(default)]
    servers: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(flatten)]
    unknown: Unknown<serde_json::Value>,
}

/// The operator states, as read from the file, with their file.
pub struct OperatorStates {
    path: PathBuf,
    file: StateFile,
}

impl OperatorStates {
    /// Reads the file: a missing one is empty; one that cannot be read is reported
    /// (in the warnings) and treated as empty, since lbcore must start regardless.
    pub fn load(path: &Path) -> (OperatorStates, Vec<Warning>) {
        let name = path.display().to_string();
        let warn = |message: String| Warning {
            file: name.clone(),
            at: String::new(),
            message,
        };
        let mut warnings = Vec::new();
        let file = match std::fs::read_to_string(path) {
            Ok(text) => match parse(&text) {
                Ok(f) => f,
                Err(e) => {
                    warnings.push(warn(format!(
                        "not understood ({e}): every real server starts online"
                    )));
                    StateFile::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => {
                warnings.push(warn(format!(
                    "cannot be read ({e}): every real server starts online"
                )));
                StateFile::default()
            }
        };
        warnings.extend(super::unknown_keys(&name, "", &file.unknown));
        warnings.extend(super::newer_format(&name, file.format, FORMAT));
        for (service, servers) in &file.servers {
            for (server, state) in servers {
                if AdminState::parse(state).is_none() {
                    warnings.push(Warning {
                        file: name.clone(),
                        at: format!("{service}/{server}"),
                        message: format!(
                            "state `{state}` is not known to this version: the server is kept out of rotation (drain)"
                        ),
                    });
                }
            }
        }
        (
            OperatorStates {
                path: path.to_path_buf(),
                file,
            },
            warnings,
        )
    }

    /// What the operator set for `server` of `service`; `None` is Online.
    pub fn get(&self, service: &str, server: &str) -> Option<AdminState> {
        let state = self.file.servers.get(service)?.get(server)?;
        Some(AdminState::parse(state).unwrap_or(AdminState::Drain))
    }

    /// Sets a state and writes the file atomically.
    pub fn set(
        &mut self,
        service: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), AtomicWriteError> {
        let servers = self.file.servers.entry(service.to_string()).or_default();
        if state == AdminState::Online {
            servers.remove(server);
        } else {
            servers.insert(server.to_string(), state.as_str().to_string());
        }
        self.file.servers.retain(|_, s| !s.is_empty());
        self.file.format = FORMAT;
        let text = serde_json::to_string_pretty(&self.file).unwrap_or_default();
        atomic::write(&self.path, text.as_bytes(), 0o644)
    }
}

/// Format 1 (an object with `format`) or format 0 (the bare map).
fn parse(text: &str) -> Result<StateFile, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    if value.get("format").is_some() {
        serde_json::from_value(value)
    } else {
        Ok(StateFile {
            format: 0,
            servers: serde_json::from_value(value)?,
            unknown: Unknown::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_reload_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (mut s, _) = OperatorStates::load(&path);
        s.set("PACS", "DS1", AdminState::Drain).unwrap();
        s.set("PACS", "DS2", AdminState::Halt).unwrap();
        s.set("PACS", "DS2", AdminState::Online).unwrap();
        let (again, warnings) = OperatorStates::load(&path);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(again.get("PACS", "DS1"), Some(AdminState::Drain));
        assert_eq!(again.get("PACS", "DS2"), None);
        std::fs::write(&path, "not json").unwrap();
        let (broken, warnings) = OperatorStates::load(&path);
        assert_eq!(broken.get("PACS", "DS1"), None);
        assert!(
            warnings[0].message.contains("not understood"),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_bare_map_of_format_0_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, r#"{"PACS": {"DS1": "halt"}}"#).unwrap();
        let (s, warnings) = OperatorStates::load(&path);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(s.get("PACS", "DS1"), Some(AdminState::Halt));
    }

    #[test]
    fn a_state_or_key_of_a_newer_version_is_kept_and_read_as_drain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(
            &path,
            r#"{"format": 2, "servers": {"PACS": {"DS1": "maintenance"}}, "since": {"PACS/DS1": 5}}"#,
        )
        .unwrap();
        let (mut s, warnings) = OperatorStates::load(&path);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert_eq!(s.get("PACS", "DS1"), Some(AdminState::Drain));
        s.set("HL7", "IMS1", AdminState::Drain).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["servers"]["PACS"]["DS1"], "maintenance");
        assert_eq!(v["since"]["PACS/DS1"], 5);
        assert_eq!(v["format"], FORMAT);
    }
}
