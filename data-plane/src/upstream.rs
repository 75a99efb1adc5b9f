//! TLS to upstreams (certificate paths 3 and 4): the hyper clients of `https` and `grpcs`
//! services, one per distinct TLS setting and server name, each with its own pool.
//!
//! # What a service's TLS setting is
//! - **Verification**: `service.tls_verify`, else [`UpstreamTlsSettings::verify`] (on by
//!   default, unlike Kong). With verification the chain must lead to a trusted CA, be within
//!   its validity dates, allow server authentication, and match the server name (DNS SANs,
//!   or IP SANs when the name is an IP address).
//! - **Depth**: `service.tls_verify_depth`, else [`UpstreamTlsSettings::verify_depth`]: at
//!   most that many intermediate certificates between the leaf and the trusted CA (OpenSSL's
//!   verify depth, as nginx and Kong apply it; the exact rule is in `upstream/verify.rs`).
//! - **Trust store**: the service's `ca_certificates` (an empty list trusts nothing), else
//!   [`UpstreamTlsSettings::trusted_ca`] (`--upstream-trusted-ca`), else the built-in
//!   public roots (webpki-roots, Mozilla's list).
//! - **Client certificate**, Kong's precedence: `service.client_certificate`, else the
//!   `client_certificate` of the upstream the service's host names, else
//!   [`UpstreamTlsSettings::client_certificate`] (`--client-ssl-cert`), else none. The
//!   certificate's `cert_alt` pair is presented instead of `cert` when the upstream accepts
//!   no signature scheme of the main key.
//! - **ALPN**: `h2` for `grpcs` (HTTP/2 client), `http/1.1` for `https`.
//!
//! # Keys, clients and pools
//! A setting is identified by a [`SettingKey`]: verify on/off, depth, the trust store (the
//! CA ids **and the SHA-256 of each CA's DER**, or "global", or "system") and the client
//! certificate (its id **and the SHA-256 of its chains**, or "global"). Content is part of
//! the key on purpose: when a certificate or CA changes at the control plane under the same
//! id, the key changes, so new connections use the new one while the old pool drains (Kong
//! shipped this bug twice: #9634, #13165). With verification off, the trust store and depth
//! are left out (they change nothing).
//!
//! Each (key, ALPN) gets one rustls `ClientConfig` (its own session cache), and each
//! (key, ALPN, server name) one hyper-util [`Client`], i.e. one connection pool: a connection
//! made with one identity, trust store or SNI is never reused for another. The pool itself
//! is keyed by the peer address of the request URI.
//!
//! # Caches
//! - Per runtime ([`UpstreamTls::prepare`], or the first request that sees the runtime): the
//!   setting of every `https`/`grpcs` service is resolved once (certificate lookups,
//!   digests), so a request does a hash lookup, not PEM or hashing work. A request still
//!   running on an older runtime resolves its one service on the fly.
//! - The clients live in a cache that survives runtime swaps: an unrelated configuration
//!   change keeps every warm pool. When a newer runtime is prepared, the clients of keys it
//!   no longer uses are dropped (requests in flight keep theirs until they end). Clients
//!   unused for [`UpstreamTlsSettings::pool_idle_timeout`] (their pools are empty by then)
//!   are swept, and the cache holds at most [`UpstreamTlsSettings::max_clients`] clients
//!   (with `preserve_host` the server name comes from the client's Host header, so the
//!   number of names is not bounded by the configuration).
//!
//! # Errors
//! Failures are [`UpstreamTlsError`]s worded for operators (expired, unknown issuer, name
//! mismatch, depth exceeded, client certificate required or refused, ...). A connect or
//! handshake failure reaches the caller inside hyper-util's error; [`UpstreamTlsError::find`]
//! digs it out. The connector never falls back to plaintext, and no error or log line
//! carries key material.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use uuid::Uuid;

use gatehouse_shared::model;
use gatehouse_shared::x509;

use crate::runtime::{Part, PerRuntime, Runtime, TlsCertificate};
use connect::{ALPN_H2, ALPN_HTTP11};
use error::FailureContext;
use verify::{AcceptAnyCertificate, ClientIdentity, DepthLimitedVerifier};

mod connect;
mod error;
mod verify;

#[cfg(test)]
mod tests;

pub(crate) use connect::TlsConnector;
pub(crate) use error::{SettingError, TrustSource, UpstreamTlsError};

