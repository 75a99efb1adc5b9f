//! Request-body encodings of the Admin API, as Kong accepts them (reference §2.1): JSON,
//! `application/x-www-form-urlencoded` with Kong's key syntax and schema-typed values, and
//! `multipart/form-data` exactly as `curl -F` and `http -f` put it on the wire (plus one run of
//! the real `curl`); limits on arguments and body size.

use anyhow::{Context, Result, bail};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use gatehouse_tests::certs::{Algorithm, Ca};
use gatehouse_tests::{Admin, ControlPlane, Response, test_db};

const FORM: &str = "application/x-www-form-urlencoded";

use gatehouse_tests::config_version as version;

/// Sends `body` as is, with `content_type`, so the test controls the bytes on the wire.
async fn raw(
    admin: &Admin,
    method: Method,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Result<Response> {
    admin
        .send(
            admin
                .request(method, path)
                .header(CONTENT_TYPE, content_type)
                .body(body),
        )
        .await
}

/// A urlencoded body written exactly as `curl -d` sends it (no escaping added).
async fn form(admin: &Admin, method: Method, path: &str, body: &str) -> Result<Response> {
    raw(admin, method, path, FORM, body.to_owned()).await
}

/// Checks a response status, showing the whole response when it differs.
#[track_caller]
fn expect(response: &Response, status: u16) {
    assert_eq!(response.status, status, "{response:#?}");
}

/// The string at `value[key]`, failing clearly.
fn text<'a>(value: &'a Value, key: &str) -> Result<&'a str> {
    value[key]
        .as_str()
        .with_context(|| format!("{key} is not a string in {value}"))
}

/// One multipart part: its header lines (without the trailing CRLF) and its data.
struct Part<'a> {
    headers: String,
    data: &'a str,
}

/// A multipart body, byte for byte: `--boundary CRLF headers CRLF CRLF data CRLF` per part,
/// then `--boundary-- CRLF`.
fn multipart(boundary: &str, parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{boundary}\r\n{}\r\n\r\n", part.headers).as_bytes());
        body.extend_from_slice(part.data.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

fn file_part<'a>(name: &str, filename: &str, content_type: &str, data: &'a str) -> Part<'a> {
    Part {
        headers: format!(
            "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
             Content-Type: {content_type}"
        ),
        data,
    }
}

fn text_part<'a>(name: &str, data: &'a str) -> Part<'a> {
    Part {
        headers: format!("Content-Disposition: form-data; name=\"{name}\""),
        data,
    }
}

// --- JSON ---

#[tokio::test]
async fn json_bodies_with_and_without_charset() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();

    let plain = raw(
        admin,
        Method::POST,
        "/services",
        "application/json",
        r#"{"name":"plain","host":"a.test","port":8080,"retries":0}"#,
    )
    .await?;
    expect(&plain, 201);
    assert_eq!(plain.body["port"], json!(8080));
    assert_eq!(plain.body["retries"], json!(0));

    let charset = raw(
        admin,
        Method::POST,
        "/services",
        "application/json; charset=utf-8",
        r#"{"name":"charset","host":"b.test","tags":["été"]}"#,
    )
    .await?;
    expect(&charset, 201);
    assert_eq!(charset.body["tags"], json!(["été"]));

    // JSON is used as is: no inference from strings.
    let untyped = raw(
        admin,
        Method::POST,
        "/services",
        "application/json",
        r#"{"name":"untyped","host":"c.test","port":"8080"}"#,
    )
    .await?;
    expect(&untyped, 400);
    assert_eq!(
        untyped.body["fields"],
        json!({"port": "expected an integer"})
    );

    let patched = raw(
        admin,
        Method::PATCH,
        "/services/charset",
        "application/json; charset=UTF-8",
        r#"{"port":9000}"#,
    )
    .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["port"], json!(9000));
    assert_eq!(patched.body["host"], json!("b.test"));
    Ok(())
}

