//! Revocation checking of client certificates: mtls-auth's `revocation_check_mode`.
//!
//! The plugin verifies the client's chain against its CA set first, then asks
//! [`RevocationChecker::check`] about the end-entity certificate and its issuer:
//!
//! - **OCSP** first, when the certificate names responders (authority information access,
//!   `id-ad-ocsp`): an RFC 6960 request (SHA-1 CertID, no nonce) by `POST`. The
//!   BasicOCSPResponse must be signed by the issuer, or by a responder certificate that the
//!   issuer signed with the OCSP-signing extended key usage; it must name the certificate's
//!   CertID and be current (thisUpdate not in the future, nextUpdate not past).
//! - **CRLs** next, when OCSP gave no answer: each CRL distribution point in turn until one
//!   answers. The CRL (DER or PEM) must be issued by the issuer (name, signature, `cRLSign` if
//!   the issuer has a key usage extension), be current, and be a complete base CRL for
//!   end-entity certificates (no delta, indirect or CA-only CRLs).
//! - Answers are cached: OCSP by CertID, CRLs by URL and issuer key, until `cache_ttl` or the
//!   answer's nextUpdate, whichever comes first. Failures are not cached. Concurrent checks that
//!   need the same answer share one fetch. The caches are bounded (64 CRLs, 10 000 OCSP
//!   answers; the oldest go first).
//!
//! `http_timeout` bounds each fetch (connection included); a check tries at most 4 OCSP
//! responders and 4 CRL locations. Only `http://` locations are fetched (the convention: the
//! answers are signed); `https://` and `ldap://` ones are reported, not followed. Not supported:
//! HTTP proxies, OCSP nonces, locally configured OCSP responders, delta and indirect CRLs,
//! revocation checks of the intermediate certificates.
//!
//! Verdicts carry operator-readable reasons (URLs, revocation reason and date, what failed);
//! they never contain key material.

// Until the mtls-auth plugin calls the checker, only the tests use it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;

use gatehouse_shared::revocation::{CLOCK_SKEW_SECS, Revocation, certs, der, fetch, ocsp};

mod cache;
mod crl;
#[cfg(test)]
mod tests;

use self::cache::FlightCache;
use self::certs::{Issuer, Leaf};
use self::crl::Crl;
use self::fetch::Fetcher;
use self::ocsp::{Answer, CertId, Status};

/// Most CRLs kept (each is reduced to its revoked serial numbers).
const CRL_CACHE_CAPACITY: usize = 64;
/// Most OCSP answers kept (one per client certificate).
const OCSP_CACHE_CAPACITY: usize = 10_000;
/// Largest CRL fetched.
const MAX_CRL_BYTES: usize = 32 << 20;
/// Largest OCSP answer fetched.
const MAX_OCSP_BYTES: usize = 1 << 20;
/// The CRLReason `removeFromCRL`.
const REMOVE_FROM_CRL: u8 = 8;

/// Kong's `revocation_check_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `SKIP`: no check.
    Skip,
    /// `IGNORE_CA_ERROR` (Kong's default): a revoked certificate is refused; one whose status
    /// cannot be determined (no location, fetch failed, bad answer) is accepted.
    IgnoreCaError,
    /// `STRICT`: only a certificate known to be good is accepted.
    Strict,
}

/// The revocation status of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// An OCSP responder said good, or a current CRL does not list it.
    Good,
    /// Revoked, with where it says so, the reason and the date.
    Revoked {
        /// For the log.
        reason: String,
    },
    /// The status could not be determined (or the check is off).
    Unknown {
        /// For the log: every location tried and what went wrong.
        reason: String,
    },
}

/// Checks client certificates with OCSP and CRLs, caching the answers. One per process (the
/// caches are shared by all plugins; each check gives its own timeout and time to live).
pub(crate) struct RevocationChecker {
    fetcher: Fetcher,
    crls: FlightCache<CrlKey, Crl>,
    ocsp: FlightCache<Vec<u8>, OcspAnswer>,
}

/// A CRL is cached per location and per issuer key (its signature was checked with it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CrlKey {
    url: String,
    issuer_spki: Vec<u8>,
}

