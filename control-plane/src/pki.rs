//! `gatehouse-cp pki`: writes the cluster PKI, a thin layer over
//! [`gatehouse_shared::cluster::pki`]. It prints the paths it wrote, never key material.
//!
//! ```text
//! gatehouse-cp pki init --out DIR [--cp-name NAME]... [--dp NAME]... [--days N] [--force]
//! gatehouse-cp pki issue --ca-dir DIR --dp NAME... [--days N] [--force]
//! gatehouse-cp pki issue --ca-dir DIR --cp [--cp-name NAME]... [--days N] --force
//! gatehouse-cp pki rotate-ca --ca-dir DIR [--finish]
//! ```

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use gatehouse_shared::cluster::pki::{self, PkiError};

/// The `pki` subcommands.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Write a new cluster CA (ca.crt, ca.key), the CP certificate (cp.crt, cp.key), the
    /// certificate every node uses in shared mode (shared.crt, shared.key) and one client
    /// certificate per DP (NAME.crt, NAME.key). Keys are written with mode 0600.
    Init(InitArgs),
    /// Issue DP certificates, or renew the CP certificate, with the CA of an existing
    /// directory. The new files are written beside the CA.
    Issue(IssueArgs),
    /// Rotate the cluster CA: a new CA key replaces ca.key and ca.crt becomes the new CA
    /// certificate followed by the old one (both trusted, the new one signs). With --finish,
    /// once every data plane has a certificate of the new CA and cp.crt was renewed
    /// (`pki issue --cp --force`), ca.crt keeps only the new CA.
    RotateCa(RotateArgs),
    /// Print the pin of each CA certificate in a file (`sha256:` + the SHA-256 of its public
    /// key), what a data plane takes as --cluster-ca-pin to enrol without a copy of the CA.
    Pin(PinArgs),
}

/// Arguments of `pki pin`.
#[derive(Debug, Clone, Args)]
pub struct PinArgs {
    /// Directory holding the cluster CA (its ca.crt is read).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "cert",
        conflicts_with = "cert"
    )]
    pub ca_dir: Option<PathBuf>,

    /// A PEM file of CA certificates (`--cluster-ca-cert`).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
}

/// Arguments of `pki rotate-ca`.
#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// Directory holding the cluster CA (ca.crt, ca.key).
    #[arg(long, value_name = "DIR")]
    pub ca_dir: PathBuf,

    /// End the rotation: remove the old CA from ca.crt.
    #[arg(long)]
    pub finish: bool,
}

/// Arguments of `pki init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Directory to write into (created with mode 0700 if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// DNS name or IP address the DPs use to reach the CP (repeatable); becomes a
    /// subjectAltName of cp.crt and shared.crt [default: localhost and 127.0.0.1].
    #[arg(long = "cp-name", value_name = "NAME")]
    pub cp_names: Vec<String>,

    /// Name of a DP (repeatable; letters, digits, '.', '_', '-'): writes NAME.crt and
    /// NAME.key with common name NAME.
    #[arg(long = "dp", value_name = "NAME")]
    pub dps: Vec<String>,

    /// Validity of the node certificates, in days (the CA lives at least 10 years).
    #[arg(long, value_name = "N", default_value_t = pki::DEFAULT_VALIDITY_DAYS)]
    pub days: u32,

    /// Replace existing files (each atomically); without it, nothing is written if any
    /// file exists.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `pki issue`.
#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// Directory holding the cluster CA (ca.crt, ca.key); the new files are written there.
    #[arg(long, value_name = "DIR")]
    pub ca_dir: PathBuf,

    /// Name of a DP to issue a client certificate for (repeatable): writes NAME.crt and
    /// NAME.key.
    #[arg(long = "dp", value_name = "NAME", required_unless_present = "cp")]
    pub dps: Vec<String>,

    /// Renew the CP certificate (cp.crt, cp.key); a running CP picks it up.
    #[arg(long)]
    pub cp: bool,

    /// With --cp: DNS name or IP address the DPs use to reach the CP (repeatable)
    /// [default: localhost and 127.0.0.1].
    #[arg(long = "cp-name", value_name = "NAME", requires = "cp")]
    pub cp_names: Vec<String>,

    /// Validity of the certificates, in days (never beyond the CA's).
    #[arg(long, value_name = "N", default_value_t = pki::DEFAULT_VALIDITY_DAYS)]
    pub days: u32,

    /// Replace existing files (each atomically).
    #[arg(long)]
    pub force: bool,
}

/// Why a `pki` command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Generating or writing the PKI failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The list of written files could not be printed.
    #[error("cannot print the written files: {0}")]
    Output(#[from] io::Error),
    /// The CA file of `pki pin` cannot be used.
    #[error("{0}")]
    Pin(String),
}

