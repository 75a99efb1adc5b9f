//! The runtime: one configuration snapshot compiled into immutable lookups for the proxy.
//!
//! [`Runtime::compile`] validates everything the proxy will need and builds the indexes once
//! per snapshot, off the async threads (the sync client calls it inside `spawn_blocking`).
//! The first problem rejects the whole snapshot with a [`CompileError`] naming the entity; the
//! data plane then keeps the runtime it has. [`SharedRuntime`] holds the current runtime
//! behind an `ArcSwap`: the request path loads it without locking, and a request or handshake
//! keeps the runtime it started with until it ends.
//!
//! What the proxy gets (all borrowed from the runtime, nothing to lock or clone):
//!
//! | need | API |
//! |---|---|
//! | server certificate for a TLS ClientHello | [`Runtime::certificate_for_sni`] (exact, `*.rest`, `first.*`, `*`), then the proxy's own default |
//! | certificate by id (upstream mTLS) | [`Runtime::certificate`] → [`TlsCertificate`] (rustls [`CertifiedKey`]s, main and alt) |
//! | upstream trust of a service | [`Runtime::service_trust`] (a [`RootCertStore`] of its `ca_certificates`) |
//! | routing | [`Runtime::router`] ([`Router::find`]: Kong's matching and priority); [`Runtime::routes`], [`Runtime::routes_for_host`], each a [`CompiledRoute`] (hosts, prefix and compiled regex paths, header matchers, service) |
//! | services, upstreams, targets | [`Runtime::service`], [`Runtime::upstream_by_name`], [`Runtime::targets`] |
//! | consumers and ACL groups | [`Runtime::consumer`], [`Runtime::consumer_by_username`], [`Runtime::consumer_by_custom_id`], [`Runtime::consumer_groups`] |
//! | mtls-auth credentials (certificate subject → consumer) | [`Runtime::mtls_credentials_for_subject`] (CA-specific ones first, then the one for any CA), [`Runtime::mtls_credential`] (exact subject and CA), [`Runtime::consumer_mtls_credentials`] |
//! | plugins | [`Runtime::plugins`], each a [`CompiledPlugin`] with resolved scopes (and its trust store for `mtls-auth`) |
//!
//! Nothing here prints key material: [`Runtime`]'s `Debug` shows the version, hash and
//! counts, and key errors are fixed texts.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use arc_swap::{ArcSwap, Guard};
use regex::{Regex, RegexBuilder};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};
use serde::Serialize;
use uuid::Uuid;

use gatehouse_shared::entities::PROTOCOLS;
use gatehouse_shared::model::{self, PluginConfig};
use gatehouse_shared::{checks, x509};

use crate::router::Router;

mod parts;
#[cfg(test)]
mod tests;

use parts::Parts;
pub(crate) use parts::{Part, PerRuntime};

/// Below this many items a compile step runs on the calling thread; above, it is spread over
/// the available cores (certificate keys and regexes dominate the cost of a large snapshot).
const PARALLEL_THRESHOLD: usize = 256;
/// The most threads one compile step uses.
const MAX_THREADS: usize = 8;
/// Balancing algorithms the data plane knows.
const ALGORITHMS: &[&str] = &[
    "round-robin",
    "consistent-hashing",
    "least-connections",
    "latency",
];

/// One configuration snapshot, compiled. Immutable; shared through [`SharedRuntime`].
///
/// Before any configuration is loaded the data plane runs [`Runtime::empty`] (version 0, no
/// hash, no entities, [`Runtime::is_loaded`] false).
#[derive(Clone)]
pub struct Runtime {
    version: u64,
    hash: String,
    loaded: bool,
    compiled: Arc<Compiled>,
}

/// The compiled indexes; shared between runtimes that differ only by version.
#[derive(Default)]
struct Compiled {
    config: model::Config,
    services: HashMap<Uuid, usize>,
    routes: Vec<CompiledRoute>,
    hosts: HostIndex,
    certificates: HashMap<Uuid, Arc<TlsCertificate>>,
    snis: SniIndex,
    ca_certificates: HashMap<Uuid, CertificateDer<'static>>,
    service_trust: HashMap<Uuid, Arc<RootCertStore>>,
    upstreams: HashMap<Uuid, usize>,
    upstreams_by_name: HashMap<String, usize>,
    targets: HashMap<Uuid, Vec<usize>>,
    consumers: HashMap<Uuid, usize>,
    consumers_by_username: HashMap<String, usize>,
    consumers_by_custom_id: HashMap<String, usize>,
    groups: HashMap<Uuid, Vec<String>>,
    mtls_credentials: MtlsCredentialIndex,
    plugins: Vec<CompiledPlugin>,
    router: Router,
}

/// Why a snapshot cannot be compiled: the entity at fault and the reason. The message never
/// contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entity} {id}: {reason}")]
#[non_exhaustive]
pub struct CompileError {
    /// The kind of entity (`certificate`, `route`, ...).
    pub entity: &'static str,
    /// Its id.
    pub id: Uuid,
    /// What is wrong.
    pub reason: String,
}

/// A certificate entity ready for rustls: the chain and signing key of `cert`/`key`, and of
/// `cert_alt`/`key_alt` when set (typically ECDSA beside RSA). Usable as a server
/// certificate (SNI) and as a client certificate (upstream mTLS).
pub struct TlsCertificate {
    id: Uuid,
    key: Arc<CertifiedKey>,
    alt: Option<Arc<CertifiedKey>>,
    not_after: i64,
}

/// A route with its matchers compiled. Ordering routes by priority is the router's job.
#[derive(Debug)]
pub struct CompiledRoute {
    index: usize,
    service: Option<usize>,
    hosts: Vec<HostPattern>,
    prefix_paths: Vec<String>,
    regex_paths: Vec<RegexPath>,
    headers: Vec<HeaderMatcher>,
}

