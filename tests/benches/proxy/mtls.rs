//! The `mtls` part (issue 6): client certificates checked by the proxy.
//!
//! The DP of the TLS parts requires them on `mtls.bench.test` through the route's `mtls-auth`
//! (the client CA, `revocation_check_mode: SKIP`) and `acl` (the consumer named by the
//! certificate's CN must be in the allowed group); nginx through `ssl_verify_client on;
//! ssl_client_certificate client-ca.pem;` ([`crate::tls_bed`]). The plain-TLS side of the
//! comparison is `up-plain.bench.test` on the same processes: the same certificate, upstream
//! and resumption settings, no client certificate asked for.
//!
//! 1. **Full handshakes**: the benchmark's rustls client (always, whatever
//!    `GATEHOUSE_BENCH_HANDSHAKE_CLIENT` says: h2load cannot present a client certificate)
//!    makes new connections at a fixed rate, each a full TLS 1.3 handshake (no resumption;
//!    the DP also has `--ssl-session-tickets off --ssl-session-cache off`) presenting the
//!    client certificate on the mTLS host, then one request that must be answered 200. The
//!    rate search and runs are those of the handshake part, for four targets: DP TLS, DP
//!    mTLS, nginx TLS, nginx mTLS. Goals (benchmarking.md §4.5): DP mTLS ≥ 0.45 × DP plain
//!    TLS, and ≥ nginx's mTLS rate.
//! 2. **Keep-alive**: the same rustls client in its keep-alive mode (wrk cannot present a
//!    client certificate), C connections, closed loop, `GET /` answered 200: req/s, p50/p99
//!    and CPU per request for the same four targets, interleaved in rounds.
//!
//! The DP's `/metrics` are read around each section: every handshake must be full, and
//! mtls-auth must refuse nothing.

use anyhow::{Context, Result};

use crate::processes::{LOAD_CPU, Usage, Window};
use crate::tls_bed::{DpCounters, MTLS_HOST, PLAIN_HOST, TlsBed};
use crate::tools::{HandshakeClient, Tools, WrkRun};
use crate::{
    Bed, HANDSHAKE_LATENCY_LIMIT, SATURATED, STEP_SLACK, Settings, Target, cpu0_per_event_us,
    handshake_runs, median, per_event_us, percent_spread, print_handshake_rows, rotated, spread,
};

/// The least DP mTLS ÷ DP plain-TLS full-handshake rate (benchmarking.md §4.5).
const MTLS_SHARE_GOAL: f64 = 0.45;

/// Runs both sections and prints their tables.
pub(crate) async fn run(settings: &Settings, tools: &Tools, bed: &Bed, tls: &TlsBed) -> Result<()> {
    let client = &bed.tls_files.client;
    let dp_addr = tls.dp.proxy_ssl_addr()?;
    let nginx_addr = bed.nginx_addr()?;
    let targets = [
        Target::new("Gatehouse DP, TLS", dp_addr, tls.dp.pid()).with_host(PLAIN_HOST),
        Target::new("Gatehouse DP, mTLS", dp_addr, tls.dp.pid())
            .with_host(MTLS_HOST)
            .with_identity(client),
        Target::new("nginx, TLS", nginx_addr, bed.proxy_nginx.pid()).with_host(PLAIN_HOST),
        Target::new("nginx, mTLS", nginx_addr, bed.proxy_nginx.pid())
            .with_host(MTLS_HOST)
            .with_identity(client),
    ];
    let targets: Vec<&Target> = targets.iter().collect();
    let rustls = Tools {
        handshake_client: HandshakeClient::Rustls,
        ..tools.clone()
    };
    handshakes(settings, &rustls, tls, &targets).await?;
    keepalive(settings, tools, tls, &targets).await?;
    Ok(())
}

async fn handshakes(
    settings: &Settings,
    tools: &Tools,
    tls: &TlsBed,
    targets: &[&Target],
) -> Result<()> {
    let before = tls.dp_counters().await?;
    let (found, runs) = handshake_runs(settings, tools, targets).await?;
    let seen = tls.dp_counters().await?.since(&before);

    println!(
        "\n### Full mTLS handshakes vs full TLS handshakes (TLS 1.3, X25519, AES-128-GCM, ECDSA \
         P-256 server and client certificates, no resumption), one request per connection: the \
         benchmark's rustls client at a fixed connection rate, {} s × {}\n",
        settings.duration, settings.runs
    );
    print_handshake_rows(settings, targets, &found, &runs);
    let rate = |i: usize| found[i].0 as f64;
    let cpu = |i: usize| {
        median(
            &runs[i]
                .iter()
                .map(|(h, u)| per_event_us(u, h.succeeded))
                .collect::<Vec<_>>(),
        )
    };
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let dp_share = rate(1) / rate(0);
    let vs_nginx = rate(1) / rate(3);
    println!(
        "\nDP mTLS ÷ DP TLS: max rate {dp_share:.2}× (goal ≥ {MTLS_SHARE_GOAL}: {}), CPU-µs per \
         handshake {:.2}× (+{:.1} µs). nginx mTLS ÷ nginx TLS: max rate {:.2}×, CPU-µs per \
         handshake {:.2}×. DP mTLS ÷ nginx mTLS: max rate {vs_nginx:.2}× (goal ≥ 1: {}), CPU-µs \
         per handshake {:.2}×.",
        verdict(dp_share >= MTLS_SHARE_GOAL),
        cpu(1) / cpu(0),
        cpu(1) - cpu(0),
        rate(3) / rate(2),
        cpu(3) / cpu(2),
        verdict(vs_nginx >= 1.0),
        cpu(1) / cpu(3),
    );
    println!(
        "\nRate search ({} s steps) and runs as in the handshake part: sustained = every \
         connection answered 200, none failed, done within {:.0}% of the planned time, connect \
         + handshake p99 ≤ {} ms. {}",
        settings.step,
        (STEP_SLACK - 1.0) * 100.0,
        HANDSHAKE_LATENCY_LIMIT.as_millis(),
        counted(&seen)
    );
    Ok(())
}

