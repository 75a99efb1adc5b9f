//! The audit trail: one `audit_log` row per committed Admin API write, inserted in the write's
//! own transaction, and a log line once it committed.
//!
//! Who made the write travels with the request's task ([`Actor::scope`], set by the Admin
//! API's authentication layer); a write made outside any request (the control plane's own
//! work) is attributed to [`Actor::internal`]. A row holds who, from where, which request,
//! which entity and the config version it produced: never a request body, so never a key.

use std::future::Future;
use std::net::SocketAddr;

use serde_json::{Value, json};
use uuid::Uuid;

use super::query::{decode_id_offset, encode_offset};
use super::{ListQuery, Page, Store, Transaction, db_error, now};
use crate::error::ApiError;

tokio::task_local! {
    static ACTOR: Actor;
}

/// Who is writing, and through which request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Actor {
    /// The credential's name, `anonymous`, or `gatehouse` for the control plane itself.
    pub(crate) name: String,
    /// The credential, when one authenticated the request.
    pub(crate) credential_id: Option<Uuid>,
    /// How: `token`, `certificate`, `none` (authentication off) or `internal`.
    pub(crate) auth: &'static str,
    /// The client's address.
    pub(crate) remote_addr: Option<SocketAddr>,
    /// The request's method and path (no query: it is not needed to tell what changed).
    pub(crate) method: String,
    pub(crate) path: String,
}

/// What a write did to which entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// `POST`, or a `PUT` that created.
    Create,
    /// `PATCH`.
    Update,
    /// A `PUT` that replaced.
    Replace,
    /// `DELETE`.
    Delete,
}

/// A recorded write, logged once its transaction committed ([`Recorded::log`]).
#[derive(Debug)]
#[must_use = "log the write once it committed"]
pub(crate) struct Recorded {
    actor: Actor,
    action: Action,
    entity: &'static str,
    entity_id: Option<Uuid>,
    config_version: Option<i64>,
}

/// Filters of `GET /audit`.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditFilter {
    /// Only rows of this actor.
    pub(crate) actor: Option<String>,
    /// Only rows about this collection.
    pub(crate) entity: Option<String>,
    /// Only rows about this entity.
    pub(crate) entity_id: Option<Uuid>,
}

// === impl Actor ===

impl Actor {
    /// The control plane itself, for writes no request asked for.
    pub(crate) fn internal() -> Self {
        Self {
            name: "gatehouse".to_owned(),
            credential_id: None,
            auth: "internal",
            remote_addr: None,
            method: String::new(),
            path: String::new(),
        }
    }

    /// Runs `work` with `self` as the actor of every write it makes.
    pub(crate) fn scope<F: Future>(self, work: F) -> impl Future<Output = F::Output> {
        ACTOR.scope(self, work)
    }

    /// The actor of the current task.
    fn current() -> Self {
        ACTOR
            .try_with(Clone::clone)
            .unwrap_or_else(|_| Self::internal())
    }
}

// === impl Action ===

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Replace => "replace",
            Self::Delete => "delete",
        }
    }
}

// === impl Recorded ===

impl Recorded {
    /// The audit log line: after the commit, so that it never tells of a write that did not
    /// happen.
    pub(crate) fn log(self) {
        let Self {
            actor,
            action,
            entity,
            entity_id,
            config_version,
        } = self;
        tracing::info!(
            target: "gatehouse_cp::audit",
            actor = %actor.name,
            auth = actor.auth,
            remote_addr = actor.remote_addr.map(|a| a.to_string()).unwrap_or_default(),
            method = %actor.method,
            path = %actor.path,
            action = action.as_str(),
            entity,
            entity_id = entity_id.map(|id| id.to_string()).unwrap_or_default(),
            config_version = config_version.unwrap_or_default(),
            "admin write"
        );
    }
}

/// Inserts the audit row of a write into its transaction.
pub(super) async fn record(
    tx: &Transaction<'_>,
    action: Action,
    entity: &'static str,
    entity_id: Option<Uuid>,
    config_version: Option<i64>,
) -> Result<Recorded, ApiError> {
    let actor = Actor::current();
    tx.execute(
        "INSERT INTO audit_log (id, created_at, actor, credential_id, auth, remote_addr, \
         method, path, action, entity, entity_id, config_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        &[
            &Uuid::now_v7(),
            &now(),
            &actor.name,
            &actor.credential_id,
            &actor.auth,
            &actor.remote_addr.map(|a| a.to_string()),
            &actor.method,
            &actor.path,
            &action.as_str(),
            &entity,
            &entity_id,
            &config_version,
        ],
    )
    .await
    .map_err(db_error)?;
    Ok(Recorded {
        actor,
        action,
        entity,
        entity_id,
        config_version,
    })
}

impl Store {
    /// A page of the audit trail, oldest first (keyset pagination by id, which is time
    /// ordered).
    pub(crate) async fn audit(
        &self,
        filter: &AuditFilter,
        query: &ListQuery,
    ) -> Result<Page, ApiError> {
        let after = query.offset.as_deref().map(decode_id_offset).transpose()?;
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, created_at, actor, credential_id, auth, remote_addr, method, path, \
                 action, entity, entity_id, config_version FROM audit_log \
                 WHERE ($1::uuid IS NULL OR id > $1) \
                   AND ($2::text IS NULL OR actor = $2) \
                   AND ($3::text IS NULL OR entity = $3) \
                   AND ($4::uuid IS NULL OR entity_id = $4) \
                 ORDER BY id LIMIT $5",
                &[
                    &after,
                    &filter.actor,
                    &filter.entity,
                    &filter.entity_id,
                    &(query.size + 1),
                ],
            )
            .await
            .map_err(db_error)?;
        let more = rows.len() as i64 > query.size;
        let rows = &rows[..rows.len().min(query.size as usize)];
        let offset = match rows.last() {
            Some(last) if more => Some(encode_offset(&[last.get::<_, Uuid>(0).to_string()])),
            _ => None,
        };
        let data = rows
            .iter()
            .map(|row| {
                json!({
                    "id": row.get::<_, Uuid>(0),
                    "created_at": row.get::<_, f64>(1),
                    "actor": row.get::<_, String>(2),
                    "credential_id": row.get::<_, Option<Uuid>>(3),
                    "auth": row.get::<_, String>(4),
                    "remote_addr": row.get::<_, Option<String>>(5),
                    "method": row.get::<_, String>(6),
                    "path": row.get::<_, String>(7),
                    "action": row.get::<_, String>(8),
                    "entity": row.get::<_, String>(9),
                    "entity_id": row.get::<_, Option<Uuid>>(10),
                    "config_version": row.get::<_, Option<i64>>(11),
                })
            })
            .collect::<Vec<Value>>();
        Ok(Page { data, offset })
    }
}
