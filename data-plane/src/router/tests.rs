#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use gatehouse_shared::checks::normalize_path;
use gatehouse_shared::model::{self, ForeignKey};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;

const SERVICE: u128 = 0x5e;

// === fixtures ===

fn service(id: u128, path: Option<&str>) -> model::Service {
    model::Service {
        id: Uuid::from_u128(id),
        created_at: 1,
        updated_at: 1,
        name: None,
        retries: 5,
        protocol: "http".into(),
        host: "upstream.test".into(),
        port: 80,
        path: path.map(Into::into),
        connect_timeout: 60_000,
        write_timeout: 60_000,
        read_timeout: 60_000,
        client_certificate: None,
        tls_verify: None,
        tls_verify_depth: None,
        ca_certificates: None,
        enabled: true,
        tags: None,
    }
}

/// A route to [`SERVICE`] with Kong's defaults and no matching fields.
fn route(id: u128) -> model::Route {
    model::Route {
        id: Uuid::from_u128(id),
        created_at: 1,
        updated_at: 1,
        name: None,
        protocols: vec!["http".into(), "https".into()],
        methods: None,
        hosts: None,
        paths: None,
        headers: None,
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
        service: Some(ForeignKey {
            id: Uuid::from_u128(SERVICE),
        }),
        tags: None,
    }
}

fn strings(values: &[&str]) -> Option<Vec<String>> {
    Some(values.iter().map(|v| (*v).to_owned()).collect())
}

/// Builder methods for test routes.
trait RouteExt {
    fn hosts(self, hosts: &[&str]) -> Self;
    fn paths(self, paths: &[&str]) -> Self;
    fn methods(self, methods: &[&str]) -> Self;
    fn header(self, name: &str, values: &[&str]) -> Self;
    fn snis(self, snis: &[&str]) -> Self;
    fn protocols(self, protocols: &[&str]) -> Self;
    fn regex_priority(self, priority: i64) -> Self;
    fn strip(self, strip: bool) -> Self;
    fn handling(self, handling: &str) -> Self;
}

impl RouteExt for model::Route {
    fn hosts(mut self, hosts: &[&str]) -> Self {
        self.hosts = strings(hosts);
        self
    }
    fn paths(mut self, paths: &[&str]) -> Self {
        self.paths = strings(paths);
        self
    }
    fn methods(mut self, methods: &[&str]) -> Self {
        self.methods = strings(methods);
        self
    }
    fn header(mut self, name: &str, values: &[&str]) -> Self {
        self.headers
            .get_or_insert_with(BTreeMap::new)
            .insert(name.into(), strings(values).unwrap());
        self
    }
    fn snis(mut self, snis: &[&str]) -> Self {
        self.snis = strings(snis);
        self
    }
    fn protocols(mut self, protocols: &[&str]) -> Self {
        self.protocols = strings(protocols).unwrap();
        self
    }
    fn regex_priority(mut self, priority: i64) -> Self {
        self.regex_priority = priority;
        self
    }
    fn strip(mut self, strip: bool) -> Self {
        self.strip_path = strip;
        self
    }
    fn handling(mut self, handling: &str) -> Self {
        self.path_handling = handling.into();
        self
    }
}

fn compile(config: model::Config) -> Runtime {
    Runtime::compile(1, "h".into(), config).unwrap()
}

/// A runtime with [`SERVICE`] (no path) and `routes`.
fn runtime(routes: Vec<model::Route>) -> Runtime {
    compile(model::Config {
        services: vec![service(SERVICE, None)],
        routes,
        ..Default::default()
    })
}

/// A request, owning what [`RequestParts`] borrows.
struct Req {
    method: &'static str,
    host: String,
    port: u16,
    path: String,
    headers: HeaderMap,
    sni: Option<String>,
    protocol: Protocol,
}

fn get(host: &str, path: &str) -> Req {
    Req {
        method: "GET",
        host: host.into(),
        port: 80,
        path: path.into(),
        headers: HeaderMap::new(),
        sni: None,
        protocol: Protocol::Http,
    }
}

impl Req {
    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }
    fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        self
    }
    /// Over TLS, with this server name.
    fn tls(mut self, sni: Option<&str>) -> Self {
        self.protocol = Protocol::Https;
        self.sni = sni.map(Into::into);
        self
    }
    fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }
    fn parts(&self) -> RequestParts<'_> {
        RequestParts {
            method: self.method,
            host: &self.host,
            port: self.port,
            path: &self.path,
            headers: &self.headers,
            sni: self.sni.as_deref(),
            protocol: self.protocol,
        }
    }
}

/// Finds the route of `req`, checking the index against the linear reference.
fn find<'a>(rt: &'a Runtime, parts: &RequestParts<'a>) -> Option<Match<'a>> {
    let found = rt.router().find(parts);
    let linear = rt.router().find_linear(rt, parts);
    assert_eq!(
        found.as_ref().map(|m| (m.route_index(), m.matched)),
        linear,
        "index and linear scan disagree for {parts:?}"
    );
    found
}

/// The id (as a number) of the route `req` matches.
fn hit(rt: &Runtime, req: &Req) -> Option<u128> {
    let parts = req.parts();
    find(rt, &parts).map(|m| m.route_id().as_u128())
}

// === matching rules ===

#[test]
fn empty_routers_match_nothing() {
    let req = get("a.test", "/");
    assert!(Runtime::empty().router().find(&req.parts()).is_none());
    let rt = runtime(vec![]);
    assert!(rt.router().is_empty());
    assert_eq!(hit(&rt, &req), None);
}

#[test]
fn router_new_is_the_compiled_router() {
    let rt = runtime(vec![route(1).paths(&["/a"])]);
    let router = Router::new(&rt);
    assert_eq!(router.len(), 1);
    let req = get("x", "/a/b");
    assert_eq!(router.find(&req.parts()).unwrap().route_index(), 0);
}

#[test]
fn methods_match_exactly() {
    let rt = runtime(vec![route(1).methods(&["GET", "POST"])]);
    assert_eq!(hit(&rt, &get("a", "/")), Some(1));
    assert_eq!(hit(&rt, &get("a", "/").method("POST")), Some(1));
    assert_eq!(hit(&rt, &get("a", "/").method("PUT")), None);
    assert_eq!(hit(&rt, &get("a", "/").method("get")), None);
}

