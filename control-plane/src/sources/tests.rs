#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;
use std::path::Path;

use rcgen::{CertificateParams, KeyPair};

use super::scan::{self, Layout, NotLoaded};
use super::{content_digest, pair_id};

/// A self-signed certificate for `sans` and its key, as PEM.
fn pair(sans: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A fresh empty directory under the system's temporary directory.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gh-sources-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn discovers_certbot_kubernetes_and_plain_layouts() {
    let root = temp_dir("layouts");
    let (cert, key) = pair(&["a.example"]);
    // certbot: live/<name>/ symlinks into archive/<name>/.
    write(&root.join("archive/site/fullchain1.pem"), &cert);
    write(&root.join("archive/site/privkey1.pem"), &key);
    std::fs::create_dir_all(root.join("live/site")).unwrap();
    symlink(
        "../../archive/site/fullchain1.pem",
        root.join("live/site/fullchain.pem"),
    )
    .unwrap();
    symlink(
        "../../archive/site/privkey1.pem",
        root.join("live/site/privkey.pem"),
    )
    .unwrap();
    // Kubernetes: tls.crt -> ..data/tls.crt, ..data -> ..2026_12_08_00_00_00.1/.
    let k8s = root.join("k8s");
    write(&k8s.join("..2026_12_08_00_00_00.1/tls.crt"), &cert);
    write(&k8s.join("..2026_12_08_00_00_00.1/tls.key"), &key);
    symlink("..2026_12_08_00_00_00.1", k8s.join("..data")).unwrap();
    symlink("..data/tls.crt", k8s.join("tls.crt")).unwrap();
    symlink("..data/tls.key", k8s.join("tls.key")).unwrap();
    // Plain pairs, one with a sidecar; a lone certificate and a lone key are no pairs.
    write(&root.join("web.crt"), &cert);
    write(&root.join("web.key"), &key);
    write(
        &root.join("web.snis"),
        "www.example, api.example # two names\n",
    );
    write(&root.join("sub/api.pem"), &cert);
    write(&root.join("sub/api.key"), &key);
    write(&root.join("lonely.crt"), &cert);
    write(&root.join("orphan.key"), &key);

    let pairs = scan::discover(&root).unwrap();
    let found: Vec<(&str, Layout)> = pairs.iter().map(|p| (p.name.as_str(), p.layout)).collect();
    assert_eq!(
        found,
        [
            ("k8s", Layout::Kubernetes),
            ("live/site", Layout::Certbot),
            ("sub/api", Layout::Plain),
            ("web", Layout::Plain),
        ]
    );
    let web = pairs.iter().find(|p| p.name == "web").unwrap();
    assert_eq!(web.snis.as_deref(), Some(root.join("web.snis").as_path()));
    assert_eq!(web.load().unwrap().snis, ["api.example", "www.example"]);
    // Read through the symlinks.
    for p in &pairs {
        assert_eq!(p.load().unwrap().cert, cert, "{}", p.name);
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn snis_come_from_dns_sans_with_wildcards() {
    let root = temp_dir("sans");
    let (cert, key) = pair(&["*.Example.com", "example.com", "192.0.2.1"]);
    write(&root.join("x.crt"), &cert);
    write(&root.join("x.key"), &key);
    let pairs = scan::discover(&root).unwrap();
    let loaded = pairs[0].load().unwrap();
    assert_eq!(loaded.snis, ["*.example.com", "example.com"]);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn inconsistent_pairs_are_not_loaded_and_the_reason_has_no_key() {
    let root = temp_dir("bad");
    let (cert, _) = pair(&["a.example"]);
    let (_, other_key) = pair(&["a.example"]);
    write(&root.join("mismatch.crt"), &cert);
    write(&root.join("mismatch.key"), &other_key);
    // Truncated in the middle of the certificate block.
    write(&root.join("cut.crt"), &cert[..cert.len() / 2]);
    write(&root.join("cut.key"), &other_key);
    // Truncated key.
    write(&root.join("cutkey.crt"), &cert);
    write(&root.join("cutkey.key"), &other_key[..other_key.len() / 2]);
    for p in scan::discover(&root).unwrap() {
        let err = p.load().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, NotLoaded::Invalid(_)), "{}: {text}", p.name);
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(!text.contains(&other_key[40..80]), "{text}");
        if p.name == "mismatch" {
            assert!(text.contains("does not match"), "{text}");
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn sidecar_parsing() {
    assert_eq!(
        scan::parse_snis("# comment\nA.example\n\n b.example,c.example\td.example # x\n"),
        ["a.example", "b.example", "c.example", "d.example"]
    );
    assert!(scan::parse_snis("# nothing\n").is_empty());
}

#[test]
fn pair_ids_are_stable_and_distinct() {
    let a = pair_id("/etc/letsencrypt", "live/a");
    assert_eq!(a, pair_id("/etc/letsencrypt", "live/a"));
    assert_ne!(a, pair_id("/etc/letsencrypt", "live/b"));
    assert_ne!(a, pair_id("/etc/letsencryp", "tlive/a"));
    assert_eq!(a.get_version_num(), 8);
}

#[test]
fn digest_changes_with_any_part() {
    let loaded = scan::Loaded {
        cert: "c".into(),
        key: "k".into(),
        snis: vec!["a".into()],
        not_after: 0,
    };
    let tags = vec!["source:file".to_owned()];
    let base = content_digest(&loaded, &tags);
    let mut other = loaded.clone();
    other.key = "k2".into();
    assert_ne!(base, content_digest(&other, &tags));
    let mut other = loaded.clone();
    other.snis = vec!["b".into()];
    assert_ne!(base, content_digest(&other, &tags));
    assert_eq!(base, content_digest(&loaded, &tags));
}
