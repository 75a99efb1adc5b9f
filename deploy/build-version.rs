//! Build script of `gatehouse-cp` and `gatehouse-dp` (both point here): sets
//! `GATEHOUSE_GIT_COMMIT`, which `--version` shows next to the crate version.
//!
//! The commit is `GATEHOUSE_GIT_COMMIT` from the environment when set, else the `COMMIT` file
//! at the workspace root (a source tarball made by `deploy/build-release.sh`, which has no
//! `.git`), else `git rev-parse` of the checkout (with `-dirty` when tracked files differ from
//! it), else `unknown`.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    Some(text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=GATEHOUSE_GIT_COMMIT");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let commit_file = Path::new(&manifest_dir).join("..").join("COMMIT");
    // Watching a file that does not exist would rerun this script on every build.
    if commit_file.exists() {
        println!("cargo:rerun-if-changed={}", commit_file.display());
    }
    let commit = std::env::var("GATEHOUSE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string(&commit_file)
                .ok()
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
        })
        .or_else(|| {
            let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
            // Rebuild when HEAD moves: a checkout (HEAD), a commit (the branch's ref, loose or
            // packed), staged changes (index).
            let mut watched = vec![
                "HEAD".to_owned(),
                "index".to_owned(),
                "packed-refs".to_owned(),
            ];
            watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
            for path in &watched {
                // A path that does not exist would rerun this script on every build.
                if let Some(file) =
                    git(&["rev-parse", "--path-format=absolute", "--git-path", path])
                    && Path::new(&file).exists()
                {
                    println!("cargo:rerun-if-changed={file}");
                }
            }
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            Some(if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            })
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=GATEHOUSE_GIT_COMMIT={commit}");
}
