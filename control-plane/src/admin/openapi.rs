//! The OpenAPI 3.0.3 document of the Admin API, built from the endpoint table
//! ([`super::endpoints`]) and the entity schemas (`gatehouse_shared::entities`), so that it
//! lists exactly the mounted routes and the fields the server validates.
//!
//! Components:
//! - `<Entity>` (`Service`, `CaCertificate`, ...): the entity as returned, and as sent to
//!   POST and PUT. Required fields are those without a default; `readOnly` marks what the
//!   server fills (ids, timestamps, certificate facts), `writeOnly` the input-only shorthands.
//! - `<Entity>Patch`: the body of PATCH (every field optional, no defaults applied).
//! - `<Child>Under<Parent>` (`SniUnderCertificate`, ...): the body of POST/PUT on a nested
//!   endpoint whose parent reference would otherwise be required: it comes from the URL.
//! - `<Body>Upsert` (`AclUnderConsumerUpsert`, `UpstreamUpsert`, ...): the body of PUT when the
//!   URL may name the entity by a key the create body requires; that key may be left out.
//! - `<Entity>List`: one page of a list.
//! - `Plugin`: one of the per-plugin entities (`AclPlugin`, `MtlsAuthPlugin`), each built from
//!   its plugin's schema with its `<Name>Config`; `PluginPatch`: any of their PATCH bodies.
//!
//! Field schemas carry what the validation checks: types, defaults, enums (string and integer),
//! ranges, minimum lengths, required members, and the `pattern` a field publishes as equal to its
//! checks. Request bodies are described as JSON (see [`BODY_TYPES`]).
//! - `Error`, `Message`, `NodeInfo`, `Status`, `TagRow`, `TagList`.
//! - `DataPlane`, `DataPlaneList`, `ClusterStatus`: the `/clustering` endpoints.

use std::fmt::Write as _;

use http::Method;
use serde_json::{Map, Value, json};

use gatehouse_shared::entities::{self, COLLECTIONS, KNOWN_PLUGINS};
use gatehouse_shared::schema::{Access, Check, Field, Schema, Type};

use crate::error::CODES as ERROR_CODES;

use super::auth;
use super::{
    DEFAULT_PAGE_SIZE, Endpoint, MAX_PAGE_SIZE, MAX_TAGS, NESTED, Op, Scope, endpoints,
    parent_field, segment, singular,
};

/// The Admin API's default address (`--admin-listen`).
const SERVER: &str = "http://127.0.0.1:8001";

/// Transient fields that responses nevertheless carry: the store reads a certificate's SNI
/// names back from the `snis` table (`store::entity::select_expr`).
const RETURNED_TRANSIENT: &[(&str, &str)] = &[("certificates", "snis")];

/// Collections whose endpoint key is unique only under their parent, so only the nested
/// endpoints accept it in URLs (`store::entity::read`).
const SCOPED_KEYS: &[&str] = &["acls", "targets"];

/// Collections whose rows other rows reference without `ON DELETE CASCADE` (see the
/// migrations), so that a DELETE may be refused with 400.
const RESTRICTED_DELETES: &[&str] = &["ca_certificates", "certificates", "services"];

/// The media types whose request bodies the document describes by schema. The server also
/// takes Kong's two form encodings, which carry only strings typed by the same schema (see
/// [`DESCRIPTION`]); a JSON Schema cannot describe those strings, so they are documented in prose
/// rather than as a schema that would claim, for example, that `tags=5` is not a list.
const BODY_TYPES: &[&str] = &["application/json"];

const DESCRIPTION: &str = "\
The Kong-compatible Admin API of the Gatehouse control plane: entity names, fields, defaults, \
status codes, pagination and error bodies follow Kong's.

**Bodies** of POST, PUT and PATCH may be `application/json` (used as is), \
`application/x-www-form-urlencoded` or `multipart/form-data`. In the two form encodings dotted \
keys nest (`config.allow=g1`, `service.name=foo`), `hosts[]=a&hosts[]=b` and repeated keys make \
lists, `config[limit]=10` is a map key, values are typed by the schema (`\"80\"` → 80, \
`\"true\"` → true) and an empty value means `null`; multipart file parts become strings. Any \
other content type answers 415. The request bodies below are described as JSON; the form \
encodings take the same fields under the rules above.

**URLs** name an entity by its id or, where the path parameter's description says so, by a \
unique key (`name`, `username`, `instance_name`, an SNI name for certificates, ...).

**Status codes**: 201 on POST, 200 on GET, PATCH and PUT, 204 on DELETE (also when nothing was \
there), 404 `{\"message\": \"Not found\"}`, 409 for unique violations, 400 for everything \
invalid. Every path also answers `HEAD` (with GET) and `OPTIONS` (204 with `Allow`); other \
methods answer 405 `{\"message\": \"Method not allowed\"}`.

**Lists** return `{\"data\": [...], \"offset\": \"...\", \"next\": \"/services?offset=...&size=N\"}`; \
the last page has `\"next\": null` and no `offset`.";

/// The document served at `GET /openapi.json`.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for endpoint in endpoints() {
        let item = paths
            .entry(endpoint.path.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            for method in endpoint.methods {
                item.insert(
                    method.as_str().to_ascii_lowercase(),
                    operation(&endpoint, method),
                );
            }
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Gatehouse Admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": DESCRIPTION,
            "license": {"name": "Apache-2.0"},
        },
        "servers": [{"url": SERVER, "description": "The default `--admin-listen` address"}],
        "tags": tags(),
        "paths": paths,
        "components": {"schemas": schemas(), "securitySchemes": security_schemes()},
        // With `--admin-auth on` a token or a client certificate is required; off, nothing.
        "security": [{}, {"bearerToken": []}, {"kongAdminToken": []}],
    })
}

// === Names ===

/// `ca_certificate` → `CaCertificate`, `mtls-auth` → `MtlsAuth`.
fn pascal(name: &str) -> String {
    name.split(['_', '-'])
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// The component name of a collection's entity (`services` → `Service`).
fn entity_name(collection: &str) -> String {
    pascal(singular(collection))
}

/// The component name of a plugin's config (`mtls-auth` → `MtlsAuthConfig`).
fn config_name(plugin: &str) -> String {
    format!("{}Config", pascal(plugin))
}

/// The component name of a nested create/replace body, when the parent reference is required
/// (`SniUnderCertificate`).
fn nested_name(parent: &str, child: &str) -> String {
    format!("{}Under{}", entity_name(child), entity_name(parent))
}

/// Human names of a collection: (one, several).
fn label(collection: &str) -> (String, String) {
    match collection {
        "ca_certificates" => ("CA certificate".into(), "CA certificates".into()),
        "snis" => ("SNI".into(), "SNIs".into()),
        "acls" => ("ACL".into(), "ACLs".into()),
        "mtls_auth_credentials" => (
            "MTLS-auth credential".into(),
            "MTLS-auth credentials".into(),
        ),
        other => (singular(other).replace('_', " "), other.replace('_', " ")),
    }
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn article(word: &str) -> &'static str {
    let vowel = word.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']);
    if vowel || word.starts_with("SNI") || word.starts_with("MTLS") {
        "an"
    } else {
        "a"
    }
}

/// What identifies one entity of `collection` in a URL; `nested` when the path names its
/// parent too.
fn key_description(collection: &str, nested: bool) -> String {
    let (one, _) = label(collection);
    if collection == "certificates" {
        return format!("id or SNI name of the {one}");
    }
    let key = entities::schema(collection)
        .and_then(|s| s.endpoint_key)
        .filter(|_| nested || !SCOPED_KEYS.contains(&collection));
    match key {
        Some(key) => format!("id or {key} of the {one}"),
        None => format!("id of the {one}"),
    }
}

/// Whether a URL key other than an id can name an entity of `collection`.
fn accepts_key(collection: &str, nested: bool) -> bool {
    let has_key = entities::schema(collection)
        .and_then(|s| s.endpoint_key)
        .is_some();
    collection == "certificates" || (has_key && (nested || !SCOPED_KEYS.contains(&collection)))
}

/// The `{name}` parameters of a path, in order.
fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .collect()
}

// === Tags ===

fn tags() -> Value {
    let mut all = vec![
        json!({"name": "information", "description": "Node information, status and this document."}),
        json!({"name": "tags", "description": "Tagged entities across every collection."}),
        json!({"name": "clustering", "description": "The data planes of the cluster and \
               whether they run the current configuration (`/clustering`)."}),
        json!({"name": "audit", "description": "Who changed what (`/audit`)."}),
        json!({"name": "configuration", "description": "The whole configuration as a \
               declarative file (`/config`)."}),
    ];
    for collection in COLLECTIONS {
        let (_, many) = label(collection);
        let mut description = format!("{} (`/{}`", capitalize(&many), segment(collection, false));
        for (parent, child) in NESTED {
            if child == collection {
                let _ = write!(
                    description,
                    ", `/{}/{{{}}}/{}`",
                    segment(parent, false),
                    singular(parent),
                    segment(collection, true)
                );
            }
        }
        description.push_str(").");
        all.push(json!({"name": collection, "description": description}));
    }
    Value::Array(all)
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().collect::<String>() + chars.as_str(),
        None => String::new(),
    }
}

// === Operations ===

/// One operation, before it becomes JSON.
struct Operation {
    id: String,
    summary: String,
    description: Option<String>,
    tag: String,
    query: Vec<Value>,
    body: Option<Value>,
    responses: Map<String, Value>,
}

fn operation(endpoint: &Endpoint, method: &Method) -> Value {
    let op = match endpoint.op {
        Op::Root | Op::Status | Op::OpenApi | Op::Tags | Op::Tag => {
            information(endpoint.op, method)
        }
        Op::DataPlanes
        | Op::DataPlane
        | Op::ClusterStatus
        | Op::Tokens
        | Op::Token
        | Op::RevokeDataPlane
        | Op::RenewCertificates
        | Op::RenewDataPlaneCertificates => clustering(endpoint.op, method),
        Op::Audit => audit_operation(method),
        Op::Config => config_operation(method),
        Op::Acme | Op::AcmeCertificates => acme_operation(endpoint, method),
        Op::Collection(scope) => collection_operation(scope, method),
        Op::Entity(scope) => entity_operation(scope, method),
    };
    let mut op = op.unwrap_or_else(|| fallback(endpoint, method));
    auth_errors(&mut op.responses);
    let names = path_params(&endpoint.path);
    let mut parameters: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| path_parameter(endpoint, method, name, i + 1 == names.len()))
        .collect();
    parameters.extend(op.query);
    let mut out = Map::new();
    out.insert("operationId".into(), Value::from(op.id));
    out.insert("summary".into(), Value::from(op.summary));
    if let Some(description) = op.description {
        out.insert("description".into(), Value::from(description));
    }
    out.insert("tags".into(), json!([op.tag]));
    if !parameters.is_empty() {
        out.insert("parameters".into(), Value::Array(parameters));
    }
    if let Some(body) = op.body {
        out.insert("requestBody".into(), body);
    }
    out.insert("responses".into(), Value::Object(op.responses));
    Value::Object(out)
}

