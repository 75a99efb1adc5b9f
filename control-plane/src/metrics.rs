//! The control plane's metrics, `GET /metrics` on the status listener, in the OpenMetrics text
//! format (the `prometheus-client` crate's encoder).
//!
//! | metric | labels | value |
//! |---|---|---|
//! | `gatehouse_node_info` | `node_id`, `version`, `role="control_plane"` | 1 |
//! | `gatehouse_datastore_reachable` | | 1 when PostgreSQL answers |
//! | `gatehouse_config_version` | | version of this node's latest snapshot |
//! | `gatehouse_data_planes_connected` | | sync streams open on this node |
//! | `gatehouse_data_plane_last_seen` | `node_id`, `hostname`, `ip` | last report, Unix seconds |
//! | `gatehouse_data_plane_config_hash` | same | the first 13 hex digits of the hash it runs, as a number (Kong's form) |
//! | `gatehouse_data_plane_version_compatible` | same + `version` | 1 unless its version is refused |
//! | `gatehouse_data_plane_connected` | same | 1 while its lease holds |
//! | `gatehouse_data_plane_config_version_lag` | same | this node's snapshot version minus the version it runs |
//! | `gatehouse_data_plane_cluster_cert_expiry_timestamp` | same | notAfter of its cluster certificate |
//! | `gatehouse_config_propagation_seconds` (histogram) | | from the start of a snapshot build on this node (a write was seen) to each data plane's ack of that version |
//! | `gatehouse_certificate_expiry_timestamp_seconds` | `certificate` (id) | notAfter of each certificate |
//! | `gatehouse_ca_certificate_expiry_timestamp_seconds` | `ca_certificate` (id) | notAfter of each CA certificate |
//! | `gatehouse_cluster_certificate_expiry_timestamp_seconds` | | notAfter of this node's cluster listener certificate |
//!
//! Labels are bounded by what the database holds: one series per registered data plane (gone
//! when it is deleted from `/clustering/data-planes`) and per certificate entity. The registry
//! rows are read at each scrape.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::cluster::LEASE;
use crate::store::{DataPlane, Expiries, SyncStatus};

/// The content type of `GET /metrics`.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the propagation histogram, seconds.
const PROPAGATION_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Snapshot versions whose build start is remembered for the propagation histogram.
const REMEMBERED: usize = 64;

/// Config propagation timing: when each recent version's build started, and the histogram of
/// the time to each data plane's ack.
#[derive(Debug)]
pub(crate) struct Propagation {
    started: Mutex<VecDeque<(u64, Instant)>>,
    histogram: Histogram,
}

/// The process's propagation timing.
pub(crate) static PROPAGATION: LazyLock<Propagation> = LazyLock::new(|| Propagation {
    started: Mutex::new(VecDeque::with_capacity(REMEMBERED)),
    histogram: Histogram::new(PROPAGATION_BUCKETS),
});

impl Propagation {
    /// The snapshot of `version`, whose build started at `started`, was published.
    pub(crate) fn published(&self, version: u64, started: Instant) {
        let mut recent = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == REMEMBERED {
            recent.pop_front();
        }
        recent.push_back((version, started));
    }

    /// A data plane acknowledged `version` as applied.
    pub(crate) fn applied(&self, version: u64) {
        let started = self
            .started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, at)| *at);
        if let Some(started) = started {
            self.histogram.observe(started.elapsed().as_secs_f64());
        }
    }
}

/// What one scrape shows.
#[derive(Debug)]
pub(crate) struct Scrape {
    pub(crate) node_id: String,
    pub(crate) reachable: bool,
    pub(crate) config_version: Option<u64>,
    pub(crate) connected: usize,
    pub(crate) data_planes: Vec<DataPlane>,
    pub(crate) expiries: Expiries,
    /// This node's cluster certificate file.
    pub(crate) cluster_cert: Option<PathBuf>,
    pub(crate) now: i64,
}

impl Scrape {
    /// The OpenMetrics text.
    pub(crate) fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register(
            "gatehouse_config_propagation_seconds",
            "Seconds from the start of a snapshot build on this control plane to each data plane's ack of it.",
            PROPAGATION.histogram.clone(),
        );
        registry.register_collector(Box::new(self));
        let mut out = String::with_capacity(4096);
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(%error, "cannot encode the metrics");
        }
        out
    }
}

/// A gauge family: `(labels, value)` rows.
fn gauges<V: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, V)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// The number Kong shows for a config hash: its first 13 hex digits (exact in a double).
fn hash_number(hash: &str) -> Option<i64> {
    i64::from_str_radix(hash.get(..13)?, 16).ok()
}