/// A route `hosts` entry: a name (exact or wildcard, lowercase) and an optional port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// How the name matches.
    pub name: HostName,
    /// The port the request must have been received on, when the entry has one.
    pub port: Option<u16>,
}

/// How a route host name matches the request's host (lowercase, without port).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostName {
    /// Exactly this name.
    Exact(String),
    /// `*.example.com`: any name ending with this suffix (`.example.com`), with at least one
    /// character before it.
    AnyPrefix(String),
    /// `example.*`: any name starting with this prefix (`example.`), with at least one
    /// character after it.
    AnySuffix(String),
}

/// A compiled regex path (`~/...` in the route), anchored at the start like Kong's.
#[derive(Debug, Clone)]
pub struct RegexPath {
    /// The path as configured, with its `~`.
    pub source: String,
    /// `^(?:pattern)`, compiled; named captures are available to the proxy.
    pub regex: Regex,
}

/// A route `headers` entry: the request must carry `name` with one of the values.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    /// The header name, lowercase.
    pub name: String,
    /// Plain values, lowercase (compare case-insensitively, as Kong does).
    pub values: Vec<String>,
    /// `~*` values, compiled case-insensitive.
    pub patterns: Vec<Regex>,
}

/// A plugin instance with its scopes resolved.
#[derive(Debug)]
pub struct CompiledPlugin {
    index: usize,
    route: Option<usize>,
    service: Option<usize>,
    consumer: Option<usize>,
    trust: Option<Arc<RootCertStore>>,
}

/// Counts of each entity of a runtime (the `/status` `entities` object).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EntityCounts {
    /// Services.
    pub services: usize,
    /// Routes.
    pub routes: usize,
    /// Certificates.
    pub certificates: usize,
    /// SNIs.
    pub snis: usize,
    /// CA certificates.
    pub ca_certificates: usize,
    /// Upstreams.
    pub upstreams: usize,
    /// Targets.
    pub targets: usize,
    /// Consumers.
    pub consumers: usize,
    /// ACL group memberships.
    pub acls: usize,
    /// mtls-auth credentials.
    pub mtls_auth_credentials: usize,
    /// Plugins.
    pub plugins: usize,
}

/// The current runtime, swapped atomically when a snapshot is applied. Loading is lock-free.
///
/// It also knows the [`Part`]s built per runtime (plugin plan, TLS configs, balancer rings,
/// upstream TLS settings, stream router): [`SharedRuntime::apply`] builds all of them
/// before the swap, so a runtime is served only once everything it needs is compiled.
pub struct SharedRuntime {
    current: ArcSwap<Runtime>,
    parts: Parts,
}

/// Server certificates by SNI name: exact names and wildcard names (`*.rest`, `first.*`)
/// separately, and the `*` default.
#[derive(Default)]
struct SniIndex {
    exact: HashMap<String, Uuid>,
    wildcard: HashMap<String, Uuid>,
    default: Option<Uuid>,
}

/// mtls-auth credentials (positions in the config) by subject name, each list in lookup order
/// (CA-specific ones by CA id, then the one for any CA), and by consumer (config order).
#[derive(Default)]
struct MtlsCredentialIndex {
    by_subject: HashMap<String, Vec<usize>>,
    by_consumer: HashMap<Uuid, Vec<usize>>,
}

/// Routes by host: exact names, wildcard patterns, and routes without hosts.
#[derive(Default)]
struct HostIndex {
    exact: HashMap<String, Vec<usize>>,
    wildcard: Vec<(HostName, usize)>,
    any: Vec<usize>,
}

/// Regexes compiled during one compile, by pattern: routes often share header or path
/// patterns, and a `Regex` clone shares the compiled program.
#[derive(Default)]
struct RegexCache(Mutex<HashMap<(String, bool), Regex>>);

/// A place in the config, for error messages.
#[derive(Clone, Copy)]
struct At {
    entity: &'static str,
    id: Uuid,
}

// === impl Runtime ===

impl Runtime {
    /// The runtime before any configuration: version 0, empty hash, no entities.
    pub fn empty() -> Self {
        Self {
            version: 0,
            hash: String::new(),
            loaded: false,
            compiled: Arc::new(Compiled::default()),
        }
    }

    /// Validates `config` and builds every lookup the proxy needs. CPU-bound (certificate
    /// keys, regexes): call it off the async threads. The first problem found rejects the
    /// whole config.
    ///
    /// Checks, in order: unique ids; every CA certificate parses and is a usable trust anchor;
    /// every certificate's `cert`/`key` (and `cert_alt`/`key_alt`) parse and match; SNI names
    /// are valid, unique and point at a certificate; services (protocol, client certificate,
    /// CA certificates); routes (protocols, service, paths, regexes, hosts, headers,
    /// `path_handling`); upstreams (unique names, algorithm, client certificate); targets
    /// (upstream, address); consumers (unique username and custom_id); ACLs (consumer);
    /// mtls-auth credentials (consumer, CA certificate, a non-empty subject name unique with
    /// its CA certificate); plugins (route, service and consumer scopes, `mtls-auth` CA
    /// certificates).
    pub fn compile(
        version: u64,
        hash: String,
        config: model::Config,
    ) -> Result<Self, CompileError> {
        let compiled = Compiled::build(config)?;
        Ok(Self {
            version,
            hash,
            loaded: true,
            compiled: Arc::new(compiled),
        })
    }

    /// The same compiled configuration under another version number (a snapshot whose hash
    /// is the one already running). Cheap: the indexes are shared.
    pub fn with_version(&self, version: u64) -> Self {
        Self {
            version,
            ..self.clone()
        }
    }

