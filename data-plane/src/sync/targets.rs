//! The control-plane replicas a data plane may sync from, and the order it tries them in.
//!
//! `--cluster-control-plane` is a comma-separated list of `HOST:PORT`; a host that is a DNS
//! name may resolve to several addresses. Every address is a candidate. The list is resolved
//! again before each attempt (a name's addresses may change), sorted, and deduplicated, so
//! every node sees the same order. A node starts at a position derived from its node id, so a
//! fleet spreads over the replicas, and moves to the next candidate whenever an attempt fails
//! or its stream is lost: a replica that dies (`kill -9`) loses its data planes to the others
//! at once, without waiting for a backoff. Only when every candidate failed in turn does the
//! client back off.

use std::net::SocketAddr;
use std::sync::Arc;

use gatehouse_shared::cluster::ReloadingConfig;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

/// One configured control-plane address.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `HOST:PORT` as configured.
    pub(crate) addr: String,
    /// The name sent as SNI and checked against the certificate (`pki`), or the shared name.
    pub(crate) server_name: ServerName<'static>,
    /// The connection configuration for that name (shared by targets with the same name).
    pub(crate) tls: Arc<ReloadingConfig<ClientConfig>>,
}

/// One address to try: a resolved socket address of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Index of the target in the configured list.
    pub(crate) target: usize,
    /// The address connected to.
    pub(crate) socket: SocketAddr,
    /// How logs and `/status` name it: `IP:PORT`, or `HOST:PORT (IP:PORT)` for a name.
    pub(crate) label: String,
}

/// The position in the candidate list and the failures since the last stable stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rotation {
    next: usize,
    failures: usize,
}

// === impl Rotation ===

impl Rotation {
    /// A rotation starting at a position derived from `seed` (the node id).
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            // Only the residue modulo the candidate count matters; keep it small so adding
            // never wraps.
            next: (seed % 1_000_003) as usize,
            failures: 0,
        }
    }

    /// The index of the candidate to try among `count` (> 0).
    pub(crate) fn pick(&self, count: usize) -> usize {
        self.next % count.max(1)
    }

    /// The attempt at the current candidate failed, or its stream was lost: the next attempt
    /// goes to the next candidate. Returns whether all `count` candidates have now failed in
    /// turn since the last stable stream (back off before the next attempt).
    pub(crate) fn failed(&mut self, count: usize) -> bool {
        self.next = (self.next + 1) % 1_000_003;
        self.failures += 1;
        self.failures >= count.max(1)
    }

    /// A full round has been waited for: count again from zero.
    pub(crate) fn round_waited(&mut self) {
        self.failures = 0;
    }

    /// A stream stayed open long enough to count as stable: the failures are forgotten.
    pub(crate) fn stable(&mut self) {
        self.failures = 0;
    }
}

/// Splits a comma-separated `--cluster-control-plane` value into its addresses (trimmed,
/// empty items and exact duplicates dropped, order kept).
pub(crate) fn split_list(raw: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if !out.iter().any(|o| o == item) {
            out.push(item.to_owned());
        }
    }
    out
}

/// Resolves every target into candidates: sorted by target then address, each socket address
/// once. Names that do not resolve are returned as errors (`HOST:PORT: reason`).
pub(crate) async fn resolve(targets: &[Target]) -> (Vec<Candidate>, Vec<String>) {
    let mut candidates = Vec::new();
    let mut errors = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        match tokio::net::lookup_host(target.addr.as_str()).await {
            Ok(addrs) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                if addrs.is_empty() {
                    errors.push(format!("{}: the name has no address", target.addr));
                }
                candidates.extend(addrs.into_iter().map(|socket| Candidate {
                    target: index,
                    socket,
                    label: label(&target.addr, socket),
                }));
            }
            Err(error) => errors.push(format!("cannot resolve {}: {error}", target.addr)),
        }
    }
    dedup_sockets(&mut candidates);
    (candidates, errors)
}

/// Keeps the first candidate of each socket address (two names may resolve to one replica).
fn dedup_sockets(candidates: &mut Vec<Candidate>) {
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|c| seen.insert(c.socket));
}

