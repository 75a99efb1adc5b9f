//! The HTTP/1 request-head guard: a reader between the client connection and hyper that
//! measures every request head before hyper sees a byte of it.
//!
//! hyper refuses an oversized or malformed head itself, but with a bare status and no body,
//! and only past its own buffer limits. The guard holds each head back until it is complete
//! and checks it against `--client-max-request-line`, `--client-max-header-size` and
//! `--client-max-headers-size` (and [`MAX_HEADER_LINES`]) as the bytes arrive, so memory
//! stays bounded by the limits. A complete head is checked for request smuggling (RFC 9112
//! §6): `Transfer-Encoding` with `Content-Length`, differing or malformed `Content-Length`s,
//! a `Transfer-Encoding` whose last coding is not `chunked` (or on HTTP/1.0), an obsolete
//! line folding, a method that is not a token.
//!
//! A refused head never reaches hyper. The guard hands hyper a short stand-in head instead
//! (`GET /`, `Connection: close`, the client's `Accept` when it was readable) and records
//! which request of the connection it is and why ([`Refusals`]); the proxy answers that
//! request with the refusal (status and body in the client's format) instead of routing it,
//! and the connection closes after the response. Requests before it on the same connection
//! are answered first, in order.
//!
//! Between heads the guard follows the body framing (`Content-Length` bytes, or the chunked
//! encoding up to its last chunk and trailers) to know where the next head starts. After a
//! request that may switch protocols (`CONNECT`, `Upgrade`), after the HTTP/2 preface, or
//! when a chunked body is malformed (hyper refuses it and closes), the guard steps aside and
//! passes bytes through; the proxy's own checks of each request ([`Refusal::of_request`])
//! and hyper's hard limit still apply.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use http::{HeaderMap, Method, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::ClientLimits;

/// Most header lines in one request head (hyper's own limit); more is refused as too large.
pub(super) const MAX_HEADER_LINES: usize = 100;
/// Bytes read from the client at a time.
const READ_CHUNK: usize = 16 * 1024;
/// The most buffer capacity an idle connection keeps.
const KEEP_CAPACITY: usize = 4096;

thread_local! {
    /// Where [`HeadGuard`] reads, before the bytes are copied to the connection's buffer.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}
/// Longest chunk-size line of a chunked body (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Longest `Accept` value carried into the stand-in head.
const MAX_ACCEPT: usize = 256;
/// After a refusal, how long (and how many bytes) the rest of what the client sends is read
/// and dropped before the connection closes (nginx's lingering close): closing with unread
/// bytes makes the kernel send a reset, which may destroy the answer before the client
/// reads it.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The request line is longer than `--client-max-request-line`: 414.
    RequestLineTooLong,
    /// A header line, or all of them, too large, or too many lines: 400 (Kong's 494).
    HeaderTooLarge,
    /// Ambiguous or malformed framing, obsolete line folding, a bad method: 400.
    BadRequest(&'static str),
}

/// The refused request of a connection: its index among the connection's requests (from 0)
/// and why. Set at most once, by the guard; read by the proxy.
#[derive(Debug, Default)]
pub(super) struct Refusals(OnceLock<(u64, Refusal)>);

/// The guarded client connection (see the module documentation).
pub(super) struct HeadGuard<IO> {
    io: IO,
    limits: ClientLimits,
    refusals: Arc<Refusals>,
    /// Bytes read from the client and not yet handed to hyper.
    held: Vec<u8>,
    /// How many bytes at the front of `held` may be handed to hyper.
    ready: usize,
    /// How many bytes at the front of `held` have been scanned.
    scanned: usize,
    /// Request heads handed to hyper so far.
    heads: u64,
    state: State,
    /// The client closed its side.
    eof: bool,
    /// When the first request head must be complete (`--client-header-timeout`; hyper
    /// times the later ones, but the first is awaited before hyper's connection starts).
    first_head: Option<Pin<Box<tokio::time::Sleep>>>,
    /// After a refusal: the end of the lingering close, and the bytes dropped so far.
    linger: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside (or before) a request head.
    Head(HeadScan),
    /// Inside a body of known length: bytes left.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// The guard passes bytes through.
    Aside,
    /// A head was refused: only the stand-in head is left to hand over.
    Refused,
}

/// Progress through one request head; `start` is where it begins in `held`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct HeadScan {
    start: usize,
    /// Where the current line begins in `held`.
    line_start: usize,
    /// Complete lines so far (the request line counts).
    lines: usize,
    /// Bytes of the complete header lines, with a two-byte line end each.
    headers: usize,
    /// Inside the request line's method (before the first space).
    in_method: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The chunk-size line: hex digits seen, the size so far, bytes of the line, whether
    /// extensions (or whitespace) started.
    Size {
        digits: usize,
        size: u64,
        len: usize,
        ext: bool,
    },
    /// Chunk data bytes left.
    Data(u64),
    /// The line end after chunk data.
    DataEnd,
    /// The trailer section: bytes of the current line, bytes of all trailer lines.
    Trailers { line: usize, total: usize },
}

