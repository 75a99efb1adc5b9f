#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::*;

/// How long the tests wait for named to start or answer.
const PATIENCE: Duration = Duration::from_secs(30);
const ZONE: &str = "example.test";

// --- settings and wire format ---

#[test]
fn bind_key_files_are_read_and_bad_ones_refused_without_the_secret() {
    let file = r#"
        # written by tsig-keygen
        key "acme-key" {
            algorithm hmac-sha256; // the default
            /* the secret */ secret "c2VjcmV0LWJ5dGVz";
        };
    "#;
    let key = TsigKey::parse_bind(file).unwrap();
    assert_eq!(key.name, "acme-key");
    assert_eq!(key.algorithm, TsigAlgorithm::HmacSha256);
    assert_eq!(key.secret, b"secret-bytes");
    assert!(!format!("{key:?}").contains("c2VjcmV0"), "{key:?}");
    assert!(!format!("{key:?}").contains("secret-bytes"), "{key:?}");

    let bare = TsigKey::parse_bind("key k { algorithm HMAC-SHA512; secret \"AAAA\"; };").unwrap();
    assert_eq!(
        (bare.name.as_str(), bare.algorithm),
        ("k", TsigAlgorithm::HmacSha512)
    );

    for (text, expected) in [
        (
            "",
            "expected `key \"name\" { algorithm ...; secret \"...\"; };`",
        ),
        (
            "key \"k\" { algorithm hmac-md5; secret \"AAAA\"; };",
            "unsupported algorithm 'hmac-md5'",
        ),
        (
            "key \"k\" { algorithm hmac-sha256; secret \"not base64!\"; };",
            "the secret is not base64",
        ),
        (
            "key \"k\" { algorithm hmac-sha256; };",
            "key \"k\": no secret",
        ),
        ("key \"k\" { secret \"AAAA\"; };", "key \"k\": no algorithm"),
        (
            "key \"k\" { algorithm hmac-sha256 secret \"AAAA\"; };",
            "expected ';'",
        ),
        (
            "key \"k\" { algorithm hmac-sha256; secret \"AAAA",
            "unterminated quoted string",
        ),
    ] {
        let error = TsigKey::parse_bind(text).unwrap_err();
        assert!(error.contains(expected), "{text}: {error}");
        assert!(!error.contains("AAAA"), "{error}");
    }
}

#[test]
fn settings_name_the_flag_at_fault() {
    assert_eq!(
        parse_server("127.0.0.1").unwrap(),
        "127.0.0.1:53".parse().unwrap()
    );
    assert_eq!(
        parse_server("[::1]:5353").unwrap(),
        "[::1]:5353".parse().unwrap()
    );
    assert_eq!(parse_server("::1").unwrap(), "[::1]:53".parse().unwrap());
    assert!(parse_server("ns1.example.com").is_err());

    let dir = TempDir::new();
    let nope = dir.path().join("nope");
    let flags = |server, zone, file| AcmeDnsSettings::from_flags(server, zone, file);
    assert_eq!(flags(None, None, None), Ok(None));
    let partial = flags(Some("127.0.0.1"), None, None)
        .unwrap_err()
        .to_string();
    assert!(partial.contains("set all three or none"), "{partial}");
    let bad_server = flags(Some("ns1"), Some(ZONE), Some(&nope))
        .unwrap_err()
        .to_string();
    assert!(
        bad_server.starts_with("--acme-dns-server: "),
        "{bad_server}"
    );
    let bad_zone = flags(Some("::1"), Some("a..b"), Some(&nope))
        .unwrap_err()
        .to_string();
    assert!(bad_zone.starts_with("--acme-dns-zone: "), "{bad_zone}");
    let parsed = flags(Some("127.0.0.1:5353"), Some("Example.test."), Some(&nope))
        .unwrap()
        .unwrap();
    assert_eq!(parsed.zone, "Example.test");
    let missing = parsed.updater().unwrap_err().to_string();
    assert!(
        missing.starts_with("--acme-dns-tsig-key-file "),
        "{missing}"
    );

    let settings = settings("127.0.0.1:53".parse().unwrap(), "k", b"secret-bytes");
    let shown = format!("{settings:?}");
    assert!(
        !shown.contains("secret-bytes") && shown.contains("<hidden>"),
        "{shown}"
    );
    let bad_zone = DnsUpdater::new(DnsUpdateSettings {
        zone: "bad zone".to_owned(),
        ..settings
    })
    .unwrap_err();
    assert!(
        bad_zone.to_string().starts_with("--acme-dns-zone: "),
        "{bad_zone}"
    );
}

