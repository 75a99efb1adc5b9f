//! Timeouts of one proxied request, Kong's three per service plus nginx's client body timeout:
//!
//! - `connect_timeout`: [`Connector`] gives up connecting after it. The hyper client calls
//!   the connector inside the request's own task, so the request's [`Timers`] reach it
//!   through a task-local ([`Timers::scope`]) instead of one global connector setting.
//! - `write_timeout`: longest time the upstream connection may refuse the next piece of the
//!   request body (hyper stops pulling the body while the socket is full). Watched by
//!   [`Timers::watch`] while the response headers are awaited.
//! - `read_timeout`: from the request being sent (its body done, or the connection ready for
//!   a request without body) to the response headers, and then between two reads of the
//!   response body ([`IdleTimeout`]).
//! - client body timeout (`--client-body-timeout`): longest pause of the *client* while its
//!   request body streams upstream ([`RequestBody`]); the proxy then answers 408.
//!
//! Times are kept as milliseconds since the request started, in atomics shared by the body,
//! the connector and the watcher: no lock, no allocation beyond one `Arc` per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::Notify;
use tokio::time::Sleep;

/// How far a request has got, as the watcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Not connected yet (or a new connection is being made).
    Connecting = 0,
    /// Connected; request body pieces are being pulled by the upstream connection.
    Writing = 1,
    /// The body waits for the client, which the client body timeout covers.
    AwaitingClient = 2,
    /// The request is sent; the response headers are awaited.
    Sent = 3,
}

/// Why a request stopped early, recorded by the body so the proxy answers the right status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum ClientFault {
    None = 0,
    /// The client paused its body longer than the client body timeout.
    TimedOut = 1,
    /// The client's body was malformed (e.g. broken chunked encoding) or cut short.
    Broken = 2,
}

/// Which timeout fired while the response headers were awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expired {
    Connect,
    Write,
    Read,
}

/// The timers of one request attempt.
#[derive(Debug)]
pub(super) struct Timers {
    started: Instant,
    pub(super) connect: Duration,
    pub(super) write: Duration,
    pub(super) read: Duration,
    client_body: Duration,
    phase: AtomicU8,
    /// Milliseconds since `started` of the last change of phase or piece of body.
    last: AtomicU64,
    /// Whether the request has a body still to send once connected.
    has_body: bool,
    fault: AtomicU8,
    /// Wakes the watcher when the phase changes (its deadline may move closer).
    moved: Notify,
}

tokio::task_local! {
    static CURRENT: Arc<Timers>;
}

impl Timers {
    pub(super) fn new(
        connect: Duration,
        write: Duration,
        read: Duration,
        client_body: Duration,
        has_body: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            connect,
            write,
            read,
            client_body,
            phase: AtomicU8::new(Phase::Connecting as u8),
            last: AtomicU64::new(0),
            has_body,
            fault: AtomicU8::new(ClientFault::None as u8),
            moved: Notify::new(),
        })
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Connecting,
            1 => Phase::Writing,
            2 => Phase::AwaitingClient,
            _ => Phase::Sent,
        }
    }

    fn enter(&self, phase: Phase) {
        self.last.store(self.now(), Ordering::Release);
        if self.phase.swap(phase as u8, Ordering::AcqRel) != phase as u8 {
            self.moved.notify_one();
        }
    }

    /// A connection is ready for the request: a pooled one (the connector was not called) or
    /// one the connector just made.
    fn connected(&self) {
        if self.phase() == Phase::Connecting {
            self.enter(if self.has_body {
                Phase::Writing
            } else {
                Phase::Sent
            });
        }
    }

    fn fault_with(&self, fault: ClientFault) {
        self.fault.store(fault as u8, Ordering::Release);
    }

    /// What the client did wrong, if anything.
    pub(super) fn fault(&self) -> ClientFault {
        match self.fault.load(Ordering::Acquire) {
            1 => ClientFault::TimedOut,
            2 => ClientFault::Broken,
            _ => ClientFault::None,
        }
    }

    /// Runs `future` (the upstream request) with these timers visible to the connector.
    pub(super) async fn scope<F: Future>(self: &Arc<Self>, future: F) -> F::Output {
        CURRENT.scope(self.clone(), future).await
    }

    /// Awaits `response`, failing with the timeout that expired first. The connect
    /// timeout is enforced by the connector (a failed connect is an error of `response`);
    /// here it only bounds a request that never got a connection at all.
    pub(super) async fn watch<F: Future>(&self, response: F) -> Result<F::Output, Expired> {
        tokio::pin!(response);
        loop {
            let phase = self.phase();
            let (limit, expired) = match phase {
                // The connector's own timeout normally fires first; a pooled connection
                // skips this phase entirely (see `connected`).
                Phase::Connecting => (self.connect + self.read, Expired::Connect),
                Phase::Writing => (self.write, Expired::Write),
                // The client body timeout ends the body itself, which fails the request.
                Phase::AwaitingClient => (self.client_body + self.write, Expired::Write),
                Phase::Sent => (self.read, Expired::Read),
            };
            let since = Duration::from_millis(self.last.load(Ordering::Acquire));
            let deadline = self.started + since + limit;
            tokio::select! {
                output = &mut response => return Ok(output),
                () = self.moved.notified() => {}
                () = tokio::time::sleep_until(deadline.into()) => {
                    // The phase may have moved on while sleeping: look again.
                    let last = Duration::from_millis(self.last.load(Ordering::Acquire));
                    if last == since && self.phase() == phase {
                        return Err(expired);
                    }
                }
            }
        }
    }
}

