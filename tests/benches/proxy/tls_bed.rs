//! The setup of the TLS parts of the proxy benchmark, `upstream-tls` (issue 5) and `mtls`
//! (issue 6): their certificates, their CP and DP, the counters they read.
//!
//! The parts run on a CP (own database) and DP (`dp3`) of their own, so that the DP of the other
//! parts keeps its one route and one certificate. The DP is started like the others (one worker
//! thread, pinned to CPU 0, `--ssl-session-tickets off --ssl-session-cache off`
//! (no server-side resumption at all, as nginx's `ssl_session_cache off`). nginx gets the same
//! hosts as extra server blocks of `tests/bench/nginx-proxy.conf`, and the TLS upstreams are
//! extra servers of `tests/bench/nginx-upstream.conf` (which always has them: they cost the
//! other parts nothing).
//!
//! Hosts (each a route of the DP and a server block of nginx, all on the proxies' one TLS
//! port, served with one certificate for the four names from the proxies' intermediate CA):
//!
//! | host | upstream | client certificate |
//! |---|---|---|
//! | `up-plain.bench.test` | plain HTTP (the upstream nginx's plain port) | – |
//! | `up-tls.bench.test` | HTTPS, verified against the upstream CA | – |
//! | `up-mtls.bench.test` | HTTPS, verified, the proxy presents its client certificate | – |
//! | `mtls.bench.test` | plain HTTP | required: `mtls-auth` + `acl` (DP), `ssl_verify_client on` (nginx) |
//!
//! Certificates (rcgen, ECDSA P-256, made at start):
//!
//! - the **upstream CA** issues the TLS upstreams' certificate (`upstream.bench.test` and
//!   `127.0.0.1`) and the proxies' client certificate (CN `bench-proxy`). It is uploaded to
//!   the CP as a `ca_certificates` entity named by the services; nginx has it as
//!   `proxy_ssl_trusted_certificate`, and the upstream nginx's mTLS server as
//!   `ssl_client_certificate`. The DP's services use `https://127.0.0.1:PORT` (no DNS here):
//!   it verifies the IP address SAN and sends no SNI; nginx verifies the name
//!   (`proxy_ssl_name upstream.bench.test`) and sends no SNI either.
//! - the **client CA** issues the client certificate of the `mtls` part, CN (and DNS SAN)
//!   `bench-client`, the username of a consumer in the group `bench-clients`, the one group
//!   the route's `acl` allows. The CA is uploaded as a `ca_certificates` entity named by the
//!   route's `mtls-auth` (`revocation_check_mode: SKIP`); nginx has it as
//!   `ssl_client_certificate`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use gatehouse_tests::certs::{Algorithm, Ca};
use gatehouse_tests::{Admin, ControlPlane, DataPlane, Pki, TempDir, TestDb, test_db};

use crate::processes::free_port;
use crate::tools::{Identity, Tools};
use crate::{Bed, ServerPki, start_cp, start_dp};

/// To a plain upstream.
pub(crate) const PLAIN_HOST: &str = "up-plain.bench.test";
/// To a TLS upstream.
pub(crate) const TLS_HOST: &str = "up-tls.bench.test";
/// To an mTLS upstream.
pub(crate) const UPSTREAM_MTLS_HOST: &str = "up-mtls.bench.test";
/// Client certificates required (to a plain upstream).
pub(crate) const MTLS_HOST: &str = "mtls.bench.test";
/// The TLS upstreams' certificate name (also valid for `127.0.0.1`).
const UPSTREAM_NAME: &str = "upstream.bench.test";
/// The CN of the proxies' client certificate towards the mTLS upstream.
const PROXY_CLIENT_CN: &str = "bench-proxy";
/// The CN of the `mtls` part's client certificate: a consumer's username.
const CLIENT_CN: &str = "bench-client";
/// The consumer's group, the one the route's `acl` allows.
const CLIENT_GROUP: &str = "bench-clients";