#[test]
fn names_are_checked_against_the_zone() {
    let zone = encode_name("Example.test.").unwrap();
    assert_eq!(zone, b"\x07example\x04test\x00");
    for (name, inside) in [
        ("example.test", true),
        ("_acme-challenge.example.test", true),
        ("_acme-challenge.WWW.example.test.", true),
        ("badexample.test", false),
        ("example.test.evil", false),
        ("test", false),
    ] {
        assert_eq!(
            in_zone(&encode_name(name).unwrap(), &zone),
            inside,
            "{name}"
        );
    }
    assert!(encode_name("a..b").is_err());
    assert!(encode_name("a b.test").is_err());
    assert!(encode_name(&format!("{}.test", "a".repeat(64))).is_err());
    assert_eq!(txt_rdata("abc").unwrap(), b"\x03abc");
    let long = txt_rdata(&"x".repeat(300)).unwrap();
    assert_eq!((long[0], long[256]), (255, 45));
    assert!(txt_rdata("").is_err());
}

#[test]
fn signed_answers_are_verified_and_others_refused() {
    let updater =
        DnsUpdater::new(settings("127.0.0.1:53".parse().unwrap(), "k", b"s3cret")).unwrap();
    let name = encode_name("_acme-challenge.example.test").unwrap();
    let mut request = updater.update_message(7, &name, b"\x01v", Change::Delete);
    let request_mac = updater.sign(&mut request, 1_700_000_000);

    // The server's answer: the request's header as a response, signed over the request MAC.
    let answer = |rcode: u16, secret: &[u8]| {
        let signer =
            DnsUpdater::new(settings("127.0.0.1:53".parse().unwrap(), "k", secret)).unwrap();
        let mut message = Vec::new();
        message.extend_from_slice(&7u16.to_be_bytes());
        message.extend_from_slice(&(FLAG_RESPONSE | OPCODE_UPDATE | rcode).to_be_bytes());
        message.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        let mut prefix = u16::try_from(request_mac.len())
            .unwrap()
            .to_be_bytes()
            .to_vec();
        prefix.extend_from_slice(&request_mac);
        signer.sign_after(&prefix, &mut message, unix_now());
        message
    };
    assert_eq!(
        updater.check(7, &request_mac, &answer(0, b"s3cret")),
        Ok(())
    );
    assert_eq!(
        updater.check(7, &request_mac, &answer(0, b"other")),
        Err(DnsUpdateErrorKind::Untrusted(
            "its TSIG MAC is wrong".to_owned()
        ))
    );
    assert!(matches!(
        updater.check(8, &request_mac, &answer(0, b"s3cret")),
        Err(DnsUpdateErrorKind::Untrusted(_))
    ));
    let mut unsigned = answer(0, b"s3cret");
    unsigned.truncate(12);
    unsigned[10..12].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(
        updater.check(7, &request_mac, &unsigned),
        Err(DnsUpdateErrorKind::Untrusted(
            "it is not signed (no TSIG)".to_owned()
        ))
    );
    assert_eq!(
        updater.check(7, &request_mac, &answer(5, b"s3cret")),
        Err(DnsUpdateErrorKind::Refused("k".to_owned()))
    );
    assert!(matches!(
        updater.check(7, &request_mac, &[0, 7]),
        Err(DnsUpdateErrorKind::Untrusted(_))
    ));
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let updater = DnsUpdater::new(settings(addr, "k", b"s3cret"))
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let error = updater
        .add_txt("_acme-challenge.example.test", "v", 60)
        .await
        .unwrap_err();
    assert_eq!(
        error.kind,
        DnsUpdateErrorKind::Timeout(Duration::from_millis(300))
    );
    assert_eq!(
        error.to_string(),
        format!("DNS update of _acme-challenge.example.test TXT at {addr}: no answer within 300ms")
    );
    holder.abort();
}

