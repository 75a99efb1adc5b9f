//! The ACME client of the control plane (the `acme` plugin; Kong's `kong/plugins/acme`).
//!
//! Certificates are ordered here, once for the whole cluster, and stored as ordinary
//! `certificates` rows with their `snis` (tagged `managed-by-acme` and `acme:<host>`), so they
//! reach every data plane through the normal snapshot. A renewal replaces the same row (same
//! id, same SNI): data planes swap the certificate in with their configuration, and no
//! handshake fails.
//!
//! One order per name at a time across every replica: an attempt first takes the name's lease
//! in `acme_names` (see `store::acme`), which expires if the replica dies mid-order. HTTP-01
//! (or TLS-ALPN-01) challenges travel in the snapshot (`Config.acme_challenges`): the client
//! publishes them, waits until every connected data plane has applied that version (or
//! [`PROPAGATION_TIMEOUT`]), then tells the CA to validate.
//!
//! A background task looks every `--acme-renew-interval` for names due: without a
//! certificate, within `renew_threshold_days` of expiry, asked to renew (`PATCH /acme`), or
//! past their backoff after a failure (`fail_backoff_minutes`). A data plane asking for a
//! certificate on demand wakes it at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::AcmeSettings;
use crate::dns_update::DnsUpdater;
use crate::error::ApiError;
use crate::store::{AcmeName, NewChallenge, Outcome, Selector, Store, unix_now};

/// Longest wait for the data planes to apply a version carrying challenges.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a published challenge is kept at most.
const CHALLENGE_TTL: i64 = 300;
/// Most names data planes may ask for on demand per minute, fleet-wide.
const ON_DEMAND_PER_MINUTE: i64 = 20;
/// Registry rows younger than this count as connected data planes (the cluster's lease).
const DP_LEASE: i64 = crate::cluster::LEASE;
/// TTL of DNS-01 records, in seconds (short: they live for one validation).
const DNS_TTL: u32 = 60;
/// Tag of every certificate this client manages (Kong's).
pub(crate) const MANAGED_TAG: &str = "managed-by-acme";

/// The `acme` plugin's configuration, as the schema stores it (defaults filled).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AcmeConfig {
    account_email: String,
    api_uri: String,
    #[serde(default)]
    tos_accepted: bool,
    eab_kid: Option<String>,
    eab_hmac_key: Option<String>,
    cert_type: String,
    rsa_key_size: f64,
    renew_threshold_days: f64,
    #[serde(default)]
    domains: Option<Vec<String>>,
    #[serde(default)]
    allow_any_domain: bool,
    fail_backoff_minutes: f64,
}

/// Counters of this replica's ACME client (the status listener's `/status`).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Certificates issued (new or renewed).
    pub(crate) issued: AtomicU64,
    /// Attempts that failed.
    pub(crate) failed: AtomicU64,
    /// At the last pass: names whose last attempt failed.
    pub(crate) names_failing: AtomicU64,
    /// At the last pass: certificates expired and not renewed.
    pub(crate) expired: AtomicU64,
}

/// The control plane's ACME client.
#[derive(Debug)]
pub(crate) struct Acme {
    store: Arc<Store>,
    owner: Uuid,
    settings: AcmeSettings,
    /// Writes DNS-01 records (`--acme-dns-*`); `None`: wildcard names cannot be ordered.
    dns: Option<DnsUpdater>,
    wake: Notify,
    /// What this replica did.
    pub(crate) stats: Stats,
}

/// Why an attempt did not happen or failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcmeError {
    /// No `acme` plugin, or it is disabled.
    #[error("the acme plugin is not configured")]
    NotConfigured,
    /// Another replica is ordering this name.
    #[error("an order for this name is already running")]
    Busy,
    /// The store failed.
    #[error("{}", .0.detail())]
    Store(#[from] ApiError),
    /// The CA or the validation failed.
    #[error("{0}")]
    Order(String),
}

