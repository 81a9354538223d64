//! Server transactions as far as the rig needs them: recognising a
//! retransmitted request (RFC 3261 §17.2.3) and resending the last
//! response to it.
//!
//! Each request the rig has seen is kept for a fixed time after it first
//! arrived, in an [`ExpiringMap`] by its matching key, so an arrival costs
//! O(1) however many transactions are live; memory is bounded by a count
//! as well.

use std::time::{Duration, Instant};

use crate::expiring::ExpiringMap;
use crate::message::SipMsg;

/// A request as RFC 3261 §17.2.3 matches it to a server transaction: the
/// top Via's branch and the method (so a CANCEL, which shares its INVITE's
/// branch, is a transaction of its own), with the Call-ID and CSeq number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ServerKey {
    branch: String,
    method: String,
    call_id: String,
    cseq: u32,
}

impl ServerKey {
    /// `None` for a request without a branch or CSeq number: never matched.
    pub fn of(request: &SipMsg) -> Option<ServerKey> {
        Some(ServerKey {
            branch: request.branch()?,
            method: request.method(),
            call_id: request.call_id(),
            cseq: request.cseq()?.0,
        })
    }
}

/// What an arriving request is to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arrival<R> {
    /// The first of its transaction: now remembered.
    New,
    /// A retransmission; the last response sent, if any, to send again.
    Again(Option<R>),
}

/// Seen requests by key; `R` is the remembered response (with where it went).
pub(crate) struct ServerTransactions<R> {
    /// The last response sent in each transaction, if any yet.
    seen: ExpiringMap<ServerKey, Option<R>>,
}

impl<R: Clone> ServerTransactions<R> {
    /// A table keeping each transaction for `lifetime` after its first
    /// request, and at most `max` (at least 1) at once: beyond that the
    /// oldest are forgotten early.
    pub fn new(lifetime: Duration, max: usize) -> ServerTransactions<R> {
        ServerTransactions {
            seen: ExpiringMap::new(lifetime, max),
        }
    }

    /// Records a request arriving at `now`: new, or a retransmission of a
    /// transaction still kept.
    pub fn arrived(&mut self, key: ServerKey, now: Instant) -> Arrival<R> {
        if let Some(last_response) = self.seen.get(&key, now) {
            return Arrival::Again(last_response.clone());
        }
        self.seen.insert(key, None, now);
        Arrival::New
    }

    /// Remembers `response` as the last one sent in `key`'s transaction
    /// (starting the transaction if it was not kept).
    pub fn answered(&mut self, key: ServerKey, response: R, now: Instant) {
        match self.seen.get_mut(&key, now) {
            Some(last_response) => *last_response = Some(response),
            None => self.seen.insert(key, Some(response), now),
        }
    }

    /// Transactions kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const LIFETIME: Duration = Duration::from_secs(64);

