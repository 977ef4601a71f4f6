//! Keeping the proxy's cores awake while it carries traffic.
//!
//! In a virtual machine a core with nothing to run halts, and waking it for the next
//! packet goes through the hypervisor: tens of microseconds each time. A proxied
//! request/response protocol pays that twice per exchange (request in, response back),
//! and DICOM waits for a C-STORE response after every image, so on a fast network the
//! wake-ups, not the copying, are what a proxy adds. Linux's haltpoll idle driver fixes
//! this on KVM only; VMware and Hyper-V guests have nothing of the kind.
//!
//! So while traffic flows, one thread per core spins instead of letting the core halt.
//! The threads run under SCHED_IDLE: the kernel runs them only when the core has
//! nothing else to do, and a worker (or any other task of the appliance) that becomes
//! runnable preempts them at once, so they never delay work; they only keep the core
//! from sleeping. After a whole poll window without any byte relayed they go to sleep
//! until the next one, so an idle appliance spends no CPU on them.
//!
//! Off unless `lbcore --busy-poll-us` sets a window: while traffic is steady the
//! hypervisor sees the appliance's cores fully busy, and the spinning takes physical CPU
//! (or a hyperthread's share of it) that other VMs on the same host could use. Measured
//! on the project's benchmark machine: one-connection HL7 round trips ~10 % faster and
//! DICOM 3-12 % more images/s, but bulk throughput ~6 % lower, because the spinning core
//! shares the host's CPU with the busy peers' core. Worth it on a host of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

/// Set by the relay whenever it moves bytes; cleared by the leading spinner once per
/// window. Read with a relaxed load first, so a busy relay only reads a shared cache line.
static TRAFFIC: AtomicBool = AtomicBool::new(false);
/// Whether the spinners are spinning (true) or asleep until the next traffic.
static AWAKE: AtomicBool = AtomicBool::new(false);
/// Whether `start` ran; without spinners the relay has no one to wake.
static ENABLED: AtomicBool = AtomicBool::new(false);
static LOCK: Mutex<()> = Mutex::new(());
static WAKE: Condvar = Condvar::new();

/// Called by the relay after each transfer. Costs one relaxed load while the spinners
/// are already awake; the first transfer after an idle period wakes them.
#[inline]
pub fn note_traffic() {
    if TRAFFIC.load(Ordering::Relaxed) || !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    TRAFFIC.store(true, Ordering::SeqCst);
    if !AWAKE.load(Ordering::SeqCst) {
        wake_all();
    }
}

fn wake_all() {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    AWAKE.store(true, Ordering::SeqCst);
    WAKE.notify_all();
}

fn sleep_until_awake() {
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let _guard = WAKE
        .wait_while(guard, |_| !AWAKE.load(Ordering::SeqCst))
        .unwrap_or_else(|p| p.into_inner());
}

/// Starts one spinner per core this process may run on, each bound to its core.
/// `window` is how long they keep spinning after the last byte relayed; zero starts
/// nothing. Failing to start is logged, never fatal: the proxy works without them.
pub fn start(window: Duration) {
    if window.is_zero() || ENABLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let cores = match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect::<Vec<_>>(),
        Err(e) => {
            warn!("busy polling off: cannot read this process's cores: {e}");
            ENABLED.store(false, Ordering::SeqCst);
            return;
        }
    };
    let mut started = 0;
    for (i, &core) in cores.iter().enumerate() {
        let leader = i == 0;
        let spawned = std::thread::Builder::new()
            .name(format!("busy-poll-{core}"))
            .spawn(move || spin(core, leader, window));
        match spawned {
            Ok(_) => started += 1,
            Err(e) => warn!("cannot start the busy-poll thread for core {core}: {e}"),
        }
        // Without the leader nobody ends a window; the others would spin for ever.
        if leader && started == 0 {
            ENABLED.store(false, Ordering::SeqCst);
            return;
        }
    }
    info!(
        "busy polling on {started} core(s) while traffic flows (window {} µs)",
        window.as_micros()
    );
}

fn spin(core: usize, leader: bool, window: Duration) {
    if let Err(e) = bind_to_core(core) {
        debug!("busy-poll thread for core {core} not bound: {e}");
    }
    if let Err(e) = idle_priority() {
        // At normal priority a spinner would take CPU time from real work.
        warn!("busy polling off on core {core}: cannot lower its priority: {e}");
        return;
    }
    loop {
        sleep_until_awake();
        if leader {
            let started = Instant::now();
            while started.elapsed() < window {
                std::hint::spin_loop();
            }
            if TRAFFIC.swap(false, Ordering::SeqCst) {
                continue;
            }
            AWAKE.store(false, Ordering::SeqCst);
            // Traffic noted between the swap and the store saw AWAKE still true and
            // woke no one: look again now that sleeping is announced.
            if TRAFFIC.load(Ordering::SeqCst) {
                wake_all();
            }
        } else {
            while AWAKE.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        }
    }
}

fn bind_to_core(core: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

/// SCHED_IDLE for the calling thread: runs only when its core would otherwise be idle.
fn idle_priority() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is the
    // calling thread, and the call changes nothing but its scheduling policy.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The scheduling policy of each of this process's busy-poll threads.
    fn spinner_policies() -> Vec<i32> {
        let mut out = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
            let (head, rest) = stat.rsplit_once(')').unwrap();
            if head.contains("(busy-poll-") {
                // Field 41 of stat is the policy; `rest` starts at field 3.
                out.push(rest.split_whitespace().nth(38).unwrap().parse().unwrap());
            }
        }
        out
    }

    #[test]
    fn spins_at_idle_priority_only_while_traffic_flows() {
        start(Duration::from_millis(5));
        // Each thread lowers its own priority first thing.
        wait_for("every spinner to run under SCHED_IDLE", || {
            let policies = spinner_policies();
            !policies.is_empty() && policies.iter().all(|&p| p == libc::SCHED_IDLE)
        });
        note_traffic();
        assert!(AWAKE.load(Ordering::SeqCst), "traffic wakes the spinners");
        // Other tests in this process relay bytes too, but not for long.
        wait_for("the spinners to sleep after a quiet window", || {
            !AWAKE.load(Ordering::SeqCst)
        });
        note_traffic();
        assert!(AWAKE.load(Ordering::SeqCst), "and wakes them again");
        wait_for("the spinners to sleep again", || {
            !AWAKE.load(Ordering::SeqCst)
        });
    }
}
