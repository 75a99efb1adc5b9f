//! The data plane's proxy, end to end: real PostgreSQL, `gatehouse-cp` and `gatehouse-dp`
//! processes, and upstream echo servers started by the test on `127.0.0.1:0` that answer
//! with the request they saw as JSON.

mod cluster_support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use cluster_support::*;
use gatehouse_tests::certs::{self, Algorithm};
use gatehouse_tests::{Admin, DataPlane, config_version, patience, tls_client_config};

/// Timeout of one proxied request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP/1.1 upstream answering every request with JSON describing it: `server` (its
/// name), `method`, `uri`, `headers` (lowercase names, lines joined with `, `), `body_len`,
/// `body_sha256`.
struct Echo {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start(name: &str) -> Result<Echo> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let name: Arc<str> = name.into();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| echo(name.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(Echo { addr, task })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(name: Arc<str>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path().starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if let Some(ms) = req
        .uri()
        .path()
        .rsplit_once("/sleep-ms/")
        .and_then(|(_, ms)| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(protocol) = req.headers().get("upgrade").cloned() {
        // Switch protocols, then echo every byte back.
        let mut req = req;
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        response.headers_mut().insert("upgrade", protocol);
        response.headers_mut().insert(
            "connection",
            hyper::header::HeaderValue::from_static("upgrade"),
        );
        return Ok(response);
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_owned())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let report = json!({
        "server": &*name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": hex(&Sha256::digest(&body)),
    });
    let mut response = Response::new(Full::new(Bytes::from(report.to_string())));
    if name.starts_with("failing") {
        *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
    }
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert("via", hyper::header::HeaderValue::from_static("1.1 echo"));
    Ok(response)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A port nothing listens on.
async fn closed_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?.port())
}

fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")
}

async fn post(admin: &Admin, path: &str, body: Value) -> Result<Value> {
    let created = admin.post_json(path, &body).await?;
    ensure!(created.status == 201, "POST {path} {body}: {created:?}");
    Ok(created.body)
}

/// Waits until the DP applied everything written so far.
async fn applied(admin: &Admin, dp: &DataPlane) -> Result<()> {
    let version = config_version(admin).await?;
    dp.wait_for_version(version, patience()).await?;
    Ok(())
}

/// A proxied answer: status, headers, body as JSON (or a JSON string).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn send(request: reqwest::RequestBuilder) -> Result<Answer> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Every answer the proxy writes or forwards carries a request id (a UUID).
fn request_id(answer: &Answer) -> Result<String> {
    let id = header(answer, "x-gatehouse-request-id");
    uuid::Uuid::parse_str(id).with_context(|| format!("request id {id:?}"))?;
    Ok(id.to_owned())
}

#[tokio::test]
async fn plain_http_routes_rewrites_headers_and_errors() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = cluster.dp("dp1").await?;
    let echo = Echo::start("echo").await?;
    let closed = closed_port().await?;

