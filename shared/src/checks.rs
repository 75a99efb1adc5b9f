//! Pure validators for entity fields: names, tags, hosts, SNIs, paths, regexes, header names,
//! IP/CIDR values and the services `url` shorthand.
//!
//! The control plane's Admin API validation and the data plane's router both call these, so
//! they reproduce Kong's rules (`kong/db/schema/typedefs.lua`, `kong/tools/ip.lua`,
//! `kong/tools/uri.lua`) and return Kong's error text as `Err(String)`. Every function takes
//! untrusted input: none of them panics, whatever the bytes.
//!
//! Deliberate differences from Kong, all stricter or clearer:
//! - hostnames follow RFC 1123 label rules (1–63 bytes, no leading or trailing `-`, at most
//!   253 bytes in all, no trailing dot); `_` is still accepted, as Kong accepts it and
//!   container host names use it;
//! - IPv4 addresses with leading zeros (`010.0.0.1`) are refused rather than normalized;
//! - regex paths are checked with the `regex` crate, not PCRE: look-around and
//!   back-references are refused;
//! - [`normalize_path`] decodes only unreserved characters (Kong also decodes "other"
//!   characters such as `%20`), so the result is always valid UTF-8.

use std::net::{Ipv4Addr, Ipv6Addr};

use regex::RegexBuilder;

/// Protocols a service may use, as accepted by the `url` shorthand.
const SERVICE_PROTOCOLS: &[&str] = &[
    "grpc",
    "grpcs",
    "http",
    "https",
    "tcp",
    "tls",
    "tls_passthrough",
    "udp",
];

/// Kong's message when a value that must be a bare host carries a port.
const HAS_PORT: &str = "must not have a port";

/// The parts of a services `url` shorthand, as Kong expands them into fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUrl {
    /// The URL scheme, lower-cased; one of the service protocols.
    pub protocol: String,
    /// The host as written, IPv6 brackets removed. Not validated: check it with [`host`].
    pub host: String,
    /// The explicit port, else 443 for `https`, `grpcs` and `tls`, else 80.
    pub port: u16,
    /// The path as written (starting with `/`), or `None` when the URL has none. Not
    /// validated: check it with [`service_path`].
    pub path: Option<String>,
}

/// What a host string turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKind {
    Name,
    Ipv4,
    Ipv6,
}

/// A host, with brackets removed from IPv6 literals, and its optional port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostPort<'a> {
    host: &'a str,
    kind: HostKind,
    port: Option<u16>,
}

/// Why a `host[:port]` string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostPortError {
    /// Not a hostname nor an IP address (including a non-numeric port).
    Host,
    /// A numeric port above 65535.
    Port,
}

/// Checks a `utf8_name` (names of services, routes, upstreams, plugin instances...): ASCII
/// characters limited to `[A-Za-z0-9._~-]`, any non-ASCII character allowed, not empty.
pub fn utf8_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.chars().all(|c| {
            !c.is_ascii() || c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid value '{s}': the only accepted ascii characters are alphanumerics or ., -, \
             _, and ~"
        ))
    }
}

/// Checks a tag: printable ASCII (space included) except `,` and `/`, any non-ASCII
/// character allowed, not empty.
pub fn tag(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| !c.is_ascii() || (matches!(c, ' '..='~') && c != ',' && c != '/'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tag '{s}': expected printable ascii (except `,` and `/`) or valid utf-8 \
             sequences"
        ))
    }
}

/// Checks a bare host (service host, upstream name, `host_header`): a hostname, an IPv4
/// address, or an IPv6 address with or without brackets. A port is refused.
pub fn host(s: &str) -> Result<(), String> {
    match parse_host_port(s) {
        Ok(HostPort { port: None, .. }) => Ok(()),
        Ok(HostPort { port: Some(_), .. }) | Err(HostPortError::Port) => Err(HAS_PORT.to_owned()),
        Err(HostPortError::Host) => Err(format!("invalid hostname: {s}")),
    }
}

/// Parses a target, `host[:port]`: a hostname, an IPv4 address, or an IPv6 address (bare, or
/// in brackets with an optional port, `[::1]:80`). Returns the host (IPv6 without brackets,
/// otherwise as written) and the port if one was given.
pub fn host_with_optional_port(s: &str) -> Result<(String, Option<u16>), String> {
    parse_host_port(s)
        .map(|hp| (hp.host.to_owned(), hp.port))
        .map_err(|_| format!("Invalid target ('{s}'); not a valid hostname or ip address"))
}

