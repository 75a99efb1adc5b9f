//! Client abuse against one data plane (issue 10 §2 item 7), on loopback: real PostgreSQL,
//! `gatehouse-cp` and `gatehouse-dp` processes, a counting upstream started by the test, and
//! raw TCP / TLS / HTTP/2 frame clients. While a well-behaved client keeps requesting, each
//! abuse runs in turn: slowloris connections, idle keep-alive connections, oversized request
//! lines and headers (plain, TLS, HTTP/2), garbage instead of a ClientHello, request
//! smuggling (CL+TE, two Content-Lengths, obs-fold, TE not final chunked), HTTP/2 rapid reset
//! and a CONTINUATION flood. Asserted: each gets its refusal, the upstream never sees an
//! abusive request, the well-behaved client gets only 200s, and the DP stays up with its
//! peak RSS under a generous cap. Latencies are printed, never asserted.
//!
//! Sizes: `GATEHOUSE_ABUSE_SLOWLORIS` (default 200) and `GATEHOUSE_ABUSE_IDLE` (default 300)
//! connections, `GATEHOUSE_ABUSE_PHASE_SECS` (default 0: each one-shot abuse once; more: again
//! and again for that long, so that the well-behaved client's latency has samples) and
//! `GATEHOUSE_ABUSE_HEADER_TIMEOUT` (default 2s). `tests/soak/abuse.sh` runs the full-size
//! version (1,000 slowloris and 10,000 idle connections).

mod cluster_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use cluster_support::*;
use gatehouse_tests::{Admin, DataPlane, Memory, config_version, patience, tls_client_config};

/// The DP's `--client-header-timeout` here: slowloris and idle connections end after it.
/// `GATEHOUSE_ABUSE_HEADER_TIMEOUT` overrides it (the full-size run needs longer to open its
/// idle connections).
const HEADER_TIMEOUT: &str = "2s";
/// Generous cap on the DP's peak RSS through the whole run.
const RSS_CAP: u64 = 512 * 1024 * 1024;

/// An upstream that answers 200 `ok` and records the requests whose path contains
/// `abuse` (which no abusive client may get through).
struct Upstream {
    addr: std::net::SocketAddr,
    abusive: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let abusive = Arc::new(Mutex::new(Vec::new()));
        let seen = abusive.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            if path.contains("abuse")
                                && let Ok(mut seen) = seen.lock()
                            {
                                seen.push(path);
                            }
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(Upstream {
            addr,
            abusive,
            task,
        })
    }

    fn abusive(&self) -> Vec<String> {
        self.abusive.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The well-behaved client: sequential keep-alive GETs, every answer recorded.
struct Good {
    samples: Arc<Mutex<Vec<(Instant, Duration, u16)>>>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Good {
    fn start(url: String) -> Result<Good> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, e, halt) = (samples.clone(), errors.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !halt.load(Ordering::Relaxed) {
                let started = Instant::now();
                match http.get(&url).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.bytes().await;
                        if let Ok(mut s) = s.lock() {
                            s.push((started, started.elapsed(), status));
                        }
                    }
                    Err(error) => {
                        if let Ok(mut e) = e.lock() {
                            e.push(error.to_string());
                        }
                    }
                }
                // About 100 requests a second: a steady load, not a flood of its own.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Ok(Good {
            samples,
            errors,
            stop,
            task,
        })
    }

    /// Answers to requests sent from `from` until `to`: count, non-200 statuses, p50 and
    /// p99 latency.
    fn window(&self, from: Instant, to: Instant) -> (usize, Vec<u16>, Duration, Duration) {
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let mut latencies: Vec<Duration> = Vec::new();
        let mut bad = Vec::new();
        for (_, latency, status) in samples.into_iter().filter(|s| s.0 >= from && s.0 < to) {
            latencies.push(latency);
            if status != 200 {
                bad.push(status);
            }
        }
        latencies.sort();
        let pick = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        (latencies.len(), bad, pick(0.5), pick(0.99))
    }
}

/// A raw answer read from a connection until the server closed it or `Content-Length`
/// bytes of body came.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

