//! Real handshakes over loopback between CP and DP configurations built from `pki::init`
//! output.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
use rustls::RootCertStore;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls_pki_types::PrivateKeyDer;

use super::*;
use crate::cluster::pki;
use crate::cluster::test_support::{TempDir, fingerprint_of_file, handshake, new_pki};

fn pki_server(dir: &TempDir) -> Arc<ServerConfig> {
    server_config(ClusterMtls::Pki, &dir.files("cp")).unwrap()
}

fn pki_client(dir: &TempDir, dp: &str) -> Arc<ClientConfig> {
    client_config(ClusterMtls::Pki, &dir.files(dp), "localhost").unwrap()
}

/// A self-signed client certificate with CN `cn` and EKU clientAuth, written to `dir`.
fn write_self_signed(dir: &TempDir, cn: &str) -> ClusterTlsFiles {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.remove(DnType::CommonName);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(dir.join("self.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("self.key"), key.serialize_pem()).unwrap();
    ClusterTlsFiles {
        cert: dir.join("self.crt"),
        key: dir.join("self.key"),
        ca: None,
        allowed_common_names: Vec::new(),
    }
}

/// The leaf certificate and key of `stem` in `dir`, parsed.
fn identity_of(
    dir: &TempDir,
    stem: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let files = dir.files(stem);
    let chain = x509::parse_certificates(&std::fs::read_to_string(&files.cert).unwrap()).unwrap();
    let key = x509::parse_private_key(&std::fs::read_to_string(&files.key).unwrap()).unwrap();
    (chain, key)
}

#[tokio::test]
async fn pki_dp_certificate_from_init_is_accepted() {
    let dir = new_pki("pki-ok", &["dp1"]);
    let outcome = handshake(pki_server(&dir), pki_client(&dir, "dp1"), "localhost").await;
    outcome.assert_ok();

    let dp = outcome.server.as_ref().unwrap().as_ref().unwrap();
    assert_eq!(dp.common_name.as_deref(), Some("dp1"));
    assert_eq!(dp.fingerprint, fingerprint_of_file(&dir.join("dp1.crt")));
    let (cp_chain, alpn) = outcome.client.as_ref().unwrap();
    let cp = peer_identity(cp_chain).unwrap();
    assert_eq!(cp.common_name.as_deref(), Some(pki::CP_COMMON_NAME));
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

    // The IP SAN of the default CP names works too.
    let client = client_config(ClusterMtls::Pki, &dir.files("dp1"), "127.0.0.1").unwrap();
    handshake(pki_server(&dir), client, "127.0.0.1")
        .await
        .assert_ok();
}

#[tokio::test]
async fn pki_dp_certificate_issued_later_is_accepted() {
    let dir = new_pki("pki-issue", &[]);
    pki::issue(dir.path(), "edge-7", 10, false).unwrap();
    let outcome = handshake(pki_server(&dir), pki_client(&dir, "edge-7"), "localhost").await;
    outcome.assert_ok();
    let dp = outcome.server.as_ref().unwrap().as_ref().unwrap();
    assert_eq!(dp.common_name.as_deref(), Some("edge-7"));
}

#[tokio::test]
async fn pki_dp_certificate_from_another_ca_is_refused() {
    let dir = new_pki("pki-a", &["dp1"]);
    let other = new_pki("pki-b", &["dp1"]);
    // The DP trusts the right CA (so it accepts the CP) but holds a certificate from another.
    let mut files = other.files("dp1");
    files.ca = Some(dir.join("ca.crt"));
    let client = client_config(ClusterMtls::Pki, &files, "localhost").unwrap();
    let outcome = handshake(pki_server(&dir), client, "localhost").await;
    assert!(
        outcome.server_error().contains("UnknownIssuer"),
        "{outcome:?}"
    );
    outcome.client_error();
}

#[tokio::test]
async fn pki_self_signed_dp_certificate_is_refused() {
    let dir = new_pki("pki-self", &[]);
    let mut files = write_self_signed(&dir, "dp1");
    files.ca = Some(dir.join("ca.crt"));
    let client = client_config(ClusterMtls::Pki, &files, "localhost").unwrap();
    let outcome = handshake(pki_server(&dir), client, "localhost").await;
    assert!(
        outcome.server_error().contains("UnknownIssuer"),
        "{outcome:?}"
    );
    outcome.client_error();
}

#[tokio::test]
async fn pki_dp_without_certificate_is_refused() {
    let dir = new_pki("pki-none", &[]);
    let mut roots = RootCertStore::empty();
    for cert in
        x509::parse_certificates(&std::fs::read_to_string(dir.join("ca.crt")).unwrap()).unwrap()
    {
        roots.add(cert).unwrap();
    }
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let outcome = handshake(pki_server(&dir), Arc::new(client), "localhost").await;
    assert!(
        outcome.server_error().contains("no certificates"),
        "{outcome:?}"
    );
    outcome.client_error();
}

#[tokio::test]
async fn pki_allowed_common_names_accept_listed_and_refuse_others() {
    let dir = new_pki("pki-cn", &["dp1", "dp2"]);
    let mut files = dir.files("cp");
    files.allowed_common_names = vec!["dp1".to_owned(), "dp9".to_owned()];
    let server = server_config(ClusterMtls::Pki, &files).unwrap();

    let outcome = handshake(server.clone(), pki_client(&dir, "dp1"), "localhost").await;
    outcome.assert_ok();

    let outcome = handshake(server, pki_client(&dir, "dp2"), "localhost").await;
    let error = outcome.server_error();
    assert!(
        error.contains("'dp2'") && error.contains("not in the cluster allowed common names"),
        "{outcome:?}"
    );
    outcome.client_error();
}

#[tokio::test]
async fn pki_dp_refuses_cp_from_another_ca() {
    let dir = new_pki("pki-cp-a", &["dp1"]);
    let other = new_pki("pki-cp-b", &[]);
    let outcome = handshake(pki_server(&other), pki_client(&dir, "dp1"), "localhost").await;
    assert!(
        outcome.client_error().contains("UnknownIssuer"),
        "{outcome:?}"
    );
    outcome.server_error();
}

#[tokio::test]
async fn pki_dp_refuses_cp_whose_name_does_not_match() {
    let dir = new_pki("pki-name", &["dp1"]);
    let client = client_config(ClusterMtls::Pki, &dir.files("dp1"), "cp.example.com").unwrap();
    // Checked against the configured name even when the connection uses another one.
    for connect_as in ["cp.example.com", "localhost"] {
        let outcome = handshake(pki_server(&dir), client.clone(), connect_as).await;
        assert!(
            outcome.client_error().contains("not valid for name"),
            "{outcome:?}"
        );
    }
}

#[tokio::test]
async fn shared_same_certificate_on_both_sides_works() {
    let dir = new_pki("shared-ok", &[]);
    let server = server_config(ClusterMtls::Shared, &dir.files("shared")).unwrap();
    let client = client_config(
        ClusterMtls::Shared,
        &dir.files("shared"),
        SHARED_SERVER_NAME,
    )
    .unwrap();
    let outcome = handshake(server, client, SHARED_SERVER_NAME).await;
    outcome.assert_ok();
    let dp = outcome.server.as_ref().unwrap().as_ref().unwrap();
    assert_eq!(dp.common_name.as_deref(), Some(SHARED_SERVER_NAME));
    assert_eq!(dp.fingerprint, fingerprint_of_file(&dir.join("shared.crt")));
}

#[tokio::test]
async fn shared_mode_works_over_tls12() {
    let dir = new_pki("shared-12", &[]);
    let server = server_config(ClusterMtls::Shared, &dir.files("shared")).unwrap();
    let (chain, key) = identity_of(&dir, "shared");
    let pin = Pin::of(
        &CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).unwrap(),
        &dir.join("shared.crt"),
    )
    .unwrap();
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier {
            pin: Some(pin),
            algorithms: provider().signature_verification_algorithms,
        }))
        .with_client_auth_cert(chain, key)
        .unwrap();
    handshake(server, Arc::new(client), SHARED_SERVER_NAME)
        .await
        .assert_ok();
}

