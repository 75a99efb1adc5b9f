//! The load balancer: which target of an upstream gets an attempt, and what the attempt's
//! outcome says about the target's health.
//!
//! # Use (the proxy)
//! ```text
//! let rings = balancers.for_runtime(&runtime);          // once per request
//! let ring = rings.ring(&upstream.id)?;                 // None: unknown upstream
//! let captures = ring.wants_captures().then(|| route_match.captures()).flatten();
//! let key = ring.hash_key(&HashInput { client_ip, headers, path, query, captures, consumer });
//! for attempt in 0..attempts {
//!     let pick = ring.pick(&key, attempt).ok_or(NoPeer)?; // 503 "failure to get a peer ..."
//!     ... send to pick.peer ...
//!     pick.report(Outcome::ConnectFailed | Outcome::TimedOut | Outcome::Status(code));
//!     // dropping `pick` ends the request's in-flight count
//! }
//! response.headers.append(SET_COOKIE, key.set_cookie)  // when Some
//! ```
//! The key is computed once per request so that retries start from the same point of the
//! ring and a generated cookie is the same one for every attempt. Picking allocates nothing
//! and takes no lock on the first attempt (a retry of a hashing or load-aware upstream ranks
//! candidates in a small vector).
//!
//! # Algorithms
//! Each upstream of a runtime gets a [`Ring`], built when the first request sees the runtime
//! ([`Balancers::for_runtime`]); targets of weight 0 are left out.
//! - `round-robin`: nginx's smooth weighted round-robin, unrolled into a schedule (weights
//!   3 and 1 give `A A B A`: interleaved rather than bunched) walked by an atomic cursor.
//! - `consistent-hashing`: a table of `slots` entries filled by weighted rendezvous hashing
//!   (see `hash.rs` for why: exact minimal disruption, and the same table on every data plane
//!   whatever order the targets came in), built on first use and kept across runtimes while
//!   the targets, weights and slots stay the same. The request's hash picks an entry; an
//!   unhealthy target's entries fall through to the next entries, so only its keys move. A
//!   retry takes the `attempt`-th distinct healthy target met walking on from the key's entry
//!   (Kong moves to the next target of its ring). The hash input is the upstream's `hash_on`,
//!   else `hash_fallback` when it yields nothing, else there is none and the upstream is
//!   balanced round-robin: `none`; `ip` (the client IP given by the proxy); `header` (several
//!   lines joined with `, `); `cookie` (when absent, a UUID v4 is generated, hashed, and
//!   returned in [`HashKey::set_cookie`] as `<name>=<uuid>; Path=<hash_on_cookie_path>`, as
//!   Kong does); `path`; `query_arg` (decoded; several values sorted and joined with `,`);
//!   `uri_capture` (a group name, or a number, of the route's regex path); `consumer` (the
//!   consumer id; consumers are not identified yet, so this yields nothing and the fallback
//!   applies). A value that is present but empty is a value (Kong's Lua counts `""` as one).
//! - `least-connections`: the healthy target with the fewest requests in flight for its weight,
//!   `(in_flight + 1) / weight` (Kong's score), ties broken by a rotating start. A request is
//!   in flight from its pick until the [`Pick`] is dropped.
//! - `latency`: the lowest `(peak-EWMA response time + 1 µs) × (in_flight + 1) / weight`; the
//!   EWMA (see `load.rs`) decays while a target is idle, so a target that was slow once is
//!   retried later. A response time runs from the pick to [`Pick::report`]; a failed attempt
//!   counts as at least 10 s.
//!
//! A retry with the load-aware algorithms takes the `attempt`-th best target; with
//! round-robin, the next one in the schedule.
//!
//! # Passive health checks
//! The proxy reports each attempt's [`Outcome`]. With Kong's semantics: a status in
//! `passive.healthy.http_statuses` is a success, one in `passive.unhealthy.http_statuses` an
//! HTTP failure, a connection failure a TCP failure, a timeout a timeout; other statuses count
//! for nothing. `unhealthy.tcp_failures` / `timeouts` / `http_failures` failures of that kind
//! in a row (0 disables the counter) mark a target unhealthy; `healthy.successes` successes in
//! a row mark it healthy again; a success resets the failure counters and a failure the
//! success counter. Unhealthy targets get no traffic.
//!
//! Kong keeps a passively unhealthy target out until an active probe or an Admin API call
//! revives it. Data planes have neither, so after a cool-down (10 s, `health::COOL_DOWN`)
//! exactly one request goes to it (half-open): any answer that is not an HTTP failure marks it
//! healthy, anything else starts another cool-down (so does a trial never reported, e.g. a
//! cancelled request: another may go one cool-down later). When no target is healthy, or the
//! healthy share of the weight is below `healthchecks.threshold` percent, a pick returns
//! `None` unless it is such a trial.
//!
//! Health, in-flight counts and latency averages outlive a runtime: a new runtime's ring
//! takes them over from the previous runtime's ring for each target (`host:port`) still
//! listed; a target that leaves the upstream (or gets weight 0) starts afresh if it comes
//! back. Turning an upstream's passive checks off revives its
//! unhealthy targets. Transitions are logged at info: `target marked unhealthy upstream=<name>
//! target=<host:port> reason=<...>` and `target marked healthy ...`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use gatehouse_shared::model;
use http::{HeaderMap, HeaderValue};
use uuid::Uuid;

