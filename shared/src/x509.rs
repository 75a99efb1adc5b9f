//! PEM and X.509 helpers: parse certificates and private keys, read the facts the Admin API
//! exposes about a certificate, check that a certificate matches its key, and validate CA
//! certificates.
//!
//! Error messages never contain private key material: key errors are fixed strings.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::sign::SigningKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid_registry, oid2abbrev};
use x509_parser::oid_registry::{
    OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name};

/// Message when a PEM input holds no `CERTIFICATE` block.
const NO_CERTIFICATE: &str = "no certificate found";
/// Message when a PEM input holds no private key block.
const NO_PRIVATE_KEY: &str = "no private key found";
/// Message for any key that cannot be decoded or loaded; deliberately carries no detail.
const UNPARSABLE_KEY: &str = "unable to parse key";
/// Kong's message when a CA certificate input holds more than one certificate.
const ONLY_ONE_CERT: &str = "please submit only one certificate at a time";
/// Kong's message when a CA certificate lacks `CA:TRUE`.
const NOT_A_CA: &str =
    "certificate does not appear to be a CA because it is missing the \"CA\" basic constraint";
/// Kong's message when a CA certificate has expired.
const CA_EXPIRED: &str = "certificate expired, \"Not After\" time is in the past";
/// The PEM line that starts a certificate block.
const CERT_BEGIN: &str = "-----BEGIN CERTIFICATE-----";

/// Algorithm family of a certificate's public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// RSA (`rsaEncryption` or RSASSA-PSS).
    Rsa,
    /// ECDSA (`id-ecPublicKey`, any curve).
    Ecdsa,
    /// Ed25519.
    Ed25519,
    /// Any other algorithm.
    Other,
}

/// Read-only facts about a certificate, exposed by the Admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertFacts {
    /// Subject distinguished name, RFC 4514-style (e.g. `O=Example, CN=example.com`; see
    /// [`dn_text`] for the exact form).
    pub subject: String,
    /// Issuer distinguished name, in the same form.
    pub issuer: String,
    /// DNS names, IP addresses (as text), e-mail addresses and URIs from subjectAltName,
    /// in certificate order.
    pub sans: Vec<String>,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// Lowercase hex SHA-256 of the certificate DER.
    pub fingerprint_sha256: String,
    /// Algorithm family of the subject public key.
    pub key_type: KeyType,
    /// Whether basicConstraints says `CA:TRUE`.
    pub is_ca: bool,
    /// First common name of the subject, if any.
    pub common_name: Option<String>,
}

impl CertFacts {
    /// Whether the certificate is self-issued (subject = issuer): a root, which can anchor a
    /// chain on its own. `mtls-auth` trusts only such CA certificates as anchors unless
    /// `allow_partial_chain` is set, on the control plane (write-time check) and the data
    /// plane (verification) alike.
    pub fn is_self_issued(&self) -> bool {
        self.subject == self.issuer
    }
}

/// Why a certificate/key pair was rejected, and which field is to blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyPairError {
    /// The certificate (chain) is missing or malformed.
    #[error("invalid certificate: {0}")]
    Cert(String),
    /// The private key is missing or malformed; the reason never contains key material.
    #[error("invalid key: {0}")]
    Key(String),
    /// Both parse, but the key is not the certificate's key.
    #[error("certificate does not match key")]
    Mismatch,
}

/// Facts about a validated CA certificate (the `ca_certificates` entity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaFacts {
    /// Facts of the certificate.
    pub facts: CertFacts,
    /// Lowercase hex SHA-256 of the certificate DER.
    pub digest: String,
}

