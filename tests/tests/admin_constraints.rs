//! What deletes take with them (cascades), what they refuse (references), and unique and
//! primary-key constraints, with Kong's exact error bodies. A refused write changes nothing
//! and does not move the config version.

mod admin_support;

use anyhow::Result;
use serde_json::{Value, json};

use admin_support::*;
use gatehouse_tests::Admin;
use gatehouse_tests::certs::{self, Algorithm, Ca};

fn referenced_by(parent: &str, child: &str) -> Value {
    json!({
        "code": 4,
        "name": "foreign key violation",
        "message": format!("an existing '{child}' entity references this '{parent}' entity"),
        "fields": {"@referenced_by": child},
    })
}

/// Checks a refused DELETE: 400 with `body` (compared on code, name, message and, when given,
/// fields), the entity still there, the config version unchanged.
async fn assert_refused(admin: &Admin, path: &str, body: &Value) -> Result<()> {
    let before = version(admin).await?;
    let res = admin.delete(path).await?;
    expect(&res, 400);
    for key in ["code", "name", "message", "fields"] {
        if let Some(expected) = body.get(key) {
            assert_eq!(&res.body[key], expected, "{key} of DELETE {path}: {res:#?}");
        }
    }
    get_ok(admin, path).await?;
    assert_eq!(
        version(admin).await?,
        before,
        "refused DELETE {path} bumped"
    );
    Ok(())
}

// --- cascades -----------------------------------------------------------------------------

#[tokio::test]
async fn deleting_a_certificate_deletes_its_snis() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let pem = certs::self_signed(&["a.test"], Algorithm::Ecdsa, 10)?;
    let keep = certs::self_signed(&["k.test"], Algorithm::Ecdsa, 10)?;
    let cert = create(
        admin,
        "/certificates",
        json!({"cert": pem.cert, "key": pem.key, "snis": ["a.test", "b.test"]}),
    )
    .await?;
    let kept = create(
        admin,
        "/certificates",
        json!({"cert": keep.cert, "key": keep.key, "snis": ["k.test"]}),
    )
    .await?;
    let extra = create(
        admin,
        "/snis",
        json!({"name": "c.test", "certificate": {"id": cert["id"]}}),
    )
    .await?;
    let before = version(admin).await?;

    expect(&admin.delete("/certificates/b.test").await?, 204);
    assert_eq!(version(admin).await?, before + 1);
    assert_gone(admin, &format!("/certificates/{}", id(&cert)?)).await?;
    for sni in ["a.test", "b.test", "c.test"] {
        assert_gone(admin, &format!("/snis/{sni}")).await?;
    }
    assert_gone(admin, &format!("/snis/{}", id(&extra)?)).await?;
    let left = get_ok(admin, "/snis").await?;
    assert_eq!(left["data"].as_array().map(Vec::len), Some(1), "{left}");
    assert_eq!(left["data"][0]["name"], json!("k.test"));
    assert_eq!(
        get_ok(admin, &format!("/certificates/{}", id(&kept)?)).await?["snis"],
        json!(["k.test"])
    );
    Ok(())
}

#[tokio::test]
async fn deleting_an_upstream_deletes_its_targets() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    create(admin, "/upstreams", json!({"name": "u.test"})).await?;
    create(admin, "/upstreams", json!({"name": "keep.test"})).await?;
    let t1 = create(
        admin,
        "/upstreams/u.test/targets",
        json!({"target": "a.test"}),
    )
    .await?;
    let t2 = create(
        admin,
        "/upstreams/u.test/targets",
        json!({"target": "b.test"}),
    )
    .await?;
    let kept = create(
        admin,
        "/upstreams/keep.test/targets",
        json!({"target": "a.test"}),
    )
    .await?;
    let before = version(admin).await?;

    expect(&admin.delete("/upstreams/u.test").await?, 204);
    assert_eq!(version(admin).await?, before + 1);
    assert_gone(admin, "/upstreams/u.test").await?;
    assert_gone(admin, &format!("/targets/{}", id(&t1)?)).await?;
    assert_gone(admin, &format!("/targets/{}", id(&t2)?)).await?;
    assert_eq!(ids(&get_ok(admin, "/targets").await?), vec![id(&kept)?]);
    Ok(())
}

