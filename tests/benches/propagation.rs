//! Config-propagation benchmark: real PostgreSQL, a release `gatehouse-cp` and N release
//! `gatehouse-dp` processes on loopback, real mTLS on the cluster link.
//!
//! Run it with `tests/bench/run.sh` (which builds the release binaries and records the machine);
//! it is not part of `cargo test` (the target has `test = false`, and it does nothing unless
//! started by `cargo bench`, which passes `--bench`). Results: `BENCHMARKS.md`.
//!
//! Two parts, selected by the first free argument (`propagation`, `snapshot`; default both):
//!
//! - **propagation**: for N data planes, C single-certificate changes (`PATCH /certificates/{id}`
//!   with a fresh ECDSA pair each time), one at a time, each after a quiet pause longer than the
//!   CP's coalescing interval. Per change: admin write → every DP logged `snapshot applied`
//!   for the new version (read from each DP's output as it is written), and admin write →
//!   `/clustering/status` shows every DP in sync (the acks recorded by the CP, polled every
//!   2 ms). p50/p90/p99/max over the C changes, CPU time of the CP and the DPs per change.
//! - **snapshot**: for M routes and M certificates (each with one SNI), loaded through the
//!   Admin API: snapshot bytes on the wire, CP build time (`snapshot built … took_ms`), DP
//!   apply time (`snapshot applied … took_ms`) for a cold DP and for one change, and the cold
//!   DP's time from process start to ready.
//!
//! Settings (environment): `GATEHOUSE_BENCH_DPS` (default `2,5,20`), `GATEHOUSE_BENCH_CHANGES`
//! (default 200), `GATEHOUSE_BENCH_PAUSE_MS` (pause between changes, default 250),
//! `GATEHOUSE_BENCH_SIZES` (default `10,1000,10000`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use gatehouse_tests::certs::{self, Algorithm, Pem};
use gatehouse_tests::{
    Admin, ControlPlane, DataPlane, DataPlaneOptions, Pki, TestDb, clustering_status,
    config_version, log_field, test_db,
};

/// How long anything may take before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(120);
/// How often the CP's `/clustering/status` is polled for the acks.
const ACK_POLL: Duration = Duration::from_millis(2);
/// Changes made (and not measured) before the measured ones.
const WARMUP: usize = 10;
/// Concurrent Admin API requests while loading a large configuration.
const LOAD_CONCURRENCY: usize = 8;
/// Clock ticks per second of `/proc/PID/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("propagation benchmark skipped: run it with tests/bench/run.sh (cargo bench)");
        return Ok(());
    }
    let free: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |part: &str| free.is_empty() || free.contains(&part);

    let dps = list_env("GATEHOUSE_BENCH_DPS", &[2, 5, 20])?;
    let changes = list_env("GATEHOUSE_BENCH_CHANGES", &[200])?[0];
    let pause = Duration::from_millis(list_env("GATEHOUSE_BENCH_PAUSE_MS", &[250])?[0] as u64);
    let sizes = list_env("GATEHOUSE_BENCH_SIZES", &[10, 1000, 10000])?;

    println!("binaries: {}", gatehouse_tests::cp_bin()?.display());
    if wants("propagation") {
        println!(
            "\n## Propagation: admin write -> all data planes ({changes} single-certificate \
             changes, {} ms apart, {WARMUP} warm-up changes not counted)\n",
            pause.as_millis()
        );
        println!(
            "| DPs | write->all applied p50 / p90 / p99 / max (ms) | write->all acks at CP \
             p50 / p99 / max (ms) | admin write p50 (ms) | spread first..last DP p50 (ms) | \
             CP build p50 (ms) | DP apply p50 (ms) | snapshot bytes | CPU per change: CP / all DPs (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for n in &dps {
            let row = propagation(*n, changes, pause)
                .await
                .with_context(|| format!("propagation with {n} DPs"))?;
            println!("{row}");
        }
    }
    if wants("snapshot") {
        println!(
            "\n## Snapshot size and build/apply time (M routes + M certificates with one SNI each)\n"
        );
        println!(
            "| M | entities | load via Admin API (s) | wire bytes | config bytes | CP build (ms) | \
             cold DP: apply (ms) / start->ready (ms) | one change: build (ms) / apply (ms) / \
             write->applied (ms) | DP cache file bytes |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for m in &sizes {
            let row = snapshot(*m)
                .await
                .with_context(|| format!("snapshot with {m} routes and certificates"))?;
            println!("{row}");
        }
    }
    Ok(())
}

