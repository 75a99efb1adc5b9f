//! Structured logging with `tracing`. Text to stderr (no colours unless stderr is a terminal) or
//! JSON lines. Nothing logged by the data plane carries a private key: snapshots and entity
//! bodies are never logged, and compile errors name entities by id with fixed texts for key
//! problems.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

/// Installs the global subscriber. Safe to call once per process; a second call reports the
/// subscriber already installed on stderr and changes nothing.
pub fn init(settings: &LogSettings) {
    let filter = match &settings.level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
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
