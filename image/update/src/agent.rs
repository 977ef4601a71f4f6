//! The update agent (`lbupdate serve`), a service of init: receives archives, verifies
//! and installs them, and tells where an update is. Its state (appliance's
//! `files::update_state`) is written at every step, so that after a crash or a power
//! cut the agent, on either slot, finishes or cleans up ([`reconcile`]):
//!
//! | step found at start | what it means | what the agent does |
//! |---|---|---|
//! | receiving, received | an upload was under way | removes it; "interrupted, nothing changed" |
//! | installing, the boot loader not flipped | the slot was being written | the slot is never booted; "interrupted, nothing changed" |
//! | installing, flipped | power cut after the flip | installed |
//! | installed, running the old slot, new slot on trial | waiting for the reboot | reboot required |
//! | installed, running the new slot | the new system is up | confirmed once the slot is marked good |
//! | installed, running the old slot, trial over | the new system did not come up | "update to X did not come up; rolled back to Y" |
//!
//! One update at a time: a second request while one is under way (or installed and
//! waiting for its reboot) is refused as busy.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use ring::digest::{Context, SHA256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{error, info, warn};

use crate::install::{self, Disk, Step as InstallStep, Tools};
use crate::manifest::{PARTS, hex};
use crate::online::{self, Fetcher};
use crate::protocol::{
    Answer, Available, Checked, Installed, Progress, RefusalKind, Refused, Reply, Request, Running,
    Settings, Staged, UpdateStatus,
};
use crate::slots;
use crate::verify::{self, Check, Trusted};
use crate::version::Version;
use appliance::files::update_settings::UpdateSettings;
use appliance::files::update_state::{LastResult, Outcome, Step, Target, UpdateState};
use appliance::layout::Layout;

/// The largest archive accepted (a slot is 128 MiB; an archive holds one slot).
pub const MAX_ARCHIVE: u64 = 256 << 20;
/// How often the agent looks whether the new slot was marked good.
const CONFIRM_POLL: Duration = Duration::from_secs(2);

/// Where the agent finds things.
#[derive(Debug, Clone)]
pub struct Options {
    pub layout: Layout,
    /// The root of the running system (`/`): /etc/version, the trusted keys.
    pub root: PathBuf,
    /// The disk with the slots; `None`: this system's (through sysfs).
    pub disk: Option<PathBuf>,
    /// The kernel command line (names the booted slot).
    pub cmdline: PathBuf,
    pub tools: Tools,
}

/// The boot loader's environment, as bootenv shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootEnv {
    pub boot_slot: String,
    pub good_slot: String,
    pub boot_tries: String,
}

