//! Enrolment, renewal and revocation of data-plane certificates, control-plane side.
//!
//! - [`EnrolService`] (`Enrolment.Enrol`): a DP without a certificate presents a bootstrap
//!   token and a CSR. The listener serves this service, and only it, on connections that
//!   presented no client certificate (see `listener`); `ConfigSync` stays mutual TLS only.
//!   The CSR is checked first (nothing is consumed for a bad one), then the token is used
//!   with one atomic UPDATE (a single-use token works once across every replica), then the
//!   certificate is recorded and returned.
//! - [`Issuer::renew`]: the same CA signs a renewal that arrives over an open sync stream.
//! - [`watch_revocations`]: every [`REVOCATION_POLL`], the revoked serials are read and the
//!   streams of this node that use one of them end; a stream's certificate is also checked when
//!   it starts (see `service`). The poll also warns about streams whose certificate is close
//!   to expiry and has not been renewed.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use uuid::Uuid;

use gatehouse_proto::v1::enrolment_server::Enrolment;
use gatehouse_proto::v1::{EnrolRequest, EnrolResponse, TrustBundleRequest, TrustBundleResponse};
use gatehouse_shared::cluster::enrol::{ClusterCa, CsrError, Issued, renew_at, write_private_file};
use gatehouse_shared::cluster::pki::PkiError;

use super::{Node, Tls};
use crate::config::{ConfigError, EnrolSettings};
use crate::store::{IssuedCert, Store, unix_now};

/// How often revocations are looked for: a revoked stream ends within this (plus a query).
const REVOCATION_POLL: Duration = Duration::from_millis(250);
/// How many earlier CAs a node keeps in memory for its own certificate.
const MAX_EARLIER_CAS: usize = 4;
/// How often `--cluster-cert auto` checks that its certificate's CA is still the right one.
const OWN_CA_CHECK: Duration = Duration::from_secs(2);
/// How often the streams' certificate expiry is looked at.
const EXPIRY_CHECK_EVERY: u32 = 40;
/// How often (in revocation polls) renewal requests are looked for.
const RENEWAL_CHECK_EVERY: u32 = 4;
/// Enrolments checked at once; more wait (up to [`ENROL_QUEUE_WAIT`]) for a turn.
const CONCURRENT_ENROLMENTS: usize = 16;
/// How long an enrolment waits for a turn before it is refused as busy.
const ENROL_QUEUE_WAIT: Duration = Duration::from_secs(5);
/// Source addresses remembered by the failure limiter before the fully refilled are dropped.
const MAX_TRACKED_SOURCES: usize = 10_000;

/// The cluster CA with this node's issuing policy.
///
/// The CA files are looked at before each signature and reloaded when their content changed
/// (`pki rotate-ca`): the first certificate of `--cluster-ca-cert` and `--cluster-ca-key` sign,
/// the whole bundle is what renewed data planes are told to trust. Files that do not load
/// (half-written, mismatched) leave the current CA in place.
#[derive(Debug)]
pub(crate) struct Issuer {
    settings: EnrolSettings,
    current: Mutex<Loaded>,
    /// `--cluster-cert auto`: this node's own serving certificate.
    own: Option<OwnCert>,
}

/// notBefore, notAfter (Unix seconds) and issuer of this node's own certificate.
pub(crate) type OwnValidity = (i64, i64, String);

/// This node's own serving certificate (`--cluster-cert auto`), issued by the cluster CA.
#[derive(Debug)]
struct OwnCert {
    /// Where the key and the certificate are written (one file, mode 0600), which the
    /// listener's TLS configuration reads.
    file: PathBuf,
    /// Its DNS names and IP addresses.
    names: Vec<String>,
}

/// SHA-256 (hex) of the CA certificate and key files.
type Fingerprint = [Option<String>; 2];

/// The CA as last loaded, with the content it was loaded from.
#[derive(Debug)]
struct Loaded {
    ca: Arc<ClusterCa>,
    /// The `--cluster-ca-cert` file (the trust bundle).
    bundle: Arc<str>,
    /// SHA-256 of the certificate and key files when last read.
    seen: Fingerprint,
    /// The CAs loaded earlier by this process (their keys in memory), newest last: during a
    /// rotation this node's own certificate is signed by the oldest CA still in the bundle,
    /// which every data plane trusts.
    earlier: Vec<Arc<ClusterCa>>,
}