    let service = post(
        admin,
        "/services",
        json!({"name": "echo", "url": echo.url("/base")}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"name": "strip", "paths": ["/echo"], "strip_path": true,
               "service": {"id": service["id"]}}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"name": "keep", "hosts": ["keep.test"], "paths": ["/keep"],
               "strip_path": false, "preserve_host": true, "service": {"id": service["id"]}}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"name": "orphan", "paths": ["/orphan"]}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"name": "secure", "paths": ["/secure"], "protocols": ["https"],
               "service": {"id": service["id"]}}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"name": "moved", "paths": ["/moved"], "protocols": ["https"],
               "https_redirect_status_code": 301, "service": {"id": service["id"]}}),
    )
    .await?;
    let dead = post(
        admin,
        "/services",
        json!({"name": "dead", "url": format!("http://127.0.0.1:{closed}"), "retries": 2}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"name": "dead", "paths": ["/dead"], "service": {"id": dead["id"]}}),
    )
    .await?;
    applied(admin, &dp).await?;

    let proxy = dp.proxy_url()?;
    let http = client()?;

    // A route with strip_path: the upstream sees the service path plus the rest, the query,
    // the service's Host and the forwarded headers.
    let ok = send(
        http.get(format!("{proxy}/echo/a/b?x=1&y=2"))
            .header("x-forwarded-for", "10.1.2.3")
            .header("via", "1.0 client-proxy")
            .header("connection", "keep-alive, x-drop-me")
            .header("x-drop-me", "secret"),
    )
    .await?;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let seen = &ok.body;
    let up = &seen["headers"];
    assert_eq!(seen["uri"], json!("/base/a/b?x=1&y=2"), "{seen}");
    assert_eq!(seen["version"], json!("HTTP/1.1"), "{seen}");
    assert_eq!(up["host"], json!(echo.addr.to_string()), "{seen}");
    assert_eq!(
        up["x-forwarded-for"],
        json!("10.1.2.3, 127.0.0.1"),
        "{seen}"
    );
    assert_eq!(up["x-real-ip"], json!("127.0.0.1"), "{seen}");
    assert_eq!(up["x-forwarded-proto"], json!("http"), "{seen}");
    assert_eq!(up["x-forwarded-host"], json!("127.0.0.1"), "{seen}");
    assert_eq!(
        up["x-forwarded-port"],
        json!(dp.proxy_addr()?.port().to_string()),
        "{seen}"
    );
    assert_eq!(up["x-forwarded-path"], json!("/echo/a/b"), "{seen}");
    assert_eq!(up["x-forwarded-prefix"], json!("/echo"), "{seen}");
    let via = up["via"].as_str().unwrap_or_default();
    assert!(
        via.starts_with("1.0 client-proxy, 1.1 gatehouse/"),
        "{seen}"
    );
    assert!(up.get("x-drop-me").is_none(), "named in Connection: {seen}");
    let id = request_id(&ok)?;
    assert_eq!(up["x-gatehouse-request-id"], json!(id), "{seen}");
    assert!(
        header(&ok, "via").starts_with("1.1 echo, 1.1 gatehouse/"),
        "{:?}",
        ok.headers
    );
    for latency in ["x-gatehouse-upstream-latency", "x-gatehouse-proxy-latency"] {
        assert!(
            header(&ok, latency).parse::<u64>().is_ok(),
            "{latency}: {:?}",
            ok.headers
        );
    }

    // preserve_host and strip_path off.
    let kept = send(
        http.get(format!("{proxy}/keep/x"))
            .header("host", "keep.test:1234"),
    )
    .await?;
    assert_eq!(kept.status, 200, "{}", kept.body);
    assert_eq!(kept.body["uri"], json!("/base/keep/x"), "{}", kept.body);
    assert_eq!(
        kept.body["headers"]["host"],
        json!("keep.test:1234"),
        "{}",
        kept.body
    );
    assert!(kept.body["headers"].get("x-forwarded-prefix").is_none());

    // A POST body (chunked, so of unknown length) goes through whole.
    let chunk = vec![b'z'; 64 * 1024];
    let chunks = 40;
    let mut expected = Sha256::new();
    for _ in 0..chunks {
        expected.update(&chunk);
    }
    let (status, body) = chunked_post(dp.proxy_addr()?, "/echo/upload", &chunk, chunks).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["method"], json!("POST"), "{body}");
    assert_eq!(body["body_len"], json!(chunk.len() * chunks), "{body}");
    assert_eq!(
        body["body_sha256"],
        json!(hex(&expected.finalize())),
        "{body}"
    );
    // And one with a Content-Length.
    let sized = send(
        http.post(format!("{proxy}/echo/sized"))
            .body(vec![7u8; 300_000]),
    )
    .await?;
    assert_eq!(sized.status, 200, "{}", sized.body);
    assert_eq!(sized.body["body_len"], json!(300_000), "{}", sized.body);

    // No route: 404 with Kong's body and the request id.
    let none = send(http.get(format!("{proxy}/nothing/here"))).await?;
    assert_eq!(none.status, 404, "{}", none.body);
    let id = request_id(&none)?;
    assert_eq!(
        none.body,
        json!({"message": "no Route matched with those values", "request_id": id})
    );

    // A route without a service: 503.
    let orphan = send(http.get(format!("{proxy}/orphan"))).await?;
    assert_eq!(orphan.status, 503, "{}", orphan.body);
    assert_eq!(
        orphan.body["message"],
        json!("no Service found with those values")
    );
    request_id(&orphan)?;

    // An HTTPS-only route over HTTP: 426, or the configured redirect.
    let upgrade = send(http.get(format!("{proxy}/secure/x"))).await?;
    assert_eq!(upgrade.status, 426, "{}", upgrade.body);
    assert_eq!(upgrade.body["message"], json!("Please use HTTPS protocol"));
    assert_eq!(header(&upgrade, "upgrade"), "TLS/1.2, HTTP/1.1");
    let moved = send(
        http.get(format!("{proxy}/moved/x?q=1"))
            .header("host", "shop.test:8000"),
    )
    .await?;
    assert_eq!(moved.status, 301, "{}", moved.body);
    assert_eq!(header(&moved, "location"), "https://shop.test/moved/x?q=1");

    // Nothing listens on the service's port: 502 after the retries.
    let refused = send(http.get(format!("{proxy}/dead"))).await?;
    assert_eq!(refused.status, 502, "{}", refused.body);
    assert_eq!(
        refused.body["message"],
        json!("An invalid response was received from the upstream server")
    );
    request_id(&refused)?;
    let attempts = dp
        .log_lines("upstream request failed")
        .iter()
        .filter(|l| l.contains(&format!("127.0.0.1:{closed}")))
        .count();
    assert_eq!(attempts, 3, "1 + retries=2 attempts:\n{}", dp.logs());
    Ok(())
}

