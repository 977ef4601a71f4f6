//! A DHCPv4 client for one interface (RFC 2131): DISCOVER, OFFER, REQUEST, ACK;
//! renewal (unicast to the server) at T1, rebinding (broadcast) at T2, a fresh start
//! when the lease ends or the server says NAK, and RELEASE on shutdown. The lease's
//! address, default route and DNS servers are applied as they come.
//!
//! The socket is a UDP socket on port 68 bound to the interface
//! (SO_BINDTODEVICE) with the broadcast flag set in requests, so replies reach us
//! before the interface has an address.

use super::config::{Ipv4Cidr, netmask_to_prefix};
use super::{address, route};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use rtnetlink::Handle;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A lease as granted by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Cidr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease: Duration,
    pub t1: Duration,
    pub t2: Duration,
}

/// Called when the DNS servers learnt from DHCP change.
pub type DnsSink = Arc<dyn Fn(&str, Vec<Ipv4Addr>) + Send + Sync>;

/// A running client.
pub struct Client {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub lease: Arc<Mutex<Option<Lease>>>,
}

impl Client {
    /// Start the client on link `ifname` (`index`, hardware address `mac`).
    pub fn start(h: Handle, ifname: String, index: u32, mac: Vec<u8>, dns: DnsSink) -> Client {
        let (stop_tx, stop_rx) = oneshot::channel();
        let lease = Arc::new(Mutex::new(None));
        let ctx = Ctx {
            h,
            ifname,
            index,
            mac,
            dns,
            lease: lease.clone(),
        };
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = ctx.run() => {}
                _ = stop_rx => ctx.release().await,
            }
        });
        Client {
            stop: Some(stop_tx),
            task,
            lease,
        }
    }

    /// Release the lease and stop.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), &mut self.task).await;
        self.task.abort();
    }
}

struct Ctx {
    h: Handle,
    ifname: String,
    index: u32,
    mac: Vec<u8>,
    dns: DnsSink,
    lease: Arc<Mutex<Option<Lease>>>,
}

fn log(ifname: &str, msg: &str) {
    crate::info!("dhcp {ifname}: {msg}");
}

/// Why an exchange gave no lease.
enum Fail {
    Timeout,
    Nak,
    Io(std::io::Error),
}

