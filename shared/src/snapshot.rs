//! A [`model::Config`] on the wire: conversion to and from `gatehouse.v1.Config`, the canonical
//! encoding and its hash, compression, and the checks a receiver runs before trusting a
//! snapshot.
//!
//! The hash is the lowercase hex SHA-256 of the prost encoding of the config in canonical order
//! (every entity list sorted by id). prost writes fields in tag order and the config has no
//! `map<>` fields, so the same config gives the same bytes, and the same hash, on every
//! control-plane replica. The bytes are then gzip-compressed when that makes them smaller.
//!
//! Encoding happens once per version on the control plane; [`EncodedSnapshot`] holds the bytes
//! as [`Bytes`], so every data-plane stream shares them.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use bytes::Bytes;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use gatehouse_proto::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model;

#[cfg(test)]
mod tests;

/// The largest uncompressed config a receiver accepts, in bytes (512 MiB): a guard against
/// compressed data that inflates without bound.
pub const MAX_CONFIG_SIZE: u64 = 512 * 1024 * 1024;

/// gzip level used by [`encode`]. Measured on 1000 routes, services, certificates and SNIs
/// (1.65 MB encoded; `sizes_of_a_large_config`, release build): level 1 gives 50% in 10 ms,
/// level 6 48% in 49 ms, level 9 the same as 6. The snapshot is on the path of every change, so
/// the fast level wins.
const GZIP_LEVEL: u32 = 1;

/// The most memory reserved up front for a decompressed config, whatever size it announces.
const MAX_PREALLOCATION: u64 = 64 * 1024 * 1024;

/// A snapshot encoded once and ready to send. Cloning is cheap: the config bytes are shared.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedSnapshot {
    /// The config version.
    pub version: u64,
    /// Lowercase hex SHA-256 of the uncompressed, canonical config bytes.
    pub hash: String,
    /// The message to send, carrying the same version and hash.
    pub message: pb::Snapshot,
}

/// Why a received snapshot was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The snapshot names a compression this build does not know.
    #[error("unsupported snapshot encoding {0}")]
    UnsupportedEncoding(i32),
    /// The announced uncompressed size is over [`MAX_CONFIG_SIZE`].
    #[error("snapshot config of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The announced size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The compressed bytes are corrupt, or inflate beyond the announced size.
    #[error("cannot decompress snapshot config: {0}")]
    Decompress(#[source] std::io::Error),
    /// The uncompressed config is shorter or longer than announced.
    #[error("snapshot config is {actual} bytes, announced {announced}")]
    SizeMismatch {
        /// The announced size (`config_size`).
        announced: u64,
        /// The actual size.
        actual: u64,
    },
    /// The config bytes do not hash to the announced hash.
    #[error("snapshot hash mismatch: announced {expected}, computed {actual}")]
    HashMismatch {
        /// The hash the snapshot announced.
        expected: String,
        /// The hash of the bytes received.
        actual: String,
    },
    /// The config bytes are not a `gatehouse.v1.Config`.
    #[error("cannot decode snapshot config: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The config decodes but a value is out of its domain.
    #[error("invalid snapshot: {0}")]
    Invalid(#[from] InvalidSnapshot),
}

/// A value of a decoded config that the model cannot hold (a malformed UUID, an integer out of
/// range, a missing record), and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{collection}[{index}] (id {id:?}): {field}: {reason}")]
#[non_exhaustive]
pub struct InvalidSnapshot {
    /// The collection (`routes`).
    pub collection: &'static str,
    /// The entity's position in its list.
    pub index: usize,
    /// The entity's id as received (which may be the invalid value).
    pub id: String,
    /// The field, as a dotted path of proto field names (`healthchecks.active.concurrency`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Encodes `config` as the snapshot of `version`: in canonical order, hashed, and compressed
/// when that saves space.
pub fn encode(config: &model::Config, version: u64) -> EncodedSnapshot {
    encode_proto(&pb::Config::from(config), version)
}

/// Encodes a wire config as it is, without reordering it. [`encode`] is this after the
/// canonical conversion; use this directly only to craft snapshots (in tests, for example).
pub fn encode_proto(config: &pb::Config, version: u64) -> EncodedSnapshot {
    let raw = config.encode_to_vec();
    let hash = hash(&raw);
    let config_size = raw.len() as u64;
    let (encoding, bytes) = match gzip(&raw) {
        Ok(compressed) if compressed.len() < raw.len() => (pb::Encoding::Gzip, compressed),
        // Compressing into memory cannot fail in practice; if it ever did, identity is as good.
        _ => (pb::Encoding::Identity, raw),
    };
    EncodedSnapshot {
        version,
        hash: hash.clone(),
        message: pb::Snapshot {
            version,
            hash,
            encoding: encoding.into(),
            config: Bytes::from(bytes),
            config_size,
        },
    }
}

/// Decodes a received snapshot: decompresses it (refusing more than `config_size` or
/// [`MAX_CONFIG_SIZE`] bytes), checks its hash, decodes and converts it.
pub fn decode(snapshot: &pb::Snapshot) -> Result<model::Config, SnapshotError> {
    let raw = decompress(snapshot)?;
    let actual = hash(&raw);
    if actual != snapshot.hash {
        return Err(SnapshotError::HashMismatch {
            expected: snapshot.hash.clone(),
            actual,
        });
    }
    let config = pb::Config::decode(raw)?;
    Ok(model::Config::try_from(config)?)
}

/// Lowercase hex SHA-256 of encoded config bytes.
fn hash(raw: &[u8]) -> String {
    hex::encode(Sha256::digest(raw))
}

fn gzip(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(raw.len() / 2),
        Compression::new(GZIP_LEVEL),
    );
    encoder.write_all(raw)?;
    encoder.finish()
}

/// The uncompressed config bytes of `snapshot`, exactly `config_size` long.
fn decompress(snapshot: &pb::Snapshot) -> Result<Bytes, SnapshotError> {
    let announced = snapshot.config_size;
    if announced > MAX_CONFIG_SIZE {
        return Err(SnapshotError::TooLarge {
            size: announced,
            limit: MAX_CONFIG_SIZE,
        });
    }
    let encoding = pb::Encoding::try_from(snapshot.encoding)
        .map_err(|_| SnapshotError::UnsupportedEncoding(snapshot.encoding))?;
    let raw = match encoding {
        pb::Encoding::Identity => snapshot.config.clone(),
        pb::Encoding::Gzip => {
            let mut raw = Vec::with_capacity(announced.min(MAX_PREALLOCATION) as usize);
            // One byte more than announced tells "too long" from "exactly right" without
            // inflating any further.
            GzDecoder::new(&snapshot.config[..])
                .take(announced + 1)
                .read_to_end(&mut raw)
                .map_err(SnapshotError::Decompress)?;
            if raw.len() as u64 > announced {
                return Err(SnapshotError::Decompress(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("inflates beyond the announced config_size of {announced} bytes"),
                )));
            }
            Bytes::from(raw)
        }
    };
    if raw.len() as u64 != announced {
        return Err(SnapshotError::SizeMismatch {
            announced,
            actual: raw.len() as u64,
        });
    }
    Ok(raw)
}