/// A checked OCSP answer and the responder that gave it.
#[derive(Debug)]
struct OcspAnswer {
    url: String,
    answer: Answer,
}

// === impl Verdict ===

impl Verdict {
    /// Whether `mode` lets the client in with this verdict.
    pub(crate) fn accepts(&self, mode: Mode) -> bool {
        match (self, mode) {
            (_, Mode::Skip) | (Self::Good, _) => true,
            (Self::Revoked { .. }, _) => false,
            (Self::Unknown { .. }, Mode::IgnoreCaError) => true,
            (Self::Unknown { .. }, Mode::Strict) => false,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Good => f.write_str("not revoked"),
            Self::Revoked { reason } => f.write_str(reason),
            Self::Unknown { reason } => write!(f, "revocation status unknown: {reason}"),
        }
    }
}

// === impl RevocationChecker ===

impl RevocationChecker {
    pub(crate) fn new() -> Self {
        Self {
            fetcher: Fetcher::new(),
            crls: FlightCache::new(CRL_CACHE_CAPACITY),
            ocsp: FlightCache::new(OCSP_CACHE_CAPACITY),
        }
    }

    /// The revocation status of `leaf`, issued by `issuer` (both already verified by the
    /// caller). `Mode::Skip` returns `Unknown` without fetching anything; the other modes check
    /// the same way and differ only in [`Verdict::accepts`]. `http_timeout` bounds each fetch;
    /// `cache_ttl` bounds how long a fetched answer is reused.
    pub(crate) async fn check(
        &self,
        leaf: &CertificateDer<'_>,
        issuer: &CertificateDer<'_>,
        mode: Mode,
        http_timeout: Duration,
        cache_ttl: Duration,
    ) -> Verdict {
        if mode == Mode::Skip {
            return unknown("revocation checking is off (SKIP)".to_owned());
        }
        let issuer = match Issuer::parse(issuer) {
            Ok(issuer) => issuer,
            Err(reason) => return unknown(reason),
        };
        let leaf = match Leaf::parse(leaf, &issuer) {
            Ok(leaf) => leaf,
            Err(reason) => return unknown(reason),
        };
        if leaf.ocsp_urls.is_empty() && leaf.crl_urls.is_empty() {
            let mut reason = "no CRL distribution point or OCSP responder in the certificate";
            if !leaf.skipped.is_empty() {
                reason = "no usable CRL distribution point or OCSP responder in the certificate";
            }
            return unknown(joined(reason, &leaf.skipped));
        }

        let mut problems = Vec::new();
        if !leaf.ocsp_urls.is_empty() {
            match self.ocsp(&leaf, &issuer, http_timeout, cache_ttl).await {
                Ok(found) => {
                    return match found.answer.status {
                        Status::Good => Verdict::Good,
                        Status::Revoked(revocation) => Verdict::Revoked {
                            reason: revoked("OCSP", &found.url, revocation),
                        },
                    };
                }
                Err(problem) => problems.push(problem),
            }
        }
        for url in &leaf.crl_urls {
            match self.crl(url, &leaf, &issuer, http_timeout, cache_ttl).await {
                Ok(crl) => match crl.lookup(&leaf.serial) {
                    Some(revocation) => {
                        return Verdict::Revoked {
                            reason: revoked("CRL", url, revocation),
                        };
                    }
                    None if crl.complete => return Verdict::Good,
                    None => problems.push(format!(
                        "CRL {url}: covers some revocation reasons only, and does not list the certificate"
                    )),
                },
                Err(problem) => problems.push(problem),
            }
        }
        problems.extend(leaf.skipped);
        unknown(problems.join("; "))
    }