/// Parses every `CERTIFICATE` block of `pem`, in order, and checks each one is X.509.
///
/// Other PEM blocks (keys, ...) and text outside blocks are ignored. Fails with
/// `"no certificate found"` when there is no certificate block, and with the reason when a
/// block is malformed PEM/base64 or not a parsable X.509 certificate, extensions
/// [`cert_facts`] reads included: every certificate returned has facts.
pub fn parse_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = item.map_err(|e| pem_error_reason(&e))?;
        // The facts too: a certificate whose subjectAltName or basicConstraints cannot be read
        // would pass here and fail wherever its facts are needed (found by fuzzing).
        parse_x509(&der)
            .and_then(|cert| facts_of(&cert, &der))
            .map_err(|reason| {
                format!("unable to parse certificate {}: {reason}", certs.len() + 1)
            })?;
        certs.push(der);
    }
    if certs.is_empty() {
        return Err(NO_CERTIFICATE.to_owned());
    }
    Ok(certs)
}

/// Parses the first private key of `pem`: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`)
/// or SEC1 (`EC PRIVATE KEY`), and checks it can be loaded for signing.
///
/// Fails with `"no private key found"` or `"unable to parse key"`; the input is never echoed.
pub fn parse_private_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => NO_PRIVATE_KEY.to_owned(),
        _ => UNPARSABLE_KEY.to_owned(),
    })?;
    load_signing_key(&key)?;
    Ok(key)
}

/// Reads the [`CertFacts`] of a DER certificate.
pub fn cert_facts(der: &CertificateDer<'_>) -> Result<CertFacts, String> {
    facts_of(&parse_x509(der)?, der)
}

/// Lowercase hex SHA-256 of `der`.
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The pin of a certificate's public key, as `--cluster-ca-pin` takes it: `sha256:` and the
/// lowercase hex SHA-256 of its DER `SubjectPublicKeyInfo` (the digest kubeadm's discovery
/// hash uses; `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`).
pub fn public_key_pin(der: &CertificateDer<'_>) -> Result<String, String> {
    let cert = parse_x509(der)?;
    Ok(format!(
        "sha256:{}",
        sha256_hex(cert.tbs_certificate.subject_pki.raw)
    ))
}

/// Checks a certificate (chain) + key pair as the Admin API needs it.
///
/// Returns the facts of the leaf (first certificate). The key must be the leaf's key.
pub fn check_key_pair(cert_pem: &str, key_pem: &str) -> Result<CertFacts, KeyPairError> {
    let certs = parse_certificates(cert_pem).map_err(KeyPairError::Cert)?;
    // `parse_certificates` never returns an empty list.
    let leaf = certs
        .first()
        .ok_or_else(|| KeyPairError::Cert(NO_CERTIFICATE.to_owned()))?;
    let cert = parse_x509(leaf).map_err(KeyPairError::Cert)?;
    let facts = facts_of(&cert, leaf).map_err(KeyPairError::Cert)?;

    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => KeyPairError::Key(NO_PRIVATE_KEY.to_owned()),
        _ => KeyPairError::Key(UNPARSABLE_KEY.to_owned()),
    })?;
    let signing_key = load_signing_key(&key).map_err(KeyPairError::Key)?;
    let key_spki = signing_key
        .public_key()
        .ok_or_else(|| KeyPairError::Key("unsupported key type".to_owned()))?;

    if !same_public_key(cert.public_key(), key_spki.as_ref()) {
        return Err(KeyPairError::Mismatch);
    }
    Ok(facts)
}

/// Validates a CA certificate for the `ca_certificates` entity: exactly one certificate,
/// `CA:TRUE`, not expired at `now` (unix seconds). Messages are Kong's.
pub fn check_ca_certificate(pem: &str, now: i64) -> Result<CaFacts, String> {
    // Like Kong, count the blocks before parsing any of them.
    if pem.matches(CERT_BEGIN).count() > 1 {
        return Err(ONLY_ONE_CERT.to_owned());
    }
    let certs = parse_certificates(pem).map_err(|e| format!("invalid certificate: {e}"))?;
    let [der] = certs.as_slice() else {
        return Err(ONLY_ONE_CERT.to_owned());
    };
    let facts = cert_facts(der).map_err(|e| format!("invalid certificate: {e}"))?;
    if !facts.is_ca {
        return Err(NOT_A_CA.to_owned());
    }
    if facts.not_after < now {
        return Err(CA_EXPIRED.to_owned());
    }
    Ok(CaFacts {
        digest: facts.fingerprint_sha256.clone(),
        facts,
    })
}

