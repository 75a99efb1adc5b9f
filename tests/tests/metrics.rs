//! Metrics, end to end: a real Prometheus server (Debian's `prometheus`, started by the test
//! with its own configuration, free port and temporary storage) scrapes a control plane and
//! two data planes every second; after known traffic the test asks Prometheus' HTTP API for
//! the series and their values.

mod cluster_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use cluster_support::*;
use gatehouse_tests::{DataPlane, TempDir, config_version, patience, wait_until};

/// The upstream's answer to `/hello`.
const HELLO: &str = "hello from the upstream\n";

/// An upstream answering `/hello` with [`HELLO`] and anything else with 418.
struct Upstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        let mut response =
                            Response::new(Full::new(Bytes::from_static(HELLO.as_bytes())));
                        if req.uri().path() != "/hello" {
                            *response.status_mut() = StatusCode::IM_A_TEAPOT;
                        }
                        Ok::<_, Infallible>(response)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(Upstream { addr, task })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Prometheus server of the test's own, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` (`(job, [host:port])`) every second, and waits until
    /// it is ready.
    async fn start(jobs: &[(&str, Vec<SocketAddr>)]) -> Result<Prometheus> {
        let dir = TempDir::new("prometheus")?;
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, targets) in jobs {
            let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
            config.push_str(&format!(
                "  - job_name: '{job}'\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        // A free port: bound and released; Prometheus takes it right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let binary = which("prometheus").context(
            "prometheus not found: install Debian's prometheus package (deploy/test.sh does)",
        )?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting prometheus")?;
        let url = format!("http://127.0.0.1:{port}");
        let prometheus = Prometheus {
            child,
            url,
            _dir: dir,
        };
        let ready = format!("{}/-/ready", prometheus.url);
        wait_until("prometheus ready", patience(), || async {
            Ok(reqwest::get(&ready)
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ()))
        })
        .await?;
        Ok(prometheus)
    }

    /// The result vector of an instant query.
    async fn query(&self, query: &str) -> Result<Vec<Value>> {
        let body: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await?
            .json()
            .await?;
        ensure!(body["status"] == "success", "{query}: {body}");
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The single value of `query`, once it has one.
    async fn value(&self, query: &str) -> Result<Option<f64>> {
        let result = self.query(query).await?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => Ok(one["value"][1].as_str().and_then(|v| v.parse().ok())),
            more => bail!("{query}: {} series: {more:?}", more.len()),
        }
    }

    /// Waits until `query` has the single value `expected`.
    async fn wait_for(&self, query: &str, expected: f64) -> Result<()> {
        let last = std::sync::Mutex::new(None);
        let waited = wait_until(&format!("{query} == {expected}"), patience(), || {
            let last = &last;
            async move {
                let value = self.value(query).await?;
                *last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
                Ok((value == Some(expected)).then_some(()))
            }
        })
        .await;
        let last = *last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        waited.with_context(|| format!("{query}: last value {last:?}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([std::path::PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `n` GETs of `path` through `dp`; returns the statuses.
async fn get_n(dp: &DataPlane, path: &str, n: usize) -> Result<Vec<u16>> {
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..n {
        let response = client
            .get(format!("{}{path}", dp.proxy_url()?))
            .send()
            .await?;
        statuses.push(response.status().as_u16());
        response.bytes().await?;
    }
    Ok(statuses)
}

/// Every line of a data plane's `/metrics`.
async fn scrape(dp: &DataPlane) -> Result<String> {
    let response = reqwest::get(format!("{}/metrics", dp.status_url())).await?;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    Ok(response.text().await?)
}

#[tokio::test]
async fn prometheus_scrapes_the_control_plane_and_two_data_planes() -> Result<()> {
    let cluster = Cluster::start(&["dp1", "dp2"], &[]).await?;
    let admin = cluster.admin();
    let upstream = Upstream::start().await?;
    let service = admin
        .post_json(
            "/services",
            &json!({"name": "echo", "url": format!("http://{}", upstream.addr)}),
        )
        .await?;
    ensure!(service.status == 201, "{service:?}");
    for (name, path) in [("hello", "/hello"), ("teapot", "/teapot")] {
        let route = admin
            .post_json(
                "/services/echo/routes",
                &json!({"name": name, "paths": [path], "strip_path": false}),
            )
            .await?;
        ensure!(route.status == 201, "{route:?}");
    }
    let certificate = create_certificate(admin, "metrics.example.test").await?;
    let ca = gatehouse_tests::certs::Ca::new("Metrics CA")?;
    let ca_certificate = admin
        .post_json("/ca_certificates", &json!({"cert": ca.pem.cert}))
        .await?;
    ensure!(ca_certificate.status == 201, "{ca_certificate:?}");
    let pool = admin
        .post_json("/upstreams", &json!({"name": "pool"}))
        .await?;
    ensure!(pool.status == 201, "{pool:?}");
    let target = admin
        .post_json(
            "/upstreams/pool/targets",
            &json!({"target": upstream.addr.to_string()}),
        )
        .await?;
    ensure!(target.status == 201, "{target:?}");
    let version = config_version(admin).await?;

    let dp1 = cluster.dp("dp1").await?;
    let dp2 = cluster.dp("dp2").await?;
    for dp in [&dp1, &dp2] {
        dp.wait_for_version(version, patience()).await?;
    }
    let cp_status = cluster
        .cp
        .status_url()
        .context("the control plane has a status listener")?;
    let cp_status: SocketAddr = cp_status.trim_start_matches("http://").parse()?;
    let prometheus = Prometheus::start(&[
        ("cp", vec![cp_status]),
        ("dp", vec![dp1.status_addr(), dp2.status_addr()]),
    ])
    .await?;
    let dp1_at = dp1.status_addr().to_string();
    let dp2_at = dp2.status_addr().to_string();

    // Known traffic: 5 and 3 answers of the upstream, 2 of the upstream with 418 (an
    // uncommon status, counted by class), 2 without a route (answered by the gateway).
    assert_eq!(get_n(&dp1, "/hello", 5).await?, vec![200; 5]);
    assert_eq!(get_n(&dp2, "/hello", 3).await?, vec![200; 3]);
    assert_eq!(get_n(&dp1, "/teapot", 2).await?, vec![418; 2]);
    assert_eq!(get_n(&dp1, "/nowhere", 2).await?, vec![404; 2]);

    // TLS: one full TLS 1.2 handshake (openssl), one TLS 1.3 (openssl), and one client that
    // speaks HTTP to the TLS port (its "ClientHello" cannot be read).
    let tls_addr = dp1.proxy_ssl_addr()?;
    for version in ["-tls1_2", "-tls1_3"] {
        let output = Command::new("openssl")
            .args(["s_client", "-connect", &tls_addr.to_string()])
            .args(["-servername", "metrics.example.test", version])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running openssl s_client")?;
        let text = String::from_utf8_lossy(&output.stdout);
        ensure!(
            text.contains("BEGIN CERTIFICATE"),
            "openssl {version}: {text}"
        );
    }
    let mut plain = tokio::net::TcpStream::connect(tls_addr).await?;
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await?;
    let mut rest = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut rest).await;

    for target in [cp_status.to_string(), dp1_at.clone(), dp2_at.clone()] {
        prometheus
            .wait_for(&format!("up{{instance=\"{target}\"}}"), 1.0)
            .await?;
    }
    let requests = |instance: &str, route: &str, code: &str, source: &str| {
        let service = if route.is_empty() { "" } else { "echo" };
        format!(
            "gatehouse_http_requests_total{{instance=\"{instance}\",service=\"{service}\",\
             route=\"{route}\",code=\"{code}\",source=\"{source}\"}}"
        )
    };
    let expected = [
        (requests(&dp1_at, "hello", "200", "service"), 5.0),
        (requests(&dp2_at, "hello", "200", "service"), 3.0),
        (requests(&dp1_at, "teapot", "4xx", "service"), 2.0),
        (requests(&dp1_at, "", "404", "gateway"), 2.0),
        (
            format!(
                "gatehouse_tls_handshake_versions_total{{instance=\"{dp1_at}\",version=\"TLSv1.2\",kind=\"full\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "gatehouse_tls_handshake_versions_total{{instance=\"{dp1_at}\",version=\"TLSv1.3\",kind=\"full\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "gatehouse_tls_handshake_failures_total{{instance=\"{dp1_at}\",reason=\"client_hello\"}}"
            ),
            1.0,
        ),
        // The fleet-wide sums dashboards compute, over both data planes.
        (
            "sum(gatehouse_http_requests_total{job=\"dp\",route=\"hello\"})".to_owned(),
            8.0,
        ),
        (
            "sum(gatehouse_request_latency_ms_count{job=\"dp\",route=\"hello\"})".to_owned(),
            8.0,
        ),
        (
            "sum(gatehouse_upstream_latency_ms_count{job=\"dp\",route=\"hello\"})".to_owned(),
            8.0,
        ),
    ];
    for (query, value) in &expected {
        prometheus.wait_for(query, *value).await?;
    }
    // Every answer below the largest bucket (+Inf holds them all too).
    prometheus
        .wait_for(
            &format!(
                "gatehouse_upstream_latency_ms_bucket{{instance=\"{dp1_at}\",route=\"hello\",le=\"+Inf\"}}"
            ),
            5.0,
        )
        .await?;
    prometheus
        .wait_for(
            &format!(
                "gatehouse_bandwidth_bytes_total{{instance=\"{dp1_at}\",route=\"hello\",direction=\"egress\"}}"
            ),
            (5 * HELLO.len()) as f64,
        )
        .await?;
    prometheus
        .wait_for(
            "sum(gatehouse_proxy_requests_total{job=\"dp\",class=\"2xx\"})",
            8.0,
        )
        .await?;
    prometheus
        .wait_for(
            &format!("gatehouse_config_version{{instance=\"{dp1_at}\"}}"),
            version as f64,
        )
        .await?;
    prometheus
        .wait_for(
            &format!("gatehouse_control_plane_connected{{instance=\"{dp2_at}\"}}"),
            1.0,
        )
        .await?;

    // The balancer's view of the target (no health checks configured: Kong's default).
    for (state, value) in [
        ("healthchecks_off", 1.0),
        ("healthy", 0.0),
        ("unhealthy", 0.0),
    ] {
        prometheus
            .wait_for(
                &format!(
                    "gatehouse_upstream_target_health{{instance=\"{dp1_at}\",upstream=\"pool\",target=\"{}\",state=\"{state}\"}}",
                    upstream.addr
                ),
                value,
            )
            .await?;
    }

    // The control plane: both data planes in sync, the database reachable, propagation timed.
    prometheus
        .wait_for("gatehouse_datastore_reachable{job=\"cp\"}", 1.0)
        .await?;
    prometheus
        .wait_for("count(gatehouse_data_plane_last_seen{job=\"cp\"})", 2.0)
        .await?;
    prometheus
        .wait_for(
            "count(gatehouse_data_plane_config_version_lag{job=\"cp\"} == 0)",
            2.0,
        )
        .await?;
    prometheus
        .wait_for(
            "count(gatehouse_data_plane_version_compatible{job=\"cp\"} == 1)",
            2.0,
        )
        .await?;
    prometheus
        .wait_for(
            "count(gatehouse_data_plane_connected{job=\"cp\"} == 1)",
            2.0,
        )
        .await?;
    // Each data plane's hash as Kong shows it equals the CP's latest hash's.
    let cp_hash = gatehouse_tests::clustering_status(admin).await?["config_hash"]
        .as_str()
        .context("config_hash")?
        .to_owned();
    let hash_number = i64::from_str_radix(&cp_hash[..13], 16)? as f64;
    prometheus
        .wait_for(
            &format!("count(gatehouse_data_plane_config_hash{{job=\"cp\"}} == {hash_number})"),
            2.0,
        )
        .await?;

    // A write now reaches both data planes: two more propagation observations, lag back to 0.
    let before = prometheus
        .value("gatehouse_config_propagation_seconds_count{job=\"cp\"}")
        .await?
        .unwrap_or(0.0);
    let patched = admin
        .patch_json("/routes/teapot", &json!({"paths": ["/teapot", "/kettle"]}))
        .await?;
    ensure!(patched.status == 200, "{patched:?}");
    for dp in [&dp1, &dp2] {
        dp.wait_for_version(version + 1, patience()).await?;
    }
    prometheus
        .wait_for(
            "gatehouse_config_propagation_seconds_count{job=\"cp\"}",
            before + 2.0,
        )
        .await?;
    prometheus
        .wait_for(
            "count(gatehouse_data_plane_config_version_lag{job=\"cp\"} == 0)",
            2.0,
        )
        .await?;

    // Certificate expiry: the CP's and each DP's gauge show the certificate's notAfter.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as f64;
    let cp_expiry = wait_until("the CP's certificate expiry gauge", patience(), || async {
        prometheus
            .value(&format!(
                "gatehouse_certificate_expiry_timestamp_seconds{{job=\"cp\",certificate=\"{certificate}\"}}"
            ))
            .await
    })
    .await?;
    ensure!(
        (now + 29.0 * 86400.0..now + 31.0 * 86400.0).contains(&cp_expiry),
        "a 30-day certificate: {cp_expiry} (now {now})"
    );
    prometheus
        .wait_for(
            &format!(
                "count(gatehouse_certificate_expiry_timestamp_seconds{{job=\"dp\",certificate=\"{certificate}\",snis=\"metrics.example.test\"}} == {cp_expiry})"
            ),
            2.0,
        )
        .await?;
    for (job, count) in [("cp", 1.0), ("dp", 2.0)] {
        prometheus
            .wait_for(
                &format!(
                    "count(gatehouse_cluster_certificate_expiry_timestamp_seconds{{job=\"{job}\"}} > {now})"
                ),
                count,
            )
            .await?;
    }
    prometheus
        .wait_for(
            "count(gatehouse_data_plane_cluster_cert_expiry_timestamp{job=\"cp\"} > time())",
            2.0,
        )
        .await?;
    prometheus
        .wait_for(
            "count(gatehouse_node_info{job=\"dp\",role=\"data_plane\"})",
            2.0,
        )
        .await?;

    prometheus
        .wait_for(
            "count(gatehouse_ca_certificate_expiry_timestamp_seconds{job=\"cp\"} > time() + 300 * 86400)",
            1.0,
        )
        .await?;

    // Every metric the Grafana dashboard uses exists in Prometheus.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/gatehouse.json"
    ))?;
    let known: Value = reqwest::get(format!("{}/api/v1/label/__name__/values", prometheus.url))
        .await?
        .json()
        .await?;
    let known: Vec<&str> = known["data"]
        .as_array()
        .context("metric names")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut used: Vec<&str> = dashboard
        .match_indices("gatehouse_")
        .map(|(at, _)| {
            let rest = &dashboard[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| name.len() > "gatehouse_".len())
        .collect();
    used.sort_unstable();
    used.dedup();
    ensure!(used.len() >= 10, "{used:?}");
    for name in used {
        ensure!(
            known.contains(&name),
            "the dashboard uses {name}, unknown to Prometheus"
        );
    }

    // A route that leaves the configuration leaves /metrics (bounded series).
    let text = scrape(&dp1).await?;
    ensure!(text.contains("route=\"teapot\""), "{text}");
    let deleted = admin.delete("/routes/teapot").await?;
    ensure!(deleted.status == 204, "{deleted:?}");
    dp1.wait_for_version(version + 2, patience()).await?;
    let text = scrape(&dp1).await?;
    ensure!(!text.contains("route=\"teapot\""), "{text}");
    ensure!(text.contains("route=\"hello\""), "{text}");
    ensure!(text.trim_end().ends_with("# EOF"), "{text}");
    Ok(())
}
