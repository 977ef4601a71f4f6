//! Changing what runs: a new configuration is prepared (everything that can fail:
//! validation, binding the new ports) and only then committed (nothing there can
//! refuse it), so that a refused change leaves the old configuration serving; and the
//! operator's Drain / Halt / Online of a real server.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::{Daemon, Entry, Monitor};
use crate::config::{self, Config, ConfigError, Layer};
use crate::monitor::{self, MonitorSpec};
use crate::proxy;
use crate::server::{AdminState, Server};
use crate::service::ServiceRuntime;
use appliance::atomic::{self, AtomicWriteError};
use appliance::files::Warning;
use lbcore_control::{Applied, RefusalKind, Refused, StateSet};

/// Why a change was not made; each says whose fault it is ([`ChangeError::kind`]).
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The configuration is not valid (or its file cannot be read at a reload).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("service \"{service}\": cannot listen on {address}: {source}")]
    Bind {
        service: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot save {path}: {source}", path = .path.display())]
    Save {
        path: PathBuf,
        source: AtomicWriteError,
    },
    #[error("cannot read {path}: {source}", path = .path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("there is no service called `{0}`")]
    NoService(String),
    #[error("service `{service}` has no real server called `{server}`")]
    NoServer { service: String, server: String },
    #[error("the {0} task failed: {1}")]
    Task(&'static str, String),
    /// The firewall could not follow the new configuration (the old one runs on).
    #[error("{0}")]
    Firewall(String),
    /// A firewall request refused, as the firewall said.
    #[error("{0}")]
    Refused(Refused),
}

impl ChangeError {
    pub fn kind(&self) -> RefusalKind {
        match self {
            ChangeError::Config(_) | ChangeError::Bind { .. } => RefusalKind::Invalid,
            ChangeError::NoService(_) | ChangeError::NoServer { .. } => RefusalKind::NotFound,
            ChangeError::Refused(r) => r.kind,
            ChangeError::Save { .. }
            | ChangeError::ReadFile { .. }
            | ChangeError::Task(..)
            | ChangeError::Firewall(_) => RefusalKind::Failed,
        }
    }
}

impl From<ChangeError> for Refused {
    fn from(e: ChangeError) -> Refused {
        Refused::new(e.kind(), e.to_string())
    }
}

/// A configuration that passed every check, with the new ports already bound.
pub(super) struct Prepared {
    config: Config,
    bound: HashMap<(String, SocketAddr), proxy::Listener>,
}

impl Daemon {
    /// Reads the configuration file again. The file must exist: a deleted or unreadable
    /// file is a mistake to refuse, not an order to remove every service.
    pub(super) async fn reload(&mut self) -> Result<Applied, ChangeError> {
        let result = match read_config(&self.opts.config, false).await {
            Ok((new, warnings)) => self.apply(new, warnings).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(summary) => info!("reloaded: {summary}"),
            Err(e) => error!("configuration refused, the running one stays: {e}"),
        }
        result.map(|message| Applied {
            message,
            warnings: self.config_warnings.clone(),
        })
    }

    /// Makes `text` the configuration file and the running configuration, or changes
    /// neither and says why not. The text is checked strictly (a misspelt key is
    /// refused). The file is replaced only once the configuration is known to be valid
    /// and its ports are bound, so that what runs and what the next start reads stay
    /// the same.
    pub(super) async fn apply_text(
        &mut self,
        text: String,
        origin: Option<String>,
    ) -> Result<Applied, ChangeError> {
        let path = self.opts.config.clone();
        // a refusal names the text where it came from, not the file it would replace
        let origin = PathBuf::from(origin.unwrap_or_else(|| "the submitted configuration".into()));
        let result = async {
            let new = config::parse(&text).map_err(|e| e.with_path(&origin))?;
            let prepared = self.prepare(new)?;
            let target = path.clone();
            let saved =
                tokio::task::spawn_blocking(move || atomic::write(&target, text.as_bytes(), 0o644))
                    .await
                    .map_err(|e| ChangeError::Task("saving", e.to_string()))?;
            match saved {
                Ok(()) => {}
                // the new text is in place: what runs must follow it
                Err(e) if e.replaced() => warn!("{e}"),
                Err(source) => return Err(ChangeError::Save { path, source }),
            }
            self.config_warnings.clear();
            Ok(self.commit(prepared).await)
        }
        .await;
        match &result {
            Ok(summary) => info!("new configuration applied: {summary}"),
            Err(e) => error!("new configuration refused, the running one stays: {e}"),
        }
        result.map(|message| Applied {
            message,
            warnings: Vec::new(),
        })
    }

    /// The configuration file as it is now (empty when none was written yet).
    pub(super) async fn config_text(&self) -> Result<String, ChangeError> {
        let path = self.opts.config.clone();
        tokio::task::spawn_blocking(move || match std::fs::read_to_string(&path) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(ChangeError::ReadFile { path, source }),
        })
        .await
        .map_err(|e| ChangeError::Task("reading", e.to_string()))?
    }

    /// Makes `new` the running configuration, or changes nothing and says why not.
    pub(super) async fn apply(
        &mut self,
        new: Config,
        warnings: Vec<Warning>,
    ) -> Result<String, ChangeError> {
        let prepared = self.prepare(new)?;
        // the firewall must be able to let the new services in before they replace the
        // old ones; it follows right after the commit
        let candidate = Arc::new(prepared.config.clone());
        let c = candidate.clone();
        if let Some((Err(e), started)) = self
            .with_firewall(move |f| (f.check_config(&c), f.has_applied()))
            .await
        {
            if started {
                return Err(ChangeError::Firewall(e));
            }
            // at start there are no old services to keep serving: the load balancer
            // runs, and the failure shows in the log and the firewall's status
            error!("{e}");
        }
        for w in &warnings {
            warn!("{w}");
        }
        self.config_warnings = warnings;
        let summary = self.commit(prepared).await;
        // a failure is logged and shown in the firewall's status; the rules before stay
        let _ = self.with_firewall(move |f| f.follow(&candidate)).await;
        Ok(summary)
    }

    /// Phase 1 of a change: everything that can fail. Ports are bound here, before
    /// anything running is touched.
    pub(super) fn prepare(&self, new: Config) -> Result<Prepared, ChangeError> {
        let mut bound: HashMap<(String, SocketAddr), proxy::Listener> = HashMap::new();
        for svc in new
            .services
            .iter()
            .filter(|s| matches!(s.layer, Layer::Seven(_)))
        {
            for &port in &svc.ports {
                let address = SocketAddr::new(svc.address, port);
                let running = self
                    .services
                    .get(&svc.label)
                    .is_some_and(|e| e.listeners.contains_key(&address));
                if !running {
                    let listener = proxy::bind(address).map_err(|source| ChangeError::Bind {
                        service: svc.label.clone(),
                        address,
                        source,
                    })?;
                    bound.insert((svc.label.clone(), address), listener);
                }
            }
        }
        Ok(Prepared { config: new, bound })
    }

    /// Phase 2: makes a prepared configuration the running one; nothing here can
    /// refuse it. Returns a summary for the log and the operator.
    pub(super) async fn commit(&mut self, prepared: Prepared) -> String {
        let Prepared {
            config: new,
            mut bound,
        } = prepared;
        let wanted: BTreeSet<&str> = new.services.iter().map(|s| s.label.as_str()).collect();
        self.services.retain(|label, _| {
            let keep = wanted.contains(label.as_str());
            if !keep {
                // Proxied connections keep running, but only while their address stays
                // local: if lbcore added the service address and no other service uses it,
                // it is removed below and those connections stop receiving packets.
                info!(
                    service = %label,
                    "service removed: no new connections; established ones continue while its address stays on this system"
                );
            }
            keep
        });
        for svc in &new.services {
            let servers = self.servers_for(svc);
            let entry = match self.services.get_mut(&svc.label) {
                Some(e) => {
                    e.runtime.update(svc, servers);
                    e
                }
                None => {
                    info!(service = %svc.label, address = %svc.address, ports = ?svc.ports, layer = svc.layer.number(), "service added");
                    self.services.entry(svc.label.clone()).or_insert(Entry {
                        runtime: ServiceRuntime::new(svc, servers),
                        listeners: HashMap::new(),
                        monitors: HashMap::new(),
                    })
                }
            };
            let ports: BTreeSet<SocketAddr> = match svc.layer {
                Layer::Seven(_) => svc
                    .ports
                    .iter()
                    .map(|&p| SocketAddr::new(svc.address, p))
                    .collect(),
                Layer::Four { .. } => BTreeSet::new(),
            };
            entry.listeners.retain(|addr, task| {
                let keep = ports.contains(addr);
                if !keep {
                    task.abort();
                }
                keep
            });
            for addr in ports {
                if let Some(listener) = bound.remove(&(svc.label.clone(), addr)) {
                    match listener.serve(entry.runtime.clone()) {
                        Ok(task) => {
                            entry.listeners.insert(addr, task);
                        }
                        Err(e) => {
                            error!(service = %svc.label, %addr, "cannot start listening: {e}")
                        }
                    }
                }
            }
            sync_monitors(entry, svc, &self.changed);
        }
        self.config = Arc::new(new);

        if let Some(addresses) = self.addresses.as_mut() {
            let wanted = self.config.services.iter().map(|s| s.address).collect();
            addresses.sync(&wanted).await;
        }
        self.sync_ipvs();
        let l7 = self
            .config
            .services
            .iter()
            .filter(|s| s.layer.number() == 7)
            .count();
        format!(
            "configuration {} loaded: {} service(s), {} at layer 7, {} at layer 4",
            self.opts.config.display(),
            self.config.services.len(),
            l7,
            self.config.services.len() - l7
        )
    }

    /// The servers of `svc`, reusing the live state of those that stay.
    fn servers_for(&self, svc: &config::Service) -> Vec<Arc<Server>> {
        let old = self.services.get(&svc.label).map(|e| e.runtime.servers());
        svc.real_servers
            .iter()
            .map(|cfg| {
                if let Some(s) = old.as_ref().and_then(|o| o.iter().find(|s| s.is_same(cfg))) {
                    s.update(cfg);
                    return s.clone();
                }
                let s = Arc::new(Server::new(cfg));
                if let Some(state) = self.admin.get(&svc.label, &cfg.label) {
                    s.set_admin(state);
                    info!(service = %svc.label, server = %cfg.label, "server starts in state {state} (set by the operator earlier)");
                }
                s
            })
            .collect()
    }

    /// Drain, Halt or Online for one real server, kept in the operator state file.
    pub(super) fn set_state(
        &mut self,
        service: &str,
        server: &str,
        state: AdminState,
    ) -> Result<StateSet, ChangeError> {
        let entry = self
            .services
            .get(service)
            .ok_or_else(|| ChangeError::NoService(service.to_string()))?;
        let target = entry
            .runtime
            .server(server)
            .ok_or_else(|| ChangeError::NoServer {
                service: service.to_string(),
                server: server.to_string(),
            })?;
        let before = target.set_admin(state);
        self.sync_ipvs();
        let note = match state {
            AdminState::Online => "takes new connections again",
            AdminState::Drain => "takes no new connections; established ones stay",
            AdminState::Halt => "takes no new connections; established ones were closed",
        };
        info!(
            service,
            server, "operator set the server to {state} (was {before}): {note}"
        );
        let mut message = format!("{service}/{server} is now {state}: {note}");
        let saved = match self.admin.set(service, server, state) {
            Ok(()) => true,
            Err(e) if e.replaced() => {
                warn!("{e}");
                true
            }
            Err(e) => {
                warn!(
                    "cannot save the operator state to {}: {e}",
                    self.opts.state.display()
                );
                message += &format!(" (warning: not saved, it will be lost at restart: {e})");
                false
            }
        };
        Ok(StateSet {
            service: service.to_string(),
            server: server.to_string(),
            state,
            before,
            saved,
            message,
        })
    }
}

