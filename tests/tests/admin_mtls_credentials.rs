//! mtls-auth credentials (Kong's `mtls_auth_credentials`) end to end: the Admin API at
//! `/consumers/{c}/mtls-auth[/{id}]` and `/mtls-auths[/{id}]`, their validation, uniqueness
//! and cascades, and their way through a snapshot into a data plane's runtime.

mod admin_support;
mod cluster_support;

use anyhow::Result;
use serde_json::{Value, json};

use admin_support::*;
use cluster_support::Cluster;
use gatehouse_tests::certs::Ca;
use gatehouse_tests::{Admin, patience, wait_for_cp_snapshot};

/// Uploads a fresh CA certificate; returns its id.
async fn ca_certificate(admin: &Admin, name: &str) -> Result<String> {
    let ca = Ca::new(name)?;
    id(&create(admin, "/ca_certificates", json!({"cert": ca.pem.cert})).await?)
}

#[tokio::test]
async fn nested_and_flat_endpoints() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let alice = create(admin, "/consumers", json!({"username": "alice"})).await?;
    let bob = create(admin, "/consumers", json!({"username": "bob"})).await?;
    let alice_id = id(&alice)?;
    let ca = ca_certificate(admin, "mtls credentials CA").await?;

    // POST under the consumer (by username or id); the URL's consumer wins over the body's.
    let before = version(admin).await?;
    let plain = create(
        admin,
        "/consumers/alice/mtls-auth",
        json!({"subject_name": "alice.example.com"}),
    )
    .await?;
    check_auto_fields(&plain)?;
    assert_eq!(
        without(&plain, &["id", "created_at", "updated_at"]),
        json!({"consumer": {"id": alice["id"]}, "subject_name": "alice.example.com",
               "ca_certificate": null, "tags": null})
    );
    assert_eq!(version(admin).await?, before + 1);
    let bound = create(
        admin,
        &format!("/consumers/{alice_id}/mtls-auth"),
        json!({"subject_name": "alice.example.com", "ca_certificate": {"id": ca},
               "consumer": {"id": bob["id"]}, "tags": ["t1"]}),
    )
    .await?;
    assert_eq!(bound["consumer"], json!({"id": alice["id"]}));
    assert_eq!(bound["ca_certificate"], json!({"id": ca}));
    // Form-encoded, as Kong users type it.
    let form = admin
        .post_form(
            "/consumers/bob/mtls-auth",
            &[("subject_name", "CN=bob"), ("ca_certificate.id", &ca)],
        )
        .await?;
    expect(&form, 201);
    assert_eq!(form.body["consumer"], json!({"id": bob["id"]}));
    assert_eq!(form.body["ca_certificate"], json!({"id": ca}));
    let bob_credential = form.body;

    // Lists: per consumer, and all of them at /mtls-auths (paginated).
    let list = get_ok(admin, "/consumers/alice/mtls-auth").await?;
    assert_eq!(list["next"], Value::Null);
    assert_eq!(sorted_ids(&list), sorted(vec![id(&plain)?, id(&bound)?]));
    assert_eq!(
        ids(&get_ok(admin, "/consumers/bob/mtls-auth").await?),
        vec![id(&bob_credential)?]
    );
    let all = list_all(admin, "/mtls-auths?size=2", "/mtls-auths").await?;
    let all: Vec<String> = all.iter().filter_map(|c| id(c).ok()).collect();
    assert_eq!(
        sorted(all),
        sorted(vec![id(&plain)?, id(&bound)?, id(&bob_credential)?])
    );
    let first = get_ok(admin, "/mtls-auths?size=2").await?;
    let offset = first["offset"].as_str().unwrap_or_default();
    assert_eq!(
        first["next"],
        json!(format!("/mtls-auths?offset={offset}&size=2"))
    );
    let tagged = get_ok(admin, "/mtls-auths?tags=t1").await?;
    assert_eq!(ids(&tagged), vec![id(&bound)?]);
    for path in ["/consumers/nobody/mtls-auth", "/mtls_auth_credentials"] {
        expect_body(&admin.get(path).await?, 404, &not_found());
    }
    check_head_and_options(
        admin,
        "/consumers/alice/mtls-auth",
        &["GET", "HEAD", "POST", "OPTIONS"],
    )
    .await?;
    check_head_and_options(admin, "/mtls-auths", &["GET", "HEAD", "POST", "OPTIONS"]).await?;

    // One credential: by id, under its consumer only; there is no other key.
    let at = |consumer: &str, credential: &Value| {
        format!(
            "/consumers/{consumer}/mtls-auth/{}",
            credential["id"].as_str().unwrap_or_default()
        )
    };
    assert_eq!(get_ok(admin, &at("alice", &plain)).await?, plain);
    assert_eq!(get_ok(admin, &at(&alice_id, &plain)).await?, plain);
    assert_eq!(
        get_ok(admin, &format!("/mtls-auths/{}", id(&bound)?)).await?,
        bound
    );
    for path in [
        at("bob", &plain),
        at("nobody", &plain),
        "/consumers/alice/mtls-auth/alice.example.com".to_owned(),
        "/mtls-auths/alice.example.com".to_owned(),
        format!("/mtls-auths/{}", uuid::Uuid::new_v4()),
    ] {
        expect_body(&admin.get(&path).await?, 404, &not_found());
    }
    check_head_and_options(
        admin,
        &at("alice", &plain),
        &["GET", "HEAD", "PATCH", "PUT", "DELETE", "OPTIONS"],
    )
    .await?;

    // PATCH merges; under another consumer it is 404 and changes nothing.
    let patched = admin
        .patch_json(
            &at("alice", &plain),
            &json!({"subject_name": "alice2.example.com"}),
        )
        .await?;
    expect(&patched, 200);
    assert_eq!(
        without(&patched.body, &["updated_at"]),
        json!({"id": plain["id"], "created_at": plain["created_at"],
               "consumer": {"id": alice["id"]}, "subject_name": "alice2.example.com",
               "ca_certificate": null, "tags": null})
    );
    let before = version(admin).await?;
    expect_body(
        &admin
            .patch_json(&at("bob", &plain), &json!({"tags": ["x"]}))
            .await?,
        404,
        &not_found(),
    );
    assert_eq!(version(admin).await?, before);

    // PUT with a new id creates it (200, as Kong); again, it replaces it whole.
    let new_id = uuid::Uuid::new_v4().to_string();
    let created = admin
        .put_json(
            &format!("/consumers/bob/mtls-auth/{new_id}"),
            &json!({"subject_name": "bob.example.com", "tags": ["a"]}),
        )
        .await?;
    expect(&created, 200);
    assert_eq!(
        without(&created.body, &["created_at", "updated_at"]),
        json!({"id": new_id, "consumer": {"id": bob["id"]},
               "subject_name": "bob.example.com", "ca_certificate": null, "tags": ["a"]})
    );
    let replaced = admin
        .put_json(
            &format!("/consumers/bob/mtls-auth/{new_id}"),
            &json!({"subject_name": "bob.example.com", "ca_certificate": {"id": ca}}),
        )
        .await?;
    expect(&replaced, 200);
    assert_eq!(replaced.body["created_at"], created.body["created_at"]);
    assert_eq!(replaced.body["tags"], Value::Null, "omitted fields reset");
    assert_eq!(replaced.body["ca_certificate"], json!({"id": ca}));
    // The flat endpoint needs the consumer in the body.
    let res = admin
        .put_json(
            &format!("/mtls-auths/{}", uuid::Uuid::new_v4()),
            &json!({"subject_name": "x"}),
        )
        .await?;
    expect(&res, 400);
    assert_eq!(
        res.body["fields"],
        json!({"consumer": "required field missing"})
    );
    // A non-UUID names nothing: PUT cannot create by key.
    expect_body(
        &admin
            .put_json(
                "/consumers/bob/mtls-auth/some-name",
                &json!({"subject_name": "y"}),
            )
            .await?,
        404,
        &not_found(),
    );

    // DELETE: under its consumer only; then it is gone, and deleting again is 204 at the top
    // level but 404 under the consumer (as Kong's nested endpoints).
    let before = version(admin).await?;
    expect_body(&admin.delete(&at("bob", &plain)).await?, 404, &not_found());
    assert_eq!(version(admin).await?, before);
    expect_body(
        &admin.delete(&at("alice", &plain)).await?,
        204,
        &Value::Null,
    );
    assert_eq!(version(admin).await?, before + 1);
    assert_gone(admin, &format!("/mtls-auths/{}", id(&plain)?)).await?;
    expect_body(
        &admin.delete(&at("alice", &plain)).await?,
        404,
        &not_found(),
    );
    let flat = format!("/mtls-auths/{}", id(&bound)?);
    expect_body(&admin.delete(&flat).await?, 204, &Value::Null);
    assert_gone(admin, &flat).await?;
    expect_body(&admin.delete(&flat).await?, 204, &Value::Null);
    assert_eq!(
        sorted_ids(&get_ok(admin, "/mtls-auths").await?),
        sorted(vec![id(&bob_credential)?, new_id])
    );

    // Tags are listed under the entity's name.
    let rows = get_ok(admin, "/tags/a").await?;
    assert_eq!(rows["data"], json!([]), "the PUT reset the tag");
    expect(
        &admin
            .patch_json(&at("bob", &bob_credential), &json!({"tags": ["b"]}))
            .await?,
        200,
    );
    assert_eq!(
        get_ok(admin, "/tags/b").await?["data"],
        json!([{"entity_name": "mtls_auth_credentials", "entity_id": bob_credential["id"],
                "tag": "b"}])
    );
    Ok(())
}

