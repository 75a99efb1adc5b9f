//! The proxy: the plain and TLS listeners, and the hyper service that routes each request with
//! the current [`Runtime`] and forwards it to the service's upstream.
//!
//! # Listeners
//! `--proxy-listen` addresses serve HTTP/1.1 and h2c (prior knowledge); `--proxy-ssl-listen`
//! addresses run each connection through [`TlsTerminator::accept`] (certificate by SNI, ALPN
//! `h2`/`http/1.1`) in its own task, then serve it the same way. Each bound address is logged as
//! `proxy listener listening addr=IP:PORT tls=false|true`.
//!
//! # A request
//! The runtime is loaded **once** per request ([`SharedRuntime::load_full`]) and kept until
//! the response headers are out. The router picks the route
//! ([`Router::find`](crate::router::Router::find)); then:
//! - no route: 404 `no Route matched with those values`;
//! - a route without a service: 503 `no Service found with those values`;
//! - the route's protocols refuse the request ([`Match::verdict`]): 426 / 301..308 to HTTPS,
//!   426 for gRPC over HTTP/1, 415, or the gRPC `grpcs` answer;
//! - otherwise the request goes to the service: `host:port`, or the service's host names an
//!   upstream and a target is picked by smooth weighted round-robin (nginx's order; targets
//!   of weight 0 get nothing).
//!
//! Error bodies are Kong's JSON `{"message": ..., "request_id": ...}`. Every response carries
//! `X-Gatehouse-Request-Id`, a UUID v4 made for the request (also sent upstream).
//!
//! # Upstream request
//! Absolute-form URI `http://host:port{upstream path}{?query}`, HTTP/1.1 (HTTP/2 for `grpc`
//! services), hop-by-hop headers removed (`Connection` and the headers it names,
//! `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`), `Host`
//! the service's host (the client's with `preserve_host`), `X-Forwarded-For` (appended),
//! `X-Forwarded-Proto`, `-Host`, `-Port`, `-Path`, `-Prefix` (with `strip_path`, when the
//! stripped prefix is not `/`), `X-Real-IP`, `Via: <client Via>, 1.1 gatehouse/<version>`.
//! Client-sent `X-Forwarded-Proto/-Host/-Port/-Path/-Prefix` are passed through when the TCP
//! peer is in `--trusted-ips` (each one we would set is still set when the client sent none)
//! and replaced otherwise; `X-Forwarded-For` is appended to either way (nginx's
//! `$proxy_add_x_forwarded_for`). A trusted `X-Forwarded-Proto: https` also counts as TLS for
//! the route's protocols ([`Match::verdict`]: no redirect to HTTPS). Bodies stream both ways
//! (hyper's `Incoming` is handed through, never collected).
//!
//! The response loses its hop-by-hop headers and gains `Via`, `X-Gatehouse-Upstream-Latency`
//! (ms from sending to the response headers) and `X-Gatehouse-Proxy-Latency` (ms spent before
//! sending).
//!
//! # Upstream client, timeouts, retries
//! One hyper-util legacy [`Client`] per process for plain upstreams (one for HTTP/1.1, one
//! for h2c): pooled keep-alive connections per `host:port`. Each attempt has its own `Timers`
//! (module `timing`): the service's `connect_timeout` bounds the connect (in the connector),
//! `write_timeout` the longest stall while the request body goes out, `read_timeout` the
//! wait for the response headers once the request is sent and every pause between two
//! reads of the response body (the body is then cut: the client sees a truncated response,
//! never a complete-looking one). Expired → 504 `The upstream server is timing out`; a
//! failed connection (refused, reset, DNS) → 502 `An invalid response was received from the
//! upstream server`. On the client side, `--client-header-timeout` bounds the TLS handshake
//! and each request's headers, and `--client-body-timeout` the pauses of a request body (→
//! 408); a malformed body (broken chunked encoding) → 400.
//!
//! `service.retries` extra attempts (each on the next target) follow a **connection**
//! failure or connect timeout, but only for a request without a body: once a body has been
//! handed to the client it cannot be replayed, so a request with a body gets one attempt. A
//! read timeout is not retried (it would multiply the load on a slow upstream).
//!
//! # Hostile clients
//! Every HTTP/1 connection reads through the head guard (module `head`): each request head is
//! measured as it arrives against `--client-max-request-line` (414 `Request-URI Too Large`),
//! `--client-max-header-size` and `--client-max-headers-size` (400 `Request header or cookie
//! too large`, Kong's answer to nginx's 494), checked for request smuggling (400 `Bad
//! request`), and a refused head never reaches hyper or the upstream: the answer has a body in
//! the client's format and the connection closes after it (with a lingering close). HTTP/2
//! requests get the same limits after decoding; h2's own `SETTINGS_MAX_HEADER_LIST_SIZE`,
//! concurrent-stream, reset-stream and CONTINUATION limits stop the rest with `GOAWAY`. The
//! first request head of a connection must be complete within `--client-header-timeout`, as
//! every later one (hyper's timer).
//!
//! # Generated responses
//! Errors and protocol answers (module `respond`) follow the client's `Accept` (JSON, HTML,
//! XML, plain text; gRPC requests get `grpc-status`), carry `Server: gatehouse/<version>` and
//! `X-Gatehouse-Response-Latency`. Proxied responses get `Server` only when the upstream
//! sent none.
//!
//! # Shutdown
//! When the data plane stops, the listeners close and every connection finishes the
//! requests in flight (HTTP/1.1: closes after the response; HTTP/2: `GOAWAY`); upgraded
//! tunnels count as open. `Drain::wait` bounds that by `--drain-timeout`.
//!
//! # Upgrades
//! An HTTP/1.1 request with `Connection: upgrade` and `Upgrade: X` (WebSocket, ...) to an
//! HTTP/1.1 upstream keeps those two headers; when the upstream answers 101, the client
//! gets the 101 and both connections are joined byte for byte until either closes. Upgrades
//! from HTTP/2 clients (extended CONNECT) are not supported: the request goes without them.
//!
//! `https` and `grpcs` services go through the `upstream` module (one client and pool per TLS
//! setting and server name; see there). The proxy never panics on a request: every failure
//! becomes a response.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use gatehouse_shared::model;

