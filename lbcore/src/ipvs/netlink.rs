//! Generic netlink messages, just what IPVS needs: a message builder with nested
//! attributes, a parser for the kernel's answers, and a blocking request/answer socket.
//!
//! Layout (include/uapi/linux/netlink.h, genetlink.h): `nlmsghdr` (len u32, type u16,
//! flags u16, seq u32, pid u32), `genlmsghdr` (cmd u8, version u8, reserved u16), then
//! attributes: `nlattr` (len u16, type u16) + payload, each padded to 4 bytes. All
//! integers are in host byte order unless the attribute says otherwise (ports are
//! big-endian in IPVS).

use std::io;

use netlink_sys::{Socket, protocols::NETLINK_GENERIC};

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one generic netlink request.
pub struct Message {
    buf: Vec<u8>,
    /// Start offsets of the nested attributes still open.
    open: Vec<usize>,
}

impl Message {
    pub fn new(family: u16, flags: u16, cmd: u8, version: u8) -> Message {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish()
        buf.extend_from_slice(&family.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, set by finish()
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        Message {
            buf,
            open: Vec::new(),
        }
    }

    pub fn put(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.buf
            .extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    pub fn put_u16(&mut self, kind: u16, v: u16) -> &mut Self {
        self.put(kind, &v.to_ne_bytes())
    }

    pub fn put_u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.put(kind, &v.to_ne_bytes())
    }

    /// A NUL-terminated string.
    pub fn put_str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(kind, &b)
    }

    pub fn begin_nested(&mut self, kind: u16) -> &mut Self {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end_nested(&mut self) -> &mut Self {
        if let Some(start) = self.open.pop() {
            let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// The bytes to send, with length and sequence number filled in.
    pub fn finish(&self, seq: u32) -> Vec<u8> {
        let mut b = self.buf.clone();
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b[8..12].copy_from_slice(&seq.to_ne_bytes());
        b
    }
}

/// One attribute of a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    pub kind: u16,
    pub payload: &'a [u8],
}

impl<'a> Attr<'a> {
    pub fn u16(&self) -> Option<u16> {
        Some(u16::from_ne_bytes(self.payload.get(..2)?.try_into().ok()?))
    }

    pub fn u32(&self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.payload.get(..4)?.try_into().ok()?))
    }

    pub fn u64(&self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.payload.get(..8)?.try_into().ok()?))
    }

    /// Big-endian u16 (ports).
    pub fn be16(&self) -> Option<u16> {
        Some(u16::from_be_bytes(self.payload.get(..2)?.try_into().ok()?))
    }

    pub fn string(&self) -> String {
        let end = self
            .payload
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.payload.len());
        String::from_utf8_lossy(&self.payload[..end]).into_owned()
    }

    pub fn nested(&self) -> Attrs<'a> {
        Attrs(self.payload)
    }
}

/// Iterates the attributes in a buffer; stops at the first malformed one.
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a>(pub &'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = Attr<'a>;

    fn next(&mut self) -> Option<Attr<'a>> {
        let b = self.0;
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            self.0 = &[];
            return None;
        }
        let payload = &b[4..len];
        self.0 = &b[align(len).min(b.len())..];
        Some(Attr { kind, payload })
    }
}

/// A message from the kernel.
#[derive(Debug)]
pub enum Reply<'a> {
    /// A generic netlink message: its command and attributes.
    Data {
        cmd: u8,
        attrs: Attrs<'a>,
    },
    /// An acknowledgement (error 0).
    Ack,
    /// A refusal with the kernel's errno.
    Error(i32),
    Done,
}

/// Splits a received datagram into messages (several may share one datagram).
pub fn parse_replies(buf: &[u8]) -> Vec<(u32, Reply<'_>)> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32::from_ne_bytes(rest[8..12].try_into().unwrap_or_default());
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        let body = &rest[NLMSG_HDRLEN..len];
        let reply = match kind {
            NLMSG_ERROR => {
                let errno = body
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_ne_bytes)
                    .unwrap_or(-libc::EPROTO);
                if errno == 0 {
                    Reply::Ack
                } else {
                    Reply::Error(-errno)
                }
            }
            NLMSG_DONE => Reply::Done,
            _ if body.len() >= GENL_HDRLEN => Reply::Data {
                cmd: body[0],
                attrs: Attrs(&body[GENL_HDRLEN..]),
            },
            _ => Reply::Error(libc::EPROTO),
        };
        out.push((seq, reply));
        rest = &rest[align(len).min(rest.len())..];
    }
    out
}

/// A blocking generic netlink socket that sends one request at a time.
pub struct Connection {
    socket: Socket,
    seq: u32,
}

