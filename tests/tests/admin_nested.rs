//! Nested Admin API endpoints: `/services/{s}/routes`, `/services/{s}/plugins`,
//! `/routes/{r}/plugins`, `/consumers/{c}/plugins`, `/consumers/{c}/acls`,
//! `/certificates/{c}/snis`, `/upstreams/{u}/targets`. The parent is named by id or by key;
//! an unknown parent is 404; a child asked for under another parent is 404 (and is not
//! touched); a nested POST sets the parent reference whatever the body says.

mod admin_support;

use anyhow::Result;
use serde_json::{Value, json};

use admin_support::*;
use gatehouse_tests::certs::{self, Algorithm, Ca};

#[tokio::test]
async fn service_routes() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let s1 = create(admin, "/services", json!({"name": "s1", "host": "a.test"})).await?;
    let s2 = create(admin, "/services", json!({"name": "s2", "host": "b.test"})).await?;
    let s1_id = id(&s1)?;

    // By parent name, by parent id; a body naming another service is overridden.
    let r1 = create(
        admin,
        "/services/s1/routes",
        json!({"name": "r1", "paths": ["/1"]}),
    )
    .await?;
    assert_eq!(r1["service"], json!({"id": s1["id"]}));
    let r2 = create(
        admin,
        &format!("/services/{s1_id}/routes"),
        json!({"name": "r2", "paths": ["/2"], "service": {"id": s2["id"]}}),
    )
    .await?;
    assert_eq!(r2["service"], json!({"id": s1["id"]}));
    let r3 = create(
        admin,
        "/services/s2/routes",
        json!({"name": "r3", "paths": ["/3"], "service": {"name": "s1"}}),
    )
    .await?;
    assert_eq!(r3["service"], json!({"id": s2["id"]}));
    // A route of no service.
    let lone = create(admin, "/routes", json!({"name": "lone", "paths": ["/l"]})).await?;

    // Lists are per parent, by name or id.
    let list = get_ok(admin, "/services/s1/routes").await?;
    assert_eq!(list["next"], Value::Null);
    assert_eq!(sorted_ids(&list), sorted(vec![id(&r1)?, id(&r2)?]));
    assert_eq!(
        get_ok(admin, &format!("/services/{s1_id}/routes")).await?,
        list
    );
    assert_eq!(
        sorted_ids(&get_ok(admin, "/services/s2/routes").await?),
        vec![id(&r3)?]
    );
    assert_eq!(
        sorted_ids(&get_ok(admin, "/routes").await?),
        sorted(vec![id(&r1)?, id(&r2)?, id(&r3)?, id(&lone)?])
    );

    // One child: by name and by id under its parent; 404 under another or none.
    assert_eq!(get_ok(admin, "/services/s1/routes/r1").await?, r1);
    assert_eq!(
        get_ok(admin, &format!("/services/{s1_id}/routes/{}", id(&r1)?)).await?,
        r1
    );
    for path in [
        "/services/s2/routes/r1".to_owned(),
        format!("/services/s2/routes/{}", id(&r1)?),
        "/services/s1/routes/lone".to_owned(),
        "/services/s1/routes/missing".to_owned(),
        "/services/nope/routes/r1".to_owned(),
        "/services/nope/routes".to_owned(),
        format!("/services/{}/routes", uuid::Uuid::new_v4()),
    ] {
        expect_body(&admin.get(&path).await?, 404, &not_found());
    }
    let head = head(admin, "/services/s2/routes/r1").await?;
    expect(&head, 404);
    check_head_and_options(
        admin,
        "/services/s1/routes/r1",
        &["GET", "HEAD", "PATCH", "PUT", "DELETE", "OPTIONS"],
    )
    .await?;
    check_head_and_options(
        admin,
        "/services/s1/routes",
        &["GET", "HEAD", "POST", "OPTIONS"],
    )
    .await?;

    // POST under an unknown parent: 404, nothing created.
    let before = version(admin).await?;
    expect_body(
        &admin
            .post_json("/services/nope/routes", &json!({"paths": ["/x"]}))
            .await?,
        404,
        &not_found(),
    );
    assert_eq!(version(admin).await?, before);

    // PATCH under the parent keeps the parent; under another parent it is 404.
    let patched = admin
        .patch_json(
            "/services/s1/routes/r1",
            &json!({"strip_path": false, "service": {"id": s2["id"]}}),
        )
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["strip_path"], json!(false));
    assert_eq!(patched.body["service"], json!({"id": s1["id"]}));
    expect_body(
        &admin
            .patch_json("/services/s2/routes/r1", &json!({"strip_path": true}))
            .await?,
        404,
        &not_found(),
    );
    assert_eq!(
        get_ok(admin, "/routes/r1").await?["strip_path"],
        json!(false)
    );

    // PUT under the parent: replace keeps the parent, create sets it.
    let replaced = admin
        .put_json("/services/s1/routes/r1", &json!({"paths": ["/one"]}))
        .await?;
    expect(&replaced, 200);
    assert_eq!(replaced.body["id"], r1["id"]);
    assert_eq!(replaced.body["service"], json!({"id": s1["id"]}));
    assert_eq!(replaced.body["strip_path"], json!(true));
    assert_eq!(replaced.body["paths"], json!(["/one"]));
    let put_new = admin
        .put_json("/services/s2/routes/r4", &json!({"paths": ["/4"]}))
        .await?;
    expect(&put_new, 200);
    assert_eq!(put_new.body["name"], json!("r4"));
    assert_eq!(put_new.body["service"], json!({"id": s2["id"]}));

    // DELETE under another parent: 404 and the route stays.
    expect_body(
        &admin.delete("/services/s2/routes/r1").await?,
        404,
        &not_found(),
    );
    get_ok(admin, "/routes/r1").await?;
    expect_body(
        &admin.delete("/services/nope/routes/r1").await?,
        404,
        &not_found(),
    );
    get_ok(admin, "/routes/r1").await?;
    // Under its parent: 204, gone.
    expect_body(
        &admin.delete("/services/s1/routes/r1").await?,
        204,
        &Value::Null,
    );
    assert_gone(admin, "/routes/r1").await?;
    expect_body(
        &admin
            .delete(&format!("/services/{s1_id}/routes/{}", id(&r2)?))
            .await?,
        204,
        &Value::Null,
    );
    assert_gone(admin, "/routes/r2").await?;
    assert_eq!(
        get_ok(admin, "/services/s1/routes").await?,
        json!({"data": [], "next": null})
    );
    Ok(())
}

