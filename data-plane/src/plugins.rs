//! Plugins at the proxy, compiled once per runtime ([`Plan`]): which instance of each plugin
//! applies to a route, what TLS handshakes must ask of clients, and the access phase.
//!
//! # Precedence
//! For each route, and each plugin name, the most specific enabled instance wins (Kong's
//! order without consumers): route **and** service, then route, then service, then global.
//! `mtls-auth` and `acl` cannot be scoped to a consumer in Kong (`no_consumer`); instances
//! that are (the Admin API accepts them) are ignored here. An instance runs only for the
//! protocols it lists.
//!
//! # Order
//! By priority, as Kong: `mtls-auth` (1006) authenticates, then `acl` (950) authorises. A
//! plugin may answer early ([`Denied`]); otherwise it leaves an [`Identity`] (consumer,
//! authenticated groups) and headers for the upstream.
//!
//! # Handshakes
//! [`ClientAuth`] says which server names request a client certificate: every one when an
//! `mtls-auth` instance is global or applies to a route without `snis` and `hosts`, otherwise
//! the `snis` and `hosts` of the routes it applies to. Handshakes for other names never ask,
//! so browsers on other hosts see no certificate prompt. The certificate is requested, not
//! required, and its chain is verified at access time against the instance's own CAs: two
//! routes with different CAs on one listener each accept only their own clients. Because
//! that check runs on every connection's first request (and again whenever the runtime
//! changes), a resumed TLS session never skips it, and a CA removed at the control plane stops
//! its clients on the next request.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use rustls::DistinguishedName;
use uuid::Uuid;

use gatehouse_shared::model::{self, PluginConfig};

use crate::revocation::RevocationChecker;
use crate::router::Protocol;
use crate::runtime::{Part, PerRuntime, Runtime};
use crate::tls::TlsInfo;

mod acl;
mod mtls_auth;

pub(crate) use mtls_auth::VerifiedCertificates;

use acl::Acl;
use mtls_auth::MtlsAuth;

/// `X-Consumer-ID`.
const CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");
/// `X-Consumer-Username`.
const CONSUMER_USERNAME: HeaderName = HeaderName::from_static("x-consumer-username");
/// `X-Consumer-Custom-ID`.
const CONSUMER_CUSTOM_ID: HeaderName = HeaderName::from_static("x-consumer-custom-id");
/// `X-Anonymous-Consumer`.
const ANONYMOUS_CONSUMER: HeaderName = HeaderName::from_static("x-anonymous-consumer");
/// `X-Consumer-Groups`.
const CONSUMER_GROUPS: HeaderName = HeaderName::from_static("x-consumer-groups");
/// `X-Authenticated-Groups`.
const AUTHENTICATED_GROUPS: HeaderName = HeaderName::from_static("x-authenticated-groups");
/// `X-Client-Cert-Dn`.
const CLIENT_CERT_DN: HeaderName = HeaderName::from_static("x-client-cert-dn");
/// `X-Client-Cert-San`.
const CLIENT_CERT_SAN: HeaderName = HeaderName::from_static("x-client-cert-san");

/// Identity headers a client must never set itself when an authentication plugin runs.
const IDENTITY_HEADERS: [HeaderName; 8] = [
    CONSUMER_ID,
    CONSUMER_USERNAME,
    CONSUMER_CUSTOM_ID,
    ANONYMOUS_CONSUMER,
    CONSUMER_GROUPS,
    AUTHENTICATED_GROUPS,
    CLIENT_CERT_DN,
    CLIENT_CERT_SAN,
];

/// The plans of the recent runtimes, and what plugins share across runtimes.
#[derive(Default)]
pub(crate) struct Plugins {
    plans: PerRuntime<Plan>,
    revocation: RevocationChecker,
}

/// The plugins of one runtime.
pub(crate) struct Plan {
    /// By route index.
    routes: Vec<RoutePlugins>,
    client_auth: Arc<ClientAuth>,
    /// Instances that cannot be built, and so refuse every request they cover.
    warnings: Vec<String>,
}

/// The plugin instances that apply to one route.
#[derive(Default, Clone)]
pub(crate) struct RoutePlugins {
    mtls: Option<Authn>,
    acl: Option<Arc<Acl>>,
}

/// An authentication instance: built, or refusing everything it covers because it could not
/// be built (fail closed: an authentication control that cannot be evaluated never means
/// "no authentication").
#[derive(Clone)]
enum Authn {
    Mtls(Arc<MtlsAuth>),
    Refuse(Arc<Unbuilt>),
}

