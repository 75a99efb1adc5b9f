//! A thin client for the Admin API.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder};
use serde_json::Value;

/// The Admin API path of every collection (`/{path}`), in dependency order: an entity only
/// references collections listed before it.
pub const COLLECTION_PATHS: &[&str] = &[
    "ca_certificates",
    "certificates",
    "snis",
    "services",
    "routes",
    "upstreams",
    "targets",
    "consumers",
    "acls",
    "mtls-auths",
    "plugins",
];

/// An HTTP client bound to one Admin API base URL. Paths are appended to the base
/// (`admin.get("/services/example")`). Requests time out after 30 s and bypass any
/// `HTTP_PROXY`.
#[derive(Debug, Clone)]
pub struct Admin {
    base: String,
    client: reqwest::Client,
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body parsed as JSON; `Null` when empty, a JSON string when not JSON.
    pub body: Value,
}

// === impl Admin ===

impl Admin {
    /// A client for the Admin API at `base_url` (`http://127.0.0.1:8001`).
    pub fn new(base_url: impl Into<String>) -> Result<Admin> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        let base = base_url.into().trim_end_matches('/').to_owned();
        Ok(Admin { base, client })
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Response> {
        self.send(self.request(Method::GET, path)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Response> {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Response> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put_json(&self, path: &str, body: &Value) -> Result<Response> {
        self.send(self.request(Method::PUT, path).json(body)).await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch_json(&self, path: &str, body: &Value) -> Result<Response> {
        self.send(self.request(Method::PATCH, path).json(body))
            .await
    }

    /// `POST path` with an `application/x-www-form-urlencoded` body, like `curl -d k=v`.
    /// Keys may repeat (`[("hosts", "a"), ("hosts", "b")]`).
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Result<Response> {
        self.send(self.request(Method::POST, path).form(fields))
            .await
    }

    /// `POST path` with a `multipart/form-data` body of text parts, like `curl -F k=v` or
    /// `http -f`. For file parts build a `reqwest::multipart::Form` and use
    /// [`Admin::request`] with [`Admin::send`].
    pub async fn post_multipart(&self, path: &str, parts: &[(&str, &str)]) -> Result<Response> {
        let form = parts
            .iter()
            .fold(reqwest::multipart::Form::new(), |form, (name, value)| {
                form.text(name.to_string(), value.to_string())
            });
        self.send(self.request(Method::POST, path).multipart(form))
            .await
    }

    /// Starts any other request, to finish with [`Admin::send`].
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response> {
        let request = request.build().context("building the request")?;
        let what = format!("{} {}", request.method(), request.url());
        let response = self
            .client
            .execute(request)
            .await
            .with_context(|| what.clone())?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the response to {what}"))?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

// === impl Response ===

impl Response {
    /// The value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}