#[tokio::test]
async fn invalid_or_non_object_json_is_400_and_changes_nothing() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let before = version(admin).await?;

    for body in [
        r#"{"name":"svc","host":"a.test""#,
        "{name: svc}",
        r#"[{"name":"svc","host":"a.test"}]"#,
        r#""svc""#,
        "42",
    ] {
        for content_type in ["application/json", "application/json; charset=utf-8"] {
            let response = raw(admin, Method::POST, "/services", content_type, body).await?;
            expect(&response, 400);
            assert_eq!(
                response.body,
                json!({"message": "Cannot parse JSON body"}),
                "{content_type} {body}"
            );
        }
    }
    assert_eq!(version(admin).await?, before);
    assert_eq!(admin.get("/services").await?.body["data"], json!([]));
    Ok(())
}

/// Invalid UTF-8 (form bodies, after percent-decoding; multipart parts) is a 400 naming the
/// argument, and a NUL character (any encoding) a schema violation naming the field; neither
/// changes anything. Before, a form's bad bytes were stored as U+FFFD, and a NUL reached
/// PostgreSQL, whose text and jsonb cannot hold it.
#[tokio::test]
async fn invalid_utf8_and_nul_are_400_and_change_nothing() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let before = version(admin).await?;

    let multipart_ct = "multipart/form-data; boundary=b";
    // (content type, body, code of a schema violation or none, text the message contains)
    let cases: Vec<(&str, Vec<u8>, Option<i64>, &str)> = vec![
        (
            FORM,
            b"name=svc%FF&host=a.test".to_vec(),
            None,
            "Cannot parse form body: argument #1 is not valid UTF-8",
        ),
        (
            FORM,
            b"name=svc&host=a.test&tags[]=\xc3\x28".to_vec(),
            None,
            "Cannot parse form body: argument #3 is not valid UTF-8",
        ),
        (
            FORM,
            b"name=svc&host=a.test&\xff=1".to_vec(),
            None,
            "Cannot parse form body: argument #3 is not valid UTF-8",
        ),
        (
            FORM,
            b"name=svc%00&host=a.test".to_vec(),
            Some(2),
            "must not contain NUL characters",
        ),
        (
            "application/json",
            br#"{"name":"svc","host":"a.test","tags":["ok","n\u0000l"]}"#.to_vec(),
            Some(2),
            "must not contain NUL characters",
        ),
        (
            multipart_ct,
            b"--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nsvc\r\n\
              --b\r\nContent-Disposition: form-data; name=\"host\"\r\n\r\na.test\x00\r\n--b--\r\n"
                .to_vec(),
            Some(2),
            "must not contain NUL characters",
        ),
        (
            multipart_ct,
            b"--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nsvc\xfe\r\n--b--\r\n"
                .to_vec(),
            None,
            "not valid UTF-8",
        ),
    ];
    for (content_type, body, code, message) in cases {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let response = raw(admin, Method::POST, "/services", content_type, body).await?;
        expect(&response, 400);
        assert_eq!(
            response.body.get("code").and_then(|c| c.as_i64()),
            code,
            "{shown}: {response:?}"
        );
        let text = response.body["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{shown}: {response:?}");
        assert!(!text.contains('\u{fffd}'), "{shown}: {response:?}");
    }
    assert_eq!(version(admin).await?, before);
    assert_eq!(admin.get("/services").await?.body["data"], json!([]));
    Ok(())
}

