//! One fresh database per test, on a PostgreSQL server shared by every test process.
//!
//! Without `GATEHOUSE_TEST_DATABASE_URL` the harness runs a private cluster in
//! `<target>/gatehouse-test-pg/` (or `/tmp/gatehouse-test-pg-<hash of the target dir>` when the
//! `postgres` OS user cannot reach the target dir). Layout of that directory:
//!
//! | entry | meaning |
//! |---|---|
//! | `lock` | `flock`ed while a process checks, creates or starts the cluster |
//! | `data/` | the data directory; valid only if `initdb.done` exists and `data/PG_VERSION` matches the binaries |
//! | `initdb.done` | written after `initdb` succeeded (a crash during initdb leaves no marker, so the dir is wiped) |
//! | `port` | the TCP port of the last start, reused on the next start when free |
//! | `postgres.log` | the server log |
//! | `sock/` | the Unix socket directory (`psql -h <dir>/sock -p <port> -U postgres`) |
//!
//! Cross-process sharing: every process takes the lock, reuses the cluster if `pg_ctl status`
//! says it runs and it answers a query, and otherwise (re)starts it, running `initdb` first if the
//! data directory is missing or invalid. The cluster outlives the tests; `deploy/test.sh` stops
//! it, and the next run starts it again. A lock held by a process that dies is released by the
//! kernel.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use tokio::process::Command;
use tokio::sync::OnceCell;
use tokio::time::{Instant, sleep, timeout};
use tokio_postgres::NoTls;

use crate::target_dir::BuildDirs;

/// Names a server on which the tests may `CREATE DATABASE`, instead of a private cluster.
const ENV_DATABASE_URL: &str = "GATEHOUSE_TEST_DATABASE_URL";
/// Set to `1` to keep each test's database after the test.
const ENV_KEEP_DB: &str = "GATEHOUSE_TEST_KEEP_DB";

const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, pg_ctl) not found in PATH or \
     /usr/lib/postgresql/*/bin: install Debian's `postgresql` package \
     (`apt-get install postgresql`) or set GATEHOUSE_TEST_DATABASE_URL";

/// How long a process waits for another one to finish creating or starting the cluster.
const LOCK_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest a socket path may be (`sun_path` is 108 bytes on Linux, with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The admin URL of the shared server, once this process has found or started it.
static SERVER: OnceCell<String> = OnceCell::const_new();

/// A fresh, empty database for one test.
///
/// Dropping it drops the database (`DROP DATABASE … WITH (FORCE)`, best effort), unless
/// `GATEHOUSE_TEST_KEEP_DB=1`. Drop it after everything that uses it, e.g. declare it before the
/// [`ControlPlane`](crate::ControlPlane) that runs on it.
#[derive(Debug)]
pub struct TestDb {
    /// `postgres://USER@HOST:PORT/NAME`, ready for `gatehouse-cp --database-url` or
    /// `tokio_postgres::connect`.
    pub url: String,
    /// The database name, `gh_<random hex>`.
    pub name: String,
    /// A URL of the same server on its maintenance database, to create and drop databases.
    admin_url: String,
    dropped: bool,
}

/// Creates a fresh, empty database for one test on the shared server.
///
/// The server is the one named by `GATEHOUSE_TEST_DATABASE_URL` if set, else a private cluster
/// this harness starts once for all test processes (see the module documentation). Fails with an
/// install hint when there is neither a URL nor PostgreSQL server binaries.
pub async fn test_db() -> Result<TestDb> {
    let admin_url = SERVER.get_or_try_init(server_url).await?.clone();
    let name = format!("gh_{}", uuid::Uuid::new_v4().simple());
    let client = connect(&admin_url).await?;
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .with_context(|| format!("creating database {name} on {admin_url}"))?;
    Ok(TestDb {
        url: url_with_database(&admin_url, &name)?,
        name,
        admin_url,
        dropped: false,
    })
}

// === impl TestDb ===

impl TestDb {
    /// Opens a connection to this database. Its connection task runs on the current runtime.
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        connect(&self.url).await
    }

    /// The database as `pg_dump` writes it (plain SQL, data included): what a backup or a
    /// stolen dump shows. `pg_dump` comes from PATH or Debian's `/usr/lib/postgresql/*/bin`.
    pub async fn dump(&self) -> Result<String> {
        let pg_dump = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join("pg_dump"))
            .find(|p| p.is_file())
            .or_else(|| debian_bindir().map(|dir| dir.join("pg_dump")))
            .ok_or_else(|| anyhow!("pg_dump not found: {INSTALL_HINT}"))?;
        let output = Command::new(&pg_dump)
            .args(["--no-owner", "--dbname", &self.url])
            .output()
            .await
            .with_context(|| format!("running {}", pg_dump.display()))?;
        anyhow::ensure!(
            output.status.success(),
            "pg_dump {}: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Drops the database now, terminating any session still connected to it, and reports
    /// failure (dropping the `TestDb` does the same, but can only print failures).
    pub async fn drop_db(mut self) -> Result<()> {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        if std::env::var(ENV_KEEP_DB).is_ok_and(|v| v == "1") {
            eprintln!("{ENV_KEEP_DB}=1: keeping test database {}", self.url);
            return;
        }
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime (whose thread must not be blocked waiting on its own
        // I/O) or outside any: use a runtime of its own on a thread of its own.
        let dropper = std::thread::spawn(move || -> Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(drop_database(&admin_url, &name))
        });
        match dropper.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e:#}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

/// Opens a connection with a deadline; the connection task runs on the current runtime.
async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) =
        timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| anyhow!("timed out connecting to {url}"))?
            .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        // The error, if any, reaches the client's next query.
        let _ = connection.await;
    });
    Ok(client)
}

async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    let client = connect(admin_url).await?;
    let force = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    if client.batch_execute(&force).await.is_err() {
        // PostgreSQL < 13 has no FORCE.
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .with_context(|| format!("dropping database {name}"))?;
    }
    Ok(())
}

/// Replaces the database (path) of a `postgres://` URL, keeping user, host and query.
fn url_with_database(url: &str, database: &str) -> Result<String> {
    let mut parsed = url::Url::parse(url).with_context(|| {
        format!("{ENV_DATABASE_URL} must be a postgres:// URL naming a database, not {url:?}")
    })?;
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.into())
}