// === impl AcmeConfig ===

impl AcmeConfig {
    /// The enabled plugin's configuration, if any.
    pub(crate) async fn load(store: &Store) -> Result<Option<Self>, ApiError> {
        match store.acme_plugin().await? {
            Some((config, true)) => serde_json::from_value(config)
                .map(Some)
                .map_err(|e| ApiError::Internal(format!("stored acme config: {e}"))),
            _ => Ok(None),
        }
    }

    /// Whether `host` is one of `domains` (exact, or under a `*.` suffix), as Kong's
    /// `build_domain_matcher`.
    pub(crate) fn in_domains(&self, host: &str) -> bool {
        self.domains.iter().flatten().any(|pattern| {
            let pattern = pattern.to_ascii_lowercase();
            match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => pattern == host,
            }
        })
    }

    fn allows(&self, host: &str) -> bool {
        self.allow_any_domain || self.in_domains(host)
    }

    fn backoff_seconds(&self) -> i64 {
        (self.fail_backoff_minutes.max(0.0) * 60.0) as i64
    }

    fn threshold_seconds(&self) -> i64 {
        (self.renew_threshold_days.max(0.0) * 86_400.0) as i64
    }
}

// === impl Acme ===

impl Acme {
    /// A client for this replica (`owner` is the node id, the lease holder).
    pub(crate) fn new(
        store: Arc<Store>,
        owner: Uuid,
        settings: AcmeSettings,
        dns: Option<DnsUpdater>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            owner,
            settings,
            dns,
            wake: Notify::new(),
            stats: Stats::default(),
        })
    }

    /// Runs the renewal loop until the process ends.
    pub(crate) fn spawn(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(error) = this.pass().await {
                    tracing::warn!(%error, "acme: renewal pass failed");
                }
                tokio::select! {
                    () = this.wake.notified() => {}
                    () = tokio::time::sleep(this.settings.renew_interval) => {}
                }
            }
        });
    }

    /// `(names failing, certificates expired)` as the last pass saw them.
    pub(crate) fn names_summary(&self) -> (u64, u64) {
        (
            self.stats.names_failing.load(Ordering::Relaxed),
            self.stats.expired.load(Ordering::Relaxed),
        )
    }

    /// Wakes the renewal loop (something became due).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// One look at every name: orders what is due, logs what expired.
    async fn pass(&self) -> Result<(), AcmeError> {
        let now = unix_now();
        self.store.acme_sweep(now).await?;
        let Some(config) = AcmeConfig::load(&self.store).await? else {
            return Ok(());
        };
        let names = self.store.acme_names().await?;
        let failing = names.iter().filter(|n| n.failures > 0).count();
        let expired = names
            .iter()
            .filter(|n| n.not_after.is_some_and(|t| t <= now))
            .count();
        self.stats.names_failing.store(
            u64::try_from(failing).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.stats.expired.store(
            u64::try_from(expired).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let ari = self.renewal_windows_open(&config, &names, now).await;
        for name in names {
            if name.not_after.is_some_and(|t| t <= now) {
                tracing::error!(
                    host = %name.host,
                    failures = name.failures,
                    last_error = name.last_error.as_deref().unwrap_or(""),
                    "acme: certificate expired and not renewed"
                );
            }
            let ari_due = name.next_attempt_at <= now && ari.contains(&name.host);
            if !is_due(&name, &config, now) && !ari_due {
                continue;
            }
            match self.order(&name.host, &config).await {
                Ok(_) | Err(AcmeError::Busy) => {}
                Err(error) => {
                    tracing::warn!(host = %name.host, %error, "acme: attempt failed");
                }
            }
        }
        Ok(())
    }

    /// ACME Renewal Information (RFC 9773): the names whose certificate's suggested renewal
    /// window has started, per the CA. Empty when the CA does not offer ARI or cannot be asked.
    async fn renewal_windows_open(
        &self,
        config: &AcmeConfig,
        names: &[AcmeName],
        now: i64,
    ) -> std::collections::HashSet<String> {
        let mut open = std::collections::HashSet::new();
        let certified: Vec<(&str, &str)> = names
            .iter()
            .filter(|n| !is_due(n, config, now))
            .filter_map(|n| Some((n.host.as_str(), n.cert.as_deref()?)))
            .collect();
        if certified.is_empty() {
            return open;
        }
        let account = match self.account(config).await {
            Ok(account) => account,
            Err(error) => {
                tracing::debug!(%error, "acme: renewal information not asked");
                return open;
            }
        };
        for (host, pem) in certified {
            let Some(id) = certificate_identifier(pem) else {
                continue;
            };
            match account.renewal_info(&id).await {
                Ok((info, _)) => {
                    if info.suggested_window.start.unix_timestamp() <= now {
                        tracing::info!(%host, "acme: the CA suggests renewing now (ARI)");
                        open.insert(host.to_owned());
                    }
                }
                // The CA offers no ARI: the threshold alone decides.
                Err(instant_acme::Error::Unsupported(_)) => break,
                Err(error) => {
                    tracing::debug!(%host, error = %acme_error(&error), "acme: renewal information");
                }
            }
        }
        open
    }

    /// A data plane saw a handshake for `server_name` without a certificate: record the name
    /// (once for the whole fleet) if the plugin allows it, within the rate limit.
    pub(crate) async fn wanted(&self, server_name: &str) -> Result<(), AcmeError> {
        let host = server_name.trim_end_matches('.').to_ascii_lowercase();
        if gatehouse_shared::checks::host(&host).is_err() || host.starts_with('*') {
            return Err(AcmeError::Order(format!("not a host name: {host:?}")));
        }
        let Some(config) = AcmeConfig::load(&self.store).await? else {
            return Err(AcmeError::NotConfigured);
        };
        if !config.allows(&host) {
            return Err(AcmeError::Order(format!("{host} is not allowed on demand")));
        }
        if self.store.acme_name(&host).await?.is_some() {
            return Ok(());
        }
        let now = unix_now();
        let recent = self
            .store
            .acme_requested_since("on-demand", now - 60)
            .await?;
        if recent >= ON_DEMAND_PER_MINUTE {
            return Err(AcmeError::Order(format!(
                "on-demand rate limit reached ({ON_DEMAND_PER_MINUTE} names a minute)"
            )));
        }
        if self.store.acme_want(&host, "on-demand", now).await? {
            tracing::info!(%host, "acme: certificate wanted on demand");
            self.wake();
        }
        Ok(())
    }

    /// Orders a certificate for `host` now (`POST /acme`), recording the name first.
    pub(crate) async fn create(&self, host: &str) -> Result<Uuid, AcmeError> {
        let Some(config) = AcmeConfig::load(&self.store).await? else {
            return Err(AcmeError::NotConfigured);
        };
        self.store.acme_want(host, "admin", unix_now()).await?;
        self.order(host, &config).await
    }

    /// One attempt for `host` under its lease; records the outcome.
    async fn order(&self, host: &str, config: &AcmeConfig) -> Result<Uuid, AcmeError> {
        let now = unix_now();
        // The lease outlives the attempt (bounded by the order timeout): only a replica that
        // died loses it.
        let timeout = self.settings.order_timeout;
        let lease = i64::try_from(timeout.as_secs().saturating_mul(2)).unwrap_or(i64::MAX);
        if !self
            .store
            .acme_lease(host, self.owner, now, now.saturating_add(lease))
            .await?
        {
            return Err(AcmeError::Busy);
        }
        tracing::info!(%host, "acme: ordering a certificate");
        let result = match tokio::time::timeout(timeout, self.attempt(host, config)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "the order did not complete within {} s",
                timeout.as_secs()
            )),
        };
        let now = unix_now();
        match result {
            Ok(certificate_id) => {
                self.store
                    .acme_finish(host, self.owner, Outcome::Issued { certificate_id }, now)
                    .await?;
                self.stats.issued.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%host, %certificate_id, "acme: certificate issued");
                Ok(certificate_id)
            }
            Err(error) => {
                let retry_at = now + config.backoff_seconds();
                self.store
                    .acme_finish(
                        host,
                        self.owner,
                        Outcome::Failed {
                            error: &error,
                            retry_at,
                        },
                        now,
                    )
                    .await?;
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%host, %error, retry_at, "acme: order failed");
                Err(AcmeError::Order(error))
            }
        }
    }

    /// The order itself, then the removal of the DNS-01 records it wrote (whatever happened).
    async fn attempt(&self, host: &str, config: &AcmeConfig) -> Result<Uuid, String> {
        let mut records = Vec::new();
        let result = self.order_once(host, config, &mut records).await;
        if let Some(dns) = &self.dns {
            for (fqdn, value) in &records {
                if let Err(error) = dns.remove_txt(fqdn, value).await {
                    tracing::warn!(%fqdn, %error, "acme: cannot remove a DNS-01 record");
                }
            }
        }
        result
    }

    /// Account, order, challenge, validation, finalization, storage. DNS-01 records written
    /// are added to `records` (name, value).
    async fn order_once(
        &self,
        host: &str,
        config: &AcmeConfig,
        records: &mut Vec<(String, String)>,
    ) -> Result<Uuid, String> {
        let account = self.account(config).await?;
        let identifiers = [Identifier::Dns(host.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| format!("new order: {}", acme_error(&e)))?;
        self.store
            .acme_order_started(host, order.url())
            .await
            .map_err(|e| e.detail())?;
        tracing::info!(%host, order = %order.url(), "acme: order created");
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {}", acme_error(&e)))?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(format!("authorization is {other:?}")),
            }
            if authz.wildcard {
                let dns = self.dns.as_ref().ok_or(
                    "wildcard names need DNS-01: set --acme-dns-server, --acme-dns-zone and \
                     --acme-dns-tsig-key-file",
                )?;
                let mut challenge = authz
                    .challenge(ChallengeType::Dns01)
                    .ok_or("the CA offers no dns-01 challenge for a wildcard name")?;
                let base = host.trim_start_matches("*.");
                let fqdn = format!("_acme-challenge.{base}");
                let value = challenge.key_authorization().dns_value();
                dns.add_txt(&fqdn, &value, DNS_TTL)
                    .await
                    .map_err(|e| format!("DNS-01 record: {e}"))?;
                records.push((fqdn, value));
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| format!("challenge: {}", acme_error(&e)))?;
                continue;
            }
            let (preferred, other) = if self.settings.prefer_tls_alpn {
                (ChallengeType::TlsAlpn01, ChallengeType::Http01)
            } else {
                (ChallengeType::Http01, ChallengeType::TlsAlpn01)
            };
            let kind = if authz.challenges.iter().any(|c| c.r#type == preferred) {
                preferred
            } else {
                other
            };
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or("the CA offers neither an http-01 nor a tls-alpn-01 challenge")?;
            let published = NewChallenge {
                id: Uuid::now_v7(),
                kind: if kind == ChallengeType::Http01 {
                    "http-01"
                } else {
                    "tls-alpn-01"
                },
                domain: host.to_owned(),
                token: challenge.token.clone(),
                key_authorization: challenge.key_authorization().as_str().to_owned(),
                expires_at: unix_now() + CHALLENGE_TTL,
            };
            self.publish(host, &published).await?;
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge: {}", acme_error(&e)))?;
        }
        // A CA answers in well under a second once validation reached a data plane: poll
        // soon, then back off (the order timeout bounds the whole).
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .backoff(1.5)
            .timeout(self.settings.order_timeout);
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| format!("validation: {}", acme_error(&e)))?;
        if status != OrderStatus::Ready {
            return Err(self.why_invalid(&mut order, status).await);
        }
        let key = certificate_key(config)?;
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])
            .map_err(|e| format!("certificate request: {e}"))?;
        // The name as common name too (Kong's API shows the CN as `host`).
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host.to_owned());
        let csr = params
            .serialize_request(&key)
            .map_err(|e| format!("certificate request: {e}"))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| format!("finalize: {}", acme_error(&e)))?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| format!("certificate download: {}", acme_error(&e)))?;
        self.store_certificate(host, &chain, &key.serialize_pem())
            .await
            .map_err(|e| format!("storing the certificate: {}", e.detail()))
    }

    /// What the CA says about an order that did not become ready.
    async fn why_invalid(&self, order: &mut instant_acme::Order, status: OrderStatus) -> String {
        let mut reasons = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(authz)) = authorizations.next().await {
            for challenge in &authz.challenges {
                if let Some(problem) = &challenge.error {
                    reasons.push(problem_text(problem));
                }
            }
        }
        if reasons.is_empty() {
            format!("the order is {status:?}")
        } else {
            format!("validation failed: {}", reasons.join("; "))
        }
    }

    /// `test_http_challenge_flow`: publishes an HTTP-01 answer for `host` that no CA asked
    /// for, waits until the data planes run it, and fetches it as a CA would
    /// (`http://<host>:<--acme-http-port>/.well-known/acme-challenge/<token>`). Orders nothing.
    pub(crate) async fn check_http_challenge_flow(&self, host: &str) -> Result<(), String> {
        let random =
            || base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Uuid::new_v4().as_bytes());
        let token = random();
        let key_authorization = format!("{token}.{}", random());
        let challenge = NewChallenge {
            id: Uuid::now_v7(),
            kind: "http-01",
            domain: host.to_owned(),
            token: token.clone(),
            key_authorization: key_authorization.clone(),
            expires_at: unix_now() + CHALLENGE_TTL,
        };
        self.publish(host, &challenge).await?;
        let url = format!(
            "http://{host}:{}/.well-known/acme-challenge/{token}",
            self.settings.http_port
        );
        let fetched = async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("HTTP client: {e}"))?;
            let response = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("cannot reach {url}: {e}"))?;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if status == http::StatusCode::OK && body.trim_end() == key_authorization {
                return Ok(());
            }
            let shown: String = body.chars().take(200).collect();
            Err(format!(
                "{url} is not answered by a data plane's challenge responder: status {}, \
                 body \"{shown}\"",
                status.as_u16()
            ))
        }
        .await;
        if let Err(error) = self.store.acme_unpublish(&[challenge.id]).await {
            tracing::warn!(error = %error.detail(), "acme: cannot remove the test challenge");
        }
        fetched
    }

    /// Publishes `challenge` in the configuration and waits until the data planes run it.
    async fn publish(&self, host: &str, challenge: &NewChallenge) -> Result<(), String> {
        let version = self
            .store
            .acme_publish(host, std::slice::from_ref(challenge))
            .await
            .map_err(|e| e.detail())?;
        self.await_propagation(version).await;
        Ok(())
    }

    /// Waits until every connected data plane has applied `version`, at most
    /// [`PROPAGATION_TIMEOUT`] (the CA's validation may reach any of them).
    async fn await_propagation(&self, version: i64) {
        let deadline = tokio::time::Instant::now() + PROPAGATION_TIMEOUT;
        let mut delay = Duration::from_millis(50);
        loop {
            match self
                .store
                .applied_everywhere(version, unix_now(), DP_LEASE)
                .await
            {
                Ok(true) => return,
                Ok(false) => {}
                Err(error) => tracing::debug!(error = %error.detail(), "acme: fleet state"),
            }
            if tokio::time::Instant::now() + delay > deadline {
                tracing::warn!(
                    version,
                    "acme: not every data plane applied the challenge in time; validating anyway"
                );
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// The account of the configured e-mail at the configured CA: stored, else created.
    async fn account(&self, config: &AcmeConfig) -> Result<Account, String> {
        let builder = || {
            match &self.settings.ca_bundle {
                Some(path) => Account::builder_with_root(path),
                None => Account::builder(),
            }
            .map_err(|e| format!("ACME HTTP client: {}", acme_error(&e)))
        };
        let stored = self
            .store
            .acme_account(&config.api_uri, &config.account_email)
            .await
            .map_err(|e| e.detail())?;
        if let Some(stored) = stored {
            let credentials: AccountCredentials = serde_json::from_value(stored)
                .map_err(|_| "the stored ACME account cannot be read".to_owned())?;
            return builder()?
                .from_credentials(credentials)
                .await
                .map_err(|e| format!("account: {}", acme_error(&e)));
        }
        let eab = match (&config.eab_kid, &config.eab_hmac_key) {
            (Some(kid), Some(key)) => {
                let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(key.trim_end_matches('='))
                    .map_err(|_| "eab_hmac_key is not base64url".to_owned())?;
                Some(ExternalAccountKey::new(kid.clone(), &key))
            }
            _ => None,
        };
        let contact = format!("mailto:{}", config.account_email);
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &[&contact],
                    terms_of_service_agreed: config.tos_accepted,
                    only_return_existing: false,
                },
                config.api_uri.clone(),
                eab.as_ref(),
            )
            .await
            .map_err(|e| format!("new account: {}", acme_error(&e)))?;
        let credentials = serde_json::to_value(&credentials)
            .map_err(|_| "the ACME account cannot be stored".to_owned())?;
        let stored = self
            .store
            .save_acme_account(
                &config.api_uri,
                &config.account_email,
                &credentials,
                unix_now(),
            )
            .await
            .map_err(|e| e.detail())?;
        if stored == credentials {
            tracing::info!(api_uri = %config.api_uri, id = account.id(), "acme: account created");
            return Ok(account);
        }
        // Another replica created one first: use the stored one.
        let credentials: AccountCredentials = serde_json::from_value(stored)
            .map_err(|_| "the stored ACME account cannot be read".to_owned())?;
        builder()?
            .from_credentials(credentials)
            .await
            .map_err(|e| format!("account: {}", acme_error(&e)))
    }

    /// Stores the issued chain: a new `certificates` row with its SNI, or the same row
    /// replaced in place at renewal.
    async fn store_certificate(
        &self,
        host: &str,
        chain: &str,
        key: &str,
    ) -> Result<Uuid, ApiError> {
        let mut input = Map::new();
        input.insert("cert".into(), Value::from(chain));
        input.insert("key".into(), Value::from(key));
        input.insert("snis".into(), json!([host]));
        input.insert("tags".into(), json!([MANAGED_TAG, format!("acme:{host}")]));
        let existing = self
            .store
            .acme_name(host)
            .await?
            .and_then(|name| name.certificate_id);
        let stored = match existing {
            Some(id) => {
                self.store
                    .upsert("certificates", &Selector::Id(id), input, None)
                    .await?
            }
            None => self.store.create("certificates", input, None).await?,
        };
        stored
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| ApiError::Internal("stored certificate without id".into()))
    }
}

