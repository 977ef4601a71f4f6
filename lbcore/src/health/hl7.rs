//! HL7 v2 over MLLP check: the server is up when it acknowledges a message.
//!
//! An interface engine can accept TCP connections long after its message processing has
//! stopped, so the check sends a real message in an MLLP frame (0x0B ... 0x1C 0x0D) and
//! counts the server as up only on a framed ACK whose MSA-1 is AA or CA and whose MSA-2
//! echoes the probe's message control ID. The probe message is the configured one or a
//! built-in NMD^N02 (application management data), which receiving systems treat as a
//! harmless status message. Every probe carries a fresh control ID (MSH-10) and timestamp
//! (MSH-7), so that an ACK left over from an earlier probe can never count for this one and
//! engines that refuse duplicate control IDs keep accepting the probes.

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;

use super::{Deadline, ProbeError, Target, io_error, read_reply, tcp};

const START_BLOCK: u8 = 0x0B;
const END_BLOCK: u8 = 0x1C;
const CARRIAGE_RETURN: u8 = 0x0D;

/// An ACK is a few hundred bytes; a peer that sends more without closing its frame is not
/// answering our message.
const MAX_REPLY: usize = 64 * 1024;

pub(super) async fn probe(
    message: Option<&str>,
    target: &Target,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let deadline = Deadline::after(timeout);
    let control_id = next_control_id(SystemTime::now());
    let text = build_message(message, &control_id, &timestamp(SystemTime::now()))?;
    let mut stream = tcp::connect(target.server, &deadline).await?;

    let stage = "sending the HL7 message";
    let frame = frame(&text);
    deadline
        .run(stage, async {
            stream.write_all(&frame).await.map_err(io_error(stage))
        })
        .await?;

    let reply = read_reply(
        &mut stream,
        &deadline,
        "waiting for the HL7 ACK",
        "MLLP frame",
        MAX_REPLY,
        |buffer| unframe(buffer).map(<[u8]>::to_vec),
        ProbeError::Hl7Malformed,
    )
    .await?;
    check_ack(&reply, &control_id)
}

fn frame(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(message.as_bytes());
    out.push(END_BLOCK);
    out.push(CARRIAGE_RETURN);
    out
}

/// The payload of the first complete frame in `bytes`. The frame is complete at the end
/// block: waiting for the trailing CR as well would only let a sloppy peer turn an answer
/// into a timeout.
fn unframe(bytes: &[u8]) -> Option<&[u8]> {
    let start = bytes.iter().position(|b| *b == START_BLOCK)? + 1;
    let len = bytes[start..].iter().position(|b| *b == END_BLOCK)?;
    Some(&bytes[start..start + len])
}

