//! Config sync, control-plane side: the cluster listener where data planes (DPs) connect over
//! mutual TLS, one `ConfigSync.Sync` stream per DP, and the registry of DPs.
//!
//! - `listener`: accepts TCP connections, runs each TLS handshake in its own task with the
//!   current (hot-reloaded) rustls configuration, and feeds the handshaken streams to tonic;
//! - `service`: the `Sync` stream: Hello, version check, registration, snapshots out, acks
//!   and heartbeats in;
//! - `compat`: which DP versions are served;
//! - `fleet`: the registry as the Admin API shows it (`/clustering/*`), with lag reasons.
//!
//! Snapshots come from the builder (`crate::snapshot`) through a `watch` channel: each stream
//! sends the shared, already encoded message, and the channel keeps only the newest version,
//! so a slow DP skips versions superseded before it could take them.
//!
//! The registry lives in Postgres (`data_planes`), written by whichever replica holds a DP's
//! stream. A row's `connected` flag is a lease: the holder refreshes `last_seen` every
//! [`LEASE_REFRESH`], and a row not refreshed within [`LEASE`] counts as disconnected (its
//! replica died without saying so).

mod compat;
mod fleet;
mod listener;
mod service;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use uuid::Uuid;

use gatehouse_shared::cluster::ReloadingConfig;

pub(crate) use self::fleet::{Counters, Current, data_plane_json, status_json};
use crate::config::{ClusterSettings, ConfigError};
use crate::snapshot::{Latest, Stats};
use crate::store::{Store, unix_now};

/// How long a `connected` row stays connected without a lease refresh, in seconds.
pub(crate) const LEASE: i64 = 30;
/// How often this node refreshes the lease of the streams it holds.
const LEASE_REFRESH: Duration = Duration::from_secs(10);
/// How often the cluster certificate files are checked for changes. Shorter than the shared
/// default so a rotation takes effect within seconds (reading three small files is cheap).
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The rustls configuration of the cluster listener, rebuilt when its files change.
pub(crate) type Tls = Arc<ReloadingConfig<ServerConfig>>;

/// This control-plane node as config sync, the Admin API and the status listener see it.
#[derive(Debug)]
pub(crate) struct Node {
    /// Node id, new at every start (the registry's `control_plane`).
    pub(crate) id: Uuid,
    /// Hostname.
    pub(crate) hostname: String,
    /// Counters of snapshots built and sent.
    pub(crate) stats: Arc<Stats>,
    /// The latest snapshot; `None` when the cluster listener is disabled (no builder runs).
    pub(crate) latest: Option<Latest>,
    /// Address of the cluster listener, when it runs.
    pub(crate) cluster_addr: Option<SocketAddr>,
    /// Open sync streams: session id → DP id.
    sessions: Mutex<HashMap<Uuid, Uuid>>,
    /// The ACME client, set once at start.
    pub(crate) acme: std::sync::OnceLock<Arc<crate::acme::Acme>>,
}

/// Removes a session from [`Node`]'s open streams when dropped.
#[derive(Debug)]
struct SessionGuard {
    node: Arc<Node>,
    session: Uuid,
}

/// Builds the cluster listener's TLS configuration from the `--cluster-*` files, or `None`
/// (with a warning) when the listener is disabled. Bad files are a configuration error naming
/// the file and the reason.
pub(crate) fn load_tls(settings: &ClusterSettings) -> Result<Option<Tls>, ConfigError> {
    let Some(files) = settings.files.clone() else {
        tracing::warn!(
            "cluster listener disabled: --cluster-cert and --cluster-cert-key are not set"
        );
        return Ok(None);
    };
    ReloadingConfig::server(settings.mtls, files)
        .map(|tls| Some(Arc::new(tls)))
        .map_err(|error| ConfigError::new(format!("cluster TLS: {error}")))
}

/// Serves config sync on `listener` until `shutdown` turns true: the TLS reload watcher, the
/// accept loop, the gRPC server and the lease refresher. Returns once the streams are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Tls,
    node: Arc<Node>,
    store: Arc<Store>,
    shutdown: watch::Receiver<bool>,
) {
    let reload = tokio::spawn(tls.clone().watch(RELOAD_INTERVAL));
    let leases = tokio::spawn(refresh_leases(node.clone(), store.clone()));
    let service = service::SyncService::new(node, store, shutdown.clone());
    listener::serve(listener, tls, service, shutdown).await;
    reload.abort();
    leases.abort();
}

/// Keeps the leases of this node's streams alive.
async fn refresh_leases(node: Arc<Node>, store: Arc<Store>) {
    let mut ticks = tokio::time::interval(LEASE_REFRESH);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let sessions = node.sessions();
        if let Err(error) = store.refresh_data_planes(&sessions, unix_now()).await {
            tracing::warn!(error = %error.detail(), "cannot refresh data-plane leases");
        }
    }
}

// === impl Node ===

impl Node {
    /// A node with a fresh id.
    pub(crate) fn new(
        stats: Arc<Stats>,
        latest: Option<Latest>,
        cluster_addr: Option<SocketAddr>,
    ) -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".into());
        Self {
            id: Uuid::new_v4(),
            hostname,
            stats,
            latest,
            cluster_addr,
            sessions: Mutex::new(HashMap::new()),
            acme: std::sync::OnceLock::new(),
        }
    }

    /// Number of sync streams open on this node.
    pub(crate) fn connected(&self) -> usize {
        self.lock_sessions().len()
    }

    /// The open sessions.
    fn sessions(&self) -> Vec<Uuid> {
        self.lock_sessions().keys().copied().collect()
    }

    /// Records an open stream until the guard drops.
    fn open_session(self: &Arc<Self>, session: Uuid, dp: Uuid) -> SessionGuard {
        self.lock_sessions().insert(session, dp);
        SessionGuard {
            node: self.clone(),
            session,
        }
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Uuid>> {
        // A panic while holding this lock leaves a consistent map (single insert/remove).
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.node.lock_sessions().remove(&self.session);
    }
}
