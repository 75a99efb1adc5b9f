//! Validation errors of the Admin API, in Kong's shape (reference §2.3): certificates and CA
//! certificates, foreign keys, routes, SNIs, plugins and services. Every refused write must
//! leave the configuration untouched (the config version does not move), and no private key
//! may reach the logs.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use gatehouse_tests::certs::{Algorithm, Ca, Pem, self_signed};
use gatehouse_tests::{Admin, ControlPlane, Response, test_db};

const NOT_A_CA: &str =
    "certificate does not appear to be a CA because it is missing the \"CA\" basic constraint";
const CA_EXPIRED: &str = "certificate expired, \"Not After\" time is in the past";
const ONLY_ONE: &str = "please submit only one certificate at a time";
const SNIS_NEED_TLS: &str =
    "'snis' can only be set when 'protocols' is 'grpcs', 'https', 'tls' or 'tls_passthrough'";
const NOT_ENABLED: &str = "not enabled; add it to the 'plugins' configuration property";

use gatehouse_tests::config_version as version;

/// Sends a JSON write that must be refused with `status`, and checks that it changed nothing.
async fn refused(
    admin: &Admin,
    method: Method,
    path: &str,
    body: &Value,
    status: u16,
) -> Result<Value> {
    let before = version(admin).await?;
    let response = admin
        .send(admin.request(method.clone(), path).json(body))
        .await?;
    assert_eq!(
        response.status, status,
        "{method} {path} {body}: {response:#?}"
    );
    assert_eq!(
        version(admin).await?,
        before,
        "refused {method} {path} moved the config version"
    );
    Ok(response.body)
}

/// `POST path` that must fail with a schema violation; returns the whole error body.
async fn violation(admin: &Admin, path: &str, body: &Value) -> Result<Value> {
    let error = refused(admin, Method::POST, path, body, 400).await?;
    assert_eq!(error["code"], json!(2), "{error}");
    assert_eq!(error["name"], json!("schema violation"), "{error}");
    Ok(error)
}

/// Kong's schema-violation body.
fn schema_violation(message: &str, fields: Value) -> Value {
    json!({"code": 2, "name": "schema violation", "message": message, "fields": fields})
}

/// Kong's foreign-key-violation body for a reference by id.
fn foreign_key(collection: &str, id: &str, fields: Value) -> Value {
    json!({
        "code": 4,
        "name": "foreign key violation",
        "message": format!(
            "the foreign key '{{id=\"{id}\"}}' does not reference an existing '{collection}' entity."
        ),
        "fields": fields,
    })
}

#[track_caller]
fn expect(response: &Response, status: u16) {
    assert_eq!(response.status, status, "{response:#?}");
}

fn id_of(response: &Response) -> Result<String> {
    response.body["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no id in {:?}", response.body))
}

