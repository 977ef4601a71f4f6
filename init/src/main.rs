//! `init`: PID 1 of the medical load-balancer appliance.
//!
//! As PID 1 (or with no known subcommand) it boots the appliance (see [`boot`]).
//! Called as `poweroff` or `reboot` (symlinks in /sbin) it asks the running init to
//! shut down. Its subcommands serve tests and tools:
//!
//! - `init ctl list|restart NAME|stop NAME|start NAME|reboot|poweroff` — control socket client
//! - `init wizard` — the first-boot wizard on stdin/stdout, writing to the data root
//! - `init net-apply FILE [--hold]` — apply a network settings file in this network namespace
//! - `init modules --root DIR [--kver V] NAME...` — print the load order of modules and dependencies
//! - `init bench` — time from start to "services ready" and init's memory, with trivial services
//! - `init version`

use init::options::Options;
use init::{bench, boot, console, control, datafs, log, modules, network, shutdown, wizard};
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    let opts = Options::parse(args.get(1..).unwrap_or(&[]), |k| std::env::var(k).ok());
    let control = opts.layout().control_socket();
    match argv0.as_str() {
        "poweroff" | "halt" => {
            std::process::exit(shutdown::command(shutdown::Action::PowerOff, &control))
        }
        "reboot" => std::process::exit(shutdown::command(shutdown::Action::Reboot, &control)),
        _ => {}
    }
    if std::process::id() != 1
        && let Some(sub) = args.get(1)
    {
        let rest = &args[2..];
        let code = match sub.as_str() {
            "ctl" => ctl(&control, rest),
            "poweroff" => shutdown::command(shutdown::Action::PowerOff, &control),
            "reboot" => shutdown::command(shutdown::Action::Reboot, &control),
            "wizard" => wizard_cmd(&opts),
            "net-apply" => network::cli::net_apply(rest),
            "modules" => modules::cli(rest),
            "datafs" => datafs::cli(rest),
            "bench" => bench::run(rest),
            "version" => {
                println!("init {}", env!("CARGO_PKG_VERSION"));
                0
            }
            "boot" => {
                boot::main(Options::parse(rest, |k| std::env::var(k).ok()));
                0
            }
            _ => usage(),
        };
        std::process::exit(code);
    }
    boot::main(opts);
}

fn usage() -> i32 {
    eprintln!(
        "usage: init [boot] [--root DIR] [--data DIR] [--run DIR] [--console DEV] [--services FILE]\n\
         \x20           [--no-mounts] [--no-modules] [--no-network] [--exit-on-shutdown] [--log-stderr]\n\
         \x20      init ctl list|restart NAME|stop NAME|start NAME|reboot|poweroff\n\
         \x20      init wizard [--data DIR]\n\
         \x20      init net-apply FILE [--resolv FILE] [--hold]\n\
         \x20      init modules --root DIR [--kver VERSION] [--alias MODALIAS]... [NAME]...\n\
         \x20      init datafs --label LABEL --mount DIR [--wait SECS]\n\
         \x20      init bench [--services N]"
    );
    2
}

fn ctl(control: &Path, rest: &[String]) -> i32 {
    let mut words: Vec<&str> = Vec::new();
    let mut it = rest.iter();
    while let Some(w) = it.next() {
        if w.starts_with("--") {
            if !w.contains('=') {
                it.next(); // the flag's value (--run DIR)
            }
        } else {
            words.push(w);
        }
    }
    let line = if words.is_empty() {
        "list".to_string()
    } else {
        words.join(" ")
    };
    match control::request(control, &line) {
        Ok(v) => {
            println!("{v}");
            if v["ok"] == true { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("init ctl: {}: {e}", control.display());
            1
        }
    }
}

/// The wizard on stdin/stdout: 0 when saved, 3 when the console closed first.
fn wizard_cmd(opts: &Options) -> i32 {
    log::set_mirror(false, false);
    let never = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut con = match console::Console::stdio(never) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("init wizard: {e}");
            return 1;
        }
    };
    let layout = opts.layout();
    let ifname = wizard::default_interface(Path::new("/sys"));
    match wizard::first_boot(&mut con, &ifname) {
        Ok((net, password)) => match wizard::save_first_boot(&layout, &net, &password) {
            Ok(()) => {
                use wizard::Io;
                con.say(wizard::SAVED);
                0
            }
            Err(e) => {
                eprintln!("init wizard: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("init wizard: {e}; nothing was saved");
            3
        }
    }
}
