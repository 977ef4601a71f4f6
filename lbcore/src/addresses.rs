//! Service addresses on the appliance's interfaces.
//!
//! A virtual service's address must be local for the proxy (and IPVS direct routing) to
//! receive its traffic. When it is absent, lbcore adds it as a /32 (/128) to the
//! interface whose subnet holds it, announces it with a gratuitous ARP so that switches
//! and clients learn the new owner at once, and removes it when the service goes away.
//! Addresses lbcore adds carry its own address protocol number (IFA_PROTO), so that a
//! restarted lbcore recognises them; an address that was already there (put there by
//! the network configuration or an administrator) is never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use appliance::net::in_subnet;
use futures_util::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressProtocol};
use rtnetlink::packet_route::link::LinkAttribute;
use tracing::{info, warn};

/// IFA_PROTO value marking addresses that lbcore added ('L').
pub const ADDRESS_PROTOCOL: u8 = 0x4c;

/// One address of the interface table, as far as lbcore cares.
#[derive(Debug, Clone)]
struct Assigned {
    message: AddressMessage,
    address: IpAddr,
    prefix: u8,
    index: u32,
    ours: bool,
}

pub struct ServiceAddresses {
    handle: Handle,
    /// Addresses this process added or recognised as its own: address -> interface index.
    owned: BTreeMap<IpAddr, u32>,
    /// Addresses already reported as present-and-not-ours, to log that only once.
    foreign: BTreeSet<IpAddr>,
}

impl ServiceAddresses {
    pub fn new() -> io::Result<ServiceAddresses> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(ServiceAddresses {
            handle,
            owned: BTreeMap::new(),
            foreign: BTreeSet::new(),
        })
    }

    async fn table(&self) -> Result<Vec<Assigned>, rtnetlink::Error> {
        let mut out = Vec::new();
        let mut stream = self.handle.address().get().execute();
        while let Some(message) = stream.try_next().await? {
            let mut address = None;
            let mut ours = false;
            for attr in &message.attributes {
                match attr {
                    AddressAttribute::Local(a) => address = Some(*a),
                    AddressAttribute::Address(a) if address.is_none() => address = Some(*a),
                    AddressAttribute::Protocol(AddressProtocol::Other(p)) => {
                        ours = *p == ADDRESS_PROTOCOL
                    }
                    _ => {}
                }
            }
            if let Some(address) = address {
                out.push(Assigned {
                    prefix: message.header.prefix_len,
                    index: message.header.index,
                    message,
                    address,
                    ours,
                });
            }
        }
        Ok(out)
    }

    /// Makes the set of service addresses present: adds what is missing, removes what
    /// lbcore added earlier and no longer needs. Problems are logged per address and do
    /// not stop the others.
    pub async fn sync(&mut self, wanted: &BTreeSet<IpAddr>) {
        let table = match self.table().await {
            Ok(t) => t,
            Err(e) => {
                warn!(
                    "cannot read the interface addresses: {e}; service addresses left as they are"
                );
                return;
            }
        };
        for entry in table
            .iter()
            .filter(|a| a.ours && !wanted.contains(&a.address))
        {
            self.remove(entry).await;
        }
        for &address in wanted {
            if let Some(present) = table.iter().find(|a| a.address == address) {
                if present.ours {
                    self.owned.insert(address, present.index);
                } else if self.foreign.insert(address) {
                    info!(%address, "service address is already configured on this system; lbcore leaves it alone");
                }
                continue;
            }
            if address.is_loopback() {
                continue; // the whole loopback range is local already
            }
            match subnet_holding(&table, address) {
                Some(index) => self.add(address, index).await,
                None => warn!(
                    %address,
                    "service address is in no interface's subnet: not adding it (route it to this appliance, or add it to an interface)"
                ),
            }
        }
        let still: Vec<IpAddr> = self
            .owned
            .keys()
            .copied()
            .filter(|a| !wanted.contains(a))
            .collect();
        for address in still {
            if let Some(entry) = table.iter().find(|a| a.address == address) {
                self.remove(entry).await;
            }
            self.owned.remove(&address);
        }
        self.foreign.retain(|a| wanted.contains(a));
    }

    /// Removes every address lbcore added (on shutdown).
    pub async fn release_all(&mut self) {
        self.sync(&BTreeSet::new()).await;
    }

    async fn add(&mut self, address: IpAddr, index: u32) {
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        let mut request = self.handle.address().add(index, address, prefix);
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::Other(
                ADDRESS_PROTOCOL,
            )));
        if let Err(e) = request.execute().await {
            warn!(%address, "cannot add the service address: {e}");
            return;
        }
        self.owned.insert(address, index);
        let name = self
            .link_name(index)
            .await
            .unwrap_or_else(|| index.to_string());
        info!(%address, interface = %name, "service address added");
        if let IpAddr::V4(v4) = address {
            match self.link_mac(index).await {
                Some(mac) => {
                    if let Err(e) = announce(index, mac, v4) {
                        warn!(%address, interface = %name, "cannot send gratuitous ARP: {e}");
                    }
                }
                None => {
                    info!(%address, interface = %name, "interface has no Ethernet address; no gratuitous ARP")
                }
            }
        }
    }

    async fn remove(&mut self, entry: &Assigned) {
        match self
            .handle
            .address()
            .del(entry.message.clone())
            .execute()
            .await
        {
            Ok(()) => info!(address = %entry.address, "service address removed"),
            Err(e) => warn!(address = %entry.address, "cannot remove the service address: {e}"),
        }
        self.owned.remove(&entry.address);
    }

    async fn link_attributes(&self, index: u32) -> Option<Vec<LinkAttribute>> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        stream.try_next().await.ok().flatten().map(|m| m.attributes)
    }

    async fn link_name(&self, index: u32) -> Option<String> {
        self.link_attributes(index)
            .await?
            .into_iter()
            .find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })
    }

    async fn link_mac(&self, index: u32) -> Option<[u8; 6]> {
        self.link_attributes(index)
            .await?
            .into_iter()
            .find_map(|a| match a {
                LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice())
                    .ok()
                    .filter(|m| m != &[0; 6]),
                _ => None,
            })
    }
}

