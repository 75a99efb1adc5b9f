//! The stream listener (`--stream-listen`): TCP connections routed by Kong's stream routes.
//!
//! Each connection's first bytes are peeked, not read: a TLS ClientHello is parsed for its
//! server name (SNI) and the bytes stay in the socket. Then the route is found
//! ([`StreamRouter::find`]) among the routes whose protocols are stream protocols:
//! - `tls_passthrough`: TLS connections by SNI; the bytes go to the service untouched (the
//!   client's TLS session ends at the upstream);
//! - `tls`: TLS connections by SNI; TLS is terminated here with the certificate of the SNI
//!   (the same lookup as the HTTPS listener) and the plaintext goes to a `tcp` service, or is
//!   encrypted again for a `tls` service (verified and with a client certificate as for
//!   `https` services: see [`crate::upstream`]; the server name is the upstream's
//!   `host_header`, else the host dialled);
//! - `tcp`: connections that are not TLS, by `sources` and `destinations`.
//!
//! A route's `snis` (exact, `*.suffix`, `prefix.*`), `sources` and `destinations` (each an
//! IP or CIDR and/or a port) must all match when given; among matching routes the one with
//! more kinds of condition wins, then an exact SNI over a wildcard, then the oldest route.
//! The service's `host:port`, or its upstream's targets (the balancer of the HTTP proxy:
//! round-robin, hashing on the client IP, least-connections, health), take the bytes; a
//! failed connect tries the next target up to the service's `retries`. The connection is
//! closed after the larger of the service's `read_timeout` and `write_timeout` without a byte
//! either way (nginx's `proxy_timeout`).
//!
//! A connection no route takes is closed (logged at debug), as Kong does.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Service as _;
use uuid::Uuid;

use gatehouse_shared::model;

use crate::acme::{self, Acme};
use crate::config::{ProxySettings, TrustedIps};
use crate::plugins::NamePattern;
use crate::proxy::{Balancers, Drain, HashInput, Outcome, Peer, ProxyError, upstream_tls};
use crate::runtime::{Part, PerRuntime, Runtime, SharedRuntime};
use crate::tls::{Accepted, Alpn, DefaultCertificate, TlsOptions, TlsTerminator};
use crate::upstream::UpstreamTls;

/// Largest ClientHello looked at (one TLS record plus its header).
const MAX_HELLO: usize = 16 * 1024 + 5;
/// Pause between two peeks while a ClientHello is incomplete.
const PEEK_PAUSE: Duration = Duration::from_millis(2);
/// Pause after an accept error before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The bound stream listeners, not yet serving.
pub(crate) struct Listeners {
    stream: Arc<Stream>,
    bound: Vec<(TcpListener, SocketAddr)>,
}

/// What every stream connection shares.
struct Stream {
    runtime: Arc<SharedRuntime>,
    terminator: TlsTerminator,
    upstream_tls: UpstreamTls,
    balancers: Balancers,
    routers: PerRuntime<StreamRouter>,
    /// Deadline for the ClientHello (or the first byte) and the TLS handshake.
    hello_timeout: Duration,
    drain: Arc<Drain>,
}

/// The stream routes of one runtime, in priority order.
pub(crate) struct StreamRouter {
    routes: Vec<StreamRoute>,
}

/// One stream route, compiled.
struct StreamRoute {
    id: Uuid,
    service: Option<usize>,
    tcp: bool,
    tls: bool,
    passthrough: bool,
    snis: Vec<NamePattern>,
    sources: Vec<Endpoint>,
    destinations: Vec<Endpoint>,
}

/// A `sources` / `destinations` entry: an address block and/or a port.
struct Endpoint {
    ips: Option<TrustedIps>,
    port: Option<u16>,
}

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hello {
    /// A TLS ClientHello, with its server name, and whether its ALPN list is exactly
    /// `acme-tls/1` (an ACME TLS-ALPN-01 validation).
    Tls { sni: Option<String>, acme: bool },
    /// Anything else.
    Plain,
}