/// An operation the table gained without this module knowing its meaning: still documented,
/// so that the document never misses a mounted route.
fn fallback(endpoint: &Endpoint, method: &Method) -> Operation {
    let words: String = endpoint
        .path
        .split('/')
        .map(|s| pascal(s.trim_matches(['{', '}']).trim_end_matches(".json")))
        .collect();
    let mut responses = Map::new();
    responses.insert("default".into(), json!({"description": "The response."}));
    Operation {
        id: format!("{}{words}", method.as_str().to_ascii_lowercase()),
        summary: format!("{method} {}", endpoint.path),
        description: None,
        tag: "information".into(),
        query: Vec::new(),
        body: None,
        responses,
    }
}

fn path_parameter(endpoint: &Endpoint, method: &Method, name: &str, last: bool) -> Value {
    let description = if matches!(endpoint.op, Op::Tag) && name == "tag" {
        "A tag".to_owned()
    } else if matches!(
        endpoint.op,
        Op::DataPlane | Op::RevokeDataPlane | Op::RenewDataPlaneCertificates
    ) && name == "id"
    {
        "id of the data plane (its node id, a UUID)".to_owned()
    } else if matches!(endpoint.op, Op::Token) && name == "id" {
        "id of the bootstrap token (a UUID)".to_owned()
    } else {
        match COLLECTIONS.iter().find(|c| singular(c) == name) {
            Some(collection) => {
                // The last parameter of an entity path is the entity; the others are parents,
                // which are looked up on their own (not nested).
                let nested = match endpoint.op {
                    Op::Entity(scope) => last && scope.parent.is_some(),
                    _ => false,
                };
                key_description(collection, nested)
            }
            None => format!("The {name}"),
        }
    };
    // PUT creates what the URL names: a key there must be a valid value of the key field (whose
    // pattern also matches every id). Elsewhere a key that cannot exist is simply not found.
    let put_key_pattern = match endpoint.op {
        Op::Entity(scope) if last && method == Method::PUT => entities::schema(scope.collection)
            .and_then(|s| s.endpoint_key.and_then(|key| s.field(key)))
            .and_then(|f| f.pattern),
        _ => None,
    };
    let schema = if matches!(endpoint.op, Op::Tag) && name == "tag" {
        json!({"type": "string", "pattern": entities::TAG_PATTERN})
    } else if let Some(pattern) = put_key_pattern {
        json!({"type": "string", "pattern": pattern})
    } else {
        json!({"type": "string"})
    };
    json!({
        "name": name,
        "in": "path",
        "required": true,
        "description": description,
        "schema": schema,
    })
}

fn query_parameter(name: &str, description: &str, schema: Value) -> Value {
    json!({
        "name": name,
        "in": "query",
        "required": false,
        "description": description,
        "schema": schema,
    })
}

