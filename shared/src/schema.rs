//! A small schema engine modelled on Kong's: every entity is a list of typed fields with
//! defaults and checks. The engine coerces form-encoded input by type, fills defaults, and
//! collects *every* violation in one pass into Kong-shaped field errors.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The type of a field's value.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Type {
    /// A UTF-8 string.
    String,
    /// A whole number.
    Integer,
    /// Any JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A UUID written as a string.
    Uuid,
    /// An ordered list of elements; the element is described by a nameless field.
    Array(Box<Field>),
    /// A list without duplicates.
    Set(Box<Field>),
    /// A string-keyed map; the values are described by a nameless field.
    Map(Box<Field>),
    /// A nested object with its own fields (unknown keys are refused).
    Record(Vec<Field>),
    /// A reference to another entity, written `{"id": "<uuid>"}` (or by its endpoint key).
    Foreign(&'static str),
}

/// How a field is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Written by the client.
    Normal,
    /// Filled by the server when absent (`id`, `created_at`, `updated_at`); a client may set it.
    Auto,
    /// Computed by the server and never taken from input (certificate facts, digests).
    Computed,
    /// Accepted on input, never stored as a column (`url` on services, `snis` on certificates).
    Transient,
}

/// A check run on a present, well-typed value.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Check {
    /// An integer within an inclusive range.
    Between(i64, i64),
    /// A string out of a fixed set.
    OneOf(&'static [&'static str]),
    /// An integer out of a fixed set.
    IntOneOf(&'static [i64]),
    /// A minimum length for strings (characters) and lists (elements).
    LenMin(usize),
    /// Any other rule; returns the violation message.
    Custom(fn(&Value) -> Result<(), String>),
}

/// One field of a schema.
#[derive(Debug, Clone)]
pub struct Field {
    /// The field's name (empty for array elements and map values).
    pub name: &'static str,
    /// The value's type.
    pub ty: Type,
    /// A null or missing value is a violation.
    pub required: bool,
    /// The value used when the field is absent from input.
    pub default: Option<Value>,
    /// Checks on the present value.
    pub checks: Vec<Check>,
    /// How the field is written.
    pub access: Access,
    /// Values must be unique across the entity's rows.
    pub unique: bool,
    /// For string values: a regular expression (in the dialect common to ECMA-262, Python and
    /// Rust's `regex`) that matches exactly the strings the checks accept, published as the
    /// OpenAPI `pattern`. A unit test holds each one to its checks.
    pub pattern: Option<&'static str>,
}

/// An entity-level rule: looks at the whole (typed, defaulted) object, reports violations
/// that involve several fields, and may fill computed fields or normalise values.
pub type EntityCheck = fn(&mut Map<String, Value>, &mut FieldErrors);

/// The schema of one entity.
#[derive(Debug, Clone)]
pub struct Schema {
    /// Entity name, which is also the collection name (`services`).
    pub name: &'static str,
    /// Fields in response order.
    pub fields: Vec<Field>,
    /// The unique field accepted in URLs besides the id (`name`, `username`, ...).
    pub endpoint_key: Option<&'static str>,
    /// Rules across fields.
    pub entity_checks: Vec<EntityCheck>,
}

/// Violations collected while validating one object, shaped like Kong's `fields`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldErrors {
    fields: Map<String, Value>,
    entity: Vec<String>,
}

// === impl Field ===

impl Field {
    fn new(name: &'static str, ty: Type) -> Self {
        Self {
            name,
            ty,
            required: false,
            default: None,
            checks: Vec::new(),
            access: Access::Normal,
            unique: false,
            pattern: None,
        }
    }

    /// A string field.
    pub fn string(name: &'static str) -> Self {
        Self::new(name, Type::String)
    }

    /// An integer field.
    pub fn integer(name: &'static str) -> Self {
        Self::new(name, Type::Integer)
    }

    /// A number field.
    pub fn number(name: &'static str) -> Self {
        Self::new(name, Type::Number)
    }

