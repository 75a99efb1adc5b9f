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
//! ADDR RATE SECS [OPTIONS]` under `taskset -c 1`, on a single-threaded runtime, and prints one
//! JSON line: planned, succeeded, failures, secs, connect_mean_us, connect_p50_us,
//! connect_p99_us ("connect" = TCP connect + TLS handshake).
//!
//! The same client has a closed-loop keep-alive mode for the mTLS part (wrk, h2load and hey
//! cannot present a client certificate): `--keepalive-client ADDR CONNECTIONS SECS [OPTIONS]`
//! opens CONNECTIONS connections (one full handshake each) and sends `GET /` on each as soon as
//! the previous answer is complete (no pipelining, like `wrk`), reconnecting a connection that
//! fails; it prints requests (answered 200), rps, p50_us, p99_us (request sent → whole answer
//! read), errors (non-200 answers and failed connections) and secs.
//!
//! Options of both modes: `--host NAME` (SNI and `Host`, default `bench.test`) and `--cert
//! CHAIN.pem --key KEY.pem`, a client certificate presented when the server asks for one
//! (`with_client_auth_cert`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::tools::HOST;

/// The argument that makes the benchmark binary this client (new connections at a rate).
pub(crate) const ARG: &str = "--handshake-client";
/// The argument that makes the benchmark binary this client in keep-alive mode.
pub(crate) const KEEPALIVE_ARG: &str = "--keepalive-client";

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

/// The options after the three positional arguments.
#[derive(Debug, Clone)]
struct Options {
    /// SNI and `Host`.
    host: String,
    /// A client certificate chain and key (PEM files).
    identity: Option<(PathBuf, PathBuf)>,
}

/// What one keep-alive connection did.
#[derive(Debug, Default)]
struct Tally {
    /// Request → whole answer, in ns, of the requests answered 200.
    latencies_ns: Vec<u64>,
    /// Failures by message (non-200 answers, failed connections).
    errors: BTreeMap<String, u64>,
}

/// Accepts any certificate and signature: a load generator, not a client to trust.
#[derive(Debug)]
struct AcceptAny;

/// Runs the client from its command line (`ADDR RATE SECS [OPTIONS]`), printing the JSON
/// result.
pub(crate) fn main(args: &[String]) -> Result<()> {
    let (addr, rate, secs, options) = parse(ARG, "RATE", args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(addr, rate, secs, options))?;
    println!("{result}");
    Ok(())
}

/// Runs the keep-alive mode from its command line (`ADDR CONNECTIONS SECS [OPTIONS]`),
/// printing the JSON result.
pub(crate) fn keepalive_main(args: &[String]) -> Result<()> {
    let (addr, connections, secs, options) = parse(KEEPALIVE_ARG, "CONNECTIONS", args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(keepalive(addr, connections, secs, options))?;
    println!("{result}");
    Ok(())
}

/// `ADDR N SECS [--host NAME] [--cert CHAIN --key KEY]`.
fn parse(arg: &str, n: &str, args: &[String]) -> Result<(SocketAddr, u64, u64, Options)> {
    let usage = || format!("usage: {arg} IP:PORT {n} SECS [--host NAME] [--cert CHAIN --key KEY]");
    let [addr, count, secs, rest @ ..] = args else {
        bail!("{}", usage());
    };
    let addr: SocketAddr = addr.parse().context("address")?;
    let count: u64 = count.parse().with_context(|| n.to_lowercase())?;
    let secs: u64 = secs.parse().context("seconds")?;
    ensure!(count > 0 && secs > 0, "{n} and SECS must be positive");
    let mut host = HOST.to_owned();
    let (mut cert, mut key) = (None, None);
    let mut rest = rest.iter();
    while let Some(option) = rest.next() {
        let value = rest.next().with_context(usage)?;
        match option.as_str() {
            "--host" => host = value.clone(),
            "--cert" => cert = Some(PathBuf::from(value)),
            "--key" => key = Some(PathBuf::from(value)),
            _ => bail!("{}", usage()),
        }
    }
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => bail!("--cert and --key go together"),
    };
    Ok((addr, count, secs, Options { host, identity }))
}

async fn run(
    addr: SocketAddr,
    rate: u64,
    secs: u64,
    options: Options,
) -> Result<serde_json::Value> {
    let connector = TlsConnector::from(config(&options)?);
    let host: Arc<str> = options.host.into();
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
            tasks.spawn(one(connector.clone(), addr, host.clone()));
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
    let mut errors = BTreeMap::<String, u64>::new();
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
async fn one(connector: TlsConnector, addr: SocketAddr, host: Arc<str>) -> Outcome {
    tokio::time::timeout(CONNECTION_TIMEOUT, async {
        let start = Instant::now();
        let mut tls = connect(&connector, addr, &host).await?;
        let connected = start.elapsed();
        tls.write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .context("request")?;
        let mut answer = Vec::with_capacity(1024);
        read_answer(&mut tls, &mut answer).await?;
        ensure_ok(&answer)?;
        // The server closes (Connection: close); a missing close_notify is fine.
        let mut buf = [0u8; 4096];
        while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
        Ok(connected)
    })
    .await
    .context("timed out")?
}

/// TCP connect and full TLS handshake to `addr` for `host`.
async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    host: &str,
) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.to_owned())?;
    connector.connect(name, tcp).await.context("handshake")
}

