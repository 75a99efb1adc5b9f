//! Reading and replacing the whole configuration at once (configuration as files).
//!
//! A declarative file replaces the configuration: its entities are written through the same
//! path as Admin API `PUT`s ([`Store::write_in`]: references, schemas, entity rules, unique and
//! foreign keys all checked as for one request), and entities it does not name are deleted
//! ([`delete_in`]), all in ONE transaction that bumps the config version once. Each entity is
//! written under its own savepoint, so that every entity's errors are collected instead of the
//! first one only; any error rolls the whole transaction back.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};
use uuid::Uuid;

use gatehouse_shared::entities::COLLECTIONS;

use super::audit::{self, Action};
use super::entity::{Write, base_schema, delete_in, from_row, read, select_expr};
use super::{Selector, Store, Transaction, bump_version, db_error};
use crate::declarative::{Change, Desired, EntityError, Outcome, child_collection_order};
use crate::error::ApiError;

/// What to do with a file that is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Apply {
    /// Commit it (one config version) when it changes something.
    Commit,
    /// Compute what would change and roll everything back.
    DryRun,
}

impl Store {
    /// The whole configuration as the Admin API shows it, at one config version: every
    /// collection but `snis` (certificates carry theirs), each ordered by id.
    pub(crate) async fn read_config(&self) -> Result<(i64, Map<String, Value>), ApiError> {
        let mut client = self.pool.get().await?;
        let (tx, version) = Self::begin_snapshot(&mut client).await?;
        let config = read_all(&tx).await?;
        tx.commit().await.map_err(db_error)?;
        Ok((version, config))
    }

