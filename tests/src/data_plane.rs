//! A real `gatehouse-dp` process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use gatehouse_shared::cluster::ClusterMtls;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::time::{Instant, timeout};

use crate::cluster::log_field;
use crate::pki::{Pki, path_arg};
use crate::target_dir::BuildDirs;
use crate::temp_dir::TempDir;
use crate::wait::wait_until;

/// Overrides where the `gatehouse-dp` binary is.
const ENV_DP_BIN: &str = "GATEHOUSE_DP_BIN";
/// How long `gatehouse-dp` may take to log that its status listener listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`DataPlane::stop`] waits after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The log line written once the status listener accepts connections (with `addr=IP:PORT`).
const READY_LINE: &str = "status listener listening";
/// The log line written for each bound proxy listener (with `addr=IP:PORT tls=BOOL`), before
/// [`READY_LINE`].
const PROXY_LINE: &str = "proxy listener listening";
/// Timeout of one status request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The path of the `gatehouse-dp` binary: `$GATEHOUSE_DP_BIN`, else the one Cargo built beside
/// the test executable (`<target>/debug/gatehouse-dp`). Fails if it does not exist.
pub fn dp_bin() -> Result<PathBuf> {
    let path = match std::env::var_os(ENV_DP_BIN) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => BuildDirs::get()?.profile.join("gatehouse-dp"),
    };
    if !path.is_file() {
        bail!(
            "gatehouse-dp binary not found at {}: run cargo build --bins (deploy/test.sh does it)",
            path.display()
        );
    }
    Ok(path)
}

/// How to start a `gatehouse-dp`: its cluster settings, cache directory and extra arguments.
///
/// ```no_run
/// # async fn example(cp: std::net::SocketAddr) -> anyhow::Result<()> {
/// use gatehouse_tests::{DataPlane, DataPlaneOptions, Pki};
/// let pki = Pki::new(&["dp1"])?;
/// let dp = DataPlane::start(DataPlaneOptions::new(cp).pki(&pki, "dp1").label("region", "eu")).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DataPlaneOptions {
    control_plane: SocketAddr,
    server_name: String,
    mode: Option<ClusterMtls>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    labels: Vec<(String, String)>,
    advertise_version: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    name: String,
    echo: bool,
    proxy_listen: String,
    proxy_ssl_listen: String,
    /// Replaces `control_plane` on the command line (a comma-separated list).
    control_plane_list: Option<String>,
    status_listen: String,
    exec_prefix: Vec<String>,
}

/// A running `gatehouse-dp`, killed when dropped; it can be stopped and started again on the
/// same cache directory ([`DataPlane::restart`]).
///
/// Its output is kept ([`DataPlane::logs`]) and echoed to the test's stderr with a
/// `gatehouse-dp[NAME PID]` prefix.
#[derive(Debug)]
pub struct DataPlane {
    options: DataPlaneOptions,
    /// The cache directory, removed on drop unless the options named one.
    cache: CacheDir,
    /// The running process, `None` once stopped.
    child: Option<Child>,
    pid: u32,
    status_addr: SocketAddr,
    /// The plain proxy listeners of the current run.
    proxy_addrs: Vec<SocketAddr>,
    /// The TLS proxy listeners of the current run.
    proxy_ssl_addrs: Vec<SocketAddr>,
    logs: Arc<Logs>,
    /// The output of the previous runs, for failure messages.
    earlier_logs: String,
    client: reqwest::Client,
}

/// The output of a `gatehouse-dp` that exited by itself ([`DataPlane::run_to_exit`]).
#[derive(Debug)]
pub struct Exited {
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it wrote to stdout and stderr.
    pub output: String,
    /// How long it ran.
    pub ran_for: Duration,
}

#[derive(Debug)]
enum CacheDir {
    Owned(TempDir),
    Given(PathBuf),
}

/// Everything a process wrote so far, and a signal for each new line.
#[derive(Debug, Default)]
struct Logs {
    text: Mutex<String>,
    changed: Notify,
}

// === impl DataPlaneOptions ===