/// The certificate files of the TLS parts (in the benchmark's temporary directory).
#[derive(Debug)]
pub(crate) struct TlsFiles {
    /// The proxies' certificate for the four hosts: chain (leaf + intermediate) and key.
    chain: PathBuf,
    key: PathBuf,
    /// The upstream CA, and the TLS upstreams' chain and key.
    upstream_ca: PathBuf,
    upstream_chain: PathBuf,
    upstream_key: PathBuf,
    /// The proxies' client certificate towards the mTLS upstream.
    proxy_client: Identity,
    /// The client CA and the `mtls` part's client certificate.
    client_ca: PathBuf,
    pub(crate) client: Identity,
}

/// Ports of the upstream nginx's extra servers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TlsPorts {
    /// TLS, no client certificate.
    pub(crate) upstream_tls: u16,
    /// TLS, client certificate required.
    pub(crate) upstream_mtls: u16,
    /// Plain HTTP, `stub_status` on `/status`.
    pub(crate) status: u16,
}

/// The CP and DP of the TLS parts, stopped when dropped (DP first).
pub(crate) struct TlsBed {
    pub(crate) dp: DataPlane,
    cp: ControlPlane,
    _db: TestDb,
    /// For `/metrics` and `stub_status`: a new connection per request, so that reading the
    /// upstream's counters adds exactly one connection and one request to them.
    http: reqwest::Client,
    status_port: u16,
}

/// Counters of the DP's `/metrics` that the TLS parts read, or their growth over a run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DpCounters {
    pub(crate) upstream_requests: u64,
    /// New upstream connections, plain and TLS.
    pub(crate) upstream_connections: u64,
    pub(crate) upstream_tls_connections: u64,
    pub(crate) full_handshakes: u64,
    pub(crate) resumed_handshakes: u64,
    /// Client certificates refused by mtls-auth, all reasons.
    pub(crate) mtls_failures: u64,
    /// Responses by class 2xx, and all others.
    pub(crate) responses_2xx: u64,
    pub(crate) responses_other: u64,
}

/// The upstream nginx's `stub_status` counters, or their growth over a run (the readings'
/// own connection and request taken out).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UpstreamCounters {
    /// Connections accepted.
    pub(crate) accepts: u64,
    /// Requests served.
    pub(crate) requests: u64,
}

// === impl TlsFiles ===

impl TlsFiles {
    /// Makes the certificates and writes them into `dir`.
    pub(crate) fn write(dir: &TempDir, server: &ServerPki) -> Result<TlsFiles> {
        let file = |name: &str, pem: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let (chain, key) = server.leaf(&[PLAIN_HOST, TLS_HOST, UPSTREAM_MTLS_HOST, MTLS_HOST])?;
        let upstream_ca = Ca::new("Gatehouse bench upstream CA")?;
        let upstream = upstream_ca.leaf(&[UPSTREAM_NAME, "127.0.0.1"], Algorithm::Ecdsa, 30)?;
        let proxy_client = upstream_ca.leaf(&[PROXY_CLIENT_CN], Algorithm::Ecdsa, 30)?;
        let client_ca = Ca::new("Gatehouse bench client CA")?;
        let client = client_ca.leaf(&[CLIENT_CN], Algorithm::Ecdsa, 30)?;
        Ok(TlsFiles {
            chain: file("tls-chain.pem", &chain)?,
            key: file("tls-key.pem", &key)?,
            upstream_ca: file("upstream-ca.pem", &upstream_ca.pem.cert)?,
            upstream_chain: file("upstream-chain.pem", &upstream.cert)?,
            upstream_key: file("upstream-key.pem", &upstream.key)?,
            proxy_client: Identity {
                cert: file("proxy-client.pem", &proxy_client.cert)?,
                key: file("proxy-client-key.pem", &proxy_client.key)?,
            },
            client_ca: file("client-ca.pem", &client_ca.pem.cert)?,
            client: Identity {
                cert: file("client.pem", &client.cert)?,
                key: file("client-key.pem", &client.key)?,
            },
        })
    }