    /// An empty runtime that claims `version` and `hash` (tests of per-runtime caches).
    #[cfg(test)]
    pub(crate) fn with_identity(&self, version: u64, hash: &str) -> Self {
        Self {
            version,
            hash: hash.to_owned(),
            ..self.clone()
        }
    }

    /// The config version (0 before any configuration).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The config hash (empty before any configuration).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Whether a configuration is loaded (from the control plane or the cache).
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// The configuration as received.
    pub fn config(&self) -> &model::Config {
        &self.compiled.config
    }

    /// How many entities of each kind the configuration holds.
    pub fn counts(&self) -> EntityCounts {
        let c = &self.compiled.config;
        EntityCounts {
            services: c.services.len(),
            routes: c.routes.len(),
            certificates: c.certificates.len(),
            snis: c.snis.len(),
            ca_certificates: c.ca_certificates.len(),
            upstreams: c.upstreams.len(),
            targets: c.targets.len(),
            consumers: c.consumers.len(),
            acls: c.acls.len(),
            mtls_auth_credentials: c.mtls_auth_credentials.len(),
            plugins: c.plugins.len(),
        }
    }

    /// A certificate by id, ready for rustls.
    pub fn certificate(&self, id: &Uuid) -> Option<&Arc<TlsCertificate>> {
        self.compiled.certificates.get(id)
    }

    /// The certificate to present for a TLS server name, in Kong's order: the exact SNI, then
    /// `*.rest` (the first label replaced), then `first.*` (the last label replaced), then
    /// the `*` SNI. `None`: the proxy uses its default certificate. The name is compared
    /// case-insensitively, ignoring a trailing dot.
    pub fn certificate_for_sni(&self, server_name: &str) -> Option<&Arc<TlsCertificate>> {
        let snis = &self.compiled.snis;
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        let id = snis
            .exact
            .get(&name)
            .or_else(|| {
                let (_, rest) = name.split_once('.')?;
                snis.wildcard.get(&format!("*.{rest}"))
            })
            .or_else(|| {
                let (first, _) = name.rsplit_once('.')?;
                snis.wildcard.get(&format!("{first}.*"))
            })
            .or(snis.default.as_ref())?;
        self.compiled.certificates.get(id)
    }

    /// A CA certificate by id (DER).
    pub fn ca_certificate(&self, id: &Uuid) -> Option<&CertificateDer<'static>> {
        self.compiled.ca_certificates.get(id)
    }

    /// A service by id.
    pub fn service(&self, id: &Uuid) -> Option<&model::Service> {
        let index = *self.compiled.services.get(id)?;
        self.compiled.config.services.get(index)
    }

    /// The roots a service's upstream certificate is verified against, when the service lists
    /// `ca_certificates` (`None`: the global bundle applies).
    pub fn service_trust(&self, service_id: &Uuid) -> Option<&Arc<RootCertStore>> {
        self.compiled.service_trust.get(service_id)
    }

    /// Every route, in the order of the configuration (by id).
    pub fn routes(&self) -> &[CompiledRoute] {
        &self.compiled.routes
    }

    /// The routes a request for `host` (lowercase, without port) can match on hosts: routes
    /// listing it exactly, then routes with a matching wildcard, then routes without hosts.
    /// Ports and the other criteria are left to the router.
    pub fn routes_for_host<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a CompiledRoute> {
        let index = &self.compiled.hosts;
        let routes = &self.compiled.routes;
        index
            .exact
            .get(host)
            .into_iter()
            .flatten()
            .copied()
            .chain(
                index
                    .wildcard
                    .iter()
                    .filter(move |(pattern, _)| pattern.matches(host))
                    .map(|(_, route)| *route),
            )
            .chain(index.any.iter().copied())
            .filter_map(move |i| routes.get(i))
    }

    /// The router over [`Runtime::routes`], compiled with the runtime.
    pub fn router(&self) -> &Router {
        &self.compiled.router
    }

    /// The route entity of a compiled route.
    pub fn route(&self, route: &CompiledRoute) -> Option<&model::Route> {
        self.compiled.config.routes.get(route.index)
    }

    /// The service of a compiled route or plugin, by its position in the config.
    pub fn service_at(&self, index: usize) -> Option<&model::Service> {
        self.compiled.config.services.get(index)
    }

    /// An upstream by id.
    pub fn upstream(&self, id: &Uuid) -> Option<&model::Upstream> {
        let index = *self.compiled.upstreams.get(id)?;
        self.compiled.config.upstreams.get(index)
    }

    /// An upstream by name (a service's `host` may name one).
    pub fn upstream_by_name(&self, name: &str) -> Option<&model::Upstream> {
        let index = *self.compiled.upstreams_by_name.get(name)?;
        self.compiled.config.upstreams.get(index)
    }

    /// The targets of an upstream.
    pub fn targets<'a>(&'a self, upstream_id: &Uuid) -> impl Iterator<Item = &'a model::Target> {
        let targets = &self.compiled.config.targets;
        self.compiled
            .targets
            .get(upstream_id)
            .into_iter()
            .flatten()
            .filter_map(move |i| targets.get(*i))
    }

    /// A consumer by id.
    pub fn consumer(&self, id: &Uuid) -> Option<&model::Consumer> {
        let index = *self.compiled.consumers.get(id)?;
        self.compiled.config.consumers.get(index)
    }

    /// A consumer by username.
    pub fn consumer_by_username(&self, username: &str) -> Option<&model::Consumer> {
        let index = *self.compiled.consumers_by_username.get(username)?;
        self.compiled.config.consumers.get(index)
    }

    /// A consumer by custom id.
    pub fn consumer_by_custom_id(&self, custom_id: &str) -> Option<&model::Consumer> {
        let index = *self.compiled.consumers_by_custom_id.get(custom_id)?;
        self.compiled.config.consumers.get(index)
    }

    /// The ACL groups of a consumer, sorted.
    pub fn consumer_groups(&self, consumer_id: &Uuid) -> &[String] {
        self.compiled
            .groups
            .get(consumer_id)
            .map_or(&[], Vec::as_slice)
    }

    /// The mtls-auth credentials whose `subject_name` is exactly `subject_name` (a SAN or the
    /// CN of a client certificate; compared as is, case-sensitive), in Kong's lookup order:
    /// those bound to a CA certificate first (at most one per CA, by CA id), then the one for
    /// any CA (`ca_certificate` null), if any. Pick the first whose CA issued the certificate.
    pub fn mtls_credentials_for_subject<'a>(
        &'a self,
        subject_name: &str,
    ) -> impl Iterator<Item = &'a model::MtlsAuthCredential> {
        let credentials = &self.compiled.config.mtls_auth_credentials;
        self.compiled
            .mtls_credentials
            .by_subject
            .get(subject_name)
            .into_iter()
            .flatten()
            .filter_map(move |i| credentials.get(*i))
    }

    /// The mtls-auth credential for exactly `subject_name` and `ca_certificate` (`None`: the
    /// credential for any CA). The pair is unique, so there is at most one.
    pub fn mtls_credential(
        &self,
        subject_name: &str,
        ca_certificate: Option<&Uuid>,
    ) -> Option<&model::MtlsAuthCredential> {
        self.mtls_credentials_for_subject(subject_name)
            .find(|c| c.ca_certificate.as_ref().map(|ca| &ca.id) == ca_certificate)
    }

    /// The mtls-auth credentials of a consumer, in the order of the configuration (by id).
    pub fn consumer_mtls_credentials<'a>(
        &'a self,
        consumer_id: &Uuid,
    ) -> impl Iterator<Item = &'a model::MtlsAuthCredential> {
        let credentials = &self.compiled.config.mtls_auth_credentials;
        self.compiled
            .mtls_credentials
            .by_consumer
            .get(consumer_id)
            .into_iter()
            .flatten()
            .filter_map(move |i| credentials.get(*i))
    }

    /// Every plugin instance, in the order of the configuration (by id).
    pub fn plugins(&self) -> &[CompiledPlugin] {
        &self.compiled.plugins
    }

    /// The plugin entity of a compiled plugin.
    pub fn plugin(&self, plugin: &CompiledPlugin) -> Option<&model::Plugin> {
        self.compiled.config.plugins.get(plugin.index)
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Self::empty()
    }
}

