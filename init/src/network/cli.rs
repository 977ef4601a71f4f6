//! `init net-apply FILE [--then FILE2] [--resolv PATH] [--hold]`: applies a network
//! settings file in the current network namespace (tests and tools). Prints what
//! changed (`no changes` when nothing did); `--then` applies a second file from the
//! same process, as init does when the settings change at run time (one line per
//! apply); with `--hold` it stays to keep DHCP leases, logging to stderr, and
//! releases them on SIGTERM or SIGINT.

use super::Manager;
use super::config::NetworkConfig;
use std::path::PathBuf;

pub fn net_apply(args: &[String]) -> i32 {
    let mut file = None;
    let mut resolv = None;
    let mut hold = false;
    let mut then = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--resolv" => resolv = it.next().map(PathBuf::from),
            "--hold" => hold = true,
            "--then" => then = it.next().map(PathBuf::from),
            f => file = Some(PathBuf::from(f)),
        }
    }
    let Some(file) = file else {
        eprintln!("usage: init net-apply FILE [--resolv PATH] [--hold]");
        return 2;
    };
    crate::log::set_mirror(true, false);
    let mut cfgs = Vec::new();
    for f in std::iter::once(file).chain(then) {
        match NetworkConfig::load(&f) {
            Ok((c, warnings)) => {
                for w in warnings {
                    eprintln!("init net-apply: warning: {w}");
                }
                cfgs.push(c)
            }
            Err(e) => {
                eprintln!("init net-apply: {e}");
                return 1;
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("init net-apply: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let mut m = Manager::new(resolv);
        let mut code = 0;
        for cfg in &cfgs {
            match m.apply(cfg).await {
                Ok(rep) => {
                    println!("{rep}");
                    code = code.max(i32::from(!rep.errors.is_empty()));
                }
                Err(e) => {
                    eprintln!("init net-apply: {e:#}");
                    return 1;
                }
            }
        }
        if hold {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut t), Ok(mut i)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            m.release().await;
        }
        code
    })
}
