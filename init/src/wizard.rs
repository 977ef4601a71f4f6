//! The first-boot setup wizard: asks on a console for the management network
//! (DHCP or static address, gateway, DNS), the hostname and the admin password,
//! validates each answer as it is typed, shows a summary and writes the files only
//! once the summary is confirmed. The exact texts are the console protocol that the
//! image's boot test drives (see `init/README.md`); change them only together.

use crate::admin;
use crate::console::{Console, ReadError};
use crate::layout::Layout;
use crate::network::config::{
    Interface, Ipv4Cidr, NetworkConfig, Problem, check_gateway, check_host_address, check_hostname,
};
use appliance::net::CidrError;
use std::net::Ipv4Addr;

/// First line of the wizard.
pub const BANNER: &str = "=== Medical load balancer: first-boot setup ===";
pub const PROMPT_MODE: &str = "Network mode (dhcp/static): ";
pub const PROMPT_ADDRESS: &str = "IPv4 address with prefix or netmask (e.g. 192.0.2.10/24): ";
pub const PROMPT_GATEWAY: &str = "Gateway (empty for none): ";
pub const PROMPT_DNS: &str = "DNS servers, comma-separated (empty for none): ";
pub const PROMPT_HOSTNAME: &str = "Hostname: ";
pub const PROMPT_PASSWORD: &str = "Admin password (at least 8 characters): ";
pub const PROMPT_PASSWORD_AGAIN: &str = "Repeat admin password: ";
pub const PROMPT_CONFIRM: &str = "Apply these settings? (yes/no): ";
/// Printed once the files are written.
pub const SAVED: &str = "Settings saved.";

/// How the wizard talks: a console, or a script in unit tests.
pub trait Io {
    /// Show `prompt`, return the answer (trimmed).
    fn ask(&mut self, prompt: &str, secret: bool) -> Result<String, ReadError>;
    /// Show text (a newline is added).
    fn say(&mut self, text: &str);
}

impl Io for Console {
    fn ask(&mut self, prompt: &str, secret: bool) -> Result<String, ReadError> {
        Console::ask(self, prompt, secret)
    }
    fn say(&mut self, text: &str) {
        self.write_str(text);
        self.write_str("\n");
    }
}

/// Ask until `parse` accepts; each refusal prints `error: <reason>`.
fn ask_valid<T, E: std::fmt::Display>(
    io: &mut dyn Io,
    prompt: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<T, ReadError> {
    loop {
        let answer = io.ask(prompt, false)?;
        match parse(&answer) {
            Ok(v) => return Ok(v),
            Err(reason) => io.say(&format!("error: {reason}")),
        }
    }
}

/// `dhcp` or `static`.
pub fn parse_mode(s: &str) -> Result<bool, Problem> {
    match s.to_ascii_lowercase().as_str() {
        "dhcp" | "d" => Ok(true),
        "static" | "s" => Ok(false),
        _ => Err(Problem::from("answer dhcp or static")),
    }
}

/// An address with prefix or netmask, usable by a host.
pub fn parse_address(s: &str) -> Result<Ipv4Cidr, Problem> {
    if s.is_empty() {
        return Err(Problem::from("an address is required"));
    }
    let c: Ipv4Cidr = s.parse().map_err(|e: CidrError| Problem(e.to_string()))?;
    check_host_address(&c)?;
    Ok(c)
}

/// A gateway inside the subnet of `on`, or nothing.
pub fn parse_gateway(s: &str, on: &Ipv4Cidr) -> Result<Option<Ipv4Addr>, Problem> {
    if s.is_empty() {
        return Ok(None);
    }
    let gw: Ipv4Addr = s
        .parse()
        .map_err(|_| Problem(format!("not an IPv4 address: {s:?}")))?;
    check_gateway(gw, on)?;
    Ok(Some(gw))
}

/// Comma- or space-separated DNS server addresses.
pub fn parse_dns(s: &str) -> Result<Vec<Ipv4Addr>, Problem> {
    let mut out = Vec::new();
    for part in s.split([',', ' ']).filter(|p| !p.is_empty()) {
        let ip: Ipv4Addr = part
            .parse()
            .map_err(|_| Problem(format!("not an IPv4 address: {part:?}")))?;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(Problem(format!("{ip} cannot be a DNS server")));
        }
        out.push(ip);
    }
    if out.len() > 3 {
        return Err(Problem::from("at most 3 DNS servers"));
    }
    Ok(out)
}