// === model → wire ===

/// Converts in canonical order: every entity list sorted by id, whatever the order of `config`.
impl From<&model::Config> for pb::Config {
    fn from(config: &model::Config) -> Self {
        let model::Config {
            services,
            routes,
            certificates,
            snis,
            ca_certificates,
            upstreams,
            targets,
            consumers,
            acls,
            mtls_auth_credentials,
            plugins,
            acme_challenges,
            acme_on_demand,
        } = config;
        Self {
            services: sorted(services, |e| e.id, service),
            routes: sorted(routes, |e| e.id, route),
            certificates: sorted(certificates, |e| e.id, certificate),
            snis: sorted(snis, |e| e.id, sni),
            ca_certificates: sorted(ca_certificates, |e| e.id, ca_certificate),
            upstreams: sorted(upstreams, |e| e.id, upstream),
            targets: sorted(targets, |e| e.id, target),
            consumers: sorted(consumers, |e| e.id, consumer),
            acls: sorted(acls, |e| e.id, acl),
            plugins: sorted(plugins, |e| e.id, plugin),
            mtls_auth_credentials: sorted(mtls_auth_credentials, |e| e.id, mtls_auth_credential),
            acme_challenges: sorted(acme_challenges, |e| e.id, acme_challenge),
            acme_on_demand: acme_on_demand.as_ref().map(|on_demand| pb::AcmeOnDemand {
                allow_any_domain: on_demand.allow_any_domain,
                domains: on_demand.domains.clone(),
            }),
        }
    }
}

/// Converts the entities of `list` in id order.
fn sorted<T, U>(list: &[T], id: impl Fn(&T) -> Uuid, convert: impl Fn(&T) -> U) -> Vec<U> {
    let mut refs: Vec<&T> = list.iter().collect();
    refs.sort_by_key(|e| id(e));
    refs.into_iter().map(convert).collect()
}

/// The lowercase hyphenated form: the canonical one.
fn id(id: &Uuid) -> String {
    id.to_string()
}

fn fk(key: &Option<model::ForeignKey>) -> Option<String> {
    key.as_ref().map(|k| id(&k.id))
}

fn string_list(list: &Option<Vec<String>>) -> Option<pb::StringList> {
    list.as_ref().map(|values| pb::StringList {
        values: values.clone(),
    })
}

fn uuid_list(list: &Option<Vec<Uuid>>) -> Option<pb::StringList> {
    list.as_ref().map(|values| pb::StringList {
        values: values.iter().map(id).collect(),
    })
}

fn header_list(map: &Option<BTreeMap<String, Vec<String>>>) -> Option<pb::HeaderList> {
    // A BTreeMap iterates in key order: the entries come out sorted by name.
    map.as_ref().map(|map| pb::HeaderList {
        headers: map
            .iter()
            .map(|(name, values)| pb::Header {
                name: name.clone(),
                values: values.clone(),
            })
            .collect(),
    })
}

fn endpoint_list(list: &Option<Vec<model::Endpoint>>) -> Option<pb::EndpointList> {
    list.as_ref().map(|endpoints| pb::EndpointList {
        endpoints: endpoints
            .iter()
            .map(|e| pb::Endpoint {
                ip: e.ip.clone(),
                port: e.port.map(u32::from),
            })
            .collect(),
    })
}

fn statuses(list: &[u16]) -> Vec<u32> {
    list.iter().copied().map(u32::from).collect()
}

fn service(service: &model::Service) -> pb::Service {
    let model::Service {
        id: service_id,
        created_at,
        updated_at,
        name,
        retries,
        protocol,
        host,
        port,
        path,
        connect_timeout,
        write_timeout,
        read_timeout,
        client_certificate,
        tls_verify,
        tls_verify_depth,
        ca_certificates,
        enabled,
        tags,
    } = service;
    pb::Service {
        id: id(service_id),
        created_at: *created_at,
        updated_at: *updated_at,
        name: name.clone(),
        retries: u32::from(*retries),
        protocol: protocol.clone(),
        host: host.clone(),
        port: u32::from(*port),
        path: path.clone(),
        connect_timeout: *connect_timeout,
        write_timeout: *write_timeout,
        read_timeout: *read_timeout,
        client_certificate_id: fk(client_certificate),
        tls_verify: *tls_verify,
        tls_verify_depth: tls_verify_depth.map(u32::from),
        ca_certificates: uuid_list(ca_certificates),
        enabled: *enabled,
        tags: string_list(tags),
    }
}