use crate::router::UriCaptures;
use crate::runtime::{Part, PerRuntime, Runtime};

mod hash;
mod health;
mod load;

use hash::Source;
use health::{Clock, Health, Passive, Reason, Transition};
use load::{InFlight, Load};

/// Longest schedule of one upstream; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;
/// The healthy-weight cache of a ring: the weight in the low bits, the health generation it
/// was computed at (+1, so that 0 means empty) above.
const WEIGHT_BITS: u32 = 40;
const WEIGHT_MASK: u64 = (1 << WEIGHT_BITS) - 1;
const GENERATION_MASK: u64 = (1 << (63 - WEIGHT_BITS)) - 1;

/// An upstream address: host (a name or an IP, without brackets) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// The balancers of the recent runtimes, and the target state that outlives runtimes.
pub(crate) struct Balancers {
    rings: PerRuntime<RuntimeRings>,
    shared: Arc<Shared>,
}

/// The rings of one runtime, by upstream id.
pub(crate) struct RuntimeRings {
    rings: HashMap<Uuid, Ring>,
}

/// One upstream's balancer: its targets, its algorithm's state, its health settings.
pub(crate) struct Ring {
    /// The upstream's name, for logs.
    upstream: String,
    algorithm: Algorithm,
    hash_on: Source,
    hash_fallback: Source,
    passive: Passive,
    /// `healthchecks.threshold`: the healthy weight percentage below which nothing is picked.
    threshold: f64,
    members: Vec<Member>,
    total_weight: u64,
    /// Round-robin order, as indexes into `members`.
    schedule: Vec<u32>,
    /// Round-robin cursor; also the rotating start of the load-aware scans.
    next: AtomicUsize,
    /// Consistent hashing: `slots` entries (indexes into `members`), built on first use.
    slots: u32,
    table: Arc<OnceLock<Vec<u32>>>,
    /// Healthy weight, cached per health generation (see [`WEIGHT_BITS`]).
    healthy: AtomicU64,
    shared: Arc<Shared>,
}

/// What a hashing upstream may hash, from the request. Borrows only.
pub(crate) struct HashInput<'a> {
    /// The client's address (after trusted-proxy processing, as the proxy sees the client).
    pub(crate) client_ip: IpAddr,
    /// The request headers (for `header` and `cookie`).
    pub(crate) headers: &'a HeaderMap,
    /// The normalized request path, without the query string.
    pub(crate) path: &'a str,
    /// The raw query string, without `?`.
    pub(crate) query: Option<&'a str>,
    /// The groups of the route's regex path, when it matched by one with groups.
    pub(crate) captures: Option<&'a UriCaptures<'a>>,
    /// The authenticated consumer; `None` until consumers are identified.
    pub(crate) consumer: Option<Uuid>,
}