#[tokio::test]
async fn plugins_under_services_routes_and_consumers() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let s = create(admin, "/services", json!({"name": "s", "host": "a.test"})).await?;
    let other = create(
        admin,
        "/services",
        json!({"name": "other", "host": "b.test"}),
    )
    .await?;
    let r = create(
        admin,
        "/services/s/routes",
        json!({"name": "r", "paths": ["/"]}),
    )
    .await?;
    let c = create(admin, "/consumers", json!({"username": "c"})).await?;

    let on_service = create(
        admin,
        "/services/s/plugins",
        json!({"name": "acl", "instance_name": "svc-acl", "config": {"allow": ["g"]},
               "service": {"id": other["id"]}}),
    )
    .await?;
    assert_eq!(
        (
            &on_service["service"],
            &on_service["route"],
            &on_service["consumer"]
        ),
        (&json!({"id": s["id"]}), &Value::Null, &Value::Null)
    );
    let on_route = create(
        admin,
        &format!("/routes/{}/plugins", id(&r)?),
        json!({"name": "acl", "config": {"deny": ["bad"]}}),
    )
    .await?;
    assert_eq!(
        (&on_route["service"], &on_route["route"]),
        (&Value::Null, &json!({"id": r["id"]}))
    );
    let global = create(
        admin,
        "/plugins",
        json!({"name": "acl", "config": {"allow": ["everyone"]}}),
    )
    .await?;

    // acl and mtls-auth may not be scoped to a consumer.
    let before = version(admin).await?;
    let res = admin
        .post_json(
            "/consumers/c/plugins",
            &json!({"name": "acl", "config": {"allow": ["g"]}}),
        )
        .await?;
    expect_body(
        &res,
        400,
        &json!({"code": 2, "name": "schema violation",
                "message": "schema violation (consumer: value must be null)",
                "fields": {"consumer": "value must be null"}}),
    );
    let ca = Ca::new("Clients CA")?;
    let ca = create(admin, "/ca_certificates", json!({"cert": ca.pem.cert})).await?;
    let res = admin
        .post_json(
            &format!("/consumers/{}/plugins", id(&c)?),
            &json!({"name": "mtls-auth", "config": {"ca_certificates": [ca["id"]]}}),
        )
        .await?;
    expect(&res, 400);
    assert_eq!(
        res.body["fields"],
        json!({"consumer": "value must be null"}),
        "{res:#?}"
    );
    assert_eq!(version(admin).await?, before + 1, "only the CA was written");
    assert_eq!(
        get_ok(admin, "/consumers/c/plugins").await?,
        json!({"data": [], "next": null})
    );
    expect_body(
        &admin.get("/consumers/nobody/plugins").await?,
        404,
        &not_found(),
    );

    // Lists per parent.
    assert_eq!(
        ids(&get_ok(admin, "/services/s/plugins").await?),
        vec![id(&on_service)?]
    );
    assert_eq!(
        ids(&get_ok(admin, "/routes/r/plugins").await?),
        vec![id(&on_route)?]
    );
    assert_eq!(
        get_ok(admin, "/services/other/plugins").await?,
        json!({"data": [], "next": null})
    );
    assert_eq!(
        sorted_ids(&get_ok(admin, "/plugins").await?),
        sorted(vec![id(&on_service)?, id(&on_route)?, id(&global)?])
    );

    // One plugin, by id or instance name, only under its parent.
    assert_eq!(
        get_ok(admin, "/services/s/plugins/svc-acl").await?,
        on_service
    );
    assert_eq!(
        get_ok(admin, &format!("/services/s/plugins/{}", id(&on_service)?)).await?,
        on_service
    );
    assert_eq!(
        get_ok(admin, &format!("/routes/r/plugins/{}", id(&on_route)?)).await?,
        on_route
    );
    for path in [
        format!("/services/s/plugins/{}", id(&on_route)?),
        format!("/routes/r/plugins/{}", id(&on_service)?),
        "/routes/r/plugins/svc-acl".to_owned(),
        format!("/services/other/plugins/{}", id(&on_service)?),
        format!("/services/s/plugins/{}", id(&global)?),
        format!("/consumers/c/plugins/{}", id(&global)?),
    ] {
        expect_body(&admin.get(&path).await?, 404, &not_found());
    }

    // PATCH merges config and keeps the scope.
    let patched = admin
        .patch_json(
            "/services/s/plugins/svc-acl",
            &json!({"config": {"hide_groups_header": true}}),
        )
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["config"]["allow"], json!(["g"]));
    assert_eq!(patched.body["config"]["hide_groups_header"], json!(true));
    assert_eq!(patched.body["service"], json!({"id": s["id"]}));
    expect_body(
        &admin
            .patch_json(
                &format!("/routes/r/plugins/{}", id(&on_service)?),
                &json!({"enabled": false}),
            )
            .await?,
        404,
        &not_found(),
    );
    assert_eq!(
        get_ok(admin, "/plugins/svc-acl").await?["enabled"],
        json!(true)
    );

    // PUT creates under the parent.
    let put_new = admin
        .put_json(
            "/services/other/plugins/other-acl",
            &json!({"name": "acl", "config": {"allow": ["o"]}}),
        )
        .await?;
    expect(&put_new, 200);
    assert_eq!(put_new.body["service"], json!({"id": other["id"]}));
    assert_eq!(put_new.body["instance_name"], json!("other-acl"));

    // DELETE only under the parent.
    expect_body(
        &admin
            .delete(&format!("/services/s/plugins/{}", id(&on_route)?))
            .await?,
        404,
        &not_found(),
    );
    get_ok(admin, &format!("/plugins/{}", id(&on_route)?)).await?;
    expect_body(
        &admin
            .delete(&format!("/routes/r/plugins/{}", id(&on_route)?))
            .await?,
        204,
        &Value::Null,
    );
    assert_gone(admin, &format!("/plugins/{}", id(&on_route)?)).await?;
    expect_body(
        &admin.delete("/services/s/plugins/svc-acl").await?,
        204,
        &Value::Null,
    );
    assert_gone(admin, "/plugins/svc-acl").await?;
    get_ok(admin, &format!("/plugins/{}", id(&global)?)).await?;
    Ok(())
}

