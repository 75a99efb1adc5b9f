//! A cluster PKI in a temporary directory, as `gatehouse-cp pki init` writes it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gatehouse_shared::cluster::ClusterTlsFiles;
use gatehouse_shared::cluster::pki;

use crate::temp_dir::TempDir;

/// A cluster CA, the CP certificate (SANs `localhost`, `127.0.0.1`), the shared-mode
/// certificate and one client certificate per DP name, written by
/// [`gatehouse_shared::cluster::pki::init`] into a temporary directory removed when dropped.
///
/// Two `Pki`s have unrelated CAs: use a second one for "another cluster's" certificates.
#[derive(Debug)]
pub struct Pki {
    dir: TempDir,
}

// === impl Pki ===

impl Pki {
    /// Writes a fresh PKI with a client certificate for each of `dps`.
    pub fn new(dps: &[&str]) -> Result<Pki> {
        let dir = TempDir::new("pki")?;
        let dps: Vec<String> = dps.iter().map(|s| (*s).to_owned()).collect();
        pki::init(dir.path(), &[], &dps, pki::DEFAULT_VALIDITY_DAYS, true)
            .with_context(|| format!("pki init in {}", dir.path().display()))?;
        Ok(Pki { dir })
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ca.crt`.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// `ca.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// `cp.crt`.
    pub fn cp_cert(&self) -> PathBuf {
        self.dir.join("cp.crt")
    }

    /// `cp.key`.
    pub fn cp_key(&self) -> PathBuf {
        self.dir.join("cp.key")
    }

    /// `shared.crt`.
    pub fn shared_cert(&self) -> PathBuf {
        self.dir.join("shared.crt")
    }

    /// `shared.key`.
    pub fn shared_key(&self) -> PathBuf {
        self.dir.join("shared.key")
    }

    /// `NAME.crt`.
    pub fn dp_cert(&self, name: &str) -> PathBuf {
        self.dir.join(&format!("{name}.crt"))
    }

    /// `NAME.key`.
    pub fn dp_key(&self, name: &str) -> PathBuf {
        self.dir.join(&format!("{name}.key"))
    }

    /// Issues (or, with an existing name, replaces) the client certificate of DP `name`.
    pub fn issue_dp(&self, name: &str) -> Result<()> {
        pki::issue(self.dir(), name, pki::DEFAULT_VALIDITY_DAYS, true)
            .with_context(|| format!("pki issue {name}"))?;
        Ok(())
    }

    /// Replaces `cp.crt`/`cp.key` with a new certificate from the same CA (new key, new
    /// serial), as a certificate rotation does.
    pub fn rotate_cp(&self) -> Result<()> {
        pki::issue_cp(self.dir(), &[], pki::DEFAULT_VALIDITY_DAYS, true)
            .context("pki issue --cp")?;
        Ok(())
    }

    /// `gatehouse-cp serve` arguments for `--cluster-mtls pki` with this PKI:
    /// `--cluster-mtls pki --cluster-cert cp.crt --cluster-cert-key cp.key --cluster-ca-cert ca.crt`.
    pub fn cp_args(&self) -> Vec<String> {
        vec![
            "--cluster-mtls".into(),
            "pki".into(),
            "--cluster-cert".into(),
            path_arg(&self.cp_cert()),
            "--cluster-cert-key".into(),
            path_arg(&self.cp_key()),
            "--cluster-ca-cert".into(),
            path_arg(&self.ca_cert()),
        ]
    }

    /// `gatehouse-cp serve` arguments for `--cluster-mtls shared` with `shared.crt`/`shared.key`.
    pub fn cp_shared_args(&self) -> Vec<String> {
        vec![
            "--cluster-mtls".into(),
            "shared".into(),
            "--cluster-cert".into(),
            path_arg(&self.shared_cert()),
            "--cluster-cert-key".into(),
            path_arg(&self.shared_key()),
        ]
    }

    /// The files DP `name` uses in `pki` mode (for a raw TLS client).
    pub fn dp_files(&self, name: &str) -> ClusterTlsFiles {
        ClusterTlsFiles {
            cert: self.dp_cert(name),
            key: self.dp_key(name),
            ca: Some(self.ca_cert()),
            allowed_common_names: Vec::new(),
        }
    }

    /// The files every node uses in `shared` mode.
    pub fn shared_files(&self) -> ClusterTlsFiles {
        ClusterTlsFiles {
            cert: self.shared_cert(),
            key: self.shared_key(),
            ca: None,
            allowed_common_names: Vec::new(),
        }
    }
}

/// A path as a command-line argument (test paths are UTF-8: they live under the temp dir).
pub(crate) fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
