//! One file per backend. Adding a board or adapter: a new file here and one
//! line in [`crate::registry`].

pub mod command;
pub mod hid_gadget;
pub mod http_keys;
pub mod serial_console;
pub mod serial_mcu;
pub mod sim;
pub mod usb_relay;