/// Reads one HTTP/1.1 response from `stream`.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Result<Raw> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + patience();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("status line of {head:?}"))?;
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                return Ok(Raw { status, head, body });
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .context("no response in time")??;
        if n == 0 {
            bail!(
                "closed before a complete response: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether the server closes `stream` (EOF or reset) before the deadline, discarding what
/// it sends.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> bool {
    let deadline = tokio::time::Instant::now() + patience();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Sends `bytes` on a new plain connection and reads the answer.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Result<Raw> {
    let mut tcp = TcpStream::connect(addr).await?;
    // The server may answer and close before it read everything.
    let _ = tcp.write_all(bytes).await;
    read_response(&mut tcp).await.with_context(|| {
        format!(
            "answer to {:?}",
            String::from_utf8_lossy(&bytes[..60.min(bytes.len())])
        )
    })
}

/// Asserts a refusal: its status, its Kong-shaped JSON message, `Connection: close`.
fn assert_refused(raw: &Raw, status: u16, message: &str, case: &str) -> Result<()> {
    ensure!(raw.status == status, "{case}: {raw:?}");
    let body: Value =
        serde_json::from_str(&raw.body).with_context(|| format!("{case}: {raw:?}"))?;
    ensure!(body["message"] == json!(message), "{case}: {raw:?}");
    ensure!(body["request_id"].is_string(), "{case}: {raw:?}");
    ensure!(
        raw.head.to_ascii_lowercase().contains("connection: close"),
        "{case}: {raw:?}"
    );
    Ok(())
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn post(admin: &Admin, path: &str, body: Value) -> Result<Value> {
    let created = admin.post_json(path, &body).await?;
    ensure!(created.status == 201, "POST {path} {body}: {created:?}");
    Ok(created.body)
}

// === raw HTTP/2 frames ===

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK header block: `GET` `http` `path` on `localhost` (literals, no Huffman).
fn request_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.push(0x04); // :path, literal without indexing, indexed name
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block.push(0x01); // :authority
    block.push(9);
    block.extend_from_slice(b"localhost");
    block
}

/// Reads frames until `GOAWAY` (its error code) or the end of the connection (`None`).
async fn goaway(tcp: &mut TcpStream) -> Result<Option<u32>> {
    let deadline = tokio::time::Instant::now() + patience();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == 7 && len >= 8 {
                let code = u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]);
                return Ok(Some(code));
            }
            buf.drain(..9 + len);
        }
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => bail!("neither GOAWAY nor close in time"),
        }
    }
}

/// Sends one more byte of a header line every 300 ms (the head stays under every size limit);
/// true when the server closes the connection without answering (before the deadline).
async fn trickle(tcp: TcpStream) -> bool {
    let (mut read, mut write) = tcp.into_split();
    let deadline = tokio::time::Instant::now() + patience();
    let mut byte = [0u8; 1];
    loop {
        tokio::select! {
            got = read.read(&mut byte) => return matches!(got, Ok(0) | Err(_)),
            () = tokio::time::sleep(Duration::from_millis(300)) => {
                if tokio::time::Instant::now() > deadline {
                    return false;
                }
                if write.write_all(b"a").await.is_err() {
                    return true;
                }
            }
        }
    }
}

