//! Real handshakes over loopback: a [`TlsTerminator`] behind a TCP listener that echoes what
//! it reads, and tokio-rustls clients with chosen versions, key types and ALPN. Certificates
//! are made with rcgen; runtimes are compiled from model configs.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{CertificateParams, KeyPair, PKCS_RSA_SHA256};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as ClientStream;

use gatehouse_shared::model::{self, ForeignKey};
use gatehouse_shared::x509::{self, KeyType};

use super::*;
use crate::acme::{OnDemand, OnDemandLimits};
use crate::config::CertKeyFiles;
use crate::test_support::{self, TempDir};

const RSA_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];
const ECDSA_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
];
const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
pub(crate) const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const H2_AND_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];
const HTTP1: &[&[u8]] = &[b"http/1.1"];
/// How long a test waits for the server's side of a handshake.
const PATIENCE: Duration = Duration::from_secs(10);

// --- certificates and runtimes ---

/// A self-signed certificate and its key, PEM.
#[derive(Clone)]
struct Pem {
    cert: String,
    key: String,
}

impl Pem {
    fn ecdsa(name: &str) -> Self {
        Self::signed(name, KeyPair::generate().unwrap())
    }

    /// RSA 2048; one key for the whole test binary (generating RSA keys is slow).
    fn rsa(name: &str) -> Self {
        static KEY: OnceLock<String> = OnceLock::new();
        let pem = KEY.get_or_init(|| {
            KeyPair::generate_for(&PKCS_RSA_SHA256)
                .unwrap()
                .serialize_pem()
        });
        Self::signed(name, KeyPair::from_pem(pem).unwrap())
    }

    fn signed(name: &str, key: KeyPair) -> Self {
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Self {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn leaf(&self) -> CertificateDer<'static> {
        x509::parse_certificates(&self.cert).unwrap().remove(0)
    }

    fn certified_key(&self) -> Arc<CertifiedKey> {
        let key = aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(x509::parse_private_key(&self.key).unwrap())
            .unwrap();
        Arc::new(CertifiedKey::new(vec![self.leaf()], key))
    }

    /// Writes the pair into `dir` as `<stem>.crt` and `<stem>.key`.
    fn write(&self, dir: &TempDir, stem: &str) -> CertKeyFiles {
        let files = CertKeyFiles {
            cert: dir.path().join(format!("{stem}.crt")),
            key: dir.path().join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, &self.cert).unwrap();
        std::fs::write(&files.key, &self.key).unwrap();
        files
    }
}

/// A certificate entity with a random id.
fn entity(main: &Pem, alt: Option<&Pem>) -> model::Certificate {
    let mut cert = test_support::certificate("entity.test");
    cert.cert = main.cert.clone();
    cert.key = main.key.clone();
    cert.cert_alt = alt.map(|p| p.cert.clone());
    cert.key_alt = alt.map(|p| p.key.clone());
    cert
}

/// A config of certificates and the SNI names pointing at each.
fn config(certs: &[(&model::Certificate, &[&str])]) -> model::Config {
    let mut config = model::Config::default();
    for (cert, names) in certs {
        for name in *names {
            config.snis.push(model::Sni {
                id: Uuid::new_v4(),
                created_at: 1,
                updated_at: 1,
                name: (*name).to_owned(),
                certificate: ForeignKey { id: cert.id },
                tags: None,
            });
        }
        config.certificates.push((*cert).clone());
    }
    config
}

fn compile(version: u64, config: model::Config) -> Arc<Runtime> {
    Arc::new(Runtime::compile(version, format!("hash-{version}"), config).unwrap())
}

fn shared(version: u64, config: model::Config) -> Arc<SharedRuntime> {
    Arc::new(SharedRuntime::new(Runtime::clone(&compile(
        version, config,
    ))))
}

fn self_signed() -> Arc<DefaultCertificate> {
    Arc::new(DefaultCertificate::self_signed().unwrap())
}

fn terminator(runtime: &Arc<SharedRuntime>, options: TlsOptions) -> Arc<TlsTerminator> {
    Arc::new(TlsTerminator::new(runtime.clone(), self_signed(), options).unwrap())
}

fn default_leaf(terminator: &TlsTerminator) -> CertificateDer<'static> {
    terminator.default_certificate().certified_key().cert[0].clone()
}

// --- server ---

/// A terminator behind a loopback listener; each connection reports its handshake, then
/// echoes until the client closes.
struct Server {
    addr: SocketAddr,
    handshakes: mpsc::UnboundedReceiver<Result<Arc<TlsInfo>, TlsError>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(terminator: Arc<TlsTerminator>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (report, handshakes) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (terminator, report) = (terminator.clone(), report.clone());
                tokio::spawn(async move {
                    match terminator.accept(tcp).await {
                        Ok(Accepted::AcmeValidation { .. }) => {}
                        Ok(Accepted::Connection(mut conn)) => {
                            let _ = report.send(Ok(conn.info().clone()));
                            let mut buf = [0; 1024];
                            while let Ok(n @ 1..) = conn.read(&mut buf).await {
                                if conn.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Err(error) => {
                            let _ = report.send(Err(error));
                        }
                    }
                });
            }
        });
        Self {
            addr,
            handshakes,
            task,
        }
    }

    /// The server's side of the next handshake.
    async fn next(&mut self) -> Result<Arc<TlsInfo>, TlsError> {
        tokio::time::timeout(PATIENCE, self.handshakes.recv())
            .await
            .expect("the server reports every handshake")
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// --- clients ---

/// A client's choices.
#[derive(Clone)]
struct Client {
    versions: &'static [&'static SupportedProtocolVersion],
    schemes: &'static [SignatureScheme],
    alpn: &'static [&'static [u8]],
    sni: bool,
}

