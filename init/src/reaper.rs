//! Reaping children: PID 1 inherits every orphan, so it waits for any child
//! (`waitpid(-1)`) whenever SIGCHLD arrives. Exits of processes that someone is
//! waiting for (helper programs run with [`run`]) go to that waiter; all others go to
//! the supervisor, which ignores pids it does not know (orphans).
//!
//! Spawning and reaping take the same lock, so a child cannot be reaped before its
//! spawner has registered it (and the standard library's own `waitpid` on a failed
//! `exec` never races with ours).

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| s.to_string());
                write!(f, "killed by {name}")
            }
        }
    }
}

struct State {
    waiters: BTreeMap<i32, oneshot::Sender<Exit>>,
    events: Option<mpsc::UnboundedSender<(i32, Exit)>>,
    reaped: u64,
}

static STATE: Mutex<State> = Mutex::new(State {
    waiters: BTreeMap::new(),
    events: None,
    reaped: 0,
});

fn lock() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Send exits of unclaimed children to `events`.
pub fn set_events(events: mpsc::UnboundedSender<(i32, Exit)>) {
    lock().events = Some(events);
}

/// Number of children reaped so far.
pub fn reaped() -> u64 {
    lock().reaped
}

/// Spawn a command under the reaper's lock.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let _guard = lock();
    cmd.spawn()
}

/// Spawn a command whose exit will be delivered to the returned receiver.
pub fn spawn_watched(cmd: &mut Command) -> std::io::Result<(Child, oneshot::Receiver<Exit>)> {
    let mut st = lock();
    let child = cmd.spawn()?;
    let (tx, rx) = oneshot::channel();
    st.waiters.insert(child.id() as i32, tx);
    Ok((child, rx))
}

/// Reap every child that has exited.
pub fn reap_all() {
    let mut st = lock();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => deliver(&mut st, pid.as_raw(), Exit::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                deliver(&mut st, pid.as_raw(), Exit::Signal(sig as i32))
            }
            Ok(WaitStatus::StillAlive) => return,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return, // ECHILD: no children at all
        }
    }
}

fn deliver(st: &mut State, pid: i32, exit: Exit) {
    st.reaped += 1;
    if let Some(tx) = st.waiters.remove(&pid) {
        let _ = tx.send(exit);
    } else if let Some(ev) = &st.events {
        let _ = ev.send((pid, exit));
    }
}

/// Reap on every SIGCHLD (and every second, in case a signal was missed).
pub fn start() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigchld = signal(SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(1), sigchld.recv()).await;
            reap_all();
        }
    });
    Ok(())
}

/// Output of a helper program.
#[derive(Debug)]
pub struct Output {
    pub exit: Exit,
    pub stdout: String,
    pub stderr: String,
}

/// Errors running a helper program.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("starting {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("{0} did not finish within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}: exit status lost")]
    Lost(String),
}

/// Run a helper program to completion (async, with a timeout), capturing its output.
pub async fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, RunError> {
    let name = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, rx) = spawn_watched(cmd).map_err(|e| RunError::Spawn(name.clone(), e))?;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let readers = tokio::task::spawn_blocking(move || (read_all(out), read_all(err)));
    let pid = child.id() as i32;
    let exit = match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(exit)) => exit,
        Ok(Err(_)) => return Err(RunError::Lost(name)),
        Err(_) => {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            return Err(RunError::Timeout(name, timeout));
        }
    };
    let (stdout, stderr) = readers.await.unwrap_or_default();
    Ok(Output {
        exit,
        stdout,
        stderr,
    })
}

/// Run a helper program from a plain thread (the console menu).
pub fn run_blocking(cmd: &mut Command, timeout: Duration) -> Result<Output, RunError> {
    let name = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, mut rx) = spawn_watched(cmd).map_err(|e| RunError::Spawn(name.clone(), e))?;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let readers = std::thread::spawn(move || (read_all(out), read_all(err)));
    let deadline = std::time::Instant::now() + timeout;
    let exit = loop {
        match rx.try_recv() {
            Ok(exit) => break exit,
            Err(oneshot::error::TryRecvError::Closed) => return Err(RunError::Lost(name)),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        if std::time::Instant::now() > deadline {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(RunError::Timeout(name, timeout));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = readers.join().unwrap_or_default();
    Ok(Output {
        exit,
        stdout,
        stderr,
    })
}

fn read_all(r: Option<impl Read>) -> String {
    let mut s = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut s);
    }
    String::from_utf8_lossy(&s).into_owned()
}
