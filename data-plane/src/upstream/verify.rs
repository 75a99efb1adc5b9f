//! The server certificate verifiers of upstream connections and the client certificate
//! resolver.
//!
//! - [`DepthLimitedVerifier`] (`tls_verify` on): rustls' [`WebPkiServerVerifier`] checks the
//!   chain, validity dates, extended key usage and the server name (DNS names, and IP SANs
//!   when the name is an IP address); then, with a `tls_verify_depth`, a path to a trust
//!   anchor with at most that many intermediate certificates must exist. Handshake signatures
//!   are checked by the inner verifier.
//! - [`AcceptAnyCertificate`] (`tls_verify` off): any certificate is accepted, but the
//!   handshake signatures are still checked against it (the server must hold the key of the
//!   certificate it sent).
//!
//! # Depth
//! `tls_verify_depth = N` is OpenSSL's verify depth, as nginx's `proxy_ssl_verify_depth` and
//! so Kong apply it: the verified path `leaf → intermediate₁ → … → trust anchor` may hold at
//! most `N` intermediate certificates. The leaf and the anchor (the CA certificate trusted
//! by the service or the global bundle) are not counted. `0`: the leaf must be issued
//! directly by a trusted CA. The count is that of the path actually built, not of the
//! certificates the server sent: a server that also sends its root, or extra certificates,
//! is not penalised, and when several paths exist any one within the limit is enough.

use std::fmt;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::RootCertStore;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;

use super::error::DepthExceeded;

/// Full verification, then the depth limit.
pub(super) struct DepthLimitedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    roots: Arc<RootCertStore>,
    depth: Option<u8>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Accepts any certificate; still verifies the handshake signatures.
pub(super) struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

/// The client certificate of an upstream connection: the main pair, or the alternative pair
/// (`cert_alt`/`key_alt`) when the upstream accepts no signature scheme of the main key.
pub(super) struct ClientIdentity {
    main: Arc<CertifiedKey>,
    alt: Option<Arc<CertifiedKey>>,
}

// === impl DepthLimitedVerifier ===

impl DepthLimitedVerifier {
    pub(super) fn new(
        inner: Arc<WebPkiServerVerifier>,
        roots: Arc<RootCertStore>,
        depth: Option<u8>,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            inner,
            roots,
            depth,
            algorithms,
        }
    }

    /// Whether a path to a trust anchor with at most `depth` intermediates exists. Called
    /// after the full verification succeeded, so any failure here is the depth.
    fn check_depth(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        depth: u8,
    ) -> Result<(), rustls::Error> {
        let exceeded = || {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(DepthExceeded { depth }),
            )))
        };
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| exceeded())?;
        let max = usize::from(depth);
        // webpki calls this for each complete path; refusing one makes it try the others.
        let within = |path: &webpki::VerifiedPath<'_>| {
            if path.intermediate_certificates().count() <= max {
                Ok(())
            } else {
                Err(webpki::Error::MaximumPathDepthExceeded)
            }
        };
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            Some(&within),
        )
        .map(|_| ())
        .map_err(|_| exceeded())
    }
}

impl ServerCertVerifier for DepthLimitedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        // A path cannot use more intermediates than were sent: the common case is free.
        if let Some(depth) = self.depth
            && intermediates.len() > usize::from(depth)
        {
            self.check_depth(end_entity, intermediates, now, depth)?;
        }
        Ok(verified)
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

impl fmt::Debug for DepthLimitedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DepthLimitedVerifier")
            .field("roots", &self.roots.len())
            .field("depth", &self.depth)
            .finish()
    }
}

// === impl AcceptAnyCertificate ===

impl AcceptAnyCertificate {
    pub(super) fn new(algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self { algorithms }
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
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

impl fmt::Debug for AcceptAnyCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AcceptAnyCertificate")
    }
}

// === impl ClientIdentity ===

impl ClientIdentity {
    pub(super) fn new(main: Arc<CertifiedKey>, alt: Option<Arc<CertifiedKey>>) -> Self {
        Self { main, alt }
    }
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        if self.main.key.choose_scheme(sigschemes).is_none()
            && let Some(alt) = &self.alt
            && alt.key.choose_scheme(sigschemes).is_some()
        {
            return Some(alt.clone());
        }
        Some(self.main.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Shows whether an alternative pair exists; never key material.
impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("alt", &self.alt.is_some())
            .finish()
    }
}
