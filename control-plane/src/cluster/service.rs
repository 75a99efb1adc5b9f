//! `ConfigSync.Sync`: one bidirectional stream per data plane (DP).
//!
//! 1. The DP's first message must be a Hello, within [`HELLO_TIMEOUT`].
//! 2. A DP whose version this control plane does not serve gets a `Refusal` with the reason,
//!    is recorded as `version_incompatible`, and the stream ends.
//! 3. Otherwise the DP is registered (connected, this node, a new session) and gets the current
//!    snapshot at once, unless it already runs that hash; then every newer snapshot.
//! 4. Acks and heartbeats update the registry; the end of the stream marks it disconnected.
//!
//! Outbound, the stream takes the newest snapshot from the builder's `watch` channel each time
//! tonic asks for the next message, so versions superseded in between are never sent, and a
//! version older than what the DP runs is never sent either (the DP would refuse it).
//! Registry writes (registration included) happen in the inbound task and never hold up a
//! snapshot.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::Stream;
use futures_util::stream::{self, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use gatehouse_proto::v1::config_sync_server::ConfigSync;
use gatehouse_proto::v1::{
    Ack, ControlPlaneMessage, DataPlaneMessage, Heartbeat, Hello, Refusal, ack,
    control_plane_message, data_plane_message,
};
use gatehouse_proto::v1::{CertificateRenewed, RenewCertificate};
use gatehouse_shared::cluster::enrol;
use gatehouse_shared::snapshot::EncodedSnapshot;
use gatehouse_shared::x509;
use tokio::sync::mpsc;

use super::{Ca, CertOf, Node, compat};
use crate::snapshot::Latest;
use crate::store::{Claim, DataPlane, Store, SyncStatus, unix_now};

/// The version data planes are checked against.
const CP_VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long a DP may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeats that change nothing refresh `last_seen` at most this often.
const HEARTBEAT_WRITE_INTERVAL: Duration = Duration::from_secs(2);
/// Longest text kept from a DP (hostname, version, label, error), in bytes.
const MAX_TEXT: usize = 4096;
/// Most warnings kept per data plane.
const MAX_WARNINGS: usize = 64;
/// Most labels kept from a DP.
const MAX_LABELS: usize = 64;

/// The messages sent to one DP.
type Outbound = Pin<Box<dyn Stream<Item = Result<ControlPlaneMessage, Status>> + Send>>;

/// The `ConfigSync` service.
#[derive(Debug, Clone)]
pub(super) struct SyncService {
    node: Arc<Node>,
    store: Arc<Store>,
    ca: Option<Ca>,
    shutdown: watch::Receiver<bool>,
}

/// What the CP knows of the certificate a stream was opened with.
#[derive(Debug, Clone, Default)]
struct PeerCert {
    serial: Option<String>,
    issuer: Option<String>,
    spiffe_id: Option<String>,
    not_before: Option<i64>,
    not_after: Option<i64>,
}

/// What decides whether a snapshot goes to a DP.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Running {
    /// The version the DP runs or was last sent.
    version: u64,
    /// Its hash; `None` while the DP runs nothing.
    hash: Option<String>,
}

/// Whether to send a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Send,
    /// The DP runs (or was sent) this very configuration.
    AlreadyRuns,
    /// The DP runs a newer version; it would refuse this one.
    Older,
}

/// The outbound half of one stream.
struct Sender {
    latest: Latest,
    running: Running,
    first: bool,
    warned_older: bool,
    dp: Uuid,
    node: Arc<Node>,
    /// Turns true when the inbound half ended.
    closed: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    /// Turns `Some(reason)` when the stream must end (certificate revoked).
    ended: watch::Receiver<Option<String>>,
    /// Answers of the inbound half (renewals).
    replies: mpsc::Receiver<ControlPlaneMessage>,
    /// The refusal was sent: the next call ends the stream.
    done: bool,
}

