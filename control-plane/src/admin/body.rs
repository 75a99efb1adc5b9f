//! Admin API request-body decoding (Kong `kong/api/arguments.lua` and `arguments_decoder.lua`).
//!
//! Turns a POST/PUT/PATCH body into a JSON object, whatever its encoding:
//!
//! - `application/json` must be a JSON object and is used as-is ([`Encoding::Json`]).
//! - `application/x-www-form-urlencoded` and `multipart/form-data` carry only strings, so they
//!   come back as [`Encoding::Form`]: the schema layer then coerces leaves by field type
//!   (`"10"` → 10, `"true"` → true, `""` → null, a lone string → a one-item list, a map with
//!   numeric keys → a list).
//!
//! Form keys follow Kong's syntax: dots and brackets nest (`config.allow`, `config[limit]`,
//! `config.hosts[1]`), `[]` appends to a list, and a repeated key collects its values into a
//! list. Bodies are untrusted network input, so nothing here panics; key paths are depth-capped
//! and argument counts limited to [`MAX_ARGUMENTS`].

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use percent_encoding::percent_decode;
use serde_json::{Map, Value};

/// Most arguments a form body may carry; Kong (nginx `get_post_args`) stops at 1000.
pub(crate) const MAX_ARGUMENTS: usize = 1000;

/// Most segments in a form key (`a.b[c]` has three). Kong entities nest a few levels at most;
/// the cap keeps an adversarial key from building a value deep enough to overflow the stack when
/// it is later dropped, merged or serialized. Deeper keys are kept as one literal key, which the
/// schema layer then rejects as an unknown field.
const MAX_KEY_DEPTH: usize = 32;

/// How the body was encoded: form bodies carry only strings and need type coercion by schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `application/json` (or a bare `{…}` body without Content-Type): typed values, used as-is.
    Json,
    /// `application/x-www-form-urlencoded` or `multipart/form-data`: string leaves (plus the
    /// JSON values of `application/json` multipart parts), to be coerced by the schema.
    Form,
}

/// A decoded request body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Body {
    /// The decoded arguments; always a JSON object (empty when the request had no body).
    pub(crate) value: Value,
    /// How [`Body::value`] was encoded on the wire.
    pub(crate) encoding: Encoding,
}

/// Why a request body could not be decoded. Map it to a response with [`BodyError::status`]
/// and `{"message": BodyError::message()}`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The media type is none of JSON, urlencoded form or multipart form (HTTP 415).
    #[error("Unsupported Content-Type")]
    UnsupportedMediaType,
    /// A JSON body (or `application/json` multipart part) is malformed or not an object.
    #[error("Cannot parse JSON body")]
    InvalidJson,
    /// A urlencoded form argument is not valid UTF-8 once decoded (it is refused rather than
    /// altered: a name or key silently changed would be stored as something else).
    #[error("Cannot parse form body: {0}")]
    InvalidForm(String),
    /// The form has more than [`MAX_ARGUMENTS`] arguments.
    #[error("Too many arguments")]
    TooManyArguments,
    /// The multipart body is malformed; the string says why.
    #[error("Cannot parse multipart body: {0}")]
    InvalidMultipart(String),
    /// The request carries more than one Content-Type header.
    #[error("Request has multiple Content-Type headers")]
    DuplicateContentType,
}

/// One step of a form key path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment<'a> {
    /// `name`, `.name` or `[name]`: a member of an object (numeric names included).
    Key(&'a str),
    /// `[]`: append to a list; only valid as the last segment.
    Append,
}

/// The media type named by the Content-Type header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaType {
    Absent,
    Json,
    UrlEncoded,
    Multipart,
    Other,
}

// === impl BodyError ===

impl BodyError {
    /// The text for the `message` member of the error response.
    pub(crate) fn message(&self) -> String {
        self.to_string()
    }

    /// The HTTP status to answer with: 415 for an unsupported media type, 400 otherwise.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidJson
            | Self::InvalidForm(_)
            | Self::TooManyArguments
            | Self::InvalidMultipart(_)
            | Self::DuplicateContentType => StatusCode::BAD_REQUEST,
        }
    }
}

// === impl MediaType ===

impl MediaType {
    /// Classifies a Content-Type value by its essence, ignoring parameters and case.
    fn parse(value: &str) -> Self {
        let essence = value.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case("application/json") {
            Self::Json
        } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            Self::UrlEncoded
        } else if essence.eq_ignore_ascii_case("multipart/form-data") {
            Self::Multipart
        } else {
            Self::Other
        }
    }

    /// The encoding a body of this media type yields.
    fn encoding(self) -> Encoding {
        match self {
            Self::UrlEncoded | Self::Multipart => Encoding::Form,
            Self::Absent | Self::Json | Self::Other => Encoding::Json,
        }
    }
}

