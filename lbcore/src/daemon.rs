//! The lbcore daemon: owns the running configuration and everything made from it
//! (services, listeners, health monitors, service addresses), and changes it only as a
//! whole: a new configuration is validated and its ports are bound before anything
//! running is touched, so a refused reload leaves the old configuration serving.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use anyhow::Context;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::addresses::ServiceAddresses;
use crate::admin_state::AdminStates;
use crate::config::{self, Config, Layer};
use crate::control::{
    self, FallbackStatus, Refusal, Refused, Request, Response, ServerStatus, ServiceStatus, Status,
};
use crate::ipvs;
use crate::monitor::{self, MonitorSpec};
use crate::proxy;
use crate::server::{AdminState, Health, Server};
use crate::service::ServiceRuntime;

pub struct Options {
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    /// Add and remove service addresses on the interfaces (off for tests that use
    /// loopback, or where the network configuration owns them).
    pub manage_addresses: bool,
}

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
    config: Config,
    services: BTreeMap<String, Entry>,
    addresses: Option<ServiceAddresses>,
    admin: AdminStates,
    /// Layer 4: the kernel's IPVS table.
    ipvs: ipvs::manager::Manager,
    /// Notified when a server's health changes (IPVS follows).
    changed: Arc<Notify>,
}

type Command = (Request, oneshot::Sender<Response>);

/// A configuration that passed every check, with the new ports already bound.
struct Prepared {
    config: Config,
    bound: HashMap<(String, SocketAddr), proxy::Listener>,
}

