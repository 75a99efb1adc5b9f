//! The router: finds the route of a request, the way Kong's default `traditional_compatible`
//! router does (`../shared/reference/kong-behaviour.md` §3.1–3.2). Pure: no I/O, no locks.
//!
//! [`Router`] is compiled once per [`Runtime`] (see [`Runtime::router`]), off the request path.
//! [`Router::find`] takes the parts of a request that matter ([`RequestParts`]) and returns the
//! winning route as a [`Match`], which also knows how to build the upstream path
//! ([`Match::upstream_path`]), the `X-Forwarded-Prefix` value and the regex captures.
//!
//! # Matching
//! A route matches when **every** field it sets matches; within a field **any** value does.
//! - `methods`: exact.
//! - `hosts`: against the request host (lowercase, without port): exact, `*.suffix` (any number
//!   of labels before the suffix) or `prefix.*`; an entry with `:port` also needs
//!   [`RequestParts::port`] to be that port.
//! - `paths`: on the **normalized** request path
//!   ([`gatehouse_shared::checks::normalize_path`]); a plain path is a
//!   plain string prefix (`/foo` matches `/foo`, `/foo/bar` and `/foobar`, as Kong's `^=`); a
//!   `~` path is a regex anchored at the start.
//! - `headers`: every name, any of its values (on any line of that header); values compare
//!   case-insensitively, `~*` values are case-insensitive unanchored regexes.
//! - `snis`: only checked when the request came over TLS ([`Protocol::is_tls`]); a plain request
//!   ignores them, as Kong does (`net.protocol != "https" || tls.sni == ...`).
//! - `protocols` is **not** a matching field in Kong's HTTP router: the best route is chosen
//!   first, then its protocols decide what happens ([`Match::verdict`]: proxy, redirect to HTTPS
//!   with `https_redirect_status_code`, 426 for gRPC over HTTP/1, 415 for non-gRPC requests on
//!   a gRPC route, ...). A lower-priority route is never picked because the best one wants
//!   another protocol. Routes whose protocols are all stream protocols (`tcp`, `tls`, `udp`,
//!   `tls_passthrough`) are left out: they belong to the stream router.
//! - Routes of a disabled service are left out; a route without a service matches (the proxy
//!   answers 503, [`Match::service_index`] is `None`).
//!
//! # Priority
//! Kong splits a route with several paths into one entry per regex group / prefix length, and
//! each entry competes with its own priority, most significant first:
//! 1. match weight: how many of `methods`, `hosts`, `headers`, `snis`, `paths` are set;
//! 2. routes whose `hosts` are all plain before routes with a wildcard host (as Kong, a route
//!    without `hosts` counts as "not plain");
//! 3. more `headers` names first;
//! 4. a regex entry before a prefix entry;
//! 5. regex entries by `regex_priority` (higher first), prefix entries by path length (longer
//!    first);
//! 6. ties: higher route id first (Kong's ATC router keeps its matchers in a `BTreeMap` keyed by
//!    `(priority, uuid)` and scans it in reverse).
//!
//! Kong packs `regex_priority` into 32 bits of a 64-bit priority, so a negative or huge value
//! misorders there; here it is compared as the full `i64`.
//!
//! # Cost
//! Every entry gets a global rank (its position in priority order). Routes are indexed by host
//! (a hash map of exact names, maps of `*.suffix` and `prefix.*` patterns looked up by the
//! request host's own suffixes and prefixes, and one bucket for routes without hosts). Inside a
//! bucket, entries sit under a key that every matching path must start with (the prefix path,
//! the literal start of a regex, or `""`), in a sorted array where each key links to the
//! longest key that is a prefix of it: one binary search plus a walk up that chain yields only
//! the entries whose key is a prefix of the request path, each list in rank order. Evaluation
//! stops at the first entry of a list that matches and skips every entry ranked after the best
//! match so far. Matching costs a few hash lookups, a binary search and a handful of candidate
//! checks however many routes there are (`benches/router.rs`).
//!
//! Nothing is allocated per request unless the path needs normalizing (it contains `%`, `//` or
//! dot segments), the host is not lowercase and longer than 256 bytes, or the caller asks for
//! regex captures ([`Match::captures`]). The only shared mutable state touched is inside the
//! `regex` crate, for regex routes: each regex hands out search caches from a pool (an atomic
//! fast path for one thread, `try_lock`ed stacks for the others, which never wait).