/// Decodes an Admin API request body according to its Content-Type.
///
/// - More than one Content-Type header is rejected first, body or not.
/// - An empty body is an empty object whatever the Content-Type (or none); its encoding follows
///   the media type (`Form` for the form types, `Json` otherwise).
/// - Without Content-Type, a body starting with `{` (after whitespace) is parsed as JSON; any
///   other body is an unsupported media type.
/// - JSON must be an object; form bodies are decoded with [`MAX_ARGUMENTS`] and the key rules
///   in the module docs. YAML and every other media type are unsupported.
pub(crate) async fn decode(headers: &HeaderMap, body: Bytes) -> Result<Body, BodyError> {
    let mut content_types = headers.get_all(CONTENT_TYPE).iter();
    let content_type = content_types.next();
    if content_types.next().is_some() {
        return Err(BodyError::DuplicateContentType);
    }
    // A value with bytes outside visible ASCII cannot name a media type we accept.
    let content_type = content_type.map(|v| v.to_str().unwrap_or_default());
    let media_type = content_type.map_or(MediaType::Absent, MediaType::parse);

    if body.is_empty() {
        return Ok(Body {
            value: Value::Object(Map::new()),
            encoding: media_type.encoding(),
        });
    }

    let value = match media_type {
        MediaType::Json => decode_json(&body)?,
        MediaType::Absent if body.trim_ascii_start().starts_with(b"{") => decode_json(&body)?,
        MediaType::UrlEncoded => decode_urlencoded(&body)?,
        MediaType::Multipart => decode_multipart(content_type.unwrap_or_default(), body).await?,
        MediaType::Absent | MediaType::Other => return Err(BodyError::UnsupportedMediaType),
    };
    Ok(Body {
        value,
        encoding: media_type.encoding(),
    })
}

/// Parses a JSON body that must be an object. serde_json's recursion limit bounds nesting.
fn decode_json(body: &[u8]) -> Result<Value, BodyError> {
    match serde_json::from_slice(body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) | Err(_) => Err(BodyError::InvalidJson),
    }
}

/// Decodes `application/x-www-form-urlencoded`: `&`-separated `key=value` pairs, `+` as space,
/// then percent-decoding (so `%5B`/`%5D` act as brackets and `%2B` is a literal `+`).
///
/// Empty pairs (`a=1&&b=2`) are skipped and not counted; a pair without `=` has an empty value,
/// as in the WHATWG form decoder; a pair with an empty key is counted but ignored. A key or
/// value that is not valid UTF-8 once decoded is refused.
fn decode_urlencoded(body: &[u8]) -> Result<Value, BodyError> {
    let mut root = Map::new();
    let mut count = 0;
    for pair in body.split(|&b| b == b'&').filter(|pair| !pair.is_empty()) {
        count += 1;
        if count > MAX_ARGUMENTS {
            return Err(BodyError::TooManyArguments);
        }
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        let not_utf8 = || BodyError::InvalidForm(format!("argument #{count} is not valid UTF-8"));
        let key = form_component(key).ok_or_else(not_utf8)?;
        if key.is_empty() {
            continue;
        }
        let value = form_component(value).ok_or_else(not_utf8)?;
        insert(&mut root, &key, Value::String(value));
    }
    Ok(Value::Object(root))
}

/// Decodes one urlencoded component: `+` → space, then percent-decoding. A `%` not followed by
/// two hex digits is kept literally. `None` when the result is not UTF-8.
fn form_component(raw: &[u8]) -> Option<String> {
    let spaced: Cow<'_, [u8]> = if raw.contains(&b'+') {
        Cow::Owned(
            raw.iter()
                .map(|&b| if b == b'+' { b' ' } else { b })
                .collect(),
        )
    } else {
        Cow::Borrowed(raw)
    };
    percent_decode(&spaced)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// Decodes `multipart/form-data`. Each part's name is a form key (same rules as urlencoded) and
/// its bytes are the value as a UTF-8 string, file part or not; a part whose Content-Type is
/// `application/json` is parsed and inserted as that JSON value. A part without a name is
/// malformed; a part with an empty name is counted but ignored.
async fn decode_multipart(content_type: &str, body: Bytes) -> Result<Value, BodyError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| BodyError::InvalidMultipart(e.to_string()))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);

    let mut root = Map::new();
    let mut count = 0;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| BodyError::InvalidMultipart(e.to_string()))?
    {
        count += 1;
        if count > MAX_ARGUMENTS {
            return Err(BodyError::TooManyArguments);
        }
        let Some(name) = field.name().map(str::to_owned) else {
            return Err(BodyError::InvalidMultipart(format!(
                "part #{count} has no name in its Content-Disposition"
            )));
        };
        let is_json = field
            .content_type()
            .is_some_and(|mime| mime.essence_str() == "application/json");
        let data = field
            .bytes()
            .await
            .map_err(|e| BodyError::InvalidMultipart(e.to_string()))?;
        if name.is_empty() {
            continue;
        }
        let value = if is_json {
            serde_json::from_slice(&data).map_err(|_| BodyError::InvalidJson)?
        } else {
            match String::from_utf8(data.to_vec()) {
                Ok(text) => Value::String(text),
                Err(_) => {
                    return Err(BodyError::InvalidMultipart(format!(
                        "part {name:?} is not valid UTF-8"
                    )));
                }
            }
        };
        insert(&mut root, &name, value);
    }
    Ok(Value::Object(root))
}

