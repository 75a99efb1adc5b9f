//! The typed configuration model: one struct per entity, field for field the objects of the
//! Admin API (and of the store, which returns the same JSON). Both planes use it: the control
//! plane reads the store into a [`Config`], [`crate::snapshot`] carries it to the data planes.
//!
//! Types follow the schemas in [`crate::entities`]: a field that is required or has a default is
//! a plain value, a nullable field without a default is an `Option`. Integers use the narrowest
//! type that holds the schema's range (`port: u16`), numbers are `f64`. Enumerated strings
//! (`protocol`, `algorithm`, ...) stay strings: the data plane interprets them when it compiles
//! a snapshot, so a value it does not know is reported there, with context.
//!
//! Deserialization accepts exactly the Admin API's JSON shape: foreign keys are `{"id": ...}` or
//! null, timestamps integer seconds (float seconds for targets), a plugin's `config` shaped by its
//! `name`. Unknown keys are ignored, so a store that gained a column does not break older
//! readers. A field the schema gives a default but does not require may be stored as an explicit
//! null (the Admin API accepts `"retries": null`); such a null, like a missing key, reads as the
//! schema default. Serialization writes the same shape back.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

#[cfg(test)]
mod tests;

/// The whole configuration: every entity of every collection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Upstream APIs.
    pub services: Vec<Service>,
    /// Rules matching requests to services.
    pub routes: Vec<Route>,
    /// Certificate and key pairs.
    pub certificates: Vec<Certificate>,
    /// Server names selecting certificates.
    pub snis: Vec<Sni>,
    /// Trusted CA certificates.
    pub ca_certificates: Vec<CaCertificate>,
    /// Load-balanced virtual hosts.
    pub upstreams: Vec<Upstream>,
    /// Backend addresses of upstreams.
    pub targets: Vec<Target>,
    /// Users of the proxied APIs.
    pub consumers: Vec<Consumer>,
    /// Consumers' ACL group memberships.
    pub acls: Vec<Acl>,
    /// Client-certificate subjects mapped to consumers (`mtls-auth`).
    pub mtls_auth_credentials: Vec<MtlsAuthCredential>,
    /// Plugin instances.
    pub plugins: Vec<Plugin>,
    /// Pending ACME challenges every data plane answers (not an Admin API entity: the control
    /// plane's ACME client publishes them while it validates an order).
    pub acme_challenges: Vec<AcmeChallenge>,
    /// Set when the `acme` plugin allows on-demand issuance: which server names a data plane
    /// may ask a certificate for.
    pub acme_on_demand: Option<AcmeOnDemand>,
}

/// One pending ACME challenge (RFC 8555 section 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeChallenge {
    /// Unique id.
    pub id: Uuid,
    /// `http-01` or `tls-alpn-01`.
    pub kind: String,
    /// The name being validated: lowercase, no trailing dot, never a wildcard.
    pub domain: String,
    /// The challenge token (base64url).
    pub token: String,
    /// The key authorization: `token "." thumbprint`.
    pub key_authorization: String,
    /// When the control plane stops needing it, Unix seconds.
    pub expires_at: i64,
}

/// Which server names a data plane may ask the control plane a certificate for on demand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AcmeOnDemand {
    /// Any name.
    pub allow_any_domain: bool,
    /// Otherwise names matching one of these: exact names or `*.suffix`.
    pub domains: Vec<String>,
}

/// A reference to another entity, written `{"id": "<uuid>"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ForeignKey {
    /// The referenced entity's id.
    pub id: Uuid,
}

