//! The load generators of the proxy benchmark — wrk, h2load, oha — run on the load CPU, and
//! their output parsed. Every client connects to an `IP:PORT` while using `bench.test` as the
//! URL's host, so that the host is the TLS SNI and the `Host` header (wrk through
//! `tests/bench/wrk-connect-to.lua`, h2load and oha with `--connect-to`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::process::Command;

use crate::processes::LOAD_CPU;

/// The host of every benchmark URL: the SNI of the certificate and the host of the route.
pub(crate) const HOST: &str = "bench.test";

/// Extra time a tool may take beyond its planned duration before it is killed.
const TOOL_GRACE: Duration = Duration::from_secs(60);

/// Connections h2load opens per rate period of [`RATE_PERIOD_MS`] at 100 handshakes/s.
const RATE_PERIOD_MS: u64 = 10;

/// Paths of the external programs.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    pub(crate) wrk: PathBuf,
    pub(crate) h2load: PathBuf,
    /// `None` when oha is not installed: the latency part is skipped.
    pub(crate) oha: Option<PathBuf>,
    pub(crate) nginx: PathBuf,
    pub(crate) curl: PathBuf,
    pub(crate) handshake_client: HandshakeClient,
}

/// A client certificate and its key, PEM files (for clients that can present one).
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The certificate chain (leaf first).
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// One closed-loop keep-alive run of wrk (or of the rustls client's keep-alive mode).
#[derive(Debug, Clone)]
pub(crate) struct WrkRun {
    pub(crate) requests: u64,
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    /// Socket errors (connect, read, write, timeout) and non-2xx/3xx answers.
    pub(crate) errors: u64,
}

/// One open-loop run of oha at a fixed rate.
#[derive(Debug, Clone)]
pub(crate) struct OhaRun {
    pub(crate) requests: u64,
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    /// Failed requests and non-2xx answers.
    pub(crate) errors: u64,
}

/// Which program makes the full handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeClient {
    /// The benchmark's own rustls client ([`crate::handshake_client`]), the default.
    Rustls,
    /// `h2load` (OpenSSL 3.0): costs more CPU per connection than the servers.
    H2load,
}

/// One run creating connections at a fixed rate, one request on each.
#[derive(Debug, Clone)]
pub(crate) struct HandshakeRun {
    /// Connections (= requests) planned.
    pub(crate) planned: u64,
    pub(crate) succeeded: u64,
    /// Failed, errored and timed-out requests.
    pub(crate) failures: u64,
    /// From the first connection to the last answer.
    pub(crate) secs: f64,
    /// Mean time to connect (TCP + TLS handshake), µs.
    pub(crate) connect_mean_us: f64,
    /// 99th percentile of the same (NaN from h2load, which gives only mean and sd).
    pub(crate) connect_p99_us: f64,
}

// === impl Tools ===

