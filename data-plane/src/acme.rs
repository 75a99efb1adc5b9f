//! ACME on the data plane: the answers to the control plane's pending challenges, and the
//! on-demand certificate requests.
//!
//! The control plane runs the ACME client; every data plane answers its challenges, so the
//! CA's validation may reach any of them. The pending challenges travel in the snapshot
//! (`Config.acme_challenges`); [`Acme`] is a runtime [`Part`]: it checks them and builds
//! their answers when a runtime is applied, so the first validation after the swap finds
//! them ready, and a snapshot with a malformed challenge (an unknown kind, a token that is
//! not base64url, a key authorization that is not `<token>.<thumbprint>`, a wildcard or
//! invalid domain, one token with two key authorizations) is rejected whole.
//!
//! - **HTTP-01** (RFC 8555 §8.3), on the plain HTTP proxy listeners, before routing: `GET` or
//!   `HEAD /.well-known/acme-challenge/<token>` whose token is a pending `http-01` challenge
//!   (not expired) and whose `Host` is that challenge's domain gets `200 text/plain` with the
//!   key authorization. Any other request under that path (an unknown token, another host)
//!   is routed as usual, as Kong's plugin does: a backend running its own ACME client keeps
//!   working.
//! - **TLS-ALPN-01** (RFC 8737), on the HTTPS proxy listeners and the stream listeners: a
//!   ClientHello whose ALPN list is exactly `acme-tls/1` and whose SNI is the domain of a
//!   pending `tls-alpn-01` challenge gets a self-signed certificate for that name with the
//!   critical `id-pe-acmeIdentifier` extension (the SHA-256 of the key authorization),
//!   `acme-tls/1` is negotiated and the connection is closed after the handshake (no HTTP,
//!   no session resumption). Without that exact ALPN list, or for another name, the
//!   handshake is an ordinary one (which refuses `acme-tls/1`). The certificates are made
//!   at apply time (a fresh P-256 key each, kept across runtimes while the challenge is
//!   unchanged). Two pending challenges for one domain: the one expiring last is answered.
//! - **On-demand issuance**: see [`OnDemand`].
//!
//! Nothing here logs a key authorization or a key.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::ServerConfig;
use rustls::crypto::aws_lc_rs as provider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use uuid::Uuid;

use gatehouse_shared::checks;
use gatehouse_shared::model;

use crate::runtime::{Part, PerRuntime, Runtime};

mod on_demand;
#[cfg(test)]
pub(crate) mod tests;

pub(crate) use on_demand::{OnDemand, OnDemandLimits, OnDemandRules};

/// Where HTTP-01 answers live.
pub(crate) const HTTP01_PATH: &str = "/.well-known/acme-challenge/";
/// The ALPN protocol id of TLS-ALPN-01.
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Longest token accepted (RFC 8555 tokens are 43 characters; room for other CAs).
const MAX_TOKEN: usize = 256;
/// Validity of a TLS-ALPN-01 certificate around its making (the CA does not check it, but a
/// certificate valid now avoids surprises).
const CHALLENGE_CERT_DAYS: i64 = 7;

/// The ACME part of the data plane: the challenge answers and on-demand rules of each
/// runtime, and the on-demand request limiter. Shared by the proxy (HTTP-01), the TLS
/// terminators (TLS-ALPN-01, on-demand) and the stream listeners.
#[derive(Default)]
pub(crate) struct Acme {
    built: PerRuntime<Challenges>,
    on_demand: OnDemand,
}

/// What one runtime's ACME state compiles to.
#[derive(Default)]
pub(crate) struct Challenges {
    /// Pending HTTP-01 challenges, by token.
    http01: HashMap<String, Http01>,
    /// Pending TLS-ALPN-01 challenges, by domain.
    tls_alpn01: HashMap<String, TlsAlpn01>,
    /// Which names may be asked for on demand; `None`: none.
    on_demand: Option<OnDemandRules>,
}

/// A pending HTTP-01 challenge.
struct Http01 {
    domain: String,
    key_authorization: bytes::Bytes,
    expires_at: i64,
}

/// A pending TLS-ALPN-01 challenge and the server configuration answering it.
struct TlsAlpn01 {
    id: Uuid,
    key_authorization: String,
    expires_at: i64,
    config: Arc<ServerConfig>,
}

/// The kinds of challenge a data plane answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http01,
    TlsAlpn01,
}

// === impl Acme ===

impl Acme {
    /// An ACME part whose on-demand requests go to `on_demand`.
    pub(crate) fn new(on_demand: OnDemand) -> Self {
        Self {
            built: PerRuntime::default(),
            on_demand,
        }
    }

