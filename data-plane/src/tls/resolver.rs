//! The server certificate of a handshake: by SNI from one runtime, then by key type.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{SignatureAlgorithm, SignatureScheme};

use super::DefaultCertificate;
use crate::runtime::Runtime;

/// Chooses server certificates from one runtime (the one its `ServerConfig` was built for)
/// and the default certificate. rustls calls it on every handshake.
#[derive(Debug)]
pub(super) struct SniResolver {
    runtime: Arc<Runtime>,
    default: Arc<DefaultCertificate>,
}

// === impl SniResolver ===

impl SniResolver {
    pub(super) fn new(runtime: Arc<Runtime>, default: Arc<DefaultCertificate>) -> Self {
        Self { runtime, default }
    }

    /// The main and alt pairs for a server name: the runtime's certificate for it in Kong's
    /// order, else (or without SNI) the default certificate.
    fn pairs(&self, server_name: Option<&str>) -> (&Arc<CertifiedKey>, Option<&Arc<CertifiedKey>>) {
        match server_name.and_then(|name| self.runtime.certificate_for_sni(name)) {
            Some(cert) => (cert.certified_key(), cert.alt_certified_key()),
            None => (
                self.default.certified_key(),
                self.default.alt_certified_key(),
            ),
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let (main, alt) = self.pairs(hello.server_name());
        Some(Arc::clone(for_client(main, alt, hello.signature_schemes())))
    }
}

/// Of a certificate's pairs, the one the client can verify, given the signature schemes it
/// offers (rustls has already narrowed them to the cipher suites both sides support, so a
/// TLS 1.2 client offering only RSA suites has no ECDSA scheme left). ECDSA first when the
/// client can verify both, as OpenSSL does with dual certificates (smaller, faster
/// handshakes); the main pair when it can verify neither, so the handshake fails with the
/// proper alert.
pub(super) fn for_client<'a>(
    main: &'a Arc<CertifiedKey>,
    alt: Option<&'a Arc<CertifiedKey>>,
    schemes: &[SignatureScheme],
) -> &'a Arc<CertifiedKey> {
    let Some(alt) = alt else {
        return main;
    };
    let is_ecdsa = |pair: &CertifiedKey| pair.key.algorithm() == SignatureAlgorithm::ECDSA;
    let (first, second) = if is_ecdsa(alt) && !is_ecdsa(main) {
        (alt, main)
    } else {
        (main, alt)
    };
    [first, second]
        .into_iter()
        .find(|pair| pair.key.choose_scheme(schemes).is_some())
        .unwrap_or(main)
}