/// Whether `name` is due for an attempt at `now`.
fn is_due(name: &AcmeName, config: &AcmeConfig, now: i64) -> bool {
    if name.next_attempt_at > now {
        return false;
    }
    match name.not_after {
        None => true,
        Some(not_after) => {
            name.renew_after.is_some_and(|t| t <= now)
                || not_after.saturating_sub(now) <= config.threshold_seconds()
        }
    }
}

/// The RFC 9773 identifier of the first certificate of `pem`: its authority key identifier
/// and serial number; `None` without an AKI.
fn certificate_identifier(pem: &str) -> Option<instant_acme::CertificateIdentifier<'static>> {
    use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
    let der = gatehouse_shared::x509::parse_certificates(pem)
        .ok()?
        .into_iter()
        .next()?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let aki = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0)
            }
            _ => None,
        })?;
    Some(
        instant_acme::CertificateIdentifier::new(
            rustls::pki_types::Der::from_slice(aki),
            rustls::pki_types::Der::from_slice(cert.raw_serial()),
        )
        .into_owned(),
    )
}

/// A fresh private key for a certificate, per `cert_type` and `rsa_key_size`.
fn certificate_key(config: &AcmeConfig) -> Result<rcgen::KeyPair, String> {
    let key = if config.cert_type == "ecc" {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
    } else {
        let size = match config.rsa_key_size as i64 {
            2048 => rcgen::RsaKeySize::_2048,
            3072 => rcgen::RsaKeySize::_3072,
            _ => rcgen::RsaKeySize::_4096,
        };
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size)
    };
    key.map_err(|e| format!("cannot generate the certificate key: {e}"))
}