#[tokio::test]
async fn other_content_types_are_415() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let before = version(admin).await?;

    let cases = [
        ("text/plain", "name=svc&host=a.test"),
        ("application/xml", "<service><host>a.test</host></service>"),
        ("text/plain; charset=utf-8", r#"{"host":"a.test"}"#),
    ];
    for (content_type, body) in cases {
        for method in [Method::POST, Method::PUT] {
            let path = if method == Method::PUT {
                "/services/svc"
            } else {
                "/services"
            };
            let response = raw(admin, method.clone(), path, content_type, body).await?;
            expect(&response, 415);
            assert!(
                response.body["message"].is_string(),
                "{content_type}: {response:?}"
            );
        }
    }
    // Two Content-Type headers are ambiguous: 400 (Kong), whatever they say.
    let twice = admin
        .send(
            admin
                .request(Method::POST, "/services")
                .header(CONTENT_TYPE, "application/json")
                .header(CONTENT_TYPE, FORM)
                .body(r#"{"host":"a.test"}"#),
        )
        .await?;
    expect(&twice, 400);
    let message = twice.body["message"].as_str().unwrap_or_default();
    assert!(message.contains("Content-Type"), "{twice:?}");
    assert_eq!(
        twice.body.as_object().map(|b| b.len()),
        Some(1),
        "{twice:?}"
    );
    assert_eq!(version(admin).await?, before);
    Ok(())
}

// --- urlencoded ---

#[tokio::test]
async fn form_service_with_url_shorthand_and_typed_values() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();

    let created = form(
        admin,
        Method::POST,
        "/services",
        "name=svc&url=http://a.test:8080/p&retries=0&connect_timeout=1500&enabled=false",
    )
    .await?;
    expect(&created, 201);
    let body = &created.body;
    assert_eq!(body["name"], json!("svc"));
    assert_eq!(body["protocol"], json!("http"));
    assert_eq!(body["host"], json!("a.test"));
    assert_eq!(body["port"], json!(8080), "port typed as a number");
    assert_eq!(body["path"], json!("/p"));
    assert_eq!(
        body["retries"],
        json!(0),
        "\"0\" is 0, not null or a string"
    );
    assert_eq!(body["connect_timeout"], json!(1500));
    assert_eq!(body["enabled"], json!(false));
    assert!(body.get("url").is_none(), "url is write-only: {body}");

    // `+` is a space and %-escapes decode, as in any urlencoded body.
    let escaped = form(
        admin,
        Method::POST,
        "/services",
        "name=esc&host=b.test&path=%2Fa%2Fb&tags=with+space&tags=x%2By",
    )
    .await?;
    expect(&escaped, 201);
    assert_eq!(escaped.body["path"], json!("/a/b"));
    assert_eq!(escaped.body["tags"], json!(["with space", "x+y"]));

    // The URL shorthand defaults the port from the scheme.
    let https = form(
        admin,
        Method::POST,
        "/services",
        "name=tls&url=https://c.test",
    )
    .await?;
    expect(&https, 201);
    assert_eq!(https.body["protocol"], json!("https"));
    assert_eq!(https.body["port"], json!(443));
    assert_eq!(https.body["path"], Value::Null);

    // Values that do not parse as the field's type are reported, not silently dropped.
    let bad = form(
        admin,
        Method::POST,
        "/services",
        "name=bad&host=d.test&port=eighty&enabled=yes",
    )
    .await?;
    expect(&bad, 400);
    assert_eq!(
        bad.body["fields"],
        json!({"port": "expected an integer", "enabled": "expected a boolean"})
    );
    Ok(())
}

#[tokio::test]
async fn form_keys_nest_and_collect_lists_for_routes() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let service = form(admin, Method::POST, "/services", "name=svc&host=a.test").await?;
    expect(&service, 201);
    let service_id = text(&service.body, "id")?.to_owned();

    // Foreign key by unique name, `[]` lists, repeated keys, a header map, typed booleans.
    let route = form(
        admin,
        Method::POST,
        "/routes",
        "name=r1&service.name=svc&hosts[]=a.example.com&hosts[]=b.example.com\
         &paths=/x&paths=/y&methods=GET&headers.x-region=north&strip_path=false\
         &preserve_host=true&regex_priority=7&https_redirect_status_code=301",
    )
    .await?;
    expect(&route, 201);
    let body = &route.body;
    assert_eq!(body["service"], json!({"id": service_id}));
    assert_eq!(body["hosts"], json!(["a.example.com", "b.example.com"]));
    assert_eq!(body["paths"], json!(["/x", "/y"]));
    assert_eq!(
        body["methods"],
        json!(["GET"]),
        "one value for a set is a list"
    );
    assert_eq!(body["headers"], json!({"x-region": ["north"]}));
    assert_eq!(body["strip_path"], json!(false));
    assert_eq!(body["preserve_host"], json!(true));
    assert_eq!(body["regex_priority"], json!(7));
    assert_eq!(body["https_redirect_status_code"], json!(301));
    assert_eq!(body["protocols"], json!(["http", "https"]));

    // Foreign key by id; positional keys order the list by number, not by text.
    let route = form(
        admin,
        Method::POST,
        "/routes",
        &format!(
            "name=r2&service.id={service_id}&hosts[2]=b.test&hosts[1]=a.test\
             &paths[10]=/ten&paths[9]=/nine&headers.x-a=1&headers.x-a=2"
        ),
    )
    .await?;
    expect(&route, 201);
    assert_eq!(route.body["service"], json!({"id": service_id}));
    assert_eq!(route.body["hosts"], json!(["a.test", "b.test"]));
    assert_eq!(route.body["paths"], json!(["/nine", "/ten"]));
    assert_eq!(route.body["headers"], json!({"x-a": ["1", "2"]}));

    // `%5B`/`%5D` are brackets; a nested route takes its service from the URL.
    let nested = form(
        admin,
        Method::POST,
        "/services/svc/routes",
        "name=r3&hosts%5B%5D=c.test&hosts%5B%5D=d.test",
    )
    .await?;
    expect(&nested, 201);
    assert_eq!(nested.body["hosts"], json!(["c.test", "d.test"]));
    assert_eq!(nested.body["service"], json!({"id": service_id}));

    // Form PATCH, typed the same way.
    let patched = form(
        admin,
        Method::PATCH,
        "/routes/r1",
        "strip_path=true&hosts=only.test&regex_priority=0",
    )
    .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["strip_path"], json!(true));
    assert_eq!(patched.body["hosts"], json!(["only.test"]));
    assert_eq!(patched.body["regex_priority"], json!(0));
    assert_eq!(patched.body["paths"], json!(["/x", "/y"]), "untouched");
    Ok(())
}

