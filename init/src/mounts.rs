//! The first boot duty: the kernel's virtual file systems and the tmpfs
//! directories (/proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp). A mount that is
//! already there is left alone; a failure is logged and the others carry on.

use nix::mount::{MsFlags, mount};
use std::path::Path;

struct Mount {
    what: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const MOUNTS: &[Mount] = &[
    Mount {
        what: "proc",
        target: "/proc",
        fstype: "proc",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    Mount {
        what: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    Mount {
        what: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    Mount {
        what: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("gid=5,mode=0620,ptmxmode=0666"),
    },
    Mount {
        what: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    Mount {
        what: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    Mount {
        what: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
];

/// Whether something is mounted at `target` (per /proc/self/mountinfo).
pub fn is_mountpoint(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(4) == Some(target))
        })
        .unwrap_or(false)
}

/// Mount everything; returns the problems (one line each).
pub fn mount_all() -> Vec<String> {
    let mut problems = Vec::new();
    for m in MOUNTS {
        if m.target != "/proc" && is_mountpoint(m.target) {
            continue;
        }
        if m.target == "/proc" && Path::new("/proc/self").exists() {
            continue;
        }
        if let Err(e) = std::fs::create_dir_all(m.target) {
            problems.push(format!("creating {}: {e}", m.target));
            continue;
        }
        if let Err(e) = mount(Some(m.what), m.target, Some(m.fstype), m.flags, m.data) {
            problems.push(format!("mounting {} on {}: {e}", m.fstype, m.target));
        }
    }
    // Compatibility links that programs expect.
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if !Path::new(link).exists() {
            let _ = std::os::unix::fs::symlink(to, link);
        }
    }
    problems
}