impl Default for Client {
    fn default() -> Self {
        Self {
            versions: rustls::ALL_VERSIONS,
            schemes: &[],
            alpn: &[],
            sni: true,
        }
    }
}

impl Client {
    fn tls12() -> Self {
        Self {
            versions: TLS12_ONLY,
            ..Self::default()
        }
    }

    fn tls13() -> Self {
        Self {
            versions: TLS13_ONLY,
            ..Self::default()
        }
    }

    fn schemes(self, schemes: &'static [SignatureScheme]) -> Self {
        Self { schemes, ..self }
    }

    fn alpn(self, alpn: &'static [&'static [u8]]) -> Self {
        Self { alpn, ..self }
    }

    fn no_sni(self) -> Self {
        Self { sni: false, ..self }
    }

    /// A new config (with its own, empty, resumption cache). Any certificate is accepted
    /// (the tests compare leaves), but handshake signatures are verified.
    fn config(&self) -> Arc<ClientConfig> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let schemes = if self.schemes.is_empty() {
            algorithms.supported_schemes()
        } else {
            self.schemes.to_vec()
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(self.versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert {
                schemes,
                algorithms,
                signatures: true,
            }))
            .with_no_client_auth();
        config.alpn_protocols = self.alpn.iter().map(|p| p.to_vec()).collect();
        config.enable_sni = self.sni;
        Arc::new(config)
    }
}

/// Accepts any certificate; checks handshake signatures with the offered schemes only
/// (unless `signatures` is off: webpki cannot read a TLS-ALPN-01 certificate).
#[derive(Debug)]
struct AnyServerCert {
    schemes: Vec<SignatureScheme>,
    algorithms: WebPkiSupportedAlgorithms,
    signatures: bool,
}

impl ServerCertVerifier for AnyServerCert {
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
        if !self.signatures {
            return Ok(HandshakeSignatureValid::assertion());
        }
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.signatures {
            return Ok(HandshakeSignatureValid::assertion());
        }
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// Connects with `config`, naming `name` (sent as SNI unless the config disables it).
async fn connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    name: &str,
) -> io::Result<ClientStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    TlsConnector::from(config.clone()).connect(name, tcp).await
}

/// One echo round trip (it also makes the client read the TLS 1.3 session tickets).
async fn ping(stream: &mut ClientStream<TcpStream>) {
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0; 4];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
}

