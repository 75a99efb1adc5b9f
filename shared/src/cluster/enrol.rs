//! Enrolment of data planes (DPs) with the cluster CA: the DP makes its own key and a
//! certificate signing request (CSR), the control plane (CP) checks the CSR and issues a
//! short-lived client certificate naming the node with a SPIFFE-style URI
//! (`spiffe://<cluster>/dp/<node-id>`). The private key never leaves the DP.
//!
//! - [`new_key_and_csr`]: DP side, a fresh ECDSA P-256 key and a CSR for `CN=<node-id>`;
//! - [`ClusterCa::issue`]: CP side, checks the CSR (its self-signature, an ECDSA P-256 key, no
//!   name but the node's own) and signs a certificate whose names the CP sets itself;
//! - [`renew_at`]: when a DP renews (two thirds into its certificate's lifetime).

use std::path::Path;
use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;
use uuid::Uuid;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

use super::pki::{self, Ca, PkiError};
use crate::x509;

/// Default cluster name: the trust domain of the SPIFFE IDs.
pub const DEFAULT_CLUSTER_NAME: &str = "gatehouse";
/// How far back an enrolled certificate's `notBefore` is set (clock skew between replicas).
pub const BACKDATE_SECS: i64 = 10;
/// Shortest lifetime of an enrolled certificate.
pub const MIN_LIFETIME: Duration = Duration::from_secs(30);
/// Largest CSR accepted, in bytes.
pub const MAX_CSR_SIZE: usize = 8 * 1024;

/// Why a CSR was refused. Messages are fixed texts or the refused name, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// Not a parsable PKCS#10 request, or too large.
    #[error("the certificate signing request is malformed")]
    Malformed,
    /// The request is not signed by the key it carries.
    #[error("the certificate signing request's signature does not verify")]
    BadSignature,
    /// A key type the cluster does not issue for.
    #[error("unsupported key type: only ECDSA P-256 keys are enrolled")]
    KeyType,
    /// A name outside policy.
    #[error("requested name not allowed: {0}")]
    Name(String),
    /// The request asks for a CA or an extension the cluster does not issue.
    #[error("the certificate signing request asks for {0}, which is not allowed")]
    Extension(&'static str),
    /// Signing failed (our side).
    #[error("cannot sign the certificate: {0}")]
    Sign(String),
}

/// The cluster CA as the CP holds it, able to sign DP certificates.
pub struct ClusterCa {
    ca: Ca,
    /// The CA's subject, RFC 4514 text (the issuer of what it signs).
    issuer: String,
    cluster: String,
}

/// A certificate issued by [`ClusterCa::issue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Lowercase hex serial number.
    pub serial: String,
    /// `spiffe://<cluster>/dp/<node-id>`.
    pub spiffe_id: String,
    /// The issuer's subject.
    pub issuer: String,
    /// Validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

/// The SPIFFE ID of data plane `node` in `cluster`.
pub fn spiffe_id(cluster: &str, node: Uuid) -> String {
    format!("spiffe://{cluster}/dp/{node}")
}

/// Checks a cluster name: a SPIFFE trust domain (lowercase letters, digits, `.`, `-`, `_`;
/// 1 to 255 characters).
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')"
        ))
    }
}

/// The SPIFFE ID among a certificate's subject alternative names, if any.
pub fn spiffe_of(facts: &x509::CertFacts) -> Option<&str> {
    facts
        .sans
        .iter()
        .map(String::as_str)
        .find(|san| san.starts_with("spiffe://"))
}

/// The node id named by a data plane's SPIFFE ID (`spiffe://<any>/dp/<uuid>`).
pub fn node_of_spiffe(id: &str) -> Option<Uuid> {
    let rest = id.strip_prefix("spiffe://")?;
    let (_, path) = rest.split_once('/')?;
    Uuid::parse_str(path.strip_prefix("dp/")?).ok()
}

/// Lowercase hex serial number of a certificate.
pub fn serial_hex(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(hex::encode(cert.raw_serial()))
}

/// When a certificate valid from `not_before` to `not_after` (Unix seconds, as issued here:
/// backdated by [`BACKDATE_SECS`]) should be renewed: two thirds into its lifetime.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let issued = not_before.saturating_add(BACKDATE_SECS).min(not_after);
    issued.saturating_add(not_after.saturating_sub(issued).saturating_mul(2) / 3)
}

