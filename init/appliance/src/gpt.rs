//! Reading a GUID partition table (UEFI 2.x, chapter 5): the one place the workspace
//! parses one. init grows the data partition with it, the update agent finds the
//! slot partitions on the disk (a block device on the appliance, an image file in the
//! tests) by their GPT names. The primary header and its entry array are checked
//! (signature, sizes, both CRC-32s) before anything is believed.

use std::io::{Read, Seek, SeekFrom};

const SIGNATURE: &[u8; 8] = b"EFI PART";

/// Why a table cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no GPT on the disk")]
    NoGpt,
    #[error("the GPT is damaged: {0}")]
    Damaged(&'static str),
}

/// One partition of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as Linux numbers partitions (`vda3`).
    pub number: u32,
    /// The GPT partition name (UTF-16 in the table).
    pub name: String,
    pub first_lba: u64,
    pub last_lba: u64,
}

impl Partition {
    /// Its first byte on the disk.
    pub fn offset(&self, sector: u64) -> u64 {
        self.first_lba * sector
    }

    /// Its length in bytes.
    pub fn len(&self, sector: u64) -> u64 {
        (self.last_lba + 1 - self.first_lba) * sector
    }
}

/// The primary GPT of a disk: the header and its entry array as they are on disk (for a
/// writer that changes them), and the partitions in use.
#[derive(Debug, Clone)]
pub struct Table {
    pub sector: u64,
    /// The primary header's sector (LBA 1).
    pub header: Vec<u8>,
    /// The header's own size (its CRC covers this many bytes).
    pub header_size: usize,
    /// The entry array, `count * entry_size` bytes.
    pub entries: Vec<u8>,
    pub entry_size: usize,
    pub entries_lba: u64,
    pub backup_lba: u64,
    pub last_usable: u64,
    pub partitions: Vec<Partition>,
}

/// CRC-32 (IEEE 802.3), as GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

pub fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

pub fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl Table {
    /// Reads the primary table of `disk`, whose logical sectors are `sector` bytes.
    pub fn read(disk: &mut (impl Read + Seek), sector: u64) -> Result<Table, GptError> {
        if !(512..=65536).contains(&sector) || !sector.is_power_of_two() {
            return Err(GptError::Damaged("sector size"));
        }
        let ss = sector as usize;
        let mut header = vec![0u8; ss];
        disk.seek(SeekFrom::Start(sector))?;
        disk.read_exact(&mut header)?;
        if &header[..8] != SIGNATURE {
            return Err(GptError::NoGpt);
        }
        let header_size = u32_at(&header, 12) as usize;
        if !(92..=ss).contains(&header_size) {
            return Err(GptError::Damaged("header size"));
        }
        let mut check = header[..header_size].to_vec();
        check[16..20].fill(0);
        if crc32(&check) != u32_at(&header, 16) {
            return Err(GptError::Damaged("header checksum"));
        }
        let entries_lba = u64_at(&header, 72);
        let count = u32_at(&header, 80) as usize;
        let entry_size = u32_at(&header, 84) as usize;
        if entry_size < 128 || count == 0 || count > 1024 {
            return Err(GptError::Damaged("entry table"));
        }
        let mut entries = vec![0u8; count * entry_size];
        disk.seek(SeekFrom::Start(entries_lba * sector))?;
        disk.read_exact(&mut entries)?;
        if crc32(&entries) != u32_at(&header, 88) {
            return Err(GptError::Damaged("entry checksum"));
        }
        let partitions = (0..count)
            .filter_map(|i| {
                let e = &entries[i * entry_size..(i + 1) * entry_size];
                if e[..16].iter().all(|b| *b == 0) {
                    return None; // unused entry (type GUID zero)
                }
                let units: Vec<u16> = e[56..128]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|u| *u != 0)
                    .collect();
                Some(Partition {
                    number: i as u32 + 1,
                    name: String::from_utf16_lossy(&units),
                    first_lba: u64_at(e, 32),
                    last_lba: u64_at(e, 40),
                })
            })
            .collect();
        Ok(Table {
            sector,
            backup_lba: u64_at(&header, 32),
            last_usable: u64_at(&header, 48),
            header,
            header_size,
            entries,
            entry_size,
            entries_lba,
            partitions,
        })
    }

    /// The partition with GPT name `name`.
    pub fn by_name(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk image with a GPT made by the test itself (as sfdisk lays it out).
    pub(crate) fn disk(parts: &[(&str, u64, u64)]) -> std::io::Cursor<Vec<u8>> {
        let sector = 512usize;
        let mut d = vec![0u8; 2048 * sector];
        let mut entries = vec![0u8; 128 * 128];
        for (i, (name, first, last)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&[0xAF; 16]);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        let mut h = vec![0u8; 92];
        h[..8].copy_from_slice(SIGNATURE);
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[32..40].copy_from_slice(&2047u64.to_le_bytes());
        h[48..56].copy_from_slice(&2000u64.to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&entries).to_le_bytes());
        let c = crc32(&h);
        h[16..20].copy_from_slice(&c.to_le_bytes());
        d[sector..sector + 92].copy_from_slice(&h);
        d[2 * sector..2 * sector + entries.len()].copy_from_slice(&entries);
        std::io::Cursor::new(d)
    }

    #[test]
    fn partitions_are_found_by_name_with_their_extent() {
        let mut d = disk(&[("esp", 40, 99), ("slot_a", 100, 199), ("slot_b", 200, 299)]);
        let t = Table::read(&mut d, 512).unwrap();
        let b = t.by_name("slot_b").unwrap();
        assert_eq!((b.number, b.first_lba, b.last_lba), (3, 200, 299));
        assert_eq!((b.offset(512), b.len(512)), (200 * 512, 100 * 512));
        assert!(t.by_name("LBDATA").is_none());
    }

    #[test]
    fn a_damaged_table_is_not_believed() {
        let mut d = disk(&[("esp", 40, 99)]);
        d.get_mut()[2 * 512 + 40] ^= 1; // an entry byte: the entry CRC no longer matches
        assert!(matches!(
            Table::read(&mut d, 512),
            Err(GptError::Damaged("entry checksum"))
        ));
        let mut blank = std::io::Cursor::new(vec![0u8; 4096]);
        assert!(matches!(Table::read(&mut blank, 512), Err(GptError::NoGpt)));
    }
}
