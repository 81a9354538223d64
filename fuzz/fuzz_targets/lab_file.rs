//! A lab file as `rig --lab` loads it (TOML, then validation).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = phonerig::lab::Lab::parse(std::path::Path::new("lab.toml"), text);
    }
});