/// Oversized heads (plain HTTP/1.1, TLS, HTTP/2): refused with a body, never proxied.
async fn oversized(plain: SocketAddr, tls_addr: SocketAddr) -> Result<()> {
    let long_line = format!(
        "GET /abuse/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(9000)
    );
    assert_refused(
        &raw(plain, long_line.as_bytes()).await?,
        414,
        "Request-URI Too Large",
        "request line",
    )?;
    let big_header = format!(
        "GET /abuse/header HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(100 * 1024)
    );
    assert_refused(
        &raw(plain, big_header.as_bytes()).await?,
        400,
        "Request header or cookie too large",
        "100 KB header line",
    )?;
    let mut many = "GET /abuse/many HTTP/1.1\r\nHost: x\r\n".to_owned();
    for i in 0..16 {
        many.push_str(&format!("X-H{i}: {}\r\n", "c".repeat(4096)));
    }
    many.push_str("\r\n");
    assert_refused(
        &raw(plain, many.as_bytes()).await?,
        400,
        "Request header or cookie too large",
        "64 KiB of headers",
    )?;
    // The answer follows Accept; an earlier request on the connection is answered first.
    let mut tcp = TcpStream::connect(plain).await?;
    tcp.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    tcp.write_all(
        format!(
            "GET /abuse/xml HTTP/1.1\r\nHost: x\r\nAccept: application/xml\r\nX-Big: {}\r\n\r\n",
            "d".repeat(70 * 1024)
        )
        .as_bytes(),
    )
    .await?;
    // Both answers, in order, then the server closes.
    let mut both = Vec::new();
    tokio::time::timeout(patience(), tcp.read_to_end(&mut both))
        .await
        .context("pipelined answers in time")??;
    let both = String::from_utf8_lossy(&both);
    let refusal = both.find("HTTP/1.1 400").unwrap_or(usize::MAX);
    ensure!(
        both.starts_with("HTTP/1.1 200")
            && refusal < both.len()
            && both[refusal..].contains("<message>Request header or cookie too large</message>"),
        "{both}"
    );

    // The same over the TLS listener (HTTP/1.1 by ALPN).
    let mut config = (*tls_client_config(None, None)?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector
        .connect(
            ServerName::try_from("localhost")?,
            TcpStream::connect(tls_addr).await?,
        )
        .await?;
    tls.write_all(big_header.as_bytes()).await?;
    assert_refused(
        &read_response(&mut tls).await.context("tls")?,
        400,
        "Request header or cookie too large",
        "TLS 100 KB header line",
    )?;

    // HTTP/2 (h2c): over the limits but under h2's own header-list limit → our answer;
    // far over it → h2 refuses the stream itself. Neither is proxied.
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(TcpStream::connect(plain).await?),
    )
    .await?;
    tokio::spawn(conn);
    let over = Request::get(format!("http://{plain}/abuse/h2"))
        .header("x-big", "e".repeat(20 * 1024))
        .body(Empty::<Bytes>::new())?;
    let answer = h2.send_request(over).await?;
    ensure!(answer.status() == 400, "h2 20 KiB header: {answer:?}");
    let body = answer.into_body().collect().await?.to_bytes();
    let body: Value = serde_json::from_slice(&body)?;
    ensure!(
        body["message"] == json!("Request header or cookie too large"),
        "{body}"
    );
    let way_over = Request::get(format!("http://{plain}/abuse/h2-huge"))
        .header("x-big", "f".repeat(128 * 1024))
        .body(Empty::<Bytes>::new())?;
    match h2.send_request(way_over).await {
        Ok(answer) => ensure!(answer.status() == 431, "h2 128 KiB header: {answer:?}"),
        Err(error) => eprintln!("h2 128 KiB header: the stream failed as expected: {error}"),
    }
    Ok(())
}

