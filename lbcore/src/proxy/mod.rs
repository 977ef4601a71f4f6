//! The Layer 7 TCP proxy: listeners on the service's ports, and for each client the
//! choice of a real server, the connection to it, and the relay of bytes.

pub mod busy_poll;
mod listener;
mod relay;
mod session;

pub use listener::{Listener, bind};
pub use relay::{Transferred, relay};