use std::borrow::Cow;
use std::fmt;

use http::{HeaderMap, HeaderName};
use regex::Regex;
use uuid::Uuid;

use gatehouse_shared::model;

use crate::runtime::{CompiledRoute, HostName, HostPattern, Runtime};

mod index;
pub(crate) mod path;
#[cfg(test)]
mod tests;

pub use path::{PathHandling, upstream_path};

use index::{Bucket, BucketBuilder, FxMap, Lengths, NO_CANDIDATE};

/// The compiled route table of one runtime. Immutable; [`Router::find`] takes `&self` only.
#[derive(Default)]
pub struct Router {
    /// The routes that take part, with what matching needs.
    routes: Vec<RouteEntry>,
    /// Route entries (a route, or one path group of it), by rank: index 0 wins over index 1.
    candidates: Vec<Candidate>,
    /// Routes by exact host name.
    exact: FxMap<Bucket>,
    /// Routes by `*.suffix` host, keyed by the suffix with its dot (`.example.com`).
    suffixes: FxMap<Bucket>,
    suffix_lengths: Lengths,
    /// Routes by `prefix.*` host, keyed by the prefix with its dot (`example.`).
    prefixes: FxMap<Bucket>,
    prefix_lengths: Lengths,
    /// Routes without hosts.
    hostless: Bucket,
}

/// What the router looks at in a request. Built by the proxy for each request; borrows only.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The method, as received (`GET`, ...).
    pub method: &'a str,
    /// The host: the `Host` header (or HTTP/2 `:authority`) without its port, lowercase;
    /// `""` without one. See [`split_host_port`].
    pub host: &'a str,
    /// The port a `host:port` route entry must equal: the port of the `Host` header when it has
    /// one, otherwise the port the connection was accepted on (Kong's `net.dst.port`).
    pub port: u16,
    /// The request path as received, without the query string (not yet normalized).
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The TLS server name of the connection, if any.
    pub sni: Option<&'a str>,
    /// How the request arrived.
    pub protocol: Protocol,
}

/// How a request arrived: over TLS or not, and whether it is a gRPC request (a `content-type`
/// starting with `application/grpc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
    /// gRPC without TLS (h2c).
    Grpc,
    /// gRPC over TLS.
    Grpcs,
}

/// The route a request matched, with what the proxy needs from the match.
pub struct Match<'a> {
    route: &'a RouteEntry,
    /// The normalized request path.
    path: Cow<'a, str>,
    /// How much of `path` the route's path matched (a prefix path, or the extent of the regex
    /// match); `None` for a route without paths.
    matched: Option<usize>,
    /// The regex that matched, when it has capture groups.
    regex: Option<&'a Regex>,
}

/// The numbered and named groups of the regex path that matched.
pub struct UriCaptures<'m> {
    captures: regex::Captures<'m>,
    regex: &'m Regex,
}

/// What to do with a request, given the protocols of the route it matched (Kong's checks
/// after routing, `kong/runloop/handler.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Proxy it.
    Proxy,
    /// The route wants HTTPS and the request is plain: answer `status` (the route's
    /// `https_redirect_status_code`): 426 `Please use HTTPS protocol` with `Connection:
    /// Upgrade` and `Upgrade: TLS/1.2, HTTP/1.1`, or 301/302/307/308 with `Location:
    /// https://<host><request uri>`.
    RequireHttps {
        /// 426, 301, 302, 307 or 308.
        status: u16,
    },
    /// A gRPC request over HTTP/1 matched a gRPC route: 426 `Please use HTTP2 protocol` with
    /// `Connection: Upgrade` and `Upgrade: HTTP/2`.
    RequireHttp2,
    /// A request that is not gRPC matched a gRPC route: 415 `Non-gRPC request matched gRPC
    /// route`.
    RejectNonGrpc,
    /// A plain gRPC request matched a `grpcs`-only route: 200 with `content-type:
    /// application/grpc`, `grpc-status: 1`, `grpc-message: gRPC request matched gRPCs route`.
    RequireGrpcs,
}