    /// The OCSP answer about `leaf`: cached, or from the first responder giving a valid one.
    async fn ocsp(
        &self,
        leaf: &Leaf,
        issuer: &Issuer,
        timeout: Duration,
        ttl: Duration,
    ) -> Result<Arc<OcspAnswer>, String> {
        let cert_id = CertId::new(issuer, &leaf.serial);
        self.ocsp
            .get(&cert_id.der, ttl, || async {
                let request = cert_id.request();
                let mut problems = Vec::new();
                for url in &leaf.ocsp_urls {
                    let answer = self
                        .fetcher
                        .post(
                            url,
                            ocsp::REQUEST_CONTENT_TYPE,
                            ocsp::RESPONSE_CONTENT_TYPE,
                            request.clone(),
                            timeout,
                            MAX_OCSP_BYTES,
                        )
                        .await
                        .and_then(|body| ocsp::parse_response(&body, &cert_id, issuer, unix_now()));
                    match answer {
                        Ok(answer) => {
                            tracing::debug!(
                                url = %url,
                                status = ?answer.status,
                                this_update = %der::format_time(answer.this_update),
                                next_update = ?answer.next_update.map(der::format_time),
                                "OCSP answer"
                            );
                            let expires = expiry(answer.next_update);
                            let url = url.clone();
                            return Ok((OcspAnswer { url, answer }, expires));
                        }
                        Err(problem) => {
                            tracing::debug!(url = %url, %problem, "OCSP check failed");
                            problems.push(format!("OCSP responder {url}: {problem}"));
                        }
                    }
                }
                Err(problems.join("; "))
            })
            .await
    }

    /// The CRL at `url`: cached, or fetched and checked.
    async fn crl(
        &self,
        url: &str,
        leaf: &Leaf,
        issuer: &Issuer,
        timeout: Duration,
        ttl: Duration,
    ) -> Result<Arc<Crl>, String> {
        let key = CrlKey {
            url: url.to_owned(),
            issuer_spki: issuer.spki.clone(),
        };
        let fetch = || async {
            let accept = "application/pkix-crl, application/x-pkcs7-crl;q=0.5, */*;q=0.1";
            let body = self
                .fetcher
                .get(url, accept, timeout, MAX_CRL_BYTES)
                .await?;
            let crl = Crl::parse(&body, issuer, &leaf.crl_names, unix_now())?;
            tracing::debug!(
                url,
                bytes = body.len(),
                revoked = crl.len(),
                this_update = %der::format_time(crl.this_update),
                next_update = ?crl.next_update.map(der::format_time),
                "fetched CRL"
            );
            let expires = expiry(crl.next_update);
            Ok((crl, expires))
        };
        self.crls
            .get(&key, ttl, fetch)
            .await
            .map_err(|problem| format!("CRL {url}: {problem}"))
    }
}

impl Default for RevocationChecker {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RevocationChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationChecker")
            .field("cached_crls", &self.crls.len())
            .field("cached_ocsp_answers", &self.ocsp.len())
            .finish()
    }
}

fn unknown(reason: String) -> Verdict {
    Verdict::Unknown { reason }
}

fn joined(head: &str, tail: &[String]) -> String {
    if tail.is_empty() {
        head.to_owned()
    } else {
        format!("{head}: {}", tail.join("; "))
    }
}

/// `revoked (CRL http://..., reason keyCompromise, since 2026-11-22T10:00:00Z)`.
fn revoked(source: &str, url: &str, revocation: Revocation) -> String {
    let since = der::format_time(revocation.since);
    match revocation.reason {
        Some(code) => format!(
            "revoked ({source} {url}, reason {}, since {since})",
            reason_name(code)
        ),
        None => format!("revoked ({source} {url}, since {since})"),
    }
}

/// RFC 5280 CRLReason names.
fn reason_name(code: u8) -> String {
    let name = match code {
        0 => "unspecified",
        1 => "keyCompromise",
        2 => "cACompromise",
        3 => "affiliationChanged",
        4 => "superseded",
        5 => "cessationOfOperation",
        6 => "certificateHold",
        8 => "removeFromCRL",
        9 => "privilegeWithdrawn",
        10 => "aACompromise",
        other => return format!("code {other}"),
    };
    name.to_owned()
}

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The instant of an answer's nextUpdate (Unix seconds), for the cache.
fn expiry(next_update: Option<i64>) -> Option<Instant> {
    let next_update = next_update?;
    let left = u64::try_from(next_update.saturating_sub(unix_now())).unwrap_or(0);
    Instant::now().checked_add(Duration::from_secs(left))
}
