//! The data-plane registry (`data_planes`): who is connected to the cluster, what each data
//! plane runs, and why it lags. Written by the sync streams, read by the Admin API. These
//! writes are not configuration: they never bump the config version nor notify.

use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use super::audit::{self, Action};
use super::{Store, db_error};
use crate::error::ApiError;

/// Columns of a row, in the order [`DataPlane::from_row`] reads them.
const COLUMNS: &str = "id, hostname, ip, version, labels, config_version, config_hash, \
     sync_status, error, cert_expiry, connected, control_plane, session, last_seen, created_at, \
     updated_at, warnings, cert_serial, cert_issuer, spiffe_id";

/// One data plane as the registry holds it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DataPlane {
    /// The data plane's node id (kept in its cache directory across restarts).
    pub(crate) id: Uuid,
    /// Its hostname, as it reported it.
    pub(crate) hostname: String,
    /// The address its stream came from.
    pub(crate) ip: String,
    /// Its Gatehouse version.
    pub(crate) version: String,
    /// Its labels, a JSON object of strings.
    pub(crate) labels: Value,
    /// The config version it runs; `None` while it runs none.
    pub(crate) config_version: Option<i64>,
    /// The config hash it runs; `None` while it runs none.
    pub(crate) config_hash: Option<String>,
    /// `unknown`, `normal`, `rejected` or `version_incompatible`.
    pub(crate) sync_status: SyncStatus,
    /// Why its last snapshot was rejected, or why it was refused.
    pub(crate) error: Option<String>,
    /// End of validity of its cluster certificate, Unix seconds.
    pub(crate) cert_expiry: Option<i64>,
    /// Whether a stream of it is open (see [`DataPlane::is_connected`]).
    pub(crate) connected: bool,
    /// Node id of the control plane holding its stream.
    pub(crate) control_plane: Option<Uuid>,
    /// The stream that owns the row.
    pub(crate) session: Option<Uuid>,
    /// Last time it was heard of, Unix seconds.
    pub(crate) last_seen: i64,
    /// First registration, Unix seconds.
    pub(crate) created_at: i64,
    /// Last change other than `last_seen`, Unix seconds.
    pub(crate) updated_at: i64,
    /// Problems it found in the configuration it runs and made safe, as it acknowledged
    /// them: a JSON array of strings.
    pub(crate) warnings: Value,
    /// Serial number (lowercase hex) of its cluster certificate.
    pub(crate) cert_serial: Option<String>,
    /// Issuer of its cluster certificate.
    pub(crate) cert_issuer: Option<String>,
    /// SPIFFE ID of its cluster certificate (enrolled data planes).
    pub(crate) spiffe_id: Option<String>,
}

/// Kong's `sync_status`, with our values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncStatus {
    /// Nothing known yet.
    Unknown,
    /// Connected and applying what it is sent.
    Normal,
    /// It rejected its last snapshot (see `error`).
    Rejected,
    /// Its version is not served by the control plane (see `error`).
    VersionIncompatible,
}

/// How [`Store::write_data_plane`] treats a row another stream may own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// A new stream: the row becomes this session's, whoever owned it.
    TakeOver,
    /// A later write of the session: applies only while the session owns the row; recreates
    /// the row if it was deleted (the data plane is alive, so it reappears).
    Update,
}

// === impl SyncStatus ===

impl SyncStatus {
    /// The stored and returned name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Normal => "normal",
            Self::Rejected => "rejected",
            Self::VersionIncompatible => "version_incompatible",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "normal" => Self::Normal,
            "rejected" => Self::Rejected,
            "version_incompatible" => Self::VersionIncompatible,
            _ => Self::Unknown,
        }
    }
}

// === impl DataPlane ===

impl DataPlane {
    fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get(0)?,
            hostname: row.try_get(1)?,
            ip: row.try_get(2)?,
            version: row.try_get(3)?,
            labels: row.try_get(4)?,
            config_version: row.try_get(5)?,
            config_hash: row.try_get(6)?,
            sync_status: SyncStatus::parse(row.try_get(7)?),
            error: row.try_get(8)?,
            cert_expiry: row.try_get(9)?,
            connected: row.try_get(10)?,
            control_plane: row.try_get(11)?,
            session: row.try_get(12)?,
            last_seen: row.try_get(13)?,
            created_at: row.try_get(14)?,
            updated_at: row.try_get(15)?,
            warnings: row.try_get(16)?,
            cert_serial: row.try_get(17)?,
            cert_issuer: row.try_get(18)?,
            spiffe_id: row.try_get(19)?,
        })
    }

    /// Whether the data plane counts as connected at `now`: its row says so and its lease,
    /// refreshed by the control plane holding the stream, has not expired. A replica that
    /// died cannot mark its streams closed; the lease makes them disconnected anyway.
    pub(crate) fn is_connected(&self, now: i64, lease: i64) -> bool {
        self.connected && now.saturating_sub(self.last_seen) <= lease
    }
}