/// Lowercase hex SHA-256 of the (only) certificate in `pem`.
fn digest(pem: &str) -> Result<String> {
    let certs = gatehouse_shared::x509::parse_certificates(pem).map_err(anyhow::Error::msg)?;
    let der = certs.first().context("no certificate")?;
    Ok(Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The base64 lines of a PEM block.
fn body_lines(pem: &str) -> Vec<&str> {
    pem.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect()
}

/// `pem` with the start of its base64 body overwritten, so it no longer decodes to a key.
fn mangled(pem: &Pem) -> String {
    let lines: Vec<String> = pem
        .key
        .lines()
        .enumerate()
        .map(|(i, line)| {
            if i == 1 {
                format!("AAAAAAAAAAAA{}", line.get(12..).unwrap_or_default())
            } else {
                line.to_owned()
            }
        })
        .collect();
    lines.join("\n") + "\n"
}

// --- certificates ---

#[tokio::test]
async fn unparsable_cert_and_key_are_reported_on_their_fields() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let ca = Ca::new("Validation CA")?;
    let good = ca.leaf(&["a.example.com"], Algorithm::Ecdsa, 30)?;

    // The certificate does not parse; the key is fine.
    let error = violation(
        admin,
        "/certificates",
        &json!({"cert": "junk", "key": good.key}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            "schema violation (cert: invalid certificate: no certificate found)",
            json!({"cert": "invalid certificate: no certificate found"}),
        )
    );
    let broken_certs = [
        "-----BEGIN CERTIFICATE-----\nnot*base64!\n-----END CERTIFICATE-----\n".to_owned(),
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n".to_owned(),
        good.cert.replace("-----END CERTIFICATE-----", ""),
        good.key.clone(),
    ];
    for cert in &broken_certs {
        let error = violation(
            admin,
            "/certificates",
            &json!({"cert": cert, "key": good.key}),
        )
        .await?;
        let fields = error["fields"].as_object().context("fields")?;
        assert_eq!(fields.len(), 1, "{error}");
        let message = fields["cert"].as_str().context("cert error")?;
        assert!(message.starts_with("invalid certificate: "), "{error}");
    }

    // The key does not parse; the certificate is fine.
    let error = violation(
        admin,
        "/certificates",
        &json!({"cert": good.cert, "key": "junk"}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            "schema violation (key: invalid key: no private key found)",
            json!({"key": "invalid key: no private key found"}),
        )
    );
    let error = violation(
        admin,
        "/certificates",
        &json!({"cert": good.cert, "key": mangled(&good)}),
    )
    .await?;
    assert_eq!(
        error["fields"],
        json!({"key": "invalid key: unable to parse key"})
    );
    let error = violation(
        admin,
        "/certificates",
        &json!({"cert": good.cert, "key": good.cert}),
    )
    .await?;
    assert_eq!(
        error["fields"],
        json!({"key": "invalid key: no private key found"})
    );

    // Both broken: both reported at once.
    let error = violation(
        admin,
        "/certificates",
        &json!({"cert": "junk", "key": "junk"}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            "2 schema violations (cert: invalid certificate: no certificate found; \
             key: invalid key: no private key found)",
            json!({
                "cert": "invalid certificate: no certificate found",
                "key": "invalid key: no private key found",
            }),
        )
    );

    // Missing altogether.
    let error = violation(admin, "/certificates", &json!({})).await?;
    assert_eq!(
        error["fields"],
        json!({"cert": "required field missing", "key": "required field missing"})
    );
    assert_eq!(admin.get("/certificates").await?.body["data"], json!([]));
    Ok(())
}

#[tokio::test]
async fn key_must_match_its_certificate() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let ca = Ca::new("Validation CA")?;
    let one = ca.leaf(&["one.example.com"], Algorithm::Ecdsa, 30)?;
    let two = ca.leaf(&["two.example.com"], Algorithm::Ecdsa, 30)?;
    let rsa = ca.leaf(&["rsa.example.com"], Algorithm::Rsa, 30)?;

    // Kong: a custom entity check on (cert, key), so the error is under `@entity`.
    let mismatch = schema_violation(
        "schema violation (certificate does not match key)",
        json!({"@entity": ["certificate does not match key"]}),
    );
    for key in [&two.key, &rsa.key] {
        let error = violation(
            admin,
            "/certificates",
            &json!({"cert": one.cert, "key": key, "snis": ["one.example.com"]}),
        )
        .await?;
        assert_eq!(error, mismatch);
    }

    // Replacing the key of a stored certificate with someone else's is refused too.
    let created = admin
        .post_json("/certificates", &json!({"cert": one.cert, "key": one.key}))
        .await?;
    expect(&created, 201);
    let id = id_of(&created)?;
    let error = refused(
        admin,
        Method::PATCH,
        &format!("/certificates/{id}"),
        &json!({"key": two.key}),
        400,
    )
    .await?;
    assert_eq!(error, mismatch);
    let stored = admin.get(&format!("/certificates/{id}")).await?;
    assert_eq!(stored.body["key"], json!(one.key));
    assert_eq!(admin.get("/snis").await?.body["data"], json!([]));
    Ok(())
}