fn leaf_of(stream: &ClientStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// A full exchange: handshake, one echo; the client's stream and the server's facts.
async fn exchange(
    server: &mut Server,
    config: &Arc<ClientConfig>,
    name: &str,
) -> (ClientStream<TcpStream>, Arc<TlsInfo>) {
    let mut stream = connect(server.addr, config, name).await.unwrap();
    ping(&mut stream).await;
    let info = server.next().await.unwrap();
    (stream, info)
}

// --- certificate choice ---

#[tokio::test]
async fn sni_lookup_follows_kongs_order() {
    let (exact, prefix, suffix, star) = (
        Pem::ecdsa("api.example.com"),
        Pem::ecdsa("*.example.com"),
        Pem::ecdsa("example.*"),
        Pem::ecdsa("star"),
    );
    let (e, p, s, c) = (
        entity(&exact, None),
        entity(&prefix, None),
        entity(&suffix, None),
        entity(&star, None),
    );
    let without_star = config(&[
        (&e, &["api.example.com"]),
        (&p, &["*.example.com"]),
        (&s, &["example.*"]),
    ]);
    let runtime = shared(1, without_star.clone());
    let terminator = terminator(&runtime, TlsOptions::default());
    let default = (default_leaf(&terminator), ServedCertificate::Default);
    let mut server = Server::start(terminator).await;
    let served =
        |pem: &Pem, cert: &model::Certificate| (pem.leaf(), ServedCertificate::Entity(cert.id));

    let cases = [
        ("api.example.com", served(&exact, &e)),
        ("API.Example.COM", served(&exact, &e)),
        ("www.example.com", served(&prefix, &p)),
        // `*.rest` replaces the first label only.
        ("a.b.example.com", default.clone()),
        ("example.org", served(&suffix, &s)),
        ("example.co.uk", default.clone()),
        ("unknown.test", default.clone()),
    ];
    for (name, (leaf, certificate)) in &cases {
        let (stream, info) = exchange(&mut server, &Client::default().config(), name).await;
        assert_eq!(&leaf_of(&stream), leaf, "{name}");
        assert_eq!(info.certificate(), *certificate, "{name}");
        assert_eq!(info.server_name(), Some(name.to_ascii_lowercase().as_str()));
        assert_eq!(info.runtime_version(), 1);
    }
    let (stream, info) =
        exchange(&mut server, &Client::default().no_sni().config(), "x.test").await;
    assert_eq!((leaf_of(&stream), info.certificate()), default);
    assert_eq!(info.server_name(), None);

    // With a `*` SNI: unknown names get it, a client without SNI still the default.
    let mut with_star = without_star;
    with_star.snis.extend(config(&[(&c, &["*"])]).snis);
    with_star.certificates.push(c.clone());
    runtime.store(compile(2, with_star));
    for name in ["unknown.test", "a.b.example.com", "localhost"] {
        let (stream, info) = exchange(&mut server, &Client::default().config(), name).await;
        assert_eq!(leaf_of(&stream), star.leaf(), "{name}");
        assert_eq!(info.certificate(), ServedCertificate::Entity(c.id));
        assert_eq!(info.certificate().to_string(), c.id.to_string());
    }
    let (stream, _) = exchange(&mut server, &Client::default().config(), "api.example.com").await;
    assert_eq!(leaf_of(&stream), exact.leaf());
    let (stream, info) =
        exchange(&mut server, &Client::default().no_sni().config(), "x.test").await;
    assert_eq!((leaf_of(&stream), info.certificate()), default);
    assert_eq!(info.certificate().to_string(), "default");
}

#[tokio::test]
async fn self_signed_default_is_for_localhost() {
    let runtime = Arc::new(SharedRuntime::default());
    let terminator =
        Arc::new(TlsTerminator::from_settings(&SslSettings::default(), runtime).unwrap());
    assert!(terminator.default_certificate().is_self_signed());
    let leaf = default_leaf(&terminator);
    let facts = x509::cert_facts(&leaf).unwrap();
    assert_eq!(facts.common_name.as_deref(), Some("localhost"));
    assert_eq!(facts.sans, ["localhost"]);
    assert_eq!(facts.key_type, KeyType::Ecdsa);
    let now = i64::try_from(UnixTime::now().as_secs()).unwrap();
    assert!(facts.not_before < now && facts.not_after > now + 365 * 86_400);

    // A client that trusts it verifies it for `localhost` (with SNI, and without).
    let mut roots = RootCertStore::empty();
    roots.add(leaf.clone()).unwrap();
    let verifying = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let mut server = Server::start(terminator.clone()).await;
    let (stream, info) = exchange(&mut server, &verifying, "localhost").await;
    assert_eq!(leaf_of(&stream), leaf);
    assert_eq!(info.certificate(), ServedCertificate::Default);
    let mut no_sni = ClientConfig::clone(&verifying);
    no_sni.enable_sni = false;
    let (stream, _) = exchange(&mut server, &Arc::new(no_sni), "localhost").await;
    assert_eq!(leaf_of(&stream), leaf);

    // Each start makes a new one.
    assert_ne!(
        DefaultCertificate::self_signed()
            .unwrap()
            .certified_key()
            .cert[0],
        leaf
    );
}

#[tokio::test]
async fn alt_pair_follows_the_clients_key_types() {
    let (rsa, ecdsa) = (Pem::rsa("dual.test"), Pem::ecdsa("dual.test"));
    let rsa_main = entity(&rsa, Some(&ecdsa));
    let ecdsa_main = entity(&ecdsa, Some(&rsa));
    let runtime = shared(
        1,
        config(&[
            (&rsa_main, &["rsa-main.test"]),
            (&ecdsa_main, &["ecdsa-main.test"]),
        ]),
    );
    let mut server = Server::start(terminator(&runtime, TlsOptions::default())).await;
    for versions in [Client::tls12(), Client::tls13()] {
        for (name, cert) in [
            ("rsa-main.test", &rsa_main),
            ("ecdsa-main.test", &ecdsa_main),
        ] {
            for (schemes, expected) in [
                (RSA_SCHEMES, &rsa),
                (ECDSA_SCHEMES, &ecdsa),
                // Both verifiable: ECDSA, whichever pair is the main one.
                (&[][..], &ecdsa),
            ] {
                let client = versions.clone().schemes(schemes).config();
                let (stream, info) = exchange(&mut server, &client, name).await;
                assert_eq!(
                    leaf_of(&stream),
                    expected.leaf(),
                    "{name} {:?} {schemes:?}",
                    info.version()
                );
                assert_eq!(info.certificate(), ServedCertificate::Entity(cert.id));
            }
        }
    }
}

#[test]
fn key_type_choice() {
    let (rsa, ecdsa) = (
        Pem::rsa("r.test").certified_key(),
        Pem::ecdsa("e.test").certified_key(),
    );
    let both: Vec<_> = [RSA_SCHEMES, ECDSA_SCHEMES].concat();
    for (main, alt) in [(&rsa, &ecdsa), (&ecdsa, &rsa)] {
        let pick = |schemes: &[SignatureScheme]| {
            Arc::clone(resolver::for_client(main, Some(alt), schemes))
        };
        assert!(Arc::ptr_eq(&pick(RSA_SCHEMES), &rsa));
        assert!(Arc::ptr_eq(&pick(ECDSA_SCHEMES), &ecdsa));
        assert!(Arc::ptr_eq(&pick(&both), &ecdsa));
        // Nothing usable: the main pair (the handshake then fails properly).
        assert!(Arc::ptr_eq(&pick(&[SignatureScheme::ED25519]), main));
        // Without an alt pair, always the main one.
        assert!(Arc::ptr_eq(
            resolver::for_client(main, None, RSA_SCHEMES),
            main
        ));
    }
}

#[tokio::test]
async fn default_certificate_from_files() {
    let dir = TempDir::new();
    let (rsa, ecdsa) = (Pem::rsa("default.test"), Pem::ecdsa("default.test"));
    let settings = SslSettings {
        certs: vec![rsa.write(&dir, "rsa"), ecdsa.write(&dir, "ecdsa")],
        session_tickets: true,
        session_cache: true,
    };
    let runtime = Arc::new(SharedRuntime::default());
    let terminator = Arc::new(TlsTerminator::from_settings(&settings, runtime).unwrap());
    let default = terminator.default_certificate();
    assert!(!default.is_self_signed());
    assert!(default.alt_certified_key().is_some());
    let debug = format!("{terminator:?}");
    assert!(
        debug.contains("rsa.crt") && !debug.contains("PRIVATE"),
        "{debug}"
    );

    let mut server = Server::start(terminator.clone()).await;
    for (schemes, expected) in [
        (RSA_SCHEMES, &rsa),
        (ECDSA_SCHEMES, &ecdsa),
        (&[][..], &ecdsa),
    ] {
        let client = Client::default().schemes(schemes).no_sni().config();
        let (stream, info) = exchange(&mut server, &client, "localhost").await;
        assert_eq!(leaf_of(&stream), expected.leaf());
        assert_eq!(info.certificate(), ServedCertificate::Default);
    }

    // A single pair works alone.
    let one = DefaultCertificate::load(&settings.certs[1..]).unwrap();
    assert!(one.alt_certified_key().is_none());
}

#[test]
fn default_certificate_errors_name_the_file_without_key_material() {
    let dir = TempDir::new();
    let a = Pem::ecdsa("a.test").write(&dir, "a");
    let b = Pem::ecdsa("b.test").write(&dir, "b");
    let message = |files: &[CertKeyFiles]| DefaultCertificate::load(files).unwrap_err();

    let missing = CertKeyFiles {
        cert: dir.path().join("missing.crt"),
        key: a.key.clone(),
    };
    let err = message(std::slice::from_ref(&missing));
    assert!(matches!(err, TlsSetupError::Cert { .. }) && err.is_config());
    assert!(
        err.to_string().contains("missing.crt: cannot read"),
        "{err}"
    );

    let mismatched = CertKeyFiles {
        cert: a.cert.clone(),
        key: b.key.clone(),
    };
    let err = message(&[mismatched]);
    assert!(matches!(err, TlsSetupError::Mismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("a.crt: does not match --ssl-cert-key")
    );

    let err = message(&[a.clone(), b.clone()]);
    assert_eq!(
        err.to_string(),
        "--ssl-cert: both certificates are ECDSA; give one RSA and one ECDSA certificate"
    );
    assert!(matches!(message(&[]), TlsSetupError::CertCount(0)));
    assert!(matches!(
        message(&[a.clone(), b.clone(), a.clone()]),
        TlsSetupError::CertCount(3)
    ));

    let secret = "c2VjcmV0LWtleS1ieXRlcw";
    let garbage = dir.path().join("garbage.key");
    std::fs::write(
        &garbage,
        format!("-----BEGIN PRIVATE KEY-----\n{secret}==\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let err = message(&[CertKeyFiles {
        cert: a.cert.clone(),
        key: garbage,
    }]);
    assert!(matches!(err, TlsSetupError::Key { .. }), "{err}");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("garbage.key") && !text.contains(secret),
        "{text}"
    );
}

