#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use http::HeaderName;
use serde_json::{Value, json};

use super::*;
use crate::router::{Protocol, RequestParts};

const UPSTREAM: u128 = 0x6000;
const OTHER_UPSTREAM: u128 = 0x6001;
const SERVICE: u128 = 0x1000;

fn peer(host: &str, port: u16) -> Peer {
    Peer {
        host: host.to_owned(),
        port,
    }
}

/// An upstream with the schema's defaults, then `fields` on top.
fn upstream(id: u128, name: &str, fields: Value) -> model::Upstream {
    let mut value = json!({
        "id": Uuid::from_u128(id), "created_at": 1, "updated_at": 1, "name": name,
    });
    if let (Some(base), Value::Object(fields)) = (value.as_object_mut(), fields) {
        base.extend(fields);
    }
    serde_json::from_value(value).unwrap()
}

/// Targets `host:port` of weight `weight` on upstream `upstream`; ids from `first`.
fn targets(upstream: u128, first: u128, list: &[(&str, u16)]) -> Vec<model::Target> {
    list.iter()
        .zip(first..)
        .map(|((target, weight), id)| {
            serde_json::from_value(json!({
                "id": Uuid::from_u128(id), "created_at": 1.0, "updated_at": 1.0,
                "upstream": {"id": Uuid::from_u128(upstream)},
                "target": target, "weight": weight,
            }))
            .unwrap()
        })
        .collect()
}

fn runtime(version: u64, upstreams: Vec<model::Upstream>, targets: Vec<model::Target>) -> Runtime {
    let config = model::Config {
        upstreams,
        targets,
        ..Default::default()
    };
    Runtime::compile(version, format!("hash-{version}"), config).unwrap()
}

/// The ring of an upstream with `fields` over targets `list` (ids 1, 2, ...).
fn ring_of(
    balancers: &Balancers,
    version: u64,
    fields: Value,
    list: &[(&str, u16)],
) -> Arc<RuntimeRings> {
    balancers.for_runtime(&runtime(
        version,
        vec![upstream(UPSTREAM, "backend", fields)],
        targets(UPSTREAM, 1, list),
    ))
}

fn id() -> Uuid {
    Uuid::from_u128(UPSTREAM)
}

/// A round-robin ring over `(target, weight)` pairs, health ignored.
fn plain_ring(list: &[(&str, u16)]) -> Ring {
    let shared = Arc::new(Shared {
        clock: Clock::manual(),
        generation: AtomicU64::new(0),
    });
    let targets = list
        .iter()
        .map(|(t, w)| (t.to_string(), parse_target(t).unwrap(), u32::from(*w)))
        .collect();
    Ring::build(&upstream(UPSTREAM, "u", json!({})), targets, None, &shared)
}

fn input(headers: &HeaderMap) -> HashInput<'_> {
    HashInput {
        client_ip: IpAddr::from([192, 0, 2, 1]),
        headers,
        path: "/",
        query: None,
        captures: None,
        consumer: None,
    }
}

fn with_header(name: &'static str, value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static(name),
        HeaderValue::from_str(value).unwrap(),
    );
    headers
}

/// The target (`host:port`) a request with header `x-user: <user>` goes to, first attempt.
fn target_for(ring: &Ring, user: &str) -> String {
    let headers = with_header("x-user", user);
    let key = ring.hash_key(&input(&headers));
    addr(ring.pick(&key, 0).unwrap().peer)
}

fn addr(peer: &Peer) -> String {
    format!("{}:{}", peer.host, peer.port)
}

/// Hosts picked by `n` round-robin picks (health applied).
fn spread(ring: &Ring, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let pick = ring.pick(&HashKey::default(), 0).unwrap();
        *counts.entry(addr(pick.peer)).or_default() += 1;
    }
    counts
}

/// Consistent hashing on header `x-user`.
fn hash_on_user() -> Value {
    json!({"algorithm": "consistent-hashing", "hash_on": "header", "hash_on_header": "x-user"})
}