/// Finds the server of this run: the one from the environment or the private cluster.
async fn server_url() -> Result<String> {
    match std::env::var(ENV_DATABASE_URL) {
        Ok(url) if !url.is_empty() => {
            url_with_database(&url, "x")?;
            Ok(url)
        }
        _ => Cluster::ensure().await,
    }
}

/// The PostgreSQL server programs.
#[derive(Debug)]
struct PgBins {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    /// Major version, as written in a data directory's `PG_VERSION` (`15`).
    major: String,
}

/// The OS user the server programs run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunAs {
    /// Us, when we are not root.
    Me,
    /// The `postgres` user through `runuser`, because initdb and postgres refuse to run as root.
    Postgres,
}

/// The private cluster, while its lock is held.
struct Cluster {
    dir: PathBuf,
    bins: PgBins,
    run_as: RunAs,
}

// === impl PgBins ===

impl PgBins {
    /// Looks in PATH, then in Debian's `/usr/lib/postgresql/<version>/bin` (highest version).
    async fn find() -> Result<PgBins> {
        let in_path = |name: &str| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        };
        let (initdb, pg_ctl) = match (in_path("initdb"), in_path("pg_ctl")) {
            (Some(initdb), Some(pg_ctl)) => (initdb, pg_ctl),
            _ => {
                let bindir = debian_bindir().ok_or_else(|| anyhow!(INSTALL_HINT))?;
                (bindir.join("initdb"), bindir.join("pg_ctl"))
            }
        };
        let output = Command::new(&pg_ctl)
            .arg("--version")
            .output()
            .await
            .with_context(|| format!("running {} --version", pg_ctl.display()))?;
        // "pg_ctl (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
        let version = String::from_utf8_lossy(&output.stdout);
        let major = version
            .split("(PostgreSQL)")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.split('.').next())
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| anyhow!("unexpected `pg_ctl --version` output: {version:?}"))?
            .to_owned();
        Ok(PgBins {
            initdb,
            pg_ctl,
            major,
        })
    }
}

fn debian_bindir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bindir = entry.path().join("bin");
            let complete = bindir.join("initdb").is_file() && bindir.join("pg_ctl").is_file();
            complete.then_some((version, bindir))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bindir)| bindir)
}

// === impl RunAs ===

