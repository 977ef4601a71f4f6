//! The appliance's firewall: lbcore owns the nftables table `inet medlb`, because the
//! virtual services it runs are what the table must let in, and a change of them must
//! change the table right after it (never a new service blocked, never a removed one
//! left open). lbcore's SNAT table (`ipvs::snat`) stays apart: it follows the IPVS
//! table on the IPVS thread, and a table per owner means neither can undo the other.
//!
//! The settings (lockdown networks, custom rules) are `firewall.toml` on /data, kept per
//! appliance; [`ruleset`] makes the whole table from them and the configuration, and
//! every change is one `nft -f` transaction. A lockdown is applied at once but saved
//! only when confirmed within [`Options::confirm_window`]: unconfirmed, the rules from
//! before come back by themselves (the administrator who locked themself out waits a
//! minute). Custom rules are checked by `nft -c` inside the whole ruleset first; a
//! refused snippet changes nothing.
//!
//! Every call here runs `nft` and blocks: the daemon calls it off its event loop.

pub mod ruleset;

use appliance::net::canonical;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tracing::{error, info, warn};

use crate::config::{Config, Forwarding, Layer};
use crate::nft;
use appliance::files::firewall::{self as settings_file, FirewallSettings};
use lbcore_control::firewall::{
    ApplyResult, DropCounter, FirewallStatus, LockdownApplied, PendingLockdown,
};
use lbcore_control::{RefusalKind, Refused};
use ruleset::{Inputs, Script};

/// The firewall's settings as lbcore is started with them.
#[derive(Debug, Clone)]
pub struct Options {
    /// `firewall.toml` (lockdown networks, custom rules).
    pub settings: PathBuf,
    /// The management ports (the web UI's 9443, and any other management service).
    pub management_ports: Vec<u16>,
    /// How long an applied lockdown waits for its confirmation.
    pub confirm_window: Duration,
}

/// The management port of the web UI.
pub const WEB_UI_PORT: u16 = 9443;

struct Pending {
    token: String,
    lockdown: Vec<IpNet>,
    deadline: Instant,
}

/// The firewall's state: the saved settings, a lockdown waiting for confirmation, what
/// the configuration asks to be let in, and how the last application went.
pub struct Firewall {
    opts: Options,
    saved: FirewallSettings,
    pending: Option<Pending>,
    /// From the running configuration (services, NAT real servers).
    from_config: Inputs,
    last: Option<ApplyResult>,
    custom_error: Option<String>,
}

impl Firewall {
    /// Reads the settings (a file that cannot be read is logged, and the firewall runs
    /// with no lockdown and no custom rules: the appliance stays reachable).
    pub fn new(opts: Options) -> Firewall {
        let saved = match FirewallSettings::load(&opts.settings) {
            Ok((s, warnings)) => {
                for w in warnings {
                    warn!("{w}");
                }
                s
            }
            Err(e) => {
                error!("{e}: the firewall runs without lockdown and custom rules");
                FirewallSettings::default()
            }
        };
        Firewall {
            opts,
            saved,
            pending: None,
            from_config: Inputs::default(),
            last: None,
            custom_error: None,
        }
    }

    /// Whether a ruleset was ever applied or tried (false only at lbcore's start).
    pub fn has_applied(&self) -> bool {
        self.last.is_some()
    }

