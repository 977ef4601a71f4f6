//! Replacing a small state file so that a crash or power loss leaves either the old
//! content or the new one, never a torn file: the one way lbcore writes its files.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `data` to a temporary file beside `path`, fsyncs it, renames it over `path`,
/// then fsyncs the directory so that the rename itself survives a power loss.
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    write_with_mode(path, data, 0o644)
}

/// [`write`] with the file's permission bits: a private key is never readable by
/// others, not even for the moment between create and chmod.
pub fn write_with_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    // a leftover from a crash may have other permissions: start afresh
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The new content is in place from here on: a failed directory sync is reported
    // but is not a failed write (the caller must not treat the old file as kept).
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(
            "{} written, but syncing {} failed: {e}",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}
