//! A datagram on the DHCP ports: the header checks and raw option reader the
//! server and the virtual phones use, dhcproto's decoder behind them, and the
//! rogue-server probe's frame reader.
#![no_main]

use dhcproto::Decodable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = phonerig_dhcp::wire::raw_options(data);
    if phonerig_dhcp::wire::check_header(data, true).is_ok() {
        let _ = dhcproto::v4::Message::from_bytes(data);
    }
    let _ = phonerig_dhcp::probe::offer_in_frame(data, 68, 0x1234_5678);
    let _ = phonerig_sim::dhcp::decode_reply(data);
});