/// A host name.
pub fn parse_hostname(s: &str) -> Result<String, Problem> {
    check_hostname(s)?;
    Ok(s.to_ascii_lowercase())
}

/// Ask the network questions; the settings are for interface `ifname`.
pub fn ask_network(io: &mut dyn Io, ifname: &str) -> Result<NetworkConfig, ReadError> {
    let dhcp = ask_valid(io, PROMPT_MODE, parse_mode)?;
    let mut ifc = Interface {
        name: ifname.to_string(),
        dhcp,
        ..Default::default()
    };
    let mut dns = Vec::new();
    if !dhcp {
        let addr = ask_valid(io, PROMPT_ADDRESS, parse_address)?;
        ifc.gateway = ask_valid(io, PROMPT_GATEWAY, |s| parse_gateway(s, &addr))?;
        ifc.addresses = vec![addr];
        dns = ask_valid(io, PROMPT_DNS, parse_dns)?;
    }
    let hostname = ask_valid(io, PROMPT_HOSTNAME, parse_hostname)?;
    Ok(NetworkConfig {
        hostname: Some(hostname),
        dns,
        interfaces: vec![ifc],
        ..Default::default()
    })
}

/// Ask the new admin password twice.
pub fn ask_password(io: &mut dyn Io) -> Result<String, ReadError> {
    loop {
        let p = io.ask(PROMPT_PASSWORD, true)?;
        if let Err(reason) = admin::check_password(&p) {
            io.say(&format!("error: {reason}"));
            continue;
        }
        let again = io.ask(PROMPT_PASSWORD_AGAIN, true)?;
        if again == p {
            return Ok(p);
        }
        io.say("error: passwords do not match");
    }
}

/// `yes` or `no`.
pub fn ask_confirm(io: &mut dyn Io, prompt: &str) -> Result<bool, ReadError> {
    ask_valid(io, prompt, |s| match s.to_ascii_lowercase().as_str() {
        "yes" | "y" => Ok(true),
        "no" | "n" => Ok(false),
        _ => Err(Problem::from("answer yes or no")),
    })
}

/// The summary shown before confirmation.
pub fn summary(net: &NetworkConfig, password: bool) -> String {
    let mut s = String::from("Summary:\n");
    for ifc in &net.interfaces {
        s += &format!("  interface: {}\n", ifc.name);
        if ifc.dhcp {
            s += "  mode:      dhcp\n";
        } else {
            s += "  mode:      static\n";
            for a in &ifc.addresses {
                s += &format!("  address:   {a}\n");
            }
            let gw = ifc.gateway.map(|g| g.to_string());
            s += &format!("  gateway:   {}\n", gw.as_deref().unwrap_or("none"));
            let dns: Vec<String> = net.dns.iter().map(|d| d.to_string()).collect();
            let dns = if dns.is_empty() {
                "none".to_string()
            } else {
                dns.join(", ")
            };
            s += &format!("  dns:       {dns}\n");
        }
    }
    s += &format!("  hostname:  {}\n", net.hostname.as_deref().unwrap_or(""));
    if password {
        s += "  password:  (set)\n";
    }
    s
}

/// The whole first-boot dialogue; returns what was confirmed.
pub fn first_boot(io: &mut dyn Io, ifname: &str) -> Result<(NetworkConfig, String), ReadError> {
    loop {
        io.say(BANNER);
        let net = ask_network(io, ifname)?;
        let password = ask_password(io)?;
        io.say(&summary(&net, true));
        if ask_confirm(io, PROMPT_CONFIRM)? {
            return Ok((net, password));
        }
        io.say("Nothing was saved; starting over.");
    }
}

