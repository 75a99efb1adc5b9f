//! `gatehouse-dp`: the Gatehouse data plane, as a library the binary and the tests drive.
//!
//! The data plane receives configuration snapshots from the control plane and (from the proxy
//! issue on) proxies traffic with them. This crate holds:
//!
//! - [`config`]: settings (flags, `GATEHOUSE_*` variables, TOML file);
//! - [`logging`]: the `tracing` subscriber;
//! - [`runtime`]: a snapshot compiled into immutable lookups ([`runtime::Runtime`]) and the
//!   lock-free holder of the current one ([`runtime::SharedRuntime`]);
//! - [`tls`]: TLS termination for the proxy listeners (certificate by SNI from the current
//!   runtime, default certificate, session resumption);
//! - [`router`]: Kong's route matching and priority, compiled once per runtime
//!   ([`router::Router`]), and the upstream path rules;
//! - [`proxy`]: the plain and TLS proxy listeners and the hyper service that routes each
//!   request and forwards it to its upstream;
//! - the sync client (gRPC over mutual TLS, reconnect with backoff), the snapshot cache and the
//!   status listener, started together by [`DataPlane::start`].
//!
//! Start order: the cluster TLS files are checked, the cache directory is opened (node id),
//! the cached snapshot is loaded if it compiles, the proxy listeners are bound (each logs
//! `proxy listener listening addr=... tls=...`), the status listener is bound, then the sync
//! client connects. With the control plane away the data plane serves the cached
//! configuration indefinitely.
//!
//! No Cargo features.

#![warn(missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use gatehouse_shared::cluster::{ClusterTlsError, DEFAULT_RELOAD_INTERVAL, ReloadingConfig};

pub mod config;
pub mod logging;
pub mod proxy;
pub mod router;
pub mod runtime;
pub mod tls;

// The fuzz targets' entry points (fuzz/, outside the workspace); not an API.
#[doc(hidden)]
pub mod fuzzing;

mod acme;
mod cache;
mod enrol;
mod metrics;
mod plugins;
mod revocation;
mod status;
mod stream;
mod sync;
#[cfg(test)]
mod test_support;
mod upstream;

pub use status::{ConfigSource, ControlPlaneStatus, StatusReport};

use crate::cache::Cache;
use crate::config::Settings;
use crate::runtime::SharedRuntime;
use crate::status::NodeState;
use crate::sync::targets::Target;
use crate::sync::{SyncClient, Timing};

/// Why the data plane cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Enrolment with `--cluster-bootstrap-token` failed.
    #[error("enrolment: {0}")]
    Enrol(#[from] enrol::EnrolError),
    /// The cluster certificate, key or CA cannot be used (a configuration problem).
    #[error("cluster TLS: {0}")]
    ClusterTls(#[from] ClusterTlsError),
    /// A proxy listener cannot be bound, or its TLS cannot be set up.
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
    /// The status listener cannot be bound.
    #[error("cannot listen on {addr} (status listener): {source}")]
    StatusListen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A started data plane: the proxy listeners, the sync client, the status listener and the
/// certificate reloader run in the background until [`DataPlane::shutdown`] (which stops
/// accepting and drains the open connections).
#[derive(Debug)]
pub struct DataPlane {
    state: Arc<NodeState>,
    status_addr: SocketAddr,
    proxy_addrs: Vec<(SocketAddr, bool)>,
    stream_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    reloaders: Vec<JoinHandle<()>>,
    /// Connections still open on the proxy listeners.
    drain: Arc<proxy::Drain>,
    drain_timeout: std::time::Duration,
}

// === impl Error ===

impl Error {
    /// Whether the operator must fix the settings or files (exit code `EX_USAGE`).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::ClusterTls(_)
                | Self::Enrol(_)
                | Self::Proxy(proxy::ProxyError::Tls(_) | proxy::ProxyError::TrustedCa { .. })
        )
    }
}

// === impl DataPlane ===

impl DataPlane {
    /// Starts the data plane. Fails on unusable cluster TLS files, unusable `--ssl-cert` files,
    /// or a proxy or status address that cannot be bound; a bad cached snapshot is refused
    /// whole and logged, and an unusable cache directory is logged loudly (the node serves
    /// without a cache, its node id in memory).
    pub async fn start(settings: Settings) -> Result<Self, Error> {
        Self::start_with(settings, Timing::default()).await
    }