impl DataPlaneOptions {
    /// A DP of the CP whose cluster listener is `control_plane`, with server name `localhost`,
    /// no cluster certificate yet (see [`DataPlaneOptions::pki`], [`DataPlaneOptions::shared`])
    /// and a fresh cache directory.
    pub fn new(control_plane: SocketAddr) -> DataPlaneOptions {
        DataPlaneOptions {
            control_plane,
            server_name: "localhost".into(),
            mode: None,
            cert: None,
            key: None,
            ca: None,
            cache_dir: None,
            labels: Vec::new(),
            advertise_version: None,
            args: Vec::new(),
            env: Vec::new(),
            name: "dp".into(),
            echo: true,
            proxy_listen: "127.0.0.1:0".into(),
            proxy_ssl_listen: "127.0.0.1:0".into(),
            control_plane_list: None,
            status_listen: "127.0.0.1:0".into(),
            exec_prefix: Vec::new(),
        }
    }

    /// `--cluster-mtls pki` with DP `name`'s certificate and key and the CA of `pki`; also
    /// names the process `name` in the echoed logs.
    pub fn pki(mut self, pki: &Pki, name: &str) -> Self {
        self.mode = Some(ClusterMtls::Pki);
        self.cert = Some(pki.dp_cert(name));
        self.key = Some(pki.dp_key(name));
        self.ca = Some(pki.ca_cert());
        self.name = name.to_owned();
        self
    }

    /// `--cluster-mtls shared` with `shared.crt`/`shared.key` of `pki`.
    pub fn shared(mut self, pki: &Pki) -> Self {
        self.mode = Some(ClusterMtls::Shared);
        self.cert = Some(pki.shared_cert());
        self.key = Some(pki.shared_key());
        self.ca = None;
        self
    }

    /// `--cluster-mtls MODE`.
    pub fn mode(mut self, mode: ClusterMtls) -> Self {
        self.mode = Some(mode);
        self
    }

    /// `--cluster-cert PATH`, or none.
    pub fn cert(mut self, path: Option<&Path>) -> Self {
        self.cert = path.map(Path::to_owned);
        self
    }

    /// `--cluster-cert-key PATH`, or none.
    pub fn cert_key(mut self, path: Option<&Path>) -> Self {
        self.key = path.map(Path::to_owned);
        self
    }

    /// `--cluster-ca-cert PATH`, or none.
    pub fn ca_cert(mut self, path: Option<&Path>) -> Self {
        self.ca = path.map(Path::to_owned);
        self
    }

    /// `--cluster-server-name NAME` (default `localhost`).
    pub fn server_name(mut self, name: &str) -> Self {
        self.server_name = name.to_owned();
        self
    }

    /// `--cache-dir PATH`: use (and keep) this directory instead of a fresh one.
    pub fn cache_dir(mut self, path: &Path) -> Self {
        self.cache_dir = Some(path.to_owned());
        self
    }

    /// Adds `--label KEY=VALUE`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `--advertise-version VERSION` (hidden, test-only): the version the DP claims in `Hello`.
    pub fn advertise_version(mut self, version: &str) -> Self {
        self.advertise_version = Some(version.to_owned());
        self
    }

    /// Adds a raw argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Sets an environment variable of the child (applied after `RUST_LOG=info`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The name shown in the echoed logs (default `dp`, or the DP name given to
    /// [`DataPlaneOptions::pki`]).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// `--proxy-listen VALUE` (default `127.0.0.1:0`; `off` disables the plain listener).
    pub fn proxy_listen(mut self, value: &str) -> Self {
        self.proxy_listen = value.to_owned();
        self
    }

    /// `--proxy-ssl-listen VALUE` (default `127.0.0.1:0`; `off` disables the TLS listener).
    pub fn proxy_ssl_listen(mut self, value: &str) -> Self {
        self.proxy_ssl_listen = value.to_owned();
        self
    }

    /// Keeps the output but does not echo it to stderr (benchmarks with many DPs).
    pub fn quiet(mut self) -> Self {
        self.echo = false;
        self
    }

    /// The CP cluster address the DP connects to.
    pub fn control_plane(&self) -> SocketAddr {
        self.control_plane
    }

    /// Points the DP at another CP address (e.g. a restarted CP on a new port).
    pub fn set_control_plane(&mut self, addr: SocketAddr) {
        self.control_plane = addr;
    }

    /// Several control planes: `--cluster-control-plane` gets `list` (comma-separated).
    pub fn control_plane_list(mut self, list: &str) -> Self {
        self.control_plane_list = Some(list.to_owned());
        self
    }

    /// The status listener address (default `127.0.0.1:0`).
    pub fn status_listen(mut self, addr: &str) -> Self {
        self.status_listen = addr.to_owned();
        self
    }

