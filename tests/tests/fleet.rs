//! Faults on a simulated multi-host fleet (issue 10 §2, items 1–6).
//!
//! Every node runs in its own Linux network namespace with its own address on one bridge (see
//! `gatehouse_tests::Network`): PostgreSQL, two control-plane replicas, three data planes, the
//! load generator and the upstream. The data planes are given both replicas: dp2 and dp3 as
//! a list (`--cluster-control-plane cp1:8005,cp2:8005`), dp1 as one name with both addresses
//! (its own hosts file), all with `--cluster-server-name localhost`.
//! The test process starts in the namespace it was run from, creates the network, and runs
//! itself again inside the load generator's namespace (`fleet_inner`), from where it starts
//! every other process with `ip netns exec` and drives the scenarios, while an open-loop load
//! (a fixed rate per data plane, every response counted) goes through every data plane:
//!
//! 1. `kill -9` of the replica dp1 uses: 0 failed requests, its data planes on the other
//!    replica within 2 s, a write through the survivor reaches all data planes;
//! 2. one data plane cut off from both replicas (blackhole routes both ways) for
//!    `GATEHOUSE_FLEET_CUT_SECS` (12 s here, 30 s in `tests/soak/fleet.sh`): it keeps serving,
//!    the replicas show it disconnected, and it runs the newest version within 2 s of the
//!    link's return;
//! 4. a data plane restarted while no replica is reachable serves from its cache within 1 s;
//!    a truncated cache is refused with a clear log line; an unusable cache directory does not
//!    stop a data plane from serving;
//! 3. PostgreSQL stopped (`GATEHOUSE_FLEET_PG_DOWN_SECS`, 5 s here): the Admin API answers
//!    503 with a Kong-shaped body within 1 s, data planes unaffected, the replicas recover by
//!    themselves, every write answered 201 is there and none answered 503 is;
//! 6. the cluster certificate files of a replica and of a data plane replaced on disk: 0
//!    failed requests and no reconnection at all;
//! 5. 200 ms delay and 5% loss (`tc netem`) on the replicas' links: changes still converge
//!    (skipped with a message where the kernel has no netem).
//!
//! Measured figures are printed as `FLEET ...` lines (RELIABILITY.md quotes them). The time
//! bounds above are the issue's; the test asserts them times `GATEHOUSE_FLEET_SLACK` (default
//! 2: this runs on shared 2-core machines, debug builds, where a process start alone can take
//! half a second) and prints every measured figure. The suite is skipped, with a message, only
//! when not root or without `ip netns`.

mod fleet_support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tokio::process::Command;
use tokio::time::Instant;

use fleet_support::{Fleet, Load, env_secs, is_addr};
use gatehouse_tests::{Network, patience, wait_until};

/// The nodes of the fleet, in address order (198.18.0.10 upwards).
const NODES: [&str; 9] = ["pg", "cp1", "cp2", "dp1", "dp2", "dp3", "lg", "up", "wan"];
/// Carries the network description to the run inside the namespaces.
const ENV_NETWORK: &str = "GATEHOUSE_FLEET_NETWORK";
/// The whole inner run may take this long.
const INNER_TIMEOUT: Duration = Duration::from_secs(600);
/// A time bound of the issue, times `GATEHOUSE_FLEET_SLACK` (default 2).
fn bound(base: Duration) -> Duration {
    let slack: f64 = std::env::var("GATEHOUSE_FLEET_SLACK")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s: &f64| *s >= 1.0)
        .unwrap_or(2.0);
    base.mul_f64(slack)
}

/// Requests per second through each data plane (`GATEHOUSE_FLEET_RATE` overrides).
const RATE: u32 = 40;