/// A request's hash on one upstream ([`Ring::hash_key`]): computed once, used by every
/// attempt.
#[derive(Debug, Default)]
pub(crate) struct HashKey {
    /// `None`: round-robin.
    hash: Option<u64>,
    /// `Set-Cookie` for the response, when the hash cookie was generated.
    pub(crate) set_cookie: Option<HeaderValue>,
}

/// The target chosen for one attempt. Holds the target's in-flight count until dropped.
pub(crate) struct Pick<'r> {
    /// Where to send the attempt.
    pub(crate) peer: &'r Peer,
    ring: &'r Ring,
    member: &'r Member,
    /// Whether this is the half-open trial of an unhealthy target.
    trial: bool,
    /// Clock µs at the pick (`latency` only).
    started: u64,
    _in_flight: Option<InFlight<'r>>,
}

/// How an attempt ended, for passive health checks and the latency average.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// No connection (refused, reset, unreachable, DNS failure, TLS handshake failure).
    ConnectFailed,
    /// No response headers in time.
    TimedOut,
    /// Response headers arrived with this status.
    Status(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    RoundRobin,
    ConsistentHashing,
    LeastConnections,
    Latency,
}

/// A target of a ring.
struct Member {
    peer: Peer,
    /// `host:port` as configured: the key of its state across runtimes, and its name in logs.
    target: String,
    weight: u32,
    state: Arc<TargetState>,
}

/// What is known about a target beyond one runtime.
#[derive(Debug, Default)]
struct TargetState {
    health: Health,
    load: Load,
}

/// Shared by every ring of a [`Balancers`].
struct Shared {
    clock: Clock,
    /// Bumped by every health transition: invalidates the rings' healthy-weight caches.
    generation: AtomicU64,
}

/// The clock, read at most once per pick and only when needed.
struct Now<'c> {
    clock: &'c Clock,
    at: Option<u64>,
}

// === impl Balancers ===

impl Default for Balancers {
    fn default() -> Self {
        Self::with_clock(Clock::system())
    }
}