/// The inbound half of one stream, holding the DP's registry row.
struct Receiver {
    row: DataPlane,
    store: Arc<Store>,
    last_write: Instant,
    /// The ACME client, which orders what data planes ask for on demand.
    acme: Option<Arc<crate::acme::Acme>>,
    ca: Option<Ca>,
    node: Arc<Node>,
    session: Uuid,
    replies: mpsc::Sender<ControlPlaneMessage>,
    ended: watch::Receiver<Option<String>>,
}

// === impl SyncService ===

impl SyncService {
    /// The service of `node`, ending its streams when `shutdown` turns true.
    pub(super) fn new(
        node: Arc<Node>,
        store: Arc<Store>,
        ca: Option<Ca>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            node,
            store,
            ca,
            shutdown,
        }
    }

    /// Records a refused DP and answers with the refusal.
    async fn refuse(&self, mut row: DataPlane, reason: String) -> Outbound {
        tracing::warn!(
            id = %row.id,
            hostname = %row.hostname,
            ip = %row.ip,
            version = %row.version,
            %reason,
            "data plane refused"
        );
        row.sync_status = SyncStatus::VersionIncompatible;
        row.error = Some(reason.clone());
        row.connected = false;
        if let Err(error) = self.store.write_data_plane(&row, Claim::TakeOver).await {
            tracing::warn!(id = %row.id, error = %error.detail(), "cannot record the refused data plane");
        }
        refusal(reason)
    }
}

#[tonic::async_trait]
impl ConfigSync for SyncService {
    type SyncStream = Outbound;

    async fn sync(
        &self,
        request: Request<Streaming<DataPlaneMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let peer = request.remote_addr();
        let cert = request
            .peer_certs()
            .map(|certs| PeerCert::of(&certs))
            .unwrap_or_default();
        let cert_expiry = cert.not_after;
        let mut inbound = request.into_inner();
        let hello = first_hello(&mut inbound, peer).await?;

        let Ok(id) = Uuid::parse_str(hello.node_id.trim()) else {
            let reason = format!(
                "node_id '{}' is not a UUID",
                truncate(hello.node_id.clone(), 64)
            );
            tracing::warn!(peer = %display_peer(peer), hostname = %truncate(hello.hostname, 256), %reason, "data plane refused");
            return Ok(Response::new(refusal(reason)));
        };
        // An enrolled certificate names its node: it may only speak for that node.
        if let Some(spiffe) = &cert.spiffe_id
            && enrol::node_of_spiffe(spiffe) != Some(id)
        {
            let reason = format!("node_id {id} is not the node of the certificate ({spiffe})");
            tracing::warn!(peer = %display_peer(peer), %reason, "data plane refused");
            return Ok(Response::new(refusal(reason)));
        }
        // A revoked certificate is refused; one whose revocation cannot be checked too.
        if let Some(serial) = &cert.serial {
            match self.store.is_revoked(serial).await {
                Ok(false) => {}
                Ok(true) => {
                    tracing::warn!(peer = %display_peer(peer), %id, %serial, "data plane refused: its certificate is revoked");
                    return Ok(Response::new(refusal(
                        "this data plane's certificate is revoked".to_owned(),
                    )));
                }
                Err(error) => {
                    tracing::warn!(peer = %display_peer(peer), %id, error = %error.detail(), "cannot check the certificate's revocation; stream refused");
                    return Err(Status::unavailable(
                        "the control plane cannot check certificate revocation; retry",
                    ));
                }
            }
        }
        let now = unix_now();
        let session = Uuid::new_v4();
        let running = Running::from_hello(&hello);
        let ip = peer.map_or_else(String::new, |p| p.ip().to_canonical().to_string());
        let hostname = match hello.hostname.trim() {
            "" => ip.clone(),
            _ => truncate(hello.hostname, MAX_TEXT),
        };
        let row = DataPlane {
            id,
            hostname,
            ip,
            version: truncate(hello.version, MAX_TEXT),
            labels: labels_json(hello.labels),
            config_version: running
                .hash
                .as_ref()
                .map(|_| i64::try_from(running.version).unwrap_or(i64::MAX)),
            config_hash: running.hash.clone(),
            sync_status: SyncStatus::Normal,
            error: None,
            cert_expiry,
            connected: true,
            control_plane: Some(self.node.id),
            session: Some(session),
            last_seen: now,
            created_at: now,
            updated_at: now,
            warnings: warnings_json(hello.warnings),
            cert_serial: cert.serial.clone(),
            cert_issuer: cert.issuer.clone(),
            spiffe_id: cert.spiffe_id.clone(),
        };
        if let Err(reason) = compat::check(&row.version, CP_VERSION) {
            return Ok(Response::new(self.refuse(row, reason).await));
        }

        let Some(latest) = self.node.latest.clone() else {
            // The service only runs with the listener, which always has a builder.
            return Err(Status::unavailable(
                "this control plane builds no snapshots",
            ));
        };
        tracing::info!(
            id = %row.id,
            hostname = %row.hostname,
            ip = %row.ip,
            version = %row.version,
            config_version = running.version,
            config_hash = running.hash.as_deref().unwrap_or("-"),
            "data plane connected"
        );
        let (replies_tx, replies) = mpsc::channel(4);
        let (guard, ended) =
            self.node
                .open_session(session, id, cert.cert_of().as_ref(), replies_tx.clone());
        let (closed_tx, closed) = watch::channel(false);
        let receiver = Receiver {
            row,
            store: self.store.clone(),
            last_write: Instant::now(),
            acme: self.node.acme.get().cloned(),
            ca: self.ca.clone(),
            node: self.node.clone(),
            session,
            replies: replies_tx,
            ended: ended.clone(),
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            receiver.run(inbound, shutdown).await;
            let _ = closed_tx.send(true);
            drop(guard);
        });
        let sender = Sender {
            latest,
            running,
            first: true,
            warned_older: false,
            dp: id,
            node: self.node.clone(),
            closed,
            shutdown: self.shutdown.clone(),
            ended,
            replies,
            done: false,
        };
        let outbound = stream::unfold(sender, |mut sender| async move {
            let message = sender.next().await?;
            Some((Ok(message), sender))
        });
        Ok(Response::new(outbound.boxed()))
    }
}