/// Re-run the network part only (menu).
pub fn network_again(io: &mut dyn Io, ifname: &str) -> Result<Option<NetworkConfig>, ReadError> {
    let net = ask_network(io, ifname)?;
    io.say(&summary(&net, false));
    Ok(ask_confirm(io, PROMPT_CONFIRM)?.then_some(net))
}

/// Errors saving the wizard's results.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error("saving the network settings: {0}")]
    Network(#[from] appliance::atomic::AtomicWriteError),
}

/// Write the network settings (atomically).
pub fn save_network(layout: &Layout, net: &NetworkConfig) -> Result<(), SaveError> {
    appliance::atomic::write(&layout.network_config(), net.to_toml().as_bytes(), 0o644)?;
    Ok(())
}

/// Write admin.toml, then network.toml (whose presence marks setup as done).
pub fn save_first_boot(
    layout: &Layout,
    net: &NetworkConfig,
    password: &str,
) -> Result<(), SaveError> {
    admin::save(&layout.admin_config(), password)?;
    save_network(layout, net)
}

/// The interface the wizard configures: the first NIC backed by a device, by name,
/// else `eth0`.
pub fn default_interface(sys: &std::path::Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(sys.join("class/net"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next().unwrap_or_else(|| "eth0".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    struct Script {
        answers: VecDeque<&'static str>,
        out: String,
    }

    impl Io for Script {
        fn ask(&mut self, prompt: &str, _secret: bool) -> Result<String, ReadError> {
            self.out += prompt;
            let a = self.answers.pop_front().ok_or(ReadError::Closed)?;
            self.out += a;
            self.out += "\n";
            Ok(a.to_string())
        }
        fn say(&mut self, text: &str) {
            self.out += text;
            self.out += "\n";
        }
    }

    fn script(a: &[&'static str]) -> Script {
        Script {
            answers: a.iter().copied().collect(),
            out: String::new(),
        }
    }

    #[test]
    fn static_with_retries() {
        let mut s = script(&[
            "maybe",
            "static",
            "192.0.2.10",
            "192.0.2.10/24",
            "10.0.0.1",
            "192.0.2.1",
            "192.0.2.53, x",
            "192.0.2.53,192.0.2.54",
            "bad_name",
            "LB1",
            "short",
            "longenough",
            "different",
            "longenough",
            "longenough",
            "perhaps",
            "yes",
        ]);
        let (net, pw) = first_boot(&mut s, "eth0").unwrap();
        assert_eq!(pw, "longenough");
        assert_eq!(net.hostname.as_deref(), Some("lb1"));
        let ifc = &net.interfaces[0];
        assert!(!ifc.dhcp);
        assert_eq!(ifc.addresses[0].to_string(), "192.0.2.10/24");
        assert_eq!(ifc.gateway, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(net.dns.len(), 2);
        for reason in [
            "error: answer dhcp or static",
            "error: prefix or netmask missing",
            "error: gateway 10.0.0.1 is outside the subnet 192.0.2.0/24",
            "error: not an IPv4 address: \"x\"",
            "error: hostname may hold only",
            "error: password too short",
            "error: passwords do not match",
            "error: answer yes or no",
        ] {
            assert!(s.out.contains(reason), "missing {reason:?} in\n{}", s.out);
        }
        net.validate().unwrap();
    }

    #[test]
    fn dhcp_and_start_over() {
        let mut s = script(&[
            "dhcp",
            "a",
            "password1",
            "password1",
            "no",
            "dhcp",
            "b",
            "password2",
            "password2",
            "y",
        ]);
        let (net, pw) = first_boot(&mut s, "ens3").unwrap();
        assert_eq!(pw, "password2");
        assert_eq!(net.hostname.as_deref(), Some("b"));
        assert!(net.interfaces[0].dhcp);
        assert_eq!(net.interfaces[0].name, "ens3");
        assert!(s.out.contains("Nothing was saved"));
    }

    #[test]
    fn closed_midway() {
        let mut s = script(&["static", "192.0.2.10/24"]);
        assert_eq!(first_boot(&mut s, "eth0").unwrap_err(), ReadError::Closed);
    }
}
