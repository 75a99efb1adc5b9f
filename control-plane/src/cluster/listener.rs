//! The cluster listener: TCP accept, one task per TLS handshake (so a slow or hostile peer
//! holds up nobody), then tonic over the handshaken streams.
//!
//! Each handshake takes the rustls configuration current at accept time, so a rotated
//! certificate is used by new connections while established ones keep theirs. A refused
//! handshake is logged with the peer address and rustls' reason.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;

use gatehouse_proto::v1::config_sync_server::ConfigSyncServer;
use gatehouse_proto::v1::enrolment_server::EnrolmentServer;

use super::Tls;
use super::enrol::EnrolService;
use super::service::SyncService;

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keepalive: a ping every interval, the connection dropped when unanswered within the
/// timeout, so a dead data plane is noticed within seconds.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest message sent: a snapshot (its config is at most 512 MiB uncompressed, and only
/// compressed when that makes it smaller), plus room for the envelope.
const MAX_ENCODING_MESSAGE_SIZE: usize = 513 * 1024 * 1024;
/// Largest message received from a data plane (Hello, Ack with an error text, Heartbeat).
const MAX_DECODING_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Handshaken connections waiting for tonic.
const PENDING_CONNECTIONS: usize = 128;
/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait for the sync streams to close at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Largest enrolment request (token, node id, CSR, hostname).
const MAX_ENROL_MESSAGE_SIZE: usize = 64 * 1024;

/// Where a handshaken connection goes: connections that presented a (verified) client
/// certificate to the config-sync server, the others to the enrolment server, which serves
/// nothing else. A connection without a certificate exists only when enrolment is on (the
/// TLS configuration then makes the client certificate optional).
struct Routes {
    mutual: mpsc::Sender<TlsStream<TcpStream>>,
    enrol: Option<mpsc::Sender<TlsStream<TcpStream>>>,
}

/// Serves `service` (and `enrolment`, to connections without a client certificate) on
/// `listener` until `shutdown` turns true.
pub(super) async fn serve(
    listener: TcpListener,
    tls: Tls,
    service: SyncService,
    enrolment: Option<EnrolService>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, rx) = mpsc::channel::<TlsStream<TcpStream>>(PENDING_CONNECTIONS);
    let (enrol_tx, enrol_server) = match enrolment {
        Some(enrolment) => {
            let (enrol_tx, enrol_rx) = mpsc::channel::<TlsStream<TcpStream>>(PENDING_CONNECTIONS);
            let incoming = ReceiverStream::new(enrol_rx).map(Ok::<_, io::Error>);
            let mut signal = shutdown.clone();
            let server = Server::builder()
                .timeout(HANDSHAKE_TIMEOUT)
                .add_service(
                    EnrolmentServer::new(enrolment)
                        .max_decoding_message_size(MAX_ENROL_MESSAGE_SIZE),
                )
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = signal.wait_for(|stop| *stop).await;
                });
            let task = tokio::spawn(async move {
                if let Err(error) = server.await {
                    tracing::error!(%error, "enrolment server failed");
                }
            });
            (Some(enrol_tx), Some(task))
        }
        None => (None, None),
    };
    let routes = Routes {
        mutual: tx,
        enrol: enrol_tx,
    };
    let accept = tokio::spawn(accept_loop(listener, tls, routes, shutdown.clone()));
    let incoming = ReceiverStream::new(rx).map(Ok::<_, io::Error>);
    let mut signal = shutdown.clone();
    let server = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(
            ConfigSyncServer::new(service)
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_ENCODING_MESSAGE_SIZE),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = signal.wait_for(|stop| *stop).await;
        });
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => Some(result),
        () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
            // The streams end on the same signal; give them a moment to say goodbye.
            tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.ok()
        }
    };
    match result {
        Some(Ok(())) => tracing::info!("cluster listener stopped"),
        Some(Err(error)) => tracing::error!(%error, "cluster listener failed"),
        None => tracing::warn!(
            "cluster listener stopped with sync streams still open after {SHUTDOWN_GRACE:?}"
        ),
    }
    accept.abort();
    if let Some(task) = enrol_server {
        task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Tls,
    routes: Routes,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "cluster listener cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let acceptor = TlsAcceptor::from(tls.current());
        let mutual = routes.mutual.clone();
        let enrol = routes.enrol.clone();
        tokio::spawn(async move {
            if let Some(stream) = handshake(acceptor, tcp, peer).await {
                let has_cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|certs| !certs.is_empty());
                // Fails only when the server has stopped.
                if has_cert {
                    let _ = mutual.send(stream).await;
                } else if let Some(enrol) = enrol {
                    let _ = enrol.send(stream).await;
                } else {
                    // Cannot happen: without enrolment the handshake requires a certificate.
                    tracing::warn!(%peer, "cluster connection without a client certificate dropped");
                }
            }
        });
    }
}

/// Runs the TLS handshake of one connection; logs and returns `None` when it is refused.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let (_, connection) = stream.get_ref();
            let identity = connection
                .peer_certificates()
                .and_then(gatehouse_shared::cluster::peer_identity);
            tracing::debug!(
                %peer,
                common_name = identity.as_ref().and_then(|i| i.common_name.as_deref()).unwrap_or("-"),
                "cluster handshake completed"
            );
            Some(stream)
        }
        // A TCP probe (load balancer health check, port scan) closes without a word.
        Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::debug!(%peer, %error, "cluster connection closed during the handshake");
            None
        }
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "cluster handshake refused");
            None
        }
        Err(_) => {
            tracing::warn!(
                %peer,
                error = format_args!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
                "cluster handshake refused"
            );
            None
        }
    }
}
