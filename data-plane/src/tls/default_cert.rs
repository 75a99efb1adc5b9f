//! The proxy's default certificate: `--ssl-cert`/`--ssl-cert-key`, or a self-signed
//! certificate for `localhost` generated at start (as Kong does).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use gatehouse_shared::x509::{self, KeyPairError, KeyType};

use super::{PairFlags, TlsSetupError};
use crate::config::{CertKeyFiles, SslSettings};

/// The name of the generated certificate (its common name and only SAN).
const SELF_SIGNED_NAME: &str = "localhost";
/// Validity of the generated certificate, in days from one day before the start.
const SELF_SIGNED_DAYS: i64 = 3650;

/// The certificate served when no SNI selects one (no SNI, or a name no SNI entity
/// matches and no `*` SNI). One pair, or two of different key types (RSA and ECDSA): the
/// client gets the one it can verify, ECDSA when it can verify both.
pub struct DefaultCertificate {
    key: Arc<CertifiedKey>,
    alt: Option<Arc<CertifiedKey>>,
    /// The certificate files; empty when self-signed.
    files: Vec<PathBuf>,
}

// === impl DefaultCertificate ===

impl DefaultCertificate {
    /// The files of the settings, or a generated self-signed certificate when there are
    /// none.
    pub fn from_settings(settings: &SslSettings) -> Result<Self, TlsSetupError> {
        if settings.certs.is_empty() {
            Self::self_signed()
        } else {
            Self::load(&settings.certs)
        }
    }

    /// Reads one or two certificate/key pairs (two must have different key types). The
    /// first is the main pair. Errors name the file and never contain key material.
    pub fn load(files: &[CertKeyFiles]) -> Result<Self, TlsSetupError> {
        let provider = aws_lc_rs::default_provider();
        let (key, alt) = match files {
            [main] => (load_pair(main, PairFlags::SSL, &provider)?.0, None),
            [main, alt] => {
                let (key, key_type) = load_pair(main, PairFlags::SSL, &provider)?;
                let (alt, alt_type) = load_pair(alt, PairFlags::SSL, &provider)?;
                if key_type == alt_type {
                    return Err(TlsSetupError::SameKeyType(key_type_name(key_type)));
                }
                (key, Some(alt))
            }
            _ => return Err(TlsSetupError::CertCount(files.len())),
        };
        Ok(Self {
            key: Arc::new(key),
            alt: alt.map(Arc::new),
            files: files.iter().map(|f| f.cert.clone()).collect(),
        })
    }

    /// A new self-signed ECDSA P-256 certificate for `localhost` (common name and SAN),
    /// valid from a day ago for ten years. Every TLS 1.2 and 1.3 client verifies ECDSA.
    pub fn self_signed() -> Result<Self, TlsSetupError> {
        let failed = |e: rcgen::Error| TlsSetupError::SelfSigned(e.to_string());
        let key_pair = KeyPair::generate().map_err(failed)?;
        let mut params =
            CertificateParams::new(vec![SELF_SIGNED_NAME.to_owned()]).map_err(failed)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Gatehouse");
        params
            .distinguished_name
            .push(DnType::CommonName, SELF_SIGNED_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(SELF_SIGNED_DAYS);
        let cert = params.self_signed(&key_pair).map_err(failed)?;

        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        let signing_key = aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| TlsSetupError::SelfSigned(e.to_string()))?;
        Ok(Self {
            key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing_key)),
            alt: None,
            files: Vec::new(),
        })
    }

    /// The main chain and key.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }

    /// The chain and key of the other key type, when two were given.
    pub fn alt_certified_key(&self) -> Option<&Arc<CertifiedKey>> {
        self.alt.as_ref()
    }

    /// Whether it was generated at start (no `--ssl-cert`).
    pub fn is_self_signed(&self) -> bool {
        self.files.is_empty()
    }
}

/// Shows where it comes from: no key material.
impl fmt::Debug for DefaultCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultCertificate")
            .field("self_signed", &self.is_self_signed())
            .field("files", &self.files)
            .field("alt", &self.alt.is_some())
            .finish()
    }
}

/// Reads and checks the pair of `files` (the settings `flags`, for messages), e.g. the
/// global upstream client certificate. Errors never contain key material.
pub(crate) fn load_certified_key(
    files: &CertKeyFiles,
    flags: PairFlags,
) -> Result<CertifiedKey, TlsSetupError> {
    load_pair(files, flags, &aws_lc_rs::default_provider()).map(|(key, _)| key)
}

/// Reads and checks one pair; returns it with its key type.
fn load_pair(
    files: &CertKeyFiles,
    flags: PairFlags,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, KeyType), TlsSetupError> {
    let cert_error = |reason: String| TlsSetupError::Cert {
        flag: flags.cert,
        path: files.cert.clone(),
        reason,
    };
    let key_error = |reason: String| TlsSetupError::Key {
        flag: flags.key,
        path: files.key.clone(),
        reason,
    };
    let cert_pem = std::fs::read_to_string(&files.cert)
        .map_err(|e| cert_error(format!("cannot read: {e}")))?;
    let key_pem =
        std::fs::read_to_string(&files.key).map_err(|e| key_error(format!("cannot read: {e}")))?;
    // The same check as the Admin API's (leaf and key match, any key encoding).
    let facts = x509::check_key_pair(&cert_pem, &key_pem).map_err(|e| match e {
        KeyPairError::Cert(reason) => cert_error(reason),
        KeyPairError::Key(reason) => key_error(reason),
        KeyPairError::Mismatch => TlsSetupError::Mismatch {
            flags,
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
    })?;
    let chain = x509::parse_certificates(&cert_pem).map_err(cert_error)?;
    let key_der = x509::parse_private_key(&key_pem).map_err(key_error)?;
    // The provider's error is dropped on purpose: only a fixed text leaves here.
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|_| key_error("unable to parse key".to_owned()))?;
    Ok((CertifiedKey::new(chain, signing_key), facts.key_type))
}

fn key_type_name(key_type: KeyType) -> &'static str {
    match key_type {
        KeyType::Rsa => "RSA",
        KeyType::Ecdsa => "ECDSA",
        KeyType::Ed25519 => "Ed25519",
        _ => "of another key type",
    }
}
