//! Stream routes end to end: a `gatehouse-dp` with `--stream-listen`, real TLS clients and
//! upstreams on loopback. `tls_passthrough` routes by SNI without terminating (the client
//! sees the upstream's certificate), `tls` terminates with the CP's certificate for the SNI
//! and forwards plaintext (`tcp` service) or re-encrypts (`tls` service), `tcp` routes take
//! plain connections by destination port.

mod cluster_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use cluster_support::*;
use gatehouse_tests::certs::{Algorithm, Ca, Pem};
use gatehouse_tests::{Admin, DataPlane, config_version, log_field, patience};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// An echo server on 127.0.0.1: plain, or TLS with `pem` (recording the SNI it was asked
/// for, answering `sni=<name>\n` first).
struct Echo {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Echo {
    async fn plain() -> Result<Echo> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(echo(tcp));
            }
        });
        Ok(Echo { addr, task })
    }

    async fn tls(pem: &Pem) -> Result<Echo> {
        let chain =
            CertificateDer::pem_slice_iter(pem.cert.as_bytes()).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
                    if tls
                        .write_all(format!("sni={sni}\n").as_bytes())
                        .await
                        .is_ok()
                    {
                        echo(tls).await;
                    }
                });
            }
        });
        Ok(Echo { addr, task })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    let (mut read, mut write) = tokio::io::split(stream);
    let _ = tokio::io::copy(&mut read, &mut write).await;
    let _ = write.shutdown().await;
}

/// A TLS client trusting `ca` (PEM), connecting to `addr` with SNI `name`.
async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    ca: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio::time::timeout(
        IO_TIMEOUT,
        connector.connect(ServerName::try_from(name.to_owned())?, tcp),
    )
    .await??;
    Ok(tls)
}

/// Sends `message` and reads the same number of bytes back.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    message: &[u8],
) -> Result<Vec<u8>> {
    stream.write_all(message).await?;
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut back)).await??;
    Ok(back)
}

/// Reads one `\n`-terminated line.
async fn read_line<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut byte)).await??;
        ensure!(n == 1, "closed after {:?}", String::from_utf8_lossy(&line));
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

/// The leaf certificate the server presented.
fn peer_leaf(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Result<Vec<u8>> {
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .context("no certificates")?;
    Ok(certs.first().context("empty chain")?.to_vec())
}

fn der(pem: &str) -> Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?.to_vec())
}

async fn post(admin: &Admin, path: &str, body: Value) -> Result<Value> {
    let created = admin.post_json(path, &body).await?;
    ensure!(created.status == 201, "POST {path} {body}: {created:?}");
    Ok(created.body)
}

/// The DP's stream listener address, from its log.
async fn stream_addr(dp: &DataPlane) -> Result<SocketAddr> {
    let line = dp
        .wait_for_log("stream listener listening", patience())
        .await?;
    Ok(log_field(&line, "addr")
        .context("no addr in the stream listener line")?
        .parse()?)
}

