//! What each vendor's documents say, as pure functions the phone runtime calls.

pub mod h680;
pub mod htek;
pub mod panasonic;
