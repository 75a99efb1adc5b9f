//! `gatehouse-cp admin-token …` and `gatehouse-cp admin-cert …`: the Admin API's credentials,
//! managed straight in PostgreSQL (so the first token can be made before anyone can use the
//! API).
//!
//! A token is 32 random bytes, base64url, prefixed `gh_`: shown once at creation, stored only
//! as its SHA-256. A certificate credential names the subject (a SAN or the CN) a client
//! certificate from `--admin-client-ca-cert` must carry. Both have a role and an expiry, and
//! stay listed after revocation or expiry (so the audit trail's ids keep a name).

use std::fmt::Write as _;
use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::admin::token_hash;
use crate::config::{ConfigError, Flags, Settings};
use crate::store::{Credential, NewCredential, NewSecret, Role, Store, unix_now};
use crate::{Error, migrate};

/// Default lifetime of a credential.
const DEFAULT_EXPIRES_IN: &str = "90d";
/// The prefix of every token, so that a leaked one is recognisable (secret scanners).
const TOKEN_PREFIX: &str = "gh_";
/// Longest credential name.
const MAX_NAME: usize = 64;
/// Longest certificate subject.
const MAX_SUBJECT: usize = 255;

/// `gatehouse-cp admin-token`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once: only its hash is stored).
    Create {
        #[command(flatten)]
        new: NewArgs,
        #[command(flatten)]
        flags: Flags,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        list: ListArgs,
        #[command(flatten)]
        flags: Flags,
    },
    /// Revoke a token: refused from its next request on.
    Revoke {
        /// The token's name or id.
        name_or_id: String,
        #[command(flatten)]
        flags: Flags,
    },
}

/// `gatehouse-cp admin-cert`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Register a client-certificate subject (a SAN or the CN of certificates issued by
    /// `--admin-client-ca-cert`).
    Add {
        /// The subject name a client certificate must carry.
        #[arg(long)]
        subject: String,
        #[command(flatten)]
        new: NewArgs,
        #[command(flatten)]
        flags: Flags,
    },
    /// List registered client-certificate subjects.
    List {
        #[command(flatten)]
        list: ListArgs,
        #[command(flatten)]
        flags: Flags,
    },
    /// Revoke a registration: its certificates are refused from their next request on.
    Revoke {
        /// The registration's name or id.
        name_or_id: String,
        #[command(flatten)]
        flags: Flags,
    },
}

/// What every new credential needs.
#[derive(Debug, Clone, Args)]
pub struct NewArgs {
    /// A unique name, shown in the audit trail (letters, digits, `.`, `_`, `@`, `-`).
    #[arg(long)]
    name: String,
    /// `read-only` (GET, HEAD, OPTIONS) or `read-write`.
    #[arg(long)]
    role: String,
    /// Lifetime: a number and a unit, `s`, `m`, `h`, `d` or `w` (e.g. `12h`, `90d`).
    #[arg(long, default_value = DEFAULT_EXPIRES_IN)]
    expires_in: String,
}

/// Listing options.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Print JSON (one array) instead of a table.
    #[arg(long)]
    json: bool,
}

// === impl TokenCommand, CertCommand ===

impl TokenCommand {
    /// The database flags.
    pub(crate) fn flags(&self) -> &Flags {
        match self {
            Self::Create { flags, .. } | Self::List { flags, .. } | Self::Revoke { flags, .. } => {
                flags
            }
        }
    }
}

impl CertCommand {
    /// The database flags.
    pub(crate) fn flags(&self) -> &Flags {
        match self {
            Self::Add { flags, .. } | Self::List { flags, .. } | Self::Revoke { flags, .. } => {
                flags
            }
        }
    }
}

/// Runs `gatehouse-cp admin-token …`, printing to `out`.
pub async fn run_token(
    command: &TokenCommand,
    settings: &Settings,
    out: &mut impl Write,
) -> Result<(), Error> {
    let store = open(settings).await?;
    let now = unix_now();
    match command {
        TokenCommand::Create { new, .. } => {
            let token = new_token()?;
            let credential = store
                .create_credential(
                    &new.resolve(NewSecret::TokenHash(token_hash(&token)), now)?,
                    now,
                )
                .await
                .map_err(store_error)?;
            eprintln!(
                "created {} token '{}' (id {}), expiring {}; it is shown once, store it now:",
                credential.role.as_str(),
                credential.name,
                credential.id,
                rfc3339(credential.expires_at)
            );
            writeln!(out, "{token}")?;
        }
        TokenCommand::List { list, .. } => {
            let all = store.credentials("token").await.map_err(store_error)?;
            print_list(&all, list.json, now, out)?;
        }
        TokenCommand::Revoke { name_or_id, .. } => {
            revoke(&store, "token", name_or_id, now, out).await?;
        }
    }
    Ok(())
}

/// Runs `gatehouse-cp admin-cert …`, printing to `out`.
pub async fn run_cert(
    command: &CertCommand,
    settings: &Settings,
    out: &mut impl Write,
) -> Result<(), Error> {
    let store = open(settings).await?;
    let now = unix_now();
    match command {
        CertCommand::Add { subject, new, .. } => {
            let subject = subject.trim();
            if subject.is_empty() || subject.len() > MAX_SUBJECT {
                return Err(usage(format!(
                    "--subject: expected 1 to {MAX_SUBJECT} characters"
                )));
            }
            let credential = store
                .create_credential(
                    &new.resolve(NewSecret::Subject(subject.to_owned()), now)?,
                    now,
                )
                .await
                .map_err(store_error)?;
            writeln!(
                out,
                "registered {} client certificate '{}' (id {}) for subject {subject}, expiring {}",
                credential.role.as_str(),
                credential.name,
                credential.id,
                rfc3339(credential.expires_at)
            )?;
        }
        CertCommand::List { list, .. } => {
            let all = store
                .credentials("certificate")
                .await
                .map_err(store_error)?;
            print_list(&all, list.json, now, out)?;
        }
        CertCommand::Revoke { name_or_id, .. } => {
            revoke(&store, "certificate", name_or_id, now, out).await?;
        }
    }
    Ok(())
}

