//! lbcore's control protocol: what lbctl, lbweb (and later the cluster peer) ask of a
//! running lbcore, over its Unix socket (`/run/lbcore.sock`).
//!
//! One [`Request`] per line of JSON, one [`Reply`] per line back: either the typed
//! [`Answer`] of that request or a [`Refused`] with its [`RefusalKind`] and a reason
//! that names what is wrong. A connection may carry any number of requests.
//!
//! ```text
//! -> {"command":"set-state","service":"PACS","server":"DS1","state":"drain"}
//! <- {"outcome":"done","answer":"state-set","service":"PACS","server":"DS1","state":"drain","before":"online","saved":true,"message":"..."}
//! -> {"command":"apply","config":"[[service]]\n..."}
//! <- {"outcome":"refused","kind":"invalid","reason":"service 1 (\"PACS\"): line 6, column 1: weight: ..."}
//! ```
//!
//! Compatibility (docs/compatibility.md): requests and answers gain fields, never lose
//! or rename them, and a reader ignores fields it does not know; a command this
//! version does not know is refused as [`RefusalKind::Unsupported`], so a newer
//! client can tell "not here" from "wrong".
//!
//! - [`status`]: the System Overview that the status request answers.
//! - [`ipvs`]: the kernel's IPVS table as lbcore reports it.
//! - [`firewall`]: the firewall's status, lockdown and custom rules.
//! - [`client`]: a blocking client for lbctl, lbweb and the tests.

pub mod client;
pub mod firewall;
pub mod ipvs;
pub mod status;

use serde::{Deserialize, Serialize};

pub use appliance::files::Warning;
pub use appliance::files::operator_state::AdminState;
pub use client::{CallError, Client};
pub use firewall::{FirewallStatus, LockdownApplied};
pub use status::Status;

/// The version of this protocol; a status answer carries it.
pub const PROTOCOL: u32 = 1;

/// The longest request line lbcore reads; a longer one is refused and the connection
/// closed (a configuration is at most a few hundred KiB).
pub const MAX_REQUEST: usize = 1 << 20;

/// What a client asks of lbcore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// The System Overview: every service and real server with its state.
    Status,
    /// Drain, Halt or Online for one real server.
    SetState {
        service: String,
        server: String,
        state: AdminState,
    },
    /// Reads the configuration file again; an invalid one is refused and the running
    /// configuration stays.
    Reload,
    /// Makes `config` (TOML text) the configuration: validated strictly and its ports
    /// bound first, then written to the configuration file atomically, then applied. A
    /// refused one changes neither the file nor what runs. `origin` names the text in a
    /// refusal (the file lbctl read it from; absent: "the submitted configuration").
    Apply {
        config: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
    },
    /// The configuration file's text, as the running configuration was read from it.
    ShowConfig,
    /// The firewall: lockdown, custom rules, the active ruleset and its counters.
    Firewall,
    /// Restricts the management ports to `networks` (CIDRs or addresses). Applied at
    /// once, saved only when confirmed ([`Request::ConfirmLockdown`]) within the window,
    /// else undone. `requester`: the address the administrator asks from (the web UI
    /// passes the browser's); a list that would shut it out is refused.
    SetLockdown {
        networks: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requester: Option<String>,
    },
    /// Keeps the lockdown that [`Request::SetLockdown`] applied (its `token`).
    ConfirmLockdown { token: String },
    /// Management from anywhere again (the console's recovery path); `origin` is logged.
    LockdownOff { origin: String },
    /// Makes `text` the custom rules, once nft has checked them with the whole ruleset.
    SetCustomRules { text: String },
}

impl Request {
    /// Every command of this version, as on the wire ([`Request::name`] of each).
    pub const COMMANDS: [&'static str; 10] = [
        "status",
        "set-state",
        "reload",
        "apply",
        "show-config",
        "firewall",
        "set-lockdown",
        "confirm-lockdown",
        "lockdown-off",
        "set-custom-rules",
    ];

    /// The command's name on the wire, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::SetState { .. } => "set-state",
            Request::Reload => "reload",
            Request::Apply { .. } => "apply",
            Request::ShowConfig => "show-config",
            Request::Firewall => "firewall",
            Request::SetLockdown { .. } => "set-lockdown",
            Request::ConfirmLockdown { .. } => "confirm-lockdown",
            Request::LockdownOff { .. } => "lockdown-off",
            Request::SetCustomRules { .. } => "set-custom-rules",
        }
    }
}

/// lbcore's reply to one request: one flat JSON object, `outcome` first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Reply {
    Done(Answer),
    Refused(Refused),
}

impl From<Result<Answer, Refused>> for Reply {
    fn from(r: Result<Answer, Refused>) -> Reply {
        match r {
            Ok(a) => Reply::Done(a),
            Err(e) => Reply::Refused(e),
        }
    }
}

