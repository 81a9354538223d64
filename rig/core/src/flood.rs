//! The flood guard of the rig's datagram services (DHCP, TFTP's request port,
//! SIP over UDP, SIP's TCP accepts).
//!
//! Two budgets, both cheap to check before any parsing:
//! - a token bucket bounds how many datagrams a service handles per second
//!   ([`FloodGuard::admit`]); the rest are dropped and counted;
//! - a malformed-input gate bounds how many `*.malformed` events sources can
//!   cause per interval ([`FloodGuard::show_malformed`]): the first few from
//!   each source are published with their detail, so one bad packet stays
//!   visible; the rest are counted.
//!
//! What was dropped or not shown is reported in one `<service>.flood` event
//! per [`REPORT_INTERVAL`] at most ([`FloodGuard::take_report`]) and at stop
//! ([`FloodGuard::finish`]), naming the busiest sources. A flood therefore
//! costs a counter, not an event (and memory) per datagram.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{NewEvent, Source};

/// How much a service handles before the guard drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FloodLimits {
    /// Datagrams (or connections) handled at once before the rate applies.
    pub burst: u32,
    /// Datagrams (or connections) handled per second once the burst is spent.
    pub per_second: u32,
}

impl FloodLimits {
    /// Sized for a boot storm: a phone sends two to four datagrams per
    /// service while it boots, so a bench of a few thousand phones powered
    /// together fits in the burst, and 10 000 phones over 30 s need about
    /// 700/s per service; beyond 2500/s it is a flood.
    pub const BOOT_STORM: FloodLimits = FloodLimits {
        burst: 8000,
        per_second: 2500,
    };

    /// Refuses limits under which nothing would ever be handled.
    pub fn check(&self) -> Result<(), String> {
        if self.burst == 0 || self.per_second == 0 {
            return Err(format!(
                "flood_guard burst ({}) and per_second ({}) must both be at least 1",
                self.burst, self.per_second
            ));
        }
        Ok(())
    }
}

impl Default for FloodLimits {
    fn default() -> Self {
        FloodLimits::BOOT_STORM
    }
}

/// At most one `<service>.flood` report per interval; malformed-event
/// budgets start afresh with each interval.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Malformed datagrams from one source shown one by one per interval.
pub const MALFORMED_SHOWN_PER_SOURCE: u32 = 10;
/// Malformed datagrams shown one by one per interval, all sources together
/// (so a flood from many addresses is bounded too).
pub const MALFORMED_SHOWN_PER_INTERVAL: u32 = 20;
/// Sources named in a report; datagrams of any further source are counted
/// in `other_sources`.
pub const LISTED_SOURCES: usize = 8;

/// Datagrams from one source that the guard dropped or did not show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceCount {
    pub ip: IpAddr,
    pub datagrams: u64,
}

/// What a guard turned away or did not show since its last report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FloodReport {
    /// Dropped unhandled: over the rate budget.
    pub dropped: u64,
    /// Handled, found malformed, and counted instead of published one by one.
    pub malformed: u64,
    /// The first [`LISTED_SOURCES`] sources seen, busiest first.
    pub sources: Vec<SourceCount>,
    /// Datagrams from sources beyond the listed ones.
    pub other_sources: u64,
}

impl FloodReport {
    fn is_empty(&self) -> bool {
        self.dropped == 0 && self.malformed == 0
    }

    fn count(&mut self, source: IpAddr) {
        self.add(source, 1);
    }

    fn add(&mut self, source: IpAddr, datagrams: u64) {
        if let Some(listed) = self.sources.iter_mut().find(|s| s.ip == source) {
            listed.datagrams += datagrams;
        } else if self.sources.len() < LISTED_SOURCES {
            self.sources.push(SourceCount {
                ip: source,
                datagrams,
            });
        } else {
            self.other_sources += datagrams;
        }
    }

    fn merge(&mut self, later: FloodReport) {
        self.dropped += later.dropped;
        self.malformed += later.malformed;
        self.other_sources += later.other_sources;
        for source in later.sources {
            self.add(source.ip, source.datagrams);
        }
    }

    /// The `<service>.flood` event: `dropped`, `malformed`, `sources`
    /// (`[{ip, datagrams}]`), `other_sources`.
    pub fn event(&self, source: Source, kind: &str) -> NewEvent {
        NewEvent::new(source, kind)
            .field("dropped", self.dropped)
            .field("malformed", self.malformed)
            .field("sources", &self.sources)
            .field("other_sources", self.other_sources)
    }
}

/// One per service; owned by its receive loop (or shared behind a mutex).
#[derive(Debug)]
pub struct FloodGuard {
    limits: FloodLimits,
    tokens: f64,
    last_refill: Instant,
    interval_start: Instant,
    /// Malformed datagrams shown this interval, per source. Holds at most
    /// [`MALFORMED_SHOWN_PER_INTERVAL`] entries: once that many were shown
    /// nothing more is inserted.
    shown: HashMap<IpAddr, u32>,
    shown_total: u32,
    /// Counted this interval.
    pending: FloodReport,
    /// Counted in intervals that have ended, not yet taken.
    ready: Option<FloodReport>,
}

