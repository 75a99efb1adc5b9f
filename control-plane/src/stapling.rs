//! OCSP stapling: every `--ocsp-stapling-interval` one control-plane replica (the holder of the
//! `ocsp-stapling` lease) looks at every certificate whose leaf names an `http://` OCSP
//! responder (authority information access) and whose chain carries the issuer, fetches an
//! answer when none is stored for that leaf or the stored one is past half its validity, checks
//! it (signed by the issuer or a responder it delegated to, names the leaf's CertID, current),
//! and stores it in `ocsp_staples`; every replica ships the stored staples in its snapshots and
//! the data planes staple them. Nothing here is on a handshake's path.
//!
//! A failed fetch keeps the last good staple until its nextUpdate, then removes it (the
//! certificate is served without). A `revoked` answer is stapled too (it is the truth the
//! client asked for) and logged as a warning.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_shared::revocation::certs::{Issuer, Leaf};
use gatehouse_shared::revocation::der;
use gatehouse_shared::revocation::fetch::Fetcher;
use gatehouse_shared::revocation::ocsp::{self, CertId, Status};
use gatehouse_shared::x509;
use uuid::Uuid;

use crate::store::{Lease, ServedChains, Slot, Staple, Store, unix_now};

/// The lease (in `ocsp_stapling_leases`) making one replica at a time the stapler.
const LEASE: &str = "ocsp-stapling";
/// Longest time one fetch takes (connection included).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer accepted.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Validity assumed for an answer without nextUpdate (RFC 6960: newer information is always
/// available); it is refreshed at half of it.
const NO_NEXT_UPDATE_SECS: i64 = 3600;
/// Longest wait before retrying a failed fetch, seconds (shorter as the staple nears its end).
const MAX_RETRY_SECS: i64 = 300;
/// Wait before retrying a failed fetch for a chain without a staple, seconds.
const RETRY_WITHOUT_STAPLE_SECS: i64 = 60;

/// When each chain whose last fetch failed is tried again (Unix seconds).
type RetryAt = HashMap<(Uuid, Slot), i64>;

/// Starts the stapler, unless `interval` is `None` (`--ocsp-stapling-interval 0`).
pub(crate) fn spawn(store: Arc<Store>, owner: Uuid, interval: Option<Duration>) {
    let Some(interval) = interval else {
        return;
    };
    tokio::spawn(async move {
        let fetcher = Fetcher::new();
        let mut retry_at = RetryAt::new();
        // The lease outlives a few missed passes, so a busy holder keeps it.
        let lease_secs = i64::try_from(interval.as_secs().saturating_mul(3))
            .unwrap_or(i64::MAX)
            .max(30);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = unix_now();
            match store
                .lease(
                    Lease::OcspStapling,
                    LEASE,
                    owner,
                    now,
                    now.saturating_add(lease_secs),
                )
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    tracing::warn!(error = %error.detail(), "OCSP stapling: cannot take the lease");
                    continue;
                }
            }
            if let Err(error) = pass(&store, &fetcher, &mut retry_at).await {
                tracing::warn!(%error, "OCSP stapling pass failed");
            }
        }
    });
}

/// One look at every certificate.
async fn pass(store: &Store, fetcher: &Fetcher, retry_at: &mut RetryAt) -> Result<(), String> {
    let chains = store.served_chains().await.map_err(|e| e.detail())?;
    let mut staples = store.ocsp_staples().await.map_err(|e| e.detail())?;
    retry_at.retain(|(id, _), _| chains.iter().any(|chain| chain.id == *id));
    for ServedChains { id, cert, cert_alt } in chains {
        for (slot, pem) in [(Slot::Cert, Some(cert)), (Slot::CertAlt, cert_alt)] {
            let stored = staples.remove(&(id, slot));
            let target = pem
                .as_deref()
                .and_then(|pem| Target::parse(pem).ok().flatten());
            let result = match target {
                Some(target) => staple(store, fetcher, (id, slot), &target, stored, retry_at).await,
                None if stored.is_some() => store
                    .delete_ocsp_staple(id, slot)
                    .await
                    .map(drop)
                    .map_err(|e| e.detail()),
                None => Ok(()),
            };
            if let Err(error) = result {
                tracing::warn!(certificate = %id, chain = slot.as_str(), %error, "OCSP stapling failed");
            }
        }
    }
    Ok(())
}

/// A leaf to staple: its digest, issuer, CertID and responders.
struct Target {
    leaf_sha256: String,
    issuer: Issuer,
    cert_id: CertId,
    urls: Vec<String>,
}

impl Target {
    /// `None` when the leaf names no usable responder; an error when the chain lacks the
    /// issuer or does not parse (those certificates are served without a staple).
    fn parse(pem: &str) -> Result<Option<Self>, String> {
        let chain = x509::parse_certificates(pem)?;
        let (Some(leaf), Some(issuer)) = (chain.first(), chain.get(1)) else {
            return Ok(None);
        };
        let issuer = Issuer::parse(issuer)?;
        let parsed = Leaf::parse(leaf, &issuer)?;
        if parsed.ocsp_urls.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            leaf_sha256: x509::sha256_hex(leaf),
            cert_id: CertId::new(&issuer, &parsed.serial),
            issuer,
            urls: parsed.ocsp_urls,
        }))
    }
}

