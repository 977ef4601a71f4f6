//! Replacing a file so that a crash or power cut leaves either the old content or the
//! new one, never a torn file: the one way the appliance's programs write their files.
//!
//! The content goes to a temporary file beside the target, created afresh under a name
//! no other writer uses at the same time (process id, a per-process counter and the
//! time: PID 1 has the same pid at every boot, and threads of one process write at
//! once); it is synced, renamed over the target, and the directory is synced so that
//! the rename itself survives a power loss. Every failure is reported: a caller learns
//! whether the old file is still in place ([`AtomicWriteError::replaced`] is false) or
//! the new content is there but may not survive a power cut (the directory sync
//! failed).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Temporary files older than this are leftovers of a crash (no write takes so long)
/// and are removed by the next write of the same file.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Why a file could not be replaced, and how far the write got.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    #[error("{0} is not a file path")]
    NotAFile(PathBuf),
    #[error("cannot create the directory {0}: {1}")]
    CreateDir(PathBuf, #[source] io::Error),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, #[source] io::Error),
    #[error("cannot put {1} in place of {0}: {2}")]
    Rename(PathBuf, PathBuf, #[source] io::Error),
    /// The new content is in place, but the directory could not be synced: a power cut
    /// now could bring the old file back.
    #[error("{0} was written, but syncing its directory failed: {1}")]
    SyncDir(PathBuf, #[source] io::Error),
}

impl AtomicWriteError {
    /// Whether the file now holds the new content (only a directory sync failed), so
    /// that the caller must not act as if the old one were kept.
    pub fn replaced(&self) -> bool {
        matches!(self, AtomicWriteError::SyncDir(..))
    }
}

/// Replaces `path` with `content`; the new file gets the permission bits `mode` from
/// the start (a private key is never readable by others, not even for a moment). The
/// directory is created when missing.
pub fn write(path: &Path, content: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| AtomicWriteError::NotAFile(path.to_path_buf()))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| AtomicWriteError::CreateDir(dir.into(), e))?;
    remove_leftovers(dir, &name);
    let (tmp, mut file) = create_temporary(dir, &name, mode)?;
    let written = file.write_all(content).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(AtomicWriteError::Write(tmp, e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(AtomicWriteError::Rename(path.into(), tmp, e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AtomicWriteError::SyncDir(path.into(), e))
}

/// The prefix of the temporary files of `name`.
fn temporary_prefix(name: &str) -> String {
    format!(".{name}.tmp-")
}

fn create_temporary(
    dir: &Path,
    name: &str,
    mode: u32,
) -> Result<(PathBuf, File), AtomicWriteError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut last = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            "{}{}-{n}-{nanos:08x}",
            temporary_prefix(name),
            std::process::id()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            // a leftover of an earlier boot with the same pid and counter
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((tmp, e)),
            Err(e) => return Err(AtomicWriteError::Write(tmp, e)),
        }
    }
    let (tmp, e) = last.unwrap_or_else(|| (dir.join(name), io::Error::other("no name left")));
    Err(AtomicWriteError::Write(tmp, e))
}

/// Best effort: temporary files of `name` that a crash left behind.
fn remove_leftovers(dir: &Path, name: &str) {
    let prefix = temporary_prefix(name);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > LEFTOVER_AGE);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_with_its_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.toml");
        write(&path, b"one", 0o600).unwrap();
        write(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(names(&dir.path().join("sub")), ["a.toml"]);
    }

    #[test]
    fn concurrent_writers_of_one_file_never_share_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        write(&path, format!("writer {i}").as_bytes(), 0o644).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("writer "), "{text}");
        assert_eq!(names(dir.path()), ["state.json"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        write(&path, b"old", 0o644).unwrap();
        // a directory where the file should be: the rename fails
        let target = dir.path().join("d");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("x"), b"x").unwrap();
        let e = write(&target, b"new", 0o644).unwrap_err();
        assert!(matches!(e, AtomicWriteError::Rename(..)), "{e}");
        assert!(!e.replaced());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["a.toml", "d"], "temporary file removed");
    }

    #[test]
    fn leftovers_of_a_crash_are_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".a.toml.tmp-1-0-0");
        std::fs::write(&stale, b"half").unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let fresh = dir.path().join(".a.toml.tmp-99999999-0-0");
        std::fs::write(&fresh, b"someone else's, in flight").unwrap();
        write(&dir.path().join("a.toml"), b"new", 0o644).unwrap();
        assert!(!stale.exists());
        assert!(
            fresh.exists(),
            "a recent temporary file may be another writer's"
        );
    }
}
