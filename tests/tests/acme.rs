//! ACME on the control plane, end to end: Debian's `pebble` ACME test server and its
//! `pebble-challtestsrv` DNS server as real processes (no `PEBBLE_VA_ALWAYS_VALID`: pebble
//! validates every challenge against the data planes' real listeners), a real control plane on
//! PostgreSQL, real data planes, and the issued chains verified by rustls against pebble's
//! root from its management API.
//!
//! The names `*.acme.test` resolve through pebble-challtestsrv: to 127.0.0.1 by default, and
//! per name to another loopback address when a test says so. The two data planes listen on
//! the same HTTP port on 127.0.0.1 and 127.0.0.2, so pebble's validation of a name reaches
//! the data plane that name resolves to.

mod cluster_support;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};

use cluster_support::*;
use gatehouse_tests::certs::{Algorithm, Ca};
use gatehouse_tests::{
    Admin, DataPlane, DataPlaneOptions, Handshake, TempDir, patience, tls_client_config,
    tls_handshake, wait_until,
};

/// How long an ACME order may take here (pebble answers at once with `PEBBLE_VA_NOSLEEP`).
const ORDER_PATIENCE: Duration = Duration::from_secs(60);

/// pebble and pebble-challtestsrv, killed when dropped.
struct Pebble {
    _pebble: Child,
    _dns: Child,
    dir: TempDir,
    /// The ACME directory URL.
    directory: String,
    /// PEM file of the CA of pebble's own HTTPS certificate (`--acme-ca-bundle`).
    ca_bundle: PathBuf,
    /// pebble's management API (`/roots/0`).
    management: SocketAddr,
    /// pebble-challtestsrv's management API (`/add-a`).
    dns_management: SocketAddr,
}

impl Pebble {
    /// Starts pebble-challtestsrv (answering every A query with 127.0.0.1) and pebble,
    /// validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`.
    async fn start(http_port: u16, tls_port: u16) -> Result<Pebble> {
        Self::start_with_dns(http_port, tls_port, None).await
    }

