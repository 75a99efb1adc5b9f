//! Configuration as files: Kong's declarative format (`_format_version: "3.0"`, what decK
//! writes), exported and imported whole.
//!
//! - **Export** nests what can be nested (services → routes → plugins, consumers → acls,
//!   mtls-auth credentials and plugins, upstreams → targets, certificates → snis), leaves out
//!   what the server computes (timestamps, certificate facts) and nulls, and orders every list
//!   by id and every object's keys alphabetically: the same configuration always gives the same
//!   bytes, so export → import → export is byte-identical.
//! - **Import** flattens a file into entities in dependency order ([`flatten`]) and hands them
//!   to [`Store::apply_config`], which replaces the configuration in one transaction through
//!   the Admin API's own write path: no second validator.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use gatehouse_shared::entities::{self, COLLECTIONS};
use gatehouse_shared::schema::{Access, Type};

use crate::config::Flags;
use crate::error::ApiError;
use crate::store::{Action, Apply, Store, writable_collections};

/// The format version written by export.
pub(crate) const FORMAT_VERSION: &str = "3.0";
/// The format versions accepted (Kong 3.x accepts these).
const ACCEPTED_VERSIONS: &[&str] = &["1.1", "2.1", "3.0"];
/// Top-level keys of decK / Kong files that say something about the file, not the gateway.
const IGNORED_KEYS: &[&str] = &["_transform", "_comment", "_info", "_workspace", "_konnect"];
/// Collections that may be nested in an entity of another: (parent, child).
const NESTED: &[(&str, &str)] = &[
    ("services", "routes"),
    ("services", "plugins"),
    ("routes", "plugins"),
    ("consumers", "acls"),
    ("consumers", "mtls_auth_credentials"),
    ("consumers", "plugins"),
    ("upstreams", "targets"),
];
/// Most errors quoted in the message of an invalid file (all are in `flattened_errors`).
const MESSAGE_ERRORS: usize = 10;

/// One entity of a file, ready to be written.
#[derive(Debug, Clone)]
pub(crate) struct Desired {
    /// Its collection.
    pub(crate) collection: &'static str,
    /// Where it is in the file: `[("services", 0), ("routes", 1)]`.
    pub(crate) segments: Vec<(&'static str, usize)>,
    /// Its place in the file, to report errors in file order.
    pub(crate) seq: usize,
    /// The entity as the file gives it, without its nested children.
    pub(crate) given: Value,
    /// What is written: references normalised, children removed, the id filled.
    pub(crate) obj: Map<String, Value>,
    /// Its id: given by the file, or assigned by [`Store::apply_config`].
    pub(crate) id: Option<Uuid>,
    /// The entity it is nested in (an index into the list), and the field naming it.
    pub(crate) parent: Option<(usize, &'static str)>,
    /// Problems found before anything is written: (field, message).
    pub(crate) errors: Vec<(Option<String>, String)>,
}

/// One change an import makes.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// Create, replace (an update) or delete.
    pub(crate) action: Action,
    /// Its collection.
    pub(crate) collection: &'static str,
    /// Its id.
    pub(crate) id: Uuid,
    /// Its name, username, target, group, ... when it has one.
    pub(crate) name: Option<String>,
}

/// What an import did, or would do.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The config version after it (unchanged when nothing was committed).
    pub(crate) version: i64,
    /// Whether a new version was committed.
    pub(crate) committed: bool,
    /// Creates, updates and deletes.
    pub(crate) changes: Vec<Change>,
}

/// The errors of one entity of a file (Kong's `flattened_errors` entry, with its `path`).
#[derive(Debug, Clone)]
pub(crate) struct EntityError {
    collection: &'static str,
    segments: Vec<(&'static str, usize)>,
    seq: usize,
    entity: Value,
    errors: Vec<(Option<String>, String)>,
}

// === impl Change ===

impl Change {
    pub(crate) fn new(action: Action, collection: &'static str, id: Uuid, item: &Value) -> Self {
        Self {
            action,
            collection,
            id,
            name: entity_name(collection, item),
        }
    }

    fn verb(&self) -> &'static str {
        match self.action {
            Action::Create => "create",
            Action::Delete => "delete",
            Action::Update | Action::Replace => "update",
        }
    }

    fn to_json(&self) -> Value {
        json!({"action": self.verb(), "entity": self.collection, "id": self.id, "name": self.name})
    }
}

