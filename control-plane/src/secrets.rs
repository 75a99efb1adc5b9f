//! Secret references (Kong's syntax) in certificate `cert`, `key`, `cert_alt` and `key_alt`:
//! `{vault://env/NAME}` (the environment variable `NAME`; Kong's env vault also reads
//! `NAME` upper-cased with `-` as `_`), `{vault://env/NAME/FIELD}` (member `FIELD` of the
//! JSON object in `NAME`) and `{vault://file/PATH}` (the content of the absolute `PATH`).
//!
//! The store keeps the reference, never the secret; the Admin API answers the reference. A
//! reference is resolved on the control plane when written (one that does not resolve, or
//! whose value is not valid, is refused with a Kong-shaped 400 and nothing is written), when
//! a snapshot is built, and every `--secret-refresh-interval` (a changed value makes one new
//! config version, so data planes rotate). A reference that stops resolving keeps its last
//! good value for `--secret-grace` (reported in the log); after that the snapshot cannot be
//! built and data planes keep their last configuration: an empty or stale key is never sent.
//!
//! The control plane's `--database-url` may be a reference too, resolved once at startup.
//!
//! A HashiCorp Vault or cloud KMS backend is one more [`SecretBackend`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::error::ApiError;

/// What every reference starts with.
const PREFIX: &str = "{vault://";
/// Largest secret read from a file, in bytes.
const MAX_FILE: u64 = 1024 * 1024;
/// The certificate fields that may hold a reference.
pub(crate) const REFERENCE_FIELDS: &[&str] = &["cert", "key", "cert_alt", "key_alt"];

/// Where secrets come from: `{vault://<name>/<resource>}`.
pub(crate) trait SecretBackend: Send + Sync {
    /// The backend's name in references (`env`, `file`).
    fn name(&self) -> &'static str;
    /// The secret named `resource`. The error must not contain the secret.
    fn fetch(&self, resource: &str) -> Result<String, String>;
}

/// `{vault://env/NAME[/FIELD]}`.
struct Env;

/// `{vault://file/PATH}`.
struct File;

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference<'a> {
    backend: &'a str,
    resource: &'a str,
}

/// Resolves references, remembering each one's last good value.
pub(crate) struct Secrets {
    backends: Vec<Box<dyn SecretBackend>>,
    grace: Duration,
    last_good: Mutex<HashMap<String, (String, Instant)>>,
    /// References that do not resolve now: the error and since when (Unix seconds).
    failing: Mutex<HashMap<String, (String, i64)>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// `Some` when `text` is a reference (well formed or not).
pub(crate) fn is_reference(text: &str) -> bool {
    text.trim_start().starts_with(PREFIX)
}

/// Parses `{vault://backend/resource}`.
fn parse(text: &str) -> Result<Reference<'_>, String> {
    let inner = text
        .trim()
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_suffix('}'))
        .ok_or("a reference is {vault://BACKEND/RESOURCE}")?;
    let (backend, resource) = inner
        .split_once('/')
        .filter(|(b, r)| !b.is_empty() && !r.is_empty())
        .ok_or("a reference is {vault://BACKEND/RESOURCE}")?;
    Ok(Reference { backend, resource })
}

// === impl Env ===

impl SecretBackend for Env {
    fn name(&self) -> &'static str {
        "env"
    }

    fn fetch(&self, resource: &str) -> Result<String, String> {
        let (name, field) = match resource.split_once('/') {
            Some((name, field)) => (name, Some(field)),
            None => (resource, None),
        };
        let kong_name = name.to_ascii_uppercase().replace('-', "_");
        let value = std::env::var(name)
            .or_else(|_| std::env::var(&kong_name))
            .map_err(|_| format!("environment variable '{name}' is not set"))?;
        match field {
            None => Ok(value),
            Some(field) => serde_json::from_str::<Map<String, Value>>(&value)
                .ok()
                .and_then(|object| match object.get(field) {
                    Some(Value::String(text)) => Some(text.clone()),
                    _ => None,
                })
                .ok_or_else(|| {
                    format!(
                        "environment variable '{name}' is not a JSON object with a string \
                         member '{field}'"
                    )
                }),
        }
    }
}

// === impl File ===

impl SecretBackend for File {
    fn name(&self) -> &'static str {
        "file"
    }

    fn fetch(&self, resource: &str) -> Result<String, String> {
        // `{vault://file//etc/x}` and `{vault://file/etc/x}` both name /etc/x.
        let path = std::path::PathBuf::from(format!("/{}", resource.trim_start_matches('/')));
        let size = std::fs::metadata(&path)
            .map_err(|e| format!("file '{}': {e}", path.display()))?
            .len();
        if size > MAX_FILE {
            return Err(format!(
                "file '{}' is larger than {MAX_FILE} bytes",
                path.display()
            ));
        }
        std::fs::read_to_string(&path).map_err(|e| format!("file '{}': {e}", path.display()))
    }
}

