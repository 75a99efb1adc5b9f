//! The config-sync client: one `ConfigSync.Sync` stream to the control plane over mutual TLS.
//!
//! The client sends `Hello` (node id, hostname, version, labels and the running config's
//! version and hash), then handles what the control plane sends:
//!
//! - `Snapshot`: an older version than the running one is refused (`REJECTED`, never
//!   applied); the running hash is acknowledged (`APPLIED`) without compiling; anything else
//!   is decoded and compiled off the async threads, swapped in and acknowledged, then written
//!   to the cache; a snapshot that does not decode or compile is `REJECTED` with the error,
//!   and the running runtime stays.
//! - `Refusal`: logged as an error; the next attempt waits [`Timing::refusal_delay`].
//!
//! A heartbeat with the running version and hash goes out every [`Timing::heartbeat`]. HTTP/2
//! keepalive pings detect a dead control plane within [`KEEPALIVE`] + [`KEEPALIVE_TIMEOUT`].
//!
//! Several control planes (replicas) may be given: see [`targets`] for the order they are
//! tried in. A failed attempt or a lost stream moves on to the next replica at once; only when
//! every replica failed in turn does the client wait, with exponential backoff and full jitter
//! ([`Backoff`]).
//!
//! TLS is ours, not tonic's: each connection takes the current
//! [`ReloadingConfig`](gatehouse_shared::cluster::ReloadingConfig) (so a
//! rotated cluster certificate is used by the next connection) and its handshake errors keep
//! rustls' reason (`invalid peer certificate: UnknownIssuer`).

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::error::Error as StdError;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_proto::v1::{self as pb, ack, config_sync_client::ConfigSyncClient};
use gatehouse_proto::v1::{control_plane_message, data_plane_message};
use gatehouse_shared::snapshot::{self, MAX_CONFIG_SIZE};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::cache::Cache;
use crate::enrol::Identity;
use crate::metrics::METRICS;
use crate::runtime::{Runtime, SharedRuntime};
use crate::status::{ConfigSource, NodeState, unix_now};
use crate::stopped;

pub(crate) mod targets;
#[cfg(test)]
mod tests;

use self::targets::{Candidate, Rotation, Target};

/// HTTP/2 keepalive: a ping every 2 s; the connection is dead when one is not answered within
/// [`KEEPALIVE_TIMEOUT`], so a silently cut link is noticed within 5 s (a killed control
/// plane's connection is reset by its kernel and noticed at once).
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(2);
/// How long an HTTP/2 keepalive ping may go unanswered.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest message accepted from the control plane: the largest config plus room for the
/// envelope (tonic's default of 4 MiB is far too small for a large snapshot).
const MAX_MESSAGE_SIZE: usize = MAX_CONFIG_SIZE as usize + 1024 * 1024;
/// Messages queued towards the control plane (hello, acks, heartbeats).
const OUTBOUND_QUEUE: usize = 16;

/// The delays of the sync loop; [`Timing::default`] is production's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Between two heartbeats.
    pub(crate) heartbeat: Duration,
    /// Before reconnecting after a `Refusal`.
    pub(crate) refusal_delay: Duration,
    /// A stream open this long was a stable connection: the backoff starts over after it.
    pub(crate) stable_after: Duration,
    /// The reconnection backoff.
    pub(crate) backoff: Backoff,
    /// Longest TCP connect + TLS handshake + HTTP/2 handshake.
    pub(crate) connect_timeout: Duration,
}

/// Exponential backoff with full jitter and a floor: the n-th consecutive retry waits
/// `floor + random(0 ..= min(base × 2ⁿ, cap - floor))`, so the first waits 100 to 300 ms,
/// the ceiling doubles each time, and no wait exceeds `cap` (1 s: a data plane cut off from
/// every control plane is back within about a second of the link's return; the jitter
/// spreads a fleet's attempts over that second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    floor: Duration,
    base: Duration,
    cap: Duration,
    attempt: u32,
}

/// What to do with a snapshot, given the running runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Older than the running version: refuse it with this reason.
    Reject(String),
    /// The running version and hash: acknowledge, change nothing.
    Unchanged,
    /// The running hash under a newer version: relabel the runtime, no compile.
    Renumber,
    /// Decode, compile and swap.
    Compile,
}

/// The sync client of one node.
pub(crate) struct SyncClient {
    /// The configured control planes, in the configured order (at least one).
    targets: Vec<Target>,
    state: Arc<NodeState>,
    cache: Cache,
    hostname: String,
    labels: BTreeMap<String, String>,
    timing: Timing,
    /// Server names the TLS listeners want a certificate for (on-demand ACME), sent as
    /// `CertificateWanted` while connected.
    wanted: tokio::sync::Mutex<Option<mpsc::Receiver<String>>>,
    /// The enrolled certificate, renewed over the stream; `None` with operator-made files.
    identity: Option<Arc<Identity>>,
}