#[test]
fn exact_hosts_ignore_case() {
    let rt = runtime(vec![route(1).hosts(&["api.example.com", "Other.Test"])]);
    assert_eq!(hit(&rt, &get("api.example.com", "/")), Some(1));
    assert_eq!(hit(&rt, &get("API.Example.COM", "/")), Some(1));
    assert_eq!(hit(&rt, &get("other.test", "/x")), Some(1));
    assert_eq!(hit(&rt, &get("example.com", "/")), None);
    assert_eq!(hit(&rt, &get("", "/")), None);
}

#[test]
fn leading_wildcard_hosts_match_any_depth() {
    let rt = runtime(vec![route(1).hosts(&["*.example.com"])]);
    assert_eq!(hit(&rt, &get("a.example.com", "/")), Some(1));
    assert_eq!(hit(&rt, &get("x.y.example.com", "/")), Some(1));
    assert_eq!(hit(&rt, &get("example.com", "/")), None);
    assert_eq!(hit(&rt, &get("aexample.com", "/")), None);
    assert_eq!(hit(&rt, &get("a.example.com.evil", "/")), None);
}

#[test]
fn trailing_wildcard_hosts_match_any_ending() {
    let rt = runtime(vec![route(1).hosts(&["example.*"])]);
    assert_eq!(hit(&rt, &get("example.com", "/")), Some(1));
    assert_eq!(hit(&rt, &get("example.co.uk", "/")), Some(1));
    assert_eq!(hit(&rt, &get("example", "/")), None);
    assert_eq!(hit(&rt, &get("www.example.com", "/")), None);
}

#[test]
fn hosts_with_a_port_need_that_port() {
    let rt = runtime(vec![
        route(1).hosts(&["a.test:8080", "b.test"]),
        route(2).hosts(&["*.w.test:8443"]),
    ]);
    assert_eq!(hit(&rt, &get("a.test", "/").port(8080)), Some(1));
    assert_eq!(hit(&rt, &get("a.test", "/").port(80)), None);
    assert_eq!(hit(&rt, &get("b.test", "/").port(9999)), Some(1));
    assert_eq!(hit(&rt, &get("x.w.test", "/").port(8443)), Some(2));
    assert_eq!(hit(&rt, &get("x.w.test", "/").port(443)), None);
}

#[test]
fn split_host_port_handles_names_ipv6_and_junk() {
    let split = |s| {
        let (host, port) = split_host_port(s);
        (host.into_owned(), port)
    };
    assert_eq!(
        split("Example.COM:8080"),
        ("example.com".into(), Some(8080))
    );
    assert_eq!(split("a.test"), ("a.test".into(), None));
    assert_eq!(split("[::1]:8443"), ("::1".into(), Some(8443)));
    assert_eq!(split("[::1]"), ("::1".into(), None));
    assert_eq!(split("a.test:http"), ("a.test:http".into(), None));
    assert_eq!(split("a.test:99999"), ("a.test:99999".into(), None));
    assert_eq!(split("[::1"), ("[::1".into(), None));
    assert_eq!(split(""), (String::new(), None));
    assert!(matches!(split_host_port("a.test:1").0, Cow::Borrowed(_)));
}

#[test]
fn prefix_paths_are_plain_string_prefixes() {
    let rt = runtime(vec![route(1).paths(&["/foo"])]);
    for path in ["/foo", "/foo/", "/foo/bar", "/foobar"] {
        assert_eq!(hit(&rt, &get("a", path)), Some(1), "{path}");
    }
    for path in ["/fo", "/", "/bar/foo", "/Foo", ""] {
        assert_eq!(hit(&rt, &get("a", path)), None, "{path}");
    }
}

#[test]
fn regex_paths_are_anchored_at_the_start() {
    let rt = runtime(vec![route(1).paths(&[r"~/items/\d+$"])]);
    assert_eq!(hit(&rt, &get("a", "/items/42")), Some(1));
    assert_eq!(hit(&rt, &get("a", "/x/items/42")), None);
    assert_eq!(hit(&rt, &get("a", "/items/42/x")), None);
    assert_eq!(hit(&rt, &get("a", "/items/")), None);
}

#[test]
fn regexes_without_a_literal_start_are_tried_on_every_path() {
    let rt = runtime(vec![
        route(1).paths(&["~/(?i)ADMIN"]),
        route(2).paths(&["~/(a|b)/x"]),
        route(3).paths(&["~/c?d"]),
    ]);
    assert_eq!(hit(&rt, &get("a", "/admin/panel")), Some(1));
    assert_eq!(hit(&rt, &get("a", "/b/x")), Some(2));
    assert_eq!(hit(&rt, &get("a", "/d")), Some(3));
    assert_eq!(hit(&rt, &get("a", "/cd")), Some(3));
}

#[test]
fn literal_prefixes_are_conservative() {
    for (pattern, literal) in [
        (r"/items/(?<id>\d+)", "/items/"),
        ("/ab?c", "/a"),
        ("/x+", "/"),
        ("/a{2}", "/"),
        ("/é*", "/"),
        ("/café/x", "/café/x"),
        (r"/file\.json", "/file"),
        ("/a.b", "/a"),
        ("/a|/b", ""),
        ("(?i)/x", ""),
        ("/a b", "/a"),
        ("/[ab]", "/"),
        ("", ""),
    ] {
        assert_eq!(literal_prefix(pattern), literal, "{pattern}");
    }
}

#[test]
fn headers_need_every_name_and_any_value() {
    let rt = runtime(vec![
        route(1)
            .header("X-Env", &["Prod", "~*^stag"])
            .header("x-team", &["core"]),
    ]);
    let req = |env: &str| get("a", "/").header("x-env", env).header("X-Team", "CORE");
    assert_eq!(hit(&rt, &req("prod")), Some(1));
    assert_eq!(hit(&rt, &req("PROD")), Some(1));
    assert_eq!(
        hit(&rt, &req("Staging-2")),
        Some(1),
        "regex, case-insensitive"
    );
    assert_eq!(hit(&rt, &req("preprod")), None, "plain values are exact");
    assert_eq!(hit(&rt, &req("dev")), None);
    assert_eq!(
        hit(&rt, &get("a", "/").header("x-env", "prod")),
        None,
        "x-team missing"
    );
    // Any line of a repeated header will do.
    let repeated = get("a", "/")
        .header("x-env", "dev")
        .header("x-env", "prod")
        .header("x-team", "core");
    assert_eq!(hit(&rt, &repeated), Some(1));
}

#[test]
fn header_regexes_are_unanchored() {
    let rt = runtime(vec![route(1).header("user-agent", &["~*curl/[0-9]"])]);
    assert_eq!(
        hit(&rt, &get("a", "/").header("user-agent", "x CURL/8.1")),
        Some(1)
    );
    assert_eq!(hit(&rt, &get("a", "/").header("user-agent", "wget")), None);
}