/// The `Enrolment` service.
#[derive(Debug, Clone)]
pub(crate) struct EnrolService {
    node: Arc<Node>,
    store: Arc<Store>,
    ca: Arc<Issuer>,
    /// Refused attempts per source address.
    failures: Arc<Failures>,
    /// Turns to check an enrolment (CSR signature, database).
    turns: Arc<tokio::sync::Semaphore>,
}

/// Refused enrolment attempts per source address: a bucket of `burst` attempts, refilled
/// evenly over a minute. An address with an empty bucket is refused before anything is
/// checked. Only refusals count, so a fleet enrolling from behind one NAT address is not
/// slowed down by its own successes.
#[derive(Debug)]
struct Failures {
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// What is left of one address's budget, as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    left: f64,
    at: Instant,
}

// === impl Issuer ===

impl Issuer {
    /// Loads the CA of `settings`; a bad file is a configuration error.
    pub(crate) fn load(settings: &EnrolSettings) -> Result<Self, ConfigError> {
        let (seen, _) = fingerprint(settings);
        let loaded = load_ca(settings, seen)
            .map_err(|error| ConfigError::new(format!("--cluster-ca-key: {error}")))?;
        Ok(Self {
            settings: settings.clone(),
            current: Mutex::new(loaded),
            own: None,
        })
    }

    /// This node issues its own serving certificate for `names` into `file` (see
    /// [`write_own_cert`](Self::write_own_cert) and [`renew_own_cert`]).
    pub(crate) fn with_own_cert(self, file: PathBuf, names: Vec<String>) -> Self {
        Self {
            own: Some(OwnCert { file, names }),
            ..self
        }
    }

    /// Whether this node issues its own serving certificate (`--cluster-cert auto`).
    pub(crate) fn issues_own_cert(&self) -> bool {
        self.own.is_some()
    }