/// Passive checks marking a target unhealthy after `tcp` connection failures and healthy
/// after `successes` successes.
fn passive(tcp: u8, successes: u8) -> Value {
    json!({"healthchecks": {"passive": {
        "healthy": {"successes": successes},
        "unhealthy": {"tcp_failures": tcp},
    }}})
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// Reports connection failures to `target` until it is marked unhealthy (`tcp` of them).
fn fail(ring: &Ring, target: &str, tcp: usize) {
    let mut failed = 0;
    while failed < tcp {
        let pick = ring.pick(&HashKey::default(), 0).unwrap();
        if addr(pick.peer) == target {
            pick.report(Outcome::ConnectFailed);
            failed += 1;
        }
    }
}

// === round-robin (the schedule) ===

#[test]
fn schedule_is_smooth_and_weighted() {
    assert_eq!(smooth_schedule(&[3, 1]), vec![0, 0, 1, 0]);
    assert_eq!(smooth_schedule(&[1, 1]), vec![0, 1]);
    let ring = plain_ring(&[("a:1", 300), ("b:2", 100)]);
    let key = HashKey::default();
    let picks: Vec<_> = (0..8)
        .map(|_| ring.pick(&key, 0).unwrap().peer.host.clone())
        .collect();
    assert_eq!(picks.iter().filter(|h| *h == "a").count(), 6);
    assert_eq!(picks.iter().filter(|h| *h == "b").count(), 2);
}

#[test]
fn empty_ring_has_no_peer() {
    let ring = plain_ring(&[]);
    assert!(ring.pick(&HashKey::default(), 0).is_none());
}

#[test]
fn huge_weights_are_scaled() {
    let ring = plain_ring(&[("a:1", 65535), ("b:2", 1)]);
    assert!(ring.schedule.len() as u64 <= MAX_SCHEDULE + 2);
    assert!(ring.schedule.contains(&1));
}

#[test]
fn targets_parse() {
    assert_eq!(parse_target("10.0.0.1:8000"), Some(peer("10.0.0.1", 8000)));
    assert_eq!(parse_target("[::1]:80"), Some(peer("::1", 80)));
    assert_eq!(
        parse_target("example.com:443"),
        Some(peer("example.com", 443))
    );
    assert_eq!(parse_target("nope"), None);
}

#[test]
fn round_robin_picks_by_weight() {
    let ring = plain_ring(&[("a:1", 100), ("b:1", 300)]);
    let counts = spread(&ring, 400);
    assert_eq!(counts["a:1"], 100);
    assert_eq!(counts["b:1"], 300);
    // Targets of weight 0 are left out.
    let balancers = Balancers::default();
    let rings = ring_of(&balancers, 1, json!({}), &[("a:1", 0), ("b:1", 10)]);
    assert_eq!(spread(rings.ring(&id()).unwrap(), 10)["b:1"], 10);
}

// === consistent hashing ===

#[test]
fn hashing_spreads_keys_by_weight() {
    let balancers = Balancers::default();
    let rings = ring_of(&balancers, 1, hash_on_user(), &[("a:1", 100), ("b:1", 300)]);
    let ring = rings.ring(&id()).unwrap();
    let keys = 20_000;
    let b = (0..keys)
        .filter(|k| target_for(ring, &format!("user-{k}")) == "b:1")
        .count();
    let share = b as f64 / keys as f64;
    assert!((0.72..0.78).contains(&share), "share of b: {share}");
}

#[test]
fn hashing_is_sticky_across_calls_and_rebuilds() {
    let balancers = Balancers::default();
    let list = [("a:1", 100), ("b:1", 100), ("c:1", 100)];
    let first = ring_of(&balancers, 1, hash_on_user(), &list);
    let ring = first.ring(&id()).unwrap();
    let before: Vec<String> = (0..500).map(|k| target_for(ring, &k.to_string())).collect();
    for _ in 0..3 {
        assert_eq!(target_for(ring, "7"), before[7]);
    }
    assert_eq!(
        before.iter().collect::<HashSet<_>>().len(),
        3,
        "every target gets keys"
    );

    // An unrelated change: another upstream.
    let rt = runtime(
        2,
        vec![
            upstream(UPSTREAM, "backend", hash_on_user()),
            upstream(OTHER_UPSTREAM, "other", json!({})),
        ],
        targets(UPSTREAM, 1, &list),
    );
    let second = balancers.for_runtime(&rt);
    let again = second.ring(&id()).unwrap();
    assert!(Arc::ptr_eq(&ring.table, &again.table), "table kept");
    let after: Vec<String> = (0..500)
        .map(|k| target_for(again, &k.to_string()))
        .collect();
    assert_eq!(before, after);

    // A data plane building from scratch, with the targets listed in another order, agrees.
    let reordered = [("c:1", 100), ("a:1", 100), ("b:1", 100)];
    let fresh = ring_of(&Balancers::default(), 1, hash_on_user(), &reordered);
    let fresh: Vec<String> = (0..500)
        .map(|k| target_for(fresh.ring(&id()).unwrap(), &k.to_string()))
        .collect();
    assert_eq!(before, fresh);
}

#[test]
fn adding_a_target_moves_only_its_share() {
    let four = [("a:1", 100), ("b:1", 100), ("c:1", 100), ("d:1", 100)];
    let five = [
        ("a:1", 100),
        ("b:1", 100),
        ("c:1", 100),
        ("d:1", 100),
        ("e:1", 100),
    ];
    let before = ring_of(&Balancers::default(), 1, hash_on_user(), &four);
    let after = ring_of(&Balancers::default(), 1, hash_on_user(), &five);
    let keys = 10_000;
    let mut moved = 0;
    for k in 0..keys {
        let user = format!("u{k}");
        let (old, new) = (
            target_for(before.ring(&id()).unwrap(), &user),
            target_for(after.ring(&id()).unwrap(), &user),
        );
        if old != new {
            assert_eq!(new, "e:1", "a key moved between old targets");
            moved += 1;
        }
    }
    let share = moved as f64 / keys as f64;
    assert!(share <= 0.25 + 0.02, "moved {share}");
    assert!(share >= 0.15, "the new target gets its share: {share}");
}

#[test]
fn missing_header_falls_back() {
    let balancers = Balancers::default();
    let fields = merge(hash_on_user(), json!({"hash_fallback": "ip"}));
    let rings = ring_of(&balancers, 1, fields, &[("a:1", 100), ("b:1", 100)]);
    let ring = rings.ring(&id()).unwrap();
    let by_ip = ring_of(
        &Balancers::default(),
        1,
        json!({"algorithm": "consistent-hashing", "hash_on": "ip"}),
        &[("a:1", 100), ("b:1", 100)],
    );
    let none = HeaderMap::new();
    let key = ring.hash_key(&input(&none));
    assert!(key.hash.is_some());
    assert_eq!(
        key.hash,
        by_ip.ring(&id()).unwrap().hash_key(&input(&none)).hash
    );
    let user = with_header("x-user", "ann");
    assert_ne!(ring.hash_key(&input(&user)).hash, key.hash);

    // No fallback: round-robin.
    let rings = ring_of(&balancers, 2, hash_on_user(), &[("a:1", 100), ("b:1", 100)]);
    let ring = rings.ring(&id()).unwrap();
    let key = ring.hash_key(&input(&none));
    assert_eq!(key.hash, None);
    let picks: HashSet<String> = (0..2)
        .map(|_| addr(ring.pick(&key, 0).unwrap().peer))
        .collect();
    assert_eq!(picks.len(), 2);
}

#[test]
fn several_header_lines_are_one_value() {
    let balancers = Balancers::default();
    let rings = ring_of(&balancers, 1, hash_on_user(), &[("a:1", 100)]);
    let ring = rings.ring(&id()).unwrap();
    let mut two = HeaderMap::new();
    two.append("x-user", HeaderValue::from_static("a"));
    two.append("x-user", HeaderValue::from_static("b"));
    let joined = with_header("x-user", "a, b");
    assert_eq!(
        ring.hash_key(&input(&two)).hash,
        ring.hash_key(&input(&joined)).hash
    );
}

#[test]
fn a_missing_cookie_is_generated() {
    let balancers = Balancers::default();
    let fields = json!({
        "algorithm": "consistent-hashing", "hash_on": "cookie",
        "hash_on_cookie": "sid", "hash_on_cookie_path": "/app",
    });
    let list: Vec<(String, u16)> = (0..8).map(|i| (format!("t{i}:80"), 100)).collect();
    let list: Vec<(&str, u16)> = list.iter().map(|(t, w)| (t.as_str(), *w)).collect();
    let rings = ring_of(&balancers, 1, fields, &list);
    let ring = rings.ring(&id()).unwrap();

    let none = HeaderMap::new();
    let key = ring.hash_key(&input(&none));
    let cookie = key.set_cookie.clone().unwrap();
    let cookie = cookie.to_str().unwrap();
    let value = cookie
        .strip_prefix("sid=")
        .and_then(|rest| rest.strip_suffix("; Path=/app"))
        .unwrap();
    assert!(Uuid::parse_str(value).is_ok(), "{cookie}");
    let target = addr(ring.pick(&key, 0).unwrap().peer);

    // The client sends it back: same hash, no new cookie.
    let back = with_header("cookie", &format!("theme=dark; sid={value}"));
    let again = ring.hash_key(&input(&back));
    assert_eq!(again.hash, key.hash);
    assert!(again.set_cookie.is_none());
    assert_eq!(addr(ring.pick(&again, 0).unwrap().peer), target);

    // Another client gets another cookie.
    assert_ne!(ring.hash_key(&input(&none)).hash, key.hash);
    // Round-robin upstreams never set one.
    let plain = ring_of(
        &balancers,
        2,
        json!({"hash_on": "cookie", "hash_on_cookie": "sid"}),
        &list,
    );
    assert!(
        plain
            .ring(&id())
            .unwrap()
            .hash_key(&input(&none))
            .set_cookie
            .is_none()
    );
}

#[test]
fn query_args_paths_and_consumers_hash() {
    let balancers = Balancers::default();
    let fields = json!({
        "algorithm": "consistent-hashing", "hash_on": "query_arg", "hash_on_query_arg": "a",
        "hash_fallback": "path",
    });
    let rings = ring_of(&balancers, 1, fields, &[("a:1", 100)]);
    let ring = rings.ring(&id()).unwrap();
    let headers = HeaderMap::new();
    let with = |query: Option<&'static str>, path: &'static str| {
        ring.hash_key(&HashInput {
            query,
            path,
            ..input(&headers)
        })
        .hash
    };
    assert_eq!(with(Some("a=2&a=1"), "/"), with(Some("a=1&b=0&a=2"), "/x"));
    assert_ne!(with(Some("a=1"), "/"), with(Some("a=2"), "/"));
    // Absent: the path.
    assert_eq!(with(Some("b=1"), "/p"), with(None, "/p"));
    assert_ne!(with(None, "/p"), with(None, "/q"));

    let rings = ring_of(
        &balancers,
        2,
        json!({"algorithm": "consistent-hashing", "hash_on": "consumer", "hash_fallback": "ip"}),
        &[("a:1", 100)],
    );
    let ring = rings.ring(&id()).unwrap();
    let anonymous = ring.hash_key(&input(&headers)).hash;
    let known = ring
        .hash_key(&HashInput {
            consumer: Some(Uuid::from_u128(1)),
            ..input(&headers)
        })
        .hash;
    assert!(anonymous.is_some() && known.is_some());
    assert_ne!(anonymous, known);
}

#[test]
fn uri_captures_hash_by_name_or_number() {
    let route: model::Route = serde_json::from_value(json!({
        "id": Uuid::from_u128(0x2000), "created_at": 1, "updated_at": 1,
        "protocols": ["http"], "paths": ["~/users/(?<user>[^/]+)/(\\d+)"],
        "https_redirect_status_code": 426, "strip_path": true, "preserve_host": false,
        "request_buffering": true, "response_buffering": true,
        "service": {"id": Uuid::from_u128(SERVICE)},
    }))
    .unwrap();
    let service: model::Service = serde_json::from_value(json!({
        "id": Uuid::from_u128(SERVICE), "created_at": 1, "updated_at": 1,
        "protocol": "http", "host": "backend", "port": 80, "enabled": true,
    }))
    .unwrap();
    let by = |capture: &str| {
        json!({
            "algorithm": "consistent-hashing", "hash_on": "uri_capture",
            "hash_on_uri_capture": capture,
        })
    };
    let rt = Runtime::compile(
        1,
        "h".into(),
        model::Config {
            services: vec![service],
            routes: vec![route],
            upstreams: vec![
                upstream(UPSTREAM, "backend", by("user")),
                upstream(OTHER_UPSTREAM, "other", by("2")),
            ],
            targets: targets(UPSTREAM, 1, &[("a:1", 100)]),
            ..Default::default()
        },
    )
    .unwrap();
    let rings = Balancers::default().for_runtime(&rt);
    assert!(rings.ring(&id()).unwrap().wants_captures());
    let headers = HeaderMap::new();
    let hash = |path: &str, upstream: u128| {
        let parts = RequestParts {
            method: "GET",
            host: "",
            port: 80,
            path,
            headers: &headers,
            sni: None,
            protocol: Protocol::Http,
        };
        let found = rt.router().find(&parts).unwrap();
        let captures = found.captures().unwrap();
        let ring = rings.ring(&Uuid::from_u128(upstream)).unwrap();
        ring.hash_key(&HashInput {
            captures: Some(&captures),
            ..input(&headers)
        })
        .hash
    };
    assert_eq!(
        hash("/users/ann/1", UPSTREAM),
        hash("/users/ann/2", UPSTREAM)
    );
    assert_ne!(
        hash("/users/ann/1", UPSTREAM),
        hash("/users/bob/1", UPSTREAM)
    );
    assert_eq!(
        hash("/users/ann/1", OTHER_UPSTREAM),
        hash("/users/bob/1", OTHER_UPSTREAM)
    );
    assert_ne!(
        hash("/users/ann/1", OTHER_UPSTREAM),
        hash("/users/ann/2", OTHER_UPSTREAM)
    );
    // No captures (a route without regex groups): nothing to hash.
    let ring = rings.ring(&id()).unwrap();
    assert_eq!(ring.hash_key(&input(&headers)).hash, None);
}

#[test]
fn only_uri_capture_hashing_wants_captures() {
    let balancers = Balancers::default();
    let rings = ring_of(&balancers, 1, hash_on_user(), &[("a:1", 100)]);
    assert!(!rings.ring(&id()).unwrap().wants_captures());
    let fields = merge(
        hash_on_user(),
        json!({"hash_fallback": "uri_capture", "hash_fallback_uri_capture": "id"}),
    );
    let rings = ring_of(&balancers, 2, fields, &[("a:1", 100)]);
    assert!(rings.ring(&id()).unwrap().wants_captures());
    let fields = json!({"hash_on": "uri_capture", "hash_on_uri_capture": "id"});
    let rings = ring_of(&balancers, 3, fields, &[("a:1", 100)]);
    assert!(!rings.ring(&id()).unwrap().wants_captures(), "round-robin");
}

#[test]
fn picks_may_cross_awaits() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Balancers>();
    send_sync::<Ring>();
    send_sync::<Pick<'_>>();
    send_sync::<HashKey>();
}

