//! The Gatehouse control plane.
//!
//! - [`config`]: settings from flags, `GATEHOUSE_*` variables and a TOML file;
//! - `store`: the PostgreSQL store (migrations, generic entity CRUD, the config version, the
//!   data-plane registry);
//! - `admin`: the Kong-compatible Admin API (axum), with `/clustering/*`;
//! - `snapshot`: LISTENs for config changes and builds each version's snapshot once;
//! - `cluster`: the config-sync listener (gRPC over mutual TLS) serving data planes;
//! - `status`: the status listener (`/status`, `/status/ready`);
//! - [`pki`]: the `pki` subcommand, which writes the cluster CA and node certificates;
//! - [`keyring`]: private keys encrypted at rest (AES-256-GCM envelope) and its CLI;
//! - [`dns_update`]: RFC 2136 dynamic DNS updates signed with TSIG (ACME DNS-01 records).
//! - `sources`: watched certificate directories (`--cert-source`) kept as certificate rows.
//!
//! Every write to the store runs in one transaction that also bumps the config version and
//! sends `NOTIFY gatehouse_config, '<version>'`; a failed write changes nothing.
//!
//! `serve` logs one line per listener once it is bound, with the address (port 0 picks one):
//! `cluster listener listening addr=IP:PORT`, `status listener listening addr=IP:PORT`, then
//! `admin API listening addr=IP:PORT` last, when everything accepts connections.

pub mod config;
pub mod credentials;
pub mod declarative;
pub mod dns_update;
pub mod keyring;
pub mod logging;
pub mod pki;
pub mod tokens;

// The fuzz targets' entry points (fuzz/, outside the workspace); not an API.
#[doc(hidden)]
pub mod fuzzing;

mod acme;
mod admin;
mod cluster;
mod error;
mod expiry;
mod metrics;
mod secrets;
mod snapshot;
mod sources;
mod stapling;
mod status;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cluster::Node;
use gatehouse_shared::cluster::{DEFAULT_RELOAD_INTERVAL, ReloadingConfig};

use crate::config::{ConfigError, Settings};
use crate::store::{Store, unix_now};

/// Longest wait at shutdown for recording that this node's data planes are disconnected.
const SHUTDOWN_RECORD_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors that stop the control plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be reached or migrated.
    #[error("database: {0}")]
    Database(String),
    /// A listener could not be bound or served.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A listener address cannot be bound.
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Listen {
        /// Which listener (`--admin-listen`, ...).
        listener: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A command (`cluster-token ...`) failed.
    #[error("{0}")]
    Command(String),
}

/// Applies the database migrations and returns.
pub async fn migrate(settings: &Settings) -> Result<(), Error> {
    let store = Store::connect(settings.require_database_url()?, 1, Vec::new())?;
    let applied = store.migrate().await?;
    tracing::info!(applied, "migrations are up to date");
    Ok(())
}

