//! Property tests of the ClientHello peek of stream routes ([`parse_hello`]): arbitrary bytes
//! never panic, a real rustls ClientHello gives back its server name (lower-cased), also when
//! the handshake is split over many TLS records, and a truncated ClientHello is "not yet",
//! never a name.
//!
//! Case counts are proptest's default (256 per property); `PROPTEST_CASES=100000` for more.

use proptest::prelude::*;

use super::*;

/// A DNS name rustls accepts as a server name: 1 to 4 labels of letters, digits and inner
/// hyphens, the last one not all digits (that would read as an IP address).
fn dns_name() -> impl Strategy<Value = String> {
    let label = "[a-zA-Z0-9]([a-zA-Z0-9-]{0,14}[a-zA-Z0-9])?";
    (
        prop::collection::vec(label, 0..4),
        "[a-zA-Z]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?",
    )
        .prop_map(|(mut labels, last)| {
            labels.push(last);
            labels.join(".")
        })
}

/// Splits the TLS records of `flight` and writes their handshake bytes again as records of at
/// most the given sizes (cycled), as a client is free to do.
fn refragment(flight: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut rest = flight;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        payload.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    let mut out = Vec::new();
    let mut sizes = sizes.iter().cycle();
    let mut rest = payload.as_slice();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap()).clamp(1, rest.len());
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&u16::try_from(size).unwrap().to_be_bytes());
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
    }
    out
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_hello(&bytes);
    }

    /// Noise behind a handshake record header: an error or "not yet", never a name.
    #[test]
    fn noise_in_a_handshake_record_is_no_name(
        version in prop_oneof![Just([3u8, 1]), Just([3, 3]), any::<[u8; 2]>()],
        body in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut bytes = vec![0x16, version[0], version[1]];
        bytes.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(&body);
        let result = parse_hello(&bytes);
        prop_assert!(!matches!(result, Ok(Some(Hello::Tls { sni: Some(_), .. }))), "{:?}", result);
    }

    #[test]
    fn a_real_client_hello_gives_its_server_name(name in dns_name()) {
        let hello = client_hello(&name);
        let expected = Hello::Tls { sni: Some(name.to_ascii_lowercase()), acme: false };
        prop_assert_eq!(parse_hello(&hello).unwrap(), Some(expected.clone()));
        // Bytes the client sends after its ClientHello do not change the answer.
        let mut more = hello.clone();
        more.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
        prop_assert_eq!(parse_hello(&more).unwrap(), Some(expected));
    }

    /// Every proper prefix of a ClientHello is "not yet": the peek waits for more bytes, and
    /// never answers with a name (right or wrong) before the whole ClientHello is there.
    #[test]
    fn truncated_client_hellos_are_not_yet(name in dns_name(), cut in any::<prop::sample::Index>()) {
        let hello = client_hello(&name);
        let at = cut.index(hello.len());
        prop_assert_eq!(parse_hello(&hello[..at]).unwrap(), None, "cut at {} of {}", at, hello.len());
    }

    #[test]
    fn a_client_hello_over_many_records_gives_its_server_name(
        name in dns_name(),
        sizes in prop::collection::vec(1usize..300, 1..8),
    ) {
        let hello = refragment(&client_hello(&name), &sizes);
        let expected = Hello::Tls { sni: Some(name.to_ascii_lowercase()), acme: false };
        prop_assert_eq!(parse_hello(&hello).unwrap(), Some(expected));
    }

    /// A ClientHello with one byte changed: no panic, and a name, if any, is a valid DNS name.
    #[test]
    fn mutated_client_hellos_never_panic(
        name in dns_name(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut hello = client_hello(&name);
        let at = at.index(hello.len());
        hello[at] = byte;
        if let Ok(Some(Hello::Tls { sni: Some(sni), .. })) = parse_hello(&hello) {
            prop_assert!(rustls::pki_types::DnsName::try_from(sni.as_str()).is_ok(), "{:?}", sni);
            prop_assert_eq!(&sni, &sni.to_ascii_lowercase());
        }
    }
}
