//! Kernel modules, as modprobe would load them: the fixed list of the image
//! (`/etc/init/modules`) plus what the hardware asks for (every `modalias` under
//! /sys resolved through `modules.alias`), each with its dependency closure from
//! `modules.dep` and its `pre:`/`post:` soft dependencies from `modules.softdep`,
//! loaded once each, dependencies first, with finit_module(2).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The module database of one kernel (`/lib/modules/VERSION`).
#[derive(Debug, Default)]
pub struct ModuleDb {
    dir: PathBuf,
    /// name -> (relative path, dependency names in modules.dep order)
    deps: HashMap<String, (String, Vec<String>)>,
    /// (pattern, module) in file order
    aliases: Vec<(String, String)>,
    /// name -> (pre, post)
    softdeps: HashMap<String, (Vec<String>, Vec<String>)>,
    builtin: HashSet<String>,
}

/// Errors reading the module database.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("unknown module or alias {0:?}")]
    Unknown(String),
}

/// Module name from a path or name: basename without `.ko[.xz|.zst|.gz]`, `-` as `_`.
pub fn normalize(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// Shell-style pattern matching (`*`, `?`, `[...]`) as modules.alias uses.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class(&p, pi, t[ti])
                        && matched
                    {
                        pi = next;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Match `c` against the class starting at `p[i] == '['`: (matched, index after `]`).
fn class(p: &[char], i: usize, c: char) -> Option<(bool, usize)> {
    let mut j = i + 1;
    let negate = matches!(p.get(j), Some('!') | Some('^'));
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < p.len() && (first || p[j] != ']') {
        first = false;
        if j + 2 < p.len() && p[j + 1] == '-' && p[j + 2] != ']' {
            if p[j] <= c && c <= p[j + 2] {
                matched = true;
            }
            j += 3;
        } else {
            if p[j] == c {
                matched = true;
            }
            j += 1;
        }
    }
    (j < p.len()).then_some((matched != negate, j + 1))
}

impl ModuleDb {
    /// Read `dir` (`ROOT/lib/modules/VERSION`).
    pub fn load(dir: &Path) -> Result<ModuleDb, ModulesError> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| ModulesError::Read(p, e))
        };
        let mut db = ModuleDb {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        for line in read("modules.dep")?.lines() {
            let Some((m, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(normalize).collect();
            db.deps.insert(normalize(m), (m.to_string(), deps));
        }
        for line in read("modules.alias").unwrap_or_default().lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(pat), Some(m)) = (w.next(), w.next(), w.next()) {
                db.aliases.push((pat.to_string(), normalize(m)));
            }
        }
        for line in read("modules.softdep").unwrap_or_default().lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("softdep") {
                continue;
            }
            let Some(m) = w.next() else { continue };
            let entry = db.softdeps.entry(normalize(m)).or_default();
            let mut post = false;
            for x in w {
                match x {
                    "pre:" => post = false,
                    "post:" => post = true,
                    n if post => entry.1.push(n.to_string()),
                    n => entry.0.push(n.to_string()),
                }
            }
        }
        for line in read("modules.builtin").unwrap_or_default().lines() {
            db.builtin.insert(normalize(line));
        }
        Ok(db)
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// Module names for a module name, an alias or a modalias (empty if none).
    pub fn resolve(&self, name_or_alias: &str) -> Vec<String> {
        let n = normalize(name_or_alias);
        if self.deps.contains_key(&n) || self.builtin.contains(&n) {
            return vec![n];
        }
        let mut out: Vec<String> = Vec::new();
        for (pat, m) in &self.aliases {
            if glob(pat, name_or_alias) && !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }

    /// Absolute path of a module file.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        self.deps.get(name).map(|(p, _)| self.dir.join(p))
    }

    /// The load order for `names` (modules or aliases): each module after its
    /// dependencies and pre-softdeps, before its post-softdeps, once.
    pub fn plan(&self, names: &[String]) -> Result<Vec<String>, ModulesError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for n in names {
            let mods = self.resolve(n);
            if mods.is_empty() {
                return Err(ModulesError::Unknown(n.clone()));
            }
            for m in mods {
                self.visit(&m, &mut seen, &mut out);
            }
        }
        Ok(out)
    }

    fn visit(&self, m: &str, seen: &mut HashSet<String>, out: &mut Vec<String>) {
        if !seen.insert(m.to_string()) || !self.deps.contains_key(m) {
            return;
        }
        let (pre, post) = self.softdeps.get(m).cloned().unwrap_or_default();
        for s in &pre {
            for x in self.resolve(s) {
                self.visit(&x, seen, out);
            }
        }
        if let Some((_, deps)) = self.deps.get(m) {
            for d in deps.iter().rev() {
                self.visit(d, seen, out);
            }
        }
        out.push(m.to_string());
        for s in &post {
            for x in self.resolve(s) {
                self.visit(&x, seen, out);
            }
        }
    }
}

