//! The appliance's nftables table `inet medlb`, generated whole from what it must let
//! in: no rule is ever added or removed on its own. The script deletes and defines the
//! table in one file, which `nft -f` applies as one transaction: there is never a
//! moment with no rules or half of them.
//!
//! Input, in order: loopback; established and related flows; the virtual services'
//! addresses and ports, from anywhere (they are the product); invalid flows dropped;
//! ICMP echo (rate limited) and the ICMP errors path MTU discovery needs, IPv6
//! neighbour discovery; DHCP replies; the management ports, never on a virtual
//! service's address, from the lockdown networks (or from anywhere with lockdown off);
//! the administrator's custom rules (`input_custom`); the rest dropped and counted.
//! Forward: only what Layer 4 NAT forwards (replies of the real servers); output: open.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;

/// The table's name (family `inet`: one table for IPv4 and IPv6).
pub const TABLE: &str = "medlb";
/// The chain that holds the custom rules.
pub const CUSTOM_CHAIN: &str = "input_custom";

/// The named counters, with what each counts (shown in the status).
pub const COUNTERS: &[(&str, &str)] = &[
    (
        "dropped_management",
        "management ports from outside the lockdown networks, or on a virtual service's address",
    ),
    ("dropped_invalid", "packets of no valid connection"),
    ("dropped_ping", "ICMP echo requests over the rate limit"),
    (
        "dropped_other",
        "everything else addressed to the appliance",
    ),
    (
        "dropped_forward",
        "packets to forward that no Layer 4 service forwards",
    ),
];

/// What the ruleset is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Every virtual service's address and its TCP ports (Layer 7 and Layer 4).
    pub services: BTreeMap<IpAddr, BTreeSet<u16>>,
    /// The real servers of Layer 4 NAT services (address, port): their replies are
    /// forwarded to the clients.
    pub nat_servers: BTreeSet<(IpAddr, u16)>,
    /// The management ports (TCP).
    pub management_ports: Vec<u16>,
    /// Networks the management ports are reachable from; empty: from anywhere.
    pub lockdown: Vec<IpNet>,
    /// The custom rules, one a line.
    pub custom: String,
}

/// A generated script, and where the custom rules are in it (to tell an administrator
/// which line of theirs nft refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub text: String,
    /// The script's line number (1-based) of the custom rules' first line.
    pub custom_first_line: usize,
    pub custom_lines: usize,
}

/// Why custom rules are not taken before nft even sees them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomError {
    #[error(
        "line {0}: a `}}` here closes the custom rules' chain: custom rules are rules of one chain, without braces around them"
    )]
    Escapes(usize),
    #[error("a `{{` is never closed")]
    Unclosed,
}

/// Checks that the custom rules stay inside their chain (braces balanced, never
/// closing more than they opened).
pub fn check_custom(text: &str) -> Result<(), CustomError> {
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        // a quoted string (a comment) may hold braces
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '"' => quoted = !quoted,
                '#' if !quoted => break,
                '{' if !quoted => depth += 1,
                '}' if !quoted => {
                    depth = depth.checked_sub(1).ok_or(CustomError::Escapes(n + 1))?;
                }
                _ => {}
            }
        }
    }
    if depth > 0 {
        return Err(CustomError::Unclosed);
    }
    Ok(())
}

