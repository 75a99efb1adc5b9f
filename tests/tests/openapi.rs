//! The served OpenAPI document tells the truth about the running control plane: every
//! documented path answers exactly the documented methods, and real responses match the
//! documented schemas.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, ensure};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use gatehouse_tests::certs::{Algorithm, Ca};
use gatehouse_tests::{Admin, ControlPlane, Response, test_db};

/// The methods an API route may serve besides HEAD and OPTIONS.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

async fn served_document(admin: &Admin) -> Result<Value> {
    let res = admin.get("/openapi.json").await?;
    ensure!(res.status == 200, "{res:?}");
    let doc = res.body;
    ensure!(doc.is_object(), "not a JSON document: {doc}");
    let version = doc["openapi"].as_str().context("no openapi version")?;
    ensure!(version.starts_with("3.0."), "openapi {version}");
    ensure!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    Ok(doc)
}

/// `(path, methods)` of every documented path, methods uppercase.
fn documented(doc: &Value) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let paths = doc["paths"].as_object().context("no paths")?;
    let mut all = BTreeMap::new();
    for (path, item) in paths {
        let methods: BTreeSet<String> = item
            .as_object()
            .context("path item is not an object")?
            .keys()
            .map(|m| m.to_ascii_uppercase())
            .filter(|m| METHODS.contains(&m.as_str()))
            .collect();
        all.insert(path.clone(), methods);
    }
    Ok(all)
}

/// Replaces every `{param}` of `path` by `value(param)`.
fn substitute(path: &str, value: impl Fn(&str) -> String) -> String {
    path.split('/')
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(param) => value(param),
                None => segment.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

async fn options(admin: &Admin, path: &str) -> Result<Response> {
    admin.send(admin.request(Method::OPTIONS, path)).await
}

#[tokio::test]
async fn every_documented_path_serves_exactly_the_documented_methods() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let doc = served_document(admin).await?;
    let paths = documented(&doc)?;
    ensure!(paths.len() > 20, "only {} paths documented", paths.len());

    for (template, methods) in &paths {
        ensure!(!methods.is_empty(), "{template} documents no method");
        let path = substitute(template, |_| Uuid::new_v4().to_string());
        let res = options(admin, &path).await?;
        ensure!(
            res.status == 204,
            "OPTIONS {path} (documented as {template}): {res:?}"
        );
        let allow: BTreeSet<String> = res
            .header("allow")
            .with_context(|| format!("OPTIONS {path}: no Allow header"))?
            .split(',')
            .map(|m| m.trim().to_owned())
            .collect();
        let mut expected = methods.clone();
        if methods.contains("GET") {
            expected.insert("HEAD".into());
        }
        expected.insert("OPTIONS".into());
        ensure!(
            allow == expected,
            "{template}: the server allows {allow:?}, the document says {expected:?}"
        );
        // Methods the document leaves out are refused.
        for method in METHODS.iter().filter(|m| !methods.contains(**m)) {
            let method = Method::from_bytes(method.as_bytes())?;
            let res = admin.send(admin.request(method.clone(), &path)).await?;
            ensure!(
                res.status == 405,
                "{method} {path} is not documented but answered {res:?}"
            );
        }
    }

    // The check can fail: paths the document does not list are not mounted.
    for path in ["/nope", "/services/example/nope", "/openapi.yaml"] {
        ensure!(!paths.contains_key(path));
        let res = options(admin, path).await?;
        ensure!(res.status == 404, "OPTIONS {path}: {res:?}");
    }
    Ok(())
}

// === A small validator for the OpenAPI 3.0 schemas the document uses ===

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> Result<&'a Value> {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .with_context(|| format!("{reference} is not local"))?;
            let target = doc
                .pointer(pointer)
                .with_context(|| format!("{reference} does not resolve"))?;
            resolve(doc, target)
        }
        None => Ok(schema),
    }
}

