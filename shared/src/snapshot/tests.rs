#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde_json::{Value, json};

use super::*;
use crate::model::*;

fn uuid(n: u128) -> Uuid {
    // Version 7-looking ids, distinct in their last bytes.
    Uuid::from_u128(0x0190_a6b2_52a4_7c1e_9d7b_0000_0000_0000 | n)
}

fn tags(tag: &str) -> Option<Vec<String>> {
    Some(vec![tag.to_owned(), format!("{tag}-2")])
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|&v| v.to_owned()).collect()
}

/// A config with every entity kind, two of most, and every optional field set to a
/// non-default value.
fn full_config() -> Config {
    let headers = |name: &str| {
        Some(BTreeMap::from([
            (name.to_owned(), strings(&["a", "b"])),
            ("x-other".to_owned(), strings(&["c"])),
        ]))
    };
    let service = |n: u128| Service {
        id: uuid(n),
        created_at: 1_795_616_178,
        updated_at: 1_795_616_179,
        name: Some(format!("service-{n}")),
        retries: 3,
        protocol: "https".into(),
        host: "backend.test".into(),
        port: 8443,
        path: Some("/v1".into()),
        connect_timeout: 1_000,
        write_timeout: 2_000,
        read_timeout: 3_000,
        client_certificate: Some(uuid(20).into()),
        tls_verify: Some(true),
        tls_verify_depth: Some(4),
        ca_certificates: Some(vec![uuid(40), uuid(41)]),
        enabled: true,
        tags: tags("svc"),
    };
    let route = |n: u128| Route {
        id: uuid(n),
        created_at: 1,
        updated_at: 2,
        name: Some(format!("route-{n}")),
        protocols: strings(&["https"]),
        methods: Some(strings(&["GET", "POST"])),
        hosts: Some(strings(&["example.com", "*.example.org"])),
        paths: Some(strings(&["/api", "~/v[0-9]+"])),
        headers: headers("x-env"),
        https_redirect_status_code: 308,
        regex_priority: -7,
        strip_path: false,
        path_handling: "v1".into(),
        preserve_host: true,
        request_buffering: false,
        response_buffering: false,
        snis: Some(strings(&["example.com"])),
        sources: Some(vec![Endpoint {
            ip: Some("10.0.0.0/8".into()),
            port: Some(1234),
        }]),
        destinations: Some(vec![Endpoint {
            ip: Some("192.0.2.1".into()),
            port: Some(443),
        }]),
        service: Some(uuid(10).into()),
        tags: tags("route"),
    };
    let certificate = |n: u128| Certificate {
        id: uuid(n),
        created_at: 3,
        updated_at: 4,
        cert: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        key: "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n".into(),
        cert_alt: Some("-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n".into()),
        key_alt: Some("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n".into()),
        snis: strings(&["a.example.com", "b.example.com"]),
        subject: "CN=example.com".into(),
        issuer: "CN=Test CA".into(),
        sans: strings(&["example.com", "192.0.2.1"]),
        not_before: 1_700_000_000,
        not_after: 1_900_000_000,
        fingerprint_sha256: "ab".repeat(32),
        key_type: "ecdsa".into(),
        tags: tags("cert"),
        ocsp_response: None,
        ocsp_response_alt: None,
    };
    let upstream = |n: u128| Upstream {
        id: uuid(n),
        created_at: 5,
        updated_at: 6,
        name: format!("upstream-{n}.internal"),
        algorithm: "consistent-hashing".into(),
        hash_on: "header".into(),
        hash_fallback: "cookie".into(),
        hash_on_header: Some("x-user".into()),
        hash_fallback_header: Some("x-fallback".into()),
        hash_on_cookie: Some("session".into()),
        hash_on_cookie_path: "/app".into(),
        hash_on_query_arg: Some("q".into()),
        hash_fallback_query_arg: Some("fq".into()),
        hash_on_uri_capture: Some("cap".into()),
        hash_fallback_uri_capture: Some("fcap".into()),
        slots: 20_000,
        healthchecks: Healthchecks {
            active: ActiveHealthcheck {
                kind: "https".into(),
                timeout: 2.5,
                concurrency: 20,
                http_path: "/health".into(),
                https_sni: Some("health.internal".into()),
                https_verify_certificate: false,
                headers: headers("x-probe"),
                healthy: ActiveHealthy {
                    interval: 5.0,
                    http_statuses: vec![200, 204],
                    successes: 3,
                },
                unhealthy: ActiveUnhealthy {
                    interval: 1.5,
                    http_statuses: vec![500, 503],
                    tcp_failures: 2,
                    timeouts: 3,
                    http_failures: 4,
                },
            },
            passive: PassiveHealthcheck {
                kind: "grpc".into(),
                healthy: PassiveHealthy {
                    http_statuses: vec![200],
                    successes: 5,
                },
                unhealthy: PassiveUnhealthy {
                    http_statuses: vec![502],
                    tcp_failures: 6,
                    timeouts: 7,
                    http_failures: 8,
                },
            },
            threshold: 33.3,
        },
        host_header: Some("backend.internal".into()),
        client_certificate: Some(uuid(21).into()),
        use_srv_name: true,
        tags: tags("up"),
    };
    let plugin_common = |n: u128, config: PluginConfig| Plugin {
        id: uuid(n),
        created_at: 7,
        updated_at: 8,
        instance_name: Some(format!("plugin-{n}")),
        route: Some(uuid(30).into()),
        service: Some(uuid(10).into()),
        consumer: Some(uuid(80).into()),
        config,
        protocols: strings(&["http", "https"]),
        enabled: false,
        tags: tags("plugin"),
    };
    Config {
        services: vec![service(10), service(11)],
        routes: vec![route(30), route(31)],
        certificates: vec![certificate(20), certificate(21)],
        snis: vec![Sni {
            id: uuid(50),
            created_at: 9,
            updated_at: 10,
            name: "a.example.com".into(),
            certificate: uuid(20).into(),
            tags: tags("sni"),
        }],
        ca_certificates: vec![CaCertificate {
            id: uuid(40),
            created_at: 11,
            updated_at: 12,
            cert: "-----BEGIN CERTIFICATE-----\nMIID\n-----END CERTIFICATE-----\n".into(),
            cert_digest: "cd".repeat(32),
            subject: "CN=Test CA".into(),
            issuer: "CN=Root CA".into(),
            not_before: 1_600_000_000,
            not_after: 2_000_000_000,
            tags: tags("ca"),
        }],
        upstreams: vec![upstream(60), upstream(61)],
        targets: vec![Target {
            id: uuid(70),
            created_at: 1_795_616_178.123,
            updated_at: 1_795_616_178.456,
            upstream: uuid(60).into(),
            target: "10.0.0.1:8000".into(),
            weight: 50,
            tags: tags("target"),
        }],
        consumers: vec![Consumer {
            id: uuid(80),
            created_at: 13,
            updated_at: 14,
            username: Some("alice".into()),
            custom_id: Some("alice-42".into()),
            tags: tags("consumer"),
        }],
        acls: vec![Acl {
            id: uuid(90),
            created_at: 15,
            updated_at: 16,
            consumer: uuid(80).into(),
            group: "admins".into(),
            tags: tags("acl"),
        }],
        mtls_auth_credentials: vec![
            MtlsAuthCredential {
                id: uuid(110),
                created_at: 17,
                updated_at: 18,
                consumer: uuid(80).into(),
                subject_name: "client.example.com".into(),
                ca_certificate: Some(uuid(40).into()),
                tags: tags("mtls"),
            },
            MtlsAuthCredential {
                id: uuid(111),
                created_at: 19,
                updated_at: 20,
                consumer: uuid(80).into(),
                subject_name: "CN=client,O=Example".into(),
                ca_certificate: Some(uuid(41).into()),
                tags: tags("mtls"),
            },
        ],
        plugins: vec![
            plugin_common(
                100,
                PluginConfig::Acl(AclConfig {
                    allow: Some(strings(&["admins"])),
                    deny: Some(strings(&["guests"])),
                    hide_groups_header: true,
                    always_use_authenticated_groups: true,
                }),
            ),
            plugin_common(
                101,
                PluginConfig::MtlsAuth(MtlsAuthConfig {
                    ca_certificates: vec![uuid(40)],
                    skip_consumer_lookup: true,
                    authenticated_group_by: "DN".into(),
                    consumer_by: strings(&["custom_id"]),
                    anonymous: Some("anon".into()),
                    default_consumer: Some("default".into()),
                    revocation_check_mode: "STRICT".into(),
                    http_timeout: 1_000.0,
                    cache_ttl: 30.0,
                    cert_cache_ttl: 10_000.0,
                    allow_partial_chain: true,
                    send_ca_dn: true,
                    http_proxy_host: Some("proxy.internal".into()),
                    http_proxy_port: Some(3128),
                    https_proxy_host: Some("sproxy.internal".into()),
                    https_proxy_port: Some(3129),
                    ssl_verify: false,
                }),
            ),
        ],
        acme_challenges: vec![
            AcmeChallenge {
                id: uuid(120),
                kind: "http-01".into(),
                domain: "www.example.com".into(),
                token: "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0".into(),
                key_authorization: "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.thumb".into(),
                expires_at: 1_900_000_000,
            },
            AcmeChallenge {
                id: uuid(121),
                kind: "tls-alpn-01".into(),
                domain: "api.example.com".into(),
                token: "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA".into(),
                key_authorization: "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.thumb".into(),
                expires_at: 1_900_000_001,
            },
        ],
        acme_on_demand: Some(AcmeOnDemand {
            allow_any_domain: false,
            domains: strings(&["*.example.com", "example.org"]),
        }),
    }
}

