#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;
use crate::test_support::{ca_certificate, intermediate_ca_certificate};

const S1: Uuid = Uuid::from_u128(0x51);
const S2: Uuid = Uuid::from_u128(0x52);

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn route(n: u128, service: Uuid, extra: Value) -> Value {
    let mut route = json!({
        "id": id(n), "created_at": 1, "updated_at": 1, "protocols": ["http", "https"],
        "https_redirect_status_code": 426, "strip_path": true, "preserve_host": false,
        "request_buffering": true, "response_buffering": true, "service": {"id": service},
    });
    for (k, v) in extra.as_object().unwrap() {
        route[k] = v.clone();
    }
    route
}

fn plugin(n: u128, name: &str, config: Value, scope: Value) -> Value {
    let mut plugin = json!({
        "id": id(n), "created_at": 1, "updated_at": 1, "name": name, "config": config,
        "route": null, "service": null, "consumer": null,
        "protocols": ["http", "https", "grpc", "grpcs"], "enabled": true,
    });
    for (k, v) in scope.as_object().unwrap() {
        plugin[k] = v.clone();
    }
    plugin
}

fn runtime(routes: Vec<Value>, plugins: Vec<Value>) -> (Runtime, Uuid) {
    let ca = ca_certificate();
    let ca_id = ca.id;
    let mut config: model::Config = serde_json::from_value(json!({
        "services": [
            {"id": S1, "created_at": 1, "updated_at": 1, "protocol": "http", "host": "a.internal",
             "port": 80, "enabled": true},
            {"id": S2, "created_at": 1, "updated_at": 1, "protocol": "http", "host": "b.internal",
             "port": 80, "enabled": true},
        ],
        "routes": routes,
        "consumers": [{"id": id(0xc1), "created_at": 1, "updated_at": 1, "username": "alice"}],
        "acls": [{"id": id(0xa1), "created_at": 1, "updated_at": 1,
                  "consumer": {"id": id(0xc1)}, "group": "admins"}],
        "plugins": plugins,
    }))
    .unwrap();
    config.ca_certificates = vec![ca];
    (Runtime::compile(1, "h".into(), config).unwrap(), ca_id)
}

/// Which acl config (by its allow list's first group) and whether mtls-auth applies.
fn applied(plan: &Plan, route: usize) -> (Option<String>, bool) {
    let plugins = plan.route(route).unwrap();
    let acl = plugins
        .acl
        .as_ref()
        .map(|a| a.allow.as_ref().unwrap().iter().next().unwrap().clone());
    (acl, plugins.mtls.is_some())
}

#[test]
fn the_most_specific_instance_wins() {
    let (runtime, _) = runtime(
        vec![
            route(1, S1, json!({"paths": ["/one"]})),
            route(2, S1, json!({"paths": ["/two"]})),
            route(3, S2, json!({"paths": ["/three"]})),
        ],
        vec![
            plugin(0x10, "acl", json!({"allow": ["global"]}), json!({})),
            plugin(
                0x11,
                "acl",
                json!({"allow": ["service"]}),
                json!({"service": {"id": S1}}),
            ),
            plugin(
                0x12,
                "acl",
                json!({"allow": ["route"]}),
                json!({"route": {"id": id(2)}}),
            ),
            plugin(
                0x13,
                "acl",
                json!({"allow": ["both"]}),
                json!({"route": {"id": id(1)}, "service": {"id": S1}}),
            ),
            // Scoped to a consumer: not possible in Kong for acl; ignored.
            plugin(
                0x14,
                "acl",
                json!({"allow": ["consumer"]}),
                json!({"consumer": {"id": id(0xc1)}, "route": {"id": id(3)}}),
            ),
        ],
    );
    let plan = Plan::build(&runtime);
    assert_eq!(applied(&plan, 0), (Some("both".into()), false));
    assert_eq!(applied(&plan, 1), (Some("route".into()), false));
    assert_eq!(applied(&plan, 2), (Some("global".into()), false));
}

#[test]
fn client_certificates_are_requested_only_for_the_names_of_mtls_routes() {
    let routes = vec![
        route(
            1,
            S1,
            json!({"hosts": ["api.example.com:8443", "*.svc.example.com"]}),
        ),
        route(
            2,
            S1,
            json!({"protocols": ["https"], "snis": ["Mtls.Example.com"]}),
        ),
        route(3, S2, json!({"hosts": ["open.example.com"]})),
    ];
    let (base, ca) = runtime(routes, vec![]);
    let mut config = base.config().clone();
    let mtls = |config: Value, scope: Value| -> model::Plugin {
        serde_json::from_value(plugin(0x20, "mtls-auth", config, scope)).unwrap()
    };
    config.plugins = vec![mtls(
        json!({"ca_certificates": [ca]}),
        json!({"service": {"id": S1}}),
    )];
    let scoped = Runtime::compile(2, "h2".into(), config.clone()).unwrap();
    let plan = Plan::build(&scoped);
    let auth = plan.client_auth();
    assert!(auth.is_used());
    assert!(
        auth.requests(Some("api.example.com")),
        "host without its port"
    );
    assert!(auth.requests(Some("x.svc.example.com")), "wildcard host");
    assert!(
        auth.requests(Some("MTLS.example.com")),
        "route snis, any case"
    );
    assert!(
        !auth.requests(Some("open.example.com")),
        "route without the plugin"
    );
    assert!(!auth.requests(None), "no SNI, no named route");
    assert!(auth.hints().is_empty(), "send_ca_dn is off");
    assert_eq!(applied(&plan, 2), (None, false));
    assert!(plan.route(0).unwrap().mtls.is_some());

    // A global instance asks everyone, and send_ca_dn names the CA.
    config.plugins = vec![mtls(
        json!({"ca_certificates": [ca], "send_ca_dn": true}),
        json!({}),
    )];
    let global = Runtime::compile(3, "h3".into(), config).unwrap();
    let plan = Plan::build(&global);
    assert!(plan.client_auth().requests(None));
    assert!(plan.client_auth().requests(Some("open.example.com")));
    assert_eq!(plan.client_auth().hints().len(), 1);
}

