//! The Admin API, entity by entity: every collection through POST (defaults as Kong fills
//! them), GET by id and by endpoint key, PATCH (partial, records merged), PUT (create, and
//! replace resetting omitted fields), DELETE, HEAD and OPTIONS; the `url` and `snis`
//! shorthands; foreign keys by name; pagination; tag filters and `/tags`; `/` and `/status`;
//! unknown paths and methods.
//!
//! Nested endpoints are in `admin_nested.rs`; cascades, refusals and unique constraints in
//! `admin_constraints.rs`.

mod admin_support;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use admin_support::*;
use gatehouse_tests::Admin;
use gatehouse_tests::certs::{self, Algorithm, Ca};

const ENTITY_METHODS: &[&str] = &["GET", "HEAD", "PATCH", "PUT", "DELETE", "OPTIONS"];
const COLLECTION_METHODS: &[&str] = &["GET", "HEAD", "POST", "OPTIONS"];
const AUTO: &[&str] = &["id", "created_at", "updated_at"];

/// What every entity endpoint does besides its own rules: GET by id and by key give the same
/// entity, HEAD and OPTIONS answer, DELETE answers 204, the entity is gone after it, and a
/// second DELETE still answers 204.
async fn check_read_and_delete(
    admin: &Admin,
    collection: &str,
    entity: &Value,
    key: Option<&str>,
) -> Result<()> {
    let id = id(entity)?;
    let by_id = format!("/{collection}/{id}");
    assert_eq!(&get_ok(admin, &by_id).await?, entity, "GET {by_id}");
    if let Some(key) = key {
        let by_key = format!("/{collection}/{key}");
        assert_eq!(&get_ok(admin, &by_key).await?, entity, "GET {by_key}");
    }
    check_head_and_options(admin, &by_id, ENTITY_METHODS).await?;
    check_head_and_options(admin, &format!("/{collection}"), COLLECTION_METHODS).await?;
    let listed = get_ok(admin, &format!("/{collection}")).await?;
    assert!(
        listed["data"]
            .as_array()
            .is_some_and(|items| items.contains(entity)),
        "{collection} list lacks {entity}: {listed}"
    );

    let deleted = admin.delete(&by_id).await?;
    expect_body(&deleted, 204, &Value::Null);
    assert_gone(admin, &by_id).await?;
    if let Some(key) = key {
        let res = admin.get(&format!("/{collection}/{key}")).await?;
        expect(&res, 404);
    }
    let head = head(admin, &by_id).await?;
    expect(&head, 404);
    expect_body(&admin.delete(&by_id).await?, 204, &Value::Null);
    Ok(())
}

// --- / and /status, unknown paths and methods -------------------------------------------

#[tokio::test]
async fn root_and_status_describe_the_node() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();

    let root = get_ok(admin, "/").await?;
    assert_eq!(root["version"], json!(env!("CARGO_PKG_VERSION")), "{root}");
    let node_id = root["node_id"].as_str().context("node_id")?;
    uuid::Uuid::parse_str(node_id)?;
    let available = &root["plugins"]["available_on_server"];
    assert!(available["acl"].is_object(), "{root}");
    assert!(available["mtls-auth"].is_object(), "{root}");
    assert_eq!(root["config_version"], json!(0), "{root}");
    // The node id is stable for the life of the process.
    assert_eq!(get_ok(admin, "/").await?["node_id"], json!(node_id));

    let status = get_ok(admin, "/status").await?;
    assert_eq!(status["database"], json!({"reachable": true}), "{status}");
    assert_eq!(status["config_version"], json!(0), "{status}");

    create(admin, "/consumers", json!({"username": "alice"})).await?;
    assert_eq!(get_ok(admin, "/").await?["config_version"], json!(1));
    assert_eq!(version(admin).await?, 1);
    check_head_and_options(admin, "/", &["GET", "HEAD", "OPTIONS"]).await?;
    check_head_and_options(admin, "/status", &["GET", "HEAD", "OPTIONS"]).await?;
    Ok(())
}

#[tokio::test]
async fn config_version_moves_by_one_per_successful_write() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let mut expected = version(admin).await?;
    assert_eq!(expected, 0);

    // Each successful write: +1.
    let writes: Vec<(&str, &str, Value)> = vec![
        ("POST", "/services", json!({"name": "s", "host": "a.test"})),
        ("PATCH", "/services/s", json!({"retries": 3})),
        ("PUT", "/services/s", json!({"host": "b.test"})),
        ("PUT", "/services/t", json!({"host": "c.test"})),
        ("POST", "/services/s/routes", json!({"paths": ["/a"]})),
        ("POST", "/consumers", json!({"username": "u"})),
        ("POST", "/consumers/u/acls", json!({"group": "g1"})),
        ("POST", "/consumers/u/acls", json!({"group": "g2"})),
    ];
    for (method, path, body) in writes {
        let res = match method {
            "POST" => admin.post_json(path, &body).await?,
            "PATCH" => admin.patch_json(path, &body).await?,
            _ => admin.put_json(path, &body).await?,
        };
        assert!(res.status < 300, "{method} {path}: {res:#?}");
        expected += 1;
        assert_eq!(version(admin).await?, expected, "after {method} {path}");
    }

    // Reads, refused writes and deletes of nothing: no change.
    get_ok(admin, "/services").await?;
    expect(
        &admin
            .post_json("/services", &json!({"name": "s", "host": "x.test"}))
            .await?,
        409,
    );
    expect(
        &admin
            .patch_json("/services/s", &json!({"port": -1}))
            .await?,
        400,
    );
    expect(&admin.delete("/services/s").await?, 400);
    expect(&admin.delete("/services/never").await?, 204);
    assert_eq!(version(admin).await?, expected);

    // A delete cascading to two ACLs is still one write.
    expect(&admin.delete("/consumers/u").await?, 204);
    expected += 1;
    assert_eq!(version(admin).await?, expected);
    Ok(())
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    create(admin, "/services", json!({"name": "s", "host": "a.test"})).await?;

    for path in [
        "/nope",
        "/services/s/nope",
        "/services/s/routes/r/plugins",
        "/consumers/c/acls/g/extra",
        "/status/nope",
    ] {
        expect_body(&admin.get(path).await?, 404, &not_found());
    }
    expect_body(
        &admin.post_json("/nope", &json!({})).await?,
        404,
        &not_found(),
    );

    let not_allowed = json!({"message": "Method not allowed"});
    expect_body(&admin.delete("/services").await?, 405, &not_allowed);
    expect_body(
        &admin.put_json("/consumers", &json!({})).await?,
        405,
        &not_allowed,
    );
    expect_body(
        &admin.post_json("/services/s", &json!({})).await?,
        405,
        &not_allowed,
    );
    expect_body(
        &admin.patch_json("/status", &json!({})).await?,
        405,
        &not_allowed,
    );
    expect_body(&admin.delete("/").await?, 405, &not_allowed);
    expect_body(&admin.delete("/tags").await?, 405, &not_allowed);
    // The service is untouched.
    get_ok(admin, "/services/s").await?;
    Ok(())
}

// --- services -----------------------------------------------------------------------------

