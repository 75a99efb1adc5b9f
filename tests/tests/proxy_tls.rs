//! TLS termination of the data plane's proxy, end to end (issue 4, "Tests"): real PostgreSQL,
//! `gatehouse-cp` and `gatehouse-dp` processes, and real TLS clients — the `openssl s_client`
//! CLI and tokio-rustls — checking which leaf certificate the DP serves for every SNI, key
//! type, rotation and removal.

mod cluster_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use cluster_support::*;
use gatehouse_tests::certs::{Algorithm, Ca, Pem};
use gatehouse_tests::{Admin, DataPlane, config_version, patience};

/// Timeout of one handshake or one proxied request.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Signature schemes of an RSA-only client.
const RSA_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

/// Signature schemes of an ECDSA-only client.
const ECDSA_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
];

// ---------------------------------------------------------------------------------------------
// Certificates and their identities.

/// A leaf certificate as a client saw it: SHA-256 of the DER, and openssl's subject and serial.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leaf {
    sha256: String,
    subject: String,
    serial: String,
}

impl std::fmt::Display for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} sha256={}",
            self.subject,
            self.serial,
            &self.sha256[..16]
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// The identity of the first certificate of `pem` (as `openssl x509 -noout -subject -serial`
/// prints it).
async fn leaf_of_pem(pem: &str) -> Result<Leaf> {
    let der =
        CertificateDer::from_pem_slice(pem.as_bytes()).context("parsing a PEM certificate")?;
    leaf_of_der(&der).await
}

/// The identity of a DER certificate.
async fn leaf_of_der(der: &CertificateDer<'_>) -> Result<Leaf> {
    let mut x509 = tokio::process::Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-subject", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running openssl x509")?;
    let mut stdin = x509.stdin.take().context("openssl x509 stdin")?;
    stdin.write_all(der.as_ref()).await?;
    drop(stdin);
    let out = x509.wait_with_output().await?;
    ensure!(
        out.status.success(),
        "openssl x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("no {prefix:?} in openssl x509 output {text:?}"))
    };
    Ok(Leaf {
        sha256: fingerprint(der.as_ref()),
        subject: field("subject=")?,
        serial: field("serial=")?,
    })
}