async fn open(settings: &Settings) -> Result<Store, Error> {
    // The tables may not exist yet on a fresh database.
    migrate(settings).await?;
    Store::connect(settings.require_database_url()?, 1, Vec::new())
}

async fn revoke(
    store: &Store,
    kind: &str,
    name_or_id: &str,
    now: i64,
    out: &mut impl Write,
) -> Result<(), Error> {
    match store
        .revoke_credential(kind, name_or_id, now)
        .await
        .map_err(store_error)?
    {
        Some(credential) => {
            writeln!(
                out,
                "revoked {kind} '{}' (id {}) at {}",
                credential.name,
                credential.id,
                rfc3339(credential.revoked_at.unwrap_or(now))
            )?;
            Ok(())
        }
        None => Err(usage(format!("no {kind} named or with id '{name_or_id}'"))),
    }
}

fn print_list(all: &[Credential], json: bool, now: i64, out: &mut impl Write) -> Result<(), Error> {
    if json {
        let rows: Vec<_> = all
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "name": c.name,
                    "role": c.role.as_str(),
                    "subject": c.subject,
                    "state": c.state(now),
                    "created_at": c.created_at,
                    "expires_at": c.expires_at,
                    "revoked_at": c.revoked_at,
                    "last_used_at": c.last_used_at,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(rows))?;
        return Ok(());
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<36}  {:<20}  {:<10}  {:<7}  {:<20}  {:<20}  SUBJECT",
        "ID", "NAME", "ROLE", "STATE", "EXPIRES", "LAST USED"
    );
    for c in all {
        let _ = writeln!(
            text,
            "{:<36}  {:<20}  {:<10}  {:<7}  {:<20}  {:<20}  {}",
            c.id,
            c.name,
            c.role.as_str(),
            c.state(now),
            rfc3339(c.expires_at),
            c.last_used_at.map_or_else(|| "never".to_owned(), rfc3339),
            c.subject.as_deref().unwrap_or("-"),
        );
    }
    out.write_all(text.as_bytes())?;
    Ok(())
}

// === impl NewArgs ===

impl NewArgs {
    fn resolve(&self, secret: NewSecret, now: i64) -> Result<NewCredential, Error> {
        let name = self.name.trim();
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
        {
            return Err(usage(format!(
                "--name: expected 1 to {MAX_NAME} letters, digits, '.', '_', '@' or '-'"
            )));
        }
        let role = Role::parse(self.role.trim()).ok_or_else(|| {
            usage(format!(
                "--role: '{}' is not one of read-only, read-write",
                self.role
            ))
        })?;
        let lifetime = parse_lifetime(&self.expires_in).map_err(usage)?;
        Ok(NewCredential {
            name: name.to_owned(),
            role,
            secret,
            expires_at: now.saturating_add(lifetime),
        })
    }
}

/// `12h`, `90d`, `2w` → seconds (at least one second, at most ten years).
fn parse_lifetime(text: &str) -> Result<i64, String> {
    const TEN_YEARS: i64 = 10 * 365 * 86_400;
    let invalid = || {
        format!("--expires-in: '{text}' is not a lifetime (a number and s, m, h, d or w, e.g. 90d)")
    };
    let text = text.trim();
    let unit_at = text.len().checked_sub(1).ok_or_else(invalid)?;
    let (number, unit) = text.split_at(unit_at);
    let number: i64 = number.parse().map_err(|_| invalid())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(invalid()),
    };
    match number.checked_mul(scale) {
        Some(seconds) if (1..=TEN_YEARS).contains(&seconds) => Ok(seconds),
        _ => Err(format!(
            "--expires-in: '{text}' is out of range (1 second to 10 years)"
        )),
    }
}

/// A fresh token: 256 random bits.
fn new_token() -> Result<String, Error> {
    crate::tokens::random_secret(TOKEN_PREFIX)
        .ok_or_else(|| Error::Io(std::io::Error::other("no random numbers available")))
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn usage(message: String) -> Error {
    Error::Config(ConfigError::new(message))
}

fn store_error(error: crate::error::ApiError) -> Error {
    match error {
        crate::error::ApiError::Unique(_) => {
            usage("--name: a credential with this name exists already".into())
        }
        other => Error::Database(other.detail()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_with_their_unit_and_stay_in_range() {
        assert_eq!(parse_lifetime("90d"), Ok(90 * 86_400));
        assert_eq!(parse_lifetime("12h"), Ok(43_200));
        assert_eq!(parse_lifetime("2w"), Ok(14 * 86_400));
        assert_eq!(parse_lifetime("1s"), Ok(1));
        for bad in [
            "",
            "d",
            "90",
            "90x",
            "-1d",
            "0s",
            "11000d",
            "9999999999999999999w",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_long_prefixed_and_distinct() {
        let a = new_token().expect("a token");
        let b = new_token().expect("a token");
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert_ne!(a, b);
    }
}
