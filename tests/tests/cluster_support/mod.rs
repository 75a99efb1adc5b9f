//! Helpers shared by the cluster tests (`cluster_sync.rs`, `cluster_trust.rs`,
//! `cluster_resilience.rs`): a control plane with a cluster listener on a fresh database and
//! a fresh PKI, data planes of it, and writes that bump the config version.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::time::Instant;

use gatehouse_tests::certs::{self, Algorithm};
use gatehouse_tests::{
    Admin, ControlPlane, DataPlane, DataPlaneOptions, Pki, TestDb, config_version, patience,
    test_db, wait_until,
};

/// How often the latency measurements poll (tighter than the harness default).
pub(crate) const FAST_POLL: Duration = Duration::from_millis(5);

/// A control plane with its cluster listener, on its own database, with its own PKI. Fields
/// drop in declaration order: the process stops before the PKI and the database go.
pub(crate) struct Cluster {
    pub(crate) cp: ControlPlane,
    /// The CP's cluster listener.
    pub(crate) addr: SocketAddr,
    /// The arguments the CP was started with (to restart it alike).
    pub(crate) cp_args: Vec<String>,
    pub(crate) pki: Pki,
    pub(crate) db: TestDb,
}

impl Cluster {
    /// A fresh database and PKI (with certificates for `dps`), and a CP in `pki` mode with
    /// `extra` arguments.
    pub(crate) async fn start(dps: &[&str], extra: &[&str]) -> Result<Cluster> {
        Self::start_with(dps, extra, false).await
    }

    /// [`Cluster::start`] with no DP certificate and the CA key given to the CP
    /// (`--cluster-ca-key`): data planes enrol with bootstrap tokens.
    pub(crate) async fn start_enrolling(extra: &[&str]) -> Result<Cluster> {
        Self::start_with(&[], extra, true).await
    }

    async fn start_with(dps: &[&str], extra: &[&str], ca_key: bool) -> Result<Cluster> {
        let db = test_db().await?;
        let pki = Pki::new(dps)?;
        let mut cp_args = pki.cp_args();
        if ca_key {
            cp_args.push("--cluster-ca-key".to_owned());
            cp_args.push(pki.ca_key().to_string_lossy().into_owned());
        }
        cp_args.extend(extra.iter().map(|s| (*s).to_owned()));
        let (cp, addr) = start_cp(&db, &cp_args).await?;
        Ok(Cluster {
            cp,
            addr,
            cp_args,
            pki,
            db,
        })
    }

    pub(crate) fn admin(&self) -> &Admin {
        self.cp.admin()
    }

    /// Options of DP `name` of this cluster (`pki` mode, its own certificate).
    pub(crate) fn dp_options(&self, name: &str) -> DataPlaneOptions {
        DataPlaneOptions::new(self.addr).pki(&self.pki, name)
    }

    /// Starts DP `name` of this cluster (it may not be ready yet).
    pub(crate) async fn dp(&self, name: &str) -> Result<DataPlane> {
        DataPlane::start(self.dp_options(name)).await
    }

    /// Kills the CP (SIGKILL, as a crash) and waits until the DPs notice.
    pub(crate) async fn kill_cp(&mut self, dps: &[&DataPlane]) -> Result<()> {
        kill_process(self.cp.pid()).await?;
        for dp in dps {
            dp.wait_until_disconnected(patience()).await?;
        }
        Ok(())
    }

    /// Starts the CP again on the same database, PKI and cluster port.
    pub(crate) async fn restart_cp(&mut self) -> Result<()> {
        let mut args = self.cp_args.clone();
        args.extend(["--cluster-listen".to_owned(), self.addr.to_string()]);
        // The killed process's port is free once the kernel closed its sockets, which may
        // take a moment; another test may also hold it briefly (a client port).
        let cp = wait_until(
            &format!("a control plane listening on {}", self.addr),
            patience(),
            || async { Ok(Some(start_cp(&self.db, &args).await?.0)) },
        )
        .await?;
        self.cp = cp;
        Ok(())
    }
}

/// Sends SIGKILL to `pid` and waits until it is dead (gone or a zombie).
pub(crate) async fn kill_process(pid: u32) -> Result<()> {
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await?;
    ensure!(status.success(), "kill -KILL {pid}: {status}");
    wait_until(&format!("process {pid} dead"), patience(), || async {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        Ok((stat.is_empty() || state.starts_with('Z') || state.starts_with('X')).then_some(()))
    })
    .await
}

