//! Processes of the proxy benchmark: the nginx instances, CPU pinning, and CPU accounting
//! from `/proc` (no hardware counters on this VM: benchmarking.md §4.1).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use gatehouse_tests::TempDir;

/// The CPU of the proxy under test (the data plane's one worker, nginx's one worker).
pub(crate) const PROXY_CPU: u32 = 0;
/// The CPU of the load generator, the upstream and the control plane.
pub(crate) const LOAD_CPU: u32 = 1;

/// Clock ticks per second of `/proc/PID/stat` and `/proc/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;
/// How long nginx may take to listen, and to stop after SIGTERM.
const NGINX_PATIENCE: Duration = Duration::from_secs(10);

/// An nginx master process (and its workers) on one CPU, stopped when dropped.
#[derive(Debug)]
pub(crate) struct Nginx {
    child: Child,
    pid: u32,
    /// The prefix: `nginx.conf`, `error.log`, `nginx.pid`, `tmp/`.
    dir: TempDir,
}

/// A window of CPU accounting: the charged process tree and the two CPUs.
#[derive(Debug)]
pub(crate) struct Window {
    pid: u32,
    started: Instant,
    process_secs: f64,
    cpus: Vec<CpuTimes>,
}

/// What a [`Window`] saw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    /// CPU time of the charged process tree (all threads, user + system), seconds.
    pub(crate) process_secs: f64,
    /// Wall-clock seconds of the window.
    pub(crate) wall_secs: f64,
    /// Busy share of CPU 0 and CPU 1 (0..1), whoever used them.
    pub(crate) busy: [f64; 2],
}

#[derive(Debug, Clone, Copy, Default)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

// === impl Nginx ===

impl Nginx {
    /// Starts `taskset -c CPU nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'` with `conf`
    /// (its `@PREFIX@` replaced by DIR) and waits until every one of `ports` accepts.
    pub(crate) async fn start(
        nginx: &Path,
        name: &str,
        cpu: u32,
        conf: &str,
        ports: &[u16],
    ) -> Result<Nginx> {
        let dir = TempDir::new(&format!("bench-{name}"))?;
        // The workers run as `nobody` when started by root: let them into the prefix.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::create_dir_all(dir.join("tmp"))?;
        let prefix = dir.path().to_str().context("non-UTF-8 temp dir")?;
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf.replace("@PREFIX@", prefix))?;
        let error_log = dir.join("error.log");
        let mut child = Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&error_log)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", nginx.display()))?;
        let pid = child.id().context("nginx exited at once")?;
        let deadline = Instant::now() + NGINX_PATIENCE;
        let mut waiting: Vec<u16> = ports.to_vec();
        while !waiting.is_empty() {
            if let Some(status) = child.try_wait()? {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = pipe.read_to_string(&mut stderr).await;
                }
                bail!(
                    "nginx {name} exited with {status}: {stderr}\n{}",
                    std::fs::read_to_string(&error_log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("nginx {name} did not listen on {waiting:?} within {NGINX_PATIENCE:?}");
            }
            let mut still = Vec::new();
            for port in waiting {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if tokio::net::TcpStream::connect(addr).await.is_err() {
                    still.push(port);
                }
            }
            waiting = still;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Nginx { child, pid, dir })
    }

    /// The master's process id (its workers are its children).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Its configuration file.
    pub(crate) fn conf_path(&self) -> std::path::PathBuf {
        self.dir.join("nginx.conf")
    }

    /// The error log so far.
    pub(crate) fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers and exits. A SIGKILL (kill_on_drop) would
        // leave the workers running.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = std::time::Instant::now() + NGINX_PATIENCE;
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.start_kill();
    }
}

// === impl Window ===

impl Window {
    /// Starts accounting for process `pid` and its children (nginx's workers).
    pub(crate) fn open(pid: u32) -> Window {
        Window {
            pid,
            started: Instant::now(),
            process_secs: tree_cpu_secs(pid),
            cpus: cpu_times(),
        }
    }

    /// Ends the window.
    pub(crate) fn close(self) -> Usage {
        let cpus = cpu_times();
        let busy = |i: usize| {
            let (Some(before), Some(after)) = (self.cpus.get(i), cpus.get(i)) else {
                return f64::NAN;
            };
            let total = after.total.saturating_sub(before.total);
            if total == 0 {
                return f64::NAN;
            }
            after.busy.saturating_sub(before.busy) as f64 / total as f64
        };
        Usage {
            process_secs: tree_cpu_secs(self.pid) - self.process_secs,
            wall_secs: self.started.elapsed().as_secs_f64(),
            busy: [busy(0), busy(1)],
        }
    }
}

// === impl Usage ===

impl Usage {
    /// The charged processes' CPU share of the window (1.0 = one full CPU).
    pub(crate) fn process_share(&self) -> f64 {
        self.process_secs / self.wall_secs
    }
}

/// Pins process `pid` and all its threads to `cpu` (threads it makes later inherit it).
pub(crate) async fn pin(pid: u32, cpu: u32) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .await
        .context("running taskset")?;
    ensure!(status.success(), "taskset -a -p -c {cpu} {pid}: {status}");
    Ok(())
}

/// The CPUs the threads of `pid` and of its children may run on, e.g. `0` or `0-1` (each
/// distinct `Cpus_allowed_list`, joined with `/`).
pub(crate) fn affinity(pid: u32) -> String {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                && stat_fields(child).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid)
            {
                pids.push(child);
            }
        }
    }
    let mut lists = Vec::<String>::new();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            if let Some(list) = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|l| l.trim().to_owned())
                && !lists.contains(&list)
            {
                lists.push(list);
            }
        }
    }
    if lists.is_empty() {
        "?".into()
    } else {
        lists.join("/")
    }
}

/// A free loopback port (bound, then released: a small race another process could win).
pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Resident set size of `pid`, bytes (0 if unknown).
pub(crate) fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// User + system CPU seconds of `pid` (all its threads, also ended ones) and of its
/// children.
fn tree_cpu_secs(pid: u32) -> f64 {
    let mut ticks = stat_fields(pid).map_or(0, |f| cpu_ticks(&f));
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(fields) = stat_fields(child)
                && fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
            {
                ticks += cpu_ticks(&fields);
            }
        }
    }
    ticks as f64 / TICKS_PER_SEC
}

/// The fields of `/proc/PID/stat` after the parenthesised command name (state, ppid, ...).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime (fields 14 and 15 of `/proc/PID/stat`).
fn cpu_ticks(fields: &[String]) -> u64 {
    let at = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    at(11) + at(12)
}

/// Busy and total ticks of `cpu0`, `cpu1`, ... from `/proc/stat`.
fn cpu_times() -> Vec<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|line| {
            // user nice system idle iowait irq softirq steal (guest time is inside user)
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .take(8)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
            CpuTimes {
                busy,
                total: busy + at(3) + at(4),
            }
        })
        .collect()
}
