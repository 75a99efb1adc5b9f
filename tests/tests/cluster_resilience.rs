//! Data planes without their control plane: they keep serving, restart from their cache,
//! reconnect and converge. Real processes killed and restarted.

mod cluster_support;

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use tokio::time::Instant;

use cluster_support::*;
use gatehouse_tests::{config_version, patience, wait_for_cp_snapshot};

#[tokio::test]
async fn data_planes_keep_their_runtime_while_the_control_plane_is_down_and_converge_after()
-> Result<()> {
    let mut cluster = Cluster::start(&["dp1", "dp2"], &[]).await?;
    let dp1 = cluster.dp("dp1").await?;
    let dp2 = cluster.dp("dp2").await?;
    create_certificate(cluster.admin(), "outage.example.test").await?;
    let version = config_version(cluster.admin()).await?;
    let before = converge(&[&dp1, &dp2], version).await?;
    let hash_before = hash(&before[0])?;

    cluster.kill_cp(&[&dp1, &dp2]).await?;
    for dp in [&dp1, &dp2] {
        let status = dp.status().await?;
        assert_eq!(status["config_version"], json!(version), "{status}");
        assert_eq!(status["config_hash"], json!(hash_before), "{status}");
        assert_eq!(
            status["control_plane"]["connected"],
            json!(false),
            "{status}"
        );
        assert_eq!(dp.ready().await?, 200, "still serving its last config");
    }

    // Writes while the cluster's CP is down, through a CP without a cluster listener.
    let writer = start_plain_cp(&cluster.db, &[]).await?;
    create_certificate(writer.admin(), "while-down.example.test").await?;
    write(writer.admin()).await?;
    let newest = write(writer.admin()).await?;
    writer.stop().await?;
    for dp in [&dp1, &dp2] {
        assert_eq!(dp.status().await?["config_version"], json!(version));
    }

    cluster.restart_cp().await?;
    let after = converge(&[&dp1, &dp2], newest).await?;
    let cp = wait_for_cp_snapshot(cluster.admin(), newest, patience()).await?;
    for status in &after {
        assert_eq!(status["config_version"], json!(newest), "{status}");
        assert_eq!(status["config_hash"], cp["config_hash"], "{status}");
        assert_eq!(
            status["control_plane"]["connected"],
            json!(true),
            "{status}"
        );
    }
    assert_eq!(dp1.ready().await?, 200);
    Ok(())
}

#[tokio::test]
async fn a_data_plane_restarted_while_the_control_plane_is_down_serves_from_its_cache() -> Result<()>
{
    let mut cluster = Cluster::start(&["dp1"], &[]).await?;
    let mut dp = cluster.dp("dp1").await?;
    create_certificate(cluster.admin(), "cached.example.test").await?;
    let version = config_version(cluster.admin()).await?;
    let synced = dp.wait_for_version(version, patience()).await?;
    let hash_synced = hash(&synced)?;
    assert_eq!(synced["config_source"], json!("control_plane"), "{synced}");
    let id = dp.node_id()?;

    cluster.kill_cp(&[&dp]).await?;
    dp.restart().await?;
    let line = dp
        .wait_for_log("loaded cached snapshot", patience())
        .await?;
    println!("data plane: {line}");
    assert!(line.contains(&format!("version={version}")), "{line}");
    assert!(line.contains(&hash_synced), "{line}");
    let status = dp.wait_until_ready(patience()).await?;
    assert_eq!(status["config_source"], json!("cache"), "{status}");
    assert_eq!(status["config_version"], json!(version), "{status}");
    assert_eq!(status["config_hash"], json!(hash_synced), "{status}");
    assert_eq!(status["node_id"], json!(id), "{status}");
    assert_eq!(
        status["control_plane"]["connected"],
        json!(false),
        "{status}"
    );

    // Back online, it follows the CP again.
    cluster.restart_cp().await?;
    dp.wait_until_connected(patience()).await?;
    let newer = write(cluster.admin()).await?;
    let status = dp.wait_for_version(newer, patience()).await?;
    assert_eq!(status["config_source"], json!("control_plane"), "{status}");
    Ok(())
}

#[tokio::test]
async fn a_corrupt_cache_is_reported_and_ignored() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let mut dp = cluster.dp("dp1").await?;
    let version = write(cluster.admin()).await?;
    dp.wait_for_version(version, patience()).await?;
    dp.stop().await?;

    // Garble every cached file except the node id.
    let mut garbled = 0;
    for entry in std::fs::read_dir(dp.cache_dir())? {
        let path = entry?.path();
        if path.is_file() && path.file_name().is_some_and(|n| n != "node_id") {
            std::fs::write(&path, b"\x00 not a snapshot \xff")?;
            garbled += 1;
        }
    }
    assert!(
        garbled > 0,
        "the DP wrote no cache file in {}",
        dp.cache_dir().display()
    );

    dp.start_again().await?;
    let status = dp.wait_for_version(version, patience()).await?;
    assert_eq!(status["config_source"], json!("control_plane"), "{status}");
    assert!(dp.is_running());
    let logs = dp.logs();
    assert!(!logs.contains("loaded cached snapshot"), "{logs}");
    assert!(
        logs.lines()
            .any(|l| (l.contains("WARN") || l.contains("ERROR")) && l.contains("cache")),
        "the corrupt cache is reported: {logs}"
    );
    Ok(())
}

#[tokio::test]
async fn a_frozen_control_plane_is_detected_by_keepalive_and_rejoined_after() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let dp = cluster.dp("dp1").await?;
    let version = write(cluster.admin()).await?;
    dp.wait_for_version(version, patience()).await?;
    dp.wait_until_connected(patience()).await?;

    // A stopped process keeps its sockets open but answers nothing: only HTTP/2 keepalive
    // (or a TCP timeout, far later) can tell the connection is dead.
    let pid = cluster.cp.pid().to_string();
    signal("-STOP", &pid).await?;
    let frozen = Instant::now();
    let detected = dp.wait_until_disconnected(patience() * 2).await;
    let took = frozen.elapsed();
    signal("-CONT", &pid).await?;
    let status = detected?;
    println!("frozen control plane detected after {took:?}: {status}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(status["config_version"], json!(version), "{status}");
    assert_eq!(dp.ready().await?, 200);

    dp.wait_until_connected(patience()).await?;
    let newer = write(cluster.admin()).await?;
    dp.wait_for_version(newer, patience()).await?;
    Ok(())
}

async fn signal(which: &str, pid: &str) -> Result<()> {
    let status = tokio::process::Command::new("kill")
        .args([which, pid])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill {which} {pid}: {status}");
    Ok(())
}