/// Checks a route host: a hostname or IP address with an optional `:port`, where a hostname
/// may hold one `*` as its whole leftmost (`*.example.com`) or rightmost (`example.*`) label.
pub fn wildcard_host(s: &str) -> Result<(), String> {
    let wildcards = s.matches('*').count();
    if wildcards > 1 {
        return Err("invalid wildcard: must have at most one wildcard".to_owned());
    }
    let mock;
    let mut checked = s;
    if wildcards == 1 {
        // The port (if any) is not part of the rightmost label: `example.*:8080` is allowed.
        let name = match s.split_once(':') {
            Some((name, port)) if !port.contains(':') => name,
            _ => s,
        };
        if !name.starts_with("*.") && !name.ends_with(".*") {
            return Err(
                "invalid wildcard: must be placed at leftmost or rightmost label".to_owned(),
            );
        }
        // Kong substitutes a plain label so the remaining labels go through the host rules.
        mock = s.replacen('*', "abc", 1);
        checked = &mock;
    }
    match parse_host_port(checked) {
        Ok(_) => Ok(()),
        Err(HostPortError::Port) => Err("invalid port number".to_owned()),
        Err(HostPortError::Host) => Err(format!("invalid hostname: {s}")),
    }
}

/// Checks an SNI name: `*` alone (the default certificate), or a hostname that may hold one
/// `*` as its whole first or last label. IP addresses and ports are refused.
pub fn sni_name(s: &str) -> Result<(), String> {
    if s == "*" {
        return Ok(());
    }
    let mock;
    let mut checked = s;
    if let Some(idx) = s.find('*') {
        if idx != 0 && idx + 1 != s.len() {
            return Err("wildcard must be leftmost or rightmost character".to_owned());
        }
        if s.matches('*').count() > 1 {
            return Err("only one wildcard must be specified".to_owned());
        }
        if !s.starts_with("*.") && !s.ends_with(".*") {
            return Err(
                "invalid wildcard: must be placed at leftmost or rightmost label".to_owned(),
            );
        }
        mock = s.replacen('*', "wildcard", 1);
        checked = &mock;
    }
    match parse_host_port(checked) {
        Err(HostPortError::Host) => Err(format!("invalid hostname: {s}")),
        Err(HostPortError::Port) => Err(HAS_PORT.to_owned()),
        Ok(hp) if hp.kind != HostKind::Name => Err("must not be an IP".to_owned()),
        Ok(HostPort { port: Some(_), .. }) => Err(HAS_PORT.to_owned()),
        Ok(_) => Ok(()),
    }
}

/// Checks a route path: a prefix path (`/...`) that must already be in normalized form (see
/// [`normalize_path`]), or a regex path (`~/...`) whose pattern (after the `~`) must compile.
/// Neither may contain `//`.
pub fn route_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') && !s.starts_with("~/") {
        return Err("should start with: / (fixed path) or ~/ (regex path)".to_owned());
    }
    // Kong applies this to regex paths too: it is a plain pattern check on the whole value.
    if s.contains("//") {
        return Err("must not have empty segments".to_owned());
    }
    if let Some(pattern) = s.strip_prefix('~') {
        return compile_regex(pattern, false);
    }
    // Like Kong, a bad %-encoding is only reported when every character is otherwise an RFC
    // 3986 one; other characters are left to the normalization check.
    if path_chars_ok(s)
        && let Some(bad) = bad_percent_encoding(s)
    {
        return Err(format!("invalid url-encoded value: '{bad}'"));
    }
    let normalized = normalize_path(s);
    if normalized != s {
        return Err(format!(
            "non-normalized path, consider use '{normalized}' instead"
        ));
    }
    Ok(())
}

/// Normalizes a path the way Kong does for prefix route paths and request paths (RFC 3986
/// §6.2.2): upper-cases the hex digits of %-triplets, decodes %-encoded unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`), removes dot segments and merges consecutive slashes. A `%` not
/// followed by two hex digits is kept as is, unless the decoding puts two hex digits after it
/// (`%%32%65`): it is then written `%25`, so that normalizing is idempotent and never makes a
/// new %-triplet.
pub fn normalize_path(s: &str) -> String {
    let decoded = normalize_percent_encoding(s);
    remove_dot_segments(&decoded)
}

/// Checks a service path: starts with `/`, no `//`, only RFC 3986 unreserved characters,
/// sub-delimiters, `/`, `:`, `@` and valid %-encodings.
pub fn service_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err("should start with: /".to_owned());
    }
    if s.contains("//") {
        return Err("must not have empty segments".to_owned());
    }
    if !path_chars_ok(s) {
        return Err(format!(
            "invalid path: '{s}' (characters outside of the reserved list of RFC 3986 found)"
        ));
    }
    if let Some(bad) = bad_percent_encoding(s) {
        return Err(format!("invalid url-encoded value: '{bad}'"));
    }
    Ok(())
}

