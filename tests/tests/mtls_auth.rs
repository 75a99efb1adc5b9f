//! `mtls-auth` and `acl` end to end: CAs and plugins configured through the Admin API (form
//! bodies, as the seed walkthrough), a real `gatehouse-dp`, rustls clients with and without
//! client certificates, and an upstream that reports the headers it got.

mod cluster_support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use cluster_support::*;
use gatehouse_tests::certs::{Algorithm, Ca, Pem};
use gatehouse_tests::{Admin, DataPlane, config_version, patience, wait_until};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP/1.1 upstream answering with the request headers as JSON.
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
                        let headers: BTreeMap<String, String> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.as_str().to_owned(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                )
                            })
                            .collect();
                        let body = json!({"headers": headers}).to_string();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
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

/// Presents an optional client certificate and counts how often the server asked for one.
#[derive(Debug)]
struct Identity {
    key: Option<Arc<CertifiedKey>>,
    asked: AtomicUsize,
}

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client certificate and its key, ready for rustls.
fn certified(pem: &Pem) -> Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pem.cert.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider)?))
}

/// A TLS client trusting `server_ca`, presenting `client` (if any).
struct Client {
    config: Arc<rustls::ClientConfig>,
    identity: Arc<Identity>,
}

impl Client {
    fn new(server_ca: &Ca, client: Option<&Pem>) -> Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(
            server_ca.pem.cert.as_bytes(),
        )?)?;
        let identity = Arc::new(Identity {
            key: client.map(certified).transpose()?,
            asked: AtomicUsize::new(0),
        });
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_cert_resolver(identity.clone());
        Ok(Client {
            config: Arc::new(config),
            identity,
        })
    }

    fn asked(&self) -> usize {
        self.identity.asked.load(Ordering::SeqCst)
    }

    /// A new TLS connection to `addr` for `host`, then `GET path` on it.
    async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> Result<(u16, Value)> {
        let mut connection = self.connect(addr, host).await?;
        connection.get(host, path).await
    }

    async fn connect(&self, addr: SocketAddr, host: &str) -> Result<Connection> {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let tcp = TcpStream::connect(addr).await?;
        let tls = tokio::time::timeout(
            REQUEST_TIMEOUT,
            connector.connect(ServerName::try_from(host.to_owned())?, tcp),
        )
        .await??;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let (sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(Connection { sender, resumed })
    }
}

/// A keep-alive HTTP/1.1 connection over TLS.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    /// The TLS session was resumed (no certificate exchanged in this handshake).
    resumed: bool,
}

impl Connection {
    async fn get(&mut self, host: &str, path: &str) -> Result<(u16, Value)> {
        let request = Request::get(path)
            .header("host", host)
            .header("x-consumer-username", "spoofed")
            .body(Empty::new())?;
        let response =
            tokio::time::timeout(REQUEST_TIMEOUT, self.sender.send_request(request)).await??;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }
}

async fn created(admin: &Admin, path: &str, fields: &[(&str, &str)]) -> Result<Value> {
    let response = admin.post_form(path, fields).await?;
    ensure!(response.status == 201, "POST {path}: {response:?}");
    Ok(response.body)
}

/// Uploads a CA certificate as a file part (`curl -F cert=@ca.crt`); returns its id.
async fn upload_ca(admin: &Admin, ca: &Ca) -> Result<String> {
    let part = reqwest::multipart::Part::text(ca.pem.cert.clone()).file_name("ca.crt");
    let form = reqwest::multipart::Form::new().part("cert", part);
    let response = admin
        .send(
            admin
                .request(reqwest::Method::POST, "/ca_certificates")
                .multipart(form),
        )
        .await?;
    ensure!(response.status == 201, "upload CA: {response:?}");
    Ok(response.body["id"].as_str().context("CA id")?.to_owned())
}

async fn applied(admin: &Admin, dp: &DataPlane) -> Result<()> {
    dp.wait_for_version(config_version(admin).await?, patience())
        .await?;
    Ok(())
}

