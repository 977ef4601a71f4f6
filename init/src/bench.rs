//! `init bench`: how long init takes from its start to "services ready" with a
//! trivial service set, and how much memory it holds. Runs a second init (not as
//! PID 1, no mounts, modules or network) on a temporary data root and prints the
//! numbers; the targets are under 100 ms and under 8 MB RSS.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn run(args: &[String]) -> i32 {
    let n: usize = args
        .windows(2)
        .find(|w| w[0] == "--services")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("init-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(dir.join("data")) {
        eprintln!("init bench: {e}");
        return 1;
    }
    let mut services = String::new();
    for i in 0..n {
        let dep = if i == 0 {
            String::new()
        } else {
            format!("\"s{}\"", i - 1)
        };
        services += &format!(
            "[[service]]\nname = \"s{i}\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"echo ready; exec sleep 1000\"]\ndepends_on = [{dep}]\n[service.ready]\nline = \"ready\"\n\n"
        );
    }
    let file = dir.join("services.toml");
    if let Err(e) = std::fs::write(&file, services) {
        eprintln!("init bench: {e}");
        return 1;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("init bench: {e}");
            return 1;
        }
    };
    let t0 = Instant::now();
    let child = Command::new(exe)
        .arg("boot")
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--run")
        .arg(dir.join("run"))
        .arg("--services")
        .arg(&file)
        .args([
            "--console",
            "none",
            "--no-mounts",
            "--no-modules",
            "--no-network",
        ])
        .args(["--exit-on-shutdown"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("init bench: {e}");
            return 1;
        }
    };
    let mut own_ms = None;
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("services ready in ").nth(1) {
                own_ms = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok());
                break;
            }
        }
    }
    let wall = t0.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let rss = status_kb(child.id(), "VmRSS:");
    let hwm = status_kb(child.id(), "VmHWM:");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    match own_ms {
        Some(ms) => {
            println!(
                "services ready: {ms} ms after init's start ({n} services in a dependency chain; {:.1} ms wall from spawn)",
                wall.as_secs_f64() * 1000.0
            );
            println!(
                "init RSS: {:.1} MB (peak {:.1} MB)",
                rss.unwrap_or(0) as f64 / 1024.0,
                hwm.unwrap_or(0) as f64 / 1024.0
            );
            println!("targets: under 100 ms, under 8 MB");
            0
        }
        None => {
            eprintln!("init bench: init never reported services ready");
            1
        }
    }
}