#[test]
fn retries_move_to_other_targets() {
    let balancers = Balancers::default();
    let list = [("a:1", 100), ("b:1", 100), ("c:1", 100)];
    let rings = ring_of(&balancers, 1, hash_on_user(), &list);
    let ring = rings.ring(&id()).unwrap();
    for user in ["ann", "bob", "cid", "dan"] {
        let headers = with_header("x-user", user);
        let key = ring.hash_key(&input(&headers));
        let attempts: Vec<String> = (0..3)
            .map(|attempt| addr(ring.pick(&key, attempt).unwrap().peer))
            .collect();
        assert_eq!(
            attempts.iter().collect::<HashSet<_>>().len(),
            3,
            "{attempts:?}"
        );
        // Deterministic, and wrapping around past the last target.
        assert_eq!(addr(ring.pick(&key, 1).unwrap().peer), attempts[1]);
        assert_eq!(addr(ring.pick(&key, 3).unwrap().peer), attempts[0]);
    }

    let rings = ring_of(
        &balancers,
        2,
        json!({"algorithm": "least-connections"}),
        &list,
    );
    let ring = rings.ring(&id()).unwrap();
    let key = HashKey::default();
    let first = ring.pick(&key, 0).unwrap();
    let failed = addr(first.peer);
    drop(first);
    assert_ne!(addr(ring.pick(&key, 1).unwrap().peer), failed);
}

