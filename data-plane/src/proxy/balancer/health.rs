//! Passive health checks: what an attempt's outcome says about its target, the counters that
//! turn outcomes into a verdict, and the half-open trial that brings an unhealthy target back.
//!
//! A target's health word is one atomic: the state (healthy, unhealthy, trial) and the time it
//! was last marked unhealthy or last handed a trial request. Picks read it with one load and
//! claim a trial with one compare-and-swap, so the pick path takes no lock; the counters are
//! atomics too. Only a transition (healthy ↔ unhealthy, the end of a trial) takes the target's
//! mutex, so that concurrent reports make one transition and log it once.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use gatehouse_shared::model;

use super::Outcome;

/// How long an unhealthy target gets no traffic before one trial request may go to it; a
/// failed trial starts another cool-down. Also how long a trial may stay unanswered (a request
/// that was cancelled and never reported) before another one may be sent.
pub(super) const COOL_DOWN: Duration = Duration::from_secs(10);

/// The states of a health word (its two low bits).
const HEALTHY: u64 = 0;
const UNHEALTHY: u64 = 1;
const TRIAL: u64 = 2;
const STATE_BITS: u32 = 2;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

/// Monotonic time in microseconds since the balancers were created: real, or (tests) moved by
/// hand so cool-downs pass without sleeping.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    epoch: Instant,
    manual: Option<Arc<AtomicU64>>,
}

/// An upstream's passive check settings, parsed. A threshold of 0 disables its counter.
#[derive(Debug, Clone)]
pub(super) struct Passive {
    healthy_statuses: StatusSet,
    unhealthy_statuses: StatusSet,
    successes: u32,
    tcp_failures: u32,
    timeouts: u32,
    http_failures: u32,
}

/// What one outcome says about a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// A status of `healthy.http_statuses`.
    Success,
    /// A connection failure, a timeout, or a status of `unhealthy.http_statuses`.
    Failure(Failure),
    /// Any other status: counts for nothing (but ends a trial well: the target answered).
    Neutral,
}

/// A kind of failure, each with its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    Tcp,
    Timeout,
    Http(u16),
}

/// The health of one target: shared by every ring (of every runtime) that lists it.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// `since << STATE_BITS | state`; `since`: clock µs of the last unhealthy mark or trial.
    word: AtomicU64,
    successes: AtomicU32,
    tcp_failures: AtomicU32,
    timeouts: AtomicU32,
    http_failures: AtomicU32,
    /// Serializes transitions made by reports (never taken by picks).
    transitions: Mutex<()>,
}

/// A change of health made by a report, for the ring to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    /// Now healthy.
    Healthy(Reason),
    /// Now unhealthy.
    Unhealthy(Reason),
    /// A trial failed: still unhealthy, for another cool-down.
    TrialFailed,
}

/// Why a transition happened (its `Display` is the log's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    Successes(u32),
    TrialSucceeded,
    TcpFailures(u32),
    Timeouts(u32),
    HttpFailures { count: u32, status: u16 },
    ChecksDisabled,
}

/// HTTP statuses 0..1024 as a bit set.
#[derive(Debug, Clone, Default)]
struct StatusSet([u64; 16]);

// === impl Clock ===

impl Clock {
    /// The real clock.
    pub(crate) fn system() -> Self {
        Self {
            epoch: Instant::now(),
            manual: None,
        }
    }

