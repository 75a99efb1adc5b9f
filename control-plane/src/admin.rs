//! The Kong-compatible Admin API.
//!
//! Every route is declared once in [`endpoints`]; the axum router and the OpenAPI document
//! are both built from that table, so the document cannot miss a mounted route.

mod auth;
pub(crate) use auth::token_hash;
mod acme;
pub(crate) mod body;
mod openapi;
pub(crate) mod tls;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawPathParams, RawQuery};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use gatehouse_shared::checks;
use gatehouse_shared::entities::{self, COLLECTIONS, KNOWN_PLUGINS};
use gatehouse_shared::schema::Type;

use crate::cluster::{self, Counters, Current, Node};
use crate::config::Settings;
use crate::error::ApiError;
use crate::store::{AuditFilter, ListQuery, Parent, Selector, Store, TagFilter, unix_now};

/// Default page size of list endpoints.
const DEFAULT_PAGE_SIZE: i64 = 100;
/// Largest page size of list endpoints.
const MAX_PAGE_SIZE: i64 = 1000;
/// Most tags in one `?tags=` filter.
const MAX_TAGS: usize = 5;

/// What an endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `GET /`: node information.
    Root,
    /// `GET /status`: database reachability and config version.
    Status,
    /// `GET /openapi.json`.
    OpenApi,
    /// `GET /tags`.
    Tags,
    /// `GET /tags/{tag}`.
    Tag,
    /// `GET /clustering/data-planes`: every known data plane.
    DataPlanes,
    /// `DELETE /clustering/data-planes/{id}`: forget a data plane.
    DataPlane,
    /// `GET /clustering/status`: the current config version and who lags.
    ClusterStatus,
    /// `GET /audit`: the audit trail of writes.
    Audit,
    /// `POST /acme` (order now), `PATCH /acme` (renew everything).
    Acme,
    /// `GET /acme/certificates` and `GET /acme/certificates/{host}`.
    AcmeCertificates,
    /// `GET, POST /clustering/tokens`: bootstrap tokens.
    Tokens,
    /// `GET, DELETE /clustering/tokens/{id}`: one bootstrap token (DELETE revokes it).
    Token,
    /// `DELETE /clustering/data-planes/{id}/certificates`: revoke a data plane's certificates.
    RevokeDataPlane,
    /// `POST /clustering/data-planes/renew-certificates`: every data plane renews now.
    RenewCertificates,
    /// `POST /clustering/data-planes/{id}/renew-certificates`: one data plane renews now.
    RenewDataPlaneCertificates,
    /// `GET, POST /config`: the whole configuration as a declarative file.
    Config,
    /// A collection: list and create.
    Collection(Scope),
    /// One entity: read, patch, replace, delete.
    Entity(Scope),
}

/// A collection, possibly nested under a parent (`/services/{s}/routes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scope {
    /// The collection.
    pub(crate) collection: &'static str,
    /// The parent's collection and the child's field referencing it.
    pub(crate) parent: Option<(&'static str, &'static str)>,
}

/// One mounted route.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// Path in axum syntax (`/services/{service}/routes`).
    pub(crate) path: String,
    /// Methods served (HEAD and OPTIONS are added for every route).
    pub(crate) methods: &'static [Method],
    /// What it does.
    pub(crate) op: Op,
}

/// Nested collections: (parent, child). The child's field referencing the parent is found in
/// its schema.
const NESTED: &[(&str, &str)] = &[
    ("services", "routes"),
    ("services", "plugins"),
    ("routes", "plugins"),
    ("consumers", "plugins"),
    ("consumers", "acls"),
    ("consumers", "mtls_auth_credentials"),
    ("certificates", "snis"),
    ("upstreams", "targets"),
];

const COLLECTION_METHODS: &[Method] = &[Method::GET, Method::POST];
const ENTITY_METHODS: &[Method] = &[Method::GET, Method::PATCH, Method::PUT, Method::DELETE];

/// Singular name of a collection, used for path parameters (`{service}`).
pub(crate) fn singular(collection: &str) -> &str {
    match collection {
        "ca_certificates" => "ca_certificate",
        "certificates" => "certificate",
        "snis" => "sni",
        "services" => "service",
        "routes" => "route",
        "upstreams" => "upstream",
        "targets" => "target",
        "consumers" => "consumer",
        "acls" => "acl",
        "mtls_auth_credentials" => "mtls_auth_credential",
        "plugins" => "plugin",
        other => other,
    }
}

