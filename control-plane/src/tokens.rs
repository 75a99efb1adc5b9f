//! Bootstrap tokens for data-plane enrolment: created through `POST /clustering/tokens` or
//! `gatehouse-cp cluster-token create`, shown once, stored only as the SHA-256 of the secret.
//!
//! A token is `ghbt_` followed by 43 base64url characters (32 random bytes): too much entropy
//! to guess, so a plain SHA-256 is enough to store it (no salt or slow hash needed).

use std::io::Write;

use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use gatehouse_shared::schema::FieldErrors;

use crate::config::Flags;
use crate::error::ApiError;
use crate::store::{Store, Token, unix_now};

/// Prefix of every bootstrap token (recognisable by secret scanners).
pub(crate) const TOKEN_PREFIX: &str = "ghbt_";
/// Default lifetime of a token, in seconds (one hour).
pub(crate) const DEFAULT_TTL: i64 = 3600;
/// Longest lifetime of a token, in seconds (one year).
const MAX_TTL: i64 = 365 * 24 * 3600;
/// Most uses of one token.
const MAX_USES: i64 = 1_000_000;
/// Most labels of a token, and the longest key or value.
const MAX_LABELS: usize = 64;
const MAX_LABEL_LEN: usize = 256;

/// What a new token is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewToken {
    pub(crate) max_uses: i32,
    pub(crate) ttl: i64,
    pub(crate) labels: Map<String, Value>,
}

/// `gatehouse-cp cluster-token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token and print it (the only time it is shown).
    Create(CreateArgs),
    /// List the tokens (never their secrets).
    List(Flags),
    /// Revoke a token by id.
    Revoke(RevokeArgs),
}

/// Arguments of `cluster-token create`.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// How many data planes may enrol with it.
    #[arg(long, default_value_t = 1)]
    pub uses: i64,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = DEFAULT_TTL)]
    pub ttl: i64,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub flags: Flags,
}

/// Arguments of `cluster-token revoke`.
#[derive(Debug, Clone, Args)]
pub struct RevokeArgs {
    /// The token's id.
    pub id: String,
    #[command(flatten)]
    pub flags: Flags,
}

impl TokenCommand {
    /// The database settings of the command.
    pub fn flags(&self) -> &Flags {
        match self {
            Self::Create(args) => &args.flags,
            Self::List(flags) => flags,
            Self::Revoke(args) => &args.flags,
        }
    }
}

/// A new random token secret.
fn new_secret() -> Result<String, ApiError> {
    random_secret(TOKEN_PREFIX)
        .ok_or_else(|| ApiError::Internal("the system random generator failed".into()))
}

/// A fresh secret: `prefix` and 256 random bits in base64url (43 characters); `None` when the
/// system random generator fails. Bootstrap tokens and Admin API tokens are made with it.
pub(crate) fn random_secret(prefix: &str) -> Option<String> {
    let mut bytes = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .ok()?;
    Some(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The stored form of a secret: lowercase hex SHA-256.
pub(crate) fn hash(secret: &str) -> String {
    gatehouse_shared::x509::sha256_hex(secret.trim().as_bytes())
}

/// Parses a `POST /clustering/tokens` body: `max_uses` (default 1), `ttl` seconds (default
/// 3600), `labels` (object of strings). Unknown fields are refused.
pub(crate) fn parse_new(body: &Map<String, Value>) -> Result<NewToken, ApiError> {
    let mut errors = FieldErrors::default();
    let integer =
        |name: &str, default: i64, max: i64, errors: &mut FieldErrors| match body.get(name) {
            None | Some(Value::Null) => default,
            Some(value) => {
                let parsed = value
                    .as_i64()
                    .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()));
                match parsed {
                    Some(n) if (1..=max).contains(&n) => n,
                    _ => {
                        errors.field(name, format!("value should be between 1 and {max}"));
                        default
                    }
                }
            }
        };
    let max_uses = integer("max_uses", 1, MAX_USES, &mut errors);
    let ttl = integer("ttl", DEFAULT_TTL, MAX_TTL, &mut errors);
    let labels = match body.get("labels") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(labels)) => {
            if labels.len() > MAX_LABELS {
                errors.field("labels", format!("at most {MAX_LABELS} labels"));
            }
            for (key, value) in labels {
                let ok = value
                    .as_str()
                    .is_some_and(|v| v.len() <= MAX_LABEL_LEN && !key.is_empty())
                    && key.len() <= MAX_LABEL_LEN;
                if !ok {
                    errors.nested_field(
                        "labels",
                        key,
                        format!("expected a string of at most {MAX_LABEL_LEN} characters"),
                    );
                }
            }
            labels.clone()
        }
        Some(_) => {
            errors.field("labels", "expected a map of strings");
            Map::new()
        }
    };
    for key in body.keys() {
        if !matches!(key.as_str(), "max_uses" | "ttl" | "labels") {
            errors.field(key, "unknown field");
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Schema(errors));
    }
    Ok(NewToken {
        max_uses: i32::try_from(max_uses).unwrap_or(i32::MAX),
        ttl,
        labels,
    })
}

