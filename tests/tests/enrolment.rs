//! Data-plane enrolment (issue 14): bootstrap tokens, certificates issued by the control plane
//! to a key the data plane made, renewal over the sync stream, revocation on every replica.
//! Real processes, real PostgreSQL, real TLS and gRPC.

mod cluster_support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tokio::time::Instant;

use cluster_support::*;
use gatehouse_proto::v1::config_sync_client::ConfigSyncClient;
use gatehouse_proto::v1::enrolment_client::EnrolmentClient;
use gatehouse_proto::v1::{DataPlaneMessage, EnrolRequest, Hello, data_plane_message};
use gatehouse_shared::cluster::enrol::new_key_and_csr;
use gatehouse_tests::{
    Admin, ControlPlane, DataPlane, DataPlaneOptions, cp_bin, data_plane, patience, wait_until,
};

/// The file an enrolled data plane keeps its key and certificate in.
const IDENTITY_FILE: &str = "cluster-identity.pem";

/// A cluster whose CP holds the CA key (enrolment on), with `extra` CP arguments.
async fn enrolling_cluster(extra: &[&str]) -> Result<Cluster> {
    Cluster::start_enrolling(extra).await
}

/// Options of a data plane that enrols with `token` (passed in the environment, not argv).
fn enrolling(addr: SocketAddr, cluster: &Cluster, name: &str, token: &str) -> DataPlaneOptions {
    DataPlaneOptions::new(addr)
        .ca_cert(Some(&cluster.pki.ca_cert()))
        .env("GATEHOUSE_CLUSTER_BOOTSTRAP_TOKEN", token)
        .name(name)
}

/// Creates a token through the Admin API; returns (id, secret).
async fn create_token(admin: &Admin, body: Value) -> Result<(String, String)> {
    let created = admin.post_json("/clustering/tokens", &body).await?;
    ensure!(
        created.status == 201,
        "POST /clustering/tokens: {created:?}"
    );
    let id = created.body["id"].as_str().context("id")?.to_owned();
    let token = created.body["token"].as_str().context("token")?.to_owned();
    Ok((id, token))
}

async fn token_json(admin: &Admin, id: &str) -> Result<Value> {
    let got = admin.get(&format!("/clustering/tokens/{id}")).await?;
    ensure!(got.status == 200, "GET token: {got:?}");
    ensure!(
        got.body.get("token").is_none(),
        "the secret is never shown again: {got:?}"
    );
    Ok(got.body)
}

/// The registry entry of `dp` once it is connected.
async fn registered(admin: &Admin, dp: &DataPlane) -> Result<Value> {
    let id = dp.node_id()?;
    wait_until(
        "the data plane registered and connected",
        patience(),
        || async {
            Ok(data_plane(admin, &id)
                .await?
                .filter(|e| e["connected"] == json!(true)))
        },
    )
    .await
}

