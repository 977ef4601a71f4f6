//! `bootenv`: the appliance's view of GRUB's environment block (`grub/grubenv` on the
//! EFI system partition), which holds the A/B boot state read by `image/grub/grub.cfg`:
//!
//! - `boot_slot`  (`a`|`b`) the slot GRUB boots,
//! - `boot_tries` empty when `boot_slot` is known good, else the boots it has left,
//! - `good_slot`  (`a`|`b`) the last slot that came up healthy.
//!
//! These names, the slots, the defaults, the limit on tries, the ESP's name and the
//! kernel argument `lb.slot=` come from `image/slots.conf`, compiled in (`slots.rs`).
//!
//! The block is rewritten in place, 1024 bytes at the offset where it already is,
//! exactly as GRUB's `save_env` does: the FAT file system is never mounted nor changed,
//! so a power cut can at worst leave the old or the new block, and GRUB treats a torn
//! block as absent (boot slot A defaults). Used as init's mark-good hook (installed as
//! `/usr/lib/init/mark-good`), by the update agent (`bootenv try b 3`), and on the
//! build machine against a disk image (`bootenv --device target/image/medlb.raw show`).
//!
//! Usage:
//!   bootenv [--device PATH] show
//!   bootenv [--device PATH] mark-good        (also what running it as `mark-good` does)
//!   bootenv [--device PATH] try SLOT [TRIES] (default UPDATE_TRIES of slots.conf, 3)
//!   bootenv [--device PATH] set KEY=VALUE...
//! PATH is a whole disk (GPT; its partition named `esp` is used) or the ESP itself;
//! by default the partition named `esp` is found through /sys/class/block.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod slots;
use slots::{BOOT_SLOT, BOOT_TRIES, DEFAULT_BOOT_SLOT, ESP_NAME, GOOD_SLOT, MAX_TRIES};

const BLOCK_SIZE: usize = 1024;
const SIGNATURE: &[u8] = b"# GRUB Environment Block\n";
const SECTOR: u64 = 512;

/// The parsed environment block: variables in their order in the block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvBlock {
    /// Comment lines (grub-editenv writes a warning line), kept as they are.
    comments: Vec<String>,
    vars: Vec<(String, String)>,
}

