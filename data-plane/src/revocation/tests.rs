//! Checks against real HTTP servers on 127.0.0.1: a CRL server, an OCSP responder signing
//! RFC 6960 answers with the CA key (or a delegated responder key), a server that is down and
//! one that never answers. Certificates and CRLs come from rcgen.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    CrlIssuingDistributionPoint, CrlScope, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SerialNumber, SigningKey,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::der::{self, ENUMERATED, GENERALIZED_TIME, OCTET_STRING, OID, Reader, SEQUENCE};
use super::{Mode, RevocationChecker, Verdict};

const TIMEOUT: Duration = Duration::from_secs(5);
const TTL: Duration = Duration::from_secs(60);
/// 2026-11-22T10:30:45Z, the revocation date of the revoked test certificates.
const REVOKED_AT: i64 = 1_795_343_445;
const ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
const ID_AD_OCSP: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
const ID_PKIX_OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];

// === PKI ===

/// A CA issuing client certificates and CRLs.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Self {
        Self::with_key_usages(vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ])
    }

    fn with_key_usages(key_usages: Vec<KeyUsagePurpose>) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Revocation Test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = key_usages;
        let der = params.self_signed(&key).unwrap().der().clone();
        Self { params, key, der }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// The subject Name, DER.
    fn subject(&self) -> Vec<u8> {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.der).unwrap();
        cert.subject().as_raw().to_vec()
    }

    /// A client certificate with `serial`, CRL distribution points and OCSP responders.
    fn leaf(&self, serial: u64, crl_urls: &[&str], ocsp_urls: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if !crl_urls.is_empty() {
            params.crl_distribution_points = vec![CrlDistributionPoint {
                uris: crl_urls.iter().map(|u| (*u).to_owned()).collect(),
            }];
        }
        if !ocsp_urls.is_empty() {
            let descriptions: Vec<Vec<u8>> = ocsp_urls
                .iter()
                .map(|url| {
                    der::sequence(&[&der::tlv(OID, ID_AD_OCSP), &der::tlv(0x86, url.as_bytes())])
                })
                .collect();
            let refs: Vec<&[u8]> = descriptions.iter().map(Vec::as_slice).collect();
            params.custom_extensions = vec![CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 1, 1],
                der::sequence(&refs),
            )];
        }
        params
            .signed_by(&key, &self.issuer())
            .unwrap()
            .der()
            .clone()
    }

    /// A delegated OCSP responder certificate (with or without the OCSP-signing EKU).
    fn responder(&self, ocsp_signing: bool) -> (KeyPair, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Revocation Test OCSP responder");
        if ocsp_signing {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
        }
        let der = params
            .signed_by(&key, &self.issuer())
            .unwrap()
            .der()
            .clone();
        (key, der)
    }

    /// A CRL listing `revoked` serials, valid until `next_update` from now.
    fn crl(&self, revoked: &[(u64, Option<RevocationReason>)], next_update: Duration) -> Vec<u8> {
        self.crl_params(revoked, next_update)
            .signed_by(&self.issuer())
            .unwrap()
            .der()
            .to_vec()
    }

    fn crl_params(
        &self,
        revoked: &[(u64, Option<RevocationReason>)],
        next_update: Duration,
    ) -> CertificateRevocationListParams {
        let now = OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now - Duration::from_secs(3600),
            next_update: now + next_update,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&(serial, reason_code)| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: OffsetDateTime::from_unix_timestamp(REVOKED_AT).unwrap(),
                    reason_code,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
    }
}

// === HTTP servers ===

type Handler = Arc<dyn Fn(Bytes) -> (StatusCode, Vec<u8>) + Send + Sync>;