    /// Removes the private directory of this node's own serving certificate (at shutdown).
    pub(crate) fn remove_own_cert(&self) {
        if let Some(dir) = self.own.as_ref().and_then(|own| own.file.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// The validity (Unix seconds) of this node's own serving certificate, read from its file.
    fn own_validity(&self) -> Option<OwnValidity> {
        let text = std::fs::read_to_string(&self.own.as_ref()?.file).ok()?;
        let facts = gatehouse_shared::x509::check_key_pair(&text, &text).ok()?;
        Some((facts.not_before, facts.not_after, facts.issuer))
    }

    /// Issues this node's own serving certificate (a new key each time) from
    /// [`own_signer`](Self::own_signer) and writes it; returns its validity (Unix seconds) and
    /// issuer. `None` without `--cluster-cert auto`.
    pub(crate) fn write_own_cert(&self) -> Option<Result<OwnValidity, String>> {
        let own = self.own.as_ref()?;
        let ca = self.own_signer();
        Some(
            ca.issue_server(&own.names, self.settings.lifetime)
                .and_then(|(pem, not_before, not_after)| {
                    write_private_file(&own.file, pem.as_bytes())
                        .map_err(|e| e.to_string())
                        .map(|()| (not_before, not_after, ca.issuer().to_owned()))
                }),
        )
    }

    /// The CA to sign this node's own certificate with: the last CA of the bundle whose key this
    /// node holds (the old one during a rotation: data planes that have not renewed yet trust
    /// only it; the new one once `--finish` removed the old one), else the current CA.
    fn own_signer(&self) -> Arc<ClusterCa> {
        let (ca, bundle) = self.current();
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let subjects: Vec<String> = gatehouse_shared::x509::parse_certificates(&bundle)
            .unwrap_or_default()
            .iter()
            .filter_map(|der| gatehouse_shared::x509::cert_facts(der).ok())
            .map(|facts| facts.subject)
            .collect();
        subjects
            .iter()
            .rev()
            .find_map(|subject| {
                std::iter::once(&ca)
                    .chain(current.earlier.iter())
                    .find(|held| held.issuer() == subject)
            })
            .cloned()
            .unwrap_or(ca)
    }

    /// The CA to sign with and the bundle to hand out, reloaded first if the files changed.
    fn current(&self) -> (Arc<ClusterCa>, Arc<str>) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let (seen, readable) = fingerprint(&self.settings);
        if seen != current.seen {
            if !readable {
                tracing::warn!("cannot read the cluster CA files; keeping the current CA");
            } else {
                match load_ca(&self.settings, seen.clone()) {
                    Ok(mut loaded) => {
                        tracing::info!(issuer = %loaded.ca.issuer(), "cluster CA reloaded");
                        loaded.earlier = std::mem::take(&mut current.earlier);
                        loaded
                            .earlier
                            .retain(|ca| ca.issuer() != current.ca.issuer());
                        loaded.earlier.push(current.ca.clone());
                        // Only what a bundle could still name is worth keeping.
                        if loaded.earlier.len() > MAX_EARLIER_CAS {
                            loaded.earlier.remove(0);
                        }
                        *current = loaded;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the cluster CA files changed but cannot be used; keeping the current CA");
                    }
                }
                // A failed load is not retried until the files change again.
                current.seen = seen;
            }
        }
        (current.ca.clone(), current.bundle.clone())
    }

    /// Checks `csr` and signs data plane `node` a certificate (not recorded yet).
    fn sign(&self, csr: &[u8], node: Uuid) -> Result<Issued, CsrError> {
        self.current().0.issue(csr, node, self.settings.lifetime)
    }

    /// Records an issued certificate; fails closed (the certificate is then not handed out).
    async fn record(
        store: &Store,
        issued: &Issued,
        node: Uuid,
        token: Option<Uuid>,
    ) -> Result<(), Status> {
        store
            .record_certificate(&record_of(issued, node, token), unix_now())
            .await
            .map_err(|error| {
                tracing::warn!(%node, error = %error.detail(), "cannot record an issued certificate");
                Status::unavailable("the control plane cannot record the certificate; retry")
            })
    }

    /// A renewal for `node` (with the trust bundle to send along), asked over its open stream authenticated by the certificate
    /// `prior`; refused when `prior` is revoked (checked under the node's lock, see
    /// [`Store::record_renewal`]).
    pub(crate) async fn renew(
        &self,
        store: &Store,
        csr: &[u8],
        node: Uuid,
        prior: &str,
    ) -> Result<(Issued, Arc<str>), String> {
        let (ca, bundle) = self.current();
        let issued = ca
            .issue(csr, node, self.settings.lifetime)
            .map_err(|e| e.to_string())?;
        let record = record_of(&issued, node, None);
        match store.record_renewal(&record, prior, unix_now()).await {
            Ok(true) => Ok((issued, bundle)),
            Ok(false) => Err("this data plane's certificate is revoked".to_owned()),
            Err(error) => {
                tracing::warn!(%node, error = %error.detail(), "cannot record a renewed certificate");
                Err("the control plane cannot record the certificate; retry".to_owned())
            }
        }
    }
}

/// SHA-256 of the CA certificate and key files (`None`: unreadable), and whether both
/// could be read.
fn fingerprint(settings: &EnrolSettings) -> (Fingerprint, bool) {
    let seen: Fingerprint = [&settings.ca_cert, &settings.ca_key].map(|path| {
        std::fs::read(path)
            .ok()
            .map(|bytes| gatehouse_shared::x509::sha256_hex(&bytes))
    });
    let readable = seen.iter().all(Option::is_some);
    (seen, readable)
}

/// Loads the CA files of `settings`; `seen` is their fingerprint read just before.
fn load_ca(settings: &EnrolSettings, seen: Fingerprint) -> Result<Loaded, PkiError> {
    let ca = ClusterCa::load(&settings.ca_cert, &settings.ca_key, &settings.cluster_name)?;
    let bundle = std::fs::read_to_string(&settings.ca_cert).map_err(|source| PkiError::Read {
        path: settings.ca_cert.clone(),
        source,
    })?;
    Ok(Loaded {
        ca: Arc::new(ca),
        bundle: bundle.into(),
        seen,
        earlier: Vec::new(),
    })
}

/// What the store keeps of an issued certificate.
fn record_of(issued: &Issued, node: Uuid, token: Option<Uuid>) -> IssuedCert<'_> {
    IssuedCert {
        serial: &issued.serial,
        node_id: node,
        spiffe_id: &issued.spiffe_id,
        issuer: &issued.issuer,
        not_before: issued.not_before,
        not_after: issued.not_after,
        token_id: token,
    }
}