impl FloodGuard {
    pub fn new(limits: FloodLimits, now: Instant) -> FloodGuard {
        FloodGuard {
            limits,
            tokens: f64::from(limits.burst),
            last_refill: now,
            interval_start: now,
            shown: HashMap::new(),
            shown_total: 0,
            pending: FloodReport::default(),
            ready: None,
        }
    }

    pub fn limits(&self) -> FloodLimits {
        self.limits
    }

    /// Whether to handle this datagram (or connection) from `source`; when
    /// not, it is counted for the next report.
    pub fn admit(&mut self, now: Instant, source: IpAddr) -> bool {
        self.roll(now);
        let elapsed = now.saturating_duration_since(self.last_refill);
        self.last_refill = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * f64::from(self.limits.per_second))
            .min(f64::from(self.limits.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.count_dropped(source);
            false
        }
    }

    /// Counts something dropped for a reason of the service's own (a
    /// connection over the open-connections cap) for the next report.
    pub fn count_dropped(&mut self, source: IpAddr) {
        self.pending.dropped += 1;
        self.pending.count(source);
    }

    /// Whether to publish the `*.malformed` event of a datagram from
    /// `source`; when not, it is counted for the next report.
    pub fn show_malformed(&mut self, now: Instant, source: IpAddr) -> bool {
        self.roll(now);
        if self.shown_total < MALFORMED_SHOWN_PER_INTERVAL {
            let shown = self.shown.entry(source).or_insert(0);
            if *shown < MALFORMED_SHOWN_PER_SOURCE {
                *shown += 1;
                self.shown_total += 1;
                return true;
            }
        }
        self.pending.malformed += 1;
        self.pending.count(source);
        false
    }

    /// The report of the intervals that have ended, if anything was counted
    /// in them. Call on every datagram or on a timer; it returns something
    /// at most once per [`REPORT_INTERVAL`].
    pub fn take_report(&mut self, now: Instant) -> Option<FloodReport> {
        self.roll(now);
        self.ready.take()
    }

