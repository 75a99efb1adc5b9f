//! Proxy benchmark (issue 4): the Gatehouse data plane side by side with nginx 1.22 as the
//! same TLS-terminating reverse proxy, one core each, with real PostgreSQL, a release
//! `gatehouse-cp` and a release `gatehouse-dp`.
//!
//! Run it with `tests/bench/run.sh proxy` (which builds the release binaries and records the
//! machine); it is not part of `cargo test` (the target has `test = false`, and it does nothing
//! unless started by `cargo bench`, which passes `--bench`). Method and results:
//! `BENCHMARKS.md`, "Proxy (issue 4)". Layout (`../shared/reference/benchmarking.md` §4.2):
//!
//! - CPU 0: the proxy under test. The DP runs `--worker-threads 1` and is pinned with
//!   `taskset -a -p -c 0` once started (all its threads); nginx runs `worker_processes 1`
//!   under `taskset -c 0`.
//! - CPU 1: the load generator (`wrk -t1`, oha with one runtime thread, the handshake client),
//!   the upstream (nginx, one worker, `return 200 "ok"` and a 1 KiB body on `/1k`) and the CPs.
//! - The same certificate for both proxies: an ECDSA P-256 leaf for `bench.test` issued by an
//!   intermediate CA (chain = leaf + intermediate), uploaded to the CP with SNI `bench.test`,
//!   and given to nginx as files. TLS resumption off on both (DP `--ssl-session-tickets off`,
//!   nginx `ssl_session_tickets off; ssl_session_cache off`).
//!
//! Parts, selected by the free arguments (default all):
//!
//! - **keepalive**: `wrk -t1 -c64 --latency`, HTTPS keep-alive, against the DP and nginx, `/`
//!   (2-byte body) and `/1k`: req/s, p50/p99, and the proxy's CPU-µs per request (utime +
//!   stime of the process and its children, all threads, from `/proc`), with the busy share
//!   of both CPUs (CPU 1 above 85% means load-generator bound).
//! - **latency**: open loop at 50% of the DP's max req/s (`oha -q R --latency-correction`)
//!   directly to the upstream's TLS port (same certificate) and through each proxy: p50, p99,
//!   p99.9 and the latency each proxy adds (proxy − direct).
//! - **handshake**: full TLS 1.3 handshakes/s (X25519, AES-128-GCM), one request per
//!   connection, new connections at a fixed rate (open loop) from the benchmark's own rustls
//!   client ([`handshake_client`]; `GATEHOUSE_BENCH_HANDSHAKE_CLIENT=h2load` for h2load, whose
//!   OpenSSL client cannot load one proxy core from one load core); the rate is doubled, then
//!   bisected, to the highest one sustained without errors or backlog, then measured: rate and
//!   CPU-µs per handshake.
//! - **routes**: a second CP and DP with `GATEHOUSE_BENCH_ROUTES` routes (distinct hosts and
//!   paths; the benchmarked route is matched by host among them), measured in the same rounds
//!   as keepalive: req/s with 1 vs N routes.
//! - **upstream-tls** (issue 5, [`upstream_tls`]): HTTPS keep-alive through each proxy to a
//!   plain, a TLS and an mTLS upstream (verified against an uploaded CA; the proxy's client
//!   certificate): req/s, p99, CPU-µs per request and the upstream connection reuse ratio.
//! - **mtls** (issue 6, [`mtls`]): client certificates checked by the proxy (DP: `mtls-auth` +
//!   `acl` on the route; nginx: `ssl_verify_client on`): full mTLS handshakes/s and CPU per
//!   handshake against plain TLS, and keep-alive req/s on mTLS connections.
//!
//! The TLS parts run on a third CP and DP of their own ([`tls_bed`]), so the DP of the other
//! parts keeps its one route.
//!
//! Runs of the different targets are interleaved (round-robin, rotating the order each round)
//! so that drift hits all alike; each target is warmed up before its first run. Each number is
//! the median over the runs, with min–max.
//!
//! Settings (environment): `GATEHOUSE_BENCH_DURATION` (seconds per run, default 15),
//! `GATEHOUSE_BENCH_WARMUP` (5), `GATEHOUSE_BENCH_RUNS` (3), `GATEHOUSE_BENCH_LATENCY_DURATION`
//! (20), `GATEHOUSE_BENCH_STEP` (seconds per handshake-rate step, 5),
//! `GATEHOUSE_BENCH_HANDSHAKE_START` (first rate, 1000/s), `GATEHOUSE_BENCH_CONNECTIONS` (64),
//! `GATEHOUSE_BENCH_ROUTES` (10000), `GATEHOUSE_BENCH_HANDSHAKE_CLIENT` (`rustls` or `h2load`,
//! default `rustls`; the mtls part always uses `rustls`); `GATEHOUSE_BENCH_QUICK=1` for a smoke run (3 s runs, 1 s
//! warm-up, 1 run, 5 s latency runs, 2 s steps, 1000 routes; explicit settings still win).
//! Programs: `wrk`, `h2load`, `nginx`, `curl` and `oha` from the `PATH` (nginx also
//! `/usr/sbin/nginx`, oha also `~/.cargo/bin/oha`), or `GATEHOUSE_BENCH_<NAME>` paths.

#[path = "proxy/handshake_client.rs"]
mod handshake_client;
#[path = "proxy/mtls.rs"]
mod mtls;
#[path = "proxy/processes.rs"]
mod processes;
#[path = "proxy/tls_bed.rs"]
mod tls_bed;
#[path = "proxy/tools.rs"]
mod tools;
#[path = "proxy/upstream_tls.rs"]
mod upstream_tls;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures_util::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    PKCS_ECDSA_P256_SHA256,
};
use serde_json::json;

use gatehouse_tests::{
    Admin, ControlPlane, DataPlane, DataPlaneOptions, Pki, TempDir, TestDb, config_version, dp_bin,
    test_db,
};
use processes::{LOAD_CPU, Nginx, PROXY_CPU, Usage, Window, affinity, free_port, pin, rss_bytes};
use tls_bed::{TlsBed, TlsFiles, TlsPorts};
use tools::{HOST, HandshakeClient, HandshakeRun, Identity, OhaRun, Tools, WrkRun};

