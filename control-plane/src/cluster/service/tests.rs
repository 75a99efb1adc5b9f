use super::*;

fn running(version: u64, hash: &str) -> Running {
    Running::reported(version, hash)
}

#[test]
fn a_dp_running_nothing_gets_any_version() {
    assert_eq!(running(0, "").decide(0, "h0"), Decision::Send);
    assert_eq!(running(7, " ").decide(3, "h3"), Decision::Send);
}

#[test]
fn the_same_hash_is_not_sent_again() {
    assert_eq!(running(3, "h").decide(3, "h"), Decision::AlreadyRuns);
    // A later version with the same content (a write undone) is not sent either.
    assert_eq!(running(3, "h").decide(5, "h"), Decision::AlreadyRuns);
}

#[test]
fn newer_versions_are_sent_older_ones_never() {
    assert_eq!(running(3, "a").decide(4, "b"), Decision::Send);
    assert_eq!(running(9, "a").decide(4, "b"), Decision::Older);
    // Same version, other content (a restored database): the DP decides.
    assert_eq!(running(4, "a").decide(4, "b"), Decision::Send);
}

fn snapshot(version: u64) -> Option<Arc<EncodedSnapshot>> {
    Some(Arc::new(EncodedSnapshot {
        version,
        hash: format!("h{version}"),
        message: gatehouse_proto::v1::Snapshot {
            version,
            hash: format!("h{version}"),
            ..Default::default()
        },
    }))
}

fn sent_version(message: Option<ControlPlaneMessage>) -> Option<u64> {
    match message?.kind? {
        control_plane_message::Kind::Snapshot(snapshot) => Some(snapshot.version),
        control_plane_message::Kind::Refusal(_)
        | control_plane_message::Kind::CertificateRenewed(_)
        | control_plane_message::Kind::RenewRequested(_) => None,
    }
}

/// The channels feeding a test [`Sender`].
struct Feed {
    latest: watch::Sender<Option<Arc<EncodedSnapshot>>>,
    closed: watch::Sender<bool>,
    _shutdown: watch::Sender<bool>,
    ended: watch::Sender<Option<String>>,
    replies: tokio::sync::mpsc::Sender<ControlPlaneMessage>,
}

/// A sender for a DP in state `running`, fed by the returned channels.
fn sender(running: Running, first: Option<Arc<EncodedSnapshot>>) -> (Sender, Feed) {
    let (latest_tx, latest) = watch::channel(first);
    let (closed_tx, closed) = watch::channel(false);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let node = Arc::new(Node::new(Arc::default(), None, None));
    let (ended_tx, ended) = watch::channel(None);
    let (replies_tx, replies) = tokio::sync::mpsc::channel(4);
    let sender = Sender {
        latest,
        running,
        first: true,
        warned_older: false,
        dp: Uuid::nil(),
        node,
        closed,
        shutdown,
        ended,
        replies,
        done: false,
    };
    let feed = Feed {
        latest: latest_tx,
        closed: closed_tx,
        _shutdown: shutdown_tx,
        ended: ended_tx,
        replies: replies_tx,
    };
    (sender, feed)
}

async fn next(sender: &mut Sender) -> Option<u64> {
    tokio::time::timeout(Duration::from_millis(50), sender.next())
        .await
        .ok()
        .and_then(sent_version)
}

#[tokio::test]
async fn superseded_versions_are_skipped_and_each_sent_once() {
    let (mut sender, feed) = sender(running(0, ""), snapshot(1));
    assert_eq!(next(&mut sender).await, Some(1), "current snapshot at once");
    assert_eq!(next(&mut sender).await, None, "nothing new");
    for version in 2..=5 {
        feed.latest.send_replace(snapshot(version));
    }
    assert_eq!(next(&mut sender).await, Some(5), "only the newest");
    assert_eq!(next(&mut sender).await, None);
    assert_eq!(sender.node.stats.get(), (0, 2));
    feed.closed.send_replace(true);
    assert!(sender.next().await.is_none(), "the stream ends with its DP");
}

#[tokio::test]
async fn a_dp_already_running_the_current_hash_gets_nothing_until_a_change() {
    let (mut sender, feed) = sender(running(3, "h3"), snapshot(3));
    assert_eq!(next(&mut sender).await, None);
    feed.latest.send_replace(snapshot(4));
    assert_eq!(next(&mut sender).await, Some(4));
}

#[tokio::test]
async fn a_dp_running_a_newer_version_gets_only_newer_ones() {
    let (mut sender, feed) = sender(running(9, "h9"), snapshot(4));
    assert_eq!(next(&mut sender).await, None);
    feed.latest.send_replace(snapshot(8));
    assert_eq!(next(&mut sender).await, None);
    feed.latest.send_replace(snapshot(10));
    assert_eq!(next(&mut sender).await, Some(10));
}

#[tokio::test]
async fn the_stream_waits_for_the_first_build() {
    let (mut sender, feed) = sender(running(0, ""), None);
    assert_eq!(next(&mut sender).await, None);
    feed.latest.send_replace(snapshot(1));
    assert_eq!(next(&mut sender).await, Some(1));
}

#[test]
fn truncate_respects_char_boundaries() {
    assert_eq!(truncate("héllo".into(), 2), "h");
    assert_eq!(truncate("héllo".into(), 3), "hé");
    assert_eq!(truncate("abc".into(), 10), "abc");
}

