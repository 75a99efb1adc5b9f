//! Reading the whole configuration at one config version, for snapshots.

use std::collections::HashMap;

use serde_json::{Map, Value};
use uuid::Uuid;

use gatehouse_shared::entities::{COLLECTIONS, CONTROL_PLANE_PLUGINS};

use super::entity::{base_schema, from_row, select_expr};
use super::ocsp_staples::{Slot, export_staples};
use super::{Store, db_error};
use crate::error::ApiError;

/// Every entity of the configuration as the Admin API shows it, at one config version.
#[derive(Debug, Clone)]
pub(crate) struct Export {
    /// The config version the rows belong to.
    pub(crate) version: i64,
    /// `{"services": [...], "routes": [...], ...}`, every list ordered by id.
    pub(crate) collections: Map<String, Value>,
    /// The OCSP staples of that version: `(certificate, chain)` → (SHA-256 of the leaf they
    /// are about, OCSPResponse DER).
    pub(crate) ocsp_staples: HashMap<(Uuid, Slot), (String, Vec<u8>)>,
}

impl Store {
    /// Reads the config version and every entity in one read-only REPEATABLE READ transaction,
    /// so the rows are exactly those of that version even while writers commit.
    ///
    /// Returns `None`, having read nothing else, when the version is not newer than `after`
    /// (the version already published).
    pub(crate) async fn export(&self, after: Option<i64>) -> Result<Option<Export>, ApiError> {
        let mut client = self.pool.get().await?;
        let (tx, version) = Self::begin_snapshot(&mut client).await?;
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
            let mut items: Vec<Value> = Vec::with_capacity(rows.len());
            for row in &rows {
                let mut entity = from_row(schema, row.get(0));
                self.keyring
                    .open_entity(&*tx, collection, &mut entity)
                    .await?;
                if *collection == "certificates" {
                    self.secrets.resolve_entity(&mut entity)?;
                }
                items.push(entity);
            }
            if *collection == "plugins" {
                // Plugins the control plane runs never travel to data planes (an older data
                // plane would refuse the unknown name; the config holds account keys): the
                // snapshot carries what data planes need of them instead.
                items.retain(|plugin| {
                    let name = plugin.get("name").and_then(Value::as_str);
                    if name == Some("acme") {
                        collections.insert("acme_on_demand".into(), acme_on_demand(plugin));
                    }
                    name.is_none_or(|name| !CONTROL_PLANE_PLUGINS.contains(&name))
                });
            }
            collections.insert((*collection).to_owned(), Value::Array(items));
        }
        let rows = tx
            .query(
                "SELECT jsonb_build_object('id', id, 'kind', kind, 'domain', domain, \
                 'token', token, 'key_authorization', key_authorization, \
                 'expires_at', expires_at) FROM acme_challenges ORDER BY id",
                &[],
            )
            .await
            .map_err(db_error)?;
        let challenges = rows.iter().map(|row| row.get::<_, Value>(0)).collect();
        collections.insert("acme_challenges".into(), Value::Array(challenges));
        let ocsp_staples = export_staples(&tx).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(Some(Export {
            version,
            collections,
            ocsp_staples,
        }))
    }
}

/// What data planes need of the `acme` plugin: which names they may ask a certificate for on
/// demand (`null` when the plugin is disabled or allows no name).
fn acme_on_demand(plugin: &Value) -> Value {
    let enabled = plugin.get("enabled").and_then(Value::as_bool) == Some(true);
    let config = plugin.get("config");
    let allow_any_domain = config
        .and_then(|c| c.get("allow_any_domain"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let domains: Vec<Value> = config
        .and_then(|c| c.get("domains"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !enabled || (!allow_any_domain && domains.is_empty()) {
        return Value::Null;
    }
    serde_json::json!({ "allow_any_domain": allow_any_domain, "domains": domains })
}
