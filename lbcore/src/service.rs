//! A virtual service at run time: its settings, its real servers with their live state,
//! and the decision of where a new connection goes (scheduler, persistence, connection
//! limits, fallback). Reloads swap settings and servers in place, so connections that
//! are already established keep running untouched.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tracing::{info, warn};

use crate::config;
use crate::persistence::PersistenceTable;
use crate::scheduler::Scheduler;
use crate::server::{ConnectionGuard, Server};

struct Selection {
    scheduler: Scheduler,
    persistence: Option<PersistenceTable>,
    /// Bumped whenever the persistence table is replaced, so that a connection counted
    /// in an old table is not un-counted from the new one.
    generation: u64,
    /// Indices (into the server list) of the servers a choice may pick from; kept
    /// between choices so that choosing allocates nothing.
    candidates: Vec<usize>,
}

pub struct ServiceRuntime {
    pub label: String,
    settings: RwLock<Arc<config::Service>>,
    servers: RwLock<Arc<Vec<Arc<Server>>>>,
    selection: Mutex<Selection>,
    active: AtomicU32,
    total: AtomicU64,
    fallback_active: AtomicU32,
    fallback_total: AtomicU64,
    /// Whether new connections currently go to the fallback server (for logging the
    /// change once rather than per connection).
    fallback_in_use: AtomicBool,
    refused: AtomicU64,
    refusal_log: Mutex<RefusalLog>,
    queued: AtomicU32,
    /// Signalled whenever a connection to a real server ends, for queued clients.
    slot_freed: Notify,
}

/// How often refusals are logged per service; the ones in between are counted.
pub const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// Where a new connection goes.
pub enum Choice {
    /// A real server; the lease counts the connection until dropped.
    Server(Lease),
    /// No real server is up: the fallback server.
    Fallback(config::Endpoint, FallbackLease),
    /// Servers are up but all at `max_connections`: wait for a slot.
    Full,
    /// Nothing can take the connection (no server up and no fallback, or every
    /// server that could was already tried).
    Unavailable,
}

impl ServiceRuntime {
    pub fn new(settings: &config::Service, servers: Vec<Arc<Server>>) -> Arc<ServiceRuntime> {
        Arc::new(ServiceRuntime {
            label: settings.label.clone(),
            selection: Mutex::new(Selection {
                scheduler: Scheduler::new(settings.scheduler),
                persistence: settings
                    .persistence
                    .as_ref()
                    .map(|p| PersistenceTable::new(p.timeout)),
                generation: 0,
                candidates: Vec::new(),
            }),
            settings: RwLock::new(Arc::new(settings.clone())),
            servers: RwLock::new(Arc::new(servers)),
            active: AtomicU32::new(0),
            total: AtomicU64::new(0),
            fallback_active: AtomicU32::new(0),
            fallback_total: AtomicU64::new(0),
            fallback_in_use: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            refusal_log: Mutex::new(RefusalLog::default()),
            queued: AtomicU32::new(0),
            slot_freed: Notify::new(),
        })
    }

