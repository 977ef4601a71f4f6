//! The end of the system: after the supervisor has stopped the services, every
//! other process gets SIGTERM then SIGKILL, file systems are synced, /data is
//! unmounted, and the kernel is asked to power off or restart. Also the
//! `poweroff`/`reboot` commands, which ask the running init to do all that.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What happens at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PowerOff,
    Reboot,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::PowerOff => "power off",
            Action::Reboot => "reboot",
        }
    }
}

/// Signal every process but ourselves (only when we are PID 1), then reap them.
pub async fn kill_the_rest(grace: Duration) {
    if std::process::id() != 1 {
        return;
    }
    let all = Pid::from_raw(-1);
    if kill(all, Signal::SIGTERM).is_err() {
        return; // ESRCH: nobody left
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        crate::reaper::reap_all();
        if !has_children() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = kill(all, Signal::SIGKILL);
    tokio::time::sleep(Duration::from_millis(50)).await;
    crate::reaper::reap_all();
}

fn has_children() -> bool {
    // With no children left, waitid(P_ALL) fails with ECHILD.
    let flags = nix::sys::wait::WaitPidFlag::WNOHANG
        | nix::sys::wait::WaitPidFlag::WEXITED
        | nix::sys::wait::WaitPidFlag::WNOWAIT;
    nix::sys::wait::waitid(nix::sys::wait::Id::All, flags).is_ok()
}

/// Sync, unmount /data (when we mounted it), then power off, reboot or exit.
pub fn finish(action: Action, data_mount: Option<PathBuf>, exit_instead: bool) {
    crate::info!("{}: syncing", action.as_str());
    nix::unistd::sync();
    crate::log::close_file();
    if let Some(m) = data_mount {
        unmount(&m);
    }
    nix::unistd::sync();
    if exit_instead {
        crate::info!("exiting (--exit-on-shutdown)");
        std::process::exit(0);
    }
    let mode = match action {
        Action::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        Action::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
    };
    let Err(e) = nix::sys::reboot::reboot(mode);
    crate::info!("reboot(2) failed: {e}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn unmount(m: &Path) {
    for _ in 0..10 {
        match nix::mount::umount(m) {
            Ok(()) => return,
            Err(nix::errno::Errno::EBUSY) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                crate::info!("unmounting {}: {e}", m.display());
                break;
            }
        }
    }
    if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
        crate::info!("detaching {}: {e}", m.display());
    } else {
        // Make sure what is left is on the disk.
        let _ = nix::mount::mount(
            None::<&str>,
            m,
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        );
    }
}

/// The `poweroff` and `reboot` commands: ask init over its control socket, else
/// signal PID 1 (SIGUSR2 = power off, SIGUSR1 = reboot).
pub fn command(action: Action, control: &Path) -> i32 {
    let verb = match action {
        Action::PowerOff => "poweroff",
        Action::Reboot => "reboot",
    };
    if let Ok(v) = crate::control::request(control, verb)
        && v["ok"] == true
    {
        return 0;
    }
    let sig = match action {
        Action::PowerOff => Signal::SIGUSR2,
        Action::Reboot => Signal::SIGUSR1,
    };
    match kill(Pid::from_raw(1), sig) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{verb}: cannot reach init: {e}");
            1
        }
    }
}
