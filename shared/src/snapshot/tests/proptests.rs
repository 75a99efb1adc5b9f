//! Property tests of snapshot decoding: arbitrary and mutated snapshots never panic and never
//! decode to anything but the content their hash names; configs generated from the full
//! config (random values in random fields, random entities left out) round-trip through
//! encode → decode.
//!
//! Case counts are proptest's default (256 per property); `PROPTEST_CASES=20000` for more.

use proptest::prelude::*;

use super::*;

/// Raw material for one field change: which leaf, and candidate values of every type.
#[derive(Debug, Clone)]
struct Change {
    at: prop::sample::Index,
    text: String,
    int: u16,
    float: f64,
    flag: bool,
    id: u128,
}

fn change() -> impl Strategy<Value = Change> {
    (
        any::<prop::sample::Index>(),
        any::<String>(),
        any::<u16>(),
        -1.0e6f64..1.0e6,
        any::<bool>(),
        any::<u128>(),
    )
        .prop_map(|(at, text, int, float, flag, id)| Change {
            at,
            text,
            int,
            float,
            flag,
            id,
        })
}

/// A config: the full config with some fields changed to random values of their type and some
/// entities left out. `None` when a change gives a value the model does not accept (a number
/// out of a field's range, say).
fn generated(changes: &[Change], drops: &[prop::sample::Index]) -> Option<Config> {
    let mut json = serde_json::to_value(sorted(full_config())).unwrap();
    let mut paths = Vec::new();
    leaves(&json, String::new(), &mut paths);
    // List lengths are changed by `drops`; a plugin's name picks its config's shape.
    let plugin_name = |p: &str| p.starts_with("/plugins/") && p.ends_with("/name");
    paths.retain(|p| !p.ends_with("/+") && !plugin_name(p));
    for change in changes {
        let path = &paths[change.at.index(paths.len())];
        let leaf = json.pointer_mut(path).unwrap();
        *leaf = match leaf.take() {
            Value::Bool(_) => Value::Bool(change.flag),
            Value::Number(n) if n.is_f64() => json!(change.float),
            Value::Number(_) => json!(change.int),
            Value::String(s) if Uuid::parse_str(&s).is_ok() => {
                json!(Uuid::from_u128(change.id).to_string())
            }
            Value::String(_) => json!(change.text),
            other => other,
        };
    }
    let mut config: Config = serde_json::from_value(json).ok()?;
    for drop in drops {
        let i = drop.index(1000);
        match drop.index(11) {
            0 => remove(&mut config.services, i),
            1 => remove(&mut config.routes, i),
            2 => remove(&mut config.certificates, i),
            3 => remove(&mut config.snis, i),
            4 => remove(&mut config.ca_certificates, i),
            5 => remove(&mut config.upstreams, i),
            6 => remove(&mut config.targets, i),
            7 => remove(&mut config.consumers, i),
            8 => remove(&mut config.acls, i),
            9 => remove(&mut config.mtls_auth_credentials, i),
            _ => remove(&mut config.plugins, i),
        }
    }
    config.sort();
    Some(config)
}

fn remove<T>(list: &mut Vec<T>, i: usize) {
    if !list.is_empty() {
        list.remove(i % list.len());
    }
}

