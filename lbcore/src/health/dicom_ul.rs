//! A small codec for the parts of DICOM that the C-ECHO check speaks: the upper-layer PDUs
//! of PS3.8 section 9.3 (A-ASSOCIATE-RQ/AC/RJ, P-DATA-TF, A-RELEASE-RQ/RP, A-ABORT) and the
//! DIMSE command set of PS3.7 (group 0000, implicit VR little endian).
//!
//! Pure encoding and decoding, no I/O, so that every byte layout is unit-tested here and the
//! probe in `dicom.rs` only deals with the conversation. Decoding never trusts a length field:
//! every read is bounds-checked and a short or inconsistent PDU is an error, not a panic.

use std::fmt;

/// DICOM Application Context Name (PS3.7 Annex A.2.1).
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
/// Verification SOP Class, the abstract syntax of C-ECHO (PS3.4 Annex A).
pub const VERIFICATION_SOP_CLASS: &str = "1.2.840.10008.1.1";
/// Implicit VR Little Endian, the transfer syntax every SCP must accept (PS3.5 10.1).
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";

/// Every PDU starts with type (1 byte), reserved (1 byte), length (4 bytes, big endian).
pub const PDU_HEADER_LEN: usize = 6;

/// PDU types (PS3.8 9.3.1).
pub mod pdu_type {
    pub const ASSOCIATE_RQ: u8 = 0x01;
    pub const ASSOCIATE_AC: u8 = 0x02;
    pub const ASSOCIATE_RJ: u8 = 0x03;
    pub const P_DATA_TF: u8 = 0x04;
    pub const RELEASE_RQ: u8 = 0x05;
    pub const RELEASE_RP: u8 = 0x06;
    pub const ABORT: u8 = 0x07;
}

/// Item types inside A-ASSOCIATE-RQ/AC (PS3.8 9.3.2, 9.3.3, Annex D).
mod item {
    pub const APPLICATION_CONTEXT: u8 = 0x10;
    pub const PRESENTATION_CONTEXT_RQ: u8 = 0x20;
    pub const PRESENTATION_CONTEXT_AC: u8 = 0x21;
    pub const ABSTRACT_SYNTAX: u8 = 0x30;
    pub const TRANSFER_SYNTAX: u8 = 0x40;
    pub const USER_INFORMATION: u8 = 0x50;
    pub const MAX_LENGTH: u8 = 0x51;
    pub const IMPLEMENTATION_CLASS_UID: u8 = 0x52;
    pub const IMPLEMENTATION_VERSION_NAME: u8 = 0x55;
}

/// Why bytes could not be decoded; the probe reports it as a malformed PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(message: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(message.into()))
}

/// One upper-layer PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    AssociateRq(Associate),
    AssociateAc(Associate),
    AssociateRj { result: u8, source: u8, reason: u8 },
    PData(Vec<Pdv>),
    ReleaseRq,
    ReleaseRp,
    Abort { source: u8, reason: u8 },
}

/// The common body of A-ASSOCIATE-RQ and A-ASSOCIATE-AC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Associate {
    pub called_ae: String,
    pub calling_ae: String,
    pub application_context: String,
    pub presentation_contexts: Vec<PresentationContext>,
    pub user: UserInfo,
}

/// A presentation context as proposed (RQ: abstract syntax and transfer syntaxes; `result`
/// unused) or as answered (AC: `result` and the one chosen transfer syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentationContext {
    pub id: u8,
    /// 0 = acceptance; see PS3.8 table 9-18 for the others.
    pub result: u8,
    pub abstract_syntax: Option<String>,
    pub transfer_syntaxes: Vec<String>,
}

/// The user-information sub-items the check sends or looks at; others are skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// Largest P-DATA-TF variable field the sender accepts; 0 = no limit.
    pub max_pdu_length: Option<u32>,
    pub implementation_class_uid: Option<String>,
    pub implementation_version_name: Option<String>,
}

/// One presentation data value of a P-DATA-TF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdv {
    pub context_id: u8,
    /// Message control header bit 0: command (else data set).
    pub command: bool,
    /// Message control header bit 1: last fragment of the command or data set.
    pub last: bool,
    pub data: Vec<u8>,
}