/// How a sync stream ended.
#[derive(Debug)]
enum SessionEnd {
    /// The control plane refused this node.
    Refused(String),
    /// The connection failed or was lost; `stable` when the stream had been open for a while.
    Failed { error: String, stable: bool },
}

/// Why a connection to the control plane could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// TCP connect (or name resolution) failed.
    #[error("cannot connect to {addr}: {source}")]
    Tcp {
        addr: String,
        source: std::io::Error,
    },
    /// The TLS handshake failed; the source carries rustls' reason.
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
}

// === impl Timing ===

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(10),
            refusal_delay: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

// === impl Backoff ===

impl Backoff {
    /// A backoff waiting at least `floor`, with a first ceiling of `base` above the floor,
    /// doubling, and never more than `cap` in total.
    pub(crate) fn new(floor: Duration, base: Duration, cap: Duration) -> Self {
        Self {
            floor,
            base,
            cap: cap.max(floor),
            attempt: 0,
        }
    }

    /// The wait before the next retry.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_with(random_unit())
    }

    /// The wait before the next retry, with `unit` in `[0, 1]` as the random draw.
    pub(crate) fn next_with(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        (self.floor + ceiling.mul_f64(unit.clamp(0.0, 1.0))).min(self.cap)
    }

    /// Starts over (after a stable connection).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The jitter range of the coming retry.
    fn ceiling(&self) -> Duration {
        let room = self.cap.saturating_sub(self.floor);
        // 2^20 × any sane base is far above any sane cap; stop doubling there.
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(room)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_secs(1),
        )
    }
}

/// A uniform draw in `[0, 1)`. Jitter needs no cryptographic quality: SipHash with the
/// process's random keys, over the clock, is plenty.
fn random_unit() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    // 53 random bits make an exact f64 in [0, 1).
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

// === impl Decision ===

/// The version rule: a snapshot older than the running version is refused; the running hash
/// is not compiled again; anything else is compiled. Before any configuration every snapshot
/// is compiled.
pub(crate) fn decide(running: &Runtime, version: u64, hash: &str) -> Decision {
    if !running.is_loaded() {
        return Decision::Compile;
    }
    if version < running.version() {
        return Decision::Reject(format!(
            "snapshot version {version} is older than the running version {}",
            running.version()
        ));
    }
    if hash == running.hash() {
        if version == running.version() {
            Decision::Unchanged
        } else {
            Decision::Renumber
        }
    } else {
        Decision::Compile
    }
}

// === impl SyncClient ===

impl SyncClient {
    /// A client for the control planes `targets` (at least one), each connection opened with
    /// its target's server name and TLS configuration.
    pub(crate) fn new(
        targets: Vec<Target>,
        state: Arc<NodeState>,
        cache: Cache,
        labels: BTreeMap<String, String>,
        timing: Timing,
    ) -> Self {
        Self {
            targets,
            state,
            cache,
            hostname: hostname(),
            labels,
            timing,
            wanted: tokio::sync::Mutex::new(None),
            identity: None,
        }
    }

    /// Sends the server names `wanted` receives to the control plane (`CertificateWanted`).
    pub(crate) fn with_certificate_requests(self, wanted: mpsc::Receiver<String>) -> Self {
        Self {
            wanted: tokio::sync::Mutex::new(Some(wanted)),
            ..self
        }
    }

    /// Renews `identity` over the streams.
    pub(crate) fn with_identity(mut self, identity: Option<Arc<Identity>>) -> Self {
        self.identity = identity;
        self
    }

    fn runtime(&self) -> &SharedRuntime {
        &self.state.runtime
    }

