//! The update agent's state (`/data/updates/state.json`), written atomically at every
//! step of an update, so that the agent started after a crash or a power cut (on either
//! slot) knows where the update was and finishes or cleans it up:
//!
//! ```json
//! {"format": 1, "step": "installed",
//!  "target": {"version": "0.2.0", "slot": "b", "from_version": "0.1.0", "from_slot": "a"},
//!  "last": {"outcome": "installed", "message": "...", "at": 1767225600}}
//! ```
//!
//! `step` is what was under way: `idle`, `receiving` (an archive is being uploaded or
//! downloaded), `received` (an archive is staged), `installing` (the inactive slot is
//! being written), `installed` (the slot has its trial boot; reboot pending or the new
//! system coming up). An unknown step (a newer version's) is read as idle, with a
//! warning: the agent then cleans up what it finds staged.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Unknown, Warning};
use crate::atomic::{self, AtomicWriteError};

/// The format this version writes.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Idle,
    Receiving,
    Received,
    Installing,
    Installed,
}

/// The version an update installs, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub version: String,
    pub slot: String,
    pub from_version: String,
    pub from_slot: String,
    #[serde(flatten)]
    pub unknown: Unknown<serde_json::Value>,
}

/// How the last update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Installed into the other slot; the reboot is the administrator's to choose.
    Installed,
    /// The new version came up and was marked good.
    Confirmed,
    /// The new version did not come up; the boot loader went back to the old one.
    RolledBack,
    /// The archive was refused (the reason says why); nothing changed.
    Refused,
    /// The appliance could not carry it out (its disk); nothing changed.
    Failed,
    /// A restart or power cut interrupted it before the slot was given its trial;
    /// nothing changed on the running system.
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastResult {
    pub outcome: Outcome,
    pub message: String,
    /// Seconds since 1970.
    pub at: u64,
    #[serde(flatten)]
    pub unknown: Unknown<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    #[serde(default)]
    pub format: u32,
    pub step: Step,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<LastResult>,
    #[serde(flatten)]
    pub unknown: Unknown<serde_json::Value>,
}

impl Default for UpdateState {
    fn default() -> Self {
        UpdateState {
            format: FORMAT,
            step: Step::Idle,
            target: None,
            last: None,
            unknown: Unknown::new(),
        }
    }
}

impl UpdateState {
    /// Reads the file; a missing one is idle; one that cannot be read is idle with a
    /// warning (the agent then cleans up whatever is staged).
    pub fn load(path: &Path) -> (UpdateState, Vec<Warning>) {
        let name = path.display().to_string();
        let warn = |message: String| Warning {
            file: name.clone(),
            at: String::new(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return (UpdateState::default(), Vec::new());
            }
            Err(e) => {
                return (
                    UpdateState::default(),
                    vec![warn(format!("cannot be read: {e}"))],
                );
            }
        };
        let mut value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                return (
                    UpdateState::default(),
                    vec![warn(format!("not understood: {e}"))],
                );
            }
        };
        let mut warnings = Vec::new();
        // a step of a newer version: idle, and say so
        let known = ["idle", "receiving", "received", "installing", "installed"];
        if let Some(step) = value.get("step").and_then(|s| s.as_str()) {
            if !known.contains(&step) {
                warnings.push(warn(format!(
                    "step `{step}` is not known to this version: read as idle"
                )));
                value["step"] = "idle".into();
            }
        }
        match serde_json::from_value::<UpdateState>(value) {
            Ok(s) => {
                warnings.extend(super::unknown_keys(&name, "", &s.unknown));
                warnings.extend(super::newer_format(&name, s.format, FORMAT));
                (s, warnings)
            }
            Err(e) => (
                UpdateState::default(),
                vec![warn(format!("not understood: {e}"))],
            ),
        }
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> Result<(), AtomicWriteError> {
        let mut s = self.clone();
        s.format = FORMAT;
        let text = serde_json::to_string_pretty(&s).unwrap_or_default();
        atomic::write(path, text.as_bytes(), 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_survives_a_write_and_a_newer_step_reads_as_idle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(UpdateState::load(&path).0, UpdateState::default());
        let s = UpdateState {
            step: Step::Installed,
            target: Some(Target {
                version: "0.2.0".into(),
                slot: "b".into(),
                from_version: "0.1.0".into(),
                from_slot: "a".into(),
                unknown: Unknown::new(),
            }),
            ..UpdateState::default()
        };
        s.save(&path).unwrap();
        assert_eq!(UpdateState::load(&path), (s, vec![]));
        std::fs::write(
            &path,
            r#"{"format":2,"step":"downloading-delta","resume":{"offset":5}}"#,
        )
        .unwrap();
        let (s, warnings) = UpdateState::load(&path);
        assert_eq!(s.step, Step::Idle);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
    }
}
