//! The consoles: the VGA virtual terminal and the serial line (or, in tests, a
//! pseudo-terminal or stdin/stdout). Opens them, puts them in a sane line mode,
//! writes text and reads answers line by line, with echo off for passwords.
//!
//! Reads poll with a short timeout so that a console can be told to stop waiting
//! (another console finished the wizard first, or the system shuts down).

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{self, LocalFlags, SetArg};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Why a read gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The console was closed or hung up (EOF, EIO).
    #[error("console closed")]
    Closed,
    /// Someone asked this console to stop waiting.
    #[error("cancelled")]
    Cancelled,
}

/// One console.
pub struct Console {
    name: String,
    input: OwnedFd,
    output: OwnedFd,
    cancel: Arc<AtomicBool>,
    pending: Vec<u8>,
}

/// Whether any of stdin/stdout/stderr had to be filled with a placeholder.
static PLACEHOLDERS: AtomicBool = AtomicBool::new(false);

fn fd_open(fd: i32) -> bool {
    nix::fcntl::fcntl(
        // SAFETY: only asks the kernel about the descriptor number; nothing is closed.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .is_ok()
}

/// Make sure descriptors 0, 1 and 2 are open before anything else opens files (the
/// kernel leaves them closed when the initramfs has no /dev/console): the console
/// if there is one, else a placeholder, replaced by [`reopen_stdio`] once /dev is
/// mounted.
pub fn ensure_stdio() {
    for fd in 0..3 {
        if fd_open(fd) {
            continue;
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open("/dev/console")
            .or_else(|_| OpenOptions::new().read(true).write(true).open("/dev/null"))
            .or_else(|_| {
                PLACEHOLDERS.store(true, Ordering::Relaxed);
                File::open("/")
            });
        if let Ok(f) = f {
            let owned: OwnedFd = f.into();
            if owned.as_raw_fd() == fd {
                // It landed on the descriptor we wanted: keep it open for good.
                let _ = owned.into_raw_fd();
            } else {
                dup_to(&owned, fd);
            }
        }
    }
}

/// After /dev is mounted: put /dev/console where placeholders were.
pub fn reopen_stdio() {
    if !PLACEHOLDERS.swap(false, Ordering::Relaxed) {
        return;
    }
    let Ok(f) = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")
    else {
        return;
    };
    for fd in 0..3 {
        dup_to(&f, fd);
    }
}

fn dup_to(from: impl AsFd, fd: i32) {
    let _ = match fd {
        0 => nix::unistd::dup2_stdin(from),
        1 => nix::unistd::dup2_stdout(from),
        _ => nix::unistd::dup2_stderr(from),
    };
}

/// Where the consoles are: the kernel's active consoles (`console=` on the command
/// line), mapped to device nodes. `tty0` (the current VT) becomes `/dev/tty1`.
pub fn active_consoles(dev: &Path) -> Vec<PathBuf> {
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    let mut out: Vec<PathBuf> = active
        .split_whitespace()
        .map(|n| if n == "tty0" { "tty1" } else { n })
        .map(|n| dev.join(n))
        .collect();
    out.dedup();
    if out.is_empty() {
        out.push(dev.join("console"));
    }
    out
}

impl Console {
    /// Open a terminal device read-write, without making it our controlling terminal.
    pub fn open(path: &Path, cancel: Arc<AtomicBool>) -> std::io::Result<Console> {
        let f: File = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)?;
        let output: OwnedFd = f.try_clone()?.into();
        let c = Console {
            name: path.display().to_string(),
            input: f.into(),
            output,
            cancel,
            pending: Vec::new(),
        };
        c.line_mode();
        Ok(c)
    }

    /// Use this process's stdin and stdout (tests, `init wizard`).
    pub fn stdio(cancel: Arc<AtomicBool>) -> std::io::Result<Console> {
        let input = std::io::stdin().as_fd().try_clone_to_owned()?;
        let output = std::io::stdout().as_fd().try_clone_to_owned()?;
        let c = Console {
            name: "stdio".into(),
            input,
            output,
            cancel,
            pending: Vec::new(),
        };
        c.line_mode();
        Ok(c)
    }

    /// The device's name, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Use another flag to be told to stop waiting.
    pub fn set_cancel(&mut self, cancel: Arc<AtomicBool>) {
        self.cancel = cancel;
    }

    /// A duplicate of the output descriptor (for messages from other threads).
    pub fn output_fd(&self) -> Option<OwnedFd> {
        self.output.try_clone().ok()
    }

    /// Whether this console was told to stop waiting.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Canonical mode with echo, CR read as NL, NL written as CR NL.
    fn line_mode(&self) {
        if let Ok(mut t) = termios::tcgetattr(&self.input) {
            t.local_flags |= LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ECHOE;
            t.input_flags |= termios::InputFlags::ICRNL;
            t.input_flags &= !termios::InputFlags::INLCR & !termios::InputFlags::IGNCR;
            t.output_flags |= termios::OutputFlags::OPOST | termios::OutputFlags::ONLCR;
            let _ = termios::tcsetattr(&self.input, SetArg::TCSANOW, &t);
        }
    }

    fn set_echo(&self, on: bool) {
        if let Ok(mut t) = termios::tcgetattr(&self.input) {
            t.local_flags.set(LocalFlags::ECHO, on);
            let _ = termios::tcsetattr(&self.input, SetArg::TCSANOW, &t);
        }
    }

    /// Write text (best effort: a console that cannot be written to is not an error).
    pub fn write_str(&self, s: &str) {
        let mut buf = s.as_bytes();
        while !buf.is_empty() {
            match nix::unistd::write(&self.output, buf) {
                Ok(0) => return,
                Ok(n) => buf = &buf[n..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => {
                    let _ = wait_fd(self.output.as_fd(), PollFlags::POLLOUT, 100);
                }
                Err(_) => return,
            }
        }
    }

    /// Write a prompt and read one line (without its line end).
    pub fn ask(&mut self, prompt: &str, secret: bool) -> Result<String, ReadError> {
        self.write_str(prompt);
        if secret {
            self.set_echo(false);
        }
        let r = self.read_line();
        if secret {
            self.set_echo(true);
            self.write_str("\n");
        }
        r
    }

    /// Write a prompt and wait for a line; every `every`, `stale()` is asked whether
    /// what the screen shows changed: then `Ok(None)` (nothing typed is lost: a line
    /// typed meanwhile is read first), so the caller redraws and asks again.
    pub fn ask_watching(
        &mut self,
        prompt: &str,
        every: std::time::Duration,
        mut stale: impl FnMut() -> bool,
    ) -> Result<Option<String>, ReadError> {
        self.write_str(prompt);
        let mut next = std::time::Instant::now() + every;
        loop {
            if let Some(line) = self.take_line() {
                return Ok(Some(line));
            }
            if self.cancelled() {
                return Err(ReadError::Cancelled);
            }
            if std::time::Instant::now() >= next {
                if stale() {
                    return Ok(None);
                }
                next = std::time::Instant::now() + every;
            }
            self.fill(200)?;
        }
    }

    /// A whole line already read, if there is one.
    fn take_line(&mut self) -> Option<String> {
        let i = self
            .pending
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')?;
        let mut line: Vec<u8> = self.pending.drain(..=i).collect();
        line.pop();
        // A CR LF pair counts as one line end.
        if self.pending.first() == Some(&b'\n') && line.last() != Some(&b'\n') {
            self.pending.remove(0);
        }
        Some(String::from_utf8_lossy(&line).trim().to_string())
    }

    /// Waits up to `ms` for input and keeps what arrives.
    fn fill(&mut self, ms: u16) -> Result<(), ReadError> {
        match wait_fd(self.input.as_fd(), PollFlags::POLLIN, ms) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(()) => return Err(ReadError::Closed),
        }
        let mut buf = [0u8; 512];
        match nix::unistd::read(&self.input, &mut buf) {
            Ok(0) => Err(ReadError::Closed),
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                Ok(())
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => Ok(()),
            Err(_) => Err(ReadError::Closed),
        }
    }

    /// Read one line, waking up regularly to see whether we were cancelled.
    pub fn read_line(&mut self) -> Result<String, ReadError> {
        loop {
            if let Some(line) = self.take_line() {
                return Ok(line);
            }
            if self.cancelled() {
                return Err(ReadError::Cancelled);
            }
            self.fill(200)?;
        }
    }
}

/// Wait until `fd` is ready; `Ok(false)` on timeout, `Err` on hang-up or error.
fn wait_fd(fd: BorrowedFd<'_>, what: PollFlags, ms: u16) -> Result<bool, ()> {
    let mut fds = [PollFd::new(fd, what)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Ok(false),
        Ok(_) => {
            let r = fds[0].revents().unwrap_or(PollFlags::empty());
            if r.intersects(what) {
                Ok(true)
            } else if r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
                Err(())
            } else {
                Ok(false)
            }
        }
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(_) => Err(()),
    }
}