#[tokio::test]
async fn weighted_targets_share_traffic_and_retries_skip_dead_targets() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = cluster.dp("dp1").await?;
    let heavy = Echo::start("heavy").await?;
    let light = Echo::start("light").await?;
    let idle = Echo::start("idle").await?;
    let closed = closed_port().await?;

    post(admin, "/upstreams", json!({"name": "pool.internal"})).await?;
    for (echo, weight) in [(&heavy, 300), (&light, 100), (&idle, 0)] {
        post(
            admin,
            "/upstreams/pool.internal/targets",
            json!({"target": echo.addr.to_string(), "weight": weight}),
        )
        .await?;
    }
    let pool = post(
        admin,
        "/services",
        json!({"name": "pool", "host": "pool.internal", "port": 80, "protocol": "http"}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"paths": ["/pool"], "service": {"id": pool["id"]}}),
    )
    .await?;

    // Half of these targets refuse connections: GETs are retried on the next target.
    post(admin, "/upstreams", json!({"name": "flaky.internal"})).await?;
    for target in [heavy.addr.to_string(), format!("127.0.0.1:{closed}")] {
        post(
            admin,
            "/upstreams/flaky.internal/targets",
            json!({"target": target, "weight": 100}),
        )
        .await?;
    }
    let flaky = post(
        admin,
        "/services",
        json!({"name": "flaky", "host": "flaky.internal", "port": 80, "retries": 1}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"paths": ["/flaky"], "service": {"id": flaky["id"]}}),
    )
    .await?;
    applied(admin, &dp).await?;

    let proxy = dp.proxy_url()?;
    let http = client()?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..40 {
        let answer = send(http.get(format!("{proxy}/pool/x"))).await?;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let server = answer.body["server"].as_str().unwrap_or("?").to_owned();
        // As Kong: the target's host and port, not the upstream's name.
        let target = if server == "heavy" { &heavy } else { &light };
        assert_eq!(
            answer.body["headers"]["host"],
            json!(target.addr.to_string()),
            "{}",
            answer.body
        );
        *counts.entry(server).or_default() += 1;
    }
    assert_eq!(counts.get("heavy"), Some(&30), "{counts:?}");
    assert_eq!(counts.get("light"), Some(&10), "{counts:?}");
    assert_eq!(
        counts.get("idle"),
        None,
        "weight 0 gets nothing: {counts:?}"
    );

    for _ in 0..6 {
        let answer = send(http.get(format!("{proxy}/flaky"))).await?;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["server"], json!("heavy"));
    }
    Ok(())
}

#[tokio::test]
async fn https_listener_serves_the_sni_certificate_and_routes_by_sni() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = cluster.dp("dp1").await?;
    let echo = Echo::start("echo").await?;

    let pem = certs::self_signed(&["secure.test"], Algorithm::Ecdsa, 30)?;
    post(
        admin,
        "/certificates",
        json!({"cert": pem.cert, "key": pem.key, "snis": ["secure.test"]}),
    )
    .await?;
    let uploaded = CertificateDer::from_pem_slice(pem.cert.as_bytes())?;
    let service = post(
        admin,
        "/services",
        json!({"name": "echo", "url": echo.url("/")}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"paths": ["/tls"], "protocols": ["https"], "snis": ["secure.test"],
               "service": {"id": service["id"]}}),
    )
    .await?;
    applied(admin, &dp).await?;
    let addr = dp.proxy_ssl_addr()?;

    let (leaf, status, body) = https_get(addr, Some("secure.test"), "/tls/x?a=b").await?;
    assert_eq!(leaf, uploaded, "the certificate of the SNI is served");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uri"], json!("/x?a=b"), "{body}");
    assert_eq!(
        body["headers"]["x-forwarded-proto"],
        json!("https"),
        "{body}"
    );
    assert_eq!(
        body["headers"]["x-forwarded-port"],
        json!(addr.port().to_string()),
        "{body}"
    );

    // Another name: the default (self-signed) certificate, and the route's snis do not match.
    let (leaf, status, body) = https_get(addr, Some("other.test"), "/tls/x").await?;
    assert_ne!(leaf, uploaded);
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["message"], json!("no Route matched with those values"));

    // The same route over plain HTTP: it wants HTTPS.
    let plain = send(client()?.get(format!("{}/tls/x", dp.proxy_url()?))).await?;
    assert_eq!(plain.status, 426, "{}", plain.body);
    Ok(())
}

