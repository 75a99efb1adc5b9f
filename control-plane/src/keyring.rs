//! Keys encrypted at rest: envelope encryption of the private keys the control plane stores.
//!
//! - A **key-encryption key** (KEK) is 32 random bytes the database never sees, read from
//!   `--keyring-key-file` (or `GATEHOUSE_KEYRING_KEY`): one entry `ID:BASE64` per line (`#`
//!   comments), the first the active one; older entries stay while data keys they wrap exist.
//!   Every control-plane replica reads the same file. A data key wrapped by a KEK the file does
//!   not name (yet) makes the file be read again, so a replica follows an edited file.
//! - **Data keys** are random 256-bit keys stored in `keyring_data_keys`, wrapped by a KEK
//!   (AES-256-GCM, associated data `keyring data key <id>`); `keyring_active` names the one new
//!   values are sealed with.
//! - A **sealed value** is `ghenc:v1:<data key id>:<base64(nonce || ciphertext || tag)>`; the
//!   associated data is the header and `<table>.<column>:<row>`, so a value moved to another
//!   row or column, or altered, does not open (and is never served).
//!
//! Without a keyring, values are written in clear (the control plane warns at startup) and a
//! sealed value is refused with a clear error; `serve` refuses to start when the database
//! holds data keys. `keyring init|rotate|status` manage it (see [`KeyringCommand`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use serde_json::Value;
use tokio_postgres::GenericClient;

use gatehouse_shared::sealed::{KEY_LEN, SealingKey, random_key};

use crate::config::Flags;
use crate::error::ApiError;
use crate::store::{Store, db_error};

/// What every sealed value starts with (then the format version).
pub(crate) const SEALED_PREFIX: &str = "ghenc:";
/// The current format: AES-256-GCM under a data key.
const V1: &str = "ghenc:v1:";
/// Longest KEK id.
const MAX_KEK_ID: usize = 64;

/// Where the key-encryption keys come from.
#[derive(Clone)]
#[non_exhaustive]
pub enum KekSource {
    /// `--keyring-key-file`: re-read when a data key names a KEK it does not hold.
    File(PathBuf),
    /// `GATEHOUSE_KEYRING_KEY`: the same text as the file holds.
    Env(String),
}

impl std::fmt::Debug for KekSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Env(_) => f.write_str("Env(..)"),
        }
    }
}

/// One key-encryption key.
struct Kek {
    id: String,
    key: SealingKey,
}

/// The key-encryption keys and the data keys opened so far.
pub(crate) struct Keyring {
    source: Option<KekSource>,
    keks: RwLock<Arc<Vec<Kek>>>,
    data_keys: RwLock<HashMap<String, Arc<SealingKey>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The data key new values are sealed with.
pub(crate) struct ActiveKey {
    pub(crate) id: String,
    key: Arc<SealingKey>,
}

/// `gatehouse-cp keyring` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyringCommand {
    /// Write a new key-encryption key to --keyring-key-file (which must not exist, unless
    /// --add puts the new key first in it); with --database-url, also seal every private key
    /// in the database under a new data key.
    Init(InitArgs),
    /// Seal every private key under a new data key wrapped by the file's first KEK, online,
    /// in small transactions; then drop the data keys no row uses any more.
    Rotate(RotateArgs),
    /// Show the KEKs of the file, the data keys and how many values each one seals.
    Status(Flags),
}

/// Arguments of `keyring init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Put a new KEK first in an existing file (the others stay, to open the data keys they
    /// wrap until `keyring rotate` has run).
    #[arg(long)]
    pub add: bool,
    #[command(flatten)]
    pub flags: Flags,
}

/// Arguments of `keyring rotate`.
#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// Rows re-encrypted per transaction.
    #[arg(long, default_value_t = 100)]
    pub batch_size: i64,
    #[command(flatten)]
    pub flags: Flags,
}

impl KeyringCommand {
    /// The settings of the command.
    pub fn flags(&self) -> &Flags {
        match self {
            Self::Init(args) => &args.flags,
            Self::Rotate(args) => &args.flags,
            Self::Status(flags) => flags,
        }
    }
}

