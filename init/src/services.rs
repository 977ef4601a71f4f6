//! The services file (`/etc/init/services.toml` in the image): which programs init
//! starts and supervises, in what order, how it restarts them and how it knows they
//! are ready.
//!
//! ```toml
//! [[service]]
//! name = "lbcore"
//! command = "/usr/bin/lbcore"
//! args = ["--config", "{data}/config/lbcore.toml"]
//! env = { RUST_LOG = "info" }
//! depends_on = []               # names of services that must be ready first
//! restart = "always"            # always | on-failure | never
//! backoff_initial_ms = 100      # first restart delay, doubled on each failure ...
//! backoff_max_ms = 30000        # ... up to this cap
//! reset_after_ms = 10000        # running this long resets the delay
//! stop_timeout_ms = 5000        # SIGTERM, then SIGKILL after this grace period
//! [service.ready]               # optional; without it a service is ready once started
//! socket = "{run}/lbcore.sock"  # ready when this path exists, or:
//! # line = "listening"          # ready when a stdout line contains this text
//! timeout_ms = 30000            # "not ready" is reported after this long
//! ```
//!
//! `{data}`, `{run}` and `{root}` in `command`, `args`, `env` values and
//! `ready.socket` are replaced by the data root, run directory and root directory
//! (`/data`, `/run`, `/` on the appliance).

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

/// When a service is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// How readiness is signalled.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    /// Ready once this path exists.
    pub socket: Option<String>,
    /// Ready once a stdout line contains this text.
    pub line: Option<String>,
    /// Report "not ready" after this long.
    #[serde(default = "default_ready_timeout")]
    pub timeout_ms: u64,
}

fn default_ready_timeout() -> u64 {
    30_000
}
fn default_backoff_initial() -> u64 {
    100
}
fn default_backoff_max() -> u64 {
    30_000
}
fn default_reset_after() -> u64 {
    10_000
}
fn default_stop_timeout() -> u64 {
    5_000
}

/// One service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub restart: Restart,
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    #[serde(default = "default_reset_after")]
    pub reset_after_ms: u64,
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_ms: u64,
    #[serde(default)]
    pub ready: Option<Ready>,
}

/// No delay or timeout is longer than a day (keeps time arithmetic far from overflow).
const MAX_MS: u64 = 86_400_000;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v.min(MAX_MS))
}

impl Service {
    pub fn backoff_initial(&self) -> Duration {
        ms(self.backoff_initial_ms)
    }
    pub fn backoff_max(&self) -> Duration {
        ms(self.backoff_max_ms.max(self.backoff_initial_ms))
    }
    pub fn reset_after(&self) -> Duration {
        ms(self.reset_after_ms)
    }
    pub fn stop_timeout(&self) -> Duration {
        ms(self.stop_timeout_ms)
    }
    pub fn ready_timeout(&self) -> Duration {
        ms(self.ready.as_ref().map_or(30_000, |r| r.timeout_ms))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    service: Vec<Service>,
}

/// Errors in the services file.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("parsing {0}: {1}")]
    Parse(String, toml::de::Error),
    #[error("service {0}: {1}")]
    Invalid(String, String),
}

/// Values for the `{data}`, `{run}`, `{root}` placeholders.
#[derive(Debug, Clone)]
pub struct Placeholders {
    pub data: String,
    pub run: String,
    pub root: String,
}

impl Placeholders {
    fn apply(&self, s: &str) -> String {
        s.replace("{data}", &self.data)
            .replace("{run}", &self.run)
            .replace("{root}", self.root.trim_end_matches('/'))
    }
}

/// Read, substitute and check the services file; the result is in start order
/// (every service after those it depends on).
pub fn load(path: &Path, ph: &Placeholders) -> Result<Vec<Service>, ServicesError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ServicesError::Read(path.display().to_string(), e))?;
    parse(&text, ph).map_err(|e| match e {
        ServicesError::Parse(_, err) => ServicesError::Parse(path.display().to_string(), err),
        other => other,
    })
}

/// Parse the text of a services file.
pub fn parse(text: &str, ph: &Placeholders) -> Result<Vec<Service>, ServicesError> {
    let file: File = toml::from_str(text).map_err(|e| ServicesError::Parse(String::new(), e))?;
    let mut services = file.service;
    for s in &mut services {
        s.command = ph.apply(&s.command);
        s.args = s.args.iter().map(|a| ph.apply(a)).collect();
        for v in s.env.values_mut() {
            *v = ph.apply(v);
        }
        if let Some(r) = &mut s.ready {
            r.socket = r.socket.as_deref().map(|p| ph.apply(p));
        }
    }
    order(services)
}

