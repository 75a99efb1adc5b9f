//! Streaming through the data plane's proxy, end to end: real PostgreSQL, `gatehouse-cp` and
//! `gatehouse-dp` processes, and upstreams started by the test on `127.0.0.1:0`.
//!
//! - 100 MiB uploads and downloads, with the DP's peak resident memory (`VmHWM`) read before
//!   and after: it must grow by a fraction of the body, or the DP buffered it;
//! - a reader that stops reading a 100 MiB download: the DP's memory stays flat and the
//!   upstream is held back (backpressure), then the rest arrives intact;
//! - WebSocket echo (text, binary, 1 MB messages, ping, close handshake) through the plain and
//!   the TLS listeners;
//! - gRPC over h2c: a unary call whose trailers reach the client, a bidirectional stream
//!   answered message by message, and the DP's answers to HTTP/1 and non-gRPC requests;
//! - 100 concurrent 1 MiB uploads (50 HTTP/1.1 connections, 50 streams of one h2c connection);
//! - bodies cut short (the upstream breaks its answer, the client leaves mid-upload) reach the
//!   other side as errors, never as complete shorter bodies.
//!
//! Bodies are deterministic pseudo-random bytes ([`Pattern`]) made on the fly and checked by
//! length and SHA-256 on the fly, so no side holds a whole body. Run with `--no-capture` to see
//! the measured memory and durations.

mod cluster_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use cluster_support::*;
use gatehouse_tests::{
    Admin, DataPlane, Memory, POLL_INTERVAL, config_version, patience, tls_client_config,
    wait_until,
};

const MIB: u64 = 1024 * 1024;
/// The size of the big transfers.
const BIG: u64 = 100 * MIB;
/// How much the DP's resident memory may grow while it proxies a [`BIG`] body: a third of it,
/// so a DP that buffered the body fails, while hyper's buffers, socket-sized reads and the
/// allocator's slack fit many times over.
const MAX_GROWTH: u64 = 32 * MIB;
/// The size of each chunk of a generated body.
const CHUNK: usize = 64 * 1024;
/// Timeout of one big transfer (debug builds, 2 cores shared with other tests).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(240);
/// Timeout of one small exchange.
const TIMEOUT: Duration = Duration::from_secs(15);
/// The bulk service's `read_timeout` (ms): the DP bounds the wait for the response headers
/// with `connect_timeout + read_timeout`, and an upload's answer comes after its whole body.
const BULK_READ_TIMEOUT_MS: u64 = 300_000;

// ---------------------------------------------------------------------------------------------
// Generated bodies.

/// `len` deterministic pseudo-random bytes (xorshift64 from a seed), made [`CHUNK`] bytes at a
/// time: a body of any size that never exists whole.
#[derive(Debug, Clone)]
struct Pattern {
    state: u64,
    left: u64,
}

impl Pattern {
    fn new(seed: u64, len: u64) -> Pattern {
        Pattern {
            // xorshift never leaves 0.
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            left: len,
        }
    }

    /// The hex SHA-256 of the whole pattern.
    fn sha256(self) -> String {
        let mut hasher = Sha256::new();
        for chunk in self {
            hasher.update(&chunk);
        }
        format!("{:x}", hasher.finalize())
    }

    /// [`Pattern::sha256`] on a blocking thread (2 s for 100 MiB in a debug build), to run
    /// alongside a transfer.
    fn sha256_in_background(self) -> JoinHandle<String> {
        tokio::task::spawn_blocking(move || self.sha256())
    }

    /// The pattern as a streamed request or response body of unknown length.
    fn body(self) -> TestBody {
        BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            self.map(|chunk| Ok(Frame::data(chunk))),
        )))
    }
}

impl Iterator for Pattern {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return None;
        }
        let len = self.left.min(CHUNK as u64) as usize;
        let mut chunk = vec![0u8; len.next_multiple_of(8)];
        for word in chunk.chunks_exact_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            word.copy_from_slice(&self.state.to_le_bytes());
        }
        chunk.truncate(len);
        self.left -= len as u64;
        Some(Bytes::from(chunk))
    }
}

/// Reads a body frame by frame, counting and hashing, never holding more than a frame.
struct Drain {
    body: Incoming,
    len: u64,
    hasher: Sha256,
    ended: bool,
}

impl Drain {
    fn new(body: Incoming) -> Drain {
        Drain {
            body,
            len: 0,
            hasher: Sha256::new(),
            ended: false,
        }
    }

