//! A token bucket in front of packet handling: a flood is dropped and
//! counted instead of filling the timeline with one event per packet.

use std::time::Instant;

/// Datagrams handled in a burst before the rate applies. A phone sends two to
/// four per boot; a boot storm of a few thousand phones must fit.
pub const BURST: f64 = 8000.0;
/// Datagrams handled per second once the burst is spent: a bench of 10,000
/// phones powering on together needs about 700/s over 30 s; beyond this it is
/// a flood, dropped and reported once instead of filling the timeline.
pub const RATE_PER_SEC: f64 = 2500.0;

pub struct FloodGuard {
    tokens: f64,
    last: Instant,
    burst: f64,
    rate: f64,
    dropped: u64,
}

impl FloodGuard {
    pub fn new(now: Instant) -> Self {
        Self::with_limits(now, BURST, RATE_PER_SEC)
    }

    pub fn with_limits(now: Instant, burst: f64, rate: f64) -> Self {
        FloodGuard {
            tokens: burst,
            last: now,
            burst,
            rate,
            dropped: 0,
        }
    }

    /// Whether to handle this datagram; the first one admitted after a flood
    /// carries how many were dropped, so the flood is reported once.
    pub fn admit(&mut self, now: Instant) -> Admission {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            match std::mem::take(&mut self.dropped) {
                0 => Admission::Handle,
                dropped => Admission::HandleAfterFlood { dropped },
            }
        } else {
            self.dropped += 1;
            Admission::Drop
        }
    }

    /// Datagrams dropped and not yet reported (reported at shutdown).
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Handle,
    HandleAfterFlood { dropped: u64 },
    Drop,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn after(now: Instant, secs: f64) -> Instant {
        now + Duration::from_secs_f64(secs)
    }

    #[test]
    fn burst_then_drop_then_report_once_refilled() {
        let t0 = Instant::now();
        let mut guard = FloodGuard::with_limits(t0, 3.0, 1.0);
        for _ in 0..3 {
            assert_eq!(guard.admit(t0), Admission::Handle);
        }
        assert_eq!(guard.admit(t0), Admission::Drop);
        assert_eq!(guard.admit(after(t0, 0.5)), Admission::Drop);
        assert_eq!(
            guard.admit(after(t0, 1.0)),
            Admission::HandleAfterFlood { dropped: 2 }
        );
        assert_eq!(guard.admit(after(t0, 3.0)), Admission::Handle);
    }

    #[test]
    fn refill_never_exceeds_the_burst() {
        let t0 = Instant::now();
        let mut guard = FloodGuard::with_limits(t0, 2.0, 10.0);
        let later = after(t0, 100.0);
        assert_eq!(guard.admit(later), Admission::Handle);
        assert_eq!(guard.admit(later), Admission::Handle);
        assert_eq!(guard.admit(later), Admission::Drop);
        assert_eq!(guard.take_dropped(), 1);
        assert_eq!(guard.take_dropped(), 0);
    }
}
