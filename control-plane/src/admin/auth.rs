//! Who may use the Admin API: the authentication layer in front of every route.
//!
//! With `--admin-auth on` every request needs a credential: a bearer token (`Authorization:
//! Bearer <token>`, or Kong's `Kong-Admin-Token: <token>`), or a client certificate the
//! configured CA verified in the TLS handshake and whose subject name is registered. A token
//! wins when a request carries both. Each credential has a role: `read-only` may `GET`,
//! `HEAD` and `OPTIONS`; `read-write` may do everything.
//!
//! Credentials are looked up on every request (one indexed query; nothing is cached), so a
//! revoked or expired credential is refused on its next request. A lookup that fails (the
//! database is away) refuses the request: the layer fails closed. Refusals answer as Kong's
//! RBAC does, and are logged with the client's address and the reason (never the token).
//!
//! The layer also names the request's actor for the audit trail ([`Actor::scope`]): with
//! authentication off that is `anonymous`.

use std::net::SocketAddr;

use aws_lc_rs::digest::{SHA256, digest};
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::json;

use super::State;
use super::tls::ClientCertificate;
use crate::store::{Actor, Credential, Role, unix_now};

/// Kong's RBAC answer to a request without any credential.
pub(crate) const NO_CREDENTIALS: &str = "Invalid credentials. Token or User credentials required";
/// Kong's RBAC answer to a credential it does not accept (unknown, expired or revoked).
pub(crate) const INVALID_CREDENTIALS: &str = "Invalid RBAC credentials";
/// Kong's RBAC header carrying a token.
const KONG_ADMIN_TOKEN: &str = "kong-admin-token";

/// The authentication layer (`axum::middleware::from_fn_with_state`).
pub(crate) async fn authenticate(
    axum::extract::State(state): axum::extract::State<State>,
    request: Request,
    next: Next,
) -> Response {
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let actor = |name: String, credential: Option<&Credential>, auth: &'static str| Actor {
        name,
        credential_id: credential.map(|c| c.id),
        auth,
        remote_addr: remote,
        method: method.to_string(),
        path: path.clone(),
    };
    if !state.settings.admin_auth {
        let actor = actor("anonymous".to_owned(), None, "none");
        return actor.scope(next.run(request)).await;
    }
    let refuse = |status: StatusCode, message: String, reason: &str| {
        tracing::warn!(
            remote_addr = remote.map(|a| a.to_string()).unwrap_or_default(),
            %method,
            %path,
            reason,
            "admin request refused"
        );
        refusal(status, message)
    };
    let now = unix_now();
    let (credential, auth) = match presented(request.headers(), request.extensions()) {
        Presented::Malformed => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                NO_CREDENTIALS.to_owned(),
                "unsupported Authorization scheme",
            );
        }
        Presented::Nothing => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                NO_CREDENTIALS.to_owned(),
                "no credential",
            );
        }
        Presented::Token(token) => {
            let hash = token_hash(token);
            match state.store.token_credential(&hash).await {
                Ok(Some(credential)) if credential.is_active(now) => (credential, "token"),
                Ok(Some(credential)) => {
                    let reason =
                        format!("token '{}' is {}", credential.name, credential.state(now));
                    return refuse(
                        StatusCode::UNAUTHORIZED,
                        INVALID_CREDENTIALS.to_owned(),
                        &reason,
                    );
                }
                Ok(None) => {
                    return refuse(
                        StatusCode::UNAUTHORIZED,
                        INVALID_CREDENTIALS.to_owned(),
                        "unknown token",
                    );
                }
                Err(error) => return error.into_response(),
            }
        }
        Presented::Certificate(certificate) => {
            match state
                .store
                .certificate_credential(&certificate.subjects, now)
                .await
            {
                Ok(Some(credential)) => (credential, "certificate"),
                Ok(None) => {
                    let reason = format!(
                        "client certificate {} (subjects {}) has no active registration",
                        certificate.fingerprint,
                        certificate.subjects.join(", ")
                    );
                    return refuse(
                        StatusCode::UNAUTHORIZED,
                        INVALID_CREDENTIALS.to_owned(),
                        &reason,
                    );
                }
                Err(error) => return error.into_response(),
            }
        }
    };
    if !credential.role.allows(&method) {
        let action = action(&method);
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "{}, you do not have permissions to {action} this resource",
                credential.name
            ),
            &format!(
                "{} credential '{}'",
                credential.role.as_str(),
                credential.name
            ),
        );
    }
    if let Err(error) = state.store.credential_used(&credential, now).await {
        // Bookkeeping only: the credential was checked.
        tracing::debug!(error = %error.detail(), "cannot note the credential's last use");
    }
    let actor = actor(credential.name.clone(), Some(&credential), auth);
    actor.scope(next.run(request)).await
}