/// Reads one whole answer (headers and `Content-Length` body) into `answer` (cleared first).
async fn read_answer(tls: &mut TlsStream<TcpStream>, answer: &mut Vec<u8>) -> Result<()> {
    answer.clear();
    let mut buf = [0u8; 4096];
    loop {
        if complete(answer)? {
            return Ok(());
        }
        let n = tls.read(&mut buf).await.context("answer")?;
        ensure!(n > 0, "connection closed before the whole answer");
        answer.extend_from_slice(&buf[..n]);
        ensure!(answer.len() <= MAX_ANSWER, "answer too long");
    }
}

/// Fails unless `answer` is a 200.
fn ensure_ok(answer: &[u8]) -> Result<()> {
    ensure!(
        answer.starts_with(b"HTTP/1.1 200"),
        "answer {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(40)])
    );
    Ok(())
}

/// Whether `answer` holds the headers and the `Content-Length` body (an answer without
/// `Content-Length`, e.g. chunked, is an error: the servers here always send one).
fn complete(answer: &[u8]) -> Result<bool> {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(false);
    };
    let headers = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let length = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .with_context(|| format!("no Content-Length in {headers:?}"))?;
    Ok(answer.len() >= end + 4 + length)
}

/// `connections` keep-alive connections for `secs` seconds, each sending its next `GET /` when
/// the last answer is complete; connections that fail are counted and made again.
async fn keepalive(
    addr: SocketAddr,
    connections: u64,
    secs: u64,
    options: Options,
) -> Result<serde_json::Value> {
    let connector = TlsConnector::from(config(&options)?);
    let host: Arc<str> = options.host.into();
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs(secs);
    let mut tasks = JoinSet::new();
    for _ in 0..connections {
        tasks.spawn(keepalive_connection(
            connector.clone(),
            addr,
            host.clone(),
            deadline,
        ));
    }
    let mut latencies: Vec<u64> = Vec::new();
    let mut errors = BTreeMap::<String, u64>::new();
    while let Some(done) = tasks.join_next().await {
        let tally = done.context("a keep-alive connection task")?;
        latencies.extend_from_slice(&tally.latencies_ns);
        for (error, count) in tally.errors {
            *errors.entry(error).or_default() += count;
        }
    }
    let elapsed = begin.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let quantile = |q: f64| {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1] as f64 / 1000.0
    };
    Ok(json!({
        "requests": latencies.len(),
        "rps": latencies.len() as f64 / elapsed,
        "p50_us": quantile(0.5),
        "p99_us": quantile(0.99),
        "errors": errors.values().sum::<u64>(),
        "error_kinds": errors,
        "secs": elapsed,
    }))
}

/// One keep-alive connection until `deadline` (an answer in flight then is waited for).
async fn keepalive_connection(
    connector: TlsConnector,
    addr: SocketAddr,
    host: Arc<str>,
    deadline: Instant,
) -> Tally {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
    let mut tally = Tally::default();
    let mut answer = Vec::with_capacity(1024);
    while Instant::now() < deadline {
        let used = tokio::time::timeout(CONNECTION_TIMEOUT, connect(&connector, addr, &host))
            .await
            .context("timed out")
            .and_then(|connected| connected);
        let mut tls = match used {
            Ok(tls) => tls,
            Err(error) => {
                *tally.errors.entry(format!("{error:#}")).or_default() += 1;
                // Do not spin on a refusing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while Instant::now() < deadline {
            let sent = Instant::now();
            let exchanged = tokio::time::timeout(CONNECTION_TIMEOUT, async {
                tls.write_all(&request).await.context("request")?;
                read_answer(&mut tls, &mut answer).await
            })
            .await
            .context("timed out")
            .and_then(|read| read);
            let outcome = exchanged.and_then(|()| ensure_ok(&answer).map(|()| sent.elapsed()));
            match outcome {
                Ok(took) => tally
                    .latencies_ns
                    .push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX)),
                Err(error) => {
                    *tally.errors.entry(format!("{error:#}")).or_default() += 1;
                    // The connection state is unknown after a failure: make a new one.
                    break;
                }
            }
        }
    }
    tally
}

/// TLS 1.3 only, X25519 and AES-128-GCM, no resumption, no server verification, and the
/// client certificate of `options` if any.
fn config(options: &Options) -> Result<Arc<ClientConfig>> {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
    provider.cipher_suites = vec![aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny));
    let mut config = match &options.identity {
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