/// How long anything may take before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(300);
/// Concurrent Admin API requests while loading the large route table.
const LOAD_CONCURRENCY: usize = 16;
/// The open-loop rate of the latency part, as a share of the DP's max req/s.
const HALF_LOAD: f64 = 0.5;
/// Busy share of the load CPU above which a result is load-generator bound (§4.2).
const SATURATED: f64 = 0.85;
/// The highest handshake rate tried.
const MAX_HANDSHAKE_RATE: u64 = 64_000;
/// A handshake-rate step may take this much longer than planned (the server keeping up).
const STEP_SLACK: f64 = 1.1;
/// Longest p99 (h2load: mean) of connect + handshake in a sustained handshake-rate step: a
/// handshake takes about a millisecond, a growing accept queue soon makes it hundreds.
const HANDSHAKE_LATENCY_LIMIT: Duration = Duration::from_millis(50);
/// The paths served by the upstream: a 2-byte and a 1 KiB body.
const PATHS: [(&str, usize); 2] = [("/", 2), ("/1k", 1024)];
/// The parts, in the order they run.
const PARTS: [&str; 6] = [
    "keepalive",
    "latency",
    "handshake",
    "routes",
    "upstream-tls",
    "mtls",
];

const WRK_SCRIPT: &str = include_str!("../bench/wrk-connect-to.lua");
const NGINX_UPSTREAM: &str = include_str!("../bench/nginx-upstream.conf");
const NGINX_PROXY: &str = include_str!("../bench/nginx-proxy.conf");

#[derive(Debug, Clone)]
struct Settings {
    duration: u64,
    warmup: u64,
    runs: usize,
    latency_duration: u64,
    step: u64,
    handshake_start: u64,
    connections: usize,
    routes: usize,
}

/// Everything the runs need, stopped when dropped (DPs before CPs before databases).
struct Bed {
    dp: DataPlane,
    big_dp: Option<DataPlane>,
    /// The CP and DP of the TLS parts (upstream-tls, mtls), when they run.
    tls: Option<TlsBed>,
    /// The certificates of the TLS parts (also in the nginx configurations).
    tls_files: TlsFiles,
    proxy_nginx: Nginx,
    upstream: Nginx,
    cp: ControlPlane,
    _big_cp: Option<ControlPlane>,
    _db: TestDb,
    _big_db: Option<TestDb>,
    _pki: Pki,
    files: TempDir,
    /// How the DP's runtime was configured, for the report.
    dp_threads: String,
}

/// Something the load goes to, and the process its CPU time is charged to.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    addr: SocketAddr,
    pid: u32,
    /// The URL's host: the TLS SNI and the `Host` header (`bench.test` unless set).
    host: String,
    /// The client certificate presented (only the rustls client can; the mtls part).
    identity: Option<Identity>,
}

/// A keep-alive row: a target and path, measured `runs` times.
#[derive(Debug)]
struct KeepaliveRow {
    target: Target,
    path: &'static str,
    routes: usize,
    runs: Vec<(WrkRun, Usage)>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(handshake_client::ARG) => return handshake_client::main(&args[1..]),
        Some(handshake_client::KEEPALIVE_ARG) => {
            return handshake_client::keepalive_main(&args[1..]);
        }
        _ => {}
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(args))
}

async fn bench(args: Vec<String>) -> Result<()> {
    if !args.iter().any(|a| a == "--bench") {
        println!("proxy benchmark skipped: run it with tests/bench/run.sh proxy (cargo bench)");
        return Ok(());
    }
    let free: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-') && *a != "proxy")
        .collect();
    for part in &free {
        ensure!(
            PARTS.contains(part),
            "unknown part {part:?}: {}",
            PARTS.join(", ")
        );
    }
    let wants = |part: &str| free.is_empty() || free.contains(&part);

    let settings = Settings::from_env()?;
    let tools = Tools::find()?;
    let bed = Bed::start(
        &settings,
        &tools,
        wants("routes"),
        wants("upstream-tls") || wants("mtls"),
    )
    .await?;
    let ca = bed.files.join("root.pem");
    let script = bed.files.join("wrk-connect-to.lua");

    println!("\n## Proxy: Gatehouse DP vs nginx, one core each\n");
    println!(
        "- proxy on CPU {PROXY_CPU}; load generator, upstream nginx and CPs on CPU {LOAD_CPU}"
    );
    println!(
        "- DP: {}, --ssl-session-tickets off --ssl-session-cache off",
        bed.dp_threads
    );
    if let Some(tls) = &bed.tls {
        println!(
            "- DP of the TLS parts: the same; CPUs allowed {}",
            affinity(tls.dp.pid())
        );
    }
    println!(
        "- CPUs allowed (all threads): DP {}{}, nginx proxy {}, upstream nginx {}, CP {}",
        affinity(bed.dp.pid()),
        bed.big_dp
            .as_ref()
            .map(|d| format!(" (many-routes DP {})", affinity(d.pid())))
            .unwrap_or_default(),
        affinity(bed.proxy_nginx.pid()),
        affinity(bed.upstream.pid()),
        affinity(bed.cp.pid()),
    );
    println!(
        "- runs: {} × {} s after a {} s warm-up per target, {} connections; latency runs {} s; \
         handshake steps {} s",
        settings.runs,
        settings.duration,
        settings.warmup,
        settings.connections,
        settings.latency_duration,
        settings.step
    );

    let dp = Target::new("Gatehouse DP", bed.dp.proxy_ssl_addr()?, bed.dp.pid());
    let scraper = scrape_metrics(&bed.dp.status_url());
    let nginx = Target::new("nginx", bed.nginx_addr()?, bed.proxy_nginx.pid());
    let direct = Target::new(
        "direct (upstream over TLS)",
        bed.upstream_tls_addr()?,
        bed.upstream.pid(),
    );

    // Keep-alive and route-table rows share the rounds.
    let mut rows = Vec::new();
    if wants("keepalive") || wants("routes") {
        rows.push(KeepaliveRow::new(&dp, "/", 1));
    }
    if wants("keepalive") {
        rows.push(KeepaliveRow::new(&nginx, "/", 0));
        rows.push(KeepaliveRow::new(&dp, "/1k", 1));
        rows.push(KeepaliveRow::new(&nginx, "/1k", 0));
    }
    if let Some(big) = &bed.big_dp {
        let target = Target::new("Gatehouse DP", big.proxy_ssl_addr()?, big.pid());
        rows.push(KeepaliveRow::new(&target, "/", settings.routes));
    }
    if !rows.is_empty() {
        keepalive(&settings, &tools, &script, &mut rows).await?;
        if wants("keepalive") {
            print_keepalive(&settings, &rows);
        }
        if let Some(big) = &bed.big_dp {
            print_routes(&settings, &rows, &bed.dp, big);
        }
    }

    if wants("latency") {
        if tools.oha.is_none() {
            println!("\n### Added latency: skipped (oha is not installed)");
        } else {
            let max = match rows.first() {
                Some(row) if row.path == "/" && row.routes == 1 => {
                    median(&row.runs.iter().map(|(w, _)| w.rps).collect::<Vec<_>>())
                }
                _ => {
                    eprintln!("latency: measuring the DP's max req/s first");
                    tools
                        .wrk(
                            &script,
                            dp.addr,
                            HOST,
                            "/",
                            settings.connections,
                            settings.duration,
                        )
                        .await?
                        .rps
                }
            };
            let rate = ((max * HALF_LOAD / 100.0).round() as u64 * 100).max(100);
            latency(&settings, &tools, &ca, &[&direct, &dp, &nginx], rate).await?;
        }
    }

    if wants("handshake") {
        handshakes(&settings, &tools, &[&dp, &nginx]).await?;
    }

    if let Some(tls) = &bed.tls {
        if wants("upstream-tls") {
            upstream_tls::run(&settings, &tools, &script, &bed, tls).await?;
        }
        if wants("mtls") {
            mtls::run(&settings, &tools, &bed, tls).await?;
        }
    }

    if let Some(scraper) = scraper {
        scraper.abort();
    }
    for (name, log) in [
        ("proxy nginx", bed.proxy_nginx.error_log()),
        ("upstream nginx", bed.upstream.error_log()),
    ] {
        if !log.trim().is_empty() {
            eprintln!("{name} error log:\n{log}");
        }
    }
    Ok(())
}