    /// Makes the configuration exactly `desired` (entities in dependency order, as
    /// [`crate::declarative::flatten`] gives them), in one transaction and one config version.
    ///
    /// `Ok(Err(errors))`: the file is invalid, every entity's errors with its path; nothing was
    /// written. `Err(_)`: the database failed (nothing written either).
    pub(crate) async fn apply_config(
        &self,
        mut desired: Vec<Desired>,
        mode: Apply,
    ) -> Result<Result<Outcome, Vec<EntityError>>, ApiError> {
        let mut client = self.pool.get().await?;
        let mut tx = Self::begin(&mut client).await?;
        // Serialise with every other writer from the start: what is read below stays what
        // is replaced (other writers take this lock last, at their version bump).
        let before_version: i64 = tx
            .query_one("SELECT version FROM config_version FOR UPDATE", &[])
            .await
            .map_err(db_error)?
            .get(0);
        let before = read_all(&tx).await?;
        let mut errors: Vec<EntityError> = Vec::new();
        assign_ids(&mut desired, &before);

        let wanted: HashSet<(&'static str, Uuid)> = desired
            .iter()
            .filter_map(|d| d.id.map(|id| (d.collection, id)))
            .collect();
        let mut existing: HashMap<(&'static str, Uuid), Value> = HashMap::new();
        for collection in writable_collections() {
            for item in list(&before, collection) {
                if let Some(id) = value_id(item) {
                    existing.insert((collection, id), item.clone());
                }
            }
        }
        let mut changes: Vec<Change> = Vec::new();

        // 1. Delete what the file does not name, children first. A delete that others still
        //    block (a service whose routes move elsewhere) is tried again at the end.
        let mut postponed = Vec::new();
        for collection in child_collection_order() {
            for item in list(&before, collection) {
                let Some(id) = value_id(item) else { continue };
                if wanted.contains(&(collection, id)) {
                    continue;
                }
                match try_delete(&mut tx, collection, id).await? {
                    Ok(true) => changes.push(Change::new(Action::Delete, collection, id, item)),
                    Ok(false) => {}
                    Err(_) => postponed.push((collection, id, item)),
                }
            }
        }

        // 2. Write every entity of the file, parents first.
        let mut failed: HashSet<usize> = HashSet::new();
        for (index, entity) in desired.iter().enumerate() {
            let (Some(id), true) = (entity.id, entity.errors.is_empty()) else {
                // Reported below with the file's own problems.
                failed.insert(index);
                continue;
            };
            let sp = tx.savepoint("gatehouse_write").await.map_err(db_error)?;
            let written = self
                .write_in(
                    &sp,
                    entity.collection,
                    Some(&Selector::Id(id)),
                    entity.obj.clone(),
                    None,
                    Write::Replace,
                )
                .await;
            match written {
                Ok(_) => {
                    let stored = read(
                        &sp,
                        Some(&self.keyring),
                        entity.collection,
                        &Selector::Id(id),
                        None,
                        false,
                    )
                    .await?
                    .ok_or_else(|| ApiError::Internal("written row vanished".into()))?;
                    match existing.get(&(entity.collection, id)) {
                        Some(old) if same(old, &stored) => {
                            // Unchanged: keep the row as it was (its updated_at too).
                            sp.rollback().await.map_err(db_error)?;
                        }
                        Some(_) => {
                            sp.commit().await.map_err(db_error)?;
                            changes.push(Change::new(
                                Action::Replace,
                                entity.collection,
                                id,
                                &stored,
                            ));
                        }
                        None => {
                            sp.commit().await.map_err(db_error)?;
                            changes.push(Change::new(
                                Action::Create,
                                entity.collection,
                                id,
                                &stored,
                            ));
                        }
                    }
                }
                Err(error @ (ApiError::Internal(_) | ApiError::Unavailable(_))) => {
                    return Err(error);
                }
                Err(error) => {
                    sp.rollback().await.map_err(db_error)?;
                    failed.insert(index);
                    // A child whose parent failed fails on the missing parent: that says
                    // nothing the parent's own errors do not.
                    let parent_failed = entity.parent.is_some_and(|(p, _)| failed.contains(&p));
                    if !(parent_failed && matches!(error, ApiError::ForeignKey { .. })) {
                        errors.push(EntityError::from_api(entity, &error));
                    }
                }
            }
        }
        for entity in &desired {
            if !entity.errors.is_empty() {
                errors.push(EntityError::structural(entity));
            }
        }

        // 3. The deletes that waited for others to move away.
        for (collection, id, item) in postponed {
            match try_delete(&mut tx, collection, id).await? {
                Ok(true) => changes.push(Change::new(Action::Delete, collection, id, item)),
                Ok(false) => {}
                Err(error) => errors.push(EntityError::undeletable(collection, item, &error)),
            }
        }

        if !errors.is_empty() {
            errors.sort_by_key(EntityError::order_key);
            tx.rollback().await.map_err(db_error)?;
            return Ok(Err(errors));
        }
        if mode == Apply::DryRun || changes.is_empty() {
            tx.rollback().await.map_err(db_error)?;
            return Ok(Ok(Outcome {
                version: before_version,
                committed: false,
                changes,
            }));
        }
        let version = bump_version(&tx).await?;
        let mut recorded = Vec::with_capacity(changes.len());
        for change in &changes {
            recorded.push(
                audit::record(
                    &tx,
                    change.action,
                    change.collection,
                    Some(change.id),
                    Some(version),
                )
                .await?,
            );
        }
        tx.commit().await.map_err(db_error)?;
        for recorded in recorded {
            recorded.log();
        }
        Ok(Ok(Outcome {
            version,
            committed: true,
            changes,
        }))
    }
}

/// Deletes one entity under a savepoint: `Ok(Ok(deleted))`, or `Ok(Err(why))` when it cannot
/// be deleted (still referenced; rolled back, the transaction goes on). `Err` when the database
/// failed.
async fn try_delete(
    tx: &mut Transaction<'_>,
    collection: &'static str,
    id: Uuid,
) -> Result<Result<bool, ApiError>, ApiError> {
    let sp = tx.savepoint("gatehouse_delete").await.map_err(db_error)?;
    match delete_in(&sp, collection, &Selector::Id(id), None).await {
        Ok(deleted) => {
            sp.commit().await.map_err(db_error)?;
            Ok(Ok(deleted.is_some()))
        }
        Err(error @ (ApiError::Internal(_) | ApiError::Unavailable(_))) => Err(error),
        Err(error) => {
            sp.rollback().await.map_err(db_error)?;
            Ok(Err(error))
        }
    }
}

/// Every collection a file holds (`snis` travel with their certificates).
pub(crate) fn writable_collections() -> impl Iterator<Item = &'static str> {
    COLLECTIONS.iter().copied().filter(|c| *c != "snis")
}

/// Reads every entity of every collection inside `tx`, converted as the Admin API's `GET`
/// and list endpoints convert rows (`select_expr`, `from_row`), so what it shows is what a
/// file holds. One query per collection.
async fn read_all(tx: &Transaction<'_>) -> Result<Map<String, Value>, ApiError> {
    let mut config = Map::new();
    for collection in writable_collections() {
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
        config.insert(collection.to_owned(), Value::Array(items));
    }
    Ok(config)
}

fn list<'a>(config: &'a Map<String, Value>, collection: &str) -> &'a [Value] {
    config
        .get(collection)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn value_id(item: &Value) -> Option<Uuid> {
    item.get("id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// Two stored versions of an entity are the same but for when they were last written.
fn same(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Value::Object(obj) = &mut v {
            obj.remove("updated_at");
        }
        v
    };
    strip(old) == strip(new)
}

/// Gives every entity of the file its id: the one it names, else the id of the stored entity
/// with the same natural key (name, username, certificate, target of an upstream, group of a
/// consumer, ...), else a new one. References between entities of the file given by a key
/// (`service: example`) become ids.
fn assign_ids(desired: &mut [Desired], before: &Map<String, Value>) {
    let mut claimed: HashSet<(&'static str, Uuid)> = HashSet::new();
    // Ids named in the file first, so that a key match never takes one of them.
    for entity in desired.iter_mut() {
        if let Some(id) = entity.id
            && !claimed.insert((entity.collection, id))
        {
            entity
                .errors
                .push((Some("id".into()), format!("{id} is declared twice")));
        }
    }
    for index in 0..desired.len() {
        crate::declarative::resolve_references(desired, index);
        let entity = &desired[index];
        if entity.id.is_some() || !entity.errors.is_empty() {
            continue;
        }
        let key =
            crate::declarative::natural_key(entity.collection, &Value::Object(entity.obj.clone()));
        let found = key.as_ref().and_then(|key| {
            list(before, entity.collection).iter().find_map(|item| {
                let id = value_id(item)?;
                (crate::declarative::natural_key(entity.collection, item).as_ref() == Some(key)
                    && !claimed.contains(&(entity.collection, id)))
                .then_some(id)
            })
        });
        let id = found.unwrap_or_else(Uuid::now_v7);
        claimed.insert((entity.collection, id));
        let entity = &mut desired[index];
        entity.id = Some(id);
        entity.obj.insert("id".into(), json!(id));
    }
}
