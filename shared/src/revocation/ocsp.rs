//! OCSP (RFC 6960): the request for one certificate, and the checks of the answer (a
//! BasicOCSPResponse signed by the issuer or by a responder the issuer delegated to, naming our
//! CertID, current).
//!
//! The CertID uses SHA-1, which every responder supports (RFC 5019 requires it). Requests carry
//! no nonce: the answers are cached and shared, and most responders (RFC 5019 profile) ignore
//! nonces anyway; the thisUpdate / nextUpdate checks bound replays instead.

use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};

use super::certs::{self, Issuer};
use super::der::{
    self, ENUMERATED, GENERALIZED_TIME, INTEGER, OCTET_STRING, OID, Reader, SEQUENCE, Signed,
};
use super::{CLOCK_SKEW_SECS, Revocation};

/// `Content-Type` of a request (RFC 6960 appendix A.1).
pub const REQUEST_CONTENT_TYPE: &str = "application/ocsp-request";
/// `Content-Type` of a response.
pub const RESPONSE_CONTENT_TYPE: &str = "application/ocsp-response";

/// AlgorithmIdentifier `{ id-sha1, NULL }`.
const SHA1_ALGORITHM: &[u8] = &[
    0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00,
];
/// id-sha1 (1.3.14.3.2.26), value octets.
const SHA1_OID: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
/// id-pkix-ocsp-basic (1.3.6.1.5.5.7.48.1.1), value octets.
const BASIC_RESPONSE_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];

/// Context-specific tags.
const CTX0: u8 = 0xa0;
const GOOD: u8 = 0x80;
const REVOKED: u8 = 0xa1;
const UNKNOWN: u8 = 0x82;

/// The identity of the checked certificate in requests and responses.
#[derive(Debug, Clone)]
pub struct CertId {
    name_hash: Vec<u8>,
    key_hash: Vec<u8>,
    serial: Vec<u8>,
    /// The encoded CertID (also the cache key).
    pub der: Vec<u8>,
}

/// What a responder said about the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Good,
    Revoked(Revocation),
}

/// A checked answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: Status,
    /// `thisUpdate`, Unix seconds.
    pub this_update: i64,
    /// `nextUpdate`, Unix seconds.
    pub next_update: Option<i64>,
}

// === impl CertId ===

impl CertId {
    /// The SHA-1 CertID of the certificate with `serial` (INTEGER value octets) from `issuer`.
    pub fn new(issuer: &Issuer, serial: &[u8]) -> Self {
        let name_hash = digest(&SHA1_FOR_LEGACY_USE_ONLY, &issuer.subject)
            .as_ref()
            .to_vec();
        let key_hash = digest(&SHA1_FOR_LEGACY_USE_ONLY, &issuer.key)
            .as_ref()
            .to_vec();
        let der = der::sequence(&[
            SHA1_ALGORITHM,
            &der::tlv(OCTET_STRING, &name_hash),
            &der::tlv(OCTET_STRING, &key_hash),
            &der::tlv(INTEGER, serial),
        ]);
        Self {
            name_hash,
            key_hash,
            serial: serial.to_vec(),
            der,
        }
    }

    /// `OCSPRequest { tbsRequest { requestList { Request { reqCert } } } }`.
    pub fn request(&self) -> Vec<u8> {
        let request = der::sequence(&[&self.der]);
        let list = der::sequence(&[&request]);
        let tbs = der::sequence(&[&list]);
        der::sequence(&[&tbs])
    }

    /// Whether the contents of a response's CertID name the same certificate (any encoding of
    /// the SHA-1 AlgorithmIdentifier parameters).
    fn matches(&self, contents: &[u8]) -> Result<bool, der::DerError> {
        let mut id = Reader::new(contents);
        let mut algorithm = Reader::new(id.read(SEQUENCE, "CertID hashAlgorithm")?);
        let oid = algorithm.read(OID, "CertID hash OID")?;
        let name_hash = id.read(OCTET_STRING, "CertID issuerNameHash")?;
        let key_hash = id.read(OCTET_STRING, "CertID issuerKeyHash")?;
        let serial = id.read(INTEGER, "CertID serialNumber")?;
        Ok(oid == SHA1_OID
            && name_hash == self.name_hash.as_slice()
            && key_hash == self.key_hash.as_slice()
            && serial == self.serial.as_slice())
    }
}