/// `GATEHOUSE_BENCH_SCRAPE_MS=N`: fetches the DP's `/metrics` every N ms for the whole run, as
/// a Prometheus server would (the observability rows of BENCHMARKS.md); the scrapes' CPU counts
/// in the DP's CPU per request.
fn scrape_metrics(status_url: &str) -> Option<tokio::task::JoinHandle<()>> {
    let ms = std::env::var("GATEHOUSE_BENCH_SCRAPE_MS")
        .ok()?
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)?;
    println!("- the DP's /metrics is fetched every {ms} ms during the runs");
    let url = format!("{status_url}/metrics");
    Some(tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut ticks = tokio::time::interval(Duration::from_millis(ms));
        loop {
            ticks.tick().await;
            match client.get(&url).send().await {
                Ok(response) => {
                    let _ = response.bytes().await;
                }
                Err(error) => eprintln!("metrics scrape failed: {error}"),
            }
        }
    }))
}

// --- keep-alive requests/s ----------------------------------------------------------------------

async fn keepalive(
    settings: &Settings,
    tools: &Tools,
    script: &std::path::Path,
    rows: &mut [KeepaliveRow],
) -> Result<()> {
    for row in rows.iter() {
        if settings.warmup > 0 {
            tools
                .wrk(
                    script,
                    row.target.addr,
                    &row.target.host,
                    row.path,
                    settings.connections,
                    settings.warmup,
                )
                .await
                .with_context(|| format!("warming up {}", row.label()))?;
        }
    }
    for round in 0..settings.runs {
        for i in rotated(rows.len(), round) {
            let row = &mut rows[i];
            let window = Window::open(row.target.pid);
            let run = tools
                .wrk(
                    script,
                    row.target.addr,
                    &row.target.host,
                    row.path,
                    settings.connections,
                    settings.duration,
                )
                .await
                .with_context(|| format!("wrk against {}", row.label()))?;
            let usage = window.close();
            eprintln!(
                "keepalive {}: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs, {:.1} CPU-µs/req, \
                 CPU0 {:.0}%, CPU1 {:.0}%, {} errors",
                row.label(),
                run.rps,
                run.p50_us,
                run.p99_us,
                per_event_us(&usage, run.requests),
                usage.busy[0] * 100.0,
                usage.busy[1] * 100.0,
                run.errors
            );
            row.runs.push((run, usage));
        }
    }
    Ok(())
}

fn print_keepalive(settings: &Settings, rows: &[KeepaliveRow]) {
    println!(
        "\n### HTTPS keep-alive: wrk -t1 -c{} --latency, {} s × {}\n",
        settings.connections, settings.duration, settings.runs
    );
    println!(
        "| proxy | body | req/s | p50 (µs) | p99 (µs) | **proxy CPU-µs/req** | CPU 0-µs/req | \
         proxy CPU share | CPU0 busy | CPU1 busy | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows.iter().filter(|r| r.routes <= 1) {
        let cpu1 = row.cpu1_median();
        println!(
            "| {} | {} B | {}{} | {} | {} | **{}** | {} | {} | {} | {} | {} |",
            row.target.name,
            body_len(row.path),
            if cpu1 > SATURATED { "≥ " } else { "" },
            spread(&row.rps(), 0),
            spread(&row.metric(|w, _| w.p50_us), 0),
            spread(&row.metric(|w, _| w.p99_us), 0),
            spread(&row.cpu_per_req(), 2),
            spread(&row.metric(|w, u| cpu0_per_event_us(u, w.requests)), 2),
            percent_spread(&row.metric(|_, u| u.process_share())),
            percent_spread(&row.metric(|_, u| u.busy[0])),
            percent_spread(&row.metric(|_, u| u.busy[1])),
            row.runs.iter().map(|(w, _)| w.errors).sum::<u64>(),
        );
    }
    println!(
        "\nproxy CPU-µs/req: user + system time of the proxy's processes (all threads) per \
         request. CPU 0-µs/req: all busy time of CPU {PROXY_CPU} per request, which adds the \
         kernel's network work done there outside the process (softirqs) and anything else that \
         ran on that CPU."
    );
    for (path, _) in PATHS {
        let find = |name: &str| {
            rows.iter()
                .find(|r| r.target.name == name && r.path == path && r.routes <= 1)
        };
        if let (Some(dp), Some(nginx)) = (find("Gatehouse DP"), find("nginx")) {
            println!(
                "\n{} B body: DP/nginx req/s {:.2}×, CPU-µs/req {:.2}× (below 1 = the DP \
                 spends less CPU per request).",
                body_len(path),
                median(&dp.rps()) / median(&nginx.rps()),
                median(&dp.cpu_per_req()) / median(&nginx.cpu_per_req()),
            );
        }
    }
    if rows.iter().any(|r| r.cpu1_median() > SATURATED) {
        println!(
            "\n≥: CPU {LOAD_CPU} (load generator + upstream) was over {:.0}% busy: the req/s of \
             that row is a lower bound (load-generator bound); CPU-µs/req is still valid.",
            SATURATED * 100.0
        );
    }
}

