//! The cache directory: the node id (`node_id`, a UUID generated once) and the last applied
//! snapshot (`snapshot.bin`, the encoded `gatehouse.v1.Snapshot` message as received).
//!
//! Files are replaced atomically: a temporary file in the same directory is written, flushed
//! to disk, renamed over the old one, and the directory is flushed, so a crash leaves either
//! the old or the new file, never a torn one. The snapshot holds private keys: the directory
//! is created with mode 0700 and files with mode 0600.
//!
//! Everything here blocks: call it from `spawn_blocking` or before the async runtime serves.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_proto::v1 as pb;
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

/// The cache directory.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
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
    /// Opens `dir`, creating it (and its parents) with mode 0700 when missing.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
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
        write_atomically(&self.dir, SNAPSHOT_FILE, &snapshot.encode_to_vec())
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
        let message = match pb::Snapshot::decode(bytes.as_slice()) {
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

        // A valid message whose bytes do not match its hash.
        let mut message = snapshot::encode(&valid_config(), 7).message;
        message.hash = "00".repeat(32);
        cache.store(&message).unwrap();
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
}