async fn keepalive(
    settings: &Settings,
    tools: &Tools,
    tls: &TlsBed,
    targets: &[&Target],
) -> Result<()> {
    for target in targets {
        if settings.warmup > 0 {
            tools
                .keepalive_client(
                    target.addr,
                    &target.host,
                    target.identity.as_ref(),
                    settings.connections,
                    settings.warmup,
                )
                .await
                .with_context(|| format!("warming up {}", target.name))?;
        }
    }
    let before = tls.dp_counters().await?;
    let mut runs: Vec<Vec<(WrkRun, Usage)>> = vec![Vec::new(); targets.len()];
    for round in 0..settings.runs {
        for i in rotated(targets.len(), round) {
            let target = targets[i];
            let window = Window::open(target.pid);
            let run = tools
                .keepalive_client(
                    target.addr,
                    &target.host,
                    target.identity.as_ref(),
                    settings.connections,
                    settings.duration,
                )
                .await
                .with_context(|| format!("keep-alive client against {}", target.name))?;
            let usage = window.close();
            eprintln!(
                "mtls keepalive {}: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs, {:.1} CPU-µs/req, \
                 CPU0 {:.0}%, CPU1 {:.0}%, {} errors",
                target.name,
                run.rps,
                run.p50_us,
                run.p99_us,
                per_event_us(&usage, run.requests),
                usage.busy[0] * 100.0,
                usage.busy[1] * 100.0,
                run.errors
            );
            runs[i].push((run, usage));
        }
    }
    let seen = tls.dp_counters().await?.since(&before);

    println!(
        "\n### Keep-alive on mTLS connections: the benchmark's rustls client, {} connections, \
         closed loop (the next request when the answer is complete), {} s × {}\n",
        settings.connections, settings.duration, settings.runs
    );
    println!(
        "| proxy | req/s | p50 (µs) | p99 (µs) | **proxy CPU-µs/req** | CPU 0-µs/req | proxy \
         CPU share | CPU0 busy | CPU1 busy | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, target) in targets.iter().enumerate() {
        let metric = |f: &dyn Fn(&WrkRun, &Usage) -> f64| -> Vec<f64> {
            runs[i].iter().map(|(w, u)| f(w, u)).collect()
        };
        let cpu1 = median(&metric(&|_, u| u.busy[1]));
        println!(
            "| {} | {}{} | {} | {} | **{}** | {} | {} | {} | {} | {} |",
            target.name,
            if cpu1 > SATURATED { "≥ " } else { "" },
            spread(&metric(&|w, _| w.rps), 0),
            spread(&metric(&|w, _| w.p50_us), 0),
            spread(&metric(&|w, _| w.p99_us), 0),
            spread(&metric(&|w, u| per_event_us(u, w.requests)), 2),
            spread(&metric(&|w, u| cpu0_per_event_us(u, w.requests)), 2),
            percent_spread(&metric(&|_, u| u.process_share())),
            percent_spread(&metric(&|_, u| u.busy[0])),
            percent_spread(&metric(&|_, u| u.busy[1])),
            runs[i].iter().map(|(w, _)| w.errors).sum::<u64>(),
        );
    }
    let rps = |i: usize| median(&runs[i].iter().map(|(w, _)| w.rps).collect::<Vec<_>>());
    let cpu = |i: usize| {
        median(
            &runs[i]
                .iter()
                .map(|(w, u)| per_event_us(u, w.requests))
                .collect::<Vec<_>>(),
        )
    };
    println!(
        "\nmTLS ÷ TLS: DP req/s {:.2}×, CPU-µs/req {:+.2} µs; nginx req/s {:.2}×, CPU-µs/req \
         {:+.2} µs. DP ÷ nginx on mTLS: req/s {:.2}×, CPU-µs/req {:.2}×.",
        rps(1) / rps(0),
        cpu(1) - cpu(0),
        rps(3) / rps(2),
        cpu(3) - cpu(2),
        rps(1) / rps(3),
        cpu(1) / cpu(3),
    );
    println!(
        "\nThe client (one thread, CPU {LOAD_CPU}) makes one full handshake per connection, \
         then sends each request when the last answer is complete; p50/p99 are closed-loop \
         (queueing at saturation). Errors: answers other than 200 and failed connections (made \
         again). {}",
        counted(&seen)
    );
    Ok(())
}

/// What the DP's `/metrics` counted over a section.
fn counted(seen: &DpCounters) -> String {
    format!(
        "The DP counted {} full and {} resumed handshakes, {} mtls-auth refusals, {} 2xx and {} \
         other responses.",
        seen.full_handshakes,
        seen.resumed_handshakes,
        seen.mtls_failures,
        seen.responses_2xx,
        seen.responses_other
    )
}
