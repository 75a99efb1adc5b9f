//! The refresh of secret references (`secret_references_state`, migration V8).

use super::{Store, bump_version, db_error, unix_now};
use crate::error::ApiError;
use crate::keyring::context;
use crate::secrets::{REFERENCE_FIELDS, is_reference};

impl Store {
    /// Resolves every secret reference of the certificates again; when a value changed since
    /// the last refresh (of any replica), bumps the config version once so that a new
    /// snapshot carries it. Returns the new version, if any.
    pub(crate) async fn refresh_secret_references(&self) -> Result<Option<i64>, ApiError> {
        let mut client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, cert, key, cert_alt, key_alt FROM certificates ORDER BY id",
                &[],
            )
            .await
            .map_err(db_error)?;
        let mut references = Vec::new();
        for row in &rows {
            let id: uuid::Uuid = row.get(0);
            for (n, field) in REFERENCE_FIELDS.iter().enumerate() {
                let Some(stored) = row.get::<_, Option<String>>(n + 1) else {
                    continue;
                };
                let text = if crate::keyring::sealed_columns("certificates").contains(field) {
                    self.keyring
                        .open(
                            &**client,
                            &context("certificates", field, &id.to_string()),
                            &stored,
                        )
                        .await?
                } else {
                    stored
                };
                if is_reference(&text) {
                    references.push(text.trim().to_owned());
                }
            }
        }
        references.sort();
        references.dedup();
        let digest = self.secrets.digest(&references);
        let tx = client.transaction().await.map_err(db_error)?;
        let inserted = tx
            .execute(
                "INSERT INTO secret_references_state (digest, updated_at) VALUES ($1, $2) \
                 ON CONFLICT (singleton) DO NOTHING",
                &[&digest, &unix_now()],
            )
            .await
            .map_err(db_error)?;
        // The first digest ever: a version too when there are references, in case a value
        // changed between the last snapshot and this refresh.
        let changed = (inserted == 1 && !references.is_empty())
            || tx
                .execute(
                    "UPDATE secret_references_state SET digest = $1, updated_at = $2 \
                     WHERE digest <> $1",
                    &[&digest, &unix_now()],
                )
                .await
                .map_err(db_error)?
                == 1;
        let version = if changed {
            Some(bump_version(&tx).await?)
        } else {
            None
        };
        tx.commit().await.map_err(db_error)?;
        if let Some(version) = version {
            tracing::info!(
                version,
                references = references.len(),
                "a secret reference resolves to a new value: new config version"
            );
        }
        Ok(version)
    }
}
