//! Health-check probes: one attempt against one real server, bounded by a timeout.
//!
//! The check scheduler decides *when* to probe and what rise/fall means; this module only
//! answers "is this server healthy right now?" for one [`Target`], and when it is not, says
//! why in a [`ProbeError`] whose `Display` is a single log line. Every kind lives in its own
//! module; [`probe`] dispatches on the configured [`Probe`].

mod dicom;
mod dicom_ul;
mod error;
mod hl7;
mod http;
mod ping;
mod script;
mod tcp;

#[cfg(test)]
pub(crate) mod testutil;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Probe;

pub use error::ProbeError;

/// What a probe is aimed at: the virtual service (VIP, VPORT) and one real server.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub service: SocketAddr,
    pub server: SocketAddr,
}

/// Slack on top of `timeout` for the outer guard in [`probe`]: each kind already keeps its
/// own deadline and reports the stage it was in, so this guard should never fire; it is only
/// there so that a bug in one kind cannot stall the scheduler.
const GUARD_SLACK: Duration = Duration::from_millis(500);

/// One attempt; never takes (much) longer than `timeout`, whatever the peer does.
pub async fn probe(probe: &Probe, target: &Target, timeout: Duration) -> Result<(), ProbeError> {
    let attempt = async {
        match probe {
            Probe::None => Ok(()),
            Probe::Tcp => tcp::probe(target, timeout).await,
            Probe::Ping => ping::probe(target.server.ip(), timeout).await,
            Probe::DicomEcho {
                calling_ae,
                called_ae,
            } => dicom::probe(calling_ae, called_ae, target, timeout).await,
            Probe::Hl7 { message } => hl7::probe(message.as_deref(), target, timeout).await,
            Probe::Http {
                path,
                expect_status,
                tls,
                host,
            } => {
                let request = http::Request {
                    path,
                    expect_status: *expect_status,
                    tls: *tls,
                    host: host.as_deref(),
                };
                http::probe(&request, target, timeout).await
            }
            Probe::Script { path } => script::probe(path, target, timeout).await,
        }
    };
    match tokio::time::timeout(timeout.saturating_add(GUARD_SLACK), attempt).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout {
            after: timeout,
            stage: "probing",
        }),
    }
}

/// The point in time by which one probe must be finished, and the budget it came from
/// (for the message: "timed out after 2s while ...").
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    pub(crate) fn after(budget: Duration) -> Self {
        let now = Instant::now();
        Deadline {
            // Validation bounds check timeouts; should an absurd budget get here anyway,
            // a deadline a year away is as good as none and cannot overflow.
            at: now
                .checked_add(budget)
                .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400)),
            budget,
        }
    }

    /// Runs one step of a probe; if the deadline passes first, the step is dropped and the
    /// failure names the stage the probe was stuck in.
    pub(crate) async fn run<T>(
        &self,
        stage: &'static str,
        step: impl Future<Output = Result<T, ProbeError>>,
    ) -> Result<T, ProbeError> {
        match tokio::time::timeout_at(self.at, step).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(stage)),
        }
    }

    pub(crate) fn timed_out(&self, stage: &'static str) -> ProbeError {
        ProbeError::Timeout {
            after: self.budget,
            stage,
        }
    }

    pub(crate) fn instant(&self) -> Instant {
        self.at
    }

    pub(crate) fn budget(&self) -> Duration {
        self.budget
    }
}

/// Maps an I/O error of an established connection to a failure that names the stage.
pub(crate) fn io_error(stage: &'static str) -> impl Fn(std::io::Error) -> ProbeError {
    move |e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProbeError::Closed { stage },
        _ => ProbeError::Io {
            stage,
            reason: e.to_string(),
        },
    }
}

/// Reads from `stream` until `complete` finds a whole reply in what has arrived (and
/// returns what it made of it), within the probe's deadline and at most `max` bytes.
/// `what` names the reply for the failure messages ("MLLP frame", "status line"), and
/// `malformed` makes the probe's own error kind for them.
pub(crate) async fn read_reply<S, T>(
    stream: &mut S,
    deadline: &Deadline,
    stage: &'static str,
    what: &str,
    max: usize,
    complete: impl Fn(&[u8]) -> Option<T>,
    malformed: impl Fn(String) -> ProbeError,
) -> Result<T, ProbeError>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    deadline
        .run(stage, async {
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = stream.read(&mut chunk).await.map_err(io_error(stage))?;
                if n == 0 {
                    return Err(if buffer.is_empty() {
                        ProbeError::Closed { stage }
                    } else {
                        malformed(format!(
                            "connection closed after {} bytes without a complete {what}",
                            buffer.len()
                        ))
                    });
                }
                buffer.extend_from_slice(&chunk[..n]);
                if let Some(reply) = complete(&buffer) {
                    return Ok(reply);
                }
                if buffer.len() > max {
                    return Err(malformed(format!(
                        "no complete {what} in the first {max} bytes"
                    )));
                }
            }
        })
        .await
}