/// Parses a DER certificate with x509-parser, rejecting trailing bytes.
fn parse_x509<'a>(der: &'a [u8]) -> Result<X509Certificate<'a>, String> {
    match X509Certificate::from_der(der) {
        Ok((rest, _)) if !rest.is_empty() => Err("trailing data after certificate".to_owned()),
        Ok((_, cert)) => Ok(cert),
        Err(x509_parser::nom::Err::Incomplete(_)) => Err("truncated certificate".to_owned()),
        Err(x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e)) => {
            Err(x509_error_reason(&e))
        }
    }
}

/// The [`CertFacts`] of a parsed certificate whose DER is `der`.
fn facts_of(cert: &X509Certificate<'_>, der: &[u8]) -> Result<CertFacts, String> {
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(san_text)
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("bad subjectAltName extension: {e}")),
    };
    let is_ca = match cert.basic_constraints() {
        Ok(Some(ext)) => ext.value.ca,
        Ok(None) => false,
        Err(e) => return Err(format!("bad basicConstraints extension: {e}")),
    };
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let validity = cert.validity();
    Ok(CertFacts {
        subject: dn_text(cert.subject()),
        issuer: dn_text(cert.issuer()),
        sans,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        fingerprint_sha256: sha256_hex(der),
        key_type: key_type(cert.public_key()),
        is_ca,
        common_name,
    })
}

/// A distinguished name as text, RFC 4514-style, in certificate order: RDNs joined by `, `,
/// the attributes of a multi-valued RDN by ` + `, each `TYPE=value` with the usual short type
/// names (`CN`, `O`, ...) or the dotted OID.
///
/// Values are escaped as RFC 4514 §2.4 says (`,` `+` `"` `\` `<` `>` `;` anywhere, `#` or a
/// space first, a space last) and control characters as `\XX` per UTF-8 byte, so that two
/// different names never give the same text: these strings are compared to tell issuers apart
/// (mtls-auth CA-bound mappings, revocation) and become ACL groups and request headers. A
/// value that is no string, or not valid text, is `#` and the hex of its content octets.
/// (x509-parser's own rendering escapes nothing, so `CN=a, O=b` and `CN=a\, O=b` looked alike,
/// and every unparsable name rendered as the same placeholder: found by the property tests.)
pub fn dn_text(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for (i, rdn) in name.iter_rdn().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push_str(" + ");
            }
            match oid2abbrev(attr.attr_type(), oid_registry()) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            let value = attr.attr_value();
            match attribute_text(value.tag(), value.data) {
                Some(text) => escape_dn_value(&text, &mut out),
                None => {
                    out.push('#');
                    out.push_str(&hex::encode_upper(value.data));
                }
            }
        }
    }
    out
}

/// The text of a directory string attribute value, `None` for other types or invalid text.
fn attribute_text(tag: Tag, data: &[u8]) -> Option<String> {
    match tag {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString
        | Tag::T61String => std::str::from_utf8(data).ok().map(str::to_owned),
        Tag::BmpString if data.len().is_multiple_of(2) => char::decode_utf16(
            data.chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]])),
        )
        .collect::<Result<String, _>>()
        .ok(),
        _ => None,
    }
}

/// Appends `value` to `out` escaped as an RFC 4514 attribute value (see [`dn_text`]).
fn escape_dn_value(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        if c.is_control() {
            for byte in c.encode_utf8(&mut [0; 4]).bytes() {
                out.push_str(&format!("\\{byte:02X}"));
            }
            continue;
        }
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Loads a private key with the aws-lc-rs provider (not the process default).
fn load_signing_key(key: &PrivateKeyDer<'_>) -> Result<Arc<dyn SigningKey>, String> {
    aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key.clone_key())
        // The rustls error is dropped on purpose: only a fixed message leaves this module.
        .map_err(|_| UNPARSABLE_KEY.to_owned())
}

