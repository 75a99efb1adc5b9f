//! The `acme` plugin's Admin API, as Kong's `kong/plugins/acme/api.lua`: `POST /acme`,
//! `PATCH /acme`, `GET /acme/certificates[?invalid_only]`, `GET /acme/certificates/{host}`.
//!
//! Certificate entries have Kong's fields (`digest`, `host`, `issuer_cn`, `not_before`,
//! `not_after`, `valid`, `serial_number`, `pubkey_type`) plus what this control plane knows of
//! the name: `failures`, `last_error`, `next_attempt_at`, `last_success_at`. A name whose
//! first order has not succeeded is listed too, with null certificate fields and `valid`
//! false, so failures are visible.

use axum::response::Response;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Request, State, ok, read_body};
use crate::acme::{AcmeConfig, AcmeError};
use crate::error::ApiError;
use crate::store::{AcmeName, unix_now};

/// `POST /acme` and `PATCH /acme`.
pub(super) async fn acme(
    state: &State,
    request: Request,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let acme = state
        .node
        .acme
        .get()
        .ok_or(ApiError::NotFound("Not found"))?;
    let Some(config) = AcmeConfig::load(&state.store).await? else {
        return Err(ApiError::NotFound("Not found"));
    };
    if request.method == Method::PATCH {
        let marked = state.store.acme_renew_all(unix_now()).await?;
        tracing::info!(names = marked, "acme: renewal asked");
        acme.wake();
        return Ok(ok(
            StatusCode::ACCEPTED,
            json!({"message": "Renewal process started successfully"}),
        ));
    }
    let mut params = if body.is_empty() {
        serde_json::Map::new()
    } else {
        read_body("plugins", &request.headers, body, Some("acme")).await?
    };
    for (key, value) in url::form_urlencoded::parse(request.query.as_bytes()) {
        params
            .entry(key.into_owned())
            .or_insert(Value::from(value.into_owned()));
    }
    let Some(host) = params.get("host").and_then(Value::as_str) else {
        return Err(message(
            StatusCode::BAD_REQUEST,
            "host must be provided and containing a single domain",
        ));
    };
    // As Kong: no port, for safety in the test flow.
    if host.contains(':') {
        return Err(message(
            StatusCode::BAD_REQUEST,
            "port is not allowed in host",
        ));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if gatehouse_shared::checks::wildcard_host(&host).is_err() {
        return Err(message(
            StatusCode::BAD_REQUEST,
            "host must be provided and containing a single domain",
        ));
    }
    let test_flow = matches!(
        params.get("test_http_challenge_flow"),
        Some(Value::Bool(true))
    ) || params
        .get("test_http_challenge_flow")
        .and_then(Value::as_str)
        == Some("true");
    if test_flow {
        return test_http_challenge_flow(acme, &config, &host).await;
    }
    match acme.create(&host).await {
        Ok(_) => Ok(ok(
            StatusCode::CREATED,
            json!({"message": format!("certificate for host {host} is created")}),
        )),
        Err(AcmeError::Busy) => Err(message(
            StatusCode::CONFLICT,
            &format!("an order for host {host} is already running"),
        )),
        Err(AcmeError::Store(error)) => Err(error),
        Err(error) => Err(message(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("failed to update certificate: {error}"),
        )),
    }
}

/// Kong's sanity check: the name is in `domains`, and its challenge path reaches a data
/// plane's challenge responder (see [`crate::acme::Acme::check_http_challenge_flow`]).
async fn test_http_challenge_flow(
    acme: &crate::acme::Acme,
    config: &AcmeConfig,
    host: &str,
) -> Result<Response, ApiError> {
    let fail = |why: &str| {
        message(
            StatusCode::BAD_REQUEST,
            &format!("problem found running sanity check for {host}: {why}"),
        )
    };
    if !config.in_domains(host) {
        return Err(fail("host is not included in plugin config.domains"));
    }
    acme.check_http_challenge_flow(host)
        .await
        .map_err(|why| fail(&why))?;
    Ok(ok(
        StatusCode::OK,
        json!({"message": format!("sanity test for host {host} passed")}),
    ))
}

/// `GET /acme/certificates` and `GET /acme/certificates/{host}`.
pub(super) async fn certificates(state: &State, request: Request) -> Result<Response, ApiError> {
    if AcmeConfig::load(&state.store).await?.is_none() {
        return Err(ApiError::NotFound("Not found"));
    }
    let now = unix_now();
    if let Some(host) = request.params.first() {
        let found = state
            .store
            .acme_name(&host.to_ascii_lowercase())
            .await?
            .filter(|name| name.cert.is_some());
        return match found {
            Some(name) => Ok(ok(StatusCode::OK, json!({"data": entry(&name, now)}))),
            None => Err(message(
                StatusCode::NOT_FOUND,
                &format!("Certificate for host {host} not found in storage"),
            )),
        };
    }
    let invalid_only = url::form_urlencoded::parse(request.query.as_bytes())
        .any(|(key, value)| key == "invalid_only" && !matches!(value.as_ref(), "false" | "0"));
    let data: Vec<Value> = state
        .store
        .acme_names()
        .await?
        .iter()
        .map(|name| entry(name, now))
        .filter(|entry| !invalid_only || entry["valid"] != json!(true))
        .collect();
    Ok(ok(StatusCode::OK, json!({"data": data})))
}

/// One name as Kong's `parse_certkey` shows it, with our state of the name.
fn entry(name: &AcmeName, now: i64) -> Value {
    let mut out = json!({
        "host": name.host,
        "digest": null,
        "issuer_cn": null,
        "not_before": null,
        "not_after": null,
        "valid": false,
        "serial_number": null,
        "pubkey_type": null,
        "failures": name.failures,
        "last_error": name.last_error,
        "next_attempt_at": (name.next_attempt_at > now).then_some(name.next_attempt_at),
        "last_success_at": name.last_success_at,
    });
    let Some(der) = name
        .cert
        .as_deref()
        .and_then(|pem| gatehouse_shared::x509::parse_certificates(pem).ok())
        .and_then(|chain| chain.into_iter().next())
    else {
        return out;
    };
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return out;
    };
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let issuer_cn = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let pubkey_type = match cert
        .public_key()
        .algorithm
        .algorithm
        .to_id_string()
        .as_str()
    {
        "1.2.840.113549.1.1.1" => "rsaEncryption".to_owned(),
        "1.2.840.10045.2.1" => "id-ecPublicKey".to_owned(),
        other => other.to_owned(),
    };
    out["digest"] = json!(colon_hex(&sha1(der.as_ref())));
    out["issuer_cn"] = json!(issuer_cn);
    out["not_before"] = json!(date(not_before));
    out["not_after"] = json!(date(not_after));
    // Validity is inclusive at both ends (RFC 5280 4.1.2.5).
    out["valid"] = json!(not_before <= now && now <= not_after);
    out["serial_number"] = json!(colon_hex(cert.raw_serial()));
    out["pubkey_type"] = json!(pubkey_type);
    out
}

/// SHA-1 of a certificate: Kong's `digest` (OpenSSL's default certificate digest).
fn sha1(der: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
        .as_ref()
        .to_vec()
}

/// `AB:CD:...`, as Kong prints digests and serial numbers.
fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `%Y-%m-%d %H:%M:%S` in UTC, as Kong's `os.date` on a UTC host.
fn date(unix: i64) -> Option<String> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(format).ok())
}

/// A `{"message": ...}` answer with any status.
fn message(status: StatusCode, text: &str) -> ApiError {
    ApiError::Message(status, text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_formats() {
        assert_eq!(colon_hex(&[0x0a, 0xff, 0x10]), "0A:FF:10");
        assert_eq!(date(0).as_deref(), Some("1970-01-01 00:00:00"));
        assert_eq!(date(1_700_000_000).as_deref(), Some("2023-11-14 22:13:20"));
    }
}
