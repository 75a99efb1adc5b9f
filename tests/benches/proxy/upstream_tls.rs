//! The `upstream-tls` part (issue 5): what TLS and mTLS towards the upstream cost each proxy,
//! and how well each keeps its upstream connections.
//!
//! HTTPS keep-alive (`wrk -t1 -cC --latency https://HOST/`, the 2-byte body) through the DP of
//! the TLS parts and through nginx, for three hosts that differ only in the upstream leg
//! ([`crate::tls_bed`]): (a) plain HTTP, (b) TLS verified against an uploaded CA, (c) mTLS (the
//! proxy also presents a client certificate). The six rows are interleaved in rounds like the
//! keepalive part. For every run, besides req/s, latency and the proxy's CPU per request:
//!
//! - the upstream nginx's CPU per request (its side of the upstream TLS);
//! - **upstream connection reuse** = 1 − new upstream connections ÷ upstream requests, counted
//!   for both proxies on the upstream nginx (`stub_status` accepts and requests, read before
//!   and after each run) and, for the DP, also from its own `/metrics`
//!   (`gatehouse_upstream_connections_total` ÷ `gatehouse_upstream_requests_total`). Each run
//!   follows [`REWARM_SECS`] of unmeasured load on the same row: a round takes longer than
//!   the DP's pool idle timeout (60 s, no switch), so without it every DP run after the first
//!   would begin by making its connections again, while nginx (`keepalive_timeout 300s`)
//!   would not. The measured reuse is the steady state under load.

use std::path::Path;

use anyhow::{Context, Result};

use crate::processes::{Usage, Window};
use crate::tls_bed::{
    DpCounters, PLAIN_HOST, TLS_HOST, TlsBed, UPSTREAM_MTLS_HOST, UpstreamCounters, reuse,
};
use crate::tools::{Tools, WrkRun};
use crate::{
    Bed, SATURATED, Settings, Target, cpu0_per_event_us, median, per_event_us, percent_spread,
    rotated, spread,
};

/// The upstream legs: label and host.
const LEGS: [(&str, &str); 3] = [
    ("plain HTTP", PLAIN_HOST),
    ("TLS", TLS_HOST),
    ("mTLS", UPSTREAM_MTLS_HOST),
];

/// Seconds of load just before each run, not measured.
const REWARM_SECS: u64 = 2;

/// A proxy and upstream leg, measured `runs` times.
struct Row {
    target: Target,
    leg: &'static str,
    /// Whether the proxy is the DP (it has `/metrics`).
    dp: bool,
    runs: Vec<Run>,
}

/// One run of a row.
struct Run {
    wrk: WrkRun,
    /// The proxy's.
    usage: Usage,
    /// The upstream nginx's.
    upstream: Usage,
    /// What the upstream nginx counted.
    seen: UpstreamCounters,
    /// What the DP counted (DP rows only).
    dp: Option<DpCounters>,
}

