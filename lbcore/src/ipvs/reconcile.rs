//! What the IPVS table should hold, and the changes that get the kernel there.
//!
//! Both steps are pure: [`desired`] reads a Layer 4 service's configuration and the
//! live state of its servers; [`diff`] compares the wanted services with the kernel's
//! table and returns only the changes needed, touching no service lbcore does not own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{DestKey, DestSpec, Forward, IPPROTO_TCP, Op, Service, ServiceKey, ServiceSpec};
use crate::config::{self, Forwarding, Layer, OnFailure};
use crate::server::{AdminState, Health, Server};

/// One virtual service as lbcore wants it in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub key: ServiceKey,
    pub spec: ServiceSpec,
    pub dests: BTreeMap<DestKey, DestSpec>,
}

/// The IPVS services of Layer 4 service `svc` (one per port), given its servers' live
/// state. Not Layer 4: none.
///
/// A server is in the table with its configured weight when it is healthy (or not yet
/// checked) and Online; with weight 0 when Drained or when it failed its check and the
/// service says `on_failure = "weight-zero"`; absent when Halted or failed with
/// `on_failure = "remove"`. The fallback server is in the table only while no real
/// server takes new connections.
pub fn desired(svc: &config::Service, servers: &[Arc<Server>]) -> Vec<Wanted> {
    let Layer::Four {
        forwarding,
        on_failure,
    } = svc.layer
    else {
        return Vec::new();
    };
    let forward = match forwarding {
        Forwarding::DirectRouting => Forward::Route,
        Forwarding::Nat | Forwarding::Snat => Forward::Masq,
    };
    let max_prefix = if svc.address.is_ipv4() { 32 } else { 128 };
    let spec = ServiceSpec {
        scheduler: svc.scheduler.name().to_string(),
        persistence: svc
            .persistence
            .as_ref()
            .map(|p| u32::try_from(p.timeout.as_secs().max(1)).unwrap_or(u32::MAX)),
        netmask: svc
            .persistence
            .as_ref()
            .and_then(|p| p.netmask)
            .unwrap_or(max_prefix),
    };
    let mut out = Vec::with_capacity(svc.ports.len());
    for &vport in &svc.ports {
        let mut dests = BTreeMap::new();
        let mut any_up = false;
        for s in servers {
            let weight = match (s.admin(), s.health()) {
                (AdminState::Halt, _) => continue,
                (_, Health::Down) if on_failure == OnFailure::Remove => continue,
                (_, Health::Down) | (AdminState::Drain, _) => 0,
                (AdminState::Online, _) => s.weight(),
            };
            any_up |= weight > 0;
            let key = DestKey {
                address: s.address,
                port: s.port.unwrap_or(vport),
            };
            // two servers that are the same endpoint: the first one counts
            dests.entry(key).or_insert(DestSpec {
                forward,
                weight,
                upper: s.max_connections(),
                lower: s.min_connections(),
            });
        }
        if let Some(f) = svc.fallback.filter(|_| !any_up) {
            let key = DestKey {
                address: f.address,
                port: f.port.unwrap_or(vport),
            };
            dests.entry(key).or_insert(DestSpec {
                forward,
                weight: 1,
                upper: 0,
                lower: 0,
            });
        }
        out.push(Wanted {
            key: ServiceKey {
                protocol: IPPROTO_TCP,
                address: svc.address,
                port: vport,
            },
            spec: spec.clone(),
            dests,
        });
    }
    out
}

/// The changes that turn `kernel` into `wanted`. Services in the kernel that are not
/// wanted are deleted only when they are in `owned` (lbcore made them); any other
/// service is left alone. Within a service, real servers lbcore does not want are
/// removed: a service lbcore owns is lbcore's entirely.
pub fn diff(wanted: &[Wanted], kernel: &[Service], owned: &BTreeSet<ServiceKey>) -> Vec<Op> {
    let mut ops = Vec::new();
    let want_keys: BTreeSet<ServiceKey> = wanted.iter().map(|w| w.key).collect();
    for k in kernel {
        if !want_keys.contains(&k.key) && owned.contains(&k.key) {
            ops.push(Op::DelService(k.key));
        }
    }
    for w in wanted {
        match kernel.iter().find(|k| k.key == w.key) {
            None => {
                ops.push(Op::AddService(w.key, w.spec.clone()));
                for (d, s) in &w.dests {
                    ops.push(Op::AddDest(w.key, *d, *s));
                }
            }
            Some(k) => {
                if !same_service(&k.spec, &w.spec) {
                    ops.push(Op::EditService(w.key, w.spec.clone()));
                }
                for d in &k.dests {
                    if !w.dests.contains_key(&d.key) {
                        ops.push(Op::DelDest(w.key, d.key));
                    }
                }
                for (dk, ds) in &w.dests {
                    match k.dests.iter().find(|d| d.key == *dk) {
                        None => ops.push(Op::AddDest(w.key, *dk, *ds)),
                        Some(d) if d.spec != *ds => ops.push(Op::EditDest(w.key, *dk, *ds)),
                        Some(_) => {}
                    }
                }
            }
        }
    }
    ops
}

