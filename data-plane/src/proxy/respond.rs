//! Responses the proxy writes itself: errors and protocol answers.
//!
//! The body format follows the client, as Kong's: the first type of `Accept` (in the order
//! given, parameters and weights ignored) among `application/json`, `text/html`,
//! `application/xml` / `text/xml` and `text/plain` wins; `*/*`, none or anything else gives
//! JSON `{"message": ..., "request_id": ...}`. A gRPC request (HTTP/2 with `Content-Type:
//! application/grpc...`, Kong's `is_grpc_request`) gets a gRPC answer instead: the same HTTP
//! status (as Kong), no body, `grpc-status` (the gRPC project's HTTP → gRPC code mapping) and
//! `grpc-message`. gRPC over HTTP/1 is not gRPC to the proxy: it gets the 426 of its route. Every generated response
//! carries `Server: gatehouse/<version>`; the proxy adds the request id and
//! `X-Gatehouse-Response-Latency`.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};

use super::ProxyBody;
use crate::router::split_host_port;

/// `Server` of generated responses.
pub(super) const SERVER: HeaderValue =
    HeaderValue::from_static(concat!("gatehouse/", env!("CARGO_PKG_VERSION")));

/// The body format of a generated error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Format {
    #[default]
    Json,
    Html,
    Xml,
    Plain,
    Grpc,
}

/// A failure the proxy answers itself; [`Failure::response`] is the one place mapping them
/// to statuses and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    NoRoute,
    NoService,
    NoPeer,
    BadUpstream,
    UpstreamTimeout,
    /// The client's request body was malformed or cut short.
    BadRequest,
    /// The client paused its request body longer than `--client-body-timeout`.
    ClientTimeout,
    Internal,
}

// === impl Format ===

impl Format {
    /// The format asked for by a request's version and headers.
    pub(super) fn of(version: Version, headers: &HeaderMap) -> Self {
        let grpc = version == Version::HTTP_2
            && headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            return Self::Grpc;
        }
        headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|item| {
                let media = item.split(';').next().unwrap_or("").trim();
                match media.to_ascii_lowercase().as_str() {
                    "application/json" => Some(Self::Json),
                    "text/html" => Some(Self::Html),
                    "application/xml" | "text/xml" => Some(Self::Xml),
                    "text/plain" => Some(Self::Plain),
                    _ => None,
                }
            })
            .unwrap_or_default()
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json; charset=utf-8",
            Self::Html => "text/html; charset=utf-8",
            Self::Xml => "application/xml; charset=utf-8",
            Self::Plain => "text/plain; charset=utf-8",
            Self::Grpc => "application/grpc",
        }
    }

    fn body(self, text: &str, request_id: &str) -> String {
        match self {
            Self::Json => {
                serde_json::json!({ "message": text, "request_id": request_id }).to_string()
            }
            Self::Html => format!(
                "<!doctype html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>Error</title>\n\
                 </head>\n<body>\n<h1>Error</h1>\n<p>{}.</p>\n<p>request_id: {}</p>\n</body>\n\
                 </html>\n",
                escape_markup(text),
                escape_markup(request_id)
            ),
            Self::Xml => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error>\n  <message>{}</message>\n  \
                 <requestid>{}</requestid>\n</error>\n",
                escape_markup(text),
                escape_markup(request_id)
            ),
            Self::Plain => format!("{text}\nrequest_id: {request_id}\n"),
            Self::Grpc => String::new(),
        }
    }
}

/// The gRPC status for an HTTP status (grpc/grpc `doc/http-grpc-status-mapping.md`).
fn grpc_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "13",
        401 => "16",
        403 => "7",
        404 => "12",
        429 | 502..=504 => "14",
        _ => "2",
    }
}

fn escape_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An error answer with `text` in the client's `format`.
pub(super) fn message(
    status: StatusCode,
    text: &str,
    request_id: &str,
    format: Format,
) -> Response<ProxyBody> {
    if format == Format::Grpc {
        let mut response = grpc_error(grpc_status(status), text);
        *response.status_mut() = status;
        return response;
    }
    let mut response = Response::new(full(format.body(text, request_id)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(header::SERVER, SERVER);
    response
}

/// A trailers-only gRPC answer (HTTP 200).
pub(super) fn grpc_error(code: &'static str, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static(code));
    if let Ok(text) = HeaderValue::from_str(text) {
        headers.insert("grpc-message", text);
    }
    headers.insert(header::SERVER, SERVER);
    response
}

/// Kong's answer to a plain request on an HTTPS-only route: 426, or a redirect to the same
/// host (without port) and path over HTTPS.
pub(super) fn require_https(
    status: u16,
    authority: Option<&str>,
    uri: &Uri,
    request_id: &str,
    format: Format,
) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::UPGRADE_REQUIRED);
    if status == StatusCode::UPGRADE_REQUIRED {
        let mut response = message(status, "Please use HTTPS protocol", request_id, format);
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(
            header::UPGRADE,
            HeaderValue::from_static("TLS/1.2, HTTP/1.1"),
        );
        return response;
    }
    let (host, _) = split_host_port(authority.unwrap_or(""));
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(location) = HeaderValue::from_str(&format!("https://{host}{path_and_query}")) else {
        return Failure::Internal.response(request_id, format);
    };
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::SERVER, SERVER);
    response
}

/// The answer to an ACME HTTP-01 validation: 200, `text/plain`, the key authorization.
pub(super) fn acme_http01(key_authorization: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(key_authorization)
            .map_err(|never| match never {})
            .boxed(),
    );
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(header::SERVER, SERVER);
    response
}

