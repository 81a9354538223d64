//! A scenario file as `rig run` loads it (TOML, then validation).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = phonerig::scenario::Scenario::parse(std::path::Path::new("fuzz.toml"), text);
    }
});