    /// Like [`Pebble::start`], resolving names with `dns` instead of pebble-challtestsrv.
    async fn start_with_dns(
        http_port: u16,
        tls_port: u16,
        resolver: Option<SocketAddr>,
    ) -> Result<Pebble> {
        for tool in ["pebble", "pebble-challtestsrv"] {
            ensure!(
                which(tool),
                "{tool} is not installed (apt-get install pebble; deploy/test.sh does)"
            );
        }
        let dir = TempDir::new("pebble")?;
        let ca = Ca::new("Pebble HTTPS test CA")?;
        let leaf = ca.leaf(&["127.0.0.1", "localhost"], Algorithm::Ecdsa, 30)?;
        std::fs::write(dir.join("https-ca.pem"), &ca.pem.cert)?;
        std::fs::write(dir.join("https.pem"), &leaf.cert)?;
        std::fs::write(dir.join("https.key"), &leaf.key)?;

        let dns_port = free_udp_port()?;
        let dns_management: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
        let dns = spawn_logged(
            Command::new("pebble-challtestsrv").args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-management",
                &dns_management.to_string(),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ]),
            &dir,
            "challtestsrv",
        )?;
        let listen: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
        let management: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
        let config = json!({"pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": dir.join("https.pem"),
            "privateKey": dir.join("https.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.join("pebble.json"), serde_json::to_vec(&config)?)?;
        let pebble = spawn_logged(
            Command::new("pebble")
                .arg("-config")
                .arg(dir.join("pebble.json"))
                .args([
                    "-dnsserver",
                    &resolver.map_or(format!("127.0.0.1:{dns_port}"), |dns| dns.to_string()),
                ])
                .env("PEBBLE_VA_NOSLEEP", "1")
                // Every order validates anew (pebble reuses valid authorizations at random).
                .env("PEBBLE_AUTHZREUSE", "0")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
            &dir,
            "pebble",
        )?;
        let pebble = Pebble {
            _pebble: pebble,
            _dns: dns,
            directory: format!("https://{listen}/dir"),
            ca_bundle: dir.join("https-ca.pem"),
            management,
            dns_management,
            dir,
        };
        for addr in [listen, management, dns_management] {
            wait_until(&format!("{addr} listening"), patience(), || async move {
                Ok(tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()))
            })
            .await
            .with_context(|| pebble.logs())?;
        }
        Ok(pebble)
    }

    /// pebble's and challtestsrv's output so far.
    fn logs(&self) -> String {
        ["pebble", "challtestsrv"]
            .iter()
            .map(|name| std::fs::read_to_string(self.dir.join(&format!("{name}.log"))))
            .filter_map(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Makes `host` resolve to `ip` only (pebble-challtestsrv's `/clear-a`, `/add-a`).
    async fn resolve(&self, host: &str, ip: &str) -> Result<()> {
        let cleared = reqwest::Client::new()
            .post(format!("http://{}/clear-a", self.dns_management))
            .json(&json!({"host": format!("{host}.")}))
            .send()
            .await?;
        ensure!(
            cleared.status().is_success(),
            "clear-a: {}",
            cleared.status()
        );
        let response = reqwest::Client::new()
            .post(format!("http://{}/add-a", self.dns_management))
            .json(&json!({"host": format!("{host}."), "addresses": [ip]}))
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "add-a: {}",
            response.status()
        );
        Ok(())
    }

    /// pebble's root certificate (PEM), from its management API over verified HTTPS.
    async fn root(&self) -> Result<PathBuf> {
        let path = self.dir.join("root.pem");
        let output = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&self.ca_bundle)
            .arg(format!("https://{}/roots/0", self.management))
            .output()
            .await?;
        ensure!(
            output.status.success(),
            "curl /roots/0: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::write(&path, &output.stdout)?;
        Ok(path)
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

fn spawn_logged(command: &mut Command, dir: &TempDir, name: &str) -> Result<Child> {
    let log = std::fs::File::create(dir.join(&format!("{name}.log")))?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {name}"))
}

fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port free on both 127.0.0.1 and 127.0.0.2 (the two data planes' HTTP listeners).
fn free_port_on_both() -> Result<u16> {
    free_port_on(&["127.0.0.2"])
}

/// A port free on 127.0.0.1 and on each of `others` (loopback addresses).
fn free_port_on(others: &[&str]) -> Result<u16> {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0")?;
        let port = first.local_addr()?.port();
        if others
            .iter()
            .all(|ip| TcpListener::bind((*ip, port)).is_ok())
        {
            return Ok(port);
        }
    }
    bail!("no port free on 127.0.0.1 and {others:?}")
}

/// Lowercase hex SHA-256 of a DER certificate.
fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A cluster (control plane in `pki` mode trusting pebble's HTTPS, certificates for `dps`)
/// with `extra` control-plane arguments.
async fn acme_cluster(pebble: &Pebble, dps: &[&str], extra: &[&str]) -> Result<Cluster> {
    let mut args = vec![
        "--acme-ca-bundle",
        pebble.ca_bundle.to_str().context("path")?,
    ];
    args.extend(extra);
    Cluster::start(dps, &args).await
}

/// Starts a data plane and waits until it is connected.
async fn connected(options: DataPlaneOptions) -> Result<DataPlane> {
    let dp = DataPlane::start(options).await?;
    dp.wait_until_connected(patience()).await?;
    Ok(dp)
}

/// Creates the global `acme` plugin for pebble; returns its id.
async fn acme_plugin(admin: &Admin, pebble: &Pebble, extra: Value) -> Result<String> {
    let mut config = json!({
        "account_email": "ops@acme.test",
        "api_uri": pebble.directory,
        "tos_accepted": true,
        "cert_type": "ecc",
        "domains": ["*.acme.test"],
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    let created = admin
        .post_json("/plugins", &json!({"name": "acme", "config": config}))
        .await?;
    ensure!(created.status == 201, "{created:#?}");
    Ok(created.body["id"].as_str().context("id")?.to_owned())
}

/// The leaf `dp` serves for `host`, verified by rustls against `root` (pebble's root).
async fn served(dp: &DataPlane, host: &str, root: &std::path::Path) -> Result<Vec<u8>> {
    let config = tls_client_config(Some(root), None)?;
    match tls_handshake(dp.proxy_ssl_addr()?, host, config).await? {
        Handshake::Accept { peer_certificates } => Ok(peer_certificates
            .first()
            .context("no certificate")?
            .as_ref()
            .to_vec()),
        Handshake::Refuse(why) => bail!("{host} on {}: {why}", dp.proxy_ssl_addr()?),
    }
}

/// The ACME state of one name (`GET /acme/certificates/{host}`'s `data`).
async fn acme_entry(admin: &Admin, host: &str) -> Result<Value> {
    let listed = admin.get("/acme/certificates").await?;
    ensure!(listed.status == 200, "{listed:#?}");
    listed.body["data"]
        .as_array()
        .context("data")?
        .iter()
        .find(|e| e["host"] == json!(host))
        .cloned()
        .with_context(|| format!("{host} not listed: {}", listed.body))
}

#[tokio::test]
async fn http01_through_two_data_planes_then_renewal_in_place_by_patch_and_threshold() -> Result<()>
{
    let http_port = free_port_on_both()?;
    let pebble = Pebble::start(http_port, free_tcp_port()?).await?;
    let cluster = acme_cluster(&pebble, &["dp1", "dp2"], &["--acme-renew-interval", "1"]).await?;
    let admin = cluster.admin();
    let dp1 = DataPlane::start(
        cluster
            .dp_options("dp1")
            .proxy_listen(&format!("127.0.0.1:{http_port}")),
    )
    .await?;
    let dp2 = DataPlane::start(
        cluster
            .dp_options("dp2")
            .proxy_listen(&format!("127.0.0.2:{http_port}")),
    )
    .await?;
    for dp in [&dp1, &dp2] {
        dp.wait_until_connected(patience()).await?;
    }
    let plugin = acme_plugin(admin, &pebble, json!({})).await?;

    // a.acme.test resolves to dp1, b.acme.test to dp2: each validation reaches one of them.
    pebble.resolve("b.acme.test", "127.0.0.2").await?;
    // Both data planes serve both certificates, each chain verified against pebble's root.
    let root = pebble.root().await?;
    for host in ["a.acme.test", "b.acme.test"] {
        let started = std::time::Instant::now();
        let created = admin.post_json("/acme", &json!({"host": host})).await?;
        assert_eq!(created.status, 201, "{created:#?}\n{}", cluster.cp.logs());
        assert_eq!(
            created.body,
            json!({"message": format!("certificate for host {host} is created")})
        );
        let issued = started.elapsed();
        for dp in [&dp1, &dp2] {
            wait_until(&format!("{host} served"), patience(), || async {
                Ok(served(dp, host, &root).await.ok())
            })
            .await?;
        }
        println!(
            "{host}: POST /acme answered 201 after {issued:?}; both data planes serve it after {:?}",
            started.elapsed()
        );
    }
    assert!(
        !pebble.logs().contains("PEBBLE_VA_ALWAYS_VALID"),
        "pebble must validate for real"
    );

    // Kong's view of it, and an ordinary certificate row tagged for users.
    let entry = acme_entry(admin, "a.acme.test").await?;
    assert_eq!(entry["valid"], json!(true), "{entry}");
    assert_eq!(entry["pubkey_type"], json!("id-ecPublicKey"), "{entry}");
    assert_eq!(entry["failures"], json!(0), "{entry}");
    let one = admin.get("/acme/certificates/a.acme.test").await?;
    assert_eq!(one.status, 200, "{one:#?}");
    assert_eq!(one.body["data"]["digest"], entry["digest"]);
    let missing = admin.get("/acme/certificates/nothing.acme.test").await?;
    assert_eq!(missing.status, 404, "{missing:#?}");
    let tagged = admin.get("/certificates?tags=acme:a.acme.test").await?;
    let rows = tagged.body["data"].as_array().context("data")?.clone();
    assert_eq!(rows.len(), 1, "{}", tagged.body);
    let id = rows[0]["id"].as_str().context("id")?.to_owned();
    assert_eq!(rows[0]["snis"], json!(["a.acme.test"]));
    assert_eq!(
        rows[0]["tags"],
        json!(["managed-by-acme", "acme:a.acme.test"])
    );
    let before = served(&dp1, "a.acme.test", &root).await?;
    assert_eq!(
        rows[0]["fingerprint_sha256"],
        json!(fingerprint(&before)),
        "dp1 serves the stored certificate"
    );

    // PATCH /acme renews in place: same row, same SNI, a new certificate on both data planes,
    // and handshakes keep succeeding meanwhile.
    let patched = admin.patch_json("/acme", &json!({})).await?;
    assert_eq!(patched.status, 202, "{patched:#?}");
    assert_eq!(
        patched.body,
        json!({"message": "Renewal process started successfully"})
    );
    let mut handshakes = 0;
    let renewed = wait_until("a.acme.test renewed on both DPs", ORDER_PATIENCE, || {
        let (dp1, dp2, root, before) = (&dp1, &dp2, &root, &before);
        handshakes += 2;
        async move {
            let one = served(dp1, "a.acme.test", root).await?;
            let two = served(dp2, "a.acme.test", root).await?;
            Ok((one != *before && two == one).then_some(one))
        }
    })
    .await
    .with_context(|| cluster.cp.logs())?;
    println!("{handshakes} verified handshakes during the renewal, none failed");
    let row = admin.get(&format!("/certificates/{id}")).await?;
    assert_eq!(row.status, 200, "the same row");
    assert_eq!(row.body["snis"], json!(["a.acme.test"]));
    assert_eq!(row.body["fingerprint_sha256"], json!(fingerprint(&renewed)));

    // Renewal by threshold: a threshold longer than pebble's validity makes every
    // certificate due at the next pass (--acme-renew-interval 1).
    let patched = admin
        .patch_json(
            &format!("/plugins/{plugin}"),
            &json!({"config": {"renew_threshold_days": 36500}}),
        )
        .await?;
    assert_eq!(patched.status, 200, "{patched:#?}");
    wait_until("b.acme.test renewed by threshold", ORDER_PATIENCE, || {
        let (dp2, root) = (&dp2, &root);
        async move {
            let entry = acme_entry(admin, "b.acme.test").await?;
            let rows = admin.get("/certificates?tags=acme:b.acme.test").await?;
            let stored = rows.body["data"][0]["fingerprint_sha256"].clone();
            let now = served(dp2, "b.acme.test", root).await?;
            // Renewed after the first issuance, and served.
            let renewed_later = entry["last_success_at"].as_i64().unwrap_or(0)
                > rows.body["data"][0]["created_at"]
                    .as_i64()
                    .unwrap_or(i64::MAX);
            Ok((renewed_later && stored == json!(fingerprint(&now))).then_some(()))
        }
    })
    .await
    .with_context(|| cluster.cp.logs())?;

    let logs = cluster.cp.logs();
    assert!(!logs.contains("PRIVATE KEY"), "no key in the logs");
    Ok(())
}

#[tokio::test]
async fn a_failing_validation_backs_off_is_visible_and_keeps_the_old_certificate() -> Result<()> {
    let http_port = free_tcp_port()?;
    let pebble = Pebble::start(http_port, free_tcp_port()?).await?;
    let port = http_port.to_string();
    let cluster = acme_cluster(&pebble, &["dp1"], &["--acme-http-port", &port]).await?;
    let admin = cluster.admin();
    let dp = connected(
        cluster
            .dp_options("dp1")
            .proxy_listen(&format!("127.0.0.1:{http_port}")),
    )
    .await?;

    // Kong's answers without the plugin, and its refusals of scoping and bad input.
    let none = admin
        .post_json("/acme", &json!({"host": "a.acme.test"}))
        .await?;
    assert_eq!(none.status, 404, "{none:#?}");
    let scoped = admin
        .post_json(
            "/plugins",
            &json!({"name": "acme", "consumer": {"id": uuid::Uuid::new_v4()},
                    "config": {"account_email": "ops@acme.test"}}),
        )
        .await?;
    assert_eq!(scoped.status, 400, "{scoped:#?}");
    assert_eq!(
        scoped.body["fields"]["consumer"],
        json!("value must be null")
    );
    let bad = admin
        .post_json(
            "/plugins",
            &json!({"name": "acme", "config": {"account_email": "nobody",
                    "rsa_key_size": 1024, "cert_type": "dsa"}}),
        )
        .await?;
    assert_eq!(bad.status, 400, "{bad:#?}");
    let fields = &bad.body["fields"]["config"];
    assert_eq!(
        fields["account_email"],
        json!("invalid value: nobody"),
        "{bad:#?}"
    );
    assert_eq!(
        fields["rsa_key_size"],
        json!("expected one of: 2048, 3072, 4096")
    );
    assert_eq!(fields["cert_type"], json!("expected one of: rsa, ecc"));
    // Let's Encrypt needs its terms accepted (Kong's entity check).
    let tos = admin
        .post_json(
            "/plugins",
            &json!({"name": "acme", "config": {"account_email": "ops@acme.test",
                    "api_uri": "https://acme-v02.api.letsencrypt.org/directory"}}),
        )
        .await?;
    assert_eq!(tos.status, 400, "{tos:#?}");
    assert_eq!(
        tos.body["fields"]["config"]["tos_accepted"],
        json!("terms of service must be accepted, see https://letsencrypt.org/repository/"),
        "{tos:#?}"
    );

    // The plugin holds account settings: it never reaches data planes, which keep applying.
    let version_before = gatehouse_tests::config_version(admin).await?;
    acme_plugin(
        admin,
        &pebble,
        json!({"fail_backoff_minutes": 10, "domains": ["*.acme.test", "localhost"]}),
    )
    .await?;
    dp.wait_for_applied_log(version_before + 1, patience())
        .await
        .with_context(|| dp.logs())?;
    assert!(!dp.logs().contains("ops@acme.test"));

    // Kong's sanity check, through the data plane (localhost is where the CP finds it):
    // a probe challenge is published and fetched; nothing is ordered.
    let sane = admin
        .post_json(
            "/acme",
            &json!({"host": "localhost", "test_http_challenge_flow": true}),
        )
        .await?;
    assert_eq!(sane.status, 200, "{sane:#?}\n{}", dp.logs());
    assert_eq!(
        sane.body,
        json!({"message": "sanity test for host localhost passed"})
    );
    let outside = admin
        .post_form(
            "/acme",
            &[("host", "other.test"), ("test_http_challenge_flow", "true")],
        )
        .await?;
    assert_eq!(outside.status, 400, "{outside:#?}");
    assert_eq!(
        outside.body,
        json!({"message": "problem found running sanity check for other.test: \
                           host is not included in plugin config.domains"})
    );

    for (body, message) in [
        (
            json!({}),
            "host must be provided and containing a single domain",
        ),
        (
            json!({"host": "a.acme.test:80"}),
            "port is not allowed in host",
        ),
    ] {
        let refused = admin.post_json("/acme", &body).await?;
        assert_eq!(refused.status, 400, "{refused:#?}");
        assert_eq!(refused.body, json!({"message": message}));
    }

    // A new name whose validation fails has no certificate: listed as invalid, with its error.
    pebble.resolve("d.acme.test", "127.0.0.9").await?;
    let failed = admin
        .post_json("/acme", &json!({"host": "d.acme.test"}))
        .await?;
    assert_eq!(failed.status, 500, "{failed:#?}");
    let message = failed.body["message"].as_str().context("message")?;
    assert!(
        message.starts_with("failed to update certificate: validation"),
        "{message}"
    );
    let invalid = admin.get("/acme/certificates?invalid_only=true").await?;
    let hosts: Vec<&str> = invalid.body["data"]
        .as_array()
        .context("data")?
        .iter()
        .filter_map(|e| e["host"].as_str())
        .collect();
    assert_eq!(hosts, ["d.acme.test"], "{invalid:#?}");
    let missing = admin.get("/acme/certificates/d.acme.test").await?;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.body,
        json!({"message": "Certificate for host d.acme.test not found in storage"})
    );
    // A first certificate, then validation breaks: the name resolves where nothing listens.
    let created = admin
        .post_json("/acme", &json!({"host": "c.acme.test"}))
        .await?;
    assert_eq!(created.status, 201, "{created:#?}\n{}", cluster.cp.logs());
    let root = pebble.root().await?;
    let old = wait_until("c.acme.test served", patience(), || async {
        Ok(served(&dp, "c.acme.test", &root).await.ok())
    })
    .await?;
    pebble.resolve("c.acme.test", "127.0.0.9").await?;
    let patched = admin.patch_json("/acme", &json!({})).await?;
    assert_eq!(patched.status, 202);
    let entry = wait_until("the renewal failed", ORDER_PATIENCE, || async {
        let entry = acme_entry(admin, "c.acme.test").await?;
        Ok((entry["failures"].as_i64() == Some(1)).then_some(entry))
    })
    .await
    .with_context(|| cluster.cp.logs())?;
    let error = entry["last_error"].as_str().context("last_error")?;
    assert!(error.contains("validation"), "{entry}");
    // Backing off for fail_backoff_minutes (10), and the old certificate is still valid and
    // still served.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?;
    let next = entry["next_attempt_at"]
        .as_i64()
        .context("next_attempt_at")?;
    assert!((now + 500..=now + 601).contains(&next), "{entry}");
    assert_eq!(entry["valid"], json!(true), "{entry}");
    assert_eq!(served(&dp, "c.acme.test", &root).await?, old);
    let invalid = admin.get("/acme/certificates?invalid_only=true").await?;
    let hosts: Vec<&str> = invalid.body["data"]
        .as_array()
        .context("data")?
        .iter()
        .filter_map(|e| e["host"].as_str())
        .collect();
    assert_eq!(
        hosts,
        ["d.acme.test"],
        "c.acme.test keeps a valid one: {invalid:#?}"
    );
    let status: Value = reqwest::get(format!(
        "{}/status",
        cluster.cp.status_url().context("status listener")?
    ))
    .await?
    .json()
    .await?;
    assert!(
        status["acme"]["orders_failed"].as_u64() >= Some(2),
        "d.acme.test and the renewal of c.acme.test failed: {status}"
    );
    assert!(
        cluster.cp.logs().contains("acme: order failed"),
        "{}",
        cluster.cp.logs()
    );

    assert!(!cluster.cp.logs().contains("PRIVATE KEY"));
    Ok(())
}

#[tokio::test]
async fn tls_alpn01_and_on_demand_issuance_from_a_handshake() -> Result<()> {
    // pebble validates TLS-ALPN-01 on the data plane's HTTPS port; nothing listens on its
    // HTTP-01 port, so only TLS-ALPN-01 can succeed.
    let tls_port = free_tcp_port()?;
    let pebble = Pebble::start(free_tcp_port()?, tls_port).await?;
    let cluster = acme_cluster(&pebble, &["dp1"], &["--acme-challenge", "tls-alpn-01"]).await?;
    let admin = cluster.admin();
    let dp = connected(
        cluster
            .dp_options("dp1")
            .proxy_ssl_listen(&format!("127.0.0.1:{tls_port}")),
    )
    .await?;
    acme_plugin(admin, &pebble, json!({"domains": ["*.acme.test"]})).await?;
    let root = pebble.root().await?;

    let created = admin
        .post_json("/acme", &json!({"host": "alpn.acme.test"}))
        .await?;
    assert_eq!(created.status, 201, "{created:#?}\n{}", cluster.cp.logs());
    wait_until("alpn.acme.test served", patience(), || async {
        Ok(served(&dp, "alpn.acme.test", &root).await.ok())
    })
    .await?;

    // On demand: a handshake for a name without a certificate gets the default one, and the
    // data plane asks the control plane, which orders it. A name outside `domains` is not.
    let config = tls_client_config(None, None)?;
    for host in ["elsewhere.example", "od.acme.test"] {
        let first = tls_handshake(dp.proxy_ssl_addr()?, host, config.clone()).await?;
        assert!(
            matches!(first, Handshake::Accept { .. }),
            "{host}: {first:?}"
        );
    }
    wait_until("od.acme.test issued on demand", ORDER_PATIENCE, || async {
        Ok(served(&dp, "od.acme.test", &root).await.ok())
    })
    .await
    .with_context(|| cluster.cp.logs())?;
    let entry = acme_entry(admin, "od.acme.test").await?;
    assert_eq!(entry["valid"], json!(true), "{entry}");
    let listed = admin.get("/acme/certificates").await?;
    let hosts: Vec<&str> = listed.body["data"]
        .as_array()
        .context("data")?
        .iter()
        .filter_map(|e| e["host"].as_str())
        .collect();
    assert_eq!(hosts, ["alpn.acme.test", "od.acme.test"], "{listed:#?}");
    Ok(())
}

#[tokio::test]
async fn a_control_plane_dying_mid_order_hands_the_name_to_another() -> Result<()> {
    let http_port = free_tcp_port()?;
    let pebble = Pebble::start(http_port, free_tcp_port()?).await?;
    let ca_bundle = pebble.ca_bundle.to_str().context("path")?.to_owned();
    let acme_args = [
        "--acme-ca-bundle",
        ca_bundle.as_str(),
        "--acme-order-timeout",
        "5",
        "--acme-renew-interval",
        "1",
    ];
    // cp2 serves the data plane; cp1, on the same database, only takes Admin API requests.
    let mut cluster = Cluster::start(&["dp1"], &acme_args).await?;
    let cp1 = start_plain_cp(
        &cluster.db,
        &acme_args
            .iter()
            .map(|a| (*a).to_owned())
            .collect::<Vec<_>>(),
    )
    .await?;
    let dp = connected(
        cluster
            .dp_options("dp1")
            .proxy_listen(&format!("127.0.0.1:{http_port}")),
    )
    .await?;
    acme_plugin(cluster.admin(), &pebble, json!({})).await?;

    // Validation of f.acme.test hangs: it resolves to a listener that never answers.
    let black_hole = tokio::net::TcpListener::bind(("127.0.0.3", http_port)).await?;
    let (reached_tx, reached) = tokio::sync::oneshot::channel();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        let mut reached_tx = Some(reached_tx);
        while let Ok((socket, _)) = black_hole.accept().await {
            open.push(socket);
            if let Some(tx) = reached_tx.take() {
                let _ = tx.send(());
            }
        }
    });
    pebble.resolve("f.acme.test", "127.0.0.3").await?;
    let url = cp1.admin_url();
    let ordering = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/acme"))
            .json(&json!({"host": "f.acme.test"}))
            .send()
            .await
    });
    // Killed while pebble validates: the order and its challenge exist, the lease is cp1's.
    tokio::time::timeout(patience(), reached)
        .await
        .context("pebble never tried to validate f.acme.test")??;
    kill_process(cp1.pid()).await?;
    let _ = ordering.await;
    drop(cp1);

    // The name is leased to the dead replica: the other refuses to order it meanwhile...
    pebble.resolve("f.acme.test", "127.0.0.1").await?;
    let busy = cluster
        .admin()
        .post_json("/acme", &json!({"host": "f.acme.test"}))
        .await?;
    assert_eq!(busy.status, 409, "{busy:#?}");
    assert_eq!(
        busy.body,
        json!({"message": "an order for host f.acme.test is already running"})
    );
    // ...and orders it once the lease expired (its renewal loop finds the name due).
    let root = pebble.root().await?;
    wait_until("f.acme.test issued by cp2", ORDER_PATIENCE, || async {
        Ok(served(&dp, "f.acme.test", &root).await.ok())
    })
    .await
    .with_context(|| cluster.cp.logs())?;
    let entry = acme_entry(cluster.admin(), "f.acme.test").await?;
    assert_eq!(entry["valid"], json!(true), "{entry}");
    held.abort();
    cluster
        .cp
        .wait_for_log("acme: certificate issued", patience())
        .await?;
    let _ = &mut cluster;
    Ok(())
}

/// BIND's `named` serving the zone `wild.test`, TXT updates granted to the TSIG key `acme-key`
/// (`--acme-dns-*`), killed when dropped.
struct Named {
    _child: Child,
    dir: TempDir,
    addr: SocketAddr,
}

impl Named {
    const ZONE: &str = "wild.test";

    async fn start() -> Result<Named> {
        let named = ["/usr/sbin/named", "/usr/bin/named"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context("named is not installed (apt-get install bind9; deploy/test.sh does)")?;
        let dir = TempDir::new("named")?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
        let secret: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
            .iter()
            .flat_map(|u| u.as_bytes().to_vec())
            .collect();
        let key = format!(
            "key \"acme-key\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{}\";\n}};\n",
            base64::engine::general_purpose::STANDARD.encode(&secret)
        );
        std::fs::write(dir.join("acme.key"), &key)?;
        let d = dir.path().display();
        let zone = Self::ZONE;
        let conf = format!(
            "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  \
             session-keyfile \"{d}/session.key\";\n  listen-on port {port} {{ 127.0.0.1; }};\n  \
             listen-on-v6 {{ none; }};\n  recursion no;\n  dnssec-validation no;\n}};\n\
             controls {{ }};\n{key}\
             zone \"{zone}\" {{\n  type primary;\n  file \"{d}/{zone}.db\";\n  \
             update-policy {{ grant acme-key subdomain {zone}. TXT; }};\n}};\n",
            port = addr.port(),
        );
        std::fs::write(dir.join("named.conf"), conf)?;
        std::fs::write(
            dir.join(&format!("{zone}.db")),
            format!(
                "$TTL 60\n@ IN SOA ns.{zone}. admin.{zone}. 1 60 60 600 60\n\
                 @ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
            ),
        )?;
        let child = spawn_logged(
            Command::new(named)
                .args(["-g", "-4", "-c"])
                .arg(dir.join("named.conf")),
            &dir,
            "named",
        )?;
        let named = Named {
            _child: child,
            dir,
            addr,
        };
        wait_until("named answering", patience(), || async {
            Ok((!named.txt_or_soa(zone, "SOA").await?.is_empty()).then_some(()))
        })
        .await
        .with_context(|| {
            std::fs::read_to_string(named.dir.join("named.log")).unwrap_or_default()
        })?;
        Ok(named)
    }

    /// The answers to `name kind` (`dig +tcp +short`).
    async fn txt_or_soa(&self, name: &str, kind: &str) -> Result<Vec<String>> {
        let output = Command::new("dig")
            .args(["+tcp", "+short", "-p", &self.addr.port().to_string()])
            .arg(format!("@{}", self.addr.ip()))
            .args([name, kind])
            .output()
            .await?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect())
    }
}

#[tokio::test]
async fn a_wildcard_name_by_dns01_through_a_real_bind() -> Result<()> {
    let named = Named::start().await?;
    let pebble =
        Pebble::start_with_dns(free_tcp_port()?, free_tcp_port()?, Some(named.addr)).await?;
    let key_file = named.dir.join("acme.key");
    let server = named.addr.to_string();
    let cluster = acme_cluster(
        &pebble,
        &["dp1"],
        &[
            "--acme-dns-server",
            &server,
            "--acme-dns-zone",
            Named::ZONE,
            "--acme-dns-tsig-key-file",
            key_file.to_str().context("path")?,
        ],
    )
    .await?;
    let admin = cluster.admin();
    let dp = connected(cluster.dp_options("dp1")).await?;
    acme_plugin(admin, &pebble, json!({})).await?;

    let created = admin
        .post_json("/acme", &json!({"host": "*.wild.test"}))
        .await?;
    assert_eq!(created.status, 201, "{created:#?}\n{}", cluster.cp.logs());
    let root = pebble.root().await?;
    for host in ["one.wild.test", "two.wild.test"] {
        wait_until(&format!("{host} served"), patience(), || async {
            Ok(served(&dp, host, &root).await.ok())
        })
        .await?;
    }
    // The challenge record is gone once the order is done.
    assert_eq!(
        named.txt_or_soa("_acme-challenge.wild.test", "TXT").await?,
        Vec::<String>::new()
    );
    let logs = cluster.cp.logs();
    let secret_line = std::fs::read_to_string(&key_file)?;
    let secret = secret_line
        .split('"')
        .nth(3)
        .context("secret in the key file")?;
    assert!(!logs.contains(secret), "the TSIG secret is never logged");
    Ok(())
}

/// Benchmark, not run by CI (BENCHMARKS.md, "ACME at fleet scale"): `GATEHOUSE_BENCH_ACME_NAMES`
/// names (100) ordered through two control-plane replicas on one database, at most
/// `GATEHOUSE_BENCH_ACME_PARALLEL` (10) orders at a time, validated by pebble through three
/// data planes (each name resolves to one of them). Reports the total time until every
/// `POST /acme` answered and until every data plane serves every name, and checks that each
/// name was ordered exactly once fleet-wide.
///
/// `cargo build --bins && cargo nextest run -p gatehouse-tests --test acme --run-ignored only
/// --no-capture a_hundred_names`
#[tokio::test]
#[ignore = "benchmark: see BENCHMARKS.md"]
async fn a_hundred_names_through_two_control_planes_and_three_data_planes() -> Result<()> {
    let env = |key: &str, default: usize| {
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let count = env("GATEHOUSE_BENCH_ACME_NAMES", 100);
    let parallel = env("GATEHOUSE_BENCH_ACME_PARALLEL", 10);
    let addresses = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let http_port = free_port_on(&addresses[1..])?;
    let pebble = Pebble::start(http_port, free_tcp_port()?).await?;
    let cluster = acme_cluster(&pebble, &["dp1", "dp2", "dp3"], &[]).await?;
    let ca_bundle = pebble.ca_bundle.to_str().context("path")?.to_owned();
    let cp2 = start_plain_cp(&cluster.db, &["--acme-ca-bundle".to_owned(), ca_bundle]).await?;
    let mut dps = Vec::new();
    for (name, ip) in ["dp1", "dp2", "dp3"].into_iter().zip(addresses) {
        dps.push(
            connected(
                cluster
                    .dp_options(name)
                    .proxy_listen(&format!("{ip}:{http_port}"))
                    .quiet(),
            )
            .await?,
        );
    }
    acme_plugin(cluster.admin(), &pebble, json!({})).await?;
    let hosts: Vec<String> = (0..count).map(|i| format!("n{i}.acme.test")).collect();
    for (i, host) in hosts.iter().enumerate() {
        pebble.resolve(host, addresses[i % addresses.len()]).await?;
    }

    let started = std::time::Instant::now();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
    let urls = [cluster.cp.admin_url(), cp2.admin_url()];
    let mut orders = tokio::task::JoinSet::new();
    for (i, host) in hosts.iter().enumerate() {
        let gate = gate.clone();
        let url = urls[i % urls.len()].clone();
        let host = host.clone();
        orders.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let response = reqwest::Client::new()
                .post(format!("{url}/acme"))
                .json(&json!({"host": host}))
                .send()
                .await?;
            let status = response.status().as_u16();
            let body = response.text().await?;
            ensure!(status == 201, "{host}: {status} {body}");
            anyhow::Ok(())
        });
    }
    while let Some(done) = orders.join_next().await {
        done??;
    }
    let answered = started.elapsed();
    let root = pebble.root().await?;
    for dp in &dps {
        for host in &hosts {
            wait_until(&format!("{host} served"), ORDER_PATIENCE, || async {
                Ok(served(dp, host, &root).await.ok())
            })
            .await?;
        }
    }
    let served_everywhere = started.elapsed();

    // Exactly one order per name, fleet-wide, and one certificate row each.
    let logs = format!("{}\n{}", cluster.cp.logs(), cp2.logs());
    for host in &hosts {
        let needle = format!("host={host} ");
        let ordered = logs
            .lines()
            .filter(|l| l.contains("acme: order created") && l.contains(&needle))
            .count();
        assert_eq!(ordered, 1, "{host} ordered {ordered} times");
    }
    let rows = cluster
        .admin()
        .get("/certificates?tags=managed-by-acme&size=1000")
        .await?;
    assert_eq!(
        rows.body["data"].as_array().map(Vec::len),
        Some(count),
        "{}",
        rows.body
    );
    println!(
        "| {count} names | 2 CPs, 3 DPs | {parallel} in parallel | all POST /acme answered 201: \
         {answered:.1?} | every DP serves every name: {served_everywhere:.1?} | orders per name: 1 |"
    );
    Ok(())
}

/// Runs `gatehouse-cp keyring ARGS`; returns stdout.
async fn keyring(args: &[&str]) -> Result<String> {
    let out = Command::new(gatehouse_tests::cp_bin()?)
        .arg("keyring")
        .args(args)
        .output()
        .await?;
    ensure!(out.status.success(), "{out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// With a keyring (issue 13), the ACME account's credentials and the issued certificate's key
/// are sealed in the database, and the account still opens after `keyring rotate`.
#[tokio::test]
async fn with_a_keyring_the_account_and_certificate_keys_are_sealed_at_rest() -> Result<()> {
    let http_port = free_tcp_port()?;
    let pebble = Pebble::start(http_port, free_tcp_port()?).await?;
    let keys = TempDir::new("acme-keyring")?;
    let kek = keys.join("keyring.keys");
    let kek = kek.to_str().context("path")?;
    keyring(&["init", "--keyring-key-file", kek]).await?;
    let cluster = acme_cluster(&pebble, &["dp1"], &["--keyring-key-file", kek]).await?;
    let admin = cluster.admin();
    let dp = connected(
        cluster
            .dp_options("dp1")
            .proxy_listen(&format!("127.0.0.1:{http_port}")),
    )
    .await?;
    acme_plugin(admin, &pebble, json!({})).await?;
    let root = pebble.root().await?;
    let created = admin
        .post_json("/acme", &json!({"host": "sealed.acme.test"}))
        .await?;
    assert_eq!(created.status, 201, "{created:#?}\n{}", cluster.cp.logs());
    wait_until("sealed.acme.test served", patience(), || async {
        Ok(served(&dp, "sealed.acme.test", &root).await.ok())
    })
    .await?;

    let client = cluster.db.client().await?;
    let account: String = client
        .query_one("SELECT credentials #>> '{}' FROM acme_accounts", &[])
        .await?
        .get(0);
    assert!(account.starts_with("ghenc:v1:"), "the account is sealed");
    let key: String = client
        .query_one("SELECT key FROM certificates", &[])
        .await?
        .get(0);
    assert!(
        key.starts_with("ghenc:v1:"),
        "the certificate key is sealed"
    );
    let dump = cluster.db.dump().await?;
    assert!(!dump.contains("PRIVATE KEY") && !dump.contains("key_pkcs8"));

    // After a rotation the stored account still opens: a second order uses it.
    let url = cluster.db.url.clone();
    let rotated = keyring(&["rotate", "--database-url", &url, "--keyring-key-file", kek]).await?;
    assert!(rotated.contains("and 1 ACME accounts"), "{rotated}");
    let created = admin
        .post_json("/acme", &json!({"host": "again.acme.test"}))
        .await?;
    assert_eq!(created.status, 201, "{created:#?}\n{}", cluster.cp.logs());
    wait_until("again.acme.test served", patience(), || async {
        Ok(served(&dp, "again.acme.test", &root).await.ok())
    })
    .await?;
    assert_eq!(
        count(&cluster.cp.logs(), "acme: account created"),
        1,
        "the stored account was used again"
    );
    Ok(())
}
