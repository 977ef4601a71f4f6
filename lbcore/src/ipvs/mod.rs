//! Layer 4: the kernel's IPVS, programmed over generic netlink (family "IPVS").
//!
//! - [`netlink`]: generic netlink messages and a blocking socket.
//! - this module: the encoding of the IPVS table ([`Service`], [`Dest`]: their model
//!   is the control protocol's, since lbcore reports the table as it reads it) into
//!   IPVS attributes (include/uapi/linux/ip_vs.h), and the [`Ipvs`] client.
//! - [`reconcile`]: what the table should hold for a configuration and the live server
//!   states, and the smallest set of changes that gets the kernel there.
//! - [`manager`]: the daemon's side: keeps the kernel in step, sysctls, SNAT rules.

pub mod manager;
pub mod netlink;
pub mod reconcile;
pub mod snat;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use reconcile::Wanted;

use netlink::{Attrs, Connection, Message, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};

pub const FAMILY: &str = "IPVS";
const VERSION: u8 = 1;

// Commands (enum in ip_vs.h).
const CMD_NEW_SERVICE: u8 = 1;
const CMD_SET_SERVICE: u8 = 2;
const CMD_DEL_SERVICE: u8 = 3;
const CMD_GET_SERVICE: u8 = 4;
const CMD_NEW_DEST: u8 = 5;
const CMD_SET_DEST: u8 = 6;
const CMD_DEL_DEST: u8 = 7;
const CMD_GET_DEST: u8 = 8;

// Top-level attributes.
const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;

// Service attributes.
const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_FWMARK: u16 = 5;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_FLAGS: u16 = 7;
const SVC_ATTR_TIMEOUT: u16 = 8;
const SVC_ATTR_NETMASK: u16 = 9;

// Destination attributes.
const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_U_THRESH: u16 = 5;
const DEST_ATTR_L_THRESH: u16 = 6;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_PERSIST_CONNS: u16 = 9;
const DEST_ATTR_STATS: u16 = 10;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;
const DEST_ATTR_STATS64: u16 = 12;
/// `IPVS_STATS_ATTR_CONNS` in the nested statistics: connections scheduled.
const STATS_ATTR_CONNS: u16 = 1;

/// `IP_VS_SVC_F_PERSISTENT`.
const SVC_F_PERSISTENT: u32 = 0x1;

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

pub use lbcore_control::ipvs::{
    Counters, Dest, DestKey, DestSpec, Forward, IPPROTO_TCP, IPPROTO_UDP, Service, ServiceKey,
    ServiceSpec,
};

/// `IP_VS_CONN_F_*` of a forwarding method.
fn forward_code(f: Forward) -> u32 {
    match f {
        Forward::Masq => 0,
        Forward::Local => 1,
        Forward::Tunnel => 2,
        Forward::Route => 3,
        Forward::Bypass => 4,
    }
}

fn forward_from_code(c: u32) -> Forward {
    match c & 0x7 {
        1 => Forward::Local,
        2 => Forward::Tunnel,
        3 => Forward::Route,
        4 => Forward::Bypass,
        _ => Forward::Masq,
    }
}

/// One change to the kernel's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddService(ServiceKey, ServiceSpec),
    EditService(ServiceKey, ServiceSpec),
    DelService(ServiceKey),
    AddDest(ServiceKey, DestKey, DestSpec),
    EditDest(ServiceKey, DestKey, DestSpec),
    DelDest(ServiceKey, DestKey),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let persist = |s: &ServiceSpec| match s.persistence {
            Some(t) => format!(" persistent {t}s /{}", s.netmask),
            None => String::new(),
        };
        let dest = |d: &DestSpec| {
            format!(
                "{:?} weight {} upper {} lower {}",
                d.forward, d.weight, d.upper, d.lower
            )
            .to_lowercase()
        };
        match self {
            Op::AddService(k, s) => write!(f, "add service {k} {}{}", s.scheduler, persist(s)),
            Op::EditService(k, s) => write!(f, "edit service {k} {}{}", s.scheduler, persist(s)),
            Op::DelService(k) => write!(f, "delete service {k}"),
            Op::AddDest(k, d, s) => write!(f, "add {d} to {k}: {}", dest(s)),
            Op::EditDest(k, d, s) => write!(f, "edit {d} of {k}: {}", dest(s)),
            Op::DelDest(k, d) => write!(f, "delete {d} from {k}"),
        }
    }
}