// --- against a real BIND ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txt_records_are_added_and_removed_in_a_real_bind9() {
    let Some(bind) = Bind::start() else {
        return;
    };
    let fqdn = "_acme-challenge.www.example.test";
    let updater = DnsUpdater::new(settings(bind.addr, "acme-key", &bind.acme_secret)).unwrap();

    updater.add_txt(fqdn, "first-value", 60).await.unwrap();
    assert_eq!(bind.txt(fqdn), ["first-value"]);
    updater.add_txt(fqdn, "second-value", 60).await.unwrap();
    updater.add_txt(fqdn, "second-value", 60).await.unwrap();
    assert_eq!(bind.txt(fqdn), ["first-value", "second-value"]);
    updater.remove_txt(fqdn, "first-value").await.unwrap();
    assert_eq!(bind.txt(fqdn), ["second-value"]);
    // Removing what is not there succeeds and changes nothing (retries are safe).
    updater.remove_txt(fqdn, "first-value").await.unwrap();
    assert_eq!(bind.txt(fqdn), ["second-value"]);

    // A wrong secret: a clear error, nothing changed, the secret in no message.
    let wrong = b"wrong-secret-wrong-secret-wrong!".to_vec();
    let wrong_updater = DnsUpdater::new(settings(bind.addr, "acme-key", &wrong)).unwrap();
    let error = wrong_updater.add_txt(fqdn, "forged", 60).await.unwrap_err();
    assert_eq!(
        error.kind,
        DnsUpdateErrorKind::KeyRejected {
            key: "acme-key".to_owned(),
            tsig_error: "BADSIG",
            hint: "the secret or algorithm differs from the server's",
        }
    );
    let text = error.to_string();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&wrong);
    assert!(
        !text.contains(&encoded) && !text.contains("wrong-secret"),
        "{text}"
    );
    let error = wrong_updater
        .remove_txt(fqdn, "second-value")
        .await
        .unwrap_err();
    assert!(matches!(error.kind, DnsUpdateErrorKind::KeyRejected { .. }));
    assert_eq!(bind.txt(fqdn), ["second-value"]);

    // A key the server does not know.
    let unknown = DnsUpdater::new(settings(bind.addr, "nobody", &bind.acme_secret)).unwrap();
    let error = unknown.add_txt(fqdn, "forged", 60).await.unwrap_err();
    assert!(
        matches!(
            error.kind,
            DnsUpdateErrorKind::KeyRejected {
                tsig_error: "BADKEY",
                ..
            }
        ),
        "{error}"
    );

    // A key the server knows but whose policy does not cover the zone.
    let other = DnsUpdater::new(settings(bind.addr, "other-key", &bind.other_secret)).unwrap();
    let error = other.add_txt(fqdn, "forged", 60).await.unwrap_err();
    assert_eq!(
        error.kind,
        DnsUpdateErrorKind::Refused("other-key".to_owned())
    );
    assert!(error.to_string().contains("(REFUSED)"), "{error}");

    // Outside the zone: refused before sending.
    let error = updater
        .add_txt("_acme-challenge.example.org", "v", 60)
        .await
        .unwrap_err();
    assert_eq!(error.kind, DnsUpdateErrorKind::OutsideZone(ZONE.to_owned()));
    assert_eq!(bind.txt(fqdn), ["second-value"]);

    // A zone the server does not serve.
    let elsewhere = DnsUpdater::new(DnsUpdateSettings {
        zone: "elsewhere.test".to_owned(),
        ..settings(bind.addr, "acme-key", &bind.acme_secret)
    })
    .unwrap();
    let error = elsewhere
        .add_txt("_acme-challenge.elsewhere.test", "v", 60)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.kind,
            DnsUpdateErrorKind::NotAuthoritative(_) | DnsUpdateErrorKind::Refused(_)
        ),
        "{error}"
    );

    // The key file as tsig-keygen writes it works the same.
    let key_file = bind.dir.path().join("acme.key");
    let server = bind.addr.to_string();
    AcmeDnsSettings::from_flags(Some(&server), Some(ZONE), Some(&key_file))
        .unwrap()
        .unwrap()
        .updater()
        .unwrap()
        .remove_txt(fqdn, "second-value")
        .await
        .unwrap();
    assert!(bind.txt(fqdn).is_empty());
}