impl Connection {
    pub fn open() -> io::Result<Connection> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.set_ext_ack(true).ok();
        Ok(Connection { socket, seq: 1 })
    }

    /// Sends `msg` and collects the data messages of the answer, until the ACK (for a
    /// change) or DONE (for a dump). A refusal is an error with the kernel's errno.
    pub fn request<T>(
        &mut self,
        msg: &Message,
        mut each: impl FnMut(u8, Attrs<'_>) -> Option<T>,
    ) -> io::Result<Vec<T>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = {
            let flags = u16::from_ne_bytes([msg.buf[6], msg.buf[7]]);
            flags & NLM_F_DUMP == NLM_F_DUMP
        };
        self.socket.send(&msg.finish(seq), 0)?;
        let mut out = Vec::new();
        loop {
            let (buf, _) = self.socket.recv_from_full()?;
            for (s, reply) in parse_replies(&buf) {
                if s != seq {
                    continue; // a late answer to an earlier request
                }
                match reply {
                    Reply::Data { cmd, attrs } => {
                        // (a single answer is followed by the ACK we asked for)
                        if let Some(v) = each(cmd, attrs) {
                            out.push(v);
                        }
                    }
                    Reply::Ack if !dump => return Ok(out),
                    Reply::Ack => {}
                    Reply::Done => return Ok(out),
                    Reply::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
                }
            }
        }
    }

    /// The id of generic netlink family `name`; `NotFound` when the kernel has none
    /// (e.g. the module is not loaded).
    pub fn family_id(&mut self, name: &str) -> io::Result<u16> {
        let mut m = Message::new(
            GENL_ID_CTRL,
            NLM_F_REQUEST | NLM_F_ACK,
            CTRL_CMD_GETFAMILY,
            1,
        );
        m.put_str(CTRL_ATTR_FAMILY_NAME, name);
        let ids = self
            .request(&m, |_, attrs| {
                attrs
                    .into_iter()
                    .find(|a| a.kind == CTRL_ATTR_FAMILY_ID)
                    .and_then(|a| a.u16())
            })
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOENT) {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("the kernel has no generic netlink family {name:?}"),
                    )
                } else {
                    e
                }
            })?;
        ids.first().copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the kernel's answer for family {name:?} has no id"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout_matches_the_netlink_abi() {
        let mut m = Message::new(0x23, NLM_F_REQUEST | NLM_F_ACK, 7, 1);
        m.begin_nested(1)
            .put_u16(1, 2)
            .put_str(6, "wlc")
            .end_nested();
        let b = m.finish(9);
        // nlmsghdr
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x23);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), 0x5);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 9);
        // genlmsghdr
        assert_eq!(&b[16..20], &[7, 1, 0, 0]);
        // nested attribute: 4 + (4+2 pad 2) + (4+4) = 20 bytes, type with NLA_F_NESTED
        assert_eq!(u16::from_ne_bytes([b[20], b[21]]), 20);
        assert_eq!(u16::from_ne_bytes([b[22], b[23]]), 1 | NLA_F_NESTED);
        assert_eq!(u16::from_ne_bytes([b[24], b[25]]), 6); // u16: 4 + 2
        assert_eq!(u16::from_ne_bytes([b[26], b[27]]), 1);
        assert_eq!(&b[28..30], &2u16.to_ne_bytes());
        assert_eq!(&b[30..32], &[0, 0], "padded to 4 bytes");
        assert_eq!(u16::from_ne_bytes([b[32], b[33]]), 8); // "wlc\0"
        assert_eq!(&b[36..40], b"wlc\0");
        assert_eq!(b.len(), 40);
    }

    #[test]
    fn attributes_parse_with_padding_and_nesting() {
        let mut m = Message::new(1, 0, 0, 0);
        m.put_u16(3, 0xabcd)
            .begin_nested(2)
            .put_u32(4, 77)
            .put(5, &[1, 2, 3])
            .end_nested()
            .put_str(9, "IPVS");
        let b = m.finish(1);
        let attrs: Vec<_> = Attrs(&b[20..]).collect();
        assert_eq!(attrs.len(), 3);
        assert_eq!(attrs[0].u16(), Some(0xabcd));
        assert_eq!(attrs[1].kind, 2, "the nested flag is masked off");
        let inner: Vec<_> = attrs[1].nested().collect();
        assert_eq!(inner[0].u32(), Some(77));
        assert_eq!(inner[1].payload, &[1, 2, 3]);
        assert_eq!(attrs[2].string(), "IPVS");
    }

    #[test]
    fn malformed_attributes_end_the_iteration() {
        let bad = [200u8, 0, 1, 0, 9, 9];
        assert_eq!(Attrs(&bad).count(), 0);
        assert_eq!(Attrs(&[1, 0]).count(), 0);
    }

    #[test]
    fn replies_split_errors_acks_and_data() {
        let mut buf = Vec::new();
        let mut push = |kind: u16, seq: u32, body: &[u8]| {
            let len = (16 + body.len()) as u32;
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(&kind.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(body);
        };
        push(0x20, 5, &[4, 1, 0, 0, 8, 0, 1, 0, 42, 0, 0, 0]);
        push(NLMSG_ERROR, 5, &(-libc::EEXIST).to_ne_bytes());
        push(NLMSG_ERROR, 6, &0i32.to_ne_bytes());
        push(NLMSG_DONE, 7, &0i32.to_ne_bytes());
        let r = parse_replies(&buf);
        assert_eq!(r.len(), 4);
        match &r[0].1 {
            Reply::Data { cmd, attrs } => {
                assert_eq!(*cmd, 4);
                assert_eq!(attrs.clone().next().unwrap().u32(), Some(42));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(r[1], (5, Reply::Error(e)) if e == libc::EEXIST));
        assert!(matches!(r[2], (6, Reply::Ack)));
        assert!(matches!(r[3], (7, Reply::Done)));
    }
}