    /// Runs the binary through `prefix` (e.g. `ip netns exec NS`, which execs it: the pid is
    /// the data plane's).
    pub fn exec_prefix(mut self, prefix: Vec<String>) -> Self {
        self.exec_prefix = prefix;
        self
    }

    fn command(&self, bin: &Path, cache_dir: &Path) -> Command {
        let mut cmd = match self.exec_prefix.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        let control_plane = self
            .control_plane_list
            .clone()
            .unwrap_or_else(|| self.control_plane.to_string());
        cmd.arg("--cluster-control-plane")
            .arg(control_plane)
            .args(["--cluster-server-name", &self.server_name]);
        if let Some(mode) = self.mode {
            cmd.args(["--cluster-mtls", mode.as_str()]);
        }
        for (flag, path) in [
            ("--cluster-cert", &self.cert),
            ("--cluster-cert-key", &self.key),
            ("--cluster-ca-cert", &self.ca),
        ] {
            if let Some(path) = path {
                cmd.arg(flag).arg(path_arg(path));
            }
        }
        cmd.arg("--cache-dir").arg(cache_dir);
        cmd.args(["--status-listen", &self.status_listen]);
        // Raw arguments naming a proxy flag win over the harness's default.
        for (flag, value) in [
            ("--proxy-listen", &self.proxy_listen),
            ("--proxy-ssl-listen", &self.proxy_ssl_listen),
        ] {
            let given = self
                .args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
            if !given {
                cmd.args([flag, value.as_str()]);
            }
        }
        for (key, value) in &self.labels {
            cmd.arg("--label").arg(format!("{key}={value}"));
        }
        if let Some(version) = &self.advertise_version {
            cmd.args(["--advertise-version", version]);
        }
        cmd.args(&self.args);
        // A developer's own settings must not leak into the test.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GATEHOUSE_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

// === impl DataPlane ===

impl DataPlane {
    /// Starts `gatehouse-dp` with `options` and `--status-listen 127.0.0.1:0`, and waits until
    /// its status listener listens (not until it has a configuration: see
    /// [`DataPlane::wait_until_ready`]).
    pub async fn start(options: DataPlaneOptions) -> Result<DataPlane> {
        let cache = match &options.cache_dir {
            Some(path) => CacheDir::Given(path.clone()),
            None => CacheDir::Owned(TempDir::new("dp-cache")?),
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let mut dp = DataPlane {
            options,
            cache,
            child: None,
            pid: 0,
            status_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            proxy_addrs: Vec::new(),
            proxy_ssl_addrs: Vec::new(),
            logs: Arc::new(Logs::default()),
            earlier_logs: String::new(),
            client,
        };
        dp.spawn().await?;
        Ok(dp)
    }

    /// Runs `gatehouse-dp` with `options` and waits (up to `patience`) for it to exit by
    /// itself, e.g. on a bad command line; fails if it is still running then.
    pub async fn run_to_exit(options: DataPlaneOptions, patience: Duration) -> Result<Exited> {
        let cache = TempDir::new("dp-cache")?;
        let cache_dir = options.cache_dir.clone();
        let cache_dir = cache_dir.as_deref().unwrap_or(cache.path());
        let bin = dp_bin()?;
        let started = Instant::now();
        let mut child = options
            .command(&bin, cache_dir)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id().unwrap_or_default();
        let logs = Arc::new(Logs::default());
        let prefix = format!("gatehouse-dp[{} {pid}]", options.name);
        let drains = start_drains(&mut child, &logs, &prefix, options.echo);
        let status = match timeout(patience, child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                let _ = child.start_kill();
                bail!(
                    "gatehouse-dp was still running after {patience:?}; output:\n{}",
                    logs.text()
                );
            }
        };
        let ran_for = started.elapsed();
        for drain in drains {
            let _ = drain.await;
        }
        Ok(Exited {
            status,
            output: logs.text(),
            ran_for,
        })
    }

    /// Spawns the process on the same options and cache directory, and waits for the status
    /// listener.
    async fn spawn(&mut self) -> Result<()> {
        let bin = dp_bin()?;
        let mut child = self
            .options
            .command(&bin, self.cache_dir())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id().context("gatehouse-dp exited at once")?;
        let logs = Arc::new(Logs::default());
        let prefix = format!("gatehouse-dp[{} {pid}]", self.options.name);
        start_drains(&mut child, &logs, &prefix, self.options.echo);

        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            let changed = logs.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(addr) = find_addr(&logs.text(), READY_LINE) {
                break addr;
            }
            if let Some(status) = child.try_wait()? {
                // Let the drain tasks catch the last lines.
                let _ = timeout(Duration::from_millis(200), changed).await;
                bail!(
                    "gatehouse-dp ({}) exited with {status} before its status listener \
                     listened; output:\n{}",
                    bin.display(),
                    logs.text()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                bail!(
                    "gatehouse-dp ({}) did not log {READY_LINE:?} with addr=IP:PORT within \
                     {START_TIMEOUT:?}; output:\n{}",
                    bin.display(),
                    logs.text()
                );
            }
            // Woken by new output; the timeout polls for the process's exit.
            let _ = timeout(Duration::from_millis(100), changed).await;
        };
        let text = logs.text();
        self.proxy_addrs = proxy_addrs(&text, false);
        self.proxy_ssl_addrs = proxy_addrs(&text, true);
        self.child = Some(child);
        self.pid = pid;
        self.status_addr = addr;
        self.logs = logs;
        Ok(())
    }

    /// The options it runs with.
    pub fn options(&self) -> &DataPlaneOptions {
        &self.options
    }

    /// Mutable options, applied by the next [`DataPlane::restart`] or [`DataPlane::start_again`].
    pub fn options_mut(&mut self) -> &mut DataPlaneOptions {
        &mut self.options
    }

    /// The cache directory (`--cache-dir`), kept across restarts.
    pub fn cache_dir(&self) -> &Path {
        match &self.cache {
            CacheDir::Owned(dir) => dir.path(),
            CacheDir::Given(path) => path,
        }
    }

    /// The node id the DP keeps in `<cache-dir>/node_id` (written at its first start).
    pub fn node_id(&self) -> Result<String> {
        let path = self.cache_dir().join("node_id");
        let id = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(id.trim().to_owned())
    }

    /// The status listener's address.
    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    /// The status listener's base URL, `http://127.0.0.1:PORT`.
    pub fn status_url(&self) -> String {
        format!("http://{}", self.status_addr)
    }

    /// The plain proxy listeners (`--proxy-listen`) of the current run, as logged.
    pub fn proxy_addrs(&self) -> &[SocketAddr] {
        &self.proxy_addrs
    }

    /// The TLS proxy listeners (`--proxy-ssl-listen`) of the current run, as logged.
    pub fn proxy_ssl_addrs(&self) -> &[SocketAddr] {
        &self.proxy_ssl_addrs
    }

    /// The first plain proxy listener; fails when it is `off`.
    pub fn proxy_addr(&self) -> Result<SocketAddr> {
        self.proxy_addrs
            .first()
            .copied()
            .context("the data plane logged no plain proxy listener")
    }

    /// The first TLS proxy listener; fails when it is `off`.
    pub fn proxy_ssl_addr(&self) -> Result<SocketAddr> {
        self.proxy_ssl_addrs
            .first()
            .copied()
            .context("the data plane logged no TLS proxy listener")
    }

    /// `http://127.0.0.1:PORT` of the first plain proxy listener.
    pub fn proxy_url(&self) -> Result<String> {
        Ok(format!("http://{}", self.proxy_addr()?))
    }

    /// The process id (of the last run).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process runs (it has not been stopped and has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Everything the current (or last) run wrote to stdout and stderr.
    pub fn logs(&self) -> String {
        self.logs.text()
    }

    /// The output of every run so far, the current one last.
    pub fn all_logs(&self) -> String {
        format!("{}{}", self.earlier_logs, self.logs.text())
    }

    /// The log lines of the current run containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.logs
            .text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the current run's output contains `needle`; returns the first line with it.
    pub async fn wait_for_log(&self, needle: &str, patience: Duration) -> Result<String> {
        self.wait_for_log_line(patience, |line| line.contains(needle))
            .await
            .with_context(|| format!("waiting for {needle:?}"))
    }

    /// Waits until a line of the current run's output satisfies `matches`; returns it.
    pub async fn wait_for_log_line(
        &self,
        patience: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + patience;
        loop {
            let changed = self.logs.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(line) = self.logs.text().lines().find(|l| matches(l)) {
                return Ok(line.to_owned());
            }
            if timeout(deadline - Instant::now(), changed).await.is_err() {
                bail!(
                    "gatehouse-dp {} did not log the expected line within {patience:?}; \
                     output:\n{}",
                    self.options.name,
                    self.logs()
                );
            }
        }
    }

    /// Waits for `snapshot applied version=VERSION` in the current run's output; returns the
    /// line (read its fields with [`log_field`](crate::log_field)).
    pub async fn wait_for_applied_log(&self, version: i64, patience: Duration) -> Result<String> {
        self.wait_for_log_line(patience, |line| {
            line.contains("snapshot applied")
                && log_field(line, "version").is_some_and(|v| v == version.to_string())
        })
        .await
    }

    /// `GET /status`, as JSON (fails on a non-200 answer).
    pub async fn status(&self) -> Result<Value> {
        let url = format!("{}/status", self.status_url());
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let code = response.status().as_u16();
        let text = response
            .text()
            .await
            .with_context(|| format!("GET {url}"))?;
        if code != 200 {
            bail!("GET {url}: {code} {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("GET {url}: not JSON: {text}"))
    }

    /// `GET /status/ready`: its status code (200 ready, 503 no configuration yet) and body.
    pub async fn ready_response(&self) -> Result<(u16, Value)> {
        let url = format!("{}/status/ready", self.status_url());
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let code = response.status().as_u16();
        let text = response
            .text()
            .await
            .with_context(|| format!("GET {url}"))?;
        Ok((
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// The status code of `GET /status/ready`: 200 ready, 503 no configuration yet.
    pub async fn ready(&self) -> Result<u16> {
        Ok(self.ready_response().await?.0)
    }

    /// Waits until `/status/ready` answers 200; returns `/status`.
    pub async fn wait_until_ready(&self, patience: Duration) -> Result<Value> {
        let what = format!("gatehouse-dp {} ready", self.options.name);
        wait_until(&what, patience, || async {
            Ok(if self.ready().await? == 200 {
                Some(self.status().await?)
            } else {
                None
            })
        })
        .await
        .map_err(|e| self.with_logs(e))
    }

    /// Waits until `/status` says the DP is connected to its CP; returns `/status`.
    pub async fn wait_until_connected(&self, patience: Duration) -> Result<Value> {
        self.wait_for_status("connected to the control plane", patience, |s| {
            s["control_plane"]["connected"] == Value::Bool(true)
        })
        .await
    }

    /// Waits until `/status` says the DP lost its CP; returns `/status`.
    pub async fn wait_until_disconnected(&self, patience: Duration) -> Result<Value> {
        self.wait_for_status("disconnected from the control plane", patience, |s| {
            s["control_plane"]["connected"] == Value::Bool(false)
        })
        .await
    }

    /// Waits until `/status` reports `config_version` at least `version`; returns `/status`.
    pub async fn wait_for_version(&self, version: i64, patience: Duration) -> Result<Value> {
        self.wait_for_status(&format!("config_version >= {version}"), patience, |s| {
            s["config_version"].as_i64().is_some_and(|v| v >= version)
        })
        .await
    }

    /// Waits until `/status` reports `config_hash` equal to `hash`; returns `/status`.
    pub async fn wait_for_hash(&self, hash: &str, patience: Duration) -> Result<Value> {
        self.wait_for_status(&format!("config_hash {hash}"), patience, |s| {
            s["config_hash"].as_str() == Some(hash)
        })
        .await
    }

    /// Polls `/status` until `accept` returns true for it; returns it.
    pub async fn wait_for_status(
        &self,
        what: &str,
        patience: Duration,
        mut accept: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let what = format!("gatehouse-dp {}: {what}", self.options.name);
        let mut last;
        let deadline = Instant::now() + patience;
        loop {
            match self.status().await {
                Ok(status) if accept(&status) => return Ok(status),
                Ok(status) => last = status,
                Err(e) => last = Value::String(format!("{e:#}")),
            }
            if Instant::now() >= deadline {
                return Err(self.with_logs(anyhow!(
                    "{what}: not reached within {patience:?}; last /status: {last}"
                )));
            }
            tokio::time::sleep(crate::wait::POLL_INTERVAL).await;
        }
    }

    /// Sends SIGTERM and waits for the process to exit (killing it after 10 s).
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("gatehouse-dp {} is not running", self.options.name);
        };
        let kill = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .context("running kill")?;
        if !kill.success() {
            // It exited already.
            return Ok(child.wait().await?);
        }
        match timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                child.kill().await?;
                Err(anyhow!(
                    "gatehouse-dp {} did not exit within {STOP_TIMEOUT:?} of SIGTERM; output:\n{}",
                    self.options.name,
                    self.logs()
                ))
            }
        }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the process again (after [`DataPlane::stop`] or [`DataPlane::kill`]) with the
    /// same options and cache directory; the status listener gets a new port.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("gatehouse-dp {} is still running", self.options.name);
        }
        self.child = None;
        self.earlier_logs.push_str(&self.logs.text());
        self.earlier_logs.push_str("--- restart ---\n");
        self.spawn().await
    }

    /// [`DataPlane::stop`] then [`DataPlane::start_again`].
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop().await?;
        }
        self.start_again().await
    }

