//! DICOM C-ECHO check: the server is up when it accepts an association for the Verification
//! SOP class and answers a C-ECHO-RQ with status 0x0000 (PS3.7 9.1.5, PS3.8).
//!
//! A TCP connect proves little for a PACS: the port may be open while the application
//! refuses our AE title, has run out of associations, or is wedged. So the check does what a
//! modality does before sending images: A-ASSOCIATE-RQ, C-ECHO-RQ, then an orderly
//! A-RELEASE. Each way of failing (rejection, abort, bad status, malformed PDU, timeout at a
//! given step) gets its own [`ProbeError`], so the log says which one it was.

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::dicom_ul::{
    self, APPLICATION_CONTEXT, Associate, Command, IMPLICIT_VR_LITTLE_ENDIAN, PDU_HEADER_LEN, Pdu,
    Pdv, PresentationContext, UserInfo, VERIFICATION_SOP_CLASS, tag,
};
use super::{Deadline, ProbeError, Target, io_error, tcp};

/// The largest P-DATA-TF we accept, announced in the A-ASSOCIATE-RQ. A C-ECHO-RSP is about
/// 100 bytes; this is dcmtk's default, which no peer will find odd.
const OUR_MAX_PDU: u32 = 16384;

/// Any PDU larger than this is treated as malformed: the replies the check expects are a few
/// hundred bytes, and a length field from a confused peer must not make us allocate gigabytes.
const MAX_INCOMING_PDU: u32 = 1 << 20;

/// Our one presentation context (odd numbers only, PS3.8 9.3.2.2).
const CONTEXT_ID: u8 = 1;

/// Implementation Class UID of lbcore's DICOM code: a UUID-derived UID (PS3.5 B.2), which
/// needs no registered root.
const IMPLEMENTATION_CLASS_UID: &str = "2.25.228853099062949471458173655334882727610";

/// How long we spend telling the peer about an abort before giving up on it; keeps the probe
/// within its timeout even when the peer has stopped reading.
const ABORT_GRACE: Duration = Duration::from_millis(100);

fn implementation_version_name() -> String {
    // At most 16 characters (PS3.8 D.3.3.2.3).
    let mut name = format!("LBCORE_{}", env!("CARGO_PKG_VERSION"));
    name.truncate(16);
    name
}

/// Message IDs only need to differ between outstanding requests of one association; a
/// process-wide counter makes each probe's ID distinct in packet captures too.
fn next_message_id() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub(super) async fn probe(
    calling_ae: &str,
    called_ae: &str,
    target: &Target,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let deadline = Deadline::after(timeout);
    let mut stream = tcp::connect(target.server, &deadline).await?;
    let result = converse(&mut stream, calling_ae, called_ae, &deadline).await;
    if let Err(e) = &result {
        // A peer that stalled or spoke nonsense may still hold an association slot for us;
        // an A-ABORT frees it at once instead of when its own timers fire.
        if matches!(
            e,
            ProbeError::Timeout { .. }
                | ProbeError::UnexpectedPdu { .. }
                | ProbeError::MalformedPdu(_)
                | ProbeError::MalformedEcho(_)
        ) {
            let abort = Pdu::Abort {
                source: 0,
                reason: 0,
            }
            .encode();
            let _ = tokio::time::timeout(ABORT_GRACE, stream.write_all(&abort)).await;
        }
    }
    result
}

async fn converse(
    stream: &mut TcpStream,
    calling_ae: &str,
    called_ae: &str,
    deadline: &Deadline,
) -> Result<(), ProbeError> {
    let rq = Pdu::AssociateRq(Associate {
        called_ae: called_ae.to_string(),
        calling_ae: calling_ae.to_string(),
        application_context: APPLICATION_CONTEXT.to_string(),
        presentation_contexts: vec![PresentationContext {
            id: CONTEXT_ID,
            result: 0,
            abstract_syntax: Some(VERIFICATION_SOP_CLASS.to_string()),
            transfer_syntaxes: vec![IMPLICIT_VR_LITTLE_ENDIAN.to_string()],
        }],
        user: UserInfo {
            max_pdu_length: Some(OUR_MAX_PDU),
            implementation_class_uid: Some(IMPLEMENTATION_CLASS_UID.to_string()),
            implementation_version_name: Some(implementation_version_name()),
        },
    });
    send(stream, &rq.encode(), deadline, "sending A-ASSOCIATE-RQ").await?;

    let stage = "waiting for A-ASSOCIATE-AC";
    let ac = match receive(stream, deadline, stage).await? {
        Pdu::AssociateAc(ac) => ac,
        Pdu::AssociateRj {
            result,
            source,
            reason,
        } => {
            return Err(ProbeError::AssociationRejected {
                result,
                origin: source,
                reason,
            });
        }
        other => return Err(unexpected(other, stage)),
    };

    // The association is established: from here on a "clean" failure (the peer answered,
    // just not with success) still ends with an orderly release, so that the server's
    // association count is not left to its timers.
    let verdict = echo(stream, &ac, deadline).await;
    match verdict {
        Ok(()) | Err(ProbeError::ContextRejected { .. } | ProbeError::EchoStatus(_)) => {
            let released = release(stream, deadline).await;
            verdict.and(released)
        }
        Err(e) => Err(e),
    }
}

