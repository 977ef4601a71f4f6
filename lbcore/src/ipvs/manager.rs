//! Keeps the kernel's IPVS table in step with the running configuration and the live
//! state of the servers: called after every (re)load, health change and operator
//! action, and on a timer to repair changes made behind lbcore's back.
//!
//! Nothing here is done when no Layer 4 service is configured (and never was since
//! start): an appliance without Layer 4 services never touches IPVS.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::{error, info, warn};

use super::reconcile::{self, Wanted};
use super::{Ipvs, Service, ServiceKey, snat};
use crate::config::{self, Forwarding, Layer};
use crate::server::Server;

/// The sysctls IPVS needs (paths under /proc/sys), and when.
const SYSCTLS: &[(&str, &str)] = &[
    // connections to a server that left the table are dropped at their next packet,
    // so the client reconnects (to a live server) instead of waiting for a timeout
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    // persistence entries pointing at a weight-0 server expire, so a persistent client
    // is scheduled again instead of sticking to a failed or drained server
    ("net/ipv4/vs/expire_quiescent_template", "1"),
];

pub struct Manager {
    ipvs: Mutex<Option<Ipvs>>,
    /// Why IPVS cannot be used, while it cannot.
    unavailable: Option<String>,
    /// Services lbcore made (and may delete).
    owned: BTreeSet<ServiceKey>,
    /// Where `owned` is kept across restarts, so that a service removed from the
    /// configuration while lbcore was stopped still leaves the kernel.
    owned_file: Option<PathBuf>,
    /// The SNAT script last applied.
    snat: Option<String>,
    sysctls_done: bool,
    /// conntrack / ip_forward already switched on.
    nat_sysctls_done: bool,
}

impl Manager {
    /// `owned_file`: where the set of services lbcore made is kept (JSON).
    pub fn new(owned_file: Option<PathBuf>) -> Manager {
        let owned = owned_file.as_deref().map(load_owned).unwrap_or_default();
        Manager {
            ipvs: Mutex::new(None),
            unavailable: None,
            owned,
            owned_file,
            snat: None,
            sysctls_done: false,
            nat_sysctls_done: false,
        }
    }