#[tokio::test]
async fn consumer_acls_by_group_and_id() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let alice = create(admin, "/consumers", json!({"username": "alice"})).await?;
    let bob = create(admin, "/consumers", json!({"username": "bob"})).await?;
    let alice_id = id(&alice)?;

    let admins = create(admin, "/consumers/alice/acls", json!({"group": "admins"})).await?;
    assert_eq!(
        without(&admins, &["id", "created_at", "updated_at"]),
        json!({"consumer": {"id": alice["id"]}, "group": "admins", "tags": null})
    );
    let ops = create(
        admin,
        &format!("/consumers/{alice_id}/acls"),
        json!({"group": "ops", "consumer": {"id": bob["id"]}}),
    )
    .await?;
    assert_eq!(ops["consumer"], json!({"id": alice["id"]}));
    // The same group for another consumer is fine.
    let bob_admins = create(admin, "/consumers/bob/acls", json!({"group": "admins"})).await?;

    let list = get_ok(admin, "/consumers/alice/acls").await?;
    assert_eq!(sorted_ids(&list), sorted(vec![id(&admins)?, id(&ops)?]));
    assert_eq!(list["next"], Value::Null);
    assert_eq!(
        ids(&get_ok(admin, "/consumers/bob/acls").await?),
        vec![id(&bob_admins)?]
    );
    assert_eq!(
        get_ok(admin, "/acls").await?["data"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    expect_body(
        &admin.get("/consumers/nobody/acls").await?,
        404,
        &not_found(),
    );

    // One ACL by group name or id, under its consumer only.
    assert_eq!(get_ok(admin, "/consumers/alice/acls/admins").await?, admins);
    assert_eq!(
        get_ok(
            admin,
            &format!("/consumers/{alice_id}/acls/{}", id(&admins)?)
        )
        .await?,
        admins
    );
    assert_eq!(
        get_ok(admin, "/consumers/bob/acls/admins").await?,
        bob_admins
    );
    for path in [
        "/consumers/bob/acls/ops".to_owned(),
        format!("/consumers/bob/acls/{}", id(&ops)?),
        "/consumers/alice/acls/nothing".to_owned(),
        "/consumers/nobody/acls/admins".to_owned(),
    ] {
        expect_body(&admin.get(&path).await?, 404, &not_found());
    }

    // PATCH by group.
    let patched = admin
        .patch_json("/consumers/alice/acls/admins", &json!({"tags": ["t"]}))
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["id"], admins["id"]);
    assert_eq!(patched.body["tags"], json!(["t"]));
    expect_body(
        &admin
            .patch_json("/consumers/bob/acls/ops", &json!({"tags": ["t"]}))
            .await?,
        404,
        &not_found(),
    );

    // PUT with a new group name creates it; again, replaces it.
    let created = admin
        .put_json("/consumers/alice/acls/devs", &json!({}))
        .await?;
    expect(&created, 200);
    assert_eq!(
        without(&created.body, &["id", "created_at", "updated_at"]),
        json!({"consumer": {"id": alice["id"]}, "group": "devs", "tags": null})
    );
    let replaced = admin
        .put_json("/consumers/alice/acls/devs", &json!({"tags": ["x"]}))
        .await?;
    expect(&replaced, 200);
    assert_eq!(replaced.body["id"], created.body["id"]);
    assert_eq!(replaced.body["tags"], json!(["x"]));
    assert_eq!(replaced.body["group"], json!("devs"));
    // A body naming another group than the URL is refused.
    let res = admin
        .put_json("/consumers/alice/acls/devs", &json!({"group": "other"}))
        .await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(2), "{res:#?}");
    assert!(res.body["fields"]["group"].is_string(), "{res:#?}");
    assert_eq!(
        get_ok(admin, "/consumers/alice/acls").await?["data"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );

    // DELETE by group and by id, only under the consumer.
    expect_body(
        &admin.delete("/consumers/bob/acls/ops").await?,
        404,
        &not_found(),
    );
    expect_body(
        &admin
            .delete(&format!("/consumers/bob/acls/{}", id(&ops)?))
            .await?,
        404,
        &not_found(),
    );
    get_ok(admin, &format!("/acls/{}", id(&ops)?)).await?;
    expect_body(
        &admin.delete("/consumers/alice/acls/admins").await?,
        204,
        &Value::Null,
    );
    assert_gone(admin, &format!("/acls/{}", id(&admins)?)).await?;
    // bob's admins group is untouched.
    assert_eq!(
        get_ok(admin, "/consumers/bob/acls/admins").await?,
        bob_admins
    );
    expect_body(
        &admin
            .delete(&format!("/consumers/alice/acls/{}", id(&ops)?))
            .await?,
        204,
        &Value::Null,
    );
    assert_gone(admin, &format!("/acls/{}", id(&ops)?)).await?;
    assert_eq!(
        ids(&get_ok(admin, "/consumers/alice/acls").await?),
        vec![id(&created.body)?]
    );
    Ok(())
}