// --- negotiation ---

#[tokio::test]
async fn alpn_h2_and_http1() {
    let runtime = Arc::new(SharedRuntime::default());
    let mut server = Server::start(terminator(&runtime, TlsOptions::default())).await;
    for (offered, negotiated) in [
        (H2_AND_HTTP1, Some(&b"h2"[..])),
        (HTTP1, Some(&b"http/1.1"[..])),
        (&[][..], None),
    ] {
        let client = Client::default().alpn(offered).config();
        let (stream, info) = exchange(&mut server, &client, "localhost").await;
        assert_eq!(info.alpn(), negotiated);
        assert_eq!(stream.get_ref().1.alpn_protocol(), negotiated);
        assert_eq!(info.is_h2(), negotiated == Some(b"h2"));
    }

    // A listener without HTTP/2.
    let http1 = TlsOptions::default().with_alpn(Alpn::Http1);
    let mut server = Server::start(terminator(&runtime, http1)).await;
    let client = Client::default().alpn(&[b"h2", b"http/1.1"]).config();
    let (_, info) = exchange(&mut server, &client, "localhost").await;
    assert_eq!(info.alpn(), Some(&b"http/1.1"[..]));
    assert!(!info.is_h2());
    // A client that speaks only h2 is refused there.
    let client = Client::default().alpn(&[b"h2"]).config();
    assert!(connect(server.addr, &client, "localhost").await.is_err());
    let err = server.next().await.unwrap_err();
    assert_eq!(err.server_name(), Some("localhost"));
    assert!(
        matches!(err.tls_error(), Some(rustls::Error::NoApplicationProtocol)),
        "{err:?}"
    );
}