fn route(route: &model::Route) -> pb::Route {
    let model::Route {
        id: route_id,
        created_at,
        updated_at,
        name,
        protocols,
        methods,
        hosts,
        paths,
        headers,
        https_redirect_status_code,
        regex_priority,
        strip_path,
        path_handling,
        preserve_host,
        request_buffering,
        response_buffering,
        snis,
        sources,
        destinations,
        service,
        tags,
    } = route;
    pb::Route {
        id: id(route_id),
        created_at: *created_at,
        updated_at: *updated_at,
        name: name.clone(),
        protocols: protocols.clone(),
        methods: string_list(methods),
        hosts: string_list(hosts),
        paths: string_list(paths),
        headers: header_list(headers),
        https_redirect_status_code: u32::from(*https_redirect_status_code),
        regex_priority: *regex_priority,
        strip_path: *strip_path,
        path_handling: path_handling.clone(),
        preserve_host: *preserve_host,
        request_buffering: *request_buffering,
        response_buffering: *response_buffering,
        snis: string_list(snis),
        sources: endpoint_list(sources),
        destinations: endpoint_list(destinations),
        service_id: fk(service),
        tags: string_list(tags),
    }
}

fn certificate(certificate: &model::Certificate) -> pb::Certificate {
    let model::Certificate {
        id: certificate_id,
        created_at,
        updated_at,
        cert,
        key,
        cert_alt,
        key_alt,
        snis,
        subject,
        issuer,
        sans,
        not_before,
        not_after,
        fingerprint_sha256,
        key_type,
        tags,
        ocsp_response,
        ocsp_response_alt,
    } = certificate;
    pb::Certificate {
        id: id(certificate_id),
        created_at: *created_at,
        updated_at: *updated_at,
        cert: cert.clone(),
        key: key.clone(),
        cert_alt: cert_alt.clone(),
        key_alt: key_alt.clone(),
        snis: snis.clone(),
        subject: subject.clone(),
        issuer: issuer.clone(),
        sans: sans.clone(),
        not_before: *not_before,
        not_after: *not_after,
        fingerprint_sha256: fingerprint_sha256.clone(),
        key_type: key_type.clone(),
        tags: string_list(tags),
        ocsp_response: ocsp_response.clone().unwrap_or_default().into(),
        ocsp_response_alt: ocsp_response_alt.clone().unwrap_or_default().into(),
    }
}

fn sni(sni: &model::Sni) -> pb::Sni {
    let model::Sni {
        id: sni_id,
        created_at,
        updated_at,
        name,
        certificate,
        tags,
    } = sni;
    pb::Sni {
        id: id(sni_id),
        created_at: *created_at,
        updated_at: *updated_at,
        name: name.clone(),
        certificate_id: id(&certificate.id),
        tags: string_list(tags),
    }
}

fn ca_certificate(ca: &model::CaCertificate) -> pb::CaCertificate {
    let model::CaCertificate {
        id: ca_id,
        created_at,
        updated_at,
        cert,
        cert_digest,
        subject,
        issuer,
        not_before,
        not_after,
        tags,
    } = ca;
    pb::CaCertificate {
        id: id(ca_id),
        created_at: *created_at,
        updated_at: *updated_at,
        cert: cert.clone(),
        cert_digest: cert_digest.clone(),
        subject: subject.clone(),
        issuer: issuer.clone(),
        not_before: *not_before,
        not_after: *not_after,
        tags: string_list(tags),
    }
}

fn upstream(upstream: &model::Upstream) -> pb::Upstream {
    let model::Upstream {
        id: upstream_id,
        created_at,
        updated_at,
        name,
        algorithm,
        hash_on,
        hash_fallback,
        hash_on_header,
        hash_fallback_header,
        hash_on_cookie,
        hash_on_cookie_path,
        hash_on_query_arg,
        hash_fallback_query_arg,
        hash_on_uri_capture,
        hash_fallback_uri_capture,
        slots,
        healthchecks,
        host_header,
        client_certificate,
        use_srv_name,
        tags,
    } = upstream;
    pb::Upstream {
        id: id(upstream_id),
        created_at: *created_at,
        updated_at: *updated_at,
        name: name.clone(),
        algorithm: algorithm.clone(),
        hash_on: hash_on.clone(),
        hash_fallback: hash_fallback.clone(),
        hash_on_header: hash_on_header.clone(),
        hash_fallback_header: hash_fallback_header.clone(),
        hash_on_cookie: hash_on_cookie.clone(),
        hash_on_cookie_path: hash_on_cookie_path.clone(),
        hash_on_query_arg: hash_on_query_arg.clone(),
        hash_fallback_query_arg: hash_fallback_query_arg.clone(),
        hash_on_uri_capture: hash_on_uri_capture.clone(),
        hash_fallback_uri_capture: hash_fallback_uri_capture.clone(),
        slots: *slots,
        healthchecks: Some(healthchecks_to_pb(healthchecks)),
        host_header: host_header.clone(),
        client_certificate_id: fk(client_certificate),
        use_srv_name: *use_srv_name,
        tags: string_list(tags),
    }
}

