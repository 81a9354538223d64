//! Retransmission schedule of a client transaction over UDP (RFC 3261 §17.1).
//!
//! The Lvswitch SIP-H680 guide (001, "SIP会话定时器") spells it out for REGISTER with
//! T1 = 0.5 s, T2 = 4 s: intervals 0.5, 1, 2, 4, 4, 4 … s, and the whole attempt
//! ends before 64 × T1 = 32 s. INVITE (timer A) doubles without the T2 cap.

use std::time::Duration;

/// When each transmission of one request happens, and when the attempt gives up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetransmitSchedule {
    /// Offsets from the first transmission (the first is always zero).
    pub sends: Vec<Duration>,
    /// Offset at which the transaction times out (64 × T1).
    pub give_up: Duration,
}

impl RetransmitSchedule {
    /// Non-INVITE requests: interval doubles from T1 and is capped at T2 (timer E).
    pub fn non_invite(t1: Duration, t2: Duration) -> Self {
        Self::build(t1, Some(t2))
    }

    /// INVITE requests: interval doubles from T1 without a cap (timer A).
    pub fn invite(t1: Duration) -> Self {
        Self::build(t1, None)
    }

    fn build(t1: Duration, cap: Option<Duration>) -> Self {
        let give_up = t1 * 64;
        let mut sends = vec![Duration::ZERO];
        let t1 = t1.max(Duration::from_millis(1));
        let mut interval = t1;
        let mut at = Duration::ZERO;
        loop {
            at += interval;
            if at >= give_up {
                break;
            }
            sends.push(at);
            interval *= 2;
            if let Some(cap) = cap {
                interval = interval.min(cap);
            }
        }
        RetransmitSchedule { sends, give_up }
    }

    /// Gaps between consecutive transmissions.
    pub fn intervals(&self) -> Vec<Duration> {
        self.sends.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn h680_register_example() {
        // 001: "重传间隔依次为:0.5s、1s、2s、4s、4s …", total below 64 × 0.5 = 32 s.
        let s = RetransmitSchedule::non_invite(ms(500), ms(4000));
        assert_eq!(s.give_up, ms(32_000));
        let iv = s.intervals();
        assert_eq!(&iv[..4], &[ms(500), ms(1000), ms(2000), ms(4000)]);
        assert!(iv[4..].iter().all(|i| *i == ms(4000)));
        assert_eq!(
            s.sends,
            [0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500].map(ms)
        );
        assert!(*s.sends.last().unwrap() < s.give_up);
    }

    #[rstest]
    #[case::rfc_defaults(500, vec![0, 500, 1500, 3500, 7500, 15500, 31500])]
    #[case::small_t1(10, vec![0, 10, 30, 70, 150, 310, 630])]
    fn invite_doubles_without_cap(#[case] t1: u64, #[case] want: Vec<u64>) {
        let s = RetransmitSchedule::invite(ms(t1));
        assert_eq!(s.sends, want.into_iter().map(ms).collect::<Vec<_>>());
        assert_eq!(s.give_up, ms(64 * t1));
    }

    #[rstest]
    #[case(20, 160, 11)]
    #[case(500, 4000, 11)]
    #[case(100, 100, 64)]
    fn transmission_count(#[case] t1: u64, #[case] t2: u64, #[case] count: usize) {
        assert_eq!(
            RetransmitSchedule::non_invite(ms(t1), ms(t2)).sends.len(),
            count
        );
    }
}