/// Shows the version, hash and counts only: the configuration holds private keys.
impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("version", &self.version)
            .field("hash", &self.hash)
            .field("loaded", &self.loaded)
            .field("counts", &self.counts())
            .finish()
    }
}

// === impl Compiled ===

impl Compiled {
    fn build(config: model::Config) -> Result<Self, CompileError> {
        let provider = aws_lc_rs::default_provider();
        unique_ids(&config)?;

        // CA certificates.
        let mut ca_certificates = HashMap::with_capacity(config.ca_certificates.len());
        for ca in &config.ca_certificates {
            let at = At::new("ca_certificate", ca.id);
            let der = compile_ca(&ca.cert).map_err(|reason| at.error(reason))?;
            ca_certificates.insert(ca.id, der);
        }

        // Certificates (the costly part: parallel).
        let compiled = par_try_map(&config.certificates, |cert| {
            compile_certificate(cert, &provider)
                .map(Arc::new)
                .map_err(|reason| At::new("certificate", cert.id).error(reason))
        })?;
        let certificates: HashMap<Uuid, Arc<TlsCertificate>> =
            compiled.into_iter().map(|c| (c.id, c)).collect();

        // SNIs.
        let mut snis = SniIndex::default();
        let mut sni_names = HashSet::with_capacity(config.snis.len());
        for sni in &config.snis {
            let at = At::new("sni", sni.id);
            checks::sni_name(&sni.name).map_err(|e| at.error(format!("invalid name: {e}")))?;
            let name = sni.name.to_ascii_lowercase();
            if !sni_names.insert(name.clone()) {
                return Err(at.error(format!("name '{name}' is used by another sni")));
            }
            at.resolve("certificate", &sni.certificate.id, &certificates)?;
            if name == "*" {
                snis.default = Some(sni.certificate.id);
            } else if name.starts_with("*.") || name.ends_with(".*") {
                snis.wildcard.insert(name, sni.certificate.id);
            } else {
                snis.exact.insert(name, sni.certificate.id);
            }
        }

        // Services.
        let mut services = HashMap::with_capacity(config.services.len());
        let mut service_trust = HashMap::new();
        for (index, service) in config.services.iter().enumerate() {
            let at = At::new("service", service.id);
            if !PROTOCOLS.contains(&service.protocol.as_str()) {
                return Err(at.error(format!("unknown protocol '{}'", service.protocol)));
            }
            if let Some(cert) = &service.client_certificate {
                at.resolve("client_certificate", &cert.id, &certificates)?;
            }
            if let Some(cas) = &service.ca_certificates {
                let roots = at.trust_store("ca_certificates", cas, &ca_certificates)?;
                service_trust.insert(service.id, roots);
            }
            services.insert(service.id, index);
        }

        // Routes (regexes can be costly: parallel).
        let indexed: Vec<(usize, &model::Route)> = config.routes.iter().enumerate().collect();
        let regexes = RegexCache::default();
        let routes = par_try_map(&indexed, |(index, route)| {
            compile_route(*index, route, &services, &regexes)
        })?;
        drop(regexes);
        let mut hosts = HostIndex::default();
        for route in &routes {
            if route.hosts.is_empty() {
                hosts.any.push(route.index);
            }
            for host in &route.hosts {
                match &host.name {
                    HostName::Exact(name) => {
                        let list = hosts.exact.entry(name.clone()).or_default();
                        // A route listing a name twice (with two ports) is one candidate.
                        if list.last() != Some(&route.index) {
                            list.push(route.index);
                        }
                    }
                    wildcard => hosts.wildcard.push((wildcard.clone(), route.index)),
                }
            }
        }

        // Upstreams and targets.
        let mut upstreams = HashMap::with_capacity(config.upstreams.len());
        let mut upstreams_by_name = HashMap::with_capacity(config.upstreams.len());
        for (index, upstream) in config.upstreams.iter().enumerate() {
            let at = At::new("upstream", upstream.id);
            if !ALGORITHMS.contains(&upstream.algorithm.as_str()) {
                return Err(at.error(format!("unknown algorithm '{}'", upstream.algorithm)));
            }
            if let Some(cert) = &upstream.client_certificate {
                at.resolve("client_certificate", &cert.id, &certificates)?;
            }
            if upstreams_by_name
                .insert(upstream.name.clone(), index)
                .is_some()
            {
                return Err(at.error(format!(
                    "name '{}' is used by another upstream",
                    upstream.name
                )));
            }
            upstreams.insert(upstream.id, index);
        }
        let mut targets: HashMap<Uuid, Vec<usize>> = HashMap::new();
        for (index, target) in config.targets.iter().enumerate() {
            let at = At::new("target", target.id);
            at.resolve("upstream", &target.upstream.id, &upstreams)?;
            checks::host_with_optional_port(&target.target).map_err(|e| at.error(e))?;
            targets.entry(target.upstream.id).or_default().push(index);
        }

        // Consumers and ACLs.
        let mut consumers = HashMap::with_capacity(config.consumers.len());
        let mut consumers_by_username = HashMap::new();
        let mut consumers_by_custom_id = HashMap::new();
        for (index, consumer) in config.consumers.iter().enumerate() {
            let at = At::new("consumer", consumer.id);
            if let Some(username) = &consumer.username
                && consumers_by_username
                    .insert(username.clone(), index)
                    .is_some()
            {
                return Err(at.error(format!("username '{username}' is used by another consumer")));
            }
            if let Some(custom_id) = &consumer.custom_id
                && consumers_by_custom_id
                    .insert(custom_id.clone(), index)
                    .is_some()
            {
                return Err(at.error(format!(
                    "custom_id '{custom_id}' is used by another consumer"
                )));
            }
            consumers.insert(consumer.id, index);
        }
        let mut groups: HashMap<Uuid, Vec<String>> = HashMap::new();
        for acl in &config.acls {
            let at = At::new("acl", acl.id);
            at.resolve("consumer", &acl.consumer.id, &consumers)?;
            groups
                .entry(acl.consumer.id)
                .or_default()
                .push(acl.group.clone());
        }
        for list in groups.values_mut() {
            list.sort();
            list.dedup();
        }

        // mtls-auth credentials.
        let mtls_credentials = MtlsCredentialIndex::build(
            &config.mtls_auth_credentials,
            &consumers,
            &ca_certificates,
        )?;

        // Plugins.
        let route_ids: HashMap<Uuid, usize> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id, i))
            .collect();
        let mut plugins = Vec::with_capacity(config.plugins.len());
        for (index, plugin) in config.plugins.iter().enumerate() {
            let at = At::new("plugin", plugin.id);
            let route = match &plugin.route {
                Some(fk) => Some(*at.resolve("route", &fk.id, &route_ids)?),
                None => None,
            };
            let service = match &plugin.service {
                Some(fk) => Some(*at.resolve("service", &fk.id, &services)?),
                None => None,
            };
            let consumer = match &plugin.consumer {
                Some(fk) => Some(*at.resolve("consumer", &fk.id, &consumers)?),
                None => None,
            };
            let trust = match &plugin.config {
                PluginConfig::MtlsAuth(mtls) => {
                    if mtls.ca_certificates.is_empty() {
                        return Err(at.error("config.ca_certificates: at least one is required"));
                    }
                    Some(at.trust_store(
                        "config.ca_certificates",
                        &mtls.ca_certificates,
                        &ca_certificates,
                    )?)
                }
                PluginConfig::Acl(_) => None,
            };
            plugins.push(CompiledPlugin {
                index,
                route,
                service,
                consumer,
                trust,
            });
        }

        let router = Router::build(&config, &routes);

        Ok(Self {
            config,
            services,
            routes,
            hosts,
            certificates,
            snis,
            ca_certificates,
            service_trust,
            upstreams,
            upstreams_by_name,
            targets,
            consumers,
            consumers_by_username,
            consumers_by_custom_id,
            groups,
            mtls_credentials,
            plugins,
            router,
        })
    }
}