#[test]
fn header_values_that_are_not_text_never_panic() {
    let rt = runtime(vec![route(1).header("x-a", &["é", "~*z"])]);
    let mut req = get("a", "/");
    req.headers
        .append("x-a", HeaderValue::from_bytes(&[0xff, 0xfe]).unwrap());
    assert_eq!(hit(&rt, &req), None);
    let mut req = get("a", "/");
    req.headers
        .append("x-a", HeaderValue::from_bytes("É".as_bytes()).unwrap());
    assert_eq!(
        hit(&rt, &req),
        Some(1),
        "non-ASCII values compare lowercased"
    );
}

#[test]
fn snis_only_count_over_tls() {
    let rt = runtime(vec![route(1).snis(&["api.test"]).paths(&["/"])]);
    assert_eq!(hit(&rt, &get("x", "/").tls(Some("api.test"))), Some(1));
    assert_eq!(hit(&rt, &get("x", "/").tls(Some("API.test."))), Some(1));
    assert_eq!(hit(&rt, &get("x", "/").tls(Some("other.test"))), None);
    assert_eq!(hit(&rt, &get("x", "/").tls(None)), None);
    assert_eq!(
        hit(&rt, &get("x", "/").protocol(Protocol::Grpcs)),
        None,
        "grpcs is TLS"
    );
    // Plain HTTP: the snis field is not considered (Kong #6425).
    assert_eq!(hit(&rt, &get("x", "/")), Some(1));
}

#[test]
fn every_field_must_match() {
    let full = route(1)
        .methods(&["GET"])
        .hosts(&["a.test"])
        .paths(&["/api"])
        .header("x-a", &["1"])
        .snis(&["a.test"]);
    let rt = runtime(vec![full]);
    let ok = || {
        get("a.test", "/api/v1")
            .header("x-a", "1")
            .tls(Some("a.test"))
    };
    assert_eq!(hit(&rt, &ok()), Some(1));
    assert_eq!(hit(&rt, &ok().method("POST")), None);
    assert_eq!(
        hit(
            &rt,
            &Req {
                host: "b.test".into(),
                ..ok()
            }
        ),
        None
    );
    assert_eq!(
        hit(
            &rt,
            &Req {
                path: "/apx".into(),
                ..ok()
            }
        ),
        None
    );
    assert_eq!(
        hit(
            &rt,
            &Req {
                headers: HeaderMap::new(),
                ..ok()
            }
        ),
        None
    );
    assert_eq!(hit(&rt, &ok().tls(Some("b.test"))), None);
}

#[test]
fn stream_routes_are_left_out() {
    let rt = runtime(vec![
        route(1).protocols(&["tls"]).snis(&["a.test"]),
        route(2).protocols(&["tcp"]).paths(&["/"]),
    ]);
    assert!(rt.router().is_empty());
    assert_eq!(hit(&rt, &get("a.test", "/").tls(Some("a.test"))), None);
}

#[test]
fn routes_of_disabled_services_drop_out() {
    let mut disabled = service(0xd, None);
    disabled.enabled = false;
    let mut off = route(1).paths(&["/a/long/path"]);
    off.service = Some(ForeignKey { id: disabled.id });
    let rt = compile(model::Config {
        services: vec![service(SERVICE, None), disabled],
        routes: vec![off, route(2).paths(&["/a"])],
        ..Default::default()
    });
    assert_eq!(rt.router().len(), 1);
    assert_eq!(hit(&rt, &get("x", "/a/long/path")), Some(2));
}

#[test]
fn routes_without_a_service_still_match() {
    let mut orphan = route(1).paths(&["/o"]);
    orphan.service = None;
    let rt = runtime(vec![orphan, route(2).paths(&["/"])]);
    let req = get("x", "/o");
    let parts = req.parts();
    let m = find(&rt, &parts).unwrap();
    assert_eq!(m.route_id(), Uuid::from_u128(1));
    assert_eq!(m.service_index(), None, "the proxy answers 503");
    let req = get("x", "/p");
    assert_eq!(find(&rt, &req.parts()).unwrap().service_index(), Some(0));
}

// === priority ===

/// Asserts `winner` beats `loser` for `req`, whatever their ids (ties go to the higher id).
#[track_caller]
fn beats(winner: model::Route, loser: model::Route, req: &Req) {
    for (w, l) in [(1, 2), (2, 1)] {
        let mut a = winner.clone();
        a.id = Uuid::from_u128(w);
        let mut b = loser.clone();
        b.id = Uuid::from_u128(l);
        let rt = runtime(vec![a, b]);
        assert_eq!(hit(&rt, req), Some(w), "winner as id {w}");
        // Each route matches the request on its own.
        let rt = runtime(vec![loser.clone()]);
        assert!(hit(&rt, req).is_some(), "the loser matches alone");
    }
}

#[test]
fn more_fields_win_over_longer_paths() {
    beats(
        route(0).paths(&["/"]).methods(&["GET"]),
        route(0).paths(&["/a/very/long/prefix"]),
        &get("a", "/a/very/long/prefix/x"),
    );
    beats(
        route(0).hosts(&["*.test"]).header("x-a", &["1"]),
        route(0).hosts(&["a.test"]),
        &get("a.test", "/").header("x-a", "1"),
    );
}

#[test]
fn plain_hosts_win_over_wildcards() {
    beats(
        route(0).hosts(&["api.example.com"]).paths(&["/"]),
        route(0).hosts(&["*.example.com"]).paths(&["/long/path"]),
        &get("api.example.com", "/long/path"),
    );
    beats(
        route(0).hosts(&["api.example.com", "b.test"]),
        route(0).hosts(&["api.example.com", "example.*"]),
        &get("api.example.com", "/"),
    );
    // A route without hosts is not "plain": same weight, the hosts route wins.
    beats(
        route(0).hosts(&["a.test"]),
        route(0).methods(&["GET"]),
        &get("a.test", "/"),
    );
}

#[test]
fn more_headers_win() {
    beats(
        route(0)
            .paths(&["/"])
            .header("x-a", &["1"])
            .header("x-b", &["2"]),
        route(0).paths(&["/longer"]).header("x-a", &["1"]),
        &get("a", "/longer").header("x-a", "1").header("x-b", "2"),
    );
}

#[test]
fn regex_paths_win_over_prefixes() {
    beats(
        route(0).paths(&["~/ab"]),
        route(0).paths(&["/abc/long"]),
        &get("a", "/abc/long"),
    );
}