impl Pdu {
    /// The PDU's name as PS3.8 spells it, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Pdu::AssociateRq(_) => "A-ASSOCIATE-RQ",
            Pdu::AssociateAc(_) => "A-ASSOCIATE-AC",
            Pdu::AssociateRj { .. } => "A-ASSOCIATE-RJ",
            Pdu::PData(_) => "P-DATA-TF",
            Pdu::ReleaseRq => "A-RELEASE-RQ",
            Pdu::ReleaseRp => "A-RELEASE-RP",
            Pdu::Abort { .. } => "A-ABORT",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Pdu::AssociateRq(a) => encode_associate(pdu_type::ASSOCIATE_RQ, a),
            Pdu::AssociateAc(a) => encode_associate(pdu_type::ASSOCIATE_AC, a),
            Pdu::AssociateRj {
                result,
                source,
                reason,
            } => pdu(pdu_type::ASSOCIATE_RJ, &[0, *result, *source, *reason]),
            Pdu::PData(pdvs) => {
                let mut body = Vec::new();
                for pdv in pdvs {
                    put_u32(&mut body, len_u32(pdv.data.len() + 2));
                    body.push(pdv.context_id);
                    body.push(u8::from(pdv.command) | (u8::from(pdv.last) << 1));
                    body.extend_from_slice(&pdv.data);
                }
                pdu(pdu_type::P_DATA_TF, &body)
            }
            Pdu::ReleaseRq => pdu(pdu_type::RELEASE_RQ, &[0; 4]),
            Pdu::ReleaseRp => pdu(pdu_type::RELEASE_RP, &[0; 4]),
            Pdu::Abort { source, reason } => pdu(pdu_type::ABORT, &[0, 0, *source, *reason]),
        }
    }

    /// Decodes the body (everything after the 6-byte header) of a PDU of type `kind`.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Pdu, DecodeError> {
        match kind {
            pdu_type::ASSOCIATE_RQ => decode_associate(body, true).map(Pdu::AssociateRq),
            pdu_type::ASSOCIATE_AC => decode_associate(body, false).map(Pdu::AssociateAc),
            pdu_type::ASSOCIATE_RJ => {
                let b = fixed4(body, "A-ASSOCIATE-RJ")?;
                Ok(Pdu::AssociateRj {
                    result: b[1],
                    source: b[2],
                    reason: b[3],
                })
            }
            pdu_type::P_DATA_TF => decode_pdata(body).map(Pdu::PData),
            pdu_type::RELEASE_RQ => fixed4(body, "A-RELEASE-RQ").map(|_| Pdu::ReleaseRq),
            pdu_type::RELEASE_RP => fixed4(body, "A-RELEASE-RP").map(|_| Pdu::ReleaseRp),
            pdu_type::ABORT => {
                let b = fixed4(body, "A-ABORT")?;
                Ok(Pdu::Abort {
                    source: b[2],
                    reason: b[3],
                })
            }
            other => err(format!("unknown PDU type 0x{other:02X}")),
        }
    }
}

/// Splits a PDU header into type and body length.
pub fn parse_header(header: [u8; PDU_HEADER_LEN]) -> (u8, u32) {
    (
        header[0],
        u32::from_be_bytes([header[2], header[3], header[4], header[5]]),
    )
}

/// Lengths in this codec come from at most a few hundred bytes of our own data; saturating
/// keeps the encoder total without a panic path.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn len_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn pdu(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PDU_HEADER_LEN + body.len());
    out.push(kind);
    out.push(0);
    put_u32(&mut out, len_u32(body.len()));
    out.extend_from_slice(body);
    out
}

/// An item or sub-item: type, reserved, 2-byte length, value.
fn put_item(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.push(0);
    put_u16(out, len_u16(value.len()));
    out.extend_from_slice(value);
}

/// AE titles are 16 bytes, space padded (PS3.8 9.3.2); longer ones are cut, which the
/// configuration already refuses.
fn put_ae(out: &mut Vec<u8>, ae: &str) {
    let mut field = [b' '; 16];
    for (slot, byte) in field.iter_mut().zip(ae.bytes()) {
        *slot = byte;
    }
    out.extend_from_slice(&field);
}