/// An upstream API (Kong's service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Unique id.
    pub id: Uuid,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last update time, Unix seconds.
    pub updated_at: i64,
    /// Unique name.
    pub name: Option<String>,
    /// Retries on connection failure (0..=32767, default 5).
    #[serde(
        default = "defaults::retries::value",
        deserialize_with = "defaults::retries::or_null"
    )]
    pub retries: u16,
    /// Protocol spoken to the upstream (`http`, `https`, `grpc`, `tcp`, ...).
    pub protocol: String,
    /// Upstream host: a hostname, an IP or an upstream's name.
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// Path prefix sent upstream.
    pub path: Option<String>,
    /// Connect timeout, milliseconds (default 60000).
    #[serde(
        default = "defaults::timeout::value",
        deserialize_with = "defaults::timeout::or_null"
    )]
    pub connect_timeout: u32,
    /// Timeout between two writes, milliseconds (default 60000).
    #[serde(
        default = "defaults::timeout::value",
        deserialize_with = "defaults::timeout::or_null"
    )]
    pub write_timeout: u32,
    /// Timeout between two reads, milliseconds (default 60000).
    #[serde(
        default = "defaults::timeout::value",
        deserialize_with = "defaults::timeout::or_null"
    )]
    pub read_timeout: u32,
    /// Certificate presented to the upstream (mTLS).
    pub client_certificate: Option<ForeignKey>,
    /// Whether to verify the upstream's certificate; null means the global setting.
    pub tls_verify: Option<bool>,
    /// Maximum depth of the upstream's chain; null means the global setting.
    pub tls_verify_depth: Option<u8>,
    /// CA certificates trusted for the upstream's certificate; null means the global bundle.
    pub ca_certificates: Option<Vec<Uuid>>,
    /// Whether routes to this service are served.
    pub enabled: bool,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
}

/// Rules matching requests to a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Unique id.
    pub id: Uuid,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last update time, Unix seconds.
    pub updated_at: i64,
    /// Unique name.
    pub name: Option<String>,
    /// Protocols matched (`http`, `https`, `grpc`, `tls_passthrough`, ...).
    pub protocols: Vec<String>,
    /// HTTP methods matched.
    pub methods: Option<Vec<String>>,
    /// Hosts matched (`example.com`, `*.example.com`, `example.*`).
    pub hosts: Option<Vec<String>>,
    /// Path prefixes or `~` regexes matched.
    pub paths: Option<Vec<String>>,
    /// Headers matched: name → accepted values.
    pub headers: Option<BTreeMap<String, Vec<String>>>,
    /// Status used to redirect plain HTTP when the route wants HTTPS (426, 301, 302, 307, 308).
    pub https_redirect_status_code: u16,
    /// Priority among regex paths (default 0).
    #[serde(default, deserialize_with = "null_as_default")]
    pub regex_priority: i64,
    /// Whether the matched path prefix is removed upstream.
    pub strip_path: bool,
    /// How the service path and the request path are joined (`v0`, `v1`; default `v0`).
    #[serde(
        default = "defaults::path_handling::value",
        deserialize_with = "defaults::path_handling::or_null"
    )]
    pub path_handling: String,
    /// Whether the request's Host header is sent upstream.
    pub preserve_host: bool,
    /// Whether the request body is buffered.
    pub request_buffering: bool,
    /// Whether the response body is buffered.
    pub response_buffering: bool,
    /// Server names matched (TLS routes).
    pub snis: Option<Vec<String>>,
    /// Client addresses matched (stream routes).
    pub sources: Option<Vec<Endpoint>>,
    /// Local addresses matched (stream routes).
    pub destinations: Option<Vec<Endpoint>>,
    /// The service requests are proxied to.
    pub service: Option<ForeignKey>,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
}

/// An IP (or CIDR) and port pair of a route's `sources` or `destinations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// An IP address or CIDR block.
    pub ip: Option<String>,
    /// A port.
    pub port: Option<u16>,
}