#[tokio::test]
async fn services_crud() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();

    let created = create(
        admin,
        "/services",
        json!({"name": "svc", "host": "origin.test"}),
    )
    .await?;
    check_auto_fields(&created)?;
    assert_eq!(
        without(&created, AUTO),
        json!({
            "name": "svc", "host": "origin.test", "protocol": "http", "port": 80, "path": null,
            "retries": 5, "connect_timeout": 60000, "write_timeout": 60000,
            "read_timeout": 60000, "client_certificate": null, "tls_verify": null,
            "tls_verify_depth": null, "ca_certificates": null, "enabled": true, "tags": null,
        })
    );
    let id = id(&created)?;

    // PATCH changes what it names, nothing else.
    let patched = admin
        .patch_json(
            "/services/svc",
            &json!({"retries": 7, "path": "/v1", "tags": ["a"]}),
        )
        .await?;
    expect(&patched, 200);
    let mut expected = created.clone();
    expected["retries"] = json!(7);
    expected["path"] = json!("/v1");
    expected["tags"] = json!(["a"]);
    assert_eq!(
        without(&patched.body, &["updated_at"]),
        without(&expected, &["updated_at"])
    );
    assert_eq!(
        get_ok(admin, &format!("/services/{id}")).await?,
        patched.body
    );
    // PATCH by id works too.
    let patched = admin
        .patch_json(&format!("/services/{id}"), &json!({"port": 8080}))
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["port"], json!(8080));
    assert_eq!(patched.body["retries"], json!(7));

    // PUT replaces: omitted fields go back to their defaults; id, name and created_at stay.
    let replaced = admin
        .put_json("/services/svc", &json!({"host": "other.test"}))
        .await?;
    expect(&replaced, 200);
    assert_eq!(
        without(&replaced.body, &["updated_at"]),
        without(
            &json!({
                "id": id, "created_at": created["created_at"], "name": "svc",
                "host": "other.test", "protocol": "http", "port": 80, "path": null,
                "retries": 5, "connect_timeout": 60000, "write_timeout": 60000,
                "read_timeout": 60000, "client_certificate": null, "tls_verify": null,
                "tls_verify_depth": null, "ca_certificates": null, "enabled": true,
                "tags": null,
            }),
            &["updated_at"]
        )
    );
    // PUT by id replaces the same entity (the name may change then).
    let replaced = admin
        .put_json(
            &format!("/services/{id}"),
            &json!({"name": "renamed", "host": "third.test"}),
        )
        .await?;
    expect(&replaced, 200);
    assert_eq!(replaced.body["id"], json!(id));
    assert_eq!(replaced.body["name"], json!("renamed"));
    assert_eq!(replaced.body["created_at"], created["created_at"]);
    assert_gone(admin, "/services/svc").await?;

    // PUT creates, by name (the name comes from the URL) and by id.
    let put_new = admin
        .put_json("/services/fresh", &json!({"host": "fresh.test"}))
        .await?;
    expect(&put_new, 200);
    check_auto_fields(&put_new.body)?;
    assert_eq!(put_new.body["name"], json!("fresh"));
    assert_eq!(put_new.body["port"], json!(80));
    assert_eq!(get_ok(admin, "/services/fresh").await?, put_new.body);
    let new_id = uuid::Uuid::new_v4().to_string();
    let put_new = admin
        .put_json(
            &format!("/services/{new_id}"),
            &json!({"host": "byid.test"}),
        )
        .await?;
    expect(&put_new, 200);
    assert_eq!(put_new.body["id"], json!(new_id));
    assert_eq!(put_new.body["name"], Value::Null);

    // A body naming another service than the URL is refused; nothing changes.
    let res = admin
        .put_json(
            "/services/fresh",
            &json!({"name": "other", "host": "x.test"}),
        )
        .await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(2), "{res:#?}");
    assert_eq!(res.body["name"], json!("schema violation"));
    assert!(res.body["fields"]["name"].is_string(), "{res:#?}");
    assert_gone(admin, "/services/other").await?;
    assert_eq!(
        get_ok(admin, "/services/fresh").await?["host"],
        json!("fresh.test")
    );

    // PATCH by name may rename (as Kong); the old name is then free.
    let renamed = admin
        .patch_json("/services/fresh", &json!({"name": "fresher"}))
        .await?;
    expect(&renamed, 200);
    assert_eq!(renamed.body["name"], json!("fresher"));
    assert_gone(admin, "/services/fresh").await?;
    let renamed = admin
        .patch_json("/services/fresher", &json!({"name": "fresh"}))
        .await?;
    expect(&renamed, 200);
    assert_eq!(get_ok(admin, "/services/fresh").await?, renamed.body);

    // PATCH of a missing service is 404.
    expect_body(
        &admin
            .patch_json("/services/missing", &json!({"retries": 1}))
            .await?,
        404,
        &not_found(),
    );
    expect_body(&admin.get("/services/missing").await?, 404, &not_found());

    let fresh = get_ok(admin, "/services/fresh").await?;
    check_read_and_delete(admin, "services", &fresh, Some("fresh")).await?;
    Ok(())
}

#[tokio::test]
async fn service_url_shorthand_sets_protocol_host_port_and_path() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let cases = [
        (
            "https://secure.test/api/v1",
            "https",
            "secure.test",
            443,
            json!("/api/v1"),
        ),
        ("http://plain.test", "http", "plain.test", 80, Value::Null),
        (
            "http://ported.test:8443/p",
            "http",
            "ported.test",
            8443,
            json!("/p"),
        ),
        (
            "https://10.1.2.3:9000",
            "https",
            "10.1.2.3",
            9000,
            Value::Null,
        ),
    ];
    for (i, (url, protocol, host, port, path)) in cases.into_iter().enumerate() {
        let created = create(
            admin,
            "/services",
            json!({"name": format!("s{i}"), "url": url}),
        )
        .await?;
        assert_eq!(created["protocol"], json!(protocol), "{url}: {created}");
        assert_eq!(created["host"], json!(host), "{url}: {created}");
        assert_eq!(created["port"], json!(port), "{url}: {created}");
        assert_eq!(created["path"], path, "{url}: {created}");
        assert!(created.get("url").is_none(), "url is returned: {created}");
        let read = get_ok(admin, &format!("/services/s{i}")).await?;
        assert!(read.get("url").is_none(), "url is returned: {read}");
    }
    // PATCH with url rewrites the four fields and keeps the rest.
    admin
        .patch_json("/services/s0", &json!({"retries": 2}))
        .await?;
    let patched = admin
        .patch_json("/services/s0", &json!({"url": "http://moved.test:81"}))
        .await?;
    expect(&patched, 200);
    assert_eq!(
        (
            &patched.body["protocol"],
            &patched.body["host"],
            &patched.body["port"],
            &patched.body["path"],
            &patched.body["retries"]
        ),
        (
            &json!("http"),
            &json!("moved.test"),
            &json!(81),
            &Value::Null,
            &json!(2)
        )
    );
    assert!(patched.body.get("url").is_none());
    // The list does not show url either.
    let listed = get_ok(admin, "/services").await?;
    for service in listed["data"].as_array().context("data")? {
        assert!(service.get("url").is_none(), "{service}");
    }
    Ok(())
}