// === impl Outcome ===

impl Outcome {
    fn count(&self, verb: &str) -> usize {
        self.changes.iter().filter(|c| c.verb() == verb).count()
    }

    /// The JSON answer of `POST /config` and `config import`.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "config_version": self.version,
            "committed": self.committed,
            "created": self.count("create"),
            "updated": self.count("update"),
            "deleted": self.count("delete"),
            "changes": self.changes.iter().map(Change::to_json).collect::<Vec<_>>(),
        })
    }

    /// One line per change, `diff`-like: `+ services example (id)`.
    fn text(&self) -> String {
        let mut out = String::new();
        for change in &self.changes {
            let sign = match change.verb() {
                "create" => '+',
                "delete" => '-',
                _ => '~',
            };
            let name = change.name.as_deref().unwrap_or("-");
            out.push_str(&format!(
                "{sign} {} {name} ({})\n",
                change.collection, change.id
            ));
        }
        out.push_str(&format!(
            "{} to create, {} to update, {} to delete\n",
            self.count("create"),
            self.count("update"),
            self.count("delete")
        ));
        out
    }
}

// === impl EntityError ===

impl EntityError {
    /// The errors the write path answered for `entity`.
    pub(crate) fn from_api(entity: &Desired, error: &ApiError) -> Self {
        Self {
            collection: entity.collection,
            segments: entity.segments.clone(),
            seq: entity.seq,
            entity: redact(entity.collection, &entity.given),
            errors: error_items(error),
        }
    }

    /// The problems found in `entity` before writing.
    pub(crate) fn structural(entity: &Desired) -> Self {
        Self {
            collection: entity.collection,
            segments: entity.segments.clone(),
            seq: entity.seq,
            entity: redact(entity.collection, &entity.given),
            errors: entity.errors.clone(),
        }
    }

    /// A stored entity the file leaves out that cannot be deleted (still referenced).
    pub(crate) fn undeletable(collection: &'static str, item: &Value, error: &ApiError) -> Self {
        Self {
            collection,
            segments: Vec::new(),
            seq: usize::MAX,
            entity: redact(collection, item),
            errors: error_items(error)
                .into_iter()
                .map(|(field, message)| {
                    (
                        field,
                        format!("cannot delete this stored entity: {message}"),
                    )
                })
                .collect(),
        }
    }

    /// Sorts errors in file order.
    pub(crate) fn order_key(&self) -> usize {
        self.seq
    }

    fn path(&self) -> String {
        let parts: Vec<String> = self
            .segments
            .iter()
            .map(|(key, index)| format!("{key}[{index}]"))
            .collect();
        parts.join(".")
    }

    /// Kong's `flattened_errors` entry, plus `path`.
    fn to_json(&self) -> Value {
        let errors: Vec<Value> = self
            .errors
            .iter()
            .map(|(field, message)| match field {
                Some(field) => json!({"type": "field", "field": field, "message": message}),
                None => json!({"type": "entity", "message": message}),
            })
            .collect();
        json!({
            "entity_type": crate::admin::singular(self.collection),
            "entity_name": entity_name(self.collection, &self.entity),
            "entity_id": self.entity.get("id").cloned().unwrap_or(Value::Null),
            "entity_tags": self.entity.get("tags").cloned().unwrap_or(Value::Null),
            "entity": self.entity,
            "path": self.path(),
            "errors": errors,
        })
    }
}

/// The answer to an invalid file: Kong's code 14 with `fields` (nested as the file) and
/// `flattened_errors` (one entry per entity, with its path in the file).
pub(crate) fn invalid(errors: &[EntityError]) -> ApiError {
    let mut fields = Value::Object(Map::new());
    let mut quoted = Vec::new();
    for error in errors {
        let mut leaf = Map::new();
        for (field, message) in &error.errors {
            let path = error.path();
            match field {
                Some(field) => {
                    insert_dotted(&mut leaf, field, message);
                    quoted.push(format!("{}: {message}", join_path(&path, field)));
                }
                None => {
                    let list = leaf
                        .entry("@entity")
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(list) = list {
                        list.push(Value::from(message.as_str()));
                    }
                    let at = if path.is_empty() {
                        format!("{} {}", error.collection, entity_label(error))
                    } else {
                        path
                    };
                    quoted.push(format!("{at}: {message}"));
                }
            }
        }
        if error.segments.is_empty() {
            // A stored entity: under its collection, by id.
            let key = format!("@stored {}", entity_label(error));
            if let Value::Object(root) = &mut fields {
                let group = root
                    .entry(error.collection)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(group) = group {
                    group.insert(key, Value::Object(leaf));
                }
            }
        } else {
            insert_at(&mut fields, &error.segments, leaf);
        }
    }
    let count = quoted.len();
    let shown: Vec<String> = quoted.into_iter().take(MESSAGE_ERRORS).collect();
    let more = if count > MESSAGE_ERRORS { "; ..." } else { "" };
    ApiError::Declarative {
        message: format!(
            "declarative config is invalid: {count} error{} ({}{more})",
            if count == 1 { "" } else { "s" },
            shown.join("; ")
        ),
        fields,
        flattened: errors.iter().map(EntityError::to_json).collect(),
    }
}

