#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("connection", "keep-alive, X-Secret"),
        ("keep-alive", "timeout=5"),
        ("x-secret", "1"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("proxy-connection", "close"),
        ("trailer", "x"),
        ("x-kept", "yes"),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    strip_hop_by_hop(&mut headers);
    assert_eq!(headers.len(), 1, "{headers:?}");
    assert_eq!(headers["x-kept"], "yes");
}

#[test]
fn upstream_uri_is_absolute_with_query() {
    let peer = Peer {
        host: "127.0.0.1".into(),
        port: 8080,
    };
    let uri = upstream_uri(&peer, false, "/a/b", Some("x=1&y=2")).unwrap();
    assert_eq!(uri.to_string(), "http://127.0.0.1:8080/a/b?x=1&y=2");
    let tls = upstream_uri(&peer, true, "/", None).unwrap();
    assert_eq!(tls.to_string(), "https://127.0.0.1:8080/");
    let v6 = Peer {
        host: "::1".into(),
        port: 80,
    };
    assert_eq!(
        upstream_uri(&v6, false, "/", None).unwrap().to_string(),
        "http://[::1]:80/"
    );
}

#[test]
fn joined_lines() {
    let mut headers = HeaderMap::new();
    headers.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
    headers.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
    assert_eq!(
        joined(&headers, &X_FORWARDED_FOR).as_deref(),
        Some("1.1.1.1, 2.2.2.2")
    );
    assert_eq!(joined(&headers, &X_REAL_IP), None);
}

#[test]
fn caused_by_walks_the_source_chain() {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] ConnectTimedOut);
    let error = Outer(ConnectTimedOut(Duration::from_millis(5)));
    assert!(caused_by::<ConnectTimedOut>(&error));
    assert!(!caused_by::<std::io::Error>(&error));
}

#[tokio::test]
async fn drain_waits_for_open_connections() {
    let drain = Arc::new(Drain::default());
    assert_eq!(drain.wait(Duration::from_millis(1)).await, 0);
    let first = drain.open();
    let second = drain.open();
    assert_eq!(drain.open_count(), 2);
    assert_eq!(drain.wait(Duration::from_millis(20)).await, 2);
    drop(first);
    let closer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(second);
    });
    assert_eq!(drain.wait(Duration::from_secs(10)).await, 0);
    closer.await.unwrap();
}
