//! Verifying an update archive, in the order that trusts nothing before it is checked:
//!
//! 1. the checksum file (sha256sum format) against the whole archive;
//! 2. the archive is a tar whose first entry is the manifest and whose second is the
//!    manifest's minisign signature, made by one of the trusted keys;
//! 3. the manifest: the product, the version (not older than the running one, unless a
//!    downgrade is explicitly allowed; the running one at least the manifest's
//!    `min_version`);
//! 4. each part, in the manifest's order: a regular file with exactly the expected name
//!    and size, hashed while it is read (and, when installing, copied out).
//!
//! The tar is read entry by entry, never unpacked by a library: only the regular files
//! the signed manifest names are accepted, no links, no directories, no `..`, no
//! absolute paths, nothing after the last part, every size capped. Each refusal is its
//! own [`Refusal`], in words an administrator can act on.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use minisign_verify::{PublicKey, Signature};
use ring::digest::{Context, SHA256};

use crate::manifest::{self, MAX_MANIFEST, Manifest, ManifestError, hex};
use crate::version::Version;

/// The name of the manifest entry and of its signature entry.
pub const MANIFEST: &str = "manifest";
pub const SIGNATURE: &str = "manifest.minisig";
/// A minisign signature is four lines of under 200 characters.
const MAX_SIGNATURE: u64 = 4 << 10;

/// Why an archive is refused. Nothing on disk changes on a refusal.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the checksum file is not a sha256sum line (`<64 hex digits>  <file name>`): {0}")]
    ChecksumFile(String),
    #[error(
        "checksum does not match: the checksum file says {expected}, the archive's SHA-256 is {actual}"
    )]
    ChecksumMismatch { expected: String, actual: String },
    #[error("not an update archive: {0}")]
    NotAnArchive(String),
    #[error("not signed: the archive has no {SIGNATURE} after its manifest")]
    NotSigned,
    #[error("the signature is damaged: {0}")]
    SignatureUnreadable(String),
    #[error("signed by an unknown key: not by one of the {0} key(s) this appliance trusts")]
    UnknownKey(usize),
    #[error("signature does not match: the manifest was changed after it was signed")]
    BadSignature,
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{archive} is older than the running {running}")]
    Older { archive: Version, running: Version },
    #[error("{0} is the version that runs already")]
    Same(Version),
    #[error("{archive} can be installed only over {min} or newer; this appliance runs {running}")]
    TooOld {
        archive: Version,
        min: Version,
        running: Version,
    },
    #[error("`{0}` is not a plain file name (an update holds no paths, `..` or absolute names)")]
    BadName(String),
    #[error("{name} is a {kind}: an update holds only regular files")]
    NotAFile { name: String, kind: &'static str },
    #[error("the archive holds {found} where the manifest says {expected} comes")]
    Unexpected { found: String, expected: String },
    #[error("{name} is {size} bytes, more than the {limit} an update may hold there")]
    Oversize { name: String, size: u64, limit: u64 },
    #[error("{name} is {size} bytes in the archive, the signed manifest says {expected}")]
    SizeMismatch {
        name: String,
        size: u64,
        expected: u64,
    },
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("{0} is corrupt: its SHA-256 is not the one the manifest was signed with")]
    Corrupt(String),
    #[error("the archive holds {0} after its last part")]
    Extra(String),
    /// Not the archive's fault: the appliance could not read or write.
    #[error("{0}")]
    Io(String),
}

impl Refusal {
    /// Whether the archive is at fault (a bad archive), or the appliance (its disk).
    pub fn is_archive_fault(&self) -> bool {
        !matches!(self, Refusal::Io(_))
    }
}

/// The keys an archive may be signed with (minisign `.pub` files).
pub struct Trusted {
    keys: Vec<(String, PublicKey)>,
}

/// Why the trusted keys cannot be loaded (the image's fault).
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read the trusted keys in {0}: {1}")]
    Read(String, io::Error),
    #[error("{0} is not a minisign public key")]
    Bad(String),
    #[error("no trusted keys (*.pub) in {0}: no update can be verified")]
    None(String),
}

