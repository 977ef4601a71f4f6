//! Every file on /data is read by older and newer versions alike (docs/compatibility.md).
//!
//! `fixtures/format-N/` holds each file as version N of its format writes it: this
//! version must read every one of them, for as long as the product exists. When a format
//! changes, add `format-N+1/` beside the others; never edit a directory that exists.
//! `fixtures/future/` holds files as a newer version might write them (a higher format,
//! keys this version does not know): this version reads them, warns, and keeps what it
//! does not understand when it rewrites them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use appliance::files::admin::{self, AdminFile};
use appliance::files::ipvs_owned::{self, OwnedService};
use appliance::files::lbcore::{self as config, Layer};
use appliance::files::network::NetworkConfig;
use appliance::files::operator_state::{AdminState, OperatorStates};

fn fixture(dir: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
        .join(name)
}

/// The format directories, oldest first.
fn formats() -> Vec<String> {
    let mut dirs: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("format-"))
            .collect();
    dirs.sort();
    assert!(dirs.len() >= 2, "{dirs:?}");
    dirs
}

/// A copy of a fixture in a temporary directory, for the tests that rewrite it.
fn copy(dir: &str, name: &str) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join(name);
    std::fs::copy(fixture(dir, name), &p).unwrap();
    (t, p)
}

#[test]
fn every_format_of_network_toml_is_read() {
    for f in formats() {
        let (cfg, warnings) = NetworkConfig::load(&fixture(&f, "network.toml")).unwrap();
        assert!(warnings.is_empty(), "{f}: {warnings:?}");
        assert_eq!(cfg.hostname.as_deref(), Some("lb1"), "{f}");
        assert_eq!(cfg.interfaces.len(), 3, "{f}");
        assert_eq!(cfg.interfaces[0].addresses[0].to_string(), "192.0.2.10/24");
        assert_eq!(cfg.interfaces[1].vlan_id, Some(20));
        assert_eq!(cfg.routes[0].metric, Some(10));
    }
}

#[test]
fn every_format_of_admin_toml_is_read_and_its_password_checks() {
    for f in formats() {
        let (account, warnings) = AdminFile::load(&fixture(&f, "admin.toml")).unwrap();
        assert!(warnings.is_empty(), "{f}: {warnings:?}");
        assert_eq!(account.user, "admin");
        assert_eq!(
            admin::verify_password("fixture password", &account.password_hash),
            Ok(true)
        );
    }
}

#[test]
fn every_format_of_lbcore_toml_is_read_as_stored_and_as_submitted() {
    for f in formats() {
        let path = fixture(&f, "lbcore.toml");
        let (c, warnings) = config::load(&path).unwrap();
        assert!(warnings.is_empty(), "{f}: {warnings:?}");
        assert_eq!(c.services.len(), 2, "{f}");
        assert!(matches!(
            c.service("DS_DICOM").unwrap().layer,
            Layer::Four { .. }
        ));
        // a configuration of an older version can still be submitted (restored from a backup)
        config::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    }
}

#[test]
fn every_format_of_the_operator_states_is_read() {
    for f in formats() {
        let (s, warnings) = OperatorStates::load(&fixture(&f, "lbcore-state.json"));
        assert!(warnings.is_empty(), "{f}: {warnings:?}");
        assert_eq!(s.get("DS_DICOM", "DS2"), Some(AdminState::Drain), "{f}");
        assert_eq!(s.get("HL7", "IMS1"), Some(AdminState::Halt), "{f}");
        assert_eq!(s.get("DS_DICOM", "DS1"), None, "{f}");
    }
}

#[test]
fn every_format_of_the_owned_ipvs_services_is_read() {
    let want = BTreeSet::from([OwnedService {
        protocol: 6,
        address: "172.26.11.70".parse().unwrap(),
        port: 104,
    }]);
    for f in formats() {
        assert_eq!(
            ipvs_owned::load(&fixture(&f, "lbcore-ipvs.json")),
            (want.clone(), vec![]),
            "{f}"
        );
    }
}