#[tokio::test]
async fn certificate_snis() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let one = certs::self_signed(&["a.test"], Algorithm::Ecdsa, 10)?;
    let two = certs::self_signed(&["b.test"], Algorithm::Ecdsa, 10)?;
    let cert1 = create(
        admin,
        "/certificates",
        json!({"cert": one.cert, "key": one.key, "snis": ["a.test"]}),
    )
    .await?;
    let cert2 = create(
        admin,
        "/certificates",
        json!({"cert": two.cert, "key": two.key}),
    )
    .await?;
    let (c1, c2) = (id(&cert1)?, id(&cert2)?);

    let list = get_ok(admin, &format!("/certificates/{c1}/snis")).await?;
    let a = list["data"][0].clone();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(a["name"], json!("a.test"));
    assert_eq!(a["certificate"], json!({"id": c1}));
    // The parent may be named by one of its SNIs.
    assert_eq!(get_ok(admin, "/certificates/a.test/snis").await?, list);
    assert_eq!(
        get_ok(admin, &format!("/certificates/{c2}/snis")).await?,
        json!({"data": [], "next": null})
    );
    expect_body(
        &admin.get("/certificates/none.test/snis").await?,
        404,
        &not_found(),
    );

    // Nested POST sets the certificate whatever the body says.
    let b = create(
        admin,
        &format!("/certificates/{c2}/snis"),
        json!({"name": "b.test", "certificate": {"id": c1}}),
    )
    .await?;
    assert_eq!(b["certificate"], json!({"id": c2}));
    assert_eq!(
        get_ok(admin, &format!("/certificates/{c2}")).await?["snis"],
        json!(["b.test"])
    );
    assert_eq!(
        get_ok(admin, &format!("/certificates/{c2}/snis/b.test")).await?,
        b
    );
    assert_eq!(
        get_ok(admin, &format!("/certificates/{c2}/snis/{}", id(&b)?)).await?,
        b
    );
    expect_body(
        &admin
            .get(&format!("/certificates/{c1}/snis/b.test"))
            .await?,
        404,
        &not_found(),
    );

    // PUT creates under the certificate.
    let put_new = admin
        .put_json(&format!("/certificates/{c2}/snis/c.test"), &json!({}))
        .await?;
    expect(&put_new, 200);
    assert_eq!(put_new.body["name"], json!("c.test"));
    assert_eq!(put_new.body["certificate"], json!({"id": c2}));
    let patched = admin
        .patch_json("/certificates/b.test/snis/c.test", &json!({"tags": ["t"]}))
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["tags"], json!(["t"]));

    // DELETE only under the owner.
    expect_body(
        &admin
            .delete(&format!("/certificates/{c1}/snis/b.test"))
            .await?,
        404,
        &not_found(),
    );
    get_ok(admin, "/snis/b.test").await?;
    expect_body(
        &admin
            .delete(&format!("/certificates/{c2}/snis/b.test"))
            .await?,
        204,
        &Value::Null,
    );
    assert_gone(admin, "/snis/b.test").await?;
    assert_eq!(
        get_ok(admin, &format!("/certificates/{c2}")).await?["snis"],
        json!(["c.test"])
    );
    // The certificate itself stays.
    assert_eq!(
        get_ok(admin, &format!("/certificates/{c1}")).await?["snis"],
        json!(["a.test"])
    );
    Ok(())
}

