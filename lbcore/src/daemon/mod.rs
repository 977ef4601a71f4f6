//! The lbcore daemon: owns the running configuration and everything made from it
//! (services, listeners, health monitors, service addresses), and changes it only as a
//! whole: a new configuration is validated and its ports are bound before anything
//! running is touched, so a refused reload leaves the old configuration serving.
//!
//! - this module: the event loop (signals, control requests, health changes) and
//!   the dispatch of each control request to its handler;
//! - [`change`]: a configuration change, prepared then committed; Drain/Halt/Online;
//! - [`status`]: the System Overview, assembled off the event loop;
//! - [`control_socket`]: the Unix socket server of the control protocol.
//!
//! The kernel's IPVS table is kept by its own thread (`ipvs::manager`): the loop only
//! hands it plans, so netlink, `nft` and sysctl calls never hold the loop up.

mod change;
mod control_socket;
mod status;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::addresses::ServiceAddresses;
use crate::config::Config;
use crate::firewall::{self, Firewall};
use crate::ipvs::manager::{Manager, Plan};
use crate::monitor::MonitorSpec;
use crate::server::Server;
use crate::service::ServiceRuntime;
use appliance::files::Warning;
use appliance::files::operator_state::OperatorStates;
use appliance::layout::{self, LBCORE_IPVS_FILE, LBCORE_STATE_FILE};
use lbcore_control::{Reply, Request};

pub use change::ChangeError;

pub struct Options {
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    /// Add and remove service addresses on the interfaces (off for tests that use
    /// loopback, or where the network configuration owns them).
    pub manage_addresses: bool,
    /// Keep the appliance's firewall (the appliance's lbcore does; tests of other parts
    /// and a development host leave netfilter alone).
    pub firewall: Option<firewall::Options>,
}

/// A running service: its runtime, one listener per port (Layer 7) and one health
/// monitor per real server.
struct Entry {
    runtime: Arc<ServiceRuntime>,
    listeners: HashMap<SocketAddr, JoinHandle<()>>,
    /// By real server label.
    monitors: HashMap<String, Monitor>,
}

struct Monitor {
    spec: MonitorSpec,
    server: Arc<Server>,
    task: JoinHandle<()>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        for l in self.listeners.values() {
            l.abort();
        }
        for m in self.monitors.values() {
            m.task.abort();
        }
    }
}

struct Daemon {
    opts: Options,
    config: Arc<Config>,
    services: BTreeMap<String, Entry>,
    addresses: Option<ServiceAddresses>,
    admin: OperatorStates,
    /// Layer 4: the thread that keeps the kernel's IPVS table.
    ipvs: Manager,
    /// Notified when a server's health changes (IPVS follows).
    changed: Arc<Notify>,
    /// What reading the state files at start had to say.
    file_warnings: Vec<Warning>,
    /// What reading the configuration file had to say, as of the last (re)load.
    config_warnings: Vec<Warning>,
    /// The firewall (`--firewall`); its calls run `nft`, off the event loop.
    firewall: Option<Arc<std::sync::Mutex<Firewall>>>,
}

type Call = (Request, oneshot::Sender<Reply>);