fn print_routes(settings: &Settings, rows: &[KeepaliveRow], small: &DataPlane, big: &DataPlane) {
    let one = rows.iter().find(|r| r.routes == 1 && r.path == "/");
    let many = rows.iter().find(|r| r.routes > 1);
    let (Some(one), Some(many)) = (one, many) else {
        return;
    };
    println!(
        "\n### Route table size: 1 vs {} routes in the DP (wrk as above, route matched by host)\n",
        settings.routes
    );
    println!(
        "| routes | req/s | p99 (µs) | **CPU-µs/req** | CPU0 busy | CPU1 busy | errors | DP RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (row, dp) in [(one, small), (many, big)] {
        println!(
            "| {} | {}{} | {} | **{}** | {} | {} | {} | {:.1} |",
            row.routes,
            if row.cpu1_median() > SATURATED {
                "≥ "
            } else {
                ""
            },
            spread(&row.rps(), 0),
            spread(&row.metric(|w, _| w.p99_us), 0),
            spread(&row.cpu_per_req(), 2),
            percent_spread(&row.metric(|_, u| u.busy[0])),
            percent_spread(&row.metric(|_, u| u.busy[1])),
            row.runs.iter().map(|(w, _)| w.errors).sum::<u64>(),
            rss_bytes(dp.pid()) as f64 / 1048576.0,
        );
    }
    println!(
        "\n{} routes vs 1: req/s {:.3}×, CPU-µs/req {:.3}×.",
        settings.routes,
        median(&many.rps()) / median(&one.rps()),
        median(&many.cpu_per_req()) / median(&one.cpu_per_req()),
    );
}

// --- added latency ------------------------------------------------------------------------------

async fn latency(
    settings: &Settings,
    tools: &Tools,
    ca: &std::path::Path,
    targets: &[&Target],
    rate: u64,
) -> Result<()> {
    let mut runs: Vec<Vec<(OhaRun, Usage)>> = vec![Vec::new(); targets.len()];
    for target in targets {
        if settings.warmup > 0 {
            tools
                .oha(ca, target.addr, rate, settings.connections, settings.warmup)
                .await
                .with_context(|| format!("warming up {}", target.name))?;
        }
    }
    for round in 0..settings.runs {
        for i in rotated(targets.len(), round) {
            let target = targets[i];
            let window = Window::open(target.pid);
            let run = tools
                .oha(
                    ca,
                    target.addr,
                    rate,
                    settings.connections,
                    settings.latency_duration,
                )
                .await
                .with_context(|| format!("oha against {}", target.name))?;
            let usage = window.close();
            eprintln!(
                "latency {} at {rate}/s: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, \
                 {:.1} CPU-µs/req, CPU1 {:.0}%, {} errors",
                target.name,
                run.rps,
                run.p50_us,
                run.p99_us,
                run.p999_us,
                per_event_us(&usage, run.requests),
                usage.busy[1] * 100.0,
                run.errors
            );
            runs[i].push((run, usage));
        }
    }

    println!(
        "\n### Added latency at {rate} req/s (50% of the DP's max), open loop: oha -q {rate} \
         --latency-correction -c {}, {} s × {}\n",
        settings.connections, settings.latency_duration, settings.runs
    );
    println!(
        "| path | achieved req/s | p50 (µs) | p99 (µs) | p99.9 (µs) | **added p50 (µs)** | \
         **added p99 (µs)** | CPU-µs/req of that process | CPU0 busy | CPU1 busy | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let metric = |i: usize, f: fn(&OhaRun) -> f64| -> Vec<f64> {
        runs[i].iter().map(|(o, _)| f(o)).collect()
    };
    let (direct_p50, direct_p99) = (
        median(&metric(0, |o| o.p50_us)),
        median(&metric(0, |o| o.p99_us)),
    );
    for (i, target) in targets.iter().enumerate() {
        let added = |value: f64, base: f64| {
            if i == 0 {
                "–".to_owned()
            } else {
                format!("{:.0}", value - base)
            }
        };
        let usages: Vec<&Usage> = runs[i].iter().map(|(_, u)| u).collect();
        let cpu: Vec<f64> = runs[i]
            .iter()
            .map(|(o, u)| per_event_us(u, o.requests))
            .collect();
        println!(
            "| {} | {} | {} | {} | {} | **{}** | **{}** | {} | {} | {} | {} |",
            target.name,
            spread(&metric(i, |o| o.rps), 0),
            spread(&metric(i, |o| o.p50_us), 0),
            spread(&metric(i, |o| o.p99_us), 0),
            spread(&metric(i, |o| o.p999_us), 0),
            added(median(&metric(i, |o| o.p50_us)), direct_p50),
            added(median(&metric(i, |o| o.p99_us)), direct_p99),
            spread(&cpu, 2),
            percent_spread(&usages.iter().map(|u| u.busy[0]).collect::<Vec<_>>()),
            percent_spread(&usages.iter().map(|u| u.busy[1]).collect::<Vec<_>>()),
            runs[i].iter().map(|(o, _)| o.errors).sum::<u64>(),
        );
    }
    println!(
        "\nAdded = median(proxy) − median(direct). Direct: the client talks TLS to the \
         upstream nginx itself (same certificate, on CPU {LOAD_CPU}); its CPU-µs/req is the \
         upstream's own cost."
    );
    Ok(())
}

// --- full handshakes ----------------------------------------------------------------------------