fn csr_status(error: CsrError) -> Status {
    match error {
        CsrError::Sign(reason) => {
            tracing::error!(%reason, "cannot sign a data-plane certificate");
            Status::internal("cannot sign the certificate")
        }
        other => Status::invalid_argument(other.to_string()),
    }
}

// === impl Failures ===

impl Failures {
    fn new(per_minute: u32) -> Self {
        Self {
            burst: f64::from(per_minute.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The budget of `bucket` refilled up to `now`.
    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.left + elapsed * self.burst / 60.0).min(self.burst)
    }

    /// Whether `ip` has attempts left.
    fn allowed(&self, ip: IpAddr, now: Instant) -> bool {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets
            .get(&ip)
            .is_none_or(|bucket| self.refilled(*bucket, now) >= 1.0)
    }

    /// Counts a refused attempt of `ip`.
    fn refused(&self, ip: IpAddr, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED_SOURCES {
            buckets.retain(|_, bucket| self.refilled(*bucket, now) < self.burst);
        }
        let left = buckets
            .get(&ip)
            .map_or(self.burst, |bucket| self.refilled(*bucket, now));
        buckets.insert(
            ip,
            Bucket {
                left: (left - 1.0).max(0.0),
                at: now,
            },
        );
    }
}

// === impl EnrolService ===

impl EnrolService {
    pub(crate) fn new(node: Arc<Node>, store: Arc<Store>, ca: Arc<Issuer>) -> Self {
        let failures = Arc::new(Failures::new(ca.settings.max_failures_per_minute));
        Self {
            node,
            store,
            ca,
            failures,
            turns: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_ENROLMENTS)),
        }
    }

    /// Refuses an address that used up its refused attempts.
    fn check_budget(&self, ip: IpAddr, peer: &str) -> Result<(), Status> {
        if self.failures.allowed(ip, Instant::now()) {
            Ok(())
        } else {
            tracing::debug!(%peer, "enrolment attempt refused unchecked: too many refused attempts from this address");
            Err(Status::resource_exhausted(
                "too many refused enrolment attempts from this address; retry in a minute",
            ))
        }
    }
}

/// The source address of a request (all unknown ones share one budget).
fn source_ip<T>(request: &Request<T>) -> IpAddr {
    request
        .remote_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| addr.ip())
}

#[tonic::async_trait]
impl Enrolment for EnrolService {
    async fn enrol(
        &self,
        request: Request<EnrolRequest>,
    ) -> Result<Response<EnrolResponse>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        let ip = source_ip(&request);
        self.check_budget(ip, &peer)?;
        let Ok(Ok(_turn)) =
            tokio::time::timeout(ENROL_QUEUE_WAIT, self.turns.clone().acquire_owned()).await
        else {
            return Err(Status::resource_exhausted(
                "the control plane is busy enrolling other data planes; retry",
            ));
        };
        let request = request.into_inner();
        let hostname: String = request.hostname.chars().take(256).collect();
        let refuse = |reason: &str, status: Status| {
            if matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
            ) {
                self.failures.refused(ip, Instant::now());
            }
            tracing::warn!(%peer, %hostname, node_id = %request.node_id.chars().take(64).collect::<String>(), %reason, "enrolment refused");
            status
        };
        let Ok(node) = Uuid::parse_str(request.node_id.trim()) else {
            return Err(refuse(
                "node_id is not a UUID",
                Status::invalid_argument("node_id is not a UUID"),
            ));
        };
        // The CSR first: a bad request consumes no token use.
        let issued = match self.ca.sign(&request.csr, node) {
            Ok(issued) => issued,
            Err(error) => {
                let reason = error.to_string();
                return Err(refuse(&reason, csr_status(error)));
            }
        };
        let hash = crate::tokens::hash(&request.token);
        let token = match self.store.use_token(&hash, unix_now()).await {
            Ok(Ok(token)) => token,
            Ok(Err(why)) => {
                return Err(refuse(
                    &format!("bootstrap token {why}"),
                    Status::permission_denied(
                        "bootstrap token refused (unknown, expired, used up or revoked)",
                    ),
                ));
            }
            Err(error) => {
                // Fail closed: a token that cannot be checked is not accepted.
                return Err(refuse(
                    &format!("cannot check the token: {}", error.detail()),
                    Status::unavailable("the control plane cannot check the token; retry"),
                ));
            }
        };
        Issuer::record(&self.store, &issued, node, Some(token.id)).await?;
        tracing::info!(
            %peer,
            %hostname,
            node_id = %node,
            token = %token.id,
            serial = %issued.serial,
            spiffe_id = %issued.spiffe_id,
            not_after = issued.not_after,
            control_plane = %self.node.id,
            "data plane enrolled"
        );
        Ok(Response::new(EnrolResponse {
            certificate: issued.cert_pem,
        }))
    }

    async fn trust_bundle(
        &self,
        request: Request<TrustBundleRequest>,
    ) -> Result<Response<TrustBundleResponse>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        self.check_budget(source_ip(&request), &peer)?;
        tracing::debug!(%peer, "cluster CA bundle fetched");
        Ok(Response::new(TrustBundleResponse {
            ca_bundle: self.ca.current().1.to_string(),
        }))
    }
}

