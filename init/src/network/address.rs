//! IPv4 addresses over rtnetlink: list those on a link, add and remove one.

use super::config::Ipv4Cidr;
use futures_util::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use std::net::{IpAddr, Ipv4Addr};

/// The IPv4 addresses on link `index`, with their messages (for deletion).
pub async fn list(
    h: &Handle,
    index: u32,
) -> Result<Vec<(Ipv4Cidr, AddressMessage)>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut s = h.address().get().set_link_index_filter(index).execute();
    while let Some(m) = s.try_next().await? {
        if m.header.family != AddressFamily::Inet || m.header.index != index {
            continue;
        }
        let ip = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let ip = ip.or_else(|| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })
        });
        if let Some(ip) = ip {
            out.push((
                Ipv4Cidr {
                    addr: ip,
                    prefix: m.header.prefix_len,
                },
                m,
            ));
        }
    }
    Ok(out)
}

/// Add an address (with its broadcast address).
pub async fn add(h: &Handle, index: u32, c: &Ipv4Cidr) -> Result<(), rtnetlink::Error> {
    let mut req = h.address().add(index, IpAddr::V4(c.addr), c.prefix);
    if c.prefix < 31 {
        let bcast: Ipv4Addr = c.broadcast();
        req.message_mut()
            .attributes
            .push(AddressAttribute::Broadcast(bcast));
    }
    req.execute().await
}

/// Remove an address.
pub async fn del(h: &Handle, m: AddressMessage) -> Result<(), rtnetlink::Error> {
    h.address().del(m).execute().await
}