async fn handshakes(settings: &Settings, tools: &Tools, targets: &[&Target]) -> Result<()> {
    let (found, runs) = handshake_runs(settings, tools, targets).await?;
    let client = match tools.handshake_client {
        HandshakeClient::Rustls => "the benchmark's rustls client",
        HandshakeClient::H2load => "h2load --h1 -t1",
    };
    println!(
        "\n### Full TLS 1.3 handshakes (X25519, AES-128-GCM, ECDSA P-256 + intermediate, no \
         resumption), one request per connection: {client} at a fixed connection rate, {} s × \
         {}\n",
        settings.duration, settings.runs
    );
    print_handshake_rows(settings, targets, &found, &runs);
    if let [dp, nginx] = &runs[..] {
        let cpu = |runs: &[(HandshakeRun, Usage)]| {
            median(
                &runs
                    .iter()
                    .map(|(h, u)| per_event_us(u, h.succeeded))
                    .collect::<Vec<_>>(),
            )
        };
        if !dp.is_empty() && !nginx.is_empty() {
            println!(
                "\nDP/nginx: max rate {:.2}×, CPU-µs per handshake {:.2}×.",
                found[0].0 as f64 / found[1].0 as f64,
                cpu(dp) / cpu(nginx)
            );
        }
    }
    println!(
        "\nRate search ({} s steps), then the runs at the rate found: sustained = every \
         connection answered, none failed, done within {:.0}% of the planned time, connect + \
         handshake p99 (h2load: mean) ≤ {} ms. Resumption is off on both (DP \
         `--ssl-session-tickets off --ssl-session-cache off`, nginx tickets and cache off), and \
         the client never offers a session: every handshake is full.",
        settings.step,
        (STEP_SLACK - 1.0) * 100.0,
        HANDSHAKE_LATENCY_LIMIT.as_millis()
    );
    Ok(())
}

/// The highest sustained rate found for each target (0: none) with its rate search, and
/// the measured runs at that rate (none for a target without one).
type HandshakeResults = (Vec<(u64, Vec<String>)>, Vec<Vec<(HandshakeRun, Usage)>>);

/// The rate search of each target, then `settings.runs` rounds at the rates found.
async fn handshake_runs(
    settings: &Settings,
    tools: &Tools,
    targets: &[&Target],
) -> Result<HandshakeResults> {
    let mut found = Vec::new();
    for target in targets {
        let (rate, ladder) = max_handshake_rate(settings, tools, target).await?;
        eprintln!(
            "handshake {}: max sustained {rate}/s ({})",
            target.name,
            ladder.join(" ")
        );
        found.push((rate, ladder));
    }
    let mut runs: Vec<Vec<(HandshakeRun, Usage)>> = vec![Vec::new(); targets.len()];
    for round in 0..settings.runs {
        for i in rotated(targets.len(), round) {
            let rate = found[i].0;
            if rate == 0 {
                continue;
            }
            let target = targets[i];
            let window = Window::open(target.pid);
            let run = tools
                .handshakes(
                    target.addr,
                    &target.host,
                    target.identity.as_ref(),
                    rate,
                    settings.duration,
                )
                .await
                .with_context(|| format!("handshakes against {}", target.name))?;
            let usage = window.close();
            eprintln!(
                "handshake {} at {rate}/s: {} of {} in {:.2} s, {} failures, connect mean \
                 {:.0} µs, p99 {:.0} µs, {:.1} CPU-µs/handshake, CPU0 {:.0}%, CPU1 {:.0}%",
                target.name,
                run.succeeded,
                run.planned,
                run.secs,
                run.failures,
                run.connect_mean_us,
                run.connect_p99_us,
                per_event_us(&usage, run.succeeded),
                usage.busy[0] * 100.0,
                usage.busy[1] * 100.0
            );
            runs[i].push((run, usage));
        }
    }
    Ok((found, runs))
}

/// The table of [`handshake_runs`]' results, one row per target.
fn print_handshake_rows(
    settings: &Settings,
    targets: &[&Target],
    found: &[(u64, Vec<String>)],
    runs: &[Vec<(HandshakeRun, Usage)>],
) {
    println!(
        "| proxy | max sustained rate (/s) | achieved handshakes/s | **CPU-µs per handshake** | \
         CPU 0-µs per handshake | connect + handshake mean / p99 (ms) | proxy CPU share | CPU0 \
         busy | CPU1 busy | failures | sustained runs | rate search |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, target) in targets.iter().enumerate() {
        let (rate, ladder) = &found[i];
        let runs = &runs[i];
        let metric = |f: &dyn Fn(&HandshakeRun, &Usage) -> f64| -> Vec<f64> {
            runs.iter().map(|(h, u)| f(h, u)).collect()
        };
        let cpu1 = median(&metric(&|_, u| u.busy[1]));
        println!(
            "| {} | {}{} | {} | **{}** | {} | {} / {} | {} | {} | {} | {} | {}/{} | {} |",
            target.name,
            if *rate == 0 {
                "< "
            } else if cpu1 > SATURATED {
                "≥ "
            } else {
                ""
            },
            if *rate == 0 {
                ladder_min(ladder)
            } else {
                *rate
            },
            spread(&metric(&|h, _| h.succeeded as f64 / h.secs), 0),
            spread(&metric(&|h, u| per_event_us(u, h.succeeded)), 1),
            spread(&metric(&|h, u| cpu0_per_event_us(u, h.succeeded)), 1),
            spread(&metric(&|h, _| h.connect_mean_us / 1000.0), 2),
            spread(&metric(&|h, _| h.connect_p99_us / 1000.0), 2),
            percent_spread(&metric(&|_, u| u.process_share())),
            percent_spread(&metric(&|_, u| u.busy[0])),
            percent_spread(&metric(&|_, u| u.busy[1])),
            runs.iter().map(|(h, _)| h.failures).sum::<u64>(),
            runs.iter()
                .filter(|(h, _)| sustained(h, settings.duration))
                .count(),
            runs.len(),
            ladder.join(" "),
        );
    }
}