impl Trusted {
    /// Every `*.pub` in `dir` (more than one, so that keys can be rotated).
    pub fn load(dir: &Path) -> Result<Trusted, KeysError> {
        let read = |e| KeysError::Read(dir.display().to_string(), e);
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        files.sort();
        let mut keys = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(read)?;
            let key =
                PublicKey::decode(&text).map_err(|_| KeysError::Bad(f.display().to_string()))?;
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            keys.push((name, key));
        }
        if keys.is_empty() {
            return Err(KeysError::None(dir.display().to_string()));
        }
        Ok(Trusted { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key file that made `signature` over `data`.
    fn check(&self, data: &[u8], signature: &str) -> Result<String, Refusal> {
        let sig = Signature::decode(signature)
            .map_err(|e| Refusal::SignatureUnreadable(e.to_string()))?;
        for (name, key) in &self.keys {
            match key.verify(data, &sig, false) {
                Ok(()) => return Ok(name.clone()),
                Err(minisign_verify::Error::UnexpectedKeyId) => continue,
                Err(_) => return Err(Refusal::BadSignature),
            }
        }
        Err(Refusal::UnknownKey(self.keys.len()))
    }
}

/// What the checks found: the manifest, and who signed it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    /// The trusted key file that signed it.
    pub signed_by: String,
    pub archive_sha256: String,
}

/// The SHA-256 the checksum file gives for `archive_name` (its only line, or the line
/// naming that file).
pub fn checksum_of(text: &str, archive_name: &str) -> Result<String, Refusal> {
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (hash, name) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (hash, name.trim_start().trim_start_matches('*'))
        })
        .collect();
    let line = match lines.as_slice() {
        [one] => Some(*one),
        many => many.iter().find(|(_, n)| *n == archive_name).copied(),
    };
    let Some((hash, _)) = line else {
        return Err(Refusal::ChecksumFile(format!(
            "it has {} lines and none names {archive_name}",
            lines.len()
        )));
    };
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refusal::ChecksumFile(format!("`{hash}` is not a SHA-256")));
    }
    Ok(hash.to_ascii_lowercase())
}

/// The SHA-256 of a file, read in pieces (an archive is never held in memory whole).
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// How an archive is checked.
pub struct Check<'a> {
    pub trusted: &'a Trusted,
    /// The version that runs now.
    pub running: Version,
    /// Install an older version (or the same one) anyway: an explicit, logged choice.
    pub allow_downgrade: bool,
}

/// Verifies `archive` against its checksum file's text. With `parts_dir`, the parts are
/// also written there as they are checked (what an install then puts into the slot);
/// a refusal removes what was written.
pub fn verify(
    archive: &Path,
    checksum: &str,
    check: &Check<'_>,
    parts_dir: Option<&Path>,
) -> Result<Verified, Refusal> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let expected = checksum_of(checksum, &name)?;
    let actual = sha256_file(archive)
        .map_err(|e| Refusal::Io(format!("cannot read {}: {e}", archive.display())))?;
    if actual != expected {
        return Err(Refusal::ChecksumMismatch { expected, actual });
    }
    let file = File::open(archive)
        .map_err(|e| Refusal::Io(format!("cannot read {}: {e}", archive.display())))?;
    let result = read_archive(BufReader::new(file), check, parts_dir);
    if result.is_err() {
        if let Some(dir) = parts_dir {
            for p in manifest::PARTS {
                let _ = std::fs::remove_file(dir.join(p));
            }
        }
    }
    result.map(|(manifest, signed_by)| Verified {
        manifest,
        signed_by,
        archive_sha256: actual,
    })
}

