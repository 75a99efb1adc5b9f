//! Request path normalization and the upstream path (Kong's `strip_path` / `path_handling`).

use std::borrow::Cow;

use gatehouse_shared::checks;

/// How the service path and the request path are joined (the route's `path_handling`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PathHandling {
    /// `v0` (the default): joined as path segments with one `/` between them; a result of `/`
    /// is kept, a trailing slash follows the request's.
    #[default]
    V0,
    /// `v1` (deprecated in Kong): the service path is a raw string prefix (`/s` + `/fv1/req`
    /// minus its first `/` gives `/sfv1/req`).
    V1,
}

// === impl PathHandling ===

impl PathHandling {
    /// `v1` is V1; anything else (`v0`, validated at compile time) is V0.
    pub(super) fn parse(value: &str) -> Self {
        if value == "v1" { Self::V1 } else { Self::V0 }
    }
}

/// The request path normalized as Kong does ([`checks::normalize_path`]): borrowed when it is
/// already normal, which is the common case (no `%`, no `//`, no dot segment).
pub(crate) fn normalize(path: &str) -> Cow<'_, str> {
    if is_normal(path) {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(checks::normalize_path(path))
    }
}

/// Whether [`checks::normalize_path`] would leave `path` as it is. False negatives only cost
/// an allocation; a false positive would be a bug (tested against the real thing).
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() == Some(&b'.') {
        return false;
    }
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => return false,
            b'/' => {
                let next = bytes.get(i + 1).copied();
                match next {
                    Some(b'/') => return false,
                    Some(b'.') => {
                        // `/.` or `/..`, followed by `/` or the end, is a dot segment.
                        let after = bytes.get(i + 2).copied();
                        match after {
                            None | Some(b'/') => return false,
                            Some(b'.') if matches!(bytes.get(i + 3), None | Some(b'/')) => {
                                return false;
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        i += 1;
    }
    true
}

/// The path sent upstream, by Kong's rules (`kong/router/utils.lua` `get_upstream_uri_v0` for
/// `v0`, the traditional router for `v1`).
///
/// - `service_path`: the service's `path` (`None`: `/`);
/// - `matched`: the part of the request path the route's path matched (the prefix path, or the
///   whole regex match); `None` for a route matched without paths. Used only with `strip_path`;
/// - `request_path`: the normalized request path, without query string.
///
/// With service path `/s`: route `/tv0`, strip, `/tv0/req` → `/s/req`; `/tv0` → `/s`; route
/// `/fv0` without strip, `/fv0/req` → `/s/fv0/req`; `v1` route `/fv1` without strip,
/// `/fv1/req` → `/sfv1/req`.
pub fn upstream_path(
    service_path: Option<&str>,
    matched: Option<&str>,
    request_path: &str,
    strip_path: bool,
    handling: PathHandling,
) -> String {
    let base = service_path.filter(|p| !p.is_empty()).unwrap_or("/");
    // Without a path match Kong takes the whole request path after its first character.
    let after_first = request_path
        .char_indices()
        .nth(1)
        .map_or("", |(at, _)| request_path.get(at..).unwrap_or(""));
    let postfix = match matched.filter(|_| strip_path) {
        Some(prefix) => sanitize_postfix(request_path.get(prefix.len()..).unwrap_or("")),
        None => sanitize_postfix(after_first),
    };
    match handling {
        PathHandling::V0 => join_v0(base, postfix, request_path, after_first, strip_path),
        PathHandling::V1 if strip_path => match (base.strip_suffix('/'), postfix) {
            (Some(trimmed), p) if p.starts_with('/') => concat(&[trimmed, p]),
            _ => concat(&[base, postfix]),
        },
        PathHandling::V1 => concat(&[base, after_first]),
    }
}

/// `get_upstream_uri_v0`, line for line.
fn join_v0(
    base: &str,
    postfix: &str,
    request_path: &str,
    after_first: &str,
    strip_path: bool,
) -> String {
    if let Some(trimmed) = base.strip_suffix('/') {
        if !strip_path {
            // Keep the whole request path, after the service path's own slash.
            return concat(&[base, after_first]);
        }
        if postfix.is_empty() {
            if base == "/" || request_path.ends_with('/') {
                return base.to_owned();
            }
            return trimmed.to_owned();
        }
        if postfix.starts_with('/') {
            return concat(&[trimmed, postfix]);
        }
        return concat(&[base, postfix]);
    }
    if !strip_path {
        if request_path == "/" {
            return base.to_owned();
        }
        return concat(&[base, request_path]);
    }
    if postfix.is_empty() {
        if request_path.len() > 1 && request_path.ends_with('/') {
            return concat(&[base, "/"]);
        }
        return base.to_owned();
    }
    if postfix.starts_with('/') {
        return concat(&[base, postfix]);
    }
    concat(&[base, "/", postfix])
}

/// Kong's `sanitize_uri_postfix`: what follows a stripped prefix never starts with a dot
/// segment.
fn sanitize_postfix(postfix: &str) -> &str {
    if postfix == "." || postfix == ".." {
        return "";
    }
    postfix
        .strip_prefix("./")
        .or_else(|| postfix.strip_prefix("../"))
        .unwrap_or(postfix)
}

fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.push_str(part);
    }
    out
}
