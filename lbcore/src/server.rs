//! The live state of one real server: health from checks, the operator's state, and
//! connection counters. Shared between the proxy, the health monitor and the control
//! socket; the hot path reads only atomics.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::config::RealServer;

pub use appliance::files::operator_state::AdminState;
pub use lbcore_control::status::Health;

/// The atomic form of an [`AdminState`].
fn admin_from_u8(v: u8) -> AdminState {
    match v {
        1 => AdminState::Drain,
        2 => AdminState::Halt,
        _ => AdminState::Online,
    }
}

fn admin_as_u8(state: AdminState) -> u8 {
    match state {
        AdminState::Online => 0,
        AdminState::Drain => 1,
        AdminState::Halt => 2,
    }
}

/// Health as the monitor tracks it, with the streaks that rise and fall count.
#[derive(Debug, Clone)]
pub struct HealthRecord {
    pub health: Health,
    pub successes: u32,
    pub failures: u32,
    /// Why the last check failed, or `None` after a success.
    pub last_failure: Option<String>,
    pub since: SystemTime,
}

pub struct Server {
    pub label: String,
    pub address: IpAddr,
    /// `None`: the port the client connected to.
    pub port: Option<u16>,
    weight: AtomicU32,
    max_connections: AtomicU32,
    min_connections: AtomicU32,
    health_fast: AtomicU8,
    health: Mutex<HealthRecord>,
    admin: AtomicU8,
    active: AtomicU32,
    total: AtomicU64,
    /// Bumped on Halt: every connection to this server watches it and closes.
    halt: watch::Sender<u64>,
}

impl Server {
    pub fn new(cfg: &RealServer) -> Server {
        Server {
            label: cfg.label.clone(),
            address: cfg.address,
            port: cfg.port,
            weight: AtomicU32::new(cfg.weight),
            max_connections: AtomicU32::new(cfg.max_connections),
            min_connections: AtomicU32::new(cfg.min_connections),
            health_fast: AtomicU8::new(Health::Unknown as u8),
            health: Mutex::new(HealthRecord {
                health: Health::Unknown,
                successes: 0,
                failures: 0,
                last_failure: None,
                since: SystemTime::now(),
            }),
            admin: AtomicU8::new(admin_as_u8(AdminState::Online)),
            active: AtomicU32::new(0),
            total: AtomicU64::new(0),
            halt: watch::Sender::new(0),
        }
    }

    /// Whether `cfg` describes this same server (so its state carries over a reload).
    pub fn is_same(&self, cfg: &RealServer) -> bool {
        self.label == cfg.label && self.address == cfg.address && self.port == cfg.port
    }

    /// Takes the tunable settings of `cfg` (weight, limits) without touching state.
    pub fn update(&self, cfg: &RealServer) {
        self.weight.store(cfg.weight, Ordering::Relaxed);
        self.max_connections
            .store(cfg.max_connections, Ordering::Relaxed);
        self.min_connections
            .store(cfg.min_connections, Ordering::Relaxed);
    }