/// Check names and dependencies and sort topologically (stable: file order otherwise).
pub fn order(services: Vec<Service>) -> Result<Vec<Service>, ServicesError> {
    let mut index = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ServicesError::Invalid(
                s.name.clone(),
                "name must be letters, digits, '-', '_' or '.'".into(),
            ));
        }
        if s.command.is_empty() {
            return Err(ServicesError::Invalid(
                s.name.clone(),
                "command is empty".into(),
            ));
        }
        if let Some(r) = &s.ready
            && r.socket.is_some() == r.line.is_some()
        {
            return Err(ServicesError::Invalid(
                s.name.clone(),
                "ready needs exactly one of socket or line".into(),
            ));
        }
        if index.insert(s.name.clone(), i).is_some() {
            return Err(ServicesError::Invalid(
                s.name.clone(),
                "defined twice".into(),
            ));
        }
    }
    for s in &services {
        for d in &s.depends_on {
            if !index.contains_key(d) {
                return Err(ServicesError::Invalid(
                    s.name.clone(),
                    format!("depends on unknown service {d}"),
                ));
            }
        }
    }
    // Depth-first topological sort with cycle detection.
    let mut state = vec![0u8; services.len()]; // 0 new, 1 visiting, 2 done
    let mut out_idx = Vec::with_capacity(services.len());
    fn visit(
        i: usize,
        services: &[Service],
        index: &HashMap<String, usize>,
        state: &mut [u8],
        out: &mut Vec<usize>,
    ) -> Result<(), ServicesError> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                return Err(ServicesError::Invalid(
                    services[i].name.clone(),
                    "dependency cycle".into(),
                ));
            }
            _ => {}
        }
        state[i] = 1;
        for d in &services[i].depends_on {
            if let Some(&j) = index.get(d) {
                visit(j, services, index, state, out)?;
            }
        }
        state[i] = 2;
        out.push(i);
        Ok(())
    }
    for i in 0..services.len() {
        visit(i, &services, &index, &mut state, &mut out_idx)?;
    }
    let mut slots: Vec<Option<Service>> = services.into_iter().map(Some).collect();
    Ok(out_idx
        .into_iter()
        .filter_map(|i| slots[i].take())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ph() -> Placeholders {
        Placeholders {
            data: "/d".into(),
            run: "/r".into(),
            root: "/".into(),
        }
    }

    #[test]
    fn parses_and_orders() {
        let text = r#"
[[service]]
name = "web"
command = "/usr/bin/web"
depends_on = ["lbcore"]
restart = "on-failure"

[[service]]
name = "lbcore"
command = "{root}/usr/bin/lbcore"
args = ["--config", "{data}/config/lbcore.toml"]
env = { SOCK = "{run}/lbcore.sock" }
[service.ready]
socket = "{run}/lbcore.sock"
"#;
        let s = parse(text, &ph()).unwrap();
        assert_eq!(s[0].name, "lbcore");
        assert_eq!(s[1].name, "web");
        assert_eq!(s[0].command, "/usr/bin/lbcore");
        assert_eq!(s[0].args[1], "/d/config/lbcore.toml");
        assert_eq!(s[0].env["SOCK"], "/r/lbcore.sock");
        assert_eq!(
            s[0].ready.as_ref().unwrap().socket.as_deref(),
            Some("/r/lbcore.sock")
        );
        assert_eq!(s[1].restart, Restart::OnFailure);
        assert_eq!(s[0].backoff_max_ms, 30_000);
    }

    #[test]
    fn refuses_cycles_and_unknowns() {
        let cyc = "[[service]]\nname=\"a\"\ncommand=\"x\"\ndepends_on=[\"b\"]\n[[service]]\nname=\"b\"\ncommand=\"x\"\ndepends_on=[\"a\"]\n";
        assert!(parse(cyc, &ph()).unwrap_err().to_string().contains("cycle"));
        let unk = "[[service]]\nname=\"a\"\ncommand=\"x\"\ndepends_on=[\"z\"]\n";
        assert!(
            parse(unk, &ph())
                .unwrap_err()
                .to_string()
                .contains("unknown service z")
        );
        let both =
            "[[service]]\nname=\"a\"\ncommand=\"x\"\n[service.ready]\nsocket=\"s\"\nline=\"l\"\n";
        assert!(
            parse(both, &ph())
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );
    }
}
