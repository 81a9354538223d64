//! The lease table: which MAC holds which address, keyed by MAC.
//!
//! Pure state, with the clock passed in, so every transition is unit-tested.
//! The table never holds more entries than there are addresses (pool plus
//! fixed): giving an address to a MAC removes whoever held it before, so a
//! flood of DISCOVERs from random MACs exhausts the pool, not memory.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use phonerig_core::Mac;

/// How long an offered address stays reserved for the client it was offered to.
pub const OFFER_HOLD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Offered,
    Bound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub state: LeaseState,
    pub expires: Instant,
}

/// Why an address cannot be given to a client (the `reason` of a NAK or no-offer event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("pool_exhausted")]
    PoolExhausted,
    #[error("not_ours")]
    NotOurs,
    #[error("fixed_elsewhere")]
    FixedElsewhere,
    #[error("not_the_fixed_address")]
    NotTheFixedAddress,
    #[error("in_use")]
    InUse,
    #[error("declined")]
    Declined,
}

pub struct LeaseTable {
    pool: (u32, u32),
    server_ip: Ipv4Addr,
    fixed: HashMap<Mac, Ipv4Addr>,
    fixed_owner: HashMap<Ipv4Addr, Mac>,
    leases: HashMap<Mac, Lease>,
    holder: HashMap<Ipv4Addr, Mac>,
    declined: HashSet<Ipv4Addr>,
    /// Where the lowest-free scan starts: every pool address below it was
    /// unavailable to a new client when last looked at (held, declined,
    /// fixed for another phone, the server's own). Without it each DISCOVER
    /// of a new client walked the pool from its start — a boot storm of N
    /// phones cost N²/2 checks. Lowered whenever an address below it is let go.
    scan_from: u64,
    /// The earliest expiry of a lease on an address below `scan_from`: from
    /// then on one of them may be free again, and the scan restarts at the pool's start.
    scan_valid_until: Option<Instant>,
}

impl LeaseTable {
    /// `pool_start..=pool_end`; the server's own address is never handed out.
    pub fn new(
        pool_start: Ipv4Addr,
        pool_end: Ipv4Addr,
        server_ip: Ipv4Addr,
        fixed: &[(Mac, Ipv4Addr)],
    ) -> LeaseTable {
        LeaseTable {
            pool: (u32::from(pool_start), u32::from(pool_end)),
            server_ip,
            fixed: fixed.iter().copied().collect(),
            fixed_owner: fixed.iter().map(|(mac, ip)| (*ip, *mac)).collect(),
            leases: HashMap::new(),
            holder: HashMap::new(),
            declined: HashSet::new(),
            scan_from: u64::from(u32::from(pool_start)),
            scan_valid_until: None,
        }
    }