    /// Reads until at least `limit` bytes came or the body ended (trailers are ignored).
    async fn read_to(&mut self, limit: u64) -> Result<()> {
        while self.len < limit && !self.ended {
            match tokio::time::timeout(TIMEOUT, self.body.frame()).await {
                Err(_) => bail!("no body frame within {TIMEOUT:?} after {} bytes", self.len),
                Ok(None) => self.ended = true,
                Ok(Some(frame)) => {
                    let frame = frame.with_context(|| format!("body after {} bytes", self.len))?;
                    if let Some(data) = frame.data_ref() {
                        self.len += data.len() as u64;
                        self.hasher.update(data);
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads to the end; returns the length and the hex SHA-256.
    async fn finish(mut self) -> Result<(u64, String)> {
        self.read_to(u64::MAX).await?;
        Ok((self.len, format!("{:x}", self.hasher.finalize())))
    }
}

// ---------------------------------------------------------------------------------------------
// Upstreams.

/// A bulk upstream speaking HTTP/1.1 and h2c:
/// - a `POST` is read as it comes (never collected) and answered with JSON `{"len", "sha256",
///   "version"}` of what arrived;
/// - `GET /bytes/{seed}/{len}` answers the [`Pattern`] `(seed, len)`, streamed with a
///   `Content-Length`;
/// - `GET /broken/{seed}/{len}` answers the same chunked, then breaks the body (an error: hyper
///   drops the connection without the last chunk).
///
/// It keeps every upload's report, with its `path`.
struct Bulk {
    addr: SocketAddr,
    counters: Arc<BulkCounters>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct BulkCounters {
    /// Bytes hyper took from the download bodies.
    produced: AtomicU64,
    /// Uploads being read now.
    uploading: AtomicU64,
    /// The most uploads read at once.
    most_uploading: AtomicU64,
    /// The report of every upload, in order of completion.
    reports: std::sync::Mutex<Vec<Value>>,
}

/// Every body the tests send: requests, and the bulk upstream's answers (an I/O error breaks
/// one on purpose).
type TestBody = BoxBody<Bytes, std::io::Error>;

impl Bulk {
    async fn start() -> Result<Bulk> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(BulkCounters::default());
        let shared = counters.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let counters = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| bulk(req, counters.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(Bulk {
            addr,
            counters,
            task,
        })
    }

    fn produced(&self) -> u64 {
        self.counters.produced.load(Ordering::Relaxed)
    }

    fn most_uploading(&self) -> u64 {
        self.counters.most_uploading.load(Ordering::Relaxed)
    }

    /// The report of the upload to `path`, once there is one.
    async fn report_for(&self, path: &str) -> Result<Value> {
        wait_until(&format!("an upload to {path}"), patience(), || async {
            let reports = self
                .counters
                .reports
                .lock()
                .map_err(|_| anyhow!("poisoned"))?;
            Ok(reports.iter().find(|r| r["path"] == json!(path)).cloned())
        })
        .await
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn bulk(
    req: Request<Incoming>,
    counters: Arc<BulkCounters>,
) -> Result<Response<TestBody>, Infallible> {
    if req.method() == hyper::Method::GET {
        let mut segments = req.uri().path().rsplit('/');
        let len = segments.next().and_then(|s| s.parse::<u64>().ok());
        let seed = segments.next().and_then(|s| s.parse::<u64>().ok());
        let broken = req.uri().path().starts_with("/broken/");
        let (Some(seed), Some(len)) = (seed, len) else {
            let mut response = Response::new(full("want GET /bytes/{seed}/{len}"));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return Ok(response);
        };
        if broken {
            let chunks = Pattern::new(seed, len)
                .map(|chunk| Ok(Frame::data(chunk)))
                .chain([Err(std::io::Error::other("the upstream breaks the body"))]);
            return Ok(Response::new(BodyExt::boxed(StreamBody::new(
                futures_util::stream::iter(chunks),
            ))));
        }
        let chunks = Pattern::new(seed, len).inspect(move |chunk| {
            counters
                .produced
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        });
        let body = StreamBody::new(futures_util::stream::iter(
            chunks.map(|chunk| Ok(Frame::data(chunk))),
        ));
        let mut response = Response::new(BodyExt::boxed(body));
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
        return Ok(response);
    }
    let version = format!("{:?}", req.version());
    let path = req.uri().path().to_owned();
    let now = counters.uploading.fetch_add(1, Ordering::Relaxed) + 1;
    counters.most_uploading.fetch_max(now, Ordering::Relaxed);
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                    hasher.update(data);
                }
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    counters.uploading.fetch_sub(1, Ordering::Relaxed);
    let report = json!({
        "path": path,
        "len": len,
        "sha256": format!("{:x}", hasher.finalize()),
        "version": version,
        "error": error,
    });
    if let Ok(mut reports) = counters.reports.lock() {
        reports.push(report.clone());
    }
    Ok(Response::new(full(report.to_string())))
}

fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// What the WebSocket upstream saw.
#[derive(Debug)]
enum Seen {
    /// The opening handshake: the request target and headers.
    Handshake { target: String, headers: HeaderMap },
    /// A close frame from the client.
    Close(Option<CloseFrame>),
}

/// A WebSocket upstream (HTTP/1.1 upgrade) echoing every text and binary message; it reports
/// each handshake and close frame on `seen`.
struct WsEcho {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: JoinHandle<()>,
}

impl WsEcho {
    async fn start() -> Result<WsEcho> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(ws_echo(tcp, tx.clone()));
            }
        });
        Ok(WsEcho { addr, seen, task })
    }

    async fn next_seen(&mut self) -> Result<Seen> {
        tokio::time::timeout(TIMEOUT, self.seen.recv())
            .await
            .context("the WebSocket upstream reported nothing")?
            .context("the WebSocket upstream is gone")
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn ws_echo(tcp: TcpStream, seen: mpsc::UnboundedSender<Seen>) {
    #[allow(
        clippy::result_large_err,
        reason = "tungstenite's Callback trait fixes the error type"
    )]
    let on_request = {
        let seen = seen.clone();
        move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
              response: tokio_tungstenite::tungstenite::handshake::server::Response| {
            let _ = seen.send(Seen::Handshake {
                target: req.uri().to_string(),
                headers: req.headers().clone(),
            });
            Ok(response)
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, on_request).await else {
        return;
    };
    // Pings are answered by tungstenite; the reply to a close frame goes out on the next read,
    // which then ends the stream.
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Text(_) | Message::Binary(_) => {
                if ws.send(message).await.is_err() {
                    break;
                }
            }
            Message::Close(frame) => {
                let _ = seen.send(Seen::Close(frame));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// A gRPC-like upstream, h2c only (prior knowledge). Every answer has `content-type:
/// application/grpc` and headers telling what it saw (`x-seen-version`, `x-seen-path`,
/// `x-seen-te`, `x-seen-content-type`), and ends with trailers `grpc-status: 0` and
/// `x-echo-bytes` (request body bytes received):
/// - `/echo.Echo/Say` (unary): the request's message, prefixed with `echo: `;
/// - `/echo.Echo/Chat` (bidirectional): every request body frame echoed as it arrives.
struct GrpcEcho {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

type GrpcBody = BoxBody<Bytes, hyper::Error>;

impl GrpcEcho {
    async fn start() -> Result<GrpcEcho> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service_fn(grpc_echo))
                        .await;
                });
            }
        });
        Ok(GrpcEcho { addr, task })
    }
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn grpc_echo(req: Request<Incoming>) -> Result<Response<GrpcBody>, Infallible> {
    let seen = |name: &str| {
        req.headers()
            .get(name)
            .cloned()
            .unwrap_or(HeaderValue::from_static(""))
    };
    let mut head = Response::builder()
        .header("content-type", "application/grpc")
        .header("x-seen-te", seen("te"))
        .header("x-seen-content-type", seen("content-type"));
    if let Ok(path) = HeaderValue::from_str(req.uri().path()) {
        head = head.header("x-seen-path", path);
    }
    if let Ok(version) = HeaderValue::from_str(&format!("{:?}", req.version())) {
        head = head.header("x-seen-version", version);
    }
    let body: GrpcBody = if req.uri().path() == "/echo.Echo/Chat" {
        let echoed =
            futures_util::stream::unfold(Some((req.into_body(), 0u64)), |state| async move {
                let (mut body, mut total) = state?;
                loop {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                total += data.len() as u64;
                                return Some((Ok(Frame::data(data)), Some((body, total))));
                            }
                        }
                        Some(Err(e)) => return Some((Err(e), None)),
                        None => return Some((Ok(Frame::trailers(grpc_trailers(total))), None)),
                    }
                }
            });
        BodyExt::boxed(StreamBody::new(echoed))
    } else {
        let received = match req.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => Bytes::from(format!("body error: {e}")),
        };
        let payload = grpc_message(&received).unwrap_or(&received[..]);
        let reply = grpc_frame(&[b"echo: ", payload].concat());
        let trailers = grpc_trailers(received.len() as u64);
        Full::new(reply)
            .with_trailers(async move { Some(Ok(trailers)) })
            .map_err(|never| match never {})
            .boxed()
    };
    Ok(head
        .body(body)
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())))
}