/// The keys of a newer version that each file's warnings name (`at`, without the line).
fn places(warnings: &[appliance::files::Warning]) -> Vec<String> {
    let mut v: Vec<String> = warnings
        .iter()
        .map(|w| w.at.split(" (line").next().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn a_future_network_toml_is_read_with_warnings_and_rewritten_with_its_keys() {
    let (_t, path) = copy("future", "network.toml");
    let (cfg, warnings) = NetworkConfig::load(&path).unwrap();
    assert_eq!(
        places(&warnings),
        [
            "",
            "interface[0].ipv6",
            "interface[0].lldp",
            "ntp",
            "proxy",
            "route[0].table",
            "timezone"
        ]
    );
    assert_eq!(
        cfg.interfaces[0].gateway,
        Some("192.0.2.1".parse().unwrap())
    );
    std::fs::write(&path, cfg.to_toml()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    for kept in ["ntp", "timezone", "ipv6", "lldp", "table", "[proxy]"] {
        assert!(text.contains(kept), "{kept} lost:\n{text}");
    }
    let (again, _) = NetworkConfig::load(&path).unwrap();
    assert_eq!(again.unknown, cfg.unknown);
}

#[test]
fn a_future_admin_toml_is_read_and_a_password_reset_keeps_its_keys() {
    let (_t, path) = copy("future", "admin.toml");
    let (_, warnings) = AdminFile::load(&path).unwrap();
    assert_eq!(
        places(&warnings),
        ["", "account", "password_changed", "role"]
    );
    admin::save(&path, "a new password").unwrap();
    let (account, _) = AdminFile::load(&path).unwrap();
    assert_eq!(
        admin::verify_password("a new password", &account.password_hash),
        Ok(true)
    );
    assert_eq!(account.unknown["role"].as_str(), Some("administrator"));
    assert!(account.unknown["account"].is_array());
}

#[test]
fn a_future_lbcore_toml_starts_with_warnings_but_is_refused_when_submitted() {
    let path = fixture("future", "lbcore.toml");
    let (c, warnings) = config::load(&path).unwrap();
    assert_eq!(c.services.len(), 2);
    assert_eq!(
        places(&warnings),
        [
            "",
            "mode_defaults",
            "service 1 (\"DS_DICOM\"), real server \"DS1\": ae_titles",
            "service 1 (\"DS_DICOM\"), real server \"DS1\": drain_timeout",
            "service 1 (\"DS_DICOM\"): sync",
            "service 2 (\"HL7\"): count",
        ]
    );
    assert!(
        warnings
            .iter()
            .all(|w| w.file == path.display().to_string())
    );
    let e = config::parse(&std::fs::read_to_string(&path).unwrap()).unwrap_err();
    assert!(
        e.to_string().contains("unknown field `mode_defaults`"),
        "{e}"
    );
}

#[test]
fn a_future_state_file_is_read_and_rewritten_with_what_it_does_not_know() {
    let (_t, path) = copy("future", "lbcore-state.json");
    let (mut s, warnings) = OperatorStates::load(&path);
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert_eq!(
        s.get("DS_DICOM", "DS1"),
        Some(AdminState::Drain),
        "an unknown state is read as drain"
    );
    s.set("HL7", "IMS1", AdminState::Online).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["servers"]["DS_DICOM"]["DS1"], "maintenance");
    assert_eq!(v["since"]["DS_DICOM/DS2"], 1767225600);
    assert!(v["servers"].get("HL7").is_none());
}

#[test]
fn a_future_ipvs_file_is_read_and_rewritten_with_what_it_does_not_know() {
    let (_t, path) = copy("future", "lbcore-ipvs.json");
    let (owned, warnings) = ipvs_owned::load(&path);
    assert_eq!(owned.len(), 1);
    assert_eq!(places(&warnings), ["", "sync_daemon"]);
    ipvs_owned::save(&path, &owned).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["sync_daemon"]["state"], "master");
    assert_eq!(v["format"], ipvs_owned::FORMAT);
}

/// What this version writes is what its format directory holds, read back the same: a
/// change of a writer that the fixtures do not follow is a format change.
#[test]
fn what_this_version_writes_reads_back_as_the_newest_fixture() {
    let newest = formats().pop().unwrap();
    let (cfg, _) = NetworkConfig::load(&fixture(&newest, "network.toml")).unwrap();
    let (again, w) = NetworkConfig::parse(
        &cfg.to_toml(),
        "rewritten",
        appliance::files::Strictness::Submitted,
    )
    .unwrap();
    assert!(w.is_empty());
    assert_eq!(again, cfg);
    assert_eq!(
        format!("format-{}", appliance::files::network::FORMAT),
        newest,
        "the newest fixture directory is this version's format"
    );
}

#[test]
fn the_update_agent_s_files_are_read_in_every_format_and_from_a_newer_version() {
    use appliance::files::update_settings::UpdateSettings;
    use appliance::files::update_state::{Outcome, Step, UpdateState};
    let newest = formats().pop().unwrap();
    let (s, w) = UpdateState::load(&fixture(&newest, "update-state.json"));
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        (s.step, s.target.unwrap().slot.as_str()),
        (Step::Installed, "b")
    );
    let (s, w) = UpdateState::load(&fixture("future", "update-state.json"));
    assert_eq!(s.step, Step::Installed);
    assert_eq!(s.last.as_ref().map(|l| l.outcome), Some(Outcome::Installed));
    assert_eq!(places(&w), ["", "download"], "{w:?}");
    let (u, w) = UpdateSettings::load(&fixture(&newest, "update.toml")).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(u.interval_hours, 24);
    let (u, w) = UpdateSettings::load(&fixture("future", "update.toml")).unwrap();
    assert!(!u.check);
    assert_eq!(places(&w), ["", "channel", "window"], "{w:?}");
}
