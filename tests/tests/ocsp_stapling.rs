//! OCSP stapling (issue 13, "OCSP stapling"), end to end against a responder we did not write:
//! `openssl ocsp -index ... -port ... -rsigner ... -CA ...` on a free loopback port, a CA and
//! two leaves made with `openssl` whose authority information access names it (one valid, one
//! revoked in the index), a control plane fetching and checking the answers
//! (`--ocsp-stapling-interval 1`), a data plane stapling them, and `openssl s_client -status`
//! reading the staple. Then the responder stops: the last good staple stays until its
//! nextUpdate (`-nmin 1`), and the certificate is served without one after.

mod cluster_support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use cluster_support::*;
use gatehouse_tests::{TempDir, clustering_status, patience, wait_until};

const GOOD_SNI: &str = "good.ocsp.test";
const REVOKED_SNI: &str = "revoked.ocsp.test";

/// Runs `openssl args...` in `dir`; fails with its stderr.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A free loopback port (bound and released).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Issues `<name>.crt`/`<name>.key` from `ca.crt`/`ca.key` with serial `serial` (hex) for
/// `sni`, naming `ocsp_url` as its OCSP responder.
fn issue_leaf(dir: &Path, name: &str, serial: &str, sni: &str, ocsp_url: &str) -> Result<()> {
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        format!(
            "subjectAltName=DNS:{sni}\nauthorityInfoAccess=OCSP;URI:{ocsp_url}\n\
             basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n"
        ),
    )?;
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={sni}"),
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &format!("0x{serial}"),
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &format!("{name}.crt"),
        ],
    )
}

/// What `openssl s_client -status` prints about the staple `addr` sends for `sni`.
async fn staple_seen(addr: SocketAddr, sni: &str) -> Result<String> {
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            sni,
            "-status",
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
        .find("OCSP response")
        .with_context(|| format!("no OCSP section in the s_client output: {stdout}"))?;
    let end = stdout[start..]
        .find("---")
        .map_or(stdout.len(), |end| start + end);
    Ok(stdout[start..end].to_owned())
}