fn healthchecks_to_pb(healthchecks: &model::Healthchecks) -> pb::Healthchecks {
    let model::Healthchecks {
        active,
        passive,
        threshold,
    } = healthchecks;
    let model::ActiveHealthcheck {
        kind,
        timeout,
        concurrency,
        http_path,
        https_sni,
        https_verify_certificate,
        headers,
        healthy,
        unhealthy,
    } = active;
    let active = pb::ActiveHealthcheck {
        r#type: kind.clone(),
        timeout: *timeout,
        concurrency: *concurrency,
        http_path: http_path.clone(),
        https_sni: https_sni.clone(),
        https_verify_certificate: *https_verify_certificate,
        headers: header_list(headers),
        healthy: Some(pb::ActiveHealthy {
            interval: healthy.interval,
            http_statuses: statuses(&healthy.http_statuses),
            successes: u32::from(healthy.successes),
        }),
        unhealthy: Some(pb::ActiveUnhealthy {
            interval: unhealthy.interval,
            http_statuses: statuses(&unhealthy.http_statuses),
            tcp_failures: u32::from(unhealthy.tcp_failures),
            timeouts: u32::from(unhealthy.timeouts),
            http_failures: u32::from(unhealthy.http_failures),
        }),
    };
    let model::PassiveHealthcheck {
        kind,
        healthy,
        unhealthy,
    } = passive;
    let passive = pb::PassiveHealthcheck {
        r#type: kind.clone(),
        healthy: Some(pb::PassiveHealthy {
            http_statuses: statuses(&healthy.http_statuses),
            successes: u32::from(healthy.successes),
        }),
        unhealthy: Some(pb::PassiveUnhealthy {
            http_statuses: statuses(&unhealthy.http_statuses),
            tcp_failures: u32::from(unhealthy.tcp_failures),
            timeouts: u32::from(unhealthy.timeouts),
            http_failures: u32::from(unhealthy.http_failures),
        }),
    };
    pb::Healthchecks {
        active: Some(active),
        passive: Some(passive),
        threshold: *threshold,
    }
}

fn target(target: &model::Target) -> pb::Target {
    let model::Target {
        id: target_id,
        created_at,
        updated_at,
        upstream,
        target,
        weight,
        tags,
    } = target;
    pb::Target {
        id: id(target_id),
        created_at: *created_at,
        updated_at: *updated_at,
        upstream_id: id(&upstream.id),
        target: target.clone(),
        weight: u32::from(*weight),
        tags: string_list(tags),
    }
}

fn consumer(consumer: &model::Consumer) -> pb::Consumer {
    let model::Consumer {
        id: consumer_id,
        created_at,
        updated_at,
        username,
        custom_id,
        tags,
    } = consumer;
    pb::Consumer {
        id: id(consumer_id),
        created_at: *created_at,
        updated_at: *updated_at,
        username: username.clone(),
        custom_id: custom_id.clone(),
        tags: string_list(tags),
    }
}

fn acl(acl: &model::Acl) -> pb::Acl {
    let model::Acl {
        id: acl_id,
        created_at,
        updated_at,
        consumer,
        group,
        tags,
    } = acl;
    pb::Acl {
        id: id(acl_id),
        created_at: *created_at,
        updated_at: *updated_at,
        consumer_id: id(&consumer.id),
        group: group.clone(),
        tags: string_list(tags),
    }
}

fn mtls_auth_credential(credential: &model::MtlsAuthCredential) -> pb::MtlsAuthCredential {
    let model::MtlsAuthCredential {
        id: credential_id,
        created_at,
        updated_at,
        consumer,
        subject_name,
        ca_certificate,
        tags,
    } = credential;
    pb::MtlsAuthCredential {
        id: id(credential_id),
        created_at: *created_at,
        updated_at: *updated_at,
        consumer_id: id(&consumer.id),
        subject_name: subject_name.clone(),
        ca_certificate_id: fk(ca_certificate),
        tags: string_list(tags),
    }
}

fn acme_challenge(challenge: &model::AcmeChallenge) -> pb::AcmeChallenge {
    let model::AcmeChallenge {
        id: challenge_id,
        kind,
        domain,
        token,
        key_authorization,
        expires_at,
    } = challenge;
    pb::AcmeChallenge {
        id: id(challenge_id),
        kind: kind.clone(),
        domain: domain.clone(),
        token: token.clone(),
        key_authorization: key_authorization.clone(),
        expires_at: *expires_at,
    }
}