impl RunAs {
    async fn detect() -> Result<RunAs> {
        let output = Command::new("id")
            .arg("-u")
            .output()
            .await
            .context("running id -u")?;
        if String::from_utf8_lossy(&output.stdout).trim() != "0" {
            return Ok(RunAs::Me);
        }
        let postgres = Command::new("id")
            .arg("-u")
            .arg("postgres")
            .output()
            .await?;
        if !postgres.status.success() {
            bail!(
                "running as root, so the test PostgreSQL must run as the `postgres` OS user, \
                 which does not exist: install Debian's `postgresql` package \
                 (`apt-get install postgresql`) or set {ENV_DATABASE_URL}"
            );
        }
        Ok(RunAs::Postgres)
    }

    fn command(self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = match self {
            RunAs::Me => Command::new(program),
            RunAs::Postgres => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", "postgres", "--"]).arg(program);
                cmd
            }
        };
        cmd.stdin(std::process::Stdio::null());
        cmd
    }

    /// Makes `dir` (created if missing) the postgres user's and checks that user can use it.
    async fn prepare_dir(self, dir: &Path) -> Result<bool> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if self == RunAs::Me {
            return Ok(true);
        }
        run(Command::new("chown").arg("postgres:").arg(dir)).await?;
        let usable = self
            .command("test")
            .arg("-w")
            .arg(dir)
            .arg("-a")
            .arg("-x")
            .arg(dir)
            .status()
            .await?;
        Ok(usable.success())
    }
}

// === impl Cluster ===

impl Cluster {
    /// Finds, creates or starts the private cluster and returns its admin URL.
    async fn ensure() -> Result<String> {
        let bins = PgBins::find().await?;
        let run_as = RunAs::detect().await?;
        let target = &BuildDirs::get()?.target;
        let mut dir = target.join("gatehouse-test-pg");
        if !run_as.prepare_dir(&dir).await? {
            // A parent of the target dir is closed to other users (a checkout in /root, say).
            let target = std::fs::canonicalize(target).unwrap_or_else(|_| target.clone());
            let hash = Sha256::digest(target.as_os_str().as_encoded_bytes());
            let hash: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
            dir = PathBuf::from(format!("/tmp/gatehouse-test-pg-{hash}"));
            if !run_as.prepare_dir(&dir).await? {
                bail!("the postgres OS user cannot use {}", dir.display());
            }
        }
        let _lock = lock(&dir.join("lock")).await?;
        let cluster = Cluster { dir, bins, run_as };
        let port = cluster.ensure_running().await.with_context(|| {
            format!(
                "running the test PostgreSQL cluster in {} (or set {ENV_DATABASE_URL})",
                cluster.dir.display()
            )
        })?;
        Ok(admin_url(port))
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn marker(&self) -> PathBuf {
        self.dir.join("initdb.done")
    }

    async fn ensure_running(&self) -> Result<u16> {
        let valid = self.marker().is_file()
            && std::fs::read_to_string(self.data().join("PG_VERSION"))
                .is_ok_and(|v| v.trim() == self.bins.major);
        let running = self.is_running().await?;
        if valid
            && running
            && let Some(port) = self.running_port()
            && ping(port, Duration::from_secs(3)).await.is_ok()
        {
            return Ok(port);
        }
        if running {
            // Unusable: not answering, or about to be wiped.
            let _ = self
                .pg_ctl(&["-t", "10", "stop", "-m", "immediate"])
                .output()
                .await;
        }
        if !valid {
            self.initdb().await?;
        }
        let port = self.start().await?;
        std::fs::write(self.dir.join("port"), format!("{port}\n"))?;
        drop_leftover_databases(port).await?;
        Ok(port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut cmd = self.run_as.command(&self.bins.pg_ctl);
        cmd.arg("-D")
            .arg(self.data())
            .args(args)
            .current_dir(&self.dir);
        cmd
    }

    async fn is_running(&self) -> Result<bool> {
        let pid_file = self.data().join("postmaster.pid");
        let Some(pid) = postmaster_pid_line::<u32>(&pid_file, 0) else {
            return Ok(false);
        };
        // A pid file outlives a crash or a reboot, and its pid may since belong to another
        // process, which `pg_ctl stop` would signal. Our postmaster has `-D <data>` in its
        // command line. (Without /proc, trust `pg_ctl status`.)
        if Path::new("/proc/self").exists() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let data = self.data();
            if !String::from_utf8_lossy(&cmdline).contains(&*data.to_string_lossy()) {
                let _ = std::fs::remove_file(&pid_file);
                return Ok(false);
            }
        }
        // 0: running; 3: not running; 4: no usable data directory.
        Ok(self.pg_ctl(&["status"]).output().await?.status.success())
    }

    /// The port of the running server, from line 4 of `postmaster.pid`.
    fn running_port(&self) -> Option<u16> {
        postmaster_pid_line(&self.data().join("postmaster.pid"), 3)
    }

    async fn initdb(&self) -> Result<()> {
        let _ = std::fs::remove_file(self.marker());
        match std::fs::remove_dir_all(self.data()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).context(format!("removing {}", self.data().display()));
            }
            _ => {}
        }
        let mut initdb = self.run_as.command(&self.bins.initdb);
        initdb
            .arg("-D")
            .arg(self.data())
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .args(["--locale=C", "--encoding=UTF8"])
            .current_dir(&self.dir);
        run(&mut initdb).await?;
        std::fs::write(self.marker(), &self.bins.major)?;
        Ok(())
    }

    /// Starts the server on the port of the last run if free, else on a free one (retrying if
    /// another process takes the port first).
    async fn start(&self) -> Result<u16> {
        let socket_dir = self.dir.join("sock");
        let socket_dir =
            if socket_dir.as_os_str().len() + "/.s.PGSQL.65535".len() <= MAX_SOCKET_PATH {
                self.run_as.prepare_dir(&socket_dir).await?;
                socket_dir.display().to_string()
            } else {
                // Too long for a Unix socket path: TCP only.
                String::new()
            };
        let previous = std::fs::read_to_string(self.dir.join("port"))
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok())
            .filter(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        let log = self.dir.join("postgres.log");
        let mut failures = String::new();
        for attempt in 0..3 {
            let port = match previous {
                Some(port) if attempt == 0 => port,
                _ => free_port()?,
            };
            // pg_ctl passes -o through `sh -c`, hence the quotes.
            let options = format!(
                "-p {port} -k '{socket_dir}' -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
            );
            // -l is not optional: without it the server inherits and holds our output pipes.
            let output = self
                .pg_ctl(&["-w", "-t", "60", "-o", &options, "-l"])
                .arg(&log)
                .arg("start")
                .output()
                .await?;
            if output.status.success() {
                ping(port, Duration::from_secs(10)).await?;
                return Ok(port);
            }
            let _ = writeln!(
                failures,
                "attempt {}, port {port}:\n{}",
                attempt + 1,
                describe(&output)
            );
        }
        let log_tail = std::fs::read_to_string(&log).unwrap_or_default();
        let log_tail: Vec<&str> = log_tail.lines().rev().take(20).collect();
        let log_tail: Vec<&str> = log_tail.into_iter().rev().collect();
        bail!(
            "pg_ctl start failed:\n{failures}\nlast lines of {}:\n{}",
            log.display(),
            log_tail.join("\n")
        )
    }
}