/// A DP, an upstream, a server certificate for `hosts` (from `server_ca`), and a service.
async fn setup(
    cluster: &Cluster,
    server_ca: &Ca,
    hosts: &[&str],
) -> Result<(DataPlane, Upstream, String)> {
    let admin = cluster.admin();
    let dp = cluster.dp("dp1").await?;
    let upstream = Upstream::start().await?;
    let server = server_ca.leaf(hosts, Algorithm::Ecdsa, 30)?;
    let mut fields = vec![("cert", server.cert.as_str()), ("key", server.key.as_str())];
    for host in hosts {
        fields.push(("snis[]", host));
    }
    created(admin, "/certificates", &fields).await?;
    let url = format!("http://{}", upstream.addr);
    let service = created(admin, "/services", &[("name", "app"), ("url", &url)]).await?;
    Ok((
        dp,
        upstream,
        service["id"].as_str().context("id")?.to_owned(),
    ))
}

#[tokio::test]
async fn global_mtls_auth_maps_certificates_to_consumers() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let server_ca = Ca::new("server CA")?;
    let (dp, _upstream, service) = setup(&cluster, &server_ca, &["api.mtls.test"]).await?;
    created(
        admin,
        &format!("/services/{service}/routes"),
        &[("hosts[]", "api.mtls.test"), ("protocols[]", "https")],
    )
    .await?;
    let client_ca = Ca::new("client CA")?;
    let ca_id = upload_ca(admin, &client_ca).await?;
    let plugin = created(
        admin,
        "/plugins",
        &[("name", "mtls-auth"), ("config.ca_certificates", &ca_id)],
    )
    .await?;
    let alice = created(
        admin,
        "/consumers",
        &[("username", "alice"), ("custom_id", "A-1")],
    )
    .await?;
    applied(admin, &dp).await?;
    let addr = dp.proxy_ssl_addr()?;
    let host = "api.mtls.test";

    // No certificate: asked, none given, 401.
    let anonymous = Client::new(&server_ca, None)?;
    let (status, body) = anonymous.get(addr, host, "/").await?;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["message"], "No required TLS certificate was sent");
    assert_eq!(anonymous.asked(), 1);

    // Signed by the CA, CN alice: the consumer's headers, the client's spoofed one replaced.
    let alice_cert = client_ca.leaf(&["alice"], Algorithm::Ecdsa, 30)?;
    let trusted = Client::new(&server_ca, Some(&alice_cert))?;
    let (status, body) = trusted.get(addr, host, "/").await?;
    assert_eq!(status, 200, "{body}");
    let headers = &body["headers"];
    assert_eq!(headers["x-consumer-username"], "alice");
    assert_eq!(headers["x-consumer-id"], alice["id"]);
    assert_eq!(headers["x-consumer-custom-id"], "A-1");

    // Another CA, and an expired certificate: 401 with the generic message; the reason is
    // in the log only.
    let stranger = Ca::new("stranger CA")?;
    let foreign = stranger.leaf(&["alice"], Algorithm::Ecdsa, 30)?;
    let (status, body) = Client::new(&server_ca, Some(&foreign))?
        .get(addr, host, "/")
        .await?;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["message"], "TLS certificate failed verification");
    let expired = client_ca.leaf_valid(&["alice"], Algorithm::Ecdsa, -10, -1)?;
    let (status, body) = Client::new(&server_ca, Some(&expired))?
        .get(addr, host, "/")
        .await?;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["message"], "TLS certificate failed verification");
    let line = dp.wait_for_log("has expired", patience()).await?;
    assert!(line.contains("mtls-auth"), "{line}");
    let line = dp
        .wait_for_log("not issued by a CA of the plugin", patience())
        .await?;
    assert!(!line.contains("BEGIN"), "{line}");

    // Valid but unknown to every consumer: 401.
    let nobody = client_ca.leaf(&["nobody"], Algorithm::Ecdsa, 30)?;
    let (status, _) = Client::new(&server_ca, Some(&nobody))?
        .get(addr, host, "/")
        .await?;
    assert_eq!(status, 401);

    // A resumed TLS 1.3 session still carries the client's certificate and is checked.
    let mut resumed = trusted.connect(addr, host).await?;
    assert!(
        resumed.resumed,
        "the client's second connection resumes its session"
    );
    let (status, body) = resumed.get(host, "/").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-consumer-username"], "alice");

    // The CA changes at the CP: a keep-alive connection verified before is refused on its
    // next request, and so is a resumed session.
    let mut kept = trusted.connect(addr, host).await?;
    assert_eq!(kept.get(host, "/").await?.0, 200);
    let other_ca = Ca::new("other client CA")?;
    let other_id = upload_ca(admin, &other_ca).await?;
    let patched = admin
        .patch_json(
            &format!("/plugins/{}", plugin["id"].as_str().context("id")?),
            &json!({"config": {"ca_certificates": [other_id]}}),
        )
        .await?;
    ensure!(patched.status == 200, "{patched:?}");
    applied(admin, &dp).await?;
    let (status, body) = kept.get(host, "/").await?;
    assert_eq!(status, 401, "{body}");
    let mut resumed = trusted.connect(addr, host).await?;
    assert!(resumed.resumed);
    assert_eq!(resumed.get(host, "/").await?.0, 401);

    // Every refusal is counted by reason.
    let metrics = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(format!("{}/metrics", dp.status_url()))
        .send()
        .await?
        .text()
        .await?;
    for reason in ["no_certificate", "unknown_ca", "expired", "no_consumer"] {
        let line = format!("gatehouse_mtls_auth_failures_total{{reason=\"{reason}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .with_context(|| format!("{line} in {metrics}"))?
            .parse()?;
        assert!(count >= 1, "{reason}: {metrics}");
    }
    Ok(())
}