fn encode_associate(kind: u8, a: &Associate) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    put_u16(&mut body, 0x0001); // protocol version 1
    put_u16(&mut body, 0);
    put_ae(&mut body, &a.called_ae);
    put_ae(&mut body, &a.calling_ae);
    body.extend_from_slice(&[0; 32]);
    put_item(
        &mut body,
        item::APPLICATION_CONTEXT,
        a.application_context.as_bytes(),
    );
    for pc in &a.presentation_contexts {
        let mut value = vec![pc.id, 0];
        if kind == pdu_type::ASSOCIATE_RQ {
            value.extend_from_slice(&[0, 0]);
            if let Some(abstract_syntax) = &pc.abstract_syntax {
                put_item(
                    &mut value,
                    item::ABSTRACT_SYNTAX,
                    abstract_syntax.as_bytes(),
                );
            }
            for ts in &pc.transfer_syntaxes {
                put_item(&mut value, item::TRANSFER_SYNTAX, ts.as_bytes());
            }
            put_item(&mut body, item::PRESENTATION_CONTEXT_RQ, &value);
        } else {
            value.extend_from_slice(&[pc.result, 0]);
            let ts = pc
                .transfer_syntaxes
                .first()
                .map(String::as_str)
                .unwrap_or("");
            put_item(&mut value, item::TRANSFER_SYNTAX, ts.as_bytes());
            put_item(&mut body, item::PRESENTATION_CONTEXT_AC, &value);
        }
    }
    let mut user = Vec::new();
    if let Some(max) = a.user.max_pdu_length {
        put_item(&mut user, item::MAX_LENGTH, &max.to_be_bytes());
    }
    if let Some(uid) = &a.user.implementation_class_uid {
        put_item(&mut user, item::IMPLEMENTATION_CLASS_UID, uid.as_bytes());
    }
    if let Some(name) = &a.user.implementation_version_name {
        put_item(
            &mut user,
            item::IMPLEMENTATION_VERSION_NAME,
            name.as_bytes(),
        );
    }
    put_item(&mut body, item::USER_INFORMATION, &user);
    pdu(kind, &body)
}

/// A bounds-checked cursor over bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Cursor { bytes, what }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return err(format!(
                "{} truncated: needs {n} more bytes, has {}",
                self.what,
                self.bytes.len()
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16_be(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32_be(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u16_le(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32_le(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An item: type, reserved, 2-byte length, value.
    fn item(&mut self) -> Result<(u8, &'a [u8]), DecodeError> {
        let kind = self.u8()?;
        self.take(1)?;
        let len = usize::from(self.u16_be()?);
        Ok((kind, self.take(len)?))
    }
}

fn fixed4<'a>(body: &'a [u8], what: &str) -> Result<&'a [u8], DecodeError> {
    if body.len() != 4 {
        return err(format!("{what} has length {}, expected 4", body.len()));
    }
    Ok(body)
}

/// Text of a UID or name: ASCII, with the NUL or space padding some peers add removed.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\0', ' '])
        .trim_start_matches(' ')
        .to_string()
}

fn decode_associate(body: &[u8], is_rq: bool) -> Result<Associate, DecodeError> {
    let what = if is_rq {
        "A-ASSOCIATE-RQ"
    } else {
        "A-ASSOCIATE-AC"
    };
    let mut c = Cursor::new(body, what);
    let version = c.u16_be()?;
    if version & 1 == 0 {
        return err(format!(
            "{what} protocol version 0x{version:04X} lacks version 1"
        ));
    }
    c.take(2)?;
    let called_ae = text(c.take(16)?);
    let calling_ae = text(c.take(16)?);
    c.take(32)?;
    let mut application_context = None;
    let mut presentation_contexts = Vec::new();
    let mut user = None;
    while !c.is_empty() {
        let (kind, value) = c.item()?;
        match kind {
            item::APPLICATION_CONTEXT => application_context = Some(text(value)),
            item::PRESENTATION_CONTEXT_RQ if is_rq => {
                presentation_contexts.push(decode_presentation_context(value, true)?)
            }
            item::PRESENTATION_CONTEXT_AC if !is_rq => {
                presentation_contexts.push(decode_presentation_context(value, false)?)
            }
            item::USER_INFORMATION => user = Some(decode_user_info(value)?),
            other => {
                return err(format!(
                    "{what} has an unexpected item of type 0x{other:02X}"
                ));
            }
        }
    }
    let Some(application_context) = application_context else {
        return err(format!("{what} has no application context item"));
    };
    let Some(user) = user else {
        return err(format!("{what} has no user information item"));
    };
    Ok(Associate {
        called_ae,
        calling_ae,
        application_context,
        presentation_contexts,
        user,
    })
}