#[test]
fn higher_regex_priority_wins() {
    beats(
        route(0).paths(&["~/a"]).regex_priority(1),
        route(0).paths(&[r"~/a/\d+"]).regex_priority(0),
        &get("a", "/a/1"),
    );
    beats(
        route(0).paths(&["~/a"]).regex_priority(0),
        route(0).paths(&["~/a"]).regex_priority(-5),
        &get("a", "/a/1"),
    );
}

#[test]
fn longer_prefixes_win() {
    beats(
        route(0).paths(&["/a/b"]),
        route(0).paths(&["/a"]),
        &get("a", "/a/b/c"),
    );
}

#[test]
fn ties_go_to_the_higher_route_id() {
    let rt = runtime(vec![route(1).paths(&["/a"]), route(2).paths(&["/a"])]);
    assert_eq!(hit(&rt, &get("a", "/a")), Some(2));
    let rt = runtime(vec![route(7).paths(&["~/a"]), route(3).paths(&["~/a"])]);
    assert_eq!(hit(&rt, &get("a", "/a")), Some(7));
}

#[test]
fn each_path_of_a_route_competes_on_its_own() {
    let rt = runtime(vec![
        route(1).paths(&["/a", "/a/b/c"]),
        route(2).paths(&["/a/b"]),
    ]);
    assert_eq!(hit(&rt, &get("x", "/a/b/c/d")), Some(1), "via /a/b/c");
    assert_eq!(
        hit(&rt, &get("x", "/a/b/x")),
        Some(2),
        "/a/b is longer than /a"
    );
    assert_eq!(hit(&rt, &get("x", "/a/x")), Some(1), "via /a");
    // A regex group and a prefix group in one route.
    let rt = runtime(vec![
        route(1).paths(&["~/r/", "/p"]),
        route(2).paths(&["/r/long"]),
        route(3).paths(&["/pp"]),
    ]);
    assert_eq!(hit(&rt, &get("x", "/r/long")), Some(1), "regex group");
    assert_eq!(
        hit(&rt, &get("x", "/ppx")),
        Some(3),
        "prefix group, length 2 < 3"
    );
    assert_eq!(hit(&rt, &get("x", "/px")), Some(1));
}

#[test]
fn the_matched_path_follows_the_winning_path() {
    let rt = runtime(vec![route(1).paths(&["/a", "/a/b/c", r"~/z/\d+"])]);
    let req = get("x", "/a/b/c/d");
    let parts = req.parts();
    assert_eq!(find(&rt, &parts).unwrap().matched_path(), Some("/a/b/c"));
    let req = get("x", "/a/b");
    assert_eq!(find(&rt, &req.parts()).unwrap().matched_path(), Some("/a"));
    let req = get("x", "/z/12/x");
    assert_eq!(
        find(&rt, &req.parts()).unwrap().matched_path(),
        Some("/z/12")
    );
}

#[test]
fn hosts_buckets_compete_by_priority() {
    // The same request reaches an exact, a suffix, a prefix and the hostless bucket.
    let rt = runtime(vec![
        route(1).hosts(&["a.b.test"]).paths(&["/"]),
        route(2)
            .hosts(&["*.b.test"])
            .paths(&["/x"])
            .methods(&["GET"]),
        route(3).hosts(&["a.b.*"]).paths(&["/x/y"]),
        route(4)
            .paths(&["/x"])
            .methods(&["GET"])
            .header("x-a", &["1"]),
    ]);
    let req = || get("a.b.test", "/x/y");
    assert_eq!(
        hit(&rt, &req()),
        Some(2),
        "weight 3, before the wildcard tie"
    );
    // Route 4 ties on weight, neither has all-plain hosts: its header wins.
    assert_eq!(hit(&rt, &req().header("x-a", "1")), Some(4));
    // Then route 1 (plain host, weight 2) before route 3 (wildcard, weight 2, longer path).
    assert_eq!(hit(&rt, &req().method("POST")), Some(1));
    assert_eq!(hit(&rt, &get("a.b.test", "/q").method("POST")), Some(1));
}

// === protocols ===

#[test]
fn https_routes_redirect_plain_requests() {
    for status in [426, 301, 302, 307, 308] {
        let rt = runtime(vec![
            {
                let mut r = route(1).paths(&["/x"]).protocols(&["https"]);
                r.https_redirect_status_code = status;
                r
            },
            route(2).paths(&["/"]).protocols(&["http"]),
        ]);
        let req = get("a", "/x");
        let m = find(&rt, &req.parts()).unwrap();
        // The best route is chosen first and its protocols decide: no fallback to route 2.
        assert_eq!(m.route_id(), Uuid::from_u128(1));
        assert_eq!(
            m.verdict(Protocol::Http, false),
            Verdict::RequireHttps { status }
        );
        assert_eq!(m.verdict(Protocol::Https, false), Verdict::Proxy);
    }
}

#[test]
fn routes_taking_both_schemes_proxy_both() {
    let rt = runtime(vec![route(1).paths(&["/"])]);
    let req = get("a", "/");
    let m = find(&rt, &req.parts()).unwrap();
    assert_eq!(m.verdict(Protocol::Http, false), Verdict::Proxy);
    assert_eq!(m.verdict(Protocol::Https, true), Verdict::Proxy);
    // Kong does not refuse HTTPS on an http-only route either.
    let rt = runtime(vec![route(1).paths(&["/"]).protocols(&["http"])]);
    let req = get("a", "/").tls(None);
    let m = find(&rt, &req.parts()).unwrap();
    assert_eq!(m.verdict(Protocol::Https, false), Verdict::Proxy);
}

#[test]
fn grpc_routes_check_the_request() {
    let rt = runtime(vec![
        route(1)
            .paths(&["/"])
            .protocols(&["grpc", "grpcs"])
            .strip(false),
    ]);
    let req = get("a", "/pkg.Svc/Call");
    let m = find(&rt, &req.parts()).unwrap();
    assert_eq!(m.verdict(Protocol::Http, true), Verdict::RejectNonGrpc);
    assert_eq!(m.verdict(Protocol::Https, true), Verdict::RejectNonGrpc);
    assert_eq!(m.verdict(Protocol::Grpc, false), Verdict::RequireHttp2);
    assert_eq!(m.verdict(Protocol::Grpc, true), Verdict::Proxy);
    assert_eq!(m.verdict(Protocol::Grpcs, true), Verdict::Proxy);

    let rt = runtime(vec![
        route(1).paths(&["/"]).protocols(&["grpcs"]).strip(false),
    ]);
    let m = find(&rt, &req.parts()).unwrap();
    assert_eq!(m.verdict(Protocol::Grpc, true), Verdict::RequireGrpcs);
    assert_eq!(m.verdict(Protocol::Grpcs, true), Verdict::Proxy);
}