impl Balancers {
    fn with_clock(clock: Clock) -> Self {
        Self {
            rings: PerRuntime::default(),
            shared: Arc::new(Shared {
                clock,
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// The rings of `runtime`: prepared by the apply step, else built now from the newest
    /// rings (whose target state they take over).
    pub(crate) fn for_runtime(&self, runtime: &Runtime) -> Arc<RuntimeRings> {
        // Two requests may build at once after a swap; both take over the same target state,
        // and one insert wins, which only resets the cursors.
        self.rings.get_or_insert_with(runtime, || {
            let previous = self.rings.newest();
            let (rings, problems) = RuntimeRings::build(runtime, previous.as_deref(), &self.shared);
            for problem in problems {
                tracing::error!(version = runtime.version(), %problem, "balancer ring incomplete");
            }
            rings
        })
    }
}

impl Part for Balancers {
    /// Builds every ring of `runtime`, consistent-hashing tables included; a target that
    /// cannot be balanced to rejects the runtime.
    fn prepare(&self, runtime: &Arc<Runtime>, _warnings: &mut Vec<String>) -> Result<(), String> {
        let previous = self.rings.newest();
        let (rings, problems) = RuntimeRings::build(runtime, previous.as_deref(), &self.shared);
        if let Some(problem) = problems.into_iter().next() {
            return Err(problem);
        }
        for ring in rings.rings.values() {
            if ring.algorithm == Algorithm::ConsistentHashing {
                let _ = ring.table();
            }
        }
        self.rings.insert(runtime, Arc::new(rings));
        Ok(())
    }
}

// === impl RuntimeRings ===

impl RuntimeRings {
    /// The rings of `runtime`'s upstreams, with the targets that cannot be parsed (the
    /// runtime refuses them, so none in practice) reported beside.
    fn build(
        runtime: &Runtime,
        previous: Option<&RuntimeRings>,
        shared: &Arc<Shared>,
    ) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let rings = runtime
            .config()
            .upstreams
            .iter()
            .map(|upstream| {
                let targets = runtime
                    .targets(&upstream.id)
                    .filter(|t| t.weight > 0)
                    .filter_map(|t| match parse_target(&t.target) {
                        Some(peer) => Some((t.target.clone(), peer, t.weight.into())),
                        None => {
                            problems.push(format!(
                                "target {} of upstream {}: {:?} is not host:port",
                                t.id, upstream.id, t.target
                            ));
                            None
                        }
                    })
                    .collect();
                let previous = previous.and_then(|p| p.rings.get(&upstream.id));
                (
                    upstream.id,
                    Ring::build(upstream, targets, previous, shared),
                )
            })
            .collect();
        (Self { rings }, problems)
    }

    /// The ring of upstream `id`.
    pub(crate) fn ring(&self, id: &Uuid) -> Option<&Ring> {
        self.rings.get(id)
    }

    /// Every target as metrics show it: `(upstream, target, state)`, the state `healthy`,
    /// `unhealthy` or `healthchecks_off` (Kong's names), sorted.
    pub(crate) fn target_health(&self) -> Vec<(String, String, &'static str)> {
        let mut all: Vec<_> = self
            .rings
            .values()
            .flat_map(|ring| {
                ring.members.iter().map(|member| {
                    let state = if !ring.passive.enabled() {
                        "healthchecks_off"
                    } else if member.state.health.is_healthy() {
                        "healthy"
                    } else {
                        "unhealthy"
                    };
                    (ring.upstream.clone(), member.target.clone(), state)
                })
            })
            .collect();
        all.sort_unstable();
        all
    }
}

// === impl Ring ===

impl Ring {
    /// `targets`: `(host:port, peer, weight > 0)`. Target state comes from `previous` (the
    /// same upstream's ring in the previous runtime) when it lists the same `host:port`.
    fn build(
        upstream: &model::Upstream,
        targets: Vec<(String, Peer, u32)>,
        previous: Option<&Ring>,
        shared: &Arc<Shared>,
    ) -> Self {
        let carried: HashMap<&str, &Arc<TargetState>> = previous
            .map(|ring| {
                ring.members
                    .iter()
                    .map(|m| (m.target.as_str(), &m.state))
                    .collect()
            })
            .unwrap_or_default();
        // A target listed twice shares one state.
        let mut states: HashMap<&str, Arc<TargetState>> = HashMap::new();
        for (target, _, _) in &targets {
            states.entry(target).or_insert_with(|| {
                carried
                    .get(target.as_str())
                    .map_or_else(Arc::default, |state| Arc::clone(state))
            });
        }
        let states: Vec<Arc<TargetState>> = targets
            .iter()
            .filter_map(|(target, _, _)| states.get(target.as_str()).cloned())
            .collect();
        let members: Vec<Member> = targets
            .into_iter()
            .zip(states)
            .map(|((target, peer, weight), state)| Member {
                peer,
                target,
                weight,
                state,
            })
            .collect();

        let passive = Passive::new(&upstream.healthchecks.passive);
        if !passive.enabled() {
            for member in &members {
                if member.state.health.revive() {
                    shared.transitioned(
                        &upstream.name,
                        &member.target,
                        Transition::Healthy(Reason::ChecksDisabled),
                    );
                }
            }
        }
        let table = match previous {
            Some(ring)
                if ring.slots == upstream.slots
                    && ring.members.len() == members.len()
                    && ring
                        .members
                        .iter()
                        .zip(&members)
                        .all(|(a, b)| a.target == b.target && a.weight == b.weight) =>
            {
                ring.table.clone()
            }
            _ => Arc::default(),
        };
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        Self {
            upstream: upstream.name.clone(),
            algorithm: Algorithm::parse(&upstream.algorithm),
            hash_on: Source::primary(upstream),
            hash_fallback: Source::fallback(upstream),
            passive,
            threshold: upstream.healthchecks.threshold,
            total_weight: weights.iter().copied().map(u64::from).sum(),
            schedule: schedule(&weights),
            members,
            next: AtomicUsize::new(0),
            slots: upstream.slots,
            table,
            healthy: AtomicU64::new(0),
            shared: shared.clone(),
        }
    }

    /// The request's hash by the upstream's `hash_on` / `hash_fallback`; computes nothing
    /// unless the upstream is `consistent-hashing`.
    pub(crate) fn hash_key(&self, input: &HashInput<'_>) -> HashKey {
        let mut key = HashKey::default();
        if self.algorithm == Algorithm::ConsistentHashing {
            let hash = self
                .hash_on
                .hash(input, &mut key.set_cookie)
                .or_else(|| self.hash_fallback.hash(input, &mut key.set_cookie));
            key.hash = hash;
        }
        key
    }

    /// Whether [`Ring::hash_key`] looks at [`HashInput::captures`]: the proxy runs the route's
    /// regex again for them ([`Match::captures`](crate::router::Match::captures)) only then.
    pub(crate) fn wants_captures(&self) -> bool {
        self.algorithm == Algorithm::ConsistentHashing
            && [&self.hash_on, &self.hash_fallback]
                .iter()
                .any(|source| matches!(source, Source::UriCapture(_)))
    }

    /// The target for attempt `attempt` (0 first) of a request hashed to `key`; `None` when
    /// the upstream has no target that may take it (none listed, all unhealthy, or the
    /// healthy weight below the threshold), which the proxy answers with 503.
    pub(crate) fn pick(&self, key: &HashKey, attempt: u32) -> Option<Pick<'_>> {
        let mut now = Now {
            clock: &self.shared.clock,
            at: None,
        };
        let healthy = self.healthy_weight();
        let (member, trial) = if self.serving(healthy) {
            let all = healthy >= self.total_weight.min(WEIGHT_MASK);
            match (self.algorithm, key.hash) {
                (Algorithm::ConsistentHashing, Some(hash)) => {
                    self.by_hash(hash, attempt, all, &mut now)
                }
                (Algorithm::LeastConnections | Algorithm::Latency, _) => {
                    self.least_loaded(attempt, all, &mut now)
                }
                _ => self.round_robin(all, &mut now),
            }
        } else {
            self.any_trial(&mut now)
        }?;
        if trial {
            tracing::debug!(
                upstream = %self.upstream,
                target = %member.target,
                "trial request to an unhealthy target"
            );
        }
        let load_aware = matches!(
            self.algorithm,
            Algorithm::LeastConnections | Algorithm::Latency
        );
        Some(Pick {
            peer: &member.peer,
            ring: self,
            member,
            trial,
            started: if self.algorithm == Algorithm::Latency {
                now.get()
            } else {
                0
            },
            _in_flight: load_aware.then(|| member.state.load.start()),
        })
    }

    fn round_robin(&self, all: bool, now: &mut Now<'_>) -> Option<(&Member, bool)> {
        let len = self.schedule.len();
        // An unhealthy target's turn moves the shared cursor on (as Kong's wheel does), so
        // its share spreads over the next targets instead of landing on one.
        for _ in 0..len {
            let at = self.next.fetch_add(1, Ordering::Relaxed) % len;
            let member = self.members.get(*self.schedule.get(at)? as usize)?;
            if all {
                return Some((member, false));
            }
            if let Some(trial) = self.admit(member, now) {
                return Some((member, trial));
            }
        }
        None
    }

    fn by_hash(
        &self,
        hash: u64,
        attempt: u32,
        all: bool,
        now: &mut Now<'_>,
    ) -> Option<(&Member, bool)> {
        let table = self.table();
        if table.is_empty() {
            return None;
        }
        let (before, from) = table.split_at_checked(hash::slot(hash, table.len()))?;
        let mut walk = from
            .iter()
            .chain(before)
            .filter_map(|i| self.members.get(*i as usize));
        if attempt == 0 {
            return walk.find_map(|member| {
                if all {
                    return Some((member, false));
                }
                Some((member, self.admit(member, now)?))
            });
        }
        // A retry: the attempt-th distinct healthy target met from the key's entry on.
        let mut seen: Vec<&Member> = Vec::with_capacity(self.members.len().min(8));
        for member in walk {
            if seen.iter().any(|m| std::ptr::eq(*m, member))
                || !(all || member.state.health.is_healthy())
            {
                continue;
            }
            seen.push(member);
            if seen.len() > attempt as usize || seen.len() == self.members.len() {
                break;
            }
        }
        let member = *seen.get(attempt as usize % seen.len().max(1))?;
        Some((member, false))
    }

    fn least_loaded(&self, attempt: u32, all: bool, now: &mut Now<'_>) -> Option<(&Member, bool)> {
        let len = self.members.len();
        if len == 0 {
            return None;
        }
        // A rotating start breaks ties (every target idle) in turn.
        let (before, from) = self
            .members
            .split_at_checked(self.next.fetch_add(1, Ordering::Relaxed) % len)?;
        let rotated = from.iter().chain(before);
        let latency = self.algorithm == Algorithm::Latency;
        let at = if latency { now.get() } else { 0 };
        let score = |m: &Member| {
            let cost = if latency {
                m.state.load.latency(at) + 1.0
            } else {
                1.0
            };
            cost * f64::from(m.state.load.in_flight().saturating_add(1)) / f64::from(m.weight)
        };
        if attempt == 0 {
            let mut best: Option<(f64, &Member)> = None;
            for member in rotated {
                if !all && !member.state.health.is_healthy() {
                    if member.state.health.claim_trial(now.get()) {
                        return Some((member, true));
                    }
                    continue;
                }
                let s = score(member);
                if best.is_none_or(|(b, _)| s < b) {
                    best = Some((s, member));
                }
            }
            return best.map(|(_, member)| (member, false));
        }
        // A retry: the attempt-th best, so it does not go straight back to the target that
        // just failed (its count dropped with its pick).
        let mut ranked: Vec<(f64, &Member)> = rotated
            .filter(|m| all || m.state.health.is_healthy())
            .map(|m| (score(m), m))
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (_, member) = ranked.get(attempt as usize % ranked.len().max(1))?;
        Some((member, false))
    }

    /// The upstream takes no regular traffic: only a trial may go.
    fn any_trial(&self, now: &mut Now<'_>) -> Option<(&Member, bool)> {
        self.members
            .iter()
            .find(|m| m.state.health.claim_trial(now.get()))
            .map(|m| (m, true))
    }

    /// Whether `member` may take this request: `Some(false)` when healthy, `Some(true)` when
    /// this request is its trial, `None` otherwise.
    fn admit(&self, member: &Member, now: &mut Now<'_>) -> Option<bool> {
        if member.state.health.is_healthy() {
            Some(false)
        } else {
            member.state.health.claim_trial(now.get()).then_some(true)
        }
    }

    /// Whether regular traffic may flow: some weight is healthy, and at least
    /// `threshold` percent of it.
    fn serving(&self, healthy: u64) -> bool {
        healthy > 0
            && (self.threshold <= 0.0
                || healthy as f64 * 100.0 >= self.threshold * self.total_weight as f64)
    }

    /// The weight of the healthy targets; recounted only after a health transition.
    fn healthy_weight(&self) -> u64 {
        let generation = (self.shared.generation.load(Ordering::Acquire) & GENERATION_MASK) + 1;
        let cached = self.healthy.load(Ordering::Acquire);
        if cached >> WEIGHT_BITS == generation {
            return cached & WEIGHT_MASK;
        }
        let weight = self
            .members
            .iter()
            .filter(|m| m.state.health.is_healthy())
            .map(|m| u64::from(m.weight))
            .sum::<u64>()
            .min(WEIGHT_MASK);
        // A transition during the count leaves a cache tagged with the old generation, which
        // the next pick recounts.
        self.healthy
            .store((generation << WEIGHT_BITS) | weight, Ordering::Release);
        weight
    }

    fn table(&self) -> &[u32] {
        self.table.get_or_init(|| {
            let targets: Vec<(&str, u32)> = self
                .members
                .iter()
                .map(|m| (m.target.as_str(), m.weight))
                .collect();
            hash::table(&targets, self.slots)
        })
    }
}

// === impl Pick ===

impl Pick<'_> {
    /// Records how the attempt ended: feeds the target's passive health check (and, for
    /// `latency`, its response time average). Call once per attempt.
    pub(crate) fn report(&self, outcome: Outcome) {
        let ring = self.ring;
        let state = &self.member.state;
        let mut now = Now {
            clock: &ring.shared.clock,
            at: None,
        };
        if ring.algorithm == Algorithm::Latency {
            let at = now.get();
            let took = at.saturating_sub(self.started);
            let sample = match outcome {
                Outcome::Status(_) => took,
                Outcome::ConnectFailed | Outcome::TimedOut => took.max(load::FAILURE_PENALTY),
            };
            state.load.observe(sample, at);
        }
        if !self.trial && !ring.passive.enabled() {
            return;
        }
        let verdict = ring.passive.classify(outcome);
        if let Some(transition) = state
            .health
            .record(&ring.passive, verdict, self.trial, now.get())
        {
            ring.shared
                .transitioned(&ring.upstream, &self.member.target, transition);
        }
    }
}

// === impl Algorithm ===

impl Algorithm {
    /// Unknown names (the runtime refuses them) balance round-robin.
    fn parse(name: &str) -> Self {
        match name {
            "consistent-hashing" => Self::ConsistentHashing,
            "least-connections" => Self::LeastConnections,
            "latency" => Self::Latency,
            _ => Self::RoundRobin,
        }
    }
}

// === impl Shared ===

impl Shared {
    /// Accounts for and logs a health transition.
    fn transitioned(&self, upstream: &str, target: &str, transition: Transition) {
        match transition {
            Transition::Healthy(reason) => {
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(upstream = %upstream, target = %target, %reason, "target marked healthy");
            }
            Transition::Unhealthy(reason) => {
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(upstream = %upstream, target = %target, %reason, "target marked unhealthy");
            }
            Transition::TrialFailed => {
                tracing::debug!(
                    upstream = %upstream,
                    target = %target,
                    "trial request failed; target stays unhealthy"
                );
            }
        }
    }
}

// === impl Now ===

impl Now<'_> {
    fn get(&mut self) -> u64 {
        *self.at.get_or_insert_with(|| self.clock.now())
    }
}

/// nginx's smooth weighted round-robin over `weights` (reduced by their gcd, scaled down to
/// at most [`MAX_SCHEDULE`] entries), unrolled over one period.
fn schedule(weights: &[u32]) -> Vec<u32> {
    let mut weights: Vec<u64> = weights.iter().copied().map(u64::from).collect();
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    weights.iter_mut().for_each(|w| *w /= divisor);
    let sum: u64 = weights.iter().sum();
    if sum > MAX_SCHEDULE {
        weights
            .iter_mut()
            .for_each(|w| *w = (*w * MAX_SCHEDULE / sum).max(1));
    }
    smooth_schedule(&weights)
}

/// nginx's smooth weighted round-robin, unrolled over one period (the sum of the weights).
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|w| *w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Splits a target `host:port` (`[v6]:port`); the store always adds the port.
pub(crate) fn parse_target(target: &str) -> Option<Peer> {
    let (host, port) = target.rsplit_once(':')?;
    let host = match host.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']')?,
        None => host,
    };
    Some(Peer {
        host: host.to_owned(),
        port: port.parse().ok()?,
    })
}

#[cfg(test)]
mod tests;