use crate::acme::{self, Acme};
use crate::config::{
    ClientLimits, ClientTimeouts, ProxySettings, TrustedIps, UpstreamKeepalive, UpstreamTlsFiles,
};
use crate::metrics::{self, METRICS, Observed, Recorder};
use crate::plugins::{self, Plugins, VerifiedCertificates};
use crate::router::{Match, Protocol, RequestParts, Verdict, split_host_port};
use crate::runtime::{Part, Runtime, SharedRuntime};
use crate::tls::{Accepted, PairFlags, TlsError, TlsInfo, TlsTerminator};
use crate::upstream::{TlsClient, UpstreamTls, UpstreamTlsError, UpstreamTlsSettings};

mod balancer;
mod head;
mod respond;
mod timing;

pub(crate) use balancer::{Balancers, HashInput, Outcome, Peer};
use balancer::{HashKey, Ring};
use head::{HeadGuard, MAX_HEADER_LINES, Refusal, Refusals};
use respond::{Failure, Format};
pub(crate) use timing::ConnectScope;
use timing::{ClientFault, ConnectTimedOut, Connector, Expired, IdleTimeout, RequestBody, Timers};

/// The request id header, both ways.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-gatehouse-request-id");
/// Milliseconds from sending the request upstream to its response headers.
pub const UPSTREAM_LATENCY: HeaderName = HeaderName::from_static("x-gatehouse-upstream-latency");
/// Milliseconds spent in the proxy before sending the request upstream.
pub const PROXY_LATENCY: HeaderName = HeaderName::from_static("x-gatehouse-proxy-latency");
/// Milliseconds from the request to a response the proxy wrote itself (no upstream).
pub const RESPONSE_LATENCY: HeaderName = HeaderName::from_static("x-gatehouse-response-latency");
/// The connector's own connect deadline; each request is also bounded by its service's
/// timeouts.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// HTTP/2: most streams open at once on one connection (hyper's default, made explicit).
const H2_MAX_CONCURRENT_STREAMS: u32 = 200;
/// HTTP/2: most streams the client opened and reset before they were accepted; one more and
/// the connection gets `GOAWAY` `ENHANCE_YOUR_CALM` (rapid reset, CVE-2023-44487; h2's
/// default, made explicit).
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// HTTP/2: most streams the server reset for protocol errors on one connection before it
/// sends `GOAWAY` (hyper's default, made explicit).
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// HTTP/2: bytes each header field counts beyond its name and value (RFC 9113 §6.5.2).
const H2_FIELD_OVERHEAD: usize = 32;
/// Room above the configured head limits before hyper's own hard limits answer (bare 431).
const HARD_LIMIT_SLACK: usize = 16 * 1024;
/// Pause after an accept error (e.g. out of file descriptors) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// `Via` sent upstream, by the client's HTTP version.
const VIA_HTTP_10: HeaderValue =
    HeaderValue::from_static(concat!("1.0 gatehouse/", env!("CARGO_PKG_VERSION")));
const VIA_HTTP_11: HeaderValue =
    HeaderValue::from_static(concat!("1.1 gatehouse/", env!("CARGO_PKG_VERSION")));
const VIA_HTTP_2: HeaderValue =
    HeaderValue::from_static(concat!("2 gatehouse/", env!("CARGO_PKG_VERSION")));
const VIA_HTTP_3: HeaderValue =
    HeaderValue::from_static(concat!("3 gatehouse/", env!("CARGO_PKG_VERSION")));

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PATH: HeaderName = HeaderName::from_static("x-forwarded-path");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that concern one connection only, never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The response body: the upstream's, streamed, or one the proxy wrote.
pub type ProxyBody = BoxBody<Bytes, BoxError>;
/// A body error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body sent upstream.
pub(crate) type UpstreamBody = BoxBody<Bytes, BoxError>;

