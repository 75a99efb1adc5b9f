//! Property tests of the body decoder: arbitrary bytes under every media type never panic, a
//! JSON object written as a form or multipart body in Kong's conventions decodes back to
//! itself, and invalid UTF-8 is an error.
//!
//! Case counts are proptest's default (256 per property) so the whole file runs in a few
//! seconds; raise them with `PROPTEST_CASES=100000` for a longer run.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use http::HeaderValue;
use proptest::prelude::*;
use serde_json::{Map, Value};

use super::*;

/// What a form body can say: string leaves, non-empty lists of strings, non-empty objects.
/// (An empty list or object has no form encoding: `a=` is the empty string.)
#[derive(Debug, Clone)]
enum Node {
    Str(String),
    List(Vec<String>),
    Obj(BTreeMap<String, Node>),
}

impl Node {
    fn to_json(&self) -> Value {
        match self {
            Self::Str(s) => Value::String(s.clone()),
            Self::List(items) => Value::Array(items.iter().cloned().map(Value::String).collect()),
            Self::Obj(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }
}

/// How a generated document is written on the wire.
#[derive(Debug, Clone, Copy)]
struct Style {
    /// `a[b]` rather than `a.b` for nested keys.
    brackets: bool,
    /// `+` rather than `%20` for a space (urlencoded).
    plus: bool,
    /// A list of two or more as a repeated plain key (`a=1&a=2`) rather than `a[]=1&a[]=2`.
    repeat: bool,
    /// Multipart: top-level objects as one `application/json` part.
    json_parts: bool,
}

/// Keys: anything but the characters of the key syntax (`.`, `[`, `]`) and NUL, including
/// characters the encodings must escape.
fn key() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_~ é名&=+%/:;-]{1,8}"
}

/// Values: any text without NUL (control characters, CR/LF, `%`, `+`, `&`, non-ASCII).
fn text() -> impl Strategy<Value = String> {
    "[^\\x00]{0,24}"
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        text().prop_map(Node::Str),
        prop::collection::vec(text(), 1..4).prop_map(Node::List),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop::collection::btree_map(key(), inner, 1..4).prop_map(Node::Obj)
    })
}

fn document() -> impl Strategy<Value = BTreeMap<String, Node>> {
    prop::collection::btree_map(key(), node(), 0..6)
}

fn style() -> impl Strategy<Value = Style> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(brackets, plus, repeat, json_parts)| Style {
            brackets,
            plus,
            repeat,
            json_parts,
        },
    )
}

/// The (key, value) arguments of `node` at `path`, in Kong's form conventions.
fn arguments(path: &str, node: &Node, style: Style, out: &mut Vec<(String, String)>) {
    match node {
        Node::Str(s) => out.push((path.to_owned(), s.clone())),
        Node::List(items) if style.repeat && items.len() > 1 => {
            out.extend(items.iter().map(|item| (path.to_owned(), item.clone())));
        }
        Node::List(items) => {
            out.extend(items.iter().map(|item| (format!("{path}[]"), item.clone())))
        }
        Node::Obj(map) => {
            for (key, inner) in map {
                let nested = if style.brackets {
                    format!("{path}[{key}]")
                } else {
                    format!("{path}.{key}")
                };
                arguments(&nested, inner, style, out);
            }
        }
    }
}

