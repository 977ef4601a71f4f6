//! The boot sequence and the main loop of PID 1: each boot duty in order (logged
//! with its duration; a failure is logged and the rest carries on), then one event
//! loop for signals, child exits, readiness, control requests and console actions,
//! until a shutdown has stopped everything.

use crate::control::{self, Call, Request};
use crate::layout::{Layout, MARK_GOOD_HOOK, VERSION_FILE};
use crate::menu::{self, Shared, Status, UiEvent};
use crate::network::{self, config::NetworkConfig};
use crate::options::Options;
use crate::reaper::{self, Exit};
use crate::services::{self, Placeholders};
use crate::shutdown::{self, Action};
use crate::supervisor::{ReadyLine, Supervisor};
use crate::{datafs, info, log, modules, mounts, powerbutton};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// Seconds since the machine booted (CLOCK_BOOTTIME).
pub fn uptime() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

/// Run a boot duty, logging its duration.
fn step<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    info!("{name}: {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    r
}

/// PID 1's entry: never returns unless `--exit-on-shutdown`.
///
/// Should the main loop ever panic (a bug), init logs it and keeps the one duty
/// that must never stop: reaping children. The kernel would panic if PID 1 exited.
pub fn main(opts: Options) {
    crate::console::ensure_stdio();
    std::panic::set_hook(Box::new(|p| {
        crate::log::write("init", &format!("internal error: {p}"));
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match rt {
        Ok(rt) => {
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run(opts))));
            if r.is_err() {
                info!("the main loop failed; only reaping children from now on");
            }
        }
        Err(e) => info!("cannot start the runtime: {e}"),
    }
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(-1), None) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

struct Boot {
    opts: Options,
    layout: Layout,
    started: Instant,
    problems: Vec<String>,
    data_mount: Option<PathBuf>,
}