    /// When the waiting lockdown ends, if one waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.deadline)
    }

    fn inputs(&self, lockdown: &[IpNet], custom: &str) -> Inputs {
        Inputs {
            management_ports: self.opts.management_ports.clone(),
            lockdown: lockdown.to_vec(),
            custom: custom.to_string(),
            ..self.from_config.clone()
        }
    }

    /// The lockdown in force: the waiting one, else the saved one.
    fn current_lockdown(&self) -> Vec<IpNet> {
        self.pending
            .as_ref()
            .map_or_else(|| self.saved.lockdown.clone(), |p| p.lockdown.clone())
    }

    fn script(&self) -> Script {
        ruleset::generate(&self.inputs(&self.current_lockdown(), &self.saved.custom))
    }

    fn record(&mut self, result: Result<(), nft::NftError>, what: &str) -> Result<(), String> {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match result {
            Ok(()) => {
                info!("firewall: {what}");
                self.last = Some(ApplyResult {
                    at,
                    ok: true,
                    message: what.to_string(),
                });
                Ok(())
            }
            Err(e) => {
                let message = format!("{what}: not applied, the rules before stay: {e}");
                error!("firewall: {message}");
                self.last = Some(ApplyResult {
                    at,
                    ok: false,
                    message: message.clone(),
                });
                Err(message)
            }
        }
    }

    /// Applies the ruleset as it stands.
    pub fn apply(&mut self, what: &str) -> Result<(), String> {
        let script = self.script();
        let r = nft::apply(&script.text);
        self.record(r, what)
    }

    /// Checks that the ruleset for `config` would be taken (before the configuration
    /// changes: a configuration the firewall cannot follow is refused).
    pub fn check_config(&self, config: &Config) -> Result<(), String> {
        let inputs = Inputs {
            management_ports: self.opts.management_ports.clone(),
            lockdown: self.current_lockdown(),
            custom: self.saved.custom.clone(),
            ..inputs_of(config)
        };
        nft::check(&ruleset::generate(&inputs).text)
            .map_err(|e| format!("the firewall cannot let this configuration's services in: {e}"))
    }

    /// Follows the running configuration: its services let in, removed ones closed.
    pub fn follow(&mut self, config: &Config) -> Result<(), String> {
        self.from_config = inputs_of(config);
        let n = self
            .from_config
            .services
            .values()
            .map(BTreeSet::len)
            .sum::<usize>();
        self.apply(&format!(
            "ruleset applied: {n} virtual service port(s) open, management {}",
            self.describe_lockdown()
        ))
    }

    fn describe_lockdown(&self) -> String {
        let l = self.current_lockdown();
        if l.is_empty() {
            "from anywhere".into()
        } else {
            format!("from {}", join(&l))
        }
    }

    /// Applies a lockdown to `networks`, to be confirmed within the window.
    pub fn set_lockdown(
        &mut self,
        networks: &[String],
        requester: Option<&str>,
    ) -> Result<LockdownApplied, Refused> {
        let mut list = Vec::new();
        for n in networks {
            let net = settings_file::parse_network(n)
                .map_err(|e| Refused::new(RefusalKind::Invalid, e.to_string()))?;
            if !list.contains(&net) {
                list.push(net);
            }
        }
        if list.is_empty() {
            return Err(Refused::new(
                RefusalKind::Invalid,
                "lockdown: name at least one network that management stays reachable from (to reach it from anywhere, turn lockdown off)",
            ));
        }
        if let Some(r) = requester {
            let ip: IpAddr = r.parse().map_err(|_| {
                Refused::new(
                    RefusalKind::Invalid,
                    format!("requester: {r} is not an address"),
                )
            })?;
            let ip = canonical(ip);
            if !list.iter().any(|n| n.contains(&ip)) {
                return Err(Refused::new(
                    RefusalKind::Invalid,
                    format!(
                        "lockdown: none of {} contains {ip}, the address this request comes from: it would lock you out (add your own network)",
                        join(&list)
                    ),
                ));
            }
        }
        let previous = self.pending.take();
        let token = new_token();
        self.pending = Some(Pending {
            token: token.clone(),
            lockdown: list.clone(),
            deadline: Instant::now() + self.opts.confirm_window,
        });
        let seconds = self.opts.confirm_window.as_secs();
        if let Err(m) = self.apply(&format!(
            "lockdown to {} applied, waiting {seconds} s for its confirmation",
            join(&list)
        )) {
            self.pending = previous;
            return Err(Refused::new(RefusalKind::Failed, m));
        }
        Ok(LockdownApplied {
            token,
            networks: list.iter().map(ToString::to_string).collect(),
            seconds,
            message: format!(
                "management is now reachable only from {}; confirm within {seconds} s from a new connection, or the previous rules come back",
                join(&list)
            ),
        })
    }

    /// Keeps the waiting lockdown: saves it.
    pub fn confirm(&mut self, token: &str) -> Result<FirewallStatus, Refused> {
        match &self.pending {
            Some(p) if p.token == token => {}
            Some(_) => {
                return Err(Refused::new(
                    RefusalKind::NotFound,
                    "this confirmation is for another lockdown than the one waiting",
                ));
            }
            None => {
                return Err(Refused::new(
                    RefusalKind::NotFound,
                    "no lockdown waits for confirmation (unconfirmed, a lockdown is undone when its window ends)",
                ));
            }
        }
        let mut s = self.saved.clone();
        s.lockdown = self.current_lockdown();
        // unsaved, the lockdown keeps waiting (and is undone when its window ends)
        s.save(&self.opts.settings)
            .map_err(|e| Refused::new(RefusalKind::Failed, e.to_string()))?;
        self.pending = None;
        self.saved = s;
        info!(
            "firewall: lockdown to {} confirmed and saved",
            join(&self.saved.lockdown)
        );
        Ok(self.status())
    }

    /// Ends a lockdown whose window passed unconfirmed: the saved rules come back.
    pub fn expire(&mut self) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.deadline <= Instant::now())
        {
            self.pending = None;
            let what = format!(
                "lockdown not confirmed within {} s: the previous rules are back (management {})",
                self.opts.confirm_window.as_secs(),
                self.describe_lockdown()
            );
            warn!("firewall: {what}");
            let _ = self.apply(&what);
        }
    }

    /// Management from anywhere, saved; `origin` says who asked (logged).
    pub fn lockdown_off(&mut self, origin: &str) -> Result<FirewallStatus, Refused> {
        self.pending = None;
        let mut s = self.saved.clone();
        s.lockdown.clear();
        let save = s.save(&self.opts.settings);
        self.saved = s;
        warn!("firewall: lockdown turned off from {origin}: management is reachable from anywhere");
        self.apply(&format!("lockdown turned off from {origin}"))
            .map_err(|m| Refused::new(RefusalKind::Failed, m))?;
        save.map_err(|e| Refused::new(RefusalKind::Failed, e.to_string()))?;
        Ok(self.status())
    }

    /// Makes `text` the custom rules, if nft takes them inside the whole ruleset.
    pub fn set_custom(&mut self, text: &str) -> Result<FirewallStatus, Refused> {
        let refuse = |fw: &mut Firewall, m: String| {
            fw.custom_error = Some(m.clone());
            Err(Refused::new(RefusalKind::Invalid, m))
        };
        if text.len() > settings_file::MAX_CUSTOM {
            return refuse(self, settings_file::FirewallError::TooLong.to_string());
        }
        if let Err(e) = ruleset::check_custom(text) {
            return refuse(self, format!("custom rules, {e}"));
        }
        let script = ruleset::generate(&self.inputs(&self.current_lockdown(), text));
        if let Err(e) = nft::check(&script.text) {
            return refuse(self, ruleset::explain(&script, &e.message()));
        }
        let r = nft::apply(&script.text);
        self.record(r, "custom rules applied")
            .map_err(|m| Refused::new(RefusalKind::Failed, m))?;
        self.custom_error = None;
        self.saved.custom = text.to_string();
        self.saved
            .save(&self.opts.settings)
            .map_err(|e| Refused::new(RefusalKind::Failed, e.to_string()))?;
        Ok(self.status())
    }

    /// The firewall as it is: settings, the active table and its counters.
    pub fn status(&self) -> FirewallStatus {
        let ruleset =
            nft::run(&["list", "table", "inet", ruleset::TABLE], None).unwrap_or_default();
        FirewallStatus {
            enabled: true,
            lockdown: self
                .saved
                .lockdown
                .iter()
                .map(ToString::to_string)
                .collect(),
            pending: self.pending.as_ref().map(|p| PendingLockdown {
                networks: p.lockdown.iter().map(ToString::to_string).collect(),
                seconds_left: p
                    .deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs(),
            }),
            management_ports: self.opts.management_ports.clone(),
            custom: self.saved.custom.clone(),
            custom_error: self.custom_error.clone(),
            last_apply: self.last.clone(),
            ruleset,
            counters: counters(),
        }
    }
}