/// Why the proxy listeners cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// An address cannot be bound.
    #[error("cannot listen on {addr} (proxy listener): {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS listener cannot be set up (default certificate files), or the global
    /// upstream client certificate cannot be loaded.
    #[error("proxy TLS: {0}")]
    Tls(#[from] crate::tls::TlsSetupError),
    /// The `--upstream-trusted-ca` bundle cannot be used.
    #[error("--upstream-trusted-ca {}: {reason}", .path.display())]
    TrustedCa {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The bound proxy listeners, not yet serving.
pub(crate) struct Listeners {
    proxy: Arc<Proxy>,
    bound: Vec<(TcpListener, SocketAddr, Option<Arc<TlsTerminator>>)>,
}

/// What every request shares: the runtime holder, the upstream clients, the balancers.
struct Proxy {
    runtime: Arc<SharedRuntime>,
    http1: Client<Connector, UpstreamBody>,
    h2c: Client<Connector, UpstreamBody>,
    balancers: Balancers,
    via: HeaderValue,
    /// `--trusted-ips`.
    trusted_ips: TrustedIps,
    /// `--client-header-timeout`, `--client-body-timeout`.
    timeouts: ClientTimeouts,
    /// `--client-max-request-line`, `--client-max-header-size`, `--client-max-headers-size`.
    limits: ClientLimits,
    /// HTTP/1.1 + HTTP/2 server settings, shared by every connection.
    server: auto::Builder<TokioExecutor>,
    /// The connections being served, for the drain at shutdown.
    drain: Arc<Drain>,
    /// Clients of `https` and `grpcs` upstreams, one pool per TLS setting and server name.
    upstream_tls: UpstreamTls,
    /// The plugins of each runtime (shared with the TLS terminator).
    plugins: Arc<Plugins>,
    /// The ACME challenges of each runtime (HTTP-01 answers).
    acme: Arc<Acme>,
}

/// The client a request goes upstream with.
enum UpstreamClient<'p> {
    Plain(&'p Client<Connector, UpstreamBody>),
    Tls(Box<TlsClient>),
}

/// The connection a request came on.
struct Connection {
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<Arc<TlsInfo>>,
    /// The peer is in `--trusted-ips`: its `X-Forwarded-*` headers are believed.
    trusted: bool,
    /// Client-certificate verifications done for this connection (`mtls-auth`).
    verified: VerifiedCertificates,
    /// The peer's IP and the local port, as header values (`X-Real-IP`, `X-Forwarded-For`,
    /// `X-Forwarded-Port`), made once per connection.
    client_ip: HeaderValue,
    local_port: HeaderValue,
    /// HTTP/1 requests received so far, to find the one the head guard refused.
    requests: AtomicU64,
    /// The request the head guard refused, if any.
    refusals: Arc<Refusals>,
    /// Requests started and in flight, to close idle connections.
    activity: Arc<Activity>,
}

/// Requests of one connection: how many started, how many are in flight (until their
/// response body is done or dropped).
#[derive(Debug, Default)]
struct Activity {
    started: AtomicU64,
    in_flight: AtomicUsize,
}

/// One request in flight; dropping it counts it done.
struct Active(Arc<Activity>);

/// A response body that keeps its request counted in flight, and counts its bytes for the
/// request's metrics.
struct InFlight {
    body: ProxyBody,
    _active: Active,
    recorder: Recorder,
}

/// Counts the connections (and upgraded tunnels) still open, so that a shutdown can wait
/// for them.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    open: AtomicUsize,
    closed: Notify,
}

/// One open connection or tunnel; dropping it counts it closed.
pub(crate) struct Open(Arc<Drain>);

// === impl Listeners ===

impl Listeners {
    /// Binds every address of `plain` and `tls` (TLS ones with a terminator made from
    /// `settings.tls`), logging each bound address. `acme` answers ACME validations (it is
    /// registered as a part by the caller).
    pub(crate) async fn bind(
        plain: &[SocketAddr],
        tls: &[SocketAddr],
        settings: &ProxySettings,
        runtime: Arc<SharedRuntime>,
        acme: Arc<Acme>,
    ) -> Result<Self, ProxyError> {
        let plugins = Arc::new(Plugins::default());
        let terminator = if tls.is_empty() {
            None
        } else {
            Some(Arc::new(
                TlsTerminator::from_settings(&settings.tls, runtime.clone())?
                    .with_plugins(plugins.clone())
                    .with_acme(acme.clone()),
            ))
        };
        let mut bound = Vec::new();
        for (addr, terminator) in plain
            .iter()
            .map(|a| (a, None))
            .chain(tls.iter().map(|a| (a, terminator.clone())))
        {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Listen {
                    addr: *addr,
                    source,
                })?;
            let local = listener.local_addr().map_err(|source| ProxyError::Listen {
                addr: *addr,
                source,
            })?;
            tracing::info!(addr = %local, tls = terminator.is_some(), "proxy listener listening");
            bound.push((listener, local, terminator));
        }
        let upstream_tls = upstream_tls(&settings.upstream, settings.upstream_keepalive)?;
        let proxy = Arc::new(Proxy::new(
            runtime.clone(),
            settings,
            upstream_tls,
            plugins.clone(),
            acme,
        ));
        // In dependency order: the TLS configs use the plugin plan.
        let plugins: Arc<dyn Part> = plugins;
        runtime.register(Arc::downgrade(&plugins));
        if let Some(terminator) = terminator {
            let terminator: Arc<dyn Part> = terminator;
            runtime.register(Arc::downgrade(&terminator));
        }
        let part: Arc<dyn Part> = proxy.clone();
        runtime.register(Arc::downgrade(&part));
        let weak = Arc::downgrade(&proxy);
        metrics::target_health_from(Box::new(move |runtime| {
            weak.upgrade()
                .map(|proxy| proxy.balancers.for_runtime(runtime).target_health())
                .unwrap_or_default()
        }));
        Ok(Self { proxy, bound })
    }

    /// The bound addresses, with whether each is TLS.
    pub(crate) fn addrs(&self) -> Vec<(SocketAddr, bool)> {
        self.bound
            .iter()
            .map(|(_, addr, tls)| (*addr, tls.is_some()))
            .collect()
    }

    /// The drain counter of these listeners' connections.
    pub(crate) fn drain(&self) -> Arc<Drain> {
        self.proxy.drain.clone()
    }

    /// Starts one accept loop per listener; they end when `stop` turns true, and then every
    /// open connection finishes its requests in flight and closes (HTTP/1.1 `Connection:
    /// close`, HTTP/2 `GOAWAY`).
    pub(crate) fn serve(self, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        self.bound
            .into_iter()
            .map(|(listener, local, tls)| {
                tokio::spawn(accept_loop(
                    listener,
                    local,
                    tls,
                    self.proxy.clone(),
                    stop.clone(),
                ))
            })
            .collect()
    }
}

async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<Arc<TlsTerminator>>,
    proxy: Arc<Proxy>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = crate::stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, addr = %local, "proxy listener: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let open = proxy.drain.open();
        tokio::spawn(serve_connection(
            tcp,
            peer,
            local,
            tls.clone(),
            proxy.clone(),
            stop.clone(),
            open,
        ));
    }
}