/// A control ID unique across probes and restarts: milliseconds since the epoch plus a
/// counter, in hex. At most 17 characters, within the 20 that HL7 v2.3 allows for MSH-10.
fn next_control_id(now: SystemTime) -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let millis = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("LB{millis:X}{:04X}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// HL7 TS in UTC with an explicit offset: YYYYMMDDHHMMSS+0000.
fn timestamp(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rest = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}+0000",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm); saves
/// a date crate for one timestamp.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// The message to send: the configured one (or the built-in NMD^N02) with a fresh MSH-7 and
/// MSH-10, segments ended by CR as HL7 requires whatever line ends the configuration used.
fn build_message(
    configured: Option<&str>,
    control_id: &str,
    timestamp: &str,
) -> Result<String, ProbeError> {
    let Some(configured) = configured else {
        return Ok(format!(
            "MSH|^~\\&|LBCORE|LOADBALANCER|||{timestamp}||NMD^N02|{control_id}|P|2.3\rNCK|{timestamp}\r"
        ));
    };
    let normalized = configured.replace("\r\n", "\r").replace('\n', "\r");
    let mut segments = normalized.split('\r').filter(|s| !s.trim().is_empty());
    let Some(msh) = segments.next() else {
        return Err(ProbeError::Config("the HL7 probe message is empty".into()));
    };
    let Some(separator) = field_separator(msh) else {
        return Err(ProbeError::Config(
            "the HL7 probe message must start with an MSH segment".into(),
        ));
    };
    let mut fields: Vec<&str> = msh.split(separator).collect();
    // fields[0] is "MSH" and fields[n] is MSH-(n+1), since MSH-1 is the separator itself.
    if fields.len() < 10 {
        fields.resize(10, "");
    }
    fields[6] = timestamp;
    fields[9] = control_id;
    let mut out = fields.join(&separator.to_string());
    out.push('\r');
    for segment in segments {
        out.push_str(segment);
        out.push('\r');
    }
    Ok(out)
}

/// MSH-1, the character right after "MSH", which the rest of the message is split by.
fn field_separator(msh: &str) -> Option<char> {
    let rest = msh.strip_prefix("MSH")?;
    rest.chars().next().filter(|c| !c.is_alphanumeric())
}

/// Success only on MSA-1 AA or CA (original or enhanced-mode accept) with MSA-2 = our ID.
fn check_ack(payload: &[u8], control_id: &str) -> Result<(), ProbeError> {
    let text = String::from_utf8_lossy(payload);
    let mut segments = text.split(['\r', '\n']).filter(|s| !s.trim().is_empty());
    let Some(separator) = segments.next().and_then(field_separator) else {
        return Err(ProbeError::Hl7Malformed(
            "the reply does not start with an MSH segment".into(),
        ));
    };
    let Some(msa) = segments.find(|s| {
        s.strip_prefix("MSA")
            .is_some_and(|rest| rest.starts_with(separator))
    }) else {
        return Err(ProbeError::Hl7Malformed(
            "the reply has no MSA segment".into(),
        ));
    };
    let fields: Vec<&str> = msa.split(separator).map(str::trim).collect();
    let code = fields.get(1).copied().unwrap_or("");
    let echoed = fields.get(2).copied().unwrap_or("");
    match code {
        "AA" | "CA" => {}
        "" => return Err(ProbeError::Hl7Malformed("MSA-1 is empty".into())),
        _ => {
            return Err(ProbeError::Hl7Nak {
                code: code.to_string(),
                text: fields
                    .get(3)
                    .filter(|t| !t.is_empty())
                    .map(|t| t.to_string()),
            });
        }
    }
    if echoed != control_id {
        return Err(ProbeError::Hl7ControlId {
            got: echoed.to_string(),
            expected: control_id.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::{Child, Command};

    use super::*;
    use crate::config::Probe;
    use crate::health::testutil::{SLACK, closed_port, local};

    const TIMEOUT: Duration = Duration::from_secs(3);

    /// Starts the tests' MLLP peer (tests/peers/mllp_server.py, on python3-hl7) in
    /// `mode`; returns it and its port.
    async fn mllp_server(mode: &str) -> (Child, u16) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers/mllp_server.py");
        // Debian's interpreter: python3-hl7 is a Debian package, and a python3 found first
        // on PATH (a virtualenv, pyenv) may not see it.
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--print-port",
                "--mode",
                mode,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("the MLLP server did not report its port")
        .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("MLLP server said {line:?} instead of a port"));
        (child, port)
    }

    fn hl7(message: Option<&str>) -> Probe {
        Probe::Hl7 {
            message: message.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn built_in_message_is_acknowledged() {
        let (_server, port) = mllp_server("aa").await;
        let result = crate::health::probe(&hl7(None), &local(port), TIMEOUT).await;
        assert_eq!(result, Ok(()));
        // Again on the same server: a fresh control ID, still echoed.
        let result = crate::health::probe(&hl7(None), &local(port), TIMEOUT).await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn configured_message_with_another_separator_is_acknowledged() {
        let (_server, port) = mllp_server("aa").await;
        let message = "MSH#^~\\&#PROBE#LB#ENGINE#HOSP#20000101000000##ADT^A01#STALE-ID#P#2.5\nEVN#A01#20000101000000\n";
        let result = crate::health::probe(&hl7(Some(message)), &local(port), TIMEOUT).await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn nak_fails() {
        let (_server, port) = mllp_server("ae").await;
        let result = crate::health::probe(&hl7(None), &local(port), TIMEOUT).await;
        assert_eq!(result.unwrap_err().to_string(), "HL7 NAK: MSA-1 AE");
    }

    #[tokio::test]
    async fn wrong_control_id_fails() {
        let (_server, port) = mllp_server("wrong-id").await;
        let error = crate::health::probe(&hl7(None), &local(port), TIMEOUT)
            .await
            .unwrap_err();
        let ProbeError::Hl7ControlId { got, expected } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(got, &format!("NOT-{expected}"));
        assert!(error.to_string().starts_with("MSA-2 `NOT-LB"), "{error}");
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let (port, _silent) = crate::health::testutil::silent_server().await;
        let start = std::time::Instant::now();
        let result =
            crate::health::probe(&hl7(None), &local(port), Duration::from_millis(500)).await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "timed out after 500ms while waiting for the HL7 ACK"
        );
        assert!(start.elapsed() < Duration::from_millis(500) + SLACK);
    }

    #[tokio::test]
    async fn nothing_listening_is_connection_refused() {
        let result = crate::health::probe(&hl7(None), &local(closed_port()), TIMEOUT).await;
        assert_eq!(result, Err(ProbeError::Refused));
    }

    #[test]
    fn configured_message_gets_fresh_msh_7_and_msh_10() {
        let message = "MSH|^~\\&|A|B|C|D|19990101||ADT^A01|OLD|P|2.3\r\nPID|1||42\r\n";
        let built = build_message(Some(message), "NEWID", "20250102030405+0000").unwrap();
        assert_eq!(
            built,
            "MSH|^~\\&|A|B|C|D|20250102030405+0000||ADT^A01|NEWID|P|2.3\rPID|1||42\r"
        );
        // A short MSH is extended up to MSH-10.
        let built = build_message(Some("MSH|^~\\&|A"), "ID", "TS").unwrap();
        assert_eq!(built, "MSH|^~\\&|A||||TS|||ID\r");
        assert!(matches!(
            build_message(Some("PID|1"), "ID", "TS"),
            Err(ProbeError::Config(_))
        ));
    }

    #[test]
    fn built_in_message_is_nmd_n02() {
        let built = build_message(None, "ID", "TS").unwrap();
        assert_eq!(
            built,
            "MSH|^~\\&|LBCORE|LOADBALANCER|||TS||NMD^N02|ID|P|2.3\rNCK|TS\r"
        );
    }

    #[test]
    fn ack_checks() {
        let ack = |msa: &str| format!("MSH|^~\\&|E|F|LB|X|20250101||ACK|9|P|2.3\r{msa}\r");
        assert_eq!(check_ack(ack("MSA|AA|ID1").as_bytes(), "ID1"), Ok(()));
        assert_eq!(check_ack(ack("MSA|CA|ID1").as_bytes(), "ID1"), Ok(()));
        assert_eq!(
            check_ack(ack("MSA|AR|ID1|unknown event").as_bytes(), "ID1")
                .unwrap_err()
                .to_string(),
            "HL7 NAK: MSA-1 AR (unknown event)"
        );
        assert_eq!(
            check_ack(ack("MSA|AA|X").as_bytes(), "Y")
                .unwrap_err()
                .to_string(),
            "MSA-2 `X` does not echo control ID `Y`"
        );
        assert!(matches!(
            check_ack(b"MSH|^~\\&|E\rERR|x\r", "Y"),
            Err(ProbeError::Hl7Malformed(_))
        ));
        assert!(matches!(
            check_ack(b"garbage", "Y"),
            Err(ProbeError::Hl7Malformed(_))
        ));
    }

    #[test]
    fn framing() {
        assert_eq!(frame("MSH|x\r"), b"\x0bMSH|x\r\x1c\x0d".to_vec());
        assert_eq!(unframe(b"\x0bABC\x1c\x0d"), Some(&b"ABC"[..]));
        assert_eq!(unframe(b"\x0bABC"), None);
        assert_eq!(unframe(b"noise\x0bABC\x1c"), Some(&b"ABC"[..]));
    }

    #[test]
    fn timestamps_and_ids() {
        let t = UNIX_EPOCH + Duration::from_secs(951_827_696); // 2000-02-29 12:34:56 UTC
        assert_eq!(timestamp(t), "20000229123456+0000");
        assert_eq!(timestamp(UNIX_EPOCH), "19700101000000+0000");
        let a = next_control_id(t);
        let b = next_control_id(t);
        assert_ne!(a, b);
        assert!(a.len() <= 20 && a.starts_with("LB"), "{a}");
    }
}