#[tokio::test]
async fn tls12_and_tls13_both_work() {
    let runtime = Arc::new(SharedRuntime::default());
    let mut server = Server::start(terminator(&runtime, TlsOptions::default())).await;
    for (client, version) in [
        (Client::tls12(), ProtocolVersion::TLSv1_2),
        (Client::tls13(), ProtocolVersion::TLSv1_3),
        (Client::default(), ProtocolVersion::TLSv1_3),
    ] {
        let (stream, info) = exchange(&mut server, &client.config(), "localhost").await;
        assert_eq!(info.version(), version);
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version));
        let suite = format!("{:?}", info.cipher_suite());
        let tls13_suite = suite.starts_with("TLS13_");
        assert_eq!(tls13_suite, version == ProtocolVersion::TLSv1_3, "{suite}");
        assert!(info.key_exchange_group().is_some());
        assert!(!info.is_resumed());
        assert!(info.peer_certificates().is_empty());
    }
}

// --- resumption ---

/// A session cache that counts what it stores.
#[derive(Debug)]
struct CountingSessions {
    inner: Arc<ServerSessionMemoryCache>,
    puts: AtomicUsize,
}

impl StoresServerSessions for CountingSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// A terminator whose session cache counts its entries.
fn counting(tickets: bool) -> (Arc<TlsTerminator>, Arc<CountingSessions>) {
    let runtime = Arc::new(SharedRuntime::default());
    let options = TlsOptions::default().with_session_tickets(tickets);
    let mut terminator = TlsTerminator::new(runtime, self_signed(), options).unwrap();
    let sessions = Arc::new(CountingSessions {
        inner: ServerSessionMemoryCache::new(64),
        puts: AtomicUsize::new(0),
    });
    let mut template = ServerConfig::clone(&terminator.template);
    template.session_storage = sessions.clone();
    terminator.template = Arc::new(template);
    (Arc::new(terminator), sessions)
}

#[tokio::test]
async fn sessions_resume_with_tickets() {
    let (terminator, sessions) = counting(true);
    assert!(terminator.template.ticketer.enabled());
    let mut server = Server::start(terminator).await;
    for client in [Client::tls13(), Client::tls12()] {
        // One client config: its in-memory cache keeps the session.
        let config = client.config();
        let (first, info) = exchange(&mut server, &config, "resume.test").await;
        assert!(!info.is_resumed());
        drop(first);
        let (second, info) = exchange(&mut server, &config, "resume.test").await;
        assert!(info.is_resumed(), "{:?}", info.version());
        assert_eq!(
            second.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed)
        );
        assert_eq!(info.certificate(), ServedCertificate::Default);
        if info.version() == ProtocolVersion::TLSv1_3 {
            // Stateless: the server kept nothing.
            assert_eq!(sessions.puts.load(Ordering::SeqCst), 0);
        }
        // Another name is another session (rustls refuses resumption across SNIs).
        let (_, info) = exchange(&mut server, &config, "other.test").await;
        assert!(!info.is_resumed());
    }
}

#[tokio::test]
async fn tickets_off_resumes_from_the_session_cache_only() {
    let (terminator, sessions) = counting(false);
    assert!(!terminator.template.ticketer.enabled());
    let mut server = Server::start(terminator).await;
    for client in [Client::tls13(), Client::tls12()] {
        let config = client.config();
        let before = sessions.puts.load(Ordering::SeqCst);
        let (first, info) = exchange(&mut server, &config, "resume.test").await;
        assert!(!info.is_resumed());
        drop(first);
        assert!(
            sessions.puts.load(Ordering::SeqCst) > before,
            "no ticket: the session is kept by the server"
        );
        let (_, info) = exchange(&mut server, &config, "resume.test").await;
        assert!(info.is_resumed(), "{:?}", info.version());
    }
}

#[tokio::test]
async fn tickets_and_cache_off_never_resume() {
    let runtime = Arc::new(SharedRuntime::default());
    let options = TlsOptions::default()
        .with_session_tickets(false)
        .with_session_cache(false);
    let terminator = Arc::new(TlsTerminator::new(runtime, self_signed(), options).unwrap());
    assert_eq!(terminator.template.send_tls13_tickets, 0);
    assert!(!terminator.template.session_storage.can_cache());
    let mut server = Server::start(terminator).await;
    for client in [Client::tls13(), Client::tls12()] {
        let config = client.config();
        for _ in 0..2 {
            let (_, info) = exchange(&mut server, &config, "resume.test").await;
            assert!(!info.is_resumed(), "{:?}", info.version());
        }
    }
}