/// A certificate and its private key, with an optional alternative pair of another key type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    /// Unique id.
    pub id: Uuid,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last update time, Unix seconds.
    pub updated_at: i64,
    /// Certificate chain, PEM.
    pub cert: String,
    /// Private key, PEM.
    pub key: String,
    /// Alternative certificate chain (another key type), PEM.
    pub cert_alt: Option<String>,
    /// Alternative private key, PEM.
    pub key_alt: Option<String>,
    /// Names of the SNIs pointing at this certificate, sorted.
    #[serde(default)]
    pub snis: Vec<String>,
    /// Subject of the leaf certificate (computed).
    pub subject: String,
    /// Issuer of the leaf certificate (computed).
    pub issuer: String,
    /// DNS and IP subject alternative names of the leaf (computed).
    pub sans: Vec<String>,
    /// Start of validity, Unix seconds (computed).
    pub not_before: i64,
    /// End of validity, Unix seconds (computed).
    pub not_after: i64,
    /// SHA-256 of the leaf's DER, lowercase hex (computed).
    pub fingerprint_sha256: String,
    /// Key type of the leaf: `rsa`, `ecdsa`, `ed25519` or `other` (computed).
    pub key_type: String,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
    /// The OCSP response (DER) to staple with `cert`, fetched by the control plane; never part
    /// of the Admin API (it travels in snapshots only).
    #[serde(default, skip)]
    pub ocsp_response: Option<Vec<u8>>,
    /// The OCSP response (DER) to staple with `cert_alt`.
    #[serde(default, skip)]
    pub ocsp_response_alt: Option<Vec<u8>>,
}

/// A server name associated with a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sni {
    /// Unique id.
    pub id: Uuid,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last update time, Unix seconds.
    pub updated_at: i64,
    /// The server name (`example.com`, `*.example.com`, `example.*`, `*`).
    pub name: String,
    /// The certificate it selects.
    pub certificate: ForeignKey,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
}

/// A trusted CA certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaCertificate {
    /// Unique id.
    pub id: Uuid,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last update time, Unix seconds.
    pub updated_at: i64,
    /// The CA certificate, PEM.
    pub cert: String,
    /// SHA-256 of the certificate's DER, lowercase hex (computed).
    pub cert_digest: String,
    /// Subject (computed).
    pub subject: String,
    /// Issuer (computed).
    pub issuer: String,
    /// Start of validity, Unix seconds (computed).
    pub not_before: i64,
    /// End of validity, Unix seconds (computed).
    pub not_after: i64,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
}

/// A virtual hostname balancing over targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upstream {
    /// Unique id.
    pub id: Uuid,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last update time, Unix seconds.
    pub updated_at: i64,
    /// Unique hostname, used as a service's `host`.
    pub name: String,
    /// Balancing algorithm (`round-robin`, `consistent-hashing`, `least-connections`,
    /// `latency`; default `round-robin`).
    #[serde(
        default = "defaults::algorithm::value",
        deserialize_with = "defaults::algorithm::or_null"
    )]
    pub algorithm: String,
    /// Hash input for consistent hashing (`none`, `consumer`, `ip`, `header`, ...; default
    /// `none`).
    #[serde(
        default = "defaults::hash_none::value",
        deserialize_with = "defaults::hash_none::or_null"
    )]
    pub hash_on: String,
    /// Hash input when `hash_on` yields nothing (default `none`).
    #[serde(
        default = "defaults::hash_none::value",
        deserialize_with = "defaults::hash_none::or_null"
    )]
    pub hash_fallback: String,
    /// Header hashed when `hash_on` is `header`.
    pub hash_on_header: Option<String>,
    /// Header hashed when `hash_fallback` is `header`.
    pub hash_fallback_header: Option<String>,
    /// Cookie hashed when `hash_on` is `cookie`.
    pub hash_on_cookie: Option<String>,
    /// Path of the generated hash cookie (default `/`).
    #[serde(
        default = "defaults::slash::value",
        deserialize_with = "defaults::slash::or_null"
    )]
    pub hash_on_cookie_path: String,
    /// Query argument hashed when `hash_on` is `query_arg`.
    pub hash_on_query_arg: Option<String>,
    /// Query argument hashed when `hash_fallback` is `query_arg`.
    pub hash_fallback_query_arg: Option<String>,
    /// URI capture hashed when `hash_on` is `uri_capture`.
    pub hash_on_uri_capture: Option<String>,
    /// URI capture hashed when `hash_fallback` is `uri_capture`.
    pub hash_fallback_uri_capture: Option<String>,
    /// Slots of the consistent-hashing ring (10..=65536, default 10000).
    #[serde(
        default = "defaults::slots::value",
        deserialize_with = "defaults::slots::or_null"
    )]
    pub slots: u32,
    /// Health checking of the targets.
    #[serde(default, deserialize_with = "null_as_default")]
    pub healthchecks: Healthchecks,
    /// Host header sent upstream.
    pub host_header: Option<String>,
    /// Certificate presented to targets (mTLS) when the service has none.
    pub client_certificate: Option<ForeignKey>,
    /// Whether a target's SRV name is used as the TLS server name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub use_srv_name: bool,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
}