// === load-aware algorithms ===

#[test]
fn least_connections_weighs_requests_in_flight() {
    let balancers = Balancers::default();
    let rings = ring_of(
        &balancers,
        1,
        json!({"algorithm": "least-connections"}),
        &[("a:1", 100), ("b:1", 300)],
    );
    let ring = rings.ring(&id()).unwrap();
    let key = HashKey::default();
    let held: Vec<Pick<'_>> = (0..40).map(|_| ring.pick(&key, 0).unwrap()).collect();
    let on_a = held.iter().filter(|p| p.peer.host == "a").count();
    assert!(
        (9..=11).contains(&on_a),
        "in-flight requests follow the weights: {on_a}"
    );
    drop(held);
    // Idle again: every count is back to 0.
    assert!(ring.members.iter().all(|m| m.state.load.in_flight() == 0));

    // Equal weights, nothing in flight: ties rotate.
    let rings = ring_of(
        &balancers,
        2,
        json!({"algorithm": "least-connections"}),
        &[("a:1", 100), ("b:1", 100)],
    );
    let ring = rings.ring(&id()).unwrap();
    let picks: HashSet<String> = (0..2)
        .map(|_| addr(ring.pick(&key, 0).unwrap().peer))
        .collect();
    assert_eq!(picks.len(), 2);
}