/// Starts `gatehouse-cp serve` on `db` with `args`, its listeners on port 0 unless `args` name
/// them, and returns it with its cluster address.
pub(crate) async fn start_cp(db: &TestDb, args: &[String]) -> Result<(ControlPlane, SocketAddr)> {
    let cp = start_plain_cp(db, args).await?;
    let addr = cp
        .cluster_addr()
        .context("the control plane logged no cluster listener address")?;
    Ok((cp, addr))
}

/// Starts `gatehouse-cp serve` on `db` with `args` without expecting a cluster listener.
pub(crate) async fn start_plain_cp(db: &TestDb, args: &[String]) -> Result<ControlPlane> {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    for flag in ["--cluster-listen", "--status-listen"] {
        if !args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        {
            all.extend([flag, "127.0.0.1:0"]);
        }
    }
    ControlPlane::start_with(db, &all, &[]).await
}

/// Creates a certificate for `sni` (a fresh self-signed ECDSA pair); returns its id.
pub(crate) async fn create_certificate(admin: &Admin, sni: &str) -> Result<String> {
    let pem = certs::self_signed(&[sni], Algorithm::Ecdsa, 30)?;
    let created = admin
        .post_json(
            "/certificates",
            &json!({"cert": pem.cert, "key": pem.key, "snis": [sni]}),
        )
        .await?;
    ensure!(created.status == 201, "POST /certificates: {created:?}");
    Ok(created.body["id"].as_str().context("id")?.to_owned())
}

/// Replaces certificate `id`'s pair with a fresh one for `sni`.
pub(crate) async fn rotate_certificate(admin: &Admin, id: &str, sni: &str) -> Result<()> {
    let pem = certs::self_signed(&[sni], Algorithm::Ecdsa, 30)?;
    let patched = admin
        .patch_json(
            &format!("/certificates/{id}"),
            &json!({"cert": pem.cert, "key": pem.key}),
        )
        .await?;
    ensure!(
        patched.status == 200,
        "PATCH /certificates/{id}: {patched:?}"
    );
    Ok(())
}

/// One write through the Admin API (a new consumer); returns the config version it made.
/// Only for tests with a single writer: the version is read back from `/status`.
pub(crate) async fn write(admin: &Admin) -> Result<i64> {
    let name = format!("c-{}", uuid::Uuid::new_v4().simple());
    let created = admin
        .post_json("/consumers", &json!({"username": name}))
        .await?;
    ensure!(created.status == 201, "POST /consumers: {created:?}");
    config_version(admin).await
}

/// Waits until every DP reports `version` (or later), and returns their `/status`es.
pub(crate) async fn converge(dps: &[&DataPlane], version: i64) -> Result<Vec<Value>> {
    let mut statuses = Vec::new();
    for dp in dps {
        statuses.push(dp.wait_for_version(version, patience()).await?);
    }
    Ok(statuses)
}

/// Polls every DP's `/status` every [`FAST_POLL`] until all report `version` or later;
/// returns how long that took from `since`.
pub(crate) async fn time_until_applied(
    dps: &[&DataPlane],
    version: i64,
    since: Instant,
) -> Result<Duration> {
    let deadline = Instant::now() + patience();
    loop {
        let mut all = true;
        for dp in dps {
            let status = dp.status().await?;
            if status["config_version"]
                .as_i64()
                .is_none_or(|v| v < version)
            {
                all = false;
                break;
            }
        }
        if all {
            return Ok(since.elapsed());
        }
        if Instant::now() >= deadline {
            bail!(
                "not every DP applied version {version} within {:?}",
                patience()
            );
        }
        tokio::time::sleep(FAST_POLL).await;
    }
}

/// The config hash a DP status reports.
pub(crate) fn hash(status: &Value) -> Result<String> {
    Ok(status["config_hash"]
        .as_str()
        .with_context(|| format!("no config_hash in {status}"))?
        .to_owned())
}

/// Whether `text` names rustls' unknown-issuer verification failure.
pub(crate) fn mentions_unknown_issuer(text: &str) -> bool {
    let text = text.to_lowercase();
    text.contains("unknownissuer") || text.contains("unknown issuer")
}

/// How many times `needle` occurs in `logs`.
pub(crate) fn count(logs: &str, needle: &str) -> usize {
    logs.matches(needle).count()
}
