//! Bootstrap tokens (`cluster_tokens`) and data-plane certificates (`cluster_certificates`):
//! what enrolment, renewal and revocation read and write. See migration V7.

use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use super::audit::{self, Action};
use super::{Store, db_error};
use crate::error::ApiError;

/// Columns of a token row, in the order [`Token::from_row`] reads them.
const TOKEN_COLUMNS: &str =
    "id, max_uses, uses, labels, expires_at, revoked_at, last_used_at, created_at";

/// A bootstrap token as stored (its secret is not: only its hash).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub(crate) id: Uuid,
    pub(crate) max_uses: i32,
    pub(crate) uses: i32,
    /// A JSON object of strings.
    pub(crate) labels: Value,
    pub(crate) expires_at: i64,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) last_used_at: Option<i64>,
    pub(crate) created_at: i64,
}

/// A certificate issued to a data plane, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IssuedCert<'a> {
    pub(crate) serial: &'a str,
    pub(crate) node_id: Uuid,
    pub(crate) spiffe_id: &'a str,
    pub(crate) issuer: &'a str,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) token_id: Option<Uuid>,
}

// === impl Token ===

impl Token {
    fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get(0)?,
            max_uses: row.try_get(1)?,
            uses: row.try_get(2)?,
            labels: row.try_get(3)?,
            expires_at: row.try_get(4)?,
            revoked_at: row.try_get(5)?,
            last_used_at: row.try_get(6)?,
            created_at: row.try_get(7)?,
        })
    }

    /// Why the token cannot be used at `now`, if it cannot.
    pub(crate) fn unusable(&self, now: i64) -> Option<&'static str> {
        if self.revoked_at.is_some() {
            Some("revoked")
        } else if self.expires_at <= now {
            Some("expired")
        } else if self.uses >= self.max_uses {
            Some("used up")
        } else {
            None
        }
    }
}

// === impl Store ===

impl Store {
    /// Stores a new token by the hash of its secret.
    pub(crate) async fn create_token(&self, token: &Token, hash: &str) -> Result<(), ApiError> {
        let mut client = self.pool.get().await?;
        let tx = Store::begin(&mut client).await?;
        tx.execute(
            "INSERT INTO cluster_tokens (id, token_hash, max_uses, uses, labels, expires_at, \
             created_at) VALUES ($1, $2, $3, 0, $4, $5, $6)",
            &[
                &token.id,
                &hash,
                &token.max_uses,
                &token.labels,
                &token.expires_at,
                &token.created_at,
            ],
        )
        .await
        .map_err(db_error)?;
        let recorded =
            audit::record(&tx, Action::Create, "cluster_tokens", Some(token.id), None).await?;
        tx.commit().await.map_err(db_error)?;
        recorded.log();
        Ok(())
    }