/// What a complete head says about the message that follows.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// No body, or `Content-Length` bytes.
    Length(u64),
    Chunked,
    /// The connection may switch protocols (or is HTTP/2): the guard steps aside.
    Aside,
}

// === impl Refusal ===

impl Refusal {
    /// The status and message of the answer (nginx's and Kong's wording).
    pub(super) fn status_and_message(self) -> (http::StatusCode, &'static str) {
        match self {
            Self::RequestLineTooLong => (http::StatusCode::URI_TOO_LONG, "Request-URI Too Large"),
            Self::HeaderTooLarge => (
                http::StatusCode::BAD_REQUEST,
                "Request header or cookie too large",
            ),
            Self::BadRequest(_) => (http::StatusCode::BAD_REQUEST, "Bad request"),
        }
    }

    /// The reason for the log.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Self::RequestLineTooLong => "request line longer than --client-max-request-line",
            Self::HeaderTooLarge => "request headers larger than the --client-max-header* limits",
            Self::BadRequest(why) => why,
        }
    }

    /// The same limits, checked on a request hyper has parsed: HTTP/2 requests, and HTTP/1
    /// requests the guard stepped aside for. The request line counts the method, the target
    /// (`:path` on HTTP/2) and the version; a header line its name, a colon and its value
    /// (never more than the guard counted for the same line).
    pub(super) fn of_request(
        limits: &ClientLimits,
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
    ) -> Option<Self> {
        let target = match (version, uri.path_and_query()) {
            (Version::HTTP_2 | Version::HTTP_3, Some(pq)) => pq.as_str().len(),
            _ => {
                uri.scheme_str().map_or(0, |s| s.len() + 3)
                    + uri.authority().map_or(0, |a| a.as_str().len())
                    + uri.path_and_query().map_or(0, |pq| pq.as_str().len())
            }
        };
        if method.as_str().len() + 1 + target + 9 > limits.request_line {
            return Some(Self::RequestLineTooLong);
        }
        let mut total = 0usize;
        for (name, value) in headers {
            let line = name.as_str().len() + 1 + value.len();
            total += line + 2;
            if line > limits.header || total > limits.headers {
                return Some(Self::HeaderTooLarge);
            }
        }
        None
    }
}

// === impl Refusals ===

impl Refusals {
    /// The refusal of request number `index` of the connection, if it was refused.
    pub(super) fn of(&self, index: u64) -> Option<Refusal> {
        self.0
            .get()
            .and_then(|(at, refusal)| (*at == index).then_some(*refusal))
    }
}

// === impl HeadGuard ===

impl<IO> HeadGuard<IO> {
    pub(super) fn new(io: IO, limits: ClientLimits, refusals: Arc<Refusals>) -> Self {
        Self {
            io,
            limits,
            refusals,
            held: Vec::new(),
            ready: 0,
            scanned: 0,
            heads: 0,
            state: State::Head(HeadScan::new(0)),
            eof: false,
            first_head: None,
            linger: None,
        }
    }

    /// Closes the connection (a `TimedOut` read error) unless the first request head is
    /// complete within `limit` (needs a Tokio runtime).
    pub(super) fn first_head_within(mut self, limit: std::time::Duration) -> Self {
        self.first_head = Some(Box::pin(tokio::time::sleep(limit)));
        self
    }

