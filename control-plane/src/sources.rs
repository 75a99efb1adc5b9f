//! Watched certificate sources (`--cert-source DIR`): certificates that other tools write as
//! files (certbot, Kubernetes TLS secret mounts, a PKI dropping `<name>.crt` + `<name>.key`)
//! kept as ordinary `certificates` rows, so they reach every data plane with the next
//! snapshot and rotate without a reload.
//!
//! Each source directory is watched with inotify (the `notify` crate, recursively) and
//! rescanned every `--cert-source-rescan-interval` as a safety net (symlinks that point
//! outside the watched tree, missed events). A file event starts a pass once the directory was
//! quiet for `--cert-source-debounce-ms`, so certbot's four symlink changes or Kubernetes'
//! `..data` swap are read once, whole.
//!
//! A pass (see [`scan`] for the layouts) reads every pair and checks it (chain and key parse,
//! the key matches the leaf). A pair that fails — half-written, a key of the next certificate
//! — is logged (the reason, never key material) and left alone: its row keeps the last good
//! certificate, and the pass is retried within [`RETRY_DELAY`]. A good pair whose certificate,
//! key or SNIs differ from what was last written is written in place, with `PUT` semantics, to
//! the row whose id is derived from the source and the pair's name (the same on every replica):
//! one config version per change. Rows are tagged `source:file` and `source-layout:<layout>`;
//! `certificate_source_files` records the files each row came from.
//!
//! Pairs whose files are gone follow `--cert-source-missing`: `keep` (default: the row stays
//! and is served, a warning is logged) or `remove` (the row is deleted once the files stayed
//! away for [`MISSING_GRACE`], so a non-atomic symlink swap does not remove anything).
//!
//! Replicas: a pass first takes the source's lease (`certificate_source_leases`), renewed at
//! every pass and valid for three rescan intervals (at least [`MIN_LEASE`]). One replica writes
//! a source at a time; another one takes over when the holder stops renewing, or at its next
//! pass when the holder shut down gracefully (it releases its leases).

mod scan;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::{CertSourceSettings, ConfigError, MissingPolicy};
use crate::store::{Selector, SourceRecord, Store, unix_now};

use self::scan::{Loaded, Pair};

/// Tag of every certificate written from a source.
pub(crate) const SOURCE_TAG: &str = "source:file";
/// How soon a pass that found an inconsistent pair is retried.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a pair's files must stay away before `remove` deletes its row.
const MISSING_GRACE: Duration = Duration::from_secs(5);
/// Shortest lease of a source.
const MIN_LEASE: i64 = 10;

/// One watched directory and what this replica remembers about it.
#[derive(Debug)]
struct Source {
    store: Arc<Store>,
    owner: Uuid,
    /// The directory, canonical.
    dir: PathBuf,
    /// `dir` as text: the source's name in the database.
    name: String,
    settings: CertSourceSettings,
    /// Woken by file events.
    wake: Arc<Notify>,
    /// Why each pair was last not loaded (logged once per reason).
    problems: HashMap<String, String>,
    /// Rows whose files are gone, since when.
    missing: HashMap<Uuid, Instant>,
    /// Whether this replica held the lease at the last pass (logged on change).
    leader: bool,
}

/// Starts one task per source directory; fails when a directory cannot be resolved.
pub(crate) fn spawn(
    store: Arc<Store>,
    owner: Uuid,
    settings: &CertSourceSettings,
) -> Result<(), ConfigError> {
    for dir in &settings.dirs {
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| ConfigError::new(format!("--cert-source {}: {e}", dir.display())))?;
        if !dir.is_dir() {
            return Err(ConfigError::new(format!(
                "--cert-source {}: not a directory",
                dir.display()
            )));
        }
        let source = Source {
            store: store.clone(),
            owner,
            name: dir.display().to_string(),
            dir,
            settings: settings.clone(),
            wake: Arc::new(Notify::new()),
            problems: HashMap::new(),
            missing: HashMap::new(),
            leader: false,
        };
        tracing::info!(
            source = %source.name,
            missing = ?settings.missing,
            "certificate source: watching"
        );
        tokio::spawn(source.run());
    }
    Ok(())
}