#[tokio::test]
async fn alternative_certificate_rules() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let ca = Ca::new("Dual CA")?;
    let rsa = ca.leaf(&["dual.example.com"], Algorithm::Rsa, 30)?;
    let ecdsa = ca.leaf(&["dual.example.com"], Algorithm::Ecdsa, 30)?;
    let ecdsa2 = ca.leaf(&["dual.example.com"], Algorithm::Ecdsa, 30)?;

    // cert_alt and key_alt go together (Kong: mutually_required entity check).
    let together = schema_violation(
        "schema violation (all or none of these fields must be set: 'cert_alt', 'key_alt')",
        json!({"@entity": ["all or none of these fields must be set: 'cert_alt', 'key_alt'"]}),
    );
    let error = violation(
        admin,
        "/certificates",
        &json!({"cert": rsa.cert, "key": rsa.key, "cert_alt": ecdsa.cert}),
    )
    .await?;
    assert_eq!(error, together);
    let error = violation(
        admin,
        "/certificates",
        &json!({"cert": rsa.cert, "key": rsa.key, "key_alt": ecdsa.key}),
    )
    .await?;
    assert_eq!(error, together);

    // The same key type twice.
    let same = "certificate and alternative certificate need to have different type (e.g. RSA \
                and ECDSA), the provided certificates were both of the same type";
    let error = violation(
        admin,
        "/certificates",
        &json!({"cert": ecdsa.cert, "key": ecdsa.key,
                "cert_alt": ecdsa2.cert, "key_alt": ecdsa2.key}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            &format!("schema violation ({same})"),
            json!({"@entity": [same]})
        )
    );

    // The alternative key must match the alternative certificate.
    let error = violation(
        admin,
        "/certificates",
        &json!({"cert": rsa.cert, "key": rsa.key,
                "cert_alt": ecdsa.cert, "key_alt": ecdsa2.key}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            "schema violation (alternative certificate does not match key)",
            json!({"@entity": ["alternative certificate does not match key"]}),
        )
    );

    // An unparsable alternative is reported on its own field.
    let error = violation(
        admin,
        "/certificates",
        &json!({"cert": rsa.cert, "key": rsa.key,
                "cert_alt": "junk", "key_alt": ecdsa.key}),
    )
    .await?;
    assert_eq!(
        error["fields"],
        json!({"cert_alt": "invalid certificate: no certificate found"})
    );
    assert_eq!(admin.get("/certificates").await?.body["data"], json!([]));

    // RSA + ECDSA is the point of cert_alt: accepted, facts from the main certificate.
    let created = admin
        .post_json(
            "/certificates",
            &json!({"cert": rsa.cert, "key": rsa.key,
                    "cert_alt": ecdsa.cert, "key_alt": ecdsa.key,
                    "snis": ["dual.example.com"]}),
        )
        .await?;
    expect(&created, 201);
    assert_eq!(created.body["cert_alt"], json!(ecdsa.cert));
    assert_eq!(created.body["key_alt"], json!(ecdsa.key));
    assert_eq!(created.body["key_type"], json!("rsa"));
    assert_eq!(created.body["snis"], json!(["dual.example.com"]));
    Ok(())
}

#[tokio::test]
async fn ca_certificate_checks() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();

    let leaf = self_signed(&["leaf.example.com"], Algorithm::Ecdsa, 30)?;
    let error = violation(admin, "/ca_certificates", &json!({"cert": leaf.cert})).await?;
    assert_eq!(
        error,
        schema_violation(
            &format!("schema violation (cert: {NOT_A_CA})"),
            json!({"cert": NOT_A_CA})
        )
    );

    let expired = Ca::valid("Expired CA", -30, -1)?;
    let error = violation(
        admin,
        "/ca_certificates",
        &json!({"cert": expired.pem.cert}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            &format!("schema violation (cert: {CA_EXPIRED})"),
            json!({"cert": CA_EXPIRED})
        )
    );

    let one = Ca::new("One CA")?;
    let two = Ca::new("Two CA")?;
    let bundle = format!("{}{}", one.pem.cert, two.pem.cert);
    let error = violation(admin, "/ca_certificates", &json!({"cert": bundle})).await?;
    assert_eq!(
        error,
        schema_violation(
            &format!("schema violation (cert: {ONLY_ONE})"),
            json!({"cert": ONLY_ONE})
        )
    );

    let error = violation(admin, "/ca_certificates", &json!({"cert": "junk"})).await?;
    assert_eq!(
        error["fields"],
        json!({"cert": "invalid certificate: no certificate found"})
    );
    // Computed fields cannot be forced: a given digest is ignored, not trusted.
    let error = violation(
        admin,
        "/ca_certificates",
        &json!({"cert_digest": "00", "subject": "CN=x"}),
    )
    .await?;
    assert_eq!(error["fields"], json!({"cert": "required field missing"}));
    assert_eq!(admin.get("/ca_certificates").await?.body["data"], json!([]));

    // A CA once; the same CA again is a unique violation on its digest.
    let created = admin
        .post_json("/ca_certificates", &json!({"cert": one.pem.cert}))
        .await?;
    expect(&created, 201);
    let sha = digest(&one.pem.cert)?;
    assert_eq!(created.body["cert_digest"], json!(sha));
    let error = refused(
        admin,
        Method::POST,
        "/ca_certificates",
        &json!({"cert": one.pem.cert, "tags": ["again"]}),
        409,
    )
    .await?;
    assert_eq!(
        error,
        json!({
            "code": 5,
            "name": "unique constraint violation",
            "message": format!("UNIQUE violation detected on '{{cert_digest=\"{sha}\"}}'"),
            "fields": {"cert_digest": sha},
        })
    );
    // Also when the PEM differs only in line endings: the digest is of the DER.
    let crlf = one.pem.cert.replace('\n', "\r\n");
    let error = refused(
        admin,
        Method::POST,
        "/ca_certificates",
        &json!({"cert": crlf}),
        409,
    )
    .await?;
    assert_eq!(error["fields"], json!({"cert_digest": sha}));
    assert_eq!(
        admin.get("/ca_certificates").await?.body["data"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    Ok(())
}

// --- foreign keys ---

#[tokio::test]
async fn unknown_references_are_foreign_key_violations() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let missing = uuid::Uuid::new_v4().to_string();

    let error = refused(
        admin,
        Method::POST,
        "/routes",
        &json!({"paths": ["/"], "service": {"id": missing}}),
        400,
    )
    .await?;
    assert_eq!(
        error,
        foreign_key("services", &missing, json!({"service": {"id": missing}}))
    );

    let error = refused(
        admin,
        Method::POST,
        "/snis",
        &json!({"name": "a.example.com", "certificate": {"id": missing}}),
        400,
    )
    .await?;
    assert_eq!(
        error,
        foreign_key(
            "certificates",
            &missing,
            json!({"certificate": {"id": missing}})
        )
    );

    let error = refused(
        admin,
        Method::POST,
        "/services",
        &json!({"host": "a.test", "protocol": "https", "client_certificate": {"id": missing}}),
        400,
    )
    .await?;
    assert_eq!(
        error,
        foreign_key(
            "certificates",
            &missing,
            json!({"client_certificate": {"id": missing}})
        )
    );

    // CA ids in a service's ca_certificates and in mtls-auth's config.ca_certificates: the
    // first unknown one is named, known ones are fine.
    let ca = Ca::new("Known CA")?;
    let known = admin
        .post_json("/ca_certificates", &json!({"cert": ca.pem.cert}))
        .await?;
    expect(&known, 201);
    let known = id_of(&known)?;
    let error = refused(
        admin,
        Method::POST,
        "/services",
        &json!({"name": "up", "url": "https://up.test", "tls_verify": true,
                "ca_certificates": [known, missing]}),
        400,
    )
    .await?;
    assert_eq!(
        error,
        foreign_key(
            "ca_certificates",
            &missing,
            json!({"ca_certificates": {"id": missing}})
        )
    );
    let error = refused(
        admin,
        Method::POST,
        "/plugins",
        &json!({"name": "mtls-auth", "config": {"ca_certificates": [known, missing]}}),
        400,
    )
    .await?;
    assert_eq!(
        error,
        foreign_key(
            "ca_certificates",
            &missing,
            json!({"config": {"ca_certificates": {"id": missing}}})
        )
    );

    // With every reference known, the same writes succeed.
    let service = admin
        .post_json(
            "/services",
            &json!({"name": "up", "url": "https://up.test", "ca_certificates": [known]}),
        )
        .await?;
    expect(&service, 201);
    let plugin = admin
        .post_json(
            "/plugins",
            &json!({"name": "mtls-auth", "config": {"ca_certificates": [known]}}),
        )
        .await?;
    expect(&plugin, 201);
    Ok(())
}

