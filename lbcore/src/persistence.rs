//! Source-IP persistence: a client keeps going to the server it was sent to, until the
//! timeout has passed with no connection from it (an open connection keeps the entry).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

struct Entry {
    server: String,
    /// Connections from this client that are still open.
    open: u32,
    /// When the client last connected or a connection of it closed.
    last: Instant,
}

pub struct PersistenceTable {
    timeout: Duration,
    entries: HashMap<IpAddr, Entry>,
    last_sweep: Instant,
}

impl PersistenceTable {
    pub fn new(timeout: Duration) -> PersistenceTable {
        PersistenceTable {
            timeout,
            entries: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn live(&self, e: &Entry, now: Instant) -> bool {
        e.open > 0 || now.saturating_duration_since(e.last) < self.timeout
    }

    /// The server this client is bound to, if its entry is still live.
    pub fn lookup(&mut self, client: IpAddr, now: Instant) -> Option<&str> {
        self.sweep(now);
        let live = self.entries.get(&client).is_some_and(|e| self.live(e, now));
        if !live {
            self.entries.remove(&client);
            return None;
        }
        self.entries.get(&client).map(|e| e.server.as_str())
    }

    /// Records a new connection from `client` to `server`.
    pub fn connect(&mut self, client: IpAddr, server: &str, now: Instant) {
        let e = self.entries.entry(client).or_insert_with(|| Entry {
            server: server.to_string(),
            open: 0,
            last: now,
        });
        if e.server != server {
            e.server = server.to_string();
        }
        e.open += 1;
        e.last = now;
    }

    /// Records that a connection from `client` closed.
    pub fn disconnect(&mut self, client: IpAddr, now: Instant) {
        if let Some(e) = self.entries.get_mut(&client) {
            e.open = e.open.saturating_sub(1);
            e.last = now;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops expired entries now and then, so that the table stays as small as the set
    /// of recent clients.
    fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep) < Duration::from_secs(10) {
            return;
        }
        self.last_sweep = now;
        let timeout = self.timeout;
        self.entries
            .retain(|_, e| e.open > 0 || now.saturating_duration_since(e.last) < timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_lives_while_open_and_for_the_timeout_after() {
        let t0 = Instant::now();
        let c: IpAddr = "10.1.1.1".parse().unwrap();
        let mut p = PersistenceTable::new(Duration::from_secs(300));
        assert_eq!(p.lookup(c, t0), None);
        p.connect(c, "DS1", t0);
        // Open for longer than the timeout: still bound.
        assert_eq!(p.lookup(c, t0 + Duration::from_secs(1000)), Some("DS1"));
        p.disconnect(c, t0 + Duration::from_secs(1000));
        assert_eq!(p.lookup(c, t0 + Duration::from_secs(1299)), Some("DS1"));
        assert_eq!(p.lookup(c, t0 + Duration::from_secs(1300)), None);
        assert!(p.is_empty());
    }

    #[test]
    fn rebinding_moves_the_client() {
        let t0 = Instant::now();
        let c: IpAddr = "10.1.1.1".parse().unwrap();
        let mut p = PersistenceTable::new(Duration::from_secs(5));
        p.connect(c, "DS1", t0);
        p.connect(c, "DS2", t0);
        assert_eq!(p.lookup(c, t0), Some("DS2"));
    }

    #[test]
    fn sweep_bounds_the_table() {
        let t0 = Instant::now();
        let mut p = PersistenceTable::new(Duration::from_secs(5));
        for i in 0..100u8 {
            let c = IpAddr::from([10, 0, 0, i]);
            p.connect(c, "DS1", t0);
            p.disconnect(c, t0);
        }
        assert_eq!(p.len(), 100);
        p.lookup("10.9.9.9".parse().unwrap(), t0 + Duration::from_secs(60));
        assert!(p.is_empty());
    }
}
