//! Read-only certificate facts the Admin API adds to certificates and CA certificates
//! (subject, issuer, SANs, validity, SHA-256 fingerprint, key type), and what is built on
//! them: the `expiring_within` filter, and (issue 13, "Expiry you can see") the control
//! plane's periodic warning about certificates and CA certificates expired or within
//! `--cert-expiry-warning` (once per certificate a day, not at every look) and the
//! `certificate_expiry` summary of `/clustering/status`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use gatehouse_tests::certs::{Algorithm, Ca, self_signed};
use gatehouse_tests::{Admin, ControlPlane, Response, patience, test_db, wait_until};

const DAY: i64 = 86_400;

fn unix_now() -> Result<i64> {
    Ok(i64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    )?)
}

/// Lowercase hex SHA-256 of the DER of the (first) certificate in `pem`.
fn fingerprint(pem: &str) -> Result<String> {
    let certs = gatehouse_shared::x509::parse_certificates(pem).map_err(anyhow::Error::msg)?;
    let der = certs.first().context("no certificate")?;
    Ok(Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[track_caller]
fn expect(response: &Response, status: u16) {
    assert_eq!(response.status, status, "{response:#?}");
}

/// `value[key]` as an integer.
fn int(value: &Value, key: &str) -> Result<i64> {
    value[key]
        .as_i64()
        .with_context(|| format!("{key} is not an integer in {value}"))
}

/// Checks that `at` lies within `[low - 2, high + 2]` (certificate times have whole seconds).
#[track_caller]
fn within(what: &str, at: i64, low: i64, high: i64) {
    assert!(
        (low - 2..=high + 2).contains(&at),
        "{what} = {at}, expected between {low} and {high}"
    );
}

/// The ids of the certificates listed at `path`.
async fn listed_ids(admin: &Admin, path: &str) -> Result<Vec<String>> {
    let listed = admin.get(path).await?;
    expect(&listed, 200);
    Ok(listed.body["data"]
        .as_array()
        .context("data")?
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test]
async fn certificate_facts_are_computed_and_read_only() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();

    let before = unix_now()?;
    let ca = Ca::new("Facts CA")?;
    let leaf = ca.leaf(
        &["facts.example.com", "www.facts.example.com", "192.0.2.10"],
        Algorithm::Ecdsa,
        45,
    )?;
    let after = unix_now()?;

    // Facts sent by the client are ignored: they are computed from the PEM.
    let created = admin
        .post_json(
            "/certificates",
            &json!({"cert": leaf.cert, "key": leaf.key,
                    "subject": "CN=forged", "issuer": "CN=forged", "sans": ["forged"],
                    "not_before": 0, "not_after": 1, "fingerprint_sha256": "00",
                    "key_type": "rsa"}),
        )
        .await?;
    expect(&created, 201);
    let body = &created.body;
    assert_eq!(body["subject"], json!("CN=facts.example.com"));
    assert_eq!(body["issuer"], json!("CN=Facts CA"));
    assert_eq!(
        body["sans"],
        json!(["facts.example.com", "www.facts.example.com", "192.0.2.10"])
    );
    // rcgen makes the leaf valid from now - 1 day to now + 45 days.
    within(
        "not_before",
        int(body, "not_before")?,
        before - DAY,
        after - DAY,
    );
    within(
        "not_after",
        int(body, "not_after")?,
        before + 45 * DAY,
        after + 45 * DAY,
    );
    assert_eq!(body["fingerprint_sha256"], json!(fingerprint(&leaf.cert)?));
    assert_eq!(body["key_type"], json!("ecdsa"));
    assert_eq!(body["snis"], json!([]));

    // What is stored is what was computed.
    let id = body["id"].as_str().context("id")?.to_owned();
    let stored = admin.get(&format!("/certificates/{id}")).await?;
    expect(&stored, 200);
    for key in [
        "subject",
        "issuer",
        "sans",
        "not_before",
        "not_after",
        "fingerprint_sha256",
        "key_type",
    ] {
        assert_eq!(stored.body[key], created.body[key], "{key}");
    }

    // A PATCH trying to change a fact changes nothing; a new cert recomputes them all.
    let patched = admin
        .patch_json(
            &format!("/certificates/{id}"),
            &json!({"subject": "CN=forged", "key_type": "rsa", "tags": ["t"]}),
        )
        .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["subject"], json!("CN=facts.example.com"));
    assert_eq!(patched.body["key_type"], json!("ecdsa"));
    assert_eq!(patched.body["tags"], json!(["t"]));

    let rsa = self_signed(&["rsa.example.com"], Algorithm::Rsa, 10)?;
    let replaced = admin
        .patch_json(
            &format!("/certificates/{id}"),
            &json!({"cert": rsa.cert, "key": rsa.key}),
        )
        .await?;
    expect(&replaced, 200);
    assert_eq!(replaced.body["subject"], json!("CN=rsa.example.com"));
    assert_eq!(replaced.body["issuer"], json!("CN=rsa.example.com"));
    assert_eq!(replaced.body["sans"], json!(["rsa.example.com"]));
    assert_eq!(replaced.body["key_type"], json!("rsa"));
    assert_eq!(
        replaced.body["fingerprint_sha256"],
        json!(fingerprint(&rsa.cert)?)
    );
    within(
        "not_after",
        int(&replaced.body, "not_after")?,
        before + 10 * DAY,
        unix_now()? + 10 * DAY,
    );

    // CA certificates show their facts and digest too.
    let ca_before = unix_now()?;
    let other_ca = Ca::valid("Other CA", -3, 200)?;
    let ca_after = unix_now()?;
    let stored_ca = admin
        .post_json(
            "/ca_certificates",
            &json!({"cert": other_ca.pem.cert, "subject": "CN=forged", "not_after": 1}),
        )
        .await?;
    expect(&stored_ca, 201);
    let body = &stored_ca.body;
    assert_eq!(body["subject"], json!("CN=Other CA"));
    assert_eq!(body["issuer"], json!("CN=Other CA"));
    assert_eq!(body["cert_digest"], json!(fingerprint(&other_ca.pem.cert)?));
    within(
        "CA not_before",
        int(body, "not_before")?,
        ca_before - 3 * DAY,
        ca_after - 3 * DAY,
    );
    within(
        "CA not_after",
        int(body, "not_after")?,
        ca_before + 200 * DAY,
        ca_after + 200 * DAY,
    );
    Ok(())
}

#[tokio::test]
async fn expiring_within_lists_certificates_ending_soon() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let ca = Ca::new("Expiry CA")?;

    let mut ids = Vec::new();
    for (name, days) in [("soon.example.com", 5), ("later.example.com", 100)] {
        let leaf = ca.leaf(&[name], Algorithm::Ecdsa, days)?;
        let created = admin
            .post_json(
                "/certificates",
                &json!({"cert": leaf.cert, "key": leaf.key, "snis": [name]}),
            )
            .await?;
        expect(&created, 201);
        ids.push(created.body["id"].as_str().context("id")?.to_owned());
    }
    let soon = &ids[0];

    // Ten days: only the certificate valid for five more days.
    assert_eq!(
        listed_ids(
            admin,
            &format!("/certificates?expiring_within={}", 10 * DAY)
        )
        .await?,
        vec![soon.clone()]
    );
    // A year: both; nothing: neither; no filter: both.
    let mut both = listed_ids(
        admin,
        &format!("/certificates?expiring_within={}", 365 * DAY),
    )
    .await?;
    both.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(both, expected);
    assert_eq!(
        listed_ids(admin, "/certificates?expiring_within=0").await?,
        Vec::<String>::new()
    );
    assert_eq!(listed_ids(admin, "/certificates").await?.len(), 2);
    // Four days: not yet.
    assert_eq!(
        listed_ids(admin, &format!("/certificates?expiring_within={}", 4 * DAY)).await?,
        Vec::<String>::new()
    );
    // Combined with paging.
    let page = admin
        .get(&format!(
            "/certificates?expiring_within={}&size=1",
            365 * DAY
        ))
        .await?;
    expect(&page, 200);
    assert_eq!(page.body["data"].as_array().map(Vec::len), Some(1));
    let next = page.body["next"].as_str().context("next")?;
    assert!(next.contains("expiring_within=31536000"), "{next}");
    let rest = admin.get(next).await?;
    expect(&rest, 200);
    assert_eq!(rest.body["data"].as_array().map(Vec::len), Some(1));
    assert_ne!(rest.body["data"][0]["id"], page.body["data"][0]["id"]);

    for bad in ["abc", "-1", "1.5", ""] {
        let refused = admin
            .get(&format!("/certificates?expiring_within={bad}"))
            .await?;
        expect(&refused, 400);
        assert!(refused.body["message"].is_string(), "{refused:?}");
    }
    Ok(())
}