/// Health checking of an upstream's targets. [`Default`] is the schema's default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Healthchecks {
    /// Probes sent to targets.
    #[serde(default, deserialize_with = "null_as_default")]
    pub active: ActiveHealthcheck,
    /// Health learned from proxied traffic.
    #[serde(default, deserialize_with = "null_as_default")]
    pub passive: PassiveHealthcheck,
    /// Percentage of healthy weight below which the upstream is unhealthy (0..=100, default 0).
    #[serde(default, deserialize_with = "null_as_default")]
    pub threshold: f64,
}

/// Active health checks: probes sent to targets. [`Default`] is the schema's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveHealthcheck {
    /// Probe protocol (`tcp`, `http`, `https`, `grpc`, `grpcs`; default `http`).
    #[serde(
        rename = "type",
        default = "defaults::check_type::value",
        deserialize_with = "defaults::check_type::or_null"
    )]
    pub kind: String,
    /// Probe timeout, seconds (default 1).
    #[serde(
        default = "defaults::one::value",
        deserialize_with = "defaults::one::or_null"
    )]
    pub timeout: f64,
    /// Probes in flight at once (default 10).
    #[serde(
        default = "defaults::concurrency::value",
        deserialize_with = "defaults::concurrency::or_null"
    )]
    pub concurrency: u32,
    /// Path probed (default `/`).
    #[serde(
        default = "defaults::slash::value",
        deserialize_with = "defaults::slash::or_null"
    )]
    pub http_path: String,
    /// Server name sent in HTTPS probes.
    pub https_sni: Option<String>,
    /// Whether HTTPS probes verify the target's certificate (default true).
    #[serde(
        default = "defaults::yes::value",
        deserialize_with = "defaults::yes::or_null"
    )]
    pub https_verify_certificate: bool,
    /// Headers sent with probes: name → values.
    pub headers: Option<BTreeMap<String, Vec<String>>>,
    /// When probes mark a target healthy.
    #[serde(default, deserialize_with = "null_as_default")]
    pub healthy: ActiveHealthy,
    /// When probes mark a target unhealthy.
    #[serde(default, deserialize_with = "null_as_default")]
    pub unhealthy: ActiveUnhealthy,
}

/// When active probes mark a target healthy. [`Default`] is the schema's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveHealthy {
    /// Seconds between probes of a healthy target; 0 disables them (default 0).
    #[serde(default, deserialize_with = "null_as_default")]
    pub interval: f64,
    /// Statuses counted as successes (default 200, 302).
    #[serde(
        default = "defaults::active_healthy_statuses::value",
        deserialize_with = "defaults::active_healthy_statuses::or_null"
    )]
    pub http_statuses: Vec<u16>,
    /// Successes that mark a target healthy (0..=255, default 0).
    #[serde(default, deserialize_with = "null_as_default")]
    pub successes: u8,
}

/// When active probes mark a target unhealthy. [`Default`] is the schema's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveUnhealthy {
    /// Seconds between probes of an unhealthy target; 0 disables them (default 0).
    #[serde(default, deserialize_with = "null_as_default")]
    pub interval: f64,
    /// Statuses counted as failures (default 429, 404, 500, 501, 502, 503, 504, 505).
    #[serde(
        default = "defaults::active_unhealthy_statuses::value",
        deserialize_with = "defaults::active_unhealthy_statuses::or_null"
    )]
    pub http_statuses: Vec<u16>,
    /// TCP failures that mark a target unhealthy (0..=255, default 0).
    #[serde(default, deserialize_with = "null_as_default")]
    pub tcp_failures: u8,
    /// Timeouts that mark a target unhealthy (0..=255, default 0).
    #[serde(default, deserialize_with = "null_as_default")]
    pub timeouts: u8,
    /// HTTP failures that mark a target unhealthy (0..=255, default 0).
    #[serde(default, deserialize_with = "null_as_default")]
    pub http_failures: u8,
}