// --- routes ---

#[tokio::test]
async fn route_rules() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();

    // Minimum matching criteria, with Kong's wording per protocol.
    let http = "must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is 'http'";
    let error = violation(admin, "/routes", &json!({"protocols": ["http"]})).await?;
    assert_eq!(
        error,
        schema_violation(
            &format!("schema violation ({http})"),
            json!({"@entity": [http]})
        )
    );
    let https = "must set one of 'methods', 'hosts', 'headers', 'paths', 'snis' when \
                 'protocols' is 'https'";
    for body in [
        json!({}),
        json!({"protocols": ["http", "https"]}),
        json!({"protocols": ["https"]}),
    ] {
        let error = violation(admin, "/routes", &body).await?;
        assert_eq!(error["fields"], json!({"@entity": [https]}), "{body}");
    }
    let error = violation(admin, "/routes", &json!({"protocols": ["tcp"]})).await?;
    assert_eq!(
        error["fields"],
        json!({"@entity": [
            "must set one of 'sources', 'destinations', 'snis' when 'protocols' is 'tcp', 'tls' or 'udp'"
        ]})
    );

    // Hosts: at most one wildcard, at an end.
    let error = violation(
        admin,
        "/routes",
        &json!({"hosts": ["ok.example.com", "*.a.*"]}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            "schema violation (hosts.2: invalid wildcard: must have at most one wildcard)",
            json!({"hosts": [null, "invalid wildcard: must have at most one wildcard"]}),
        )
    );
    let error = violation(admin, "/routes", &json!({"hosts": ["a.*.com"]})).await?;
    assert_eq!(
        error["fields"],
        json!({"hosts": ["invalid wildcard: must be placed at leftmost or rightmost label"]})
    );

    // Paths: no empty segment, normalized, valid regex.
    let cases = [
        ("/a//b", "must not have empty segments"),
        ("/a/../b", "non-normalized path, consider use '/b' instead"),
        (
            "/%7euser",
            "non-normalized path, consider use '/~user' instead",
        ),
        ("~/[", "invalid regex: '/[' (unclosed character class)"),
        ("a", "should start with: / (fixed path) or ~/ (regex path)"),
    ];
    for (path, message) in cases {
        let error = violation(admin, "/routes", &json!({"paths": [path]})).await?;
        assert_eq!(
            error,
            schema_violation(
                &format!("schema violation (paths.1: {message})"),
                json!({"paths": [message]})
            ),
            "{path}"
        );
    }

    // `snis` only on TLS protocols.
    let error = violation(
        admin,
        "/routes",
        &json!({"protocols": ["http"], "paths": ["/"], "snis": ["a.example.com"]}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            &format!("schema violation (snis: {SNIS_NEED_TLS})"),
            json!({"snis": SNIS_NEED_TLS})
        )
    );

    // Host belongs in `hosts`, whatever its case.
    for name in ["Host", "host", "HOST"] {
        let error = violation(
            admin,
            "/routes",
            &json!({"paths": ["/"], "headers": {name: ["a.example.com"]}}),
        )
        .await?;
        assert_eq!(
            error["fields"],
            json!({"headers": "cannot contain 'host' header, which must be specified in the \
                               'hosts' attribute"}),
            "{name}"
        );
    }

    // Protocol groups do not mix.
    let exclusive = "these sets are mutually exclusive: ('http', 'https'), ('tcp', 'tls', \
                     'udp'), ('tls_passthrough'), ('grpc', 'grpcs')";
    for protocols in [
        json!(["http", "tcp"]),
        json!(["https", "grpcs"]),
        json!(["tls", "tls_passthrough"]),
    ] {
        let error = violation(
            admin,
            "/routes",
            &json!({"protocols": protocols, "paths": ["/"], "snis": ["a.example.com"]}),
        )
        .await?;
        assert_eq!(
            error["fields"],
            json!({"protocols": exclusive}),
            "{protocols}"
        );
    }

    // Several violations at once: every one reported, in one message.
    let error = violation(
        admin,
        "/routes",
        &json!({
            "name": "bad name",
            "hosts": ["*.a.*"],
            "paths": ["/ok", "/a//b", "/a/../b", "~/["],
            "methods": ["get"],
            "regex_priority": "high",
            "protocols": ["http", "ftp"],
        }),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            "8 schema violations (\
             hosts.1: invalid wildcard: must have at most one wildcard; \
             methods.1: invalid value: get; \
             name: invalid value 'bad name': the only accepted ascii characters are \
             alphanumerics or ., -, _, and ~; \
             paths.2: must not have empty segments; \
             paths.3: non-normalized path, consider use '/b' instead; \
             paths.4: invalid regex: '/[' (unclosed character class); \
             protocols.2: expected one of: grpc, grpcs, http, https, tcp, tls, tls_passthrough, udp; \
             regex_priority: expected an integer)",
            json!({
                "name": "invalid value 'bad name': the only accepted ascii characters are \
                         alphanumerics or ., -, _, and ~",
                "hosts": ["invalid wildcard: must have at most one wildcard"],
                "paths": [null, "must not have empty segments",
                          "non-normalized path, consider use '/b' instead",
                          "invalid regex: '/[' (unclosed character class)"],
                "methods": ["invalid value: get"],
                "regex_priority": "expected an integer",
                "protocols": [null, "expected one of: grpc, grpcs, http, https, tcp, tls, tls_passthrough, udp"],
            }),
        )
    );
    assert_eq!(admin.get("/routes").await?.body["data"], json!([]));

    // And the valid forms of the same are accepted.
    let created = admin
        .post_json(
            "/routes",
            &json!({"hosts": ["*.example.com", "example.*"], "paths": ["/b", "~/v[12]/.*"],
                    "protocols": ["https"], "snis": ["a.example.com"],
                    "headers": {"x-region": ["north"]}}),
        )
        .await?;
    expect(&created, 201);
    Ok(())
}