// === impl Secrets ===

impl Secrets {
    /// The `env` and `file` backends; a value that stops resolving is kept for `grace`.
    pub(crate) fn new(grace: Duration) -> Self {
        Self {
            backends: vec![Box::new(Env), Box::new(File)],
            grace,
            last_good: Mutex::new(HashMap::new()),
            failing: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves `reference` now; remembers the value as its last good one.
    fn fetch(&self, reference: &str) -> Result<String, String> {
        let parsed = parse(reference)?;
        let backend = self
            .backends
            .iter()
            .find(|b| b.name() == parsed.backend)
            .ok_or_else(|| {
                format!(
                    "unknown vault '{}' (known: {})",
                    parsed.backend,
                    self.backends
                        .iter()
                        .map(|b| b.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let value = backend.fetch(parsed.resource)?;
        if value.trim().is_empty() {
            return Err("the secret is empty".into());
        }
        if let Ok(mut cache) = self.last_good.lock() {
            cache.insert(reference.to_owned(), (value.clone(), Instant::now()));
        }
        Ok(value)
    }

    /// A setting of the control plane's own given as a reference (`--database-url
    /// {vault://file/run/secrets/db-url}`): its value, trimmed, read once at startup; any
    /// other text as it is.
    pub(crate) fn setting(text: &str) -> Result<String, String> {
        if !is_reference(text) {
            return Ok(text.to_owned());
        }
        let value = Self::new(Duration::ZERO).fetch(text.trim())?;
        Ok(value.trim().to_owned())
    }

    /// Resolves `reference`, or falls back on its last good value while that is younger than
    /// the grace period (logged); an error after that.
    fn resolve(&self, reference: &str) -> Result<String, String> {
        let fetched = self.fetch(reference);
        if let Ok(mut failing) = self.failing.lock() {
            match &fetched {
                Ok(_) => {
                    failing.remove(reference);
                }
                Err(error) => {
                    let since = failing
                        .get(reference)
                        .map_or_else(crate::store::unix_now, |(_, since)| *since);
                    failing.insert(reference.to_owned(), (error.clone(), since));
                }
            }
        }
        match fetched {
            Ok(value) => Ok(value),
            Err(error) => {
                let cached = self
                    .last_good
                    .lock()
                    .ok()
                    .and_then(|cache| cache.get(reference).cloned());
                match cached {
                    Some((value, at)) if at.elapsed() <= self.grace => {
                        tracing::warn!(
                            reference,
                            %error,
                            age_s = at.elapsed().as_secs(),
                            "secret reference does not resolve: its last good value is used \
                             until the grace period ends"
                        );
                        Ok(value)
                    }
                    _ => Err(error),
                }
            }
        }
    }

    /// Write path: replaces every reference among the certificate fields of `obj` with its
    /// value (to validate it); returns the references to put back before storing. A reference
    /// that does not resolve is a field error (400).
    pub(crate) fn resolve_for_write(
        &self,
        obj: &mut Map<String, Value>,
    ) -> Result<Vec<(&'static str, String)>, ApiError> {
        let mut references = Vec::new();
        let mut errors = gatehouse_shared::schema::FieldErrors::default();
        for field in REFERENCE_FIELDS {
            let Some(Value::String(text)) = obj.get(*field) else {
                continue;
            };
            if !is_reference(text) {
                continue;
            }
            let reference = text.trim().to_owned();
            match self.fetch(&reference) {
                Ok(value) => {
                    obj.insert((*field).to_owned(), Value::String(value));
                    references.push((*field, reference));
                }
                Err(error) => {
                    errors.field(field, format!("could not resolve {reference}: {error}"));
                }
            }
        }
        if errors.is_empty() {
            Ok(references)
        } else {
            Err(ApiError::Schema(errors))
        }
    }

    /// Snapshot path: replaces the references of a certificate read from the store with their
    /// values (last good ones within the grace period). An error names the certificate.
    pub(crate) fn resolve_entity(&self, entity: &mut Value) -> Result<(), ApiError> {
        let id = entity
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        for field in REFERENCE_FIELDS {
            let Some(Value::String(text)) = entity.get_mut(*field) else {
                continue;
            };
            if !is_reference(text) {
                continue;
            }
            let reference = text.trim().to_owned();
            *text = self.resolve(&reference).map_err(|error| {
                ApiError::Internal(format!(
                    "certificate {id}: {field} {reference} does not resolve and has no last \
                     good value within the grace period: {error}"
                ))
            })?;
        }
        Ok(())
    }

    /// The references that did not resolve at their last resolution, for
    /// `GET /clustering/status`: `[{reference, error, since, last_good_value}]`.
    pub(crate) fn failing(&self) -> Value {
        let failing = self.failing.lock().map(|f| f.clone()).unwrap_or_default();
        let last_good = self.last_good.lock().map(|l| l.clone()).unwrap_or_default();
        let mut list: Vec<Value> = failing
            .into_iter()
            .map(|(reference, (error, since))| {
                let kept = last_good
                    .get(&reference)
                    .is_some_and(|(_, at)| at.elapsed() <= self.grace);
                serde_json::json!({
                    "reference": reference,
                    "error": error,
                    "since": since,
                    "last_good_value_used": kept,
                })
            })
            .collect();
        list.sort_by(|a, b| a["reference"].as_str().cmp(&b["reference"].as_str()));
        Value::Array(list)
    }

    /// A digest of the current values of `references` (SHA-256 of them all, in order): what
    /// the refresh compares. A reference that does not resolve counts as its last good value.
    pub(crate) fn digest(&self, references: &[String]) -> String {
        let mut all = String::new();
        for reference in references {
            let value = self
                .resolve(reference)
                .unwrap_or_else(|error| format!("unresolved: {error}"));
            all.push_str(reference);
            all.push('\0');
            all.push_str(&gatehouse_shared::x509::sha256_hex(value.as_bytes()));
            all.push('\n');
        }
        gatehouse_shared::x509::sha256_hex(all.as_bytes())
    }
}

/// Re-resolves the secret references every `interval`, for the life of the process.
pub(crate) fn spawn_refresh(store: std::sync::Arc<crate::store::Store>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = store.refresh_secret_references().await {
                tracing::warn!(error = %error.detail(), "secret references: refresh failed");
            }
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_resolve_from_files() {
        assert!(is_reference(" {vault://env/X}"));
        assert!(!is_reference("-----BEGIN"));
        assert_eq!(
            parse("{vault://file//run/secret/key.pem}").unwrap(),
            Reference {
                backend: "file",
                resource: "/run/secret/key.pem"
            }
        );
        for bad in [
            "{vault://}",
            "{vault://env}",
            "{vault://env/}",
            "{vault://env/X",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let dir = std::env::temp_dir().join(format!("gh-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.pem");
        std::fs::write(&path, "value-1").unwrap();
        let reference = format!("{{vault://file/{}}}", path.display());
        let secrets = Secrets::new(Duration::from_secs(3600));
        let mut obj = Map::new();
        obj.insert("key".into(), Value::String(reference.clone()));
        obj.insert("cert".into(), Value::String("{vault://nope/x}".into()));
        let error = secrets.resolve_for_write(&mut obj.clone()).unwrap_err();
        assert!(matches!(error, ApiError::Schema(_)), "{error:?}");
        obj.remove("cert");
        let refs = secrets.resolve_for_write(&mut obj).unwrap();
        assert_eq!(refs, [("key", reference.clone())]);
        assert_eq!(obj["key"], "value-1");
        let digest = secrets.digest(std::slice::from_ref(&reference));
        // The value changes: another digest. It vanishes: the last good value is kept.
        std::fs::write(&path, "value-2").unwrap();
        let changed = secrets.digest(std::slice::from_ref(&reference));
        assert_ne!(digest, changed);
        std::fs::remove_file(&path).unwrap();
        let mut entity = serde_json::json!({"id": "c1", "key": reference});
        secrets.resolve_entity(&mut entity).unwrap();
        assert_eq!(entity["key"], "value-2");
        assert_eq!(secrets.digest(std::slice::from_ref(&reference)), changed);
        let failing = secrets.failing();
        assert_eq!(failing[0]["reference"], reference.as_str());
        assert_eq!(failing[0]["last_good_value_used"], true);
        assert!(
            !failing.to_string().contains("value-2"),
            "no value reported"
        );
        // Without a grace period, it is an error (never an empty key).
        let strict = Secrets::new(Duration::ZERO);
        let mut entity = serde_json::json!({"id": "c1", "key": reference});
        let error = strict.resolve_entity(&mut entity).unwrap_err();
        assert!(matches!(error, ApiError::Internal(ref m) if m.contains("does not resolve")));

        // A setting given as a reference: its trimmed value, once; text as it is.
        std::fs::write(&path, "postgres://db/x\n").unwrap();
        assert_eq!(Secrets::setting(&reference).unwrap(), "postgres://db/x");
        assert_eq!(
            Secrets::setting("postgres://a/b").unwrap(),
            "postgres://a/b"
        );
        assert!(Secrets::setting("{vault://env/GH_UNSET_FOR_TEST}").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
