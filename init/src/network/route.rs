//! IPv4 routes of the main table over rtnetlink: list them, add one (replacing a
//! route to the same destination), delete one.

use super::config::Ipv4Cidr;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};
use std::net::Ipv4Addr;

/// A route as the appliance cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub metric: Option<u32>,
}

impl Route {
    /// Same destination and metric (what the kernel replaces).
    pub fn same_key(&self, o: &Route) -> bool {
        self.destination == o.destination && self.metric.unwrap_or(0) == o.metric.unwrap_or(0)
    }

    /// Whether `o` (from the kernel) already is this route.
    pub fn satisfied_by(&self, o: &Route) -> bool {
        self.same_key(o) && self.gateway == o.gateway && (self.oif.is_none() || self.oif == o.oif)
    }

    fn message(&self) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(self.destination.network(), self.destination.prefix)
            .protocol(RouteProtocol::Static);
        if let Some(gw) = self.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = self.oif {
            b = b.output_interface(oif);
        }
        if let Some(m) = self.metric {
            b = b.priority(m);
        }
        b.build()
    }
}

/// Unicast IPv4 routes of the main table.
pub async fn list(h: &Handle) -> Result<Vec<(Route, RouteMessage)>, rtnetlink::Error> {
    let mut out = Vec::new();
    let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut s = h.route().get(filter).execute();
    while let Some(m) = s.try_next().await? {
        if m.header.table != RouteHeader::RT_TABLE_MAIN || m.header.kind != RouteType::Unicast {
            continue;
        }
        let mut r = Route {
            destination: Ipv4Cidr {
                addr: Ipv4Addr::UNSPECIFIED,
                prefix: m.header.destination_prefix_length,
            },
            gateway: None,
            oif: None,
            metric: None,
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => r.destination.addr = *ip,
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => r.gateway = Some(*ip),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::Priority(p) => r.metric = Some(*p),
                _ => {}
            }
        }
        out.push((r, m));
    }
    Ok(out)
}

/// Add or replace a route.
pub async fn replace(h: &Handle, r: &Route) -> Result<(), rtnetlink::Error> {
    h.route().add(r.message()).replace().execute().await
}

/// Delete a route (as listed).
pub async fn del(h: &Handle, m: RouteMessage) -> Result<(), rtnetlink::Error> {
    h.route().del(m).execute().await
}
