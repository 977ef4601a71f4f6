//! The manifest of an update archive: what the archive is (product, version, build), over
//! which versions it may be installed, the release notes shown before installing, and the
//! size and SHA-256 of each part, in the order the parts follow in the archive. It is
//! the signed document: everything after it in the archive is trusted only by its hashes.
//!
//! ```toml
//! format = 1
//! product = "medlb"
//! version = "0.2.0"
//! build_id = "3f2a9c01b7de"
//! min_version = "0.1.0"
//! development = false
//! notes = """
//! What is new ...
//! """
//!
//! [[part]]
//! name = "vmlinuz"
//! size = 8123456
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! ```
//!
//! Like every format of the appliance it only gains fields (docs/compatibility.md):
//! keys this version does not know are ignored, since a newer manifest may carry them.

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// The format this version writes.
pub const FORMAT: u32 = 1;
/// The product an archive must be for.
pub const PRODUCT: &str = "medlb";
/// The parts an archive installs into a slot, in their order in the archive: the files
/// of a slot (image/README.md).
pub const PARTS: [&str; 3] = ["vmlinuz", "initrd.img", "manifest.txt"];
/// The largest manifest accepted (it is a few hundred bytes plus the notes).
pub const MAX_MANIFEST: u64 = 64 << 10;
/// The largest part accepted: a slot partition is 128 MiB.
pub const MAX_PART: u64 = 128 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub format: u32,
    pub product: String,
    pub version: String,
    #[serde(default)]
    pub build_id: String,
    /// The lowest running version this archive may be installed over.
    pub min_version: String,
    /// Signed with the development key (image/build without MEDLB_SIGNING_KEY).
    #[serde(default)]
    pub development: bool,
    /// What is new, shown to the administrator before installing.
    #[serde(default)]
    pub notes: String,
    #[serde(rename = "part")]
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub name: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// Why a manifest is not acceptable (after its signature was checked: these are
/// mistakes of whoever built the archive, or an archive for something else).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not readable: {0}")]
    Syntax(String),
    #[error("the archive is for {0}, not for this appliance ({PRODUCT})")]
    Product(String),
    #[error("the manifest's {0} is not a version number: {1}")]
    Version(&'static str, String),
    #[error("the manifest must list the parts {expected}, in this order; it lists {found}")]
    Parts { expected: String, found: String },
    #[error("the manifest gives {0} a size of {1} bytes, more than a slot holds ({MAX_PART})")]
    TooLarge(String, u64),
    #[error("the manifest's SHA-256 of {0} is not 64 hex digits")]
    Digest(String),
}

impl Manifest {
    /// Parses and checks a manifest's text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.message().to_string()))?;
        if m.product != PRODUCT {
            return Err(ManifestError::Product(m.product));
        }
        for (field, value) in [("version", &m.version), ("min_version", &m.min_version)] {
            Version::parse(value).map_err(|_| ManifestError::Version(field, value.clone()))?;
        }
        let names: Vec<&str> = m.parts.iter().map(|p| p.name.as_str()).collect();
        if names != PARTS {
            return Err(ManifestError::Parts {
                expected: PARTS.join(", "),
                found: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            });
        }
        for p in &m.parts {
            if p.size > MAX_PART {
                return Err(ManifestError::TooLarge(p.name.clone(), p.size));
            }
            if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ManifestError::Digest(p.name.clone()));
            }
        }
        Ok(m)
    }

    /// The version this archive installs.
    pub fn version(&self) -> Version {
        // checked by parse
        Version::parse(&self.version).unwrap_or(Version {
            major: 0,
            minor: 0,
            patch: 0,
        })
    }

    /// The lowest version it may be installed over.
    pub fn min_version(&self) -> Version {
        Version::parse(&self.min_version).unwrap_or(Version {
            major: 0,
            minor: 0,
            patch: 0,
        })
    }

    /// The manifest's text, in this version's format.
    pub fn to_toml(&self) -> String {
        let mut m = self.clone();
        m.format = FORMAT;
        toml::to_string(&m).unwrap_or_default()
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn example() -> Manifest {
        Manifest {
            format: FORMAT,
            product: PRODUCT.into(),
            version: "0.2.0".into(),
            build_id: "abc".into(),
            min_version: "0.1.0".into(),
            development: true,
            notes: "Faster.\n".into(),
            parts: PARTS
                .iter()
                .map(|n| Part {
                    name: n.to_string(),
                    size: 1,
                    sha256: "0".repeat(64),
                })
                .collect(),
        }
    }

    #[test]
    fn a_manifest_round_trips_and_a_newer_one_is_read() {
        let m = example();
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
        let newer = format!(
            "{}\nsbom = \"spdx.json\"\n",
            m.to_toml().replace("format = 1", "format = 2")
        );
        assert_eq!(Manifest::parse(&newer).unwrap().version, "0.2.0");
    }

    #[test]
    fn what_is_wrong_in_a_manifest_is_named() {
        let text = |f: &dyn Fn(&mut Manifest)| {
            let mut m = example();
            f(&mut m);
            Manifest::parse(&m.to_toml()).unwrap_err().to_string()
        };
        assert!(
            text(&|m| m.product = "otherlb".into()).contains("for otherlb, not for this appliance")
        );
        assert!(text(&|m| m.version = "two".into()).contains("version is not a version number"));
        assert!(text(&|m| m.parts.swap(0, 1)).contains("in this order"));
        assert!(
            text(&|m| m.parts.pop().map(|_| ()).unwrap_or(()))
                .contains("lists vmlinuz, initrd.img")
        );
        assert!(text(&|m| m.parts[1].size = MAX_PART + 1).contains("more than a slot holds"));
        assert!(text(&|m| m.parts[2].sha256 = "xyz".into()).contains("64 hex digits"));
        assert!(
            Manifest::parse("product = ")
                .unwrap_err()
                .to_string()
                .starts_with("the manifest is not readable")
        );
    }
}
