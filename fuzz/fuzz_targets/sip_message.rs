//! SIP over UDP (one datagram) and over TCP (stream framing, then parsing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = phonerig_sip::message::SipMsg::parse(data);
    let mut stream = data.to_vec();
    // Bounded: each frame taken shortens the buffer.
    while let Ok(Some(frame)) = phonerig_sip::transport::take_frame(&mut stream) {
        let _ = phonerig_sip::message::SipMsg::parse(&frame);
    }
});