/// Parses and checks a responder's answer about `cert_id` at `now` (Unix seconds).
pub fn parse_response(
    body: &[u8],
    cert_id: &CertId,
    issuer: &Issuer,
    now: i64,
) -> Result<Answer, String> {
    let mut outer = Reader::new(body);
    let mut response = Reader::new(outer.read(SEQUENCE, "OCSPResponse")?);
    match response.read(ENUMERATED, "responseStatus")? {
        [0] => {}
        [code] => return Err(format!("responder answered {}", status_name(*code))),
        _ => return Err(der::DerError("responseStatus").into()),
    }
    let mut bytes = Reader::new(
        Reader::new(response.read(CTX0, "responseBytes")?).read(SEQUENCE, "ResponseBytes")?,
    );
    if bytes.read(OID, "responseType")? != BASIC_RESPONSE_OID {
        return Err("unsupported response type (not id-pkix-ocsp-basic)".to_owned());
    }
    let mut basic = Reader::new(
        Reader::new(bytes.read(OCTET_STRING, "response")?).read(SEQUENCE, "BasicOCSPResponse")?,
    );
    let signed = Signed::read(&mut basic)?;
    let certs = basic.read_optional(CTX0)?;
    check_signer(&signed, certs, issuer, now)?;

    let mut tbs = Reader::new(Reader::new(signed.tbs).read(SEQUENCE, "ResponseData")?);
    if let Some(version) = tbs.read_optional(CTX0)?
        && Reader::new(version).read(INTEGER, "version")? != [0]
    {
        return Err("unsupported response version".to_owned());
    }
    let _responder_id = tbs.read_any()?;
    let _produced_at = tbs.read(GENERALIZED_TIME, "producedAt")?;
    let mut responses = Reader::new(tbs.read(SEQUENCE, "responses")?);
    while !responses.is_empty() {
        let mut single = Reader::new(responses.read(SEQUENCE, "SingleResponse")?);
        if !cert_id.matches(single.read(SEQUENCE, "CertID")?)? {
            continue;
        }
        let status = single.read_any()?;
        let this_update = der::generalized_time(single.read(GENERALIZED_TIME, "thisUpdate")?)?;
        let next_update = match single.read_optional(CTX0)? {
            Some(next) => Some(der::generalized_time(
                Reader::new(next).read(GENERALIZED_TIME, "nextUpdate")?,
            )?),
            None => None,
        };
        let status = match status.tag {
            GOOD => Status::Good,
            REVOKED => Status::Revoked(revoked_info(status.contents)?),
            UNKNOWN => return Err("the responder does not know the certificate".to_owned()),
            _ => return Err(der::DerError("certStatus").into()),
        };
        if this_update > now + CLOCK_SKEW_SECS {
            return Err(format!(
                "answer not valid before {} (thisUpdate)",
                der::format_time(this_update)
            ));
        }
        if let Some(next) = next_update
            && next + CLOCK_SKEW_SECS < now
        {
            return Err(format!(
                "stale answer (nextUpdate {})",
                der::format_time(next)
            ));
        }
        return Ok(Answer {
            status,
            this_update,
            next_update,
        });
    }
    Err("the answer does not cover the certificate".to_owned())
}

/// `RevokedInfo { revocationTime, revocationReason [0] EXPLICIT CRLReason OPTIONAL }`.
fn revoked_info(contents: &[u8]) -> Result<Revocation, der::DerError> {
    let mut info = Reader::new(contents);
    let since = der::generalized_time(info.read(GENERALIZED_TIME, "revocationTime")?)?;
    let reason = match info.read_optional(CTX0)? {
        Some(reason) => match Reader::new(reason).read(ENUMERATED, "revocationReason")? {
            [code] => Some(*code),
            _ => return Err(der::DerError("revocationReason")),
        },
        None => None,
    };
    Ok(Revocation { since, reason })
}

/// Accepts a response signed by the issuer, or by a certificate from `certs` that the issuer
/// signed for OCSP signing (RFC 6960 §4.2.2.2). Locally configured responders are not supported.
fn check_signer(
    signed: &Signed<'_>,
    certs: Option<&[u8]>,
    issuer: &Issuer,
    now: i64,
) -> Result<(), String> {
    let by_issuer = match issuer.verify(signed) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let mut problems = vec![format!("not signed by the issuer ({by_issuer})")];
    if let Some(certs) = certs {
        let mut list = Reader::new(Reader::new(certs).read(SEQUENCE, "certs")?);
        while !list.is_empty() {
            let der = list.read_tlv(SEQUENCE, "certificate")?.raw;
            match delegated_responder(der, issuer, now) {
                Ok((subject, spki)) => match certs::verify(&spki, signed) {
                    Ok(()) => return Ok(()),
                    Err(e) => problems.push(format!("not signed by responder {subject} ({e})")),
                },
                Err(e) => problems.push(e),
            }
        }
    }
    Err(problems.join("; "))
}

/// The subject and SubjectPublicKeyInfo of a responder certificate the issuer authorized.
fn delegated_responder(der: &[u8], issuer: &Issuer, now: i64) -> Result<(String, Vec<u8>), String> {
    let cert = certs::parse_cert(der).map_err(|e| format!("responder certificate: {e}"))?;
    let subject = cert.subject().to_string();
    let refuse = |why: &str| Err(format!("responder certificate {subject} {why}"));
    if cert.issuer().as_raw() != issuer.subject.as_slice() {
        return refuse("is not issued by the certificate's issuer");
    }
    let signed = Signed::parse(der).map_err(|e| format!("responder certificate {subject}: {e}"))?;
    if let Err(e) = issuer.verify(&signed) {
        return refuse(&format!("is not signed by the issuer ({e})"));
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) if eku.value.ocsp_signing => {}
        _ => return refuse("lacks the OCSP-signing extended key usage"),
    }
    let validity = cert.validity();
    if validity.not_before.timestamp() > now + CLOCK_SKEW_SECS
        || validity.not_after.timestamp() + CLOCK_SKEW_SECS < now
    {
        return refuse("is expired or not yet valid");
    }
    Ok((subject, cert.public_key().raw.to_vec()))
}

/// RFC 6960 OCSPResponseStatus names.
fn status_name(code: u8) -> String {
    match code {
        1 => "malformedRequest".to_owned(),
        2 => "internalError".to_owned(),
        3 => "tryLater".to_owned(),
        5 => "sigRequired".to_owned(),
        6 => "unauthorized".to_owned(),
        other => format!("status {other}"),
    }
}
