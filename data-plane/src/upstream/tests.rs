//! Real TLS upstreams on loopback (tokio-rustls + hyper), certificates from rcgen. Each
//! upstream answers `conn=N sni=NAME alpn=PROTO client=CN`: which accepted connection
//! served the request, the SNI it received, the ALPN protocol and the client
//! certificate's common name (`-` for none).

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ServerConfig, SupportedProtocolVersion};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;
use crate::upstream::error::TlsFailure;

// === certificates ===

/// A CA that issues intermediates and leaves.
struct TestCa {
    der: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key.
struct Leaf {
    der: CertificateDer<'static>,
    pem: String,
    key_pem: String,
    key_der: Vec<u8>,
}

fn params(cn: &str, sans: &[&str]) -> CertificateParams {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params
}

fn days(n: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(n)
}

impl TestCa {
    fn new(cn: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = params(cn, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn intermediate(&self, cn: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = params(cn, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf valid from two days ago until `until_days` from now.
    fn leaf_until(&self, cn: &str, sans: &[&str], until_days: i64) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = params(cn, sans);
        params.not_before = days(-2);
        params.not_after = days(until_days);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            der: cert.der().clone(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    fn leaf(&self, cn: &str, sans: &[&str]) -> Leaf {
        self.leaf_until(cn, sans, 365)
    }
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// The pair as rustls presents it (the global client certificate).
    fn certified_key(&self) -> Arc<CertifiedKey> {
        let provider = aws_lc_rs::default_provider();
        let key = provider.key_provider.load_private_key(self.key()).unwrap();
        Arc::new(CertifiedKey::new(vec![self.der.clone()], key))
    }

    /// A certificate entity with this pair.
    fn entity(&self, id: Uuid) -> model::Certificate {
        serde_json::from_value(json!({
            "id": id, "created_at": 1, "updated_at": 1,
            "cert": self.pem, "key": self.key_pem,
            "subject": "CN=test", "issuer": "CN=test", "sans": [],
            "not_before": 0, "not_after": 4_000_000_000_i64,
            "fingerprint_sha256": "", "key_type": "ecdsa",
        }))
        .unwrap()
    }
}

fn ca_entity(id: Uuid, ca: &TestCa) -> model::CaCertificate {
    serde_json::from_value(json!({
        "id": id, "created_at": 1, "updated_at": 1, "cert": ca.pem, "cert_digest": "",
        "subject": "CN=ca", "issuer": "CN=ca", "not_before": 0, "not_after": 4_000_000_000_i64,
    }))
    .unwrap()
}

// === configuration ===

/// A service; `extra` fields (tls_verify, ca_certificates, client_certificate, ...) are
/// merged in.
fn service(id: Uuid, protocol: &str, host: &str, extra: serde_json::Value) -> model::Service {
    let mut value = json!({
        "id": id, "created_at": 1, "updated_at": 1, "name": format!("svc-{id}"),
        "protocol": protocol, "host": host, "port": 443, "enabled": true,
    });
    if let (Some(base), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::from_value(value).unwrap()
}

fn upstream_entity(id: Uuid, name: &str, client_certificate: Option<Uuid>) -> model::Upstream {
    serde_json::from_value(json!({
        "id": id, "created_at": 1, "updated_at": 1, "name": name,
        "client_certificate": client_certificate.map(|id| json!({"id": id})),
    }))
    .unwrap()
}

fn compile(version: u64, config: model::Config) -> Runtime {
    Runtime::compile(version, format!("hash-{version}"), config).unwrap()
}

/// One service with its CA certificates.
fn one_service(service: model::Service, cas: Vec<model::CaCertificate>) -> Runtime {
    compile(
        1,
        model::Config {
            services: vec![service],
            ca_certificates: cas,
            ..Default::default()
        },
    )
}

fn layer() -> UpstreamTls {
    UpstreamTls::new(UpstreamTlsSettings::default())
}

// === upstream servers ===

/// A TLS upstream; stops when dropped.
struct TestUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    async fn start(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let id = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let conn = tls.get_ref().1;
                    let sni = conn.server_name().unwrap_or("-").to_owned();
                    let alpn = conn
                        .alpn_protocol()
                        .map_or("-".to_owned(), |p| String::from_utf8_lossy(p).into_owned());
                    let client = conn
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|cert| x509::cert_facts(cert).ok())
                        .and_then(|facts| facts.common_name)
                        .unwrap_or_else(|| "-".to_owned());
                    let info = format!("conn={id} sni={sni} alpn={alpn} client={client}");
                    let service = service_fn(move |_request| {
                        let body = Full::new(Bytes::from(info.clone()));
                        async move { Ok::<_, Infallible>(Response::new(body)) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    /// An upstream presenting `chain` (leaf first), asking for a client certificate issued
    /// by `client_ca` when given.
    async fn with(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_ca: Option<&TestCa>,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Self {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.der.clone()).unwrap();
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::start(config).await
    }

    /// An upstream presenting `leaf` alone.
    async fn serving(leaf: &Leaf) -> Self {
        Self::with(
            vec![leaf.der.clone()],
            leaf.key(),
            None,
            rustls::DEFAULT_VERSIONS,
        )
        .await
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

// === requests ===

fn empty() -> UpstreamBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// GET / on `addr` through `client`; the body on success.
async fn get(client: &TlsClient, addr: SocketAddr) -> Result<String, legacy::Error> {
    send(client, &format!("https://{addr}/"), Version::HTTP_11).await
}

async fn send(client: &TlsClient, uri: &str, version: Version) -> Result<String, legacy::Error> {
    let request = Request::get(uri)
        .version(version)
        .header(http::header::HOST, "upstream.test")
        .body(empty())
        .unwrap();
    let response = client.request(request).await?;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

/// The upstream TLS error inside a client error.
fn tls_error(error: &legacy::Error) -> &UpstreamTlsError {
    UpstreamTlsError::find(error).unwrap_or_else(|| panic!("no upstream TLS error in {error:?}"))
}

/// The client for `service` of `runtime` (no upstream entity), HTTP/1.1.
fn client_for(tls: &UpstreamTls, runtime: &Runtime, id: Uuid, name: &str) -> TlsClient {
    let service = runtime.service(&id).unwrap();
    tls.client(runtime, service, None, name, false).unwrap()
}

// === verification ===

#[tokio::test]
async fn verifies_with_the_service_ca_by_name_and_ip() {
    let ca = TestCa::new("service root");
    let leaf = ca.leaf("localhost", &["localhost", "127.0.0.1"]);
    let upstream = TestUpstream::serving(&leaf).await;
    let (ca_id, id) = (Uuid::new_v4(), Uuid::new_v4());
    let runtime = one_service(
        service(
            id,
            "https",
            "localhost",
            json!({"ca_certificates": [ca_id]}),
        ),
        vec![ca_entity(ca_id, &ca)],
    );
    let tls = layer();

    let body = get(&client_for(&tls, &runtime, id, "localhost"), upstream.addr)
        .await
        .unwrap();
    assert!(
        body.starts_with("conn=1 sni=localhost alpn=http/1.1"),
        "{body}"
    );

    // An IP address is verified against the IP SANs; no SNI is sent for it.
    let body = get(&client_for(&tls, &runtime, id, "127.0.0.1"), upstream.addr)
        .await
        .unwrap();
    assert!(body.starts_with("conn=2 sni=- "), "{body}");
}

#[tokio::test]
async fn unknown_issuer_without_the_ca() {
    let ca = TestCa::new("private root");
    let leaf = ca.leaf("localhost", &["localhost"]);
    let upstream = TestUpstream::serving(&leaf).await;
    let id = Uuid::new_v4();
    // No ca_certificates, no global bundle: the public roots do not know this CA.
    let runtime = one_service(service(id, "https", "localhost", json!({})), vec![]);
    let tls = layer();

    let error = get(&client_for(&tls, &runtime, id, "localhost"), upstream.addr)
        .await
        .unwrap_err();
    let tls_error = tls_error(&error);
    assert!(
        matches!(
            tls_error,
            UpstreamTlsError::Handshake {
                failure: TlsFailure::UnknownIssuer {
                    trust: TrustSource::System
                },
                ..
            }
        ),
        "{tls_error:?}"
    );
    let text = tls_error.to_string();
    assert!(text.contains("unknown issuer"), "{text}");
    assert!(text.contains("not issued by a trusted CA"), "{text}");
    assert!(text.contains(&upstream.addr.to_string()), "{text}");
    assert!(tls_error.is_retryable());

    // The global bundle (--upstream-trusted-ca) applies when the service lists no CA.
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let global = UpstreamTls::new(UpstreamTlsSettings {
        trusted_ca: Some(Arc::new(roots)),
        ..UpstreamTlsSettings::default()
    });
    let body = get(
        &client_for(&global, &runtime, id, "localhost"),
        upstream.addr,
    )
    .await
    .unwrap();
    assert!(body.starts_with("conn=2 "), "{body}");
}

#[tokio::test]
async fn name_mismatch() {
    let ca = TestCa::new("root");
    let leaf = ca.leaf("localhost", &["localhost", "127.0.0.1"]);
    let upstream = TestUpstream::serving(&leaf).await;
    let (ca_id, id) = (Uuid::new_v4(), Uuid::new_v4());
    let runtime = one_service(
        service(
            id,
            "https",
            "api.example.com",
            json!({"ca_certificates": [ca_id]}),
        ),
        vec![ca_entity(ca_id, &ca)],
    );
    let tls = layer();

    let error = get(
        &client_for(&tls, &runtime, id, "api.example.com"),
        upstream.addr,
    )
    .await
    .unwrap_err();
    let text = tls_error(&error).to_string();
    assert!(
        text.contains("does not match the server name") && text.contains("api.example.com"),
        "{text}"
    );
    assert!(
        text.ends_with("(it is valid for localhost, 127.0.0.1)"),
        "{text}"
    );

    // Another IP address than its SAN (the connection still goes to 127.0.0.1).
    let error = get(&client_for(&tls, &runtime, id, "127.0.0.2"), upstream.addr)
        .await
        .unwrap_err();
    let text = tls_error(&error).to_string();
    assert!(text.contains("does not match the server name"), "{text}");
}

#[tokio::test]
async fn expired_leaf() {
    let ca = TestCa::new("root");
    let leaf = ca.leaf_until("localhost", &["localhost"], -1);
    let upstream = TestUpstream::serving(&leaf).await;
    let (ca_id, id) = (Uuid::new_v4(), Uuid::new_v4());
    let runtime = one_service(
        service(
            id,
            "https",
            "localhost",
            json!({"ca_certificates": [ca_id]}),
        ),
        vec![ca_entity(ca_id, &ca)],
    );
    let error = get(
        &client_for(&layer(), &runtime, id, "localhost"),
        upstream.addr,
    )
    .await
    .unwrap_err();
    let text = tls_error(&error).to_string();
    assert!(text.contains("certificate has expired (on "), "{text}");
    assert!(text.contains("UTC)"), "{text}");
}

#[tokio::test]
async fn depth_counts_the_intermediates_of_the_verified_path() {
    let root = TestCa::new("root");
    let intermediate = root.intermediate("intermediate");
    let leaf = intermediate.leaf("localhost", &["localhost"]);
    let root_id = Uuid::new_v4();
    let chain = vec![leaf.der.clone(), intermediate.der.clone()];
    let upstream =
        TestUpstream::with(chain.clone(), leaf.key(), None, rustls::DEFAULT_VERSIONS).await;
    // The same chain with the root appended (a common server misconfiguration).
    let mut with_root = chain;
    with_root.push(root.der.clone());
    let sends_root =
        TestUpstream::with(with_root, leaf.key(), None, rustls::DEFAULT_VERSIONS).await;
    let tls = layer();

    for (depth, ok) in [
        (None, true),
        (Some(2), true),
        (Some(1), true),
        (Some(0), false),
    ] {
        let id = Uuid::new_v4();
        let runtime = one_service(
            service(
                id,
                "https",
                "localhost",
                json!({"ca_certificates": [root_id], "tls_verify_depth": depth}),
            ),
            vec![ca_entity(root_id, &root)],
        );
        let client = client_for(&tls, &runtime, id, "localhost");
        for addr in [upstream.addr, sends_root.addr] {
            match get(&client, addr).await {
                Ok(_) => assert!(ok, "depth {depth:?} should fail ({addr})"),
                Err(error) => {
                    assert!(!ok, "depth {depth:?}: {error:?}");
                    let failure = tls_error(&error);
                    assert!(
                        matches!(
                            failure,
                            UpstreamTlsError::Handshake {
                                failure: TlsFailure::DepthExceeded { depth: 0 },
                                ..
                            }
                        ),
                        "{failure:?}"
                    );
                    let text = failure.to_string();
                    assert!(
                        text.contains("needs more than 0 intermediate certificate(s)"),
                        "{text}"
                    );
                }
            }
        }
    }

    // The global default depth applies when the service has none.
    let strict = UpstreamTls::new(UpstreamTlsSettings {
        verify_depth: Some(0),
        ..UpstreamTlsSettings::default()
    });
    let id = Uuid::new_v4();
    let runtime = one_service(
        service(
            id,
            "https",
            "localhost",
            json!({"ca_certificates": [root_id]}),
        ),
        vec![ca_entity(root_id, &root)],
    );
    let error = get(
        &client_for(&strict, &runtime, id, "localhost"),
        upstream.addr,
    )
    .await
    .unwrap_err();
    assert!(tls_error(&error).to_string().contains("tls_verify_depth 0"));
}

#[tokio::test]
async fn verification_off_accepts_an_unknown_issuer() {
    let ca = TestCa::new("unknown root");
    let leaf = ca.leaf("localhost", &["localhost"]);
    let upstream = TestUpstream::serving(&leaf).await;
    let (off, default, on) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let runtime = compile(
        1,
        model::Config {
            services: vec![
                service(off, "https", "x", json!({"tls_verify": false})),
                service(default, "https", "x", json!({})),
                service(on, "https", "x", json!({"tls_verify": true})),
            ],
            ..Default::default()
        },
    );
    // Even the name does not matter without verification.
    let body = get(
        &client_for(&layer(), &runtime, off, "wrong.example"),
        upstream.addr,
    )
    .await
    .unwrap();
    assert!(body.starts_with("conn=1 sni=wrong.example"), "{body}");

    // The global default (on) applies to a null tls_verify; turned off, the service's own
    // `true` still wins.
    let lax = UpstreamTls::new(UpstreamTlsSettings {
        verify: false,
        ..UpstreamTlsSettings::default()
    });
    assert!(
        get(
            &client_for(&layer(), &runtime, default, "localhost"),
            upstream.addr
        )
        .await
        .is_err()
    );
    assert!(
        get(
            &client_for(&lax, &runtime, default, "localhost"),
            upstream.addr
        )
        .await
        .is_ok()
    );
    assert!(
        get(&client_for(&lax, &runtime, on, "localhost"), upstream.addr)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn empty_ca_list_trusts_nothing() {
    let id = Uuid::new_v4();
    let runtime = one_service(
        service(id, "https", "x", json!({"ca_certificates": []})),
        vec![],
    );
    let service = runtime.service(&id).unwrap();
    let error = layer()
        .client(&runtime, service, None, "x", false)
        .unwrap_err();
    assert!(!error.is_retryable());
    let text = error.to_string();
    assert!(
        text.contains("the service's ca_certificates holds no CA certificate"),
        "{text}"
    );
}

// === client certificates ===

#[tokio::test]
async fn client_certificate_precedence() {
    let server_ca = TestCa::new("server root");
    let leaf = server_ca.leaf("localhost", &["localhost"]);
    let client_ca = TestCa::new("client root");
    let upstream = TestUpstream::with(
        vec![leaf.der.clone()],
        leaf.key(),
        Some(&client_ca),
        rustls::DEFAULT_VERSIONS,
    )
    .await;
    let (svc_cert, ups_cert) = (Uuid::new_v4(), Uuid::new_v4());
    let svc_leaf = client_ca.leaf("service-client", &[]);
    let ups_leaf = client_ca.leaf("upstream-client", &[]);
    let global_leaf = client_ca.leaf("global-client", &[]);
    let ca_id = Uuid::new_v4();
    let (upstream_id, both, only_upstream, none) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let trust = json!({"ca_certificates": [ca_id]});
    let mut with_cert = trust.clone();
    with_cert["client_certificate"] = json!({"id": svc_cert});
    let runtime = compile(
        1,
        model::Config {
            services: vec![
                service(both, "https", "pool.internal", with_cert),
                service(only_upstream, "https", "pool.internal", trust.clone()),
                service(none, "https", "localhost", trust),
            ],
            upstreams: vec![upstream_entity(
                upstream_id,
                "pool.internal",
                Some(ups_cert),
            )],
            certificates: vec![svc_leaf.entity(svc_cert), ups_leaf.entity(ups_cert)],
            ca_certificates: vec![ca_entity(ca_id, &server_ca)],
            ..Default::default()
        },
    );
    let pool = runtime.upstream(&upstream_id);
    let global = UpstreamTls::new(UpstreamTlsSettings {
        client_certificate: Some(global_leaf.certified_key()),
        ..UpstreamTlsSettings::default()
    });
    let without_global = layer();

    let seen = |tls: &UpstreamTls, id: Uuid, upstream: Option<&model::Upstream>| {
        let service = runtime.service(&id).unwrap();
        tls.client(&runtime, service, upstream, "localhost", false)
            .unwrap()
    };
    for tls in [&global, &without_global] {
        let body = get(&seen(tls, both, pool), upstream.addr).await.unwrap();
        assert!(body.ends_with("client=service-client"), "{body}");
        let body = get(&seen(tls, only_upstream, pool), upstream.addr)
            .await
            .unwrap();
        assert!(body.ends_with("client=upstream-client"), "{body}");
    }
    let body = get(&seen(&global, none, None), upstream.addr)
        .await
        .unwrap();
    assert!(body.ends_with("client=global-client"), "{body}");

    // None at all: the upstream refuses (TLS 1.3 reports it on the first read).
    let error = get(&seen(&without_global, none, None), upstream.addr)
        .await
        .unwrap_err();
    let failure = tls_error(&error);
    assert!(
        matches!(
            failure,
            UpstreamTlsError::Handshake {
                failure: TlsFailure::ClientCertificateRequired { .. },
                ..
            }
        ),
        "{failure:?}"
    );
    let text = failure.to_string();
    assert!(
        text.contains("requires a client certificate and none is configured"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn missing_or_refused_client_certificate_over_tls12() {
    let server_ca = TestCa::new("server root");
    let leaf = server_ca.leaf("localhost", &["localhost"]);
    let client_ca = TestCa::new("client root");
    let upstream = TestUpstream::with(
        vec![leaf.der.clone()],
        leaf.key(),
        Some(&client_ca),
        &[&rustls::version::TLS12],
    )
    .await;
    let ca_id = Uuid::new_v4();
    let (none, stranger) = (Uuid::new_v4(), Uuid::new_v4());
    let other_ca = TestCa::new("other client root");
    let stranger_cert = Uuid::new_v4();
    let runtime = compile(
        1,
        model::Config {
            services: vec![
                service(
                    none,
                    "https",
                    "localhost",
                    json!({"ca_certificates": [ca_id]}),
                ),
                service(
                    stranger,
                    "https",
                    "localhost",
                    json!({
                        "ca_certificates": [ca_id],
                        "client_certificate": {"id": stranger_cert},
                    }),
                ),
            ],
            certificates: vec![other_ca.leaf("stranger", &[]).entity(stranger_cert)],
            ca_certificates: vec![ca_entity(ca_id, &server_ca)],
            ..Default::default()
        },
    );
    let tls = layer();

    let error = get(
        &client_for(&tls, &runtime, none, "localhost"),
        upstream.addr,
    )
    .await
    .unwrap_err();
    let failure = tls_error(&error);
    assert!(
        failure.to_string().contains("client certificate"),
        "{failure}"
    );
    assert!(error.is_connect(), "TLS 1.2 fails in the handshake itself");

    let error = get(
        &client_for(&tls, &runtime, stranger, "localhost"),
        upstream.addr,
    )
    .await
    .unwrap_err();
    let failure = tls_error(&error);
    assert!(
        matches!(
            failure,
            UpstreamTlsError::Handshake {
                failure: TlsFailure::ClientCertificateRejected { .. },
                ..
            }
        ),
        "{failure:?}"
    );
    assert!(
        failure
            .to_string()
            .contains("the upstream refused the client certificate"),
        "{failure}"
    );
}

#[tokio::test]
async fn rotated_certificate_gets_a_new_pool_and_unchanged_settings_keep_theirs() {
    let server_ca = TestCa::new("server root");
    let leaf = server_ca.leaf("localhost", &["localhost"]);
    let client_ca = TestCa::new("client root");
    let upstream = TestUpstream::with(
        vec![leaf.der.clone()],
        leaf.key(),
        Some(&client_ca),
        rustls::DEFAULT_VERSIONS,
    )
    .await;
    let (ca_id, cert_id, id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let config = |client: &Leaf, extra: bool| {
        let mut services = vec![service(
            id,
            "https",
            "localhost",
            json!({"ca_certificates": [ca_id], "client_certificate": {"id": cert_id}}),
        )];
        if extra {
            services.push(service(Uuid::new_v4(), "http", "unrelated", json!({})));
        }
        model::Config {
            services,
            certificates: vec![client.entity(cert_id)],
            ca_certificates: vec![ca_entity(ca_id, &server_ca)],
            ..Default::default()
        }
    };
    let first = client_ca.leaf("client-v1", &[]);
    let second = client_ca.leaf("client-v2", &[]);
    let tls = layer();

    let v1 = compile(1, config(&first, false));
    Part::prepare(&tls, &Arc::new(v1.clone()), &mut Vec::new()).expect("prepared");
    let key_v1 = tls
        .setting(&v1, v1.service(&id).unwrap(), None)
        .unwrap()
        .key()
        .clone();
    let body = get(&client_for(&tls, &v1, id, "localhost"), upstream.addr)
        .await
        .unwrap();
    assert_eq!(body, "conn=1 sni=localhost alpn=http/1.1 client=client-v1");

    // Same certificate id, new content: a new key, a new pool, the new identity.
    let v2 = compile(2, config(&second, false));
    Part::prepare(&tls, &Arc::new(v2.clone()), &mut Vec::new()).expect("prepared");
    let key_v2 = tls
        .setting(&v2, v2.service(&id).unwrap(), None)
        .unwrap()
        .key()
        .clone();
    assert_ne!(key_v1, key_v2);
    assert_eq!(tls.cached_clients(), 0, "the v1 client is dropped");
    let body = get(&client_for(&tls, &v2, id, "localhost"), upstream.addr)
        .await
        .unwrap();
    assert_eq!(body, "conn=2 sni=localhost alpn=http/1.1 client=client-v2");

    // An unrelated change: same key, the warm pool is reused.
    let v3 = compile(3, config(&second, true));
    Part::prepare(&tls, &Arc::new(v3.clone()), &mut Vec::new()).expect("prepared");
    assert_eq!(tls.cached_clients(), 1);
    let body = get(&client_for(&tls, &v3, id, "localhost"), upstream.addr)
        .await
        .unwrap();
    assert_eq!(body, "conn=2 sni=localhost alpn=http/1.1 client=client-v2");
    assert_eq!(upstream.accepted(), 2);

    // A request still on v1 resolves its own setting (the old certificate) and does not
    // disturb the newest runtime's clients.
    let body = get(&client_for(&tls, &v1, id, "localhost"), upstream.addr)
        .await
        .unwrap();
    assert_eq!(body, "conn=3 sni=localhost alpn=http/1.1 client=client-v1");
    let body = get(&client_for(&tls, &v3, id, "localhost"), upstream.addr)
        .await
        .unwrap();
    assert!(body.starts_with("conn=2 "), "{body}");
}

#[test]
fn changed_ca_content_changes_the_key() {
    let (ca_id, id) = (Uuid::new_v4(), Uuid::new_v4());
    let runtime = |ca: &TestCa, version| {
        compile(
            version,
            model::Config {
                services: vec![service(
                    id,
                    "https",
                    "x",
                    json!({"ca_certificates": [ca_id]}),
                )],
                ca_certificates: vec![ca_entity(ca_id, ca)],
                ..Default::default()
            },
        )
    };
    let tls = layer();
    let (a, b) = (runtime(&TestCa::new("a"), 1), runtime(&TestCa::new("b"), 2));
    let key = |r: &Runtime| {
        tls.setting(r, r.service(&id).unwrap(), None)
            .unwrap()
            .key()
            .clone()
    };
    assert_ne!(key(&a), key(&b));
    // Verification off: the CA list does not matter.
    let off = |r: &Runtime| {
        let mut service = r.service(&id).unwrap().clone();
        service.tls_verify = Some(false);
        tls.setting(r, &service, None).unwrap().key().clone()
    };
    assert_eq!(off(&a), off(&b));
}

// === pools ===

#[tokio::test]
async fn server_names_never_share_a_connection() {
    let ca = TestCa::new("root");
    let leaf = ca.leaf("shared", &["a.example", "b.example"]);
    let upstream = TestUpstream::serving(&leaf).await;
    let (ca_id, id) = (Uuid::new_v4(), Uuid::new_v4());
    let runtime = one_service(
        service(
            id,
            "https",
            "a.example",
            json!({"ca_certificates": [ca_id]}),
        ),
        vec![ca_entity(ca_id, &ca)],
    );
    let tls = layer();
    let a = client_for(&tls, &runtime, id, "a.example");
    let b = client_for(&tls, &runtime, id, "B.Example.");
    for _ in 0..3 {
        let body = get(&a, upstream.addr).await.unwrap();
        assert!(body.starts_with("conn=1 sni=a.example "), "{body}");
        let body = get(&b, upstream.addr).await.unwrap();
        assert!(body.starts_with("conn=2 sni=b.example "), "{body}");
    }
    assert_eq!(upstream.accepted(), 2);
    // The name is normalized: the same client comes back.
    let again = client_for(&tls, &runtime, id, "b.example");
    assert!(
        get(&again, upstream.addr)
            .await
            .unwrap()
            .starts_with("conn=2 ")
    );
    assert_eq!(tls.cached_clients(), 2);
}

#[tokio::test]
async fn one_setting_reuses_one_connection() {
    let ca = TestCa::new("root");
    let leaf = ca.leaf("localhost", &["localhost"]);
    let upstream = TestUpstream::serving(&leaf).await;
    let (ca_id, https, grpcs) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let trust = json!({"ca_certificates": [ca_id]});
    let runtime = compile(
        1,
        model::Config {
            services: vec![
                service(https, "https", "localhost", trust.clone()),
                service(grpcs, "grpcs", "localhost", trust),
            ],
            ca_certificates: vec![ca_entity(ca_id, &ca)],
            ..Default::default()
        },
    );
    let tls = layer();
    for _ in 0..100 {
        // The client is looked up for every request, as the proxy will.
        let client = client_for(&tls, &runtime, https, "localhost");
        let body = get(&client, upstream.addr).await.unwrap();
        assert_eq!(body, "conn=1 sni=localhost alpn=http/1.1 client=-");
    }
    assert_eq!(upstream.accepted(), 1);

    // grpcs: HTTP/2 with ALPN h2, its own pool.
    let service = runtime.service(&grpcs).unwrap();
    for _ in 0..20 {
        let client = tls
            .client(&runtime, service, None, "localhost", true)
            .unwrap();
        let body = send(
            &client,
            &format!("https://{}/", upstream.addr),
            Version::HTTP_2,
        )
        .await
        .unwrap();
        assert_eq!(body, "conn=2 sni=localhost alpn=h2 client=-");
    }
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn never_plaintext() {
    let id = Uuid::new_v4();
    let runtime = one_service(
        service(id, "https", "localhost", json!({"tls_verify": false})),
        vec![],
    );
    let client = client_for(&layer(), &runtime, id, "localhost");

    // An http:// URI is refused by the connector.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let error = send(&client, &format!("http://{addr}/"), Version::HTTP_11)
        .await
        .unwrap_err();
    let failure = tls_error(&error);
    assert!(
        matches!(failure, UpstreamTlsError::NotHttps { .. }),
        "{failure:?}"
    );

    // A plaintext server behind an https service.
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let _ = tcp
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await;
    });
    let error = get(&client, addr).await.unwrap_err();
    let text = tls_error(&error).to_string();
    assert!(text.contains("does not speak TLS"), "{text}");
    server.await.unwrap();
}

#[tokio::test]
async fn connect_failures_are_clear() {
    let id = Uuid::new_v4();
    let runtime = one_service(
        service(id, "https", "localhost", json!({"tls_verify": false})),
        vec![],
    );
    let tls = UpstreamTls::new(UpstreamTlsSettings {
        connect_timeout: Duration::from_millis(300),
        ..UpstreamTlsSettings::default()
    });
    let client = client_for(&tls, &runtime, id, "localhost");

    // Refused: bind a port, then free it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let error = get(&client, addr).await.unwrap_err();
    let failure = tls_error(&error);
    assert!(
        matches!(failure, UpstreamTlsError::Connect { .. }),
        "{failure:?}"
    );
    assert!(
        failure
            .to_string()
            .starts_with(&format!("cannot connect to upstream {addr}"))
    );

    // A server that accepts but never answers the handshake: the connect timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let _held = listener.accept().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let error = get(&client, silent).await.unwrap_err();
    let text = tls_error(&error).to_string();
    assert!(text.contains("timed out after 300 ms"), "{text}");
    hold.abort();
}

#[test]
fn invalid_server_name() {
    let id = Uuid::new_v4();
    let runtime = one_service(service(id, "https", "x", json!({})), vec![]);
    let service = runtime.service(&id).unwrap();
    let error = layer()
        .client(&runtime, service, None, "bad name!", false)
        .unwrap_err();
    assert!(matches!(error, UpstreamTlsError::ServerName { .. }));
    assert!(!error.is_retryable());
}

#[test]
fn idle_clients_are_swept_and_the_cache_is_bounded() {
    let id = Uuid::new_v4();
    let runtime = one_service(service(id, "https", "x", json!({})), vec![]);
    let service = runtime.service(&id).unwrap();
    let tls = UpstreamTls::new(UpstreamTlsSettings {
        max_clients: 20,
        ..UpstreamTlsSettings::default()
    });
    // Client builds need a Tokio runtime only for connections; none is made here.
    for n in 0..100 {
        tls.client(&runtime, service, None, &format!("host{n}.example"), false)
            .unwrap();
        assert!(tls.cached_clients() <= 20, "{}", tls.cached_clients());
    }
}

#[test]
fn server_names_are_normalized() {
    assert_eq!(normalize("Example.COM."), "example.com");
    assert_eq!(normalize("[::1]"), "::1");
    assert!(matches!(normalize("plain.example"), Cow::Borrowed(_)));
}

#[test]
fn alerts_map_to_causes() {
    let without = FailureContext {
        trust: Some(TrustSource::Service),
        client_certificate: false,
    };
    let with = FailureContext {
        client_certificate: true,
        ..without
    };
    use rustls::AlertDescription as A;
    assert!(matches!(
        TlsFailure::from_alert(A::CertificateRequired, without),
        TlsFailure::ClientCertificateRequired { .. }
    ));
    assert!(matches!(
        TlsFailure::from_alert(A::UnknownCA, with),
        TlsFailure::ClientCertificateRejected { .. }
    ));
    let refused = TlsFailure::from_alert(A::HandshakeFailure, without).to_string();
    assert!(refused.contains("handshake_failure"), "{refused}");
    assert!(
        refused.contains("requires a client certificate"),
        "{refused}"
    );
    let version = TlsFailure::from_alert(A::ProtocolVersion, with).to_string();
    assert!(version.contains("no common TLS version"), "{version}");
}
