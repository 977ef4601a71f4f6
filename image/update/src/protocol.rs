//! The update agent's control protocol, on its Unix socket (`/run/update.sock`): one JSON
//! request per line, one JSON reply per line, as lbcore's (lbcore-control) and under the
//! same compatibility rules (docs/compatibility.md): fields are added, never renamed; a
//! command this version does not know is refused as `unsupported`.
//!
//! `receive` is followed on the same connection by exactly `size` bytes of the archive;
//! the reply comes once they are all in. Everything else is one line each way.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use appliance::files::update_state::{LastResult, Step, Target};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Where the agent is: running version and slot, step, progress, last result.
    Status,
    /// An archive follows: `size` bytes after this line. Replaces whatever was staged.
    Receive { name: String, size: u64 },
    /// The archive's checksum file (sha256sum format), as text.
    Checksum { text: String },
    /// Verify the staged archive with the staged checksum and install it into the slot
    /// that does not run. `allow_downgrade` (logged) accepts an older version.
    Install {
        #[serde(default)]
        allow_downgrade: bool,
    },
    /// Forget what is staged.
    Discard,
    /// Ask the update server whether a newer version is available.
    Check,
    /// Download the available version (and its checksum file) and stage it, as an
    /// upload would be; a break resumes where it stopped.
    Download,
    /// Where the appliance looks for updates online.
    Settings,
    /// Change those settings (checked strictly; written to /data).
    SetSettings { settings: Settings },
}

impl Request {
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Receive { .. } => "receive",
            Request::Checksum { .. } => "checksum",
            Request::Install { .. } => "install",
            Request::Discard => "discard",
            Request::Check => "check",
            Request::Download => "download",
            Request::Settings => "settings",
            Request::SetSettings { .. } => "set-settings",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Reply {
    Done(Answer),
    Refused(Refused),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Answer {
    Status(Box<UpdateStatus>),
    /// An archive was received whole.
    Received(Staged),
    /// The checksum file was taken.
    ChecksumTaken(Staged),
    /// Installed; the reboot is the administrator's to choose.
    Installed(Installed),
    Discarded,
    /// What the update server offers.
    Checked(Checked),
    /// The online settings.
    Settings(Settings),
}

impl Answer {
    pub fn name(&self) -> &'static str {
        match self {
            Answer::Status(_) => "status",
            Answer::Received(_) => "received",
            Answer::ChecksumTaken(_) => "checksum-taken",
            Answer::Installed(_) => "installed",
            Answer::Discarded => "discarded",
            Answer::Checked(_) => "checked",
            Answer::Settings(_) => "settings",
        }
    }
}

/// Why a request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    pub kind: RefusalKind,
    pub reason: String,
}

impl Refused {
    pub fn new(kind: RefusalKind, reason: impl Into<String>) -> Refused {
        Refused {
            kind,
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalKind {
    /// Another update is under way, or one is installed and waits for its reboot.
    Busy,
    /// The request is wrong (no archive staged, a bad name or size).
    Invalid,
    /// The archive was refused by the verification; the reason says which check.
    BadArchive,
    /// The appliance could not carry it out (its disk).
    Failed,
    /// Not a request this agent knows.
    Unsupported,
}

/// What the agent reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// The running system.
    pub running: Running,
    pub step: Step,
    /// What is under way now, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// What is staged for an install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<Staged>,
    /// The update installed and waiting for its reboot (or coming up after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// An installed update boots at the next restart.
    pub reboot_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<LastResult>,
    /// A newer version the update server offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<Available>,
    /// The last look at the update server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<Checked>,
}

/// A version the update server offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Available {
    pub version: String,
    /// What is new in it.
    #[serde(default)]
    pub notes: String,
    /// The archive's size in bytes (as the index says).
    #[serde(default)]
    pub size: u64,
}

/// A look at the update server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    /// Seconds since 1970.
    pub at: u64,
    /// "Update 0.2.0 is available", "0.1.0 is up to date", or why the server could not
    /// be asked.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<Available>,
}

/// The online settings as the API shows and takes them: a proxy's password is shown
/// as `***` and kept when `***` comes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub check: bool,
    pub interval_hours: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub version: String,
    /// The slot it was booted from; `None` outside the appliance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Signed with the development key.
    pub development: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// `receiving`, `downloading`, `verifying`, `building`, `writing`, `checking`,
    /// `flipping`.
    pub stage: String,
    pub done: u64,
    pub total: u64,
    /// Bytes per second (downloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub name: String,
    pub size: u64,
    /// Whether the checksum file was given too.
    pub checksum: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub version: String,
    pub slot: String,
    /// The release notes of the installed version.
    #[serde(default)]
    pub notes: String,
    pub message: String,
}

/// Why a call brought no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to the update agent at {path}: {source} (is lbupdate running?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("lost the connection to the update agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("the update agent sent an answer that is not understood: {0}")]
    Protocol(String),
    #[error(transparent)]
    Refused(Refused),
}

/// A blocking client of the agent (lbweb calls it from a blocking task, and streams an
/// upload through [`Client::receive`]).
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

    fn connect(&self, timeout: Duration) -> Result<UnixStream, CallError> {
        let s = UnixStream::connect(&self.socket).map_err(|source| CallError::Connect {
            path: self.socket.display().to_string(),
            source,
        })?;
        s.set_read_timeout(Some(timeout))?;
        Ok(s)
    }

    fn send(stream: &mut UnixStream, request: &Request) -> Result<(), CallError> {
        let mut line =
            serde_json::to_string(request).map_err(|e| CallError::Protocol(e.to_string()))?;
        line.push('\n');
        stream.write_all(line.as_bytes())?;
        Ok(())
    }

    fn reply(stream: UnixStream) -> Result<Answer, CallError> {
        let mut line = String::new();
        if BufReader::new(stream).read_line(&mut line)? == 0 {
            return Err(CallError::Protocol(
                "the agent closed the connection without answering".into(),
            ));
        }
        match serde_json::from_str::<Reply>(&line) {
            Ok(Reply::Done(a)) => Ok(a),
            Ok(Reply::Refused(r)) => Err(CallError::Refused(r)),
            Err(e) => Err(CallError::Protocol(e.to_string())),
        }
    }

    /// One request, one answer. An install may take minutes (it writes a whole slot).
    pub fn call(&self, request: &Request) -> Result<Answer, CallError> {
        let mut s = self.connect(Duration::from_secs(900))?;
        Self::send(&mut s, request)?;
        Self::reply(s)
    }

    /// Sends an archive of `size` bytes read from `data`.
    pub fn receive(
        &self,
        name: &str,
        size: u64,
        data: &mut impl Read,
    ) -> Result<Staged, CallError> {
        let mut s = self.connect(Duration::from_secs(900))?;
        Self::send(
            &mut s,
            &Request::Receive {
                name: name.into(),
                size,
            },
        )?;
        let copied = std::io::copy(&mut data.take(size), &mut s)?;
        if copied < size {
            return Err(CallError::Protocol(format!(
                "the archive ended after {copied} of {size} bytes"
            )));
        }
        match Self::reply(s)? {
            Answer::Received(staged) => Ok(staged),
            other => Err(CallError::Protocol(format!(
                "the agent answered `{}` to `receive`",
                other.name()
            ))),
        }
    }

    pub fn status(&self) -> Result<UpdateStatus, CallError> {
        match self.call(&Request::Status)? {
            Answer::Status(s) => Ok(*s),
            other => Err(CallError::Protocol(format!(
                "the agent answered `{}` to `status`",
                other.name()
            ))),
        }
    }
}