#[tokio::test]
async fn deleting_a_consumer_deletes_its_acls() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    create(admin, "/consumers", json!({"username": "alice"})).await?;
    create(admin, "/consumers", json!({"username": "bob"})).await?;
    let a1 = create(admin, "/consumers/alice/acls", json!({"group": "g1"})).await?;
    let a2 = create(admin, "/consumers/alice/acls", json!({"group": "g2"})).await?;
    let b1 = create(admin, "/consumers/bob/acls", json!({"group": "g1"})).await?;
    // A plugin that is not consumer-scoped stays.
    let plugin = create(
        admin,
        "/plugins",
        json!({"name": "acl", "config": {"allow": ["g1"]}}),
    )
    .await?;
    let before = version(admin).await?;

    expect(&admin.delete("/consumers/alice").await?, 204);
    assert_eq!(version(admin).await?, before + 1);
    assert_gone(admin, "/consumers/alice").await?;
    assert_gone(admin, &format!("/acls/{}", id(&a1)?)).await?;
    assert_gone(admin, &format!("/acls/{}", id(&a2)?)).await?;
    assert_eq!(ids(&get_ok(admin, "/acls").await?), vec![id(&b1)?]);
    get_ok(admin, &format!("/plugins/{}", id(&plugin)?)).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_routes_and_services_deletes_their_plugins() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    create(admin, "/services", json!({"name": "s", "host": "a.test"})).await?;
    create(
        admin,
        "/services",
        json!({"name": "keep", "host": "a.test"}),
    )
    .await?;
    let r1 = create(
        admin,
        "/services/s/routes",
        json!({"name": "r1", "paths": ["/1"]}),
    )
    .await?;
    create(
        admin,
        "/services/s/routes",
        json!({"name": "r2", "paths": ["/2"]}),
    )
    .await?;
    let allow = json!({"name": "acl", "config": {"allow": ["g"]}});
    let on_service = create(admin, "/services/s/plugins", allow.clone()).await?;
    let on_r1 = create(admin, "/routes/r1/plugins", allow.clone()).await?;
    let on_r2 = create(admin, "/routes/r2/plugins", allow.clone()).await?;
    let on_keep = create(admin, "/services/keep/plugins", allow.clone()).await?;
    let global = create(admin, "/plugins", allow.clone()).await?;

    // A service with routes cannot be deleted: nothing goes, its plugins stay.
    assert_refused(admin, "/services/s", &referenced_by("services", "routes")).await?;
    get_ok(admin, &format!("/plugins/{}", id(&on_service)?)).await?;
    get_ok(admin, "/routes/r1").await?;

    // Deleting a route deletes its plugins only.
    let before = version(admin).await?;
    expect(&admin.delete(&format!("/routes/{}", id(&r1)?)).await?, 204);
    assert_eq!(version(admin).await?, before + 1);
    assert_gone(admin, &format!("/plugins/{}", id(&on_r1)?)).await?;
    get_ok(admin, &format!("/plugins/{}", id(&on_r2)?)).await?;
    get_ok(admin, &format!("/plugins/{}", id(&on_service)?)).await?;
    assert_refused(admin, "/services/s", &referenced_by("services", "routes")).await?;

    // With its last route gone, the service can go, and its plugins with it.
    expect(&admin.delete("/routes/r2").await?, 204);
    assert_gone(admin, &format!("/plugins/{}", id(&on_r2)?)).await?;
    let before = version(admin).await?;
    expect(&admin.delete("/services/s").await?, 204);
    assert_eq!(version(admin).await?, before + 1);
    assert_gone(admin, "/services/s").await?;
    assert_gone(admin, &format!("/plugins/{}", id(&on_service)?)).await?;
    assert_eq!(
        sorted_ids(&get_ok(admin, "/plugins").await?),
        sorted(vec![id(&on_keep)?, id(&global)?])
    );
    Ok(())
}

// --- refusals -----------------------------------------------------------------------------