/// Passive health checks: health learned from proxied traffic. [`Default`] is the schema's
/// default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassiveHealthcheck {
    /// Traffic protocol (`tcp`, `http`, `https`, `grpc`, `grpcs`; default `http`).
    #[serde(
        rename = "type",
        default = "defaults::check_type::value",
        deserialize_with = "defaults::check_type::or_null"
    )]
    pub kind: String,
    /// When traffic marks a target healthy.
    #[serde(default, deserialize_with = "null_as_default")]
    pub healthy: PassiveHealthy,
    /// When traffic marks a target unhealthy.
    #[serde(default, deserialize_with = "null_as_default")]
    pub unhealthy: PassiveUnhealthy,
}

/// When proxied traffic marks a target healthy. [`Default`] is the schema's default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassiveHealthy {
    /// Statuses counted as successes (default 200-208, 226, 300-308).
    #[serde(
        default = "defaults::passive_healthy_statuses::value",
        deserialize_with = "defaults::passive_healthy_statuses::or_null"
    )]
    pub http_statuses: Vec<u16>,
    /// Successes that mark a target healthy (0..=255, default 0).
    #[serde(default, deserialize_with = "null_as_default")]
    pub successes: u8,
}

/// When proxied traffic marks a target unhealthy. [`Default`] is the schema's default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassiveUnhealthy {
    /// Statuses counted as failures (default 429, 500, 503).
    #[serde(
        default = "defaults::passive_unhealthy_statuses::value",
        deserialize_with = "defaults::passive_unhealthy_statuses::or_null"
    )]
    pub http_statuses: Vec<u16>,
    /// TCP failures that mark a target unhealthy (0..=255, default 0).
    #[serde(default, deserialize_with = "null_as_default")]
    pub tcp_failures: u8,
    /// Timeouts that mark a target unhealthy (0..=255, default 0).
    #[serde(default, deserialize_with = "null_as_default")]
    pub timeouts: u8,
    /// HTTP failures that mark a target unhealthy (0..=255, default 0).
    #[serde(default, deserialize_with = "null_as_default")]
    pub http_failures: u8,
}

/// A backend address of an upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Unique id.
    pub id: Uuid,
    /// Creation time, Unix seconds with millisecond precision.
    pub created_at: f64,
    /// Last update time, Unix seconds with millisecond precision.
    pub updated_at: f64,
    /// The upstream it belongs to.
    pub upstream: ForeignKey,
    /// `host:port` (the store adds the default port 8000).
    pub target: String,
    /// Balancing weight; 0 disables the target (0..=65535, default 100).
    #[serde(
        default = "defaults::weight::value",
        deserialize_with = "defaults::weight::or_null"
    )]
    pub weight: u16,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
}

/// A user of the proxied APIs. At least one of `username` and `custom_id` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    /// Unique id.
    pub id: Uuid,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last update time, Unix seconds.
    pub updated_at: i64,
    /// Unique user name.
    pub username: Option<String>,
    /// Unique id in another system.
    pub custom_id: Option<String>,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
}

/// A consumer's membership of an ACL group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    /// Unique id.
    pub id: Uuid,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last update time, Unix seconds.
    pub updated_at: i64,
    /// The member.
    pub consumer: ForeignKey,
    /// The group's name.
    pub group: String,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
}

/// An `mtls-auth` credential: the consumer a client certificate stands for when its subject
/// name (a SAN, else the CN) is `subject_name` and, when `ca_certificate` is set, it was issued
/// by that CA. (`subject_name`, `ca_certificate`) is unique, a null CA counting as one value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtlsAuthCredential {
    /// Unique id.
    pub id: Uuid,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last update time, Unix seconds.
    pub updated_at: i64,
    /// The consumer the certificate authenticates.
    pub consumer: ForeignKey,
    /// The certificate's subject name: one of its SANs, or its CN.
    pub subject_name: String,
    /// The CA the certificate must be issued by; null: any CA the plugin trusts.
    pub ca_certificate: Option<ForeignKey>,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
}