fn gunzip(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .take(MAX_CONFIG_SIZE)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// Whatever `snapshot` holds, decoding it does not panic, and a config comes out only when the
/// bytes hash to the announced hash, and then it is the config those bytes encode.
fn check_decode(snapshot: &pb::Snapshot) -> Result<Option<Config>, TestCaseError> {
    let Ok(config) = decode(snapshot) else {
        return Ok(None);
    };
    let raw = match snapshot.encoding() {
        pb::Encoding::Gzip => gunzip(&snapshot.config),
        pb::Encoding::Identity => Some(snapshot.config.to_vec()),
    };
    let raw = raw.ok_or_else(|| TestCaseError::fail("decoded bytes that do not decompress"))?;
    prop_assert_eq!(hash(&raw), snapshot.hash.clone());
    prop_assert_eq!(raw.len() as u64, snapshot.config_size);
    let wire = pb::Config::decode(raw.as_slice()).unwrap();
    prop_assert_eq!(&Config::try_from(wire).unwrap(), &config);
    Ok(Some(config))
}

proptest! {
    /// A snapshot of random fields: refused, without a panic.
    #[test]
    fn random_snapshots_are_refused(
        config in prop::collection::vec(any::<u8>(), 0..2048),
        hash_text in "[0-9a-f]{64}|.{0,70}",
        encoding in prop_oneof![Just(0i32), Just(1), any::<i32>()],
        config_size in prop_oneof![Just(0u64), 0u64..4096, any::<u64>()],
    ) {
        let snapshot = pb::Snapshot {
            version: 1,
            hash: hash_text,
            encoding,
            config: config.into(),
            config_size,
        };
        prop_assert!(check_decode(&snapshot)?.is_none());
    }

    /// Random bytes that do hash right (a control plane gone wrong, or a cache file written by
    /// one): the protobuf decoding and the conversion never panic.
    #[test]
    fn random_config_bytes_with_their_hash_never_panic(
        raw in prop::collection::vec(any::<u8>(), 0..4096),
        gzip_them in any::<bool>(),
    ) {
        let (encoding, bytes) = if gzip_them {
            (pb::Encoding::Gzip, gzip(&raw).unwrap())
        } else {
            (pb::Encoding::Identity, raw.clone())
        };
        let snapshot = pb::Snapshot {
            version: 1,
            hash: hash(&raw),
            encoding: encoding.into(),
            config: bytes.into(),
            config_size: raw.len() as u64,
        };
        check_decode(&snapshot)?;
    }

    /// A valid snapshot with bytes changed, cut or extended, its size or encoding changed:
    /// refused, or (a change gzip ignores, such as a header field) the very same config.
    #[test]
    fn mutated_snapshots_decode_to_the_original_or_not_at_all(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
        extra in prop::collection::vec(any::<u8>(), 0..3),
        size_delta in prop_oneof![Just(0i64), -3i64..3],
        flip_encoding in any::<bool>(),
    ) {
        thread_local!(static ORIGINAL: (Config, pb::Snapshot) = {
            let config = sorted(full_config());
            let message = encode(&config, 1).message;
            (config, message)
        });
        let (original, mut snapshot) = ORIGINAL.with(Clone::clone);
        let mut bytes = snapshot.config.to_vec();
        for (at, byte) in &edits {
            let at = at.index(bytes.len());
            bytes[at] ^= byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        bytes.extend_from_slice(&extra);
        snapshot.config = bytes.into();
        snapshot.config_size = snapshot.config_size.saturating_add_signed(size_delta);
        if flip_encoding {
            snapshot.encoding = if snapshot.encoding() == pb::Encoding::Gzip {
                pb::Encoding::Identity.into()
            } else {
                pb::Encoding::Gzip.into()
            };
        }
        if let Some(config) = check_decode(&snapshot)? {
            prop_assert_eq!(config, original);
        }
    }

    /// The uncompressed bytes of a valid snapshot changed, the hash computed again: whatever
    /// the protobuf decoder makes of them, no panic.
    #[test]
    fn mutated_config_bytes_with_their_hash_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        thread_local!(static RAW: Vec<u8> = pb::Config::from(&sorted(full_config())).encode_to_vec());
        let mut raw = RAW.with(Clone::clone);
        for (at, byte) in &edits {
            let at = at.index(raw.len());
            raw[at] = *byte;
        }
        if let Some(cut) = cut {
            raw.truncate(cut.index(raw.len()));
        }
        let snapshot = pb::Snapshot {
            version: 1,
            hash: hash(&raw),
            encoding: pb::Encoding::Identity.into(),
            config_size: raw.len() as u64,
            config: raw.into(),
        };
        check_decode(&snapshot)?;
    }

    /// Generated configs round-trip: decode(encode(c)) is c in canonical order, and the hash
    /// does not depend on the order of the lists.
    #[test]
    fn generated_configs_round_trip(
        changes in prop::collection::vec(change(), 0..12),
        drops in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        version in any::<u64>(),
    ) {
        let Some(config) = generated(&changes, &drops) else {
            return Err(TestCaseError::reject("a value out of its field's range"));
        };
        let snapshot = encode(&config, version);
        prop_assert_eq!(snapshot.message.version, version);
        let decoded = check_decode(&snapshot.message)?;
        prop_assert_eq!(decoded.as_ref(), Some(&config));
        prop_assert_eq!(encode(&shuffled(config), version).hash, snapshot.hash);
    }
}