/// Checks an HTTP method: one or more upper-case ASCII letters.
pub fn http_method(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!("invalid value: {s}"))
    }
}

/// Checks a header name: `A-Z a-z 0-9 _ -` only (nginx's rule, which Kong applies). Refusing
/// `Host` in route headers is left to the caller.
pub fn header_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("no header name provided".to_owned());
    }
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(format!(
            "bad header name '{s}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
        ))
    }
}

/// Checks a route header value: a value starting with `~*` is a case-insensitive regex whose
/// pattern (after the `~*`) must compile; any other string is a plain value.
pub fn header_value_pattern(s: &str) -> Result<(), String> {
    match s.strip_prefix("~*") {
        Some(pattern) => compile_regex(pattern, true),
        None => Ok(()),
    }
}

/// Checks an IPv4 or IPv6 address, or a CIDR range (`10.0.0.0/8`, `::1/128`) whose prefix
/// length is a plain decimal within the address family's range.
pub fn ip_or_cidr(s: &str) -> Result<(), String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (s, None),
    };
    let max_prefix = if addr.parse::<Ipv4Addr>().is_ok() {
        Some(32)
    } else if addr.parse::<Ipv6Addr>().is_ok() {
        Some(128)
    } else {
        None
    };
    let ok = match (max_prefix, prefix) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(max), Some(prefix)) => parse_prefix_len(prefix).is_some_and(|len| len <= max),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("invalid ip or cidr range: '{s}'"))
    }
}

/// Splits the services `url` shorthand, `scheme://host[:port][/path]`, into the fields Kong
/// fills from it. The scheme must be a service protocol; credentials, query strings and
/// fragments are refused rather than silently dropped. Host and path are returned as
/// written: the caller validates them as the `host` and `path` fields, so their errors land
/// on those fields as in Kong.
pub fn service_url(url: &str) -> Result<ServiceUrl, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("invalid url: missing scheme (expected <protocol>://<host>)".to_owned());
    };
    if scheme.is_empty() {
        return Err("invalid url: missing scheme (expected <protocol>://<host>)".to_owned());
    }
    let protocol = scheme.to_ascii_lowercase();
    if !SERVICE_PROTOCOLS.contains(&protocol.as_str()) {
        return Err(format!("unsupported protocol: {scheme}"));
    }
    if rest.contains(['?', '#']) {
        return Err("invalid url: query strings and fragments are not supported".to_owned());
    }
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, Some(format!("/{path}"))),
        None => (rest, None),
    };
    if authority.contains('@') {
        return Err("invalid url: credentials are not supported".to_owned());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err("invalid url: missing ']' after IPv6 address".to_owned());
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("invalid url: unexpected '{after}' after host")),
            },
        }
    } else {
        match authority.split_once(':') {
            None => (authority, None),
            Some((_, port)) if port.contains(':') => {
                return Err("invalid url: IPv6 addresses must be enclosed in brackets".to_owned());
            }
            Some((host, port)) => (host, Some(port)),
        }
    };
    if host.is_empty() {
        return Err("invalid url: missing host".to_owned());
    }
    let port = match port {
        Some(port) => match parse_port(port) {
            Ok(port) => port,
            Err(_) => return Err(format!("invalid url: invalid port '{port}'")),
        },
        None => match protocol.as_str() {
            "https" | "grpcs" | "tls" => 443,
            _ => 80,
        },
    };
    Ok(ServiceUrl {
        protocol,
        host: host.to_owned(),
        port,
        path,
    })
}

/// Parses `host`, `host:port`, `ipv4`, `ipv4:port`, `ipv6`, `[ipv6]` or `[ipv6]:port`.
///
/// Classification follows Kong's `hostname_type`: more than one `:` means IPv6, only digits
/// and dots means IPv4, anything else is a name.
fn parse_host_port(s: &str) -> Result<HostPort<'_>, HostPortError> {
    if let Some(bracketed) = s.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(HostPortError::Host)?;
        let port = match after {
            "" => None,
            _ => Some(parse_port(
                after.strip_prefix(':').ok_or(HostPortError::Host)?,
            )?),
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(HostPortError::Host);
        }
        return Ok(HostPort {
            host,
            kind: HostKind::Ipv6,
            port,
        });
    }
    if s.matches(':').count() > 1 {
        if s.parse::<Ipv6Addr>().is_err() {
            return Err(HostPortError::Host);
        }
        return Ok(HostPort {
            host: s,
            kind: HostKind::Ipv6,
            port: None,
        });
    }
    let (host, port) = match s.split_once(':') {
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (s, None),
    };
    let kind = if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // Also catches the empty host: it is not an IPv4 address.
        host.parse::<Ipv4Addr>().map_err(|_| HostPortError::Host)?;
        HostKind::Ipv4
    } else if is_hostname(host) {
        HostKind::Name
    } else {
        return Err(HostPortError::Host);
    };
    Ok(HostPort { host, kind, port })
}

