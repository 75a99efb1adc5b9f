//! The data plane's metrics, served in the OpenMetrics text format (the `prometheus-client`
//! crate's encoder) by the status listener (`GET /metrics`).
//!
//! Process-wide counters:
//!
//! | metric | labels | counts |
//! |---|---|---|
//! | `gatehouse_tls_handshakes_total` | `kind` = `full`, `resumed` | completed proxy TLS handshakes |
//! | `gatehouse_tls_handshake_versions_total` | `version` = `TLSv1.2`, `TLSv1.3`; `kind` | the same by protocol version |
//! | `gatehouse_tls_handshake_failures_total` | `reason` (below) | proxy TLS handshakes that failed |
//! | `gatehouse_proxy_requests_total` | `class` = `1xx`..`5xx` | responses sent by the proxy |
//! | `gatehouse_upstream_requests_total` | | requests sent to upstreams (attempts) |
//! | `gatehouse_upstream_connections_total` | `tls` = `false`, `true` | new upstream connections |
//! | `gatehouse_mtls_auth_failures_total` | `reason` (below) | refused client certificates |
//! | `gatehouse_acme_challenges_answered_total` | `kind` = `http-01`, `tls-alpn-01` | ACME validations answered |
//! | `gatehouse_acme_certificate_requests_total` | `outcome` = `sent`, `duplicate`, `rate_limited`, `queue_full` | on-demand certificate requests (handshakes for an allowed name without a certificate) |
//! | `gatehouse_cluster_certificate_renewals_total` | `result` = `ok`, `failed` | renewals of the enrolled cluster certificate |
//! | `gatehouse_cluster_certificate_expiry_days` (gauge) | | days until the cluster certificate expires (only when enrolled) |
//! | `gatehouse_cluster_certificate_expiry_timestamp_seconds` (gauge) | | notAfter of the cluster certificate (`--cluster-cert`, enrolled or not) |
//! | `gatehouse_connections` (gauge) | `state` = `active`, `accepted` | proxy connections open now, and accepted since start |
//! | `gatehouse_control_plane_connected` (gauge) | | 1 while the sync stream is open |
//! | `gatehouse_config_version` (gauge) | | version of the running configuration |
//! | `gatehouse_node_info` (gauge, 1) | `node_id`, `version`, `role` | this node |
//! | `gatehouse_upstream_target_health` (gauge) | `upstream`, `target`, `state` | 1 for each target's current state (`healthy`, `unhealthy`, `healthchecks_off`), 0 for the others |
//!
//! Per route (module `routes`, which says how the labels stay bounded):
//! `gatehouse_http_requests_total{service,route,code,source}`,
//! `gatehouse_request_latency_ms`, `gatehouse_upstream_latency_ms`,
//! `gatehouse_gateway_latency_ms` (histograms by `service`, `route`),
//! `gatehouse_bandwidth_bytes_total{direction,service,route}`, and
//! `gatehouse_certificate_expiry_timestamp_seconds{certificate,snis}` per served certificate.
//!
//! Upstream connection reuse is `1 - connections / requests`. The mtls-auth reasons are
//! `no_certificate`, `unknown_ca`, `expired`, `not_yet_valid`, `revoked`, `revocation_unknown`
//! (STRICT mode without an answer), `wrong_usage`, `no_consumer`, `invalid`: the cause a
//! response never tells the client. The TLS handshake failure reasons are
//! `client_hello_timeout`, `client_hello` (hang-up or not TLS), `handshake_timeout`, `config`
//! (our configuration refused it), `alert` (the client sent an alert, e.g. it rejected the
//! certificate), `incompatible` (no common version, suite or key type), `client_certificate`,
//! `protocol` (a bad message) and `io` (a hang-up during the handshake).
//!
//! Counters are relaxed atomics: one increment per event, no lock, no allocation.

mod histogram;
mod routes;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use rustls::ProtocolVersion;

pub(crate) use self::routes::{
    Observed, Recorder, RouteMetrics, Source, consumer_label, wants_consumer,
};
use crate::runtime::Runtime;
use crate::tls::TlsError;

/// The content type of `GET /metrics`.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

/// Why a proxy TLS handshake failed.
const TLS_FAILURES: [&str; 9] = [
    "client_hello_timeout",
    "client_hello",
    "handshake_timeout",
    "config",
    "alert",
    "incompatible",
    "client_certificate",
    "protocol",
    "io",
];

/// The TLS versions counted apart (anything else counts as `other`).
const TLS_VERSIONS: [&str; 3] = ["TLSv1.2", "TLSv1.3", "other"];

