//! `lbcore`: the load-balancing daemon. Runs in the foreground and logs to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use appliance::layout::Layout;
use clap::Parser;
use lbcore::daemon::{self, Options};

#[derive(Parser)]
#[command(
    version,
    about = "Load-balancing core: Layer 7 TCP proxy and health checks for DICOM and HL7 services"
)]
struct Args {
    /// The configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// The control socket that lbctl talks to.
    #[arg(long, default_value_os_t = Layout::default().lbcore_socket())]
    socket: PathBuf,
    /// Where the operator's Drain/Halt settings are kept [default: lbcore-state.json beside the configuration].
    #[arg(long)]
    state: Option<PathBuf>,
    /// Leave the interfaces' addresses alone (service addresses are configured elsewhere).
    #[arg(long)]
    no_manage_addresses: bool,
    /// Keep the cores awake this many microseconds after the last byte relayed, so
    /// that the next packet does not wait for a halted virtual CPU (0: off). For a
    /// host of its own: the spinning takes CPU time other VMs on the host could use.
    #[arg(long, default_value_t = 0, value_name = "MICROSECONDS")]
    busy_poll_us: u64,
    /// Keep the appliance's firewall (nftables table `inet medlb`) with the settings in
    /// this file (lockdown, custom rules; written by lbcore). Without it lbcore leaves
    /// netfilter alone, but for the SNAT of Layer 4.
    #[arg(long, value_name = "FIREWALL_TOML")]
    firewall: Option<PathBuf>,
    /// A management port (TCP) the lockdown restricts; repeat for each [default: 9443].
    #[arg(long = "management-port", value_name = "PORT")]
    management_ports: Vec<u16>,
    /// Seconds an applied lockdown waits for its confirmation before it is undone.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..=3600))]
    lockdown_confirm_seconds: u64,
    /// Only check the configuration file, as strictly as a configuration submitted
    /// with `lbctl apply` (a key lbcore does not know is an error), and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    appliance::logging::init("LBCORE_LOG");

    if args.check {
        let checked = std::fs::read_to_string(&args.config)
            .map_err(|e| lbcore::config::ConfigError::Read {
                path: args.config.clone(),
                reason: e.to_string(),
            })
            .and_then(|text| lbcore::config::parse(&text).map_err(|e| e.with_path(&args.config)));
        return match checked {
            Ok(c) => {
                println!(
                    "{}: valid, {} service(s)",
                    args.config.display(),
                    c.services.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lbcore: {e}");
                ExitCode::from(2)
            }
        };
    }

    raise_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lbcore: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    lbcore::proxy::busy_poll::start(std::time::Duration::from_micros(args.busy_poll_us));
    let state = args
        .state
        .unwrap_or_else(|| daemon::default_state_path(&args.config));
    let options = Options {
        config: args.config,
        socket: args.socket,
        state,
        manage_addresses: !args.no_manage_addresses,
        firewall: args.firewall.map(|settings| lbcore::firewall::Options {
            settings,
            management_ports: if args.management_ports.is_empty() {
                vec![lbcore::firewall::WEB_UI_PORT]
            } else {
                args.management_ports
            },
            confirm_window: std::time::Duration::from_secs(args.lockdown_confirm_seconds),
        }),
    };
    match runtime.block_on(daemon::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbcore: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Every proxied connection holds two sockets and two pipes: lift the open-file limit.
/// As root (the appliance) the hard limit is raised too, up to the kernel's `nr_open`;
/// otherwise the soft limit goes up to the hard one.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(hard)
        .min(1 << 20);
    let wanted = ceiling.max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_err() {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!("cannot raise the open-file limit to {hard}: {e}");
        }
    }
}