/// Percent-encodes one component as `application/x-www-form-urlencoded`.
fn urlencode(s: &str, plus: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            b' ' if plus => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn urlencoded(doc: &BTreeMap<String, Node>, style: Style) -> Vec<u8> {
    let mut args = Vec::new();
    for (key, node) in doc {
        arguments(key, node, style, &mut args);
    }
    args.iter()
        .map(|(k, v)| format!("{}={}", urlencode(k, style.plus), urlencode(v, style.plus)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

const BOUNDARY: &str = "gatehouse-proptest-boundary-7d1c";

fn part(out: &mut Vec<u8>, name: &str, content_type: Option<&str>, data: &str) {
    out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
    // curl sends a `"` in a name as `%22`, which is no key character here; names are otherwise
    // sent as raw UTF-8.
    assert!(!name.contains('"'));
    out.extend_from_slice(
        format!("Content-Disposition: form-data; name=\"{name}\"\r\n").as_bytes(),
    );
    if let Some(ct) = content_type {
        out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn multipart(doc: &BTreeMap<String, Node>, style: Style) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, node) in doc {
        if style.json_parts && matches!(node, Node::Obj(_)) {
            part(
                &mut out,
                key,
                Some("application/json"),
                &node.to_json().to_string(),
            );
            continue;
        }
        let mut args = Vec::new();
        arguments(key, node, style, &mut args);
        for (name, value) in args {
            part(&mut out, &name, None, &value);
        }
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn run(
    rt: &tokio::runtime::Runtime,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Body, BodyError> {
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type.and_then(|ct| HeaderValue::from_str(ct).ok()) {
        headers.insert(CONTENT_TYPE, ct);
    }
    rt.block_on(decode(&headers, Bytes::copy_from_slice(body)))
}

/// What a successful decode must look like whatever the input: an object (NUL characters are
/// refused later, by schema validation, naming the field), and an error is a 4xx with a message.
fn check_outcome(result: Result<Body, BodyError>) -> Result<(), TestCaseError> {
    match result {
        Ok(body) => {
            prop_assert!(body.value.is_object());
        }
        Err(e) => {
            prop_assert!(e.status().is_client_error());
            prop_assert!(!e.message().is_empty());
        }
    }
    Ok(())
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("application/x-www-form-urlencoded".to_owned())),
        Just(Some("multipart/form-data; boundary=b".to_owned())),
        Just(Some(format!("multipart/form-data; boundary={BOUNDARY}"))),
        Just(Some("multipart/form-data".to_owned())),
        "[ -~]{0,40}".prop_map(Some),
    ]
}

/// Bytes that look like form or multipart syntax more often than uniform noise does.
fn syntax_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        Just(b"--b\r\n".to_vec()),
        Just(b"--b--\r\n".to_vec()),
        Just(b"\r\n\r\n".to_vec()),
        Just(b"Content-Disposition: form-data; name=\"".to_vec()),
        Just(b"Content-Type: application/json\r\n".to_vec()),
        Just(b"\"; filename=\"f\"\r\n".to_vec()),
        Just(b"a.b[c][]".to_vec()),
        Just(b"%00".to_vec()),
        Just(b"%FF".to_vec()),
        Just(b"&".to_vec()),
        Just(b"=".to_vec()),
        Just(b"{\"a\":".to_vec()),
        Just(b"[".to_vec()),
        Just(b"]".to_vec()),
    ];
    prop::collection::vec(token, 0..48).prop_map(|tokens| tokens.concat())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(ct in content_type(), body in prop::collection::vec(any::<u8>(), 0..512)) {
        let rt = runtime();
        check_outcome(run(&rt, ct.as_deref(), &body))?;
    }

    #[test]
    fn form_and_multipart_syntax_never_panics(ct in content_type(), body in syntax_bytes()) {
        let rt = runtime();
        check_outcome(run(&rt, ct.as_deref(), &body))?;
    }

    #[test]
    fn urlencoded_round_trip(doc in document(), style in style()) {
        let rt = runtime();
        let body = urlencoded(&doc, style);
        let decoded = run(&rt, Some("application/x-www-form-urlencoded"), &body)
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&body))))?;
        prop_assert_eq!(decoded.encoding, Encoding::Form);
        let expected = Node::Obj(doc).to_json();
        prop_assert_eq!(decoded.value, expected);
    }

    #[test]
    fn multipart_round_trip(doc in document(), style in style()) {
        let rt = runtime();
        let body = multipart(&doc, style);
        let ct = format!("multipart/form-data; boundary={BOUNDARY}");
        let decoded = run(&rt, Some(&ct), &body)
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&body))))?;
        prop_assert_eq!(decoded.encoding, Encoding::Form);
        let expected = Node::Obj(doc).to_json();
        prop_assert_eq!(decoded.value, expected);
    }

    #[test]
    fn json_objects_round_trip(doc in document()) {
        let rt = runtime();
        let expected = Node::Obj(doc).to_json();
        let body = expected.to_string();
        for ct in [Some("application/json"), None] {
            let decoded = run(&rt, ct, body.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
            prop_assert_eq!(decoded.encoding, Encoding::Json);
            prop_assert_eq!(&decoded.value, &expected);
        }
    }

    /// One bad byte sequence anywhere in an otherwise valid body: an error that is a 400,
    /// never a value with U+FFFD in it. (A NUL decodes; schema validation refuses it with the
    /// field named, see `tests/tests/bad_inputs.rs`.)
    #[test]
    fn invalid_utf8_is_an_error(
        doc in document(),
        style in style(),
        bad in prop_oneof![
            Just(&b"%FF"[..]), Just(&b"%C3%28"[..]), Just(&b"%E2%82"[..]), Just(&b"%ED%A0%80"[..]),
            Just(&b"\xff"[..]), Just(&b"\xc0\xaf"[..]),
        ],
        in_key in any::<bool>(),
        at in any::<prop::sample::Index>(),
    ) {
        let rt = runtime();
        let mut body = urlencoded(&doc, style);
        // A new argument spliced in at a pair boundary, the bad bytes in its key or value.
        let arg = if in_key {
            [&b"k"[..], bad, b"=v"].concat()
        } else {
            [&b"k="[..], bad].concat()
        };
        let boundaries: Vec<usize> = std::iter::once(0)
            .chain(body.iter().enumerate().filter(|(_, b)| **b == b'&').map(|(i, _)| i + 1))
            .collect();
        let pos = boundaries[at.index(boundaries.len())];
        body.splice(pos..pos, [arg, b"&".to_vec()].concat());
        let e = run(&rt, Some("application/x-www-form-urlencoded"), &body);
        prop_assert!(matches!(&e, Err(e) if e.status() == StatusCode::BAD_REQUEST), "{:?}", e);

        // The same value as a multipart part (raw bytes) or inside a JSON body.
        let raw: &[u8] = match bad {
            b"%FF" => b"\xff",
            b"%C3%28" => b"\xc3\x28",
            b"%E2%82" => b"\xe2\x82",
            b"%ED%A0%80" => b"\xed\xa0\x80",
            other => other,
        };
        let mut mp = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n").into_bytes();
        mp.extend_from_slice(raw);
        mp.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
        let ct = format!("multipart/form-data; boundary={BOUNDARY}");
        let e = run(&rt, Some(&ct), &mp);
        prop_assert!(matches!(&e, Err(e) if e.status() == StatusCode::BAD_REQUEST), "{:?}", e);
    }
}