/// The URL segment of a collection: its name, except where Kong mounts a plugin's entity under
/// another one (`mtls_auth_credentials` at `/mtls-auths`, and `/consumers/{c}/mtls-auth`
/// under a consumer, `nested`).
pub(crate) fn segment(collection: &str, nested: bool) -> &str {
    match (collection, nested) {
        ("mtls_auth_credentials", false) => "mtls-auths",
        ("mtls_auth_credentials", true) => "mtls-auth",
        (other, _) => other,
    }
}

/// Every route of the Admin API.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    let mut all = vec![
        Endpoint {
            path: "/".into(),
            methods: &[Method::GET],
            op: Op::Root,
        },
        Endpoint {
            path: "/status".into(),
            methods: &[Method::GET],
            op: Op::Status,
        },
        Endpoint {
            path: "/openapi.json".into(),
            methods: &[Method::GET],
            op: Op::OpenApi,
        },
        Endpoint {
            path: "/tags".into(),
            methods: &[Method::GET],
            op: Op::Tags,
        },
        Endpoint {
            path: "/tags/{tag}".into(),
            methods: &[Method::GET],
            op: Op::Tag,
        },
        Endpoint {
            path: "/clustering/data-planes".into(),
            methods: &[Method::GET],
            op: Op::DataPlanes,
        },
        Endpoint {
            path: "/clustering/data-planes/{id}".into(),
            methods: &[Method::DELETE],
            op: Op::DataPlane,
        },
        Endpoint {
            path: "/clustering/status".into(),
            methods: &[Method::GET],
            op: Op::ClusterStatus,
        },
        Endpoint {
            path: "/audit".into(),
            methods: &[Method::GET],
            op: Op::Audit,
        },
        Endpoint {
            path: "/acme".into(),
            methods: &[Method::POST, Method::PATCH],
            op: Op::Acme,
        },
        Endpoint {
            path: "/acme/certificates".into(),
            methods: &[Method::GET],
            op: Op::AcmeCertificates,
        },
        Endpoint {
            path: "/acme/certificates/{host}".into(),
            methods: &[Method::GET],
            op: Op::AcmeCertificates,
        },
        Endpoint {
            path: "/clustering/tokens".into(),
            methods: &[Method::GET, Method::POST],
            op: Op::Tokens,
        },
        Endpoint {
            path: "/clustering/tokens/{id}".into(),
            methods: &[Method::GET, Method::DELETE],
            op: Op::Token,
        },
        Endpoint {
            path: "/clustering/data-planes/{id}/certificates".into(),
            methods: &[Method::DELETE],
            op: Op::RevokeDataPlane,
        },
        Endpoint {
            path: "/clustering/data-planes/renew-certificates".into(),
            methods: &[Method::POST],
            op: Op::RenewCertificates,
        },
        Endpoint {
            path: "/clustering/data-planes/{id}/renew-certificates".into(),
            methods: &[Method::POST],
            op: Op::RenewDataPlaneCertificates,
        },
        Endpoint {
            path: "/config".into(),
            methods: &[Method::GET, Method::POST],
            op: Op::Config,
        },
    ];
    for collection in COLLECTIONS {
        let scope = Scope {
            collection,
            parent: None,
        };
        let base = format!("/{}", segment(collection, false));
        all.push(Endpoint {
            path: base.clone(),
            methods: COLLECTION_METHODS,
            op: Op::Collection(scope),
        });
        all.push(Endpoint {
            path: format!("{base}/{{{}}}", singular(collection)),
            methods: ENTITY_METHODS,
            op: Op::Entity(scope),
        });
    }
    for (parent, child) in NESTED {
        let Some(field) = parent_field(parent, child) else {
            continue;
        };
        let Some(parent) = COLLECTIONS.iter().find(|c| *c == parent).copied() else {
            continue;
        };
        let Some(child) = COLLECTIONS.iter().find(|c| *c == child).copied() else {
            continue;
        };
        let scope = Scope {
            collection: child,
            parent: Some((parent, field)),
        };
        let base = format!(
            "/{}/{{{}}}/{}",
            segment(parent, false),
            singular(parent),
            segment(child, true)
        );
        all.push(Endpoint {
            path: format!("{base}/{{{}}}", singular(child)),
            methods: ENTITY_METHODS,
            op: Op::Entity(scope),
        });
        all.push(Endpoint {
            path: base,
            methods: COLLECTION_METHODS,
            op: Op::Collection(scope),
        });
    }
    all
}

