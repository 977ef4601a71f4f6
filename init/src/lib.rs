//! The appliance's PID 1 as a library: the binary `init` is a thin front over these
//! modules, and other crates of the workspace (web UI, update agent) can use
//! [`layout`] and the file models ([`network::config`], [`admin`], [`services`]).

pub mod admin;
pub mod bench;
pub mod boot;
pub mod console;
pub mod control;
pub mod datafs;
pub mod fsutil;
pub mod gpt;
pub mod layout;
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
