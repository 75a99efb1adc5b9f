//! Reading the whole configuration at one config version, for snapshots.

use serde_json::{Map, Value};

use gatehouse_shared::entities::COLLECTIONS;

use super::entity::{base_schema, from_row, select_expr};
use super::{Store, db_error};
use crate::error::ApiError;

/// Every entity of the configuration as the Admin API shows it, at one config version.
#[derive(Debug, Clone)]
pub(crate) struct Export {
    /// The config version the rows belong to.
    pub(crate) version: i64,
    /// `{"services": [...], "routes": [...], ...}`, every list ordered by id.
    pub(crate) collections: Map<String, Value>,
}

impl Store {
    /// Reads the config version and every entity in one read-only REPEATABLE READ transaction,
    /// so the rows are exactly those of that version even while writers commit.
    ///
    /// Returns `None`, having read nothing else, when the version is not newer than `after`
    /// (the version already published).
    pub(crate) async fn export(&self, after: Option<i64>) -> Result<Option<Export>, ApiError> {
        let mut client = self.pool.get().await?;
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
        if after.is_some_and(|after| version <= after) {
            tx.commit().await.map_err(db_error)?;
            return Ok(None);
        }
        let mut collections = Map::new();
        for collection in COLLECTIONS {
            let schema = base_schema(collection)?;
            let sql = format!(
                "SELECT {} FROM \"{collection}\" t ORDER BY t.id",
                select_expr(collection)
            );
            let rows = tx.query(&sql, &[]).await.map_err(db_error)?;
            let items = rows
                .iter()
                .map(|row| from_row(schema, row.get(0)))
                .collect();
            collections.insert((*collection).to_owned(), Value::Array(items));
        }
        tx.commit().await.map_err(db_error)?;
        Ok(Some(Export {
            version,
            collections,
        }))
    }
}