/// A plugin instance, global or scoped to a route, a service and/or a consumer. Its `name` in
/// JSON is given by [`PluginConfig::name`]; a name this build does not know fails
/// deserialization.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "PluginJson")]
pub struct Plugin {
    /// Unique id.
    pub id: Uuid,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last update time, Unix seconds.
    pub updated_at: i64,
    /// Unique instance name.
    pub instance_name: Option<String>,
    /// Route it applies to; null means every route.
    pub route: Option<ForeignKey>,
    /// Service it applies to; null means every service.
    pub service: Option<ForeignKey>,
    /// Consumer it applies to; null means every consumer.
    pub consumer: Option<ForeignKey>,
    /// Which plugin, and its configuration.
    pub config: PluginConfig,
    /// Protocols it runs on.
    pub protocols: Vec<String>,
    /// Whether it runs.
    pub enabled: bool,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
}

/// A plugin and its configuration; the variant is the plugin's name.
///
/// Deliberately not `#[non_exhaustive]`: the data plane matches every variant, so adding a
/// plugin is a compile error wherever plugins are built, not a silently skipped plugin.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginConfig {
    /// `acl`: allow or deny consumers by group.
    Acl(AclConfig),
    /// `mtls-auth`: authenticate consumers by client certificate.
    MtlsAuth(MtlsAuthConfig),
}

/// Configuration of the `acl` plugin. Exactly one of `allow` and `deny` is non-empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclConfig {
    /// Groups allowed.
    pub allow: Option<Vec<String>>,
    /// Groups denied.
    pub deny: Option<Vec<String>>,
    /// Whether the `X-Consumer-Groups` header is kept from the upstream (default false).
    #[serde(default, deserialize_with = "null_as_default")]
    pub hide_groups_header: bool,
    /// Whether only groups from authentication (not the consumer's ACLs) count (default
    /// false).
    #[serde(default, deserialize_with = "null_as_default")]
    pub always_use_authenticated_groups: bool,
}

/// Configuration of the `mtls-auth` plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MtlsAuthConfig {
    /// CA certificates client certificates are verified against (at least one).
    pub ca_certificates: Vec<Uuid>,
    /// Whether the certificate is trusted without mapping it to a consumer (default false).
    #[serde(default, deserialize_with = "null_as_default")]
    pub skip_consumer_lookup: bool,
    /// Which part of the subject becomes the authenticated group (`CN`, `DN`; default `CN`).
    #[serde(
        default = "defaults::cn::value",
        deserialize_with = "defaults::cn::or_null"
    )]
    pub authenticated_group_by: String,
    /// Consumer fields matched against the certificate's names, in order (default
    /// `username`, `custom_id`).
    #[serde(
        default = "defaults::consumer_by::value",
        deserialize_with = "defaults::consumer_by::or_null"
    )]
    pub consumer_by: Vec<String>,
    /// Consumer (id or username) used when authentication fails; null rejects.
    pub anonymous: Option<String>,
    /// Consumer (id or username) used when no consumer matches a valid certificate.
    pub default_consumer: Option<String>,
    /// Revocation checking (`SKIP`, `IGNORE_CA_ERROR`, `STRICT`; default `IGNORE_CA_ERROR`).
    #[serde(
        default = "defaults::revocation::value",
        deserialize_with = "defaults::revocation::or_null"
    )]
    pub revocation_check_mode: String,
    /// Timeout of revocation requests, milliseconds (default 30000).
    #[serde(
        default = "defaults::http_timeout::value",
        deserialize_with = "defaults::http_timeout::or_null"
    )]
    pub http_timeout: f64,
    /// Lifetime of cached consumer lookups, seconds (default 60).
    #[serde(
        default = "defaults::cache_ttl::value",
        deserialize_with = "defaults::cache_ttl::or_null"
    )]
    pub cache_ttl: f64,
    /// Lifetime of cached revocation results, milliseconds (default 60000).
    #[serde(
        default = "defaults::cert_cache_ttl::value",
        deserialize_with = "defaults::cert_cache_ttl::or_null"
    )]
    pub cert_cache_ttl: f64,
    /// Whether a chain ending at an intermediate CA is accepted (default false).
    #[serde(default, deserialize_with = "null_as_default")]
    pub allow_partial_chain: bool,
    /// Whether the CA names are sent in the certificate request (default false).
    #[serde(default, deserialize_with = "null_as_default")]
    pub send_ca_dn: bool,
    /// HTTP proxy for revocation requests.
    pub http_proxy_host: Option<String>,
    /// Port of the HTTP proxy.
    pub http_proxy_port: Option<u16>,
    /// HTTPS proxy for revocation requests.
    pub https_proxy_host: Option<String>,
    /// Port of the HTTPS proxy.
    pub https_proxy_port: Option<u16>,
    /// Whether revocation servers' certificates are verified (default true).
    #[serde(
        default = "defaults::yes::value",
        deserialize_with = "defaults::yes::or_null"
    )]
    pub ssl_verify: bool,
}