/// The child's field that references `parent` (`routes.service` for `services`).
pub(crate) fn parent_field(parent: &str, child: &str) -> Option<&'static str> {
    entities::schema(child)?
        .fields
        .iter()
        .find(|f| matches!(f.ty, Type::Foreign(target) if target == parent))
        .map(|f| f.name)
}

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub(crate) struct State {
    store: Arc<Store>,
    node: Arc<Node>,
    settings: Arc<Settings>,
}

impl State {
    /// State of the Admin API of `node`.
    pub(crate) fn new(store: Arc<Store>, node: Arc<Node>, settings: &Settings) -> Self {
        Self {
            store,
            node,
            settings: Arc::new(settings.clone()),
        }
    }
}

/// The Admin API router.
pub(crate) fn router(state: State) -> Router {
    let max_body = state.settings.admin_max_body;
    let mut router = Router::new();
    for endpoint in endpoints() {
        let op = endpoint.op;
        let allow = allow_header(endpoint.methods);
        let mut filter = MethodFilter::OPTIONS;
        for method in endpoint.methods {
            if let Ok(f) = MethodFilter::try_from(method.clone()) {
                filter = filter.or(f);
            }
        }
        let handler =
            move |axum::extract::State(state): axum::extract::State<State>,
                  method: Method,
                  params: Result<
                RawPathParams,
                axum::extract::rejection::RawPathParamsRejection,
            >,
                  RawQuery(query): RawQuery,
                  uri: Uri,
                  headers: HeaderMap,
                  body: Result<Bytes, axum::extract::rejection::BytesRejection>| {
                let allow = allow.clone();
                async move {
                    if method == Method::OPTIONS {
                        return options(allow);
                    }
                    let params: Vec<String> = match params {
                        Ok(params) => params.iter().map(|(_, v)| v.to_owned()).collect(),
                        Err(_) => return ApiError::NotFound("Not found").into_response(),
                    };
                    let request = Request {
                        method,
                        params,
                        query: query.unwrap_or_default(),
                        path: uri.path().to_owned(),
                        headers,
                    };
                    let body = match body {
                        Ok(body) => body,
                        Err(rejection) => {
                            let mut response = ApiError::PayloadTooLarge(format!(
                                "request body rejected: {}",
                                rejection.body_text()
                            ))
                            .into_response();
                            // The rest of the body was not read: the connection cannot carry
                            // another request. Say so, or a client may reuse it as it closes.
                            response
                                .headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                            return response;
                        }
                    };
                    match dispatch(&state, op, request, body).await {
                        Ok(response) => response,
                        Err(error) => error.into_response(),
                    }
                }
            };
        router = router.route(&endpoint.path, on(filter, handler));
    }
    router
        .fallback(|| async { ApiError::NotFound("Not found") })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(json!({"message": "Method not allowed"})),
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        // Outermost: nobody unauthenticated makes the API read a body.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state)
}

fn allow_header(methods: &[Method]) -> String {
    let mut names: Vec<&str> = methods.iter().map(Method::as_str).collect();
    if methods.contains(&Method::GET) {
        names.push("HEAD");
    }
    names.push("OPTIONS");
    names.join(", ")
}

fn options(allow: String) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value.clone());
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_METHODS, value);
    }
    response
}

/// The parts of a request the handlers use.
struct Request {
    method: Method,
    params: Vec<String>,
    query: String,
    path: String,
    headers: HeaderMap,
}

fn ok(status: StatusCode, value: Value) -> Response {
    (status, axum::Json(value)).into_response()
}

