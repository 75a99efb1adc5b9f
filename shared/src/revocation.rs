//! Revocation material both planes handle: a minimal DER reader and writer ([`der`]), the facts
//! of a certificate and its issuer with signature checks ([`certs`]), RFC 6960 OCSP requests and
//! checked answers ([`ocsp`]), and bounded plain-HTTP fetches ([`fetch`]).
//!
//! The data plane checks client certificates with them (mtls-auth's `revocation_check_mode`,
//! OCSP and CRLs); the control plane fetches the OCSP answers it staples to served certificates.
//! Input is untrusted (it comes from CRL and OCSP servers): nothing here panics on it.

pub mod certs;
pub mod der;
pub mod fetch;
pub mod ocsp;

/// Clock difference tolerated with CRL issuers and OCSP responders (thisUpdate, nextUpdate).
pub const CLOCK_SKEW_SECS: i64 = 300;

/// One revoked certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// Revocation date, Unix seconds.
    pub since: i64,
    /// The CRLReason code, when given.
    pub reason: Option<u8>,
}
