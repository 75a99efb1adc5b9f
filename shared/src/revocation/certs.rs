//! What the checks need from the client certificate and its issuer, and signature
//! verification against a SubjectPublicKeyInfo with rustls' aws-lc-rs algorithms (the ones the
//! handshake uses).

use std::sync::LazyLock;

use rustls::pki_types::SignatureVerificationAlgorithm;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP;
use x509_parser::prelude::FromDer;

use super::der::{self, Signed};

/// Most URLs of each kind tried per check (each fetch is bounded by `http_timeout`).
const MAX_URLS: usize = 4;

static ALGORITHMS: LazyLock<&'static [&'static dyn SignatureVerificationAlgorithm]> =
    LazyLock::new(|| {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all
    });

/// The issuer of the checked certificate: it signs the CRLs and OCSP responses (or the
/// delegated responder's certificate).
#[derive(Debug, Clone)]
pub struct Issuer {
    /// The subject Name, DER (CRL issuer, OCSP issuerNameHash, delegated responder's issuer).
    pub subject: Vec<u8>,
    /// The SubjectPublicKeyInfo, DER.
    pub spki: Vec<u8>,
    /// The subjectPublicKey octets (OCSP issuerKeyHash).
    pub key: Vec<u8>,
    /// False when the issuer has a key usage extension without `cRLSign`.
    pub crl_sign: bool,
}

/// The checked (client) certificate.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The serial number's INTEGER value octets, as in CRL entries and OCSP CertIDs.
    pub serial: Vec<u8>,
    /// `http://` OCSP responders from the authority information access extension.
    pub ocsp_urls: Vec<String>,
    /// `http://` URLs of the CRL distribution points.
    pub crl_urls: Vec<String>,
    /// Every URI of the CRL distribution points (a CRL's issuing distribution point must name
    /// one of them).
    pub crl_names: Vec<String>,
    /// Locations that cannot be used, each with why (shown when the status stays unknown).
    pub skipped: Vec<String>,
}

// === impl Issuer ===

impl Issuer {
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        let cert =
            parse_cert(der).map_err(|e| format!("cannot parse the issuer certificate: {e}"))?;
        let spki = cert.public_key().raw.to_vec();
        let (_, key) = der::spki(&spki).map_err(|e| format!("issuer public key: {e}"))?;
        let crl_sign = match cert.key_usage() {
            Ok(Some(usage)) => usage.value.crl_sign(),
            Ok(None) => true,
            Err(e) => return Err(format!("issuer key usage: {e}")),
        };
        Ok(Self {
            subject: cert.subject().as_raw().to_vec(),
            key: key.to_vec(),
            spki,
            crl_sign,
        })
    }

    /// Checks that the issuer's key made `signed`.
    pub fn verify(&self, signed: &Signed<'_>) -> Result<(), String> {
        verify(&self.spki, signed)
    }
}

// === impl Leaf ===

impl Leaf {
    /// Parses the client certificate; fails when `issuer` did not issue it (by name).
    pub fn parse(der: &[u8], issuer: &Issuer) -> Result<Self, String> {
        let cert = parse_cert(der).map_err(|e| format!("cannot parse the certificate: {e}"))?;
        if cert.issuer().as_raw() != issuer.subject.as_slice() {
            return Err(format!(
                "the certificate's issuer ({}) is not the given issuer certificate",
                cert.issuer()
            ));
        }
        let mut leaf = Self {
            serial: cert.raw_serial().to_vec(),
            ocsp_urls: Vec::new(),
            crl_urls: Vec::new(),
            crl_names: Vec::new(),
            skipped: Vec::new(),
        };
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::AuthorityInfoAccess(aia) => {
                    for desc in aia.iter() {
                        if desc.access_method != OID_PKIX_ACCESS_DESCRIPTOR_OCSP {
                            continue;
                        }
                        if let GeneralName::URI(uri) = desc.access_location {
                            leaf.add("OCSP responder", uri, Kind::Ocsp);
                        }
                    }
                }
                ParsedExtension::CRLDistributionPoints(points) => {
                    for point in points.iter() {
                        let Some(DistributionPointName::FullName(names)) =
                            &point.distribution_point
                        else {
                            continue;
                        };
                        let uris = names.iter().filter_map(|name| match name {
                            GeneralName::URI(uri) => Some(*uri),
                            _ => None,
                        });
                        for uri in uris {
                            leaf.crl_names.push(uri.to_owned());
                            if point.crl_issuer.is_some() {
                                leaf.skipped
                                    .push(format!("CRL {uri}: indirect CRLs are not supported"));
                            } else if point.reasons.is_some() {
                                leaf.skipped.push(format!(
                                    "CRL {uri}: distribution points for some reasons only are not supported"
                                ));
                            } else {
                                leaf.add("CRL", uri, Kind::Crl);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(leaf)
    }

    fn add(&mut self, what: &str, uri: &str, kind: Kind) {
        let urls = match kind {
            Kind::Ocsp => &mut self.ocsp_urls,
            Kind::Crl => &mut self.crl_urls,
        };
        let scheme = uri.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("http") if urls.len() < MAX_URLS => {
                if !urls.iter().any(|u| u == uri) {
                    urls.push(uri.to_owned());
                }
            }
            Some("http") => self
                .skipped
                .push(format!("{what} {uri}: more than {MAX_URLS} locations")),
            Some("https") => self.skipped.push(format!(
                "{what} {uri}: https is not supported for CRL/OCSP fetches (use http; the answers are signed)"
            )),
            _ => self
                .skipped
                .push(format!("{what} {uri}: only http:// locations are supported")),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Ocsp,
    Crl,
}

pub fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("data after the certificate".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Checks that the key of `spki` (a SubjectPublicKeyInfo, DER) made `signed`.
pub fn verify(spki: &[u8], signed: &Signed<'_>) -> Result<(), String> {
    let (key_algorithm, key) = der::spki(spki).map_err(|e| format!("signer public key: {e}"))?;
    let algorithm = ALGORITHMS
        .iter()
        .find(|alg| {
            alg.public_key_alg_id().as_ref() == key_algorithm
                && alg.signature_alg_id().as_ref() == signed.algorithm
        })
        .ok_or_else(|| {
            format!(
                "unsupported signature algorithm {} for a {} key",
                algorithm_name(signed.algorithm),
                algorithm_name(key_algorithm)
            )
        })?;
    algorithm
        .verify_signature(key, signed.tbs, signed.signature)
        .map_err(|_| "bad signature".to_owned())
}

/// The dotted OID of an AlgorithmIdentifier's contents, for messages.
fn algorithm_name(contents: &[u8]) -> String {
    let Ok(oid) = der::Reader::new(contents).read(der::OID, "algorithm") else {
        return "(malformed)".to_owned();
    };
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for &byte in oid {
        value = (value << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    let names: Vec<String> = arcs.iter().map(u64::to_string).collect();
    names.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names() {
        // ecdsa-with-SHA256, sha256WithRSAEncryption (with NULL parameters).
        assert_eq!(
            algorithm_name(&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
            "1.2.840.10045.4.3.2"
        );
        assert_eq!(
            algorithm_name(&[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00
            ]),
            "1.2.840.113549.1.1.11"
        );
        assert_eq!(algorithm_name(&[0x05, 0x00]), "(malformed)");
    }
}