pub(super) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

// === impl Failure ===

impl Failure {
    pub(super) fn response(self, request_id: &str, format: Format) -> Response<ProxyBody> {
        let (status, text) = match self {
            Self::NoRoute => (StatusCode::NOT_FOUND, "no Route matched with those values"),
            Self::NoService => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no Service found with those values",
            ),
            Self::NoPeer => (
                StatusCode::SERVICE_UNAVAILABLE,
                "failure to get a peer from the ring-balancer",
            ),
            Self::BadUpstream => (
                StatusCode::BAD_GATEWAY,
                "An invalid response was received from the upstream server",
            ),
            Self::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "The upstream server is timing out",
            ),
            Self::BadRequest => (StatusCode::BAD_REQUEST, "Bad request"),
            Self::ClientTimeout => (StatusCode::REQUEST_TIMEOUT, "Request timeout"),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "An unexpected error occurred",
            ),
        };
        message(status, text, request_id, format)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn accept(value: &str) -> Format {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        Format::of(Version::HTTP_11, &headers)
    }

    async fn text(response: Response<ProxyBody>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn format_follows_the_first_known_accept_type() {
        assert_eq!(Format::of(Version::HTTP_2, &HeaderMap::new()), Format::Json);
        assert_eq!(accept("*/*"), Format::Json);
        assert_eq!(accept("text/html,application/xhtml+xml"), Format::Html);
        assert_eq!(
            accept("image/png, Text/Plain;q=0.1, text/html"),
            Format::Plain
        );
        assert_eq!(accept("text/xml"), Format::Xml);
        assert_eq!(accept("application/xml;q=0.9"), Format::Xml);
        assert_eq!(accept("application/json"), Format::Json);
        assert_eq!(accept("image/webp"), Format::Json);
        let mut grpc = HeaderMap::new();
        grpc.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        grpc.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        assert_eq!(Format::of(Version::HTTP_2, &grpc), Format::Grpc);
        // gRPC is HTTP/2 only: over HTTP/1 the Accept decides.
        assert_eq!(Format::of(Version::HTTP_11, &grpc), Format::Html);
    }

    #[tokio::test]
    async fn each_format_carries_message_and_request_id() {
        let json = Failure::NoRoute.response("r-1", Format::Json);
        assert_eq!(json.status(), 404);
        assert_eq!(json.headers()[header::SERVER], SERVER);
        let value: serde_json::Value = serde_json::from_str(&text(json).await).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"message": "no Route matched with those values", "request_id": "r-1"})
        );

        let html = Failure::BadUpstream.response("<r>", Format::Html);
        assert_eq!(html.status(), 502);
        assert!(
            html.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let body = text(html).await;
        assert!(
            body.contains("<p>An invalid response was received from the upstream server.</p>"),
            "{body}"
        );
        assert!(body.contains("request_id: &lt;r&gt;"), "{body}");

        let xml = text(Failure::UpstreamTimeout.response("r-3", Format::Xml)).await;
        assert!(
            xml.contains("<message>The upstream server is timing out</message>"),
            "{xml}"
        );
        assert!(xml.contains("<requestid>r-3</requestid>"), "{xml}");

        let plain = text(Failure::ClientTimeout.response("r-4", Format::Plain)).await;
        assert_eq!(plain, "Request timeout\nrequest_id: r-4\n");
    }

    #[test]
    fn grpc_errors_carry_grpc_status() {
        let response = Failure::NoRoute.response("r", Format::Grpc);
        assert_eq!(response.status(), 404, "Kong keeps the HTTP status");
        assert_eq!(response.headers()["grpc-status"], "12");
        assert_eq!(
            response.headers()["grpc-message"],
            "no Route matched with those values"
        );
        let unavailable = Failure::NoPeer.response("r", Format::Grpc);
        assert_eq!(unavailable.headers()["grpc-status"], "14");
        let internal = Failure::Internal.response("r", Format::Grpc);
        assert_eq!(internal.headers()["grpc-status"], "2");
        let timeout = Failure::UpstreamTimeout.response("r", Format::Grpc);
        assert_eq!(timeout.headers()["grpc-status"], "14");
    }

    #[test]
    fn https_redirects_and_upgrade() {
        let uri: Uri = "/p/q?x=1".parse().unwrap();
        let moved = require_https(301, Some("Example.com:8000"), &uri, "id", Format::Json);
        assert_eq!(moved.status(), 301);
        assert_eq!(
            moved.headers()[header::LOCATION],
            "https://example.com/p/q?x=1"
        );
        let upgrade = require_https(426, Some("example.com"), &uri, "id", Format::Json);
        assert_eq!(upgrade.status(), 426);
        assert_eq!(upgrade.headers()[header::UPGRADE], "TLS/1.2, HTTP/1.1");
        assert_eq!(upgrade.headers()[header::CONNECTION], "Upgrade");
    }

    #[test]
    fn failures_map_to_kong_statuses() {
        for (failure, status) in [
            (Failure::NoRoute, 404),
            (Failure::NoService, 503),
            (Failure::NoPeer, 503),
            (Failure::BadUpstream, 502),
            (Failure::UpstreamTimeout, 504),
            (Failure::BadRequest, 400),
            (Failure::ClientTimeout, 408),
            (Failure::Internal, 500),
        ] {
            assert_eq!(failure.response("r", Format::Json).status(), status);
        }
    }
}