impl Tools {
    /// Finds the programs: `$GATEHOUSE_BENCH_<NAME>` if set, else the `PATH`, else the usual
    /// install locations (`/usr/sbin/nginx`, `~/.cargo/bin/oha`).
    pub(crate) fn find() -> Result<Tools> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let cargo_bin = home.map(|h| h.join(".cargo/bin"));
        let required = |name: &str, extra: &[PathBuf]| {
            find_program(name, extra).with_context(|| {
                format!(
                    "{name} not found (set GATEHOUSE_BENCH_{} to its path)",
                    name.to_uppercase()
                )
            })
        };
        Ok(Tools {
            wrk: required("wrk", &[])?,
            h2load: required("h2load", &[])?,
            oha: find_program(
                "oha",
                &cargo_bin.iter().map(|d| d.join("oha")).collect::<Vec<_>>(),
            ),
            nginx: required("nginx", &[PathBuf::from("/usr/sbin/nginx")])?,
            curl: required("curl", &[])?,
            handshake_client: match std::env::var("GATEHOUSE_BENCH_HANDSHAKE_CLIENT").as_deref() {
                Ok("h2load") => HandshakeClient::H2load,
                Ok("rustls") | Ok("") | Err(_) => HandshakeClient::Rustls,
                Ok(other) => bail!("GATEHOUSE_BENCH_HANDSHAKE_CLIENT={other:?}: rustls or h2load"),
            },
        })
    }

    /// `wrk -t1 -cC -dSECSs --latency https://{host}{path}` on the load CPU, connecting to
    /// `addr`.
    pub(crate) async fn wrk(
        &self,
        script: &Path,
        addr: SocketAddr,
        host: &str,
        path: &str,
        connections: usize,
        secs: u64,
    ) -> Result<WrkRun> {
        let mut cmd = on_load_cpu(&self.wrk);
        cmd.args([
            "-t1".to_owned(),
            format!("-c{connections}"),
            format!("-d{secs}s"),
            "--latency".to_owned(),
            "--timeout".to_owned(),
            "5s".to_owned(),
            "-s".to_owned(),
        ])
        .arg(script)
        .arg(format!("https://{host}{path}"))
        .env("WRK_CONNECT_TO", addr.to_string());
        let out = run(cmd, Duration::from_secs(secs)).await?;
        parse_wrk(&out).with_context(|| format!("reading wrk's output:\n{out}"))
    }

    /// `oha -q RATE --latency-correction -w -c C -z SECSs` (open loop, keep-alive, HTTP/1.1) on
    /// the load CPU with one runtime thread, verifying the server's chain against `ca`.
    pub(crate) async fn oha(
        &self,
        ca: &Path,
        addr: SocketAddr,
        rate: u64,
        connections: usize,
        secs: u64,
    ) -> Result<OhaRun> {
        let oha = self.oha.as_ref().context("oha is not installed")?;
        let mut cmd = on_load_cpu(oha);
        cmd.args([
            "--worker-threads".to_owned(),
            "1".to_owned(),
            "-q".to_owned(),
            rate.to_string(),
            "--latency-correction".to_owned(),
            // Requests in flight at the deadline finish instead of counting as errors.
            "--wait-ongoing-requests-after-deadline".to_owned(),
            "-c".to_owned(),
            connections.to_string(),
            "-z".to_owned(),
            format!("{secs}s"),
            "--no-tui".to_owned(),
            "--output-format".to_owned(),
            "json".to_owned(),
            "--connect-to".to_owned(),
            format!("{HOST}:443:{}:{}", addr.ip(), addr.port()),
            "--cacert".to_owned(),
        ])
        .arg(ca)
        .arg(format!("https://{HOST}/"));
        let out = run(cmd, Duration::from_secs(secs)).await?;
        parse_oha(&out).with_context(|| format!("reading oha's output:\n{out}"))
    }

    /// `rate` new connections per second for `secs` seconds, each a full TLS 1.3 handshake
    /// (X25519, AES-128-GCM) for `host` (SNI and `Host`), presenting `identity` if given, and
    /// one HTTP/1.1 request, made by the configured client.
    pub(crate) async fn handshakes(
        &self,
        addr: SocketAddr,
        host: &str,
        identity: Option<&Identity>,
        rate: u64,
        secs: u64,
    ) -> Result<HandshakeRun> {
        match self.handshake_client {
            HandshakeClient::Rustls => {
                self.rustls_handshakes(addr, host, identity, rate, secs)
                    .await
            }
            HandshakeClient::H2load => {
                if identity.is_some() {
                    bail!("h2load cannot present a client certificate");
                }
                self.h2load_handshakes(addr, host, rate, secs).await
            }
        }
    }

    /// The benchmark binary itself as [`crate::handshake_client`], on the load CPU.
    async fn rustls_handshakes(
        &self,
        addr: SocketAddr,
        host: &str,
        identity: Option<&Identity>,
        rate: u64,
        secs: u64,
    ) -> Result<HandshakeRun> {
        let cmd = rustls_client(
            crate::handshake_client::ARG,
            addr,
            rate,
            secs,
            host,
            identity,
        )?;
        let out = run(cmd, Duration::from_secs(secs)).await?;
        let json: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("reading the handshake client's output:\n{out}"))?;
        let number = |key: &str| json[key].as_f64().unwrap_or(f64::NAN);
        if let Some(errors) = json["errors"].as_object().filter(|e| !e.is_empty()) {
            eprintln!("handshake client errors at {rate}/s: {errors:?}");
        }
        Ok(HandshakeRun {
            planned: json["planned"].as_u64().context("planned")?,
            succeeded: json["succeeded"].as_u64().context("succeeded")?,
            failures: json["failures"].as_u64().context("failures")?,
            secs: number("secs"),
            connect_mean_us: number("connect_mean_us"),
            connect_p99_us: number("connect_p99_us"),
        })
    }

    /// h2load opening `rate` connections per second for `secs` seconds (in steps of
    /// [`RATE_PERIOD_MS`], not in one burst per second), each a new client doing a full TLS
    /// 1.3 handshake (X25519, AES-128-GCM) and one HTTP/1.1 request.
    ///
    /// A new h2load client never offers a session, so the handshakes are full even against a
    /// server that keeps a session cache. (h2load *does* resume when it reconnects a client,
    /// e.g. after `Connection: close`, which is why the closed-loop form is not used.)
    async fn h2load_handshakes(
        &self,
        addr: SocketAddr,
        host: &str,
        rate: u64,
        secs: u64,
    ) -> Result<HandshakeRun> {
        let per_period = (rate * RATE_PERIOD_MS / 1000).max(1);
        let planned = rate * secs;
        let mut cmd = on_load_cpu(&self.h2load);
        cmd.args([
            "--h1".to_owned(),
            "-t1".to_owned(),
            format!("--clients={planned}"),
            format!("--requests={planned}"),
            format!("--rate={per_period}"),
            format!("--rate-period={RATE_PERIOD_MS}ms"),
            "--groups=X25519".to_owned(),
            "--tls13-ciphers=TLS_AES_128_GCM_SHA256".to_owned(),
            format!("--connect-to={}:{}", addr.ip(), addr.port()),
            format!("https://{host}/"),
        ]);
        let out = run(cmd, Duration::from_secs(secs)).await?;
        let mut parsed =
            parse_h2load(&out).with_context(|| format!("reading h2load's output:\n{out}"))?;
        parsed.planned = planned;
        Ok(parsed)
    }

    /// `connections` keep-alive connections for `secs` seconds from the rustls client's
    /// keep-alive mode ([`crate::handshake_client`]) on the load CPU: `GET /` for `host`,
    /// presenting `identity` if given.
    pub(crate) async fn keepalive_client(
        &self,
        addr: SocketAddr,
        host: &str,
        identity: Option<&Identity>,
        connections: usize,
        secs: u64,
    ) -> Result<WrkRun> {
        let cmd = rustls_client(
            crate::handshake_client::KEEPALIVE_ARG,
            addr,
            connections as u64,
            secs,
            host,
            identity,
        )?;
        let out = run(cmd, Duration::from_secs(secs)).await?;
        let json: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("reading the keep-alive client's output:\n{out}"))?;
        if let Some(errors) = json["error_kinds"].as_object().filter(|e| !e.is_empty()) {
            eprintln!("keep-alive client errors: {errors:?}");
        }
        let number = |key: &str| json[key].as_f64().with_context(|| format!("no {key}"));
        Ok(WrkRun {
            requests: json["requests"].as_u64().context("requests")?,
            rps: number("rps")?,
            p50_us: number("p50_us")?,
            p99_us: number("p99_us")?,
            errors: json["errors"].as_u64().context("errors")?,
        })
    }

    /// Checks `https://bench.test{path}` through `addr` with curl, verifying the certificate
    /// chain against `ca` (so the SNI certificate and its intermediate are served); returns
    /// the body.
    pub(crate) async fn curl(&self, ca: &Path, addr: SocketAddr, path: &str) -> Result<String> {
        let (status, body) = self.curl_as(ca, addr, HOST, path, None).await?;
        if status != 200 {
            bail!("status {status}: {body}");
        }
        Ok(body)
    }

    /// `GET https://{host}{path}` through `addr` with curl, verifying the certificate chain
    /// against `ca` and presenting `identity` if given; returns the status and the body.
    pub(crate) async fn curl_as(
        &self,
        ca: &Path,
        addr: SocketAddr,
        host: &str,
        path: &str,
        identity: Option<&Identity>,
    ) -> Result<(u16, String)> {
        let mut cmd = Command::new(&self.curl);
        cmd.args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{}:{}", addr.port(), addr.ip()))
        .args(["-H", &format!("Host: {host}")]);
        if let Some(identity) = identity {
            cmd.arg("--cert")
                .arg(&identity.cert)
                .arg("--key")
                .arg(&identity.key);
        }
        cmd.arg(format!("https://{host}:{}{path}", addr.port()));
        let out = run(cmd, Duration::ZERO).await?;
        let (body, status) = out.rsplit_once('\n').context("no status from curl")?;
        Ok((
            status.trim().parse().context("curl's status")?,
            body.to_owned(),
        ))
    }
}

