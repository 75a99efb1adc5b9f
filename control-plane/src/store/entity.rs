//! Generic create / read / update / upsert / delete of entities, driven by the shared schemas.

use serde_json::{Map, Value, json};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use gatehouse_shared::checks;
use gatehouse_shared::entities::{self, KNOWN_PLUGINS};
use gatehouse_shared::schema::{Access, FieldErrors, Schema, Type};

use super::audit::{self, Action};
use super::{Store, Transaction, bump_version, db_error, now};
use crate::error::ApiError;
use crate::keyring::Keyring;

/// How an entity is named in a URL: by id, or by its endpoint key (name, username, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selector {
    /// A UUID.
    Id(Uuid),
    /// The endpoint key's value.
    Key(String),
}

/// The parent of a nested endpoint (`/services/{s}/routes`): the child's foreign-key field
/// and the parent's id.
#[derive(Debug, Clone)]
pub(crate) struct Parent {
    /// The child's field referencing the parent (`service`).
    pub(crate) field: &'static str,
    /// The parent's id.
    pub(crate) id: Uuid,
}

/// What a write does with an existing row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    Create,
    Replace,
    Patch,
}

/// A Postgres-quoted identifier; identifiers come from the static schemas only.
fn ident(name: &str) -> String {
    format!("\"{name}\"")
}

/// The column holding a field.
pub(super) fn column(field: &gatehouse_shared::schema::Field) -> String {
    match field.ty {
        Type::Foreign(_) => format!("{}_id", field.name),
        _ => field.name.to_owned(),
    }
}

/// The expression selecting one row as the API's JSON (certificates carry their SNIs).
pub(super) fn select_expr(collection: &str) -> &'static str {
    match collection {
        "certificates" => {
            "to_jsonb(t.*) || jsonb_build_object('snis', (SELECT coalesce(jsonb_agg(s.name \
             ORDER BY s.name), '[]'::jsonb) FROM snis s WHERE s.certificate_id = t.id))"
        }
        _ => "to_jsonb(t.*)",
    }
}

/// The base schema of a collection.
pub(super) fn base_schema(collection: &str) -> Result<&'static Schema, ApiError> {
    entities::schema(collection)
        .ok_or_else(|| ApiError::Internal(format!("no schema for {collection}")))
}

/// Converts a row (as `to_jsonb`) to the API's shape: foreign keys become `{"id": ...}`.
pub(super) fn from_row(schema: &Schema, row: Value) -> Value {
    let Value::Object(mut row) = row else {
        return row;
    };
    let mut obj = Map::new();
    for field in &schema.fields {
        let value = match field.ty {
            Type::Foreign(_) => match row.remove(&column(field)) {
                Some(Value::String(id)) => json!({ "id": id }),
                _ => Value::Null,
            },
            _ if field.access == Access::Transient => match row.remove(field.name) {
                Some(value) => value,
                None => continue,
            },
            _ => row.remove(field.name).unwrap_or(Value::Null),
        };
        obj.insert(field.name.to_owned(), value);
    }
    Value::Object(obj)
}

/// Converts an API object to a row for `jsonb_populate_record`.
fn to_row(schema: &Schema, obj: &Map<String, Value>) -> Value {
    let mut row = Map::new();
    for field in schema.fields.iter().filter(|f| f.is_stored()) {
        let value = obj.get(field.name).cloned().unwrap_or(Value::Null);
        let value = match field.ty {
            Type::Foreign(_) => value.get("id").cloned().unwrap_or(Value::Null),
            _ => value,
        };
        row.insert(column(field), value);
    }
    Value::Object(row)
}

/// The schema that validates `obj` in `collection`: plugins follow their named plugin.
fn schema_for(collection: &str, obj: &Map<String, Value>) -> Result<&'static Schema, ApiError> {
    if collection == "plugins"
        && let Some(schema) = obj
            .get("name")
            .and_then(Value::as_str)
            .and_then(entities::plugin_schema)
    {
        return Ok(schema);
    }
    base_schema(collection)
}

