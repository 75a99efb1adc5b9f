//! TLS and mutual TLS to upstreams, end to end (issue 5): real PostgreSQL, `gatehouse-cp` and
//! `gatehouse-dp` processes, and TLS upstreams started by the test (tokio-rustls + hyper on
//! `127.0.0.1:0`) that answer every request with JSON saying what they saw: the connection
//! number, SNI, ALPN protocol, client certificate CN, `Host` (or `:authority`), path and HTTP
//! version.
//!
//! Covered: verification against uploaded CAs, the public roots, `--upstream-trusted-ca` and
//! `--upstream-tls-verify off`; name mismatch, expiry, a plaintext port, ALPN refusal;
//! `tls_verify_depth` and `--upstream-tls-verify-depth`; client certificate precedence
//! (service, upstream, `--client-ssl-cert`) and refusal; rotation of client certificates and
//! of a CA under the same id; SNI with `preserve_host` and `host_header`; `grpcs`; connection
//! reuse (also across an unrelated configuration change); handshake timeout. Failures must
//! answer 502 (504 for a timeout) and log `upstream TLS failed` with a reason an operator can
//! act on.
//!
//! `host_omits_only_the_default_port_of_the_scheme` binds ports 443 and 80: it needs root (as
//! CI runs) and says it skipped otherwise.

mod cluster_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use rustls::crypto::aws_lc_rs;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use cluster_support::*;
use gatehouse_tests::certs::Pem;
use gatehouse_tests::{Admin, DataPlane, TempDir, config_version, patience, wait_until};

/// Timeout of one proxied request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The message of the DP's log line for a failed upstream TLS connection.
const TLS_FAILED: &str = "upstream TLS failed";
/// Kong's body message of a 502.
const BAD_GATEWAY: &str = "An invalid response was received from the upstream server";

// ---------------------------------------------------------------------------------------------
// Certificates.

/// A certificate authority of the test: a root, or an intermediate of another authority.
struct Authority {
    /// Its own certificate.
    der: CertificateDer<'static>,
    /// Its own certificate, PEM.
    pem: String,
    /// The PEM certificates a server sends after a leaf of this authority: this one and its
    /// parents, up to (not including) the root. Empty for a root.
    chain: String,
    issuer: Issuer<'static, KeyPair>,
}

/// Certificate parameters, valid from `from_days` to `to_days` relative to now.
fn params(cn: &str, sans: &[&str], from_days: i64, to_days: i64) -> Result<CertificateParams> {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.not_before = time::OffsetDateTime::now_utc() + time::Duration::days(from_days);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(to_days);
    Ok(params)
}

// === impl Authority ===

