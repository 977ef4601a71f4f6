//! init's log: timestamped lines from init itself and from every service's
//! stdout/stderr, kept in memory until `/data` is mounted, then appended to
//! `/data/log/init.log`, which is rotated by size (`init.log.1` is the previous one).
//!
//! Lines can also be mirrored to stderr (the console during boot, or the test's
//! terminal). Writing a log line never fails: errors are swallowed, PID 1 carries on.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Rotate the log file when it grows past this size.
pub const DEFAULT_MAX_SIZE: u64 = 1024 * 1024;
/// Number of rotated files kept (`init.log.1` .. `init.log.N`).
pub const DEFAULT_KEEP: u32 = 4;
/// Lines kept in memory before the log file is opened.
const PENDING_MAX: usize = 2000;

struct Sink {
    file: Option<File>,
    path: Option<PathBuf>,
    size: u64,
    max_size: u64,
    keep: u32,
    pending: Vec<String>,
}

static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();
/// Mirror init's own lines to stderr.
static MIRROR: AtomicBool = AtomicBool::new(true);
/// Mirror services' output lines to stderr too.
static MIRROR_SERVICES: AtomicBool = AtomicBool::new(false);

fn sink() -> &'static Mutex<Sink> {
    SINK.get_or_init(|| {
        Mutex::new(Sink {
            file: None,
            path: None,
            size: 0,
            max_size: DEFAULT_MAX_SIZE,
            keep: DEFAULT_KEEP,
            pending: Vec::new(),
        })
    })
}

/// Choose what goes to stderr: init's own lines, and services' lines.
pub fn set_mirror(own: bool, services: bool) {
    MIRROR.store(own, Ordering::Relaxed);
    MIRROR_SERVICES.store(services, Ordering::Relaxed);
}

/// Whether services' lines go to stderr.
pub fn mirrors_services() -> bool {
    MIRROR_SERVICES.load(Ordering::Relaxed)
}

/// Start writing to `path` (appending), flushing the lines kept so far.
pub fn open_file(path: &Path, max_size: u64, keep: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut s = sink().lock().unwrap_or_else(|e| e.into_inner());
    s.file = Some(file);
    s.path = Some(path.to_path_buf());
    s.size = size;
    s.max_size = max_size.max(1024);
    s.keep = keep.max(1);
    let pending = std::mem::take(&mut s.pending);
    for line in pending {
        s.append(&line);
    }
    Ok(())
}

/// Stop writing to the file (before /data is unmounted).
pub fn close_file() {
    let mut s = sink().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = s.file.take() {
        let _ = f.sync_all();
    }
    s.path = None;
}

impl Sink {
    fn append(&mut self, line: &str) {
        let Some(file) = self.file.as_mut() else {
            if self.pending.len() < PENDING_MAX {
                self.pending.push(line.to_owned());
            }
            return;
        };
        if file.write_all(line.as_bytes()).is_ok() {
            self.size += line.len() as u64;
        }
        if self.size >= self.max_size {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        self.file = None;
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        let _ = std::fs::rename(&path, numbered(1));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        self.size = 0;
    }
}

/// Write one line from `source` ("init" or a service's name).
pub fn write(source: &str, msg: &str) {
    let line = format!("{} {source}: {msg}\n", timestamp(SystemTime::now()));
    let mirror = if source == "init" {
        MIRROR.load(Ordering::Relaxed)
    } else {
        MIRROR_SERVICES.load(Ordering::Relaxed)
    };
    if mirror {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    let mut s = sink().lock().unwrap_or_else(|e| e.into_inner());
    s.append(&line);
}

/// RFC 3339 UTC time with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Log a line from init itself.
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::write("init", &format!($($t)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(timestamp(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn rotates_by_size() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("init.log");
        set_mirror(false, false);
        open_file(&path, 1024, 2).unwrap();
        for i in 0..100 {
            write("svc", &format!("line {i} {}", "x".repeat(40)));
        }
        close_file();
        assert!(path.exists());
        assert!(dir.join("init.log.1").exists());
        assert!(dir.join("init.log.2").exists());
        assert!(!dir.join("init.log.3").exists());
        assert!(std::fs::metadata(&path).unwrap().len() < 1024);
    }
}
