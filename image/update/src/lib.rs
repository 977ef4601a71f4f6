//! The appliance's software update: the update archive, its verification and its
//! installation into the inactive A/B slot.
//!
//! - [`manifest`]: what an archive is and holds (the signed document).
//! - [`pack`]: making an archive from a built slot (image/build).
//! - [`verify`]: the checks, in order: checksum, signature, product, version, every
//!   part's size and SHA-256, reading the tar entry by entry.
//! - [`install`]: writing the verified parts into the slot that does not run, reading
//!   them back, and giving that slot a trial boot (GRUB's try counter).
//! - [`version`]: version numbers.
//! - [`online`]: the update server's index and downloads that resume.
//! - [`agent`]: the service init supervises: receives, verifies and installs archives,
//!   keeps its state on /data so that a crash or power cut is finished or cleaned up.
//! - [`protocol`]: the agent's control socket, and the client lbweb uses.
//!
//! The `lbupdate` program is the agent that init supervises (`lbupdate serve`) and the
//! tool that runs the same verification anywhere (`lbupdate verify`).

pub mod agent;
pub mod install;
pub mod manifest;
pub mod online;
pub mod pack;
pub mod protocol;
pub mod verify;
pub mod version;

/// The slot protocol of image/slots.conf, compiled in: the same file bootenv uses.
#[path = "../../bootenv/src/slots.rs"]
pub mod slots;
