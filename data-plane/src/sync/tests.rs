#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::pin::Pin;

use gatehouse_proto::v1::config_sync_server::{ConfigSync, ConfigSyncServer};
use gatehouse_shared::cluster::{self, ClusterMtls, ClusterTlsFiles, ReloadingConfig};
use gatehouse_shared::model;
use tokio::net::TcpListener;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::*;
use crate::acme::{Acme, OnDemand, OnDemandLimits};
use crate::runtime::Part;
use crate::test_support::{CERTIFICATE, TempDir, certificate, valid_config};

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(15);

// --- backoff and version rule -------------------------------------------------------------

#[test]
fn backoff_bounds_doubling_and_cap() {
    let mut backoff = Backoff::default();
    let lows: Vec<Duration> = (0..10).map(|_| backoff.next_with(0.0)).collect();
    assert!(lows.iter().all(|d| *d == Duration::from_millis(100)));

    let mut backoff = Backoff::default();
    let highs: Vec<u128> = (0..10)
        .map(|_| backoff.next_with(1.0).as_millis())
        .collect();
    assert_eq!(
        highs,
        [300, 500, 900, 1000, 1000, 1000, 1000, 1000, 1000, 1000]
    );

    // Far beyond the cap, nothing overflows.
    for _ in 0..100 {
        assert_eq!(backoff.next_with(1.0), Duration::from_secs(1));
    }
    backoff.reset();
    assert_eq!(backoff.next_with(1.0), Duration::from_millis(300));
}

#[test]
fn backoff_jitter_is_spread_within_bounds() {
    let mut draws = Vec::new();
    for _ in 0..200 {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(
            (Duration::from_millis(100)..=Duration::from_millis(300)).contains(&first),
            "{first:?}"
        );
        draws.push(first.as_millis());
        for _ in 0..30 {
            assert!(backoff.next_delay() <= Duration::from_secs(1));
        }
    }
    draws.sort_unstable();
    draws.dedup();
    assert!(draws.len() > 50, "jitter looks constant: {draws:?}");
    let below = draws.iter().filter(|ms| **ms < 200).count();
    assert!(below > 10 && below < draws.len() - 10, "{draws:?}");
}

#[test]
fn version_rule() {
    let empty = Runtime::empty();
    assert_eq!(decide(&empty, 0, ""), Decision::Compile);
    assert_eq!(decide(&empty, 5, "a"), Decision::Compile);

    let running = Runtime::compile(5, "a".into(), model::Config::default()).unwrap();
    assert_eq!(
        decide(&running, 4, "b"),
        Decision::Reject("snapshot version 4 is older than the running version 5".into())
    );
    // Older is refused even with the running hash: versions never go back.
    assert!(matches!(decide(&running, 4, "a"), Decision::Reject(_)));
    assert_eq!(decide(&running, 5, "a"), Decision::Unchanged);
    assert_eq!(decide(&running, 6, "a"), Decision::Renumber);
    assert_eq!(decide(&running, 5, "b"), Decision::Compile);
    assert_eq!(decide(&running, 6, "b"), Decision::Compile);
}

#[test]
fn error_chains_do_not_repeat() {
    let inner = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "invalid peer certificate: UnknownIssuer",
    );
    let outer = ConnectError::Tls {
        addr: "cp:8005".into(),
        source: inner,
    };
    assert_eq!(
        error_chain(&outer),
        "TLS handshake with cp:8005 failed: invalid peer certificate: UnknownIssuer"
    );
}

// --- in-process sync against a tonic server with the real cluster mTLS -------------------

type Outbound = UnboundedSender<Result<pb::ControlPlaneMessage, Status>>;

/// A scripted control plane: each stream is announced with the sender of its messages;
/// everything the data planes send arrives on one channel.
struct TestCp {
    inbound: UnboundedSender<pb::DataPlaneMessage>,
    streams: UnboundedSender<Outbound>,
}

#[tonic::async_trait]
impl ConfigSync for TestCp {
    type SyncStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ControlPlaneMessage, Status>> + Send>>;

    async fn sync(
        &self,
        request: Request<Streaming<pb::DataPlaneMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let mut stream = request.into_inner();
        let inbound = self.inbound.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                let _ = inbound.send(message);
            }
        });
        let (tx, rx) = unbounded_channel();
        self.streams.send(tx).unwrap();
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// The test's end of a [`TestCp`].
struct Cp {
    addr: String,
    inbound: UnboundedReceiver<pb::DataPlaneMessage>,
    streams: UnboundedReceiver<Outbound>,
    handshake_errors: UnboundedReceiver<String>,
}