#[tokio::test]
async fn stream_routes_pass_through_terminate_and_forward_by_port() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = DataPlane::start(
        cluster
            .dp_options("dp1")
            .arg("--stream-listen")
            .arg("127.0.0.1:0"),
    )
    .await?;
    let stream = stream_addr(&dp).await?;

    let upstream_ca = Ca::new("upstream CA")?;
    let db_leaf = upstream_ca.leaf(&["db.test"], Algorithm::Ecdsa, 30)?;
    let tls_echo = Echo::tls(&db_leaf).await?;
    let plain_echo = Echo::plain().await?;
    let edge_ca = Ca::new("edge CA")?;
    let edge_leaf = edge_ca.leaf(&["echo.test", "secure.test"], Algorithm::Ecdsa, 30)?;

    // The certificate the DP terminates with, by SNI.
    post(
        admin,
        "/certificates",
        json!({"cert": edge_leaf.cert, "key": edge_leaf.key,
               "snis": ["echo.test", "secure.test"]}),
    )
    .await?;
    let ca = post(
        admin,
        "/ca_certificates",
        json!({"cert": upstream_ca.pem.cert}),
    )
    .await?;
    // tls_passthrough: the TLS echo sees the client's own handshake.
    let raw = post(
        admin,
        "/services",
        json!({"name": "raw", "protocol": "tcp", "host": "127.0.0.1",
               "port": tls_echo.addr.port()}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"protocols": ["tls_passthrough"], "snis": ["db.test"],
               "service": {"id": raw["id"]}}),
    )
    .await?;
    // tls → tcp: terminated here, plaintext to the echo.
    let plain = post(
        admin,
        "/services",
        json!({"name": "plain", "protocol": "tcp", "host": "127.0.0.1",
               "port": plain_echo.addr.port()}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"protocols": ["tls"], "snis": ["echo.test"], "service": {"id": plain["id"]}}),
    )
    .await?;
    // tls → tls: terminated here, then TLS again to `db.test` (an upstream whose target is
    // the TLS echo, named by its host_header as Kong does), verified with the uploaded CA.
    post(
        admin,
        "/upstreams",
        json!({"name": "db.test", "host_header": "db.test"}),
    )
    .await?;
    post(
        admin,
        "/upstreams/db.test/targets",
        json!({"target": tls_echo.addr.to_string()}),
    )
    .await?;
    let secure = post(
        admin,
        "/services",
        json!({"name": "secure", "protocol": "tls", "host": "db.test", "port": 443,
               "ca_certificates": [ca["id"]]}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"protocols": ["tls"], "snis": ["secure.test"], "service": {"id": secure["id"]}}),
    )
    .await?;
    // tcp by destination port.
    post(
        admin,
        "/routes",
        json!({"protocols": ["tcp"], "destinations": [{"port": stream.port()}],
               "service": {"id": plain["id"]}}),
    )
    .await?;
    dp.wait_for_version(config_version(admin).await?, patience())
        .await?;

    // Passthrough: the upstream's own certificate, and the upstream saw the SNI.
    let mut tls = tls_connect(stream, "db.test", &upstream_ca.pem.cert).await?;
    assert_eq!(peer_leaf(&tls)?, der(&db_leaf.cert)?);
    assert_eq!(read_line(&mut tls).await?, "sni=db.test");
    assert_eq!(round_trip(&mut tls, b"through").await?, b"through");

    // Terminated: the CP's certificate, plaintext echo behind.
    let mut tls = tls_connect(stream, "echo.test", &edge_ca.pem.cert).await?;
    assert_eq!(peer_leaf(&tls)?, der(&edge_leaf.cert)?);
    let big = vec![b'x'; 256 * 1024];
    assert_eq!(round_trip(&mut tls, &big).await?, big);

    // Terminated and re-encrypted: the upstream saw the service host as SNI.
    let mut tls = tls_connect(stream, "secure.test", &edge_ca.pem.cert).await?;
    assert_eq!(peer_leaf(&tls)?, der(&edge_leaf.cert)?);
    assert_eq!(read_line(&mut tls).await?, "sni=db.test");
    assert_eq!(
        round_trip(&mut tls, b"twice encrypted").await?,
        b"twice encrypted"
    );

    // Plain TCP by port.
    let mut tcp = TcpStream::connect(stream).await?;
    assert_eq!(round_trip(&mut tcp, b"PING\r\n").await?, b"PING\r\n");

    // An SNI no route takes: closed, no handshake.
    let refused = tls_connect(stream, "unknown.test", &edge_ca.pem.cert).await;
    assert!(refused.is_err(), "an unrouted SNI must not get a handshake");
    // And the listener still serves.
    let mut tcp = TcpStream::connect(stream).await?;
    assert_eq!(round_trip(&mut tcp, b"again").await?, b"again");
    Ok(())
}

#[tokio::test]
async fn a_tls_service_whose_certificate_does_not_verify_is_never_reached() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = DataPlane::start(
        cluster
            .dp_options("dp1")
            .arg("--stream-listen")
            .arg("127.0.0.1:0"),
    )
    .await?;
    let stream = stream_addr(&dp).await?;
    let stranger = Ca::new("unknown CA")?;
    let leaf = stranger.leaf(&["db.test"], Algorithm::Ecdsa, 30)?;
    let tls_echo = Echo::tls(&leaf).await?;
    let edge_ca = Ca::new("edge CA")?;
    let edge_leaf = edge_ca.leaf(&["secure.test"], Algorithm::Ecdsa, 30)?;
    post(
        admin,
        "/certificates",
        json!({"cert": edge_leaf.cert, "key": edge_leaf.key, "snis": ["secure.test"]}),
    )
    .await?;
    post(
        admin,
        "/upstreams",
        json!({"name": "db.test", "host_header": "db.test"}),
    )
    .await?;
    post(
        admin,
        "/upstreams/db.test/targets",
        json!({"target": tls_echo.addr.to_string()}),
    )
    .await?;
    let service = post(
        admin,
        "/services",
        json!({"name": "secure", "protocol": "tls", "host": "db.test", "port": 443,
               "retries": 0}),
    )
    .await?;
    post(
        admin,
        "/routes",
        json!({"protocols": ["tls"], "snis": ["secure.test"], "service": {"id": service["id"]}}),
    )
    .await?;
    dp.wait_for_version(config_version(admin).await?, patience())
        .await?;

    // The DP verifies before the client's handshake: the client gets closed.
    let outcome = async {
        let mut tls = tls_connect(stream, "secure.test", &edge_ca.pem.cert).await?;
        read_line(&mut tls).await
    }
    .await;
    assert!(outcome.is_err(), "{outcome:?}");
    let line = dp.wait_for_log("upstream TLS failed", patience()).await?;
    assert!(line.contains("not issued by a trusted CA"), "{line}");
    Ok(())
}