/// Creates `body` at `path`; returns the new id.
async fn create(admin: &Admin, path: &str, body: Value) -> Result<String> {
    let created = admin.post_json(path, &body).await?;
    ensure!(created.status == 201, "POST {path}: {created:?}");
    Ok(created.body["id"].as_str().context("id")?.to_owned())
}

/// The lines of `logs` warning about certificate `id`.
fn warnings_about(logs: &str, id: &str) -> usize {
    logs.lines()
        .filter(|l| l.contains("WARN") && l.contains(id) && l.contains("certificate exp"))
        .count()
}

#[tokio::test]
async fn expired_and_expiring_certificates_are_logged_listed_and_counted() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start_with(
        &db,
        &[
            "--cert-expiry-warning",
            "10d",
            "--cert-expiry-check-interval",
            "1",
        ],
        &[],
    )
    .await?;
    let admin = cp.admin();
    let ca = Ca::new("Expiry test CA")?;
    let soon = ca.leaf(&["soon.test"], Algorithm::Ecdsa, 5)?;
    let expired = ca.leaf_valid(&["expired.test"], Algorithm::Ecdsa, -20, -2)?;
    let later = ca.leaf(&["later.test"], Algorithm::Ecdsa, 60)?;
    let soon_id = create(
        admin,
        "/certificates",
        json!({"cert": soon.cert, "key": soon.key}),
    )
    .await?;
    let expired_id = create(
        admin,
        "/certificates",
        json!({"cert": expired.cert, "key": expired.key}),
    )
    .await?;
    let later_id = create(
        admin,
        "/certificates",
        json!({"cert": later.cert, "key": later.key}),
    )
    .await?;
    wait_until("the certificate warnings", patience(), || async {
        let logs = cp.logs();
        Ok(
            (warnings_about(&logs, &soon_id) > 0 && warnings_about(&logs, &expired_id) > 0)
                .then_some(()),
        )
    })
    .await?;

    // A CA certificate expiring soon, created after: once it is warned about, the looks
    // after the first warnings have run, and did not repeat them.
    let soon_ca = Ca::valid("Expiry soon CA", -1, 3)?;
    let soon_ca_id = create(admin, "/ca_certificates", json!({"cert": soon_ca.pem.cert})).await?;
    let long_ca_id = create(admin, "/ca_certificates", json!({"cert": ca.pem.cert})).await?;
    wait_until("the CA certificate warning", patience(), || async {
        Ok((warnings_about(&cp.logs(), &soon_ca_id) > 0).then_some(()))
    })
    .await?;
    // One more look after that one.
    let seen = cp.logs().len();
    let other_ca = Ca::valid("Expiry other CA", -1, 2)?;
    let other_ca_id = create(
        admin,
        "/ca_certificates",
        json!({"cert": other_ca.pem.cert}),
    )
    .await?;
    wait_until("the second CA certificate warning", patience(), || async {
        Ok((warnings_about(&cp.logs()[seen..], &other_ca_id) > 0).then_some(()))
    })
    .await?;
    let logs = cp.logs();
    for id in [&soon_id, &expired_id, &soon_ca_id] {
        ensure!(
            warnings_about(&logs, id) == 1,
            "{id} warned about once:\n{logs}"
        );
    }
    ensure!(
        warnings_about(&logs, &later_id) == 0 && warnings_about(&logs, &long_ca_id) == 0,
        "certificates far from expiry are not warned about"
    );
    ensure!(
        logs.lines()
            .any(|l| l.contains(&expired_id) && l.contains("certificate expired")),
        "the expired one says so"
    );

    // The filter, on both collections.
    let within = 10 * 86_400;
    let mut listed = listed_ids(admin, &format!("/certificates?expiring_within={within}")).await?;
    listed.sort();
    let mut want = vec![soon_id.clone(), expired_id.clone()];
    want.sort();
    ensure!(listed == want, "{listed:?}");
    let mut listed =
        listed_ids(admin, &format!("/ca_certificates?expiring_within={within}")).await?;
    listed.sort();
    let mut want = vec![soon_ca_id.clone(), other_ca_id.clone()];
    want.sort();
    ensure!(listed == want, "{listed:?}");
    let bad = admin.get("/ca_certificates?expiring_within=-1").await?;
    ensure!(bad.status == 400, "{bad:?}");

    // The summary.
    let status = admin.get("/clustering/status").await?;
    ensure!(status.status == 200, "{status:?}");
    let expiry = &status.body["certificate_expiry"];
    ensure!(expiry["warning_window"] == json!(within), "{expiry}");
    let certs = &expiry["certificates"];
    ensure!(
        certs["total"] == json!(3) && certs["expired"] == json!(1) && certs["expiring"] == json!(1),
        "{certs}"
    );
    ensure!(certs["soonest_id"] == json!(expired_id), "{certs}");
    let cas = &expiry["ca_certificates"];
    ensure!(
        cas["total"] == json!(3) && cas["expired"] == json!(0) && cas["expiring"] == json!(2),
        "{cas}"
    );
    ensure!(cas["soonest_id"] == json!(other_ca_id), "{cas}");
    Ok(())
}
