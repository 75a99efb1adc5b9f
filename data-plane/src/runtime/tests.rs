#![allow(clippy::unwrap_used)]

use gatehouse_shared::model::ForeignKey;

use super::*;
use crate::test_support::*;

fn compile(config: model::Config) -> Result<Runtime, CompileError> {
    Runtime::compile(1, "h".into(), config)
}

fn rejected(config: model::Config) -> CompileError {
    compile(config).unwrap_err()
}

#[test]
fn empty_runtime() {
    let empty = Runtime::empty();
    assert!(!empty.is_loaded());
    assert_eq!((empty.version(), empty.hash()), (0, ""));
    assert_eq!(empty.counts(), EntityCounts::default());
    assert!(empty.certificate_for_sni("a.test").is_none());
    let compiled = compile(model::Config::default()).unwrap();
    assert!(compiled.is_loaded());
}

#[test]
fn valid_config_compiles_into_lookups() {
    let runtime = compile(valid_config()).unwrap();
    assert_eq!(runtime.counts().routes, 1);

    let cert = runtime.certificate(&CERTIFICATE).unwrap();
    assert_eq!(cert.id(), CERTIFICATE);
    assert!(cert.alt_certified_key().is_none());
    assert_eq!(cert.certified_key().cert.len(), 1);
    assert_eq!(
        runtime
            .certificate_for_sni("API.example.com.")
            .map(|c| c.id()),
        Some(CERTIFICATE)
    );
    assert!(runtime.certificate_for_sni("other.example.com").is_none());

    assert!(runtime.ca_certificate(&CA).is_some());
    assert_eq!(runtime.service_trust(&SERVICE).unwrap().len(), 1);
    assert_eq!(
        runtime.service(&SERVICE).unwrap().name.as_deref(),
        Some("svc")
    );

    let route = &runtime.routes()[0];
    assert_eq!(runtime.route(route).unwrap().id, ROUTE);
    assert_eq!(
        runtime
            .service_at(route.service_index().unwrap())
            .unwrap()
            .id,
        SERVICE
    );
    assert_eq!(route.prefix_paths(), ["/v1"]);
    let regex = &route.regex_paths()[0].regex;
    assert_eq!(&regex.captures("/items/42").unwrap()["id"], "42");
    assert!(!regex.is_match("/x/items/42"), "anchored at the start");
    assert_eq!(route.headers()[0].name, "x-env");
    assert_eq!(route.headers()[0].values, ["prod"]);
    assert!(route.headers()[0].patterns[0].is_match("STAGING"));
    assert_eq!(
        route.hosts()[1],
        HostPattern {
            name: HostName::AnyPrefix(".example.org".into()),
            port: Some(8443)
        }
    );
    assert_eq!(runtime.routes_for_host("api.example.com").count(), 1);
    assert_eq!(runtime.routes_for_host("a.b.example.org").count(), 1);
    assert_eq!(runtime.routes_for_host("example.org").count(), 0);

    assert_eq!(
        runtime.upstream_by_name("backend.internal").unwrap().id,
        UPSTREAM
    );
    assert_eq!(
        runtime.upstream(&UPSTREAM).unwrap().name,
        "backend.internal"
    );
    assert_eq!(runtime.targets(&UPSTREAM).count(), 1);
    assert_eq!(runtime.consumer_by_username("alice").unwrap().id, CONSUMER);
    assert_eq!(runtime.consumer(&CONSUMER).unwrap().id, CONSUMER);
    assert!(runtime.consumer_by_custom_id("alice").is_none());
    assert_eq!(runtime.consumer_groups(&CONSUMER), ["admins"]);
    let credential = runtime
        .mtls_credential("client.example.com", Some(&CA))
        .unwrap();
    assert_eq!(
        (credential.id, credential.consumer.id),
        (MTLS_CREDENTIAL, CONSUMER)
    );
    assert!(
        runtime
            .mtls_credential("client.example.com", None)
            .is_none()
    );
    assert_eq!(
        runtime.consumer_mtls_credentials(&CONSUMER).count(),
        runtime.counts().mtls_auth_credentials
    );
    let plugin = &runtime.plugins()[0];
    assert_eq!(runtime.plugin(plugin).unwrap().name(), "mtls-auth");
    assert_eq!(plugin.route_index(), Some(0));
    assert_eq!(plugin.trust().unwrap().len(), 1);

    // Debug never shows the configuration (it holds private keys).
    let debug = format!("{runtime:?} {cert:?}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
}

#[test]
fn renumbering_shares_the_compiled_config() {
    let runtime = compile(valid_config()).unwrap();
    let next = runtime.with_version(9);
    assert_eq!((next.version(), next.hash()), (9, "h"));
    assert!(Arc::ptr_eq(&runtime.compiled, &next.compiled));
}

#[test]
fn sni_lookup_order() {
    let mut config = model::Config::default();
    let names = ["a.example.com", "*.example.com", "www.example.*", "*"];
    for name in names {
        let mut cert = certificate(name.trim_start_matches("*.").trim_end_matches(".*"));
        cert.id = Uuid::new_v4();
        config.snis.push(model::Sni {
            id: Uuid::new_v4(),
            created_at: 1,
            updated_at: 1,
            name: name.into(),
            certificate: ForeignKey { id: cert.id },
            tags: None,
        });
        config.certificates.push(cert);
    }
    let id_of = |i: usize| config.certificates[i].id;
    let runtime = compile(config.clone()).unwrap();
    let pick = |sni: &str| runtime.certificate_for_sni(sni).map(|c| c.id());
    assert_eq!(pick("a.example.com"), Some(id_of(0)));
    assert_eq!(pick("b.example.com"), Some(id_of(1)));
    // Only the first label is replaced.
    assert_eq!(pick("x.b.example.com"), Some(id_of(3)));
    assert_eq!(pick("www.example.net"), Some(id_of(2)));
    assert_eq!(pick("localhost"), Some(id_of(3)));
}

#[test]
fn alt_certificates_compile_side_by_side() {
    let mut config = valid_config();
    let alt = certificate("api.example.com");
    config.certificates[0].cert_alt = Some(alt.cert.clone());
    config.certificates[0].key_alt = Some(alt.key.clone());
    let runtime = compile(config.clone()).unwrap();
    assert!(
        runtime
            .certificate(&CERTIFICATE)
            .unwrap()
            .alt_certified_key()
            .is_some()
    );

    config.certificates[0].key_alt = Some(certificate("x").key);
    let err = rejected(config.clone());
    assert_eq!(err.reason, "cert_alt does not match key_alt");
    config.certificates[0].key_alt = None;
    assert!(
        rejected(config)
            .reason
            .contains("cert_alt is set without key_alt")
    );
}

#[test]
fn bad_certificate_is_rejected_naming_it() {
    let mut config = valid_config();
    config.certificates[0].cert =
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into();
    let err = rejected(config);
    assert_eq!((err.entity, err.id), ("certificate", CERTIFICATE));
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("certificate {CERTIFICATE}: invalid certificate: ")),
        "{text}"
    );

    let mut config = valid_config();
    config.certificates[0].cert = "not a pem".into();
    assert!(
        rejected(config)
            .to_string()
            .contains("no certificate found")
    );
}

