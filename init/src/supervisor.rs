//! The supervisor: starts the services of the services file in dependency order,
//! captures their stdout/stderr line by line into the log, watches readiness
//! (a socket path to appear or a line on stdout), restarts them after they exit
//! with exponential backoff up to a cap, and stops them in reverse dependency order
//! (SIGTERM, then SIGKILL after the grace period) at shutdown.
//!
//! It is a plain state machine driven by the main loop: exits from the reaper,
//! readiness lines from the output pumps, control requests, and [`Supervisor::tick`]
//! at [`Supervisor::next_wakeup`]. Time comes in as an argument and processes are
//! started and signalled through a [`Launcher`], so that the machine is tested with
//! a clock and processes of the test's own.

use crate::reaper::{self, Exit};
use crate::services::{Restart, Service};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc::UnboundedSender;

/// How long a service gets after SIGKILL before it is given up on.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How often socket readiness is polled.
const SOCKET_POLL: Duration = Duration::from_millis(20);

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for its dependencies to be ready.
    Waiting,
    /// Running, not yet ready.
    Starting,
    /// Running and ready.
    Ready,
    /// Exited; restarts when the backoff delay has passed.
    Backoff,
    /// Sent SIGTERM (or SIGKILL); waiting for it to exit.
    Stopping,
    /// Not running, not to be restarted (stopped, or finished).
    Stopped,
    /// Exited and its restart policy says no more.
    Failed,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }
}

/// How a service's last run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastExit {
    /// It ran and exited (or was killed).
    Exited(Exit),
    /// Its program could not be started.
    CouldNotStart(String),
}

impl LastExit {
    /// Ran to completion with status 0.
    pub fn success(&self) -> bool {
        matches!(self, LastExit::Exited(e) if e.success())
    }
}

impl std::fmt::Display for LastExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LastExit::Exited(e) => write!(f, "{e}"),
            LastExit::CouldNotStart(why) => write!(f, "could not start: {why}"),
        }
    }
}

/// A request about a service that names none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no service named {0:?}")]
pub struct NoSuchService(pub String);

/// Starts and signals the services' processes: [`Processes`] on the appliance, a
/// scripted one in the tests.
pub trait Launcher {
    /// Starts `svc`'s program; returns its pid. `ready` (for a service that signals
    /// readiness with a line on stdout) is to be reported when that line appears.
    fn launch(&mut self, svc: &Service, ready: Option<ReadyLine>) -> std::io::Result<i32>;
    /// Sends `sig` to the service's process group (it is its leader).
    fn signal(&mut self, pid: i32, sig: Signal);
}

/// The real processes: spawned through the reaper (so that their exit reaches the
/// supervisor), in a process group of their own, their output copied into the log.
pub struct Processes {
    ready_tx: UnboundedSender<ReadyLine>,
}

impl Launcher for Processes {
    fn launch(&mut self, svc: &Service, ready: Option<ReadyLine>) -> std::io::Result<i32> {
        let mut cmd = Command::new(&svc.command);
        cmd.args(&svc.args)
            .envs(&svc.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir("/")
            .process_group(0);
        if std::env::var_os("PATH").is_none() {
            cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        }
        let mut child = reaper::spawn(&mut cmd)?;
        let line = svc.ready.as_ref().and_then(|r| r.line.clone());
        let ready = line.zip(ready).map(|(l, r)| (l, self.ready_tx.clone(), r));
        if let Some(out) = child.stdout.take() {
            pump(svc.name.clone(), out.into(), ready);
        }
        if let Some(err) = child.stderr.take() {
            pump(svc.name.clone(), err.into(), None);
        }
        Ok(child.id() as i32)
    }

    fn signal(&mut self, pid: i32, sig: Signal) {
        signal_group(pid, sig);
    }
}

/// What the control socket and the console show about a service.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceInfo {
    pub name: String,
    pub state: State,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub uptime_s: Option<f64>,
}

/// A readiness line seen on a service's stdout.
#[derive(Debug, Clone, Copy)]
pub struct ReadyLine {
    pub idx: usize,
    pub generation: u64,
}