/// `size` and `offset`.
fn paging_parameters() -> Vec<Value> {
    vec![
        query_parameter(
            "size",
            "Entities per page.",
            json!({"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE}),
        ),
        query_parameter(
            "offset",
            "The `offset` of the previous page, to get the next one.",
            json!({"type": "string"}),
        ),
    ]
}

/// `size`, `offset`, `tags` and the collection's own filters.
fn list_parameters(collection: &str) -> Vec<Value> {
    let mut all = paging_parameters();
    all.push(query_parameter(
        "tags",
        &format!(
            "Only entities with tags: `a,b` means both, `a/b` either (at most {MAX_TAGS} tags, \
             not mixed)."
        ),
        json!({"type": "string", "pattern": tag_filter_pattern()}),
    ));
    match collection {
        "consumers" => all.push(query_parameter(
            "custom_id",
            "Only the consumer with this `custom_id`.",
            json!({"type": "string"}),
        )),
        "certificates" | "ca_certificates" => all.push(query_parameter(
            "expiring_within",
            "Only certificates whose `not_after` falls within this many seconds from now \
             (already expired ones included).",
            json!({"type": "integer", "minimum": 0, "maximum": i64::MAX}),
        )),
        _ => {}
    }
    all
}

/// The `?tags=` filter: one to [`MAX_TAGS`] tags joined by `,` (all) or `/` (any).
fn tag_filter_pattern() -> String {
    let tag = entities::TAG_PATTERN
        .trim_start_matches('^')
        .trim_end_matches('$');
    let more = MAX_TAGS - 1;
    format!("^{tag}(?:(?:,{tag}){{0,{more}}}|(?:/{tag}){{1,{more}}})$")
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn bad_request(description: &str) -> Value {
    json_response(description, schema_ref("Error"))
}

fn not_found(description: &str) -> Value {
    let mut response = json_response(description, schema_ref("Message"));
    response["content"]["application/json"]["example"] = json!({"message": "Not found"});
    response
}

fn message_response(description: &str, example: &str) -> Value {
    let mut response = json_response(description, schema_ref("Message"));
    response["content"]["application/json"]["example"] = json!({ "message": example });
    response
}

/// Responses every write may give besides its success and 404.
fn write_errors(responses: &mut Map<String, Value>) {
    responses.insert(
        "400".into(),
        bad_request(
            "Invalid entity (schema, primary-key or foreign-key violation) or undecodable body.",
        ),
    );
    responses.insert(
        "409".into(),
        json_response(
            "A unique value (name, SNI, ...) is already taken (code 5).",
            schema_ref("Error"),
        ),
    );
    responses.insert(
        "413".into(),
        message_response(
            "The body is larger than `--admin-max-body`.",
            "request body rejected: length limit exceeded",
        ),
    );
    responses.insert(
        "415".into(),
        message_response(
            "The body is neither JSON, urlencoded form nor multipart form.",
            "Unsupported Content-Type",
        ),
    );
}

fn internal_error(responses: &mut Map<String, Value>) {
    responses.insert(
        "500".into(),
        message_response(
            "The database failed; the cause is logged, not returned.",
            "An unexpected error occurred",
        ),
    );
}

fn request_body(schema: &str, required: bool, description: &str) -> Value {
    let content: Map<String, Value> = BODY_TYPES
        .iter()
        .map(|media| ((*media).to_owned(), json!({ "schema": schema_ref(schema) })))
        .collect();
    json!({"required": required, "description": description, "content": content})
}

fn information(op: Op, method: &Method) -> Option<Operation> {
    if method != Method::GET {
        return None;
    }
    let mut responses = Map::new();
    let (id, summary, tag, query, description) = match op {
        Op::Root => {
            responses.insert(
                "200".into(),
                json_response("Node information.", schema_ref("NodeInfo")),
            );
            (
                "getNodeInfo",
                "Node information",
                "information",
                Vec::new(),
                "Version, node id, plugins and configuration of this control plane.",
            )
        }
        Op::Status => {
            responses.insert("200".into(), json_response("Status.", schema_ref("Status")));
            (
                "getStatus",
                "Status",
                "information",
                Vec::new(),
                "Whether the database is reachable, and the current config version.",
            )
        }
        Op::OpenApi => {
            responses.insert(
                "200".into(),
                json_response("This document.", json!({"type": "object"})),
            );
            (
                "getOpenApiDocument",
                "This OpenAPI document",
                "information",
                Vec::new(),
                "The OpenAPI 3.0 document of the Admin API.",
            )
        }
        Op::Tags | Op::Tag => {
            responses.insert(
                "200".into(),
                json_response("One page of tag rows.", schema_ref("TagList")),
            );
            responses.insert(
                "400".into(),
                bad_request("Invalid `size`, `offset` or tag."),
            );
            internal_error(&mut responses);
            if op == Op::Tags {
                (
                    "listTags",
                    "List tags",
                    "tags",
                    paging_parameters(),
                    "Every tag of every entity, as `{entity_name, entity_id, tag}` rows.",
                )
            } else {
                (
                    "listTaggedEntities",
                    "List the entities with a tag",
                    "tags",
                    paging_parameters(),
                    "The entities carrying one tag, as `{entity_name, entity_id, tag}` rows.",
                )
            }
        }
        Op::Collection(_)
        | Op::Entity(_)
        | Op::DataPlanes
        | Op::DataPlane
        | Op::ClusterStatus
        | Op::Audit
        | Op::Config
        | Op::Acme
        | Op::AcmeCertificates
        | Op::Tokens
        | Op::Token
        | Op::RevokeDataPlane
        | Op::RenewCertificates
        | Op::RenewDataPlaneCertificates => {
            return None;
        }
    };
    Some(Operation {
        id: id.into(),
        summary: summary.into(),
        description: Some(description.into()),
        tag: tag.into(),
        query,
        body: None,
        responses,
    })
}

/// How a client authenticates when `--admin-auth on` (client certificates are a TLS matter,
/// which OpenAPI 3.0 cannot describe; see the README).
fn security_schemes() -> Value {
    json!({
        "bearerToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `gatehouse-cp admin-token create`.",
        },
        "kongAdminToken": {
            "type": "apiKey",
            "in": "header",
            "name": "Kong-Admin-Token",
            "description": "The same token in Kong RBAC's header.",
        },
    })
}

/// The refusals of the authentication layer, which any operation may answer.
fn auth_errors(responses: &mut Map<String, Value>) {
    responses.insert(
        "401".into(),
        message_response(
            "`--admin-auth on` and no credential, or one that is unknown, expired or revoked.",
            auth::NO_CREDENTIALS,
        ),
    );
    responses.insert(
        "403".into(),
        message_response(
            "The credential's role does not allow this method (a read-only token writing).",
            "ci, you do not have permissions to create this resource",
        ),
    );
}

fn audit_operation(method: &Method) -> Option<Operation> {
    if method != Method::GET {
        return None;
    }
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json_response("One page of the audit trail.", schema_ref("AuditList")),
    );
    responses.insert(
        "400".into(),
        bad_request("Invalid `size`, `offset` or `entity_id`."),
    );
    internal_error(&mut responses);
    let mut query = paging_parameters();
    query.push(query_parameter(
        "actor",
        "Only writes by this actor (a credential's name, `anonymous`, `gatehouse`).",
        json!({"type": "string"}),
    ));
    query.push(query_parameter(
        "entity",
        "Only writes to this collection (`certificates`, ...).",
        json!({"type": "string"}),
    ));
    query.push(query_parameter(
        "entity_id",
        "Only writes to this entity.",
        json!({"type": "string", "format": "uuid"}),
    ));
    Some(Operation {
        id: "listAudit".into(),
        summary: "List the audit trail".into(),
        description: Some(
            "Every committed write, oldest first: who (credential name, how authenticated, \
             from which address), the request's method and path, the action, the entity and \
             the config version it produced. Never a request body."
                .into(),
        ),
        tag: "audit".into(),
        query,
        body: None,
        responses,
    })
}

fn audit_row_schema() -> Value {
    json!({
        "type": "object",
        "description": "One committed write.",
        "required": ["id", "created_at", "actor", "auth", "method", "path", "action", "entity"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "created_at": {"type": "number", "description": "Unix seconds."},
            "actor": {"type": "string"},
            "credential_id": {"type": "string", "format": "uuid", "nullable": true},
            "auth": {"type": "string", "enum": ["token", "certificate", "none", "internal"]},
            "remote_addr": {"type": "string", "nullable": true},
            "method": {"type": "string"},
            "path": {"type": "string"},
            "action": {"type": "string", "enum": ["create", "update", "replace", "delete"]},
            "entity": {"type": "string"},
            "entity_id": {"type": "string", "format": "uuid", "nullable": true},
            "config_version": {"type": "integer", "nullable": true},
        },
    })
}

/// `GET, POST /config`: the configuration as a declarative file.
fn config_operation(method: &Method) -> Option<Operation> {
    let mut responses = Map::new();
    let flag = |name: &str, description: &str| {
        json!({"name": name, "in": "query", "required": false, "description": description,
               "schema": {"type": "string", "enum": ["0", "1", "true", "false"]}})
    };
    let outcome = json!({"type": "object", "properties": {
        "config_version": {"type": "integer"}, "committed": {"type": "boolean"},
        "created": {"type": "integer"}, "updated": {"type": "integer"},
        "deleted": {"type": "integer"}, "changes": {"type": "array", "items": {"type": "object"}},
    }});
    let (id, summary, description, query, body) = match *method {
        Method::GET => {
            responses.insert(
                "200".into(),
                json_response(
                    "The configuration as Kong's declarative file, in `config` (YAML, or \
                     JSON with `?format=json`).",
                    json!({"type": "object", "properties": {"config": {"type": "string"}}}),
                ),
            );
            responses.insert("400".into(), bad_request("An invalid `format`."));
            internal_error(&mut responses);
            (
                "getConfig",
                "Export the configuration",
                "The whole configuration as a declarative file (`_format_version: \"3.0\"`), \
                 entities nested and ordered by id, as `gatehouse-cp config export` writes it.",
                vec![json!({"name": "format", "in": "query", "required": false,
                            "schema": {"type": "string", "enum": ["yaml", "json"]}})],
                None,
            )
        }
        Method::POST => {
            responses.insert(
                "200".into(),
                json_response("With `dry_run`: what would change.", outcome.clone()),
            );
            responses.insert(
                "201".into(),
                json_response(
                    "Applied: one config version (unchanged when nothing changed).",
                    outcome,
                ),
            );
            responses.insert(
                "304".into(),
                json!({"description": "With `check_hash`: the file changes nothing."}),
            );
            responses.insert(
                "400".into(),
                bad_request(
                    "An invalid file (code 14, every entity's errors in `flattened_errors` \
                     with its `path`), an undecodable body, or an invalid flag value.",
                ),
            );
            responses.insert(
                "415".into(),
                json_response("A multipart body.", schema_ref("Message")),
            );
            internal_error(&mut responses);
            (
                "postConfig",
                "Replace the configuration with a declarative file",
                "Validates the whole file, then replaces the configuration with it in one \
                 transaction and one config version; an invalid file changes nothing. \
                 Entities the file does not declare are deleted. The body may also be YAML \
                 (any other content type), or a urlencoded field `config`.",
                vec![
                    flag("check_hash", "Answer 304 when the file changes nothing."),
                    flag("dry_run", "Only say what would change."),
                    flag(
                        "flatten_errors",
                        "Accepted (errors are always flattened too).",
                    ),
                ],
                Some(json!({"required": true, "content": {
                    "application/json": {"schema": schema_ref("DeclarativeConfig")},
                }})),
            )
        }
        _ => return None,
    };
    Some(Operation {
        id: id.into(),
        summary: summary.into(),
        description: Some(description.into()),
        tag: "configuration".into(),
        query,
        body,
        responses,
    })
}

fn clustering(op: Op, method: &Method) -> Option<Operation> {
    let mut responses = Map::new();
    let (id, summary, description) = match (op, method) {
        (Op::DataPlanes, &Method::GET) => {
            responses.insert(
                "200".into(),
                json_response("Every data plane.", schema_ref("DataPlaneList")),
            );
            (
                "getClusteringDataPlanes",
                "List data planes",
                "Every data plane known to the cluster, whichever control plane it is connected \
                 to, ordered by hostname then id, in one page (`next` is always null). A data \
                 plane stays listed after it disconnects, until deleted.",
            )
        }
        (Op::DataPlane, &Method::DELETE) => {
            responses.insert(
                "204".into(),
                json!({"description": "Forgotten (also when it was not known)."}),
            );
            responses.insert("404".into(), not_found("The id is not a UUID."));
            (
                "deleteClusteringDataPlane",
                "Revoke and forget a data plane",
                "Revokes the data plane's cluster certificates (its stream ends on every \
                 control plane and it cannot connect with them again), then removes it from \
                 the registry, e.g. after it was scaled away.",
            )
        }
        (Op::RevokeDataPlane, &Method::DELETE) => {
            responses.insert("204".into(), json!({"description": "Revoked."}));
            responses.insert("404".into(), not_found("The id is not a UUID."));
            (
                "revokeClusteringDataPlane",
                "Revoke a data plane",
                "Revokes the data plane's cluster certificates: its stream ends on every \
                 control plane within a second and it cannot connect with them again. It stays \
                 in the registry, disconnected.",
            )
        }
        (Op::RenewCertificates, &Method::POST) => {
            responses.insert(
                "202".into(),
                json_response(
                    "Requested; `requested_at` is the request time (Unix seconds).",
                    json!({"type": "object", "properties": {"requested_at": {"type": "integer"}}}),
                ),
            );
            (
                "renewClusteringCertificates",
                "Renew data-plane certificates now",
                "Every control plane asks the enrolled data planes concerned (all of them, or \
                 the one named) whose certificate was issued before the request to renew it at \
                 once, within about a second; e.g. to move the fleet to a new cluster CA \
                 without waiting for each renewal point. Data planes that connect later with an \
                 older certificate are asked too.",
            )
        }
        (Op::RenewDataPlaneCertificates, &Method::POST) => {
            responses.insert(
                "202".into(),
                json_response(
                    "Requested; `requested_at` is the request time (Unix seconds).",
                    json!({"type": "object", "properties": {"requested_at": {"type": "integer"}}}),
                ),
            );
            responses.insert(
                "404".into(),
                not_found("The id is not a UUID, or no such data plane."),
            );
            (
                "renewClusteringDataPlaneCertificate",
                "Renew one data plane's certificate now",
                "As `POST /clustering/data-planes/renew-certificates`, for this data plane only.",
            )
        }
        (Op::Tokens, &Method::GET) => {
            responses.insert(
                "200".into(),
                json_response("Every bootstrap token.", json!({"type": "object"})),
            );
            (
                "getClusteringTokens",
                "List bootstrap tokens",
                "Every bootstrap token with its uses, expiry, labels and status; never the \
                 secret.",
            )
        }
        (Op::Tokens, &Method::POST) => {
            responses.insert(
                "201".into(),
                json_response(
                    "The token; `token` is the secret, shown this once.",
                    json!({"type": "object"}),
                ),
            );
            responses.insert(
                "400".into(),
                bad_request("Invalid `max_uses`, `ttl` or `labels` (code 2), or undecodable body."),
            );
            responses.insert(
                "415".into(),
                message_response(
                    "The body is neither JSON, urlencoded form nor multipart form.",
                    "Unsupported Content-Type",
                ),
            );
            (
                "createClusteringToken",
                "Create a bootstrap token",
                "A token data planes enrol with (`--cluster-bootstrap-token`): `max_uses` \
                 (default 1), `ttl` in seconds (default 3600), `labels` (a map of strings).",
            )
        }
        (Op::Token, &Method::GET) => {
            responses.insert(
                "200".into(),
                json_response("The token.", json!({"type": "object"})),
            );
            responses.insert("404".into(), not_found("No such token."));
            (
                "getClusteringToken",
                "Read a bootstrap token",
                "One bootstrap token; never the secret.",
            )
        }
        (Op::Token, &Method::DELETE) => {
            responses.insert("204".into(), json!({"description": "Revoked."}));
            responses.insert("404".into(), not_found("No such token."));
            (
                "deleteClusteringToken",
                "Revoke a bootstrap token",
                "The token can no longer be used; it stays listed as revoked.",
            )
        }
        (Op::ClusterStatus, &Method::GET) => {
            responses.insert(
                "200".into(),
                json_response("The fleet summary.", schema_ref("ClusterStatus")),
            );
            (
                "getClusteringStatus",
                "Config sync status",
                "The configuration this control plane pushes, how many data planes run it, and \
                 why the others lag.",
            )
        }
        _ => return None,
    };
    internal_error(&mut responses);
    let body = (op == Op::Tokens && method == Method::POST).then(|| {
        json!({
            "required": false,
            "content": {"application/json": {"schema": schema_ref("ClusteringTokenCreate")}},
        })
    });
    Some(Operation {
        id: id.into(),
        summary: summary.into(),
        description: Some(description.into()),
        tag: "clustering".into(),
        query: Vec::new(),
        body,
        responses,
    })
}

/// The `acme` plugin's endpoints (Kong's `kong/plugins/acme/api.lua`).
fn acme_operation(endpoint: &Endpoint, method: &Method) -> Option<Operation> {
    let mut responses = Map::new();
    responses.insert(
        "404".into(),
        not_found("No enabled `acme` plugin (or, for one host, no certificate for it)."),
    );
    internal_error(&mut responses);
    let one = endpoint.path.ends_with("{host}");
    let (id, summary, description, body, query) = match (endpoint.op, method, one) {
        (Op::Acme, &Method::POST, _) => {
            responses.insert(
                "201".into(),
                message_response(
                    "Issued and stored.",
                    "certificate for host a.example.com is created",
                ),
            );
            responses.insert(
                "200".into(),
                message_response(
                    "`test_http_challenge_flow`: the challenge path reaches a data plane.",
                    "sanity test for host a.example.com passed",
                ),
            );
            responses.insert(
                "400".into(),
                message_response(
                    "No or a bad `host`, a port in it, or the sanity check failed.",
                    "host must be provided and containing a single domain",
                ),
            );
            responses.insert(
                "409".into(),
                message_response(
                    "Another control plane is ordering this name.",
                    "an order for host a.example.com is already running",
                ),
            );
            responses.insert(
                "415".into(),
                message_response(
                    "The body is neither JSON, urlencoded form nor multipart form.",
                    "Unsupported Content-Type",
                ),
            );
            responses.insert(
                "500".into(),
                message_response(
                    "The order failed (the CA's reason), or the database failed.",
                    "failed to update certificate: validation failed: ...",
                ),
            );
            (
                "createAcmeCertificate",
                "Order a certificate now",
                "Orders a certificate for `host` from the `acme` plugin's CA and stores it as a \
                 certificate with its SNI (tags `managed-by-acme`, `acme:<host>`); with \
                 `test_http_challenge_flow` only checks that \
                 `http://<host>/.well-known/acme-challenge/` reaches a data plane.",
                Some(request_body(
                    "AcmeRequest",
                    false,
                    "The name (also accepted in the query).",
                )),
                Vec::new(),
            )
        }
        (Op::Acme, &Method::PATCH, _) => {
            responses.insert(
                "202".into(),
                message_response("Renewal started.", "Renewal process started successfully"),
            );
            (
                "renewAcmeCertificates",
                "Renew every certificate",
                "Renews every ACME certificate now, in the background, in place (same \
                 certificate id and SNI).",
                None,
                Vec::new(),
            )
        }
        (Op::AcmeCertificates, &Method::GET, false) => {
            responses.insert(
                "200".into(),
                json_response("Every name.", schema_ref("AcmeCertificateList")),
            );
            (
                "listAcmeCertificates",
                "List ACME certificates",
                "Every name the control plane keeps a certificate for, with its failures.",
                None,
                vec![json!({
                    "name": "invalid_only",
                    "in": "query",
                    "required": false,
                    "description": "Only names without a currently valid certificate.",
                    "schema": {"type": "string"},
                })],
            )
        }
        (Op::AcmeCertificates, &Method::GET, true) => {
            responses.insert(
                "200".into(),
                json_response("The name's certificate.", schema_ref("AcmeCertificateOne")),
            );
            (
                "getAcmeCertificate",
                "One ACME certificate",
                "The certificate of one name.",
                None,
                Vec::new(),
            )
        }
        _ => return None,
    };
    Some(Operation {
        id: id.into(),
        summary: summary.into(),
        description: Some(description.into()),
        tag: "acme".into(),
        query,
        body,
        responses,
    })
}

fn acme_schemas(all: &mut Map<String, Value>) {
    let text = || json!({"type": "string", "nullable": true});
    all.insert(
        "AcmeRequest".into(),
        json!({
            "type": "object",
            "properties": {
                "host": {"type": "string", "description": "The name, without port."},
                "test_http_challenge_flow": {"type": "boolean"},
            },
        }),
    );
    all.insert(
        "AcmeCertificate".into(),
        json!({
            "type": "object",
            "required": ["host", "valid", "failures"],
            "properties": {
                "host": {"type": "string"},
                "digest": text(),
                "issuer_cn": text(),
                "not_before": text(),
                "not_after": text(),
                "valid": {"type": "boolean"},
                "serial_number": text(),
                "pubkey_type": text(),
                "failures": {"type": "integer"},
                "last_error": text(),
                "next_attempt_at": {"type": "integer", "nullable": true},
                "last_success_at": {"type": "integer", "nullable": true},
            },
        }),
    );
    all.insert(
        "AcmeCertificateList".into(),
        json!({
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "array", "items": schema_ref("AcmeCertificate")}},
        }),
    );
    all.insert(
        "AcmeCertificateOne".into(),
        json!({
            "type": "object",
            "required": ["data"],
            "properties": {"data": schema_ref("AcmeCertificate")},
        }),
    );
}