#[tokio::test]
async fn a_service_with_routes_is_not_deleted() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let service = create(admin, "/services", json!({"name": "s", "host": "a.test"})).await?;
    create(admin, "/services/s/routes", json!({"paths": ["/"]})).await?;
    let before = version(admin).await?;
    for path in [
        "/services/s".to_owned(),
        format!("/services/{}", id(&service)?),
    ] {
        let res = admin.delete(&path).await?;
        expect_body(
            &res,
            400,
            &json!({"code": 4, "name": "foreign key violation",
                    "message": "an existing 'routes' entity references this 'services' entity",
                    "fields": {"@referenced_by": "routes"}}),
        );
    }
    assert_eq!(version(admin).await?, before);
    assert_eq!(get_ok(admin, "/services/s").await?, service);
    assert_eq!(
        get_ok(admin, "/services/s/routes").await?["data"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    Ok(())
}

#[tokio::test]
async fn a_certificate_used_as_client_certificate_is_not_deleted() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let a = certs::self_signed(&["client-a.test"], Algorithm::Ecdsa, 10)?;
    let b = certs::self_signed(&["client-b.test"], Algorithm::Rsa, 10)?;
    let cert_a = create(
        admin,
        "/certificates",
        json!({"cert": a.cert, "key": a.key, "snis": ["client-a.test"]}),
    )
    .await?;
    let cert_b = create(
        admin,
        "/certificates",
        json!({"cert": b.cert, "key": b.key}),
    )
    .await?;
    let (a_id, b_id) = (id(&cert_a)?, id(&cert_b)?);

    // Used by a service (https).
    let service = create(
        admin,
        "/services",
        json!({"name": "tls", "url": "https://origin.test",
               "client_certificate": {"id": a_id}}),
    )
    .await?;
    assert_eq!(service["client_certificate"], json!({"id": a_id}));
    let refused = referenced_by("certificates", "services");
    assert_refused(admin, &format!("/certificates/{a_id}"), &refused).await?;
    // Named by its SNI: the same refusal, and the SNI stays.
    let res = admin.delete("/certificates/client-a.test").await?;
    expect_body(&res, 400, &refused);
    get_ok(admin, "/snis/client-a.test").await?;

    // Used by an upstream.
    create(
        admin,
        "/upstreams",
        json!({"name": "up.test", "client_certificate": {"id": b_id}}),
    )
    .await?;
    let refused = referenced_by("certificates", "upstreams");
    assert_refused(admin, &format!("/certificates/{b_id}"), &refused).await?;

    // Once no longer used, they can go.
    let patched = admin
        .patch_json("/services/tls", &json!({"client_certificate": null}))
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["client_certificate"], Value::Null);
    expect(&admin.delete(&format!("/certificates/{a_id}")).await?, 204);
    assert_gone(admin, "/snis/client-a.test").await?;
    expect(&admin.delete("/upstreams/up.test").await?, 204);
    expect(&admin.delete(&format!("/certificates/{b_id}")).await?, 204);
    assert_gone(admin, &format!("/certificates/{b_id}")).await?;
    Ok(())
}

#[tokio::test]
async fn a_ca_certificate_still_referenced_is_not_deleted() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let ca1 = Ca::new("CA one")?;
    let ca2 = Ca::new("CA two")?;
    let ca1 = create(admin, "/ca_certificates", json!({"cert": ca1.pem.cert})).await?;
    let ca2 = create(admin, "/ca_certificates", json!({"cert": ca2.pem.cert})).await?;
    let (ca1_id, ca2_id) = (id(&ca1)?, id(&ca2)?);

    // Referenced by a service's ca_certificates.
    let service = create(
        admin,
        "/services",
        json!({"name": "tls", "url": "https://origin.test", "tls_verify": true,
               "ca_certificates": [ca1_id]}),
    )
    .await?;
    let service_id = id(&service)?;
    assert_refused(
        admin,
        &format!("/ca_certificates/{ca1_id}"),
        &json!({"code": 19, "name": "referenced by others",
        "message": format!(
            "ca certificate {ca1_id} is still referenced by services (id = {service_id})"
        )}),
    )
    .await?;

    // Referenced by an mtls-auth plugin's config.ca_certificates.
    let plugin = create(
        admin,
        "/plugins",
        json!({"name": "mtls-auth", "config": {"ca_certificates": [ca2_id]}}),
    )
    .await?;
    let plugin_id = id(&plugin)?;
    assert_refused(
        admin,
        &format!("/ca_certificates/{ca2_id}"),
        &json!({"code": 19, "name": "referenced by others",
        "message": format!(
            "ca certificate {ca2_id} is still referenced by plugins (id = {plugin_id})"
        )}),
    )
    .await?;

    // Once the references are gone, the deletes go through.
    expect(
        &admin
            .patch_json("/services/tls", &json!({"ca_certificates": [ca2_id]}))
            .await?,
        200,
    );
    expect(
        &admin.delete(&format!("/ca_certificates/{ca1_id}")).await?,
        204,
    );
    assert_gone(admin, &format!("/ca_certificates/{ca1_id}")).await?;
    // ca2 now has both kinds of users.
    let res = admin.delete(&format!("/ca_certificates/{ca2_id}")).await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(19));
    let message = res.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&service_id) && message.contains(&plugin_id),
        "{res:#?}"
    );
    expect(&admin.delete(&format!("/plugins/{plugin_id}")).await?, 204);
    expect(&admin.delete("/services/tls").await?, 204);
    expect(
        &admin.delete(&format!("/ca_certificates/{ca2_id}")).await?,
        204,
    );
    assert_eq!(
        get_ok(admin, "/ca_certificates").await?,
        json!({"data": [], "next": null})
    );
    Ok(())
}

