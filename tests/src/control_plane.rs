//! A real `gatehouse-cp` process.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::time::{Instant, timeout};

use crate::admin::Admin;
use crate::postgres::TestDb;
use crate::target_dir::BuildDirs;

/// Overrides where the `gatehouse-cp` binary is.
const ENV_CP_BIN: &str = "GATEHOUSE_CP_BIN";
/// How long `gatehouse-cp serve` may take to log that its Admin API listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`ControlPlane::stop`] waits after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The log line `serve` writes once the Admin API accepts connections (with `addr=IP:PORT`).
/// `serve` logs it last, after the lines of its other listeners.
const READY_LINE: &str = "admin API listening";
/// The log line of the cluster (config sync) listener, absent when it is disabled.
const CLUSTER_LINE: &str = "cluster listener listening";
/// The log line of the status listener, absent with `--status-listen off`.
const STATUS_LINE: &str = "status listener listening";

/// A running `gatehouse-cp serve` process, killed when dropped.
///
/// Its stdout and stderr are drained continuously into a buffer ([`ControlPlane::logs`]) and
/// echoed to the test's stderr with a `gatehouse-cp[PID]` prefix, so a failing test shows them.
#[derive(Debug)]
pub struct ControlPlane {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    cluster_addr: Option<SocketAddr>,
    status_addr: Option<SocketAddr>,
    admin: Admin,
    logs: Arc<Logs>,
}

/// Everything the process wrote so far, and a signal for each new line.
#[derive(Debug, Default)]
struct Logs {
    text: Mutex<String>,
    changed: Notify,
}

/// The path of the `gatehouse-cp` binary: `$GATEHOUSE_CP_BIN`, else the one Cargo built beside
/// the test executable (`<target>/debug/gatehouse-cp`). Fails if it does not exist.
pub fn cp_bin() -> Result<PathBuf> {
    let path = match std::env::var_os(ENV_CP_BIN) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => BuildDirs::get()?.profile.join("gatehouse-cp"),
    };
    if !path.is_file() {
        bail!(
            "gatehouse-cp binary not found at {}: run cargo build --bins (deploy/test.sh does it)",
            path.display()
        );
    }
    Ok(path)
}

// === impl ControlPlane ===

impl ControlPlane {
    /// Starts `gatehouse-cp serve --database-url <db> --admin-listen 127.0.0.1:0
    /// --cluster-listen 127.0.0.1:0 --status-listen 127.0.0.1:0` and waits until its Admin API
    /// listens. Without cluster certificates the cluster listener stays disabled.
    pub async fn start(db: &TestDb) -> Result<ControlPlane> {
        Self::start_with(db, &[], &[]).await
    }

    /// Like [`ControlPlane::start`], with extra `serve` arguments and environment variables.
    ///
    /// `args` may give `--database-url`, `--admin-listen`, `--cluster-listen` or
    /// `--status-listen` to replace the defaults. The child
    /// gets `RUST_LOG=info` and none of the test process's `GATEHOUSE_*` variables; `env` is
    /// applied last and may override both.
    pub async fn start_with(
        db: &TestDb,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ControlPlane> {
        Self::spawn(&[], &db.url, args, env).await
    }

    /// Like [`ControlPlane::start_with`], run through `exec_prefix` (e.g. `ip netns exec NS`,
    /// which execs the binary: the pid is the control plane's) on the database at
    /// `database_url`. `args` must name the listen addresses the namespace has.
    pub async fn start_in(
        exec_prefix: &[String],
        database_url: &str,
        args: &[&str],
    ) -> Result<ControlPlane> {
        Self::spawn(exec_prefix, database_url, args, &[]).await
    }

    async fn spawn(
        exec_prefix: &[String],
        database_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ControlPlane> {
        let bin = cp_bin()?;
        let gives = |flag: &str| {
            args.iter()
                .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
        };
        let mut cmd = match exec_prefix.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        cmd.arg("serve");
        if !gives("--database-url") {
            cmd.args(["--database-url", database_url]);
        }
        if !gives("--admin-listen") {
            cmd.args(["--admin-listen", "127.0.0.1:0"]);
        }
        if !gives("--cluster-listen") {
            cmd.args(["--cluster-listen", "127.0.0.1:0"]);
        }
        if !gives("--status-listen") {
            cmd.args(["--status-listen", "127.0.0.1:0"]);
        }
        cmd.args(args);
        // A developer's own settings must not leak into the test.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GATEHOUSE_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id().context("gatehouse-cp exited at once")?;

        let logs = Arc::new(Logs::default());
        let prefix = format!("gatehouse-cp[{pid}]");
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(drain(stdout, logs.clone(), prefix.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(drain(stderr, logs.clone(), prefix));
        }

        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            let changed = logs.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(addr) = find_admin_addr(&logs.text()) {
                break addr;
            }
            if let Some(status) = child.try_wait()? {
                // Let the drain tasks catch the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                bail!(
                    "gatehouse-cp ({}) exited with {status} before its admin API listened; output:\n{}",
                    bin.display(),
                    logs.text()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                bail!(
                    "gatehouse-cp ({}) did not log {READY_LINE:?} with addr=IP:PORT within \
                     {START_TIMEOUT:?}; output:\n{}",
                    bin.display(),
                    logs.text()
                );
            }
            // Woken by new output; the timeout polls for the process's exit.
            let _ = timeout(Duration::from_millis(100), changed).await;
        };
        // The other listeners log before the Admin API, on the same stream: their lines are in.
        let text = logs.text();
        let cluster_addr = find_addr(&text, CLUSTER_LINE);
        let status_addr = find_addr(&text, STATUS_LINE);
        let admin = Admin::new(format!("http://{addr}"))?;
        Ok(ControlPlane {
            child,
            pid,
            addr,
            cluster_addr,
            status_addr,
            admin,
            logs,
        })
    }

    /// The Admin API base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the Admin API listens on.
    pub fn admin_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the cluster (config sync) listener, `None` when it is disabled (no
    /// `--cluster-cert`/`--cluster-cert-key`). Data planes connect here.
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.cluster_addr
    }

    /// The status listener's base URL, `http://127.0.0.1:PORT` (`GET /status`,
    /// `GET /status/ready`), `None` with `--status-listen off`.
    pub fn status_url(&self) -> Option<String> {
        self.status_addr.map(|addr| format!("http://{addr}"))
    }

    /// A client for the Admin API.
    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        self.logs.text()
    }

    /// Waits until the output contains `needle`, failing with the output after `patience`.
    pub async fn wait_for_log(&self, needle: &str, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            let changed = self.logs.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.logs.text().contains(needle) {
                return Ok(());
            }
            if timeout(deadline - Instant::now(), changed).await.is_err() {
                bail!(
                    "gatehouse-cp did not log {needle:?} within {patience:?}; output:\n{}",
                    self.logs()
                );
            }
        }
    }