    /// Everything counted and not reported yet (at stop).
    pub fn finish(&mut self) -> Option<FloodReport> {
        let pending = std::mem::take(&mut self.pending);
        self.close_interval(pending);
        self.ready.take()
    }

    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.interval_start) < REPORT_INTERVAL {
            return;
        }
        self.interval_start = now;
        self.shown.clear();
        self.shown_total = 0;
        let pending = std::mem::take(&mut self.pending);
        self.close_interval(pending);
    }

    fn close_interval(&mut self, mut counted: FloodReport) {
        if counted.is_empty() {
            return;
        }
        counted
            .sources
            .sort_by(|a, b| b.datagrams.cmp(&a.datagrams).then(a.ip.cmp(&b.ip)));
        match &mut self.ready {
            Some(ready) => ready.merge(counted),
            None => self.ready = Some(counted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 170, 0, last))
    }

    fn after(t0: Instant, secs: f64) -> Instant {
        t0 + Duration::from_secs_f64(secs)
    }

    /// Offers `count` datagrams at `at` seconds; returns how many were admitted.
    fn offer(guard: &mut FloodGuard, t0: Instant, at: f64, count: u32) -> u32 {
        (0..count)
            .filter(|_| guard.admit(after(t0, at), ip(1)))
            .count() as u32
    }

    #[rstest]
    // (burst, per_second, [(at seconds, offered, admitted)])
    #[case::burst_then_nothing(3, 1, &[(0.0, 5, 3)])]
    #[case::refill_at_the_rate(3, 2, &[(0.0, 3, 3), (0.5, 3, 1), (1.5, 3, 2)])]
    #[case::refill_never_exceeds_the_burst(2, 10, &[(0.0, 2, 2), (100.0, 5, 2)])]
    #[case::fractional_tokens_accumulate(1, 4, &[(0.0, 1, 1), (0.1, 1, 0), (0.3, 1, 1)])]
    #[case::boot_storm_burst(8000, 2500, &[(0.0, 8100, 8000), (1.0, 3000, 2500)])]
    fn the_bucket_admits_the_burst_then_the_rate(
        #[case] burst: u32,
        #[case] per_second: u32,
        #[case] steps: &[(f64, u32, u32)],
    ) {
        let t0 = Instant::now();
        let mut guard = FloodGuard::new(FloodLimits { burst, per_second }, t0);
        for &(at, offered, admitted) in steps {
            assert_eq!(offer(&mut guard, t0, at, offered), admitted, "at {at}s");
        }
    }

    #[test]
    fn dropped_datagrams_are_reported_once_per_interval_with_their_sources() {
        let t0 = Instant::now();
        let mut guard = one_per_second(t0);
        assert!(guard.admit(t0, ip(1)));
        for _ in 0..3 {
            assert!(!guard.admit(t0, ip(1)));
        }
        assert!(!guard.admit(t0, ip(2)));
        assert_eq!(guard.take_report(after(t0, 1.0)), None, "interval not over");
        let report = guard.take_report(after(t0, 5.0)).expect("a report");
        assert_eq!(report.dropped, 4);
        assert_eq!(report.malformed, 0);
        assert_eq!(
            report.sources,
            vec![
                SourceCount {
                    ip: ip(1),
                    datagrams: 3
                },
                SourceCount {
                    ip: ip(2),
                    datagrams: 1
                }
            ]
        );
        assert_eq!(guard.take_report(after(t0, 20.0)), None, "reported once");
        assert_eq!(guard.finish(), None);
    }

    #[rstest]
    // (malformed datagrams per source, sources, shown one by one, counted)
    #[case::one_bad_packet_is_shown(1, 1, 1, 0)]
    #[case::a_few_per_source_are_shown(10, 1, 10, 0)]
    #[case::more_from_one_source_are_counted(1000, 1, 10, 990)]
    #[case::many_sources_share_the_interval_budget(3, 10, 20, 10)]
    fn malformed_events_are_bounded_per_source_and_interval(
        #[case] per_source: u32,
        #[case] sources: u8,
        #[case] shown: u32,
        #[case] counted: u64,
    ) {
        let t0 = Instant::now();
        let mut guard = FloodGuard::new(FloodLimits::default(), t0);
        let mut shown_now = 0;
        for source in 0..sources {
            for _ in 0..per_source {
                shown_now += u32::from(guard.show_malformed(t0, ip(source)));
            }
        }
        assert_eq!(shown_now, shown);
        let report = guard.finish();
        assert_eq!(report.as_ref().map_or(0, |r| r.malformed), counted);
        assert!(report.is_none_or(|r| r.sources.len() <= LISTED_SOURCES));
    }

    #[test]
    fn a_new_interval_shows_malformed_input_again() {
        let t0 = Instant::now();
        let mut guard = FloodGuard::new(FloodLimits::default(), t0);
        for _ in 0..MALFORMED_SHOWN_PER_SOURCE {
            assert!(guard.show_malformed(t0, ip(1)));
        }
        assert!(!guard.show_malformed(t0, ip(1)));
        assert!(guard.show_malformed(after(t0, 5.0), ip(1)));
        let report = guard
            .take_report(after(t0, 5.0))
            .expect("the last interval's");
        assert_eq!((report.dropped, report.malformed), (0, 1));
    }

    /// A guard that admits one datagram, then one per second: every test's flood starts at the second.
    fn one_per_second(t0: Instant) -> FloodGuard {
        FloodGuard::new(
            FloodLimits {
                burst: 1,
                per_second: 1,
            },
            t0,
        )
    }

    #[test]
    fn sources_beyond_the_listed_ones_are_summed() {
        let t0 = Instant::now();
        let mut guard = one_per_second(t0);
        guard.admit(t0, ip(0));
        for source in 0..100u8 {
            assert!(!guard.admit(t0, ip(source)));
        }
        let report = guard.finish().unwrap();
        assert_eq!(report.dropped, 100);
        assert_eq!(report.sources.len(), LISTED_SOURCES);
        assert_eq!(report.other_sources, 100 - LISTED_SOURCES as u64);
        let event = report.event(Source::Sip, "sip.flood");
        assert_eq!(event.kind, "sip.flood");
        assert_eq!(event.fields["dropped"], 100);
        assert_eq!(event.fields["sources"][0]["ip"], "127.170.0.0");
        assert_eq!(event.fields["sources"][0]["datagrams"], 1);
    }

    #[test]
    fn an_untaken_report_merges_with_the_next_interval() {
        let t0 = Instant::now();
        let mut guard = one_per_second(t0);
        guard.admit(t0, ip(1));
        assert!(!guard.admit(t0, ip(1)));
        // The next interval starts at 5 s (its first admit rolls); the report
        // of the first is not taken before the second ends too.
        assert!(guard.admit(after(t0, 5.0), ip(1)));
        assert!(!guard.admit(after(t0, 5.0), ip(1)));
        let report = guard.take_report(after(t0, 10.0)).unwrap();
        assert_eq!(report.dropped, 2);
        assert_eq!(report.sources[0].datagrams, 2);
    }

    #[test]
    fn drops_of_the_services_own_are_reported_too() {
        let t0 = Instant::now();
        let mut guard = FloodGuard::new(FloodLimits::default(), t0);
        guard.count_dropped(ip(3));
        let report = guard.finish().unwrap();
        assert_eq!((report.dropped, report.sources[0].ip), (1, ip(3)));
    }

    #[rstest]
    #[case(0, 1)]
    #[case(1, 0)]
    fn limits_that_handle_nothing_are_refused(#[case] burst: u32, #[case] per_second: u32) {
        assert!(FloodLimits { burst, per_second }
            .check()
            .unwrap_err()
            .contains("at least 1"));
    }
}