/// `IP:PORT` when `configured` is that address, else `HOST:PORT (IP:PORT)`.
fn label(configured: &str, socket: SocketAddr) -> String {
    let same = configured
        .parse::<SocketAddr>()
        .is_ok_and(|given| given == socket);
    if same {
        socket.to_string()
    } else {
        format!("{configured} ({socket})")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_split_trimmed_and_deduplicated() {
        assert_eq!(split_list("a:1"), ["a:1"]);
        assert_eq!(split_list(" a:1 , b:2,,a:1, c:3 "), ["a:1", "b:2", "c:3"]);
        assert!(split_list(" , ").is_empty());
    }

    #[test]
    fn rotation_starts_per_node_and_moves_on_at_each_failure() {
        // Different seeds start on different replicas.
        let starts: std::collections::HashSet<usize> =
            (0..20u64).map(|seed| Rotation::new(seed).pick(3)).collect();
        assert_eq!(starts.len(), 3);

        let mut rotation = Rotation::new(7);
        let first = rotation.pick(3);
        // Two failures move through the other two candidates without backing off...
        assert!(!rotation.failed(3));
        assert_eq!(rotation.pick(3), (first + 1) % 3);
        assert!(!rotation.failed(3));
        assert_eq!(rotation.pick(3), (first + 2) % 3);
        // ...the third completes the round: back off, then start a new round.
        assert!(rotation.failed(3));
        assert_eq!(rotation.pick(3), first);
        rotation.round_waited();
        assert!(!rotation.failed(3));

        // A stable stream forgets the failures: losing it fails over at once.
        let mut rotation = Rotation::new(0);
        assert!(!rotation.failed(2));
        rotation.stable();
        let on = rotation.pick(2);
        assert!(
            !rotation.failed(2),
            "failover after a stable stream waits for nothing"
        );
        assert_ne!(rotation.pick(2), on);
        // With one candidate every failure is a full round.
        let mut rotation = Rotation::new(5);
        assert_eq!(rotation.pick(1), 0);
        assert!(rotation.failed(1));
        // Far beyond any count, nothing overflows.
        let mut rotation = Rotation::new(u64::MAX);
        for _ in 0..2_000_010 {
            rotation.failed(2);
        }
        assert!(rotation.pick(2) < 2);
    }

    #[tokio::test]
    async fn addresses_and_names_resolve_to_sorted_unique_candidates() {
        let tls = test_tls();
        let target = |addr: &str| Target {
            addr: addr.to_owned(),
            server_name: ServerName::try_from("localhost").unwrap(),
            tls: tls.clone(),
        };
        let targets = [
            target("127.0.0.2:8005"),
            target("127.0.0.1:8005"),
            target("localhost:8005"),
            target("127.0.0.2:8005"),
            target("no-such-host.invalid:8005"),
        ];
        let (candidates, errors) = resolve(&targets).await;
        let sockets: Vec<String> = candidates.iter().map(|c| c.socket.to_string()).collect();
        assert_eq!(sockets[0], "127.0.0.2:8005");
        assert_eq!(sockets[1], "127.0.0.1:8005");
        // `localhost` resolves to 127.0.0.1 (already listed) and maybe ::1; never twice.
        let unique: std::collections::HashSet<&String> = sockets.iter().collect();
        assert_eq!(unique.len(), sockets.len());
        assert!(
            candidates.iter().all(|c| c.target != 3 && c.target != 4),
            "{candidates:?}"
        );
        assert_eq!(candidates[0].label, "127.0.0.2:8005");
        if let Some(named) = candidates.iter().find(|c| c.target == 2) {
            assert!(named.label.starts_with("localhost:8005 ("), "{named:?}");
        }
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("no-such-host.invalid:8005"),
            "{errors:?}"
        );
    }

    fn test_tls() -> Arc<ReloadingConfig<ClientConfig>> {
        use gatehouse_shared::cluster::{ClusterMtls, ClusterTlsFiles};
        let dir = crate::test_support::TempDir::new();
        gatehouse_shared::cluster::pki::init(dir.path(), &[], &["dp1".to_owned()], 30, false)
            .unwrap();
        let files = ClusterTlsFiles {
            cert: dir.path().join("dp1.crt"),
            key: dir.path().join("dp1.key"),
            ca: Some(dir.path().join("ca.crt")),
            allowed_common_names: Vec::new(),
        };
        // The files are read once here; the directory may go.
        Arc::new(ReloadingConfig::client(ClusterMtls::Pki, files, "localhost").unwrap())
    }
}