// --- propagation --------------------------------------------------------------------------------

async fn propagation(n: usize, changes: usize, pause: Duration) -> Result<String> {
    let names: Vec<String> = (1..=n).map(|i| format!("dp{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(&name_refs)?;
    let db = test_db().await?;
    let cp = start_cp(&db, &pki).await?;
    let addr = cp.cluster_addr().context("no cluster listener")?;
    let admin = cp.admin();

    // A small realistic configuration: a service, 10 routes, 10 certificates.
    seed(admin, 10).await?;
    let target = create_certificate(admin, "rotating.bench.test").await?;

    let mut dps = Vec::new();
    for name in &names {
        dps.push(DataPlane::start(DataPlaneOptions::new(addr).pki(&pki, name).quiet()).await?);
    }
    for dp in &dps {
        dp.wait_until_ready(PATIENCE).await?;
    }
    let version = config_version(admin).await?;
    for dp in &dps {
        dp.wait_for_version(version, PATIENCE).await?;
    }

    // Fresh pairs made up front, so key generation is not timed.
    let pairs: Vec<Pem> = (0..WARMUP + changes)
        .map(|_| certs::self_signed(&["rotating.bench.test"], Algorithm::Ecdsa, 30))
        .collect::<Result<_>>()?;

    let mut applied = Vec::new();
    let mut acked = Vec::new();
    let mut writes = Vec::new();
    let mut spreads = Vec::new();
    let mut builds = Vec::new();
    let mut applies = Vec::new();
    let mut bytes = 0;
    let mut cpu_before = (0.0, 0.0);
    for (i, pair) in pairs.iter().enumerate() {
        if i == WARMUP {
            cpu_before = (
                cpu_secs(cp.pid()),
                dps.iter().map(|d| cpu_secs(d.pid())).sum(),
            );
        }
        tokio::time::sleep(pause).await;
        let version = config_version(admin).await? + 1;
        let started = Instant::now();
        let patched = admin
            .patch_json(
                &format!("/certificates/{target}"),
                &json!({"cert": pair.cert, "key": pair.key}),
            )
            .await?;
        ensure!(patched.status == 200, "{patched:?}");
        let write = started.elapsed();

        let each_applied = futures_util::future::try_join_all(dps.iter().map(|dp| async move {
            dp.wait_for_applied_log(version, PATIENCE).await?;
            Ok::<_, anyhow::Error>(started.elapsed())
        }));
        let all_acked = async {
            loop {
                let status = clustering_status(admin).await?;
                if status["config_version"] == json!(version)
                    && status["data_planes"]["in_sync"] == json!(n)
                {
                    return Ok::<_, anyhow::Error>(started.elapsed());
                }
                if started.elapsed() > PATIENCE {
                    bail!("acks of version {version} not all recorded: {status}");
                }
                tokio::time::sleep(ACK_POLL).await;
            }
        };
        let (each_applied, all_acked) = tokio::join!(each_applied, all_acked);
        let each_applied = each_applied?;
        let all_acked = all_acked?;
        if i < WARMUP {
            continue;
        }
        let first = each_applied.iter().min().copied().unwrap_or_default();
        let last = each_applied.iter().max().copied().unwrap_or_default();
        applied.push(last);
        spreads.push(last - first);
        acked.push(all_acked);
        writes.push(write);
        if let Some(line) = line_with(&cp.logs(), "snapshot built", version) {
            builds.push(ms_field(&line, "took_ms"));
            bytes = log_field(&line, "bytes")
                .and_then(|b| b.parse().ok())
                .unwrap_or(bytes);
        }
        for dp in &dps {
            if let Some(line) = line_with(&dp.logs(), "snapshot applied", version) {
                applies.push(ms_field(&line, "took_ms"));
            }
        }
    }
    let cpu_cp = (cpu_secs(cp.pid()) - cpu_before.0) * 1000.0 / changes as f64;
    let cpu_dps = (dps.iter().map(|d| cpu_secs(d.pid())).sum::<f64>() - cpu_before.1) * 1000.0
        / changes as f64;

    eprintln!("{n} DPs, write->all applied (ms): {:?}", ms_list(&applied));
    Ok(format!(
        "| {n} | {} / {} / {} / {} | {} / {} / {} | {} | {} | {} | {} | {bytes} | {cpu_cp:.2} / {cpu_dps:.2} |",
        ms(pct(&applied, 0.50)),
        ms(pct(&applied, 0.90)),
        ms(pct(&applied, 0.99)),
        ms(pct(&applied, 1.0)),
        ms(pct(&acked, 0.50)),
        ms(pct(&acked, 0.99)),
        ms(pct(&acked, 1.0)),
        ms(pct(&writes, 0.50)),
        ms(pct(&spreads, 0.50)),
        fmt_ms(median_f(&builds)),
        fmt_ms(median_f(&applies)),
    ))
}

// --- snapshot size ------------------------------------------------------------------------------

async fn snapshot(m: usize) -> Result<String> {
    let pki = Pki::new(&["dp1"])?;
    let db = test_db().await?;
    let cp = start_cp(&db, &pki).await?;
    let addr = cp.cluster_addr().context("no cluster listener")?;
    let admin = cp.admin();

    let loading = Instant::now();
    let first_cert = seed(admin, m).await?;
    let load_secs = loading.elapsed().as_secs_f64();
    let version = config_version(admin).await?;
    let built = wait_line(|| cp.logs(), "snapshot built", version).await?;

    let started = Instant::now();
    let dp = DataPlane::start(DataPlaneOptions::new(addr).pki(&pki, "dp1").quiet()).await?;
    dp.wait_until_ready(PATIENCE).await?;
    let cold_ready = started.elapsed();
    let cold_apply = dp.wait_for_applied_log(version, PATIENCE).await?;

    // One change on top of the large configuration.
    let pem = certs::self_signed(&["c0.bench.test"], Algorithm::Ecdsa, 30)?;
    let changed = Instant::now();
    let patched = admin
        .patch_json(
            &format!("/certificates/{first_cert}"),
            &json!({"cert": pem.cert, "key": pem.key}),
        )
        .await?;
    ensure!(patched.status == 200, "{patched:?}");
    let next = version + 1;
    let applied = dp.wait_for_applied_log(next, PATIENCE).await?;
    let change_latency = changed.elapsed();
    let rebuilt = wait_line(|| cp.logs(), "snapshot built", next).await?;

    let cache_bytes = dir_bytes(dp.cache_dir())?;
    Ok(format!(
        "| {m} | {} | {load_secs:.1} | {} | {} | {} | {} / {} | {} / {} / {} | {cache_bytes} |",
        3 * m + m.div_ceil(100).max(1),
        log_field(&built, "bytes").unwrap_or_default(),
        log_field(&built, "config_bytes").unwrap_or_default(),
        fmt_ms(ms_field(&built, "took_ms")),
        fmt_ms(ms_field(&cold_apply, "took_ms")),
        ms(cold_ready),
        fmt_ms(ms_field(&rebuilt, "took_ms")),
        fmt_ms(ms_field(&applied, "took_ms")),
        ms(change_latency),
    ))
}

// --- setup --------------------------------------------------------------------------------------

async fn start_cp(db: &TestDb, pki: &Pki) -> Result<ControlPlane> {
    let mut args = pki.cp_args();
    args.extend(["--database-max-connections", "16"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ControlPlane::start_with(db, &args, &[("RUST_LOG", "warn,gatehouse_cp=info")]).await
}

/// Loads `m` routes (under `m / 100` services, at least one) and `m` certificates with one SNI
/// each; returns the id of the first certificate.
async fn seed(admin: &Admin, m: usize) -> Result<String> {
    let services = m.div_ceil(100).max(1);
    let mut service_ids = Vec::new();
    for s in 0..services {
        let created = admin
            .post_json(
                "/services",
                &json!({"name": format!("svc{s}"), "url": format!("http://upstream{s}.bench.test:8080")}),
            )
            .await?;
        ensure!(created.status == 201, "{created:?}");
        service_ids.push(created.body["id"].as_str().context("id")?.to_owned());
    }
    let routes = futures_util::stream::iter(0..m)
        .map(|r| {
            let service = service_ids[r % services].clone();
            async move {
                let created = admin
                    .post_json(
                        "/routes",
                        &json!({
                            "name": format!("r{r}"),
                            "hosts": [format!("h{r}.bench.test")],
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
    routes.into_iter().collect::<Result<Vec<()>>>()?;

    let certs = futures_util::stream::iter(0..m)
        .map(|c| async move { create_certificate(admin, &format!("c{c}.bench.test")).await })
        .buffered(LOAD_CONCURRENCY)
        .collect::<Vec<Result<String>>>()
        .await;
    let ids = certs.into_iter().collect::<Result<Vec<String>>>()?;
    ids.into_iter().next().context("no certificate")
}

async fn create_certificate(admin: &Admin, sni: &str) -> Result<String> {
    let pem = certs::self_signed(&[sni], Algorithm::Ecdsa, 30)?;
    let created = admin
        .post_json(
            "/certificates",
            &json!({"cert": pem.cert, "key": pem.key, "snis": [sni]}),
        )
        .await?;
    ensure!(created.status == 201, "{created:?}");
    Ok(created.body["id"].as_str().context("id")?.to_owned())
}

// --- measurements -------------------------------------------------------------------------------

/// The first line of `logs` with `what` and `version=VERSION`.
fn line_with(logs: &str, what: &str, version: i64) -> Option<String> {
    let version = version.to_string();
    logs.lines()
        .find(|l| l.contains(what) && log_field(l, "version").as_deref() == Some(&version))
        .map(str::to_owned)
}

async fn wait_line(logs: impl Fn() -> String, what: &str, version: i64) -> Result<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(line) = line_with(&logs(), what, version) {
            return Ok(line);
        }
        if Instant::now() > deadline {
            bail!("no {what:?} line for version {version}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `*_ms` field of a log line, in milliseconds (NaN when absent).
fn ms_field(line: &str, key: &str) -> f64 {
    log_field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// User + system CPU time of a process so far, in seconds (0 if it is gone).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / TICKS_PER_SEC
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() != "node_id" && entry.file_type()?.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// The `q` quantile (nearest rank) of `samples`.
fn pct(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median_f(samples: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    sorted[(sorted.len() - 1) / 2]
}

fn ms(d: Duration) -> String {
    fmt_ms(d.as_secs_f64() * 1000.0)
}

fn fmt_ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "n/a".into()
    }
}

fn ms_list(samples: &[Duration]) -> Vec<String> {
    samples.iter().map(|d| ms(*d)).collect()
}

fn list_env(key: &str, default: &[usize]) -> Result<Vec<usize>> {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<usize>()
                    .with_context(|| format!("{key}: {s:?} is not a number"))
            })
            .collect(),
        _ => Ok(default.to_vec()),
    }
}