#[test]
fn latency_prefers_the_fast_target() {
    let clock = Clock::manual();
    let balancers = Balancers::with_clock(clock.clone());
    let rings = ring_of(
        &balancers,
        1,
        json!({"algorithm": "latency"}),
        &[("a:1", 100), ("b:1", 100)],
    );
    let ring = rings.ring(&id()).unwrap();
    let key = HashKey::default();
    for _ in 0..4 {
        let pick = ring.pick(&key, 0).unwrap();
        let took = if pick.peer.host == "a" { 200 } else { 20 };
        clock.advance(Duration::from_millis(took));
        pick.report(Outcome::Status(200));
    }
    let counts = spread(ring, 10);
    assert_eq!(counts.get("b:1"), Some(&10), "{counts:?}");
}

// === passive health checks ===

#[test]
fn tcp_failures_mark_unhealthy_and_traffic_avoids_it() {
    let balancers = Balancers::with_clock(Clock::manual());
    let rings = ring_of(&balancers, 1, passive(2, 1), &[("a:1", 100), ("b:1", 100)]);
    let ring = rings.ring(&id()).unwrap();
    fail(ring, "a:1", 2);
    assert_eq!(spread(ring, 100).get("a:1"), None);
    // Statuses outside both lists count for nothing.
    ring.pick(&HashKey::default(), 0)
        .unwrap()
        .report(Outcome::Status(404));
    assert_eq!(spread(ring, 10)["b:1"], 10);
}