    /// `conf` with the TLS parts' placeholders filled in: `@TLS_CHAIN@`, `@TLS_KEY@`,
    /// `@UPSTREAM_CA@`, `@UPSTREAM_CHAIN@`, `@UPSTREAM_KEY@`, `@PROXY_CLIENT_CERT@`,
    /// `@PROXY_CLIENT_KEY@`, `@CLIENT_CA@`, `@UPSTREAM_TLS_PORT@`, `@UPSTREAM_MTLS_PORT@`,
    /// `@STATUS_PORT@`.
    pub(crate) fn fill(&self, conf: &str, ports: &TlsPorts) -> Result<String> {
        let mut conf = conf.to_owned();
        for (name, path) in [
            ("@TLS_CHAIN@", &self.chain),
            ("@TLS_KEY@", &self.key),
            ("@UPSTREAM_CA@", &self.upstream_ca),
            ("@UPSTREAM_CHAIN@", &self.upstream_chain),
            ("@UPSTREAM_KEY@", &self.upstream_key),
            ("@PROXY_CLIENT_CERT@", &self.proxy_client.cert),
            ("@PROXY_CLIENT_KEY@", &self.proxy_client.key),
            ("@CLIENT_CA@", &self.client_ca),
        ] {
            conf = conf.replace(name, path.to_str().context("non-UTF-8 temp dir")?);
        }
        Ok(conf
            .replace("@UPSTREAM_TLS_PORT@", &ports.upstream_tls.to_string())
            .replace("@UPSTREAM_MTLS_PORT@", &ports.upstream_mtls.to_string())
            .replace("@STATUS_PORT@", &ports.status.to_string()))
    }
}

// === impl TlsPorts ===

impl TlsPorts {
    pub(crate) fn free() -> Result<TlsPorts> {
        Ok(TlsPorts {
            upstream_tls: free_port()?,
            upstream_mtls: free_port()?,
            status: free_port()?,
        })
    }
}

// === impl TlsBed ===

impl TlsBed {
    /// A CP with the TLS parts' configuration (upstreams: the upstream nginx's plain port
    /// `plain_port` and its TLS servers of `ports`), then its DP `dp3` of `pki`, ready.
    pub(crate) async fn start(
        pki: &Pki,
        files: &TlsFiles,
        plain_port: u16,
        ports: &TlsPorts,
    ) -> Result<TlsBed> {
        let db = test_db().await?;
        let cp = start_cp(&db, pki).await?;
        seed(cp.admin(), files, plain_port, ports)
            .await
            .context("configuring the TLS parts")?;
        let dp = start_dp(&cp, pki, "dp3", &[]).await?;
        Ok(TlsBed {
            dp,
            cp,
            _db: db,
            http: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(std::time::Duration::from_secs(10))
                .build()?,
            status_port: ports.status,
        })
    }

    pub(crate) fn cp(&self) -> &ControlPlane {
        &self.cp
    }

    /// Every host answers `ok` through both proxies (chains verified against the root; the
    /// client certificate presented on `mtls.bench.test`), a request without a client
    /// certificate is refused there, the DP made TLS connections to the upstreams, and the
    /// upstream's `stub_status` answers.
    pub(crate) async fn check(&self, tools: &Tools, bed: &Bed) -> Result<()> {
        let ca = bed.files.join("root.pem");
        let before = self.dp_counters().await?;
        for (name, addr) in [
            ("DP", self.dp.proxy_ssl_addr()?),
            ("nginx", bed.nginx_addr()?),
        ] {
            for (host, identity) in [
                (PLAIN_HOST, None),
                (TLS_HOST, None),
                (UPSTREAM_MTLS_HOST, None),
                (MTLS_HOST, Some(&bed.tls_files.client)),
            ] {
                let (status, body) = tools
                    .curl_as(&ca, addr, host, "/", identity)
                    .await
                    .with_context(|| format!("checking {name} at {addr} for {host}"))?;
                ensure!(
                    status == 200 && body == "ok",
                    "{name} for {host} answered {status}: {body:?}"
                );
            }
            let (status, body) = tools.curl_as(&ca, addr, MTLS_HOST, "/", None).await?;
            ensure!(
                status == 401 || status == 400,
                "{name} for {MTLS_HOST} without a client certificate answered {status}: {body:?}"
            );
        }
        let seen = self.dp_counters().await?.since(&before);
        ensure!(
            seen.upstream_tls_connections >= 2,
            "the DP made {} TLS connections to the upstreams, not 2: {seen:?}",
            seen.upstream_tls_connections
        );
        self.upstream_counters().await?;
        Ok(())
    }