impl Ctx {
    fn socket(&self) -> std::io::Result<UdpSocket> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_broadcast(true)?;
        s.bind_device(Some(self.ifname.as_bytes()))?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())?;
        UdpSocket::from_std(s.into())
    }

    fn current(&self) -> Option<Lease> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn run(&self) {
        let mut failures = 0u32;
        loop {
            let sock = match self.socket() {
                Ok(s) => s,
                Err(e) => {
                    log(&self.ifname, &format!("socket: {e}"));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            let lease = match self.acquire(&sock).await {
                Ok(l) => l,
                Err(f) => {
                    failures += 1;
                    if let Fail::Io(e) = &f {
                        log(&self.ifname, &format!("{e}"));
                    }
                    if failures == 1 || failures % 10 == 0 {
                        log(&self.ifname, "no lease yet; still trying");
                    }
                    let wait = Duration::from_secs(u64::from(failures.min(6)) * 5);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            failures = 0;
            self.bind(&lease, "bound").await;
            let mut lease = lease;
            let mut start = Instant::now();
            loop {
                tokio::time::sleep_until(start + lease.t1).await;
                // Renewing: unicast to the server until T2.
                let renewed = self
                    .extend(&sock, &lease, Some(lease.server), start + lease.t2)
                    .await;
                let renewed = match renewed {
                    Err(Fail::Timeout) => {
                        // Rebinding: broadcast until the lease ends.
                        self.extend(&sock, &lease, None, start + lease.lease).await
                    }
                    other => other,
                };
                match renewed {
                    Ok(new) => {
                        start = Instant::now();
                        self.bind(&new, "renewed").await;
                        lease = new;
                    }
                    Err(_) => {
                        log(&self.ifname, "lease lost; starting over");
                        self.unbind(&lease).await;
                        break;
                    }
                }
            }
        }
    }

    fn message(&self, kind: MessageType, ciaddr: Ipv4Addr, broadcast: bool) -> Message {
        let mut m = Message::new(
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac[..self.mac.len().min(16)],
        );
        m.set_opcode(Opcode::BootRequest);
        if broadcast {
            m.set_flags(Flags::default().set_broadcast());
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        let mut id = vec![1u8];
        id.extend_from_slice(&self.mac);
        o.insert(DhcpOption::ClientIdentifier(id));
        if kind != MessageType::Release {
            o.insert(DhcpOption::ParameterRequestList(vec![
                OptionCode::SubnetMask,
                OptionCode::Router,
                OptionCode::DomainNameServer,
                OptionCode::AddressLeaseTime,
                OptionCode::Renewal,
                OptionCode::Rebinding,
            ]));
            if let Ok(h) = nix::unistd::gethostname() {
                let h = h.to_string_lossy().into_owned();
                if !h.is_empty() && h != "(none)" {
                    o.insert(DhcpOption::Hostname(h));
                }
            }
        }
        m
    }

    /// Send `m` to `to` and wait for a reply of the same transaction, resending with
    /// growing intervals until `deadline`.
    async fn exchange(
        &self,
        sock: &UdpSocket,
        m: &Message,
        to: Ipv4Addr,
        want: &[MessageType],
        deadline: Instant,
    ) -> Result<Message, Fail> {
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf))
            .map_err(|e| Fail::Io(std::io::Error::other(e)))?;
        let mut wait = Duration::from_secs(2);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(Fail::Timeout);
            }
            sock.send_to(&buf, SocketAddrV4::new(to, 67))
                .await
                .map_err(Fail::Io)?;
            let until = (now + wait).min(deadline);
            let mut rbuf = vec![0u8; 1500];
            loop {
                let r = tokio::time::timeout_at(until, sock.recv_from(&mut rbuf)).await;
                let n = match r {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(Fail::Io(e)),
                    Ok(Ok((n, _))) => n,
                };
                let Ok(reply) = Message::decode(&mut Decoder::new(&rbuf[..n])) else {
                    continue;
                };
                if reply.xid() != m.xid()
                    || reply.opcode() != Opcode::BootReply
                    || !reply.chaddr().starts_with(&self.mac)
                {
                    continue;
                }
                match reply.opts().msg_type() {
                    Some(MessageType::Nak) => return Err(Fail::Nak),
                    Some(t) if want.contains(&t) => return Ok(reply),
                    _ => continue,
                }
            }
            wait = (wait * 2).min(Duration::from_secs(16));
        }
    }

    async fn acquire(&self, sock: &UdpSocket) -> Result<Lease, Fail> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let discover = self.message(MessageType::Discover, Ipv4Addr::UNSPECIFIED, true);
        let offer = self
            .exchange(
                sock,
                &discover,
                Ipv4Addr::BROADCAST,
                &[MessageType::Offer],
                deadline,
            )
            .await?;
        let server = match offer.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => return Err(Fail::Timeout),
        };
        let mut req = self.message(MessageType::Request, Ipv4Addr::UNSPECIFIED, true);
        req.set_xid(discover.xid());
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        req.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        let ack = self
            .exchange(
                sock,
                &req,
                Ipv4Addr::BROADCAST,
                &[MessageType::Ack],
                deadline,
            )
            .await?;
        parse_lease(&ack, server).ok_or(Fail::Timeout)
    }

    async fn extend(
        &self,
        sock: &UdpSocket,
        lease: &Lease,
        server: Option<Ipv4Addr>,
        deadline: Instant,
    ) -> Result<Lease, Fail> {
        let req = self.message(MessageType::Request, lease.address.addr, server.is_none());
        let to = server.unwrap_or(Ipv4Addr::BROADCAST);
        let ack = self
            .exchange(sock, &req, to, &[MessageType::Ack], deadline)
            .await?;
        parse_lease(&ack, server.unwrap_or(lease.server)).ok_or(Fail::Timeout)
    }

    async fn bind(&self, lease: &Lease, what: &str) {
        let old = self.current();
        if let Some(old) = &old
            && old.address != lease.address
        {
            self.unbind(old).await;
        }
        match address::list(&self.h, self.index).await {
            Ok(have) if have.iter().any(|(c, _)| *c == lease.address) => {}
            _ => {
                if let Err(e) = address::add(&self.h, self.index, &lease.address).await {
                    log(&self.ifname, &format!("adding {}: {e}", lease.address));
                }
            }
        }
        if let Some(gw) = lease.router {
            let r = route::Route {
                destination: Ipv4Cidr {
                    addr: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                },
                gateway: Some(gw),
                oif: Some(self.index),
                metric: None,
            };
            let present = route::list(&self.h)
                .await
                .map(|l| l.iter().any(|(x, _)| r.satisfied_by(x)))
                .unwrap_or(false);
            if !present && let Err(e) = route::replace(&self.h, &r).await {
                log(&self.ifname, &format!("default route via {gw}: {e}"));
            }
        }
        (self.dns)(&self.ifname, lease.dns.clone());
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease.clone());
        log(
            &self.ifname,
            &format!(
                "{what} {} from {}, lease {} s, renew in {} s",
                lease.address,
                lease.server,
                lease.lease.as_secs(),
                lease.t1.as_secs()
            ),
        );
    }

    async fn unbind(&self, lease: &Lease) {
        if let Ok(have) = address::list(&self.h, self.index).await {
            for (c, m) in have {
                if c == lease.address {
                    let _ = address::del(&self.h, m).await;
                }
            }
        }
        (self.dns)(&self.ifname, Vec::new());
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    async fn release(&self) {
        let Some(lease) = self.current() else {
            return;
        };
        if let Ok(sock) = self.socket() {
            let mut m = self.message(MessageType::Release, lease.address.addr, false);
            m.opts_mut()
                .insert(DhcpOption::ServerIdentifier(lease.server));
            let mut buf = Vec::new();
            if m.encode(&mut Encoder::new(&mut buf)).is_ok() {
                let _ = sock
                    .send_to(&buf, SocketAddrV4::new(lease.server, 67))
                    .await;
            }
        }
        self.unbind(&lease).await;
        log(&self.ifname, &format!("released {}", lease.address));
    }
}

