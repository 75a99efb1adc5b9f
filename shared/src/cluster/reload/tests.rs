//! Rotating the CP certificate on disk under a running listener.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::cluster::pki;
use crate::cluster::test_support::{TempDir, fingerprint_of_file, new_pki};
use crate::x509;

/// A CP listener that takes [`ReloadingConfig::current`] for each new connection and echoes
/// what it reads.
async fn echo_server(config: Arc<ReloadingConfig<ServerConfig>>) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = TlsAcceptor::from(config.current());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 64];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    let _ = tls.flush().await;
                }
            });
        }
    });
    (addr, task)
}

/// Connects as DP `dp1` of the PKI in `dir`.
async fn connect(addr: &str, dir: &TempDir) -> TlsStream<TcpStream> {
    let config = client_config(ClusterMtls::Pki, &dir.files("dp1"), "localhost").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config).connect(name, tcp).await.unwrap()
}

/// Sends `text` and reads it back.
async fn echo(tls: &mut TlsStream<TcpStream>, text: &[u8]) {
    tls.write_all(text).await.unwrap();
    tls.flush().await.unwrap();
    let mut back = vec![0u8; text.len()];
    tls.read_exact(&mut back).await.unwrap();
    assert_eq!(back, text);
}

/// Fingerprint of the CP certificate a connection saw.
fn cp_fingerprint(tls: &TlsStream<TcpStream>) -> String {
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    x509::sha256_hex(&certs[0])
}

/// A new CP certificate and key from the same CA, written in a side directory, so a test
/// can put them in place one at a time.
fn renewed_cp(dir: &TempDir) -> TempDir {
    let side = TempDir::new("reload-side");
    std::fs::create_dir_all(side.path()).unwrap();
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(dir.join(file), side.join(file)).unwrap();
    }
    pki::issue_cp(side.path(), &[], 30, false).unwrap();
    side
}

#[tokio::test]
async fn a_rotated_certificate_is_used_by_new_connections_only() {
    let dir = new_pki("reload-rotate", &["dp1"]);
    let config = Arc::new(ReloadingConfig::server(ClusterMtls::Pki, dir.files("cp")).unwrap());
    let (addr, server) = echo_server(config.clone()).await;

    let old_fingerprint = fingerprint_of_file(&dir.join("cp.crt"));
    let mut old = connect(&addr, &dir).await;
    echo(&mut old, b"before").await;
    assert_eq!(cp_fingerprint(&old), old_fingerprint);
    assert!(!config.reload_if_changed().unwrap(), "nothing changed yet");

    // Rotate: a new certificate (new key, new serial) from the same CA.
    pki::issue_cp(dir.path(), &[], 30, true).unwrap();
    let new_fingerprint = fingerprint_of_file(&dir.join("cp.crt"));
    assert_ne!(new_fingerprint, old_fingerprint);
    assert!(config.reload_if_changed().unwrap());
    assert!(
        !config.reload_if_changed().unwrap(),
        "reloaded once per change"
    );

    let mut new = connect(&addr, &dir).await;
    echo(&mut new, b"after").await;
    assert_eq!(cp_fingerprint(&new), new_fingerprint);

    // The connection made before the rotation still works, on its original certificate.
    echo(&mut old, b"still here").await;
    assert_eq!(cp_fingerprint(&old), old_fingerprint);
    server.abort();
}

#[tokio::test]
async fn bad_files_keep_the_current_configuration() {
    let dir = new_pki("reload-bad", &["dp1"]);
    let config = Arc::new(ReloadingConfig::server(ClusterMtls::Pki, dir.files("cp")).unwrap());
    let (addr, server) = echo_server(config.clone()).await;
    let fingerprint = fingerprint_of_file(&dir.join("cp.crt"));
    let before = config.current();

    std::fs::write(dir.join("cp.crt"), "garbage").unwrap();
    let error = config.reload_if_changed().unwrap_err();
    assert!(
        matches!(error, ClusterTlsError::Certificate { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("cp.crt: no certificate found"),
        "{error}"
    );
    assert!(Arc::ptr_eq(&before, &config.current()));
    // Reported once; the same bad content is not rebuilt at every check.
    assert!(!config.reload_if_changed().unwrap());

    let mut tls = connect(&addr, &dir).await;
    echo(&mut tls, b"old certificate").await;
    assert_eq!(cp_fingerprint(&tls), fingerprint);

    // A rotation seen half-way: the new certificate with the old key is refused ...
    let side = renewed_cp(&dir);
    std::fs::copy(side.join("cp.crt"), dir.join("cp.crt")).unwrap();
    let error = config.reload_if_changed().unwrap_err();
    assert!(
        matches!(error, ClusterTlsError::KeyMismatch { .. }),
        "{error}"
    );
    assert!(Arc::ptr_eq(&before, &config.current()));
    // ... and taken once the key follows.
    std::fs::copy(side.join("cp.key"), dir.join("cp.key")).unwrap();
    assert!(config.reload_if_changed().unwrap());
    let mut tls = connect(&addr, &dir).await;
    echo(&mut tls, b"new certificate").await;
    assert_eq!(
        cp_fingerprint(&tls),
        fingerprint_of_file(&side.join("cp.crt"))
    );

    // A deleted file is an error too, and the configuration stays.
    let current = config.current();
    std::fs::remove_file(dir.join("cp.key")).unwrap();
    let error = config.reload_if_changed().unwrap_err();
    assert!(matches!(error, ClusterTlsError::Missing { .. }), "{error}");
    assert!(Arc::ptr_eq(&current, &config.current()));
    server.abort();
}

#[test]
fn the_first_build_must_succeed() {
    let dir = TempDir::new("reload-none");
    let error = ReloadingConfig::server(ClusterMtls::Pki, dir.files("cp")).unwrap_err();
    assert!(matches!(error, ClusterTlsError::Missing { .. }), "{error}");
    let error = ReloadingConfig::client(ClusterMtls::Shared, dir.files("shared"), "x").unwrap_err();
    assert!(matches!(error, ClusterTlsError::Missing { .. }), "{error}");
}

#[tokio::test]
async fn the_watcher_reloads_in_the_background() {
    let dir = new_pki("reload-watch", &["dp1"]);
    let config =
        Arc::new(ReloadingConfig::client(ClusterMtls::Pki, dir.files("dp1"), "localhost").unwrap());
    assert_eq!(config.paths(), dir.files("dp1").paths().as_slice());
    let watcher = tokio::spawn(config.clone().watch(Duration::from_millis(20)));
    let before = config.current();

    pki::issue(dir.path(), "dp1", 30, true).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while Arc::ptr_eq(&before, &config.current()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher did not reload"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watcher.abort();
}
