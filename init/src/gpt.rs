//! A small GPT editor for one job: when the disk was enlarged, move the backup GPT
//! to the new end of the disk and extend the last partition (the data partition)
//! into the new space, keeping 1 MiB alignment. The backup copy is written first and
//! the primary last, each synced, so a power cut leaves a valid table. The table is
//! read (and checked) by `appliance::gpt`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

const ALIGN_BYTES: u64 = 1024 * 1024;

pub use appliance::gpt::crc32;
use appliance::gpt::{self as table, Table, u64_at};

/// Errors reading or writing the table.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("no GPT on {0}")]
    NoGpt(String),
    #[error("GPT on {0} is damaged: {1}")]
    Damaged(String, &'static str),
    #[error("partition {1} on {0} is not the last one; not growing it")]
    NotLast(String, u32),
    #[error("partition {1} not found on {0}")]
    NoPartition(String, u32),
}

fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// A partition after growing: its number (1-based), first and last sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    pub number: u32,
    pub first_lba: u64,
    pub last_lba: u64,
    pub sector: u64,
}

/// Grow partition `number` (1-based) to the end of `disk` when the disk is larger
/// than the table says. `size` is the disk's size in bytes, `sector` its logical
/// sector size. Returns the new extent, or None when there was nothing to do.
pub fn grow_last(
    disk: &Path,
    number: u32,
    size: u64,
    sector: u64,
) -> Result<Option<Grown>, GptError> {
    let name = disk.display().to_string();
    let io = |e| GptError::Io(name.clone(), e);
    let mut f = File::options()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io)?;
    let t = match Table::read(&mut f, sector) {
        Ok(t) => t,
        Err(table::GptError::Io(e)) => return Err(io(e)),
        Err(table::GptError::NoGpt) => return Err(GptError::NoGpt(name)),
        Err(table::GptError::Damaged(what)) => return Err(GptError::Damaged(name, what)),
    };
    let total = size / sector;
    if total < 128 {
        return Ok(None);
    }
    let (hdr, hsize, mut entries, esize) = (t.header, t.header_size, t.entries, t.entry_size);
    let (backup_lba, last_usable, entries_lba) = (t.backup_lba, t.last_usable, t.entries_lba);
    let count = entries.len() / esize;
    let entry_sectors = (entries.len() as u64).div_ceil(sector);
    let new_backup = total - 1;
    let Some(new_last_usable) = new_backup.checked_sub(entry_sectors + 1) else {
        return Ok(None);
    };
    if backup_lba == new_backup || new_last_usable <= last_usable {
        return Ok(None);
    }
    // The partition must exist and end after every other one.
    let idx = (number as usize).checked_sub(1).filter(|i| *i < count);
    let Some(idx) = idx else {
        return Err(GptError::NoPartition(name, number));
    };
    let e = |i: usize| &entries[i * esize..(i + 1) * esize];
    if e(idx)[..16].iter().all(|b| *b == 0) {
        return Err(GptError::NoPartition(name, number));
    }
    let first = u64_at(e(idx), 32);
    let last = u64_at(e(idx), 40);
    for i in 0..count {
        if i != idx && !e(i)[..16].iter().all(|b| *b == 0) && u64_at(e(i), 40) > last {
            return Err(GptError::NotLast(name, number));
        }
    }
    let align = (ALIGN_BYTES / sector).max(1);
    let new_last = ((new_last_usable + 1) / align * align).saturating_sub(1);
    if new_last <= last {
        return Ok(None);
    }
    put_u64(&mut entries[idx * esize..], 40, new_last);
    let ecrc = crc32(&entries);

    let mut primary = hdr.clone();
    put_u64(&mut primary, 32, new_backup);
    put_u64(&mut primary, 48, new_last_usable);
    put_u32(&mut primary, 88, ecrc);
    seal(&mut primary, hsize);
    let mut backup = primary.clone();
    put_u64(&mut backup, 24, new_backup);
    put_u64(&mut backup, 32, 1);
    put_u64(&mut backup, 72, new_backup - entry_sectors);
    seal(&mut backup, hsize);

    let write_at = |f: &mut File, lba: u64, data: &[u8]| -> Result<(), GptError> {
        f.seek(SeekFrom::Start(lba * sector)).map_err(io)?;
        f.write_all(data).map_err(io)?;
        f.sync_data().map_err(io)
    };
    write_at(&mut f, new_backup - entry_sectors, &entries)?;
    write_at(&mut f, new_backup, &backup)?;
    write_at(&mut f, entries_lba, &entries)?;
    write_at(&mut f, 1, &primary)?;
    // Protective MBR: its 0xEE entry covers the whole disk (up to 2^32-1 sectors).
    let mut mbr = [0u8; 512];
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    f.read_exact(&mut mbr).map_err(io)?;
    if mbr[510..512] == [0x55, 0xAA] && mbr[446 + 4] == 0xEE {
        let len = (total - 1).min(u64::from(u32::MAX)) as u32;
        mbr[458..462].copy_from_slice(&len.to_le_bytes());
        write_at(&mut f, 0, &mbr)?;
    }
    Ok(Some(Grown {
        number,
        first_lba: first,
        last_lba: new_last,
        sector,
    }))
}

fn seal(h: &mut [u8], hsize: usize) {
    put_u32(h, 16, 0);
    let c = crc32(&h[..hsize]);
    put_u32(h, 16, c);
}

/// Tell the kernel that partition `g.number` of the open disk `disk` changed size
/// (BLKPG_RESIZE_PARTITION works while the disk is in use).
pub fn tell_kernel(disk: &File, g: &Grown) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct BlkpgPartition {
        start: libc::c_longlong,
        length: libc::c_longlong,
        pno: libc::c_int,
        devname: [libc::c_char; 64],
        volname: [libc::c_char; 64],
    }
    #[repr(C)]
    struct BlkpgIoctlArg {
        op: libc::c_int,
        flags: libc::c_int,
        datalen: libc::c_int,
        data: *mut libc::c_void,
    }
    const BLKPG: libc::c_ulong = 0x1269;
    const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
    let mut part = BlkpgPartition {
        start: (g.first_lba * g.sector) as libc::c_longlong,
        length: ((g.last_lba - g.first_lba + 1) * g.sector) as libc::c_longlong,
        pno: g.number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG takes a pointer to a blkpg_ioctl_arg whose data points to a
    // blkpg_partition; both live on this stack frame for the duration of the call.
    let r = unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG, &mut arg as *mut BlkpgIoctlArg) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_reference() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
