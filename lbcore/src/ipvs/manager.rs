//! Keeps the kernel's IPVS table in step with the running configuration and the live
//! state of the servers, on a thread of its own: netlink requests, `nft` and sysctl
//! writes block, and the daemon's event loop (health changes, control requests, and
//! later VRRP timing) must never wait for them. The daemon sends a [`Plan`] after every
//! (re)load, health change and operator action, and on a timer to repair changes made
//! behind lbcore's back; only the newest plan waiting is carried out. Status requests
//! ask the thread for the kernel's table.
//!
//! Nothing here is done when no Layer 4 service is configured (and never was since
//! start): an appliance without Layer 4 services never touches IPVS.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::reconcile::{self, Wanted};
use super::{Ipvs, Service, ServiceKey, snat};
use crate::config::{self, Forwarding, Layer};
use crate::server::Server;
use appliance::files::Warning;
use appliance::files::ipvs_owned::{self, OwnedService};

/// The sysctls IPVS needs (paths under /proc/sys), and when.
const SYSCTLS: &[(&str, &str)] = &[
    // connections to a server that left the table are dropped at their next packet,
    // so the client reconnects (to a live server) instead of waiting for a timeout
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    // persistence entries pointing at a weight-0 server expire, so a persistent client
    // is scheduled again instead of sticking to a failed or drained server
    ("net/ipv4/vs/expire_quiescent_template", "1"),
];

/// What the kernel should hold: computed by the daemon from the configuration and the
/// servers' live state (cheap, no system calls), carried out by the manager's thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every Layer 4 service port.
    pub wanted: Vec<Wanted>,
    /// Those of them in `snat` mode (masqueraded by nftables).
    pub snat: Vec<Wanted>,
    /// Whether any service forwards by NAT or SNAT (replies pass through the appliance).
    pub nat: bool,
}

impl Plan {
    /// The plan for `config`; `servers(label)` gives a service's live servers.
    pub fn new(
        config: &config::Config,
        servers: impl Fn(&str) -> Option<Arc<Vec<Arc<Server>>>>,
    ) -> Plan {
        let mut plan = Plan::default();
        for svc in &config.services {
            let Layer::Four { forwarding, .. } = svc.layer else {
                continue;
            };
            let Some(live) = servers(&svc.label) else {
                continue;
            };
            let w = reconcile::desired(svc, &live);
            if forwarding != Forwarding::DirectRouting {
                plan.nat = true;
            }
            if forwarding == Forwarding::Snat {
                plan.snat.extend(w.iter().cloned());
            }
            plan.wanted.extend(w);
        }
        plan
    }
}

/// Why the kernel's table cannot be read (IPVS not loaded, not in use, a netlink error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

enum Job {
    Sync(Plan),
    Table(oneshot::Sender<Result<Vec<Service>, Unavailable>>),
}

/// The daemon's end of the manager's thread (clones share the thread).
#[derive(Clone)]
pub struct Manager {
    jobs: mpsc::Sender<Job>,
}

impl Manager {
    /// Starts the thread. `owned_file`: where the set of services lbcore made is kept.
    /// Returns what reading that file had to warn about.
    pub fn start(owned_file: Option<PathBuf>) -> std::io::Result<(Manager, Vec<Warning>)> {
        let (owned, warnings) = match owned_file.as_deref() {
            Some(path) => ipvs_owned::load(path),
            None => (BTreeSet::new(), Vec::new()),
        };
        let (tx, rx) = mpsc::channel();
        let mut kernel = Kernel {
            ipvs: None,
            unavailable: None,
            owned: owned.into_iter().map(key_of).collect(),
            owned_file,
            snat: None,
            sysctls_done: false,
            nat_sysctls_done: false,
        };
        std::thread::Builder::new()
            .name("ipvs".into())
            .spawn(move || kernel.serve(rx))?;
        Ok((Manager { jobs: tx }, warnings))
    }

    /// Asks for the kernel to be brought in step with `plan` (returns at once).
    pub fn sync(&self, plan: Plan) {
        let _ = self.jobs.send(Job::Sync(plan));
    }

    /// The kernel's whole table, or why it cannot be read.
    pub async fn table(&self) -> Result<Vec<Service>, Unavailable> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Table(tx))
            .map_err(|_| Unavailable("the IPVS thread has stopped".into()))?;
        rx.await
            .map_err(|_| Unavailable("the IPVS thread has stopped".into()))?
    }
}

fn key_of(o: OwnedService) -> ServiceKey {
    ServiceKey {
        protocol: o.protocol,
        address: o.address,
        port: o.port,
    }
}

fn owned_of(k: &ServiceKey) -> OwnedService {
    OwnedService {
        protocol: k.protocol,
        address: k.address,
        port: k.port,
    }
}

/// The thread's state: the netlink connection and what lbcore made.
struct Kernel {
    ipvs: Option<Ipvs>,
    /// Why IPVS cannot be used, while it cannot.
    unavailable: Option<String>,
    /// Services lbcore made (and may delete).
    owned: BTreeSet<ServiceKey>,
    owned_file: Option<PathBuf>,
    /// The SNAT script last applied.
    snat: Option<String>,
    sysctls_done: bool,
    /// conntrack / ip_forward already switched on.
    nat_sysctls_done: bool,
}

