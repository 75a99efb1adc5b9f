#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::*;
use crate::config::ProxySettings;
use crate::proxy::Listeners;
use crate::runtime::SharedRuntime;

const PATIENCE: Duration = Duration::from_secs(10);

/// A pending challenge expiring in an hour; its key authorization is `<token>.thumb-print_1`.
pub(crate) fn challenge(kind: &str, domain: &str, token: &str) -> model::AcmeChallenge {
    model::AcmeChallenge {
        id: Uuid::new_v4(),
        kind: kind.to_owned(),
        domain: domain.to_owned(),
        token: token.to_owned(),
        key_authorization: format!("{token}.thumb-print_1"),
        expires_at: unix_now() + 3600,
    }
}

fn with_challenges(challenges: Vec<model::AcmeChallenge>) -> model::Config {
    model::Config {
        acme_challenges: challenges,
        ..model::Config::default()
    }
}

fn runtime(version: u64, config: model::Config) -> Arc<Runtime> {
    Arc::new(Runtime::compile(version, format!("h{version}"), config).unwrap())
}

/// A runtime holder with an ACME part registered.
fn shared_with_acme() -> (Arc<SharedRuntime>, Arc<Acme>) {
    let shared = Arc::new(SharedRuntime::default());
    let acme = Arc::new(Acme::default());
    let part: Arc<dyn Part> = acme.clone();
    shared.register(Arc::downgrade(&part));
    (shared, acme)
}

#[test]
fn a_malformed_challenge_rejects_the_snapshot_whole() {
    let (shared, acme) = shared_with_acme();
    let good = challenge("http-01", "a.example.com", "tok-1_A");
    shared
        .apply(runtime(1, with_challenges(vec![good.clone()])))
        .unwrap();

    let cases: Vec<(model::AcmeChallenge, &str)> = vec![
        (
            challenge("dns-01", "a.example.com", "t"),
            "unknown kind 'dns-01' (expected 'http-01' or 'tls-alpn-01')",
        ),
        (
            challenge("http-01", "a.example.com", "not/base64"),
            "token is not a base64url string",
        ),
        (
            challenge("http-01", "a.example.com", "padded=="),
            "token is not a base64url string",
        ),
        (
            challenge("http-01", "a.example.com", ""),
            "token is not a base64url string",
        ),
        (
            model::AcmeChallenge {
                key_authorization: "other.thumbprint".to_owned(),
                ..challenge("http-01", "a.example.com", "tok")
            },
            "key_authorization is not '<token>.<base64url thumbprint>'",
        ),
        (
            model::AcmeChallenge {
                key_authorization: "tok.".to_owned(),
                ..challenge("http-01", "a.example.com", "tok")
            },
            "key_authorization is not '<token>.<base64url thumbprint>'",
        ),
        (
            challenge("tls-alpn-01", "*.example.com", "tok"),
            "domain '*.example.com' is a wildcard: wildcard names are validated with dns-01 only",
        ),
        (
            challenge("http-01", "bad name", "tok"),
            "invalid domain 'bad name'",
        ),
        (
            challenge("http-01", "10.0.0.1", "tok"),
            "invalid domain '10.0.0.1': must not be an IP",
        ),
    ];
    for (bad, expected) in cases {
        let id = bad.id;
        let error = shared
            .apply(runtime(2, with_challenges(vec![good.clone(), bad])))
            .unwrap_err();
        assert!(
            error.starts_with(&format!("acme_challenge {id}: {expected}")),
            "{error}"
        );
        assert!(
            !error.contains("thumb-print"),
            "no key authorization in {error}"
        );
        assert_eq!(shared.load().version(), 1, "the running snapshot stays");
    }

    // One token with two key authorizations.
    let mut twin = challenge("http-01", "b.example.com", "tok-1_A");
    twin.key_authorization = "tok-1_A.another".to_owned();
    let error = shared
        .apply(runtime(2, with_challenges(vec![good.clone(), twin])))
        .unwrap_err();
    assert!(
        error.contains("token is used by another challenge"),
        "{error}"
    );

    // On-demand rules are checked too.
    let mut config = with_challenges(Vec::new());
    config.acme_on_demand = Some(model::AcmeOnDemand {
        allow_any_domain: false,
        domains: vec!["example.*".to_owned()],
    });
    let error = shared.apply(runtime(2, config)).unwrap_err();
    assert!(
        error.starts_with("acme_on_demand: invalid domain 'example.*'"),
        "{error}"
    );

    // What was applied is ready: the part built it before the swap.
    let running = shared.load_full();
    let built = acme.built.get(&running).expect("prepared at apply time");
    assert!(
        built
            .http01("tok-1_A", "a.example.com", unix_now())
            .is_some()
    );
}

