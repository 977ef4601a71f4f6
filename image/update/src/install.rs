//! Installing verified parts into the slot that does not run:
//!
//! 1. the slot's file system is made as an image file (`mke2fs -d`, as image/build
//!    makes the slots), the size of the slot's partition;
//! 2. it is written over the partition (found by its GPT name on the disk), synced,
//!    and read back from the disk to compare SHA-256s;
//! 3. only then does the slot get a trial boot: `bootenv try SLOT TRIES`, one in-place
//!    write of GRUB's environment block.
//!
//! The running slot, its good mark and /data are never written. A power cut before step
//! 3 leaves the boot loader pointing at the running slot (the half-written slot is never
//! booted); after it, GRUB boots the new slot with its tries, and falls back to the good
//! slot when they run out.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use ring::digest::{Context, SHA256};

use crate::manifest::hex;
use crate::slots;
use appliance::gpt::Table;

/// The programs an install runs (the image's paths by default).
#[derive(Debug, Clone)]
pub struct Tools {
    pub mke2fs: PathBuf,
    pub bootenv: PathBuf,
}

impl Default for Tools {
    fn default() -> Tools {
        Tools {
            mke2fs: PathBuf::from("/usr/sbin/mke2fs"),
            bootenv: PathBuf::from("/usr/sbin/bootenv"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot find the disk with the slots: {0}")]
    NoDisk(String),
    #[error("cannot read the partition table of {0}: {1}")]
    Table(String, appliance::gpt::GptError),
    #[error("{0} has no partition named {1}")]
    NoSlot(String, String),
    #[error("`{0}` is not a slot (a or b)")]
    NotASlot(String),
    #[error("the new system ({0} bytes) does not fit slot {1} ({2} bytes)")]
    TooLarge(u64, String, u64),
    #[error("cannot make slot {0}'s file system: {1}")]
    Mkfs(String, String),
    #[error("cannot write slot {0}: {1}")]
    Write(String, io::Error),
    #[error(
        "slot {0} reads back differently from what was written: the disk is not reliable; the slot is not used"
    )]
    ReadBack(String),
    #[error("cannot give slot {0} its trial boot: {1}")]
    Flip(String, String),
}

/// The whole disk that holds the slots: a block device on the appliance, an image file
/// in the tests.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub sector: u64,
}

impl Disk {
    /// A disk image file or device given by path.
    pub fn at(path: &Path) -> Disk {
        let sector = path
            .file_name()
            .and_then(|n| {
                std::fs::read_to_string(format!(
                    "/sys/class/block/{}/queue/logical_block_size",
                    n.to_string_lossy()
                ))
                .ok()
            })
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(512);
        Disk {
            path: path.to_path_buf(),
            sector,
        }
    }

    /// The disk of this system whose partition is named like slot A (through sysfs, as
    /// bootenv finds the ESP).
    pub fn of_this_system(sys_block: &Path, dev: &Path) -> Result<Disk, InstallError> {
        let entries = std::fs::read_dir(sys_block)
            .map_err(|e| InstallError::NoDisk(format!("{}: {e}", sys_block.display())))?;
        for entry in entries.flatten() {
            let uevent = std::fs::read_to_string(entry.path().join("uevent")).unwrap_or_default();
            if !uevent
                .lines()
                .any(|l| l == format!("PARTNAME={}", slots::SLOT_A_NAME))
            {
                continue;
            }
            // /sys/class/block/vda3 -> .../block/vda/vda3: the disk is the parent
            let real = std::fs::canonicalize(entry.path())
                .map_err(|e| InstallError::NoDisk(e.to_string()))?;
            if let Some(disk) = real.parent().and_then(|p| p.file_name()) {
                return Ok(Disk::at(&dev.join(disk)));
            }
        }
        Err(InstallError::NoDisk(format!(
            "no partition named {} in {}",
            slots::SLOT_A_NAME,
            sys_block.display()
        )))
    }
}

/// The slot the running system was booted from (`lb.slot=` on the kernel command line).
pub fn booted_slot(cmdline: &str) -> Option<&'static str> {
    let prefix = format!("{}=", slots::KERNEL_ARG);
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(prefix.as_str()))
        .next_back()
        .and_then(|s| ["a", "b"].into_iter().find(|x| *x == s))
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub slot: String,
    pub bytes_written: u64,
}

/// Steps of an install, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Building,
    Writing { done: u64, total: u64 },
    Checking,
    Flipping,
}