    /// The DP's counters now.
    pub(crate) async fn dp_counters(&self) -> Result<DpCounters> {
        let url = format!("{}/metrics", self.dp.status_url());
        let text = self.get(&url).await?;
        DpCounters::parse(&text).with_context(|| format!("reading {url}:\n{text}"))
    }

    /// The upstream nginx's `stub_status` now (this reading's connection and request
    /// included).
    pub(crate) async fn upstream_counters(&self) -> Result<UpstreamCounters> {
        let url = format!("http://127.0.0.1:{}/status", self.status_port);
        let text = self.get(&url).await?;
        UpstreamCounters::parse(&text).with_context(|| format!("reading {url}:\n{text}"))
    }

    async fn get(&self, url: &str) -> Result<String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        ensure!(response.status() == 200, "GET {url}: {}", response.status());
        Ok(response.text().await?)
    }
}

/// The services, routes, certificates, CAs, plugins and consumer of the TLS parts.
async fn seed(admin: &Admin, files: &TlsFiles, plain_port: u16, ports: &TlsPorts) -> Result<()> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    post(
        admin,
        "/certificates",
        json!({"cert": read(&files.chain)?, "key": read(&files.key)?,
               "snis": [PLAIN_HOST, TLS_HOST, UPSTREAM_MTLS_HOST, MTLS_HOST]}),
    )
    .await?;
    let upstream_ca = id(&post(
        admin,
        "/ca_certificates",
        json!({"cert": read(&files.upstream_ca)?}),
    )
    .await?)?;
    let client_ca = id(&post(
        admin,
        "/ca_certificates",
        json!({"cert": read(&files.client_ca)?}),
    )
    .await?)?;
    let proxy_client = id(&post(
        admin,
        "/certificates",
        json!({"cert": read(&files.proxy_client.cert)?, "key": read(&files.proxy_client.key)?}),
    )
    .await?)?;

    let plain = json!({"name": "up-plain", "url": format!("http://127.0.0.1:{plain_port}")});
    let tls = json!({
        "name": "up-tls",
        "url": format!("https://127.0.0.1:{}", ports.upstream_tls),
        "tls_verify": true,
        "ca_certificates": [upstream_ca],
    });
    let mtls = json!({
        "name": "up-mtls",
        "url": format!("https://127.0.0.1:{}", ports.upstream_mtls),
        "tls_verify": true,
        "ca_certificates": [upstream_ca],
        "client_certificate": {"id": proxy_client},
    });
    let mut plain_id = String::new();
    for (service, host) in [
        (plain, PLAIN_HOST),
        (tls, TLS_HOST),
        (mtls, UPSTREAM_MTLS_HOST),
    ] {
        let service = id(&post(admin, "/services", service).await?)?;
        post(
            admin,
            "/routes",
            json!({"name": host.replace('.', "-"), "hosts": [host], "service": {"id": service}}),
        )
        .await?;
        if host == PLAIN_HOST {
            plain_id = service;
        }
    }

    let route = id(&post(
        admin,
        "/routes",
        json!({"name": "mtls", "hosts": [MTLS_HOST], "service": {"id": plain_id}}),
    )
    .await?)?;
    post(
        admin,
        &format!("/routes/{route}/plugins"),
        json!({"name": "mtls-auth",
               "config": {"ca_certificates": [client_ca], "revocation_check_mode": "SKIP"}}),
    )
    .await?;
    post(
        admin,
        &format!("/routes/{route}/plugins"),
        json!({"name": "acl", "config": {"allow": [CLIENT_GROUP]}}),
    )
    .await?;
    post(admin, "/consumers", json!({"username": CLIENT_CN})).await?;
    post(
        admin,
        &format!("/consumers/{CLIENT_CN}/acls"),
        json!({"group": CLIENT_GROUP}),
    )
    .await?;
    Ok(())
}