/// Rejects a config where two entities of one collection share an id.
fn unique_ids(config: &model::Config) -> Result<(), CompileError> {
    fn check<T>(
        entity: &'static str,
        list: &[T],
        id: impl Fn(&T) -> Uuid,
    ) -> Result<(), CompileError> {
        let mut seen = HashSet::with_capacity(list.len());
        for item in list {
            let id = id(item);
            if !seen.insert(id) {
                return Err(At::new(entity, id).error("duplicate id"));
            }
        }
        Ok(())
    }
    check("service", &config.services, |e| e.id)?;
    check("route", &config.routes, |e| e.id)?;
    check("certificate", &config.certificates, |e| e.id)?;
    check("sni", &config.snis, |e| e.id)?;
    check("ca_certificate", &config.ca_certificates, |e| e.id)?;
    check("upstream", &config.upstreams, |e| e.id)?;
    check("target", &config.targets, |e| e.id)?;
    check("consumer", &config.consumers, |e| e.id)?;
    check("acl", &config.acls, |e| e.id)?;
    check("mtls_auth_credential", &config.mtls_auth_credentials, |e| {
        e.id
    })?;
    check("plugin", &config.plugins, |e| e.id)
}

/// Parses a CA certificate and checks it can anchor a chain.
fn compile_ca(pem: &str) -> Result<CertificateDer<'static>, String> {
    let mut certs =
        x509::parse_certificates(pem).map_err(|e| format!("invalid certificate: {e}"))?;
    if certs.len() != 1 {
        return Err("invalid certificate: expected exactly one certificate".to_owned());
    }
    let der = certs.remove(0);
    let facts = x509::cert_facts(&der).map_err(|e| format!("invalid certificate: {e}"))?;
    if !facts.is_ca {
        return Err("not a CA certificate (basicConstraints CA:TRUE is missing)".to_owned());
    }
    RootCertStore::empty()
        .add(der.clone())
        .map_err(|e| format!("invalid certificate: not a usable trust anchor ({e})"))?;
    Ok(der)
}