/// Runs lbcore until SIGTERM or SIGINT. Fails at start when the configuration is
/// invalid or a service port cannot be bound.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    // Signals first: a SIGHUP or SIGTERM that arrives while starting must not kill lbcore
    // with the default action (and skip the clean-up of service addresses).
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let config = read_config(&opts.config, true).await?;
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
    let admin = AdminStates::load(&opts.state);
    let ipvs_state = opts.state.with_file_name("lbcore-ipvs.json");
    let mut daemon = Daemon {
        opts,
        config: Config {
            services: Vec::new(),
        },
        services: BTreeMap::new(),
        addresses,
        admin,
        ipvs: ipvs::manager::Manager::new(Some(ipvs_state)),
        changed: Arc::new(Notify::new()),
    };
    let summary = daemon.apply(config).await.map_err(anyhow::Error::msg)?;
    info!("{summary}");

    let (tx, mut rx) = mpsc::channel::<Command>(32);
    let socket = bind_control(&daemon.opts.socket)?;
    let socket_path = daemon.opts.socket.clone();
    tokio::spawn(control_server(socket, tx));
    info!(socket = %socket_path.display(), "lbcore ready");

    let changed = daemon.changed.clone();
    // repairs IPVS changes made behind lbcore's back
    let mut repair = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = changed.notified() => daemon.sync_ipvs(),
            _ = repair.tick() => daemon.sync_ipvs(),
            Some((request, reply)) = rx.recv() => {
                let response = daemon.handle(request).await;
                let _ = reply.send(response);
            }
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
    async fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response {
                ok: true,
                status: Some(self.status()),
                ..Response::default()
            },
            Request::Reload => match self.reload().await {
                Ok(summary) => Response::ok(summary),
                Err(e) => Response::error(e),
            },
            Request::Apply { config } => match self.apply_text(config).await {
                Ok(summary) => Response::ok(summary),
                Err(e) => Response::refused(e),
            },
            Request::ShowConfig => match self.config_text().await {
                Ok(text) => Response {
                    ok: true,
                    config: Some(text),
                    ..Response::default()
                },
                // Reading the file failed: lbcore's trouble, not a wrong request.
                Err(e) => Response::refused(Refused::new(Refusal::Failed, e)),
            },
            Request::SetState {
                service,
                server,
                state,
            } => match self.set_state(&service, &server, state) {
                Ok(m) => Response::ok(m),
                Err(e) => Response::refused(e),
            },
        }
    }

    async fn reload(&mut self) -> Result<String, String> {
        // On reload the file must exist: a deleted or unreadable file is a mistake to
        // refuse, not an order to remove every service.
        let result = match read_config(&self.opts.config, false).await {
            Ok(new) => self.apply(new).await,
            Err(e) => Err(e.to_string()),
        };
        match &result {
            Ok(summary) => info!("reloaded: {summary}"),
            Err(e) => error!("configuration refused, the running one stays: {e}"),
        }
        result
    }

    /// Makes `text` the configuration file and the running configuration, or changes
    /// neither and says why not. The file is replaced only once the configuration is
    /// known to be valid and its ports are bound, so that what runs and what the next
    /// start reads stay the same.
    async fn apply_text(&mut self, text: String) -> Result<String, Refused> {
        let path = self.opts.config.clone();
        let result = async {
            let new = config::parse(&text).map_err(|e| e.with_path(&path).to_string())?;
            let prepared = self.prepare(new)?;
            let target = path.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(dir) = target.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                crate::atomic_file::write(&target, text.as_bytes())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| {
                Refused::new(
                    Refusal::Failed,
                    format!("cannot save {}: {e}", path.display()),
                )
            })?;
            Ok(self.commit(prepared).await)
        }
        .await;
        match &result {
            Ok(summary) => info!("new configuration applied: {summary}"),
            Err(e) => error!("new configuration refused, the running one stays: {e}"),
        }
        result
    }

    /// The configuration file as it is now (empty when none was written yet).
    async fn config_text(&self) -> Result<String, String> {
        let path = self.opts.config.clone();
        tokio::task::spawn_blocking(move || match std::fs::read_to_string(&path) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        })
        .await
        .map_err(|e| format!("the reading task failed: {e}"))?
    }

    /// Makes `new` the running configuration, or changes nothing and says why not.
    async fn apply(&mut self, new: Config) -> Result<String, String> {
        let prepared = self.prepare(new)?;
        Ok(self.commit(prepared).await)
    }

    /// Phase 1 of a change: everything that can fail. Ports are bound here, before
    /// anything running is touched.
    fn prepare(&self, new: Config) -> Result<Prepared, String> {
        let mut bound: HashMap<(String, SocketAddr), proxy::Listener> = HashMap::new();
        for svc in new
            .services
            .iter()
            .filter(|s| matches!(s.layer, Layer::Seven(_)))
        {
            for &port in &svc.ports {
                let addr = SocketAddr::new(svc.address, port);
                let running = self
                    .services
                    .get(&svc.label)
                    .is_some_and(|e| e.listeners.contains_key(&addr));
                if !running {
                    let listener = proxy::bind(addr).map_err(|e| {
                        format!("service \"{}\": cannot listen on {addr}: {e}", svc.label)
                    })?;
                    bound.insert((svc.label.clone(), addr), listener);
                }
            }
        }
        Ok(Prepared { config: new, bound })
    }

    /// Phase 2: makes a prepared configuration the running one; nothing here can
    /// refuse it. Returns a summary for the log and the operator.
    async fn commit(&mut self, prepared: Prepared) -> String {
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
        self.config = new;

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

    /// Brings the kernel's IPVS table in step with the Layer 4 services.
    fn sync_ipvs(&mut self) {
        let services = &self.services;
        self.ipvs.sync(&self.config, |label| {
            services.get(label).map(|e| e.runtime.servers())
        });
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

    fn set_state(
        &mut self,
        service: &str,
        server: &str,
        state: AdminState,
    ) -> Result<String, Refused> {
        let entry = self.services.get(service).ok_or_else(|| {
            Refused::new(
                Refusal::NotFound,
                format!("there is no service called `{service}`"),
            )
        })?;
        let target = entry.runtime.server(server).ok_or_else(|| {
            Refused::new(
                Refusal::NotFound,
                format!("service `{service}` has no real server called `{server}`"),
            )
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
        if let Err(e) = self.admin.set(service, server, state) {
            warn!(
                "cannot save the operator state to {}: {e}",
                self.opts.state.display()
            );
            return Ok(format!(
                "{service}/{server} is now {state}: {note} (warning: not saved, it will be lost at restart: {e})"
            ));
        }
        Ok(format!("{service}/{server} is now {state}: {note}"))
    }

    fn status(&self) -> Status {
        let has_l4 = self.config.services.iter().any(|s| s.layer.number() == 4);
        let table = has_l4.then(|| self.ipvs.table());
        let kernel: &[ipvs::Service] = match &table {
            Some(Ok(t)) => t,
            _ => &[],
        };
        let services = self
            .config
            .services
            .iter()
            .filter_map(|svc| {
                let entry = self.services.get(&svc.label)?;
                let rt = &entry.runtime;
                let c = rt.counters();
                let servers = rt.servers();
                let any_up = servers.iter().any(|s| s.takes_new_connections());
                let l4 = svc.layer.number() == 4;
                let in_ipvs = |address, port: Option<u16>| {
                    l4.then(|| ipvs_counters(kernel, svc, address, port))
                        .flatten()
                };
                let real_servers: Vec<ServerStatus> = servers
                    .iter()
                    .map(|s| {
                        let h = s.health_record();
                        let ipvs = in_ipvs(s.address, s.port);
                        ServerStatus {
                            label: s.label.clone(),
                            address: s.address,
                            port: s.port,
                            weight: s.weight(),
                            max_connections: s.max_connections(),
                            health: h.health,
                            state: s.admin(),
                            connections: ipvs.map_or(s.active(), |i| i.active),
                            total_connections: ipvs.map_or(s.total(), |i| i.total),
                            last_failure: if h.health == Health::Up {
                                None
                            } else {
                                h.last_failure
                            },
                            since: h
                                .since
                                .duration_since(UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs()),
                            ipvs,
                        }
                    })
                    .collect();
                let fallback_ipvs = svc.fallback.and_then(|f| in_ipvs(f.address, f.port));
                Some(ServiceStatus {
                    label: svc.label.clone(),
                    layer: svc.layer.number(),
                    address: svc.address,
                    ports: svc.ports.clone(),
                    scheduler: svc.scheduler.name().to_string(),
                    forwarding: match &svc.layer {
                        Layer::Four { forwarding, .. } => serde_json::to_value(forwarding)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned)),
                        Layer::Seven(_) => None,
                    },
                    persistence: svc
                        .persistence
                        .as_ref()
                        .map(|p| config::duration::format(p.timeout)),
                    check: svc.check.probe.kind().to_string(),
                    connections: if l4 {
                        real_servers.iter().map(|r| r.connections).sum::<u32>()
                            + fallback_ipvs.map_or(0, |i| i.active)
                    } else {
                        c.active
                    },
                    total_connections: if l4 {
                        real_servers
                            .iter()
                            .map(|r| r.total_connections)
                            .sum::<u64>()
                            + fallback_ipvs.map_or(0, |i| i.total)
                    } else {
                        c.total
                    },
                    refused: c.refused,
                    queued: c.queued,
                    fallback: svc.fallback.map(|f| FallbackStatus {
                        address: f.address,
                        port: f.port,
                        in_use: !any_up,
                        connections: fallback_ipvs.map_or(c.fallback_active, |i| i.active),
                        total_connections: fallback_ipvs.map_or(c.fallback_total, |i| i.total),
                    }),
                    real_servers,
                    note: match (&svc.layer, &table) {
                        (Layer::Four { .. }, Some(Err(e))) => {
                            Some(format!("layer 4: not forwarded: {e}"))
                        }
                        _ => None,
                    },
                })
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            config: self.opts.config.display().to_string(),
            services,
            ipvs: match table {
                Some(Ok(t)) => Some(t),
                _ => None,
            },
            process: control::ProcessStatus::of_self(),
        }
    }
}

/// A Layer 4 server's entry in the kernel's table, summed over the service's ports.
fn ipvs_counters(
    kernel: &[ipvs::Service],
    svc: &config::Service,
    address: std::net::IpAddr,
    port: Option<u16>,
) -> Option<control::IpvsServerStatus> {
    let mut found: Option<control::IpvsServerStatus> = None;
    for &vport in &svc.ports {
        let Some(k) = kernel
            .iter()
            .find(|k| k.key.address == svc.address && k.key.port == vport)
        else {
            continue;
        };
        let want = ipvs::DestKey {
            address,
            port: port.unwrap_or(vport),
        };
        if let Some(d) = k.dests.iter().find(|d| d.key == want) {
            let f = found.get_or_insert_default();
            f.weight = f.weight.max(d.spec.weight);
            f.active += d.counters.active;
            f.inactive += d.counters.inactive;
            f.persistent += d.counters.persistent;
            f.total += d.counters.total;
        }
    }
    found
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

/// Binds the control socket, replacing a stale one but never a live lbcore's.
fn bind_control(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another lbcore is already running on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

async fn control_server(listener: UnixListener, tx: mpsc::Sender<Command>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(control_session(stream, tx.clone()));
            }
            Err(e) => {
                warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// The longest request line accepted on the control socket.
const MAX_REQUEST: u64 = 1 << 20;

async fn control_session(stream: UnixStream, tx: mpsc::Sender<Command>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        // Bounded per request, so that a confused client cannot grow our memory while a
        // long-lived one (the web UI polling status) may send any number of requests.
        let mut line = String::new();
        let n = match (&mut reader).take(MAX_REQUEST).read_line(&mut line).await {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        let response = if !line.ends_with('\n') && n as u64 >= MAX_REQUEST {
            Response::error(format!("request longer than {MAX_REQUEST} bytes"))
        } else if line.trim().is_empty() {
            continue;
        } else {
            match serde_json::from_str::<Request>(&line) {
                Ok(request) => {
                    let (reply, answer) = oneshot::channel();
                    if tx.send((request, reply)).await.is_err() {
                        return;
                    }
                    answer
                        .await
                        .unwrap_or_else(|_| Response::error("lbcore is stopping"))
                }
                Err(e) => Response::error(format!("not a valid request: {e}")),
            }
        };
        let mut text = serde_json::to_string(&response).unwrap_or_else(|e| {
            format!("{{\"ok\":false,\"error\":\"cannot encode the answer: {e}\"}}")
        });
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err()
            || response
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("request longer"))
        {
            return;
        }
    }
}

/// Reads and validates the configuration off the async threads (/data may be slow).
/// With `allow_missing` (at start), a file that does not exist yet means no services: a
/// fresh appliance runs lbcore before anyone configured a service.
async fn read_config(
    path: &std::path::Path,
    allow_missing: bool,
) -> Result<Config, config::ConfigError> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        if allow_missing {
            config::load_or_empty(&owned)
        } else {
            config::load(&owned).map(|c| (c, false))
        }
    })
    .await
    .map_err(|e| config::ConfigError::Read {
        path: path.to_path_buf(),
        reason: format!("the reading task failed: {e}"),
    })?;
    let (config, missing) = read?;
    if missing {
        warn!(
            "{} does not exist yet: running with no services until it is written and reloaded",
            path.display()
        );
    }
    Ok(config)
}

/// The default state file: beside the configuration file.
pub fn default_state_path(config: &std::path::Path) -> PathBuf {
    config.with_file_name("lbcore-state.json")
}

/// Re-exported for `lbctl`.
pub use control::DEFAULT_SOCKET;