/// An invalid file whose problem is not in one entity (its format version, a top-level key).
fn invalid_file(problems: Vec<(String, String)>) -> ApiError {
    let mut fields = Map::new();
    for (key, message) in &problems {
        fields.insert(key.clone(), Value::from(message.as_str()));
    }
    let quoted: Vec<String> = problems.iter().map(|(k, m)| format!("{k}: {m}")).collect();
    ApiError::Declarative {
        message: format!("declarative config is invalid: {}", quoted.join("; ")),
        fields: Value::Object(fields),
        flattened: Vec::new(),
    }
}

fn entity_label(error: &EntityError) -> String {
    entity_name(error.collection, &error.entity)
        .or_else(|| {
            error
                .entity
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

fn join_path(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// Puts `message` at a dotted field path (`config.allow`) of `map`.
fn insert_dotted(map: &mut Map<String, Value>, field: &str, message: &str) {
    match field.split_once('.') {
        None => {
            map.insert(field.to_owned(), Value::from(message));
        }
        Some((head, rest)) => {
            let inner = map.entry(head).or_insert_with(|| Value::Object(Map::new()));
            if !inner.is_object() {
                *inner = Value::Object(Map::new());
            }
            if let Value::Object(inner) = inner {
                insert_dotted(inner, rest, message);
            }
        }
    }
}

/// Puts `leaf` at `segments` of the nested error tree (arrays positional, padded with null).
fn insert_at(tree: &mut Value, segments: &[(&'static str, usize)], leaf: Map<String, Value>) {
    let Some(((key, index), rest)) = segments.split_first() else {
        if let Value::Object(node) = tree {
            node.extend(leaf);
        }
        return;
    };
    if !tree.is_object() {
        *tree = Value::Object(Map::new());
    }
    let Value::Object(node) = tree else { return };
    let list = node.entry(*key).or_insert_with(|| Value::Array(Vec::new()));
    if !list.is_array() {
        *list = Value::Array(Vec::new());
    }
    let Value::Array(list) = list else { return };
    if list.len() <= *index {
        list.resize(index + 1, Value::Null);
    }
    if list[*index].is_null() {
        list[*index] = Value::Object(Map::new());
    }
    insert_at(&mut list[*index], rest, leaf);
}

/// The (field, message) pairs of an error of the write path.
fn error_items(error: &ApiError) -> Vec<(Option<String>, String)> {
    match error {
        ApiError::Schema(fields) => {
            let mut out = Vec::new();
            if let Value::Object(map) = fields.to_json() {
                for (key, value) in map {
                    if key == "@entity" {
                        for message in value.as_array().into_iter().flatten() {
                            out.push((None, text(message)));
                        }
                    } else {
                        leaves(&key, &value, &mut out);
                    }
                }
            }
            out
        }
        ApiError::ForeignKey { field, .. } => vec![(Some(field.clone()), error.to_string())],
        ApiError::Unique(key) => vec![(key.keys().next().cloned(), error.to_string())],
        ApiError::PrimaryKey(_) => vec![(Some("id".into()), error.to_string())],
        other => vec![(None, other.to_string())],
    }
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// Every message of a nested error value, with its dotted path (list positions count from 1,
/// as in the Admin API's messages).
fn leaves(prefix: &str, value: &Value, out: &mut Vec<(Option<String>, String)>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                leaves(&format!("{prefix}.{key}"), inner, out);
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                if !inner.is_null() {
                    leaves(&format!("{prefix}.{}", i + 1), inner, out);
                }
            }
        }
        other => out.push((Some(prefix.to_owned()), text(other))),
    }
}

/// An entity as echoed in an error: without private keys or plugin secrets.
fn redact(collection: &str, item: &Value) -> Value {
    let mut item = item.clone();
    if let Value::Object(obj) = &mut item {
        if collection == "certificates" {
            for secret in ["key", "key_alt"] {
                if obj.get(secret).is_some_and(|v| !v.is_null()) {
                    obj.insert(secret.into(), Value::from("[redacted]"));
                }
            }
        }
        if collection == "plugins"
            && let Some(Value::Object(config)) = obj.get_mut("config")
            && config.get("eab_hmac_key").is_some_and(|v| !v.is_null())
        {
            config.insert("eab_hmac_key".into(), Value::from("[redacted]"));
        }
    }
    item
}

/// How an entity is called, when it has a name-like field.
fn entity_name(collection: &str, item: &Value) -> Option<String> {
    let field = match collection {
        "consumers" => "username",
        "targets" => "target",
        "acls" => "group",
        "mtls_auth_credentials" => "subject_name",
        "plugins" => "name",
        "snis" | "services" | "routes" | "upstreams" => "name",
        _ => return None,
    };
    item.get(field).and_then(Value::as_str).map(str::to_owned)
}

// === Import ===

/// Collections in the order deletes go: children before their parents.
pub(crate) fn child_collection_order() -> impl Iterator<Item = &'static str> {
    COLLECTIONS.iter().rev().copied().filter(|c| *c != "snis")
}

/// Parses a file: JSON when it starts with `{`, else YAML (serde-saphyr, with its default
/// budget against alias bombs and deep nesting).
pub(crate) fn parse(text: &str) -> Result<Value, ApiError> {
    let parsed = if text.trim_start().starts_with('{') {
        serde_json::from_str::<Value>(text).map_err(|e| e.to_string())
    } else {
        serde_saphyr::from_str::<Value>(text).map_err(|e| e.to_string())
    };
    parsed.map_err(|reason| ApiError::Declarative {
        message: format!("failed parsing declarative configuration: {reason}"),
        fields: json!({}),
        flattened: Vec::new(),
    })
}

/// Turns a parsed file into its entities, parents before children (the order of
/// [`COLLECTIONS`]), each with its path. Problems of the file as a whole are an error at once;
/// problems of one entity travel with it ([`Desired::errors`]).
pub(crate) fn flatten(file: &Value) -> Result<Vec<Desired>, ApiError> {
    let Value::Object(top) = file else {
        return Err(invalid_file(vec![(
            "@file".into(),
            "expected a map of entity lists with a _format_version".into(),
        )]));
    };
    let mut problems = Vec::new();
    match top.get("_format_version") {
        None | Some(Value::Null) => {
            problems.push(("_format_version".into(), "required field missing".into()));
        }
        Some(version) => {
            // `3.0` unquoted in YAML is a number.
            let version = match version {
                Value::String(s) => s.clone(),
                Value::Number(n) => format!("{:.1}", n.as_f64().unwrap_or_default()),
                other => other.to_string(),
            };
            if !ACCEPTED_VERSIONS.contains(&version.as_str()) {
                problems.push((
                    "_format_version".into(),
                    format!("expected one of: {}", ACCEPTED_VERSIONS.join(", ")),
                ));
            }
        }
    }
    let mut walked = Vec::new();
    for (key, value) in top {
        if key == "_format_version" || IGNORED_KEYS.contains(&key.as_str()) {
            continue;
        }
        let Some(collection) = writable_collections().find(|c| c == key) else {
            let message = if key == "snis" {
                "nest snis under their certificate (certificates[].snis)".to_owned()
            } else {
                format!(
                    "unknown field: Gatehouse has no '{key}' entities (it has {})",
                    writable_collections().collect::<Vec<_>>().join(", ")
                )
            };
            problems.push((key.clone(), message));
            continue;
        };
        match value {
            Value::Null => {}
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    walk(
                        collection,
                        vec![(collection, index)],
                        item,
                        None,
                        &mut walked,
                    );
                }
            }
            _ => problems.push((key.clone(), "expected an array".into())),
        }
    }
    if !problems.is_empty() {
        return Err(invalid_file(problems));
    }
    // Parents before children: by collection, then file order. Nested parents are remapped.
    let rank = |c: &str| {
        COLLECTIONS
            .iter()
            .position(|x| *x == c)
            .unwrap_or(usize::MAX)
    };
    let mut order: Vec<usize> = (0..walked.len()).collect();
    order.sort_by_key(|i| (rank(walked[*i].collection), walked[*i].seq));
    let mut new_index = vec![0; walked.len()];
    for (new, old) in order.iter().enumerate() {
        new_index[*old] = new;
    }
    let mut out: Vec<Desired> = order.iter().map(|i| walked[*i].clone()).collect();
    for entity in &mut out {
        if let Some((parent, field)) = entity.parent {
            entity.parent = Some((new_index[parent], field));
        }
    }
    Ok(out)
}

/// Walks one entity and its nested children into `out` (in file order).
fn walk(
    collection: &'static str,
    segments: Vec<(&'static str, usize)>,
    item: &Value,
    parent: Option<(usize, &'static str)>,
    out: &mut Vec<Desired>,
) {
    let seq = out.len();
    let mut entity = Desired {
        collection,
        segments: segments.clone(),
        seq,
        given: item.clone(),
        obj: Map::new(),
        id: None,
        parent,
        errors: Vec::new(),
    };
    let Value::Object(given) = item else {
        entity.errors.push((None, "expected a record".into()));
        out.push(entity);
        return;
    };
    let mut obj = given.clone();
    let mut children = Vec::new();
    for (parent_collection, child) in NESTED {
        if *parent_collection == collection
            && let Some(list) = obj.remove(*child)
        {
            children.push((*child, list));
        }
    }
    let mut shown = obj.clone();
    if collection == "certificates" {
        // decK writes `snis: [{name: ...}]`; the Admin API's shorthand takes names.
        match obj.remove("snis") {
            None | Some(Value::Null) => {
                obj.insert("snis".into(), json!([]));
            }
            Some(Value::Array(items)) => {
                let names: Vec<Value> = items
                    .into_iter()
                    .map(|sni| match sni {
                        Value::Object(mut sni) => sni.remove("name").unwrap_or(Value::Null),
                        other => other,
                    })
                    .collect();
                obj.insert("snis".into(), Value::Array(names));
            }
            Some(other) => {
                obj.insert("snis".into(), other);
            }
        }
    }
    match obj.get("id") {
        None | Some(Value::Null) => {}
        Some(Value::String(id)) => match Uuid::parse_str(id) {
            Ok(id) => entity.id = Some(id),
            Err(_) => entity
                .errors
                .push((Some("id".into()), "expected a valid UUID".into())),
        },
        Some(_) => entity
            .errors
            .push((Some("id".into()), "expected a valid UUID".into())),
    }
    normalise_references(collection, &mut obj);
    if let Some((_, field)) = parent {
        // The nesting names the parent (filled with its id once known).
        obj.insert(field.to_owned(), Value::Null);
    }
    shown.retain(|key, _| key != "snis" || collection != "certificates");
    if collection == "certificates"
        && let Some(snis) = given.get("snis")
    {
        shown.insert("snis".into(), snis.clone());
    }
    entity.given = Value::Object(shown);
    entity.obj = obj;
    out.push(entity);
    for (child, list) in children {
        let Some(child) = writable_collections().find(|c| *c == child) else {
            continue;
        };
        let Some(field) = crate::admin::parent_field(collection, child) else {
            continue;
        };
        match list {
            Value::Null => {}
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let mut path = segments.clone();
                    path.push((child, index));
                    walk(child, path, item, Some((seq, field)), out);
                }
            }
            _ => {
                if let Some(entity) = out.get_mut(seq) {
                    entity
                        .errors
                        .push((Some(child.to_owned()), "expected an array".into()));
                }
            }
        }
    }
}

/// A reference written as a string, as Kong's files do (`service: example`, `consumer:
/// <uuid>`), becomes the Admin API's `{"id": ...}` or `{"name": ...}`.
fn normalise_references(collection: &str, obj: &mut Map<String, Value>) {
    let Some(schema) = entities::schema(collection) else {
        return;
    };
    for field in &schema.fields {
        let Type::Foreign(target) = field.ty else {
            continue;
        };
        let Some(Value::String(reference)) = obj.get(field.name) else {
            continue;
        };
        let reference = reference.clone();
        let key = if Uuid::parse_str(&reference).is_ok() {
            Some("id")
        } else {
            entities::schema(target)
                .and_then(|s| s.reference_keys().next())
                .map(|f| f.name)
        };
        if let Some(key) = key {
            obj.insert(field.name.to_owned(), json!({ key: reference }));
        }
    }
}

/// Fills the references of entity `index` that name other entities of the file: its nesting
/// parent, and references by a key (`{"name": "example"}`) to an entity the file declares.
pub(crate) fn resolve_references(desired: &mut [Desired], index: usize) {
    let collection = desired[index].collection;
    let Some(schema) = entities::schema(collection) else {
        return;
    };
    if let Some((parent, field)) = desired[index].parent
        && let Some(id) = desired.get(parent).and_then(|p| p.id)
    {
        desired[index]
            .obj
            .insert(field.to_owned(), json!({ "id": id }));
    }
    for field in &schema.fields {
        let Type::Foreign(target) = field.ty else {
            continue;
        };
        let Some(Value::Object(reference)) = desired[index].obj.get(field.name) else {
            continue;
        };
        let Some((key, value)) = reference.iter().next() else {
            continue;
        };
        if reference.len() != 1 || key == "id" || !value.is_string() {
            continue;
        }
        let found = desired.iter().find_map(|other| {
            (other.collection == target && other.obj.get(key) == Some(value))
                .then_some(other.id)
                .flatten()
        });
        if let Some(id) = found {
            desired[index]
                .obj
                .insert(field.name.to_owned(), json!({ "id": id }));
        }
    }
}

/// What identifies an entity when a file gives no id: the same value for a stored entity and
/// for the file's entity means "the same one" (its id is kept).
pub(crate) fn natural_key(collection: &str, item: &Value) -> Option<Value> {
    let get = |key: &str| item.get(key).filter(|v| !v.is_null()).cloned();
    let reference = |key: &str| {
        item.get(key)
            .and_then(|r| r.get("id"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    match collection {
        "services" | "routes" | "upstreams" => get("name").map(|n| json!([n])),
        "consumers" => get("username")
            .map(|u| json!(["username", u]))
            .or_else(|| get("custom_id").map(|c| json!(["custom_id", c]))),
        "certificates" | "ca_certificates" => item
            .get("cert")
            .and_then(Value::as_str)
            .map(|cert| json!(cert.trim())),
        "targets" => get("target").map(|t| json!([reference("upstream"), t])),
        "acls" => get("group").map(|g| json!([reference("consumer"), g])),
        "mtls_auth_credentials" => get("subject_name")
            .map(|s| json!([reference("consumer"), s, reference("ca_certificate")])),
        "plugins" => get("instance_name")
            .map(|i| json!(["instance", i]))
            .or_else(|| {
                get("name").map(|n| {
                    json!([
                        n,
                        reference("service"),
                        reference("route"),
                        reference("consumer")
                    ])
                })
            }),
        _ => None,
    }
}

// === Export ===

/// The configuration (every collection as [`Store::read_config`] reads it) as a declarative
/// file's value.
pub(crate) fn nest(config: &Map<String, Value>) -> Value {
    let items = |collection: &str| -> Vec<Value> {
        config
            .get(collection)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let id_of = |item: &Value| item.get("id").cloned().unwrap_or(Value::Null);
    let refers = |item: &Value, field: &str, id: &Value| {
        item.get(field).and_then(|r| r.get("id")) == Some(id)
    };
    let unset = |item: &Value, field: &str| item.get(field).is_none_or(Value::is_null);
    let plugins = items("plugins");
    let plugins_of = |field: &str, id: &Value, unset_fields: &[&str]| -> Vec<Value> {
        plugins
            .iter()
            .filter(|p| refers(p, field, id) && unset_fields.iter().all(|f| unset(p, f)))
            .map(|p| Value::Object(clean("plugins", p, Some(field))))
            .collect()
    };
    let routes = items("routes");
    let route_out = |route: &Value, under_service: bool| -> Value {
        let mut out = clean("routes", route, under_service.then_some("service"));
        put(&mut out, "plugins", plugins_of("route", &id_of(route), &[]));
        Value::Object(out)
    };

    let mut file = Map::new();
    file.insert("_format_version".into(), Value::from(FORMAT_VERSION));
    let simple = |collection: &str| -> Vec<Value> {
        items(collection)
            .iter()
            .map(|item| Value::Object(clean(collection, item, None)))
            .collect()
    };
    put(&mut file, "ca_certificates", simple("ca_certificates"));
    put(&mut file, "certificates", simple("certificates"));
    let services: Vec<Value> = items("services")
        .iter()
        .map(|service| {
            let id = id_of(service);
            let mut out = clean("services", service, None);
            let nested: Vec<Value> = routes
                .iter()
                .filter(|r| refers(r, "service", &id))
                .map(|r| route_out(r, true))
                .collect();
            put(&mut out, "routes", nested);
            put(&mut out, "plugins", plugins_of("service", &id, &["route"]));
            Value::Object(out)
        })
        .collect();
    put(&mut file, "services", services);
    let lone_routes: Vec<Value> = routes
        .iter()
        .filter(|r| unset(r, "service"))
        .map(|r| route_out(r, false))
        .collect();
    put(&mut file, "routes", lone_routes);
    let children = |collection: &str, field: &str, id: &Value| -> Vec<Value> {
        items(collection)
            .iter()
            .filter(|item| refers(item, field, id))
            .map(|item| Value::Object(clean(collection, item, Some(field))))
            .collect()
    };
    let upstreams: Vec<Value> = items("upstreams")
        .iter()
        .map(|upstream| {
            let mut out = clean("upstreams", upstream, None);
            put(
                &mut out,
                "targets",
                children("targets", "upstream", &id_of(upstream)),
            );
            Value::Object(out)
        })
        .collect();
    put(&mut file, "upstreams", upstreams);
    let consumers: Vec<Value> = items("consumers")
        .iter()
        .map(|consumer| {
            let id = id_of(consumer);
            let mut out = clean("consumers", consumer, None);
            put(&mut out, "acls", children("acls", "consumer", &id));
            put(
                &mut out,
                "mtls_auth_credentials",
                children("mtls_auth_credentials", "consumer", &id),
            );
            put(
                &mut out,
                "plugins",
                plugins_of("consumer", &id, &["route", "service"]),
            );
            Value::Object(out)
        })
        .collect();
    put(&mut file, "consumers", consumers);
    let global: Vec<Value> = plugins
        .iter()
        .filter(|p| ["route", "service", "consumer"].iter().all(|f| unset(p, f)))
        .map(|p| Value::Object(clean("plugins", p, None)))
        .collect();
    put(&mut file, "plugins", global);
    Value::Object(file)
}

/// Inserts a non-empty list.
fn put(obj: &mut Map<String, Value>, key: &str, list: Vec<Value>) {
    if !list.is_empty() {
        obj.insert(key.to_owned(), Value::Array(list));
    }
}

/// An entity as a file holds it: no timestamps, computed facts or nulls; references as ids
/// (but the one its nesting gives); a certificate's SNIs as `[{name: ...}]`.
fn clean(collection: &str, item: &Value, nested_under: Option<&str>) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(obj) = item.as_object() else {
        return out;
    };
    let schema = entities::schema(collection);
    for (key, value) in obj {
        let field = schema.and_then(|s| s.field(key));
        let computed = field.is_some_and(|f| f.access == Access::Computed);
        if value.is_null()
            || computed
            || key == "created_at"
            || key == "updated_at"
            || Some(key.as_str()) == nested_under
        {
            continue;
        }
        let value = match (field.map(|f| &f.ty), key.as_str()) {
            (Some(Type::Foreign(_)), _) => match value.get("id") {
                Some(id) => id.clone(),
                None => continue,
            },
            (_, "snis") if collection == "certificates" => {
                let names: Vec<Value> = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|name| json!({ "name": name }))
                    .collect();
                if names.is_empty() {
                    continue;
                }
                Value::Array(names)
            }
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    out
}

/// A file's text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// YAML (what decK writes by default).
    #[default]
    Yaml,
    /// JSON, pretty-printed.
    Json,
}

/// Renders a file's value.
pub(crate) fn render(file: &Value, format: Format) -> Result<String, ApiError> {
    match format {
        Format::Json => serde_json::to_string_pretty(file)
            .map(|text| text + "\n")
            .map_err(|e| ApiError::Internal(format!("cannot write JSON: {e}"))),
        Format::Yaml => serde_saphyr::to_string(file)
            .map_err(|e| ApiError::Internal(format!("cannot write YAML: {e}"))),
    }
}

/// The current configuration as a file (`config export`, `GET /config`).
pub(crate) async fn export(store: &Store, format: Format) -> Result<String, ApiError> {
    let (_, config) = store.read_config().await?;
    render(&nest(&config), format)
}

/// Parses, checks and applies a file (`config import`, `POST /config`).
pub(crate) async fn import(store: &Store, text: &str, mode: Apply) -> Result<Outcome, ApiError> {
    let file = parse(text)?;
    let desired = flatten(&file)?;
    match store.apply_config(desired, mode).await? {
        Ok(outcome) => Ok(outcome),
        Err(errors) => Err(invalid(&errors)),
    }
}

// === CLI ===

/// `gatehouse-cp config ...`: the configuration as a file.
#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCommand {
    /// Write the whole configuration in Kong's declarative format (`_format_version: "3.0"`).
    Export(ExportArgs),
    /// Replace the whole configuration with a declarative file, in one transaction and one
    /// config version; an invalid file changes nothing.
    Import(ImportArgs),
    /// Show what importing a file would create, update and delete (changes nothing).
    Diff(DiffArgs),
}

/// Arguments of `config export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// `yaml` or `json`.
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    pub format: Format,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub flags: Flags,
}

/// Arguments of `config import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The file (`-`: standard input); YAML or JSON.
    pub file: PathBuf,
    /// Check the file and show what would change, without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub flags: Flags,
}

/// Arguments of `config diff`.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// The file (`-`: standard input); YAML or JSON.
    pub file: PathBuf,
    #[command(flatten)]
    pub flags: Flags,
}

