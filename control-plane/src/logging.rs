//! Structured logging with `tracing`. Text to stderr (no colours unless stderr is a terminal) or
//! JSON lines. Nothing logged by the control plane carries a private key: entity bodies are never
//! logged, and database errors are logged by code and constraint, not by their detail text
//! (which can quote values).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

/// Caps the target that would log SQL parameters.
const QUIET_QUERIES: &str = "tokio_postgres::query=info";

/// Installs the global subscriber. Safe to call once per process.
pub fn init(settings: &LogSettings) {
    let filter = match &settings.level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    }
    // tokio-postgres logs every statement's parameters at debug level, and those parameters
    // include certificate rows with their private keys. Never let them through, whatever the
    // requested level.
    .add_directive(QUIET_QUERIES.parse().unwrap_or_default());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if settings.json {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    if let Err(error) = result {
        eprintln!("logging already initialised: {error}");
    }
}
