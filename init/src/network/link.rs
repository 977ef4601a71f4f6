//! Links over rtnetlink: list them, bring them up, set their MTU, and create the
//! VLAN and bond interfaces of the settings (enslaving the bond's members).

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    BondMode as NlBondMode, InfoData, InfoKind, InfoVlan, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use rtnetlink::{Handle, LinkBond, LinkUnspec, LinkVlan};

use super::config::BondMode;

/// What we need to know about an existing link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: Option<u32>,
    pub up: bool,
    pub kind: Option<String>,
    pub vlan_id: Option<u16>,
    pub parent: Option<u32>,
    pub controller: Option<u32>,
    pub mac: Vec<u8>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mtu: None,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
            vlan_id: None,
            parent: None,
            controller: None,
            mac: Vec::new(),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Mtu(v) => l.mtu = Some(*v),
                LinkAttribute::Link(p) => l.parent = Some(*p),
                LinkAttribute::Controller(c) => l.controller = Some(*c),
                LinkAttribute::Address(a) => l.mac = a.clone(),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Vlan(v)) => {
                                for x in v {
                                    if let InfoVlan::Id(id) = x {
                                        l.vlan_id = Some(*id);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// All links.
pub async fn list(h: &Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut s = h.link().get().execute();
    while let Some(m) = s.try_next().await? {
        out.push(Link::from_message(&m));
    }
    Ok(out)
}

/// One link by name.
pub async fn by_name(h: &Handle, name: &str) -> Result<Option<Link>, rtnetlink::Error> {
    Ok(list(h).await?.into_iter().find(|l| l.name == name))
}

/// Set a link up.
pub async fn set_up(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

/// Set a link down.
pub async fn set_down(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
}

/// Set a link's MTU.
pub async fn set_mtu(h: &Handle, index: u32, mtu: u32) -> Result<(), rtnetlink::Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
        .execute()
        .await
}

/// Create a VLAN link.
pub async fn add_vlan(
    h: &Handle,
    name: &str,
    parent: u32,
    id: u16,
) -> Result<(), rtnetlink::Error> {
    h.link()
        .add(LinkVlan::new(name, parent, id).build())
        .execute()
        .await
}

/// Create a bond.
pub async fn add_bond(h: &Handle, name: &str, mode: BondMode) -> Result<(), rtnetlink::Error> {
    let mode = match mode {
        BondMode::BalanceRr => NlBondMode::BalanceRr,
        BondMode::ActiveBackup => NlBondMode::ActiveBackup,
        BondMode::BalanceXor => NlBondMode::BalanceXor,
        BondMode::Broadcast => NlBondMode::Broadcast,
        BondMode::Lacp => NlBondMode::Ieee8023Ad,
        BondMode::BalanceTlb => NlBondMode::BalanceTlb,
        BondMode::BalanceAlb => NlBondMode::BalanceAlb,
    };
    h.link()
        .add(LinkBond::new(name).mode(mode).miimon(100).build())
        .execute()
        .await
}

/// Make `member` a port of `controller` (it must be down first).
pub async fn enslave(h: &Handle, member: u32, controller: u32) -> Result<(), rtnetlink::Error> {
    set_down(h, member).await?;
    h.link()
        .set(
            LinkUnspec::new_with_index(member)
                .controller(controller)
                .build(),
        )
        .execute()
        .await
}

/// Delete a link.
pub async fn delete(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link().del(index).execute().await
}

/// Whether a kind string is a VLAN.
pub fn is_kind(l: &Link, kind: InfoKind) -> bool {
    l.kind.as_deref() == Some(kind.to_string().as_str())
}