/// Rotates every list by one: same entities, another order (for lists of two or more).
fn shuffled(mut config: Config) -> Config {
    fn mix<T>(list: &mut [T]) {
        if !list.is_empty() {
            list.rotate_left(1);
        }
    }
    mix(&mut config.services);
    mix(&mut config.routes);
    mix(&mut config.certificates);
    mix(&mut config.snis);
    mix(&mut config.ca_certificates);
    mix(&mut config.upstreams);
    mix(&mut config.targets);
    mix(&mut config.consumers);
    mix(&mut config.acls);
    mix(&mut config.mtls_auth_credentials);
    mix(&mut config.plugins);
    mix(&mut config.acme_challenges);
    config
}

fn sorted(mut config: Config) -> Config {
    config.sort();
    config
}

#[test]
fn full_config_round_trips_through_the_wire() {
    let config = sorted(full_config());
    let wire = pb::Config::from(&config);
    let bytes = wire.encode_to_vec();
    let decoded = pb::Config::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded, wire);
    assert_eq!(Config::try_from(decoded).unwrap(), config);

    let snapshot = encode(&config, 42);
    assert_eq!(snapshot.version, 42);
    assert_eq!(snapshot.message.version, 42);
    assert_eq!(snapshot.message.hash, snapshot.hash);
    assert_eq!(snapshot.config_size(), bytes.len() as u64);
    assert_eq!(decode(&snapshot.message).unwrap(), config);
}