#[test]
fn key_problems_are_rejected_without_key_material() {
    let mut config = valid_config();
    let other = certificate("other.test");
    config.certificates[0].key = other.key.clone();
    let err = rejected(config);
    assert_eq!(
        err.to_string(),
        format!("certificate {CERTIFICATE}: certificate does not match key")
    );

    let mut config = valid_config();
    let garbage =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
    config.certificates[0].key = garbage.into();
    let text = rejected(config).to_string();
    assert_eq!(
        text,
        format!("certificate {CERTIFICATE}: invalid key: unable to parse key")
    );
    assert!(!text.contains("c2VjcmV0"));

    let mut config = valid_config();
    config.certificates[0].key = String::new();
    assert!(
        rejected(config)
            .to_string()
            .ends_with("invalid key: no private key found")
    );
}

#[test]
fn bad_regex_is_rejected_naming_the_route() {
    let mut config = valid_config();
    config.routes[0].paths = Some(vec!["~/items/(\\d+".into()]);
    let err = rejected(config);
    assert_eq!((err.entity, err.id), ("route", ROUTE));
    assert!(
        err.reason
            .starts_with("invalid regex path '~/items/(\\d+': "),
        "{err}"
    );

    let mut config = valid_config();
    config.routes[0]
        .headers
        .as_mut()
        .unwrap()
        .insert("x-bad".into(), vec!["~*(".into()]);
    assert!(rejected(config).reason.contains("for header 'x-bad'"));

    let mut config = valid_config();
    config.routes[0].paths = Some(vec!["/a/../b".into()]);
    assert!(rejected(config).reason.contains("non-normalized path"));
}