    /// Sends SIGTERM and waits for the process to exit (killing it after 10 s).
    pub async fn stop(mut self) -> Result<ExitStatus> {
        let kill = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .context("running kill")?;
        if !kill.success() {
            bail!("kill -TERM {} failed: {kill}", self.pid);
        }
        match timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                Err(anyhow!(
                    "gatehouse-cp did not exit within {STOP_TIMEOUT:?} of SIGTERM; output:\n{}",
                    self.logs()
                ))
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Fails only if it already exited; tokio reaps it either way.
        let _ = self.child.start_kill();
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

async fn drain(stream: impl AsyncRead + Unpin, logs: Arc<Logs>, prefix: String) {
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
                eprint!("{prefix}: {text}");
                logs.push(&text);
            }
        }
    }
    logs.changed.notify_waiters();
}

/// Finds `addr=IP:PORT` on the first line saying the Admin API listens.
fn find_admin_addr(logs: &str) -> Option<SocketAddr> {
    find_addr(logs, READY_LINE)
}

/// Finds `addr=IP:PORT` on the first line containing `marker`; an unspecified IP
/// (`0.0.0.0`) becomes `127.0.0.1`.
fn find_addr(logs: &str, marker: &str) -> Option<SocketAddr> {
    let line = logs.lines().find(|l| l.contains(marker))?;
    let line = strip_ansi(line);
    let value = line.split("addr=").nth(1)?;
    let value = value
        .trim_start_matches('"')
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .next()?;
    let mut addr: SocketAddr = value.parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    Some(addr)
}

/// Removes ANSI escape sequences (`ESC [ … letter`), in case colours slip through.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addr_is_found_in_tracing_line() {
        let logs = "2026-11-25T14:00:00Z  INFO gatehouse_cp::store: migrated\n\
                    2026-11-25T14:00:00Z  INFO gatehouse_cp::admin: admin API listening addr=127.0.0.1:43123\n";
        assert_eq!(
            find_admin_addr(logs),
            Some("127.0.0.1:43123".parse().expect("addr"))
        );
    }

    #[test]
    fn admin_addr_is_found_despite_colours_and_quotes() {
        let logs = "\u{1b}[32m INFO\u{1b}[0m \u{1b}[2mgatehouse_cp::admin\u{1b}[0m: admin API listening \
                    \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"0.0.0.0:8001\" tls=false\n";
        assert_eq!(
            find_admin_addr(logs),
            Some("127.0.0.1:8001".parse().expect("addr"))
        );
    }

    #[test]
    fn listener_addrs_are_found() {
        let logs = "2026-11-25T14:00:00Z  INFO gatehouse_cp: cluster listener listening \
                    addr=0.0.0.0:43001 mtls=pki\n\
                    2026-11-25T14:00:00Z  INFO gatehouse_cp: status listener listening \
                    addr=127.0.0.1:43002\n\
                    2026-11-25T14:00:00Z  INFO gatehouse_cp: admin API listening addr=127.0.0.1:43003\n";
        assert_eq!(
            find_addr(logs, CLUSTER_LINE),
            Some("127.0.0.1:43001".parse().expect("addr"))
        );
        assert_eq!(
            find_addr(logs, STATUS_LINE),
            Some("127.0.0.1:43002".parse().expect("addr"))
        );
        assert_eq!(
            find_addr("INFO admin API listening addr=127.0.0.1:1\n", CLUSTER_LINE),
            None
        );
    }

    #[test]
    fn no_addr_before_ready_line() {
        assert_eq!(find_admin_addr("INFO starting addr=127.0.0.1:1\n"), None);
    }
}