/// Whether a handshake run of `secs` kept up: every connection answered, none failed, done
/// within [`STEP_SLACK`] of the planned time, connect + handshake p99 (h2load: mean) within
/// [`HANDSHAKE_LATENCY_LIMIT`].
fn sustained(run: &HandshakeRun, secs: u64) -> bool {
    let latency_us = if run.connect_p99_us.is_finite() {
        run.connect_p99_us
    } else {
        run.connect_mean_us
    };
    run.failures == 0
        && run.succeeded == run.planned
        && run.secs <= secs as f64 * STEP_SLACK
        && latency_us <= HANDSHAKE_LATENCY_LIMIT.as_secs_f64() * 1e6
}

/// Doubles the connection rate from `handshake_start` until a step is not sustained, then
/// bisects to within 10%; returns the highest sustained rate (0: none) and the steps tried.
async fn max_handshake_rate(
    settings: &Settings,
    tools: &Tools,
    target: &Target,
) -> Result<(u64, Vec<String>)> {
    let mut low = 0;
    let mut high: Option<u64> = None;
    let mut rate = settings.handshake_start;
    let mut ladder = Vec::new();
    loop {
        let run = tools
            .handshakes(
                target.addr,
                &target.host,
                target.identity.as_ref(),
                rate,
                settings.step,
            )
            .await
            .with_context(|| format!("handshakes against {} at {rate}/s", target.name))?;
        let sustained = sustained(&run, settings.step);
        ladder.push(format!("{rate}{}", if sustained { "✓" } else { "✗" }));
        if sustained {
            low = rate;
        } else {
            high = Some(rate);
        }
        rate = match high {
            None if rate >= MAX_HANDSHAKE_RATE => break,
            None => rate * 2,
            Some(high) if high - low <= (low / 10).max(100) => break,
            Some(high) => ((low + high) / 200 * 100).max(100),
        };
        if ladder.iter().any(|s| s.starts_with(&format!("{rate}"))) {
            break;
        }
        // Let the sockets of the last step close.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok((low, ladder))
}

// --- setup --------------------------------------------------------------------------------------

impl Settings {
    fn from_env() -> Result<Settings> {
        let quick = std::env::var("GATEHOUSE_BENCH_QUICK").is_ok_and(|v| v == "1");
        let pick = |key: &str, full: u64, smoke: u64| -> Result<u64> {
            match std::env::var(key) {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse::<u64>()
                    .with_context(|| format!("{key}: {v:?} is not a number")),
                _ => Ok(if quick { smoke } else { full }),
            }
        };
        let settings = Settings {
            duration: pick("GATEHOUSE_BENCH_DURATION", 15, 3)?,
            warmup: pick("GATEHOUSE_BENCH_WARMUP", 5, 1)?,
            runs: pick("GATEHOUSE_BENCH_RUNS", 3, 1)? as usize,
            latency_duration: pick("GATEHOUSE_BENCH_LATENCY_DURATION", 20, 5)?,
            step: pick("GATEHOUSE_BENCH_STEP", 5, 2)?,
            handshake_start: pick("GATEHOUSE_BENCH_HANDSHAKE_START", 1000, 1000)?,
            connections: pick("GATEHOUSE_BENCH_CONNECTIONS", 64, 64)? as usize,
            routes: pick("GATEHOUSE_BENCH_ROUTES", 10_000, 1000)? as usize,
        };
        ensure!(
            settings.duration > 0 && settings.runs > 0 && settings.step > 0,
            "durations and runs must be positive"
        );
        ensure!(
            settings.routes >= 2,
            "GATEHOUSE_BENCH_ROUTES must be at least 2"
        );
        Ok(settings)
    }
}

impl Bed {
    async fn start(
        settings: &Settings,
        tools: &Tools,
        with_routes: bool,
        with_tls: bool,
    ) -> Result<Bed> {
        let files = TempDir::new("bench-proxy")?;
        let server_pki = ServerPki::new()?;
        let (chain, key) = server_pki.leaf(&[HOST])?;
        let root = server_pki.root.clone();
        let tls_files = TlsFiles::write(&files, &server_pki)?;
        let tls_ports = TlsPorts::free()?;
        std::fs::write(files.join("chain.pem"), &chain)?;
        std::fs::write(files.join("key.pem"), &key)?;
        std::fs::write(files.join("root.pem"), &root)?;
        std::fs::write(files.join("wrk-connect-to.lua"), WRK_SCRIPT)?;
        let path = |name: &str| -> Result<String> {
            Ok(files
                .join(name)
                .to_str()
                .context("non-UTF-8 temp dir")?
                .to_owned())
        };
        let body_1k: String = "0123456789abcdef".repeat(64);

        let (plain_port, tls_port) = (free_port()?, free_port()?);
        let upstream_conf = tls_files.fill(
            &NGINX_UPSTREAM
                .replace("@PLAIN_PORT@", &plain_port.to_string())
                .replace("@TLS_PORT@", &tls_port.to_string())
                .replace("@CHAIN@", &path("chain.pem")?)
                .replace("@KEY@", &path("key.pem")?)
                .replace("@BODY_1K@", &body_1k),
            &tls_ports,
        )?;
        let upstream = Nginx::start(
            &tools.nginx,
            "upstream",
            LOAD_CPU,
            &upstream_conf,
            &[
                plain_port,
                tls_port,
                tls_ports.upstream_tls,
                tls_ports.upstream_mtls,
                tls_ports.status,
            ],
        )
        .await
        .context("starting the upstream nginx")?;
        let upstream_url = format!("http://127.0.0.1:{plain_port}");

        let dp_threads = if dp_has_flag("--worker-threads").await? {
            "1 worker thread (--worker-threads 1)".to_owned()
        } else {
            eprintln!("warning: gatehouse-dp has no --worker-threads: its default runtime");
            "default runtime (this gatehouse-dp has no --worker-threads)".to_owned()
        };
        let pki = Pki::new(&["dp1", "dp2", "dp3"])?;

        let db = test_db().await?;
        let cp = start_cp(&db, &pki).await?;
        seed(cp.admin(), &upstream_url, &chain, &key, 1).await?;
        let dp = start_dp(&cp, &pki, "dp1", &[]).await?;

        let (big_cp, big_dp, big_db) = if with_routes {
            let db = test_db().await?;
            let cp = start_cp(&db, &pki).await?;
            let loading = tokio::time::Instant::now();
            seed(cp.admin(), &upstream_url, &chain, &key, settings.routes).await?;
            eprintln!(
                "loaded {} routes in {:.1} s",
                settings.routes,
                loading.elapsed().as_secs_f64()
            );
            let dp = start_dp(&cp, &pki, "dp2", &[]).await?;
            (Some(cp), Some(dp), Some(db))
        } else {
            (None, None, None)
        };

        let tls = if with_tls {
            Some(TlsBed::start(&pki, &tls_files, plain_port, &tls_ports).await?)
        } else {
            None
        };

        let proxy_port = free_port()?;
        let proxy_conf = tls_files.fill(
            &NGINX_PROXY
                .replace("@PORT@", &proxy_port.to_string())
                .replace("@UPSTREAM_PORT@", &plain_port.to_string())
                .replace("@CHAIN@", &path("chain.pem")?)
                .replace("@KEY@", &path("key.pem")?),
            &tls_ports,
        )?;
        let proxy_nginx =
            Nginx::start(&tools.nginx, "proxy", PROXY_CPU, &proxy_conf, &[proxy_port])
                .await
                .context("starting the proxy nginx")?;

        // The CPs go with the load generator (benchmarking.md §4.2).
        for cp in std::iter::once(&cp)
            .chain(big_cp.as_ref())
            .chain(tls.as_ref().map(TlsBed::cp))
        {
            pin(cp.pid(), LOAD_CPU).await?;
        }
        let bed = Bed {
            dp,
            big_dp,
            tls,
            tls_files,
            proxy_nginx,
            upstream,
            cp,
            _big_cp: big_cp,
            _db: db,
            _big_db: big_db,
            _pki: pki,
            files,
            dp_threads,
        };
        bed.check(tools, &body_1k).await?;
        if let Some(tls) = &bed.tls {
            tls.check(tools, &bed).await?;
        }
        Ok(bed)
    }

    fn nginx_addr(&self) -> Result<SocketAddr> {
        nginx_listen(&self.proxy_nginx, "ssl backlog")
    }

    fn upstream_tls_addr(&self) -> Result<SocketAddr> {
        nginx_listen(&self.upstream, "ssl backlog")
    }

    /// Every target answers both paths through curl, with the certificate chain verified
    /// against the root (so each serves the `bench.test` certificate and its intermediate).
    async fn check(&self, tools: &Tools, body_1k: &str) -> Result<()> {
        let ca = self.files.join("root.pem");
        let mut addrs = vec![
            ("DP", self.dp.proxy_ssl_addr()?),
            ("nginx", self.nginx_addr()?),
            ("upstream", self.upstream_tls_addr()?),
        ];
        if let Some(big) = &self.big_dp {
            addrs.push(("DP with many routes", big.proxy_ssl_addr()?));
        }
        for (name, addr) in addrs {
            for (path, expected) in [("/", "ok"), ("/1k", body_1k)] {
                let body = tools
                    .curl(&ca, addr, path)
                    .await
                    .with_context(|| format!("checking {name} at {addr}{path}"))?;
                ensure!(body == expected, "{name} at {addr}{path} answered {body:?}");
            }
        }
        Ok(())
    }
}

/// The address of the first `listen IP:PORT <marker>` line of a running nginx's config.
fn nginx_listen(nginx: &Nginx, marker: &str) -> Result<SocketAddr> {
    let conf = std::fs::read_to_string(nginx.conf_path())?;
    conf.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("listen ") && l.contains(marker))
        .find_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .context("no TLS listen line in the nginx config")
}

