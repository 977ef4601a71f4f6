//! Addresses and subnets: the one place the appliance does subnet arithmetic (on
//! `ipnet`), for the network settings, the service addresses lbcore adds and IPVS's
//! persistence netmasks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

/// An IPv4 address with its prefix length, written `192.0.2.10/24` (the address of a
/// host on its subnet, not only the subnet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    fn net(&self) -> Ipv4Net {
        // the prefix is checked when parsed; a larger one built in code means a host
        Ipv4Net::new(self.addr, self.prefix.min(32)).unwrap_or_else(|_| Ipv4Net::from(self.addr))
    }

    /// The netmask.
    pub fn netmask(&self) -> Ipv4Addr {
        self.net().netmask()
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.net().network()
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        self.net().broadcast()
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.net().contains(&ip)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why text is not an address with a prefix; the message is the product's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("prefix or netmask missing (e.g. {0}/24 or {0} 255.255.255.0)")]
    MissingPrefix(String),
    #[error("not an IPv4 address: {0:?}")]
    Address(String),
    #[error("not a netmask: {0:?}")]
    Netmask(String),
    #[error("netmask {0} is not contiguous")]
    NotContiguous(String),
    #[error("prefix must be a number from 0 to 32, not {0:?}")]
    Prefix(String),
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;
    /// `a.b.c.d/24`, `a.b.c.d/255.255.255.0` or `a.b.c.d 255.255.255.0`.
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a.trim(), p.trim()),
            None => match s.split_once(char::is_whitespace) {
                Some((a, p)) => (a.trim(), p.trim()),
                None => {
                    if s.parse::<Ipv4Addr>().is_ok() {
                        return Err(CidrError::MissingPrefix(s.to_string()));
                    }
                    (s, "")
                }
            },
        };
        let addr: Ipv4Addr = a.parse().map_err(|_| CidrError::Address(a.to_string()))?;
        let prefix = if p.contains('.') {
            let mask: Ipv4Addr = p.parse().map_err(|_| CidrError::Netmask(p.to_string()))?;
            netmask_to_prefix(mask).ok_or_else(|| CidrError::NotContiguous(p.to_string()))?
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|n| *n <= 32)
                .ok_or_else(|| CidrError::Prefix(p.to_string()))?
        };
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The address a peer really has: an IPv4 client of a dual-stack socket shows as an
/// IPv4-mapped IPv6 address (`::ffff:192.0.2.7`), which no IPv4 network contains.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A dotted netmask as a prefix length; `None` for a mask that is not contiguous.
pub fn netmask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    ipnet::ipv4_mask_to_prefix(mask).ok()
}

/// The IPv4 netmask of a prefix length (32 and above: a host).
pub fn prefix_to_netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Net::new(Ipv4Addr::UNSPECIFIED, prefix.min(32)).map_or(Ipv4Addr::BROADCAST, |n| n.netmask())
}

/// Whether `address` is in the subnet of `net` with `prefix` (false across families).
pub fn in_subnet(net: IpAddr, prefix: u8, address: IpAddr) -> bool {
    let max = if net.is_ipv4() { 32 } else { 128 };
    IpNet::new(net, prefix.min(max)).is_ok_and(|n| n.contains(&address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_forms() {
        let c: Ipv4Cidr = "192.0.2.10/24".parse().unwrap();
        assert_eq!(c.to_string(), "192.0.2.10/24");
        assert_eq!("192.0.2.10/255.255.255.0".parse::<Ipv4Cidr>().unwrap(), c);
        assert_eq!("192.0.2.10 255.255.255.0".parse::<Ipv4Cidr>().unwrap(), c);
        let e = |s: &str| s.parse::<Ipv4Cidr>().unwrap_err().to_string();
        assert!(e("192.0.2.10").contains("missing"));
        assert!(e("192.0.2.300/24").contains("not an IPv4"));
        assert!(e("192.0.2.1/33").contains("0 to 32"));
        assert!(e("192.0.2.1/255.0.255.0").contains("contiguous"));
        assert_eq!(c.network(), Ipv4Addr::new(192, 0, 2, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(192, 0, 2, 255));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(c.contains(Ipv4Addr::new(192, 0, 2, 200)));
        assert!(!c.contains(Ipv4Addr::new(192, 0, 3, 1)));
    }

    #[test]
    fn masks_and_prefixes() {
        assert_eq!(netmask_to_prefix(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(netmask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(prefix_to_netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(prefix_to_netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(prefix_to_netmask(20), Ipv4Addr::new(255, 255, 240, 0));
    }

    #[test]
    fn subnets() {
        let n: IpAddr = "172.26.11.10".parse().unwrap();
        assert!(in_subnet(n, 24, "172.26.11.70".parse().unwrap()));
        assert!(!in_subnet(n, 24, "172.26.12.70".parse().unwrap()));
        assert!(in_subnet(n, 0, "8.8.8.8".parse().unwrap()));
        let n6: IpAddr = "fd00:1::5".parse().unwrap();
        assert!(in_subnet(n6, 64, "fd00:1::70".parse().unwrap()));
        assert!(!in_subnet(n6, 64, "fd00:2::70".parse().unwrap()));
        assert!(!in_subnet(n, 24, n6));
    }
}