// === paths: normalization, strip_path, path_handling ===

#[test]
fn request_paths_are_normalized_before_matching() {
    let rt = runtime(vec![
        route(1).paths(&["/a/b"]),
        route(2).paths(&["/~user"]),
        route(3).paths(&[r"~/r/\d+$"]),
    ]);
    for (path, route, normal) in [
        ("/a/./b", 1, "/a/b"),
        ("/a//b/c", 1, "/a/b/c"),
        ("/x/../a/b", 1, "/a/b"),
        ("/a/%62", 1, "/a/b"),
        ("/%7euser", 2, "/~user"),
        ("/%7Euser/x", 2, "/~user/x"),
        ("/r/./12", 3, "/r/12"),
    ] {
        let req = get("x", path);
        let parts = req.parts();
        let m = find(&rt, &parts).unwrap_or_else(|| panic!("{path}"));
        assert_eq!(m.route_id().as_u128(), route, "{path}");
        assert_eq!(m.path(), normal, "{path}");
    }
    // Reserved characters stay encoded: `%2F` is not a slash.
    assert_eq!(hit(&rt, &get("x", "/a%2Fb")), None);
}

#[test]
fn the_fast_normal_check_agrees_with_normalize_path() {
    // Deterministic pseudo-random strings over the characters that matter.
    const ALPHABET: &[u8] = b"/.a%2eEF";
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        seed >> 33
    };
    for _ in 0..20_000 {
        let len = next() % 10;
        let s: String = (0..len)
            .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char)
            .collect();
        assert_eq!(path::normalize(&s), normalize_path(&s), "{s:?}");
    }
}

/// A row of Kong's path handling table: service path, route path (`None`: the route matches on
/// host only), strip_path values, path_handling values, request path, expected upstream path.
type PathRow = (
    &'static str,
    Option<&'static str>,
    &'static [bool],
    &'static [&'static str],
    &'static str,
    &'static str,
);

