//! The fleet of `tests/fleet.rs` (processes in network namespaces) and its open-loop load.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use gatehouse_tests::{
    Admin, ControlPlane, DataPlane, DataPlaneOptions, NetnsPostgres, Network, Pki, config_version,
    patience, wait_until,
};

const PG_PORT: u16 = 5432;
const ADMIN_PORT: u16 = 8001;
const CLUSTER_PORT: u16 = 8005;
const STATUS_PORT: u16 = 8100;
const PROXY_PORT: u16 = 8000;
const UPSTREAM_PORT: u16 = 8080;
/// Every address of the fleet's network may reach PostgreSQL without a password.
const TRUSTED: &str = "198.18.0.0/24";
const CPS: [&str; 2] = ["cp1", "cp2"];
/// The name dp1 is given for both replicas (two addresses in its hosts file).
const CP_NAME: &str = "cp.fleet.test";
const DPS: [&str; 3] = ["dp1", "dp2", "dp3"];

/// Seconds from an environment variable, else `default`.
pub fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// The running fleet.
pub struct Fleet {
    pub network: Network,
    pub pg: NetnsPostgres,
    pub pki: Pki,
    cps: BTreeMap<String, Option<ControlPlane>>,
    dps: BTreeMap<String, DataPlane>,
    upstream: Child,
    client: reqwest::Client,
}

impl Fleet {
    /// Starts PostgreSQL, the upstream, both replicas and the three data planes.
    pub async fn start(network: Network) -> Result<Fleet> {
        let pg = NetnsPostgres::start(
            network.exec_prefix("pg")?,
            network.addr("pg")?,
            PG_PORT,
            TRUSTED,
        )
        .await?;
        let upstream = start_upstream(&network).await?;
        let pki = Pki::new(&DPS)?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut fleet = Fleet {
            network,
            pg,
            pki,
            cps: BTreeMap::new(),
            dps: BTreeMap::new(),
            upstream,
            client,
        };
        for cp in CPS {
            fleet.copy_cp_cert(cp)?;
            fleet.restart_cp(cp).await?;
        }
        let list = CPS
            .iter()
            .map(|cp| fleet.cluster_addr(cp))
            .collect::<Result<Vec<_>>>()?
            .join(",");
        // dp1 knows the replicas by one name with two addresses (its own hosts file); the
        // others by a list.
        let name_entries = CPS
            .iter()
            .map(|cp| Ok((fleet.network.addr(cp)?, CP_NAME)))
            .collect::<Result<Vec<_>>>()?;
        fleet.network.hosts("dp1", &name_entries)?;
        for dp in DPS {
            let addr = fleet.network.addr(dp)?;
            let cps = if dp == "dp1" {
                format!("{CP_NAME}:{CLUSTER_PORT}")
            } else {
                list.clone()
            };
            let options = DataPlaneOptions::new(([127, 0, 0, 1], CLUSTER_PORT).into())
                .pki(&fleet.pki, dp)
                .control_plane_list(&cps)
                .status_listen(&format!("{addr}:{STATUS_PORT}"))
                .proxy_listen(&format!("{addr}:{PROXY_PORT}"))
                .proxy_ssl_listen("off")
                .exec_prefix(fleet.network.exec_prefix(dp)?);
            let started = DataPlane::start(options).await?;
            fleet.dps.insert(dp.to_owned(), started);
        }
        Ok(fleet)
    }

    /// A service and a route to the upstream, applied everywhere and answering through every
    /// data plane.
    pub async fn baseline(&mut self) -> Result<()> {
        let upstream = format!("http://{}:{UPSTREAM_PORT}/", self.network.addr("up")?);
        let admin = self.admin("cp1")?;
        let res = admin
            .post_form("/services", &[("name", "app"), ("url", &upstream)])
            .await?;
        ensure!(res.status == 201, "{res:?}");
        let res = admin
            .post_form("/services/app/routes", &[("name", "app"), ("paths[]", "/")])
            .await?;
        ensure!(res.status == 201, "{res:?}");
        let version = self.current_version().await?;
        self.converge(version).await?;
        for dp in DPS {
            self.first_proxied_ok(dp, Instant::now()).await?;
        }
        Ok(())
    }