/// An id no entity has.
const MISSING: Uuid = Uuid::from_u128(0xdead);

/// Breaks one reference of a valid config.
type Breaker = Box<dyn Fn(&mut model::Config)>;

#[test]
fn dangling_references_are_rejected() {
    let cases: Vec<(&str, Uuid, &str, Breaker)> = vec![
        (
            "route",
            ROUTE,
            "service",
            Box::new(|c| c.routes[0].service = Some(MISSING.into())),
        ),
        (
            "sni",
            SNI,
            "certificate",
            Box::new(|c| c.snis[0].certificate = MISSING.into()),
        ),
        (
            "service",
            SERVICE,
            "client_certificate",
            Box::new(|c| c.services[0].client_certificate = Some(MISSING.into())),
        ),
        (
            "service",
            SERVICE,
            "ca_certificates: ca_certificate",
            Box::new(|c| c.services[0].ca_certificates = Some(vec![MISSING])),
        ),
        (
            "target",
            TARGET,
            "upstream",
            Box::new(|c| c.targets[0].upstream = MISSING.into()),
        ),
        (
            "acl",
            ACL,
            "consumer",
            Box::new(|c| c.acls[0].consumer = MISSING.into()),
        ),
        (
            "mtls_auth_credential",
            MTLS_CREDENTIAL,
            "consumer",
            Box::new(|c| c.mtls_auth_credentials[0].consumer = MISSING.into()),
        ),
        (
            "mtls_auth_credential",
            MTLS_CREDENTIAL,
            "ca_certificate",
            Box::new(|c| c.mtls_auth_credentials[0].ca_certificate = Some(MISSING.into())),
        ),
        (
            "plugin",
            PLUGIN,
            "route",
            Box::new(|c| c.plugins[0].route = Some(MISSING.into())),
        ),
        (
            "plugin",
            PLUGIN,
            "service",
            Box::new(|c| c.plugins[0].service = Some(MISSING.into())),
        ),
        (
            "plugin",
            PLUGIN,
            "consumer",
            Box::new(|c| c.plugins[0].consumer = Some(MISSING.into())),
        ),
        (
            "plugin",
            PLUGIN,
            "config.ca_certificates: ca_certificate",
            Box::new(|c| {
                if let PluginConfig::MtlsAuth(m) = &mut c.plugins[0].config {
                    m.ca_certificates = vec![CA, MISSING];
                }
            }),
        ),
    ];
    for (entity, id, field, break_it) in cases {
        let mut config = valid_config();
        break_it(&mut config);
        let err = rejected(config);
        assert_eq!((err.entity, err.id), (entity, id), "{err}");
        assert_eq!(
            err.reason,
            format!("{field} {MISSING} does not exist"),
            "{err}"
        );
    }
}