    fn with_logs(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow!(
            "{e:#}\ngatehouse-dp {} output:\n{}",
            self.options.name,
            self.logs()
        )
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Fails only if it already exited; tokio reaps it either way.
            let _ = child.start_kill();
        }
    }
}

// === impl Logs ===

impl Logs {
    fn text(&self) -> String {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn push(&self, line: &str) {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_str(line);
        self.changed.notify_waiters();
    }
}

fn start_drains(
    child: &mut Child,
    logs: &Arc<Logs>,
    prefix: &str,
    echo: bool,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        tasks.push(tokio::spawn(drain(
            stdout,
            logs.clone(),
            prefix.to_owned(),
            echo,
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        tasks.push(tokio::spawn(drain(
            stderr,
            logs.clone(),
            prefix.to_owned(),
            echo,
        )));
    }
    tasks
}

async fn drain(stream: impl AsyncRead + Unpin, logs: Arc<Logs>, prefix: String, echo: bool) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let mut text = String::from_utf8_lossy(&line).into_owned();
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                if echo {
                    eprint!("{prefix}: {text}");
                }
                logs.push(&text);
            }
        }
    }
    logs.changed.notify_waiters();
}

/// Finds `addr=IP:PORT` on the first line containing `marker` (an unspecified IP becomes
/// 127.0.0.1).
pub(crate) fn find_addr(logs: &str, marker: &str) -> Option<SocketAddr> {
    let line = logs.lines().find(|l| l.contains(marker))?;
    let mut addr: SocketAddr = log_field(line, "addr")?.parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Some(addr)
}