/// The columns holding private keys in an Admin API collection.
pub(crate) fn sealed_columns(collection: &str) -> &'static [&'static str] {
    match collection {
        "certificates" => &["key", "key_alt"],
        _ => &[],
    }
}

/// The associated data naming where a value lives.
pub(crate) fn context(table: &str, column: &str, row: &str) -> String {
    format!("{table}.{column}:{row}")
}

/// Parses KEK entries: `ID:BASE64` (32 bytes) per line or comma-separated, `#` comments.
/// Errors name the entry's position, never its content.
fn parse_keks(text: &str, origin: &str) -> Result<Vec<Kek>, String> {
    let mut keks: Vec<Kek> = Vec::new();
    let entries = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty());
    for (n, entry) in entries.enumerate() {
        let bad = |why: &str| format!("{origin}: entry {}: {why}", n + 1);
        let (id, encoded) = entry
            .split_once(':')
            .ok_or_else(|| bad("expected ID:BASE64 (see `gatehouse-cp keyring init`)"))?;
        let id = id.trim();
        if id.is_empty()
            || id.len() > MAX_KEK_ID
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(bad(
                "the id must be 1 to 64 characters among A-Z a-z 0-9 - _ .",
            ));
        }
        let bytes = STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| <[u8; KEY_LEN]>::try_from(bytes).ok())
            .ok_or_else(|| bad("the key must be the base64 of 32 bytes"))?;
        if keks.iter().any(|k| k.id == id) {
            return Err(bad(&format!("KEK id '{id}' appears twice")));
        }
        keks.push(Kek {
            id: id.to_owned(),
            key: SealingKey::new(&bytes),
        });
    }
    if keks.is_empty() {
        return Err(format!("{origin}: no key-encryption key in it"));
    }
    Ok(keks)
}

fn read_keks(source: &KekSource) -> Result<Vec<Kek>, String> {
    match source {
        KekSource::File(path) => {
            let origin = format!("--keyring-key-file {}", path.display());
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{origin}: cannot read: {e}"))?;
            parse_keks(&text, &origin)
        }
        KekSource::Env(text) => parse_keks(text, "GATEHOUSE_KEYRING_KEY"),
    }
}

/// The associated data of a wrapped data key.
fn data_key_context(id: &str) -> String {
    format!("keyring data key {id}")
}

/// A new KEK entry (`ID:BASE64`): the id is `kek-` and the UTC time.
fn new_kek_entry() -> Result<(String, String), String> {
    let bytes = random_key().map_err(|e| e.to_string())?;
    let now = time::OffsetDateTime::now_utc();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let id = format!(
        "kek-{:04}{:02}{:02}-{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        &suffix[..8]
    );
    Ok((id.clone(), format!("{id}:{}", STANDARD.encode(bytes))))
}

// === impl Keyring ===

impl Keyring {
    /// No keyring: values stay in clear, sealed values are refused.
    pub(crate) fn disabled() -> Self {
        Self {
            source: None,
            keks: RwLock::new(Arc::new(Vec::new())),
            data_keys: RwLock::new(HashMap::new()),
        }
    }

    /// Reads the KEKs of `source`.
    pub(crate) fn load(source: KekSource) -> Result<Self, String> {
        let keks = read_keks(&source)?;
        Ok(Self {
            source: Some(source),
            keks: RwLock::new(Arc::new(keks)),
            data_keys: RwLock::new(HashMap::new()),
        })
    }

    /// Whether a KEK source is configured.
    pub(crate) fn is_enabled(&self) -> bool {
        self.source.is_some()
    }

    fn keks(&self) -> Arc<Vec<Kek>> {
        self.keks.read().map(|k| k.clone()).unwrap_or_default()
    }

    /// The ids of the KEKs, the active one first.
    pub(crate) fn kek_ids(&self) -> Vec<String> {
        self.keks().iter().map(|k| k.id.clone()).collect()
    }

    fn reload(&self) -> Result<(), String> {
        let Some(source) = &self.source else {
            return Ok(());
        };
        let keks = read_keks(source)?;
        if let Ok(mut current) = self.keks.write() {
            *current = Arc::new(keks);
        }
        Ok(())
    }

