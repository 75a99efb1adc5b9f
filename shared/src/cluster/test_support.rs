//! Helpers of the cluster tests: temporary PKI directories and real TLS handshakes over
//! loopback TCP.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::pki;
use super::tls::{ClusterTlsFiles, PeerIdentity, peer_identity};

/// Longest a test handshake may take.
const PATIENCE: Duration = Duration::from_secs(10);

/// A directory removed when dropped.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

/// What each side of one handshake saw.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The CP: the DP's identity, or why the handshake failed.
    pub(crate) server: Result<Option<PeerIdentity>, String>,
    /// The DP: the CP's certificate chain and ALPN protocol once the CP spoke, or the error.
    pub(crate) client: Result<(Vec<CertificateDer<'static>>, Option<Vec<u8>>), String>,
}

// === impl TempDir ===

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "gatehouse-cluster-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }

    /// The files of node `stem` in this directory, with `ca.crt` as the CA.
    pub(crate) fn files(&self, stem: &str) -> ClusterTlsFiles {
        ClusterTlsFiles {
            cert: self.join(format!("{stem}.crt")),
            key: self.join(format!("{stem}.key")),
            ca: Some(self.join("ca.crt")),
            allowed_common_names: Vec::new(),
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// === impl Outcome ===

impl Outcome {
    /// Panics unless both sides completed.
    pub(crate) fn assert_ok(&self) {
        assert!(
            self.server.is_ok() && self.client.is_ok(),
            "handshake failed: {self:?}"
        );
    }

    /// The CP's error; panics if the CP accepted.
    pub(crate) fn server_error(&self) -> &str {
        match &self.server {
            Err(error) => error,
            Ok(_) => panic!("the CP accepted: {self:?}"),
        }
    }

    /// The DP's error; panics if the DP completed.
    pub(crate) fn client_error(&self) -> &str {
        match &self.client {
            Err(error) => error,
            Ok(_) => panic!("the DP completed: {self:?}"),
        }
    }
}

/// A fresh PKI (`pki::init` with the default CP names) with the given DPs.
pub(crate) fn new_pki(tag: &str, dps: &[&str]) -> TempDir {
    let dir = TempDir::new(tag);
    let dps: Vec<String> = dps.iter().map(|d| (*d).to_owned()).collect();
    pki::init(dir.path(), &[], &dps, 30, false).unwrap();
    dir
}

/// One TLS handshake over loopback between a CP using `server` and a DP using `client`,
/// connecting with `server_name`. After the handshake the CP sends one line, which the DP
/// reads, so a DP refused by the CP (TLS 1.3 reports it after the DP's side completed) sees
/// the error too.
pub(crate) async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    server_name: &str,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let peer = tls.get_ref().1.peer_certificates().and_then(peer_identity);
        tls.write_all(b"ok\n").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        // Wait for the DP to close, so the line is not lost to a reset.
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        Ok::<_, String>(peer)
    });
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut line = [0u8; 3];
        tls.read_exact(&mut line).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        let certs = conn
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let _ = tls.shutdown().await;
        Ok::<_, String>((certs, alpn))
    };
    let client = tokio::time::timeout(PATIENCE, client_side)
        .await
        .unwrap_or_else(|_| Err("DP timed out".to_owned()));
    let server = tokio::time::timeout(PATIENCE, server_task)
        .await
        .map_err(|_| "CP timed out".to_owned())
        .and_then(|joined| joined.map_err(|e| e.to_string()))
        .and_then(|result| result);
    Outcome { server, client }
}

/// SHA-256 hex of the first certificate in the PEM file at `path`.
pub(crate) fn fingerprint_of_file(path: &Path) -> String {
    let pem = std::fs::read_to_string(path).unwrap();
    let certs = crate::x509::parse_certificates(&pem).unwrap();
    crate::x509::sha256_hex(&certs[0])
}