/// Request smuggling (RFC 9112): 400 with a body, the connection closed, nothing proxied.
async fn smuggling(plain: SocketAddr) -> Result<()> {
    for (case, bytes) in [
        (
            "CL+TE",
            &b"POST /abuse/clte HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /abuse/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        ),
        (
            "TE+CL",
            b"POST /abuse/tecl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGET /abuse/smuggled HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
        ),
        (
            "two Content-Lengths",
            b"POST /abuse/cl2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 41\r\n\r\nGET /abuse/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "obs-fold",
            b"GET /abuse/fold HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
        ),
        (
            "TE not final chunked",
            b"POST /abuse/te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE on HTTP/1.0",
            b"POST /abuse/te10 HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ] {
        let mut tcp = TcpStream::connect(plain).await?;
        tcp.write_all(bytes).await?;
        assert_refused(&read_response(&mut tcp).await.context(case)?, 400, "Bad request", case)?;
        ensure!(closed_by_server(&mut tcp).await, "{case}: kept open");
    }
    Ok(())
}

/// Garbage instead of a ClientHello: the TLS listener closes; a ClientHello on the plain listener gets 400.
async fn garbage(plain: SocketAddr, tls_addr: SocketAddr) -> Result<()> {
    for garbage in [
        b"GET /abuse/plain-on-tls HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..65_536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
        // A record header announcing a handshake, then nothing useful.
        b"\x16\x03\x01\xff\xff\x01\x00\xff\xfb".to_vec(),
    ] {
        let mut tcp = TcpStream::connect(tls_addr).await?;
        // The server may close mid-write: the write's result does not matter.
        let _ = tcp.write_all(&garbage).await;
        ensure!(
            closed_by_server(&mut tcp).await,
            "TLS listener kept garbage open"
        );
    }
    // And a TLS ClientHello on the plain listener: 400 at once.
    let mut tcp = TcpStream::connect(plain).await?;
    tcp.write_all(b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03")
        .await?;
    assert_refused(
        &read_response(&mut tcp).await.context("hello on plain")?,
        400,
        "Bad request",
        "ClientHello on plain",
    )?;
    Ok(())
}

/// HTTP/2 rapid reset: HEADERS + RST_STREAM pairs get GOAWAY ENHANCE_YOUR_CALM.
async fn rapid_reset(plain: SocketAddr, upstream: &Upstream) -> Result<()> {
    let reset_paths = |u: &Upstream| {
        u.abusive()
            .iter()
            .filter(|p| p.starts_with("/abuse/reset"))
            .count() as u64
    };
    let before = reset_paths(upstream);
    let mut burst = PREFACE.to_vec();
    burst.extend(frame(4, 0, 0, &[]));
    let streams = 2000u32;
    for i in 0..streams {
        let id = 2 * i + 1;
        burst.extend(frame(1, 0x5, id, &request_block("/abuse/reset")));
        burst.extend(frame(3, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let mut tcp = TcpStream::connect(plain).await?;
    let _ = tcp.write_all(&burst).await;
    let code = goaway(&mut tcp).await?;
    ensure!(code == Some(0xb), "rapid reset: GOAWAY code {code:?}");
    let reached = reset_paths(upstream) - before;
    eprintln!("rapid reset: {reached} of {streams} reset streams reached the upstream");
    ensure!(
        reached < u64::from(streams) / 10,
        "rapid reset: {reached} of {streams} streams reached the upstream"
    );
    Ok(())
}

/// CONTINUATION flood: a header block that never ends gets GOAWAY.
async fn continuation_flood(plain: SocketAddr) -> Result<()> {
    let mut tcp = TcpStream::connect(plain).await?;
    let mut flood = PREFACE.to_vec();
    flood.extend(frame(4, 0, 0, &[]));
    flood.extend(frame(1, 0, 1, &request_block("/abuse/continuation")));
    let field = [0x00, 0x01, b'x', 0x01, b'y']; // literal x: y, no indexing
    for _ in 0..10_000 {
        flood.extend(frame(9, 0, 1, &field));
    }
    let _ = tcp.write_all(&flood).await;
    let code = goaway(&mut tcp).await?;
    ensure!(
        code == Some(0xb),
        "CONTINUATION flood: GOAWAY code {code:?} (ENHANCE_YOUR_CALM expected)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_abuse_is_refused_while_others_are_served() -> Result<()> {
    let slowloris = env_count("GATEHOUSE_ABUSE_SLOWLORIS", 200);
    let idle = env_count("GATEHOUSE_ABUSE_IDLE", 300);
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = DataPlane::start(
        cluster
            .dp_options("dp1")
            .arg("--client-header-timeout")
            .arg(&std::env::var("GATEHOUSE_ABUSE_HEADER_TIMEOUT").unwrap_or(HEADER_TIMEOUT.into()))
            .quiet(),
    )
    .await?;
    let upstream = Upstream::start().await?;
    let service = post(
        admin,
        "/services",
        json!({"name": "up", "url": format!("http://{}", upstream.addr)}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"name": "all", "paths": ["/"], "service": {"id": service["id"]}}),
    )
    .await?;
    dp.wait_for_version(config_version(admin).await?, patience())
        .await?;
    let plain = dp.proxy_addr()?;
    let baseline = Memory::of(dp.pid())?;
    eprintln!("DP RSS before the abuse: {} MiB", baseline.rss >> 20);
    let tls_addr = dp.proxy_ssl_addr()?;
    let good = Good::start(format!("http://{plain}/ok"))?;
    let wait_for_good = Instant::now();
    gatehouse_tests::wait_until("the well-behaved client's first answer", patience(), || {
        let n = good.window(wait_for_good, Instant::now()).0;
        async move { Ok((n > 0).then_some(())) }
    })
    .await?;
    let mut report: Vec<(String, Instant)> = Vec::new();
    // Each one-shot abuse runs once, or again and again for GATEHOUSE_ABUSE_PHASE_SECS.
    let phase_time = Duration::from_secs(env_count("GATEHOUSE_ABUSE_PHASE_SECS", 0) as u64);
    macro_rules! phase {
        ($name:expr, $run:expr) => {{
            let start = Instant::now();
            report.push(($name.into(), start));
            loop {
                $run.await.context($name)?;
                if start.elapsed() >= phase_time {
                    break;
                }
            }
        }};
    }

    phase!("oversized heads", oversized(plain, tls_addr));
    phase!("request smuggling", smuggling(plain));
    phase!("garbage ClientHello", garbage(plain, tls_addr));
    phase!("HTTP/2 rapid reset", rapid_reset(plain, &upstream));
    phase!("HTTP/2 CONTINUATION flood", continuation_flood(plain));

    // --- Slowloris: heads that trickle in; each ends at --client-header-timeout. ---
    report.push((format!("{slowloris} slowloris connections"), Instant::now()));
    let mut lorises = Vec::with_capacity(slowloris);
    for _ in 0..slowloris {
        let mut tcp = TcpStream::connect(plain).await?;
        tcp.write_all(b"GET /abuse/slowloris HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await?;
        lorises.push(tcp);
    }
    let trickles: Vec<JoinHandle<bool>> = lorises
        .into_iter()
        .map(|tcp| tokio::spawn(trickle(tcp)))
        .collect();
    let mut left = 0;
    for task in trickles {
        if !task.await? {
            left += 1;
        }
    }
    ensure!(
        left == 0,
        "slowloris: {left} of {slowloris} connections not closed by the header timeout"
    );

    // --- Idle keep-alive connections: one request each, then silence. ---
    report.push((
        format!("{idle} idle keep-alive connections"),
        Instant::now(),
    ));
    // Opened 100 at a time; each sends one request and keeps its connection.
    let mut idlers = Vec::with_capacity(idle);
    while idlers.len() < idle {
        let batch: Vec<JoinHandle<Result<TcpStream>>> = (0..(idle - idlers.len()).min(100))
            .map(|_| {
                tokio::spawn(async move {
                    let mut tcp = TcpStream::connect(plain).await?;
                    tcp.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
                        .await?;
                    let answer = read_response(&mut tcp).await.context("idle")?;
                    ensure!(
                        answer.status == 200,
                        "idle connection's request: {answer:?}"
                    );
                    Ok(tcp)
                })
            })
            .collect();
        for task in batch {
            idlers.push(task.await??);
        }
    }
    // And idle HTTP/2 connections: the preface and SETTINGS, then silence.
    let mut idle_h2 = Vec::new();
    for _ in 0..idle.min(100) {
        let mut tcp = TcpStream::connect(plain).await?;
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(4, 0, 0, &[]));
        tcp.write_all(&hello).await?;
        idle_h2.push(tcp);
    }
    let with_idle = Memory::of(dp.pid())?;
    eprintln!(
        "{idle} idle keep-alive connections open: DP RSS {} MiB",
        with_idle.rss >> 20
    );
    // They end at the header timeout (no next request came).
    let mut open = 0;
    for tcp in &mut idlers {
        if !closed_by_server(tcp).await {
            open += 1;
        }
    }
    ensure!(
        open == 0,
        "idle: {open} connections outlived the header timeout"
    );
    for tcp in &mut idle_h2 {
        if !closed_by_server(tcp).await {
            open += 1;
        }
    }
    ensure!(
        open == 0,
        "idle: {open} HTTP/2 connections outlived twice the header timeout"
    );
    report.push(("end".into(), Instant::now()));

    // --- The verdict. ---
    good.stop.store(true, Ordering::Relaxed);
    let errors = good.errors.lock().map(|e| e.clone()).unwrap_or_default();
    ensure!(errors.is_empty(), "well-behaved client errors: {errors:?}");
    for pair in report.windows(2) {
        let (name, from) = &pair[0];
        let (count, bad, p50, p99) = good.window(*from, pair[1].1);
        ensure!(bad.is_empty(), "{name}: well-behaved client got {bad:?}");
        eprintln!(
            "during {name}: well-behaved client {count} requests, all 200, p50 {:.1} ms, p99 {:.1} ms",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
    }
    let (total, bad, _, _) = good.window(wait_for_good, Instant::now());
    ensure!(
        bad.is_empty() && total > 0,
        "well-behaved client: {total} answers, bad {bad:?}"
    );
    let abusive = upstream.abusive();
    let leaked: Vec<&String> = abusive
        .iter()
        .filter(|p| !p.starts_with("/abuse/reset"))
        .collect();
    ensure!(
        leaked.is_empty(),
        "abusive requests reached the upstream: {leaked:?}"
    );
    let memory = Memory::of(dp.pid())?;
    eprintln!("DP peak RSS over the run: {} MiB", memory.peak >> 20);
    ensure!(memory.peak < RSS_CAP, "DP peak RSS {memory:?}");
    let mut dp = dp;
    ensure!(dp.is_running(), "the DP died: {}", dp.logs());
    let _ = good.task.await;
    Ok(())
}
