//! Why a probe failed. Each variant is one kind of failure, so that the log line (the
//! `Display`) tells an operator exactly what the server did wrong, and the scheduler can
//! still compare or count failures by kind.

use std::net::IpAddr;
use std::time::Duration;

use crate::config::duration::format as fmt_duration;

/// Why a probe failed; its `Display` is one log line that says exactly which failure it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The probe's timeout passed while it was at `stage` (e.g. "waiting for A-ASSOCIATE-AC").
    #[error("timed out after {} while {stage}", fmt_duration(*.after))]
    Timeout {
        after: Duration,
        stage: &'static str,
    },
    #[error("connection refused")]
    Refused,
    #[error("cannot connect: {reason}")]
    Connect { reason: String },
    #[error("connection closed by peer while {stage}")]
    Closed { stage: &'static str },
    #[error("I/O error while {stage}: {reason}")]
    Io { stage: &'static str, reason: String },
    /// The check's own settings cannot produce a probe (e.g. an HL7 message without MSH).
    #[error("check configuration: {0}")]
    Config(String),

    /// DICOM A-ASSOCIATE-RJ.
    #[error(
        "DICOM association rejected: result {result} ({}), source {origin} ({}), reason {reason} ({})",
        reject_result_name(*.result),
        reject_source_name(*.origin),
        reject_reason_name(*.origin, *.reason)
    )]
    AssociationRejected {
        result: u8,
        /// PS3.8 calls it "source"; that name would make it the error's `source()`.
        origin: u8,
        reason: u8,
    },
    /// The association was accepted, but not our presentation context for Verification.
    #[error(
        "DICOM presentation context for Verification not accepted: result {result} ({})",
        context_result_name(*.result)
    )]
    ContextRejected { result: u8 },
    /// DICOM A-ABORT from the peer.
    #[error("A-ABORT from peer (source {origin}, reason {reason})")]
    Aborted { origin: u8, reason: u8 },
    #[error("unexpected {pdu} while {stage}")]
    UnexpectedPdu {
        pdu: &'static str,
        stage: &'static str,
    },
    #[error("malformed DICOM PDU: {0}")]
    MalformedPdu(String),
    /// The C-ECHO-RSP did not have the shape of one (wrong command field, message ID...).
    #[error("malformed C-ECHO-RSP: {0}")]
    MalformedEcho(String),
    #[error("C-ECHO status 0x{0:04X}")]
    EchoStatus(u16),

    /// An HL7 ACK whose MSA-1 is neither AA nor CA.
    #[error("HL7 NAK: MSA-1 {code}{}", text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Hl7Nak { code: String, text: Option<String> },
    #[error("MSA-2 `{got}` does not echo control ID `{expected}`")]
    Hl7ControlId { got: String, expected: String },
    #[error("malformed HL7 reply: {0}")]
    Hl7Malformed(String),

    #[error("HTTP status {got}, expected {expected}")]
    HttpStatus { got: u16, expected: u16 },
    #[error("malformed HTTP response: {0}")]
    HttpMalformed(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),

    #[error("cannot open an ICMP socket: {0}")]
    PingSocket(String),
    /// An ICMP error (destination unreachable, time exceeded) about our echo request.
    #[error("ICMP {what} from {from}")]
    Icmp { what: String, from: IpAddr },

    #[error("cannot run script {path}: {reason}")]
    ScriptSpawn { path: String, reason: String },
    #[error("script exited with status {code}{}", first_line(.output))]
    ScriptExit { code: i32, output: Option<String> },
    #[error("script killed by signal {signal}{}", first_line(.output))]
    ScriptSignal { signal: i32, output: Option<String> },
    #[error("script killed after {}", fmt_duration(*.after))]
    ScriptKilled { after: Duration },
}

fn first_line(output: &Option<String>) -> String {
    match output {
        Some(line) => format!(": {line}"),
        None => String::new(),
    }
}

/// PS3.8 9.3.4: A-ASSOCIATE-RJ result.
fn reject_result_name(result: u8) -> &'static str {
    match result {
        1 => "rejected-permanent",
        2 => "rejected-transient",
        _ => "unknown",
    }
}

/// PS3.8 9.3.4: A-ASSOCIATE-RJ source.
fn reject_source_name(source: u8) -> &'static str {
    match source {
        1 => "service user",
        2 => "service provider, ACSE",
        3 => "service provider, presentation",
        _ => "unknown",
    }
}

/// PS3.8 9.3.4: A-ASSOCIATE-RJ reason/diag., whose meaning depends on the source.
fn reject_reason_name(source: u8, reason: u8) -> &'static str {
    match (source, reason) {
        (1, 1) => "no reason given",
        (1, 2) => "application context name not supported",
        (1, 3) => "calling AE title not recognized",
        (1, 7) => "called AE title not recognized",
        (2, 1) => "no reason given",
        (2, 2) => "protocol version not supported",
        (3, 1) => "temporary congestion",
        (3, 2) => "local limit exceeded",
        _ => "reserved",
    }
}

/// PS3.8 9.3.3.2: result of one presentation context in an A-ASSOCIATE-AC.
fn context_result_name(result: u8) -> &'static str {
    match result {
        0 => "acceptance",
        1 => "user rejection",
        2 => "no reason",
        3 => "abstract syntax not supported",
        4 => "transfer syntaxes not supported",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_one_log_line() {
        let cases = [
            (
                ProbeError::AssociationRejected {
                    result: 1,
                    origin: 1,
                    reason: 7,
                },
                "DICOM association rejected: result 1 (rejected-permanent), source 1 (service user), reason 7 (called AE title not recognized)",
            ),
            (ProbeError::EchoStatus(0x0110), "C-ECHO status 0x0110"),
            (
                ProbeError::Aborted {
                    origin: 2,
                    reason: 0,
                },
                "A-ABORT from peer (source 2, reason 0)",
            ),
            (
                ProbeError::Timeout {
                    after: Duration::from_secs(2),
                    stage: "waiting for A-ASSOCIATE-AC",
                },
                "timed out after 2s while waiting for A-ASSOCIATE-AC",
            ),
            (ProbeError::Refused, "connection refused"),
            (
                ProbeError::Hl7Nak {
                    code: "AE".into(),
                    text: None,
                },
                "HL7 NAK: MSA-1 AE",
            ),
            (
                ProbeError::Hl7ControlId {
                    got: "X".into(),
                    expected: "Y".into(),
                },
                "MSA-2 `X` does not echo control ID `Y`",
            ),
            (
                ProbeError::HttpStatus {
                    got: 503,
                    expected: 200,
                },
                "HTTP status 503, expected 200",
            ),
            (
                ProbeError::ScriptExit {
                    code: 1,
                    output: None,
                },
                "script exited with status 1",
            ),
            (
                ProbeError::ScriptExit {
                    code: 2,
                    output: Some("disk full".into()),
                },
                "script exited with status 2: disk full",
            ),
            (
                ProbeError::ScriptKilled {
                    after: Duration::from_secs(2),
                },
                "script killed after 2s",
            ),
        ];
        for (error, line) in cases {
            assert_eq!(error.to_string(), line);
        }
    }
}