#[tokio::test]
async fn validation_uniqueness_and_failed_writes() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let alice = create(admin, "/consumers", json!({"username": "alice"})).await?;
    let bob = create(admin, "/consumers", json!({"username": "bob"})).await?;
    let ca1 = ca_certificate(admin, "CA one").await?;
    let ca2 = ca_certificate(admin, "CA two").await?;
    let before = version(admin).await?;

    // Every refused write below leaves the version (and the table) alone.
    expect_body(
        &admin
            .post_json("/consumers/alice/mtls-auth", &json!({}))
            .await?,
        400,
        &json!({"code": 2, "name": "schema violation",
                "message": "schema violation (subject_name: required field missing)",
                "fields": {"subject_name": "required field missing"}}),
    );
    expect_body(
        &admin
            .post_json(
                "/consumers/alice/mtls-auth",
                &json!({"subject_name": 123, "bogus": 1}),
            )
            .await?,
        400,
        &json!({"code": 2, "name": "schema violation",
                "message": "2 schema violations (bogus: unknown field; subject_name: expected a string)",
                "fields": {"bogus": "unknown field", "subject_name": "expected a string"}}),
    );
    let missing = uuid::Uuid::new_v4();
    expect_body(
        &admin
            .post_json(
                "/consumers/alice/mtls-auth",
                &json!({"subject_name": "a", "ca_certificate": {"id": missing}}),
            )
            .await?,
        400,
        &json!({"code": 4, "name": "foreign key violation",
                "message": format!("the foreign key '{{id=\"{missing}\"}}' does not reference an existing 'ca_certificates' entity."),
                "fields": {"ca_certificate": {"id": missing}}}),
    );
    expect_body(
        &admin
            .post_json(
                "/mtls-auths",
                &json!({"subject_name": "a", "consumer": {"username": "nobody"}}),
            )
            .await?,
        400,
        &json!({"code": 4, "name": "foreign key violation",
                "message": "the foreign key '{username=\"nobody\"}' does not reference an existing 'consumers' entity.",
                "fields": {"consumer": {"username": "nobody"}}}),
    );
    expect_body(
        &admin
            .post_json("/consumers/nobody/mtls-auth", &json!({"subject_name": "a"}))
            .await?,
        404,
        &not_found(),
    );
    assert_eq!(version(admin).await?, before);
    assert_eq!(
        get_ok(admin, "/mtls-auths").await?,
        json!({"data": [], "next": null})
    );

    // (subject_name, ca_certificate) is unique across consumers; a null CA is one value.
    let first = create(
        admin,
        "/consumers/alice/mtls-auth",
        json!({"subject_name": "client", "ca_certificate": {"id": ca1}}),
    )
    .await?;
    let any_ca = create(
        admin,
        "/consumers/alice/mtls-auth",
        json!({"subject_name": "client"}),
    )
    .await?;
    // The same subject for another CA, even of another consumer, is fine.
    create(
        admin,
        "/consumers/bob/mtls-auth",
        json!({"subject_name": "client", "ca_certificate": {"id": ca2}}),
    )
    .await?;
    // The flat endpoint creates with a consumer named by username.
    let flat = create(
        admin,
        "/mtls-auths",
        json!({"subject_name": "flat", "consumer": {"username": "bob"}}),
    )
    .await?;
    assert_eq!(flat["consumer"], json!({"id": bob["id"]}));
    assert_eq!(first["consumer"], json!({"id": alice["id"]}));
    let before = version(admin).await?;
    for consumer in ["alice", "bob"] {
        let res = admin
            .post_json(
                &format!("/consumers/{consumer}/mtls-auth"),
                &json!({"subject_name": "client", "ca_certificate": {"id": ca1}}),
            )
            .await?;
        expect_body(
            &res,
            409,
            &unique_violation(
                json!({"ca_certificate": {"id": ca1}, "subject_name": "client"}),
                &format!("{{ca_certificate={{id=\"{ca1}\"}},subject_name=\"client\"}}"),
            ),
        );
        let res = admin
            .post_json(
                &format!("/consumers/{consumer}/mtls-auth"),
                &json!({"subject_name": "client"}),
            )
            .await?;
        expect_body(
            &res,
            409,
            &unique_violation(
                json!({"ca_certificate": null, "subject_name": "client"}),
                "{ca_certificate=null,subject_name=\"client\"}",
            ),
        );
    }
    // An update into a taken pair is refused too, and leaves the row as it was.
    let res = admin
        .patch_json(
            &format!("/mtls-auths/{}", id(&first)?),
            &json!({"ca_certificate": null}),
        )
        .await?;
    expect(&res, 409);
    assert_eq!(
        get_ok(admin, &format!("/mtls-auths/{}", id(&first)?)).await?,
        first
    );
    // A duplicate id is a primary-key violation.
    let res = admin
        .post_json(
            "/consumers/bob/mtls-auth",
            &json!({"id": any_ca["id"], "subject_name": "other"}),
        )
        .await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(3), "{res:#?}");
    assert_eq!(version(admin).await?, before);
    assert_eq!(
        get_ok(admin, "/mtls-auths").await?["data"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    Ok(())
}

#[tokio::test]
async fn credentials_go_with_their_consumer_and_their_ca_certificate() -> Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    create(admin, "/consumers", json!({"username": "alice"})).await?;
    create(admin, "/consumers", json!({"username": "bob"})).await?;
    let ca1 = ca_certificate(admin, "CA one").await?;
    let ca2 = ca_certificate(admin, "CA two").await?;
    let a1 = create(
        admin,
        "/consumers/alice/mtls-auth",
        json!({"subject_name": "a1", "ca_certificate": {"id": ca1}}),
    )
    .await?;
    let a2 = create(
        admin,
        "/consumers/alice/mtls-auth",
        json!({"subject_name": "a2"}),
    )
    .await?;
    let b1 = create(
        admin,
        "/consumers/bob/mtls-auth",
        json!({"subject_name": "b1", "ca_certificate": {"id": ca1}}),
    )
    .await?;
    let b2 = create(
        admin,
        "/consumers/bob/mtls-auth",
        json!({"subject_name": "b2", "ca_certificate": {"id": ca2}}),
    )
    .await?;

    // Deleting a consumer deletes its credentials, in one write.
    let before = version(admin).await?;
    expect(&admin.delete("/consumers/alice").await?, 204);
    assert_eq!(version(admin).await?, before + 1);
    for gone in [&a1, &a2] {
        assert_gone(admin, &format!("/mtls-auths/{}", id(gone)?)).await?;
    }
    assert_eq!(
        sorted_ids(&get_ok(admin, "/mtls-auths").await?),
        sorted(vec![id(&b1)?, id(&b2)?])
    );

    // Deleting a CA certificate deletes the credentials bound to it (as Kong: cascade), in
    // one write; a CA certificate an mtls-auth plugin uses is still refused, credentials kept.
    let before = version(admin).await?;
    expect(
        &admin.delete(&format!("/ca_certificates/{ca1}")).await?,
        204,
    );
    assert_eq!(version(admin).await?, before + 1);
    assert_gone(admin, &format!("/mtls-auths/{}", id(&b1)?)).await?;
    assert_eq!(ids(&get_ok(admin, "/mtls-auths").await?), vec![id(&b2)?]);
    let plugin = create(
        admin,
        "/plugins",
        json!({"name": "mtls-auth", "config": {"ca_certificates": [ca2]}}),
    )
    .await?;
    let before = version(admin).await?;
    let res = admin.delete(&format!("/ca_certificates/{ca2}")).await?;
    expect(&res, 400);
    assert_eq!(res.body["code"], json!(19), "{res:#?}");
    assert_eq!(version(admin).await?, before);
    get_ok(admin, &format!("/mtls-auths/{}", id(&b2)?)).await?;
    expect(
        &admin.delete(&format!("/plugins/{}", id(&plugin)?)).await?,
        204,
    );
    expect(
        &admin.delete(&format!("/ca_certificates/{ca2}")).await?,
        204,
    );
    assert_eq!(
        get_ok(admin, "/mtls-auths").await?,
        json!({"data": [], "next": null})
    );
    // Bob stays.
    get_ok(admin, "/consumers/bob").await?;
    Ok(())
}