#[tokio::test]
async fn data_planes_enrol_with_a_token_each_and_used_expired_or_revoked_tokens_are_refused()
-> Result<()> {
    let cluster = enrolling_cluster(&[]).await?;
    let admin = cluster.admin();

    // Kong-shaped refusal of a bad body; nothing is created.
    let bad = admin
        .post_json("/clustering/tokens", &json!({"max_uses": 0, "bogus": 1}))
        .await?;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(bad.body["code"], 2, "{bad:?}");
    assert_eq!(bad.body["name"], "schema violation", "{bad:?}");
    assert!(bad.body["fields"]["max_uses"].is_string(), "{bad:?}");
    assert_eq!(bad.body["fields"]["bogus"], "unknown field", "{bad:?}");
    let listed = admin.get("/clustering/tokens").await?;
    assert_eq!(listed.body["data"], json!([]), "{listed:?}");

    // Three tokens: two from the Admin API, one from the CLI.
    let (id1, token1) = create_token(admin, json!({"labels": {"zone": "a"}})).await?;
    let (_, token2) = create_token(admin, json!({"max_uses": 1, "ttl": 600})).await?;
    let cli = tokio::process::Command::new(cp_bin()?)
        .args(["cluster-token", "create", "--database-url", &cluster.db.url])
        .args(["--uses", "1", "--ttl", "600", "--label", "via=cli"])
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    ensure!(cli.status.success(), "cluster-token create: {cli:?}");
    let printed: Value = serde_json::from_slice(&cli.stdout).context("CLI output is JSON")?;
    let token3 = printed["token"].as_str().context("token")?.to_owned();
    assert_eq!(printed["labels"], json!({"via": "cli"}), "{printed}");
    for token in [&token1, &token2, &token3] {
        assert!(token.starts_with("ghbt_") && token.len() == 48, "{token}");
    }

    let mut dps = Vec::new();
    for (n, token) in [&token1, &token2, &token3].into_iter().enumerate() {
        let dp =
            DataPlane::start(enrolling(cluster.addr, &cluster, &format!("dp{n}"), token)).await?;
        dp.wait_until_connected(patience()).await?;
        dps.push(dp);
    }
    let issuer = {
        let facts = gatehouse_shared::x509::check_ca_certificate(
            &std::fs::read_to_string(cluster.pki.ca_cert())?,
            0,
        )
        .map_err(anyhow::Error::msg)?;
        facts.facts.subject
    };
    for dp in &dps {
        let entry = registered(admin, dp).await?;
        let id = dp.node_id()?;
        assert_eq!(
            entry["cert_details"]["spiffe_id"],
            json!(format!("spiffe://gatehouse/dp/{id}")),
            "{entry}"
        );
        assert_eq!(entry["cert_details"]["issuer"], json!(issuer), "{entry}");
        let days = entry["cert_details"]["days_to_expiry"]
            .as_f64()
            .context("days")?;
        assert!(days > 0.9 && days <= 1.0, "24 h by default: {entry}");
        // The key stays on the node, readable by it alone.
        let file = dp.cache_dir().join(IDENTITY_FILE);
        let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
        assert!(std::fs::read_to_string(&file)?.contains("PRIVATE KEY"));
    }
    let token = token_json(admin, &id1).await?;
    assert_eq!(
        (token["uses"].clone(), token["status"].clone()),
        (json!(1), json!("used up")),
        "{token}"
    );
    assert_eq!(token["labels"], json!({"zone": "a"}), "{token}");

    // A used single-use token is refused (on any replica: the use is counted in PostgreSQL).
    let reused = DataPlane::run_to_exit(
        enrolling(cluster.addr, &cluster, "reused", &token1),
        patience(),
    )
    .await?;
    assert!(!reused.status.success(), "{reused:?}");
    assert!(
        reused.output.contains("bootstrap token refused"),
        "{}",
        reused.output
    );

    // An expired token is refused.
    let (expiring, short) = create_token(admin, json!({"ttl": 1})).await?;
    wait_until("the token expired", patience(), || async {
        Ok((token_json(admin, &expiring).await?["status"] == "expired").then_some(()))
    })
    .await?;
    let expired = DataPlane::run_to_exit(
        enrolling(cluster.addr, &cluster, "expired", &short),
        patience(),
    )
    .await?;
    assert!(
        expired.output.contains("bootstrap token refused"),
        "{}",
        expired.output
    );

    // A revoked token is refused, and stays listed as revoked.
    let (revoked_id, revoked) = create_token(admin, json!({"max_uses": 5})).await?;
    let deleted = admin
        .delete(&format!("/clustering/tokens/{revoked_id}"))
        .await?;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    assert_eq!(token_json(admin, &revoked_id).await?["status"], "revoked");
    let refused = DataPlane::run_to_exit(
        enrolling(cluster.addr, &cluster, "revoked", &revoked),
        patience(),
    )
    .await?;
    assert!(
        refused.output.contains("bootstrap token refused"),
        "{}",
        refused.output
    );
    let unknown = admin
        .delete(&format!("/clustering/tokens/{}", uuid::Uuid::new_v4()))
        .await?;
    assert_eq!(unknown.status, 404, "{unknown:?}");

    let logs = cluster.cp.logs();
    for why in [
        "bootstrap token used up",
        "bootstrap token expired",
        "bootstrap token revoked",
    ] {
        assert!(logs.contains(why), "CP log names why: {why}");
    }

    // A restart reuses the cached certificate: the token is not used again.
    let dp = &mut dps[0];
    dp.restart().await?;
    dp.wait_until_connected(patience()).await?;
    dp.wait_for_log("using the cached cluster certificate", patience())
        .await?;
    assert_eq!(token_json(admin, &id1).await?["uses"], 1);

    // No secret in any log line.
    for token in [&token1, &token2, &token3, &short, &revoked] {
        assert!(
            !cluster.cp.logs().contains(token.as_str()),
            "token in the CP log"
        );
        for dp in &dps {
            assert!(!dp.all_logs().contains(token.as_str()), "token in a DP log");
        }
    }
    assert!(!cluster.cp.logs().contains("PRIVATE KEY"));
    Ok(())
}

/// A raw gRPC channel over TLS that verifies the CP against the cluster CA and presents no
/// client certificate, as an enrolling data plane does.
async fn anonymous_channel(cluster: &Cluster) -> Result<tonic::transport::Channel> {
    let config =
        gatehouse_shared::cluster::enrol_client_config(&cluster.pki.ca_cert(), "localhost")?;
    let addr = cluster.addr;
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls_pki_types::ServerName::try_from("localhost")
                .map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_with_connector(connector)
            .await?,
    )
}

#[tokio::test]
async fn forged_csrs_are_refused_and_an_anonymous_connection_reaches_only_enrolment() -> Result<()>
{
    let cluster = enrolling_cluster(&[]).await?;
    let admin = cluster.admin();
    let (id, token) = create_token(admin, json!({"max_uses": 3})).await?;
    let channel = anonymous_channel(&cluster).await?;
    let mut client = EnrolmentClient::new(channel.clone());
    let node = uuid::Uuid::new_v4();
    let request = |csr: Vec<u8>, node: uuid::Uuid| EnrolRequest {
        token: token.clone(),
        node_id: node.to_string(),
        csr: csr.into(),
        hostname: "forger".into(),
    };

    // A CSR for another node's name.
    let (_, other) = new_key_and_csr(uuid::Uuid::new_v4())?;
    let refused = client
        .enrol(request(other, node))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("requested name not allowed"),
        "{refused:?}"
    );

    // A CSR asking for a DNS name (the policy allows none).
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["cp.example".to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let named = params.serialize_request(&key)?.der().to_vec();
    let refused = client
        .enrol(request(named, node))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("DNS:cp.example"), "{refused:?}");

    // A CSR whose signature is not its key's (the public key swapped for another one).
    let (_, mine) = new_key_and_csr(node)?;
    let (_, theirs) = new_key_and_csr(node)?;
    let forged = swap_public_key(&mine, &theirs).context("swap the key")?;
    let refused = client
        .enrol(request(forged, node))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("signature"), "{refused:?}");

    // Another key type.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
    let p384 = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .der()
        .to_vec();
    let refused = client
        .enrol(request(p384, node))
        .await
        .expect_err("refused");
    assert!(refused.message().contains("key type"), "{refused:?}");

    // None of them used the token.
    assert_eq!(token_json(admin, &id).await?["uses"], 0);

    // The same anonymous connection cannot open a sync stream: ConfigSync is not served to
    // connections without a client certificate.
    let mut sync = ConfigSyncClient::new(channel.clone());
    let hello = DataPlaneMessage {
        kind: Some(data_plane_message::Kind::Hello(Hello {
            node_id: node.to_string(),
            ..Hello::default()
        })),
    };
    let refused = sync
        .sync(tokio_stream_once(hello))
        .await
        .map(|_| ())
        .expect_err("no sync stream without a client certificate");
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");

    // A good CSR with the token works, once per use.
    let (_, good) = new_key_and_csr(node)?;
    let issued = client.enrol(request(good, node)).await?.into_inner();
    assert!(issued.certificate.contains("BEGIN CERTIFICATE"));
    assert_eq!(token_json(admin, &id).await?["uses"], 1);
    Ok(())
}

