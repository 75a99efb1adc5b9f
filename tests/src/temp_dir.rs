//! Temporary directories removed when dropped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A fresh directory under the system temp dir (`/tmp/gh-<tag>-<uuid>`), removed with its
/// contents when dropped (kept when `GATEHOUSE_TEST_KEEP_DB=1`, for inspection).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

// === impl TempDir ===

impl TempDir {
    /// Creates `/tmp/gh-<tag>-<uuid>` with mode 0700.
    pub fn new(tag: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("gh-{tag}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod 700 {}", path.display()))?;
        }
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var("GATEHOUSE_TEST_KEEP_DB").is_ok_and(|v| v == "1") {
            eprintln!("GATEHOUSE_TEST_KEEP_DB=1: keeping {}", self.path.display());
            return;
        }
        // Best effort: a process that still writes there may race us.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