/// The benchmark binary as the rustls client (`mode` = [`crate::handshake_client::ARG`] or
/// [`crate::handshake_client::KEEPALIVE_ARG`]) on the load CPU.
fn rustls_client(
    mode: &str,
    addr: SocketAddr,
    count: u64,
    secs: u64,
    host: &str,
    identity: Option<&Identity>,
) -> Result<Command> {
    let exe = std::env::current_exe().context("the benchmark's own path")?;
    let mut cmd = on_load_cpu(&exe);
    cmd.arg(mode)
        .arg(addr.to_string())
        .arg(count.to_string())
        .arg(secs.to_string())
        .args(["--host", host]);
    if let Some(identity) = identity {
        cmd.arg("--cert")
            .arg(&identity.cert)
            .arg("--key")
            .arg(&identity.key);
    }
    Ok(cmd)
}

/// `taskset -c LOAD_CPU program`.
fn on_load_cpu(program: &Path) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &LOAD_CPU.to_string()]).arg(program);
    cmd
}

/// `$GATEHOUSE_BENCH_<NAME>`, else `name` on the `PATH`, else the first of `extra` that exists.
fn find_program(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let var = format!("GATEHOUSE_BENCH_{}", name.to_uppercase());
    if let Some(path) = std::env::var_os(&var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(extra.iter().cloned())
        .find(|p| p.is_file())
}

/// Runs `cmd` (killed after `planned` + [`TOOL_GRACE`]); its stdout, or an error with both
/// outputs when it fails.
async fn run(mut cmd: Command, planned: Duration) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let shown = format!("{:?}", cmd.as_std());
    let child = cmd.spawn().with_context(|| format!("spawning {shown}"))?;
    let out = tokio::time::timeout(planned + TOOL_GRACE, child.wait_with_output())
        .await
        .with_context(|| format!("{shown} still ran after {:?}", planned + TOOL_GRACE))?
        .with_context(|| format!("running {shown}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

// --- parsers ------------------------------------------------------------------------------------

/// A duration as wrk and h2load print it (`523us`, `1.58ms`, `2.99s`, `1.00m`), in µs.
fn micros(text: &str) -> Option<f64> {
    let text = text.trim().trim_end_matches(',');
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600e6)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

fn parse_wrk(out: &str) -> Result<WrkRun> {
    let mut requests = None;
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut errors = 0;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => p50 = micros(value),
            ["99%", value] => p99 = micros(value),
            [count, "requests", "in", ..] => requests = count.parse::<u64>().ok(),
            ["Requests/sec:", value] => rps = value.parse::<f64>().ok(),
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", value] => {
                errors += value.parse::<u64>().unwrap_or(0);
            }
            _ => {}
        }
    }
    Ok(WrkRun {
        requests: requests.context("no request count")?,
        rps: rps.context("no Requests/sec")?,
        p50_us: p50.context("no 50% latency")?,
        p99_us: p99.context("no 99% latency")?,
        errors,
    })
}