/// How a route takes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Passthrough,
    Terminate,
    Plain,
}

// === impl Listeners ===

impl Listeners {
    /// Binds every stream address (none: nothing is served). `acme` answers TLS-ALPN-01
    /// validations and on-demand requests (registered as a part by the caller).
    pub(crate) async fn bind(
        addrs: &[SocketAddr],
        settings: &ProxySettings,
        runtime: Arc<SharedRuntime>,
        drain: Arc<Drain>,
        acme: Arc<Acme>,
    ) -> Result<Self, ProxyError> {
        let default = Arc::new(DefaultCertificate::from_settings(&settings.tls)?);
        let options = TlsOptions::default()
            .with_alpn(Alpn::None)
            .with_session_tickets(settings.tls.session_tickets)
            .with_session_cache(settings.tls.session_cache);
        let terminator = TlsTerminator::new(runtime.clone(), default, options)?.with_acme(acme);
        let mut bound = Vec::new();
        for addr in addrs {
            let listen_error = |source| ProxyError::Listen {
                addr: *addr,
                source,
            };
            let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
            let local = listener.local_addr().map_err(listen_error)?;
            tracing::info!(addr = %local, "stream listener listening");
            bound.push((listener, local));
        }
        let stream = Stream {
            runtime,
            terminator,
            upstream_tls: upstream_tls(&settings.upstream, settings.upstream_keepalive)?,
            balancers: Balancers::default(),
            routers: PerRuntime::default(),
            hello_timeout: settings.timeouts.header,
            drain,
        };
        let stream = Arc::new(stream);
        if !bound.is_empty() {
            let part: Arc<dyn Part> = stream.clone();
            stream.runtime.register(Arc::downgrade(&part));
        }
        Ok(Self { stream, bound })
    }

    /// The bound addresses.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.bound.iter().map(|(_, addr)| *addr).collect()
    }

    /// One accept loop per listener, until `stop`; open connections then count in the drain.
    pub(crate) fn serve(self, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        self.bound
            .into_iter()
            .map(|(listener, local)| {
                tokio::spawn(accept_loop(
                    listener,
                    local,
                    self.stream.clone(),
                    stop.clone(),
                ))
            })
            .collect()
    }
}

