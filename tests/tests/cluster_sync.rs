//! Config sync from the control plane to data planes, end to end: real PostgreSQL, real
//! `gatehouse-cp` and `gatehouse-dp` processes, real mTLS on the cluster link.

mod cluster_support;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tokio::time::Instant;

use cluster_support::*;
use gatehouse_tests::certs::{self, Algorithm};
use gatehouse_tests::{
    DataPlane, DataPlaneOptions, Pki, clustering_status, config_version, data_planes, patience,
    test_db, wait_for_cp_snapshot, wait_for_data_plane, wait_until,
};

#[tokio::test]
async fn a_write_is_acked_by_two_data_planes_with_the_same_version_and_hash() -> Result<()> {
    let cluster = Cluster::start(&["dp1", "dp2"], &[]).await?;
    let admin = cluster.admin();
    let dp1 = DataPlane::start(cluster.dp_options("dp1").label("region", "eu")).await?;
    let dp2 = cluster.dp("dp2").await?;
    for dp in [&dp1, &dp2] {
        dp.wait_until_connected(patience()).await?;
    }

    let before = config_version(admin).await?;
    let started = Instant::now();
    create_certificate(admin, "sync.example.test").await?;
    let version = before + 1;
    let applied = time_until_applied(&[&dp1, &dp2], version, started).await?;
    let ids = [dp1.node_id()?, dp2.node_id()?];
    let acked = wait_until("both DPs acked at the CP", patience(), || async {
        let listed = data_planes(admin).await?;
        let acked = ids.iter().all(|id| {
            listed.iter().any(|dp| {
                dp["id"].as_str() == Some(id.as_str())
                    && dp["config_version"] == json!(version)
                    && dp["sync_status"] == json!("normal")
            })
        });
        Ok(acked.then(|| started.elapsed()))
    })
    .await?;
    println!(
        "write -> both data planes applied version {version}: {applied:?}; \
         -> both acks recorded at the control plane: {acked:?}"
    );

    // Same version and hash everywhere: both DPs, the CP's snapshot, the CP's registry.
    let cp = wait_for_cp_snapshot(admin, version, patience()).await?;
    assert_eq!(cp["config_version"], json!(version), "{cp}");
    let cp_hash = cp["config_hash"]
        .as_str()
        .context("config_hash")?
        .to_owned();
    assert_eq!(cp_hash.len(), 64, "a hex SHA-256: {cp_hash}");
    for (dp, id) in [&dp1, &dp2].into_iter().zip(&ids) {
        let status = dp.status().await?;
        assert_eq!(status["config_version"], json!(version), "{status}");
        assert_eq!(status["config_hash"], json!(cp_hash), "{status}");
        assert_eq!(status["config_source"], json!("control_plane"), "{status}");
        assert_eq!(status["node_id"], json!(id), "{status}");
        assert_eq!(
            status["control_plane"]["connected"],
            json!(true),
            "{status}"
        );
        assert!(
            status["last_sync"].is_number() || status["last_sync"].is_string(),
            "{status}"
        );
        assert_eq!(dp.ready().await?, 200);
        assert!(
            dp.log_lines("snapshot applied")
                .iter()
                .any(|l| l.contains(&format!("version={version}")) && l.contains(&cp_hash)),
            "{}",
            dp.logs()
        );
    }

    let listed = data_planes(admin).await?;
    assert_eq!(listed.len(), 2, "{listed:?}");
    for entry in &listed {
        assert_eq!(entry["config_hash"], json!(cp_hash), "{entry}");
        assert_eq!(entry["config_version"], json!(version), "{entry}");
        assert_eq!(entry["connected"], json!(true), "{entry}");
        assert_eq!(entry["ip"], json!("127.0.0.1"), "{entry}");
        assert_eq!(
            entry["version"],
            json!(env!("CARGO_PKG_VERSION")),
            "{entry}"
        );
        assert!(entry["error"].is_null(), "{entry}");
        assert!(
            entry["last_seen"].as_i64().is_some_and(|t| t > 0),
            "{entry}"
        );
        assert!(
            entry["cert_expiry"].as_i64().is_some_and(|t| t > 0),
            "{entry}"
        );
        assert!(
            entry["hostname"].as_str().is_some_and(|h| !h.is_empty()),
            "{entry}"
        );
    }
    let eu = listed
        .iter()
        .find(|e| e["id"] == json!(ids[0]))
        .context("dp1 listed")?;
    assert_eq!(eu["labels"], json!({"region": "eu"}), "{eu}");

    let summary = clustering_status(admin).await?;
    assert_eq!(summary["config_hash"], json!(cp_hash), "{summary}");
    assert_eq!(
        summary["data_planes"],
        json!({"total": 2, "connected": 2, "in_sync": 2, "with_warnings": 0}),
        "{summary}"
    );
    assert_eq!(summary["lagging"], json!([]), "{summary}");

    // A DP that connects later gets the current snapshot at once.
    let late = DataPlane::start(
        DataPlaneOptions::new(cluster.addr)
            .pki(&cluster.pki, "dp1")
            .name("late"),
    )
    .await?;
    let status = late.wait_for_version(version, patience()).await?;
    assert_eq!(status["config_hash"], json!(cp_hash), "{status}");
    Ok(())
}