#[tokio::test]
async fn route_scoped_instances_accept_only_their_clients() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let server_ca = Ca::new("server CA")?;
    let hosts = ["one.test", "two.test", "open.test"];
    let (dp, _upstream, service) = setup(&cluster, &server_ca, &hosts).await?;
    let (ca_one, ca_two) = (Ca::new("CA one")?, Ca::new("CA two")?);
    let id_one = upload_ca(admin, &ca_one).await?;
    let id_two = upload_ca(admin, &ca_two).await?;
    created(admin, "/consumers", &[("username", "client-one")]).await?;
    created(admin, "/consumers", &[("username", "client-two")]).await?;
    for (name, host, ca) in [
        ("one", "one.test", Some(&id_one)),
        ("two", "two.test", Some(&id_two)),
        ("open", "open.test", None),
    ] {
        let route = created(
            admin,
            &format!("/services/{service}/routes"),
            &[("name", name), ("hosts[]", host)],
        )
        .await?;
        if let Some(ca) = ca {
            created(
                admin,
                &format!("/routes/{}/plugins", route["id"].as_str().context("id")?),
                &[("name", "mtls-auth"), ("config.ca_certificates", ca)],
            )
            .await?;
        }
    }
    applied(admin, &dp).await?;
    let addr = dp.proxy_ssl_addr()?;
    let one = Client::new(
        &server_ca,
        Some(&ca_one.leaf(&["client-one"], Algorithm::Ecdsa, 30)?),
    )?;
    let two = Client::new(
        &server_ca,
        Some(&ca_two.leaf(&["client-two"], Algorithm::Rsa, 30)?),
    )?;

    assert_eq!(one.get(addr, "one.test", "/").await?.0, 200);
    assert_eq!(one.get(addr, "two.test", "/").await?.0, 401);
    assert_eq!(two.get(addr, "two.test", "/").await?.0, 200);
    assert_eq!(two.get(addr, "one.test", "/").await?.0, 401);
    // The route without the plugin never asks for a certificate.
    let asked = one.asked();
    let (status, body) = one.get(addr, "open.test", "/").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        one.asked(),
        asked,
        "open.test must not request a client certificate"
    );
    // No plugin there: the client's own header passes as Kong passes it.
    assert_eq!(body["headers"]["x-consumer-username"], "spoofed");
    Ok(())
}