    /// Opens a wrapped data key, reading the KEK source again if it names an unknown KEK.
    pub(crate) fn unwrap_data_key(
        &self,
        id: &str,
        kek_id: &str,
        wrapped: &str,
    ) -> Result<SealingKey, String> {
        if !self.is_enabled() {
            return Err(format!(
                "data key '{id}' cannot be opened: no keyring is configured \
                 (--keyring-key-file or GATEHOUSE_KEYRING_KEY)"
            ));
        }
        if !self.keks().iter().any(|k| k.id == kek_id) {
            self.reload()?;
        }
        let keks = self.keks();
        let kek = keks.iter().find(|k| k.id == kek_id).ok_or_else(|| {
            format!(
                "data key '{id}' is wrapped by KEK '{kek_id}', which the keyring does not hold \
                 (it has: {})",
                self.kek_ids().join(", ")
            )
        })?;
        let sealed = STANDARD
            .decode(wrapped)
            .map_err(|_| format!("data key '{id}': stored value is not base64"))?;
        let bytes = kek
            .key
            .open(data_key_context(id).as_bytes(), &sealed)
            .map_err(|_| {
                format!(
                    "data key '{id}' does not open with KEK '{kek_id}': the keyring's key \
                     with that id is not the one that wrapped it, or the row was altered"
                )
            })?;
        let bytes = <[u8; KEY_LEN]>::try_from(bytes.as_slice())
            .map_err(|_| format!("data key '{id}' has the wrong length"))?;
        Ok(SealingKey::new(&bytes))
    }

    /// A new data key: `(id, kek id, wrapped)`, wrapped by the active KEK; also cached.
    pub(crate) fn new_data_key(&self) -> Result<(String, String, String), String> {
        let keks = self.keks();
        let kek = keks
            .first()
            .ok_or_else(|| "no keyring is configured (--keyring-key-file)".to_owned())?;
        let id = format!("dk-{}", uuid::Uuid::now_v7().simple());
        let bytes = random_key().map_err(|e| e.to_string())?;
        let wrapped = kek
            .key
            .seal(data_key_context(&id).as_bytes(), &bytes)
            .map_err(|e| e.to_string())?;
        if let Ok(mut cache) = self.data_keys.write() {
            cache.insert(id.clone(), Arc::new(SealingKey::new(&bytes)));
        }
        Ok((id, kek.id.clone(), STANDARD.encode(wrapped)))
    }

