//! Watched certificate sources (issue 13, "Certificate sources, watched by the control plane"),
//! end to end: real certbot-style and Kubernetes-style directories made by the test with the
//! same symlink swaps those tools perform, two control-plane replicas watching the same
//! directory on one database, two data planes (one on each replica), and TLS clients checking
//! which leaf every data plane serves while a load loop keeps handshaking.
//!
//! The rotation figures printed by `certbot_and_kubernetes_rotations_reach_every_data_plane`
//! are the ones in BENCHMARKS.md ("Certificate sources").

mod cluster_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use rustls::ClientConfig;
use rustls::client::Resumption;
use serde_json::json;
use tokio::time::Instant;

use cluster_support::*;
use gatehouse_tests::certs::{Algorithm, Ca, Pem};
use gatehouse_tests::{
    ControlPlane, DataPlane, DataPlaneOptions, Handshake, TempDir, config_version, patience,
    tls_client_config, tls_handshake, wait_until,
};

/// The certbot certificate's name (and SNI).
const CERTBOT_SNI: &str = "certbot.test";
/// The Kubernetes secret's SNI.
const K8S_SNI: &str = "k8s.test";
/// The plain pair's SNI.
const PLAIN_SNI: &str = "plain.test";
/// Rotations of each layout measured.
const ROTATIONS: usize = 4;
/// The rescan interval the control planes use (their lease lasts 10 s, the minimum).
const RESCAN_SECS: &str = "2";

/// Lowercase hex SHA-256 of the leaf of `pem`.
fn fingerprint(pem: &str) -> Result<String> {
    let certs = gatehouse_shared::x509::parse_certificates(pem).map_err(anyhow::Error::msg)?;
    let leaf = certs.first().context("no certificate")?;
    Ok(gatehouse_shared::x509::sha256_hex(leaf.as_ref()))
}

/// A client accepting any server certificate, without session resumption: every handshake is
/// a full one and shows the certificate served now.
fn client() -> Result<Arc<ClientConfig>> {
    let mut config = (*tls_client_config(None, None)?).clone();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The fingerprint of the leaf `addr` serves for `sni`, or why the handshake failed.
async fn served(addr: SocketAddr, sni: &str, config: &Arc<ClientConfig>) -> Result<String, String> {
    match tls_handshake(addr, sni, config.clone()).await {
        Ok(Handshake::Accept { peer_certificates }) => peer_certificates
            .first()
            .map(|leaf| gatehouse_shared::x509::sha256_hex(leaf.as_ref()))
            .ok_or_else(|| "no certificate".to_owned()),
        Ok(Handshake::Refuse(reason)) => Err(reason),
        Err(error) => Err(format!("{error:#}")),
    }
}

/// Polls every data plane (every 5 ms) until each serves `fp` for `sni`; returns when.
async fn wait_served(
    dps: &[SocketAddr],
    sni: &str,
    fp: &str,
    config: &Arc<ClientConfig>,
    patience: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + patience;
    let mut pending: Vec<SocketAddr> = dps.to_vec();
    loop {
        let mut still = Vec::new();
        for addr in pending {
            if served(addr, sni, config).await.as_deref() != Ok(fp) {
                still.push(addr);
            }
        }
        if still.is_empty() {
            return Ok(Instant::now());
        }
        ensure!(
            Instant::now() < deadline,
            "{still:?} never served {fp} for {sni}"
        );
        pending = still;
        tokio::time::sleep(FAST_POLL).await;
    }
}

/// The leaf `openssl s_client` receives from `addr` for `sni`, as a fingerprint.
async fn openssl_fingerprint(addr: SocketAddr, sni: &str) -> Result<String> {
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            sni,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(15), out)
        .await
        .context("openssl s_client timed out")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let start = stdout
        .find("-----BEGIN CERTIFICATE-----")
        .with_context(|| format!("no certificate from openssl: {stdout}"))?;
    fingerprint(&stdout[start..])
}

// ---------------------------------------------------------------------------------------------
// The layouts, written as the tools write them.

