//! The status listener (`--status-listen`, Kong's `status_listen`): health of this control
//! plane node for probes and operators, apart from the Admin API.
//!
//! - `GET /status`: 200 with `{"database": {"reachable"}, "config_version", "snapshot":
//!   {"version", "hash"} | null, "data_planes": {"connected"}, "cluster_listener",
//!   "snapshots_built", "snapshots_sent"}` (`connected` counts the streams on this node);
//! - `GET /metrics`: the metrics of [`crate::metrics`] (OpenMetrics text);
//! - `GET /status/ready`: 200 `{"ready": true}` when the database answers and, with the
//!   cluster listener, a snapshot is built; else 503 with `{"ready": false, "reason"}`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde_json::json;

use crate::cluster::Node;
use crate::store::Store;

/// State of the status handlers.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    store: Arc<Store>,
    node: Arc<Node>,
    /// The cluster listener's certificate file (for its expiry gauge).
    cluster_cert: Option<PathBuf>,
}

/// The status router.
pub(crate) fn router(store: Arc<Store>, node: Arc<Node>, cluster_cert: Option<PathBuf>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/status/ready", get(ready))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": "Not found"})),
            )
        })
        .with_state(Status {
            store,
            node,
            cluster_cert,
        })
}

async fn metrics(State(state): State<Status>) -> Response {
    let version = state.store.config_version().await;
    let reachable = version.is_ok();
    let (data_planes, expiries) = if reachable {
        let data_planes = state.store.data_planes().await;
        let expiries = state.store.expiries().await;
        if let Err(error) = data_planes.as_ref().and(expiries.as_ref()) {
            tracing::warn!(error = %error.detail(), "metrics: cannot read the database");
        }
        (
            data_planes.unwrap_or_default(),
            expiries.unwrap_or_default(),
        )
    } else {
        Default::default()
    };
    let scrape = crate::metrics::Scrape {
        node_id: state.node.id.to_string(),
        reachable,
        config_version: state
            .node
            .latest
            .as_ref()
            .and_then(|latest| latest.borrow().as_ref().map(|s| s.version)),
        connected: state.node.connected(),
        data_planes,
        expiries,
        cluster_cert: state.cluster_cert.clone(),
        now: crate::store::unix_now(),
    };
    (
        [(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        scrape.render(),
    )
        .into_response()
}

async fn status(State(state): State<Status>) -> Response {
    let version = state.store.config_version().await;
    if let Err(error) = &version {
        tracing::warn!(error = %error.detail(), "database unreachable");
    }
    let snapshot = state
        .node
        .latest
        .as_ref()
        .and_then(|latest| latest.borrow().clone())
        .map(|s| json!({"version": s.version, "hash": s.hash}));
    let (built, sent) = state.node.stats.get();
    let acme = state.node.acme.get().map(|acme| {
        let names = acme.names_summary();
        json!({
            "certificates_issued": acme.stats.issued.load(Ordering::Relaxed),
            "orders_failed": acme.stats.failed.load(Ordering::Relaxed),
            "names_failing": names.0,
            "certificates_expired": names.1,
        })
    });
    axum::Json(json!({
        "database": {"reachable": version.is_ok()},
        "config_version": version.ok(),
        "snapshot": snapshot,
        "data_planes": {"connected": state.node.connected()},
        "cluster_listener": state.node.cluster_addr.map(|a| a.to_string()),
        "snapshots_built": built,
        "snapshots_sent": sent,
        "acme": acme,
    }))
    .into_response()
}

async fn ready(State(state): State<Status>) -> Response {
    let reason = if let Err(error) = state.store.config_version().await {
        tracing::warn!(error = %error.detail(), "database unreachable");
        Some("database unreachable")
    } else if state
        .node
        .latest
        .as_ref()
        .is_some_and(|latest| latest.borrow().is_none())
    {
        Some("no snapshot built yet")
    } else {
        None
    };
    match reason {
        None => axum::Json(json!({"ready": true})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}