/// A stream of one message.
fn tokio_stream_once(
    message: DataPlaneMessage,
) -> impl futures_util::Stream<Item = DataPlaneMessage> + Send + 'static {
    futures_util::stream::iter([message])
}

/// `mine` with the subjectPublicKeyInfo of `theirs` (same length for two P-256 keys): a
/// request whose signature does not verify with the key it carries.
fn swap_public_key(mine: &[u8], theirs: &[u8]) -> Option<Vec<u8>> {
    // The uncompressed P-256 point: 0x04 then 64 bytes, after the BIT STRING header 03 42 00.
    let find = |der: &[u8]| der.windows(4).position(|w| w == [0x03, 0x42, 0x00, 0x04]);
    let (at_mine, at_theirs) = (find(mine)?, find(theirs)?);
    let mut forged = mine.to_vec();
    forged[at_mine..at_mine + 68].copy_from_slice(&theirs[at_theirs..at_theirs + 68]);
    Some(forged)
}

/// Sends requests through `url` until `stop`; counts them and the failed ones.
fn load(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let sent = AtomicU64::new(0);
        let mut failed = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            sent.fetch_add(1, Ordering::Relaxed);
            match client.get(&url).send().await {
                Ok(res) if res.status() == 200 => {}
                Ok(res) => failed.push(format!("status {}", res.status())),
                Err(error) => failed.push(error.to_string()),
            }
        }
        (sent.load(Ordering::Relaxed), failed)
    })
}

/// Some requests were sent and none failed.
fn assert_all_ok(sent: u64, failed: &[String]) {
    assert!(sent > 0);
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(5)]
    );
}

/// `dp` connected once: its stream was never dropped.
fn assert_one_stream(dp: &DataPlane) {
    assert_eq!(
        dp.log_lines("connected to control plane").len(),
        1,
        "{}",
        dp.logs()
    );
}

/// A route `/load` on the DPs, proxied to `url`; returns the config version it made.
async fn route_load(admin: &Admin, url: &str) -> Result<i64> {
    let service = admin
        .post_json("/services", &json!({"name": "load", "url": url}))
        .await?;
    ensure!(service.status == 201, "{service:?}");
    let route = admin
        .post_json(
            "/services/load/routes",
            &json!({"paths": ["/load"], "strip_path": true}),
        )
        .await?;
    ensure!(route.status == 201, "{route:?}");
    gatehouse_tests::config_version(admin).await
}

/// A route `/load` on the DPs, proxied to the CP's own Admin API `/status`.
async fn route_to_admin(cp: &ControlPlane) -> Result<i64> {
    route_load(cp.admin(), &format!("http://{}/status", cp.admin_addr())).await
}

/// A minimal HTTP/1.1 upstream answering every request `200 ok` (keep-alive), independent of
/// the control plane.
async fn ok_upstream() -> Result<SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn a_sixty_second_certificate_renews_under_load_without_a_failed_request() -> Result<()> {
    let cluster = enrolling_cluster(&["--cluster-dp-cert-lifetime", "60"]).await?;
    let admin = cluster.admin();
    let version = route_to_admin(&cluster.cp).await?;
    let (_, token) = create_token(admin, json!({})).await?;
    let mut dp = DataPlane::start(enrolling(cluster.addr, &cluster, "short", &token)).await?;
    dp.wait_for_version(version, patience()).await?;
    let first = registered(admin, &dp).await?;
    let first_serial = first["cert_details"]["serial"].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(format!("{}/load", dp.proxy_url()?), stop.clone());
    // Two renewals: at 40 s and 80 s of a 60 s lifetime each (two thirds in).
    let started = Instant::now();
    let renewals = wait_until(
        "two certificate renewals",
        Duration::from_secs(120),
        || async {
            let n = dp.log_lines("cluster certificate renewed").len();
            Ok((n >= 2).then_some(n))
        },
    )
    .await?;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = loader.await?;
    println!(
        "renewals={renewals} in {took:?}; requests={sent} failed={}",
        failed.len()
    );
    assert_all_ok(sent, &failed);
    // One stream all along: renewal did not reconnect.
    assert_one_stream(&dp);
    assert!(dp.log_lines("renewal failed").is_empty(), "{}", dp.logs());
    let now = registered(admin, &dp).await?;
    assert_ne!(now["cert_details"]["serial"], first_serial, "{now}");
    let metrics = reqwest::get(format!("{}/metrics", dp.status_url()))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("gatehouse_cluster_certificate_renewals_total{result=\"ok\"} 2")
            || metrics.contains("gatehouse_cluster_certificate_renewals_total{result=\"ok\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_cluster_certificate_expiry_days "),
        "{metrics}"
    );

    // A restart uses the renewed certificate from the cache and connects with it.
    dp.restart().await?;
    dp.wait_until_connected(patience()).await?;
    dp.wait_for_log("using the cached cluster certificate", patience())
        .await?;
    Ok(())
}