/// Keeps the staple of one chain current.
async fn staple(
    store: &Store,
    fetcher: &Fetcher,
    (id, slot): (Uuid, Slot),
    target: &Target,
    stored: Option<Staple>,
    retry_at: &mut RetryAt,
) -> Result<(), String> {
    let now = unix_now();
    let stored = stored.filter(|s| s.leaf_sha256 == target.leaf_sha256);
    if stored.as_ref().is_some_and(|s| now < refresh_at(s)) {
        return Ok(());
    }
    // After a failure, wait before asking again; an expired staple is removed regardless.
    let expired = stored.as_ref().is_some_and(|s| now >= expires_at(s));
    if !expired && retry_at.get(&(id, slot)).is_some_and(|at| now < *at) {
        return Ok(());
    }
    let expires = stored.as_ref().map(expires_at);
    let result = fetch_and_store(store, fetcher, (id, slot), target, stored, now).await;
    if let Ok(true) = result {
        retry_at.remove(&(id, slot));
    } else {
        // A quarter of the staple's remaining life (so a few tries happen before it ends).
        let delay = expires.map_or(RETRY_WITHOUT_STAPLE_SECS, |expires| {
            (expires.saturating_sub(now) / 4).clamp(1, MAX_RETRY_SECS)
        });
        retry_at.insert((id, slot), now.saturating_add(delay));
    }
    result.map(drop)
}

/// Asks the responders; stores a new answer (`Ok(true)`), or keeps the stored one until it
/// expires (`Ok(false)`).
async fn fetch_and_store(
    store: &Store,
    fetcher: &Fetcher,
    (id, slot): (Uuid, Slot),
    target: &Target,
    stored: Option<Staple>,
    now: i64,
) -> Result<bool, String> {
    let mut problems = Vec::new();
    for url in &target.urls {
        let answer = fetcher
            .post(
                url,
                ocsp::REQUEST_CONTENT_TYPE,
                ocsp::RESPONSE_CONTENT_TYPE,
                target.cert_id.request(),
                FETCH_TIMEOUT,
                MAX_RESPONSE_BYTES,
            )
            .await
            .and_then(|body| {
                let answer = ocsp::parse_response(&body, &target.cert_id, &target.issuer, now)?;
                Ok((body, answer))
            });
        let (body, answer) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                problems.push(format!("{url}: {error}"));
                continue;
            }
        };
        // parse_response tolerates some clock skew; a staple must still be current here.
        if let Some(next) = answer.next_update
            && (next < answer.this_update || next <= now)
        {
            problems.push(format!(
                "{url}: answer already out of date (nextUpdate {})",
                der::format_time(next)
            ));
            continue;
        }
        let status = match answer.status {
            Status::Good => "good",
            Status::Revoked(_) => "revoked",
        };
        let fresh = Staple {
            leaf_sha256: target.leaf_sha256.clone(),
            response: body.to_vec(),
            status: status.to_owned(),
            responder: url.clone(),
            this_update: answer.this_update,
            next_update: answer.next_update,
            fetched_at: now,
        };
        if status == "revoked" {
            tracing::warn!(certificate = %id, chain = slot.as_str(), responder = %url, "OCSP responder says the certificate is revoked; stapling that answer");
        }
        if stored
            .as_ref()
            .is_some_and(|s| s.response == fresh.response)
        {
            return Ok(true);
        }
        store
            .put_ocsp_staple(id, slot, &fresh)
            .await
            .map_err(|e| e.detail())?;
        tracing::info!(
            certificate = %id,
            chain = slot.as_str(),
            responder = %url,
            status,
            this_update = %der::format_time(answer.this_update),
            next_update = ?answer.next_update.map(der::format_time),
            "OCSP staple stored"
        );
        return Ok(true);
    }
    match stored {
        Some(stored) if now < expires_at(&stored) => {
            tracing::warn!(
                certificate = %id,
                chain = slot.as_str(),
                problems = %problems.join("; "),
                expires = %der::format_time(expires_at(&stored)),
                "cannot refresh the OCSP staple; keeping the last good one until it expires"
            );
            Ok(false)
        }
        _ => {
            store
                .delete_ocsp_staple(id, slot)
                .await
                .map_err(|e| e.detail())?;
            Err(format!(
                "no OCSP answer ({}); serving without a staple",
                problems.join("; ")
            ))
        }
    }
}

/// When a staple stops being valid: its nextUpdate.
fn expires_at(staple: &Staple) -> i64 {
    staple
        .next_update
        .unwrap_or_else(|| staple.this_update.saturating_add(NO_NEXT_UPDATE_SECS))
}

/// When a staple is refreshed: half-way through its validity.
fn refresh_at(staple: &Staple) -> i64 {
    let expires = expires_at(staple);
    staple
        .this_update
        .saturating_add(expires.saturating_sub(staple.this_update) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staple(this_update: i64, next_update: Option<i64>) -> Staple {
        Staple {
            leaf_sha256: String::new(),
            response: Vec::new(),
            status: "good".into(),
            responder: String::new(),
            this_update,
            next_update,
            fetched_at: this_update,
        }
    }

    #[test]
    fn refreshes_half_way_and_expires_at_next_update() {
        let s = staple(1_000, Some(5_000));
        assert_eq!((refresh_at(&s), expires_at(&s)), (3_000, 5_000));
        let s = staple(1_000, None);
        assert_eq!(
            (refresh_at(&s), expires_at(&s)),
            (1_000 + NO_NEXT_UPDATE_SECS / 2, 1_000 + NO_NEXT_UPDATE_SECS)
        );
    }

    #[test]
    fn chains_without_issuer_or_responder_are_not_stapled() {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = rcgen::CertificateParams::new(vec!["a.example".to_owned()])
            .and_then(|p| p.self_signed(&key))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(Target::parse(&cert.pem()), Ok(None)));
        let chain = format!("{}{}", cert.pem(), cert.pem());
        assert!(matches!(Target::parse(&chain), Ok(None)));
        assert!(!matches!(Target::parse("not a pem"), Ok(Some(_))));
    }
}