// --- routes -------------------------------------------------------------------------------

#[tokio::test]
async fn routes_crud() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let service = create(admin, "/services", json!({"name": "s", "host": "a.test"})).await?;
    let created = create(
        admin,
        "/routes",
        json!({"name": "r", "paths": ["/a"], "service": {"id": service["id"]}}),
    )
    .await?;
    check_auto_fields(&created)?;
    assert_eq!(
        without(&created, AUTO),
        json!({
            "name": "r", "protocols": ["http", "https"], "methods": null, "hosts": null,
            "paths": ["/a"], "headers": null, "https_redirect_status_code": 426,
            "regex_priority": 0, "strip_path": true, "path_handling": "v0",
            "preserve_host": false, "request_buffering": true, "response_buffering": true,
            "snis": null, "sources": null, "destinations": null,
            "service": {"id": service["id"]}, "tags": null,
        })
    );

    let patched = admin
        .patch_json(
            "/routes/r",
            &json!({"strip_path": false, "methods": ["GET"]}),
        )
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["strip_path"], json!(false));
    assert_eq!(patched.body["methods"], json!(["GET"]));
    assert_eq!(patched.body["paths"], json!(["/a"]));
    assert_eq!(patched.body["service"], json!({"id": service["id"]}));

    // PUT replaces: paths, methods, strip_path and service reset.
    let replaced = admin
        .put_json("/routes/r", &json!({"hosts": ["h.test"]}))
        .await?;
    expect(&replaced, 200);
    assert_eq!(
        without(&replaced.body, &["updated_at"]),
        without(
            &json!({
                "id": created["id"], "created_at": created["created_at"], "name": "r",
                "protocols": ["http", "https"], "methods": null, "hosts": ["h.test"],
                "paths": null, "headers": null, "https_redirect_status_code": 426,
                "regex_priority": 0, "strip_path": true, "path_handling": "v0",
                "preserve_host": false, "request_buffering": true, "response_buffering": true,
                "snis": null, "sources": null, "destinations": null, "service": null,
                "tags": null,
            }),
            &["updated_at"]
        )
    );
    let res = admin
        .put_json("/routes/r", &json!({"name": "q", "hosts": ["h.test"]}))
        .await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(2));
    assert!(res.body["fields"]["name"].is_string(), "{res:#?}");

    let put_new = admin
        .put_json("/routes/r2", &json!({"paths": ["/b"]}))
        .await?;
    expect(&put_new, 200);
    assert_eq!(put_new.body["name"], json!("r2"));

    let route = get_ok(admin, "/routes/r").await?;
    check_read_and_delete(admin, "routes", &route, Some("r")).await?;
    Ok(())
}

// --- certificates and snis ----------------------------------------------------------------

#[tokio::test]
async fn certificates_crud_and_snis_shorthand() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let pem = certs::self_signed(&["b.test", "a.test"], Algorithm::Ecdsa, 30)?;

    let created = create(
        admin,
        "/certificates",
        json!({"cert": pem.cert, "key": pem.key, "snis": ["b.test", "a.test"]}),
    )
    .await?;
    check_auto_fields(&created)?;
    let id = id(&created)?;
    assert_eq!(
        keys(&created),
        [
            "cert",
            "cert_alt",
            "created_at",
            "fingerprint_sha256",
            "id",
            "issuer",
            "key",
            "key_alt",
            "key_type",
            "not_after",
            "not_before",
            "sans",
            "snis",
            "subject",
            "tags",
            "updated_at"
        ]
    );
    assert_eq!(created["cert"], json!(pem.cert));
    assert_eq!(created["key"], json!(pem.key));
    assert_eq!(created["cert_alt"], Value::Null);
    assert_eq!(created["key_alt"], Value::Null);
    assert_eq!(created["tags"], Value::Null);
    // Returned sorted.
    assert_eq!(created["snis"], json!(["a.test", "b.test"]));
    assert_eq!(created["subject"], json!("CN=b.test"));
    assert_eq!(created["issuer"], json!("CN=b.test"));
    assert_eq!(created["key_type"], json!("ecdsa"));
    let fingerprint = created["fingerprint_sha256"]
        .as_str()
        .context("fingerprint")?;
    assert_eq!(fingerprint.len(), 64);
    assert!(fingerprint.chars().all(|c| c.is_ascii_hexdigit()));
    let (not_before, not_after) = (
        created["not_before"].as_i64().context("not_before")?,
        created["not_after"].as_i64().context("not_after")?,
    );
    assert!(
        (29 * 86400..=31 * 86400).contains(&(not_after - not_before)),
        "{created}"
    );

    // The SNI rows exist and point at the certificate.
    let snis = get_ok(admin, "/snis").await?;
    let mut names: Vec<(String, Value)> = snis["data"]
        .as_array()
        .context("data")?
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["certificate"].clone(),
            )
        })
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        names,
        vec![
            ("a.test".to_owned(), json!({"id": id})),
            ("b.test".to_owned(), json!({"id": id}))
        ]
    );

    // Read by SNI name.
    assert_eq!(get_ok(admin, "/certificates/a.test").await?, created);
    assert_eq!(get_ok(admin, "/certificates/b.test").await?, created);
    expect_body(
        &admin.get("/certificates/none.test").await?,
        404,
        &json!({"message": "SNI not found"}),
    );

    // PATCH snis replaces the set: a.test is kept, b.test deleted, c.test created.
    let patched = admin
        .patch_json(
            &format!("/certificates/{id}"),
            &json!({"snis": ["c.test", "a.test"]}),
        )
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["snis"], json!(["a.test", "c.test"]));
    assert_eq!(patched.body["cert"], json!(pem.cert));
    assert_gone(admin, "/snis/b.test").await?;
    assert_eq!(
        get_ok(admin, "/snis/c.test").await?["certificate"],
        json!({"id": id})
    );
    let a_sni = get_ok(admin, "/snis/a.test").await?;
    // PATCH without snis leaves them alone.
    let patched = admin
        .patch_json("/certificates/a.test", &json!({"tags": ["t1"]}))
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["snis"], json!(["a.test", "c.test"]));
    assert_eq!(patched.body["tags"], json!(["t1"]));
    assert_eq!(get_ok(admin, "/snis/a.test").await?["id"], a_sni["id"]);

    // PUT by id replaces the certificate: tags reset; id and created_at stay. The `snis`
    // shorthand is not a stored field: left out, the SNIs stay as they are.
    let other = certs::self_signed(&["z.test"], Algorithm::Rsa, 10)?;
    let replaced = admin
        .put_json(
            &format!("/certificates/{id}"),
            &json!({"cert": other.cert, "key": other.key}),
        )
        .await?;
    expect(&replaced, 200);
    assert_eq!(replaced.body["id"], json!(id));
    assert_eq!(replaced.body["created_at"], created["created_at"]);
    assert_eq!(replaced.body["tags"], Value::Null);
    assert_eq!(replaced.body["cert"], json!(other.cert));
    assert_eq!(replaced.body["key_type"], json!("rsa"));
    assert_eq!(replaced.body["subject"], json!("CN=z.test"));
    assert_ne!(
        replaced.body["fingerprint_sha256"],
        created["fingerprint_sha256"]
    );
    assert_eq!(replaced.body["snis"], json!(["a.test", "c.test"]));

    // PUT /certificates/{sni} adds that SNI to the given ones.
    let replaced = admin
        .put_json(
            "/certificates/a.test",
            &json!({"cert": pem.cert, "key": pem.key, "snis": ["d.test"]}),
        )
        .await?;
    expect(&replaced, 200);
    assert_eq!(replaced.body["id"], json!(id));
    assert_eq!(replaced.body["snis"], json!(["a.test", "d.test"]));
    assert_gone(admin, "/snis/c.test").await?;
    // PATCH through an SNI sets exactly the given snis (only PUT adds the URL's one, as Kong).
    let patched = admin
        .patch_json(
            "/certificates/d.test",
            &json!({"snis": ["a.test", "e.test"]}),
        )
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["id"], json!(id));
    assert_eq!(patched.body["snis"], json!(["a.test", "e.test"]));
    assert_gone(admin, "/snis/d.test").await?;
    expect_body(
        &admin.get("/certificates/d.test").await?,
        404,
        &json!({"message": "SNI not found"}),
    );
    // ... and creates a certificate for an SNI nobody has.
    let fresh = certs::self_signed(&["new.test"], Algorithm::Ecdsa, 10)?;
    let put_new = admin
        .put_json(
            "/certificates/new.test",
            &json!({"cert": fresh.cert, "key": fresh.key}),
        )
        .await?;
    expect(&put_new, 200);
    assert_ne!(put_new.body["id"], json!(id));
    assert_eq!(put_new.body["snis"], json!(["new.test"]));
    assert_eq!(
        get_ok(admin, "/snis/new.test").await?["certificate"],
        json!({"id": put_new.body["id"]})
    );
    // PUT with a new id in the URL creates it.
    let new_id = uuid::Uuid::new_v4().to_string();
    let third = certs::self_signed(&["third.test"], Algorithm::Ecdsa, 10)?;
    let put_new = admin
        .put_json(
            &format!("/certificates/{new_id}"),
            &json!({"cert": third.cert, "key": third.key}),
        )
        .await?;
    expect(&put_new, 200);
    assert_eq!(put_new.body["id"], json!(new_id));
    assert_eq!(put_new.body["snis"], json!([]));

    let current = get_ok(admin, &format!("/certificates/{id}")).await?;
    check_read_and_delete(admin, "certificates", &current, Some("a.test")).await?;
    // Deleting the certificate deleted its SNIs.
    assert_gone(admin, "/snis/a.test").await?;
    assert_gone(admin, "/snis/e.test").await?;
    Ok(())
}