fn plugin(plugin: &model::Plugin) -> pb::Plugin {
    let model::Plugin {
        id: plugin_id,
        created_at,
        updated_at,
        instance_name,
        route,
        service,
        consumer,
        config,
        protocols,
        enabled,
        tags,
    } = plugin;
    let config = match config {
        model::PluginConfig::Acl(config) => {
            let model::AclConfig {
                allow,
                deny,
                hide_groups_header,
                always_use_authenticated_groups,
            } = config;
            pb::plugin::Config::Acl(pb::AclConfig {
                allow: string_list(allow),
                deny: string_list(deny),
                hide_groups_header: *hide_groups_header,
                always_use_authenticated_groups: *always_use_authenticated_groups,
            })
        }
        model::PluginConfig::MtlsAuth(config) => {
            let model::MtlsAuthConfig {
                ca_certificates,
                skip_consumer_lookup,
                authenticated_group_by,
                consumer_by,
                anonymous,
                default_consumer,
                revocation_check_mode,
                http_timeout,
                cache_ttl,
                cert_cache_ttl,
                allow_partial_chain,
                send_ca_dn,
                http_proxy_host,
                http_proxy_port,
                https_proxy_host,
                https_proxy_port,
                ssl_verify,
            } = config;
            pb::plugin::Config::MtlsAuth(pb::MtlsAuthConfig {
                ca_certificates: ca_certificates.iter().map(id).collect(),
                skip_consumer_lookup: *skip_consumer_lookup,
                authenticated_group_by: authenticated_group_by.clone(),
                consumer_by: consumer_by.clone(),
                anonymous: anonymous.clone(),
                default_consumer: default_consumer.clone(),
                revocation_check_mode: revocation_check_mode.clone(),
                http_timeout: *http_timeout,
                cache_ttl: *cache_ttl,
                cert_cache_ttl: *cert_cache_ttl,
                allow_partial_chain: *allow_partial_chain,
                send_ca_dn: *send_ca_dn,
                http_proxy_host: http_proxy_host.clone(),
                http_proxy_port: http_proxy_port.map(u32::from),
                https_proxy_host: https_proxy_host.clone(),
                https_proxy_port: https_proxy_port.map(u32::from),
                ssl_verify: *ssl_verify,
            })
        }
    };
    pb::Plugin {
        id: id(plugin_id),
        created_at: *created_at,
        updated_at: *updated_at,
        instance_name: instance_name.clone(),
        route_id: fk(route),
        service_id: fk(service),
        consumer_id: fk(consumer),
        protocols: protocols.clone(),
        enabled: *enabled,
        tags: string_list(tags),
        config: Some(config),
    }
}

// === wire → model ===

/// Converts in the order received; the values are checked, references between entities are
/// not (that is the data plane's validation).
impl TryFrom<pb::Config> for model::Config {
    type Error = InvalidSnapshot;

    fn try_from(config: pb::Config) -> Result<Self, Self::Error> {
        let pb::Config {
            services,
            routes,
            certificates,
            snis,
            ca_certificates,
            upstreams,
            targets,
            consumers,
            acls,
            plugins,
            mtls_auth_credentials,
            acme_challenges,
            acme_on_demand,
        } = config;
        Ok(Self {
            services: convert_all("services", services, |e| &e.id, service_from_pb)?,
            routes: convert_all("routes", routes, |e| &e.id, route_from_pb)?,
            certificates: convert_all(
                "certificates",
                certificates,
                |e| &e.id,
                certificate_from_pb,
            )?,
            snis: convert_all("snis", snis, |e| &e.id, sni_from_pb)?,
            ca_certificates: convert_all(
                "ca_certificates",
                ca_certificates,
                |e| &e.id,
                ca_certificate_from_pb,
            )?,
            upstreams: convert_all("upstreams", upstreams, |e| &e.id, upstream_from_pb)?,
            targets: convert_all("targets", targets, |e| &e.id, target_from_pb)?,
            consumers: convert_all("consumers", consumers, |e| &e.id, consumer_from_pb)?,
            acls: convert_all("acls", acls, |e| &e.id, acl_from_pb)?,
            mtls_auth_credentials: convert_all(
                "mtls_auth_credentials",
                mtls_auth_credentials,
                |e| &e.id,
                mtls_auth_credential_from_pb,
            )?,
            plugins: convert_all("plugins", plugins, |e| &e.id, plugin_from_pb)?,
            acme_challenges: convert_all(
                "acme_challenges",
                acme_challenges,
                |e| &e.id,
                acme_challenge_from_pb,
            )?,
            acme_on_demand: acme_on_demand.map(|on_demand| model::AcmeOnDemand {
                allow_any_domain: on_demand.allow_any_domain,
                domains: on_demand.domains,
            }),
        })
    }
}

/// Where in the config a conversion is: the entity, for error reports.
struct Entity {
    collection: &'static str,
    index: usize,
    id: String,
}

/// Converts every entity of a collection, each with its [`Entity`] context.
fn convert_all<P, M>(
    collection: &'static str,
    list: Vec<P>,
    raw_id: impl Fn(&P) -> &String,
    convert: impl Fn(&Entity, P) -> Result<M, InvalidSnapshot>,
) -> Result<Vec<M>, InvalidSnapshot> {
    list.into_iter()
        .enumerate()
        .map(|(index, item)| {
            let entity = Entity {
                collection,
                index,
                id: raw_id(&item).clone(),
            };
            convert(&entity, item)
        })
        .collect()
}