/// Runs a `pki` command, writing one `wrote PATH` line per file to `out`.
pub fn run(command: &PkiCommand, out: &mut dyn Write) -> Result<(), Error> {
    let written = match command {
        PkiCommand::Init(args) => {
            pki::init(&args.out, &args.cp_names, &args.dps, args.days, args.force)?
        }
        PkiCommand::Issue(args) => issue(args)?,
        PkiCommand::RotateCa(args) if args.finish => pki::finish_ca_rotation(&args.ca_dir)?,
        PkiCommand::RotateCa(args) => pki::rotate_ca(&args.ca_dir)?,
        PkiCommand::Pin(args) => return pin(args, out),
    };
    for path in written {
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}

/// `pki pin`: one `PIN  SUBJECT` line per CA certificate of the file; a file without a CA
/// certificate is an error.
fn pin(args: &PinArgs, out: &mut dyn Write) -> Result<(), Error> {
    let path = match (&args.cert, &args.ca_dir) {
        (Some(cert), _) => cert.clone(),
        (None, Some(dir)) => dir.join("ca.crt"),
        (None, None) => return Err(Error::Pin("give --ca-dir or --cert".to_owned())),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Pin(format!("cannot read {}: {e}", path.display())))?;
    let certs = gatehouse_shared::x509::parse_certificates(&text)
        .map_err(|e| Error::Pin(format!("{}: {e}", path.display())))?;
    let mut printed = 0;
    for der in &certs {
        let facts = gatehouse_shared::x509::cert_facts(der)
            .map_err(|e| Error::Pin(format!("{}: {e}", path.display())))?;
        if !facts.is_ca {
            continue;
        }
        let pin = gatehouse_shared::x509::public_key_pin(der)
            .map_err(|e| Error::Pin(format!("{}: {e}", path.display())))?;
        writeln!(out, "{pin}  {}", facts.subject)?;
        printed += 1;
    }
    if printed == 0 {
        return Err(Error::Pin(format!("{}: no CA certificate", path.display())));
    }
    Ok(())
}

/// `pki issue`: checks every name and file first, so a refused command writes nothing.
fn issue(args: &IssueArgs) -> Result<Vec<PathBuf>, PkiError> {
    let mut dps: Vec<&str> = Vec::new();
    for dp in &args.dps {
        pki::check_dp_name(dp)?;
        if !dps.contains(&dp.as_str()) {
            dps.push(dp);
        }
    }
    if !args.force {
        let cp = args.cp.then_some("cp");
        refuse_existing(&args.ca_dir, dps.iter().copied().chain(cp))?;
    }
    let mut written = Vec::new();
    for dp in dps {
        written.extend(pki::issue(&args.ca_dir, dp, args.days, args.force)?);
    }
    if args.cp {
        written.extend(pki::issue_cp(
            &args.ca_dir,
            &args.cp_names,
            args.days,
            args.force,
        )?);
    }
    Ok(written)
}

/// Fails if `STEM.crt` or `STEM.key` exists in `dir` for any stem.
fn refuse_existing<'a>(
    dir: &Path,
    stems: impl IntoIterator<Item = &'a str>,
) -> Result<(), PkiError> {
    for stem in stems {
        for ext in ["crt", "key"] {
            let path = dir.join(format!("{stem}.{ext}"));
            if path.exists() {
                return Err(PkiError::Exists { path });
            }
        }
    }
    Ok(())
}

// === impl Error ===

impl Error {
    /// Whether the command line itself is at fault (bad name or validity), for exit code 64.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Pki(
                PkiError::InvalidDpName { .. }
                    | PkiError::InvalidCpName { .. }
                    | PkiError::InvalidValidity { .. }
            )
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, Command};

    fn parse(args: &[&str]) -> PkiCommand {
        let mut argv = vec!["gatehouse-cp", "pki"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Pki(command) => command,
            other => panic!("not pki: {other:?}"),
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gh-cp-pki-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn run_to_string(command: &PkiCommand) -> Result<String, Error> {
        let mut out = Vec::new();
        run(command, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn init_then_issue_print_the_written_paths() {
        let dir = temp_dir("init");
        let out = dir.to_str().unwrap();
        let command = parse(&["init", "--out", out, "--dp", "dp1", "--cp-name", "cp.test"]);
        let PkiCommand::Init(args) = &command else {
            panic!("{command:?}")
        };
        assert_eq!(args.days, pki::DEFAULT_VALIDITY_DAYS);
        assert_eq!(args.cp_names, vec!["cp.test"]);
        let printed = run_to_string(&command).unwrap();
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), 8, "{printed}");
        assert_eq!(lines[0], format!("wrote {}", dir.join("ca.crt").display()));
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");

        let issue = parse(&[
            "issue", "--ca-dir", out, "--dp", "dp2", "--dp", "dp3", "--days", "7",
        ]);
        let printed = run_to_string(&issue).unwrap();
        assert_eq!(printed.lines().count(), 4, "{printed}");
        assert!(dir.join("dp3.key").is_file());

        // Refused as a whole when one of the files exists.
        let again = parse(&["issue", "--ca-dir", out, "--dp", "dp4", "--dp", "dp2"]);
        let error = run_to_string(&again).unwrap_err();
        assert!(
            error.to_string().contains("dp2.crt already exists"),
            "{error}"
        );
        assert!(!error.is_usage());
        assert!(!dir.join("dp4.crt").exists());

        let renew = parse(&["issue", "--ca-dir", out, "--cp", "--force"]);
        assert_eq!(run_to_string(&renew).unwrap().lines().count(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        let dir = temp_dir("bad");
        let out = dir.to_str().unwrap();
        let error = run_to_string(&parse(&["init", "--out", out, "--dp", "a/b"])).unwrap_err();
        assert!(error.is_usage(), "{error}");
        let error = run_to_string(&parse(&["init", "--out", out, "--days", "0"])).unwrap_err();
        assert!(error.is_usage(), "{error}");
        assert!(!dir.exists());
        // `issue` needs --dp or --cp, and --cp-name only goes with --cp.
        assert!(Cli::try_parse_from(["gatehouse-cp", "pki", "issue", "--ca-dir", out]).is_err());
        assert!(
            Cli::try_parse_from([
                "gatehouse-cp",
                "pki",
                "issue",
                "--ca-dir",
                out,
                "--dp",
                "x",
                "--cp-name",
                "y"
            ])
            .is_err()
        );
    }
}
