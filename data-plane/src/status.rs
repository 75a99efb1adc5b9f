//! The node's state as the status listener reports it, and the listener itself (hyper 1,
//! HTTP/1.1 and HTTP/2 cleartext, on `--status-listen`).
//!
//! - `GET /status`: a [`StatusReport`] as JSON;
//! - `GET /status/ready`: 200 `{"message":"ready"}` once a configuration is loaded (from the
//!   cache or the control plane), else 503 `{"message":"no configuration available"}` (Kong's
//!   `/status/ready` also answers 503 until the DP has a configuration);
//! - `GET /metrics`: the metrics of [`crate::metrics`] in the OpenMetrics text format;
//! - anything else: 404 `{"message":"Not found"}` (405 for another method on a known path).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use uuid::Uuid;

use crate::runtime::{EntityCounts, SharedRuntime};
use crate::stopped;

/// How long open status connections may take to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where the running configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConfigSource {
    /// Received from (or confirmed by) the control plane.
    ControlPlane,
    /// Loaded from the cache directory at start, not yet confirmed by the control plane.
    Cache,
}

/// The body of `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StatusReport {
    /// This node's id.
    pub node_id: Uuid,
    /// The Gatehouse version announced to the control plane.
    pub version: String,
    /// Version of the running configuration; `None` before any.
    pub config_version: Option<u64>,
    /// Hash of the running configuration; `None` before any.
    pub config_hash: Option<String>,
    /// Where the running configuration came from; `None` before any.
    pub config_source: Option<ConfigSource>,
    /// When a snapshot was last applied or confirmed (for a cached configuration: when the
    /// cache was written), unix seconds.
    pub last_sync: Option<f64>,
    /// The control-plane connection.
    pub control_plane: ControlPlaneStatus,
    /// Entities of the running configuration.
    pub entities: EntityCounts,
    /// Problems found in the running configuration when it was applied, each made safe
    /// (e.g. an authentication plugin instance that cannot be built refuses its requests).
    pub warnings: Vec<String>,
}

/// The control-plane connection, in [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ControlPlaneStatus {
    /// `HOST:PORT` as configured (a comma-separated list with several replicas).
    pub address: String,
    /// Whether the sync stream is open.
    pub connected: bool,
    /// The replica the open stream goes to: `IP:PORT`, or `HOST:PORT (IP:PORT)` when it was
    /// configured by name; `None` while disconnected.
    pub connected_to: Option<String>,
    /// The last connection failure, kept after a reconnect until the next failure.
    pub last_error: Option<String>,
    /// When the current stream opened, unix seconds; `None` while disconnected.
    pub connected_since: Option<f64>,
}

/// Shared state of the node: fixed facts, the runtime, and the sync client's progress.
#[derive(Debug)]
pub(crate) struct NodeState {
    pub(crate) node_id: Uuid,
    pub(crate) version: String,
    pub(crate) control_plane: String,
    pub(crate) runtime: Arc<SharedRuntime>,
    sync: Mutex<SyncState>,
}

/// What the sync client last reported.
#[derive(Debug, Clone, Default)]
pub(crate) struct SyncState {
    pub(crate) connected: bool,
    pub(crate) connected_since: Option<f64>,
    pub(crate) connected_to: Option<String>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_sync: Option<f64>,
    pub(crate) source: Option<ConfigSource>,
    /// The warnings of the running configuration (see [`StatusReport::warnings`]).
    pub(crate) warnings: Vec<String>,
}

// === impl NodeState ===

impl NodeState {
    pub(crate) fn new(
        node_id: Uuid,
        version: String,
        control_plane: String,
        runtime: Arc<SharedRuntime>,
    ) -> Self {
        Self {
            node_id,
            version,
            control_plane,
            runtime,
            sync: Mutex::new(SyncState::default()),
        }
    }