/// The proxies' server certificates: root CA → intermediate CA → ECDSA P-256 leaves, each
/// served as leaf + intermediate.
struct ServerPki {
    /// The root certificate, PEM: what the clients' checks trust.
    root: String,
    /// The intermediate certificate, PEM.
    intermediate: String,
    issuer: Issuer<'static, KeyPair>,
}

// === impl ServerPki ===

impl ServerPki {
    fn new() -> Result<ServerPki> {
        let ca_params = |cn: &str| -> Result<CertificateParams> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
            Ok(params)
        };
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let root_params = ca_params("Gatehouse bench root CA")?;
        let root = root_params.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root_params, root_key);

        let mid_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mid_params = ca_params("Gatehouse bench intermediate CA")?;
        let mid = mid_params.signed_by(&mid_key, &root_issuer)?;
        Ok(ServerPki {
            root: root.pem(),
            intermediate: mid.pem(),
            issuer: Issuer::new(mid_params, mid_key),
        })
    }

    /// A leaf for `names` (the first is also the CN); returns the chain (leaf +
    /// intermediate) and the key, PEM.
    fn leaf(&self, names: &[&str]) -> Result<(String, String)> {
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut leaf_params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().copied().unwrap_or(HOST));
        leaf_params.distinguished_name = dn;
        leaf_params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        leaf_params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
        let leaf = leaf_params.signed_by(&leaf_key, &self.issuer)?;
        Ok((
            format!("{}{}", leaf.pem(), self.intermediate),
            leaf_key.serialize_pem(),
        ))
    }
}

/// Whether this `gatehouse-dp` takes `flag` (from its `--help`).
async fn dp_has_flag(flag: &str) -> Result<bool> {
    let out = tokio::process::Command::new(dp_bin()?)
        .arg("--help")
        .output()
        .await
        .context("gatehouse-dp --help")?;
    Ok(String::from_utf8_lossy(&out.stdout).contains(flag))
}