async fn dispatch(
    state: &State,
    op: Op,
    request: Request,
    body: Bytes,
) -> Result<Response, ApiError> {
    match op {
        Op::Root => root(state).await,
        Op::Status => status(state).await,
        Op::OpenApi => Ok(ok(StatusCode::OK, openapi::document())),
        Op::Tags | Op::Tag => {
            let query = list_query(&request.query)?;
            let tag = request.params.first().map(String::as_str);
            if let Some(tag) = tag {
                checks::tag(tag).map_err(ApiError::BadRequest)?;
            }
            let page = state.store.tags(tag, &query).await?;
            Ok(ok(StatusCode::OK, page_json(&request, &query, page)))
        }
        Op::Collection(scope) => collection(state, scope, request, body).await,
        Op::Entity(scope) => entity(state, scope, request, body).await,
        Op::DataPlanes => data_planes(state).await,
        Op::DataPlane => delete_data_plane(state, &request).await,
        Op::ClusterStatus => cluster_status(state).await,
        Op::Audit => audit(state, &request).await,
        Op::Acme => acme::acme(state, request, body).await,
        Op::AcmeCertificates => acme::certificates(state, request).await,
        Op::Tokens => tokens(state, request, body).await,
        Op::Token => token(state, &request).await,
        Op::RevokeDataPlane => revoke_data_plane(state, &request).await,
        Op::RenewCertificates | Op::RenewDataPlaneCertificates => {
            renew_certificates(state, &request).await
        }
        Op::Config => config_file(state, &request, body).await,
    }
}

/// `GET /config`: the configuration as Kong's declarative YAML (`{"config": "..."}`), or
/// JSON with `?format=json`. `POST /config`: replace the whole configuration with a file
/// (JSON or YAML body, or a form field `config`), in one transaction and one config version;
/// `?check_hash=1` answers 304 when nothing would change, `?dry_run=1` only says what would.
async fn config_file(state: &State, request: &Request, body: Bytes) -> Result<Response, ApiError> {
    use crate::declarative::{self, Format};
    use crate::store::Apply;
    // The documented query values only (as the document states them).
    let mut format = Format::Yaml;
    let mut flags: Vec<String> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(request.query.as_bytes()) {
        let invalid = |expected: &str| {
            ApiError::BadRequest(format!("invalid value for '{key}': expected {expected}"))
        };
        match (request.method == Method::POST, key.as_ref()) {
            (false, "format") => {
                format = match value.as_ref() {
                    "yaml" => Format::Yaml,
                    "json" => Format::Json,
                    _ => return Err(invalid("yaml or json")),
                };
            }
            (true, "check_hash" | "dry_run" | "flatten_errors") => match value.as_ref() {
                "1" | "true" => flags.push(key.into_owned()),
                "0" | "false" => {}
                _ => return Err(invalid("0, 1, true or false")),
            },
            _ => {}
        }
    }
    let flag = |name: &str| flags.iter().any(|f| f == name);
    if request.method != Method::POST {
        let text = declarative::export(&state.store, format).await?;
        return Ok(ok(StatusCode::OK, json!({ "config": text })));
    }
    let content_type = request
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let text = if content_type.starts_with("application/x-www-form-urlencoded") {
        url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "config")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| ApiError::BadRequest("expected a form field 'config'".into()))?
    } else if content_type.starts_with("multipart/") {
        return Err(ApiError::UnsupportedMediaType(
            "send the file as the body (JSON or YAML), or as a urlencoded field 'config'".into(),
        ));
    } else {
        String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::BadRequest("the file is not UTF-8".into()))?
    };
    let mode = if flag("dry_run") {
        Apply::DryRun
    } else {
        Apply::Commit
    };
    // A file that changes nothing commits nothing (no new config version) either way.
    let outcome = declarative::import(&state.store, &text, mode).await?;
    if flag("check_hash") && outcome.changes.is_empty() {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let status = if mode == Apply::DryRun {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(ok(status, outcome.to_json()))
}

/// `GET /audit`: the trail of committed writes, oldest first, paginated like every list;
/// `?actor=`, `?entity=` (a collection) and `?entity_id=` filter it.
async fn audit(state: &State, request: &Request) -> Result<Response, ApiError> {
    let query = list_query(&request.query)?;
    let mut filter = AuditFilter::default();
    for (key, value) in url::form_urlencoded::parse(request.query.as_bytes()) {
        match key.as_ref() {
            "actor" => filter.actor = Some(value.into_owned()),
            "entity" => filter.entity = Some(value.into_owned()),
            "entity_id" => {
                let id = Uuid::parse_str(&value)
                    .map_err(|_| ApiError::BadRequest("entity_id must be a UUID".into()))?;
                filter.entity_id = Some(id);
            }
            _ => {}
        }
    }
    let page = state.store.audit(&filter, &query).await?;
    Ok(ok(StatusCode::OK, page_json(request, &query, page)))
}

fn selector(segment: &str) -> Selector {
    match Uuid::parse_str(segment) {
        Ok(id) => Selector::Id(id),
        Err(_) => Selector::Key(segment.to_owned()),
    }
}

/// Resolves the parent of a nested endpoint (404 when it does not exist).
async fn parent(
    state: &State,
    scope: Scope,
    request: &Request,
) -> Result<Option<Parent>, ApiError> {
    let Some((collection, field)) = scope.parent else {
        return Ok(None);
    };
    let key = request
        .params
        .first()
        .ok_or(ApiError::NotFound("Not found"))?;
    let found = state
        .store
        .get(collection, &selector(key), None)
        .await?
        .ok_or(ApiError::NotFound("Not found"))?;
    let id = found
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::Internal("entity without id".into()))?;
    Ok(Some(Parent { field, id }))
}

