//! What `init`, `issue` and `issue_cp` write.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::*;
use crate::cluster::test_support::{TempDir, new_pki};

/// The first certificate of the PEM file at `path`, as DER.
fn der_of(path: &Path) -> Vec<u8> {
    let pem = fs::read_to_string(path).unwrap();
    x509::parse_certificates(&pem).unwrap()[0].to_vec()
}

/// Calls `check` with the parsed certificate of the PEM file at `path`.
fn with_cert(path: &Path, check: impl FnOnce(&X509Certificate<'_>)) {
    let der = der_of(path);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    check(&cert);
}

fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// (serverAuth, clientAuth) of the certificate's EKU extension.
fn eku(cert: &X509Certificate<'_>) -> (bool, bool) {
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    (eku.server_auth, eku.client_auth)
}

fn sans(path: &Path) -> Vec<String> {
    x509::cert_facts(&der_of(path).into()).unwrap().sans
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn init_writes_a_ca_cp_shared_and_dp_certificates() {
    let dir = TempDir::new("pki-init");
    let written = init(
        dir.path(),
        &names(&["cp.internal", "10.0.0.5"]),
        &names(&["dp1", "edge_2.b"]),
        90,
        false,
    )
    .unwrap();
    let expected: Vec<PathBuf> = [
        "ca.crt",
        "ca.key",
        "cp.crt",
        "cp.key",
        "shared.crt",
        "shared.key",
        "dp1.crt",
        "dp1.key",
        "edge_2.b.crt",
        "edge_2.b.key",
    ]
    .iter()
    .map(|f| dir.join(f))
    .collect();
    assert_eq!(written, expected);

    let now = OffsetDateTime::now_utc().unix_timestamp();
    with_cert(&dir.join("ca.crt"), |ca| {
        assert!(
            common_name(ca).starts_with(CA_COMMON_NAME),
            "{}",
            ca.subject()
        );
        let bc = ca.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = ca.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        // The CA outlives the node certificates.
        let days = (ca.validity().not_after.timestamp() - now) / 86_400;
        assert!(days >= i64::from(CA_MIN_VALIDITY_DAYS) - 1, "{days}");
    });
    let ca_subject = der_of(&dir.join("ca.crt"));
    let (_, ca) = X509Certificate::from_der(&ca_subject).unwrap();

    with_cert(&dir.join("cp.crt"), |cp| {
        assert_eq!(common_name(cp), CP_COMMON_NAME);
        assert_eq!(eku(cp), (true, false));
        assert_eq!(cp.issuer(), ca.subject());
        assert!(!cp.basic_constraints().unwrap().unwrap().value.ca);
        let days = (cp.validity().not_after.timestamp() - now + 60) / 86_400;
        assert_eq!(days, 90);
        assert!(cp.validity().not_before.timestamp() < now);
    });
    assert_eq!(
        sans(&dir.join("cp.crt")),
        names(&["cp.internal", "10.0.0.5"])
    );

    for dp in ["dp1", "edge_2.b"] {
        with_cert(&dir.join(format!("{dp}.crt")), |cert| {
            assert_eq!(common_name(cert), dp);
            assert_eq!(eku(cert), (false, true));
            assert_eq!(cert.issuer(), ca.subject());
        });
    }

    with_cert(&dir.join("shared.crt"), |shared| {
        assert_eq!(common_name(shared), SHARED_SERVER_NAME);
        assert_eq!(eku(shared), (true, true));
        assert_eq!(shared.issuer(), shared.subject(), "self-signed");
    });
    assert_eq!(
        sans(&dir.join("shared.crt")),
        names(&["cp.internal", "10.0.0.5", SHARED_SERVER_NAME])
    );

    // Every key matches its certificate.
    for stem in ["ca", "cp", "shared", "dp1", "edge_2.b"] {
        let cert = fs::read_to_string(dir.join(format!("{stem}.crt"))).unwrap();
        let key = fs::read_to_string(dir.join(format!("{stem}.key"))).unwrap();
        x509::check_key_pair(&cert, &key).unwrap();
    }

    // Serial numbers differ.
    let serials: Vec<String> = ["ca", "cp", "shared", "dp1"]
        .iter()
        .map(|stem| {
            let der = der_of(&dir.join(format!("{stem}.crt")));
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            cert.raw_serial_as_string()
        })
        .collect();
    for (i, serial) in serials.iter().enumerate() {
        assert!(!serials[..i].contains(serial), "{serials:?}");
    }
}

#[test]
fn init_defaults_the_cp_names() {
    let dir = new_pki("pki-defaults", &[]);
    assert_eq!(sans(&dir.join("cp.crt")), names(&DEFAULT_CP_NAMES));
}

#[cfg(unix)]
#[test]
fn key_files_are_created_with_mode_0600() {
    let dir = new_pki("pki-modes", &["dp1"]);
    for stem in ["ca", "cp", "shared", "dp1"] {
        assert_eq!(mode(&dir.join(format!("{stem}.key"))), 0o600, "{stem}.key");
        assert_eq!(mode(&dir.join(format!("{stem}.crt"))) & 0o600, 0o600);
    }
    pki_issue_and_check_mode(&dir);
}

#[cfg(unix)]
fn pki_issue_and_check_mode(dir: &TempDir) {
    issue(dir.path(), "dp2", 10, false).unwrap();
    assert_eq!(mode(&dir.join("dp2.key")), 0o600);

    // A forced rewrite replaces a too-open key file with a 0600 one.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.join("dp2.key"), fs::Permissions::from_mode(0o644)).unwrap();
    issue(dir.path(), "dp2", 10, true).unwrap();
    assert_eq!(mode(&dir.join("dp2.key")), 0o600);
}

#[test]
fn existing_files_are_kept_unless_forced() {
    let dir = TempDir::new("pki-exists");
    fs::create_dir_all(dir.path()).unwrap();
    fs::write(dir.join("dp1.key"), "mine").unwrap();

    let error = init(dir.path(), &[], &names(&["dp1"]), 30, false).unwrap_err();
    assert!(matches!(error, PkiError::Exists { .. }), "{error}");
    assert!(
        error.to_string().contains("dp1.key already exists"),
        "{error}"
    );
    // Nothing was written.
    assert!(!dir.join("ca.crt").exists());
    assert_eq!(fs::read_to_string(dir.join("dp1.key")).unwrap(), "mine");

    let written = init(dir.path(), &[], &names(&["dp1"]), 30, true).unwrap();
    assert_eq!(written.len(), 8);
    assert_ne!(fs::read_to_string(dir.join("dp1.key")).unwrap(), "mine");
    // No temporary files are left behind.
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");

    // `issue` refuses to replace a DP certificate too.
    let before = fs::read_to_string(dir.join("dp1.crt")).unwrap();
    let error = issue(dir.path(), "dp1", 30, false).unwrap_err();
    assert!(matches!(error, PkiError::Exists { .. }), "{error}");
    assert_eq!(fs::read_to_string(dir.join("dp1.crt")).unwrap(), before);
    issue(dir.path(), "dp1", 30, true).unwrap();
    assert_ne!(fs::read_to_string(dir.join("dp1.crt")).unwrap(), before);
}

#[test]
fn names_and_validity_are_checked() {
    let dir = TempDir::new("pki-names");
    for bad in [
        "", "a b", "dp/1", "../x", ".hidden", "CA", "cp", "shared", "dp1\n", "é",
    ] {
        let error = init(dir.path(), &[], &names(&[bad]), 30, false).unwrap_err();
        assert!(
            matches!(error, PkiError::InvalidDpName { .. }),
            "{bad:?}: {error}"
        );
    }
    let long = "d".repeat(65);
    assert!(check_dp_name(&long).is_err());
    assert!(check_dp_name(&long[..64]).is_ok());
    let error = init(dir.path(), &[], &names(&["dp1", "dp1"]), 30, false).unwrap_err();
    assert!(error.to_string().contains("more than once"), "{error}");

    for bad in ["", "bad name", "under/score", "-x.example"] {
        let error = init(dir.path(), &names(&[bad]), &[], 30, false).unwrap_err();
        assert!(
            matches!(error, PkiError::InvalidCpName { .. }),
            "{bad:?}: {error}"
        );
    }
    for days in [0, MAX_VALIDITY_DAYS + 1] {
        let error = init(dir.path(), &[], &[], days, false).unwrap_err();
        assert!(matches!(error, PkiError::InvalidValidity { .. }), "{error}");
    }
    // Nothing was created by the refused calls.
    assert!(!dir.path().exists());
}

#[test]
fn issued_certificates_never_outlive_the_ca() {
    let dir = new_pki("pki-clamp", &[]);
    issue(dir.path(), "dp1", MAX_VALIDITY_DAYS, false).unwrap();
    let ca_end = x509::cert_facts(&der_of(&dir.join("ca.crt")).into())
        .unwrap()
        .not_after;
    let dp_end = x509::cert_facts(&der_of(&dir.join("dp1.crt")).into())
        .unwrap()
        .not_after;
    assert_eq!(dp_end, ca_end);
}

#[test]
fn issue_cp_renews_the_cp_certificate() {
    let dir = new_pki("pki-cp", &[]);
    let before = der_of(&dir.join("cp.crt"));
    assert!(matches!(
        issue_cp(dir.path(), &[], 30, false),
        Err(PkiError::Exists { .. })
    ));
    let written = issue_cp(dir.path(), &names(&["cp.example.com"]), 30, true).unwrap();
    assert_eq!(written, vec![dir.join("cp.crt"), dir.join("cp.key")]);
    assert_ne!(der_of(&dir.join("cp.crt")), before);
    assert_eq!(sans(&dir.join("cp.crt")), names(&["cp.example.com"]));
}

#[test]
fn a_bad_ca_is_reported_without_key_material() {
    let dir = new_pki("pki-bad-ca", &[]);
    let key_pem = fs::read_to_string(dir.join("ca.key")).unwrap();
    let secret = key_pem.lines().nth(1).unwrap().to_owned();

    // The CP key is not the CA's key.
    fs::copy(dir.join("cp.key"), dir.join("ca.key")).unwrap();
    let error = issue(dir.path(), "dp1", 30, false).unwrap_err().to_string();
    assert!(error.contains("ca.key: not the private key of"), "{error}");

    // A garbled key.
    fs::write(
        dir.join("ca.key"),
        format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let error = issue(dir.path(), "dp1", 30, false).unwrap_err().to_string();
    assert!(error.contains("ca.key: unable to parse key"), "{error}");
    assert!(!error.contains(&secret[..16]), "{error}");

    // A leaf certificate is not a CA.
    fs::copy(dir.join("cp.crt"), dir.join("ca.crt")).unwrap();
    fs::copy(dir.join("cp.key"), dir.join("ca.key")).unwrap();
    let error = issue(dir.path(), "dp1", 30, false).unwrap_err().to_string();
    assert!(error.contains("ca.crt: not a CA certificate"), "{error}");

    // No CA at all.
    let empty = TempDir::new("pki-no-ca");
    let error = issue(empty.path(), "dp1", 30, false).unwrap_err();
    assert!(matches!(error, PkiError::Read { .. }), "{error}");
    assert!(error.to_string().contains("ca.crt"), "{error}");
    assert!(!dir.join("dp1.crt").exists());
}

#[test]
fn rotate_ca_overlaps_then_finishes_with_the_new_ca_only() {
    let dir = new_pki("pki-rotate", &[]);
    let old_pem = fs::read_to_string(dir.join("ca.crt")).unwrap();
    let old_subject = first_facts(&old_pem, &dir.join("ca.crt")).unwrap().subject;
    // Nothing to finish before a rotation.
    let error = finish_ca_rotation(dir.path()).unwrap_err().to_string();
    assert!(error.contains("no rotation is in progress"), "{error}");

    let written = rotate_ca(dir.path()).unwrap();
    assert_eq!(written, vec![dir.join("ca.key"), dir.join("ca.crt")]);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    let bundle = fs::read_to_string(dir.join("ca.crt")).unwrap();
    let certs = x509::parse_certificates(&bundle).unwrap();
    assert_eq!(certs.len(), 2);
    let new_subject = x509::cert_facts(&certs[0]).unwrap().subject;
    assert_ne!(new_subject, old_subject);
    assert_eq!(x509::cert_facts(&certs[1]).unwrap().subject, old_subject);
    // The new key signs: issued certificates name the new CA.
    issue(dir.path(), "dp1", 30, false).unwrap();
    let dp = fs::read_to_string(dir.join("dp1.crt")).unwrap();
    assert_eq!(
        first_facts(&dp, &dir.join("dp1.crt")).unwrap().issuer,
        new_subject
    );
    // A second rotation waits for the first to finish.
    let error = rotate_ca(dir.path()).unwrap_err().to_string();
    assert!(error.contains("a rotation is in progress"), "{error}");

    // cp.crt is still the old CA's: finishing would cut the data planes off.
    let error = finish_ca_rotation(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("cp.crt: is not issued by the new CA"),
        "{error}"
    );
    assert_eq!(fs::read_to_string(dir.join("ca.crt")).unwrap(), bundle);

    issue_cp(dir.path(), &[], 30, true).unwrap();
    assert_eq!(
        finish_ca_rotation(dir.path()).unwrap(),
        vec![dir.join("ca.crt")]
    );
    let left = fs::read_to_string(dir.join("ca.crt")).unwrap();
    let certs = x509::parse_certificates(&left).unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(x509::cert_facts(&certs[0]).unwrap().subject, new_subject);
    load_ca(dir.path()).unwrap();
}