#[tokio::test]
async fn snis_crud() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let one = certs::self_signed(&["one.test"], Algorithm::Ecdsa, 10)?;
    let two = certs::self_signed(&["two.test"], Algorithm::Ecdsa, 10)?;
    let cert1 = create(
        admin,
        "/certificates",
        json!({"cert": one.cert, "key": one.key}),
    )
    .await?;
    let cert2 = create(
        admin,
        "/certificates",
        json!({"cert": two.cert, "key": two.key}),
    )
    .await?;
    assert_eq!(cert1["snis"], json!([]));

    let sni = create(
        admin,
        "/snis",
        json!({"name": "x.test", "certificate": {"id": cert1["id"]}}),
    )
    .await?;
    check_auto_fields(&sni)?;
    assert_eq!(
        without(&sni, AUTO),
        json!({"name": "x.test", "certificate": {"id": cert1["id"]}, "tags": null})
    );
    assert_eq!(
        get_ok(admin, &format!("/certificates/{}", id(&cert1)?)).await?["snis"],
        json!(["x.test"])
    );

    let patched = admin
        .patch_json("/snis/x.test", &json!({"tags": ["edge"]}))
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["tags"], json!(["edge"]));
    assert_eq!(patched.body["certificate"], json!({"id": cert1["id"]}));

    // PUT replaces: moves it to the other certificate, tags reset.
    let replaced = admin
        .put_json("/snis/x.test", &json!({"certificate": {"id": cert2["id"]}}))
        .await?;
    expect(&replaced, 200);
    assert_eq!(
        without(&replaced.body, &["updated_at"]),
        json!({"id": sni["id"], "created_at": sni["created_at"], "name": "x.test",
               "certificate": {"id": cert2["id"]}, "tags": null})
    );
    assert_eq!(
        get_ok(admin, &format!("/certificates/{}", id(&cert1)?)).await?["snis"],
        json!([])
    );
    assert_eq!(
        get_ok(admin, &format!("/certificates/{}", id(&cert2)?)).await?["snis"],
        json!(["x.test"])
    );
    // A body naming another SNI than the URL is refused.
    let res = admin
        .put_json(
            "/snis/x.test",
            &json!({"name": "y.test", "certificate": {"id": cert2["id"]}}),
        )
        .await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(2));
    assert!(res.body["fields"]["name"].is_string(), "{res:#?}");
    // PUT creates with the URL's name.
    let put_new = admin
        .put_json("/snis/w.test", &json!({"certificate": {"id": cert1["id"]}}))
        .await?;
    expect(&put_new, 200);
    assert_eq!(put_new.body["name"], json!("w.test"));

    let current = get_ok(admin, "/snis/x.test").await?;
    check_read_and_delete(admin, "snis", &current, Some("x.test")).await?;
    // The certificate stays.
    assert_eq!(
        get_ok(admin, &format!("/certificates/{}", id(&cert2)?)).await?["snis"],
        json!([])
    );
    Ok(())
}

#[tokio::test]
async fn ca_certificates_crud() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let ca = Ca::new("Test CA")?;
    let created = create(admin, "/ca_certificates", json!({"cert": ca.pem.cert})).await?;
    check_auto_fields(&created)?;
    assert_eq!(
        keys(&created),
        [
            "cert",
            "cert_digest",
            "created_at",
            "id",
            "issuer",
            "not_after",
            "not_before",
            "subject",
            "tags",
            "updated_at"
        ]
    );
    assert_eq!(created["cert"], json!(ca.pem.cert));
    assert_eq!(created["subject"], json!("CN=Test CA"));
    assert_eq!(created["issuer"], json!("CN=Test CA"));
    assert_eq!(created["tags"], Value::Null);
    // cert_digest is the SHA-256 of the DER certificate.
    let der =
        gatehouse_shared::x509::parse_certificates(&ca.pem.cert).map_err(anyhow::Error::msg)?;
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(der[0].as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(created["cert_digest"], json!(digest));
    let id = id(&created)?;

    let patched = admin
        .patch_json(
            &format!("/ca_certificates/{id}"),
            &json!({"tags": ["trust"]}),
        )
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["tags"], json!(["trust"]));
    assert_eq!(patched.body["cert_digest"], json!(digest));

    // PUT replaces with another CA: digest recomputed, tags reset, created_at kept.
    let other = Ca::new("Other CA")?;
    let replaced = admin
        .put_json(
            &format!("/ca_certificates/{id}"),
            &json!({"cert": other.pem.cert}),
        )
        .await?;
    expect(&replaced, 200);
    assert_eq!(replaced.body["id"], json!(id));
    assert_eq!(replaced.body["created_at"], created["created_at"]);
    assert_eq!(replaced.body["tags"], Value::Null);
    assert_eq!(replaced.body["subject"], json!("CN=Other CA"));
    assert_ne!(replaced.body["cert_digest"], json!(digest));

    // PUT with a new id creates.
    let new_id = uuid::Uuid::new_v4().to_string();
    let put_new = admin
        .put_json(
            &format!("/ca_certificates/{new_id}"),
            &json!({"cert": ca.pem.cert}),
        )
        .await?;
    expect(&put_new, 200);
    assert_eq!(put_new.body["id"], json!(new_id));
    assert_eq!(put_new.body["cert_digest"], json!(digest));

    // CA certificates have no key but the id.
    expect_body(
        &admin.get("/ca_certificates/Test-CA").await?,
        404,
        &not_found(),
    );

    let current = get_ok(admin, &format!("/ca_certificates/{id}")).await?;
    check_read_and_delete(admin, "ca_certificates", &current, None).await?;
    Ok(())
}