// === impl Store ===

impl Store {
    /// Writes the whole row of a data plane (see [`Claim`]). Returns whether a row was written.
    pub(crate) async fn write_data_plane(
        &self,
        dp: &DataPlane,
        claim: Claim,
    ) -> Result<bool, ApiError> {
        let condition = match claim {
            Claim::TakeOver => "",
            Claim::Update => "WHERE data_planes.session IS NOT DISTINCT FROM EXCLUDED.session",
        };
        let sql = format!(
            "INSERT INTO data_planes ({COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
             ON CONFLICT (id) DO UPDATE SET hostname = EXCLUDED.hostname, ip = EXCLUDED.ip, \
             version = EXCLUDED.version, labels = EXCLUDED.labels, \
             config_version = EXCLUDED.config_version, config_hash = EXCLUDED.config_hash, \
             sync_status = EXCLUDED.sync_status, error = EXCLUDED.error, \
             cert_expiry = EXCLUDED.cert_expiry, connected = EXCLUDED.connected, \
             control_plane = EXCLUDED.control_plane, session = EXCLUDED.session, \
             last_seen = EXCLUDED.last_seen, updated_at = EXCLUDED.updated_at, \
             warnings = EXCLUDED.warnings, cert_serial = EXCLUDED.cert_serial, \
             cert_issuer = EXCLUDED.cert_issuer, spiffe_id = EXCLUDED.spiffe_id {condition}"
        );
        let client = self.pool.get().await?;
        let written = client
            .execute(
                &sql,
                &[
                    &dp.id,
                    &dp.hostname,
                    &dp.ip,
                    &dp.version,
                    &dp.labels,
                    &dp.config_version,
                    &dp.config_hash,
                    &dp.sync_status.as_str(),
                    &dp.error,
                    &dp.cert_expiry,
                    &dp.connected,
                    &dp.control_plane,
                    &dp.session,
                    &dp.last_seen,
                    &dp.created_at,
                    &dp.updated_at,
                    &dp.warnings,
                    &dp.cert_serial,
                    &dp.cert_issuer,
                    &dp.spiffe_id,
                ],
            )
            .await
            .map_err(db_error)?;
        Ok(written > 0)
    }

    /// Marks the stream `session` of data plane `id` closed, unless another stream owns the
    /// row by now. Does not recreate a deleted row.
    pub(crate) async fn data_plane_disconnected(
        &self,
        id: Uuid,
        session: Uuid,
        now: i64,
    ) -> Result<(), ApiError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE data_planes SET connected = false, last_seen = $3, updated_at = $3 \
                 WHERE id = $1 AND session = $2 AND connected",
                &[&id, &session, &now],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Marks every stream held by control plane `node` closed (at its shutdown).
    pub(crate) async fn data_planes_disconnected_from(
        &self,
        node: Uuid,
        now: i64,
    ) -> Result<u64, ApiError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE data_planes SET connected = false, last_seen = $2, updated_at = $2 \
                 WHERE control_plane = $1 AND connected",
                &[&node, &now],
            )
            .await
            .map_err(db_error)
    }

    /// Refreshes the lease (`last_seen`) of the live streams `sessions`.
    pub(crate) async fn refresh_data_planes(
        &self,
        sessions: &[Uuid],
        now: i64,
    ) -> Result<(), ApiError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE data_planes SET last_seen = GREATEST(last_seen, $2) \
                 WHERE session = ANY($1) AND connected",
                &[&sessions, &now],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Every known data plane, ordered by hostname, then id.
    pub(crate) async fn data_planes(&self) -> Result<Vec<DataPlane>, ApiError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM data_planes ORDER BY hostname, id"),
                &[],
            )
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| DataPlane::from_row(row).map_err(db_error))
            .collect()
    }

    /// Forgets a data plane. Deleting an unknown id is not an error. A data plane still
    /// connected reappears at its next report.
    pub(crate) async fn delete_data_plane(&self, id: Uuid) -> Result<bool, ApiError> {
        let mut client = self.pool.get().await?;
        let tx = Self::begin(&mut client).await?;
        let deleted = tx
            .execute("DELETE FROM data_planes WHERE id = $1", &[&id])
            .await
            .map_err(db_error)?;
        let recorded = match deleted {
            0 => None,
            _ => Some(audit::record(&tx, Action::Delete, "data_planes", Some(id), None).await?),
        };
        tx.commit().await.map_err(db_error)?;
        if let Some(recorded) = recorded {
            recorded.log();
        }
        Ok(deleted > 0)
    }
}
