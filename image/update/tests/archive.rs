//! The update archive against real tools: keys made and manifests signed by Debian's
//! `minisign`, archives written here or by `lbupdate pack`, and every refusal the
//! verifier makes, each with its own message. Nothing is installed here (install.rs and
//! the appliance tests do that).

use std::path::{Path, PathBuf};
use std::process::Command;

use lbupdate::manifest::{Manifest, PARTS};
use lbupdate::pack::{self, MINISIGN, Release};
use lbupdate::verify::{self, Check, Refusal, Trusted};
use lbupdate::version::Version;

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            dir: tempfile::tempdir().unwrap(),
        };
        for sub in ["slot", "keys", "other-keys", "out"] {
            std::fs::create_dir_all(lab.path(sub)).unwrap();
        }
        // a slot as image/build makes it, small
        std::fs::write(lab.path("slot/vmlinuz"), vec![0x4b; 70_000]).unwrap();
        std::fs::write(
            lab.path("slot/initrd.img"),
            (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        std::fs::write(
            lab.path("slot/manifest.txt"),
            "product=medlb\nversion=0.2.0\n",
        )
        .unwrap();
        keygen(&lab.path("keys/release.pub"), &lab.path("release.key"));
        keygen(&lab.path("other-keys/other.pub"), &lab.path("other.key"));
        lab
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A good archive of `version`, by `lbupdate pack`.
    fn pack(&self, version: &str, key: &str) -> (PathBuf, PathBuf) {
        let archive = pack::pack(
            &Release {
                slot: &self.path("slot"),
                version,
                build_id: "b1",
                min_version: "0.1.0",
                notes: "Faster failover.\n",
                development: false,
                key: &self.path(key),
                mtime: 1767225600,
            },
            &self.path("out"),
        )
        .unwrap();
        let sum = PathBuf::from(format!("{}.sha256", archive.display()));
        (archive, sum)
    }

    fn verify(&self, archive: &Path, running: &str) -> Result<verify::Verified, Refusal> {
        let trusted = Trusted::load(&self.path("keys")).unwrap();
        let checksum = std::fs::read_to_string(format!("{}.sha256", archive.display())).unwrap();
        let check = Check {
            trusted: &trusted,
            running: Version::parse(running).unwrap(),
            allow_downgrade: false,
        };
        verify::verify(archive, &checksum, &check, None)
    }

    /// Rewrites the checksum file for the archive as it is now (a bad archive with a
    /// matching checksum: the later checks must catch it).
    fn resum(&self, archive: &Path) {
        let name = archive.file_name().unwrap().to_string_lossy().into_owned();
        let sum = verify::sha256_file(archive).unwrap();
        std::fs::write(
            format!("{}.sha256", archive.display()),
            format!("{sum}  {name}\n"),
        )
        .unwrap();
    }
}

fn keygen(public: &Path, secret: &Path) {
    let out = Command::new(MINISIGN)
        .args(["-G", "-W", "-p"])
        .arg(public)
        .arg("-s")
        .arg(secret)
        .output()
        .unwrap_or_else(|e| {
            panic!("{MINISIGN} is missing (tests/packages.txt lists minisign): {e}")
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The entries of a good archive, to be rearranged by a test.
fn entries(
    lab: &Lab,
    version: &str,
    key: &str,
    edit: impl Fn(&mut Manifest),
) -> Vec<(String, Vec<u8>)> {
    let (archive, _) = lab.pack(version, key);
    let mut a = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    let mut out: Vec<(String, Vec<u8>)> = a
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (name, data)
        })
        .collect();
    let mut m = Manifest::parse(std::str::from_utf8(&out[0].1).unwrap()).unwrap();
    edit(&mut m);
    let edited = m.to_toml().into_bytes();
    if edited != out[0].1 {
        // re-signed by the same key: a manifest that is wrong but genuinely signed
        let f = lab.path("out/manifest");
        std::fs::write(&f, &edited).unwrap();
        out[1].1 = pack::sign(&lab.path(key), &f, "test").unwrap();
        out[0].1 = edited;
    }
    out
}

/// Writes entries as a tar with raw names and types (what a hostile archive can hold).
fn write_raw(path: &Path, entries: &[(String, Vec<u8>, tar::EntryType)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data, kind) in entries {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(if *kind == tar::EntryType::Regular {
            data.len() as u64
        } else {
            0
        });
        h.set_mode(0o644);
        h.set_entry_type(*kind);
        if *kind == tar::EntryType::Symlink {
            h.set_link_name("/etc/shadow").unwrap();
        }
        h.set_cksum();
        let body: &[u8] = if *kind == tar::EntryType::Regular {
            data
        } else {
            &[]
        };
        b.append(&h, body).unwrap();
    }
    b.into_inner().unwrap();
}

fn regular(list: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>, tar::EntryType)> {
    list.into_iter()
        .map(|(n, d)| (n, d, tar::EntryType::Regular))
        .collect()
}

fn refusal(lab: &Lab, entries: Vec<(String, Vec<u8>, tar::EntryType)>, running: &str) -> String {
    let path = lab.path("out/bad.update");
    write_raw(&path, &entries);
    lab.resum(&path);
    lab.verify(&path, running).unwrap_err().to_string()
}

#[test]
fn a_good_archive_verifies_and_minisign_agrees() {
    let lab = Lab::new();
    let (archive, sum) = lab.pack("0.2.0", "release.key");
    let ok = lab.verify(&archive, "0.1.0").unwrap();
    assert_eq!(ok.manifest.version, "0.2.0");
    assert_eq!(ok.signed_by, "release.pub");
    assert_eq!(
        ok.manifest
            .parts
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        PARTS
    );
    // the operator's check by hand: sha256sum -c, and minisign -V on the manifest
    let out = Command::new("/usr/bin/sha256sum")
        .arg("-c")
        .arg(&sum)
        .current_dir(lab.path("out"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let e = entries(&lab, "0.2.0", "release.key", |_| {});
    std::fs::write(lab.path("out/manifest"), &e[0].1).unwrap();
    std::fs::write(lab.path("out/manifest.minisig"), &e[1].1).unwrap();
    let out = Command::new(MINISIGN)
        .args(["-V", "-p"])
        .arg(lab.path("keys/release.pub"))
        .arg("-m")
        .arg(lab.path("out/manifest"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the same inputs make the same bytes
    let first = std::fs::read(&archive).unwrap();
    let (again, _) = lab.pack("0.2.0", "release.key");
    let second = std::fs::read(&again).unwrap();
    assert_eq!(first, second);
}

#[test]
fn the_parts_are_written_out_only_when_everything_checks() {
    let lab = Lab::new();
    let (archive, sum) = lab.pack("0.2.0", "release.key");
    let parts = lab.path("parts");
    std::fs::create_dir_all(&parts).unwrap();
    let trusted = Trusted::load(&lab.path("keys")).unwrap();
    let check = Check {
        trusted: &trusted,
        running: Version::parse("0.1.0").unwrap(),
        allow_downgrade: false,
    };
    let checksum = std::fs::read_to_string(&sum).unwrap();
    verify::verify(&archive, &checksum, &check, Some(&parts)).unwrap();
    for p in PARTS {
        assert_eq!(
            std::fs::read(parts.join(p)).unwrap(),
            std::fs::read(lab.path(&format!("slot/{p}"))).unwrap(),
            "{p}"
        );
    }
    // a corrupt copy leaves nothing behind
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = bytes.len() - 2048; // inside the last part
    bytes[at] ^= 0xff;
    std::fs::write(&archive, bytes).unwrap();
    lab.resum(&archive);
    let checksum = std::fs::read_to_string(&sum).unwrap();
    assert!(verify::verify(&archive, &checksum, &check, Some(&parts)).is_err());
    assert_eq!(std::fs::read_dir(&parts).unwrap().count(), 0);
}

#[test]
fn a_checksum_that_does_not_match_is_refused_first() {
    let lab = Lab::new();
    let (archive, sum) = lab.pack("0.2.0", "release.key");
    std::fs::write(&sum, format!("{}  medlb-0.2.0.update\n", "0".repeat(64))).unwrap();
    let e = lab.verify(&archive, "0.1.0").unwrap_err().to_string();
    assert!(e.starts_with("checksum does not match"), "{e}");
    std::fs::write(&sum, "not a checksum\n").unwrap();
    let e = lab.verify(&archive, "0.1.0").unwrap_err().to_string();
    assert!(
        e.starts_with("the checksum file is not a sha256sum line"),
        "{e}"
    );
}

#[test]
fn a_truncated_archive_is_refused() {
    let lab = Lab::new();
    let (archive, _) = lab.pack("0.2.0", "release.key");
    let bytes = std::fs::read(&archive).unwrap();
    std::fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
    lab.resum(&archive);
    let e = lab.verify(&archive, "0.1.0").unwrap_err().to_string();
    assert!(e.starts_with("truncated: "), "{e}");
}

#[test]
fn one_corrupted_byte_in_a_part_is_found() {
    let lab = Lab::new();
    let mut e = entries(&lab, "0.2.0", "release.key", |_| {});
    e[3].1[1234] ^= 1; // initrd.img
    let e = refusal(&lab, regular(e), "0.1.0");
    assert_eq!(
        e,
        "initrd.img is corrupt: its SHA-256 is not the one the manifest was signed with"
    );
}

#[test]
fn an_unsigned_archive_is_refused() {
    let lab = Lab::new();
    let mut e = entries(&lab, "0.2.0", "release.key", |_| {});
    e.remove(1);
    assert!(refusal(&lab, regular(e), "0.1.0").starts_with("not signed"));
}

#[test]
fn an_archive_signed_with_another_key_is_refused() {
    let lab = Lab::new();
    let e = entries(&lab, "0.2.0", "other.key", |_| {});
    let e = refusal(&lab, regular(e), "0.1.0");
    assert_eq!(
        e,
        "signed by an unknown key: not by one of the 1 key(s) this appliance trusts"
    );
}

#[test]
fn a_manifest_edited_after_signing_is_refused() {
    let lab = Lab::new();
    let mut e = entries(&lab, "0.2.0", "release.key", |_| {});
    let text = String::from_utf8(e[0].1.clone())
        .unwrap()
        .replace("Faster failover.", "Faster failovers");
    e[0].1 = text.into_bytes();
    let e = refusal(&lab, regular(e), "0.1.0");
    assert_eq!(
        e,
        "signature does not match: the manifest was changed after it was signed"
    );
}

#[test]
fn an_archive_for_another_product_is_refused() {
    let lab = Lab::new();
    let e = entries(&lab, "0.2.0", "release.key", |m| {
        m.product = "otherlb".into()
    });
    let e = refusal(&lab, regular(e), "0.1.0");
    assert_eq!(
        e,
        "the archive is for otherlb, not for this appliance (medlb)"
    );
}

#[test]
fn an_older_or_the_same_version_is_refused_unless_allowed() {
    let lab = Lab::new();
    let (archive, _) = lab.pack("3.1.0", "release.key");
    let e = lab.verify(&archive, "3.2.0").unwrap_err().to_string();
    assert_eq!(e, "3.1.0 is older than the running 3.2.0");
    let e = lab
        .verify(&archive, "3.1.0 (development build)")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "3.1.0 is the version that runs already");
    let trusted = Trusted::load(&lab.path("keys")).unwrap();
    let check = Check {
        trusted: &trusted,
        running: Version::parse("3.2.0").unwrap(),
        allow_downgrade: true,
    };
    let checksum = std::fs::read_to_string(format!("{}.sha256", archive.display())).unwrap();
    assert!(verify::verify(&archive, &checksum, &check, None).is_ok());
}

#[test]
fn a_version_that_needs_a_newer_base_is_refused() {
    let lab = Lab::new();
    let e = entries(&lab, "0.9.0", "release.key", |m| {
        m.min_version = "0.5.0".into()
    });
    let e = refusal(&lab, regular(e), "0.4.2");
    assert_eq!(
        e,
        "0.9.0 can be installed only over 0.5.0 or newer; this appliance runs 0.4.2"
    );
}

#[test]
fn a_path_that_climbs_out_is_refused() {
    let lab = Lab::new();
    let mut e = entries(&lab, "0.2.0", "release.key", |_| {});
    e[2].0 = "../vmlinuz".into();
    let e = refusal(&lab, regular(e), "0.1.0");
    assert_eq!(
        e,
        "`../vmlinuz` is not a plain file name (an update holds no paths, `..` or absolute names)"
    );
}

#[test]
fn a_symbolic_link_is_refused() {
    let lab = Lab::new();
    let e = entries(&lab, "0.2.0", "release.key", |_| {});
    let mut raw = regular(e);
    raw[2].2 = tar::EntryType::Symlink;
    let e = refusal(&lab, raw, "0.1.0");
    assert_eq!(
        e,
        "vmlinuz is a symbolic link: an update holds only regular files"
    );
}

#[test]
fn an_oversized_part_is_refused_before_it_is_read() {
    let lab = Lab::new();
    let mut e = entries(&lab, "0.2.0", "release.key", |_| {});
    e[0].1 = vec![b'#'; (lbupdate::manifest::MAX_MANIFEST + 1) as usize];
    let e = refusal(&lab, regular(e), "0.1.0");
    assert!(
        e.starts_with("manifest is 65537 bytes, more than the 65536"),
        "{e}"
    );
}

#[test]
fn a_part_of_another_size_or_an_extra_entry_is_refused() {
    let lab = Lab::new();
    let mut e = entries(&lab, "0.2.0", "release.key", |_| {});
    e[2].1.push(0);
    let msg = refusal(&lab, regular(e), "0.1.0");
    assert_eq!(
        msg,
        "vmlinuz is 70001 bytes in the archive, the signed manifest says 70000"
    );
    let mut e = entries(&lab, "0.2.0", "release.key", |_| {});
    e.push(("run-me.sh".into(), b"#!/bin/sh".to_vec()));
    let msg = refusal(&lab, regular(e), "0.1.0");
    assert_eq!(msg, "the archive holds run-me.sh after its last part");
    let mut e = entries(&lab, "0.2.0", "release.key", |_| {});
    e.swap(2, 3);
    let msg = refusal(&lab, regular(e), "0.1.0");
    assert_eq!(
        msg,
        "the archive holds initrd.img where the manifest says vmlinuz comes"
    );
}