    /// Changes the sync state. The lock is held for the closure only; never on the request
    /// path.
    pub(crate) fn update(&self, change: impl FnOnce(&mut SyncState)) {
        change(&mut self.sync.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// A copy of the sync state.
    pub(crate) fn sync_state(&self) -> SyncState {
        self.sync
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The status report.
    pub(crate) fn report(&self) -> StatusReport {
        let runtime = self.runtime.load_full();
        let sync = self.sync_state();
        let loaded = runtime.is_loaded();
        StatusReport {
            node_id: self.node_id,
            version: self.version.clone(),
            config_version: loaded.then_some(runtime.version()),
            config_hash: loaded.then(|| runtime.hash().to_owned()),
            config_source: if loaded { sync.source } else { None },
            last_sync: sync.last_sync,
            control_plane: ControlPlaneStatus {
                address: self.control_plane.clone(),
                connected: sync.connected,
                connected_to: sync.connected_to,
                last_error: sync.last_error,
                connected_since: sync.connected_since,
            },
            entities: runtime.counts(),
            warnings: sync.warnings,
        }
    }
}

/// Now, unix seconds.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Serves the status endpoints on `listener` until `shutdown` turns true, then lets open
/// connections finish (for a short while).
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<NodeState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let state = state.clone();
                    let service = service_fn(move |request| {
                        let response = respond(&state, &request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let connection = builder
                        .serve_connection(TokioIo::new(tcp), service)
                        .into_owned();
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%peer, %error, "status connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "status listener cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("status connections still open at shutdown; closing them");
    }
}

/// Binds the status listener and logs its address.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "status listener listening");
    Ok((listener, local))
}

/// The response to one request.
fn respond(state: &NodeState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let known = matches!(path, "/status" | "/status/" | "/status/ready" | "/metrics");
    if !known {
        return json_response(StatusCode::NOT_FOUND, &json!({"message": "Not found"}));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"message": "Method not allowed"}),
        );
    }
    if path == "/metrics" {
        let facts = crate::metrics::NodeFacts {
            node_id: state.node_id.to_string(),
            version: state.version.clone(),
            runtime: state.runtime.load_full(),
            connected: state.sync_state().connected,
        };
        let mut response = Response::new(Full::new(Bytes::from(crate::metrics::render(facts))));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        );
        return response;
    }
    if path == "/status/ready" {
        return if state.runtime.load().is_loaded() {
            json_response(StatusCode::OK, &json!({"message": "ready"}))
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"message": "no configuration available"}),
            )
        };
    }
    json_response(StatusCode::OK, &state.report())
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gatehouse_shared::snapshot;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::runtime::Runtime;
    use crate::test_support::valid_config;

    /// One HTTP/1.1 request; returns the status code and the body.
    async fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, serde_json::Value) {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let code = head[9..12].parse().unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json")
        );
        (code, serde_json::from_str(body).unwrap())
    }

    #[tokio::test]
    async fn endpoints() {
        let runtime = Arc::new(SharedRuntime::default());
        let state = Arc::new(NodeState::new(
            Uuid::new_v4(),
            "9.8.7".into(),
            "cp.test:8005".into(),
            runtime.clone(),
        ));
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, state.clone(), stopped));

        let (code, body) = get(addr, "GET", "/status/ready").await;
        assert_eq!(
            (code, body),
            (503, json!({"message": "no configuration available"}))
        );
        let (code, body) = get(addr, "GET", "/status").await;
        assert_eq!(code, 200);
        assert_eq!(body["node_id"], state.node_id.to_string());
        assert_eq!(body["version"], "9.8.7");
        assert_eq!(body["config_version"], serde_json::Value::Null);
        assert_eq!(body["config_hash"], serde_json::Value::Null);
        assert_eq!(body["config_source"], serde_json::Value::Null);
        assert_eq!(body["last_sync"], serde_json::Value::Null);
        assert_eq!(
            body["control_plane"],
            json!({"address": "cp.test:8005", "connected": false, "connected_to": null, "last_error": null, "connected_since": null})
        );
        assert_eq!(body["entities"]["services"], 0);

        let encoded = snapshot::encode(&valid_config(), 5);
        let compiled = Runtime::compile(5, encoded.hash.clone(), valid_config()).unwrap();
        let _empty = runtime.store(Arc::new(compiled));
        state.update(|s| {
            s.source = Some(ConfigSource::Cache);
            s.last_sync = Some(1.5);
            s.last_error = Some("boom".into());
            s.connected = true;
            s.connected_to = Some("cp.test:8005 (192.0.2.1:8005)".into());
        });
        let (code, body) = get(addr, "GET", "/status/ready").await;
        assert_eq!((code, body), (200, json!({"message": "ready"})));
        let (_, body) = get(addr, "GET", "/status").await;
        assert_eq!(body["config_version"], 5);
        assert_eq!(body["config_hash"], encoded.hash);
        assert_eq!(body["config_source"], "cache");
        assert_eq!(body["last_sync"], 1.5);
        assert_eq!(body["control_plane"]["last_error"], "boom");
        assert_eq!(
            body["control_plane"]["connected_to"],
            "cp.test:8005 (192.0.2.1:8005)"
        );
        assert_eq!(body["entities"]["certificates"], 1);
        assert_eq!(body["entities"]["snis"], 1);

        let (code, body) = get(addr, "GET", "/nope").await;
        assert_eq!((code, body), (404, json!({"message": "Not found"})));
        let (code, _) = get(addr, "POST", "/status").await;
        assert_eq!(code, 405);

        stop.send(true).unwrap();
        server.await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