/// Every `modalias` under `sys/devices`.
pub fn modaliases(sys: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![sys.join("devices")];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_file()
                && e.file_name() == "modalias"
                && let Ok(s) = std::fs::read_to_string(e.path())
            {
                let s = s.trim();
                if !s.is_empty() {
                    out.insert(s.to_string());
                }
            }
        }
    }
    out
}

/// Load one module file (already-loaded is fine).
fn insmod(path: &Path) -> Result<(), String> {
    use nix::kmod::{ModuleInitFlags, finit_module};
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let name = path.to_string_lossy();
    let compressed = name.ends_with(".xz") || name.ends_with(".zst") || name.ends_with(".gz");
    // MODULE_INIT_COMPRESSED_FILE: the kernel decompresses (CONFIG_MODULE_DECOMPRESS).
    let flags = if compressed {
        ModuleInitFlags::from_bits_retain(4)
    } else {
        ModuleInitFlags::empty()
    };
    match finit_module(&f, c"", flags) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Summary of a boot's module loading.
#[derive(Debug, Default)]
pub struct Report {
    pub loaded: usize,
    pub already: usize,
    pub failed: Vec<String>,
    /// The modules that took longest to load, longest first (at most [`SLOWEST`]).
    pub slowest: Vec<(String, std::time::Duration)>,
}

/// How many of the slowest modules the boot log names.
const SLOWEST: usize = 5;

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} loaded, {} already present",
            self.loaded, self.already
        )?;
        if !self.failed.is_empty() {
            write!(f, ", failed: {}", self.failed.join(", "))?;
        }
        if !self.slowest.is_empty() {
            let list: Vec<String> = self
                .slowest
                .iter()
                .map(|(m, d)| format!("{m} {:.0} ms", d.as_secs_f64() * 1e3))
                .collect();
            write!(f, "; slowest: {}", list.join(", "))?;
        }
        Ok(())
    }
}