impl Cp {
    /// Serves with the CP certificate of the PKI in `pki` (`cp.crt`, `cp.key`, `ca.crt`).
    async fn start(pki: &Path) -> Self {
        let files = ClusterTlsFiles {
            cert: pki.join("cp.crt"),
            key: pki.join("cp.key"),
            ca: Some(pki.join("ca.crt")),
            allowed_common_names: Vec::new(),
        };
        let acceptor = TlsAcceptor::from(cluster::server_config(ClusterMtls::Pki, &files).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (conn_tx, conn_rx) = unbounded_channel();
        let (error_tx, handshake_errors) = unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, conn_tx, error_tx) =
                    (acceptor.clone(), conn_tx.clone(), error_tx.clone());
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let _ = conn_tx.send(Ok::<_, std::io::Error>(tls));
                        }
                        Err(e) => {
                            let _ = error_tx.send(e.to_string());
                        }
                    }
                });
            }
        });
        let (inbound_tx, inbound) = unbounded_channel();
        let (streams_tx, streams) = unbounded_channel();
        let service = ConfigSyncServer::new(TestCp {
            inbound: inbound_tx,
            streams: streams_tx,
        })
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(UnboundedReceiverStream::new(conn_rx)),
        );
        Self {
            addr,
            inbound,
            streams,
            handshake_errors,
        }
    }

    async fn next_stream(&mut self) -> Outbound {
        tokio::time::timeout(PATIENCE, self.streams.recv())
            .await
            .expect("no stream opened")
            .unwrap()
    }

    async fn next_message(&mut self) -> data_plane_message::Kind {
        tokio::time::timeout(PATIENCE, self.inbound.recv())
            .await
            .expect("no message from the data plane")
            .unwrap()
            .kind
            .unwrap()
    }

    /// The next ack, skipping heartbeats.
    async fn next_ack(&mut self) -> pb::Ack {
        loop {
            match self.next_message().await {
                data_plane_message::Kind::Ack(ack) => return ack,
                data_plane_message::Kind::Heartbeat(_) => {}
                other => panic!("expected an ack, got {other:?}"),
            }
        }
    }
}