/// `--cluster-cert auto`: renews this node's serving certificate two thirds into its lifetime
/// (`validity`, Unix seconds), and after a failure a tenth of what is left later (1 to 60 s),
/// and reloads the listener's TLS configuration: new connections get the new certificate,
/// open streams keep going.
pub(crate) async fn renew_own_cert(ca: Arc<Issuer>, tls: Tls) {
    // The certificate `load_tls` wrote; renewed at once if it cannot be read.
    let mut validity = ca.own_validity().unwrap_or((0, 0, String::new()));
    let mut due = renew_at(validity.0, validity.1);
    loop {
        let wait = u64::try_from(due - unix_now()).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(wait).min(OWN_CA_CHECK)).await;
        // Renewed early when the CA it should come from changed (end of a CA rotation).
        let moved = ca.own_signer().issuer() != validity.2;
        if unix_now() < due && !moved {
            continue;
        }
        let outcome = match ca.write_own_cert() {
            None => return,
            Some(outcome) => outcome.and_then(|issued| {
                tls.reload_if_changed()
                    .map(|_| issued)
                    .map_err(|e| format!("the new certificate cannot be used: {e}"))
            }),
        };
        match outcome {
            Ok(issued) => {
                validity = issued;
                due = renew_at(validity.0, validity.1);
                tracing::info!(not_after = validity.1, issuer = %validity.2, "control plane certificate renewed");
            }
            Err(error) => {
                let now = unix_now();
                let retry = ((validity.1 - now) / 10).clamp(1, 60);
                due = now + retry;
                tracing::warn!(%error, retry_in_secs = retry, "cannot renew the control plane certificate; the current one stays");
            }
        }
    }
}

/// Ends this node's streams whose certificate is revoked, every [`REVOCATION_POLL`]; warns about
/// streams whose certificate nears expiry without a renewal.
pub(crate) async fn watch_revocations(node: Arc<Node>, store: Arc<Store>) {
    let mut ticks = tokio::time::interval(REVOCATION_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut tick: u32 = 0;
    loop {
        ticks.tick().await;
        tick = tick.wrapping_add(1);
        if tick.is_multiple_of(EXPIRY_CHECK_EVERY) {
            node.warn_expiring(unix_now());
        }
        if node.connected() == 0 {
            continue;
        }
        if tick.is_multiple_of(RENEWAL_CHECK_EVERY) {
            match store.renewal_requests().await {
                Ok(requests) => {
                    node.ask_renewals(&requests);
                }
                Err(error) => {
                    tracing::debug!(error = %error.detail(), "cannot read the renewal requests");
                }
            }
        }
        match store.revoked_serials(unix_now()).await {
            Ok(serials) => {
                failing = false;
                let serials: HashSet<String> = serials.into_iter().collect();
                let ended =
                    node.end_streams_with(&serials, "the data plane's certificate was revoked");
                if ended > 0 {
                    tracing::warn!(streams = ended, "ended streams of revoked certificates");
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(error = %error.detail(), "cannot read the revoked certificates; open streams are checked again when the database answers, new streams are refused");
                }
                failing = true;
            }
        }
    }
}