/// Runs the part and prints its table.
pub(crate) async fn run(
    settings: &Settings,
    tools: &Tools,
    script: &Path,
    bed: &Bed,
    tls: &TlsBed,
) -> Result<()> {
    let dp_addr = tls.dp.proxy_ssl_addr()?;
    let nginx_addr = bed.nginx_addr()?;
    let mut rows = Vec::new();
    for (leg, host) in LEGS {
        for (dp, name, addr, pid) in [
            (true, "Gatehouse DP", dp_addr, tls.dp.pid()),
            (false, "nginx", nginx_addr, bed.proxy_nginx.pid()),
        ] {
            rows.push(Row {
                target: Target::new(name, addr, pid).with_host(host),
                leg,
                dp,
                runs: Vec::new(),
            });
        }
    }

    for row in &rows {
        if settings.warmup > 0 {
            tools
                .wrk(
                    script,
                    row.target.addr,
                    &row.target.host,
                    "/",
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
            // Fill the pools again: the other rows' runs take longer than the DP's 60 s idle
            // timeout, and reuse is measured with the pools warm (steady state).
            tools
                .wrk(
                    script,
                    row.target.addr,
                    &row.target.host,
                    "/",
                    settings.connections,
                    REWARM_SECS,
                )
                .await
                .with_context(|| format!("warming up {} again", row.label()))?;
            let dp_before = if row.dp {
                Some(tls.dp_counters().await?)
            } else {
                None
            };
            let seen_before = tls.upstream_counters().await?;
            let window = Window::open(row.target.pid);
            let upstream_window = Window::open(bed.upstream.pid());
            let wrk = tools
                .wrk(
                    script,
                    row.target.addr,
                    &row.target.host,
                    "/",
                    settings.connections,
                    settings.duration,
                )
                .await
                .with_context(|| format!("wrk against {}", row.label()))?;
            let usage = window.close();
            let upstream = upstream_window.close();
            let seen = tls.upstream_counters().await?.since(&seen_before);
            let dp = match dp_before {
                Some(before) => Some(tls.dp_counters().await?.since(&before)),
                None => None,
            };
            eprintln!(
                "upstream-tls {}: {:.0} req/s, p99 {:.0} µs, {:.1} CPU-µs/req, upstream \
                 {:.1} CPU-µs/req, {} new upstream connections for {} upstream requests{}, \
                 CPU0 {:.0}%, CPU1 {:.0}%, {} errors",
                row.label(),
                wrk.rps,
                wrk.p99_us,
                per_event_us(&usage, wrk.requests),
                per_event_us(&upstream, wrk.requests),
                seen.accepts,
                seen.requests,
                dp.map(|d| format!(
                    " (DP: {} for {})",
                    d.upstream_connections, d.upstream_requests
                ))
                .unwrap_or_default(),
                usage.busy[0] * 100.0,
                usage.busy[1] * 100.0,
                wrk.errors
            );
            row.runs.push(Run {
                wrk,
                usage,
                upstream,
                seen,
                dp,
            });
        }
    }
    print(settings, &rows);
    Ok(())
}

fn print(settings: &Settings, rows: &[Row]) {
    println!(
        "\n### Upstream TLS and mTLS: wrk -t1 -c{} --latency, HTTPS keep-alive to the proxy, \
         2-byte body, {} s × {}\n",
        settings.connections, settings.duration, settings.runs
    );
    println!(
        "| proxy | upstream leg | req/s | p50 (µs) | p99 (µs) | **proxy CPU-µs/req** | CPU \
         0-µs/req | upstream nginx CPU-µs/req | new upstream connections / upstream requests \
         (upstream nginx) | **upstream reuse** | DP's own count (/metrics) | CPU0 busy | CPU1 \
         busy | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let cpu1 = median(&row.metric(|r| r.usage.busy[1]));
        let accepts: u64 = row.runs.iter().map(|r| r.seen.accepts).sum();
        let requests: u64 = row.runs.iter().map(|r| r.seen.requests).sum();
        let own = if row.dp {
            let connections: u64 = row
                .runs
                .iter()
                .filter_map(|r| r.dp.map(|d| d.upstream_connections))
                .sum();
            let requests: u64 = row
                .runs
                .iter()
                .filter_map(|r| r.dp.map(|d| d.upstream_requests))
                .sum();
            format!(
                "{connections} / {requests}: {}",
                percent(reuse(connections, requests))
            )
        } else {
            "–".to_owned()
        };
        println!(
            "| {} | {} | {}{} | {} | {} | **{}** | {} | {} | {accepts} / {requests} | **{}** | \
             {own} | {} | {} | {} |",
            row.target.name,
            row.leg,
            if cpu1 > SATURATED { "≥ " } else { "" },
            spread(&row.metric(|r| r.wrk.rps), 0),
            spread(&row.metric(|r| r.wrk.p50_us), 0),
            spread(&row.metric(|r| r.wrk.p99_us), 0),
            spread(&row.cpu_per_req(), 2),
            spread(
                &row.metric(|r| cpu0_per_event_us(&r.usage, r.wrk.requests)),
                2
            ),
            spread(
                &row.metric(|r| per_event_us(&r.upstream, r.wrk.requests)),
                2
            ),
            percent(reuse(accepts, requests)),
            percent_spread(&row.metric(|r| r.usage.busy[0])),
            percent_spread(&row.metric(|r| r.usage.busy[1])),
            row.runs.iter().map(|r| r.wrk.errors).sum::<u64>(),
        );
    }

    println!();
    for proxy in ["Gatehouse DP", "nginx"] {
        let find = |leg: &str| rows.iter().find(|r| r.target.name == proxy && r.leg == leg);
        let Some(plain) = find(LEGS[0].0) else {
            continue;
        };
        let base = median(&plain.cpu_per_req());
        let added: Vec<String> = LEGS[1..]
            .iter()
            .filter_map(|(leg, _)| find(leg))
            .map(|row| {
                let cpu = median(&row.cpu_per_req());
                format!(
                    "{} {:+.2} CPU-µs/req ({:+.0}%), req/s {:.2}×",
                    row.leg,
                    cpu - base,
                    (cpu / base - 1.0) * 100.0,
                    median(&row.metric(|r| r.wrk.rps)) / median(&plain.metric(|r| r.wrk.rps)),
                )
            })
            .collect();
        println!("{proxy}, upstream leg vs plain HTTP: {}.", added.join("; "));
    }
    for (leg, _) in LEGS {
        let find = |proxy: &str| rows.iter().find(|r| r.target.name == proxy && r.leg == leg);
        if let (Some(dp), Some(nginx)) = (find("Gatehouse DP"), find("nginx")) {
            println!(
                "{leg} upstream: DP/nginx req/s {:.2}×, CPU-µs/req {:.2}×.",
                median(&dp.metric(|r| r.wrk.rps)) / median(&nginx.metric(|r| r.wrk.rps)),
                median(&dp.cpu_per_req()) / median(&nginx.cpu_per_req()),
            );
        }
    }
    println!(
        "\nUpstream reuse = 1 − new upstream connections ÷ upstream requests over all runs, both \
         counted by the upstream nginx (stub_status accepts and requests before and after each \
         run, its own readings taken out); the warm-up fills the pools, so a run starts with \
         them full. The DP's own count is its /metrics (gatehouse_upstream_connections_total, \
         gatehouse_upstream_requests_total). Upstream nginx CPU-µs/req: the upstream's side of \
         the upstream TLS, on CPU 1. Pools: nginx `keepalive 64`, `keepalive_timeout 300s`; the \
         DP's pooled client per TLS setting (idle timeout 60 s); each run follows \
         {REWARM_SECS} s of unmeasured load on the same row, so it starts with its pool warm."
    );
}

/// A share as a percentage with 3 decimals (reuse ratios are near 100%).
fn percent(share: f64) -> String {
    if share.is_finite() {
        format!("{:.3}%", share * 100.0)
    } else {
        "n/a".to_owned()
    }
}

// === impl Row ===

impl Row {
    fn label(&self) -> String {
        format!("{} to a {} upstream", self.target.name, self.leg)
    }

    fn metric(&self, f: impl Fn(&Run) -> f64) -> Vec<f64> {
        self.runs.iter().map(f).collect()
    }

    fn cpu_per_req(&self) -> Vec<f64> {
        self.metric(|r| per_event_us(&r.usage, r.wrk.requests))
    }
}
