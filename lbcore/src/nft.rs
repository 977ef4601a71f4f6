//! Running `nft`, the one way lbcore changes netfilter (the firewall's `inet medlb`
//! table and the SNAT table of Layer 4): a script is handed to `nft -f -`, which applies
//! it as one transaction (all of it or nothing), or to `nft -c -f -`, which checks it
//! against the kernel without changing anything. Driving the program rather than
//! netlink keeps nft's own parser and messages (an administrator's custom rules are
//! checked by the same code that applies them), as kube-proxy's nftables mode does.

use std::io::Write;
use std::process::{Command, Stdio};

/// `nft` as the image installs it (image/programs.txt); not whatever is first on PATH.
pub const NFT: &str = "/usr/sbin/nft";

/// Why nft did not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {NFT}: {0}")]
    Spawn(String),
    #[error("cannot pass the rules to nft: {0}")]
    Pipe(String),
    /// nft's own message (its `Error:` lines), trimmed.
    #[error("nft refused the rules: {0}")]
    Refused(String),
}

impl NftError {
    /// nft's message alone, for an administrator (without "nft refused the rules").
    pub fn message(&self) -> String {
        match self {
            NftError::Refused(m) => m.clone(),
            other => other.to_string(),
        }
    }
}

/// Applies `script` as one transaction.
pub fn apply(script: &str) -> Result<(), NftError> {
    run(&["-f", "-"], Some(script)).map(|_| ())
}

/// Checks `script` against the running kernel without applying it.
pub fn check(script: &str) -> Result<(), NftError> {
    run(&["-c", "-f", "-"], Some(script)).map(|_| ())
}

/// `nft` with `args` (and `script` on its standard input); its standard output.
pub fn run(args: &[&str], script: Option<&str>) -> Result<String, NftError> {
    let mut child = Command::new(NFT)
        .args(args)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NftError::Spawn(e.to_string()))?;
    if let (Some(mut stdin), Some(s)) = (child.stdin.take(), script) {
        // a script nft stops reading (an early error) is not a pipe failure: its
        // message comes on stderr
        if let Err(e) = stdin.write_all(s.as_bytes()) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(NftError::Pipe(e.to_string()));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NftError::Spawn(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(NftError::Refused(if stderr.is_empty() {
            format!("nft exited with {}", out.status)
        } else {
            stderr
        }))
    }
}

/// Whether `nft` can be run here at all (the tests say what is missing).
pub fn available() -> bool {
    Command::new(NFT)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
