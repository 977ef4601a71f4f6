//! Making an update archive from a built slot (image/build's last step): the manifest,
//! its minisign signature (by Debian's `minisign`, the tool an operator also checks it
//! with), then the slot's parts, as an uncompressed ustar archive with fixed owners,
//! modes and times (the same inputs make the same bytes); and the checksum file beside
//! it, in sha256sum format.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use ring::digest::{SHA256, digest};

use crate::manifest::{FORMAT, Manifest, PARTS, PRODUCT, Part, hex};
use crate::verify::{MANIFEST, SIGNATURE};

/// Debian's minisign.
pub const MINISIGN: &str = "/usr/bin/minisign";

/// What goes into an archive.
pub struct Release<'a> {
    /// The slot's files (image/build's target/image/slot).
    pub slot: &'a Path,
    pub version: &'a str,
    pub build_id: &'a str,
    pub min_version: &'a str,
    pub notes: &'a str,
    /// Signed with the development key.
    pub development: bool,
    /// The minisign secret key.
    pub key: &'a Path,
    /// The archive's time stamps (SOURCE_DATE_EPOCH).
    pub mtime: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read {0}: {1}")]
    Read(String, io::Error),
    #[error("cannot write {0}: {1}")]
    Write(String, io::Error),
    #[error("cannot run {MINISIGN}: {0} (apt-get install minisign)")]
    Minisign(io::Error),
    #[error("minisign could not sign the manifest: {0}")]
    Sign(String),
}

/// Writes `medlb-<version>.update` and its `.sha256` into `out`; returns the archive's
/// path.
pub fn pack(r: &Release<'_>, out: &Path) -> Result<PathBuf, PackError> {
    let mut parts = Vec::new();
    let mut data = Vec::new();
    for name in PARTS {
        let p = r.slot.join(name);
        let bytes = std::fs::read(&p).map_err(|e| PackError::Read(p.display().to_string(), e))?;
        parts.push(Part {
            name: name.to_string(),
            size: bytes.len() as u64,
            sha256: hex(digest(&SHA256, &bytes).as_ref()),
        });
        data.push(bytes);
    }
    let manifest = Manifest {
        format: FORMAT,
        product: PRODUCT.into(),
        version: r.version.into(),
        build_id: r.build_id.into(),
        min_version: r.min_version.into(),
        development: r.development,
        notes: r.notes.into(),
        parts,
    };
    std::fs::create_dir_all(out).map_err(|e| PackError::Write(out.display().to_string(), e))?;
    let work = tempdir_in(out)?;
    let manifest_path = work.join(MANIFEST);
    let text = manifest.to_toml();
    std::fs::write(&manifest_path, &text)
        .map_err(|e| PackError::Write(manifest_path.display().to_string(), e))?;
    let signature = sign(
        r.key,
        &manifest_path,
        &format!("{PRODUCT} {} {}", r.version, r.build_id),
    )?;
    let _ = std::fs::remove_dir_all(&work);

    let name = format!("{PRODUCT}-{}.update", r.version);
    let archive = out.join(&name);
    let mut entries: Vec<(&str, &[u8])> =
        vec![(MANIFEST, text.as_bytes()), (SIGNATURE, &signature)];
    for (name, bytes) in PARTS.iter().zip(&data) {
        entries.push((name, bytes));
    }
    write_tar(&archive, &entries, r.mtime)?;
    let sum = crate::verify::sha256_file(&archive)
        .map_err(|e| PackError::Read(archive.display().to_string(), e))?;
    let sum_path = out.join(format!("{name}.sha256"));
    std::fs::write(&sum_path, format!("{sum}  {name}\n"))
        .map_err(|e| PackError::Write(sum_path.display().to_string(), e))?;
    Ok(archive)
}

/// A scratch directory for the manifest minisign signs.
fn tempdir_in(out: &Path) -> Result<PathBuf, PackError> {
    let d = out.join(format!(".pack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).map_err(|e| PackError::Write(d.display().to_string(), e))?;
    Ok(d)
}

/// `minisign -S`: the signature file's bytes.
pub fn sign(key: &Path, file: &Path, trusted_comment: &str) -> Result<Vec<u8>, PackError> {
    let sig = file.with_extension("minisig");
    let out = Command::new(MINISIGN)
        .arg("-S")
        .arg("-s")
        .arg(key)
        .arg("-m")
        .arg(file)
        .arg("-x")
        .arg(&sig)
        .arg("-t")
        .arg(trusted_comment)
        .output()
        .map_err(PackError::Minisign)?;
    if !out.status.success() {
        return Err(PackError::Sign(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    std::fs::read(&sig).map_err(|e| PackError::Read(sig.display().to_string(), e))
}

/// A ustar archive of regular files, in the given order, owned by root, mode 0644.
pub fn write_tar(path: &Path, entries: &[(&str, &[u8])], mtime: u64) -> Result<(), PackError> {
    let w = |e| PackError::Write(path.display().to_string(), e);
    let tmp = path.with_extension("update.part");
    let mut b = tar::Builder::new(File::create(&tmp).map_err(w)?);
    for (name, bytes) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).map_err(w)?;
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *bytes).map_err(w)?;
    }
    let mut f = b.into_inner().map_err(w)?;
    f.flush().map_err(w)?;
    f.sync_all().map_err(w)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(w)
}
