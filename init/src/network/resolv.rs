//! /etc/resolv.conf: written from the static DNS servers of the settings and those
//! learnt over DHCP, only when its content changes, atomically.

use appliance::atomic;
use std::net::Ipv4Addr;
use std::path::Path;

/// The file's text.
pub fn render(servers: &[Ipv4Addr], search: &[String]) -> String {
    let mut s = String::from("# written by init from /data/config/network.toml\n");
    if !search.is_empty() {
        s += &format!("search {}\n", search.join(" "));
    }
    let mut seen = Vec::new();
    for ip in servers {
        if !seen.contains(ip) {
            seen.push(*ip);
            s += &format!("nameserver {ip}\n");
        }
    }
    s
}

/// Write `path` if its content differs; returns whether it was written.
pub fn write(path: &Path, servers: &[Ipv4Addr], search: &[String]) -> std::io::Result<bool> {
    let text = render(servers, search);
    if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
        return Ok(false);
    }
    atomic::write(path, text.as_bytes(), 0o644).map_err(std::io::Error::other)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_unique_servers() {
        let t = render(
            &[
                Ipv4Addr::new(192, 0, 2, 53),
                Ipv4Addr::new(192, 0, 2, 53),
                Ipv4Addr::new(192, 0, 2, 54),
            ],
            &["example.org".into()],
        );
        assert_eq!(
            t,
            "# written by init from /data/config/network.toml\nsearch example.org\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n"
        );
    }
}
