//! `mtls-auth`: clients authenticated by certificates issued by the CAs of the instance.
//!
//! 1. No client certificate: the `anonymous` consumer if configured, else 401 `No required
//!    TLS certificate was sent`.
//! 2. The chain (leaf + the intermediates the client sent) is verified against the
//!    instance's CA certificates: self-signed ones are trust anchors; with
//!    `allow_partial_chain` every one is (so a chain may end at an uploaded intermediate),
//!    without it non-self-signed ones only help build the path. Validity dates and the
//!    `clientAuth` usage are checked. Failure: 401 `TLS certificate failed verification`,
//!    the precise reason (expired, unknown CA, ...) in the log, never in the response.
//! 3. With `skip_consumer_lookup`, the certificate is the identity: `X-Client-Cert-Dn`
//!    and `X-Client-Cert-San` go upstream. Otherwise the consumer is looked up: an explicit
//!    mapping (`/consumers/{c}/mtls-auth`, `subject_name` = a SAN or the CN, optionally bound
//!    to the CA that issued the chain); then each SAN, then the CN, against the `consumer_by`
//!    fields (`username`, `custom_id`) in order; then `default_consumer`; then `anonymous`;
//!    else 401 `TLS certificate failed verification`.
//! 4. The authenticated group is the subject's CN or whole DN (`authenticated_group_by`).
//!
//! Verification results are cached per connection, per runtime and instance, so a
//! keep-alive connection pays for the chain check once; a new runtime (a CA removed, an
//! instance changed) checks again, resumed session or not.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rustls::DistinguishedName;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

use gatehouse_shared::model::MtlsAuthConfig;
use gatehouse_shared::x509;

use super::*;
use crate::metrics::{METRICS, MtlsFailure};
use crate::revocation::{Mode, Verdict};

const NO_CERTIFICATE: &str = "No required TLS certificate was sent";
pub(super) const FAILED_VERIFICATION: &str = "TLS certificate failed verification";

/// One `mtls-auth` instance, compiled.
pub(crate) struct MtlsAuth {
    id: Uuid,
    config: MtlsAuthConfig,
    protocols: Vec<String>,
    verifier: Arc<dyn ClientCertVerifier>,
    /// Non-anchor CA certificates offered as intermediates.
    intermediates: Vec<CertificateDer<'static>>,
    /// Every CA certificate with its subject DN: issuers for revocation checks.
    cas: Vec<(String, CertificateDer<'static>)>,
    /// Subjects of the CA certificates (`send_ca_dn`).
    hints: Vec<DistinguishedName>,
    /// Each CA certificate's subject DN, to tell which CA issued a chain.
    ca_subjects: Vec<(Uuid, String)>,
}

/// What a verified client certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Certified {
    /// Subject DN, RFC 4514-style.
    subject: String,
    common_name: Option<String>,
    sans: Vec<String>,
    /// Issuer DNs in the chain (the leaf's, then each intermediate's).
    issuers: Vec<String>,
}

/// Why a certificate was refused: the metric label and the logged reason.
type Refusal = (MtlsFailure, String);

/// A verification outcome for `(runtime version, instance)`.
type Verified = (u64, Uuid, Result<Certified, Refusal>);

/// One connection's verification results.
#[derive(Debug, Default)]
pub(crate) struct VerifiedCertificates {
    results: Mutex<Vec<Verified>>,
}

/// Most results kept per connection (a connection rarely meets more than one instance).
const MAX_RESULTS: usize = 8;