/// notAfter of the first certificate of a PEM file.
fn cert_file_not_after(path: &std::path::Path) -> Option<i64> {
    let pem = std::fs::read_to_string(path).ok()?;
    let chain = gatehouse_shared::x509::parse_certificates(&pem).ok()?;
    gatehouse_shared::x509::cert_facts(chain.first()?)
        .ok()
        .map(|f| f.not_after)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let none = Vec::new;
        gauges(
            &mut encoder,
            "gatehouse_node_info",
            "This node: id, Gatehouse version and role.",
            [(
                vec![
                    ("node_id", self.node_id.clone()),
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                    ("role", "control_plane".to_owned()),
                ],
                1i64,
            )],
        )?;
        gauges(
            &mut encoder,
            "gatehouse_datastore_reachable",
            "1 when the database answers.",
            [(none(), i64::from(self.reachable))],
        )?;
        if let Some(version) = self.config_version {
            gauges(
                &mut encoder,
                "gatehouse_config_version",
                "Version of this node's latest snapshot.",
                [(none(), version)],
            )?;
        }
        gauges(
            &mut encoder,
            "gatehouse_data_planes_connected",
            "Sync streams open on this node.",
            [(none(), self.connected as u64)],
        )?;
        let who = |dp: &DataPlane| {
            vec![
                ("node_id", dp.id.to_string()),
                ("hostname", dp.hostname.clone()),
                ("ip", dp.ip.clone()),
            ]
        };
        let dps = &self.data_planes;
        gauges(
            &mut encoder,
            "gatehouse_data_plane_last_seen",
            "When each data plane was last heard of, Unix seconds.",
            dps.iter().map(|dp| (who(dp), dp.last_seen)),
        )?;
        gauges(
            &mut encoder,
            "gatehouse_data_plane_config_hash",
            "The config hash each data plane runs: its first 13 hex digits as a number.",
            dps.iter()
                .filter_map(|dp| Some((who(dp), hash_number(dp.config_hash.as_deref()?)?))),
        )?;
        gauges(
            &mut encoder,
            "gatehouse_data_plane_version_compatible",
            "1 when this control plane serves the data plane's version.",
            dps.iter().map(|dp| {
                let mut labels = who(dp);
                labels.push(("version", dp.version.clone()));
                let compatible = dp.sync_status != SyncStatus::VersionIncompatible;
                (labels, i64::from(compatible))
            }),
        )?;
        gauges(
            &mut encoder,
            "gatehouse_data_plane_connected",
            "1 while the data plane's sync stream is open (its lease holds).",
            dps.iter()
                .map(|dp| (who(dp), i64::from(dp.is_connected(self.now, LEASE)))),
        )?;
        if let Some(current) = self.config_version.and_then(|v| i64::try_from(v).ok()) {
            gauges(
                &mut encoder,
                "gatehouse_data_plane_config_version_lag",
                "This node's snapshot version minus the version each data plane runs.",
                dps.iter()
                    .filter_map(|dp| Some((who(dp), current - dp.config_version?))),
            )?;
        }
        gauges(
            &mut encoder,
            "gatehouse_data_plane_cluster_cert_expiry_timestamp",
            "notAfter of each data plane's cluster certificate, Unix seconds.",
            dps.iter().filter_map(|dp| Some((who(dp), dp.cert_expiry?))),
        )?;
        gauges(
            &mut encoder,
            "gatehouse_certificate_expiry_timestamp_seconds",
            "notAfter of each certificate, Unix seconds.",
            self.expiries
                .certificates
                .iter()
                .map(|(id, not_after)| (vec![("certificate", id.clone())], *not_after)),
        )?;
        gauges(
            &mut encoder,
            "gatehouse_ca_certificate_expiry_timestamp_seconds",
            "notAfter of each CA certificate, Unix seconds.",
            self.expiries
                .ca_certificates
                .iter()
                .map(|(id, not_after)| (vec![("ca_certificate", id.clone())], *not_after)),
        )?;
        if let Some(not_after) = self.cluster_cert.as_deref().and_then(cert_file_not_after) {
            gauges(
                &mut encoder,
                "gatehouse_cluster_certificate_expiry_timestamp_seconds",
                "notAfter of this control plane's cluster listener certificate, Unix seconds.",
                [(none(), not_after)],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashes_show_as_kong_numbers() {
        assert_eq!(hash_number("0000000000001ffff"), Some(1));
        assert_eq!(hash_number("fffffffffffff"), Some(0x000f_ffff_ffff_ffff));
        assert_eq!(hash_number("short"), None);
        assert_eq!(hash_number("zzzzzzzzzzzzz"), None);
    }

    #[test]
    fn acks_of_remembered_versions_are_timed() {
        let propagation = Propagation {
            started: Mutex::new(VecDeque::new()),
            histogram: Histogram::new(PROPAGATION_BUCKETS),
        };
        propagation.published(7, Instant::now());
        propagation.applied(7);
        propagation.applied(7);
        propagation.applied(8);
        let mut registry = Registry::default();
        registry.register("p", "p", propagation.histogram.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.lines().any(|l| l == "p_count 2"), "{text}");
        for v in 0..100 {
            propagation.published(v, Instant::now());
        }
        assert_eq!(
            propagation
                .started
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            REMEMBERED
        );
    }
}
