//! Property tests of the PEM/X.509 helpers: arbitrary text, PEM around random or mutated DER,
//! and random keys never panic; certificates rcgen makes with random subjects, SANs, validity
//! and CA flag give back exactly those facts.
//!
//! Case counts are proptest's default (256 per property, key generation included: a few
//! seconds); `PROPTEST_CASES=10000` for a longer run.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use base64::Engine as _;
use gatehouse_shared::x509::{self, KeyType};
use proptest::prelude::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SanType,
};
use rustls_pki_types::CertificateDer;

/// A subjectAltName entry and the text [`x509::CertFacts::sans`] must show for it.
fn san() -> impl Strategy<Value = (SanType, String)> {
    let dns = "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]{1,8}){0,3}";
    prop_oneof![
        dns.prop_map(|s| (SanType::DnsName(s.clone().try_into().unwrap()), s)),
        "\\*\\.[a-z]{1,8}\\.[a-z]{2,4}"
            .prop_map(|s| (SanType::DnsName(s.clone().try_into().unwrap()), s)),
        "[a-z0-9.+_-]{1,10}@[a-z]{1,8}\\.[a-z]{2,4}"
            .prop_map(|s| (SanType::Rfc822Name(s.clone().try_into().unwrap()), s)),
        "(https|spiffe)://[a-z]{1,8}(/[a-z0-9]{0,6}){0,3}"
            .prop_map(|s| (SanType::URI(s.clone().try_into().unwrap()), s)),
        any::<IpAddr>().prop_map(|ip| (SanType::IpAddress(ip), ip.to_string())),
    ]
}

/// Text of a subject attribute: any Unicode without NUL, quotes and specials included.
fn attribute() -> impl Strategy<Value = String> {
    "[^\\x00]{1,24}"
}

/// Unix seconds between 1950 (UTCTime's first year) and 9999-12-31 (GeneralizedTime's last).
fn instant() -> impl Strategy<Value = i64> {
    -631_152_000i64..=253_402_300_799
}

#[derive(Debug, Clone, Copy)]
enum Algorithm {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::EcdsaP256),
        Just(Algorithm::EcdsaP384),
        Just(Algorithm::Ed25519)
    ]
}

fn key_pair(algorithm: Algorithm) -> KeyPair {
    let alg = match algorithm {
        Algorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Algorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        Algorithm::Ed25519 => &rcgen::PKCS_ED25519,
    };
    KeyPair::generate_for(alg).unwrap()
}

fn time(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A real certificate to mutate.
fn sample_cert() -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["a.example.com".to_owned()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().der().to_vec()
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>(), now in any::<i64>()) {
        let _ = x509::parse_certificates(&text);
        let _ = x509::parse_private_key(&text);
        let _ = x509::check_key_pair(&text, &text);
        let _ = x509::check_ca_certificate(&text, now);
        let _ = x509::cert_facts(&CertificateDer::from(text.as_bytes()));
    }

    /// PEM blocks around random bytes: an error with a reason, never a panic or a certificate.
    #[test]
    fn pem_around_random_bytes_is_an_error(
        der in prop::collection::vec(any::<u8>(), 0..600),
        label in prop_oneof![Just("CERTIFICATE"), Just("PRIVATE KEY"), Just("EC PRIVATE KEY"), Just("RSA PRIVATE KEY")],
    ) {
        let block = pem(&der).replace("CERTIFICATE", label);
        if label == "CERTIFICATE" {
            let e = x509::parse_certificates(&block).unwrap_err();
            prop_assert!(!e.is_empty());
        } else {
            prop_assert!(x509::parse_private_key(&block).is_err());
        }
        let _ = x509::check_key_pair(&block, &block);
        let _ = x509::check_ca_certificate(&block, 0);
    }

    /// A real certificate with bytes changed or cut: never a panic; if it still parses, its
    /// fingerprint is that of the bytes given.
    #[test]
    fn mutated_certificates_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        thread_local!(static SAMPLE: Vec<u8> = sample_cert());
        let mut der = SAMPLE.with(Clone::clone);
        for (at, byte) in &edits {
            let at = at.index(der.len());
            der[at] = *byte;
        }
        if let Some(cut) = cut {
            der.truncate(cut.index(der.len()));
        }
        if let Ok(facts) = x509::cert_facts(&CertificateDer::from(der.as_slice())) {
            prop_assert_eq!(facts.fingerprint_sha256, x509::sha256_hex(&der));
        }
        let text = pem(&der);
        // A certificate that parses has facts (a malformed subjectAltName once passed).
        if let Ok(certs) = x509::parse_certificates(&text) {
            for cert in &certs {
                prop_assert!(x509::cert_facts(cert).is_ok());
            }
        }
        let _ = x509::check_ca_certificate(&text, 0);
    }

    /// rcgen certificates give back their subject, SANs, validity, CA flag and key type.
    #[test]
    fn generated_certificates_give_back_their_facts(
        cn in attribute(),
        org in prop::option::of(attribute()),
        sans in prop::collection::vec(san(), 0..6),
        validity in (instant(), instant()),
        is_ca in any::<bool>(),
        algorithm in algorithm(),
    ) {
        let (not_before, not_after) = (validity.0.min(validity.1), validity.0.max(validity.1));
        let key = key_pair(algorithm);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(org) = &org {
            dn.push(DnType::OrganizationName, org.as_str());
        }
        dn.push(DnType::CommonName, cn.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = sans.iter().map(|(san, _)| san.clone()).collect();
        params.not_before = time(not_before);
        params.not_after = time(not_after);
        if is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let cert = params.self_signed(&key).unwrap();
        let facts = x509::cert_facts(cert.der()).unwrap();

        prop_assert_eq!(facts.common_name.as_deref(), Some(cn.as_str()));
        let texts: Vec<&str> = sans.iter().map(|(_, text)| text.as_str()).collect();
        prop_assert_eq!(&facts.sans, &texts);
        prop_assert_eq!(facts.not_before, not_before);
        prop_assert_eq!(facts.not_after, not_after);
        prop_assert_eq!(facts.is_ca, is_ca);
        let key_type = match algorithm {
            Algorithm::EcdsaP256 | Algorithm::EcdsaP384 => KeyType::Ecdsa,
            Algorithm::Ed25519 => KeyType::Ed25519,
        };
        prop_assert_eq!(facts.key_type, key_type);
        prop_assert_eq!(&facts.fingerprint_sha256, &x509::sha256_hex(cert.der()));
        // Read back with the RFC 4514 grammar (an unescaped `, ` separates attributes), the
        // text gives exactly the attributes the certificate was made with.
        let mut expected = Vec::new();
        if let Some(org) = &org {
            expected.push(("O".to_owned(), org.clone()));
        }
        expected.push(("CN".to_owned(), cn.clone()));
        prop_assert_eq!(read_rfc4514(&facts.subject), Some(expected), "{}", facts.subject);
        prop_assert_eq!(&facts.issuer, &facts.subject);

        // The same through PEM, and with the key: the pair matches.
        let pem = cert.pem();
        prop_assert_eq!(x509::parse_certificates(&pem).unwrap(), vec![cert.der().clone()]);
        let pair = x509::check_key_pair(&pem, &key.serialize_pem()).unwrap();
        prop_assert_eq!(pair, facts.clone());
        let ca = x509::check_ca_certificate(&pem, not_after);
        prop_assert_eq!(ca.is_ok(), is_ca, "{:?}", ca);
    }
}

