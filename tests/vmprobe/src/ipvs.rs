//! IPVS over generic netlink, from include/uapi/linux/ip_vs.h: services that are not
//! lbcore's (a "foreign" one, made as another tool such as ipvsadm would), edits behind
//! lbcore's back, and a dump with what /proc/net/ip_vs does not show (the connection
//! thresholds).
//!
//! `ipvs` requests (PROTO is TCP or UDP; FWD is masq, local, tunnel or route):
//!
//! - `dump`: one line per service, `PROTO VIP:PORT SCHED persistent=SECONDS|- netmask=MASK`,
//!   then one per real server, `  -> RIP:PORT FWD weight=N upper=N lower=N active=N inactive=N`
//! - `add-service PROTO VIP:PORT SCHED [persistent SECONDS NETMASK]`
//! - `del-service PROTO VIP:PORT`
//! - `add-dest PROTO VIP:PORT RIP:PORT FWD WEIGHT`, `set-dest` (the same fields)
//! - `del-dest PROTO VIP:PORT RIP:PORT`

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::netlink::{Attrs, NLM_F_DUMP, Socket, get, parse, u16_of, u32_of};

const CMD_NEW_SERVICE: u8 = 1;
const CMD_DEL_SERVICE: u8 = 3;
const CMD_GET_SERVICE: u8 = 4;
const CMD_NEW_DEST: u8 = 5;
const CMD_SET_DEST: u8 = 6;
const CMD_DEL_DEST: u8 = 7;
const CMD_GET_DEST: u8 = 8;

const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;

const SVC_AF: u16 = 1;
const SVC_PROTOCOL: u16 = 2;
const SVC_ADDR: u16 = 3;
const SVC_PORT: u16 = 4;
const SVC_FWMARK: u16 = 5;
const SVC_SCHED_NAME: u16 = 6;
const SVC_FLAGS: u16 = 7;
const SVC_TIMEOUT: u16 = 8;
const SVC_NETMASK: u16 = 9;

const DEST_ADDR: u16 = 1;
const DEST_PORT: u16 = 2;
const DEST_FWD_METHOD: u16 = 3;
const DEST_WEIGHT: u16 = 4;
const DEST_U_THRESH: u16 = 5;
const DEST_L_THRESH: u16 = 6;
const DEST_ACTIVE_CONNS: u16 = 7;
const DEST_INACT_CONNS: u16 = 8;
const DEST_ADDR_FAMILY: u16 = 11;

const IP_VS_SVC_F_PERSISTENT: u32 = 1;
const FWD_NAMES: [&str; 4] = ["masq", "local", "tunnel", "route"];