/// A PostgreSQL cluster of its own inside a network namespace (the fleet fault suite): its
/// own data directory, listening on the namespace's address only, trusting the fleet's
/// network. Stopped (immediately) and removed when dropped.
#[derive(Debug)]
pub struct NetnsPostgres {
    dir: crate::TempDir,
    exec_prefix: Vec<String>,
    addr: std::net::Ipv4Addr,
    port: u16,
    bins: PgBins,
    run_as: RunAs,
}

impl NetnsPostgres {
    /// Runs `initdb`, then starts the server through `exec_prefix` (`ip netns exec NS`) on
    /// `addr:port`; `trusted` (a CIDR) may connect without a password.
    pub async fn start(
        exec_prefix: Vec<String>,
        addr: std::net::Ipv4Addr,
        port: u16,
        trusted: &str,
    ) -> Result<NetnsPostgres> {
        let bins = PgBins::find().await?;
        let run_as = RunAs::detect().await?;
        let dir = crate::TempDir::new("fleet-pg")?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The postgres user must reach its directories inside.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        }
        let pg = NetnsPostgres {
            dir,
            exec_prefix,
            addr,
            port,
            bins,
            run_as,
        };
        let data = pg.dir.join("data");
        pg.run_as.prepare_dir(&data).await?;
        pg.run_as.prepare_dir(&pg.dir.join("sock")).await?;
        pg.run_as.prepare_dir(&pg.dir.join("log")).await?;
        let mut initdb = pg.run_as.command(&pg.bins.initdb);
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .args(["--locale=C", "--encoding=UTF8"])
            .current_dir(pg.dir.path());
        run(&mut initdb).await?;
        let hba = data.join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba)?;
        let _ = writeln!(text, "host all all {trusted} trust");
        std::fs::write(&hba, text)?;
        pg.start_again().await?;
        Ok(pg)
    }

    /// `postgres://postgres@ADDR:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}:{}/postgres", self.addr, self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exec_prefix[0]);
        cmd.args(&self.exec_prefix[1..]);
        if self.run_as == RunAs::Postgres {
            cmd.args(["runuser", "-u", "postgres", "--"]);
        }
        cmd.arg(&self.bins.pg_ctl)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn start_again(&self) -> Result<()> {
        let options = format!(
            "-p {} -k '{}' -c listen_addresses={} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.join("sock").display(),
            self.addr
        );
        let log = self.dir.join("log").join("postgres.log");
        let log = log.to_string_lossy();
        run(&mut self.pg_ctl(&["-w", "-t", "60", "-o", &options, "-l", &log, "start"])).await?;
        Ok(())
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are terminated, the port closes).
    pub async fn stop(&self) -> Result<()> {
        run(&mut self.pg_ctl(&["-w", "-t", "30", "-m", "fast", "stop"])).await?;
        Ok(())
    }
}