struct Svc {
    cfg: Service,
    state: State,
    pid: Option<i32>,
    restarts: u32,
    backoff: Duration,
    started: Option<Instant>,
    deadline: Option<Instant>,
    generation: u64,
    last_exit: Option<LastExit>,
    late_reported: bool,
    restart_requested: bool,
    killed: bool,
}

/// The services and their states.
pub struct Supervisor<L: Launcher = Processes> {
    svcs: Vec<Svc>,
    launcher: L,
    shutting_down: bool,
}

impl Supervisor<Processes> {
    /// Services must be in start order (see [`crate::services::order`]).
    pub fn new(services: Vec<Service>, ready_tx: UnboundedSender<ReadyLine>) -> Self {
        Supervisor::with_launcher(services, Processes { ready_tx })
    }
}

impl<L: Launcher> Supervisor<L> {
    /// Services must be in start order; `launcher` starts their processes.
    pub fn with_launcher(services: Vec<Service>, launcher: L) -> Self {
        let svcs = services
            .into_iter()
            .map(|cfg| Svc {
                backoff: cfg.backoff_initial(),
                cfg,
                state: State::Waiting,
                pid: None,
                restarts: 0,
                started: None,
                deadline: None,
                generation: 0,
                last_exit: None,
                late_reported: false,
                restart_requested: false,
                killed: false,
            })
            .collect();
        Supervisor {
            svcs,
            launcher,
            shutting_down: false,
        }
    }

    /// Every service is ready (or has finished successfully and is not restarted).
    pub fn all_ready(&self) -> bool {
        self.svcs.iter().all(|s| {
            s.state == State::Ready
                || (s.state == State::Stopped
                    && s.last_exit.as_ref().is_some_and(LastExit::success))
        })
    }

    /// Names of services not ready past their readiness timeout.
    pub fn late(&self) -> Vec<String> {
        self.svcs
            .iter()
            .filter(|s| s.late_reported && s.state != State::Ready)
            .map(|s| s.cfg.name.clone())
            .collect()
    }

    /// A snapshot for the control socket and the console.
    pub fn list(&self) -> Vec<ServiceInfo> {
        let now = Instant::now();
        self.svcs
            .iter()
            .map(|s| ServiceInfo {
                name: s.cfg.name.clone(),
                state: s.state,
                pid: s.pid,
                restarts: s.restarts,
                last_exit: s.last_exit.as_ref().map(LastExit::to_string),
                uptime_s: s.pid.and(s.started).map(|t| (now - t).as_secs_f64()),
            })
            .collect()
    }

    /// Restart a service now (no backoff).
    pub fn restart(&mut self, name: &str, now: Instant) -> Result<(), NoSuchService> {
        let i = self.find(name)?;
        let s = &mut self.svcs[i];
        s.backoff = s.cfg.backoff_initial();
        match s.pid {
            Some(pid) if s.state != State::Stopping => {
                s.restart_requested = true;
                s.state = State::Stopping;
                s.deadline = Some(now + s.cfg.stop_timeout());
                self.launcher.signal(pid, Signal::SIGTERM);
            }
            Some(_) => s.restart_requested = true,
            None => s.state = State::Waiting,
        }
        Ok(())
    }

    /// Stop a service and keep it stopped.
    pub fn stop(&mut self, name: &str, now: Instant) -> Result<(), NoSuchService> {
        let i = self.find(name)?;
        let s = &mut self.svcs[i];
        s.restart_requested = false;
        match s.pid {
            Some(pid) => {
                s.state = State::Stopping;
                s.deadline = Some(now + s.cfg.stop_timeout());
                self.launcher.signal(pid, Signal::SIGTERM);
            }
            None => s.state = State::Stopped,
        }
        Ok(())
    }

    /// Start a stopped or failed service.
    pub fn start(&mut self, name: &str) -> Result<(), NoSuchService> {
        let i = self.find(name)?;
        let s = &mut self.svcs[i];
        if s.pid.is_none() {
            s.state = State::Waiting;
            s.backoff = s.cfg.backoff_initial();
        }
        Ok(())
    }

    fn find(&self, name: &str) -> Result<usize, NoSuchService> {
        self.svcs
            .iter()
            .position(|s| s.cfg.name == name)
            .ok_or_else(|| NoSuchService(name.to_string()))
    }