/// Starts, keeps or restarts the health monitor of each real server of `svc`.
fn sync_monitors(entry: &mut Entry, svc: &config::Service, changed: &Arc<Notify>) {
    let servers = entry.runtime.servers();
    entry.monitors.retain(|label, m| {
        let keep = servers
            .iter()
            .any(|s| &s.label == label && Arc::ptr_eq(s, &m.server));
        if !keep {
            m.task.abort();
        }
        keep
    });
    for server in servers.iter() {
        let spec = MonitorSpec::new(&svc.check, svc.address, &svc.ports, server);
        if let Some(m) = entry.monitors.get(&server.label) {
            if m.spec == spec {
                continue;
            }
            m.task.abort();
        }
        let task = monitor::spawn(
            svc.label.clone(),
            server.clone(),
            spec.clone(),
            changed.clone(),
        );
        entry.monitors.insert(
            server.label.clone(),
            Monitor {
                spec,
                server: server.clone(),
                task,
            },
        );
    }
}

/// Reads and validates the configuration file off the async threads (/data may be
/// slow), as stored: keys of a newer version are warnings. With `allow_missing` (at
/// start), a file that does not exist yet means no services: a fresh appliance runs
/// lbcore before anyone configured a service.
pub(super) async fn read_config(
    path: &Path,
    allow_missing: bool,
) -> Result<(Config, Vec<Warning>), ChangeError> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        if allow_missing {
            config::load_or_empty(&owned)
        } else {
            config::load(&owned).map(|(c, w)| (c, w, false))
        }
    })
    .await
    .map_err(|e| ChangeError::Task("reading", e.to_string()))?;
    let (config, warnings, missing) = read?;
    if missing {
        warn!(
            "{} does not exist yet: running with no services until it is written and reloaded",
            path.display()
        );
    }
    Ok((config, warnings))
}

