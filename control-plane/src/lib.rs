//! The Gatehouse control plane.
//!
//! - [`config`]: settings from flags, `GATEHOUSE_*` variables and a TOML file;
//! - `store`: the PostgreSQL store (migrations, generic entity CRUD, the config version);
//! - `admin`: the Kong-compatible Admin API (axum);
//! - [`pki`]: the `pki` subcommand, which writes the cluster CA and node certificates.
//!
//! Every write to the store runs in one transaction that also bumps the config version and
//! sends `NOTIFY gatehouse_config, '<version>'`; a failed write changes nothing.

pub mod config;
pub mod logging;
pub mod pki;

mod admin;
mod error;
mod store;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{ConfigError, Settings};
use crate::store::Store;

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
}

/// Applies the database migrations and returns.
pub async fn migrate(settings: &Settings) -> Result<(), Error> {
    let store = Store::connect(settings.require_database_url()?, 1, Vec::new())?;
    let applied = store.migrate().await?;
    tracing::info!(applied, "migrations are up to date");
    Ok(())
}

/// Migrates the database, then serves the Admin API until SIGINT or SIGTERM.
pub async fn serve(settings: Settings) -> Result<(), Error> {
    let store = Store::connect(
        settings.require_database_url()?,
        settings.database_max_connections,
        settings.plugins.clone(),
    )?;
    let applied = store.migrate().await?;
    tracing::info!(applied, "migrations are up to date");

    let listener = TcpListener::bind(settings.admin_listen).await?;
    let addr = listener.local_addr()?;
    let app = admin::router(admin::State::new(Arc::new(store), &settings));
    tracing::info!(%addr, "admin API listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("admin API stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