    /// Every token, newest first.
    pub(crate) async fn tokens(&self) -> Result<Vec<Token>, ApiError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("SELECT {TOKEN_COLUMNS} FROM cluster_tokens ORDER BY created_at DESC, id"),
                &[],
            )
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| Token::from_row(row).map_err(db_error))
            .collect()
    }

    /// One token.
    pub(crate) async fn token(&self, id: Uuid) -> Result<Option<Token>, ApiError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {TOKEN_COLUMNS} FROM cluster_tokens WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(db_error)?;
        row.map(|row| Token::from_row(&row).map_err(db_error))
            .transpose()
    }

    /// Revokes a token (it stays listed). Returns whether it exists.
    pub(crate) async fn revoke_token(&self, id: Uuid, now: i64) -> Result<bool, ApiError> {
        let mut client = self.pool.get().await?;
        let tx = Store::begin(&mut client).await?;
        let found = tx
            .execute(
                "UPDATE cluster_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
                &[&id, &now],
            )
            .await
            .map_err(db_error)?;
        let recorded = match found {
            0 => None,
            _ => Some(audit::record(&tx, Action::Update, "cluster_tokens", Some(id), None).await?),
        };
        tx.commit().await.map_err(db_error)?;
        if let Some(recorded) = recorded {
            recorded.log();
        }
        Ok(found > 0)
    }

    /// Uses the token whose secret hashes to `hash`, if it is usable at `now`: one atomic
    /// UPDATE, so concurrent enrolments on any replicas never use it more than `max_uses`
    /// times. Returns the used token, or `Err(reason)` naming why it is refused (for the log).
    pub(crate) async fn use_token(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Result<Token, &'static str>, ApiError> {
        let client = self.pool.get().await?;
        let used = client
            .query_opt(
                &format!(
                    "UPDATE cluster_tokens SET uses = uses + 1, last_used_at = $2 \
                     WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2 \
                     AND uses < max_uses RETURNING {TOKEN_COLUMNS}"
                ),
                &[&hash, &now],
            )
            .await
            .map_err(db_error)?;
        if let Some(row) = used {
            return Ok(Ok(Token::from_row(&row).map_err(db_error)?));
        }
        let found = client
            .query_opt(
                &format!("SELECT {TOKEN_COLUMNS} FROM cluster_tokens WHERE token_hash = $1"),
                &[&hash],
            )
            .await
            .map_err(db_error)?;
        let reason = match found {
            Some(row) => Token::from_row(&row)
                .map_err(db_error)?
                .unusable(now)
                .unwrap_or("used up"),
            None => "unknown",
        };
        Ok(Err(reason))
    }

    /// Records a certificate issued to a data plane.
    pub(crate) async fn record_certificate(
        &self,
        cert: &IssuedCert<'_>,
        now: i64,
    ) -> Result<(), ApiError> {
        let client = self.pool.get().await?;
        insert_certificate(&**client, cert, now).await
    }

    /// Records a renewal of the certificate `prior`, unless `prior` is revoked by now: returns
    /// whether it was recorded. A per-node advisory lock orders it with
    /// [`Store::revoke_node_certificates`], so a renewal racing a revocation is either refused
    /// or revoked with the rest.
    pub(crate) async fn record_renewal(
        &self,
        cert: &IssuedCert<'_>,
        prior: &str,
        now: i64,
    ) -> Result<bool, ApiError> {
        let mut client = self.pool.get().await?;
        let tx = Store::begin(&mut client).await?;
        lock_node(&tx, cert.node_id).await?;
        let revoked = tx
            .query_opt(
                "SELECT 1 FROM cluster_certificates WHERE serial = $1 AND revoked_at IS NOT NULL",
                &[&prior],
            )
            .await
            .map_err(db_error)?;
        if revoked.is_some() {
            return Ok(false);
        }
        insert_certificate(&*tx, cert, now).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(true)
    }

    /// Whether the certificate with this serial is revoked.
    pub(crate) async fn is_revoked(&self, serial: &str) -> Result<bool, ApiError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT 1 FROM cluster_certificates WHERE serial = $1 AND revoked_at IS NOT NULL",
                &[&serial],
            )
            .await
            .map_err(db_error)?;
        Ok(row.is_some())
    }

    /// Serials of the revoked certificates not yet expired at `now`.
    pub(crate) async fn revoked_serials(&self, now: i64) -> Result<Vec<String>, ApiError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT serial FROM cluster_certificates \
                 WHERE revoked_at IS NOT NULL AND not_after > $1",
                &[&now],
            )
            .await
            .map_err(db_error)?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Revokes every certificate of data plane `node`: those the CA issued to it, and with
    /// `registry_cert` the one its registry row last showed (`pki init` certificates included).
    /// Returns how many.
    pub(crate) async fn revoke_node_certificates(
        &self,
        node: Uuid,
        registry_cert: bool,
        now: i64,
    ) -> Result<u64, ApiError> {
        let mut client = self.pool.get().await?;
        let tx = Store::begin(&mut client).await?;
        lock_node(&tx, node).await?;
        if registry_cert {
            tx.execute(
            "INSERT INTO cluster_certificates (serial, node_id, spiffe_id, issuer, not_after, \
             created_at, revoked_at) \
             SELECT cert_serial, id, spiffe_id, cert_issuer, \
             COALESCE(cert_expiry, $2::bigint + 315360000), $2::bigint, $2::bigint FROM data_planes WHERE id = $1 AND cert_serial IS NOT NULL \
             ON CONFLICT (serial) DO NOTHING",
                &[&node, &now],
            )
            .await
            .map_err(db_error)?;
        }
        let revoked = tx
            .execute(
                "UPDATE cluster_certificates SET revoked_at = COALESCE(revoked_at, $2) \
                 WHERE node_id = $1",
                &[&node, &now],
            )
            .await
            .map_err(db_error)?;
        let recorded = audit::record(
            &tx,
            Action::Update,
            "cluster_certificates",
            Some(node),
            None,
        )
        .await?;
        tx.commit().await.map_err(db_error)?;
        recorded.log();
        Ok(revoked)
    }
}