/// The lease in an ACK.
pub fn parse_lease(ack: &Message, server: Ipv4Addr) -> Option<Lease> {
    let o = ack.opts();
    let ip = ack.yiaddr();
    if ip.is_unspecified() {
        return None;
    }
    let prefix = match o.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => netmask_to_prefix(*m).unwrap_or(24),
        _ => 24,
    };
    let router = match o.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match o.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let secs = |code| match o.get(code) {
        Some(
            DhcpOption::AddressLeaseTime(s) | DhcpOption::Renewal(s) | DhcpOption::Rebinding(s),
        ) => Some(u64::from(*s)),
        _ => None,
    };
    let lease = secs(OptionCode::AddressLeaseTime).unwrap_or(3600).max(4);
    let t1 = secs(OptionCode::Renewal)
        .unwrap_or(lease / 2)
        .clamp(1, lease);
    let t2 = secs(OptionCode::Rebinding)
        .unwrap_or(lease * 7 / 8)
        .clamp(t1, lease);
    let server = match o.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => server,
    };
    Some(Lease {
        address: Ipv4Cidr { addr: ip, prefix },
        router,
        dns,
        server,
        lease: Duration::from_secs(lease),
        t1: Duration::from_secs(t1),
        t2: Duration::from_secs(t2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_from_ack() {
        let mut m = Message::new(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(192, 0, 2, 20),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 1],
        );
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(MessageType::Ack));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![Ipv4Addr::new(192, 0, 2, 1)]));
        o.insert(DhcpOption::AddressLeaseTime(120));
        o.insert(DhcpOption::Renewal(5));
        o.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 0, 2, 1)));
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).unwrap();
        let back = Message::decode(&mut Decoder::new(&buf)).unwrap();
        let l = parse_lease(&back, Ipv4Addr::UNSPECIFIED).unwrap();
        assert_eq!(l.address.to_string(), "192.0.2.20/24");
        assert_eq!(l.router, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(l.lease, Duration::from_secs(120));
        assert_eq!(l.t1, Duration::from_secs(5));
        assert_eq!(l.t2, Duration::from_secs(105));
    }
}
