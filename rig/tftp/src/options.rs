//! Option negotiation (RFC 2347) for blksize (RFC 2348), timeout and tsize
//! (RFC 2349) and windowsize (RFC 7440).
//!
//! The server answers only options it understands and accepts; an option with
//! a value it cannot use is left out of the OACK, which per RFC 2347 means the
//! client falls back to the default for it. That keeps a quirky phone
//! downloading instead of failing on a value we could simply ignore.

use std::time::Duration;

use crate::packet::{DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE};

/// What the server is willing to agree to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size granted; larger requests are clamped to it.
    pub max_blksize: u16,
    /// Largest window granted; larger requests are clamped to it.
    pub max_windowsize: u16,
    /// Retransmission timeout when the client does not ask for one.
    pub default_timeout: Duration,
}

/// Default for `Settings.windowsize`: 64 blocks. The window is kept in memory
/// for retransmission, so this bounds a transfer to 64 × blksize bytes.
pub const DEFAULT_MAX_WINDOWSIZE: u16 = 64;

/// What one transfer runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    pub blksize: u16,
    pub timeout: Duration,
    pub windowsize: u16,
    /// Options echoed back in the OACK, in the order the client sent them.
    /// Empty means no OACK: the transfer starts as plain RFC 1350.
    pub oack: Vec<(String, String)>,
}

impl Agreed {
    /// RFC 1350 without extensions.
    pub fn plain(limits: &Limits) -> Agreed {
        Agreed {
            blksize: DEFAULT_BLKSIZE,
            timeout: limits.default_timeout,
            windowsize: 1,
            oack: Vec::new(),
        }
    }
}

/// Which side of a transfer the server plays: for `tsize` a reader reports the
/// file size, a writer echoes the size the client announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// RRQ. `Some(size)` when the size on the wire is known (octet mode).
    Read {
        size: Option<u64>,
    },
    Write,
}

