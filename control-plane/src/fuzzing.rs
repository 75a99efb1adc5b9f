//! Entry points for the cargo-fuzz targets in `fuzz/` (a crate outside the workspace): thin
//! wrappers that let the targets reach crate-private parsers without making them an API.

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

/// Decodes an Admin API write body as the Admin API does ([`crate::admin::body::decode`]):
/// the decoded object, or the HTTP status and message of the refusal.
pub async fn decode_admin_body(headers: &HeaderMap, body: Bytes) -> Result<Value, (u16, String)> {
    crate::admin::body::decode(headers, body)
        .await
        .map(|body| body.value)
        .map_err(|e| (e.status().as_u16(), e.message()))
}