// --- runtime swaps ---

#[tokio::test]
async fn certificate_changes_reach_the_next_handshake() {
    let (old, new, added) = (
        Pem::ecdsa("rot.test"),
        Pem::rsa("rot.test"),
        Pem::ecdsa("added.test"),
    );
    let mut cert = entity(&old, None);
    let runtime = shared(1, config(&[(&cert, &["rot.test"])]));
    let terminator = terminator(&runtime, TlsOptions::default());
    let default = default_leaf(&terminator);
    let mut server = Server::start(terminator).await;
    let (mut kept, info) = exchange(&mut server, &Client::default().config(), "rot.test").await;
    assert_eq!(leaf_of(&kept), old.leaf());
    assert_eq!(
        (info.runtime_version(), info.certificate()),
        (1, ServedCertificate::Entity(cert.id))
    );

    // Changed: same entity, new pair.
    cert.cert = new.cert.clone();
    cert.key = new.key.clone();
    runtime.store(compile(2, config(&[(&cert, &["rot.test"])])));
    let (stream, info) = exchange(&mut server, &Client::default().config(), "rot.test").await;
    assert_eq!(leaf_of(&stream), new.leaf());
    assert_eq!(
        (info.runtime_version(), info.certificate()),
        (2, ServedCertificate::Entity(cert.id))
    );
    ping(&mut kept).await;

    // Added.
    let other = entity(&added, None);
    runtime.store(compile(
        3,
        config(&[(&cert, &["rot.test"]), (&other, &["added.test"])]),
    ));
    let (stream, info) = exchange(&mut server, &Client::default().config(), "added.test").await;
    assert_eq!(leaf_of(&stream), added.leaf());
    assert_eq!(info.certificate(), ServedCertificate::Entity(other.id));

    // Removed: the default certificate again.
    runtime.store(compile(4, config(&[(&other, &["added.test"])])));
    let (stream, info) = exchange(&mut server, &Client::default().config(), "rot.test").await;
    assert_eq!(leaf_of(&stream), default);
    assert_eq!(
        (info.runtime_version(), info.certificate()),
        (4, ServedCertificate::Default)
    );

    // The connection opened before all this still works, on its original certificate.
    ping(&mut kept).await;
    assert_eq!(leaf_of(&kept), old.leaf());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_never_fail_while_the_runtime_swaps() {
    let (a, b) = (Pem::ecdsa("swap.test"), Pem::ecdsa("swap.test"));
    let mut cert = entity(&a, None);
    let versions = [config(&[(&cert, &["swap.test"])]), {
        cert.cert = b.cert.clone();
        cert.key = b.key.clone();
        config(&[(&cert, &["swap.test"])])
    }];
    let runtime = shared(1, versions[0].clone());
    let terminator = terminator(&runtime, TlsOptions::default());
    let mut server = Server::start(terminator).await;
    let addr = server.addr;
    let (a_leaf, b_leaf) = (a.leaf(), b.leaf());
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (a_leaf, b_leaf) = (a_leaf.clone(), b_leaf.clone());
            tokio::spawn(async move {
                for _ in 0..8 {
                    let mut stream = connect(addr, &Client::default().config(), "swap.test")
                        .await
                        .unwrap();
                    let leaf = leaf_of(&stream);
                    assert!(leaf == a_leaf || leaf == b_leaf);
                    ping(&mut stream).await;
                }
            })
        })
        .collect();
    for version in 2..12 {
        let config = versions[usize::try_from(version % 2).unwrap()].clone();
        runtime.store(compile(version, config));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for client in clients {
        client.await.unwrap();
    }
    for _ in 0..24 {
        server.next().await.unwrap();
    }
    // The last runtime (11) holds `b`.
    let (stream, info) = exchange(&mut server, &Client::default().config(), "swap.test").await;
    assert_eq!(leaf_of(&stream), b_leaf);
    assert_eq!(info.runtime_version(), 11);
}