/// `POST path` with a JSON body, which must create (201); the created entity.
async fn post(admin: &Admin, path: &str, body: Value) -> Result<Value> {
    let created = admin.post_json(path, &body).await?;
    ensure!(created.status == 201, "POST {path}: {created:?}");
    Ok(created.body)
}

fn id(entity: &Value) -> Result<String> {
    Ok(entity["id"]
        .as_str()
        .with_context(|| format!("no id in {entity}"))?
        .to_owned())
}

// === impl DpCounters ===

impl DpCounters {
    fn parse(text: &str) -> Result<DpCounters> {
        let mut counters = DpCounters::default();
        let mut seen = 0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<u64>() else {
                continue;
            };
            let field = match name {
                "gatehouse_upstream_requests_total" => &mut counters.upstream_requests,
                "gatehouse_upstream_connections_total{tls=\"true\"}" => {
                    counters.upstream_connections += value;
                    &mut counters.upstream_tls_connections
                }
                "gatehouse_upstream_connections_total{tls=\"false\"}" => {
                    &mut counters.upstream_connections
                }
                "gatehouse_tls_handshakes_total{kind=\"full\"}" => &mut counters.full_handshakes,
                "gatehouse_tls_handshakes_total{kind=\"resumed\"}" => {
                    &mut counters.resumed_handshakes
                }
                "gatehouse_proxy_requests_total{class=\"2xx\"}" => &mut counters.responses_2xx,
                _ if name.starts_with("gatehouse_proxy_requests_total{") => {
                    &mut counters.responses_other
                }
                _ if name.starts_with("gatehouse_mtls_auth_failures_total{") => {
                    &mut counters.mtls_failures
                }
                _ => continue,
            };
            *field += value;
            seen += 1;
        }
        ensure!(seen >= 4, "not the counters expected");
        Ok(counters)
    }

    /// The growth from `before` to this.
    pub(crate) fn since(&self, before: &DpCounters) -> DpCounters {
        DpCounters {
            upstream_requests: self.upstream_requests - before.upstream_requests,
            upstream_connections: self.upstream_connections - before.upstream_connections,
            upstream_tls_connections: self.upstream_tls_connections
                - before.upstream_tls_connections,
            full_handshakes: self.full_handshakes - before.full_handshakes,
            resumed_handshakes: self.resumed_handshakes - before.resumed_handshakes,
            mtls_failures: self.mtls_failures - before.mtls_failures,
            responses_2xx: self.responses_2xx - before.responses_2xx,
            responses_other: self.responses_other - before.responses_other,
        }
    }
}

// === impl UpstreamCounters ===

impl UpstreamCounters {
    /// `Active connections: 1 \n server accepts handled requests\n 5 5 9 \n ...`.
    fn parse(text: &str) -> Result<UpstreamCounters> {
        let mut lines = text.lines();
        lines
            .find(|l| l.trim() == "server accepts handled requests")
            .context("no 'server accepts handled requests' line")?;
        let numbers: Vec<u64> = lines
            .next()
            .context("no counters")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let [accepts, _handled, requests] = numbers[..] else {
            anyhow::bail!("not 3 counters");
        };
        Ok(UpstreamCounters { accepts, requests })
    }

    /// The growth from `before` to this, without the connection and request of this reading
    /// (the one of `before` was counted before it).
    pub(crate) fn since(&self, before: &UpstreamCounters) -> UpstreamCounters {
        UpstreamCounters {
            accepts: (self.accepts - before.accepts).saturating_sub(1),
            requests: (self.requests - before.requests).saturating_sub(1),
        }
    }
}

/// `1 − connections ÷ requests` (NaN without requests).
pub(crate) fn reuse(connections: u64, requests: u64) -> f64 {
    if requests == 0 {
        return f64::NAN;
    }
    1.0 - connections as f64 / requests as f64
}