/// Installs the files in `parts` (vmlinuz, initrd.img, manifest.txt) into `slot` of
/// `disk`, then gives it `tries` trial boots. `work` holds the file-system image
/// meanwhile (on /data: the RAM of the appliance is for its services).
pub fn install(
    disk: &Disk,
    slot: &str,
    parts: &Path,
    work: &Path,
    tools: &Tools,
    tries: u8,
    mut progress: impl FnMut(Step),
) -> Result<Installed, InstallError> {
    let name = slots::partition_name(slot).ok_or_else(|| InstallError::NotASlot(slot.into()))?;
    let disk_name = disk.path.display().to_string();
    let mut file = File::options()
        .read(true)
        .write(true)
        .open(&disk.path)
        .map_err(|e| InstallError::NoDisk(format!("{disk_name}: {e}")))?;
    let table = Table::read(&mut file, disk.sector)
        .map_err(|e| InstallError::Table(disk_name.clone(), e))?;
    let part = table
        .by_name(name)
        .ok_or_else(|| InstallError::NoSlot(disk_name.clone(), name.into()))?
        .clone();
    let (offset, len) = (part.offset(disk.sector), part.len(disk.sector));
    let needed: u64 = std::fs::read_dir(parts)
        .map_err(|e| InstallError::Write(slot.into(), e))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    // ext2 takes some of the space for itself
    if needed + needed / 16 + (4 << 20) > len {
        return Err(InstallError::TooLarge(needed, slot.into(), len));
    }

    progress(Step::Building);
    std::fs::create_dir_all(work).map_err(|e| InstallError::Write(slot.into(), e))?;
    let image = work.join(format!("{name}.ext2"));
    let _ = std::fs::remove_file(&image);
    let out = Command::new(&tools.mke2fs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext2",
            "-L",
            name,
            "-m",
            "0",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(parts)
        .arg(&image)
        .arg(format!("{}k", len / 1024))
        .output()
        .map_err(|e| InstallError::Mkfs(slot.into(), format!("{}: {e}", tools.mke2fs.display())))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&image);
        return Err(InstallError::Mkfs(
            slot.into(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let result = write_and_check(&mut file, &image, offset, len, slot, &mut progress);
    let _ = std::fs::remove_file(&image);
    let written = result?;

    progress(Step::Flipping);
    let out = Command::new(&tools.bootenv)
        .arg("--device")
        .arg(&disk.path)
        .args(["try", slot, &tries.to_string()])
        .output()
        .map_err(|e| {
            InstallError::Flip(slot.into(), format!("{}: {e}", tools.bootenv.display()))
        })?;
    if !out.status.success() {
        return Err(InstallError::Flip(
            slot.into(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(Installed {
        slot: slot.into(),
        bytes_written: written,
    })
}

/// Writes `image` at `offset` of the disk (the whole partition, `len` bytes), syncs,
/// drops the cached pages and reads the range back from the disk to compare.
fn write_and_check(
    disk: &mut File,
    image: &Path,
    offset: u64,
    len: u64,
    slot: &str,
    progress: &mut impl FnMut(Step),
) -> Result<u64, InstallError> {
    let err = |e| InstallError::Write(slot.into(), e);
    let mut src = File::open(image).map_err(err)?;
    let size = src.metadata().map_err(err)?.len().min(len);
    disk.seek(SeekFrom::Start(offset)).map_err(err)?;
    let mut written = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < size {
        let want = ((size - done) as usize).min(buf.len());
        src.read_exact(&mut buf[..want]).map_err(err)?;
        disk.write_all(&buf[..want]).map_err(err)?;
        written.update(&buf[..want]);
        done += want as u64;
        progress(Step::Writing { done, total: size });
    }
    disk.sync_all().map_err(err)?;

    progress(Step::Checking);
    // SAFETY: posix_fadvise on a file descriptor this function owns (through `disk`),
    // with a range inside the file; it only advises the page cache.
    unsafe {
        libc::posix_fadvise(
            disk.as_raw_fd(),
            offset as libc::off_t,
            size as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
    disk.seek(SeekFrom::Start(offset)).map_err(err)?;
    let mut read = Context::new(&SHA256);
    let mut left = size;
    while left > 0 {
        let want = (left as usize).min(buf.len());
        disk.read_exact(&mut buf[..want]).map_err(err)?;
        read.update(&buf[..want]);
        left -= want as u64;
    }
    if hex(read.finish().as_ref()) != hex(written.finish().as_ref()) {
        return Err(InstallError::ReadBack(slot.into()));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_booted_slot_comes_from_the_kernel_command_line() {
        assert_eq!(booted_slot("console=ttyS0 lb.slot=b panic=5"), Some("b"));
        assert_eq!(
            booted_slot("lb.slot=a lb.slot=b"),
            Some("b"),
            "the last one counts, as in the kernel"
        );
        assert_eq!(booted_slot("lb.slot=c"), None);
        assert_eq!(booted_slot("quiet"), None);
    }
}