#[tokio::test]
async fn form_foreign_keys_and_plugin_configs() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();

    // A certificate and an SNI bound to it with `certificate.id=`.
    let ca = Ca::new("Encodings CA")?;
    let leaf = ca.leaf(&["a.example.com"], Algorithm::Ecdsa, 30)?;
    let cert = admin
        .post_json(
            "/certificates",
            &json!({"cert": leaf.cert, "key": leaf.key}),
        )
        .await?;
    expect(&cert, 201);
    let cert_id = text(&cert.body, "id")?.to_owned();
    let sni = form(
        admin,
        Method::POST,
        "/snis",
        &format!("name=a.example.com&certificate.id={cert_id}&tags=t1"),
    )
    .await?;
    expect(&sni, 201);
    assert_eq!(sni.body["certificate"], json!({"id": cert_id}));
    assert_eq!(sni.body["tags"], json!(["t1"]));
    let via_sni = admin.get("/certificates/a.example.com").await?;
    expect(&via_sni, 200);
    assert_eq!(via_sni.body["snis"], json!(["a.example.com"]));

    // acl: `config.allow` repeated gives a list; booleans are typed by the plugin's schema.
    expect(
        &form(admin, Method::POST, "/services", "name=svc&host=a.test").await?,
        201,
    );
    let acl = form(
        admin,
        Method::POST,
        "/services/svc/plugins",
        "name=acl&config.allow=g1&config.allow=g2&config.hide_groups_header=true&tags[]=p",
    )
    .await?;
    expect(&acl, 201);
    assert_eq!(acl.body["config"]["allow"], json!(["g1", "g2"]));
    assert_eq!(acl.body["config"]["deny"], Value::Null);
    assert_eq!(acl.body["config"]["hide_groups_header"], json!(true));
    assert_eq!(
        acl.body["config"]["always_use_authenticated_groups"],
        json!(false)
    );
    assert_eq!(acl.body["tags"], json!(["p"]));

    // mtls-auth: a single `config.ca_certificates` is a one-item list of ids.
    let stored_ca = admin
        .post_json("/ca_certificates", &json!({"cert": ca.pem.cert}))
        .await?;
    expect(&stored_ca, 201);
    let ca_id = text(&stored_ca.body, "id")?.to_owned();
    let mtls = form(
        admin,
        Method::POST,
        "/plugins",
        &format!(
            "name=mtls-auth&config.ca_certificates={ca_id}&config.skip_consumer_lookup=true\
             &config.cache_ttl=120&config.consumer_by=username&config[authenticated_group_by]=DN"
        ),
    )
    .await?;
    expect(&mtls, 201);
    let config = &mtls.body["config"];
    assert_eq!(config["ca_certificates"], json!([ca_id]));
    assert_eq!(config["skip_consumer_lookup"], json!(true));
    assert_eq!(config["cache_ttl"].as_f64(), Some(120.0));
    assert_eq!(config["consumer_by"], json!(["username"]));
    assert_eq!(config["authenticated_group_by"], json!("DN"));
    assert_eq!(config["revocation_check_mode"], json!("IGNORE_CA_ERROR"));

    // A consumer ACL by form, nested.
    expect(
        &form(
            admin,
            Method::POST,
            "/consumers",
            "username=alice&custom_id=",
        )
        .await?,
        201,
    );
    let group = form(admin, Method::POST, "/consumers/alice/acls", "group=admins").await?;
    expect(&group, 201);
    assert_eq!(group.body["group"], json!("admins"));
    Ok(())
}

