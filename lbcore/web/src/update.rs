//! The software-update routes: lbweb passes them to the update agent (`lbupdate`, on
//! `/run/update.sock`), streaming an uploaded archive through without holding it in
//! memory, and asks init (`/run/init.sock`) for the reboot that an administrator
//! chooses. The agent decides everything about an update; lbweb only carries it.

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::api::Failure;
use lbupdate::protocol::{
    Answer, CallError, Client, RefusalKind, Refused, Reply, Request as UpdateRequest, Staged,
    UpdateStatus,
};

/// How long an upload may pause between two pieces before it is given up.
const UPLOAD_IDLE: Duration = Duration::from_secs(60);

pub struct Updates {
    agent: Client,
    /// init's control socket (reboot).
    init: PathBuf,
}

impl Updates {
    pub fn new(agent: PathBuf, init: PathBuf) -> Updates {
        Updates {
            agent: Client::new(agent),
            init,
        }
    }

    /// One request to the agent, off the async threads.
    pub async fn call(&self, request: UpdateRequest) -> Result<Answer, Failure> {
        let client = self.agent.clone();
        tokio::task::spawn_blocking(move || client.call(&request))
            .await
            .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(failure)
    }

    pub async fn status(&self) -> Result<UpdateStatus, Failure> {
        match self.call(UpdateRequest::Status).await? {
            Answer::Status(s) => Ok(*s),
            other => Err(unexpected(&other)),
        }
    }

    /// Streams the request's body (`size` bytes, named `name`) to the agent.
    pub async fn receive(
        &self,
        req: Request<Incoming>,
        name: String,
        size: u64,
    ) -> Result<Staged, Failure> {
        let mut agent = UnixStream::connect(self.agent.socket())
            .await
            .map_err(|e| {
                Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the update agent is not running ({e})"),
                )
            })?;
        let mut line = serde_json::to_string(&UpdateRequest::Receive { name, size })
            .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        line.push('\n');
        agent
            .write_all(line.as_bytes())
            .await
            .map_err(|e| Failure::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
        let (read, mut write) = agent.into_split();
        let mut body = req.into_body();
        let mut sent = 0u64;
        loop {
            let frame = match tokio::time::timeout(UPLOAD_IDLE, body.frame()).await {
                Err(_) => {
                    return Err(Failure::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "the upload stopped for {} s; nothing was kept",
                            UPLOAD_IDLE.as_secs()
                        ),
                    ));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(Failure::new(
                        StatusCode::BAD_REQUEST,
                        format!("the upload broke off: {e}; nothing was kept"),
                    ));
                }
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                if sent + data.len() as u64 > size {
                    return Err(Failure::new(
                        StatusCode::BAD_REQUEST,
                        "the body is longer than its Content-Length",
                    ));
                }
                sent += data.len() as u64;
                // the agent gone means its reply says why: read it below
                if write.write_all(&data).await.is_err() {
                    break;
                }
            }
        }
        let _ = write.shutdown().await;
        let mut answer = String::new();
        BufReader::new(read)
            .read_line(&mut answer)
            .await
            .map_err(|e| Failure::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
        match serde_json::from_str::<Reply>(&answer) {
            Ok(Reply::Done(Answer::Received(s))) => Ok(s),
            Ok(Reply::Done(other)) => Err(unexpected(&other)),
            Ok(Reply::Refused(r)) => Err(refusal(r)),
            Err(e) => Err(Failure::new(
                StatusCode::BAD_GATEWAY,
                format!("the update agent sent an answer that is not understood: {e}"),
            )),
        }
    }

    /// Asks init to restart the appliance (services stop in order, /data is synced).
    pub async fn reboot(&self) -> Result<(), Failure> {
        let socket = self.init.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::{BufRead, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&socket)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"reboot\n")?;
            let mut line = String::new();
            std::io::BufReader::new(s).read_line(&mut line)?;
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(std::io::Error::other)?;
            if v["ok"] == true {
                Ok(())
            } else {
                Err(std::io::Error::other(
                    v["error"].as_str().unwrap_or("refused").to_string(),
                ))
            }
        })
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("init does not take the reboot ({e})"),
            )
        })
    }
}

fn unexpected(a: &Answer) -> Failure {
    Failure::new(
        StatusCode::BAD_GATEWAY,
        format!("the update agent answered `{}`", a.name()),
    )
}

/// What an agent's refusal is in HTTP: a busy agent 409, a wrong request or a bad
/// archive 422 (the reason names the check), the appliance's own failure 500.
fn refusal(r: Refused) -> Failure {
    let status = match r.kind {
        RefusalKind::Busy => StatusCode::CONFLICT,
        RefusalKind::Invalid | RefusalKind::BadArchive => StatusCode::UNPROCESSABLE_ENTITY,
        RefusalKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        RefusalKind::Unsupported => StatusCode::BAD_GATEWAY,
    };
    Failure::new(status, r.reason)
}

fn failure(e: CallError) -> Failure {
    match e {
        CallError::Connect { .. } => Failure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        CallError::Refused(r) => refusal(r),
        CallError::Io(_) | CallError::Protocol(_) => {
            Failure::new(StatusCode::BAD_GATEWAY, e.to_string())
        }
    }
}