/// Runs the TLS handshake when the listener is TLS, then serves HTTP/1.1 or HTTP/2 on it.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<Arc<TlsTerminator>>,
    proxy: Arc<Proxy>,
    stop: watch::Receiver<bool>,
    open: Open,
) {
    METRICS.accepted();
    let trusted = proxy.trusted_ips.contains(peer.ip());
    let mut conn = Connection {
        peer,
        local,
        tls: None,
        trusted,
        verified: VerifiedCertificates::default(),
        client_ip: header_value(&peer.ip().to_string()),
        local_port: HeaderValue::from(local.port()),
        requests: AtomicU64::new(0),
        refusals: Arc::default(),
        activity: Arc::default(),
    };
    match tls {
        None => serve_http(tcp, Arc::new(conn), proxy, stop).await,
        Some(terminator) => {
            // A client that never finishes its handshake gets the header timeout.
            let limit = proxy.timeouts.header;
            match tokio::time::timeout(limit, terminator.accept(tcp)).await {
                Ok(Ok(Accepted::Connection(stream))) => {
                    conn.tls = Some(stream.info().clone());
                    serve_http(stream, Arc::new(conn), proxy, stop).await;
                }
                Ok(Ok(Accepted::AcmeValidation { server_name })) => {
                    // debug: anyone may repeat a validation; the metric counts them.
                    tracing::debug!(%server_name, %peer, "answered an ACME tls-alpn-01 validation");
                }
                // Our own configuration refusing the connection is the operator's problem, not
                // the client's: said loudly. Clients' failures stay at debug (no log flood).
                Ok(Err(error @ TlsError::Config(_))) => {
                    tracing::error!(%error, %peer, "TLS connection refused");
                }
                Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
    METRICS.closed();
    drop(open);
}

/// Serves HTTP/1.1 or HTTP/2 on `io`, every request head measured first by the
/// [`HeadGuard`].
async fn serve_http<IO>(
    io: IO,
    conn: Arc<Connection>,
    proxy: Arc<Proxy>,
    mut stop: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let io = TokioIo::new(
        HeadGuard::new(io, proxy.limits, conn.refusals.clone())
            .first_head_within(proxy.timeouts.header),
    );
    let server = proxy.server.clone();
    let idle_limit = proxy.timeouts.header;
    let activity = conn.activity.clone();
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let conn = conn.clone();
        async move {
            let active = Active::start(&conn.activity);
            let (response, recorder) = proxy.handle(&conn, req).await;
            Ok::<_, Infallible>(response.map(|body| InFlight {
                body,
                _active: active,
                recorder,
            }))
        }
    });
    let connection = server.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    // A connection with nothing in flight and no new request for a whole period of
    // `--client-header-timeout` is closed (HTTP/2 `GOAWAY`; hyper's own timer already ends
    // idle HTTP/1 connections): after one to two periods, or three for an HTTP/2 client that
    // ignores the `GOAWAY`.
    let mut idle_check =
        tokio::time::interval_at(tokio::time::Instant::now() + idle_limit, idle_limit);
    let mut seen = activity.started.load(Ordering::Relaxed);
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            () = crate::stopped(&mut stop) => {
                connection.as_mut().graceful_shutdown();
                break connection.await;
            }
            _ = idle_check.tick() => {
                let started = activity.started.load(Ordering::Relaxed);
                if started == seen && activity.in_flight.load(Ordering::Relaxed) == 0 {
                    tracing::debug!(%peer, "idle proxy connection closed");
                    connection.as_mut().graceful_shutdown();
                    // An HTTP/2 client that never answers the shutdown's PING would hold
                    // the connection open: it gets one more period, then is dropped.
                    match tokio::time::timeout(idle_limit, connection.as_mut()).await {
                        Ok(result) => break result,
                        Err(_) => break Ok(()),
                    }
                }
                seen = started;
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "proxy connection ended with an error");
    }
}

// === impl Active ===

impl Active {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl InFlight ===

impl Body for InFlight {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.recorder.sent(data.len());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

// === impl Drain ===

impl Drain {
    /// Counts one connection open until the [`Open`] is dropped.
    pub(crate) fn open(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// Connections and tunnels open now.
    pub(crate) fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until every connection has closed, or `limit`; returns how many are still open.
    pub(crate) async fn wait(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let closed = self.closed.notified();
            let open = self.open_count();
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return self.open_count();
            }
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

// === impl Proxy ===

impl Part for Proxy {
    /// The balancer rings and the upstream TLS settings (the plugin plan and the TLS
    /// configs are parts of their own).
    fn prepare(&self, runtime: &Arc<Runtime>, warnings: &mut Vec<String>) -> Result<(), String> {
        self.balancers.prepare(runtime, warnings)?;
        self.upstream_tls.prepare(runtime, warnings)
    }
}

impl Proxy {
    fn new(
        runtime: Arc<SharedRuntime>,
        settings: &ProxySettings,
        upstream_tls: UpstreamTls,
        plugins: Arc<Plugins>,
        acme: Arc<Acme>,
    ) -> Self {
        let mut http = HttpConnector::new();
        // The connector below applies each service's connect timeout.
        http.set_connect_timeout(None);
        http.set_nodelay(true);
        let connector = Connector::new(http, MAX_CONNECT_TIMEOUT);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(settings.upstream_keepalive.idle_timeout)
            .pool_max_idle_per_host(settings.upstream_keepalive.pool_size)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // Host is written by the proxy (service host, or the client's with preserve_host).
            .set_host(false);
        let http1 = builder.build(connector.clone());
        let h2c = builder.http2_only(true).build(connector);
        let via = HeaderValue::from_static(concat!("1.1 gatehouse/", env!("CARGO_PKG_VERSION")));
        let limits = settings.limits;
        // The head guard enforces the limits with a proper answer; hyper's own limits, a
        // little above, only matter once the guard has stepped aside (after an upgrade
        // request) and answer with a bare 431.
        let head_bytes = limits.request_line + limits.headers;
        let mut server = auto::Builder::new(TokioExecutor::new());
        server
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.timeouts.header)
            .max_buf_size((head_bytes + HARD_LIMIT_SLACK).max(8192));
        server
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(
                u32::try_from(head_bytes + MAX_HEADER_LINES * H2_FIELD_OVERHEAD)
                    .unwrap_or(u32::MAX),
            )
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
        Self {
            runtime,
            http1,
            h2c,
            balancers: Balancers::default(),
            via,
            trusted_ips: settings.trusted_ips.clone(),
            timeouts: settings.timeouts,
            limits,
            server,
            drain: Arc::default(),
            upstream_tls,
            plugins,
            acme,
        }
    }

    /// Answers one request; never fails (every failure is a response). The recorder
    /// finishes the request's metrics with the response body.
    async fn handle(
        &self,
        conn: &Connection,
        req: Request<Incoming>,
    ) -> (Response<ProxyBody>, Recorder) {
        let started = Instant::now();
        let mut observed = Observed::default();
        let ingress = req.body().size_hint().exact().unwrap_or(0);
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let request_id: &str = Uuid::new_v4().hyphenated().encode_lower(&mut id);
        let id_value = header_value(request_id);
        let format = Format::of(req.version(), req.headers());
        // One load per request. `load_full` (one reference count) rather than an arc-swap
        // guard: the request holds it across awaits for as long as the upstream takes, and
        // long-held guards exhaust arc-swap's per-thread fast slots.
        let runtime = self.runtime.load_full();
        let routed = match self.refusal(conn, &req) {
            Some(refusal) => Ok(refused(
                refusal,
                conn.peer,
                req.version(),
                request_id,
                format,
            )),
            None if let Some(answer) = self.acme_http01(&runtime, conn, &req) => Ok(answer),
            None => {
                self.route(
                    &runtime,
                    conn,
                    req,
                    request_id,
                    &id_value,
                    format,
                    started,
                    &mut observed,
                )
                .await
            }
        };
        let mut response = routed.unwrap_or_else(|failure| failure.response(request_id, format));
        let status = response.status().as_u16();
        METRICS.response(status);
        let recorder = Recorder::new(&runtime, observed, status, started, ingress);
        let headers = response.headers_mut();
        if !headers.contains_key(&UPSTREAM_LATENCY) {
            headers.insert(RESPONSE_LATENCY, millis(started.elapsed()));
        }
        headers.insert(REQUEST_ID, id_value);
        (response, recorder)
    }

    /// Why a request is refused before routing: the head guard refused it (HTTP/1), or it
    /// exceeds the head limits (HTTP/2, or HTTP/1 the guard stepped aside for).
    fn refusal<B>(&self, conn: &Connection, req: &Request<B>) -> Option<Refusal> {
        if req.version() != Version::HTTP_2 {
            let index = conn.requests.fetch_add(1, Ordering::Relaxed);
            if let Some(refusal) = conn.refusals.of(index) {
                return Some(refusal);
            }
        }
        Refusal::of_request(
            &self.limits,
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
        )
    }

    /// The answer to an ACME HTTP-01 validation, before routing: on a plain listener, `GET`
    /// or `HEAD` of a pending challenge's path on its domain. Anything else (another token
    /// or host) is routed as usual.
    fn acme_http01<B>(
        &self,
        runtime: &Runtime,
        conn: &Connection,
        req: &Request<B>,
    ) -> Option<Response<ProxyBody>> {
        if conn.tls.is_some() || !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
            return None;
        }
        let token = req.uri().path().strip_prefix(acme::HTTP01_PATH)?;
        let (host, _) = split_host_port(request_authority(req)?);
        let challenges = self.acme.for_runtime(runtime);
        let body = challenges
            .http01(token, &host.to_ascii_lowercase(), acme::unix_now())?
            .clone();
        METRICS.acme_answer(false);
        // debug: anyone may repeat a validation; the metric counts them.
        tracing::debug!(%host, peer = %conn.peer, "answered an ACME http-01 validation");
        Some(respond::acme_http01(body))
    }

