//! Admin API request bodies: the first line of the input is the Content-Type (an empty line:
//! none), the rest the body. Whatever they are, decoding does not panic, succeeds only with an
//! object holding no NUL, and refuses with a 4xx.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let (content_type, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b""[..], data),
    };
    let mut headers = HeaderMap::new();
    if !content_type.is_empty() {
        if let Ok(value) = HeaderValue::from_bytes(content_type) {
            headers.insert(CONTENT_TYPE, value);
        }
    }
    let result = runtime().block_on(gatehouse_cp::fuzzing::decode_admin_body(
        &headers,
        Bytes::copy_from_slice(body),
    ));
    match result {
        Ok(value) => {
            assert!(value.is_object());
            assert!(!has_nul(&value), "NUL in {value}");
        }
        Err((status, message)) => {
            assert!((400..500).contains(&status));
            assert!(!message.is_empty());
        }
    }
});