#[tokio::test]
async fn grpc_routes_default_strip_path_to_false() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();

    // Kong's grpc route subschema defaults strip_path to false; only `true` is refused.
    let created = admin
        .post_json("/routes", &json!({"protocols": ["grpc"], "paths": ["/"]}))
        .await?;
    expect(&created, 201);
    assert_eq!(created.body["strip_path"], json!(false));
    let http = admin.post_json("/routes", &json!({"paths": ["/"]})).await?;
    expect(&http, 201);
    assert_eq!(http.body["strip_path"], json!(true));

    let error = violation(
        admin,
        "/routes",
        &json!({"protocols": ["grpcs"], "paths": ["/"], "strip_path": true}),
    )
    .await?;
    assert_eq!(
        error["fields"],
        json!({"strip_path": "cannot set 'strip_path' when 'protocols' is 'grpc' or 'grpcs'"})
    );
    let error = violation(
        admin,
        "/routes",
        &json!({"protocols": ["grpc"], "paths": ["/"], "methods": ["POST"]}),
    )
    .await?;
    assert_eq!(
        error["fields"],
        json!({"methods": "cannot set 'methods' when 'protocols' is 'grpc' or 'grpcs'"})
    );
    Ok(())
}

// --- SNIs ---

#[tokio::test]
async fn an_sni_belongs_to_one_certificate() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let ca = Ca::new("SNI CA")?;
    let first = ca.leaf(&["a.example.com"], Algorithm::Ecdsa, 30)?;
    let second = ca.leaf(&["a.example.com"], Algorithm::Ecdsa, 30)?;

    let owner = admin
        .post_json(
            "/certificates",
            &json!({"cert": first.cert, "key": first.key, "snis": ["a.example.com"]}),
        )
        .await?;
    expect(&owner, 201);
    let owner_id = id_of(&owner)?;
    let taken = format!("a.example.com already associated with existing certificate '{owner_id}'");

    // Through the certificates `snis` shorthand: a schema violation, nothing created.
    let error = violation(
        admin,
        "/certificates",
        &json!({"cert": second.cert, "key": second.key,
                "snis": ["b.example.com", "a.example.com"]}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            &format!("schema violation (snis: {taken})"),
            json!({"snis": taken})
        )
    );
    assert_eq!(
        admin.get("/certificates").await?.body["data"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(admin.get("/snis/b.example.com").await?.status, 404);

    // Duplicates within one request.
    let error = violation(
        admin,
        "/certificates",
        &json!({"cert": second.cert, "key": second.key,
                "snis": ["c.example.com", "c.example.com"]}),
    )
    .await?;
    assert_eq!(
        error["fields"],
        json!({"snis": "c.example.com is duplicated"})
    );

    // Through PATCH of another certificate.
    let other = admin
        .post_json(
            "/certificates",
            &json!({"cert": second.cert, "key": second.key}),
        )
        .await?;
    expect(&other, 201);
    let other_id = id_of(&other)?;
    let error = refused(
        admin,
        Method::PATCH,
        &format!("/certificates/{other_id}"),
        &json!({"snis": ["a.example.com"]}),
        400,
    )
    .await?;
    assert_eq!(error["fields"], json!({"snis": taken}));

    // Through POST /snis: a unique violation on the name.
    let error = refused(
        admin,
        Method::POST,
        "/snis",
        &json!({"name": "a.example.com", "certificate": {"id": other_id}}),
        409,
    )
    .await?;
    assert_eq!(
        error,
        json!({
            "code": 5,
            "name": "unique constraint violation",
            "message": "UNIQUE violation detected on '{name=\"a.example.com\"}'",
            "fields": {"name": "a.example.com"},
        })
    );
    let still = admin.get("/certificates/a.example.com").await?;
    assert_eq!(still.body["id"], json!(owner_id));

    // Bad SNI names.
    for (name, message) in [
        ("10.0.0.1", "must not be an IP"),
        ("a.example.com:443", "must not have a port"),
        ("*.a.*", "only one wildcard must be specified"),
    ] {
        let error = violation(
            admin,
            "/snis",
            &json!({"name": name, "certificate": {"id": other_id}}),
        )
        .await?;
        assert_eq!(error["fields"], json!({"name": message}), "{name}");
    }
    Ok(())
}

// --- plugins ---

#[tokio::test]
async fn plugin_rules() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();

    // Unknown plugin.
    let error = violation(admin, "/plugins", &json!({"name": "x"})).await?;
    let message = error["fields"]["name"].as_str().context("fields.name")?;
    assert!(
        message.starts_with(&format!("plugin 'x' {NOT_ENABLED}")),
        "{error}"
    );
    assert_eq!(error["fields"].as_object().map(|f| f.len()), Some(1));
    assert_eq!(
        error["message"],
        json!(format!("schema violation (name: {message})"))
    );

    // acl: exactly one of allow and deny.
    let only_one = "only one of these fields must be non-empty: 'config.allow', 'config.deny'";
    let error = violation(
        admin,
        "/plugins",
        &json!({"name": "acl", "config": {"allow": ["a"], "deny": ["b"]}}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            &format!("schema violation ({only_one})"),
            json!({"@entity": [only_one]})
        )
    );
    let at_least = "at least one of these fields must be non-empty: 'config.allow', 'config.deny'";
    for body in [
        json!({"name": "acl"}),
        json!({"name": "acl", "config": {}}),
        json!({"name": "acl", "config": {"allow": []}}),
    ] {
        let error = violation(admin, "/plugins", &body).await?;
        assert_eq!(error["fields"], json!({"@entity": [at_least]}), "{body}");
    }

    // Unknown config key.
    let error = violation(
        admin,
        "/plugins",
        &json!({"name": "acl", "config": {"allow": ["a"], "foo": 1}}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            "schema violation (config.foo: unknown field)",
            json!({"config": {"foo": "unknown field"}})
        )
    );

    // acl cannot be scoped to a consumer.
    let consumer = admin
        .post_json("/consumers", &json!({"username": "c"}))
        .await?;
    expect(&consumer, 201);
    let error = violation(
        admin,
        "/consumers/c/plugins",
        &json!({"name": "acl", "config": {"allow": ["a"]}}),
    )
    .await?;
    assert_eq!(error["fields"], json!({"consumer": "value must be null"}));

    // mtls-auth needs CA certificates.
    let error = violation(admin, "/plugins", &json!({"name": "mtls-auth"})).await?;
    assert_eq!(
        error,
        schema_violation(
            "schema violation (config.ca_certificates: required field missing)",
            json!({"config": {"ca_certificates": "required field missing"}})
        )
    );
    let error = violation(
        admin,
        "/plugins",
        &json!({"name": "mtls-auth", "config": {"ca_certificates": []}}),
    )
    .await?;
    assert_eq!(
        error["fields"],
        json!({"config": {"ca_certificates": "length must be at least 1"}})
    );

    // Wrong types and values, all reported together.
    let ca = Ca::new("Plugin CA")?;
    let ca = admin
        .post_json("/ca_certificates", &json!({"cert": ca.pem.cert}))
        .await?;
    expect(&ca, 201);
    let ca_id = id_of(&ca)?;
    let error = violation(
        admin,
        "/plugins",
        &json!({"name": "mtls-auth", "config": {
            "ca_certificates": [ca_id, "not-a-uuid"],
            "skip_consumer_lookup": "maybe",
            "authenticated_group_by": "XX",
            "http_timeout": -1,
        }}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            "4 schema violations (\
             config.authenticated_group_by: expected one of: CN, DN; \
             config.ca_certificates.2: expected a valid UUID; \
             config.http_timeout: value must be greater than or equal to 0; \
             config.skip_consumer_lookup: expected a boolean)",
            json!({"config": {
                "ca_certificates": [null, "expected a valid UUID"],
                "skip_consumer_lookup": "expected a boolean",
                "authenticated_group_by": "expected one of: CN, DN",
                "http_timeout": "value must be greater than or equal to 0",
            }}),
        )
    );
    assert_eq!(admin.get("/plugins").await?.body["data"], json!([]));

    // A known plugin that this node does not enable: Kong's exact message.
    drop(cp);
    let cp = ControlPlane::start_with(&db, &["--plugins", "acl"], &[]).await?;
    let error = violation(
        cp.admin(),
        "/plugins",
        &json!({"name": "mtls-auth", "config": {"ca_certificates": [ca_id]}}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            &format!("schema violation (name: plugin 'mtls-auth' {NOT_ENABLED})"),
            json!({"name": format!("plugin 'mtls-auth' {NOT_ENABLED}")})
        )
    );
    Ok(())
}

