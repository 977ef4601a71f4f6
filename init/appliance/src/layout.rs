//! The layout of the appliance's file systems, written down in one place.
//!
//! Everything the appliance keeps lives on the `/data` partition (ext4, label
//! [`DATA_LABEL`]); the root file system is an initramfs in RAM and nothing of it
//! survives a reboot. init, lbcore, lbctl, lbweb and the coming update agent and
//! firewall all find their files through this module (`init/README.md` describes the
//! same paths for programs that are not written in Rust); the model of each file is
//! in [`crate::files`].
//!
//! Paths are relative to a data root (`/data` on the appliance) and a run directory
//! (`/run`), so that tests can point them somewhere else.

use std::path::{Path, PathBuf};

/// File system label (and GPT partition name) of the data partition.
pub const DATA_LABEL: &str = "LBDATA";
/// Where the data partition is mounted on the appliance.
pub const DEFAULT_DATA_ROOT: &str = "/data";
/// The run directory (tmpfs) on the appliance.
pub const DEFAULT_RUN_DIR: &str = "/run";
/// The services file inside the image, relative to the root.
pub const SERVICES_FILE: &str = "etc/init/services.toml";
/// Hook run once all services are ready (marks the boot slot good), relative to the root.
pub const MARK_GOOD_HOOK: &str = "usr/lib/init/mark-good";
/// The fixed list of kernel modules to load at boot, relative to the root.
pub const MODULES_FILE: &str = "etc/init/modules";
/// The software version of the image, relative to the root (one line).
pub const VERSION_FILE: &str = "etc/version";
/// The public keys an update archive may be signed with, relative to the root.
pub const UPDATE_KEYS_DIR: &str = "etc/medlb/update-keys";
/// Port of the web UI, shown on the console's status screen.
pub const WEB_UI_PORT: u16 = 9443;
/// The operator's Drain/Halt settings, beside lbcore's configuration file.
pub const LBCORE_STATE_FILE: &str = "lbcore-state.json";
/// The IPVS services lbcore made, beside lbcore's configuration file.
pub const LBCORE_IPVS_FILE: &str = "lbcore-ipvs.json";
/// The web UI's certificate (PEM chain) in the TLS directory.
pub const TLS_CERT_FILE: &str = "cert.pem";
/// The web UI's private key (PEM, mode 0600) in the TLS directory.
pub const TLS_KEY_FILE: &str = "key.pem";

/// A file of lbcore's that lives beside its configuration file (lbcore can be told to
/// use another configuration path; its state follows it).
pub fn beside_lbcore_config(config: &Path, file: &str) -> PathBuf {
    config.with_file_name(file)
}

/// Paths below the data root and the run directory.
#[derive(Debug, Clone)]
pub struct Layout {
    data: PathBuf,
    run: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Self::new(DEFAULT_DATA_ROOT, DEFAULT_RUN_DIR)
    }
}

impl Layout {
    /// A layout with the given data root and run directory.
    pub fn new(data: impl Into<PathBuf>, run: impl Into<PathBuf>) -> Self {
        Self {
            data: data.into(),
            run: run.into(),
        }
    }

    /// The data root (`/data`).
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// The run directory (`/run`).
    pub fn run(&self) -> &Path {
        &self.run
    }

    /// Configuration directory: `/data/config`.
    pub fn config_dir(&self) -> PathBuf {
        self.data.join("config")
    }

    /// Network settings written by the wizard and the web UI: `/data/config/network.toml`.
    /// Its absence means "first boot": the console wizard runs.
    pub fn network_config(&self) -> PathBuf {
        self.config_dir().join("network.toml")
    }

    /// The admin account (argon2id PHC hash): `/data/config/admin.toml`.
    pub fn admin_config(&self) -> PathBuf {
        self.config_dir().join("admin.toml")
    }

    /// lbcore's configuration: `/data/config/lbcore.toml`.
    pub fn lbcore_config(&self) -> PathBuf {
        self.config_dir().join("lbcore.toml")
    }