    /// A clock standing still at 0 until [`Clock::advance`]d.
    #[cfg(test)]
    pub(crate) fn manual() -> Self {
        Self {
            epoch: Instant::now(),
            manual: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    /// Moves a manual clock forward (no effect on the real one).
    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        if let Some(manual) = &self.manual {
            manual.fetch_add(micros(by), Ordering::Relaxed);
        }
    }

    /// Microseconds since the epoch.
    pub(super) fn now(&self) -> u64 {
        match &self.manual {
            Some(manual) => manual.load(Ordering::Relaxed),
            None => micros(self.epoch.elapsed()),
        }
    }
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

// === impl Passive ===

impl Passive {
    pub(super) fn new(passive: &model::PassiveHealthcheck) -> Self {
        Self {
            healthy_statuses: StatusSet::new(&passive.healthy.http_statuses),
            unhealthy_statuses: StatusSet::new(&passive.unhealthy.http_statuses),
            successes: passive.healthy.successes.into(),
            tcp_failures: passive.unhealthy.tcp_failures.into(),
            timeouts: passive.unhealthy.timeouts.into(),
            http_failures: passive.unhealthy.http_failures.into(),
        }
    }

    /// Whether any outcome can mark a target unhealthy; if not, reports can skip the
    /// counters altogether (Kong's default).
    pub(super) fn enabled(&self) -> bool {
        self.tcp_failures > 0 || self.timeouts > 0 || self.http_failures > 0
    }

    /// Kong's order: a status in both lists counts as healthy.
    pub(super) fn classify(&self, outcome: Outcome) -> Verdict {
        match outcome {
            Outcome::ConnectFailed => Verdict::Failure(Failure::Tcp),
            Outcome::TimedOut => Verdict::Failure(Failure::Timeout),
            Outcome::Status(status) if self.healthy_statuses.contains(status) => Verdict::Success,
            Outcome::Status(status) if self.unhealthy_statuses.contains(status) => {
                Verdict::Failure(Failure::Http(status))
            }
            Outcome::Status(_) => Verdict::Neutral,
        }
    }
}

// === impl Health ===

impl Health {
    /// Whether the target takes traffic (a target in trial does not, beyond its trial).
    pub(super) fn is_healthy(&self) -> bool {
        self.word.load(Ordering::Acquire) & STATE_MASK == HEALTHY
    }

    /// Claims the trial request of an unhealthy target whose cool-down has passed: true for
    /// exactly one caller per cool-down.
    pub(super) fn claim_trial(&self, now: u64) -> bool {
        let word = self.word.load(Ordering::Acquire);
        if word & STATE_MASK == HEALTHY || now < (word >> STATE_BITS) + micros(COOL_DOWN) {
            return false;
        }
        self.word
            .compare_exchange(word, pack(now, TRIAL), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Counts `verdict` (an attempt's outcome; `trial`: the attempt was this target's trial);
    /// returns the transition it caused, if any.
    ///
    /// Kong's counting: a success resets the failure counters, a failure resets the success
    /// counter; `unhealthy.<kind>` failures of one kind in a row (without a success between)
    /// mark a healthy target unhealthy, `healthy.successes` successes in a row mark an
    /// unhealthy one healthy. A trial ends on its own outcome: any answer outside
    /// `unhealthy.http_statuses` makes the target healthy, anything else starts another
    /// cool-down.
    pub(super) fn record(
        &self,
        passive: &Passive,
        verdict: Verdict,
        trial: bool,
        now: u64,
    ) -> Option<Transition> {
        if trial && let Some(transition) = self.end_trial(verdict, now) {
            return Some(transition);
        }
        match verdict {
            Verdict::Neutral => None,
            Verdict::Success => {
                for counter in [&self.tcp_failures, &self.timeouts, &self.http_failures] {
                    reset(counter);
                }
                if passive.successes == 0 || self.is_healthy() {
                    return None;
                }
                let count = self.successes.fetch_add(1, Ordering::AcqRel) + 1;
                if count < passive.successes {
                    return None;
                }
                self.transition(&[UNHEALTHY, TRIAL], HEALTHY, now)
                    .then_some(Transition::Healthy(Reason::Successes(count)))
            }
            Verdict::Failure(kind) => {
                let (counter, limit) = match kind {
                    Failure::Tcp => (&self.tcp_failures, passive.tcp_failures),
                    Failure::Timeout => (&self.timeouts, passive.timeouts),
                    Failure::Http(_) => (&self.http_failures, passive.http_failures),
                };
                if limit == 0 {
                    return None;
                }
                reset(&self.successes);
                if !self.is_healthy() {
                    return None;
                }
                let count = counter.fetch_add(1, Ordering::AcqRel) + 1;
                if count < limit {
                    return None;
                }
                let reason = match kind {
                    Failure::Tcp => Reason::TcpFailures(count),
                    Failure::Timeout => Reason::Timeouts(count),
                    Failure::Http(status) => Reason::HttpFailures { count, status },
                };
                self.transition(&[HEALTHY], UNHEALTHY, now)
                    .then_some(Transition::Unhealthy(reason))
            }
        }
    }

    /// Marks an unhealthy target healthy because nothing can judge it any more (its upstream's
    /// passive checks were turned off); true when it was unhealthy.
    pub(super) fn revive(&self) -> bool {
        !self.is_healthy() && self.transition(&[UNHEALTHY, TRIAL], HEALTHY, 0)
    }

    /// The end of this target's trial; `None` when the target is no longer in trial (another
    /// report decided first): then the outcome counts as any other.
    fn end_trial(&self, verdict: Verdict, now: u64) -> Option<Transition> {
        let (to, transition) = match verdict {
            Verdict::Failure(_) => (UNHEALTHY, Transition::TrialFailed),
            Verdict::Success | Verdict::Neutral => {
                (HEALTHY, Transition::Healthy(Reason::TrialSucceeded))
            }
        };
        self.transition(&[TRIAL], to, now).then_some(transition)
    }

    /// Moves from one of the states `from` to `to`, resetting the counters; false when
    /// another report (or a trial claim) got there first.
    fn transition(&self, from: &[u64], to: u64, now: u64) -> bool {
        let _serial = self
            .transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let word = self.word.load(Ordering::Acquire);
        if !from.contains(&(word & STATE_MASK)) {
            return false;
        }
        let since = if to == HEALTHY { 0 } else { now };
        // A trial claim may swap the word under us (unhealthy → trial); then the claim wins and
        // this transition is retried by the next report.
        if self
            .word
            .compare_exchange(word, pack(since, to), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        for counter in [
            &self.successes,
            &self.tcp_failures,
            &self.timeouts,
            &self.http_failures,
        ] {
            reset(counter);
        }
        true
    }
}

fn pack(since: u64, state: u64) -> u64 {
    (since << STATE_BITS) | state
}

/// Zeroes a counter, without a write when it is zero already (keeps the cache line shared
/// on the common path: every success of a healthy target).
fn reset(counter: &AtomicU32) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

// === impl Reason ===

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Successes(n) => write!(f, "{n} success{}", plural(*n, "es")),
            Self::TrialSucceeded => f.write_str("trial request succeeded"),
            Self::TcpFailures(n) => write!(f, "{n} tcp failure{}", plural(*n, "s")),
            Self::Timeouts(n) => write!(f, "{n} timeout{}", plural(*n, "s")),
            Self::HttpFailures { count, status } => write!(
                f,
                "{count} http failure{} (last status {status})",
                plural(*count, "s")
            ),
            Self::ChecksDisabled => f.write_str("passive health checks disabled"),
        }
    }
}

fn plural(n: u32, suffix: &str) -> &str {
    if n == 1 { "" } else { suffix }
}

// === impl StatusSet ===

impl StatusSet {
    fn new(statuses: &[u16]) -> Self {
        let mut set = Self::default();
        for status in statuses {
            if let Some(word) = set.0.get_mut(usize::from(*status) / 64) {
                *word |= 1 << (status % 64);
            }
        }
        set
    }

    fn contains(&self, status: u16) -> bool {
        self.0
            .get(usize::from(status) / 64)
            .is_some_and(|word| word & (1 << (status % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(successes: u8, tcp_failures: u8, http_failures: u8) -> Passive {
        let mut config = model::PassiveHealthcheck::default();
        config.healthy.successes = successes;
        config.unhealthy.tcp_failures = tcp_failures;
        config.unhealthy.http_failures = http_failures;
        Passive::new(&config)
    }

    #[test]
    fn statuses_are_classified_healthy_first() {
        let mut config = model::PassiveHealthcheck::default();
        config.unhealthy.http_statuses.push(200);
        let p = Passive::new(&config);
        assert_eq!(p.classify(Outcome::Status(200)), Verdict::Success);
        assert_eq!(
            p.classify(Outcome::Status(503)),
            Verdict::Failure(Failure::Http(503))
        );
        assert_eq!(p.classify(Outcome::Status(404)), Verdict::Neutral);
        assert_eq!(p.classify(Outcome::Status(9999)), Verdict::Neutral);
        assert_eq!(
            p.classify(Outcome::ConnectFailed),
            Verdict::Failure(Failure::Tcp)
        );
        assert!(!Passive::new(&model::PassiveHealthcheck::default()).enabled());
    }

    #[test]
    fn failures_in_a_row_mark_unhealthy_and_a_success_resets_them() {
        let p = passive(2, 3, 0);
        let h = Health::default();
        let tcp = Verdict::Failure(Failure::Tcp);
        assert_eq!(h.record(&p, tcp, false, 1), None);
        assert_eq!(h.record(&p, tcp, false, 2), None);
        assert_eq!(h.record(&p, Verdict::Success, false, 3), None);
        assert_eq!(h.record(&p, tcp, false, 4), None);
        assert_eq!(h.record(&p, tcp, false, 5), None);
        // Disabled counter: http failures count for nothing.
        let http = Verdict::Failure(Failure::Http(500));
        assert_eq!(h.record(&p, http, false, 6), None);
        assert_eq!(
            h.record(&p, tcp, false, 7),
            Some(Transition::Unhealthy(Reason::TcpFailures(3)))
        );
        assert!(!h.is_healthy());
        // Successes in a row revive it; a failure between restarts the count.
        assert_eq!(h.record(&p, Verdict::Success, false, 8), None);
        assert_eq!(h.record(&p, tcp, false, 9), None);
        assert_eq!(h.record(&p, Verdict::Success, false, 10), None);
        assert_eq!(
            h.record(&p, Verdict::Success, false, 11),
            Some(Transition::Healthy(Reason::Successes(2)))
        );
        assert!(h.is_healthy());
    }

    #[test]
    fn one_trial_per_cool_down() {
        let p = passive(0, 1, 0);
        let h = Health::default();
        let cool = micros(COOL_DOWN);
        assert!(!h.claim_trial(0), "healthy targets have no trial");
        h.record(&p, Verdict::Failure(Failure::Tcp), false, 100);
        assert!(!h.claim_trial(100 + cool - 1));
        assert!(h.claim_trial(100 + cool));
        assert!(!h.claim_trial(100 + cool), "one trial only");
        assert_eq!(
            h.record(&p, Verdict::Failure(Failure::Tcp), true, 200 + cool),
            Some(Transition::TrialFailed)
        );
        assert!(!h.claim_trial(200 + 2 * cool - 1));
        assert!(h.claim_trial(200 + 2 * cool));
        assert_eq!(
            h.record(&p, Verdict::Neutral, true, 300 + 2 * cool),
            Some(Transition::Healthy(Reason::TrialSucceeded))
        );
        assert!(h.is_healthy());
    }

    #[test]
    fn an_unanswered_trial_expires() {
        let p = passive(0, 1, 0);
        let h = Health::default();
        h.record(&p, Verdict::Failure(Failure::Tcp), false, 0);
        let cool = micros(COOL_DOWN);
        assert!(h.claim_trial(cool));
        assert!(!h.claim_trial(2 * cool - 1));
        assert!(h.claim_trial(2 * cool));
        assert!(h.revive());
        assert!(!h.revive());
    }
}
