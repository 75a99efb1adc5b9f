//! CRLs: parsing (DER or PEM), the checks against the issuer, and the index of revoked serial
//! numbers kept in the cache (the DER itself is not kept).

use std::collections::HashMap;

use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_CRL_NUMBER,
    OID_X509_EXT_DELTA_CRL_INDICATOR, OID_X509_EXT_ISSUER_DISTRIBUTION_POINT,
};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::certs::Issuer;
use super::der::{self, Signed};
use super::{CLOCK_SKEW_SECS, REMOVE_FROM_CRL, Revocation};

/// A verified CRL, reduced to what lookups need.
#[derive(Debug)]
pub(super) struct Crl {
    /// `thisUpdate`, Unix seconds.
    pub(super) this_update: i64,
    /// `nextUpdate`, Unix seconds.
    pub(super) next_update: Option<i64>,
    /// False when the CRL covers only some revocation reasons (issuing distribution point
    /// `onlySomeReasons`): a serial missing from it is not known to be good.
    pub(super) complete: bool,
    revoked: HashMap<Vec<u8>, Revocation>,
}

// === impl Crl ===

impl Crl {
    /// Parses and checks a fetched CRL: issued by `issuer` (name, signature, `cRLSign`), current
    /// at `now`, a complete base CRL for end-entity certificates whose issuing distribution
    /// point (if any) is one of `dp_uris` (the certificate's distribution points).
    pub(super) fn parse(
        body: &[u8],
        issuer: &Issuer,
        dp_uris: &[String],
        now: i64,
    ) -> Result<Self, String> {
        let pem;
        let der = if looks_like_pem(body) {
            pem = match x509_parser::pem::parse_x509_pem(body) {
                Ok((_, pem)) if pem.label == "X509 CRL" => pem,
                Ok((_, pem)) => return Err(format!("PEM block is {:?}, not X509 CRL", pem.label)),
                Err(e) => return Err(format!("bad PEM: {e}")),
            };
            pem.contents.as_slice()
        } else {
            body
        };

        let signed = Signed::parse(der).map_err(|e| e.to_string())?;
        let crl = match CertificateRevocationList::from_der(der) {
            Ok((_, crl)) => crl,
            Err(e) => return Err(format!("malformed CRL: {e}")),
        };
        if crl.issuer().as_raw() != issuer.subject.as_slice() {
            return Err(format!(
                "issued by {}, not by the certificate's issuer",
                crl.issuer()
            ));
        }
        if !issuer.crl_sign {
            return Err("the issuer's key usage does not allow CRL signing".to_owned());
        }
        issuer
            .verify(&signed)
            .map_err(|e| format!("signature check failed: {e}"))?;

        let this_update = crl.last_update().timestamp();
        let next_update = crl.next_update().map(|t| t.timestamp());
        if this_update > now + CLOCK_SKEW_SECS {
            return Err(format!(
                "not valid before {} (thisUpdate)",
                der::format_time(this_update)
            ));
        }
        if let Some(next) = next_update
            && next + CLOCK_SKEW_SECS < now
        {
            return Err(format!(
                "expired at {} (nextUpdate)",
                der::format_time(next)
            ));
        }

        let mut complete = true;
        for ext in crl.extensions() {
            if ext.oid == OID_X509_EXT_DELTA_CRL_INDICATOR {
                return Err("delta CRLs are not supported".to_owned());
            }
            if let ParsedExtension::IssuingDistributionPoint(idp) = ext.parsed_extension() {
                if idp.only_contains_ca_certs || idp.only_contains_attribute_certs {
                    return Err("covers CA or attribute certificates only".to_owned());
                }
                if idp.indirect_crl {
                    return Err("indirect CRLs are not supported".to_owned());
                }
                complete = idp.only_some_reasons.is_none();
                if let Some(DistributionPointName::FullName(names)) = &idp.distribution_point {
                    let uris: Vec<&str> = names
                        .iter()
                        .filter_map(|name| match name {
                            GeneralName::URI(uri) => Some(*uri),
                            _ => None,
                        })
                        .collect();
                    if !uris.is_empty() && !uris.iter().any(|u| dp_uris.iter().any(|d| d == u)) {
                        return Err(format!(
                            "issued for distribution point {}, not the certificate's",
                            uris.join(", ")
                        ));
                    }
                }
            } else if ext.critical
                && ext.oid != OID_X509_EXT_ISSUER_DISTRIBUTION_POINT
                && ext.oid != OID_X509_EXT_CRL_NUMBER
                && ext.oid != OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER
            {
                return Err(format!("unsupported critical extension {}", ext.oid));
            }
        }

        let mut revoked = HashMap::new();
        for entry in crl.iter_revoked_certificates() {
            let reason = entry.reason_code().map(|(_, code)| code.0);
            if reason == Some(REMOVE_FROM_CRL) {
                // Only meaningful in delta CRLs (refused above); not a revocation.
                continue;
            }
            let revocation = Revocation {
                since: entry.revocation_date.timestamp(),
                reason,
            };
            revoked.insert(entry.raw_serial().to_vec(), revocation);
        }
        Ok(Self {
            this_update,
            next_update,
            complete,
            revoked,
        })
    }

    /// The revocation of `serial` (INTEGER value octets), if listed.
    pub(super) fn lookup(&self, serial: &[u8]) -> Option<Revocation> {
        self.revoked.get(serial).copied()
    }

    /// How many certificates the CRL lists.
    pub(super) fn len(&self) -> usize {
        self.revoked.len()
    }
}

fn looks_like_pem(body: &[u8]) -> bool {
    body.trim_ascii_start().starts_with(b"-----BEGIN")
}
