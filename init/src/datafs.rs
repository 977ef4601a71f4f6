//! The data partition: found by its ext4 label (`LBDATA`), or, still blank, by its
//! GPT partition name (`LBDATA`) and then formatted with `mkfs.ext4`; when the disk
//! was enlarged the partition is extended ([`crate::gpt`]) and the file system is
//! grown with `e2fsck -f -p` and `resize2fs` before it is mounted at /data.

use crate::layout::DATA_LABEL;
use crate::reaper;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A block device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    pub name: String,
    pub dev: PathBuf,
    pub partname: Option<String>,
    pub partn: Option<u32>,
    /// The whole disk of a partition.
    pub disk: Option<String>,
    pub size: u64,
}

/// What the ext superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub label: String,
    pub size: u64,
}

/// Errors preparing /data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("no partition labelled {0} found")]
    NotFound(String),
    #[error("{0} holds data that is not an ext4 file system; not formatting it")]
    NotBlank(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("formatting {0}: {1}")]
    Mkfs(String, String),
    #[error("mounting {0} on {1}: {2}")]
    Mount(String, String, nix::errno::Errno),
}

/// Where to look and what to do.
#[derive(Debug, Clone)]
pub struct Settings {
    pub label: String,
    pub mountpoint: PathBuf,
    pub sys: PathBuf,
    pub dev: PathBuf,
    pub root: PathBuf,
    /// How long to wait for the partition to appear (drivers probe asynchronously).
    pub wait: Duration,
    /// Use this device instead of searching (tests).
    pub device: Option<PathBuf>,
    /// The disk holding the GPT and the partition's number, when not found in sysfs.
    pub disk: Option<(PathBuf, u32)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            label: DATA_LABEL.into(),
            mountpoint: PathBuf::from(crate::layout::DEFAULT_DATA_ROOT),
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            root: PathBuf::from("/"),
            wait: Duration::from_secs(10),
            device: None,
            disk: None,
        }
    }
}

/// What was done.
#[derive(Debug, Default)]
pub struct Mounted {
    pub device: String,
    pub formatted: bool,
    pub partition_grown: bool,
    pub fs_grown: bool,
}

impl Mounted {
    pub fn describe(&self) -> String {
        let mut s = format!("{} mounted", self.device);
        if self.formatted {
            s += ", formatted";
        }
        if self.partition_grown {
            s += ", partition grown";
        }
        if self.fs_grown {
            s += ", file system grown";
        }
        s
    }
}