/// Whether the certificate's SPKI and the key's DER SPKI hold the same public key.
///
/// Compares the algorithm OID and the key bits rather than the raw bytes, so that
/// equivalent encodings of the algorithm parameters still match.
fn same_public_key(cert_spki: &SubjectPublicKeyInfo<'_>, key_spki_der: &[u8]) -> bool {
    match SubjectPublicKeyInfo::from_der(key_spki_der) {
        Ok((_, key_spki)) => {
            cert_spki.raw == key_spki.raw
                || (cert_spki.algorithm.algorithm == key_spki.algorithm.algorithm
                    && cert_spki.subject_public_key.data == key_spki.subject_public_key.data)
        }
        Err(_) => false,
    }
}

/// The algorithm family of a subject public key.
fn key_type(spki: &SubjectPublicKeyInfo<'_>) -> KeyType {
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_PKCS1_RSAENCRYPTION || *oid == OID_PKCS1_RSASSAPSS {
        KeyType::Rsa
    } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        KeyType::Ecdsa
    } else if *oid == OID_SIG_ED25519 {
        KeyType::Ed25519
    } else {
        KeyType::Other
    }
}

/// Text of a subjectAltName entry, for the kinds [`CertFacts::sans`] lists.
fn san_text(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
            Some((*s).to_owned())
        }
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(*bytes)
                .ok()
                .map(|b| Ipv4Addr::from(b).to_string()),
            16 => <[u8; 16]>::try_from(*bytes)
                .ok()
                .map(|b| Ipv6Addr::from(b).to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// A readable reason for a PEM decoding error of a certificate input.
fn pem_error_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "PEM block is missing its END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "malformed PEM BEGIN line".to_owned(),
        pem::Error::Base64Decode(reason) => format!("invalid base64 in PEM block: {reason}"),
        pem::Error::NoItemsFound => NO_CERTIFICATE.to_owned(),
        other => other.to_string(),
    }
}

/// A readable reason for an x509-parser error.
fn x509_error_reason(e: &X509Error) -> String {
    format!("not a valid X.509 certificate ({e})")
}

// === impl KeyType ===

impl KeyType {
    /// The lowercase name used by the Admin API: `rsa`, `ecdsa`, `ed25519` or `other`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Rsa => "rsa",
            Self::Ecdsa => "ecdsa",
            Self::Ed25519 => "ed25519",
            Self::Other => "other",
        }
    }
}

// === impl KeyPairError ===