#[test]
fn http01_lookup_checks_the_host_and_the_expiry() {
    let now = unix_now();
    let mut expired = challenge("http-01", "old.example.com", "old");
    expired.expires_at = now - 1;
    let config = with_challenges(vec![
        challenge("http-01", "A.Example.com", "tok"),
        expired,
        challenge("tls-alpn-01", "t.example.com", "alpn"),
    ]);
    let built = Challenges::build(&config, None, now).unwrap();
    assert_eq!(
        built
            .http01("tok", "a.example.com", now)
            .map(|b| b.as_ref()),
        Some(&b"tok.thumb-print_1"[..])
    );
    assert!(built.http01("tok", "a.example.com.", now).is_some());
    assert!(
        built.http01("tok", "b.example.com", now).is_none(),
        "another host"
    );
    assert!(
        built.http01("tok", "a.example.com", now + 3600).is_none(),
        "expired since"
    );
    assert!(
        built.http01("old", "old.example.com", now).is_none(),
        "expired"
    );
    assert!(
        built.http01("alpn", "t.example.com", now).is_none(),
        "another kind"
    );
    assert!(built.has_tls_alpn01("T.example.com", now));
    assert!(!built.has_tls_alpn01("a.example.com", now));
}

#[test]
fn tls_alpn01_certificates_are_kept_while_the_challenge_is_unchanged() {
    let now = unix_now();
    let first = challenge("tls-alpn-01", "t.example.com", "tok");
    let one = Challenges::build(&with_challenges(vec![first.clone()]), None, now).unwrap();
    let again = Challenges::build(&with_challenges(vec![first.clone()]), Some(&one), now).unwrap();
    let config = |c: &Challenges| c.tls_alpn01.get("t.example.com").unwrap().config.clone();
    assert!(Arc::ptr_eq(&config(&one), &config(&again)));
    let renewed = challenge("tls-alpn-01", "t.example.com", "tok2");
    let other = Challenges::build(&with_challenges(vec![renewed]), Some(&again), now).unwrap();
    assert!(!Arc::ptr_eq(&config(&again), &config(&other)));
}

#[test]
fn on_demand_rules_match_exact_names_and_suffixes() {
    let rules = OnDemandRules::new(&model::AcmeOnDemand {
        allow_any_domain: false,
        domains: vec![
            "Shop.Example.com".to_owned(),
            "*.tenants.example.org".to_owned(),
        ],
    })
    .unwrap();
    for (name, allowed) in [
        ("shop.example.com", true),
        ("www.shop.example.com", false),
        ("a.tenants.example.org", true),
        ("a.b.tenants.example.org", true),
        ("tenants.example.org", false),
        (".tenants.example.org", false),
        ("example.com", false),
        ("", false),
    ] {
        assert_eq!(rules.allows(name), allowed, "{name}");
    }
    let any = OnDemandRules::new(&model::AcmeOnDemand {
        allow_any_domain: true,
        domains: Vec::new(),
    })
    .unwrap();
    assert!(any.allows("whatever.test"));
    assert!(!any.allows(&"a".repeat(254)));
}

#[test]
fn on_demand_requests_are_deduplicated_and_capped() {
    let limits = OnDemandLimits {
        reask_after: Duration::from_secs(3600),
        per_minute: 3,
    };
    let (on_demand, mut queue) = OnDemand::channel(limits);
    on_demand.want("a.test".to_owned());
    on_demand.want("a.test".to_owned());
    on_demand.want("b.test".to_owned());
    // A flood of other names: one more gets through, then the cap holds.
    for i in 0..10_000 {
        on_demand.want(format!("random-{i}.test"));
    }
    let mut sent = Vec::new();
    while let Ok(name) = queue.try_recv() {
        sent.push(name);
    }
    assert_eq!(sent, ["a.test", "b.test", "random-0.test"]);
    let mut remembered = on_demand.remembered();
    remembered.sort();
    assert_eq!(remembered, sent, "only names sent are remembered");
}

