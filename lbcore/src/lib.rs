//! lbcore: the load-balancing core of the medical load-balancer appliance.
//!
//! - [`config`]: the one configuration model (TOML on /data) and its validation.
//! - [`health`]: health-check probes (TCP, ping, DICOM C-ECHO, HL7/MLLP, HTTP, script).
//! - [`ipvs`]: Layer 4 services on the kernel's IPVS (generic netlink), SNAT rules.
//! - [`web`]: the HTTPS JSON API (`lbweb`) that changes and shows all of this.
pub mod addresses;
pub mod admin_state;
pub mod atomic_file;
pub mod config;
pub mod control;
pub mod daemon;
pub mod health;
pub mod ipvs;
pub mod logging;
pub mod monitor;
pub mod persistence;
pub mod proxy;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod web;
