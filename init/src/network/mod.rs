//! The network: makes the kernel's links, addresses, routes, VLANs and bonds match
//! the settings file over rtnetlink, writes /etc/resolv.conf, and runs a DHCP client
//! where chosen. Applying the same settings again changes nothing; applying new ones
//! changes only what differs (addresses and routes that the previous settings had
//! and the new ones do not are removed; addresses others added, e.g. lbcore's
//! virtual IPs, are left alone).

pub mod address;
pub mod cli;
pub use appliance::files::network as config;
pub mod dhcp;
pub mod link;
pub mod resolv;
pub mod route;

use config::{Ipv4Cidr, Kind, NetworkConfig};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What an apply changed, and what failed.
#[derive(Debug, Default)]
pub struct Report {
    pub changes: Vec<String>,
    pub errors: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.changes.is_empty() {
            write!(f, "no changes")?;
        } else {
            write!(f, "{}", self.changes.join("; "))?;
        }
        for e in &self.errors {
            write!(f, "; error: {e}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Dns {
    statics: Vec<Ipv4Addr>,
    search: Vec<String>,
    learnt: BTreeMap<String, Vec<Ipv4Addr>>,
    path: Option<PathBuf>,
}

impl Dns {
    fn write(&self) -> Option<String> {
        let path = self.path.as_ref()?;
        let mut all = self.statics.clone();
        for v in self.learnt.values() {
            all.extend(v);
        }
        match resolv::write(path, &all, &self.search) {
            Ok(true) => Some(format!("{} written", path.display())),
            Ok(false) => None,
            Err(e) => Some(format!("error writing {}: {e}", path.display())),
        }
    }
}

/// Applies settings and keeps the DHCP clients between applies.
pub struct Manager {
    handle: Option<rtnetlink::Handle>,
    applied: Option<NetworkConfig>,
    dhcp: BTreeMap<String, dhcp::Client>,
    dns: Arc<Mutex<Dns>>,
}

fn default_route(gw: Ipv4Addr, oif: u32) -> route::Route {
    route::Route {
        destination: Ipv4Cidr {
            addr: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
        },
        gateway: Some(gw),
        oif: Some(oif),
        metric: None,
    }
}

impl Manager {
    /// `resolv`: where resolv.conf goes (None: leave it alone).
    pub fn new(resolv: Option<PathBuf>) -> Self {
        Manager {
            handle: None,
            applied: None,
            dhcp: BTreeMap::new(),
            dns: Arc::new(Mutex::new(Dns {
                path: resolv,
                ..Default::default()
            })),
        }
    }

    fn handle(&mut self) -> anyhow::Result<rtnetlink::Handle> {
        if let Some(h) = &self.handle {
            return Ok(h.clone());
        }
        let (conn, h, _) = rtnetlink::new_connection()
            .map_err(|e| anyhow::anyhow!("opening the rtnetlink socket: {e}"))?;
        tokio::spawn(conn);
        self.handle = Some(h.clone());
        Ok(h)
    }

    /// Make the kernel match `cfg`.
    pub async fn apply(&mut self, cfg: &NetworkConfig) -> anyhow::Result<Report> {
        cfg.validate()?;
        let h = self.handle()?;
        let mut rep = Report::default();
        let prev = self.applied.clone().unwrap_or_default();
        macro_rules! try_or_log {
            ($what:expr, $e:expr) => {
                match $e {
                    Ok(v) => Some(v),
                    Err(e) => {
                        rep.errors.push(format!("{}: {e}", $what));
                        None
                    }
                }
            };
        }

        let mut links = link::list(&h).await?;
        if let Some(lo) = links.iter().find(|l| l.name == "lo")
            && !lo.up
            && try_or_log!("lo: up", link::set_up(&h, lo.index).await).is_some()
        {
            rep.changes.push("lo: up".into());
            links = link::list(&h).await?;
        }

        // Links of the previous settings that are gone from the new ones.
        for old in prev.interfaces.iter().filter(|i| i.kind != Kind::Ethernet) {
            if !cfg
                .interfaces
                .iter()
                .any(|i| i.name == old.name && i.kind == old.kind)
                && let Some(l) = links.iter().find(|l| l.name == old.name)
                && try_or_log!(
                    format!("{}: delete", old.name),
                    link::delete(&h, l.index).await
                )
                .is_some()
            {
                rep.changes.push(format!("{}: deleted", old.name));
            }
        }

        // Bonds, then VLANs (which may sit on a bond).
        for ifc in cfg.interfaces.iter().filter(|i| i.kind == Kind::Bond) {
            if !links.iter().any(|l| l.name == ifc.name) {
                let mode = ifc.bond_mode.unwrap_or_default();
                if try_or_log!(
                    format!("{}: create bond", ifc.name),
                    link::add_bond(&h, &ifc.name, mode).await
                )
                .is_some()
                {
                    rep.changes.push(format!("{}: bond created", ifc.name));
                }
                links = link::list(&h).await?;
            }
            let Some(bond) = links.iter().find(|l| l.name == ifc.name).cloned() else {
                continue;
            };
            for m in &ifc.members {
                match links.iter().find(|l| &l.name == m) {
                    Some(ml) if ml.controller == Some(bond.index) => {}
                    Some(ml) => {
                        if try_or_log!(
                            format!("{}: enslave {m}", ifc.name),
                            link::enslave(&h, ml.index, bond.index).await
                        )
                        .is_some()
                        {
                            rep.changes.push(format!("{}: +{m}", ifc.name));
                        }
                    }
                    None => rep
                        .errors
                        .push(format!("{}: member {m} does not exist", ifc.name)),
                }
            }
            links = link::list(&h).await?;
        }
        for ifc in cfg.interfaces.iter().filter(|i| i.kind == Kind::Vlan) {
            let (Some(parent), Some(id)) = (ifc.parent.as_deref(), ifc.vlan_id) else {
                continue;
            };
            let Some(p) = links.iter().find(|l| l.name == parent).cloned() else {
                rep.errors
                    .push(format!("{}: parent {parent} does not exist", ifc.name));
                continue;
            };
            if let Some(l) = links.iter().find(|l| l.name == ifc.name).cloned() {
                if l.vlan_id == Some(id) && l.parent == Some(p.index) {
                    continue;
                }
                try_or_log!(
                    format!("{}: delete", ifc.name),
                    link::delete(&h, l.index).await
                );
            }
            if try_or_log!(
                format!("{}: create vlan", ifc.name),
                link::add_vlan(&h, &ifc.name, p.index, id).await
            )
            .is_some()
            {
                rep.changes
                    .push(format!("{}: vlan {id} on {parent} created", ifc.name));
            }
            links = link::list(&h).await?;
        }

        // MTU and up, members of bonds first.
        let mut order: Vec<&config::Interface> = cfg.interfaces.iter().collect();
        order.sort_by_key(|i| match i.kind {
            Kind::Ethernet => 0,
            Kind::Bond => 1,
            Kind::Vlan => 2,
        });
        for ifc in &order {
            let Some(l) = links.iter().find(|l| l.name == ifc.name).cloned() else {
                rep.errors.push(format!("{}: no such interface", ifc.name));
                continue;
            };
            if let Some(mtu) = ifc.mtu
                && l.mtu != Some(mtu)
                && try_or_log!(
                    format!("{}: mtu {mtu}", ifc.name),
                    link::set_mtu(&h, l.index, mtu).await
                )
                .is_some()
            {
                rep.changes.push(format!("{}: mtu {mtu}", ifc.name));
            }
            if !l.up
                && try_or_log!(format!("{}: up", ifc.name), link::set_up(&h, l.index).await)
                    .is_some()
            {
                rep.changes.push(format!("{}: up", ifc.name));
            }
        }
        // Bond members are brought up by enslaving; make sure.
        for ifc in cfg.interfaces.iter().filter(|i| i.kind == Kind::Bond) {
            for m in &ifc.members {
                if let Some(l) = links.iter().find(|l| &l.name == m)
                    && !link::by_name(&h, m)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|x| x.up)
                {
                    try_or_log!(format!("{m}: up"), link::set_up(&h, l.index).await);
                }
            }
        }

        // Addresses.
        for ifc in &cfg.interfaces {
            let Some(l) = links.iter().find(|l| l.name == ifc.name) else {
                continue;
            };
            let have = try_or_log!(
                format!("{}: addresses", ifc.name),
                address::list(&h, l.index).await
            )
            .unwrap_or_default();
            for a in &ifc.addresses {
                if !have.iter().any(|(c, _)| c == a)
                    && try_or_log!(
                        format!("{}: add {a}", ifc.name),
                        address::add(&h, l.index, a).await
                    )
                    .is_some()
                {
                    rep.changes.push(format!("{}: +{a}", ifc.name));
                }
            }
            let before: Vec<Ipv4Cidr> = prev
                .interfaces
                .iter()
                .filter(|p| p.name == ifc.name)
                .flat_map(|p| p.addresses.clone())
                .collect();
            // Removing the interface's primary address would take every other address
            // of its subnet with it (the new one, lbcore's service addresses) unless the
            // kernel promotes one of them to primary instead.
            promote_secondaries(&ifc.name);
            for (c, m) in have {
                if before.contains(&c)
                    && !ifc.addresses.contains(&c)
                    && try_or_log!(
                        format!("{}: remove {c}", ifc.name),
                        address::del(&h, m).await
                    )
                    .is_some()
                {
                    rep.changes.push(format!("{}: -{c}", ifc.name));
                }
            }
        }

        // Routes.
        let index_of = |n: &str| links.iter().find(|l| l.name == n).map(|l| l.index);
        let desired = |c: &NetworkConfig| -> Vec<route::Route> {
            let mut v = Vec::new();
            for ifc in &c.interfaces {
                if let (Some(gw), Some(i)) = (ifc.gateway, index_of(&ifc.name)) {
                    v.push(default_route(gw, i));
                }
            }
            for r in &c.routes {
                v.push(route::Route {
                    destination: Ipv4Cidr {
                        addr: r.destination.network(),
                        prefix: r.destination.prefix,
                    },
                    gateway: r.gateway,
                    oif: r.interface.as_deref().and_then(index_of),
                    metric: r.metric,
                });
            }
            v
        };
        let want = desired(cfg);
        let had = desired(&prev);
        let existing = try_or_log!("routes", route::list(&h).await).unwrap_or_default();
        for (r, m) in &existing {
            if had.iter().any(|o| o.satisfied_by(r))
                && !want.iter().any(|w| w.satisfied_by(r) || w.same_key(r))
                && try_or_log!(
                    format!("route {} delete", r.destination),
                    route::del(&h, m.clone()).await
                )
                .is_some()
            {
                rep.changes.push(format!("route {} removed", r.destination));
            }
        }
        for w in &want {
            if !existing.iter().any(|(r, _)| w.satisfied_by(r))
                && try_or_log!(
                    format!("route {}", w.destination),
                    route::replace(&h, w).await
                )
                .is_some()
            {
                let via = w.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
                rep.changes.push(format!("route {}{via}", w.destination));
            }
        }

        // DNS.
        {
            let mut dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
            dns.statics = cfg.dns.clone();
            dns.search = cfg.search.clone();
            if let Some(msg) = dns.write() {
                rep.changes.push(msg);
            }
        }

        // DHCP clients.
        let dhcp_names: Vec<String> = cfg
            .interfaces
            .iter()
            .filter(|i| i.dhcp)
            .map(|i| i.name.clone())
            .collect();
        let gone: Vec<String> = self
            .dhcp
            .keys()
            .filter(|n| !dhcp_names.contains(n))
            .cloned()
            .collect();
        for n in gone {
            if let Some(c) = self.dhcp.remove(&n) {
                c.stop().await;
                rep.changes.push(format!("{n}: dhcp stopped"));
            }
        }
        for n in dhcp_names {
            if self.dhcp.contains_key(&n) {
                continue;
            }
            let Some(l) = links.iter().find(|l| l.name == n) else {
                continue;
            };
            let dns = self.dns.clone();
            let sink: dhcp::DnsSink = Arc::new(move |ifname: &str, servers: Vec<Ipv4Addr>| {
                let mut d = dns.lock().unwrap_or_else(|e| e.into_inner());
                d.learnt.insert(ifname.to_string(), servers);
                if let Some(msg) = d.write() {
                    crate::info!("dns: {msg}");
                }
            });
            let c = dhcp::Client::start(h.clone(), n.clone(), l.index, l.mac.clone(), sink);
            self.dhcp.insert(n.clone(), c);
            rep.changes.push(format!("{n}: dhcp started"));
        }

        self.applied = Some(cfg.clone());
        Ok(rep)
    }

    /// The current DHCP lease of `ifname`.
    pub fn lease(&self, ifname: &str) -> Option<dhcp::Lease> {
        self.dhcp
            .get(ifname)
            .and_then(|c| c.lease.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Release every DHCP lease (shutdown).
    pub async fn release(&mut self) {
        let clients = std::mem::take(&mut self.dhcp);
        for (_, c) in clients {
            c.stop().await;
        }
    }
}

/// Lets the kernel keep an interface's other addresses of a subnet when its primary one
/// is removed (net.ipv4.conf.IFNAME.promote_secondaries = 1); a failure is logged.
fn promote_secondaries(ifname: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/promote_secondaries");
    if let Err(e) = std::fs::write(&path, "1") {
        crate::info!("network: cannot set {path}: {e}");
    }
}
