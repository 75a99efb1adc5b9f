//! Who may change the fleet: Admin API authentication (bearer tokens, client certificates),
//! roles, expiry and revocation, TLS, the refusal to expose an unauthenticated API, and the
//! audit trail. Real `gatehouse-cp` processes, real PostgreSQL, real curl over real TLS.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use reqwest::Method;
use serde_json::{Value, json};

use gatehouse_tests::certs::{Algorithm, Ca, Pem, self_signed};
use gatehouse_tests::{ControlPlane, TempDir, TestDb, cp_bin, patience, test_db, wait_until};

const NO_CREDENTIALS: &str = "Invalid credentials. Token or User credentials required";
const INVALID_CREDENTIALS: &str = "Invalid RBAC credentials";
/// Exit code of a bad command line or setting (sysexits `EX_USAGE`).
const EX_USAGE: i32 = 64;

/// Runs `gatehouse-cp <args> --database-url <db>`.
async fn cli(db: &TestDb, args: &[&str]) -> Result<Output> {
    tokio::process::Command::new(cp_bin()?)
        .args(args)
        .args(["--database-url", &db.url])
        .env_remove("GATEHOUSE_ADMIN_AUTH")
        .output()
        .await
        .context("running gatehouse-cp")
}

/// Creates a token and returns it (the only line on stdout).
async fn create_token(db: &TestDb, name: &str, role: &str, expires_in: &str) -> Result<String> {
    let out = cli(
        db,
        &[
            "admin-token",
            "create",
            "--name",
            name,
            "--role",
            role,
            "--expires-in",
            expires_in,
        ],
    )
    .await?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        out.status.success() && stdout.starts_with("gh_") && !stdout.contains('\n'),
        "admin-token create: {:?} {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// How a test request authenticates.
#[derive(Clone, Copy)]
enum Cred<'a> {
    None,
    Bearer(&'a str),
    Kong(&'a str),
    Raw(&'a str),
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(cp: &ControlPlane) -> Result<Self> {
        Ok(Self {
            base: cp.admin_url(),
            client: reqwest::Client::builder().no_proxy().build()?,
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        cred: Cred<'_>,
        body: Option<Value>,
    ) -> Result<(u16, reqwest::header::HeaderMap, Value)> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        request = match cred {
            Cred::None => request,
            Cred::Bearer(token) => request.bearer_auth(token),
            Cred::Kong(token) => request.header("Kong-Admin-Token", token),
            Cred::Raw(value) => request.header("Authorization", value),
        };
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, headers, body))
    }

    async fn version(&self, token: &str) -> Result<i64> {
        let (status, _, body) = self
            .send(Method::GET, "/status", Cred::Bearer(token), None)
            .await?;
        ensure!(status == 200, "GET /status: {status} {body}");
        body["configuration"]["config_version"]
            .as_i64()
            .or_else(|| body["config_version"].as_i64())
            .with_context(|| format!("no config version in {body}"))
    }

    /// Every row of `/audit`, following `next`, `size` rows per page.
    async fn audit(&self, token: &str, size: usize) -> Result<Vec<Value>> {
        let mut rows = Vec::new();
        let mut path = format!("/audit?size={size}");
        loop {
            let (status, _, body) = self
                .send(Method::GET, &path, Cred::Bearer(token), None)
                .await?;
            ensure!(status == 200, "GET {path}: {status} {body}");
            let page = body["data"].as_array().context("no data")?;
            ensure!(page.len() <= size, "page larger than size: {body}");
            rows.extend(page.iter().cloned());
            match body["next"].as_str() {
                Some(next) => path = next.to_owned(),
                None => return Ok(rows),
            }
        }
    }
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn tokens_authenticate_by_role_and_are_refused_once_revoked_or_expired() -> Result<()> {
    let db = test_db().await?;
    let writer = create_token(&db, "deployer", "read-write", "1d").await?;
    let reader = create_token(&db, "auditor", "read-only", "1d").await?;
    let brief = create_token(&db, "brief", "read-write", "3s").await?;
    let cp = ControlPlane::start_with(&db, &["--admin-auth", "on"], &[]).await?;
    let api = Api::new(&cp)?;
    let before = api.version(&writer).await?;

    // No credential, a wrong one, another scheme: 401 as Kong's RBAC, with a challenge.
    let (status, headers, body) = api.send(Method::GET, "/services", Cred::None, None).await?;
    assert_eq!((status, message(&body)), (401, NO_CREDENTIALS));
    assert!(
        headers
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap_or_default().starts_with("Bearer")),
        "{headers:?}"
    );
    let wrong = "gh_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (status, _, body) = api
        .send(Method::GET, "/services", Cred::Bearer(wrong), None)
        .await?;
    assert_eq!((status, message(&body)), (401, INVALID_CREDENTIALS));
    let (status, _, body) = api
        .send(Method::GET, "/", Cred::Raw("Basic dXNlcjpwYXNz"), None)
        .await?;
    assert_eq!((status, message(&body)), (401, NO_CREDENTIALS));
    // A write without a credential changes nothing.
    let service = json!({"name": "svc", "url": "http://127.0.0.1:9/"});
    let (status, _, _) = api
        .send(Method::POST, "/services", Cred::None, Some(service.clone()))
        .await?;
    assert_eq!(status, 401);

    // A read-only token reads, and may not write: 403, nothing written, no version bump.
    let (status, _, body) = api
        .send(Method::GET, "/services", Cred::Bearer(&reader), None)
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = api
        .send(
            Method::POST,
            "/services",
            Cred::Kong(&reader),
            Some(service.clone()),
        )
        .await?;
    assert_eq!(
        (status, message(&body)),
        (
            403,
            "auditor, you do not have permissions to create this resource"
        )
    );
    assert_eq!(
        api.version(&writer).await?,
        before,
        "a refused write bumped the version"
    );
    let (status, _, body) = api
        .send(Method::DELETE, "/services/svc", Cred::Bearer(&reader), None)
        .await?;
    assert_eq!(
        (status, message(&body)),
        (
            403,
            "auditor, you do not have permissions to delete this resource"
        )
    );

    // A read-write token writes, by either header.
    let (status, _, body) = api
        .send(
            Method::POST,
            "/services",
            Cred::Kong(&writer),
            Some(service),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let service_id = body["id"].as_str().context("service id")?.to_owned();
    let pem = self_signed(&["audit.example.com"], Algorithm::Ecdsa, 30)?;
    let (status, _, body) = api
        .send(
            Method::POST,
            "/certificates",
            Cred::Bearer(&writer),
            Some(json!({"cert": pem.cert, "key": pem.key, "snis": ["audit.example.com"]})),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let cert_id = body["id"].as_str().context("certificate id")?.to_owned();
    let (status, _, body) = api
        .send(
            Method::PATCH,
            &format!("/certificates/{cert_id}"),
            Cred::Bearer(&writer),
            Some(json!({"tags": ["audited"]})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = api
        .send(
            Method::DELETE,
            &format!("/certificates/{cert_id}"),
            Cred::Bearer(&writer),
            None,
        )
        .await?;
    assert_eq!(status, 204);

    // The audit trail: one row per committed write, in order, attributed, no key material.
    let rows = api.audit(&reader, 2).await?;
    let summary: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["actor"].as_str().unwrap_or_default().to_owned(),
                r["action"].as_str().unwrap_or_default().to_owned(),
                r["entity"].as_str().unwrap_or_default().to_owned(),
                r["entity_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let row = |action: &str, entity: &str, id: &str| {
        (
            "deployer".to_owned(),
            action.to_owned(),
            entity.to_owned(),
            id.to_owned(),
        )
    };
    assert_eq!(
        summary,
        vec![
            row("create", "services", &service_id),
            row("create", "certificates", &cert_id),
            row("update", "certificates", &cert_id),
            row("delete", "certificates", &cert_id),
        ]
    );
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["auth"], "token", "{r}");
        assert!(
            r["remote_addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{r}"
        );
        assert_eq!(
            r["config_version"].as_i64(),
            Some(before + 1 + i as i64),
            "{r}"
        );
    }
    let filtered = api
        .send(
            Method::GET,
            &format!("/audit?entity_id={cert_id}"),
            Cred::Bearer(&reader),
            None,
        )
        .await?
        .2;
    assert_eq!(
        filtered["data"].as_array().map(Vec::len),
        Some(3),
        "{filtered}"
    );
    let client = db.client().await?;
    let dump: String = client
        .query_one(
            "SELECT coalesce(string_agg(a::text, ' '), '') FROM audit_log a",
            &[],
        )
        .await?
        .get(0);
    let key_body = pem.key.lines().nth(1).context("key line")?;
    for haystack in [dump.as_str(), &serde_json::to_string(&rows)?, &cp.logs()] {
        assert!(
            !haystack.contains("PRIVATE KEY"),
            "key material in {haystack}"
        );
        assert!(!haystack.contains(key_body), "key material in {haystack}");
    }
    assert!(cp.logs().contains("admin write"), "no audit log line");

    // Tokens are stored as hashes only.
    let stored: String = client
        .query_one(
            "SELECT string_agg(c::text, ' ') FROM admin_credentials c",
            &[],
        )
        .await?
        .get(0);
    for token in [&writer, &reader, &brief] {
        assert!(!stored.contains(token.as_str()), "a token stored in clear");
        assert!(!cp.logs().contains(token.as_str()), "a token in the log");
    }

    // Revocation: refused on the very next request.
    let out = cli(&db, &["admin-token", "revoke", "auditor"]).await?;
    assert!(out.status.success(), "{out:?}");
    let (status, _, body) = api
        .send(Method::GET, "/services", Cred::Bearer(&reader), None)
        .await?;
    assert_eq!((status, message(&body)), (401, INVALID_CREDENTIALS));

    // Expiry: the 3-second token works, then is refused.
    wait_until("the brief token to expire", patience(), || async {
        let (status, _, _) = api
            .send(Method::GET, "/services", Cred::Bearer(&brief), None)
            .await?;
        Ok((status == 401).then_some(()))
    })
    .await?;
    assert!(
        cp.logs().contains("token 'brief' is expired"),
        "{}",
        cp.logs()
    );
    assert!(cp.logs().contains("token 'auditor' is revoked"));

    // The CLI lists them with their states, never a secret.
    let out = cli(&db, &["admin-token", "list", "--json"]).await?;
    let listed: Value = serde_json::from_slice(&out.stdout)?;
    let states: Vec<(String, String)> = listed
        .as_array()
        .context("list")?
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("deployer".to_owned(), "active".to_owned()),
            ("auditor".to_owned(), "revoked".to_owned()),
            ("brief".to_owned(), "expired".to_owned()),
        ]
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("gh_"));
    Ok(())
}

#[tokio::test]
async fn the_cli_refuses_bad_credentials_and_changes_nothing() -> Result<()> {
    let db = test_db().await?;
    for args in [
        &["admin-token", "create", "--name", "x", "--role", "admin"][..],
        &[
            "admin-token",
            "create",
            "--name",
            "bad name",
            "--role",
            "read-only",
        ],
        &[
            "admin-token",
            "create",
            "--name",
            "x",
            "--role",
            "read-only",
            "--expires-in",
            "0s",
        ],
        &["admin-token", "revoke", "nobody"],
        &[
            "admin-cert",
            "add",
            "--subject",
            "",
            "--name",
            "c",
            "--role",
            "read-only",
        ],
    ] {
        let out = cli(&db, args).await?;
        assert_eq!(out.status.code(), Some(EX_USAGE), "{args:?}: {out:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).trim().is_empty());
    }
    create_token(&db, "dup", "read-only", "1d").await?;
    let out = cli(
        &db,
        &[
            "admin-token",
            "create",
            "--name",
            "dup",
            "--role",
            "read-write",
        ],
    )
    .await?;
    assert_eq!(out.status.code(), Some(EX_USAGE), "{out:?}");
    assert!(out.stdout.is_empty(), "a token was printed: {out:?}");
    let count: i64 = db
        .client()
        .await?
        .query_one("SELECT count(*) FROM admin_credentials", &[])
        .await?
        .get(0);
    assert_eq!(count, 1);
    Ok(())
}

#[tokio::test]
async fn a_non_loopback_admin_api_needs_authentication_or_an_explicit_insecure_flag() -> Result<()>
{
    let db = test_db().await?;
    let refused = ControlPlane::start_with(&db, &["--admin-listen", "0.0.0.0:0"], &[]).await;
    let error = format!(
        "{:#}",
        refused.err().context("started without authentication")?
    );
    assert!(
        error.contains("is not a loopback address") && error.contains("--admin-insecure-no-auth"),
        "{error}"
    );
    assert!(error.contains("exit status: 64"), "{error}");

    // Told explicitly: it serves, warns, and audits writes as `anonymous`.
    let cp = ControlPlane::start_with(
        &db,
        &["--admin-listen", "0.0.0.0:0", "--admin-insecure-no-auth"],
        &[],
    )
    .await?;
    assert!(cp.logs().contains("WITHOUT authentication"));
    let api = Api {
        base: format!("http://127.0.0.1:{}", cp.admin_addr().port()),
        client: reqwest::Client::builder().no_proxy().build()?,
    };
    let (status, _, body) = api
        .send(
            Method::POST,
            "/consumers",
            Cred::None,
            Some(json!({"username": "alice"})),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let (_, _, audit) = api.send(Method::GET, "/audit", Cred::None, None).await?;
    assert_eq!(audit["data"][0]["actor"], "anonymous", "{audit}");
    assert_eq!(audit["data"][0]["auth"], "none", "{audit}");
    cp.stop().await?;

    // With authentication on, the same address is fine.
    let cp = ControlPlane::start_with(
        &db,
        &["--admin-listen", "0.0.0.0:0", "--admin-auth", "on"],
        &[],
    )
    .await?;
    assert!(cp.logs().contains("bearer tokens travel in clear"));
    Ok(())
}

/// `curl` against the TLS Admin API at `port` as `localhost`.
async fn curl(
    port: u16,
    server_ca: &Path,
    client: Option<(&Path, &Path)>,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(i32, u16, String)> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(server_ca)
        .args(["-X", method]);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    if let Some(body) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data", body]);
    }
    cmd.arg(format!("https://localhost:{port}{path}"));
    let out = cmd.output().await.context("running curl")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    Ok((
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_owned(),
    ))
}

fn write(dir: &TempDir, name: &str, pem: &Pem) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cert = dir.join(&format!("{name}.crt"));
    let key = dir.join(&format!("{name}.key"));
    std::fs::write(&cert, &pem.cert)?;
    std::fs::write(&key, &pem.key)?;
    Ok((cert, key))
}

#[tokio::test]
async fn client_certificates_from_the_configured_ca_authenticate_over_tls() -> Result<()> {
    let dir = TempDir::new("admin-tls")?;
    let server_ca = Ca::new("Admin server CA")?;
    let (server_cert, server_key) = write(
        &dir,
        "server",
        &server_ca.leaf(&["localhost"], Algorithm::Ecdsa, 30)?,
    )?;
    let server_ca_path = dir.join("server-ca.crt");
    std::fs::write(&server_ca_path, &server_ca.pem.cert)?;
    let client_ca = Ca::new("Admin client CA")?;
    let client_ca_path = dir.join("client-ca.crt");
    std::fs::write(&client_ca_path, &client_ca.pem.cert)?;
    let alice = write(
        &dir,
        "alice",
        &client_ca.leaf(&["alice.admin.example"], Algorithm::Ecdsa, 30)?,
    )?;
    let mallory = write(
        &dir,
        "mallory",
        &client_ca.leaf(&["mallory.admin.example"], Algorithm::Ecdsa, 30)?,
    )?;
    let other_ca = Ca::new("Another CA")?;
    let forged = write(
        &dir,
        "forged",
        &other_ca.leaf(&["alice.admin.example"], Algorithm::Ecdsa, 30)?,
    )?;

    let db = test_db().await?;
    let out = cli(
        &db,
        &[
            "admin-cert",
            "add",
            "--subject",
            "alice.admin.example",
            "--name",
            "alice",
            "--role",
            "read-write",
        ],
    )
    .await?;
    assert!(out.status.success(), "{out:?}");
    let reader = create_token(&db, "reader", "read-only", "1d").await?;
    // A registration that expires within seconds (the certificate itself is valid for 30 days).
    let brief = write(
        &dir,
        "brief",
        &client_ca.leaf(&["brief.admin.example"], Algorithm::Ecdsa, 30)?,
    )?;
    let out = cli(
        &db,
        &[
            "admin-cert",
            "add",
            "--subject",
            "brief.admin.example",
            "--name",
            "brief",
            "--role",
            "read-only",
            "--expires-in",
            "8s",
        ],
    )
    .await?;
    assert!(out.status.success(), "{out:?}");
    let cp = ControlPlane::start_with(
        &db,
        &[
            "--admin-auth",
            "on",
            "--admin-ssl-cert",
            server_cert.to_str().context("path")?,
            "--admin-ssl-cert-key",
            server_key.to_str().context("path")?,
            "--admin-client-ca-cert",
            client_ca_path.to_str().context("path")?,
        ],
        &[],
    )
    .await?;
    let port = cp.admin_addr().port();
    let consumer = r#"{"username": "bob"}"#;
    let alice = (alice.0.as_path(), alice.1.as_path());

    // A registered subject from the configured CA writes.
    let (exit, status, body) = curl(
        port,
        &server_ca_path,
        Some(alice),
        None,
        "POST",
        "/consumers",
        Some(consumer),
    )
    .await?;
    assert_eq!((exit, status), (0, 201), "{body}");

    // The same name from another CA: the handshake is refused, nothing is written.
    let (exit, status, body) = curl(
        port,
        &server_ca_path,
        Some((&forged.0, &forged.1)),
        None,
        "POST",
        "/consumers",
        Some(r#"{"username": "eve"}"#),
    )
    .await?;
    assert!(exit != 0 && status == 0, "{exit} {status} {body}");
    // The configured CA, but a subject nobody registered: 401.
    let (_, status, body) = curl(
        port,
        &server_ca_path,
        Some((&mallory.0, &mallory.1)),
        None,
        "GET",
        "/consumers",
        None,
    )
    .await?;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains(INVALID_CREDENTIALS), "{body}");
    // No certificate, no token: 401; a token over TLS works.
    let (_, status, body) =
        curl(port, &server_ca_path, None, None, "GET", "/consumers", None).await?;
    assert_eq!(status, 401, "{body}");
    let (_, status, body) = curl(
        port,
        &server_ca_path,
        None,
        Some(&reader),
        "GET",
        "/consumers",
        None,
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body)?;
    let names: Vec<&str> = listed["data"]
        .as_array()
        .context("data")?
        .iter()
        .filter_map(|c| c["username"].as_str())
        .collect();
    assert_eq!(names, vec!["bob"], "eve was written: {listed}");
    // Plain HTTP to the TLS port gets no answer from the API.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(format!("http://127.0.0.1:{port}/consumers"))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| r.status().as_u16() != 200),
        "{plain:?}"
    );

    // The audit names the certificate's registration.
    let (_, _, body) = curl(
        port,
        &server_ca_path,
        None,
        Some(&reader),
        "GET",
        "/audit?entity=consumers",
        None,
    )
    .await?;
    let audit: Value = serde_json::from_str(&body)?;
    assert_eq!(audit["data"].as_array().map(Vec::len), Some(1), "{audit}");
    assert_eq!(audit["data"][0]["actor"], "alice");
    assert_eq!(audit["data"][0]["auth"], "certificate");

    // An expired registration: its certificate authenticated, then is refused.
    let brief = (brief.0.as_path(), brief.1.as_path());
    let (_, status, body) = curl(
        port,
        &server_ca_path,
        Some(brief),
        None,
        "GET",
        "/consumers",
        None,
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    wait_until("the brief registration to expire", patience(), || async {
        let (_, status, _) = curl(
            port,
            &server_ca_path,
            Some(brief),
            None,
            "GET",
            "/consumers",
            None,
        )
        .await?;
        Ok((status == 401).then_some(()))
    })
    .await?;

    // Revoked: the next request with the same certificate is refused.
    let out = cli(&db, &["admin-cert", "revoke", "alice"]).await?;
    assert!(out.status.success(), "{out:?}");
    let (_, status, body) =
        curl(port, &server_ca_path, Some(alice), None, "GET", "/", None).await?;
    assert_eq!(status, 401, "{body}");
    let out = cli(&db, &["admin-cert", "list"]).await?;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("alice.admin.example") && listed.contains("revoked"),
        "{listed}"
    );
    if cp.logs().contains("PRIVATE KEY") {
        bail!("key material in the log");
    }
    Ok(())
}