/// Builds the rustls keys of a certificate entity.
fn compile_certificate(
    cert: &model::Certificate,
    provider: &CryptoProvider,
) -> Result<TlsCertificate, String> {
    // The OCSP staples the control plane fetched, checked and keeps current (it drops them
    // before they expire); rustls sends them to clients that ask (`status_request`).
    let mut key = certified_key(&cert.cert, &cert.key, provider, MAIN_PAIR)?;
    key.ocsp.clone_from(&cert.ocsp_response);
    let alt = match (&cert.cert_alt, &cert.key_alt) {
        (Some(cert_alt), Some(key_alt)) => {
            let mut alt = certified_key(cert_alt, key_alt, provider, ALT_PAIR)?;
            alt.ocsp.clone_from(&cert.ocsp_response_alt);
            Some(alt)
        }
        (None, None) => None,
        (Some(_), None) => return Err("cert_alt is set without key_alt".to_owned()),
        (None, Some(_)) => return Err("key_alt is set without cert_alt".to_owned()),
    };
    Ok(TlsCertificate {
        id: cert.id,
        key: Arc::new(key),
        alt: alt.map(Arc::new),
        not_after: cert.not_after,
    })
}

/// The fields a certificate/key pair comes from, as error messages name them.
#[derive(Clone, Copy)]
struct PairFields {
    cert: &'static str,
    key: &'static str,
}

/// `cert`/`key`, named like the Admin API's messages (`invalid certificate: ...`).
const MAIN_PAIR: PairFields = PairFields {
    cert: "certificate",
    key: "key",
};
/// `cert_alt`/`key_alt`.
const ALT_PAIR: PairFields = PairFields {
    cert: "cert_alt",
    key: "key_alt",
};

/// Parses a chain and its key and checks they match. Key errors are fixed texts.
fn certified_key(
    cert_pem: &str,
    key_pem: &str,
    provider: &CryptoProvider,
    fields: PairFields,
) -> Result<CertifiedKey, String> {
    let PairFields { cert, key } = fields;
    let chain = x509::parse_certificates(cert_pem).map_err(|e| format!("invalid {cert}: {e}"))?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        let reason = match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no private key found",
            _ => "unable to parse key",
        };
        format!("invalid {key}: {reason}")
    })?;
    // The provider's error is dropped on purpose: only a fixed message leaves here.
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|_| format!("invalid {key}: unable to parse key"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        // rustls compares the encoded public keys byte for byte; the Admin API accepts
        // equivalent encodings, so ask the same check before refusing.
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch))
            if x509::check_key_pair(cert_pem, key_pem).is_ok() =>
        {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(format!("{cert} does not match {key}"))
        }
        Err(other) => Err(format!("invalid {cert}: unusable certificate ({other})")),
    }
}

/// Validates and compiles one route.
fn compile_route(
    index: usize,
    route: &model::Route,
    services: &HashMap<Uuid, usize>,
    regexes: &RegexCache,
) -> Result<CompiledRoute, CompileError> {
    let at = At::new("route", route.id);
    for protocol in &route.protocols {
        if !PROTOCOLS.contains(&protocol.as_str()) {
            return Err(at.error(format!("unknown protocol '{protocol}'")));
        }
    }
    if !matches!(route.path_handling.as_str(), "v0" | "v1") {
        return Err(at.error(format!("unknown path_handling '{}'", route.path_handling)));
    }
    let service = match &route.service {
        Some(fk) => Some(*at.resolve("service", &fk.id, services)?),
        None => None,
    };
    let mut prefix_paths = Vec::new();
    let mut regex_paths = Vec::new();
    for path in route.paths.iter().flatten() {
        match path.strip_prefix('~') {
            Some(pattern) => {
                let regex = regexes
                    .get(&format!("^(?:{pattern})"), false)
                    .map_err(|e| {
                        at.error(format!("invalid regex path '{path}': {}", regex_reason(&e)))
                    })?;
                regex_paths.push(RegexPath {
                    source: path.clone(),
                    regex,
                });
            }
            None => {
                checks::route_path(path)
                    .map_err(|e| at.error(format!("invalid path '{path}': {e}")))?;
                prefix_paths.push(path.clone());
            }
        }
    }
    let mut hosts = Vec::new();
    for host in route.hosts.iter().flatten() {
        hosts.push(
            HostPattern::parse(host)
                .map_err(|e| at.error(format!("invalid host '{host}': {e}")))?,
        );
    }
    let mut headers = Vec::new();
    for (name, values) in route.headers.iter().flatten() {
        checks::header_name(name).map_err(|e| at.error(format!("invalid header: {e}")))?;
        let mut matcher = HeaderMatcher {
            name: name.to_ascii_lowercase(),
            values: Vec::new(),
            patterns: Vec::new(),
        };
        for value in values {
            match value.strip_prefix("~*") {
                Some(pattern) => {
                    matcher
                        .patterns
                        .push(regexes.get(pattern, true).map_err(|e| {
                            at.error(format!(
                                "invalid regex '{value}' for header '{name}': {}",
                                regex_reason(&e)
                            ))
                        })?)
                }
                None => matcher.values.push(value.to_lowercase()),
            }
        }
        headers.push(matcher);
    }
    Ok(CompiledRoute {
        index,
        service,
        hosts,
        prefix_paths,
        regex_paths,
        headers,
    })
}