#[cfg(test)]
mod tests {
    //! Prepare and commit on a daemon of the test's own (loopback ports, files in a
    //! temporary directory): a refused change leaves everything as it was, a committed
    //! one keeps what stayed.
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn text(ports: &[u16], weight: u32) -> String {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        format!(
            "[[service]]\nlabel = \"APP\"\nlayer = 7\naddress = \"127.0.0.1\"\nports = [{}]\n\
             check = {{ kind = \"none\" }}\n\
             [[service.real_server]]\nlabel = \"RS1\"\naddress = \"127.0.0.2\"\nweight = {weight}\n",
            ports.join(", ")
        )
    }

    fn listener_ids(d: &Daemon) -> Vec<(u16, tokio::task::Id)> {
        let mut v: Vec<_> = d.services["APP"]
            .listeners
            .iter()
            .map(|(a, t)| (a.port(), t.id()))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_port_that_cannot_be_bound_refuses_the_change_and_nothing_runs_differently() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::for_test(dir.path());
        let (p1, p2) = (free_port(), free_port());
        d.apply(config::parse(&text(&[p1], 100)).unwrap(), vec![])
            .await
            .unwrap();
        let before = listener_ids(&d);
        let running = d.config.clone();
        let blocker = std::net::TcpListener::bind(("127.0.0.1", p2)).unwrap();
        let e = d
            .prepare(config::parse(&text(&[p1, p2], 50)).unwrap())
            .err()
            .unwrap();
        assert!(matches!(e, ChangeError::Bind { .. }), "{e}");
        assert_eq!(e.kind(), RefusalKind::Invalid);
        assert!(
            e.to_string()
                .contains(&format!("cannot listen on 127.0.0.1:{p2}")),
            "{e}"
        );
        assert!(Arc::ptr_eq(&d.config, &running));
        assert_eq!(listener_ids(&d), before);
        assert_eq!(
            d.services["APP"].runtime.server("RS1").unwrap().weight(),
            100
        );
        drop(blocker);
    }