    /// A boolean field.
    pub fn boolean(name: &'static str) -> Self {
        Self::new(name, Type::Boolean)
    }

    /// A UUID field.
    pub fn uuid(name: &'static str) -> Self {
        Self::new(name, Type::Uuid)
    }

    /// An array field whose elements are described by `elem`.
    pub fn array(name: &'static str, elem: Field) -> Self {
        Self::new(name, Type::Array(Box::new(elem)))
    }

    /// A set field whose elements are described by `elem`.
    pub fn set(name: &'static str, elem: Field) -> Self {
        Self::new(name, Type::Set(Box::new(elem)))
    }

    /// A map field whose values are described by `value`.
    pub fn map(name: &'static str, value: Field) -> Self {
        Self::new(name, Type::Map(Box::new(value)))
    }

    /// A record field.
    pub fn record(name: &'static str, fields: Vec<Field>) -> Self {
        Self::new(name, Type::Record(fields))
    }

    /// A reference to an entity of `collection`.
    pub fn foreign(name: &'static str, collection: &'static str) -> Self {
        Self::new(name, Type::Foreign(collection))
    }

    /// A nameless element description, for arrays, sets and maps.
    pub fn elem(ty: Type) -> Self {
        Self::new("", ty)
    }

    /// Marks the field required.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Sets the default value.
    pub fn default(mut self, value: Value) -> Self {
        self.default = Some(value);
        self
    }

    /// Adds a check.
    pub fn check(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    /// Adds a custom check.
    pub fn custom(self, rule: fn(&Value) -> Result<(), String>) -> Self {
        self.check(Check::Custom(rule))
    }

    /// Sets how the field is written.
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Publishes `pattern` as the regular expression equivalent to the field's checks.
    pub fn pattern(mut self, pattern: &'static str) -> Self {
        self.pattern = Some(pattern);
        self
    }

    /// Marks the field unique.
    pub fn unique(mut self) -> Self {
        self.unique = true;
        self
    }

    /// True when the field is stored (not transient).
    pub fn is_stored(&self) -> bool {
        self.access != Access::Transient
    }
}

// === impl Schema ===

impl Schema {
    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The fields that may name an entity of this schema in a reference instead of its id
    /// (`{"name": "svc"}`): unique string fields written by clients.
    pub fn reference_keys(&self) -> impl Iterator<Item = &Field> {
        self.fields
            .iter()
            .filter(|f| f.unique && f.access == Access::Normal && matches!(f.ty, Type::String))
    }

    /// Turns form-decoded input (every leaf a string) into typed JSON by the schema's types:
    /// numbers and booleans are parsed, a single value for a list becomes a one-element list,
    /// and the empty string means null. Values that do not parse are left as strings so that
    /// validation reports them with the usual message.
    pub fn coerce_form(&self, input: Value) -> Value {
        coerce_record(&self.fields, input)
    }

