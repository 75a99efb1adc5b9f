//! Serving the Admin API over TLS: TCP accept, one task per connection (TLS handshake, then
//! HTTP/1.1 or HTTP/2 by ALPN), the client's address and verified certificate handed to the
//! router as request extensions ([`ConnectInfo`], [`ClientCertificate`]).
//!
//! Each handshake takes the rustls configuration current at accept time, so a rotated
//! certificate (or client CA) is used by new connections while established ones keep theirs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use gatehouse_shared::cluster::ReloadingConfig;
use gatehouse_shared::x509;

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait for open connections to finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The client certificate a TLS connection presented and the configured client CA verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientCertificate {
    /// Its subject names: subjectAltName entries, then the common name.
    pub(crate) subjects: Vec<String>,
    /// Lowercase hex SHA-256 of the certificate, for logs.
    pub(crate) fingerprint: String,
}

/// Serves `app` over TLS on `listener` until `shutdown` turns true, then lets open requests
/// finish for a few seconds.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<ReloadingConfig<ServerConfig>>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin API accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let acceptor = TlsAcceptor::from(tls.current());
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::info!(%remote, %error, "admin API TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "admin API TLS handshake timed out");
                    return;
                }
            };
            let client_certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| x509::cert_facts(leaf).ok())
                .map(|facts| ClientCertificate {
                    subjects: facts.sans.into_iter().chain(facts.common_name).collect(),
                    fingerprint: facts.fingerprint_sha256,
                });
            let service =
                hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(remote));
                    if let Some(certificate) = &client_certificate {
                        request.extensions_mut().insert(certificate.clone());
                    }
                    let app = app.clone();
                    async move {
                        let response = app.oneshot(request.map(axum::body::Body::new)).await;
                        Ok::<_, Infallible>(match response {
                            Ok(response) => response,
                            Err(infallible) => match infallible {},
                        })
                    }
                });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%remote, %error, "admin API connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin API connections still open at shutdown; closing them");
    }
}