/// Collects in `errors` how `value` (a response body, or part of one) breaks `schema`.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = match resolve(doc, schema) {
        Ok(schema) => schema,
        Err(error) => return errors.push(format!("{at}: {error}")),
    };
    for variant in schema["allOf"].as_array().into_iter().flatten() {
        check(doc, variant, value, at, errors);
    }
    let mut fail = |message: String| errors.push(format!("{at}: {message}"));
    if value.is_null() {
        if schema["nullable"] != json!(true) {
            fail("null, but not nullable".into());
        }
        return;
    }
    for (combinator, wanted) in [("oneOf", Some(1)), ("anyOf", None)] {
        if let Some(variants) = schema[combinator].as_array() {
            let matching = variants
                .iter()
                .filter(|variant| {
                    let mut inner = Vec::new();
                    check(doc, variant, value, at, &mut inner);
                    inner.is_empty()
                })
                .count();
            if matching == 0 || wanted.is_some_and(|n| n != matching) {
                fail(format!(
                    "{matching} of the {combinator} variants match {value}"
                ));
            }
        }
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        fail(format!("{value} is not one of {options:?}"));
    }
    let ok = match schema["type"].as_str() {
        None => true,
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("array") => value.is_array(),
        Some("object") => value.is_object(),
        Some(other) => {
            fail(format!("unknown type {other}"));
            true
        }
    };
    if !ok {
        return fail(format!("{value} is not of type {}", schema["type"]));
    }
    if schema["format"] == "uuid" && value.as_str().is_some_and(|s| Uuid::parse_str(s).is_err()) {
        fail(format!("{value} is not a UUID"));
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64())
        && n < min
    {
        fail(format!("{n} < minimum {min}"));
    }
    if let (Some(max), Some(n)) = (schema["maximum"].as_f64(), value.as_f64())
        && n > max
    {
        fail(format!("{n} > maximum {max}"));
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = schema["minItems"].as_u64()
            && (items.len() as u64) < min
        {
            fail(format!("fewer than {min} items"));
        }
        if schema["uniqueItems"] == json!(true)
            && items
                .iter()
                .enumerate()
                .any(|(i, v)| items[..i].contains(v))
        {
            fail("duplicate items".into());
        }
        for (i, item) in items.iter().enumerate() {
            check(doc, &schema["items"], item, &format!("{at}[{i}]"), errors);
        }
    }
    if let Some(obj) = value.as_object() {
        let properties = schema["properties"].as_object();
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !obj.contains_key(name) {
                errors.push(format!("{at}: required {name} is missing"));
            }
        }
        for (key, item) in obj {
            let at = format!("{at}.{key}");
            match properties.and_then(|p| p.get(key)) {
                Some(property) => {
                    if resolve(doc, property).is_ok_and(|p| p["writeOnly"] == json!(true)) {
                        errors.push(format!("{at}: writeOnly, yet returned"));
                    }
                    check(doc, property, item, &at, errors);
                }
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => errors.push(format!("{at}: not a documented property")),
                    extra @ Value::Object(_) => check(doc, extra, item, &at, errors),
                    _ => {}
                },
            }
        }
    }
}

/// Every property of an entity that is not write-only is returned (null when unset).
fn check_complete(doc: &Value, schema: &Value, entity: &Value, at: &str, errors: &mut Vec<String>) {
    let Ok(schema) = resolve(doc, schema) else {
        return;
    };
    // One of several entities (`Plugin`): the variant the entity matches.
    for variant in schema["oneOf"].as_array().into_iter().flatten() {
        let mut inner = Vec::new();
        check(doc, variant, entity, at, &mut inner);
        if inner.is_empty() {
            check_complete(doc, variant, entity, at, errors);
        }
    }
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        if property["writeOnly"] != json!(true) && entity.get(name).is_none() {
            errors.push(format!("{at}: documented {name} is not returned"));
        }
    }
}

/// The operation `method path` of the document.
fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> Result<&'a Value> {
    let op = &doc["paths"][path][method.to_ascii_lowercase()];
    ensure!(op.is_object(), "{method} {path} is not documented");
    Ok(op)
}

/// Checks a real response against what the document says `method template` answers.
fn conforms(
    doc: &Value,
    method: &str,
    template: &str,
    res: &Response,
    errors: &mut Vec<String>,
) -> Result<()> {
    let op = operation(doc, method, template)?;
    let at = format!("{method} {template} → {}", res.status);
    let Some(documented) = op["responses"].get(res.status.to_string()) else {
        errors.push(format!("{at}: status not documented ({})", res.body));
        return Ok(());
    };
    let Some(schema) = documented["content"]["application/json"].get("schema") else {
        if !res.body.is_null() {
            errors.push(format!("{at}: undocumented body {}", res.body));
        }
        return Ok(());
    };
    check(doc, schema, &res.body, &at, errors);
    // Entities, alone or in a page, carry every documented readable field.
    let resolved = resolve(doc, schema)?;
    let item = &resolved["properties"]["data"]["items"];
    if resolved["properties"]["id"].is_object() {
        check_complete(doc, schema, &res.body, &at, errors);
    } else if item.is_object() {
        for (i, entity) in res.body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            check_complete(doc, item, entity, &format!("{at} data[{i}]"), errors);
        }
    }
    Ok(())
}

fn id(entity: &Value) -> Result<String> {
    entity["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no id in {entity}"))
}