/// Decodes a write's body. Form bodies are typed by the schema that will validate them; for a
/// plugin that is its plugin's schema, named by the body or, for a partial update, by the
/// stored plugin (`stored_name`).
async fn read_body(
    collection: &str,
    headers: &HeaderMap,
    body: Bytes,
    stored_name: Option<&str>,
) -> Result<Map<String, Value>, ApiError> {
    let decoded = body::decode(headers, body).await.map_err(|e| {
        if e.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            ApiError::UnsupportedMediaType(e.message())
        } else {
            ApiError::BadRequest(e.message())
        }
    })?;
    let value = match decoded.encoding {
        body::Encoding::Json => decoded.value,
        body::Encoding::Form => crate::store::coerce_form(collection, decoded.value, stored_name)?,
    };
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(ApiError::BadRequest("Cannot parse JSON body".into())),
    }
}

async fn collection(
    state: &State,
    scope: Scope,
    request: Request,
    body: Bytes,
) -> Result<Response, ApiError> {
    let parent = parent(state, scope, &request).await?;
    match request.method {
        Method::GET | Method::HEAD => {
            let query = list_query(&request.query)?;
            let page = state
                .store
                .list(scope.collection, parent.as_ref(), &query)
                .await?;
            Ok(ok(StatusCode::OK, page_json(&request, &query, page)))
        }
        Method::POST => {
            let input = read_body(scope.collection, &request.headers, body, None).await?;
            let created = state
                .store
                .create(scope.collection, input, parent.as_ref())
                .await?;
            tracing::info!(collection = scope.collection, id = %created["id"], "created");
            Ok(ok(StatusCode::CREATED, created))
        }
        _ => Err(ApiError::NotFound("Not found")),
    }
}

