//! lbcore: the load-balancing core of the medical load-balancer appliance.
//!
//! - [`config`]: the configuration model (its home is the shared `appliance` crate,
//!   with every other file on /data).
//! - [`daemon`]: the running daemon: the event loop, configuration changes as a whole
//!   (prepare, then commit), the status and the control socket.
//! - [`service`], [`server`], [`scheduler`], [`persistence`]: where a new connection
//!   goes; [`proxy`]: the Layer 7 TCP proxy that carries it.
//! - [`health`], [`monitor`]: health-check probes and the monitor per real server.
//! - [`ipvs`]: Layer 4 services on the kernel's IPVS (generic netlink), SNAT rules.
//! - [`addresses`]: service addresses on the appliance's interfaces.
//! - [`firewall`]: the appliance's own nftables table (`inet medlb`): what reaches the
//!   appliance, lockdown of the management ports, the administrator's custom rules;
//!   [`nft`]: running `nft`, for it and for the SNAT table.
//!
//! The control protocol that lbctl and lbweb speak is the `lbcore-control` crate.
pub mod addresses;
pub mod daemon;
pub mod firewall;
pub mod health;
pub mod ipvs;
pub mod monitor;
pub mod nft;
pub mod persistence;
pub mod proxy;
pub mod scheduler;
pub mod server;
pub mod service;

pub use appliance::files::lbcore as config;