// --- services ---

#[tokio::test]
async fn service_rules() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let protocols = "expected one of: grpc, grpcs, http, https, tcp, tls, tls_passthrough, udp";

    let cases = [
        (
            json!({"host": "a.test", "port": 70000}),
            json!({"port": "value should be between 0 and 65535"}),
        ),
        (
            json!({"host": "a.test", "protocol": "ftp"}),
            json!({"protocol": protocols}),
        ),
        (
            json!({"host": "a.test:8080"}),
            json!({"host": "must not have a port"}),
        ),
        (
            json!({"host": "a.test", "tls_verify": true}),
            json!({"tls_verify": "value must be null"}),
        ),
        (
            json!({"url": "http://a.test", "tls_verify_depth": 2}),
            json!({"tls_verify_depth": "value must be null"}),
        ),
        (
            json!({"host": "a.test", "hostname": "a.test"}),
            json!({"hostname": "unknown field"}),
        ),
        (
            json!({"port": 80}),
            json!({"host": "required field missing"}),
        ),
        (
            json!({"host": "a.test", "protocol": "tcp", "path": "/p"}),
            json!({"path": "value must be null"}),
        ),
        (
            json!({"host": "a.test", "retries": -1}),
            json!({"retries": "value should be between 0 and 32767"}),
        ),
    ];
    for (body, fields) in cases {
        let error = violation(admin, "/services", &body).await?;
        let (key, message) = fields
            .as_object()
            .and_then(|f| f.iter().next())
            .context("one field")?;
        assert_eq!(
            error,
            schema_violation(
                &format!(
                    "schema violation ({key}: {})",
                    message.as_str().unwrap_or("")
                ),
                fields.clone()
            ),
            "{body}"
        );
    }

    // All at once.
    let error = violation(
        admin,
        "/services",
        &json!({"host": "a.test:8080", "port": 70000, "protocol": "ftp", "bogus": 1}),
    )
    .await?;
    assert_eq!(
        error,
        schema_violation(
            &format!(
                "4 schema violations (bogus: unknown field; host: must not have a port; \
                 port: value should be between 0 and 65535; protocol: {protocols})"
            ),
            json!({
                "bogus": "unknown field",
                "host": "must not have a port",
                "port": "value should be between 0 and 65535",
                "protocol": protocols,
            }),
        )
    );
    assert_eq!(admin.get("/services").await?.body["data"], json!([]));

    // A bad PATCH of a good service changes nothing either.
    let created = admin
        .post_json("/services", &json!({"name": "svc", "host": "a.test"}))
        .await?;
    expect(&created, 201);
    let error = refused(
        admin,
        Method::PATCH,
        "/services/svc",
        &json!({"port": 70000, "host": "b.test"}),
        400,
    )
    .await?;
    assert_eq!(
        error["fields"],
        json!({"port": "value should be between 0 and 65535"})
    );
    let stored = admin.get("/services/svc").await?;
    assert_eq!(stored.body, created.body);
    Ok(())
}