    /// Stop everything, last started first.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        for s in &mut self.svcs {
            if s.pid.is_none() {
                s.state = State::Stopped;
            }
        }
    }

    /// After [`begin_shutdown`](Self::begin_shutdown): nothing runs any more.
    pub fn shutdown_done(&self) -> bool {
        self.svcs.iter().all(|s| s.pid.is_none())
    }

    /// The pids of running services.
    pub fn pids(&self) -> Vec<i32> {
        self.svcs.iter().filter_map(|s| s.pid).collect()
    }

    /// When [`tick`](Self::tick) should run next, as of `now`.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        self.svcs
            .iter()
            .filter_map(|s| match s.state {
                State::Backoff | State::Stopping => s.deadline,
                State::Starting => {
                    let by_socket = s
                        .cfg
                        .ready
                        .as_ref()
                        .and_then(|r| r.socket.as_ref())
                        .map(|_| now + SOCKET_POLL);
                    let late = (!s.late_reported).then_some(s.deadline).flatten();
                    [by_socket, late].into_iter().flatten().min()
                }
                State::Waiting => Some(now),
                _ => None,
            })
            .min()
    }

    /// A child exited: update its service, if it is one of ours.
    pub fn on_exit(&mut self, pid: i32, exit: Exit, now: Instant) {
        let Some(s) = self.svcs.iter_mut().find(|s| s.pid == Some(pid)) else {
            return; // an orphan, already reaped
        };
        s.pid = None;
        s.generation += 1;
        s.last_exit = Some(LastExit::Exited(exit));
        let ran = s.started.map(|t| now - t).unwrap_or_default();
        crate::info!(
            "service {} ({pid}) ended: {exit} after {:.1} s",
            s.cfg.name,
            ran.as_secs_f64()
        );
        if self.shutting_down {
            s.state = State::Stopped;
            return;
        }
        if s.restart_requested {
            s.restart_requested = false;
            s.state = State::Waiting;
            return;
        }
        if s.state == State::Stopping {
            s.state = State::Stopped;
            return;
        }
        let again = match s.cfg.restart {
            Restart::Always => true,
            Restart::OnFailure => !exit.success(),
            Restart::Never => false,
        };
        if !again {
            s.state = if exit.success() {
                State::Stopped
            } else {
                State::Failed
            };
            return;
        }
        if ran >= s.cfg.reset_after() {
            s.backoff = s.cfg.backoff_initial();
        }
        s.restarts += 1;
        s.state = State::Backoff;
        s.deadline = Some(now + s.backoff);
        crate::info!(
            "service {}: restart {} in {} ms",
            s.cfg.name,
            s.restarts,
            s.backoff.as_millis()
        );
        s.backoff = s.backoff.saturating_mul(2).min(s.cfg.backoff_max());
    }

    /// A readiness line was seen.
    pub fn on_ready_line(&mut self, r: ReadyLine) {
        if let Some(s) = self.svcs.get_mut(r.idx)
            && s.generation == r.generation
            && s.state == State::Starting
        {
            mark_ready(s, Instant::now());
        }
    }

    /// Advance timers: start what can start, check sockets, restart after backoff,
    /// escalate stops.
    pub fn tick(&mut self, now: Instant) {
        if self.shutting_down {
            self.tick_shutdown(now);
            return;
        }
        for i in 0..self.svcs.len() {
            match self.svcs[i].state {
                State::Backoff if self.svcs[i].deadline.is_some_and(|d| d <= now) => {
                    self.svcs[i].state = State::Waiting;
                }
                State::Stopping => self.escalate(i, now),
                _ => {}
            }
            if self.svcs[i].state == State::Waiting && self.deps_ready(i) {
                self.spawn(i, now);
            }
            let s = &mut self.svcs[i];
            if s.state == State::Starting {
                if let Some(sock) = s.cfg.ready.as_ref().and_then(|r| r.socket.as_ref())
                    && std::path::Path::new(sock).exists()
                {
                    mark_ready(s, now);
                } else if !s.late_reported && s.deadline.is_some_and(|d| d <= now) {
                    s.late_reported = true;
                    crate::info!(
                        "service {} not ready after {} ms",
                        s.cfg.name,
                        s.cfg.ready_timeout().as_millis()
                    );
                }
            }
        }
    }

    fn deps_ready(&self, i: usize) -> bool {
        self.svcs[i].cfg.depends_on.iter().all(|d| {
            self.svcs
                .iter()
                .any(|s| &s.cfg.name == d && s.state == State::Ready)
        })
    }

    fn escalate(&mut self, i: usize, now: Instant) {
        let s = &mut self.svcs[i];
        if s.deadline.is_some_and(|d| d <= now) {
            match (s.pid, s.killed) {
                (Some(pid), false) => {
                    crate::info!("service {} did not stop in time: SIGKILL", s.cfg.name);
                    self.launcher.signal(pid, Signal::SIGKILL);
                    s.killed = true;
                    s.deadline = Some(now + KILL_WAIT);
                }
                _ => {
                    crate::info!("service {}: giving up waiting for it to end", s.cfg.name);
                    s.pid = None;
                    s.state = State::Stopped;
                }
            }
        }
    }

    fn tick_shutdown(&mut self, now: Instant) {
        for i in 0..self.svcs.len() {
            if self.svcs[i].state == State::Stopping {
                self.escalate(i, now);
            }
        }
        if self.svcs.iter().any(|s| s.state == State::Stopping) {
            return;
        }
        // Stop the last running service in start order.
        if let Some(s) = self.svcs.iter_mut().rev().find(|s| s.pid.is_some())
            && let Some(pid) = s.pid
        {
            crate::info!("stopping {} ({pid})", s.cfg.name);
            s.state = State::Stopping;
            s.killed = false;
            s.deadline = Some(now + s.cfg.stop_timeout());
            self.launcher.signal(pid, Signal::SIGTERM);
        }
    }

    fn spawn(&mut self, i: usize, now: Instant) {
        let s = &mut self.svcs[i];
        s.generation += 1;
        s.started = Some(now);
        s.killed = false;
        s.late_reported = false;
        let ready = ReadyLine {
            idx: i,
            generation: s.generation,
        };
        match self.launcher.launch(&s.cfg, Some(ready)) {
            Ok(pid) => {
                crate::info!("started {} ({pid}): {}", s.cfg.name, s.cfg.command);
                s.pid = Some(pid);
                s.deadline = Some(now + s.cfg.ready_timeout());
                s.state = State::Starting;
                if s.cfg.ready.is_none() {
                    mark_ready(s, now);
                }
            }
            Err(e) => {
                crate::info!("starting {} ({}) failed: {e}", s.cfg.name, s.cfg.command);
                s.last_exit = Some(LastExit::CouldNotStart(e.to_string()));
                s.restarts += 1;
                s.state = State::Backoff;
                s.deadline = Some(now + s.backoff);
                s.backoff = s.backoff.saturating_mul(2).min(s.cfg.backoff_max());
            }
        }
    }
}