/// The counters.
pub(crate) struct Metrics {
    handshakes: [AtomicU64; 2],
    /// By version ([`TLS_VERSIONS`]) and kind (full, resumed).
    handshake_versions: [[AtomicU64; 2]; 3],
    handshake_failures: [AtomicU64; TLS_FAILURES.len()],
    responses: [AtomicU64; 5],
    upstream_requests: AtomicU64,
    upstream_connections: [AtomicU64; 2],
    mtls_failures: [AtomicU64; 10],
    acme_answers: [AtomicU64; 2],
    on_demand: [AtomicU64; 4],
    renewals: [AtomicU64; 2],
    /// notAfter of the enrolled cluster certificate, Unix seconds; 0 when not enrolled.
    cluster_cert_not_after: AtomicI64,
    /// Proxy connections accepted since start, and closed since start.
    accepted: AtomicU64,
    closed: AtomicU64,
}

/// The process's counters.
pub(crate) static METRICS: Metrics = Metrics::new();

/// The per-route series (a runtime part, registered by the data plane at start).
pub(crate) static ROUTES: LazyLock<Arc<RouteMetrics>> = LazyLock::new(Arc::default);

/// The cluster certificate file, read at each scrape for its notAfter.
static CLUSTER_CERT_FILE: OnceLock<PathBuf> = OnceLock::new();

/// The balancers' view of every target of a runtime: `(upstream, target, state)`.
type TargetHealth = Box<dyn Fn(&Runtime) -> Vec<(String, String, &'static str)> + Send + Sync>;

/// Set by the proxy listeners when they start.
static TARGET_HEALTH: OnceLock<TargetHealth> = OnceLock::new();

/// The states of `gatehouse_upstream_target_health` (Kong's, less `dns_error`).
const TARGET_STATES: [&str; 3] = ["healthy", "unhealthy", "healthchecks_off"];

/// Where a scrape finds the targets' health (the proxy's balancers).
pub(crate) fn target_health_from(health: TargetHealth) {
    let _ = TARGET_HEALTH.set(health);
}

/// What a scrape shows beside the counters: this node and its running state.
#[derive(Debug, Clone)]
pub(crate) struct NodeFacts {
    pub(crate) node_id: String,
    pub(crate) version: String,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) connected: bool,
}

/// One scrape's collector.
#[derive(Debug)]
struct Scrape(NodeFacts);