    #[tokio::test]
    async fn a_commit_keeps_listeners_and_server_state_that_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::for_test(dir.path());
        let (p1, p2, p3) = (free_port(), free_port(), free_port());
        d.apply(config::parse(&text(&[p1, p2], 100)).unwrap(), vec![])
            .await
            .unwrap();
        // p1 stays; the ids are sorted by port, and free ports come in any order
        let kept = *listener_ids(&d).iter().find(|(p, _)| *p == p1).unwrap();
        let rs1 = d.services["APP"].runtime.server("RS1").unwrap();
        rs1.set_admin(AdminState::Drain);

        let prepared = d
            .prepare(config::parse(&text(&[p1, p3], 40)).unwrap())
            .unwrap();
        // prepared but not committed: the new port is bound, the old ones still serve
        assert!(std::net::TcpListener::bind(("127.0.0.1", p3)).is_err());
        d.commit(prepared).await;

        let now = listener_ids(&d);
        assert_eq!(now.iter().map(|(p, _)| *p).collect::<Vec<_>>(), {
            let mut v = vec![p1, p3];
            v.sort();
            v
        });
        assert!(
            now.contains(&kept),
            "the unchanged port's listener is the same task"
        );
        let after = d.services["APP"].runtime.server("RS1").unwrap();
        assert!(
            Arc::ptr_eq(&rs1, &after),
            "the same server, with its state and connections"
        );
        assert_eq!((after.admin(), after.weight()), (AdminState::Drain, 40));
        // the dropped port is given back (its listener task ends when aborted)
        crate::health::testutil::wait_free(p2).await;
    }

    #[tokio::test]
    async fn apply_text_saves_only_what_it_applies() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::for_test(dir.path());
        let p1 = free_port();
        let good = text(&[p1], 100);
        let applied = d.apply_text(good.clone(), None).await.unwrap();
        assert!(
            applied.message.contains("1 service(s)"),
            "{}",
            applied.message
        );
        assert_eq!(std::fs::read_to_string(&d.opts.config).unwrap(), good);

        let typo = good.replace("weight = 100", "weigth = 100");
        let e = d
            .apply_text(typo, Some("new.toml".into()))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("new.toml: "), "{e}");
        assert!(e.to_string().contains("unknown field `weigth`"), "{e}");
        assert_eq!(e.kind(), RefusalKind::Invalid);
        assert_eq!(std::fs::read_to_string(&d.opts.config).unwrap(), good);

        // a reload of a file that no longer parses keeps what runs
        std::fs::write(&d.opts.config, "[[service]\n").unwrap();
        let running = d.config.clone();
        assert!(matches!(d.reload().await, Err(ChangeError::Config(_))));
        assert!(Arc::ptr_eq(&d.config, &running));
    }

    #[tokio::test]
    async fn operator_states_name_what_is_missing_and_are_saved() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::for_test(dir.path());
        d.apply(config::parse(&text(&[free_port()], 100)).unwrap(), vec![])
            .await
            .unwrap();
        let e = d.set_state("NOPE", "RS1", AdminState::Drain).unwrap_err();
        assert_eq!(e.kind(), RefusalKind::NotFound);
        let e = d.set_state("APP", "RS9", AdminState::Drain).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service `APP` has no real server called `RS9`"
        );
        let set = d.set_state("APP", "RS1", AdminState::Halt).unwrap();
        assert_eq!(
            (set.before, set.state, set.saved),
            (AdminState::Online, AdminState::Halt, true)
        );
        let (again, _) = appliance::files::operator_state::OperatorStates::load(&d.opts.state);
        assert_eq!(again.get("APP", "RS1"), Some(AdminState::Halt));
    }
}