    /// `(name, proxy URL)` of every data plane.
    pub fn load_targets(&self) -> Result<Vec<(String, String)>> {
        DPS.iter()
            .map(|dp| Ok(((*dp).to_owned(), format!("{}/", self.dp(dp)?.proxy_url()?))))
            .collect()
    }

    pub fn cp(&self, name: &str) -> Result<&ControlPlane> {
        self.cps
            .get(name)
            .and_then(Option::as_ref)
            .with_context(|| format!("{name} is not running"))
    }

    pub fn admin(&self, cp: &str) -> Result<&Admin> {
        Ok(self.cp(cp)?.admin())
    }

    pub fn dp(&self, name: &str) -> Result<&DataPlane> {
        self.dps.get(name).with_context(|| format!("no {name}"))
    }

    pub fn dp_mut(&mut self, name: &str) -> Result<&mut DataPlane> {
        self.dps.get_mut(name).with_context(|| format!("no {name}"))
    }

    /// `IP:8005` of a replica.
    pub fn cluster_addr(&self, cp: &str) -> Result<String> {
        Ok(format!("{}:{CLUSTER_PORT}", self.network.addr(cp)?))
    }

    /// Each replica's cluster certificate is a copy of its own (`cp-<name>.crt`), so one can
    /// be replaced without the other.
    fn copy_cp_cert(&self, cp: &str) -> Result<()> {
        for (from, to) in [
            (
                self.pki.cp_cert(),
                self.pki.dir().join(format!("cp-{cp}.crt")),
            ),
            (
                self.pki.cp_key(),
                self.pki.dir().join(format!("cp-{cp}.key")),
            ),
        ] {
            // Written beside, then renamed: the watcher never sees half a file.
            let temp = to.with_extension("tmp");
            std::fs::copy(&from, &temp)?;
            std::fs::rename(&temp, &to)?;
        }
        Ok(())
    }

    /// Issues a new certificate for the replicas and gives it to `cp` only.
    pub fn rotate_cp_cert(&self, cp: &str) -> Result<()> {
        self.pki.rotate_cp()?;
        self.copy_cp_cert(cp)
    }