/// The one-line cause of a regex error.
fn regex_reason(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(text) => text
            .lines()
            .find_map(|line| line.trim_start().strip_prefix("error: "))
            .or_else(|| text.lines().next())
            .unwrap_or("syntax error")
            .to_owned(),
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or("error")
            .to_owned(),
    }
}

/// Maps `f` over `items`, on several threads when there are many, returning the results in
/// order or the error of the first failing item (in list order).
fn par_try_map<T, U, E, F>(items: &[T], f: F) -> Result<Vec<U>, E>
where
    T: Sync,
    U: Send,
    E: Send,
    F: Fn(&T) -> Result<U, E> + Sync,
{
    let threads = std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(MAX_THREADS);
    if items.len() < PARALLEL_THRESHOLD || threads < 2 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    let results: Vec<Result<Vec<U>, E>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                let work = move || part.iter().map(f).collect::<Result<Vec<U>, E>>();
                // Without a thread (resource limits), do the work here.
                std::thread::Builder::new()
                    .name("gatehouse-compile".into())
                    .spawn_scoped(scope, work)
                    .map_err(|_| work)
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| match handle {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(work) => work(),
            })
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for part in results {
        out.extend(part?);
    }
    Ok(out)
}

// === impl RegexCache ===

impl RegexCache {
    /// The compiled `pattern` (case-insensitive when asked). Compiles outside the lock, so
    /// threads compiling different patterns do not wait for each other.
    fn get(&self, pattern: &str, case_insensitive: bool) -> Result<Regex, regex::Error> {
        let key = (pattern.to_owned(), case_insensitive);
        if let Some(regex) = self.lock().get(&key) {
            return Ok(regex.clone());
        }
        let regex = RegexBuilder::new(pattern)
            .case_insensitive(case_insensitive)
            .build()?;
        self.lock().insert(key, regex.clone());
        Ok(regex)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, bool), Regex>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl At ===

impl At {
    fn new(entity: &'static str, id: Uuid) -> Self {
        Self { entity, id }
    }

    fn error(self, reason: impl Into<String>) -> CompileError {
        CompileError {
            entity: self.entity,
            id: self.id,
            reason: reason.into(),
        }
    }

    /// Looks a reference up, or fails with `<field> <id> does not exist`.
    fn resolve<'m, V>(
        self,
        field: &str,
        id: &Uuid,
        map: &'m HashMap<Uuid, V>,
    ) -> Result<&'m V, CompileError> {
        map.get(id)
            .ok_or_else(|| self.error(format!("{field} {id} does not exist")))
    }

    /// A root store of the listed CA certificates; each must exist.
    fn trust_store(
        self,
        field: &str,
        ids: &[Uuid],
        cas: &HashMap<Uuid, CertificateDer<'static>>,
    ) -> Result<Arc<RootCertStore>, CompileError> {
        let mut roots = RootCertStore::empty();
        for id in ids {
            let der = cas.get(id).ok_or_else(|| {
                self.error(format!("{field}: ca_certificate {id} does not exist"))
            })?;
            roots
                .add(der.clone())
                .map_err(|e| self.error(format!("{field}: ca_certificate {id}: {e}")))?;
        }
        Ok(Arc::new(roots))
    }
}

// === impl TlsCertificate ===

impl TlsCertificate {
    /// The certificate entity's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The chain and key of `cert`/`key`.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }

    /// The chain and key of `cert_alt`/`key_alt`, when set.
    pub fn alt_certified_key(&self) -> Option<&Arc<CertifiedKey>> {
        self.alt.as_ref()
    }

    /// End of validity of the leaf of `cert`, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }
}

/// Shows the id only: no key material.
impl fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("id", &self.id)
            .field("alt", &self.alt.is_some())
            .field("not_after", &self.not_after)
            .finish()
    }
}

// === impl CompiledRoute ===

impl CompiledRoute {
    /// Position of the route in [`Runtime::config`]`.routes`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Position of its service in [`Runtime::config`]`.services` (see [`Runtime::service_at`]).
    pub fn service_index(&self) -> Option<usize> {
        self.service
    }

    /// Its hosts.
    pub fn hosts(&self) -> &[HostPattern] {
        &self.hosts
    }

    /// Its prefix paths (normalized, as configured).
    pub fn prefix_paths(&self) -> &[String] {
        &self.prefix_paths
    }

    /// Its regex paths, compiled.
    pub fn regex_paths(&self) -> &[RegexPath] {
        &self.regex_paths
    }

    /// Its header matchers.
    pub fn headers(&self) -> &[HeaderMatcher] {
        &self.headers
    }
}

// === impl HostPattern ===