/// Splits a form key into segments: a leading name, then any mix of `.name`, `[name]` and a
/// final `[]`. Bracket contents are taken literally (`[a.b]` is the key `a.b`).
///
/// Returns `None` for keys outside that syntax (empty segments as in `a..b` or `[x]`, an
/// unclosed `[`, text right after `]`, `[]` before the end, more than [`MAX_KEY_DEPTH`]
/// segments); the caller then uses the whole key as one literal name.
fn parse_key(key: &str) -> Option<Vec<Segment<'_>>> {
    let head_end = key.find(['.', '[']).unwrap_or(key.len());
    let (head, mut rest) = key.split_at(head_end);
    if head.is_empty() {
        return None;
    }
    let mut segments = vec![Segment::Key(head)];
    while !rest.is_empty() {
        if segments.contains(&Segment::Append) || segments.len() >= MAX_KEY_DEPTH {
            return None;
        }
        if let Some(after_dot) = rest.strip_prefix('.') {
            let end = after_dot.find(['.', '[']).unwrap_or(after_dot.len());
            let (name, tail) = after_dot.split_at(end);
            if name.is_empty() {
                return None;
            }
            segments.push(Segment::Key(name));
            rest = tail;
        } else if let Some(after_bracket) = rest.strip_prefix('[') {
            let close = after_bracket.find(']')?;
            let (name, tail) = after_bracket.split_at(close);
            if name.contains('[') {
                return None;
            }
            segments.push(if name.is_empty() {
                Segment::Append
            } else {
                Segment::Key(name)
            });
            // `tail` starts with the `]` found above.
            rest = tail.get(1..).unwrap_or_default();
            if !rest.is_empty() && !rest.starts_with(['.', '[']) {
                return None;
            }
        } else {
            return None;
        }
    }
    Some(segments)
}

/// Inserts one argument into the form object, nesting by its key path and merging with what
/// earlier arguments built (see [`merge`]).
fn insert(root: &mut Map<String, Value>, key: &str, value: Value) {
    let segments = parse_key(key).unwrap_or_else(|| vec![Segment::Key(key)]);
    let mut nested = value;
    let mut top = None;
    for (i, segment) in segments.iter().enumerate().rev() {
        match *segment {
            Segment::Append => nested = Value::Array(vec![nested]),
            Segment::Key(name) if i == 0 => top = Some(name),
            Segment::Key(name) => {
                let mut object = Map::new();
                object.insert(name.to_owned(), nested);
                nested = Value::Object(object);
            }
        }
    }
    // `parse_key` always starts with a key segment, and the fallback is a single key.
    let Some(top) = top else { return };
    match root.get_mut(top) {
        Some(slot) => merge(slot, nested),
        None => {
            root.insert(top.to_owned(), nested);
        }
    }
}

