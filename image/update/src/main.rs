//! `lbupdate`: the appliance's update agent and its tools.
//!
//! - `lbupdate verify ARCHIVE --checksum FILE --keys DIR [--running VERSION]` runs the
//!   appliance's verification on any Linux machine (what an operator does with a
//!   download before carrying it into the hospital, and what the tests use).
//! - `lbupdate pack --slot DIR --version V --min-version V --key SECRET --out DIR ...`
//!   makes an archive and its checksum file (image/build's last step).
//! - `lbupdate install ARCHIVE --checksum FILE --keys DIR --disk DISK --slot SLOT`
//!   verifies and installs into a slot of a disk (an image file or a device).
//! - `lbupdate index DIR` prints the update server's index for the archives in DIR.
//! - `lbupdate serve` is the agent that init supervises (control socket
//!   /run/update.sock, state in /data/updates).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lbupdate::install::{self, Disk, Tools};
use lbupdate::pack::{self, Release};
use lbupdate::verify::{self, Check, Trusted};
use lbupdate::version::Version;

#[derive(Parser)]
#[command(
    version,
    about = "The appliance's software update: verify, pack and install update archives"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Verifying {
    /// The update archive (medlb-VERSION.update).
    archive: PathBuf,
    /// Its checksum file (sha256sum format).
    #[arg(long)]
    checksum: PathBuf,
    /// The directory of trusted minisign public keys (*.pub).
    #[arg(long, default_value = "/etc/medlb/update-keys")]
    keys: PathBuf,
    /// The version the archive would be installed over [default: /etc/version].
    #[arg(long)]
    running: Option<String>,
    /// Accept an archive older than (or as old as) the running version.
    #[arg(long)]
    allow_downgrade: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the update agent (a service of init).
    Serve {
        /// The data root.
        #[arg(long, default_value = appliance::layout::DEFAULT_DATA_ROOT)]
        data: PathBuf,
        /// The run directory (its control socket is update.sock there).
        #[arg(long, default_value = appliance::layout::DEFAULT_RUN_DIR)]
        run: PathBuf,
        /// The root of the running system (/etc/version, the trusted keys).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// The whole disk with the slots [default: this system's].
        #[arg(long)]
        disk: Option<PathBuf>,
        /// Where the booted slot is named (lb.slot=).
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: PathBuf,
        #[arg(long, default_value = "/usr/sbin/bootenv")]
        bootenv: PathBuf,
        #[arg(long, default_value = "/usr/sbin/mke2fs")]
        mke2fs: PathBuf,
    },
    /// Check an archive as the appliance does, and print what it is.
    Verify(Verifying),
    /// Make an archive and its checksum file from a built slot.
    Pack {
        /// The slot's files (vmlinuz, initrd.img, manifest.txt).
        #[arg(long)]
        slot: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long, default_value = "")]
        build_id: String,
        /// The lowest version this archive may be installed over.
        #[arg(long)]
        min_version: String,
        /// A file with the release notes.
        #[arg(long)]
        notes: Option<PathBuf>,
        /// Signed with the development key.
        #[arg(long)]
        development: bool,
        /// The minisign secret key.
        #[arg(long)]
        key: PathBuf,
        /// Time stamp of the archive's entries (seconds since 1970).
        #[arg(long, default_value_t = 0)]
        mtime: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the update server's index for the archives in DIR (publish it beside them).
    Index { dir: PathBuf },
    /// Verify an archive and install it into a slot of a disk, with a trial boot.
    Install {
        #[command(flatten)]
        verifying: Verifying,
        /// The whole disk holding the slots [default: this system's].
        #[arg(long)]
        disk: Option<PathBuf>,
        /// The slot to write [default: the one that is not running].
        #[arg(long)]
        slot: Option<String>,
        /// Where the parts and the slot's image are kept meanwhile.
        #[arg(long, default_value = "/data/updates/work")]
        work: PathBuf,
        #[arg(long, default_value = "/usr/sbin/bootenv")]
        bootenv: PathBuf,
        #[arg(long, default_value = "/usr/sbin/mke2fs")]
        mke2fs: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    appliance::logging::init("LBUPDATE_LOG");
    match run(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbupdate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn running_version(given: &Option<String>) -> anyhow::Result<Version> {
    let text = match given {
        Some(v) => v.clone(),
        None => std::fs::read_to_string("/etc/version").map_err(|e| {
            anyhow::anyhow!("cannot read /etc/version ({e}): say --running VERSION")
        })?,
    };
    Ok(Version::parse(text.trim())?)
}

fn verified(v: &Verifying, parts: Option<&std::path::Path>) -> anyhow::Result<verify::Verified> {
    let trusted = Trusted::load(&v.keys)?;
    let checksum = std::fs::read_to_string(&v.checksum)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", v.checksum.display()))?;
    let check = Check {
        trusted: &trusted,
        running: running_version(&v.running)?,
        allow_downgrade: v.allow_downgrade,
    };
    Ok(verify::verify(&v.archive, &checksum, &check, parts)?)
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            data,
            run,
            root,
            disk,
            cmdline,
            bootenv,
            mke2fs,
        } => {
            let layout = appliance::layout::Layout::new(data, run);
            let socket = layout.update_socket();
            let agent = lbupdate::agent::Agent::start(lbupdate::agent::Options {
                layout,
                root,
                disk,
                cmdline,
                tools: Tools { mke2fs, bootenv },
            })?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(lbupdate::agent::serve(agent, &socket))
        }
        Command::Verify(v) => {
            let ok = verified(&v, None)?;
            let m = &ok.manifest;
            println!(
                "{}: good: {} {}{} (build {}), signed by {}, installs over {} or newer",
                v.archive.display(),
                m.product,
                m.version,
                if m.development {
                    " (development build)"
                } else {
                    ""
                },
                m.build_id,
                ok.signed_by,
                m.min_version
            );
            for p in &m.parts {
                println!("  {}  {} bytes  sha256 {}", p.name, p.size, p.sha256);
            }
            if !m.notes.is_empty() {
                println!("notes:\n{}", m.notes.trim_end());
            }
            Ok(())
        }
        Command::Index { dir } => {
            let index = lbupdate::online::index_of(&dir)?;
            println!("{}", serde_json::to_string_pretty(&index)?);
            Ok(())
        }
        Command::Pack {
            slot,
            version,
            build_id,
            min_version,
            notes,
            development,
            key,
            mtime,
            out,
        } => {
            let notes = match notes {
                Some(p) => std::fs::read_to_string(&p)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?,
                None => String::new(),
            };
            let archive = pack::pack(
                &Release {
                    slot: &slot,
                    version: &version,
                    build_id: &build_id,
                    min_version: &min_version,
                    notes: &notes,
                    development,
                    key: &key,
                    mtime,
                },
                &out,
            )?;
            println!("{}", archive.display());
            Ok(())
        }
        Command::Install {
            verifying,
            disk,
            slot,
            work,
            bootenv,
            mke2fs,
        } => {
            let disk = match disk {
                Some(d) => Disk::at(&d),
                None => Disk::of_this_system("/sys/class/block".as_ref(), "/dev".as_ref())?,
            };
            let slot = match slot {
                Some(s) => s,
                None => {
                    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
                    let booted = install::booted_slot(&cmdline)
                        .ok_or_else(|| anyhow::anyhow!("the running slot is unknown (no lb.slot= on the kernel command line): say --slot"))?;
                    lbupdate::slots::other(booted).unwrap_or("b").to_string()
                }
            };
            let parts = work.join("parts");
            std::fs::create_dir_all(&parts)?;
            let ok = verified(&verifying, Some(&parts))?;
            let tools = Tools { mke2fs, bootenv };
            let done = install::install(
                &disk,
                &slot,
                &parts,
                &work,
                &tools,
                lbupdate::slots::UPDATE_TRIES,
                |_| {},
            );
            for p in lbupdate::manifest::PARTS {
                let _ = std::fs::remove_file(parts.join(p));
            }
            let done = done?;
            println!(
                "{} {} installed into slot {} ({} bytes written); it boots next, with {} tries",
                ok.manifest.product,
                ok.manifest.version,
                done.slot,
                done.bytes_written,
                lbupdate::slots::UPDATE_TRIES
            );
            Ok(())
        }
    }
}
