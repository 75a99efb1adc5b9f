//! Finding certificate/key pairs in a source directory, and reading one pair consistently.
//!
//! Layouts, looked for in the directory and its subdirectories (at most [`MAX_DEPTH`] deep;
//! entries whose name starts with `.` are skipped, which hides Kubernetes' `..data` and
//! `..2026_...` directories while `tls.crt` is read through its symlink):
//! - certbot: `fullchain.pem` + `privkey.pem` in a directory (`live/<name>/`);
//! - Kubernetes TLS secret mount: `tls.crt` + `tls.key`;
//! - plain pair: `<name>.crt` (or `<name>.pem`) + `<name>.key`.
//!
//! SNIs come from the certificate's DNS subjectAltNames (wildcards kept), unless a sidecar
//! file says otherwise: `<name>.snis` beside a plain pair, `snis` in a certbot or Kubernetes
//! directory (a Secret key of that name); names separated by whitespace or commas, `#`
//! starts a comment.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use gatehouse_shared::x509::{self, KeyPairError};

/// How deep below the source directory pairs are looked for (`live/<name>/` is 2).
pub(crate) const MAX_DEPTH: usize = 4;
/// Largest certificate, key or sidecar file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The layout a pair was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `fullchain.pem` + `privkey.pem`.
    Certbot,
    /// `tls.crt` + `tls.key`.
    Kubernetes,
    /// `<name>.crt|.pem` + `<name>.key`.
    Plain,
}

/// A certificate/key pair found in a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pair {
    /// Its name within the source: the directory (certbot, Kubernetes; `.` for the source
    /// itself) or `dir/<name>` (plain), with `/` separators.
    pub(crate) name: String,
    /// Its layout.
    pub(crate) layout: Layout,
    /// The certificate (chain) file.
    pub(crate) cert: PathBuf,
    /// The private key file.
    pub(crate) key: PathBuf,
    /// The SNI sidecar file, when there is one.
    pub(crate) snis: Option<PathBuf>,
}

/// A pair read and checked: what its certificate row holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loaded {
    /// The certificate chain (PEM), as in the file.
    pub(crate) cert: String,
    /// The private key (PEM), as in the file.
    pub(crate) key: String,
    /// The SNIs, sorted.
    pub(crate) snis: Vec<String>,
    /// The leaf's end of validity, Unix seconds.
    pub(crate) not_after: i64,
}

/// Why a pair was not loaded. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotLoaded {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The certificate, the key, or their match failed the checks.
    #[error("{0}")]
    Invalid(String),
}

// === impl Layout ===

impl Layout {
    /// `certbot`, `kubernetes` or `plain`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Certbot => "certbot",
            Self::Kubernetes => "kubernetes",
            Self::Plain => "plain",
        }
    }
}

// === impl Pair ===

impl Pair {
    /// Reads the pair and checks it: parsable chain, parsable key, the key matches the leaf.
    /// A pair caught mid-write (a truncated PEM, a key of the next certificate) fails here and
    /// is retried later.
    pub(crate) fn load(&self) -> Result<Loaded, NotLoaded> {
        let cert = read_text(&self.cert)?;
        let key = read_text(&self.key)?;
        let facts = x509::check_key_pair(&cert, &key).map_err(|e| match e {
            KeyPairError::Mismatch => NotLoaded::Invalid(format!(
                "{} does not match the key in {} (yet)",
                self.cert.display(),
                self.key.display()
            )),
            KeyPairError::Cert(reason) => {
                NotLoaded::Invalid(format!("{}: {reason}", self.cert.display()))
            }
            KeyPairError::Key(reason) => {
                NotLoaded::Invalid(format!("{}: {reason}", self.key.display()))
            }
        })?;
        let snis = match &self.snis {
            Some(path) => parse_snis(&read_text(path)?),
            None => dns_names(&facts.sans),
        };
        Ok(Loaded {
            cert,
            key,
            snis,
            not_after: facts.not_after,
        })
    }
}

/// Finds every pair under `root`, sorted by name.
pub(crate) fn discover(root: &Path) -> std::io::Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    walk(root, Path::new(""), 0, &mut pairs)?;
    pairs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pairs)
}

/// Looks for pairs in `root/rel`, then in its subdirectories (not following symlinked
/// directories, which could loop).
fn walk(root: &Path, rel: &Path, depth: usize, pairs: &mut Vec<Pair>) -> std::io::Result<()> {
    let dir = root.join(rel);
    let mut files = BTreeSet::new();
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            subdirs.push(name);
        } else if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            // A regular file, or a symlink to one (certbot's live/, Kubernetes' ..data).
            files.insert(name);
        }
    }
    let dir_name = if rel.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        slash_path(rel)
    };
    let sidecar = files.contains("snis").then(|| dir.join("snis"));
    for (layout, cert, key) in [
        (Layout::Certbot, "fullchain.pem", "privkey.pem"),
        (Layout::Kubernetes, "tls.crt", "tls.key"),
    ] {
        if files.contains(cert) && files.contains(key) {
            pairs.push(Pair {
                name: dir_name.clone(),
                layout,
                cert: dir.join(cert),
                key: dir.join(key),
                snis: sidecar.clone(),
            });
        }
    }
    for file in &files {
        let Some(stem) = file.strip_suffix(".key") else {
            continue;
        };
        if stem.is_empty() || (stem == "tls" && files.contains("tls.crt")) {
            continue;
        }
        let Some(cert) = [format!("{stem}.crt"), format!("{stem}.pem")]
            .into_iter()
            .find(|c| files.contains(c))
        else {
            continue;
        };
        let snis = format!("{stem}.snis");
        pairs.push(Pair {
            name: slash_path(&rel.join(stem)),
            layout: Layout::Plain,
            cert: dir.join(cert),
            key: dir.join(file),
            snis: files.contains(&snis).then(|| dir.join(snis)),
        });
    }
    if depth < MAX_DEPTH {
        subdirs.sort();
        for sub in subdirs {
            walk(root, &rel.join(sub), depth + 1, pairs)?;
        }
    }
    Ok(())
}

/// `rel` with `/` separators.
fn slash_path(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Reads a small text file (through symlinks).
fn read_text(path: &Path) -> Result<String, NotLoaded> {
    let failed = |reason: String| NotLoaded::Read {
        path: path.display().to_string(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| failed(e.to_string()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(failed(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| failed("not UTF-8 text".to_owned()))
}

/// The names of a sidecar file, lowercased, sorted, without duplicates.
pub(crate) fn parse_snis(text: &str) -> Vec<String> {
    let names: BTreeSet<String> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .flat_map(|line| line.split([',', ' ', '\t']))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    names.into_iter().collect()
}

/// The DNS names among subjectAltNames (not IP addresses, e-mail addresses or URIs),
/// lowercased, sorted, without duplicates.
pub(crate) fn dns_names(sans: &[String]) -> Vec<String> {
    let names: BTreeSet<String> = sans
        .iter()
        .filter(|san| !san.contains(['@', ':', '/']) && san.parse::<IpAddr>().is_err())
        .map(|san| san.to_ascii_lowercase())
        .collect();
    names.into_iter().collect()
}
