//! Checks on raw datagrams that `dhcproto` leaves to the caller, and a raw
//! option reader.
//!
//! `dhcproto` decodes options into typed values and stops at the first one it
//! cannot type (option 150 sent as Htek's URL string, for instance). Clients
//! in tests and virtual phones must see every option as sent, so they read
//! them with [`raw_options`].

use std::collections::BTreeMap;

use dhcproto::v4::MAGIC;

/// Fixed BOOTP header (236 bytes) plus the magic cookie.
pub const HEADER_LEN: usize = 240;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("{0} bytes is shorter than a DHCP header (240)")]
    Short(usize),
    #[error("magic cookie {0} is not 63825363 (not DHCP)")]
    Magic(String),
    #[error("option {code} at byte {at} runs past the end of the datagram")]
    Truncated { code: u8, at: usize },
    #[error("hardware address type {htype} length {hlen} (only Ethernet, 6 bytes, is served)")]
    Hardware { htype: u8, hlen: u8 },
}

/// Length and magic cookie; for requests also an Ethernet hardware address
/// (dhcproto would panic on a `hlen` above 16 when asked for `chaddr`).
pub fn check_header(packet: &[u8], want_ethernet: bool) -> Result<(), WireError> {
    if packet.len() < HEADER_LEN {
        return Err(WireError::Short(packet.len()));
    }
    if packet[236..240] != MAGIC {
        return Err(WireError::Magic(hex::encode(&packet[236..240])));
    }
    let (htype, hlen) = (packet[1], packet[2]);
    if want_ethernet && (htype != 1 || hlen != 6) {
        return Err(WireError::Hardware { htype, hlen });
    }
    Ok(())
}

/// Every option of a DHCP datagram by number, values as sent; an option that
/// appears several times is concatenated (RFC 3396).
pub fn raw_options(packet: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, WireError> {
    check_header(packet, false)?;
    let mut options: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let mut at = HEADER_LEN;
    while at < packet.len() {
        let code = packet[at];
        match code {
            0 => at += 1,
            255 => break,
            _ => {
                let len = *packet
                    .get(at + 1)
                    .ok_or(WireError::Truncated { code, at })? as usize;
                let value = packet
                    .get(at + 2..at + 2 + len)
                    .ok_or(WireError::Truncated { code, at })?;
                options.entry(code).or_default().extend_from_slice(value);
                at += 2 + len;
            }
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn packet(options: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 236];
        p[0] = 1;
        p[1] = 1;
        p[2] = 6;
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(options);
        p
    }

    #[test]
    fn reads_options_and_concatenates_long_ones() {
        let p = packet(&[
            53, 1, 1, 0, 66, 2, b'a', b'b', 66, 1, b'c', 150, 4, 1, 2, 3, 4, 255, 99,
        ]);
        let options = raw_options(&p).unwrap();
        assert_eq!(options[&53], vec![1]);
        assert_eq!(options[&66], b"abc".to_vec());
        assert_eq!(options[&150], vec![1, 2, 3, 4]);
        assert!(!options.contains_key(&99), "nothing after END is read");
    }

    #[rstest]
    #[case::short(vec![0u8; 100], WireError::Short(100))]
    #[case::truncated_value(packet(&[66, 5, b'a']), WireError::Truncated { code: 66, at: 240 })]
    #[case::truncated_length(packet(&[53]), WireError::Truncated { code: 53, at: 240 })]
    fn refuses(#[case] p: Vec<u8>, #[case] error: WireError) {
        assert_eq!(raw_options(&p).unwrap_err(), error);
    }

    #[test]
    fn header_checks() {
        let mut p = packet(&[255]);
        assert_eq!(check_header(&p, true), Ok(()));
        p[2] = 200;
        assert_eq!(
            check_header(&p, true),
            Err(WireError::Hardware {
                htype: 1,
                hlen: 200
            })
        );
        assert_eq!(check_header(&p, false), Ok(()));
        p[236] = 0;
        assert!(matches!(check_header(&p, false), Err(WireError::Magic(_))));
    }
}
