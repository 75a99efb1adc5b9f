//! Admin API errors, shaped like Kong's (`kong/db/errors.lua`): `{code, name, message, fields}`
//! for entity errors and `{message}` for the rest. This is the one place errors become HTTP.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Map, Value, json};

use gatehouse_shared::schema::FieldErrors;

/// An error answered by the Admin API. Messages never carry private keys: they quote field
/// names, ids and unique values only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ApiError {
    /// Schema or entity-rule violations (400, code 2).
    #[error("{0}")]
    Schema(FieldErrors),
    /// A unique value is taken (409, code 5).
    #[error("UNIQUE violation detected on '{}'", lua(.0))]
    Unique(Map<String, Value>),
    /// A duplicate primary key (400, code 3).
    #[error("primary key violation on key '{}'", lua(.0))]
    PrimaryKey(Map<String, Value>),
    /// A reference to an entity that does not exist (400, code 4).
    #[error(
        "the foreign key '{}' does not reference an existing '{collection}' entity.",
        lua(key)
    )]
    ForeignKey {
        /// Field holding the reference (`service`, or `config.ca_certificates`).
        field: String,
        /// Referenced collection.
        collection: &'static str,
        /// The reference as given (`{id=...}` or `{name=...}`).
        key: Map<String, Value>,
    },
    /// Deleting an entity that others still reference with a restricting key (400, code 4).
    #[error("an existing '{child}' entity references this '{parent}' entity")]
    ReferencedBy {
        /// Referenced collection.
        parent: &'static str,
        /// Referencing collection.
        child: &'static str,
    },
    /// Deleting a CA certificate still used by services or plugins (400, code 19).
    #[error("{0}")]
    ReferencedByOthers(String),
    /// Unknown entity or endpoint (404).
    #[error("{0}")]
    NotFound(&'static str),
    /// A bad page size (400, code 9).
    #[error("{0}")]
    InvalidSize(String),
    /// A bad list option such as a malformed `tags` filter (400, code 11).
    #[error("{0}")]
    InvalidOptions(String),
    /// A bad page offset (400, code 7).
    #[error("{0}")]
    InvalidOffset(String),
    /// A request that cannot be understood (bad JSON, bad query) (400).
    #[error("{0}")]
    BadRequest(String),
    /// Content type not accepted (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Body larger than allowed (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A plugin API's answer: `{"message": ...}` with its own status (Kong's
    /// `kong.response.exit(status, {message = ...})`).
    #[error("{1}")]
    Message(StatusCode, String),
    /// An invalid declarative configuration file (400, code 14): `fields` nested as the file,
    /// `flattened_errors` one entry per entity with its path (`POST /config`, `config import`).
    #[error("{message}")]
    Declarative {
        /// Every error, quoted with its path (the first ones).
        message: String,
        /// The errors nested as the file's entities.
        fields: Value,
        /// Kong's `flattened_errors`, with each entity's `path` in the file.
        flattened: Vec<Value>,
    },
    /// A failure of ours or of the database (500). The cause is logged, not returned.
    #[error("An unexpected error occurred")]
    Internal(String),
    /// The database cannot be reached (503): refused, timed out, or its connection lost. The
    /// request may be retried; a write answered so was rolled back whole, or (when the
    /// connection was lost at the very commit) committed whole. The cause is logged.
    #[error("The database is unavailable; try again later")]
    Unavailable(String),
}

/// Kong's error codes and names, for every entity error the Admin API answers with
/// (`kong/db/errors.lua`). The OpenAPI document's `Error` schema is built from this list.
pub(crate) const CODES: &[(u8, &str)] = &[
    (2, "schema violation"),
    (3, "primary key violation"),
    (4, "foreign key violation"),
    (5, "unique constraint violation"),
    (7, "invalid offset"),
    (9, "invalid size"),
    (11, "invalid options"),
    (14, "invalid declarative configuration"),
    (19, "referenced by others"),
];

/// The name of error `code` in [`CODES`].
fn code_name(code: u8) -> &'static str {
    CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("unknown error", |(_, name)| name)
}