async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    stream: Arc<Stream>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = crate::stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let open = stream.drain.open();
                let stream = stream.clone();
                tokio::spawn(async move {
                    stream.serve(tcp, peer, local).await;
                    drop(open);
                });
            }
            Err(error) => {
                tracing::warn!(%error, addr = %local, "stream listener: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

// === impl Stream ===

impl Stream {
    async fn serve(&self, tcp: TcpStream, peer: SocketAddr, local: SocketAddr) {
        let hello = match tokio::time::timeout(self.hello_timeout, peek_hello(&tcp)).await {
            Ok(Ok(Some(hello))) => hello,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                tracing::debug!(%error, %peer, "stream connection: unreadable first bytes");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "stream connection: nothing sent in time");
                return;
            }
        };
        let runtime = self.runtime.load_full();
        if let Hello::Tls {
            sni: Some(name),
            acme: true,
        } = &hello
            && self
                .terminator
                .acme()
                .for_runtime(&runtime)
                .has_tls_alpn01(name, acme::unix_now())
        {
            // An ACME validation, not a client of a route: answered here, whatever the routes.
            match self.terminator.accept(tcp).await {
                Ok(_) => {
                    tracing::debug!(server_name = %name, %peer, "answered an ACME tls-alpn-01 validation")
                }
                Err(error) => tracing::debug!(%error, %peer, "ACME tls-alpn-01 validation failed"),
            }
            return;
        }
        let router = self.router(&runtime);
        let sni = match &hello {
            Hello::Tls { sni, .. } => sni.as_deref(),
            Hello::Plain => None,
        };
        let tls = matches!(hello, Hello::Tls { .. });
        let Some((route, mode)) = router.find(tls, sni, peer, local) else {
            tracing::debug!(%peer, %local, sni, tls, "no stream route matched; closing");
            return;
        };
        let Some(service) = route.service.and_then(|i| runtime.service_at(i)) else {
            tracing::debug!(route = %route.id, "stream route without service; closing");
            return;
        };
        if let Err(error) = self
            .proxy(&runtime, service, tcp, mode, peer, route.id)
            .await
        {
            tracing::info!(%error, %peer, route = %route.id, "stream connection failed");
        }
    }

    async fn proxy(
        &self,
        runtime: &Runtime,
        service: &model::Service,
        tcp: TcpStream,
        mode: Mode,
        peer: SocketAddr,
        route: Uuid,
    ) -> io::Result<()> {
        let idle =
            Duration::from_millis(u64::from(service.read_timeout.max(service.write_timeout)));
        let (upstream, addr) = self.connect(runtime, service, peer).await?;
        let (sent, received) = match mode {
            Mode::Passthrough | Mode::Plain => splice(tcp, upstream, idle).await?,
            Mode::Terminate => {
                let accepted = self
                    .terminator
                    .accept(tcp)
                    .await
                    .map_err(|e| io::Error::other(format!("TLS handshake with client: {e}")))?;
                let Accepted::Connection(client) = accepted else {
                    return Ok(());
                };
                splice(client, upstream, idle).await?
            }
        };
        tracing::debug!(%peer, %route, upstream = %addr, sent, received, "stream connection closed");
        Ok(())
    }

    /// Connects to the service (or a target of its upstream), trying the next target on
    /// failure up to `retries` times.
    async fn connect(
        &self,
        runtime: &Runtime,
        service: &model::Service,
        peer: SocketAddr,
    ) -> io::Result<(Box<dyn Io>, String)> {
        let upstream = runtime.upstream_by_name(&service.host);
        let Some(upstream) = upstream else {
            let io = self
                .dial(runtime, service, None, &service.host, service.port)
                .await?;
            return Ok((io, format_addr(&service.host, service.port)));
        };
        let rings = self.balancers.for_runtime(runtime);
        let ring = rings
            .ring(&upstream.id)
            .ok_or_else(|| io::Error::other("upstream has no balancer"))?;
        let headers = HeaderMap::new();
        let key = ring.hash_key(&HashInput {
            client_ip: peer.ip(),
            headers: &headers,
            path: "",
            query: None,
            captures: None,
            consumer: None,
        });
        let mut last = io::Error::other("failure to get a peer from the ring-balancer");
        for attempt in 0..=u32::from(service.retries) {
            let Some(pick) = ring.pick(&key, attempt) else {
                break;
            };
            let Peer { host, port } = pick.peer;
            let addr = format_addr(host, *port);
            match self
                .dial(runtime, service, Some(upstream), host, *port)
                .await
            {
                Ok(io) => return Ok((io, addr)),
                Err(error) => {
                    pick.report(if error.kind() == io::ErrorKind::TimedOut {
                        Outcome::TimedOut
                    } else {
                        Outcome::ConnectFailed
                    });
                    tracing::info!(%error, upstream = %addr, attempt, "stream upstream connect failed");
                    last = error;
                }
            }
        }
        Err(last)
    }

    /// One connection to `host:port`: TCP, with TLS on top for a `tls` service (server
    /// name, as for HTTP: the upstream's `host_header`, else the host dialled).
    async fn dial(
        &self,
        runtime: &Runtime,
        service: &model::Service,
        upstream: Option<&model::Upstream>,
        host: &str,
        port: u16,
    ) -> io::Result<Box<dyn Io>> {
        let addr = format_addr(host, port);
        let addr = addr.as_str();
        let limit = Duration::from_millis(u64::from(service.connect_timeout));
        if service.protocol != "tls" {
            let tcp = tokio::time::timeout(limit, TcpStream::connect(addr))
                .await
                .map_err(|_| timed_out(limit))??;
            let _ = tcp.set_nodelay(true);
            return Ok(Box::new(tcp));
        }
        let name = upstream
            .and_then(|u| u.host_header.as_deref())
            .unwrap_or(host);
        let mut connector = self
            .upstream_tls
            .stream_connector(runtime, service, upstream, name)
            .map_err(io::Error::other)?;
        let uri: http::Uri = format!("https://{addr}/")
            .parse()
            .map_err(|e| io::Error::other(format!("upstream address {addr}: {e}")))?;
        let tls = tokio::time::timeout(limit, connector.call(uri))
            .await
            .map_err(|_| timed_out(limit))?
            .map_err(|error| {
                tracing::warn!(%error, upstream = addr, "upstream TLS failed");
                io::Error::other(error)
            })?;
        Ok(Box::new(tls.into_inner()))
    }

    /// The stream router of `runtime`: prepared by the apply step, else built now.
    fn router(&self, runtime: &Runtime) -> Arc<StreamRouter> {
        self.routers
            .get_or_insert_with(runtime, || StreamRouter::new(runtime))
    }
}