/// A route, as matching needs it.
struct RouteEntry {
    /// Position in the config (and in [`Runtime::routes`]).
    index: usize,
    id: Uuid,
    service: Option<usize>,
    methods: Box<[Box<str>]>,
    hosts: Box<[HostPattern]>,
    /// Some host entry has a port: being in a host's bucket is not enough.
    check_hosts: bool,
    /// Lowercase, without a trailing dot.
    snis: Box<[Box<str>]>,
    headers: Box<[HeaderRule]>,
    /// The regex paths, in configuration order.
    regexes: Box<[Regex]>,
    protocols: Protocols,
    strip_path: bool,
    preserve_host: bool,
    path_handling: PathHandling,
    https_redirect_status_code: u16,
}

/// One `headers` entry of a route.
struct HeaderRule {
    name: HeaderName,
    /// Plain values, lowercase.
    values: Box<[Box<str>]>,
    /// `~*` values, case-insensitive.
    patterns: Box<[Regex]>,
}

/// The protocols of a route, as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Protocols(u8);

/// A route entry: a route (or one path group of it) at one priority.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Index in [`Router::routes`].
    route: u32,
    kind: PathKind,
    /// For a prefix entry, the length of its paths (the linear reference of the tests).
    #[cfg(test)]
    prefix_len: u32,
}

/// What the path of a candidate must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    /// A prefix path: the index key it sits under is the prefix, so reaching it is the match.
    Prefix,
    /// Regex paths: one of the route's regexes must match.
    Regex,
    /// No paths.
    Any,
}

/// Kong's priority of a route entry; the derived order compares fields top to bottom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Priority {
    weight: u8,
    plain_hosts: bool,
    headers: u8,
    regex: bool,
    /// `regex_priority` for a regex entry, the path length for a prefix entry.
    order: i64,
}

/// The best match found so far while searching.
struct Best<'r> {
    rank: u32,
    matched: Option<usize>,
    regex: Option<&'r Regex>,
}

/// What a candidate check needs from the request.
struct Probe<'q> {
    req: &'q RequestParts<'q>,
    host: &'q str,
    path: &'q str,
}

/// How many bytes of host are lowercased on the stack.
const HOST_BUFFER: usize = 256;
/// Kong caps the header count of a route's priority at 255.
const MAX_HEADER_COUNT: usize = 255;
/// Kong keeps 19 bits of the path length.
const PATH_LENGTH_MASK: usize = 0x7FFFF;

/// Splits a `Host` header (or `:authority`) into the host, lowercase, and its port: `a.b:80`,
/// `[::1]:8080` (the brackets are dropped), `a.b`. A port that is not a number is kept in the
/// host, as Kong does. Returns a borrowed host when it is already lowercase.
pub fn split_host_port(authority: &str) -> (Cow<'_, str>, Option<u16>) {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((addr, "")) => (addr, None),
            Some((addr, port)) => match port.strip_prefix(':').and_then(|p| p.parse().ok()) {
                Some(port) => (addr, Some(port)),
                None => (authority, None),
            },
            None => (authority, None),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => match port.parse() {
                Ok(port) => (host, Some(port)),
                Err(_) => (authority, None),
            },
            None => (authority, None),
        }
    };
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    (host, port)
}

// === impl Router ===

impl Router {
    /// Compiles the router of a runtime. [`Runtime::compile`] already does this once; use
    /// [`Runtime::router`] on the request path.
    pub fn new(runtime: &Runtime) -> Self {
        Self::build(runtime.config(), runtime.routes())
    }

