//! On-demand issuance, data-plane side.
//!
//! When a TLS handshake's server name has no certificate (the default one is served, as
//! always) and the running configuration's `acme_on_demand` allows the name (any name with
//! `allow_any_domain`, else an exact entry of `domains` or a `*.suffix` entry, which like
//! Kong's matches any name ending in `.suffix`, several labels deep), the data plane asks the
//! control plane for a certificate: a `CertificateWanted` message on its sync stream.
//!
//! A flood of random server names must neither grow memory nor flood the control plane:
//! - a name is asked for at most once per [`OnDemandLimits::reask_after`] (5 minutes);
//! - at most [`OnDemandLimits::per_minute`] (30) requests leave per minute, whatever the names;
//! - the names remembered are only those sent (so at most `per_minute` × the re-ask window,
//!   150, live at once; expired ones are pruned beyond [`MAX_REMEMBERED`]);
//! - the queue towards the sync stream is bounded ([`QUEUE`]); when it is full (the control
//!   plane is away) the request is dropped and the name may be asked again later.
//!
//! Each outcome is counted: `gatehouse_acme_certificate_requests_total{outcome="sent"|
//! "duplicate"|"rate_limited"|"queue_full"}`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use gatehouse_shared::checks;
use gatehouse_shared::model;

use crate::metrics::{METRICS, OnDemandOutcome};

/// Requests queued towards the sync stream.
pub(crate) const QUEUE: usize = 64;
/// Names remembered before the expired ones are pruned.
const MAX_REMEMBERED: usize = 1024;

/// The limits of on-demand requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OnDemandLimits {
    /// A name is asked for again only after this.
    pub(crate) reask_after: Duration,
    /// Most requests per minute, all names together.
    pub(crate) per_minute: u32,
}

/// Sends on-demand certificate requests towards the sync client, deduplicated and
/// rate-limited. [`Default`]: sends nothing (no sync client).
#[derive(Debug, Default)]
pub(crate) struct OnDemand {
    sender: Option<mpsc::Sender<String>>,
    limits: OnDemandLimits,
    state: Mutex<Limiter>,
}

/// The names sent recently and the current minute's count.
#[derive(Debug)]
struct Limiter {
    sent: HashMap<String, Instant>,
    minute_start: Instant,
    in_minute: u32,
}

/// Which names may be asked for on demand (the `acme` plugin's `allow_any_domain` and
/// `domains`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OnDemandRules {
    any: bool,
    exact: Vec<String>,
    /// `*.suffix` entries, as `.suffix`.
    suffixes: Vec<String>,
}

// === impl OnDemandLimits ===

impl Default for OnDemandLimits {
    fn default() -> Self {
        Self {
            reask_after: Duration::from_secs(300),
            per_minute: 30,
        }
    }
}

// === impl OnDemand ===

impl OnDemand {
    /// A limiter sending to a new queue, and the queue's receiving end (the sync client's).
    pub(crate) fn channel(limits: OnDemandLimits) -> (Self, mpsc::Receiver<String>) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let on_demand = Self {
            sender: Some(sender),
            limits,
            state: Mutex::new(Limiter::new()),
        };
        (on_demand, receiver)
    }

    /// Asks for a certificate for `name` (allowed, lowercase) unless it was asked for
    /// recently or the rate limit is reached.
    pub(crate) fn want(&self, name: String) {
        let Some(sender) = &self.sender else {
            return;
        };
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = state.admit(&name, now, self.limits);
        let outcome = match outcome {
            OnDemandOutcome::Sent => match sender.try_send(name.clone()) {
                Ok(()) => {
                    state.sent.insert(name.clone(), now);
                    state.in_minute += 1;
                    OnDemandOutcome::Sent
                }
                Err(_) => OnDemandOutcome::QueueFull,
            },
            other => other,
        };
        drop(state);
        METRICS.on_demand(outcome);
        if outcome == OnDemandOutcome::Sent {
            tracing::info!(
                server_name = %name,
                "asking the control plane for an on-demand certificate"
            );
        }
    }
}

#[cfg(test)]
impl OnDemand {
    /// The names remembered as sent recently.
    pub(crate) fn remembered(&self) -> Vec<String> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.sent.keys().cloned().collect()
    }
}

// === impl Limiter ===

impl Limiter {
    fn new() -> Self {
        Self {
            sent: HashMap::new(),
            minute_start: Instant::now(),
            in_minute: 0,
        }
    }

    /// Whether `name` may be sent now: [`OnDemandOutcome::Sent`] when it may.
    fn admit(&mut self, name: &str, now: Instant, limits: OnDemandLimits) -> OnDemandOutcome {
        if self
            .sent
            .get(name)
            .is_some_and(|at| now.duration_since(*at) < limits.reask_after)
        {
            return OnDemandOutcome::Duplicate;
        }
        if now.duration_since(self.minute_start) >= Duration::from_secs(60) {
            self.minute_start = now;
            self.in_minute = 0;
        }
        if self.in_minute >= limits.per_minute {
            return OnDemandOutcome::RateLimited;
        }
        if self.sent.len() >= MAX_REMEMBERED {
            self.sent
                .retain(|_, at| now.duration_since(*at) < limits.reask_after);
            if self.sent.len() >= MAX_REMEMBERED {
                return OnDemandOutcome::RateLimited;
            }
        }
        OnDemandOutcome::Sent
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

// === impl OnDemandRules ===

impl OnDemandRules {
    /// Checks and compiles the rules: each entry of `domains` is a name or `*.suffix`.
    pub(crate) fn new(on_demand: &model::AcmeOnDemand) -> Result<Self, String> {
        let mut rules = Self {
            any: on_demand.allow_any_domain,
            exact: Vec::new(),
            suffixes: Vec::new(),
        };
        for domain in &on_demand.domains {
            let lower = domain.trim_end_matches('.').to_ascii_lowercase();
            let invalid = |e: String| format!("invalid domain '{domain}': {e}");
            checks::sni_name(&lower).map_err(invalid)?;
            let wildcard = || invalid("only a leading '*.' wildcard is allowed".to_owned());
            match lower.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => rules.suffixes.push(suffix.to_owned()),
                Some(_) => return Err(wildcard()),
                None if lower.contains('*') => return Err(wildcard()),
                None => rules.exact.push(lower),
            }
        }
        Ok(rules)
    }

    /// Whether `name` (lowercase, no trailing dot) may be asked for.
    pub(crate) fn allows(&self, name: &str) -> bool {
        if name.is_empty() || name.len() > 253 {
            return false;
        }
        self.any
            || self.exact.iter().any(|e| e == name)
            || self
                .suffixes
                .iter()
                .any(|s| name.len() > s.len() && name.ends_with(s.as_str()))
    }
}