/// A fresh ECDSA P-256 key (PKCS#8 PEM) and a CSR (DER) for `CN=<node>`, without names.
pub fn new_key_and_csr(node: Uuid) -> Result<(String, Vec<u8>), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node.to_string());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// Checks a `--cluster-ca-pin` value: `sha256:` and 64 hex digits (case-insensitive);
/// returns it lowercased.
pub fn parse_pin(pin: &str) -> Result<String, String> {
    let pin = pin.trim().to_ascii_lowercase();
    match pin.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(pin),
        _ => Err(format!(
            "'{pin}' is not a CA pin: expected sha256: and 64 hex digits \
             (`gatehouse-cp pki pin` prints it)"
        )),
    }
}

/// The CA certificates of `bundle` (PEM) whose public key matches one of `pins`, as PEM: what
/// a data plane that knows only the pins trusts of a bundle fetched without verification.
/// Other certificates are dropped (whoever answered could have added its own); a bundle
/// without a match is refused.
pub fn pinned_cas(bundle: &str, pins: &[String]) -> Result<String, String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut kept = String::new();
    let mut rest = bundle;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let block = &rest[start..start + len + END.len()];
        rest = &rest[start + len + END.len()..];
        let Ok(certs) = x509::parse_certificates(block) else {
            continue;
        };
        let matches = certs.first().is_some_and(|der| {
            x509::cert_facts(der).is_ok_and(|facts| facts.is_ca)
                && x509::public_key_pin(der).is_ok_and(|pin| pins.contains(&pin))
        });
        if matches {
            kept.push_str(block);
            kept.push('\n');
        }
    }
    if kept.is_empty() {
        Err("no CA certificate of the control plane's bundle matches --cluster-ca-pin".to_owned())
    } else {
        Ok(kept)
    }
}

/// Writes a private file (a key) atomically with mode 0600: a temporary file beside it,
/// renamed over it.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    pki::replace_file(path, contents, 0o600)
}

// === impl ClusterCa ===

impl ClusterCa {
    /// Loads the CA certificate and key (`pki init`'s `ca.crt` and `ca.key`) for `cluster`.
    pub fn load(cert: &Path, key: &Path, cluster: &str) -> Result<Self, PkiError> {
        let ca = pki::load_ca_files(cert, key)?;
        let pem = std::fs::read_to_string(cert).map_err(|source| PkiError::Read {
            path: cert.to_owned(),
            source,
        })?;
        let issuer = x509::parse_certificates(&pem)
            .ok()
            .and_then(|certs| certs.first().and_then(|c| x509::cert_facts(c).ok()))
            .map(|facts| facts.subject)
            .unwrap_or_default();
        Ok(Self {
            ca,
            issuer,
            cluster: cluster.to_owned(),
        })
    }

