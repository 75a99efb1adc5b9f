//! State of the watched certificate sources (`certificate_source_files`,
//! `certificate_source_leases`, migration V9): which certificate row each pair of files is
//! kept in, what was last written there, and the lease that makes one replica at a time write
//! a source. The certificates themselves are written through the ordinary entity functions
//! (`Store::upsert`, `Store::delete`), which bump the config version.

use std::collections::HashMap;

use uuid::Uuid;

use super::{Store, db_error};
use crate::error::ApiError;

/// What was last written for one pair of files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceFile {
    /// The pair's name within its source.
    pub(crate) name: String,
    /// Digest of the certificate, key and SNIs written.
    pub(crate) digest: String,
}

/// A pair of files to record as written.
#[derive(Debug, Clone)]
pub(crate) struct SourceRecord<'a> {
    /// The source directory.
    pub(crate) source: &'a str,
    /// The pair's name within it.
    pub(crate) name: &'a str,
    /// `certbot`, `kubernetes` or `plain`.
    pub(crate) layout: &'a str,
    /// The certificate file.
    pub(crate) cert_path: &'a str,
    /// The key file.
    pub(crate) key_path: &'a str,
    /// Digest of what was written.
    pub(crate) digest: &'a str,
}

/// The source owning a certificate, as the Admin API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceOwner {
    /// The source directory.
    pub(crate) source: String,
    /// The certificate file.
    pub(crate) cert_path: String,
    /// Whether a replica watches the source now (its lease is current).
    pub(crate) watched: bool,
}

/// The lease tables: one writer at a time per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lease {
    /// `certificate_source_leases`: one per watched directory (V9).
    CertificateSource,
    /// `ocsp_stapling_leases`: the replica fetching OCSP staples (V12).
    OcspStapling,
}

impl Lease {
    /// The table and its key column.
    fn table(self) -> (&'static str, &'static str) {
        match self {
            Self::CertificateSource => ("certificate_source_leases", "source"),
            Self::OcspStapling => ("ocsp_stapling_leases", "name"),
        }
    }
}

// === impl Store ===

impl Store {
    /// Takes or renews the lease of `source` for `owner` until `until`, unless another owner
    /// holds an unexpired one. Returns whether it is now `owner`'s.
    pub(crate) async fn cert_source_lease(
        &self,
        source: &str,
        owner: Uuid,
        now: i64,
        until: i64,
    ) -> Result<bool, ApiError> {
        self.lease(Lease::CertificateSource, source, owner, now, until)
            .await
    }

    /// Takes or renews lease `name` of `table` for `owner` until `until`, unless another owner
    /// holds an unexpired one. Returns whether it is now `owner`'s.
    pub(crate) async fn lease(
        &self,
        table: Lease,
        name: &str,
        owner: Uuid,
        now: i64,
        until: i64,
    ) -> Result<bool, ApiError> {
        let (table, key) = table.table();
        let client = self.pool.get().await?;
        let taken = client
            .execute(
                &format!(
                    "INSERT INTO {table} ({key}, owner, expires_at) \
                     VALUES ($1, $2, $4) ON CONFLICT ({key}) DO UPDATE \
                     SET owner = $2, expires_at = $4 \
                     WHERE {table}.owner = $2 OR {table}.expires_at < $3"
                ),
                &[&name, &owner, &now, &until],
            )
            .await
            .map_err(db_error)?;
        Ok(taken == 1)
    }

    /// Gives up every source lease `owner` holds (at shutdown), so another replica takes the
    /// sources over at its next pass instead of when the leases expire.
    pub(crate) async fn cert_source_release(&self, owner: Uuid) -> Result<u64, ApiError> {
        self.lease_release(Lease::CertificateSource, owner).await
    }

    /// Gives up every lease of `table` that `owner` holds.
    pub(crate) async fn lease_release(&self, table: Lease, owner: Uuid) -> Result<u64, ApiError> {
        let (table, _) = table.table();
        let client = self.pool.get().await?;
        client
            .execute(&format!("DELETE FROM {table} WHERE owner = $1"), &[&owner])
            .await
            .map_err(db_error)
    }

    /// The pairs recorded for `source`, by certificate id.
    pub(crate) async fn cert_source_files(
        &self,
        source: &str,
    ) -> Result<HashMap<Uuid, SourceFile>, ApiError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT certificate_id, name, digest FROM certificate_source_files \
                 WHERE source = $1",
                &[&source],
            )
            .await
            .map_err(db_error)?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get(0),
                    SourceFile {
                        name: row.get(1),
                        digest: row.get(2),
                    },
                )
            })
            .collect())
    }

    /// Records that `certificate_id` now holds what `record` describes.
    pub(crate) async fn cert_source_record(
        &self,
        certificate_id: Uuid,
        record: &SourceRecord<'_>,
        now: i64,
    ) -> Result<(), ApiError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO certificate_source_files \
                 (certificate_id, source, name, layout, cert_path, key_path, digest, synced_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (certificate_id) DO UPDATE \
                 SET source = $2, name = $3, layout = $4, cert_path = $5, key_path = $6, \
                 digest = $7, synced_at = $8",
                &[
                    &certificate_id,
                    &record.source,
                    &record.name,
                    &record.layout,
                    &record.cert_path,
                    &record.key_path,
                    &record.digest,
                    &now,
                ],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// The source owning certificate `id`, if any.
    pub(crate) async fn cert_source_owner(
        &self,
        id: Uuid,
        now: i64,
    ) -> Result<Option<SourceOwner>, ApiError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT f.source, f.cert_path, coalesce(l.expires_at >= $2, false) \
                 FROM certificate_source_files f \
                 LEFT JOIN certificate_source_leases l ON l.source = f.source \
                 WHERE f.certificate_id = $1",
                &[&id, &now],
            )
            .await
            .map_err(db_error)?;
        Ok(row.map(|row| SourceOwner {
            source: row.get(0),
            cert_path: row.get(1),
            watched: row.get(2),
        }))
    }
}