#[tokio::test]
async fn empty_form_value_means_null() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();

    let created = form(
        admin,
        Method::POST,
        "/services",
        "name=svc&host=a.test&path=/p&tags=a&tags=b",
    )
    .await?;
    expect(&created, 201);
    assert_eq!(created.body["path"], json!("/p"));
    assert_eq!(created.body["tags"], json!(["a", "b"]));

    // `path=` clears the path; other fields stay.
    let cleared = form(admin, Method::PATCH, "/services/svc", "path=").await?;
    expect(&cleared, 200);
    assert_eq!(cleared.body["path"], Value::Null);
    assert_eq!(cleared.body["tags"], json!(["a", "b"]));
    assert_eq!(cleared.body["host"], json!("a.test"));
    let stored = admin.get("/services/svc").await?;
    assert_eq!(stored.body["path"], Value::Null);

    // `tags=` clears the tags; numbers are typed on PATCH too.
    let cleared = form(
        admin,
        Method::PATCH,
        "/services/svc",
        "tags=&port=8443&retries=0",
    )
    .await?;
    expect(&cleared, 200);
    assert_eq!(cleared.body["tags"], Value::Null);
    assert_eq!(cleared.body["port"], json!(8443));
    assert_eq!(cleared.body["retries"], json!(0));

    // On create, `tags=` is null too.
    let created = form(admin, Method::POST, "/consumers", "username=bob&tags=").await?;
    expect(&created, 201);
    assert_eq!(created.body["tags"], Value::Null);
    assert_eq!(created.body["custom_id"], Value::Null);

    // An empty value for a required field is "missing", as in Kong.
    let missing = form(admin, Method::POST, "/services", "name=nohost&host=").await?;
    expect(&missing, 400);
    assert_eq!(
        missing.body["fields"],
        json!({"host": "required field missing"})
    );
    Ok(())
}

#[tokio::test]
async fn form_patch_of_a_plugin_is_typed_by_its_plugin_schema() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let acl = form(
        admin,
        Method::POST,
        "/plugins",
        "name=acl&instance_name=gate&config.allow=g1&config.allow=g2",
    )
    .await?;
    expect(&acl, 201);
    let before = version(admin).await?;

    // The PATCH body does not name the plugin: Kong reads the stored plugin first and decodes
    // the form with that plugin's schema (kong/api/routes/plugins.lua, patch_plugin).
    let patched = form(
        admin,
        Method::PATCH,
        "/plugins/gate",
        "config.allow=g3&config.hide_groups_header=true",
    )
    .await?;
    expect(&patched, 200);
    assert_eq!(patched.body["config"]["allow"], json!(["g3"]));
    assert_eq!(patched.body["config"]["hide_groups_header"], json!(true));
    assert_eq!(patched.body["name"], json!("acl"));
    assert_eq!(version(admin).await?, before + 1);
    Ok(())
}

// --- multipart ---

#[tokio::test]
async fn multipart_as_curl_sends_a_ca_file() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let ca = Ca::new("Curl CA")?;

    // `curl -F cert=@ca.crt http://127.0.0.1:8001/ca_certificates`, byte for byte.
    let boundary = "------------------------d74496d66958873e";
    let body = multipart(
        boundary,
        &[file_part(
            "cert",
            "ca.crt",
            "application/octet-stream",
            &ca.pem.cert,
        )],
    );
    let created = raw(
        admin,
        Method::POST,
        "/ca_certificates",
        &format!("multipart/form-data; boundary={boundary}"),
        body,
    )
    .await?;
    expect(&created, 201);
    assert_eq!(
        text(&created.body, "cert")?,
        ca.pem.cert,
        "stored byte for byte"
    );
    assert_eq!(created.body["subject"], json!("CN=Curl CA"));
    let id = text(&created.body, "id")?;
    let stored = admin.get(&format!("/ca_certificates/{id}")).await?;
    expect(&stored, 200);
    assert_eq!(text(&stored.body, "cert")?, ca.pem.cert);
    Ok(())
}