/// `GET path` over TLS with SNI `server_name` (any certificate accepted), HTTP/1.1,
/// `Connection: close`; returns the served leaf, the status and the body as JSON.
async fn https_get(
    addr: SocketAddr,
    server_name: Option<&str>,
    path: &str,
) -> Result<(CertificateDer<'static>, u16, Value)> {
    let mut config = (*tls_client_config(None, None)?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if server_name.is_none() {
        config.enable_sni = false;
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name =
        rustls_pki_types::ServerName::try_from(server_name.unwrap_or("localhost"))?.to_owned();
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = tokio::time::timeout(REQUEST_TIMEOUT, connector.connect(name, tcp))
        .await
        .context("TLS handshake timed out")??;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no server certificate")?
        .clone()
        .into_owned();
    let host = server_name.unwrap_or("localhost");
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let (status, body) = read_response(&mut tls).await?;
    Ok((leaf, status, body))
}

/// `POST path` with `count` chunks of `chunk` in chunked encoding, over a raw connection.
async fn chunked_post(
    addr: SocketAddr,
    path: &str,
    chunk: &[u8],
    count: usize,
) -> Result<(u16, Value)> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
             Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    for _ in 0..count {
        tcp.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await?;
        tcp.write_all(chunk).await?;
        tcp.write_all(b"\r\n").await?;
    }
    tcp.write_all(b"0\r\n\r\n").await?;
    read_response(&mut tcp).await
}

/// Reads an HTTP/1.1 response until the server closes; returns the status and the body as
/// JSON (chunked bodies decoded).
async fn read_response(stream: &mut (impl AsyncReadExt + Unpin)) -> Result<(u16, Value)> {
    let mut raw = Vec::new();
    tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .context("reading the response timed out")??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no response head: {text:?}");
    };
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line: {head}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16)?;
            if size == 0 {
                break;
            }
            out.push_str(after.get(..size).context("short chunk")?);
            rest = after.get(size + 2..).unwrap_or("");
        }
        out
    } else {
        body.to_owned()
    };
    Ok((
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    ))
}

#[tokio::test]
async fn http2_clients_reach_http1_upstreams_and_slow_upstreams_time_out() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = cluster.dp("dp1").await?;
    let echo = Echo::start("echo").await?;

    let service = post(
        admin,
        "/services",
        json!({"name": "echo", "url": echo.url("/")}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"paths": ["/h2"], "service": {"id": service["id"]}}),
    )
    .await?;
    let slow = post(
        admin,
        "/services",
        json!({"name": "slow", "url": echo.url("/slow"), "connect_timeout": 200,
               "read_timeout": 300}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"paths": ["/slow"], "service": {"id": slow["id"]}}),
    )
    .await?;
    applied(admin, &dp).await?;

    // h2c with prior knowledge: the request goes upstream as HTTP/1.1 with a Host.
    let tcp = TcpStream::connect(dp.proxy_addr()?).await?;
    let (status, body) = h2_get(tcp, "http://h2.test/h2/plain").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], json!("HTTP/1.1"), "{body}");
    assert_eq!(
        body["uri"],
        json!("/plain"),
        "strip_path is on by default: {body}"
    );
    assert_eq!(
        body["headers"]["x-forwarded-host"],
        json!("h2.test"),
        "{body}"
    );
    assert!(
        body["headers"]["via"]
            .as_str()
            .is_some_and(|v| v.starts_with("2 gatehouse/")),
        "{body}"
    );

    // h2 over TLS (ALPN).
    let mut config = (*tls_client_config(None, None)?).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(dp.proxy_ssl_addr()?).await?;
    let tls = connector
        .connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, body) = h2_get(tls, "https://localhost/h2/tls").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], json!("HTTP/1.1"), "{body}");
    assert_eq!(
        body["headers"]["x-forwarded-proto"],
        json!("https"),
        "{body}"
    );

    // The upstream answers after 5 s; the service allows 200 + 300 ms.
    let started = tokio::time::Instant::now();
    let timed_out = send(client()?.get(format!("{}/slow", dp.proxy_url()?))).await?;
    assert_eq!(timed_out.status, 504, "{}", timed_out.body);
    assert_eq!(
        timed_out.body["message"],
        json!("The upstream server is timing out")
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

/// One HTTP/2 `GET uri` on `io` (h2c prior knowledge, or TLS after ALPN `h2`).
async fn h2_get<IO>(io: IO, uri: &str) -> Result<(u16, Value)>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let request = Request::get(uri).body(http_body_util::Empty::<Bytes>::new())?;
    let response = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(request))
        .await
        .context("HTTP/2 request timed out")??;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

#[tokio::test]
async fn upgrade_requests_are_tunnelled_to_the_upstream() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = cluster.dp("dp1").await?;
    let echo = Echo::start("echo").await?;
    let service = post(
        admin,
        "/services",
        json!({"name": "echo", "url": echo.url("/")}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"paths": ["/ws"], "service": {"id": service["id"]}}),
    )
    .await?;
    applied(admin, &dp).await?;

    let mut tcp = TcpStream::connect(dp.proxy_addr()?).await?;
    tcp.write_all(
        b"GET /ws/chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\n\
          Upgrade: echo-proto\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(REQUEST_TIMEOUT, tcp.read(&mut byte)).await??;
        ensure!(
            read == 1,
            "closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo-proto"), "{head}");
    assert!(head.contains("x-gatehouse-request-id: "), "{head}");

    for message in [&b"ping"[..], b"a longer message through the tunnel"] {
        tcp.write_all(message).await?;
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(REQUEST_TIMEOUT, tcp.read_exact(&mut back)).await??;
        assert_eq!(back, message);
    }
    Ok(())
}