/// An HTTP/1.1 server counting its requests.
struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Answers every request with `handler(request body)`, after `delay`.
    async fn start(delay: Duration, handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (count, record) = (hits.clone(), bodies.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (count, record, handler) = (count.clone(), record.clone(), handler.clone());
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (count, record, handler) = (count.clone(), record.clone(), handler.clone());
                    async move {
                        count.fetch_add(1, Ordering::SeqCst);
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        record.lock().unwrap().push(body.clone());
                        tokio::time::sleep(delay).await;
                        let (status, body) = handler(body);
                        let response = Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self {
            addr,
            hits,
            bodies,
            task,
        }
    }

    /// Serves `body` to every request.
    async fn fixed(body: Vec<u8>) -> Self {
        Self::start(
            Duration::ZERO,
            Arc::new(move |_| (StatusCode::OK, body.clone())),
        )
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A URL where nothing listens.
fn down_url(path: &str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}{path}")
}

/// A server that accepts connections and never answers.
async fn black_hole() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

// === OCSP responder ===

#[derive(Clone, Copy)]
enum Answer {
    Good,
    Revoked(u8),
    Unknown,
}

/// The status a responder gives a serial number.
type StatusOf = Box<dyn Fn(&[u8]) -> Answer + Send + Sync>;

/// Signs RFC 6960 answers; the status comes from `status(serial)`.
struct Responder {
    key: KeyPair,
    /// The responder's Name (responderID byName).
    name: Vec<u8>,
    /// Certificates included in the answer (a delegated responder's).
    certs: Vec<CertificateDer<'static>>,
    /// nextUpdate, seconds from now (negative: past).
    next_update: Option<i64>,
    status: StatusOf,
}

impl Responder {
    /// Signs with the CA key.
    fn by_ca(ca: &Ca, status: impl Fn(&[u8]) -> Answer + Send + Sync + 'static) -> Self {
        Self {
            key: KeyPair::from_pem(&ca.key.serialize_pem()).unwrap(),
            name: ca.subject(),
            certs: Vec::new(),
            next_update: Some(3600),
            status: Box::new(status),
        }
    }

    /// The DER answer to a DER request (one CertID echoed back).
    fn answer(&self, request: &[u8]) -> Vec<u8> {
        let cert_id = request_cert_id(request);
        let serial = cert_id_serial(cert_id);
        let now = now();
        let status = match (self.status)(serial) {
            Answer::Good => vec![0x80, 0x00],
            Answer::Revoked(reason) => der::tlv(
                0xa1,
                &[
                    generalized_time(REVOKED_AT),
                    der::tlv(0xa0, &der::tlv(ENUMERATED, &[reason])),
                ]
                .concat(),
            ),
            Answer::Unknown => vec![0x82, 0x00],
        };
        let this_update = generalized_time(now - 60);
        let mut single = vec![cert_id.to_vec(), status, this_update];
        if let Some(next) = self.next_update {
            single.push(der::tlv(0xa0, &generalized_time(now + next)));
        }
        let single = der::tlv(SEQUENCE, &single.concat());
        let data = der::sequence(&[
            &der::tlv(0xa1, &self.name),
            &generalized_time(now),
            &der::sequence(&[&single]),
        ]);
        let signature = self.key.sign(&data).unwrap();
        let mut basic = vec![
            data,
            ECDSA_SHA256.to_vec(),
            der::tlv(der::BIT_STRING, &[&[0][..], &signature].concat()),
        ];
        if !self.certs.is_empty() {
            let certs: Vec<&[u8]> = self.certs.iter().map(|c| c.as_ref()).collect();
            basic.push(der::tlv(0xa0, &der::sequence(&certs)));
        }
        let basic = der::tlv(SEQUENCE, &basic.concat());
        der::sequence(&[
            &der::tlv(ENUMERATED, &[0]),
            &der::tlv(
                0xa0,
                &der::sequence(&[
                    &der::tlv(OID, ID_PKIX_OCSP_BASIC),
                    &der::tlv(OCTET_STRING, &basic),
                ]),
            ),
        ])
    }

    async fn serve(self) -> Server {
        let responder = Arc::new(self);
        Server::start(
            Duration::ZERO,
            Arc::new(move |body| (StatusCode::OK, responder.answer(&body))),
        )
        .await
    }
}

/// The CertID element of `OCSPRequest { tbsRequest { requestList { Request { reqCert } } } }`.
fn request_cert_id(request: &[u8]) -> &[u8] {
    let ocsp_request = Reader::new(request).read(SEQUENCE, "OCSPRequest").unwrap();
    let tbs = Reader::new(ocsp_request)
        .read(SEQUENCE, "tbsRequest")
        .unwrap();
    let list = Reader::new(tbs).read(SEQUENCE, "requestList").unwrap();
    let one = Reader::new(list).read(SEQUENCE, "Request").unwrap();
    Reader::new(one).read_tlv(SEQUENCE, "CertID").unwrap().raw
}

/// The fields of a CertID: hash algorithm contents, name hash, key hash, serial.
fn cert_id_fields(cert_id: &[u8]) -> [&[u8]; 4] {
    let mut id = Reader::new(Reader::new(cert_id).read(SEQUENCE, "CertID").unwrap());
    [
        id.read(SEQUENCE, "alg").unwrap(),
        id.read(OCTET_STRING, "name").unwrap(),
        id.read(OCTET_STRING, "key").unwrap(),
        id.read(der::INTEGER, "serial").unwrap(),
    ]
}

fn cert_id_serial(cert_id: &[u8]) -> &[u8] {
    cert_id_fields(cert_id)[3]
}

/// The serial octets rcgen writes for `serial`.
fn serial_octets(cert: &CertificateDer<'_>) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).unwrap();
    cert.raw_serial().to_vec()
}

fn generalized_time(secs: i64) -> Vec<u8> {
    let text: String = der::format_time(secs)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .filter(|c| *c != 'T')
        .collect();
    der::tlv(GENERALIZED_TIME, text.as_bytes())
}

fn now() -> i64 {
    super::unix_now()
}

// === helpers ===

async fn check(checker: &RevocationChecker, leaf: &CertificateDer<'_>, ca: &Ca) -> Verdict {
    checker
        .check(leaf, &ca.der, Mode::IgnoreCaError, TIMEOUT, TTL)
        .await
}

#[track_caller]
fn assert_unknown(verdict: &Verdict, needle: &str) {
    match verdict {
        Verdict::Unknown { reason } => {
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
        }
        other => panic!("expected Unknown ({needle}), got {other:?}"),
    }
    assert!(verdict.accepts(Mode::IgnoreCaError));
    assert!(!verdict.accepts(Mode::Strict));
    assert!(verdict.accepts(Mode::Skip));
}

#[track_caller]
fn assert_revoked(verdict: &Verdict, needle: &str) {
    match verdict {
        Verdict::Revoked { reason } => {
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
        }
        other => panic!("expected Revoked ({needle}), got {other:?}"),
    }
    assert!(!verdict.accepts(Mode::IgnoreCaError));
    assert!(!verdict.accepts(Mode::Strict));
    assert!(verdict.accepts(Mode::Skip));
}

// === CRL ===

#[tokio::test]
async fn crl_good_and_revoked() {
    let ca = Ca::new();
    let crl = ca.crl(
        &[(7, Some(RevocationReason::KeyCompromise)), (8, None)],
        Duration::from_secs(3600),
    );
    let server = Server::fixed(crl).await;
    let url = server.url("/ca.crl");
    let checker = RevocationChecker::new();

    let good = check(&checker, &ca.leaf(1, &[&url], &[]), &ca).await;
    assert_eq!(good, Verdict::Good);
    assert!(good.accepts(Mode::Strict) && good.accepts(Mode::IgnoreCaError));

    for mode in [Mode::IgnoreCaError, Mode::Strict] {
        let verdict = checker
            .check(&ca.leaf(7, &[&url], &[]), &ca.der, mode, TIMEOUT, TTL)
            .await;
        assert_eq!(
            verdict,
            Verdict::Revoked {
                reason: format!(
                    "revoked (CRL {url}, reason keyCompromise, since 2026-11-22T10:30:45Z)"
                )
            }
        );
        assert!(!verdict.accepts(mode));
    }
    let no_reason = check(&checker, &ca.leaf(8, &[&url], &[]), &ca).await;
    assert_revoked(
        &no_reason,
        &format!("revoked (CRL {url}, since 2026-11-22T10:30:45Z)"),
    );
    // One fetch served all the checks (same URL and issuer).
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn skip_fetches_nothing() {
    let ca = Ca::new();
    let server = Server::fixed(ca.crl(&[(7, None)], Duration::from_secs(3600))).await;
    let leaf = ca.leaf(7, &[&server.url("/ca.crl")], &[]);
    let verdict = RevocationChecker::new()
        .check(&leaf, &ca.der, Mode::Skip, TIMEOUT, TTL)
        .await;
    assert!(verdict.accepts(Mode::Skip));
    assert_unknown(&verdict, "SKIP");
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn pem_crl() {
    let ca = Ca::new();
    let pem = ca
        .crl_params(&[(7, None)], Duration::from_secs(3600))
        .signed_by(&ca.issuer())
        .unwrap()
        .pem()
        .unwrap();
    let server = Server::fixed(pem.into_bytes()).await;
    let url = server.url("/ca.crl.pem");
    let checker = RevocationChecker::new();
    assert_eq!(
        check(&checker, &ca.leaf(1, &[&url], &[]), &ca).await,
        Verdict::Good
    );
    assert_revoked(
        &check(&checker, &ca.leaf(7, &[&url], &[]), &ca).await,
        "revoked (CRL",
    );
}

#[tokio::test]
async fn crl_server_down_is_unknown() {
    let ca = Ca::new();
    let url = down_url("/ca.crl");
    let verdict = check(&RevocationChecker::new(), &ca.leaf(1, &[&url], &[]), &ca).await;
    assert_unknown(&verdict, &format!("CRL {url}: "));
    assert_unknown(&verdict, "Connection refused");
}

#[tokio::test]
async fn crl_http_error_is_unknown() {
    let ca = Ca::new();
    let server = Server::start(
        Duration::ZERO,
        Arc::new(|_| (StatusCode::NOT_FOUND, b"no".to_vec())),
    )
    .await;
    let url = server.url("/missing.crl");
    let verdict = check(&RevocationChecker::new(), &ca.leaf(1, &[&url], &[]), &ca).await;
    assert_unknown(&verdict, &format!("CRL {url}: HTTP 404 Not Found"));
}

#[tokio::test]
async fn crl_of_another_ca_is_refused() {
    let ca = Ca::new();
    let impostor = Ca::new(); // same name, another key
    let server = Server::fixed(impostor.crl(&[], Duration::from_secs(3600))).await;
    let url = server.url("/ca.crl");
    let verdict = check(&RevocationChecker::new(), &ca.leaf(1, &[&url], &[]), &ca).await;
    assert_unknown(&verdict, "signature check failed: bad signature");
}

#[tokio::test]
async fn garbage_crl_is_unknown() {
    let ca = Ca::new();
    let server = Server::fixed(b"\x30\x03\x02\x01".to_vec()).await;
    let url = server.url("/ca.crl");
    let verdict = check(&RevocationChecker::new(), &ca.leaf(1, &[&url], &[]), &ca).await;
    assert_unknown(&verdict, "malformed DER");
}

#[tokio::test]
async fn expired_crl_is_unknown() {
    let ca = Ca::new();
    let mut params = ca.crl_params(&[], Duration::ZERO);
    params.this_update = OffsetDateTime::now_utc() - Duration::from_secs(7200);
    params.next_update = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let crl = params.signed_by(&ca.issuer()).unwrap().der().to_vec();
    let server = Server::fixed(crl).await;
    let url = server.url("/ca.crl");
    let verdict = check(&RevocationChecker::new(), &ca.leaf(1, &[&url], &[]), &ca).await;
    assert_unknown(&verdict, "(nextUpdate)");
    assert_unknown(&verdict, "expired at ");
}

#[tokio::test]
async fn issuer_without_crl_sign_is_refused() {
    let ca = Ca::with_key_usages(vec![KeyUsagePurpose::KeyCertSign]);
    // rcgen refuses to sign a CRL for such an issuer: sign with the same name and key, but
    // parameters that allow it.
    let mut signer = ca.params.clone();
    signer.key_usages.push(KeyUsagePurpose::CrlSign);
    let crl = ca
        .crl_params(&[], Duration::from_secs(3600))
        .signed_by(&Issuer::from_params(&signer, &ca.key))
        .unwrap();
    let server = Server::fixed(crl.der().to_vec()).await;
    let url = server.url("/ca.crl");
    let verdict = check(&RevocationChecker::new(), &ca.leaf(1, &[&url], &[]), &ca).await;
    assert_unknown(
        &verdict,
        "the issuer's key usage does not allow CRL signing",
    );
}

#[tokio::test]
async fn crl_issuing_distribution_point() {
    let ca = Ca::new();
    let checker = RevocationChecker::new();
    for (idp_url, scope, expected) in [
        (None, Some(CrlScope::UserCertsOnly), Ok(())),
        (
            Some("http://crl.example/other.crl"),
            None,
            Err("issued for distribution point http://crl.example/other.crl"),
        ),
        (
            None,
            Some(CrlScope::CaCertsOnly),
            Err("covers CA or attribute certificates only"),
        ),
    ] {
        let served = Arc::new(Mutex::new(Vec::new()));
        let body = served.clone();
        let server = Server::start(
            Duration::ZERO,
            Arc::new(move |_| (StatusCode::OK, body.lock().unwrap().clone())),
        )
        .await;
        let url = server.url("/ca.crl");
        let mut params = ca.crl_params(&[], Duration::from_secs(3600));
        params.issuing_distribution_point = Some(CrlIssuingDistributionPoint {
            distribution_point: CrlDistributionPoint {
                uris: vec![idp_url.map_or_else(|| url.clone(), str::to_owned)],
            },
            scope,
        });
        *served.lock().unwrap() = params.signed_by(&ca.issuer()).unwrap().der().to_vec();
        let verdict = check(&checker, &ca.leaf(1, &[&url], &[]), &ca).await;
        match expected {
            Ok(()) => assert_eq!(verdict, Verdict::Good),
            Err(needle) => assert_unknown(&verdict, needle),
        }
    }
}

#[tokio::test]
async fn second_crl_location_is_tried() {
    let ca = Ca::new();
    let server = Server::fixed(ca.crl(&[(7, None)], Duration::from_secs(3600))).await;
    let down = down_url("/ca.crl");
    let url = server.url("/ca.crl");
    let checker = RevocationChecker::new();
    assert_eq!(
        check(&checker, &ca.leaf(1, &[&down, &url], &[]), &ca).await,
        Verdict::Good
    );
    assert_revoked(
        &check(&checker, &ca.leaf(7, &[&down, &url], &[]), &ca).await,
        &url,
    );
}

// === no usable location, wrong issuer ===

#[tokio::test]
async fn no_location_is_unknown() {
    let ca = Ca::new();
    let verdict = check(&RevocationChecker::new(), &ca.leaf(1, &[], &[]), &ca).await;
    assert_eq!(
        verdict,
        Verdict::Unknown {
            reason: "no CRL distribution point or OCSP responder in the certificate".to_owned()
        }
    );
    assert!(verdict.accepts(Mode::IgnoreCaError));
    assert!(!verdict.accepts(Mode::Strict));
}

#[tokio::test]
async fn https_and_ldap_locations_are_reported() {
    let ca = Ca::new();
    let leaf = ca.leaf(
        1,
        &["https://crl.example/ca.crl", "ldap://ldap.example/cn=CA"],
        &["https://ocsp.example"],
    );
    let verdict = check(&RevocationChecker::new(), &leaf, &ca).await;
    assert_unknown(
        &verdict,
        "no usable CRL distribution point or OCSP responder",
    );
    assert_unknown(
        &verdict,
        "CRL https://crl.example/ca.crl: https is not supported",
    );
    assert_unknown(
        &verdict,
        "CRL ldap://ldap.example/cn=CA: only http:// locations are supported",
    );
    assert_unknown(&verdict, "OCSP responder https://ocsp.example: https");
}

#[tokio::test]
async fn wrong_issuer_is_unknown() {
    let (ca, other) = (Ca::new(), Ca::new());
    let mut params = other.params.clone();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Another CA");
    let other_der = params.self_signed(&other.key).unwrap().der().clone();
    let leaf = ca.leaf(1, &["http://127.0.0.1:1/ca.crl"], &[]);
    let verdict = RevocationChecker::new()
        .check(&leaf, &other_der, Mode::Strict, TIMEOUT, TTL)
        .await;
    assert_unknown(&verdict, "is not the given issuer certificate");
}

// === OCSP ===

#[tokio::test]
async fn ocsp_good_revoked_unknown() {
    let ca = Ca::new();
    let revoked_serial = serial_octets(&ca.leaf(7, &[], &[]));
    let unknown_serial = serial_octets(&ca.leaf(9, &[], &[]));
    let server = Responder::by_ca(&ca, move |serial| {
        if serial == revoked_serial.as_slice() {
            Answer::Revoked(1)
        } else if serial == unknown_serial.as_slice() {
            Answer::Unknown
        } else {
            Answer::Good
        }
    })
    .serve()
    .await;
    let url = server.url("/");
    let checker = RevocationChecker::new();

    let leaf = ca.leaf(1, &[], &[&url]);
    assert_eq!(check(&checker, &leaf, &ca).await, Verdict::Good);

    // The request: one SHA-1 CertID of the issuer's name and key, and the leaf's serial.
    let request = server.bodies.lock().unwrap()[0].clone();
    let [algorithm, name_hash, key_hash, serial] = cert_id_fields(request_cert_id(&request));
    assert_eq!(
        algorithm,
        &[0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00]
    );
    assert_eq!(
        name_hash,
        digest(&SHA1_FOR_LEGACY_USE_ONLY, &ca.subject()).as_ref()
    );
    let key_bits = ca.key.public_key_raw();
    assert_eq!(
        key_hash,
        digest(&SHA1_FOR_LEGACY_USE_ONLY, key_bits).as_ref()
    );
    assert_eq!(serial, serial_octets(&leaf).as_slice());

    for mode in [Mode::IgnoreCaError, Mode::Strict] {
        let verdict = checker
            .check(&ca.leaf(7, &[], &[&url]), &ca.der, mode, TIMEOUT, TTL)
            .await;
        assert_eq!(
            verdict,
            Verdict::Revoked {
                reason: format!(
                    "revoked (OCSP {url}, reason keyCompromise, since 2026-11-22T10:30:45Z)"
                )
            }
        );
    }

    let verdict = check(&checker, &ca.leaf(9, &[], &[&url]), &ca).await;
    assert_unknown(
        &verdict,
        &format!("OCSP responder {url}: the responder does not know the certificate"),
    );
}

#[tokio::test]
async fn ocsp_down_falls_back_to_crl() {
    let ca = Ca::new();
    let crl_server = Server::fixed(ca.crl(&[(7, None)], Duration::from_secs(3600))).await;
    let crl = crl_server.url("/ca.crl");
    let ocsp = down_url("/");
    let checker = RevocationChecker::new();
    assert_eq!(
        check(&checker, &ca.leaf(1, &[&crl], &[&ocsp]), &ca).await,
        Verdict::Good
    );
    assert_revoked(
        &check(&checker, &ca.leaf(7, &[&crl], &[&ocsp]), &ca).await,
        "revoked (CRL",
    );
    assert_eq!(crl_server.hits(), 1);
}

#[tokio::test]
async fn ocsp_down_without_crl_is_unknown() {
    let ca = Ca::new();
    let url = down_url("/");
    let verdict = check(&RevocationChecker::new(), &ca.leaf(1, &[], &[&url]), &ca).await;
    assert_unknown(&verdict, &format!("OCSP responder {url}: "));
    assert_unknown(&verdict, "Connection refused");
}

#[tokio::test]
async fn ocsp_revoked_wins_over_crl() {
    let ca = Ca::new();
    let crl_server = Server::fixed(ca.crl(&[], Duration::from_secs(3600))).await;
    let ocsp = Responder::by_ca(&ca, |_| Answer::Revoked(4)).serve().await;
    let leaf = ca.leaf(1, &[&crl_server.url("/ca.crl")], &[&ocsp.url("/")]);
    let verdict = check(&RevocationChecker::new(), &leaf, &ca).await;
    assert_revoked(&verdict, "reason superseded");
    assert_eq!(crl_server.hits(), 0);
}

#[tokio::test]
async fn ocsp_delegated_responder() {
    let ca = Ca::new();
    let (key, cert) = ca.responder(true);
    let (_, cert_der) = x509_parser::parse_x509_certificate(&cert).unwrap();
    let responder = Responder {
        key,
        name: cert_der.subject().as_raw().to_vec(),
        certs: vec![cert.clone()],
        next_update: Some(3600),
        status: Box::new(|_| Answer::Good),
    };
    let server = responder.serve().await;
    let leaf = ca.leaf(1, &[], &[&server.url("/")]);
    assert_eq!(
        check(&RevocationChecker::new(), &leaf, &ca).await,
        Verdict::Good
    );
}

#[tokio::test]
async fn ocsp_responder_without_eku_is_refused() {
    let ca = Ca::new();
    let (key, cert) = ca.responder(false);
    let responder = Responder {
        key,
        name: ca.subject(),
        certs: vec![cert],
        next_update: Some(3600),
        status: Box::new(|_| Answer::Good),
    };
    let server = responder.serve().await;
    let leaf = ca.leaf(1, &[], &[&server.url("/")]);
    let verdict = check(&RevocationChecker::new(), &leaf, &ca).await;
    assert_unknown(&verdict, "not signed by the issuer (bad signature)");
    assert_unknown(&verdict, "lacks the OCSP-signing extended key usage");
}

#[tokio::test]
async fn ocsp_signed_by_a_stranger_is_refused() {
    let ca = Ca::new();
    let stranger = Ca::new();
    let mut responder = Responder::by_ca(&stranger, |_| Answer::Good);
    responder.name = ca.subject();
    // Its certificate is included but not issued by the CA.
    responder.certs = vec![stranger.responder(true).1];
    let server = responder.serve().await;
    let leaf = ca.leaf(1, &[], &[&server.url("/")]);
    let verdict = check(&RevocationChecker::new(), &leaf, &ca).await;
    assert_unknown(&verdict, "not signed by the issuer");
    assert_unknown(&verdict, "is not signed by the issuer");
}

#[tokio::test]
async fn ocsp_answer_for_another_certificate_is_refused() {
    let ca = Ca::new();
    let other = ca.leaf(2, &[], &[]);
    let checker_request = super::ocsp::CertId::new(
        &super::certs::Issuer::parse(&ca.der).unwrap(),
        &serial_octets(&other),
    )
    .request();
    let responder = Responder::by_ca(&ca, |_| Answer::Good);
    // Always answers about certificate 2.
    let answer = responder.answer(&checker_request);
    let server = Server::fixed(answer).await;
    let leaf = ca.leaf(1, &[], &[&server.url("/")]);
    let verdict = check(&RevocationChecker::new(), &leaf, &ca).await;
    assert_unknown(&verdict, "the answer does not cover the certificate");
}

#[tokio::test]
async fn ocsp_error_status_is_unknown() {
    let ca = Ca::new();
    // OCSPResponse { responseStatus tryLater }
    let server = Server::fixed(vec![0x30, 0x03, 0x0a, 0x01, 0x03]).await;
    let leaf = ca.leaf(1, &[], &[&server.url("/")]);
    let verdict = check(&RevocationChecker::new(), &leaf, &ca).await;
    assert_unknown(&verdict, "responder answered tryLater");
}

#[tokio::test]
async fn stale_ocsp_answer_is_unknown() {
    let ca = Ca::new();
    let mut responder = Responder::by_ca(&ca, |_| Answer::Good);
    responder.next_update = Some(-3600);
    let server = responder.serve().await;
    let leaf = ca.leaf(1, &[], &[&server.url("/")]);
    let verdict = check(&RevocationChecker::new(), &leaf, &ca).await;
    assert_unknown(&verdict, "stale answer (nextUpdate ");
}

// === cache, single flight, timeout ===

#[tokio::test]
async fn crl_cache_ttl() {
    let ca = Ca::new();
    let server = Server::fixed(ca.crl(&[], Duration::from_secs(3600))).await;
    let leaf = ca.leaf(1, &[&server.url("/ca.crl")], &[]);
    let checker = RevocationChecker::new();
    let ttl = Duration::from_millis(300);
    for _ in 0..2 {
        let verdict = checker
            .check(&leaf, &ca.der, Mode::Strict, TIMEOUT, ttl)
            .await;
        assert_eq!(verdict, Verdict::Good);
    }
    assert_eq!(server.hits(), 1);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let verdict = checker
        .check(&leaf, &ca.der, Mode::Strict, TIMEOUT, ttl)
        .await;
    assert_eq!(verdict, Verdict::Good);
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn ocsp_cache_ttl() {
    let ca = Ca::new();
    let server = Responder::by_ca(&ca, |_| Answer::Good).serve().await;
    let leaf = ca.leaf(1, &[], &[&server.url("/")]);
    let checker = RevocationChecker::new();
    let ttl = Duration::from_millis(300);
    for _ in 0..2 {
        let verdict = checker
            .check(&leaf, &ca.der, Mode::Strict, TIMEOUT, ttl)
            .await;
        assert_eq!(verdict, Verdict::Good);
    }
    assert_eq!(server.hits(), 1);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    checker
        .check(&leaf, &ca.der, Mode::Strict, TIMEOUT, ttl)
        .await;
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn ocsp_next_update_bounds_the_cache() {
    let ca = Ca::new();
    let mut responder = Responder::by_ca(&ca, |_| Answer::Good);
    responder.next_update = Some(1);
    let server = responder.serve().await;
    let leaf = ca.leaf(1, &[], &[&server.url("/")]);
    let checker = RevocationChecker::new();
    assert_eq!(check(&checker, &leaf, &ca).await, Verdict::Good);
    assert_eq!(check(&checker, &leaf, &ca).await, Verdict::Good);
    assert_eq!(server.hits(), 1);
    // nextUpdate is whole seconds: at most 1 s ahead.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(check(&checker, &leaf, &ca).await, Verdict::Good);
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn failures_are_not_cached() {
    let ca = Ca::new();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let crl = ca.crl(&[], Duration::from_secs(3600));
    let flag = healthy.clone();
    let server = Server::start(
        Duration::ZERO,
        Arc::new(move |_| {
            if flag.load(Ordering::SeqCst) {
                (StatusCode::OK, crl.clone())
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, Vec::new())
            }
        }),
    )
    .await;
    let leaf = ca.leaf(1, &[&server.url("/ca.crl")], &[]);
    let checker = RevocationChecker::new();
    assert_unknown(&check(&checker, &leaf, &ca).await, "HTTP 503");
    healthy.store(true, Ordering::SeqCst);
    assert_eq!(check(&checker, &leaf, &ca).await, Verdict::Good);
    assert_eq!(server.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_share_one_fetch() {
    let ca = Ca::new();
    let crl = ca.crl(&[(7, None)], Duration::from_secs(3600));
    let server = Server::start(
        Duration::from_millis(200),
        Arc::new(move |_| (StatusCode::OK, crl.clone())),
    )
    .await;
    let url = server.url("/ca.crl");
    let ocsp = {
        let responder = Arc::new(Responder::by_ca(&ca, |_| Answer::Good));
        Server::start(
            Duration::from_millis(200),
            Arc::new(move |body| (StatusCode::OK, responder.answer(&body))),
        )
        .await
    };
    let checker = Arc::new(RevocationChecker::new());
    let issuer = ca.der.clone();
    let crl_leaf = ca.leaf(7, &[&url], &[]);
    let ocsp_leaf = ca.leaf(1, &[], &[&ocsp.url("/")]);
    let mut checks = JoinSet::new();
    for i in 0..20 {
        let (checker, issuer) = (checker.clone(), issuer.clone());
        let leaf = if i % 2 == 0 {
            crl_leaf.clone()
        } else {
            ocsp_leaf.clone()
        };
        checks.spawn(async move {
            checker
                .check(&leaf, &issuer, Mode::Strict, TIMEOUT, TTL)
                .await
        });
    }
    let verdicts = checks.join_all().await;
    assert_eq!(verdicts.len(), 20);
    assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Good).count(), 10);
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Revoked { .. }))
            .count(),
        10
    );
    assert_eq!(server.hits(), 1);
    assert_eq!(ocsp.hits(), 1);
}

#[tokio::test]
async fn http_timeout_is_honoured() {
    let ca = Ca::new();
    let (addr, hole) = black_hole().await;
    let crl = format!("http://{addr}/ca.crl");
    let ocsp = format!("http://{addr}/ocsp");
    let leaf = ca.leaf(1, &[&crl], &[&ocsp]);
    let started = Instant::now();
    let verdict = RevocationChecker::new()
        .check(
            &leaf,
            &ca.der,
            Mode::Strict,
            Duration::from_millis(300),
            TTL,
        )
        .await;
    let elapsed = started.elapsed();
    hole.abort();
    assert_unknown(
        &verdict,
        &format!("OCSP responder {ocsp}: timed out after 300 ms"),
    );
    assert_unknown(&verdict, &format!("CRL {crl}: timed out after 300 ms"));
    // Two fetches of 300 ms each, one after the other.
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn oversized_crl_is_refused() {
    let ca = Ca::new();
    let server = Server::fixed(vec![0; super::MAX_CRL_BYTES + 1]).await;
    let url = server.url("/huge.crl");
    let verdict = check(&RevocationChecker::new(), &ca.leaf(1, &[&url], &[]), &ca).await;
    assert_unknown(&verdict, "answer larger than");
}

#[test]
fn cache_is_bounded() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cache = super::cache::FlightCache::<u32, u32>::new(3);
    runtime.block_on(async {
        for key in 0..10 {
            let value = cache
                .get(&key, TTL, || async move { Ok((key, None)) })
                .await
                .unwrap();
            assert_eq!(*value, key);
        }
        assert!(cache.len() <= 3, "{}", cache.len());
        // The newest keys stay.
        let value = cache
            .get(&9, TTL, || async { Err("refetched".to_owned()) })
            .await
            .unwrap();
        assert_eq!(*value, 9);
    });
}