    /// Builds the router from a configuration and its compiled routes (each compiled from
    /// `config.routes[route.index()]`). Never fails: a route the router cannot use is left out.
    pub(crate) fn build(config: &model::Config, compiled: &[CompiledRoute]) -> Self {
        let mut routes = Vec::new();
        // (priority, id, route, kind, keys)
        let mut entries: Vec<(Priority, Uuid, u32, PathKind, Vec<String>)> = Vec::new();
        for route in compiled {
            let Some(model) = config.routes.get(route.index()) else {
                continue;
            };
            let Some(entry) = RouteEntry::new(config, route, model) else {
                continue;
            };
            let Ok(position) = u32::try_from(routes.len()) else {
                break;
            };
            for (priority, kind, keys) in groups(route, model) {
                entries.push((priority, entry.id, position, kind, keys));
            }
            routes.push(entry);
        }
        entries.sort_by(|a, b| (b.0, b.1, a.2).cmp(&(a.0, a.1, b.2)));

        let mut candidates = Vec::with_capacity(entries.len());
        let mut exact: FxMap<BucketBuilder> = FxMap::default();
        let mut suffixes: FxMap<BucketBuilder> = FxMap::default();
        let mut prefixes: FxMap<BucketBuilder> = FxMap::default();
        let mut hostless = BucketBuilder::default();
        for (rank, (_, _, route, kind, keys)) in entries.into_iter().enumerate() {
            let Ok(rank) = u32::try_from(rank) else {
                break;
            };
            candidates.push(Candidate {
                route,
                kind,
                #[cfg(test)]
                prefix_len: match kind {
                    PathKind::Prefix => keys.first().map_or(0, |k| k.len() as u32),
                    PathKind::Regex | PathKind::Any => 0,
                },
            });
            let Some(entry) = routes.get(route as usize) else {
                continue;
            };
            let add = |bucket: &mut BucketBuilder| {
                for key in &keys {
                    bucket.add(key, rank);
                }
            };
            if entry.hosts.is_empty() {
                add(&mut hostless);
            }
            for host in &entry.hosts {
                let (map, key) = match &host.name {
                    HostName::Exact(name) => (&mut exact, name),
                    HostName::AnyPrefix(suffix) => (&mut suffixes, suffix),
                    HostName::AnySuffix(prefix) => (&mut prefixes, prefix),
                };
                add(map.entry(key.as_str().into()).or_default());
            }
        }
        let finish = |map: FxMap<BucketBuilder>| -> FxMap<Bucket> {
            map.into_iter().map(|(k, b)| (k, b.build())).collect()
        };
        let (suffixes, prefixes) = (finish(suffixes), finish(prefixes));
        Self {
            routes,
            candidates,
            exact: finish(exact),
            suffix_lengths: Lengths::of(&suffixes),
            suffixes,
            prefix_lengths: Lengths::of(&prefixes),
            prefixes,
            hostless: hostless.build(),
        }
    }

    /// How many routes take part (routes of disabled services and stream routes do not).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no route takes part.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route a request matches, by Kong's rules and priority; `None`: the proxy answers
    /// 404 `no Route matched with those values`. Never panics, whatever the request holds.
    pub fn find<'a>(&'a self, req: &RequestParts<'a>) -> Option<Match<'a>> {
        if self.routes.is_empty() {
            return None;
        }
        let path = path::normalize(req.path);
        let mut buffer = [0u8; HOST_BUFFER];
        let host = lowercase(req.host, &mut buffer);
        let probe = Probe {
            req,
            host: &host,
            path: &path,
        };
        let mut best = Best {
            rank: NO_CANDIDATE,
            matched: None,
            regex: None,
        };

        if let Some(bucket) = self.exact.get(probe.host) {
            self.search(bucket, &probe, &mut best);
        }
        if !self.suffixes.is_empty() {
            // `*.example.com` is keyed `.example.com`: try every suffix starting at a dot, with
            // at least one character before it.
            let len = probe.host.len();
            for (at, _) in probe.host.match_indices('.') {
                if at == 0 || !self.suffix_lengths.may_have(len - at) {
                    continue;
                }
                if let Some(bucket) = probe.host.get(at..).and_then(|s| self.suffixes.get(s)) {
                    self.search(bucket, &probe, &mut best);
                }
            }
        }
        if !self.prefixes.is_empty() {
            // `example.*` is keyed `example.`: every prefix ending at a dot, with at least one
            // character after it.
            for (at, _) in probe.host.match_indices('.') {
                let end = at + 1;
                if end >= probe.host.len() || !self.prefix_lengths.may_have(end) {
                    continue;
                }
                if let Some(bucket) = probe.host.get(..end).and_then(|p| self.prefixes.get(p)) {
                    self.search(bucket, &probe, &mut best);
                }
            }
        }
        self.search(&self.hostless, &probe, &mut best);

        let candidate = self.candidates.get(best.rank as usize)?;
        let route = self.routes.get(candidate.route as usize)?;
        Some(Match {
            route,
            path,
            matched: best.matched,
            regex: best.regex,
        })
    }