/// Sends the C-ECHO-RQ on our accepted presentation context and checks the C-ECHO-RSP.
async fn echo(
    stream: &mut TcpStream,
    ac: &Associate,
    deadline: &Deadline,
) -> Result<(), ProbeError> {
    let Some(context) = ac
        .presentation_contexts
        .iter()
        .find(|pc| pc.id == CONTEXT_ID)
    else {
        return Err(ProbeError::MalformedPdu(format!(
            "A-ASSOCIATE-AC has no answer for presentation context {CONTEXT_ID}"
        )));
    };
    if context.result != 0 {
        return Err(ProbeError::ContextRejected {
            result: context.result,
        });
    }
    match context.transfer_syntaxes.first().map(String::as_str) {
        Some(IMPLICIT_VR_LITTLE_ENDIAN) => {}
        other => {
            return Err(ProbeError::MalformedPdu(format!(
                "A-ASSOCIATE-AC accepts the Verification context with transfer syntax `{}`, which was not proposed",
                other.unwrap_or("")
            )));
        }
    }

    let message_id = next_message_id();
    // The peer's maximum length bounds the variable field of each P-DATA-TF: a PDV item
    // costs 6 bytes of it (length, context ID, control header). 0 means no limit.
    let command = dicom_ul::c_echo_rq(message_id);
    let fragment = match ac.user.max_pdu_length {
        None | Some(0) => command.len(),
        Some(max) => usize::try_from(max.saturating_sub(6))
            .unwrap_or(usize::MAX)
            .max(1),
    };
    let chunks: Vec<&[u8]> = command.chunks(fragment).collect();
    let mut bytes = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let pdu = Pdu::PData(vec![Pdv {
            context_id: CONTEXT_ID,
            command: true,
            last: i + 1 == chunks.len(),
            data: chunk.to_vec(),
        }]);
        bytes.extend_from_slice(&pdu.encode());
    }
    send(stream, &bytes, deadline, "sending C-ECHO-RQ").await?;

    let stage = "waiting for C-ECHO-RSP";
    let mut rsp = Vec::new();
    loop {
        let pdvs = match receive(stream, deadline, stage).await? {
            Pdu::PData(pdvs) => pdvs,
            other => return Err(unexpected(other, stage)),
        };
        for pdv in pdvs {
            if pdv.context_id != CONTEXT_ID {
                return Err(ProbeError::MalformedPdu(format!(
                    "P-DATA-TF for presentation context {}, which was not negotiated",
                    pdv.context_id
                )));
            }
            // A C-ECHO-RSP has no data set; should a peer send one anyway, it says nothing
            // about the status, so it is skipped.
            if !pdv.command {
                continue;
            }
            rsp.extend_from_slice(&pdv.data);
            if pdv.last {
                return check_echo_rsp(&rsp, message_id);
            }
        }
    }
}

fn check_echo_rsp(bytes: &[u8], message_id: u16) -> Result<(), ProbeError> {
    let malformed = |e: dicom_ul::DecodeError| ProbeError::MalformedEcho(e.0);
    let command = Command::decode(bytes).map_err(malformed)?;
    match command.us(tag::COMMAND_FIELD).map_err(malformed)? {
        Some(dicom_ul::C_ECHO_RSP) => {}
        Some(other) => {
            return Err(ProbeError::MalformedEcho(format!(
                "command field 0x{other:04X}, expected 0x8030 (C-ECHO-RSP)"
            )));
        }
        None => {
            return Err(ProbeError::MalformedEcho("no command field".into()));
        }
    }
    if let Some(uid) = command
        .uid(tag::AFFECTED_SOP_CLASS_UID)
        .filter(|uid| uid != VERIFICATION_SOP_CLASS)
    {
        return Err(ProbeError::MalformedEcho(format!(
            "affected SOP class `{uid}`, expected Verification ({VERIFICATION_SOP_CLASS})"
        )));
    }
    let responding_to = command
        .us(tag::MESSAGE_ID_BEING_RESPONDED_TO)
        .map_err(malformed)?;
    if let Some(id) = responding_to.filter(|id| *id != message_id) {
        return Err(ProbeError::MalformedEcho(format!(
            "answers message ID {id}, not {message_id}"
        )));
    }
    match command.us(tag::STATUS).map_err(malformed)? {
        Some(0x0000) => Ok(()),
        Some(status) => Err(ProbeError::EchoStatus(status)),
        None => Err(ProbeError::MalformedEcho("no status".into())),
    }
}