/// Form-encoded input carries strings only: type it by the schema that will validate it.
/// `stored_name` names the plugin when the body does not (a partial update).
pub(crate) fn coerce_form(
    collection: &str,
    value: Value,
    stored_name: Option<&str>,
) -> Result<Value, ApiError> {
    let mut obj = value.as_object().cloned().unwrap_or_default();
    if let (Some(name), false) = (stored_name, obj.contains_key("name")) {
        obj.insert("name".into(), Value::from(name));
    }
    Ok(schema_for(collection, &obj)?.coerce_form(value))
}

fn unique_fields(constraint: &str) -> Option<&'static [&'static str]> {
    Some(match constraint {
        "ca_certificates_cert_digest_key" => &["cert_digest"],
        "snis_name_key" | "services_name_key" | "routes_name_key" | "upstreams_name_key" => {
            &["name"]
        }
        "consumers_username_key" => &["username"],
        "consumers_custom_id_key" => &["custom_id"],
        "plugins_instance_name_key" => &["instance_name"],
        "targets_upstream_id_target_key" => &["upstream", "target"],
        "acls_consumer_id_group_key" => &["consumer", "group"],
        "mtls_auth_credentials_cache_key" => &["ca_certificate", "subject_name"],
        "plugins_cache_key" => &["consumer", "name", "route", "service"],
        _ => return None,
    })
}

/// Maps constraint violations of a write to Kong's errors.
fn write_error(error: tokio_postgres::Error, obj: &Map<String, Value>) -> ApiError {
    let Some(db) = error.as_db_error() else {
        return db_error(error);
    };
    let constraint = db.constraint().unwrap_or_default();
    let pick = |fields: &[&str]| -> Map<String, Value> {
        fields
            .iter()
            .map(|f| ((*f).to_owned(), obj.get(*f).cloned().unwrap_or(Value::Null)))
            .collect()
    };
    match db.code() {
        c if *c == SqlState::UNIQUE_VIOLATION && constraint.ends_with("_pkey") => {
            ApiError::PrimaryKey(pick(&["id"]))
        }
        c if *c == SqlState::UNIQUE_VIOLATION => match unique_fields(constraint) {
            Some(fields) => ApiError::Unique(pick(fields)),
            None => db_error(error),
        },
        _ => db_error(error),
    }
}

/// Maps a restricting foreign key hit by a delete (`routes_service_id_fkey`) to Kong's error.
fn delete_error(error: tokio_postgres::Error, parent: &'static str) -> ApiError {
    let child = error
        .as_db_error()
        .filter(|db| *db.code() == SqlState::FOREIGN_KEY_VIOLATION)
        .and_then(|db| db.table())
        .and_then(|table| entities::COLLECTIONS.iter().find(|c| **c == table).copied());
    match child {
        Some(child) => ApiError::ReferencedBy { parent, child },
        None => db_error(error),
    }
}

fn static_collection(collection: &str) -> Result<&'static str, ApiError> {
    entities::COLLECTIONS
        .iter()
        .find(|c| **c == collection)
        .copied()
        .ok_or(ApiError::NotFound("Not found"))
}

// === impl Store ===

impl Store {
    /// Reads one entity.
    pub(crate) async fn get(
        &self,
        collection: &str,
        selector: &Selector,
        parent: Option<&Parent>,
    ) -> Result<Option<Value>, ApiError> {
        self.get_with(Some(&self.keyring), collection, selector, parent)
            .await
    }

    /// Reads one entity with its private keys as stored (sealed): for checks that need only
    /// its other fields, which then work whether or not the keys open.
    pub(crate) async fn get_sealed(
        &self,
        collection: &str,
        selector: &Selector,
        parent: Option<&Parent>,
    ) -> Result<Option<Value>, ApiError> {
        self.get_with(None, collection, selector, parent).await
    }

    async fn get_with(
        &self,
        keyring: Option<&Keyring>,
        collection: &str,
        selector: &Selector,
        parent: Option<&Parent>,
    ) -> Result<Option<Value>, ApiError> {
        let mut client = self.pool.get().await?;
        let tx = Self::begin(&mut client).await?;
        let found = read(&tx, keyring, collection, selector, parent, false).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(found)
    }

    /// Creates an entity (`POST`).
    pub(crate) async fn create(
        &self,
        collection: &str,
        input: Map<String, Value>,
        parent: Option<&Parent>,
    ) -> Result<Value, ApiError> {
        self.write(collection, None, input, parent, Write::Create)
            .await
    }