/// Kong's `spec/fixtures/router_path_handling_tests.lua`, row for row.
#[rustfmt::skip]
const PATH_HANDLING: &[PathRow] = &[
    ("/",         Some("/"),       &[false, true], &["v0", "v1"], "/",                "/"),
    ("/",         Some("/"),       &[false, true], &["v0", "v1"], "/route",           "/route"),
    ("/",         Some("/"),       &[false, true], &["v0", "v1"], "/route/",          "/route/"),
    ("/",         Some("/"),       &[false, true], &["v0", "v1"], "/routereq",        "/routereq"),
    ("/",         Some("/"),       &[false, true], &["v0", "v1"], "/route/req",       "/route/req"),
    ("/",         Some("/route"),  &[false],       &["v0", "v1"], "/route",           "/route"),
    ("/",         Some("/route"),  &[false],       &["v0", "v1"], "/route/",          "/route/"),
    ("/",         Some("/route"),  &[false],       &["v0", "v1"], "/routereq",        "/routereq"),
    ("/",         Some("/route"),  &[true],        &["v0", "v1"], "/route",           "/"),
    ("/",         Some("/route"),  &[true],        &["v0", "v1"], "/route/",          "/"),
    ("/",         Some("/route"),  &[true],        &["v0", "v1"], "/routereq",        "/req"),
    ("/",         Some("/route/"), &[false],       &["v0", "v1"], "/route/",          "/route/"),
    ("/",         Some("/route/"), &[false],       &["v0", "v1"], "/route/req",       "/route/req"),
    ("/",         Some("/route/"), &[true],        &["v0", "v1"], "/route/",          "/"),
    ("/",         Some("/route/"), &[true],        &["v0", "v1"], "/route/req",       "/req"),
    ("/srv",      Some("/rou"),    &[false],       &["v0"],       "/roureq",          "/srv/roureq"),
    ("/srv",      Some("/rou"),    &[false],       &["v1"],       "/roureq",          "/srvroureq"),
    ("/srv",      Some("/rou"),    &[true],        &["v0"],       "/roureq",          "/srv/req"),
    ("/srv",      Some("/rou"),    &[true],        &["v1"],       "/roureq",          "/srvreq"),
    ("/srv/",     Some("/rou"),    &[false],       &["v0", "v1"], "/rou",             "/srv/rou"),
    ("/srv/",     Some("/rou"),    &[true],        &["v0"],       "/rou",             "/srv"),
    ("/srv/",     Some("/rou"),    &[true],        &["v1"],       "/rou",             "/srv/"),
    ("/service",  Some("/"),       &[false, true], &["v0", "v1"], "/",                "/service"),
    ("/service",  Some("/"),       &[false, true], &["v0"],       "/route",           "/service/route"),
    ("/service",  Some("/"),       &[false, true], &["v1"],       "/route",           "/serviceroute"),
    ("/service",  Some("/"),       &[false, true], &["v0"],       "/route/",          "/service/route/"),
    ("/service",  Some("/"),       &[false, true], &["v1"],       "/route/",          "/serviceroute/"),
    ("/service",  Some("/"),       &[false, true], &["v0"],       "/routereq",        "/service/routereq"),
    ("/service",  Some("/"),       &[false, true], &["v1"],       "/routereq",        "/serviceroutereq"),
    ("/service",  Some("/"),       &[false, true], &["v0"],       "/route/req",       "/service/route/req"),
    ("/service",  Some("/"),       &[false, true], &["v1"],       "/route/req",       "/serviceroute/req"),
    ("/service",  Some("/route"),  &[false],       &["v0"],       "/route",           "/service/route"),
    ("/service",  Some("/route"),  &[false],       &["v1"],       "/route",           "/serviceroute"),
    ("/service",  Some("/route"),  &[false],       &["v0"],       "/route/",          "/service/route/"),
    ("/service",  Some("/route"),  &[false],       &["v1"],       "/route/",          "/serviceroute/"),
    ("/service",  Some("/route"),  &[false],       &["v0"],       "/routereq",        "/service/routereq"),
    ("/service",  Some("/route"),  &[false],       &["v1"],       "/routereq",        "/serviceroutereq"),
    ("/service",  Some("/route"),  &[true],        &["v0", "v1"], "/route",           "/service"),
    ("/service",  Some("/route"),  &[true],        &["v0", "v1"], "/route/",          "/service/"),
    ("/service",  Some("/route"),  &[true],        &["v0"],       "/routereq",        "/service/req"),
    ("/service",  Some("/route"),  &[true],        &["v1"],       "/routereq",        "/servicereq"),
    ("/service",  Some("/route/"), &[false],       &["v0"],       "/route/",          "/service/route/"),
    ("/service",  Some("/route/"), &[false],       &["v1"],       "/route/",          "/serviceroute/"),
    ("/service",  Some("/route/"), &[false],       &["v0"],       "/route/req",       "/service/route/req"),
    ("/service",  Some("/route/"), &[false],       &["v1"],       "/route/req",       "/serviceroute/req"),
    ("/service",  Some("/route/"), &[true],        &["v0"],       "/route/",          "/service/"),
    ("/service",  Some("/route/"), &[true],        &["v1"],       "/route/",          "/service"),
    ("/service",  Some("/route/"), &[true],        &["v0"],       "/route/req",       "/service/req"),
    ("/service",  Some("/route/"), &[true],        &["v1"],       "/route/req",       "/servicereq"),
    ("/service/", Some("/"),       &[false, true], &["v0"],       "/route/",          "/service/route/"),
    ("/service/", Some("/"),       &[false, true], &["v1"],       "/route/",          "/service/route/"),
    ("/service/", Some("/"),       &[false, true], &["v0", "v1"], "/",                "/service/"),
    ("/service/", Some("/"),       &[false, true], &["v0", "v1"], "/route",           "/service/route"),
    ("/service/", Some("/"),       &[false, true], &["v0", "v1"], "/routereq",        "/service/routereq"),
    ("/service/", Some("/"),       &[false, true], &["v0", "v1"], "/route/req",       "/service/route/req"),
    ("/service/", Some("/route"),  &[false],       &["v0", "v1"], "/route",           "/service/route"),
    ("/service/", Some("/route"),  &[false],       &["v0", "v1"], "/route/",          "/service/route/"),
    ("/service/", Some("/route"),  &[false],       &["v0", "v1"], "/routereq",        "/service/routereq"),
    ("/service/", Some("/route"),  &[true],        &["v0"],       "/route",           "/service"),
    ("/service/", Some("/route"),  &[true],        &["v1"],       "/route",           "/service/"),
    ("/service/", Some("/route"),  &[true],        &["v0", "v1"], "/route/",          "/service/"),
    ("/service/", Some("/route"),  &[true],        &["v0", "v1"], "/routereq",        "/service/req"),
    ("/service/", Some("/route/"), &[false],       &["v0", "v1"], "/route/",          "/service/route/"),
    ("/service/", Some("/route/"), &[false],       &["v0", "v1"], "/route/req",       "/service/route/req"),
    ("/service/", Some("/route/"), &[true],        &["v0", "v1"], "/route/",          "/service/"),
    ("/service/", Some("/route/"), &[true],        &["v0", "v1"], "/route/req",       "/service/req"),
    ("/",         None,            &[false, true], &["v0", "v1"], "/",                "/"),
    ("/",         None,            &[false, true], &["v0", "v1"], "/route",           "/route"),
    ("/",         None,            &[false, true], &["v0", "v1"], "/route/",          "/route/"),
    ("/service",  None,            &[false, true], &["v0", "v1"], "/",                "/service"),
    ("/service",  None,            &[false, true], &["v0"],       "/route",           "/service/route"),
    ("/service",  None,            &[false, true], &["v1"],       "/route",           "/serviceroute"),
    ("/service",  None,            &[false, true], &["v0"],       "/route/",          "/service/route/"),
    ("/service",  None,            &[false, true], &["v1"],       "/route/",          "/serviceroute/"),
    ("/service/", None,            &[false, true], &["v0", "v1"], "/",                "/service/"),
    ("/service/", None,            &[false, true], &["v0", "v1"], "/route",           "/service/route"),
    ("/service/", None,            &[false, true], &["v0", "v1"], "/route/",          "/service/route/"),
    ("/service",  Some("/route"),  &[true],        &["v0"],       "/route./req",      "/service/req"),
    ("/service",  Some("/route"),  &[true],        &["v1"],       "/route./req",      "/servicereq"),
    ("/service/", Some("/route"),  &[true],        &["v0", "v1"], "/route./req",      "/service/req"),
    ("/service",  Some("/route"),  &[true],        &["v0"],       "/route%2E/req",    "/service/req"),
    ("/service",  Some("/route"),  &[true],        &["v1"],       "/route%2E/req",    "/servicereq"),
    ("/service/", Some("/route"),  &[true],        &["v0", "v1"], "/route%2E/req",    "/service/req"),
    ("/service",  Some("/route"),  &[true],        &["v0"],       "/route%2e/req",    "/service/req"),
    ("/service",  Some("/route"),  &[true],        &["v1"],       "/route%2e/req",    "/servicereq"),
    ("/service/", Some("/route"),  &[true],        &["v0", "v1"], "/route%2e/req",    "/service/req"),
    ("/service",  Some("/route"),  &[true],        &["v0"],       "/route../req",     "/service/req"),
    ("/service",  Some("/route"),  &[true],        &["v1"],       "/route../req",     "/servicereq"),
    ("/service/", Some("/route"),  &[true],        &["v0", "v1"], "/route../req",     "/service/req"),
    ("/service",  Some("/route"),  &[true],        &["v0"],       "/route%2E%2E/req", "/service/req"),
    ("/service",  Some("/route"),  &[true],        &["v1"],       "/route%2E%2E/req", "/servicereq"),
    ("/service/", Some("/route"),  &[true],        &["v0", "v1"], "/route%2E%2E/req", "/service/req"),
    ("/service",  Some("/route"),  &[true],        &["v0"],       "/route%2e%2E/req", "/service/req"),
    ("/service",  Some("/route"),  &[true],        &["v1"],       "/route%2e%2E/req", "/servicereq"),
    ("/service/", Some("/route"),  &[true],        &["v0", "v1"], "/route%2e%2E/req", "/service/req"),
    ("/service",  Some("/route"),  &[false],       &["v0"],       "/route./req",      "/service/route./req"),
    ("/service",  Some("/route"),  &[false],       &["v1"],       "/route./req",      "/serviceroute./req"),
    ("/service/", Some("/route"),  &[false],       &["v0", "v1"], "/route./req",      "/service/route./req"),
    ("/service",  Some("/route"),  &[false],       &["v0"],       "/route%2E/req",    "/service/route./req"),
    ("/service",  Some("/route"),  &[false],       &["v1"],       "/route%2E/req",    "/serviceroute./req"),
    ("/service/", Some("/route"),  &[false],       &["v0", "v1"], "/route%2E/req",    "/service/route./req"),
    ("/service",  Some("/route"),  &[false],       &["v0"],       "/route%2e/req",    "/service/route./req"),
    ("/service",  Some("/route"),  &[false],       &["v1"],       "/route%2e/req",    "/serviceroute./req"),
    ("/service/", Some("/route"),  &[false],       &["v0", "v1"], "/route%2e/req",    "/service/route./req"),
    ("/service",  Some("/route"),  &[false],       &["v0"],       "/route../req",     "/service/route../req"),
    ("/service",  Some("/route"),  &[false],       &["v1"],       "/route../req",     "/serviceroute../req"),
    ("/service/", Some("/route"),  &[false],       &["v0", "v1"], "/route../req",     "/service/route../req"),
    ("/service",  Some("/route"),  &[false],       &["v0"],       "/route%2E%2E/req", "/service/route../req"),
    ("/service",  Some("/route"),  &[false],       &["v1"],       "/route%2E%2E/req", "/serviceroute../req"),
    ("/service/", Some("/route"),  &[false],       &["v0", "v1"], "/route%2E%2E/req", "/service/route../req"),
    ("/service",  Some("/route"),  &[false],       &["v0"],       "/route%2e%2E/req", "/service/route../req"),
    ("/service",  Some("/route"),  &[false],       &["v1"],       "/route%2e%2E/req", "/serviceroute../req"),
    ("/service/", Some("/route"),  &[false],       &["v0", "v1"], "/route%2e%2E/req", "/service/route../req"),
];

