//! External-script check, ldirectord style: `path VIP VPORT RIP RPORT`, exit status 0 = up.
//!
//! For anything the built-in probes cannot express. The script runs with stdin closed and
//! its output captured (the first line goes into the failure message, since that is where
//! scripts say what is wrong). It gets its own process group so that at the timeout the
//! script *and everything it started* (a `sleep`, a `curl` in a shell script) are killed:
//! killing only the shell would leave its children running and holding our pipes.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use super::{Deadline, ProbeError, Target};

/// Output kept per stream; only the first line is reported, the rest is drained and dropped
/// so that a talkative script never blocks on a full pipe.
const OUTPUT_KEPT: usize = 4096;

/// Longest first line quoted in a failure message.
const LINE_SHOWN: usize = 200;

/// After the script exits, how long its output may take to reach EOF (a background child
/// of the script may hold the pipe open forever).
const OUTPUT_GRACE: Duration = Duration::from_millis(100);

pub(super) async fn probe(
    path: &Path,
    target: &Target,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let deadline = Deadline::after(timeout);
    let mut command = Command::new(path);
    command
        .arg(target.service.ip().to_string())
        .arg(target.service.port().to_string())
        .arg(target.server.ip().to_string())
        .arg(target.server.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // If the probe future is dropped (scheduler shutdown), the child goes with it; the
        // group guard below takes the rest of its process group.
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| ProbeError::ScriptSpawn {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut group = GroupGuard::new(&child);
    let stdout = capture(child.stdout.take());
    let stderr = capture(child.stderr.take());

    let status = match tokio::time::timeout_at(deadline.instant(), child.wait()).await {
        Ok(Ok(status)) => {
            // Reaped: from here the group ID may be reused, so never signal it again.
            group.disarm();
            status
        }
        Ok(Err(e)) => {
            group.kill();
            reap(&mut child).await;
            return Err(ProbeError::Io {
                stage: "waiting for the script",
                reason: e.to_string(),
            });
        }
        Err(_) => {
            group.kill();
            reap(&mut child).await;
            return Err(ProbeError::ScriptKilled {
                after: deadline.budget(),
            });
        }
    };
    if status.success() {
        return Ok(());
    }
    let output = first_line(stderr, stdout).await;
    Err(failure(status, output))
}

fn failure(status: ExitStatus, output: Option<String>) -> ProbeError {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ProbeError::ScriptExit { code, output },
        (None, Some(signal)) => ProbeError::ScriptSignal { signal, output },
        // Neither exit code nor signal does not happen on Unix for a waited-for child.
        (None, None) => ProbeError::ScriptExit { code: -1, output },
    }
}

/// Kills and reaps the direct child, within a bound: SIGKILL cannot be ignored, so this
/// returns at once in practice.
async fn reap(child: &mut Child) {
    let _ = tokio::time::timeout(Duration::from_millis(500), child.kill()).await;
}

/// SIGKILL for the script's whole process group, while its leader has not been reaped.
struct GroupGuard {
    pgid: Option<libc::pid_t>,
}

impl GroupGuard {
    fn new(child: &Child) -> Self {
        GroupGuard {
            pgid: child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()),
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: kill(2) has no memory-safety preconditions. The group was created by
            // `process_group(0)` for this child and its leader is not reaped yet, so the ID
            // cannot name anyone else's group.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one output stream has said so far; stops reading when dropped.
struct Captured {
    bytes: Arc<Mutex<Vec<u8>>>,
    done: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Captured {
    fn drop(&mut self) {
        // A background child of the script may keep the pipe open long after the script
        // exited; the reader must not outlive the probe.
        self.task.abort();
    }
}

/// Drains a pipe in the background, keeping its first [`OUTPUT_KEPT`] bytes.
fn capture(pipe: Option<impl AsyncRead + Unpin + Send + 'static>) -> Captured {
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let (tx, done) = tokio::sync::watch::channel(false);
    let sink = bytes.clone();
    let task = tokio::spawn(async move {
        if let Some(mut pipe) = pipe {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut kept) = sink.lock() {
                    let room = OUTPUT_KEPT.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
        let _ = tx.send(true);
    });
    Captured { bytes, done, task }
}

impl Captured {
    /// Waits a little for EOF, then returns the first non-empty line and stops reading.
    async fn first_line(mut self) -> Option<String> {
        let _ = tokio::time::timeout(OUTPUT_GRACE, self.done.wait_for(|done| *done)).await;
        let bytes = self.bytes.lock().ok()?.clone();
        let text = String::from_utf8_lossy(&bytes);
        let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
        Some(line.chars().take(LINE_SHOWN).collect())
    }
}

/// The first line of stderr, where scripts put their complaints, else of stdout.
async fn first_line(stderr: Captured, stdout: Captured) -> Option<String> {
    let (err, out) = tokio::join!(stderr.first_line(), stdout.first_line());
    err.or(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::time::Instant;

    use super::*;
    use crate::config::Probe;
    use crate::health::testutil::SLACK;
    use tempfile::TempDir;

    fn target() -> Target {
        Target {
            service: "127.0.0.1:104".parse().unwrap(),
            server: "127.0.0.2:11112".parse().unwrap(),
        }
    }

    fn write_script(dir: &TempDir, name: &str, body: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Runs the probe; retries while exec says "text file busy", which happens when another
    /// test thread forks while this one still has the fresh script open for writing.
    async fn run(path: &Path, timeout: Duration) -> Result<(), ProbeError> {
        let probe = Probe::Script {
            path: path.to_path_buf(),
        };
        for _ in 0..20 {
            match crate::health::probe(&probe, &target(), timeout).await {
                Err(ProbeError::ScriptSpawn { reason, .. }) if reason.contains("busy") => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
        panic!("{} stayed busy", path.display());
    }

    fn alive(pid: i32) -> bool {
        // A zombie has already died; only its parent has not collected it yet.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn exit_0_is_up_and_gets_ldirectord_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let args = dir.path().join("args");
        let script = write_script(
            &dir,
            "ok.sh",
            &format!("echo \"$@\" > {}\nexit 0", args.display()),
        );
        assert_eq!(run(&script, Duration::from_secs(5)).await, Ok(()));
        assert_eq!(
            std::fs::read_to_string(&args).unwrap(),
            "127.0.0.1 104 127.0.0.2 11112\n"
        );
    }

    #[tokio::test]
    async fn exit_1_is_down_with_the_first_line_of_output() {
        let dir = tempfile::tempdir().unwrap();
        let script = write_script(
            &dir,
            "fail.sh",
            "echo 'checking'\necho 'disk full' >&2\necho 'more' >&2\nexit 1",
        );
        let result = run(&script, Duration::from_secs(5)).await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "script exited with status 1: disk full"
        );
        let quiet = write_script(&dir, "quiet.sh", "exit 1");
        let result = run(&quiet, Duration::from_secs(5)).await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "script exited with status 1"
        );
    }

    #[tokio::test]
    async fn sleeping_script_is_killed_at_the_timeout_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = write_script(
            &dir,
            "sleep.sh",
            &format!("sleep 30 &\necho $$ $! > {}\nwait", pids.display()),
        );
        let timeout = Duration::from_millis(800);
        let start = Instant::now();
        let result = run(&script, timeout).await;
        let elapsed = start.elapsed();
        assert_eq!(result.unwrap_err().to_string(), "script killed after 800ms");
        assert!(elapsed < timeout + SLACK, "took {elapsed:?}");
        let text = std::fs::read_to_string(&pids).unwrap();
        let ids: Vec<i32> = text
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(ids.len(), 2, "{text}");
        // The shell is reaped by the probe; its orphaned `sleep` is killed with the group
        // (whoever reaps orphans here may take a moment to do so).
        for _ in 0..50 {
            if ids.iter().all(|pid| !alive(*pid)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in ids {
            assert!(!alive(pid), "process {pid} survived the timeout");
        }
    }

    #[tokio::test]
    async fn missing_script_cannot_run() {
        let result = run(
            Path::new("/nonexistent/lbcore-check"),
            Duration::from_secs(1),
        )
        .await;
        let error = result.unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot run script /nonexistent/lbcore-check: "),
            "{error}"
        );
    }
}
