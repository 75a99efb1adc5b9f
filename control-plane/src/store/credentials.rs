//! Admin API credentials (`admin_credentials`): bearer tokens, kept as the SHA-256 of the
//! secret, and client-certificate subjects, each with a role, an expiry and a revocation time.
//!
//! Every request looks its credential up here (one indexed query): nothing is cached, so a
//! revocation or an expiry takes effect on the very next request, on every replica.

use tokio_postgres::Row;
use uuid::Uuid;

use super::{Store, db_error};
use crate::error::ApiError;

/// How often at most `last_used_at` is written for one credential, in seconds.
const LAST_USED_RESOLUTION: i64 = 60;

const COLUMNS: &str =
    "id, name, kind, role, subject, created_at, expires_at, revoked_at, last_used_at";

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Reads only: `GET`, `HEAD`, `OPTIONS`.
    ReadOnly,
    /// Everything.
    ReadWrite,
}

/// A stored credential (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credential {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    /// `token` or `certificate`.
    pub(crate) kind: String,
    pub(crate) role: Role,
    /// Certificates: the subject name a client certificate must carry.
    pub(crate) subject: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) last_used_at: Option<i64>,
}

/// A credential to create.
#[derive(Debug, Clone)]
pub(crate) struct NewCredential {
    pub(crate) name: String,
    pub(crate) role: Role,
    /// What it is: a token's hash, or a certificate subject.
    pub(crate) secret: NewSecret,
    pub(crate) expires_at: i64,
}

/// The identifying part of a new credential.
#[derive(Debug, Clone)]
pub(crate) enum NewSecret {
    /// SHA-256 of a bearer token.
    TokenHash([u8; 32]),
    /// A client certificate's subject name.
    Subject(String),
}

// === impl Role ===

impl Role {
    /// The stored name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "read-only",
            Self::ReadWrite => "read-write",
        }
    }

    /// Parses a stored or command-line name.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "read-only" => Some(Self::ReadOnly),
            "read-write" => Some(Self::ReadWrite),
            _ => None,
        }
    }
}

// === impl Credential ===

impl Credential {
    fn from_row(row: &Row) -> Result<Self, ApiError> {
        let role: String = row.get(3);
        Ok(Self {
            id: row.get(0),
            name: row.get(1),
            kind: row.get(2),
            role: Role::parse(&role)
                .ok_or_else(|| ApiError::Internal(format!("credential with role {role:?}")))?,
            subject: row.get(4),
            created_at: row.get(5),
            expires_at: row.get(6),
            revoked_at: row.get(7),
            last_used_at: row.get(8),
        })
    }

    /// Whether it authenticates at `now`: not revoked, not expired.
    pub(crate) fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }

    /// `active`, `expired` or `revoked`.
    pub(crate) fn state(&self, now: i64) -> &'static str {
        match (self.revoked_at, now < self.expires_at) {
            (Some(_), _) => "revoked",
            (None, false) => "expired",
            (None, true) => "active",
        }
    }
}

// === impl Store ===

impl Store {
    /// Creates a credential; a taken name is [`ApiError::Unique`].
    pub(crate) async fn create_credential(
        &self,
        new: &NewCredential,
        now: i64,
    ) -> Result<Credential, ApiError> {
        let client = self.pool.get().await?;
        let (kind, hash, subject) = match &new.secret {
            NewSecret::TokenHash(hash) => ("token", Some(hash.to_vec()), None),
            NewSecret::Subject(subject) => ("certificate", None, Some(subject.clone())),
        };
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO admin_credentials (id, name, kind, role, token_hash, subject, \
                     created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     RETURNING {COLUMNS}"
                ),
                &[
                    &Uuid::now_v7(),
                    &new.name,
                    &kind,
                    &new.role.as_str(),
                    &hash,
                    &subject,
                    &now,
                    &new.expires_at,
                ],
            )
            .await
            .map_err(|e| match e.as_db_error().and_then(|db| db.constraint()) {
                Some("admin_credentials_name_key") => {
                    let mut key = serde_json::Map::new();
                    key.insert("name".into(), new.name.clone().into());
                    ApiError::Unique(key)
                }
                _ => db_error(e),
            })?;
        Credential::from_row(&row)
    }

    /// Every credential of `kind`, oldest first.
    pub(crate) async fn credentials(&self, kind: &str) -> Result<Vec<Credential>, ApiError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM admin_credentials WHERE kind = $1 ORDER BY id"),
                &[&kind],
            )
            .await
            .map_err(db_error)?;
        rows.iter().map(Credential::from_row).collect()
    }

    /// Revokes the credential of `kind` named `name_or_id`; `None` when there is none.
    /// Revoking twice keeps the first revocation time.
    pub(crate) async fn revoke_credential(
        &self,
        kind: &str,
        name_or_id: &str,
        now: i64,
    ) -> Result<Option<Credential>, ApiError> {
        let client = self.pool.get().await?;
        let id = Uuid::parse_str(name_or_id).ok();
        let row = client
            .query_opt(
                &format!(
                    "UPDATE admin_credentials SET revoked_at = COALESCE(revoked_at, $3) \
                     WHERE kind = $1 AND (name = $2 OR id = $4) RETURNING {COLUMNS}"
                ),
                &[&kind, &name_or_id, &now, &id],
            )
            .await
            .map_err(db_error)?;
        row.as_ref().map(Credential::from_row).transpose()
    }

    /// The token credential whose secret hashes to `hash`, whatever its state.
    pub(crate) async fn token_credential(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<Credential>, ApiError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM admin_credentials \
                     WHERE kind = 'token' AND token_hash = $1"
                ),
                &[&hash.as_slice()],
            )
            .await
            .map_err(db_error)?;
        row.as_ref().map(Credential::from_row).transpose()
    }

    /// The active certificate credential for one of `subjects` (a client certificate's SANs
    /// and CN) at `now`, the oldest when several match.
    pub(crate) async fn certificate_credential(
        &self,
        subjects: &[String],
        now: i64,
    ) -> Result<Option<Credential>, ApiError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM admin_credentials \
                     WHERE kind = 'certificate' AND subject = ANY($1) \
                       AND revoked_at IS NULL AND expires_at > $2 \
                     ORDER BY id LIMIT 1"
                ),
                &[&subjects, &now],
            )
            .await
            .map_err(db_error)?;
        row.as_ref().map(Credential::from_row).transpose()
    }

    /// Notes that `credential` authenticated a request at `now` (at most once a minute).
    pub(crate) async fn credential_used(
        &self,
        credential: &Credential,
        now: i64,
    ) -> Result<(), ApiError> {
        if credential
            .last_used_at
            .is_some_and(|at| now - at < LAST_USED_RESOLUTION)
        {
            return Ok(());
        }
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE admin_credentials SET last_used_at = $2 WHERE id = $1",
                &[&credential.id, &now],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