#[tokio::test]
async fn malformed_requests_get_an_error_and_the_proxy_keeps_serving() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let dp = cluster.dp("dp1").await?;
    dp.wait_until_ready(patience()).await?;
    let addr = dp.proxy_addr()?;

    // Not HTTP at all.
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"\x16\x03\x01 certainly not http\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(REQUEST_TIMEOUT, tcp.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );

    // A header far beyond the limit (--client-max-header-size): refused with a body
    // (tests/proxy_abuse.rs has the other limits).
    let mut tcp = TcpStream::connect(addr).await?;
    let big = "a".repeat(1024 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, tcp.read_to_end(&mut raw)).await?;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains(r#""message":"Request header or cookie too large""#),
        "{text}"
    );

    // Plain HTTP on the TLS port: the handshake fails, nothing else.
    let mut tcp = TcpStream::connect(dp.proxy_ssl_addr()?).await?;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, tcp.read_to_end(&mut raw)).await?;

    // Still serving, on both listeners.
    let answer = send(client()?.get(format!("{}/", dp.proxy_url()?))).await?;
    assert_eq!(answer.status, 404, "{}", answer.body);
    let (_, status, body) = https_get(dp.proxy_ssl_addr()?, None, "/").await?;
    assert_eq!(status, 404, "{body}");
    let mut dp = dp;
    assert!(dp.is_running(), "{}", dp.logs());
    Ok(())
}

#[tokio::test]
async fn trusted_clients_forwarded_headers_pass_through() -> Result<()> {
    let cluster = Cluster::start(&["trusting", "wary"], &[]).await?;
    let admin = cluster.admin();
    let trusting = DataPlane::start(
        cluster
            .dp_options("trusting")
            .arg("--trusted-ips")
            .arg("127.0.0.1"),
    )
    .await?;
    let wary = cluster.dp("wary").await?;
    let echo = Echo::start("echo").await?;

    let service = post(
        admin,
        "/services",
        json!({"name": "echo", "url": echo.url("/base")}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"name": "strip", "paths": ["/echo"], "strip_path": true,
               "service": {"id": service["id"]}}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"name": "secure", "paths": ["/secure"], "protocols": ["https"],
               "service": {"id": service["id"]}}),
    )
    .await?;
    applied(admin, &trusting).await?;
    applied(admin, &wary).await?;

    let http = client()?;
    let forwarded = [
        ("x-forwarded-for", "10.1.2.3"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "front.example"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-path", "/outer/echo/a"),
        ("x-forwarded-prefix", "/outer"),
    ];
    let get = |url: String| {
        forwarded
            .iter()
            .fold(http.get(url), |request, (name, value)| {
                request.header(*name, *value)
            })
    };

    // Trusted peer: the client's values reach the upstream; X-Forwarded-For is appended to.
    let ok = send(get(format!("{}/echo/a", trusting.proxy_url()?))).await?;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let up = &ok.body["headers"];
    for (name, value) in forwarded.iter().skip(1) {
        assert_eq!(up[*name], json!(value), "{name}: {}", ok.body);
    }
    assert_eq!(
        up["x-forwarded-for"],
        json!("10.1.2.3, 127.0.0.1"),
        "{}",
        ok.body
    );
    // What it did not send is still ours.
    let ours = send(http.get(format!("{}/echo/a", trusting.proxy_url()?))).await?;
    assert_eq!(ours.status, 200, "{}", ours.body);
    assert_eq!(ours.body["headers"]["x-forwarded-proto"], json!("http"));
    assert_eq!(ours.body["headers"]["x-forwarded-path"], json!("/echo/a"));
    assert_eq!(ours.body["headers"]["x-forwarded-prefix"], json!("/echo"));
    // A trusted `X-Forwarded-Proto: https` satisfies an https-only route.
    let secure = send(get(format!("{}/secure", trusting.proxy_url()?))).await?;
    assert_eq!(secure.status, 200, "{}", secure.body);

    // Untrusted peer: our values replace the client's; X-Forwarded-For is still appended to.
    let ok = send(get(format!("{}/echo/a", wary.proxy_url()?))).await?;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let up = &ok.body["headers"];
    assert_eq!(up["x-forwarded-proto"], json!("http"), "{}", ok.body);
    assert_eq!(up["x-forwarded-host"], json!("127.0.0.1"), "{}", ok.body);
    assert_eq!(
        up["x-forwarded-port"],
        json!(wary.proxy_addr()?.port().to_string()),
        "{}",
        ok.body
    );
    assert_eq!(up["x-forwarded-path"], json!("/echo/a"), "{}", ok.body);
    assert_eq!(up["x-forwarded-prefix"], json!("/echo"), "{}", ok.body);
    assert_eq!(
        up["x-forwarded-for"],
        json!("10.1.2.3, 127.0.0.1"),
        "{}",
        ok.body
    );
    let secure = send(get(format!("{}/secure", wary.proxy_url()?))).await?;
    assert_eq!(secure.status, 426, "{}", secure.body);
    Ok(())
}