fn family_of(a: IpAddr) -> u16 {
    if a.is_ipv4() { AF_INET } else { AF_INET6 }
}

/// `union nf_inet_addr`: 16 bytes, an IPv4 address in the first 4.
fn addr_bytes(a: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b = v6.octets(),
    }
    b
}

fn addr_from(af: u16, b: &[u8]) -> Option<IpAddr> {
    match af {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(b.get(..4)?).ok()?,
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(b.get(..16)?).ok()?,
        ))),
        _ => None,
    }
}

/// The netmask attribute: for IPv4 the mask in network byte order, for IPv6 the prefix
/// length (as the kernel and ipvsadm treat it).
fn netmask_bytes(af: u16, prefix: u8) -> [u8; 4] {
    if af == AF_INET {
        appliance::net::prefix_to_netmask(prefix).octets()
    } else {
        u32::from(prefix.min(128)).to_ne_bytes()
    }
}

fn netmask_from(af: u16, b: &[u8]) -> Option<u8> {
    let raw: [u8; 4] = b.get(..4)?.try_into().ok()?;
    if af == AF_INET {
        Some(u32::from_be_bytes(raw).count_ones() as u8)
    } else {
        u8::try_from(u32::from_ne_bytes(raw)).ok()
    }
}

fn put_service_key(m: &mut Message, k: &ServiceKey) {
    let af = family_of(k.address);
    m.put_u16(SVC_ATTR_AF, af)
        .put_u16(SVC_ATTR_PROTOCOL, k.protocol)
        .put(SVC_ATTR_ADDR, &addr_bytes(k.address))
        .put(SVC_ATTR_PORT, &k.port.to_be_bytes());
}

/// The nested service attribute: the key, and with `spec` everything NEW/SET need.
pub fn encode_service(m: &mut Message, k: &ServiceKey, spec: Option<&ServiceSpec>) {
    m.begin_nested(CMD_ATTR_SERVICE);
    put_service_key(m, k);
    if let Some(s) = spec {
        let flags = if s.persistence.is_some() {
            SVC_F_PERSISTENT
        } else {
            0
        };
        let mut fl = [0u8; 8];
        fl[..4].copy_from_slice(&flags.to_ne_bytes());
        fl[4..].copy_from_slice(&u32::MAX.to_ne_bytes()); // mask: set every flag
        m.put_str(SVC_ATTR_SCHED_NAME, &s.scheduler)
            .put(SVC_ATTR_FLAGS, &fl)
            .put_u32(SVC_ATTR_TIMEOUT, s.persistence.unwrap_or(0))
            .put(
                SVC_ATTR_NETMASK,
                &netmask_bytes(family_of(k.address), s.netmask),
            );
    }
    m.end_nested();
}

/// The nested destination attribute: the key, and with `spec` what NEW/SET need.
pub fn encode_dest(m: &mut Message, d: &DestKey, spec: Option<&DestSpec>) {
    m.begin_nested(CMD_ATTR_DEST)
        .put(DEST_ATTR_ADDR, &addr_bytes(d.address))
        .put(DEST_ATTR_PORT, &d.port.to_be_bytes())
        .put_u16(DEST_ATTR_ADDR_FAMILY, family_of(d.address));
    if let Some(s) = spec {
        m.put_u32(DEST_ATTR_FWD_METHOD, forward_code(s.forward))
            .put_u32(DEST_ATTR_WEIGHT, s.weight)
            .put_u32(DEST_ATTR_U_THRESH, s.upper)
            .put_u32(DEST_ATTR_L_THRESH, s.lower);
    }
    m.end_nested();
}

/// A service from a GET_SERVICE answer (fwmark services are skipped: lbcore makes none).
pub fn decode_service(attrs: Attrs<'_>) -> Option<(ServiceKey, ServiceSpec)> {
    let svc = attrs.into_iter().find(|a| a.kind == CMD_ATTR_SERVICE)?;
    let (mut af, mut proto, mut addr, mut port) = (None, None, None, None);
    let (mut sched, mut flags, mut timeout, mut mask) = (String::new(), 0u32, 0u32, None);
    let mut fwmark = false;
    for a in svc.nested() {
        match a.kind {
            SVC_ATTR_AF => af = a.u16(),
            SVC_ATTR_PROTOCOL => proto = a.u16(),
            SVC_ATTR_ADDR => addr = Some(a.payload),
            SVC_ATTR_PORT => port = a.be16(),
            SVC_ATTR_FWMARK => fwmark = a.u32().unwrap_or(0) != 0,
            SVC_ATTR_SCHED_NAME => sched = a.string(),
            SVC_ATTR_FLAGS => flags = a.u32().unwrap_or(0),
            SVC_ATTR_TIMEOUT => timeout = a.u32().unwrap_or(0),
            SVC_ATTR_NETMASK => mask = Some(a.payload),
            _ => {}
        }
    }
    if fwmark {
        return None;
    }
    let af = af?;
    let key = ServiceKey {
        protocol: proto?,
        address: addr_from(af, addr?)?,
        port: port?,
    };
    let spec = ServiceSpec {
        scheduler: sched,
        persistence: (flags & SVC_F_PERSISTENT != 0).then_some(timeout),
        netmask: mask.and_then(|m| netmask_from(af, m)).unwrap_or(0),
    };
    Some((key, spec))
}

