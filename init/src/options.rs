//! How init is told where things are: flags and environment variables, so that the
//! same binary runs as the appliance's PID 1 and, in tests, as PID 1 of a namespace
//! with its root, data, run directory and consoles elsewhere.
//!
//! | flag | environment | default | meaning |
//! |---|---|---|---|
//! | `--root DIR` | `INIT_ROOT` | `/` | where `etc/init/services.toml`, `etc/init/modules`, `lib/modules`, `etc/resolv.conf`, `usr/lib/init/mark-good` are |
//! | `--data DIR` | `INIT_DATA` | (find partition `LBDATA`, mount at `/data`) | use this directory as the data root, no partition handling |
//! | `--run DIR` | `INIT_RUN` | `/run` | run directory (control socket) |
//! | `--console DEV` (repeatable, or comma list) | `INIT_CONSOLE` | the kernel's active consoles | consoles for the wizard and menu; `-` is stdin/stdout, `none` is no console |
//! | `--services FILE` | `INIT_SERVICES` | `ROOT/etc/init/services.toml` | the services file |
//! | `--no-mounts` | `INIT_NO_MOUNTS=1` | mounts on | skip mounting /proc, /sys, /dev, /run, /tmp |
//! | `--no-modules` | `INIT_NO_MODULES=1` | modules on | skip loading kernel modules |
//! | `--no-network` | `INIT_NO_NETWORK=1` | network on | do not touch the network |
//! | `--exit-on-shutdown` | `INIT_EXIT_ON_SHUTDOWN=1` | off | exit(0) at the end of shutdown instead of reboot(2) |
//! | `--log-stderr` | `INIT_LOG_STDERR=1` | off | copy every log line (services' too) to stderr |
//!
//! Unknown arguments are ignored: the kernel passes its unknown parameters to init.

use crate::layout::{DEFAULT_DATA_ROOT, DEFAULT_RUN_DIR, Layout, SERVICES_FILE};
use std::path::PathBuf;

/// Where things are and which boot duties run.
#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    pub data: Option<PathBuf>,
    pub run: PathBuf,
    pub consoles: Option<Vec<String>>,
    pub services: Option<PathBuf>,
    pub mounts: bool,
    pub modules: bool,
    pub network: bool,
    pub exit_on_shutdown: bool,
    pub log_stderr: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            root: PathBuf::from("/"),
            data: None,
            run: PathBuf::from(DEFAULT_RUN_DIR),
            consoles: None,
            services: None,
            mounts: true,
            modules: true,
            network: true,
            exit_on_shutdown: false,
            log_stderr: false,
        }
    }
}

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "yes" | "true" | "on")
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl Options {
    /// Read the environment, then the arguments (which win).
    pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Options {
        let mut o = Options::default();
        if let Some(v) = env("INIT_ROOT") {
            o.root = v.into();
        }
        if let Some(v) = env("INIT_DATA") {
            o.data = Some(v.into());
        }
        if let Some(v) = env("INIT_RUN") {
            o.run = v.into();
        }
        if let Some(v) = env("INIT_CONSOLE") {
            o.consoles = Some(split_list(&v));
        }
        if let Some(v) = env("INIT_SERVICES") {
            o.services = Some(v.into());
        }
        let flag = |k: &str| env(k).is_some_and(|v| truthy(&v));
        o.mounts = !flag("INIT_NO_MOUNTS");
        o.modules = !flag("INIT_NO_MODULES");
        o.network = !flag("INIT_NO_NETWORK");
        o.exit_on_shutdown = flag("INIT_EXIT_ON_SHUTDOWN");
        o.log_stderr = flag("INIT_LOG_STDERR");
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (key, inline) = match a.split_once('=') {
                Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            let mut value = || inline.clone().or_else(|| it.next().cloned());
            match key {
                "--root" => o.root = value().unwrap_or_default().into(),
                "--data" => o.data = value().map(PathBuf::from),
                "--run" => o.run = value().unwrap_or_default().into(),
                "--console" => {
                    let list = o.consoles.get_or_insert_with(Vec::new);
                    list.extend(split_list(&value().unwrap_or_default()));
                }
                "--services" => o.services = value().map(PathBuf::from),
                "--no-mounts" => o.mounts = false,
                "--no-modules" => o.modules = false,
                "--no-network" => o.network = false,
                "--exit-on-shutdown" => o.exit_on_shutdown = true,
                "--log-stderr" => o.log_stderr = true,
                _ => {}
            }
        }
        if let Some(c) = &mut o.consoles {
            c.retain(|n| n != "none");
        }
        o
    }

    /// The data root.
    pub fn data_root(&self) -> PathBuf {
        self.data
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_ROOT))
    }

    /// The layout for these options.
    pub fn layout(&self) -> Layout {
        Layout::new(self.data_root(), self.run.clone())
    }

    /// The services file.
    pub fn services_file(&self) -> PathBuf {
        self.services
            .clone()
            .unwrap_or_else(|| self.root.join(SERVICES_FILE))
    }

    /// A path inside the root.
    pub fn in_root(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_env() {
        let args: Vec<String> = ["--data", "/tmp/d", "--console=-", "quiet", "--no-mounts"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = Options::parse(&args, |k| match k {
            "INIT_DATA" => Some("/env/d".into()),
            "INIT_RUN" => Some("/tmp/r".into()),
            "INIT_EXIT_ON_SHUTDOWN" => Some("1".into()),
            _ => None,
        });
        assert_eq!(o.data_root(), PathBuf::from("/tmp/d"));
        assert_eq!(o.run, PathBuf::from("/tmp/r"));
        assert_eq!(o.consoles, Some(vec!["-".to_string()]));
        assert!(!o.mounts && o.modules && o.exit_on_shutdown);
        assert_eq!(o.services_file(), PathBuf::from("/etc/init/services.toml"));
    }

    #[test]
    fn no_console() {
        let o = Options::parse(&["--console".into(), "none".into()], |_| None);
        assert_eq!(o.consoles, Some(vec![]));
    }
}