impl Authority {
    /// A self-signed root CA.
    fn root(cn: &str) -> Result<Authority> {
        let key = KeyPair::generate()?;
        let mut params = params(cn, &[], -1, 30)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            der: cert.der().clone(),
            pem: cert.pem(),
            chain: String::new(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An intermediate CA issued by this one.
    fn intermediate(&self, cn: &str) -> Result<Authority> {
        let key = KeyPair::generate()?;
        let mut params = params(cn, &[], -1, 30)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Authority {
            der: cert.der().clone(),
            pem: cert.pem(),
            chain: format!("{}{}", cert.pem(), self.chain),
            issuer: Issuer::new(params, key),
        })
    }

    /// A leaf (ECDSA P-256) with common name `cn` and `sans` (DNS names or IP addresses);
    /// its `cert` holds the leaf followed by the intermediates up to the root.
    fn leaf(&self, cn: &str, sans: &[&str]) -> Result<Pem> {
        self.leaf_valid(cn, sans, -1, 30)
    }

    /// [`Authority::leaf`], valid from `from_days` to `to_days` relative to now.
    fn leaf_valid(&self, cn: &str, sans: &[&str], from_days: i64, to_days: i64) -> Result<Pem> {
        let key = KeyPair::generate()?;
        let cert = params(cn, sans, from_days, to_days)?.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: format!("{}{}", cert.pem(), self.chain),
            key: key.serialize_pem(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// TLS upstream.

/// What a TLS upstream learnt from one handshake.
#[derive(Debug)]
struct Handshake {
    /// 1 for the first connection accepted, 2 for the next, ...
    conn: usize,
    sni: Option<String>,
    alpn: Option<String>,
    /// The common name of the client certificate, if one was presented.
    client_cn: Option<String>,
}

/// A TLS upstream on `127.0.0.1:0`. Every request gets a JSON report `{"conn", "sni",
/// "alpn", "client_cn", "host", "path", "version"}`; a gRPC request (`content-type:
/// application/grpc...`) gets it as its one message, then the trailer `grpc-status: 0`.
/// Stops when dropped.
struct TlsUpstream {
    addr: SocketAddr,
    /// TCP connections accepted.
    accepted: Arc<AtomicUsize>,
    /// TLS handshakes completed.
    handshakes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

type ReplyBody = BoxBody<Bytes, Infallible>;

// === impl TlsUpstream ===

impl TlsUpstream {
    /// Serves `identity` (its whole chain) on `127.0.0.1:0` offering `alpn`; with
    /// `client_ca`, requires a client certificate issued by it.
    async fn start(
        identity: &Pem,
        client_ca: Option<&Authority>,
        alpn: &[&str],
    ) -> Result<TlsUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, identity, client_ca, alpn).await
    }

    /// [`TlsUpstream::start`] on `listener`.
    async fn start_on(
        listener: TcpListener,
        identity: &Pem,
        client_ca: Option<&Authority>,
        alpn: &[&str],
    ) -> Result<TlsUpstream> {
        let chain = CertificateDer::pem_slice_iter(identity.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("the upstream's certificates")?;
        let key =
            PrivateKeyDer::from_pem_slice(identity.key.as_bytes()).context("the upstream's key")?;
        let provider = Arc::new(aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.der.clone())?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let (accepts, completed) = (accepted.clone(), handshakes.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let conn = accepts.fetch_add(1, Ordering::SeqCst) + 1;
                let (acceptor, completed) = (acceptor.clone(), completed.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    completed.fetch_add(1, Ordering::SeqCst);
                    let session = tls.get_ref().1;
                    let seen = Arc::new(Handshake {
                        conn,
                        sni: session.server_name().map(str::to_owned),
                        alpn: session
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned()),
                        client_cn: session
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .and_then(|cert| gatehouse_shared::x509::cert_facts(cert).ok())
                            .and_then(|facts| facts.common_name),
                    });
                    let service = service_fn(move |req| answer(seen.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(TlsUpstream {
            addr,
            accepted,
            handshakes,
            task,
        })
    }

    /// An HTTPS upstream (ALPN `h2` and `http/1.1`) serving `identity`, without client
    /// authentication.
    async fn https(identity: &Pem) -> Result<TlsUpstream> {
        Self::start(identity, None, &["h2", "http/1.1"]).await
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain HTTP/1.1 server on `127.0.0.1:0` answering `400` to anything (a TLS port
/// misconfigured as plaintext). Stops when dropped.
struct Plaintext {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

// === impl Plaintext ===

impl Plaintext {
    async fn start() -> Result<Plaintext> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    if tcp.read(&mut buf).await.is_ok() {
                        let _ = tcp
                            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    }
                });
            }
        });
        Ok(Plaintext { addr, task })
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    seen: Arc<Handshake>,
    req: Request<Incoming>,
) -> Result<Response<ReplyBody>, Infallible> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let report = json!({
        "conn": seen.conn,
        "sni": seen.sni,
        "alpn": seen.alpn,
        "client_cn": seen.client_cn,
        "host": host,
        "path": req.uri().path(),
        "version": format!("{:?}", req.version()),
    })
    .to_string();
    let grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // Read the request to its end, so the connection can serve the next one.
    let _ = req.into_body().collect().await;
    let mut response = if grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let body = Full::new(grpc_frame(report.as_bytes()))
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        Response::new(body)
    } else {
        Response::new(Full::new(Bytes::from(report)).boxed())
    };
    let content_type = if grpc {
        "application/grpc"
    } else {
        "application/json"
    };
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// One gRPC length-prefixed message (uncompressed).
fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(payload.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(payload);
    framed.into()
}

// ---------------------------------------------------------------------------------------------
// Admin API.

/// `base` with the fields of `extra` added (or replaced).
fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

async fn post(admin: &Admin, path: &str, body: Value) -> Result<Value> {
    let created = admin.post_json(path, &body).await?;
    ensure!(created.status == 201, "POST {path} {body}: {created:?}");
    Ok(created.body)
}

async fn patch(admin: &Admin, path: &str, body: Value) -> Result<()> {
    let patched = admin.patch_json(path, &body).await?;
    ensure!(patched.status == 200, "PATCH {path}: {patched:?}");
    Ok(())
}

fn id(entity: &Value) -> Result<String> {
    Ok(entity["id"]
        .as_str()
        .with_context(|| format!("no id in {entity}"))?
        .to_owned())
}

/// Uploads a certificate (`POST /certificates`, no SNI); returns its id.
async fn certificate(admin: &Admin, pem: &Pem) -> Result<String> {
    id(&post(
        admin,
        "/certificates",
        json!({"cert": pem.cert, "key": pem.key}),
    )
    .await?)
}

/// Uploads a CA certificate (`POST /ca_certificates`); returns its id.
async fn ca_certificate(admin: &Admin, ca: &Authority) -> Result<String> {
    id(&post(admin, "/ca_certificates", json!({"cert": ca.pem})).await?)
}

/// Creates upstream `name` (with the `extra` fields) with one target, `target`. Its
/// `host_header` is its name unless `extra` says otherwise: as in Kong, Host and SNI are
/// otherwise the target's (here an IP).
async fn upstream(admin: &Admin, name: &str, extra: Value, target: SocketAddr) -> Result<()> {
    let base = json!({"name": name, "host_header": name});
    let created = post(admin, "/upstreams", merged(base, extra)).await?;
    post(
        admin,
        &format!("/upstreams/{}/targets", id(&created)?),
        json!({"target": target.to_string()}),
    )
    .await?;
    Ok(())
}

/// Creates `service` and a route to it for `path` (stripped) with the `route` fields;
/// returns the service id.
async fn expose(admin: &Admin, path: &str, service: Value, route: Value) -> Result<String> {
    let service = id(&post(admin, "/services", service).await?)?;
    let body = merged(json!({"paths": [path], "service": {"id": service}}), route);
    post(admin, "/routes", body).await?;
    Ok(service)
}

/// Waits until every DP of `dps` applied everything written so far.
async fn applied(admin: &Admin, dps: &[&DataPlane]) -> Result<()> {
    let version = config_version(admin).await?;
    converge(dps, version).await?;
    Ok(())
}

/// Starts DP `name` of `cluster` with `args` and waits until it is ready.
async fn start_dp(cluster: &Cluster, name: &str, args: &[&str]) -> Result<DataPlane> {
    let options = args
        .iter()
        .fold(cluster.dp_options(name), |options, arg| options.arg(arg));
    let dp = DataPlane::start(options).await?;
    dp.wait_until_ready(patience()).await?;
    Ok(dp)
}

/// Binds `port` on a loopback address of its own (`127.x.y.z`, so that parallel tests do not
/// collide); a port below 1024 needs root or `CAP_NET_BIND_SERVICE`.
async fn bind_loopback(port: u16) -> Result<TcpListener> {
    let mut last = None;
    for _ in 0..20 {
        let [a, b, c, ..] = *uuid::Uuid::new_v4().as_bytes();
        let ip = std::net::Ipv4Addr::new(127, a.max(2), b, c.max(1));
        match TcpListener::bind((ip, port)).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                anyhow::bail!("binding {ip}:{port} needs root or CAP_NET_BIND_SERVICE: {e}")
            }
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "no free loopback address for port {port}: {last:?}"
    ))
}

// ---------------------------------------------------------------------------------------------
// Requests through the DP.

fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")
}

/// `GET path` on the DP's plain listener, with `Host: host` when given; the status and the
/// body (JSON, or a JSON string).
async fn get(
    http: &reqwest::Client,
    dp: &DataPlane,
    path: &str,
    host: Option<&str>,
) -> Result<(u16, Value)> {
    let mut request = http.get(format!("{}{path}", dp.proxy_url()?));
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("GET {path}"))?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// `GET path` must reach the upstream: returns its report.
async fn reached(
    http: &reqwest::Client,
    dp: &DataPlane,
    path: &str,
    host: Option<&str>,
) -> Result<Value> {
    let (status, body) = get(http, dp, path, host).await?;
    ensure!(
        status == 200,
        "GET {path} (host {host:?}): {status} {body}; DP `{TLS_FAILED}` lines: {:#?}",
        dp.log_lines(TLS_FAILED)
    );
    Ok(body)
}

/// `GET path` must fail with Kong's 502; returns the `upstream TLS failed` lines it logged
/// (one per attempt).
async fn refused(
    http: &reqwest::Client,
    dp: &DataPlane,
    path: &str,
    host: Option<&str>,
) -> Result<Vec<String>> {
    let before = dp.log_lines(TLS_FAILED).len();
    let (status, body) = get(http, dp, path, host).await?;
    ensure!(status == 502, "GET {path} (host {host:?}): {status} {body}");
    ensure!(body["message"] == json!(BAD_GATEWAY), "GET {path}: {body}");
    wait_until(
        &format!("a `{TLS_FAILED}` line for GET {path}"),
        patience(),
        || async {
            let lines = dp.log_lines(TLS_FAILED);
            Ok((lines.len() > before).then(|| lines[before..].to_vec()))
        },
    )
    .await
}

/// Asserts that every line of `lines` contains every one of `needles`.
#[track_caller]
fn assert_logged(lines: &[String], needles: &[&str]) {
    assert!(!lines.is_empty(), "no `{TLS_FAILED}` line");
    for line in lines {
        for needle in needles {
            assert!(line.contains(needle), "{needle:?} not in {line}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn verification_uses_the_service_cas_the_flags_and_the_depth() -> Result<()> {
    let cluster = Cluster::start(&["dp1", "dp2", "dp3"], &[]).await?;
    let admin = cluster.admin();
    let ca = Authority::root("upstream root")?;
    let server =
        TlsUpstream::https(&ca.leaf("upstream.test", &["upstream.test", "127.0.0.1"])?).await?;
    // root -> intermediate -> leaf; the server sends the leaf and the intermediate.
    let chain_root = Authority::root("chain root")?;
    let chained = chain_root.intermediate("chain intermediate")?;
    let chain_server = TlsUpstream::https(&chained.leaf("chain.test", &["chain.test"])?).await?;
    let expired =
        TlsUpstream::https(&ca.leaf_valid("expired.test", &["expired.test"], -30, -1)?).await?;
    let plaintext = Plaintext::start().await?;

    // dp1: defaults (verify on, public roots, no depth limit). dp2: verification off by
    // default. dp3: both roots as the default trust, depth 0 by default.
    let bundle = TempDir::new("upstream-ca")?;
    let bundle_path = bundle.join("ca.pem");
    std::fs::write(&bundle_path, format!("{}{}", ca.pem, chain_root.pem))?;
    let bundle_arg = bundle_path.to_string_lossy().into_owned();
    let dp1 = start_dp(&cluster, "dp1", &[]).await?;
    let dp2 = start_dp(&cluster, "dp2", &["--upstream-tls-verify", "off"]).await?;
    let dp3 = start_dp(
        &cluster,
        "dp3",
        &[
            "--upstream-trusted-ca",
            &bundle_arg,
            "--upstream-tls-verify-depth",
            "0",
        ],
    )
    .await?;

    let ca_id = ca_certificate(admin, &ca).await?;
    let chain_root_id = ca_certificate(admin, &chain_root).await?;
    upstream(admin, "upstream.test", json!({}), server.addr).await?;
    // Another name for the same server: its certificate does not hold it.
    upstream(admin, "wrong.test", json!({}), server.addr).await?;
    upstream(admin, "chain.test", json!({}), chain_server.addr).await?;
    upstream(admin, "expired.test", json!({}), expired.addr).await?;
    upstream(admin, "plaintext.test", json!({}), plaintext.addr).await?;
    let https = |host: &str, extra: Value| {
        merged(
            json!({"protocol": "https", "host": host, "port": 443}),
            extra,
        )
    };
    let none = json!({});
    for (path, service) in [
        (
            "/ca",
            https("upstream.test", json!({"ca_certificates": [ca_id]})),
        ),
        ("/no-ca", https("upstream.test", none.clone())),
        (
            "/must-verify",
            https("upstream.test", json!({"tls_verify": true})),
        ),
        (
            "/mismatch",
            https("wrong.test", json!({"ca_certificates": [ca_id]})),
        ),
        (
            "/no-verify",
            https("wrong.test", json!({"tls_verify": false})),
        ),
        (
            "/ip",
            json!({"url": format!("https://{}", server.addr), "ca_certificates": [ca_id]}),
        ),
        (
            "/chain",
            https("chain.test", json!({"ca_certificates": [chain_root_id]})),
        ),
        ("/chain-default", https("chain.test", none.clone())),
        (
            "/depth0",
            https(
                "chain.test",
                json!({"ca_certificates": [chain_root_id], "tls_verify_depth": 0}),
            ),
        ),
        (
            "/depth1",
            https(
                "chain.test",
                json!({"ca_certificates": [chain_root_id], "tls_verify_depth": 1}),
            ),
        ),
        (
            "/expired",
            https("expired.test", json!({"ca_certificates": [ca_id]})),
        ),
        (
            "/plaintext",
            https("plaintext.test", json!({"tls_verify": false})),
        ),
    ] {
        expose(admin, path, service, none.clone()).await?;
    }
    applied(admin, &[&dp1, &dp2, &dp3]).await?;
    let http = client()?;

    // The service's CA: verified by name; the name is the SNI and the Host.
    let seen = reached(&http, &dp1, "/ca", None).await?;
    assert_eq!(seen["sni"], json!("upstream.test"), "{seen}");
    assert_eq!(seen["host"], json!("upstream.test"), "{seen}");
    assert_eq!(seen["alpn"], json!("http/1.1"), "{seen}");
    assert_eq!(seen["version"], json!("HTTP/1.1"), "{seen}");
    // By IP address: verified against the IP SAN, and no SNI (none is sent for an address).
    let seen = reached(&http, &dp1, "/ip", None).await?;
    assert_eq!(seen["sni"], Value::Null, "{seen}");
    assert_eq!(seen["host"], json!(server.addr.to_string()), "{seen}");

    // No CA of the service: the public roots do not know the private CA.
    let lines = refused(&http, &dp1, "/no-ca", None).await?;
    assert_logged(
        &lines,
        &[
            "not issued by a trusted CA",
            "unknown issuer",
            "the built-in public roots",
            "server name 'upstream.test'",
        ],
    );
    // The certificate does not hold the name.
    let lines = refused(&http, &dp1, "/mismatch", None).await?;
    assert_logged(
        &lines,
        &[
            "does not match the server name",
            "server name 'wrong.test'",
            "it is valid for upstream.test, 127.0.0.1",
        ],
    );
    // Past its notAfter.
    let lines = refused(&http, &dp1, "/expired", None).await?;
    assert_logged(&lines, &["the upstream's certificate has expired (on "]);
    // Not a TLS server at all.
    let lines = refused(&http, &dp1, "/plaintext", None).await?;
    assert_logged(&lines, &["does not speak TLS on this port"]);
    // tls_verify=false: neither issuer nor name is checked.
    let seen = reached(&http, &dp1, "/no-verify", None).await?;
    assert_eq!(seen["sni"], json!("wrong.test"), "{seen}");

    // Depth: the path leaf -> intermediate -> root holds one intermediate.
    reached(&http, &dp1, "/chain", None).await?;
    reached(&http, &dp1, "/depth1", None).await?;
    let lines = refused(&http, &dp1, "/depth0", None).await?;
    assert_logged(
        &lines,
        &["needs more than 0 intermediate", "tls_verify_depth 0"],
    );
    let lines = refused(&http, &dp1, "/chain-default", None).await?;
    assert_logged(&lines, &["unknown issuer", "the built-in public roots"]);

    // --upstream-tls-verify off: services with tls_verify null are not verified; a service's
    // tls_verify=true still is.
    for path in ["/no-ca", "/mismatch", "/chain-default", "/depth0"] {
        reached(&http, &dp2, path, None).await?;
    }
    let lines = refused(&http, &dp2, "/must-verify", None).await?;
    assert_logged(&lines, &["unknown issuer", "the built-in public roots"]);
    reached(&http, &dp2, "/ca", None).await?;

    // --upstream-trusted-ca: trusted when a service lists no CA; --upstream-tls-verify-depth 0
    // applies when the service's depth is null, and a service's own depth wins.
    reached(&http, &dp3, "/no-ca", None).await?;
    reached(&http, &dp3, "/must-verify", None).await?;
    let lines = refused(&http, &dp3, "/chain-default", None).await?;
    assert_logged(&lines, &["tls_verify_depth 0"]);
    let lines = refused(&http, &dp3, "/chain", None).await?;
    assert_logged(&lines, &["tls_verify_depth 0"]);
    reached(&http, &dp3, "/depth1", None).await?;
    let lines = refused(&http, &dp3, "/mismatch", None).await?;
    assert_logged(&lines, &["does not match the server name"]);
    Ok(())
}

#[tokio::test]
async fn client_certificate_comes_from_service_then_upstream_then_flag() -> Result<()> {
    let cluster = Cluster::start(&["dp1", "dp2"], &[]).await?;
    let admin = cluster.admin();
    let server_ca = Authority::root("server root")?;
    let client_ca = Authority::root("client root")?;
    let rogue_ca = Authority::root("rogue root")?;
    let server = TlsUpstream::start(
        &server_ca.leaf("mtls.test", &["mtls.test", "127.0.0.1"])?,
        Some(&client_ca),
        &["http/1.1"],
    )
    .await?;

    // dp2 has a global client certificate.
    let files = TempDir::new("client-ssl")?;
    let global = client_ca.leaf("global-client", &["global-client"])?;
    let (cert_path, key_path) = (files.join("client.crt"), files.join("client.key"));
    std::fs::write(&cert_path, &global.cert)?;
    std::fs::write(&key_path, &global.key)?;
    let dp1 = start_dp(&cluster, "dp1", &[]).await?;
    let dp2 = start_dp(
        &cluster,
        "dp2",
        &[
            "--client-ssl",
            "on",
            "--client-ssl-cert",
            &cert_path.to_string_lossy(),
            "--client-ssl-cert-key",
            &key_path.to_string_lossy(),
        ],
    )
    .await?;

    let ca_id = ca_certificate(admin, &server_ca).await?;
    let of_service = certificate(
        admin,
        &client_ca.leaf("service-client", &["service-client"])?,
    )
    .await?;
    let of_upstream = certificate(
        admin,
        &client_ca.leaf("upstream-client", &["upstream-client"])?,
    )
    .await?;
    let rogue = certificate(admin, &rogue_ca.leaf("rogue-client", &["rogue-client"])?).await?;
    upstream(
        admin,
        "mtls.test",
        json!({"client_certificate": {"id": of_upstream}}),
        server.addr,
    )
    .await?;
    let none = json!({});
    let named = |extra: Value| {
        let service = json!({"protocol": "https", "host": "mtls.test", "port": 443,
                             "ca_certificates": [ca_id]});
        merged(service, extra)
    };
    let direct = |extra: Value| {
        let service =
            json!({"url": format!("https://{}", server.addr), "ca_certificates": [ca_id]});
        merged(service, extra)
    };
    for (path, service) in [
        // Both the service and its upstream name a certificate: the service's wins.
        (
            "/service",
            named(json!({"client_certificate": {"id": of_service}})),
        ),
        // Only the upstream does.
        ("/upstream", named(none.clone())),
        // Neither (no upstream entity at all).
        ("/none", direct(none.clone())),
        // One the upstream does not trust.
        (
            "/rogue",
            direct(json!({"client_certificate": {"id": rogue}})),
        ),
    ] {
        expose(admin, path, service, none.clone()).await?;
    }
    applied(admin, &[&dp1, &dp2]).await?;
    let http = client()?;

    for dp in [&dp1, &dp2] {
        let seen = reached(&http, dp, "/service", None).await?;
        assert_eq!(seen["client_cn"], json!("service-client"), "{seen}");
        assert_eq!(seen["sni"], json!("mtls.test"), "{seen}");
        let seen = reached(&http, dp, "/upstream", None).await?;
        assert_eq!(seen["client_cn"], json!("upstream-client"), "{seen}");
        // TLS 1.3 sends the server's refusal of a client certificate after the handshake: when
        // it arrives after the pooled connection was handed to the request, the DP logs the
        // failed request instead (still a 502). Ask until the refusal itself is logged.
        let before = dp.log_lines(TLS_FAILED).len();
        let lines = wait_until(
            "the refusal of the rogue certificate logged",
            patience(),
            || async {
                let lines = dp.log_lines(TLS_FAILED);
                if lines.len() > before {
                    return Ok(Some(lines[before..].to_vec()));
                }
                let (status, body) = get(&http, dp, "/rogue", None).await?;
                ensure!(status == 502, "GET /rogue: {status} {body}");
                Ok(None)
            },
        )
        .await?;
        assert_logged(&lines, &["the upstream refused the client certificate"]);
    }
    // Nothing configured anywhere: refused, and the log says what is missing.
    let lines = refused(&http, &dp1, "/none", None).await?;
    assert_logged(
        &lines,
        &[
            "the upstream requires a client certificate and none is configured",
            "--client-ssl-cert",
        ],
    );
    // The DP's --client-ssl-cert.
    let seen = reached(&http, &dp2, "/none", None).await?;
    assert_eq!(seen["client_cn"], json!("global-client"), "{seen}");
    Ok(())
}

#[tokio::test]
async fn rotated_client_certificate_and_ca_take_effect_on_new_connections() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = start_dp(&cluster, "dp1", &[]).await?;
    let server_ca = Authority::root("server root")?;
    let other_ca = Authority::root("another root")?;
    let client_ca = Authority::root("client root")?;
    let mtls = TlsUpstream::start(
        &server_ca.leaf("rotate.test", &["rotate.test", "127.0.0.1"])?,
        Some(&client_ca),
        &["http/1.1"],
    )
    .await?;
    // A CA certificate is uploaded once (its digest is unique): the second service's upstream
    // has its own root.
    let trust_root = Authority::root("trust root")?;
    let plain = TlsUpstream::https(&trust_root.leaf("trust.test", &["127.0.0.1"])?).await?;

    let ca_id = ca_certificate(admin, &server_ca).await?;
    let cert_id = certificate(admin, &client_ca.leaf("client-v1", &["client-v1"])?).await?;
    let upstream_cert =
        certificate(admin, &client_ca.leaf("upstream-v1", &["upstream-v1"])?).await?;
    // The CA rotation below has a service and upstream of its own (`/trust`); these two
    // services keep their CA throughout.
    let none = json!({});
    let mtls_service = expose(
        admin,
        "/mtls",
        json!({"url": format!("https://{}", mtls.addr), "ca_certificates": [ca_id],
               "client_certificate": {"id": cert_id}}),
        none.clone(),
    )
    .await?;
    upstream(
        admin,
        "rotate.test",
        json!({"client_certificate": {"id": upstream_cert}}),
        mtls.addr,
    )
    .await?;
    expose(
        admin,
        "/via-upstream",
        json!({"protocol": "https", "host": "rotate.test", "port": 443,
               "ca_certificates": [ca_id]}),
        none.clone(),
    )
    .await?;
    let trust_ca = ca_certificate(admin, &trust_root).await?;
    expose(
        admin,
        "/trust",
        json!({"url": format!("https://{}", plain.addr), "ca_certificates": [trust_ca]}),
        none.clone(),
    )
    .await?;
    applied(admin, &[&dp]).await?;
    let http = client()?;

    // The client certificate: v1, on a pooled connection.
    let first = reached(&http, &dp, "/mtls", None).await?;
    assert_eq!(first["client_cn"], json!("client-v1"), "{first}");
    let again = reached(&http, &dp, "/mtls", None).await?;
    assert_eq!(
        again["conn"], first["conn"],
        "not pooled: {first} then {again}"
    );

    let via_upstream = reached(&http, &dp, "/via-upstream", None).await?;
    assert_eq!(
        via_upstream["client_cn"],
        json!("upstream-v1"),
        "{via_upstream}"
    );

    // Same certificate ids, new pairs: the next requests open connections with v2.
    for (id, cn) in [(&cert_id, "client-v2"), (&upstream_cert, "upstream-v2")] {
        let pem = client_ca.leaf(cn, &[cn])?;
        patch(
            admin,
            &format!("/certificates/{id}"),
            json!({"cert": pem.cert, "key": pem.key}),
        )
        .await?;
    }
    applied(admin, &[&dp]).await?;
    let rotated = reached(&http, &dp, "/mtls", None).await?;
    assert_eq!(
        rotated["client_cn"],
        json!("client-v2"),
        "still the old identity after the PATCH was applied: {rotated}"
    );
    assert_ne!(rotated["conn"], first["conn"], "{rotated}");
    let rotated = reached(&http, &dp, "/via-upstream", None).await?;
    assert_eq!(rotated["client_cn"], json!("upstream-v2"), "{rotated}");

    // Another certificate id on the service.
    let v3 = certificate(admin, &client_ca.leaf("client-v3", &["client-v3"])?).await?;
    patch(
        admin,
        &format!("/services/{mtls_service}"),
        json!({"client_certificate": {"id": v3}}),
    )
    .await?;
    applied(admin, &[&dp]).await?;
    let switched = reached(&http, &dp, "/mtls", None).await?;
    assert_eq!(switched["client_cn"], json!("client-v3"), "{switched}");

    // The CA: trusted, then replaced (same id) by a CA that did not issue the server's
    // certificate, then put back.
    let before = reached(&http, &dp, "/trust", None).await?;
    assert_eq!(before["sni"], Value::Null, "{before}");
    patch(
        admin,
        &format!("/ca_certificates/{trust_ca}"),
        json!({"cert": other_ca.pem}),
    )
    .await?;
    applied(admin, &[&dp]).await?;
    let lines = refused(&http, &dp, "/trust", None).await?;
    assert_logged(
        &lines,
        &[
            "not issued by a trusted CA",
            "trusted: the service's ca_certificates",
        ],
    );
    // The other services' CA did not change: they still work.
    let unrelated = reached(&http, &dp, "/mtls", None).await?;
    assert_eq!(unrelated["client_cn"], json!("client-v3"), "{unrelated}");
    patch(
        admin,
        &format!("/ca_certificates/{trust_ca}"),
        json!({"cert": trust_root.pem}),
    )
    .await?;
    applied(admin, &[&dp]).await?;
    reached(&http, &dp, "/trust", None).await?;
    Ok(())
}

#[tokio::test]
async fn sni_is_the_service_host_the_preserved_host_or_the_host_header() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = start_dp(&cluster, "dp1", &[]).await?;
    let ca = Authority::root("sni root")?;
    let server =
        TlsUpstream::https(&ca.leaf("sni.test", &["sni.test", "client-host.test", "header.test"])?)
            .await?;

    let ca_id = ca_certificate(admin, &ca).await?;
    upstream(admin, "sni.test", json!({}), server.addr).await?;
    // The certificate does not hold `named.test`, only its host_header.
    upstream(
        admin,
        "named.test",
        json!({"host_header": "header.test"}),
        server.addr,
    )
    .await?;
    let service = |host: &str| {
        let service = json!({"protocol": "https", "host": host, "port": 443});
        merged(service, json!({"ca_certificates": [ca_id]}))
    };
    let sni_service = expose(admin, "/plain", service("sni.test"), json!({})).await?;
    post(
        admin,
        "/routes",
        json!({"paths": ["/preserve"], "preserve_host": true, "service": {"id": sni_service}}),
    )
    .await?;
    let named_service = expose(admin, "/header", service("named.test"), json!({})).await?;
    post(
        admin,
        "/routes",
        json!({"paths": ["/header-preserve"], "preserve_host": true,
               "service": {"id": named_service}}),
    )
    .await?;
    applied(admin, &[&dp]).await?;
    let http = client()?;

    let seen = reached(&http, &dp, "/plain/x", Some("anything.test")).await?;
    assert_eq!(seen["sni"], json!("sni.test"), "{seen}");
    assert_eq!(seen["host"], json!("sni.test"), "{seen}");
    assert_eq!(seen["path"], json!("/x"), "{seen}");

    // preserve_host: the client's Host is sent as is, its name (without port) is the SNI
    // and the verified name.
    let seen = reached(&http, &dp, "/preserve", Some("client-host.test:8000")).await?;
    assert_eq!(seen["sni"], json!("client-host.test"), "{seen}");
    assert_eq!(seen["host"], json!("client-host.test:8000"), "{seen}");
    let before = seen["conn"].clone();
    // Another client Host: another SNI, so another connection.
    let seen = reached(&http, &dp, "/preserve", Some("SNI.test")).await?;
    assert_eq!(seen["sni"], json!("sni.test"), "{seen}");
    assert_eq!(seen["host"], json!("SNI.test"), "{seen}");
    assert_ne!(seen["conn"], before, "{seen}");
    // A client Host the certificate does not hold fails verification.
    let lines = refused(&http, &dp, "/preserve", Some("stranger.test")).await?;
    assert_logged(
        &lines,
        &[
            "does not match the server name",
            "server name 'stranger.test'",
        ],
    );

    // The upstream's host_header stands in for its name, as Host and as SNI.
    let seen = reached(&http, &dp, "/header", Some("anything.test")).await?;
    assert_eq!(seen["sni"], json!("header.test"), "{seen}");
    assert_eq!(seen["host"], json!("header.test"), "{seen}");
    // ... unless the route preserves the client's Host.
    let seen = reached(&http, &dp, "/header-preserve", Some("client-host.test")).await?;
    assert_eq!(seen["sni"], json!("client-host.test"), "{seen}");
    assert_eq!(seen["host"], json!("client-host.test"), "{seen}");
    Ok(())
}

#[tokio::test]
async fn grpcs_upstream_answers_over_h2_with_trailers() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let ca = Authority::root("grpc root")?;
    let server = TlsUpstream::start(&ca.leaf("grpc.test", &["grpc.test"])?, None, &["h2"]).await?;
    // A grpcs service has no ca_certificates (Kong): the DP's trust bundle holds the CA.
    let bundle = TempDir::new("upstream-ca")?;
    let bundle_path = bundle.join("ca.pem");
    std::fs::write(&bundle_path, &ca.pem)?;
    let dp = start_dp(
        &cluster,
        "dp1",
        &["--upstream-trusted-ca", &bundle_path.to_string_lossy()],
    )
    .await?;
    upstream(admin, "grpc.test", json!({}), server.addr).await?;
    upstream(admin, "wrong-grpc.test", json!({}), server.addr).await?;
    for (path, host) in [
        ("/echo.Echo", "grpc.test"),
        ("/wrong.Echo", "wrong-grpc.test"),
    ] {
        expose(
            admin,
            path,
            json!({"protocol": "grpcs", "host": host, "port": 443}),
            json!({"protocols": ["grpc"]}),
        )
        .await?;
    }
    // An https (HTTP/1.1) service to the same h2-only server.
    expose(
        admin,
        "/alpn",
        json!({"protocol": "https", "host": "grpc.test", "port": 443}),
        json!({}),
    )
    .await?;
    applied(admin, &[&dp]).await?;

    let tcp = TcpStream::connect(dp.proxy_addr()?).await?;
    // Without it, each call's DATA frame waits for the ACK of its HEADERS (Nagle against
    // delayed ACKs: 40 ms a call).
    tcp.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let call = |path: &str| {
        Request::post(format!("http://grpc.client/{path}"))
            .header(CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(Full::new(grpc_frame(b"hello")))
    };
    let response =
        tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(call("echo.Echo/Say")?))
            .await
            .context("no response")??;
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
    let collected = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
        .await
        .context("no body")??;
    let trailers = collected.trailers().cloned().context("no trailers")?;
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    let message = collected.to_bytes();
    let seen: Value = serde_json::from_slice(message.get(5..).context("no gRPC message")?)?;
    assert_eq!(seen["alpn"], json!("h2"), "{seen}");
    assert_eq!(seen["version"], json!("HTTP/2.0"), "{seen}");
    assert_eq!(seen["sni"], json!("grpc.test"), "{seen}");
    assert_eq!(seen["path"], json!("/echo.Echo/Say"), "{seen}");
    assert_eq!(seen["host"], json!("grpc.test"), "{seen}");
    // 20 more calls at once: multiplexed on the same upstream HTTP/2 connection.
    let calls = (0..20).map(|_| {
        let mut sender = sender.clone();
        let request = call("echo.Echo/Say");
        async move {
            let response = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(request?))
                .await
                .context("no response")??;
            ensure!(response.status() == 200, "{response:?}");
            let body = response.into_body().collect().await?;
            let seen: Value = serde_json::from_slice(body.to_bytes().get(5..).unwrap_or_default())?;
            Ok(seen["conn"].clone())
        }
    });
    let conns = futures_util::future::try_join_all(calls).await?;
    assert!(conns.iter().all(|c| *c == seen["conn"]), "{conns:?}");
    assert_eq!(server.handshakes(), 1, "TLS handshakes for 21 gRPC calls");

    // A failed handshake: a gRPC error, and the reason in the log.
    let before = dp.log_lines(TLS_FAILED).len();
    let response = tokio::time::timeout(
        REQUEST_TIMEOUT,
        sender.send_request(call("wrong.Echo/Say")?),
    )
    .await
    .context("no response")??;
    assert_eq!(response.status(), 502, "{response:?}");
    assert_eq!(response.headers()["grpc-status"], "14", "{response:?}");
    let lines = wait_until("the gRPC TLS failure logged", patience(), || async {
        let lines = dp.log_lines(TLS_FAILED);
        Ok((lines.len() > before).then(|| lines[before..].to_vec()))
    })
    .await?;
    assert_logged(
        &lines,
        &[
            "does not match the server name",
            "server name 'wrong-grpc.test'",
        ],
    );

    // ALPN: an HTTP/1.1 client offers only `http/1.1`, which the server refuses.
    let lines = refused(&client()?, &dp, "/alpn", None).await?;
    assert_logged(
        &lines,
        &[
            "no_application_protocol",
            "does not accept the offered ALPN",
        ],
    );
    Ok(())
}

#[tokio::test]
async fn sequential_requests_share_one_tls_connection() -> Result<()> {
    const REQUESTS: usize = 200;
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = start_dp(&cluster, "dp1", &[]).await?;
    let ca = Authority::root("reuse root")?;
    let server = TlsUpstream::https(&ca.leaf("reuse.test", &["127.0.0.1"])?).await?;
    let ca_id = ca_certificate(admin, &ca).await?;
    expose(
        admin,
        "/reuse",
        json!({"url": format!("https://{}", server.addr), "ca_certificates": [ca_id]}),
        json!({}),
    )
    .await?;
    applied(admin, &[&dp]).await?;
    let http = client()?;

    let started = Instant::now();
    for i in 0..REQUESTS {
        let seen = reached(&http, &dp, &format!("/reuse/{i}"), None).await?;
        assert_eq!(seen["path"], json!(format!("/{i}")), "{seen}");
        assert_eq!(seen["conn"], json!(1), "request {i}: {seen}");
    }
    let took = started.elapsed();
    println!(
        "{REQUESTS} sequential requests over TLS in {took:?} ({:?} each); upstream accepted {} \
         TCP connection(s), {} TLS handshake(s)",
        took / REQUESTS as u32,
        server.accepted(),
        server.handshakes()
    );
    assert_eq!(server.accepted(), 1, "TCP connections accepted");
    assert_eq!(server.handshakes(), 1, "TLS handshakes");

    // A configuration change that does not touch the service keeps its warm pool.
    let version = write(admin).await?;
    dp.wait_for_version(version, patience()).await?;
    let seen = reached(&http, &dp, "/reuse/after", None).await?;
    assert_eq!(seen["conn"], json!(1), "after an unrelated change: {seen}");
    assert_eq!(
        server.handshakes(),
        1,
        "TLS handshakes after an unrelated change"
    );
    Ok(())
}

#[tokio::test]
async fn stalled_tls_handshake_answers_504() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = start_dp(&cluster, "dp1", &[]).await?;
    // Accepts TCP connections and never answers the ClientHello.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    expose(
        admin,
        "/silent",
        json!({"url": format!("https://{addr}"), "connect_timeout": 300, "retries": 0}),
        json!({}),
    )
    .await?;
    applied(admin, &[&dp]).await?;

    let started = Instant::now();
    let (status, body) = get(&client()?, &dp, "/silent", None).await?;
    let took = started.elapsed();
    silent.abort();
    println!("stalled handshake: {status} after {took:?}");
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["message"], json!("The upstream server is timing out"));
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one attempt, no retry");
    assert!(
        took < Duration::from_secs(5),
        "the 300 ms connect timeout took {took:?}"
    );
    let line = dp
        .wait_for_log_line(patience(), |l| {
            l.contains(TLS_FAILED)
                && l.contains(&format!(
                    "connecting to upstream {addr} timed out after 300 ms"
                ))
        })
        .await?;
    println!("{line}");
    Ok(())
}

