//! Consistent hashing: the bytes of a request that are hashed (an upstream's `hash_on`, then
//! `hash_fallback`), the hash function, and the slot table that maps a hash to a target.
//!
//! # The slot table
//! `slots` entries; each is owned by the target that wins weighted rendezvous hashing (HRW) for
//! it: target `t` scores `ln(u(t, s)) / weight(t)` for slot `s`, `u` a uniform draw in (0, 1]
//! from hashing the target's `host:port` with the slot number, and the highest score wins.
//! Each target thus owns slots in proportion to its weight, and because a slot's winner depends
//! only on the targets competing for it:
//! - adding a target moves exactly the slots it wins (≈ its share of the weight) and nothing
//!   else; removing one moves only the slots it owned, spread over the others by weight;
//! - the table is a function of the set of `(host:port, weight)` pairs and `slots` alone:
//!   every data plane builds the same table, whatever order or history the targets came in
//!   (Kong's older ring depended on the order targets were added).
//!
//! Lookup is one multiply (`hash` scaled onto the table). Building costs `slots × targets`
//! hash evaluations (plus a logarithm each when the weights differ): ~1 ms for 10 000 slots and
//! 10 targets. Tables are built on first use and shared by later runtimes while the upstream's
//! targets, weights and slots stay the same.
//!
//! The hash is 64-bit FNV-1a over the input bytes followed by MurmurHash3's `fmix64`
//! finalizer (FNV alone mixes short inputs poorly in the high bits). It is fixed and unkeyed on
//! purpose: every data plane must send a given key to the same target.

use std::borrow::Cow;

use gatehouse_shared::model;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use uuid::Uuid;

use super::HashInput;

/// FNV-1a's offset basis and prime (64-bit).
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// 2^64 / φ: splitmix64's increment, spreading consecutive slot numbers over the hash space.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
/// Bounds of `slots` (the schema's range); values outside are clamped.
const MIN_SLOTS: u32 = 10;
const MAX_SLOTS: u32 = 65_536;

/// Where a hash input comes from: an upstream's `hash_on` or `hash_fallback`, parsed with the
/// fields it needs. Anything unusable (unknown kind, missing or invalid header name, ...)
/// becomes [`Source::None`], which yields nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// No hashing.
    None,
    /// The authenticated consumer's id.
    Consumer,
    /// The client IP.
    Ip,
    /// The value of a header, several lines joined with `, `.
    Header(HeaderName),
    /// The value of a cookie; generated (a UUID) when the request has none.
    Cookie {
        /// The cookie's name.
        name: String,
        /// The `Path` of the generated cookie.
        path: String,
    },
    /// The request path.
    Path,
    /// The value(s) of a query argument.
    QueryArg(String),
    /// A capture group of the route's regex path: a name, or a number.
    UriCapture(String),
}

/// A streaming 64-bit FNV-1a hasher with a `fmix64` finish.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hasher(u64);

// === impl Source ===

impl Source {
    /// The upstream's `hash_on`.
    pub(super) fn primary(upstream: &model::Upstream) -> Self {
        Self::parse(
            &upstream.hash_on,
            upstream.hash_on_header.as_deref(),
            upstream.hash_on_query_arg.as_deref(),
            upstream.hash_on_uri_capture.as_deref(),
            upstream,
        )
    }

    /// The upstream's `hash_fallback`.
    pub(super) fn fallback(upstream: &model::Upstream) -> Self {
        Self::parse(
            &upstream.hash_fallback,
            upstream.hash_fallback_header.as_deref(),
            upstream.hash_fallback_query_arg.as_deref(),
            upstream.hash_fallback_uri_capture.as_deref(),
            upstream,
        )
    }

    fn parse(
        kind: &str,
        header: Option<&str>,
        query_arg: Option<&str>,
        capture: Option<&str>,
        upstream: &model::Upstream,
    ) -> Self {
        let named = |name: Option<&str>| name.filter(|n| !n.is_empty()).map(str::to_owned);
        let source = match kind {
            "consumer" => Some(Self::Consumer),
            "ip" => Some(Self::Ip),
            "header" => header
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .map(Self::Header),
            "cookie" => named(upstream.hash_on_cookie.as_deref()).map(|name| Self::Cookie {
                name,
                path: upstream.hash_on_cookie_path.clone(),
            }),
            "path" => Some(Self::Path),
            "query_arg" => named(query_arg).map(Self::QueryArg),
            "uri_capture" => named(capture).map(Self::UriCapture),
            _ => None,
        };
        source.unwrap_or(Self::None)
    }

    /// The hash of what this source finds in `input`; `None` when it finds nothing. A cookie
    /// source always finds something: without the cookie it generates a value and puts the
    /// `Set-Cookie` for it in `set_cookie`.
    pub(super) fn hash(
        &self,
        input: &HashInput<'_>,
        set_cookie: &mut Option<HeaderValue>,
    ) -> Option<u64> {
        let mut h = Hasher::new();
        match self {
            Self::None => return None,
            Self::Consumer => h.write(input.consumer?.as_bytes()),
            Self::Ip => match input.client_ip.to_canonical() {
                std::net::IpAddr::V4(ip) => h.write(&ip.octets()),
                std::net::IpAddr::V6(ip) => h.write(&ip.octets()),
            },
            Self::Header(name) => {
                let mut values = input.headers.get_all(name).iter();
                h.write(values.next()?.as_bytes());
                for value in values {
                    h.write(b", ");
                    h.write(value.as_bytes());
                }
            }
            Self::Cookie { name, path } => match cookie(input.headers, name) {
                Some(value) => h.write(value),
                None => {
                    let value = Uuid::new_v4().hyphenated().to_string();
                    h.write(value.as_bytes());
                    // The name and path come from validated config; should either still not
                    // fit in a header, the request is hashed all the same, just not sticky.
                    *set_cookie =
                        HeaderValue::try_from(format!("{name}={value}; Path={path}")).ok();
                }
            },
            Self::Path => h.write(input.path.as_bytes()),
            Self::QueryArg(name) => {
                let mut values = query_values(input.query?, name);
                // Kong sorts the values of a repeated argument and joins them with `,`.
                values.sort_unstable();
                let (first, rest) = values.split_first()?;
                h.write(first);
                for value in rest {
                    h.write(b",");
                    h.write(value);
                }
            }
            Self::UriCapture(name) => {
                let captures = input.captures?;
                let value = match name.parse::<usize>() {
                    Ok(i) => captures.get(i),
                    Err(_) => captures.name(name),
                };
                h.write(value?.as_bytes());
            }
        }
        Some(h.finish())
    }
}

