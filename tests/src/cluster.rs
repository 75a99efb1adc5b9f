//! Helpers of the cluster tests: the CP's cluster listener and clustering endpoints, fields
//! of tracing log lines, and a raw TLS client for the cluster port.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::admin::Admin;
use crate::wait::wait_until;

/// The HTTP/2 client connection preface followed by an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// How long a raw TLS probe waits for the server's first bytes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of a raw TLS connection to the cluster port ([`tls_handshake`]).
#[derive(Debug)]
pub enum Handshake {
    /// The handshake completed and the server answered the HTTP/2 preface: it accepted us.
    Accept {
        /// The server's certificate chain, leaf first.
        peer_certificates: Vec<CertificateDer<'static>>,
    },
    /// The handshake failed, or the server closed the connection or sent an alert right
    /// after it (TLS 1.3 servers reject a client certificate after the client's Finished).
    Refuse(String),
}

/// The value of `key=` in a tracing text line (`... snapshot applied version=3 hash=ab took_ms=2`),
/// without quotes; `None` if the line has no such field.
pub fn log_field(line: &str, key: &str) -> Option<String> {
    let needle = format!("{key}=");
    let mut search = line;
    loop {
        let at = search.find(&needle)?;
        let boundary = at == 0 || search[..at].ends_with([' ', '\t', '{', ',']);
        let rest = &search[at + needle.len()..];
        if boundary {
            return Some(if let Some(quoted) = rest.strip_prefix('"') {
                let mut out = String::new();
                let mut chars = quoted.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => out.extend(chars.next()),
                        '"' => break,
                        c => out.push(c),
                    }
                }
                out
            } else {
                rest.split(|c: char| c.is_whitespace() || c == ',' || c == '}')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            });
        }
        search = rest;
    }
}

/// `config_version` of the CP's `GET /status`; fails unless the status is 200 and the database
/// reachable.
pub async fn config_version(admin: &Admin) -> Result<i64> {
    let status = admin.get("/status").await?;
    if status.status != 200 {
        bail!("GET /status: {status:?}");
    }
    if status.body["database"]["reachable"] != serde_json::Value::Bool(true) {
        bail!("GET /status: database unreachable: {}", status.body);
    }
    status.body["config_version"]
        .as_i64()
        .with_context(|| format!("GET /status: no config_version: {}", status.body))
}

/// The `data` of `GET /clustering/data-planes`.
pub async fn data_planes(admin: &Admin) -> Result<Vec<Value>> {
    let response = admin.get("/clustering/data-planes").await?;
    if response.status != 200 {
        bail!("GET /clustering/data-planes: {response:?}");
    }
    response.body["data"]
        .as_array()
        .cloned()
        .with_context(|| format!("GET /clustering/data-planes: no data: {}", response.body))
}

/// The entry of `GET /clustering/data-planes` with id `id`, if listed.
pub async fn data_plane(admin: &Admin, id: &str) -> Result<Option<Value>> {
    Ok(data_planes(admin)
        .await?
        .into_iter()
        .find(|dp| dp["id"].as_str() == Some(id)))
}

/// Waits until `GET /clustering/data-planes` lists `id` with an entry `accept` likes.
pub async fn wait_for_data_plane(
    admin: &Admin,
    id: &str,
    patience: Duration,
    mut accept: impl FnMut(&Value) -> bool,
) -> Result<Value> {
    let mut last;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match data_plane(admin, id).await {
            Ok(Some(entry)) if accept(&entry) => return Ok(entry),
            Ok(entry) => last = entry.unwrap_or(Value::Null),
            Err(e) => last = Value::String(format!("{e:#}")),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "/clustering/data-planes entry of {id} not as expected within {patience:?}; last: {}",
                last
            );
        }
        tokio::time::sleep(crate::wait::POLL_INTERVAL).await;
    }
}

/// `GET /clustering/status`.
pub async fn clustering_status(admin: &Admin) -> Result<Value> {
    let response = admin.get("/clustering/status").await?;
    if response.status != 200 {
        bail!("GET /clustering/status: {response:?}");
    }
    Ok(response.body)
}

/// Waits until the CP's `/clustering/status` reports `config_version` at least `version` and
/// returns its `config_hash` then (the hash of the snapshot it built).
pub async fn wait_for_cp_snapshot(
    admin: &Admin,
    version: i64,
    patience: Duration,
) -> Result<Value> {
    wait_until(
        &format!("/clustering/status config_version >= {version}"),
        patience,
        || async {
            let status = clustering_status(admin).await?;
            Ok(status["config_version"]
                .as_i64()
                .is_some_and(|v| v >= version)
                .then_some(status))
        },
    )
    .await
}

/// Reads the first certificate of a PEM file.
pub fn cert_der(path: &Path) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_file(path).with_context(|| format!("reading {}", path.display()))
}

/// A TLS client configuration offering ALPN `h2`:
/// - trusting the CA certificate `roots`, or, without it, accepting any server certificate;
/// - presenting `identity` (certificate file, key file) as client certificate, or none.
pub fn tls_client_config(
    roots: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let builder = match roots {
        Some(ca) => {
            let mut store = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading {}", ca.display()))?
            {
                store.add(cert.with_context(|| format!("reading {}", ca.display()))?)?;
            }
            builder.with_root_certificates(store)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider))),
    };
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Opens a TLS connection to `addr` with SNI `server_name`, sends the HTTP/2 preface and
/// waits for the server's first bytes: [`Handshake::Accept`] if they come,
/// [`Handshake::Refuse`] with the reason if the handshake fails or the server closes or
/// alerts instead. Fails only if the TCP connection cannot be opened.
pub async fn tls_handshake(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<Handshake> {
    let name = ServerName::try_from(server_name.to_owned())
        .with_context(|| format!("server name {server_name}"))?;
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = match timeout(PROBE_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Ok(Handshake::Refuse(e.to_string())),
        Err(_) => return Ok(Handshake::Refuse("handshake timed out".into())),
    };
    let peer_certificates: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    if let Err(e) = tls.write_all(H2_PREFACE).await {
        return Ok(Handshake::Refuse(e.to_string()));
    }
    let _ = tls.flush().await;
    let mut buf = [0u8; 64];
    Ok(match timeout(PROBE_TIMEOUT, tls.read(&mut buf)).await {
        Ok(Ok(0)) => Handshake::Refuse("connection closed after the handshake".into()),
        Ok(Ok(_)) => Handshake::Accept { peer_certificates },
        Ok(Err(e)) => Handshake::Refuse(e.to_string()),
        Err(_) => Handshake::Refuse("no answer to the HTTP/2 preface".into()),
    })
}

/// Accepts any server certificate (checking only the handshake signature): for probing a
/// server's client-certificate checks without trusting its certificate.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_tracing_lines() {
        let line = "2026-11-25T14:00:00.123Z  INFO gatehouse_dp::sync: snapshot applied \
                    version=12 hash=9f86d081 took_ms=3 error=\"bad \\\"key\\\"\" addr=1.2.3.4:5";
        assert_eq!(log_field(line, "version").as_deref(), Some("12"));
        assert_eq!(log_field(line, "hash").as_deref(), Some("9f86d081"));
        assert_eq!(log_field(line, "took_ms").as_deref(), Some("3"));
        assert_eq!(log_field(line, "error").as_deref(), Some("bad \"key\""));
        assert_eq!(log_field(line, "ms"), None);
        assert_eq!(log_field(line, "nope"), None);
        assert_eq!(
            log_field("config_version=3 version=4", "version").as_deref(),
            Some("4")
        );
    }
}