/// Binds ports 443 and 80, which takes root (CI runs as root); elsewhere the test says so
/// and stops.
#[tokio::test]
async fn host_omits_only_the_default_port_of_the_scheme() -> Result<()> {
    if let Err(error) = bind_loopback(443).await {
        eprintln!("skipped: {error}");
        return Ok(());
    }
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = start_dp(&cluster, "dp1", &[]).await?;
    let ca = Authority::root("port root")?;
    let ca_id = ca_certificate(admin, &ca).await?;
    let mut servers = Vec::new();
    for port in [443, 80] {
        let listener = bind_loopback(port).await?;
        let ip = listener.local_addr()?.ip().to_string();
        let identity = ca.leaf(&ip, &[&ip])?;
        let server = TlsUpstream::start_on(listener, &identity, None, &["http/1.1"]).await?;
        expose(
            admin,
            &format!("/port-{port}"),
            json!({"url": format!("https://{}", server.addr), "ca_certificates": [ca_id]}),
            json!({}),
        )
        .await?;
        servers.push(server);
    }
    applied(admin, &[&dp]).await?;
    let http = client()?;

    // Kong's set_host_header: `host:port` unless the port is the scheme's default.
    let default_port = reached(&http, &dp, "/port-443", None).await?;
    let other_port = reached(&http, &dp, "/port-80", None).await?;
    let mut failures = Vec::new();
    let expected = servers[0].addr.ip().to_string();
    if default_port["host"] != json!(expected) {
        failures.push(format!(
            "https on 443: Host {} (expected {expected:?})",
            default_port["host"]
        ));
    }
    let expected = servers[1].addr.to_string();
    if other_port["host"] != json!(expected) {
        failures.push(format!(
            "https on 80: Host {} (expected {expected:?})",
            other_port["host"]
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}