    /// Partially updates an entity (`PATCH`); `None` when it does not exist.
    pub(crate) async fn patch(
        &self,
        collection: &str,
        selector: &Selector,
        input: Map<String, Value>,
        parent: Option<&Parent>,
    ) -> Result<Value, ApiError> {
        self.write(collection, Some(selector), input, parent, Write::Patch)
            .await
    }

    /// Creates or fully replaces an entity (`PUT`).
    pub(crate) async fn upsert(
        &self,
        collection: &str,
        selector: &Selector,
        input: Map<String, Value>,
        parent: Option<&Parent>,
    ) -> Result<Value, ApiError> {
        self.write(collection, Some(selector), input, parent, Write::Replace)
            .await
    }

    async fn write(
        &self,
        collection: &str,
        selector: Option<&Selector>,
        input: Map<String, Value>,
        parent: Option<&Parent>,
        mode: Write,
    ) -> Result<Value, ApiError> {
        let collection = static_collection(collection)?;
        let mut client = self.pool.get().await?;
        let tx = Self::begin(&mut client).await?;
        let (id, action) = self
            .write_in(&tx, collection, selector, input, parent, mode)
            .await?;
        let version = bump_version(&tx).await?;
        let recorded = audit::record(&tx, action, collection, Some(id), Some(version)).await?;
        let stored = read(
            &tx,
            Some(&self.keyring),
            collection,
            &Selector::Id(id),
            None,
            false,
        )
        .await?
        .ok_or_else(|| ApiError::Internal("written row vanished".into()))?;
        tx.commit().await.map_err(db_error)?;
        recorded.log();
        Ok(stored)
    }