#[test]
fn a_full_queue_drops_the_request_and_forgets_the_name() {
    let limits = OnDemandLimits {
        reask_after: Duration::from_secs(3600),
        per_minute: 1000,
    };
    let (on_demand, mut queue) = OnDemand::channel(limits);
    for i in 0..on_demand::QUEUE + 5 {
        on_demand.want(format!("n{i}.test"));
    }
    let dropped = format!("n{}.test", on_demand::QUEUE);
    assert!(!on_demand.remembered().contains(&dropped));
    // Once the queue drains, the dropped name may be asked again.
    while queue.try_recv().is_ok() {}
    on_demand.want(dropped.clone());
    assert_eq!(queue.try_recv().unwrap(), dropped);
}

// --- HTTP-01 on the real proxy listener ---

/// One HTTP/1.1 request on a new connection; the whole response as text.
async fn request(addr: SocketAddr, method: &str, path: &str, host: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(response).unwrap()
}

#[tokio::test]
async fn http01_is_answered_before_routing_and_other_requests_are_routed() {
    let (shared, acme) = shared_with_acme();
    let plain: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listeners = Listeners::bind(
        &[plain],
        &[],
        &ProxySettings::default(),
        shared.clone(),
        acme,
    )
    .await
    .unwrap();
    let addr = listeners.addrs()[0].0;
    let (stop, stopped) = watch::channel(false);
    let tasks = listeners.serve(stopped);
    shared
        .apply(runtime(
            1,
            with_challenges(vec![
                challenge("http-01", "a.example.com", "tok_A-1"),
                challenge("tls-alpn-01", "t.example.com", "alpn"),
            ]),
        ))
        .unwrap();

    let path = "/.well-known/acme-challenge/tok_A-1";
    let answer = request(addr, "GET", path, "A.example.com:80").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("\r\ncontent-type: text/plain\r\n"),
        "{answer}"
    );
    assert!(lower.contains("\r\ncontent-length: 21\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\ntok_A-1.thumb-print_1"),
        "{answer}"
    );

    let head = request(addr, "HEAD", path, "a.example.com").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "no body: {head}");

    // Not ours: routed as usual (here: no route matches).
    for (method, path, host) in [
        (
            "GET",
            "/.well-known/acme-challenge/unknown",
            "a.example.com",
        ),
        ("GET", path, "b.example.com"),
        ("POST", path, "a.example.com"),
        ("GET", "/.well-known/acme-challenge/alpn", "t.example.com"),
        (
            "GET",
            "/.well-known/acme-challenge/tok_A-1/x",
            "a.example.com",
        ),
    ] {
        let routed = request(addr, method, path, host).await;
        assert!(routed.starts_with("HTTP/1.1 404 Not Found\r\n"), "{routed}");
        assert!(
            routed.contains("no Route matched with those values"),
            "{routed}"
        );
    }

    // The challenge is gone from the next snapshot: no more answer.
    shared
        .apply(runtime(2, with_challenges(Vec::new())))
        .unwrap();
    let gone = request(addr, "GET", path, "a.example.com").await;
    assert!(gone.starts_with("HTTP/1.1 404 Not Found\r\n"), "{gone}");

    stop.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn tls_alpn01_is_answered_on_the_stream_listener_whatever_the_routes() {
    use crate::tls::tests::{TLS13_ONLY, acme_identifier, validation_client};
    let (shared, acme) = shared_with_acme();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listeners = crate::stream::Listeners::bind(
        &[any],
        &ProxySettings::default(),
        shared.clone(),
        Arc::default(),
        acme,
    )
    .await
    .unwrap();
    let addr = listeners.addrs()[0];
    let (stop, stopped) = watch::channel(false);
    let tasks = listeners.serve(stopped);
    shared
        .apply(runtime(
            1,
            with_challenges(vec![challenge("tls-alpn-01", "t.example.com", "tok")]),
        ))
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(validation_client(TLS13_ONLY));
    let connect = async |name: &'static str| {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(name).unwrap();
        tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
            .await
            .unwrap()
    };

    // No stream route at all, yet the validation is answered.
    let mut stream = connect("t.example.com").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(ACME_TLS_ALPN));
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (extension, names) = acme_identifier(&leaf);
    assert!(extension.is_some_and(|(_, critical)| critical));
    assert_eq!(names, ["t.example.com"]);
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(read.unwrap(), 0, "closed after the handshake");
    // Another name: routed as usual; no route takes it, so it is closed without a handshake.
    assert!(connect("u.example.com").await.is_err());

    stop.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
}
