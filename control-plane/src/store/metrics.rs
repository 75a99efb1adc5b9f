//! What the control plane's `/metrics` reads from the database besides the data-plane
//! registry: the end of validity of every certificate and CA certificate.

use super::{Store, db_error};
use crate::error::ApiError;

/// `(id, notAfter)` of each certificate and each CA certificate, by id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Expiries {
    pub(crate) certificates: Vec<(String, i64)>,
    pub(crate) ca_certificates: Vec<(String, i64)>,
}

impl Store {
    /// The notAfter of every certificate and CA certificate (one indexed column each).
    pub(crate) async fn expiries(&self) -> Result<Expiries, ApiError> {
        let client = self.pool.get().await?;
        let mut expiries = Expiries::default();
        for (table, into) in [
            ("certificates", &mut expiries.certificates),
            ("ca_certificates", &mut expiries.ca_certificates),
        ] {
            let rows = client
                .query(
                    &format!("SELECT id::text, not_after FROM {table} ORDER BY id"),
                    &[],
                )
                .await
                .map_err(db_error)?;
            *into = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        }
        Ok(expiries)
    }
}