    /// Validates a full object (for inserts, replacements, and the merged result of a partial
    /// update): refuses unknown fields, checks types and rules, fills defaults of absent
    /// fields, then runs the entity checks. Computed fields in the input are dropped.
    pub fn validate(&self, obj: &mut Map<String, Value>) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::default();
        validate_record(&self.fields, obj, &mut errors.fields, true);
        if errors.fields.is_empty() {
            for check in &self.entity_checks {
                check(obj, &mut errors);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Merges a partial update into a stored object as Kong does: records are merged key by
    /// key, every other value is replaced.
    pub fn merge(&self, stored: &mut Map<String, Value>, patch: Map<String, Value>) {
        merge_record(&self.fields, stored, patch);
    }
}

fn merge_record(fields: &[Field], stored: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (key, value) in patch {
        let record_fields = fields
            .iter()
            .find(|f| f.name == key)
            .and_then(|f| match &f.ty {
                Type::Record(inner) => Some(inner),
                _ => None,
            });
        match (record_fields, stored.get_mut(&key), value) {
            (Some(inner), Some(Value::Object(old)), Value::Object(new)) => {
                merge_record(inner, old, new)
            }
            (_, _, value) => {
                stored.insert(key, value);
            }
        }
    }
}

fn coerce_record(fields: &[Field], input: Value) -> Value {
    let Value::Object(obj) = input else {
        return coerce_scalar(input);
    };
    let coerced = obj
        .into_iter()
        .map(|(key, value)| {
            let value = match fields.iter().find(|f| f.name == key) {
                Some(field) => coerce(&field.ty, value),
                None => coerce_scalar(value),
            };
            (key, value)
        })
        .collect();
    Value::Object(coerced)
}

fn coerce_scalar(value: Value) -> Value {
    match value {
        Value::String(s) if s.is_empty() => Value::Null,
        other => other,
    }
}

fn coerce(ty: &Type, value: Value) -> Value {
    let value = coerce_scalar(value);
    match (ty, value) {
        (Type::Integer, Value::String(s)) => match s.trim().parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(s),
        },
        (Type::Number, Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(n) => serde_json::Number::from_f64(n).map_or(Value::String(s), Value::Number),
            Err(_) => Value::String(s),
        },
        (Type::Boolean, Value::String(s)) => match s.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(s),
        },
        (Type::Array(elem) | Type::Set(elem), value) => {
            let items = match value {
                Value::Null => return Value::Null,
                Value::Array(items) => items,
                // Maps keyed by position (`hosts[1]=a&hosts[2]=b`) become lists in key order.
                Value::Object(obj) if obj.keys().all(|k| k.parse::<usize>().is_ok()) => {
                    let mut indexed: Vec<(usize, Value)> = obj
                        .into_iter()
                        .filter_map(|(k, v)| k.parse().ok().map(|i| (i, v)))
                        .collect();
                    indexed.sort_by_key(|(i, _)| *i);
                    indexed.into_iter().map(|(_, v)| v).collect()
                }
                single => vec![single],
            };
            Value::Array(items.into_iter().map(|v| coerce(&elem.ty, v)).collect())
        }
        (Type::Map(elem), Value::Object(obj)) => Value::Object(
            obj.into_iter()
                .map(|(k, v)| (k, coerce(&elem.ty, v)))
                .collect(),
        ),
        (Type::Record(fields), value @ Value::Object(_)) => coerce_record(fields, value),
        (Type::Foreign(_), Value::Object(obj)) => Value::Object(
            obj.into_iter()
                .map(|(k, v)| (k, coerce_scalar(v)))
                .collect(),
        ),
        (_, value) => value,
    }
}

/// The violation of a string (or map key) holding a NUL character.
pub const NUL_MESSAGE: &str = "must not contain NUL characters";

/// Validates `obj` against `fields`, recording violations in `errors` (keyed by field name).
fn validate_record(
    fields: &[Field],
    obj: &mut Map<String, Value>,
    errors: &mut Map<String, Value>,
    fill_defaults: bool,
) {
    obj.retain(|key, _| {
        fields
            .iter()
            .find(|f| f.name == key)
            .is_none_or(|f| f.access != Access::Computed)
    });
    for key in obj.keys() {
        if !fields.iter().any(|f| f.name == key) {
            errors.insert(key.clone(), Value::from("unknown field"));
        }
    }
    for field in fields {
        if field.access == Access::Computed || field.access == Access::Transient {
            continue;
        }
        if !obj.contains_key(field.name) {
            if let (true, Some(default)) = (fill_defaults, &field.default) {
                obj.insert(field.name.to_owned(), default.clone());
            }
            if !obj.contains_key(field.name) && field.access != Access::Auto {
                obj.insert(field.name.to_owned(), Value::Null);
            }
        }
        let Some(value) = obj.get_mut(field.name) else {
            continue;
        };
        if let Some(error) = validate_value(field, value, fill_defaults) {
            errors.insert(field.name.to_owned(), error);
        }
    }
}

/// Validates one value; returns the error to report for it (a string, or a nested object for
/// records, or a positional array for lists).
fn validate_value(field: &Field, value: &mut Value, fill_defaults: bool) -> Option<Value> {
    if value.is_null() {
        return field
            .required
            .then(|| Value::from("required field missing"));
    }
    match (&field.ty, &mut *value) {
        // PostgreSQL stores no NUL character in text or jsonb, and no configuration needs one.
        (Type::String, Value::String(s)) if s.contains('\0') => {
            return Some(Value::from(NUL_MESSAGE));
        }
        (Type::String, Value::String(_))
        | (Type::Boolean, Value::Bool(_))
        | (Type::Number, Value::Number(_)) => {}
        (Type::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        (Type::Integer, Value::Number(n)) => {
            // 5.0 is an integer; 5.5 is not.
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => *value = Value::from(f as i64),
                _ => return Some(Value::from("expected an integer")),
            }
        }
        (Type::Uuid, Value::String(s)) => {
            if uuid::Uuid::parse_str(s).is_err() {
                return Some(Value::from("expected a valid UUID"));
            }
        }
        (Type::Foreign(_), Value::Object(obj)) => {
            return validate_foreign(obj);
        }
        (Type::Array(elem) | Type::Set(elem), Value::Array(items)) => {
            let unique = matches!(field.ty, Type::Set(_));
            if let Some(error) = validate_list(elem, items, unique, fill_defaults) {
                return Some(error);
            }
        }
        (Type::Map(elem), Value::Object(map)) => {
            let mut errors = Map::new();
            for (key, item) in map.iter_mut() {
                if key.contains('\0') {
                    errors.insert(key.clone(), Value::from(NUL_MESSAGE));
                } else if let Some(error) = validate_element(elem, item, fill_defaults) {
                    errors.insert(key.clone(), error);
                }
            }
            if !errors.is_empty() {
                return Some(Value::Object(errors));
            }
        }
        (Type::Record(fields), Value::Object(obj)) => {
            let mut errors = Map::new();
            validate_record(fields, obj, &mut errors, fill_defaults);
            if !errors.is_empty() {
                return Some(Value::Object(errors));
            }
        }
        (ty, _) => return Some(Value::from(type_error(ty))),
    }
    run_checks(&field.checks, value).map(Value::from)
}

fn validate_foreign(obj: &Map<String, Value>) -> Option<Value> {
    // A reference is {"id": uuid}; a unique key ({"name": ...}) is resolved by the store
    // before validation, so anything else here is malformed.
    let mut errors = Map::new();
    for (key, value) in obj {
        match (key.as_str(), value) {
            ("id", Value::String(s)) if uuid::Uuid::parse_str(s).is_ok() => {}
            ("id", _) => {
                errors.insert(key.clone(), Value::from("expected a valid UUID"));
            }
            _ => {
                errors.insert(key.clone(), Value::from("unknown field"));
            }
        }
    }
    if !obj.contains_key("id") && errors.is_empty() {
        errors.insert("id".into(), Value::from("required field missing"));
    }
    (!errors.is_empty()).then_some(Value::Object(errors))
}

/// A list element or map value: present means non-null (`["/a", null]` is refused, or the
/// stored configuration could not be read back as the typed model).
fn validate_element(elem: &Field, item: &mut Value, fill_defaults: bool) -> Option<Value> {
    if item.is_null() {
        return Some(Value::from("required field missing"));
    }
    validate_value(elem, item, fill_defaults)
}

fn validate_list(
    elem: &Field,
    items: &mut [Value],
    unique: bool,
    fill_defaults: bool,
) -> Option<Value> {
    let mut errors = vec![Value::Null; items.len()];
    let mut any = false;
    for (i, item) in items.iter_mut().enumerate() {
        if let Some(error) = validate_element(elem, item, fill_defaults) {
            errors[i] = error;
            any = true;
        }
    }
    if any {
        return Some(Value::Array(errors));
    }
    if unique {
        for (i, item) in items.iter().enumerate() {
            if items[..i].contains(item) {
                return Some(Value::from(format!(
                    "{} is duplicated",
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_owned)
                )));
            }
        }
    }
    None
}