fn collection_operation(scope: Scope, method: &Method) -> Option<Operation> {
    let collection = scope.collection;
    let entity = entity_name(collection);
    let (one, many) = label(collection);
    let parent = scope
        .parent
        .map(|(parent, field)| (parent, field, label(parent).0));
    let mut responses = Map::new();
    if let Some((_, _, parent_one)) = &parent {
        responses.insert(
            "404".into(),
            not_found(&format!("The {parent_one} does not exist.")),
        );
    }
    internal_error(&mut responses);
    let prefix = parent
        .as_ref()
        .map_or_else(String::new, |(p, ..)| entity_name(p));
    if method == Method::GET {
        responses.insert(
            "200".into(),
            json_response(
                &format!("One page of {many}."),
                schema_ref(&format!("{entity}List")),
            ),
        );
        responses.insert(
            "400".into(),
            bad_request("Invalid `size`, `offset` or filter."),
        );
        let summary = match &parent {
            Some((_, _, parent_one)) => {
                format!("List the {many} of {} {parent_one}", article(parent_one))
            }
            None => format!("List {many}"),
        };
        Some(Operation {
            id: format!("list{prefix}{}", pascal(collection)),
            summary,
            description: Some(format!(
                "Pages through {many} in id order; follow `next` until it is null."
            )),
            tag: collection.into(),
            query: list_parameters(collection),
            body: None,
            responses,
        })
    } else if method == Method::POST {
        responses.insert(
            "201".into(),
            json_response(&format!("The created {one}."), schema_ref(&entity)),
        );
        write_errors(&mut responses);
        let (summary, description, body) = match &parent {
            Some((parent, field, parent_one)) => (
                format!(
                    "Create {} {one} for {} {parent_one}",
                    article(&one),
                    article(parent_one)
                ),
                format!(
                    "Creates {} {one} whose `{field}` is the {parent_one} named in the URL.",
                    article(&one)
                ),
                body_schema(collection, Some((*parent, *field))),
            ),
            None => (
                format!("Create {} {one}", article(&one)),
                format!(
                    "Creates {} {one}; absent fields take their defaults.",
                    article(&one)
                ),
                entity.clone(),
            ),
        };
        Some(Operation {
            id: format!("create{prefix}{}", entity_name(collection)),
            summary,
            description: Some(description),
            tag: collection.into(),
            query: Vec::new(),
            body: Some(request_body(&body, true, &format!("The new {one}."))),
            responses,
        })
    } else {
        None
    }
}

/// The body schema of a create or replace: the entity, or its nested variant when the
/// parent reference (taken from the URL) is otherwise required.
fn body_schema(collection: &str, parent: Option<(&str, &str)>) -> String {
    match parent {
        Some((parent, field)) if parent_is_required(collection, field) => {
            nested_name(parent, collection)
        }
        _ => entity_name(collection),
    }
}

/// The endpoint key that a PUT body may leave out because the URL names the entity by it, when
/// the create body requires it (`group` under `/consumers/{c}/acls/{group}`): the PUT body is
/// then `<Body>Upsert`, the create body without that requirement.
fn upsert_key(collection: &str, parent: Option<(&str, &str)>) -> Option<&'static str> {
    let schema = entities::schema(collection)?;
    let key = schema.endpoint_key?;
    (accepts_key(collection, parent.is_some()) && schema.field(key).is_some_and(is_required))
        .then_some(key)
}

fn parent_is_required(collection: &str, field: &str) -> bool {
    entities::schema(collection)
        .and_then(|s| s.field(field))
        .is_some_and(is_required)
}

fn entity_operation(scope: Scope, method: &Method) -> Option<Operation> {
    let collection = scope.collection;
    let entity = entity_name(collection);
    let (one, _) = label(collection);
    let nested = scope.parent.is_some();
    let parent = scope
        .parent
        .map(|(parent, field)| (parent, field, label(parent).0));
    let prefix = parent
        .as_ref()
        .map_or_else(String::new, |(p, ..)| entity_name(p));
    let of_parent = match &parent {
        Some((_, _, parent_one)) => format!(" of {} {parent_one}", article(parent_one)),
        None => String::new(),
    };
    let missing = match &parent {
        Some((_, _, parent_one)) => format!("The {one} or the {parent_one} does not exist."),
        None => format!("The {one} does not exist."),
    };
    let mut responses = Map::new();
    internal_error(&mut responses);
    let (verb, summary, description, body) = if method == Method::GET {
        responses.insert(
            "200".into(),
            json_response(&format!("The {one}."), schema_ref(&entity)),
        );
        responses.insert("404".into(), not_found(&missing));
        (
            "get",
            format!("Get {} {one}{of_parent}", article(&one)),
            None,
            None,
        )
    } else if method == Method::PATCH {
        responses.insert(
            "200".into(),
            json_response(&format!("The updated {one}."), schema_ref(&entity)),
        );
        responses.insert("404".into(), not_found(&missing));
        write_errors(&mut responses);
        (
            "update",
            format!("Update {} {one}{of_parent}", article(&one)),
            Some(
                "Merges the given fields into the stored entity: records (such as a plugin's \
                 `config`) are merged key by key, other values replaced; the result is \
                 validated as a whole."
                    .to_owned(),
            ),
            Some(request_body(
                &format!("{entity}Patch"),
                false,
                "The fields to change.",
            )),
        )
    } else if method == Method::PUT {
        responses.insert(
            "200".into(),
            json_response(
                &format!("The created or replaced {one}."),
                schema_ref(&entity),
            ),
        );
        if nested || !accepts_key(collection, nested) {
            let reason = match &parent {
                Some((_, _, parent_one)) => format!("The {parent_one} does not exist."),
                None => format!("The URL names the {one} by something other than its id."),
            };
            responses.insert("404".into(), not_found(&reason));
        }
        write_errors(&mut responses);
        let mut description = format!(
            "Creates the {one} named in the URL, or replaces it whole: absent fields are reset \
             to their defaults."
        );
        if let Some(key) = entities::schema(collection).and_then(|s| s.endpoint_key)
            && accepts_key(collection, nested)
            && collection != "certificates"
        {
            let _ = write!(
                description,
                " When the URL names it by `{key}`, the body's `{key}` may be left out."
            );
        }
        if collection == "certificates" {
            description.push_str(" When the URL names it by an SNI, that SNI is added to `snis`.");
        }
        let parent_ref = parent.as_ref().map(|(p, f, _)| (*p, *f));
        let mut body = body_schema(collection, parent_ref);
        if upsert_key(collection, parent_ref).is_some() {
            body.push_str("Upsert");
        }
        // A URL key may supply the only required field: then the body may be absent.
        let body_required = entities::schema(collection).is_none_or(|schema| {
            let parent_field = parent.as_ref().map(|(_, f, _)| *f);
            schema.fields.iter().any(|f| {
                is_required(f)
                    && Some(f.name) != parent_field
                    && !(accepts_key(collection, nested) && Some(f.name) == schema.endpoint_key)
            })
        });
        (
            "upsert",
            format!("Create or replace {} {one}{of_parent}", article(&one)),
            Some(description),
            Some(request_body(
                &body,
                body_required,
                &format!("The whole {one}."),
            )),
        )
    } else if method == Method::DELETE {
        responses.insert(
            "204".into(),
            json!({"description": format!("Deleted, or there was no such {one}.")}),
        );
        if RESTRICTED_DELETES.contains(&collection) {
            responses.insert(
                "400".into(),
                bad_request(&format!(
                    "The {one} is still referenced by other entities (code 4 or 19)."
                )),
            );
        }
        if let Some((_, _, parent_one)) = &parent {
            responses.insert(
                "404".into(),
                not_found(&format!("The {parent_one} does not exist.")),
            );
        }
        (
            "delete",
            format!("Delete {} {one}{of_parent}", article(&one)),
            None,
            None,
        )
    } else {
        return None;
    };
    Some(Operation {
        id: format!("{verb}{prefix}{entity}"),
        summary,
        description,
        tag: collection.into(),
        query: Vec::new(),
        body,
        responses,
    })
}

// === Schemas ===