/// The `addr=IP:PORT` of every proxy listener line whose `tls=` is `tls` (an unspecified IP
/// becomes 127.0.0.1).
pub(crate) fn proxy_addrs(logs: &str, tls: bool) -> Vec<SocketAddr> {
    logs.lines()
        .filter(|l| l.contains(PROXY_LINE))
        .filter(|l| log_field(l, "tls").is_some_and(|v| v == tls.to_string()))
        .filter_map(|l| log_field(l, "addr")?.parse::<SocketAddr>().ok())
        .map(|mut addr| {
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            addr
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_addr_is_found_in_tracing_line() {
        let logs = "2026-11-25T14:00:00Z  INFO gatehouse_dp: loaded cached snapshot version=3\n\
                    2026-11-25T14:00:00Z  INFO gatehouse_dp::status: status listener listening addr=127.0.0.1:43123\n";
        assert_eq!(
            find_addr(logs, READY_LINE),
            Some("127.0.0.1:43123".parse().expect("addr"))
        );
        assert_eq!(
            find_addr("INFO starting addr=127.0.0.1:1\n", READY_LINE),
            None
        );
    }

    #[test]
    fn proxy_addrs_are_found_by_tls() {
        let logs = "2026-11-25T14:00:00Z  INFO gatehouse_dp::proxy: proxy listener listening addr=127.0.0.1:40001 tls=false\n\
                    2026-11-25T14:00:00Z  INFO gatehouse_dp::proxy: proxy listener listening addr=0.0.0.0:40002 tls=true\n\
                    2026-11-25T14:00:00Z  INFO gatehouse_dp::status: status listener listening addr=127.0.0.1:43123\n";
        assert_eq!(
            proxy_addrs(logs, false),
            vec!["127.0.0.1:40001".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(
            proxy_addrs(logs, true),
            vec!["127.0.0.1:40002".parse::<SocketAddr>().expect("addr")]
        );
    }
}
