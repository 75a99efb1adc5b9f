//! Expiry of certificates and CA certificates: the ones expired or within the warning window
//! (the control plane's periodic log warning), and counts for `/clustering/status`.

use serde_json::{Value, json};
use uuid::Uuid;

use super::{Store, db_error};
use crate::error::ApiError;

/// The collections whose `not_after` is watched.
pub(crate) const EXPIRING_COLLECTIONS: [&str; 2] = ["certificates", "ca_certificates"];

/// A certificate expired or expiring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expiring {
    /// `certificates` or `ca_certificates`.
    pub(crate) collection: &'static str,
    /// Its id.
    pub(crate) id: Uuid,
    /// Its subject.
    pub(crate) subject: String,
    /// Its end of validity, Unix seconds.
    pub(crate) not_after: i64,
}

// === impl Store ===

impl Store {
    /// Every certificate and CA certificate whose `not_after` is before `until`, soonest first.
    pub(crate) async fn expiring(&self, until: i64) -> Result<Vec<Expiring>, ApiError> {
        let client = self.pool.get().await?;
        let mut out = Vec::new();
        for collection in EXPIRING_COLLECTIONS {
            // `collection` is one of two static table names.
            let rows = client
                .query(
                    &format!(
                        "SELECT id, subject, not_after FROM \"{collection}\" \
                         WHERE not_after <= $1 ORDER BY not_after, id"
                    ),
                    &[&until],
                )
                .await
                .map_err(db_error)?;
            out.extend(rows.iter().map(|row| Expiring {
                collection,
                id: row.get(0),
                subject: row.get(1),
                not_after: row.get(2),
            }));
        }
        Ok(out)
    }

    /// Per collection: how many are expired at `now`, how many expire within `window`
    /// seconds, and the soonest `not_after` (with its id).
    pub(crate) async fn expiry_summary(&self, now: i64, window: i64) -> Result<Value, ApiError> {
        let client = self.pool.get().await?;
        let until = now.saturating_add(window);
        let mut summary = serde_json::Map::new();
        for collection in EXPIRING_COLLECTIONS {
            let row = client
                .query_one(
                    &format!(
                        "SELECT count(*), count(*) FILTER (WHERE not_after <= $1), \
                         count(*) FILTER (WHERE not_after > $1 AND not_after <= $2), \
                         (SELECT id FROM \"{collection}\" ORDER BY not_after, id LIMIT 1), \
                         min(not_after) FROM \"{collection}\""
                    ),
                    &[&now, &until],
                )
                .await
                .map_err(db_error)?;
            summary.insert(
                collection.to_owned(),
                json!({
                    "total": row.get::<_, i64>(0),
                    "expired": row.get::<_, i64>(1),
                    "expiring": row.get::<_, i64>(2),
                    "soonest_id": row.get::<_, Option<Uuid>>(3),
                    "soonest_not_after": row.get::<_, Option<i64>>(4),
                }),
            );
        }
        summary.insert("warning_window".to_owned(), json!(window));
        Ok(Value::Object(summary))
    }
}
