//! The supervisor: starts the services of the services file in dependency order,
//! captures their stdout/stderr line by line into the log, watches readiness
//! (a socket path to appear or a line on stdout), restarts them after they exit
//! with exponential backoff up to a cap, and stops them in reverse dependency order
//! (SIGTERM, then SIGKILL after the grace period) at shutdown.
//!
//! It is a plain state machine driven by the main loop: exits from the reaper,
//! readiness lines from the output pumps, control requests, and [`Supervisor::tick`]
//! at [`Supervisor::next_wakeup`].

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
    last_exit: Option<String>,
    late_reported: bool,
    restart_requested: bool,
    killed: bool,
}

/// The services and their states.
pub struct Supervisor {
    svcs: Vec<Svc>,
    ready_tx: UnboundedSender<ReadyLine>,
    shutting_down: bool,
}

impl Supervisor {
    /// Services must be in start order (see [`crate::services::order`]).
    pub fn new(services: Vec<Service>, ready_tx: UnboundedSender<ReadyLine>) -> Self {
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
            ready_tx,
            shutting_down: false,
        }
    }

    /// Every service is ready (or has finished successfully and is not restarted).
    pub fn all_ready(&self) -> bool {
        self.svcs.iter().all(|s| {
            s.state == State::Ready
                || (s.state == State::Stopped && s.last_exit.as_deref() == Some("exit code 0"))
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
                last_exit: s.last_exit.clone(),
                uptime_s: s.pid.and(s.started).map(|t| (now - t).as_secs_f64()),
            })
            .collect()
    }

    /// Restart a service now (no backoff).
    pub fn restart(&mut self, name: &str, now: Instant) -> Result<(), String> {
        let i = self.find(name)?;
        let s = &mut self.svcs[i];
        s.backoff = s.cfg.backoff_initial();
        match s.pid {
            Some(pid) if s.state != State::Stopping => {
                s.restart_requested = true;
                s.state = State::Stopping;
                s.deadline = Some(now + s.cfg.stop_timeout());
                signal_group(pid, Signal::SIGTERM);
            }
            Some(_) => s.restart_requested = true,
            None => s.state = State::Waiting,
        }
        Ok(())
    }

    /// Stop a service and keep it stopped.
    pub fn stop(&mut self, name: &str, now: Instant) -> Result<(), String> {
        let i = self.find(name)?;
        let s = &mut self.svcs[i];
        s.restart_requested = false;
        match s.pid {
            Some(pid) => {
                s.state = State::Stopping;
                s.deadline = Some(now + s.cfg.stop_timeout());
                signal_group(pid, Signal::SIGTERM);
            }
            None => s.state = State::Stopped,
        }
        Ok(())
    }

    /// Start a stopped or failed service.
    pub fn start(&mut self, name: &str) -> Result<(), String> {
        let i = self.find(name)?;
        let s = &mut self.svcs[i];
        if s.pid.is_none() {
            s.state = State::Waiting;
            s.backoff = s.cfg.backoff_initial();
        }
        Ok(())
    }

    fn find(&self, name: &str) -> Result<usize, String> {
        self.svcs
            .iter()
            .position(|s| s.cfg.name == name)
            .ok_or_else(|| format!("no service named {name:?}"))
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

    /// When [`tick`](Self::tick) should run next.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let now = Instant::now();
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
        s.last_exit = Some(exit.to_string());
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
            mark_ready(s);
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
                    mark_ready(s);
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
                    signal_group(pid, Signal::SIGKILL);
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
            signal_group(pid, Signal::SIGTERM);
        }
    }

    fn spawn(&mut self, i: usize, now: Instant) {
        let s = &mut self.svcs[i];
        let mut cmd = Command::new(&s.cfg.command);
        cmd.args(&s.cfg.args)
            .envs(&s.cfg.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir("/")
            .process_group(0);
        if std::env::var_os("PATH").is_none() {
            cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        }
        s.generation += 1;
        s.started = Some(now);
        s.killed = false;
        s.late_reported = false;
        match reaper::spawn(&mut cmd) {
            Ok(mut child) => {
                let pid = child.id() as i32;
                crate::info!("started {} ({pid}): {}", s.cfg.name, s.cfg.command);
                s.pid = Some(pid);
                s.deadline = Some(now + s.cfg.ready_timeout());
                let line = s.cfg.ready.as_ref().and_then(|r| r.line.clone());
                let ready = line.map(|l| {
                    (
                        l,
                        self.ready_tx.clone(),
                        ReadyLine {
                            idx: i,
                            generation: s.generation,
                        },
                    )
                });
                if let Some(out) = child.stdout.take() {
                    pump(s.cfg.name.clone(), out.into(), ready);
                }
                if let Some(err) = child.stderr.take() {
                    pump(s.cfg.name.clone(), err.into(), None);
                }
                s.state = State::Starting;
                if s.cfg.ready.is_none() {
                    mark_ready(s);
                }
            }
            Err(e) => {
                crate::info!("starting {} ({}) failed: {e}", s.cfg.name, s.cfg.command);
                s.last_exit = Some(format!("could not start: {e}"));
                s.restarts += 1;
                s.state = State::Backoff;
                s.deadline = Some(now + s.backoff);
                s.backoff = s.backoff.saturating_mul(2).min(s.cfg.backoff_max());
            }
        }
    }
}

fn mark_ready(s: &mut Svc) {
    s.state = State::Ready;
    let took = s.started.map(|t| t.elapsed()).unwrap_or_default();
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