/// The SHA-256 of a bearer token: what the store keeps.
pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    let mut hash = [0; 32];
    hash.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    hash
}

/// The credential a request carries.
enum Presented<'a> {
    Token(&'a str),
    Certificate(&'a ClientCertificate),
    /// An `Authorization` header of another scheme (or not text).
    Malformed,
    Nothing,
}

fn presented<'a>(headers: &'a HeaderMap, extensions: &'a http::Extensions) -> Presented<'a> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let Ok(value) = value.to_str() else {
            return Presented::Malformed;
        };
        return match value.split_once(' ') {
            Some((scheme, token))
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
            {
                Presented::Token(token.trim())
            }
            _ => Presented::Malformed,
        };
    }
    if let Some(value) = headers.get(KONG_ADMIN_TOKEN) {
        return match value.to_str().map(str::trim) {
            Ok(token) if !token.is_empty() => Presented::Token(token),
            _ => Presented::Malformed,
        };
    }
    match extensions.get::<ClientCertificate>() {
        Some(certificate) => Presented::Certificate(certificate),
        None => Presented::Nothing,
    }
}

/// Kong's RBAC action names.
fn action(method: &Method) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::PUT | Method::PATCH => "update",
        Method::DELETE => "delete",
        _ => "read",
    }
}

fn refusal(status: StatusCode, message: String) -> Response {
    let mut response = (status, axum::Json(json!({ "message": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"gatehouse-admin\""),
        );
    }
    response
}

// === impl Role ===

impl Role {
    /// Whether this role may send `method`.
    pub(crate) fn allows(self, method: &Method) -> bool {
        match self {
            Self::ReadWrite => true,
            Self::ReadOnly => matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_role_reads_and_nothing_else() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(Role::ReadOnly.allows(&method), "{method}");
        }
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(!Role::ReadOnly.allows(&method), "{method}");
            assert!(Role::ReadWrite.allows(&method), "{method}");
        }
    }

    #[test]
    fn credentials_are_read_from_kong_and_bearer_headers() {
        let extensions = http::Extensions::new();
        let mut headers = HeaderMap::new();
        assert!(matches!(
            presented(&headers, &extensions),
            Presented::Nothing
        ));
        headers.insert(KONG_ADMIN_TOKEN, HeaderValue::from_static("kong-style"));
        assert!(matches!(
            presented(&headers, &extensions),
            Presented::Token("kong-style")
        ));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  spaced "),
        );
        assert!(matches!(
            presented(&headers, &extensions),
            Presented::Token("spaced")
        ));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        );
        assert!(matches!(
            presented(&headers, &extensions),
            Presented::Malformed
        ));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert!(matches!(
            presented(&headers, &extensions),
            Presented::Malformed
        ));
    }

    #[test]
    fn the_stored_hash_is_sha256_of_the_token() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let hash = token_hash("abc");
        assert_eq!(
            hash[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "not SHA-256: {hash:02x?}"
        );
        assert_ne!(token_hash("abd"), hash);
    }
}