/// The whole script for `inputs`.
pub fn generate(inputs: &Inputs) -> Script {
    let mut s = String::new();
    // "add + delete + define" replaces the table whether or not it existed
    let _ = writeln!(s, "add table inet {TABLE}\ndelete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    for (name, _) in COUNTERS {
        let _ = writeln!(s, "\tcounter {name} {{ }}");
    }
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (addr, ports) in &inputs.services {
        for p in ports {
            match addr {
                IpAddr::V4(a) => v4.push(format!("{a} . {p}")),
                IpAddr::V6(a) => v6.push(format!("{a} . {p}")),
            }
        }
    }
    set(&mut s, "services_v4", "ipv4_addr . inet_service", "", &v4);
    set(&mut s, "services_v6", "ipv6_addr . inet_service", "", &v6);
    let (a4, a6): (Vec<&IpAddr>, Vec<&IpAddr>) = inputs.services.keys().partition(|a| a.is_ipv4());
    set(
        &mut s,
        "service_addresses_v4",
        "ipv4_addr",
        "",
        &strings(&a4),
    );
    set(
        &mut s,
        "service_addresses_v6",
        "ipv6_addr",
        "",
        &strings(&a6),
    );
    let (l4, l6): (Vec<_>, Vec<_>) = inputs
        .lockdown
        .iter()
        .map(|n| n.trunc())
        .partition(|n| matches!(n, IpNet::V4(_)));
    set(
        &mut s,
        "lockdown_v4",
        "ipv4_addr",
        "interval",
        &strings(&l4),
    );
    set(
        &mut s,
        "lockdown_v6",
        "ipv6_addr",
        "interval",
        &strings(&l6),
    );
    let nat: Vec<String> = inputs
        .nat_servers
        .iter()
        .filter(|(a, _)| a.is_ipv4())
        .map(|(a, p)| format!("{a} . {p}"))
        .collect();
    set(
        &mut s,
        "nat_servers_v4",
        "ipv4_addr . inet_service",
        "",
        &nat,
    );

    s += "\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n";
    s += "\t\tiif \"lo\" accept\n";
    s += "\t\tct state established,related accept\n";
    // before the invalid drop: with direct routing the replies go from the real server
    // straight to the client, so conntrack here never sees them and takes the client's
    // next packets for invalid ones
    s += "\t\tip daddr . tcp dport @services_v4 accept\n";
    s += "\t\tip6 daddr . tcp dport @services_v6 accept\n";
    s += "\t\tct state invalid counter name dropped_invalid drop\n";
    s += "\t\ticmp type echo-request limit rate 50/second burst 100 packets accept\n";
    s += "\t\ticmp type echo-request counter name dropped_ping drop\n";
    s += "\t\ticmp type { destination-unreachable, time-exceeded, parameter-problem } limit rate 100/second burst 200 packets accept\n";
    s += "\t\ticmpv6 type echo-request limit rate 50/second burst 100 packets accept\n";
    s += "\t\ticmpv6 type echo-request counter name dropped_ping drop\n";
    s += "\t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } limit rate 100/second burst 200 packets accept\n";
    // neighbour discovery only from the link itself (a router cannot forward hop limit 255)
    s += "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } ip6 hoplimit 255 accept\n";
    // DHCP: the server's reply is not a flow conntrack saw start (the request was a broadcast)
    s += "\t\tudp sport 67 udp dport 68 accept\n";
    s += "\t\tip6 saddr fe80::/10 udp sport 547 udp dport 546 accept\n";
    if !inputs.management_ports.is_empty() {
        let ports = ports_expr(&inputs.management_ports);
        // a virtual service's address never exposes management
        let _ = writeln!(
            s,
            "\t\tip daddr @service_addresses_v4 tcp dport {ports} counter name dropped_management drop"
        );
        let _ = writeln!(
            s,
            "\t\tip6 daddr @service_addresses_v6 tcp dport {ports} counter name dropped_management drop"
        );
        if inputs.lockdown.is_empty() {
            let _ = writeln!(s, "\t\ttcp dport {ports} accept");
        } else {
            let _ = writeln!(s, "\t\tip saddr @lockdown_v4 tcp dport {ports} accept");
            let _ = writeln!(s, "\t\tip6 saddr @lockdown_v6 tcp dport {ports} accept");
            let _ = writeln!(
                s,
                "\t\ttcp dport {ports} counter name dropped_management drop"
            );
        }
    }
    let _ = writeln!(s, "\t\tjump {CUSTOM_CHAIN}");
    s += "\t\tcounter name dropped_other\n\t}\n";

    let _ = writeln!(s, "\tchain {CUSTOM_CHAIN} {{");
    let custom_first_line = s.lines().count() + 1;
    let mut custom_lines = 0;
    for line in inputs.custom.lines() {
        let _ = writeln!(s, "{line}");
        custom_lines += 1;
    }
    s += "\t}\n";

    s += "\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n";
    s += "\t\tct state established,related accept\n";
    s += "\t\tip saddr . tcp sport @nat_servers_v4 accept\n";
    s += "\t\tcounter name dropped_forward\n\t}\n";
    s += "\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t}\n";
    s += "}\n";
    Script {
        text: s,
        custom_first_line,
        custom_lines,
    }
}

/// nft's message about `script`, its line numbers turned into the custom rules' own
/// when the error is in them (`custom rules, line 2:`).
pub fn explain(script: &Script, nft_message: &str) -> String {
    let mut out = Vec::new();
    for line in nft_message.lines() {
        let Some(rest) = line.strip_prefix("/dev/stdin:") else {
            out.push(line.to_string());
            continue;
        };
        let (num, tail) = rest.split_once(':').unwrap_or((rest, ""));
        match num.parse::<usize>() {
            Ok(n)
                if n >= script.custom_first_line
                    && n < script.custom_first_line + script.custom_lines =>
            {
                let col = tail.split_once(':').map_or("", |(c, _)| c);
                let msg = tail.split_once(':').map_or(tail, |(_, m)| m).trim();
                let at = if col.is_empty() {
                    String::new()
                } else {
                    format!(", column {col}")
                };
                out.push(format!(
                    "custom rules, line {}{at}: {msg}",
                    n - script.custom_first_line + 1
                ));
            }
            _ => out.push(format!("line {rest}")),
        }
    }
    out.join("\n")
}