    async fn start_with(settings: Settings, timing: Timing) -> Result<Self, Error> {
        let cluster = &settings.cluster;
        let cache = Cache::new(&settings.cache_dir).with_key_file(&settings.cache_key);
        let node_id = match cache.open_and_node_id() {
            Ok((node_id, problem)) => {
                if let Some(problem) = problem {
                    tracing::warn!("{problem}");
                }
                node_id
            }
            Err(error) => {
                // Serving matters more than the cache: keep going with a node id in memory.
                // The control plane will list this node under a new id after each restart,
                // and a restart without a control plane has no configuration to serve.
                let node_id = Uuid::new_v4();
                tracing::error!(
                    cache_dir = %settings.cache_dir.display(),
                    %error,
                    %node_id,
                    "CACHE DIRECTORY UNUSABLE: serving without a cache; the node id lives in \
                     memory only and no snapshot will be kept for a restart"
                );
                node_id
            }
        };
        tracing::info!(%node_id, cache_dir = %cache.dir().display(), "data plane starting");
        // An enrolling node needs its certificate before any cluster connection.
        let identity = match &cluster.bootstrap_token {
            Some(token) => Some(Arc::new(
                enrol::Identity::load_or_enrol(cluster, &cluster.files.cert, node_id, token)
                    .await?,
            )),
            None => None,
        };
        // One TLS configuration per distinct server name (one in `shared` mode or with
        // --cluster-server-name), each reloaded when the files change.
        let mut configs: Vec<(String, Arc<ReloadingConfig<rustls::ClientConfig>>)> = Vec::new();
        let mut targets = Vec::new();
        for cp in &cluster.control_planes {
            let name = cluster.tls_server_name_of(cp);
            let server_name = ServerName::try_from(name)
                .map(|name| name.to_owned())
                .map_err(|_| ClusterTlsError::ServerName {
                    name: name.to_owned(),
                })?;
            let tls = match configs.iter().find(|(n, _)| n == name) {
                Some((_, tls)) => tls.clone(),
                None => {
                    // An enrolled node verifies control planes with its cached bundle,
                    // which renewals keep up to date (CA rotation).
                    let mut files = cluster.files.clone();
                    if let Some(identity) = &identity {
                        files.ca = Some(identity.trust_path().to_owned());
                    }
                    let tls = Arc::new(ReloadingConfig::client(cluster.mode, files, name)?);
                    configs.push((name.to_owned(), tls.clone()));
                    if let Some(identity) = &identity {
                        identity.watch(tls.clone());
                    }
                    tls
                }
            };
            targets.push(Target {
                addr: cp.addr.clone(),
                server_name,
                tls,
            });
        }

        let runtime = Arc::new(SharedRuntime::default());
        let state = Arc::new(NodeState::new(
            node_id,
            settings.advertise_version.clone(),
            cluster.control_plane.clone(),
            runtime.clone(),
        ));
        // ACME first: a snapshot with a malformed challenge is refused before anything else
        // is built for it.
        let (on_demand, wanted) = acme::OnDemand::channel(acme::OnDemandLimits::default());
        let acme = Arc::new(acme::Acme::new(on_demand));
        let acme_part: Arc<dyn runtime::Part> = acme.clone();
        runtime.register(Arc::downgrade(&acme_part));
        let route_metrics: Arc<dyn runtime::Part> = metrics::ROUTES.clone();
        runtime.register(Arc::downgrade(&route_metrics));
        metrics::METRICS.cluster_cert_file(cluster.files.cert.clone());
        metrics::consumer_label(settings.metrics_consumer_label);
        let proxy = proxy::Listeners::bind(
            &settings.proxy_listen,
            &settings.proxy_ssl_listen,
            &settings.proxy,
            runtime.clone(),
            acme.clone(),
        )
        .await?;
        let proxy_addrs = proxy.addrs();
        let drain = proxy.drain();
        let stream = stream::Listeners::bind(
            &settings.stream_listen,
            &settings.proxy,
            runtime.clone(),
            drain.clone(),
            acme,
        )
        .await?;
        let stream_addrs = stream.addrs();
        // After the listeners (their parts are prepared with it), before they serve.
        load_cache(&cache, &state).await;

        let (listener, status_addr) =
            status::bind(settings.status_listen)
                .await
                .map_err(|source| Error::StatusListen {
                    addr: settings.status_listen,
                    source,
                })?;

        let (stop, stopped) = watch::channel(false);
        let reloaders = configs
            .iter()
            .map(|(_, tls)| tokio::spawn(tls.clone().watch(DEFAULT_RELOAD_INTERVAL)))
            .collect();
        let status = tokio::spawn(status::serve(listener, state.clone(), stopped.clone()));
        let mut tasks = proxy.serve(stopped.clone());
        tasks.extend(stream.serve(stopped.clone()));
        let client = SyncClient::new(
            targets,
            state.clone(),
            cache,
            settings.labels.clone(),
            timing,
        )
        .with_certificate_requests(wanted)
        .with_identity(identity);
        let sync = tokio::spawn(client.run(stopped));
        tasks.extend([status, sync]);
        Ok(Self {
            state,
            status_addr,
            proxy_addrs,
            stream_addrs,
            stop,
            tasks,
            reloaders,
            drain,
            drain_timeout: settings.drain_timeout,
        })
    }

