//! The PostgreSQL store: migrations, generic entity CRUD driven by the shared schemas, and the
//! config version.
//!
//! Rows are converted with Postgres' own JSON functions (`jsonb_populate_record` in,
//! `to_jsonb` out), so one code path serves every entity. Only static identifiers from the
//! schemas are ever interpolated into SQL; every value is a bound parameter.
//!
//! Each write is one transaction: resolve references (locking referenced rows `FOR KEY SHARE`),
//! validate, write, bump `config_version` and `NOTIFY gatehouse_config`. The version bump takes
//! the config-version row lock last, so concurrent writers serialise only for the short tail of
//! their transaction and versions are gap-free in commit order.

mod acme;
mod audit;
mod credentials;
mod data_planes;
mod declarative;
mod enrolment;
mod entity;
mod expiry;
mod export;
mod keyring;
mod metrics;
mod ocsp_staples;
mod query;
mod secrets;
mod sources;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use tokio_postgres::NoTls;

pub(crate) use self::acme::{AcmeName, NewChallenge, Outcome};
pub(crate) use self::audit::{Action, Actor, AuditFilter};
pub(crate) use self::credentials::{Credential, NewCredential, NewSecret, Role};
pub(crate) use self::data_planes::{Claim, DataPlane, SyncStatus};
pub(crate) use self::declarative::{Apply, writable_collections};
pub(crate) use self::enrolment::{IssuedCert, RenewalRequests, Token};
pub(crate) use self::entity::{Parent, Selector, coerce_form};
pub(crate) use self::export::Export;
pub(crate) use self::metrics::Expiries;
pub(crate) use self::ocsp_staples::{ServedChains, Slot, Staple};
pub(crate) use self::query::{ListQuery, Page, TagFilter};
pub(crate) use self::sources::{Lease, SourceRecord};
use crate::Error;
use crate::error::ApiError;
use crate::keyring::Keyring;
use crate::secrets::Secrets;

/// The NOTIFY channel carrying each committed config version.
pub(crate) const NOTIFY_CHANNEL: &str = "gatehouse_config";

/// Longest time to open a new pooled connection (TCP, authentication) or check an idle one:
/// with the database away, an Admin API request is answered 503 within about a second
/// instead of hanging. A burst of requests beyond the pool's size queues for a free
/// connection, at most [`POOL_WAIT_TIMEOUT`] (then 503 too): bounded, yet long enough that a
/// burst of writers serialised on the config-version lock is not refused.
pub(crate) const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const POOL_CREATE_TIMEOUT: Duration = Duration::from_millis(800);
pub(crate) const POOL_RECYCLE_TIMEOUT: Duration = Duration::from_millis(500);

/// Advisory-lock key serialising migrations across control-plane replicas ("gatehous").
const MIGRATION_LOCK: i64 = 0x6761_7465_686f_7573;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Handle to the configuration database.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pool: Pool,
    plugins: Vec<String>,
    /// Seals and opens private keys at rest (disabled without `--keyring-key-file`).
    keyring: std::sync::Arc<Keyring>,
    /// Resolves secret references in certificates.
    secrets: std::sync::Arc<Secrets>,
}

// === impl Store ===