impl ConfigCommand {
    /// The database settings of the command.
    pub fn flags(&self) -> &Flags {
        match self {
            Self::Export(args) => &args.flags,
            Self::Import(args) => &args.flags,
            Self::Diff(args) => &args.flags,
        }
    }
}

fn read_input(path: &PathBuf) -> Result<String, crate::Error> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| crate::Error::Command(format!("cannot read standard input: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(path)
        .map_err(|e| crate::Error::Command(format!("cannot read {}: {e}", path.display())))
}

/// Runs a `config` command against the database of its flags.
pub async fn run(
    command: &ConfigCommand,
    out: &mut dyn std::io::Write,
) -> Result<(), crate::Error> {
    let settings = command.flags().settings()?;
    let store = Store::connect(
        settings.require_database_url()?,
        1,
        settings.plugins.clone(),
    )?;
    store.migrate().await?;
    let fail = |error: ApiError| match &error {
        ApiError::Declarative { .. } => crate::Error::Command(
            serde_json::to_string_pretty(&error.body()).unwrap_or_else(|_| error.to_string()),
        ),
        _ => crate::Error::Command(error.detail()),
    };
    let written = match command {
        ConfigCommand::Export(args) => {
            let text = export(&store, args.format).await.map_err(fail)?;
            match &args.output {
                Some(path) => {
                    write_file(path, &text)?;
                    Ok(())
                }
                None => out.write_all(text.as_bytes()),
            }
        }
        ConfigCommand::Import(args) => {
            let text = read_input(&args.file)?;
            let mode = if args.dry_run {
                Apply::DryRun
            } else {
                Apply::Commit
            };
            let outcome = import(&store, &text, mode).await.map_err(fail)?;
            let mut report = outcome.text();
            if outcome.committed {
                report.push_str(&format!("config version {}\n", outcome.version));
            } else if mode == Apply::DryRun {
                report.push_str("dry run: nothing changed\n");
            } else {
                report.push_str(&format!(
                    "nothing to change (config version {})\n",
                    outcome.version
                ));
            }
            out.write_all(report.as_bytes())
        }
        ConfigCommand::Diff(args) => {
            let text = read_input(&args.file)?;
            let outcome = import(&store, &text, Apply::DryRun).await.map_err(fail)?;
            out.write_all(outcome.text().as_bytes())
        }
    };
    written.map_err(|e| crate::Error::Command(format!("cannot write the output: {e}")))
}

/// Writes `text` to `path` atomically (a temporary file renamed over it).
fn write_file(path: &PathBuf, text: &str) -> Result<(), crate::Error> {
    let fail =
        |e: std::io::Error| crate::Error::Command(format!("cannot write {}: {e}", path.display()));
    let mut temp = path.clone().into_os_string();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let mut file = std::fs::File::create(&temp).map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temp, path).map_err(fail)
}