/// Creates a token; returns it and its secret (to show once).
pub(crate) async fn create(store: &Store, new: NewToken) -> Result<(Token, String), ApiError> {
    let secret = new_secret()?;
    let now = unix_now();
    let token = Token {
        id: Uuid::new_v4(),
        max_uses: new.max_uses,
        uses: 0,
        labels: Value::Object(new.labels),
        expires_at: now.saturating_add(new.ttl),
        revoked_at: None,
        last_used_at: None,
        created_at: now,
    };
    store.create_token(&token, &hash(&secret)).await?;
    tracing::info!(id = %token.id, max_uses = token.max_uses, expires_at = token.expires_at, "bootstrap token created");
    Ok((token, secret))
}

/// A token as the Admin API and the CLI show it (never the secret).
pub(crate) fn token_json(token: &Token, now: i64) -> Value {
    json!({
        "id": token.id,
        "max_uses": token.max_uses,
        "uses": token.uses,
        "labels": token.labels,
        "expires_at": token.expires_at,
        "revoked_at": token.revoked_at,
        "last_used_at": token.last_used_at,
        "created_at": token.created_at,
        "status": token.unusable(now).unwrap_or("active"),
    })
}

/// Runs a `cluster-token` command against the database of its flags; prints JSON.
pub async fn run(command: &TokenCommand, out: &mut dyn Write) -> Result<(), crate::Error> {
    let settings = command.flags().settings()?;
    let store = Store::connect(settings.require_database_url()?, 1, Vec::new())?;
    store.migrate().await?;
    let fail = |e: ApiError| crate::Error::Command(e.detail());
    let now = unix_now();
    let printed = match command {
        TokenCommand::Create(args) => {
            let mut body = Map::new();
            body.insert("max_uses".into(), json!(args.uses));
            body.insert("ttl".into(), json!(args.ttl));
            let mut labels = Map::new();
            for label in &args.labels {
                let Some((key, value)) = label.split_once('=') else {
                    return Err(crate::Error::Command(format!(
                        "--label '{label}': expected KEY=VALUE"
                    )));
                };
                labels.insert(key.trim().to_owned(), json!(value.trim()));
            }
            body.insert("labels".into(), Value::Object(labels));
            let new = parse_new(&body).map_err(fail)?;
            let (token, secret) = create(&store, new).await.map_err(fail)?;
            let mut shown = token_json(&token, now);
            shown["token"] = json!(secret);
            shown
        }
        TokenCommand::List(_) => {
            let tokens = store.tokens().await.map_err(fail)?;
            json!({"data": tokens.iter().map(|t| token_json(t, now)).collect::<Vec<_>>()})
        }
        TokenCommand::Revoke(args) => {
            let id = Uuid::parse_str(args.id.trim())
                .map_err(|_| crate::Error::Command(format!("'{}' is not a token id", args.id)))?;
            if !store.revoke_token(id, now).await.map_err(fail)? {
                return Err(crate::Error::Command(format!("no token {id}")));
            }
            let token = store.token(id).await.map_err(fail)?;
            token.map_or(Value::Null, |t| token_json(&t, now))
        }
    };
    writeln!(out, "{printed}").map_err(|e| crate::Error::Command(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert!(
            a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 43,
            "{a}"
        );
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn bodies_are_checked() {
        let parse = |v: Value| parse_new(v.as_object().unwrap());
        let ok = parse(json!({"max_uses": 3, "ttl": "60", "labels": {"zone": "a"}})).unwrap();
        assert_eq!((ok.max_uses, ok.ttl), (3, 60));
        assert_eq!(parse(json!({})).unwrap().max_uses, 1);
        let Err(ApiError::Schema(error)) =
            parse(json!({"max_uses": 0, "ttl": -1, "labels": {"k": 1}, "x": 1}))
        else {
            panic!("not a schema violation")
        };
        let fields = error.to_json();
        assert!(fields["max_uses"].is_string(), "{fields}");
        assert!(fields["ttl"].is_string(), "{fields}");
        assert!(fields["labels"]["k"].is_string(), "{fields}");
        assert_eq!(fields["x"], "unknown field");
    }
}
