//! The firewall as the control protocol shows and changes it: the lockdown of the
//! management ports (applied, then confirmed within a window or undone by itself), the
//! administrator's custom rules, the active ruleset and its drop counters.

use serde::{Deserialize, Serialize};

/// What the firewall request answers (and every firewall change, once made).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FirewallStatus {
    /// Whether this lbcore keeps the appliance's firewall (the appliance's lbcore does;
    /// one started without `--firewall` leaves netfilter alone and shows nothing else).
    pub enabled: bool,
    /// The networks the management ports are reachable from, as confirmed and saved;
    /// empty: from anywhere (lockdown off).
    #[serde(default)]
    pub lockdown: Vec<String>,
    /// A lockdown applied and waiting for its confirmation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingLockdown>,
    /// The management ports (TCP) the lockdown restricts.
    #[serde(default)]
    pub management_ports: Vec<u16>,
    /// The custom rules in force (nftables syntax, in chain `input_custom`).
    #[serde(default)]
    pub custom: String,
    /// Why the last custom rules submitted were refused (nft's message), if they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_error: Option<String>,
    /// The last time the ruleset was applied, and how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_apply: Option<ApplyResult>,
    /// The active table as `nft list table inet medlb` prints it (empty when it could
    /// not be read).
    #[serde(default)]
    pub ruleset: String,
    /// Packets dropped, by reason.
    #[serde(default)]
    pub counters: Vec<DropCounter>,
}

/// A lockdown in force but not yet confirmed: unless confirmed (over a new connection,
/// which proves the administrator still gets in) it is undone when the window ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLockdown {
    pub networks: Vec<String>,
    /// Seconds left before the previous rules come back.
    pub seconds_left: u64,
}

/// The answer to a lockdown request: what to confirm, and by when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockdownApplied {
    /// Sent back with the confirmation.
    pub token: String,
    pub networks: Vec<String>,
    /// The confirmation window, in seconds.
    pub seconds: u64,
    pub message: String,
}

/// How an application of the ruleset went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub ok: bool,
    /// What was applied and why, or nft's message when it failed (the rules before it
    /// stay in force).
    pub message: String,
}

/// One of the firewall's named counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounter {
    /// The counter's name in the ruleset (`dropped_management`).
    pub name: String,
    /// What it counts, for the administrator.
    pub what: String,
    pub packets: u64,
    pub bytes: u64,
}