impl Entity {
    fn invalid(&self, field: &str, reason: impl Into<String>) -> InvalidSnapshot {
        InvalidSnapshot {
            collection: self.collection,
            index: self.index,
            id: self.id.clone(),
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    fn uuid(&self, field: &str, value: &str) -> Result<Uuid, InvalidSnapshot> {
        Uuid::parse_str(value).map_err(|_| self.invalid(field, format!("not a UUID: {value:?}")))
    }

    fn foreign_key(&self, field: &str, value: &str) -> Result<model::ForeignKey, InvalidSnapshot> {
        self.uuid(field, value).map(model::ForeignKey::from)
    }

    fn optional_foreign_key(
        &self,
        field: &str,
        value: Option<String>,
    ) -> Result<Option<model::ForeignKey>, InvalidSnapshot> {
        value.map(|v| self.foreign_key(field, &v)).transpose()
    }

    fn uuids(&self, field: &str, values: Vec<String>) -> Result<Vec<Uuid>, InvalidSnapshot> {
        values.iter().map(|v| self.uuid(field, v)).collect()
    }

    /// Narrows a wire integer to the model's type, refusing values out of its range.
    fn narrow<T: TryFrom<u32>>(&self, field: &str, value: u32) -> Result<T, InvalidSnapshot> {
        T::try_from(value).map_err(|_| {
            self.invalid(
                field,
                format!("{value} is out of range for {}", std::any::type_name::<T>()),
            )
        })
    }

    fn narrow_all<T: TryFrom<u32>>(
        &self,
        field: &str,
        values: Vec<u32>,
    ) -> Result<Vec<T>, InvalidSnapshot> {
        values.into_iter().map(|v| self.narrow(field, v)).collect()
    }

    fn required<T>(&self, field: &str, value: Option<T>) -> Result<T, InvalidSnapshot> {
        value.ok_or_else(|| self.invalid(field, "missing"))
    }

    fn headers(
        &self,
        field: &str,
        list: Option<pb::HeaderList>,
    ) -> Result<Option<BTreeMap<String, Vec<String>>>, InvalidSnapshot> {
        let Some(list) = list else {
            return Ok(None);
        };
        let mut map = BTreeMap::new();
        for header in list.headers {
            if map.contains_key(&header.name) {
                return Err(self.invalid(field, format!("duplicate header {:?}", header.name)));
            }
            map.insert(header.name, header.values);
        }
        Ok(Some(map))
    }

    fn endpoints(
        &self,
        field: &str,
        list: Option<pb::EndpointList>,
    ) -> Result<Option<Vec<model::Endpoint>>, InvalidSnapshot> {
        list.map(|list| {
            list.endpoints
                .into_iter()
                .map(|e| {
                    Ok(model::Endpoint {
                        ip: e.ip,
                        port: e.port.map(|p| self.narrow(field, p)).transpose()?,
                    })
                })
                .collect()
        })
        .transpose()
    }
}

fn strings(list: Option<pb::StringList>) -> Option<Vec<String>> {
    list.map(|l| l.values)
}

fn service_from_pb(e: &Entity, service: pb::Service) -> Result<model::Service, InvalidSnapshot> {
    let pb::Service {
        id,
        created_at,
        updated_at,
        name,
        retries,
        protocol,
        host,
        port,
        path,
        connect_timeout,
        write_timeout,
        read_timeout,
        client_certificate_id,
        tls_verify,
        tls_verify_depth,
        ca_certificates,
        enabled,
        tags,
    } = service;
    Ok(model::Service {
        id: e.uuid("id", &id)?,
        created_at,
        updated_at,
        name,
        retries: e.narrow("retries", retries)?,
        protocol,
        host,
        port: e.narrow("port", port)?,
        path,
        connect_timeout,
        write_timeout,
        read_timeout,
        client_certificate: e
            .optional_foreign_key("client_certificate_id", client_certificate_id)?,
        tls_verify,
        tls_verify_depth: tls_verify_depth
            .map(|d| e.narrow("tls_verify_depth", d))
            .transpose()?,
        ca_certificates: ca_certificates
            .map(|l| e.uuids("ca_certificates", l.values))
            .transpose()?,
        enabled,
        tags: strings(tags),
    })
}

fn route_from_pb(e: &Entity, route: pb::Route) -> Result<model::Route, InvalidSnapshot> {
    let pb::Route {
        id,
        created_at,
        updated_at,
        name,
        protocols,
        methods,
        hosts,
        paths,
        headers,
        https_redirect_status_code,
        regex_priority,
        strip_path,
        path_handling,
        preserve_host,
        request_buffering,
        response_buffering,
        snis,
        sources,
        destinations,
        service_id,
        tags,
    } = route;
    Ok(model::Route {
        id: e.uuid("id", &id)?,
        created_at,
        updated_at,
        name,
        protocols,
        methods: strings(methods),
        hosts: strings(hosts),
        paths: strings(paths),
        headers: e.headers("headers", headers)?,
        https_redirect_status_code: e
            .narrow("https_redirect_status_code", https_redirect_status_code)?,
        regex_priority,
        strip_path,
        path_handling,
        preserve_host,
        request_buffering,
        response_buffering,
        snis: strings(snis),
        sources: e.endpoints("sources", sources)?,
        destinations: e.endpoints("destinations", destinations)?,
        service: e.optional_foreign_key("service_id", service_id)?,
        tags: strings(tags),
    })
}

fn certificate_from_pb(
    e: &Entity,
    certificate: pb::Certificate,
) -> Result<model::Certificate, InvalidSnapshot> {
    let pb::Certificate {
        id,
        created_at,
        updated_at,
        cert,
        key,
        cert_alt,
        key_alt,
        snis,
        subject,
        issuer,
        sans,
        not_before,
        not_after,
        fingerprint_sha256,
        key_type,
        tags,
        ocsp_response,
        ocsp_response_alt,
    } = certificate;
    Ok(model::Certificate {
        id: e.uuid("id", &id)?,
        created_at,
        updated_at,
        cert,
        key,
        cert_alt,
        key_alt,
        snis,
        subject,
        issuer,
        sans,
        not_before,
        not_after,
        fingerprint_sha256,
        key_type,
        tags: strings(tags),
        ocsp_response: Some(ocsp_response.to_vec()).filter(|r| !r.is_empty()),
        ocsp_response_alt: Some(ocsp_response_alt.to_vec()).filter(|r| !r.is_empty()),
    })
}

fn sni_from_pb(e: &Entity, sni: pb::Sni) -> Result<model::Sni, InvalidSnapshot> {
    let pb::Sni {
        id,
        created_at,
        updated_at,
        name,
        certificate_id,
        tags,
    } = sni;
    Ok(model::Sni {
        id: e.uuid("id", &id)?,
        created_at,
        updated_at,
        name,
        certificate: e.foreign_key("certificate_id", &certificate_id)?,
        tags: strings(tags),
    })
}

fn ca_certificate_from_pb(
    e: &Entity,
    ca: pb::CaCertificate,
) -> Result<model::CaCertificate, InvalidSnapshot> {
    let pb::CaCertificate {
        id,
        created_at,
        updated_at,
        cert,
        cert_digest,
        subject,
        issuer,
        not_before,
        not_after,
        tags,
    } = ca;
    Ok(model::CaCertificate {
        id: e.uuid("id", &id)?,
        created_at,
        updated_at,
        cert,
        cert_digest,
        subject,
        issuer,
        not_before,
        not_after,
        tags: strings(tags),
    })
}

fn upstream_from_pb(
    e: &Entity,
    upstream: pb::Upstream,
) -> Result<model::Upstream, InvalidSnapshot> {
    let pb::Upstream {
        id,
        created_at,
        updated_at,
        name,
        algorithm,
        hash_on,
        hash_fallback,
        hash_on_header,
        hash_fallback_header,
        hash_on_cookie,
        hash_on_cookie_path,
        hash_on_query_arg,
        hash_fallback_query_arg,
        hash_on_uri_capture,
        hash_fallback_uri_capture,
        slots,
        healthchecks,
        host_header,
        client_certificate_id,
        use_srv_name,
        tags,
    } = upstream;
    Ok(model::Upstream {
        id: e.uuid("id", &id)?,
        created_at,
        updated_at,
        name,
        algorithm,
        hash_on,
        hash_fallback,
        hash_on_header,
        hash_fallback_header,
        hash_on_cookie,
        hash_on_cookie_path,
        hash_on_query_arg,
        hash_fallback_query_arg,
        hash_on_uri_capture,
        hash_fallback_uri_capture,
        slots,
        healthchecks: healthchecks_from_pb(e, e.required("healthchecks", healthchecks)?)?,
        host_header,
        client_certificate: e
            .optional_foreign_key("client_certificate_id", client_certificate_id)?,
        use_srv_name,
        tags: strings(tags),
    })
}

fn healthchecks_from_pb(
    e: &Entity,
    healthchecks: pb::Healthchecks,
) -> Result<model::Healthchecks, InvalidSnapshot> {
    let pb::Healthchecks {
        active,
        passive,
        threshold,
    } = healthchecks;
    let pb::ActiveHealthcheck {
        r#type,
        timeout,
        concurrency,
        http_path,
        https_sni,
        https_verify_certificate,
        headers,
        healthy,
        unhealthy,
    } = e.required("healthchecks.active", active)?;
    let healthy = e.required("healthchecks.active.healthy", healthy)?;
    let unhealthy = e.required("healthchecks.active.unhealthy", unhealthy)?;
    let active = model::ActiveHealthcheck {
        kind: r#type,
        timeout,
        concurrency,
        http_path,
        https_sni,
        https_verify_certificate,
        headers: e.headers("healthchecks.active.headers", headers)?,
        healthy: model::ActiveHealthy {
            interval: healthy.interval,
            http_statuses: e.narrow_all(
                "healthchecks.active.healthy.http_statuses",
                healthy.http_statuses,
            )?,
            successes: e.narrow("healthchecks.active.healthy.successes", healthy.successes)?,
        },
        unhealthy: model::ActiveUnhealthy {
            interval: unhealthy.interval,
            http_statuses: e.narrow_all(
                "healthchecks.active.unhealthy.http_statuses",
                unhealthy.http_statuses,
            )?,
            tcp_failures: e.narrow(
                "healthchecks.active.unhealthy.tcp_failures",
                unhealthy.tcp_failures,
            )?,
            timeouts: e.narrow("healthchecks.active.unhealthy.timeouts", unhealthy.timeouts)?,
            http_failures: e.narrow(
                "healthchecks.active.unhealthy.http_failures",
                unhealthy.http_failures,
            )?,
        },
    };
    let pb::PassiveHealthcheck {
        r#type,
        healthy,
        unhealthy,
    } = e.required("healthchecks.passive", passive)?;
    let healthy = e.required("healthchecks.passive.healthy", healthy)?;
    let unhealthy = e.required("healthchecks.passive.unhealthy", unhealthy)?;
    let passive = model::PassiveHealthcheck {
        kind: r#type,
        healthy: model::PassiveHealthy {
            http_statuses: e.narrow_all(
                "healthchecks.passive.healthy.http_statuses",
                healthy.http_statuses,
            )?,
            successes: e.narrow("healthchecks.passive.healthy.successes", healthy.successes)?,
        },
        unhealthy: model::PassiveUnhealthy {
            http_statuses: e.narrow_all(
                "healthchecks.passive.unhealthy.http_statuses",
                unhealthy.http_statuses,
            )?,
            tcp_failures: e.narrow(
                "healthchecks.passive.unhealthy.tcp_failures",
                unhealthy.tcp_failures,
            )?,
            timeouts: e.narrow(
                "healthchecks.passive.unhealthy.timeouts",
                unhealthy.timeouts,
            )?,
            http_failures: e.narrow(
                "healthchecks.passive.unhealthy.http_failures",
                unhealthy.http_failures,
            )?,
        },
    };
    Ok(model::Healthchecks {
        active,
        passive,
        threshold,
    })
}

fn target_from_pb(e: &Entity, target: pb::Target) -> Result<model::Target, InvalidSnapshot> {
    let pb::Target {
        id,
        created_at,
        updated_at,
        upstream_id,
        target,
        weight,
        tags,
    } = target;
    Ok(model::Target {
        id: e.uuid("id", &id)?,
        created_at,
        updated_at,
        upstream: e.foreign_key("upstream_id", &upstream_id)?,
        target,
        weight: e.narrow("weight", weight)?,
        tags: strings(tags),
    })
}

fn consumer_from_pb(
    e: &Entity,
    consumer: pb::Consumer,
) -> Result<model::Consumer, InvalidSnapshot> {
    let pb::Consumer {
        id,
        created_at,
        updated_at,
        username,
        custom_id,
        tags,
    } = consumer;
    Ok(model::Consumer {
        id: e.uuid("id", &id)?,
        created_at,
        updated_at,
        username,
        custom_id,
        tags: strings(tags),
    })
}

fn acl_from_pb(e: &Entity, acl: pb::Acl) -> Result<model::Acl, InvalidSnapshot> {
    let pb::Acl {
        id,
        created_at,
        updated_at,
        consumer_id,
        group,
        tags,
    } = acl;
    Ok(model::Acl {
        id: e.uuid("id", &id)?,
        created_at,
        updated_at,
        consumer: e.foreign_key("consumer_id", &consumer_id)?,
        group,
        tags: strings(tags),
    })
}

fn mtls_auth_credential_from_pb(
    e: &Entity,
    credential: pb::MtlsAuthCredential,
) -> Result<model::MtlsAuthCredential, InvalidSnapshot> {
    let pb::MtlsAuthCredential {
        id,
        created_at,
        updated_at,
        consumer_id,
        subject_name,
        ca_certificate_id,
        tags,
    } = credential;
    Ok(model::MtlsAuthCredential {
        id: e.uuid("id", &id)?,
        created_at,
        updated_at,
        consumer: e.foreign_key("consumer_id", &consumer_id)?,
        subject_name,
        ca_certificate: e.optional_foreign_key("ca_certificate_id", ca_certificate_id)?,
        tags: strings(tags),
    })
}

fn acme_challenge_from_pb(
    e: &Entity,
    challenge: pb::AcmeChallenge,
) -> Result<model::AcmeChallenge, InvalidSnapshot> {
    let pb::AcmeChallenge {
        id,
        kind,
        domain,
        token,
        key_authorization,
        expires_at,
    } = challenge;
    Ok(model::AcmeChallenge {
        id: e.uuid("id", &id)?,
        kind,
        domain,
        token,
        key_authorization,
        expires_at,
    })
}

fn plugin_from_pb(e: &Entity, plugin: pb::Plugin) -> Result<model::Plugin, InvalidSnapshot> {
    let pb::Plugin {
        id,
        created_at,
        updated_at,
        instance_name,
        route_id,
        service_id,
        consumer_id,
        protocols,
        enabled,
        tags,
        config,
    } = plugin;
    // A plugin this build does not know arrives as an unknown field, which prost drops: no
    // config at all. Running without it could open what it guards, so the snapshot is refused.
    let Some(config) = config else {
        return Err(e.invalid(
            "config",
            "missing (a plugin this data plane does not know?)",
        ));
    };
    let config = match config {
        pb::plugin::Config::Acl(config) => {
            let pb::AclConfig {
                allow,
                deny,
                hide_groups_header,
                always_use_authenticated_groups,
            } = config;
            model::PluginConfig::Acl(model::AclConfig {
                allow: strings(allow),
                deny: strings(deny),
                hide_groups_header,
                always_use_authenticated_groups,
            })
        }
        pb::plugin::Config::MtlsAuth(config) => {
            let pb::MtlsAuthConfig {
                ca_certificates,
                skip_consumer_lookup,
                authenticated_group_by,
                consumer_by,
                anonymous,
                default_consumer,
                revocation_check_mode,
                http_timeout,
                cache_ttl,
                cert_cache_ttl,
                allow_partial_chain,
                send_ca_dn,
                http_proxy_host,
                http_proxy_port,
                https_proxy_host,
                https_proxy_port,
                ssl_verify,
            } = config;
            model::PluginConfig::MtlsAuth(model::MtlsAuthConfig {
                ca_certificates: e.uuids("config.ca_certificates", ca_certificates)?,
                skip_consumer_lookup,
                authenticated_group_by,
                consumer_by,
                anonymous,
                default_consumer,
                revocation_check_mode,
                http_timeout,
                cache_ttl,
                cert_cache_ttl,
                allow_partial_chain,
                send_ca_dn,
                http_proxy_host,
                http_proxy_port: http_proxy_port
                    .map(|p| e.narrow("config.http_proxy_port", p))
                    .transpose()?,
                https_proxy_host,
                https_proxy_port: https_proxy_port
                    .map(|p| e.narrow("config.https_proxy_port", p))
                    .transpose()?,
                ssl_verify,
            })
        }
    };
    Ok(model::Plugin {
        id: e.uuid("id", &id)?,
        created_at,
        updated_at,
        instance_name,
        route: e.optional_foreign_key("route_id", route_id)?,
        service: e.optional_foreign_key("service_id", service_id)?,
        consumer: e.optional_foreign_key("consumer_id", consumer_id)?,
        config,
        protocols,
        enabled,
        tags: strings(tags),
    })
}

// === impl EncodedSnapshot ===

impl EncodedSnapshot {
    /// The message that carries this snapshot on a sync stream. Cheap: the config bytes are
    /// shared, not copied.
    pub fn to_control_plane_message(&self) -> pb::ControlPlaneMessage {
        pb::ControlPlaneMessage {
            kind: Some(pb::control_plane_message::Kind::Snapshot(
                self.message.clone(),
            )),
        }
    }

    /// Length of the uncompressed config, in bytes.
    pub fn config_size(&self) -> u64 {
        self.message.config_size
    }

    /// Length of the config as sent (compressed or not), in bytes.
    pub fn wire_size(&self) -> usize {
        self.message.config.len()
    }
}