    /// The challenges of `runtime`: prepared by the apply step, else built now. A runtime
    /// that cannot be built (never applied: the apply step refuses it) answers nothing.
    pub(crate) fn for_runtime(&self, runtime: &Runtime) -> Arc<Challenges> {
        if let Some(built) = self.built.get(runtime) {
            return built;
        }
        let previous = self.built.newest();
        self.built.get_or_insert_with(runtime, || {
            Challenges::build(runtime.config(), previous.as_deref(), unix_now()).unwrap_or_default()
        })
    }

    /// A TLS handshake for `server_name` found no certificate and was served the default
    /// one: asks the control plane for one when the runtime's on-demand rules allow the
    /// name (deduplicated and rate-limited, see [`OnDemand`]).
    pub(crate) fn certificate_missing(&self, runtime: &Runtime, server_name: &str) {
        let challenges = self.for_runtime(runtime);
        let Some(rules) = &challenges.on_demand else {
            return;
        };
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        if rules.allows(&name) {
            self.on_demand.want(name);
        }
    }
}

#[cfg(test)]
impl Acme {
    /// The on-demand limiter.
    pub(crate) fn on_demand(&self) -> &OnDemand {
        &self.on_demand
    }
}

impl Part for Acme {
    fn prepare(&self, runtime: &Arc<Runtime>, _warnings: &mut Vec<String>) -> Result<(), String> {
        let previous = self.built.newest();
        let built = Challenges::build(runtime.config(), previous.as_deref(), unix_now())?;
        self.built.insert(runtime, Arc::new(built));
        Ok(())
    }
}

impl fmt::Debug for Acme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acme")
            .field("newest", &self.built.newest())
            .finish_non_exhaustive()
    }
}

// === impl Challenges ===

impl Challenges {
    /// Checks the ACME state of `config` and builds the answers. Challenges already expired
    /// at `now` are checked but not built. TLS-ALPN-01 configurations of `previous` are
    /// reused for unchanged challenges.
    fn build(
        config: &model::Config,
        previous: Option<&Challenges>,
        now: i64,
    ) -> Result<Self, String> {
        let mut built = Self::default();
        for challenge in &config.acme_challenges {
            let error = |reason: String| format!("acme_challenge {}: {reason}", challenge.id);
            let kind = check(challenge).map_err(error)?;
            let domain = challenge.domain.trim_end_matches('.').to_ascii_lowercase();
            match kind {
                Kind::Http01 => {
                    if let Some(other) = built.http01.get(&challenge.token)
                        && other.key_authorization != challenge.key_authorization.as_bytes()
                    {
                        return Err(error(
                            "token is used by another challenge with another key authorization"
                                .to_owned(),
                        ));
                    }
                    if challenge.expires_at <= now {
                        continue;
                    }
                    built.http01.insert(
                        challenge.token.clone(),
                        Http01 {
                            domain,
                            key_authorization: bytes::Bytes::from(
                                challenge.key_authorization.clone(),
                            ),
                            expires_at: challenge.expires_at,
                        },
                    );
                }
                Kind::TlsAlpn01 => {
                    if challenge.expires_at <= now {
                        continue;
                    }
                    if built
                        .tls_alpn01
                        .get(&domain)
                        .is_some_and(|other| other.expires_at >= challenge.expires_at)
                    {
                        continue;
                    }
                    let reused = previous
                        .and_then(|p| p.tls_alpn01.get(&domain))
                        .filter(|p| {
                            p.id == challenge.id
                                && p.key_authorization == challenge.key_authorization
                        })
                        .map(|p| p.config.clone());
                    let config = match reused {
                        Some(config) => config,
                        None => Arc::new(
                            tls_alpn01_config(&domain, &challenge.key_authorization)
                                .map_err(error)?,
                        ),
                    };
                    built.tls_alpn01.insert(
                        domain,
                        TlsAlpn01 {
                            id: challenge.id,
                            key_authorization: challenge.key_authorization.clone(),
                            expires_at: challenge.expires_at,
                            config,
                        },
                    );
                }
            }
        }
        if let Some(on_demand) = &config.acme_on_demand {
            built.on_demand = Some(
                OnDemandRules::new(on_demand)
                    .map_err(|reason| format!("acme_on_demand: {reason}"))?,
            );
        }
        Ok(built)
    }

    /// The HTTP-01 answer for `token` asked on `host` (lowercase, without port): the key
    /// authorization of a pending challenge for that domain, not expired at `now`.
    pub(crate) fn http01(&self, token: &str, host: &str, now: i64) -> Option<&bytes::Bytes> {
        self.http01
            .get(token)
            .filter(|c| c.expires_at > now && c.domain == host.trim_end_matches('.'))
            .map(|c| &c.key_authorization)
    }

