//! The cache directory: the node id (`node_id`, a UUID generated once) and the last applied
//! snapshot (`snapshot.bin`). The snapshot holds every private key of the fleet, so it is
//! stored encrypted: the magic `GHCACHE2`, then AES-256-GCM (`nonce || ciphertext || tag`,
//! the magic as associated data) of the encoded `gatehouse.v1.Snapshot` message as received.
//! The key is derived (HKDF-SHA256) from `--cache-key-file`, or else from the cluster private
//! key file: a file that does not open (another key, a renewed cluster key, a truncated or
//! altered file) is refused whole with a clear reason, never half loaded or applied.
//!
//! Files of the formats before encryption are still read (and replaced by an encrypted one at
//! the next store): `GHCACHE1` (the SHA-256 of the rest, then the message) and the bare
//! message. The snapshot's own hash covers its configuration but not its envelope (the
//! version number); the checksum or the tag covers it all.
//!
//! Files are replaced atomically: a temporary file in the same directory is written, flushed
//! to disk, renamed over the old one, and the directory is flushed, so a crash leaves either
//! the old or the new file, never a torn one. The directory is created with mode 0700 and
//! files with mode 0600.
//!
//! Everything here blocks: call it from `spawn_blocking` or before the async runtime serves.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_proto::v1 as pb;
use gatehouse_shared::sealed::SealingKey;
use gatehouse_shared::snapshot::{self, SnapshotError};
use prost::Message;
use uuid::Uuid;

use crate::runtime::{CompileError, Runtime};

/// Name of the cached snapshot in the cache directory.
pub(crate) const SNAPSHOT_FILE: &str = "snapshot.bin";
/// Name of the node id file in the cache directory.
pub(crate) const NODE_ID_FILE: &str = "node_id";
/// Mode of the cache directory when it is created.
const DIR_MODE: u32 = 0o700;
/// Mode of the files written.
const FILE_MODE: u32 = 0o600;
/// First bytes of a checksummed snapshot file (in clear; read, no longer written).
const MAGIC: &[u8; 8] = b"GHCACHE1";
/// First bytes of an encrypted snapshot file.
const MAGIC_SEALED: &[u8; 8] = b"GHCACHE2";
/// Shortest secret a cache key is derived from, in bytes.
const MIN_KEY_SECRET: usize = 32;
/// Length of the SHA-256 after [`MAGIC`].
const CHECKSUM_LEN: usize = 32;

/// The cache directory.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
    /// The file the encryption key is derived from; `None` (tests only): stored in clear.
    key_file: Option<PathBuf>,
}

/// A snapshot loaded from the cache and compiled.
#[derive(Debug)]
pub(crate) struct Cached {
    /// The compiled runtime.
    pub(crate) runtime: Runtime,
    /// When the file was written (the last successful sync), unix seconds.
    pub(crate) written_at: Option<f64>,
}

/// Why the cached snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}", path = .path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The cache key cannot be derived (its file is unreadable or too short).
    #[error("{path}: cache key: {reason}", path = .path.display())]
    Key { path: PathBuf, reason: String },
    /// The encrypted file does not open with the cache key.
    #[error("{path}: cannot be decrypted: the file is truncated or corrupted, or was written under another cache key (another --cache-key-file, or a cluster key renewed since)", path = .path.display())]
    Open { path: PathBuf },
    /// The file's checksum does not match its content.
    #[error("{path}: checksum mismatch ({len} bytes): the file is truncated or corrupted", path = .path.display())]
    Checksum { path: PathBuf, len: usize },
    /// The file is not an encoded snapshot.
    #[error("{path}: not a snapshot: {source}", path = .path.display())]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
    /// The snapshot is corrupt (hash, size, compression, content).
    #[error("{path}: {source}", path = .path.display())]
    Snapshot {
        path: PathBuf,
        source: SnapshotError,
    },
    /// The snapshot does not compile.
    #[error("{path}: {source}", path = .path.display())]
    Compile { path: PathBuf, source: CompileError },
}

// === impl Cache ===