    #[allow(clippy::too_many_arguments)]
    async fn route(
        &self,
        runtime: &Runtime,
        conn: &Connection,
        req: Request<Incoming>,
        request_id: &str,
        id_value: &HeaderValue,
        format: Format,
        started: Instant,
        observed: &mut Observed,
    ) -> Result<Response<ProxyBody>, Failure> {
        let authority = request_authority(&req);
        let (host, host_port) = split_host_port(authority.unwrap_or(""));
        let tls = conn.tls.is_some();
        // The router sees gRPC by content type on any version (its verdict answers gRPC over
        // HTTP/1 with 426); the error format only on HTTP/2.
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let protocol = match (tls, grpc) {
            (false, false) => Protocol::Http,
            (true, false) => Protocol::Https,
            (false, true) => Protocol::Grpc,
            (true, true) => Protocol::Grpcs,
        };
        let parts = RequestParts {
            method: req.method().as_str(),
            host: &host,
            port: host_port.unwrap_or(conn.local.port()),
            path: req.uri().path(),
            headers: req.headers(),
            sni: conn.tls.as_ref().and_then(|t| t.server_name()),
            protocol,
        };
        let found = runtime.router().find(&parts).ok_or(Failure::NoRoute)?;
        observed.route = Some(found.route_index());
        let http2 = req.version() == Version::HTTP_2;
        // A trusted proxy in front may have terminated TLS (Kong's `forwarded_proto`).
        let forwarded_https = conn.trusted
            && req
                .headers()
                .get(&X_FORWARDED_PROTO)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        let seen_as = match (forwarded_https, protocol) {
            (true, Protocol::Http) => Protocol::Https,
            (true, Protocol::Grpc) => Protocol::Grpcs,
            (_, protocol) => protocol,
        };
        match found.verdict(seen_as, http2) {
            Verdict::Proxy => {}
            Verdict::RequireHttps { status } => {
                return Ok(respond::require_https(
                    status,
                    authority,
                    req.uri(),
                    request_id,
                    format,
                ));
            }
            Verdict::RequireHttp2 => {
                let mut response = respond::message(
                    StatusCode::UPGRADE_REQUIRED,
                    "Please use HTTP2 protocol",
                    request_id,
                    format,
                );
                let headers = response.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
                headers.insert(header::UPGRADE, HeaderValue::from_static("HTTP/2"));
                return Ok(response);
            }
            Verdict::RejectNonGrpc => {
                return Ok(respond::message(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "Non-gRPC request matched gRPC route",
                    request_id,
                    format,
                ));
            }
            Verdict::RequireGrpcs => {
                return Ok(respond::grpc_error("1", "gRPC request matched gRPCs route"));
            }
        }
        // Plugins (authentication, authorisation) before anything reaches a service.
        let identity = match self.plugins.for_runtime(runtime).route(found.route_index()) {
            Some(plugins) => {
                let request = plugins::Request {
                    tls: conn.tls.as_deref(),
                    protocol: seen_as,
                    client_ip: conn.peer.ip(),
                    verified: &conn.verified,
                    revocation: self.plugins.revocation(),
                };
                match plugins.access(runtime, &request).await {
                    Ok(identity) => identity,
                    Err(denied) => {
                        observed.source = metrics::Source::Exit;
                        return Ok(respond::message(
                            denied.status,
                            denied.message,
                            request_id,
                            format,
                        ));
                    }
                }
            }
            None => None,
        };
        let service = found
            .service_index()
            .and_then(|i| runtime.service_at(i))
            .ok_or(Failure::NoService)?;
        // A service whose host names an upstream is balanced over its targets.
        let upstream = runtime.upstream_by_name(&service.host);
        if metrics::wants_consumer() {
            observed.consumer = identity.as_ref().and_then(plugins::consumer_of);
        }
        let mut target = Target::new(&found, service, upstream, &req, &host);
        target.identity = identity;
        let rings = self.balancers.for_runtime(runtime);
        let ring = match upstream {
            Some(upstream) => Some(rings.ring(&upstream.id).ok_or(Failure::NoPeer)?),
            None => None,
        };
        let key = match ring {
            Some(ring) => {
                let captures = if ring.wants_captures() {
                    found.captures()
                } else {
                    None
                };
                ring.hash_key(&HashInput {
                    client_ip: conn.peer.ip(),
                    headers: req.headers(),
                    path: found.path(),
                    query: req.uri().query(),
                    captures: captures.as_ref(),
                    consumer: None,
                })
            }
            None => HashKey::default(),
        };
        let balance = Balance {
            upstream,
            ring,
            key,
        };
        self.forward(
            runtime, service, target, balance, conn, req, id_value, started, observed,
        )
        .await
    }