fn read_attr(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Block devices under `sys/class/block`.
pub fn scan(sys: &Path, dev: &Path) -> Vec<BlockDev> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(sys.join("class/block")) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let base = e.path();
        let uevent = read_attr(&base.join("uevent")).unwrap_or_default();
        let field = |k: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .map(String::from)
        };
        let devname = field("DEVNAME").unwrap_or_else(|| name.clone());
        let partn = read_attr(&base.join("partition")).and_then(|s| s.parse().ok());
        let disk = partn.and_then(|_| {
            std::fs::canonicalize(&base)
                .ok()?
                .parent()?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        });
        let size = read_attr(&base.join("size"))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            * 512;
        out.push(BlockDev {
            dev: dev.join(&devname),
            name,
            partname: field("PARTNAME"),
            partn,
            disk,
            size,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Read an ext2/3/4 superblock, if there is one.
pub fn read_superblock(dev: &Path) -> std::io::Result<Option<Superblock>> {
    let mut f = std::fs::File::open(dev)?;
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(1024))?;
    f.read_exact(&mut sb)?;
    if sb[0x38..0x3A] != [0x53, 0xEF] {
        return Ok(None);
    }
    let le32 = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    let mut blocks = u64::from(le32(0x04));
    let incompat = le32(0x60);
    if incompat & 0x80 != 0 {
        blocks |= u64::from(le32(0x150)) << 32;
    }
    let block_size = 1024u64 << le32(0x18).min(16);
    let label_raw = &sb[0x78..0x88];
    let end = label_raw.iter().position(|b| *b == 0).unwrap_or(16);
    Ok(Some(Superblock {
        label: String::from_utf8_lossy(&label_raw[..end]).into_owned(),
        size: blocks * block_size,
    }))
}

/// Whether the start of the device is all zeros (no file system, nothing to lose).
pub fn is_blank(dev: &Path) -> std::io::Result<bool> {
    let mut f = std::fs::File::open(dev)?;
    let mut buf = vec![0u8; 128 * 1024];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(buf[..n].iter().all(|b| *b == 0))
}

fn find_program(root: &Path, names: &[&str]) -> Option<PathBuf> {
    for dir in ["usr/sbin", "sbin", "usr/bin", "bin"] {
        for n in names {
            let p = root.join(dir).join(n);
            if p.exists() {
                return Some(p);
            }
        }
    }
    None
}

/// Size in bytes of a block device or file.
pub fn device_size(p: &Path) -> std::io::Result<u64> {
    std::fs::File::open(p)?.seek(SeekFrom::End(0))
}

/// Find, format if blank, grow, mount.
pub async fn prepare_with(s: &Settings) -> Result<Mounted, DataError> {
    let deadline = Instant::now() + s.wait;
    let (bd, sb) = loop {
        if let Some(dev) = &s.device {
            let bd = BlockDev {
                name: dev.display().to_string(),
                dev: dev.clone(),
                partname: None,
                partn: None,
                disk: None,
                size: device_size(dev).unwrap_or(0),
            };
            let sb = read_superblock(dev).ok().flatten();
            break (bd, sb);
        }
        let devs = scan(&s.sys, &s.dev);
        let by_label = devs.iter().find_map(|d| match read_superblock(&d.dev) {
            Ok(Some(sb)) if sb.label == s.label => Some((d.clone(), Some(sb))),
            _ => None,
        });
        let found = by_label.or_else(|| {
            devs.iter()
                .find(|d| d.partname.as_deref() == Some(s.label.as_str()))
                .map(|d| (d.clone(), read_superblock(&d.dev).ok().flatten()))
        });
        if let Some(f) = found {
            break f;
        }
        if Instant::now() >= deadline {
            return Err(DataError::NotFound(s.label.clone()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let devname = bd.dev.display().to_string();
    let mut m = Mounted {
        device: devname.clone(),
        ..Default::default()
    };

    // Grow the partition first (the file system follows after mounting).
    let disk = match (&s.disk, bd.partn, bd.disk.as_deref()) {
        (Some((d, n)), _, _) => Some((d.clone(), *n, 512)),
        (None, Some(n), Some(disk)) => {
            let sector = read_attr(
                &s.sys
                    .join("class/block")
                    .join(disk)
                    .join("queue/logical_block_size"),
            )
            .and_then(|v| v.parse().ok())
            .unwrap_or(512);
            Some((s.dev.join(disk), n, sector))
        }
        _ => None,
    };
    if let Some((disk_dev, n, sector)) = disk {
        let size = device_size(&disk_dev).unwrap_or(0);
        match crate::gpt::grow_last(&disk_dev, n, size, sector) {
            Ok(Some(g)) => {
                m.partition_grown = true;
                match std::fs::File::open(&disk_dev) {
                    Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => {}
                    Ok(f) => {
                        if let Err(e) = crate::gpt::tell_kernel(&f, &g) {
                            crate::info!("data: telling the kernel about {devname}: {e}");
                        }
                    }
                    Err(e) => crate::info!("data: {}: {e}", disk_dev.display()),
                }
            }
            Ok(None) => {}
            Err(e) => crate::info!("data: not growing the partition: {e}"),
        }
    }

    if sb.is_none() {
        if !is_blank(&bd.dev).map_err(|e| DataError::Io(devname.clone(), e))? {
            return Err(DataError::NotBlank(devname));
        }
        let prog = find_program(&s.root, &["mkfs.ext4", "mke2fs"])
            .ok_or_else(|| DataError::Mkfs(devname.clone(), "mkfs.ext4/mke2fs not found".into()))?;
        let mut cmd = Command::new(prog);
        cmd.args(["-t", "ext4", "-q", "-F", "-L", &s.label, "-m", "1"])
            .arg(&bd.dev);
        let out = reaper::run(&mut cmd, Duration::from_secs(300))
            .await
            .map_err(|e| DataError::Mkfs(devname.clone(), e.to_string()))?;
        if !out.exit.success() {
            return Err(DataError::Mkfs(
                devname,
                format!("{}: {}", out.exit, out.stderr.trim()),
            ));
        }
        m.formatted = true;
    }

    // Grow the file system when the partition is larger (by more than 4 MiB), before
    // mounting: an offline resize needs nothing from the kernel but block writes.
    let part_size = device_size(&bd.dev).unwrap_or(bd.size);
    let fs_size = read_superblock(&bd.dev)
        .ok()
        .flatten()
        .map(|x| x.size)
        .unwrap_or(0);
    if fs_size > 0 && part_size > fs_size + 4 * 1024 * 1024 {
        match grow_fs(&s.root, &bd.dev).await {
            Ok(()) => m.fs_grown = true,
            Err(e) => crate::info!("data: file system not grown: {e}"),
        }
    }

    std::fs::create_dir_all(&s.mountpoint)
        .map_err(|e| DataError::Io(s.mountpoint.display().to_string(), e))?;
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some(&bd.dev),
        &s.mountpoint,
        Some("ext4"),
        MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|e| DataError::Mount(devname.clone(), s.mountpoint.display().to_string(), e))?;

    Ok(m)
}

/// `e2fsck -f -p` (required by resize2fs), then `resize2fs`.
async fn grow_fs(root: &Path, dev: &Path) -> Result<(), String> {
    let fsck = find_program(root, &["e2fsck", "fsck.ext4"]).ok_or("e2fsck not found")?;
    let mut cmd = Command::new(fsck);
    cmd.args(["-f", "-p"]).arg(dev);
    let out = reaper::run(&mut cmd, Duration::from_secs(600))
        .await
        .map_err(|e| e.to_string())?;
    // 0: clean, 1: errors corrected.
    if !matches!(out.exit, reaper::Exit::Code(0 | 1)) {
        return Err(format!("e2fsck: {}: {}", out.exit, out.stdout.trim()));
    }
    let resize = find_program(root, &["resize2fs"]).ok_or("resize2fs not found")?;
    let mut cmd = Command::new(resize);
    cmd.arg(dev);
    let out = reaper::run(&mut cmd, Duration::from_secs(600))
        .await
        .map_err(|e| e.to_string())?;
    if !out.exit.success() {
        return Err(format!("resize2fs: {}: {}", out.exit, out.stderr.trim()));
    }
    Ok(())
}

/// The appliance's /data.
pub async fn prepare(layout: &crate::layout::Layout) -> Result<Mounted, DataError> {
    prepare_with(&Settings {
        mountpoint: layout.data().to_path_buf(),
        ..Default::default()
    })
    .await
}

/// `init datafs --label L --mount DIR [--wait SECS] [--device DEV] [--disk DISK N]`:
/// the same steps on the host (tests).
pub fn cli(args: &[String]) -> i32 {
    let mut s = Settings::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--label" => s.label = it.next().cloned().unwrap_or(s.label),
            "--mount" => s.mountpoint = it.next().map(PathBuf::from).unwrap_or(s.mountpoint),
            "--device" => s.device = it.next().map(PathBuf::from),
            "--disk" => {
                let d = it.next().map(PathBuf::from);
                let n = it.next().and_then(|v| v.parse().ok());
                if let (Some(d), Some(n)) = (d, n) {
                    s.disk = Some((d, n));
                }
            }
            "--wait" => {
                s.wait = Duration::from_secs(it.next().and_then(|v| v.parse().ok()).unwrap_or(10))
            }
            _ => {}
        }
    }
    crate::log::set_mirror(true, false);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("init datafs: {e}");
            return 1;
        }
    };
    rt.block_on(async {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        reaper::set_events(tx);
        if let Err(e) = reaper::start() {
            eprintln!("init datafs: {e}");
        }
        match prepare_with(&s).await {
            Ok(m) => {
                println!("{}", m.describe());
                0
            }
            Err(e) => {
                eprintln!("init datafs: {e}");
                1
            }
        }
    })
}