/// Waits for the DP's Hello.
async fn first_hello(
    inbound: &mut Streaming<DataPlaneMessage>,
    peer: Option<SocketAddr>,
) -> Result<Hello, Status> {
    let first = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(first) => first,
        Err(_) => {
            tracing::warn!(peer = %display_peer(peer), "data plane sent no Hello within {HELLO_TIMEOUT:?}");
            return Err(Status::deadline_exceeded(format!(
                "no Hello within {HELLO_TIMEOUT:?}"
            )));
        }
    };
    match first {
        Ok(Some(DataPlaneMessage {
            kind: Some(data_plane_message::Kind::Hello(hello)),
        })) => Ok(hello),
        Ok(Some(_)) => {
            tracing::warn!(peer = %display_peer(peer), "data plane did not start with Hello");
            Err(Status::failed_precondition(
                "the first message must be a Hello",
            ))
        }
        Ok(None) => Err(Status::cancelled("the stream ended before Hello")),
        Err(status) => {
            tracing::debug!(peer = %display_peer(peer), %status, "stream failed before Hello");
            Err(status)
        }
    }
}

/// A stream carrying one refusal.
fn refusal(reason: String) -> Outbound {
    let message = refusal_message(reason);
    stream::once(async move { Ok(message) }).boxed()
}

fn refusal_message(reason: String) -> ControlPlaneMessage {
    ControlPlaneMessage {
        kind: Some(control_plane_message::Kind::Refusal(Refusal { reason })),
    }
}

// === impl PeerCert ===