#[tokio::test]
async fn multipart_as_httpie_sends_certificate_files_and_a_field() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let ca = Ca::new("Httpie CA")?;
    let leaf = ca.leaf(&["a.example.com"], Algorithm::Rsa, 30)?;

    // `http -f POST :8001/certificates cert=@c.crt key=@c.key snis=a.example.com`: httpie
    // (requests-toolbelt) puts plain fields first, without filename or Content-Type, then the
    // files with their names and a type guessed from the extension; the boundary is a uuid4.
    let boundary = "7b1a4a8e3c0d4e0f9b6a2d5c8e1f3a4b";
    let body = multipart(
        boundary,
        &[
            text_part("snis", "a.example.com"),
            file_part("cert", "c.crt", "application/x-x509-ca-cert", &leaf.cert),
            file_part(
                "key",
                "c.key",
                "application/x-iwork-keynote-sffkey",
                &leaf.key,
            ),
        ],
    );
    let created = raw(
        admin,
        Method::POST,
        "/certificates",
        &format!("multipart/form-data; boundary={boundary}"),
        body,
    )
    .await?;
    expect(&created, 201);
    assert_eq!(
        text(&created.body, "cert")?,
        leaf.cert,
        "cert byte for byte"
    );
    assert_eq!(text(&created.body, "key")?, leaf.key, "key byte for byte");
    assert_eq!(created.body["snis"], json!(["a.example.com"]));
    assert_eq!(created.body["key_type"], json!("rsa"));

    let by_sni = admin.get("/certificates/a.example.com").await?;
    expect(&by_sni, 200);
    assert_eq!(by_sni.body["id"], created.body["id"]);
    assert_eq!(text(&by_sni.body, "cert")?, leaf.cert);
    assert_eq!(by_sni.body["snis"], json!(["a.example.com"]));
    let snis = admin.get("/snis/a.example.com").await?;
    expect(&snis, 200);
    assert_eq!(snis.body["certificate"], json!({"id": created.body["id"]}));

    // The same certificate replaced through PUT by its SNI name, as multipart, with a
    // second SNI given as a repeated field.
    let boundary = "0f4c1e7d2b9a4c6e8d3f5a7b9c1e2d4f";
    let body = multipart(
        boundary,
        &[
            text_part("snis", "a.example.com"),
            text_part("snis", "b.example.com"),
            file_part("cert", "c.crt", "application/x-x509-ca-cert", &leaf.cert),
            file_part("key", "c.key", "application/octet-stream", &leaf.key),
        ],
    );
    let replaced = raw(
        admin,
        Method::PUT,
        "/certificates/a.example.com",
        &format!("multipart/form-data; boundary={boundary}"),
        body,
    )
    .await?;
    expect(&replaced, 200);
    assert_eq!(replaced.body["id"], created.body["id"]);
    assert_eq!(
        replaced.body["snis"],
        json!(["a.example.com", "b.example.com"])
    );
    Ok(())
}

#[tokio::test]
async fn real_curl_uploads_a_ca_certificate_file() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let ca = Ca::new("Real Curl CA")?;
    let dir = std::env::temp_dir().join(format!("gh-curl-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("ca.crt");
    std::fs::write(&file, &ca.pem.cert)?;

    // `curl -sS -F cert=@ca.crt <admin>/ca_certificates`, plus `-w` to read the status.
    let output = tokio::process::Command::new("curl")
        .arg("-sS")
        .arg("-w")
        .arg("\n%{http_code}")
        .arg("-F")
        .arg(format!("cert=@{}", file.display()))
        .arg(format!("{}/ca_certificates", cp.admin_url()))
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .await
        .context("running curl (it must be installed: apt-get install curl)")?;
    std::fs::remove_dir_all(&dir)?;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout)?;
    let Some((json_body, code)) = stdout.rsplit_once('\n') else {
        bail!("unexpected curl output: {stdout}");
    };
    assert_eq!(code, "201", "{stdout}");
    let body: Value = serde_json::from_str(json_body)?;
    assert_eq!(text(&body, "cert")?, ca.pem.cert);
    assert_eq!(body["subject"], json!("CN=Real Curl CA"));
    let listed = cp.admin().get("/ca_certificates").await?;
    assert_eq!(listed.body["data"].as_array().map(Vec::len), Some(1));
    Ok(())
}