/// Parses a port: one or more ASCII digits, at most 65535.
fn parse_port(s: &str) -> Result<u16, HostPortError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostPortError::Host);
    }
    // All digits, so the only possible failure is overflow.
    s.parse::<u16>().map_err(|_| HostPortError::Port)
}

/// RFC 1123 hostname (plus `_`, which Kong accepts): dot-separated labels of 1–63 letters,
/// digits, `-` or `_`, not starting or ending with `-`, at most 253 bytes in all.
fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A CIDR prefix length: a plain decimal (no sign, no leading zero), as Kong's table of
/// accepted prefix strings requires.
fn parse_prefix_len(s: &str) -> Option<u8> {
    let plain = !s.is_empty()
        && s.len() <= 3
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if plain { s.parse().ok() } else { None }
}

/// Compiles `pattern` as the router would, reporting Kong's `invalid regex` message.
fn compile_regex(pattern: &str, case_insensitive: bool) -> Result<(), String> {
    match RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .build()
    {
        Ok(_) => Ok(()),
        Err(err) => Err(format!(
            "invalid regex: '{pattern}' ({})",
            regex_error_message(&err)
        )),
    }
}

/// The one-line cause of a regex error. Syntax errors render as several lines (the pattern,
/// a caret, then `error: <cause>`); only the cause is useful in an API message.
fn regex_error_message(err: &regex::Error) -> String {
    match err {
        regex::Error::Syntax(text) => text
            .lines()
            .find_map(|line| line.trim_start().strip_prefix("error: "))
            .or_else(|| text.lines().next())
            .unwrap_or("syntax error")
            .to_owned(),
        regex::Error::CompiledTooBig(limit) => {
            format!("compiled regex exceeds the size limit of {limit} bytes")
        }
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or("unknown error")
            .to_owned(),
    }
}

/// Whether every character of a path is one Kong's `validate_path` accepts: unreserved,
/// sub-delimiters, `/`, `:`, `@` and `%`.
fn path_chars_ok(s: &str) -> bool {
    s.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'.' | b'-'
                    | b'_'
                    | b'~'
                    | b'/'
                    | b'%'
                    | b':'
                    | b'@'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    })
}

/// The first `%` not followed by two hex digits, with up to two following characters.
fn bad_percent_encoding(s: &str) -> Option<String> {
    let mut rest = s;
    while let Some(idx) = rest.find('%') {
        let tail = rest.get(idx..).unwrap_or_default();
        match hex_pair(tail.get(1..3)) {
            Some(_) => rest = tail.get(3..).unwrap_or_default(),
            None => return Some(tail.chars().take(3).collect()),
        }
    }
    None
}

/// The byte encoded by two ASCII hex digits. `u8::from_str_radix` alone would accept `+1`.
fn hex_pair(pair: Option<&str>) -> Option<u8> {
    let pair = pair?;
    if pair.len() == 2 && pair.bytes().all(|b| b.is_ascii_hexdigit()) {
        u8::from_str_radix(pair, 16).ok()
    } else {
        None
    }
}