impl PeerCert {
    fn of(certs: &[rustls::pki_types::CertificateDer<'_>]) -> Self {
        let Some(leaf) = certs.first() else {
            return Self::default();
        };
        let facts = x509::cert_facts(leaf).ok();
        Self {
            serial: enrol::serial_hex(leaf),
            issuer: facts.as_ref().map(|f| f.issuer.clone()),
            spiffe_id: facts
                .as_ref()
                .and_then(|f| enrol::spiffe_of(f).map(str::to_owned)),
            not_before: facts.as_ref().map(|f| f.not_before),
            not_after: facts.as_ref().map(|f| f.not_after),
        }
    }

    fn cert_of(&self) -> Option<CertOf> {
        Some(CertOf {
            serial: self.serial.clone()?,
            not_before: self.not_before?,
            not_after: self.not_after?,
        })
    }
}

fn display_peer(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn labels_json(labels: std::collections::HashMap<String, String>) -> serde_json::Value {
    let mut sorted: Vec<(String, String)> = labels.into_iter().collect();
    sorted.sort();
    serde_json::Value::Object(
        sorted
            .into_iter()
            .take(MAX_LABELS)
            .map(|(k, v)| {
                (
                    truncate(k, MAX_TEXT),
                    serde_json::Value::String(truncate(v, MAX_TEXT)),
                )
            })
            .collect(),
    )
}

// === impl Running ===

impl Running {
    fn from_hello(hello: &Hello) -> Self {
        Self::reported(hello.config_version, &hello.config_hash)
    }

    /// What a DP reports; an empty hash means it runs nothing.
    fn reported(version: u64, hash: &str) -> Self {
        let hash = hash.trim();
        Self {
            version,
            hash: (!hash.is_empty()).then(|| hash.to_owned()),
        }
    }

    /// Whether `snapshot` should go to a DP in this state.
    fn decide(&self, version: u64, hash: &str) -> Decision {
        match &self.hash {
            Some(running) if running == hash => Decision::AlreadyRuns,
            Some(_) if version < self.version => Decision::Older,
            _ => Decision::Send,
        }
    }
}

// === impl Sender ===

impl Sender {
    /// The next message for the DP; `None` ends the stream (DP gone or shutdown).
    async fn next(&mut self) -> Option<ControlPlaneMessage> {
        if self.done {
            return None;
        }
        loop {
            if let Some(reason) = self.ended.borrow().clone() {
                self.done = true;
                return Some(refusal_message(reason));
            }
            if self.first {
                self.first = false;
            } else {
                tokio::select! {
                    changed = self.latest.changed() => changed.ok()?,
                    reply = self.replies.recv() => match reply {
                        Some(reply) => return Some(reply),
                        None => continue,
                    },
                    _ = self.ended.changed() => continue,
                    _ = self.closed.wait_for(|closed| *closed) => return None,
                    _ = self.shutdown.wait_for(|stop| *stop) => return None,
                }
            }
            if *self.shutdown.borrow() || *self.closed.borrow() {
                return None;
            }
            // The newest snapshot now: versions published since the last send are skipped.
            let Some(snapshot) = self.latest.borrow_and_update().clone() else {
                continue;
            };
            if let Some(message) = self.offer(&snapshot) {
                return Some(message);
            }
        }
    }

    fn offer(&mut self, snapshot: &EncodedSnapshot) -> Option<ControlPlaneMessage> {
        match self.running.decide(snapshot.version, &snapshot.hash) {
            Decision::Send => {
                self.running = Running {
                    version: snapshot.version,
                    hash: Some(snapshot.hash.clone()),
                };
                self.node.stats.sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    id = %self.dp,
                    version = snapshot.version,
                    hash = %snapshot.hash,
                    bytes = snapshot.wire_size(),
                    "snapshot sent"
                );
                // Shares the encoded bytes: no copy, no re-encoding.
                Some(snapshot.to_control_plane_message())
            }
            Decision::AlreadyRuns => None,
            Decision::Older => {
                if !self.warned_older {
                    self.warned_older = true;
                    tracing::warn!(
                        id = %self.dp,
                        data_plane_version = self.running.version,
                        control_plane_version = snapshot.version,
                        "data plane runs a newer config version than this control plane has; \
                         it gets the next version above its own"
                    );
                }
                None
            }
        }
    }
}

// === impl Receiver ===

impl Receiver {
    /// A data plane saw a handshake for a name without a certificate: the ACME client
    /// records it for an order when the `acme` plugin allows it (deduplicated fleet-wide).
    async fn certificate_wanted(&self, server_name: &str) {
        let Some(acme) = &self.acme else {
            return;
        };
        if let Err(error) = acme.wanted(server_name).await {
            tracing::debug!(id = %self.row.id, server_name, %error, "certificate wanted: not ordered");
        }
    }

