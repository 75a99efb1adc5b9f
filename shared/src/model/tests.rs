#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;

/// Deserializes `json`, serializes it back, and checks nothing was lost or added.
fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(json: Value) -> T {
    let value: T = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(serde_json::to_value(&value).unwrap(), json);
    value
}

#[test]
fn service_from_admin_api() {
    // `curl -X POST :8001/services -d name=x -d url=https://a.test/p`
    let service: Service = round_trip(json!({
        "ca_certificates": null, "client_certificate": null, "connect_timeout": 60000,
        "created_at": 1795616178, "enabled": true, "host": "a.test",
        "id": "01a21310-815d-70a7-84ba-dbcb32fd3093", "name": "x", "path": "/p", "port": 443,
        "protocol": "https", "read_timeout": 60000, "retries": 5, "tags": null,
        "tls_verify": null, "tls_verify_depth": null, "updated_at": 1795616178,
        "write_timeout": 60000
    }));
    assert_eq!(service.port, 443);
    assert_eq!(service.name.as_deref(), Some("x"));
    assert_eq!(service.path.as_deref(), Some("/p"));
    assert_eq!(service.client_certificate, None);
}

#[test]
fn route_from_admin_api() {
    let route: Route = round_trip(json!({
        "created_at": 1, "destinations": null, "headers": {"x-env": ["prod", "staging"]},
        "hosts": ["example.com"], "https_redirect_status_code": 426,
        "id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d11", "methods": null, "name": null,
        "path_handling": "v0", "paths": ["/api"], "preserve_host": false,
        "protocols": ["http", "https"], "regex_priority": 0, "request_buffering": true,
        "response_buffering": true,
        "service": {"id": "01a21310-815d-70a7-84ba-dbcb32fd3093"}, "snis": null,
        "sources": null, "strip_path": true, "tags": null, "updated_at": 1
    }));
    assert_eq!(
        route.service.map(|s| s.id.to_string()).as_deref(),
        Some("01a21310-815d-70a7-84ba-dbcb32fd3093")
    );
    assert_eq!(route.headers.unwrap()["x-env"], ["prod", "staging"]);
}

#[test]
fn stream_route_endpoints() {
    let route: Route = round_trip(json!({
        "created_at": 1, "destinations": [{"ip": "10.0.0.0/8", "port": null}],
        "headers": null, "hosts": null, "https_redirect_status_code": 426,
        "id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d11", "methods": null, "name": "tcp",
        "path_handling": "v0", "paths": null, "preserve_host": false, "protocols": ["tcp"],
        "regex_priority": 0, "request_buffering": true, "response_buffering": true,
        "service": null, "snis": null, "sources": [{"ip": null, "port": 5432}],
        "strip_path": true, "tags": ["db"], "updated_at": 1
    }));
    assert_eq!(route.sources.unwrap()[0].port, Some(5432));
}

#[test]
fn acl_plugin_from_admin_api() {
    let plugin: Plugin = round_trip(json!({
        "config": {"allow": ["admins"], "always_use_authenticated_groups": false,
                   "deny": null, "hide_groups_header": false},
        "consumer": null, "created_at": 1, "enabled": true,
        "id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d12", "instance_name": null, "name": "acl",
        "protocols": ["grpc", "grpcs", "http", "https"], "route": null,
        "service": {"id": "01a21310-815d-70a7-84ba-dbcb32fd3093"}, "tags": null,
        "updated_at": 1
    }));
    let PluginConfig::Acl(config) = &plugin.config else {
        panic!("not acl: {plugin:?}");
    };
    assert_eq!(config.allow.as_deref(), Some(&["admins".to_owned()][..]));
    assert_eq!(plugin.name(), "acl");
}

#[test]
fn mtls_auth_plugin_fills_config_defaults() {
    let plugin: Plugin = serde_json::from_value(json!({
        "config": {"ca_certificates": ["0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d13"],
                   "consumer_by": null},
        "consumer": null, "created_at": 1, "enabled": true,
        "id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d12", "instance_name": "m", "name": "mtls-auth",
        "protocols": ["https"], "route": null, "service": null, "tags": null, "updated_at": 1
    }))
    .unwrap();
    let PluginConfig::MtlsAuth(config) = &plugin.config else {
        panic!("not mtls-auth: {plugin:?}");
    };
    assert_eq!(config.consumer_by, ["username", "custom_id"]);
    assert_eq!(config.authenticated_group_by, "CN");
    assert_eq!(config.revocation_check_mode, "IGNORE_CA_ERROR");
    assert!(config.ssl_verify);
    assert_eq!(config.cert_cache_ttl, 60_000.0);
    assert_eq!(serde_json::to_value(&plugin).unwrap()["name"], "mtls-auth");
}

#[test]
fn mtls_auth_credential_from_admin_api() {
    // `curl -X POST :8001/consumers/alice/mtls-auth -d subject_name=client.example.com`
    let credential: MtlsAuthCredential = round_trip(json!({
        "ca_certificate": null, "consumer": {"id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d17"},
        "created_at": 1795616178, "id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d18",
        "subject_name": "client.example.com", "tags": null, "updated_at": 1795616178
    }));
    assert_eq!(credential.ca_certificate, None);
    let credential: MtlsAuthCredential = round_trip(json!({
        "ca_certificate": {"id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d13"},
        "consumer": {"id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d17"}, "created_at": 1,
        "id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d18", "subject_name": "CN with spaces",
        "tags": ["t"], "updated_at": 2
    }));
    assert_eq!(
        credential
            .ca_certificate
            .map(|ca| ca.id.to_string())
            .as_deref(),
        Some("0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d13")
    );
    // A stored configuration from before the collection existed still reads.
    let config: Config = serde_json::from_value(json!({"consumers": []})).unwrap();
    assert!(config.mtls_auth_credentials.is_empty());
}