/// A real server from a GET_DEST answer, with IPVS's connection counters.
pub fn decode_dest(attrs: Attrs<'_>, service_af: u16) -> Option<Dest> {
    let d = attrs.into_iter().find(|a| a.kind == CMD_ATTR_DEST)?;
    let (mut addr, mut port, mut af) = (None, None, service_af);
    let mut spec = DestSpec {
        forward: Forward::Masq,
        weight: 0,
        upper: 0,
        lower: 0,
    };
    let mut c = Counters::default();
    for a in d.nested() {
        let v = || a.u32().unwrap_or(0);
        match a.kind {
            DEST_ATTR_ADDR => addr = Some(a.payload),
            DEST_ATTR_PORT => port = a.be16(),
            DEST_ATTR_ADDR_FAMILY => af = a.u16().unwrap_or(service_af),
            DEST_ATTR_FWD_METHOD => spec.forward = forward_from_code(v()),
            DEST_ATTR_WEIGHT => spec.weight = v(),
            DEST_ATTR_U_THRESH => spec.upper = v(),
            DEST_ATTR_L_THRESH => spec.lower = v(),
            DEST_ATTR_ACTIVE_CONNS => c.active = v(),
            DEST_ATTR_INACT_CONNS => c.inactive = v(),
            DEST_ATTR_PERSIST_CONNS => c.persistent = v(),
            DEST_ATTR_STATS64 => {
                if let Some(n) = a.nested().find(|s| s.kind == STATS_ATTR_CONNS) {
                    c.total = n.u64().unwrap_or(c.total);
                }
            }
            DEST_ATTR_STATS if c.total == 0 => {
                if let Some(n) = a.nested().find(|s| s.kind == STATS_ATTR_CONNS) {
                    c.total = u64::from(n.u32().unwrap_or(0));
                }
            }
            _ => {}
        }
    }
    Some(Dest {
        key: DestKey {
            address: addr_from(af, addr?)?,
            port: port?,
        },
        spec,
        counters: c,
    })
}

/// The IPVS message for one change.
pub fn encode_op(family: u16, op: &Op) -> Message {
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    let (cmd, key) = match op {
        Op::AddService(k, _) => (CMD_NEW_SERVICE, k),
        Op::EditService(k, _) => (CMD_SET_SERVICE, k),
        Op::DelService(k) => (CMD_DEL_SERVICE, k),
        Op::AddDest(k, ..) => (CMD_NEW_DEST, k),
        Op::EditDest(k, ..) => (CMD_SET_DEST, k),
        Op::DelDest(k, _) => (CMD_DEL_DEST, k),
    };
    let mut m = Message::new(family, flags, cmd, VERSION);
    match op {
        Op::AddService(_, s) | Op::EditService(_, s) => encode_service(&mut m, key, Some(s)),
        Op::DelService(_) => encode_service(&mut m, key, None),
        Op::AddDest(_, d, s) | Op::EditDest(_, d, s) => {
            encode_service(&mut m, key, None);
            encode_dest(&mut m, d, Some(s));
        }
        Op::DelDest(_, d) => {
            encode_service(&mut m, key, None);
            encode_dest(&mut m, d, None);
        }
    }
    m
}

/// A connection to the kernel's IPVS.
pub struct Ipvs {
    conn: Connection,
    family: u16,
}