    /// Reads the DP's messages until the stream ends, then marks it disconnected.
    async fn run(
        mut self,
        mut inbound: Streaming<DataPlaneMessage>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // Registering here, not before answering, keeps the database off the path of the first
        // snapshot; the row's later writes come from this task, so they follow it.
        if let Err(error) = self
            .store
            .write_data_plane(&self.row, Claim::TakeOver)
            .await
        {
            // Serving the configuration matters more than the registry: go on. The next
            // write recreates the row.
            tracing::warn!(id = %self.row.id, error = %error.detail(), "cannot register the data plane");
        }
        let mut revoked = self.ended.clone();
        let ended = loop {
            let message = tokio::select! {
                message = inbound.message() => message,
                _ = shutdown.wait_for(|stop| *stop) => break "control plane shutting down".to_owned(),
                _ = revoked.wait_for(Option::is_some) => break "certificate revoked".to_owned(),
            };
            match message {
                Ok(Some(DataPlaneMessage { kind: Some(kind) })) => match kind {
                    data_plane_message::Kind::Ack(ack) => self.ack(ack).await,
                    data_plane_message::Kind::Heartbeat(heartbeat) => {
                        self.heartbeat(heartbeat).await;
                    }
                    data_plane_message::Kind::Hello(_) => {
                        tracing::debug!(id = %self.row.id, "ignoring a second Hello");
                    }
                    data_plane_message::Kind::RenewCertificate(renew) => self.renew(renew).await,
                    data_plane_message::Kind::CertificateWanted(wanted) => {
                        self.certificate_wanted(&wanted.server_name).await;
                    }
                },
                Ok(Some(DataPlaneMessage { kind: None })) => {}
                Ok(None) => break "stream closed by the data plane".to_owned(),
                Err(status) => break status.message().to_owned(),
            }
        };
        tracing::info!(
            id = %self.row.id,
            hostname = %self.row.hostname,
            reason = %ended,
            "data plane disconnected"
        );
        if let Some(session) = self.row.session
            && let Err(error) = self
                .store
                .data_plane_disconnected(self.row.id, session, unix_now())
                .await
        {
            tracing::warn!(id = %self.row.id, error = %error.detail(), "cannot record the disconnection");
        }
    }

    async fn ack(&mut self, ack: Ack) {
        let row = &mut self.row;
        match ack.status() {
            ack::Status::Applied => {
                crate::metrics::PROPAGATION.applied(ack.version);
                let running = Running::reported(ack.version, &ack.hash);
                tracing::info!(
                    id = %row.id,
                    hostname = %row.hostname,
                    version = ack.version,
                    hash = %ack.hash,
                    "data plane applied snapshot"
                );
                row.config_version = running
                    .hash
                    .as_ref()
                    .map(|_| i64::try_from(running.version).unwrap_or(i64::MAX));
                row.config_hash = running.hash;
                row.error = None;
                row.sync_status = SyncStatus::Normal;
                let count = ack.warnings.len();
                row.warnings = warnings_json(ack.warnings);
                if count > 0 {
                    tracing::warn!(
                        id = %row.id,
                        hostname = %row.hostname,
                        version = ack.version,
                        warnings = %row.warnings,
                        "data plane applied snapshot with problems it made safe"
                    );
                }
            }
            ack::Status::Rejected => {
                let error = truncate(ack.error, MAX_TEXT);
                tracing::warn!(
                    id = %row.id,
                    hostname = %row.hostname,
                    version = ack.version,
                    hash = %ack.hash,
                    %error,
                    "data plane rejected snapshot"
                );
                row.error = Some(if error.is_empty() {
                    format!("version {} rejected without a reason", ack.version)
                } else {
                    error
                });
                row.sync_status = SyncStatus::Rejected;
            }
            ack::Status::Unspecified => {
                tracing::debug!(id = %row.id, "ignoring an ack without status");
                return;
            }
        }
        let now = unix_now();
        row.last_seen = now;
        row.updated_at = now;
        self.write().await;
    }