impl HostPattern {
    /// Parses a route host: `name`, `*.suffix` or `prefix.*`, with an optional `:port`
    /// (IPv6 addresses in brackets when a port follows).
    fn parse(host: &str) -> Result<Self, String> {
        checks::wildcard_host(host)?;
        let lower = host.to_ascii_lowercase();
        let (name, port) = if let Some(rest) = lower.strip_prefix('[') {
            match rest.split_once(']') {
                Some((addr, "")) => (addr.to_owned(), None),
                Some((addr, port)) => (addr.to_owned(), Some(port_of(port)?)),
                None => return Err("missing ']'".to_owned()),
            }
        } else {
            match lower.split_once(':') {
                Some((name, port)) if !port.contains(':') => {
                    (name.to_owned(), Some(port_of(port)?))
                }
                _ => (lower.clone(), None),
            }
        };
        let name = if let Some(suffix) = name.strip_prefix('*') {
            HostName::AnyPrefix(suffix.to_owned())
        } else if let Some(prefix) = name.strip_suffix('*') {
            HostName::AnySuffix(prefix.to_owned())
        } else {
            HostName::Exact(name)
        };
        Ok(Self { name, port })
    }
}

fn port_of(text: &str) -> Result<u16, String> {
    text.strip_prefix(':')
        .unwrap_or(text)
        .parse()
        .map_err(|_| "invalid port number".to_owned())
}

// === impl HostName ===

impl HostName {
    /// Whether a request host (lowercase, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(name) => name == host,
            Self::AnyPrefix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            Self::AnySuffix(prefix) => {
                host.len() > prefix.len() && host.starts_with(prefix.as_str())
            }
        }
    }
}

// === impl MtlsCredentialIndex ===

impl MtlsCredentialIndex {
    /// Checks every credential's references and the uniqueness of (subject name, CA
    /// certificate), and indexes them.
    fn build(
        credentials: &[model::MtlsAuthCredential],
        consumers: &HashMap<Uuid, usize>,
        ca_certificates: &HashMap<Uuid, CertificateDer<'static>>,
    ) -> Result<Self, CompileError> {
        let mut index = Self::default();
        let mut keys = HashSet::with_capacity(credentials.len());
        for (position, credential) in credentials.iter().enumerate() {
            let at = At::new("mtls_auth_credential", credential.id);
            at.resolve("consumer", &credential.consumer.id, consumers)?;
            let ca = credential.ca_certificate.map(|fk| fk.id);
            if let Some(ca) = &ca {
                at.resolve("ca_certificate", ca, ca_certificates)?;
            }
            let subject = credential.subject_name.as_str();
            if subject.is_empty() {
                return Err(at.error("subject_name is empty"));
            }
            if !keys.insert((subject, ca)) {
                let ca = ca.map_or_else(
                    || "no ca_certificate".to_owned(),
                    |id| format!("ca_certificate {id}"),
                );
                return Err(at.error(format!(
                    "subject_name '{subject}' with {ca} is used by another mtls_auth_credential"
                )));
            }
            index
                .by_subject
                .entry(subject.to_owned())
                .or_default()
                .push(position);
            index
                .by_consumer
                .entry(credential.consumer.id)
                .or_default()
                .push(position);
        }
        // Lookup order: bound to a CA first, by CA id; then the one for any CA.
        for list in index.by_subject.values_mut() {
            list.sort_unstable_by_key(|position| {
                let ca = credentials
                    .get(*position)
                    .and_then(|c| c.ca_certificate.map(|fk| fk.id));
                (ca.is_none(), ca)
            });
        }
        Ok(index)
    }
}

// === impl CompiledPlugin ===

impl CompiledPlugin {
    /// Position of the plugin in [`Runtime::config`]`.plugins`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Position of the route it is scoped to, if any.
    pub fn route_index(&self) -> Option<usize> {
        self.route
    }

    /// Position of the service it is scoped to, if any.
    pub fn service_index(&self) -> Option<usize> {
        self.service
    }

    /// Position of the consumer it is scoped to, if any.
    pub fn consumer_index(&self) -> Option<usize> {
        self.consumer
    }

    /// `mtls-auth`: the roots client certificates are verified against.
    pub fn trust(&self) -> Option<&Arc<RootCertStore>> {
        self.trust.as_ref()
    }
}

// === impl SharedRuntime ===

impl SharedRuntime {
    /// Holds `runtime` as the current one.
    pub fn new(runtime: Runtime) -> Self {
        Self {
            current: ArcSwap::from_pointee(runtime),
            parts: Parts::default(),
        }
    }

    /// The current runtime, for a short use (a request, a handshake); lock-free.
    pub fn load(&self) -> Guard<Arc<Runtime>> {
        self.current.load()
    }

    /// The current runtime, to keep.
    pub fn load_full(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Makes `runtime` the current one and returns the previous one; users that loaded the
    /// previous one keep it. Nothing is prepared: use [`SharedRuntime::apply`].
    pub(crate) fn store(&self, runtime: Arc<Runtime>) -> Arc<Runtime> {
        self.current.swap(runtime)
    }

    /// Registers a part built per runtime; it is prepared for every runtime applied later.
    pub(crate) fn register(&self, part: Weak<dyn Part>) {
        self.parts.register(part);
    }

    /// The apply step: prepares every registered part for `runtime` and, when all succeed,
    /// makes it the current runtime. Returns the previous runtime and the warnings the parts
    /// found (problems that were made safe, such as an authentication plugin instance that
    /// refuses every request because it cannot be built). On error nothing changes: the
    /// current runtime keeps serving. Blocking (CPU-bound): call it off the async threads.
    pub(crate) fn apply(&self, runtime: Arc<Runtime>) -> Result<Applied, String> {
        let warnings = self.parts.prepare(&runtime)?;
        let previous = self.store(runtime);
        Ok(Applied { previous, warnings })
    }
}

/// What [`SharedRuntime::apply`] did.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The runtime that was current before.
    pub(crate) previous: Arc<Runtime>,
    /// Problems found while preparing, made safe (sorted, deduplicated).
    pub(crate) warnings: Vec<String>,
}

impl Default for SharedRuntime {
    fn default() -> Self {
        Self::new(Runtime::empty())
    }
}

impl fmt::Debug for SharedRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedRuntime").field(&*self.load()).finish()
    }
}