/// An upstream that accepts connections and reads what comes, but answers only after
/// `answer_after` (never with `None`), writing `head` then stalling.
async fn stalling_upstream(
    head: &'static [u8],
    answer_after: Option<Duration>,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let Some(after) = answer_after else {
                    // Never answer, never read again: the socket buffers fill up.
                    std::future::pending::<()>().await;
                    return;
                };
                tokio::time::sleep(after).await;
                let _ = tcp.write_all(head).await;
                std::future::pending::<()>().await;
            });
        }
    });
    Ok((addr, task))
}

/// Reads an HTTP/1.1 response head from `tcp`; `None` when the peer closed first.
async fn read_head(tcp: &mut TcpStream) -> Result<Option<String>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(REQUEST_TIMEOUT, tcp.read(&mut byte)).await?? {
            0 => return Ok(None),
            _ => head.push(byte[0]),
        }
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

#[tokio::test]
async fn upstream_timeouts_answer_504_and_cut_stalled_bodies() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = cluster.dp("dp1").await?;

    // Never answers: read_timeout to the response headers.
    let (silent, _silent_task) = stalling_upstream(b"", None).await?;
    // Answers headers and 5 of 100 body bytes, then stalls: read_timeout between reads.
    let (stalls, _stalls_task) = stalling_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello",
        Some(Duration::ZERO),
    )
    .await?;
    // A listener that never accepts, with the smallest backlog: once its queue is full,
    // connects hang (the kernel drops the SYNs).
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let full = socket.listen(0)?;
    let full_addr = full.local_addr()?;
    let mut hung = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(tcp)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(full_addr)).await
        {
            hung.push(tcp);
        }
    }

    for (name, addr, extra) in [
        ("silent", silent, json!({"read_timeout": 400})),
        ("stalls", stalls, json!({"read_timeout": 400})),
        (
            "hangs",
            full_addr,
            json!({"connect_timeout": 300, "retries": 1}),
        ),
    ] {
        let mut body = json!({"name": name, "url": format!("http://{addr}/"), "retries": 0});
        for (k, v) in extra.as_object().context("extra")? {
            body[k] = v.clone();
        }
        let service = post(admin, "/services", body).await?;
        post(
            admin,
            "/routes",
            json!({"paths": [format!("/{name}")], "service": {"id": service["id"]}}),
        )
        .await?;
    }
    applied(admin, &dp).await?;
    let http = client()?;

    let started = std::time::Instant::now();
    let silent_answer = send(http.get(format!("{}/silent", dp.proxy_url()?))).await?;
    let waited = started.elapsed();
    assert_eq!(silent_answer.status, 504, "{}", silent_answer.body);
    assert_eq!(
        silent_answer.body["message"],
        "The upstream server is timing out"
    );
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let line = dp.wait_for_log("upstream timed out", patience()).await?;
    assert!(line.contains("timeout=\"read\""), "{line}");

    // Headers arrive; the body stops after 5 bytes and the DP cuts it after read_timeout.
    let response = http
        .get(format!("{}/stalls", dp.proxy_url()?))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let started = std::time::Instant::now();
    let body = response.bytes().await;
    assert!(body.is_err(), "a cut body must not look complete: {body:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    dp.wait_for_log("upstream stopped sending the response body", patience())
        .await?;

    // Connect timeout, retried once on the same (only) target: 504, not 502.
    let started = std::time::Instant::now();
    let hangs = send(http.get(format!("{}/hangs", dp.proxy_url()?))).await?;
    assert_eq!(hangs.status, 504, "{}", hangs.body);
    assert!(started.elapsed() < Duration::from_secs(10));
    let failed = dp.log_lines("upstream request failed");
    assert!(
        failed
            .iter()
            .any(|l| l.contains("connect timed out after 300ms")),
        "{failed:?}"
    );
    drop((hung, full));
    Ok(())
}