/// A subject of up to three attributes, values over an alphabet of the characters that could
/// make two different names print alike.
fn tricky_dn() -> impl Strategy<Value = Vec<(u8, String)>> {
    prop::collection::btree_map(0u8..3, "[a,+=# \\\n\"]{0,4}", 1..4)
        .prop_map(|map| map.into_iter().collect())
}

/// The text a name printed as before escaping, first type name left out: a CN holding it
/// printed exactly like the name.
fn spelled_out(attributes: &[(u8, String)]) -> String {
    let mut out = String::new();
    for (i, (ty, value)) in attributes.iter().enumerate() {
        if i > 0 {
            out.push_str(&format!(", {}=", ["CN", "O", "OU"][usize::from(*ty)]));
        }
        out.push_str(value);
    }
    out
}

fn dn_of(attributes: &[(u8, String)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (ty, value) in attributes {
        let ty = match ty {
            0 => DnType::CommonName,
            1 => DnType::OrganizationName,
            _ => DnType::OrganizationalUnitName,
        };
        dn.push(ty, value.as_str());
    }
    dn
}

proptest! {
    /// Two subjects print alike only when they are the same name: the text is what
    /// mtls-auth compares to tell issuers apart.
    #[test]
    fn distinct_subjects_print_differently(
        (a, b) in prop_oneof![
            (tricky_dn(), tricky_dn()),
            // One name, and a CN whose value spells that name's attributes out.
            tricky_dn().prop_map(|b| (vec![(0, spelled_out(&b))], b)),
        ],
    ) {
        thread_local!(static KEY: KeyPair = KeyPair::generate().unwrap());
        let subject = |attributes: &[(u8, String)]| {
            let mut params = CertificateParams::default();
            params.distinguished_name = dn_of(attributes);
            let cert = KEY.with(|key| params.self_signed(key).unwrap());
            x509::cert_facts(cert.der()).unwrap().subject
        };
        let (text_a, text_b) = (subject(&a), subject(&b));
        prop_assert_eq!(a == b, text_a == text_b, "{:?} {:?}: {:?} {:?}", a, b, text_a, text_b);
    }
}

/// Reads RFC 4514 text as `type=value` attributes separated by `, `: a backslash escapes the
/// next character, or two hex digits give one byte of the UTF-8 value. `None` when the text does
/// not follow that grammar (a raw special character, a dangling backslash, bad UTF-8).
fn read_rfc4514(text: &str) -> Option<Vec<(String, String)>> {
    let mut attributes = Vec::new();
    let mut rest = text;
    loop {
        let (kind, after) = rest.split_once('=')?;
        let mut value = Vec::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    let (_, next) = chars.next()?;
                    if next.is_ascii_hexdigit() {
                        let (_, low) = chars.next()?;
                        let byte = u8::from_str_radix(&format!("{next}{low}"), 16).ok()?;
                        value.push(byte);
                    } else {
                        value.extend_from_slice(next.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                }
                ',' => {
                    end = Some(i);
                    break;
                }
                '+' | '"' | '<' | '>' | ';' => return None,
                c if c.is_control() => return None,
                c => value.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        attributes.push((kind.to_owned(), String::from_utf8(value).ok()?));
        match end {
            Some(i) => rest = after[i + 1..].strip_prefix(' ')?,
            None => return Some(attributes),
        }
    }
}