// === impl Hasher ===

impl Hasher {
    pub(super) const fn new() -> Self {
        Self(FNV_OFFSET)
    }

    pub(super) fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    pub(super) fn finish(self) -> u64 {
        fmix64(self.0)
    }
}

/// MurmurHash3's 64-bit finalizer: a bijection with full avalanche.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The hash of a target's `host:port`: the seed of its slot scores.
fn seed(target: &str) -> u64 {
    let mut h = Hasher::new();
    h.write(target.as_bytes());
    h.finish()
}

/// splitmix64's `n`-th output from `seed`: independent-looking draws per (target, slot).
fn draw(seed: u64, n: u32) -> u64 {
    fmix64(seed.wrapping_add((u64::from(n) + 1).wrapping_mul(GOLDEN)))
}

/// The slot table of targets given as `(host:port, weight)` (weights > 0): entry `s` is the
/// index of the target owning slot `s`. See the module docs.
pub(super) fn table(targets: &[(&str, u32)], slots: u32) -> Vec<u32> {
    let slots = slots.clamp(MIN_SLOTS, MAX_SLOTS);
    if targets.is_empty() {
        return Vec::new();
    }
    let seeds: Vec<u64> = targets.iter().map(|(t, _)| seed(t)).collect();
    let equal = targets.windows(2).all(|w| w[0].1 == w[1].1);
    (0..slots)
        .map(|s| {
            let mut best = 0u32;
            if equal {
                // Equal weights: the highest draw wins; no logarithm needed.
                let mut top = 0u64;
                for (i, seed) in seeds.iter().enumerate() {
                    let d = draw(*seed, s);
                    if d > top || i == 0 {
                        (top, best) = (d, i as u32);
                    }
                }
            } else {
                let mut top = f64::NEG_INFINITY;
                for (i, (seed, (_, weight))) in seeds.iter().zip(targets).enumerate() {
                    let score = unit(draw(*seed, s)).ln() / f64::from(*weight);
                    if score > top {
                        (top, best) = (score, i as u32);
                    }
                }
            }
            best
        })
        .collect()
}

/// A hash as a uniform draw in (0, 1].
fn unit(hash: u64) -> f64 {
    ((hash >> 11) + 1) as f64 / (1u64 << 53) as f64
}

/// The table entry a hash lands on (Lemire's multiply-shift: no modulo bias).
pub(super) fn slot(hash: u64, len: usize) -> usize {
    ((u128::from(hash) * len as u128) >> 64) as usize
}

/// The value of cookie `name` in the request's `Cookie` header(s) (HTTP/2 clients may send
/// several), the first one when repeated.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|b| *b == b'=')?;
            let (key, value) = pair.split_at(at);
            (key.trim_ascii() == name.as_bytes()).then(|| value[1..].trim_ascii())
        })
}

/// The decoded values of query argument `name` (`?a` alone counts as an empty value).
fn query_values<'q>(query: &'q str, name: &str) -> Vec<Cow<'q, [u8]>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (*decode(key) == *name.as_bytes()).then(|| decode(value))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; a malformed
/// escape stays as it is.
fn decode(raw: &str) -> Cow<'_, [u8]> {
    let bytes = raw.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'%' | b'+')) {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let escaped = (byte == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)? << 4) | hex(*bytes.get(i + 2)?)?))
            .flatten();
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(if byte == b'+' { b' ' } else { byte });
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn hash_is_fixed() {
        // FNV-1a("a") is 0xaf63dc4c8601ec8c; pinned so a change of function is noticed (it
        // would move every key on every data plane).
        let mut h = Hasher::new();
        h.write(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(h.finish(), fmix64(0xaf63_dc4c_8601_ec8c));
    }

    #[test]
    fn cookies_are_found_across_lines() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; sid = x"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2;c=3"));
        assert_eq!(cookie(&headers, "sid"), Some(&b"x"[..]));
        assert_eq!(cookie(&headers, "c"), Some(&b"3"[..]));
        assert_eq!(cookie(&headers, "d"), None);
    }

    #[test]
    fn query_values_are_decoded() {
        let values = query_values("a=1&b=x+y&a=%41&c&a=%zz", "a");
        let values: Vec<&[u8]> = values.iter().map(|v| &**v).collect();
        assert_eq!(values, [&b"1"[..], b"A", b"%zz"]);
        assert_eq!(query_values("c&d=1", "c").len(), 1);
        assert_eq!(&*query_values("b=x+y", "b")[0], b"x y");
        assert!(query_values("", "a").is_empty());
    }

    #[test]
    fn slots_are_clamped_and_spread() {
        assert_eq!(table(&[("a:1", 1)], 1).len(), MIN_SLOTS as usize);
        assert!(table(&[], 100).is_empty());
        let len = 1000;
        assert_eq!(slot(0, len), 0);
        assert_eq!(slot(u64::MAX, len), len - 1);
    }
}