#[tokio::test]
async fn multipart_json_part_is_parsed_as_json() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let boundary = "b0undary";
    let body = multipart(
        boundary,
        &[
            text_part("name", "acl"),
            Part {
                headers: "Content-Disposition: form-data; name=\"config\"\r\n\
                          Content-Type: application/json"
                    .to_owned(),
                data: r#"{"allow":["g"],"hide_groups_header":true}"#,
            },
            // Plain parts are still typed by the schema.
            text_part("enabled", "false"),
        ],
    );
    let created = raw(
        admin,
        Method::POST,
        "/plugins",
        &format!("multipart/form-data; boundary={boundary}"),
        body,
    )
    .await?;
    expect(&created, 201);
    assert_eq!(created.body["config"]["allow"], json!(["g"]));
    assert_eq!(created.body["config"]["hide_groups_header"], json!(true));
    assert_eq!(created.body["enabled"], json!(false));

    // A JSON part that is not JSON is refused like a bad JSON body.
    let before = version(admin).await?;
    let body = multipart(
        boundary,
        &[
            text_part("name", "acl"),
            Part {
                headers: "Content-Disposition: form-data; name=\"config\"\r\n\
                          Content-Type: application/json"
                    .to_owned(),
                data: r#"{"allow":["g"]"#,
            },
        ],
    );
    let refused = raw(
        admin,
        Method::POST,
        "/plugins",
        &format!("multipart/form-data; boundary={boundary}"),
        body,
    )
    .await?;
    expect(&refused, 400);
    assert_eq!(refused.body, json!({"message": "Cannot parse JSON body"}));
    assert_eq!(version(admin).await?, before);
    Ok(())
}

// --- limits ---

#[tokio::test]
async fn more_than_1000_arguments_is_too_many() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    let before = version(admin).await?;

    // 1001 arguments: refused, in both form encodings.
    let mut args = vec!["name=svc".to_owned(), "host=a.test".to_owned()];
    args.extend((0..999).map(|i| format!("tags=t{i}")));
    let over = form(admin, Method::POST, "/services", &args.join("&")).await?;
    expect(&over, 400);
    assert_eq!(over.body, json!({"message": "Too many arguments"}));

    let boundary = "manyparts";
    let tags: Vec<String> = (0..999).map(|i| format!("t{i}")).collect();
    let mut parts = vec![text_part("name", "svc"), text_part("host", "a.test")];
    parts.extend(tags.iter().map(|t| text_part("tags", t)));
    let over = raw(
        admin,
        Method::POST,
        "/services",
        &format!("multipart/form-data; boundary={boundary}"),
        multipart(boundary, &parts),
    )
    .await?;
    expect(&over, 400);
    assert_eq!(over.body, json!({"message": "Too many arguments"}));
    assert_eq!(version(admin).await?, before);

    // Exactly 1000 are fine.
    args.pop();
    let at_limit = form(admin, Method::POST, "/services", &args.join("&")).await?;
    expect(&at_limit, 201);
    assert_eq!(at_limit.body["tags"].as_array().map(Vec::len), Some(998));
    Ok(())
}

#[tokio::test]
async fn body_over_admin_max_body_is_413() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start_with(&db, &["--admin-max-body", "1024"], &[]).await?;
    let admin = cp.admin();
    let before = version(admin).await?;

    let big = json!({"name": "svc", "host": "a.test", "tags": ["x".repeat(2000)]});
    let refused = admin.post_json("/services", &big).await?;
    expect(&refused, 413);
    // The unread rest of the body leaves the connection unusable: the client is told.
    assert_eq!(
        refused
            .headers
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close"),
        "{refused:?}"
    );
    let form_body = format!("name=svc&host=a.test&tags={}", "y".repeat(1100));
    let refused = form(admin, Method::POST, "/services", &form_body).await?;
    expect(&refused, 413);
    assert_eq!(version(admin).await?, before);

    // Just under the limit is fine.
    let small = json!({"name": "svc", "host": "a.test", "tags": ["x".repeat(900)]});
    assert!(serde_json::to_vec(&small)?.len() < 1024);
    let created = admin.post_json("/services", &small).await?;
    expect(&created, 201);
    Ok(())
}