// --- unique and primary keys --------------------------------------------------------------

/// POSTs `body` to `path` and checks the 409 body; nothing is written.
async fn assert_unique(
    admin: &Admin,
    path: &str,
    body: Value,
    fields: Value,
    rendered: &str,
) -> Result<()> {
    let before = version(admin).await?;
    let res = admin.post_json(path, &body).await?;
    expect_body(&res, 409, &unique_violation(fields, rendered));
    assert_eq!(version(admin).await?, before, "refused POST {path} bumped");
    Ok(())
}

#[tokio::test]
async fn unique_names_usernames_and_custom_ids() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    create(admin, "/services", json!({"name": "svc", "host": "a.test"})).await?;
    assert_unique(
        admin,
        "/services",
        json!({"name": "svc", "host": "b.test"}),
        json!({"name": "svc"}),
        r#"{name="svc"}"#,
    )
    .await?;
    create(admin, "/routes", json!({"name": "r", "paths": ["/"]})).await?;
    assert_unique(
        admin,
        "/routes",
        json!({"name": "r", "paths": ["/x"]}),
        json!({"name": "r"}),
        r#"{name="r"}"#,
    )
    .await?;
    create(admin, "/upstreams", json!({"name": "u.test"})).await?;
    assert_unique(
        admin,
        "/upstreams",
        json!({"name": "u.test"}),
        json!({"name": "u.test"}),
        r#"{name="u.test"}"#,
    )
    .await?;
    create(
        admin,
        "/consumers",
        json!({"username": "alice", "custom_id": "c1"}),
    )
    .await?;
    assert_unique(
        admin,
        "/consumers",
        json!({"username": "alice"}),
        json!({"username": "alice"}),
        r#"{username="alice"}"#,
    )
    .await?;
    assert_unique(
        admin,
        "/consumers",
        json!({"username": "bob", "custom_id": "c1"}),
        json!({"custom_id": "c1"}),
        r#"{custom_id="c1"}"#,
    )
    .await?;
    create(
        admin,
        "/plugins",
        json!({"name": "acl", "instance_name": "gate", "config": {"allow": ["g"]}}),
    )
    .await?;
    create(
        admin,
        "/services",
        json!({"name": "other", "host": "a.test"}),
    )
    .await?;
    assert_unique(
        admin,
        "/services/other/plugins",
        json!({"name": "acl", "instance_name": "gate", "config": {"allow": ["g"]}}),
        json!({"instance_name": "gate"}),
        r#"{instance_name="gate"}"#,
    )
    .await?;

    // PATCH and PUT hit the same constraints.
    let res = admin
        .patch_json("/services/other", &json!({"name": "svc"}))
        .await?;
    expect_body(
        &res,
        409,
        &unique_violation(json!({"name": "svc"}), r#"{name="svc"}"#),
    );
    let res = admin
        .put_json("/consumers/carol", &json!({"custom_id": "c1"}))
        .await?;
    expect_body(
        &res,
        409,
        &unique_violation(json!({"custom_id": "c1"}), r#"{custom_id="c1"}"#),
    );
    assert_gone(admin, "/consumers/carol").await?;
    assert_eq!(
        get_ok(admin, "/services/other").await?["name"],
        json!("other")
    );
    Ok(())
}

#[tokio::test]
async fn unique_plugin_scope_sni_target_and_acl_group() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();

    // A second acl plugin on the same service.
    let service = create(admin, "/services", json!({"name": "s", "host": "a.test"})).await?;
    let allow = json!({"name": "acl", "config": {"allow": ["g"]}});
    create(admin, "/services/s/plugins", allow.clone()).await?;
    let sid = id(&service)?;
    let scope_fields =
        json!({"consumer": null, "name": "acl", "route": null, "service": {"id": sid}});
    let rendered = format!(r#"{{consumer=null,name="acl",route=null,service={{id="{sid}"}}}}"#);
    assert_unique(
        admin,
        "/services/s/plugins",
        allow.clone(),
        scope_fields.clone(),
        &rendered,
    )
    .await?;
    let mut by_body = allow.clone();
    by_body["service"] = json!({"name": "s"});
    assert_unique(admin, "/plugins", by_body, scope_fields, &rendered).await?;
    // The same plugin globally, or on a route of that service, is another scope.
    create(admin, "/plugins", allow.clone()).await?;
    create(
        admin,
        "/services/s/routes",
        json!({"name": "r", "paths": ["/"]}),
    )
    .await?;
    create(admin, "/routes/r/plugins", allow.clone()).await?;

    // A duplicate SNI through /snis.
    let pem = certs::self_signed(&["a.test"], Algorithm::Ecdsa, 10)?;
    let cert = create(
        admin,
        "/certificates",
        json!({"cert": pem.cert, "key": pem.key, "snis": ["a.test"]}),
    )
    .await?;
    assert_unique(
        admin,
        "/snis",
        json!({"name": "a.test", "certificate": {"id": cert["id"]}}),
        json!({"name": "a.test"}),
        r#"{name="a.test"}"#,
    )
    .await?;
    // Through another certificate's snis it is a schema violation naming the owner.
    let other = certs::self_signed(&["b.test"], Algorithm::Ecdsa, 10)?;
    let res = admin
        .post_json(
            "/certificates",
            &json!({"cert": other.cert, "key": other.key, "snis": ["b.test", "a.test"]}),
        )
        .await?;
    let owner = id(&cert)?;
    let message = format!("a.test already associated with existing certificate '{owner}'");
    expect_body(
        &res,
        400,
        &json!({"code": 2, "name": "schema violation",
                "message": format!("schema violation (snis: {message})"),
                "fields": {"snis": message}}),
    );
    assert_gone(admin, "/snis/b.test").await?;
    assert_eq!(
        get_ok(admin, "/certificates").await?["data"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // A duplicate target in an upstream (with the default port made explicit).
    let upstream = create(admin, "/upstreams", json!({"name": "u.test"})).await?;
    let uid = id(&upstream)?;
    create(
        admin,
        "/upstreams/u.test/targets",
        json!({"target": "10.0.0.1"}),
    )
    .await?;
    assert_unique(
        admin,
        "/upstreams/u.test/targets",
        json!({"target": "10.0.0.1:8000"}),
        json!({"target": "10.0.0.1:8000", "upstream": {"id": uid}}),
        &format!(r#"{{target="10.0.0.1:8000",upstream={{id="{uid}"}}}}"#),
    )
    .await?;
    // The same address in another upstream is fine.
    create(admin, "/upstreams", json!({"name": "v.test"})).await?;
    create(
        admin,
        "/upstreams/v.test/targets",
        json!({"target": "10.0.0.1"}),
    )
    .await?;

    // A duplicate ACL group for one consumer.
    let consumer = create(admin, "/consumers", json!({"username": "c"})).await?;
    let cid = id(&consumer)?;
    create(admin, "/consumers/c/acls", json!({"group": "g"})).await?;
    assert_unique(
        admin,
        "/consumers/c/acls",
        json!({"group": "g"}),
        json!({"consumer": {"id": cid}, "group": "g"}),
        &format!(r#"{{consumer={{id="{cid}"}},group="g"}}"#),
    )
    .await?;
    create(admin, "/consumers", json!({"username": "d"})).await?;
    create(admin, "/consumers/d/acls", json!({"group": "g"})).await?;

    // A duplicate CA certificate.
    let ca = Ca::new("Dup CA")?;
    let stored = create(admin, "/ca_certificates", json!({"cert": ca.pem.cert})).await?;
    let digest = stored["cert_digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_unique(
        admin,
        "/ca_certificates",
        json!({"cert": ca.pem.cert}),
        json!({"cert_digest": digest}),
        &format!(r#"{{cert_digest="{digest}"}}"#),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn posting_an_id_already_taken_is_a_primary_key_violation() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let first = create(admin, "/consumers", json!({"username": "a"})).await?;
    let taken = id(&first)?;
    let before = version(admin).await?;
    let res = admin
        .post_json("/consumers", &json!({"id": taken, "username": "b"}))
        .await?;
    expect_body(
        &res,
        400,
        &json!({"code": 3, "name": "primary key violation",
                "message": format!("primary key violation on key '{{id=\"{taken}\"}}'"),
                "fields": {"id": taken}}),
    );
    let service = create(admin, "/services", json!({"host": "a.test"})).await?;
    let res = admin
        .post_json("/services", &json!({"id": service["id"], "host": "b.test"}))
        .await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(3), "{res:#?}");
    assert_eq!(
        version(admin).await?,
        before + 1,
        "only the service was written"
    );
    assert_gone(admin, "/consumers/b").await?;
    assert_eq!(get_ok(admin, &format!("/consumers/{taken}")).await?, first);

    // A client-chosen id that is free is kept.
    let chosen = uuid::Uuid::new_v4().to_string();
    let created = create(admin, "/consumers", json!({"id": chosen, "username": "c"})).await?;
    assert_eq!(created["id"], json!(chosen));
    Ok(())
}