#[test]
fn configs_are_built_once_per_runtime() {
    let cert = entity(&Pem::ecdsa("c.test"), None);
    let runtime = shared(1, config(&[(&cert, &["c.test"])]));
    let terminator = terminator(&runtime, TlsOptions::default());
    let first = terminator.current().unwrap();
    assert!(Arc::ptr_eq(&first, &terminator.current().unwrap()));
    assert!(Arc::ptr_eq(
        &first.anonymous,
        &terminator.current().unwrap().anonymous
    ));
    assert_eq!(first.runtime.version(), 1);

    // A swap (even a renumbering of the same compiled config) gets new configs, which share
    // the resumption state.
    runtime.store(Arc::new(first.runtime.with_version(2)));
    let second = terminator.current().unwrap();
    assert!(!Arc::ptr_eq(&first.anonymous, &second.anonymous));
    assert_eq!(second.runtime.version(), 2);
    assert!(Arc::ptr_eq(
        &first.anonymous.ticketer,
        &second.anonymous.ticketer
    ));
    assert!(Arc::ptr_eq(
        &first.anonymous.session_storage,
        &second.anonymous.session_storage
    ));
    assert_eq!(
        second.anonymous.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let debug = format!("{terminator:?}");
    assert!(debug.contains("runtime_version: Some(2)"), "{debug}");
}

#[test]
fn the_apply_step_builds_the_configs_before_the_swap() {
    let cert = entity(&Pem::ecdsa("c.test"), None);
    let runtime = shared(1, config(&[(&cert, &["c.test"])]));
    let terminator = terminator(&runtime, TlsOptions::default());
    let part: Arc<dyn crate::runtime::Part> = terminator.clone();
    runtime.register(Arc::downgrade(&part));

    let next = Arc::new(runtime.load().with_version(2));
    assert!(terminator.configs.get(&next).is_none());
    let applied = runtime.apply(next.clone()).unwrap();
    assert!(applied.warnings.is_empty());
    assert_eq!(runtime.load().version(), 2);
    // Built by the apply step: the first handshake finds them.
    let prepared = terminator
        .configs
        .get(&next)
        .expect("prepared before the swap");
    assert!(Arc::ptr_eq(&prepared, &terminator.current().unwrap()));
}

// --- misbehaving clients ---

#[tokio::test]
async fn garbage_and_hang_ups_are_errors() {
    let runtime = Arc::new(SharedRuntime::default());
    let mut server = Server::start(terminator(&runtime, TlsOptions::default())).await;
    let cases: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        // A handshake record whose body is not a ClientHello.
        &[
            0x16, 0x03, 0x01, 0x00, 0x08, 0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef,
        ],
        // A record longer than TLS allows.
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01],
        // Not even a full record header, then a hang-up.
        &[0x16, 0x03],
    ];
    for bytes in cases {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        tcp.shutdown().await.unwrap();
        let err = server.next().await.unwrap_err();
        assert!(matches!(err, TlsError::ClientHello(_)), "{err:?}");
        assert!(!err.is_timeout() && err.server_name().is_none());
        // The server answers with an alert or closes: never hangs.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut rest)).await;
        assert!(closed.is_ok());
    }
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let err = server.next().await.unwrap_err();
    assert!(err.tls_error().is_some(), "{err:?}");

    // A hang-up in the middle of the handshake.
    let client = Client::default().config();
    let mut conn =
        rustls::ClientConnection::new(client, ServerName::try_from("bye.test").unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&hello).await.unwrap();
    let mut first = [0; 5];
    tcp.read_exact(&mut first).await.unwrap();
    drop(tcp);
    let err = server.next().await.unwrap_err();
    assert!(matches!(err, TlsError::Handshake { .. }), "{err:?}");
    assert_eq!(err.server_name(), Some("bye.test"));
    assert!(
        err.to_string()
            .starts_with("TLS handshake for 'bye.test': "),
        "{err}"
    );

    // The server is still fine.
    exchange(&mut server, &Client::default().config(), "localhost").await;
}

#[tokio::test]
async fn stalled_clients_time_out() {
    let runtime = Arc::new(SharedRuntime::default());
    let timeout = Duration::from_millis(200);
    let options = TlsOptions::default().with_handshake_timeout(timeout);
    let mut server = Server::start(terminator(&runtime, options)).await;

    // Silent, and half a ClientHello.
    let client = Client::default().config();
    let mut conn =
        rustls::ClientConnection::new(client.clone(), ServerName::try_from("stall.test").unwrap())
            .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    for sent in [&[][..], &hello[..hello.len() / 2]] {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(sent).await.unwrap();
        let err = server.next().await.unwrap_err();
        assert!(
            matches!(err, TlsError::ClientHelloTimeout(t) if t == timeout),
            "{err:?}"
        );
        assert!(err.is_timeout());
        // The server closed the connection (cleanly or not).
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut rest)).await;
        assert!(closed.is_ok());
    }

    // A whole ClientHello, then nothing.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&hello).await.unwrap();
    let err = server.next().await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.server_name(), Some("stall.test"));
    assert_eq!(
        err.to_string(),
        "TLS handshake for 'stall.test' not completed within 200ms"
    );
    drop(tcp);

    // Meanwhile and after, prompt clients are served.
    exchange(&mut server, &client, "stall.test").await;
}

// --- ACME TLS-ALPN-01 and on-demand issuance ---

const ACME_ONLY: &[&[u8]] = &[b"acme-tls/1"];
const ACME_AND_H2: &[&[u8]] = &[b"acme-tls/1", b"h2"];

/// A terminator answering the ACME state of `config` and sending on-demand requests to
/// `on_demand`.
fn acme_terminator(config: model::Config, on_demand: OnDemand) -> Arc<TlsTerminator> {
    let runtime = shared(1, config);
    let acme = Arc::new(Acme::new(on_demand));
    Arc::new(
        TlsTerminator::new(runtime, self_signed(), TlsOptions::default())
            .unwrap()
            .with_acme(acme),
    )
}