// --- upstreams and targets ----------------------------------------------------------------

fn default_healthchecks() -> Value {
    json!({
        "active": {
            "type": "http", "timeout": 1, "concurrency": 10, "http_path": "/",
            "https_sni": null, "https_verify_certificate": true, "headers": null,
            "healthy": {"interval": 0, "http_statuses": [200, 302], "successes": 0},
            "unhealthy": {
                "interval": 0, "http_statuses": [429, 404, 500, 501, 502, 503, 504, 505],
                "tcp_failures": 0, "timeouts": 0, "http_failures": 0,
            },
        },
        "passive": {
            "type": "http",
            "healthy": {
                "http_statuses": [200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301,
                                  302, 303, 304, 305, 306, 307, 308],
                "successes": 0,
            },
            "unhealthy": {
                "http_statuses": [429, 500, 503], "tcp_failures": 0, "timeouts": 0,
                "http_failures": 0,
            },
        },
        "threshold": 0,
    })
}

fn default_upstream(name: &str) -> Value {
    json!({
        "name": name, "algorithm": "round-robin", "hash_on": "none", "hash_fallback": "none",
        "hash_on_header": null, "hash_fallback_header": null, "hash_on_cookie": null,
        "hash_on_cookie_path": "/", "hash_on_query_arg": null, "hash_fallback_query_arg": null,
        "hash_on_uri_capture": null, "hash_fallback_uri_capture": null, "slots": 10000,
        "healthchecks": default_healthchecks(), "host_header": null,
        "client_certificate": null, "use_srv_name": false, "tags": null,
    })
}

#[tokio::test]
async fn upstreams_crud() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let created = create(admin, "/upstreams", json!({"name": "backend.test"})).await?;
    check_auto_fields(&created)?;
    assert_eq!(without(&created, AUTO), default_upstream("backend.test"));

    // PATCH merges the healthchecks record: only what is named changes.
    let patched = admin
        .patch_json(
            "/upstreams/backend.test",
            &json!({"slots": 100, "healthchecks": {"threshold": 50,
                    "active": {"healthy": {"interval": 5}}}}),
        )
        .await?;
    expect(&patched, 200);
    let mut expected = default_upstream("backend.test");
    expected["slots"] = json!(100);
    expected["healthchecks"]["threshold"] = json!(50);
    expected["healthchecks"]["active"]["healthy"]["interval"] = json!(5);
    assert_eq!(without(&patched.body, AUTO), expected);

    // PUT replaces: everything back to defaults but the name from the URL.
    let replaced = admin
        .put_json(
            "/upstreams/backend.test",
            &json!({"algorithm": "least-connections"}),
        )
        .await?;
    expect(&replaced, 200);
    let mut expected = default_upstream("backend.test");
    expected["algorithm"] = json!("least-connections");
    assert_eq!(without(&replaced.body, AUTO), expected);
    assert_eq!(replaced.body["id"], created["id"]);
    assert_eq!(replaced.body["created_at"], created["created_at"]);

    let res = admin
        .put_json("/upstreams/backend.test", &json!({"name": "other.test"}))
        .await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(2));
    assert!(res.body["fields"]["name"].is_string(), "{res:#?}");

    let put_new = admin.put_json("/upstreams/fresh.test", &json!({})).await?;
    expect(&put_new, 200);
    assert_eq!(without(&put_new.body, AUTO), default_upstream("fresh.test"));

    let current = get_ok(admin, "/upstreams/backend.test").await?;
    check_read_and_delete(admin, "upstreams", &current, Some("backend.test")).await?;
    Ok(())
}

#[tokio::test]
async fn targets_crud() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let upstream = create(admin, "/upstreams", json!({"name": "u.test"})).await?;
    let created = create(
        admin,
        "/targets",
        json!({"upstream": {"id": upstream["id"]}, "target": "10.0.0.1"}),
    )
    .await?;
    check_auto_fields(&created)?;
    assert_eq!(
        without(&created, AUTO),
        json!({"upstream": {"id": upstream["id"]}, "target": "10.0.0.1:8000", "weight": 100,
               "tags": null})
    );
    let id = id(&created)?;

    let patched = admin
        .patch_json(&format!("/targets/{id}"), &json!({"weight": 5}))
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["weight"], json!(5));
    assert_eq!(patched.body["target"], json!("10.0.0.1:8000"));

    let replaced = admin
        .put_json(
            &format!("/targets/{id}"),
            &json!({"upstream": {"id": upstream["id"]}, "target": "10.0.0.2:81"}),
        )
        .await?;
    expect(&replaced, 200);
    assert_eq!(
        without(&replaced.body, &["updated_at"]),
        json!({"id": id, "created_at": created["created_at"],
               "upstream": {"id": upstream["id"]}, "target": "10.0.0.2:81", "weight": 100,
               "tags": null})
    );

    // A target is only named by its address under its upstream.
    expect_body(&admin.get("/targets/10.0.0.2:81").await?, 404, &not_found());

    let current = get_ok(admin, &format!("/targets/{id}")).await?;
    check_read_and_delete(admin, "targets", &current, None).await?;
    Ok(())
}

// --- consumers and acls -------------------------------------------------------------------

