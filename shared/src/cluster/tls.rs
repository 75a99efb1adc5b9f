//! rustls configurations of the cluster link: the CP's listener ([`server_config`]) and the
//! DP's connection ([`client_config`]), in `shared` or `pki` mode.
//!
//! Every configuration is built with its own aws-lc-rs provider, so nothing depends on a
//! process-wide default, and offers ALPN `h2` (the link carries gRPC).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs, verify_tls12_signature,
    verify_tls13_signature,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, InconsistentKeys,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::x509;

/// The server name of the cluster link in `shared` mode (Kong uses `kong_clustering`): the
/// common name and a SAN of the shared certificate, and the SNI a DP may send. In `shared`
/// mode names are not checked, the certificate digest is.
pub const SHARED_SERVER_NAME: &str = "gatehouse_clustering";

/// The ALPN protocol of the cluster link (gRPC over HTTP/2).
const ALPN_H2: &[u8] = b"h2";

/// How the CP and the DPs authenticate each other (Kong's `cluster_mtls`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ClusterMtls {
    /// Every node uses the same certificate; a peer is accepted when its certificate has the
    /// same SHA-256 digest as the node's own (Kong's default).
    #[default]
    Shared,
    /// A cluster CA issues one certificate per node; peers are verified against the CA.
    Pki,
}

/// The files a node reads for the cluster link (Kong's `cluster_cert`, `cluster_cert_key`,
/// `cluster_ca_cert`, `cluster_allowed_common_names`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterTlsFiles {
    /// PEM certificate of this node, leaf first, optionally followed by intermediates.
    pub cert: PathBuf,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM cluster CA certificate(s). Required in `pki` mode, ignored in `shared` mode.
    pub ca: Option<PathBuf>,
    /// CP only, `pki` mode only: when not empty, a DP certificate must carry one of these
    /// common names. Ignored by the DP and in `shared` mode.
    pub allowed_common_names: Vec<String>,
}

/// Who is on the other end of a cluster connection, from its end-entity certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerIdentity {
    /// First common name of the certificate's subject, if any.
    pub common_name: Option<String>,
    /// End of the certificate's validity, unix seconds (the registry's `cert_expiry`).
    pub not_after: i64,
    /// Lowercase hex SHA-256 of the certificate DER.
    pub fingerprint: String,
}

/// Why a cluster TLS configuration could not be built. Every message names the file at fault
/// and never contains key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterTlsError {
    /// A configured file does not exist.
    #[error("{path}: file not found", path = .path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A configured file exists but cannot be read.
    #[error("cannot read {path}: {source}", path = .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The certificate file holds no usable certificate.
    #[error("{path}: {reason}", path = .path.display())]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong (e.g. `no certificate found`).
        reason: String,
    },
    /// The key file holds no usable private key (the reason is a fixed text).
    #[error("{path}: {reason}", path = .path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong (e.g. `no private key found`).
        reason: String,
    },
    /// The private key is not the key of the certificate.
    #[error("{key} is not the private key of {cert}", key = .key.display(), cert = .cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// `pki` mode without a cluster CA certificate.
    #[error(
        "cluster_mtls = pki needs the cluster CA certificate (--cluster-ca-cert / GATEHOUSE_CLUSTER_CA_CERT)"
    )]
    CaRequired,
    /// The cluster CA file holds no usable CA certificate.
    #[error("{path}: {reason}", path = .path.display())]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The server name the DP expects is not a DNS name or an IP address.
    #[error("invalid cluster server name '{name}': expected a DNS name or an IP address")]
    ServerName {
        /// The rejected name.
        name: String,
    },
    /// An unknown `cluster_mtls` value.
    #[error("invalid cluster_mtls '{value}': expected shared or pki")]
    Mode {
        /// The rejected value.
        value: String,
    },
    /// rustls refused the configuration (should not happen with valid files).
    #[error("cannot build the cluster TLS configuration: {reason}")]
    Build {
        /// rustls' reason.
        reason: String,
    },
}

/// A certificate pinned by its SHA-256 digest (`shared` mode), with the validity of the
/// pinned certificate (a peer presenting the same digest presents the same certificate).
#[derive(Debug, Clone)]
struct Pin {
    digest: [u8; 32],
    not_before: i64,
    not_after: i64,
}

