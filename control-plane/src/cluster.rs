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
mod enrol;
mod fleet;
mod listener;
mod service;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use gatehouse_proto::v1::{ControlPlaneMessage, RenewRequested, control_plane_message};

use gatehouse_shared::cluster::ReloadingConfig;

pub(crate) use self::fleet::{Counters, Current, data_plane_json, status_json};
use crate::config::{ClusterSettings, ConfigError};
use crate::snapshot::{Latest, Stats};
use crate::store::{RenewalRequests, Store, unix_now};

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
    /// Open sync streams by session id.
    sessions: Mutex<HashMap<Uuid, Session>>,
    /// The ACME client, set once at start.
    pub(crate) acme: std::sync::OnceLock<Arc<crate::acme::Acme>>,
}

/// One open sync stream.
#[derive(Debug)]
struct Session {
    /// The data plane's id.
    dp: Uuid,
    /// Serial number (lowercase hex) of its current certificate.
    serial: Option<String>,
    /// When that certificate should have been renewed by, Unix seconds: half-way between its
    /// renewal point and its expiry.
    renew_by: Option<i64>,
    /// Whether the missed renewal was logged.
    warned: bool,
    /// When its current certificate was issued (Unix seconds; its notBefore minus the
    /// backdating), to tell whether a renew-now request is newer.
    issued_at: Option<i64>,
    /// The latest renew-now request this stream was asked to act on (Unix milliseconds).
    asked: i64,
    /// Messages to the data plane (renewal answers, renew-now requests).
    replies: mpsc::Sender<ControlPlaneMessage>,
    /// Set to the reason to end the stream (its certificate was revoked).
    end: watch::Sender<Option<String>>,
}

/// The certificate a stream is authenticated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertOf {
    pub(crate) serial: String,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

impl CertOf {
    /// When it was issued (Unix seconds): certificates are backdated by
    /// [`BACKDATE_SECS`](gatehouse_shared::cluster::enrol::BACKDATE_SECS).
    fn issued_at(&self) -> i64 {
        self.not_before
            .saturating_add(gatehouse_shared::cluster::enrol::BACKDATE_SECS)
    }

    fn renew_by(&self) -> i64 {
        let renew_at = gatehouse_shared::cluster::enrol::renew_at(self.not_before, self.not_after);
        renew_at + (self.not_after - renew_at) / 2
    }
}

/// Removes a session from [`Node`]'s open streams when dropped.
#[derive(Debug)]
struct SessionGuard {
    node: Arc<Node>,
    session: Uuid,
}

/// The cluster CA and the policy this node issues data-plane certificates with.
pub(crate) type Ca = Arc<enrol::Issuer>;

/// Builds the cluster listener's TLS configuration from the `--cluster-*` files, or `None`
/// (with a warning) when the listener is disabled, and the cluster CA when enrolment is on.
/// Bad files are a configuration error naming the file and the reason.
pub(crate) fn load_tls(
    settings: &ClusterSettings,
) -> Result<Option<(Tls, Option<Ca>)>, ConfigError> {
    let Some(files) = settings.files.clone() else {
        tracing::warn!(
            "cluster listener disabled: --cluster-cert and --cluster-cert-key are not set"
        );
        return Ok(None);
    };
    let ca = match (&settings.enrolment, &settings.auto_cert) {
        (Some(enrolment), Some(names)) => {
            let issuer =
                enrol::Issuer::load(enrolment)?.with_own_cert(files.cert.clone(), names.clone());
            write_first_own_cert(&issuer, &files.cert)?;
            Some(Arc::new(issuer))
        }
        (Some(enrolment), None) => Some(Arc::new(enrol::Issuer::load(enrolment)?)),
        (None, _) => None,
    };
    // With enrolment on, a connection without a client certificate is accepted, for the
    // Enrolment service only (see `listener`).
    ReloadingConfig::server_with(settings.mtls, files, ca.is_some())
        .map(|tls| Some((Arc::new(tls), ca)))
        .map_err(|error| ConfigError::new(format!("cluster TLS: {error}")))
}

/// `--cluster-cert auto`: makes the private directory of `file` (mode 0700) and issues the
/// first certificate into it.
fn write_first_own_cert(issuer: &enrol::Issuer, file: &std::path::Path) -> Result<(), ConfigError> {
    let error = |reason: String| ConfigError::new(format!("--cluster-cert auto: {reason}"));
    if let Some(dir) = file.parent() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| error(format!("cannot create {}: {e}", dir.display())))?;
    }
    match issuer.write_own_cert() {
        Some(Ok((_, not_after, _))) => {
            tracing::info!(not_after, file = %file.display(), "control plane certificate issued by the cluster CA");
            Ok(())
        }
        Some(Err(reason)) => Err(error(reason)),
        None => Ok(()),
    }
}