#[tokio::test]
async fn consumers_crud_and_custom_id_filter() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let created = create(admin, "/consumers", json!({"username": "alice"})).await?;
    check_auto_fields(&created)?;
    assert_eq!(
        without(&created, AUTO),
        json!({"username": "alice", "custom_id": null, "tags": null})
    );
    let bob = create(admin, "/consumers", json!({"custom_id": "b-1"})).await?;
    assert_eq!(bob["username"], Value::Null);

    let patched = admin
        .patch_json("/consumers/alice", &json!({"custom_id": "a-1"}))
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["custom_id"], json!("a-1"));
    assert_eq!(patched.body["username"], json!("alice"));

    // ?custom_id= filters.
    let found = get_ok(admin, "/consumers?custom_id=a-1").await?;
    assert_eq!(found, json!({"data": [patched.body], "next": null}));
    let found = get_ok(admin, "/consumers?custom_id=b-1").await?;
    assert_eq!(found, json!({"data": [bob], "next": null}));
    let found = get_ok(admin, "/consumers?custom_id=nobody").await?;
    assert_eq!(found, json!({"data": [], "next": null}));

    // PUT replaces: custom_id reset, username from the URL.
    let replaced = admin
        .put_json("/consumers/alice", &json!({"tags": ["vip"]}))
        .await?;
    expect(&replaced, 200);
    assert_eq!(
        without(&replaced.body, &["updated_at"]),
        json!({"id": created["id"], "created_at": created["created_at"],
               "username": "alice", "custom_id": null, "tags": ["vip"]})
    );
    let res = admin
        .put_json("/consumers/alice", &json!({"username": "mallory"}))
        .await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(2));
    assert!(res.body["fields"]["username"].is_string(), "{res:#?}");

    let put_new = admin.put_json("/consumers/carol", &json!({})).await?;
    expect(&put_new, 200);
    assert_eq!(
        without(&put_new.body, AUTO),
        json!({"username": "carol", "custom_id": null, "tags": null})
    );

    let current = get_ok(admin, "/consumers/alice").await?;
    check_read_and_delete(admin, "consumers", &current, Some("alice")).await?;
    Ok(())
}

#[tokio::test]
async fn acls_crud() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let consumer = create(admin, "/consumers", json!({"username": "alice"})).await?;
    let created = create(
        admin,
        "/acls",
        json!({"consumer": {"username": "alice"}, "group": "admins"}),
    )
    .await?;
    check_auto_fields(&created)?;
    assert_eq!(
        without(&created, AUTO),
        json!({"consumer": {"id": consumer["id"]}, "group": "admins", "tags": null})
    );
    let id = id(&created)?;

    let patched = admin
        .patch_json(&format!("/acls/{id}"), &json!({"tags": ["t"]}))
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["tags"], json!(["t"]));
    assert_eq!(patched.body["group"], json!("admins"));

    let replaced = admin
        .put_json(
            &format!("/acls/{id}"),
            &json!({"consumer": {"id": consumer["id"]}, "group": "ops"}),
        )
        .await?;
    expect(&replaced, 200);
    assert_eq!(
        without(&replaced.body, &["updated_at"]),
        json!({"id": id, "created_at": created["created_at"],
               "consumer": {"id": consumer["id"]}, "group": "ops", "tags": null})
    );
    // A group name alone does not name an ACL outside its consumer.
    expect_body(&admin.get("/acls/ops").await?, 404, &not_found());

    let current = get_ok(admin, &format!("/acls/{id}")).await?;
    check_read_and_delete(admin, "acls", &current, None).await?;
    // The consumer stays.
    get_ok(admin, "/consumers/alice").await?;
    Ok(())
}

// --- plugins ------------------------------------------------------------------------------

#[tokio::test]
async fn plugins_crud_and_config_merge() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let created = create(
        admin,
        "/plugins",
        json!({"name": "acl", "instance_name": "gate", "config": {"allow": ["admins"]}}),
    )
    .await?;
    check_auto_fields(&created)?;
    assert_eq!(
        without(&created, AUTO),
        json!({
            "name": "acl", "instance_name": "gate", "route": null, "service": null,
            "consumer": null,
            "config": {"allow": ["admins"], "deny": null, "hide_groups_header": false,
                       "always_use_authenticated_groups": false},
            "protocols": ["grpc", "grpcs", "http", "https"], "enabled": true, "tags": null,
        })
    );
    let id = id(&created)?;

    // PATCH merges config: allow is kept.
    let patched = admin
        .patch_json(
            "/plugins/gate",
            &json!({"config": {"hide_groups_header": true}, "enabled": false}),
        )
        .await?;
    expect(&patched, 200);
    assert_eq!(
        patched.body["config"],
        json!({"allow": ["admins"], "deny": null, "hide_groups_header": true,
               "always_use_authenticated_groups": false})
    );
    assert_eq!(patched.body["enabled"], json!(false));
    assert_eq!(
        patched.body["protocols"],
        json!(["grpc", "grpcs", "http", "https"])
    );
    // A merge that leaves both allow and deny set is refused; nothing changes.
    let res = admin
        .patch_json("/plugins/gate", &json!({"config": {"deny": ["x"]}}))
        .await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(2));
    assert_eq!(get_ok(admin, "/plugins/gate").await?, patched.body);

    // PUT replaces: config defaults again, enabled back to true.
    let replaced = admin
        .put_json(
            "/plugins/gate",
            &json!({"name": "acl", "config": {"deny": ["bad"]}}),
        )
        .await?;
    expect(&replaced, 200);
    assert_eq!(
        without(&replaced.body, &["updated_at"]),
        json!({
            "id": id, "created_at": created["created_at"], "name": "acl",
            "instance_name": "gate", "route": null, "service": null, "consumer": null,
            "config": {"allow": null, "deny": ["bad"], "hide_groups_header": false,
                       "always_use_authenticated_groups": false},
            "protocols": ["grpc", "grpcs", "http", "https"], "enabled": true, "tags": null,
        })
    );
    let res = admin
        .put_json(
            "/plugins/gate",
            &json!({"name": "acl", "instance_name": "other", "config": {"deny": ["bad"]}}),
        )
        .await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(2));
    assert!(res.body["fields"]["instance_name"].is_string(), "{res:#?}");

    // mtls-auth with a CA certificate: every config default is filled.
    let ca = Ca::new("Clients CA")?;
    let ca = create(admin, "/ca_certificates", json!({"cert": ca.pem.cert})).await?;
    let mtls = create(
        admin,
        "/plugins",
        json!({"name": "mtls-auth", "config": {"ca_certificates": [ca["id"]]}}),
    )
    .await?;
    assert_eq!(
        mtls["config"],
        json!({
            "ca_certificates": [ca["id"]], "skip_consumer_lookup": false,
            "authenticated_group_by": "CN", "consumer_by": ["username", "custom_id"],
            "anonymous": null, "default_consumer": null,
            "revocation_check_mode": "IGNORE_CA_ERROR", "http_timeout": 30000,
            "cache_ttl": 60, "cert_cache_ttl": 60000, "allow_partial_chain": false,
            "send_ca_dn": false, "http_proxy_host": null, "http_proxy_port": null,
            "https_proxy_host": null, "https_proxy_port": null, "ssl_verify": true,
        })
    );
    assert_eq!(mtls["instance_name"], Value::Null);
    // PATCH of one config key keeps ca_certificates.
    let patched = admin
        .patch_json(
            &format!("/plugins/{}", admin_support::id(&mtls)?),
            &json!({"config": {"skip_consumer_lookup": true}}),
        )
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["config"]["ca_certificates"], json!([ca["id"]]));
    assert_eq!(patched.body["config"]["skip_consumer_lookup"], json!(true));

    // PUT creates by instance name, which comes from the URL.
    let service = create(admin, "/services", json!({"name": "s", "host": "a.test"})).await?;
    let put_new = admin
        .put_json(
            "/plugins/second",
            &json!({"name": "acl", "service": {"id": service["id"]},
                    "config": {"allow": ["x"]}}),
        )
        .await?;
    expect(&put_new, 200);
    assert_eq!(put_new.body["instance_name"], json!("second"));
    assert_eq!(put_new.body["service"], json!({"id": service["id"]}));
    assert_eq!(get_ok(admin, "/plugins/second").await?, put_new.body);

    let current = get_ok(admin, "/plugins/gate").await?;
    check_read_and_delete(admin, "plugins", &current, Some("gate")).await?;
    Ok(())
}

