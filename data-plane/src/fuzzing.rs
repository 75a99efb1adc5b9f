//! Entry points for the cargo-fuzz targets in `fuzz/` (a crate outside the workspace): thin
//! wrappers that let the targets reach crate-private parsers without making them an API.

use std::io;

/// The ClientHello peek of stream routes on the first bytes of a connection: `Ok(None)` while
/// the ClientHello is incomplete, `Ok(Some(sni))` once it is complete (the server name,
/// lower-cased, if it sent one), an error for bytes that are no ClientHello.
pub fn client_hello_sni(bytes: &[u8]) -> io::Result<Option<Option<String>>> {
    Ok(crate::stream::parse_hello(bytes)?.map(|hello| match hello {
        crate::stream::Hello::Tls { sni, .. } => sni,
        crate::stream::Hello::Plain => None,
    }))
}

/// The request path as the router normalizes it (its borrowed fast path included).
pub fn normalize_request_path(path: &str) -> String {
    crate::router::path::normalize(path).into_owned()
}