fn schemas() -> Map<String, Value> {
    let mut all = Map::new();
    all.insert("Error".into(), error_schema());
    all.insert(
        "Message".into(),
        json!({
            "type": "object",
            "description": "An error that is not about an entity: unknown path or entity, \
                            bad body encoding, bad query.",
            "required": ["message"],
            "properties": {"message": {"type": "string"}},
            "example": {"message": "Not found"},
        }),
    );
    all.insert(
        "DeclarativeConfig".into(),
        json!({
            "type": "object",
            "description": "Kong's declarative format: `_format_version` and lists of entities \
                            (services, routes, consumers, plugins, certificates, \
                            ca_certificates, upstreams, targets, acls, \
                            mtls_auth_credentials), children nested under their parents. \
                            Each entity is checked as the Admin API checks it.",
            "required": ["_format_version"],
            "properties": declarative_properties(),
            "additionalProperties": false,
        }),
    );
    all.insert("NodeInfo".into(), node_info_schema());
    all.insert(
        "Status".into(),
        json!({
            "type": "object",
            "required": ["database", "config_version"],
            "properties": {
                "database": {
                    "type": "object",
                    "required": ["reachable"],
                    "properties": {"reachable": {"type": "boolean"}},
                },
                "config_version": {
                    "type": "integer",
                    "nullable": true,
                    "description": "The current config version; null when the database is \
                                    unreachable.",
                },
            },
        }),
    );
    all.insert(
        "TagRow".into(),
        json!({
            "type": "object",
            "required": ["entity_name", "entity_id", "tag"],
            "properties": {
                "entity_name": {"type": "string", "enum": COLLECTIONS},
                "entity_id": {"type": "string", "format": "uuid"},
                "tag": {"type": "string"},
            },
        }),
    );
    all.insert("TagList".into(), page_schema("TagRow", "tag rows"));
    all.insert("DataPlane".into(), data_plane_schema());
    all.insert(
        "ClusteringTokenCreate".into(),
        json!({
            "type": "object",
            "description": "A new bootstrap token; a null field takes its default.",
            "additionalProperties": false,
            "properties": {
                "max_uses": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1, "nullable": true},
                "ttl": {"type": "integer", "minimum": 1, "maximum": 31_536_000, "default": 3600, "nullable": true},
                "labels": {
                    "type": "object",
                    "nullable": true,
                    "maxProperties": 64,
                    "additionalProperties": {"type": "string", "maxLength": 256},
                },
            },
        }),
    );
    all.insert(
        "DataPlaneList".into(),
        json!({
            "type": "object",
            "description": "Every data plane, in one page.",
            "required": ["data", "next"],
            "properties": {
                "data": {"type": "array", "items": schema_ref("DataPlane")},
                "next": {
                    "type": "string",
                    "nullable": true,
                    "description": "Always null: every data plane is on one page.",
                },
            },
        }),
    );
    all.insert("ClusterStatus".into(), cluster_status_schema());
    all.insert("AuditRow".into(), audit_row_schema());
    all.insert("AuditList".into(), page_schema("AuditRow", "audit rows"));
    acme_schemas(&mut all);
    for name in KNOWN_PLUGINS {
        let Some(fields) = plugin_config_fields(name) else {
            continue;
        };
        let description = format!("The `config` of the `{name}` plugin.");
        let mut full = record_schema(fields, false);
        full.insert("description".into(), Value::from(description.clone()));
        all.insert(config_name(name), Value::Object(full));
        let mut patch = record_schema(fields, true);
        patch.insert("description".into(), Value::from(description));
        all.insert(format!("{}Patch", config_name(name)), Value::Object(patch));
    }
    plugin_schemas(&mut all);
    for collection in COLLECTIONS {
        let Some(schema) = entities::schema(collection) else {
            continue;
        };
        let name = entity_name(collection);
        if *collection != "plugins" {
            all.insert(name.clone(), entity_schema(schema, Variant::Full));
            all.insert(
                format!("{name}Patch"),
                entity_schema(schema, Variant::Patch),
            );
        }
        let (_, many) = label(collection);
        all.insert(format!("{name}List"), page_schema(&name, &many));
    }
    for (parent, child) in NESTED {
        let (Some(schema), Some(field)) = (entities::schema(child), parent_field(parent, child))
        else {
            continue;
        };
        if parent_is_required(child, field) {
            all.insert(
                nested_name(parent, child),
                entity_schema(schema, Variant::Nested { parent, field }),
            );
        }
    }
    let scopes = COLLECTIONS.iter().map(|c| (*c, None)).chain(
        NESTED
            .iter()
            .filter_map(|(p, c)| Some((*c, Some((*p, parent_field(p, c)?))))),
    );
    for (collection, parent) in scopes {
        let Some(key) = upsert_key(collection, parent) else {
            continue;
        };
        let base = body_schema(collection, parent);
        let Some(mut upsert) = all.get(&base).cloned() else {
            continue;
        };
        if let Some(required) = upsert.get_mut("required").and_then(Value::as_array_mut) {
            required.retain(|name| name != key);
        }
        if upsert["required"].as_array().is_some_and(Vec::is_empty)
            && let Some(object) = upsert.as_object_mut()
        {
            object.remove("required");
        }
        let description = format!(
            "{} As a PUT body: `{key}` may be left out when the URL names the entity by it.",
            upsert["description"].as_str().unwrap_or_default()
        );
        upsert["description"] = Value::from(description);
        all.insert(format!("{base}Upsert"), upsert);
    }
    all
}

/// `Plugin` is one of the per-plugin entities (`AclPlugin`, ...), each built from that plugin's
/// schema, so that `name` picks the `config` and the protocols that the server validates;
/// `PluginPatch` is any of their PATCH bodies.
fn plugin_schemas(all: &mut Map<String, Value>) {
    let mut full = Vec::new();
    let mut patches = Vec::new();
    for name in KNOWN_PLUGINS {
        let Some(schema) = entities::plugin_schema(name) else {
            continue;
        };
        for (variant, suffix) in [(Variant::Full, ""), (Variant::Patch, "Patch")] {
            let mut entity = entity_schema(schema, variant);
            entity["description"] = Value::from(format!(
                "A `{name}` plugin. {}",
                entity["description"].as_str().unwrap_or_default()
            ));
            entity["properties"]["name"]["enum"] = json!([name]);
            let mut config = json!({
                "allOf": [schema_ref(&format!("{}{suffix}", config_name(name)))],
                "description": format!("The configuration of the `{name}` plugin."),
            });
            let config_required = schema.field("config").is_some_and(is_required);
            if variant == Variant::Full && !config_required {
                config["default"] = json!({});
            }
            entity["properties"]["config"] = config;
            let component = format!("{}Plugin{suffix}", pascal(name));
            all.insert(component.clone(), entity);
            if variant == Variant::Full {
                full.push(schema_ref(&component));
            } else {
                patches.push(schema_ref(&component));
            }
        }
    }
    all.insert(
        "Plugin".into(),
        json!({
            "description": "A plugin: its `name` picks the schema of its `config`.",
            "oneOf": full,
        }),
    );
    all.insert(
        "PluginPatch".into(),
        json!({
            "description": "A PATCH body of a plugin: its `config` is merged into the stored one, \
                            which the stored plugin's `name` describes.",
            "anyOf": patches,
        }),
    );
}

/// The top level of a declarative file: its format version, decK's keys about the file, and a
/// list per collection (each entity is described by its collection's schema, in prose).
fn declarative_properties() -> Value {
    let mut properties = Map::new();
    properties.insert(
        "_format_version".into(),
        json!({"type": "string", "enum": ["1.1", "2.1", "3.0"]}),
    );
    for key in ["_transform", "_comment", "_info", "_workspace", "_konnect"] {
        properties.insert(key.into(), json!({"description": "Ignored."}));
    }
    for collection in COLLECTIONS.iter().filter(|c| **c != "snis") {
        properties.insert(
            (*collection).into(),
            json!({"type": "array", "items": {"type": "object"}, "nullable": true}),
        );
    }
    Value::Object(properties)
}

fn error_schema() -> Value {
    let codes: Vec<u8> = ERROR_CODES.iter().map(|(code, _)| *code).collect();
    let names: Vec<&str> = ERROR_CODES.iter().map(|(_, name)| *name).collect();
    json!({
        "type": "object",
        "description": "Kong's error body. Entity errors carry `code`, `name`, `message` and \
                        `fields` (violations by field name, nested for records; entity-level \
                        ones under `@entity`, references under `@referenced_by`); other errors \
                        (a body that cannot be decoded, a bad query) only `message`.",
        "required": ["message"],
        "properties": {
            "code": {"type": "integer", "enum": codes},
            "name": {"type": "string", "enum": names},
            "message": {"type": "string"},
            "fields": {"type": "object", "additionalProperties": true},
        },
        "example": {
            "code": 2,
            "name": "schema violation",
            "message": "2 schema violations (host: required field missing; port: value should \
                        be between 0 and 65535)",
            "fields": {
                "host": "required field missing",
                "port": "value should be between 0 and 65535",
            },
        },
    })
}

fn node_info_schema() -> Value {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    json!({
        "type": "object",
        "required": [
            "tagline", "version", "edition", "hostname", "node_id", "role", "config_version",
            "plugins", "configuration",
        ],
        "properties": {
            "tagline": {"type": "string", "example": "Welcome to gatehouse"},
            "version": {"type": "string"},
            "edition": {"type": "string", "enum": ["community"]},
            "hostname": {"type": "string"},
            "node_id": {"type": "string", "format": "uuid"},
            "role": {"type": "string", "enum": ["control_plane"]},
            "config_version": {"type": "integer", "nullable": true},
            "plugins": {
                "type": "object",
                "required": ["available_on_server", "enabled", "enabled_in_cluster"],
                "properties": {
                    "available_on_server": {
                        "type": "object",
                        "description": "Every plugin this build knows, by name.",
                        "additionalProperties": {
                            "type": "object",
                            "required": ["version", "enabled"],
                            "properties": {
                                "version": {"type": "string"},
                                "enabled": {"type": "boolean"},
                            },
                        },
                    },
                    "enabled": strings.clone(),
                    "enabled_in_cluster": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Plugins configured on at least one entity.",
                    },
                },
            },
            "configuration": {
                "type": "object",
                "required": [
                    "admin_listen", "database", "plugins", "admin_max_body", "cluster_listen",
                    "cluster_mtls", "status_listen",
                ],
                "properties": {
                    "admin_listen": {"type": "string"},
                    "database": {"type": "string", "enum": ["postgres"]},
                    "plugins": strings,
                    "admin_max_body": {"type": "integer"},
                    "cluster_listen": {
                        "type": "string",
                        "nullable": true,
                        "description": "Address of the cluster listener; null when it is \
                                        disabled (no cluster certificate).",
                    },
                    "cluster_mtls": {"type": "string", "enum": ["shared", "pki"]},
                    "status_listen": {
                        "type": "string",
                        "nullable": true,
                        "description": "Address of the status listener; null when `off`.",
                    },
                },
            },
        },
    })
}

