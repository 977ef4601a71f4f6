//! ICMP echo check (ping), IPv4 and IPv6: the server is up when it answers an echo request.
//!
//! Two kinds of socket, tried in this order:
//! - an unprivileged ICMP "ping socket" (`SOCK_DGRAM`, `IPPROTO_ICMP`/`IPPROTO_ICMPV6`),
//!   which Linux grants to groups listed in `net.ipv4.ping_group_range`: no root needed,
//!   and the kernel delivers to it only the replies to its own requests;
//! - else a raw socket, which needs root (CAP_NET_RAW) and sees every ICMP packet of the
//!   host, so replies are matched by identifier, sequence number, source and payload.
//!
//! The socket is opened with socket2 and then driven through tokio's `UdpSocket`: both
//! kinds are datagram-style sockets used with plain `sendto`/`recvfrom`, which is all that
//! wrapper does, so no unsafe code is needed for the async I/O.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::{Deadline, ProbeError};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACHABLE: u8 = 1;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// Size of the fixed IPv6 header quoted inside ICMPv6 errors.
const IPV6_HEADER_LEN: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Unprivileged ping socket: no IP header on receive, the kernel owns the identifier.
    Ping,
    /// Raw socket: IPv4 receives include the IP header; everything ICMP arrives.
    Raw,
}

pub(super) struct IcmpSocket {
    socket: UdpSocket,
    kind: Kind,
    v6: bool,
}

impl IcmpSocket {
    #[cfg(test)]
    pub(super) fn kind(&self) -> Kind {
        self.kind
    }
}

/// Opens the best ICMP socket this process may have for `address`'s family.
pub(super) fn open(address: IpAddr) -> Result<IcmpSocket, ProbeError> {
    let (domain, protocol, v6) = match address {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, false),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, true),
    };
    let (socket, kind) = match Socket::new(domain, Type::DGRAM, Some(protocol)) {
        Ok(s) => (s, Kind::Ping),
        Err(ping_error) => match Socket::new(domain, Type::RAW, Some(protocol)) {
            Ok(s) => (s, Kind::Raw),
            Err(raw_error) => {
                return Err(ProbeError::PingSocket(format!(
                    "no ping socket ({ping_error}; see net.ipv4.ping_group_range) and no raw socket ({raw_error}; needs CAP_NET_RAW)"
                )));
            }
        },
    };
    let fail = |e: std::io::Error| ProbeError::PingSocket(e.to_string());
    socket.set_nonblocking(true).map_err(fail)?;
    let socket = UdpSocket::from_std(std::net::UdpSocket::from(socket)).map_err(fail)?;
    Ok(IcmpSocket { socket, kind, v6 })
}

/// Identifier and sequence number of one probe. Raw sockets of concurrent probes all see
/// each other's replies, so each probe gets its own pair (and its own payload below).
fn next_ident_and_sequence() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // The process ID spreads identifiers between several lbcore processes on one host.
    let pid = u16::try_from(std::process::id() & 0xFFFF).unwrap_or(0);
    (pid ^ n.rotate_left(8), n)
}

pub(super) async fn probe(address: IpAddr, timeout: Duration) -> Result<(), ProbeError> {
    let deadline = Deadline::after(timeout);
    // An IPv4 server written as ::ffff:a.b.c.d is pinged over IPv4.
    let address = address.to_canonical();
    let socket = open(address)?;
    let (ident, sequence) = next_ident_and_sequence();
    let payload = payload(ident, sequence);
    let request = echo_request(socket.v6, ident, sequence, &payload);
    let destination = SocketAddr::new(address, 0);

    let stage = "sending the ICMP echo request";
    deadline
        .run(stage, async {
            socket
                .socket
                .send_to(&request, destination)
                .await
                .map_err(|e| match e.kind() {
                    ErrorKind::PermissionDenied => ProbeError::Io {
                        stage,
                        reason: format!("{e} (a firewall rule may drop ICMP)"),
                    },
                    _ => ProbeError::Io {
                        stage,
                        reason: e.to_string(),
                    },
                })
        })
        .await?;

    let stage = "waiting for the ICMP echo reply";
    deadline
        .run(stage, async {
            let mut buffer = [0u8; 2048];
            loop {
                let (n, from) =
                    socket
                        .socket
                        .recv_from(&mut buffer)
                        .await
                        .map_err(|e| ProbeError::Io {
                            stage,
                            reason: e.to_string(),
                        })?;
                let expected = Expected {
                    address,
                    ident,
                    sequence,
                    payload: &payload,
                };
                match classify(&socket, &buffer[..n], from.ip().to_canonical(), &expected) {
                    Verdict::Reply => return Ok(()),
                    Verdict::Error(e) => return Err(e),
                    Verdict::Other => continue,
                }
            }
        })
        .await
}