    /// The data key `id`, from the cache or the database.
    async fn data_key(
        &self,
        db: &impl GenericClient,
        id: &str,
    ) -> Result<Arc<SealingKey>, ApiError> {
        if let Some(key) = self.data_keys.read().ok().and_then(|c| c.get(id).cloned()) {
            return Ok(key);
        }
        let row = db
            .query_opt(
                "SELECT kek_id, wrapped FROM keyring_data_keys WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(db_error)?
            .ok_or_else(|| {
                ApiError::Internal(format!(
                    "a value is sealed under data key '{id}', which the database does not hold"
                ))
            })?;
        let key = Arc::new(
            self.unwrap_data_key(id, row.get(0), row.get(1))
                .map_err(ApiError::Internal)?,
        );
        if let Ok(mut cache) = self.data_keys.write() {
            cache.insert(id.to_owned(), key.clone());
        }
        Ok(key)
    }

    /// The active data key, its row locked `FOR SHARE` until the transaction ends (so that a
    /// rotation switching it waits for this writer); `None` without a keyring.
    pub(crate) async fn active(
        &self,
        db: &impl GenericClient,
    ) -> Result<Option<ActiveKey>, ApiError> {
        if !self.is_enabled() {
            return Ok(None);
        }
        // Two statements: the data key a rotation just made is visible to the second one.
        let id: String = db
            .query_opt("SELECT data_key_id FROM keyring_active FOR SHARE", &[])
            .await
            .map_err(db_error)?
            .ok_or_else(|| ApiError::Internal("the keyring has no active data key yet".into()))?
            .get(0);
        let key = self.data_key(db, &id).await?;
        Ok(Some(ActiveKey { id, key }))
    }

    /// Seals `plaintext` for `context` under `active`.
    pub(crate) fn seal(
        &self,
        active: &ActiveKey,
        context: &str,
        plaintext: &str,
    ) -> Result<String, ApiError> {
        let header = format!("{V1}{}", active.id);
        let aad = format!("{header}|{context}");
        let sealed = active
            .key
            .seal(aad.as_bytes(), plaintext.as_bytes())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(format!("{header}:{}", STANDARD.encode(sealed)))
    }

    /// The plaintext of a stored value: a sealed value is opened (an error if it does not
    /// open: never a garbled key), anything else is returned as is (written in clear).
    pub(crate) async fn open(
        &self,
        db: &impl GenericClient,
        context: &str,
        stored: &str,
    ) -> Result<String, ApiError> {
        let Some((id, encoded)) = self.parse_sealed(context, stored)? else {
            return Ok(stored.to_owned());
        };
        let key = self.data_key(db, id).await?;
        open_with(&key, context, id, encoded)
    }

    /// `(data key id, base64)` of a sealed value, `None` for a value in clear; an error for a
    /// sealed value this control plane cannot open.
    fn parse_sealed<'a>(
        &self,
        context: &str,
        stored: &'a str,
    ) -> Result<Option<(&'a str, &'a str)>, ApiError> {
        if !stored.starts_with(SEALED_PREFIX) {
            return Ok(None);
        }
        let Some(rest) = stored.strip_prefix(V1) else {
            return Err(ApiError::Internal(format!(
                "{context}: sealed in a format this control plane does not know"
            )));
        };
        let parts = rest
            .split_once(':')
            .ok_or_else(|| ApiError::Internal(format!("{context}: malformed sealed value")))?;
        if !self.is_enabled() {
            return Err(ApiError::Internal(format!(
                "{context} is encrypted at rest but no keyring is configured \
                 (--keyring-key-file or GATEHOUSE_KEYRING_KEY)"
            )));
        }
        Ok(Some(parts))
    }

    /// Seals the private-key columns of a row about to be written (`to_row`'s shape); refuses
    /// input that looks sealed already. Without a keyring the row stays in clear.
    pub(crate) async fn seal_row(
        &self,
        db: &impl GenericClient,
        collection: &str,
        id: &str,
        row: &mut Value,
    ) -> Result<(), ApiError> {
        let columns = sealed_columns(collection);
        if columns.is_empty() {
            return Ok(());
        }
        for column in columns {
            if let Some(Value::String(text)) = row.get(*column)
                && text.starts_with(SEALED_PREFIX)
            {
                return Err(ApiError::field(
                    column,
                    format!(
                        "must not start with '{SEALED_PREFIX}' (the prefix of keys encrypted at rest)"
                    ),
                ));
            }
        }
        let Some(active) = self.active(db).await? else {
            return Ok(());
        };
        for column in columns {
            if let Some(Value::String(text)) = row.get_mut(*column) {
                *text = self.seal(&active, &context(collection, column, id), text)?;
            }
        }
        Ok(())
    }

    /// Opens the private-key columns of an entity read from the store (`from_row`'s shape).
    pub(crate) async fn open_entity(
        &self,
        db: &impl GenericClient,
        collection: &str,
        entity: &mut Value,
    ) -> Result<(), ApiError> {
        let columns = sealed_columns(collection);
        if columns.is_empty() {
            return Ok(());
        }
        let id = entity
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        for column in columns {
            if let Some(Value::String(text)) = entity.get_mut(*column)
                && text.starts_with(SEALED_PREFIX)
            {
                *text = self
                    .open(db, &context(collection, column, &id), text)
                    .await?;
            }
        }
        Ok(())
    }

    /// Seals a JSON value (an ACME account's credentials) as a JSON string.
    pub(crate) async fn seal_json(
        &self,
        db: &impl GenericClient,
        context: &str,
        value: &Value,
    ) -> Result<Value, ApiError> {
        match self.active(db).await? {
            Some(active) => Ok(Value::String(self.seal(
                &active,
                context,
                &value.to_string(),
            )?)),
            None => Ok(value.clone()),
        }
    }