#[tokio::test]
async fn certificates_as_identity_with_acl_groups_and_no_consumer() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let server_ca = Ca::new("server CA")?;
    let (dp, _upstream, service) = setup(&cluster, &server_ca, &["ops.test"]).await?;
    let client_ca = Ca::new("client CA")?;
    let ca_id = upload_ca(admin, &client_ca).await?;
    let route = created(
        admin,
        &format!("/services/{service}/routes"),
        &[("hosts[]", "ops.test")],
    )
    .await?;
    let route_id = route["id"].as_str().context("id")?;
    created(
        admin,
        &format!("/routes/{route_id}/plugins"),
        &[
            ("name", "mtls-auth"),
            ("config.ca_certificates", &ca_id),
            ("config.skip_consumer_lookup", "true"),
            ("config.authenticated_group_by", "CN"),
        ],
    )
    .await?;
    created(
        admin,
        &format!("/routes/{route_id}/plugins"),
        &[("name", "acl"), ("config.allow[]", "ops-team")],
    )
    .await?;
    applied(admin, &dp).await?;
    let addr = dp.proxy_ssl_addr()?;

    let ops = Client::new(
        &server_ca,
        Some(&client_ca.leaf(&["ops-team", "ops.internal"], Algorithm::Ecdsa, 30)?),
    )?;
    let (status, body) = ops.get(addr, "ops.test", "/").await?;
    assert_eq!(status, 200, "{body}");
    let headers = &body["headers"];
    assert_eq!(headers["x-client-cert-dn"], "CN=ops-team");
    assert_eq!(headers["x-client-cert-san"], "ops-team,ops.internal");
    assert_eq!(headers["x-authenticated-groups"], "ops-team");
    assert!(headers.get("x-consumer-id").is_none());
    assert!(
        headers.get("x-consumer-username").is_none(),
        "the spoofed header is gone"
    );

    let dev = Client::new(
        &server_ca,
        Some(&client_ca.leaf(&["dev-team"], Algorithm::Ecdsa, 30)?),
    )?;
    let (status, body) = dev.get(addr, "ops.test", "/").await?;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["message"], "You cannot consume this service");
    Ok(())
}

#[tokio::test]
async fn explicit_mappings_bind_subjects_to_consumers_per_ca() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let server_ca = Ca::new("server CA")?;
    let (dp, _upstream, service) = setup(&cluster, &server_ca, &["devices.test"]).await?;
    let (factory, partner) = (Ca::new("factory CA")?, Ca::new("partner CA")?);
    let factory_id = upload_ca(admin, &factory).await?;
    let partner_id = upload_ca(admin, &partner).await?;
    let route = created(
        admin,
        &format!("/services/{service}/routes"),
        &[("hosts[]", "devices.test")],
    )
    .await?;
    let plugin_path = format!("/routes/{}/plugins", route["id"].as_str().context("id")?);
    let plugin = admin
        .post_json(
            &plugin_path,
            &json!({"name": "mtls-auth",
                    "config": {"ca_certificates": [factory_id, partner_id]}}),
        )
        .await?;
    ensure!(plugin.status == 201, "{plugin:?}");
    created(admin, "/consumers", &[("username", "fleet")]).await?;
    created(
        admin,
        "/consumers/fleet/mtls-auth",
        &[
            ("subject_name", "device-42"),
            ("ca_certificate.id", &factory_id),
        ],
    )
    .await?;
    applied(admin, &dp).await?;
    let addr = dp.proxy_ssl_addr()?;

    // From the factory CA: mapped to `fleet`, though no consumer is named device-42.
    let device = Client::new(
        &server_ca,
        Some(&factory.leaf(&["device-42"], Algorithm::Ecdsa, 30)?),
    )?;
    let (status, body) = device.get(addr, "devices.test", "/").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-consumer-username"], "fleet");

    // The same name from the partner CA: the mapping is bound to the factory CA, so no
    // consumer, 401.
    let impostor = Client::new(
        &server_ca,
        Some(&partner.leaf(&["device-42"], Algorithm::Ecdsa, 30)?),
    )?;
    let (status, body) = impostor.get(addr, "devices.test", "/").await?;
    assert_eq!(status, 401, "{body}");
    Ok(())
}