fn decode_presentation_context(
    value: &[u8],
    is_rq: bool,
) -> Result<PresentationContext, DecodeError> {
    let mut c = Cursor::new(value, "presentation context item");
    let id = c.u8()?;
    c.take(1)?;
    let result = c.u8()?;
    c.take(1)?;
    let mut abstract_syntax = None;
    let mut transfer_syntaxes = Vec::new();
    while !c.is_empty() {
        let (kind, value) = c.item()?;
        match kind {
            item::ABSTRACT_SYNTAX if is_rq => abstract_syntax = Some(text(value)),
            item::TRANSFER_SYNTAX => transfer_syntaxes.push(text(value)),
            other => {
                return err(format!(
                    "presentation context {id} has an unexpected sub-item of type 0x{other:02X}"
                ));
            }
        }
    }
    Ok(PresentationContext {
        id,
        result: if is_rq { 0 } else { result },
        abstract_syntax,
        transfer_syntaxes,
    })
}

fn decode_user_info(value: &[u8]) -> Result<UserInfo, DecodeError> {
    let mut c = Cursor::new(value, "user information item");
    let mut user = UserInfo::default();
    while !c.is_empty() {
        let (kind, value) = c.item()?;
        match kind {
            item::MAX_LENGTH => {
                let mut v = Cursor::new(value, "maximum length sub-item");
                user.max_pdu_length = Some(v.u32_be()?);
            }
            item::IMPLEMENTATION_CLASS_UID => user.implementation_class_uid = Some(text(value)),
            item::IMPLEMENTATION_VERSION_NAME => {
                user.implementation_version_name = Some(text(value))
            }
            // Asynchronous operations, role selection, extended negotiation, user identity:
            // legal, and nothing a C-ECHO needs.
            _ => {}
        }
    }
    Ok(user)
}

fn decode_pdata(body: &[u8]) -> Result<Vec<Pdv>, DecodeError> {
    let mut c = Cursor::new(body, "P-DATA-TF");
    let mut pdvs = Vec::new();
    while !c.is_empty() {
        let len = c.u32_be()?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len < 2 {
            return err(format!("P-DATA-TF has a PDV item of length {len}"));
        }
        let item = c.take(len)?;
        pdvs.push(Pdv {
            context_id: item[0],
            command: item[1] & 1 != 0,
            last: item[1] & 2 != 0,
            data: item[2..].to_vec(),
        });
    }
    if pdvs.is_empty() {
        return err("P-DATA-TF holds no PDV item");
    }
    Ok(pdvs)
}

/// Tags of the command elements the check uses (group 0000, PS3.7 E.1).
pub mod tag {
    pub const COMMAND_GROUP_LENGTH: u16 = 0x0000;
    pub const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
    pub const COMMAND_FIELD: u16 = 0x0100;
    pub const MESSAGE_ID: u16 = 0x0110;
    pub const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
    pub const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
    pub const STATUS: u16 = 0x0900;
}

pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
/// CommandDataSetType value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;

/// A command value: unsigned short or UID (padded to even length with NUL, PS3.5 9.1).
enum Value<'a> {
    Us(u16),
    Uid(&'a str),
}

/// Encodes a command set in implicit VR little endian; `elements` in ascending tag order,
/// without the group length, which is computed here.
fn encode_command(elements: &[(u16, Value<'_>)]) -> Vec<u8> {
    let mut rest = Vec::new();
    for (element, value) in elements {
        let bytes = match value {
            Value::Us(v) => v.to_le_bytes().to_vec(),
            Value::Uid(uid) => {
                let mut b = uid.as_bytes().to_vec();
                if b.len() % 2 == 1 {
                    b.push(0);
                }
                b
            }
        };
        rest.extend_from_slice(&0u16.to_le_bytes());
        rest.extend_from_slice(&element.to_le_bytes());
        rest.extend_from_slice(&len_u32(bytes.len()).to_le_bytes());
        rest.extend_from_slice(&bytes);
    }
    let mut out = Vec::with_capacity(12 + rest.len());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&tag::COMMAND_GROUP_LENGTH.to_le_bytes());
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&len_u32(rest.len()).to_le_bytes());
    out.extend_from_slice(&rest);
    out
}

