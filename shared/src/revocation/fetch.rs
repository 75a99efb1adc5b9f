//! Plain-HTTP fetches of CRLs and OCSP answers, bounded in time (`http_timeout`, connection
//! included) and size.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How long an idle connection to a CRL or OCSP server is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const USER_AGENT: &str = concat!("gatehouse/", env!("CARGO_PKG_VERSION"));

/// A shared HTTP/1.1 client (connections to a CRL or OCSP server are reused).
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: Client<HttpConnector, Full<Bytes>>,
}

// === impl Fetcher ===

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Fetcher {
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(http);
        Self { client }
    }

    /// `GET url`; the body of a `200 OK` answer of at most `limit` bytes.
    pub async fn get(
        &self,
        url: &str,
        accept: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<Bytes, String> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(header::ACCEPT, accept)
            .header(header::USER_AGENT, USER_AGENT)
            .body(Full::default());
        self.send(request, timeout, limit).await
    }

    /// `POST url` with `body` of `content_type`; the body of a `200 OK` answer of at most
    /// `limit` bytes.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        accept: &str,
        body: Vec<u8>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Bytes, String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ACCEPT, accept)
            .header(header::USER_AGENT, USER_AGENT)
            .body(Full::new(Bytes::from(body)));
        self.send(request, timeout, limit).await
    }

    async fn send(
        &self,
        request: Result<Request<Full<Bytes>>, http::Error>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Bytes, String> {
        let request = request.map_err(|e| format!("invalid URL ({e})"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status();
            if status != StatusCode::OK {
                return Err(format!("HTTP {status}"));
            }
            match Limited::new(response.into_body(), limit).collect().await {
                Ok(body) => Ok(body.to_bytes()),
                Err(e) if e.is::<LengthLimitError>() => {
                    Err(format!("answer larger than {limit} bytes"))
                }
                Err(e) => Err(format!("reading the answer: {}", error_chain(&*e))),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
        }
    }
}

/// An error and its sources, `: `-separated (hyper's top-level messages say little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
