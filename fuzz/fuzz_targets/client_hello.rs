//! The ClientHello peek of stream routes on a connection's first bytes, and on every prefix of
//! them: nothing panics; a server name, when one comes out, is a valid lower-case DNS name;
//! a prefix of a complete ClientHello is never a different answer.
#![no_main]

use gatehouse_dp::fuzzing::client_hello_sni;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::DnsName;

fuzz_target!(|data: &[u8]| {
    let whole = client_hello_sni(data);
    if let Ok(Some(Some(name))) = &whole {
        assert!(DnsName::try_from(name.as_str()).is_ok(), "{name:?}");
        assert_eq!(name, &name.to_ascii_lowercase());
    }
    if let Ok(Some(answer)) = &whole {
        // Where the shortest complete prefix ends, the answer is already this one; before
        // it, "not yet" or an error, never another name.
        for cut in (0..data.len()).rev().step_by(1 + data.len() / 64) {
            match client_hello_sni(&data[..cut]) {
                Ok(Some(earlier)) => assert_eq!(&earlier, answer),
                Ok(None) | Err(_) => {}
            }
        }
    }
});
