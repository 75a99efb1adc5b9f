//! The config version: one bump per committed write, gap-free in commit order under concurrency,
//! a NOTIFY for each, nothing for failed writes; migrations under concurrent starts.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use gatehouse_tests::{ControlPlane, TestDb, cp_bin, test_db};

/// Listens on `gatehouse_config` and forwards every payload.
async fn listen(db: &TestDb) -> Result<(tokio_postgres::Client, mpsc::UnboundedReceiver<i64>)> {
    let (client, mut connection) = tokio_postgres::connect(&db.url, NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message
                && n.channel() == "gatehouse_config"
            {
                let _ = tx.send(n.payload().parse().unwrap_or(-1));
            }
        }
    });
    client.batch_execute("LISTEN gatehouse_config").await?;
    Ok((client, rx))
}

use gatehouse_tests::config_version as version;

/// Collects `n` notifications (failing after a generous deadline), then checks none follow.
async fn collect(rx: &mut mpsc::UnboundedReceiver<i64>, n: usize) -> Result<Vec<i64>> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(v)) => got.push(v),
            _ => bail!("only {} of {n} notifications arrived: {got:?}", got.len()),
        }
    }
    Ok(got)
}

async fn assert_quiet(rx: &mut mpsc::UnboundedReceiver<i64>) {
    let extra = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(extra.is_err(), "unexpected notification {extra:?}");
}

#[tokio::test]
async fn concurrent_writers_get_gap_free_versions_and_one_notify_each() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start_with(&db, &["--database-max-connections", "20"], &[]).await?;
    let (_listener, mut rx) = listen(&db).await?;
    let start = version(cp.admin()).await?;

    let writers = (0..50).map(|i| {
        let admin = cp.admin().clone();
        tokio::spawn(async move {
            admin
                .post_json("/consumers", &json!({"username": format!("user-{i}")}))
                .await
        })
    });
    for writer in futures_util::future::join_all(writers).await {
        let response = writer??;
        assert_eq!(response.status, 201, "{response:?}");
    }

    let notified = collect(&mut rx, 50).await?;
    // Notifications arrive in commit order: strictly increasing, no gap, no repeat.
    let expected: Vec<i64> = (start + 1..=start + 50).collect();
    assert_eq!(notified, expected);
    assert_eq!(version(cp.admin()).await?, start + 50);
    assert_quiet(&mut rx).await;

    let listed = cp.admin().get("/consumers?size=1000").await?;
    assert_eq!(listed.body["data"].as_array().map(Vec::len), Some(50));
    Ok(())
}

#[tokio::test]
async fn concurrent_patches_of_one_entity_lose_no_update() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start_with(&db, &["--database-max-connections", "20"], &[]).await?;
    let created = cp
        .admin()
        .post_json("/services", &json!({"name": "svc", "host": "origin.test"}))
        .await?;
    assert_eq!(created.status, 201, "{created:?}");
    let start = version(cp.admin()).await?;

    // Each writer changes a different field of the same row; a read-modify-write without a
    // row lock would overwrite some of them with stale values.
    let patches = [
        json!({"retries": 7}),
        json!({"port": 8081}),
        json!({"path": "/p"}),
        json!({"connect_timeout": 1111}),
        json!({"read_timeout": 2222}),
        json!({"write_timeout": 3333}),
        json!({"tags": ["t"]}),
        json!({"enabled": false}),
        json!({"host": "other.test"}),
        json!({"protocol": "https"}),
    ];
    let mut tasks = Vec::new();
    for round in 0..3 {
        for patch in &patches {
            let admin = cp.admin().clone();
            let patch = patch.clone();
            tasks.push(tokio::spawn(async move {
                let _ = round;
                admin.patch_json("/services/svc", &patch).await
            }));
        }
    }
    for task in futures_util::future::join_all(tasks).await {
        let response = task??;
        assert_eq!(response.status, 200, "{response:?}");
    }
    let service = cp.admin().get("/services/svc").await?.body;
    for patch in &patches {
        for (key, value) in patch.as_object().into_iter().flatten() {
            assert_eq!(&service[key], value, "lost update of {key}: {service}");
        }
    }
    assert_eq!(version(cp.admin()).await?, start + 30);
    Ok(())
}