/// The C-ECHO-RQ command set (PS3.7 9.3.5.1).
pub fn c_echo_rq(message_id: u16) -> Vec<u8> {
    encode_command(&[
        (
            tag::AFFECTED_SOP_CLASS_UID,
            Value::Uid(VERIFICATION_SOP_CLASS),
        ),
        (tag::COMMAND_FIELD, Value::Us(C_ECHO_RQ)),
        (tag::MESSAGE_ID, Value::Us(message_id)),
        (tag::COMMAND_DATA_SET_TYPE, Value::Us(NO_DATA_SET)),
    ])
}

/// The C-ECHO-RSP command set (PS3.7 9.3.5.2); the tests' fake peers send it.
#[cfg(test)]
pub fn c_echo_rsp(responding_to: u16, status: u16) -> Vec<u8> {
    encode_command(&[
        (
            tag::AFFECTED_SOP_CLASS_UID,
            Value::Uid(VERIFICATION_SOP_CLASS),
        ),
        (tag::COMMAND_FIELD, Value::Us(C_ECHO_RSP)),
        (tag::MESSAGE_ID_BEING_RESPONDED_TO, Value::Us(responding_to)),
        (tag::COMMAND_DATA_SET_TYPE, Value::Us(NO_DATA_SET)),
        (tag::STATUS, Value::Us(status)),
    ])
}

/// A decoded command set: the elements of group 0000 by element number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    elements: Vec<(u16, Vec<u8>)>,
}

