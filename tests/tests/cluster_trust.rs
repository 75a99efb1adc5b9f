//! Cluster trust: who may join the cluster link, in `pki` and `shared` mode, and certificate
//! rotation without restart. Real processes, real certificates, real handshakes.

mod cluster_support;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use cluster_support::*;
use gatehouse_tests::certs::{self, Algorithm};
use gatehouse_tests::{
    DataPlane, DataPlaneOptions, Handshake, Pki, TempDir, cert_der, data_planes, patience, test_db,
    tls_client_config, tls_handshake, wait_until,
};

const REFUSED: &str = "cluster handshake refused";

/// Waits until the CP has refused `n` handshakes in all (a refused DP retries, so `n = 2`
/// shows it tried again and was refused again); returns the last refusal line.
async fn refusals(cluster: &Cluster, n: usize) -> Result<String> {
    wait_until(
        &format!("{n} refused handshakes in the CP log"),
        patience(),
        || async {
            let logs = cluster.cp.logs();
            let lines: Vec<&str> = logs.lines().filter(|l| l.contains(REFUSED)).collect();
            Ok((lines.len() >= n).then(|| lines[lines.len() - 1].to_owned()))
        },
    )
    .await
}

/// Checks a DP never got a configuration: not ready, no version, not registered.
async fn assert_shut_out(cluster: &Cluster, dp: &DataPlane) -> Result<()> {
    let (code, body) = dp.ready_response().await?;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body, json!({"message": "no configuration available"}));
    let status = dp.status().await?;
    assert_eq!(status["config_version"], Value::Null, "{status}");
    assert_eq!(
        status["control_plane"]["connected"],
        json!(false),
        "{status}"
    );
    let listed = data_planes(cluster.admin()).await?;
    let id = dp.node_id().unwrap_or_default();
    assert!(listed.iter().all(|e| e["id"] != json!(id)), "{listed:?}");
    Ok(())
}

/// A raw TLS connection to the cluster port trusting `ca` (or anything) and presenting
/// `identity` (or nothing).
async fn probe(
    addr: SocketAddr,
    ca: Option<&std::path::Path>,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Handshake> {
    tls_handshake(addr, "localhost", tls_client_config(ca, identity)?).await
}

fn expect_refused(handshake: Handshake) -> Result<String> {
    match handshake {
        Handshake::Refuse(reason) => Ok(reason),
        Handshake::Accept { .. } => bail!("the handshake was accepted"),
    }
}

fn expect_accepted(handshake: Handshake) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    match handshake {
        Handshake::Accept { peer_certificates } => Ok(peer_certificates),
        Handshake::Refuse(reason) => bail!("the handshake was refused: {reason}"),
    }
}

#[tokio::test]
async fn a_data_plane_with_a_certificate_from_another_ca_is_refused() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let other = Pki::new(&["dp1"])?;
    // It trusts the right CA (so it accepts the CP), but its own certificate is foreign.
    let dp = DataPlane::start(
        cluster
            .dp_options("dp1")
            .cert(Some(&other.dp_cert("dp1")))
            .cert_key(Some(&other.dp_key("dp1"))),
    )
    .await?;
    let line = refusals(&cluster, 2).await?;
    println!("control plane: {line}");
    assert!(mentions_unknown_issuer(&line), "{line}");
    assert_shut_out(&cluster, &dp).await?;
    Ok(())
}

#[tokio::test]
async fn a_data_plane_with_a_self_signed_certificate_is_refused() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let dir = TempDir::new("self-signed")?;
    let pem = certs::self_signed(&["dp1"], Algorithm::Ecdsa, 30)?;
    std::fs::write(dir.join("dp.crt"), &pem.cert)?;
    std::fs::write(dir.join("dp.key"), &pem.key)?;
    let dp = DataPlane::start(
        cluster
            .dp_options("dp1")
            .cert(Some(&dir.join("dp.crt")))
            .cert_key(Some(&dir.join("dp.key"))),
    )
    .await?;
    let line = refusals(&cluster, 2).await?;
    println!("control plane: {line}");
    assert_shut_out(&cluster, &dp).await?;
    Ok(())
}

#[tokio::test]
async fn a_data_plane_without_a_certificate_fails_fast_with_a_clear_error() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let exited = DataPlane::run_to_exit(
        cluster.dp_options("dp1").cert(None).cert_key(None),
        patience(),
    )
    .await?;
    println!(
        "data plane exited with {} after {:?}",
        exited.status, exited.ran_for
    );
    assert!(!exited.status.success(), "{exited:?}");
    let output = exited.output.to_lowercase();
    assert!(
        output.contains("cluster-cert") || output.contains("cluster_cert"),
        "the error names the missing setting: {}",
        exited.output
    );
    assert!(exited.ran_for < Duration::from_secs(10), "{exited:?}");
    Ok(())
}

#[tokio::test]
async fn a_tls_client_without_a_certificate_is_refused_by_the_control_plane() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let ca = cluster.pki.ca_cert();

    let reason = expect_refused(probe(cluster.addr, Some(&ca), None).await?)?;
    println!("raw client without certificate: {reason}");
    let line = refusals(&cluster, 1).await?;
    println!("control plane: {line}");

    // The same client with a cluster certificate gets in: the probe tells the two apart.
    let dp1 = (cluster.pki.dp_cert("dp1"), cluster.pki.dp_key("dp1"));
    expect_accepted(probe(cluster.addr, Some(&ca), Some((&dp1.0, &dp1.1))).await?)?;
    Ok(())
}

