//! OCSP staples (`ocsp_staples`, migration V12): the last good OCSP answer fetched for the leaf
//! of each certificate's `cert` and `cert_alt`. Writing or removing one is configuration (the
//! staples travel in the snapshot): it bumps the config version in the same transaction, so
//! every replica builds the same snapshot of a version.

use std::collections::HashMap;

use uuid::Uuid;

use super::{Store, Transaction, bump_version, db_error};
use crate::error::ApiError;

/// The chain a staple belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    Cert,
    CertAlt,
}

/// A certificate's chains, as the stapler reads them.
#[derive(Debug, Clone)]
pub(crate) struct ServedChains {
    pub(crate) id: Uuid,
    pub(crate) cert: String,
    pub(crate) cert_alt: Option<String>,
}

/// A stored staple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Staple {
    /// SHA-256 of the leaf it is about, lowercase hex.
    pub(crate) leaf_sha256: String,
    /// The OCSPResponse, DER.
    pub(crate) response: Vec<u8>,
    /// `good` or `revoked`.
    pub(crate) status: String,
    /// The responder URL it came from.
    pub(crate) responder: String,
    /// thisUpdate and nextUpdate, Unix seconds.
    pub(crate) this_update: i64,
    pub(crate) next_update: Option<i64>,
    /// When it was fetched, Unix seconds.
    pub(crate) fetched_at: i64,
}

// === impl Slot ===

impl Slot {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Cert => "cert",
            Self::CertAlt => "cert_alt",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "cert" => Some(Self::Cert),
            "cert_alt" => Some(Self::CertAlt),
            _ => None,
        }
    }
}

// === impl Store ===

impl Store {
    /// Every certificate's chains (the private keys are not read).
    pub(crate) async fn served_chains(&self) -> Result<Vec<ServedChains>, ApiError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, cert, cert_alt FROM certificates ORDER BY id",
                &[],
            )
            .await
            .map_err(db_error)?;
        Ok(rows
            .iter()
            .map(|row| ServedChains {
                id: row.get(0),
                cert: row.get(1),
                cert_alt: row.get(2),
            })
            .collect())
    }

    /// Every stored staple.
    pub(crate) async fn ocsp_staples(&self) -> Result<HashMap<(Uuid, Slot), Staple>, ApiError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT certificate_id, slot, leaf_sha256, response, status, responder, \
                 this_update, next_update, fetched_at FROM ocsp_staples",
                &[],
            )
            .await
            .map_err(db_error)?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let slot = Slot::parse(row.get(1))?;
                let staple = Staple {
                    leaf_sha256: row.get(2),
                    response: row.get(3),
                    status: row.get(4),
                    responder: row.get(5),
                    this_update: row.get(6),
                    next_update: row.get(7),
                    fetched_at: row.get(8),
                };
                Some(((row.get(0), slot), staple))
            })
            .collect())
    }

    /// Stores the staple of `certificate`'s `slot` (bumping the config version), unless the
    /// certificate is gone meanwhile. Returns whether it was stored.
    pub(crate) async fn put_ocsp_staple(
        &self,
        certificate: Uuid,
        slot: Slot,
        staple: &Staple,
    ) -> Result<bool, ApiError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let written = tx
            .execute(
                "INSERT INTO ocsp_staples (certificate_id, slot, leaf_sha256, response, status, \
                 responder, this_update, next_update, fetched_at) \
                 SELECT id, $2, $3, $4, $5, $6, $7, $8, $9 FROM certificates WHERE id = $1 \
                 ON CONFLICT (certificate_id, slot) DO UPDATE SET leaf_sha256 = $3, \
                 response = $4, status = $5, responder = $6, this_update = $7, \
                 next_update = $8, fetched_at = $9",
                &[
                    &certificate,
                    &slot.as_str(),
                    &staple.leaf_sha256,
                    &staple.response,
                    &staple.status,
                    &staple.responder,
                    &staple.this_update,
                    &staple.next_update,
                    &staple.fetched_at,
                ],
            )
            .await
            .map_err(db_error)?;
        if written > 0 {
            bump_version(&tx).await?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(written > 0)
    }

    /// Removes the staple of `certificate`'s `slot` (bumping the config version if it was
    /// there).
    pub(crate) async fn delete_ocsp_staple(
        &self,
        certificate: Uuid,
        slot: Slot,
    ) -> Result<bool, ApiError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let removed = tx
            .execute(
                "DELETE FROM ocsp_staples WHERE certificate_id = $1 AND slot = $2",
                &[&certificate, &slot.as_str()],
            )
            .await
            .map_err(db_error)?;
        if removed > 0 {
            bump_version(&tx).await?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(removed > 0)
    }
}

/// The staples of the snapshot being exported: `(certificate id, slot)` → (leaf SHA-256,
/// response). Read in the export's transaction, so they belong to its version.
pub(super) async fn export_staples(
    tx: &Transaction<'_>,
) -> Result<HashMap<(Uuid, Slot), (String, Vec<u8>)>, ApiError> {
    let rows = tx
        .query(
            "SELECT certificate_id, slot, leaf_sha256, response FROM ocsp_staples",
            &[],
        )
        .await
        .map_err(db_error)?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            Some((
                (row.get(0), Slot::parse(row.get(1))?),
                (row.get(2), row.get(3)),
            ))
        })
        .collect())
}
