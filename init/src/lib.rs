//! The appliance's PID 1 as a library: the binary `init` is a thin front over these
//! modules. What other programs share with init (the /data layout, the models of the
//! files on /data, the atomic write) is the `appliance` crate beside it.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub use appliance::files::admin;
pub use appliance::layout;
pub mod bench;
pub mod boot;
pub mod console;
pub mod control;
pub mod datafs;
pub mod gpt;
pub mod log;
pub mod menu;
pub mod modules;
pub mod mounts;
pub mod network;
pub mod options;
pub mod powerbutton;
pub mod reaper;
pub mod services;
pub mod shutdown;
pub mod supervisor;
pub mod wizard;