/// Why a pinned verifier refused a certificate; holds the peer certificate's digest.
///
/// rustls prints a refusal with `Debug`, so `Debug` prints the message too.
#[derive(thiserror::Error)]
#[error(
    "peer certificate is not the cluster certificate (cluster_mtls = shared: its SHA-256 digest {0} differs from this node's)"
)]
struct PinMismatch(String);

/// Why the CP refused a DP whose common name is not allowed (`Debug` prints the message).
#[derive(thiserror::Error)]
#[error("data plane certificate common name {0} is not in the cluster allowed common names")]
struct CommonNameNotAllowed(String);

/// CP, `shared` mode: requires a client certificate equal to the CP's own.
#[derive(Debug)]
struct PinnedClientVerifier {
    pin: Pin,
    algorithms: WebPkiSupportedAlgorithms,
}

/// DP, `shared` mode: requires a server certificate equal to the DP's own (`Some(pin)`);
/// with `None`, any server certificate (see [`trust_bundle_client_config`]). Either way the
/// handshake signature is checked with it.
#[derive(Debug)]
struct PinnedServerVerifier {
    pin: Option<Pin>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// CP, `pki` mode with an allow-list: the CA verification, then the common name check.
#[derive(Debug)]
struct AllowedNamesVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

/// DP, `pki` mode: the CA verification against the configured server name, whatever name
/// the connection was opened with.
#[derive(Debug)]
struct FixedNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

/// Builds the CP's listener configuration.
///
/// The CP presents `files.cert`/`files.key` and requires a client certificate:
/// - `Pki`: issued by the CA of `files.ca` (required) for client authentication; when
///   `files.allowed_common_names` is not empty, its common name must be one of them;
/// - `Shared`: the same certificate as the CP's own (SHA-256 digest), holding its key (the
///   handshake signature is verified).
pub fn server_config(
    mode: ClusterMtls,
    files: &ClusterTlsFiles,
) -> Result<Arc<ServerConfig>, ClusterTlsError> {
    server_config_with(mode, files, false)
}

/// [`server_config`], and with `optional_client_auth` in `pki` mode a client that presents no
/// certificate completes the handshake as well (one that presents a certificate must still
/// present a valid one). The listener then serves such a connection only the enrolment
/// service. Ignored in `shared` mode.
pub fn server_config_with(
    mode: ClusterMtls,
    files: &ClusterTlsFiles,
    optional_client_auth: bool,
) -> Result<Arc<ServerConfig>, ClusterTlsError> {
    let provider = provider();
    let identity = load_identity(files, &provider)?;
    let verifier: Arc<dyn ClientCertVerifier> = match mode {
        ClusterMtls::Shared => Arc::new(PinnedClientVerifier {
            pin: Pin::of(&identity, &files.cert)?,
            algorithms: provider.signature_verification_algorithms,
        }),
        ClusterMtls::Pki => {
            let (ca, roots) = load_roots(files)?;
            let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            if optional_client_auth {
                builder = builder.allow_unauthenticated();
            }
            let inner = builder.build().map_err(|e| ClusterTlsError::Ca {
                path: ca.to_owned(),
                reason: e.to_string(),
            })?;
            if files.allowed_common_names.is_empty() {
                inner
            } else {
                Arc::new(AllowedNamesVerifier {
                    inner,
                    allowed: files.allowed_common_names.clone(),
                })
            }
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(build_error)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Builds the DP's connection configuration.
///
/// The DP presents `files.cert`/`files.key` and verifies the CP:
/// - `Pki`: the CP's certificate must be issued by the CA of `files.ca` (required) for server
///   authentication and be valid for `server_name` (Kong's `cluster_server_name`). The name
///   is checked against `server_name` whatever name the connection is opened with; open it
///   with the same name so the SNI matches.
/// - `Shared`: the CP's certificate must be the DP's own (SHA-256 digest), and the CP must
///   hold its key; names are not checked (connect with [`SHARED_SERVER_NAME`]).
///
/// `server_name` must be a DNS name or an IP address in both modes.
pub fn client_config(
    mode: ClusterMtls,
    files: &ClusterTlsFiles,
    server_name: &str,
) -> Result<Arc<ClientConfig>, ClusterTlsError> {
    let name = parse_server_name(server_name)?;
    let provider = provider();
    let identity = load_identity(files, &provider)?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        ClusterMtls::Shared => Arc::new(PinnedServerVerifier {
            pin: Some(Pin::of(&identity, &files.cert)?),
            algorithms: provider.signature_verification_algorithms,
        }),
        ClusterMtls::Pki => ca_verifier(files, &provider, name)?,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(build_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Builds an HTTPS listener's configuration (the CP's Admin API): presents
/// `files.cert`/`files.key`, offers HTTP/2 and HTTP/1.1, and, when `files.ca` is set, asks for
/// a client certificate issued by that CA. A client without one may still connect (it can
/// authenticate otherwise); a client presenting a certificate the CA did not issue, or an
/// expired one, is refused in the handshake.
pub fn https_server_config(files: &ClusterTlsFiles) -> Result<Arc<ServerConfig>, ClusterTlsError> {
    let provider = provider();
    let identity = load_identity(files, &provider)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(build_error)?;
    let builder = match files.ca {
        Some(_) => {
            let (ca, roots) = load_roots(files)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| ClusterTlsError::Ca {
                    path: ca.to_owned(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(identity)));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The DP's configuration for enrolment: verifies the CP like [`client_config`] in `pki` mode
/// (against `ca`, for `server_name`) and presents no certificate (it has none yet).
pub fn enrol_client_config(
    ca: &Path,
    server_name: &str,
) -> Result<Arc<ClientConfig>, ClusterTlsError> {
    let name = parse_server_name(server_name)?;
    let provider = provider();
    let files = ClusterTlsFiles {
        ca: Some(ca.to_owned()),
        ..ClusterTlsFiles::default()
    };
    let verifier = ca_verifier(&files, &provider, name)?;
    anonymous_client_config(provider, verifier)
}

/// The DP's configuration for fetching the cluster CA bundle when it knows only a pin of the CA
/// (`--cluster-ca-pin`): the control plane's certificate is NOT verified (the DP has nothing to
/// verify it with yet), only its handshake signature. Use it for `Enrolment.TrustBundle` and
/// nothing else: what comes back is trusted only through the pin (see
/// [`pinned_cas`](super::enrol::pinned_cas)), and the enrolment itself then runs over a
/// connection verified with the pinned CA.
pub fn trust_bundle_client_config() -> Result<Arc<ClientConfig>, ClusterTlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServerVerifier {
        pin: None,
        algorithms: provider.signature_verification_algorithms,
    });
    anonymous_client_config(provider, verifier)
}

/// A DP configuration for the enrolment service: `verifier` checks the CP, no client
/// certificate is presented, HTTP/2 by ALPN.
fn anonymous_client_config(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<ClientConfig>, ClusterTlsError> {
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(build_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The CP name a DP checks, as rustls takes it.
fn parse_server_name(server_name: &str) -> Result<ServerName<'static>, ClusterTlsError> {
    ServerName::try_from(server_name)
        .map(|name| name.to_owned())
        .map_err(|_| ClusterTlsError::ServerName {
            name: server_name.to_owned(),
        })
}

/// DP, `pki` mode: the CP's certificate verified against the CA of `files` for `name`.
fn ca_verifier(
    files: &ClusterTlsFiles,
    provider: &Arc<CryptoProvider>,
    name: ServerName<'static>,
) -> Result<Arc<dyn ServerCertVerifier>, ClusterTlsError> {
    let (ca, roots) = load_roots(files)?;
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| ClusterTlsError::Ca {
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(Arc::new(FixedNameVerifier { inner, name }))
}

/// The identity of a peer from its certificate chain (end-entity first, as rustls'
/// `peer_certificates()` and tonic's `peer_certs()` return it); `None` without a parsable
/// certificate.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<PeerIdentity> {
    let facts = x509::cert_facts(certs.first()?).ok()?;
    Some(PeerIdentity {
        common_name: facts.common_name,
        not_after: facts.not_after,
        fingerprint: facts.fingerprint_sha256,
    })
}

/// A fresh aws-lc-rs provider, independent of the process default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// Reads a file as text, telling a missing file from an unreadable one.
fn read_text(path: &Path) -> Result<String, ClusterTlsError> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ClusterTlsError::Missing {
            path: path.to_owned(),
        },
        _ => ClusterTlsError::Read {
            path: path.to_owned(),
            source,
        },
    })
}

/// Loads this node's certificate chain and key, and checks they belong together.
fn load_identity(
    files: &ClusterTlsFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, ClusterTlsError> {
    let chain = x509::parse_certificates(&read_text(&files.cert)?).map_err(|reason| {
        ClusterTlsError::Certificate {
            path: files.cert.clone(),
            reason,
        }
    })?;
    // `parse_private_key` only returns fixed texts, never the input.
    let key = x509::parse_private_key(&read_text(&files.key)?).map_err(|reason| {
        ClusterTlsError::Key {
            path: files.key.clone(),
            reason,
        }
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
            ClusterTlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            }
        }
        rustls::Error::InvalidCertificate(reason) => ClusterTlsError::Certificate {
            path: files.cert.clone(),
            reason: format!("unusable certificate ({reason:?})"),
        },
        // rustls' key errors carry no key material, but keep the message fixed anyway.
        _ => ClusterTlsError::Key {
            path: files.key.clone(),
            reason: "unable to load key".to_owned(),
        },
    })
}

/// Loads the cluster CA certificate(s) into a root store (`pki` mode).
fn load_roots(files: &ClusterTlsFiles) -> Result<(&Path, Arc<RootCertStore>), ClusterTlsError> {
    let path = files.ca.as_deref().ok_or(ClusterTlsError::CaRequired)?;
    let certs =
        x509::parse_certificates(&read_text(path)?).map_err(|reason| ClusterTlsError::Ca {
            path: path.to_owned(),
            reason,
        })?;
    let mut roots = RootCertStore::empty();
    for (n, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| ClusterTlsError::Ca {
            path: path.to_owned(),
            reason: format!("certificate {} is not a usable trust anchor: {e}", n + 1),
        })?;
    }
    Ok((path, Arc::new(roots)))
}

fn build_error(e: rustls::Error) -> ClusterTlsError {
    ClusterTlsError::Build {
        reason: e.to_string(),
    }
}

/// The error a verifier returns for a refused certificate.
fn refuse(error: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

// === impl PinMismatch, CommonNameNotAllowed ===

impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for CommonNameNotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// === impl ClusterMtls ===

impl ClusterMtls {
    /// The setting's value: `shared` or `pki`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Pki => "pki",
        }
    }
}

impl FromStr for ClusterMtls {
    type Err = ClusterTlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "shared" => Ok(Self::Shared),
            "pki" => Ok(Self::Pki),
            other => Err(ClusterTlsError::Mode {
                value: other.to_owned(),
            }),
        }
    }
}

