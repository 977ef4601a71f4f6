//! What every program of the appliance shares, defined once: init, lbcore, lbctl,
//! lbweb and the coming update agent and firewall all import it.
//!
//! - [`layout`]: where things are on `/data` and `/run`.
//! - [`files`]: the model of each file on `/data`, with its validation and its
//!   format version. Files on `/data` are read by older and newer versions alike (an
//!   update can roll back): fields are added, never renamed or retyped, and a key this
//!   version does not know is kept or ignored with a warning, never a refusal to start
//!   (docs/compatibility.md has the whole rule).
//! - [`atomic`]: the one way a file is replaced, so that a crash or power loss leaves
//!   the old content or the new, never a torn file.
//! - [`net`]: address and subnet arithmetic (on `ipnet`).
//! - [`gpt`]: reading the disk's GUID partition table (slots and data by GPT name).
//! - [`logging`]: the `tracing` set-up of the programs that log to stderr for init.

pub mod atomic;
pub mod files;
pub mod gpt;
pub mod layout;
pub mod logging;
pub mod net;