/// The interface with a configured subnet (not a host address) that holds `address`.
fn subnet_holding(table: &[Assigned], address: IpAddr) -> Option<u32> {
    table
        .iter()
        .filter(|a| !a.ours && a.address.is_ipv4() == address.is_ipv4())
        .filter(|a| a.prefix < if address.is_ipv4() { 32 } else { 128 })
        .filter(|a| !a.address.is_loopback())
        .find(|a| in_subnet(a.address, a.prefix, address))
        .map(|a| a.index)
}

/// Sends a gratuitous ARP request and reply for `ip` from `mac` on interface `index`.
fn announce(index: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    const ETH_P_ARP: u16 = 0x0806;
    let socket = Socket::new(
        Domain::PACKET,
        Type::DGRAM,
        Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))),
    )?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value to fill in.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex =
        i32::try_from(index).map_err(|_| io::Error::other("interface index out of range"))?;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for op in [1u16, 2] {
        let packet = arp_packet(op, mac, ip);
        // SAFETY: `packet` and `to` are live for the call and their lengths are passed;
        // the file descriptor is owned by `socket`.
        let sent = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An ARP packet announcing that `ip` is at `mac` (sender and target address both `ip`).
fn arp_packet(op: u16, mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&op.to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    if op == 2 {
        p[18..24].copy_from_slice(&mac);
    }
    p[24..28].copy_from_slice(&ip.octets());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_request_layout() {
        let p = arp_packet(1, [2, 0, 0, 0, 0, 1], "10.0.0.7".parse().unwrap());
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[14..18], &[10, 0, 0, 7]);
        assert_eq!(&p[24..28], &[10, 0, 0, 7]);
        assert_eq!(&p[18..24], &[0; 6]);
    }
}