/// The latest renew-now requests: for every data plane, and per data plane (Unix
/// milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RenewalRequests {
    /// The latest request for every data plane; 0 when none.
    pub(crate) all: i64,
    /// The latest request per data plane.
    pub(crate) nodes: std::collections::HashMap<Uuid, i64>,
}

impl RenewalRequests {
    /// The latest request that concerns data plane `node`; 0 when none.
    pub(crate) fn for_node(&self, node: Uuid) -> i64 {
        self.nodes.get(&node).copied().unwrap_or(0).max(self.all)
    }
}

impl Store {
    /// Asks data plane `node` (every data plane with `None`) to renew its certificate now,
    /// recorded (with its audit row) for every replica to act on.
    pub(crate) async fn request_renewal(
        &self,
        node: Option<Uuid>,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let mut client = self.pool.get().await?;
        let tx = Store::begin(&mut client).await?;
        tx.execute(
            "INSERT INTO cluster_renewal_requests (node_id, requested_at_ms) VALUES ($1, $2)",
            &[&node, &now_ms],
        )
        .await
        .map_err(db_error)?;
        let recorded =
            audit::record(&tx, Action::Update, "cluster_certificates", node, None).await?;
        tx.commit().await.map_err(db_error)?;
        recorded.log();
        Ok(())
    }

    /// The latest renew-now requests.
    pub(crate) async fn renewal_requests(&self) -> Result<RenewalRequests, ApiError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT node_id, max(requested_at_ms) FROM cluster_renewal_requests GROUP BY node_id",
                &[],
            )
            .await
            .map_err(db_error)?;
        let mut requests = RenewalRequests::default();
        for row in rows {
            let at: i64 = row.get(1);
            match row.get::<_, Option<Uuid>>(0) {
                Some(node) => {
                    requests.nodes.insert(node, at);
                }
                None => requests.all = at,
            }
        }
        Ok(requests)
    }
}

/// Serialises the certificate writes of one node until the transaction ends.
async fn lock_node(tx: &tokio_postgres::Transaction<'_>, node: Uuid) -> Result<(), ApiError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('gatehouse-dp-cert:' || $1::text))",
        &[&node.to_string()],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Inserts an issued certificate.
async fn insert_certificate(
    client: &impl tokio_postgres::GenericClient,
    cert: &IssuedCert<'_>,
    now: i64,
) -> Result<(), ApiError> {
    client
        .execute(
            "INSERT INTO cluster_certificates (serial, node_id, spiffe_id, issuer, not_before, \
             not_after, token_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &cert.serial,
                &cert.node_id,
                &cert.spiffe_id,
                &cert.issuer,
                &cert.not_before,
                &cert.not_after,
                &cert.token_id,
                &now,
            ],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}
