//! vmprobe: a test-only agent for tests/image. It is never part of the image: a test
//! boots the image's own kernel and initramfs with a small cpio overlay that adds this
//! binary and a services file starting it (tests/lab/vm.py, `probe_initrd`).
//!
//! It listens on TCP (`--port`, default 7999) and answers one request per
//! connection. The client sends one line; the answer is `ok` and a newline followed by
//! the body, or one line `error: REASON`; then the connection closes.
//!
//! | request | body of the answer |
//! |---|---|
//! | `read PATH` | the file's bytes (PATH under /proc, /sys or /data) |
//! | `list DIR` | the names in DIR, one a line, sorted (same prefixes) |
//! | `statvfs PATH` | `bsize=.. frsize=.. blocks=.. bfree=.. bavail=.. size_bytes=..` lines |
//! | `write PATH` | nothing; the rest of the stream after the line is written to PATH (under /data/config, atomically) |
//! | `init LINE` | init's one-line JSON answer to LINE on /run/init.sock |
//! | `ipvs ...` | see [`ipvs::command`]: services that are not lbcore's, and a dump |
//!
//! Paths are resolved (symbolic links followed) before the prefix is checked.

mod ipvs;
mod netlink;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

const READABLE: &[&str] = &["/proc", "/sys", "/data"];
const WRITABLE: &[&str] = &["/data/config"];
const INIT_SOCKET: &str = "/run/init.sock";

fn main() {
    let mut port = 7999u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| usage("--port needs a number"))
            }
            _ => usage(&format!("unknown argument {a:?}")),
        }
    }
    let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
        eprintln!("vmprobe: cannot listen on port {port}: {e}");
        std::process::exit(1)
    });
    println!("vmprobe listening on port {port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            if let Err(e) = serve(stream) {
                eprintln!("vmprobe: {e}");
            }
        });
    }
}

fn usage(why: &str) -> ! {
    eprintln!("vmprobe: {why}\nusage: vmprobe [--port N]");
    std::process::exit(2)
}

fn serve(stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.by_ref().take(8192).read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    let answer = match verb {
        "read" => checked(rest, READABLE).and_then(|p| std::fs::read(&p).map_err(|e| err(&p, e))),
        "list" => checked(rest, READABLE).and_then(|p| list(&p)),
        "statvfs" => checked(rest, READABLE).and_then(|p| statvfs(&p)),
        "write" => {
            let mut body = Vec::new();
            reader
                .read_to_end(&mut body)
                .map_err(|e| format!("reading the body: {e}"))
                .and_then(|_| write(rest, &body))
                .map(|()| Vec::new())
        }
        "init" => init(rest),
        "ipvs" => ipvs::command(rest).map(String::into_bytes),
        _ => Err(format!("unknown request {verb:?}")),
    };
    match answer {
        Ok(body) => {
            out.write_all(b"ok\n")?;
            out.write_all(&body)
        }
        Err(e) => out.write_all(format!("error: {}\n", e.replace('\n', " ")).as_bytes()),
    }
}

fn err(p: &Path, e: io::Error) -> String {
    format!("{}: {e}", p.display())
}

/// `path` resolved, if it lies under one of `prefixes`.
fn checked(path: &str, prefixes: &[&str]) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{path:?}: not an absolute path without '..'"));
    }
    let real = std::fs::canonicalize(p).map_err(|e| err(p, e))?;
    under(&real, prefixes)?;
    Ok(real)
}

fn under(real: &Path, prefixes: &[&str]) -> Result<(), String> {
    if prefixes.iter().any(|pre| real.starts_with(pre)) {
        Ok(())
    } else {
        Err(format!(
            "{}: outside {}",
            real.display(),
            prefixes.join(", ")
        ))
    }
}

fn list(dir: &Path) -> Result<Vec<u8>, String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names
        .iter()
        .map(|n| format!("{n}\n"))
        .collect::<String>()
        .into_bytes())
}

fn statvfs(p: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: an all-zero `statvfs` is a valid value of that plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(err(p, io::Error::last_os_error()));
    }
    let size = st.f_frsize * st.f_blocks;
    Ok(format!(
        "bsize={}\nfrsize={}\nblocks={}\nbfree={}\nbavail={}\nsize_bytes={size}\n",
        st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree, st.f_bavail
    )
    .into_bytes())
}

/// Replaces `path` (under /data/config) by `body`: a temporary file, fsync, rename.
fn write(path: &str, body: &[u8]) -> Result<(), String> {
    let p = Path::new(path);
    let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(format!("{path:?}: not a file path"));
    };
    let dir = checked(&dir.to_string_lossy(), WRITABLE)?;
    let target = dir.join(name);
    let tmp = dir.join(format!(".{}.vmprobe", name.to_string_lossy()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
    f.write_all(body)
        .and_then(|()| f.sync_all())
        .map_err(|e| err(&tmp, e))?;
    std::fs::rename(&tmp, &target).map_err(|e| err(&target, e))
}

/// One line to init's control socket; init answers one line and closes.
fn init(line: &str) -> Result<Vec<u8>, String> {
    let mut s = UnixStream::connect(INIT_SOCKET).map_err(|e| format!("{INIT_SOCKET}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("{INIT_SOCKET}: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("{INIT_SOCKET}: {e}"))?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_prefixes_are_refused() {
        assert!(checked("/proc/self/status", READABLE).is_ok());
        assert!(checked("/etc/passwd", READABLE).is_err());
        assert!(checked("/proc/../etc/passwd", READABLE).is_err());
        assert!(checked("proc/self/status", READABLE).is_err());
        // a link out of /proc is followed before the prefix is checked
        assert!(checked("/proc/self/root/etc/passwd", READABLE).is_err());
        assert!(under(Path::new("/database"), &["/data"]).is_err());
    }
}
