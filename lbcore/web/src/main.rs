//! `lbweb`: the appliance's HTTPS JSON API (port 9443). Runs in the foreground and
//! logs to stderr; the library's `api` module lists the routes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use appliance::layout::Layout;
use clap::Parser;
use lbweb::Options;

#[derive(Parser)]
#[command(
    version,
    about = "HTTPS JSON API of the load-balancer appliance: login, System Overview, configuration, Drain/Halt/Online"
)]
struct Args {
    /// Address and port to listen on.
    #[arg(long, default_value = "0.0.0.0:9443")]
    listen: SocketAddr,
    /// lbcore's control socket.
    #[arg(long, default_value_os_t = Layout::default().lbcore_socket())]
    socket: PathBuf,
    /// The update agent's control socket.
    #[arg(long, default_value_os_t = Layout::default().update_socket())]
    update_socket: PathBuf,
    /// init's control socket (the reboot an administrator asks for).
    #[arg(long, default_value_os_t = Layout::default().control_socket())]
    init_socket: PathBuf,
    /// The admin account written by the console wizard.
    #[arg(long, default_value_os_t = Layout::default().admin_config())]
    admin: PathBuf,
    /// Directory of cert.pem and key.pem (a self-signed pair is made when absent).
    #[arg(long, default_value_os_t = Layout::default().tls_dir())]
    tls_dir: PathBuf,
    /// Minutes without use after which a session ends.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=1440))]
    session_idle_minutes: u64,
    /// Hours after login at which a session ends, used or not.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=168))]
    session_hours: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    appliance::logging::init("LBWEB_LOG");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lbweb: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = Options {
        listen: args.listen,
        control: args.socket,
        update: args.update_socket,
        init: args.init_socket,
        admin: args.admin,
        tls_dir: args.tls_dir,
        session_idle: Duration::from_secs(args.session_idle_minutes * 60),
        session_lifetime: Duration::from_secs(args.session_hours * 3600),
    };
    match runtime.block_on(lbweb::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbweb: {e:#}");
            ExitCode::from(2)
        }
    }
}