    /// The cluster name (SPIFFE trust domain).
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The CA's subject.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A new key and a control-plane server certificate for `names` (DNS names or IP
    /// addresses; empty: `localhost`, `127.0.0.1`) valid for `lifetime` (at least
    /// [`MIN_LIFETIME`], never beyond the CA): `--cluster-cert auto`. Returns the key and the
    /// certificate in one PEM text, and the certificate's validity (Unix seconds).
    pub fn issue_server(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<(String, i64, i64), String> {
        let lifetime =
            time::Duration::try_from(lifetime.max(MIN_LIFETIME)).map_err(|e| e.to_string())?;
        let backdate = time::Duration::seconds(BACKDATE_SECS);
        let (cert_pem, key_pem) =
            pki::short_cp_pair(&self.ca, names, backdate, lifetime).map_err(|e| e.to_string())?;
        let facts = x509::check_key_pair(&cert_pem, &key_pem).map_err(|e| e.to_string())?;
        Ok((
            format!("{}\n{}", key_pem.trim_end(), cert_pem),
            facts.not_before,
            facts.not_after,
        ))
    }

    /// Checks `csr` and issues data plane `node` a client certificate valid for `lifetime`
    /// (never beyond the CA). The CSR must be signed by its own ECDSA P-256 key, ask for no
    /// CA and no extension but names, and name nothing but the node: a subject that is empty or
    /// `CN=<node>`, and no subject alternative name or only the node's SPIFFE ID. The
    /// certificate's names are set here: `CN=<node>` and the SPIFFE ID.
    pub fn issue(&self, csr: &[u8], node: Uuid, lifetime: Duration) -> Result<Issued, CsrError> {
        if csr.len() > MAX_CSR_SIZE {
            return Err(CsrError::Malformed);
        }
        let spiffe = spiffe_id(&self.cluster, node);
        check_csr(csr, node, &spiffe)?;
        let request =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
                .map_err(|e| match e {
                    rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
                    rcgen::Error::UnsupportedExtension => {
                        CsrError::Extension("an unsupported extension")
                    }
                    _ => CsrError::Malformed,
                })?;
        if request.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(CsrError::KeyType);
        }
        if !matches!(request.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
            return Err(CsrError::Extension("a CA certificate"));
        }
        for san in &request.params.subject_alt_names {
            match san {
                SanType::URI(uri) if uri.as_str() == spiffe => {}
                other => return Err(CsrError::Name(describe_san(other))),
            }
        }

        let now = OffsetDateTime::now_utc();
        let lifetime = lifetime.max(MIN_LIFETIME);
        let lifetime =
            time::Duration::try_from(lifetime).map_err(|e| CsrError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node.to_string());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            spiffe
                .clone()
                .try_into()
                .map_err(|e: rcgen::Error| CsrError::Sign(e.to_string()))?,
        )];
        params.not_before = now - time::Duration::seconds(BACKDATE_SECS);
        params.not_after = (now + lifetime).min(self.ca.not_after);
        params.serial_number =
            Some(pki::random_serial().map_err(|e| CsrError::Sign(e.to_string()))?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&request.public_key, &self.ca.issuer)
            .map_err(|e| CsrError::Sign(e.to_string()))?;
        let der = CertificateDer::from(cert.der().to_vec());
        let facts = x509::cert_facts(&der).map_err(CsrError::Sign)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: serial_hex(&der).unwrap_or_default(),
            spiffe_id: spiffe,
            issuer: facts.issuer,
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("issuer", &self.issuer)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// The checks rcgen does not do: the key's curve and the subject.
fn check_csr(csr: &[u8], node: Uuid, spiffe: &str) -> Result<(), CsrError> {
    let (rest, request) =
        X509CertificationRequest::from_der(csr).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed);
    }
    let info = &request.certification_request_info;
    let spki = &info.subject_pki.algorithm;
    let curve = spki.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if spki.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve.as_ref() != Some(&OID_EC_P256) {
        return Err(CsrError::KeyType);
    }
    let node_text = node.to_string();
    for attribute in info.subject.iter_attributes() {
        let value = attribute.as_str().unwrap_or("(not text)");
        let is_cn = attribute.attr_type() == &x509_parser::oid_registry::OID_X509_COMMON_NAME;
        if !is_cn || value != node_text {
            return Err(CsrError::Name(format!(
                "subject {}; only CN={node_text} or {spiffe}",
                x509::dn_text(&info.subject)
            )));
        }
    }
    Ok(())
}