fn data_plane_schema() -> Value {
    let seconds = |description: &str| json!({"type": "integer", "description": description});
    let nullable_seconds = |description: &str| json!({"type": "integer", "nullable": true, "description": description});
    json!({
        "type": "object",
        "description": "A data plane as the registry knows it: Kong's fields plus \
                        `config_version`, `cert_expiry`, `error`, `warnings`, `connected`, \
                        `control_plane` and `created_at`.",
        "required": [
            "id", "hostname", "ip", "version", "config_version", "config_hash", "last_seen",
            "sync_status", "labels", "cert_expiry", "cert_details", "error", "warnings",
            "connected", "control_plane", "created_at", "updated_at",
        ],
        "properties": {
            "id": {"type": "string", "format": "uuid", "description": "The data plane's node id."},
            "hostname": {"type": "string"},
            "ip": {"type": "string", "description": "Address its stream comes from."},
            "version": {"type": "string", "description": "Its Gatehouse version."},
            "config_version": {
                "type": "integer",
                "nullable": true,
                "description": "The config version it runs; null while it runs none.",
            },
            "config_hash": {
                "type": "string",
                "nullable": true,
                "description": "The config hash it runs (hex SHA-256); null while it runs none.",
            },
            "last_seen": seconds("Last time it was heard of, Unix seconds."),
            "sync_status": {
                "type": "string",
                "enum": ["unknown", "normal", "rejected", "version_incompatible"],
                "description": "`rejected`: it refused its last snapshot (see `error`); \
                                `version_incompatible`: the control plane does not serve its \
                                version (see `error`).",
            },
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "cert_expiry": nullable_seconds("End of validity of its cluster certificate, Unix seconds."),
            "cert_details": {
                "type": "object",
                "description": "Its cluster certificate: Kong's `expiry_timestamp`, and for \
                                enrolled data planes the issuer, serial and SPIFFE ID.",
                "properties": {
                    "expiry_timestamp": {"type": "integer", "nullable": true},
                    "days_to_expiry": {"type": "number", "nullable": true},
                    "issuer": {"type": "string", "nullable": true},
                    "serial": {"type": "string", "nullable": true},
                    "spiffe_id": {"type": "string", "nullable": true},
                },
            },
            "error": {
                "type": "string",
                "nullable": true,
                "description": "Why its last snapshot was rejected, or why it was refused.",
            },
            "warnings": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Problems it found in the configuration it runs and made safe \
                                (an authentication plugin instance that cannot be built \
                                refuses every request it covers), as it acknowledged them.",
            },
            "connected": {
                "type": "boolean",
                "description": "Whether its stream to a control plane is open.",
            },
            "control_plane": {
                "type": "string",
                "format": "uuid",
                "nullable": true,
                "description": "Node id of the control plane holding its stream.",
            },
            "created_at": seconds("First registration, Unix seconds."),
            "updated_at": seconds("Last change other than `last_seen`, Unix seconds."),
        },
    })
}

/// One collection's part of `certificate_expiry` in `/clustering/status`.
fn expiry_counts_schema() -> Value {
    let count = json!({"type": "integer", "minimum": 0});
    json!({
        "type": "object",
        "required": ["total", "expired", "expiring", "soonest_id", "soonest_not_after"],
        "properties": {
            "total": count.clone(),
            "expired": count.clone(),
            "expiring": count,
            "soonest_id": {"type": "string", "format": "uuid", "nullable": true},
            "soonest_not_after": {"type": "integer", "nullable": true},
        },
    })
}

fn cluster_status_schema() -> Value {
    let count = json!({"type": "integer", "minimum": 0});
    json!({
        "type": "object",
        "required": [
            "config_version", "config_hash", "snapshots_built", "snapshots_sent",
            "cluster_listener", "data_planes", "lagging", "warnings",
        ],
        "properties": {
            "config_version": {
                "type": "integer",
                "nullable": true,
                "description": "Version of the snapshot this control plane pushes; null before \
                                its first build or without cluster listener.",
            },
            "config_hash": {"type": "string", "nullable": true},
            "snapshots_built": {
                "type": "integer",
                "description": "Snapshots this control plane built since it started.",
            },
            "snapshots_sent": {
                "type": "integer",
                "description": "Snapshots this control plane sent (one per data plane and \
                                snapshot) since it started.",
            },
            "cluster_listener": {"type": "string", "nullable": true},
            "secret_references": {
                "type": "object",
                "description": "Certificate secret references (`{vault://...}`) that did not \
                                resolve at their last resolution on this control plane.",
                "properties": {
                    "failing": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "reference": {"type": "string"},
                                "error": {"type": "string"},
                                "since": {"type": "integer"},
                                "last_good_value_used": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
            "certificate_expiry": {
                "type": "object",
                "description": "Certificates and CA certificates expired (`not_after` passed) \
                                or expiring within `warning_window` seconds \
                                (`--cert-expiry-warning`), with the soonest one.",
                "properties": {
                    "warning_window": count.clone(),
                    "certificates": expiry_counts_schema(),
                    "ca_certificates": expiry_counts_schema(),
                },
            },
            "data_planes": {
                "type": "object",
                "required": ["total", "connected", "in_sync", "with_warnings"],
                "properties": {
                    "total": count.clone(),
                    "connected": count.clone(),
                    "with_warnings": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Data planes whose running configuration has warnings.",
                    },
                    "in_sync": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Connected and running `config_hash`.",
                    },
                },
            },
            "warnings": {
                "type": "array",
                "description": "Every data plane whose running configuration has problems it \
                                made safe, with them.",
                "items": {
                    "type": "object",
                    "required": ["id", "hostname", "config_version", "warnings"],
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "hostname": {"type": "string"},
                        "config_version": {"type": "integer", "nullable": true},
                        "warnings": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            "lagging": {
                "type": "array",
                "description": "Every data plane not in sync.",
                "items": {
                    "type": "object",
                    "required": ["id", "hostname", "config_version", "config_hash", "connected", "reason"],
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "hostname": {"type": "string"},
                        "config_version": {"type": "integer", "nullable": true},
                        "config_hash": {"type": "string", "nullable": true},
                        "connected": {"type": "boolean"},
                        "reason": {
                            "type": "string",
                            "example": "rejected: routes[0]: invalid regex",
                            "description": "`applying version N`, `rejected: <error>`, \
                                            `disconnected since <time>`, `version incompatible: \
                                            <reason>`, `runs version N, newer than this control \
                                            plane's M`.",
                        },
                    },
                },
            },
        },
    })
}

/// `{data: [item], offset, next}`.
fn page_schema(item: &str, many: &str) -> Value {
    json!({
        "type": "object",
        "description": format!("One page of {many}."),
        "required": ["data", "next"],
        "properties": {
            "data": {"type": "array", "items": schema_ref(item)},
            "offset": {
                "type": "string",
                "description": "Pass as `offset` to get the next page; absent on the last page.",
            },
            "next": {
                "type": "string",
                "nullable": true,
                "description": "The path and query of the next page; null on the last page.",
            },
        },
    })
}

/// The fields of a plugin's `config` record.
fn plugin_config_fields(name: &str) -> Option<&'static [Field]> {
    match &entities::plugin_schema(name)?.field("config")?.ty {
        Type::Record(fields) => Some(fields),
        _ => None,
    }
}

/// Which schema of an entity to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant<'a> {
    /// As returned, and as sent to POST and PUT.
    Full,
    /// The body of PATCH: nothing required, no defaults.
    Patch,
    /// The body of POST/PUT on a nested endpoint: the parent reference comes from the URL.
    Nested { parent: &'a str, field: &'a str },
}

/// Required on input: required and without a default (which would fill it).
/// A record with a default counts as required when the default leaves one of its own required
/// members unset (the `config` of `mtls-auth`, whose `ca_certificates` has no default).
fn is_required(field: &Field) -> bool {
    let default_suffices = match (&field.default, &field.ty) {
        (None, _) => false,
        (Some(_), Type::Record(inner)) => !inner.iter().any(is_required),
        (Some(_), _) => true,
    };
    field.required
        && !default_suffices
        && matches!(field.access, Access::Normal | Access::Transient)
}

fn entity_schema(schema: &Schema, variant: Variant<'_>) -> Value {
    let patch = variant == Variant::Patch;
    let collection = schema.name;
    let (one, many) = label(collection);
    let mut properties = Map::new();
    let mut required = Vec::new();
    for field in &schema.fields {
        let mut property = field_schema(field, patch, false);
        let mut notes = Vec::new();
        match field.access {
            Access::Auto => {
                property.insert("readOnly".into(), Value::Bool(true));
                notes.push("Set by the server.".to_owned());
            }
            Access::Computed => {
                property.insert("readOnly".into(), Value::Bool(true));
                notes.push("Computed by the server.".to_owned());
            }
            Access::Transient if !RETURNED_TRANSIENT.contains(&(collection, field.name)) => {
                property.insert("writeOnly".into(), Value::Bool(true));
                notes.push("Input only: never returned.".to_owned());
            }
            _ => {}
        }
        if let Some(note) = field_note(collection, field) {
            notes.push(note);
        }
        if field.unique {
            notes.push(format!("Unique across {many}."));
        }
        if let Variant::Nested {
            parent,
            field: parent_field,
        } = variant
            && field.name == parent_field
        {
            let (parent_one, _) = label(parent);
            notes.push(format!("Taken from the URL: the {parent_one} named there."));
        }
        if !notes.is_empty() {
            let text = match property.get("description").and_then(Value::as_str) {
                Some(existing) => format!("{existing} {}", notes.join(" ")),
                None => notes.join(" "),
            };
            property.insert("description".into(), Value::from(text));
        }
        let parent_from_url =
            matches!(variant, Variant::Nested { field: f, .. } if f == field.name);
        if !patch && !parent_from_url && is_required(field) {
            required.push(Value::from(field.name));
        }
        properties.insert(field.name.to_owned(), Value::Object(property));
    }
    let mut description = format!("{} (`/{}`).", capitalize(&one), segment(collection, false));
    let _ = write!(
        description,
        " Named in URLs by the {}.",
        key_description(collection, false)
    );
    match variant {
        Variant::Full => {}
        Variant::Patch => description.push_str(" As a PATCH body: every field is optional."),
        Variant::Nested { parent, .. } => {
            let (parent_one, _) = label(parent);
            let _ = write!(description, " As a body under its {parent_one}.");
        }
    }
    let mut out = Map::new();
    out.insert("type".into(), Value::from("object"));
    out.insert("description".into(), Value::from(description));
    if !required.is_empty() {
        out.insert("required".into(), Value::Array(required));
    }
    out.insert("properties".into(), Value::Object(properties));
    out.insert("additionalProperties".into(), Value::Bool(false));
    Value::Object(out)
}

/// What a field's schema alone cannot say.
fn field_note(collection: &str, field: &Field) -> Option<String> {
    let note = match (collection, field.name) {
        ("services", "url") => {
            "Shorthand for `protocol`, `host`, `port` and `path`: `https://example.com:8443/api`."
        }
        ("certificates", "snis") => {
            "The certificate's SNI names: creates, keeps in step and deletes its SNI entities."
        }
        ("certificates", "key" | "key_alt") => "A PEM private key; never logged.",
        ("certificates" | "ca_certificates", "not_before" | "not_after") => "Unix seconds.",
        ("routes", "https_redirect_status_code") => "One of 426, 301, 302, 307, 308.",
        ("targets", "target") => "`host[:port]`; stored with its port (default 8000).",
        ("mtls_auth_credentials", "subject_name") => {
            "A subject alternative name or the common name of the client certificate. Unique \
             together with `ca_certificate` (a null `ca_certificate` counting as one value)."
        }
        ("mtls_auth_credentials", "ca_certificate") => {
            "The CA certificate that must have issued the client certificate; null: any CA the \
             plugin trusts. Deleting the CA certificate deletes the credential."
        }
        _ => return None,
    };
    Some(note.to_owned())
}