// --- secrets ---

#[tokio::test]
async fn private_keys_never_reach_the_logs() -> Result<()> {
    let db = test_db().await?;
    let ca = Ca::new("Secret CA")?;
    let good = ca.leaf(&["secret.example.com"], Algorithm::Ecdsa, 30)?;
    let rsa = ca.leaf(&["secret.example.com"], Algorithm::Rsa, 30)?;
    let other = ca.leaf(&["other.example.com"], Algorithm::Ecdsa, 30)?;
    let bad_key = mangled(&other);

    for level in ["info", "debug"] {
        let cp = ControlPlane::start_with(&db, &["--log-level", level], &[]).await?;
        let admin = cp.admin();
        // A valid certificate (and its replacement, and a duplicate SNI).
        let created = admin
            .post_json(
                "/certificates",
                &json!({"cert": good.cert, "key": good.key, "snis": [format!("{level}.example.com")]}),
            )
            .await?;
        expect(&created, 201);
        let id = id_of(&created)?;
        let put = admin
            .put_json(
                &format!("/certificates/{id}"),
                &json!({"cert": rsa.cert, "key": rsa.key, "cert_alt": good.cert, "key_alt": good.key}),
            )
            .await?;
        expect(&put, 200);
        let duplicate = admin
            .post_json(
                "/certificates",
                &json!({"cert": other.cert, "key": other.key, "snis": [format!("{level}.example.com")]}),
            )
            .await?;
        expect(&duplicate, 400);
        let taken_id = admin
            .post_json(
                "/certificates",
                &json!({"id": id, "cert": other.cert, "key": other.key}),
            )
            .await?;
        expect(&taken_id, 400);
        // Invalid ones: a mangled key, a key not matching, a key in the cert field.
        for body in [
            json!({"cert": other.cert, "key": bad_key}),
            json!({"cert": other.cert, "key": good.key}),
            json!({"cert": other.key, "key": other.key}),
            json!({"cert": rsa.cert, "key": rsa.key, "cert_alt": other.cert, "key_alt": good.key}),
        ] {
            let response = admin.post_json("/certificates", &body).await?;
            expect(&response, 400);
            let text = response.body.to_string();
            assert!(!text.contains("PRIVATE KEY"), "{text}");
        }
        // A form and a multipart upload with a key.
        let response = admin
            .post_form("/certificates", &[("cert", &other.cert), ("key", &bad_key)])
            .await?;
        expect(&response, 400);
        let response = admin
            .post_multipart(
                "/certificates",
                &[("cert", &other.cert), ("key", &other.key)],
            )
            .await?;
        expect(&response, 201);
        let status = admin.get("/status").await?;
        expect(&status, 200);

        let logs = cp.logs();
        assert!(logs.contains("created"), "logs are captured: {logs}");
        assert!(
            !logs.contains("PRIVATE KEY"),
            "a private key in the {level} logs"
        );
        for pem in [&good, &rsa, &other] {
            for line in body_lines(&pem.key) {
                assert!(
                    !logs.contains(line),
                    "a line of a private key is in the {level} logs: {line}"
                );
            }
        }
        for line in body_lines(&bad_key) {
            assert!(
                !logs.contains(line),
                "a mangled key line in the {level} logs"
            );
        }
    }
    Ok(())
}