/// A leaf for `sans` (the first is the CN) signed by `ca`, valid for 30 days.
fn leaf(ca: &Ca, sans: &[&str], algorithm: Algorithm) -> Result<Pem> {
    ca.leaf(sans, algorithm, 30)
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// Runs `openssl s_client` against `addr` with SNI `server_name` (`None`: `-noservername`) and
/// `extra` options; returns the leaf it received, or the reason it got none.
async fn openssl_leaf(addr: SocketAddr, server_name: Option<&str>, extra: &[&str]) -> Result<Leaf> {
    let connect = addr.to_string();
    let mut args = vec!["s_client", "-connect", &connect];
    match server_name {
        Some(name) => args.extend(["-servername", name]),
        None => args.push("-noservername"),
    }
    args.extend(extra);
    let run = tokio::process::Command::new("openssl")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(TIMEOUT, run)
        .await
        .with_context(|| format!("openssl {} timed out", args.join(" ")))?
        .context("running openssl s_client")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(start) = stdout.find("-----BEGIN CERTIFICATE-----") else {
        bail!(
            "openssl {}: no certificate ({}); stderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let end_marker = "-----END CERTIFICATE-----";
    let end = stdout[start..]
        .find(end_marker)
        .context("unterminated certificate in openssl output")?
        + start
        + end_marker.len();
    leaf_of_pem(&stdout[start..end]).await
}

/// Accepts any server certificate (checking only the handshake signature) and offers
/// `schemes` as the client's signature algorithms.
#[derive(Debug)]
struct AnyServer {
    provider: Arc<CryptoProvider>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// A rustls client: ALPN `http/1.1`, no session resumption (every handshake is a full one
/// and shows the server's current certificate), any server certificate accepted, offering
/// `schemes` (all the provider's when `None`).
fn client_config(schemes: Option<&[SignatureScheme]>) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let schemes = match schemes {
        Some(s) => s.to_vec(),
        None => provider
            .signature_verification_algorithms
            .supported_schemes(),
    };
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer { provider, schemes }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr` with SNI `server_name`; returns it with the DER of its leaf.
async fn rustls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<(Tls, CertificateDer<'static>)> {
    let name = ServerName::try_from(server_name.to_owned())?;
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no server certificate")?
        .clone()
        .into_owned();
    Ok((tls, leaf))
}

// ---------------------------------------------------------------------------------------------
// Upstream and Admin API.

/// An HTTP/1.1 upstream answering every request with `{"uri": ...}`.
struct Echo {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start() -> Result<Echo> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        let body = json!({"uri": req.uri().to_string()}).to_string();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(Echo { addr, task })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn post(admin: &Admin, path: &str, body: Value) -> Result<Value> {
    let created = admin.post_json(path, &body).await?;
    ensure!(created.status == 201, "POST {path}: {created:?}");
    Ok(created.body)
}

/// Uploads `pem` (and `alt`, as `cert_alt`/`key_alt`) for `snis`; returns the id.
async fn upload(admin: &Admin, pem: &Pem, alt: Option<&Pem>, snis: &[&str]) -> Result<String> {
    let mut body = json!({"cert": pem.cert, "key": pem.key, "snis": snis});
    if let Some(alt) = alt {
        body["cert_alt"] = json!(alt.cert);
        body["key_alt"] = json!(alt.key);
    }
    let created = post(admin, "/certificates", body).await?;
    Ok(created["id"].as_str().context("certificate id")?.to_owned())
}

/// Waits until the DP applied everything written so far; returns the version.
async fn applied(admin: &Admin, dp: &DataPlane) -> Result<i64> {
    let version = config_version(admin).await?;
    dp.wait_for_version(version, patience()).await?;
    Ok(version)
}

/// Starts a cluster with one DP.
async fn cluster_with_dp() -> Result<(Cluster, DataPlane)> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let dp = cluster.dp("dp1").await?;
    dp.wait_until_ready(patience()).await?;
    Ok((cluster, dp))
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn openssl_sees_the_leaf_of_every_sni_kind() -> Result<()> {
    let (cluster, dp) = cluster_with_dp().await?;
    let admin = cluster.admin();
    let ca = Ca::new("Gatehouse TLS test CA")?;

    let exact = leaf(&ca, &["exact.test"], Algorithm::Ecdsa)?;
    let wild = leaf(&ca, &["*.wild.test"], Algorithm::Ecdsa)?;
    let prefix = leaf(&ca, &["prefix.anything"], Algorithm::Ecdsa)?;
    let star = leaf(&ca, &["catch-all.test"], Algorithm::Ecdsa)?;
    upload(admin, &exact, None, &["exact.test"]).await?;
    upload(admin, &wild, None, &["*.wild.test"]).await?;
    upload(admin, &prefix, None, &["prefix.*"]).await?;
    upload(admin, &star, None, &["*"]).await?;
    applied(admin, &dp).await?;
    let addr = dp.proxy_ssl_addr()?;

    let cases: [(Option<&str>, &Pem, &str); 7] = [
        (Some("exact.test"), &exact, "exact SNI"),
        (Some("a.wild.test"), &wild, "`*.wild.test` wildcard"),
        (Some("prefix.anything"), &prefix, "`prefix.*` wildcard"),
        // `first.*` replaces only the last label (Kong): `prefix.other.*` is not `prefix.*`.
        (Some("prefix.other.example"), &star, "the `*` SNI"),
        // `*.wild.test` needs a label in place of `*`.
        (Some("wild.test"), &star, "the `*` SNI"),
        (Some("unknown.example"), &star, "the `*` SNI"),
        // `*.rest` replaces only the first label: two labels before `wild.test` fall to `*`.
        (Some("a.b.wild.test"), &star, "the `*` SNI"),
    ];
    for (name, pem, why) in cases {
        let expected = leaf_of_pem(&pem.cert).await?;
        let seen = openssl_leaf(addr, name, &[]).await?;
        println!("SNI {name:?}: {seen}");
        assert_eq!(
            seen, expected,
            "SNI {name:?} should get the certificate of {why}"
        );
    }

    // No SNI: the default certificate, the DP's self-signed `localhost` one, not `*`.
    let uploaded = [
        leaf_of_pem(&exact.cert).await?,
        leaf_of_pem(&wild.cert).await?,
        leaf_of_pem(&prefix.cert).await?,
        leaf_of_pem(&star.cert).await?,
    ];
    let default = openssl_leaf(addr, None, &[]).await?;
    println!("no SNI: {default}");
    assert!(
        default.subject.contains("localhost"),
        "no SNI should get the self-signed localhost default, got {default}"
    );
    assert!(!uploaded.contains(&default), "{default}");
    // The same with a rustls client (which sends no SNI for an IP address).
    let (_, der) = rustls_connect(addr, "127.0.0.1", client_config(None)?).await?;
    assert_eq!(leaf_of_der(&der).await?, default, "rustls, no SNI");
    Ok(())
}

#[tokio::test]
async fn rsa_and_ecdsa_clients_get_the_matching_pair() -> Result<()> {
    let (cluster, dp) = cluster_with_dp().await?;
    let admin = cluster.admin();
    let ca = Ca::new("Gatehouse TLS test CA")?;
    let rsa = leaf(&ca, &["dual.test"], Algorithm::Rsa)?;
    let ecdsa = leaf(&ca, &["dual.test"], Algorithm::Ecdsa)?;
    upload(admin, &rsa, Some(&ecdsa), &["dual.test"]).await?;
    applied(admin, &dp).await?;
    let addr = dp.proxy_ssl_addr()?;
    let rsa_leaf = leaf_of_pem(&rsa.cert).await?;
    let ecdsa_leaf = leaf_of_pem(&ecdsa.cert).await?;
    assert_ne!(rsa_leaf, ecdsa_leaf);

    let openssl_cases: [(&[&str], &Leaf, &str); 4] = [
        (
            &[
                "-tls1_2",
                "-sigalgs",
                "RSA-PSS+SHA256:RSA+SHA256",
                "-cipher",
                "ECDHE-RSA-AES128-GCM-SHA256",
            ],
            &rsa_leaf,
            "RSA-only TLS 1.2",
        ),
        (
            &["-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256"],
            &rsa_leaf,
            "RSA-only TLS 1.3",
        ),
        (
            &[
                "-tls1_2",
                "-sigalgs",
                "ECDSA+SHA256",
                "-cipher",
                "ECDHE-ECDSA-AES128-GCM-SHA256",
            ],
            &ecdsa_leaf,
            "ECDSA-only TLS 1.2",
        ),
        (
            &["-tls1_3", "-sigalgs", "ECDSA+SHA256"],
            &ecdsa_leaf,
            "ECDSA-only TLS 1.3",
        ),
    ];
    let mut failures = Vec::new();
    for (extra, expected, what) in openssl_cases {
        match openssl_leaf(addr, Some("dual.test"), extra).await {
            Ok(seen) if &seen == expected => println!("openssl {what}: {seen}"),
            Ok(seen) => failures.push(format!(
                "openssl {what} {extra:?}: expected {expected}, got {seen}"
            )),
            Err(e) => failures.push(format!("openssl {what} {extra:?}: {e:#}")),
        }
    }

    let rustls_cases: [(&[SignatureScheme], &Leaf, &str); 2] = [
        (RSA_SCHEMES, &rsa_leaf, "RSA-only"),
        (ECDSA_SCHEMES, &ecdsa_leaf, "ECDSA-only"),
    ];
    for (schemes, expected, what) in rustls_cases {
        match rustls_connect(addr, "dual.test", client_config(Some(schemes))?).await {
            Ok((_, der)) => {
                let seen = leaf_of_der(&der).await?;
                if &seen == expected {
                    println!("rustls {what}: {seen}");
                } else {
                    failures.push(format!("rustls {what}: expected {expected}, got {seen}"));
                }
            }
            Err(e) => failures.push(format!("rustls {what}: {e:#}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

/// One handshake of the rotation loop: when it started, and the leaf or the error.
struct Probe {
    started: Instant,
    outcome: Result<String, String>,
}

#[tokio::test]
async fn rotation_switches_new_handshakes_without_errors_and_keeps_old_connections() -> Result<()> {
    let (cluster, dp) = cluster_with_dp().await?;
    let admin = cluster.admin();
    let ca = Ca::new("Gatehouse TLS test CA")?;
    let echo = Echo::start().await?;
    let service = post(
        admin,
        "/services",
        json!({"name": "echo", "url": format!("http://{}", echo.addr)}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"hosts": ["rot.test"], "paths": ["/rot"], "service": {"id": service["id"]}}),
    )
    .await?;
    let old = leaf(&ca, &["rot.test"], Algorithm::Ecdsa)?;
    let new = leaf(&ca, &["rot.test"], Algorithm::Ecdsa)?;
    let id = upload(admin, &old, None, &["rot.test"]).await?;
    applied(admin, &dp).await?;
    let addr = dp.proxy_ssl_addr()?;
    let old_fp = fingerprint(CertificateDer::from_pem_slice(old.cert.as_bytes())?.as_ref());
    let new_fp = fingerprint(CertificateDer::from_pem_slice(new.cert.as_bytes())?.as_ref());

    // A keep-alive HTTP/1.1 connection opened (and used) before the change.
    let (tls, der) = rustls_connect(addr, "rot.test", client_config(None)?).await?;
    assert_eq!(fingerprint(der.as_ref()), old_fp, "before the rotation");
    let (mut keep_alive, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let conn = tokio::spawn(conn);
    let get = || {
        Request::get("/rot/x")
            .header("host", "rot.test")
            .body(Empty::<Bytes>::new())
    };
    let first = tokio::time::timeout(TIMEOUT, keep_alive.send_request(get()?)).await??;
    ensure!(first.status() == 200, "{first:?}");
    first.into_body().collect().await?;

    // The client loop: a new connection every ~5 ms.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let config = client_config(None)?;
    let looper = tokio::spawn(async move {
        let mut probes = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop_rx.changed() => break,
                _ = tick.tick() => {}
            }
            let started = Instant::now();
            let outcome = match rustls_connect(addr, "rot.test", config.clone()).await {
                Ok((mut tls, der)) => {
                    let _ = tls.shutdown().await;
                    Ok(fingerprint(der.as_ref()))
                }
                Err(e) => Err(format!("{e:#}")),
            };
            probes.push(Probe { started, outcome });
        }
        probes
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Rotate.
    let written = Instant::now();
    let patched = admin
        .patch_json(
            &format!("/certificates/{id}"),
            &json!({"cert": new.cert, "key": new.key}),
        )
        .await?;
    ensure!(
        patched.status == 200,
        "PATCH /certificates/{id}: {patched:?}"
    );
    let version = config_version(admin).await?;
    let deadline = Instant::now() + patience();
    let acked = loop {
        if dp
            .status()
            .await
            .ok()
            .and_then(|s| s["config_version"].as_i64())
            .is_some_and(|v| v >= version)
        {
            break Instant::now();
        }
        ensure!(
            Instant::now() < deadline,
            "DP never applied version {version}"
        );
        tokio::time::sleep(FAST_POLL).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true)?;
    let probes = looper.await?;

    // The keep-alive connection from before still serves requests.
    let after = tokio::time::timeout(TIMEOUT, keep_alive.send_request(get()?))
        .await
        .context("request on the old keep-alive connection timed out")?
        .context("request on the old keep-alive connection")?;
    let status = after.status();
    let body = after.into_body().collect().await?.to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(!conn.is_finished(), "the old connection was closed");

    let errors: Vec<&String> = probes
        .iter()
        .filter_map(|p| p.outcome.as_ref().err())
        .collect();
    let before = probes.iter().filter(|p| p.started < written).count();
    let old_seen = probes
        .iter()
        .filter(|p| p.outcome.as_ref().ok() == Some(&old_fp))
        .count();
    let stale_after_ack: Vec<_> = probes
        .iter()
        .filter(|p| p.started >= acked && p.outcome.as_ref().ok() != Some(&new_fp))
        .map(|p| {
            (
                p.started.duration_since(acked),
                p.outcome.clone().unwrap_or_else(|e| e),
            )
        })
        .collect();
    let first_new = probes
        .iter()
        .find(|p| p.outcome.as_ref().ok() == Some(&new_fp))
        .map(|p| p.started);
    let old_after_first_new = first_new.map_or(0, |t| {
        probes
            .iter()
            .filter(|p| p.started > t && p.outcome.as_ref().ok() == Some(&old_fp))
            .count()
    });
    println!(
        "rotation: {} handshakes ({before} before the write), {} errors, {old_seen} saw the old \
         leaf; write -> DP status acked: {:?}; write -> first handshake with the new leaf: {:?}; \
         old leaves after the first new one: {old_after_first_new}",
        probes.len(),
        errors.len(),
        acked.duration_since(written),
        first_new.map(|t| t.saturating_duration_since(written)),
    );
    assert!(errors.is_empty(), "handshake errors: {errors:#?}");
    assert!(old_seen > 0, "no handshake saw the old certificate");
    assert!(
        probes.iter().any(|p| p.started >= acked),
        "no handshake after the DP acked"
    );
    assert!(
        stale_after_ack.is_empty(),
        "handshakes started after the DP acked version {version} without the new leaf: \
         {stale_after_ack:?}"
    );
    Ok(())
}

#[tokio::test]
async fn removed_certificate_falls_back_to_star_or_default() -> Result<()> {
    let (cluster, dp) = cluster_with_dp().await?;
    let admin = cluster.admin();
    let ca = Ca::new("Gatehouse TLS test CA")?;
    let addr = dp.proxy_ssl_addr()?;
    let default = openssl_leaf(addr, None, &[]).await?;

    // DELETE /certificates/{id}: no `*` SNI, so the default certificate.
    let gone = leaf(&ca, &["gone.test"], Algorithm::Ecdsa)?;
    let id = upload(admin, &gone, None, &["gone.test"]).await?;
    applied(admin, &dp).await?;
    assert_eq!(
        openssl_leaf(addr, Some("gone.test"), &[]).await?,
        leaf_of_pem(&gone.cert).await?
    );
    let deleted = admin.delete(&format!("/certificates/{id}")).await?;
    ensure!(
        deleted.status == 204,
        "DELETE /certificates/{id}: {deleted:?}"
    );
    applied(admin, &dp).await?;
    let seen = openssl_leaf(addr, Some("gone.test"), &[]).await?;
    assert_eq!(seen, default, "after DELETE /certificates/{id}");

    // With a `*` certificate: DELETE of the SNI (and then of the certificate) falls to `*`.
    let star = leaf(&ca, &["catch-all.test"], Algorithm::Ecdsa)?;
    upload(admin, &star, None, &["*"]).await?;
    let gone2 = leaf(&ca, &["gone2.test"], Algorithm::Ecdsa)?;
    let id2 = upload(admin, &gone2, None, &["gone2.test", "gone3.test"]).await?;
    applied(admin, &dp).await?;
    let gone2_leaf = leaf_of_pem(&gone2.cert).await?;
    let star_leaf = leaf_of_pem(&star.cert).await?;
    assert_eq!(
        openssl_leaf(addr, Some("gone2.test"), &[]).await?,
        gone2_leaf
    );
    assert_eq!(
        openssl_leaf(addr, Some("gone3.test"), &[]).await?,
        gone2_leaf
    );
    let path = format!("/certificates/{id2}/snis/gone2.test");
    let deleted = admin.delete(&path).await?;
    ensure!(deleted.status == 204, "DELETE {path}: {deleted:?}");
    applied(admin, &dp).await?;
    assert_eq!(
        openssl_leaf(addr, Some("gone2.test"), &[]).await?,
        star_leaf,
        "after DELETE {path}"
    );
    assert_eq!(
        openssl_leaf(addr, Some("gone3.test"), &[]).await?,
        gone2_leaf,
        "the certificate's other SNI stays"
    );
    let deleted = admin.delete(&format!("/certificates/{id2}")).await?;
    ensure!(
        deleted.status == 204,
        "DELETE /certificates/{id2}: {deleted:?}"
    );
    applied(admin, &dp).await?;
    assert_eq!(
        openssl_leaf(addr, Some("gone3.test"), &[]).await?,
        star_leaf,
        "after DELETE /certificates/{id2}"
    );

    // And without the `*` certificate: the default one.
    let star_id = admin.get("/certificates/*").await?;
    ensure!(star_id.status == 200, "GET /certificates/*: {star_id:?}");
    let star_id = star_id.body["id"].as_str().context("id")?.to_owned();
    let deleted = admin.delete(&format!("/certificates/{star_id}")).await?;
    ensure!(
        deleted.status == 204,
        "DELETE /certificates/{star_id}: {deleted:?}"
    );
    applied(admin, &dp).await?;
    assert_eq!(
        openssl_leaf(addr, Some("gone3.test"), &[]).await?,
        default,
        "after deleting the `*` certificate"
    );
    Ok(())
}
