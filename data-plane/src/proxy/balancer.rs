//! Weighted round-robin over the targets of an upstream.
//!
//! Each upstream of a runtime gets a [`Ring`]: a schedule of target indexes in nginx's "smooth
//! weighted round-robin" order (a target of weight 3 next to one of weight 1 gives `A A B A`,
//! interleaved rather than bunched), and an atomic cursor. Picking a target is one
//! `fetch_add`. The rings of a runtime are built once, by the first request that sees it
//! ([`Balancers::for_runtime`]); targets of weight 0 are left out.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwapOption;
use uuid::Uuid;

use crate::runtime::Runtime;

/// Longest schedule of one upstream; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;

/// An upstream address: host (a name or an IP, without brackets) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// The balancers of the runtime seen last.
#[derive(Default)]
pub(crate) struct Balancers {
    current: ArcSwapOption<RuntimeRings>,
}

/// The rings of one runtime, by upstream id.
pub(crate) struct RuntimeRings {
    /// Identifies the runtime: its version and hash.
    version: u64,
    hash: String,
    rings: HashMap<Uuid, Ring>,
}

/// One upstream's targets and its round-robin schedule.
pub(crate) struct Ring {
    peers: Vec<Peer>,
    schedule: Vec<u32>,
    next: AtomicUsize,
}

// === impl Balancers ===

impl Balancers {
    /// The rings of `runtime`, built on first use.
    pub(crate) fn for_runtime(&self, runtime: &Runtime) -> Arc<RuntimeRings> {
        if let Some(current) = self.current.load_full()
            && current.version == runtime.version()
            && current.hash == runtime.hash()
        {
            return current;
        }
        // Two requests may build at once after a swap; one store wins, which only resets
        // the cursors.
        let built = Arc::new(RuntimeRings::build(runtime));
        self.current.store(Some(built.clone()));
        built
    }
}

// === impl RuntimeRings ===

impl RuntimeRings {
    fn build(runtime: &Runtime) -> Self {
        let rings = runtime
            .config()
            .upstreams
            .iter()
            .map(|upstream| {
                let targets: Vec<(Peer, u16)> = runtime
                    .targets(&upstream.id)
                    .filter(|t| t.weight > 0)
                    .filter_map(|t| Some((parse_target(&t.target)?, t.weight)))
                    .collect();
                (upstream.id, Ring::new(targets))
            })
            .collect();
        Self {
            version: runtime.version(),
            hash: runtime.hash().to_owned(),
            rings,
        }
    }

    /// The ring of upstream `id`.
    pub(crate) fn ring(&self, id: &Uuid) -> Option<&Ring> {
        self.rings.get(id)
    }
}

// === impl Ring ===

impl Ring {
    fn new(targets: Vec<(Peer, u16)>) -> Self {
        let mut weights: Vec<u64> = targets.iter().map(|(_, w)| u64::from(*w)).collect();
        let divisor = weights.iter().copied().fold(0, gcd).max(1);
        weights.iter_mut().for_each(|w| *w /= divisor);
        let sum: u64 = weights.iter().sum();
        if sum > MAX_SCHEDULE {
            weights
                .iter_mut()
                .for_each(|w| *w = (*w * MAX_SCHEDULE / sum).max(1));
        }
        let schedule = smooth_schedule(&weights);
        Self {
            peers: targets.into_iter().map(|(peer, _)| peer).collect(),
            schedule,
            next: AtomicUsize::new(0),
        }
    }

    /// The next target; `None` when the upstream has no target of positive weight.
    pub(crate) fn next(&self) -> Option<&Peer> {
        if self.schedule.is_empty() {
            return None;
        }
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
        let index = *self.schedule.get(at)? as usize;
        self.peers.get(index)
    }
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
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn peer(host: &str, port: u16) -> Peer {
        Peer {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn schedule_is_smooth_and_weighted() {
        assert_eq!(smooth_schedule(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(smooth_schedule(&[1, 1]), vec![0, 1]);
        let ring = Ring::new(vec![(peer("a", 1), 300), (peer("b", 2), 100)]);
        let picks: Vec<_> = (0..8).map(|_| ring.next().unwrap().host.clone()).collect();
        assert_eq!(picks.iter().filter(|h| *h == "a").count(), 6);
        assert_eq!(picks.iter().filter(|h| *h == "b").count(), 2);
    }

    #[test]
    fn empty_ring_has_no_peer() {
        assert!(Ring::new(Vec::new()).next().is_none());
    }

    #[test]
    fn huge_weights_are_scaled() {
        let ring = Ring::new(vec![(peer("a", 1), 65535), (peer("b", 2), 1)]);
        assert!(ring.schedule.len() as u64 <= MAX_SCHEDULE + 2);
        assert!(ring.schedule.contains(&1));
    }

    #[test]
    fn targets_parse() {
        assert_eq!(parse_target("10.0.0.1:8000"), Some(peer("10.0.0.1", 8000)));
        assert_eq!(parse_target("[::1]:80"), Some(peer("::1", 80)));
        assert_eq!(
            parse_target("example.com:443"),
            Some(peer("example.com", 443))
        );
        assert_eq!(parse_target("nope"), None);
    }
}
