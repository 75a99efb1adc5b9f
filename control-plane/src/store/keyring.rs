//! The keyring's tables (`keyring_data_keys`, `keyring_active`, migration V8): the startup
//! check, `keyring rotate` (re-encryption online, in small transactions) and `keyring status`.
//!
//! Re-encryption changes no plaintext: it bumps no config version and touches no
//! `updated_at`; data planes see nothing of it.

use serde_json::{Value, json};
use uuid::Uuid;

use super::{Store, db_error, unix_now};
use crate::error::ApiError;
use crate::keyring::{ActiveKey, context, sealed_under};

/// What `keyring rotate` did.
#[derive(Debug, Clone, Default)]
pub(crate) struct RotateReport {
    /// The new active data key.
    pub(crate) data_key: String,
    /// The KEK wrapping it.
    pub(crate) kek: String,
    /// Certificate rows re-encrypted.
    pub(crate) certificates: u64,
    /// ACME accounts re-encrypted.
    pub(crate) accounts: u64,
    /// Transactions the re-encryption took.
    pub(crate) batches: u64,
    /// Data keys dropped (no value used them any more).
    pub(crate) dropped: u64,
}

/// The associated data of an ACME account's credentials.
pub(super) fn account_context(api_uri: &str, email: &str) -> String {
    context(
        "acme_accounts",
        "credentials",
        &format!("{api_uri} {email}"),
    )
}

impl Store {
    /// Checks the keyring against the database before serving: with a keyring, makes a first
    /// data key if there is none and opens every data key (a wrong or missing KEK is an error
    /// here, not at the first request); without one, refuses a database that holds data keys.
    /// Returns a line for the log.
    pub(crate) async fn keyring_startup(&self) -> Result<String, crate::Error> {
        let fail = |e: ApiError| crate::Error::Database(e.detail());
        if !self.keyring.is_enabled() {
            let client = self.pool.get().await.map_err(|e| fail(e.into()))?;
            let count: i64 = client
                .query_one("SELECT count(*) FROM keyring_data_keys", &[])
                .await
                .map_err(|e| fail(db_error(e)))?
                .get(0);
            if count > 0 {
                return Err(crate::Error::Config(crate::config::ConfigError::new(
                    format!(
                        "the database holds private keys encrypted at rest ({count} data keys): \
                     set --keyring-key-file (or GATEHOUSE_KEYRING_KEY) to the keyring file \
                     the other control planes use"
                    ),
                )));
            }
            return Ok(String::new());
        }
        self.ensure_data_key().await.map_err(fail)?;
        let client = self.pool.get().await.map_err(|e| fail(e.into()))?;
        let rows = client
            .query(
                "SELECT id, kek_id, wrapped FROM keyring_data_keys ORDER BY id",
                &[],
            )
            .await
            .map_err(|e| fail(db_error(e)))?;
        for row in &rows {
            self.keyring
                .unwrap_data_key(row.get(0), row.get(1), row.get(2))
                .map_err(|e| crate::Error::Config(crate::config::ConfigError::new(e)))?;
        }
        let active = self
            .keyring
            .active(&**client)
            .await
            .map_err(fail)?
            .map(|a| a.id)
            .unwrap_or_default();
        Ok(format!(
            "private keys are encrypted at rest: data key '{active}', {} data keys, KEKs [{}]",
            rows.len(),
            self.keyring.kek_ids().join(", ")
        ))
    }

    /// Makes and activates a first data key unless one is active (replicas starting together
    /// agree on one).
    async fn ensure_data_key(&self) -> Result<(), ApiError> {
        let mut client = self.pool.get().await?;
        let exists = client
            .query_opt("SELECT 1 FROM keyring_active", &[])
            .await
            .map_err(db_error)?
            .is_some();
        if exists {
            return Ok(());
        }
        let (id, kek, wrapped) = self.keyring.new_data_key().map_err(ApiError::Internal)?;
        let tx = client.transaction().await.map_err(db_error)?;
        insert_data_key(&tx, &id, &kek, &wrapped).await?;
        let inserted = tx
            .execute(
                "INSERT INTO keyring_active (data_key_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&id],
            )
            .await
            .map_err(db_error)?;
        if inserted == 1 {
            tx.commit().await.map_err(db_error)?;
            tracing::info!(data_key = %id, kek = %kek, "keyring: first data key made");
        }
        Ok(())
    }