    /// Validates and writes one entity inside `tx`, without bumping the config version or
    /// recording it in the audit trail: the caller does both (one write, or a whole
    /// declarative configuration as one version). Returns the entity's id and what was done.
    pub(super) async fn write_in(
        &self,
        tx: &Transaction<'_>,
        collection: &'static str,
        selector: Option<&Selector>,
        mut input: Map<String, Value>,
        parent: Option<&Parent>,
        mode: Write,
    ) -> Result<(Uuid, Action), ApiError> {
        let base = base_schema(collection)?;

        if let Some(parent) = parent {
            // The URL names the parent; a reference in the body is replaced, but must still be
            // one (the document describes it), so that a malformed body is not taken silently.
            if let Some(given) = input.get(parent.field) {
                check_reference_shape(base, parent.field, given)?;
            }
            input.insert(parent.field.to_owned(), json!({ "id": parent.id }));
        }
        expand_shorthands(collection, &mut input)?;

        let existing = match selector {
            Some(selector) => {
                // A PATCH merges into the stored values, so it needs the keys opened; a PUT
                // replaces them (and can so replace a value that no longer opens).
                let keyring = (mode == Write::Patch).then_some(&*self.keyring);
                let existing = read(tx, keyring, collection, selector, parent, true).await?;
                if existing.is_none() && mode == Write::Patch {
                    return Err(ApiError::NotFound("Not found"));
                }
                existing
            }
            None => None,
        };
        let existing_obj = existing.as_ref().and_then(Value::as_object);

        // On PUT, what the URL names must agree with the body, and fills it on create. A PATCH
        // may change the key (`PATCH /services/old {"name": "new"}` renames, as in Kong).
        if let Some(selector) = selector
            && mode == Write::Replace
        {
            apply_selector(collection, base, selector, &mut input, existing_obj)?;
        }

        let mut obj = match (mode, existing_obj) {
            (Write::Patch, Some(stored)) => {
                let mut stored = stored.clone();
                let schema = schema_for(collection, &stored)?;
                // Transient and computed fields are not part of what is merged.
                for field in &schema.fields {
                    if matches!(field.access, Access::Transient | Access::Computed) {
                        stored.remove(field.name);
                    }
                }
                schema.merge(&mut stored, input);
                stored
            }
            _ => input,
        };
        let transient_snis = if collection == "certificates" {
            obj.remove("snis")
        } else {
            None
        };

        // Secret references are validated by their values, and stored as references.
        let references = if collection == "certificates" {
            self.secrets.resolve_for_write(&mut obj)?
        } else {
            Vec::new()
        };
        self.resolve_foreign(tx, base, &mut obj).await?;
        self.check_plugin_name(collection, &obj)?;
        let schema = schema_for(collection, &obj)?;
        schema.validate(&mut obj)?;
        for (field, reference) in references {
            obj.insert(field.to_owned(), Value::String(reference));
        }
        if let Some(snis) = &transient_snis {
            validate_snis(snis)?;
        }
        check_references(tx, collection, schema, &obj).await?;
        check_mtls_anchor(tx, collection, &obj).await?;

        let now = now();
        let stamp = if collection == "targets" {
            json!((now * 1000.0).round() / 1000.0)
        } else {
            json!(now.floor() as i64)
        };
        match existing_obj {
            Some(stored) => {
                obj.insert("id".into(), stored["id"].clone());
                let created = stored.get("created_at").cloned().unwrap_or(stamp.clone());
                obj.insert("created_at".into(), created);
            }
            None => {
                if obj.get("id").is_none_or(Value::is_null) {
                    obj.insert("id".into(), json!(Uuid::now_v7()));
                }
                if obj.get("created_at").is_none_or(Value::is_null) {
                    obj.insert("created_at".into(), stamp.clone());
                }
            }
        }
        obj.insert("updated_at".into(), stamp);

        let id = obj
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| ApiError::field("id", "expected a valid UUID"))?;
        let mut row = to_row(schema, &obj);
        self.keyring
            .seal_row(&**tx, collection, &id.to_string(), &mut row)
            .await?;
        let table = ident(collection);
        if existing_obj.is_some() {
            let columns: Vec<String> = schema
                .fields
                .iter()
                .filter(|f| f.is_stored() && f.name != "id")
                .map(|f| ident(&column(f)))
                .collect();
            let columns = columns.join(", ");
            let sql = format!(
                "UPDATE {table} SET ({columns}) = (SELECT {columns} FROM \
                 jsonb_populate_record(NULL::{table}, $1::jsonb)) WHERE id = $2"
            );
            tx.execute(&sql, &[&row, &id])
                .await
                .map_err(|e| write_error(e, &obj))?;
        } else {
            let sql = format!(
                "INSERT INTO {table} SELECT * FROM jsonb_populate_record(NULL::{table}, $1::jsonb)"
            );
            tx.execute(&sql, &[&row])
                .await
                .map_err(|e| write_error(e, &obj))?;
        }
        if let Some(snis) = transient_snis {
            sync_snis(tx, id, &snis, mode).await?;
        }
        let action = match (mode, existing_obj) {
            (Write::Patch, _) => Action::Update,
            (Write::Replace, Some(_)) => Action::Replace,
            _ => Action::Create,
        };
        Ok((id, action))
    }

    /// Deletes an entity. Deleting what does not exist succeeds and changes nothing.
    pub(crate) async fn delete(
        &self,
        collection: &str,
        selector: &Selector,
        parent: Option<&Parent>,
    ) -> Result<(), ApiError> {
        let collection = static_collection(collection)?;
        let mut client = self.pool.get().await?;
        let tx = Self::begin(&mut client).await?;
        let Some(id) = delete_in(&tx, collection, selector, parent).await? else {
            return Ok(());
        };
        let version = bump_version(&tx).await?;
        let recorded =
            audit::record(&tx, Action::Delete, collection, Some(id), Some(version)).await?;
        tx.commit().await.map_err(db_error)?;
        recorded.log();
        Ok(())
    }

    /// Replaces foreign references given by a unique key (`service.name=foo`) with ids.
    async fn resolve_foreign(
        &self,
        tx: &Transaction<'_>,
        schema: &Schema,
        obj: &mut Map<String, Value>,
    ) -> Result<(), ApiError> {
        for field in &schema.fields {
            let Type::Foreign(target) = field.ty else {
                continue;
            };
            let Some(Value::Object(reference)) = obj.get(field.name) else {
                continue;
            };
            if reference.contains_key("id") || reference.len() != 1 {
                continue;
            }
            let Some((key, Value::String(value))) = reference.iter().next() else {
                continue;
            };
            let target_schema = base_schema(target)?;
            let unique = target_schema.reference_keys().any(|f| f.name == key);
            if !unique {
                continue;
            }
            let row = if value.contains('\0') {
                // No stored value holds a NUL character (PostgreSQL text cannot).
                None
            } else {
                let sql = format!("SELECT id FROM {} WHERE {} = $1", ident(target), ident(key));
                tx.query_opt(&sql, &[value]).await.map_err(db_error)?
            };
            match row {
                Some(row) => {
                    let id: Uuid = row.get(0);
                    obj.insert(field.name.to_owned(), json!({ "id": id }));
                }
                None => {
                    return Err(ApiError::ForeignKey {
                        field: field.name.to_owned(),
                        collection: target,
                        key: reference.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn check_plugin_name(
        &self,
        collection: &str,
        obj: &Map<String, Value>,
    ) -> Result<(), ApiError> {
        if collection != "plugins" {
            return Ok(());
        }
        match obj.get("name") {
            Some(Value::String(name)) if !self.plugins.iter().any(|p| p == name) => {
                let message = if KNOWN_PLUGINS.contains(&name.as_str()) {
                    format!(
                        "plugin '{name}' not enabled; add it to the 'plugins' configuration property"
                    )
                } else {
                    format!(
                        "plugin '{name}' not enabled; add it to the 'plugins' configuration \
                         property (known plugins: {})",
                        KNOWN_PLUGINS.join(", ")
                    )
                };
                Err(ApiError::field("name", message))
            }
            _ => Ok(()),
        }
    }
}

/// Deletes one entity inside `tx`, without bumping the config version or recording it in the
/// audit trail (the caller does both). Returns the id deleted; `None` when nothing was there
/// (an error for a nested selector, as Kong: `/services/{s}/routes/{r}` not under `{s}`).
pub(super) async fn delete_in(
    tx: &Transaction<'_>,
    collection: &'static str,
    selector: &Selector,
    parent: Option<&Parent>,
) -> Result<Option<Uuid>, ApiError> {
    let Some(existing) = read(tx, None, collection, selector, parent, true).await? else {
        // As Kong: a top-level DELETE of nothing succeeds, but a nested one
        // (`/services/{s}/routes/{r}`) is 404 when the child is not under that parent.
        return match parent {
            Some(_) => Err(ApiError::NotFound("Not found")),
            None => Ok(None),
        };
    };
    let id = existing
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::Internal("row without id".into()))?;
    if collection == "ca_certificates" {
        ca_still_referenced(tx, id).await?;
    }
    let sql = format!("DELETE FROM {} WHERE id = $1", ident(collection));
    tx.execute(&sql, &[&id])
        .await
        .map_err(|e| delete_error(e, collection))?;
    Ok(Some(id))
}

/// Reads one entity inside `tx`, optionally locking it for a write; its private keys are
/// opened with `keyring`, or left as stored without (when they are not needed).
pub(super) async fn read(
    tx: &Transaction<'_>,
    keyring: Option<&Keyring>,
    collection: &str,
    selector: &Selector,
    parent: Option<&Parent>,
    lock: bool,
) -> Result<Option<Value>, ApiError> {
    let schema = base_schema(collection)?;
    let table = ident(collection);
    let parent_clause = parent
        .map(|p| format!(" AND t.{} = $2", ident(&format!("{}_id", p.field))))
        .unwrap_or_default();
    let parent_id = parent.map(|p| p.id);
    if matches!(selector, Selector::Key(key) if key.contains('\0')) {
        // No stored key holds a NUL character (PostgreSQL text cannot).
        return Ok(None);
    }
    let id: Option<Uuid> = match selector {
        Selector::Id(id) => {
            let sql = format!("SELECT t.id FROM {table} t WHERE t.id = $1{parent_clause}");
            query_id(tx, &sql, id, parent_id).await?
        }
        Selector::Key(key) if collection == "certificates" => {
            let sql = format!(
                "SELECT t.id FROM {table} t JOIN snis s ON s.certificate_id = t.id \
                 WHERE s.name = $1{parent_clause}"
            );
            query_id(tx, &sql, key, parent_id).await?
        }
        Selector::Key(key) => {
            let Some(endpoint_key) = schema.endpoint_key else {
                return Ok(None);
            };
            // Keys unique only under a parent (acl groups, targets) need that parent.
            let scoped = matches!(collection, "acls" | "targets");
            if scoped && parent.is_none() {
                return Ok(None);
            }
            let sql = format!(
                "SELECT t.id FROM {table} t WHERE t.{} = $1{parent_clause}",
                ident(endpoint_key)
            );
            query_id(tx, &sql, key, parent_id).await?
        }
    };
    let Some(id) = id else {
        return Ok(None);
    };
    if lock {
        let sql = format!("SELECT 1 FROM {table} WHERE id = $1 FOR UPDATE");
        tx.execute(&sql, &[&id]).await.map_err(db_error)?;
    }
    let sql = format!(
        "SELECT {} FROM {table} t WHERE t.id = $1",
        select_expr(collection)
    );
    let Some(row) = tx.query_opt(&sql, &[&id]).await.map_err(db_error)? else {
        return Ok(None);
    };
    let mut entity = from_row(schema, row.get(0));
    if let Some(keyring) = keyring {
        keyring.open_entity(&**tx, collection, &mut entity).await?;
    }
    Ok(Some(entity))
}

async fn query_id<T: tokio_postgres::types::ToSql + Sync>(
    tx: &Transaction<'_>,
    sql: &str,
    value: &T,
    parent: Option<Uuid>,
) -> Result<Option<Uuid>, ApiError> {
    let row = match &parent {
        Some(parent) => tx.query_opt(sql, &[value, parent]).await,
        None => tx.query_opt(sql, &[value]).await,
    }
    .map_err(db_error)?;
    Ok(row.map(|r| r.get(0)))
}

/// Checks that `value`, given for the foreign field `field`, is shaped as the document says a
/// reference is: null, or an object with exactly one member, `id` (a UUID) or a unique key of
/// the referenced entity (a string).
fn check_reference_shape(schema: &Schema, field: &str, value: &Value) -> Result<(), ApiError> {
    let Some(definition) = schema.field(field) else {
        return Ok(());
    };
    let Type::Foreign(target) = definition.ty else {
        return Ok(());
    };
    let reference = match value {
        Value::Null if definition.required => {
            return Err(ApiError::field(field, "required field missing"));
        }
        Value::Null => return Ok(()),
        Value::Object(reference) => reference,
        _ => return Err(ApiError::field(field, "expected a record")),
    };
    let target = base_schema(target)?;
    let mut errors = Map::new();
    for (key, given) in reference {
        let ok = match (key.as_str(), given) {
            ("id", Value::String(id)) => Uuid::parse_str(id).is_ok(),
            (key, Value::String(_)) => target.reference_keys().any(|f| f.name == key),
            _ => false,
        };
        if !ok {
            let message = if key == "id" {
                "expected a valid UUID"
            } else if target.reference_keys().any(|f| f.name == key) {
                "expected a string"
            } else {
                "unknown field"
            };
            errors.insert(key.clone(), json!(message));
        }
    }
    if reference.len() != 1 && errors.is_empty() {
        return Err(ApiError::field(field, "expected a record with one key"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        let mut fields = FieldErrors::default();
        fields.nested(field, Value::Object(errors));
        Err(ApiError::Schema(fields))
    }
}

/// Expands write-only shorthands: `url` on services.
fn expand_shorthands(collection: &str, obj: &mut Map<String, Value>) -> Result<(), ApiError> {
    if collection != "services" {
        return Ok(());
    }
    match obj.remove("url") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(url)) => {
            let parsed = checks::service_url(&url).map_err(|e| ApiError::field("url", e))?;
            obj.insert("protocol".into(), json!(parsed.protocol));
            obj.insert("host".into(), json!(parsed.host));
            obj.insert("port".into(), json!(parsed.port));
            obj.insert("path".into(), json!(parsed.path));
            Ok(())
        }
        Some(_) => Err(ApiError::field("url", "expected a string")),
    }
}

/// On `PUT /{collection}/{key}` the key fills the endpoint-key field; a body naming another
/// value is refused. Ids in the URL win over ids in the body.
fn apply_selector(
    collection: &str,
    schema: &Schema,
    selector: &Selector,
    input: &mut Map<String, Value>,
    existing: Option<&Map<String, Value>>,
) -> Result<(), ApiError> {
    match selector {
        Selector::Id(id) => {
            input.insert("id".into(), json!(id));
        }
        Selector::Key(key) if collection == "certificates" => {
            // PUT /certificates/{sni}: the SNI is added to the certificate's snis.
            if existing.is_none() || input.contains_key("snis") {
                let mut snis = match input.remove("snis") {
                    Some(Value::Array(items)) => items,
                    Some(Value::Null) | None => existing
                        .and_then(|e| e.get("snis"))
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                    Some(other) => vec![other],
                };
                if !snis.iter().any(|s| s.as_str() == Some(key)) {
                    snis.push(json!(key));
                }
                input.insert("snis".into(), Value::Array(snis));
            }
        }
        Selector::Key(key) => {
            let Some(field) = schema.endpoint_key else {
                return Err(ApiError::NotFound("Not found"));
            };
            // An explicit null is refused like another value (as Kong does): the key is
            // taken from the URL only when the body leaves it out.
            match input.get(field) {
                None => {
                    input.insert(field.to_owned(), json!(key));
                }
                Some(Value::String(given)) if given == key => {}
                Some(_) => {
                    return Err(ApiError::field(
                        field,
                        format!("must be '{key}' as in the URL, or be left out"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn validate_snis(snis: &Value) -> Result<(), ApiError> {
    let field = base_schema("certificates")?
        .field("snis")
        .cloned()
        .ok_or_else(|| ApiError::Internal("certificates without snis".into()))?;
    let schema = Schema {
        name: "certificates",
        fields: vec![field.access(Access::Normal)],
        endpoint_key: None,
        entity_checks: Vec::new(),
    };
    let mut obj = Map::new();
    obj.insert("snis".into(), snis.clone());
    schema.validate(&mut obj).map_err(ApiError::Schema)
}

/// Makes the certificate's SNI rows match `snis` (the `snis` shorthand).
async fn sync_snis(
    tx: &Transaction<'_>,
    certificate: Uuid,
    snis: &Value,
    mode: Write,
) -> Result<(), ApiError> {
    let names: Vec<String> = snis
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let taken = tx
        .query(
            "SELECT name, certificate_id FROM snis WHERE name = ANY($1) FOR UPDATE",
            &[&names],
        )
        .await
        .map_err(db_error)?;
    for row in &taken {
        let owner: Uuid = row.get(1);
        if owner != certificate {
            let name: String = row.get(0);
            return Err(ApiError::field(
                "snis",
                format!("{name} already associated with existing certificate '{owner}'"),
            ));
        }
    }
    if mode != Write::Create {
        tx.execute(
            "DELETE FROM snis WHERE certificate_id = $1 AND NOT (name = ANY($2))",
            &[&certificate, &names],
        )
        .await
        .map_err(db_error)?;
    }
    let stamp = now().floor() as i64;
    for name in names {
        tx.execute(
            "INSERT INTO snis (id, created_at, updated_at, name, certificate_id) \
             VALUES ($1, $2, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
            &[&Uuid::now_v7(), &stamp, &name, &certificate],
        )
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// Checks that referenced entities exist and locks them against concurrent deletes.
async fn check_references(
    tx: &Transaction<'_>,
    collection: &str,
    schema: &Schema,
    obj: &Map<String, Value>,
) -> Result<(), ApiError> {
    for field in &schema.fields {
        let Type::Foreign(target) = field.ty else {
            continue;
        };
        let Some(id) = obj
            .get(field.name)
            .and_then(|r| r.get("id"))
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
        else {
            continue;
        };
        let sql = format!(
            "SELECT 1 FROM {} WHERE id = $1 FOR KEY SHARE",
            ident(target)
        );
        if tx
            .query_opt(&sql, &[&id])
            .await
            .map_err(db_error)?
            .is_none()
        {
            let mut key = Map::new();
            key.insert("id".into(), json!(id));
            return Err(ApiError::ForeignKey {
                field: field.name.to_owned(),
                collection: target,
                key,
            });
        }
    }
    let ca_ids = match collection {
        "services" => Some(("ca_certificates", obj.get("ca_certificates"))),
        "plugins" => Some((
            "config.ca_certificates",
            obj.get("config").and_then(|c| c.get("ca_certificates")),
        )),
        _ => None,
    };
    if let Some((field, Some(Value::Array(ids)))) = ca_ids {
        let ids: Vec<Uuid> = ids
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|s| Uuid::parse_str(s).ok())
            .collect();
        let rows = tx
            .query(
                "SELECT id FROM ca_certificates WHERE id = ANY($1) FOR KEY SHARE",
                &[&ids],
            )
            .await
            .map_err(db_error)?;
        let found: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
        if let Some(missing) = ids.iter().find(|id| !found.contains(id)) {
            let mut key = Map::new();
            key.insert("id".into(), json!(missing));
            return Err(ApiError::ForeignKey {
                field: field.to_owned(),
                collection: "ca_certificates",
                key,
            });
        }
    }
    Ok(())
}

/// An `mtls-auth` instance must be able to anchor a chain: one of its `ca_certificates` is a
/// root (self-issued), or `allow_partial_chain` lets an intermediate be the anchor. Otherwise
/// it could verify no client certificate at all; data planes would refuse every request it
/// covers (fail closed), so the write is refused here, where the operator can fix it.
async fn check_mtls_anchor(
    tx: &Transaction<'_>,
    collection: &str,
    obj: &Map<String, Value>,
) -> Result<(), ApiError> {
    if collection != "plugins" || obj.get("name").and_then(Value::as_str) != Some("mtls-auth") {
        return Ok(());
    }
    let Some(config) = obj.get("config").and_then(Value::as_object) else {
        return Ok(());
    };
    if config.get("allow_partial_chain") == Some(&Value::Bool(true)) {
        return Ok(());
    }
    let ids: Vec<Uuid> = config
        .get("ca_certificates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|s| Uuid::parse_str(s).ok())
        .collect();
    if ids.is_empty() {
        // The schema reports an empty or missing list.
        return Ok(());
    }
    let rows = tx
        .query(
            "SELECT cert FROM ca_certificates WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(db_error)?;
    let anchors = rows.iter().any(|row| {
        let pem: &str = row.get(0);
        gatehouse_shared::x509::parse_certificates(pem)
            .ok()
            .and_then(|ders| ders.first().map(gatehouse_shared::x509::cert_facts))
            .is_some_and(|facts| facts.is_ok_and(|f| f.is_self_issued()))
    });
    if anchors {
        return Ok(());
    }
    let mut errors = gatehouse_shared::schema::FieldErrors::default();
    errors.nested_field(
        "config",
        "ca_certificates",
        "no CA certificate here can anchor a chain: none is a root (self-signed); add the root \
         CA certificate of the chain, or set config.allow_partial_chain=true to trust an \
         intermediate as the anchor",
    );
    Err(errors.into())
}

/// Kong refuses to delete a CA certificate that services or plugins still use. Its mtls-auth
/// credentials do not hold it: they are deleted with it (`ON DELETE CASCADE`, as Kong).
async fn ca_still_referenced(tx: &Transaction<'_>, id: Uuid) -> Result<(), ApiError> {
    let services = tx
        .query(
            "SELECT id FROM services WHERE ca_certificates @> ARRAY[$1::uuid] ORDER BY id",
            &[&id],
        )
        .await
        .map_err(db_error)?;
    let plugins = tx
        .query(
            "SELECT id FROM plugins WHERE config -> 'ca_certificates' ? $1 ORDER BY id",
            &[&id.to_string()],
        )
        .await
        .map_err(db_error)?;
    let ids = |rows: &[tokio_postgres::Row]| {
        rows.iter()
            .map(|r| r.get::<_, Uuid>(0).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut users = Vec::new();
    if !services.is_empty() {
        users.push(format!("services (id = {})", ids(&services)));
    }
    if !plugins.is_empty() {
        users.push(format!("plugins (id = {})", ids(&plugins)));
    }
    if users.is_empty() {
        Ok(())
    } else {
        Err(ApiError::ReferencedByOthers(format!(
            "ca certificate {id} is still referenced by {}",
            users.join(" and ")
        )))
    }
}

impl From<FieldErrors> for Box<ApiError> {
    fn from(errors: FieldErrors) -> Self {
        Box::new(ApiError::Schema(errors))
    }
}