/// An authentication instance that could not be built.
#[derive(Debug)]
struct Unbuilt {
    plugin: Uuid,
    name: &'static str,
    protocols: Vec<String>,
    reason: String,
}

/// Which handshakes request a client certificate, and the CA names sent with the request.
#[derive(Debug, Default)]
pub(crate) struct ClientAuth {
    all: bool,
    names: Vec<NamePattern>,
    hints: Vec<DistinguishedName>,
}

/// A server name pattern of a route's `snis` or `hosts`: exact, `*.suffix` or `prefix.*`,
/// matched against lowercase names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NamePattern {
    Exact(String),
    /// `*.example.com` as `.example.com`.
    Suffix(String),
    /// `example.*` as `example.`.
    Prefix(String),
}

/// Who the request is, as the plugins found out.
#[derive(Debug, Default)]
pub(crate) struct Identity {
    /// The consumer, if one was identified (or the anonymous one).
    pub(crate) consumer: Option<model::Consumer>,
    /// Whether `consumer` is the anonymous fallback.
    pub(crate) anonymous: bool,
    /// Groups from authentication (mtls-auth's `authenticated_group_by`).
    pub(crate) authenticated_groups: Vec<String>,
    /// Whether some credential was presented and accepted.
    pub(crate) credential: bool,
}

/// A plugin's early answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denied {
    pub(crate) status: StatusCode,
    pub(crate) message: &'static str,
}

/// What the access phase needs from the connection and request.
pub(crate) struct Request<'a> {
    pub(crate) tls: Option<&'a TlsInfo>,
    pub(crate) protocol: Protocol,
    pub(crate) client_ip: IpAddr,
    /// This connection's verification results.
    pub(crate) verified: &'a VerifiedCertificates,
    /// CRL and OCSP answers (shared by the process).
    pub(crate) revocation: &'a RevocationChecker,
}

// === impl Plugins ===

impl Plugins {
    /// The revocation checker (its caches outlive runtimes).
    pub(crate) fn revocation(&self) -> &RevocationChecker {
        &self.revocation
    }

    /// The plan of `runtime`: prepared by the apply step, else built now.
    pub(crate) fn for_runtime(&self, runtime: &Runtime) -> Arc<Plan> {
        self.plans
            .get_or_insert_with(runtime, || Plan::build(runtime))
    }
}

impl Part for Plugins {
    fn prepare(&self, runtime: &Arc<Runtime>, warnings: &mut Vec<String>) -> Result<(), String> {
        let plan = Plan::build(runtime);
        warnings.extend(plan.warnings.iter().cloned());
        self.plans.insert(runtime, Arc::new(plan));
        Ok(())
    }
}

// === impl Plan ===