impl Metrics {
    const fn new() -> Self {
        Self {
            handshakes: [const { AtomicU64::new(0) }; 2],
            handshake_versions: [const { [const { AtomicU64::new(0) }; 2] }; 3],
            handshake_failures: [const { AtomicU64::new(0) }; TLS_FAILURES.len()],
            responses: [const { AtomicU64::new(0) }; 5],
            upstream_requests: AtomicU64::new(0),
            upstream_connections: [const { AtomicU64::new(0) }; 2],
            mtls_failures: [const { AtomicU64::new(0) }; 10],
            acme_answers: [const { AtomicU64::new(0) }; 2],
            on_demand: [const { AtomicU64::new(0) }; 4],
            renewals: [const { AtomicU64::new(0) }; 2],
            cluster_cert_not_after: AtomicI64::new(0),
            accepted: AtomicU64::new(0),
            closed: AtomicU64::new(0),
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

    /// The cluster certificate is `path` (its notAfter is read at each scrape).
    pub(crate) fn cluster_cert_file(&self, path: PathBuf) {
        let _ = CLUSTER_CERT_FILE.set(path);
    }

    /// A proxy TLS handshake completed.
    pub(crate) fn handshake(&self, version: ProtocolVersion, resumed: bool) {
        self.handshakes[usize::from(resumed)].fetch_add(1, Ordering::Relaxed);
        let version = match version {
            ProtocolVersion::TLSv1_2 => 0,
            ProtocolVersion::TLSv1_3 => 1,
            _ => 2,
        };
        self.handshake_versions[version][usize::from(resumed)].fetch_add(1, Ordering::Relaxed);
    }

    /// A proxy TLS handshake failed.
    pub(crate) fn handshake_failure(&self, error: &TlsError) {
        self.handshake_failures[failure_reason(error)].fetch_add(1, Ordering::Relaxed);
    }

    /// A proxy connection was accepted.
    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// A proxy connection closed.
    pub(crate) fn closed(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
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

    /// Writes the process-wide counters.
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counters(
            encoder,
            "gatehouse_tls_handshakes",
            "Completed proxy TLS handshakes.",
            "kind",
            &["full", "resumed"],
            &self.handshakes,
        )?;
        let mut family = encoder.encode_descriptor(
            "gatehouse_tls_handshake_versions",
            "Completed proxy TLS handshakes by protocol version and kind.",
            None,
            MetricType::Counter,
        )?;
        for (version, kinds) in TLS_VERSIONS.iter().zip(&self.handshake_versions) {
            for (kind, counter) in ["full", "resumed"].iter().zip(kinds) {
                ConstCounter::new(get(counter))
                    .encode(family.encode_family(&[("version", *version), ("kind", *kind)])?)?;
            }
        }
        counters(
            encoder,
            "gatehouse_tls_handshake_failures",
            "Proxy TLS handshakes that failed, by reason.",
            "reason",
            &TLS_FAILURES,
            &self.handshake_failures,
        )?;
        counters(
            encoder,
            "gatehouse_proxy_requests",
            "Responses sent by the proxy, by status class.",
            "class",
            &["1xx", "2xx", "3xx", "4xx", "5xx"],
            &self.responses,
        )?;
        ConstCounter::new(get(&self.upstream_requests)).encode(encoder.encode_descriptor(
            "gatehouse_upstream_requests",
            "Requests sent to upstreams (each attempt).",
            None,
            MetricType::Counter,
        )?)?;
        counters(
            encoder,
            "gatehouse_upstream_connections",
            "New connections to upstreams.",
            "tls",
            &["false", "true"],
            &self.upstream_connections,
        )?;
        counters(
            encoder,
            "gatehouse_mtls_auth_failures",
            "Client certificates refused by mtls-auth, by reason.",
            "reason",
            &MTLS_REASONS,
            &self.mtls_failures,
        )?;
        counters(
            encoder,
            "gatehouse_acme_challenges_answered",
            "ACME validations answered, by challenge kind.",
            "kind",
            &ACME_KINDS,
            &self.acme_answers,
        )?;
        counters(
            encoder,
            "gatehouse_acme_certificate_requests",
            "On-demand certificate requests to the control plane, by outcome.",
            "outcome",
            &ON_DEMAND_OUTCOMES,
            &self.on_demand,
        )?;
        counters(
            encoder,
            "gatehouse_cluster_certificate_renewals",
            "Renewals of the enrolled cluster certificate, by result.",
            "result",
            &["ok", "failed"],
            &self.renewals,
        )?;
        let enrolled = self.cluster_cert_not_after.load(Ordering::Relaxed);
        if enrolled > 0 {
            let days = (enrolled as f64 - crate::status::unix_now()) / 86400.0;
            gauge(
                encoder,
                "gatehouse_cluster_certificate_expiry_days",
                "Days until the enrolled cluster certificate expires.",
                days,
            )?;
        }
        let not_after = CLUSTER_CERT_FILE
            .get()
            .and_then(|path| cert_file_not_after(path))
            .or((enrolled > 0).then_some(enrolled));
        if let Some(not_after) = not_after {
            gauge(
                encoder,
                "gatehouse_cluster_certificate_expiry_timestamp_seconds",
                "notAfter of this data plane's cluster certificate, Unix seconds.",
                not_after,
            )?;
        }
        Ok(())
    }
}

/// The slot of `error` in [`TLS_FAILURES`].
fn failure_reason(error: &TlsError) -> usize {
    match error {
        TlsError::ClientHelloTimeout(_) => 0,
        TlsError::ClientHello(_) => 1,
        TlsError::HandshakeTimeout { .. } => 2,
        TlsError::Config(_) => 3,
        TlsError::Handshake { .. } => match error.tls_error() {
            Some(rustls::Error::AlertReceived(_)) => 4,
            Some(rustls::Error::PeerIncompatible(_)) => 5,
            Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => {
                6
            }
            Some(_) => 7,
            None => 8,
        },
    }
}

/// notAfter of the first certificate of a PEM file.
fn cert_file_not_after(path: &std::path::Path) -> Option<i64> {
    let pem = std::fs::read_to_string(path).ok()?;
    let chain = gatehouse_shared::x509::parse_certificates(&pem).ok()?;
    let leaf = chain.first()?;
    gatehouse_shared::x509::cert_facts(leaf)
        .ok()
        .map(|f| f.not_after)
}

/// One counter family with one label.
fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
    counters: &[AtomicU64],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, counter) in values.iter().zip(counters) {
        ConstCounter::new(counter.load(Ordering::Relaxed))
            .encode(family.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

/// One gauge without labels.
fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeGaugeValue,
) -> std::fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let facts = &self.0;
        encoder
            .encode_descriptor(
                "gatehouse_node_info",
                "This node: id, Gatehouse version and role.",
                None,
                MetricType::Gauge,
            )?
            .encode_family(&[
                ("node_id", facts.node_id.as_str()),
                ("version", facts.version.as_str()),
                ("role", "data_plane"),
            ])?
            .encode_gauge(&1i64)?;
        gauge(
            &mut encoder,
            "gatehouse_control_plane_connected",
            "1 while the sync stream to a control plane is open.",
            i64::from(facts.connected),
        )?;
        if facts.runtime.is_loaded() {
            gauge(
                &mut encoder,
                "gatehouse_config_version",
                "Version of the running configuration.",
                facts.runtime.version(),
            )?;
        }
        let mut family = encoder.encode_descriptor(
            "gatehouse_connections",
            "Proxy connections: open now (active) and accepted since start.",
            None,
            MetricType::Gauge,
        )?;
        let accepted = METRICS.accepted.load(Ordering::Relaxed);
        let closed = METRICS.closed.load(Ordering::Relaxed);
        for (state, value) in [
            ("active", accepted.saturating_sub(closed)),
            ("accepted", accepted),
        ] {
            family
                .encode_family(&[("state", state)])?
                .encode_gauge(&value)?;
        }
        let mut family = encoder.encode_descriptor(
            "gatehouse_upstream_target_health",
            "1 for the current state of each upstream target (healthy, unhealthy, healthchecks_off), 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        let targets = TARGET_HEALTH
            .get()
            .map(|health| health(&facts.runtime))
            .unwrap_or_default();
        for (upstream, target, current) in &targets {
            for state in TARGET_STATES {
                family
                    .encode_family(&[
                        ("upstream", upstream.as_str()),
                        ("target", target.as_str()),
                        ("state", state),
                    ])?
                    .encode_gauge(&i64::from(state == *current))?;
            }
        }
        METRICS.encode(&mut encoder)?;
        ROUTES.encode(&facts.runtime, &mut encoder)
    }
}

/// The OpenMetrics text of every metric.
pub(crate) fn render(facts: NodeFacts) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(facts)));
    let mut out = String::with_capacity(8192);
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(%error, "cannot encode the metrics");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The counters of a leaked `Metrics` (a collector is `'static`).
    #[derive(Debug)]
    struct Counters(&'static Metrics);

    impl Collector for Counters {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
            self.0.encode(&mut encoder)
        }
    }

    impl std::fmt::Debug for Metrics {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Metrics")
        }
    }

    #[test]
    fn counters_render_as_openmetrics_text() {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        metrics.handshake(ProtocolVersion::TLSv1_3, false);
        metrics.handshake(ProtocolVersion::TLSv1_2, true);
        metrics.handshake(ProtocolVersion::TLSv1_3, true);
        metrics.handshake_failure(&TlsError::Config("x".into()));
        metrics.response(204);
        metrics.response(503);
        metrics.upstream_request();
        metrics.upstream_connection(true);
        metrics.mtls_failure(MtlsFailure::Expired);
        metrics.acme_answer(true);
        metrics.on_demand(OnDemandOutcome::RateLimited);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Counters(metrics)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "gatehouse_tls_handshakes_total{kind=\"full\"} 1",
            "gatehouse_tls_handshakes_total{kind=\"resumed\"} 2",
            "gatehouse_tls_handshake_versions_total{version=\"TLSv1.3\",kind=\"resumed\"} 1",
            "gatehouse_tls_handshake_versions_total{version=\"TLSv1.2\",kind=\"resumed\"} 1",
            "gatehouse_tls_handshake_versions_total{version=\"TLSv1.3\",kind=\"full\"} 1",
            "gatehouse_tls_handshake_failures_total{reason=\"config\"} 1",
            "gatehouse_tls_handshake_failures_total{reason=\"alert\"} 0",
            "gatehouse_proxy_requests_total{class=\"2xx\"} 1",
            "gatehouse_proxy_requests_total{class=\"5xx\"} 1",
            "gatehouse_upstream_requests_total 1",
            "gatehouse_upstream_connections_total{tls=\"true\"} 1",
            "gatehouse_upstream_connections_total{tls=\"false\"} 0",
            "gatehouse_mtls_auth_failures_total{reason=\"expired\"} 1",
            "# TYPE gatehouse_mtls_auth_failures counter",
            "gatehouse_acme_challenges_answered_total{kind=\"tls-alpn-01\"} 1",
            "gatehouse_acme_challenges_answered_total{kind=\"http-01\"} 0",
            "gatehouse_acme_certificate_requests_total{outcome=\"rate_limited\"} 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