#[test]
fn unknown_plugin_is_an_error() {
    let err = serde_json::from_value::<Plugin>(json!({
        "config": {}, "consumer": null, "created_at": 1, "enabled": true,
        "id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d12", "instance_name": null,
        "name": "rate-limiting", "protocols": ["http"], "route": null, "service": null,
        "tags": null, "updated_at": 1
    }))
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown plugin `rate-limiting`"),
        "{err}"
    );
}

#[test]
fn upstream_nulls_and_missing_records_read_as_schema_defaults() {
    let upstream: Upstream = serde_json::from_value(json!({
        "algorithm": null, "client_certificate": null, "created_at": 1,
        "hash_fallback": "none", "hash_fallback_header": null,
        "hash_fallback_query_arg": null, "hash_fallback_uri_capture": null,
        "hash_on": "none", "hash_on_cookie": null, "hash_on_cookie_path": "/",
        "hash_on_header": null, "hash_on_query_arg": null, "hash_on_uri_capture": null,
        "healthchecks": {"active": {"healthy": {"interval": 5}}, "passive": null},
        "host_header": null, "id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d14",
        "name": "backend", "slots": 10000, "tags": null, "updated_at": 1,
        "use_srv_name": false
    }))
    .unwrap();
    assert_eq!(upstream.algorithm, "round-robin");
    assert_eq!(upstream.healthchecks.active.healthy.interval, 5.0);
    assert_eq!(
        upstream.healthchecks.active.healthy.http_statuses,
        [200, 302]
    );
    assert_eq!(upstream.healthchecks.passive, PassiveHealthcheck::default());
    assert_eq!(upstream.healthchecks.active.http_path, "/");
}

#[test]
fn stored_defaults_match_the_schema() {
    // The store fills defaults from the schema; the model's `Default`s must agree.
    let mut obj = json!({"name": "backend"}).as_object().cloned().unwrap();
    crate::entities::schema("upstreams")
        .unwrap()
        .validate(&mut obj)
        .unwrap();
    let stored: Healthchecks = serde_json::from_value(obj["healthchecks"].clone()).unwrap();
    assert_eq!(stored, Healthchecks::default());
}

#[test]
fn target_and_certificate_shapes() {
    let target: Target = round_trip(json!({
        "created_at": 1795616178.123, "id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d15",
        "tags": null, "target": "10.0.0.1:8000", "updated_at": 1795616178.5,
        "upstream": {"id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d14"}, "weight": 100
    }));
    assert_eq!(target.created_at, 1795616178.123);
    let cert: Certificate = round_trip(json!({
        "cert": "-----BEGIN CERTIFICATE-----", "cert_alt": null, "created_at": 1,
        "fingerprint_sha256": "ab", "id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d16",
        "issuer": "CN=ca", "key": "-----BEGIN PRIVATE KEY-----", "key_alt": null,
        "key_type": "ecdsa", "not_after": 2, "not_before": 1, "sans": ["a.test"],
        "snis": ["a.test", "b.test"], "subject": "CN=a.test", "tags": null, "updated_at": 1
    }));
    assert_eq!(cert.snis, ["a.test", "b.test"]);
}

#[test]
fn sort_orders_by_id() {
    let consumer = |id: u128| Consumer {
        id: Uuid::from_u128(id),
        created_at: 0,
        updated_at: 0,
        username: Some(id.to_string()),
        custom_id: None,
        tags: None,
    };
    let mut config = Config {
        consumers: vec![consumer(3), consumer(1), consumer(2)],
        ..Config::default()
    };
    config.sort();
    let ids: Vec<_> = config.consumers.iter().map(|c| c.id.as_u128()).collect();
    assert_eq!(ids, [1, 2, 3]);
}

#[test]
fn explicit_nulls_read_as_schema_defaults() {
    // The Admin API accepts `"retries": null` for a field with a default that is not required.
    let service: Service = serde_json::from_value(json!({
        "ca_certificates": null, "client_certificate": null, "connect_timeout": null,
        "created_at": 1, "enabled": true, "host": "a.test",
        "id": "01a21310-815d-70a7-84ba-dbcb32fd3093", "name": null, "path": null, "port": 80,
        "protocol": "http", "read_timeout": null, "retries": null, "tags": null,
        "tls_verify": null, "tls_verify_depth": null, "updated_at": 1, "write_timeout": null
    }))
    .unwrap();
    assert_eq!(service.retries, 5);
    assert_eq!(
        (
            service.connect_timeout,
            service.write_timeout,
            service.read_timeout
        ),
        (60_000, 60_000, 60_000)
    );
    let route: Route = serde_json::from_value(json!({
        "created_at": 1, "destinations": null, "headers": null, "hosts": null,
        "https_redirect_status_code": 426, "id": "0190a6b2-52a4-7c1e-9d7b-3f1f0a6c2d11",
        "methods": null, "name": null, "path_handling": null, "paths": ["/"],
        "preserve_host": false, "protocols": ["http"], "regex_priority": null,
        "request_buffering": true, "response_buffering": true, "service": null, "snis": null,
        "sources": null, "strip_path": true, "tags": null, "updated_at": 1
    }))
    .unwrap();
    assert_eq!(
        (route.regex_priority, route.path_handling.as_str()),
        (0, "v0")
    );
}