    /// Syncs until `shutdown` turns true, reconnecting forever: each attempt goes to the next
    /// control plane of the rotation; after a full round of failures it backs off.
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = self.timing.backoff;
        let (seed, _) = self.state.node_id.as_u64_pair();
        let mut rotation = Rotation::new(seed);
        loop {
            let (candidates, errors) = tokio::select! {
                resolved = targets::resolve(&self.targets) => resolved,
                () = stopped(&mut shutdown) => return,
            };
            let count = candidates.len().max(1);
            let (end, peer) = match candidates.get(rotation.pick(count)) {
                Some(candidate) => {
                    let end = tokio::select! {
                        end = self.session(candidate) => end,
                        () = stopped(&mut shutdown) => return,
                    };
                    (end, candidate.label.clone())
                }
                None => (
                    SessionEnd::Failed {
                        error: format!("no control plane address: {}", errors.join("; ")),
                        stable: false,
                    },
                    self.state.control_plane.clone(),
                ),
            };
            let delay = match end {
                SessionEnd::Refused(reason) => {
                    tracing::error!(
                        addr = %peer,
                        retry_in_ms = millis(self.timing.refusal_delay),
                        "control plane refused this data plane: {reason}"
                    );
                    self.disconnected(format!("refused by the control plane: {reason}"));
                    rotation.failed(count);
                    rotation.round_waited();
                    backoff.reset();
                    self.timing.refusal_delay
                }
                SessionEnd::Failed { error, stable } => {
                    if stable {
                        backoff.reset();
                        rotation.stable();
                    }
                    let delay = if rotation.failed(count) {
                        rotation.round_waited();
                        backoff.next_delay()
                    } else {
                        // Another replica is left to try in this round: at once.
                        Duration::ZERO
                    };
                    tracing::warn!(
                        addr = %peer,
                        error = %error,
                        retry_in_ms = millis(delay),
                        "control plane connection failed"
                    );
                    self.disconnected(error);
                    delay
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopped(&mut shutdown) => return,
            }
        }
    }

    fn disconnected(&self, error: String) {
        self.state.update(|s| {
            s.connected = false;
            s.connected_since = None;
            s.connected_to = None;
            s.last_error = Some(error);
        });
    }