/// 16 bytes that tie a reply to this very request: identifier, sequence and the time.
fn payload(ident: u16, sequence: u16) -> Vec<u8> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut p = Vec::with_capacity(16);
    p.extend_from_slice(b"LB");
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&sequence.to_be_bytes());
    p.extend_from_slice(&nanos.to_be_bytes()[6..]);
    p
}

/// An echo request. ICMPv4 carries our checksum (a ping socket recomputes it anyway, after
/// putting in its own identifier); for ICMPv6 the kernel always computes it, because it
/// covers the IPv6 pseudo-header, which only the kernel knows.
fn echo_request(v6: bool, ident: u16, sequence: u16, payload: &[u8]) -> Vec<u8> {
    let kind = if v6 {
        ICMPV6_ECHO_REQUEST
    } else {
        ICMP_ECHO_REQUEST
    };
    let mut packet = vec![kind, 0, 0, 0];
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(payload);
    if !v6 {
        let sum = checksum(&packet).to_be_bytes();
        packet[2] = sum[0];
        packet[3] = sum[1];
    }
    packet
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = match pair {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(u16::try_from(sum).unwrap_or(0xFFFF))
}

struct Expected<'a> {
    address: IpAddr,
    ident: u16,
    sequence: u16,
    payload: &'a [u8],
}

enum Verdict {
    /// Our echo reply.
    Reply,
    /// An ICMP error about our request: the server is unreachable, no need to wait.
    Error(ProbeError),
    /// Someone else's packet (raw sockets see them all), or our own request on loopback.
    Other,
}