#[test]
fn successes_revive() {
    let balancers = Balancers::with_clock(Clock::manual());
    let rings = ring_of(&balancers, 1, passive(1, 2), &[("a:1", 100), ("b:1", 100)]);
    let ring = rings.ring(&id()).unwrap();
    let key = HashKey::default();
    // Two requests to `a` in flight, then `a` fails a connection.
    let mut held = Vec::new();
    while held.len() < 2 {
        let pick = ring.pick(&key, 0).unwrap();
        if pick.peer.host == "a" {
            held.push(pick);
        }
    }
    fail(ring, "a:1", 1);
    assert_eq!(spread(ring, 10).get("a:1"), None);
    // The two earlier requests succeed: `healthy.successes` is 2.
    held[0].report(Outcome::Status(200));
    assert_eq!(spread(ring, 10).get("a:1"), None);
    held[1].report(Outcome::Status(204));
    assert_eq!(spread(ring, 10)["a:1"], 5);
}

#[test]
fn one_trial_after_the_cool_down() {
    let clock = Clock::manual();
    let balancers = Balancers::with_clock(clock.clone());
    let rings = ring_of(&balancers, 1, passive(1, 0), &[("a:1", 100), ("b:1", 100)]);
    let ring = rings.ring(&id()).unwrap();
    let key = HashKey::default();
    fail(ring, "a:1", 1);

    clock.advance(health::COOL_DOWN - Duration::from_millis(1));
    assert_eq!(spread(ring, 20).get("a:1"), None, "still cooling down");
    clock.advance(Duration::from_millis(1));
    let picks: Vec<Pick<'_>> = (0..20).map(|_| ring.pick(&key, 0).unwrap()).collect();
    let trials: Vec<&Pick<'_>> = picks.iter().filter(|p| p.peer.host == "a").collect();
    assert_eq!(trials.len(), 1, "exactly one trial");
    assert!(trials[0].trial);
    // It fails: another cool-down.
    trials[0].report(Outcome::ConnectFailed);
    drop(picks);
    assert_eq!(spread(ring, 20).get("a:1"), None);
    clock.advance(health::COOL_DOWN);
    let trial = loop {
        let pick = ring.pick(&key, 0).unwrap();
        if pick.peer.host == "a" {
            break pick;
        }
    };
    // A 404 is an answer: the target is back.
    trial.report(Outcome::Status(404));
    assert_eq!(spread(ring, 20)["a:1"], 10);
}