    /// Opens what [`Keyring::seal_json`] made (a value stored in clear is returned as is).
    pub(crate) async fn open_json(
        &self,
        db: &impl GenericClient,
        context: &str,
        stored: Value,
    ) -> Result<Value, ApiError> {
        match &stored {
            Value::String(text) if text.starts_with(SEALED_PREFIX) => {
                let plain = self.open(db, context, text).await?;
                serde_json::from_str(&plain)
                    .map_err(|_| ApiError::Internal(format!("{context}: sealed value is not JSON")))
            }
            _ => Ok(stored),
        }
    }
}

/// Opens a `ghenc:v1` value's base64 part under data key `id`.
fn open_with(key: &SealingKey, context: &str, id: &str, encoded: &str) -> Result<String, ApiError> {
    let sealed = STANDARD
        .decode(encoded)
        .map_err(|_| ApiError::Internal(format!("{context}: malformed sealed value")))?;
    let aad = format!("{V1}{id}|{context}");
    let plain = key
        .open(aad.as_bytes(), &sealed)
        .map_err(|e| ApiError::Internal(format!("{context}: {e} (data key '{id}')")))?;
    String::from_utf8(plain)
        .map_err(|_| ApiError::Internal(format!("{context}: sealed value is not text")))
}

/// The data key id of a sealed value (`None` for a value in clear).
pub(crate) fn sealed_under(stored: &str) -> Option<&str> {
    stored.strip_prefix(V1)?.split_once(':').map(|(id, _)| id)
}

/// Writes a new KEK to `path`: a new file (mode 0600), or with `add` first in an existing one.
fn write_kek_file(path: &Path, add: bool) -> Result<String, crate::Error> {
    let fail = |e: String| crate::Error::Command(format!("{}: {e}", path.display()));
    let (id, entry) = new_kek_entry().map_err(fail)?;
    let header = "# Gatehouse keyring: key-encryption keys, ID:BASE64(32 bytes); the first is \
                  active.\n# Keep this file secret and identical on every control plane.\n";
    let text = if add {
        let old = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        parse_keks(&old, &path.display().to_string()).map_err(crate::Error::Command)?;
        let kept: String = old
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        format!("{header}{entry}\n{kept}")
    } else {
        if path.exists() {
            return Err(fail(
                "exists already (use --add to put a new key first in it)".into(),
            ));
        }
        format!("{header}{entry}\n")
    };
    let tmp = path.with_extension("tmp-keyring");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail(format!("cannot create {}: {e}", tmp.display())))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| fail(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| fail(e.to_string()))?;
    Ok(id)
}