impl Cache {
    /// The cache in `dir`, touching nothing yet.
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            key_file: None,
        }
    }

    /// This cache, its snapshot encrypted under a key derived from the content of `file`.
    pub(crate) fn with_key_file(mut self, file: &Path) -> Self {
        self.key_file = Some(file.to_owned());
        self
    }

    /// The key of the snapshot file, read from the key file each time (a renewed cluster key
    /// is used from the next store on); `None` without a key file.
    fn key(&self) -> Result<Option<SealingKey>, CacheError> {
        let Some(path) = &self.key_file else {
            return Ok(None);
        };
        let key_error = |reason: String| CacheError::Key {
            path: path.clone(),
            reason,
        };
        let secret = fs::read(path).map_err(|e| key_error(e.to_string()))?;
        let secret = secret.trim_ascii();
        if secret.len() < MIN_KEY_SECRET {
            return Err(key_error(format!(
                "holds {} bytes, fewer than {MIN_KEY_SECRET}",
                secret.len()
            )));
        }
        Ok(Some(SealingKey::derive(
            secret,
            b"gatehouse-dp-cache",
            b"snapshot.bin GHCACHE2",
        )))
    }

    /// Opens `dir`, creating it (and its parents) with mode 0700 when missing.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        let cache = Self::new(dir);
        cache.create_dir()?;
        Ok(cache)
    }

    /// Creates the directory (and its parents) with mode 0700 when missing, then reads or
    /// makes the node id ([`Cache::node_id`]).
    pub(crate) fn open_and_node_id(&self) -> io::Result<(Uuid, Option<String>)> {
        self.create_dir()?;
        self.node_id()
    }

    fn create_dir(&self) -> io::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.dir)
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the cached snapshot.
    pub(crate) fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// The node id kept in the directory; a new one is generated and written the first time,
    /// or when the file does not hold a UUID (reported as the second value).
    pub(crate) fn node_id(&self) -> io::Result<(Uuid, Option<String>)> {
        let path = self.dir.join(NODE_ID_FILE);
        let problem = match fs::read_to_string(&path) {
            Ok(text) => match Uuid::parse_str(text.trim()) {
                Ok(id) => return Ok((id, None)),
                Err(e) => Some(format!(
                    "{}: not a UUID ({e}); a new node id was generated",
                    path.display()
                )),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let id = Uuid::new_v4();
        write_atomically(&self.dir, NODE_ID_FILE, format!("{id}\n").as_bytes())?;
        Ok((id, problem))
    }

    /// Replaces the cached snapshot with `snapshot`, atomically.
    pub(crate) fn store(&self, snapshot: &pb::Snapshot) -> io::Result<()> {
        let message = snapshot.encode_to_vec();
        // Never in clear when a key is configured: no key, no cache file.
        if let Some(key) = self.key().map_err(io::Error::other)? {
            let sealed = key.seal(MAGIC_SEALED, &message).map_err(io::Error::other)?;
            let mut bytes = Vec::with_capacity(MAGIC_SEALED.len() + sealed.len());
            bytes.extend_from_slice(MAGIC_SEALED);
            bytes.extend_from_slice(&sealed);
            return write_atomically(&self.dir, SNAPSHOT_FILE, &bytes);
        }
        let mut bytes = Vec::with_capacity(MAGIC.len() + CHECKSUM_LEN + message.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(sha256(&message).as_ref());
        bytes.extend_from_slice(&message);
        write_atomically(&self.dir, SNAPSHOT_FILE, &bytes)
    }

    /// Loads, verifies and compiles the cached snapshot; `Ok(None)` when there is none.
    pub(crate) fn load(&self) -> Result<Option<Cached>, CacheError> {
        let path = self.snapshot_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Read { path, source }),
        };
        let written_at = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64());
        let opened;
        let body = if let Some(sealed) = bytes.strip_prefix(MAGIC_SEALED.as_slice()) {
            let Some(key) = self.key()? else {
                return Err(CacheError::Key {
                    path,
                    reason: "the file is encrypted and no cache key is configured".into(),
                });
            };
            opened = key
                .open(MAGIC_SEALED, sealed)
                .map_err(|_| CacheError::Open { path: path.clone() })?;
            opened.as_slice()
        } else {
            Self::clear_body(&bytes, &path)?
        };
        let message = match pb::Snapshot::decode(body) {
            Ok(message) => message,
            Err(source) => return Err(CacheError::Decode { path, source }),
        };
        let config = match snapshot::decode(&message) {
            Ok(config) => config,
            Err(source) => return Err(CacheError::Snapshot { path, source }),
        };
        match Runtime::compile(message.version, message.hash, config) {
            Ok(runtime) => Ok(Some(Cached {
                runtime,
                written_at,
            })),
            Err(source) => Err(CacheError::Compile { path, source }),
        }
    }

    /// The message of a file in a format before encryption (checked by its checksum).
    fn clear_body<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a [u8], CacheError> {
        Ok(match bytes.strip_prefix(MAGIC.as_slice()) {
            Some(rest) => match rest.split_at_checked(CHECKSUM_LEN) {
                Some((sum, body)) if sha256(body).as_ref() == sum => body,
                _ => {
                    return Err(CacheError::Checksum {
                        path: path.to_owned(),
                        len: bytes.len(),
                    });
                }
            },
            None => bytes,
        })
    }
}