    /// Searches one host bucket, improving `best`.
    fn search<'r>(&'r self, bucket: &'r Bucket, probe: &Probe<'_>, best: &mut Best<'r>) {
        if bucket.best() >= best.rank {
            return;
        }
        for (key_len, list) in bucket.chain(probe.path) {
            for &rank in list {
                if rank >= best.rank {
                    break;
                }
                if let Some((matched, regex)) = self.check(rank, key_len, probe) {
                    *best = Best {
                        rank,
                        matched,
                        regex,
                    };
                    break;
                }
            }
        }
    }

    /// Whether the candidate of `rank`, found under an index key of `key_len` bytes, matches:
    /// the matched path extent and the regex that matched (when it has captures).
    fn check<'r>(
        &'r self,
        rank: u32,
        key_len: usize,
        probe: &Probe<'_>,
    ) -> Option<(Option<usize>, Option<&'r Regex>)> {
        let candidate = self.candidates.get(rank as usize)?;
        let route = self.routes.get(candidate.route as usize)?;
        if !route.matches_except_path(probe) {
            return None;
        }
        match candidate.kind {
            PathKind::Prefix => Some((Some(key_len), None)),
            PathKind::Any => Some((None, None)),
            PathKind::Regex => route.regexes.iter().find_map(|regex| {
                let found = regex.find(probe.path)?;
                let captures = (regex.captures_len() > 1).then_some(regex);
                Some((Some(found.end()), captures))
            }),
        }
    }

    /// The reference the index is tested against: every candidate in rank order, no index;
    /// the route index and matched path length.
    #[cfg(test)]
    fn find_linear(
        &self,
        runtime: &Runtime,
        req: &RequestParts<'_>,
    ) -> Option<(usize, Option<usize>)> {
        let path = path::normalize(req.path);
        let host = req.host.to_ascii_lowercase();
        let probe = Probe {
            req,
            host: &host,
            path: &path,
        };
        for (rank, candidate) in self.candidates.iter().enumerate() {
            let route = &self.routes[candidate.route as usize];
            if !route.hosts.is_empty() && !route.hosts.iter().any(|h| h.name.matches(&host)) {
                continue;
            }
            let mut key_len = 0;
            if candidate.kind == PathKind::Prefix {
                let prefixes = runtime.routes()[route.index].prefix_paths();
                let group = prefixes
                    .iter()
                    .filter(|p| p.len() == candidate.prefix_len as usize);
                match group.into_iter().find(|p| path.starts_with(p.as_str())) {
                    Some(prefix) => key_len = prefix.len(),
                    None => continue,
                }
            }
            if let Some((matched, _)) = self.check(rank as u32, key_len, &probe) {
                return Some((route.index, matched));
            }
        }
        None
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.routes.len())
            .field("entries", &self.candidates.len())
            .field("exact_hosts", &self.exact.len())
            .field(
                "wildcard_hosts",
                &(self.suffixes.len() + self.prefixes.len()),
            )
            .finish()
    }
}

/// The lowercase form of `host`, on the stack when it fits.
fn lowercase<'h>(host: &'h str, buffer: &'h mut [u8; HOST_BUFFER]) -> Cow<'h, str> {
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Cow::Borrowed(host);
    }
    let bytes = host.as_bytes();
    match buffer.get_mut(..bytes.len()) {
        Some(out) => {
            out.copy_from_slice(bytes);
            out.make_ascii_lowercase();
            // ASCII lowercasing keeps UTF-8 valid; the fallback is never taken.
            match std::str::from_utf8(out) {
                Ok(lower) => Cow::Borrowed(lower),
                Err(_) => Cow::Owned(host.to_ascii_lowercase()),
            }
        }
        None => Cow::Owned(host.to_ascii_lowercase()),
    }
}