    /// The operator's Drain/Halt settings: `/data/config/lbcore-state.json`.
    pub fn lbcore_state(&self) -> PathBuf {
        self.config_dir().join(LBCORE_STATE_FILE)
    }

    /// The IPVS services lbcore made: `/data/config/lbcore-ipvs.json`.
    pub fn lbcore_ipvs(&self) -> PathBuf {
        self.config_dir().join(LBCORE_IPVS_FILE)
    }

    /// Logs: `/data/log`.
    pub fn log_dir(&self) -> PathBuf {
        self.data.join("log")
    }

    /// init's own log, services' output included: `/data/log/init.log` (rotated by size
    /// to `init.log.1` ... `init.log.N`).
    pub fn init_log(&self) -> PathBuf {
        self.log_dir().join("init.log")
    }

    /// Staged update archives: `/data/updates`.
    pub fn updates_dir(&self) -> PathBuf {
        self.data.join("updates")
    }

    /// The firewall's lockdown and custom rules: `/data/config/firewall.toml`.
    pub fn firewall_settings(&self) -> PathBuf {
        self.config_dir().join("firewall.toml")
    }

    /// Where the appliance looks for updates online: `/data/config/update.toml`.
    pub fn update_settings(&self) -> PathBuf {
        self.config_dir().join("update.toml")
    }

    /// The update agent's state: `/data/updates/state.json`.
    pub fn update_state(&self) -> PathBuf {
        self.updates_dir().join("state.json")
    }

    /// An archive being received or staged: `/data/updates/incoming/`.
    pub fn update_incoming(&self) -> PathBuf {
        self.updates_dir().join("incoming")
    }

    /// Where an install keeps the verified parts and the slot's image: `/data/updates/work/`.
    pub fn update_work(&self) -> PathBuf {
        self.updates_dir().join("work")
    }

    /// TLS certificate and key of the web UI: `/data/tls`.
    pub fn tls_dir(&self) -> PathBuf {
        self.data.join("tls")
    }

    /// init's control socket: `/run/init.sock`.
    pub fn control_socket(&self) -> PathBuf {
        self.run.join("init.sock")
    }

    /// The update agent's control socket: `/run/update.sock`.
    pub fn update_socket(&self) -> PathBuf {
        self.run.join("update.sock")
    }

    /// lbcore's control socket (lbcore creates it): `/run/lbcore.sock`.
    pub fn lbcore_socket(&self) -> PathBuf {
        self.run.join("lbcore.sock")
    }

    /// Directories init creates on /data at boot.
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        vec![
            self.config_dir(),
            self.log_dir(),
            self.updates_dir(),
            self.tls_dir(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths() {
        let l = Layout::default();
        assert_eq!(l.network_config(), Path::new("/data/config/network.toml"));
        assert_eq!(l.admin_config(), Path::new("/data/config/admin.toml"));
        assert_eq!(l.lbcore_config(), Path::new("/data/config/lbcore.toml"));
        assert_eq!(
            l.lbcore_state(),
            Path::new("/data/config/lbcore-state.json")
        );
        assert_eq!(
            beside_lbcore_config(&l.lbcore_config(), LBCORE_IPVS_FILE),
            l.lbcore_ipvs()
        );
        assert_eq!(l.init_log(), Path::new("/data/log/init.log"));
        assert_eq!(l.updates_dir(), Path::new("/data/updates"));
        assert_eq!(l.tls_dir(), Path::new("/data/tls"));
        assert_eq!(l.control_socket(), Path::new("/run/init.sock"));
        assert_eq!(l.lbcore_socket(), Path::new("/run/lbcore.sock"));
    }

    #[test]
    fn relative_to_data_root() {
        let l = Layout::new("/tmp/x", "/tmp/r");
        assert_eq!(l.network_config(), Path::new("/tmp/x/config/network.toml"));
        assert_eq!(l.control_socket(), Path::new("/tmp/r/init.sock"));
    }
}