/// Waits until `addr` staples an answer for `sni` containing every one of `needles`.
async fn wait_staple(addr: SocketAddr, sni: &str, needles: &[&str]) -> Result<String> {
    wait_until(
        &format!("a staple for {sni} with {needles:?}"),
        patience(),
        || async {
            let seen = staple_seen(addr, sni).await?;
            Ok(needles
                .iter()
                .all(|needle| seen.contains(needle))
                .then_some(seen))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn data_planes_staple_answers_of_a_real_ocsp_responder() -> Result<()> {
    let dir = TempDir::new("ocsp-stapling")?;
    let path = dir.path();
    let port = free_port()?;
    let ocsp_url = format!("http://127.0.0.1:{port}/");
    openssl(
        path,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=OCSP Test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    issue_leaf(path, "good", "1001", GOOD_SNI, &ocsp_url)?;
    issue_leaf(path, "revoked", "1002", REVOKED_SNI, &ocsp_url)?;
    // The responder's database, as `openssl ca` writes it: status, expiry, revocation
    // date[,reason], serial, file, subject.
    std::fs::write(
        path.join("index.txt"),
        format!(
            "V\t301231235959Z\t\t1001\tunknown\t/CN={GOOD_SNI}\n\
             R\t301231235959Z\t251201000000Z,keyCompromise\t1002\tunknown\t/CN={REVOKED_SNI}\n"
        ),
    )?;
    let mut responder = tokio::process::Command::new("openssl")
        .args([
            "ocsp",
            "-index",
            "index.txt",
            "-port",
            &port.to_string(),
            "-rsigner",
            "ca.crt",
            "-rkey",
            "ca.key",
            "-CA",
            "ca.crt",
            "-nmin",
            "1",
            "-ignore_err",
        ])
        .current_dir(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting openssl ocsp")?;
    // Ready when it answers a real request (`openssl ocsp` as a client): a bare connection
    // that closes without a request wedges OpenSSL 3.0's single-threaded responder.
    wait_until("the OCSP responder to answer", patience(), || async {
        let out = tokio::process::Command::new("openssl")
            .args([
                "ocsp",
                "-issuer",
                "ca.crt",
                "-cert",
                "good.crt",
                "-url",
                &ocsp_url,
                "-CAfile",
                "ca.crt",
                "-no_nonce",
                "-timeout",
                "5",
            ])
            .current_dir(path)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        Ok(stdout.contains("good.crt: good").then_some(()))
    })
    .await?;

    let cluster = Cluster::start(&["dp1"], &["--ocsp-stapling-interval", "1"]).await?;
    let dp = cluster.dp("dp1").await?;
    dp.wait_until_ready(patience()).await?;
    let ca_pem = std::fs::read_to_string(path.join("ca.crt"))?;
    for (name, sni) in [("good", GOOD_SNI), ("revoked", REVOKED_SNI)] {
        let leaf = std::fs::read_to_string(path.join(format!("{name}.crt")))?;
        let key = std::fs::read_to_string(path.join(format!("{name}.key")))?;
        let created = cluster
            .admin()
            .post_json(
                "/certificates",
                &json!({ "cert": format!("{leaf}{ca_pem}"), "key": key, "snis": [sni] }),
            )
            .await?;
        ensure!(created.status == 201, "{created:?}");
    }
    let addr = dp.proxy_ssl_addr()?;

    let good = wait_staple(
        addr,
        GOOD_SNI,
        &["OCSP Response Status: successful", "Cert Status: good"],
    )
    .await?;
    ensure!(good.contains("Serial Number: 1001"), "{good}");
    let revoked = wait_staple(
        addr,
        REVOKED_SNI,
        &["OCSP Response Status: successful", "Cert Status: revoked"],
    )
    .await?;
    ensure!(
        revoked.contains("Revocation Reason: keyCompromise"),
        "{revoked}"
    );
    cluster
        .cp
        .wait_for_log("OCSP responder says the certificate is revoked", patience())
        .await?;

    // A second replica on the same database (not the lease holder) builds the same snapshot,
    // staples included.
    let (cp2, _) = start_cp(&cluster.db, &cluster.cp_args).await?;
    let (one, two) = wait_until(
        "both replicas at one config version",
        patience(),
        || async {
            let one = clustering_status(cluster.admin()).await?;
            let two = clustering_status(cp2.admin()).await?;
            let same =
                one["config_version"].is_i64() && one["config_version"] == two["config_version"];
            Ok(same.then_some((one, two)))
        },
    )
    .await?;
    ensure!(
        one["config_hash"].is_string() && one["config_hash"] == two["config_hash"],
        "replicas built different snapshots: {one} / {two}"
    );
    cp2.stop().await?;

    // The responder goes away: the next refresh (half-way through the minute of validity)
    // fails and the last good staple stays; at its nextUpdate it goes.
    responder.kill().await?;
    cluster
        .cp
        .wait_for_log(
            "cannot refresh the OCSP staple; keeping the last good one",
            Duration::from_secs(60).max(patience()),
        )
        .await?;
    let kept = staple_seen(addr, GOOD_SNI).await?;
    ensure!(
        kept.contains("Cert Status: good"),
        "staple gone early: {kept}"
    );
    cluster
        .cp
        .wait_for_log(
            "serving without a staple",
            Duration::from_secs(90).max(patience()),
        )
        .await?;
    let gone = wait_until("the expired staple to go", patience(), || async {
        let seen = staple_seen(addr, GOOD_SNI).await?;
        Ok(seen.contains("no response sent").then_some(seen))
    })
    .await;
    if let Err(error) = gone {
        bail!("an expired staple is still served: {error:#}");
    }
    Ok(())
}