/// Equal as far as the service's behaviour goes: without persistence the kernel's
/// timeout and netmask mean nothing.
fn same_service(kernel: &ServiceSpec, want: &ServiceSpec) -> bool {
    kernel.scheduler == want.scheduler
        && kernel.persistence == want.persistence
        && (want.persistence.is_none() || kernel.netmask == want.netmask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::{Counters, Dest};

    const CONFIG: &str = r#"
[[service]]
label = "DS_DICOM"
layer = 4
address = "172.26.11.70"
port = 104
forwarding = "direct-routing"
scheduler = "wlc"
persistence = { timeout = "300s" }
fallback = { address = "172.26.11.103" }
[[service.real_server]]
label = "DS1"
address = "172.26.11.31"
weight = 100
max_connections = 50
[[service.real_server]]
label = "DS2"
address = "172.26.11.32"
weight = 100
min_connections = 5
"#;

    fn setup(extra: &str) -> (config::Service, Vec<Arc<Server>>) {
        let text = CONFIG.replace(
            "scheduler = \"wlc\"",
            &format!("scheduler = \"wlc\"\n{extra}"),
        );
        let c = config::parse(&text).unwrap();
        let svc = c.services[0].clone();
        let servers = svc
            .real_servers
            .iter()
            .map(|r| Arc::new(Server::new(r)))
            .collect();
        (svc, servers)
    }

    fn dk(last: u8) -> DestKey {
        DestKey {
            address: format!("172.26.11.{last}").parse().unwrap(),
            port: 104,
        }
    }

    fn weights(w: &Wanted) -> Vec<(u8, u32)> {
        w.dests
            .iter()
            .map(|(k, s)| match k.address {
                std::net::IpAddr::V4(a) => (a.octets()[3], s.weight),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn reference_service_in_the_kernel() {
        let (svc, servers) = setup("");
        let w = desired(&svc, &servers);
        assert_eq!(w.len(), 1);
        let w = &w[0];
        assert_eq!(w.key.to_string(), "TCP 172.26.11.70:104");
        assert_eq!(
            w.spec,
            ServiceSpec {
                scheduler: "wlc".into(),
                persistence: Some(300),
                netmask: 32
            }
        );
        assert_eq!(
            w.dests[&dk(31)],
            DestSpec {
                forward: Forward::Route,
                weight: 100,
                upper: 50,
                lower: 0
            }
        );
        assert_eq!(w.dests[&dk(32)].lower, 5);
        assert_eq!(
            weights(w),
            [(31, 100), (32, 100)],
            "no fallback while servers are up"
        );
    }

    #[test]
    fn failure_removes_or_zeroes_and_admin_states() {
        let (svc, servers) = setup("");
        servers[0].record_check(Some("refused".into()), 1, 1);
        assert_eq!(weights(&desired(&svc, &servers)[0]), [(32, 100)]);
        let (svc, servers) = setup("on_failure = \"weight-zero\"");
        servers[0].record_check(Some("refused".into()), 1, 1);
        assert_eq!(weights(&desired(&svc, &servers)[0]), [(31, 0), (32, 100)]);
        servers[0].record_check(None, 1, 1);
        servers[0].set_admin(AdminState::Drain);
        servers[1].set_admin(AdminState::Halt);
        // DS1 drained (weight 0), DS2 halted (gone): nobody takes new clients, so the
        // fallback server comes in
        assert_eq!(weights(&desired(&svc, &servers)[0]), [(31, 0), (103, 1)]);
    }

    #[test]
    fn nat_ports_and_no_persistence() {
        let text = CONFIG
            .replace("direct-routing", "snat")
            .replace("persistence = { timeout = \"300s\" }\n", "")
            .replace("weight = 100\nmax", "port = 11112\nweight = 100\nmax");
        let svc = config::parse(&text).unwrap().services[0].clone();
        let servers: Vec<_> = svc
            .real_servers
            .iter()
            .map(|r| Arc::new(Server::new(r)))
            .collect();
        let w = &desired(&svc, &servers)[0];
        assert_eq!(w.spec.persistence, None);
        let ports: Vec<_> = w.dests.iter().map(|(k, s)| (k.port, s.forward)).collect();
        assert_eq!(ports, [(11112, Forward::Masq), (104, Forward::Masq)]);
    }

    fn kernel_of(w: &Wanted) -> Service {
        Service {
            key: w.key,
            spec: w.spec.clone(),
            dests: w
                .dests
                .iter()
                .map(|(k, s)| Dest {
                    key: *k,
                    spec: *s,
                    counters: Counters::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn diff_from_empty_adds_everything_and_then_nothing() {
        let (svc, servers) = setup("");
        let w = desired(&svc, &servers);
        let ops = diff(&w, &[], &BTreeSet::new());
        assert_eq!(ops.len(), 3);
        assert!(matches!(ops[0], Op::AddService(..)));
        let k: Vec<_> = w.iter().map(kernel_of).collect();
        assert_eq!(diff(&w, &k, &BTreeSet::new()), []);
    }

    #[test]
    fn a_weight_change_is_one_edit() {
        let (svc, servers) = setup("");
        let before: Vec<_> = desired(&svc, &servers).iter().map(kernel_of).collect();
        let mut cfg = svc.real_servers[1].clone();
        cfg.weight = 50;
        servers[1].update(&cfg);
        let w = desired(&svc, &servers);
        assert_eq!(
            diff(&w, &before, &BTreeSet::new()),
            [Op::EditDest(
                w[0].key,
                dk(32),
                DestSpec {
                    forward: Forward::Route,
                    weight: 50,
                    upper: 0,
                    lower: 5
                }
            )]
        );
    }

    #[test]
    fn others_services_stay_and_owned_ones_go() {
        let (svc, servers) = setup("");
        let w = desired(&svc, &servers);
        let mut kernel: Vec<_> = w.iter().map(kernel_of).collect();
        let foreign = Service {
            key: ServiceKey {
                protocol: IPPROTO_TCP,
                address: "10.1.1.1".parse().unwrap(),
                port: 80,
            },
            spec: ServiceSpec {
                scheduler: "rr".into(),
                persistence: None,
                netmask: 32,
            },
            dests: Vec::new(),
        };
        kernel.push(foreign.clone());
        assert_eq!(diff(&w, &kernel, &BTreeSet::new()), []);
        let owned = BTreeSet::from([foreign.key]);
        assert_eq!(diff(&w, &kernel, &owned), [Op::DelService(foreign.key)]);
        assert_eq!(
            diff(&[], &kernel, &BTreeSet::from([w[0].key])),
            [Op::DelService(w[0].key)]
        );
    }

    #[test]
    fn scheduler_persistence_and_stray_dests() {
        let (svc, servers) = setup("");
        let w = desired(&svc, &servers);
        let mut k = kernel_of(&w[0]);
        k.spec.scheduler = "rr".into();
        k.dests.push(Dest {
            key: dk(99),
            spec: k.dests[0].spec,
            counters: Counters::default(),
        });
        k.dests.retain(|d| d.key != dk(31));
        let ops = diff(&w, &[k], &BTreeSet::new());
        assert_eq!(
            ops,
            [
                Op::EditService(w[0].key, w[0].spec.clone()),
                Op::DelDest(w[0].key, dk(99)),
                Op::AddDest(w[0].key, dk(31), w[0].dests[&dk(31)]),
            ]
        );
        // without persistence the kernel's netmask does not matter
        let a = ServiceSpec {
            scheduler: "wlc".into(),
            persistence: None,
            netmask: 0,
        };
        let b = ServiceSpec {
            netmask: 32,
            ..a.clone()
        };
        assert!(same_service(&a, &b));
    }
}