    /// This node's id (kept in the cache directory).
    pub fn node_id(&self) -> Uuid {
        self.state.node_id
    }

    /// The bound address of the status listener.
    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    /// The bound proxy listener addresses, each with whether it is the TLS listener.
    pub fn proxy_addrs(&self) -> &[(SocketAddr, bool)] {
        &self.proxy_addrs
    }

    /// The bound stream listener addresses.
    pub fn stream_addrs(&self) -> &[SocketAddr] {
        &self.stream_addrs
    }

    /// The current runtime holder (the proxy loads from it).
    pub fn runtime(&self) -> &Arc<SharedRuntime> {
        &self.state.runtime
    }

    /// What `GET /status` reports now.
    pub fn status(&self) -> StatusReport {
        self.state.report()
    }

    /// Stops the proxy listeners, the sync client and the status listener, then drains: open
    /// connections finish the requests in flight (HTTP/1.1 connections close after their
    /// response, HTTP/2 ones get `GOAWAY`) for up to `--drain-timeout`.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        for reloader in &self.reloaders {
            reloader.abort();
        }
        let open = self.drain.open_count();
        if open > 0 {
            tracing::info!(
                connections = open,
                timeout_ms = self.drain_timeout.as_millis() as u64,
                "draining proxy connections"
            );
            match self.drain.wait(self.drain_timeout).await {
                0 => tracing::info!("proxy connections drained"),
                left => tracing::warn!(connections = left, "drain timed out; closing connections"),
            }
        }
    }
}

/// Loads the cached snapshot into `state`, every part prepared as for a snapshot from the
/// control plane; a bad cache (or one some part cannot build) is reported and ignored.
async fn load_cache(cache: &Cache, state: &NodeState) {
    let reader = cache.clone();
    let shared = state.runtime.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let Some(cached) = reader.load().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let (version, hash) = (cached.runtime.version(), cached.runtime.hash().to_owned());
        let applied = shared
            .apply(Arc::new(cached.runtime))
            .map_err(|reason| format!("version {version} cannot be applied: {reason}"))?;
        Ok::<_, String>(Some((version, hash, cached.written_at, applied.warnings)))
    })
    .await;
    match loaded {
        Ok(Ok(Some((version, hash, written_at, warnings)))) => {
            tracing::info!(version, %hash, "loaded cached snapshot");
            for warning in &warnings {
                tracing::warn!(version, %warning, "cached snapshot applied with a problem made safe");
            }
            state.update(|s| {
                s.source = Some(ConfigSource::Cache);
                s.last_sync = written_at;
                s.warnings = warnings;
            });
        }
        Ok(Ok(None)) => {
            tracing::info!("no cached snapshot; waiting for the control plane");
        }
        Ok(Err(error)) => tracing::warn!(
            %error,
            "cached snapshot refused, nothing of it is used; waiting for the control plane"
        ),
        Err(join) => tracing::warn!(%join, "ignoring the cached snapshot"),
    }
}

/// Completes when `shutdown` turns true (or its sender is gone). The guard `wait_for`
/// returns is dropped here: it is not `Send`, and select arms would otherwise hold it.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Runs the data plane until `signal` completes, then shuts it down.
pub async fn run(settings: Settings, signal: impl Future<Output = ()>) -> Result<(), Error> {
    let data_plane = DataPlane::start(settings).await?;
    signal.await;
    tracing::info!("shutting down");
    data_plane.shutdown().await;
    Ok(())
}