/// Default [`UpstreamTlsSettings::connect_timeout`].
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`UpstreamTlsSettings::pool_idle_timeout`] (Kong's
/// `upstream_keepalive_idle_timeout`).
pub(crate) const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`UpstreamTlsSettings::max_clients`].
pub(crate) const DEFAULT_MAX_CLIENTS: usize = 10_000;

pub(crate) use crate::proxy::UpstreamBody;
/// A pooled client of TLS upstream connections, for one TLS setting and server name.
pub(crate) type TlsClient = Client<TlsConnector, UpstreamBody>;

/// Process-wide upstream TLS settings (flags); a service's own fields win over them.
#[derive(Clone)]
#[non_exhaustive]
pub(crate) struct UpstreamTlsSettings {
    /// Whether upstream certificates are verified when a service's `tls_verify` is null.
    /// Default `true` (Kong's `proxy_ssl_verify` defaults to off: a known MITM trap).
    pub(crate) verify: bool,
    /// Most intermediate certificates when a service's `tls_verify_depth` is null; `None`:
    /// no limit of ours (webpki's own path limits apply). Default `None`. Kong falls back to
    /// nginx's `proxy_ssl_verify_depth`, whose default is 1.
    pub(crate) verify_depth: Option<u8>,
    /// The `--upstream-trusted-ca` bundle, trusted when a service lists no
    /// `ca_certificates`; `None`: the built-in public roots. Default `None`.
    pub(crate) trusted_ca: Option<Arc<RootCertStore>>,
    /// The `--client-ssl-cert`/`--client-ssl-cert-key` pair, presented when neither the
    /// service nor its upstream names a client certificate. Default `None`.
    pub(crate) client_certificate: Option<Arc<CertifiedKey>>,
    /// Limit on TCP connect plus TLS handshake of one connection. Default 60 s.
    pub(crate) connect_timeout: Duration,
    /// Idle pooled connections are closed after this. Default 60 s.
    pub(crate) pool_idle_timeout: Duration,
    /// Most idle connections kept per upstream address and client. Default: no limit.
    pub(crate) pool_max_idle: usize,
    /// Most clients (pools) kept; the least recently used go first. Default 10 000.
    pub(crate) max_clients: usize,
}

/// The upstream TLS clients of the data plane. Shared by every request (`Arc`), safe to
/// call concurrently; lives as long as the proxy.
pub(crate) struct UpstreamTls {
    settings: UpstreamTlsSettings,
    provider: Arc<CryptoProvider>,
    /// The built-in public roots, built once.
    public_roots: Arc<RootCertStore>,
    /// Time origin of [`Entry::last_used`].
    epoch: Instant,
    /// The settings of the recent runtimes.
    prepared: PerRuntime<RuntimeTls>,
    clients: RwLock<ClientCache>,
}

/// A resolved TLS setting: its key and what its `ClientConfig` is built from.
pub(crate) struct TlsSetting {
    key: SettingKey,
    /// The trust store and its source; `None`: verification is off.
    trust: Option<(Arc<RootCertStore>, TrustSource)>,
    depth: Option<u8>,
    identity: Option<Arc<ClientIdentity>>,
}