fn grpc_trailers(received: u64) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("x-echo-bytes", HeaderValue::from(received));
    trailers
}

/// One gRPC length-prefixed message (uncompressed).
fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(payload.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(payload);
    framed.into()
}

/// The payload of a body holding exactly one gRPC message.
fn grpc_message(body: &[u8]) -> Option<&[u8]> {
    let (head, payload) = body.split_at_checked(5)?;
    let len = u32::from_be_bytes(head.get(1..5)?.try_into().ok()?) as usize;
    (head[0] == 0 && payload.len() == len).then_some(payload)
}

// ---------------------------------------------------------------------------------------------
// Admin API, clients, measurements.

async fn post(admin: &Admin, path: &str, body: Value) -> Result<Value> {
    let created = admin.post_json(path, &body).await?;
    ensure!(created.status == 201, "POST {path} {body}: {created:?}");
    Ok(created.body)
}

/// Creates the service `service` and the route `route` to it.
async fn expose(admin: &Admin, service: Value, route: Value) -> Result<()> {
    let service = post(admin, "/services", service).await?;
    let mut route = route;
    route["service"] = json!({"id": service["id"]});
    post(admin, "/routes", route).await?;
    Ok(())
}

/// Waits until the DP applied everything written so far.
async fn applied(admin: &Admin, dp: &DataPlane) -> Result<()> {
    let version = config_version(admin).await?;
    dp.wait_for_version(version, patience()).await?;
    Ok(())
}

/// A DP with a route `/bulk` (stripped) to `bulk`, applied.
async fn bulk_route(cluster: &Cluster, dp: &DataPlane, bulk: &Bulk) -> Result<()> {
    let admin = cluster.admin();
    expose(
        admin,
        json!({"name": "bulk", "url": format!("http://{}/", bulk.addr),
               "read_timeout": BULK_READ_TIMEOUT_MS}),
        json!({"name": "bulk", "paths": ["/bulk"]}),
    )
    .await?;
    applied(admin, dp).await
}