fn parse_oha(out: &str) -> Result<OhaRun> {
    let json: Value = serde_json::from_str(out).context("not JSON")?;
    let secs = |v: &Value| v.as_f64().map(|s| s * 1e6);
    let percentiles = &json["latencyPercentiles"];
    let mut requests = 0;
    let mut errors = 0;
    if let Some(codes) = json["statusCodeDistribution"].as_object() {
        for (code, count) in codes {
            let count = count.as_u64().unwrap_or(0);
            requests += count;
            if !code.starts_with('2') {
                errors += count;
            }
        }
    }
    if let Some(failures) = json["errorDistribution"].as_object() {
        if !failures.is_empty() {
            eprintln!("oha errors: {failures:?}");
        }
        let failed: u64 = failures.values().filter_map(Value::as_u64).sum();
        requests += failed;
        errors += failed;
    }
    Ok(OhaRun {
        requests,
        rps: json["summary"]["requestsPerSec"]
            .as_f64()
            .context("no summary.requestsPerSec")?,
        p50_us: secs(&percentiles["p50"]).context("no p50")?,
        p99_us: secs(&percentiles["p99"]).context("no p99")?,
        p999_us: secs(&percentiles["p99.9"]).context("no p99.9")?,
        errors,
    })
}

fn parse_h2load(out: &str) -> Result<HandshakeRun> {
    let mut secs = None;
    let mut succeeded = None;
    let mut failures = 0;
    let mut connect_mean = None;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // finished in 2.99s, 501.22 req/s, 72.93KB/s
            secs = rest.split(',').next().and_then(micros).map(|us| us / 1e6);
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // 1500 total, 1500 started, 1500 done, 1500 succeeded, 0 failed, 0 errored, 0 timeout
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let (Some(count), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let count: u64 = count.parse().unwrap_or(0);
                match what {
                    "succeeded" => succeeded = Some(count),
                    "failed" | "errored" | "timeout" => failures += count,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("time for connect:") {
            // min max mean sd +/-sd
            connect_mean = rest.split_whitespace().nth(2).and_then(micros);
        }
    }
    Ok(HandshakeRun {
        planned: 0,
        succeeded: succeeded.context("no succeeded count")?,
        failures,
        secs: secs.context("no 'finished in'")?,
        connect_mean_us: connect_mean.unwrap_or(f64::NAN),
        connect_p99_us: f64::NAN,
    })
}