    /// The client for `service`'s protocol: the shared plain HTTP/1.1 or h2c client, or the
    /// TLS client of the service's TLS setting and the server name for `peer` (`https`,
    /// `grpcs`; the name is only worked out for those).
    fn client_for(
        &self,
        runtime: &Runtime,
        service: &model::Service,
        upstream: Option<&model::Upstream>,
        target: &Target,
        peer: &Peer,
    ) -> Result<UpstreamClient<'_>, Failure> {
        match service.protocol.as_str() {
            "http" => Ok(UpstreamClient::Plain(&self.http1)),
            "grpc" => Ok(UpstreamClient::Plain(&self.h2c)),
            "https" | "grpcs" => self
                .upstream_tls
                .client(
                    runtime,
                    service,
                    upstream,
                    &target.server_name(peer),
                    target.http2,
                )
                .map(|client| UpstreamClient::Tls(Box::new(client)))
                .map_err(|error| {
                    tracing::warn!(service = %service.id, %error, "upstream TLS unusable");
                    Failure::BadUpstream
                }),
            other => {
                tracing::warn!(
                    service = %service.id,
                    protocol = other,
                    "upstream protocol not supported by the HTTP proxy"
                );
                Err(Failure::BadUpstream)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        runtime: &Runtime,
        service: &model::Service,
        target: Target,
        balance: Balance<'_>,
        conn: &Connection,
        mut req: Request<Incoming>,
        request_id: &HeaderValue,
        started: Instant,
        observed: &mut Observed,
    ) -> Result<Response<ProxyBody>, Failure> {
        let version = if target.http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        // An HTTP/1.1 `Upgrade` request (WebSocket, ...) to an HTTP/1.1 upstream: the
        // Upgrade and Connection headers go along, and a 101 answer joins both connections.
        let upgrade = match upgrade_protocol(&req) {
            Some(protocol) if version == Version::HTTP_11 => {
                Some((protocol, hyper::upgrade::on(&mut req)))
            }
            _ => None,
        };
        let (parts, body) = req.into_parts();
        let mut headers = self.upstream_headers(&parts, &target, conn, request_id);
        if let Some((protocol, _)) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        let mut upgrade = upgrade.map(|(_, on)| on);
        let replayable = body.is_end_stream();
        let mut body = Some(body);
        let attempts = if replayable {
            u32::from(service.retries) + 1
        } else {
            1
        };
        let millis = |ms: u32| Duration::from_millis(u64::from(ms));
        let (connect_timeout, write_timeout, read_timeout) = (
            millis(service.connect_timeout),
            millis(service.write_timeout),
            millis(service.read_timeout),
        );
        let direct = Peer {
            host: service.host.clone(),
            port: service.port,
        };

        let mut last = Failure::BadUpstream;
        for attempt in 0..attempts {
            let (peer, pick) = match balance.ring {
                Some(ring) => {
                    let pick = ring.pick(&balance.key, attempt).ok_or(Failure::NoPeer)?;
                    (pick.peer, Some(pick))
                }
                None => (&direct, None),
            };
            let report = |outcome| {
                if let Some(pick) = &pick {
                    pick.report(outcome);
                }
            };
            let client = self.client_for(runtime, service, balance.upstream, &target, peer)?;
            let uri = upstream_uri(
                peer,
                matches!(client, UpstreamClient::Tls(_)),
                &target.path,
                parts.uri.query(),
            )?;
            let timers = Timers::new(
                connect_timeout,
                write_timeout,
                read_timeout,
                self.timeouts.body,
                !replayable,
            );
            let mut request = Request::new(match body.take() {
                Some(incoming) if !replayable => RequestBody::new(incoming, timers.clone()).boxed(),
                _ => Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            });
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = uri;
            *request.version_mut() = version;
            *request.headers_mut() = headers.clone();
            if let Some(host) = target.host(peer) {
                request.headers_mut().insert(header::HOST, host);
            }

            METRICS.upstream_request();
            let sent = Instant::now();
            let proxy_latency = sent.duration_since(started);
            let upstream_addr = PeerAddr(peer);
            let response = match client {
                UpstreamClient::Plain(client) => client.request(request),
                UpstreamClient::Tls(client) => client.request(request),
            };
            match timers.watch(timers.scope(response)).await {
                Ok(Ok(mut response)) => {
                    let upstream_latency = sent.elapsed();
                    observed.source = metrics::Source::Service;
                    observed.proxied = Some((proxy_latency, upstream_latency));
                    report(Outcome::Status(response.status().as_u16()));
                    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    let upgraded = match upgrade.take() {
                        Some(client_side) if switching => {
                            let upstream_side = hyper::upgrade::on(&mut response);
                            let open = self.drain.open();
                            tokio::spawn(tunnel(client_side, upstream_side, open));
                            response.headers().get(header::UPGRADE).cloned()
                        }
                        _ => None,
                    };
                    let mut response =
                        self.downstream(response, proxy_latency, upstream_latency, read_timeout);
                    if let Some(protocol) = upgraded {
                        let headers = response.headers_mut();
                        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                        headers.insert(header::UPGRADE, protocol);
                    }
                    if let Some(cookie) = balance.key.set_cookie.clone() {
                        response.headers_mut().append(header::SET_COOKIE, cookie);
                    }
                    return Ok(response);
                }
                Ok(Err(error)) => {
                    match timers.fault() {
                        ClientFault::TimedOut => {
                            tracing::info!(
                                peer = %conn.peer,
                                timeout_ms = self.timeouts.body.as_millis() as u64,
                                "client body timeout"
                            );
                            return Err(Failure::ClientTimeout);
                        }
                        ClientFault::Broken => {
                            tracing::info!(
                                peer = %conn.peer,
                                error = %ErrorChain(&error),
                                "client request body broken"
                            );
                            return Err(Failure::BadRequest);
                        }
                        ClientFault::None => {}
                    }
                    let tls = UpstreamTlsError::find(&error);
                    let timed_out = caused_by::<ConnectTimedOut>(&error)
                        || matches!(tls, Some(UpstreamTlsError::Timeout { .. }));
                    report(if timed_out {
                        Outcome::TimedOut
                    } else {
                        Outcome::ConnectFailed
                    });
                    let retry = attempt + 1 < attempts
                        && tls.map_or(error.is_connect(), UpstreamTlsError::is_retryable);
                    match tls {
                        // Worded for operators: expired, unknown issuer, name mismatch, ...
                        Some(tls) => tracing::warn!(
                            error = %tls,
                            upstream = %upstream_addr,
                            attempt,
                            retry,
                            "upstream TLS failed"
                        ),
                        None => tracing::info!(
                            error = %ErrorChain(&error),
                            upstream = %upstream_addr,
                            attempt,
                            retry,
                            "upstream request failed"
                        ),
                    }
                    last = if timed_out {
                        Failure::UpstreamTimeout
                    } else {
                        Failure::BadUpstream
                    };
                    if !retry {
                        break;
                    }
                }
                Err(expired) => {
                    report(Outcome::TimedOut);
                    let (which, limit) = match expired {
                        Expired::Connect => ("connect", connect_timeout + read_timeout),
                        Expired::Write => ("write", write_timeout),
                        Expired::Read => ("read", read_timeout),
                    };
                    tracing::info!(
                        upstream = %upstream_addr,
                        timeout = which,
                        timeout_ms = limit.as_millis() as u64,
                        "upstream timed out"
                    );
                    return Err(Failure::UpstreamTimeout);
                }
            }
        }
        Err(last)
    }

    /// The headers sent upstream (without `Host`).
    fn upstream_headers(
        &self,
        parts: &http::request::Parts,
        target: &Target,
        conn: &Connection,
        request_id: &HeaderValue,
    ) -> HeaderMap {
        let mut headers = parts.headers.clone();
        // gRPC needs `TE: trailers` end to end; every other TE value is hop-by-hop.
        let te_trailers = headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        if te_trailers && target.http2 {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }

        match joined(&headers, &X_FORWARDED_FOR) {
            Some(existing) => {
                let client_ip = conn.client_ip.to_str().unwrap_or_default();
                set(
                    &mut headers,
                    X_FORWARDED_FOR,
                    &format!("{existing}, {client_ip}"),
                );
            }
            None => {
                headers.insert(X_FORWARDED_FOR, conn.client_ip.clone());
            }
        }
        headers.insert(X_REAL_IP, conn.client_ip.clone());
        // A trusted client's own values stay; ours fill what it did not send.
        let ours =
            |headers: &HeaderMap, name: &HeaderName| !(conn.trusted && headers.contains_key(name));
        if ours(&headers, &X_FORWARDED_PROTO) {
            let proto = if conn.tls.is_some() { "https" } else { "http" };
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if ours(&headers, &X_FORWARDED_HOST) {
            headers.remove(&X_FORWARDED_HOST);
            if !target.client_host.is_empty() {
                set(&mut headers, X_FORWARDED_HOST, &target.client_host);
            }
        }
        if ours(&headers, &X_FORWARDED_PORT) {
            headers.insert(X_FORWARDED_PORT, conn.local_port.clone());
        }
        if ours(&headers, &X_FORWARDED_PATH) {
            set(&mut headers, X_FORWARDED_PATH, parts.uri.path());
        }
        if ours(&headers, &X_FORWARDED_PREFIX) {
            headers.remove(&X_FORWARDED_PREFIX);
            if let Some(prefix) = &target.prefix {
                set(&mut headers, X_FORWARDED_PREFIX, prefix);
            }
        }
        let via = match parts.version {
            Version::HTTP_10 => &VIA_HTTP_10,
            Version::HTTP_2 => &VIA_HTTP_2,
            Version::HTTP_3 => &VIA_HTTP_3,
            _ => &VIA_HTTP_11,
        };
        match joined(&headers, &header::VIA) {
            Some(existing) => {
                let ours = via.to_str().unwrap_or_default();
                set(&mut headers, header::VIA, &format!("{existing}, {ours}"));
            }
            None => {
                headers.insert(header::VIA, via.clone());
            }
        }
        headers.insert(REQUEST_ID, request_id.clone());
        if let Some(identity) = &target.identity {
            plugins::strip_identity(&mut headers);
            for (name, value) in identity {
                headers.insert(name, value.clone());
            }
        }
        headers
    }

    /// The upstream response, with its hop-by-hop headers removed and ours added; its body
    /// fails after `read_timeout` without data from the upstream.
    fn downstream(
        &self,
        response: Response<Incoming>,
        proxy_latency: Duration,
        upstream_latency: Duration,
        read_timeout: Duration,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let via = match joined(&parts.headers, &header::VIA) {
            Some(existing) => HeaderValue::from_str(&format!(
                "{existing}, {}",
                self.via.to_str().unwrap_or_default()
            ))
            .unwrap_or_else(|_| self.via.clone()),
            None => self.via.clone(),
        };
        parts.headers.insert(header::VIA, via);
        parts
            .headers
            .entry(header::SERVER)
            .or_insert(respond::SERVER);
        parts
            .headers
            .insert(UPSTREAM_LATENCY, millis(upstream_latency));
        parts.headers.insert(PROXY_LATENCY, millis(proxy_latency));
        // The client's connection decides its own version.
        parts.version = Version::HTTP_11;
        Response::from_parts(parts, IdleTimeout::new(body, read_timeout).boxed())
    }
}

/// The answer to a refused request head; on HTTP/1 the connection closes after it (what
/// follows on it cannot be trusted to be framed as the client meant).
fn refused(
    refusal: Refusal,
    peer: SocketAddr,
    version: Version,
    request_id: &str,
    format: Format,
) -> Response<ProxyBody> {
    // Debug, as failed handshakes: an abusive client must not be able to flood the log.
    tracing::debug!(%peer, reason = refusal.reason(), "request refused");
    let (status, text) = refusal.status_and_message();
    let mut response = respond::message(status, text, request_id, format);
    if version != Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The protocol a client asks to switch to (`Upgrade` with `upgrade` in `Connection`), on
/// HTTP/1.1 only.
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// Copies bytes both ways between an upgraded client connection and its upstream
/// connection until either side closes.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _open: Open,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%error, "upgraded connection ended with an error");
    }
}

/// How a request picks its upstream address: the upstream's ring and the request's hash key,
/// or the service's own `host:port` (no ring).
struct Balance<'r> {
    upstream: Option<&'r model::Upstream>,
    ring: Option<&'r Ring>,
    key: HashKey,
}

/// What the upstream request needs from the route and the client request.
struct Target {
    /// The upstream path (without query).
    path: String,
    /// `X-Forwarded-Prefix`, if any.
    prefix: Option<String>,
    /// The client's `Host` value as sent, for `preserve_host`.
    preserved_host: Option<HeaderValue>,
    /// The client's host, without port (`X-Forwarded-Host`).
    client_host: String,
    /// The upstream's `host_header`.
    host_header: Option<String>,
    /// The port left out of `Host`: 80, or 443 for TLS upstreams.
    default_port: u16,
    /// The upstream speaks HTTP/2 (a `grpc` or `grpcs` service).
    http2: bool,
    /// Identity headers from the plugins, replacing the client's (`None`: no plugin ran).
    identity: Option<HeaderMap>,
}

impl Target {
    fn new(
        found: &Match<'_>,
        service: &model::Service,
        upstream: Option<&model::Upstream>,
        req: &Request<Incoming>,
        host: &str,
    ) -> Self {
        let preserved_host = if found.preserve_host() {
            req.headers().get(header::HOST).cloned().or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            })
        } else {
            None
        };
        let tls = matches!(service.protocol.as_str(), "https" | "grpcs");
        Self {
            path: found.upstream_path(service.path.as_deref()),
            prefix: found.forwarded_prefix().map(str::to_owned),
            preserved_host,
            client_host: host.to_owned(),
            host_header: upstream.and_then(|u| u.host_header.clone()),
            default_port: if tls { 443 } else { 80 },
            http2: matches!(service.protocol.as_str(), "grpc" | "grpcs"),
            identity: None,
        }
    }