    pub fn lease(&self, mac: &Mac) -> Option<Lease> {
        self.leases.get(mac).copied()
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    pub fn is_declined(&self, ip: Ipv4Addr) -> bool {
        self.declined.contains(&ip)
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (self.pool.0..=self.pool.1).contains(&u32::from(ip))
    }

    /// Whether `ip` may be (or stay) `mac`'s address now.
    pub fn check(&self, mac: &Mac, ip: Ipv4Addr, now: Instant) -> Result<(), Refusal> {
        if let Some(&fixed) = self.fixed.get(mac) {
            // A phone with a fixed address gets that one and no other; its
            // address stays usable even after a DECLINE (the lab said so).
            return if ip == fixed {
                Ok(())
            } else {
                Err(Refusal::NotTheFixedAddress)
            };
        }
        if self.fixed_owner.contains_key(&ip) {
            return Err(Refusal::FixedElsewhere);
        }
        if !self.in_pool(ip) || ip == self.server_ip {
            return Err(Refusal::NotOurs);
        }
        if self.declined.contains(&ip) {
            return Err(Refusal::Declined);
        }
        match self.holder.get(&ip) {
            Some(other)
                if other != mac && self.leases.get(other).is_some_and(|l| l.expires > now) =>
            {
                Err(Refusal::InUse)
            }
            _ => Ok(()),
        }
    }

    fn assign(&mut self, mac: Mac, ip: Ipv4Addr, state: LeaseState, expires: Instant) {
        if let Some(previous) = self.leases.get(&mac).copied() {
            if previous.ip != ip {
                self.holder.remove(&previous.ip);
                self.let_go(previous.ip);
            }
        }
        if u64::from(u32::from(ip)) < self.scan_from {
            // A lease below the scan mark (a renewal, perhaps shorter than
            // the offer before it) bounds how long the mark stays true.
            self.note_expiry_below_mark(expires);
        }
        // An expired lease of another MAC on this address is reclaimed.
        if let Some(other) = self.holder.insert(ip, mac) {
            if other != mac {
                self.leases.remove(&other);
            }
        }
        self.leases.insert(mac, Lease { ip, state, expires });
    }

    /// DISCOVER: the fixed address, else the client's current address, else
    /// the one it asked for, else the lowest free pool address.
    pub fn offer(
        &mut self,
        mac: Mac,
        requested: Option<Ipv4Addr>,
        now: Instant,
    ) -> Result<Ipv4Addr, Refusal> {
        let candidate = if let Some(&fixed) = self.fixed.get(&mac) {
            fixed
        } else {
            let current = self
                .leases
                .get(&mac)
                .map(|l| l.ip)
                .filter(|ip| self.check(&mac, *ip, now).is_ok());
            let asked = requested.filter(|ip| self.check(&mac, *ip, now).is_ok());
            match current.or(asked) {
                Some(ip) => ip,
                None => self.lowest_free(&mac, now)?,
            }
        };
        match self.leases.get(&mac) {
            // A bound client that starts over keeps its lease until it expires.
            Some(lease)
                if lease.ip == candidate
                    && lease.state == LeaseState::Bound
                    && lease.expires > now => {}
            _ => self.assign(mac, candidate, LeaseState::Offered, now + OFFER_HOLD),
        }
        Ok(candidate)
    }

    /// REQUEST (selecting, init-reboot, renewing, rebinding): binds `ip` for
    /// `lease_time` when it may be the client's, else says why not (→ NAK).
    pub fn bind(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        lease_time: Duration,
        now: Instant,
    ) -> Result<(), Refusal> {
        self.check(&mac, ip, now)?;
        self.assign(mac, ip, LeaseState::Bound, now + lease_time);
        Ok(())
    }

    /// The client took another server's offer: our reservation is dropped.
    pub fn withdraw_offer(&mut self, mac: &Mac) -> Option<Ipv4Addr> {
        match self.leases.get(mac) {
            Some(lease) if lease.state == LeaseState::Offered => {
                let ip = lease.ip;
                self.forget(mac);
                Some(ip)
            }
            _ => None,
        }
    }

    fn forget(&mut self, mac: &Mac) {
        if let Some(lease) = self.leases.remove(mac) {
            if self.holder.get(&lease.ip) == Some(mac) {
                self.holder.remove(&lease.ip);
                self.let_go(lease.ip);
            }
        }
    }

    /// `ip` has no holder any more: the scan must see it again.
    fn let_go(&mut self, ip: Ipv4Addr) {
        self.scan_from = self.scan_from.min(u64::from(u32::from(ip)));
    }

    fn note_expiry_below_mark(&mut self, expires: Instant) {
        self.scan_valid_until = Some(self.scan_valid_until.map_or(expires, |t| t.min(expires)));
    }

    /// The lowest pool address `mac` may have now — the same answer as
    /// walking the pool from its start, but starting at the scan mark.
    fn lowest_free(&mut self, mac: &Mac, now: Instant) -> Result<Ipv4Addr, Refusal> {
        if self.scan_valid_until.is_some_and(|t| now >= t) {
            self.scan_from = u64::from(self.pool.0);
            self.scan_valid_until = None;
        }
        let mut candidate = self.scan_from.max(u64::from(self.pool.0));
        while candidate <= u64::from(self.pool.1) {
            let ip = Ipv4Addr::from(candidate as u32);
            if self.check(mac, ip, now).is_ok() {
                self.scan_from = candidate;
                return Ok(ip);
            }
            if let Some(lease) = self.holder.get(&ip).and_then(|m| self.leases.get(m)) {
                let expires = lease.expires;
                self.note_expiry_below_mark(expires);
            }
            candidate += 1;
        }
        self.scan_from = candidate;
        Err(Refusal::PoolExhausted)
    }

    /// RELEASE: frees the address when it is the one the client holds.
    pub fn release(&mut self, mac: &Mac, ip: Ipv4Addr) -> bool {
        if self.leases.get(mac).is_some_and(|l| l.ip == ip) {
            self.forget(mac);
            true
        } else {
            false
        }
    }

    /// DECLINE: the client found `ip` in use on the wire; it is not handed
    /// out again during this run (fixed addresses excepted).
    pub fn decline(&mut self, mac: &Mac, ip: Ipv4Addr) -> bool {
        let known = self.leases.get(mac).is_some_and(|l| l.ip == ip);
        if known {
            self.forget(mac);
        }
        if self.in_pool(ip) && !self.fixed_owner.contains_key(&ip) {
            self.declined.insert(ip);
        }
        known
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const LEASE: Duration = Duration::from_secs(3600);

    fn mac(last: u8) -> Mac {
        Mac([0x00, 0x1f, 0xc1, 0, 0, last])
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, last)
    }

    /// Pool .10–.12, server .1, mac 0x99 fixed at .50.
    fn table() -> LeaseTable {
        LeaseTable::new(ip(10), ip(12), ip(1), &[(mac(0x99), ip(50))])
    }

    #[test]
    fn allocate_then_bind_then_renew_keeps_the_address() {
        let now = Instant::now();
        let mut t = table();
        assert_eq!(t.offer(mac(1), None, now), Ok(ip(10)));
        assert_eq!(t.lease(&mac(1)).unwrap().state, LeaseState::Offered);
        assert_eq!(t.bind(mac(1), ip(10), LEASE, now), Ok(()));
        assert_eq!(t.lease(&mac(1)).unwrap().state, LeaseState::Bound);
        let later = now + Duration::from_secs(1800);
        assert_eq!(t.bind(mac(1), ip(10), LEASE, later), Ok(()));
        assert_eq!(t.lease(&mac(1)).unwrap().expires, later + LEASE);
        // a new DISCOVER from the same client gets the same address
        assert_eq!(t.offer(mac(1), None, later), Ok(ip(10)));
        assert_eq!(t.lease(&mac(1)).unwrap().state, LeaseState::Bound);
        // a second client gets the next address
        assert_eq!(t.offer(mac(2), None, later), Ok(ip(11)));
    }

    #[rstest]
    #[case::free_pool_address(Some(12), Ok(12))]
    #[case::outside_the_pool(Some(99), Ok(10))]
    #[case::the_servers_own(Some(1), Ok(10))]
    #[case::nothing_asked(None, Ok(10))]
    fn requested_address_is_honoured_when_free(
        #[case] asked: Option<u8>,
        #[case] expected: Result<u8, Refusal>,
    ) {
        let mut t = table();
        assert_eq!(
            t.offer(mac(1), asked.map(ip), Instant::now()),
            expected.map(ip)
        );
    }

    #[rstest]
    #[case::ours_and_free(1, 11, Ok(()))]
    #[case::held_by_another(1, 10, Err(Refusal::InUse))]
    #[case::outside_pool(1, 200, Err(Refusal::NotOurs))]
    #[case::server_address(1, 1, Err(Refusal::NotOurs))]
    #[case::fixed_for_another(1, 50, Err(Refusal::FixedElsewhere))]
    #[case::fixed_client_wrong_address(0x99, 11, Err(Refusal::NotTheFixedAddress))]
    #[case::fixed_client_its_address(0x99, 50, Ok(()))]
    fn request_checks(
        #[case] client: u8,
        #[case] asked: u8,
        #[case] expected: Result<(), Refusal>,
    ) {
        let now = Instant::now();
        let mut t = table();
        t.offer(mac(7), None, now).unwrap();
        t.bind(mac(7), ip(10), LEASE, now).unwrap();
        assert_eq!(t.bind(mac(client), ip(asked), LEASE, now), expected);
    }

    #[test]
    fn fixed_address_is_offered_even_when_another_is_asked_for() {
        let mut t = table();
        assert_eq!(t.offer(mac(0x99), Some(ip(11)), Instant::now()), Ok(ip(50)));
    }

    #[test]
    fn release_frees_for_the_next_client() {
        let now = Instant::now();
        let mut t = table();
        t.offer(mac(1), None, now).unwrap();
        t.bind(mac(1), ip(10), LEASE, now).unwrap();
        assert!(
            !t.release(&mac(1), ip(11)),
            "release of an address the client does not hold is ignored"
        );
        assert!(t.lease(&mac(1)).is_some());
        assert!(t.release(&mac(1), ip(10)));
        assert!(t.lease(&mac(1)).is_none());
        assert_eq!(t.offer(mac(2), None, now), Ok(ip(10)));
    }

    #[test]
    fn declined_address_is_never_offered_again() {
        let now = Instant::now();
        let mut t = table();
        t.offer(mac(1), None, now).unwrap();
        t.bind(mac(1), ip(10), LEASE, now).unwrap();
        assert!(t.decline(&mac(1), ip(10)));
        assert!(t.is_declined(ip(10)));
        assert_eq!(t.offer(mac(1), None, now), Ok(ip(11)));
        assert_eq!(t.bind(mac(3), ip(10), LEASE, now), Err(Refusal::Declined));
    }

    #[test]
    fn declined_fixed_address_stays_fixed() {
        let now = Instant::now();
        let mut t = table();
        t.bind(mac(0x99), ip(50), LEASE, now).unwrap();
        t.decline(&mac(0x99), ip(50));
        assert_eq!(t.offer(mac(0x99), None, now), Ok(ip(50)));
    }

    #[test]
    fn exhausted_pool_gives_no_offer_until_an_offer_or_lease_expires() {
        let now = Instant::now();
        let mut t = table();
        for n in 1..=3 {
            t.offer(mac(n), None, now).unwrap();
        }
        assert_eq!(t.offer(mac(4), None, now), Err(Refusal::PoolExhausted));
        // bind one for longer than the offer hold; the other offers lapse
        t.bind(mac(1), ip(10), LEASE, now).unwrap();
        let later = now + OFFER_HOLD + Duration::from_secs(1);
        assert_eq!(t.offer(mac(4), None, later), Ok(ip(11)));
        assert!(
            t.lease(&mac(2)).is_none(),
            "the expired offer's entry was reclaimed"
        );
        assert_eq!(t.lease(&mac(1)).unwrap().ip, ip(10));
    }

    #[test]
    fn a_flood_of_macs_never_grows_the_table_beyond_the_addresses() {
        let now = Instant::now();
        let mut t = table();
        let mut offered = 0;
        for n in 0..=255u8 {
            let step = now + OFFER_HOLD * u32::from(n) / 4;
            if t.offer(Mac([2, 0, 0, 0, 1, n]), None, step).is_ok() {
                offered += 1;
            }
            assert!(t.len() <= 4, "table holds {} entries", t.len());
        }
        assert!(offered > 3, "expired offers were reused ({offered} offers)");
    }

    /// What `offer` must answer, computed the slow way: the fixed address,
    /// else the current one, else the asked one, else the pool walked from its start.
    fn offer_by_full_scan(
        t: &LeaseTable,
        client: Mac,
        asked: Option<Ipv4Addr>,
        now: Instant,
    ) -> Result<Ipv4Addr, Refusal> {
        if let Some(&fixed) = t.fixed.get(&client) {
            return Ok(fixed);
        }
        let usable = |ip: &Ipv4Addr| t.check(&client, *ip, now).is_ok();
        t.lease(&client)
            .map(|l| l.ip)
            .filter(usable)
            .or(asked.filter(usable))
            .or_else(|| (t.pool.0..=t.pool.1).map(Ipv4Addr::from).find(usable))
            .ok_or(Refusal::PoolExhausted)
    }

    #[test]
    fn scan_mark_gives_the_same_offers_as_walking_the_whole_pool() {
        // A fixed pseudo-random mix of offers, binds (short and long),
        // releases, declines, withdrawals and time passing, on a pool small
        // enough to run out and to see offers and leases expire.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut t = LeaseTable::new(ip(10), ip(25), ip(12), &[(mac(0x99), ip(20))]);
        let mut now = Instant::now();
        let mut offers = 0;
        for _ in 0..20_000 {
            let client = if next(20) == 0 {
                mac(0x99)
            } else {
                mac(next(40) as u8)
            };
            match next(10) {
                0..=3 => {
                    let asked = (next(4) == 0).then(|| ip(8 + next(20) as u8));
                    let expected = offer_by_full_scan(&t, client, asked, now);
                    assert_eq!(t.offer(client, asked, now), expected);
                    offers += 1;
                }
                4 | 5 => {
                    let address = match t.lease(&client) {
                        Some(lease) if next(4) != 0 => lease.ip,
                        _ => ip(8 + next(20) as u8),
                    };
                    let lease = Duration::from_secs(1 + next(200));
                    let _ = t.bind(client, address, lease, now);
                }
                6 => {
                    if let Some(lease) = t.lease(&client) {
                        t.release(&client, lease.ip);
                    }
                }
                7 => {
                    // A few declines only: a declined address stays out for good.
                    if next(8) == 0 && t.declined.len() < 3 {
                        if let Some(lease) = t.lease(&client) {
                            t.decline(&client, lease.ip);
                        }
                    } else {
                        t.withdraw_offer(&client);
                    }
                }
                _ => now += Duration::from_secs(next(40)),
            }
        }
        assert!(offers > 5_000, "{offers} offers compared");
    }

    #[test]
    fn offer_taken_elsewhere_is_withdrawn() {
        let now = Instant::now();
        let mut t = table();
        t.offer(mac(1), None, now).unwrap();
        assert_eq!(t.withdraw_offer(&mac(1)), Some(ip(10)));
        assert_eq!(t.offer(mac(2), None, now), Ok(ip(10)));
        t.bind(mac(2), ip(10), LEASE, now).unwrap();
        assert_eq!(
            t.withdraw_offer(&mac(2)),
            None,
            "a bound lease is not withdrawn"
        );
    }
}