/// The id of the row kept for pair `name` of `source`: a UUID (version 8) made of the first
/// bytes of SHA-256(`source` NUL `name`), the same on every replica.
pub(crate) fn pair_id(source: &str, name: &str) -> Uuid {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{source}\0{name}").as_bytes(),
    );
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Digest of what a row holds for a pair (certificate, key, SNIs, tags): equal digests mean
/// nothing to write.
fn content_digest(loaded: &Loaded, tags: &[String]) -> String {
    let text = format!(
        "{}\0{}\0{}\0{}",
        loaded.cert,
        loaded.key,
        loaded.snis.join(","),
        tags.join(",")
    );
    gatehouse_shared::x509::sha256_hex(text.as_bytes())
}

// === impl Source ===

impl Source {
    /// Watches, then passes at every (debounced) event and every rescan interval.
    async fn run(mut self) {
        let mut watcher = None;
        loop {
            if watcher.is_none() {
                watcher = self.watch();
            }
            let retry = self.pass().await;
            let wait = if retry {
                RETRY_DELAY.min(self.settings.rescan_interval)
            } else {
                self.settings.rescan_interval
            };
            tokio::select! {
                () = self.wake.notified() => self.quiet().await,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Waits until no file event came for the debounce time.
    async fn quiet(&self) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.debounce) => return,
            }
        }
    }

    /// Starts the inotify watch of the directory; `None` (logged) when it cannot be set up:
    /// the rescans still run, and the next pass tries again.
    fn watch(&self) -> Option<RecommendedWatcher> {
        let wake = self.wake.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else {
                // An overflowed queue or a removed watch: look again.
                wake.notify_one();
                return;
            };
            match event.kind {
                // Our own reads: ignore. A file closed after writing is a change.
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => wake.notify_one(),
                EventKind::Access(_) => {}
                _ => wake.notify_one(),
            }
        };
        let started = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher.watch(&self.dir, RecursiveMode::Recursive)?;
            Ok(watcher)
        });
        match started {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(
                    source = %self.name,
                    %error,
                    "certificate source: cannot watch the directory; rescanning every {:?}",
                    self.settings.rescan_interval
                );
                None
            }
        }
    }

    /// One look at the directory, when this replica holds the source's lease. Returns whether
    /// a pair was inconsistent (to look again soon).
    async fn pass(&mut self) -> bool {
        let now = unix_now();
        let lease = i64::try_from(self.settings.rescan_interval.as_secs())
            .unwrap_or(MIN_LEASE)
            .saturating_mul(3)
            .max(MIN_LEASE);
        let leader = match self
            .store
            .cert_source_lease(&self.name, self.owner, now, now.saturating_add(lease))
            .await
        {
            Ok(leader) => leader,
            Err(error) => {
                tracing::warn!(source = %self.name, error = %error.detail(), "certificate source: cannot take the lease");
                return true;
            }
        };
        if leader != self.leader {
            tracing::info!(
                source = %self.name,
                leader,
                "certificate source: {}",
                if leader {
                    "this control plane writes the source"
                } else {
                    "another control plane writes the source"
                }
            );
            self.leader = leader;
        }
        if !leader {
            return false;
        }
        let pairs = match scan::discover(&self.dir) {
            Ok(pairs) => pairs,
            Err(error) => {
                tracing::warn!(source = %self.name, %error, "certificate source: cannot read the directory");
                return true;
            }
        };
        let recorded = match self.store.cert_source_files(&self.name).await {
            Ok(recorded) => recorded,
            Err(error) => {
                tracing::warn!(source = %self.name, error = %error.detail(), "certificate source: cannot read its state");
                return true;
            }
        };
        let mut retry = false;
        let mut present = HashSet::new();
        for pair in &pairs {
            let id = pair_id(&self.name, &pair.name);
            present.insert(id);
            let stored_digest = recorded.get(&id).map(|file| file.digest.as_str());
            if !self.sync(pair, id, stored_digest).await {
                retry = true;
            }
        }
        let gone: Vec<(Uuid, String)> = recorded
            .into_iter()
            .filter(|(id, _)| !present.contains(id))
            .map(|(id, file)| (id, file.name))
            .collect();
        self.missing.retain(|id, _| !present.contains(id));
        for (id, name) in gone {
            if self.gone(id, &name).await {
                retry = true;
            }
        }
        retry
    }

    /// Loads one pair and writes it when it changed. Returns false when it must be retried.
    async fn sync(&mut self, pair: &Pair, id: Uuid, stored_digest: Option<&str>) -> bool {
        let loaded = match pair.load() {
            Ok(loaded) => loaded,
            Err(reason) => {
                self.problem(pair, id, reason.to_string());
                return false;
            }
        };
        let tags = vec![
            SOURCE_TAG.to_owned(),
            format!("source-layout:{}", pair.layout.as_str()),
        ];
        let digest = content_digest(&loaded, &tags);
        if stored_digest == Some(digest.as_str()) {
            self.problems.remove(&pair.name);
            return true;
        }
        let mut input = Map::new();
        input.insert("cert".into(), Value::from(loaded.cert));
        input.insert("key".into(), Value::from(loaded.key));
        input.insert("snis".into(), json!(loaded.snis));
        input.insert("tags".into(), json!(tags));
        if let Err(error) = self
            .store
            .upsert("certificates", &Selector::Id(id), input, None)
            .await
        {
            self.problem(pair, id, format!("not stored: {}", error.detail()));
            return false;
        }
        let cert_path = pair.cert.display().to_string();
        let key_path = pair.key.display().to_string();
        let record = SourceRecord {
            source: &self.name,
            name: &pair.name,
            layout: pair.layout.as_str(),
            cert_path: &cert_path,
            key_path: &key_path,
            digest: &digest,
        };
        if let Err(error) = self.store.cert_source_record(id, &record, unix_now()).await {
            // The row is written; the next pass writes it again and records it then.
            self.problem(pair, id, format!("not recorded: {}", error.detail()));
            return false;
        }
        self.problems.remove(&pair.name);
        tracing::info!(
            source = %self.name,
            pair = %pair.name,
            layout = pair.layout.as_str(),
            %id,
            snis = ?loaded.snis,
            not_after = loaded.not_after,
            "certificate source: certificate stored"
        );
        true
    }

    /// Logs why a pair was not loaded or stored, once per reason; its row is left as it is.
    fn problem(&mut self, pair: &Pair, id: Uuid, reason: String) {
        if self.problems.get(&pair.name) == Some(&reason) {
            return;
        }
        tracing::warn!(
            source = %self.name,
            pair = %pair.name,
            %id,
            %reason,
            "certificate source: pair not loaded; the last good certificate stays"
        );
        self.problems.insert(pair.name.clone(), reason);
    }

    /// A recorded pair whose files are gone: keep its row, or remove it after the grace time.
    /// Returns whether a removal is still pending (to look again soon).
    async fn gone(&mut self, id: Uuid, name: &str) -> bool {
        let first = !self.missing.contains_key(&id);
        let since = *self.missing.entry(id).or_insert_with(Instant::now);
        match self.settings.missing {
            MissingPolicy::Keep => {
                if first {
                    tracing::warn!(
                        source = %self.name,
                        pair = %name,
                        %id,
                        "certificate source: files gone; the certificate is kept \
                         (--cert-source-missing keep)"
                    );
                }
                false
            }
            MissingPolicy::Remove => {
                if since.elapsed() < MISSING_GRACE {
                    return true;
                }
                match self
                    .store
                    .delete("certificates", &Selector::Id(id), None)
                    .await
                {
                    Ok(()) => {
                        self.missing.remove(&id);
                        tracing::info!(
                            source = %self.name,
                            pair = %name,
                            %id,
                            "certificate source: files gone; certificate removed"
                        );
                        false
                    }
                    Err(error) => {
                        tracing::warn!(
                            source = %self.name,
                            pair = %name,
                            %id,
                            error = %error.detail(),
                            "certificate source: cannot remove the certificate"
                        );
                        true
                    }
                }
            }
        }
    }
}
