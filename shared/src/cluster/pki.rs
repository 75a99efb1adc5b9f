//! Cluster PKI generation with rcgen (`gatehouse-cp pki init|issue`).
//!
//! [`init`] writes, into one directory:
//!
//! | files | what |
//! |---|---|
//! | `ca.crt`, `ca.key` | the cluster CA: CN `Gatehouse cluster CA <random>`, `CA:TRUE`, path length 0, keyCertSign + cRLSign |
//! | `cp.crt`, `cp.key` | the CP server certificate: CN `gatehouse-cp`, SANs from the CP names, EKU serverAuth |
//! | `NAME.crt`, `NAME.key` | one client certificate per DP: CN `NAME`, EKU clientAuth |
//! | `shared.crt`, `shared.key` | for `cluster_mtls = shared`: self-signed, CN `gatehouse_clustering`, SANs CP names + `gatehouse_clustering`, EKU serverAuth + clientAuth, used by every node |
//!
//! [`issue`] and [`issue_cp`] add or renew a DP or CP certificate signed by an existing CA.
//! Keys are ECDSA P-256 (PKCS#8 PEM) and are created with mode 0600; certificates with 0644.
//! Existing files are never overwritten unless `force` is set; then each file is replaced
//! atomically (temporary file + rename). Serial numbers are random.
//!
//! The CA lives at least [`CA_MIN_VALIDITY_DAYS`] (longer if `validity_days` asks for
//! more), so certificates issued later still chain to it; an issued certificate never
//! outlives its CA.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::crypto::aws_lc_rs;
use rustls_pki_types::ServerName;
use time::OffsetDateTime;

use super::tls::SHARED_SERVER_NAME;
use crate::x509;

/// Default validity of node certificates, in days (825, the longest most clients accept).
pub const DEFAULT_VALIDITY_DAYS: u32 = 825;
/// Shortest validity of the cluster CA, in days (10 years).
pub const CA_MIN_VALIDITY_DAYS: u32 = 3650;
/// Longest validity accepted for any certificate, in days (100 years).
pub const MAX_VALIDITY_DAYS: u32 = 36500;
/// CP names used when none are given: DNS or IP subject alternative names of `cp.crt`.
pub const DEFAULT_CP_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// Common name of the CP certificate.
pub const CP_COMMON_NAME: &str = "gatehouse-cp";
/// Common name of the cluster CA, followed by a random 8-digit hex suffix.
pub const CA_COMMON_NAME: &str = "Gatehouse cluster CA";
/// Longest DP name (the limit of an X.509 common name).
const MAX_DP_NAME_LEN: usize = 64;
/// File stems `init` uses for itself; a DP may not be named like them.
const RESERVED_STEMS: [&str; 3] = ["ca", "cp", "shared"];
/// How far back `not_before` is set, to tolerate clock skew between nodes.
const BACKDATE: time::Duration = time::Duration::hours(1);
/// Mode of private key files.
const KEY_MODE: u32 = 0o600;
/// Mode of certificate files.
const CERT_MODE: u32 = 0o644;
/// Mode of an output directory `init` creates.
const DIR_MODE: u32 = 0o700;

/// Why PKI files could not be generated. Messages name the file or the value at fault and
/// never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A DP name is not usable as a common name and file name.
    #[error("invalid data plane name '{name}': {reason}")]
    InvalidDpName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A CP name is neither a DNS name nor an IP address.
    #[error("invalid control plane name '{name}': expected a DNS name or an IP address")]
    InvalidCpName {
        /// The rejected name.
        name: String,
    },
    /// The validity is zero or too long.
    #[error("invalid validity of {days} days: expected 1 to {MAX_VALIDITY_DAYS}")]
    InvalidValidity {
        /// The rejected number of days.
        days: u32,
    },
    /// A file to write already exists and `force` is not set.
    #[error("{path} already exists (use --force to replace it)", path = .path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}", path = .path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A CA file could not be read.
    #[error("cannot read {path}: {source}", path = .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The CA found in the directory cannot issue certificates.
    #[error("{path}: {reason}", path = .path.display())]
    Ca {
        /// The CA certificate or key file.
        path: PathBuf,
        /// Why (never key material).
        reason: String,
    },
    /// rcgen failed to generate a key or certificate.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// Which certificate.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// The system random generator failed.
    #[error("cannot generate a random serial number")]
    Random,
}

/// A loaded CA that can sign certificates.
pub(crate) struct Ca {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    pub(crate) not_after: OffsetDateTime,
}