/// Serves `crl` (DER) on every path; counts the requests.
async fn crl_server(crl: Vec<u8>) -> Result<(SocketAddr, Arc<AtomicUsize>, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let crl = Bytes::from(crl);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (crl, counter) = (crl.clone(), counter.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let crl = crl.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(crl))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok((addr, hits, task))
}

#[tokio::test]
async fn revocation_modes_with_a_crl() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let server_ca = Ca::new("server CA")?;
    let hosts = ["strict.test", "lenient.test", "skip.test"];
    let (dp, _upstream, service) = setup(&cluster, &server_ca, &hosts).await?;
    let client_ca = Ca::new("client CA")?;
    let ca_id = upload_ca(admin, &client_ca).await?;
    let (crl_addr, hits, crl_task) = crl_server(client_ca.crl(&[2])?).await?;
    let dead_port = {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        listener.local_addr()?.port()
    };
    for (host, mode) in [
        ("strict.test", "STRICT"),
        ("lenient.test", "IGNORE_CA_ERROR"),
        ("skip.test", "SKIP"),
    ] {
        let route = created(
            admin,
            &format!("/services/{service}/routes"),
            &[("hosts[]", host)],
        )
        .await?;
        created(
            admin,
            &format!("/routes/{}/plugins", route["id"].as_str().context("id")?),
            &[
                ("name", "mtls-auth"),
                ("config.ca_certificates", &ca_id),
                ("config.revocation_check_mode", mode),
                ("config.skip_consumer_lookup", "true"),
                ("config.http_timeout", "500"),
            ],
        )
        .await?;
    }
    applied(admin, &dp).await?;
    let addr = dp.proxy_ssl_addr()?;
    let crl_url = format!("http://{crl_addr}/client-ca.crl");
    let good = Client::new(
        &server_ca,
        Some(&client_ca.leaf_with_crl(&["good"], 1, &crl_url)?),
    )?;
    let revoked = Client::new(
        &server_ca,
        Some(&client_ca.leaf_with_crl(&["revoked"], 2, &crl_url)?),
    )?;
    let unreachable = format!("http://127.0.0.1:{dead_port}/gone.crl");
    let unknown = Client::new(
        &server_ca,
        Some(&client_ca.leaf_with_crl(&["unknown"], 3, &unreachable)?),
    )?;

    for host in hosts {
        assert_eq!(good.get(addr, host, "/").await?.0, 200, "good on {host}");
    }
    assert_eq!(revoked.get(addr, "strict.test", "/").await?.0, 401);
    assert_eq!(revoked.get(addr, "lenient.test", "/").await?.0, 401);
    assert_eq!(revoked.get(addr, "skip.test", "/").await?.0, 200);
    // The CRL was fetched once and then served from the cache.
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // No answer (the CRL server is unreachable): only STRICT refuses.
    assert_eq!(unknown.get(addr, "strict.test", "/").await?.0, 401);
    assert_eq!(unknown.get(addr, "lenient.test", "/").await?.0, 200);
    let line = dp
        .wait_for_log("refused by the revocation check", patience())
        .await?;
    assert!(line.contains("revoked"), "{line}");
    crl_task.abort();
    Ok(())
}

/// `cert` followed by `chain`, as a client sends its leaf and intermediates.
fn with_chain(leaf: &Pem, chain: &[&Ca]) -> Pem {
    let mut cert = leaf.cert.clone();
    for ca in chain {
        cert.push_str(&ca.pem.cert);
    }
    Pem {
        cert,
        key: leaf.key.clone(),
    }
}