    /// Scans the unscanned bytes of `held`, moving `ready` past every byte hyper may have.
    fn scan(&mut self) {
        while self.scanned < self.held.len() {
            match self.state {
                State::Aside | State::Refused => {
                    self.scanned = self.held.len();
                    if self.state == State::Aside {
                        self.ready = self.held.len();
                    }
                    return;
                }
                State::Body(left) => {
                    let take = (self.held.len() - self.scanned).min(clamp(left));
                    self.scanned += take;
                    self.ready = self.scanned;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::Head(HeadScan::new(self.scanned))
                    } else {
                        State::Body(left)
                    };
                }
                State::Chunked(Chunk::Data(left)) => {
                    let take = (self.held.len() - self.scanned).min(clamp(left));
                    self.scanned += take;
                    self.ready = self.scanned;
                    let left = left - take as u64;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                }
                State::Chunked(chunk) => {
                    let byte = self.held[self.scanned];
                    self.scanned += 1;
                    self.ready = self.scanned;
                    self.state = match chunk.next(byte, self.limits.headers) {
                        Ok(Some(chunk)) => State::Chunked(chunk),
                        Ok(None) => State::Head(HeadScan::new(self.scanned)),
                        // hyper refuses the body and closes; nothing is left to guard.
                        Err(()) => State::Aside,
                    };
                }
                State::Head(head) => {
                    let byte = self.held[self.scanned];
                    self.scanned += 1;
                    match self.head_byte(head, byte) {
                        Ok(state) => self.state = state,
                        Err(refusal) => {
                            self.refuse(head, refusal);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// One byte of a head (at `scanned - 1`): the next state, or why the head is refused.
    fn head_byte(&mut self, mut head: HeadScan, byte: u8) -> Result<State, Refusal> {
        let at = self.scanned - 1;
        if head.lines == 0 && at == head.line_start && (byte == b'\r' || byte == b'\n') {
            // Empty lines before the request line are ignored (RFC 9112 §2.2); at most a
            // few are allowed.
            if at - head.start >= 8 {
                return Err(Refusal::BadRequest("empty lines before the request line"));
            }
            head.line_start = at + 1;
            return Ok(State::Head(head));
        }
        if head.lines == 0 && head.in_method {
            if byte == b' ' {
                head.in_method = false;
            } else if !is_tchar(byte) {
                return Err(Refusal::BadRequest("the method is not a token"));
            }
        }
        if byte != b'\n' {
            // A line may end with CR LF: allow one byte for the CR until the LF comes.
            let len = at + 1 - head.line_start;
            if head.lines == 0 {
                if len > self.limits.request_line + 1 {
                    return Err(Refusal::RequestLineTooLong);
                }
            } else if len > self.limits.header + 1 || head.headers + len > self.limits.headers {
                return Err(Refusal::HeaderTooLarge);
            }
            return Ok(State::Head(head));
        }
        let line = &self.held[head.line_start..at];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let len = line.len();
        head.line_start = at + 1;
        if head.lines == 0 {
            if len > self.limits.request_line {
                return Err(Refusal::RequestLineTooLong);
            }
            head.lines = 1;
            return Ok(State::Head(head));
        }
        if len == 0 {
            return self.head_complete(head);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(Refusal::BadRequest("obsolete line folding (RFC 9112 §5.2)"));
        }
        head.lines += 1;
        head.headers += len + 2;
        if len > self.limits.header
            || head.headers > self.limits.headers
            || head.lines > MAX_HEADER_LINES + 1
        {
            return Err(Refusal::HeaderTooLarge);
        }
        Ok(State::Head(head))
    }

    /// A head ends at `scanned`: it goes to hyper, and the framing says what follows.
    fn head_complete(&mut self, head: HeadScan) -> Result<State, Refusal> {
        let framing = framing(&self.held[head.start..self.scanned])?;
        self.heads += 1;
        self.ready = self.scanned;
        Ok(match framing {
            Framing::Length(0) => State::Head(HeadScan::new(self.scanned)),
            Framing::Length(n) => State::Body(n),
            Framing::Chunked => State::Chunked(Chunk::SIZE),
            Framing::Aside => {
                self.ready = self.held.len();
                self.scanned = self.held.len();
                State::Aside
            }
        })
    }

    /// Replaces the refused head (and anything after it) with the stand-in head, and records
    /// the refusal for the proxy.
    fn refuse(&mut self, head: HeadScan, refusal: Refusal) {
        let accept = accept_of(&self.held[head.start..head.line_start]);
        self.held.truncate(head.start);
        self.held
            .extend_from_slice(b"GET / HTTP/1.1\r\nhost: refused.invalid\r\nconnection: close\r\n");
        if let Some(accept) = accept {
            self.held.extend_from_slice(b"accept: ");
            self.held.extend_from_slice(&accept);
            self.held.extend_from_slice(b"\r\n");
        }
        self.held.extend_from_slice(b"\r\n");
        self.ready = self.held.len();
        self.scanned = self.held.len();
        // Set once: the guard stops after the first refusal.
        let _ = self.refusals.0.set((self.heads, refusal));
        self.state = State::Refused;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for HeadGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = &mut this.first_head {
            if this.heads > 0 || matches!(this.state, State::Aside | State::Refused) {
                this.first_head = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no complete request head within --client-header-timeout",
                )));
            }
        }
        loop {
            if this.ready > 0 {
                let n = this.ready.min(buf.remaining());
                buf.put_slice(&this.held[..n]);
                this.held.drain(..n);
                if this.held.is_empty() && this.held.capacity() > KEEP_CAPACITY {
                    // An idle connection keeps no large buffer.
                    this.held = Vec::new();
                }
                this.ready -= n;
                this.scanned -= n;
                if let State::Head(head) = &mut this.state {
                    head.start = head.start.saturating_sub(n);
                    head.line_start = head.line_start.saturating_sub(n);
                }
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Refused {
                // Nothing more is read from this client: hyper closes the connection after
                // answering the stand-in request (`Connection: close`).
                return Poll::Pending;
            }
            if this.eof {
                // The client closed; what is held is an incomplete head hyper would refuse.
                this.held.clear();
                this.scanned = 0;
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Aside && this.held.is_empty() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            // Read through the thread's scratch buffer: no per-connection read buffer, and
            // only the bytes that came are copied.
            let result = SCRATCH.with_borrow_mut(|scratch| {
                let mut read = ReadBuf::new(&mut scratch[..]);
                let result = Pin::new(&mut this.io).poll_read(cx, &mut read);
                this.held.extend_from_slice(read.filled());
                result.map_ok(|()| read.filled().len())
            });
            match result {
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(_)) => this.scan(),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for HeadGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    /// After a refusal, a lingering close: the write side is shut (the client sees the end
    /// of the answer), then what the client still sends is dropped until it closes, for at
    /// most [`LINGER`] and [`LINGER_BYTES`].
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.state != State::Refused {
            return Pin::new(&mut this.io).poll_shutdown(cx);
        }
        if this.linger.is_none() {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.linger = Some((Box::pin(tokio::time::sleep(LINGER)), 0));
        }
        let Some((deadline, dropped)) = &mut this.linger else {
            return Poll::Ready(Ok(()));
        };
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut read = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                    *dropped += read.filled().len();
                    if *dropped > LINGER_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                // The client closed, or the connection broke: nothing left to wait for.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// === impl HeadScan ===

impl HeadScan {
    fn new(start: usize) -> Self {
        Self {
            start,
            line_start: start,
            lines: 0,
            headers: 0,
            in_method: true,
        }
    }
}

// === impl Chunk ===

impl Chunk {
    const SIZE: Self = Self::Size {
        digits: 0,
        size: 0,
        len: 0,
        ext: false,
    };

    /// The state after `byte` (not chunk data): the next state, the end of the message, or
    /// `Err` when the body is malformed. Line ends may be CR LF or a bare LF (hyper is
    /// stricter; whatever it accepts is followed exactly).
    fn next(self, byte: u8, max_trailers: usize) -> Result<Option<Self>, ()> {
        match self {
            Self::Size {
                digits,
                size,
                len,
                ext,
            } => {
                if len >= MAX_CHUNK_LINE {
                    return Err(());
                }
                let len = len + 1;
                match byte {
                    b'\n' if digits == 0 => Err(()),
                    b'\n' if size == 0 => Ok(Some(Self::Trailers { line: 0, total: 0 })),
                    b'\n' => Ok(Some(Self::Data(size))),
                    _ if ext => Ok(Some(Self::Size {
                        digits,
                        size,
                        len,
                        ext,
                    })),
                    b'\r' | b';' | b' ' | b'\t' => Ok(Some(Self::Size {
                        digits,
                        size,
                        len,
                        ext: true,
                    })),
                    _ => {
                        let digit = (byte as char).to_digit(16).ok_or(())?;
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(digit)))
                            .ok_or(())?;
                        Ok(Some(Self::Size {
                            digits: digits + 1,
                            size,
                            len,
                            ext,
                        }))
                    }
                }
            }
            Self::Data(left) => Ok(Some(Self::Data(left))),
            Self::DataEnd => match byte {
                b'\r' => Ok(Some(Self::DataEnd)),
                b'\n' => Ok(Some(Self::SIZE)),
                _ => Err(()),
            },
            Self::Trailers { line, total } => {
                let total = total + 1;
                if total > max_trailers {
                    return Err(());
                }
                match byte {
                    // An empty line ends the trailer section and the message.
                    b'\n' if line == 0 => Ok(None),
                    b'\n' => Ok(Some(Self::Trailers { line: 0, total })),
                    b'\r' => Ok(Some(Self::Trailers { line, total })),
                    _ => Ok(Some(Self::Trailers {
                        line: line + 1,
                        total,
                    })),
                }
            }
        }
    }
}

/// The framing of a complete request head, or why it is refused (RFC 9112 §6).
fn framing(head: &[u8]) -> Result<Framing, Refusal> {
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .skip_while(|line| line.is_empty());
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let version = parts.next_back().unwrap_or_default();
    if method == b"PRI" && version == b"HTTP/2.0" {
        return Ok(Framing::Aside);
    }
    let mut length: Option<u64> = None;
    let mut codings: Vec<Vec<u8>> = Vec::new();
    let mut connection_upgrade = false;
    let mut upgrade = false;
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            for item in value.split(|b| *b == b',') {
                let item = item.trim_ascii();
                if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                    return Err(Refusal::BadRequest("malformed Content-Length"));
                }
                let n = std::str::from_utf8(item)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(Refusal::BadRequest("malformed Content-Length"))?;
                match length {
                    Some(seen) if seen != n => {
                        return Err(Refusal::BadRequest("differing Content-Length values"));
                    }
                    _ => length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings.extend(
                value
                    .split(|b| *b == b',')
                    .map(|c| c.trim_ascii().to_ascii_lowercase())
                    .filter(|c| !c.is_empty()),
            );
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_upgrade |= value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    let framing = if codings.is_empty() {
        Framing::Length(length.unwrap_or(0))
    } else {
        if version != b"HTTP/1.1" {
            return Err(Refusal::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if length.is_some() {
            return Err(Refusal::BadRequest(
                "both Transfer-Encoding and Content-Length (RFC 9112 §6.3)",
            ));
        }
        let chunked = |c: &Vec<u8>| c.as_slice() == b"chunked";
        let last_chunked = codings.last().is_some_and(chunked);
        if !last_chunked || codings.iter().filter(|c| chunked(c)).count() > 1 {
            return Err(Refusal::BadRequest(
                "Transfer-Encoding whose final coding is not chunked (RFC 9112 §6.1)",
            ));
        }
        Framing::Chunked
    };
    if method == b"CONNECT" || (connection_upgrade && upgrade) {
        return Ok(Framing::Aside);
    }
    Ok(framing)
}

/// The value of a short, printable `Accept` line among the complete lines of `head`.
fn accept_of(head: &[u8]) -> Option<Vec<u8>> {
    head.split(|b| *b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|b| *b == b':')?;
        if !line[..colon].eq_ignore_ascii_case(b"accept") {
            return None;
        }
        let value = line[colon + 1..].trim_ascii();
        (value.len() <= MAX_ACCEPT && value.iter().all(|b| (0x20..0x7f).contains(b)))
            .then(|| value.to_vec())
    })
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// `n` as a `usize`, at most `usize::MAX`.
fn clamp(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests;