/// The entries of a route: one per path group (all regex paths; prefix paths of one length),
/// or one for a route without paths; each with its priority, path kind and index keys.
fn groups(route: &CompiledRoute, model: &model::Route) -> Vec<(Priority, PathKind, Vec<String>)> {
    let non_empty = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
    let header_count = model.headers.as_ref().map_or(0, |h| h.len());
    let has_paths = !route.prefix_paths().is_empty() || !route.regex_paths().is_empty();
    let weight = [
        non_empty(&model.methods),
        non_empty(&model.hosts),
        header_count > 0,
        non_empty(&model.snis),
        has_paths,
    ]
    .into_iter()
    .filter(|set| *set)
    .count();
    let base = Priority {
        weight: u8::try_from(weight).unwrap_or(u8::MAX),
        // Kong: `type(hosts) == "table"` and no `*`: a route without hosts is not "plain".
        plain_hosts: model
            .hosts
            .as_ref()
            .is_some_and(|hosts| hosts.iter().all(|h| !h.contains('*'))),
        headers: u8::try_from(header_count.min(MAX_HEADER_COUNT)).unwrap_or(u8::MAX),
        regex: false,
        order: 0,
    };

    let mut out = Vec::new();
    if !has_paths {
        out.push((base, PathKind::Any, vec![String::new()]));
        return out;
    }
    if !route.regex_paths().is_empty() {
        let keys = route
            .regex_paths()
            .iter()
            .map(|r| literal_prefix(r.source.strip_prefix('~').unwrap_or(&r.source)).to_owned())
            .collect();
        let priority = Priority {
            regex: true,
            order: model.regex_priority,
            ..base
        };
        out.push((priority, PathKind::Regex, keys));
    }
    let mut lengths: Vec<usize> = route.prefix_paths().iter().map(String::len).collect();
    lengths.sort_unstable();
    lengths.dedup();
    for len in lengths {
        let keys = route
            .prefix_paths()
            .iter()
            .filter(|p| p.len() == len)
            .cloned()
            .collect();
        let priority = Priority {
            order: i64::try_from(len & PATH_LENGTH_MASK).unwrap_or(0),
            ..base
        };
        out.push((priority, PathKind::Prefix, keys));
    }
    out
}

/// The literal text every match of an anchored regex path starts with (conservative: it may
/// be shorter than the true literal prefix, never wrong). `pattern` is the path without `~`.
fn literal_prefix(pattern: &str) -> &str {
    // An alternation anywhere may reach the top level; do not try to be clever.
    if pattern.contains('|') {
        return "";
    }
    let mut end = 0;
    let mut last_start = 0;
    for (at, c) in pattern.char_indices() {
        let literal = c.is_alphanumeric()
            || matches!(
                c,
                '/' | '-'
                    | '_'
                    | '~'
                    | '%'
                    | '!'
                    | '@'
                    | '='
                    | ':'
                    | ';'
                    | ','
                    | '\''
                    | '"'
                    | '<'
                    | '>'
                    | '`'
                    | '&'
            );
        if !literal {
            if matches!(c, '?' | '*' | '+' | '{') {
                // The previous character is optional or repeated: it is not part of every match.
                end = last_start;
            }
            break;
        }
        last_start = at;
        end = at + c.len_utf8();
    }
    pattern.get(..end).unwrap_or("")
}

// === impl RouteEntry ===

impl RouteEntry {
    /// The router's view of a route; `None` when it takes no part (disabled service, stream
    /// route).
    fn new(config: &model::Config, route: &CompiledRoute, model: &model::Route) -> Option<Self> {
        if let Some(service) = route.service_index()
            && !config.services.get(service)?.enabled
        {
            return None;
        }
        let protocols = Protocols::parse(&model.protocols);
        if protocols == Protocols::default() {
            return None;
        }
        let mut headers = Vec::with_capacity(route.headers().len());
        for matcher in route.headers() {
            // Validated at compile time; a name `http` refuses could never be sent anyway.
            let name = HeaderName::from_bytes(matcher.name.as_bytes()).ok()?;
            headers.push(HeaderRule {
                name,
                values: matcher.values.iter().map(|v| v.as_str().into()).collect(),
                patterns: matcher.patterns.clone().into(),
            });
        }
        let hosts: Box<[HostPattern]> = route.hosts().into();
        Some(Self {
            index: route.index(),
            id: model.id,
            service: route.service_index(),
            methods: model
                .methods
                .iter()
                .flatten()
                .map(|m| m.as_str().into())
                .collect(),
            check_hosts: hosts.iter().any(|h| h.port.is_some()),
            hosts,
            snis: model
                .snis
                .iter()
                .flatten()
                .map(|s| s.trim_end_matches('.').to_ascii_lowercase().into())
                .collect(),
            headers: headers.into(),
            regexes: route
                .regex_paths()
                .iter()
                .map(|r| r.regex.clone())
                .collect(),
            protocols,
            strip_path: model.strip_path,
            preserve_host: model.preserve_host,
            path_handling: PathHandling::parse(&model.path_handling),
            https_redirect_status_code: model.https_redirect_status_code,
        })
    }