    pub fn settings(&self) -> Arc<config::Service> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn servers(&self) -> Arc<Vec<Arc<Server>>> {
        self.servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn server(&self, label: &str) -> Option<Arc<Server>> {
        self.servers().iter().find(|s| s.label == label).cloned()
    }

    fn selection(&self) -> MutexGuard<'_, Selection> {
        // Selection state is advisory (credits, timestamps): still fine after a panic.
        self.selection.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes new settings and the new list of servers (servers that stayed keep their
    /// `Arc`, and so their state and connections).
    pub fn update(&self, settings: &config::Service, servers: Vec<Arc<Server>>) {
        {
            let mut sel = self.selection();
            if sel.scheduler.kind() != settings.scheduler {
                sel.scheduler = Scheduler::new(settings.scheduler);
            }
            let labels: Vec<&str> = servers.iter().map(|s| s.label.as_str()).collect();
            sel.scheduler.retain(&labels);
            match (sel.persistence.as_mut(), &settings.persistence) {
                (Some(table), Some(p)) => table.set_timeout(p.timeout),
                (_, p) => {
                    sel.persistence = p.as_ref().map(|p| PersistenceTable::new(p.timeout));
                    sel.generation += 1;
                }
            }
        }
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings.clone());
        *self.servers.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(servers);
        // Weights or limits may have grown: let queued clients look again.
        self.slot_freed.notify_waiters();
    }

    /// Decides where a new connection from `client` goes, skipping servers in `tried`.
    pub fn choose(self: &Arc<Self>, client: IpAddr, tried: &[Arc<Server>]) -> Choice {
        let client = client.to_canonical();
        let servers = self.servers();
        let now = Instant::now();
        let mut guard = self.selection();
        let sel = &mut *guard;

        // One pass: is any server open, is any open one untried, and which of those
        // have a free slot.
        let mut any_open = false;
        let mut any_untried = false;
        sel.candidates.clear();
        for (i, s) in servers.iter().enumerate() {
            if !s.takes_new_connections() {
                continue;
            }
            any_open = true;
            if tried.iter().any(|t| Arc::ptr_eq(t, s)) {
                continue;
            }
            any_untried = true;
            if s.has_capacity() {
                sel.candidates.push(i);
            }
        }
        if !any_untried {
            // No real server can take the connection: none is up and online, or every
            // one that is has just failed to connect (checks have not caught up yet).
            drop(guard);
            return self.fallback(!any_open);
        }
        if sel.candidates.is_empty() {
            return Choice::Full;
        }
        let candidates = sel.candidates.iter().map(|&i| &servers[i]);

        let sticky = sel
            .persistence
            .as_mut()
            .and_then(|p| p.lookup(client, now))
            .and_then(|label| candidates.clone().find(|s| s.label == label));
        let chosen = match sticky {
            Some(s) => s,
            None => match sel.scheduler.pick(candidates) {
                Some(s) => s,
                None => return Choice::Unavailable,
            },
        };
        let generation = sel.generation;
        let persistent = match sel.persistence.as_mut() {
            Some(p) => {
                p.connect(client, &chosen.label, now);
                Some((client, generation))
            }
            None => None,
        };
        // Counted while the selection lock is held, so that concurrent choices see it
        // and max_connections is never overshot.
        let counted = chosen.open_connection();
        drop(guard);
        Choice::Server(Lease {
            guard: counted,
            service: self.clone(),
            persistent,
        })
    }

    fn fallback(self: &Arc<Self>, none_open: bool) -> Choice {
        let Some(fb) = self.settings().fallback else {
            return Choice::Unavailable;
        };
        if !self.fallback_in_use.swap(true, Ordering::Relaxed) {
            let why = if none_open {
                "no real server is up and online"
            } else {
                "every available real server failed to connect"
            };
            warn!(service = %self.label, fallback = %fb.address, "{why}: new connections go to the fallback server");
        }
        self.fallback_active.fetch_add(1, Ordering::Relaxed);
        self.fallback_total.fetch_add(1, Ordering::Relaxed);
        Choice::Fallback(
            fb,
            FallbackLease {
                service: self.clone(),
            },
        )
    }

    /// A real server took a connection: if the fallback was in use, it no longer is.
    pub fn real_server_connected(&self) {
        if self.fallback_in_use.swap(false, Ordering::Relaxed) {
            info!(service = %self.label, "a real server is available again: new connections go to it, not to the fallback server");
        }
    }

    /// A wake-up for when a slot may have been freed. Create it before
    /// [`ServiceRuntime::choose`] can return `Full`, so that a slot freed in between is
    /// not missed (slots are announced with `Notify::notify_waiters`, which reaches every
    /// `Notified` created before the call, polled or not).
    pub fn slot_notified(&self) -> Notified<'_> {
        self.slot_freed.notified()
    }