async fn run(opts: Options) {
    let started = Instant::now();
    log::set_mirror(true, opts.log_stderr);
    let version = std::fs::read_to_string(opts.in_root(VERSION_FILE))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_string());
    info!(
        "init {version} starting as pid {} (uptime {:.2} s)",
        std::process::id(),
        uptime()
    );
    let mut b = Boot {
        layout: opts.layout(),
        opts,
        started,
        problems: Vec::new(),
        data_mount: None,
    };

    if b.opts.mounts {
        let problems = step("mounts", mounts::mount_all);
        crate::console::reopen_stdio();
        for p in problems {
            info!("mounts: {p}");
            b.problems.push(p);
        }
    }
    if std::process::id() == 1 {
        // Ctrl-Alt-Del sends SIGINT to init instead of rebooting at once.
        let _ = nix::sys::reboot::set_cad_enabled(false);
    }
    let _ = std::fs::create_dir_all(b.layout.run());

    let (child_tx, mut child_rx) = mpsc::unbounded_channel::<(i32, Exit)>();
    reaper::set_events(child_tx);
    if let Err(e) = reaper::start() {
        info!("cannot watch SIGCHLD: {e}");
    }
    let mut signals = Signals::new();

    if b.opts.modules {
        let root = b.opts.root.clone();
        let report = step("modules", || {
            modules::load_boot_modules(&root, PathBuf::from("/sys").as_path())
        });
        info!("modules: {report}");
    }

    if b.opts.data.is_none() {
        let t = Instant::now();
        match datafs::prepare(&b.layout).await {
            Ok(m) => {
                info!(
                    "data: {} ({:.1} ms)",
                    m.describe(),
                    t.elapsed().as_secs_f64() * 1000.0
                );
                b.data_mount = Some(b.layout.data().to_path_buf());
            }
            Err(e) => {
                let p = format!("data partition: {e}");
                info!("{p}; settings will not be kept");
                b.problems.push(p);
            }
        }
    }
    for d in b.layout.data_dirs() {
        if let Err(e) = std::fs::create_dir_all(&d) {
            info!("creating {}: {e}", d.display());
        }
    }
    if let Err(e) = log::open_file(
        &b.layout.init_log(),
        log::DEFAULT_MAX_SIZE,
        log::DEFAULT_KEEP,
    ) {
        info!("log file {}: {e}", b.layout.init_log().display());
    }

    let setup_done = b.layout.network_config().exists();
    let net_cfg = load_network(&b.layout);
    if b.opts.network
        && let Some(h) = net_cfg.as_ref().and_then(|c| c.hostname.clone())
    {
        set_hostname(&h);
    }

    // Consoles.
    let consoles = b.opts.consoles.clone().unwrap_or_else(|| {
        crate::console::active_consoles(std::path::Path::new("/dev"))
            .into_iter()
            .map(|p| p.display().to_string())
            .collect()
    });
    let (ui_tx, mut ui_rx) = mpsc::unbounded_channel::<UiEvent>();
    let shared = Arc::new(Shared {
        layout: b.layout.clone(),
        root: b.opts.root.clone(),
        sys: PathBuf::from("/sys"),
        version: version.clone(),
        setup_done: AtomicBool::new(setup_done),
        wizard_done: Arc::new(AtomicBool::new(setup_done)),
        claim: Mutex::new(()),
        status: Mutex::new(Status {
            problems: b.problems.clone(),
            ..Default::default()
        }),
        outputs: Mutex::new(Default::default()),
        events: ui_tx.clone(),
    });
    if !consoles.is_empty() {
        info!("consoles: {}", consoles.join(", "));
        if !b.opts.log_stderr {
            log::set_mirror(false, false);
        }
        menu::start(consoles.clone(), shared.clone());
    }
    if std::process::id() == 1 && b.opts.mounts {
        let tx = ui_tx.clone();
        powerbutton::watch(
            std::path::Path::new("/sys"),
            std::path::Path::new("/dev"),
            move || {
                let _ = tx.send(UiEvent::PowerOff);
            },
        );
    }

    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Call>();
    if let Err(e) = control::serve(&b.layout.control_socket(), ctl_tx) {
        info!(
            "control socket {}: {e}",
            b.layout.control_socket().display()
        );
    }

    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<ReadyLine>();
    let mut sup = Supervisor::new(Vec::new(), ready_tx.clone());
    let mut net = network::Manager::new(Some(b.opts.in_root("etc/resolv.conf")));
    let mut running = false;
    if setup_done || consoles.is_empty() {
        if !setup_done {
            info!("no network settings and no console: starting without them");
        }
        sup = bring_up(&mut b, &mut net, ready_tx.clone()).await;
        running = true;
    } else {
        info!("first boot: waiting for the setup wizard on the console");
    }

    let mut announced = false;
    let mut wizard_ended: Option<Instant> = None;
    let mut late_announced = false;
    let mut shutting: Option<Action> = None;
    loop {
        sup.tick(Instant::now());

        {
            let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
            st.services = sup.list();
            st.ready = running && sup.all_ready();
        }
        if running && shutting.is_none() && !announced && sup.all_ready() {
            announced = true;
            // timed from the end of the wizard when it ran: minutes of typing are not
            // the appliance's start-up time
            let line = match wizard_ended {
                Some(at) => format!(
                    "services ready in {} ms (uptime {:.2} s), timed from the end of the setup wizard",
                    at.elapsed().as_millis(),
                    uptime()
                ),
                None => format!(
                    "services ready in {} ms (uptime {:.2} s)",
                    b.started.elapsed().as_millis(),
                    uptime()
                ),
            };
            info!("{line}");
            shared.broadcast(&line);
            mark_good(&b.opts).await;
        }
        if running && !announced && !late_announced && !sup.late().is_empty() {
            late_announced = true;
            let line = format!("services not ready: {}", sup.late().join(", "));
            info!("{line}");
            shared.broadcast(&line);
        }
        if let Some(action) = shutting
            && sup.shutdown_done()
        {
            info!("services stopped");
            net.release().await;
            shutdown::kill_the_rest(Duration::from_secs(3)).await;
            shared.broadcast(&format!("System is going down: {}.", action.as_str()));
            shutdown::finish(action, b.data_mount.take(), b.opts.exit_on_shutdown);
            return;
        }
        let wake = sup
            .next_wakeup(Instant::now())
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let wake = tokio::time::Instant::from_std(wake);
        tokio::select! {
            Some((pid, exit)) = child_rx.recv() => sup.on_exit(pid, exit, Instant::now()),
            Some(r) = ready_rx.recv() => sup.on_ready_line(r),
            Some(call) = ctl_rx.recv() => {
                let now = Instant::now();
                let (answer, action) = match call.request {
                    Request::List => (json!({"ok": true, "ready": running && sup.all_ready(), "services": sup.list()}), None),
                    Request::Restart(n) => (result(sup.restart(&n, now)), None),
                    Request::Stop(n) => (result(sup.stop(&n, now)), None),
                    Request::Start(n) => (result(sup.start(&n)), None),
                    Request::Reboot => (json!({"ok": true}), Some(Action::Reboot)),
                    Request::PowerOff => (json!({"ok": true}), Some(Action::PowerOff)),
                };
                let _ = call.reply.send(answer);
                if let Some(a) = action { begin_shutdown(&mut shutting, &mut sup, a); }
            }
            Some(ev) = ui_rx.recv() => match ev {
                UiEvent::SetupDone => {
                    wizard_ended = Some(Instant::now());
                    if b.opts.network && let Some(h) = load_network(&b.layout).and_then(|c| c.hostname) { set_hostname(&h); }
                    if !running && shutting.is_none() {
                        sup = bring_up(&mut b, &mut net, ready_tx.clone()).await;
                        running = true;
                    }
                }
                UiEvent::NetworkChanged => {
                    if b.opts.network && let Some(cfg) = load_network(&b.layout) {
                        if let Some(h) = &cfg.hostname { set_hostname(h); }
                        apply_network(&mut net, &cfg).await;
                    }
                }
                UiEvent::Reboot => begin_shutdown(&mut shutting, &mut sup, Action::Reboot),
                UiEvent::PowerOff => begin_shutdown(&mut shutting, &mut sup, Action::PowerOff),
            },
            a = signals.next() => begin_shutdown(&mut shutting, &mut sup, a),
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

fn result(r: Result<(), crate::supervisor::NoSuchService>) -> serde_json::Value {
    match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

fn begin_shutdown(shutting: &mut Option<Action>, sup: &mut Supervisor, a: Action) {
    if shutting.is_none() {
        info!("shutdown requested: {}", a.as_str());
        *shutting = Some(a);
        sup.begin_shutdown();
    }
}

fn load_network(layout: &Layout) -> Option<NetworkConfig> {
    let path = layout.network_config();
    if !path.exists() {
        return None;
    }
    match NetworkConfig::load(&path) {
        Ok((c, warnings)) => {
            for w in warnings {
                info!("network settings: {w}");
            }
            Some(c)
        }
        Err(e) => {
            info!("network settings: {e}");
            None
        }
    }
}

fn set_hostname(h: &str) {
    if let Err(e) = nix::unistd::sethostname(h) {
        info!("setting the hostname to {h}: {e}");
    } else {
        info!("hostname: {h}");
    }
}

async fn apply_network(net: &mut network::Manager, cfg: &NetworkConfig) {
    let t = Instant::now();
    match tokio::time::timeout(Duration::from_secs(30), net.apply(cfg)).await {
        Ok(Ok(report)) => info!(
            "network: {report} ({:.1} ms)",
            t.elapsed().as_secs_f64() * 1000.0
        ),
        Ok(Err(e)) => info!("network: {e:#}"),
        Err(_) => info!("network: applying took longer than 30 s; gave up"),
    }
}

/// Network, then services.
async fn bring_up(
    b: &mut Boot,
    net: &mut network::Manager,
    ready_tx: mpsc::UnboundedSender<ReadyLine>,
) -> Supervisor {
    if b.opts.network
        && let Some(cfg) = load_network(&b.layout)
    {
        apply_network(net, &cfg).await;
    }
    let ph = Placeholders {
        data: b.layout.data().display().to_string(),
        run: b.layout.run().display().to_string(),
        root: b.opts.root.display().to_string(),
    };
    let file = b.opts.services_file();
    let list = match services::load(&file, &ph) {
        Ok(l) => l,
        Err(e) => {
            let p = format!("services: {e}");
            info!("{p}");
            b.problems.push(p);
            Vec::new()
        }
    };
    info!("services: {} from {}", list.len(), file.display());
    let mut sup = Supervisor::new(list, ready_tx);
    sup.tick(Instant::now());
    sup
}

/// Run the hook that marks this boot slot good (once per boot, when all is ready).
async fn mark_good(opts: &Options) {
    let hook = opts.in_root(MARK_GOOD_HOOK);
    if !hook.exists() {
        return;
    }
    let mut cmd = std::process::Command::new(&hook);
    match reaper::run(&mut cmd, Duration::from_secs(60)).await {
        Ok(out) => info!(
            "{}: {}{}",
            hook.display(),
            out.exit,
            if out.stderr.is_empty() {
                String::new()
            } else {
                format!(": {}", out.stderr.trim())
            }
        ),
        Err(e) => info!("{}: {e}", hook.display()),
    }
}

/// The signals that end the system.
struct Signals {
    list: Vec<(tokio::signal::unix::Signal, Action)>,
}

impl Signals {
    fn new() -> Self {
        let wanted = [
            (SignalKind::terminate(), Action::PowerOff),
            (SignalKind::from_raw(libc::SIGPWR), Action::PowerOff),
            (SignalKind::user_defined2(), Action::PowerOff),
            (SignalKind::interrupt(), Action::Reboot),
            (SignalKind::user_defined1(), Action::Reboot),
        ];
        let mut list = Vec::new();
        for (kind, action) in wanted {
            match signal(kind) {
                Ok(s) => list.push((s, action)),
                Err(e) => info!("cannot watch signal {}: {e}", kind.as_raw_value()),
            }
        }
        Signals { list }
    }

    /// The next shutdown signal's action.
    async fn next(&mut self) -> Action {
        if self.list.is_empty() {
            std::future::pending::<()>().await;
        }
        let futs = self
            .list
            .iter_mut()
            .map(|(s, a)| {
                let a = *a;
                Box::pin(async move {
                    s.recv().await;
                    a
                })
            })
            .collect::<Vec<_>>();
        futures_util::future::select_all(futs).await.0
    }
}