    /// Why Layer 4 services are not forwarded, if they are not.
    pub fn unavailable(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Ipvs>> {
        self.ipvs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the kernel in step with `config`; `servers(label)` gives a service's live
    /// servers. Errors are logged (with what failed) and retried at the next call.
    pub fn sync(
        &mut self,
        config: &config::Config,
        servers: impl Fn(&str) -> Option<Arc<Vec<Arc<Server>>>>,
    ) {
        let mut wanted: Vec<Wanted> = Vec::new();
        let mut snat_wanted: Vec<Wanted> = Vec::new();
        let mut nat = false;
        for svc in &config.services {
            let Layer::Four { forwarding, .. } = svc.layer else {
                continue;
            };
            let Some(live) = servers(&svc.label) else {
                continue;
            };
            let w = reconcile::desired(svc, &live);
            if forwarding != Forwarding::DirectRouting {
                nat = true;
            }
            if forwarding == Forwarding::Snat {
                snat_wanted.extend(w.iter().cloned());
            }
            wanted.extend(w);
        }
        if wanted.is_empty() && self.owned.is_empty() && self.lock().is_none() {
            return; // no Layer 4 at all
        }
        let started = Instant::now();
        let guard = self.ipvs.get_mut().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            match Ipvs::open() {
                Ok(i) => {
                    info!("IPVS opened over generic netlink");
                    *guard = Some(i);
                    self.unavailable = None;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if self.unavailable.as_deref() != Some(msg.as_str()) {
                        error!("layer 4 services are not forwarded: {msg}");
                    }
                    self.unavailable = Some(msg);
                    return;
                }
            }
        }
        let Some(ipvs) = guard.as_mut() else { return };
        if !self.sysctls_done {
            self.sysctls_done = set_sysctls(SYSCTLS);
        }
        if nat && !self.nat_sysctls_done {
            // NAT: replies from the real servers are forwarded back to the clients;
            // SNAT: netfilter's NAT must see IPVS's connections
            let mut list = vec![
                ("net/ipv4/ip_forward".to_string(), "1"),
                ("net/ipv4/vs/conntrack".to_string(), "1"),
            ];
            // a reply from a real server leaves by the interface it came in on: without
            // this the appliance would send the real server an ICMP redirect to the
            // client's gateway, and the rest of the replies would bypass IPVS
            // (all/default and every interface: the kernel ORs them)
            for dir in ["all", "default"] {
                list.push((format!("net/ipv4/conf/{dir}/send_redirects"), "0"));
            }
            if let Ok(dirs) = std::fs::read_dir("/proc/sys/net/ipv4/conf") {
                for d in dirs.flatten() {
                    let name = d.file_name().to_string_lossy().into_owned();
                    if name != "all" && name != "default" {
                        list.push((format!("net/ipv4/conf/{name}/send_redirects"), "0"));
                    }
                }
            }
            let list: Vec<(&str, &str)> = list.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            self.nat_sysctls_done = set_sysctls(&list);
        }
        let kernel = match ipvs.table() {
            Ok(t) => t,
            Err(e) => {
                error!("{e}; layer 4 changes wait for the next try");
                return;
            }
        };
        let ops = reconcile::diff(&wanted, &kernel, &self.owned);
        let mut failed = 0;
        let mut owned: BTreeSet<ServiceKey> = wanted.iter().map(|w| w.key).collect();
        for op in &ops {
            match ipvs.apply(op) {
                Ok(()) => info!("ipvs: {op}"),
                Err(e) => {
                    failed += 1;
                    error!("{e}");
                    if let super::Op::DelService(k) = op {
                        owned.insert(*k); // still ours to delete next time
                    }
                }
            }
        }
        if !ops.is_empty() {
            info!(
                "ipvs: {} change(s) in {:.1} ms{}",
                ops.len(),
                started.elapsed().as_secs_f64() * 1e3,
                if failed > 0 {
                    format!(", {failed} failed")
                } else {
                    String::new()
                }
            );
        }
        if owned != self.owned {
            self.owned = owned;
            if let Some(path) = &self.owned_file {
                if let Err(e) = save_owned(path, &self.owned) {
                    warn!("cannot save {}: {e}", path.display());
                }
            }
        }

        let script = snat::ruleset(&snat_wanted);
        let needed = !snat_wanted.is_empty() || self.snat.is_some();
        if needed && self.snat.as_deref() != Some(script.as_str()) {
            match snat::apply(&script) {
                Ok(()) => {
                    info!(
                        "SNAT rules applied for {} service port(s)",
                        snat_wanted.len()
                    );
                    self.snat = (!snat_wanted.is_empty()).then_some(script);
                }
                Err(e) => error!("{e}"),
            }
        }
    }

    /// The kernel's whole table, or why it cannot be read.
    pub fn table(&self) -> Result<Vec<Service>, String> {
        let mut guard = self.lock();
        match guard.as_mut() {
            Some(i) => i.table().map_err(|e| e.to_string()),
            None => Err(self
                .unavailable
                .clone()
                .unwrap_or_else(|| "IPVS is not in use (no layer 4 service)".into())),
        }
    }
}

fn load_owned(path: &std::path::Path) -> BTreeSet<ServiceKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            warn!(
                "{} is not understood ({e}); IPVS services lbcore made earlier and no longer configured stay in the kernel",
                path.display()
            );
            BTreeSet::new()
        }),
        Err(_) => BTreeSet::new(),
    }
}

/// Replaces the file atomically.
fn save_owned(path: &std::path::Path, owned: &BTreeSet<ServiceKey>) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(owned).map_err(std::io::Error::other)?;
    crate::atomic_file::write(path, text.as_bytes())
}

/// Writes each sysctl; returns whether all succeeded (failures are logged).
fn set_sysctls(list: &[(&str, &str)]) -> bool {
    let mut ok = true;
    for (name, value) in list {
        let path = format!("/proc/sys/{name}");
        match std::fs::write(&path, value) {
            Ok(()) => info!("sysctl {} = {value}", name.replace('/', ".")),
            Err(e) => {
                ok = false;
                warn!("cannot set {} = {value}: {e}", name.replace('/', "."));
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::IPPROTO_TCP;

    #[test]
    fn owned_services_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("lbcore-ipvs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lbcore-ipvs.json");
        let owned = BTreeSet::from([ServiceKey {
            protocol: IPPROTO_TCP,
            address: "10.0.0.70".parse().unwrap(),
            port: 104,
        }]);
        save_owned(&path, &owned).unwrap();
        assert_eq!(load_owned(&path), owned);
        std::fs::write(&path, "garbage").unwrap();
        assert!(load_owned(&path).is_empty());
        assert!(load_owned(&dir.join("missing.json")).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