#[tokio::test]
async fn fleet_faults_on_a_simulated_multi_host_network() -> Result<()> {
    if let Err(reason) = Network::available() {
        println!("SKIPPED fleet fault suite: {reason}");
        return Ok(());
    }
    let network = Network::create(&NODES).await?;
    let exe = std::env::current_exe().context("the test executable")?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", network.ns("lg")?])
        .arg(exe)
        .args(["fleet_inner", "--exact", "--include-ignored", "--nocapture"])
        .env(ENV_NETWORK, network.describe())
        .kill_on_drop(true);
    let status = tokio::time::timeout(INNER_TIMEOUT, cmd.status())
        .await
        .context("the fleet run timed out")??;
    ensure!(
        status.success(),
        "the fleet run inside the namespaces failed ({status}); its output is above"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "runs inside the fleet's namespaces; started by fleet_faults_on_a_simulated_multi_host_network"]
async fn fleet_inner() -> Result<()> {
    let Ok(description) = std::env::var(ENV_NETWORK) else {
        bail!(
            "fleet_inner runs inside the namespaces made by fleet_faults_on_a_simulated_multi_host_network"
        );
    };
    let network = Network::attach(&description)?;
    let mut fleet = Fleet::start(network).await?;
    fleet.baseline().await?;
    let rate = std::env::var("GATEHOUSE_FLEET_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(RATE);
    println!("FLEET load: open loop, {rate} requests/s through each of 3 data planes");
    let load = Arc::new(Load::start(fleet.load_targets()?, rate));

    kill_a_control_plane(&mut fleet, &load).await?;
    cut_a_data_plane_off(&mut fleet, &load).await?;
    restart_without_control_planes(&mut fleet, &load).await?;
    database_away(&mut fleet, &load).await?;
    replace_cluster_certificates(&mut fleet, &load).await?;
    delay_and_loss(&mut fleet, &load).await?;

    let report = Arc::try_unwrap(load)
        .map_err(|_| anyhow::anyhow!("load still shared"))?
        .stop()
        .await;
    println!("FLEET load: {report}");
    ensure!(report.sent > 0, "no load was sent");
    ensure!(
        report.failed == 0,
        "{} of {} proxied requests failed: {:?}",
        report.failed,
        report.sent,
        report.failures
    );
    ensure!(
        report.sent == report.ok + report.failed,
        "responses not all counted: {report}"
    );
    fleet.check_logs()?;
    Ok(())
}

/// 1. `kill -9` of the replica dp1 uses.
async fn kill_a_control_plane(fleet: &mut Fleet, load: &Load) -> Result<()> {
    let before = load.totals();
    let on = fleet.connected_to_each().await?;
    // The replica dp1 (which knows both by one name) is on: the name's other address must
    // take over; list-configured data planes on it move too.
    let (victim, survivor) = match on.get("dp1").map(String::as_str) {
        Some("cp1") => ("cp1", "cp2"),
        _ => ("cp2", "cp1"),
    };
    let moved: Vec<String> = on
        .iter()
        .filter(|(_, cp)| **cp == victim)
        .map(|(dp, _)| dp.clone())
        .collect();
    println!("FLEET 1: data planes per replica before: {on:?}; killing {victim}");
    ensure!(!moved.is_empty(), "no data plane on {victim}");

    let killed = Instant::now();
    fleet.kill_cp(victim).await?;
    let survivor_addr = fleet.cluster_addr(survivor)?;
    let mut failover = Vec::new();
    for dp in &moved {
        let status = fleet
            .dp(dp)?
            .wait_for_status("on the surviving replica", patience(), |s| {
                s["control_plane"]["connected_to"]
                    .as_str()
                    .is_some_and(|to| is_addr(to, &survivor_addr))
            })
            .await?;
        failover.push((
            dp.clone(),
            killed.elapsed(),
            status["config_version"].clone(),
        ));
    }
    // The data planes are polled one after the other: each figure bounds that one's failover.
    for (dp, took, _) in &failover {
        println!(
            "FLEET 1: {dp} on {survivor} {} ms after kill -9 of {victim}",
            took.as_millis()
        );
        ensure!(
            *took <= bound(Duration::from_secs(2)),
            "{dp} took {took:?} to reach {survivor}"
        );
    }
    let version = fleet.write_marker(survivor).await?;
    let took = fleet.converge(version).await?;
    println!(
        "FLEET 1: a write through {survivor} reached all data planes in {} ms",
        took.as_millis()
    );
    let window = load.totals().since(&before);
    println!("FLEET 1: load during the scenario: {window}");
    ensure!(window.failed == 0, "failed requests: {window}");

    fleet.restart_cp(victim).await?;
    Ok(())
}

/// 2. One data plane cut off from both replicas.
async fn cut_a_data_plane_off(fleet: &mut Fleet, load: &Load) -> Result<()> {
    let cut_for = env_secs("GATEHOUSE_FLEET_CUT_SECS", 12);
    let before = load.totals();
    let dp_id = fleet.dp("dp3")?.node_id()?;
    let cut = fleet.network.cut("dp3", &["cp1", "cp2"]).await?;
    let cut_at = Instant::now();
    println!(
        "FLEET 2: dp3 cut off from cp1 and cp2 for {} s",
        cut_for.as_secs()
    );
    // A change while it is away.
    let version = fleet.write_marker("cp1").await?;
    // Both replicas show it disconnected (HTTP/2 keepalive: 2 s pings, 3 s timeout).
    for cp in ["cp1", "cp2"] {
        wait_until(&format!("{cp} shows dp3 disconnected"), cut_for, || async {
            let dp = gatehouse_tests::data_plane(fleet.admin(cp)?, &dp_id).await?;
            Ok(dp.filter(|dp| dp["connected"] == Value::Bool(false)))
        })
        .await?;
    }
    println!(
        "FLEET 2: both replicas show dp3 disconnected {} ms after the cut",
        cut_at.elapsed().as_millis()
    );
    let status = fleet.dp("dp3")?.status().await?;
    ensure!(
        status["config_version"].as_i64() < Some(version),
        "dp3 cannot have the new version: {status}"
    );
    // Keep it cut for the rest of the period, under load.
    let rest = cut_for.saturating_sub(cut_at.elapsed());
    load.run_for(rest).await;
    cut.heal().await?;
    let healed = Instant::now();
    fleet
        .dp("dp3")?
        .wait_for_version(version, patience())
        .await?;
    let took = healed.elapsed();
    println!(
        "FLEET 2: dp3 in sync {} ms after the link returned (cut {} ms)",
        took.as_millis(),
        cut_at.elapsed().as_millis() - took.as_millis()
    );
    ensure!(
        took <= bound(Duration::from_secs(2)),
        "dp3 took {took:?} to sync"
    );
    let window = load.totals().since(&before);
    println!("FLEET 2: load during the scenario: {window}");
    ensure!(window.failed == 0, "failed requests: {window}");
    Ok(())
}

/// 4. Restart without a reachable control plane; a truncated cache; an unusable cache dir.
async fn restart_without_control_planes(fleet: &mut Fleet, load: &Load) -> Result<()> {
    let before = load.totals();
    let version = fleet.current_version().await?;
    fleet
        .dp("dp2")?
        .wait_for_version(version, patience())
        .await?;
    let cut = fleet.network.cut("dp2", &["cp1", "cp2"]).await?;
    load.pause("dp2", true).await?;
    fleet.dp_mut("dp2")?.kill().await?;
    let started = Instant::now();
    fleet.dp_mut("dp2")?.start_again().await?;
    let took = fleet.first_proxied_ok("dp2", started).await?;
    println!(
        "FLEET 4: dp2 restarted with no replica reachable, serving from its cache {} ms after \
         its start",
        took.as_millis()
    );
    ensure!(
        took <= bound(Duration::from_secs(1)),
        "dp2 took {took:?} to serve"
    );
    let status = fleet.dp("dp2")?.status().await?;
    ensure!(
        status["config_source"] == "cache" && status["config_version"].as_i64() == Some(version),
        "{status}"
    );
    load.pause("dp2", false).await?;
    load.run_for(Duration::from_secs(1)).await;

    // A truncated cache file: refused whole, with a clear line; nothing served from it.
    load.pause("dp2", true).await?;
    fleet.dp_mut("dp2")?.stop().await?;
    let path = fleet.dp("dp2")?.cache_dir().join("snapshot.bin");
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    fleet.dp_mut("dp2")?.start_again().await?;
    let line = fleet
        .dp("dp2")?
        .wait_for_log("cached snapshot refused", patience())
        .await?;
    println!("FLEET 4: truncated cache: {}", line.trim());
    ensure!(line.contains("truncated or corrupted"), "{line}");
    ensure!(
        fleet.dp("dp2")?.ready().await? == 503,
        "nothing half loaded"
    );
    cut.heal().await?;
    fleet
        .dp("dp2")?
        .wait_for_version(version, patience())
        .await?;
    fleet.first_proxied_ok("dp2", Instant::now()).await?;
    load.pause("dp2", false).await?;

    // An unusable cache directory (its parent is a file: root ignores permission bits).
    let blocker = fleet.dp("dp2")?.cache_dir().join("not-a-dir");
    std::fs::write(&blocker, b"x")?;
    let spare = fleet
        .start_extra_dp("dp2", Some(&blocker.join("cache")), None)
        .await?;
    let line = spare
        .wait_for_log("CACHE DIRECTORY UNUSABLE", patience())
        .await?;
    println!("FLEET 4: unusable cache directory: {}", line.trim());
    spare.wait_for_version(version, patience()).await?;
    let (code, body) = fleet.proxied_via(&spare).await?;
    ensure!(code == 200 && body == "ok", "{code} {body}");
    drop(spare);
    let window = load.totals().since(&before);
    println!("FLEET 4: load during the scenario (dp2 paused while down): {window}");
    ensure!(window.failed == 0, "failed requests: {window}");
    Ok(())
}

/// 3. PostgreSQL stopped.
async fn database_away(fleet: &mut Fleet, load: &Load) -> Result<()> {
    let down_for = env_secs("GATEHOUSE_FLEET_PG_DOWN_SECS", 5);
    let before = load.totals();
    let pids = fleet.cp_pids();
    let mut accepted = Vec::new();
    accepted.push(fleet.create_service("cp1", "before-outage").await?);
    fleet.pg.stop().await?;
    let stopped = Instant::now();
    println!("FLEET 3: PostgreSQL stopped for {} s", down_for.as_secs());
    let mut slowest = Duration::ZERO;
    let mut refused = Vec::new();
    for (n, cp) in ["cp1", "cp2", "cp1", "cp2"].iter().enumerate() {
        for (method, path) in [("GET", "/services"), ("POST", "/services")] {
            let name = format!("during-outage-{n}");
            let (code, body, took) = fleet.timed_admin(cp, method, path, &name).await?;
            slowest = slowest.max(took);
            ensure!(code == 503, "{method} {path} on {cp}: {code} {body}");
            ensure!(
                body.get("message").and_then(Value::as_str).is_some(),
                "Kong-shaped body: {body}"
            );
            ensure!(
                took <= bound(Duration::from_secs(1)),
                "{method} {path} on {cp} took {took:?}"
            );
            if method == "POST" {
                refused.push(name);
            }
        }
    }
    println!(
        "FLEET 3: Admin API with the database away: 16 requests, all 503 {{\"message\"}}, \
         slowest {} ms",
        slowest.as_millis()
    );
    load.run_for(down_for.saturating_sub(stopped.elapsed()))
        .await;
    fleet.pg.start_again().await?;
    let back = Instant::now();
    for cp in ["cp1", "cp2"] {
        wait_until(&format!("{cp} answers again"), patience(), || async {
            let res = fleet.admin(cp)?.get("/services").await?;
            Ok((res.status == 200).then_some(()))
        })
        .await?;
    }
    println!(
        "FLEET 3: both replicas answer again {} ms after PostgreSQL returned",
        back.elapsed().as_millis()
    );
    ensure!(fleet.cp_pids() == pids, "a replica was restarted");
    accepted.push(fleet.create_service("cp2", "after-outage").await?);
    let version = fleet.current_version().await?;
    let took = fleet.converge(version).await?;
    println!(
        "FLEET 3: a write after the outage reached all data planes in {} ms",
        took.as_millis()
    );
    for name in &accepted {
        let res = fleet
            .admin("cp1")?
            .get(&format!("/services/{name}"))
            .await?;
        ensure!(res.status == 200, "write {name} lost: {res:?}");
    }
    for name in &refused {
        let res = fleet
            .admin("cp2")?
            .get(&format!("/services/{name}"))
            .await?;
        ensure!(
            res.status == 404,
            "write {name} answered 503 exists: {res:?}"
        );
    }
    let window = load.totals().since(&before);
    println!("FLEET 3: load during the scenario: {window}");
    ensure!(window.failed == 0, "failed requests: {window}");
    Ok(())
}

/// 6. Cluster certificate files of a replica and a data plane replaced on disk.
async fn replace_cluster_certificates(fleet: &mut Fleet, load: &Load) -> Result<()> {
    let before = load.totals();
    let connections = fleet.stream_opens();
    fleet.rotate_cp_cert("cp1")?;
    fleet.pki.issue_dp("dp1")?;
    fleet
        .cp("cp1")?
        .wait_for_log("cluster certificate reloaded", patience())
        .await?;
    fleet
        .dp("dp1")?
        .wait_for_log("cluster certificate reloaded", patience())
        .await?;
    // Keep the load on for a while after both reloads: nothing reconnects.
    load.run_for(Duration::from_secs(3)).await;
    let after = fleet.stream_opens();
    println!(
        "FLEET 6: sync streams opened at the replicas: {connections} before, {after} after \
         replacing the certificate files of cp1 and dp1"
    );
    ensure!(
        after == connections,
        "reconnections: {connections} -> {after}"
    );
    // The next connection uses the new files: a write still converges everywhere.
    let version = fleet.write_marker("cp1").await?;
    fleet.converge(version).await?;
    let window = load.totals().since(&before);
    println!("FLEET 6: load during the scenario: {window}");
    ensure!(window.failed == 0, "failed requests: {window}");
    Ok(())
}

/// 5. Delay and loss on the replicas' links.
async fn delay_and_loss(fleet: &mut Fleet, load: &Load) -> Result<()> {
    let before = load.totals();
    for cp in ["cp1", "cp2"] {
        if !fleet.network.netem(cp, 200, 5).await? {
            println!(
                "FLEET 5: this kernel has no sch_netem (`tc qdisc add ... netem`: qdisc kind is \
                 unknown); emulating the links in user space instead"
            );
            return delay_and_loss_emulated(fleet, load).await;
        }
    }
    let mut took = Vec::new();
    for n in 0..5 {
        let cp = if n % 2 == 0 { "cp1" } else { "cp2" };
        let version = fleet.write_marker(cp).await?;
        took.push(fleet.converge(version).await?.as_millis());
    }
    for cp in ["cp1", "cp2"] {
        fleet.network.clear_netem(cp).await?;
    }
    took.sort_unstable();
    println!(
        "FLEET 5: with 200 ms delay + 5% loss on the replicas' links, 5 writes converged on all data planes in {took:?} ms"
    );
    let window = load.totals().since(&before);
    println!("FLEET 5: load during the scenario: {window}");
    ensure!(window.failed == 0, "failed requests: {window}");
    Ok(())
}

/// 5, where the kernel has no netem: a data plane whose links to both replicas go through a
/// relay adding 200 ms each way and holding 5% of the chunks one retransmission timeout more.
async fn delay_and_loss_emulated(fleet: &mut Fleet, load: &Load) -> Result<()> {
    let before = load.totals();
    let (relay, list) = fleet.start_relay(200, 5).await?;
    let far = fleet.start_extra_dp("dp1", None, Some(list)).await?;
    let version = fleet.current_version().await?;
    far.wait_for_version(version, patience()).await?;
    let mut took = Vec::new();
    for n in 0..5 {
        let cp = if n % 2 == 0 { "cp1" } else { "cp2" };
        let version = fleet.write_marker(cp).await?;
        let started = Instant::now();
        far.wait_for_version(version, patience()).await?;
        took.push(started.elapsed().as_millis());
        fleet.converge(version).await?;
    }
    drop(far);
    drop(relay);
    took.sort_unstable();
    println!(
        "FLEET 5: through a relay adding 200 ms each way and emulating 5% loss (user space; no \
         netem here), 5 writes reached the far data plane in {took:?} ms"
    );
    let window = load.totals().since(&before);
    println!("FLEET 5: load during the scenario: {window}");
    ensure!(window.failed == 0, "failed requests: {window}");
    Ok(())
}