/// Version `n` of certbot's lineage `name` under `root`: new `archive/<name>/*N.pem` files,
/// then each `live/<name>/*.pem` symlink re-pointed in certbot's order (cert, privkey, chain,
/// fullchain), each by unlink + symlink as certbot does, so a pass may see the new key with
/// the old chain.
fn certbot_install(root: &Path, name: &str, n: usize, leaf: &Pem, ca: &Ca) -> Result<()> {
    let archive = root.join("archive").join(name);
    let live = root.join("live").join(name);
    std::fs::create_dir_all(&archive)?;
    std::fs::create_dir_all(&live)?;
    let fullchain = format!("{}{}", leaf.cert, ca.pem.cert);
    for (kind, text) in [
        ("cert", leaf.cert.as_str()),
        ("privkey", leaf.key.as_str()),
        ("chain", ca.pem.cert.as_str()),
        ("fullchain", fullchain.as_str()),
    ] {
        std::fs::write(archive.join(format!("{kind}{n}.pem")), text)?;
    }
    for kind in ["cert", "privkey", "chain", "fullchain"] {
        let link = live.join(format!("{kind}.pem"));
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        symlink(format!("../../archive/{name}/{kind}{n}.pem"), &link)?;
    }
    Ok(())
}

/// Version `n` of a Kubernetes TLS secret mounted at `dir`, as the kubelet's atomic writer
/// does it: a new `..<timestamp>` directory, a `..data_tmp` symlink to it renamed over `..data`,
/// the old directory removed; `tls.crt` and `tls.key` are symlinks through `..data`.
fn k8s_install(dir: &Path, n: usize, leaf: &Pem) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let version = format!("..2026_12_08_00_00_{n:02}.{n}");
    let target = dir.join(&version);
    std::fs::create_dir(&target)?;
    std::fs::write(target.join("tls.crt"), &leaf.cert)?;
    std::fs::write(target.join("tls.key"), &leaf.key)?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    symlink(&version, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    for file in ["tls.crt", "tls.key"] {
        if std::fs::symlink_metadata(dir.join(file)).is_err() {
            symlink(format!("..data/{file}"), dir.join(file))?;
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(())
}

/// A handshake of the load loop.
#[derive(Debug)]
struct Probe {
    sni: &'static str,
    outcome: Result<String, String>,
}

/// Handshakes with every data plane for every SNI, round robin, until told to stop.
fn load_loop(
    dps: Vec<SocketAddr>,
    config: Arc<ClientConfig>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Vec<Probe>>,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut probes = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'outer: loop {
            for addr in &dps {
                for sni in [CERTBOT_SNI, K8S_SNI, PLAIN_SNI] {
                    tokio::select! {
                        _ = stopped.changed() => break 'outer,
                        _ = tick.tick() => {}
                    }
                    let outcome = served(*addr, sni, &config).await;
                    probes.push(Probe { sni, outcome });
                }
            }
        }
        probes
    });
    (stop, task)
}

/// How many lines of `logs` contain `needle`.
fn count(logs: &str, needle: &str) -> usize {
    logs.lines().filter(|l| l.contains(needle)).count()
}