    /// Registers a client waiting for a free slot; `None` when the queue is full.
    pub fn enqueue(self: &Arc<Self>) -> Option<QueueTicket> {
        let limit = self.settings().proxy().map_or(0, |p| p.queue_size);
        let mut current = self.queued.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return None;
            }
            match self.queued.compare_exchange(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(QueueTicket {
                        service: self.clone(),
                    });
                }
                Err(now) => current = now,
            }
        }
    }

    /// Counts a client connection for the service as a whole.
    pub fn client_connected(self: &Arc<Self>) -> ClientGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        ClientGuard {
            service: self.clone(),
        }
    }

    /// Counts a refused client and logs why, at most once per [`REFUSAL_LOG_EVERY`] for
    /// each service: during an outage every new association would otherwise log a line,
    /// burying the one line that says what happened.
    pub fn refuse(&self, peer: std::net::SocketAddr, reason: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut log = self.refusal_log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match log.last {
            Some(last) if now.duration_since(last) < REFUSAL_LOG_EVERY => log.suppressed += 1,
            _ => {
                let more = std::mem::take(&mut log.suppressed);
                log.last = Some(now);
                if more > 0 {
                    warn!(service = %self.label, %peer, "connection refused: {reason} ({more} more refused since the last report)");
                } else {
                    warn!(service = %self.label, %peer, "connection refused: {reason}");
                }
            }
        }
    }

    pub fn counters(&self) -> ServiceCounters {
        ServiceCounters {
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            fallback_active: self.fallback_active.load(Ordering::Relaxed),
            fallback_total: self.fallback_total.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ServiceCounters {
    pub active: u32,
    pub total: u64,
    pub fallback_active: u32,
    pub fallback_total: u64,
    pub refused: u64,
    pub queued: u32,
}

/// A connection to a real server, counted until dropped.
pub struct Lease {
    guard: ConnectionGuard,
    service: Arc<ServiceRuntime>,
    /// The client and the persistence table generation it was counted in.
    persistent: Option<(IpAddr, u64)>,
}

impl Lease {
    pub fn server(&self) -> &Arc<Server> {
        self.guard.server()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((client, generation)) = self.persistent {
            let mut sel = self.service.selection();
            if sel.generation == generation {
                if let Some(p) = sel.persistence.as_mut() {
                    p.disconnect(client, Instant::now());
                }
            }
        }
        // Free the slot before waking queued clients, so that they find it.
        self.guard.release();
        self.service.slot_freed.notify_waiters();
    }
}

pub struct FallbackLease {
    service: Arc<ServiceRuntime>,
}

impl Drop for FallbackLease {
    fn drop(&mut self) {
        self.service.fallback_active.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct QueueTicket {
    service: Arc<ServiceRuntime>,
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.service.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct ClientGuard {
    service: Arc<ServiceRuntime>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.service.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    //! Where a new connection goes: every rule of [`ServiceRuntime::choose`], on a
    //! service built from configuration text (no sockets, no time but the real one).
    use super::*;
    use crate::server::AdminState;
    use std::collections::BTreeMap;

    fn service(servers: &str, extra: &str) -> Arc<ServiceRuntime> {
        let text = format!(
            "[[service]]\nlabel = \"S\"\nlayer = 7\naddress = \"10.0.0.1\"\nports = [104]\n{extra}\n{servers}"
        );
        let config = crate::config::parse(&text).unwrap();
        let svc = &config.services[0];
        let servers = svc
            .real_servers
            .iter()
            .map(|r| Arc::new(Server::new(r)))
            .collect();
        ServiceRuntime::new(svc, servers)
    }

    fn servers(list: &[(&str, u32)]) -> String {
        list.iter()
            .enumerate()
            .map(|(i, (label, weight))| {
                format!(
                    "[[service.real_server]]\nlabel = \"{label}\"\naddress = \"10.0.1.{}\"\nweight = {weight}\n",
                    i + 1
                )
            })
            .collect()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn label(choice: &Choice) -> String {
        match choice {
            Choice::Server(lease) => lease.server().label.clone(),
            Choice::Fallback(f, _) => format!("fallback {}", f.address),
            Choice::Full => "full".into(),
            Choice::Unavailable => "unavailable".into(),
        }
    }

    /// Picks `n` times, each connection closed before the next.
    fn spread(rt: &Arc<ServiceRuntime>, n: usize) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            *counts.entry(label(&rt.choose(CLIENT, &[]))).or_default() += 1;
        }
        counts
    }

    #[test]
    fn weighted_round_robin_follows_the_weights() {
        let rt = service(&servers(&[("A", 300), ("B", 100)]), "scheduler = \"wrr\"");
        let counts = spread(&rt, 40);
        assert_eq!(counts, BTreeMap::from([("A".into(), 30), ("B".into(), 10)]));
    }

    #[test]
    fn down_drained_halted_and_weight_zero_servers_take_no_new_connection() {
        let rt = service(
            &servers(&[
                ("UP", 1),
                ("DOWN", 1),
                ("DRAIN", 1),
                ("HALT", 1),
                ("ZERO", 0),
            ]),
            "scheduler = \"rr\"",
        );
        let s = rt.servers();
        s[1].record_check(Some("refused".into()), 1, 1);
        s[2].set_admin(AdminState::Drain);
        s[3].set_admin(AdminState::Halt);
        assert_eq!(spread(&rt, 10), BTreeMap::from([("UP".into(), 10)]));
    }

    #[test]
    fn least_connections_counts_open_connections() {
        let rt = service(&servers(&[("A", 1), ("B", 1)]), "scheduler = \"lc\"");
        let first = rt.choose(CLIENT, &[]);
        let held = label(&first);
        // while the first stays open, every next one (closed at once) goes to the other
        let next: Vec<String> = (0..2).map(|_| label(&rt.choose(CLIENT, &[]))).collect();
        assert!(next.iter().all(|n| *n != held), "{held} {next:?}");
        drop(first);
    }

    #[test]
    fn servers_at_max_connections_make_the_service_full_until_a_slot_is_freed() {
        let text = "[[service.real_server]]\nlabel = \"A\"\naddress = \"10.0.1.1\"\nmax_connections = 1\n\
                    [[service.real_server]]\nlabel = \"B\"\naddress = \"10.0.1.2\"\nmax_connections = 1\n";
        let rt = service(text, "");
        let a = rt.choose(CLIENT, &[]);
        let b = rt.choose(CLIENT, &[]);
        let mut both = [label(&a), label(&b)];
        both.sort();
        assert_eq!(both, ["A", "B"]);
        assert_eq!(label(&rt.choose(CLIENT, &[])), "full");
        let freed = label(&b);
        drop(b);
        assert_eq!(label(&rt.choose(CLIENT, &[])), freed);
        drop(a);
    }

    #[test]
    fn the_fallback_takes_clients_only_while_no_real_server_is_up() {
        let rt = service(
            &servers(&[("A", 1)]),
            "fallback = { address = \"10.0.9.9\", port = 104 }",
        );
        assert_eq!(label(&rt.choose(CLIENT, &[])), "A");
        rt.servers()[0].record_check(Some("refused".into()), 1, 1);
        assert_eq!(label(&rt.choose(CLIENT, &[])), "fallback 10.0.9.9");
        rt.servers()[0].record_check(None, 1, 1);
        assert_eq!(label(&rt.choose(CLIENT, &[])), "A");
        let without = service(&servers(&[("A", 1)]), "");
        without.servers()[0].set_admin(AdminState::Drain);
        assert_eq!(label(&without.choose(CLIENT, &[])), "unavailable");
    }

    #[test]
    fn a_retry_never_goes_back_to_a_server_that_just_failed_to_connect() {
        let rt = service(
            &servers(&[("A", 1), ("B", 1)]),
            "fallback = { address = \"10.0.9.9\" }",
        );
        let a = rt.server("A").unwrap();
        let b = rt.server("B").unwrap();
        for _ in 0..6 {
            assert_eq!(label(&rt.choose(CLIENT, std::slice::from_ref(&a))), "B");
        }
        // both failed although the checks still say up: the fallback, then nothing
        assert_eq!(
            label(&rt.choose(CLIENT, &[a.clone(), b])),
            "fallback 10.0.9.9"
        );
        let plain = service(&servers(&[("A", 1)]), "");
        let only = plain.server("A").unwrap();
        assert_eq!(label(&plain.choose(CLIENT, &[only])), "unavailable");
    }

    #[test]
    fn persistence_keeps_a_client_on_its_server_while_it_can_take_it() {
        let rt = service(
            &servers(&[("A", 1), ("B", 1), ("C", 1)]),
            "scheduler = \"rr\"\npersistence = { timeout = \"300s\" }",
        );
        let first = label(&rt.choose(CLIENT, &[]));
        for _ in 0..5 {
            assert_eq!(label(&rt.choose(CLIENT, &[])), first);
        }
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let theirs = label(&rt.choose(other, &[]));
        assert_ne!(theirs, first, "round robin moved on for a new client");
        // the client's server is drained: it goes elsewhere, and stays there
        rt.server(&first).unwrap().set_admin(AdminState::Drain);
        let moved = label(&rt.choose(CLIENT, &[]));
        assert_ne!(moved, first);
        assert_eq!(label(&rt.choose(CLIENT, &[])), moved);
    }
}
