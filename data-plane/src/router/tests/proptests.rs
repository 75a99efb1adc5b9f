//! Property tests of request path normalization (`checks::normalize_path` and the router's
//! borrowed fast path): no panic, idempotent, always absolute for an absolute input, no dot
//! segment left and none that climbs above the root.
//!
//! Case counts are proptest's default (256 per property); `PROPTEST_CASES=100000` for more.

use proptest::prelude::*;

use super::*;

/// Paths built from the pieces that matter to normalization, after a leading `/`.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/"),
        Just("//"),
        Just("."),
        Just(".."),
        Just("/./"),
        Just("/../"),
        Just("%2e"),
        Just("%2E"),
        Just("%2f"),
        Just("%2F"),
        Just("%25"),
        Just("%"),
        Just("%%"),
        Just("2"),
        Just("e"),
        Just("5"),
        Just("3"),
        Just("a"),
        Just("b"),
        Just("%41"),
        Just("%7e"),
        Just("~"),
        Just("é"),
        Just("%C3%A9"),
        Just("?"),
        Just(";"),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| format!("/{}", pieces.concat()))
}

/// One character of a path as a URI means it: a %-triplet's byte, or a literal character
/// (a `%` that starts no triplet included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Encoded(u8),
    Literal(char),
}

fn tokens(s: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = s.char_indices();
    while let Some((at, c)) = chars.next() {
        let triplet = (c == '%')
            .then(|| s.get(at + 1..at + 3))
            .flatten()
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match triplet {
            Some(byte) => {
                out.push(Token::Encoded(byte));
                chars.next();
                chars.next();
            }
            None => out.push(Token::Literal(c)),
        }
    }
    out
}

/// The bytes of a segment once fully decoded.
fn bytes(segment: &[Token]) -> Vec<u8> {
    let mut out = Vec::new();
    for token in segment {
        match *token {
            Token::Encoded(b) => out.push(b),
            Token::Literal(c) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

/// The model: what the path means, as the decoded bytes of its segments after RFC 3986 §5.2.4
/// dot-segment removal (a dot may be written `%2e`; `%2F` is no separator) with empty
/// segments dropped.
fn meaning(path: &str) -> Vec<Vec<u8>> {
    let tokens = tokens(path);
    let mut stack: Vec<Vec<u8>> = Vec::new();
    for segment in tokens.split(|t| *t == Token::Literal('/')) {
        let decoded = bytes(segment);
        let dots = segment
            .iter()
            .all(|t| matches!(t, Token::Literal('.') | Token::Encoded(b'.')));
        match (dots, decoded.len()) {
            (_, 0) | (true, 1) => {}
            (true, 2) => {
                stack.pop();
            }
            _ => stack.push(decoded),
        }
    }
    stack
}

fn check(path: &str) -> Result<(), TestCaseError> {
    let once = normalize_path(path);
    prop_assert_eq!(
        &normalize_path(&once),
        &once,
        "not idempotent for {:?}",
        path
    );
    let fast = path::normalize(path);
    prop_assert_eq!(fast.as_ref(), once.as_str(), "fast path disagrees");
    if path.starts_with('/') {
        prop_assert!(once.starts_with('/'), "{:?} -> {:?}", path, once);
        prop_assert!(!once.contains("//"), "{:?} -> {:?}", path, once);
        let segments: Vec<&str> = once.split('/').filter(|s| !s.is_empty()).collect();
        prop_assert!(
            segments.iter().all(|s| *s != "." && *s != ".."),
            "{:?} -> {:?}",
            path,
            once
        );
        // Same meaning, and (with no dot segment left) nothing above the root.
        prop_assert_eq!(meaning(&once), meaning(path), "{:?} -> {:?}", path, once);
    }
    Ok(())
}

proptest! {
    #[test]
    fn normalization_of_tricky_paths(path in tricky_path()) {
        check(&path)?;
    }

    #[test]
    fn normalization_of_arbitrary_strings(path in any::<String>()) {
        check(&path)?;
        check(&format!("/{path}"))?;
    }

    /// Whatever the request path, the upstream path is computed without a panic and, for a
    /// normalized absolute request path and an absolute service path, is absolute.
    #[test]
    fn upstream_path_never_panics(
        service in prop::option::of("/[a-z/.]{0,8}"),
        request in tricky_path(),
        prefix_len in 0usize..12,
        strip in any::<bool>(),
        v1 in any::<bool>(),
    ) {
        let request = normalize_path(&request);
        let matched = request.get(..prefix_len.min(request.len()));
        let handling = if v1 { PathHandling::V1 } else { PathHandling::V0 };
        let upstream = upstream_path(service.as_deref(), matched, &request, strip, handling);
        prop_assert!(upstream.starts_with('/'), "{:?}", upstream);
    }
}