    pub fn socket_addr(&self, service_port: u16) -> SocketAddr {
        SocketAddr::new(self.address, self.port.unwrap_or(service_port))
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn max_connections(&self) -> u32 {
        self.max_connections.load(Ordering::Relaxed)
    }

    pub fn min_connections(&self) -> u32 {
        self.min_connections.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> Health {
        match self.health_fast.load(Ordering::Relaxed) {
            x if x == Health::Up as u8 => Health::Up,
            x if x == Health::Down as u8 => Health::Down,
            _ => Health::Unknown,
        }
    }

    pub fn health_record(&self) -> HealthRecord {
        self.lock_health().clone()
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, HealthRecord> {
        // A panic elsewhere while holding this lock cannot leave the record invalid
        // (every write is a plain field store), so a poisoned lock is still usable.
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one check: passed (`failure` is `None`) or failed for the reason given;
    /// returns the new health when it changed.
    pub fn record_check(&self, failure: Option<String>, rise: u32, fall: u32) -> Option<Health> {
        let mut h = self.lock_health();
        let before = h.health;
        match failure {
            None => {
                h.successes = h.successes.saturating_add(1);
                h.failures = 0;
                h.last_failure = None;
                if before == Health::Unknown || (before == Health::Down && h.successes >= rise) {
                    h.health = Health::Up;
                }
            }
            Some(reason) => {
                h.failures = h.failures.saturating_add(1);
                h.successes = 0;
                h.last_failure = Some(reason);
                if before == Health::Unknown || (before == Health::Up && h.failures >= fall) {
                    h.health = Health::Down;
                }
            }
        }
        if h.health == before {
            return None;
        }
        h.since = SystemTime::now();
        self.health_fast.store(h.health as u8, Ordering::Relaxed);
        Some(h.health)
    }

    /// Marks the server up without a check (check kind "none").
    pub fn force_up(&self) -> bool {
        self.record_check(None, 1, 1).is_some()
    }

    pub fn admin(&self) -> AdminState {
        admin_from_u8(self.admin.load(Ordering::Relaxed))
    }

    /// Sets the operator state; Halt also closes the established connections.
    pub fn set_admin(&self, state: AdminState) -> AdminState {
        let before = admin_from_u8(self.admin.swap(admin_as_u8(state), Ordering::Relaxed));
        if state == AdminState::Halt {
            self.halt.send_modify(|g| *g += 1);
        }
        before
    }

    /// Healthy (or not yet checked) and online with a non-zero weight.
    pub fn takes_new_connections(&self) -> bool {
        self.health() != Health::Down && self.admin() == AdminState::Online && self.weight() > 0
    }

    pub fn has_capacity(&self) -> bool {
        let max = self.max_connections();
        max == 0 || self.active() < max
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts a new connection; the returned guard un-counts it when dropped.
    pub fn open_connection(self: &std::sync::Arc<Self>) -> ConnectionGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            server: self.clone(),
            released: false,
        }
    }

    /// Resolves when the operator halts this server.
    pub fn halt_signal(&self) -> watch::Receiver<u64> {
        self.halt.subscribe()
    }
}

/// One counted connection to a server.
pub struct ConnectionGuard {
    server: std::sync::Arc<Server>,
    released: bool,
}

impl ConnectionGuard {
    pub fn server(&self) -> &std::sync::Arc<Server> {
        &self.server
    }

    /// Un-counts the connection now rather than at drop; idempotent.
    pub fn release(&mut self) {
        if !std::mem::replace(&mut self.released, true) {
            self.server.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn server() -> Server {
        Server::new(&RealServer {
            label: "DS1".into(),
            address: "10.0.0.1".parse().unwrap(),
            port: None,
            weight: 100,
            max_connections: 2,
            min_connections: 0,
        })
    }

    #[test]
    fn first_result_decides_then_rise_and_fall_count() {
        let s = server();
        assert_eq!(s.health(), Health::Unknown);
        assert!(s.takes_new_connections());
        assert_eq!(
            s.record_check(Some("refused".into()), 2, 3),
            Some(Health::Down)
        );
        assert_eq!(s.record_check(None, 2, 3), None);
        assert_eq!(s.record_check(None, 2, 3), Some(Health::Up));
        assert_eq!(s.record_check(Some("a".into()), 2, 3), None);
        assert_eq!(s.record_check(Some("b".into()), 2, 3), None);
        assert_eq!(
            s.record_check(None, 2, 3),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(s.record_check(Some("a".into()), 2, 3), None);
        assert_eq!(s.record_check(Some("b".into()), 2, 3), None);
        assert_eq!(s.record_check(Some("c".into()), 2, 3), Some(Health::Down));
        assert_eq!(s.health_record().last_failure.as_deref(), Some("c"));
        assert!(!s.takes_new_connections());
    }

    #[test]
    fn admin_states_and_capacity() {
        let s = Arc::new(server());
        let halted = s.halt_signal();
        s.set_admin(AdminState::Drain);
        assert!(!s.takes_new_connections());
        let a = s.open_connection();
        let b = s.open_connection();
        assert!(!s.has_capacity());
        drop(a);
        assert!(s.has_capacity());
        assert_eq!((s.active(), s.total()), (1, 2));
        drop(b);
        assert!(!halted.has_changed().unwrap());
        s.set_admin(AdminState::Halt);
        assert!(halted.has_changed().unwrap());
        s.set_admin(AdminState::Online);
        assert!(s.takes_new_connections());
    }
}
