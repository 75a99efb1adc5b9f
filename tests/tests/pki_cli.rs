//! `gatehouse-cp pki init|issue` as a user runs it: the real binary, real files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};

use gatehouse_shared::cluster::{
    ClusterMtls, ClusterTlsFiles, client_config, peer_identity, server_config,
};
use gatehouse_shared::x509;
use gatehouse_tests::cp_bin;

/// Exit code of a bad command line (sysexits `EX_USAGE`).
const EX_USAGE: i32 = 64;

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("gh-pki-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pki(args: &[&str]) -> Result<Output> {
    Command::new(cp_bin()?)
        .arg("pki")
        .args(args)
        .output()
        .context("cannot run gatehouse-cp")
}

/// Checks the output shows paths only: one `wrote PATH` line per file, no key material.
fn written(output: &Output) -> Result<Vec<String>> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "{:?}: {stdout}{stderr}",
        output.status
    );
    ensure!(
        !stdout.contains("BEGIN") && !stderr.contains("BEGIN"),
        "{stdout}{stderr}"
    );
    stdout
        .lines()
        .map(|line| {
            line.strip_prefix("wrote ")
                .map(str::to_owned)
                .with_context(|| format!("unexpected output line {line:?}"))
        })
        .collect()
}

fn leaf(path: &Path) -> Result<x509::CertFacts> {
    let pem = std::fs::read_to_string(path)?;
    let certs = x509::parse_certificates(&pem).map_err(anyhow::Error::msg)?;
    x509::cert_facts(&certs[0]).map_err(anyhow::Error::msg)
}

#[cfg(unix)]
fn mode(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[test]
fn pki_init_writes_a_usable_cluster_pki() -> Result<()> {
    let dir = TempDir::new("init");
    let output = pki(&[
        "init",
        "--out",
        dir.arg(),
        "--cp-name",
        "cp.test",
        "--cp-name",
        "127.0.0.1",
        "--dp",
        "dp1",
        "--dp",
        "dp2",
        "--days",
        "30",
    ])?;
    let files = written(&output)?;
    let expected: Vec<String> = [
        "ca.crt",
        "ca.key",
        "cp.crt",
        "cp.key",
        "shared.crt",
        "shared.key",
        "dp1.crt",
        "dp1.key",
        "dp2.crt",
        "dp2.key",
    ]
    .iter()
    .map(|f| dir.join(f).display().to_string())
    .collect();
    assert_eq!(files, expected);

    #[cfg(unix)]
    for stem in ["ca", "cp", "shared", "dp1", "dp2"] {
        assert_eq!(
            mode(&dir.join(&format!("{stem}.key")))?,
            0o600,
            "{stem}.key"
        );
    }
    let cp = leaf(&dir.join("cp.crt"))?;
    assert_eq!(cp.common_name.as_deref(), Some("gatehouse-cp"));
    assert_eq!(cp.sans, ["cp.test", "127.0.0.1"]);
    let dp = leaf(&dir.join("dp2.crt"))?;
    assert_eq!(dp.common_name.as_deref(), Some("dp2"));
    let days = (dp.not_after - dp.not_before) / 86_400;
    assert!((30..=31).contains(&days), "{days}");

    // Both planes can build their cluster TLS configurations from the files, in both modes.
    let files = |stem: &str| ClusterTlsFiles {
        cert: dir.join(&format!("{stem}.crt")),
        key: dir.join(&format!("{stem}.key")),
        ca: Some(dir.join("ca.crt")),
        allowed_common_names: vec!["dp1".to_owned()],
    };
    server_config(ClusterMtls::Pki, &files("cp"))?;
    client_config(ClusterMtls::Pki, &files("dp1"), "cp.test")?;
    server_config(ClusterMtls::Shared, &files("shared"))?;
    client_config(
        ClusterMtls::Shared,
        &files("shared"),
        "gatehouse_clustering",
    )?;
    let shared_der = x509::parse_certificates(&std::fs::read_to_string(dir.join("shared.crt"))?)
        .map_err(anyhow::Error::msg)?;
    let identity = peer_identity(&shared_der).context("no identity")?;
    assert_eq!(
        identity.common_name.as_deref(),
        Some("gatehouse_clustering")
    );
    Ok(())
}

#[test]
fn pki_init_refuses_to_overwrite_without_force() -> Result<()> {
    let dir = TempDir::new("force");
    written(&pki(&["init", "--out", dir.arg()])?)?;
    let ca = std::fs::read(dir.join("ca.crt"))?;

    let output = pki(&["init", "--out", dir.arg(), "--dp", "dp1"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(dir.join("ca.crt"))?, ca);
    assert!(!dir.join("dp1.crt").exists());

    let files = written(&pki(&[
        "init",
        "--out",
        dir.arg(),
        "--dp",
        "dp1",
        "--force",
    ])?)?;
    assert_eq!(files.len(), 8);
    assert_ne!(std::fs::read(dir.join("ca.crt"))?, ca);
    Ok(())
}

#[test]
fn pki_issue_adds_a_data_plane_with_the_existing_ca() -> Result<()> {
    let dir = TempDir::new("issue");
    written(&pki(&["init", "--out", dir.arg(), "--dp", "dp1"])?)?;
    let files = written(&pki(&[
        "issue",
        "--ca-dir",
        dir.arg(),
        "--dp",
        "dp-9.b",
        "--days",
        "7",
    ])?)?;
    assert_eq!(
        files,
        [
            dir.join("dp-9.b.crt").display().to_string(),
            dir.join("dp-9.b.key").display().to_string()
        ]
    );
    #[cfg(unix)]
    assert_eq!(mode(&dir.join("dp-9.b.key"))?, 0o600);
    let ca = leaf(&dir.join("ca.crt"))?;
    let dp = leaf(&dir.join("dp-9.b.crt"))?;
    assert_eq!(dp.issuer, ca.subject);
    assert_eq!(dp.common_name.as_deref(), Some("dp-9.b"));

    // Renewing the CP certificate for the reloader.
    let before = std::fs::read(dir.join("cp.crt"))?;
    let output = pki(&["issue", "--ca-dir", dir.arg(), "--cp"])?;
    assert_eq!(output.status.code(), Some(1));
    written(&pki(&["issue", "--ca-dir", dir.arg(), "--cp", "--force"])?)?;
    assert_ne!(std::fs::read(dir.join("cp.crt"))?, before);
    Ok(())
}

#[test]
fn pki_bad_input_exits_with_usage_error() -> Result<()> {
    let dir = TempDir::new("usage");
    for args in [
        vec!["init", "--out", dir.arg(), "--dp", "bad/name"],
        vec!["init", "--out", dir.arg(), "--dp", "shared"],
        vec!["init", "--out", dir.arg(), "--cp-name", "not a host"],
        vec!["init", "--out", dir.arg(), "--days", "0"],
    ] {
        let output = pki(&args)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(EX_USAGE), "{args:?}: {stderr}");
        assert!(stderr.starts_with("gatehouse-cp: invalid"), "{stderr}");
    }
    assert!(!dir.0.exists(), "nothing is written for bad input");

    // A directory without a CA.
    let output = pki(&["issue", "--ca-dir", dir.arg(), "--dp", "dp1"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ca.crt"), "{stderr}");
    Ok(())
}