    /// `keyring rotate`: a new data key becomes active, then every sealed or clear private
    /// key is sealed under it, `batch` rows per transaction, while the Admin API keeps
    /// serving; finally the data keys no value uses are dropped.
    pub(crate) async fn keyring_rotate(&self, batch: i64) -> Result<RotateReport, ApiError> {
        let (id, kek, wrapped) = self.keyring.new_data_key().map_err(ApiError::Internal)?;
        {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            insert_data_key(&tx, &id, &kek, &wrapped).await?;
            // Waits for the writers holding the previous key `FOR SHARE`: once this commits,
            // every value sealed under it is committed, and visible to the passes below.
            tx.execute(
                "INSERT INTO keyring_active (singleton, data_key_id) VALUES (true, $1) \
                 ON CONFLICT (singleton) DO UPDATE SET data_key_id = EXCLUDED.data_key_id",
                &[&id],
            )
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
        }
        let mut report = RotateReport {
            data_key: id.clone(),
            kek,
            ..RotateReport::default()
        };
        // A pass normally leaves nothing behind; a second one proves it.
        for _ in 0..3 {
            let before = (report.certificates, report.accounts);
            self.reseal_certificates(&id, batch, &mut report).await?;
            self.reseal_accounts(&id, &mut report).await?;
            if (report.certificates, report.accounts) == before {
                break;
            }
        }
        let client = self.pool.get().await?;
        let pattern = format!("ghenc:v1:{id}:%");
        let left: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM certificates WHERE key NOT LIKE $1 \
                 OR key_alt NOT LIKE $1) + (SELECT count(*) FROM acme_accounts \
                 WHERE coalesce(credentials #>> '{}', '') NOT LIKE $1)",
                &[&pattern],
            )
            .await
            .map_err(db_error)?
            .get(0);
        if left > 0 {
            return Err(ApiError::Internal(format!(
                "{left} values are still not under data key '{id}'; run keyring rotate again"
            )));
        }
        report.dropped = client
            .execute(
                "DELETE FROM keyring_data_keys WHERE id <> $1 AND id NOT IN \
                 (SELECT data_key_id FROM keyring_active)",
                &[&id],
            )
            .await
            .map_err(db_error)?;
        Ok(report)
    }

    /// Seals every certificate key not under data key `id` under it, in batches.
    async fn reseal_certificates(
        &self,
        id: &str,
        batch: i64,
        report: &mut RotateReport,
    ) -> Result<(), ApiError> {
        let pattern = format!("ghenc:v1:{id}:%");
        let mut after = Uuid::nil();
        loop {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            let rows = tx
                .query(
                    "SELECT id, key, key_alt FROM certificates WHERE id > $1 \
                     AND (key NOT LIKE $2 OR key_alt NOT LIKE $2) ORDER BY id LIMIT $3 \
                     FOR UPDATE",
                    &[&after, &pattern, &batch],
                )
                .await
                .map_err(db_error)?;
            if rows.is_empty() {
                return Ok(());
            }
            let Some(active) = self.keyring.active(&*tx).await? else {
                return Err(ApiError::Internal("no keyring configured".into()));
            };
            if active.id != id {
                return Err(ApiError::Internal(format!(
                    "another rotation made data key '{}' active meanwhile",
                    active.id
                )));
            }
            for row in &rows {
                let row_id: Uuid = row.get(0);
                let key = self.reseal(&tx, &active, "key", row_id, row.get(1)).await?;
                let key_alt = match row.get::<_, Option<String>>(2) {
                    Some(text) => Some(self.reseal(&tx, &active, "key_alt", row_id, text).await?),
                    None => None,
                };
                tx.execute(
                    "UPDATE certificates SET key = $2, key_alt = $3 WHERE id = $1",
                    &[&row_id, &key, &key_alt],
                )
                .await
                .map_err(db_error)?;
                after = row_id;
            }
            tx.commit().await.map_err(db_error)?;
            report.certificates += rows.len() as u64;
            report.batches += 1;
        }
    }

    /// A certificate's column opened and sealed under `active`.
    async fn reseal(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        active: &ActiveKey,
        column: &str,
        row: Uuid,
        stored: String,
    ) -> Result<String, ApiError> {
        let context = context("certificates", column, &row.to_string());
        if sealed_under(&stored) == Some(active.id.as_str()) {
            return Ok(stored);
        }
        let plain = self.keyring.open(&**tx, &context, &stored).await?;
        self.keyring.seal(active, &context, &plain)
    }

