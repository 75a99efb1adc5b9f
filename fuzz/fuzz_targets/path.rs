//! Request path normalization: no panic, idempotent, the router's fast path agrees with the
//! full normalization, an absolute path stays absolute with no dot segment and no `//`, and
//! the upstream path computed from it is absolute.
#![no_main]

use gatehouse_dp::fuzzing::normalize_request_path;
use gatehouse_dp::router::{PathHandling, upstream_path};
use gatehouse_shared::checks::normalize_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let once = normalize_path(path);
    assert_eq!(normalize_path(&once), once, "not idempotent: {path:?}");
    assert_eq!(normalize_request_path(path), once, "fast path: {path:?}");
    if path.starts_with('/') {
        assert!(once.starts_with('/'), "{path:?} -> {once:?}");
        assert!(!once.contains("//"), "{path:?} -> {once:?}");
        assert!(
            once.split('/').all(|s| s != "." && s != ".."),
            "{path:?} -> {once:?}"
        );
        let prefix = once.get(..once.len() / 2);
        for handling in [PathHandling::V0, PathHandling::V1] {
            for strip in [false, true] {
                let up = upstream_path(Some("/svc"), prefix, &once, strip, handling);
                assert!(up.starts_with('/'), "{up:?}");
                let up = upstream_path(None, prefix, &once, strip, handling);
                assert!(up.starts_with('/'), "{up:?}");
            }
        }
    }
});