#[test]
fn acl_allows_and_denies_by_consumer_or_authenticated_groups() {
    let (runtime, _) = runtime(vec![], vec![]);
    let alice = runtime.consumer(&id(0xc1)).unwrap().clone();
    let acl = |config: Value| Acl::new(&serde_json::from_value(config).unwrap(), &[]);
    let run = |acl: &Acl, identity: &Identity| {
        let mut headers = Vec::new();
        acl.access(&runtime, identity, &mut headers)
            .map(|()| headers)
    };
    let consumer = Identity {
        consumer: Some(alice.clone()),
        credential: true,
        ..Identity::default()
    };
    let certificate = Identity {
        authenticated_groups: vec!["ops".into()],
        credential: true,
        ..Identity::default()
    };
    let nobody = Identity::default();

    let allow_admins = acl(json!({"allow": ["admins"]}));
    assert_eq!(
        run(&allow_admins, &consumer).unwrap(),
        vec![(CONSUMER_GROUPS, "admins".to_owned())]
    );
    assert_eq!(run(&allow_admins, &certificate).unwrap_err().status, 403);
    assert_eq!(run(&allow_admins, &nobody).unwrap_err().status, 401);

    let allow_ops = acl(json!({"allow": ["ops"], "hide_groups_header": true}));
    assert_eq!(run(&allow_ops, &certificate).unwrap(), vec![]);
    let deny_ops = acl(json!({"deny": ["ops"]}));
    let denied = run(&deny_ops, &certificate).unwrap_err();
    assert_eq!(
        (denied.status, denied.message),
        (StatusCode::FORBIDDEN, "You cannot consume this service")
    );
    assert_eq!(
        run(&deny_ops, &consumer).unwrap(),
        vec![(CONSUMER_GROUPS, "admins".to_owned())]
    );

    // A consumer with authenticated groups: the consumer's groups, unless told otherwise.
    let both = Identity {
        consumer: Some(alice),
        authenticated_groups: vec!["ops".into()],
        credential: true,
        ..Identity::default()
    };
    assert!(run(&allow_admins, &both).is_ok());
    let authenticated_first =
        acl(json!({"allow": ["ops"], "always_use_authenticated_groups": true}));
    assert_eq!(
        run(&authenticated_first, &both).unwrap(),
        vec![(AUTHENTICATED_GROUPS, "ops".to_owned())]
    );
}

#[test]
fn name_patterns() {
    assert!(NamePattern::new("*.example.com").matches("a.example.com"));
    assert!(!NamePattern::new("*.example.com").matches("example.com"));
    assert!(NamePattern::new("example.*").matches("example.org"));
    assert!(NamePattern::new("Exact.Test").matches("exact.test"));
}

#[tokio::test]
async fn an_authentication_instance_that_cannot_be_built_refuses_instead_of_vanishing() {
    let intermediate = intermediate_ca_certificate();
    let (runtime, _) = runtime(
        vec![
            route(1, S1, json!({"paths": ["/one"]})),
            route(2, S2, json!({"paths": ["/two"]})),
        ],
        vec![],
    );
    // Only the intermediate is named: no chain can be anchored.
    let mut config = runtime.config().clone();
    config.plugins.push(
        serde_json::from_value(plugin(
            0x20,
            "mtls-auth",
            json!({"ca_certificates": [intermediate.id]}),
            json!({"service": {"id": S1}}),
        ))
        .unwrap(),
    );
    config.ca_certificates.push(intermediate);
    let runtime = Runtime::compile(2, "h2".into(), config).unwrap();
    let plan = Plan::build(&runtime);

    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(plan.warnings[0].contains(&id(0x20).to_string()));
    assert!(plan.warnings[0].contains("anchor"), "{:?}", plan.warnings);
    let route_one = plan.route(0).unwrap();
    assert!(matches!(route_one.mtls, Some(Authn::Refuse(_))));
    assert!(
        plan.route(1).unwrap().mtls.is_none(),
        "other services untouched"
    );
    // It asks no client certificate (it could verify none) ...
    assert!(!plan.client_auth().is_used());

    // ... and refuses every request it covers, whatever the connection carries.
    let verified = VerifiedCertificates::default();
    let revocation = RevocationChecker::default();
    let request = Request {
        tls: None,
        protocol: Protocol::Https,
        client_ip: "127.0.0.1".parse().unwrap(),
        verified: &verified,
        revocation: &revocation,
    };
    let denied = route_one.access(&runtime, &request).await.unwrap_err();
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(denied.message, "TLS certificate failed verification");
}