#[test]
fn nulls_and_empty_lists_stay_apart() {
    let mut config = sorted(full_config());
    config.routes[0].hosts = Some(Vec::new());
    config.routes[0].methods = None;
    config.routes[0].headers = Some(BTreeMap::new());
    config.routes[0].sources = Some(Vec::new());
    config.routes[0].destinations = None;
    config.services[0].ca_certificates = Some(Vec::new());
    config.services[1].ca_certificates = None;
    config.consumers[0].tags = Some(Vec::new());
    config.mtls_auth_credentials[1].ca_certificate = None;
    let decoded = decode(&encode(&config, 1).message).unwrap();
    assert_eq!(decoded, config);

    let mut null = config.clone();
    null.consumers[0].tags = None;
    assert_ne!(encode(&null, 1).hash, encode(&config, 1).hash);
    let mut any_ca = config.clone();
    any_ca.mtls_auth_credentials[0].ca_certificate = None;
    assert_ne!(encode(&any_ca, 1).hash, encode(&config, 1).hash);
}

#[test]
fn empty_config_round_trips() {
    let snapshot = encode(&Config::default(), 1);
    assert_eq!(snapshot.message.encoding(), pb::Encoding::Identity);
    assert_eq!(snapshot.config_size(), 0);
    // SHA-256 of nothing.
    assert_eq!(
        snapshot.hash,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(decode(&snapshot.message).unwrap(), Config::default());
}

#[test]
fn hash_is_stable_and_ignores_list_order() {
    let config = full_config();
    let first = encode(&config, 1);
    let again = encode(&config, 1);
    assert_eq!(first.hash, again.hash);
    assert_eq!(first.message.config, again.message.config);
    let other_order = encode(&shuffled(config.clone()), 1);
    assert_ne!(
        shuffled(config.clone()),
        config,
        "the shuffle changes the order"
    );
    assert_eq!(other_order.hash, first.hash);
    // The version is not part of the hash: the hash names the content.
    assert_eq!(encode(&config, 2).hash, first.hash);
    // Decoding gives the canonical order.
    assert_eq!(decode(&other_order.message).unwrap(), sorted(config));
}

#[test]
fn hash_is_pinned() {
    // The canonical encoding is a contract between releases (a data plane compares the hash it
    // runs with the control plane's): changing it must be a deliberate, visible decision.
    let hash = encode(&full_config(), 1).hash;
    assert_eq!(hash.len(), 64);
    assert!(
        hash.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(hash, PINNED_FULL_CONFIG_HASH, "canonical encoding changed");
}

#[test]
fn a_config_without_mtls_credentials_hashes_as_before_they_existed() {
    // `mtls_auth_credentials` (field 11) came after the other collections: a configuration
    // without any encodes to the same bytes as before, so upgrading the control plane does
    // not change the hash data planes run.
    let mut config = full_config();
    config.mtls_auth_credentials.clear();
    config.acme_challenges.clear();
    config.acme_on_demand = None;
    assert_eq!(
        encode(&config, 1).hash,
        "d4fb9548b46ac73633baef721b531d20e44704c1adb592bdd364eb6007674569"
    );
}

#[test]
fn a_config_without_acme_state_hashes_as_before_it_existed() {
    // `acme_challenges` and `acme_on_demand` (fields 12, 13) came last: a configuration without
    // them encodes to the same bytes as before, so upgrading does not change the running hash.
    let mut config = full_config();
    config.acme_challenges.clear();
    config.acme_on_demand = None;
    assert_eq!(
        encode(&config, 1).hash,
        "df9e5589081d1c8a9bfb8fd0623f3ed19bbd0541096cf1a38da4496d441a1d20"
    );
}

#[test]
fn ocsp_staples_travel_and_change_the_hash_only_when_present() {
    // Fields 17 and 18 of `Certificate` are empty without staples: the hashes pinned above
    // (configurations without staples) are unchanged.
    let mut config = full_config();
    let without = encode(&config, 1).hash;
    config.certificates[0].ocsp_response = Some(vec![0x30, 0x03, 0x0a, 0x01, 0x00]);
    config.certificates[0].ocsp_response_alt = Some(vec![0x30, 0x03, 0x0a, 0x01, 0x01]);
    let snapshot = encode(&config, 1);
    assert_ne!(snapshot.hash, without);
    assert_eq!(decode(&snapshot.message).unwrap(), config);
}

const PINNED_FULL_CONFIG_HASH: &str =
    "fbed2b4e502b73c66c15cc9a362424d3031896be92aa903382f2b8638b4e771f";

/// Every leaf of `value` (object members, array elements), as JSON pointer paths.
fn leaves(value: &Value, path: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                leaves(item, format!("{path}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                leaves(item, format!("{path}/{i}"), out);
            }
            // The list's length is a field too.
            out.push(format!("{path}/+"));
        }
        _ => out.push(path),
    }
}

/// Changes the value at `path` to another valid value of the same type.
fn mutate(config: &Value, path: &str) -> Value {
    let mut config = config.clone();
    if let Some(list_path) = path.strip_suffix("/+") {
        let list = config
            .pointer_mut(list_path)
            .unwrap()
            .as_array_mut()
            .unwrap();
        let first = list.first().cloned().unwrap_or(Value::Null);
        list.push(first);
        return config;
    }
    let leaf = config.pointer_mut(path).unwrap();
    *leaf = match leaf.take() {
        Value::Bool(b) => Value::Bool(!b),
        Value::Number(n) if n.is_f64() => json!(n.as_f64().unwrap() + 0.25),
        Value::Number(n) if n.as_i64().unwrap() > 0 => json!(n.as_i64().unwrap() - 1),
        Value::Number(n) => json!(n.as_i64().unwrap() + 1),
        Value::String(s) => match Uuid::parse_str(&s) {
            Ok(id) => json!(Uuid::from_u128(id.as_u128() ^ 0xff00).to_string()),
            Err(_) => json!(format!("{s}x")),
        },
        other => panic!("unexpected leaf {path}: {other}"),
    };
    config
}

#[test]
fn every_field_changes_the_hash() {
    let config = sorted(full_config());
    let json = serde_json::to_value(&config).unwrap();
    let mut paths = Vec::new();
    leaves(&json, String::new(), &mut paths);
    let mut hashes = BTreeSet::from([encode(&config, 1).hash]);
    let mut changed = 0;
    for path in &paths {
        // A plugin's name picks its config's shape: it cannot change alone.
        if path.ends_with("/name") && path.starts_with("/plugins/") {
            continue;
        }
        let mutated: Config =
            serde_json::from_value(mutate(&json, path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(mutated != config, "{path} did not change the config");
        let hash = encode(&mutated, 1).hash;
        assert!(
            hashes.insert(hash),
            "{path}: hash not changed, or same as another change"
        );
        changed += 1;
    }
    // Guards the walk itself: the full config has 403 changeable leaves and list lengths.
    assert!(changed >= 403, "only {changed} fields changed");
}

#[test]
fn wrong_hash_is_refused() {
    let mut message = encode(&full_config(), 1).message;
    let announced = "0".repeat(64);
    message.hash = announced.clone();
    match decode(&message) {
        Err(SnapshotError::HashMismatch { expected, actual }) => {
            assert_eq!(expected, announced);
            assert_eq!(actual, encode(&full_config(), 1).hash);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn corrupt_compressed_bytes_are_refused() {
    let message = encode(&full_config(), 1).message;
    assert_eq!(message.encoding(), pb::Encoding::Gzip);
    let len = message.config.len();
    // Flip bits in the header, the deflate stream and the trailer, and truncate.
    for (what, mutate) in [
        (
            "magic",
            Box::new(|b: &mut Vec<u8>| b[0] ^= 0xff) as Box<dyn Fn(&mut Vec<u8>)>,
        ),
        (
            "middle",
            Box::new(move |b: &mut Vec<u8>| b[len / 2] ^= 0x55),
        ),
        ("crc", Box::new(move |b: &mut Vec<u8>| b[len - 6] ^= 0x01)),
        (
            "truncated",
            Box::new(move |b: &mut Vec<u8>| b.truncate(len - 10)),
        ),
        ("empty", Box::new(|b: &mut Vec<u8>| b.clear())),
    ] {
        let mut bytes = message.config.to_vec();
        mutate(&mut bytes);
        let mut corrupt = message.clone();
        corrupt.config = bytes.into();
        let err = decode(&corrupt).unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::Decompress(_)
                    | SnapshotError::SizeMismatch { .. }
                    | SnapshotError::HashMismatch { .. }
            ),
            "{what}: {err:?}"
        );
    }
}

#[test]
fn sizes_beyond_the_announced_or_the_limit_are_refused() {
    let message = encode(&full_config(), 1).message;
    let size = message.config_size;

    let mut over_limit = message.clone();
    over_limit.config_size = MAX_CONFIG_SIZE + 1;
    assert!(matches!(
        decode(&over_limit),
        Err(SnapshotError::TooLarge { size, limit }) if size == MAX_CONFIG_SIZE + 1 && limit == MAX_CONFIG_SIZE
    ));

    let mut short = message.clone();
    short.config_size = size - 1;
    assert!(
        matches!(decode(&short), Err(SnapshotError::Decompress(_))),
        "{:?}",
        decode(&short)
    );

    let mut long = message.clone();
    long.config_size = size + 1;
    assert!(matches!(
        decode(&long),
        Err(SnapshotError::SizeMismatch { announced, actual }) if announced == size + 1 && actual == size
    ));

    let mut identity = encode(&Config::default(), 1).message;
    identity.config_size = 10;
    assert!(matches!(
        decode(&identity),
        Err(SnapshotError::SizeMismatch {
            announced: 10,
            actual: 0
        })
    ));
}

#[test]
fn a_zip_bomb_stops_at_the_announced_size() {
    // 64 MiB of zeros compress to about 64 KiB; announced as 1 KiB, decoding stops there.
    let mut encoder = GzEncoder::new(Vec::new(), Compression::new(9));
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..64 {
        encoder.write_all(&zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    let message = pb::Snapshot {
        version: 1,
        hash: hash(&[]),
        encoding: pb::Encoding::Gzip.into(),
        config: bomb.into(),
        config_size: 1024,
    };
    let started = Instant::now();
    assert!(matches!(
        decode(&message),
        Err(SnapshotError::Decompress(_))
    ));
    assert!(started.elapsed().as_secs() < 2, "{:?}", started.elapsed());
}

#[test]
fn unknown_encoding_is_refused() {
    let mut message = encode(&full_config(), 1).message;
    message.encoding = 7;
    assert!(matches!(
        decode(&message),
        Err(SnapshotError::UnsupportedEncoding(7))
    ));
}

#[test]
fn bytes_that_are_not_a_config_are_refused() {
    let garbage = b"\xff\xff\xff\xff not protobuf".to_vec();
    let message = pb::Snapshot {
        version: 1,
        hash: hash(&garbage),
        encoding: pb::Encoding::Identity.into(),
        config_size: garbage.len() as u64,
        config: garbage.into(),
    };
    assert!(matches!(decode(&message), Err(SnapshotError::Decode(_))));
}

/// Encodes a crafted wire config and decodes it back.
fn decode_crafted(edit: impl FnOnce(&mut pb::Config)) -> Result<Config, SnapshotError> {
    let mut wire = pb::Config::from(&full_config());
    edit(&mut wire);
    decode(&encode_proto(&wire, 1).message)
}

fn invalid(result: Result<Config, SnapshotError>) -> InvalidSnapshot {
    match result {
        Err(SnapshotError::Invalid(invalid)) => invalid,
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_values_name_the_entity_and_field() {
    let err = invalid(decode_crafted(|c| {
        c.routes[1].service_id = Some("nope".into())
    }));
    assert_eq!(
        (err.collection, err.index, err.field.as_str()),
        ("routes", 1, "service_id")
    );
    assert_eq!(err.id, uuid(31).to_string());
    assert_eq!(
        err.to_string(),
        format!(
            "routes[1] (id \"{}\"): service_id: not a UUID: \"nope\"",
            uuid(31)
        )
    );

    let err = invalid(decode_crafted(|c| c.services[0].id = "x".into()));
    assert_eq!((err.collection, err.field.as_str()), ("services", "id"));

    let err = invalid(decode_crafted(|c| c.services[0].port = 70_000));
    assert_eq!(err.field, "port");
    assert!(err.reason.contains("70000"), "{}", err.reason);

    let err = invalid(decode_crafted(|c| {
        c.upstreams[0]
            .healthchecks
            .as_mut()
            .unwrap()
            .passive
            .as_mut()
            .unwrap()
            .unhealthy
            .as_mut()
            .unwrap()
            .timeouts = 256;
    }));
    assert_eq!(err.field, "healthchecks.passive.unhealthy.timeouts");

    let err = invalid(decode_crafted(|c| c.upstreams[1].healthchecks = None));
    assert_eq!((err.index, err.field.as_str()), (1, "healthchecks"));

    let err = invalid(decode_crafted(|c| c.plugins[0].config = None));
    assert_eq!((err.collection, err.field.as_str()), ("plugins", "config"));

    let err = invalid(decode_crafted(|c| {
        let headers = c.routes[0].headers.as_mut().unwrap();
        let first = headers.headers[0].clone();
        headers.headers.push(first);
    }));
    assert_eq!(err.field, "headers");
    assert!(err.reason.contains("duplicate"), "{}", err.reason);

    let err = invalid(decode_crafted(|c| {
        let Some(pb::plugin::Config::MtlsAuth(mtls)) = &mut c.plugins[1].config else {
            panic!("not mtls-auth");
        };
        mtls.ca_certificates.push("not-a-uuid".into());
    }));
    assert_eq!(err.field, "config.ca_certificates");

    let err = invalid(decode_crafted(|c| {
        c.mtls_auth_credentials[1].ca_certificate_id = Some("nope".into())
    }));
    assert_eq!(
        (err.collection, err.index, err.field.as_str()),
        ("mtls_auth_credentials", 1, "ca_certificate_id")
    );
    let err = invalid(decode_crafted(|c| {
        c.mtls_auth_credentials[0].consumer_id = String::new()
    }));
    assert_eq!(err.field, "consumer_id");
}

#[test]
fn an_unknown_plugin_is_refused() {
    // A newer control plane's plugin reaches an older data plane as an unknown oneof field.
    let mut wire = pb::Config::from(&full_config());
    let mut plugin = wire.plugins[0].clone();
    plugin.config = None;
    let mut encoded_plugin = plugin.encode_to_vec();
    // Field 99, length-delimited, empty: what a future `oneof config` member looks like.
    encoded_plugin.extend_from_slice(&[0x9a, 0x06, 0x00]);
    let decoded_plugin = pb::Plugin::decode(encoded_plugin.as_slice()).unwrap();
    assert_eq!(decoded_plugin.config, None);
    wire.plugins[0] = decoded_plugin;
    let err = invalid(decode(&encode_proto(&wire, 1).message));
    assert_eq!(err.field, "config");
}

#[test]
fn admin_api_json_round_trips_through_a_snapshot() {
    let config: Config = serde_json::from_value(json!({
        "services": [{
            "ca_certificates": null, "client_certificate": null, "connect_timeout": 60000,
            "created_at": 1795616178, "enabled": true, "host": "a.test",
            "id": "01a21310-815d-70a7-84ba-dbcb32fd3093", "name": "x", "path": "/p", "port": 443,
            "protocol": "https", "read_timeout": 60000, "retries": 5, "tags": null,
            "tls_verify": null, "tls_verify_depth": null, "updated_at": 1795616178,
            "write_timeout": 60000
        }],
        "routes": [{
            "created_at": 1, "destinations": null, "headers": null, "hosts": ["example.com"],
            "https_redirect_status_code": 426, "id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d11",
            "methods": null, "name": null, "path_handling": "v0", "paths": ["/api"],
            "preserve_host": false, "protocols": ["http", "https"], "regex_priority": 0,
            "request_buffering": true, "response_buffering": true,
            "service": {"id": "01a21310-815d-70a7-84ba-dbcb32fd3093"}, "snis": null,
            "sources": null, "strip_path": true, "tags": null, "updated_at": 1
        }],
        "plugins": [{
            "config": {"allow": ["admins"], "always_use_authenticated_groups": false,
                       "deny": null, "hide_groups_header": false},
            "consumer": null, "created_at": 1, "enabled": true,
            "id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d12", "instance_name": null, "name": "acl",
            "protocols": ["grpc", "grpcs", "http", "https"], "route": null,
            "service": {"id": "01a21310-815d-70a7-84ba-dbcb32fd3093"}, "tags": null,
            "updated_at": 1
        }]
    }))
    .unwrap();
    assert_eq!(config.services.len(), 1);
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.plugins.len(), 1);
    assert_eq!(decode(&encode(&config, 3).message).unwrap(), config);
}

/// Deterministic pseudo-random base64, so fake PEM bodies compress like real ones.
fn fake_base64(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = String::with_capacity(len + len / 64);
    for i in 0..len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push(ALPHABET[(state % 64) as usize] as char);
        if i % 64 == 63 {
            out.push('\n');
        }
    }
    out
}

fn fake_pem(label: &str, seed: u64, len: usize) -> String {
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        fake_base64(seed, len)
    )
}

/// A config of `n` routes (with their services) and `n` certificates (with an SNI each).
fn large_config(n: u128) -> Config {
    let mut config = Config::default();
    for i in 0..n {
        let service_id = uuid(1_000_000 + i);
        config.services.push(Service {
            id: service_id,
            created_at: 1_795_616_178,
            updated_at: 1_795_616_178,
            name: Some(format!("service-{i}")),
            retries: 5,
            protocol: "https".into(),
            host: format!("backend-{i}.internal"),
            port: 443,
            path: None,
            connect_timeout: 60_000,
            write_timeout: 60_000,
            read_timeout: 60_000,
            client_certificate: None,
            tls_verify: None,
            tls_verify_depth: None,
            ca_certificates: None,
            enabled: true,
            tags: None,
        });
        config.routes.push(Route {
            id: uuid(2_000_000 + i),
            created_at: 1_795_616_178,
            updated_at: 1_795_616_178,
            name: Some(format!("route-{i}")),
            protocols: strings(&["http", "https"]),
            methods: None,
            hosts: Some(vec![format!("app-{i}.example.com")]),
            paths: Some(vec![format!("/api/v1/app-{i}")]),
            headers: None,
            https_redirect_status_code: 426,
            regex_priority: 0,
            strip_path: true,
            path_handling: "v0".into(),
            preserve_host: false,
            request_buffering: true,
            response_buffering: true,
            snis: None,
            sources: None,
            destinations: None,
            service: Some(service_id.into()),
            tags: None,
        });
        let cert_id = uuid(3_000_000 + i);
        let seed = i as u64;
        config.certificates.push(Certificate {
            id: cert_id,
            created_at: 1_795_616_178,
            updated_at: 1_795_616_178,
            // About the size of an ECDSA P-256 leaf and its PKCS#8 key.
            cert: fake_pem("CERTIFICATE", seed, 700),
            key: fake_pem("PRIVATE KEY", seed + 1_000_000, 190),
            cert_alt: None,
            key_alt: None,
            snis: vec![format!("app-{i}.example.com")],
            subject: format!("CN=app-{i}.example.com"),
            issuer: "CN=Example Issuing CA,O=Example".into(),
            sans: vec![format!("app-{i}.example.com")],
            not_before: 1_795_000_000,
            not_after: 1_826_536_000,
            fingerprint_sha256: fake_base64(seed + 2_000_000, 64).to_lowercase(),
            key_type: "ecdsa".into(),
            tags: None,
            ocsp_response: None,
            ocsp_response_alt: None,
        });
        config.snis.push(Sni {
            id: uuid(4_000_000 + i),
            created_at: 1_795_616_178,
            updated_at: 1_795_616_178,
            name: format!("app-{i}.example.com"),
            certificate: cert_id.into(),
            tags: None,
        });
    }
    config
}

#[test]
fn sizes_of_a_large_config() {
    let config = large_config(1_000);
    let started = Instant::now();
    let snapshot = encode(&config, 1);
    let encode_time = started.elapsed();
    let started = Instant::now();
    let decoded = decode(&snapshot.message).unwrap();
    let decode_time = started.elapsed();
    assert_eq!(decoded, config);
    assert_eq!(snapshot.message.encoding(), pb::Encoding::Gzip);
    let raw = snapshot.config_size() as usize;
    let sent = snapshot.wire_size();
    println!(
        "1000 routes + 1000 services + 1000 certificates + 1000 SNIs: {raw} bytes encoded, \
         {sent} bytes gzip level {GZIP_LEVEL} ({:.0}%); encode {encode_time:?}, decode \
         {decode_time:?}",
        100.0 * sent as f64 / raw as f64
    );
    assert!(sent < raw, "compression saves space");

    // The level trade-off, for the record (`cargo test -- --nocapture`).
    let raw_bytes = pb::Config::from(&config).encode_to_vec();
    for level in [1, 6, 9] {
        let started = Instant::now();
        let mut encoder = GzEncoder::new(Vec::new(), Compression::new(level));
        encoder.write_all(&raw_bytes).unwrap();
        let size = encoder.finish().unwrap().len();
        println!(
            "  gzip level {level}: {size} bytes ({:.0}%) in {:?}",
            100.0 * size as f64 / raw_bytes.len() as f64,
            started.elapsed()
        );
    }
}

mod proptests;