#[test]
fn no_pick_when_all_are_unhealthy_but_a_trial() {
    let clock = Clock::manual();
    let balancers = Balancers::with_clock(clock.clone());
    let rings = ring_of(&balancers, 1, passive(1, 0), &[("a:1", 100)]);
    let ring = rings.ring(&id()).unwrap();
    let key = HashKey::default();
    fail(ring, "a:1", 1);
    assert!(ring.pick(&key, 0).is_none());
    clock.advance(health::COOL_DOWN);
    let trial = ring.pick(&key, 0).unwrap();
    assert!(ring.pick(&key, 0).is_none(), "one trial at a time");
    trial.report(Outcome::Status(200));
    assert!(ring.pick(&key, 0).is_some());
}

#[test]
fn healthy_weight_below_the_threshold_picks_nothing() {
    let list = [("a:1", 100), ("b:1", 100), ("c:1", 100), ("d:1", 100)];
    for (threshold, serving) in [(80.0, false), (75.0, true), (0.0, true)] {
        let balancers = Balancers::with_clock(Clock::manual());
        let fields = json!({"healthchecks": {
            "threshold": threshold,
            "passive": {"unhealthy": {"tcp_failures": 1}},
        }});
        let rings = ring_of(&balancers, 1, fields, &list);
        let ring = rings.ring(&id()).unwrap();
        assert!(ring.pick(&HashKey::default(), 0).is_some());
        fail(ring, "a:1", 1);
        assert_eq!(
            ring.pick(&HashKey::default(), 0).is_some(),
            serving,
            "threshold {threshold}"
        );
    }
}