#[tokio::test]
async fn failed_writes_change_nothing_and_bump_nothing() -> Result<()> {
    let db = test_db().await?;
    let cp = ControlPlane::start(&db).await?;
    let admin = cp.admin();
    assert_eq!(
        admin
            .post_json("/services", &json!({"name": "svc", "host": "a.test"}))
            .await?
            .status,
        201
    );
    let (_listener, mut rx) = listen(&db).await?;
    let before = version(admin).await?;
    let services_before = admin.get("/services").await?.body;

    let failures: Vec<(&str, Value, u16)> = vec![
        ("/services", json!({"name": "svc", "host": "b.test"}), 409),
        ("/services", json!({"host": "b.test", "port": 70000}), 400),
        (
            "/routes",
            json!({"paths": ["/x"], "service": {"name": "nope"}}),
            400,
        ),
        ("/routes", json!({"protocols": ["http"]}), 400),
        (
            "/certificates",
            json!({"cert": "junk", "key": "junk", "snis": ["a.test"]}),
            400,
        ),
        ("/plugins", json!({"name": "no-such-plugin"}), 400),
    ];
    for (path, body, status) in failures {
        let response = admin.post_json(path, &body).await?;
        assert_eq!(response.status, status, "{path} {body}: {response:?}");
    }
    // A refused delete changes nothing either.
    assert_eq!(
        admin
            .post_json("/services/svc/routes", &json!({"paths": ["/r"]}))
            .await?
            .status,
        201
    );
    let after_route = version(admin).await?;
    assert_eq!(after_route, before + 1);
    assert_eq!(collect(&mut rx, 1).await?, vec![after_route]);
    let refused = admin.delete("/services/svc").await?;
    assert_eq!(refused.status, 400, "{refused:?}");
    // Deleting nothing succeeds without a bump.
    assert_eq!(admin.delete("/services/never-existed").await?.status, 204);

    assert_eq!(version(admin).await?, after_route);
    assert_quiet(&mut rx).await;
    let services_after = admin.get("/services").await?.body;
    assert_eq!(
        services_before["data"][0]["updated_at"],
        services_after["data"][0]["updated_at"]
    );
    assert_eq!(admin.get("/snis").await?.body["data"], json!([]));
    assert_eq!(admin.get("/certificates").await?.body["data"], json!([]));
    Ok(())
}

#[tokio::test]
async fn replicas_starting_together_migrate_once() -> Result<()> {
    let db = test_db().await?;
    let starts = (0..3).map(|_| ControlPlane::start(&db));
    let cps: Vec<ControlPlane> = futures_util::future::try_join_all(starts).await?;
    for cp in &cps {
        assert_eq!(version(cp.admin()).await?, 0);
    }
    let client = db.client().await?;
    let applied = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await?;
    let applied: i64 = applied.get(0);
    let files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../control-plane/migrations"
    ))?
    .count() as i64;
    assert_eq!(applied, files);
    // A write through one replica is seen by the others (one store, one version).
    let created = cps[0]
        .admin()
        .post_json("/consumers", &json!({"username": "shared"}))
        .await?;
    assert_eq!(created.status, 201);
    assert_eq!(version(cps[2].admin()).await?, 1);
    assert_eq!(cps[1].admin().get("/consumers/shared").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn settings_come_from_flags_environment_and_a_toml_file() -> Result<()> {
    let db = test_db().await?;
    let dir = std::env::temp_dir().join(format!("gh-settings-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("cp.toml");
    std::fs::write(
        &file,
        format!("database_url = \"{}\"\nplugins = \"acl\"\n", db.url),
    )?;

    // `migrate` takes the URL from the file.
    let output = tokio::process::Command::new(cp_bin()?)
        .args(["migrate", "--config"])
        .arg(&file)
        .env_remove("GATEHOUSE_DATABASE_URL")
        .output()
        .await?;
    assert!(output.status.success(), "{output:?}");

    // `serve` with the file: the plugin list comes from it, the environment overrides it.
    let cp =
        ControlPlane::start_with(&db, &["--config", file.to_str().context("path")?], &[]).await?;
    let root = cp.admin().get("/").await?;
    assert_eq!(root.body["plugins"]["enabled"], json!(["acl"]), "{root:?}");
    let refused = cp
        .admin()
        .post_json(
            "/plugins",
            &json!({"name": "mtls-auth", "config": {"ca_certificates": []}}),
        )
        .await?;
    assert_eq!(refused.status, 400);
    assert!(
        refused.body["fields"]["name"]
            .as_str()
            .unwrap_or("")
            .contains("not enabled")
    );
    drop(cp);

    let cp = ControlPlane::start_with(
        &db,
        &["--config", file.to_str().context("path")?],
        &[("GATEHOUSE_PLUGINS", "bundled")],
    )
    .await?;
    let root = cp.admin().get("/").await?;
    assert_eq!(
        root.body["plugins"]["enabled"],
        json!(["acl", "acme", "mtls-auth"])
    );

    // Bad settings are refused with EX_USAGE and every problem named.
    let output = tokio::process::Command::new(cp_bin()?)
        .args(["serve", "--admin-listen", "nowhere", "--log-format", "xml"])
        .env_remove("GATEHOUSE_DATABASE_URL")
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--admin-listen") && stderr.contains("--log-format"),
        "{stderr}"
    );

    // A missing database URL is named.
    let output = tokio::process::Command::new(cp_bin()?)
        .args(["serve"])
        .env_remove("GATEHOUSE_DATABASE_URL")
        .output()
        .await?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--database-url"));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
