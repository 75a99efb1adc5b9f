//! The full-handshake load generator of the proxy benchmark: new TLS 1.3 connections at a
//! fixed rate (open loop), one HTTP/1.1 request each, no resumption.
//!
//! Why not h2load alone: its OpenSSL 3.0 client spends ~450 µs of CPU per connection on this
//! machine (measured with `time`: 1.3 s for 3,000 connections), more than either server spends
//! per handshake, so one load core cannot saturate one proxy core. This rustls (aws-lc-rs)
//! client spends a fraction of that: it offers X25519 and AES-128-GCM only (the parity of
//! benchmarking.md §4.5), never resumes (`Resumption::disabled`), and does not verify the
//! server's certificate or signature (neither does h2load; the chain is verified once by the
//! setup's curl check).
//!
//! It runs as its own process, the benchmark binary started again as `--handshake-client
//! ADDR RATE SECS` under `taskset -c 1`, on a single-threaded runtime, and prints one JSON
//! line: planned, succeeded, failures, secs, connect_mean_us, connect_p50_us,
//! connect_p99_us ("connect" = TCP connect + TLS handshake).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::TlsConnector;

use crate::tools::HOST;

/// The argument that makes the benchmark binary this client.
pub(crate) const ARG: &str = "--handshake-client";

/// How often new connections are started.
const TICK: Duration = Duration::from_millis(1);
/// Connections in flight at most; a step that needs more is not sustained.
const MAX_IN_FLIGHT: usize = 8192;
/// Longest a connection may take (connect, handshake, request, answer).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// What one connection did: connect + handshake time, or a failure.
type Outcome = Result<Duration>;

/// Accepts any certificate and signature: a load generator, not a client to trust.
#[derive(Debug)]
struct AcceptAny;

/// Runs the client from its command line (`ADDR RATE SECS`), printing the JSON result.
pub(crate) fn main(args: &[String]) -> Result<()> {
    let [addr, rate, secs] = args else {
        bail!("usage: {ARG} IP:PORT RATE SECS");
    };
    let addr: SocketAddr = addr.parse().context("address")?;
    let rate: u64 = rate.parse().context("rate")?;
    let secs: u64 = secs.parse().context("seconds")?;
    ensure!(rate > 0 && secs > 0, "rate and seconds must be positive");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(addr, rate, secs))?;
    println!("{result}");
    Ok(())
}

async fn run(addr: SocketAddr, rate: u64, secs: u64) -> Result<serde_json::Value> {
    let connector = TlsConnector::from(config()?);
    let planned = rate * secs;
    let mut tasks = JoinSet::new();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(planned as usize);
    let mut started = 0u64;
    let mut refused = 0u64;
    let begin = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    while started < planned {
        ticker.tick().await;
        let due = ((begin.elapsed().as_secs_f64() * rate as f64) as u64).min(planned);
        while started < due {
            started += 1;
            if tasks.len() >= MAX_IN_FLIGHT {
                refused += 1;
                continue;
            }
            tasks.spawn(one(connector.clone(), addr));
        }
        while let Some(done) = tasks.try_join_next() {
            outcomes.push(done.unwrap_or_else(|e| Err(e.into())));
        }
    }
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.unwrap_or_else(|e| Err(e.into())));
    }
    let elapsed = begin.elapsed().as_secs_f64();

    let mut connects: Vec<f64> = Vec::new();
    let mut errors = std::collections::BTreeMap::<String, u64>::new();
    for outcome in &outcomes {
        match outcome {
            Ok(connect) => connects.push(connect.as_secs_f64() * 1e6),
            Err(error) => *errors.entry(format!("{error:#}")).or_default() += 1,
        }
    }
    if refused > 0 {
        errors.insert(format!("over {MAX_IN_FLIGHT} in flight"), refused);
    }
    connects.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        if connects.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * connects.len() as f64).ceil() as usize).clamp(1, connects.len());
        connects[rank - 1]
    };
    let mean = connects.iter().sum::<f64>() / connects.len().max(1) as f64;
    Ok(json!({
        "planned": planned,
        "succeeded": connects.len(),
        "failures": errors.values().sum::<u64>(),
        "errors": errors,
        "secs": elapsed,
        "connect_mean_us": mean,
        "connect_p50_us": quantile(0.5),
        "connect_p99_us": quantile(0.99),
    }))
}

/// One connection: connect, full handshake, `GET /` with `Connection: close`, the whole answer
/// (status 200), then wait for the server to close first (so TIME_WAIT stays on its side).
async fn one(connector: TlsConnector, addr: SocketAddr) -> Outcome {
    tokio::time::timeout(CONNECTION_TIMEOUT, async {
        let start = Instant::now();
        let tcp = TcpStream::connect(addr).await.context("connect")?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(HOST)?.to_owned();
        let mut tls = connector.connect(name, tcp).await.context("handshake")?;
        let connected = start.elapsed();
        tls.write_all(
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .context("request")?;
        let mut answer = Vec::with_capacity(1024);
        let mut buf = [0u8; 4096];
        loop {
            if complete(&answer) {
                break;
            }
            let n = tls.read(&mut buf).await.context("answer")?;
            ensure!(n > 0, "connection closed before the whole answer");
            answer.extend_from_slice(&buf[..n]);
            ensure!(answer.len() <= MAX_ANSWER, "answer too long");
        }
        ensure!(
            answer.starts_with(b"HTTP/1.1 200"),
            "answer {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(40)])
        );
        // The server closes (Connection: close); a missing close_notify is fine.
        while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
        Ok(connected)
    })
    .await
    .context("timed out")?
}

/// Whether `answer` holds the headers and the `Content-Length` body.
fn complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let headers = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let length = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    answer.len() >= end + 4 + length
}

fn config() -> Result<Arc<ClientConfig>> {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
    provider.cipher_suites = vec![aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

// === impl AcceptAny ===

impl ServerCertVerifier for AcceptAny {
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
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}