impl Part for Stream {
    /// The stream router (a `sources`/`destinations` entry that is not an IP or CIDR rejects
    /// the runtime), the TLS configurations, the balancer rings and the upstream TLS
    /// settings of the stream listeners.
    fn prepare(&self, runtime: &Arc<Runtime>, warnings: &mut Vec<String>) -> Result<(), String> {
        for route in &runtime.config().routes {
            for endpoint in route.sources.iter().chain(&route.destinations).flatten() {
                if let Some(ip) = &endpoint.ip
                    && TrustedIps::parse(ip).is_err()
                {
                    return Err(format!("route {}: {ip:?} is not an IP or CIDR", route.id));
                }
            }
        }
        self.routers
            .insert(runtime, Arc::new(StreamRouter::new(runtime)));
        self.terminator.prepare(runtime, warnings)?;
        self.balancers.prepare(runtime, warnings)?;
        self.upstream_tls.prepare(runtime, warnings)
    }
}

fn format_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn timed_out(limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("connect timed out after {limit:?}"),
    )
}

/// A connection to an upstream: TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Reads the first bytes without consuming them: a complete TLS ClientHello (with its SNI),
/// or anything else; `None` when the client closed before sending anything.
async fn peek_hello(tcp: &TcpStream) -> io::Result<Option<Hello>> {
    let mut buf = vec![0u8; MAX_HELLO];
    let mut seen = 0;
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf[0] != 0x16 {
            return Ok(Some(Hello::Plain));
        }
        if n > seen {
            seen = n;
            if let Some(hello) = parse_hello(&buf[..n])? {
                return Ok(Some(hello));
            }
            if n == buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "ClientHello larger than 16 KiB",
                ));
            }
        }
        // The rest of the ClientHello is still on its way.
        tokio::time::sleep(PEEK_PAUSE).await;
    }
}

/// The ClientHello in `bytes`, `None` if it is incomplete.
pub(crate) fn parse_hello(bytes: &[u8]) -> io::Result<Option<Hello>> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        if acceptor.read_tls(&mut rest)? == 0 {
            break;
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Ok(Some(Hello::Tls {
                sni: hello.server_name().map(str::to_ascii_lowercase),
                acme: acme::is_acme_alpn(hello.alpn()),
            }))
        }
        Ok(None) => Ok(None),
        Err((error, _)) => Err(io::Error::new(io::ErrorKind::InvalidData, error)),
    }
}

// === impl StreamRouter ===