/// A plugin as JSON: `name` picks the shape of `config`.
#[derive(Deserialize)]
struct PluginJson {
    id: Uuid,
    created_at: i64,
    updated_at: i64,
    name: String,
    instance_name: Option<String>,
    route: Option<ForeignKey>,
    service: Option<ForeignKey>,
    consumer: Option<ForeignKey>,
    config: serde_json::Value,
    protocols: Vec<String>,
    enabled: bool,
    tags: Option<Vec<String>>,
}

/// Reads a null like a missing key: as the type's default (which is the schema's default).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Schema defaults that differ from the Rust type's [`Default`]: for each, `value()` (for a
/// missing key) and `or_null` (for an explicit null).
mod defaults {
    macro_rules! schema_defaults {
        ($($name:ident: $ty:ty = $value:expr;)*) => {$(
            pub(super) mod $name {
                use serde::{Deserialize, Deserializer};

                pub(in crate::model) fn value() -> $ty {
                    $value
                }

                pub(in crate::model) fn or_null<'de, D: Deserializer<'de>>(
                    deserializer: D,
                ) -> Result<$ty, D::Error> {
                    Ok(Option::<$ty>::deserialize(deserializer)?.unwrap_or_else(value))
                }
            }
        )*};
    }

    schema_defaults! {
        retries: u16 = 5;
        timeout: u32 = 60_000;
        path_handling: String = "v0".into();
        algorithm: String = "round-robin".into();
        hash_none: String = "none".into();
        slash: String = "/".into();
        slots: u32 = 10_000;
        check_type: String = "http".into();
        one: f64 = 1.0;
        concurrency: u32 = 10;
        yes: bool = true;
        active_healthy_statuses: Vec<u16> = vec![200, 302];
        active_unhealthy_statuses: Vec<u16> = vec![429, 404, 500, 501, 502, 503, 504, 505];
        passive_healthy_statuses: Vec<u16> = vec![
            200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 306,
            307, 308,
        ];
        passive_unhealthy_statuses: Vec<u16> = vec![429, 500, 503];
        weight: u16 = 100;
        cn: String = "CN".into();
        consumer_by: Vec<String> = vec!["username".into(), "custom_id".into()];
        revocation: String = "IGNORE_CA_ERROR".into();
        http_timeout: f64 = 30_000.0;
        cache_ttl: f64 = 60.0;
        cert_cache_ttl: f64 = 60_000.0;
    }
}

// === impl Config ===

impl Config {
    /// Orders every list by id: the canonical order, in which two configs with the same
    /// entities compare (and encode) equal.
    pub fn sort(&mut self) {
        self.services.sort_by_key(|e| e.id);
        self.routes.sort_by_key(|e| e.id);
        self.certificates.sort_by_key(|e| e.id);
        self.snis.sort_by_key(|e| e.id);
        self.ca_certificates.sort_by_key(|e| e.id);
        self.upstreams.sort_by_key(|e| e.id);
        self.targets.sort_by_key(|e| e.id);
        self.consumers.sort_by_key(|e| e.id);
        self.acls.sort_by_key(|e| e.id);
        self.mtls_auth_credentials.sort_by_key(|e| e.id);
        self.plugins.sort_by_key(|e| e.id);
        self.acme_challenges.sort_by_key(|e| e.id);
    }
}