#[tokio::test]
async fn two_control_planes_on_one_database_push_identical_hashes() -> Result<()> {
    let db = test_db().await?;
    let pki = Pki::new(&["dp1", "dp2"])?;
    let (cp_a, addr_a) = start_cp(&db, &pki.cp_args()).await?;
    let (cp_b, addr_b) = start_cp(&db, &pki.cp_args()).await?;
    let dp1 = DataPlane::start(DataPlaneOptions::new(addr_a).pki(&pki, "dp1")).await?;
    let dp2 = DataPlane::start(DataPlaneOptions::new(addr_b).pki(&pki, "dp2")).await?;

    create_certificate(cp_a.admin(), "replicas.example.test").await?;
    let version = write(cp_a.admin()).await?;
    let statuses = converge(&[&dp1, &dp2], version).await?;
    assert_eq!(statuses[0]["config_version"], json!(version));
    assert_eq!(statuses[1]["config_version"], json!(version));
    let hash_1 = hash(&statuses[0])?;
    assert_eq!(hash_1, hash(&statuses[1])?, "{statuses:?}");

    let a = wait_for_cp_snapshot(cp_a.admin(), version, patience()).await?;
    let b = wait_for_cp_snapshot(cp_b.admin(), version, patience()).await?;
    assert_eq!(a["config_hash"], json!(hash_1), "{a}");
    assert_eq!(b["config_hash"], json!(hash_1), "{b}");

    // Each replica's Admin API shows the whole fleet, whichever replica a DP talks to.
    for cp in [&cp_a, &cp_b] {
        let ids = [dp1.node_id()?, dp2.node_id()?];
        wait_until("both DPs listed by each replica", patience(), || async {
            let listed = data_planes(cp.admin()).await?;
            Ok(ids
                .iter()
                .all(|id| {
                    listed.iter().any(|e| {
                        e["id"] == json!(id)
                            && e["config_hash"] == json!(hash_1)
                            && e["sync_status"] == json!("normal")
                    })
                })
                .then_some(()))
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_burst_of_100_writes_is_coalesced_and_the_last_write_is_delivered() -> Result<()> {
    let cluster = Cluster::start(&["dp1", "dp2"], &["--database-max-connections", "20"]).await?;
    let admin = cluster.admin();
    let dp1 = cluster.dp("dp1").await?;
    let dp2 = cluster.dp("dp2").await?;
    let first = write(admin).await?;
    converge(&[&dp1, &dp2], first).await?;
    // Every snapshot so far has been sent: the counters below count the burst only.
    wait_for_cp_snapshot(admin, first, patience()).await?;
    let before = wait_until("both DPs in sync", patience(), || async {
        let status = clustering_status(admin).await?;
        Ok((status["data_planes"]["in_sync"] == json!(2)).then_some(status))
    })
    .await?;

    let started = Instant::now();
    let writes = (0..100).map(|i| {
        let admin = admin.clone();
        tokio::spawn(async move {
            admin
                .post_json("/consumers", &json!({"username": format!("burst-{i}")}))
                .await
        })
    });
    for response in futures_util::future::join_all(writes).await {
        let response = response??;
        ensure!(response.status == 201, "{response:?}");
    }
    let written_in = started.elapsed();
    let last = config_version(admin).await?;
    assert_eq!(last, first + 100);

    let statuses = converge(&[&dp1, &dp2], last).await?;
    let converged_in = started.elapsed();
    let after = wait_for_cp_snapshot(admin, last, patience()).await?;
    for status in &statuses {
        assert_eq!(status["config_version"], json!(last), "{status}");
        assert_eq!(status["config_hash"], after["config_hash"], "{status}");
    }
    let after = wait_until("both DPs in sync after the burst", patience(), || async {
        let status = clustering_status(admin).await?;
        Ok((status["data_planes"]["in_sync"] == json!(2)).then_some(status))
    })
    .await?;
    let counter = |status: &Value, key: &str| status[key].as_i64().unwrap_or(-1);
    let built = counter(&after, "snapshots_built") - counter(&before, "snapshots_built");
    let sent = counter(&after, "snapshots_sent") - counter(&before, "snapshots_sent");
    println!(
        "100 writes in {written_in:?}, both DPs on version {last} after {converged_in:?}: \
         {built} snapshots built, {sent} sent (to 2 data planes)"
    );
    assert!(
        (1..30).contains(&built),
        "{built} snapshots built for 100 writes"
    );
    assert!(
        (1..60).contains(&sent),
        "{sent} snapshots sent for 100 writes"
    );
    Ok(())
}

#[tokio::test]
async fn a_snapshot_rejected_by_a_data_plane_keeps_its_runtime_and_is_reported() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let dp = cluster.dp("dp1").await?;
    let cert_id = create_certificate(admin, "broken.example.test").await?;
    let good_version = config_version(admin).await?;
    let good = dp.wait_for_version(good_version, patience()).await?;
    let good_hash = hash(&good)?;
    let id = dp.node_id()?;

    // The Admin API refuses a key that does not match its certificate: write one directly,
    // with the version bump and notification a write makes.
    let other_key = certs::self_signed(&["other.test"], Algorithm::Ecdsa, 30)?.key;
    let mut client = cluster.db.client().await?;
    let tx = client.transaction().await?;
    let updated = tx
        .execute(
            "UPDATE certificates SET key = $1 WHERE id = $2::text::uuid",
            &[&other_key, &cert_id],
        )
        .await?;
    assert_eq!(updated, 1);
    let bad_version: i64 = tx
        .query_one(
            "UPDATE config_version SET version = version + 1 RETURNING version",
            &[],
        )
        .await?
        .get(0);
    tx.execute(
        "SELECT pg_notify('gatehouse_config', $1)",
        &[&bad_version.to_string()],
    )
    .await?;
    tx.commit().await?;

    let rejected = dp
        .wait_for_log_line(patience(), |l| {
            l.contains("snapshot rejected") && l.contains(&format!("version={bad_version}"))
        })
        .await?;
    println!("data plane: {rejected}");
    let entry = wait_for_data_plane(admin, &id, patience(), |e| {
        e["sync_status"] == json!("rejected")
    })
    .await?;
    println!("registry: {entry}");
    let error = entry["error"].as_str().context("error text")?;
    assert!(!error.is_empty(), "{entry}");
    assert!(!error.contains("PRIVATE KEY"), "no key material: {error}");
    assert_eq!(entry["config_version"], json!(good_version), "{entry}");
    assert_eq!(entry["config_hash"], json!(good_hash), "{entry}");

    // The old runtime stays.
    let status = dp.status().await?;
    assert_eq!(status["config_version"], json!(good_version), "{status}");
    assert_eq!(status["config_hash"], json!(good_hash), "{status}");
    assert_eq!(dp.ready().await?, 200);

    let summary = clustering_status(admin).await?;
    assert_eq!(summary["config_version"], json!(bad_version), "{summary}");
    assert_eq!(summary["data_planes"]["in_sync"], json!(0), "{summary}");
    let lagging = summary["lagging"].as_array().context("lagging")?;
    let lag = lagging
        .iter()
        .find(|l| l["id"] == json!(id))
        .with_context(|| format!("{id} not lagging: {summary}"))?;
    assert_eq!(lag["config_version"], json!(good_version), "{lag}");
    assert!(
        lag["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{lag}"
    );
    assert!(!cluster.cp.logs().contains("PRIVATE KEY"));
    assert!(!dp.logs().contains("PRIVATE KEY"));

    // A valid write repairs it.
    rotate_certificate(admin, &cert_id, "broken.example.test").await?;
    let fixed = config_version(admin).await?;
    let status = dp.wait_for_version(fixed, patience()).await?;
    assert_eq!(status["config_version"], json!(fixed), "{status}");
    let entry = wait_for_data_plane(admin, &id, patience(), |e| {
        e["sync_status"] == json!("normal") && e["config_version"] == json!(fixed)
    })
    .await?;
    assert!(entry["error"].is_null(), "{entry}");
    Ok(())
}

#[tokio::test]
async fn a_data_plane_of_another_major_version_is_refused_with_a_reason() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let dp = DataPlane::start(cluster.dp_options("dp1").advertise_version("99.0.0")).await?;
    let refused = dp
        .wait_for_log("control plane refused this data plane", patience())
        .await?;
    println!("data plane: {refused}");
    let reason = refused
        .split("control plane refused this data plane")
        .nth(1)
        .unwrap_or("")
        .trim_start_matches([':', ' ']);
    assert!(!reason.trim().is_empty(), "{refused}");

    let id = dp.node_id()?;
    let entry = wait_for_data_plane(cluster.admin(), &id, patience(), |e| {
        e["sync_status"] == json!("version_incompatible")
    })
    .await?;
    println!("registry: {entry}");
    assert_eq!(entry["version"], json!("99.0.0"), "{entry}");
    let (ready, body) = dp.ready_response().await?;
    assert_eq!(ready, 503, "{body}");
    assert_eq!(dp.status().await?["config_version"], Value::Null);

    // The same node at the CP's version is accepted.
    let compatible = DataPlane::start(cluster.dp_options("dp1").name("compatible")).await?;
    compatible.wait_until_ready(patience()).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_data_plane_revokes_its_certificate_and_forgets_it_until_it_connects_with_a_new_one()
-> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let mut dp = cluster.dp("dp1").await?;
    dp.wait_until_ready(patience()).await?;
    let id = dp.node_id()?;
    wait_for_data_plane(admin, &id, patience(), |e| e["connected"] == json!(true)).await?;

    dp.stop().await?;
    wait_for_data_plane(admin, &id, patience(), |e| e["connected"] == json!(false)).await?;
    let deleted = admin
        .delete(&format!("/clustering/data-planes/{id}"))
        .await?;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    let listed = data_planes(admin).await?;
    assert!(listed.iter().all(|e| e["id"] != json!(id)), "{listed:?}");
    let summary = clustering_status(admin).await?;
    assert_eq!(summary["data_planes"]["total"], json!(0), "{summary}");

    // Deleting revoked its certificate: the node is refused with it...
    dp.start_again().await?;
    dp.wait_for_log("certificate is revoked", patience())
        .await?;
    let listed = data_planes(admin).await?;
    assert!(listed.iter().all(|e| e["id"] != json!(id)), "{listed:?}");
    dp.stop().await?;
    // ...and with a new certificate keeps its id and registers again.
    cluster.pki.issue_dp("dp1")?;
    dp.start_again().await?;
    dp.wait_until_ready(patience()).await?;
    assert_eq!(dp.node_id()?, id);
    assert_eq!(dp.status().await?["node_id"], json!(id));
    wait_for_data_plane(admin, &id, patience(), |e| e["connected"] == json!(true)).await?;
    Ok(())
}