fn settings(server: SocketAddr, key: &str, secret: &[u8]) -> DnsUpdateSettings {
    DnsUpdateSettings {
        server,
        zone: ZONE.to_owned(),
        key_name: key.to_owned(),
        algorithm: TsigAlgorithm::HmacSha256,
        secret: secret.to_vec(),
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("gatehouse-dns-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `named` on a loopback port serving `example.test` (dynamic, TXT updates granted to
/// `acme-key`; `other-key` known but granted nothing), killed when dropped.
struct Bind {
    addr: SocketAddr,
    acme_secret: Vec<u8>,
    other_secret: Vec<u8>,
    child: Child,
    dir: TempDir,
}

impl Bind {
    /// Starts named, or `None` (with a note) when it is not installed and
    /// `GATEHOUSE_REQUIRE_BIND9` is unset; `deploy/test.sh` installs it and sets that.
    fn start() -> Option<Self> {
        let Some(named) = find("named") else {
            assert!(
                std::env::var_os("GATEHOUSE_REQUIRE_BIND9").is_none(),
                "named (Debian's bind9) is required but not installed"
            );
            eprintln!("note: named (bind9) not installed; skipping the BIND test");
            return None;
        };
        let dir = TempDir::new();
        let addr = free_port();
        let secret = || {
            let mut bytes = uuid::Uuid::new_v4().as_bytes().to_vec();
            bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
            bytes
        };
        let (acme_secret, other_secret) = (secret(), secret());
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let d = dir.path().display();
        let acme_key = format!(
            "key \"acme-key\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{}\";\n}};\n",
            b64(&acme_secret)
        );
        std::fs::write(dir.path().join("acme.key"), &acme_key).unwrap();
        let conf = format!(
            "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  \
             session-keyfile \"{d}/session.key\";\n  listen-on port {port} {{ 127.0.0.1; }};\n  \
             listen-on-v6 {{ none; }};\n  recursion no;\n  dnssec-validation no;\n}};\n\
             controls {{ }};\n{acme_key}\
             key \"other-key\" {{ algorithm hmac-sha256; secret \"{other}\"; }};\n\
             zone \"{ZONE}\" {{\n  type primary;\n  file \"{d}/{ZONE}.db\";\n  \
             update-policy {{ grant acme-key subdomain {ZONE}. TXT; }};\n}};\n",
            port = addr.port(),
            other = b64(&other_secret),
        );
        std::fs::write(dir.path().join("named.conf"), conf).unwrap();
        let zone = format!(
            "$TTL 60\n@ IN SOA ns.{ZONE}. admin.{ZONE}. 1 60 60 600 60\n@ IN NS ns.{ZONE}.\n\
             ns IN A 127.0.0.1\n"
        );
        std::fs::write(dir.path().join(format!("{ZONE}.db")), zone).unwrap();
        let log = std::fs::File::create(dir.path().join("named.log")).unwrap();
        let child = Command::new(named)
            .args(["-g", "-4", "-c"])
            .arg(dir.path().join("named.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut bind = Self {
            addr,
            acme_secret,
            other_secret,
            child,
            dir,
        };
        let deadline = Instant::now() + PATIENCE;
        while bind.query(ZONE, "SOA").is_empty() {
            if let Ok(Some(status)) = bind.child.try_wait() {
                let log = std::fs::read_to_string(bind.dir.path().join("named.log"));
                panic!("named exited ({status}): {}", log.unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "named did not answer in time");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(bind)
    }

    /// The TXT values of `name`, sorted (a real query with `dig`, over TCP).
    fn txt(&self, name: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .query(name, "TXT")
            .into_iter()
            .map(|line| line.trim_matches('"').to_owned())
            .collect();
        values.sort();
        values
    }

    /// `dig +short` lines for `name` `kind`.
    fn query(&self, name: &str, kind: &str) -> Vec<String> {
        let dig = find("dig").expect("dig (Debian's bind9-dnsutils) is required");
        let output = Command::new(dig)
            .args(["+tcp", "+short", "+time=2", "+tries=1", "-p"])
            .arg(self.addr.port().to_string())
            .arg(format!("@{}", self.addr.ip()))
            .args([name, kind])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with(';'))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free for both TCP and UDP now.
fn free_port() -> SocketAddr {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// `program` in `PATH` or in the sbin directories (named lives in /usr/sbin).
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