impl BootEnv {
    /// Parses `bootenv show` (`KEY=VALUE` lines).
    pub fn parse(text: &str) -> BootEnv {
        let mut e = BootEnv::default();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                match k.trim() {
                    k if k == slots::BOOT_SLOT => e.boot_slot = v.trim().into(),
                    k if k == slots::GOOD_SLOT => e.good_slot = v.trim().into(),
                    k if k == slots::BOOT_TRIES => e.boot_tries = v.trim().into(),
                    _ => {}
                }
            }
        }
        e
    }

    /// `target` is on trial (it boots next, with tries left).
    fn on_trial(&self, target: &str) -> bool {
        self.boot_slot == target && !self.boot_tries.is_empty()
    }

    /// `slot` is the good one and no trial is under way.
    fn good(&self, slot: &str) -> bool {
        self.good_slot == slot && self.boot_tries.is_empty()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn result(outcome: Outcome, message: String) -> Option<LastResult> {
    Some(LastResult {
        outcome,
        message,
        at: now(),
        unknown: Default::default(),
    })
}

/// What the state found at start means, given the booted slot and the boot loader's
/// environment: the state to continue from. Pure, so that every row of the module's
/// table is tested.
pub fn reconcile(found: &UpdateState, booted: Option<&str>, env: &BootEnv) -> UpdateState {
    let mut s = found.clone();
    match found.step {
        Step::Idle => {}
        Step::Receiving | Step::Received => {
            s.step = Step::Idle;
            s.target = None;
            s.last = result(
                Outcome::Interrupted,
                "the appliance restarted before the update was installed; nothing changed: upload it again".into(),
            );
        }
        Step::Installing => match &found.target {
            Some(t) if env.on_trial(&t.slot) => {
                s.step = Step::Installed;
                s.last = result(Outcome::Installed, installed_message(t));
            }
            Some(t) => {
                s.step = Step::Idle;
                s.target = None;
                s.last = result(
                    Outcome::Interrupted,
                    format!(
                        "installing {} into slot {} was interrupted; the running system is unchanged and slot {} is not used",
                        t.version, t.slot, t.slot
                    ),
                );
            }
            None => {
                s.step = Step::Idle;
                s.last = result(
                    Outcome::Interrupted,
                    "an install was interrupted; the running system is unchanged".into(),
                );
            }
        },
        Step::Installed => {
            let Some(t) = &found.target else {
                s.step = Step::Idle;
                return s;
            };
            if booted == Some(t.slot.as_str()) {
                if env.good(&t.slot) {
                    s.step = Step::Idle;
                    s.target = None;
                    s.last = result(
                        Outcome::Confirmed,
                        format!(
                            "updated from {} to {}; slot {} is marked good",
                            t.from_version, t.version, t.slot
                        ),
                    );
                }
                // else: the new system is coming up; confirmed once marked good
            } else if !env.on_trial(&t.slot) {
                s.step = Step::Idle;
                s.target = None;
                s.last = result(
                    Outcome::RolledBack,
                    format!(
                        "the update to {} did not come up; rolled back to {} (slot {})",
                        t.version, t.from_version, t.from_slot
                    ),
                );
            }
        }
    }
    s
}

fn installed_message(t: &Target) -> String {
    format!(
        "{} is installed into slot {}: restart the appliance to use it (if it does not come up, the appliance returns to {} by itself)",
        t.version, t.slot, t.from_version
    )
}

struct Inner {
    state: UpdateState,
    progress: Option<Progress>,
    staged: Option<Staged>,
    checksum: Option<String>,
    /// A request is being carried out.
    busy: bool,
    /// What the update server offered at the last look, with where to get it.
    available: Option<(Available, String, String)>,
    checked: Option<Checked>,
}

/// The running agent.
pub struct Agent {
    opts: Options,
    running: Running,
    inner: Mutex<Inner>,
}

impl Agent {
    /// Reads the state and settles what a restart interrupted.
    pub fn start(opts: Options) -> anyhow::Result<Arc<Agent>> {
        let running = running(&opts);
        std::fs::create_dir_all(opts.layout.updates_dir())
            .with_context(|| format!("cannot create {}", opts.layout.updates_dir().display()))?;
        let (found, warnings) = UpdateState::load(&opts.layout.update_state());
        for w in warnings {
            warn!("{w}");
        }
        let env = boot_env(&opts).unwrap_or_else(|e| {
            warn!("cannot read the boot loader's environment: {e}");
            BootEnv::default()
        });
        let state = reconcile(&found, running.slot.as_deref(), &env);
        if state != found {
            if let Some(last) = &state.last {
                info!("{}", last.message);
            }
            if let Err(e) = state.save(&opts.layout.update_state()) {
                error!("{e}");
            }
        }
        // nothing staged survives a restart: a partial upload must never be trusted
        for dir in [opts.layout.update_incoming(), opts.layout.update_work()] {
            let _ = std::fs::remove_dir_all(&dir);
        }
        info!(
            version = %running.version,
            slot = running.slot.as_deref().unwrap_or("?"),
            "update agent started"
        );
        Ok(Arc::new(Agent {
            opts,
            running,
            inner: Mutex::new(Inner {
                state,
                progress: None,
                staged: None,
                checksum: None,
                busy: false,
                available: None,
                checked: None,
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> UpdateStatus {
        let i = self.lock();
        UpdateStatus {
            running: self.running.clone(),
            step: i.state.step,
            progress: i.progress.clone(),
            staged: i.staged.clone(),
            target: i.state.target.clone(),
            reboot_required: i.state.step == Step::Installed
                && i.state.target.as_ref().map(|t| Some(t.slot.as_str()))
                    != Some(self.running.slot.as_deref()),
            last: i.state.last.clone(),
            available: i.available.as_ref().map(|(a, _, _)| a.clone()),
            checked: i.checked.clone(),
        }
    }

    /// Saves a new state (a failure to write /data is logged: the agent carries on).
    fn set_state(&self, i: &mut Inner, s: UpdateState) {
        if let Err(e) = s.save(&self.opts.layout.update_state()) {
            error!("{e}");
        }
        i.state = s;
    }

    /// Why a request that changes something must wait: another one is under way, or an
    /// installed update waits for its reboot (nothing may be staged over it).
    fn occupied(i: &Inner) -> Result<(), Refused> {
        if i.busy {
            return Err(Refused::new(
                RefusalKind::Busy,
                "another update request is under way",
            ));
        }
        if i.state.step == Step::Installed {
            let v = i
                .state
                .target
                .as_ref()
                .map_or("an update".to_string(), |t| t.version.clone());
            return Err(Refused::new(
                RefusalKind::Busy,
                format!("{v} is installed and waits for a restart of the appliance"),
            ));
        }
        Ok(())
    }

    /// Takes the agent for one request that changes something.
    fn begin(&self) -> Result<(), Refused> {
        let mut i = self.lock();
        Self::occupied(&i)?;
        i.busy = true;
        Ok(())
    }

    fn end(&self) {
        let mut i = self.lock();
        i.busy = false;
        i.progress = None;
    }

    fn progress(&self, stage: &str, done: u64, total: u64) {
        self.lock().progress = Some(Progress {
            stage: stage.into(),
            done,
            total,
            rate: None,
        });
    }

    fn checksum(&self, text: String) -> Result<Answer, Refused> {
        if text.len() > 4096 {
            return Err(Refused::new(
                RefusalKind::Invalid,
                "a checksum file is one line",
            ));
        }
        verify::checksum_of(&text, "").or_else(|e| {
            // a file with several lines names the archive: checked at install
            if text.lines().filter(|l| !l.trim().is_empty()).count() > 1 {
                Ok(String::new())
            } else {
                Err(Refused::new(RefusalKind::Invalid, e.to_string()))
            }
        })?;
        let mut i = self.lock();
        Self::occupied(&i)?;
        i.checksum = Some(text);
        let staged = i.staged.clone().unwrap_or(Staged {
            name: String::new(),
            size: 0,
            checksum: true,
        });
        if let Some(s) = i.staged.as_mut() {
            s.checksum = true;
        }
        Ok(Answer::ChecksumTaken(Staged {
            checksum: true,
            ..staged
        }))
    }

    fn discard(&self) -> Result<Answer, Refused> {
        self.begin()?;
        {
            let mut i = self.lock();
            i.staged = None;
            i.checksum = None;
            let s = UpdateState {
                step: Step::Idle,
                target: None,
                ..i.state.clone()
            };
            self.set_state(&mut i, s);
        }
        let _ = std::fs::remove_dir_all(self.opts.layout.update_incoming());
        self.end();
        Ok(Answer::Discarded)
    }

    /// Verifies what is staged and installs it (blocking; run off the async threads).
    fn install(&self, allow_downgrade: bool) -> Result<Answer, Refused> {
        let (staged, checksum) = {
            let i = self.lock();
            match (&i.staged, &i.checksum) {
                (Some(s), Some(c)) if s.size > 0 => (s.clone(), c.clone()),
                (None, _) | (Some(_), _) if i.staged.as_ref().is_none_or(|s| s.size == 0) => {
                    return Err(Refused::new(
                        RefusalKind::Invalid,
                        "no archive is staged: upload the archive first",
                    ));
                }
                _ => {
                    return Err(Refused::new(
                        RefusalKind::Invalid,
                        "no checksum file is staged: upload the archive's .sha256 file too",
                    ));
                }
            }
        };
        self.begin()?;
        let r = self.install_staged(&staged, &checksum, allow_downgrade);
        {
            let mut i = self.lock();
            i.staged = None;
            i.checksum = None;
        }
        let _ = std::fs::remove_dir_all(self.opts.layout.update_incoming());
        let _ = std::fs::remove_dir_all(self.opts.layout.update_work());
        self.end();
        r
    }

    fn install_staged(
        &self,
        staged: &Staged,
        checksum: &str,
        allow_downgrade: bool,
    ) -> Result<Answer, Refused> {
        let archive = self.opts.layout.update_incoming().join(&staged.name);
        let trusted = Trusted::load(&self.opts.root.join(appliance::layout::UPDATE_KEYS_DIR))
            .map_err(|e| self.failed(Outcome::Failed, RefusalKind::Failed, e.to_string()))?;
        let running = Version::parse(&self.running.version)
            .map_err(|e| self.failed(Outcome::Failed, RefusalKind::Failed, e.to_string()))?;
        let check = Check {
            trusted: &trusted,
            running,
            allow_downgrade,
        };
        let parts = self.opts.layout.update_work().join("parts");
        let _ = std::fs::remove_dir_all(&parts);
        std::fs::create_dir_all(&parts).map_err(|e| {
            self.failed(
                Outcome::Failed,
                RefusalKind::Failed,
                format!("cannot create {}: {e}", parts.display()),
            )
        })?;
        self.progress("verifying", 0, staged.size);
        if allow_downgrade {
            warn!("install with allow_downgrade: an older version may be installed");
        }
        let verified = verify::verify(&archive, checksum, &check, Some(&parts)).map_err(|e| {
            let (outcome, kind) = if e.is_archive_fault() {
                (Outcome::Refused, RefusalKind::BadArchive)
            } else {
                (Outcome::Failed, RefusalKind::Failed)
            };
            self.failed(outcome, kind, e.to_string())
        })?;
        let m = &verified.manifest;
        info!(version = %m.version, signed_by = %verified.signed_by, "archive verified");

        let from_slot = self.running.slot.clone().unwrap_or_else(|| "a".into());
        let slot = slots::other(&from_slot).unwrap_or("b").to_string();
        let target = Target {
            version: m.version.clone(),
            slot: slot.clone(),
            from_version: self.running.version.clone(),
            from_slot: from_slot.clone(),
            unknown: Default::default(),
        };
        {
            let mut i = self.lock();
            let s = UpdateState {
                step: Step::Installing,
                target: Some(target.clone()),
                ..i.state.clone()
            };
            self.set_state(&mut i, s);
        }
        let disk = match &self.opts.disk {
            Some(d) => Disk::at(d),
            None => Disk::of_this_system(Path::new("/sys/class/block"), Path::new("/dev"))
                .map_err(|e| self.failed(Outcome::Failed, RefusalKind::Failed, e.to_string()))?,
        };
        let done = install::install(
            &disk,
            &slot,
            &parts,
            &self.opts.layout.update_work(),
            &self.opts.tools,
            slots::UPDATE_TRIES,
            |step| match step {
                InstallStep::Building => self.progress("building", 0, 0),
                InstallStep::Writing { done, total } => self.progress("writing", done, total),
                InstallStep::Checking => self.progress("checking", 0, 0),
                InstallStep::Flipping => self.progress("flipping", 0, 0),
            },
        )
        .map_err(|e| self.failed(Outcome::Failed, RefusalKind::Failed, e.to_string()))?;
        let message = installed_message(&target);
        info!(bytes = done.bytes_written, "{message}");
        let mut i = self.lock();
        let s = UpdateState {
            step: Step::Installed,
            target: Some(target.clone()),
            last: result(Outcome::Installed, message.clone()),
            ..i.state.clone()
        };
        self.set_state(&mut i, s);
        Ok(Answer::Installed(Installed {
            version: target.version,
            slot,
            notes: m.notes.clone(),
            message,
        }))
    }

    /// Records a refusal or failure as the last result (nothing else changed).
    fn failed(&self, outcome: Outcome, kind: RefusalKind, reason: String) -> Refused {
        warn!("update refused: {reason}");
        let mut i = self.lock();
        let s = UpdateState {
            step: Step::Idle,
            target: None,
            last: result(outcome, reason.clone()),
            ..i.state.clone()
        };
        self.set_state(&mut i, s);
        Refused::new(kind, reason)
    }

    fn settings_file(&self) -> Result<UpdateSettings, Refused> {
        UpdateSettings::load(&self.opts.layout.update_settings())
            .map(|(s, warnings)| {
                for w in warnings {
                    warn!("{w}");
                }
                s
            })
            .map_err(|e| Refused::new(RefusalKind::Failed, e.to_string()))
    }

    /// The settings as shown: a proxy password masked.
    pub fn settings(&self) -> Result<Settings, Refused> {
        let s = self.settings_file()?;
        Ok(Settings {
            url: s.url,
            check: s.check,
            interval_hours: s.interval_hours,
            ca_file: s.ca_file,
            proxy: s.proxy.map(|p| mask_password(&p)),
        })
    }

    /// Takes new settings (a masked proxy password keeps the stored one).
    pub fn set_settings(&self, new: Settings) -> Result<Answer, Refused> {
        let mut file = self.settings_file()?;
        let proxy = match (new.proxy, &file.proxy) {
            (Some(p), Some(old)) if p == mask_password(old) => Some(old.clone()),
            (p, _) => p,
        };
        file.url = new.url;
        file.check = new.check;
        file.interval_hours = new.interval_hours;
        file.ca_file = new.ca_file;
        file.proxy = proxy;
        file.validate()
            .map_err(|e| Refused::new(RefusalKind::Invalid, e.to_string()))?;
        file.save(&self.opts.layout.update_settings())
            .map_err(|e| Refused::new(RefusalKind::Failed, e.to_string()))?;
        info!(
            "update settings changed: server {}",
            file.url.as_deref().unwrap_or("none")
        );
        self.settings().map(Answer::Settings)
    }

    /// Asks the update server what it offers.
    pub async fn check(&self) -> Result<Answer, Refused> {
        let settings = self.settings_file()?;
        let Some(url) = settings.url.clone() else {
            return Err(Refused::new(
                RefusalKind::Invalid,
                "no update server is set: PUT the url into the update settings first",
            ));
        };
        let result = async {
            let fetcher = Fetcher::new(&settings)?;
            fetcher.index(&url).await
        }
        .await;
        let running = Version::parse(&self.running.version).ok();
        let (checked, found) = match result {
            Ok(index) => match running.and_then(|r| online::newest(&index, r)) {
                Some(r) => {
                    let a = Available {
                        version: r.version.clone(),
                        notes: r.notes.clone(),
                        size: r.size,
                    };
                    (
                        Checked {
                            at: now(),
                            message: format!("Update {} is available", r.version),
                            available: Some(a.clone()),
                        },
                        Some((
                            a,
                            online::resolve(&url, &r.archive),
                            online::resolve(&url, &r.checksum),
                        )),
                    )
                }
                None => (
                    Checked {
                        at: now(),
                        message: format!("{} is up to date", self.running.version),
                        available: None,
                    },
                    None,
                ),
            },
            Err(e) => (
                Checked {
                    at: now(),
                    message: format!("cannot ask the update server: {e}"),
                    available: None,
                },
                None,
            ),
        };
        info!("{}", checked.message);
        let mut i = self.lock();
        i.available = found;
        i.checked = Some(checked.clone());
        Ok(Answer::Checked(checked))
    }

    /// Downloads the available version and its checksum file, and stages them.
    pub async fn download(self: &Arc<Self>) -> Result<Answer, Refused> {
        let Some((available, archive_url, checksum_url)) = self.lock().available.clone() else {
            return Err(Refused::new(
                RefusalKind::Invalid,
                "no update is available: check the update server first",
            ));
        };
        self.begin()?;
        let r = self
            .download_into(&available, &archive_url, &checksum_url)
            .await;
        {
            let mut i = self.lock();
            let s = UpdateState {
                step: if r.is_ok() {
                    Step::Received
                } else {
                    Step::Idle
                },
                ..i.state.clone()
            };
            if let Err(e) = &r {
                i.staged = None;
                i.checksum = None;
                let s = UpdateState {
                    last: result(
                        Outcome::Failed,
                        format!("the download of {} failed: {e}", available.version),
                    ),
                    ..s
                };
                self.set_state(&mut i, s);
            } else {
                self.set_state(&mut i, s);
            }
        }
        self.end();
        r.map(Answer::Received)
    }

    async fn download_into(
        self: &Arc<Self>,
        available: &Available,
        archive_url: &str,
        checksum_url: &str,
    ) -> Result<Staged, Refused> {
        let fail = |e: String| Refused::new(RefusalKind::Failed, e);
        let settings = self.settings_file()?;
        let fetcher = Fetcher::new(&settings).map_err(|e| fail(e.to_string()))?;
        let name = archive_url
            .rsplit('/')
            .next()
            .unwrap_or("update")
            .to_string();
        check_name(&name)?;
        let dir = self.opts.layout.update_incoming();
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        {
            let mut i = self.lock();
            i.staged = None;
            i.checksum = None;
            let s = UpdateState {
                step: Step::Receiving,
                ..i.state.clone()
            };
            self.set_state(&mut i, s);
        }
        let part = dir.join(format!(".{name}.part"));
        let me = self.clone();
        let size = online::download(&fetcher, archive_url, &part, MAX_ARCHIVE, move |t| {
            me.lock().progress = Some(Progress {
                stage: "downloading".into(),
                done: t.done,
                total: t.total,
                rate: Some(t.rate),
            });
        })
        .await
        .map_err(|e| fail(e.to_string()))?;
        let checksum = fetcher
            .text(checksum_url, 4096)
            .await
            .map_err(|e| fail(format!("the checksum file: {e}")))?;
        let archive = dir.join(&name);
        tokio::fs::rename(&part, &archive)
            .await
            .map_err(|e| fail(format!("cannot write {}: {e}", archive.display())))?;
        info!(version = %available.version, size, "update downloaded");
        let staged = Staged {
            name,
            size,
            checksum: true,
        };
        let mut i = self.lock();
        i.staged = Some(staged.clone());
        i.checksum = Some(checksum);
        Ok(staged)
    }

    /// Looks at the update server every `interval_hours`, while the settings ask for it.
    async fn check_periodically(self: Arc<Self>) {
        loop {
            let hours = match self.settings_file() {
                Ok(s) if s.check && s.url.is_some() => {
                    let _ = self.check().await;
                    s.interval_hours
                }
                Ok(s) => s.interval_hours,
                Err(_) => appliance::files::update_settings::DEFAULT_INTERVAL_HOURS,
            };
            tokio::time::sleep(Duration::from_secs(u64::from(hours) * 3600)).await;
        }
    }

    /// While the new slot is on its trial boot, watches for its good mark.
    async fn confirm(self: Arc<Self>) {
        loop {
            let pending = {
                let i = self.lock();
                i.state.step == Step::Installed
                    && i.state.target.as_ref().map(|t| t.slot.as_str())
                        == self.running.slot.as_deref()
            };
            if !pending {
                return;
            }
            tokio::time::sleep(CONFIRM_POLL).await;
            let opts = self.opts.clone();
            let env = tokio::task::spawn_blocking(move || boot_env(&opts)).await;
            if let Ok(Ok(env)) = env {
                let mut i = self.lock();
                let s = reconcile(&i.state, self.running.slot.as_deref(), &env);
                if s != i.state {
                    if let Some(last) = &s.last {
                        info!("{}", last.message);
                    }
                    self.set_state(&mut i, s);
                }
            }
        }
    }
}

/// The running version and slot.
fn running(opts: &Options) -> Running {
    let version = std::fs::read_to_string(opts.root.join(appliance::layout::VERSION_FILE))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_string());
    let cmdline = std::fs::read_to_string(&opts.cmdline).unwrap_or_default();
    Running {
        development: version.contains("development"),
        version: version.split_whitespace().next().unwrap_or("").to_string(),
        slot: install::booted_slot(&cmdline).map(str::to_owned),
    }
}

/// `bootenv show` of the disk.
fn boot_env(opts: &Options) -> io::Result<BootEnv> {
    let mut cmd = Command::new(&opts.tools.bootenv);
    if let Some(d) = &opts.disk {
        cmd.arg("--device").arg(d);
    }
    let out = cmd.arg("show").output()?;
    if !out.status.success() {
        return Err(io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(BootEnv::parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Serves the control socket until SIGTERM.
pub async fn serve(agent: Arc<Agent>, socket: &Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let _ = std::fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    }
    tokio::spawn(agent.clone().confirm());
    tokio::spawn(agent.clone().check_periodically());
    // on stdout: init takes this line as the readiness signal
    println!("lbupdate listening on {}", socket.display());
    let _ = io::stdout().flush();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(session(agent.clone(), stream)); }
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break,
        }
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

async fn session(agent: Arc<Agent>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    match (&mut reader).take(64 << 10).read_line(&mut line).await {
        Ok(0) | Err(_) => return,
        Ok(_) => {}
    }
    let reply: Reply = match serde_json::from_str::<Request>(&line) {
        Err(_) => Reply::Refused(Refused::new(
            RefusalKind::Unsupported,
            "not a request of the update agent (one JSON object with a known \"command\")",
        )),
        Ok(Request::Status) => Reply::Done(Answer::Status(Box::new(agent.status()))),
        Ok(Request::Checksum { text }) => agent.checksum(text).into(),
        Ok(Request::Discard) => {
            let a = agent.clone();
            blocking(move || a.discard()).await.into()
        }
        Ok(Request::Install { allow_downgrade }) => {
            let a = agent.clone();
            blocking(move || a.install(allow_downgrade)).await.into()
        }
        Ok(Request::Receive { name, size }) => {
            receive(&agent, &mut reader, name, size).await.into()
        }
        Ok(Request::Check) => agent.check().await.into(),
        Ok(Request::Download) => agent.download().await.into(),
        Ok(Request::Settings) => agent.settings().map(Answer::Settings).into(),
        Ok(Request::SetSettings { settings }) => agent.set_settings(settings).into(),
    };
    let mut text = serde_json::to_string(&reply).unwrap_or_default();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

impl From<Result<Answer, Refused>> for Reply {
    fn from(r: Result<Answer, Refused>) -> Reply {
        match r {
            Ok(a) => Reply::Done(a),
            Err(e) => Reply::Refused(e),
        }
    }
}

async fn blocking(
    f: impl FnOnce() -> Result<Answer, Refused> + Send + 'static,
) -> Result<Answer, Refused> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(Refused::new(
            RefusalKind::Failed,
            format!("the agent's task failed: {e}"),
        ))
    })
}

/// `http://user:***@host:port` for `http://user:password@host:port`.
fn mask_password(proxy: &str) -> String {
    match proxy
        .strip_prefix("http://")
        .and_then(|r| r.rsplit_once('@'))
    {
        Some((auth, host)) => {
            let user = auth.split(':').next().unwrap_or("");
            format!("http://{user}:***@{host}")
        }
        None => proxy.to_string(),
    }
}

/// A plain archive name: what lbweb was given as the upload's file name.
fn check_name(name: &str) -> Result<(), Refused> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Refused::new(
            RefusalKind::Invalid,
            format!("`{name}` is not an archive's file name (letters, digits, . _ - +)"),
        ))
    }
}

/// Receives an archive into /data/updates/incoming, hashing nothing yet (the checksum
/// is checked against the whole file at install), writing under a temporary name that
/// becomes the archive's only once every byte arrived.
async fn receive(
    agent: &Arc<Agent>,
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    name: String,
    size: u64,
) -> Result<Answer, Refused> {
    check_name(&name)?;
    if size == 0 || size > MAX_ARCHIVE {
        return Err(Refused::new(
            RefusalKind::Invalid,
            format!("an update archive is 1 to {MAX_ARCHIVE} bytes; this one says {size}"),
        ));
    }
    agent.begin()?;
    let r = receive_into(agent, reader, &name, size).await;
    {
        let mut i = agent.lock();
        match &r {
            Ok(staged) => {
                i.staged = Some(staged.clone());
                let s = UpdateState {
                    step: Step::Received,
                    ..i.state.clone()
                };
                agent.set_state(&mut i, s);
            }
            Err(_) => {
                i.staged = None;
                let s = UpdateState {
                    step: Step::Idle,
                    ..i.state.clone()
                };
                agent.set_state(&mut i, s);
            }
        }
    }
    agent.end();
    r.map(Answer::Received)
}

async fn receive_into(
    agent: &Arc<Agent>,
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    name: &str,
    size: u64,
) -> Result<Staged, Refused> {
    let fail = |e: String| Refused::new(RefusalKind::Failed, e);
    let dir = agent.opts.layout.update_incoming();
    let _ = tokio::fs::remove_dir_all(&dir).await;
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    {
        let mut i = agent.lock();
        i.staged = None;
        let s = UpdateState {
            step: Step::Receiving,
            ..i.state.clone()
        };
        agent.set_state(&mut i, s);
    }
    let part = dir.join(format!(".{name}.part"));
    let mut out = tokio::fs::File::create(&part)
        .await
        .map_err(|e| fail(format!("cannot write {}: {e}", part.display())))?;
    let mut buf = vec![0u8; 256 << 10];
    let mut done = 0u64;
    let mut ctx = Context::new(&SHA256);
    while done < size {
        let want = ((size - done) as usize).min(buf.len());
        let n = reader.read(&mut buf[..want]).await.map_err(|e| {
            Refused::new(RefusalKind::Invalid, format!("the upload broke off: {e}"))
        })?;
        if n == 0 {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Refused::new(
                RefusalKind::Invalid,
                format!("the upload ended after {done} of {size} bytes; nothing was kept"),
            ));
        }
        out.write_all(&buf[..n])
            .await
            .map_err(|e| fail(format!("cannot write {}: {e}", part.display())))?;
        ctx.update(&buf[..n]);
        done += n as u64;
        agent.progress("receiving", done, size);
    }
    out.sync_all()
        .await
        .map_err(|e| fail(format!("cannot write {}: {e}", part.display())))?;
    drop(out);
    let archive = dir.join(name);
    tokio::fs::rename(&part, &archive)
        .await
        .map_err(|e| fail(format!("cannot write {}: {e}", archive.display())))?;
    info!(name, size, sha256 = %hex(ctx.finish().as_ref()), "archive received");
    let checksum = agent.lock().checksum.is_some();
    Ok(Staged {
        name: name.into(),
        size,
        checksum,
    })
}

/// The parts an install writes (for the tests' expectations).
pub const INSTALLED_PARTS: [&str; 3] = PARTS;

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            version: "0.2.0".into(),
            slot: "b".into(),
            from_version: "0.1.0".into(),
            from_slot: "a".into(),
            unknown: Default::default(),
        }
    }

    fn state(step: Step) -> UpdateState {
        UpdateState {
            step,
            target: Some(target()),
            ..UpdateState::default()
        }
    }

    fn env(boot: &str, good: &str, tries: &str) -> BootEnv {
        BootEnv {
            boot_slot: boot.into(),
            good_slot: good.into(),
            boot_tries: tries.into(),
        }
    }

    fn outcome(s: &UpdateState) -> Option<Outcome> {
        s.last.as_ref().map(|l| l.outcome)
    }

    #[test]
    fn an_interrupted_upload_is_forgotten() {
        for step in [Step::Receiving, Step::Received] {
            let s = reconcile(&state(step), Some("a"), &env("a", "a", ""));
            assert_eq!(
                (s.step, outcome(&s)),
                (Step::Idle, Some(Outcome::Interrupted))
            );
        }
    }

    #[test]
    fn an_install_cut_before_the_flip_changes_nothing_and_after_it_counts() {
        let s = reconcile(&state(Step::Installing), Some("a"), &env("a", "a", ""));
        assert_eq!(
            (s.step, outcome(&s)),
            (Step::Idle, Some(Outcome::Interrupted))
        );
        assert!(s.last.unwrap().message.contains("slot b is not used"));
        let s = reconcile(&state(Step::Installing), Some("a"), &env("b", "a", "3"));
        assert_eq!(
            (s.step, outcome(&s)),
            (Step::Installed, Some(Outcome::Installed))
        );
    }

    #[test]
    fn an_installed_update_waits_for_the_reboot_then_is_confirmed_or_rolled_back() {
        // old slot running, new one on trial: reboot pending
        let s = reconcile(&state(Step::Installed), Some("a"), &env("b", "a", "3"));
        assert_eq!(s.step, Step::Installed);
        // the new slot runs, not yet marked good
        let s = reconcile(&state(Step::Installed), Some("b"), &env("b", "a", "2"));
        assert_eq!(s.step, Step::Installed);
        // marked good
        let s = reconcile(&state(Step::Installed), Some("b"), &env("b", "b", ""));
        assert_eq!(
            (s.step, outcome(&s)),
            (Step::Idle, Some(Outcome::Confirmed))
        );
        assert_eq!(
            s.last.unwrap().message,
            "updated from 0.1.0 to 0.2.0; slot b is marked good"
        );
        // the old slot runs again and the trial is over: rolled back
        let s = reconcile(&state(Step::Installed), Some("a"), &env("a", "a", ""));
        assert_eq!(
            (s.step, outcome(&s)),
            (Step::Idle, Some(Outcome::RolledBack))
        );
        assert_eq!(
            s.last.unwrap().message,
            "the update to 0.2.0 did not come up; rolled back to 0.1.0 (slot a)"
        );
    }

    #[test]
    fn bootenv_show_is_read() {
        let e = BootEnv::parse("boot_slot=b\ngood_slot=a\nboot_tries=2\n");
        assert_eq!(e, env("b", "a", "2"));
        assert!(e.on_trial("b") && !e.good("a"));
    }

    #[test]
    fn a_proxy_password_is_never_shown() {
        assert_eq!(
            mask_password("http://ward:s3cret@proxy:3128"),
            "http://ward:***@proxy:3128"
        );
        assert_eq!(mask_password("http://proxy:3128"), "http://proxy:3128");
    }

    #[test]
    fn archive_names_are_plain() {
        assert!(check_name("medlb-0.2.0.update").is_ok());
        for bad in ["", "../x", ".hidden", "a/b", "a b", &"x".repeat(200)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
