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
    let uri = upstream_uri(&peer, "/a/b", Some("x=1&y=2")).unwrap();
    assert_eq!(uri.to_string(), "http://127.0.0.1:8080/a/b?x=1&y=2");
    let v6 = Peer {
        host: "::1".into(),
        port: 80,
    };
    assert_eq!(
        upstream_uri(&v6, "/", None).unwrap().to_string(),
        "http://[::1]:80/"
    );
}

#[test]
fn https_redirects_and_upgrade() {
    let uri: Uri = "/p/q?x=1".parse().unwrap();
    let moved = require_https(301, Some("Example.com:8000"), &uri, "id");
    assert_eq!(moved.status(), 301);
    assert_eq!(
        moved.headers()[header::LOCATION],
        "https://example.com/p/q?x=1"
    );
    let upgrade = require_https(426, Some("example.com"), &uri, "id");
    assert_eq!(upgrade.status(), 426);
    assert_eq!(upgrade.headers()[header::UPGRADE], "TLS/1.2, HTTP/1.1");
    assert_eq!(upgrade.headers()[header::CONNECTION], "Upgrade");
}

#[test]
fn failures_map_to_kong_statuses() {
    for (failure, status) in [
        (Failure::NoRoute, 404),
        (Failure::NoService, 503),
        (Failure::BadUpstream, 502),
        (Failure::UpstreamTimeout, 504),
    ] {
        assert_eq!(failure.response("r").status(), status);
    }
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
