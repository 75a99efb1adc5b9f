//! Process-wide counters, served as Prometheus text by the status listener (`GET /metrics`).
//!
//! | metric | labels | counts |
//! |---|---|---|
//! | `gatehouse_tls_handshakes_total` | `kind` = `full`, `resumed` | completed proxy TLS handshakes |
//! | `gatehouse_proxy_requests_total` | `class` = `1xx`..`5xx` | responses sent by the proxy |
//! | `gatehouse_upstream_requests_total` | | requests sent to upstreams (attempts) |
//! | `gatehouse_upstream_connections_total` | `tls` = `false`, `true` | new upstream connections |
//! | `gatehouse_mtls_auth_failures_total` | `reason` (below) | refused client certificates |
//! | `gatehouse_acme_challenges_answered_total` | `kind` = `http-01`, `tls-alpn-01` | ACME validations answered |
//! | `gatehouse_acme_certificate_requests_total` | `outcome` = `sent`, `duplicate`, `rate_limited`, `queue_full` | on-demand certificate requests (handshakes for an allowed name without a certificate) |
//! | `gatehouse_cluster_certificate_renewals_total` | `result` = `ok`, `failed` | renewals of the enrolled cluster certificate |
//! | `gatehouse_cluster_certificate_expiry_days` (gauge) | | days until the cluster certificate expires (only when enrolled) |
//!
//! Upstream connection reuse is `1 - connections / requests`. The mtls-auth reasons are
//! `no_certificate`, `unknown_ca`, `expired`, `not_yet_valid`, `revoked`, `revocation_unknown`
//! (STRICT mode without an answer), `wrong_usage`, `no_consumer`, `invalid`: the cause a
//! response never tells the client.
//!
//! Counters are relaxed atomics: one increment per event, no lock, no allocation.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Why mtls-auth refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum MtlsFailure {
    NoCertificate,
    UnknownCa,
    Expired,
    NotYetValid,
    Revoked,
    RevocationUnknown,
    WrongUsage,
    NoConsumer,
    Invalid,
    /// The instance could not be built (it refuses every request it covers).
    Unbuilt,
}

const MTLS_REASONS: [&str; 10] = [
    "no_certificate",
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "revoked",
    "revocation_unknown",
    "wrong_usage",
    "no_consumer",
    "invalid",
    "unbuilt",
];

/// What became of an on-demand certificate request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum OnDemandOutcome {
    /// Queued towards the control plane.
    Sent,
    /// Asked for recently.
    Duplicate,
    /// Over the per-minute cap.
    RateLimited,
    /// The queue towards the control plane is full (it is away).
    QueueFull,
}

const ON_DEMAND_OUTCOMES: [&str; 4] = ["sent", "duplicate", "rate_limited", "queue_full"];

/// The ACME challenge kinds answered.
const ACME_KINDS: [&str; 2] = ["http-01", "tls-alpn-01"];

/// The counters.
pub(crate) struct Metrics {
    handshakes: [AtomicU64; 2],
    responses: [AtomicU64; 5],
    upstream_requests: AtomicU64,
    upstream_connections: [AtomicU64; 2],
    mtls_failures: [AtomicU64; 10],
    acme_answers: [AtomicU64; 2],
    on_demand: [AtomicU64; 4],
    renewals: [AtomicU64; 2],
    /// notAfter of the enrolled cluster certificate, Unix seconds; 0 when not enrolled.
    cluster_cert_not_after: AtomicI64,
}

/// The process's counters.
pub(crate) static METRICS: Metrics = Metrics::new();

impl Metrics {
    const fn new() -> Self {
        Self {
            handshakes: [const { AtomicU64::new(0) }; 2],
            responses: [const { AtomicU64::new(0) }; 5],
            upstream_requests: AtomicU64::new(0),
            upstream_connections: [const { AtomicU64::new(0) }; 2],
            mtls_failures: [const { AtomicU64::new(0) }; 10],
            acme_answers: [const { AtomicU64::new(0) }; 2],
            on_demand: [const { AtomicU64::new(0) }; 4],
            renewals: [const { AtomicU64::new(0) }; 2],
            cluster_cert_not_after: AtomicI64::new(0),
        }
    }

