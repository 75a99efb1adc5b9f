//! ACME state (`acme_accounts`, `acme_names`, `acme_challenges`, migration V6): accounts, the
//! names the control plane keeps certificates for with their failures and backoff, the lease
//! that makes one replica order a name at a time, and the pending challenges. Only adding or
//! removing challenges is configuration (they travel in the snapshot): that bumps the version.

use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use super::keyring::account_context;
use super::{Store, bump_version, db_error};
use crate::error::ApiError;

/// Columns of `acme_names` joined with its certificate, in [`AcmeName::from_row`]'s order.
const NAME_COLUMNS: &str = "n.host, n.certificate_id, n.requested_by, n.failures, n.last_error, \
     n.last_attempt_at, n.last_success_at, n.next_attempt_at, c.cert, c.not_after, n.renew_after";

/// One name the control plane keeps an ACME certificate for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AcmeName {
    /// The host name.
    pub(crate) host: String,
    /// Its certificate (an ordinary `certificates` row), once issued.
    pub(crate) certificate_id: Option<Uuid>,
    /// `admin`, `on-demand`.
    pub(crate) requested_by: String,
    /// Failed attempts since the last success.
    pub(crate) failures: i32,
    /// Why the last attempt failed.
    pub(crate) last_error: Option<String>,
    /// Last attempt, Unix seconds.
    pub(crate) last_attempt_at: Option<i64>,
    /// Last issuance, Unix seconds.
    pub(crate) last_success_at: Option<i64>,
    /// No attempt before this (backoff), Unix seconds.
    pub(crate) next_attempt_at: i64,
    /// The certificate chain (PEM), once issued.
    pub(crate) cert: Option<String>,
    /// Its end of validity, Unix seconds.
    pub(crate) not_after: Option<i64>,
    /// Renew from this time on (set by `PATCH /acme`), Unix seconds.
    pub(crate) renew_after: Option<i64>,
}

/// A challenge to publish.
#[derive(Debug, Clone)]
pub(crate) struct NewChallenge {
    /// Its id.
    pub(crate) id: Uuid,
    /// `http-01` or `tls-alpn-01`.
    pub(crate) kind: &'static str,
    /// The name validated.
    pub(crate) domain: String,
    /// The token.
    pub(crate) token: String,
    /// `token.thumbprint`.
    pub(crate) key_authorization: String,
    /// When it is no longer needed, Unix seconds.
    pub(crate) expires_at: i64,
}

// === impl AcmeName ===

impl AcmeName {
    fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            host: row.try_get(0)?,
            certificate_id: row.try_get(1)?,
            requested_by: row.try_get(2)?,
            failures: row.try_get(3)?,
            last_error: row.try_get(4)?,
            last_attempt_at: row.try_get(5)?,
            last_success_at: row.try_get(6)?,
            next_attempt_at: row.try_get(7)?,
            cert: row.try_get(8)?,
            not_after: row.try_get(9)?,
            renew_after: row.try_get(10)?,
        })
    }
}

// === impl Store ===

