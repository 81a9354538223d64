//! Virtual phones: Htek UC9xx, Panasonic KX-UT670 and Lvswitch SIP-H680 as
//! the vendor documents describe them, speaking the same wire protocols a
//! physical phone would (DHCP, TFTP, HTTP(S), FTP, SIP, RTP) and driven
//! through the same capabilities (control socket for button/power/keys, a
//! pseudo-terminal for the serial console). See docs/virtual-phones.md.

pub mod config;
pub mod console;
pub mod control;
pub mod dhcp;
pub mod fetch;
pub mod model;

pub use config::{Placement, ServicePorts, SimHostConfig, Timing, VirtualPhoneSpec};
mod host;
mod net;
mod phone;
pub mod vendor;

pub use host::{SimHost, FILES_PER_PHONE};
/// The fault switch (catalogue in `phonerig_sim_ua::fault`; see docs/mutants.md).
pub use phonerig_sim_ua::{fault, Fault, FaultInfo, FaultSet};