/// Median, minimum and maximum of `samples` in milliseconds.
fn summary(samples: &[Duration]) -> String {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let median = if ms.is_empty() {
        0.0
    } else if ms.len() % 2 == 1 {
        ms[ms.len() / 2]
    } else {
        (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
    };
    format!(
        "n={} median={median:.0} ms min={:.0} ms max={:.0} ms",
        ms.len(),
        ms.first().copied().unwrap_or(0.0),
        ms.last().copied().unwrap_or(0.0)
    )
}

#[tokio::test]
async fn certbot_and_kubernetes_rotations_reach_every_data_plane() -> Result<()> {
    let source = TempDir::new("cert-source")?;
    let root = source.path().to_path_buf();
    let ca = Ca::new("Cert source test CA")?;
    let k8s = root.join("secrets/web-tls");
    let mut expected: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut remember = |sni: &'static str, pem: &Pem| -> Result<String> {
        let fp = fingerprint(&pem.cert)?;
        expected.entry(sni).or_default().insert(fp.clone());
        Ok(fp)
    };

    // Version 1 of each layout, before the control planes start.
    let certbot_v1 = ca.leaf(&[CERTBOT_SNI], Algorithm::Ecdsa, 30)?;
    certbot_install(&root, CERTBOT_SNI, 1, &certbot_v1, &ca)?;
    let k8s_v1 = ca.leaf(&[K8S_SNI], Algorithm::Rsa, 30)?;
    k8s_install(&k8s, 1, &k8s_v1)?;
    let plain_v1 = ca.leaf(&[PLAIN_SNI, "192.0.2.7"], Algorithm::Ecdsa, 30)?;
    std::fs::write(root.join("plain.crt"), &plain_v1.cert)?;
    std::fs::write(root.join("plain.key"), &plain_v1.key)?;
    let mut current: BTreeMap<&str, String> = BTreeMap::new();
    current.insert(CERTBOT_SNI, remember(CERTBOT_SNI, &certbot_v1)?);
    current.insert(K8S_SNI, remember(K8S_SNI, &k8s_v1)?);
    current.insert(PLAIN_SNI, remember(PLAIN_SNI, &plain_v1)?);

    // Two replicas on one database, both watching the directory; a DP on each.
    let source_arg = root.to_string_lossy().into_owned();
    let mut cluster = Cluster::start(
        &["dp1", "dp2"],
        &[
            "--cert-source",
            &source_arg,
            "--cert-source-rescan-interval",
            RESCAN_SECS,
        ],
    )
    .await?;
    let (cp2, cp2_addr) = start_cp(&cluster.db, &cluster.cp_args).await?;
    let dp1 = cluster.dp("dp1").await?;
    let dp2 = DataPlane::start(DataPlaneOptions::new(cp2_addr).pki(&cluster.pki, "dp2")).await?;
    dp1.wait_until_ready(patience()).await?;
    dp2.wait_until_ready(patience()).await?;
    let addrs = vec![dp1.proxy_ssl_addr()?, dp2.proxy_ssl_addr()?];
    let config = client()?;
    for (sni, fp) in &current {
        wait_served(&addrs, sni, fp, &config, patience()).await?;
    }
    ensure!(
        openssl_fingerprint(addrs[0], CERTBOT_SNI).await? == current[CERTBOT_SNI],
        "openssl sees another certbot leaf"
    );

    // The rows: one per pair, tagged, SNIs from the DNS SANs; the Admin API refuses writes.
    let admin = cluster.admin();
    let listed = admin.get("/certificates?tags=source:file").await?;
    ensure!(listed.status == 200, "{listed:?}");
    let rows = listed.body["data"].as_array().context("data")?.clone();
    ensure!(rows.len() == 3, "three rows: {rows:#?}");
    let plain_row = rows
        .iter()
        .find(|r| r["snis"] == json!([PLAIN_SNI]))
        .context("the plain pair's row, with its DNS SAN only")?;
    let plain_id = plain_row["id"].as_str().context("id")?.to_owned();
    let patched = admin
        .patch_json(
            &format!("/certificates/{plain_id}"),
            &json!({"tags": ["x"]}),
        )
        .await?;
    ensure!(patched.status == 409, "{patched:?}");
    let message = patched.body["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("managed by certificate source") && message.contains("plain.crt"),
        "{message}"
    );
    let deleted = admin.delete(&format!("/certificates/{plain_id}")).await?;
    ensure!(deleted.status == 409, "{deleted:?}");
    let sni_delete = admin.delete(&format!("/snis/{PLAIN_SNI}")).await?;
    ensure!(sni_delete.status == 409, "{sni_delete:?}");

    // Rotations under load.
    let (stop, looper) = load_loop(addrs.clone(), config.clone());
    let mut certbot_times = Vec::new();
    let mut k8s_times = Vec::new();
    for n in 2..=ROTATIONS + 1 {
        let before = config_version(admin).await?;
        let leaf = ca.leaf(&[CERTBOT_SNI], Algorithm::Ecdsa, 30)?;
        let fp = remember(CERTBOT_SNI, &leaf)?;
        certbot_install(&root, CERTBOT_SNI, n, &leaf, &ca)?;
        let written = Instant::now();
        let done = wait_served(&addrs, CERTBOT_SNI, &fp, &config, patience()).await?;
        certbot_times.push(done - written);
        let after = config_version(admin).await?;
        ensure!(
            after == before + 1,
            "certbot rotation {n}: versions {before} -> {after}"
        );
        current.insert(CERTBOT_SNI, fp);

        let before = after;
        let leaf = ca.leaf(&[K8S_SNI], Algorithm::Rsa, 30)?;
        let fp = remember(K8S_SNI, &leaf)?;
        k8s_install(&k8s, n, &leaf)?;
        let written = Instant::now();
        let done = wait_served(&addrs, K8S_SNI, &fp, &config, patience()).await?;
        k8s_times.push(done - written);
        let after = config_version(admin).await?;
        ensure!(
            after == before + 1,
            "kubernetes rotation {n}: versions {before} -> {after}"
        );
        current.insert(K8S_SNI, fp);
    }

    // A half-written plain pair never reaches the data planes: a truncated certificate, then
    // the new key with the old certificate; the last good pair stays until both are whole.
    let plain_v2 = ca.leaf(&[PLAIN_SNI], Algorithm::Ecdsa, 30)?;
    let plain_v2_fp = fingerprint(&plain_v2.cert)?;
    std::fs::write(
        root.join("plain.crt"),
        &plain_v2.cert[..plain_v2.cert.len() / 2],
    )?;
    let logs = || format!("{}{}", cluster.cp.logs(), cp2.logs());
    wait_until("the truncated certificate logged", patience(), || async {
        Ok(logs()
            .lines()
            .any(|l| l.contains("pair not loaded") && l.contains("pair=plain"))
            .then_some(()))
    })
    .await?;
    std::fs::write(root.join("plain.crt"), &plain_v1.cert)?;
    std::fs::write(root.join("plain.key"), &plain_v2.key)?;
    wait_until("the mismatched key logged", patience(), || async {
        Ok(logs()
            .contains("plain.crt does not match the key")
            .then_some(()))
    })
    .await?;
    for addr in &addrs {
        ensure!(
            served(*addr, PLAIN_SNI, &config).await.as_deref() == Ok(current[PLAIN_SNI].as_str()),
            "{addr} serves another plain leaf while the pair is inconsistent"
        );
    }
    std::fs::write(root.join("plain.crt"), &plain_v2.cert)?;
    remember(PLAIN_SNI, &plain_v2)?;
    wait_served(&addrs, PLAIN_SNI, &plain_v2_fp, &config, patience()).await?;
    current.insert(PLAIN_SNI, plain_v2_fp);

    stop.send(true)?;
    let probes = looper.await?;
    let failed: Vec<&Probe> = probes.iter().filter(|p| p.outcome.is_err()).collect();
    let unexpected: Vec<&Probe> = probes
        .iter()
        .filter(|p| {
            p.outcome
                .as_ref()
                .is_ok_and(|fp| !expected.get(p.sni).is_some_and(|set| set.contains(fp)))
        })
        .collect();
    println!(
        "cert sources: {} handshakes under load, {} failed; file change -> every DP serving \
         the new leaf: certbot {}; kubernetes {}",
        probes.len(),
        failed.len(),
        summary(&certbot_times),
        summary(&k8s_times)
    );
    ensure!(failed.is_empty(), "failed handshakes: {failed:#?}");
    ensure!(unexpected.is_empty(), "unexpected leaves: {unexpected:#?}");

    // One writer: every change was stored once, by one replica, and nothing holds a key.
    let all = logs();
    let stored = count(&all, "certificate source: certificate stored");
    // 3 initial pairs, 2 layouts x ROTATIONS, the plain pair's new version.
    ensure!(
        stored == 3 + 2 * ROTATIONS + 1,
        "{stored} stores:\n{}",
        all.lines()
            .filter(|l| l.contains("certificate source"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        count(&all, "this control plane writes the source") == 1,
        "one leader"
    );
    ensure!(!all.contains("PRIVATE KEY"), "a key in the logs");

    // Files gone, policy `keep`: the row stays and is still served.
    std::fs::remove_file(root.join("plain.crt"))?;
    std::fs::remove_file(root.join("plain.key"))?;
    wait_until("the missing pair logged", patience(), || async {
        Ok(logs()
            .lines()
            .any(|l| l.contains("files gone; the certificate is kept") && l.contains("pair=plain"))
            .then_some(()))
    })
    .await?;
    let kept = admin.get(&format!("/certificates/{plain_id}")).await?;
    ensure!(kept.status == 200, "{kept:?}");

    // Fail-over: the leader stops; the other replica takes the lease once it expired and
    // carries the next rotation to its data plane.
    let (survivor_dp, survivor_logs): (&DataPlane, Box<dyn Fn() -> String>) = if cluster
        .cp
        .logs()
        .contains("this control plane writes the source")
    {
        cluster.kill_cp(&[&dp1]).await?;
        (&dp2, Box::new(|| cp2.logs()))
    } else {
        kill_process(cp2.pid()).await?;
        dp2.wait_until_disconnected(patience()).await?;
        (&dp1, Box::new(|| cluster.cp.logs()))
    };
    let leaf = ca.leaf(&[K8S_SNI], Algorithm::Rsa, 30)?;
    let fp = fingerprint(&leaf.cert)?;
    k8s_install(&k8s, ROTATIONS + 2, &leaf)?;
    wait_served(
        &[survivor_dp.proxy_ssl_addr()?],
        K8S_SNI,
        &fp,
        &config,
        patience() + Duration::from_secs(12),
    )
    .await?;
    ensure!(
        survivor_logs().contains("this control plane writes the source"),
        "the survivor took over"
    );
    Ok(())
}

#[tokio::test]
async fn removed_files_remove_the_certificate_with_policy_remove() -> Result<()> {
    let source = TempDir::new("cert-source-remove")?;
    let root = source.path();
    let ca = Ca::new("Cert source removal CA")?;
    let leaf = ca.leaf(&["gone.test"], Algorithm::Ecdsa, 30)?;
    std::fs::write(root.join("gone.pem"), &leaf.cert)?;
    std::fs::write(root.join("gone.key"), &leaf.key)?;
    // A sidecar names the SNIs instead of the SANs.
    std::fs::write(
        root.join("gone.snis"),
        "alias.test\n# comment\nother.test\n",
    )?;
    let db = gatehouse_tests::test_db().await?;
    let source_arg = root.to_string_lossy().into_owned();
    let cp = ControlPlane::start_with(
        &db,
        &[
            "--cert-source",
            &source_arg,
            "--cert-source-missing",
            "remove",
            "--cert-source-rescan-interval",
            "1",
        ],
        &[],
    )
    .await?;
    let admin = cp.admin();
    let id = wait_until("the pair stored", patience(), || async {
        let listed = admin.get("/certificates?tags=source:file").await?;
        Ok(listed.body["data"]
            .as_array()
            .and_then(|rows| rows.first())
            .map(|row| (row["id"].clone(), row["snis"].clone())))
    })
    .await?;
    ensure!(id.1 == json!(["alias.test", "other.test"]), "{id:?}");
    let id = id.0.as_str().context("id")?.to_owned();
    let path = format!("/certificates/{id}");
    std::fs::remove_file(root.join("gone.pem"))?;
    std::fs::remove_file(root.join("gone.key"))?;
    wait_until("the row removed", patience(), || async {
        Ok((admin.get(&path).await?.status == 404).then_some(()))
    })
    .await?;
    ensure!(
        cp.logs().contains("files gone; certificate removed"),
        "{}",
        cp.logs()
    );
    // A graceful stop gives the source's lease back (another replica takes over at once).
    let client = db.client().await?;
    let held = |client: tokio_postgres::Client| async move {
        let row = client
            .query_one("SELECT count(*) FROM certificate_source_leases", &[])
            .await?;
        anyhow::Ok((client, row.get::<_, i64>(0)))
    };
    let (client, before) = held(client).await?;
    ensure!(before == 1, "{before} leases while watching");
    let status = cp.stop().await?;
    ensure!(status.success(), "{status}");
    let (_, after) = held(client).await?;
    ensure!(after == 0, "{after} leases after a graceful stop");
    // A directory that does not exist is a configuration error.
    let bad =
        ControlPlane::start_with(&db, &["--cert-source", "/nonexistent/gatehouse"], &[]).await;
    match bad {
        Ok(_) => bail!("a control plane started with a missing source directory"),
        Err(error) => ensure!(
            format!("{error:#}").contains("not a directory"),
            "{error:#}"
        ),
    }
    Ok(())
}