/// What the configuration asks the firewall to let in.
pub fn inputs_of(config: &Config) -> Inputs {
    let mut services: BTreeMap<IpAddr, BTreeSet<u16>> = BTreeMap::new();
    let mut nat_servers = BTreeSet::new();
    for svc in &config.services {
        services
            .entry(svc.address)
            .or_default()
            .extend(svc.ports.iter().copied());
        if let Layer::Four { forwarding, .. } = svc.layer {
            if forwarding == Forwarding::Nat {
                for rs in &svc.real_servers {
                    for &p in &svc.ports {
                        nat_servers.insert((rs.address, rs.port.unwrap_or(p)));
                    }
                }
            }
        }
    }
    Inputs {
        services,
        nat_servers,
        ..Inputs::default()
    }
}

/// The named counters of the active table (`nft -j list counters`).
fn counters() -> Vec<DropCounter> {
    let json = nft::run(
        &["-j", "list", "counters", "table", "inet", ruleset::TABLE],
        None,
    )
    .unwrap_or_default();
    let found: BTreeMap<String, (u64, u64)> = serde_json::from_str::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v.get("nftables").and_then(|n| n.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|item| {
            let c = item.get("counter")?;
            Some((
                c.get("name")?.as_str()?.to_string(),
                (c.get("packets")?.as_u64()?, c.get("bytes")?.as_u64()?),
            ))
        })
        .collect();
    ruleset::COUNTERS
        .iter()
        .map(|(name, what)| {
            let (packets, bytes) = found.get(*name).copied().unwrap_or_default();
            DropCounter {
                name: name.to_string(),
                what: what.to_string(),
                packets,
                bytes,
            }
        })
        .collect()
}