/// An HTTP/1.1 connection to `addr`.
async fn http1(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<TestBody>> {
    let tcp = TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// An HTTP/2 connection with prior knowledge (h2c) to `addr`.
async fn h2c<B>(addr: SocketAddr) -> Result<hyper::client::conn::http2::SendRequest<B>>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Uploads `pattern` as a chunked `POST path` over HTTP/1.1 to `addr`; returns the bulk
/// upstream's report.
async fn upload(addr: SocketAddr, path: &str, pattern: Pattern) -> Result<Value> {
    let mut sender = http1(addr).await?;
    let request = Request::post(path)
        .header("host", "bulk.test")
        .header("content-type", "application/octet-stream")
        .body(pattern.body())?;
    report(sender.send_request(request)).await
}

/// The status-200 JSON answer of a proxied upload.
async fn report(
    response: impl Future<Output = hyper::Result<Response<Incoming>>>,
) -> Result<Value> {
    let response = tokio::time::timeout(TRANSFER_TIMEOUT, response)
        .await
        .context("the upload timed out")??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    ensure!(status == StatusCode::OK, "{status}: {text}");
    serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
}

/// Waits until `counter` has not moved for `quiet` (polling); returns its value.
async fn settled(counter: impl Fn() -> u64, quiet: Duration) -> Result<u64> {
    let deadline = Instant::now() + patience();
    let mut last = counter();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = counter();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return Ok(now);
        }
        ensure!(
            Instant::now() < deadline,
            "still moving after {:?}: {now}",
            patience()
        );
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn a_100_mib_upload_is_streamed_to_the_upstream_with_bounded_memory() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let dp = cluster.dp("dp1").await?;
    let bulk = Bulk::start().await?;
    bulk_route(&cluster, &dp, &bulk).await?;
    let proxy = dp.proxy_addr()?;

    // A small upload first, so the baseline includes a warmed-up DP (pools, first buffers).
    let warm = upload(proxy, "/bulk/warm", Pattern::new(1, MIB)).await?;
    assert_eq!(warm["len"], json!(MIB), "{warm}");
    assert_eq!(
        warm["sha256"],
        json!(Pattern::new(1, MIB).sha256()),
        "{warm}"
    );

    let expected = Pattern::new(7, BIG).sha256_in_background();
    let before = Memory::of(dp.pid())?;
    let started = Instant::now();
    let seen = upload(proxy, "/bulk/upload", Pattern::new(7, BIG)).await?;
    let took = started.elapsed();
    let after = Memory::of(dp.pid())?;

    assert_eq!(seen["error"], Value::Null, "{seen}");
    assert_eq!(seen["len"], json!(BIG), "{seen}");
    assert_eq!(seen["sha256"], json!(expected.await?), "{seen}");
    assert_eq!(seen["version"], json!("HTTP/1.1"), "{seen}");
    let growth = after.peak.saturating_sub(before.peak);
    eprintln!(
        "upload of {} MiB in {took:.2?}; DP peak RSS {:.1} -> {:.1} MiB (+{:.1} MiB)",
        mib(BIG),
        mib(before.peak),
        mib(after.peak),
        mib(growth)
    );
    assert!(
        growth < MAX_GROWTH,
        "the DP's peak RSS grew by {:.1} MiB for a {} MiB body: {before:?} -> {after:?}",
        mib(growth),
        mib(BIG)
    );
    Ok(())
}

#[tokio::test]
async fn a_100_mib_download_is_streamed_to_the_client_with_bounded_memory() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let dp = cluster.dp("dp1").await?;
    let bulk = Bulk::start().await?;
    bulk_route(&cluster, &dp, &bulk).await?;
    let mut sender = http1(dp.proxy_addr()?).await?;

    let get = |path: String| {
        Request::get(path)
            .header("host", "bulk.test")
            .body(full(Bytes::new()))
    };
    let warm = sender
        .send_request(get(format!("/bulk/bytes/2/{MIB}"))?)
        .await?;
    assert_eq!(warm.status(), StatusCode::OK);
    let (len, sha256) = Drain::new(warm.into_body()).finish().await?;
    assert_eq!((len, sha256), (MIB, Pattern::new(2, MIB).sha256()));

    let expected = Pattern::new(8, BIG).sha256_in_background();
    let before = Memory::of(dp.pid())?;
    let started = Instant::now();
    let response = tokio::time::timeout(
        TIMEOUT,
        sender.send_request(get(format!("/bulk/bytes/8/{BIG}"))?),
    )
    .await
    .context("no response headers")??;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(response.headers(), "content-length"),
        BIG.to_string(),
        "{:?}",
        response.headers()
    );
    let (len, sha256) =
        tokio::time::timeout(TRANSFER_TIMEOUT, Drain::new(response.into_body()).finish())
            .await
            .context("the download timed out")??;
    let took = started.elapsed();
    let after = Memory::of(dp.pid())?;

    assert_eq!(len, BIG);
    assert_eq!(sha256, expected.await?);
    let growth = after.peak.saturating_sub(before.peak);
    eprintln!(
        "download of {} MiB in {took:.2?}; DP peak RSS {:.1} -> {:.1} MiB (+{:.1} MiB)",
        mib(BIG),
        mib(before.peak),
        mib(after.peak),
        mib(growth)
    );
    assert!(
        growth < MAX_GROWTH,
        "the DP's peak RSS grew by {:.1} MiB for a {} MiB body: {before:?} -> {after:?}",
        mib(growth),
        mib(BIG)
    );
    Ok(())
}