/// Steps 2 to 4, on the archive's bytes.
pub fn read_archive(
    reader: impl Read,
    check: &Check<'_>,
    parts_dir: Option<&Path>,
) -> Result<(Manifest, String), Refusal> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive
        .entries()
        .map_err(|e| Refusal::NotAnArchive(e.to_string()))?;
    let mut next = |expected: &str| -> Result<Option<tar::Entry<'_, _>>, Refusal> {
        match entries.next() {
            None => Ok(None),
            Some(Ok(e)) => Ok(Some(e)),
            Some(Err(e)) => Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                Refusal::Truncated(format!("the archive ends before {expected}"))
            } else {
                Refusal::NotAnArchive(e.to_string())
            }),
        }
    };

    let Some(mut m) = next(MANIFEST)? else {
        return Err(Refusal::NotAnArchive("it is empty".into()));
    };
    expect_file(&m, MANIFEST, MAX_MANIFEST).map_err(|e| match e {
        Refusal::Unexpected { found, .. } => {
            Refusal::NotAnArchive(format!("its first entry is {found}, not the manifest"))
        }
        other => other,
    })?;
    let manifest_bytes = read_small(&mut m, MANIFEST)?;

    let signature = match next(SIGNATURE)? {
        None => return Err(Refusal::NotSigned),
        Some(mut s) => {
            if entry_name(&s) != SIGNATURE {
                return Err(Refusal::NotSigned);
            }
            expect_file(&s, SIGNATURE, MAX_SIGNATURE)?;
            read_small(&mut s, SIGNATURE)?
        }
    };
    let signature = String::from_utf8(signature)
        .map_err(|_| Refusal::SignatureUnreadable("it is not text".into()))?;
    let signed_by = check.trusted.check(&manifest_bytes, &signature)?;

    let text = std::str::from_utf8(&manifest_bytes)
        .map_err(|_| ManifestError::Syntax("it is not UTF-8 text".into()))?;
    let manifest = Manifest::parse(text)?;
    let version = manifest.version();
    if !check.allow_downgrade {
        if version < check.running {
            return Err(Refusal::Older {
                archive: version,
                running: check.running,
            });
        }
        if version == check.running {
            return Err(Refusal::Same(version));
        }
    }
    if check.running < manifest.min_version() {
        return Err(Refusal::TooOld {
            archive: version,
            min: manifest.min_version(),
            running: check.running,
        });
    }

    for part in &manifest.parts {
        let Some(mut e) = next(&part.name)? else {
            return Err(Refusal::Truncated(format!(
                "the archive ends before {}",
                part.name
            )));
        };
        expect_file(&e, &part.name, manifest::MAX_PART)?;
        let size = e.header().size().unwrap_or(0);
        if size != part.size {
            return Err(Refusal::SizeMismatch {
                name: part.name.clone(),
                size,
                expected: part.size,
            });
        }
        let mut out = match parts_dir {
            Some(dir) => Some(
                File::create(dir.join(&part.name))
                    .map_err(|err| Refusal::Io(format!("cannot write {}: {err}", dir.display())))?,
            ),
            None => None,
        };
        let (got, digest) = copy_hashing(&mut e, out.as_mut(), &part.name)?;
        if got < part.size {
            return Err(Refusal::Truncated(format!(
                "{} ends after {got} of its {} bytes",
                part.name, part.size
            )));
        }
        if digest != part.sha256.to_ascii_lowercase() {
            return Err(Refusal::Corrupt(part.name.clone()));
        }
        if let Some(f) = out {
            f.sync_all()
                .map_err(|err| Refusal::Io(format!("cannot write {}: {err}", part.name)))?;
        }
    }
    if let Some(extra) = next("the end")? {
        return Err(Refusal::Extra(entry_name(&extra)));
    }
    Ok((manifest, signed_by))
}

/// The entry's name as written in the archive.
fn entry_name<R: Read>(e: &tar::Entry<'_, R>) -> String {
    String::from_utf8_lossy(&e.path_bytes()).into_owned()
}

/// The entry is a regular file named exactly `expected`, no larger than `limit`.
fn expect_file<R: Read>(e: &tar::Entry<'_, R>, expected: &str, limit: u64) -> Result<(), Refusal> {
    let name = entry_name(e);
    if name.is_empty()
        || name.starts_with('/')
        || name.split('/').any(|c| c == ".." || c == ".")
        || name.contains('/')
    {
        return Err(Refusal::BadName(name));
    }
    use tar::EntryType as T;
    let kind = match e.header().entry_type() {
        T::Regular | T::Continuous => None,
        T::Symlink => Some("symbolic link"),
        T::Link => Some("hard link"),
        T::Directory => Some("directory"),
        T::Char | T::Block => Some("device"),
        T::Fifo => Some("pipe"),
        _ => Some("special entry"),
    };
    if let Some(kind) = kind {
        return Err(Refusal::NotAFile { name, kind });
    }
    if name != expected {
        return Err(Refusal::Unexpected {
            found: name,
            expected: expected.to_string(),
        });
    }
    let size = e.header().size().unwrap_or(u64::MAX);
    if size > limit {
        return Err(Refusal::Oversize { name, size, limit });
    }
    Ok(())
}

fn read_small<R: Read>(e: &mut tar::Entry<'_, R>, name: &str) -> Result<Vec<u8>, Refusal> {
    let mut buf = Vec::new();
    e.read_to_end(&mut buf).map_err(|err| {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            Refusal::Truncated(format!("{name} is cut short"))
        } else {
            Refusal::NotAnArchive(err.to_string())
        }
    })?;
    Ok(buf)
}

/// Copies an entry (into `out` when given) while hashing it; returns the bytes read and
/// their SHA-256.
fn copy_hashing<R: Read>(
    e: &mut tar::Entry<'_, R>,
    mut out: Option<&mut File>,
    name: &str,
) -> Result<(u64, String), Refusal> {
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match e.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(err) => return Err(Refusal::NotAnArchive(err.to_string())),
        };
        ctx.update(&buf[..n]);
        if let Some(f) = out.as_deref_mut() {
            f.write_all(&buf[..n])
                .map_err(|err| Refusal::Io(format!("cannot write {name}: {err}")))?;
        }
        total += n as u64;
    }
    Ok((total, hex(ctx.finish().as_ref())))
}