fn sha256(bytes: &[u8]) -> aws_lc_rs::digest::Digest {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
}

/// Writes `name` in `dir` atomically: temporary file, write, fsync, rename, fsync of `dir`.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .subsec_nanos();
    let temp = dir.join(format!(".{name}.{}.{nonce}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, dir.join(name))?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: the temporary file may not exist, or may already be renamed.
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use gatehouse_shared::model;

    use super::*;
    use crate::test_support::{TempDir, certificate, valid_config};

    #[test]
    fn directory_is_created_private_and_node_id_is_stable() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("a/b");
        let cache = Cache::open(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, DIR_MODE);
        let (id, problem) = cache.node_id().unwrap();
        assert!(problem.is_none());
        assert_eq!(cache.node_id().unwrap().0, id);
        let mode = fs::metadata(dir.join(NODE_ID_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, FILE_MODE);

        fs::write(dir.join(NODE_ID_FILE), "garbage").unwrap();
        let (new_id, problem) = cache.node_id().unwrap();
        assert_ne!(new_id, id);
        assert!(problem.unwrap().contains("not a UUID"));
        assert_eq!(cache.node_id().unwrap(), (new_id, None));
    }

    #[test]
    fn store_then_load_round_trips() {
        let tmp = TempDir::new();
        let cache = Cache::open(tmp.path()).unwrap();
        assert!(cache.load().unwrap().is_none());

        let encoded = snapshot::encode(&valid_config(), 42);
        cache.store(&encoded.message).unwrap();
        let cached = cache.load().unwrap().unwrap();
        assert_eq!(cached.runtime.version(), 42);
        assert_eq!(cached.runtime.hash(), encoded.hash);
        assert_eq!(cached.runtime.counts().certificates, 1);
        assert!(cached.written_at.is_some());
        let mode = fs::metadata(cache.snapshot_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, FILE_MODE);

        // A second store replaces the first and leaves no temporary file behind.
        let encoded = snapshot::encode(&model::Config::default(), 43);
        cache.store(&encoded.message).unwrap();
        assert_eq!(cache.load().unwrap().unwrap().runtime.version(), 43);
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [SNAPSHOT_FILE]);
    }

    #[test]
    fn corrupt_files_are_reported() {
        let tmp = TempDir::new();
        let cache = Cache::open(tmp.path()).unwrap();

        fs::write(cache.snapshot_path(), b"\xff\xff\xff garbage").unwrap();
        let err = cache.load().unwrap_err();
        assert!(matches!(err, CacheError::Decode { .. }), "{err}");

        // A valid message whose bytes do not match its hash (legacy format, no checksum).
        let mut message = snapshot::encode(&valid_config(), 7).message;
        message.hash = "00".repeat(32);
        fs::write(cache.snapshot_path(), message.encode_to_vec()).unwrap();
        let err = cache.load().unwrap_err();
        assert!(err.to_string().contains("hash mismatch"), "{err}");

        // A snapshot that decodes but does not compile.
        let mut config = valid_config();
        let other = certificate("other.test");
        config.certificates[0].key = other.key;
        cache.store(&snapshot::encode(&config, 8).message).unwrap();
        let err = cache.load().unwrap_err();
        assert!(matches!(err, CacheError::Compile { .. }), "{err}");
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused_whole() {
        let tmp = TempDir::new();
        let cache = Cache::open(tmp.path()).unwrap();
        cache
            .store(&snapshot::encode(&valid_config(), 9).message)
            .unwrap();
        let bytes = fs::read(cache.snapshot_path()).unwrap();
        // Every prefix: a torn write (or a disk that lost the tail) never loads.
        for cut in 0..bytes.len() {
            fs::write(cache.snapshot_path(), &bytes[..cut]).unwrap();
            match cache.load() {
                Err(err) => {
                    assert!(err.to_string().contains(SNAPSHOT_FILE), "{err}");
                }
                Ok(loaded) => panic!(
                    "a snapshot cut at {cut} of {} bytes loaded: {:?}",
                    bytes.len(),
                    loaded.map(|c| c.runtime.version())
                ),
            }
        }
        // One flipped bit anywhere, the version number included.
        for at in (MAGIC.len()..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            fs::write(cache.snapshot_path(), &bad).unwrap();
            let err = cache.load().unwrap_err();
            assert!(
                matches!(err, CacheError::Checksum { .. }),
                "flip at {at}: {err}"
            );
            assert!(err.to_string().contains("truncated or corrupted"), "{err}");
        }
        // A file of the format before the checksum is still read.
        let legacy = snapshot::encode(&valid_config(), 10)
            .message
            .encode_to_vec();
        fs::write(cache.snapshot_path(), &legacy).unwrap();
        assert_eq!(cache.load().unwrap().unwrap().runtime.version(), 10);
        fs::write(cache.snapshot_path(), &bytes).unwrap();
        assert_eq!(cache.load().unwrap().unwrap().runtime.version(), 9);
    }

    #[test]
    fn the_snapshot_is_stored_encrypted_and_refused_under_another_key() {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;

        let tmp = TempDir::new();
        let key_file = tmp.path().join("cache.key");
        fs::write(&key_file, format!("{}\n", "a".repeat(44))).unwrap();
        let cache = Cache::open(&tmp.path().join("cache"))
            .unwrap()
            .with_key_file(&key_file);
        let config = valid_config();
        let pem = config.certificates[0].key.clone();
        cache.store(&snapshot::encode(&config, 5).message).unwrap();
        let bytes = fs::read(cache.snapshot_path()).unwrap();
        assert!(bytes.starts_with(MAGIC_SEALED));
        // Neither the PEM nor the key's DER (any 16-byte window) is in the file.
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let der = der.secret_der();
        assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"));
        for window in der.windows(16) {
            assert!(!bytes.windows(16).any(|w| w == window));
        }
        assert_eq!(cache.load().unwrap().unwrap().runtime.version(), 5);

        // Another key (another --cache-key-file, a renewed cluster key): refused whole.
        fs::write(&key_file, "b".repeat(44)).unwrap();
        let err = cache.load().unwrap_err();
        assert!(matches!(err, CacheError::Open { .. }), "{err}");
        assert!(err.to_string().contains("another cache key"), "{err}");
        fs::write(&key_file, "a".repeat(44)).unwrap();
        assert_eq!(cache.load().unwrap().unwrap().runtime.version(), 5);

        // Every truncation and some bit flips: refused, "truncated or corrupted".
        for cut in (MAGIC_SEALED.len()..bytes.len()).step_by(13) {
            fs::write(cache.snapshot_path(), &bytes[..cut]).unwrap();
            let err = cache.load().unwrap_err();
            assert!(err.to_string().contains("truncated or corrupted"), "{err}");
        }
        for at in (MAGIC_SEALED.len()..bytes.len()).step_by(11) {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            fs::write(cache.snapshot_path(), &bad).unwrap();
            assert!(
                matches!(cache.load(), Err(CacheError::Open { .. })),
                "flip at {at}"
            );
        }

        // A key file too short: nothing is stored (never in clear), loading reports it.
        fs::write(&key_file, "short").unwrap();
        fs::write(cache.snapshot_path(), &bytes).unwrap();
        assert!(matches!(cache.load(), Err(CacheError::Key { .. })));
        assert!(cache.store(&snapshot::encode(&config, 6).message).is_err());
        assert_eq!(fs::read(cache.snapshot_path()).unwrap(), bytes);
        // An encrypted file and no key configured: refused.
        let keyless = Cache::new(cache.dir());
        assert!(matches!(keyless.load(), Err(CacheError::Key { .. })));
        // A file in clear (written before encryption) is still read with a key configured.
        fs::write(&key_file, "a".repeat(44)).unwrap();
        keyless
            .store(&snapshot::encode(&config, 4).message)
            .unwrap();
        assert_eq!(cache.load().unwrap().unwrap().runtime.version(), 4);
    }

    #[test]
    fn an_unusable_directory_is_reported_not_fatal_here() {
        let tmp = TempDir::new();
        // A file where the directory should be: nothing can be created under it.
        let blocked = tmp.path().join("file");
        fs::write(&blocked, b"x").unwrap();
        let cache = Cache::new(&blocked.join("cache"));
        assert!(cache.open_and_node_id().is_err());
        // Loading finds nothing, storing fails with an error (the caller logs it).
        assert!(matches!(
            cache.load(),
            Ok(None) | Err(CacheError::Read { .. })
        ));
        let encoded = snapshot::encode(&valid_config(), 3);
        assert!(cache.store(&encoded.message).is_err());
    }
}