// === impl ForeignKey ===

impl From<Uuid> for ForeignKey {
    fn from(id: Uuid) -> Self {
        Self { id }
    }
}

// === impl Healthchecks records ===

impl Default for ActiveHealthcheck {
    fn default() -> Self {
        Self {
            kind: defaults::check_type::value(),
            timeout: defaults::one::value(),
            concurrency: defaults::concurrency::value(),
            http_path: defaults::slash::value(),
            https_sni: None,
            https_verify_certificate: defaults::yes::value(),
            headers: None,
            healthy: ActiveHealthy::default(),
            unhealthy: ActiveUnhealthy::default(),
        }
    }
}

impl Default for ActiveHealthy {
    fn default() -> Self {
        Self {
            interval: 0.0,
            http_statuses: defaults::active_healthy_statuses::value(),
            successes: 0,
        }
    }
}

impl Default for ActiveUnhealthy {
    fn default() -> Self {
        Self {
            interval: 0.0,
            http_statuses: defaults::active_unhealthy_statuses::value(),
            tcp_failures: 0,
            timeouts: 0,
            http_failures: 0,
        }
    }
}

impl Default for PassiveHealthcheck {
    fn default() -> Self {
        Self {
            kind: defaults::check_type::value(),
            healthy: PassiveHealthy::default(),
            unhealthy: PassiveUnhealthy::default(),
        }
    }
}

impl Default for PassiveHealthy {
    fn default() -> Self {
        Self {
            http_statuses: defaults::passive_healthy_statuses::value(),
            successes: 0,
        }
    }
}

impl Default for PassiveUnhealthy {
    fn default() -> Self {
        Self {
            http_statuses: defaults::passive_unhealthy_statuses::value(),
            tcp_failures: 0,
            timeouts: 0,
            http_failures: 0,
        }
    }
}

// === impl Plugin ===

impl Plugin {
    /// The plugin's name (`acl`, `mtls-auth`).
    pub fn name(&self) -> &'static str {
        self.config.name()
    }
}

impl TryFrom<PluginJson> for Plugin {
    type Error = serde_json::Error;

    fn try_from(json: PluginJson) -> Result<Self, Self::Error> {
        let config = match json.name.as_str() {
            "acl" => PluginConfig::Acl(serde_json::from_value(json.config)?),
            "mtls-auth" => PluginConfig::MtlsAuth(serde_json::from_value(json.config)?),
            other => {
                return Err(serde_json::Error::custom(format_args!(
                    "unknown plugin `{other}`"
                )));
            }
        };
        Ok(Self {
            id: json.id,
            created_at: json.created_at,
            updated_at: json.updated_at,
            instance_name: json.instance_name,
            route: json.route,
            service: json.service,
            consumer: json.consumer,
            config,
            protocols: json.protocols,
            enabled: json.enabled,
            tags: json.tags,
        })
    }
}

impl Serialize for Plugin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Plugin", 12)?;
        s.serialize_field("id", &self.id)?;
        s.serialize_field("created_at", &self.created_at)?;
        s.serialize_field("updated_at", &self.updated_at)?;
        s.serialize_field("name", self.name())?;
        s.serialize_field("instance_name", &self.instance_name)?;
        s.serialize_field("route", &self.route)?;
        s.serialize_field("service", &self.service)?;
        s.serialize_field("consumer", &self.consumer)?;
        s.serialize_field("config", &self.config)?;
        s.serialize_field("protocols", &self.protocols)?;
        s.serialize_field("enabled", &self.enabled)?;
        s.serialize_field("tags", &self.tags)?;
        s.end()
    }
}

// === impl PluginConfig ===

impl PluginConfig {
    /// The plugin's name, as in the Admin API (`acl`, `mtls-auth`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Acl(_) => "acl",
            Self::MtlsAuth(_) => "mtls-auth",
        }
    }
}

/// Serializes the configuration object alone; the name goes beside it, in [`Plugin`].
impl Serialize for PluginConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Acl(config) => config.serialize(serializer),
            Self::MtlsAuth(config) => config.serialize(serializer),
        }
    }
}
