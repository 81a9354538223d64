//! Telephony part of the virtual phones: SIP user agent (REGISTER with digest,
//! NOTIFY answers, calls, hold, call waiting, auto answer), RTP (PCMU, 20 ms) and
//! the Htek USB panic-button rules (seed 000).
//!
//! Independent of the rig's SIP crate on purpose: the phone and the rig must not
//! share a SIP implementation, or a bug in one would be hidden by the other.
//! It never publishes to the rig's timeline; it reports through console lines and
//! [`UaEvent`]s, and over the wire.

pub mod api;
pub mod fault;
pub mod panic_rules;
pub mod rtp;
pub mod sdp;
pub mod sip;
mod ua;

pub use api::*;
pub use fault::{Fault, FaultInfo, FaultSet};
pub use panic_rules::{decide, Decision, PanicFunction};
pub use ua::{Console, NotifyHandler, Telephony};