#[tokio::test]
async fn upstream_targets() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let u = create(admin, "/upstreams", json!({"name": "u.test"})).await?;
    let other = create(admin, "/upstreams", json!({"name": "other.test"})).await?;
    let u_id = id(&u)?;

    // No port: 8000; the parent wins over the body.
    let t1 = create(
        admin,
        "/upstreams/u.test/targets",
        json!({"target": "10.0.0.1", "upstream": {"id": other["id"]}}),
    )
    .await?;
    assert_eq!(
        without(&t1, &["id", "created_at", "updated_at"]),
        json!({"upstream": {"id": u["id"]}, "target": "10.0.0.1:8000", "weight": 100,
               "tags": null})
    );
    let t2 = create(
        admin,
        &format!("/upstreams/{u_id}/targets"),
        json!({"target": "a.test:81", "weight": 5}),
    )
    .await?;
    assert_eq!(t2["target"], json!("a.test:81"));
    assert_eq!(t2["weight"], json!(5));
    let t3 = create(
        admin,
        "/upstreams/other.test/targets",
        json!({"target": "a.test"}),
    )
    .await?;
    assert_eq!(t3["target"], json!("a.test:8000"));

    assert_eq!(
        sorted_ids(&get_ok(admin, "/upstreams/u.test/targets").await?),
        sorted(vec![id(&t1)?, id(&t2)?])
    );
    assert_eq!(
        ids(&get_ok(admin, "/upstreams/other.test/targets").await?),
        vec![id(&t3)?]
    );
    expect_body(
        &admin.get("/upstreams/nope.test/targets").await?,
        404,
        &not_found(),
    );

    // By address (with its port) or id, under its upstream only.
    assert_eq!(
        get_ok(admin, "/upstreams/u.test/targets/10.0.0.1:8000").await?,
        t1
    );
    assert_eq!(
        get_ok(admin, &format!("/upstreams/{u_id}/targets/{}", id(&t2)?)).await?,
        t2
    );
    for path in [
        "/upstreams/other.test/targets/10.0.0.1:8000".to_owned(),
        format!("/upstreams/other.test/targets/{}", id(&t1)?),
        "/upstreams/u.test/targets/10.9.9.9:8000".to_owned(),
        "/upstreams/nope.test/targets/10.0.0.1:8000".to_owned(),
    ] {
        expect_body(&admin.get(&path).await?, 404, &not_found());
    }

    let patched = admin
        .patch_json(
            "/upstreams/u.test/targets/10.0.0.1:8000",
            &json!({"weight": 0}),
        )
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["weight"], json!(0));
    assert_eq!(patched.body["upstream"], json!({"id": u["id"]}));

    let put_new = admin
        .put_json("/upstreams/u.test/targets/b.test:82", &json!({"weight": 7}))
        .await?;
    expect(&put_new, 200);
    assert_eq!(
        without(&put_new.body, &["id", "created_at", "updated_at"]),
        json!({"upstream": {"id": u["id"]}, "target": "b.test:82", "weight": 7, "tags": null})
    );

    expect_body(
        &admin
            .delete("/upstreams/other.test/targets/10.0.0.1:8000")
            .await?,
        404,
        &not_found(),
    );
    get_ok(admin, &format!("/targets/{}", id(&t1)?)).await?;
    expect_body(
        &admin
            .delete("/upstreams/u.test/targets/10.0.0.1:8000")
            .await?,
        204,
        &Value::Null,
    );
    assert_gone(admin, &format!("/targets/{}", id(&t1)?)).await?;
    expect_body(
        &admin
            .delete(&format!("/upstreams/{u_id}/targets/{}", id(&t2)?))
            .await?,
        204,
        &Value::Null,
    );
    assert_gone(admin, &format!("/targets/{}", id(&t2)?)).await?;
    Ok(())
}