// === Connector ===

/// The plain upstream connector: [`HttpConnector`] with the request's connect timeout.
#[derive(Clone)]
pub(super) struct Connector {
    inner: HttpConnector,
    /// Used when no request timers are in scope (a connection finished in the background).
    fallback: Duration,
}

/// A connect attempt that took longer than the service's `connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {0:?}")]
pub(super) struct ConnectTimedOut(pub(super) Duration);

impl Connector {
    pub(super) fn new(inner: HttpConnector, fallback: Duration) -> Self {
        Self { inner, fallback }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The timers of the request a connector runs for, taken when the connector is called (the
/// connect may finish in the background after the request got a pooled connection).
pub(crate) struct ConnectScope(Option<Arc<Timers>>);

impl ConnectScope {
    /// The scope of the request being served on this task, if any.
    pub(crate) fn current() -> Self {
        Self(CURRENT.try_with(Arc::clone).ok())
    }

    /// Marks the request as connecting; returns its connect timeout, else `fallback`.
    pub(crate) fn begin(&self, fallback: Duration) -> Duration {
        match &self.0 {
            Some(timers) => {
                timers.enter(Phase::Connecting);
                timers.connect
            }
            None => fallback,
        }
    }

    /// The connection (and its TLS handshake, if any) is up.
    pub(crate) fn connected(&self) {
        if let Some(timers) = &self.0 {
            timers.connected();
        }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = <HttpConnector as tower::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BoxError::from)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let scope = ConnectScope::current();
        let limit = scope.begin(self.fallback);
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let stream = tokio::time::timeout(limit, connecting)
                .await
                .map_err(|_| BoxError::from(ConnectTimedOut(limit)))?
                .map_err(BoxError::from)?;
            scope.connected();
            crate::metrics::METRICS.upstream_connection(false);
            Ok(stream)
        })
    }
}

// === RequestBody ===

/// The client's request body on its way upstream: records progress for the write timeout,
/// and fails after the client body timeout of silence from the client.
pub(super) struct RequestBody {
    inner: Incoming,
    timers: Arc<Timers>,
    idle: Option<Pin<Box<Sleep>>>,
}

/// The client paused its request body for too long.
#[derive(Debug, thiserror::Error)]
#[error("client body timeout: no data from the client for {0:?}")]
pub(super) struct ClientBodyTimedOut(Duration);

impl RequestBody {
    pub(super) fn new(inner: Incoming, timers: Arc<Timers>) -> Self {
        Self {
            inner,
            timers,
            idle: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // Being polled means the connection exists and takes more.
        this.timers.connected();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle = None;
                this.timers.enter(Phase::Writing);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.timers.fault_with(ClientFault::Broken);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                this.idle = None;
                this.timers.enter(Phase::Sent);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.timers.phase() != Phase::AwaitingClient {
                    this.timers.enter(Phase::AwaitingClient);
                }
                let limit = this.timers.client_body;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(idle.as_mut().poll(cx));
                this.timers.fault_with(ClientFault::TimedOut);
                Poll::Ready(Some(Err(ClientBodyTimedOut(limit).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === IdleTimeout ===

/// A response body that fails when the upstream sends nothing for `limit` while the client
/// waits for more (a client that stops reading does not count: the body is then not polled).
pub(super) struct IdleTimeout<B> {
    inner: B,
    limit: Duration,
    idle: Option<Pin<Box<Sleep>>>,
}

/// The upstream paused its response body longer than the service's `read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("upstream read timeout: no data for {0:?}")]
pub(super) struct ReadTimedOut(Duration);

impl<B> IdleTimeout<B> {
    pub(super) fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            idle: None,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.idle = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = this.limit;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(idle.as_mut().poll(cx));
                tracing::info!(
                    timeout_ms = limit.as_millis() as u64,
                    "upstream stopped sending the response body; closing it"
                );
                Poll::Ready(Some(Err(ReadTimedOut(limit).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