#[tokio::test]
async fn a_data_plane_refuses_a_control_plane_it_does_not_trust() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    // Another cluster's DP: its own certificate and CA, so the CP's certificate is unknown.
    let other = Pki::new(&["dp1"])?;
    let dp = DataPlane::start(DataPlaneOptions::new(cluster.addr).pki(&other, "dp1")).await?;
    let line = dp
        .wait_for_log_line(patience(), mentions_unknown_issuer)
        .await?;
    println!("data plane: {line}");
    let status = dp
        .wait_for_status("last_error set", patience(), |s| {
            s["control_plane"]["last_error"]
                .as_str()
                .is_some_and(|e| !e.is_empty())
        })
        .await?;
    println!("data plane status: {status}");
    assert_shut_out(&cluster, &dp).await?;

    // The right CA but a name the CP's certificate does not carry.
    let misnamed = DataPlane::start(
        cluster
            .dp_options("dp1")
            .server_name("elsewhere.test")
            .name("misnamed"),
    )
    .await?;
    let line = misnamed
        .wait_for_log_line(patience(), |l| {
            let l = l.to_lowercase();
            l.contains("notvalidforname") || l.contains("not valid for name")
        })
        .await?;
    println!("data plane: {line}");
    assert_eq!(misnamed.ready().await?, 503);
    Ok(())
}

#[tokio::test]
async fn shared_mode_admits_the_shared_certificate_only() -> Result<()> {
    let db = test_db().await?;
    let pki = Pki::new(&["dp1"])?;
    let other = Pki::new(&[])?;
    let (cp, addr) = start_cp(&db, &pki.cp_shared_args()).await?;
    let cluster_logs = || cp.logs();

    let dp = DataPlane::start(DataPlaneOptions::new(addr).shared(&pki)).await?;
    dp.wait_until_ready(patience()).await?;

    // A DP with another shared certificate: neither side accepts the other.
    let stranger =
        DataPlane::start(DataPlaneOptions::new(addr).shared(&other).name("stranger")).await?;
    wait_until("a refused handshake", patience(), || async {
        Ok(cluster_logs().contains(REFUSED).then_some(()))
    })
    .await?;
    assert_eq!(stranger.ready().await?, 503);

    // The CP itself refuses a client presenting another certificate, even one that trusts it,
    // and even a valid certificate of the cluster CA: shared mode pins the one certificate.
    let (shared_cert, shared_key) = (pki.shared_cert(), pki.shared_key());
    let (other_cert, other_key) = (other.shared_cert(), other.shared_key());
    let (dp1_cert, dp1_key) = (pki.dp_cert("dp1"), pki.dp_key("dp1"));
    let reason = expect_refused(probe(addr, None, Some((&other_cert, &other_key))).await?)?;
    println!("raw client with another shared certificate: {reason}");
    let reason = expect_refused(probe(addr, None, Some((&dp1_cert, &dp1_key))).await?)?;
    println!("raw client with a CA-issued certificate: {reason}");
    expect_refused(probe(addr, None, None).await?)?;
    expect_accepted(probe(addr, None, Some((&shared_cert, &shared_key))).await?)?;
    assert_eq!(dp.ready().await?, 200);
    Ok(())
}

#[tokio::test]
async fn allowed_common_names_admit_only_the_listed_data_planes() -> Result<()> {
    let cluster = Cluster::start(
        &["dp1", "dp2"],
        &["--cluster-allowed-common-names", "dp1,dp3"],
    )
    .await?;
    let dp1 = cluster.dp("dp1").await?;
    let dp2 = cluster.dp("dp2").await?;
    dp1.wait_until_ready(patience()).await?;
    let line = refusals(&cluster, 2).await?;
    println!("control plane: {line}");
    assert_shut_out(&cluster, &dp2).await?;

    let ca = cluster.pki.ca_cert();
    let (c1, k1) = (cluster.pki.dp_cert("dp1"), cluster.pki.dp_key("dp1"));
    let (c2, k2) = (cluster.pki.dp_cert("dp2"), cluster.pki.dp_key("dp2"));
    expect_accepted(probe(cluster.addr, Some(&ca), Some((&c1, &k1))).await?)?;
    expect_refused(probe(cluster.addr, Some(&ca), Some((&c2, &k2))).await?)?;
    Ok(())
}

#[tokio::test]
async fn a_rotated_control_plane_certificate_is_served_without_restart() -> Result<()> {
    let cluster = Cluster::start(&["dp1", "dp2"], &[]).await?;
    let dp1 = cluster.dp("dp1").await?;
    dp1.wait_until_ready(patience()).await?;
    let pid = cluster.cp.pid();
    let ca = cluster.pki.ca_cert();
    let (c1, k1) = (cluster.pki.dp_cert("dp1"), cluster.pki.dp_key("dp1"));

    let old = cert_der(&cluster.pki.cp_cert())?;
    let served = expect_accepted(probe(cluster.addr, Some(&ca), Some((&c1, &k1))).await?)?;
    assert_eq!(served.first(), Some(&old));

    cluster.pki.rotate_cp()?;
    let new = cert_der(&cluster.pki.cp_cert())?;
    assert_ne!(new, old);
    // The CP re-reads the files on change (checked every few seconds).
    wait_until("the new certificate served", patience() * 2, || async {
        let served = expect_accepted(probe(cluster.addr, Some(&ca), Some((&c1, &k1))).await?)?;
        Ok((served.first() == Some(&new)).then_some(()))
    })
    .await
    .context("new connections should see the rotated certificate")?;

    // Same process; a new DP connects with the new certificate; the old connection lives on.
    assert_eq!(cluster.cp.pid(), pid);
    let dp2 = cluster.dp("dp2").await?;
    dp2.wait_until_ready(patience()).await?;
    let status = dp1.status().await?;
    assert_eq!(
        status["control_plane"]["connected"],
        json!(true),
        "{status}"
    );
    let version = write(cluster.admin()).await?;
    converge(&[&dp1, &dp2], version).await?;
    Ok(())
}