/// A sync client for `dp_name` of the PKI in `pki`, trusting `ca_dir`'s CA.
struct Dp {
    state: Arc<NodeState>,
    cache: Cache,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Dp {
    fn start(cp_addr: &str, pki: &Path, dp_name: &str, ca_dir: &Path, timing: Timing) -> Self {
        Self::start_many(&[cp_addr], pki, dp_name, ca_dir, timing)
    }

    /// A sync client for several control planes.
    fn start_many(
        cp_addrs: &[&str],
        pki: &Path,
        dp_name: &str,
        ca_dir: &Path,
        timing: Timing,
    ) -> Self {
        Self::start_with(cp_addrs, pki, dp_name, ca_dir, timing, None)
    }

    /// A sync client sending the on-demand certificate requests of `wanted`, if given.
    fn start_with(
        cp_addrs: &[&str],
        pki: &Path,
        dp_name: &str,
        ca_dir: &Path,
        timing: Timing,
        wanted: Option<mpsc::Receiver<String>>,
    ) -> Self {
        let files = ClusterTlsFiles {
            cert: pki.join(format!("{dp_name}.crt")),
            key: pki.join(format!("{dp_name}.key")),
            ca: Some(ca_dir.join("ca.crt")),
            allowed_common_names: Vec::new(),
        };
        let tls = Arc::new(ReloadingConfig::client(ClusterMtls::Pki, files, "localhost").unwrap());
        let dir = TempDir::new();
        let cache = Cache::open(dir.path()).unwrap();
        let state = Arc::new(NodeState::new(
            Uuid::new_v4(),
            "1.2.3".into(),
            cp_addrs.join(","),
            Arc::new(SharedRuntime::default()),
        ));
        let targets = cp_addrs
            .iter()
            .map(|addr| Target {
                addr: (*addr).to_owned(),
                server_name: ServerName::try_from("localhost").unwrap(),
                tls: tls.clone(),
            })
            .collect();
        let mut client = SyncClient::new(
            targets,
            state.clone(),
            cache.clone(),
            BTreeMap::from([("region".to_owned(), "test".to_owned())]),
            timing,
        );
        if let Some(wanted) = wanted {
            client = client.with_certificate_requests(wanted);
        }
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(client.run(stopped));
        Self {
            state,
            cache,
            stop,
            task,
            _dir: dir,
        }
    }

    fn running(&self) -> Arc<Runtime> {
        self.state.runtime.load_full()
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn fast_timing() -> Timing {
    Timing {
        heartbeat: Duration::from_millis(200),
        refusal_delay: Duration::from_secs(3600),
        stable_after: Duration::from_secs(10),
        backoff: Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(20),
            Duration::from_millis(200),
        ),
        connect_timeout: Duration::from_millis(500),
    }
}

fn pki(dir: &Path) -> &Path {
    cluster::pki::init(dir, &[], &["dp1".to_owned()], 30, false).unwrap();
    dir
}

fn send(stream: &Outbound, snapshot: pb::Snapshot) {
    stream
        .send(Ok(pb::ControlPlaneMessage {
            kind: Some(control_plane_message::Kind::Snapshot(snapshot)),
        }))
        .unwrap();
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_rejects_and_reconnects() {
    let tmp = TempDir::new();
    let pki = pki(tmp.path());
    let mut cp = Cp::start(pki).await;
    let dp = Dp::start(&cp.addr, pki, "dp1", pki, fast_timing());

    // Hello first, with an empty running config.
    let stream = cp.next_stream().await;
    let data_plane_message::Kind::Hello(hello) = cp.next_message().await else {
        panic!("expected hello");
    };
    assert_eq!(hello.node_id, dp.state.node_id.to_string());
    assert_eq!(hello.version, "1.2.3");
    assert_eq!((hello.config_version, hello.config_hash.as_str()), (0, ""));
    assert_eq!(hello.labels["region"], "test");
    assert!(!hello.hostname.is_empty());
    eventually("connected", || dp.state.sync_state().connected).await;

    // A valid snapshot is applied, acked with its version and hash, and cached.
    let config = valid_config();
    let v1 = gatehouse_shared::snapshot::encode(&config, 1);
    send(&stream, v1.message.clone());
    let ack = cp.next_ack().await;
    assert_eq!(
        (
            ack.version,
            ack.hash.as_str(),
            ack.status(),
            ack.error.as_str()
        ),
        (1, v1.hash.as_str(), ack::Status::Applied, "")
    );
    assert_eq!(
        (dp.running().version(), dp.running().hash()),
        (1, v1.hash.as_str())
    );
    assert!(dp.running().certificate(&CERTIFICATE).is_some());
    assert_eq!(
        dp.state.sync_state().source,
        Some(ConfigSource::ControlPlane)
    );
    // The cache is written right after the ack.
    eventually("cache written", || dp.cache.snapshot_path().exists()).await;
    let cached = dp.cache.load().unwrap().unwrap();
    assert_eq!(
        (cached.runtime.version(), cached.runtime.hash()),
        (1, v1.hash.as_str())
    );

    // A certificate whose key does not match: rejected whole, the runtime stays.
    let mut bad = valid_config();
    bad.certificates[0].key = certificate("other.test").key;
    let v2 = gatehouse_shared::snapshot::encode(&bad, 2);
    send(&stream, v2.message.clone());
    let ack = cp.next_ack().await;
    assert_eq!(
        (ack.version, ack.hash.as_str(), ack.status()),
        (2, v2.hash.as_str(), ack::Status::Rejected)
    );
    assert_eq!(
        ack.error,
        format!("certificate {CERTIFICATE}: certificate does not match key")
    );
    assert_eq!(
        (dp.running().version(), dp.running().hash()),
        (1, v1.hash.as_str())
    );

    // An older version: rejected without looking at it.
    let v0 = gatehouse_shared::snapshot::encode(&model::Config::default(), 0);
    send(&stream, v0.message.clone());
    let ack = cp.next_ack().await;
    assert_eq!((ack.version, ack.status()), (0, ack::Status::Rejected));
    assert_eq!(
        ack.error,
        "snapshot version 0 is older than the running version 1"
    );
    assert_eq!(dp.running().version(), 1);

    // A corrupt snapshot (hash mismatch): rejected with the reason.
    let mut corrupt = gatehouse_shared::snapshot::encode(&model::Config::default(), 3).message;
    corrupt.hash = "ab".repeat(32);
    send(&stream, corrupt);
    let ack = cp.next_ack().await;
    assert_eq!(ack.status(), ack::Status::Rejected);
    assert!(ack.error.contains("hash mismatch"), "{}", ack.error);

    // The running hash under a newer version: applied without compiling.
    let before = dp.running();
    send(
        &stream,
        gatehouse_shared::snapshot::encode(&config, 4).message,
    );
    let ack = cp.next_ack().await;
    assert_eq!(ack.hash, v1.hash, "same config, same hash");
    assert_eq!((ack.version, ack.status()), (4, ack::Status::Applied));
    assert_eq!(dp.running().version(), 4);
    assert!(Arc::ptr_eq(
        before.certificate(&CERTIFICATE).unwrap(),
        dp.running().certificate(&CERTIFICATE).unwrap()
    ));

    // Heartbeats carry the running version.
    loop {
        if let data_plane_message::Kind::Heartbeat(beat) = cp.next_message().await {
            assert_eq!(
                (beat.config_version, beat.config_hash.as_str()),
                (4, v1.hash.as_str())
            );
            break;
        }
    }

    // The control plane goes away: the client reconnects and says what it runs.
    drop(stream);
    let stream = cp.next_stream().await;
    let hello = loop {
        if let data_plane_message::Kind::Hello(hello) = cp.next_message().await {
            break hello;
        }
    };
    assert_eq!(
        (hello.config_version, hello.config_hash.as_str()),
        (4, v1.hash.as_str())
    );

    // A refusal is reported and ends the stream.
    stream
        .send(Ok(pb::ControlPlaneMessage {
            kind: Some(control_plane_message::Kind::Refusal(pb::Refusal {
                reason: "data plane 1.2.3 is not compatible".into(),
            })),
        }))
        .unwrap();
    eventually("refusal recorded", || {
        dp.state
            .sync_state()
            .last_error
            .is_some_and(|e| e.contains("refused by the control plane: data plane 1.2.3"))
    })
    .await;
    assert!(!dp.state.sync_state().connected);
    assert_eq!(dp.running().version(), 4, "a refusal keeps the runtime");
    dp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_control_plane_is_refused_with_the_rustls_reason() {
    let tmp = TempDir::new();
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    pki(&ours);
    pki(&theirs);
    let mut cp = Cp::start(&theirs).await;
    // The DP's certificate and trust come from another CA than the CP's.
    let dp = Dp::start(&cp.addr, &ours, "dp1", &ours, fast_timing());
    eventually("a TLS error", || {
        dp.state
            .sync_state()
            .last_error
            .is_some_and(|e| e.contains("invalid peer certificate: UnknownIssuer"))
    })
    .await;
    let error = dp.state.sync_state().last_error.unwrap();
    assert!(
        error.contains(&format!("TLS handshake with {} failed", cp.addr)),
        "{error}"
    );
    assert!(!dp.state.sync_state().connected);
    // And it keeps retrying.
    let first = tokio::time::timeout(PATIENCE, cp.handshake_errors.recv())
        .await
        .unwrap();
    assert!(first.is_some());
    tokio::time::timeout(PATIENCE, cp.handshake_errors.recv())
        .await
        .unwrap();
    dp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_refuses_an_unknown_client_certificate() {
    let tmp = TempDir::new();
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    pki(&ours);
    pki(&theirs);
    let mut cp = Cp::start(&theirs).await;
    // The DP trusts the CP's CA but presents a certificate from another CA.
    let dp = Dp::start(&cp.addr, &ours, "dp1", &theirs, fast_timing());
    let server_side = tokio::time::timeout(PATIENCE, cp.handshake_errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(server_side.contains("UnknownIssuer"), "{server_side}");
    // TLS 1.3: the client learns of the refusal from the alert, on its first request.
    eventually("a client-side error", || {
        dp.state.sync_state().last_error.is_some_and(|e| {
            e.ends_with("transport error: connection error: received fatal alert: UnknownCA")
        })
    })
    .await;
    assert!(!dp.state.sync_state().connected);
    assert!(dp.running().version() == 0 && !dp.running().is_loaded());
    dp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_control_plane_times_out() {
    let tmp = TempDir::new();
    let pki = pki(tmp.path());
    // Accepts TCP connections and never answers the TLS handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let dp = Dp::start(&addr, pki, "dp1", pki, fast_timing());
    eventually("a timeout", || {
        dp.state.sync_state().last_error.is_some_and(|e| {
            e == format!("cannot connect to {addr} within 500 ms (TCP, TLS and HTTP/2 handshakes)")
        })
    })
    .await;
    dp.stop().await;
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_fails_over_to_the_other_replica_without_backing_off() {
    let tmp = TempDir::new();
    let pki = pki(tmp.path());
    let mut a = Cp::start(pki).await;
    let mut b = Cp::start(pki).await;
    // A backoff of an hour: only a failover that does not wait can pass.
    let mut timing = fast_timing();
    timing.backoff = Backoff::new(
        Duration::from_secs(3600),
        Duration::from_secs(1),
        Duration::from_secs(3600),
    );
    let dp = Dp::start_many(&[&a.addr, &b.addr], pki, "dp1", pki, timing);
    let (first, first_addr, other_addr) = tokio::select! {
        stream = a.next_stream() => (stream, a.addr.clone(), b.addr.clone()),
        stream = b.next_stream() => (stream, b.addr.clone(), a.addr.clone()),
    };
    eventually("connected to the first replica", || {
        dp.state.sync_state().connected_to.as_deref() == Some(first_addr.as_str())
    })
    .await;

    // The first replica's stream ends: the other one gets the data plane.
    drop(first);
    let (on_a, on_b) = (first_addr == a.addr, first_addr == b.addr);
    let _second = if on_a {
        b.next_stream().await
    } else {
        assert!(on_b);
        a.next_stream().await
    };
    eventually("connected to the other replica", || {
        dp.state.sync_state().connected_to.as_deref() == Some(other_addr.as_str())
    })
    .await;
    assert!(dp.state.sync_state().connected);
    dp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_certificate_requests_reach_the_control_plane_once_each() {
    let tmp = TempDir::new();
    let pki = pki(tmp.path());
    let mut cp = Cp::start(pki).await;
    let (on_demand, wanted) = OnDemand::channel(OnDemandLimits {
        reask_after: Duration::from_secs(3600),
        per_minute: 3,
    });
    let acme = Arc::new(Acme::new(on_demand));
    let dp = Dp::start_with(&[&cp.addr], pki, "dp1", pki, fast_timing(), Some(wanted));
    let part: Arc<dyn Part> = acme.clone();
    dp.state.runtime.register(Arc::downgrade(&part));
    let stream = cp.next_stream().await;
    assert!(matches!(
        cp.next_message().await,
        data_plane_message::Kind::Hello(_)
    ));
    let mut config = valid_config();
    config.acme_on_demand = Some(model::AcmeOnDemand {
        allow_any_domain: false,
        domains: vec!["*.shop.example".to_owned()],
    });
    send(
        &stream,
        gatehouse_shared::snapshot::encode(&config, 1).message,
    );
    assert_eq!(cp.next_ack().await.status(), ack::Status::Applied);

    /// The next CertificateWanted, skipping heartbeats and hellos.
    async fn next_wanted(cp: &mut Cp) -> String {
        loop {
            match cp.next_message().await {
                data_plane_message::Kind::CertificateWanted(wanted) => {
                    return wanted.server_name;
                }
                data_plane_message::Kind::Heartbeat(_) | data_plane_message::Kind::Hello(_) => {}
                other => panic!("expected a certificate request, got {other:?}"),
            }
        }
    }

    // Handshakes without a certificate: once per allowed name.
    let running = dp.running();
    for name in [
        "A.shop.example.",
        "a.shop.example",
        "other.example",
        "b.shop.example",
    ] {
        acme.certificate_missing(&running, name);
    }
    assert_eq!(next_wanted(&mut cp).await, "a.shop.example");
    assert_eq!(next_wanted(&mut cp).await, "b.shop.example");

    // Asked while the control plane is away: sent once it is back. The data plane may
    // reconnect before a poll sees it disconnected: a new `connected_since` says it noticed.
    let before = dp.state.sync_state().connected_since;
    drop(stream);
    eventually("the stream's loss noticed", || {
        let state = dp.state.sync_state();
        !state.connected || state.connected_since != before
    })
    .await;
    acme.certificate_missing(&running, "c.shop.example");
    let _stream = cp.next_stream().await;
    assert_eq!(next_wanted(&mut cp).await, "c.shop.example");

    // Over the cap (3 a minute): dropped, not queued, not remembered.
    acme.certificate_missing(&running, "d.shop.example");
    let mut remembered = acme.on_demand().remembered();
    remembered.sort();
    assert_eq!(
        remembered,
        ["a.shop.example", "b.shop.example", "c.shop.example"]
    );
    dp.stop().await;
}