async fn start_cp(db: &TestDb, pki: &Pki) -> Result<ControlPlane> {
    let mut args = pki.cp_args();
    args.extend(["--database-max-connections", "16"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ControlPlane::start_with(db, &args, &[("RUST_LOG", "warn,gatehouse_cp=info")]).await
}

/// A DP of `cp` with only the TLS proxy listener, resumption off (tickets and, when it has
/// the flag, the session cache), (when it has the flag) one worker thread and the `extra` arguments, ready with the CP's current
/// configuration and pinned to the proxy CPU.
async fn start_dp(cp: &ControlPlane, pki: &Pki, name: &str, extra: &[&str]) -> Result<DataPlane> {
    let addr = cp.cluster_addr().context("no cluster listener")?;
    let mut options = DataPlaneOptions::new(addr)
        .pki(pki, name)
        .proxy_listen("off")
        .arg("--ssl-session-tickets")
        .arg("off")
        .quiet();
    if dp_has_flag("--ssl-session-cache").await? {
        // No server-side resumption at all, as nginx's `ssl_session_cache off`.
        options = options.arg("--ssl-session-cache").arg("off");
    }
    for arg in extra {
        options = options.arg(arg);
    }
    if dp_has_flag("--worker-threads").await? {
        options = options.arg("--worker-threads").arg("1");
    }
    let dp = DataPlane::start(options).await?;
    dp.wait_until_ready(PATIENCE).await?;
    let version = config_version(cp.admin()).await?;
    dp.wait_for_version(version, PATIENCE).await?;
    pin(dp.pid(), PROXY_CPU).await?;
    Ok(dp)
}

/// A service to the upstream, the certificate (SNI `bench.test`), the benchmarked route (host
/// `bench.test`) and `routes - 1` more routes with distinct hosts and paths.
async fn seed(admin: &Admin, upstream: &str, chain: &str, key: &str, routes: usize) -> Result<()> {
    let created = admin
        .post_json(
            "/certificates",
            &json!({"cert": chain, "key": key, "snis": [HOST]}),
        )
        .await?;
    ensure!(created.status == 201, "{created:?}");
    let service = admin
        .post_json("/services", &json!({"name": "bench", "url": upstream}))
        .await?;
    ensure!(service.status == 201, "{service:?}");
    let service = service.body["id"]
        .as_str()
        .context("service id")?
        .to_owned();
    let created = admin
        .post_json(
            "/routes",
            &json!({"name": "bench", "hosts": [HOST], "service": {"id": service}}),
        )
        .await?;
    ensure!(created.status == 201, "{created:?}");
    let results = futures_util::stream::iter(1..routes)
        .map(|r| {
            let service = service.clone();
            async move {
                let created = admin
                    .post_json(
                        "/routes",
                        &json!({
                            "name": format!("r{r}"),
                            "hosts": [format!("h{r}.{HOST}")],
                            "paths": [format!("/api/v1/r{r}")],
                            "service": {"id": service},
                        }),
                    )
                    .await?;
                ensure!(created.status == 201, "{created:?}");
                Ok(())
            }
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .collect::<Vec<Result<()>>>()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(())
}

// === impl Target ===

impl Target {
    /// `name` at `addr`, charged to process `pid`, for `bench.test` without a client
    /// certificate.
    fn new(name: impl Into<String>, addr: SocketAddr, pid: u32) -> Target {
        Target {
            name: name.into(),
            addr,
            pid,
            host: HOST.to_owned(),
            identity: None,
        }
    }

    /// The same, for `host` (SNI and `Host`).
    fn with_host(mut self, host: &str) -> Target {
        self.host = host.to_owned();
        self
    }

    /// The same, presenting `identity`.
    fn with_identity(mut self, identity: &Identity) -> Target {
        self.identity = Some(identity.clone());
        self
    }
}

// === impl KeepaliveRow ===

impl KeepaliveRow {
    fn new(target: &Target, path: &'static str, routes: usize) -> Self {
        KeepaliveRow {
            target: target.clone(),
            path,
            routes,
            runs: Vec::new(),
        }
    }

    fn label(&self) -> String {
        let routes = if self.routes > 1 {
            format!(", {} routes", self.routes)
        } else {
            String::new()
        };
        format!("{} {}{routes}", self.target.name, self.path)
    }

    fn metric(&self, f: impl Fn(&WrkRun, &Usage) -> f64) -> Vec<f64> {
        self.runs.iter().map(|(w, u)| f(w, u)).collect()
    }

    fn rps(&self) -> Vec<f64> {
        self.metric(|w, _| w.rps)
    }

    fn cpu_per_req(&self) -> Vec<f64> {
        self.metric(|w, u| per_event_us(u, w.requests))
    }

    fn cpu1_median(&self) -> f64 {
        median(&self.metric(|_, u| u.busy[1]))
    }
}

// --- numbers ------------------------------------------------------------------------------------

/// The lowest rate of a rate search.
fn ladder_min(ladder: &[String]) -> u64 {
    ladder
        .iter()
        .filter_map(|step| step.trim_end_matches(['✓', '✗']).parse().ok())
        .min()
        .unwrap_or(0)
}

/// CPU-µs of the charged process per event (request, handshake).
fn per_event_us(usage: &Usage, events: u64) -> f64 {
    if events == 0 {
        return f64::NAN;
    }
    usage.process_secs * 1e6 / events as f64
}

/// Busy µs of the whole proxy CPU per event: the proxy, plus what the kernel did there
/// outside its process (network softirqs of its sockets) and anything else that ran on it.
fn cpu0_per_event_us(usage: &Usage, events: u64) -> f64 {
    if events == 0 {
        return f64::NAN;
    }
    usage.busy[PROXY_CPU as usize] * usage.wall_secs * 1e6 / events as f64
}

/// Indices `0..n` starting at `round % n`: each round begins with another target.
fn rotated(n: usize, round: usize) -> Vec<usize> {
    (0..n).map(|i| (i + round) % n).collect()
}

fn body_len(path: &str) -> usize {
    PATHS
        .iter()
        .find(|(p, _)| *p == path)
        .map_or(0, |(_, len)| *len)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// `median (min–max)`, or the one value, with `decimals`.
fn spread(values: &[f64], decimals: usize) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let Some(min) = finite.iter().copied().reduce(f64::min) else {
        return "n/a".into();
    };
    let max = finite.iter().copied().fold(min, f64::max);
    let m = median(&finite);
    if finite.len() == 1 {
        format!("{m:.decimals$}")
    } else {
        format!("{m:.decimals$} ({min:.decimals$}–{max:.decimals$})")
    }
}

/// Shares (0..1) as percentages: the median, with min–max when they differ by 5 points.
fn percent_spread(values: &[f64]) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let Some(min) = finite.iter().copied().reduce(f64::min) else {
        return "n/a".into();
    };
    let max = finite.iter().copied().fold(min, f64::max);
    let m = median(&finite);
    if max - min < 0.05 {
        format!("{:.0}%", m * 100.0)
    } else {
        format!("{:.0}% ({:.0}–{:.0})", m * 100.0, min * 100.0, max * 100.0)
    }
}
