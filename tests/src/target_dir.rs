//! Where Cargo put the test executable, and so the binaries built beside it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};

/// The Cargo output directories of the running test executable.
#[derive(Debug)]
pub(crate) struct BuildDirs {
    /// The target directory (`target/`, or `$CARGO_TARGET_DIR`): the one holding `CACHEDIR.TAG`.
    pub(crate) target: PathBuf,
    /// The profile directory the binaries of this build are in (`target/debug/`).
    pub(crate) profile: PathBuf,
}

// === impl BuildDirs ===

impl BuildDirs {
    /// Derives the directories from the test executable's path: test executables live in
    /// `<target>[/<triple>]/<profile>/deps/`. This follows `--release`, `--target` and
    /// `CARGO_TARGET_DIR` without reading Cargo's configuration.
    pub(crate) fn get() -> Result<&'static BuildDirs> {
        static DIRS: OnceLock<BuildDirs> = OnceLock::new();
        if let Some(dirs) = DIRS.get() {
            return Ok(dirs);
        }
        let exe = std::env::current_exe().context("locating the test executable")?;
        let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
        let dirs = Self::from_exe(&exe)
            .with_context(|| format!("{} is not inside a Cargo target directory", exe.display()))?;
        Ok(DIRS.get_or_init(|| dirs))
    }

    fn from_exe(exe: &Path) -> Option<BuildDirs> {
        let dir = exe.parent()?;
        let profile = if dir.file_name()? == "deps" {
            dir.parent()?
        } else {
            dir
        };
        // Cargo writes CACHEDIR.TAG at the top of the target directory; with `--target <triple>`
        // the profile directory is one level further down.
        let target = profile
            .ancestors()
            .skip(1)
            .take(2)
            .find(|d| d.join("CACHEDIR.TAG").is_file())
            .or_else(|| profile.parent())?;
        Some(BuildDirs {
            target: target.to_path_buf(),
            profile: profile.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_is_parent_of_deps() {
        let dirs = BuildDirs::from_exe(Path::new("/nonexistent/target/debug/deps/harness-0123"))
            .expect("a path inside a target dir");
        assert_eq!(dirs.profile, Path::new("/nonexistent/target/debug"));
        assert_eq!(dirs.target, Path::new("/nonexistent/target"));
    }

    #[test]
    fn running_test_is_inside_the_target_dir() {
        let dirs = BuildDirs::get().expect("target dirs");
        assert!(dirs.target.join("CACHEDIR.TAG").is_file(), "{dirs:?}");
        assert!(dirs.profile.starts_with(&dirs.target), "{dirs:?}");
    }
}