    /// (Re)starts replica `cp` on its address.
    pub async fn restart_cp(&mut self, cp: &str) -> Result<()> {
        let addr = self.network.addr(cp)?;
        let dir = self.pki.dir();
        let args = [
            "--admin-listen".to_owned(),
            format!("{addr}:{ADMIN_PORT}"),
            // A namespace address, reachable only from the test's own namespaces (no route
            // out): the suite drives the Admin API without credentials.
            "--admin-insecure-no-auth".to_owned(),
            "--cluster-listen".to_owned(),
            format!("{addr}:{CLUSTER_PORT}"),
            "--status-listen".to_owned(),
            format!("{addr}:{STATUS_PORT}"),
            "--cluster-mtls".to_owned(),
            "pki".to_owned(),
            "--cluster-cert".to_owned(),
            dir.join(format!("cp-{cp}.crt")).display().to_string(),
            "--cluster-cert-key".to_owned(),
            dir.join(format!("cp-{cp}.key")).display().to_string(),
            "--cluster-ca-cert".to_owned(),
            self.pki.ca_cert().display().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started =
            ControlPlane::start_in(&self.network.exec_prefix(cp)?, &self.pg.url(), &args).await?;
        self.cps.insert(cp.to_owned(), Some(started));
        Ok(())
    }

    /// `kill -9` of replica `cp`.
    pub async fn kill_cp(&mut self, cp: &str) -> Result<()> {
        let pid = self.cp(cp)?.pid();
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .await?;
        ensure!(status.success(), "kill -KILL {pid}: {status}");
        self.cps.insert(cp.to_owned(), None);
        Ok(())
    }

    /// The pids of the running replicas.
    pub fn cp_pids(&self) -> Vec<u32> {
        self.cps.values().flatten().map(ControlPlane::pid).collect()
    }

    /// Sync streams opened so far at the running replicas (`data plane connected` lines).
    pub fn stream_opens(&self) -> usize {
        self.cps
            .values()
            .flatten()
            .map(|cp| cp.logs().matches("data plane connected").count())
            .sum()
    }

    /// Which replica each data plane is connected to, once all are.
    pub async fn connected_to_each(&self) -> Result<BTreeMap<String, String>> {
        let mut by_addr = HashMap::new();
        for cp in CPS {
            by_addr.insert(self.cluster_addr(cp)?, cp.to_owned());
        }
        let mut out = BTreeMap::new();
        for dp in DPS {
            let status = self
                .dp(dp)?
                .wait_for_status("connected", patience(), |s| {
                    s["control_plane"]["connected_to"].is_string()
                })
                .await?;
            let to = status["control_plane"]["connected_to"]
                .as_str()
                .unwrap_or_default();
            let cp = by_addr
                .iter()
                .find(|(addr, _)| is_addr(to, addr))
                .map(|(_, cp)| cp)
                .with_context(|| format!("{dp} connected to an unknown address {to}"))?;
            out.insert(dp.to_owned(), cp.clone());
        }
        Ok(out)
    }

    /// The config version, read through any running replica.
    pub async fn current_version(&self) -> Result<i64> {
        for cp in CPS {
            if let Ok(cp) = self.cp(cp) {
                return config_version(cp.admin()).await;
            }
        }
        bail!("no replica runs")
    }

    /// Creates a service without routes through `cp` (a change that moves the config version
    /// and touches no traffic); returns the new version.
    pub async fn write_marker(&self, cp: &str) -> Result<i64> {
        let name = format!("marker-{}", uuid::Uuid::new_v4().simple());
        self.create_service(cp, &name).await?;
        config_version(self.admin(cp)?).await
    }

    /// Creates service `name` through `cp`; fails unless 201.
    pub async fn create_service(&self, cp: &str, name: &str) -> Result<String> {
        let upstream = format!("http://{}:{UPSTREAM_PORT}/", self.network.addr("up")?);
        let res = self
            .admin(cp)?
            .post_form("/services", &[("name", name), ("url", &upstream)])
            .await?;
        ensure!(res.status == 201, "POST /services {name} on {cp}: {res:?}");
        Ok(name.to_owned())
    }

    /// Waits until every running data plane runs `version` (or newer); how long it took.
    pub async fn converge(&self, version: i64) -> Result<Duration> {
        let started = Instant::now();
        for dp in self.dps.values() {
            dp.wait_for_status("the version", patience(), |s| {
                s["config_version"].as_i64() >= Some(version)
            })
            .await?;
        }
        Ok(started.elapsed())
    }

    /// A request to the Admin API of `cp` with its own clock: `GET path`, or `POST path` with
    /// a service named `name`. Returns status, JSON body and time taken.
    pub async fn timed_admin(
        &self,
        cp: &str,
        method: &str,
        path: &str,
        name: &str,
    ) -> Result<(u16, Value, Duration)> {
        let url = self.admin(cp)?.url(path);
        let upstream = format!("http://{}:{UPSTREAM_PORT}/", self.network.addr("up")?);
        let request = match method {
            "GET" => self.client.get(&url),
            _ => self
                .client
                .post(&url)
                .form(&[("name", name), ("url", upstream.as_str())]),
        };
        let started = Instant::now();
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let code = response.status().as_u16();
        let text = response.text().await?;
        let took = started.elapsed();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((code, body, took))
    }

    /// Waits until `dp` proxies a request (200 `ok`); the time since `started`.
    pub async fn first_proxied_ok(&self, dp: &str, started: Instant) -> Result<Duration> {
        let dp = self.dp(dp)?;
        wait_until("a proxied 200", patience(), || async {
            let (code, body) = self.proxied_via(dp).await?;
            Ok((code == 200 && body == "ok").then(|| started.elapsed()))
        })
        .await
    }

    /// `GET /` through `dp`'s proxy.
    pub async fn proxied_via(&self, dp: &DataPlane) -> Result<(u16, String)> {
        let url = format!("{}/", dp.proxy_url()?);
        let response = self.client.get(&url).send().await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// Another data plane in `like`'s namespace (other ports, `like`'s certificate), on
    /// `cache_dir` (else a fresh one), syncing from `list` (else both replicas).
    pub async fn start_extra_dp(
        &self,
        like: &str,
        cache_dir: Option<&Path>,
        list: Option<String>,
    ) -> Result<DataPlane> {
        let addr = self.network.addr(like)?;
        let list = match list {
            Some(list) => list,
            None => CPS
                .iter()
                .map(|cp| self.cluster_addr(cp))
                .collect::<Result<Vec<_>>>()?
                .join(","),
        };
        let mut options = DataPlaneOptions::new(([127, 0, 0, 1], CLUSTER_PORT).into())
            .pki(&self.pki, like)
            .name(&format!("{like}-extra"))
            .control_plane_list(&list)
            .status_listen(&format!("{addr}:{}", STATUS_PORT + 1))
            .proxy_listen(&format!("{addr}:{}", PROXY_PORT + 1))
            .proxy_ssl_listen("off")
            .exec_prefix(self.network.exec_prefix(like)?);
        if let Some(dir) = cache_dir {
            options = options.cache_dir(dir);
        }
        DataPlane::start(options).await
    }

    /// Starts the relay (`gatehouse-test-relay`) in the `wan` namespace: `wan:9001` → cp1,
    /// `wan:9002` → cp2, with `delay_ms` each way and `loss` % emulated loss. Returns it and
    /// the control-plane list through it.
    pub async fn start_relay(&self, delay_ms: u32, loss: u32) -> Result<(Child, String)> {
        let wan = self.network.addr("wan")?;
        let mut pairs = Vec::new();
        let mut list = Vec::new();
        for (n, cp) in CPS.iter().enumerate() {
            let listen = format!("{wan}:{}", 9001 + n);
            pairs.push(format!("{listen}={}", self.cluster_addr(cp)?));
            list.push(listen);
        }
        let prefix = self.network.exec_prefix("wan")?;
        let mut child = Command::new(&prefix[0])
            .args(&prefix[1..])
            .arg(env!("CARGO_BIN_EXE_gatehouse-test-relay"))
            .arg(delay_ms.to_string())
            .arg(loss.to_string())
            .args(&pairs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning the relay")?;
        let stdout = child.stdout.take().context("relay stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        for _ in CPS {
            let line = tokio::time::timeout(patience(), lines.next_line())
                .await
                .context("the relay did not start")??
                .context("the relay exited")?;
            ensure!(line.contains("relay listening"), "{line}");
        }
        Ok((child, list.join(",")))
    }

    /// No private key in any log.
    pub fn check_logs(&self) -> Result<()> {
        for cp in self.cps.values().flatten() {
            ensure!(!cp.logs().contains("PRIVATE KEY"), "a CP logged a key");
        }
        for dp in self.dps.values() {
            ensure!(!dp.all_logs().contains("PRIVATE KEY"), "a DP logged a key");
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.upstream.start_kill();
    }
}

/// Whether `connected_to` (`/status`: `IP:PORT`, or `NAME:PORT (IP:PORT)`) is `addr`.
pub fn is_addr(connected_to: &str, addr: &str) -> bool {
    connected_to == addr || connected_to.ends_with(&format!("({addr})"))
}

/// Starts the upstream in its namespace and waits until it listens.
async fn start_upstream(network: &Network) -> Result<Child> {
    let addr = format!("{}:{UPSTREAM_PORT}", network.addr("up")?);
    let prefix = network.exec_prefix("up")?;
    let mut child = Command::new(&prefix[0])
        .args(&prefix[1..])
        .arg(env!("CARGO_BIN_EXE_gatehouse-test-upstream"))
        .arg(&addr)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning the upstream")?;
    let stdout = child.stdout.take().context("upstream stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(patience(), lines.next_line())
        .await
        .context("the upstream did not start")??
        .context("the upstream exited")?;
    ensure!(line.contains("upstream listening"), "{line}");
    Ok(child)
}

// --- the load -------------------------------------------------------------------------------

/// Counts of requests sent and answered.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// The first failures, with their reason.
    pub failures: Vec<String>,
}

impl Totals {
    /// The counts since `earlier` (failures listed: all of them so far).
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            sent: self.sent - earlier.sent,
            ok: self.ok - earlier.ok,
            failed: self.failed - earlier.failed,
            failures: self.failures[earlier.failures.len().min(self.failures.len())..].to_vec(),
        }
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent, {} ok, {} failed",
            self.sent, self.ok, self.failed
        )?;
        if !self.failures.is_empty() {
            write!(f, " ({:?})", self.failures)?;
        }
        Ok(())
    }
}

/// One target's switches: paused, requests in flight, and its client (replaced on resume, so
/// no connection to a process that was stopped meanwhile is reused).
struct Target {
    paused: AtomicBool,
    in_flight: AtomicU64,
    client: Mutex<reqwest::Client>,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// An open-loop load: each target gets a request every `1/rate` s whatever the previous ones
/// do; every response is counted.
pub struct Load {
    counters: Arc<Counters>,
    paused: HashMap<String, Arc<Target>>,
    stop: watch::Sender<bool>,
    tickers: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Load {
    pub fn start(targets: Vec<(String, String)>, rate: u32) -> Load {
        let counters = Arc::new(Counters {
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let mut paused = HashMap::new();
        let mut tickers = Vec::new();
        for (name, url) in targets {
            let flag = Arc::new(Target {
                paused: AtomicBool::new(false),
                in_flight: AtomicU64::new(0),
                client: Mutex::new(client()),
            });
            paused.insert(name.clone(), flag.clone());
            let counters = counters.clone();
            let mut stopped = stopped.clone();
            tickers.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
                ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                    if flag.paused.load(Ordering::Relaxed) {
                        continue;
                    }
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    flag.in_flight.fetch_add(1, Ordering::Relaxed);
                    let client = flag
                        .client
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    let (url, counters, name, target) =
                        (url.clone(), counters.clone(), name.clone(), flag.clone());
                    tokio::spawn(async move {
                        let outcome = match client.get(&url).send().await {
                            Ok(response) => {
                                let code = response.status().as_u16();
                                match response.text().await {
                                    Ok(body) if code == 200 && body == "ok" => Ok(()),
                                    Ok(body) => Err(format!("{code} {body}")),
                                    Err(e) => Err(format!("{code} body: {e}")),
                                }
                            }
                            Err(e) => Err(format!("{e:#}")),
                        };
                        match outcome {
                            Ok(()) => {
                                counters.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(reason) => {
                                let mut failures = counters
                                    .failures
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner);
                                if failures.len() < 50 {
                                    failures.push(format!("{name}: {reason}"));
                                }
                                counters.failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        target.in_flight.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            }));
        }
        Load {
            counters,
            paused,
            stop,
            tickers,
            started: Instant::now(),
        }
    }

    /// Stops sending to `target` (`true`; waits until its requests in flight are answered)
    /// or starts again with a fresh client.
    pub async fn pause(&self, target: &str, paused: bool) -> Result<()> {
        let flag = self.paused.get(target).context("no such target")?;
        if paused {
            flag.paused.store(true, Ordering::Relaxed);
            wait_until("requests in flight answered", patience(), || async {
                Ok((flag.in_flight.load(Ordering::Relaxed) == 0).then_some(()))
            })
            .await
        } else {
            *flag.client.lock().unwrap_or_else(PoisonError::into_inner) = client();
            flag.paused.store(false, Ordering::Relaxed);
            Ok(())
        }
    }

    /// The counts so far (requests in flight are sent but neither ok nor failed).
    pub fn totals(&self) -> Totals {
        Totals {
            sent: self.counters.sent.load(Ordering::Relaxed),
            ok: self.counters.ok.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            failures: self
                .counters
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Lets the load run for `period` (a measurement window, not a synchronisation).
    pub async fn run_for(&self, period: Duration) {
        tokio::time::sleep(period).await;
    }

    /// Stops sending, waits for every answer, and returns the totals.
    pub async fn stop(mut self) -> Totals {
        let _ = self.stop.send(true);
        for ticker in std::mem::take(&mut self.tickers) {
            let _ = ticker.await;
        }
        let answered = wait_until("every response", patience(), || async {
            let t = self.totals();
            Ok((t.ok + t.failed == t.sent).then_some(()))
        })
        .await;
        let totals = self.totals();
        if let Err(error) = answered {
            println!("FLEET load: {error}: {totals}");
        }
        println!(
            "FLEET load: {:.0} s at {} targets",
            self.started.elapsed().as_secs_f64(),
            self.paused.len()
        );
        totals
    }
}
