//! Small file-system helpers: atomic replacement of a file (temp file, fsync, rename,
//! fsync of the directory), so that a power cut leaves either the old or the new file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Errors while writing a file atomically.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    #[error("creating directory {0}: {1}")]
    CreateDir(PathBuf, std::io::Error),
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("renaming {0} to {1}: {2}")]
    Rename(PathBuf, PathBuf, std::io::Error),
    #[error("syncing directory {0}: {1}")]
    SyncDir(PathBuf, std::io::Error),
}

/// Replace `path` with `content` atomically; the new file gets `mode`.
pub fn atomic_write(path: &Path, content: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| AtomicWriteError::CreateDir(dir.into(), e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(AtomicWriteError::Write(tmp, e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(AtomicWriteError::Rename(tmp, path.into(), e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AtomicWriteError::SyncDir(dir.into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_file() {
        let dir = std::env::temp_dir().join(format!("init-fsutil-{}", std::process::id()));
        let path = dir.join("sub/a.toml");
        atomic_write(&path, b"one", 0o600).unwrap();
        atomic_write(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let entries = std::fs::read_dir(dir.join("sub")).unwrap().count();
        assert_eq!(entries, 1, "no temp file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
