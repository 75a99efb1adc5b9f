//! The data-plane registry as the Admin API shows it: one data plane
//! (`GET /clustering/data-planes`) and the fleet summary (`GET /clustering/status`), with the
//! reason each lagging data plane is not running the current configuration.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::LEASE;
use crate::store::{DataPlane, SyncStatus};

/// The snapshot data planes should run: what this node's builder published last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Current<'a> {
    /// Config version.
    pub(crate) version: u64,
    /// Config hash.
    pub(crate) hash: &'a str,
}

/// Counters of this node, shown in the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Snapshots built.
    pub(crate) built: u64,
    /// Snapshots sent.
    pub(crate) sent: u64,
}

/// One data plane: Kong's fields (`id`, `hostname`, `ip`, `version`, `config_hash`,
/// `last_seen`, `sync_status`, `labels`, `updated_at`, `cert_details.expiry_timestamp`) plus
/// `config_version`, `cert_expiry`, `error`, `warnings`, `connected`, `control_plane` and
/// `created_at`.
/// `connected` is false once the lease expired, whatever the row says.
pub(crate) fn data_plane_json(dp: &DataPlane, now: i64) -> Value {
    json!({
        "id": dp.id,
        "hostname": dp.hostname,
        "ip": dp.ip,
        "version": dp.version,
        "config_version": dp.config_version,
        "config_hash": dp.config_hash,
        "last_seen": dp.last_seen,
        "sync_status": dp.sync_status.as_str(),
        "labels": dp.labels,
        "cert_expiry": dp.cert_expiry,
        "cert_details": {
            "expiry_timestamp": dp.cert_expiry,
            "days_to_expiry": dp.cert_expiry.map(|expiry| (expiry - now) as f64 / 86400.0),
            "issuer": dp.cert_issuer,
            "serial": dp.cert_serial,
            "spiffe_id": dp.spiffe_id,
        },
        "error": dp.error,
        "warnings": dp.warnings,
        "connected": dp.is_connected(now, LEASE),
        "control_plane": dp.control_plane,
        "created_at": dp.created_at,
        "updated_at": dp.updated_at,
    })
}

/// The body of `GET /clustering/status`.
///
/// A data plane is in sync when it is connected and runs the current hash; every other one is
/// listed in `lagging` with a reason. Every data plane whose running configuration has
/// problems it made safe is listed in `warnings` with them, in sync or not. `current` is `None` when this node has no snapshot
/// (cluster listener disabled, or the first build pending); `no_current` then says why.
pub(crate) fn status_json(
    rows: &[DataPlane],
    current: Option<Current<'_>>,
    no_current: &str,
    counters: Counters,
    cluster_listener: Option<String>,
    now: i64,
) -> Value {
    let mut connected = 0;
    let mut in_sync = 0;
    let mut lagging = Vec::new();
    let mut warnings = Vec::new();
    for dp in rows {
        if dp.warnings.as_array().is_some_and(|w| !w.is_empty()) {
            warnings.push(json!({
                "id": dp.id,
                "hostname": dp.hostname,
                "config_version": dp.config_version,
                "warnings": dp.warnings,
            }));
        }
        let is_connected = dp.is_connected(now, LEASE);
        if is_connected {
            connected += 1;
        }
        match lag_reason(dp, is_connected, current, no_current) {
            None => in_sync += 1,
            Some(reason) => lagging.push(json!({
                "id": dp.id,
                "hostname": dp.hostname,
                "config_version": dp.config_version,
                "config_hash": dp.config_hash,
                "connected": is_connected,
                "reason": reason,
            })),
        }
    }
    json!({
        "config_version": current.map(|c| c.version),
        "config_hash": current.map(|c| c.hash),
        "snapshots_built": counters.built,
        "snapshots_sent": counters.sent,
        "cluster_listener": cluster_listener,
        "data_planes": {
            "total": rows.len(),
            "connected": connected,
            "in_sync": in_sync,
            "with_warnings": warnings.len(),
        },
        "lagging": lagging,
        "warnings": warnings,
    })
}

/// Why `dp` does not run `current`; `None` when it does (connected, same hash).
fn lag_reason(
    dp: &DataPlane,
    connected: bool,
    current: Option<Current<'_>>,
    no_current: &str,
) -> Option<String> {
    let error = dp.error.as_deref().unwrap_or("no reason given");
    if dp.sync_status == SyncStatus::VersionIncompatible {
        return Some(format!("version incompatible: {error}"));
    }
    if !connected {
        return Some(format!("disconnected since {}", rfc3339(dp.last_seen)));
    }
    let Some(current) = current else {
        return Some(no_current.to_owned());
    };
    if dp.config_hash.as_deref() == Some(current.hash) {
        return None;
    }
    if dp.sync_status == SyncStatus::Rejected {
        return Some(format!("rejected: {error}"));
    }
    match dp.config_version {
        Some(running) if u64::try_from(running).is_ok_and(|r| r > current.version) => {
            Some(format!(
                "runs version {running}, newer than this control plane's {}",
                current.version
            ))
        }
        _ => Some(format!("applying version {}", current.version)),
    }
}

/// Unix seconds as `2026-11-25T14:00:00Z`.
fn rfc3339(seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{seconds}"))
}

#[cfg(test)]
mod tests;