#[test]
fn other_invalid_values_are_rejected() {
    let mut config = valid_config();
    config.services[0].protocol = "gopher".into();
    assert_eq!(rejected(config).reason, "unknown protocol 'gopher'");

    let mut config = valid_config();
    config.upstreams[0].algorithm = "random".into();
    assert_eq!(rejected(config).entity, "upstream");

    let mut config = valid_config();
    let mut sni = config.snis[0].clone();
    sni.id = Uuid::new_v4();
    config.snis.push(sni);
    assert!(rejected(config).reason.contains("used by another sni"));

    let mut config = valid_config();
    config.routes.push(config.routes[0].clone());
    assert_eq!(rejected(config).reason, "duplicate id");

    let mut config = valid_config();
    config.ca_certificates[0].cert = certificate("leaf").cert;
    let err = rejected(config);
    assert_eq!(err.entity, "ca_certificate");

    let mut config = valid_config();
    config.routes[0].hosts = Some(vec!["a.*.com".into()]);
    assert!(
        rejected(config)
            .reason
            .starts_with("invalid host 'a.*.com'")
    );
}

/// An mtls-auth credential of `consumer` for `subject`, bound to `ca` or to any CA.
fn mtls_credential(
    id: u128,
    consumer: Uuid,
    subject: &str,
    ca: Option<Uuid>,
) -> model::MtlsAuthCredential {
    model::MtlsAuthCredential {
        id: Uuid::from_u128(id),
        created_at: 1,
        updated_at: 1,
        consumer: consumer.into(),
        subject_name: subject.into(),
        ca_certificate: ca.map(ForeignKey::from),
        tags: None,
    }
}

#[test]
fn mtls_credentials_are_looked_up_by_subject_in_kongs_order() {
    let mut config = valid_config();
    let mut other_ca = ca_certificate();
    other_ca.id = Uuid::from_u128(0x5001);
    let bob = Uuid::from_u128(0x8001);
    let mut consumer = config.consumers[0].clone();
    (consumer.id, consumer.username) = (bob, Some("bob".into()));
    config.consumers.push(consumer);
    // Listed out of lookup order: for any CA first, then the CAs by decreasing id.
    config.mtls_auth_credentials = vec![
        mtls_credential(0xb003, bob, "client.example.com", None),
        mtls_credential(0xb002, bob, "client.example.com", Some(other_ca.id)),
        mtls_credential(0xb001, CONSUMER, "client.example.com", Some(CA)),
        mtls_credential(0xb004, CONSUMER, "Client.example.com", None),
    ];
    config.ca_certificates.push(other_ca.clone());
    let runtime = compile(config).unwrap();

    let ids = |subject: &str| -> Vec<u128> {
        runtime
            .mtls_credentials_for_subject(subject)
            .map(|c| c.id.as_u128())
            .collect()
    };
    // CA-specific ones by CA id, then the one for any CA.
    assert_eq!(ids("client.example.com"), [0xb001, 0xb002, 0xb003]);
    // Subjects compare exactly.
    assert_eq!(ids("Client.example.com"), [0xb004]);
    assert!(ids("client.example.com.").is_empty());
    assert!(ids("").is_empty());

    let exact = |ca: Option<&Uuid>| {
        runtime
            .mtls_credential("client.example.com", ca)
            .map(|c| c.id.as_u128())
    };
    assert_eq!(exact(Some(&CA)), Some(0xb001));
    assert_eq!(exact(Some(&other_ca.id)), Some(0xb002));
    assert_eq!(exact(None), Some(0xb003));
    assert_eq!(exact(Some(&MISSING)), None);

    let of = |consumer: &Uuid| -> Vec<u128> {
        runtime
            .consumer_mtls_credentials(consumer)
            .map(|c| c.id.as_u128())
            .collect()
    };
    assert_eq!(of(&bob), [0xb003, 0xb002]);
    assert_eq!(of(&CONSUMER), [0xb001, 0xb004]);
    assert!(of(&MISSING).is_empty());
    assert_eq!(runtime.counts().mtls_auth_credentials, 4);
}

