//! SNAT for Layer 4 services in `snat` mode: IPVS masquerades towards the real servers
//! (NAT), and this nftables table rewrites the client's source address to the
//! appliance's, so replies come back to the appliance without the real servers routing
//! through it. Needs `net.ipv4.vs.conntrack = 1` so that netfilter sees IPVS's flows.
//!
//! The whole table is replaced in one `nft -f` transaction.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::Wanted;
use crate::nft::{self, NftError};

pub const TABLE: &str = "lbcore_snat";

/// The nft script that makes table `lbcore_snat` hold exactly the masquerade rules for
/// `services` (the IPv4 ones; an empty list removes the table).
pub fn ruleset(services: &[Wanted]) -> String {
    let mut rules = BTreeSet::new();
    for w in services {
        let IpAddr::V4(vip) = w.key.address else {
            continue;
        };
        for d in w.dests.keys() {
            if let IpAddr::V4(rip) = d.address {
                rules.insert(format!(
                    "\t\tip daddr {rip} tcp dport {} ct original ip daddr {vip} masquerade\n",
                    d.port
                ));
            }
        }
    }
    // "add + delete + define" replaces the table whether or not it existed, atomically
    let mut s = format!("add table ip {TABLE}\ndelete table ip {TABLE}\n");
    if !rules.is_empty() {
        s += &format!(
            "table ip {TABLE} {{\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        );
        for r in rules {
            s += &r;
        }
        s += "\t}\n}\n";
    }
    s
}

/// Applies `script` in one `nft` transaction.
pub fn apply(script: &str) -> Result<(), NftError> {
    nft::apply(script)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::{DestKey, DestSpec, Forward, IPPROTO_TCP, ServiceKey, ServiceSpec};

    #[test]
    fn rules_name_each_real_server_and_the_vip() {
        let mut dests = std::collections::BTreeMap::new();
        for last in [32, 31] {
            dests.insert(
                DestKey {
                    address: format!("10.0.0.{last}").parse().unwrap(),
                    port: 11112,
                },
                DestSpec {
                    forward: Forward::Masq,
                    weight: 1,
                    upper: 0,
                    lower: 0,
                },
            );
        }
        let w = Wanted {
            key: ServiceKey {
                protocol: IPPROTO_TCP,
                address: "10.0.0.70".parse().unwrap(),
                port: 104,
            },
            spec: ServiceSpec {
                scheduler: "rr".into(),
                persistence: None,
                netmask: 32,
            },
            dests,
        };
        let s = ruleset(&[w]);
        assert!(s.starts_with("add table ip lbcore_snat\ndelete table ip lbcore_snat\n"));
        let r31 = s
            .find("ip daddr 10.0.0.31 tcp dport 11112 ct original ip daddr 10.0.0.70 masquerade")
            .unwrap();
        let r32 = s.find("ip daddr 10.0.0.32").unwrap();
        assert!(r31 < r32);
        assert_eq!(
            ruleset(&[]),
            "add table ip lbcore_snat\ndelete table ip lbcore_snat\n"
        );
    }

    /// The script is valid nftables syntax (checked by nft itself, without applying).
    #[test]
    fn nft_accepts_the_script() {
        assert!(
            nft::available(),
            "{} is missing: install nftables (tests/packages.txt lists it)",
            nft::NFT
        );
        let w = Wanted {
            key: ServiceKey {
                protocol: IPPROTO_TCP,
                address: "10.0.0.70".parse().unwrap(),
                port: 104,
            },
            spec: ServiceSpec {
                scheduler: "rr".into(),
                persistence: None,
                netmask: 32,
            },
            dests: [(
                DestKey {
                    address: "10.0.0.31".parse().unwrap(),
                    port: 104,
                },
                DestSpec {
                    forward: Forward::Masq,
                    weight: 1,
                    upper: 0,
                    lower: 0,
                },
            )]
            .into(),
        };
        let script = ruleset(&[w]);
        // as root (tests/run) nft can check a script; otherwise say why it could not
        match nft::check(&script) {
            Ok(()) => {}
            Err(e) => panic!(
                "nft -c refused (it needs root, as tests/run runs the tests):\n{script}\n{e}"
            ),
        }
    }
}
