//! The bench's hardware, as small capabilities the rig drives.
//!
//! A capability ([`Button`], [`Power`], [`Console`], [`Keys`]) is a small async
//! trait; a backend is one file in [`backends`] that implements it; the
//! [`registry`] binds the backend name written in the lab file to its
//! constructor. Backends never publish to the timeline themselves (except the
//! console, whose lines arrive by themselves): the rig calls them through
//! [`Driven`], which publishes one `button.*` / `power.*` / `keys.*` /
//! `console.sent` event per call.
//!
//! Beside the capabilities: [`capture`] records every frame on the lab NIC to
//! a pcap and derives `capture.*` events, and [`doctor`] checks a bench before
//! a run and says how to fix what is wrong.

pub mod backends;
pub mod capability;
pub mod capture;
pub mod console;
pub mod doctor;
pub mod driven;
pub mod error;
pub mod params;
pub mod pcap;
pub mod registry;
pub mod schema;

pub use capability::{Button, Capability, Console, ConsoleSink, Key, Keys, Power};
pub use driven::{Driven, DrivenButton, DrivenConsole, DrivenKeys, DrivenPower, PhoneDrivers};
pub use error::DriverError;
pub use registry::{button, console, keys, known_backends, power, BackendSpec, DriverEnv};