#[test]
fn mtls_credentials_must_be_unique_by_subject_and_ca() {
    for ca in [Some(CA), None] {
        let mut config = valid_config();
        config.mtls_auth_credentials = vec![
            mtls_credential(0xb001, CONSUMER, "client.example.com", ca),
            mtls_credential(0xb002, CONSUMER, "client.example.com", ca),
        ];
        let err = rejected(config);
        assert_eq!(
            (err.entity, err.id),
            ("mtls_auth_credential", Uuid::from_u128(0xb002)),
            "{err}"
        );
        let with = ca.map_or_else(
            || "no ca_certificate".to_owned(),
            |id| format!("ca_certificate {id}"),
        );
        assert_eq!(
            err.reason,
            format!(
                "subject_name 'client.example.com' with {with} is used by another \
                 mtls_auth_credential"
            )
        );
    }

    let mut config = valid_config();
    config.mtls_auth_credentials[0].subject_name = String::new();
    assert_eq!(rejected(config).reason, "subject_name is empty");

    let mut config = valid_config();
    let duplicate = config.mtls_auth_credentials[0].clone();
    config.mtls_auth_credentials.push(duplicate);
    assert_eq!(rejected(config).reason, "duplicate id");
}

#[test]
fn first_error_in_list_order_with_many_entities() {
    // Above the parallel threshold, the error reported is still the first in list order.
    let mut config = model::Config::default();
    let template = certificate("bulk.test");
    for i in 0..(PARALLEL_THRESHOLD * 2) {
        let mut cert = template.clone();
        cert.id = Uuid::from_u128(i as u128 + 1);
        config.certificates.push(cert);
    }
    assert_eq!(compile(config.clone()).unwrap().counts().certificates, 512);
    let bad_key = certificate("other").key;
    for i in [300, 450] {
        config.certificates[i].key = bad_key.clone();
    }
    assert_eq!(rejected(config).id, Uuid::from_u128(301));
}

/// The target: 10k routes and 10k certificates decoded and compiled in under 1 s.
/// `cargo test --release -p gatehouse-dp -- --ignored --nocapture large_config`
#[test]
#[ignore = "timing; run in release"]
fn large_config_compile_time() {
    use std::time::Instant;

    let mut config = valid_config();
    let templates: Vec<model::Certificate> = (0..16)
        .map(|i| certificate(&format!("t{i}.test")))
        .collect();
    for i in 0..10_000u128 {
        let mut cert = templates[i as usize % templates.len()].clone();
        cert.id = Uuid::from_u128(0x1_0000_0000 + i);
        config.certificates.push(cert);
        config.snis.push(model::Sni {
            id: Uuid::from_u128(0x2_0000_0000 + i),
            created_at: 1,
            updated_at: 1,
            name: format!("host{i}.example.com"),
            certificate: ForeignKey {
                id: Uuid::from_u128(0x1_0000_0000 + i),
            },
            tags: None,
        });
        let mut route = config.routes[0].clone();
        route.id = Uuid::from_u128(0x3_0000_0000 + i);
        route.hosts = Some(vec![format!("host{i}.example.com")]);
        route.paths = Some(if i % 10 == 0 {
            vec![format!("~/r{i}/(?<id>\\d+)$")]
        } else {
            vec![format!("/r{i}")]
        });
        config.routes.push(route);
    }
    let encoded = gatehouse_shared::snapshot::encode(&config, 1);
    let started = Instant::now();
    let decoded = gatehouse_shared::snapshot::decode(&encoded.message).unwrap();
    let decode = started.elapsed();
    let runtime = Runtime::compile(1, encoded.hash, decoded).unwrap();
    let total = started.elapsed();
    eprintln!(
        "10k routes + 10k certificates: {} bytes on the wire, decode {decode:?}, decode + compile {total:?}",
        encoded.message.config.len()
    );
    assert_eq!(runtime.counts().certificates, 10_001);
    let mut only_certs = config.clone();
    only_certs.routes.truncate(1);
    let started = Instant::now();
    Runtime::compile(1, String::new(), only_certs).unwrap();
    eprintln!("certificates and snis only: {:?}", started.elapsed());
    let mut only_routes = config.clone();
    only_routes.certificates.truncate(1);
    only_routes.snis.truncate(1);
    let started = Instant::now();
    Runtime::compile(1, String::new(), only_routes).unwrap();
    eprintln!("routes only: {:?}", started.elapsed());
    assert_eq!(
        runtime
            .certificate_for_sni("host42.example.com")
            .unwrap()
            .id(),
        Uuid::from_u128(0x1_0000_0000 + 42)
    );
}