/// Numbers only as plain decimal digits: `+5`, ` 5` or `0x10` are not values
/// a conforming client sends, and accepting them would hide its bug.
fn decimal(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

pub fn negotiate(requested: &[(String, String)], limits: &Limits, direction: Direction) -> Agreed {
    let mut agreed = Agreed::plain(limits);
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in requested {
        // RFC 2347 does not define repeats; the first one counts.
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name);
        let accepted = match name.as_str() {
            "blksize" => decimal(value)
                .filter(|&n| n >= u64::from(MIN_BLKSIZE))
                .map(|n| {
                    let cap = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
                    agreed.blksize = n.min(u64::from(cap)) as u16;
                    agreed.blksize.to_string()
                }),
            // RFC 2349: 1..=255 seconds; the server either accepts the value as is or leaves it out.
            "timeout" => decimal(value).filter(|n| (1..=255).contains(n)).map(|n| {
                agreed.timeout = Duration::from_secs(n);
                n.to_string()
            }),
            "tsize" => match direction {
                Direction::Read { size: Some(size) } => decimal(value).map(|_| size.to_string()),
                Direction::Read { size: None } => None,
                Direction::Write => decimal(value).map(|n| n.to_string()),
            },
            "windowsize" => decimal(value).filter(|n| (1..=65535).contains(n)).map(|n| {
                agreed.windowsize = n.min(u64::from(limits.max_windowsize.max(1))) as u16;
                agreed.windowsize.to_string()
            }),
            _ => None,
        };
        if let Some(answer) = accepted {
            agreed.oack.push((name.clone(), answer));
        }
    }
    agreed
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const LIMITS: Limits = Limits {
        max_blksize: 65464,
        max_windowsize: 64,
        default_timeout: Duration::from_secs(1),
    };
    const READ_1000: Direction = Direction::Read { size: Some(1000) };

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[rstest]
    #[case::none(&[], LIMITS, READ_1000, 512, 1, 1, &[])]
    #[case::blksize_granted(&[("blksize", "1428")], LIMITS, READ_1000, 1428, 1, 1, &[("blksize", "1428")])]
    #[case::blksize_minimum(&[("blksize", "8")], LIMITS, READ_1000, 8, 1, 1, &[("blksize", "8")])]
    #[case::blksize_clamped_to_rfc_max(&[("blksize", "65535")], LIMITS, READ_1000, 65464, 1, 1, &[("blksize", "65464")])]
    #[case::blksize_clamped_to_configured_max(
        &[("blksize", "8192")], Limits { max_blksize: 1468, ..LIMITS }, READ_1000, 1468, 1, 1, &[("blksize", "1468")]
    )]
    #[case::blksize_huge_number_clamped(&[("blksize", "99999999999")], LIMITS, READ_1000, 65464, 1, 1, &[("blksize", "65464")])]
    #[case::blksize_too_small_ignored(&[("blksize", "7")], LIMITS, READ_1000, 512, 1, 1, &[])]
    #[case::blksize_not_a_number_ignored(&[("blksize", "big")], LIMITS, READ_1000, 512, 1, 1, &[])]
    #[case::blksize_signed_ignored(&[("blksize", "+1024")], LIMITS, READ_1000, 512, 1, 1, &[])]
    #[case::blksize_empty_ignored(&[("blksize", "")], LIMITS, READ_1000, 512, 1, 1, &[])]
    #[case::tsize_zero_gets_actual_size(&[("tsize", "0")], LIMITS, READ_1000, 512, 1, 1, &[("tsize", "1000")])]
    #[case::tsize_unknown_size_left_out(&[("tsize", "0")], LIMITS, Direction::Read { size: None }, 512, 1, 1, &[])]
    #[case::tsize_bad_value_ignored(&[("tsize", "-1")], LIMITS, READ_1000, 512, 1, 1, &[])]
    #[case::tsize_on_write_echoed(&[("tsize", "4242")], LIMITS, Direction::Write, 512, 1, 1, &[("tsize", "4242")])]
    #[case::timeout_accepted(&[("timeout", "5")], LIMITS, READ_1000, 512, 5, 1, &[("timeout", "5")])]
    #[case::timeout_zero_ignored(&[("timeout", "0")], LIMITS, READ_1000, 512, 1, 1, &[])]
    #[case::timeout_over_255_ignored(&[("timeout", "256")], LIMITS, READ_1000, 512, 1, 1, &[])]
    #[case::windowsize_granted(&[("windowsize", "16")], LIMITS, READ_1000, 512, 1, 16, &[("windowsize", "16")])]
    #[case::windowsize_clamped(&[("windowsize", "65535")], LIMITS, READ_1000, 512, 1, 64, &[("windowsize", "64")])]
    #[case::windowsize_zero_ignored(&[("windowsize", "0")], LIMITS, READ_1000, 512, 1, 1, &[])]
    #[case::windowsize_over_range_ignored(&[("windowsize", "65536")], LIMITS, READ_1000, 512, 1, 1, &[])]
    #[case::unknown_options_ignored(
        &[("multicast", ""), ("rollover", "0"), ("blksize", "1024")], LIMITS, READ_1000, 1024, 1, 1, &[("blksize", "1024")]
    )]
    #[case::first_of_repeated_option_wins(
        &[("blksize", "1024"), ("blksize", "2048")], LIMITS, READ_1000, 1024, 1, 1, &[("blksize", "1024")]
    )]
    #[case::all_together_in_request_order(
        &[("windowsize", "8"), ("tsize", "0"), ("blksize", "1428"), ("timeout", "3")], LIMITS, READ_1000, 1428, 3, 8,
        &[("windowsize", "8"), ("tsize", "1000"), ("blksize", "1428"), ("timeout", "3")]
    )]
    fn negotiation(
        #[case] requested: &[(&str, &str)],
        #[case] limits: Limits,
        #[case] direction: Direction,
        #[case] blksize: u16,
        #[case] timeout_s: u64,
        #[case] windowsize: u16,
        #[case] oack: &[(&str, &str)],
    ) {
        let agreed = negotiate(&opts(requested), &limits, direction);
        assert_eq!(
            agreed,
            Agreed {
                blksize,
                timeout: Duration::from_secs(timeout_s),
                windowsize,
                oack: opts(oack)
            }
        );
    }
}