impl Store {
    /// The `acme` plugin's row (`config`, `enabled`), if one is configured.
    pub(crate) async fn acme_plugin(&self) -> Result<Option<(Value, bool)>, ApiError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT config, enabled FROM plugins WHERE name = 'acme' ORDER BY id LIMIT 1",
                &[],
            )
            .await
            .map_err(db_error)?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    /// The stored credentials of the account of `email` at `api_uri`.
    pub(crate) async fn acme_account(
        &self,
        api_uri: &str,
        email: &str,
    ) -> Result<Option<Value>, ApiError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT credentials FROM acme_accounts WHERE api_uri = $1 AND account_email = $2",
                &[&api_uri, &email],
            )
            .await
            .map_err(db_error)?;
        match row {
            Some(row) => Ok(Some(
                self.keyring
                    .open_json(&**client, &account_context(api_uri, email), row.get(0))
                    .await?,
            )),
            None => Ok(None),
        }
    }

    /// Stores an account's credentials unless another replica stored one first; returns the
    /// credentials that are now stored (one account per directory and e-mail).
    pub(crate) async fn save_acme_account(
        &self,
        api_uri: &str,
        email: &str,
        credentials: &Value,
        now: i64,
    ) -> Result<Value, ApiError> {
        let context = account_context(api_uri, email);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let sealed = self.keyring.seal_json(&*tx, &context, credentials).await?;
        tx.execute(
            "INSERT INTO acme_accounts (api_uri, account_email, credentials, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&api_uri, &email, &sealed, &now],
        )
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        let row = client
            .query_one(
                "SELECT credentials FROM acme_accounts WHERE api_uri = $1 AND account_email = $2",
                &[&api_uri, &email],
            )
            .await
            .map_err(db_error)?;
        self.keyring
            .open_json(&**client, &context, row.get(0))
            .await
    }

    /// Records that a certificate is wanted for `host`; returns whether the name is new.
    /// Asking again for a known name changes nothing (fleet-wide deduplication).
    pub(crate) async fn acme_want(
        &self,
        host: &str,
        requested_by: &str,
        now: i64,
    ) -> Result<bool, ApiError> {
        let client = self.pool.get().await?;
        let inserted = client
            .execute(
                "INSERT INTO acme_names (host, requested_by, created_at, updated_at) \
                 VALUES ($1, $2, $3, $3) ON CONFLICT (host) DO NOTHING",
                &[&host, &requested_by, &now],
            )
            .await
            .map_err(db_error)?;
        Ok(inserted == 1)
    }

    /// How many names were first requested by `requested_by` since `since`.
    pub(crate) async fn acme_requested_since(
        &self,
        requested_by: &str,
        since: i64,
    ) -> Result<i64, ApiError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM acme_names WHERE requested_by = $1 AND created_at >= $2",
                &[&requested_by, &since],
            )
            .await
            .map_err(db_error)?;
        Ok(row.get(0))
    }

    /// Every name, ordered by host.
    pub(crate) async fn acme_names(&self) -> Result<Vec<AcmeName>, ApiError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {NAME_COLUMNS} FROM acme_names n \
                     LEFT JOIN certificates c ON c.id = n.certificate_id ORDER BY n.host"
                ),
                &[],
            )
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(AcmeName::from_row)
            .collect::<Result<_, _>>()
            .map_err(db_error)
    }

    /// One name.
    pub(crate) async fn acme_name(&self, host: &str) -> Result<Option<AcmeName>, ApiError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {NAME_COLUMNS} FROM acme_names n \
                     LEFT JOIN certificates c ON c.id = n.certificate_id WHERE n.host = $1"
                ),
                &[&host],
            )
            .await
            .map_err(db_error)?;
        row.as_ref()
            .map(AcmeName::from_row)
            .transpose()
            .map_err(db_error)
    }

    /// Asks for every issued name to be renewed now (`PATCH /acme`).
    pub(crate) async fn acme_renew_all(&self, now: i64) -> Result<u64, ApiError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE acme_names SET renew_after = $1, next_attempt_at = 0, updated_at = $1 \
                 WHERE certificate_id IS NOT NULL",
                &[&now],
            )
            .await
            .map_err(db_error)
    }

    /// Takes the lease of `host` for `owner` until `until`, unless another owner holds an
    /// unexpired one. Returns whether it is now `owner`'s.
    pub(crate) async fn acme_lease(
        &self,
        host: &str,
        owner: Uuid,
        now: i64,
        until: i64,
    ) -> Result<bool, ApiError> {
        let client = self.pool.get().await?;
        let taken = client
            .execute(
                "UPDATE acme_names SET lease_owner = $2, lease_expires_at = $4 \
                 WHERE host = $1 AND (lease_owner IS NULL OR lease_owner = $2 \
                 OR lease_expires_at < $3)",
                &[&host, &owner, &now, &until],
            )
            .await
            .map_err(db_error)?;
        Ok(taken == 1)
    }

    /// Ends an attempt of `owner` on `host`: drops its challenges (bumping the config version
    /// if there were any), records the outcome and releases the lease.
    pub(crate) async fn acme_finish(
        &self,
        host: &str,
        owner: Uuid,
        outcome: Outcome<'_>,
        now: i64,
    ) -> Result<(), ApiError> {
        let mut client = self.pool.get().await?;
        let tx = Self::begin(&mut client).await?;
        let removed = tx
            .execute("DELETE FROM acme_challenges WHERE host = $1", &[&host])
            .await
            .map_err(db_error)?;
        if removed > 0 {
            bump_version(&tx).await?;
        }
        match outcome {
            Outcome::Issued { certificate_id } => {
                tx.execute(
                    "UPDATE acme_names SET certificate_id = $2, failures = 0, last_error = NULL, \
                     last_attempt_at = $3, last_success_at = $3, next_attempt_at = 0, \
                     renew_after = NULL, order_url = NULL, updated_at = $3 \
                     WHERE host = $1",
                    &[&host, &certificate_id, &now],
                )
                .await
                .map_err(db_error)?;
            }
            Outcome::Failed { error, retry_at } => {
                tx.execute(
                    "UPDATE acme_names SET failures = failures + 1, last_error = $2, \
                     last_attempt_at = $3, next_attempt_at = $4, order_url = NULL, \
                     updated_at = $3 WHERE host = $1",
                    &[&host, &error, &now, &retry_at],
                )
                .await
                .map_err(db_error)?;
            }
        }
        tx.execute(
            "UPDATE acme_names SET lease_owner = NULL, lease_expires_at = NULL \
             WHERE host = $1 AND lease_owner = $2",
            &[&host, &owner],
        )
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }

    /// Records the order being worked on for `host` (visible while it runs).
    pub(crate) async fn acme_order_started(
        &self,
        host: &str,
        order_url: &str,
    ) -> Result<(), ApiError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE acme_names SET order_url = $2 WHERE host = $1",
                &[&host, &order_url],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Publishes challenges for `host`: one transaction that also bumps the config version,
    /// which it returns.
    pub(crate) async fn acme_publish(
        &self,
        host: &str,
        challenges: &[NewChallenge],
    ) -> Result<i64, ApiError> {
        let mut client = self.pool.get().await?;
        let tx = Self::begin(&mut client).await?;
        for challenge in challenges {
            tx.execute(
                "INSERT INTO acme_challenges \
                 (id, host, kind, domain, token, key_authorization, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &challenge.id,
                    &host,
                    &challenge.kind,
                    &challenge.domain,
                    &challenge.token,
                    &challenge.key_authorization,
                    &challenge.expires_at,
                ],
            )
            .await
            .map_err(db_error)?;
        }
        let version = bump_version(&tx).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(version)
    }

    /// Removes published challenges by id (bumping the config version if any was there).
    pub(crate) async fn acme_unpublish(&self, ids: &[Uuid]) -> Result<(), ApiError> {
        let mut client = self.pool.get().await?;
        let tx = Self::begin(&mut client).await?;
        let removed = tx
            .execute("DELETE FROM acme_challenges WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(db_error)?;
        if removed > 0 {
            bump_version(&tx).await?;
        }
        tx.commit().await.map_err(db_error)
    }

    /// Drops challenges past their expiry whose lease is gone (a replica died mid-order);
    /// bumps the config version when it removed any.
    pub(crate) async fn acme_sweep(&self, now: i64) -> Result<u64, ApiError> {
        let mut client = self.pool.get().await?;
        let tx = Self::begin(&mut client).await?;
        let removed = tx
            .execute(
                "DELETE FROM acme_challenges ch WHERE ch.expires_at < $1 AND NOT EXISTS \
                 (SELECT 1 FROM acme_names n WHERE n.host = ch.host \
                 AND n.lease_owner IS NOT NULL AND n.lease_expires_at >= $1)",
                &[&now],
            )
            .await
            .map_err(db_error)?;
        if removed > 0 {
            bump_version(&tx).await?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(removed)
    }

    /// Whether every connected data plane runs `version` or a later one (lease: how recent a
    /// registry row must be to count as connected).
    pub(crate) async fn applied_everywhere(
        &self,
        version: i64,
        now: i64,
        lease: i64,
    ) -> Result<bool, ApiError> {
        let planes = self.data_planes().await?;
        Ok(planes
            .iter()
            .filter(|dp| dp.is_connected(now, lease))
            .all(|dp| dp.config_version.is_some_and(|v| v >= version)))
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome<'a> {
    /// A certificate was stored.
    Issued {
        /// Its id.
        certificate_id: Uuid,
    },
    /// It failed; retry no sooner than `retry_at`.
    Failed {
        /// Why (no secret in it).
        error: &'a str,
        /// Unix seconds.
        retry_at: i64,
    },
}