fn join(nets: &[IpNet]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A confirmation token: 16 random bytes from the kernel, in hex.
fn new_token() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let got = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if got.is_err() {
        // the token only tells one pending lockdown from another (lbweb authenticates)
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_opens_every_service_port_and_forwards_nat_replies() {
        let text = r#"
[[service]]
label = "PACS"
layer = 7
address = "10.0.0.70"
ports = [104, 11112]
check = { kind = "none" }
[[service.real_server]]
label = "DS1"
address = "10.0.0.31"

[[service]]
label = "L4"
layer = 4
address = "10.0.0.71"
port = 2575
forwarding = "nat"
check = { kind = "none" }
[[service.real_server]]
label = "HL7A"
address = "10.0.0.41"
port = 12575
[[service.real_server]]
label = "HL7B"
address = "10.0.0.42"

[[service]]
label = "DR"
layer = 4
address = "10.0.0.72"
port = 104
forwarding = "direct-routing"
check = { kind = "none" }
[[service.real_server]]
label = "DS9"
address = "10.0.0.49"
"#;
        let config = crate::config::parse(text).unwrap();
        let i = inputs_of(&config);
        let ports: Vec<(String, Vec<u16>)> = i
            .services
            .iter()
            .map(|(a, p)| (a.to_string(), p.iter().copied().collect()))
            .collect();
        assert_eq!(
            ports,
            [
                ("10.0.0.70".to_string(), vec![104, 11112]),
                ("10.0.0.71".to_string(), vec![2575]),
                ("10.0.0.72".to_string(), vec![104]),
            ]
        );
        // only NAT's real servers answer through the appliance (DR's go straight back)
        let nat: Vec<String> = i
            .nat_servers
            .iter()
            .map(|(a, p)| format!("{a}:{p}"))
            .collect();
        assert_eq!(nat, ["10.0.0.41:12575", "10.0.0.42:2575"]);
    }

    #[test]
    fn a_mapped_ipv4_requester_is_its_ipv4_address_and_tokens_differ() {
        assert_eq!(
            canonical("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            canonical("2001:db8::7".parse().unwrap()),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