#[tokio::test]
async fn upstream_that_stops_reading_the_body_hits_the_write_timeout() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = cluster.dp("dp1").await?;
    let (deaf, _task) = stalling_upstream(b"", None).await?;
    let service = post(
        admin,
        "/services",
        json!({"name": "deaf", "url": format!("http://{deaf}/"), "write_timeout": 500,
               "read_timeout": 60000, "retries": 0}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"paths": ["/upload"], "service": {"id": service["id"]}}),
    )
    .await?;
    applied(admin, &dp).await?;

    // 256 MiB announced; socket buffers hold a few MiB at most, then writes stall.
    let mut tcp = TcpStream::connect(dp.proxy_addr()?).await?;
    let total: u64 = 256 * 1024 * 1024;
    tcp.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    )
    .await?;
    let (mut read, mut write) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0u64;
        while sent < total {
            if write.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(REQUEST_TIMEOUT, read.read(&mut byte)).await??;
        ensure!(n == 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    writer.abort();
    let line = dp.wait_for_log("upstream timed out", patience()).await?;
    assert!(line.contains("timeout=\"write\""), "{line}");
    Ok(())
}

#[tokio::test]
async fn slow_and_broken_clients_get_408_400_or_a_close() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = DataPlane::start(
        cluster
            .dp_options("dp1")
            .arg("--client-header-timeout")
            .arg("500ms")
            .arg("--client-body-timeout")
            .arg("500ms"),
    )
    .await?;
    let echo = Echo::start("echo").await?;
    let service = post(
        admin,
        "/services",
        json!({"name": "echo", "url": echo.url("/")}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"paths": ["/echo"], "service": {"id": service["id"]}}),
    )
    .await?;
    applied(admin, &dp).await?;
    let addr = dp.proxy_addr()?;

    // Half a request line, then nothing: closed after the header timeout.
    let started = std::time::Instant::now();
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").await?;
    let mut rest = Vec::new();
    tokio::time::timeout(REQUEST_TIMEOUT, tcp.read_to_end(&mut rest)).await??;
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // A TLS connection that never says hello: closed after the header timeout too.
    let mut tls = TcpStream::connect(dp.proxy_ssl_addr()?).await?;
    let mut rest = Vec::new();
    tokio::time::timeout(REQUEST_TIMEOUT, tls.read_to_end(&mut rest)).await??;
    assert!(rest.is_empty());

    // Ten of a hundred body bytes, then nothing: 408 after the body timeout.
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await?;
    let head = read_head(&mut tcp)
        .await?
        .context("no answer to a stalled body")?;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    dp.wait_for_log("client body timeout", patience()).await?;

    // Broken chunked encoding: 400.
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await?;
    let head = read_head(&mut tcp)
        .await?
        .context("no answer to a broken chunk")?;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    // Still serving.
    let answer = send(client()?.get(format!("{}/echo", dp.proxy_url()?))).await?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    Ok(())
}