/// Runs lbcore until SIGTERM or SIGINT. Fails at start when the configuration is
/// invalid or a service port cannot be bound.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    // Signals first: a SIGHUP or SIGTERM that arrives while starting must not kill lbcore
    // with the default action (and skip the clean-up of service addresses).
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let (config, config_warnings) = change::read_config(&opts.config, true).await?;
    let addresses = if opts.manage_addresses {
        match ServiceAddresses::new() {
            Ok(a) => Some(a),
            Err(e) => {
                warn!("cannot open netlink ({e}): service addresses will not be managed");
                None
            }
        }
    } else {
        None
    };
    let (admin, mut file_warnings) = OperatorStates::load(&opts.state);
    let ipvs_file = opts.state.with_file_name(LBCORE_IPVS_FILE);
    let (ipvs, ipvs_warnings) =
        Manager::start(Some(ipvs_file)).context("cannot start the IPVS thread")?;
    file_warnings.extend(ipvs_warnings);
    for w in &file_warnings {
        warn!("{w}");
    }
    let firewall = opts
        .firewall
        .clone()
        .map(|o| Arc::new(std::sync::Mutex::new(Firewall::new(o))));
    let mut daemon = Daemon {
        opts,
        config: Arc::new(Config::default()),
        services: BTreeMap::new(),
        addresses,
        admin,
        ipvs,
        changed: Arc::new(Notify::new()),
        file_warnings,
        config_warnings: Vec::new(),
        firewall,
    };
    let summary = daemon.apply(config, config_warnings).await?;
    info!("{summary}");

    let (tx, mut rx) = mpsc::channel::<Call>(32);
    let socket = control_socket::bind(&daemon.opts.socket)?;
    let socket_path = daemon.opts.socket.clone();
    tokio::spawn(control_socket::serve(socket, tx));
    info!(socket = %socket_path.display(), "lbcore ready");

    let changed = daemon.changed.clone();
    // repairs IPVS changes made behind lbcore's back
    let mut repair = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        // a lockdown waiting for its confirmation ends by itself
        let lockdown_ends = daemon.lockdown_deadline();
        tokio::select! {
            _ = async { tokio::time::sleep_until(lockdown_ends.unwrap_or_else(far_future)).await }, if lockdown_ends.is_some() => {
                daemon.with_firewall(|f| f.expire()).await;
            }
            _ = changed.notified() => daemon.sync_ipvs(),
            _ = repair.tick() => daemon.sync_ipvs(),
            Some((request, reply)) = rx.recv() => daemon.handle(request, reply).await,
            _ = hup.recv() => {
                info!("SIGHUP: reloading the configuration");
                let _ = daemon.reload().await; // logged inside
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping");
    daemon.services.clear();
    if let Some(a) = daemon.addresses.as_mut() {
        // Layer 4 flows run in the kernel and continue while lbcore is away (restart):
        // their table and addresses stay
        let l4 = daemon
            .config
            .services
            .iter()
            .filter(|s| s.layer.number() == 4)
            .map(|s| s.address)
            .collect();
        a.sync(&l4).await;
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

impl Daemon {
    /// Carries out one control request and sends its reply. A status is assembled by a
    /// task of its own (it waits for the IPVS thread), so the loop goes on meanwhile.
    async fn handle(&mut self, request: Request, reply: oneshot::Sender<Reply>) {
        use lbcore_control::{Answer, ConfigText};
        let result = match request {
            Request::Status => {
                let snapshot = self.snapshot();
                tokio::spawn(async move {
                    let status = snapshot.status().await;
                    let _ = reply.send(Reply::Done(Answer::Status(status)));
                });
                return;
            }
            Request::Reload => self.reload().await.map(Answer::Applied),
            Request::Apply { config, origin } => {
                self.apply_text(config, origin).await.map(Answer::Applied)
            }
            Request::ShowConfig => self
                .config_text()
                .await
                .map(|text| Answer::Config(ConfigText { text })),
            Request::SetState {
                service,
                server,
                state,
            } => self
                .set_state(&service, &server, state)
                .map(Answer::StateSet),
            Request::Firewall => {
                let status = self.with_firewall(|f| f.status()).await.unwrap_or_default();
                Ok(Answer::Firewall(status))
            }
            Request::SetLockdown {
                networks,
                requester,
            } => self
                .firewall_call(move |f| f.set_lockdown(&networks, requester.as_deref()))
                .await
                .map(Answer::LockdownApplied),
            Request::ConfirmLockdown { token } => self
                .firewall_call(move |f| f.confirm(&token))
                .await
                .map(Answer::Firewall),
            Request::LockdownOff { origin } => self
                .firewall_call(move |f| f.lockdown_off(&origin))
                .await
                .map(Answer::Firewall),
            Request::SetCustomRules { text } => self
                .firewall_call(move |f| f.set_custom(&text))
                .await
                .map(Answer::Firewall),
        };
        let _ = reply.send(result.map_err(Into::into).into());
    }

    /// Runs `f` on the firewall off the event loop (it runs `nft`); `None` without one.
    async fn with_firewall<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Firewall) -> T + Send + 'static,
    ) -> Option<T> {
        let fw = self.firewall.clone()?;
        tokio::task::spawn_blocking(move || {
            let mut g = fw.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g)
        })
        .await
        .ok()
    }

    /// A firewall request: refused when this lbcore keeps no firewall.
    async fn firewall_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Firewall) -> Result<T, lbcore_control::Refused> + Send + 'static,
    ) -> Result<T, ChangeError> {
        match self.with_firewall(f).await {
            Some(r) => r.map_err(ChangeError::Refused),
            None => Err(ChangeError::Refused(lbcore_control::Refused::new(
                lbcore_control::RefusalKind::Unsupported,
                "this lbcore keeps no firewall (it was started without --firewall)",
            ))),
        }
    }

    fn lockdown_deadline(&self) -> Option<tokio::time::Instant> {
        let fw = self.firewall.as_ref()?;
        let d = fw.lock().unwrap_or_else(|p| p.into_inner()).deadline()?;
        Some(tokio::time::Instant::from_std(d))
    }

    /// Hands the IPVS thread the table as it should be now.
    fn sync_ipvs(&mut self) {
        let services = &self.services;
        let plan = Plan::new(&self.config, |label| {
            services.get(label).map(|e| e.runtime.servers())
        });
        self.ipvs.sync(plan);
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86400 * 365)
}

/// The default state file: beside the configuration.
pub fn default_state_path(config: &std::path::Path) -> PathBuf {
    layout::beside_lbcore_config(config, LBCORE_STATE_FILE)
}

#[cfg(test)]
impl Daemon {
    /// A daemon on files in `dir`, managing no addresses, with nothing running yet.
    fn for_test(dir: &std::path::Path) -> Daemon {
        let opts = Options {
            config: dir.join("lbcore.toml"),
            socket: dir.join("lbcore.sock"),
            state: dir.join(LBCORE_STATE_FILE),
            manage_addresses: false,
            firewall: None,
        };
        let (admin, file_warnings) = OperatorStates::load(&opts.state);
        let (ipvs, _) = Manager::start(None).expect("the IPVS thread starts");
        Daemon {
            opts,
            config: Arc::new(Config::default()),
            services: BTreeMap::new(),
            addresses: None,
            admin,
            ipvs,
            changed: Arc::new(Notify::new()),
            file_warnings,
            config_warnings: Vec::new(),
            firewall: None,
        }
    }
}
