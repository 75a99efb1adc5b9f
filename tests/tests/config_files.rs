//! Configuration as files: Kong's declarative format, as decK writes it for Kong 3.x, exported
//! and imported whole (`gatehouse-cp config export|import|diff`, `GET/POST /config`) against a
//! real PostgreSQL and a real control plane.

use std::path::Path;
use std::process::Output;

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde_json::{Value, json};

use gatehouse_tests::certs::{Algorithm, Ca, self_signed};
use gatehouse_tests::{ControlPlane, TempDir, config_version, cp_bin, test_db};

const CA_ID: &str = "0b4cbd8e-8b8f-4b9e-9a53-6f2d1c8f0a01";
const CERT_ID: &str = "6c2f4a1e-3d5b-4c7a-8e9f-0a1b2c3d4e5f";

/// Indents a PEM block for a YAML block scalar.
fn block(pem: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    pem.trim_end()
        .lines()
        .map(|line| format!("{pad}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A file as `deck gateway dump` writes one for Kong 3.x: `_format_version`, `_transform`,
/// entities nested under their parents, references by name, `tags`, certificates with their
/// SNIs as `{name}` objects, ids only on entities without a name.
fn deck_file(ca: &Ca, server_cert: &str, server_key: &str) -> String {
    format!(
        r#"_format_version: "3.0"
_transform: true
ca_certificates:
- cert: |-
{ca}
  id: {CA_ID}
  tags:
  - clients
certificates:
- cert: |-
{cert}
  id: {CERT_ID}
  key: |-
{key}
  snis:
  - name: api.example.com
  - name: www.example.com
  tags:
  - edge
consumers:
- username: alice
  custom_id: a-1
  acls:
  - group: admins
    tags:
    - team-a
  mtls_auth_credentials:
  - subject_name: alice@example.com
    ca_certificate: {CA_ID}
- username: bob
  acls:
  - group: readers
plugins:
- name: mtls-auth
  config:
    ca_certificates:
    - {CA_ID}
    skip_consumer_lookup: false
  enabled: true
  protocols:
  - https
services:
- name: billing
  host: billing.internal
  port: 8080
  protocol: http
  connect_timeout: 60000
  read_timeout: 60000
  write_timeout: 60000
  retries: 5
  tags:
  - billing
  routes:
  - name: billing-api
    hosts:
    - api.example.com
    paths:
    - /billing
    protocols:
    - http
    - https
    strip_path: true
    preserve_host: false
    https_redirect_status_code: 426
    regex_priority: 0
    plugins:
    - name: acl
      config:
        allow:
        - admins
      enabled: true
- name: web
  url: https://web.internal:8443/app
  client_certificate: {CERT_ID}
  routes:
  - name: web-root
    paths:
    - /
upstreams:
- name: web.internal
  algorithm: round-robin
  slots: 10000
  targets:
  - target: 10.0.0.1:8443
    weight: 100
  - target: 10.0.0.2:8443
    weight: 50
"#,
        ca = block(&ca.pem.cert, 4),
        cert = block(server_cert, 4),
        key = block(server_key, 4),
    )
}

/// Runs `gatehouse-cp config ARGS --database-url URL`, feeding `stdin`.
fn cli(db_url: &str, args: &[&str]) -> Result<Output> {
    let output = std::process::Command::new(cp_bin()?)
        .arg("config")
        .args(args)
        .args(["--database-url", db_url, "--log-level", "warn"])
        .output()
        .context("running gatehouse-cp config")?;
    Ok(output)
}

fn ok_stdout(output: Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "gatehouse-cp config failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn export(db_url: &str, format: &str) -> Result<String> {
    ok_stdout(cli(db_url, &["export", "--format", format])?)
}

fn write(dir: &Path, name: &str, text: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

async fn post_config(cp: &ControlPlane, query: &str, body: &str, yaml: bool) -> Result<Value> {
    let content_type = if yaml {
        "application/x-yaml"
    } else {
        "application/json"
    };
    let response = cp
        .admin()
        .send(
            cp.admin()
                .request(Method::POST, &format!("/config{query}"))
                .header("content-type", content_type)
                .body(body.to_owned()),
        )
        .await?;
    Ok(json!({"status": response.status, "body": response.body}))
}

#[tokio::test]
async fn deck_file_imports_in_one_version_and_round_trips_byte_identical() -> Result<()> {
    let db = test_db().await?;
    let other_db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let dir = TempDir::new("config-files")?;
    let ca = Ca::new("Clients CA")?;
    let server = self_signed(&["api.example.com"], Algorithm::Ecdsa, 90)?;
    let file = deck_file(&ca, &server.cert, &server.key);

    // Something the file does not declare is deleted by the import.
    let stale = cp
        .admin()
        .post_form(
            "/services",
            &[("name", "stale"), ("url", "http://old.internal")],
        )
        .await?;
    assert_eq!(stale.status, 201, "{stale:?}");
    let before = config_version(cp.admin()).await?;

    let answer = post_config(&cp, "", &file, true).await?;
    assert_eq!(answer["status"], 201, "{answer:#}");
    let body = &answer["body"];
    assert_eq!(body["config_version"], before + 1, "one version: {body:#}");
    assert_eq!(body["committed"], true);
    // 1 CA + 1 certificate + 2 consumers + 2 acls + 1 mtls credential + 2 global/route plugins
    // + 2 services + 2 routes + 1 upstream + 2 targets = 16 creates; `stale` deleted.
    assert_eq!(body["created"], 16, "{body:#}");
    assert_eq!(body["deleted"], 1, "{body:#}");
    assert_eq!(config_version(cp.admin()).await?, before + 1);

    // What the Admin API shows is what the file says, references by name resolved.
    let route = cp.admin().get("/routes/billing-api").await?;
    assert_eq!(route.status, 200, "{route:?}");
    let billing = cp.admin().get("/services/billing").await?;
    assert_eq!(route.body["service"]["id"], billing.body["id"]);
    let web = cp.admin().get("/services/web").await?;
    assert_eq!(web.body["protocol"], "https");
    assert_eq!(web.body["port"], 8443);
    assert_eq!(web.body["client_certificate"]["id"], CERT_ID);
    let cert = cp.admin().get("/certificates/www.example.com").await?;
    assert_eq!(cert.body["id"], CERT_ID);
    assert_eq!(
        cert.body["snis"],
        json!(["api.example.com", "www.example.com"])
    );
    let acls = cp.admin().get("/consumers/alice/acls").await?;
    assert_eq!(acls.body["data"][0]["group"], "admins");
    assert_eq!(acls.body["data"][0]["tags"], json!(["team-a"]));
    let targets = cp.admin().get("/upstreams/web.internal/targets").await?;
    assert_eq!(targets.body["data"].as_array().map(Vec::len), Some(2));
    let plugins = cp.admin().get("/routes/billing-api/plugins").await?;
    assert_eq!(plugins.body["data"][0]["name"], "acl");
    assert_eq!(cp.admin().get("/services/stale").await?.status, 404);

    // export → import → export: byte-identical, and the import changes nothing.
    let exported = export(&db.url, "yaml")?;
    assert!(exported.starts_with("_format_version: "), "{exported}");
    let path = write(dir.path(), "exported.yaml", &exported)?;
    let report = ok_stdout(cli(&db.url, &["import", &path])?)?;
    assert!(
        report.contains("0 to create, 0 to update, 0 to delete"),
        "{report}"
    );
    assert!(report.contains("nothing to change"), "{report}");
    assert_eq!(config_version(cp.admin()).await?, before + 1);
    assert_eq!(export(&db.url, "yaml")?, exported, "second export differs");

    // The same file into an empty database gives the same export, in YAML and JSON.
    let json_export = export(&db.url, "json")?;
    let report = ok_stdout(cli(&other_db.url, &["import", &path])?)?;
    assert!(report.contains("16 to create"), "{report}");
    assert_eq!(export(&other_db.url, "yaml")?, exported);
    assert_eq!(export(&other_db.url, "json")?, json_export);
    let json_path = write(dir.path(), "exported.json", &json_export)?;
    let report = ok_stdout(cli(&other_db.url, &["diff", &json_path])?)?;
    assert!(
        report.contains("0 to create, 0 to update, 0 to delete"),
        "{report}"
    );

    // GET /config is Kong's `{"config": "<yaml>"}`, the same text.
    let got = cp.admin().get("/config").await?;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["config"], Value::String(exported.clone()));
    Ok(())
}

#[tokio::test]
async fn invalid_file_reports_every_error_with_its_path_and_writes_nothing() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let kept = cp
        .admin()
        .post_form(
            "/services",
            &[("name", "kept"), ("url", "http://kept.internal")],
        )
        .await?;
    assert_eq!(kept.status, 201);
    let before = config_version(cp.admin()).await?;
    let wrong_key = self_signed(&["other.example.com"], Algorithm::Ecdsa, 30)?;
    let server = self_signed(&["a.example.com"], Algorithm::Ecdsa, 30)?;

    let file = json!({
        "_format_version": "3.0",
        "services": [
            {"name": "good", "host": "good.internal"},
            {"name": "bad-port", "host": "x.internal", "port": 99999},
            {"name": "with-routes", "host": "y.internal", "routes": [
                {"name": "fine", "paths": ["/fine"]},
                {"name": "no-match-field", "protocols": ["http"]},
            ]},
            {"name": "good", "host": "duplicate.internal"},
        ],
        "consumers": [{"username": "carol", "acls": [{"tags": ["x"]}]}],
        "certificates": [{"cert": server.cert, "key": wrong_key.key, "snis": [{"name": "a.example.com"}]}],
        "plugins": [{"name": "no-such-plugin"}],
    });
    let answer = post_config(&cp, "", &file.to_string(), false).await?;
    assert_eq!(answer["status"], 400, "{answer:#}");
    let body = &answer["body"];
    assert_eq!(body["code"], 14, "{body:#}");
    assert_eq!(body["name"], "invalid declarative configuration");
    let flattened = body["flattened_errors"]
        .as_array()
        .context("flattened_errors")?;
    let find = |path: &str| {
        flattened
            .iter()
            .find(|e| e["path"] == path)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let port = find("services[1]");
    assert_eq!(port["entity_type"], "service", "{body:#}");
    assert_eq!(port["entity_name"], "bad-port");
    assert_eq!(port["errors"][0]["field"], "port", "{port:#}");
    assert_eq!(port["errors"][0]["type"], "field");
    let route = find("services[2].routes[1]");
    assert_eq!(route["entity_type"], "route", "{body:#}");
    assert_eq!(route["errors"][0]["type"], "entity", "{route:#}");
    let duplicate = find("services[3]");
    assert!(
        duplicate["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("UNIQUE")),
        "{body:#}"
    );
    let acl = find("consumers[0].acls[0]");
    assert_eq!(acl["errors"][0]["field"], "group", "{body:#}");
    let cert = find("certificates[0]");
    assert_eq!(cert["entity_type"], "certificate", "{body:#}");
    assert_eq!(cert["entity"]["key"], "[redacted]");
    let plugin = find("plugins[0]");
    assert_eq!(plugin["errors"][0]["field"], "name", "{body:#}");
    assert_eq!(flattened.len(), 6, "exactly the bad entities: {body:#}");
    // The same errors nested as the file.
    assert!(
        body["fields"]["services"][1]["port"].is_string(),
        "{body:#}"
    );
    assert!(body["fields"]["services"][2]["routes"][1]["@entity"].is_array());
    assert!(body["fields"]["services"][0].is_null());
    // Never a private key in an answer.
    assert!(!body.to_string().contains("PRIVATE KEY"));

    // Nothing was written: no version, the old service still there, none of the new ones.
    assert_eq!(config_version(cp.admin()).await?, before);
    assert_eq!(cp.admin().get("/services/kept").await?.status, 200);
    assert_eq!(cp.admin().get("/services/good").await?.status, 404);
    assert_eq!(cp.admin().get("/routes/fine").await?.status, 404);

    // Problems with the file as a whole: its format version, entities Gatehouse has not.
    let answer = post_config(&cp, "", r#"{"services": []}"#, false).await?;
    assert_eq!(answer["status"], 400);
    assert_eq!(
        answer["body"]["fields"]["_format_version"],
        "required field missing"
    );
    let answer = post_config(
        &cp,
        "",
        "_format_version: \"3.0\"\nvaults:\n- name: env\n  prefix: e\n",
        true,
    )
    .await?;
    assert_eq!(answer["status"], 400, "{answer:#}");
    assert!(answer["body"]["fields"]["vaults"].is_string(), "{answer:#}");
    let answer = post_config(&cp, "", "_format_version: [unclosed\n", true).await?;
    assert_eq!(answer["status"], 400, "{answer:#}");
    assert_eq!(answer["body"]["code"], 14);

    // The CLI refuses the same file with the same errors and exit code 1.
    let dir = TempDir::new("config-files-bad")?;
    let path = write(dir.path(), "bad.json", &file.to_string())?;
    let output = cli(&db.url, &["import", &path])?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("services[2].routes[1]"), "{stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    assert_eq!(config_version(cp.admin()).await?, before);
    Ok(())
}

#[tokio::test]
async fn check_hash_answers_304_and_dry_run_shows_the_diff() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let file = json!({
        "_format_version": "3.0",
        "services": [{"name": "a", "host": "a.internal", "routes": [{"name": "a-root", "paths": ["/a"]}]}],
        "consumers": [{"username": "dave"}],
    });
    let first = post_config(&cp, "?check_hash=1", &file.to_string(), false).await?;
    assert_eq!(first["status"], 201, "{first:#}");
    let version = config_version(cp.admin()).await?;

    // The same file again: nothing would change.
    let again = post_config(&cp, "?check_hash=1", &file.to_string(), false).await?;
    assert_eq!(again["status"], 304, "{again:#}");
    assert_eq!(config_version(cp.admin()).await?, version);
    let updated_at = cp.admin().get("/services/a").await?.body["updated_at"].clone();

    // A changed file, dry run: the diff, nothing written.
    let changed = json!({
        "_format_version": "3.0",
        "services": [{"name": "a", "host": "a2.internal", "routes": [{"name": "a-root", "paths": ["/a"]}]},
                     {"name": "b", "host": "b.internal"}],
    });
    let dry = post_config(&cp, "?dry_run=1", &changed.to_string(), false).await?;
    assert_eq!(dry["status"], 200, "{dry:#}");
    let body = &dry["body"];
    assert_eq!(
        (
            body["created"].clone(),
            body["updated"].clone(),
            body["deleted"].clone()
        ),
        (json!(1), json!(1), json!(1)),
        "{body:#}"
    );
    let changes = body["changes"].as_array().context("changes")?;
    assert!(
        changes
            .iter()
            .any(|c| c["action"] == "delete" && c["entity"] == "consumers" && c["name"] == "dave")
    );
    assert!(
        changes
            .iter()
            .any(|c| c["action"] == "update" && c["entity"] == "services" && c["name"] == "a")
    );
    assert!(
        changes
            .iter()
            .any(|c| c["action"] == "create" && c["entity"] == "services" && c["name"] == "b")
    );
    assert_eq!(config_version(cp.admin()).await?, version);
    assert_eq!(
        cp.admin().get("/services/a").await?.body["host"],
        "a.internal"
    );
    assert_eq!(
        cp.admin().get("/services/a").await?.body["updated_at"],
        updated_at
    );

    // Applied with check_hash: it changes something, so it is applied (one version); the
    // untouched route keeps its id.
    let route_id = cp.admin().get("/routes/a-root").await?.body["id"].clone();
    let applied = post_config(&cp, "?check_hash=1", &changed.to_string(), false).await?;
    assert_eq!(applied["status"], 201, "{applied:#}");
    assert_eq!(config_version(cp.admin()).await?, version + 1);
    assert_eq!(
        cp.admin().get("/services/a").await?.body["host"],
        "a2.internal"
    );
    assert_eq!(cp.admin().get("/routes/a-root").await?.body["id"], route_id);
    assert_eq!(cp.admin().get("/consumers/dave").await?.status, 404);

    // Writes by the file are in the audit trail, all with the one version.
    let audit = cp.admin().get("/audit?size=1000").await?;
    let rows: Vec<&Value> = audit.body["data"]
        .as_array()
        .context("audit rows")?
        .iter()
        .filter(|r| r["config_version"] == version + 1)
        .collect();
    assert_eq!(rows.len(), 3, "{audit:?}");
    Ok(())
}