impl fmt::Display for ClusterMtls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl ClusterTlsFiles ===

impl ClusterTlsFiles {
    /// The files a configuration is built from: certificate, key and CA if set. A
    /// [`ReloadingConfig`](super::ReloadingConfig) watches these.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.ca.clone());
        paths
    }
}

// === impl Pin ===

impl Pin {
    /// Pins the leaf of this node's own chain.
    fn of(identity: &CertifiedKey, cert_path: &Path) -> Result<Self, ClusterTlsError> {
        let leaf = identity
            .cert
            .first()
            .ok_or_else(|| ClusterTlsError::Certificate {
                path: cert_path.to_owned(),
                reason: "no certificate found".to_owned(),
            })?;
        let facts = x509::cert_facts(leaf).map_err(|reason| ClusterTlsError::Certificate {
            path: cert_path.to_owned(),
            reason,
        })?;
        Ok(Self {
            digest: Sha256::digest(leaf.as_ref()).into(),
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }

    /// Accepts `cert` if it is the pinned certificate and valid at `now`.
    fn check(&self, cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(cert.as_ref()).into();
        if digest != self.digest {
            return Err(refuse(PinMismatch(hex::encode(digest))));
        }
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if now > self.not_after {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
        }
        if now < self.not_before {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet,
            ));
        }
        Ok(())
    }
}

// === impl PinnedClientVerifier ===

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.pin.check(end_entity, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// === impl PinnedServerVerifier ===

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = &self.pin {
            pin.check(end_entity, now)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// === impl AllowedNamesVerifier ===

impl ClientCertVerifier for AllowedNamesVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let common_name = x509::cert_facts(end_entity)
            .ok()
            .and_then(|facts| facts.common_name);
        match common_name {
            Some(cn) if self.allowed.contains(&cn) => Ok(verified),
            Some(cn) => Err(refuse(CommonNameNotAllowed(format!("'{cn}'")))),
            None => Err(refuse(CommonNameNotAllowed("(none)".to_owned()))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

// === impl FixedNameVerifier ===

impl ServerCertVerifier for FixedNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests;