    /// Seals every ACME account not under data key `id` under it, one transaction each.
    async fn reseal_accounts(&self, id: &str, report: &mut RotateReport) -> Result<(), ApiError> {
        let pattern = format!("ghenc:v1:{id}:%");
        let client = self.pool.get().await?;
        let keys = client
            .query(
                "SELECT api_uri, account_email FROM acme_accounts \
                 WHERE coalesce(credentials #>> '{}', '') NOT LIKE $1",
                &[&pattern],
            )
            .await
            .map_err(db_error)?;
        drop(client);
        for key in keys {
            let (api_uri, email): (String, String) = (key.get(0), key.get(1));
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            let Some(row) = tx
                .query_opt(
                    "SELECT credentials FROM acme_accounts WHERE api_uri = $1 \
                     AND account_email = $2 FOR UPDATE",
                    &[&api_uri, &email],
                )
                .await
                .map_err(db_error)?
            else {
                continue;
            };
            let context = account_context(&api_uri, &email);
            let plain = self
                .keyring
                .open_json(&*tx, &context, row.get::<_, Value>(0))
                .await?;
            let sealed = self.keyring.seal_json(&*tx, &context, &plain).await?;
            tx.execute(
                "UPDATE acme_accounts SET credentials = $3 WHERE api_uri = $1 \
                 AND account_email = $2",
                &[&api_uri, &email, &sealed],
            )
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            report.accounts += 1;
            report.batches += 1;
        }
        Ok(())
    }

    /// `keyring status`: the KEKs, the data keys and how many values each seals.
    pub(crate) async fn keyring_status(&self) -> Result<Value, ApiError> {
        let client = self.pool.get().await?;
        let active: Option<String> = client
            .query_opt("SELECT data_key_id FROM keyring_active", &[])
            .await
            .map_err(db_error)?
            .map(|r| r.get(0));
        let rows = client
            .query(
                "SELECT k.id, k.kek_id, k.wrapped, k.created_at, \
                 (SELECT count(*) FROM certificates c WHERE c.key LIKE 'ghenc:v1:' || k.id || ':%') \
                 + (SELECT count(*) FROM certificates c \
                    WHERE c.key_alt LIKE 'ghenc:v1:' || k.id || ':%') \
                 + (SELECT count(*) FROM acme_accounts a \
                    WHERE a.credentials #>> '{}' LIKE 'ghenc:v1:' || k.id || ':%') \
                 FROM keyring_data_keys k ORDER BY k.id",
                &[],
            )
            .await
            .map_err(db_error)?;
        let data_keys: Vec<Value> = rows
            .iter()
            .map(|row| {
                let id: String = row.get(0);
                let opens = self
                    .keyring
                    .unwrap_data_key(&id, row.get(1), row.get(2))
                    .map(|_| Value::Bool(true))
                    .unwrap_or_else(Value::String);
                json!({
                    "id": id,
                    "kek": row.get::<_, String>(1),
                    "created_at": row.get::<_, i64>(3),
                    "active": active.as_deref() == Some(id.as_str()),
                    "values": row.get::<_, i64>(4),
                    "opens": opens,
                })
            })
            .collect();
        let clear: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM certificates WHERE key NOT LIKE 'ghenc:%') \
                 + (SELECT count(*) FROM certificates WHERE key_alt NOT LIKE 'ghenc:%') \
                 + (SELECT count(*) FROM acme_accounts \
                    WHERE coalesce(credentials #>> '{}', '') NOT LIKE 'ghenc:%')",
                &[],
            )
            .await
            .map_err(db_error)?
            .get(0);
        Ok(json!({
            "keks": self.keyring.kek_ids(),
            "active_data_key": active,
            "data_keys": data_keys,
            "values_in_clear": clear,
            "checked_at": unix_now(),
        }))
    }
}

async fn insert_data_key(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
    kek: &str,
    wrapped: &str,
) -> Result<(), ApiError> {
    tx.execute(
        "INSERT INTO keyring_data_keys (id, kek_id, wrapped, created_at) VALUES ($1, $2, $3, $4)",
        &[&id, &kek, &wrapped, &unix_now()],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}
