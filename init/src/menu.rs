//! What each console shows: the first-boot wizard while the appliance is not set up
//! (the first console to finish wins, the others are told), then the status screen
//! and the menu (service status, network setup again, admin password, reboot, shut
//! down). Never a shell. One thread per console; actions go to the main loop.

use crate::console::{Console, ReadError};
use crate::layout::{Layout, WEB_UI_PORT};
use crate::network::config::NetworkConfig;
use crate::supervisor::ServiceInfo;
use crate::wizard::{self, Io};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

pub const PROMPT_CHOICE: &str = "Choice (1-6): ";
pub const MENU: &str = "  1) show service status\n  2) re-run network setup\n  3) reset admin password\n  4) reboot\n  5) shut down\n  6) firewall: turn lockdown off (web UI from every network)";
pub const OTHER_CONSOLE: &str = "Setup was completed on another console.";

/// What a console asks the main loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UiEvent {
    /// The first-boot wizard wrote the settings.
    SetupDone,
    /// The network settings were changed from the menu.
    NetworkChanged,
    Reboot,
    PowerOff,
}

/// What the main loop tells the consoles.
#[derive(Debug, Default, Clone)]
pub struct Status {
    pub services: Vec<ServiceInfo>,
    pub ready: bool,
    pub problems: Vec<String>,
}

/// State shared by the console threads and the main loop.
pub struct Shared {
    pub layout: Layout,
    pub root: PathBuf,
    pub sys: PathBuf,
    pub version: String,
    pub setup_done: AtomicBool,
    pub wizard_done: Arc<AtomicBool>,
    pub claim: Mutex<()>,
    pub status: Mutex<Status>,
    pub outputs: Mutex<HashMap<String, OwnedFd>>,
    pub events: UnboundedSender<UiEvent>,
}

impl Shared {
    /// Print a line on every open console.
    pub fn broadcast(&self, line: &str) {
        let outs = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
        for fd in outs.values() {
            let _ = nix::unistd::write(fd, format!("\n{line}\n").as_bytes());
        }
    }

    fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Start one thread per console.
pub fn start(consoles: Vec<String>, shared: Arc<Shared>) {
    for path in consoles {
        let shared = shared.clone();
        let name = format!("console-{}", path.rsplit('/').next().unwrap_or("x"));
        let r = std::thread::Builder::new()
            .name(name)
            .spawn(move || console_loop(&path, &shared));
        if let Err(e) = r {
            crate::info!("cannot start the console thread: {e}");
        }
    }
}

fn console_loop(path: &str, shared: &Shared) {
    let never = Arc::new(AtomicBool::new(false));
    let mut logged = false;
    loop {
        let opened = if path == "-" {
            Console::stdio(never.clone())
        } else {
            Console::open(Path::new(path), never.clone())
        };
        let mut con = match opened {
            Ok(c) => c,
            Err(e) => {
                if !logged {
                    crate::info!("console {path}: {e}; retrying");
                    logged = true;
                }
                std::thread::sleep(Duration::from_secs(5));
                continue;
            }
        };
        if let Some(fd) = con.output_fd() {
            let mut outs = shared.outputs.lock().unwrap_or_else(|e| e.into_inner());
            outs.insert(path.to_string(), fd);
        }
        let result = (|| {
            if !shared.setup_done.load(Ordering::SeqCst) {
                first_boot(&mut con, shared)?;
                con.set_cancel(never.clone());
            }
            menu(&mut con, shared)
        })();
        if let Err(e) = result {
            crate::info!("console {path}: {e}; reopening");
        }
        shared
            .outputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(path);
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn first_boot(con: &mut Console, shared: &Shared) -> Result<(), ReadError> {
    con.set_cancel(shared.wizard_done.clone());
    let ifname = wizard::default_interface(&shared.sys);
    loop {
        let (net, password) = match wizard::first_boot(con, &ifname) {
            Ok(answers) => answers,
            Err(ReadError::Cancelled) => {
                con.say("");
                con.say(OTHER_CONSOLE);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let _claim = shared.claim.lock().unwrap_or_else(|e| e.into_inner());
        if shared.wizard_done.load(Ordering::SeqCst) {
            con.say(OTHER_CONSOLE);
            return Ok(());
        }
        match wizard::save_first_boot(&shared.layout, &net, &password) {
            Ok(()) => {
                shared.wizard_done.store(true, Ordering::SeqCst);
                shared.setup_done.store(true, Ordering::SeqCst);
                con.say(wizard::SAVED);
                crate::info!("first-boot setup saved on {}", con.name());
                let _ = shared.events.send(UiEvent::SetupDone);
                return Ok(());
            }
            Err(e) => {
                crate::info!("first-boot setup: {e}");
                con.say(&format!("error: could not save the settings: {e}"));
            }
        }
    }
}

/// IPv4 addresses of the interfaces other than loopback.
fn addresses() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if a.interface_name == "lo" {
                continue;
            }
            let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
                continue;
            };
            if let (Some(ip), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                let prefix = appliance::net::netmask_to_prefix(m.ip()).unwrap_or(32);
                out.push((a.interface_name.clone(), format!("{}/{prefix}", ip.ip())));
            }
        }
    }
    out
}

/// The network interfaces other than loopback: name, MAC, link state, driver.
fn links(sys: &Path) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(sys.join("class/net")) else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "lo" {
            continue;
        }
        let read = |f: &str| {
            std::fs::read_to_string(e.path().join(f))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let driver = std::fs::read_link(e.path().join("device/driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "virtual".into());
        out.push((name, read("address"), read("operstate"), driver));
    }
    out.sort();
    out
}

/// The status screen: what the appliance is now, redrawn whenever it changes.
pub fn status_screen(shared: &Shared) -> String {
    let st = shared.status();
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut s = format!("\n=== Medical load balancer {} ===\n", shared.version);
    s += &format!("  hostname: {host}\n");
    let addrs = addresses();
    if addrs.is_empty() {
        s += "  address:  none\n";
    }
    for (ifc, a) in &addrs {
        s += &format!("  address:  {ifc} {a}\n");
    }
    for (name, mac, state, driver) in links(&shared.sys) {
        s += &format!("  link:     {name} {mac} {state} ({driver})\n");
    }
    // a virtual service's address never serves the web UI (the firewall drops 9443 there)
    let services: Vec<std::net::IpAddr> =
        appliance::files::lbcore::load(&shared.layout.lbcore_config())
            .map(|(c, _)| c.services.iter().map(|v| v.address).collect())
            .unwrap_or_default();
    for (_, a) in &addrs {
        let ip = a.split('/').next().unwrap_or(a);
        if ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| services.contains(&ip))
        {
            continue;
        }
        s += &format!("  web UI:   https://{ip}:{WEB_UI_PORT}/\n");
    }
    if let Ok((account, _)) = crate::admin::AdminFile::load(&shared.layout.admin_config()) {
        s += &format!("  login:    {}\n", account.user);
    }
    let cert = shared
        .layout
        .tls_dir()
        .join(appliance::layout::TLS_CERT_FILE);
    if let Ok(fp) = appliance::files::certificate::fingerprint(&cert) {
        // 32 pairs: two lines of 16, so that it fits an 80-column screen
        let (first, second) = fp.split_at(fp.len().min(48));
        s += &format!(
            "  cert:     SHA-256 {first}\n                   {}\n",
            second.trim_start_matches(':')
        );
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let slot = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("lb.slot="));
    if let Some(slot) = slot {
        s += &format!("  slot:     {slot}\n");
    }
    let (update, _) =
        appliance::files::update_state::UpdateState::load(&shared.layout.update_state());
    if let Some(line) = update_line(&update, slot) {
        s += &format!("  update:   {line}\n");
    }
    s += &format!(
        "  time:     {} (not synchronised: no time server is set)\n",
        crate::log::timestamp(std::time::SystemTime::now())
            .get(..16)
            .unwrap_or("")
            .replace('T', " ")
            + " UTC"
    );
    let ready = st
        .services
        .iter()
        .filter(|s| s.state.as_str() == "ready")
        .count();
    s += &format!(
        "  services: {ready} of {} ready{}\n",
        st.services.len(),
        if st.ready { "" } else { " (starting)" }
    );
    for i in st.services.iter().filter(|i| {
        matches!(
            i.state,
            crate::supervisor::State::Failed | crate::supervisor::State::Backoff
        )
    }) {
        s += &format!(
            "  failed:   {} ({})\n",
            i.name,
            i.last_exit.as_deref().unwrap_or("no exit status")
        );
    }
    for p in &st.problems {
        s += &format!("  problem:  {p}\n");
    }
    s
}

/// What the status screen says of the software update. The agent's last message was
/// written on the old slot ("installed: restart to use it"); booted into the new slot
/// and not yet marked good, the update is on trial, which the message cannot know.
fn update_line(
    update: &appliance::files::update_state::UpdateState,
    running_slot: Option<&str>,
) -> Option<String> {
    use appliance::files::update_state::Outcome;
    let last = update.last.as_ref()?;
    match &update.target {
        Some(t) if last.outcome == Outcome::Installed && running_slot == Some(t.slot.as_str()) => {
            Some(format!(
                "{} on trial in slot {}: it is kept once its services are ready; otherwise the appliance returns to {} by itself",
                t.version, t.slot, t.from_version
            ))
        }
        _ => Some(last.message.clone()),
    }
}

/// The service status lines (and lbcore's own status when `lbctl` is there).
pub fn service_status(shared: &Shared) -> String {
    let st = shared.status();
    let mut s = String::from("Services:\n");
    for i in &st.services {
        let pid = i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        s += &format!(
            "  {:<14} {:<9} pid {pid:<7} restarts {}\n",
            i.name,
            i.state.as_str(),
            i.restarts
        );
    }
    let lbctl = shared.root.join("usr/bin/lbctl");
    if lbctl.exists() {
        let mut cmd = std::process::Command::new(&lbctl);
        cmd.arg("status");
        match crate::reaper::run_blocking(&mut cmd, Duration::from_secs(5)) {
            Ok(out) => {
                s += &format!("lbctl status ({}):\n", out.exit);
                for l in out.stdout.lines().chain(out.stderr.lines()) {
                    s += &format!("  {l}\n");
                }
            }
            Err(e) => s += &format!("lbctl status: {e}\n"),
        }
    }
    s
}

/// The recovery path when the administrators' network changed and the web UI no longer
/// answers them: lbcore is asked (through lbctl, on its socket) to allow management from
/// every network; lbcore logs who asked, and so does init.
fn lockdown_off(shared: &Shared) -> String {
    let lbctl = shared.root.join("usr/bin/lbctl");
    let mut cmd = std::process::Command::new(&lbctl);
    cmd.arg("--socket")
        .arg(shared.layout.lbcore_socket())
        .args(["firewall", "off", "--origin", "the console"]);
    match crate::reaper::run_blocking(&mut cmd, Duration::from_secs(10)) {
        Ok(out) if out.exit.success() => {
            crate::info!("console: firewall lockdown turned off (management from every network)");
            "Lockdown is off: the web UI answers every network. Lock it down again from the web UI (Maintenance, Firewall).".into()
        }
        Ok(out) => format!(
            "error: the lockdown could not be turned off ({}): {}",
            out.exit,
            out.stderr.trim()
        ),
        Err(e) => format!("error: cannot run {}: {e}", lbctl.display()),
    }
}

/// How often a waiting menu looks whether its status screen is still true.
const REDRAW_CHECK: Duration = Duration::from_secs(1);

fn menu(con: &mut Console, shared: &Shared) -> Result<(), ReadError> {
    loop {
        let screen = status_screen(shared);
        con.say(&screen);
        con.say(MENU);
        // redrawn when what it shows changed (an address from DHCP, a service ready or
        // failed, the minute), without anyone pressing a key
        let Some(choice) = con.ask_watching(PROMPT_CHOICE, REDRAW_CHECK, || {
            status_screen(shared) != screen
        })?
        else {
            continue;
        };
        match choice.as_str() {
            "" => {}
            "1" => con.say(&service_status(shared)),
            "2" => {
                let ifname = current_interface(&shared.layout)
                    .unwrap_or_else(|| wizard::default_interface(&shared.sys));
                if let Some(net) = wizard::network_again(con, &ifname)? {
                    let merged = merge(&shared.layout, net);
                    match wizard::save_network(&shared.layout, &merged) {
                        Ok(()) => {
                            con.say("Network settings saved; applying.");
                            let _ = shared.events.send(UiEvent::NetworkChanged);
                        }
                        Err(e) => con.say(&format!("error: {e}")),
                    }
                } else {
                    con.say("Nothing was changed.");
                }
            }
            "3" => {
                let p = wizard::ask_password(con)?;
                match crate::admin::save(&shared.layout.admin_config(), &p) {
                    Ok(()) => con.say("Admin password changed."),
                    Err(e) => con.say(&format!("error: {e}")),
                }
            }
            "4" => {
                if wizard::ask_confirm(con, "Reboot now? (yes/no): ")? {
                    con.say("Rebooting...");
                    let _ = shared.events.send(UiEvent::Reboot);
                }
            }
            "5" => {
                if wizard::ask_confirm(con, "Shut down now? (yes/no): ")? {
                    con.say("Shutting down...");
                    let _ = shared.events.send(UiEvent::PowerOff);
                }
            }
            "6" => {
                if wizard::ask_confirm(
                    con,
                    "Turn the firewall's lockdown off, so that the web UI answers every network? (yes/no): ",
                )? {
                    con.say(&lockdown_off(shared));
                } else {
                    con.say("Nothing was changed.");
                }
            }
            _ => con.say("error: choose 1 to 6"),
        }
    }
}

fn current_interface(layout: &Layout) -> Option<String> {
    NetworkConfig::load(&layout.network_config())
        .ok()?
        .0
        .interfaces
        .first()
        .map(|i| i.name.clone())
}

/// Replace the management interface, hostname and DNS in the current settings.
fn merge(layout: &Layout, new: NetworkConfig) -> NetworkConfig {
    let Ok((mut cur, _)) = NetworkConfig::load(&layout.network_config()) else {
        return new;
    };
    cur.hostname = new.hostname;
    cur.dns = new.dns;
    for ifc in new.interfaces {
        match cur.interfaces.iter_mut().find(|i| i.name == ifc.name) {
            Some(old) => {
                old.dhcp = ifc.dhcp;
                old.addresses = ifc.addresses;
                old.gateway = ifc.gateway;
            }
            None => cur.interfaces.insert(0, ifc),
        }
    }
    cur
}