    /// A renewal of the cluster certificate succeeded or failed.
    pub(crate) fn renewal(&self, ok: bool) {
        self.renewals[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// The enrolled cluster certificate now expires at `not_after` (Unix seconds).
    pub(crate) fn cluster_cert(&self, not_after: i64) {
        self.cluster_cert_not_after
            .store(not_after, Ordering::Relaxed);
    }

    pub(crate) fn handshake(&self, resumed: bool) {
        self.handshakes[usize::from(resumed)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn upstream_request(&self) {
        self.upstream_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn upstream_connection(&self, tls: bool) {
        self.upstream_connections[usize::from(tls)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn mtls_failure(&self, reason: MtlsFailure) {
        self.mtls_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// An ACME validation answered: HTTP-01 (`tls` false) or TLS-ALPN-01.
    pub(crate) fn acme_answer(&self, tls: bool) {
        self.acme_answers[usize::from(tls)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_demand(&self, outcome: OnDemandOutcome) {
        self.on_demand[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub(crate) fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        family(
            &mut out,
            "gatehouse_tls_handshakes_total",
            "Completed proxy TLS handshakes.",
        );
        for (kind, counter) in ["full", "resumed"].iter().zip(&self.handshakes) {
            let _ = writeln!(
                out,
                "gatehouse_tls_handshakes_total{{kind=\"{kind}\"}} {}",
                get(counter)
            );
        }
        family(
            &mut out,
            "gatehouse_proxy_requests_total",
            "Responses sent by the proxy, by status class.",
        );
        for (class, counter) in ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .zip(&self.responses)
        {
            let _ = writeln!(
                out,
                "gatehouse_proxy_requests_total{{class=\"{class}\"}} {}",
                get(counter)
            );
        }
        family(
            &mut out,
            "gatehouse_upstream_requests_total",
            "Requests sent to upstreams (each attempt).",
        );
        let _ = writeln!(
            out,
            "gatehouse_upstream_requests_total {}",
            get(&self.upstream_requests)
        );
        family(
            &mut out,
            "gatehouse_upstream_connections_total",
            "New connections to upstreams.",
        );
        for (tls, counter) in ["false", "true"].iter().zip(&self.upstream_connections) {
            let _ = writeln!(
                out,
                "gatehouse_upstream_connections_total{{tls=\"{tls}\"}} {}",
                get(counter)
            );
        }
        family(
            &mut out,
            "gatehouse_mtls_auth_failures_total",
            "Client certificates refused by mtls-auth, by reason.",
        );
        for (reason, counter) in MTLS_REASONS.iter().zip(&self.mtls_failures) {
            let _ = writeln!(
                out,
                "gatehouse_mtls_auth_failures_total{{reason=\"{reason}\"}} {}",
                get(counter)
            );
        }
        family(
            &mut out,
            "gatehouse_acme_challenges_answered_total",
            "ACME validations answered, by challenge kind.",
        );
        for (kind, counter) in ACME_KINDS.iter().zip(&self.acme_answers) {
            let _ = writeln!(
                out,
                "gatehouse_acme_challenges_answered_total{{kind=\"{kind}\"}} {}",
                get(counter)
            );
        }
        family(
            &mut out,
            "gatehouse_acme_certificate_requests_total",
            "On-demand certificate requests to the control plane, by outcome.",
        );
        for (outcome, counter) in ON_DEMAND_OUTCOMES.iter().zip(&self.on_demand) {
            let _ = writeln!(
                out,
                "gatehouse_acme_certificate_requests_total{{outcome=\"{outcome}\"}} {}",
                get(counter)
            );
        }
        family(
            &mut out,
            "gatehouse_cluster_certificate_renewals_total",
            "Renewals of the enrolled cluster certificate, by result.",
        );
        for (result, counter) in ["ok", "failed"].iter().zip(&self.renewals) {
            let _ = writeln!(
                out,
                "gatehouse_cluster_certificate_renewals_total{{result=\"{result}\"}} {}",
                get(counter)
            );
        }
        let not_after = self.cluster_cert_not_after.load(Ordering::Relaxed);
        if not_after > 0 {
            let now = crate::status::unix_now();
            let _ = writeln!(
                out,
                "# HELP gatehouse_cluster_certificate_expiry_days Days until the enrolled cluster certificate expires.\n\
                 # TYPE gatehouse_cluster_certificate_expiry_days gauge\n\
                 gatehouse_cluster_certificate_expiry_days {:.6}",
                (not_after as f64 - now) / 86400.0
            );
        }
        out
    }
}

fn family(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text() {
        let metrics = Metrics::new();
        metrics.handshake(false);
        metrics.handshake(true);
        metrics.handshake(true);
        metrics.response(204);
        metrics.response(503);
        metrics.upstream_request();
        metrics.upstream_connection(true);
        metrics.mtls_failure(MtlsFailure::Expired);
        metrics.acme_answer(true);
        metrics.on_demand(OnDemandOutcome::RateLimited);
        let text = metrics.render();
        for line in [
            "gatehouse_tls_handshakes_total{kind=\"full\"} 1",
            "gatehouse_tls_handshakes_total{kind=\"resumed\"} 2",
            "gatehouse_proxy_requests_total{class=\"2xx\"} 1",
            "gatehouse_proxy_requests_total{class=\"5xx\"} 1",
            "gatehouse_upstream_requests_total 1",
            "gatehouse_upstream_connections_total{tls=\"true\"} 1",
            "gatehouse_upstream_connections_total{tls=\"false\"} 0",
            "gatehouse_mtls_auth_failures_total{reason=\"expired\"} 1",
            "# TYPE gatehouse_mtls_auth_failures_total counter",
            "gatehouse_acme_challenges_answered_total{kind=\"tls-alpn-01\"} 1",
            "gatehouse_acme_challenges_answered_total{kind=\"http-01\"} 0",
            "gatehouse_acme_certificate_requests_total{outcome=\"rate_limited\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