/// Serves config sync on `listener` until `shutdown` turns true: the TLS reload watcher, the
/// accept loop, the gRPC server and the lease refresher. Returns once the streams are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Tls,
    ca: Option<Ca>,
    node: Arc<Node>,
    store: Arc<Store>,
    shutdown: watch::Receiver<bool>,
) {
    let reload = tokio::spawn(tls.clone().watch(RELOAD_INTERVAL));
    let own_ca = ca.clone().filter(|ca| ca.issues_own_cert());
    let own_cert = own_ca
        .clone()
        .map(|ca| tokio::spawn(enrol::renew_own_cert(ca, tls.clone())));
    let leases = tokio::spawn(refresh_leases(node.clone(), store.clone()));
    let revocations = tokio::spawn(enrol::watch_revocations(node.clone(), store.clone()));
    let service =
        service::SyncService::new(node.clone(), store.clone(), ca.clone(), shutdown.clone());
    let enrolment = ca.map(|ca| enrol::EnrolService::new(node, store, ca));
    listener::serve(listener, tls, service, enrolment, shutdown).await;
    reload.abort();
    if let Some(own_cert) = own_cert {
        own_cert.abort();
    }
    if let Some(ca) = own_ca {
        ca.remove_own_cert();
    }
    leases.abort();
    revocations.abort();
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

    /// Records an open stream until the guard drops; the receiver turns `Some(reason)` when the
    /// stream must end.
    fn open_session(
        self: &Arc<Self>,
        session: Uuid,
        dp: Uuid,
        cert: Option<&CertOf>,
        replies: mpsc::Sender<ControlPlaneMessage>,
    ) -> (SessionGuard, watch::Receiver<Option<String>>) {
        let (end, ended) = watch::channel(None);
        self.lock_sessions().insert(
            session,
            Session {
                dp,
                serial: cert.map(|c| c.serial.clone()),
                renew_by: cert.map(CertOf::renew_by),
                warned: false,
                issued_at: cert.map(CertOf::issued_at),
                asked: 0,
                replies,
                end,
            },
        );
        let guard = SessionGuard {
            node: self.clone(),
            session,
        };
        (guard, ended)
    }

    /// Ends every open stream of data plane `dp`; returns how many.
    pub(crate) fn end_streams_of(&self, dp: Uuid, reason: &str) -> usize {
        self.end_where(|session| session.dp == dp, reason)
    }

    /// Ends every open stream whose certificate serial is in `serials`; returns how many.
    fn end_streams_with(&self, serials: &std::collections::HashSet<String>, reason: &str) -> usize {
        self.end_where(
            |session| session.serial.as_ref().is_some_and(|s| serials.contains(s)),
            reason,
        )
    }

    fn end_where(&self, matches: impl Fn(&Session) -> bool, reason: &str) -> usize {
        let sessions = self.lock_sessions();
        let mut ended = 0;
        for session in sessions.values().filter(|s| matches(s)) {
            if session.end.borrow().is_none() {
                session.end.send_replace(Some(reason.to_owned()));
                ended += 1;
            }
        }
        ended
    }

    /// Updates the certificate of a session (after a renewal).
    fn set_cert(&self, session: Uuid, cert: &CertOf) {
        if let Some(entry) = self.lock_sessions().get_mut(&session) {
            entry.serial = Some(cert.serial.clone());
            entry.renew_by = Some(cert.renew_by());
            entry.warned = false;
            entry.issued_at = Some(cert.issued_at());
        }
    }

    /// Asks each stream whose certificate was issued before the latest renew-now request that
    /// concerns its data plane to renew at once, one time per request; returns how many were
    /// asked. A stream whose queue is full is asked at the next call. Certificate times are
    /// whole seconds: one issued in the second of the request counts as older (one renewal
    /// too many rather than a data plane missed).
    fn ask_renewals(&self, requests: &RenewalRequests) -> usize {
        let mut asked = 0;
        for session in self.lock_sessions().values_mut() {
            let requested = requests.for_node(session.dp);
            let Some(issued_at) = session.issued_at else {
                continue;
            };
            if requested <= session.asked || issued_at.saturating_mul(1000) > requested {
                continue;
            }
            let message = ControlPlaneMessage {
                kind: Some(control_plane_message::Kind::RenewRequested(
                    RenewRequested {},
                )),
            };
            if session.replies.try_send(message).is_ok() {
                session.asked = requested;
                asked += 1;
                tracing::info!(id = %session.dp, serial = session.serial.as_deref().unwrap_or("-"), "data plane asked to renew its certificate now");
            }
        }
        asked
    }

    /// Logs, once per certificate, each stream whose certificate is past the point it should
    /// have been renewed by (an enrolled data plane renews at two thirds of the lifetime).
    fn warn_expiring(&self, now: i64) {
        let mut sessions = self.lock_sessions();
        for session in sessions.values_mut() {
            if let Some(renew_by) = session.renew_by
                && renew_by <= now
                && !session.warned
            {
                session.warned = true;
                tracing::warn!(
                    id = %session.dp,
                    serial = session.serial.as_deref().unwrap_or("-"),
                    "data plane certificate is close to expiry and has not been renewed"
                );
            }
        }
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Session>> {
        // A panic while holding this lock leaves a consistent map (single insert/remove).
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.node.lock_sessions().remove(&self.session);
    }
}