/// The running kernel's release.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Load the fixed list and the hardware's modules (boot duty).
pub fn load_boot_modules(root: &Path, sys: &Path) -> Report {
    let mut rep = Report::default();
    let dir = root.join("lib/modules").join(kernel_release());
    let db = match ModuleDb::load(&dir) {
        Ok(db) => db,
        Err(e) => {
            rep.failed.push(e.to_string());
            return rep;
        }
    };
    let fixed = std::fs::read_to_string(root.join(crate::layout::MODULES_FILE)).unwrap_or_default();
    let fixed_names: Vec<String> = fixed
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    for w in &fixed_names {
        if db.resolve(w).is_empty() {
            rep.failed.push(format!("{w}: unknown"));
        }
    }
    // A bus driver (hv_vmbus, virtio_pci, ...) makes the devices behind it appear, with
    // modaliases of their own: scan again until a pass loads nothing new.
    let mut seen = HashSet::new();
    for pass in 0..MAX_MODULE_PASSES {
        let mut wanted = if pass == 0 {
            fixed_names.clone()
        } else {
            Vec::new()
        };
        for alias in modaliases(sys) {
            for m in db.resolve(&alias) {
                if !wanted.contains(&m) {
                    wanted.push(m);
                }
            }
        }
        let mut order = Vec::new();
        for w in &wanted {
            for m in db.resolve(w) {
                db.visit(&m, &mut seen, &mut order);
            }
        }
        let mut loaded_now = 0;
        for m in order {
            if sys.join("module").join(&m).exists() {
                rep.already += 1;
                continue;
            }
            let Some(p) = db.path(&m) else { continue };
            let started = std::time::Instant::now();
            match insmod(&p) {
                Ok(()) => {
                    rep.loaded += 1;
                    loaded_now += 1;
                    rep.slowest.push((m, started.elapsed()));
                    rep.slowest
                        .sort_by_key(|(_, took)| std::cmp::Reverse(*took));
                    rep.slowest.truncate(SLOWEST);
                }
                Err(e) => rep.failed.push(format!("{m}: {e}")),
            }
        }
        if loaded_now == 0 {
            break;
        }
        // Buses enumerate their devices asynchronously after the driver loads.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    rep
}

/// Hardware scans at boot; each pass after the first only happens when the one before
/// loaded something.
const MAX_MODULE_PASSES: usize = 4;

/// `init modules --root DIR [--kver V] [--alias MODALIAS]... [NAME]...`: print the
/// load order as `insmod PATH` lines (like `modprobe --show-depends`).
pub fn cli(args: &[String]) -> i32 {
    let mut root = PathBuf::from("/");
    let mut kver = kernel_release();
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--root" => root = it.next().map(PathBuf::from).unwrap_or(root),
            "--kver" => kver = it.next().cloned().unwrap_or(kver),
            "--alias" => names.extend(it.next().cloned()),
            n => names.push(n.to_string()),
        }
    }
    let db = match ModuleDb::load(&root.join("lib/modules").join(&kver)) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("init modules: {e}");
            return 1;
        }
    };
    match db.plan(&names) {
        Ok(order) => {
            for m in order {
                if let Some(p) = db.path(&m) {
                    println!("insmod {}", p.display());
                }
            }
            for n in &names {
                if db.is_builtin(n) {
                    println!("builtin {}", normalize(n));
                }
            }
            0
        }
        Err(e) => {
            eprintln!("init modules: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(glob(
            "pci:v00001AF4d00001000sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(!glob(
            "pci:v00001AF4d00001000sv*",
            "pci:v00008086d00001000sv0"
        ));
        assert!(glob("virtio:d00000001v*", "virtio:d00000001v00001AF4"));
        assert!(glob("a[0-9]c", "a5c"));
        assert!(!glob("a[!0-9]c", "a5c"));
        assert!(glob("*", ""));
        assert!(!glob("a?", "a"));
    }

    #[test]
    fn plan_orders_dependencies_and_softdeps() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(
            dir.join("modules.dep"),
            "kernel/a.ko: kernel/b.ko kernel/c.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko:\nkernel/d-x.ko.xz:\nkernel/e.ko:\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("modules.alias"),
            "alias pci:v1234d* a\nalias dee d_x\n",
        )
        .unwrap();
        std::fs::write(dir.join("modules.softdep"), "softdep a pre: dee post: e\n").unwrap();
        std::fs::write(dir.join("modules.builtin"), "kernel/z.ko\n").unwrap();
        let db = ModuleDb::load(dir).unwrap();
        let plan = db.plan(&["pci:v1234d0001".into()]).unwrap();
        assert_eq!(plan, ["d_x", "c", "b", "a", "e"]);
        assert_eq!(
            db.plan(&["b".into(), "a".into()]).unwrap(),
            ["c", "b", "d_x", "a", "e"]
        );
        assert!(db.is_builtin("z"));
        assert!(db.plan(&["nope".into()]).is_err());
    }
}