impl MtlsAuth {
    pub(super) fn new(
        id: Uuid,
        config: &MtlsAuthConfig,
        protocols: &[String],
        runtime: &Runtime,
    ) -> Result<Self, String> {
        let mut anchors = RootCertStore::empty();
        let mut intermediates = Vec::new();
        let mut hints = Vec::new();
        let mut ca_subjects = Vec::new();
        let mut cas = Vec::new();
        for ca in &config.ca_certificates {
            let der = runtime
                .ca_certificate(ca)
                .ok_or_else(|| format!("CA certificate {ca} is not in the configuration"))?;
            let facts = x509::cert_facts(der).map_err(|e| format!("CA certificate {ca}: {e}"))?;
            let self_signed = facts.is_self_issued();
            ca_subjects.push((*ca, facts.subject.clone()));
            cas.push((facts.subject.clone(), der.clone()));
            if self_signed || config.allow_partial_chain {
                anchors
                    .add(der.clone())
                    .map_err(|e| format!("CA certificate {ca}: {e}"))?;
            } else {
                intermediates.push(der.clone());
            }
            if let Ok(parsed) = x509_parser::parse_x509_certificate(der) {
                hints.push(DistinguishedName::from(
                    parsed.1.subject().as_raw().to_vec(),
                ));
            }
        }
        if anchors.is_empty() {
            return Err(
                "no self-signed CA certificate to anchor chains (set allow_partial_chain to \
                 trust an intermediate)"
                    .to_owned(),
            );
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(anchors),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .map_err(|e| e.to_string())?;
        Ok(Self {
            id,
            config: config.clone(),
            protocols: protocols.to_vec(),
            verifier,
            intermediates,
            hints,
            ca_subjects,
            cas,
        })
    }

    pub(super) fn runs_for(&self, protocol: Protocol) -> bool {
        runs_for(&self.protocols, protocol)
    }

    pub(super) fn send_ca_dn(&self) -> bool {
        self.config.send_ca_dn
    }

    pub(super) fn hints(&self) -> &[DistinguishedName] {
        &self.hints
    }

    pub(super) async fn access(
        &self,
        runtime: &Runtime,
        request: &Request<'_>,
        identity: &mut Identity,
        headers: &mut Vec<(HeaderName, String)>,
    ) -> Result<(), Denied> {
        let chain = request
            .tls
            .map(TlsInfo::peer_certificates)
            .unwrap_or_default();
        let Some((leaf, sent_intermediates)) = chain.split_first() else {
            METRICS.mtls_failure(MtlsFailure::NoCertificate);
            return self.anonymous_or(runtime, identity, NO_CERTIFICATE);
        };
        let certified = match request.verified.get(runtime.version(), self.id) {
            Some(outcome) => outcome,
            None => {
                let outcome = self.verify(leaf, sent_intermediates);
                request
                    .verified
                    .put(runtime.version(), self.id, outcome.clone());
                if let Err((_, reason)) = &outcome {
                    tracing::info!(
                        plugin = %self.id,
                        client = %request.client_ip,
                        %reason,
                        "mtls-auth: client certificate failed verification"
                    );
                }
                outcome
            }
        };
        let certified = match certified {
            Ok(certified) => certified,
            Err((failure, _)) => {
                METRICS.mtls_failure(failure);
                return self.anonymous_or(runtime, identity, FAILED_VERIFICATION);
            }
        };
        if let Err(failure) = self
            .revocation(request, leaf, sent_intermediates, &certified)
            .await
        {
            METRICS.mtls_failure(failure);
            return self.anonymous_or(runtime, identity, FAILED_VERIFICATION);
        }

        identity.credential = true;
        identity.authenticated_groups = match self.config.authenticated_group_by.as_str() {
            "DN" => vec![certified.subject.clone()],
            _ => certified.common_name.clone().into_iter().collect(),
        };
        if self.config.skip_consumer_lookup {
            headers.push((CLIENT_CERT_DN, certified.subject.clone()));
            if !certified.sans.is_empty() {
                headers.push((CLIENT_CERT_SAN, certified.sans.join(",")));
            }
            return Ok(());
        }
        let found = self.consumer_for(runtime, &certified).or_else(|| {
            self.config
                .default_consumer
                .as_deref()
                .and_then(|name| consumer_named(runtime, name))
        });
        match found {
            Some(consumer) => {
                identity.consumer = Some(consumer.clone());
                Ok(())
            }
            None => {
                METRICS.mtls_failure(MtlsFailure::NoConsumer);
                tracing::info!(
                    plugin = %self.id,
                    client = %request.client_ip,
                    subject = %certified.subject,
                    "mtls-auth: no consumer matches the certificate"
                );
                identity.credential = false;
                identity.authenticated_groups.clear();
                self.anonymous_or(runtime, identity, FAILED_VERIFICATION)
            }
        }
    }

    /// Asks about the leaf's revocation (`revocation_check_mode`), with its issuer: an
    /// intermediate the client sent or one of the instance's CAs. The answers are cached
    /// by the checker for `cert_cache_ttl`.
    async fn revocation(
        &self,
        request: &Request<'_>,
        leaf: &CertificateDer<'static>,
        sent: &[CertificateDer<'static>],
        certified: &Certified,
    ) -> Result<(), MtlsFailure> {
        let mode = match self.config.revocation_check_mode.as_str() {
            "SKIP" => return Ok(()),
            "STRICT" => Mode::Strict,
            _ => Mode::IgnoreCaError,
        };
        let issuer_dn = certified.issuers.first().map(String::as_str).unwrap_or("");
        let issuer = sent
            .iter()
            .find(|c| x509::cert_facts(c).is_ok_and(|f| f.subject == issuer_dn))
            .or_else(|| {
                self.cas
                    .iter()
                    .find(|(subject, _)| subject == issuer_dn)
                    .map(|(_, der)| der)
            });
        let Some(issuer) = issuer else {
            return if mode == Mode::Strict {
                tracing::info!(plugin = %self.id, client = %request.client_ip,
                    "mtls-auth: the issuer of the certificate is unknown; revocation cannot be checked");
                Err(MtlsFailure::RevocationUnknown)
            } else {
                Ok(())
            };
        };
        let millis = |ms: f64| Duration::from_millis(ms.max(0.0) as u64);
        let verdict = request
            .revocation
            .check(
                leaf,
                issuer,
                mode,
                millis(self.config.http_timeout),
                millis(self.config.cert_cache_ttl),
            )
            .await;
        if verdict.accepts(mode) {
            if let Verdict::Unknown { reason } = &verdict {
                tracing::debug!(plugin = %self.id, %reason, "mtls-auth: revocation status unknown; accepted");
            }
            return Ok(());
        }
        tracing::info!(
            plugin = %self.id,
            client = %request.client_ip,
            subject = %certified.subject,
            verdict = %verdict,
            "mtls-auth: client certificate refused by the revocation check"
        );
        Err(match verdict {
            Verdict::Revoked { .. } => MtlsFailure::Revoked,
            _ => MtlsFailure::RevocationUnknown,
        })
    }

    /// The anonymous consumer when configured, else 401 with `message`.
    fn anonymous_or(
        &self,
        runtime: &Runtime,
        identity: &mut Identity,
        message: &'static str,
    ) -> Result<(), Denied> {
        let unauthorized = Denied {
            status: StatusCode::UNAUTHORIZED,
            message,
        };
        let Some(name) = self.config.anonymous.as_deref() else {
            return Err(unauthorized);
        };
        match consumer_named(runtime, name) {
            Some(consumer) => {
                identity.consumer = Some(consumer.clone());
                identity.anonymous = true;
                Ok(())
            }
            None => {
                tracing::warn!(plugin = %self.id, anonymous = name, "mtls-auth: anonymous consumer not found");
                Err(Denied {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: "An unexpected error occurred",
                })
            }
        }
    }

    /// Verifies the client's chain against the instance's CAs.
    fn verify(
        &self,
        leaf: &CertificateDer<'static>,
        sent: &[CertificateDer<'static>],
    ) -> Result<Certified, Refusal> {
        let mut intermediates: Vec<CertificateDer<'static>> = sent.to_vec();
        intermediates.extend(self.intermediates.iter().cloned());
        let now = UnixTime::since_unix_epoch(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        self.verifier
            .verify_client_cert(leaf, &intermediates, now)
            .map_err(|error| describe(&error))?;
        let facts = x509::cert_facts(leaf).map_err(|e| (MtlsFailure::Invalid, e))?;
        let mut issuers = vec![facts.issuer];
        issuers.extend(
            sent.iter()
                .filter_map(|c| x509::cert_facts(c).ok())
                .map(|f| f.issuer),
        );
        Ok(Certified {
            subject: facts.subject,
            common_name: facts.common_name,
            sans: facts.sans,
            issuers,
        })
    }

    /// The consumer a certificate maps to: an explicit mapping (`/consumers/{c}/mtls-auth`)
    /// of a SAN or the CN — one bound to a CA only when that CA issued the chain — else each
    /// SAN, then the CN, against the `consumer_by` fields in order.
    fn consumer_for<'r>(
        &self,
        runtime: &'r Runtime,
        certified: &Certified,
    ) -> Option<&'r model::Consumer> {
        let names = || {
            certified
                .sans
                .iter()
                .map(String::as_str)
                .chain(certified.common_name.as_deref())
        };
        let issued_by = |ca: &Uuid| {
            self.ca_subjects
                .iter()
                .any(|(id, subject)| id == ca && certified.issuers.contains(subject))
        };
        for name in names() {
            let mapped = runtime
                .mtls_credentials_for_subject(name)
                .find(|c| c.ca_certificate.as_ref().is_none_or(|ca| issued_by(&ca.id)));
            if let Some(credential) = mapped {
                return runtime.consumer(&credential.consumer.id);
            }
        }
        for name in names() {
            for field in &self.config.consumer_by {
                let found = match field.as_str() {
                    "username" => runtime.consumer_by_username(name),
                    "custom_id" => runtime.consumer_by_custom_id(name),
                    _ => None,
                };
                if found.is_some() {
                    return found;
                }
            }
        }
        None
    }
}

/// A verification failure in an operator's words, with its metric label.
fn describe(error: &rustls::Error) -> Refusal {
    use rustls::CertificateError as E;
    let (failure, text) = match error {
        rustls::Error::InvalidCertificate(cause) => match cause {
            E::Expired | E::ExpiredContext { .. } => {
                (MtlsFailure::Expired, "the certificate has expired")
            }
            E::NotValidYet | E::NotValidYetContext { .. } => {
                (MtlsFailure::NotYetValid, "the certificate is not valid yet")
            }
            E::UnknownIssuer => (
                MtlsFailure::UnknownCa,
                "the certificate is not issued by a CA of the plugin",
            ),
            E::Revoked => (MtlsFailure::Revoked, "the certificate is revoked"),
            E::InvalidPurpose | E::InvalidPurposeContext { .. } => (
                MtlsFailure::WrongUsage,
                "the certificate is not for client authentication",
            ),
            E::BadSignature => (
                MtlsFailure::Invalid,
                "the certificate's signature is invalid",
            ),
            other => {
                return (
                    MtlsFailure::Invalid,
                    format!("invalid certificate: {other:?}"),
                );
            }
        },
        other => return (MtlsFailure::Invalid, other.to_string()),
    };
    (failure, text.to_owned())
}

// === impl VerifiedCertificates ===

impl VerifiedCertificates {
    fn get(&self, version: u64, plugin: Uuid) -> Option<Result<Certified, Refusal>> {
        let results = self.results.lock().unwrap_or_else(|e| e.into_inner());
        results
            .iter()
            .find(|(v, p, _)| *v == version && *p == plugin)
            .map(|(_, _, outcome)| outcome.clone())
    }

    fn put(&self, version: u64, plugin: Uuid, outcome: Result<Certified, Refusal>) {
        let mut results = self.results.lock().unwrap_or_else(|e| e.into_inner());
        // Results of older runtimes are useless now.
        results.retain(|(v, _, _)| *v == version);
        if results.len() >= MAX_RESULTS {
            let _oldest = results.remove(0);
        }
        results.push((version, plugin, outcome));
    }
}
