#![allow(clippy::unwrap_used)]

use std::sync::Arc as StdArc;

use gatehouse_shared::model::{self, ForeignKey};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const SERVICE: u128 = 0x5e;

fn runtime(routes: serde_json::Value) -> Runtime {
    let config: model::Config = serde_json::from_value(json!({
        "services": [{
            "id": Uuid::from_u128(SERVICE), "created_at": 1, "updated_at": 1,
            "protocol": "tcp", "host": "10.0.0.1", "port": 9000, "enabled": true,
        }],
        "routes": routes,
    }))
    .unwrap();
    Runtime::compile(1, "h".into(), config).unwrap()
}

fn route(id: u128, created_at: i64, fields: serde_json::Value) -> serde_json::Value {
    let mut route = json!({
        "id": Uuid::from_u128(id), "created_at": created_at, "updated_at": 1,
        "https_redirect_status_code": 426, "strip_path": true, "preserve_host": false,
        "request_buffering": true, "response_buffering": true,
        "service": ForeignKey { id: Uuid::from_u128(SERVICE) },
    });
    for (key, value) in fields.as_object().unwrap() {
        route[key] = value.clone();
    }
    route
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn found(
    router: &StreamRouter,
    tls: bool,
    sni: Option<&str>,
    peer: &str,
    local: &str,
) -> Option<(u128, Mode)> {
    router
        .find(tls, sni, addr(peer), addr(local))
        .map(|(route, mode)| (route.id.as_u128(), mode))
}

#[test]
fn routes_match_by_protocol_sni_and_addresses_in_priority_order() {
    let runtime = runtime(json!([
        route(
            1,
            1,
            json!({"protocols": ["tls_passthrough"], "snis": ["db.example.com"]})
        ),
        route(
            2,
            2,
            json!({"protocols": ["tls"], "snis": ["*.example.com"]})
        ),
        route(
            3,
            3,
            json!({"protocols": ["tcp"], "destinations": [{"port": 7000}]})
        ),
        route(
            4,
            4,
            json!({"protocols": ["tcp"], "sources": [{"ip": "10.1.0.0/16"}],
                            "destinations": [{"ip": "127.0.0.1", "port": 7000}]})
        ),
        route(
            5,
            5,
            json!({"protocols": ["tls"], "snis": ["api.*"],
                            "sources": [{"ip": "192.168.0.0/24"}]})
        ),
        route(6, 6, json!({"protocols": ["http"], "paths": ["/"]})),
    ]));
    let router = StreamRouter::new(&runtime);
    assert_eq!(
        router.routes.len(),
        5,
        "the http route is not a stream route"
    );
    let any = "10.9.9.9:5000";
    let listener = "127.0.0.1:7000";

    // Exact SNI beats the wildcard, and passes through.
    assert_eq!(
        found(&router, true, Some("db.example.com"), any, listener),
        Some((1, Mode::Passthrough))
    );
    assert_eq!(
        found(&router, true, Some("web.example.com"), any, listener),
        Some((2, Mode::Terminate))
    );
    // `*.example.com` does not take the bare domain; nothing else does either.
    assert_eq!(
        found(&router, true, Some("example.com"), any, listener),
        None
    );
    // No SNI: no SNI route.
    assert_eq!(found(&router, true, None, any, listener), None);
    // Two kinds of condition beat one.
    assert_eq!(
        found(
            &router,
            true,
            Some("api.internal"),
            "192.168.0.7:1",
            listener
        ),
        Some((5, Mode::Terminate))
    );
    assert_eq!(
        found(&router, true, Some("api.internal"), any, listener),
        None
    );
    assert_eq!(
        found(&router, false, None, "10.1.2.3:4", listener),
        Some((4, Mode::Plain))
    );
    assert_eq!(
        found(&router, false, None, any, listener),
        Some((3, Mode::Plain))
    );
    assert_eq!(found(&router, false, None, any, "127.0.0.1:7001"), None);
    // Plain bytes never reach TLS routes and TLS never reaches tcp routes.
    assert_eq!(
        found(&router, true, Some("other.test"), any, listener),
        None
    );
}

#[test]
fn routes_of_disabled_services_drop_out() {
    let config: model::Config = serde_json::from_value(json!({
        "services": [{
            "id": Uuid::from_u128(SERVICE), "created_at": 1, "updated_at": 1,
            "protocol": "tcp", "host": "10.0.0.1", "port": 9000, "enabled": false,
        }],
        "routes": [route(1, 1, json!({"protocols": ["tcp"], "destinations": [{"port": 1}]}))],
    }))
    .unwrap();
    let runtime = Runtime::compile(1, "h".into(), config).unwrap();
    assert!(StreamRouter::new(&runtime).routes.is_empty());
}

/// The first flight of a real rustls client for `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.roots = webpki_roots::TLS_SERVER_ROOTS.to_vec();
    let config = rustls::ClientConfig::builder_with_provider(StdArc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(StdArc::new(config), name).unwrap();
    let mut bytes = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut bytes).unwrap();
    }
    bytes
}

#[test]
fn client_hellos_give_their_server_name() {
    let hello = client_hello("DB.Example.com");
    assert_eq!(
        parse_hello(&hello).unwrap(),
        Some(Hello::Tls {
            sni: Some("db.example.com".into()),
            acme: false,
        })
    );
    // Cut short: not yet.
    assert_eq!(parse_hello(&hello[..hello.len() / 2]).unwrap(), None);
    // Garbage after a handshake record header: an error.
    assert!(parse_hello(&[0x16, 0x03, 0x01, 0x00, 0x04, 1, 2, 3, 4]).is_err());
}

#[tokio::test]
async fn peeking_leaves_the_bytes_in_the_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let hello = client_hello("db.example.com");
    let sent = hello.clone();
    let client = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(at).await.unwrap();
        // In two pieces, as a ClientHello split over segments would come.
        tcp.write_all(&sent[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        tcp.write_all(&sent[10..]).await.unwrap();
        tcp
    });
    let (mut tcp, _) = listener.accept().await.unwrap();
    let peeked = peek_hello(&tcp).await.unwrap();
    assert_eq!(
        peeked,
        Some(Hello::Tls {
            sni: Some("db.example.com".into()),
            acme: false,
        })
    );
    let mut read = vec![0u8; hello.len()];
    tcp.read_exact(&mut read).await.unwrap();
    assert_eq!(read, hello);
    drop(client.await.unwrap());

    // Not TLS.
    let plain = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(at).await.unwrap();
        tcp.write_all(b"PING\r\n").await.unwrap();
        tcp
    });
    let (tcp, _) = listener.accept().await.unwrap();
    assert_eq!(peek_hello(&tcp).await.unwrap(), Some(Hello::Plain));
    drop(plain.await.unwrap());
}

#[tokio::test]
async fn splice_copies_both_ways_and_ends_when_idle() {
    let (client, mut client_peer) = tokio::io::duplex(1024);
    let (upstream, mut upstream_peer) = tokio::io::duplex(1024);
    let spliced = tokio::spawn(splice(client, upstream, Duration::from_millis(200)));
    client_peer.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    upstream_peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");
    upstream_peer.write_all(b"world!").await.unwrap();
    let mut got = [0u8; 6];
    client_peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"world!");
    // Silence: the splice gives up after the idle time.
    let ended = tokio::time::timeout(Duration::from_secs(5), spliced)
        .await
        .unwrap()
        .unwrap();
    let error = ended.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
}

mod proptests;