#[tokio::test]
async fn nested_lists_paginate_with_nested_next_links() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let s = create(admin, "/services", json!({"name": "s", "host": "a.test"})).await?;
    create(admin, "/services", json!({"name": "t", "host": "a.test"})).await?;
    let mut created = Vec::new();
    for i in 0..5 {
        let route = create(
            admin,
            "/services/s/routes",
            json!({"paths": [format!("/{i}")]}),
        )
        .await?;
        created.push(id(&route)?);
        // Routes of another service interleave and must not show up.
        create(
            admin,
            "/services/t/routes",
            json!({"paths": [format!("/{i}")]}),
        )
        .await?;
    }

    let first = get_ok(admin, "/services/s/routes?size=2").await?;
    assert_eq!(first["data"].as_array().map(Vec::len), Some(2));
    let offset = first["offset"].as_str().unwrap_or_default();
    assert_eq!(
        first["next"],
        json!(format!("/services/s/routes?offset={offset}&size=2"))
    );
    let all = list_all(admin, "/services/s/routes?size=2", "/services/s/routes").await?;
    let seen: Vec<String> = all.iter().filter_map(|r| id(r).ok()).collect();
    assert_eq!(sorted(seen), sorted(created.clone()));

    // By parent id, the links keep the id.
    let by_id = format!("/services/{}/routes", id(&s)?);
    let first = get_ok(admin, &format!("{by_id}?size=2")).await?;
    assert!(
        first["next"]
            .as_str()
            .is_some_and(|n| n.starts_with(&format!("{by_id}?offset="))),
        "{first}"
    );
    let all = list_all(admin, &format!("{by_id}?size=3"), &by_id).await?;
    assert_eq!(all.len(), 5);

    // ACLs and targets too.
    create(admin, "/consumers", json!({"username": "c"})).await?;
    for g in ["g1", "g2", "g3"] {
        create(admin, "/consumers/c/acls", json!({"group": g})).await?;
    }
    let acls = list_all(admin, "/consumers/c/acls?size=1", "/consumers/c/acls").await?;
    assert_eq!(acls.len(), 3);
    create(admin, "/upstreams", json!({"name": "u.test"})).await?;
    for port in [1, 2, 3] {
        create(
            admin,
            "/upstreams/u.test/targets",
            json!({"target": format!("h.test:{port}")}),
        )
        .await?;
    }
    let targets = list_all(
        admin,
        "/upstreams/u.test/targets?size=2",
        "/upstreams/u.test/targets",
    )
    .await?;
    assert_eq!(targets.len(), 3);
    Ok(())
}