#[tokio::test]
async fn a_stalled_download_holds_the_upstream_back_without_growing_the_dp() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let dp = cluster.dp("dp1").await?;
    let bulk = Bulk::start().await?;
    bulk_route(&cluster, &dp, &bulk).await?;

    // A small receive buffer on the client, so what waits in flight sits mostly at the DP.
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(64 * 1024)?;
    let tcp = socket.connect(dp.proxy_addr()?).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let warm = sender
        .send_request(
            Request::get(format!("/bulk/bytes/3/{MIB}"))
                .header("host", "bulk.test")
                .body(full(Bytes::new()))?,
        )
        .await?;
    Drain::new(warm.into_body()).finish().await?;
    let warmed = bulk.produced();

    let expected = Pattern::new(9, BIG).sha256_in_background();
    let before = Memory::of(dp.pid())?;
    let response = tokio::time::timeout(
        TIMEOUT,
        sender.send_request(
            Request::get(format!("/bulk/bytes/9/{BIG}"))
                .header("host", "bulk.test")
                .body(full(Bytes::new()))?,
        ),
    )
    .await
    .context("no response headers")??;
    assert_eq!(response.status(), StatusCode::OK);
    let mut reader = Drain::new(response.into_body());

    // Read 8 MiB, then stop reading until the upstream stops producing: every buffer between
    // it and us is full.
    reader.read_to(8 * MIB).await?;
    let consumed = reader.len;
    let produced = settled(|| bulk.produced() - warmed, Duration::from_secs(1)).await?;
    let stalled = Memory::of(dp.pid())?;
    let in_flight = produced - consumed;
    eprintln!(
        "stalled reader: consumed {:.1} MiB, upstream produced {:.1} MiB ({:.1} MiB in flight); \
         DP RSS {:.1} -> {:.1} MiB",
        mib(consumed),
        mib(produced),
        mib(in_flight),
        mib(before.rss),
        mib(stalled.rss)
    );
    // In flight: the kernel's socket buffers (loopback autotuning allows tens of MiB) and
    // the DP's own buffers; a DP reading regardless of its client would take all 100 MiB.
    assert!(
        produced < BIG - 32 * MIB,
        "the upstream sent {:.1} MiB while the client read {:.1} MiB",
        mib(produced),
        mib(consumed)
    );
    let growth = stalled.rss.saturating_sub(before.rss);
    assert!(
        growth < MAX_GROWTH,
        "the DP's RSS grew by {:.1} MiB with {:.1} MiB unread: {before:?} -> {stalled:?}",
        mib(growth),
        mib(in_flight)
    );

    // Reading again: the rest arrives, intact.
    let (len, sha256) = tokio::time::timeout(TRANSFER_TIMEOUT, reader.finish())
        .await
        .context("the rest of the download timed out")??;
    assert_eq!(len, BIG);
    assert_eq!(sha256, expected.await?);
    let after = Memory::of(dp.pid())?;
    let growth = after.peak.saturating_sub(before.peak);
    eprintln!(
        "stalled reader: DP peak RSS {:.1} -> {:.1} MiB (+{:.1} MiB)",
        mib(before.peak),
        mib(after.peak),
        mib(growth)
    );
    assert!(growth < MAX_GROWTH, "{before:?} -> {after:?}");
    Ok(())
}