/// What makes two TLS settings different (see the module documentation). Holds ids and
/// digests of public certificates only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SettingKey {
    /// `None`: verification off.
    verify: Option<VerifyKey>,
    /// `None`: no client certificate.
    identity: Option<IdentityKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct VerifyKey {
    depth: Option<u8>,
    trust: TrustKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TrustKey {
    /// The built-in public roots.
    Public,
    /// `--upstream-trusted-ca` (fixed for the life of the process).
    Global,
    /// The service's CA certificates: id and digest, sorted by id.
    Service(Arc<[(Uuid, Digest)]>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IdentityKey {
    /// A certificate entity: id and digest of its chains.
    Certificate { id: Uuid, digest: Digest },
    /// `--client-ssl-cert` (fixed for the life of the process).
    Global,
}

/// SHA-256 of certificate DER, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Digest(Arc<str>);

/// The settings of one runtime's services.
struct RuntimeTls {
    version: u64,
    services: HashMap<Uuid, Prepared>,
    keys: HashSet<SettingKey>,
}

/// One service's setting, for the upstream its host names (if any).
struct Prepared {
    upstream: Option<Uuid>,
    setting: Result<Arc<TlsSetting>, SettingError>,
}

/// Digests computed while resolving settings, so each certificate is hashed once.
#[derive(Default)]
struct Digests {
    certificates: HashMap<Uuid, Digest>,
    cas: HashMap<Uuid, Digest>,
}

/// The clients, by setting, then ALPN, then server name.
#[derive(Default)]
struct ClientCache {
    groups: HashMap<SettingKey, Group>,
    /// How many clients `groups` holds.
    count: usize,
    /// When idle clients were last swept ([`UpstreamTls::now`]).
    last_sweep: u64,
}

/// The configs and clients of one setting; index 0 is `http/1.1`, 1 is `h2`.
#[derive(Default)]
struct Group {
    configs: [Option<Arc<ClientConfig>>; 2],
    clients: [HashMap<Box<str>, Entry>; 2],
}

struct Entry {
    client: TlsClient,
    /// Milliseconds since [`UpstreamTls::epoch`].
    last_used: AtomicU64,
}

// === impl UpstreamTlsSettings ===

impl Default for UpstreamTlsSettings {
    fn default() -> Self {
        Self {
            verify: true,
            verify_depth: None,
            trusted_ca: None,
            client_certificate: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle: usize::MAX,
            max_clients: DEFAULT_MAX_CLIENTS,
        }
    }
}

/// No key material: the client certificate shows as present or not.
impl fmt::Debug for UpstreamTlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTlsSettings")
            .field("verify", &self.verify)
            .field("verify_depth", &self.verify_depth)
            .field("trusted_ca", &self.trusted_ca.as_ref().map(|r| r.len()))
            .field("client_certificate", &self.client_certificate.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_idle", &self.pool_max_idle)
            .field("max_clients", &self.max_clients)
            .finish()
    }
}

// === impl UpstreamTls ===

impl UpstreamTls {
    /// The upstream TLS layer with these process-wide settings.
    pub(crate) fn new(settings: UpstreamTlsSettings) -> Self {
        let public_roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Self {
            settings,
            provider: Arc::new(aws_lc_rs::default_provider()),
            public_roots: Arc::new(public_roots),
            epoch: Instant::now(),
            prepared: PerRuntime::default(),
            clients: RwLock::new(ClientCache::default()),
        }
    }

    /// The client for a request to `service` (through `upstream`, the upstream its host
    /// names, if any) with `server_name` as SNI and verified name. `server_name` is the
    /// service's host, the upstream's `host_header`, or the client's Host with
    /// `preserve_host` (without port; IPv6 addresses with or without brackets; compared
    /// case-insensitively). `http2`: `grpcs` (HTTP/2 only, ALPN `h2`); otherwise HTTP/1.1
    /// (ALPN `http/1.1`).
    ///
    /// The request URI must be `https://peer:port/...` with the address to connect to. The
    /// client does not set `Host` (the proxy writes it).
    pub(crate) fn client(
        &self,
        runtime: &Runtime,
        service: &model::Service,
        upstream: Option<&model::Upstream>,
        server_name: &str,
        http2: bool,
    ) -> Result<TlsClient, UpstreamTlsError> {
        let setting = self.setting(runtime, service, upstream)?;
        let name = normalize(server_name);
        let alpn = usize::from(http2);
        let now = self.now();
        {
            let cache = self.clients.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = cache
                .groups
                .get(&setting.key)
                .and_then(|group| group.clients[alpn].get(name.as_ref()))
            {
                entry.last_used.store(now, Ordering::Relaxed);
                return Ok(entry.client.clone());
            }
        }
        self.insert(&setting, service.id, &name, http2, now)
    }

    /// A connector for raw TLS streams to `service` (stream routes to a `tls` service), with
    /// the same setting, verification and client certificate as its HTTP clients; it offers
    /// ALPN `http/1.1` (the config is shared with the HTTP/1.1 clients of the setting).
    /// Connect with an `https://addr:port` URI and unwrap the `TokioIo` it returns.
    pub(crate) fn stream_connector(
        &self,
        runtime: &Runtime,
        service: &model::Service,
        upstream: Option<&model::Upstream>,
        server_name: &str,
    ) -> Result<TlsConnector, UpstreamTlsError> {
        let setting = self.setting(runtime, service, upstream)?;
        let name = normalize(server_name);
        let server_name = ServerName::try_from(name.clone().into_owned()).map_err(|_| {
            UpstreamTlsError::ServerName {
                name: name.into_owned(),
            }
        })?;
        let config = {
            let mut cache = self.write();
            let group = cache.groups.entry(setting.key.clone()).or_default();
            match &group.configs[0] {
                Some(config) => config.clone(),
                None => {
                    let config = self.client_config(&setting, false).map_err(|problem| {
                        UpstreamTlsError::Setting {
                            service: service.id,
                            problem,
                        }
                    })?;
                    group.configs[0] = Some(config.clone());
                    config
                }
            }
        };
        let context = FailureContext {
            trust: setting.trust.as_ref().map(|(_, source)| *source),
            client_certificate: setting.identity.is_some(),
        };
        Ok(TlsConnector::new(
            config,
            server_name,
            self.settings.connect_timeout,
            context,
        ))
    }

    /// The resolved TLS setting of a request to `service` through `upstream`: prepared
    /// once per runtime when both are `runtime`'s own entities, resolved now otherwise.
    pub(crate) fn setting(
        &self,
        runtime: &Runtime,
        service: &model::Service,
        upstream: Option<&model::Upstream>,
    ) -> Result<Arc<TlsSetting>, UpstreamTlsError> {
        // The prepared setting is the one of the runtime's own entities: a modified copy
        // (same id, other fields) is resolved on the fly.
        let own = runtime
            .service(&service.id)
            .is_some_and(|own| std::ptr::eq(own, service))
            && upstream.is_none_or(|u| {
                runtime
                    .upstream(&u.id)
                    .is_some_and(|own| std::ptr::eq(own, u))
            });
        let upstream_id = upstream.map(|u| u.id);
        if own
            && let Some(prepared) = self.for_runtime(runtime)
            && let Some(found) = prepared.services.get(&service.id)
            && found.upstream == upstream_id
        {
            return found
                .setting
                .clone()
                .map_err(|problem| UpstreamTlsError::Setting {
                    service: service.id,
                    problem,
                });
        }
        // An older runtime, a service that is not https/grpcs, or another upstream.
        self.resolve(runtime, service, upstream, &mut Digests::default())
            .map(Arc::new)
            .map_err(|problem| UpstreamTlsError::Setting {
                service: service.id,
                problem,
            })
    }

    /// How many clients (pools) are cached.
    pub(crate) fn cached_clients(&self) -> usize {
        self.clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .count
    }

    /// The prepared settings of `runtime`, built (and the cache pruned) when it is newer
    /// than the newest seen; `None` for an older runtime that is no longer kept.
    fn for_runtime(&self, runtime: &Runtime) -> Option<Arc<RuntimeTls>> {
        if let Some(found) = self.prepared.get(runtime) {
            return Some(found);
        }
        if self
            .prepared
            .newest()
            .is_some_and(|newest| newest.version > runtime.version())
        {
            return None;
        }
        let built = Arc::new(self.build(runtime));
        // Two requests may build at once after a swap: both results are equal.
        self.install(runtime, built.clone());
        Some(built)
    }

    /// Keeps `built` as `runtime`'s settings and drops the clients of settings it no longer
    /// uses.
    fn install(&self, runtime: &Runtime, built: Arc<RuntimeTls>) {
        self.prepared.insert(runtime, built.clone());
        let mut cache = self.write();
        let before = cache.count;
        cache.groups.retain(|key, _| built.keys.contains(key));
        cache.recount();
        if cache.count != before {
            tracing::debug!(
                version = runtime.version(),
                dropped = before - cache.count,
                kept = cache.count,
                "upstream TLS clients of settings no longer used dropped"
            );
        }
    }

    /// Resolves the settings of a runtime's TLS services.
    fn build(&self, runtime: &Runtime) -> RuntimeTls {
        let mut digests = Digests::default();
        let mut services = HashMap::new();
        let mut keys = HashSet::new();
        for service in &runtime.config().services {
            if !matches!(service.protocol.as_str(), "https" | "grpcs" | "tls") {
                continue;
            }
            let upstream = runtime.upstream_by_name(&service.host);
            let setting = self
                .resolve(runtime, service, upstream, &mut digests)
                .map(Arc::new);
            match &setting {
                Ok(setting) => {
                    keys.insert(setting.key.clone());
                }
                Err(problem) => tracing::warn!(
                    service = %service.id,
                    %problem,
                    "upstream TLS setting cannot be applied; requests to the service will fail"
                ),
            }
            services.insert(
                service.id,
                Prepared {
                    upstream: upstream.map(|u| u.id),
                    setting,
                },
            );
        }
        RuntimeTls {
            version: runtime.version(),
            services,
            keys,
        }
    }

    /// The setting of `service` through `upstream`, from the runtime's entities.
    fn resolve(
        &self,
        runtime: &Runtime,
        service: &model::Service,
        upstream: Option<&model::Upstream>,
        digests: &mut Digests,
    ) -> Result<TlsSetting, SettingError> {
        let (verify, trust, depth) = if service.tls_verify.unwrap_or(self.settings.verify) {
            let depth = service.tls_verify_depth.or(self.settings.verify_depth);
            let (key, roots, source) = self.trust(runtime, service, digests)?;
            if roots.is_empty() {
                return Err(SettingError::NoTrustedCa { trust: source });
            }
            let verify = VerifyKey { depth, trust: key };
            (Some(verify), Some((roots, source)), depth)
        } else {
            (None, None, None)
        };

        let mut certificate = |field: &'static str, id: Uuid| {
            let cert = runtime
                .certificate(&id)
                .ok_or(SettingError::MissingCertificate { field, id })?;
            let digest = digests.certificate(cert);
            Ok::<_, SettingError>((
                IdentityKey::Certificate { id, digest },
                ClientIdentity::new(
                    cert.certified_key().clone(),
                    cert.alt_certified_key().cloned(),
                ),
            ))
        };
        let identity = if let Some(fk) = &service.client_certificate {
            Some(certificate("service.client_certificate", fk.id)?)
        } else if let Some(fk) = upstream.and_then(|u| u.client_certificate.as_ref()) {
            Some(certificate("upstream.client_certificate", fk.id)?)
        } else {
            self.settings
                .client_certificate
                .as_ref()
                .map(|key| (IdentityKey::Global, ClientIdentity::new(key.clone(), None)))
        };
        let (identity_key, identity) = match identity {
            Some((key, identity)) => (Some(key), Some(Arc::new(identity))),
            None => (None, None),
        };

        Ok(TlsSetting {
            key: SettingKey {
                verify,
                identity: identity_key,
            },
            trust,
            depth,
            identity,
        })
    }

    /// The trust store of a verifying service: its key, roots and source.
    fn trust(
        &self,
        runtime: &Runtime,
        service: &model::Service,
        digests: &mut Digests,
    ) -> Result<(TrustKey, Arc<RootCertStore>, TrustSource), SettingError> {
        let Some(ids) = &service.ca_certificates else {
            return Ok(match &self.settings.trusted_ca {
                Some(roots) => (TrustKey::Global, roots.clone(), TrustSource::Global),
                None => (
                    TrustKey::Public,
                    self.public_roots.clone(),
                    TrustSource::System,
                ),
            });
        };
        let mut cas = Vec::with_capacity(ids.len());
        for id in ids {
            cas.push((*id, digests.ca(runtime, id)?));
        }
        cas.sort_by_key(|(id, _)| *id);
        cas.dedup_by_key(|(id, _)| *id);
        let roots = match runtime.service_trust(&service.id) {
            Some(roots) => roots.clone(),
            // The runtime compiles a store for every service with ca_certificates; build one
            // if this service was not among them.
            None => {
                let mut roots = RootCertStore::empty();
                for id in ids {
                    let der = runtime
                        .ca_certificate(id)
                        .ok_or(SettingError::MissingCaCertificate { id: *id })?;
                    roots.add(der.clone()).map_err(|e| SettingError::Build {
                        reason: format!("ca_certificate {id}: {e}"),
                    })?;
                }
                Arc::new(roots)
            }
        };
        Ok((TrustKey::Service(cas.into()), roots, TrustSource::Service))
    }

    /// Builds (or finds, after a race) the client of a setting, ALPN and server name.
    fn insert(
        &self,
        setting: &TlsSetting,
        service: Uuid,
        name: &str,
        http2: bool,
        now: u64,
    ) -> Result<TlsClient, UpstreamTlsError> {
        let server_name =
            ServerName::try_from(name.to_owned()).map_err(|_| UpstreamTlsError::ServerName {
                name: name.to_owned(),
            })?;
        let alpn = usize::from(http2);
        let mut cache = self.write();
        self.sweep(&mut cache, now);
        let ClientCache { groups, count, .. } = &mut *cache;
        let group = groups.entry(setting.key.clone()).or_default();
        if let Some(entry) = group.clients[alpn].get(name) {
            entry.last_used.store(now, Ordering::Relaxed);
            return Ok(entry.client.clone());
        }
        let config = match &group.configs[alpn] {
            Some(config) => config.clone(),
            None => {
                let config = self
                    .client_config(setting, http2)
                    .map_err(|problem| UpstreamTlsError::Setting { service, problem })?;
                group.configs[alpn] = Some(config.clone());
                config
            }
        };
        let context = FailureContext {
            trust: setting.trust.as_ref().map(|(_, source)| *source),
            client_certificate: setting.identity.is_some(),
        };
        let connector =
            TlsConnector::new(config, server_name, self.settings.connect_timeout, context);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(self.settings.pool_idle_timeout)
            .pool_max_idle_per_host(self.settings.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // Host is written by the proxy (service host, or the client's with preserve_host).
            .set_host(false);
        if http2 {
            builder.http2_only(true);
        }
        let client: TlsClient = builder.build(connector);
        group.clients[alpn].insert(
            name.into(),
            Entry {
                client: client.clone(),
                last_used: AtomicU64::new(now),
            },
        );
        *count += 1;
        tracing::debug!(
            server_name = name,
            http2,
            key = ?setting.key,
            "new upstream TLS client"
        );
        Ok(client)
    }

    /// The rustls configuration of a setting and ALPN.
    fn client_config(
        &self,
        setting: &TlsSetting,
        http2: bool,
    ) -> Result<Arc<ClientConfig>, SettingError> {
        let build_error = |e: &dyn fmt::Display| SettingError::Build {
            reason: e.to_string(),
        };
        let algorithms = self.provider.signature_verification_algorithms;
        let verifier: Arc<dyn ServerCertVerifier> = match &setting.trust {
            Some((roots, _)) => {
                let inner = WebPkiServerVerifier::builder_with_provider(
                    roots.clone(),
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| build_error(&e))?;
                Arc::new(DepthLimitedVerifier::new(
                    inner,
                    roots.clone(),
                    setting.depth,
                    algorithms,
                ))
            }
            None => Arc::new(AcceptAnyCertificate::new(algorithms)),
        };
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| build_error(&e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &setting.identity {
            Some(identity) => builder.with_client_cert_resolver(identity.clone()),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![if http2 { ALPN_H2 } else { ALPN_HTTP11 }.to_vec()];
        Ok(Arc::new(config))
    }

    /// Drops clients idle longer than the pool idle timeout (at most once per that period),
    /// then the least recently used ones while more than `max_clients` remain.
    fn sweep(&self, cache: &mut ClientCache, now: u64) {
        let idle = u64::try_from(self.settings.pool_idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let max = self.settings.max_clients.max(1);
        // The sweep runs once per idle period, or when there is no room for one more client.
        if now.saturating_sub(cache.last_sweep) < idle && cache.count < max {
            return;
        }
        cache.last_sweep = now;
        for group in cache.groups.values_mut() {
            for clients in &mut group.clients {
                clients.retain(|_, entry| {
                    now.saturating_sub(entry.last_used.load(Ordering::Relaxed)) <= idle
                });
            }
        }
        cache.groups.retain(|_, group| !group.is_empty());
        cache.recount();
        if cache.count < max {
            return;
        }
        // Still full: drop the least recently used tenth.
        let mut all: Vec<(u64, SettingKey, usize, Box<str>)> = cache
            .groups
            .iter()
            .flat_map(|(key, group)| {
                group
                    .clients
                    .iter()
                    .enumerate()
                    .flat_map(move |(alpn, clients)| {
                        clients.iter().map(move |(name, entry)| {
                            (
                                entry.last_used.load(Ordering::Relaxed),
                                key.clone(),
                                alpn,
                                name.clone(),
                            )
                        })
                    })
            })
            .collect();
        all.sort_by_key(|(last_used, ..)| *last_used);
        let excess = cache.count + 1 - max + max / 10;
        for (_, key, alpn, name) in all.into_iter().take(excess) {
            if let Some(group) = cache.groups.get_mut(&key) {
                group.clients[alpn].remove(&name);
            }
        }
        cache.groups.retain(|_, group| !group.is_empty());
        cache.recount();
        tracing::debug!(
            kept = cache.count,
            "upstream TLS client cache full; oldest dropped"
        );
    }

    fn write(&self) -> RwLockWriteGuard<'_, ClientCache> {
        self.clients.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Milliseconds since this layer was made.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("settings", &self.settings)
            .field("clients", &self.cached_clients())
            .finish()
    }
}

// === impl TlsSetting ===

#[cfg(test)]
impl TlsSetting {
    /// What identifies the setting (and its clients).
    pub(crate) fn key(&self) -> &SettingKey {
        &self.key
    }
}

/// The key only: no key material.
impl fmt::Debug for TlsSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSetting")
            .field("key", &self.key)
            .finish()
    }
}

// === impl Digests ===

impl Digests {
    /// The digest of a certificate entity's chains (`cert`, then `cert_alt`).
    fn certificate(&mut self, cert: &TlsCertificate) -> Digest {
        self.certificates
            .entry(cert.id())
            .or_insert_with(|| {
                let mut bytes = Vec::new();
                let pairs = std::iter::once(cert.certified_key()).chain(cert.alt_certified_key());
                for pair in pairs {
                    // Length prefixes keep the encoding unambiguous.
                    bytes.extend_from_slice(&(pair.cert.len() as u64).to_be_bytes());
                    for der in &pair.cert {
                        bytes.extend_from_slice(&(der.len() as u64).to_be_bytes());
                        bytes.extend_from_slice(der);
                    }
                }
                Digest(x509::sha256_hex(&bytes).into())
            })
            .clone()
    }

    /// The digest of a CA certificate.
    fn ca(&mut self, runtime: &Runtime, id: &Uuid) -> Result<Digest, SettingError> {
        if let Some(digest) = self.cas.get(id) {
            return Ok(digest.clone());
        }
        let der = runtime
            .ca_certificate(id)
            .ok_or(SettingError::MissingCaCertificate { id: *id })?;
        let digest = Digest(x509::sha256_hex(der).into());
        self.cas.insert(*id, digest.clone());
        Ok(digest)
    }
}

// === impl ClientCache ===

impl ClientCache {
    fn recount(&mut self) {
        self.count = self
            .groups
            .values()
            .map(|g| g.clients.iter().map(HashMap::len).sum::<usize>())
            .sum();
    }
}

// === impl Group ===

impl Group {
    fn is_empty(&self) -> bool {
        self.clients.iter().all(HashMap::is_empty)
    }
}

impl Part for UpstreamTls {
    /// Resolves the TLS setting of every `https`, `grpcs` and `tls` service and builds its
    /// rustls client configuration. A configuration rustls refuses rejects the runtime; a
    /// setting that cannot work (verification on with an empty trust store) is a warning:
    /// requests to that service fail with 502, never in plaintext or unverified.
    fn prepare(&self, runtime: &Arc<Runtime>, warnings: &mut Vec<String>) -> Result<(), String> {
        let built = self.build(runtime);
        for (id, prepared) in &built.services {
            let setting = match &prepared.setting {
                Ok(setting) => setting,
                Err(problem @ SettingError::Build { .. }) => {
                    return Err(format!("service {id}: upstream TLS: {problem}"));
                }
                Err(problem) => {
                    warnings.push(format!(
                        "service {id}: upstream TLS setting cannot be used, its requests fail \
                         with 502: {problem}"
                    ));
                    continue;
                }
            };
            let http2 = runtime
                .service(id)
                .is_some_and(|service| service.protocol == "grpcs");
            let alpn = usize::from(http2);
            let mut cache = self.write();
            let group = cache.groups.entry(setting.key.clone()).or_default();
            if group.configs[alpn].is_none() {
                let config = self
                    .client_config(setting, http2)
                    .map_err(|problem| format!("service {id}: upstream TLS: {problem}"))?;
                group.configs[alpn] = Some(config);
            }
        }
        self.install(runtime, Arc::new(built));
        Ok(())
    }
}

/// The server name as cached and sent: brackets of an IPv6 address and a trailing dot
/// removed, lowercase. Borrows when nothing changes (the common case).
fn normalize(name: &str) -> Cow<'_, str> {
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}