impl StreamRouter {
    /// The stream routes of `runtime` (routes of disabled services left out), in priority
    /// order.
    pub(crate) fn new(runtime: &Runtime) -> Self {
        let config = runtime.config();
        let mut routes: Vec<(StreamRoute, (usize, bool, i64, Uuid))> = config
            .routes
            .iter()
            .filter_map(|route| {
                let has = |p: &str| route.protocols.iter().any(|q| q == p);
                let (tcp, tls, passthrough) = (has("tcp"), has("tls"), has("tls_passthrough"));
                if !(tcp || tls || passthrough) {
                    return None;
                }
                let service = match &route.service {
                    Some(fk) => {
                        let index = config.services.iter().position(|s| s.id == fk.id)?;
                        if !config.services[index].enabled {
                            return None;
                        }
                        Some(index)
                    }
                    None => None,
                };
                let snis: Vec<NamePattern> = route
                    .snis
                    .iter()
                    .flatten()
                    .map(|s| NamePattern::new(s))
                    .collect();
                let endpoints = |list: &Option<Vec<model::Endpoint>>| -> Vec<Endpoint> {
                    list.iter().flatten().map(Endpoint::new).collect()
                };
                let compiled = StreamRoute {
                    id: route.id,
                    service,
                    tcp,
                    tls,
                    passthrough,
                    sources: endpoints(&route.sources),
                    destinations: endpoints(&route.destinations),
                    snis,
                };
                let kinds = usize::from(!compiled.snis.is_empty())
                    + usize::from(!compiled.sources.is_empty())
                    + usize::from(!compiled.destinations.is_empty());
                let exact = compiled
                    .snis
                    .iter()
                    .any(|s| matches!(s, NamePattern::Exact(_)));
                Some((compiled, (kinds, exact, route.created_at, route.id)))
            })
            .collect();
        routes.sort_by(|(_, a), (_, b)| {
            b.0.cmp(&a.0)
                .then(b.1.cmp(&a.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        Self {
            routes: routes.into_iter().map(|(route, _)| route).collect(),
        }
    }

    /// The route for a connection and how it takes it: TLS connections (`tls`) by their
    /// `sni`, others by `tcp` routes; `sources` and `destinations` by the addresses.
    fn find(
        &self,
        tls: bool,
        sni: Option<&str>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<(&StreamRoute, Mode)> {
        self.routes.iter().find_map(|route| {
            let mode = match (tls, route.passthrough, route.tls, route.tcp) {
                (true, true, _, _) => Mode::Passthrough,
                (true, false, true, _) => Mode::Terminate,
                (false, _, _, true) => Mode::Plain,
                _ => return None,
            };
            let sni_ok = route.snis.is_empty()
                || sni.is_some_and(|sni| route.snis.iter().any(|p| p.matches(sni)));
            let from_ok = route.sources.is_empty() || route.sources.iter().any(|e| e.matches(peer));
            let to_ok = route.destinations.is_empty()
                || route.destinations.iter().any(|e| e.matches(local));
            (sni_ok && from_ok && to_ok).then_some((route, mode))
        })
    }
}

impl Endpoint {
    fn new(endpoint: &model::Endpoint) -> Self {
        Self {
            // The CP validated the IP or CIDR; one that does not parse matches nothing.
            ips: endpoint
                .ip
                .as_deref()
                .map(|ip| TrustedIps::parse(ip).unwrap_or_default()),
            port: endpoint.port,
        }
    }

    fn matches(&self, addr: SocketAddr) -> bool {
        self.ips.as_ref().is_none_or(|ips| ips.contains(addr.ip()))
            && self.port.is_none_or(|port| port == addr.port())
    }
}

// === splice ===

/// Copies both ways until both sides are done, or until `idle` passes without a byte
/// either way; returns the bytes client → upstream and upstream → client.
async fn splice<A, B>(client: A, upstream: B, idle: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity::new());
    let mut client = Active::new(client, activity.clone());
    let mut upstream = Active::new(upstream, activity.clone());
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => copied,
        () = activity.idle_for(idle) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no traffic for {idle:?}"),
        )),
    }
}

/// When a spliced connection last moved a byte.
struct Activity {
    start: Instant,
    /// Milliseconds since `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Completes once `idle` has passed since the last byte.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.last.load(Ordering::Relaxed);
            let deadline = self.start + Duration::from_millis(last) + idle;
            tokio::time::sleep_until(deadline.into()).await;
            if self.last.load(Ordering::Relaxed) == last {
                return;
            }
        }
    }
}

/// A stream that records its traffic in an [`Activity`].
struct Active<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Active<S> {
    fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