impl Ipvs {
    /// Opens generic netlink and resolves the IPVS family (the `ip_vs` module must be
    /// loaded; init loads it at boot).
    pub fn open() -> io::Result<Ipvs> {
        let mut conn = Connection::open()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open generic netlink: {e}")))?;
        let family = conn.family_id(FAMILY).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot find IPVS over generic netlink (is the ip_vs module loaded?): {e}"),
            )
        })?;
        Ok(Ipvs { conn, family })
    }

    /// The whole table: every virtual service with its real servers.
    pub fn table(&mut self) -> io::Result<Vec<Service>> {
        let m = Message::new(
            self.family,
            NLM_F_REQUEST | NLM_F_DUMP,
            CMD_GET_SERVICE,
            VERSION,
        );
        let services = self
            .conn
            .request(&m, |_, attrs| decode_service(attrs))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read the IPVS services: {e}")))?;
        let mut out = Vec::with_capacity(services.len());
        for (key, spec) in services {
            let mut m = Message::new(
                self.family,
                NLM_F_REQUEST | NLM_F_DUMP,
                CMD_GET_DEST,
                VERSION,
            );
            encode_service(&mut m, &key, None);
            let af = family_of(key.address);
            let dests = self
                .conn
                .request(&m, |_, attrs| decode_dest(attrs, af))
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot read the real servers of IPVS service {key}: {e}"),
                    )
                })?;
            out.push(Service { key, spec, dests });
        }
        out.sort_by_key(|s| s.key);
        Ok(out)
    }

    /// Makes one change; the error names it.
    pub fn apply(&mut self, op: &Op) -> io::Result<()> {
        self.conn
            .request(&encode_op(self.family, op), |_, _| None::<()>)
            .map(|_| ())
            .map_err(|e| io::Error::new(e.kind(), format!("IPVS refused to {op}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ServiceKey {
        ServiceKey {
            protocol: IPPROTO_TCP,
            address: "172.26.11.70".parse().unwrap(),
            port: 104,
        }
    }

    /// Encodes a service the way the kernel dumps it (genlmsghdr stripped) and decodes it.
    #[test]
    fn service_round_trip_and_wire_values() {
        let spec = ServiceSpec {
            scheduler: "wlc".into(),
            persistence: Some(300),
            netmask: 24,
        };
        let m = encode_op(0x22, &Op::AddService(key(), spec.clone()));
        let b = m.finish(1);
        assert_eq!(b[16], CMD_NEW_SERVICE);
        let attrs = Attrs(&b[20..]);
        let svc = attrs.clone().next().unwrap();
        assert_eq!(svc.kind, CMD_ATTR_SERVICE);
        let inner: Vec<_> = svc.nested().collect();
        let get = |k| inner.iter().find(|a| a.kind == k).unwrap().payload;
        assert_eq!(get(SVC_ATTR_AF), &2u16.to_ne_bytes());
        assert_eq!(get(SVC_ATTR_PROTOCOL), &6u16.to_ne_bytes());
        assert_eq!(get(SVC_ATTR_ADDR).len(), 16, "union nf_inet_addr");
        assert_eq!(&get(SVC_ATTR_ADDR)[..4], &[172, 26, 11, 70]);
        assert_eq!(get(SVC_ATTR_PORT), &[0, 104], "network byte order");
        assert_eq!(get(SVC_ATTR_SCHED_NAME), b"wlc\0");
        assert_eq!(&get(SVC_ATTR_FLAGS)[..4], &1u32.to_ne_bytes());
        assert_eq!(get(SVC_ATTR_TIMEOUT), &300u32.to_ne_bytes());
        assert_eq!(get(SVC_ATTR_NETMASK), &[255, 255, 255, 0]);
        assert_eq!(decode_service(attrs), Some((key(), spec)));
    }

    #[test]
    fn delete_carries_only_the_key() {
        let b = encode_op(0x22, &Op::DelService(key())).finish(1);
        let svc = Attrs(&b[20..]).next().unwrap();
        let kinds: Vec<_> = svc.nested().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            [SVC_ATTR_AF, SVC_ATTR_PROTOCOL, SVC_ATTR_ADDR, SVC_ATTR_PORT]
        );
    }

    #[test]
    fn dest_round_trip_and_ipv6() {
        let d = DestKey {
            address: "fd00::31".parse().unwrap(),
            port: 11112,
        };
        let spec = DestSpec {
            forward: Forward::Masq,
            weight: 100,
            upper: 500,
            lower: 10,
        };
        let k6 = ServiceKey {
            protocol: IPPROTO_TCP,
            address: "fd00::70".parse().unwrap(),
            port: 104,
        };
        let b = encode_op(0x22, &Op::AddDest(k6, d, spec)).finish(1);
        assert_eq!(b[16], CMD_NEW_DEST);
        let attrs = Attrs(&b[20..]);
        let (k, _) = decode_service_key_only(attrs);
        assert_eq!(k, k6);
        let dest = decode_dest(attrs, AF_INET6).unwrap();
        assert_eq!(dest.key, d);
        assert_eq!(dest.spec, spec);
        let raw = attrs.into_iter().find(|a| a.kind == CMD_ATTR_DEST).unwrap();
        let fwd = raw
            .nested()
            .find(|a| a.kind == DEST_ATTR_FWD_METHOD)
            .unwrap();
        assert_eq!(fwd.u32(), Some(0));
        let dr = DestSpec {
            forward: Forward::Route,
            ..spec
        };
        let b = encode_op(0x22, &Op::EditDest(key(), d, dr)).finish(1);
        assert_eq!(b[16], CMD_SET_DEST);
        assert_eq!(
            decode_dest(Attrs(&b[20..]), AF_INET).unwrap().spec.forward,
            Forward::Route
        );
    }

    fn decode_service_key_only(attrs: Attrs<'_>) -> (ServiceKey, ServiceSpec) {
        decode_service(attrs).unwrap()
    }

    /// One netlink attribute as the kernel lays it out (include/net/netlink.h): length
    /// and type in host order, the payload, padding to 4 bytes. Written here, apart from
    /// the product's encoder, so that the decoder is checked against the kernel's layout
    /// and not against itself.
    fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v
    }

    #[test]
    fn dest_counters_from_the_kernel_dump() {
        // a real server as ip_vs_genl_fill_dest (net/netfilter/ipvs/ip_vs_ctl.c, 6.1)
        // writes it: a nest started without NLA_F_NESTED, the address as a 16-byte union,
        // the tunnel attributes (13-15), both statistics nests (the u32 one wraps)
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 0, 0, 31]);
        let mut stats32 = nla(1, &(4_000_000_000_123u64 as u32).to_ne_bytes());
        stats32.extend(nla(2, &7u32.to_ne_bytes()));
        let mut stats64 = nla(1, &4_000_000_000_123u64.to_ne_bytes());
        stats64.extend(nla(4, &123_456u64.to_ne_bytes()));
        let inner: Vec<u8> = [
            nla(1, &addr),
            nla(2, &104u16.to_be_bytes()),
            nla(3, &3u32.to_ne_bytes()),
            nla(4, &100u32.to_ne_bytes()),
            nla(13, &[0]),
            nla(14, &0u16.to_be_bytes()),
            nla(15, &0u16.to_ne_bytes()),
            nla(5, &0u32.to_ne_bytes()),
            nla(6, &0u32.to_ne_bytes()),
            nla(7, &2u32.to_ne_bytes()),
            nla(8, &5u32.to_ne_bytes()),
            nla(9, &1u32.to_ne_bytes()),
            nla(11, &2u16.to_ne_bytes()),
            nla(10, &stats32),
            nla(12, &stats64),
        ]
        .concat();
        let dump = nla(2, &inner);
        let d = decode_dest(Attrs(&dump), AF_INET).unwrap();
        assert_eq!(
            d.key,
            DestKey {
                address: "10.0.0.31".parse().unwrap(),
                port: 104
            }
        );
        assert_eq!(
            d.spec,
            DestSpec {
                forward: Forward::Route,
                weight: 100,
                upper: 0,
                lower: 0
            }
        );
        assert_eq!(
            d.counters,
            Counters {
                active: 2,
                inactive: 5,
                persistent: 1,
                total: 4_000_000_000_123
            }
        );
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask_bytes(AF_INET, 32), [255; 4]);
        assert_eq!(netmask_bytes(AF_INET, 0), [0; 4]);
        assert_eq!(netmask_from(AF_INET, &[255, 255, 240, 0]), Some(20));
        assert_eq!(netmask_bytes(AF_INET6, 64), 64u32.to_ne_bytes());
        assert_eq!(netmask_from(AF_INET6, &128u32.to_ne_bytes()), Some(128));
    }

    #[test]
    fn ops_print_what_they_do() {
        let op = Op::EditDest(
            key(),
            DestKey {
                address: "10.0.0.31".parse().unwrap(),
                port: 104,
            },
            DestSpec {
                forward: Forward::Route,
                weight: 0,
                upper: 0,
                lower: 0,
            },
        );
        assert_eq!(
            op.to_string(),
            "edit 10.0.0.31:104 of TCP 172.26.11.70:104: route weight 0 upper 0 lower 0"
        );
    }
}