/// The seed's defect, as a new user met it: only an intermediate uploaded, `mtls-auth` on a
/// route, no `allow_partial_chain`. The Admin API refuses the plugin (it could verify no
/// certificate) and nothing changes; with `allow_partial_chain` it is accepted and verifies.
#[tokio::test]
async fn an_mtls_auth_config_that_anchors_no_chain_is_refused_at_write_time() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let server_ca = Ca::new("server CA")?;
    let (dp, _upstream, service) = setup(&cluster, &server_ca, &["secure.test"]).await?;
    let root = Ca::new("client root")?;
    let intermediate = root.intermediate("client intermediate")?;
    let ca_id = upload_ca(admin, &intermediate).await?;
    let route = created(
        admin,
        &format!("/services/{service}/routes"),
        &[("name", "sr"), ("hosts[]", "secure.test")],
    )
    .await?;
    let route_id = route["id"].as_str().context("route id")?;
    let before = config_version(admin).await?;

    let refused = admin
        .post_form(
            "/routes/sr/plugins",
            &[
                ("name", "mtls-auth"),
                ("config.ca_certificates", &ca_id),
                ("config.skip_consumer_lookup", "true"),
            ],
        )
        .await?;
    assert_eq!(refused.status, 400, "{refused:?}");
    assert_eq!(refused.body["code"], 2, "{refused:?}");
    assert_eq!(refused.body["name"], "schema violation");
    let reason = refused.body["fields"]["config"]["ca_certificates"]
        .as_str()
        .context("fields.config.ca_certificates")?;
    assert!(
        reason.contains("anchor") && reason.contains("allow_partial_chain"),
        "{reason}"
    );
    assert_eq!(
        config_version(admin).await?,
        before,
        "a refused write bumps nothing"
    );
    let plugins = admin.get("/plugins").await?;
    assert_eq!(plugins.body["data"], json!([]), "{plugins:?}");

    // The same through JSON and PUT: refused alike.
    let put = admin
        .put_json(
            &format!("/routes/{route_id}/plugins/{}", uuid::Uuid::new_v4()),
            &json!({"name": "mtls-auth", "config": {"ca_certificates": [ca_id]}}),
        )
        .await?;
    assert_eq!(put.status, 400, "{put:?}");
    assert_eq!(config_version(admin).await?, before);

    // With allow_partial_chain the intermediate is the anchor: accepted, and it verifies.
    created(
        admin,
        "/routes/sr/plugins",
        &[
            ("name", "mtls-auth"),
            ("config.ca_certificates", &ca_id),
            ("config.skip_consumer_lookup", "true"),
            ("config.allow_partial_chain", "true"),
        ],
    )
    .await?;
    applied(admin, &dp).await?;
    let addr = dp.proxy_ssl_addr()?;
    let alice = intermediate.leaf(&["alice"], Algorithm::Ecdsa, 30)?;
    let (status, body) = Client::new(&server_ca, Some(&alice))?
        .get(addr, "secure.test", "/")
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = Client::new(&server_ca, None)?
        .get(addr, "secure.test", "/")
        .await?;
    assert_eq!(status, 401, "{body}");
    Ok(())
}

