//! Snapshot decoding, two ways: the input as a `gatehouse.v1.Snapshot` message (what arrives
//! from a control plane or a cache file), and as the uncompressed config bytes with their
//! right hash (to reach the protobuf decoding and the conversion). Nothing panics, and a
//! config comes out only when the bytes hash to the announced hash.
#![no_main]

use std::io::Read;

use flate2::read::GzDecoder;
use gatehouse_proto::v1 as pb;
use gatehouse_shared::snapshot;
use gatehouse_shared::x509::sha256_hex;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = pb::Snapshot::decode(data) {
        if snapshot::decode(&message).is_ok() {
            let raw = match message.encoding() {
                pb::Encoding::Identity => message.config.to_vec(),
                pb::Encoding::Gzip => {
                    let mut raw = Vec::new();
                    GzDecoder::new(&message.config[..])
                        .read_to_end(&mut raw)
                        .expect("decoded, so it decompresses");
                    raw
                }
            };
            assert_eq!(sha256_hex(&raw), message.hash);
            assert_eq!(raw.len() as u64, message.config_size);
        }
    }
    let message = pb::Snapshot {
        version: 1,
        hash: sha256_hex(data),
        encoding: pb::Encoding::Identity.into(),
        config: bytes::Bytes::copy_from_slice(data),
        config_size: data.len() as u64,
    };
    if let Ok(config) = snapshot::decode(&message) {
        // What decodes encodes again, and that decodes to the same config.
        let again = snapshot::encode(&config, 1);
        assert_eq!(
            snapshot::decode(&again.message).ok().as_ref(),
            Some(&config)
        );
    }
});