// --- foreign keys by name -----------------------------------------------------------------

#[tokio::test]
async fn foreign_keys_resolve_by_unique_key() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let service = create(admin, "/services", json!({"name": "x", "host": "a.test"})).await?;
    let route = create(
        admin,
        "/routes",
        json!({"name": "r", "paths": ["/"], "service": {"name": "x"}}),
    )
    .await?;
    assert_eq!(route["service"], json!({"id": service["id"]}));
    let consumer = create(admin, "/consumers", json!({"username": "alice"})).await?;
    let acl = create(
        admin,
        "/acls",
        json!({"consumer": {"username": "alice"}, "group": "g"}),
    )
    .await?;
    assert_eq!(acl["consumer"], json!({"id": consumer["id"]}));
    let plugin = create(
        admin,
        "/plugins",
        json!({"name": "acl", "route": {"name": "r"}, "config": {"allow": ["g"]}}),
    )
    .await?;
    assert_eq!(plugin["route"], json!({"id": route["id"]}));
    let upstream = create(admin, "/upstreams", json!({"name": "up.test"})).await?;
    let target = create(
        admin,
        "/targets",
        json!({"upstream": {"name": "up.test"}, "target": "t.test:80"}),
    )
    .await?;
    assert_eq!(target["upstream"], json!({"id": upstream["id"]}));
    // PATCH by name too.
    create(admin, "/services", json!({"name": "y", "host": "b.test"})).await?;
    let moved = admin
        .patch_json("/routes/r", &json!({"service": {"name": "y"}}))
        .await?;
    expect(&moved, 200);
    assert_eq!(
        moved.body["service"],
        json!({"id": get_ok(admin, "/services/y").await?["id"]})
    );

    // An unknown name: 400, code 4, nothing written.
    let before = version(admin).await?;
    let res = admin
        .post_json(
            "/routes",
            &json!({"paths": ["/z"], "service": {"name": "nope"}}),
        )
        .await?;
    expect_body(
        &res,
        400,
        &json!({
            "code": 4, "name": "foreign key violation",
            "message": "the foreign key '{name=\"nope\"}' does not reference an existing 'services' entity.",
            "fields": {"service": {"name": "nope"}},
        }),
    );
    let missing = uuid::Uuid::new_v4().to_string();
    let res = admin
        .post_json(
            "/routes",
            &json!({"paths": ["/z"], "service": {"id": missing}}),
        )
        .await?;
    expect_body(
        &res,
        400,
        &json!({
            "code": 4, "name": "foreign key violation",
            "message": format!("the foreign key '{{id=\"{missing}\"}}' does not reference an existing 'services' entity."),
            "fields": {"service": {"id": missing}},
        }),
    );
    let res = admin
        .post_json(
            "/acls",
            &json!({"consumer": {"username": "bob"}, "group": "g"}),
        )
        .await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(4));
    assert_eq!(
        res.body["message"],
        json!(
            "the foreign key '{username=\"bob\"}' does not reference an existing 'consumers' entity."
        )
    );
    assert_eq!(version(admin).await?, before);
    assert_eq!(
        get_ok(admin, "/routes").await?["data"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    Ok(())
}

// --- pagination ---------------------------------------------------------------------------

#[tokio::test]
async fn pagination_follows_next_over_250_consumers() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let mut created = Vec::new();
    for chunk in (0..250).collect::<Vec<_>>().chunks(25) {
        let batch = chunk.iter().map(|i| {
            let admin = admin.clone();
            async move {
                create(
                    &admin,
                    "/consumers",
                    json!({"username": format!("user-{i:03}")}),
                )
                .await
            }
        });
        for consumer in futures_util::future::try_join_all(batch).await? {
            created.push(id(&consumer)?);
        }
    }

    // Default size is 100.
    let first = get_ok(admin, "/consumers").await?;
    assert_eq!(first["data"].as_array().map(Vec::len), Some(100));
    let offset = first["offset"].as_str().context("offset")?;
    assert_eq!(
        first["next"],
        json!(format!(
            "/consumers?offset={}&size=100",
            url::form_urlencoded::byte_serialize(offset.as_bytes()).collect::<String>()
        ))
    );

    let page = get_ok(admin, "/consumers?size=100").await?;
    assert_eq!(page, first);
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut next = Some("/consumers?size=100".to_owned());
    while let Some(path) = next {
        let page = get_ok(admin, &path).await?;
        let len = page["data"].as_array().map_or(0, Vec::len);
        seen.extend(ids(&page));
        pages.push(len);
        next = match &page["next"] {
            Value::String(next) => {
                let offset = page["offset"].as_str().context("offset with next")?;
                assert_eq!(
                    next,
                    &format!(
                        "/consumers?offset={}&size=100",
                        url::form_urlencoded::byte_serialize(offset.as_bytes()).collect::<String>()
                    )
                );
                Some(next.clone())
            }
            Value::Null => {
                assert!(page.get("offset").is_none(), "{page}");
                None
            }
            other => anyhow::bail!("next is {other}"),
        };
    }
    assert_eq!(pages, [100, 100, 50]);
    assert_eq!(seen.len(), 250);
    assert_eq!(sorted(seen.clone()), sorted(created.clone()));
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique.len(), 250, "an entity was listed twice");

    // Other sizes, including the largest.
    assert_eq!(
        list_all(admin, "/consumers?size=7", "/consumers")
            .await?
            .len(),
        250
    );
    let all = get_ok(admin, "/consumers?size=1000").await?;
    assert_eq!(all["data"].as_array().map(Vec::len), Some(250));
    assert_eq!(all["next"], Value::Null);
    let exact = get_ok(admin, "/consumers?size=250").await?;
    assert_eq!(exact["data"].as_array().map(Vec::len), Some(250));
    assert_eq!(exact["next"], Value::Null);
    Ok(())
}

#[tokio::test]
async fn pagination_rejects_bad_size_and_offset() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    create(admin, "/services", json!({"name": "s", "host": "a.test"})).await?;

    let res = admin.get("/services?size=abc").await?;
    expect(&res, 400);
    assert_eq!(
        (&res.body["code"], &res.body["name"], &res.body["message"]),
        (
            &json!(9),
            &json!("invalid size"),
            &json!("size must be a number")
        ),
        "{res:#?}"
    );
    for size in ["0", "1001", "-1"] {
        let res = admin.get(&format!("/services?size={size}")).await?;
        expect(&res, 400);
        assert_eq!(res.body["code"], json!(9), "size={size}: {res:#?}");
        assert_eq!(res.body["name"], json!("invalid size"), "{res:#?}");
    }
    for offset in ["garbage", "!!!", "WyJub3QtYS11dWlkIl0"] {
        let res = admin.get(&format!("/services?offset={offset}")).await?;
        expect(&res, 400);
        assert_eq!(res.body["code"], json!(7), "offset={offset}: {res:#?}");
        assert_eq!(res.body["name"], json!("invalid offset"), "{res:#?}");
    }
    // The nested and /tags lists check them as well.
    expect(&admin.get("/services/s/routes?size=abc").await?, 400);
    expect(&admin.get("/tags?offset=garbage").await?, 400);
    // size=1 and size=1000 are fine.
    let page = get_ok(admin, "/services?size=1").await?;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["next"], Value::Null);
    get_ok(admin, "/services?size=1000").await?;
    Ok(())
}