fn mark_ready(s: &mut Svc, now: Instant) {
    s.state = State::Ready;
    let took = s
        .started
        .map(|t| now.saturating_duration_since(t))
        .unwrap_or_default();
    crate::info!("service {} ready after {} ms", s.cfg.name, took.as_millis());
}

/// Signal a service's process group (it is its leader), or the process alone.
fn signal_group(pid: i32, sig: Signal) {
    if kill(Pid::from_raw(-pid), sig).is_err() {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Copy a service's output into the log line by line; report the readiness line.
fn pump(name: String, fd: OwnedFd, ready: Option<(String, UnboundedSender<ReadyLine>, ReadyLine)>) {
    let rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => {
            crate::info!("service {name}: cannot read its output: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(rx);
        let mut buf = Vec::new();
        let mut ready = ready;
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end();
                    crate::log::write(&name, line);
                    if let Some((text, tx, r)) = &ready
                        && line.contains(text.as_str())
                    {
                        let _ = tx.send(*r);
                        ready = None;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    //! The state machine with a clock and processes of the test's own: `Fake` hands out
    //! pids and records signals; exits are delivered as the reaper would.
    use super::*;
    use crate::services::{self, Placeholders};

    #[derive(Default)]
    struct Fake {
        next_pid: i32,
        launched: Vec<(String, i32)>,
        signals: Vec<(i32, Signal)>,
        /// Names whose program cannot be started.
        broken: Vec<String>,
    }

    impl Launcher for Fake {
        fn launch(&mut self, svc: &Service, _: Option<ReadyLine>) -> std::io::Result<i32> {
            if self.broken.contains(&svc.name) {
                return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
            }
            self.next_pid += 1;
            self.launched.push((svc.name.clone(), 100 + self.next_pid));
            Ok(100 + self.next_pid)
        }
        fn signal(&mut self, pid: i32, sig: Signal) {
            self.signals.push((pid, sig));
        }
    }

    fn supervisor(text: &str) -> Supervisor<Fake> {
        let ph = Placeholders {
            data: "/d".into(),
            run: "/r".into(),
            root: "/".into(),
        };
        Supervisor::with_launcher(services::parse(text, &ph).unwrap(), Fake::default())
    }

    fn state(sup: &Supervisor<Fake>, name: &str) -> State {
        sup.list()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
            .state
    }

    fn pid(sup: &Supervisor<Fake>, name: &str) -> i32 {
        sup.svcs
            .iter()
            .find(|s| s.cfg.name == name)
            .unwrap()
            .pid
            .unwrap()
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_service_starts_only_once_its_dependency_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("a.sock");
        let mut sup = supervisor(&format!(
            "[[service]]\nname = \"b\"\ncommand = \"/b\"\ndepends_on = [\"a\"]\n\
             [[service]]\nname = \"a\"\ncommand = \"/a\"\n[service.ready]\nsocket = \"{}\"\n",
            sock.display()
        ));
        let t0 = Instant::now();
        sup.tick(t0);
        let names: Vec<&str> = sup
            .launcher
            .launched
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["a"]);
        assert_eq!(state(&sup, "a"), State::Starting);
        assert_eq!(state(&sup, "b"), State::Waiting);
        assert!(!sup.all_ready());
        std::fs::write(&sock, b"").unwrap();
        sup.tick(t0 + MS(20));
        assert_eq!(state(&sup, "a"), State::Ready);
        sup.tick(t0 + MS(40));
        assert_eq!(sup.launcher.launched.len(), 2);
        assert!(
            sup.all_ready(),
            "b has no readiness signal: ready once started"
        );
    }

    #[test]
    fn restarts_back_off_doubling_to_the_cap_and_reset_after_a_stable_run() {
        let mut sup = supervisor(
            "[[service]]\nname = \"v\"\ncommand = \"/v\"\nbackoff_initial_ms = 200\n\
             backoff_max_ms = 800\nreset_after_ms = 10000\n",
        );
        let mut now = Instant::now();
        sup.tick(now);
        let mut delays = Vec::new();
        for _ in 0..5 {
            let p = pid(&sup, "v");
            sup.on_exit(p, Exit::Signal(9), now + MS(50));
            assert_eq!(state(&sup, "v"), State::Backoff);
            let deadline = sup.svcs[0].deadline.unwrap();
            let delay = deadline - (now + MS(50));
            // not restarted a moment before the delay is up, restarted when it is
            sup.tick(deadline - MS(1));
            assert_eq!(state(&sup, "v"), State::Backoff);
            sup.tick(deadline);
            assert_eq!(state(&sup, "v"), State::Ready);
            delays.push(delay.as_millis());
            now = deadline;
        }
        assert_eq!(delays, [200, 400, 800, 800, 800]);
        // a run longer than reset_after starts the delays over
        let p = pid(&sup, "v");
        sup.on_exit(p, Exit::Code(1), now + MS(10_000));
        let delay = sup.svcs[0].deadline.unwrap() - (now + MS(10_000));
        assert_eq!(delay, MS(200));
        assert_eq!(sup.list()[0].restarts, 6);
        assert_eq!(sup.list()[0].last_exit.as_deref(), Some("exit code 1"));
    }

    #[test]
    fn restart_policies_decide_from_the_typed_exit() {
        let mut sup = supervisor(
            "[[service]]\nname = \"once\"\ncommand = \"/x\"\nrestart = \"on-failure\"\n\
             [[service]]\nname = \"never\"\ncommand = \"/y\"\nrestart = \"never\"\n",
        );
        let t = Instant::now();
        sup.tick(t);
        sup.on_exit(pid(&sup, "once"), Exit::Code(0), t + MS(5));
        sup.on_exit(pid(&sup, "never"), Exit::Signal(15), t + MS(5));
        assert_eq!(
            state(&sup, "once"),
            State::Stopped,
            "exit 0: done, not restarted"
        );
        assert_eq!(state(&sup, "never"), State::Failed);
        assert!(
            !sup.all_ready(),
            "a service killed by a signal is not ready"
        );
        sup.start("never").unwrap();
        sup.tick(t + MS(10));
        sup.on_exit(pid(&sup, "never"), Exit::Code(0), t + MS(20));
        assert_eq!(state(&sup, "never"), State::Stopped);
        assert!(sup.all_ready(), "both finished with exit code 0");
        assert_eq!(sup.start("nosuch"), Err(NoSuchService("nosuch".into())));
    }

    #[test]
    fn a_program_that_cannot_start_is_retried_with_backoff() {
        let mut sup = supervisor("[[service]]\nname = \"gone\"\ncommand = \"/nonexistent\"\n");
        sup.launcher.broken.push("gone".into());
        let t = Instant::now();
        sup.tick(t);
        assert_eq!(state(&sup, "gone"), State::Backoff);
        let info = &sup.list()[0];
        assert!(
            info.last_exit
                .as_deref()
                .unwrap()
                .starts_with("could not start"),
            "{info:?}"
        );
        assert!(!sup.all_ready());
        sup.launcher.broken.clear();
        sup.tick(t + MS(100));
        assert_eq!(state(&sup, "gone"), State::Ready);
    }

    #[test]
    fn a_stop_sends_sigterm_then_sigkill_after_the_grace_period() {
        let mut sup =
            supervisor("[[service]]\nname = \"s\"\ncommand = \"/s\"\nstop_timeout_ms = 1000\n");
        let t = Instant::now();
        sup.tick(t);
        let p = pid(&sup, "s");
        sup.stop("s", t).unwrap();
        assert_eq!(sup.launcher.signals, [(p, Signal::SIGTERM)]);
        sup.tick(t + MS(999));
        assert_eq!(sup.launcher.signals.len(), 1, "still in its grace period");
        sup.tick(t + MS(1000));
        assert_eq!(sup.launcher.signals[1], (p, Signal::SIGKILL));
        sup.on_exit(p, Exit::Signal(9), t + MS(1001));
        assert_eq!(state(&sup, "s"), State::Stopped);
        sup.tick(t + MS(60_000));
        assert_eq!(
            sup.launcher.launched.len(),
            1,
            "a stopped service stays stopped"
        );
    }

    #[test]
    fn shutdown_stops_services_one_at_a_time_in_reverse_start_order() {
        let mut sup = supervisor(
            "[[service]]\nname = \"web\"\ncommand = \"/w\"\ndepends_on = [\"core\"]\n\
             [[service]]\nname = \"core\"\ncommand = \"/c\"\n",
        );
        let t = Instant::now();
        sup.tick(t);
        sup.tick(t + MS(1));
        let (core, web) = (pid(&sup, "core"), pid(&sup, "web"));
        sup.begin_shutdown();
        sup.tick(t + MS(2));
        assert_eq!(sup.launcher.signals, [(web, Signal::SIGTERM)]);
        sup.tick(t + MS(3));
        assert_eq!(
            sup.launcher.signals.len(),
            1,
            "core waits until web has ended"
        );
        sup.on_exit(web, Exit::Code(0), t + MS(4));
        sup.tick(t + MS(5));
        assert_eq!(sup.launcher.signals[1], (core, Signal::SIGTERM));
        sup.on_exit(core, Exit::Code(0), t + MS(6));
        assert!(sup.shutdown_done());
        sup.tick(t + MS(7));
        assert_eq!(
            sup.launcher.launched.len(),
            2,
            "nothing restarts during a shutdown"
        );
    }
}