/// Decodes %-encoded unreserved characters and upper-cases the hex of every other triplet.
///
/// A `%` not followed by two hex digits is kept as is (as Kong does), unless the characters
/// after it in the result are two hex digits: `%%32%65` decodes to `%` `2` `e`, and keeping
/// that `%` would make a new triplet (`%2e`, a dot) that a second decoding, here or upstream,
/// would turn into a dot segment the router never saw. Such a `%` is written `%25`, so the
/// result is stable: normalizing it again changes nothing.
fn normalize_percent_encoding(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // Where `out` holds a `%` that starts no triplet of the input.
    let mut lone = Vec::new();
    let mut rest = s;
    while let Some(idx) = rest.find('%') {
        out.push_str(rest.get(..idx).unwrap_or_default());
        let tail = rest.get(idx..).unwrap_or_default();
        match hex_pair(tail.get(1..3)) {
            Some(byte) => {
                let c = char::from(byte);
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~') {
                    out.push(c);
                } else {
                    out.push_str(&format!("%{byte:02X}"));
                }
                rest = tail.get(3..).unwrap_or_default();
            }
            None => {
                lone.push(out.len());
                out.push('%');
                rest = tail.get(1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    let forms_triplet = |at: usize| hex_pair(out.get(at + 1..at + 3)).is_some();
    if !lone.iter().any(|&at| forms_triplet(at)) {
        return out;
    }
    let mut escaped = String::with_capacity(out.len() + 2 * lone.len());
    let mut from = 0;
    for at in lone.into_iter().filter(|&at| forms_triplet(at)) {
        escaped.push_str(out.get(from..at).unwrap_or_default());
        escaped.push_str("%25");
        from = at + 1;
    }
    escaped.push_str(out.get(from..).unwrap_or_default());
    escaped
}

/// Removes dot segments and merges slashes, a port of the loop in Kong's `uri.normalize`
/// (itself RFC 3986 §5.2.4 plus `//` merging). Every prefix tested is ASCII, so the slices
/// taken stay on character boundaries.
fn remove_dot_segments(s: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        if rest == "/." {
            rest = "/";
        } else if rest == "/.." {
            rest = "/";
            output.pop();
        } else if rest == "." || rest == ".." {
            rest = "";
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("/.").filter(|r| r.starts_with('/')) {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("/..").filter(|r| r.starts_with('/')) {
            rest = r;
            output.pop();
        } else if let Some(r) = rest.strip_prefix('/').filter(|r| r.starts_with('/')) {
            rest = r;
        } else {
            // Move one segment (its leading `/` included) to the output.
            let first_len = rest.chars().next().map_or(1, char::len_utf8);
            let end = rest
                .get(first_len..)
                .and_then(|r| r.find('/'))
                .map_or(rest.len(), |i| i + first_len);
            output.push(rest.get(..end).unwrap_or(rest));
            rest = rest.get(end..).unwrap_or_default();
        }
    }
    output.concat()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[track_caller]
    fn err<T: std::fmt::Debug>(result: Result<T, String>) -> String {
        result.unwrap_err()
    }

    #[test]
    fn utf8_names() {
        for ok in ["foo", "Foo-1.2_x~y", "café", "名前", "a"] {
            assert_eq!(utf8_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            err(utf8_name("foo bar")),
            "invalid value 'foo bar': the only accepted ascii characters are alphanumerics \
             or ., -, _, and ~"
        );
        for bad in ["", "a/b", "a:b", "a,b", "a\tb", "a*"] {
            assert!(utf8_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags() {
        for ok in [
            "prod",
            "team:edge",
            "with space",
            "a.b-c_d~e!#$",
            "été",
            "x=y",
        ] {
            assert_eq!(tag(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            err(tag("a,b")),
            "invalid tag 'a,b': expected printable ascii (except `,` and `/`) or valid utf-8 \
             sequences"
        );
        for bad in ["", "a/b", "a\nb", "a\u{7f}", "\t"] {
            assert!(tag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "example.com",
            "localhost",
            "my_service",
            "a-b.c-d.e",
            "xn--caf-dma.fr",
            "10.0.0.1",
            "::1",
            "[::1]",
            "2001:db8::1",
            "1a.example",
        ] {
            assert_eq!(host(ok), Ok(()), "{ok}");
        }
        assert_eq!(err(host("example.com:80")), "must not have a port");
        assert_eq!(err(host("10.0.0.1:8080")), "must not have a port");
        assert_eq!(err(host("[::1]:443")), "must not have a port");
        assert_eq!(err(host("example.com:99999")), "must not have a port");
        assert_eq!(err(host("foo bar")), "invalid hostname: foo bar");
        let long_label = "a".repeat(64);
        let long_name = ["abcdefghij"; 24].join(".");
        for bad in [
            "",
            "-a.com",
            "a-.com",
            "a..com",
            "example.com.",
            ".example.com",
            "café.fr",
            "1.2.3",
            "256.1.1.1",
            "010.0.0.1",
            "[::1",
            "[example.com]",
            "::g",
            "example.com:",
            "example.com:http",
            "*.example.com",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert_eq!(err(host(bad)), format!("invalid hostname: {bad}"), "{bad}");
        }
        assert_eq!(host(&"a".repeat(63)), Ok(()));
    }

    #[test]
    fn targets() {
        assert_eq!(
            host_with_optional_port("example.com"),
            Ok(("example.com".to_owned(), None))
        );
        assert_eq!(
            host_with_optional_port("example.com:8080"),
            Ok(("example.com".to_owned(), Some(8080)))
        );
        assert_eq!(
            host_with_optional_port("10.0.0.1:0"),
            Ok(("10.0.0.1".to_owned(), Some(0)))
        );
        assert_eq!(
            host_with_optional_port("[::1]:80"),
            Ok(("::1".to_owned(), Some(80)))
        );
        assert_eq!(
            host_with_optional_port("[::1]"),
            Ok(("::1".to_owned(), None))
        );
        assert_eq!(
            host_with_optional_port("fe80::1"),
            Ok(("fe80::1".to_owned(), None))
        );
        assert_eq!(
            err(host_with_optional_port("bad host:80")),
            "Invalid target ('bad host:80'); not a valid hostname or ip address"
        );
        for bad in ["", ":80", "a:65536", "a:-1", "[::1]80", "::1:80:x", "a:b:c"] {
            assert!(host_with_optional_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcard_hosts() {
        for ok in [
            "example.com",
            "*.example.com",
            "example.*",
            "example.com:8080",
            "*.example.com:8443",
            "example.*:80",
            "example.com:0",
            "example.com:65535",
            "10.0.0.1",
            "10.0.0.1:80",
            "[::1]:8080",
        ] {
            assert_eq!(wildcard_host(ok), Ok(()), "{ok}");
        }
        let at_most_one = "invalid wildcard: must have at most one wildcard";
        let placement = "invalid wildcard: must be placed at leftmost or rightmost label";
        assert_eq!(err(wildcard_host("*.a.*")), at_most_one);
        assert_eq!(err(wildcard_host("**.com")), at_most_one);
        for bad in [
            "a.*.com",
            "*",
            "*example.com",
            "example*",
            "ex*mple.com",
            "*:80",
        ] {
            assert_eq!(err(wildcard_host(bad)), placement, "{bad}");
        }
        assert_eq!(
            err(wildcard_host("example.com:65536")),
            "invalid port number"
        );
        assert_eq!(
            err(wildcard_host("foo bar.com")),
            "invalid hostname: foo bar.com"
        );
        assert_eq!(
            err(wildcard_host("*.foo_-.com")),
            "invalid hostname: *.foo_-.com"
        );
        assert_eq!(
            err(wildcard_host("example.com:")),
            "invalid hostname: example.com:"
        );
    }

    #[test]
    fn sni_names() {
        for ok in ["*", "example.com", "*.example.com", "example.*", "a.b.c"] {
            assert_eq!(sni_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(err(sni_name("example.com:443")), "must not have a port");
        assert_eq!(err(sni_name("*.example.com:443")), "must not have a port");
        assert_eq!(err(sni_name("example.com:70000")), "must not have a port");
        assert_eq!(err(sni_name("10.0.0.1")), "must not be an IP");
        assert_eq!(err(sni_name("10.0.0.1:443")), "must not be an IP");
        assert_eq!(err(sni_name("::1")), "must not be an IP");
        assert_eq!(err(sni_name("[::1]")), "must not be an IP");
        assert_eq!(
            err(sni_name("a.*.com")),
            "wildcard must be leftmost or rightmost character"
        );
        assert_eq!(
            err(sni_name("*.a.*")),
            "only one wildcard must be specified"
        );
        assert_eq!(
            err(sni_name("*example.com")),
            "invalid wildcard: must be placed at leftmost or rightmost label"
        );
        assert_eq!(err(sni_name("bad sni")), "invalid hostname: bad sni");
        assert_eq!(err(sni_name("")), "invalid hostname: ");
    }

    #[test]
    fn route_paths() {
        for ok in [
            "/",
            "/users",
            "/users/",
            "/a/b.c",
            "/%2F",
            "/caf%C3%A9",
            "/with space",
            "/.well-known",
            "~/users/(?<id>\\d+)$",
            "~/users/(?P<id>\\d+)",
            "~/",
            "~/v[12]/.*",
        ] {
            assert_eq!(route_path(ok), Ok(()), "{ok}");
        }
        let start = "should start with: / (fixed path) or ~/ (regex path)";
        for bad in ["", "users", "~users", "~", " /x"] {
            assert_eq!(err(route_path(bad)), start, "{bad}");
        }
        assert_eq!(err(route_path("/a//b")), "must not have empty segments");
        assert_eq!(err(route_path("~/a//b")), "must not have empty segments");
        assert_eq!(
            err(route_path("/a/../b")),
            "non-normalized path, consider use '/b' instead"
        );
        assert_eq!(
            err(route_path("/%7euser")),
            "non-normalized path, consider use '/~user' instead"
        );
        assert_eq!(
            err(route_path("/%2f")),
            "non-normalized path, consider use '/%2F' instead"
        );
        assert_eq!(
            err(route_path("/a/.")),
            "non-normalized path, consider use '/a/' instead"
        );
        assert_eq!(err(route_path("/a%zz")), "invalid url-encoded value: '%zz'");
        assert_eq!(err(route_path("/a%4")), "invalid url-encoded value: '%4'");
        assert_eq!(
            err(route_path("~/[")),
            "invalid regex: '/[' (unclosed character class)"
        );
        assert!(err(route_path("~/(?=x)")).starts_with("invalid regex: '/(?=x)' ("));
        assert!(err(route_path("~/a{99999999}")).starts_with("invalid regex: "));
    }

    #[test]
    fn normalize() {
        let cases = [
            ("", ""),
            ("/", "/"),
            ("/a/./b/../c", "/a/c"),
            ("/%7euser", "/~user"),
            ("/%7Euser", "/~user"),
            ("/%2f", "/%2F"),
            ("/%2F", "/%2F"),
            ("/%41%62%2d%5f%2e%30", "/Ab-_.0"),
            ("/%20", "/%20"),
            ("/%c3%a9", "/%C3%A9"),
            ("/a//b///c", "/a/b/c"),
            ("//", "/"),
            ("/a/b/", "/a/b/"),
            ("/a/..", "/"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/a/...", "/a/..."),
            ("/a/.b/..c", "/a/.b/..c"),
            ("/café/../x", "/x"),
            ("/é", "/é"),
            ("/%", "/%"),
            ("/%z", "/%z"),
            ("/%zz%41", "/%zzA"),
            ("/%%41", "/%A"),
            ("/%+1", "/%+1"),
            ("/a%", "/a%"),
            ("/%é", "/%é"),
            ("/%4é", "/%4é"),
            ("a/b", "a/b"),
            ("./a", "a"),
            ("../a", "a"),
            (".", ""),
            ("..", ""),
            // A lone `%` that decoding would turn into a new triplet is escaped (found by the
            // property tests: normalizing `/%e%41` twice gave `/%EA`, and
            // `/p/%%32%65%%32%65/admin` gave `/p/%2e%2e/admin`, a dot-dot for the next decoder).
            ("/%e%41", "/%25eA"),
            ("/p/%%32%65%%32%65/admin", "/p/%252e%252e/admin"),
            ("/%%41%41", "/%25AA"),
            ("/%%41", "/%A"),
            ("/%%41x", "/%Ax"),
            ("/%2%65", "/%252e"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_path(input), expected, "{input}");
            assert_eq!(normalize_path(expected), expected, "{input} twice");
        }
    }

    #[test]
    fn service_paths() {
        for ok in [
            "/",
            "/api",
            "/a/b/",
            "/a%20b",
            "/a:b@c",
            "/!$&'()*+,;=",
            "/~u._-",
        ] {
            assert_eq!(service_path(ok), Ok(()), "{ok}");
        }
        assert_eq!(err(service_path("api")), "should start with: /");
        assert_eq!(err(service_path("")), "should start with: /");
        assert_eq!(err(service_path("/a//b")), "must not have empty segments");
        assert_eq!(
            err(service_path("/a b")),
            "invalid path: '/a b' (characters outside of the reserved list of RFC 3986 found)"
        );
        for bad in ["/a?b", "/a#b", "/é", "/[x]"] {
            assert!(
                err(service_path(bad)).starts_with("invalid path: "),
                "{bad}"
            );
        }
        assert_eq!(
            err(service_path("/a%zz")),
            "invalid url-encoded value: '%zz'"
        );
        assert_eq!(err(service_path("/a%2")), "invalid url-encoded value: '%2'");
        assert_eq!(err(service_path("/a%")), "invalid url-encoded value: '%'");
        assert_eq!(
            err(service_path("/%41%g1")),
            "invalid url-encoded value: '%g1'"
        );
    }

    #[test]
    fn http_methods() {
        for ok in ["GET", "POST", "PURGE"] {
            assert_eq!(http_method(ok), Ok(()));
        }
        assert_eq!(err(http_method("get")), "invalid value: get");
        for bad in ["", "GET ", "G-T", "GÉT"] {
            assert!(http_method(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_names() {
        for ok in ["X-Foo", "x_foo", "Accept", "a1"] {
            assert_eq!(header_name(ok), Ok(()));
        }
        assert_eq!(err(header_name("")), "no header name provided");
        assert_eq!(
            err(header_name("X Foo")),
            "bad header name 'X Foo', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
        );
        for bad in ["x:y", "x.y", "é", "x\n"] {
            assert!(header_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_value_patterns() {
        for ok in ["plain", "", "[not a regex", "~*^v[12]$", "~*", "~[x"] {
            assert_eq!(header_value_pattern(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            err(header_value_pattern("~*[")),
            "invalid regex: '[' (unclosed character class)"
        );
    }

    #[test]
    fn ips_and_cidrs() {
        for ok in [
            "10.0.0.1",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "10.0.0.1/32",
            "::1",
            "::/0",
            "2001:db8::/32",
            "::1/128",
        ] {
            assert_eq!(ip_or_cidr(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            err(ip_or_cidr("10.0.0.0/33")),
            "invalid ip or cidr range: '10.0.0.0/33'"
        );
        for bad in [
            "",
            "example.com",
            "10.0.0",
            "10.0.0.0/",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "10.0.0.0/8/9",
            "::1/129",
            "::1/1000",
            "[::1]",
            "/8",
        ] {
            assert!(ip_or_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_urls() {
        let url = |protocol: &str, host: &str, port: u16, path: Option<&str>| ServiceUrl {
            protocol: protocol.to_owned(),
            host: host.to_owned(),
            port,
            path: path.map(str::to_owned),
        };
        assert_eq!(
            service_url("http://example.com"),
            Ok(url("http", "example.com", 80, None))
        );
        assert_eq!(
            service_url("http://example.com/"),
            Ok(url("http", "example.com", 80, Some("/")))
        );
        assert_eq!(
            service_url("https://example.com/api/v1"),
            Ok(url("https", "example.com", 443, Some("/api/v1")))
        );
        assert_eq!(
            service_url("HTTPS://example.com:8443"),
            Ok(url("https", "example.com", 8443, None))
        );
        assert_eq!(
            service_url("grpcs://grpc.local"),
            Ok(url("grpcs", "grpc.local", 443, None))
        );
        assert_eq!(
            service_url("tls://db.local"),
            Ok(url("tls", "db.local", 443, None))
        );
        assert_eq!(
            service_url("tcp://db.local:5432"),
            Ok(url("tcp", "db.local", 5432, None))
        );
        assert_eq!(
            service_url("grpc://10.0.0.1"),
            Ok(url("grpc", "10.0.0.1", 80, None))
        );
        assert_eq!(
            service_url("http://[::1]:8080/x"),
            Ok(url("http", "::1", 8080, Some("/x")))
        );
        assert_eq!(
            service_url("tls_passthrough://h"),
            Ok(url("tls_passthrough", "h", 80, None))
        );
        assert_eq!(service_url("udp://h:53"), service_url("udp://h:53"));

        assert_eq!(
            err(service_url("ftp://example.com")),
            "unsupported protocol: ftp"
        );
        assert_eq!(
            err(service_url("example.com")),
            "invalid url: missing scheme (expected <protocol>://<host>)"
        );
        assert_eq!(
            err(service_url("://example.com")),
            "invalid url: missing scheme (expected <protocol>://<host>)"
        );
        assert_eq!(err(service_url("http://")), "invalid url: missing host");
        assert_eq!(
            err(service_url("http:///path")),
            "invalid url: missing host"
        );
        assert_eq!(err(service_url("http://:80")), "invalid url: missing host");
        assert_eq!(
            err(service_url("http://h:99999")),
            "invalid url: invalid port '99999'"
        );
        assert_eq!(
            err(service_url("http://h:")),
            "invalid url: invalid port ''"
        );
        assert_eq!(
            err(service_url("http://h:x/")),
            "invalid url: invalid port 'x'"
        );
        assert_eq!(
            err(service_url("http://u:p@h/")),
            "invalid url: credentials are not supported"
        );
        assert_eq!(
            err(service_url("http://h/p?q=1")),
            "invalid url: query strings and fragments are not supported"
        );
        assert_eq!(
            err(service_url("http://::1/")),
            "invalid url: IPv6 addresses must be enclosed in brackets"
        );
        assert_eq!(
            err(service_url("http://[::1/")),
            "invalid url: missing ']' after IPv6 address"
        );
        assert_eq!(
            err(service_url("http://[::1]x/")),
            "invalid url: unexpected 'x' after host"
        );
    }

    /// No validator may panic, whatever it is given.
    #[test]
    fn no_panics_on_odd_input() {
        let inputs = [
            "",
            "%",
            "%%",
            "%é",
            "é%",
            "[",
            "]",
            "[]",
            "[]:",
            "[:",
            ":",
            "::",
            ":::",
            "*",
            "**",
            "*.",
            ".*",
            "~",
            "~*",
            "~/",
            "/",
            "//",
            "/.",
            "/..",
            "é/..",
            "\u{0}",
            "a\u{0}b",
            "[é]:é",
            "é:é",
            "1.2.3.4:",
            "://",
            "a://[",
            "http://[",
            "http://é:é/é",
        ];
        for s in inputs {
            let _ = utf8_name(s);
            let _ = tag(s);
            let _ = host(s);
            let _ = host_with_optional_port(s);
            let _ = wildcard_host(s);
            let _ = sni_name(s);
            let _ = route_path(s);
            let _ = normalize_path(s);
            let _ = service_path(s);
            let _ = http_method(s);
            let _ = header_name(s);
            let _ = header_value_pattern(s);
            let _ = ip_or_cidr(s);
            let _ = service_url(s);
        }
    }
}