/// Renders a map the way Kong quotes keys in messages: `{name="svc",port=80}`.
pub(crate) fn lua(map: &Map<String, Value>) -> String {
    let parts: Vec<String> = map
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => format!("\"{s}\""),
                Value::Null => "null".to_owned(),
                Value::Object(inner) => lua(inner),
                other => other.to_string(),
            };
            format!("{k}={value}")
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

// === impl ApiError ===

impl ApiError {
    /// A single-field schema violation.
    pub(crate) fn field(name: &str, message: impl Into<String>) -> Self {
        Self::Schema(FieldErrors::one(name, message))
    }

    /// The message for logs: the cause for [`ApiError::Internal`], else the answered message.
    pub(crate) fn detail(&self) -> String {
        match self {
            Self::Internal(cause) | Self::Unavailable(cause) => cause.clone(),
            other => other.to_string(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Unique(_) => StatusCode::CONFLICT,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Message(status, _) => *status,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub(crate) fn body(&self) -> Value {
        let entity = |code: u8, fields: Value| json!({"code": code, "name": code_name(code), "message": self.to_string(), "fields": fields});
        match self {
            Self::Schema(errors) => entity(2, errors.to_json()),
            Self::PrimaryKey(key) => entity(3, Value::Object(key.clone())),
            Self::ForeignKey { field, key, .. } => {
                let mut fields = Map::new();
                nest(&mut fields, field, Value::Object(key.clone()));
                entity(4, Value::Object(fields))
            }
            Self::ReferencedBy { child, .. } => entity(4, json!({"@referenced_by": child})),
            Self::Unique(key) => entity(5, Value::Object(key.clone())),
            Self::InvalidOffset(_) => entity(7, json!({})),
            Self::InvalidSize(_) => entity(9, json!({})),
            Self::InvalidOptions(_) => entity(11, json!({})),
            Self::Declarative {
                fields, flattened, ..
            } => json!({"code": 14, "name": code_name(14), "message": self.to_string(),
                        "fields": fields, "flattened_errors": flattened}),
            Self::ReferencedByOthers(_) => {
                json!({"code": 19, "name": code_name(19), "message": self.to_string()})
            }
            Self::NotFound(_)
            | Self::BadRequest(_)
            | Self::UnsupportedMediaType(_)
            | Self::PayloadTooLarge(_)
            | Self::Message(..)
            | Self::Internal(_)
            | Self::Unavailable(_) => json!({"message": self.to_string()}),
        }
    }
}

/// Inserts `value` at a dotted path (`config.ca_certificates`).
fn nest(map: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            map.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let inner = map
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = inner {
                nest(inner, rest, value);
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(cause) => tracing::error!(%cause, "admin request failed"),
            Self::Unavailable(cause) => {
                tracing::warn!(%cause, "admin request failed: database unavailable");
            }
            _ => {}
        }
        (self.status(), Json(self.body())).into_response()
    }
}

impl From<FieldErrors> for ApiError {
    fn from(errors: FieldErrors) -> Self {
        Self::Schema(errors)
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        let text = format!("database pool: {}", crate::store::pool_error_text(&error));
        match error {
            // No connection within the pool's timeouts, or none could be made: unavailable.
            PoolError::Timeout(_) | PoolError::Backend(_) | PoolError::Closed => {
                Self::Unavailable(text)
            }
            _ => Self::Internal(text),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kong_shapes() {
        let mut key = Map::new();
        key.insert("name".into(), json!("svc"));
        let err = ApiError::Unique(key);
        assert_eq!(err.status(), StatusCode::CONFLICT);
        assert_eq!(
            err.body(),
            json!({"code": 5, "name": "unique constraint violation",
                   "message": "UNIQUE violation detected on '{name=\"svc\"}'",
                   "fields": {"name": "svc"}})
        );
        let mut key = Map::new();
        key.insert("id".into(), json!("abc"));
        let err = ApiError::ForeignKey {
            field: "config.ca_certificates".into(),
            collection: "ca_certificates",
            key,
        };
        assert_eq!(
            err.body()["fields"],
            json!({"config": {"ca_certificates": {"id": "abc"}}})
        );
        assert_eq!(
            err.to_string(),
            "the foreign key '{id=\"abc\"}' does not reference an existing 'ca_certificates' entity."
        );
        let err = ApiError::Unavailable("connection refused".into());
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            err.body(),
            json!({"message": "The database is unavailable; try again later"})
        );
    }
}