impl Drop for NetnsPostgres {
    fn drop(&mut self) {
        let mut cmd = std::process::Command::new(&self.exec_prefix[0]);
        cmd.args(&self.exec_prefix[1..]);
        if self.run_as == RunAs::Postgres {
            cmd.args(["runuser", "-u", "postgres", "--"]);
        }
        let _ = cmd
            .arg(&self.bins.pg_ctl)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-t", "10", "-m", "immediate", "stop"])
            .output();
    }
}

/// Line `index` of `postmaster.pid` (0: pid, 3: port), parsed.
fn postmaster_pid_line<T: std::str::FromStr>(pid_file: &Path, index: usize) -> Option<T> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    text.lines().nth(index)?.trim().parse().ok()
}

fn admin_url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// Drops the databases of earlier runs: called right after the cluster started, when no test
/// can be using them. Normally each `TestDb` drops its own; this catches killed test processes.
async fn drop_leftover_databases(port: u16) -> Result<()> {
    let url = admin_url(port);
    let client = connect(&url).await?;
    let rows = client
        .query(
            r"SELECT datname FROM pg_database WHERE datname LIKE 'gh\_%'",
            &[],
        )
        .await?;
    for row in rows {
        let name: String = row.get(0);
        drop_database(&url, &name).await?;
    }
    Ok(())
}

/// Waits until the server on `port` answers a query.
async fn ping(port: u16, patience: Duration) -> Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let attempt = async {
            connect(&admin_url(port))
                .await?
                .batch_execute("SELECT 1")
                .await
                .map_err(anyhow::Error::from)
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).context(format!("PostgreSQL on port {port} does not answer"));
            }
            Err(_) => sleep(Duration::from_millis(100)).await,
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Takes the exclusive `flock` on `path`, waiting for other processes; released on drop.
async fn lock(path: &Path) -> Result<File> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                sleep(Duration::from_millis(50)).await;
            }
            Err(TryLockError::WouldBlock) => {
                bail!(
                    "another process has held {} for {LOCK_TIMEOUT:?}",
                    path.display()
                )
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).context(format!("locking {}", path.display()));
            }
        }
    }
}

/// Runs a command to completion, failing with its output unless it succeeds.
async fn run(cmd: &mut Command) -> Result<Output> {
    let output = cmd
        .output()
        .await
        .with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!("{cmd:?} failed: {}", describe(&output));
    }
    Ok(output)
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_url() {
        let url = url_with_database(
            "postgres://u:p@db.example:5433/postgres?sslmode=disable",
            "gh_1",
        )
        .expect("valid url");
        assert_eq!(url, "postgres://u:p@db.example:5433/gh_1?sslmode=disable");
        let url =
            url_with_database("postgres://postgres@127.0.0.1:5432", "gh_2").expect("valid url");
        assert_eq!(url, "postgres://postgres@127.0.0.1:5432/gh_2");
    }

    #[test]
    fn non_url_is_rejected() {
        assert!(url_with_database("host=localhost dbname=postgres", "gh_1").is_err());
    }
}