#[test]
fn unhealthy_hash_targets_lose_only_their_keys() {
    let balancers = Balancers::with_clock(Clock::manual());
    let fields = merge(hash_on_user(), passive(1, 0));
    let list = [("a:1", 100), ("b:1", 100), ("c:1", 100), ("d:1", 100)];
    let rings = ring_of(&balancers, 1, fields, &list);
    let ring = rings.ring(&id()).unwrap();
    let before: Vec<String> = (0..2000)
        .map(|k| target_for(ring, &k.to_string()))
        .collect();
    let headers = with_header(
        "x-user",
        &before.iter().position(|t| t == "a:1").unwrap().to_string(),
    );
    ring.pick(&ring.hash_key(&input(&headers)), 0)
        .unwrap()
        .report(Outcome::ConnectFailed);
    for (k, old) in before.iter().enumerate() {
        let new = target_for(ring, &k.to_string());
        if old == "a:1" {
            assert_ne!(new, "a:1");
        } else {
            assert_eq!(&new, old);
        }
    }
}

#[test]
fn health_survives_a_new_runtime() {
    let balancers = Balancers::with_clock(Clock::manual());
    let fields = passive(1, 0);
    let list = [("a:1", 100), ("b:1", 100)];
    let first = ring_of(&balancers, 1, fields.clone(), &list);
    fail(first.ring(&id()).unwrap(), "a:1", 1);

    // Unrelated change, and a weight change of the unhealthy target: still unhealthy.
    let second = ring_of(&balancers, 2, fields.clone(), &[("a:1", 50), ("b:1", 100)]);
    assert_eq!(spread(second.ring(&id()).unwrap(), 20).get("a:1"), None);

    // The target leaves, then comes back: a fresh start.
    let third = ring_of(&balancers, 3, fields.clone(), &[("b:1", 100)]);
    assert_eq!(spread(third.ring(&id()).unwrap(), 2)["b:1"], 2);
    let fourth = ring_of(&balancers, 4, fields, &list);
    assert_eq!(spread(fourth.ring(&id()).unwrap(), 20)["a:1"], 10);
}

#[test]
fn turning_passive_checks_off_revives() {
    let balancers = Balancers::with_clock(Clock::manual());
    let list = [("a:1", 100), ("b:1", 100)];
    let first = ring_of(&balancers, 1, passive(1, 0), &list);
    fail(first.ring(&id()).unwrap(), "a:1", 1);
    let second = ring_of(&balancers, 2, json!({}), &list);
    assert_eq!(spread(second.ring(&id()).unwrap(), 20)["a:1"], 10);
}

#[test]
fn timeouts_and_http_failures_have_their_own_counters() {
    let balancers = Balancers::with_clock(Clock::manual());
    let fields = json!({"healthchecks": {"passive": {
        "unhealthy": {"timeouts": 2, "http_failures": 2, "http_statuses": [500, 503]},
    }}});
    let rings = ring_of(&balancers, 1, fields, &[("a:1", 100), ("b:1", 100)]);
    let ring = rings.ring(&id()).unwrap();
    let report = |outcome: Outcome| loop {
        let pick = ring.pick(&HashKey::default(), 0).unwrap();
        if pick.peer.host == "a" {
            pick.report(outcome);
            break;
        }
    };
    // One of each kind, none reaching its threshold; connection failures are not counted.
    report(Outcome::TimedOut);
    report(Outcome::Status(500));
    report(Outcome::ConnectFailed);
    report(Outcome::ConnectFailed);
    assert_eq!(spread(ring, 10)["a:1"], 5);
    report(Outcome::Status(503));
    assert_eq!(spread(ring, 10).get("a:1"), None);
}