impl Command {
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        let mut c = Cursor::new(bytes, "command set");
        let mut elements = Vec::new();
        while !c.is_empty() {
            let group = c.u16_le()?;
            let element = c.u16_le()?;
            let len = c.u32_le()?;
            if group != 0x0000 {
                return err(format!(
                    "command set holds element ({group:04X},{element:04X}) outside group 0000"
                ));
            }
            if len == u32::MAX {
                return err(format!(
                    "command element (0000,{element:04X}) has undefined length"
                ));
            }
            let value = c.take(usize::try_from(len).unwrap_or(usize::MAX))?;
            elements.push((element, value.to_vec()));
        }
        Ok(Command { elements })
    }

    fn get(&self, element: u16) -> Option<&[u8]> {
        self.elements
            .iter()
            .find(|(e, _)| *e == element)
            .map(|(_, v)| v.as_slice())
    }

    /// An unsigned-short element; `Err` when present with the wrong length.
    pub fn us(&self, element: u16) -> Result<Option<u16>, DecodeError> {
        match self.get(element) {
            None => Ok(None),
            Some([a, b]) => Ok(Some(u16::from_le_bytes([*a, *b]))),
            Some(other) => err(format!(
                "command element (0000,{element:04X}) has length {}, expected 2",
                other.len()
            )),
        }
    }

    pub fn uid(&self, element: u16) -> Option<String> {
        self.get(element).map(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn our_rq() -> Associate {
        Associate {
            called_ae: "LB-SCP".into(),
            calling_ae: "LOADBALANCER".into(),
            application_context: APPLICATION_CONTEXT.into(),
            presentation_contexts: vec![PresentationContext {
                id: 1,
                result: 0,
                abstract_syntax: Some(VERIFICATION_SOP_CLASS.into()),
                transfer_syntaxes: vec![IMPLICIT_VR_LITTLE_ENDIAN.into()],
            }],
            user: UserInfo {
                max_pdu_length: Some(16384),
                implementation_class_uid: Some("2.25.1".into()),
                implementation_version_name: Some("LBCORE".into()),
            },
        }
    }

    fn decode_whole(bytes: &[u8]) -> Result<Pdu, DecodeError> {
        let header: [u8; PDU_HEADER_LEN] = bytes[..PDU_HEADER_LEN].try_into().unwrap();
        let (kind, len) = parse_header(header);
        assert_eq!(len as usize, bytes.len() - PDU_HEADER_LEN, "length field");
        Pdu::decode(kind, &bytes[PDU_HEADER_LEN..])
    }

    #[test]
    fn associate_rq_layout() {
        let bytes = Pdu::AssociateRq(our_rq()).encode();
        assert_eq!(bytes[0], 0x01);
        assert_eq!(&bytes[6..8], &[0x00, 0x01], "protocol version");
        assert_eq!(&bytes[10..26], b"LB-SCP          ", "called AE");
        assert_eq!(&bytes[26..42], b"LOADBALANCER    ", "calling AE");
        assert_eq!(&bytes[42..74], &[0u8; 32]);
        // Application context item first: 0x10, reserved, length 21, the UID.
        assert_eq!(&bytes[74..78], &[0x10, 0x00, 0x00, 21]);
        assert_eq!(&bytes[78..99], APPLICATION_CONTEXT.as_bytes());
        // Presentation context item: id 1, abstract syntax 17 bytes, one transfer syntax.
        assert_eq!(bytes[99], 0x20);
        let pc_len = 4 + (4 + 17) + (4 + 17);
        assert_eq!(&bytes[101..103], &(pc_len as u16).to_be_bytes());
        assert_eq!(bytes[103], 1, "presentation context id");
        assert_eq!(&bytes[107..111], &[0x30, 0x00, 0x00, 17]);
        // The maximum length sub-item inside the user information.
        let max = [0x51, 0x00, 0x00, 0x04, 0x00, 0x00, 0x40, 0x00];
        assert!(bytes.windows(8).any(|w| w == max));
    }

    #[test]
    fn associate_rq_and_ac_round_trip() {
        let rq = our_rq();
        assert_eq!(
            decode_whole(&Pdu::AssociateRq(rq.clone()).encode()),
            Ok(Pdu::AssociateRq(rq.clone()))
        );
        let mut ac = rq;
        ac.presentation_contexts[0].abstract_syntax = None;
        ac.presentation_contexts[0].result = 3;
        assert_eq!(
            decode_whole(&Pdu::AssociateAc(ac.clone()).encode()),
            Ok(Pdu::AssociateAc(ac))
        );
    }

    #[test]
    fn associate_ac_from_bytes_with_extra_user_items() {
        let mut body = vec![0x00, 0x01, 0x00, 0x00];
        body.extend_from_slice(b"LB-SCP          LOADBALANCER    ");
        body.extend_from_slice(&[0; 32]);
        body.extend_from_slice(&[0x10, 0, 0, 21]);
        body.extend_from_slice(APPLICATION_CONTEXT.as_bytes());
        // Presentation context 1 accepted with implicit VR LE (UID NUL-padded to 18).
        body.extend_from_slice(&[0x21, 0, 0, 4 + 4 + 18, 1, 0, 0, 0, 0x40, 0, 0, 18]);
        body.extend_from_slice(b"1.2.840.10008.1.2\0");
        // User info: max length 0 (unlimited), async ops window (skipped), version name.
        body.extend_from_slice(&[0x50, 0, 0, 8 + 8 + 10]);
        body.extend_from_slice(&[0x51, 0, 0, 4, 0, 0, 0, 0]);
        body.extend_from_slice(&[0x53, 0, 0, 4, 0, 1, 0, 1]);
        body.extend_from_slice(&[0x55, 0, 0, 6]);
        body.extend_from_slice(b"DCMTK ");
        let Ok(Pdu::AssociateAc(ac)) = Pdu::decode(0x02, &body) else {
            panic!("not decoded as A-ASSOCIATE-AC");
        };
        assert_eq!(ac.called_ae, "LB-SCP");
        assert_eq!(ac.presentation_contexts.len(), 1);
        assert_eq!(ac.presentation_contexts[0].id, 1);
        assert_eq!(ac.presentation_contexts[0].result, 0);
        assert_eq!(
            ac.presentation_contexts[0].transfer_syntaxes,
            vec![IMPLICIT_VR_LITTLE_ENDIAN.to_string()]
        );
        assert_eq!(ac.user.max_pdu_length, Some(0));
        assert_eq!(
            ac.user.implementation_version_name.as_deref(),
            Some("DCMTK")
        );
    }

    #[test]
    fn short_pdus_round_trip() {
        for pdu in [
            Pdu::AssociateRj {
                result: 1,
                source: 1,
                reason: 7,
            },
            Pdu::ReleaseRq,
            Pdu::ReleaseRp,
            Pdu::Abort {
                source: 2,
                reason: 6,
            },
        ] {
            let bytes = pdu.encode();
            assert_eq!(bytes.len(), 10, "{}", pdu.name());
            assert_eq!(decode_whole(&bytes), Ok(pdu));
        }
        assert_eq!(
            Pdu::AssociateRj {
                result: 1,
                source: 1,
                reason: 7
            }
            .encode(),
            vec![0x03, 0, 0, 0, 0, 4, 0, 1, 1, 7]
        );
    }

    #[test]
    fn pdata_round_trip_and_header_bits() {
        let pdvs = vec![
            Pdv {
                context_id: 1,
                command: true,
                last: false,
                data: vec![1, 2, 3],
            },
            Pdv {
                context_id: 1,
                command: true,
                last: true,
                data: vec![4],
            },
        ];
        let bytes = Pdu::PData(pdvs.clone()).encode();
        assert_eq!(
            bytes,
            vec![
                0x04, 0, 0, 0, 0, 16, //
                0, 0, 0, 5, 1, 0x01, 1, 2, 3, //
                0, 0, 0, 3, 1, 0x03, 4,
            ]
        );
        assert_eq!(decode_whole(&bytes), Ok(Pdu::PData(pdvs)));
    }

    #[test]
    fn c_echo_rq_bytes() {
        let mut expected = vec![0, 0, 0, 0, 4, 0, 0, 0, 56, 0, 0, 0];
        expected.extend_from_slice(&[0, 0, 0x02, 0, 18, 0, 0, 0]);
        expected.extend_from_slice(b"1.2.840.10008.1.1\0");
        expected.extend_from_slice(&[0, 0, 0x00, 0x01, 2, 0, 0, 0, 0x30, 0x00]);
        expected.extend_from_slice(&[0, 0, 0x10, 0x01, 2, 0, 0, 0, 7, 0]);
        expected.extend_from_slice(&[0, 0, 0x00, 0x08, 2, 0, 0, 0, 0x01, 0x01]);
        assert_eq!(c_echo_rq(7), expected);
    }

    #[test]
    fn c_echo_rsp_decodes() {
        let command = Command::decode(&c_echo_rsp(7, 0x0110)).unwrap();
        assert_eq!(command.us(tag::COMMAND_FIELD), Ok(Some(C_ECHO_RSP)));
        assert_eq!(command.us(tag::MESSAGE_ID_BEING_RESPONDED_TO), Ok(Some(7)));
        assert_eq!(command.us(tag::STATUS), Ok(Some(0x0110)));
        assert_eq!(
            command.uid(tag::AFFECTED_SOP_CLASS_UID).as_deref(),
            Some(VERIFICATION_SOP_CLASS)
        );
        assert_eq!(command.us(tag::MESSAGE_ID), Ok(None));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let valid = [
            Pdu::AssociateRq(our_rq()).encode(),
            Pdu::AssociateAc(our_rq()).encode(),
            Pdu::PData(vec![Pdv {
                context_id: 1,
                command: true,
                last: true,
                data: c_echo_rq(1),
            }])
            .encode(),
        ];
        for bytes in &valid {
            let kind = bytes[0];
            let body = &bytes[PDU_HEADER_LEN..];
            for cut in 0..body.len() {
                let _ = Pdu::decode(kind, &body[..cut]);
            }
            // Every prefix that ends inside the fixed part or an item is refused.
            assert!(Pdu::decode(kind, &body[..body.len() - 1]).is_err());
        }
        let command = c_echo_rq(1);
        for cut in 0..command.len() {
            let _ = Command::decode(&command[..cut]);
        }
        assert!(Command::decode(&command[..command.len() - 1]).is_err());
        assert!(Pdu::decode(0x09, &[0; 4]).is_err());
        assert!(Pdu::decode(pdu_type::RELEASE_RP, &[0; 5]).is_err());
        assert!(Pdu::decode(pdu_type::P_DATA_TF, &[0, 0, 0, 1, 1]).is_err());
        assert!(Pdu::decode(pdu_type::P_DATA_TF, &[]).is_err());
    }
}
