//! A datagram on the TFTP port (and the virtual phones' TFTP client decoder).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = phonerig_tftp::packet::Packet::parse(data);
    let _ = phonerig_sim::fetch::tftp::decode(data);
});
