//! Listing entities: keyset pagination by id, tag filters, per-collection filters, and the
//! `/tags` view across every collection.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use gatehouse_shared::entities::COLLECTIONS;

use super::entity::{base_schema, from_row, select_expr};
use super::{Parent, Store, db_error, now};
use crate::error::ApiError;

/// How several tags combine in `?tags=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TagFilter {
    /// `a,b`: entities carrying every tag.
    All(Vec<String>),
    /// `a/b`: entities carrying any of the tags.
    Any(Vec<String>),
}

/// A page request.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListQuery {
    /// Rows per page (1..=1000).
    pub(crate) size: i64,
    /// The opaque offset returned by the previous page.
    pub(crate) offset: Option<String>,
    /// Tag filter.
    pub(crate) tags: Option<TagFilter>,
    /// Only certificates and CA certificates whose `not_after` is within this many seconds
    /// from now.
    pub(crate) expiring_within: Option<i64>,
    /// Only consumers with this `custom_id`.
    pub(crate) custom_id: Option<String>,
}

/// One page of results.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    /// Entities of the page.
    pub(crate) data: Vec<Value>,
    /// Offset of the next page, when there is one.
    pub(crate) offset: Option<String>,
}

pub(super) fn decode_offset(offset: &str) -> Result<Vec<String>, ApiError> {
    let invalid = |reason: &str| {
        ApiError::InvalidOffset(format!("'{offset}' is not a valid offset: {reason}"))
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(offset)
        .map_err(|_| invalid("bad base64 encoding"))?;
    let parts = serde_json::from_slice::<Vec<String>>(&bytes)
        .map_err(|_| invalid("bad offset contents"))?;
    // Offsets this API hands out never hold a NUL character (PostgreSQL text cannot).
    if parts.iter().any(|p| p.contains('\0')) {
        return Err(invalid("bad offset contents"));
    }
    Ok(parts)
}

/// The id an id-keyed page offset (`encode_offset(&[id])`) holds.
pub(super) fn decode_id_offset(offset: &str) -> Result<Uuid, ApiError> {
    decode_offset(offset)?
        .first()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| {
            ApiError::InvalidOffset(format!(
                "'{offset}' is not a valid offset: bad offset contents"
            ))
        })
}

pub(super) fn encode_offset(parts: &[String]) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(parts).unwrap_or_default())
}

// === impl Store ===

impl Store {
    /// Lists a collection, optionally under a parent.
    pub(crate) async fn list(
        &self,
        collection: &str,
        parent: Option<&Parent>,
        query: &ListQuery,
    ) -> Result<Page, ApiError> {
        let schema = base_schema(collection)?;
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut clauses: Vec<String> = Vec::new();
        let mut bind = |value: Box<dyn ToSql + Sync + Send>| {
            params.push(value);
            format!("${}", params.len())
        };
        if let Some(offset) = &query.offset {
            let after = decode_id_offset(offset)?;
            clauses.push(format!("t.id > {}", bind(Box::new(after))));
        }
        if let Some(parent) = parent {
            let p = bind(Box::new(parent.id));
            clauses.push(format!("t.\"{}_id\" = {p}", parent.field));
        }
        match &query.tags {
            Some(TagFilter::All(tags)) => {
                clauses.push(format!("t.tags @> {}", bind(Box::new(tags.clone()))));
            }
            Some(TagFilter::Any(tags)) => {
                clauses.push(format!("t.tags && {}", bind(Box::new(tags.clone()))));
            }
            None => {}
        }
        if let (Some(within), "certificates" | "ca_certificates") =
            (query.expiring_within, collection)
        {
            let deadline = (now().floor() as i64).saturating_add(within);
            clauses.push(format!("t.not_after <= {}", bind(Box::new(deadline))));
        }
        if let (Some(custom_id), "consumers") = (&query.custom_id, collection) {
            if custom_id.contains('\0') {
                // No stored custom_id holds a NUL character (PostgreSQL text cannot).
                clauses.push("FALSE".to_owned());
            } else {
                clauses.push(format!(
                    "t.custom_id = {}",
                    bind(Box::new(custom_id.clone()))
                ));
            }
        }
        let limit = bind(Box::new(query.size + 1));
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT {}, t.id FROM \"{collection}\" t {filter} ORDER BY t.id LIMIT {limit}",
            select_expr(collection)
        );
        let client = self.pool.get().await?;
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client.query(&sql, &refs).await.map_err(db_error)?;
        let more = rows.len() as i64 > query.size;
        let rows = &rows[..rows.len().min(query.size as usize)];
        let offset = match rows.last() {
            Some(last) if more => Some(encode_offset(&[last.get::<_, Uuid>(1).to_string()])),
            _ => None,
        };
        let mut data = Vec::with_capacity(rows.len());
        for row in rows {
            let mut entity = from_row(schema, row.get(0));
            self.keyring
                .open_entity(&**client, collection, &mut entity)
                .await?;
            data.push(entity);
        }
        Ok(Page { data, offset })
    }

    /// Lists `{entity_name, entity_id, tag}` rows across every collection, optionally for one
    /// tag.
    pub(crate) async fn tags(
        &self,
        tag: Option<&str>,
        query: &ListQuery,
    ) -> Result<Page, ApiError> {
        let union = COLLECTIONS
            .iter()
            .map(|c| {
                format!("SELECT '{c}'::text AS entity_name, id, unnest(tags) AS tag FROM \"{c}\"")
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let after = match &query.offset {
            Some(offset) => {
                let parts = decode_offset(offset)?;
                match parts.as_slice() {
                    [entity, id, tag] => match Uuid::parse_str(id) {
                        Ok(id) => Some((entity.clone(), id, tag.clone())),
                        Err(_) => None,
                    },
                    _ => None,
                }
                .ok_or_else(|| {
                    ApiError::InvalidOffset(format!(
                        "'{offset}' is not a valid offset: bad offset contents"
                    ))
                })
                .map(Some)?
            }
            None => None,
        };
        let (entity, id, after_tag) = match &after {
            Some((e, i, t)) => (Some(e.clone()), Some(*i), Some(t.clone())),
            None => (None, None, None),
        };
        let sql = format!(
            "SELECT entity_name, id, tag FROM ({union}) x \
             WHERE ($1::text IS NULL OR tag = $1) \
               AND ($2::text IS NULL OR (entity_name, id, tag) > ($2, $3, $4)) \
             ORDER BY entity_name, id, tag LIMIT $5"
        );
        let client = self.pool.get().await?;
        let rows = client
            .query(&sql, &[&tag, &entity, &id, &after_tag, &(query.size + 1)])
            .await
            .map_err(db_error)?;
        let more = rows.len() as i64 > query.size;
        let rows = &rows[..rows.len().min(query.size as usize)];
        let offset = match rows.last() {
            Some(last) if more => Some(encode_offset(&[
                last.get::<_, String>(0),
                last.get::<_, Uuid>(1).to_string(),
                last.get::<_, String>(2),
            ])),
            _ => None,
        };
        let data = rows
            .iter()
            .map(|row| {
                json!({
                    "entity_name": row.get::<_, String>(0),
                    "entity_id": row.get::<_, Uuid>(1),
                    "tag": row.get::<_, String>(2),
                })
            })
            .collect();
        Ok(Page { data, offset })
    }
}