#[tokio::test]
async fn revocation_ends_the_stream_on_every_replica() -> Result<()> {
    let cluster = enrolling_cluster(&[]).await?;
    let mut args = cluster.cp_args.clone();
    args.extend(["--cluster-listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let (cp2, addr2) = start_cp(&cluster.db, &args).await?;
    let (_, token) = create_token(cluster.admin(), json!({"max_uses": 2})).await?;
    // dp1 on replica 1, dp2 on replica 2.
    let dp1 = DataPlane::start(enrolling(cluster.addr, &cluster, "dp1", &token)).await?;
    let dp2 = DataPlane::start(enrolling(addr2, &cluster, "dp2", &token)).await?;
    for dp in [&dp1, &dp2] {
        dp.wait_until_connected(patience()).await?;
        registered(cluster.admin(), dp).await?;
    }

    // Each revoked through the replica that does not hold its stream: dp1 forgotten
    // (DELETE /clustering/data-planes/{id}), dp2 only revoked (.../certificates).
    for (dp, admin, suffix) in [
        (&dp1, cp2.admin(), ""),
        (&dp2, cluster.admin(), "/certificates"),
    ] {
        let id = dp.node_id()?;
        let how = format!("DELETE /clustering/data-planes/{{id}}{suffix}");
        let started = Instant::now();
        let res = admin
            .delete(&format!("/clustering/data-planes/{id}{suffix}"))
            .await?;
        assert_eq!(res.status, 204, "{res:?}");
        dp.wait_for_log("certificate was revoked", patience())
            .await?;
        println!(
            "{how}: stream ended {:?} after the revocation",
            started.elapsed()
        );
        dp.wait_until_disconnected(patience()).await?;
    }
    // It cannot come back with that certificate, on either replica.
    let mut dp1 = dp1;
    dp1.restart().await?;
    dp1.wait_for_log("certificate is revoked", patience())
        .await?;
    let refused = "data plane refused: its certificate is revoked";
    assert!(cluster.cp.logs().contains(refused) || cp2.logs().contains(refused));
    assert_eq!(
        dp1.status().await?["control_plane"]["connected"],
        json!(false)
    );
    Ok(())
}

#[tokio::test]
async fn a_control_plane_outage_over_the_renewal_point_costs_no_request_and_renews_after()
-> Result<()> {
    let mut cluster = enrolling_cluster(&["--cluster-dp-cert-lifetime", "60"]).await?;
    let upstream = ok_upstream().await?;
    let version = route_load(cluster.admin(), &format!("http://{upstream}")).await?;
    let (_, token) = create_token(cluster.admin(), json!({})).await?;
    let dp = DataPlane::start(enrolling(cluster.addr, &cluster, "outage", &token)).await?;
    dp.wait_for_version(version, patience()).await?;
    let serial = registered(cluster.admin(), &dp).await?["cert_details"]["serial"].clone();

    // Under load, the CP dies before the renewal point (40 s) and comes back after it, before
    // expiry (60 s).
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(format!("{}/load", dp.proxy_url()?), stop.clone());
    kill_process(cluster.cp.pid()).await?;
    dp.wait_until_disconnected(patience()).await?;
    let (not_before, not_after) = cached_validity(&dp)?;
    let renew_at = gatehouse_shared::cluster::enrol::renew_at(not_before, not_after);
    wait_past("the renewal point passed with the CP down", renew_at + 2).await?;
    cluster.restart_cp().await?;
    dp.wait_until_connected(patience()).await?;
    dp.wait_for_log("cluster certificate renewed", patience())
        .await?;
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = loader.await?;
    println!("requests={sent} failed={} during the outage", failed.len());
    assert!(sent > 0);
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    let now = registered(cluster.admin(), &dp).await?;
    assert_ne!(now["cert_details"]["serial"], serial, "{now}");
    Ok(())
}

/// (notBefore, notAfter) of the certificate `dp` keeps in its cache directory.
fn cached_validity(dp: &DataPlane) -> Result<(i64, i64)> {
    let text = std::fs::read_to_string(dp.cache_dir().join(IDENTITY_FILE))?;
    let facts = gatehouse_shared::x509::check_key_pair(&text, &text)?;
    Ok((facts.not_before, facts.not_after))
}

/// Waits (up to a minute) until the clock is past `when` (Unix seconds).
async fn wait_past(what: &str, when: i64) -> Result<()> {
    wait_until(what, Duration::from_secs(60), || async {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Ok((now > when).then_some(()))
    })
    .await
}

/// Runs `gatehouse-cp pki ARGS...`.
async fn pki_command(args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new(cp_bin()?)
        .arg("pki")
        .args(args)
        .output()
        .await?;
    ensure!(out.status.success(), "pki {args:?}: {out:?}");
    Ok(())
}

/// Waits until `dp`'s registry entry shows a certificate issued by `ca` (a subject).
async fn renewed_under(admin: &Admin, dp: &DataPlane, ca: &str) -> Result<()> {
    let id = dp.node_id()?;
    wait_until(
        "the data plane renewed under the new CA",
        Duration::from_secs(60),
        || async {
            Ok(data_plane(admin, &id)
                .await?
                .filter(|e| e["cert_details"]["issuer"] == json!(ca)))
        },
    )
    .await?;
    Ok(())
}

/// Subjects of the certificates in the PEM file `path`.
fn subjects(path: &std::path::Path) -> Result<Vec<String>> {
    let pem = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let certs = gatehouse_shared::x509::parse_certificates(&pem).map_err(anyhow::Error::msg)?;
    certs
        .iter()
        .map(|der| {
            gatehouse_shared::x509::cert_facts(der)
                .map(|facts| facts.subject)
                .map_err(anyhow::Error::msg)
        })
        .collect()
}

#[tokio::test]
async fn a_ca_rotation_under_load_moves_every_data_plane_to_the_new_ca_without_a_failed_request()
-> Result<()> {
    let cluster = enrolling_cluster(&["--cluster-dp-cert-lifetime", "30"]).await?;
    let admin = cluster.admin();
    let upstream = ok_upstream().await?;
    let version = route_load(admin, &format!("http://{upstream}")).await?;
    let (_, token) = create_token(admin, json!({"max_uses": 2})).await?;
    let mut dps = Vec::new();
    for name in ["rot1", "rot2"] {
        let dp = DataPlane::start(enrolling(cluster.addr, &cluster, name, &token)).await?;
        dp.wait_for_version(version, patience()).await?;
        dps.push(dp);
    }
    let ca_dir = cluster.pki.dir().to_string_lossy().into_owned();
    let old_ca = subjects(&cluster.pki.ca_cert())?;
    assert_eq!(old_ca.len(), 1);
    for dp in &dps {
        let entry = registered(admin, dp).await?;
        assert_eq!(entry["cert_details"]["issuer"], json!(old_ca[0]), "{entry}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = dps
        .iter()
        .map(|dp| Ok(load(format!("{}/load", dp.proxy_url()?), stop.clone())))
        .collect::<Result<_>>()?;
    let started = Instant::now();

    // 1. A new CA: both trusted, the new one signs.
    pki_command(&["rotate-ca", "--ca-dir", &ca_dir]).await?;
    let bundle = subjects(&cluster.pki.ca_cert())?;
    assert_eq!(bundle.len(), 2);
    assert_eq!(bundle[1], old_ca[0]);
    let new_ca = bundle[0].clone();
    // 2. Every data plane renews under the new CA and learns the bundle.
    for dp in &dps {
        renewed_under(admin, dp, &new_ca).await?;
        // The registry shows the renewal when the CP signed it; the data plane writes the
        // bundle it came with right after.
        let cached = dp.cache_dir().join("cluster-ca.pem");
        wait_until("the data plane trusts both CAs", patience(), || async {
            Ok((subjects(&cached)? == bundle).then_some(()))
        })
        .await?;
    }
    // 3. The CP's own certificate from the new CA (picked up by the running CP).
    let reloads = || {
        cluster
            .cp
            .logs()
            .matches("cluster certificate reloaded")
            .count()
    };
    let before = reloads();
    pki_command(&["issue", "--ca-dir", &ca_dir, "--cp", "--force"]).await?;
    wait_until("the CP reloaded cp.crt", patience(), || async {
        Ok((reloads() > before).then_some(()))
    })
    .await?;
    // 4. The old CA goes: from the CP now, from each data plane at its next renewal.
    pki_command(&["rotate-ca", "--ca-dir", &ca_dir, "--finish"]).await?;
    assert_eq!(subjects(&cluster.pki.ca_cert())?, vec![new_ca.clone()]);
    for dp in &dps {
        let trust = dp.cache_dir().join("cluster-ca.pem");
        wait_until(
            "the data plane dropped the old CA",
            Duration::from_secs(60),
            || async { Ok((subjects(&trust)? == vec![new_ca.clone()]).then_some(())) },
        )
        .await?;
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for loader in loaders {
        let (n, failed) = loader.await?;
        sent += n;
        assert_all_ok(n, &failed);
    }
    println!("CA rotation under load: {took:?}; requests={sent} failed=0");
    for dp in &dps {
        // One stream all along.
        assert_one_stream(dp);
        assert!(dp.log_lines("renewal failed").is_empty(), "{}", dp.logs());
    }
    // A new connection verifies the CP with the new CA alone.
    let dp = &mut dps[0];
    dp.restart().await?;
    dp.wait_until_connected(patience()).await?;
    Ok(())
}

/// The leaf certificate the cluster listener at `addr` serves, verified against `ca`.
async fn served_certificate(
    addr: SocketAddr,
    ca: &std::path::Path,
) -> Result<(Vec<u8>, gatehouse_shared::x509::CertFacts)> {
    let config = gatehouse_tests::tls_client_config(Some(ca), None)?;
    match gatehouse_tests::tls_handshake(addr, "localhost", config).await? {
        gatehouse_tests::Handshake::Accept { peer_certificates } => {
            let leaf = peer_certificates.first().context("no certificate")?;
            let facts = gatehouse_shared::x509::cert_facts(leaf).map_err(anyhow::Error::msg)?;
            Ok((leaf.to_vec(), facts))
        }
        gatehouse_tests::Handshake::Refuse(why) => anyhow::bail!("handshake refused: {why}"),
    }
}

/// A CP with `--cluster-cert auto` and 30 s certificates, and its PKI directory.
async fn auto_cp(
    db: &gatehouse_tests::TestDb,
) -> Result<(ControlPlane, SocketAddr, gatehouse_tests::Pki)> {
    let pki = gatehouse_tests::Pki::new(&[])?;
    let args: Vec<String> = [
        "--cluster-mtls",
        "pki",
        "--cluster-cert",
        "auto",
        "--cluster-ca-cert",
        &pki.ca_cert().to_string_lossy(),
        "--cluster-ca-key",
        &pki.ca_key().to_string_lossy(),
        "--cluster-dp-cert-lifetime",
        "30",
    ]
    .map(str::to_owned)
    .to_vec();
    let (cp, addr) = start_cp(db, &args).await?;
    Ok((cp, addr, pki))
}

/// Starts a DP enrolled at `addr` with a new token, trusting `ca`.
async fn enrolled_dp(
    cp: &ControlPlane,
    addr: SocketAddr,
    ca: &std::path::Path,
    name: &str,
) -> Result<DataPlane> {
    let (_, token) = create_token(cp.admin(), json!({})).await?;
    DataPlane::start(
        DataPlaneOptions::new(addr)
            .ca_cert(Some(ca))
            .env("GATEHOUSE_CLUSTER_BOOTSTRAP_TOKEN", &token)
            .name(name),
    )
    .await
}

#[tokio::test]
async fn the_control_plane_issues_and_renews_its_own_certificate_without_dropping_a_stream()
-> Result<()> {
    let db = gatehouse_tests::test_db().await?;
    let (cp, addr, pki) = auto_cp(&db).await?;
    let ca = pki.ca_cert();
    let ca_subject = subjects(&ca)?.remove(0);

    // A short-lived certificate from the cluster CA, for the default names.
    let (first, facts) = served_certificate(addr, &ca).await?;
    assert_eq!(facts.issuer, ca_subject);
    assert!(facts.not_after - facts.not_before <= 40, "{facts:?}");
    assert!(facts.sans.iter().any(|san| san == "127.0.0.1"), "{facts:?}");

    let admin = cp.admin();
    let upstream = ok_upstream().await?;
    let version = route_load(admin, &format!("http://{upstream}")).await?;
    let dp = enrolled_dp(&cp, addr, &ca, "auto").await?;
    dp.wait_for_version(version, patience()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(format!("{}/load", dp.proxy_url()?), stop.clone());

    // Renewed two thirds into its 30 s; new connections get the new one.
    cp.wait_for_log("control plane certificate renewed", Duration::from_secs(60))
        .await?;
    let (second, facts) = served_certificate(addr, &ca).await?;
    assert_ne!(second, first, "a new certificate is served");
    assert_eq!(facts.issuer, ca_subject);

    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = loader.await?;
    println!(
        "own CP certificate renewed under load: requests={sent} failed={}",
        failed.len()
    );
    assert_all_ok(sent, &failed);
    assert_one_stream(&dp);
    Ok(())
}

#[tokio::test]
async fn with_its_own_certificate_the_control_plane_stays_on_the_old_ca_until_the_rotation_ends()
-> Result<()> {
    let db = gatehouse_tests::test_db().await?;
    let (cp, addr, pki) = auto_cp(&db).await?;
    let ca = pki.ca_cert();
    let old_ca = subjects(&ca)?.remove(0);
    let admin = cp.admin();
    let upstream = ok_upstream().await?;
    let version = route_load(admin, &format!("http://{upstream}")).await?;
    let mut dp = enrolled_dp(&cp, addr, &ca, "auto-rot").await?;
    dp.wait_for_version(version, patience()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(format!("{}/load", dp.proxy_url()?), stop.clone());

    let ca_dir = pki.dir().to_string_lossy().into_owned();
    pki_command(&["rotate-ca", "--ca-dir", &ca_dir]).await?;
    let new_ca = subjects(&ca)?.remove(0);
    renewed_under(admin, &dp, &new_ca).await?;
    let trust = dp.cache_dir().join("cluster-ca.pem");
    wait_until("the data plane trusts both CAs", patience(), || async {
        Ok((subjects(&trust)?.len() == 2).then_some(()))
    })
    .await?;
    // The DP has the bundle now, and the CP still serves a certificate of the old CA (a DP
    // that has not renewed trusts only that one).
    let (_, served) = served_certificate(addr, &ca).await?;
    assert_eq!(served.issuer, old_ca);

    // pki init's cp.crt is not used with --cluster-cert auto.
    std::fs::remove_file(pki.dir().join("cp.crt"))?;
    pki_command(&["rotate-ca", "--ca-dir", &ca_dir, "--finish"]).await?;
    wait_until(
        "the CP serves a new-CA certificate and the DP dropped the old CA",
        Duration::from_secs(60),
        || async {
            let (_, served) = served_certificate(addr, &ca).await?;
            Ok(
                (served.issuer == new_ca && subjects(&trust)? == vec![new_ca.clone()])
                    .then_some(()),
            )
        },
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = loader.await?;
    println!(
        "CA rotation with --cluster-cert auto: requests={sent} failed={}",
        failed.len()
    );
    assert_all_ok(sent, &failed);
    assert_one_stream(&dp);
    dp.restart().await?;
    dp.wait_until_connected(patience()).await?;
    Ok(())
}

/// Options of a data plane that enrols with `token` and knows only `pin` of the cluster CA.
fn enrolling_with_pin(addr: SocketAddr, name: &str, token: &str, pin: &str) -> DataPlaneOptions {
    DataPlaneOptions::new(addr)
        .env("GATEHOUSE_CLUSTER_BOOTSTRAP_TOKEN", token)
        .env("GATEHOUSE_CLUSTER_CA_PIN", pin)
        .name(name)
}

/// The pin of the CA certificate at `path`, computed by openssl (not by Gatehouse).
async fn openssl_pin(path: &std::path::Path) -> Result<String> {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | sha256sum",
        path.display()
    );
    let out = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .await?;
    ensure!(out.status.success(), "openssl: {out:?}");
    let text = String::from_utf8(out.stdout)?;
    let hex = text.split_whitespace().next().context("sha256sum output")?;
    Ok(format!("sha256:{hex}"))
}

#[tokio::test]
async fn a_data_plane_enrols_with_only_a_pin_of_the_ca_and_a_wrong_pin_uses_no_token() -> Result<()>
{
    let cluster = enrolling_cluster(&[]).await?;
    let admin = cluster.admin();
    let ca = cluster.pki.ca_cert();

    // `pki pin` prints what openssl computes.
    let pin = openssl_pin(&ca).await?;
    let printed = tokio::process::Command::new(cp_bin()?)
        .args(["pki", "pin", "--cert"])
        .arg(&ca)
        .output()
        .await?;
    ensure!(printed.status.success(), "pki pin: {printed:?}");
    let printed = String::from_utf8(printed.stdout)?;
    assert_eq!(
        printed.split_whitespace().next(),
        Some(pin.as_str()),
        "{printed}"
    );
    assert!(printed.contains(&subjects(&ca)?[0]), "{printed}");

    let (id, token) = create_token(admin, json!({"max_uses": 1})).await?;
    // A pin that matches no CA of the bundle: the node stops before it sends the token.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let refused = DataPlane::run_to_exit(
        enrolling_with_pin(cluster.addr, "wrongpin", &token, &wrong),
        patience(),
    )
    .await?;
    assert_eq!(refused.status.code(), Some(64), "{}", refused.output);
    assert!(
        refused.output.contains("matches --cluster-ca-pin"),
        "{}",
        refused.output
    );
    assert_eq!(token_json(admin, &id).await?["uses"], 0);

    // The right pin: the node trusts the pinned CA, enrols, connects.
    let dp = DataPlane::start(enrolling_with_pin(cluster.addr, "pinned", &token, &pin)).await?;
    dp.wait_until_connected(patience()).await?;
    let entry = registered(admin, &dp).await?;
    assert_eq!(
        entry["cert_details"]["issuer"],
        json!(subjects(&ca)?[0]),
        "{entry}"
    );
    assert_eq!(
        subjects(&dp.cache_dir().join("cluster-ca.pem"))?,
        subjects(&ca)?
    );
    assert_eq!(token_json(admin, &id).await?["uses"], 1);
    assert!(!dp.all_logs().contains(token.as_str()), "token in a DP log");
    Ok(())
}

#[tokio::test]
async fn renew_now_reissues_every_data_plane_or_one_at_once() -> Result<()> {
    // A day-long lifetime: nothing renews by itself during the test.
    let cluster = enrolling_cluster(&[]).await?;
    let admin = cluster.admin();
    let (_, token) = create_token(admin, json!({"max_uses": 2})).await?;
    let mut dps = Vec::new();
    for name in ["now1", "now2"] {
        let dp = DataPlane::start(enrolling(cluster.addr, &cluster, name, &token)).await?;
        dp.wait_until_connected(patience()).await?;
        dps.push(dp);
    }
    let serial_of = |entry: &Value| entry["cert_details"]["serial"].clone();
    let mut serials = Vec::new();
    for dp in &dps {
        serials.push(serial_of(&registered(admin, dp).await?));
    }
    let renewed = |dp: &DataPlane, before: Value| {
        let id = dp.node_id();
        async move {
            let id = id?;
            wait_until("the data plane renewed now", patience(), || async {
                Ok(data_plane(admin, &id).await?.filter(|e| {
                    e["cert_details"]["serial"] != before && e["connected"] == json!(true)
                }))
            })
            .await
            .map(|entry| serial_of(&entry))
        }
    };

    // One data plane.
    let id = dps[0].node_id()?;
    let asked = admin
        .post_json(
            &format!("/clustering/data-planes/{id}/renew-certificates"),
            &json!({}),
        )
        .await?;
    assert_eq!(asked.status, 202, "{asked:?}");
    assert!(asked.body["requested_at"].is_i64(), "{asked:?}");
    serials[0] = renewed(&dps[0], serials[0].clone()).await?;
    assert_eq!(
        serial_of(&registered(admin, &dps[1]).await?),
        serials[1],
        "the other one was not asked"
    );
    dps[0]
        .wait_for_log("cluster certificate renewed", patience())
        .await?;

    // Unknown or malformed ids.
    let unknown = admin
        .post_json(
            &format!(
                "/clustering/data-planes/{}/renew-certificates",
                uuid::Uuid::new_v4()
            ),
            &json!({}),
        )
        .await?;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let malformed = admin
        .post_json(
            "/clustering/data-planes/not-a-uuid/renew-certificates",
            &json!({}),
        )
        .await?;
    assert_eq!(malformed.status, 404, "{malformed:?}");

    // Every data plane, on one stream each; asked once per request.
    let asked = admin
        .post_json("/clustering/data-planes/renew-certificates", &json!({}))
        .await?;
    assert_eq!(asked.status, 202, "{asked:?}");
    for (dp, before) in dps.iter().zip(serials.clone()) {
        renewed(dp, before).await?;
        assert_one_stream(dp);
    }
    // Both requests are in the audit trail.
    let audit = admin.get("/audit?entity=cluster_certificates").await?;
    assert_eq!(audit.status, 200, "{audit:?}");
    let paths: Vec<&str> = audit.body["data"]
        .as_array()
        .context("audit data")?
        .iter()
        .filter_map(|row| row["path"].as_str())
        .collect();
    assert!(
        paths.contains(&"/clustering/data-planes/renew-certificates"),
        "{audit:?}"
    );
    assert!(
        paths.contains(&format!("/clustering/data-planes/{id}/renew-certificates").as_str()),
        "{audit:?}"
    );
    let asked_lines = cluster
        .cp
        .logs()
        .matches("asked to renew its certificate now")
        .count();
    assert_eq!(asked_lines, 3, "{}", cluster.cp.logs());
    Ok(())
}

#[tokio::test]
async fn refused_enrolment_attempts_are_limited_per_source_address() -> Result<()> {
    let cluster = enrolling_cluster(&["--cluster-enrol-max-failures", "3"]).await?;
    let (_, token) = create_token(cluster.admin(), json!({})).await?;
    let mut client = EnrolmentClient::new(anonymous_channel(&cluster).await?);
    let node = uuid::Uuid::new_v4();
    let request = |token: &str| -> Result<EnrolRequest> {
        Ok(EnrolRequest {
            token: token.to_owned(),
            node_id: node.to_string(),
            csr: new_key_and_csr(node)?.1.into(),
            hostname: "guesser".into(),
        })
    };
    // Three wrong guesses are checked and refused...
    for _ in 0..3 {
        let refused = client
            .enrol(request("ghbt_wrong")?)
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    }
    // ... then this address is refused unchecked, even with a good token, which stays unused.
    let limited = client.enrol(request(&token)?).await.expect_err("limited");
    assert_eq!(
        limited.code(),
        tonic::Code::ResourceExhausted,
        "{limited:?}"
    );
    let tokens = cluster.admin().get("/clustering/tokens").await?;
    assert_eq!(tokens.body["data"][0]["uses"], 0, "{tokens:?}");
    // The budget refills (3 per minute: one attempt in 20 s).
    let enrolled = wait_until("the address may try again", Duration::from_secs(40), || {
        let mut client = client.clone();
        let request = request(&token);
        async move {
            match client.enrol(request?).await {
                Ok(answer) => Ok(Some(answer.into_inner().certificate)),
                Err(status) if status.code() == tonic::Code::ResourceExhausted => Ok(None),
                Err(status) => Err(anyhow::anyhow!("unexpected: {status:?}")),
            }
        }
    })
    .await?;
    assert!(enrolled.contains("BEGIN CERTIFICATE"));
    Ok(())
}

#[tokio::test]
async fn a_data_plane_whose_certificate_expired_while_cut_off_enrols_again_with_its_token()
-> Result<()> {
    let mut cluster = enrolling_cluster(&["--cluster-dp-cert-lifetime", "30"]).await?;
    let admin = cluster.admin();
    let (id, token) = create_token(admin, json!({"max_uses": 2})).await?;
    let dp = DataPlane::start(enrolling(cluster.addr, &cluster, "cutoff", &token)).await?;
    dp.wait_until_connected(patience()).await?;
    let serial = registered(admin, &dp).await?["cert_details"]["serial"].clone();

    // The CP is away for longer than the certificate lives.
    kill_process(cluster.cp.pid()).await?;
    dp.wait_until_disconnected(patience()).await?;
    let (_, not_after) = cached_validity(&dp)?;
    wait_past("the certificate expired with the CP down", not_after + 1).await?;
    cluster.restart_cp().await?;
    dp.wait_for_log("enrolled with the control plane", patience())
        .await?;
    dp.wait_until_connected(patience()).await?;
    let admin = cluster.admin();
    let entry = registered(admin, &dp).await?;
    assert_ne!(entry["cert_details"]["serial"], serial, "{entry}");
    assert_eq!(token_json(admin, &id).await?["uses"], 2);
    assert!(
        dp.logs()
            .contains("expired while no control plane was reachable")
    );
    Ok(())
}

#[tokio::test]
async fn a_ca_rotation_across_two_replicas_with_renew_now_fails_no_request() -> Result<()> {
    // Day-long certificates: only renew-now moves the data planes, not their renewal points.
    let cluster = enrolling_cluster(&[]).await?;
    let (cp2, addr2) = start_cp(&cluster.db, &cluster.cp_args).await?;
    let admin = cluster.admin();
    let upstream = ok_upstream().await?;
    let version = route_load(admin, &format!("http://{upstream}")).await?;
    let (_, token) = create_token(admin, json!({"max_uses": 2})).await?;
    // One data plane on each replica.
    let mut dps = Vec::new();
    for (name, addr) in [("rep1", cluster.addr), ("rep2", addr2)] {
        let dp = DataPlane::start(enrolling(addr, &cluster, name, &token)).await?;
        dp.wait_for_version(version, patience()).await?;
        dps.push(dp);
    }
    let ca_dir = cluster.pki.dir().to_string_lossy().into_owned();
    let old_ca = subjects(&cluster.pki.ca_cert())?;
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = dps
        .iter()
        .map(|dp| Ok(load(format!("{}/load", dp.proxy_url()?), stop.clone())))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    let renew_all = || async {
        let asked = admin
            .post_json("/clustering/data-planes/renew-certificates", &json!({}))
            .await?;
        ensure!(asked.status == 202, "{asked:?}");
        Ok(())
    };

    // 1. New CA; 2. renew now, asked on replica 1 only: each replica asks its own streams.
    pki_command(&["rotate-ca", "--ca-dir", &ca_dir]).await?;
    let bundle = subjects(&cluster.pki.ca_cert())?;
    let new_ca = bundle[0].clone();
    renew_all().await?;
    for dp in &dps {
        renewed_under(admin, dp, &new_ca).await?;
        let cached = dp.cache_dir().join("cluster-ca.pem");
        wait_until("the data plane trusts both CAs", patience(), || async {
            Ok((subjects(&cached)? == bundle).then_some(()))
        })
        .await?;
    }
    let moved = started.elapsed();
    // 3. Both replicas' certificate from the new CA (each reloads the shared file).
    let reloads = |cp: &ControlPlane| cp.logs().matches("cluster certificate reloaded").count();
    let before = [reloads(&cluster.cp), reloads(&cp2)];
    pki_command(&["issue", "--ca-dir", &ca_dir, "--cp", "--force"]).await?;
    wait_until("both replicas reloaded cp.crt", patience(), || async {
        Ok((reloads(&cluster.cp) > before[0] && reloads(&cp2) > before[1]).then_some(()))
    })
    .await?;
    // 4. The old CA goes; 5. renew now again: every data plane drops it at once.
    pki_command(&["rotate-ca", "--ca-dir", &ca_dir, "--finish"]).await?;
    renew_all().await?;
    for dp in &dps {
        let trust = dp.cache_dir().join("cluster-ca.pem");
        wait_until("the data plane dropped the old CA", patience(), || async {
            Ok((subjects(&trust)? == vec![new_ca.clone()]).then_some(()))
        })
        .await?;
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for loader in loaders {
        let (n, failed) = loader.await?;
        sent += n;
        assert_all_ok(n, &failed);
    }
    println!(
        "CA rotation across two replicas with renew-now: every DP on the new CA after {moved:?}, \
         old CA gone after {took:?}; requests={sent} failed=0"
    );
    assert_ne!(old_ca[0], new_ca);
    for dp in &dps {
        assert_one_stream(dp);
        assert!(dp.log_lines("renewal failed").is_empty(), "{}", dp.logs());
    }
    // The replica that was not asked did the asking for its own stream.
    assert!(
        cp2.logs().contains("asked to renew its certificate now"),
        "{}",
        cp2.logs()
    );
    // New connections verify each replica with the new CA alone.
    for dp in &mut dps {
        dp.restart().await?;
        dp.wait_until_connected(patience()).await?;
    }
    Ok(())
}