fn describe_san(san: &SanType) -> String {
    match san {
        SanType::DnsName(name) => format!("DNS:{}", name.as_str()),
        SanType::URI(uri) => format!("URI:{}", uri.as_str()),
        SanType::Rfc822Name(mail) => format!("email:{}", mail.as_str()),
        SanType::IpAddress(ip) => format!("IP:{ip}"),
        _ => "a subject alternative name".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn ca(dir: &Path) -> ClusterCa {
        let _ = std::fs::remove_dir_all(dir);
        pki::init(dir, &[], &[], 1, false).unwrap();
        ClusterCa::load(&dir.join("ca.crt"), &dir.join("ca.key"), "prod.example").unwrap()
    }

    #[test]
    fn only_the_pinned_cas_of_a_bundle_are_kept() {
        let base = std::env::temp_dir().join(format!("gh-enrol-pin-{}", std::process::id()));
        let (one, two) = (base.join("one"), base.join("two"));
        for dir in [&one, &two] {
            let _ = std::fs::remove_dir_all(dir);
            pki::init(dir, &[], &["dp1".to_owned()], 1, false).unwrap();
        }
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap();
        let (ca1, ca2, leaf) = (
            read(one.join("ca.crt")),
            read(two.join("ca.crt")),
            read(two.join("dp1.crt")),
        );
        let pin_of =
            |pem: &str| x509::public_key_pin(&x509::parse_certificates(pem).unwrap()[0]).unwrap();
        let bundle = format!("{ca1}{leaf}{ca2}");

        let kept = pinned_cas(&bundle, &[pin_of(&ca2)]).unwrap();
        let certs = x509::parse_certificates(&kept).unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(pin_of(&kept), pin_of(&ca2));
        // A leaf is never trusted, even when its key is pinned.
        assert!(pinned_cas(&bundle, &[pin_of(&leaf)]).is_err());
        assert!(pinned_cas(&bundle, &[format!("sha256:{}", "0".repeat(64))]).is_err());
        assert_eq!(
            pinned_cas(&bundle, &[pin_of(&ca1), pin_of(&ca2)]).map(|k| x509::parse_certificates(
                &k
            )
            .unwrap()
            .len()),
            Ok(2)
        );

        assert_eq!(
            parse_pin(&pin_of(&ca1).to_uppercase().replace("SHA256", "sha256")),
            Ok(pin_of(&ca1))
        );
        for bad in [
            "",
            "sha256:",
            "sha1:00",
            &format!("sha256:{}", "g".repeat(64)),
            &format!("sha256:{}", "0".repeat(63)),
        ] {
            assert!(parse_pin(bad).is_err(), "{bad}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_csr_of_the_node_is_signed_with_the_names_the_ca_sets() {
        let dir = std::env::temp_dir().join(format!("gh-enrol-ok-{}", std::process::id()));
        let ca = ca(&dir);
        let node = Uuid::new_v4();
        let (key_pem, csr) = new_key_and_csr(node).unwrap();
        let issued = ca.issue(&csr, node, Duration::from_secs(60)).unwrap();
        assert_eq!(issued.spiffe_id, format!("spiffe://prod.example/dp/{node}"));
        assert_eq!(issued.not_after - issued.not_before, 60 + BACKDATE_SECS);
        let facts = x509::check_key_pair(&issued.cert_pem, &key_pem).unwrap();
        assert_eq!(facts.common_name, Some(node.to_string()));
        assert_eq!(spiffe_of(&facts), Some(issued.spiffe_id.as_str()));
        assert_eq!(node_of_spiffe(&issued.spiffe_id), Some(node));
        assert_eq!(facts.issuer, ca.issuer());
        assert_eq!(issued.serial.len(), 32);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn forged_and_out_of_policy_csrs_are_refused() {
        let dir = std::env::temp_dir().join(format!("gh-enrol-bad-{}", std::process::id()));
        let ca = ca(&dir);
        let node = Uuid::new_v4();
        let lifetime = Duration::from_secs(60);

        // Another node's name.
        let (_, csr) = new_key_and_csr(Uuid::new_v4()).unwrap();
        assert!(matches!(
            ca.issue(&csr, node, lifetime),
            Err(CsrError::Name(_))
        ));

        // A DNS name the policy does not allow.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["cp.example".to_owned()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).unwrap().der().to_vec();
        let error = ca.issue(&csr, node, lifetime).unwrap_err();
        assert_eq!(error, CsrError::Name("DNS:cp.example".into()));

        // A signature made by another key: flip a byte of the signature.
        let (_, mut csr) = new_key_and_csr(node).unwrap();
        let last = csr.len() - 1;
        csr[last] ^= 0x01;
        assert!(matches!(
            ca.issue(&csr, node, lifetime),
            Err(CsrError::BadSignature | CsrError::Malformed)
        ));

        // Another key type.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).unwrap().der().to_vec();
        assert_eq!(ca.issue(&csr, node, lifetime), Err(CsrError::KeyType));

        // Garbage.
        assert_eq!(ca.issue(b"nope", node, lifetime), Err(CsrError::Malformed));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn renewal_is_two_thirds_into_the_lifetime() {
        assert_eq!(renew_at(1000 - BACKDATE_SECS, 1060), 1040);
        assert_eq!(renew_at(0, 0), 0);
        assert!(check_cluster_name("prod.example").is_ok());
        assert!(check_cluster_name("Prod/x").is_err());
        assert_eq!(node_of_spiffe("spiffe://a/cp/x"), None);
    }
}