#[tokio::test]
async fn shared_cp_refuses_a_different_dp_certificate() {
    let dir = new_pki("shared-cp-a", &[]);
    let other = new_pki("shared-cp-b", &[]);
    let server = server_config(ClusterMtls::Shared, &dir.files("shared")).unwrap();
    // A DP that accepts this CP's certificate but presents another self-signed one.
    let (cp_chain, cp_key) = identity_of(&dir, "shared");
    let pin = Pin::of(
        &CertifiedKey::from_der(cp_chain, cp_key, &provider()).unwrap(),
        &dir.join("shared.crt"),
    )
    .unwrap();
    let (dp_chain, dp_key) = identity_of(&other, "shared");
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier {
            pin: Some(pin),
            algorithms: provider().signature_verification_algorithms,
        }))
        .with_client_auth_cert(dp_chain, dp_key)
        .unwrap();
    let outcome = handshake(server, Arc::new(client), SHARED_SERVER_NAME).await;
    assert!(
        outcome
            .server_error()
            .contains("is not the cluster certificate"),
        "{outcome:?}"
    );
    outcome.client_error();
}

#[tokio::test]
async fn shared_cp_checks_the_handshake_signature_not_only_the_pin() {
    let dir = new_pki("shared-sig", &[]);
    let other = new_pki("shared-sig-b", &[]);
    let server = server_config(ClusterMtls::Shared, &dir.files("shared")).unwrap();
    // The DP presents the pinned certificate but does not hold its key.
    let (chain, _) = identity_of(&dir, "shared");
    let (_, wrong_key) = identity_of(&other, "shared");
    let signer = provider().key_provider.load_private_key(wrong_key).unwrap();
    let stolen = CertifiedKey::new(chain.clone(), signer);
    let (_, right_key) = identity_of(&dir, "shared");
    let pin = Pin::of(
        &CertifiedKey::from_der(chain, right_key, &provider()).unwrap(),
        &dir.join("shared.crt"),
    )
    .unwrap();
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier {
            pin: Some(pin),
            algorithms: provider().signature_verification_algorithms,
        }))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(stolen)));
    let outcome = handshake(server, Arc::new(client), SHARED_SERVER_NAME).await;
    let error = outcome.server_error();
    assert!(
        error.contains("BadSignature") && !error.contains("is not the cluster certificate"),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn shared_dp_refuses_a_cp_presenting_a_different_certificate() {
    let dir = new_pki("shared-dp-a", &[]);
    let other = new_pki("shared-dp-b", &[]);
    let server = server_config(ClusterMtls::Shared, &other.files("shared")).unwrap();
    let client = client_config(
        ClusterMtls::Shared,
        &dir.files("shared"),
        SHARED_SERVER_NAME,
    )
    .unwrap();
    let outcome = handshake(server, client, SHARED_SERVER_NAME).await;
    assert!(
        outcome
            .client_error()
            .contains("is not the cluster certificate"),
        "{outcome:?}"
    );
    outcome.server_error();
}

#[test]
fn errors_name_the_file_and_never_show_key_material() {
    let dir = new_pki("errors", &["dp1"]);
    let key_pem = std::fs::read_to_string(dir.join("dp1.key")).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap().to_owned();

    // Missing file.
    let mut files = dir.files("dp1");
    files.cert = dir.join("nope.crt");
    let error = server_config(ClusterMtls::Pki, &files).unwrap_err();
    assert!(matches!(error, ClusterTlsError::Missing { .. }), "{error}");
    assert!(
        error.to_string().contains("nope.crt: file not found"),
        "{error}"
    );

    // The key given as the certificate.
    let mut files = dir.files("dp1");
    files.cert = dir.join("dp1.key");
    let error = client_config(ClusterMtls::Pki, &files, "localhost").unwrap_err();
    let text = error.to_string();
    assert!(text.contains("dp1.key: no certificate found"), "{text}");
    assert!(
        !text.contains(&key_body) && !text.contains("PRIVATE KEY"),
        "{text}"
    );

    // The certificate given as the key.
    let mut files = dir.files("dp1");
    files.key = dir.join("dp1.crt");
    let error = client_config(ClusterMtls::Pki, &files, "localhost").unwrap_err();
    assert!(
        error.to_string().contains("dp1.crt: no private key found"),
        "{error}"
    );

    // A garbled key: a fixed message, nothing echoed.
    std::fs::write(
        dir.join("bad.key"),
        format!("-----BEGIN PRIVATE KEY-----\n{key_body}AAAA\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let mut files = dir.files("dp1");
    files.key = dir.join("bad.key");
    let text = server_config(ClusterMtls::Shared, &files)
        .unwrap_err()
        .to_string();
    assert!(text.contains("bad.key: "), "{text}");
    assert!(!text.contains(&key_body[..16]), "{text}");

    // Key of another certificate.
    let mut files = dir.files("dp1");
    files.key = dir.join("cp.key");
    let error = server_config(ClusterMtls::Shared, &files).unwrap_err();
    assert!(
        matches!(error, ClusterTlsError::KeyMismatch { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("cp.key is not the private key of")
            && error.to_string().contains("dp1.crt"),
        "{error}"
    );

    // pki mode without a CA, on both sides.
    let mut files = dir.files("cp");
    files.ca = None;
    let error = server_config(ClusterMtls::Pki, &files).unwrap_err();
    assert!(matches!(error, ClusterTlsError::CaRequired), "{error}");
    let error = client_config(ClusterMtls::Pki, &files, "localhost").unwrap_err();
    assert!(matches!(error, ClusterTlsError::CaRequired), "{error}");
    // ... which shared mode does not need.
    server_config(ClusterMtls::Shared, &files).unwrap();

    // A CA file without a certificate.
    let mut files = dir.files("cp");
    files.ca = Some(dir.join("ca.key"));
    let error = server_config(ClusterMtls::Pki, &files).unwrap_err();
    assert!(matches!(error, ClusterTlsError::Ca { .. }), "{error}");
    assert!(
        error.to_string().contains("ca.key: no certificate found"),
        "{error}"
    );

    // A bad server name.
    let error = client_config(ClusterMtls::Pki, &dir.files("dp1"), "not a name").unwrap_err();
    assert!(
        matches!(error, ClusterTlsError::ServerName { .. }),
        "{error}"
    );
}

#[test]
fn cluster_mtls_parses_and_prints() {
    assert_eq!(
        "shared".parse::<ClusterMtls>().unwrap(),
        ClusterMtls::Shared
    );
    assert_eq!("pki".parse::<ClusterMtls>().unwrap(), ClusterMtls::Pki);
    assert_eq!(ClusterMtls::default(), ClusterMtls::Shared);
    assert_eq!(ClusterMtls::Pki.to_string(), "pki");
    let error = "pki_check_cn".parse::<ClusterMtls>().unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid cluster_mtls 'pki_check_cn': expected shared or pki"
    );
}

#[test]
fn peer_identity_needs_a_certificate() {
    assert_eq!(peer_identity(&[]), None);
    assert_eq!(peer_identity(&[CertificateDer::from(vec![1, 2, 3])]), None);
}