/// Migrates the database, then serves the Admin API, the cluster listener (when cluster
/// certificates are set) and the status listener until SIGINT or SIGTERM.
pub async fn serve(settings: Settings) -> Result<(), Error> {
    // Bad cluster certificate files are a configuration error: refuse them before anything.
    let tls = cluster::load_tls(&settings.cluster)?;
    let database_url = settings.require_database_url()?.to_owned();
    let keyring = match settings.keyring.clone() {
        Some(source) => keyring::Keyring::load(source).map_err(ConfigError::new)?,
        None => keyring::Keyring::disabled(),
    };
    let store = Arc::new(
        Store::connect(
            &database_url,
            settings.database_max_connections,
            settings.plugins.clone(),
        )?
        .with_keyring(keyring)
        .with_secrets(secrets::Secrets::new(settings.secrets.grace)),
    );
    let applied = store.migrate().await?;
    tracing::info!(applied, "migrations are up to date");
    match store.keyring_startup().await?.as_str() {
        "" => tracing::warn!(
            "no keyring configured (--keyring-key-file): private keys are stored in the \
             database in clear"
        ),
        line => tracing::info!("{line}"),
    }

    check_admin_exposure(&settings)?;
    // Bad Admin API certificate files are a configuration error too.
    let admin_tls = settings
        .admin_tls
        .clone()
        .map(|files| ReloadingConfig::https(files).map(Arc::new))
        .transpose()
        .map_err(|e| Error::Config(ConfigError::new(format!("Admin API TLS: {e}"))))?;
    let admin_listener = bind("--admin-listen", settings.admin_listen).await?;
    let cluster_listener = match &tls {
        Some(_) => Some(bind("--cluster-listen", settings.cluster.listen).await?),
        None => None,
    };
    let status_listener = match settings.status_listen {
        Some(addr) => Some(bind("--status-listen", addr).await?),
        None => None,
    };

    let stats = Arc::new(snapshot::Stats::default());
    let cluster_addr = cluster_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    // The builder runs only for the cluster listener: without it nobody takes snapshots.
    let latest = cluster_listener
        .as_ref()
        .map(|_| snapshot::spawn(store.clone(), database_url.clone(), stats.clone()));
    let node = Arc::new(Node::new(stats, latest, cluster_addr));
    tracing::info!(node_id = %node.id, hostname = %node.hostname, "control plane node");
    let dns = settings
        .acme_dns
        .as_ref()
        .map(|dns| dns.updater())
        .transpose()
        .map_err(|e| ConfigError::new(e.to_string()))?;
    secrets::spawn_refresh(store.clone(), settings.secrets.refresh_interval);
    let acme = acme::Acme::new(store.clone(), node.id, settings.acme.clone(), dns);
    acme.spawn();
    let _ = node.acme.set(acme);
    sources::spawn(store.clone(), node.id, &settings.cert_sources)?;
    expiry::spawn(store.clone(), settings.cert_expiry);
    stapling::spawn(store.clone(), node.id, settings.ocsp_stapling_interval);

    let (stop, shutdown) = watch::channel(false);
    let signal = shutdown_signal();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        signal.await;
        let _ = on_signal.send(true);
    });
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(listener), Some((tls, ca))) = (cluster_listener, tls) {
        tracing::info!(
            addr = %listener.local_addr()?,
            mtls = %settings.cluster.mtls,
            enrolment = ca.is_some(),
            "cluster listener listening"
        );
        tasks.spawn(cluster::serve(
            listener,
            tls,
            ca,
            node.clone(),
            store.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(listener) = status_listener {
        tracing::info!(addr = %listener.local_addr()?, "status listener listening");
        let cluster_cert = settings.cluster.files.as_ref().map(|f| f.cert.clone());
        let app = status::router(store.clone(), node.clone(), cluster_cert);
        let signal = stopped(shutdown.clone());
        tasks.spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::error!(%error, "status listener failed");
            }
        });
    }
    let addr = admin_listener.local_addr()?;
    let app = admin::router(admin::State::new(store.clone(), node.clone(), &settings));
    let served = match admin_tls {
        Some(tls) => {
            tokio::spawn(tls.clone().watch(DEFAULT_RELOAD_INTERVAL));
            tracing::info!(%addr, tls = true, auth = settings.admin_auth, "admin API listening");
            admin::tls::serve(admin_listener, tls, app, shutdown.clone()).await;
            Ok(())
        }
        None => {
            tracing::info!(%addr, tls = false, auth = settings.admin_auth, "admin API listening");
            axum::serve(
                admin_listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stopped(shutdown.clone()))
            .await
        }
    };
    tracing::info!("admin API stopped");
    // Also when the Admin API failed without a signal: stop the other listeners.
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    if node.latest.is_some() {
        // This node's streams are closed: say so now rather than when their leases expire.
        match tokio::time::timeout(
            SHUTDOWN_RECORD_TIMEOUT,
            store.data_planes_disconnected_from(node.id, unix_now()),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %error.detail(), "cannot record the data planes as disconnected");
            }
            Err(_) => tracing::warn!("timed out recording the data planes as disconnected"),
        }
    }
    if settings.ocsp_stapling_interval.is_some() {
        // Another replica takes stapling over at its next pass.
        let release = store.lease_release(store::Lease::OcspStapling, node.id);
        match tokio::time::timeout(SHUTDOWN_RECORD_TIMEOUT, release).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %error.detail(), "cannot release the OCSP stapling lease");
            }
            Err(_) => tracing::warn!("timed out releasing the OCSP stapling lease"),
        }
    }
    if !settings.cert_sources.dirs.is_empty() {
        // Another replica watching the same sources takes them over at its next pass.
        match tokio::time::timeout(SHUTDOWN_RECORD_TIMEOUT, store.cert_source_release(node.id))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %error.detail(), "cannot release the certificate source leases");
            }
            Err(_) => tracing::warn!("timed out releasing the certificate source leases"),
        }
    }
    served?;
    Ok(())
}

/// Refuses an Admin API without authentication on an address other hosts can reach, unless
/// the operator said `--admin-insecure-no-auth`; warns about tokens sent in clear.
fn check_admin_exposure(settings: &Settings) -> Result<(), Error> {
    let addr = settings.admin_listen;
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if !settings.admin_auth {
        if !settings.admin_insecure_no_auth {
            return Err(Error::Config(ConfigError::new(format!(
                "--admin-listen {addr} is not a loopback address, and the Admin API has no \
                 authentication: anyone who reaches it could change every certificate, key and \
                 route of the fleet. Create a token (gatehouse-cp admin-token create --name NAME \
                 --role read-write) and set --admin-auth on, or pass --admin-insecure-no-auth \
                 to accept the risk"
            ))));
        }
        tracing::warn!(
            %addr,
            "the Admin API serves a non-loopback address WITHOUT authentication \
             (--admin-insecure-no-auth)"
        );
    } else if settings.admin_tls.is_none() {
        tracing::warn!(
            %addr,
            "the Admin API serves a non-loopback address over plain HTTP: bearer tokens \
             travel in clear; set --admin-ssl-cert and --admin-ssl-cert-key"
        );
    }
    Ok(())
}

/// Binds a listener, naming it and the address when that fails.
async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen {
            listener,
            addr,
            source,
        })
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Resolves at SIGINT or SIGTERM. SIGTERM is caught from the call on (not from the first
/// poll), so a signal sent as soon as the listeners are logged still shuts down gracefully.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match term {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
    }
}
