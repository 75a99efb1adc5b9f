//! The hyper-util connector of TLS upstream clients: TCP connect (no Nagle), then a rustls
//! handshake with a fixed server name, both within one connect timeout.
//!
//! The URI the client hands over is `https://peer:port/...`: the address to connect to
//! (an IP address or a host name, resolved here). The server name sent as SNI and verified
//! is the connector's own: one connector, hence one hyper pool, per server name, so a pooled
//! connection made for one name is never reused for another on the same address.
//!
//! A `http://` URI is refused: the connector never sends plaintext.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::error::{FailureContext, TlsFailure, UpstreamTlsError};
use crate::proxy::ConnectScope;

/// ALPN protocol id of HTTP/2.
pub(super) const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub(super) const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Connects to the URI's address and runs the TLS handshake for its server name.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    inner: Arc<Inner>,
}

struct Inner {
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    connect_timeout: Duration,
    context: FailureContext,
}

/// An upstream TLS connection, as the hyper client sees it.
pub(crate) struct TlsConnection {
    stream: TlsStream<TcpStream>,
    addr: String,
    connector: Arc<Inner>,
    /// Whether the upstream has sent data since the handshake. Until then a TLS alert is
    /// the upstream's late verdict on the handshake (TLS 1.3 judges the client certificate
    /// after the client has finished) and is reported as a handshake failure.
    confirmed: bool,
}

// === impl TlsConnector ===

impl TlsConnector {
    pub(super) fn new(
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
        connect_timeout: Duration,
        context: FailureContext,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                tls: tokio_rustls::TlsConnector::from(config),
                server_name,
                connect_timeout,
                context,
            }),
        }
    }
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsConnection>;
    type Error = UpstreamTlsError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let inner = self.inner.clone();
        // The request's own connect timeout, when called for a proxied request.
        let scope = ConnectScope::current();
        Box::pin(async move { Inner::connect(inner, uri, scope).await.map(TokioIo::new) })
    }
}

// === impl Inner ===

impl Inner {
    async fn connect(
        this: Arc<Self>,
        uri: Uri,
        scope: ConnectScope,
    ) -> Result<TlsConnection, UpstreamTlsError> {
        if uri.scheme_str() != Some("https") {
            return Err(UpstreamTlsError::NotHttps {
                uri: uri.to_string(),
            });
        }
        let host = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or_default()
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let addr = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let timeout = scope.begin(this.connect_timeout);
        match tokio::time::timeout(timeout, this.clone().establish(host, port, addr.clone())).await
        {
            Ok(result) => {
                if result.is_ok() {
                    scope.connected();
                    crate::metrics::METRICS.upstream_connection(true);
                }
                result
            }
            Err(_) => Err(UpstreamTlsError::Timeout { addr, timeout }),
        }
    }

    async fn establish(
        self: Arc<Self>,
        host: String,
        port: u16,
        addr: String,
    ) -> Result<TlsConnection, UpstreamTlsError> {
        let candidates: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|source| UpstreamTlsError::Resolve {
                    host: host.clone(),
                    source,
                })?
                .collect(),
        };
        let mut last = None;
        let mut tcp = None;
        for candidate in candidates {
            match TcpStream::connect(candidate).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(error) => last = Some(error),
            }
        }
        let tcp = match (tcp, last) {
            (Some(tcp), _) => tcp,
            (None, source) => {
                return Err(UpstreamTlsError::Connect {
                    addr,
                    source: source.unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, "the name has no address")
                    }),
                });
            }
        };
        tcp.set_nodelay(true)
            .map_err(|source| UpstreamTlsError::Connect {
                addr: addr.clone(),
                source,
            })?;
        match self.tls.connect(self.server_name.clone(), tcp).await {
            Ok(stream) => Ok(TlsConnection {
                stream,
                addr,
                connector: self,
                confirmed: false,
            }),
            Err(error) => Err(UpstreamTlsError::Handshake {
                addr,
                server_name: self.server_name.to_str().into_owned(),
                failure: TlsFailure::from_io(&error, self.context),
            }),
        }
    }
}

// === impl TlsConnection ===

impl TlsConnection {
    /// A read error before the upstream sent anything: a TLS alert there is its verdict on
    /// the handshake, reported as such.
    fn early_error(&self, error: io::Error) -> io::Error {
        let alert = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(|tls| match tls {
                rustls::Error::AlertReceived(alert) => Some(*alert),
                _ => None,
            });
        match alert {
            Some(alert) => io::Error::new(
                io::ErrorKind::ConnectionRefused,
                UpstreamTlsError::Handshake {
                    addr: self.addr.clone(),
                    server_name: self.connector.server_name.to_str().into_owned(),
                    failure: TlsFailure::from_alert(alert, self.connector.context),
                },
            ),
            None => error,
        }
    }
}

impl Connection for TlsConnection {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.stream.get_ref().1.alpn_protocol() == Some(ALPN_H2) {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.confirmed = true;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) if !this.confirmed => Poll::Ready(Err(this.early_error(error))),
            other => other,
        }
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
