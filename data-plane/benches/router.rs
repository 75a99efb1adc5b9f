//! Router micro-benchmark: nanoseconds per [`Router::find`] with 1, 100, 1,000 and 10,000
//! routes, to show that matching cost stays flat as the route table grows.
//!
//! Run: `cargo bench -p gatehouse-dp --bench router` (a plain `Instant` loop, no harness;
//! each figure is the best of 5 rounds of 100,000 lookups on one thread).
//!
//! Routes, by `i % 10`: 0–5 exact host `svc<i>.example.com` + prefix `/api/v<i%7>/r<i>`;
//! 6 wildcard host `*.t<i>.example.net` + `/w<i>`; 7 no host, `GET` + `/p<i>/items`;
//! 8 host `rx<i>.example.org` + regex `~/items/<i>/(?<id>\d+)$`; 9 no host, header
//! `x-tenant: t<i>` + regex `~/r<i>/(?<id>\d+)$`. Each request targets a route near the middle
//! of the table; "miss" matches nothing (unknown host, unknown path).
//!
//! Results (2-core VM shared with other work, release profile, Rust 1.95):
//!
//! | ns per `find`        | 1 route | 100 routes | 1,000 routes | 10,000 routes |
//! |----------------------|--------:|-----------:|-------------:|--------------:|
//! | exact host + prefix  |      39 |         61 |           64 |            65 |
//! | wildcard host        |       – |         90 |          106 |            91 |
//! | no host, prefix      |       – |         81 |           92 |            99 |
//! | host + regex         |       – |         92 |          106 |           108 |
//! | no host, regex       |       – |        114 |          124 |           121 |
//! | path to normalize    |     142 |        176 |          165 |           171 |
//! | miss                 |      22 |         66 |           73 |            86 |
//!
//! The 1-route table has no wildcard or host-less bucket to search, hence its lower figures;
//! from 100 to 10,000 routes the cost grows only with the binary search in the host-less
//! bucket (log of its 20 → 2,000 keys). "path to normalize" pays the allocations of
//! `normalize_path`. `Runtime::compile` takes 0.13 / 2.2 / 19 / 164 ms for the four sizes, of
//! which building the router 0.00 / 0.07 / 1.6 / 27 ms.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use gatehouse_dp::router::{Protocol, RequestParts, Router};
use gatehouse_dp::runtime::Runtime;
use gatehouse_shared::model::{self, ForeignKey};
use http::{HeaderMap, HeaderName, HeaderValue};
use uuid::Uuid;

const SIZES: [usize; 4] = [1, 100, 1_000, 10_000];
const ROUNDS: usize = 5;
const LOOKUPS: usize = 100_000;

/// A request the benchmark sends, and the route it should match.
struct Case {
    name: &'static str,
    host: String,
    path: String,
    headers: HeaderMap,
    expect: Option<usize>,
}

fn main() {
    let mut table: Vec<(&'static str, Vec<Option<f64>>)> = Vec::new();
    let mut compile_ms = Vec::new();
    let mut router_ms = Vec::new();
    for (column, &size) in SIZES.iter().enumerate() {
        let started = Instant::now();
        let runtime = Runtime::compile(1, "bench".into(), config(size))
            .unwrap_or_else(|e| panic!("the benchmark config compiles: {e}"));
        compile_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        black_box(Router::new(&runtime));
        router_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let router = runtime.router();
        for case in cases(size) {
            let ns = case.expect.is_some() || case.name == "miss";
            let figure = ns.then(|| measure(router, &case));
            match table.iter_mut().find(|(name, _)| *name == case.name) {
                Some((_, row)) => row.push(figure),
                None => {
                    let mut row = vec![None; column];
                    row.push(figure);
                    table.push((case.name, row));
                }
            }
        }
    }

    println!("router: ns per Router::find (best of {ROUNDS} x {LOOKUPS})");
    print!("{:<22}", "routes");
    for size in SIZES {
        print!("{size:>10}");
    }
    println!();
    for (name, row) in &table {
        print!("{name:<22}");
        for figure in row {
            match figure {
                Some(ns) => print!("{ns:>10.0}"),
                None => print!("{:>10}", "-"),
            }
        }
        println!();
    }
    for (name, times) in [
        ("compile (ms)", &compile_ms),
        ("router build (ms)", &router_ms),
    ] {
        print!("{name:<22}");
        for ms in times {
            print!("{ms:>10.2}");
        }
        println!();
    }
}

/// Best nanoseconds per lookup over the rounds; checks the answer first.
fn measure(router: &Router, case: &Case) -> f64 {
    let parts = RequestParts {
        method: "GET",
        host: &case.host,
        port: 80,
        path: &case.path,
        headers: &case.headers,
        sni: None,
        protocol: Protocol::Http,
    };
    let found = router.find(&parts).map(|m| m.route_index());
    assert_eq!(
        found, case.expect,
        "{}: {} {}",
        case.name, case.host, case.path
    );
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..LOOKUPS {
            let found = router.find(black_box(&parts));
            black_box(found.map(|m| m.route_index()));
        }
        let ns = started.elapsed().as_nanos() as f64 / LOOKUPS as f64;
        best = best.min(ns);
    }
    best
}