/// An instance broken after it was written (its only root CA replaced by an intermediate
/// through `PATCH /ca_certificates`) fails closed on the data plane: every request it covers
/// is refused, with or without a certificate; the rest of the snapshot is applied (other
/// routes serve), and the problem shows in the DP's log and status and in the fleet view.
#[tokio::test]
async fn an_mtls_auth_instance_that_cannot_be_built_refuses_every_request() -> Result<()> {
    let cluster = Cluster::start(&["dp1"], &[]).await?;
    let admin = cluster.admin();
    let server_ca = Ca::new("server CA")?;
    let (dp, _upstream, service) =
        setup(&cluster, &server_ca, &["secure.test", "open.test"]).await?;
    let root = Ca::new("client root")?;
    let intermediate = root.intermediate("client intermediate")?;
    let root_id = upload_ca(admin, &root).await?;
    for (name, host) in [("sr", "secure.test"), ("open", "open.test")] {
        created(
            admin,
            &format!("/services/{service}/routes"),
            &[("name", name), ("hosts[]", host)],
        )
        .await?;
    }
    let plugin = created(
        admin,
        "/routes/sr/plugins",
        &[
            ("name", "mtls-auth"),
            ("config.ca_certificates", &root_id),
            ("config.skip_consumer_lookup", "true"),
        ],
    )
    .await?;
    let plugin_id = plugin["id"].as_str().context("plugin id")?.to_owned();
    applied(admin, &dp).await?;
    let addr = dp.proxy_ssl_addr()?;
    let alice = with_chain(
        &intermediate.leaf(&["alice"], Algorithm::Ecdsa, 30)?,
        &[&intermediate],
    );
    let (status, body) = Client::new(&server_ca, Some(&alice))?
        .get(addr, "secure.test", "/")
        .await?;
    assert_eq!(status, 200, "alice chains to the root: {body}");

    // The CA entity now holds the intermediate: the instance anchors nothing.
    let patched = admin
        .patch_json(
            &format!("/ca_certificates/{root_id}"),
            &json!({"cert": intermediate.pem.cert}),
        )
        .await?;
    assert_eq!(patched.status, 200, "{patched:?}");
    let version = config_version(admin).await?;
    dp.wait_for_version(version, patience()).await?;
    // The DP records the warnings just after the swap that shows the new version.
    let names_it = |status: &Value| {
        status["warnings"].as_array().is_some_and(|warnings| {
            warnings
                .iter()
                .any(|w| w.as_str().is_some_and(|w| w.contains(&plugin_id)))
        })
    };
    let status = wait_until(
        "DP /status names the broken instance",
        patience(),
        || async {
            let status = dp.status().await?;
            Ok(names_it(&status).then_some(status))
        },
    )
    .await?;
    assert!(
        names_it(&status),
        "DP /status names the broken instance: {status}"
    );

    for client in [
        Client::new(&server_ca, None)?,
        Client::new(&server_ca, Some(&alice))?,
    ] {
        let (status, body) = client.get(addr, "secure.test", "/").await?;
        assert_eq!(status, 401, "never proxied: {body}");
        assert_eq!(body["message"], "TLS certificate failed verification");
    }
    // The rest of the configuration runs: the snapshot was applied, not rejected.
    let (status, body) = Client::new(&server_ca, None)?
        .get(addr, "open.test", "/")
        .await?;
    assert_eq!(status, 200, "{body}");
    let logged = dp
        .wait_for_log("mtls-auth instance cannot be built", patience())
        .await?;
    assert!(logged.contains(&plugin_id), "{logged}");
    assert!(logged.contains("anchor"), "the reason is logged: {logged}");

    // The fleet view shows it, per data plane and in the summary.
    let node_id = dp.node_id()?;
    let entry = gatehouse_tests::wait_for_data_plane(admin, &node_id, patience(), |entry| {
        entry["warnings"].as_array().is_some_and(|w| !w.is_empty())
    })
    .await?;
    assert_eq!(entry["sync_status"], "normal", "{entry}");
    assert!(
        entry["warnings"].to_string().contains(&plugin_id),
        "{entry}"
    );
    let summary = gatehouse_tests::clustering_status(admin).await?;
    assert_eq!(summary["data_planes"]["with_warnings"], 1, "{summary}");
    assert_eq!(summary["warnings"][0]["id"], node_id.as_str(), "{summary}");

    // Fixed (allow_partial_chain): the warning clears and alice is served again.
    let fixed = admin
        .patch_json(
            &format!("/plugins/{plugin_id}"),
            &json!({"config": {"allow_partial_chain": true}}),
        )
        .await?;
    assert_eq!(fixed.status, 200, "{fixed:?}");
    let status = dp
        .wait_for_version(config_version(admin).await?, patience())
        .await?;
    assert_eq!(status["warnings"], json!([]), "{status}");
    let (status, body) = Client::new(&server_ca, Some(&alice))?
        .get(addr, "secure.test", "/")
        .await?;
    assert_eq!(status, 200, "{body}");
    gatehouse_tests::wait_for_data_plane(admin, &node_id, patience(), |entry| {
        entry["warnings"] == json!([])
    })
    .await?;
    Ok(())
}
