//! The load of a target, for `least-connections` and `latency`: requests in flight, and a
//! peak-EWMA of response times.
//!
//! The EWMA is Finagle's "peak EWMA": a sample above the average replaces it at once (a target
//! turning slow is avoided immediately), a sample below pulls it down by a weight that grows
//! with the time since the last sample, and a read decays it toward zero by the time since the
//! last sample, so a target nobody picked (after a bad spell) gets tried again instead of being
//! starved forever. Updates are a load and a store, not a compare-and-swap: two samples landing
//! together may lose one, which an average tolerates.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The EWMA's time constant, µs: a sample weighs `1 - e^(-Δt/τ)`.
const DECAY: f64 = 10_000_000.0;
/// The sample a failed attempt (connection refused, timeout) counts as, µs, when it took less:
/// a target that fails fast must not look fast.
pub(super) const FAILURE_PENALTY: u64 = 10_000_000;

/// Requests in flight and the response time average of one target.
#[derive(Debug, Default)]
pub(super) struct Load {
    in_flight: AtomicU32,
    /// The average, µs, as `f64` bits.
    ewma: AtomicU64,
    /// Clock µs of the last sample.
    stamp: AtomicU64,
}

/// One request in flight to a target; counted until dropped.
#[derive(Debug)]
pub(super) struct InFlight<'a>(&'a AtomicU32);

// === impl Load ===

impl Load {
    /// Counts a request in flight until the guard drops.
    pub(super) fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    pub(super) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The average at `now`, µs (0 before any sample).
    pub(super) fn latency(&self, now: u64) -> f64 {
        let ewma = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        ewma * (-elapsed(self.stamp.load(Ordering::Relaxed), now) / DECAY).exp()
    }

    /// Adds a response time of `sample` µs, observed at `now`.
    pub(super) fn observe(&self, sample: u64, now: u64) {
        let sample = sample as f64;
        let ewma = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        let next = if sample > ewma {
            sample
        } else {
            let w = (-elapsed(self.stamp.load(Ordering::Relaxed), now) / DECAY).exp();
            ewma * w + sample * (1.0 - w)
        };
        self.ewma.store(next.to_bits(), Ordering::Relaxed);
        self.stamp.store(now, Ordering::Relaxed);
    }
}

fn elapsed(since: u64, now: u64) -> f64 {
    now.saturating_sub(since) as f64
}

// === impl InFlight ===

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_requests_in_flight() {
        let load = Load::default();
        let a = load.start();
        let b = load.start();
        assert_eq!(load.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(load.in_flight(), 0);
    }

    #[test]
    fn peaks_count_at_once_and_decay() {
        let load = Load::default();
        assert_eq!(load.latency(0), 0.0);
        load.observe(1000, 0);
        assert_eq!(load.latency(0), 1000.0);
        load.observe(5000, 0);
        assert_eq!(load.latency(0), 5000.0, "a peak replaces the average");
        load.observe(1000, 10_000_000);
        let settled = load.latency(10_000_000);
        assert!(settled > 1000.0 && settled < 5000.0, "{settled}");
        assert!(
            load.latency(100_000_000) < 1.0,
            "an idle target decays toward 0"
        );
    }
}