pub fn command(line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut sock = Socket::open().map_err(|e| format!("generic netlink: {e}"))?;
    let family = sock
        .family("IPVS")
        .map_err(|e| format!("IPVS family (is ip_vs loaded?): {e}"))?;
    let run = |sock: &mut Socket, cmd, a: &Attrs| {
        sock.request(family, 0, cmd, a)
            .map(|_| String::new())
            .map_err(|e| format!("{line}: {e}"))
    };
    match words.as_slice() {
        ["dump"] => dump(&mut sock, family),
        ["add-service", proto, vip, sched, rest @ ..] => {
            let persistent = match rest {
                [] => None,
                ["persistent", secs, mask] => Some((
                    secs.parse::<u32>().map_err(|e| format!("{secs}: {e}"))?,
                    mask.parse::<Ipv4Addr>()
                        .map_err(|e| format!("{mask}: {e}"))?,
                )),
                _ => return Err("add-service ... [persistent SECONDS NETMASK]".into()),
            };
            let mut svc = key(proto, vip)?;
            let mut z = sched.as_bytes().to_vec();
            z.push(0);
            let flags = if persistent.is_some() {
                IP_VS_SVC_F_PERSISTENT
            } else {
                0
            };
            let mut fl = flags.to_ne_bytes().to_vec();
            fl.extend_from_slice(&u32::MAX.to_ne_bytes());
            let (timeout, mask) = persistent.unwrap_or((0, Ipv4Addr::BROADCAST));
            svc.put(SVC_SCHED_NAME, &z)
                .put(SVC_FLAGS, &fl)
                .u32(SVC_TIMEOUT, timeout)
                .put(SVC_NETMASK, &mask.octets());
            let mut a = Attrs::default();
            a.nest(CMD_ATTR_SERVICE, &svc);
            run(&mut sock, CMD_NEW_SERVICE, &a)
        }
        ["del-service", proto, vip] => {
            let mut a = Attrs::default();
            a.nest(CMD_ATTR_SERVICE, &key(proto, vip)?);
            run(&mut sock, CMD_DEL_SERVICE, &a)
        }
        [
            verb @ ("add-dest" | "set-dest"),
            proto,
            vip,
            rip,
            fwd,
            weight,
        ] => {
            let fwd = FWD_NAMES
                .iter()
                .position(|n| n == fwd)
                .ok_or_else(|| format!("{fwd}: one of {}", FWD_NAMES.join(", ")))?;
            let weight: u32 = weight.parse().map_err(|e| format!("{weight}: {e}"))?;
            let mut d = dest(rip)?;
            d.u32(DEST_FWD_METHOD, fwd as u32)
                .u32(DEST_WEIGHT, weight)
                .u32(DEST_U_THRESH, 0)
                .u32(DEST_L_THRESH, 0);
            let mut a = Attrs::default();
            a.nest(CMD_ATTR_SERVICE, &key(proto, vip)?)
                .nest(CMD_ATTR_DEST, &d);
            let cmd = if *verb == "add-dest" {
                CMD_NEW_DEST
            } else {
                CMD_SET_DEST
            };
            run(&mut sock, cmd, &a)
        }
        ["del-dest", proto, vip, rip] => {
            let mut a = Attrs::default();
            a.nest(CMD_ATTR_SERVICE, &key(proto, vip)?)
                .nest(CMD_ATTR_DEST, &dest(rip)?);
            run(&mut sock, CMD_DEL_DEST, &a)
        }
        _ => Err(format!("unknown ipvs request {line:?}")),
    }
}

fn af(a: IpAddr) -> u16 {
    match a {
        IpAddr::V4(_) => libc::AF_INET as u16,
        IpAddr::V6(_) => libc::AF_INET6 as u16,
    }
}

/// `union nf_inet_addr`: 16 bytes, an IPv4 address in the first four.
fn addr16(a: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b = v6.octets(),
    }
    b
}

fn sockaddr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

/// The nested attributes that name a service.
fn key(proto: &str, vip: &str) -> Result<Attrs, String> {
    let proto = match proto {
        "TCP" => libc::IPPROTO_TCP as u16,
        "UDP" => libc::IPPROTO_UDP as u16,
        p => return Err(format!("{p}: TCP or UDP")),
    };
    let v = sockaddr(vip)?;
    let mut a = Attrs::default();
    a.u16(SVC_AF, af(v.ip()))
        .u16(SVC_PROTOCOL, proto)
        .put(SVC_ADDR, &addr16(v.ip()))
        .put(SVC_PORT, &v.port().to_be_bytes());
    Ok(a)
}

fn dest(rip: &str) -> Result<Attrs, String> {
    let r = sockaddr(rip)?;
    let mut a = Attrs::default();
    a.put(DEST_ADDR, &addr16(r.ip()))
        .put(DEST_PORT, &r.port().to_be_bytes())
        .u16(DEST_ADDR_FAMILY, af(r.ip()));
    Ok(a)
}

fn addr_from(family: u16, b: Option<&[u8]>) -> Option<IpAddr> {
    let b = b?;
    if family == libc::AF_INET6 as u16 {
        Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(b.get(..16)?).ok()?,
        )))
    } else {
        Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(b.get(..4)?).ok()?,
        )))
    }
}

fn port_from(b: Option<&[u8]>) -> Option<u16> {
    Some(u16::from_be_bytes(b?.get(..2)?.try_into().ok()?))
}