#[test]
fn labels_are_sorted_and_capped() {
    let labels = (0..100)
        .map(|i| (format!("k{i:03}"), format!("v{i}")))
        .collect();
    let json = labels_json(labels);
    let object = json.as_object().expect("object");
    assert_eq!(object.len(), MAX_LABELS);
    assert_eq!(object.keys().next().map(String::as_str), Some("k000"));
}

#[tokio::test]
#[allow(clippy::unwrap_used)]
async fn a_renewal_answer_goes_out_and_a_revocation_ends_the_stream_with_a_refusal() {
    let (mut sender, feed) = sender(Running::reported(0, ""), snapshot(1));
    assert_eq!(next(&mut sender).await, Some(1));
    let renewed = ControlPlaneMessage {
        kind: Some(control_plane_message::Kind::CertificateRenewed(
            gatehouse_proto::v1::CertificateRenewed::default(),
        )),
    };
    feed.replies.send(renewed.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_millis(50), sender.next()).await;
    assert_eq!(got.ok().flatten(), Some(renewed));

    feed.ended.send_replace(Some("revoked".into()));
    let got = tokio::time::timeout(Duration::from_millis(50), sender.next())
        .await
        .unwrap();
    assert!(
        matches!(
            got.and_then(|m| m.kind),
            Some(control_plane_message::Kind::Refusal(ref r)) if r.reason == "revoked"
        ),
        "a refusal first"
    );
    // Then the stream ends, whatever else is published.
    feed.latest.send_replace(snapshot(2));
    assert!(sender.next().await.is_none());
    drop(feed.closed);
}

#[test]
fn a_certificate_past_its_renewal_is_warned_about_once_and_a_renewal_resets_it() {
    let node = Arc::new(Node::new(Arc::default(), None, None));
    let cert = CertOf {
        serial: "01".into(),
        not_before: 1000 - enrol::BACKDATE_SECS,
        not_after: 1060,
    };
    // Renewal point 1040; warned from half-way to expiry, 1050.
    let (replies, _) = tokio::sync::mpsc::channel(4);
    let (_guard, _ended) = node.open_session(Uuid::new_v4(), Uuid::nil(), Some(&cert), replies);
    let warned = |node: &Node| node.lock_sessions().values().all(|s| s.warned);
    node.warn_expiring(1049);
    assert!(!warned(&node));
    node.warn_expiring(1050);
    assert!(warned(&node));
    let session = *node.lock_sessions().keys().next().unwrap_or(&Uuid::nil());
    node.set_cert(
        session,
        &CertOf {
            serial: "02".into(),
            not_before: 1040 - enrol::BACKDATE_SECS,
            not_after: 1100,
        },
    );
    assert!(!warned(&node));
    // Revoking a serial ends exactly the streams that use it.
    let serials = std::collections::HashSet::from(["02".to_owned()]);
    assert_eq!(node.end_streams_with(&serials, "revoked"), 1);
    assert_eq!(node.end_streams_with(&serials, "revoked"), 0, "once");
}

#[test]
fn a_renew_now_request_asks_each_older_stream_once() {
    use crate::store::RenewalRequests;

    let node = Arc::new(Node::new(Arc::default(), None, None));
    let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
    let cert = |issued: i64| CertOf {
        serial: format!("{issued}"),
        not_before: issued - enrol::BACKDATE_SECS,
        not_after: issued + 3600,
    };
    let (tx1, mut rx1) = tokio::sync::mpsc::channel(4);
    let (tx2, mut rx2) = tokio::sync::mpsc::channel(4);
    let (_g1, _) = node.open_session(Uuid::new_v4(), one, Some(&cert(1000)), tx1);
    let (_g2, _) = node.open_session(Uuid::new_v4(), two, Some(&cert(1000)), tx2);
    let asked = |rx: &mut tokio::sync::mpsc::Receiver<ControlPlaneMessage>| {
        matches!(
            rx.try_recv().ok().and_then(|m| m.kind),
            Some(control_plane_message::Kind::RenewRequested(_))
        )
    };

    // Nothing requested: nobody asked.
    assert_eq!(node.ask_renewals(&RenewalRequests::default()), 0);
    // A request for `one` only, after its certificate: asked once, however often it is read.
    let mut requests = RenewalRequests::default();
    requests.nodes.insert(one, 1_001_500);
    assert_eq!(node.ask_renewals(&requests), 1);
    assert_eq!(node.ask_renewals(&requests), 0);
    assert!(asked(&mut rx1) && !asked(&mut rx2));
    // `one` renews after the request; then everyone is asked: only `two`'s is older.
    let session = node
        .lock_sessions()
        .iter()
        .find(|(_, s)| s.dp == one)
        .map(|(id, _)| *id)
        .unwrap_or_default();
    node.set_cert(session, &cert(1002));
    requests.all = 1_001_800;
    assert_eq!(node.ask_renewals(&requests), 1);
    assert!(!asked(&mut rx1) && asked(&mut rx2));
    // A certificate issued in the second of a request counts as older (`two`'s is older
    // anyway: it did not renew).
    requests.all = 1_002_100;
    assert_eq!(node.ask_renewals(&requests), 2);
    assert!(asked(&mut rx1) && asked(&mut rx2));
}