    /// The server configuration answering a TLS-ALPN-01 validation of this ClientHello: its
    /// ALPN list is exactly `acme-tls/1` and its SNI names a pending challenge, not expired at
    /// `now`.
    pub(crate) fn tls_alpn01(
        &self,
        hello: &ClientHello<'_>,
        now: i64,
    ) -> Option<Arc<ServerConfig>> {
        if self.tls_alpn01.is_empty() || !is_acme_alpn(hello.alpn()) {
            return None;
        }
        let name = hello
            .server_name()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.tls_alpn01
            .get(&name)
            .filter(|c| c.expires_at > now)
            .map(|c| c.config.clone())
    }

    /// Whether a TLS-ALPN-01 challenge is pending for `server_name` (the stream listener
    /// hands such connections to its terminator instead of routing them).
    pub(crate) fn has_tls_alpn01(&self, server_name: &str, now: i64) -> bool {
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        self.tls_alpn01
            .get(&name)
            .is_some_and(|c| c.expires_at > now)
    }
}

/// Counts only: no key authorization.
impl fmt::Debug for Challenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenges")
            .field("http01", &self.http01.len())
            .field("tls_alpn01", &self.tls_alpn01.len())
            .field("on_demand", &self.on_demand.is_some())
            .finish()
    }
}

/// Whether an ALPN list is exactly `acme-tls/1` (RFC 8737 §3: the validation's ClientHello
/// offers that protocol only).
pub(crate) fn is_acme_alpn<'a>(alpn: Option<impl Iterator<Item = &'a [u8]>>) -> bool {
    let Some(mut protocols) = alpn else {
        return false;
    };
    protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
}

/// Checks one challenge; returns its kind.
fn check(challenge: &model::AcmeChallenge) -> Result<Kind, String> {
    let kind = match challenge.kind.as_str() {
        "http-01" => Kind::Http01,
        "tls-alpn-01" => Kind::TlsAlpn01,
        other => {
            return Err(format!(
                "unknown kind '{other}' (expected 'http-01' or 'tls-alpn-01')"
            ));
        }
    };
    if !is_base64url(&challenge.token) || challenge.token.len() > MAX_TOKEN {
        return Err("token is not a base64url string".to_owned());
    }
    let thumbprint = challenge
        .key_authorization
        .strip_prefix(challenge.token.as_str())
        .and_then(|rest| rest.strip_prefix('.'));
    if !thumbprint.is_some_and(is_base64url) {
        return Err("key_authorization is not '<token>.<base64url thumbprint>'".to_owned());
    }
    let domain = challenge.domain.as_str();
    if domain.contains('*') {
        return Err(format!(
            "domain '{domain}' is a wildcard: wildcard names are validated with dns-01 only"
        ));
    }
    checks::sni_name(domain).map_err(|e| format!("invalid domain '{domain}': {e}"))?;
    Ok(kind)
}

/// Non-empty, and only the base64url alphabet (no padding).
fn is_base64url(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A server configuration answering one TLS-ALPN-01 challenge: a fresh self-signed
/// certificate for `domain` with the acmeIdentifier extension, ALPN `acme-tls/1` only, no
/// resumption.
fn tls_alpn01_config(domain: &str, key_authorization: &str) -> Result<ServerConfig, String> {
    let failed = |e: rcgen::Error| format!("cannot make the tls-alpn-01 certificate: {e}");
    let key = KeyPair::generate().map_err(failed)?;
    let mut params = CertificateParams::new(vec![domain.to_owned()]).map_err(failed)?;
    params.distinguished_name = DistinguishedName::new();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(CHALLENGE_CERT_DAYS);
    let digest = digest::digest(&digest::SHA256, key_authorization.as_bytes());
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest.as_ref())];
    let cert = params.self_signed(&key).map_err(failed)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(provider::default_provider());
    // The provider's error is dropped on purpose: only a fixed text leaves here.
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|_| "cannot load the tls-alpn-01 key".to_owned())?;
    // Not `with_single_cert`: its check refuses the critical extension webpki does not know,
    // which is the point of this certificate.
    let certified = CertifiedKey::new(vec![cert.der().clone()], signing_key);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("cannot configure tls-alpn-01: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ChallengeCertificate(Arc::new(certified))));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Serves one challenge certificate, whatever the ClientHello (it was chosen for it).
#[derive(Debug)]
struct ChallengeCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for ChallengeCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Now, Unix seconds.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