/// The content of the leaf's id-pe-acmeIdentifier extension, if it has one, and whether it
/// is critical; and the leaf's DNS names.
pub(crate) fn acme_identifier(leaf: &CertificateDer<'_>) -> (Option<(Vec<u8>, bool)>, Vec<String>) {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    let extension = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
        .map(|e| (e.value.to_vec(), e.critical));
    let names = cert
        .subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(name) => Some((*name).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (extension, names)
}

/// A client as an ACME server's validation: ALPN `acme-tls/1` only, and the certificate is
/// looked at, not verified (webpki, rightly, refuses the unknown critical extension, so the
/// handshake signature is not checked either).
pub(crate) fn validation_client(
    versions: &'static [&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert {
            schemes: algorithms.supported_schemes(),
            algorithms,
            signatures: false,
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    Arc::new(config)
}

#[tokio::test]
async fn tls_alpn01_validation_gets_the_challenge_certificate_then_the_connection_closes() {
    let pending = crate::acme::tests::challenge("tls-alpn-01", "acme.example.com", "tok_1");
    let mut expired = crate::acme::tests::challenge("tls-alpn-01", "old.example.com", "tok_2");
    expired.expires_at = crate::acme::unix_now() - 1;
    let http01 = crate::acme::tests::challenge("http-01", "web.example.com", "tok_3");
    let config = model::Config {
        acme_challenges: vec![pending.clone(), expired, http01],
        ..model::Config::default()
    };
    let terminator = acme_terminator(config, OnDemand::default());
    let default = default_leaf(&terminator);
    let mut server = Server::start(terminator).await;
    // RFC 8737 §3: the extension holds the SHA-256 of the key authorization, DER OCTET STRING.
    let digest = ::aws_lc_rs::digest::digest(
        &::aws_lc_rs::digest::SHA256,
        pending.key_authorization.as_bytes(),
    );
    let mut expected = vec![0x04, 0x20];
    expected.extend_from_slice(digest.as_ref());

    for versions in [TLS12_ONLY, TLS13_ONLY] {
        let config = validation_client(versions);
        let mut stream = connect(server.addr, &config, "ACME.example.com")
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"acme-tls/1"[..]));
        let leaf = leaf_of(&stream);
        assert_ne!(leaf, default);
        let (extension, names) = acme_identifier(&leaf);
        assert_eq!(extension, Some((expected.clone(), true)));
        assert_eq!(names, ["acme.example.com"]);
        // No HTTP: the server closes after the handshake.
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read, 0, "closed by the server");
    }

    // Never without exactly that ALPN list: another protocol beside it is an ordinary
    // handshake (default certificate, h2)...
    let (stream, info) = exchange(
        &mut server,
        &Client::default().alpn(ACME_AND_H2).config(),
        "acme.example.com",
    )
    .await;
    assert_eq!(leaf_of(&stream), default);
    assert_eq!(acme_identifier(&leaf_of(&stream)).0, None);
    assert_eq!(info.alpn(), Some(&b"h2"[..]));
    // ... and so is a client without ALPN.
    let (stream, _) = exchange(&mut server, &Client::default().config(), "acme.example.com").await;
    assert_eq!(leaf_of(&stream), default);

    // `acme-tls/1` for a name without a pending challenge (another one, an expired one, an
    // http-01 one): an ordinary handshake, which refuses that protocol.
    for name in ["other.example.com", "old.example.com", "web.example.com"] {
        let refused = connect(
            server.addr,
            &Client::default().alpn(ACME_ONLY).config(),
            name,
        )
        .await;
        assert!(refused.is_err(), "{name}");
        let error = server.next().await.unwrap_err();
        assert!(
            matches!(
                error.tls_error(),
                Some(rustls::Error::NoApplicationProtocol)
            ),
            "{name}: {error}"
        );
    }
}

#[tokio::test]
async fn a_name_without_certificate_asks_for_one_when_on_demand_allows_it() {
    let has = Pem::ecdsa("has.example.net");
    let cert = entity(&has, None);
    let mut config = config(&[(&cert, &["has.example.net"])]);
    config.acme_on_demand = Some(model::AcmeOnDemand {
        allow_any_domain: false,
        domains: vec!["*.example.net".to_owned(), "exact.example.org".to_owned()],
    });
    let (on_demand, mut wanted) = OnDemand::channel(OnDemandLimits::default());
    let terminator = acme_terminator(config, on_demand);
    let default = default_leaf(&terminator);
    let mut server = Server::start(terminator).await;
    let next_wanted = async |wanted: &mut mpsc::Receiver<String>| {
        tokio::time::timeout(PATIENCE, wanted.recv())
            .await
            .unwrap()
            .unwrap()
    };

    let (stream, _) = exchange(&mut server, &Client::default().config(), "New.example.net").await;
    assert_eq!(
        leaf_of(&stream),
        default,
        "the default certificate meanwhile"
    );
    assert_eq!(next_wanted(&mut wanted).await, "new.example.net");
    // Has a certificate; not allowed; asked for already: nothing is sent for them, so the
    // next request is the one for the allowed name after them.
    for name in [
        "has.example.net",
        "other.example.com",
        "new.example.net",
        "exact.example.org",
    ] {
        exchange(&mut server, &Client::default().config(), name).await;
    }
    assert_eq!(next_wanted(&mut wanted).await, "exact.example.org");
    assert!(wanted.try_recv().is_err());
}
