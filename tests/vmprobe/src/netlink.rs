//! Generic netlink, just enough for IPVS: a blocking socket, requests with their
//! answers (dumps included), and netlink attributes. Written from the kernel's uapi
//! headers (linux/netlink.h, linux/genetlink.h), independently of lbcore's own client,
//! so that the tests do not read lbcore's table back through lbcore's code.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_ACK: u16 = 4;
pub const NLM_F_DUMP: u16 = 0x300;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// `NLA_TYPE_MASK`: the attribute type without the nested / byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Attributes being built: each is (len, type, payload) padded to 4 bytes.
#[derive(Default)]
pub struct Attrs(pub Vec<u8>);

impl Attrs {
    pub fn put(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + payload.len()).expect("attribute too long");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
        self
    }
    pub fn u16(&mut self, kind: u16, v: u16) -> &mut Self {
        self.put(kind, &v.to_ne_bytes())
    }
    pub fn u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.put(kind, &v.to_ne_bytes())
    }
    pub fn nest(&mut self, kind: u16, inner: &Attrs) -> &mut Self {
        self.put(kind, &inner.0)
    }
}

/// The attributes in `buf`: (type, payload).
pub fn parse(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind, &buf[4..len]));
        buf = buf.get((len + 3) & !3..).unwrap_or_default();
    }
    out
}

pub fn get<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, p)| *p)
}

pub fn u16_of(p: Option<&[u8]>) -> Option<u16> {
    Some(u16::from_ne_bytes(p?.get(..2)?.try_into().ok()?))
}

pub fn u32_of(p: Option<&[u8]>) -> Option<u32> {
    Some(u32::from_ne_bytes(p?.get(..4)?.try_into().ok()?))
}

pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_nl is valid (pid 0: the kernel assigns one).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `sa` is a sockaddr_nl of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket { fd, seq: 1 })
    }

    /// Sends one generic netlink request; returns the attributes (after the genetlink
    /// header) of every answer message, until the ack or the end of the dump.
    pub fn request(
        &mut self,
        family: u16,
        flags: u16,
        cmd: u8,
        attrs: &Attrs,
    ) -> io::Result<Vec<Vec<u8>>> {
        self.seq += 1;
        let seq = self.seq;
        let len = 16 + 4 + attrs.0.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&family.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[cmd, 1, 0, 0]);
        msg.extend_from_slice(&attrs.0);
        // SAFETY: `msg` is a readable buffer of the length passed.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: `buf` is a writable buffer of the length passed.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut b = &buf[..n as usize];
            while b.len() >= 16 {
                let mlen = u32::from_ne_bytes(b[0..4].try_into().unwrap_or_default()) as usize;
                let mtype = u16::from_ne_bytes([b[4], b[5]]);
                let mseq = u32::from_ne_bytes(b[8..12].try_into().unwrap_or_default());
                if mlen < 16 || mlen > b.len() {
                    return Err(io::Error::other("malformed netlink answer"));
                }
                let payload = &b[16..mlen];
                b = &b[((mlen + 3) & !3).min(b.len())..];
                if mseq != seq {
                    continue;
                }
                match mtype {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(
                            payload
                                .get(..4)
                                .and_then(|p| p.try_into().ok())
                                .unwrap_or_default(),
                        );
                        if code == 0 {
                            if flags & NLM_F_DUMP == NLM_F_DUMP {
                                continue; // a dump ends with DONE
                            }
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    _ => out.push(payload.get(4..).unwrap_or_default().to_vec()),
                }
            }
        }
    }

    /// The id of generic netlink family `name`.
    pub fn family(&mut self, name: &str) -> io::Result<u16> {
        let mut a = Attrs::default();
        let mut z = name.as_bytes().to_vec();
        z.push(0);
        a.put(CTRL_ATTR_FAMILY_NAME, &z);
        let answers = self.request(GENL_ID_CTRL, 0, CTRL_CMD_GETFAMILY, &a)?;
        answers
            .iter()
            .find_map(|m| u16_of(get(&parse(m), CTRL_ATTR_FAMILY_ID)))
            .ok_or_else(|| io::Error::other(format!("no generic netlink family {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut inner = Attrs::default();
        inner.put(6, b"sh\0").u16(1, 2);
        let mut a = Attrs::default();
        a.nest(1, &inner).u32(9, 7);
        assert_eq!(a.0.len() % 4, 0);
        let top = parse(&a.0);
        assert_eq!(top.len(), 2);
        let nested = parse(top[0].1);
        assert_eq!(get(&nested, 6), Some(&b"sh\0"[..]));
        assert_eq!(u16_of(get(&nested, 1)), Some(2));
        assert_eq!(u32_of(get(&top, 9)), Some(7));
    }
}