/// A-RELEASE-RQ, then wait (within the probe's deadline) for A-RELEASE-RP.
async fn release(stream: &mut TcpStream, deadline: &Deadline) -> Result<(), ProbeError> {
    send(
        stream,
        &Pdu::ReleaseRq.encode(),
        deadline,
        "sending A-RELEASE-RQ",
    )
    .await?;
    let stage = "waiting for A-RELEASE-RP";
    loop {
        match receive(stream, deadline, stage).await? {
            Pdu::ReleaseRp => return Ok(()),
            // Late data-set fragments of the response may still be in flight.
            Pdu::PData(_) => continue,
            other => return Err(unexpected(other, stage)),
        }
    }
}

fn unexpected(pdu: Pdu, stage: &'static str) -> ProbeError {
    match pdu {
        Pdu::Abort { source, reason } => ProbeError::Aborted {
            origin: source,
            reason,
        },
        other => ProbeError::UnexpectedPdu {
            pdu: other.name(),
            stage,
        },
    }
}

async fn send(
    stream: &mut TcpStream,
    bytes: &[u8],
    deadline: &Deadline,
    stage: &'static str,
) -> Result<(), ProbeError> {
    deadline
        .run(stage, async {
            stream.write_all(bytes).await.map_err(io_error(stage))
        })
        .await
}

