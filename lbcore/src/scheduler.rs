//! Choosing a real server for a new connection among those that can take it:
//! (weighted) round robin and (weighted) least connections.

use std::sync::Arc;

use crate::config;
use crate::server::Server;

pub struct Scheduler {
    kind: config::Scheduler,
    /// Smooth weighted round robin: each server's running credit, by label. A service
    /// has a handful of servers, so a linear search is cheaper than hashing the label
    /// on every pick.
    credit: Vec<(String, i64)>,
    /// Where least-connection ties start, so that equal servers take turns.
    rotor: usize,
}

impl Scheduler {
    pub fn new(kind: config::Scheduler) -> Scheduler {
        Scheduler {
            kind,
            credit: Vec::new(),
            rotor: 0,
        }
    }

    pub fn kind(&self) -> config::Scheduler {
        self.kind
    }

    /// `candidates` all take new connections and have a non-zero weight. An iterator
    /// (walked more than once, hence `Clone`) so that the caller need not collect them.
    pub fn pick<'a, I>(&mut self, candidates: I) -> Option<&'a Arc<Server>>
    where
        I: Iterator<Item = &'a Arc<Server>> + Clone,
    {
        match self.kind {
            config::Scheduler::Wrr => self.round_robin(candidates, |s| s.weight()),
            config::Scheduler::Lc => self.least_connections(candidates, |_| 1),
            config::Scheduler::Wlc => self.least_connections(candidates, |s| s.weight()),
            // sh and mh exist only at Layer 4 (validation refuses them at Layer 7);
            // should one reach here, plain round robin is the safe reading.
            config::Scheduler::Rr | config::Scheduler::Sh | config::Scheduler::Mh => {
                self.round_robin(candidates, |_| 1)
            }
        }
    }

    /// The credit entry of `label`, created at zero the first time a server is seen.
    fn credit_index(&mut self, label: &str) -> usize {
        match self.credit.iter().position(|(l, _)| l == label) {
            Some(i) => i,
            None => {
                self.credit.push((label.to_string(), 0));
                self.credit.len() - 1
            }
        }
    }

    /// nginx's smooth weighted round robin: interleaves servers in proportion to their
    /// weights instead of sending bursts to the heaviest one.
    fn round_robin<'a>(
        &mut self,
        candidates: impl Iterator<Item = &'a Arc<Server>>,
        weight: impl Fn(&Server) -> u32,
    ) -> Option<&'a Arc<Server>> {
        let mut total = 0i64;
        let mut best: Option<(&'a Arc<Server>, usize)> = None;
        let mut best_credit = i64::MIN;
        for s in candidates {
            let w = i64::from(weight(s));
            total += w;
            let i = self.credit_index(&s.label);
            let c = &mut self.credit[i].1;
            *c += w;
            if *c > best_credit {
                best_credit = *c;
                best = Some((s, i));
            }
        }
        let (chosen, i) = best?;
        self.credit[i].1 -= total;
        Some(chosen)
    }

    /// The server with the fewest active connections per unit of weight; ties go round.
    fn least_connections<'a>(
        &mut self,
        candidates: impl Iterator<Item = &'a Arc<Server>> + Clone,
        weight: impl Fn(&Server) -> u32,
    ) -> Option<&'a Arc<Server>> {
        let n = candidates.clone().count();
        if n == 0 {
            return None;
        }
        let start = self.rotor % n;
        self.rotor = self.rotor.wrapping_add(1);
        // The candidates in turn from `start`, wrapping round.
        let mut turn = candidates.clone().skip(start).chain(candidates.take(start));
        let mut best = turn.next()?;
        for s in turn {
            // active/weight < best.active/best.weight, without division.
            let lhs = u64::from(s.active()) * u64::from(weight(best).max(1));
            let rhs = u64::from(best.active()) * u64::from(weight(s).max(1));
            if lhs < rhs {
                best = s;
            }
        }
        Some(best)
    }

    /// Forgets servers that no longer exist.
    pub fn retain(&mut self, labels: &[&str]) {
        self.credit.retain(|(l, _)| labels.contains(&l.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RealServer;

    fn servers(weights: &[u32]) -> Vec<Arc<Server>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Arc::new(Server::new(&RealServer {
                    label: format!("S{i}"),
                    address: format!("10.0.0.{}", i + 1).parse().unwrap(),
                    port: None,
                    weight: w,
                    max_connections: 0,
                    min_connections: 0,
                }))
            })
            .collect()
    }

    fn counts(kind: config::Scheduler, weights: &[u32], rounds: usize, hold: bool) -> Vec<usize> {
        let all = servers(weights);
        let mut s = Scheduler::new(kind);
        let mut n = vec![0; all.len()];
        let mut guards = Vec::new();
        for _ in 0..rounds {
            let chosen = s.pick(all.iter()).unwrap();
            n[chosen.label[1..].parse::<usize>().unwrap()] += 1;
            if hold {
                guards.push(chosen.open_connection());
            }
        }
        n
    }

    #[test]
    fn weighted_round_robin_follows_weights_smoothly() {
        assert_eq!(
            counts(config::Scheduler::Wrr, &[100, 100], 10, false),
            vec![5, 5]
        );
        assert_eq!(
            counts(config::Scheduler::Wrr, &[300, 100], 8, false),
            vec![6, 2]
        );
        // Smoothness: the heavy server never gets more than its share in a row.
        let all = servers(&[5, 1, 1]);
        let mut s = Scheduler::new(config::Scheduler::Wrr);
        let order: String = (0..7)
            .map(|_| s.pick(all.iter()).unwrap().label[1..].to_string())
            .collect();
        assert_eq!(order, "0010200");
    }

    #[test]
    fn round_robin_ignores_weights() {
        assert_eq!(
            counts(config::Scheduler::Rr, &[300, 100], 8, false),
            vec![4, 4]
        );
    }

    #[test]
    fn weighted_least_connections_balances_active_per_weight() {
        assert_eq!(
            counts(config::Scheduler::Wlc, &[200, 100], 30, true),
            vec![20, 10]
        );
        assert_eq!(
            counts(config::Scheduler::Lc, &[200, 100], 30, true),
            vec![15, 15]
        );
    }

    #[test]
    fn least_connections_ties_take_turns() {
        // Nothing held open: every pick is a tie, so servers alternate.
        assert_eq!(
            counts(config::Scheduler::Wlc, &[100, 100, 100], 9, false),
            vec![3, 3, 3]
        );
    }
}