#[tokio::test]
async fn websocket_messages_are_echoed_through_the_plain_and_tls_listeners() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = cluster.dp("dp1").await?;
    let mut upstream = WsEcho::start().await?;
    expose(
        admin,
        json!({"name": "ws", "url": format!("http://{}/", upstream.addr)}),
        json!({"name": "ws", "paths": ["/ws"]}),
    )
    .await?;
    applied(admin, &dp).await?;

    let tcp = TcpStream::connect(dp.proxy_addr()?).await?;
    converse(
        tcp,
        "ws://ws.test/ws/chat?room=1",
        "/chat?room=1",
        "http",
        &mut upstream,
    )
    .await?;

    // WebSocket needs HTTP/1.1: offer only that in ALPN.
    let mut config = (*tls_client_config(None, None)?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(dp.proxy_ssl_addr()?).await?;
    let tls = tokio::time::timeout(
        TIMEOUT,
        connector.connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    converse(
        tls,
        "wss://localhost/ws/secure",
        "/secure",
        "https",
        &mut upstream,
    )
    .await?;
    Ok(())
}

/// One WebSocket conversation on `stream` (connected to the DP): the handshake, text and
/// binary messages of all sizes echoed, a ping, and the close handshake; `target` and `proto`
/// are the request target and `X-Forwarded-Proto` the upstream must see.
async fn converse<S>(
    stream: S,
    url: &str,
    target: &str,
    proto: &str,
    upstream: &mut WsEcho,
) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ws, response) =
        tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(url, stream))
            .await
            .context("WebSocket handshake timed out")??;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS, "{url}");
    let request_id = header(response.headers(), "x-gatehouse-request-id").to_owned();
    assert!(
        uuid::Uuid::parse_str(&request_id).is_ok(),
        "{url}: {:?}",
        response.headers()
    );
    match upstream.next_seen().await? {
        Seen::Handshake {
            target: seen,
            headers,
        } => {
            assert_eq!(seen, target, "{url}");
            assert_eq!(header(&headers, "x-forwarded-proto"), proto, "{url}");
            assert_eq!(
                header(&headers, "x-gatehouse-request-id"),
                request_id,
                "{url}"
            );
            assert!(
                !header(&headers, "sec-websocket-key").is_empty(),
                "{url}: {headers:?}"
            );
        }
        other => bail!("{url}: expected the handshake, the upstream saw {other:?}"),
    }

    let big_binary: Vec<u8> = Pattern::new(4, MIB).flat_map(|c| c.to_vec()).collect();
    let big_text: String = "0123456789abcdefghijklmnopqrstuvwxyz"
        .chars()
        .cycle()
        .take(1_000_000)
        .collect();
    let messages = [
        Message::text("hello"),
        Message::text("grüße, 世界 🌍"),
        Message::binary(vec![0u8, 1, 2, 0xfe, 0xff]),
        Message::text(""),
        Message::binary(big_binary),
        Message::text(big_text),
        Message::text("after the big ones"),
    ];
    for message in messages {
        ws.send(message.clone()).await?;
        let back = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .context("no echo")?
            .context("the connection closed")??;
        assert!(
            back == message,
            "{url}: sent {} bytes ({}), got back {} bytes ({})",
            message.len(),
            kind(&message),
            back.len(),
            kind(&back)
        );
    }

    // Control frames cross the DP too: tungstenite's upstream answers the ping.
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await?;
    let pong = tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .context("no pong")?
        .context("the connection closed")??;
    assert_eq!(
        pong,
        Message::Pong(Bytes::from_static(b"are you there")),
        "{url}"
    );

    // The close handshake: the upstream sees our close frame and echoes it, then closes.
    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    ws.close(Some(bye.clone())).await?;
    let reply = tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .context("no close reply")?
        .context("closed without a close reply")??;
    assert_eq!(reply, Message::Close(Some(bye.clone())), "{url}");
    let end = tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .context("the connection stayed open after the close handshake")?;
    assert!(end.is_none(), "{url}: after the close handshake: {end:?}");
    match upstream.next_seen().await? {
        Seen::Close(frame) => assert_eq!(frame, Some(bye), "{url}"),
        other => bail!("{url}: expected the close frame, the upstream saw {other:?}"),
    }
    Ok(())
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
        Message::Frame(_) => "frame",
    }
}

#[tokio::test]
async fn grpc_over_h2c_streams_both_ways_and_delivers_trailers() -> Result<()> {
    let (_cluster, dp, _upstream) = grpc_cluster().await?;
    let proxy = dp.proxy_addr()?;

    // Unary: one message up, one down, then the trailers.
    let mut sender = h2c::<TestBody>(proxy).await?;
    let request = Request::post("http://grpc.test/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(grpc_frame(b"hello gRPC")))?;
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
        .await
        .context("no response")??;
    assert_eq!(response.status(), StatusCode::OK, "{response:?}");
    let headers = response.headers().clone();
    assert_eq!(header(&headers, "content-type"), "application/grpc");
    assert_eq!(
        header(&headers, "x-seen-version"),
        "HTTP/2.0",
        "{headers:?}"
    );
    assert_eq!(
        header(&headers, "x-seen-path"),
        "/echo.Echo/Say",
        "{headers:?}"
    );
    assert_eq!(header(&headers, "x-seen-te"), "trailers", "{headers:?}");
    assert_eq!(
        header(&headers, "x-seen-content-type"),
        "application/grpc",
        "{headers:?}"
    );
    let collected = tokio::time::timeout(TIMEOUT, response.into_body().collect())
        .await
        .context("no body")??;
    let trailers = collected.trailers().cloned().context("no trailers")?;
    assert_eq!(collected.to_bytes(), grpc_frame(b"echo: hello gRPC"));
    assert_eq!(header(&trailers, "grpc-status"), "0", "{trailers:?}");
    assert_eq!(header(&trailers, "x-echo-bytes"), "15", "{trailers:?}");

    // Bidirectional: each message comes back before the next one is sent, so neither way
    // waits for the end of its stream.
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let request_body = StreamBody::new(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move {
            let data = rx.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(data)), rx))
        },
    )));
    let mut sender = h2c(proxy).await?;
    let request = Request::post("http://grpc.test/echo.Echo/Chat")
        .header("content-type", "application/grpc+proto")
        .header("te", "trailers")
        .body(request_body)?;
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
        .await
        .context("no response headers while the request stream is open")??;
    assert_eq!(response.status(), StatusCode::OK, "{response:?}");
    assert_eq!(header(response.headers(), "x-seen-path"), "/echo.Echo/Chat");
    let mut body = response.into_body();
    let mut sent = 0u64;
    for i in 0..20u64 {
        let message = grpc_frame(
            &Pattern::new(100 + i, i * 997)
                .flat_map(|c| c.to_vec())
                .collect::<Vec<_>>(),
        );
        sent += message.len() as u64;
        tx.send(message.clone()).await?;
        let mut back = Vec::new();
        while back.len() < message.len() {
            let frame = tokio::time::timeout(TIMEOUT, body.frame())
                .await
                .with_context(|| format!("message {i} not echoed while the stream is open"))?
                .with_context(|| format!("the response ended before message {i}"))??;
            let data = frame
                .into_data()
                .map_err(|f| anyhow::anyhow!("message {i}: a non-data frame {f:?}"))?;
            back.extend_from_slice(&data);
        }
        assert!(back == message, "message {i}: {} bytes back", back.len());
    }
    drop(tx);
    let rest = tokio::time::timeout(TIMEOUT, body.collect())
        .await
        .context("the response did not end after the request did")??;
    let trailers = rest.trailers().cloned().context("no trailers")?;
    assert!(rest.to_bytes().is_empty(), "data after the last echo");
    assert_eq!(header(&trailers, "grpc-status"), "0", "{trailers:?}");
    assert_eq!(
        header(&trailers, "x-echo-bytes"),
        sent.to_string(),
        "{trailers:?}"
    );

    // A non-gRPC request on the gRPC route, over HTTP/2: 415.
    let mut sender = h2c::<TestBody>(proxy).await?;
    let request = Request::post("http://grpc.test/echo.Echo/Say")
        .header("content-type", "application/json")
        .body(full("{}"))?;
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
        .await
        .context("no response")??;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body = response.into_body().collect().await?.to_bytes();
    let body: Value = serde_json::from_slice(&body)?;
    assert_eq!(
        body["message"],
        json!("Non-gRPC request matched gRPC route"),
        "{body}"
    );
    Ok(())
}