fn set(s: &mut String, name: &str, kind: &str, flags: &str, elements: &[String]) {
    let _ = write!(s, "\tset {name} {{ type {kind};");
    if !flags.is_empty() {
        let _ = write!(s, " flags {flags};");
    }
    if !elements.is_empty() {
        let _ = write!(s, " elements = {{ {} }};", elements.join(", "));
    }
    s.push_str(" }\n");
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

fn ports_expr(ports: &[u16]) -> String {
    let set: BTreeSet<u16> = ports.iter().copied().collect();
    if set.len() == 1 {
        set.iter().map(u16::to_string).collect()
    } else {
        format!(
            "{{ {} }}",
            strings(&set.into_iter().collect::<Vec<_>>()).join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft;

    fn inputs() -> Inputs {
        let mut services = BTreeMap::new();
        services.insert("10.0.0.70".parse().unwrap(), BTreeSet::from([104, 11112]));
        services.insert("2001:db8::70".parse().unwrap(), BTreeSet::from([2575]));
        Inputs {
            services,
            nat_servers: BTreeSet::from([("10.0.0.31".parse().unwrap(), 104)]),
            management_ports: vec![9443],
            lockdown: vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8:10::/64".parse().unwrap(),
            ],
            custom: "tcp dport 161 ip saddr 192.0.2.0/24 accept\n".into(),
        }
    }

    #[test]
    fn the_script_names_every_service_port_and_lockdown_network() {
        let s = generate(&inputs());
        let t = &s.text;
        assert!(t.starts_with("add table inet medlb\ndelete table inet medlb\n"));
        assert!(
            t.contains("elements = { 10.0.0.70 . 104, 10.0.0.70 . 11112 }"),
            "{t}"
        );
        assert!(t.contains("elements = { 2001:db8::70 . 2575 }"), "{t}");
        assert!(
            t.contains(
                "set lockdown_v4 { type ipv4_addr; flags interval; elements = { 192.0.2.0/24 }; }"
            ),
            "{t}"
        );
        assert!(
            t.contains("ip saddr @lockdown_v4 tcp dport 9443 accept"),
            "{t}"
        );
        assert!(!t.contains("\t\ttcp dport 9443 accept"), "{t}");
        assert!(t.contains("elements = { 10.0.0.31 . 104 }"), "{t}");
        assert_eq!(
            t.lines().nth(s.custom_first_line - 1),
            Some("tcp dport 161 ip saddr 192.0.2.0/24 accept")
        );
        // the final drop comes after the custom rules are consulted
        assert!(
            t.find("jump input_custom").unwrap() < t.find("counter name dropped_other").unwrap()
        );

        let open = generate(&Inputs {
            lockdown: vec![],
            ..inputs()
        });
        assert!(
            open.text.contains("\t\ttcp dport 9443 accept\n"),
            "{}",
            open.text
        );
    }

    #[test]
    fn custom_rules_stay_in_their_chain() {
        assert_eq!(check_custom("tcp dport { 22, 161 } accept\n"), Ok(()));
        assert_eq!(
            check_custom("ip saddr 10.0.0.1 accept comment \"}\"\n"),
            Ok(())
        );
        assert_eq!(
            check_custom("accept\n}\nchain evil {\n"),
            Err(CustomError::Escapes(2))
        );
        assert_eq!(check_custom("tcp dport { 22"), Err(CustomError::Unclosed));
    }

    #[test]
    fn nft_messages_point_at_the_custom_rules_own_lines() {
        let mut i = inputs();
        i.custom = "tcp dport 161 accept\ntcp dport 1x2 accept\n".into();
        let s = generate(&i);
        let n = s.custom_first_line + 1;
        let msg = format!(
            "/dev/stdin:{n}:11-13: Error: syntax error\ntcp dport 1x2 accept\n          ^^^"
        );
        let e = explain(&s, &msg);
        assert!(
            e.starts_with("custom rules, line 2, column 11-13: Error: syntax error"),
            "{e}"
        );
        assert!(e.contains("tcp dport 1x2 accept"), "{e}");
    }

    /// The script is valid for the kernel's nf_tables, with and without lockdown and
    /// custom rules (checked by nft itself, without applying).
    #[test]
    fn nft_accepts_the_script() {
        assert!(
            nft::available(),
            "{} is missing: install nftables",
            nft::NFT
        );
        for i in [
            inputs(),
            Inputs::default(),
            Inputs {
                lockdown: vec![],
                custom: String::new(),
                ..inputs()
            },
        ] {
            let s = generate(&i);
            if let Err(e) = nft::check(&s.text) {
                panic!(
                    "nft -c refused (it needs root, as tests/run runs the tests):\n{}\n{e}",
                    s.text
                );
            }
        }
    }
}