/// The answer to a request that was carried out; one variant per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Answer {
    /// To [`Request::Status`].
    Status(Status),
    /// To [`Request::SetState`].
    StateSet(StateSet),
    /// To [`Request::Reload`] and [`Request::Apply`].
    Applied(Applied),
    /// To [`Request::ShowConfig`].
    Config(ConfigText),
    /// To [`Request::Firewall`], [`Request::ConfirmLockdown`], [`Request::LockdownOff`]
    /// and [`Request::SetCustomRules`]: the firewall as it is now.
    Firewall(FirewallStatus),
    /// To [`Request::SetLockdown`].
    LockdownApplied(LockdownApplied),
}

impl Answer {
    /// The answer's name on the wire, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Answer::Status(_) => "status",
            Answer::StateSet(_) => "state-set",
            Answer::Applied(_) => "applied",
            Answer::Config(_) => "config",
            Answer::Firewall(_) => "firewall",
            Answer::LockdownApplied(_) => "lockdown-applied",
        }
    }
}

/// A real server's operator state was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSet {
    pub service: String,
    pub server: String,
    pub state: AdminState,
    pub before: AdminState,
    /// Whether the state was written to /data (so that it survives a restart).
    pub saved: bool,
    /// What this means, for the operator.
    pub message: String,
}

/// A configuration became the running one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// What runs now (`3 service(s), 2 at layer 7, 1 at layer 4`).
    pub message: String,
    /// What this version read past in the file (a reload of a file a newer version
    /// wrote); empty for an applied configuration, which is checked strictly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

/// The configuration file's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigText {
    /// Empty when no configuration was written yet.
    pub text: String,
}

/// Why a request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    pub kind: RefusalKind,
    /// Names what is wrong, in the product's words.
    pub reason: String,
}

impl Refused {
    pub fn new(kind: RefusalKind, reason: impl Into<String>) -> Refused {
        Refused {
            kind,
            reason: reason.into(),
        }
    }
}

/// Whose mistake a refusal is, so that a client (the web API) can answer with the
/// right status: a wrong request, a missing object, or lbcore's own failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalKind {
    /// The request is wrong: an invalid configuration, a port that cannot be had.
    Invalid,
    /// It names a service or real server that does not exist.
    NotFound,
    /// The request was valid but lbcore could not carry it out (saving the file failed).
    Failed,
    /// Not a request this version of lbcore knows (or not JSON at all).
    Unsupported,
    /// The request is longer than [`MAX_REQUEST`]; lbcore closes the connection.
    TooLong,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_on_the_wire() {
        let r = Request::SetState {
            service: "PACS".into(),
            server: "DS1".into(),
            state: AdminState::Drain,
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            r#"{"command":"set-state","service":"PACS","server":"DS1","state":"drain"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        assert_eq!(
            serde_json::to_string(&Reply::Refused(Refused::new(
                RefusalKind::NotFound,
                "no DS9"
            )))
            .unwrap(),
            r#"{"outcome":"refused","kind":"not-found","reason":"no DS9"}"#
        );
        let done = Reply::Done(Answer::Config(ConfigText { text: "x".into() }));
        assert_eq!(
            serde_json::to_string(&done).unwrap(),
            r#"{"outcome":"done","answer":"config","text":"x"}"#
        );
    }

    #[test]
    fn every_request_is_in_the_list_of_commands() {
        let every = [
            Request::Status,
            Request::SetState {
                service: "S".into(),
                server: "R".into(),
                state: AdminState::Drain,
            },
            Request::Reload,
            Request::Apply {
                config: String::new(),
                origin: None,
            },
            Request::ShowConfig,
            Request::Firewall,
            Request::SetLockdown {
                networks: vec![],
                requester: None,
            },
            Request::ConfirmLockdown { token: "t".into() },
            Request::LockdownOff { origin: "o".into() },
            Request::SetCustomRules {
                text: String::new(),
            },
        ];
        let names: Vec<&str> = every.iter().map(Request::name).collect();
        assert_eq!(names, Request::COMMANDS);
        for r in &every {
            let wire: serde_json::Value = serde_json::to_value(r).unwrap();
            assert_eq!(wire["command"], r.name());
        }
    }

    #[test]
    fn fields_a_newer_version_adds_are_ignored() {
        let newer = r#"{"outcome":"done","answer":"applied","message":"ok","took_ms":3}"#;
        assert_eq!(
            serde_json::from_str::<Reply>(newer).unwrap(),
            Reply::Done(Answer::Applied(Applied {
                message: "ok".into(),
                warnings: vec![]
            }))
        );
        let request = r#"{"command":"reload","dry_run":true}"#;
        assert_eq!(
            serde_json::from_str::<Request>(request).unwrap(),
            Request::Reload
        );
    }
}