/// Merges a newly decoded value into an existing one, deterministically:
///
/// - object + object: merged key by key, recursively;
/// - an object always wins over a string or list at the same key, in either order, so
///   `a=1&a.b=2` and `a.b=2&a=1` both give `{"a":{"b":"2"}}`;
/// - otherwise values accumulate into a list in arrival order (`hosts=a&hosts=b`,
///   `hosts[]=a&hosts[]=b` and `hosts=a&hosts[]=b` all give `["a","b"]`).
///
/// Recursion depth is bounded by the shallower of the two values: at most [`MAX_KEY_DEPTH`]
/// plus serde_json's nesting limit for a JSON part.
fn merge(slot: &mut Value, incoming: Value) {
    match (slot, incoming) {
        (Value::Object(existing), Value::Object(incoming)) => {
            for (key, value) in incoming {
                match existing.get_mut(&key) {
                    Some(inner) => merge(inner, value),
                    None => {
                        existing.insert(key, value);
                    }
                }
            }
        }
        (Value::Object(_), _) => {}
        (slot, incoming @ Value::Object(_)) => *slot = incoming,
        (Value::Array(existing), Value::Array(incoming)) => existing.extend(incoming),
        (Value::Array(existing), incoming) => existing.push(incoming),
        (slot, Value::Array(incoming)) => {
            let mut items = Vec::with_capacity(incoming.len() + 1);
            items.push(slot.take());
            items.extend(incoming);
            *slot = Value::Array(items);
        }
        (slot, incoming) => *slot = Value::Array(vec![slot.take(), incoming]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\n\
        MIIBszCCAVmgAwIBAgIU+Zq/3Xb==\n\
        a+b/c=d+/==\n\
        -----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\n\
        MIGHAgEAMBMGByqGSM49+AgEG/CCqGSM49AwEHBG0wawIBAQQg==\n\
        -----END PRIVATE KEY-----\n";

    fn headers(content_type: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        headers
    }

    async fn run(content_type: Option<&str>, body: &[u8]) -> Result<Body, BodyError> {
        decode(&headers(content_type), Bytes::copy_from_slice(body)).await
    }

    async fn ok(content_type: Option<&str>, body: &[u8]) -> Body {
        match run(content_type, body).await {
            Ok(body) => body,
            Err(e) => panic!("decode failed: {e}"),
        }
    }

    async fn err(content_type: Option<&str>, body: &[u8]) -> BodyError {
        match run(content_type, body).await {
            Ok(body) => panic!("decode succeeded: {body:?}"),
            Err(e) => e,
        }
    }

    async fn form(body: &str) -> Value {
        let decoded = ok(Some("application/x-www-form-urlencoded"), body.as_bytes()).await;
        assert_eq!(decoded.encoding, Encoding::Form);
        decoded.value
    }

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    /// Builds a multipart body; each part is (headers after Content-Disposition's name, data).
    fn multipart(boundary: &str, parts: &[(&str, &str)]) -> Vec<u8> {
        let mut out = String::new();
        for (head, data) in parts {
            out.push_str(&format!("--{boundary}\r\n{head}\r\n\r\n{data}\r\n"));
        }
        out.push_str(&format!("--{boundary}--\r\n"));
        out.into_bytes()
    }

    async fn multipart_ok(boundary: &str, parts: &[(&str, &str)]) -> Value {
        let ct = format!("multipart/form-data; boundary={boundary}");
        let decoded = ok(Some(&ct), &multipart(boundary, parts)).await;
        assert_eq!(decoded.encoding, Encoding::Form);
        decoded.value
    }

    async fn multipart_err(boundary: &str, parts: &[(&str, &str)]) -> BodyError {
        let ct = format!("multipart/form-data; boundary={boundary}");
        err(Some(&ct), &multipart(boundary, parts)).await
    }

    // --- content types and empty bodies ---

    #[tokio::test]
    async fn empty_body_is_empty_object_whatever_the_content_type() {
        for ct in [
            None,
            Some("application/json"),
            Some("text/plain"),
            Some("application/xml"),
        ] {
            let body = ok(ct, b"").await;
            assert_eq!(body.value, json!({}), "{ct:?}");
            assert_eq!(body.encoding, Encoding::Json, "{ct:?}");
        }
        for ct in [FORM, Some("multipart/form-data")] {
            let body = ok(ct, b"").await;
            assert_eq!(body.value, json!({}), "{ct:?}");
            assert_eq!(body.encoding, Encoding::Form, "{ct:?}");
        }
    }

    #[tokio::test]
    async fn json_object_is_used_as_is() {
        let body = ok(
            Some("application/json"),
            br#"{"name":"svc","port":8080,"enabled":true,"tags":["a"],"x":null}"#,
        )
        .await;
        assert_eq!(body.encoding, Encoding::Json);
        assert_eq!(
            body.value,
            json!({"name":"svc","port":8080,"enabled":true,"tags":["a"],"x":null})
        );
    }

    #[tokio::test]
    async fn json_charset_parameter_and_case_are_accepted() {
        for ct in [
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "Application/JSON",
            "  application/json ; charset=utf-8",
        ] {
            assert_eq!(
                ok(Some(ct), br#"{"a":1}"#).await.value,
                json!({"a":1}),
                "{ct}"
            );
        }
        let body = ok(
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            b"a=1",
        )
        .await;
        assert_eq!(body.value, json!({"a":"1"}));
    }

    #[tokio::test]
    async fn json_must_be_an_object() {
        for body in [
            &b"[1,2]"[..],
            b"{bad",
            b"\"str\"",
            b"42",
            b"null",
            b"{\"a\":1} x",
        ] {
            let e = err(Some("application/json"), body).await;
            assert!(matches!(e, BodyError::InvalidJson), "{body:?}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert_eq!(e.message(), "Cannot parse JSON body");
        }
    }

    #[tokio::test]
    async fn deeply_nested_json_is_rejected_not_overflowed() {
        let deep = "{\"a\":".repeat(100_000);
        let e = err(Some("application/json"), deep.as_bytes()).await;
        assert!(matches!(e, BodyError::InvalidJson));
    }

    #[tokio::test]
    async fn missing_content_type_sniffs_json_objects_only() {
        let body = ok(None, b" \n{\"a\":1}").await;
        assert_eq!(
            (body.value, body.encoding),
            (json!({"a":1}), Encoding::Json)
        );
        assert!(matches!(err(None, b"{bad").await, BodyError::InvalidJson));
        assert!(matches!(
            err(None, b"a=1").await,
            BodyError::UnsupportedMediaType
        ));
        assert!(matches!(
            err(None, b"[1]").await,
            BodyError::UnsupportedMediaType
        ));
    }

    #[tokio::test]
    async fn other_media_types_are_unsupported() {
        for ct in [
            "text/plain",
            "application/xml",
            "application/yaml",
            "text/yaml",
            "application/jsonx",
            "multipart/mixed; boundary=x",
            "",
            "garbage",
        ] {
            let e = err(Some(ct), b"{\"a\":1}").await;
            assert!(matches!(e, BodyError::UnsupportedMediaType), "{ct}");
            assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
            assert_eq!(e.message(), "Unsupported Content-Type");
        }
    }

    #[tokio::test]
    async fn non_ascii_content_type_is_unsupported() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_bytes(b"application/json\xff").unwrap(),
        );
        let e = decode(&headers, Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(matches!(e, BodyError::UnsupportedMediaType));
    }

    #[tokio::test]
    async fn two_content_type_headers_are_rejected() {
        let mut headers = HeaderMap::new();
        headers.append(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.append(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for body in [&b"{}"[..], b""] {
            let e = decode(&headers, Bytes::copy_from_slice(body))
                .await
                .unwrap_err();
            assert!(matches!(e, BodyError::DuplicateContentType));
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
    }

    // --- urlencoded ---

    #[tokio::test]
    async fn form_plain_and_dotted_keys() {
        assert_eq!(
            form("name=svc&host=example.com&port=80").await,
            json!({"name":"svc","host":"example.com","port":"80"})
        );
        assert_eq!(
            form("config.allow=g1").await,
            json!({"config":{"allow":"g1"}})
        );
        assert_eq!(
            form("service.name=foo&certificate.id=3f1c1d0e-3a0b-4a5e-9c5d-2d7f0b1b2c3d").await,
            json!({"service":{"name":"foo"},
                   "certificate":{"id":"3f1c1d0e-3a0b-4a5e-9c5d-2d7f0b1b2c3d"}})
        );
        assert_eq!(
            form("headers.x-region=north&config.a.b.c=deep").await,
            json!({"headers":{"x-region":"north"},"config":{"a":{"b":{"c":"deep"}}}})
        );
    }

    #[tokio::test]
    async fn form_bracket_keys() {
        assert_eq!(
            form("config[limit]=10").await,
            json!({"config":{"limit":"10"}})
        );
        assert_eq!(
            form("hosts[]=a&hosts[]=b").await,
            json!({"hosts":["a","b"]})
        );
        assert_eq!(form("hosts[]=a").await, json!({"hosts":["a"]}));
        assert_eq!(
            form("hosts[1]=a&hosts[2]=b").await,
            json!({"hosts":{"1":"a","2":"b"}})
        );
        assert_eq!(
            form("config[a.b]=1").await,
            json!({"config":{"a.b":"1"}}),
            "bracket contents are literal"
        );
        assert_eq!(
            form("config[headers][x-a]=1&config[headers][x-b]=2").await,
            json!({"config":{"headers":{"x-a":"1","x-b":"2"}}})
        );
    }

    #[tokio::test]
    async fn form_percent_encoded_brackets() {
        assert_eq!(
            form("config%5Blimit%5D=10&hosts%5B%5D=a&hosts%5b%5d=b").await,
            json!({"config":{"limit":"10"},"hosts":["a","b"]})
        );
    }

    #[tokio::test]
    async fn form_mixed_dots_and_brackets() {
        assert_eq!(
            form("config.hosts[1]=x&config.hosts[2]=y").await,
            json!({"config":{"hosts":{"1":"x","2":"y"}}})
        );
        assert_eq!(
            form("config[rules].allow[]=a&config[rules].allow[]=b").await,
            json!({"config":{"rules":{"allow":["a","b"]}}})
        );
        assert_eq!(
            form("config.allow[]=a&config.limit=5").await,
            json!({"config":{"allow":["a"],"limit":"5"}})
        );
    }

    #[tokio::test]
    async fn form_repeated_keys_become_lists() {
        assert_eq!(form("hosts=a&hosts=b").await, json!({"hosts":["a","b"]}));
        assert_eq!(
            form("hosts=a&hosts=b&hosts=c").await,
            json!({"hosts":["a","b","c"]})
        );
        assert_eq!(form("hosts=a").await, json!({"hosts":"a"}));
        assert_eq!(
            form("config.allow=g1&config.allow=g2").await,
            json!({"config":{"allow":["g1","g2"]}})
        );
        assert_eq!(form("hosts=a&hosts[]=b").await, json!({"hosts":["a","b"]}));
        assert_eq!(form("hosts[]=a&hosts=b").await, json!({"hosts":["a","b"]}));
    }

    #[tokio::test]
    async fn form_empty_values_stay_empty_strings() {
        assert_eq!(
            form("name=&config.allow=&tags[]=").await,
            json!({"name":"","config":{"allow":""},"tags":[""]})
        );
        assert_eq!(
            form("flag").await,
            json!({"flag":""}),
            "no '=' means empty value"
        );
    }

    #[tokio::test]
    async fn form_skips_empty_pairs_and_empty_keys() {
        assert_eq!(form("a=1&&b=2&").await, json!({"a":"1","b":"2"}));
        assert_eq!(form("=x&a=1").await, json!({"a":"1"}));
        assert_eq!(form("&").await, json!({}));
    }

    #[tokio::test]
    async fn form_plus_is_space_and_percent_decoding() {
        assert_eq!(
            form("name=hello+world").await,
            json!({"name":"hello world"})
        );
        assert_eq!(form("name=a%2Bb%20c").await, json!({"name":"a+b c"}));
        assert_eq!(form("my+key=1").await, json!({"my key":"1"}));
        assert_eq!(
            form("a=b=c").await,
            json!({"a":"b=c"}),
            "only the first '=' splits"
        );
    }

    #[tokio::test]
    async fn form_urlencoded_pem_survives() {
        // As `curl --data-urlencode cert@ca.crt` sends it: `+`, `/`, `=` and newlines escaped.
        let encoded: String = PEM
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        assert!(encoded.contains("%0A") && encoded.contains("%2B") && encoded.contains("%2F"));
        let body = format!("cert={encoded}&snis[]=a.example.com");
        assert_eq!(
            form(&body).await,
            json!({"cert": PEM, "snis": ["a.example.com"]})
        );
    }

    #[tokio::test]
    async fn form_raw_plus_in_pem_turns_into_space() {
        // `curl -d "cert=$(cat ca.crt)"` does not escape `+`: it arrives as a space, exactly
        // as in Kong; `%0A` newlines still decode.
        let value = form("cert=-----BEGIN%0AMIIB+ab/c==%0A-----END%0A").await;
        assert_eq!(value, json!({"cert":"-----BEGIN\nMIIB ab/c==\n-----END\n"}));
    }

    #[tokio::test]
    async fn form_invalid_escapes_do_not_fail() {
        assert_eq!(
            form("a=%ZZ&b=%&c=%4").await,
            json!({"a":"%ZZ","b":"%","c":"%4"})
        );
    }

    #[tokio::test]
    async fn form_invalid_utf8_is_refused() {
        for body in ["a=%FF", "%FF=a", "a=1&b=%C3%28"] {
            let err = err(FORM, body.as_bytes()).await;
            assert!(matches!(err, BodyError::InvalidForm(_)), "{body}: {err:?}");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[tokio::test]
    async fn form_conflicts_resolve_with_object_winning_in_any_order() {
        assert_eq!(form("a=1&a.b=2").await, json!({"a":{"b":"2"}}));
        assert_eq!(form("a.b=2&a=1").await, json!({"a":{"b":"2"}}));
        assert_eq!(form("a[]=1&a[x]=2").await, json!({"a":{"x":"2"}}));
        assert_eq!(form("a[x]=2&a[]=1").await, json!({"a":{"x":"2"}}));
        assert_eq!(form("a=1&a=2&a.b=3").await, json!({"a":{"b":"3"}}));
        assert_eq!(
            form("a.b=1&a.b.c=2&a.b=3").await,
            json!({"a":{"b":{"c":"2"}}})
        );
    }

    #[tokio::test]
    async fn form_malformed_keys_are_kept_literally() {
        for key in [
            "a..b", "a.", ".a", "[x]", "a[b", "a[b]c", "a[][b]", "a[]x", "a[b[c]]", "a]b",
        ] {
            let value = form(&format!("{}=1", key.replace('[', "%5B"))).await;
            assert_eq!(value, json!({ key: "1" }), "{key}");
        }
    }

    #[tokio::test]
    async fn form_key_depth_is_capped() {
        let ok_key = vec!["a"; MAX_KEY_DEPTH].join(".");
        let value = form(&format!("{ok_key}=1")).await;
        let mut expected = json!("1");
        for _ in 0..MAX_KEY_DEPTH {
            expected = json!({ "a": expected });
        }
        assert_eq!(value, expected);

        let deep_key = vec!["a"; MAX_KEY_DEPTH + 1].join(".");
        let value = form(&format!("{deep_key}=1")).await;
        assert_eq!(value, json!({ deep_key: "1" }));

        let huge = "[a]".repeat(100_000);
        let value = form(&format!("x{huge}=1")).await;
        assert_eq!(value.as_object().map(Map::len), Some(1));
    }

    #[tokio::test]
    async fn form_argument_limit() {
        let at_limit = vec!["a=1"; MAX_ARGUMENTS].join("&");
        let value = form(&at_limit).await;
        assert_eq!(value["a"].as_array().map(Vec::len), Some(MAX_ARGUMENTS));

        let over = vec!["a=1"; MAX_ARGUMENTS + 1].join("&");
        let e = err(FORM, over.as_bytes()).await;
        assert!(matches!(e, BodyError::TooManyArguments));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.message(), "Too many arguments");

        let distinct: Vec<String> = (0..=MAX_ARGUMENTS).map(|i| format!("k{i}=v")).collect();
        let e = err(FORM, distinct.join("&").as_bytes()).await;
        assert!(matches!(e, BodyError::TooManyArguments));
    }

    // --- multipart ---

    #[tokio::test]
    async fn multipart_as_curl_sends_a_file() {
        // `curl -F cert=@ca.crt http://localhost:8001/ca_certificates`, byte for byte.
        let boundary = "------------------------d74496d66958873e";
        let body = format!(
            "--{boundary}\r\n\
             Content-Disposition: form-data; name=\"cert\"; filename=\"ca.crt\"\r\n\
             Content-Type: application/octet-stream\r\n\
             \r\n\
             {PEM}\r\n\
             --{boundary}--\r\n"
        );
        let ct = format!("multipart/form-data; boundary={boundary}");
        let decoded = ok(Some(&ct), body.as_bytes()).await;
        assert_eq!(decoded.encoding, Encoding::Form);
        assert_eq!(decoded.value, json!({ "cert": PEM }));
    }

    #[tokio::test]
    async fn multipart_as_httpie_sends_files_and_fields() {
        // `http -f POST :8001/certificates cert=@c.crt key=@c.key snis=a.example.com`
        // (requests-toolbelt encoder: uuid4-hex boundary, plain fields without filename, file
        // parts with a filename and a type guessed from the extension; any type but
        // application/json is taken as text).
        let boundary = "3b8e5f1c0d9a4f6e8a7b2c1d0e9f8a7b";
        let body = format!(
            "--{boundary}\r\n\
             Content-Disposition: form-data; name=\"snis\"\r\n\
             \r\n\
             a.example.com\r\n\
             --{boundary}\r\n\
             Content-Disposition: form-data; name=\"cert\"; filename=\"c.crt\"\r\n\
             Content-Type: application/x-x509-ca-cert\r\n\
             \r\n\
             {PEM}\r\n\
             --{boundary}\r\n\
             Content-Disposition: form-data; name=\"key\"; filename=\"c.key\"\r\n\
             Content-Type: application/pkix-cert\r\n\
             \r\n\
             {KEY}\r\n\
             --{boundary}--\r\n"
        );
        let ct = format!("multipart/form-data; boundary={boundary}");
        let decoded = ok(Some(&ct), body.as_bytes()).await;
        assert_eq!(decoded.encoding, Encoding::Form);
        assert_eq!(
            decoded.value,
            json!({ "snis": "a.example.com", "cert": PEM, "key": KEY })
        );
    }

    #[tokio::test]
    async fn multipart_pem_bytes_survive_intact() {
        let value = multipart_ok(
            "XyZ",
            &[(
                "Content-Disposition: form-data; name=\"cert\"; filename=\"a.pem\"\r\n\
                 Content-Type: text/plain",
                PEM,
            )],
        )
        .await;
        let cert = value["cert"].as_str().unwrap();
        assert_eq!(cert, PEM);
        assert!(cert.contains('+') && cert.contains('/') && cert.contains("==\n"));
    }

    #[tokio::test]
    async fn multipart_keys_follow_form_rules() {
        let value = multipart_ok(
            "b",
            &[
                (
                    "Content-Disposition: form-data; name=\"config.allow\"",
                    "g1",
                ),
                (
                    "Content-Disposition: form-data; name=\"config.allow\"",
                    "g2",
                ),
                (
                    "Content-Disposition: form-data; name=\"config[limit]\"",
                    "10",
                ),
                ("Content-Disposition: form-data; name=\"hosts[]\"", "a"),
                ("Content-Disposition: form-data; name=\"hosts[]\"", "b"),
                ("Content-Disposition: form-data; name=\"paths[1]\"", "/x"),
                ("Content-Disposition: form-data; name=\"service.id\"", "abc"),
                ("Content-Disposition: form-data; name=\"name\"", ""),
            ],
        )
        .await;
        assert_eq!(
            value,
            json!({
                "config": {"allow": ["g1", "g2"], "limit": "10"},
                "hosts": ["a", "b"],
                "paths": {"1": "/x"},
                "service": {"id": "abc"},
                "name": "",
            })
        );
    }

    #[tokio::test]
    async fn multipart_json_part_is_parsed() {
        let value = multipart_ok(
            "b",
            &[
                (
                    "Content-Disposition: form-data; name=\"config\"\r\n\
                     Content-Type: application/json; charset=utf-8",
                    r#"{"minute":5,"policy":"local"}"#,
                ),
                ("Content-Disposition: form-data; name=\"config.hour\"", "100"),
                (
                    "Content-Disposition: form-data; name=\"tags\"\r\nContent-Type: application/json",
                    r#"["a","b"]"#,
                ),
            ],
        )
        .await;
        assert_eq!(
            value,
            json!({"config":{"minute":5,"policy":"local","hour":"100"},"tags":["a","b"]})
        );
    }

    #[tokio::test]
    async fn multipart_invalid_json_part() {
        let e = multipart_err(
            "b",
            &[(
                "Content-Disposition: form-data; name=\"config\"\r\nContent-Type: application/json",
                "{bad",
            )],
        )
        .await;
        assert!(matches!(e, BodyError::InvalidJson));
    }

    #[tokio::test]
    async fn multipart_invalid_utf8_names_the_field() {
        let boundary = "b";
        let mut body =
            b"--b\r\nContent-Disposition: form-data; name=\"cert\"; filename=\"c.der\"\r\n\
            Content-Type: application/octet-stream\r\n\r\n"
                .to_vec();
        body.extend_from_slice(&[0x30, 0x82, 0xff, 0xfe]);
        body.extend_from_slice(b"\r\n--b--\r\n");
        let ct = format!("multipart/form-data; boundary={boundary}");
        let e = err(Some(&ct), &body).await;
        assert!(
            matches!(&e, BodyError::InvalidMultipart(reason) if reason.contains("\"cert\"")),
            "{e:?}"
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.message().contains("cert"));
    }

    #[tokio::test]
    async fn multipart_part_without_name_is_rejected() {
        let e = multipart_err("b", &[("Content-Disposition: form-data", "x")]).await;
        assert!(matches!(e, BodyError::InvalidMultipart(_)), "{e:?}");
    }

    #[tokio::test]
    async fn multipart_argument_limit() {
        let parts = vec![("Content-Disposition: form-data; name=\"a\"", "1"); MAX_ARGUMENTS];
        let value = multipart_ok("b", &parts).await;
        assert_eq!(value["a"].as_array().map(Vec::len), Some(MAX_ARGUMENTS));

        let parts = vec![("Content-Disposition: form-data; name=\"a\"", "1"); MAX_ARGUMENTS + 1];
        let e = multipart_err("b", &parts).await;
        assert!(matches!(e, BodyError::TooManyArguments));
    }

    #[tokio::test]
    async fn multipart_garbage_is_invalid_not_a_panic() {
        let good = multipart(
            "right",
            &[("Content-Disposition: form-data; name=\"a\"", "1")],
        );
        let cases: Vec<(&str, Vec<u8>)> = vec![
            // Boundary in the header does not match the body.
            ("multipart/form-data; boundary=wrong", good.clone()),
            // No boundary parameter at all.
            ("multipart/form-data", good.clone()),
            ("multipart/form-data; boundary=", good.clone()),
            // Truncated before the closing delimiter.
            (
                "multipart/form-data; boundary=right",
                good[..good.len() - 12].to_vec(),
            ),
            // Not multipart at all.
            ("multipart/form-data; boundary=right", b"name=svc".to_vec()),
            ("multipart/form-data; boundary=right", vec![0xff; 64]),
            // Part headers never terminated.
            (
                "multipart/form-data; boundary=right",
                b"--right\r\nContent-Disposition: form-data; name=\"a\"".to_vec(),
            ),
        ];
        for (ct, body) in cases {
            let e = err(Some(ct), &body).await;
            assert!(matches!(e, BodyError::InvalidMultipart(_)), "{ct}: {e:?}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert!(e.message().starts_with("Cannot parse multipart body: "));
        }
    }

    #[tokio::test]
    async fn multipart_with_no_parts_is_empty() {
        let value = multipart_ok("b", &[]).await;
        assert_eq!(value, json!({}));
    }

    #[tokio::test]
    async fn random_inputs_never_panic() {
        // A deterministic xorshift generator over bytes that matter to the decoders.
        const ALPHABET: &[u8] = b"ab1.[]=&%+5BDd{}\"\r\n-: ;\xff";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let prefix = b"--b\r\nContent-Disposition: form-data; name=\"";
        for _ in 0..3000 {
            let len = usize::try_from(next() % 64).unwrap();
            let noise: Vec<u8> = (0..len)
                .map(|_| ALPHABET[usize::try_from(next()).unwrap() % ALPHABET.len()])
                .collect();
            let _ = run(FORM, &noise).await;
            let _ = run(Some("application/json"), &noise).await;
            let _ = run(None, &noise).await;
            let mut body = prefix.to_vec();
            body.extend_from_slice(&noise);
            body.extend_from_slice(b"\r\n--b--\r\n");
            let _ = run(Some("multipart/form-data; boundary=b"), &body).await;
        }
    }

    #[test]
    fn parse_key_segments() {
        use Segment::{Append, Key};
        assert_eq!(parse_key("a"), Some(vec![Key("a")]));
        assert_eq!(parse_key("a.b"), Some(vec![Key("a"), Key("b")]));
        assert_eq!(parse_key("a[b]"), Some(vec![Key("a"), Key("b")]));
        assert_eq!(parse_key("a[]"), Some(vec![Key("a"), Append]));
        assert_eq!(
            parse_key("a.b[1].c[]"),
            Some(vec![Key("a"), Key("b"), Key("1"), Key("c"), Append])
        );
        assert_eq!(
            parse_key("a[x][y]"),
            Some(vec![Key("a"), Key("x"), Key("y")])
        );
        assert_eq!(parse_key("a[]."), None);
        assert_eq!(parse_key(""), None);
    }
}

#[cfg(test)]
mod proptests;