impl EnvBlock {
    /// Parses a 1024-byte block; `None` when it is not a GRUB environment block.
    pub fn parse(block: &[u8]) -> Option<EnvBlock> {
        if block.len() != BLOCK_SIZE || !block.starts_with(SIGNATURE) {
            return None;
        }
        let body = &block[SIGNATURE.len()..];
        let (mut vars, mut comments) = (Vec::new(), Vec::new());
        let mut rest = body;
        while !rest.is_empty() && !rest.iter().all(|&b| b == b'#') {
            let end = rest.iter().position(|&b| b == b'\n')?;
            let line = std::str::from_utf8(&rest[..end]).ok()?;
            rest = &rest[end + 1..];
            if line.starts_with('#') {
                comments.push(line.to_string());
                continue;
            }
            let (k, v) = line.split_once('=')?;
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return None;
            }
            vars.push((k.to_string(), unescape(v)));
        }
        Some(EnvBlock { comments, vars })
    }

    /// The 1024 bytes of the block, padded with `#` as GRUB does.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let mut out = SIGNATURE.to_vec();
        for c in &self.comments {
            out.extend_from_slice(c.as_bytes());
            out.push(b'\n');
        }
        for (k, v) in &self.vars {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(escape(v).as_bytes());
            out.push(b'\n');
        }
        if out.len() > BLOCK_SIZE {
            return Err("the variables do not fit the 1024-byte environment block".into());
        }
        out.resize(BLOCK_SIZE, b'#');
        Ok(out)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, key: &str, value: &str) {
        match self.vars.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.vars.push((key.to_string(), value.to_string())),
        }
    }

    /// Marks `booted` good: the slot GRUB was asked to boot came up, so its trial
    /// ends. Returns a sentence saying what changed (or why nothing did).
    pub fn mark_good(&mut self, booted: &str) -> String {
        let boot_slot = self.get(BOOT_SLOT).unwrap_or(DEFAULT_BOOT_SLOT).to_string();
        if booted != boot_slot {
            return format!(
                "running slot {booted}, but the boot loader's slot is {boot_slot}: left as it is"
            );
        }
        let was = self.get(BOOT_TRIES).unwrap_or("").to_string();
        if was.is_empty() && self.get(GOOD_SLOT) == Some(booted) {
            return format!("slot {booted} already marked good");
        }
        self.set(GOOD_SLOT, booted);
        self.set(BOOT_TRIES, "");
        format!("slot {booted} marked good")
    }

    /// Puts `slot` on trial with `tries` boots before GRUB falls back to the good slot.
    pub fn try_slot(&mut self, slot: &str, tries: u8) -> Result<(), String> {
        if !slots::is_slot(slot) {
            let slots = slots::SLOTS.replace(' ', ", ");
            return Err(format!("slot must be one of {slots}, not {slot:?}"));
        }
        if !(1..=MAX_TRIES).contains(&tries) {
            return Err(format!("tries must be 1 to {MAX_TRIES}, not {tries}"));
        }
        self.set(BOOT_SLOT, slot);
        self.set(BOOT_TRIES, &tries.to_string());
        Ok(())
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unescape(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The slot this system was booted from (`lb.slot=` on the kernel command line).
fn booted_slot(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(slots::KERNEL_ARG)?.strip_prefix('='))
        .map(str::to_string)
}

/// The byte range of the partition named `esp` when `dev` starts with a GPT, else the
/// whole of `dev`.
fn esp_range(dev: &mut File) -> io::Result<(u64, u64)> {
    let len = dev.seek(SeekFrom::End(0))?;
    let mut hdr = [0u8; 512];
    dev.seek(SeekFrom::Start(SECTOR))?;
    if dev.read_exact(&mut hdr).is_err() || &hdr[..8] != b"EFI PART" {
        return Ok((0, len));
    }
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let (lba, count, size) = (
        u64_at(&hdr, 72),
        u32_at(&hdr, 80),
        u32_at(&hdr, 84) as usize,
    );
    let mut table = vec![0u8; count as usize * size];
    dev.seek(SeekFrom::Start(lba * SECTOR))?;
    dev.read_exact(&mut table)?;
    for e in table.chunks(size) {
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        if String::from_utf16_lossy(&name) == ESP_NAME {
            let (first, last) = (u64_at(e, 32), u64_at(e, 40));
            return Ok((first * SECTOR, (last + 1) * SECTOR));
        }
    }
    Err(io::Error::other("the disk has no partition named esp"))
}

/// Finds the environment block: every 512-byte-aligned offset of the range is a
/// candidate, the first one holding a valid block wins.
fn find_block(dev: &mut File) -> io::Result<(u64, EnvBlock)> {
    let (start, end) = esp_range(dev)?;
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK + BLOCK_SIZE];
    let mut pos = start;
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        dev.seek(SeekFrom::Start(pos))?;
        let mut got = 0;
        while got < want {
            match dev.read(&mut buf[got..want])? {
                0 => break,
                n => got += n,
            }
        }
        let mut off = 0;
        while off + BLOCK_SIZE <= got {
            if buf[off..].starts_with(SIGNATURE)
                && let Some(env) = EnvBlock::parse(&buf[off..off + BLOCK_SIZE])
            {
                return Ok((pos + off as u64, env));
            }
            off += SECTOR as usize;
        }
        if got < want || got < buf.len() {
            break;
        }
        pos += CHUNK as u64;
    }
    Err(io::Error::other("no GRUB environment block found"))
}

/// The partition named `esp`, from the GPT names the kernel shows in sysfs.
fn find_esp_device() -> io::Result<PathBuf> {
    for entry in fs::read_dir("/sys/class/block")? {
        let entry = entry?;
        let uevent = fs::read_to_string(entry.path().join("uevent")).unwrap_or_default();
        if uevent.lines().any(|l| l == format!("PARTNAME={ESP_NAME}"))
            && let Some(dev) = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))
        {
            return Ok(Path::new("/dev").join(dev));
        }
    }
    Err(io::Error::other("no partition named esp"))
}