#[tokio::test]
async fn real_responses_match_the_documented_schemas() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let doc = served_document(admin).await?;
    let mut errors = Vec::new();

    // One entity of every collection, created through the documented create operations.
    let ca = Ca::new("openapi test CA")?;
    let leaf = ca.leaf(&["a.example.com"], Algorithm::Ecdsa, 30)?;
    let mut ids: BTreeMap<&str, String> = BTreeMap::new();
    let steps: Vec<(&str, &str, &str, Value)> = vec![
        (
            "ca_certificate",
            "POST",
            "/ca_certificates",
            json!({"cert": ca.pem.cert}),
        ),
        (
            "certificate",
            "POST",
            "/certificates",
            json!({"cert": leaf.cert, "key": leaf.key, "snis": ["a.example.com"], "tags": ["t1"]}),
        ),
        (
            "service",
            "POST",
            "/services",
            json!({"name": "example", "url": "https://example.com:8443/api", "tags": ["t1"]}),
        ),
        (
            "route",
            "POST",
            "/services/{service}/routes",
            json!({"name": "r1", "paths": ["/api"], "hosts": ["example.com"]}),
        ),
        ("upstream", "POST", "/upstreams", json!({"name": "backend"})),
        (
            "target",
            "POST",
            "/upstreams/{upstream}/targets",
            json!({"target": "10.0.0.1"}),
        ),
        (
            "consumer",
            "POST",
            "/consumers",
            json!({"username": "alice", "custom_id": "a1"}),
        ),
        (
            "acl",
            "POST",
            "/consumers/{consumer}/acls",
            json!({"group": "admins"}),
        ),
        (
            "plugin",
            "POST",
            "/services/{service}/plugins",
            json!({"name": "acl", "config": {"allow": ["admins"]}}),
        ),
    ];
    for (name, method, template, body) in steps {
        let path = substitute(template, |param| {
            ids.get(param).cloned().unwrap_or_default()
        });
        let res = admin.post_json(&path, &body).await?;
        ensure!(res.status == 201, "POST {path}: {res:?}");
        conforms(&doc, method, template, &res, &mut errors)?;
        ids.insert(name, id(&res.body)?);
    }
    let snis = admin.get("/snis/a.example.com").await?;
    ensure!(snis.status == 200, "{snis:?}");
    ids.insert("sni", id(&snis.body)?);
    // An mtls-auth plugin on the route, for the other `config` variant.
    let mtls = admin
        .post_json(
            &format!("/routes/{}/plugins", ids["route"]),
            &json!({"name": "mtls-auth", "config": {"ca_certificates": [ids["ca_certificate"]]}}),
        )
        .await?;
    ensure!(mtls.status == 201, "{mtls:?}");
    conforms(&doc, "POST", "/routes/{route}/plugins", &mtls, &mut errors)?;
    ensure!(
        mtls.body
            .get("config")
            .is_some_and(|c| c["ca_certificates"].is_array()),
        "{mtls:?}"
    );

    // An mtls-auth credential of the consumer, bound to the CA certificate.
    let credential = admin
        .post_json(
            &format!("/consumers/{}/mtls-auth", ids["consumer"]),
            &json!({"subject_name": "alice.example.com",
                    "ca_certificate": {"id": ids["ca_certificate"]}, "tags": ["t1"]}),
        )
        .await?;
    ensure!(credential.status == 201, "{credential:?}");
    conforms(
        &doc,
        "POST",
        "/consumers/{consumer}/mtls-auth",
        &credential,
        &mut errors,
    )?;
    ids.insert("mtls_auth_credential", id(&credential.body)?);

    // Every documented GET, with the entities above in its parameters.
    let mut ok = 0;
    for (template, methods) in documented(&doc)? {
        if !methods.contains("GET") {
            continue;
        }
        let path = substitute(&template, |param| match param {
            "tag" => "t1".to_owned(),
            other => ids.get(other).cloned().unwrap_or_default(),
        });
        let res = admin.get(&path).await?;
        if res.status == 200 {
            ok += 1;
        }
        conforms(&doc, "GET", &template, &res, &mut errors)?;
    }
    ensure!(ok > 25, "only {ok} GETs answered 200");

    // Errors have the documented shapes.
    let bad = admin.post_json("/services", &json!({"bogus": 1})).await?;
    ensure!(bad.status == 400, "{bad:?}");
    conforms(&doc, "POST", "/services", &bad, &mut errors)?;
    let taken = admin
        .post_json("/services", &json!({"name": "example", "host": "b.test"}))
        .await?;
    ensure!(taken.status == 409, "{taken:?}");
    conforms(&doc, "POST", "/services", &taken, &mut errors)?;
    let text = admin
        .send(
            admin
                .request(Method::POST, "/consumers")
                .header("content-type", "text/plain")
                .body("username=bob"),
        )
        .await?;
    ensure!(text.status == 415, "{text:?}");
    conforms(&doc, "POST", "/consumers", &text, &mut errors)?;
    let missing = admin.get(&format!("/services/{}", Uuid::new_v4())).await?;
    ensure!(missing.status == 404, "{missing:?}");
    conforms(&doc, "GET", "/services/{service}", &missing, &mut errors)?;
    let size = admin.get("/services?size=0").await?;
    ensure!(size.status == 400, "{size:?}");
    conforms(&doc, "GET", "/services", &size, &mut errors)?;

    // PATCH, PUT and DELETE answer as documented too.
    let patched = admin
        .patch_json("/services/example", &json!({"retries": 3}))
        .await?;
    conforms(&doc, "PATCH", "/services/{service}", &patched, &mut errors)?;
    let put = admin
        .put_json("/consumers/bob", &json!({"custom_id": "b1"}))
        .await?;
    ensure!(put.status == 200, "{put:?}");
    conforms(&doc, "PUT", "/consumers/{consumer}", &put, &mut errors)?;
    let deleted = admin.delete("/consumers/bob").await?;
    conforms(
        &doc,
        "DELETE",
        "/consumers/{consumer}",
        &deleted,
        &mut errors,
    )?;

    ensure!(errors.is_empty(), "{}", errors.join("\n"));
    Ok(())
}