/// The schema of one field's value. `element` for the nameless fields describing list
/// elements and map values.
fn field_schema(field: &Field, patch: bool, element: bool) -> Map<String, Value> {
    let mut schema = type_schema(&field.ty, patch);
    let is_list = matches!(field.ty, Type::Array(_) | Type::Set(_));
    let nullable =
        !element && !field.required && matches!(field.access, Access::Normal | Access::Transient);
    for check in &field.checks {
        match check {
            Check::Between(min, max) => {
                schema.insert("minimum".into(), Value::from(*min));
                schema.insert("maximum".into(), Value::from(*max));
            }
            Check::OneOf(options) => {
                let mut values: Vec<Value> = options.iter().map(|o| Value::from(*o)).collect();
                if nullable {
                    // OpenAPI 3.0.3: `nullable` does not add null to an `enum`.
                    values.push(Value::Null);
                }
                schema.insert("enum".into(), Value::Array(values));
            }
            Check::IntOneOf(options) => {
                let mut values: Vec<Value> = options.iter().map(|o| Value::from(*o)).collect();
                if nullable {
                    values.push(Value::Null);
                }
                schema.insert("enum".into(), Value::Array(values));
            }
            Check::LenMin(min) => {
                let key = if is_list { "minItems" } else { "minLength" };
                schema.insert(key.into(), Value::from(*min));
            }
            _ => {}
        }
    }
    if let Some(pattern) = field.pattern {
        schema.insert("pattern".into(), Value::from(pattern));
    }
    if let (false, Some(default)) = (patch, &field.default) {
        schema.insert("default".into(), default.clone());
    }
    if nullable {
        schema.insert("nullable".into(), Value::Bool(true));
    }
    schema
}

