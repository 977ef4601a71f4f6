//! lbcore: the load-balancing core of the medical load-balancer appliance.
//!
//! - [`config`]: the one configuration model (TOML on /data) and its validation.
//! - [`health`]: health-check probes (TCP, ping, DICOM C-ECHO, HL7/MLLP, HTTP, script).
pub mod config;
pub mod health;