impl Store {
    /// Builds a pool for `url` (connections are opened lazily).
    pub(crate) fn connect(url: &str, max: usize, plugins: Vec<String>) -> Result<Self, Error> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Database(format!("invalid database URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_CREATE_TIMEOUT);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(POOL_CREATE_TIMEOUT))
            .recycle_timeout(Some(POOL_RECYCLE_TIMEOUT))
            .build()
            .map_err(|e| Error::Database(e.to_string()))?;
        Ok(Self {
            pool,
            plugins,
            keyring: std::sync::Arc::new(Keyring::disabled()),
            secrets: std::sync::Arc::new(Secrets::new(crate::config::DEFAULT_SECRET_GRACE)),
        })
    }

    /// This store, resolving secret references with `secrets`.
    pub(crate) fn with_secrets(mut self, secrets: Secrets) -> Self {
        self.secrets = std::sync::Arc::new(secrets);
        self
    }

    /// This store, sealing private keys with `keyring`.
    pub(crate) fn with_keyring(mut self, keyring: Keyring) -> Self {
        self.keyring = std::sync::Arc::new(keyring);
        self
    }

    /// Applies pending migrations under a Postgres advisory lock, so replicas starting together
    /// migrate once. Returns how many were applied.
    pub(crate) async fn migrate(&self) -> Result<usize, Error> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| Error::Database(format!("cannot connect: {}", pool_error_text(&e))))?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| Error::Database(e.to_string()))?;
        let report = embedded::migrations::runner()
            .run_async(&mut **client)
            .await;
        // Unlock whatever happened; the session also releases it when the connection closes.
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        let report = report.map_err(|e| Error::Database(format!("migration failed: {e}")))?;
        unlocked.map_err(|e| Error::Database(e.to_string()))?;
        Ok(report.applied_migrations().len())
    }

    /// Secret references that do not resolve now (for `GET /clustering/status`).
    pub(crate) fn failing_secret_references(&self) -> serde_json::Value {
        self.secrets.failing()
    }

    /// Plugins that may be configured.
    pub(crate) fn plugins(&self) -> &[String] {
        &self.plugins
    }

    /// The current config version.
    pub(crate) async fn config_version(&self) -> Result<i64, ApiError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one("SELECT version FROM config_version", &[])
            .await
            .map_err(db_error)?;
        Ok(row.get(0))
    }

    /// Names of the plugins configured at least once (Kong's `enabled_in_cluster`).
    pub(crate) async fn plugins_in_use(&self) -> Result<Vec<String>, ApiError> {
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT DISTINCT name FROM plugins ORDER BY name", &[])
            .await
            .map_err(db_error)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A read-only REPEATABLE READ transaction and the config version it sees: every read in
    /// it belongs to that version, even while writers commit.
    async fn begin_snapshot(
        client: &mut deadpool_postgres::Object,
    ) -> Result<(Transaction<'_>, i64), ApiError> {
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error)?;
        let version: i64 = tx
            .query_one("SELECT version FROM config_version", &[])
            .await
            .map_err(db_error)?
            .get(0);
        Ok((tx, version))
    }

    async fn begin<'a>(
        client: &'a mut deadpool_postgres::Object,
    ) -> Result<Transaction<'a>, ApiError> {
        client.transaction().await.map_err(db_error)
    }
}

/// Bumps the config version and queues the notification; both take effect at commit.
async fn bump_version(tx: &Transaction<'_>) -> Result<i64, ApiError> {
    let row = tx
        .query_one(
            "UPDATE config_version SET version = version + 1 RETURNING version",
            &[],
        )
        .await
        .map_err(db_error)?;
    let version: i64 = row.get(0);
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&NOTIFY_CHANNEL, &version.to_string()],
    )
    .await
    .map_err(db_error)?;
    Ok(version)
}

/// The whole cause chain of a pool error: deadpool and tokio-postgres put the useful part
/// ("connection refused", "database \"x\" does not exist") in sources.
pub(crate) fn pool_error_text(error: &deadpool_postgres::PoolError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Unix time in whole seconds.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Unix time in seconds.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Maps a database error we did not expect to a 500, or to a 503 when the database is away
/// (the connection is lost or refused, the server shuts down). Only the SQLSTATE and
/// constraint are kept: the detail text can quote values.
pub(crate) fn db_error(error: tokio_postgres::Error) -> ApiError {
    match error.as_db_error() {
        // Class 08: connection exception; 57P01-57P03: admin/crash shutdown, cannot connect now.
        Some(db)
            if db.code().code().starts_with("08")
                || matches!(db.code().code(), "57P01" | "57P02" | "57P03") =>
        {
            ApiError::Unavailable(format!(
                "database error {} ({})",
                db.code().code(),
                db.message()
            ))
        }
        None if error.is_closed()
            || std::error::Error::source(&error).is_some_and(|s| s.is::<std::io::Error>()) =>
        {
            ApiError::Unavailable(format!("database: {error}"))
        }
        Some(db) => ApiError::Internal(format!(
            "database error {} ({}){}",
            db.code().code(),
            db.message(),
            db.constraint()
                .map(|c| format!(" on constraint {c}"))
                .unwrap_or_default()
        )),
        None => ApiError::Internal(format!("database: {error}")),
    }
}