impl Plan {
    /// Resolves every route's plugins. An authentication instance that cannot be built
    /// (no CA certificate that anchors a chain, say) stays in the plan as one that refuses
    /// every request it covers, and is reported in [`Plan::warnings`].
    pub(crate) fn build(runtime: &Runtime) -> Self {
        let config = runtime.config();
        let mut warnings = Vec::new();
        let mut instances: Vec<(Instance, Option<usize>, Option<usize>)> = Vec::new();
        for compiled in runtime.plugins() {
            let Some(plugin) = runtime.plugin(compiled) else {
                continue;
            };
            if !plugin.enabled {
                continue;
            }
            if compiled.consumer_index().is_some() {
                // Kong's `no_consumer`: the Admin API refuses these, so only a hand-made
                // snapshot has one. A consumer is known only after authentication, so such
                // an instance could never run: it is reported, not applied.
                warnings.push(format!(
                    "plugin {} ({}) is scoped to a consumer, which this plugin does not \
                     support; it is not applied",
                    plugin.id,
                    plugin.name()
                ));
                continue;
            }
            let instance = match &plugin.config {
                PluginConfig::MtlsAuth(mtls) => {
                    match MtlsAuth::new(plugin.id, mtls, &plugin.protocols, runtime) {
                        Ok(mtls) => Instance::Authn(Authn::Mtls(Arc::new(mtls))),
                        Err(reason) => {
                            tracing::error!(
                                plugin = %plugin.id,
                                %reason,
                                "mtls-auth instance cannot be built; it refuses every request it covers"
                            );
                            warnings.push(format!(
                                "plugin {} (mtls-auth) cannot be built and refuses every \
                                 request it covers: {reason}",
                                plugin.id
                            ));
                            Instance::Authn(Authn::Refuse(Arc::new(Unbuilt {
                                plugin: plugin.id,
                                name: "mtls-auth",
                                protocols: plugin.protocols.clone(),
                                reason,
                            })))
                        }
                    }
                }
                PluginConfig::Acl(acl) => Instance::Acl(Arc::new(Acl::new(acl, &plugin.protocols))),
            };
            instances.push((instance, compiled.route_index(), compiled.service_index()));
        }

        let service_index = |route: &model::Route| {
            let id = route.service.as_ref()?.id;
            config.services.iter().position(|s| s.id == id)
        };
        let mut client_auth = ClientAuth::default();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, route)| {
                let service = service_index(route);
                let rank = |r: Option<usize>, s: Option<usize>| -> Option<u8> {
                    match (r, s) {
                        (Some(r), Some(s)) if r == index && Some(s) == service => Some(4),
                        (Some(r), None) if r == index => Some(3),
                        (None, Some(s)) if Some(s) == service => Some(2),
                        (None, None) => Some(1),
                        _ => None,
                    }
                };
                let mut best_mtls: Option<(u8, &Authn)> = None;
                let mut best_acl: Option<(u8, &Arc<Acl>)> = None;
                for (instance, r, s) in &instances {
                    let Some(rank) = rank(*r, *s) else { continue };
                    match instance {
                        Instance::Authn(m) if best_mtls.is_none_or(|(b, _)| rank > b) => {
                            best_mtls = Some((rank, m));
                        }
                        Instance::Acl(a) if best_acl.is_none_or(|(b, _)| rank > b) => {
                            best_acl = Some((rank, a));
                        }
                        _ => {}
                    }
                }
                let plugins = RoutePlugins {
                    mtls: best_mtls.map(|(_, m)| m.clone()),
                    acl: best_acl.map(|(_, a)| a.clone()),
                };
                if let Some(Authn::Mtls(mtls)) = &plugins.mtls {
                    client_auth.add(route, mtls);
                }
                plugins
            })
            .collect();
        // A global instance applies to every route, with or without names.
        if instances.iter().any(|(i, r, s)| {
            matches!(i, Instance::Authn(Authn::Mtls(_))) && r.is_none() && s.is_none()
        }) {
            client_auth.all = true;
        }
        client_auth.hints.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        client_auth.hints.dedup_by(|a, b| a.as_ref() == b.as_ref());
        Self {
            routes,
            client_auth: Arc::new(client_auth),
            warnings,
        }
    }

    /// The plugins of route `index`.
    pub(crate) fn route(&self, index: usize) -> Option<&RoutePlugins> {
        self.routes.get(index)
    }

    /// Which handshakes request a client certificate.
    pub(crate) fn client_auth(&self) -> &Arc<ClientAuth> {
        &self.client_auth
    }
}

enum Instance {
    Authn(Authn),
    Acl(Arc<Acl>),
}

// === impl Authn ===

impl Authn {
    fn runs_for(&self, protocol: Protocol) -> bool {
        match self {
            Self::Mtls(mtls) => mtls.runs_for(protocol),
            Self::Refuse(unbuilt) => runs_for(&unbuilt.protocols, protocol),
        }
    }
}

// === impl RoutePlugins ===

impl RoutePlugins {
    /// Runs the access phase: `mtls-auth`, then `acl`. `None` when no plugin runs for the
    /// request's protocol; otherwise the identity headers for the upstream, which replace
    /// whatever the client sent under those names ([`strip_identity`]).
    pub(crate) async fn access(
        &self,
        runtime: &Runtime,
        request: &Request<'_>,
    ) -> Result<Option<HeaderMap>, Denied> {
        let mtls = self.mtls.as_ref().filter(|m| m.runs_for(request.protocol));
        let acl = self.acl.as_ref().filter(|a| a.runs_for(request.protocol));
        if mtls.is_none() && acl.is_none() {
            return Ok(None);
        }
        let mut identity = Identity::default();
        let mut headers: Vec<(HeaderName, String)> = Vec::new();
        match mtls {
            Some(Authn::Mtls(mtls)) => {
                mtls.access(runtime, request, &mut identity, &mut headers)
                    .await?;
            }
            Some(Authn::Refuse(unbuilt)) => {
                tracing::warn!(
                    plugin = %unbuilt.plugin,
                    name = unbuilt.name,
                    client = %request.client_ip,
                    reason = %unbuilt.reason,
                    "request refused: its authentication plugin instance cannot be built"
                );
                crate::metrics::METRICS.mtls_failure(crate::metrics::MtlsFailure::Unbuilt);
                return Err(Denied {
                    status: StatusCode::UNAUTHORIZED,
                    message: mtls_auth::FAILED_VERIFICATION,
                });
            }
            None => {}
        }
        if let Some(acl) = acl {
            acl.access(runtime, &identity, &mut headers)?;
        }
        if let Some(consumer) = &identity.consumer {
            headers.push((CONSUMER_ID, consumer.id.to_string()));
            if let Some(username) = &consumer.username {
                headers.push((CONSUMER_USERNAME, username.clone()));
            }
            if let Some(custom_id) = &consumer.custom_id {
                headers.push((CONSUMER_CUSTOM_ID, custom_id.clone()));
            }
            if identity.anonymous {
                headers.push((ANONYMOUS_CONSUMER, "true".to_owned()));
            }
        }
        let mut map = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            // An identity the upstream cannot be told (a control character in a certificate
            // name) is refused rather than forwarded without its identity headers.
            let Ok(value) = HeaderValue::from_str(&value) else {
                tracing::warn!(
                    header = %name,
                    client = %request.client_ip,
                    "request refused: its identity cannot be written as a header value"
                );
                return Err(Denied {
                    status: StatusCode::UNAUTHORIZED,
                    message: mtls_auth::FAILED_VERIFICATION,
                });
            };
            map.insert(name, value);
        }
        Ok(Some(map))
    }
}