#[tokio::test]
async fn credentials_reach_the_data_plane_runtime() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = cluster.dp("dp1").await?;
    dp.wait_until_connected(patience()).await?;

    create(admin, "/consumers", json!({"username": "alice"})).await?;
    let ca = ca_certificate(admin, "sync CA").await?;
    create(
        admin,
        "/consumers/alice/mtls-auth",
        json!({"subject_name": "alice.example.com", "ca_certificate": {"id": ca}}),
    )
    .await?;
    create(
        admin,
        "/consumers/alice/mtls-auth",
        json!({"subject_name": "alice.example.com"}),
    )
    .await?;
    let version = version(admin).await?;
    let status = dp.wait_for_version(version, patience()).await?;
    let cp = wait_for_cp_snapshot(admin, version, patience()).await?;
    assert_eq!(status["config_hash"], cp["config_hash"], "{status}");
    assert_eq!(
        status["entities"]["mtls_auth_credentials"],
        json!(2),
        "{status}"
    );
    assert_eq!(status["entities"]["consumers"], json!(1), "{status}");

    // Deleting the consumer takes its credentials out of the data plane too.
    expect(&admin.delete("/consumers/alice").await?, 204);
    let status = dp.wait_for_version(version + 1, patience()).await?;
    assert_eq!(
        status["entities"]["mtls_auth_credentials"],
        json!(0),
        "{status}"
    );
    Ok(())
}