    /// One connection and stream to `candidate`, until it ends.
    async fn session(&self, candidate: &Candidate) -> SessionEnd {
        let failed = |error: String| SessionEnd::Failed {
            error,
            stable: false,
        };
        if let Some(identity) = &self.identity
            && let Err(error) = identity.reenrol_if_expired().await
        {
            return failed(error.to_string());
        }
        let channel = match self.connect(candidate).await {
            Ok(channel) => channel,
            Err(error) => return failed(error),
        };
        let mut client = ConfigSyncClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        // The receiver is alive and the queue empty: this cannot fail.
        let _ = tx.try_send(self.hello());
        let mut inbound = match client.sync(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return failed(describe_status(&status)),
        };
        let opened = Instant::now();
        self.state.update(|s| {
            s.connected = true;
            s.connected_since = Some(unix_now());
            s.connected_to = Some(candidate.label.clone());
        });
        tracing::info!(addr = %candidate.label, "connected to control plane");

        let lost = |error: String| SessionEnd::Failed {
            error,
            stable: opened.elapsed() >= self.timing.stable_after,
        };
        // One session at a time: the lock is never contended.
        let mut wanted = self.wanted.lock().await;
        let start = tokio::time::Instant::now() + self.timing.heartbeat;
        let mut heartbeat = tokio::time::interval_at(start, self.timing.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Renewal: the key of the request in flight, and when to ask next.
        let mut pending_key: Option<String> = None;
        let mut renew_due = self.renewal_deadline(false);
        loop {
            let outgoing = tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => match message.kind {
                        Some(control_plane_message::Kind::Snapshot(snapshot)) => {
                            data_plane_message::Kind::Ack(self.apply(snapshot).await)
                        }
                        Some(control_plane_message::Kind::Refusal(refusal)) => {
                            return SessionEnd::Refused(refusal.reason);
                        }
                        Some(control_plane_message::Kind::CertificateRenewed(renewed)) => {
                            renew_due = self.renewed(pending_key.take(), renewed);
                            continue;
                        }
                        Some(control_plane_message::Kind::RenewRequested(_)) => {
                            if self.identity.is_none() {
                                tracing::warn!("the control plane asked for a certificate renewal, but this node's cluster certificate is operator-made (no --cluster-bootstrap-token): replace its files");
                            } else if pending_key.is_none() {
                                tracing::info!("the control plane asked for a certificate renewal now");
                                renew_due = Some(tokio::time::Instant::now());
                            }
                            continue;
                        }
                        None => {
                            tracing::debug!("ignoring an empty or unknown message from the control plane");
                            continue;
                        }
                    },
                    Ok(None) => return lost("the control plane closed the stream".to_owned()),
                    Err(status) => return lost(describe_status(&status)),
                },
                Some(server_name) = next_wanted(&mut wanted) => {
                    data_plane_message::Kind::CertificateWanted(pb::CertificateWanted { server_name })
                }
                () = sleep_until_opt(renew_due), if pending_key.is_none() => {
                    let Some(identity) = &self.identity else { continue };
                    match identity.new_request() {
                        Ok((key, csr)) => {
                            tracing::info!("renewing the cluster certificate");
                            pending_key = Some(key);
                            data_plane_message::Kind::RenewCertificate(pb::RenewCertificate {
                                csr: csr.into(),
                            })
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot renew the cluster certificate");
                            METRICS.renewal(false);
                            renew_due = self.renewal_deadline(true);
                            continue;
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    let running = self.runtime().load();
                    data_plane_message::Kind::Heartbeat(pb::Heartbeat {
                        config_version: running.version(),
                        config_hash: running.hash().to_owned(),
                    })
                }
            };
            let message = pb::DataPlaneMessage {
                kind: Some(outgoing),
            };
            if tx.send(message).await.is_err() {
                return lost("the sync stream closed".to_owned());
            }
        }
    }

    /// When to ask for a renewal: at the identity's renewal point, or after a retry delay
    /// when the last attempt failed (`retry`); `None` without an enrolled identity.
    fn renewal_deadline(&self, retry: bool) -> Option<tokio::time::Instant> {
        let identity = self.identity.as_ref()?;
        let now = unix_now();
        let wait = if retry {
            identity.retry_delay(now as i64)
        } else {
            Duration::from_secs_f64((identity.renew_at() as f64 - now).max(0.0))
        };
        Some(tokio::time::Instant::now() + wait)
    }

    /// Installs a renewed certificate (or logs the refusal); returns the next renewal time.
    fn renewed(
        &self,
        key: Option<String>,
        renewed: pb::CertificateRenewed,
    ) -> Option<tokio::time::Instant> {
        let identity = self.identity.as_ref()?;
        let outcome = match key {
            None => Err("a renewed certificate arrived that was not asked for".to_owned()),
            Some(_) if !renewed.error.is_empty() => Err(renewed.error),
            Some(key) => identity.install(&key, &renewed.certificate, &renewed.ca_bundle),
        };
        match outcome {
            Ok(not_after) => {
                METRICS.renewal(true);
                tracing::info!(not_after, "cluster certificate renewed");
                self.renewal_deadline(false)
            }
            Err(error) => {
                METRICS.renewal(false);
                tracing::warn!(%error, "cluster certificate renewal failed; the current certificate stays");
                self.renewal_deadline(true)
            }
        }
    }

    /// Opens the HTTP/2 connection to `candidate`: TCP, our TLS, keepalive.
    async fn connect(&self, candidate: &Candidate) -> Result<Channel, String> {
        let target = self
            .targets
            .get(candidate.target)
            .ok_or_else(|| format!("no control plane target {}", candidate.target))?;
        // The scheme is `http` on purpose: tonic refuses an `https` URI unless it does the TLS
        // itself, and here the connector below does it (with rustls' errors intact). The URI
        // only names the authority; the connector dials the resolved address.
        let endpoint = Endpoint::from_shared(format!("http://{}", candidate.socket))
            .map_err(|e| format!("invalid control plane address {}: {e}", candidate.label))?
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_timeout(self.timing.connect_timeout);
        let tls = target.tls.clone();
        let socket = candidate.socket;
        let label = candidate.label.clone();
        let server_name = target.server_name.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            // The configuration current now: a rotated certificate is used from here on.
            let config = tls.current();
            let label = label.clone();
            let server_name = server_name.clone();
            async move {
                connect_tls(socket, &label, server_name, config)
                    .await
                    .map(TokioIo::new)
            }
        });
        endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| {
                if timed_out(&e) {
                    format!(
                        "cannot connect to {} within {} ms (TCP, TLS and HTTP/2 handshakes)",
                        candidate.label,
                        self.timing.connect_timeout.as_millis()
                    )
                } else {
                    // tonic's own text ("transport error") says nothing its sources do not.
                    e.source().map_or_else(|| e.to_string(), error_chain)
                }
            })
    }

    fn hello(&self) -> pb::DataPlaneMessage {
        let running = self.runtime().load();
        pb::DataPlaneMessage {
            kind: Some(data_plane_message::Kind::Hello(pb::Hello {
                node_id: self.state.node_id.to_string(),
                hostname: self.hostname.clone(),
                version: self.state.version.clone(),
                labels: self
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                config_version: running.version(),
                config_hash: running.hash().to_owned(),
                warnings: self.state.sync_state().warnings,
            })),
        }
    }

    /// Applies a snapshot (or refuses it) and returns the acknowledgement.
    async fn apply(&self, snapshot: pb::Snapshot) -> pb::Ack {
        let started = Instant::now();
        let version = snapshot.version;
        let hash = snapshot.hash.clone();
        let running = self.runtime().load_full();
        let ack = |status: ack::Status, error: String, warnings: Vec<String>| pb::Ack {
            version,
            hash: hash.clone(),
            status: status.into(),
            error,
            warnings,
        };
        let rejected = |error: String| {
            tracing::warn!(version, error = %error, hash = %hash, "snapshot rejected");
            ack(ack::Status::Rejected, error, Vec::new())
        };

        let runtime = match decide(&running, version, &hash) {
            Decision::Reject(reason) => return rejected(reason),
            Decision::Unchanged => {
                tracing::debug!(version, hash = %hash, "snapshot already running");
                self.state.update(|s| {
                    s.source = Some(ConfigSource::ControlPlane);
                    s.last_sync = Some(unix_now());
                });
                let warnings = self.state.sync_state().warnings;
                return ack(ack::Status::Applied, String::new(), warnings);
            }
            Decision::Renumber => Ok(running.with_version(version)),
            Decision::Compile => Err(snapshot.clone()),
        };
        drop(running);
        // Decode, compile and prepare every part (plugin plan, TLS configs, balancer rings,
        // upstream TLS, stream router) off the async threads; swap only if all succeed.
        let shared = self.state.runtime.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let runtime = match runtime {
                Ok(renumbered) => renumbered,
                Err(message) => {
                    let config = snapshot::decode(&message).map_err(|e| e.to_string())?;
                    Runtime::compile(message.version, message.hash, config)
                        .map_err(|e| e.to_string())?
                }
            };
            let applied = shared.apply(Arc::new(runtime))?;
            // Freeing a large runtime (thousands of keys) is work too: not on an async
            // thread. Requests still holding it keep it alive; the last one frees it.
            drop(applied.previous);
            Ok::<_, String>(applied.warnings)
        })
        .await;
        let warnings = match applied {
            Ok(Ok(warnings)) => warnings,
            Ok(Err(error)) => return rejected(error),
            Err(join) => return rejected(format!("internal error while compiling: {join}")),
        };
        for warning in &warnings {
            tracing::warn!(version, %warning, "snapshot applied with a problem made safe");
        }
        self.state.update(|s| {
            s.source = Some(ConfigSource::ControlPlane);
            s.last_sync = Some(unix_now());
            s.warnings = warnings.clone();
        });
        tracing::info!(
            version,
            hash = %hash,
            took_ms = millis(started.elapsed()),
            warnings = warnings.len(),
            "snapshot applied"
        );
        let reply = ack(ack::Status::Applied, String::new(), warnings);
        let cache = self.cache.clone();
        match tokio::task::spawn_blocking(move || cache.store(&snapshot)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(
                path = %self.cache.snapshot_path().display(),
                %error,
                "cannot write the snapshot cache; the running configuration is not affected"
            ),
            Err(join) => tracing::warn!(%join, "cannot write the snapshot cache"),
        }
        reply
    }
}

