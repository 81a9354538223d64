//! SIP pieces owned by the virtual phone.
pub mod digest;
pub mod message;
pub mod timers;