    /// Every field but the path (and the host name, which the bucket already matched).
    fn matches_except_path(&self, probe: &Probe<'_>) -> bool {
        let req = probe.req;
        if !self.methods.is_empty() && !self.methods.iter().any(|m| **m == *req.method) {
            return false;
        }
        if self.check_hosts
            && !self
                .hosts
                .iter()
                .any(|h| h.name.matches(probe.host) && h.port.is_none_or(|port| port == req.port))
        {
            return false;
        }
        if !self.snis.is_empty() && req.protocol.is_tls() {
            let Some(sni) = req.sni else {
                return false;
            };
            let sni = sni.strip_suffix('.').unwrap_or(sni);
            if !self.snis.iter().any(|s| s.eq_ignore_ascii_case(sni)) {
                return false;
            }
        }
        self.headers.iter().all(|rule| rule.matches(req.headers))
    }
}

// === impl HeaderRule ===

impl HeaderRule {
    /// Some value of the header is accepted.
    fn matches(&self, headers: &HeaderMap) -> bool {
        headers.get_all(&self.name).iter().any(|value| {
            let bytes = value.as_bytes();
            self.values.iter().any(|v| equals_lowercase(bytes, v))
                || (!self.patterns.is_empty()
                    && std::str::from_utf8(bytes)
                        .is_ok_and(|text| self.patterns.iter().any(|p| p.is_match(text))))
        })
    }
}

/// Whether a header value, lowercased, equals `lower`.
fn equals_lowercase(value: &[u8], lower: &str) -> bool {
    if lower.is_ascii() {
        value.eq_ignore_ascii_case(lower.as_bytes())
    } else {
        std::str::from_utf8(value).is_ok_and(|v| v.to_lowercase() == lower)
    }
}

// === impl Protocols ===

impl Protocols {
    const HTTP: u8 = 1;
    const HTTPS: u8 = 2;
    const GRPC: u8 = 4;
    const GRPCS: u8 = 8;

    /// The HTTP-family protocols of a route; stream protocols are ignored.
    fn parse(protocols: &[String]) -> Self {
        Self(protocols.iter().fold(0, |bits, p| {
            bits | match p.as_str() {
                "http" => Self::HTTP,
                "https" => Self::HTTPS,
                "grpc" => Self::GRPC,
                "grpcs" => Self::GRPCS,
                _ => 0,
            }
        }))
    }

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

// === impl Protocol ===

impl Protocol {
    /// Whether the request came over TLS (`https`, `grpcs`).
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Https | Self::Grpcs)
    }

    /// Whether the request is a gRPC request.
    pub fn is_grpc(self) -> bool {
        matches!(self, Self::Grpc | Self::Grpcs)
    }
}

// === impl Match ===

impl<'a> Match<'a> {
    /// Position of the route in [`Runtime::config`]`.routes` and [`Runtime::routes`].
    pub fn route_index(&self) -> usize {
        self.route.index
    }

    /// The route's id.
    pub fn route_id(&self) -> Uuid {
        self.route.id
    }

    /// Position of the route's service in [`Runtime::config`]`.services`; `None`: the route
    /// has no service and the proxy answers 503 `no Service found with those values`.
    pub fn service_index(&self) -> Option<usize> {
        self.route.service
    }

    /// The normalized request path the route matched.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The part of the path the route's path matched: the prefix path, or the whole extent of
    /// the regex match; `None` when the route has no paths.
    pub fn matched_path(&self) -> Option<&str> {
        self.path.get(..self.matched?)
    }