impl KeyPairError {
    /// The request field to blame: `cert` for certificate errors, `key` otherwise.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Cert(_) => "cert",
            Self::Key(_) | Self::Mismatch => "key",
        }
    }

    /// The full message, e.g. `invalid certificate: no certificate found`.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        RsaKeySize, SanType,
    };
    use x509_parser::time::ASN1Time;

    use super::*;

    const NOT_BEFORE: i64 = 1_700_000_000;
    const NOT_AFTER: i64 = 1_900_000_000;

    fn now() -> i64 {
        i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
    }

    fn params(cn: &str, sans: &[&str], not_before: i64, not_after: i64) -> CertificateParams {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.not_before = ASN1Time::from_timestamp(not_before).unwrap().to_datetime();
        params.not_after = ASN1Time::from_timestamp(not_after).unwrap().to_datetime();
        params
    }

    fn ca_params(cn: &str, not_before: i64, not_after: i64) -> CertificateParams {
        let mut params = params(cn, &[], not_before, not_after);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
    }

    #[test]
    fn a_certificate_with_a_malformed_subject_alt_name_does_not_parse() {
        // Found by the `x509` fuzz target: the SAN extension is read lazily, so a certificate
        // whose GeneralNames are malformed parsed, and failed later wherever facts were read.
        let key = KeyPair::generate().unwrap();
        let (_, der) = leaf(&key);
        let mut der = der.to_vec();
        // The IPv4 SAN 192.0.2.10: [0x87, 4, 192, 0, 2, 10]; claim 5 bytes instead of 4.
        let ip = der
            .windows(6)
            .position(|w| w == [0x87, 4, 192, 0, 2, 10])
            .unwrap();
        der[ip + 1] = 5;
        let e = cert_facts(&CertificateDer::from(der.as_slice())).unwrap_err();
        assert!(e.starts_with("bad subjectAltName extension"), "{e}");
        let e = parse_certificates(&to_pem("CERTIFICATE", &der)).unwrap_err();
        assert!(
            e.starts_with("unable to parse certificate 1: bad subjectAltName extension"),
            "{e}"
        );
    }

    /// A self-signed leaf for `example.com` (+ IP, e-mail and URI SANs) and its key PEM.
    fn leaf(key: &KeyPair) -> (String, CertificateDer<'static>) {
        let mut params = params(
            "example.com",
            &[
                "example.com",
                "www.example.com",
                "192.0.2.10",
                "2001:db8::1",
            ],
            NOT_BEFORE,
            NOT_AFTER,
        );
        params
            .subject_alt_names
            .push(SanType::Rfc822Name("ops@example.com".try_into().unwrap()));
        params
            .subject_alt_names
            .push(SanType::URI("https://example.com/id".try_into().unwrap()));
        let cert = params.self_signed(key).unwrap();
        (cert.pem(), cert.der().clone())
    }

    fn assert_leaf_facts(facts: &CertFacts, der: &CertificateDer<'_>, key_type: KeyType) {
        assert_eq!(facts.subject, "CN=example.com");
        assert_eq!(facts.issuer, "CN=example.com");
        assert_eq!(facts.common_name.as_deref(), Some("example.com"));
        assert_eq!(
            facts.sans,
            [
                "example.com",
                "www.example.com",
                "192.0.2.10",
                "2001:db8::1",
                "ops@example.com",
                "https://example.com/id",
            ]
        );
        assert_eq!(facts.not_before, NOT_BEFORE);
        assert_eq!(facts.not_after, NOT_AFTER);
        assert_eq!(facts.fingerprint_sha256, sha256_hex(der));
        assert_eq!(facts.fingerprint_sha256, hex::encode(Sha256::digest(der)));
        assert_eq!(facts.fingerprint_sha256.len(), 64);
        assert_eq!(facts.key_type, key_type);
        assert!(!facts.is_ca);
    }

    /// Minimal standard base64 with padding, to build PEM by hand.
    fn base64(data: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn to_pem(label: &str, der: &[u8]) -> String {
        let b64 = base64(der);
        let mut pem = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str(&format!("-----END {label}-----\n"));
        pem
    }

    /// The `privateKey` OCTET STRING of a PKCS#8 document: PKCS#1 for RSA, SEC1 for EC.
    fn pkcs8_inner_key(pkcs8: &[u8]) -> Vec<u8> {
        let (_, obj) = x509_parser::der_parser::parse_der(pkcs8).unwrap();
        let seq = obj.as_sequence().unwrap();
        seq[2].as_slice().unwrap().to_vec()
    }

    #[test]
    fn ecdsa_leaf_facts() {
        let key = KeyPair::generate().unwrap();
        let (pem, der) = leaf(&key);
        let certs = parse_certificates(&pem).unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0], der);
        let facts = cert_facts(&certs[0]).unwrap();
        assert_leaf_facts(&facts, &der, KeyType::Ecdsa);
        assert_eq!(facts.key_type.as_str(), "ecdsa");
    }

    #[test]
    fn rsa_leaf_facts_and_pair() {
        let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap();
        let (pem, der) = leaf(&key);
        let facts = check_key_pair(&pem, &key.serialize_pem()).unwrap();
        assert_leaf_facts(&facts, &der, KeyType::Rsa);
        assert_eq!(facts.key_type.as_str(), "rsa");

        // The same key as PKCS#1 ("RSA PRIVATE KEY").
        let pkcs1 = to_pem("RSA PRIVATE KEY", &pkcs8_inner_key(&key.serialize_der()));
        assert!(matches!(
            parse_private_key(&pkcs1).unwrap(),
            PrivateKeyDer::Pkcs1(_)
        ));
        assert_eq!(check_key_pair(&pem, &pkcs1).unwrap(), facts);
    }

    #[test]
    fn ed25519_key_type() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let (pem, _) = leaf(&key);
        let facts = check_key_pair(&pem, &key.serialize_pem()).unwrap();
        assert_eq!(facts.key_type, KeyType::Ed25519);
        assert_eq!(facts.key_type.as_str(), "ed25519");
    }

    #[test]
    fn matching_pair_ok() {
        let key = KeyPair::generate().unwrap();
        let (pem, der) = leaf(&key);
        let key_pem = key.serialize_pem();
        assert!(matches!(
            parse_private_key(&key_pem).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        let facts = check_key_pair(&pem, &key_pem).unwrap();
        assert_leaf_facts(&facts, &der, KeyType::Ecdsa);
    }

    #[test]
    fn sec1_key_parses() {
        let key = KeyPair::generate().unwrap();
        let (pem, _) = leaf(&key);
        let sec1 = to_pem("EC PRIVATE KEY", &pkcs8_inner_key(&key.serialize_der()));
        assert!(matches!(
            parse_private_key(&sec1).unwrap(),
            PrivateKeyDer::Sec1(_)
        ));
        check_key_pair(&pem, &sec1).unwrap();
    }

    #[test]
    fn key_mismatch_detected() {
        let key = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let (pem, _) = leaf(&key);
        let err = check_key_pair(&pem, &other.serialize_pem()).unwrap_err();
        assert_eq!(err, KeyPairError::Mismatch);
        assert_eq!(err.field(), "key");
        assert_eq!(err.message(), "certificate does not match key");

        // A key of another algorithm does not match either.
        let rsa = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap();
        assert_eq!(
            check_key_pair(&pem, &rsa.serialize_pem()),
            Err(KeyPairError::Mismatch)
        );
    }

    #[test]
    fn chain_parses_to_two_and_leaf_facts_come_first() {
        let ca_key = KeyPair::generate().unwrap();
        let ca_params = ca_params("Test CA", NOT_BEFORE, NOT_AFTER);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().unwrap();
        let leaf = params("example.com", &["example.com"], NOT_BEFORE, NOT_AFTER)
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let chain = format!("{}{}", leaf.pem(), ca.pem());

        let certs = parse_certificates(&chain).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0], *leaf.der());
        assert_eq!(certs[1], *ca.der());

        let facts = check_key_pair(&chain, &leaf_key.serialize_pem()).unwrap();
        assert_eq!(facts.subject, "CN=example.com");
        assert_eq!(facts.issuer, "CN=Test CA");
        assert!(!facts.is_ca);
        assert!(cert_facts(&certs[1]).unwrap().is_ca);
    }

    #[test]
    fn garbage_certificates_error() {
        assert_eq!(parse_certificates("").unwrap_err(), "no certificate found");
        assert_eq!(
            parse_certificates("not a pem at all").unwrap_err(),
            "no certificate found"
        );
        // Bad base64.
        let bad_b64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(parse_certificates(bad_b64).unwrap_err().contains("base64"));
        // Missing END line.
        let no_end = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(parse_certificates(no_end).is_err());
        // Valid base64 that is not X.509.
        let not_x509 = to_pem("CERTIFICATE", b"hello, world");
        let err = parse_certificates(&not_x509).unwrap_err();
        assert!(err.starts_with("unable to parse certificate 1: "), "{err}");

        let err = check_key_pair(&not_x509, "").unwrap_err();
        assert_eq!(err.field(), "cert");
        assert!(err.message().starts_with("invalid certificate: "), "{err}");
        let err = check_key_pair("", "").unwrap_err();
        assert_eq!(err.message(), "invalid certificate: no certificate found");
    }

    #[test]
    fn bad_key_errors_never_echo_the_key() {
        let key = KeyPair::generate().unwrap();
        let (pem, _) = leaf(&key);
        let secret = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSECRETSECRETSECRET";
        let inputs = [
            // Key-shaped, base64 decodes, but not a key.
            format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
            // Invalid base64.
            format!("-----BEGIN PRIVATE KEY-----\n{secret}!!\n-----END PRIVATE KEY-----\n"),
            // Missing END line.
            format!("-----BEGIN EC PRIVATE KEY-----\n{secret}\n"),
        ];
        for input in &inputs {
            let err = parse_private_key(input).unwrap_err();
            assert_eq!(err, "unable to parse key");
            let err = check_key_pair(&pem, input).unwrap_err();
            assert_eq!(err, KeyPairError::Key("unable to parse key".to_owned()));
            assert_eq!(err.field(), "key");
            let message = err.message();
            assert_eq!(message, "invalid key: unable to parse key");
            assert!(!message.contains("SECRET"));
            assert!(!format!("{err:?}").contains("SECRET"));
        }
        assert_eq!(
            parse_private_key(secret).unwrap_err(),
            "no private key found"
        );
        assert_eq!(
            check_key_pair(&pem, "").unwrap_err().message(),
            "invalid key: no private key found"
        );
    }

    #[test]
    fn ca_certificate_passes_with_digest() {
        let key = KeyPair::generate().unwrap();
        let ca = ca_params("Test CA", NOT_BEFORE, NOT_AFTER)
            .self_signed(&key)
            .unwrap();
        let facts = check_ca_certificate(&ca.pem(), now()).unwrap();
        assert_eq!(facts.digest, sha256_hex(ca.der()));
        assert_eq!(facts.facts.fingerprint_sha256, facts.digest);
        assert_eq!(facts.facts.subject, "CN=Test CA");
        assert!(facts.facts.is_ca);
    }

    #[test]
    fn leaf_is_not_a_ca() {
        let key = KeyPair::generate().unwrap();
        let (pem, _) = leaf(&key);
        assert_eq!(
            check_ca_certificate(&pem, now()).unwrap_err(),
            "certificate does not appear to be a CA because it is missing the \"CA\" basic constraint"
        );
    }

    #[test]
    fn expired_ca_fails() {
        let key = KeyPair::generate().unwrap();
        let now = now();
        let ca = ca_params("Old CA", now - 10 * 86_400, now - 86_400)
            .self_signed(&key)
            .unwrap();
        assert_eq!(
            check_ca_certificate(&ca.pem(), now).unwrap_err(),
            "certificate expired, \"Not After\" time is in the past"
        );
    }

    #[test]
    fn two_cas_fail() {
        let key = KeyPair::generate().unwrap();
        let a = ca_params("CA A", NOT_BEFORE, NOT_AFTER)
            .self_signed(&key)
            .unwrap();
        let b = ca_params("CA B", NOT_BEFORE, NOT_AFTER)
            .self_signed(&key)
            .unwrap();
        let pem = format!("{}{}", a.pem(), b.pem());
        assert_eq!(
            check_ca_certificate(&pem, now()).unwrap_err(),
            "please submit only one certificate at a time"
        );
    }

    #[test]
    fn ca_check_malformed() {
        assert_eq!(
            check_ca_certificate("", 0).unwrap_err(),
            "invalid certificate: no certificate found"
        );
        let err = check_ca_certificate(&to_pem("CERTIFICATE", b"nope"), 0).unwrap_err();
        assert!(err.starts_with("invalid certificate: "), "{err}");
    }
}