    /// The `Host` sent to `peer` (as Kong): the client's with `preserve_host`; else the
    /// upstream's `host_header`; else the peer's host (the service's host, or the target's
    /// of an upstream), with `:port` unless it is the scheme's default.
    fn host(&self, peer: &Peer) -> Option<HeaderValue> {
        if let Some(host) = &self.preserved_host {
            return Some(host.clone());
        }
        if let Some(host) = &self.host_header {
            return HeaderValue::from_str(host).ok();
        }
        let mut value = if peer.host.contains(':') {
            format!("[{}]", peer.host)
        } else {
            peer.host.clone()
        };
        if peer.port != self.default_port {
            let _ = write!(value, ":{}", peer.port);
        }
        HeaderValue::from_str(&value).ok()
    }

    /// The TLS server name for `peer` (SNI, and the name the certificate is checked
    /// against): the host part of [`Target::host`].
    fn server_name(&self, peer: &Peer) -> String {
        let named = self
            .preserved_host
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .or(self.host_header.as_deref());
        match named {
            Some(host) => split_host_port(host).0.into_owned(),
            None => peer.host.clone(),
        }
    }
}

/// `http://host:port/path?query` (`https://` for a TLS upstream).
fn upstream_uri(peer: &Peer, tls: bool, path: &str, query: Option<&str>) -> Result<Uri, Failure> {
    let mut uri = String::with_capacity(peer.host.len() + path.len() + 32);
    uri.push_str(if tls { "https://" } else { "http://" });
    if peer.host.contains(':') {
        let _ = write!(uri, "[{}]", peer.host);
    } else {
        uri.push_str(&peer.host);
    }
    let _ = write!(uri, ":{}", peer.port);
    uri.push_str(path);
    if let Some(query) = query {
        uri.push('?');
        uri.push_str(query);
    }
    Uri::try_from(uri).map_err(|error| {
        tracing::warn!(%error, "cannot build the upstream URI");
        Failure::Internal
    })
}