#[tokio::test]
async fn generated_errors_follow_accept_and_carry_gatehouse_headers() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = cluster.dp("dp1").await?;
    let echo = Echo::start("echo").await?;
    let service = post(
        admin,
        "/services",
        json!({"name": "echo", "url": echo.url("/")}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"paths": ["/echo"], "service": {"id": service["id"]}}),
    )
    .await?;
    applied(admin, &dp).await?;
    let http = client()?;
    let url = format!("{}/nowhere", dp.proxy_url()?);

    for (accept, content_type, needle) in [
        (
            "",
            "application/json",
            "\"message\":\"no Route matched with those values\"",
        ),
        (
            "text/html",
            "text/html",
            "<p>no Route matched with those values.</p>",
        ),
        (
            "application/xml",
            "application/xml",
            "<message>no Route matched with those values</message>",
        ),
        (
            "image/png, text/plain",
            "text/plain",
            "no Route matched with those values\nrequest_id: ",
        ),
    ] {
        let mut request = http.get(&url);
        if !accept.is_empty() {
            request = request.header("accept", accept);
        }
        let answer = send(request).await?;
        assert_eq!(answer.status, 404);
        assert!(
            header(&answer, "content-type").starts_with(content_type),
            "{accept}"
        );
        let body = match &answer.body {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        assert!(body.contains(needle), "{accept}: {body}");
        let id = request_id(&answer)?;
        assert!(
            body.contains(&id),
            "{accept}: the body names the request id"
        );
        assert!(header(&answer, "server").starts_with("gatehouse/"));
        let latency: u64 = header(&answer, "x-gatehouse-response-latency").parse()?;
        assert!(latency < 10_000);
        assert!(header(&answer, "x-gatehouse-upstream-latency").is_empty());
    }

    // A gRPC client (HTTP/2) gets a gRPC answer with Kong's HTTP status; over HTTP/1 the
    // same request is not gRPC and gets the Accept format.
    let tcp = TcpStream::connect(dp.proxy_addr()?).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let request = Request::post("http://grpc.test/nowhere.Svc/Call")
        .header("content-type", "application/grpc")
        .header("accept", "text/html")
        .body(http_body_util::Empty::<Bytes>::new())?;
    let grpc = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(request)).await??;
    assert_eq!(grpc.status(), 404);
    assert_eq!(grpc.headers()["grpc-status"], "12");
    assert_eq!(
        grpc.headers()["grpc-message"],
        "no Route matched with those values"
    );
    let over_http1 = send(
        http.post(&url)
            .header("content-type", "application/grpc")
            .header("accept", "text/html"),
    )
    .await?;
    assert_eq!(over_http1.status, 404);
    assert!(header(&over_http1, "content-type").starts_with("text/html"));

    // Proxied: the upstream sent no Server, so ours is added; no response latency.
    let proxied = send(http.get(format!("{}/echo", dp.proxy_url()?))).await?;
    assert_eq!(proxied.status, 200);
    assert!(header(&proxied, "server").starts_with("gatehouse/"));
    assert!(header(&proxied, "x-gatehouse-response-latency").is_empty());
    assert!(!header(&proxied, "x-gatehouse-upstream-latency").is_empty());
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_requests_in_flight() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let mut dp = cluster.dp("dp1").await?;

    // An upstream that says when a request arrived and answers it 1.5 s later.
    let arrived = Arc::new(tokio::sync::Notify::new());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    let signal = arrived.clone();
    let _upstream = AbortOnDrop(tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let signal = signal.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    let signal = signal.clone();
                    async move {
                        signal.notify_one();
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    }));
    let service = post(
        admin,
        "/services",
        json!({"name": "slow", "url": format!("http://{upstream}/")}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"paths": ["/slow"], "service": {"id": service["id"]}}),
    )
    .await?;
    applied(admin, &dp).await?;

    let url = format!("{}/slow", dp.proxy_url()?);
    let in_flight = tokio::spawn(send(client()?.get(url)));
    tokio::time::timeout(REQUEST_TIMEOUT, arrived.notified()).await?;
    let started = std::time::Instant::now();
    let exit = dp.stop().await?;
    let answer = in_flight.await??;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, json!("done"));
    assert!(exit.success(), "{exit:?}: {}", dp.logs());
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the DP waited for the request"
    );
    // The process has exited; its last lines may still be on their way through the pipe.
    dp.wait_for_log("draining proxy connections", patience())
        .await?;
    dp.wait_for_log("proxy connections drained", patience())
        .await?;
    Ok(())
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test]
async fn consistent_hashing_sticks_and_passive_health_checks_eject_targets() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = cluster.dp("dp1").await?;
    let echoes = [
        Echo::start("h1").await?,
        Echo::start("h2").await?,
        Echo::start("h3").await?,
    ];
    post(
        admin,
        "/upstreams",
        json!({"name": "hashed.internal", "algorithm": "consistent-hashing",
               "hash_on": "header", "hash_on_header": "x-user",
               "hash_fallback": "cookie", "hash_on_cookie": "gh-sticky"}),
    )
    .await?;
    for echo in &echoes {
        post(
            admin,
            "/upstreams/hashed.internal/targets",
            json!({"target": echo.addr.to_string()}),
        )
        .await?;
    }
    let good = Echo::start("good").await?;
    let failing = Echo::start("failing").await?;
    let dead = closed_port().await?;
    post(
        admin,
        "/upstreams",
        json!({"name": "guarded.internal", "healthchecks": {"passive": {"unhealthy": {
            "http_failures": 2, "http_statuses": [500], "tcp_failures": 1}}}}),
    )
    .await?;
    for target in [
        good.addr.to_string(),
        failing.addr.to_string(),
        format!("127.0.0.1:{dead}"),
    ] {
        post(
            admin,
            "/upstreams/guarded.internal/targets",
            json!({"target": target}),
        )
        .await?;
    }
    for (name, host) in [
        ("hashed", "hashed.internal"),
        ("guarded", "guarded.internal"),
    ] {
        let service = post(
            admin,
            "/services",
            json!({"name": name, "host": host, "retries": 0}),
        )
        .await?;
        post(
            admin,
            "/routes",
            json!({"paths": [format!("/{name}")], "service": {"id": service["id"]}}),
        )
        .await?;
    }
    applied(admin, &dp).await?;
    let http = client()?;
    let url = format!("{}/hashed", dp.proxy_url()?);

    // The same user always reaches the same target; users spread over the targets.
    let mut servers_seen = std::collections::BTreeSet::new();
    for user in 0..30 {
        let mut first = None;
        for _ in 0..3 {
            let answer = send(http.get(&url).header("x-user", format!("user-{user}"))).await?;
            assert_eq!(answer.status, 200, "{}", answer.body);
            let server = answer.body["server"].as_str().unwrap_or("").to_owned();
            match &first {
                None => first = Some(server.clone()),
                Some(first) => assert_eq!(first, &server, "user-{user} moved"),
            }
            servers_seen.insert(server);
        }
    }
    assert!(servers_seen.len() >= 2, "{servers_seen:?}");

    // No header: the cookie fallback; a generated cookie comes back and keeps us on a target.
    let answer = send(http.get(&url)).await?;
    let cookie = header(&answer, "set-cookie").to_owned();
    assert!(cookie.starts_with("gh-sticky="), "{cookie}");
    assert!(cookie.contains("Path=/"), "{cookie}");
    let value = cookie.split(';').next().unwrap_or("").to_owned();
    let first = answer.body["server"].clone();
    for _ in 0..5 {
        let again = send(http.get(&url).header("cookie", &value)).await?;
        assert_eq!(again.body["server"], first);
        assert!(header(&again, "set-cookie").is_empty());
    }

    // Passive checks: the dead target fails once, the failing one twice, then only the
    // good one is used.
    let url = format!("{}/guarded", dp.proxy_url()?);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(send(http.get(&url)).await?.status);
    }
    let tail = &statuses[6..];
    assert!(tail.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(statuses.contains(&500), "{statuses:?}");
    assert!(statuses.contains(&502), "{statuses:?}");
    let marked = dp.log_lines("target marked unhealthy");
    assert_eq!(marked.len(), 2, "{marked:?}");
    assert!(marked.iter().any(|l| l.contains(&failing.addr.to_string())));
    assert!(
        marked
            .iter()
            .any(|l| l.contains(&format!("127.0.0.1:{dead}")))
    );
    Ok(())
}
