//! The operator's Drain and Halt settings, kept in a small JSON file so that a server
//! put into maintenance stays out of rotation across a restart of lbcore or a reboot.
//! Written atomically: a crash leaves either the old file or the new one.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::server::AdminState;

pub struct AdminStates {
    path: PathBuf,
    /// service -> server -> state; Online is the default and is not stored.
    states: BTreeMap<String, BTreeMap<String, AdminState>>,
}

impl AdminStates {
    /// Reads the file; a missing one is empty, an unreadable one is reported and ignored.
    pub fn load(path: &Path) -> AdminStates {
        let states = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                warn!("ignoring the operator state file {}: {e}", path.display());
                BTreeMap::new()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                warn!(
                    "cannot read the operator state file {}: {e}",
                    path.display()
                );
                BTreeMap::new()
            }
        };
        AdminStates {
            path: path.to_path_buf(),
            states,
        }
    }

    pub fn get(&self, service: &str, server: &str) -> Option<AdminState> {
        self.states.get(service)?.get(server).copied()
    }

    pub fn set(&mut self, service: &str, server: &str, state: AdminState) -> io::Result<()> {
        let servers = self.states.entry(service.to_string()).or_default();
        if state == AdminState::Online {
            servers.remove(server);
        } else {
            servers.insert(server.to_string(), state);
        }
        self.states.retain(|_, s| !s.is_empty());
        let text = serde_json::to_string_pretty(&self.states).map_err(io::Error::other)?;
        crate::atomic_file::write(&self.path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_reload_from_disk() {
        let dir = std::env::temp_dir().join(format!("lbcore-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let mut s = AdminStates::load(&path);
        s.set("PACS", "DS1", AdminState::Drain).unwrap();
        s.set("PACS", "DS2", AdminState::Halt).unwrap();
        s.set("PACS", "DS2", AdminState::Online).unwrap();
        let again = AdminStates::load(&path);
        assert_eq!(again.get("PACS", "DS1"), Some(AdminState::Drain));
        assert_eq!(again.get("PACS", "DS2"), None);
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(AdminStates::load(&path).get("PACS", "DS1"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
