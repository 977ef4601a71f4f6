//! A blocking client of lbcore's control socket, for lbctl, lbweb (from a blocking
//! task) and the tests: one request, its typed answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{
    AdminState, Answer, Applied, FirewallStatus, LockdownApplied, Refused, Reply, Request,
    StateSet, Status,
};

/// How long lbcore may take to answer (an apply binds ports and writes /data).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call did not bring an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to lbcore at {path}: {source} (is lbcore running?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("lost the connection to lbcore: {0}")]
    Io(#[from] std::io::Error),
    #[error("lbcore sent an answer that is not understood: {0}")]
    Protocol(String),
    /// lbcore understood the request and refused it.
    #[error(transparent)]
    Refused(Refused),
}

/// lbcore's control socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request on a new connection and waits for its reply.
    pub fn call(&self, request: &Request) -> Result<Answer, CallError> {
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| CallError::Connect {
                path: self.socket.display().to_string(),
                source,
            })?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut line =
            serde_json::to_string(request).map_err(|e| CallError::Protocol(e.to_string()))?;
        line.push('\n');
        stream.write_all(line.as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        if reader.read_line(&mut answer)? == 0 {
            return Err(CallError::Protocol(
                "lbcore closed the connection without answering".into(),
            ));
        }
        match serde_json::from_str::<Reply>(&answer) {
            Ok(Reply::Done(a)) => Ok(a),
            Ok(Reply::Refused(r)) => Err(CallError::Refused(r)),
            Err(e) => Err(CallError::Protocol(e.to_string())),
        }
    }

    /// The System Overview.
    pub fn status(&self) -> Result<Status, CallError> {
        match self.call(&Request::Status)? {
            Answer::Status(s) => Ok(s),
            other => Err(unexpected(&Request::Status, &other)),
        }
    }

    /// Drain, Halt or Online for a real server.
    pub fn set_state(
        &self,
        service: &str,
        server: &str,
        state: AdminState,
    ) -> Result<StateSet, CallError> {
        let request = Request::SetState {
            service: service.into(),
            server: server.into(),
            state,
        };
        match self.call(&request)? {
            Answer::StateSet(s) => Ok(s),
            other => Err(unexpected(&request, &other)),
        }
    }

    /// Reads the configuration file again.
    pub fn reload(&self) -> Result<Applied, CallError> {
        match self.call(&Request::Reload)? {
            Answer::Applied(a) => Ok(a),
            other => Err(unexpected(&Request::Reload, &other)),
        }
    }

    /// Makes `config` the configuration (file and running), or changes nothing;
    /// `origin` names it in a refusal (a file name).
    pub fn apply(&self, config: &str, origin: Option<&str>) -> Result<Applied, CallError> {
        let request = Request::Apply {
            config: config.into(),
            origin: origin.map(str::to_owned),
        };
        match self.call(&request)? {
            Answer::Applied(a) => Ok(a),
            other => Err(unexpected(&request, &other)),
        }
    }

    /// The configuration file's text (empty when none was written yet).
    pub fn show_config(&self) -> Result<String, CallError> {
        match self.call(&Request::ShowConfig)? {
            Answer::Config(c) => Ok(c.text),
            other => Err(unexpected(&Request::ShowConfig, &other)),
        }
    }

    /// A firewall request whose answer is the firewall's status.
    pub fn firewall(&self, request: &Request) -> Result<FirewallStatus, CallError> {
        match self.call(request)? {
            Answer::Firewall(f) => Ok(f),
            other => Err(unexpected(request, &other)),
        }
    }

    /// Applies a lockdown to `networks` (to be confirmed with its token).
    pub fn set_lockdown(
        &self,
        networks: Vec<String>,
        requester: Option<String>,
    ) -> Result<LockdownApplied, CallError> {
        let request = Request::SetLockdown {
            networks,
            requester,
        };
        match self.call(&request)? {
            Answer::LockdownApplied(l) => Ok(l),
            other => Err(unexpected(&request, &other)),
        }
    }
}

fn unexpected(request: &Request, answer: &Answer) -> CallError {
    CallError::Protocol(format!(
        "lbcore answered `{}` to `{}`",
        answer.name(),
        request.name()
    ))
}