/// A certificate and its key, PEM-encoded, ready to be written.
struct Pair {
    stem: String,
    cert_pem: String,
    key_pem: String,
}

/// Writes a cluster CA, the CP certificate, the shared-mode certificate and one certificate
/// per DP into `out_dir` (created with mode 0700 if missing). See the module docs for the
/// files.
///
/// `cp_names` are the DNS names and IP addresses DPs use to reach the CP (empty:
/// [`DEFAULT_CP_NAMES`]); `dps` the DP names (`[A-Za-z0-9._-]+`, not `ca`, `cp` or `shared`).
/// Nothing is written if any file exists, unless `force`. Returns the written paths, in order.
pub fn init(
    out_dir: &Path,
    cp_names: &[String],
    dps: &[String],
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, PkiError> {
    let cp_sans = cp_sans(cp_names)?;
    check_dp_names(dps)?;
    check_days(validity_days)?;

    let (ca_pair, ca) = new_ca(validity_days.max(CA_MIN_VALIDITY_DAYS))?;
    let mut pairs = vec![ca_pair];
    pairs.push(cp_pair(&ca, &cp_sans, validity_days)?);
    pairs.push(shared_pair(&cp_sans, validity_days)?);
    for dp in dps {
        pairs.push(dp_pair(&ca, dp, validity_days)?);
    }
    create_dir(out_dir)?;
    write_pairs(out_dir, &pairs, force)
}

/// Issues a DP client certificate (`NAME.crt`, `NAME.key`, CN `NAME`, EKU clientAuth) signed
/// by the CA in `ca_dir` (`ca.crt`, `ca.key`), into `ca_dir`. The certificate never outlives
/// the CA. Existing files are replaced only with `force`. Returns the written paths.
pub fn issue(
    ca_dir: &Path,
    dp_name: &str,
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, PkiError> {
    check_dp_name(dp_name)?;
    check_days(validity_days)?;
    let ca = load_ca(ca_dir)?;
    let pair = dp_pair(&ca, dp_name, validity_days)?;
    write_pairs(ca_dir, &[pair], force)
}

/// Issues a new CP server certificate (`cp.crt`, `cp.key`) signed by the CA in `ca_dir`,
/// for `cp_names` (empty: [`DEFAULT_CP_NAMES`]), into `ca_dir`. Use it to rotate the CP
/// certificate: a running CP picks the new files up. Existing files are replaced only with
/// `force`. Returns the written paths.
pub fn issue_cp(
    ca_dir: &Path,
    cp_names: &[String],
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, PkiError> {
    let cp_sans = cp_sans(cp_names)?;
    check_days(validity_days)?;
    let ca = load_ca(ca_dir)?;
    let pair = cp_pair(&ca, &cp_sans, validity_days)?;
    write_pairs(ca_dir, &[pair], force)
}

/// Starts a CA rotation in `ca_dir`: a new CA (key and certificate) replaces `ca.key`, and
/// `ca.crt` becomes the new CA certificate followed by the old one. A running control plane
/// then trusts both, signs with the new one and sends the bundle to each data plane it renews.
/// Refused while a rotation is in progress (`ca.crt` holds more than one certificate) or when
/// the current CA does not load. Returns the written paths.
pub fn rotate_ca(ca_dir: &Path) -> Result<Vec<PathBuf>, PkiError> {
    let cert_path = ca_dir.join("ca.crt");
    let old = ca_bundle(&cert_path)?;
    if old.len() > 1 {
        return Err(PkiError::Ca {
            path: cert_path,
            reason: "holds more than one certificate: a rotation is in progress (finish it first)"
                .to_owned(),
        });
    }
    load_ca(ca_dir)?;
    let (pair, _) = new_ca(CA_MIN_VALIDITY_DAYS)?;
    let key_path = ca_dir.join("ca.key");
    // The key first: until the bundle follows, the pair does not match and a control plane
    // keeps its current CA.
    replace_file(&key_path, pair.key_pem.as_bytes(), KEY_MODE)?;
    let bundle = format!("{}{}", pair.cert_pem, old.concat());
    replace_file(&cert_path, bundle.as_bytes(), CERT_MODE)?;
    Ok(vec![key_path, cert_path])
}

/// Ends a CA rotation in `ca_dir`: `ca.crt` keeps only its first (the new) certificate.
/// Refused when no rotation is in progress, or when `cp.crt` exists and is not issued by the
/// new CA (renew it first with [`issue_cp`], or data planes could not verify the control
/// plane). Returns the written path.
pub fn finish_ca_rotation(ca_dir: &Path) -> Result<Vec<PathBuf>, PkiError> {
    let cert_path = ca_dir.join("ca.crt");
    let bundle = ca_bundle(&cert_path)?;
    let [new, ..] = bundle.as_slice() else {
        return Err(PkiError::Ca {
            path: cert_path,
            reason: "no certificate found".to_owned(),
        });
    };
    if bundle.len() == 1 {
        return Err(PkiError::Ca {
            path: cert_path,
            reason: "holds one certificate: no rotation is in progress".to_owned(),
        });
    }
    load_ca(ca_dir)?;
    let cp_path = ca_dir.join("cp.crt");
    if cp_path.exists() {
        let subject = first_facts(new, &cert_path)?.subject;
        let cp_pem = read_text(&cp_path)?;
        if first_facts(&cp_pem, &cp_path)?.issuer != subject {
            return Err(PkiError::Ca {
                path: cp_path,
                reason: "is not issued by the new CA: renew it first (pki issue --cp --force)"
                    .to_owned(),
            });
        }
    }
    replace_file(&cert_path, new.as_bytes(), CERT_MODE)?;
    Ok(vec![cert_path])
}

/// The PEM blocks of the certificates in `path`, each with its final newline.
fn ca_bundle(path: &Path) -> Result<Vec<String>, PkiError> {
    const END: &str = "-----END CERTIFICATE-----";
    let text = read_text(path)?;
    let mut blocks = Vec::new();
    let mut rest = text.as_str();
    while let Some(begin) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[begin..].find(END) else {
            break;
        };
        let end = begin + end + END.len();
        blocks.push(format!("{}\n", &rest[begin..end]));
        rest = &rest[end..];
    }
    // The blocks must be exactly what a TLS stack reads from the file.
    let parsed = x509::parse_certificates(&text).map_err(|reason| PkiError::Ca {
        path: path.to_owned(),
        reason,
    })?;
    if parsed.len() != blocks.len() {
        return Err(PkiError::Ca {
            path: path.to_owned(),
            reason: "unexpected PEM layout".to_owned(),
        });
    }
    Ok(blocks)
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The facts of the first certificate of `pem` (read from `path`).
fn first_facts(pem: &str, path: &Path) -> Result<x509::CertFacts, PkiError> {
    let error = |reason: String| PkiError::Ca {
        path: path.to_owned(),
        reason,
    };
    let certs = x509::parse_certificates(pem).map_err(error)?;
    let first = certs
        .first()
        .ok_or_else(|| error("no certificate found".to_owned()))?;
    x509::cert_facts(first).map_err(error)
}

/// Checks a DP name: `[A-Za-z0-9._-]+`, at most 64 characters, not starting with `.`, and
/// not one of the names `init` uses for its own files (`ca`, `cp`, `shared`, any case).
pub fn check_dp_name(name: &str) -> Result<(), PkiError> {
    let invalid = |reason| PkiError::InvalidDpName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > MAX_DP_NAME_LEN {
        return Err(invalid("must be at most 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "only letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    if name.starts_with('.') {
        return Err(invalid("must not start with '.'"));
    }
    if RESERVED_STEMS
        .iter()
        .any(|stem| stem.eq_ignore_ascii_case(name))
    {
        return Err(invalid(
            "ca, cp and shared are reserved for the cluster's own files",
        ));
    }
    Ok(())
}

fn check_dp_names(dps: &[String]) -> Result<(), PkiError> {
    for (i, name) in dps.iter().enumerate() {
        check_dp_name(name)?;
        if dps[..i].contains(name) {
            return Err(PkiError::InvalidDpName {
                name: name.clone(),
                reason: "given more than once",
            });
        }
    }
    Ok(())
}

fn check_days(days: u32) -> Result<(), PkiError> {
    if days == 0 || days > MAX_VALIDITY_DAYS {
        return Err(PkiError::InvalidValidity { days });
    }
    Ok(())
}

/// The subject alternative names of the CP certificate, deduplicated, in order.
fn cp_sans(cp_names: &[String]) -> Result<Vec<SanType>, PkiError> {
    let names: Vec<String> = if cp_names.is_empty() {
        DEFAULT_CP_NAMES.iter().map(|n| (*n).to_owned()).collect()
    } else {
        cp_names.to_vec()
    };
    let mut sans = Vec::with_capacity(names.len());
    for name in names {
        let invalid = || PkiError::InvalidCpName { name: name.clone() };
        let san = if let Ok(ip) = name.parse::<IpAddr>() {
            SanType::IpAddress(ip)
        } else {
            // rustls checks the CP's name with the same rules on the DP side.
            ServerName::try_from(name.as_str()).map_err(|_| invalid())?;
            SanType::DnsName(name.clone().try_into().map_err(|_| invalid())?)
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// A subject with a single common name.
fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Parameters valid from an hour ago for `days` days (at most until `limit`), with a random
/// serial number.
fn params(
    common_name: &str,
    days: u32,
    limit: Option<OffsetDateTime>,
) -> Result<CertificateParams, PkiError> {
    let now = OffsetDateTime::now_utc();
    let mut not_after = now + time::Duration::days(i64::from(days));
    if let Some(limit) = limit {
        not_after = not_after.min(limit);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name);
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// A random positive 128-bit serial number.
pub(crate) fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    // Positive (top bit clear) and of constant length (a non-zero first byte).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn generate_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate().map_err(|source| PkiError::Generate {
        what: what.to_owned(),
        source,
    })
}

fn generate_error(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_owned(),
        source,
    }
}

/// A new self-signed cluster CA valid for `days` days.
fn new_ca(days: u32) -> Result<(Pair, Ca), PkiError> {
    let what = "the cluster CA";
    // A random suffix tells the CAs of different clusters apart: a certificate from another
    // cluster is then refused as `UnknownIssuer` rather than as a bad signature.
    let mut suffix = [0u8; 4];
    aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut suffix)
        .map_err(|_| PkiError::Random)?;
    let common_name = format!("{CA_COMMON_NAME} {}", hex::encode(suffix));
    let mut params = params(&common_name, days, None)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = generate_key(what)?;
    let cert = params.self_signed(&key).map_err(generate_error(what))?;
    let pair = Pair {
        stem: "ca".to_owned(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let not_after = params.not_after;
    let ca = Ca {
        issuer: Issuer::new(params, key),
        not_after,
    };
    Ok((pair, ca))
}

/// Reads `ca.crt` and `ca.key` from `dir` and checks they form a usable CA.
fn load_ca(dir: &Path) -> Result<Ca, PkiError> {
    load_ca_files(&dir.join("ca.crt"), &dir.join("ca.key"))
}

/// Reads a CA certificate and its key and checks they form a usable CA.
pub(crate) fn load_ca_files(cert_path: &Path, key_path: &Path) -> Result<Ca, PkiError> {
    let (cert_path, key_path) = (cert_path.to_owned(), key_path.to_owned());
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| PkiError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let ca_error = |path: &Path, reason: String| PkiError::Ca {
        path: path.to_owned(),
        reason,
    };

    // `check_key_pair` reports only fixed texts about the key.
    let facts = x509::check_key_pair(&cert_pem, &key_pem).map_err(|e| match e {
        x509::KeyPairError::Cert(reason) => ca_error(&cert_path, reason),
        x509::KeyPairError::Key(reason) => ca_error(&key_path, reason),
        x509::KeyPairError::Mismatch => ca_error(
            &key_path,
            format!("not the private key of {}", cert_path.display()),
        ),
    })?;
    if !facts.is_ca {
        return Err(ca_error(
            &cert_path,
            "not a CA certificate (CA:FALSE)".to_owned(),
        ));
    }
    let not_after = OffsetDateTime::from_unix_timestamp(facts.not_after)
        .map_err(|_| ca_error(&cert_path, "unusable expiry date".to_owned()))?;
    if not_after <= OffsetDateTime::now_utc() {
        return Err(ca_error(
            &cert_path,
            "the CA certificate has expired".to_owned(),
        ));
    }
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|_| ca_error(&key_path, "unsupported private key".to_owned()))?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
        .map_err(|e| ca_error(&cert_path, format!("cannot use as an issuer: {e}")))?;
    Ok(Ca { issuer, not_after })
}

/// The CP server certificate.
fn cp_pair(ca: &Ca, sans: &[SanType], days: u32) -> Result<Pair, PkiError> {
    let what = "the control plane certificate";
    let mut params = params(CP_COMMON_NAME, days, Some(ca.not_after))?;
    params.subject_alt_names = sans.to_vec();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    signed_leaf("cp", params, ca, what)
}

/// A short-lived CP server certificate and its new key (PEM), for `cp_names` (empty:
/// [`DEFAULT_CP_NAMES`]): valid from `backdate` ago for `lifetime`, never beyond the CA.
pub(crate) fn short_cp_pair(
    ca: &Ca,
    cp_names: &[String],
    backdate: time::Duration,
    lifetime: time::Duration,
) -> Result<(String, String), PkiError> {
    let sans = cp_sans(cp_names)?;
    let mut params = params(CP_COMMON_NAME, 1, Some(ca.not_after))?;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - backdate;
    params.not_after = (now + lifetime).min(ca.not_after);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let pair = signed_leaf("cp", params, ca, "the control plane certificate")?;
    Ok((pair.cert_pem, pair.key_pem))
}

/// A DP client certificate.
fn dp_pair(ca: &Ca, name: &str, days: u32) -> Result<Pair, PkiError> {
    let what = format!("the certificate of data plane {name}");
    let mut params = params(name, days, Some(ca.not_after))?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    signed_leaf(name, params, ca, &what)
}

/// Finishes and signs an end-entity certificate.
fn signed_leaf(
    stem: &str,
    mut params: CertificateParams,
    ca: &Ca,
    what: &str,
) -> Result<Pair, PkiError> {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let key = generate_key(what)?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(generate_error(what))?;
    Ok(Pair {
        stem: stem.to_owned(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The self-signed certificate every node uses in `shared` mode.
fn shared_pair(cp_sans: &[SanType], days: u32) -> Result<Pair, PkiError> {
    let what = "the shared cluster certificate";
    let mut params = params(SHARED_SERVER_NAME, days, None)?;
    params.subject_alt_names = cp_sans.to_vec();
    let shared_name = SanType::DnsName(
        SHARED_SERVER_NAME
            .to_owned()
            .try_into()
            .map_err(generate_error(what))?,
    );
    if !params.subject_alt_names.contains(&shared_name) {
        params.subject_alt_names.push(shared_name);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = generate_key(what)?;
    let cert = params.self_signed(&key).map_err(generate_error(what))?;
    Ok(Pair {
        stem: "shared".to_owned(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Creates `dir` (mode 0700) if it does not exist.
fn create_dir(dir: &Path) -> Result<(), PkiError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir).map_err(|source| PkiError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// Writes every pair as `STEM.crt` (0644) and `STEM.key` (0600) in `dir`.
///
/// Without `force`, nothing is written if any file exists, and the files written so far are
/// removed if a later one fails.
fn write_pairs(dir: &Path, pairs: &[Pair], force: bool) -> Result<Vec<PathBuf>, PkiError> {
    let files: Vec<(PathBuf, &str, u32)> = pairs
        .iter()
        .flat_map(|pair| {
            [
                (
                    dir.join(format!("{}.crt", pair.stem)),
                    pair.cert_pem.as_str(),
                    CERT_MODE,
                ),
                (
                    dir.join(format!("{}.key", pair.stem)),
                    pair.key_pem.as_str(),
                    KEY_MODE,
                ),
            ]
        })
        .collect();
    if !force && let Some((path, _, _)) = files.iter().find(|(path, _, _)| path.exists()) {
        return Err(PkiError::Exists { path: path.clone() });
    }
    let mut written = Vec::with_capacity(files.len());
    for (path, contents, mode) in &files {
        let result = if force {
            replace_file(path, contents.as_bytes(), *mode)
        } else {
            create_file(path, contents.as_bytes(), *mode)
        };
        if let Err(error) = result {
            if !force {
                for path in &written {
                    let _ = fs::remove_file(path);
                }
            }
            return Err(error);
        }
        written.push(path.clone());
    }
    Ok(written)
}

/// Opens a new file with `mode` from the start (never a chmod after the fact).
fn open_new(path: &Path, mode: u32) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}

/// Creates `path`, failing if it exists.
fn create_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let write_error = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = open_new(path, mode).map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => PkiError::Exists {
            path: path.to_owned(),
        },
        _ => write_error(source),
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(write_error)
}

/// Replaces `path` atomically: a new temporary file with `mode` beside it, renamed over it.
pub(crate) fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let write_error = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let temp = path.with_file_name(format!(".{file_name}.{}.{nanos}.tmp", std::process::id()));
    let result = open_new(&temp, mode)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temp, path));
    if let Err(source) = result {
        let _ = fs::remove_file(&temp);
        return Err(write_error(source));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
