//! A cluster TLS configuration that is rebuilt when its files change on disk, so a rotated
//! certificate is used by new connections without a restart. Established connections keep
//! the configuration they were accepted with.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::{ClientConfig, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::time::MissedTickBehavior;

use super::tls::{
    ClusterMtls, ClusterTlsError, ClusterTlsFiles, client_config, https_server_config,
    server_config_with,
};

/// How often the CP and the DPs look at their cluster certificate files by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The shortest polling period [`ReloadingConfig::watch`] accepts.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(10);

/// Builds a configuration from the files.
type Build<T> = Box<dyn Fn() -> Result<Arc<T>, ClusterTlsError> + Send + Sync>;

/// A configuration (typically a rustls `ServerConfig` or `ClientConfig`) built from files and
/// rebuilt when their content changes.
///
/// [`current`](Self::current) is lock-free; take it once per new connection. A change is
/// detected by content (SHA-256 of each file), so same-size rewrites within one mtime tick
/// and atomic renames are both seen. When the new files are bad (half-written, mismatched,
/// deleted), the current configuration stays and the error is returned once for that
/// content; a later change is tried again.
pub struct ReloadingConfig<T> {
    current: ArcSwap<T>,
    paths: Vec<PathBuf>,
    build: Build<T>,
    /// What the files are, for logs (`cluster certificate`).
    label: &'static str,
    /// Content of the watched files when the last build started, successful or not.
    seen: Mutex<Fingerprint>,
}

/// SHA-256 of each watched file, `None` for a file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<Option<[u8; 32]>>);

// === impl ReloadingConfig ===

impl<T> ReloadingConfig<T> {
    /// Builds the first configuration with `build`, which reads `paths` (and nothing else
    /// that changes). Fails when the first build fails.
    pub fn new(
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<Arc<T>, ClusterTlsError> + Send + Sync + 'static,
    ) -> Result<Self, ClusterTlsError> {
        // The fingerprint is taken before building: a change made while the build reads the
        // files then shows up as a difference at the next check.
        let seen = Fingerprint::of(&paths);
        let first = build()?;
        Ok(Self {
            current: ArcSwap::new(first),
            paths,
            build: Box::new(build),
            label: "cluster certificate",
            seen: Mutex::new(seen),
        })
    }

    /// The configuration to use for a new connection.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// The watched files.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Rebuilds the configuration if a watched file changed since the last attempt.
    ///
    /// Returns `Ok(true)` when a new configuration is in place, `Ok(false)` when nothing
    /// changed, and the error when the files changed but do not build; then the current
    /// configuration stays (the caller logs the error).
    pub fn reload_if_changed(&self) -> Result<bool, ClusterTlsError> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Fingerprint::of(&self.paths);
        if now == *seen {
            return Ok(false);
        }
        *seen = now;
        let next = (self.build)()?;
        self.current.store(next);
        Ok(true)
    }

    /// Checks the files every `every` (at least 10 ms) forever, logging each reload
    /// ("cluster certificate reloaded") and each refused change with its reason. Spawn it:
    /// `tokio::spawn(config.clone().watch(DEFAULT_RELOAD_INTERVAL))`.
    ///
    /// The files are small and read with blocking calls on the runtime's thread.
    pub async fn watch(self: Arc<Self>, every: Duration)
    where
        T: Send + Sync + 'static,
    {
        let mut ticks = tokio::time::interval(every.max(MIN_RELOAD_INTERVAL));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick completes at once; the files were just read by `new`.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(files = %self.describe(), "{} reloaded", self.label);
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(
                    files = %self.describe(),
                    %error,
                    "{} files changed but cannot be used; keeping the current certificate",
                    self.label
                ),
            }
        }
    }

    /// The watched paths, comma-separated, for logs.
    fn describe(&self) -> String {
        self.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl ReloadingConfig<ServerConfig> {
    /// The CP's listener configuration ([`server_config`]), reloaded when
    /// `files.cert`, `files.key` or `files.ca` change.
    pub fn server(mode: ClusterMtls, files: ClusterTlsFiles) -> Result<Self, ClusterTlsError> {
        Self::server_with(mode, files, false)
    }

    /// [`server`](Self::server), and with `optional_client_auth` (`pki` mode, enrolment on)
    /// a client without a certificate completes the handshake too (see
    /// [`server_config_with`]).
    pub fn server_with(
        mode: ClusterMtls,
        files: ClusterTlsFiles,
        optional_client_auth: bool,
    ) -> Result<Self, ClusterTlsError> {
        Self::new(files.paths(), move || {
            server_config_with(mode, &files, optional_client_auth)
        })
    }

    /// An HTTPS listener's configuration ([`https_server_config`]; the Admin API's), reloaded
    /// when `files.cert`, `files.key` or `files.ca` change.
    pub fn https(files: ClusterTlsFiles) -> Result<Self, ClusterTlsError> {
        let mut config = Self::new(files.paths(), move || https_server_config(&files))?;
        config.label = "Admin API certificate";
        Ok(config)
    }
}

impl ReloadingConfig<ClientConfig> {
    /// The DP's connection configuration ([`client_config`]), reloaded when
    /// `files.cert`, `files.key` or `files.ca` change.
    pub fn client(
        mode: ClusterMtls,
        files: ClusterTlsFiles,
        server_name: impl Into<String>,
    ) -> Result<Self, ClusterTlsError> {
        let server_name = server_name.into();
        Self::new(files.paths(), move || {
            client_config(mode, &files, &server_name)
        })
    }
}

impl<T> fmt::Debug for ReloadingConfig<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingConfig")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

// === impl Fingerprint ===

impl Fingerprint {
    fn of(paths: &[PathBuf]) -> Self {
        Self(
            paths
                .iter()
                .map(|path| {
                    std::fs::read(path)
                        .ok()
                        .map(|bytes| Sha256::digest(&bytes).into())
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests;