/// Runs Kong's path handling table through the router and [`Match::upstream_path`]: as
/// prefix routes, then (rows with a route path) as the regex `~/[0]?<path>`, as Kong's spec
/// does.
#[test]
fn path_handling_follows_kongs_table() {
    assert_eq!(PATH_HANDLING.len(), 113);
    let mut checked = 0;
    for (row, &(service_path, route_path, strips, handlings, request, expected)) in
        PATH_HANDLING.iter().enumerate()
    {
        let mut variants = vec![route_path.map(str::to_owned)];
        if let Some(path) = route_path {
            variants.push(Some(format!("~/[0]?{}", &path[1..])));
        }
        for variant in &variants {
            for &strip in strips {
                for &handling in handlings {
                    let mut r = route(1)
                        .hosts(&["localbin.test"])
                        .strip(strip)
                        .handling(handling);
                    if let Some(path) = variant {
                        r = r.paths(&[path]);
                    }
                    let rt = compile(model::Config {
                        services: vec![service(SERVICE, Some(service_path))],
                        routes: vec![r],
                        ..Default::default()
                    });
                    let req = get("localbin.test", request);
                    let parts = req.parts();
                    let case = format!(
                        "row {}: service {service_path}, route {variant:?}, strip {strip}, \
                         {handling}, request {request}",
                        row + 1
                    );
                    let m = find(&rt, &parts).unwrap_or_else(|| panic!("no match: {case}"));
                    assert_eq!(m.upstream_path(Some(service_path)), expected, "{case}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 300, "{checked}");
}

#[test]
fn path_handling_reference_examples() {
    let cases = [
        (r#"/tv0"#, true, "v0", "/tv0/req", "/s/req"),
        ("/tv0", true, "v0", "/tv0", "/s"),
        ("/fv0", false, "v0", "/fv0/req", "/s/fv0/req"),
        ("/fv1", false, "v1", "/fv1/req", "/sfv1/req"),
        // strip_path with a regex: the whole match goes.
        (r"~/users/\d+", true, "v0", "/users/42/posts", "/s/posts"),
        (r"~/users/\d+", true, "v0", "/users/42", "/s"),
        (
            r"~/users/\d+",
            false,
            "v0",
            "/users/42/posts",
            "/s/users/42/posts",
        ),
    ];
    for (path, strip, handling, request, expected) in cases {
        let r = route(1).paths(&[path]).strip(strip).handling(handling);
        let rt = compile(model::Config {
            services: vec![service(SERVICE, Some("/s"))],
            routes: vec![r],
            ..Default::default()
        });
        let req = get("a", request);
        let parts = req.parts();
        let m = find(&rt, &parts).unwrap();
        assert_eq!(m.upstream_path(Some("/s")), expected, "{path} {request}");
    }
}

#[test]
fn upstream_path_without_a_service_path_is_rooted() {
    let rt = runtime(vec![route(1).paths(&["/api"])]);
    let req = get("a", "/api/x/");
    let m = find(&rt, &req.parts()).unwrap();
    assert_eq!(m.upstream_path(None), "/x/");
    assert_eq!(
        upstream_path(Some(""), None, "/a", false, PathHandling::V0),
        "/a"
    );
    assert_eq!(upstream_path(None, None, "", true, PathHandling::V1), "/");
}

#[test]
fn forwarded_prefix_is_the_stripped_part() {
    let case = |r: model::Route, path: &str| {
        let rt = runtime(vec![r]);
        let req = get("a.test", path);
        let parts = req.parts();
        find(&rt, &parts)
            .unwrap()
            .forwarded_prefix()
            .map(str::to_owned)
    };
    assert_eq!(
        case(route(1).paths(&["/tv0"]), "/tv0/req"),
        Some("/tv0".into())
    );
    assert_eq!(
        case(route(1).paths(&["/tv0"]).strip(false), "/tv0/req"),
        None
    );
    assert_eq!(case(route(1).paths(&["/"]), "/req"), None);
    assert_eq!(
        case(route(1).paths(&[r"~/u/\d+"]), "/u/7/x"),
        Some("/u/7".into())
    );
    assert_eq!(case(route(1).hosts(&["a.test"]), "/x"), None);
}

// === captures ===

#[test]
fn regex_captures_are_exposed_on_demand() {
    let rt = runtime(vec![
        route(1).paths(&[r"~/users/(?<user>[^/]+)/posts/(\d+)(?<opt>/x)?"]),
        route(2).paths(&[r"~/plain/\d+"]),
        route(3).paths(&["/prefix"]),
    ]);
    let req = get("a", "/users/ann/posts/12/comments");
    let parts = req.parts();
    let m = find(&rt, &parts).unwrap();
    assert!(m.has_captures());
    let captures = m.captures().unwrap();
    assert_eq!(captures.get(0), Some("/users/ann/posts/12"));
    assert_eq!(captures.name("user"), Some("ann"));
    assert_eq!(captures.get(2), Some("12"));
    assert_eq!(captures.name("opt"), None);
    assert_eq!(captures.len(), 4);
    assert!(!captures.is_empty());
    assert_eq!(captures.named().collect::<Vec<_>>(), [("user", "ann")]);
    assert!(format!("{captures:?}").contains("ann"));

    for path in ["/plain/1", "/prefix/x"] {
        let req = get("a", path);
        let m = find(&rt, &req.parts()).unwrap();
        assert!(!m.has_captures(), "{path}");
        assert!(m.captures().is_none(), "{path}");
    }
}

// === robustness ===

#[test]
fn odd_requests_never_panic() {
    let rt = runtime(vec![
        route(1)
            .paths(&["/", r"~/é/\d+"])
            .hosts(&["a.test", "*.b.test", "c.*"]),
        route(2).paths(&["~/x"]).header("x-a", &["1"]),
        route(3).snis(&["a.test"]).protocols(&["https"]),
    ]);
    let long_host = "A".repeat(300) + ".b.test";
    for (host, path) in [
        ("", ""),
        ("a.test", "*"),
        ("a.test", "http://a.test/x"),
        ("a.test", "/é/../é/12"),
        ("a.test", "%"),
        ("a.test", "/%zz/%4"),
        ("a.test", "/../../.."),
        (".", "/"),
        ("..", "/"),
        ("c.", "/"),
        (".b.test", "/"),
        ("é.B.TEST", "/é"),
        (long_host.as_str(), "/"),
        ("a.test:80", "/"),
    ] {
        for req in [
            get(host, path),
            get(host, path).tls(None).header("x-a", "1"),
            get(host, path).tls(Some("")).method(""),
        ] {
            let parts = req.parts();
            if let Some(m) = find(&rt, &parts) {
                let _ = m.upstream_path(Some("/s/"));
                let _ = m.upstream_path(None);
                let _ = m.forwarded_prefix();
                let _ = m.captures();
                let _ = format!("{m:?}");
            }
        }
    }
    assert_eq!(hit(&rt, &get(&long_host, "/")), Some(1));
}

// === the index against the linear reference ===

/// Random configurations and requests over a small vocabulary: the index must pick what a
/// scan of every candidate in priority order picks.
#[test]
fn the_index_agrees_with_a_linear_scan() {
    let mut seed: u64 = 42;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as usize) % n
    };
    let hosts = [
        "a.test",
        "b.test",
        "*.test",
        "*.b.test",
        "a.*",
        "a.test:8080",
        "x.b.test",
    ];
    let paths = [
        "/", "/a", "/ab", "/a/b", "/b", r"~/a/\d+", "~/b.*", "~/(?i)A", "/a/b/c", "~/", r"~/a/b",
    ];
    let request_hosts = [
        "a.test",
        "b.test",
        "x.b.test",
        "a.com",
        "A.TEST",
        "",
        "y.x.b.test",
    ];
    let request_paths = [
        "/", "/a", "/ab", "/a/1", "/a/b/c", "/b/x", "/A/z", "/a/./b", "/x", "/abc", "/a/b",
    ];
    let pick = |next: &mut dyn FnMut(usize) -> usize, from: &[&'static str]| -> Vec<&'static str> {
        let count = next(3);
        let mut out: Vec<&'static str> = (0..count).map(|_| from[next(from.len())]).collect();
        out.dedup();
        out
    };
    let mut matched = 0;
    for _ in 0..25 {
        let mut routes = Vec::new();
        for id in 1..=40u128 {
            let mut r = route(id);
            let h = pick(&mut next, &hosts);
            let p = pick(&mut next, &paths);
            if !h.is_empty() {
                r = r.hosts(&h);
            }
            if !p.is_empty() {
                r = r.paths(&p);
            }
            if next(4) == 0 {
                r = r.methods(&["GET"]);
            }
            if next(5) == 0 {
                r = r.header("x-a", &["1", "~*^z"]);
            }
            if next(6) == 0 {
                r = r.snis(&["a.test"]);
            }
            r.regex_priority = next(3) as i64 - 1;
            if r.hosts.is_none() && r.paths.is_none() && r.methods.is_none() && r.headers.is_none()
            {
                r = r.paths(&["/"]);
            }
            routes.push(r);
        }
        let rt = runtime(routes);
        for _ in 0..60 {
            let mut req = get(
                request_hosts[next(request_hosts.len())],
                request_paths[next(request_paths.len())],
            );
            if next(2) == 0 {
                req = req.method("POST");
            }
            if next(3) == 0 {
                req = req.header("x-a", ["1", "zz", "2"][next(3)]);
            }
            if next(3) == 0 {
                req = req.tls(Some(["a.test", "b.test"][next(2)]));
            }
            if next(3) == 0 {
                req = req.port(8080);
            }
            // `find` asserts the agreement.
            matched += usize::from(hit(&rt, &req).is_some());
        }
    }
    assert!(
        matched > 500,
        "the vocabulary should mostly match: {matched}"
    );
}

#[test]
fn buckets_share_keys_between_routes() {
    let rt = runtime(vec![
        route(1).paths(&["/a", "/b"]),
        route(2).paths(&["/a"]),
        route(3),
    ]);
    // Route 3 has no fields at all (the control plane refuses that; it matches everything).
    assert_eq!(rt.router().hostless.len(), 3, "/a, /b and the empty key");
}

#[test]
fn keys_sharing_their_first_bytes_are_searched_exactly() {
    // Every key starts with the same 16 bytes, so the search falls back to whole keys.
    let mut routes: Vec<model::Route> = (1..=60u128)
        .map(|i| route(i).paths(&[&format!("/api/v1/resources/{i}")]))
        .collect();
    routes.push(route(100).paths(&["/api/v1/resource"]));
    routes.push(route(101).paths(&["/api/v1/resources/1/"]));
    routes.push(route(102).paths(&[r"~/api/v1/resources/\d+/sub$"]));
    let rt = runtime(routes);
    assert_eq!(hit(&rt, &get("a", "/api/v1/resources/42/x")), Some(42));
    assert_eq!(
        hit(&rt, &get("a", "/api/v1/resources/420")),
        Some(42),
        "plain prefix"
    );
    assert_eq!(hit(&rt, &get("a", "/api/v1/resources/1/x")), Some(101));
    assert_eq!(hit(&rt, &get("a", "/api/v1/resources/7/sub")), Some(102));
    assert_eq!(hit(&rt, &get("a", "/api/v1/resources/")), Some(100));
    assert_eq!(hit(&rt, &get("a", "/api/v1/resource")), Some(100));
    assert_eq!(hit(&rt, &get("a", "/api/v1/resourc")), None);
    assert_eq!(
        hit(&rt, &get("a", "/api/v1/resources/99")),
        Some(9),
        "plain prefix of 99"
    );
    assert_eq!(hit(&rt, &get("a", "/api/v1/resources/x")), Some(100));
}
mod proptests;
