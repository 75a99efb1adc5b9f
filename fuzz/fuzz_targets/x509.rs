//! PEM and X.509: the input as PEM text (certificates, keys, CA certificates) and as DER.
//! Nothing panics; facts come only from a certificate whose fingerprint is that of the input.
#![no_main]

use gatehouse_shared::x509;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    if let Ok(facts) = x509::cert_facts(&CertificateDer::from(data)) {
        assert_eq!(facts.fingerprint_sha256, x509::sha256_hex(data));
        // Escaped DN text never holds a raw control character (it goes into headers and logs).
        assert!(
            !facts.subject.chars().any(char::is_control),
            "{:?}",
            facts.subject
        );
        assert!(
            !facts.issuer.chars().any(char::is_control),
            "{:?}",
            facts.issuer
        );
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(certs) = x509::parse_certificates(&text) {
        assert!(!certs.is_empty());
        for der in &certs {
            assert!(x509::cert_facts(der).is_ok());
        }
    }
    let _ = x509::parse_private_key(&text);
    // A certificate and a key in one input, split at the first NUL when there is one.
    let (cert, key) = text.split_once('\0').unwrap_or((&text, &text));
    let _ = x509::check_key_pair(cert, key);
    let _ = x509::check_ca_certificate(&text, 1_700_000_000);
});