/// Runs `gatehouse-cp keyring …`, printing to `out`.
pub async fn run(command: &KeyringCommand, out: &mut dyn Write) -> Result<(), crate::Error> {
    let settings = command.flags().settings()?;
    if let KeyringCommand::Init(args) = command {
        let Some(KekSource::File(path)) = &settings.keyring else {
            return Err(crate::Error::Config(crate::config::ConfigError::new(
                "keyring init: --keyring-key-file is required (the file to write)",
            )));
        };
        let id = write_kek_file(path, args.add)?;
        writeln!(out, "wrote key-encryption key '{id}' to {}", path.display())?;
        if settings.database_url.is_none() {
            return Ok(());
        }
    }
    let source = settings.keyring.clone().ok_or_else(|| {
        crate::Error::Config(crate::config::ConfigError::new(
            "--keyring-key-file (or GATEHOUSE_KEYRING_KEY) is required",
        ))
    })?;
    let keyring = Keyring::load(source).map_err(crate::Error::Command)?;
    let store =
        Store::connect(settings.require_database_url()?, 2, Vec::new())?.with_keyring(keyring);
    store.migrate().await?;
    let fail = |e: ApiError| crate::Error::Command(e.detail());
    match command {
        KeyringCommand::Init(_) | KeyringCommand::Rotate(_) => {
            let batch = match command {
                KeyringCommand::Rotate(args) => args.batch_size.clamp(1, 10_000),
                _ => 100,
            };
            let started = std::time::Instant::now();
            let report = store.keyring_rotate(batch).await.map_err(fail)?;
            writeln!(
                out,
                "active data key '{}' (wrapped by KEK '{}'); re-encrypted {} certificate \
                 values and {} ACME accounts in {} transactions in {} ms; dropped {} retired \
                 data keys",
                report.data_key,
                report.kek,
                report.certificates,
                report.accounts,
                report.batches,
                started.elapsed().as_millis(),
                report.dropped
            )?;
        }
        KeyringCommand::Status(_) => {
            let status = store.keyring_status().await.map_err(fail)?;
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&status).unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(id: &str, byte: u8) -> String {
        format!("{id}:{}", STANDARD.encode([byte; KEY_LEN]))
    }

    #[test]
    fn kek_files_parse_and_errors_never_quote_the_key() {
        let text = format!(
            "# comment\n{}\n\n{} # old\n",
            entry("k2", 2),
            entry("k1", 1)
        );
        let keks = parse_keks(&text, "f").unwrap();
        assert_eq!(
            keks.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            ["k2", "k1"]
        );
        let secret = STANDARD.encode([7u8; 31]);
        let bad = [
            format!("k1:{secret}"),
            secret.clone(),
            format!("k 1:{}", STANDARD.encode([7u8; 32])),
            format!("{},{}", entry("k", 1), entry("k", 2)),
            "# nothing\n".to_owned(),
        ];
        for text in bad {
            let error = parse_keks(&text, "f").err().unwrap();
            assert!(!error.contains(&secret[..10]), "{error}");
            assert!(!error.contains("BwcH"), "{error}");
        }
    }

    #[test]
    fn sealed_values_open_only_in_their_place() {
        let keyring = Keyring::load(KekSource::Env(entry("k1", 1))).unwrap();
        let (id, kek, wrapped) = keyring.new_data_key().unwrap();
        assert_eq!(kek, "k1");
        let key = Arc::new(keyring.unwrap_data_key(&id, &kek, &wrapped).unwrap());
        let active = ActiveKey {
            id: id.clone(),
            key,
        };
        let sealed = keyring
            .seal(
                &active,
                "certificates.key:row-1",
                "-----BEGIN PRIVATE KEY-----",
            )
            .unwrap();
        assert!(sealed.starts_with(&format!("ghenc:v1:{id}:")));
        assert!(!sealed.contains("PRIVATE"));
        assert_eq!(sealed_under(&sealed), Some(id.as_str()));
        let open = |keyring: &Keyring, context: &str, value: &str| {
            let (id, encoded) = keyring.parse_sealed(context, value)?.unwrap();
            open_with(&active.key, context, id, encoded)
        };
        assert_eq!(
            open(&keyring, "certificates.key:row-1", &sealed).unwrap(),
            "-----BEGIN PRIVATE KEY-----"
        );
        // Another row or column, or an altered byte: an error, never a value.
        let len = sealed.len();
        let other = if &sealed[len - 5..len - 4] == "A" {
            "B"
        } else {
            "A"
        };
        let altered = format!("{}{other}{}", &sealed[..len - 5], &sealed[len - 4..]);
        for (context, value) in [
            ("certificates.key:row-2", &sealed),
            ("certificates.key_alt:row-1", &sealed),
            ("certificates.key:row-1", &altered),
        ] {
            assert!(open(&keyring, context, value).is_err(), "{context}");
        }
        // A value in clear is not sealed; an unknown format is refused.
        assert!(keyring.parse_sealed("c", "-----BEGIN").unwrap().is_none());
        assert!(keyring.parse_sealed("c", "ghenc:v9:x:y").is_err());
        // A wrapped data key does not open under another KEK with the same id.
        let other = Keyring::load(KekSource::Env(entry("k1", 9))).unwrap();
        let error = other.unwrap_data_key(&id, &kek, &wrapped).err().unwrap();
        assert!(error.contains("does not open with KEK 'k1'"), "{error}");
        // Without a keyring, a sealed value is refused.
        let none = Keyring::disabled();
        assert!(
            none.parse_sealed("certificates.key:row-1", &sealed)
                .is_err()
        );
    }
}