/// The request's authority: the `Host` header, else the URI's (HTTP/2 `:authority`, or an
/// absolute-form HTTP/1 request target).
fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// Removes the hop-by-hop headers and those named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Every line of `name`, joined with `, `.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for value in headers.get_all(name) {
        let Ok(value) = value.to_str() else { continue };
        match &mut out {
            Some(out) => {
                out.push_str(", ");
                out.push_str(value);
            }
            None => out = Some(value.to_owned()),
        }
    }
    out
}

/// `value` as a header value; an empty one if it is not valid (never for the IPs, ids and
/// numbers it is used for).
fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Sets `name` to `value` when it is a valid header value.
fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

fn millis(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_millis() as u64)
}

/// The upstream TLS layer with the process-wide defaults: the trusted CA bundle and the
/// global client certificate are loaded here, so a bad file stops the start.
pub(crate) fn upstream_tls(
    files: &UpstreamTlsFiles,
    keepalive: UpstreamKeepalive,
) -> Result<UpstreamTls, ProxyError> {
    let trusted_ca = match &files.trusted_ca {
        None => None,
        Some(path) => {
            let problem = |reason: String| ProxyError::TrustedCa {
                path: path.clone(),
                reason,
            };
            let pem =
                std::fs::read_to_string(path).map_err(|e| problem(format!("cannot read: {e}")))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in gatehouse_shared::x509::parse_certificates(&pem).map_err(problem)? {
                roots
                    .add(cert)
                    .map_err(|e| problem(format!("not a usable CA certificate: {e}")))?;
            }
            Some(Arc::new(roots))
        }
    };
    let client_certificate = match &files.client_cert {
        None => None,
        Some(pair) => Some(Arc::new(crate::tls::load_certified_key(
            pair,
            PairFlags::CLIENT_SSL,
        )?)),
    };
    Ok(UpstreamTls::new(UpstreamTlsSettings {
        verify: files.verify,
        verify_depth: files.verify_depth,
        trusted_ca,
        client_certificate,
        connect_timeout: MAX_CONNECT_TIMEOUT,
        pool_idle_timeout: keepalive.idle_timeout,
        pool_max_idle: keepalive.pool_size,
        ..UpstreamTlsSettings::default()
    }))
}

/// Displays a peer as `host:port`.
struct PeerAddr<'a>(&'a Peer);

impl std::fmt::Display for PeerAddr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.0.host, self.0.port)
    }
}

/// Whether `error` or one of its sources is an `E`.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<E>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// Displays an error with its sources.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
