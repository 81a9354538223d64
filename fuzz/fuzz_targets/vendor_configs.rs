//! The provisioning files the virtual phones read, per vendor: Htek
//! (plain/XML), Panasonic KX-UT (plain and XML), Lvswitch SIP-H680 (boot and cfg).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phonerig_sim::vendor::{h680, htek, panasonic};

fuzz_target!(|data: &[u8]| {
    let _ = htek::parse(data);
    let _ = panasonic::parse(data);
    let _ = panasonic::parse_plain(data);
    let _ = panasonic::parse_xml(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = h680::parse_boot(text, "001fc1000001");
        let _ = h680::parse_cfg(text);
    }
});