/// A gRPC route and its h2c upstream, on a fresh cluster with one DP; the DP is ready.
async fn grpc_cluster() -> Result<(Cluster, DataPlane, GrpcEcho)> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let dp = cluster.dp("dp1").await?;
    let upstream = GrpcEcho::start().await?;
    let admin = cluster.admin();
    expose(
        admin,
        json!({"name": "grpc-echo", "url": format!("grpc://{}", upstream.addr)}),
        json!({"name": "grpc", "protocols": ["grpc"], "paths": ["/echo.Echo"]}),
    )
    .await?;
    applied(admin, &dp).await?;
    Ok((cluster, dp, upstream))
}

#[tokio::test]
async fn grpc_over_http1_is_refused_with_426() -> Result<()> {
    let (_cluster, dp, _upstream) = grpc_cluster().await?;

    // As Kong (`kong.response.exit(426, ...)`; its `is_grpc_request` needs HTTP/2, so the
    // answer is a plain HTTP one) and as `Verdict::RequireHttp2` documents: 426, JSON,
    // `Connection: Upgrade`, `Upgrade: HTTP/2`.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .build()?;
    let refused = http
        .post(format!("{}/echo.Echo/Say", dp.proxy_url()?))
        .header("content-type", "application/grpc")
        .body(grpc_frame(b"hello").to_vec())
        .send()
        .await?;
    let (status, version) = (refused.status(), refused.version());
    let headers = refused.headers().clone();
    let text = refused.text().await?;
    assert_eq!(version, reqwest::Version::HTTP_11);
    assert!(
        header(&headers, "x-seen-path").is_empty(),
        "reached the upstream: {headers:?}"
    );
    assert_eq!(status.as_u16(), 426, "{headers:?} {text:?}");
    assert_eq!(header(&headers, "upgrade"), "HTTP/2", "{headers:?}");
    let body: Value = serde_json::from_str(&text).with_context(|| format!("{text:?}"))?;
    assert_eq!(
        body["message"],
        json!("Please use HTTP2 protocol"),
        "{body}"
    );
    assert_eq!(
        body["request_id"],
        json!(header(&headers, "x-gatehouse-request-id")),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn a_hundred_concurrent_uploads_arrive_intact() -> Result<()> {
    const EACH: u64 = MIB;
    const PER_PROTOCOL: u64 = 50;
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let dp = cluster.dp("dp1").await?;
    let bulk = Bulk::start().await?;
    bulk_route(&cluster, &dp, &bulk).await?;
    let proxy = dp.proxy_addr()?;

    // The expected digests, computed while the uploads run.
    let expected = tokio::task::spawn_blocking(|| {
        (0..2 * PER_PROTOCOL)
            .map(|seed| Pattern::new(1000 + seed, EACH).sha256())
            .collect::<Vec<_>>()
    });
    let h2 = h2c::<TestBody>(proxy).await?;
    let started = Instant::now();
    let mut uploads = JoinSet::new();
    for i in 0..PER_PROTOCOL {
        // HTTP/1.1: a connection each.
        uploads.spawn(async move {
            let seed = 1000 + i;
            let path = format!("/bulk/h1/{i}");
            (seed, upload(proxy, &path, Pattern::new(seed, EACH)).await)
        });
        // HTTP/2: streams of one connection.
        let mut h2 = h2.clone();
        uploads.spawn(async move {
            let seed = 1000 + PER_PROTOCOL + i;
            let request = Request::post(format!("http://bulk.test/bulk/h2/{i}"))
                .body(Pattern::new(seed, EACH).body());
            let seen = match request {
                Ok(request) => report(h2.send_request(request)).await,
                Err(e) => Err(e.into()),
            };
            (seed, seen)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = uploads.join_next().await {
        let (seed, seen) = joined?;
        results.push((
            seed,
            seen.with_context(|| format!("upload of seed {seed}"))?,
        ));
    }
    let took = started.elapsed();
    let expected = expected.await?;
    assert_eq!(results.len() as u64, 2 * PER_PROTOCOL);
    for (seed, seen) in results {
        let index = (seed - 1000) as usize;
        assert_eq!(seen["error"], Value::Null, "seed {seed}: {seen}");
        assert_eq!(seen["len"], json!(EACH), "seed {seed}: {seen}");
        assert_eq!(
            seen["sha256"],
            json!(expected[index]),
            "seed {seed}: {seen}"
        );
        // The DP speaks HTTP/1.1 to an `http` service, whatever the client spoke.
        assert_eq!(seen["version"], json!("HTTP/1.1"), "seed {seed}: {seen}");
    }
    // They really overlapped (the DP did not serialise them): the upstream read many at once.
    let most = bulk.most_uploading();
    eprintln!(
        "{} concurrent uploads of {} MiB in {took:.2?}; at most {most} at once upstream",
        2 * PER_PROTOCOL,
        mib(EACH)
    );
    assert!(
        most >= 10,
        "at most {most} uploads reached the upstream at once"
    );
    Ok(())
}

#[tokio::test]
async fn a_cut_body_reaches_the_other_side_as_cut_never_as_complete() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let dp = cluster.dp("dp1").await?;
    let bulk = Bulk::start().await?;
    bulk_route(&cluster, &dp, &bulk).await?;
    let proxy = dp.proxy_addr()?;

    // The upstream breaks a chunked answer after 3 MiB: an HTTP/1.1 and an HTTP/2 client must
    // see an error, never a clean end (which would pass a truncated body for a whole one).
    let path = format!("/bulk/broken/5/{}", 3 * MIB);
    let mut h1 = http1(proxy).await?;
    let request = Request::get(&path)
        .header("host", "bulk.test")
        .body(full(Bytes::new()))?;
    let response = tokio::time::timeout(TIMEOUT, h1.send_request(request))
        .await
        .context("no response headers")??;
    let (len, error) = read_outcome(response).await?;
    eprintln!("HTTP/1.1 client, broken upstream body: {len} bytes, then {error:?}");
    assert!(error.is_some(), "HTTP/1.1: a clean end after {len} bytes");
    assert!(len <= 3 * MIB, "{len}");
    let mut h2 = h2c::<TestBody>(proxy).await?;
    let request = Request::get(format!("http://bulk.test{path}")).body(full(Bytes::new()))?;
    let response = tokio::time::timeout(TIMEOUT, h2.send_request(request))
        .await
        .context("no response headers")??;
    let (len, error) = read_outcome(response).await?;
    eprintln!("HTTP/2 client, broken upstream body: {len} bytes, then {error:?}");
    assert!(error.is_some(), "HTTP/2: a clean end after {len} bytes");
    assert!(len <= 3 * MIB, "{len}");

    // The client goes away in the middle of a chunked upload: the upstream must see an error,
    // not a shorter body ended cleanly.
    let mut tcp = TcpStream::connect(proxy).await?;
    tcp.write_all(
        b"POST /bulk/cut HTTP/1.1\r\nHost: bulk.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await?;
    let mut sent = 0u64;
    for chunk in Pattern::new(6, MIB) {
        tcp.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await?;
        tcp.write_all(&chunk).await?;
        tcp.write_all(b"\r\n").await?;
        sent += chunk.len() as u64;
    }
    drop(tcp);
    let seen = bulk.report_for("/cut").await?;
    eprintln!("cut upload ({sent} bytes sent), the upstream saw: {seen}");
    assert!(
        seen["error"].is_string(),
        "the upstream took a cut upload ({sent} bytes sent, no last chunk) as complete: {seen}"
    );
    assert!(
        seen["len"].as_u64().is_some_and(|len| len <= sent),
        "{seen}"
    );
    Ok(())
}

/// Reads a response body to its end: its length, and the error that ended it, if any.
/// Fails when the body neither ends nor fails within [`TIMEOUT`] of its previous frame.
async fn read_outcome(response: Response<Incoming>) -> Result<(u64, Option<String>)> {
    ensure!(response.status() == StatusCode::OK, "{response:?}");
    let mut body = response.into_body();
    let mut len = 0u64;
    loop {
        let frame = tokio::time::timeout(TIMEOUT, body.frame())
            .await
            .with_context(|| format!("the body neither ended nor failed after {len} bytes"))?;
        match frame {
            None => return Ok((len, None)),
            Some(Err(e)) => return Ok((len, Some(e.to_string()))),
            Some(Ok(frame)) => {
                len += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
        }
    }
}