// --- tags ---------------------------------------------------------------------------------

#[tokio::test]
async fn tag_filters_and_the_tags_endpoint() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let s_ab = create(
        admin,
        "/services",
        json!({"name": "ab", "host": "a.test", "tags": ["a", "b"]}),
    )
    .await?;
    let s_a = create(
        admin,
        "/services",
        json!({"name": "a", "host": "a.test", "tags": ["a"]}),
    )
    .await?;
    let s_c = create(
        admin,
        "/services",
        json!({"name": "c", "host": "a.test", "tags": ["c"]}),
    )
    .await?;
    // An untagged service never matches a tag filter.
    create(admin, "/services", json!({"name": "n", "host": "a.test"})).await?;
    let consumer = create(
        admin,
        "/consumers",
        json!({"username": "u", "tags": ["a", "z"]}),
    )
    .await?;
    let upstream = create(
        admin,
        "/upstreams",
        json!({"name": "up.test", "tags": ["b"]}),
    )
    .await?;

    let ids_of = |v: &[&Value]| sorted(v.iter().filter_map(|e| id(e).ok()).collect());
    // a,b: both tags.
    let page = get_ok(admin, "/services?tags=a,b").await?;
    assert_eq!(sorted_ids(&page), ids_of(&[&s_ab]));
    // a/c: either.
    let page = get_ok(admin, "/services?tags=a/c").await?;
    assert_eq!(sorted_ids(&page), ids_of(&[&s_ab, &s_a, &s_c]));
    let page = get_ok(admin, "/services?tags=a").await?;
    assert_eq!(sorted_ids(&page), ids_of(&[&s_ab, &s_a]));
    let page = get_ok(admin, "/services?tags=nothing").await?;
    assert_eq!(page, json!({"data": [], "next": null}));
    let page = get_ok(admin, "/consumers?tags=a,z").await?;
    assert_eq!(sorted_ids(&page), ids_of(&[&consumer]));
    // Five tags are fine, six are not.
    get_ok(admin, "/services?tags=a/b/c/d/e").await?;
    let res = admin.get("/services?tags=a/b/c/d/e/f").await?;
    expect(&res, 400);
    assert!(
        res.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot query more than 5 tags")),
        "{res:#?}"
    );
    // Mixing , and / is refused.
    let res = admin.get("/services?tags=a,b/c").await?;
    expect(&res, 400);
    assert!(
        res.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot mix")),
        "{res:#?}"
    );
    assert_eq!(res.body["code"], json!(11), "{res:#?}");
    assert_eq!(res.body["name"], json!("invalid options"), "{res:#?}");
    // Invalid tags: empty, control characters.
    for bad in ["a,,b", "a%01", "%7F", "a/"] {
        let res = admin.get(&format!("/services?tags={bad}")).await?;
        expect(&res, 400);
        assert!(
            res.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("invalid tag")),
            "tags={bad}: {res:#?}"
        );
    }
    // Spaces and non-ASCII are valid tag characters.
    let spaced = create(
        admin,
        "/consumers",
        json!({"username": "v", "tags": ["with space", "été"]}),
    )
    .await?;
    let page = get_ok(admin, "/consumers?tags=with%20space").await?;
    assert_eq!(sorted_ids(&page), ids_of(&[&spaced]));
    let page = get_ok(admin, "/consumers?tags=%C3%A9t%C3%A9").await?;
    assert_eq!(sorted_ids(&page), ids_of(&[&spaced]));
    // Bad tags are refused on write too.
    let res = admin
        .post_json("/consumers", &json!({"username": "w", "tags": ["a,b"]}))
        .await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(2));

    // A tag filter is kept in next links.
    let page = get_ok(admin, "/services?tags=a/b/c&size=1").await?;
    let next = page["next"].as_str().context("next")?;
    assert!(next.starts_with("/services?offset="), "{next}");
    assert!(next.contains("&size=1"), "{next}");
    assert!(next.contains("tags=a%2Fb%2Fc"), "{next}");
    let listed = list_all(admin, "/services?tags=a/b/c&size=1", "/services").await?;
    assert_eq!(
        sorted(listed.iter().filter_map(|e| id(e).ok()).collect()),
        ids_of(&[&s_ab, &s_a, &s_c])
    );

    // /tags lists every (entity, tag) pair.
    let mut expected: Vec<Value> = Vec::new();
    for (entity_name, entity) in [
        ("services", &s_ab),
        ("services", &s_a),
        ("services", &s_c),
        ("consumers", &consumer),
        ("upstreams", &upstream),
        ("consumers", &spaced),
    ] {
        for tag in entity["tags"].as_array().into_iter().flatten() {
            expected
                .push(json!({"entity_name": entity_name, "entity_id": entity["id"], "tag": tag}));
        }
    }
    let sort = |mut rows: Vec<Value>| {
        rows.sort_by_key(|r| r.to_string());
        rows
    };
    let all = get_ok(admin, "/tags").await?;
    assert_eq!(all["next"], Value::Null);
    assert_eq!(
        sort(all["data"].as_array().cloned().unwrap_or_default()),
        sort(expected.clone())
    );
    // Paginated with size=2: every row once.
    let first = get_ok(admin, "/tags?size=2").await?;
    assert_eq!(first["data"].as_array().map(Vec::len), Some(2));
    assert!(
        first["next"]
            .as_str()
            .is_some_and(|n| n.starts_with("/tags?offset=") && n.contains("size=2")),
        "{first}"
    );
    let paged = list_all(admin, "/tags?size=2", "/tags").await?;
    assert_eq!(paged.len(), expected.len());
    assert_eq!(sort(paged), sort(expected.clone()));

    // /tags/{tag} filters.
    let only_a: Vec<Value> = expected
        .iter()
        .filter(|r| r["tag"] == json!("a"))
        .cloned()
        .collect();
    assert_eq!(only_a.len(), 3);
    let page = get_ok(admin, "/tags/a").await?;
    assert_eq!(page["next"], Value::Null);
    assert_eq!(
        sort(page["data"].as_array().cloned().unwrap_or_default()),
        sort(only_a.clone())
    );
    let paged = list_all(admin, "/tags/a?size=1", "/tags/a").await?;
    assert_eq!(sort(paged), sort(only_a));
    let page = get_ok(admin, "/tags/with%20space").await?;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["data"][0]["entity_id"], spaced["id"]);
    assert_eq!(
        get_ok(admin, "/tags/unused").await?,
        json!({"data": [], "next": null})
    );
    Ok(())
}