/// The requests for a table of `size` routes: one per route kind, aimed at a route near the
/// middle of the table (none when the table has no route of that kind).
fn cases(size: usize) -> Vec<Case> {
    let middle = |kind: usize| -> Option<usize> {
        (0..size)
            .filter(|i| i % 10 == kind)
            .min_by_key(|i| i.abs_diff(size / 2))
    };
    let case = |name, kind: usize, request: &dyn Fn(usize) -> (String, String, HeaderMap)| {
        let target = middle(kind);
        let (host, path, headers) = request(target.unwrap_or(0));
        Case {
            name,
            host,
            path,
            headers,
            expect: target,
        }
    };
    let no_headers = HeaderMap::new;
    vec![
        case("exact host + prefix", 0, &|i| {
            (
                format!("svc{i}.example.com"),
                format!("/api/v{}/r{i}/items", i % 7),
                no_headers(),
            )
        }),
        case("wildcard host", 6, &|i| {
            (
                format!("a.b.t{i}.example.net"),
                format!("/w{i}/x"),
                no_headers(),
            )
        }),
        case("no host, prefix", 7, &|i| {
            (
                "unknown.example".into(),
                format!("/p{i}/items/1"),
                no_headers(),
            )
        }),
        case("host + regex", 8, &|i| {
            (
                format!("rx{i}.example.org"),
                format!("/items/{i}/42"),
                no_headers(),
            )
        }),
        case("no host, regex", 9, &|i| {
            let mut headers = HeaderMap::new();
            let value =
                HeaderValue::from_str(&format!("t{i}")).unwrap_or(HeaderValue::from_static("t"));
            headers.insert(HeaderName::from_static("x-tenant"), value);
            ("unknown.example".into(), format!("/r{i}/7"), headers)
        }),
        case("path to normalize", 0, &|i| {
            (
                format!("svc{i}.example.com"),
                format!("/api/./v{}//r{i}/%69tems", i % 7),
                no_headers(),
            )
        }),
        Case {
            name: "miss",
            host: "nope.example".into(),
            path: "/nothing/here".into(),
            headers: HeaderMap::new(),
            expect: None,
        },
    ]
}

/// One service, and `size` routes of the kinds described in the header.
fn config(size: usize) -> model::Config {
    let service = Uuid::from_u128(1 << 64);
    let routes = (0..size).map(|i| route(i, service)).collect();
    model::Config {
        services: vec![model::Service {
            id: service,
            created_at: 1,
            updated_at: 1,
            name: Some("bench".into()),
            retries: 5,
            protocol: "http".into(),
            host: "upstream.test".into(),
            port: 80,
            path: None,
            connect_timeout: 60_000,
            write_timeout: 60_000,
            read_timeout: 60_000,
            client_certificate: None,
            tls_verify: None,
            tls_verify_depth: None,
            ca_certificates: None,
            enabled: true,
            tags: None,
        }],
        routes,
        ..Default::default()
    }
}

fn route(i: usize, service: Uuid) -> model::Route {
    let one = |s: String| Some(vec![s]);
    let (hosts, paths, methods, headers) = match i % 10 {
        0..=5 => (
            one(format!("svc{i}.example.com")),
            one(format!("/api/v{}/r{i}", i % 7)),
            None,
            None,
        ),
        6 => (
            one(format!("*.t{i}.example.net")),
            one(format!("/w{i}")),
            None,
            None,
        ),
        7 => (None, one(format!("/p{i}/items")), one("GET".into()), None),
        8 => (
            one(format!("rx{i}.example.org")),
            one(format!(r"~/items/{i}/(?<id>\d+)$")),
            None,
            None,
        ),
        _ => (
            None,
            one(format!(r"~/r{i}/(?<id>\d+)$")),
            None,
            Some(BTreeMap::from([(
                "x-tenant".to_owned(),
                vec![format!("t{i}")],
            )])),
        ),
    };
    model::Route {
        id: Uuid::from_u128(i as u128 + 1),
        created_at: 1,
        updated_at: 1,
        name: None,
        protocols: vec!["http".into(), "https".into()],
        methods,
        hosts,
        paths,
        headers,
        https_redirect_status_code: 426,
        regex_priority: 0,
        strip_path: true,
        path_handling: "v0".into(),
        preserve_host: false,
        request_buffering: true,
        response_buffering: true,
        snis: None,
        sources: None,
        destinations: None,
        service: Some(ForeignKey { id: service }),
        tags: None,
    }
}