/// The consumer named by identity headers, as metrics label it: its username, else its id.
pub(crate) fn consumer_of(identity: &HeaderMap) -> Option<String> {
    [&CONSUMER_USERNAME, &CONSUMER_ID]
        .into_iter()
        .find_map(|name| identity.get(name)?.to_str().ok())
        .map(str::to_owned)
}

/// Removes the identity headers (`X-Consumer-*`, `X-Authenticated-Groups`,
/// `X-Client-Cert-*`) a client sent: only the plugins set them.
pub(crate) fn strip_identity(headers: &mut HeaderMap) {
    for name in IDENTITY_HEADERS {
        headers.remove(name);
    }
}

// === impl ClientAuth ===

impl ClientAuth {
    fn add(&mut self, route: &model::Route, mtls: &MtlsAuth) {
        let names: Vec<&str> = route
            .snis
            .iter()
            .flatten()
            .map(String::as_str)
            .chain(route.hosts.iter().flatten().map(|h| {
                // A host may carry a port; the server name never does.
                match h.rsplit_once(':') {
                    Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                    _ => h.as_str(),
                }
            }))
            .collect();
        if names.is_empty() {
            self.all = true;
        }
        for name in names {
            let pattern = NamePattern::new(name);
            if !self.names.contains(&pattern) {
                self.names.push(pattern);
            }
        }
        if mtls.send_ca_dn() {
            self.hints.extend(mtls.hints().iter().cloned());
        }
    }

    /// Whether a handshake for `server_name` requests a client certificate.
    pub(crate) fn requests(&self, server_name: Option<&str>) -> bool {
        if self.all {
            return true;
        }
        let Some(name) = server_name else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        self.names.iter().any(|p| p.matches(&name))
    }

    /// Whether any handshake requests a client certificate.
    pub(crate) fn is_used(&self) -> bool {
        self.all || !self.names.is_empty()
    }

    /// The CA names sent in certificate requests (`send_ca_dn`).
    pub(crate) fn hints(&self) -> &[DistinguishedName] {
        &self.hints
    }
}

impl NamePattern {
    pub(crate) fn new(raw: &str) -> Self {
        let raw = raw.to_ascii_lowercase();
        if let Some(suffix) = raw.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else if let Some(prefix) = raw.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else {
            Self::Exact(raw)
        }
    }

    pub(crate) fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == name,
            Self::Suffix(suffix) => name.len() > suffix.len() && name.ends_with(suffix.as_str()),
            Self::Prefix(prefix) => name.len() > prefix.len() && name.starts_with(prefix.as_str()),
        }
    }
}

/// Whether `protocols` (a plugin's) include the request's.
fn runs_for(protocols: &[String], protocol: Protocol) -> bool {
    let name = match protocol {
        Protocol::Http => "http",
        Protocol::Https => "https",
        Protocol::Grpc => "grpc",
        Protocol::Grpcs => "grpcs",
    };
    protocols.iter().any(|p| p == name)
}

/// A consumer named by id or username (`anonymous`, `default_consumer`).
fn consumer_named<'r>(runtime: &'r Runtime, name: &str) -> Option<&'r model::Consumer> {
    match Uuid::parse_str(name) {
        Ok(id) => runtime.consumer(&id),
        Err(_) => runtime.consumer_by_username(name),
    }
}

#[cfg(test)]
mod tests;