/// The next server name wanted; pending forever without a queue (its sender lives as long
/// as the listeners).
async fn next_wanted(wanted: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match wanted {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// TCP connect to `socket` (named `label` in errors), then the TLS handshake with `config`.
pub(crate) async fn connect_tls(
    socket: SocketAddr,
    label: &str,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let addr = label;
    let tcp = TcpStream::connect(socket)
        .await
        .map_err(|source| ConnectError::Tcp {
            addr: addr.to_owned(),
            source,
        })?;
    // Small frames (acks, pings) should not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|source| ConnectError::Tls {
            addr: addr.to_owned(),
            source,
        })
}

/// An error and its sources, `: `-separated, without repeating a message a wrapper already
/// printed.
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    append_sources(&mut out, error.source());
    out
}

/// Appends `first` and its sources to `out`, skipping texts `out` already holds.
fn append_sources(out: &mut String, first: Option<&(dyn StdError + 'static)>) {
    let mut next = first;
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
}

/// Whether the connect timeout, rather than a refusal, ended the attempt.
fn timed_out(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(cause) = next {
        if cause.is::<tokio::time::error::Elapsed>()
            || cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        next = cause.source();
    }
    false
}

/// A gRPC status as one line: its code and message, and the transport error behind it.
pub(crate) fn describe_status(status: &tonic::Status) -> String {
    let mut out = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    };
    append_sources(&mut out, status.source());
    out
}

/// Completes at `deadline`, never without one.
async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Whole milliseconds, as a number log formats print as one (a `u128` becomes a string in
/// JSON logs).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// This machine's name, for the control plane's registry.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}