/// Reads one whole PDU within the deadline.
async fn receive(
    stream: &mut TcpStream,
    deadline: &Deadline,
    stage: &'static str,
) -> Result<Pdu, ProbeError> {
    deadline
        .run(stage, async {
            let mut header = [0u8; PDU_HEADER_LEN];
            stream
                .read_exact(&mut header)
                .await
                .map_err(io_error(stage))?;
            let (kind, len) = dicom_ul::parse_header(header);
            if len > MAX_INCOMING_PDU {
                return Err(ProbeError::MalformedPdu(format!(
                    "PDU of type 0x{kind:02X} claims {len} bytes, more than the {MAX_INCOMING_PDU} a C-ECHO exchange can need"
                )));
            }
            let mut body = vec![0u8; len as usize];
            stream
                .read_exact(&mut body)
                .await
                .map_err(io_error(stage))?;
            Pdu::decode(kind, &body).map_err(|e| ProbeError::MalformedPdu(e.0))
        })
        .await
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;
    use std::time::Instant;

    use tokio::net::TcpListener;
    use tokio::process::{Child, Command as Process};

    use super::*;
    use crate::config::Probe;
    use crate::health::testutil::{SLACK, closed_port, free_port, local, wait_listening};
    use tempfile::{TempDir, tempdir};

    const TIMEOUT: Duration = Duration::from_secs(3);

    fn echo_probe(called_ae: &str) -> Probe {
        Probe::DicomEcho {
            calling_ae: "LOADBALANCER".into(),
            called_ae: called_ae.into(),
        }
    }

    /// dcmtk's programs (Debian package dcmtk), never others of the same name on PATH
    /// (pynetdicom installs a `storescp` too).
    const STORESCP: &str = "/usr/bin/storescp";
    const DCMQRSCP: &str = "/usr/bin/dcmqrscp";

    /// Starts a dcmtk program on a free port and waits until it listens; it is killed when
    /// the returned handle is dropped.
    async fn start(program: &str, args: &[&str], port: u16, dir: &TempDir) -> Child {
        let child = Process::new(program)
            .args(args)
            .arg(port.to_string())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} (is dcmtk installed?): {e}"));
        wait_listening(port).await;
        child
    }

    #[tokio::test]
    async fn storescp_answers_c_echo() {
        let dir = tempdir().unwrap();
        let port = free_port();
        let _scp = start(STORESCP, &["--aetitle", "LB-SCP"], port, &dir).await;
        let result = crate::health::probe(&echo_probe("LB-SCP"), &local(port), TIMEOUT).await;
        assert_eq!(result, Ok(()));
        // A second probe on the same server: nothing of the first one lingers.
        let result = crate::health::probe(&echo_probe("LB-SCP"), &local(port), TIMEOUT).await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn storescp_refuse_is_association_rejected() {
        let dir = tempdir().unwrap();
        let port = free_port();
        let _scp = start(STORESCP, &["--refuse"], port, &dir).await;
        let result = crate::health::probe(&echo_probe("LB-SCP"), &local(port), TIMEOUT).await;
        let error = result.unwrap_err();
        assert_eq!(
            error,
            ProbeError::AssociationRejected {
                result: 1,
                origin: 1,
                reason: 1
            }
        );
        assert!(
            error.to_string().contains("association rejected"),
            "{error}"
        );
    }

    /// storescp accepts any called AE title; dcmqrscp checks it against its AE table.
    async fn start_dcmqrscp(dir: &TempDir, port: u16) -> Child {
        let storage = dir.path().join("db");
        std::fs::create_dir_all(&storage).unwrap();
        let config = format!(
            "NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\
             HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n\
             AETable BEGIN\nLB-SCP {} RW (10, 64mb) ANY\nAETable END\n",
            storage.display()
        );
        let config_path = dir.path().join("dcmqrscp.cfg");
        std::fs::write(&config_path, config).unwrap();
        let config_arg = config_path.to_string_lossy().into_owned();
        start(
            DCMQRSCP,
            &["--single-process", "-c", &config_arg],
            port,
            dir,
        )
        .await
    }

    #[tokio::test]
    async fn unknown_called_ae_is_rejected_and_known_one_accepted() {
        let dir = tempdir().unwrap();
        let port = free_port();
        let _scp = start_dcmqrscp(&dir, port).await;
        let result = crate::health::probe(&echo_probe("NOT-THE-SCP"), &local(port), TIMEOUT).await;
        let error = result.unwrap_err();
        assert_eq!(
            error.to_string(),
            "DICOM association rejected: result 1 (rejected-permanent), source 1 (service user), reason 7 (called AE title not recognized)"
        );
        let result = crate::health::probe(&echo_probe("LB-SCP"), &local(port), TIMEOUT).await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn silent_server_times_out_waiting_for_associate_ac() {
        let (port, _silent) = crate::health::testutil::silent_server().await;
        let timeout = Duration::from_millis(700);
        let start = Instant::now();
        let result = crate::health::probe(&echo_probe("LB-SCP"), &local(port), timeout).await;
        let elapsed = start.elapsed();
        assert_eq!(
            result.unwrap_err().to_string(),
            "timed out after 700ms while waiting for A-ASSOCIATE-AC"
        );
        assert!(
            elapsed >= timeout && elapsed < timeout + SLACK,
            "took {elapsed:?}"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_connection_refused() {
        let result =
            crate::health::probe(&echo_probe("LB-SCP"), &local(closed_port()), TIMEOUT).await;
        assert_eq!(result, Err(ProbeError::Refused));
    }

    /// What a fake SCP does after reading the A-ASSOCIATE-RQ.
    #[derive(Clone, Copy)]
    enum Fake {
        /// Accepts, answers the C-ECHO with this status, releases.
        Status(u16),
        /// Sends an A-ABORT instead of an answer.
        Abort,
        /// Sends bytes that are no PDU.
        Garbage,
        /// Accepts the association but not the presentation context.
        RejectContext,
        /// Answers the C-ECHO but never the A-RELEASE-RQ.
        NoReleaseRp,
    }

    /// A one-connection SCP built from our own codec, for the answers no dcmtk tool gives.
    /// Returns its port and a task that yields the PDUs it received, by name.
    async fn fake_scp(behaviour: Fake) -> (u16, tokio::task::JoinHandle<Vec<&'static str>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let deadline = Deadline::after(Duration::from_secs(10));
            let mut seen = Vec::new();
            let Pdu::AssociateRq(rq) = receive(&mut stream, &deadline, "test").await.unwrap()
            else {
                panic!("first PDU is not an A-ASSOCIATE-RQ");
            };
            seen.push("A-ASSOCIATE-RQ");
            assert_eq!(rq.called_ae, "LB-SCP");
            assert_eq!(rq.calling_ae, "LOADBALANCER");
            let mut ac = rq.clone();
            ac.presentation_contexts[0].abstract_syntax = None;
            match behaviour {
                Fake::Abort => {
                    let abort = Pdu::Abort {
                        source: 2,
                        reason: 0,
                    };
                    stream.write_all(&abort.encode()).await.unwrap();
                    return seen;
                }
                Fake::Garbage => {
                    stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                        .await
                        .unwrap();
                    return seen;
                }
                Fake::RejectContext => ac.presentation_contexts[0].result = 3,
                Fake::Status(_) | Fake::NoReleaseRp => {}
            }
            ac.user.max_pdu_length = Some(0);
            stream
                .write_all(&Pdu::AssociateAc(ac).encode())
                .await
                .unwrap();
            while let Ok(pdu) = receive(&mut stream, &deadline, "test").await {
                seen.push(pdu.name());
                match pdu {
                    Pdu::PData(pdvs) => {
                        let data: Vec<u8> = pdvs.into_iter().flat_map(|p| p.data).collect();
                        let rq = Command::decode(&data).unwrap();
                        let id = rq.us(tag::MESSAGE_ID).unwrap().unwrap();
                        let status = match behaviour {
                            Fake::Status(s) => s,
                            _ => 0,
                        };
                        let rsp = Pdu::PData(vec![Pdv {
                            context_id: CONTEXT_ID,
                            command: true,
                            last: true,
                            data: dicom_ul::c_echo_rsp(id, status),
                        }]);
                        stream.write_all(&rsp.encode()).await.unwrap();
                    }
                    Pdu::ReleaseRq => {
                        if let Fake::NoReleaseRp = behaviour {
                            continue;
                        }
                        stream.write_all(&Pdu::ReleaseRp.encode()).await.unwrap();
                        return seen;
                    }
                    _ => return seen,
                }
            }
            seen
        });
        (port, task)
    }

    #[tokio::test]
    async fn non_zero_status_fails_after_an_orderly_release() {
        let (port, scp) = fake_scp(Fake::Status(0x0110)).await;
        let result = crate::health::probe(&echo_probe("LB-SCP"), &local(port), TIMEOUT).await;
        assert_eq!(result.unwrap_err().to_string(), "C-ECHO status 0x0110");
        assert_eq!(
            scp.await.unwrap(),
            ["A-ASSOCIATE-RQ", "P-DATA-TF", "A-RELEASE-RQ"]
        );
    }

    #[tokio::test]
    async fn fake_scp_success_path() {
        let (port, scp) = fake_scp(Fake::Status(0)).await;
        let result = crate::health::probe(&echo_probe("LB-SCP"), &local(port), TIMEOUT).await;
        assert_eq!(result, Ok(()));
        assert_eq!(
            scp.await.unwrap(),
            ["A-ASSOCIATE-RQ", "P-DATA-TF", "A-RELEASE-RQ"]
        );
    }

    #[tokio::test]
    async fn abort_from_peer_fails() {
        let (port, _scp) = fake_scp(Fake::Abort).await;
        let result = crate::health::probe(&echo_probe("LB-SCP"), &local(port), TIMEOUT).await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "A-ABORT from peer (source 2, reason 0)"
        );
    }

    #[tokio::test]
    async fn garbage_is_a_malformed_pdu() {
        let (port, _scp) = fake_scp(Fake::Garbage).await;
        let result = crate::health::probe(&echo_probe("LB-SCP"), &local(port), TIMEOUT).await;
        let error = result.unwrap_err();
        assert!(
            matches!(error, ProbeError::MalformedPdu(_)),
            "{error:?}: {error}"
        );
    }

    #[tokio::test]
    async fn rejected_presentation_context_fails() {
        let (port, scp) = fake_scp(Fake::RejectContext).await;
        let result = crate::health::probe(&echo_probe("LB-SCP"), &local(port), TIMEOUT).await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "DICOM presentation context for Verification not accepted: result 3 (abstract syntax not supported)"
        );
        assert_eq!(scp.await.unwrap(), ["A-ASSOCIATE-RQ", "A-RELEASE-RQ"]);
    }

    #[tokio::test]
    async fn missing_release_rp_times_out_and_aborts() {
        let (port, scp) = fake_scp(Fake::NoReleaseRp).await;
        let timeout = Duration::from_millis(600);
        let start = Instant::now();
        let result = crate::health::probe(&echo_probe("LB-SCP"), &local(port), timeout).await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "timed out after 600ms while waiting for A-RELEASE-RP"
        );
        assert!(start.elapsed() < timeout + SLACK);
        assert_eq!(
            scp.await.unwrap(),
            ["A-ASSOCIATE-RQ", "P-DATA-TF", "A-RELEASE-RQ", "A-ABORT"]
        );
    }
}
