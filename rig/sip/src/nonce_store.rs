//! The nonces the registrar has issued in its challenges and still honours.
//!
//! A nonce is valid for a fixed lifetime after it was issued, however many
//! others were issued since: a phone answering a 401 at a high registration
//! rate must not find its nonce forgotten (the answer would be re-challenged
//! with `stale=true` and the registration would take another round trip).
//! Memory is bounded by a count as well: past `max` live nonces the oldest
//! are forgotten early. Issuing and checking are O(1) (amortised): an
//! [`ExpiringMap`](crate::expiring::ExpiringMap).

use std::time::{Duration, Instant};

use crate::expiring::ExpiringMap;

pub(crate) struct NonceStore {
    issued: ExpiringMap<String, ()>,
}

impl NonceStore {
    /// A store honouring each nonce for `lifetime`, holding at most `max` (at least 1).
    pub fn new(lifetime: Duration, max: usize) -> NonceStore {
        NonceStore {
            issued: ExpiringMap::new(lifetime, max),
        }
    }

    /// Remembers `nonce` as issued at `now` (a repeated one gets a fresh lifetime).
    pub fn issue(&mut self, nonce: String, now: Instant) {
        self.issued.insert(nonce, (), now);
    }

    /// Whether `nonce` was issued here and its lifetime has not passed at `now`.
    pub fn is_valid(&self, nonce: &str, now: Instant) -> bool {
        self.issued.get(nonce, now).is_some()
    }

    /// Nonces held (valid or expired but not yet dropped).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.issued.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const LIFETIME: Duration = Duration::from_secs(300);

    fn nonce(n: usize) -> String {
        format!("nonce-{n}")
    }

    /// The first nonce is issued at `start`, then `others` more, 1 ms apart;
    /// the first is then checked `checked_after` its issue.
    #[rstest]
    #[case::right_after_others(10_000, Duration::from_secs(11), true)]
    #[case::just_before_its_lifetime_ends(10_000, LIFETIME - Duration::from_millis(1), true)]
    #[case::at_the_end_of_its_lifetime(10_000, LIFETIME, false)]
    #[case::long_after(10_000, LIFETIME * 3, false)]
    #[case::alone_within(0, Duration::from_secs(1), true)]
    #[case::alone_after(0, LIFETIME + Duration::from_secs(1), false)]
    fn a_nonce_lives_for_its_lifetime_however_many_follow(
        #[case] others: usize,
        #[case] checked_after: Duration,
        #[case] valid: bool,
    ) {
        let start = Instant::now();
        let mut store = NonceStore::new(LIFETIME, 65_536);
        store.issue(nonce(0), start);
        for n in 1..=others {
            store.issue(nonce(n), start + Duration::from_millis(n as u64));
        }
        assert_eq!(store.is_valid(&nonce(0), start + checked_after), valid);
    }

    #[rstest]
    #[case::never_issued("nonce-x", true)]
    #[case::empty("", true)]
    #[case::issued("nonce-1", false)]
    fn unknown_nonces_are_refused(#[case] offered: &str, #[case] refused: bool) {
        let now = Instant::now();
        let mut store = NonceStore::new(LIFETIME, 16);
        store.issue(nonce(1), now);
        assert_eq!(!store.is_valid(offered, now), refused);
    }

    /// The count bound: past `max` live nonces the oldest go first.
    #[rstest]
    #[case(4, 4, &[0, 1, 2, 3], &[])]
    #[case(4, 5, &[1, 2, 3, 4], &[0])]
    #[case(4, 10, &[6, 7, 8, 9], &[0, 5])]
    #[case(1, 3, &[2], &[0, 1])]
    fn the_oldest_go_beyond_the_count_bound(
        #[case] max: usize,
        #[case] issued: usize,
        #[case] kept: &[usize],
        #[case] forgotten: &[usize],
    ) {
        let now = Instant::now();
        let mut store = NonceStore::new(LIFETIME, max);
        for n in 0..issued {
            store.issue(nonce(n), now);
        }
        assert_eq!(store.len(), kept.len());
        for n in kept {
            assert!(store.is_valid(&nonce(*n), now), "nonce {n} kept");
        }
        for n in forgotten {
            assert!(!store.is_valid(&nonce(*n), now), "nonce {n} forgotten");
        }
    }

    /// Expired nonces are dropped as new ones are issued, so a steady rate
    /// holds about rate × lifetime of them, not everything ever issued.
    #[test]
    fn expired_nonces_are_dropped_when_new_ones_are_issued() {
        let start = Instant::now();
        let mut store = NonceStore::new(Duration::from_secs(10), 1_000_000);
        // 100 per second for 60 s.
        for n in 0..6_000 {
            store.issue(nonce(n), start + Duration::from_millis(10 * n as u64));
        }
        assert_eq!(store.len(), 1_000);
        assert!(store.is_valid(&nonce(5_999), start + Duration::from_secs(60)));
        assert!(!store.is_valid(&nonce(4_999), start + Duration::from_secs(60)));
    }

    #[test]
    fn a_reissued_nonce_gets_a_fresh_lifetime() {
        let start = Instant::now();
        let mut store = NonceStore::new(Duration::from_secs(10), 16);
        store.issue(nonce(1), start);
        store.issue(nonce(1), start + Duration::from_secs(8));
        // The first entry's expiry passes while the second holds.
        store.issue(nonce(2), start + Duration::from_secs(12));
        assert!(store.is_valid(&nonce(1), start + Duration::from_secs(12)));
        assert!(!store.is_valid(&nonce(1), start + Duration::from_secs(18)));
    }
}