fn run(args: &[String], argv0: &str) -> Result<(), String> {
    let mut args = args.to_vec();
    let mut device = None;
    if args.first().map(String::as_str) == Some("--device") {
        if args.len() < 2 {
            return Err("--device needs a path".into());
        }
        device = Some(PathBuf::from(args.remove(1)));
        args.remove(0);
    }
    let cmd = if argv0 == "mark-good" {
        "mark-good".to_string()
    } else {
        args.first()
            .cloned()
            .ok_or("usage: bootenv [--device PATH] show|mark-good|try SLOT [TRIES]|set K=V...")?
    };
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let device = match device {
        Some(d) => d,
        None => find_esp_device().map_err(|e| format!("finding the ESP: {e}"))?,
    };
    let writable = cmd != "show";
    let mut dev = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(&device)
        .map_err(|e| format!("{}: {e}", device.display()))?;
    let (offset, mut env) =
        find_block(&mut dev).map_err(|e| format!("{}: {e}", device.display()))?;
    match cmd.as_str() {
        "show" => {
            for (k, v) in &env.vars {
                println!("{k}={v}");
            }
            return Ok(());
        }
        "mark-good" => {
            let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
            let Some(booted) = booted_slot(&cmdline) else {
                let arg = slots::KERNEL_ARG;
                println!("mark-good: not booted from a slot (no {arg}=): nothing to do");
                return Ok(());
            };
            println!("mark-good: {}", env.mark_good(&booted));
        }
        "try" => {
            let slot = rest.first().ok_or(format!(
                "try needs a slot ({})",
                slots::SLOTS.replace(' ', " or ")
            ))?;
            let tries = match rest.get(1) {
                Some(t) => t.parse().map_err(|_| format!("tries: not a number: {t}"))?,
                None => slots::UPDATE_TRIES,
            };
            env.try_slot(slot, tries)?;
        }
        "set" => {
            for kv in &rest {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or(format!("{kv}: expected KEY=VALUE"))?;
                env.set(k, v);
            }
        }
        other => return Err(format!("unknown command {other}")),
    }
    let bytes = env.to_bytes()?;
    dev.seek(SeekFrom::Start(offset))
        .and_then(|_| dev.write_all(&bytes))
        .and_then(|_| dev.sync_all())
        .map_err(|e| format!("writing {}: {e}", device.display()))?;
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let argv0 = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|a| a.to_str())
        .unwrap_or("bootenv")
        .to_string();
    match run(&argv[1..], &argv0) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{argv0}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(vars: &str) -> Vec<u8> {
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(vars.as_bytes());
        b.resize(BLOCK_SIZE, b'#');
        b
    }

    #[test]
    fn round_trip() {
        let b = block("boot_slot=b\nboot_tries=2\ngood_slot=a\n");
        let env = EnvBlock::parse(&b).unwrap();
        assert_eq!(env.get("boot_slot"), Some("b"));
        assert_eq!(env.to_bytes().unwrap(), b);
    }

    #[test]
    fn keeps_grub_editenv_comment() {
        let b = block(
            "# WARNING: Do not edit this file by tools other than grub-editenv!!!\nboot_slot=a\n",
        );
        let mut env = EnvBlock::parse(&b).unwrap();
        assert_eq!(env.get("boot_slot"), Some("a"));
        assert_eq!(env.to_bytes().unwrap(), b);
        env.set("boot_tries", "3");
        let again = EnvBlock::parse(&env.to_bytes().unwrap()).unwrap();
        assert_eq!(again.get("boot_tries"), Some("3"));
        assert_eq!(again.comments.len(), 1);
    }

    #[test]
    fn rejects_what_is_not_a_block() {
        assert!(EnvBlock::parse(&block("no equals sign\n")).is_none());
        let mut torn = block("boot_slot=a\n");
        torn[1000] = 0;
        assert!(EnvBlock::parse(&torn).is_none());
        assert!(EnvBlock::parse(&[b'#'; BLOCK_SIZE]).is_none());
    }

    #[test]
    fn mark_good_ends_the_trial_of_the_booted_slot_only() {
        let mut env = EnvBlock::parse(&block("boot_slot=b\nboot_tries=1\ngood_slot=a\n")).unwrap();
        assert!(env.mark_good("a").contains("left as it is"));
        assert_eq!(env.get("boot_tries"), Some("1"));
        assert_eq!(env.mark_good("b"), "slot b marked good");
        assert_eq!(env.get("boot_tries"), Some(""));
        assert_eq!(env.get("good_slot"), Some("b"));
    }

    #[test]
    fn try_slot_validates() {
        let mut env = EnvBlock::parse(&block("")).unwrap();
        assert!(env.try_slot("c", 3).is_err());
        assert!(env.try_slot("b", 0).is_err());
        env.try_slot("b", 3).unwrap();
        assert_eq!(env.get("boot_tries"), Some("3"));
    }

    #[test]
    fn try_slot_limits_come_from_slots_conf() {
        let mut env = EnvBlock::parse(&block("")).unwrap();
        assert!(env.try_slot("b", MAX_TRIES).is_ok());
        assert!(env.try_slot("b", MAX_TRIES + 1).is_err());
        for s in slots::SLOTS.split(' ') {
            env.try_slot(s, 1).unwrap();
            assert_eq!(env.get(BOOT_SLOT), Some(s));
        }
    }

    #[test]
    fn mark_good_of_an_empty_block_uses_the_default_slot() {
        let mut env = EnvBlock::parse(&block("")).unwrap();
        assert_eq!(
            env.mark_good(DEFAULT_BOOT_SLOT),
            format!("slot {DEFAULT_BOOT_SLOT} marked good")
        );
        assert_eq!(env.get(GOOD_SLOT), Some(DEFAULT_BOOT_SLOT));
    }

    #[test]
    fn cmdline_slot() {
        assert_eq!(
            booted_slot("console=ttyS0 lb.slot=b panic=5"),
            Some("b".to_string())
        );
        assert_eq!(booted_slot("console=ttyS0"), None);
        assert_eq!(booted_slot("lb.slotx=b lb.slot"), None);
    }
}