async fn entity(
    state: &State,
    scope: Scope,
    request: Request,
    body: Bytes,
) -> Result<Response, ApiError> {
    let parent = parent(state, scope, &request).await?;
    let key = request
        .params
        .last()
        .ok_or(ApiError::NotFound("Not found"))?;
    let selector = selector(key);
    let not_found = if scope.collection == "certificates" && matches!(selector, Selector::Key(_)) {
        ApiError::NotFound("SNI not found")
    } else {
        ApiError::NotFound("Not found")
    };
    if matches!(request.method, Method::PATCH | Method::PUT | Method::DELETE) {
        refuse_source_owned(state, scope.collection, &selector, parent.as_ref()).await?;
    }
    match request.method {
        Method::GET | Method::HEAD => {
            let found = state
                .store
                .get(scope.collection, &selector, parent.as_ref())
                .await?;
            found.map(|e| ok(StatusCode::OK, e)).ok_or(not_found)
        }
        Method::PATCH => {
            let stored_name = if scope.collection == "plugins" {
                state
                    .store
                    .get(scope.collection, &selector, parent.as_ref())
                    .await?
                    .and_then(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
            } else {
                None
            };
            let input = read_body(
                scope.collection,
                &request.headers,
                body,
                stored_name.as_deref(),
            )
            .await?;
            let updated = state
                .store
                .patch(scope.collection, &selector, input, parent.as_ref())
                .await
                .map_err(|e| match e {
                    ApiError::NotFound(_) => not_found,
                    other => other,
                })?;
            tracing::info!(collection = scope.collection, id = %updated["id"], "updated");
            Ok(ok(StatusCode::OK, updated))
        }
        Method::PUT => {
            let input = read_body(scope.collection, &request.headers, body, None).await?;
            let stored = state
                .store
                .upsert(scope.collection, &selector, input, parent.as_ref())
                .await?;
            tracing::info!(collection = scope.collection, id = %stored["id"], "upserted");
            Ok(ok(StatusCode::OK, stored))
        }
        Method::DELETE => {
            state
                .store
                .delete(scope.collection, &selector, parent.as_ref())
                .await?;
            tracing::info!(collection = scope.collection, key = %key, "deleted");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(ApiError::NotFound("Not found")),
    }
}

/// Refuses a write to a certificate (or one of its SNIs) that a watched certificate source
/// owns: its files are the truth, and the next change of them would undo the write. Once no
/// control plane watches the source any more, the row is an ordinary one again.
async fn refuse_source_owned(
    state: &State,
    collection: &str,
    selector: &Selector,
    parent: Option<&Parent>,
) -> Result<(), ApiError> {
    // Only the id is needed: the keys are not opened (a PUT may replace a key that does not).
    let certificate = match collection {
        "certificates" => state.store.get_sealed(collection, selector, parent).await?,
        "snis" => state
            .store
            .get_sealed(collection, selector, parent)
            .await?
            .map(|sni| sni["certificate"].clone()),
        _ => return Ok(()),
    };
    let Some(id) = certificate
        .as_ref()
        .and_then(|c| c["id"].as_str())
        .and_then(|id| Uuid::parse_str(id).ok())
    else {
        return Ok(());
    };
    match state.store.cert_source_owner(id, unix_now()).await? {
        Some(owner) if owner.watched => Err(ApiError::Message(
            StatusCode::CONFLICT,
            format!(
                "certificate '{id}' is managed by certificate source '{}' (file {}); change \
                 its files instead",
                owner.source, owner.cert_path
            ),
        )),
        _ => Ok(()),
    }
}

/// Parses `size`, `offset`, `tags` and the collection filters of a list request.
fn list_query(raw: &str) -> Result<ListQuery, ApiError> {
    let mut query = ListQuery {
        size: DEFAULT_PAGE_SIZE,
        ..ListQuery::default()
    };
    for (key, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        match key.as_ref() {
            "size" => {
                let size: i64 = value
                    .parse()
                    .map_err(|_| ApiError::InvalidSize("size must be a number".into()))?;
                if !(1..=MAX_PAGE_SIZE).contains(&size) {
                    return Err(ApiError::InvalidSize(format!(
                        "size must be an integer between 1 and {MAX_PAGE_SIZE}"
                    )));
                }
                query.size = size;
            }
            "offset" => query.offset = Some(value.into_owned()),
            "tags" => query.tags = Some(tag_filter(&value)?),
            "expiring_within" => {
                let seconds: i64 = value.parse().ok().filter(|s| *s >= 0).ok_or_else(|| {
                    ApiError::BadRequest(
                        "expiring_within must be a non-negative number of seconds".into(),
                    )
                })?;
                query.expiring_within = Some(seconds);
            }
            "custom_id" => query.custom_id = Some(value.into_owned()),
            _ => {}
        }
    }
    Ok(query)
}

fn tag_filter(value: &str) -> Result<TagFilter, ApiError> {
    let invalid =
        |message: String| ApiError::InvalidOptions(format!("invalid option (tags: {message})"));
    if value.contains(',') && value.contains('/') {
        return Err(invalid("cannot mix 'or' and 'and'".into()));
    }
    let any = value.contains('/');
    let tags: Vec<String> = value.split([',', '/']).map(str::to_owned).collect();
    if tags.len() > MAX_TAGS {
        return Err(invalid(format!("cannot query more than {MAX_TAGS} tags")));
    }
    for tag in &tags {
        checks::tag(tag).map_err(invalid)?;
    }
    Ok(if any {
        TagFilter::Any(tags)
    } else {
        TagFilter::All(tags)
    })
}

/// `{"data": [...], "offset": ..., "next": "/path?offset=...&size=N&tags=..."}`.
fn page_json(request: &Request, query: &ListQuery, page: crate::store::Page) -> Value {
    let mut out = Map::new();
    out.insert("data".into(), Value::Array(page.data));
    match page.offset {
        Some(offset) => {
            let mut next = url::form_urlencoded::Serializer::new(String::new());
            next.append_pair("offset", &offset);
            next.append_pair("size", &query.size.to_string());
            for (key, value) in url::form_urlencoded::parse(request.query.as_bytes()) {
                if !matches!(key.as_ref(), "offset" | "size") {
                    next.append_pair(&key, &value);
                }
            }
            out.insert(
                "next".into(),
                Value::from(format!("{}?{}", request.path, next.finish())),
            );
            out.insert("offset".into(), Value::from(offset));
        }
        None => {
            out.insert("next".into(), Value::Null);
        }
    }
    Value::Object(out)
}

async fn root(state: &State) -> Result<Response, ApiError> {
    let config_version = state.store.config_version().await.ok();
    let enabled_in_cluster = state.store.plugins_in_use().await.unwrap_or_default();
    let available: Map<String, Value> = KNOWN_PLUGINS
        .iter()
        .map(|name| {
            (
                (*name).to_owned(),
                json!({"version": env!("CARGO_PKG_VERSION"), "enabled": state.store.plugins().iter().any(|p| p == name)}),
            )
        })
        .collect();
    let settings = &state.settings;
    Ok(ok(
        StatusCode::OK,
        json!({
            "tagline": "Welcome to gatehouse",
            "version": env!("CARGO_PKG_VERSION"),
            "edition": "community",
            "hostname": state.node.hostname,
            "node_id": state.node.id,
            "role": "control_plane",
            "config_version": config_version,
            "plugins": {
                "available_on_server": available,
                "enabled": state.store.plugins(),
                "enabled_in_cluster": enabled_in_cluster,
            },
            "configuration": {
                "admin_listen": settings.admin_listen.to_string(),
                "database": "postgres",
                "plugins": settings.plugins,
                "admin_max_body": settings.admin_max_body,
                "cluster_listen": state.node.cluster_addr.map(|a| a.to_string()),
                "cluster_mtls": settings.cluster.mtls.as_str(),
                "status_listen": settings.status_listen.map(|a| a.to_string()),
            },
        }),
    ))
}

async fn status(state: &State) -> Result<Response, ApiError> {
    let version = state.store.config_version().await;
    let reachable = version.is_ok();
    if let Err(error) = &version {
        tracing::warn!(%error, "database unreachable");
    }
    Ok(ok(
        StatusCode::OK,
        json!({
            "database": {"reachable": reachable},
            "config_version": version.ok(),
        }),
    ))
}

/// `GET /clustering/data-planes`: every data plane of the fleet, whichever replica it is
/// connected to, ordered by hostname then id (one page: `next` is always null).
async fn data_planes(state: &State) -> Result<Response, ApiError> {
    let now = unix_now();
    let data: Vec<Value> = state
        .store
        .data_planes()
        .await?
        .iter()
        .map(|dp| cluster::data_plane_json(dp, now))
        .collect();
    Ok(ok(StatusCode::OK, json!({"data": data, "next": null})))
}

/// `DELETE /clustering/data-planes/{id}`: revokes its certificates (its stream ends on every
/// replica, and it cannot connect again with them), then forgets it. 204 whether or not it was
/// known; 404 for an id that is not a UUID (it cannot name a data plane).
async fn delete_data_plane(state: &State, request: &Request) -> Result<Response, ApiError> {
    let id = uuid_param(request)?;
    revoke(state, id).await?;
    if state.store.delete_data_plane(id).await? {
        tracing::info!(%id, "data plane forgotten");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /clustering/data-planes/{id}/certificates`: revokes its certificates and ends its
/// stream on every replica; the registry keeps it (disconnected). 204.
async fn revoke_data_plane(state: &State, request: &Request) -> Result<Response, ApiError> {
    let id = uuid_param(request)?;
    revoke(state, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /clustering/data-planes/renew-certificates` (every data plane) and
/// `POST /clustering/data-planes/{id}/renew-certificates` (one, 404 when unknown): every
/// replica asks the enrolled data planes concerned, whose certificate is older than the
/// request, to renew now (within about a second). 202 with the request time.
async fn renew_certificates(state: &State, request: &Request) -> Result<Response, ApiError> {
    let node = match request.params.first() {
        None => None,
        Some(_) => {
            let id = uuid_param(request)?;
            if !state
                .store
                .data_planes()
                .await?
                .iter()
                .any(|dp| dp.id == id)
            {
                return Err(ApiError::NotFound("Not found"));
            }
            Some(id)
        }
    };
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX);
    state.store.request_renewal(node, now_ms).await?;
    tracing::info!(data_plane = %node.map_or_else(|| "all".to_owned(), |id| id.to_string()), "certificate renewal requested");
    Ok(ok(
        StatusCode::ACCEPTED,
        json!({"requested_at": now_ms / 1000}),
    ))
}

/// Revokes every certificate of data plane `id` and ends its streams on this replica at once
/// (the others see the revocation within their poll interval).
async fn revoke(state: &State, id: Uuid) -> Result<(), ApiError> {
    // In `shared` mode every node holds the same certificate: revoking it would shut out the
    // whole cluster, so only certificates the CA issued to this node are revoked.
    let own_certificate =
        state.settings.cluster.mtls == gatehouse_shared::cluster::ClusterMtls::Pki;
    let revoked = state
        .store
        .revoke_node_certificates(id, own_certificate, unix_now())
        .await?;
    let ended = state
        .node
        .end_streams_of(id, "the data plane's certificate was revoked");
    tracing::warn!(%id, certificates = revoked, streams_ended = ended, "data plane revoked");
    Ok(())
}

/// The `{id}` of a path, a UUID (404 otherwise).
fn uuid_param(request: &Request) -> Result<Uuid, ApiError> {
    request
        .params
        .first()
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or(ApiError::NotFound("Not found"))
}

/// `GET /clustering/tokens` (every token, never a secret) and `POST /clustering/tokens`
/// (201 with the secret in `token`, shown this once).
async fn tokens(state: &State, request: Request, body: Bytes) -> Result<Response, ApiError> {
    let now = unix_now();
    if request.method == Method::POST {
        // Form values stay strings: the parser takes numbers as text too.
        let decoded = body::decode(&request.headers, body).await.map_err(|e| {
            if e.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                ApiError::UnsupportedMediaType(e.message())
            } else {
                ApiError::BadRequest(e.message())
            }
        })?;
        let Value::Object(body) = decoded.value else {
            return Err(ApiError::BadRequest("Cannot parse JSON body".into()));
        };
        let new = crate::tokens::parse_new(&body)?;
        let (token, secret) = crate::tokens::create(&state.store, new).await?;
        let mut shown = crate::tokens::token_json(&token, now);
        shown["token"] = json!(secret);
        return Ok(ok(StatusCode::CREATED, shown));
    }
    let data: Vec<Value> = state
        .store
        .tokens()
        .await?
        .iter()
        .map(|t| crate::tokens::token_json(t, now))
        .collect();
    Ok(ok(StatusCode::OK, json!({"data": data, "next": null})))
}

/// `GET /clustering/tokens/{id}` and `DELETE` (revokes; 204, 404 when unknown).
async fn token(state: &State, request: &Request) -> Result<Response, ApiError> {
    let id = uuid_param(request)?;
    if request.method == Method::DELETE {
        if !state.store.revoke_token(id, unix_now()).await? {
            return Err(ApiError::NotFound("Not found"));
        }
        tracing::info!(%id, "bootstrap token revoked");
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let token = state
        .store
        .token(id)
        .await?
        .ok_or(ApiError::NotFound("Not found"))?;
    Ok(ok(
        StatusCode::OK,
        crate::tokens::token_json(&token, unix_now()),
    ))
}

/// `GET /clustering/status`: the snapshot this node serves, how many data planes run it, and
/// why the others lag.
async fn cluster_status(state: &State) -> Result<Response, ApiError> {
    let rows = state.store.data_planes().await?;
    let latest = state
        .node
        .latest
        .as_ref()
        .and_then(|latest| latest.borrow().clone());
    let current = latest.as_ref().map(|snapshot| Current {
        version: snapshot.version,
        hash: &snapshot.hash,
    });
    let no_current = if state.node.latest.is_some() {
        "this control plane has not built a snapshot yet"
    } else {
        "unknown: this control plane builds no snapshots (cluster listener disabled)"
    };
    let (built, sent) = state.node.stats.get();
    let now = unix_now();
    let mut body = cluster::status_json(
        &rows,
        current,
        no_current,
        Counters { built, sent },
        state.node.cluster_addr.map(|a| a.to_string()),
        now,
    );
    let expiry = state
        .store
        .expiry_summary(now, state.settings.cert_expiry.warning_window)
        .await?;
    if let Value::Object(fields) = &mut body {
        fields.insert(
            "secret_references".into(),
            json!({ "failing": state.store.failing_secret_references() }),
        );
        fields.insert("certificate_expiry".to_owned(), expiry);
    }
    Ok(ok(StatusCode::OK, body))
}