fn dump(sock: &mut Socket, ipvs: u16) -> Result<String, String> {
    let services = sock
        .request(ipvs, NLM_F_DUMP, CMD_GET_SERVICE, &Attrs::default())
        .map_err(|e| format!("dumping the services: {e}"))?;
    let mut out = String::new();
    for m in services {
        let top = parse(&m);
        let Some(svc) = get(&top, CMD_ATTR_SERVICE) else {
            continue;
        };
        let s = parse(svc);
        if get(&s, SVC_FWMARK).is_some() {
            out.push_str(&format!(
                "FWM {} {}\n",
                u32_of(get(&s, SVC_FWMARK)).unwrap_or(0),
                sched(&s)
            ));
            continue;
        }
        let family = u16_of(get(&s, SVC_AF)).unwrap_or(0);
        let proto = match u16_of(get(&s, SVC_PROTOCOL)) {
            Some(p) if p == libc::IPPROTO_TCP as u16 => "TCP".to_string(),
            Some(p) if p == libc::IPPROTO_UDP as u16 => "UDP".to_string(),
            p => format!("proto{}", p.unwrap_or(0)),
        };
        let (Some(addr), Some(port)) = (
            addr_from(family, get(&s, SVC_ADDR)),
            port_from(get(&s, SVC_PORT)),
        ) else {
            continue;
        };
        let flags = u32_of(get(&s, SVC_FLAGS)).unwrap_or(0);
        let persistent = if flags & IP_VS_SVC_F_PERSISTENT != 0 {
            u32_of(get(&s, SVC_TIMEOUT)).unwrap_or(0).to_string()
        } else {
            "-".into()
        };
        let netmask = get(&s, SVC_NETMASK)
            .and_then(|b| <[u8; 4]>::try_from(b.get(..4)?).ok())
            .map(|b| {
                if family == libc::AF_INET6 as u16 {
                    format!("/{}", u32::from_ne_bytes(b))
                } else {
                    Ipv4Addr::from(b).to_string()
                }
            })
            .unwrap_or_default();
        let sa = SocketAddr::new(addr, port);
        out.push_str(&format!(
            "{proto} {sa} {} persistent={persistent} netmask={netmask}\n",
            sched(&s)
        ));
        let mut a = Attrs::default();
        let mut k = Attrs::default();
        k.u16(SVC_AF, family)
            .u16(SVC_PROTOCOL, u16_of(get(&s, SVC_PROTOCOL)).unwrap_or(0))
            .put(SVC_ADDR, &addr16(addr))
            .put(SVC_PORT, &port.to_be_bytes());
        a.nest(CMD_ATTR_SERVICE, &k);
        let dests = sock
            .request(ipvs, NLM_F_DUMP, CMD_GET_DEST, &a)
            .map_err(|e| format!("dumping the real servers of {sa}: {e}"))?;
        for m in dests {
            let top = parse(&m);
            let Some(d) = get(&top, CMD_ATTR_DEST) else {
                continue;
            };
            let d = parse(d);
            let dfam = u16_of(get(&d, DEST_ADDR_FAMILY)).unwrap_or(family);
            let (Some(ra), Some(rp)) = (
                addr_from(dfam, get(&d, DEST_ADDR)),
                port_from(get(&d, DEST_PORT)),
            ) else {
                continue;
            };
            let v = |k| u32_of(get(&d, k)).unwrap_or(0);
            let fwd = FWD_NAMES
                .get((v(DEST_FWD_METHOD) & 7) as usize)
                .copied()
                .unwrap_or("bypass");
            out.push_str(&format!(
                "  -> {} {fwd} weight={} upper={} lower={} active={} inactive={}\n",
                SocketAddr::new(ra, rp),
                v(DEST_WEIGHT) as i32,
                v(DEST_U_THRESH),
                v(DEST_L_THRESH),
                v(DEST_ACTIVE_CONNS),
                v(DEST_INACT_CONNS),
            ));
        }
    }
    Ok(out)
}

fn sched(s: &[(u16, &[u8])]) -> String {
    get(s, SVC_SCHED_NAME)
        .map(|b| {
            String::from_utf8_lossy(b)
                .trim_end_matches('\0')
                .to_string()
        })
        .unwrap_or_default()
}