    async fn heartbeat(&mut self, heartbeat: Heartbeat) {
        let running = Running::reported(heartbeat.config_version, &heartbeat.config_hash);
        let version = running
            .hash
            .as_ref()
            .map(|_| i64::try_from(running.version).unwrap_or(i64::MAX));
        let now = unix_now();
        let row = &mut self.row;
        row.last_seen = now;
        let changed = row.config_hash != running.hash || row.config_version != version;
        if changed {
            row.config_hash = running.hash;
            row.config_version = version;
            row.updated_at = now;
        }
        if changed || self.last_write.elapsed() >= HEARTBEAT_WRITE_INTERVAL {
            self.write().await;
        }
    }

    /// Issues a renewed certificate for the stream's node and sends it (or the refusal).
    async fn renew(&mut self, renew: RenewCertificate) {
        let id = self.row.id;
        let answer = match (&self.ca, &self.row.spiffe_id, &self.row.cert_serial) {
            (None, _, _) => Err(
                "this control plane does not issue certificates (no --cluster-ca-key)".to_owned(),
            ),
            (Some(ca), Some(_), Some(serial)) => {
                let serial = serial.clone();
                ca.renew(&self.store, &renew.csr, id, &serial).await
            }
            (Some(_), _, _) => Err(
                "only an enrolled data plane (with a SPIFFE ID) renews its certificate".to_owned(),
            ),
        };
        let reply = match answer {
            Ok((issued, bundle)) => {
                tracing::info!(%id, serial = %issued.serial, issuer = %issued.issuer, not_after = issued.not_after, "data plane certificate renewed");
                let cert = CertOf {
                    serial: issued.serial.clone(),
                    not_before: issued.not_before,
                    not_after: issued.not_after,
                };
                self.node.set_cert(self.session, &cert);
                self.row.cert_serial = Some(issued.serial);
                self.row.cert_issuer = Some(issued.issuer);
                self.row.spiffe_id = Some(issued.spiffe_id);
                self.row.cert_expiry = Some(issued.not_after);
                self.row.updated_at = unix_now();
                self.write().await;
                CertificateRenewed {
                    certificate: issued.cert_pem,
                    error: String::new(),
                    ca_bundle: bundle.to_string(),
                }
            }
            Err(error) => {
                tracing::warn!(%id, %error, "data plane certificate renewal refused");
                CertificateRenewed {
                    certificate: String::new(),
                    error,
                    ca_bundle: String::new(),
                }
            }
        };
        let message = ControlPlaneMessage {
            kind: Some(control_plane_message::Kind::CertificateRenewed(reply)),
        };
        if self.replies.send(message).await.is_err() {
            tracing::debug!(%id, "stream closed before the renewed certificate was sent");
        }
    }

    /// Writes the row, unless another stream of the DP owns it by now.
    async fn write(&mut self) {
        self.last_write = Instant::now();
        match self.store.write_data_plane(&self.row, Claim::Update).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(id = %self.row.id, "registry row owned by a newer stream"),
            Err(error) => {
                tracing::warn!(id = %self.row.id, error = %error.detail(), "cannot update the data-plane registry");
            }
        }
    }
}

/// A data plane's warnings as stored: at most [`MAX_WARNINGS`], each at most [`MAX_TEXT`].
fn warnings_json(warnings: Vec<String>) -> serde_json::Value {
    serde_json::Value::Array(
        warnings
            .into_iter()
            .take(MAX_WARNINGS)
            .map(|w| serde_json::Value::String(truncate(w, MAX_TEXT)))
            .collect(),
    )
}

#[cfg(test)]
mod tests;