    fn request(method: &str, branch: &str, call_id: &str, cseq: u32) -> SipMsg {
        let text = format!(
            "{method} sip:4004@rig SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5062;branch={branch}\r\nFrom: <sip:4002@rig>;tag=a\r\nTo: <sip:4004@rig>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        );
        SipMsg::parse(text.as_bytes()).unwrap()
    }

    fn key(method: &str, branch: &str, call_id: &str, cseq: u32) -> ServerKey {
        ServerKey::of(&request(method, branch, call_id, cseq)).unwrap()
    }

    /// Which second request belongs to the first one's transaction.
    #[rstest]
    #[case::same_request(("REGISTER", "z9hG4bK1", "c", 1), true)]
    #[case::other_branch(("REGISTER", "z9hG4bK2", "c", 1), false)]
    #[case::cancel_shares_the_branch(("CANCEL", "z9hG4bK1", "c", 1), false)]
    #[case::other_call_id(("REGISTER", "z9hG4bK1", "d", 1), false)]
    #[case::next_cseq(("REGISTER", "z9hG4bK1", "c", 2), false)]
    fn retransmissions_are_matched_by_branch_method_call_id_and_cseq(
        #[case] second: (&str, &str, &str, u32),
        #[case] retransmission: bool,
    ) {
        let now = Instant::now();
        let mut table = ServerTransactions::<u16>::new(LIFETIME, 1024);
        assert_eq!(
            table.arrived(key("REGISTER", "z9hG4bK1", "c", 1), now),
            Arrival::New
        );
        let (method, branch, call_id, cseq) = second;
        let arrival = table.arrived(key(method, branch, call_id, cseq), now);
        assert_eq!(arrival != Arrival::New, retransmission);
    }

    /// A retransmission is absorbed, and gets the last response, however
    /// many other transactions arrived since — within the lifetime.
    #[rstest]
    #[case::right_after(10_000, Duration::from_secs(11), Arrival::Again(Some(401)))]
    #[case::just_within(10_000, LIFETIME - Duration::from_millis(1), Arrival::Again(Some(401)))]
    #[case::after_its_lifetime(10_000, LIFETIME, Arrival::New)]
    #[case::alone_within(0, Duration::from_secs(30), Arrival::Again(Some(401)))]
    #[case::alone_after(0, LIFETIME * 2, Arrival::New)]
    fn a_retransmission_is_absorbed_after_many_other_transactions(
        #[case] others: usize,
        #[case] again_after: Duration,
        #[case] expected: Arrival<u16>,
    ) {
        let start = Instant::now();
        let mut table = ServerTransactions::new(LIFETIME, 131_072);
        let first = key("REGISTER", "z9hG4bKfirst", "c", 1);
        assert_eq!(table.arrived(first.clone(), start), Arrival::New);
        table.answered(first.clone(), 401, start);
        for n in 0..others {
            let at = start + Duration::from_millis(n as u64);
            let other = key("REGISTER", &format!("z9hG4bK{n}"), "c", 2);
            assert_eq!(table.arrived(other.clone(), at), Arrival::New);
            table.answered(other, 200, at);
        }
        assert_eq!(table.arrived(first, start + again_after), expected);
    }

    #[test]
    fn a_retransmission_before_any_response_is_absorbed_silently_then_gets_the_answer() {
        let now = Instant::now();
        let mut table = ServerTransactions::new(LIFETIME, 16);
        let invite = key("INVITE", "z9hG4bKi", "c", 1);
        assert_eq!(table.arrived(invite.clone(), now), Arrival::New);
        assert_eq!(table.arrived(invite.clone(), now), Arrival::Again(None));
        table.answered(invite.clone(), 180, now);
        table.answered(invite.clone(), 200, now);
        assert_eq!(table.arrived(invite, now), Arrival::Again(Some(200)));
    }

    /// The count bound: past `max` the oldest transactions are forgotten.
    #[rstest]
    #[case(4, 4, &[0, 1, 2, 3], &[])]
    #[case(4, 6, &[2, 3, 4, 5], &[0, 1])]
    #[case(1, 3, &[2], &[0, 1])]
    fn the_oldest_go_beyond_the_count_bound(
        #[case] max: usize,
        #[case] arrived: usize,
        #[case] kept: &[usize],
        #[case] forgotten: &[usize],
    ) {
        let now = Instant::now();
        let mut table = ServerTransactions::<u16>::new(LIFETIME, max);
        let keys: Vec<ServerKey> = (0..arrived)
            .map(|n| key("OPTIONS", &format!("z9hG4bK{n}"), "c", 1))
            .collect();
        for k in &keys {
            table.arrived(k.clone(), now);
        }
        assert_eq!(table.len(), kept.len());
        for n in kept {
            assert_ne!(
                table.arrived(keys[*n].clone(), now),
                Arrival::New,
                "{n} kept"
            );
        }
        // Checking a forgotten one starts it afresh (and evicts another): check them last.
        for n in forgotten {
            assert_eq!(
                table.arrived(keys[*n].clone(), now),
                Arrival::New,
                "{n} forgotten"
            );
        }
    }

    /// A steady request rate keeps about rate × lifetime transactions.
    #[test]
    fn expired_transactions_are_dropped_as_requests_arrive() {
        let start = Instant::now();
        let mut table = ServerTransactions::<u16>::new(Duration::from_secs(10), 1_000_000);
        for n in 0..6_000u64 {
            let k = key("REGISTER", &format!("z9hG4bK{n}"), "c", 1);
            table.arrived(k, start + Duration::from_millis(10 * n));
        }
        assert_eq!(table.len(), 1_000);
    }

    /// A transaction answered after it was forgotten is kept afresh from
    /// then; the stale queue entry of the old one does not remove it.
    #[test]
    fn a_key_seen_again_after_expiry_is_a_new_transaction_with_its_own_lifetime() {
        let start = Instant::now();
        let mut table = ServerTransactions::new(Duration::from_secs(10), 16);
        let k = key("OPTIONS", "z9hG4bKo", "c", 1);
        assert_eq!(table.arrived(k.clone(), start), Arrival::New);
        let later = start + Duration::from_secs(10);
        assert_eq!(table.arrived(k.clone(), later), Arrival::New);
        table.answered(k.clone(), 200, later);
        assert_eq!(
            table.arrived(k, later + Duration::from_secs(9)),
            Arrival::Again(Some(200))
        );
    }
}