impl Kernel {
    fn serve(&mut self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            // Only the newest plan matters: a burst of health changes is one sync.
            let mut plan = None;
            let mut tables = Vec::new();
            for job in std::iter::once(first).chain(jobs.try_iter()) {
                match job {
                    Job::Sync(p) => plan = Some(p),
                    Job::Table(reply) => tables.push(reply),
                }
            }
            if let Some(p) = plan {
                self.sync(&p);
            }
            for reply in tables {
                let _ = reply.send(self.table());
            }
        }
    }

    fn table(&mut self) -> Result<Vec<Service>, Unavailable> {
        match self.ipvs.as_mut() {
            Some(i) => i.table().map_err(|e| Unavailable(e.to_string())),
            None => Err(Unavailable(self.unavailable.clone().unwrap_or_else(|| {
                "IPVS is not in use (no layer 4 service)".into()
            }))),
        }
    }

    /// Brings the kernel in step with `plan`. Errors are logged (with what failed) and
    /// retried at the next sync.
    fn sync(&mut self, plan: &Plan) {
        if plan.wanted.is_empty() && self.owned.is_empty() && self.ipvs.is_none() {
            return; // no Layer 4 at all
        }
        let started = Instant::now();
        if self.ipvs.is_none() {
            match Ipvs::open() {
                Ok(i) => {
                    info!("IPVS opened over generic netlink");
                    self.ipvs = Some(i);
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
        let Some(ipvs) = self.ipvs.as_mut() else {
            return;
        };
        if !self.sysctls_done {
            self.sysctls_done = set_sysctls(SYSCTLS);
        }
        if plan.nat && !self.nat_sysctls_done {
            self.nat_sysctls_done = set_sysctls(&nat_sysctls());
        }
        let kernel = match ipvs.table() {
            Ok(t) => t,
            Err(e) => {
                error!("{e}; layer 4 changes wait for the next try");
                return;
            }
        };
        let ops = reconcile::diff(&plan.wanted, &kernel, &self.owned);
        let mut failed = 0;
        let mut owned: BTreeSet<ServiceKey> = plan.wanted.iter().map(|w| w.key).collect();
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
                let list = self.owned.iter().map(owned_of).collect();
                if let Err(e) = ipvs_owned::save(path, &list) {
                    warn!("cannot save {}: {e}", path.display());
                }
            }
        }

        let script = snat::ruleset(&plan.snat);
        let needed = !plan.snat.is_empty() || self.snat.is_some();
        if needed && self.snat.as_deref() != Some(script.as_str()) {
            match snat::apply(&script) {
                Ok(()) => {
                    info!("SNAT rules applied for {} service port(s)", plan.snat.len());
                    self.snat = (!plan.snat.is_empty()).then_some(script);
                }
                Err(e) => error!("{e}"),
            }
        }
    }
}

/// NAT: replies from the real servers are forwarded back to the clients; SNAT:
/// netfilter's NAT must see IPVS's connections.
fn nat_sysctls() -> Vec<(String, &'static str)> {
    let mut list = vec![
        ("net/ipv4/ip_forward".to_string(), "1"),
        ("net/ipv4/vs/conntrack".to_string(), "1"),
    ];
    // a reply from a real server leaves by the interface it came in on: without this the
    // appliance would send the real server an ICMP redirect to the client's gateway, and
    // the rest of the replies would bypass IPVS (all/default and every interface: the
    // kernel ORs them)
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
    list
}

/// Writes each sysctl; returns whether all succeeded (failures are logged).
fn set_sysctls<K: AsRef<str>>(list: &[(K, &str)]) -> bool {
    let mut ok = true;
    for (name, value) in list {
        let name = name.as_ref();
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

    /// Without any Layer 4 service, the thread never opens IPVS: the table is
    /// "not in use", and a sync with nothing wanted does nothing.
    #[tokio::test]
    async fn without_layer_4_ipvs_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let (m, warnings) = Manager::start(Some(dir.path().join("lbcore-ipvs.json"))).unwrap();
        assert!(warnings.is_empty());
        m.sync(Plan::default());
        let e = m.table().await.unwrap_err();
        assert!(e.0.contains("not in use"), "{e}");
        assert!(!dir.path().join("lbcore-ipvs.json").exists());
    }

    #[test]
    fn a_plan_holds_only_layer_4_services() {
        let text = "[[service]]\nlabel = \"L7\"\nlayer = 7\naddress = \"10.0.0.1\"\nports = [104]\n\
                    [[service.real_server]]\nlabel = \"A\"\naddress = \"10.0.0.2\"\n\
                    [[service]]\nlabel = \"L4\"\nlayer = 4\nforwarding = \"snat\"\naddress = \"10.0.0.3\"\nports = [104, 105]\n\
                    [[service.real_server]]\nlabel = \"B\"\naddress = \"10.0.0.4\"\n";
        let config = crate::config::parse(text).unwrap();
        let live: std::collections::HashMap<String, Arc<Vec<Arc<Server>>>> = config
            .services
            .iter()
            .map(|s| {
                let servers = s
                    .real_servers
                    .iter()
                    .map(|r| Arc::new(Server::new(r)))
                    .collect();
                (s.label.clone(), Arc::new(servers))
            })
            .collect();
        let plan = Plan::new(&config, |l| live.get(l).cloned());
        let ports: Vec<u16> = plan.wanted.iter().map(|w| w.key.port).collect();
        assert_eq!(ports, [104, 105]);
        assert!(
            plan.wanted
                .iter()
                .all(|w| w.key.address.to_string() == "10.0.0.3")
        );
        assert_eq!(plan.snat, plan.wanted);
        assert!(plan.nat);
    }
}
