//! Helpers shared by the Admin API tests (`admin_api.rs`, `admin_nested.rs`,
//! `admin_constraints.rs`): a control plane on a fresh database, and short ways to create,
//! read and list entities with exact assertions.
#![allow(dead_code)]

use anyhow::{Context, Result, bail, ensure};
use reqwest::Method;
use serde_json::{Map, Value, json};

use gatehouse_tests::{Admin, ControlPlane, Response, TestDb, test_db};

/// A control plane on its own fresh database. The process is stopped before the database is
/// dropped (fields drop in declaration order).
pub(crate) struct Env {
    pub(crate) cp: ControlPlane,
    pub(crate) db: TestDb,
}

impl Env {
    pub(crate) async fn start() -> Result<Env> {
        let db = test_db().await?;
        let cp = ControlPlane::start(&db).await?;
        Ok(Env { cp, db })
    }

    pub(crate) fn admin(&self) -> &Admin {
        self.cp.admin()
    }
}

/// Kong's 404 body.
pub(crate) fn not_found() -> Value {
    json!({"message": "Not found"})
}

/// Fails with the whole response unless its status is `status`.
#[track_caller]
pub(crate) fn expect(res: &Response, status: u16) {
    assert_eq!(res.status, status, "unexpected status: {res:#?}");
}

/// Fails unless the response is exactly `status` with `body`.
#[track_caller]
pub(crate) fn expect_body(res: &Response, status: u16, body: &Value) {
    assert_eq!(
        (res.status, &res.body),
        (status, body),
        "unexpected response: {res:#?}"
    );
}

/// `POST path` with a JSON body; fails unless 201. Returns the created entity.
pub(crate) async fn create(admin: &Admin, path: &str, body: Value) -> Result<Value> {
    let res = admin.post_json(path, &body).await?;
    ensure!(res.status == 201, "POST {path} {body}: {res:#?}");
    Ok(res.body)
}

/// `GET path`; fails unless 200. Returns the body.
pub(crate) async fn get_ok(admin: &Admin, path: &str) -> Result<Value> {
    let res = admin.get(path).await?;
    ensure!(res.status == 200, "GET {path}: {res:#?}");
    Ok(res.body)
}

/// Fails unless `GET path` answers 404 `{"message":"Not found"}`.
pub(crate) async fn assert_gone(admin: &Admin, path: &str) -> Result<()> {
    let res = admin.get(path).await?;
    ensure!(
        res.status == 404 && res.body == not_found(),
        "GET {path} should be 404 Not found: {res:#?}"
    );
    Ok(())
}

/// The entity's `id`.
pub(crate) fn id(entity: &Value) -> Result<String> {
    entity["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no id in {entity}"))
}

/// The ids of a list page's `data`, in order.
pub(crate) fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|e| e["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Sorted ids of a list (for comparing sets).
pub(crate) fn sorted_ids(page: &Value) -> Vec<String> {
    let mut ids = ids(page);
    ids.sort();
    ids
}

/// Sorts a list of ids.
pub(crate) fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// A copy of `entity` without the given keys (`id`, timestamps...).
pub(crate) fn without(entity: &Value, keys: &[&str]) -> Value {
    let mut obj = entity.as_object().cloned().unwrap_or_default();
    for key in keys {
        obj.remove(*key);
    }
    Value::Object(obj)
}

/// The keys of an object, sorted.
pub(crate) fn keys(entity: &Value) -> Vec<String> {
    let mut keys: Vec<String> = entity
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

/// Checks the auto fields of a fresh entity: a UUID `id` and integer timestamps within a
/// minute of now, `updated_at >= created_at`.
pub(crate) fn check_auto_fields(entity: &Value) -> Result<()> {
    let id = entity["id"].as_str().context("id is not a string")?;
    uuid::Uuid::parse_str(id).with_context(|| format!("id {id} is not a UUID"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    for field in ["created_at", "updated_at"] {
        let at = entity[field]
            .as_f64()
            .with_context(|| format!("{field} is not a number in {entity}"))?;
        ensure!(
            (now - 60.0..=now + 1.0).contains(&at),
            "{field} = {at} is not near now ({now}) in {entity}"
        );
    }
    ensure!(
        entity["updated_at"].as_f64() >= entity["created_at"].as_f64(),
        "updated_at before created_at in {entity}"
    );
    Ok(())
}

pub(crate) use gatehouse_tests::config_version as version;

/// Follows `next` from `path` until it is null; returns every entity seen, and checks each
/// `next` starts with `prefix` (the list's own path).
pub(crate) async fn list_all(admin: &Admin, path: &str, prefix: &str) -> Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut next = Some(path.to_owned());
    let mut pages = 0;
    while let Some(path) = next {
        pages += 1;
        if pages > 1000 {
            bail!("more than 1000 pages from {path}");
        }
        let page = get_ok(admin, &path).await?;
        let data = page["data"]
            .as_array()
            .with_context(|| format!("no data in {page}"))?;
        all.extend(data.iter().cloned());
        next = match &page["next"] {
            Value::Null => {
                ensure!(
                    page.get("offset").is_none(),
                    "last page carries an offset: {page}"
                );
                None
            }
            Value::String(next) => {
                ensure!(
                    next.starts_with(&format!("{prefix}?")),
                    "next {next} is not under {prefix}"
                );
                Some(next.clone())
            }
            other => bail!("next is {other} in {page}"),
        };
    }
    Ok(all)
}

/// `HEAD path`.
pub(crate) async fn head(admin: &Admin, path: &str) -> Result<Response> {
    admin.send(admin.request(Method::HEAD, path)).await
}

/// `OPTIONS path`.
pub(crate) async fn options(admin: &Admin, path: &str) -> Result<Response> {
    admin.send(admin.request(Method::OPTIONS, path)).await
}

/// The methods named by a response's `Allow` header, sorted.
pub(crate) fn allowed(res: &Response) -> Vec<String> {
    let mut methods: Vec<String> = res
        .header("allow")
        .unwrap_or_default()
        .split(',')
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty())
        .collect();
    methods.sort();
    methods
}

/// Checks HEAD and OPTIONS on a GET endpoint: HEAD answers like GET without a body; OPTIONS
/// answers 204 with the endpoint's methods in `Allow`.
pub(crate) async fn check_head_and_options(
    admin: &Admin,
    path: &str,
    methods: &[&str],
) -> Result<()> {
    let get = admin.get(path).await?;
    let head = head(admin, path).await?;
    ensure!(
        head.status == get.status && head.body == Value::Null,
        "HEAD {path} (GET gave {}): {head:#?}",
        get.status
    );
    let res = options(admin, path).await?;
    ensure!(res.status == 204, "OPTIONS {path}: {res:#?}");
    let mut expected: Vec<String> = methods.iter().map(|m| (*m).to_owned()).collect();
    expected.sort();
    ensure!(
        allowed(&res) == expected,
        "OPTIONS {path}: Allow {:?}, expected {expected:?}",
        res.header("allow")
    );
    Ok(())
}

/// A Kong unique-violation body for `fields` (rendered in key order as the message).
pub(crate) fn unique_violation(fields: Value, rendered: &str) -> Value {
    json!({
        "code": 5,
        "name": "unique constraint violation",
        "message": format!("UNIQUE violation detected on '{rendered}'"),
        "fields": fields,
    })
}

/// Builds a JSON object from pairs.
pub(crate) fn obj(pairs: &[(&str, Value)]) -> Value {
    let map: Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    Value::Object(map)
}
