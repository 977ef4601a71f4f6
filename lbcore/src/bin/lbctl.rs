//! `lbctl`: talks to a running lbcore over its control socket.

use std::path::PathBuf;
use std::process::ExitCode;

use appliance::layout::Layout;
use clap::{Parser, Subcommand};
use lbcore_control::status::Health;
use lbcore_control::{AdminState, Answer, CallError, Client, Request, Status};

#[derive(Parser)]
#[command(
    version,
    about = "Control the load-balancing core: status, drain/halt/online, reload, apply a configuration, the firewall"
)]
struct Args {
    /// lbcore's control socket.
    #[arg(long, global = true, default_value_os_t = Layout::default().lbcore_socket())]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Virtual services and real servers with their state and connections.
    Status {
        /// Print JSON for machines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// No new connections to the server; established ones stay.
    Drain { service: String, server: String },
    /// No new connections to the server, and close its established ones now.
    Halt { service: String, server: String },
    /// Back into rotation after drain or halt.
    Online { service: String, server: String },
    /// Read the configuration file again (an invalid one is refused; the running one stays).
    Reload,
    /// Make FILE the configuration: checked and its ports bound first, then saved over
    /// the configuration file and applied; a refused one changes nothing.
    Apply { file: PathBuf },
    /// Print the configuration file lbcore runs from.
    ShowConfig,
    /// The firewall: its state, lockdown of the management ports, custom rules.
    Firewall {
        #[command(subcommand)]
        action: Option<FirewallCommand>,
        /// Print JSON for machines instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum FirewallCommand {
    /// Restrict management to NETWORKS (CIDRs or addresses); undone after the
    /// confirmation window unless confirmed with the token printed.
    Lockdown {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Keep the lockdown that `lockdown` applied.
    Confirm { token: String },
    /// Management from anywhere again (logged, with ORIGIN).
    Off {
        /// Who asks, for lbcore's log.
        #[arg(long, default_value = "lbctl")]
        origin: String,
    },
    /// Make FILE the custom rules (`-`: standard input); checked by nft first.
    Custom { file: PathBuf },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (request, json) = match args.command {
        Command::Status { json } => (Request::Status, json),
        Command::Drain { service, server } => (set(service, server, AdminState::Drain), false),
        Command::Halt { service, server } => (set(service, server, AdminState::Halt), false),
        Command::Online { service, server } => (set(service, server, AdminState::Online), false),
        Command::Reload => (Request::Reload, false),
        Command::Apply { file } => match std::fs::read_to_string(&file) {
            Ok(config) => (
                Request::Apply {
                    config,
                    origin: Some(file.display().to_string()),
                },
                false,
            ),
            Err(e) => {
                eprintln!("lbctl: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        },
        Command::ShowConfig => (Request::ShowConfig, false),
        Command::Firewall { action, json } => {
            let request = match action {
                None => Request::Firewall,
                Some(FirewallCommand::Lockdown { networks }) => Request::SetLockdown {
                    networks,
                    requester: None,
                },
                Some(FirewallCommand::Confirm { token }) => Request::ConfirmLockdown { token },
                Some(FirewallCommand::Off { origin }) => Request::LockdownOff { origin },
                Some(FirewallCommand::Custom { file }) => {
                    let text = if file.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())
                    } else {
                        std::fs::read_to_string(&file)
                    };
                    match text {
                        Ok(text) => Request::SetCustomRules { text },
                        Err(e) => {
                            eprintln!("lbctl: cannot read {}: {e}", file.display());
                            return ExitCode::from(2);
                        }
                    }
                }
            };
            (request, json)
        }
    };
    match Client::new(&args.socket).call(&request) {
        Ok(answer) => print_answer(&answer, json),
        // lbcore understood and said no: the request's fault
        Err(CallError::Refused(r)) => {
            eprintln!("lbctl: {r}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("lbctl: {e}");
            ExitCode::from(2)
        }
    }
}

fn set(service: String, server: String, state: AdminState) -> Request {
    Request::SetState {
        service,
        server,
        state,
    }
}

fn print_answer(answer: &Answer, json: bool) -> ExitCode {
    match answer {
        Answer::Status(status) if json => return print_json(status),
        Answer::Firewall(f) if json => return print_json(f),
        Answer::Firewall(f) => print!("{}", firewall_text(f)),
        Answer::LockdownApplied(l) => {
            println!("{}", l.message);
            println!("confirm with: lbctl firewall confirm {}", l.token);
        }
        Answer::Status(status) => print!("{}", table(status)),
        Answer::Config(c) => print!("{}", c.text),
        Answer::StateSet(s) => println!("{}", s.message),
        Answer::Applied(a) => {
            for w in &a.warnings {
                eprintln!("lbctl: warning: {w}");
            }
            println!("{}", a.message);
        }
    }
    ExitCode::SUCCESS
}

fn print_json(value: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lbctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The firewall as text: lockdown, last apply, counters, custom rules.
fn firewall_text(f: &lbcore_control::FirewallStatus) -> String {
    if !f.enabled {
        return "firewall: not kept by this lbcore (started without --firewall)\n".into();
    }
    let ports: Vec<String> = f.management_ports.iter().map(u16::to_string).collect();
    let mut out = format!(
        "management ports {}: {}\n",
        ports.join(","),
        if f.lockdown.is_empty() {
            "from anywhere (lockdown off)".to_string()
        } else {
            format!("from {}", f.lockdown.join(", "))
        }
    );
    if let Some(p) = &f.pending {
        out += &format!(
            "waiting for confirmation: lockdown to {} ({} s left)\n",
            p.networks.join(", "),
            p.seconds_left
        );
    }
    if let Some(a) = &f.last_apply {
        out += &format!(
            "last apply: {} ({})\n",
            a.message,
            if a.ok { "ok" } else { "failed" }
        );
    }
    for c in &f.counters {
        out += &format!("{:>10} packets  {}: {}\n", c.packets, c.name, c.what);
    }
    if !f.custom.is_empty() {
        out += "custom rules:\n";
        for l in f.custom.lines() {
            out += &format!("  {l}\n");
        }
    }
    if let Some(e) = &f.custom_error {
        out += &format!("last custom rules refused: {e}\n");
    }
    out
}

/// The System Overview as text: one block per service, one line per real server.
fn table(status: &Status) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "SERVICE / SERVER".into(),
        "ADDRESS".into(),
        "PORTS".into(),
        "STATE".into(),
        "CONNS".into(),
        "TOTAL".into(),
    ]];
    let mut notes = Vec::new();
    for s in &status.services {
        let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
        let up = s
            .real_servers
            .iter()
            .filter(|r| r.health != Health::Down)
            .count();
        rows.push([
            format!(
                "{} (L{} {})",
                s.label,
                s.layer,
                s.forwarding.map_or(s.scheduler.name(), |f| f.name())
            ),
            s.address.to_string(),
            ports.join(","),
            format!("{up}/{} up", s.real_servers.len()),
            s.connections.to_string(),
            s.total_connections.to_string(),
        ]);
        for r in &s.real_servers {
            let mut state = r.health.to_string();
            if r.state != AdminState::Online {
                state = format!("{state},{}", r.state);
            }
            if s.layer == 4 {
                state = match &r.ipvs {
                    Some(i) => format!("{state} (ipvs weight {})", i.weight),
                    None => format!("{state} (not in ipvs)"),
                };
            }
            rows.push([
                format!("  {}", r.label),
                r.address.to_string(),
                r.port.map_or("-".into(), |p| p.to_string()),
                state,
                r.connections.to_string(),
                r.total_connections.to_string(),
            ]);
            if let Some(why) = &r.last_failure {
                notes.push(format!("{}/{}: {why}", s.label, r.label));
            }
        }
        if let Some(f) = &s.fallback {
            rows.push([
                "  (fallback)".into(),
                f.address.to_string(),
                f.port.map_or("-".into(), |p| p.to_string()),
                if f.in_use {
                    "in use".into()
                } else {
                    "standby".into()
                },
                f.connections.to_string(),
                f.total_connections.to_string(),
            ]);
        }
        if let Some(n) = &s.note {
            notes.push(format!("{}: {n}", s.label));
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for w in &status.warnings {
        notes.push(format!("warning: {w}"));
    }
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    if let Some(table) = &status.ipvs {
        out.push_str(&ipvs_table(table));
    }
    if let Some(p) = &status.process {
        out.push_str(&format!(
            "lbcore: memory {:.1} MB (peak {:.1} MB), {} open files\n",
            p.rss_kib as f64 / 1024.0,
            p.peak_rss_kib as f64 / 1024.0,
            p.open_files
        ));
    }
    out
}

/// The kernel's IPVS table as `ipvsadm -Ln` would show it, one line per entry.
fn ipvs_table(table: &[lbcore::ipvs::Service]) -> String {
    let mut out = String::from("IPVS table (kernel):\n");
    if table.is_empty() {
        out.push_str("  (empty)\n");
    }
    for svc in table {
        out.push_str(&format!("  {} {}", svc.key, svc.spec.scheduler));
        if let Some(t) = svc.spec.persistence {
            out.push_str(&format!(" persistent {t} mask /{}", svc.spec.netmask));
        }
        out.push('\n');
        for d in &svc.dests {
            out.push_str(&format!(
                "    -> {} {} weight {} upper {} lower {} active {} inactive {} persistent {}\n",
                d.key,
                d.spec.forward.name(),
                d.spec.weight,
                d.spec.upper,
                d.spec.lower,
                d.counters.active,
                d.counters.inactive,
                d.counters.persistent
            ));
        }
    }
    out
}