fn type_schema(ty: &Type, patch: bool) -> Map<String, Value> {
    let value = match ty {
        Type::String => json!({"type": "string"}),
        Type::Integer => json!({"type": "integer", "format": "int64"}),
        Type::Number => json!({"type": "number"}),
        Type::Boolean => json!({"type": "boolean"}),
        Type::Uuid => json!({"type": "string", "format": "uuid"}),
        Type::Array(elem) => json!({"type": "array", "items": field_schema(elem, patch, true)}),
        Type::Set(elem) => json!({
            "type": "array",
            "items": field_schema(elem, patch, true),
            "uniqueItems": true,
        }),
        Type::Map(elem) => json!({
            "type": "object",
            "additionalProperties": field_schema(elem, patch, true),
        }),
        Type::Record(fields) => return record_schema(fields, patch),
        Type::Foreign(target) => foreign_schema(target),
        _ => json!({}),
    };
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A nested record: its own properties, unknown keys refused.
fn record_schema(fields: &[Field], patch: bool) -> Map<String, Value> {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for field in fields {
        properties.insert(
            field.name.to_owned(),
            Value::Object(field_schema(field, patch, false)),
        );
        if !patch && is_required(field) {
            required.push(Value::from(field.name));
        }
    }
    let mut out = Map::new();
    out.insert("type".into(), Value::from("object"));
    if !required.is_empty() {
        out.insert("required".into(), Value::Array(required));
    }
    out.insert("properties".into(), Value::Object(properties));
    out.insert("additionalProperties".into(), Value::Bool(false));
    out
}

/// A reference: `{"id": uuid}`, or on input one unique key of the target (`{"name": ...}`).
fn foreign_schema(target: &str) -> Value {
    let (one, _) = label(target);
    let mut properties = Map::new();
    properties.insert("id".into(), json!({"type": "string", "format": "uuid"}));
    let mut keys = Vec::new();
    if let Some(schema) = entities::schema(target) {
        for field in schema.reference_keys() {
            properties.insert(
                field.name.to_owned(),
                json!({"type": "string", "writeOnly": true}),
            );
            keys.push(format!("`{}`", field.name));
        }
    }
    let mut description = format!(
        "A reference to {} {one}: `{{\"id\": \"<uuid>\"}}`",
        article(&one)
    );
    if !keys.is_empty() {
        let _ = write!(
            description,
            "; on input it may name the {one} by {} instead",
            keys.join(" or ")
        );
    }
    description.push('.');
    json!({
        "type": "object",
        "description": description,
        "properties": properties,
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": false,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    const HTTP_METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// Every `(method, path)` the document lists.
    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if HTTP_METHODS.contains(&method.as_str()) {
                    all.insert((method.clone(), path.clone()));
                }
            }
        }
        all
    }

    /// Every operation: (method, path, operation).
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut all = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if HTTP_METHODS.contains(&method.as_str()) {
                    all.push((method.clone(), path.clone(), op.clone()));
                }
            }
        }
        all
    }

    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(target)) => out.push(target),
                        _ => refs(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} is not local"));
        doc.pointer(pointer)
            .unwrap_or_else(|| panic!("{reference} does not resolve"))
    }

    #[test]
    fn openapi_documents_every_endpoint_method_and_nothing_else() {
        let doc = document();
        let mounted: BTreeSet<(String, String)> = endpoints()
            .iter()
            .flat_map(|e| {
                e.methods
                    .iter()
                    .map(|m| (m.as_str().to_ascii_lowercase(), e.path.clone()))
            })
            .collect();
        let documented = documented(&doc);
        let missing: Vec<_> = mounted.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "mounted but not documented: {missing:?}"
        );
        let extra: Vec<_> = documented.difference(&mounted).collect();
        assert!(extra.is_empty(), "documented but not mounted: {extra:?}");
        // Path items hold nothing but operations.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for key in item.as_object().unwrap().keys() {
                assert!(HTTP_METHODS.contains(&key.as_str()), "{path}: {key}");
            }
        }
    }

    #[test]
    fn openapi_operation_ids_are_unique_and_named_as_promised() {
        let doc = document();
        let mut seen = BTreeMap::new();
        for (method, path, op) in operations(&doc) {
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(
                !op["summary"].as_str().unwrap().is_empty(),
                "{method} {path}"
            );
            if let Some((m, p)) = seen.insert(id.clone(), (method.clone(), path.clone())) {
                panic!("{id} is both {m} {p} and {method} {path}");
            }
        }
        for (id, method, path) in [
            ("listServices", "get", "/services"),
            ("createService", "post", "/services"),
            ("getService", "get", "/services/{service}"),
            ("updateService", "patch", "/services/{service}"),
            ("upsertService", "put", "/services/{service}"),
            ("deleteService", "delete", "/services/{service}"),
            ("listServiceRoutes", "get", "/services/{service}/routes"),
            ("createServiceRoute", "post", "/services/{service}/routes"),
            (
                "getCertificateSni",
                "get",
                "/certificates/{certificate}/snis/{sni}",
            ),
            ("listCaCertificates", "get", "/ca_certificates"),
            ("listMtlsAuthCredentials", "get", "/mtls-auths"),
            (
                "getMtlsAuthCredential",
                "get",
                "/mtls-auths/{mtls_auth_credential}",
            ),
            (
                "listConsumerMtlsAuthCredentials",
                "get",
                "/consumers/{consumer}/mtls-auth",
            ),
            (
                "createConsumerMtlsAuthCredential",
                "post",
                "/consumers/{consumer}/mtls-auth",
            ),
            (
                "upsertConsumerMtlsAuthCredential",
                "put",
                "/consumers/{consumer}/mtls-auth/{mtls_auth_credential}",
            ),
            ("listTags", "get", "/tags"),
            ("getNodeInfo", "get", "/"),
        ] {
            assert_eq!(seen.get(id), Some(&(method.into(), path.into())), "{id}");
        }
    }

    #[test]
    fn openapi_refs_resolve() {
        let doc = document();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 50, "{}", all.len());
        for reference in all {
            assert!(
                reference.starts_with("#/components/"),
                "{reference} is not a component"
            );
            let target = resolve(&doc, reference);
            assert!(target.is_object(), "{reference}");
        }
    }

    #[test]
    fn openapi_has_a_schema_with_every_field_of_every_collection() {
        let doc = document();
        let components = &doc["components"]["schemas"];
        for collection in COLLECTIONS {
            let schema = entities::schema(collection).unwrap();
            // Plugins are one of the per-plugin entities, checked below.
            let names = if *collection == "plugins" {
                Vec::new()
            } else {
                vec![
                    entity_name(collection),
                    format!("{}Patch", entity_name(collection)),
                ]
            };
            for name in names {
                let properties = components[&name]["properties"]
                    .as_object()
                    .unwrap_or_else(|| panic!("no component {name} for {collection}"));
                for field in schema.fields.iter().filter(|f| f.is_stored()) {
                    assert!(properties.contains_key(field.name), "{name}.{}", field.name);
                }
                // Transient input fields are documented too.
                for field in &schema.fields {
                    assert!(properties.contains_key(field.name), "{name}.{}", field.name);
                }
                assert_eq!(properties.len(), schema.fields.len(), "{name}");
            }
            assert_eq!(
                components[format!("{}List", entity_name(collection))]["properties"]["data"]["items"]
                    ["$ref"],
                json!(format!("#/components/schemas/{}", entity_name(collection)))
            );
        }
        for name in KNOWN_PLUGINS {
            let fields = plugin_config_fields(name).unwrap();
            let properties = components[config_name(name)]["properties"]
                .as_object()
                .unwrap();
            for field in fields {
                assert!(properties.contains_key(field.name), "{name}.{}", field.name);
            }
            let component = format!("{}Plugin", pascal(name));
            let variants = components["Plugin"]["oneOf"].as_array().unwrap();
            assert!(variants.contains(&schema_ref(&component)), "{name}");
            let plugin = &components[&component]["properties"];
            assert_eq!(plugin["name"]["enum"], json!([name]));
            assert_eq!(
                plugin["config"]["allOf"][0],
                schema_ref(&config_name(name)),
                "{name}"
            );
            let schema = entities::plugin_schema(name).unwrap();
            assert_eq!(
                plugin.as_object().unwrap().len(),
                schema.fields.len(),
                "{component}"
            );
        }
    }

    #[test]
    fn openapi_entity_schemas_follow_the_field_rules() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let service = &schemas["Service"];
        let props = &service["properties"];
        // Required without default; defaults shown; readOnly/writeOnly by access.
        assert_eq!(service["required"], json!(["host"]));
        assert_eq!(props["protocol"]["default"], json!("http"));
        assert!(
            props["protocol"]["enum"]
                .as_array()
                .unwrap()
                .contains(&json!("https"))
        );
        assert_eq!(props["port"]["minimum"], json!(0));
        assert_eq!(props["port"]["maximum"], json!(65535));
        assert_eq!(props["id"]["format"], json!("uuid"));
        assert_eq!(props["id"]["readOnly"], json!(true));
        assert_eq!(props["created_at"]["readOnly"], json!(true));
        assert_eq!(props["url"]["writeOnly"], json!(true));
        assert_eq!(props["path"]["nullable"], json!(true));
        assert_eq!(props["tags"]["uniqueItems"], json!(true));
        assert_eq!(
            props["client_certificate"]["properties"]["id"]["format"],
            json!("uuid")
        );
        assert_eq!(props["ca_certificates"]["items"]["format"], json!("uuid"));
        assert!(props.get("enabled").unwrap().get("nullable").is_none());

        let certificate = &schemas["Certificate"]["properties"];
        assert!(
            certificate["snis"].get("writeOnly").is_none(),
            "snis are returned"
        );
        assert_eq!(certificate["fingerprint_sha256"]["readOnly"], json!(true));
        assert_eq!(schemas["Certificate"]["required"], json!(["cert", "key"]));

        let route = &schemas["Route"]["properties"];
        assert_eq!(route["protocols"]["minItems"], json!(1));
        assert_eq!(route["headers"]["type"], json!("object"));
        assert_eq!(
            route["headers"]["additionalProperties"]["type"],
            json!("array")
        );
        assert_eq!(
            route["sources"]["items"]["properties"]["port"]["maximum"],
            json!(65535)
        );
        assert_eq!(schemas["Acl"]["properties"]["group"]["minLength"], json!(1));
        let credential = &schemas["MtlsAuthCredential"];
        assert_eq!(credential["required"], json!(["consumer", "subject_name"]));
        assert_eq!(
            credential["properties"]["ca_certificate"]["nullable"],
            json!(true)
        );
        assert_eq!(
            schemas["MtlsAuthCredentialUnderConsumer"]["required"],
            json!(["subject_name"])
        );
        let param = &doc["paths"]["/consumers/{consumer}/mtls-auth/{mtls_auth_credential}"]["get"]
            ["parameters"][1];
        assert_eq!(
            param["description"],
            json!("id of the MTLS-auth credential")
        );

        let upstream = &schemas["Upstream"]["properties"]["healthchecks"];
        assert_eq!(
            upstream["properties"]["active"]["properties"]["http_path"]["default"],
            json!("/")
        );

        // PATCH bodies require nothing and default nothing.
        let patch = &schemas["ServicePatch"];
        assert!(patch.get("required").is_none());
        assert!(patch["properties"]["protocol"].get("default").is_none());
        assert!(schemas["MtlsAuthConfigPatch"].get("required").is_none());
        assert_eq!(
            schemas["MtlsAuthConfig"]["required"],
            json!(["ca_certificates"])
        );

        // Generated from the validation: patterns, integer enums, per-plugin schemas.
        assert_eq!(
            props["tags"]["items"]["pattern"],
            json!(entities::TAG_PATTERN)
        );
        assert_eq!(props["name"]["pattern"], json!(entities::NAME_PATTERN));
        assert_eq!(
            route["https_redirect_status_code"]["enum"],
            json!([426, 301, 302, 307, 308])
        );
        let mtls = &schemas["MtlsAuthPlugin"];
        assert!(
            mtls["required"]
                .as_array()
                .unwrap()
                .contains(&json!("config")),
            "the mtls-auth config has no usable default"
        );
        assert_eq!(
            mtls["properties"]["protocols"]["items"]["enum"],
            json!(["grpc", "grpcs", "http", "https"])
        );
        assert!(
            schemas["AclPlugin"]["properties"]["config"]
                .get("default")
                .is_some()
        );
        // A PUT body may leave out what the URL key gives.
        assert_eq!(schemas["AclUnderConsumer"]["required"], json!(["group"]));
        assert!(schemas["AclUnderConsumerUpsert"].get("required").is_none());
        let put = &doc["paths"]["/consumers/{consumer}/acls/{acl}"]["put"];
        assert_eq!(
            put["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            json!("#/components/schemas/AclUnderConsumerUpsert")
        );
        assert_eq!(put["requestBody"]["required"], json!(false));
        assert_eq!(
            doc["paths"]["/services/{service}"]["put"]["requestBody"]["required"],
            json!(true)
        );
        assert_eq!(
            doc["paths"]["/services/{service}"]["put"]["parameters"][0]["schema"]["pattern"],
            json!(entities::NAME_PATTERN)
        );
        // References list only the keys the store resolves.
        let ca_ref = &schemas["MtlsAuthCredential"]["properties"]["ca_certificate"];
        assert!(
            ca_ref["properties"].get("cert_digest").is_none(),
            "{ca_ref}"
        );

        // Nested bodies take the parent from the URL.
        assert_eq!(schemas["Sni"]["required"], json!(["name", "certificate"]));
        assert_eq!(schemas["SniUnderCertificate"]["required"], json!(["name"]));
        let body = &doc["paths"]["/certificates/{certificate}/snis"]["post"]["requestBody"];
        assert_eq!(
            body["content"]["application/json"]["schema"]["$ref"],
            json!("#/components/schemas/SniUnderCertificate")
        );
    }

    #[test]
    fn acme_operations_follow_kong() {
        let doc = document();
        let acme: Vec<(String, String, Value)> = operations(&doc)
            .into_iter()
            .filter(|(_, path, _)| path.starts_with("/acme"))
            .collect();
        let found: Vec<(&str, &str)> = acme
            .iter()
            .map(|(m, p, _)| (m.as_str(), p.as_str()))
            .collect();
        assert_eq!(
            found.len(),
            4,
            "POST and PATCH /acme, GET /acme/certificates[/{{host}}]: {found:?}"
        );
        for (method, path, op) in &acme {
            let success = match (method.as_str(), path.as_str()) {
                ("post", _) => "201",
                ("patch", _) => "202",
                _ => "200",
            };
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key(success), "{method} {path}");
            assert!(responses.contains_key("404"), "{method} {path}");
            assert_eq!(op["tags"], json!(["acme"]));
        }
    }

    #[test]
    fn openapi_operations_have_parameters_bodies_and_responses() {
        let doc = document();
        for (method, path, op) in operations(&doc) {
            if path.starts_with("/acme") {
                // A plugin's API with Kong's own answers: see `acme_operations_follow_kong`.
                continue;
            }
            let what = format!("{method} {path}");
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let in_path: Vec<&str> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(in_path, path_params(&path), "{what}");
            for p in params.iter().filter(|p| p["in"] == "path") {
                assert_eq!(p["required"], json!(true), "{what}");
                assert_eq!(p["schema"]["type"], json!("string"), "{what}");
                assert!(
                    p["description"].as_str().unwrap().starts_with("id") || p["name"] == "tag",
                    "{what}"
                );
            }
            let query: BTreeSet<&str> = params
                .iter()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            let id = op["operationId"].as_str().unwrap();
            if id.starts_with("list") {
                assert!(query.contains("size") && query.contains("offset"), "{what}");
                let size = params.iter().find(|p| p["name"] == "size").unwrap();
                assert_eq!(
                    size["schema"],
                    json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100})
                );
            } else if !id.ends_with("Config") {
                // `/config` takes Kong's flags (`check_hash`, ...).
                assert!(query.is_empty(), "{what}");
            }
            let responses = op["responses"].as_object().unwrap();
            // Actions take no body and answer 202 (the work happens on every replica).
            let action = path.ends_with("/renew-certificates");
            let success = match method.as_str() {
                "post" if action => "202",
                "post" => "201",
                "delete" => "204",
                _ => "200",
            };
            assert!(responses.contains_key(success), "{what}");
            let body = op.get("requestBody");
            if matches!(method.as_str(), "post" | "put" | "patch") && !action {
                let content = body.unwrap()["content"].as_object().unwrap();
                let types: Vec<&str> = content.keys().map(String::as_str).collect();
                // The form encodings are described in prose (see BODY_TYPES).
                assert_eq!(types, ["application/json"], "{what}");
                for code in ["400", "409", "415"] {
                    // Nothing unique is written by the clustering endpoints; a file's
                    // duplicates are among its errors (400, code 14).
                    if code == "409"
                        && matches!(op["tags"][0].as_str(), Some("clustering" | "configuration"))
                    {
                        continue;
                    }
                    assert!(responses.contains_key(code), "{what} {code}");
                }
                assert_eq!(
                    responses["400"]["content"]["application/json"]["schema"]["$ref"],
                    json!("#/components/schemas/Error")
                );
                let schema = content["application/json"]["schema"]["$ref"]
                    .as_str()
                    .unwrap();
                assert_eq!(method == "patch", schema.ends_with("Patch"), "{what}");
                assert!(
                    !schema.ends_with("Upsert") || method == "put",
                    "{what}: {schema}"
                );
            } else {
                assert!(body.is_none(), "{what}");
            }
            let entity = op["tags"][0] != "tags" && !path_params(&path).is_empty();
            let nested = path_params(&path).len() > 1;
            if entity && (matches!(method.as_str(), "get" | "patch") || nested) {
                assert_eq!(
                    responses["404"]["content"]["application/json"]["schema"]["$ref"],
                    json!("#/components/schemas/Message"),
                    "{what}"
                );
            }
            let tag = &op["tags"][0];
            assert!(
                doc["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| &t["name"] == tag),
                "{what}: undeclared tag {tag}"
            );
        }
        let certificates = doc["paths"]["/certificates"]["get"]["parameters"]
            .as_array()
            .unwrap();
        assert!(
            certificates
                .iter()
                .any(|p| p["name"] == "expiring_within" && p["schema"]["type"] == "integer")
        );
        let consumers = doc["paths"]["/consumers"]["get"]["parameters"]
            .as_array()
            .unwrap();
        assert!(consumers.iter().any(|p| p["name"] == "custom_id"));
        let param = &doc["paths"]["/services/{service}"]["get"]["parameters"][0];
        assert_eq!(param["description"], json!("id or name of the service"));
    }

    #[test]
    fn openapi_document_is_deterministic_and_versioned() {
        let doc = document();
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            serde_json::to_string(&document()).unwrap()
        );
        assert_eq!(doc["openapi"], json!("3.0.3"));
        assert_eq!(doc["info"]["version"], json!(env!("CARGO_PKG_VERSION")));
        assert_eq!(doc["servers"][0]["url"], json!(SERVER));
    }

    /// The documented error codes are the ones `error.rs` answers with.
    #[tokio::test]
    async fn openapi_error_codes_match_the_error_bodies() {
        use axum::response::IntoResponse;

        use crate::error::ApiError;

        let doc = document();
        let error = &doc["components"]["schemas"]["Error"]["properties"];
        let key = Map::new();
        let samples = [
            ApiError::field("host", "required field missing"),
            ApiError::Unique(key.clone()),
            ApiError::PrimaryKey(key.clone()),
            ApiError::ForeignKey {
                field: "service".into(),
                collection: "services",
                key,
            },
            ApiError::ReferencedBy {
                parent: "services",
                child: "routes",
            },
            ApiError::ReferencedByOthers("x".into()),
            ApiError::InvalidSize("x".into()),
            ApiError::InvalidOptions("x".into()),
            ApiError::InvalidOffset("x".into()),
            ApiError::BadRequest("x".into()),
            ApiError::NotFound("Not found"),
            ApiError::Declarative {
                message: "x".into(),
                fields: json!({}),
                flattened: Vec::new(),
            },
        ];
        let mut codes = BTreeSet::new();
        for sample in samples {
            let response = sample.into_response();
            let status = response.status().as_u16();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            assert!(body["message"].is_string(), "{body}");
            if let Some(code) = body.get("code") {
                assert!(
                    error["code"]["enum"].as_array().unwrap().contains(code),
                    "{body}"
                );
                assert!(
                    error["name"]["enum"]
                        .as_array()
                        .unwrap()
                        .contains(&body["name"]),
                    "{body}"
                );
                assert!(matches!(status, 400 | 409), "{body}");
                codes.insert(code.as_u64().unwrap());
            }
        }
        let documented: BTreeSet<u64> = ERROR_CODES.iter().map(|(c, _)| u64::from(*c)).collect();
        assert_eq!(codes, documented);
    }
}