/// An instant-acme error as text: the CA's problem document when there is one.
fn acme_error(error: &instant_acme::Error) -> String {
    match error {
        instant_acme::Error::Api(problem) => problem_text(problem),
        other => other.to_string(),
    }
}

fn problem_text(problem: &instant_acme::Problem) -> String {
    let kind = problem
        .r#type
        .as_deref()
        .map(|t| t.trim_start_matches("urn:ietf:params:acme:error:"))
        .unwrap_or("error");
    match &problem.detail {
        Some(detail) => format!("{kind}: {detail}"),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(domains: &[&str]) -> AcmeConfig {
        serde_json::from_value(json!({
            "account_email": "a@example.com",
            "api_uri": "https://ca.test/dir",
            "cert_type": "ecc",
            "rsa_key_size": 4096,
            "renew_threshold_days": 14,
            "domains": domains,
            "fail_backoff_minutes": 5,
        }))
        .unwrap()
    }

    #[test]
    fn renewal_information_identifies_a_certificate_by_aki_and_serial() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![0xab; 20]);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0x02, 0x03]));
        leaf.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = leaf.signed_by(&key, &issuer).unwrap().pem();
        let id = certificate_identifier(&pem).unwrap();
        // base64url of 20 bytes 0xab, then of the serial 01 02 03.
        assert_eq!(
            id.to_string(),
            format!("{}.AQID", "q6urq6urq6urq6urq6urq6urq6s")
        );
        assert!(certificate_identifier("not a certificate").is_none());
    }

    #[test]
    fn domains_match_exact_names_and_wildcard_suffixes() {
        let config = config(&["a.test", "*.b.test"]);
        assert!(config.in_domains("a.test"));
        assert!(config.in_domains("x.b.test"));
        assert!(config.in_domains("y.x.b.test"));
        assert!(!config.in_domains("b.test"));
        assert!(!config.in_domains("xb.test"));
        assert!(!config.in_domains("x.a.test"));
    }

    #[test]
    fn due_names() {
        let config = config(&[]);
        let now = 1_000_000_000;
        let mut name = AcmeName {
            host: "a.test".into(),
            certificate_id: None,
            requested_by: "admin".into(),
            failures: 0,
            last_error: None,
            last_attempt_at: None,
            last_success_at: None,
            next_attempt_at: 0,
            cert: None,
            not_after: None,
            renew_after: None,
        };
        assert!(is_due(&name, &config, now), "no certificate yet");
        name.next_attempt_at = now + 1;
        assert!(!is_due(&name, &config, now), "backing off");
        name.next_attempt_at = 0;
        name.not_after = Some(now + 15 * 86_400);
        assert!(!is_due(&name, &config, now), "outside the threshold");
        name.not_after = Some(now + 13 * 86_400);
        assert!(is_due(&name, &config, now), "within the threshold");
        name.not_after = Some(now + 30 * 86_400);
        name.renew_after = Some(now);
        assert!(is_due(&name, &config, now), "renewal asked");
    }
}