fn classify(socket: &IcmpSocket, packet: &[u8], from: IpAddr, expected: &Expected<'_>) -> Verdict {
    let icmp = match (socket.kind, socket.v6) {
        // Raw IPv4 sockets receive the IP header too; its length is in the first byte.
        (Kind::Raw, false) => {
            let Some(first) = packet.first() else {
                return Verdict::Other;
            };
            let header = usize::from(first & 0x0F) * 4;
            match packet.get(header..) {
                Some(icmp) => icmp,
                None => return Verdict::Other,
            }
        }
        _ => packet,
    };
    let (Some(&kind), Some(&code)) = (icmp.first(), icmp.get(1)) else {
        return Verdict::Other;
    };
    let reply = if socket.v6 {
        ICMPV6_ECHO_REPLY
    } else {
        ICMP_ECHO_REPLY
    };
    if kind == reply {
        let Some(body) = icmp.get(4..) else {
            return Verdict::Other;
        };
        let ident = u16::from_be_bytes([
            body.first().copied().unwrap_or(0),
            body.get(1).copied().unwrap_or(0),
        ]);
        let sequence = u16::from_be_bytes([
            body.get(2).copied().unwrap_or(0),
            body.get(3).copied().unwrap_or(0),
        ]);
        // A ping socket's identifier is chosen by the kernel, which also delivers only the
        // replies to that identifier; a raw socket has to check it itself.
        let ident_ok = socket.kind == Kind::Ping || ident == expected.ident;
        if from == expected.address
            && ident_ok
            && sequence == expected.sequence
            && body.get(4..) == Some(expected.payload)
        {
            return Verdict::Reply;
        }
        return Verdict::Other;
    }
    // ICMP errors quote the offending packet: its IP header, then our echo request.
    let error = match (socket.v6, kind) {
        (false, ICMP_DEST_UNREACHABLE) => "destination unreachable",
        (false, ICMP_TIME_EXCEEDED) => "time exceeded",
        (true, ICMPV6_DEST_UNREACHABLE) => "destination unreachable",
        (true, ICMPV6_TIME_EXCEEDED) => "time exceeded",
        _ => return Verdict::Other,
    };
    let Some(quoted) = icmp.get(8..) else {
        return Verdict::Other;
    };
    let quoted_icmp = if socket.v6 {
        quoted.get(IPV6_HEADER_LEN..)
    } else {
        quoted
            .first()
            .and_then(|b| quoted.get(usize::from(b & 0x0F) * 4..))
    };
    let Some(request) = quoted_icmp else {
        return Verdict::Other;
    };
    let echo_request = if socket.v6 {
        ICMPV6_ECHO_REQUEST
    } else {
        ICMP_ECHO_REQUEST
    };
    let ours = request.first() == Some(&echo_request)
        && (socket.kind == Kind::Ping
            || request.get(4..6) == Some(&expected.ident.to_be_bytes()[..]))
        && request.get(6..8) == Some(&expected.sequence.to_be_bytes()[..]);
    if ours {
        Verdict::Error(ProbeError::Icmp {
            what: format!("{error} (code {code})"),
            from,
        })
    } else {
        Verdict::Other
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::config::Probe;
    use crate::health::Target;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn target(ip: IpAddr) -> Target {
        Target {
            service: SocketAddr::new(ip, 0),
            server: SocketAddr::new(ip, 0),
        }
    }

    #[tokio::test]
    async fn ping_ipv4_loopback_answers() {
        let result =
            crate::health::probe(&Probe::Ping, &target(Ipv4Addr::LOCALHOST.into()), TIMEOUT).await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn ping_ipv6_loopback_answers() {
        assert!(
            std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok(),
            "this machine has no ::1: the IPv6 ping check cannot be tested (the appliance and CI have it)"
        );
        let result =
            crate::health::probe(&Probe::Ping, &target(Ipv6Addr::LOCALHOST.into()), TIMEOUT).await;
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn echo_request_bytes_and_checksum() {
        let packet = echo_request(false, 0x1234, 1, b"ab");
        assert_eq!(&packet[..2], &[8, 0]);
        assert_eq!(&packet[4..8], &[0x12, 0x34, 0, 1]);
        // A correct checksum makes the sum over the whole packet 0xFFFF, i.e. checksum 0.
        assert_eq!(checksum(&packet), 0);
        assert_eq!(echo_request(true, 1, 2, b"")[..4], [128, 0, 0, 0]);
    }

    /// Runs `body` on a thread of its own inside a fresh network namespace (only its
    /// loopback, brought up here), so that the test may change that namespace's sysctls and
    /// send nothing anywhere but its own loopback. Returns false when namespaces are not
    /// available (not root).
    /// Runs `body` on a thread of its own in a new network namespace, whose sysctls the
    /// test may change. Needs root, as tests/run runs the tests: without it the test
    /// fails and says so (it is never passed unrun).
    fn in_private_netns(body: impl FnOnce() + Send + 'static) {
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare(2) only changes this thread's namespace; nothing else in the
            // test process is affected.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!(
                    "cannot make a network namespace ({}): these ping tests run as root, as tests/run runs them",
                    std::io::Error::last_os_error()
                );
            }
            bring_loopback_up();
            body();
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }

    fn bring_loopback_up() {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        // SAFETY: ifreq is plain data; the ioctls read and write only that struct.
        unsafe {
            let mut request: libc::ifreq = std::mem::zeroed();
            for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
                *dst = *src as libc::c_char;
            }
            use std::os::fd::AsRawFd;
            let fd = socket.as_raw_fd();
            assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request), 0);
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut request), 0);
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn ping_socket_is_used_where_ping_group_range_allows() {
        in_private_netns(|| {
            // This namespace's own setting: our group may open ping sockets.
            // SAFETY: getgid(2) cannot fail.
            let gid = unsafe { libc::getgid() };
            std::fs::write(
                "/proc/sys/net/ipv4/ping_group_range",
                format!("{gid} {gid}"),
            )
            .unwrap();
            runtime().block_on(async {
                let socket = open(Ipv4Addr::LOCALHOST.into()).unwrap();
                assert_eq!(socket.kind(), Kind::Ping);
                let result = crate::health::probe(
                    &Probe::Ping,
                    &target(Ipv4Addr::LOCALHOST.into()),
                    TIMEOUT,
                )
                .await;
                assert_eq!(result, Ok(()));
                if let Ok(socket) = open(Ipv6Addr::LOCALHOST.into()) {
                    assert_eq!(socket.kind(), Kind::Ping);
                    let result = crate::health::probe(
                        &Probe::Ping,
                        &target(Ipv6Addr::LOCALHOST.into()),
                        TIMEOUT,
                    )
                    .await;
                    assert_eq!(result, Ok(()));
                }
            });
        });
    }

    #[test]
    fn raw_socket_is_used_otherwise() {
        in_private_netns(|| {
            std::fs::write("/proc/sys/net/ipv4/ping_group_range", "1 0").unwrap();
            runtime().block_on(async {
                let socket = open(Ipv4Addr::LOCALHOST.into()).unwrap();
                assert_eq!(socket.kind(), Kind::Raw);
                let result = crate::health::probe(
                    &Probe::Ping,
                    &target(Ipv4Addr::LOCALHOST.into()),
                    TIMEOUT,
                )
                .await;
                assert_eq!(result, Ok(()));
            });
        });
    }

    #[test]
    fn unanswered_ping_times_out() {
        in_private_netns(|| {
            // A blackhole that sends nothing off this host: this namespace's loopback stops
            // answering echo requests.
            std::fs::write("/proc/sys/net/ipv4/icmp_echo_ignore_all", "1").unwrap();
            runtime().block_on(async {
                let timeout = Duration::from_millis(400);
                let start = std::time::Instant::now();
                let result = crate::health::probe(
                    &Probe::Ping,
                    &target(Ipv4Addr::LOCALHOST.into()),
                    timeout,
                )
                .await;
                let elapsed = start.elapsed();
                assert_eq!(
                    result.unwrap_err().to_string(),
                    "timed out after 400ms while waiting for the ICMP echo reply"
                );
                assert!(
                    elapsed >= timeout && elapsed < timeout + crate::health::testutil::SLACK,
                    "{elapsed:?}"
                );
            });
        });
    }
}