fn type_error(ty: &Type) -> &'static str {
    match ty {
        Type::String => "expected a string",
        Type::Integer => "expected an integer",
        Type::Number => "expected a number",
        Type::Boolean => "expected a boolean",
        Type::Uuid => "expected a string",
        Type::Array(_) => "expected an array",
        Type::Set(_) => "expected a set",
        Type::Map(_) => "expected a map",
        Type::Record(_) | Type::Foreign(_) => "expected a record",
    }
}

/// Runs the checks of a present, well-typed value; returns the first violation.
pub fn run_checks(checks: &[Check], value: &Value) -> Option<String> {
    for check in checks {
        let result = match check {
            Check::Between(min, max) => match value.as_i64() {
                Some(n) if (*min..=*max).contains(&n) => Ok(()),
                _ => Err(format!("value should be between {min} and {max}")),
            },
            Check::OneOf(options) => match value.as_str() {
                Some(s) if options.contains(&s) => Ok(()),
                _ => Err(format!("expected one of: {}", options.join(", "))),
            },
            Check::IntOneOf(options) => match value.as_i64() {
                Some(n) if options.contains(&n) => Ok(()),
                _ => Err(format!(
                    "expected one of: {}",
                    options
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
            Check::LenMin(min) => {
                let len = match value {
                    Value::String(s) => s.chars().count(),
                    Value::Array(a) => a.len(),
                    _ => usize::MAX,
                };
                if len >= *min {
                    Ok(())
                } else {
                    Err(format!("length must be at least {min}"))
                }
            }
            Check::Custom(rule) => rule(value),
        };
        if let Err(message) = result {
            return Some(message);
        }
    }
    None
}

// === impl FieldErrors ===

impl FieldErrors {
    /// No violation was recorded.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.entity.is_empty()
    }

    /// Records a violation of one field (the last one for a field wins).
    pub fn field(&mut self, name: &str, message: impl Into<String>) {
        self.fields
            .insert(name.to_owned(), Value::from(message.into()));
    }

    /// Records a violation of a field of a nested record (`config.ca_certificates` as
    /// `{"config": {"ca_certificates": message}}`, Kong's shape).
    pub fn nested_field(&mut self, record: &str, name: &str, message: impl Into<String>) {
        let entry = self
            .fields
            .entry(record.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        if let Value::Object(fields) = entry {
            fields.insert(name.to_owned(), Value::from(message.into()));
        }
    }

    /// Records the violations inside one field: a nested object of messages (a record's or a
    /// reference's members) or a positional array (a list's elements).
    pub fn nested(&mut self, name: &str, errors: Value) {
        self.fields.insert(name.to_owned(), errors);
    }

    /// Records a violation of the entity as a whole (`@entity`).
    pub fn entity(&mut self, message: impl Into<String>) {
        self.entity.push(message.into());
    }

    /// A single-field error.
    pub fn one(name: &str, message: impl Into<String>) -> Self {
        let mut errors = Self::default();
        errors.field(name, message);
        errors
    }

    /// Kong's `fields` object: field errors by name, entity errors under `@entity`.
    pub fn to_json(&self) -> Value {
        let mut fields = self.fields.clone();
        if !self.entity.is_empty() {
            fields.insert("@entity".into(), Value::from(self.entity.clone()));
        }
        Value::Object(fields)
    }

    /// Kong's message: `schema violation (host: required field missing)`, or
    /// `2 schema violations (a: ...; b: ...)` for several.
    pub fn message(&self) -> String {
        let mut flat = BTreeMap::new();
        flatten("", &Value::Object(self.fields.clone()), &mut flat);
        let mut parts: Vec<String> = flat.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
        parts.extend(self.entity.iter().cloned());
        match parts.len() {
            1 => format!("schema violation ({})", parts[0]),
            n => format!("{n} schema violations ({})", parts.join("; ")),
        }
    }
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                flatten(&join(key), value, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if !item.is_null() {
                    flatten(&join(&(i + 1).to_string()), item, out);
                }
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

impl std::fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for FieldErrors {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Schema {
        Schema {
            name: "things",
            fields: vec![
                Field::uuid("id").access(Access::Auto),
                Field::string("name").required(),
                Field::integer("port")
                    .default(json!(80))
                    .check(Check::Between(0, 65535)),
                Field::boolean("enabled").default(json!(true)),
                Field::set("tags", Field::elem(Type::String)),
                Field::record(
                    "config",
                    vec![
                        Field::array("allow", Field::elem(Type::String)),
                        Field::boolean("hide").default(json!(false)),
                    ],
                ),
                Field::string("digest").access(Access::Computed),
            ],
            endpoint_key: Some("name"),
            entity_checks: vec![],
        }
    }

    #[test]
    fn fills_defaults_and_nulls() {
        let mut obj = json!({"name": "a", "config": {}})
            .as_object()
            .cloned()
            .unwrap();
        schema().validate(&mut obj).unwrap();
        assert_eq!(obj["port"], json!(80));
        assert_eq!(obj["enabled"], json!(true));
        assert_eq!(obj["tags"], Value::Null);
        assert_eq!(obj["config"], json!({"allow": null, "hide": false}));
        assert!(
            !obj.contains_key("id"),
            "auto fields are filled by the store"
        );
    }

    #[test]
    fn collects_every_violation() {
        let mut obj = json!({"port": 70000, "enabled": "yes", "bogus": 1, "digest": "x"})
            .as_object()
            .cloned()
            .unwrap();
        let err = schema().validate(&mut obj).unwrap_err();
        assert_eq!(
            err.to_json(),
            json!({
                "name": "required field missing",
                "port": "value should be between 0 and 65535",
                "enabled": "expected a boolean",
                "bogus": "unknown field",
            })
        );
        assert_eq!(
            err.message(),
            "4 schema violations (bogus: unknown field; enabled: expected a boolean; \
             name: required field missing; port: value should be between 0 and 65535)"
        );
    }

    #[test]
    fn coerces_form_values() {
        let raw = json!({"name": "a", "port": "8080", "enabled": "false", "tags": "one",
                         "config": {"allow": "g1", "hide": ""}});
        let coerced = schema().coerce_form(raw);
        assert_eq!(
            coerced,
            json!({"name": "a", "port": 8080, "enabled": false, "tags": ["one"],
                   "config": {"allow": ["g1"], "hide": null}})
        );
    }

    #[test]
    fn set_duplicates_and_nested_errors() {
        let mut obj = json!({"name": "a", "tags": ["x", "x"], "config": {"allow": [1]}})
            .as_object()
            .cloned()
            .unwrap();
        let err = schema().validate(&mut obj).unwrap_err();
        assert_eq!(
            err.to_json(),
            json!({"tags": "x is duplicated", "config": {"allow": ["expected a string"]}})
        );
        assert_eq!(
            err.message(),
            "2 schema violations (config.allow.1: expected a string; tags: x is duplicated)"
        );
    }

    #[test]
    fn null_list_elements_and_map_values_are_refused() {
        let mut obj = json!({"name": "a", "tags": ["x", null], "config": {"allow": [null]}})
            .as_object()
            .cloned()
            .unwrap();
        let err = schema().validate(&mut obj).unwrap_err();
        assert_eq!(
            err.to_json(),
            json!({"tags": [null, "required field missing"],
                   "config": {"allow": ["required field missing"]}})
        );
    }

    #[test]
    fn merge_keeps_unpatched_record_keys() {
        let s = schema();
        let mut stored = json!({"name": "a", "config": {"allow": ["a"], "hide": true}})
            .as_object()
            .cloned()
            .unwrap();
        let patch = json!({"config": {"hide": false}, "port": 1})
            .as_object()
            .cloned()
            .unwrap();
        s.merge(&mut stored, patch);
        assert_eq!(
            Value::Object(stored),
            json!({"name": "a", "port": 1, "config": {"allow": ["a"], "hide": false}})
        );
    }
}