    /// The route's `strip_path`.
    pub fn strip_path(&self) -> bool {
        self.route.strip_path
    }

    /// The route's `preserve_host`: send the client's `Host` upstream.
    pub fn preserve_host(&self) -> bool {
        self.route.preserve_host
    }

    /// The route's `path_handling`.
    pub fn path_handling(&self) -> PathHandling {
        self.route.path_handling
    }

    /// The path to send upstream, from the service's `path` (`None`: `/`), by the route's
    /// `strip_path` and `path_handling` ([`upstream_path`]). The query string is the proxy's
    /// to append.
    pub fn upstream_path(&self, service_path: Option<&str>) -> String {
        upstream_path(
            service_path,
            self.matched_path(),
            &self.path,
            self.route.strip_path,
            self.route.path_handling,
        )
    }

    /// The `X-Forwarded-Prefix` to send when the client sent none that is trusted: the
    /// stripped part of the path, when `strip_path` is on and it is not `/`.
    pub fn forwarded_prefix(&self) -> Option<&str> {
        if !self.route.strip_path {
            return None;
        }
        self.matched_path().filter(|prefix| *prefix != "/")
    }

    /// Whether the matched regex path has capture groups ([`Match::captures`] is `Some`).
    pub fn has_captures(&self) -> bool {
        self.regex.is_some()
    }

    /// The groups of the regex path that matched (Kong's `uri_captures`); `None` unless the
    /// route matched by a regex with capture groups. Runs the regex again (allocates): ask
    /// only when a plugin needs them.
    pub fn captures(&self) -> Option<UriCaptures<'_>> {
        let regex = self.regex?;
        Some(UriCaptures {
            captures: regex.captures(&self.path)?,
            regex,
        })
    }

    /// What to do with the request, by the route's `protocols`, in Kong's order. `protocol` is
    /// how the request arrived as the proxy sees it (its TLS half taken from a trusted
    /// `X-Forwarded-Proto` when there is one); `http2`: the request came over HTTP/2.
    pub fn verdict(&self, protocol: Protocol, http2: bool) -> Verdict {
        let p = self.route.protocols;
        if p.has(Protocols::HTTPS) && !p.has(Protocols::HTTP) && !protocol.is_tls() {
            let status = self.route.https_redirect_status_code;
            if matches!(status, 426 | 301 | 302 | 307 | 308) {
                return Verdict::RequireHttps { status };
            }
        }
        if p.has(Protocols::GRPC) || p.has(Protocols::GRPCS) {
            if !protocol.is_grpc() {
                return Verdict::RejectNonGrpc;
            }
            if !http2 {
                return Verdict::RequireHttp2;
            }
            if !p.has(Protocols::GRPC) && !protocol.is_tls() {
                return Verdict::RequireGrpcs;
            }
        }
        Verdict::Proxy
    }
}

impl fmt::Debug for Match<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Match")
            .field("route", &self.route.id)
            .field("path", &self.path)
            .field("matched_path", &self.matched_path())
            .finish()
    }
}

// === impl UriCaptures ===

impl<'m> UriCaptures<'m> {
    /// Group `i` (0: the whole match), when it took part in the match.
    pub fn get(&self, i: usize) -> Option<&'m str> {
        self.captures.get(i).map(|m| m.as_str())
    }

    /// The named group `name`, when it took part in the match.
    pub fn name(&self, name: &str) -> Option<&'m str> {
        self.captures.name(name).map(|m| m.as_str())
    }

    /// How many groups the regex has, the whole match included.
    pub fn len(&self) -> usize {
        self.captures.len()
    }

    /// Always false: group 0 is always there.
    pub fn is_empty(&self) -> bool {
        self.captures.len() == 0
    }

    /// The named groups that took part in the match, in pattern order.
    pub fn named(&self) -> impl Iterator<Item = (&'m str, &'m str)> + '_ {
        self.regex
            .capture_names()
            .flatten()
            .filter_map(|name| Some((name, self.captures.name(name)?.as_str())))
    }
}

impl fmt::Debug for UriCaptures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries((0..self.len()).map(|i| self.get(i)))
            .finish()
    }
}
