//! Keys encrypted at rest (issue 13), end to end: real PostgreSQL and `pg_dump`, real
//! `gatehouse-cp` processes (server and `keyring` CLI), a real data plane serving the
//! certificates over TLS.

mod cluster_support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use cluster_support::*;
use gatehouse_tests::certs::{Algorithm, self_signed};
use gatehouse_tests::{
    Admin, DataPlane, Handshake, TempDir, TestDb, config_version, cp_bin, patience,
    tls_client_config, tls_handshake, wait_until,
};

/// Runs `gatehouse-cp keyring ARGS`; returns stdout, or fails with stderr.
async fn keyring(args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(cp_bin()?)
        .arg("keyring")
        .args(args)
        .env_remove("GATEHOUSE_KEYRING_KEY")
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "gatehouse-cp keyring {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `gatehouse-cp keyring status` on the database at `url` with the KEK file `kek`.
async fn keyring_status(url: &str, kek: &str) -> Result<Value> {
    let out = keyring(&["status", "--database-url", url, "--keyring-key-file", kek]).await?;
    Ok(serde_json::from_str(&out)?)
}

/// Runs `gatehouse-cp serve` on `db` expecting it to refuse to start; returns its output.
async fn refused_serve(db: &TestDb, args: &[&str]) -> Result<String> {
    let run = tokio::process::Command::new(cp_bin()?)
        .args(["serve", "--database-url", &db.url])
        .args(["--admin-listen", "127.0.0.1:0", "--status-listen", "off"])
        .args(args)
        .env_remove("GATEHOUSE_KEYRING_KEY")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(patience(), run)
        .await
        .context("gatehouse-cp serve did not exit")??;
    ensure!(!output.status.success(), "serve started: {output:?}");
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// DER of the first PEM block of `pem`.
fn der(pem: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(
            pem.lines()
                .skip_while(|l| !l.starts_with("-----BEGIN"))
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .collect::<String>(),
        )
        .unwrap_or_default()
}

/// Checks that `text` (a dump, logs) holds none of the private keys of `pairs` (certificate,
/// key) in clear: no PEM header, and no 27-byte run of a key's DER that is not also in its
/// certificate (the public key is public) in base64, at any of the three alignments.
fn assert_no_key_in(text: &str, pairs: &[(String, String)]) {
    assert!(!text.contains("PRIVATE KEY"), "a PEM private key");
    let b64 = base64::engine::general_purpose::STANDARD;
    for (cert, key) in pairs {
        let (cert, key) = (der(cert), der(key));
        assert!(key.len() > 60, "a key DER");
        let mut checked = 0;
        for window in key.windows(29).step_by(5) {
            if cert.windows(29).any(|w| w == window) {
                continue;
            }
            for align in 0..3 {
                let encoded = b64.encode(&window[align..align + 24]);
                if let Some(at) = text.find(&encoded) {
                    let context = &text[at.saturating_sub(200)..(at + 60).min(text.len())];
                    panic!("base64 of a private key's DER: {context}");
                }
            }
            checked += 1;
        }
        assert!(checked > 3, "private parts checked");
    }
}

/// The leaf certificate `dp` serves for `sni` (DER).
async fn served(dp: &DataPlane, sni: &str) -> Result<Vec<u8>> {
    match tls_handshake(dp.proxy_ssl_addr()?, sni, tls_client_config(None, None)?).await? {
        Handshake::Accept { peer_certificates } => Ok(peer_certificates
            .first()
            .context("no certificate")?
            .as_ref()
            .to_vec()),
        Handshake::Refuse(why) => bail!("{sni}: {why}"),
    }
}

/// Waits until `dp` serves `cert` (PEM) for `sni`.
async fn wait_served(dp: &DataPlane, sni: &str, cert: &str) -> Result<()> {
    let der = CertificateDer::from_pem_slice(cert.as_bytes())?
        .as_ref()
        .to_vec();
    wait_until(&format!("{sni} served"), patience(), || async {
        Ok((served(dp, sni).await.ok().as_ref() == Some(&der)).then_some(()))
    })
    .await
}

/// A certificate written through the Admin API.
#[derive(Debug, Clone)]
struct Cert {
    id: String,
    sni: String,
    cert: String,
    key: String,
}

/// Creates a certificate for `sni`.
async fn create(admin: &Admin, sni: &str) -> Result<Cert> {
    let pem = self_signed(&[sni], Algorithm::Ecdsa, 30)?;
    let created = admin
        .post_json(
            "/certificates",
            &json!({"cert": pem.cert, "key": pem.key, "snis": [sni]}),
        )
        .await?;
    ensure!(created.status == 201, "POST /certificates: {created:?}");
    let id = created.body["id"].as_str().context("id")?.to_owned();
    ensure!(created.body["key"] == json!(pem.key), "{created:?}");
    Ok(Cert {
        id,
        sni: sni.to_owned(),
        cert: pem.cert,
        key: pem.key,
    })
}

/// Checks that the Admin API answers every certificate's original key (one by one and
/// listed).
async fn assert_keys_served(admin: &Admin, certs: &[Cert]) -> Result<()> {
    for cert in certs {
        let got = admin.get(&format!("/certificates/{}", cert.id)).await?;
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(got.body["key"], json!(cert.key), "certificate {}", cert.id);
    }
    let listed = admin.get("/certificates?size=1000").await?;
    assert_eq!(listed.status, 200, "{listed:?}");
    let data = listed.body["data"].as_array().context("data")?;
    for cert in certs {
        let item = data
            .iter()
            .find(|c| c["id"] == json!(cert.id))
            .with_context(|| format!("{} listed", cert.id))?;
        assert_eq!(item["key"], json!(cert.key));
    }
    Ok(())
}

/// Rows of `certificates` whose key or alternate key is not sealed under the active data key.
async fn not_under_active_key(db: &TestDb) -> Result<i64> {
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT count(*) FROM certificates c, keyring_active a WHERE c.key NOT LIKE \
             'ghenc:v1:' || a.data_key_id || ':%' OR c.key_alt NOT LIKE \
             'ghenc:v1:' || a.data_key_id || ':%'",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

fn key_file_args(path: &Path) -> Vec<String> {
    vec![
        "--keyring-key-file".to_owned(),
        path.to_string_lossy().into_owned(),
    ]
}

#[tokio::test]
async fn private_keys_are_sealed_in_the_database_and_served_as_before() -> Result<()> {
    let dir = TempDir::new("keyring")?;
    let kek = dir.join("keyring.keys");
    let kek_arg = kek.to_string_lossy().into_owned();
    let wrote = keyring(&["init", "--keyring-key-file", &kek_arg]).await?;
    assert!(wrote.contains("wrote key-encryption key 'kek-"), "{wrote}");
    let cluster = Cluster::start(&["dp1"], &["--keyring-key-file", &kek_arg]).await?;
    let admin = &cluster.admin().clone();
    let url = cluster.db.url.clone();

    let mut certs = Vec::new();
    for n in 0..3 {
        certs.push(create(admin, &format!("sealed{n}.example.test")).await?);
    }
    // A dual certificate: key_alt is sealed too.
    let ecdsa = self_signed(&["dual.example.test"], Algorithm::Ecdsa, 30)?;
    let rsa = self_signed(&["dual.example.test"], Algorithm::Rsa, 30)?;
    let dual = admin
        .post_json(
            "/certificates",
            &json!({"cert": ecdsa.cert, "key": ecdsa.key, "cert_alt": rsa.cert,
                    "key_alt": rsa.key, "snis": ["dual.example.test"]}),
        )
        .await?;
    assert_eq!(dual.status, 201, "{dual:?}");
    assert_eq!(dual.body["key_alt"], json!(rsa.key));

    let dump = cluster.db.dump().await?;
    assert!(dump.contains("ghenc:v1:dk-"), "no sealed value in the dump");
    let mut keys: Vec<(String, String)> = certs
        .iter()
        .map(|c| (c.cert.clone(), c.key.clone()))
        .collect();
    keys.extend([
        (ecdsa.cert.clone(), ecdsa.key.clone()),
        (rsa.cert.clone(), rsa.key.clone()),
    ]);
    assert_no_key_in(&dump, &keys);
    assert_keys_served(admin, &certs).await?;
    let got = admin
        .get(&format!(
            "/certificates/{}",
            dual.body["id"].as_str().context("id")?
        ))
        .await?;
    assert_eq!(got.body["key_alt"], json!(rsa.key));

    // A ciphertext moved to another row does not open: the read fails, it never serves
    // another certificate's key.
    let client = cluster.db.client().await?;
    let (first, second) = (certs[0].clone(), certs[1].clone());
    client
        .execute(
            "UPDATE certificates SET key = (SELECT key FROM certificates WHERE id = $1::uuid) \
             WHERE id = $2::uuid",
            &[
                &first.id.parse::<uuid::Uuid>()?,
                &second.id.parse::<uuid::Uuid>()?,
            ],
        )
        .await?;
    let moved = admin.get(&format!("/certificates/{}", second.id)).await?;
    assert_eq!(moved.status, 500, "{moved:?}");
    assert!(!moved.body.to_string().contains("PRIVATE"), "{moved:?}");
    assert!(
        cluster.cp.logs().contains("does not open"),
        "the cause is logged"
    );
    // A PATCH merges into the stored values, so it fails closed too; a PUT replaces them.
    let patched = admin
        .patch_json(
            &format!("/certificates/{}", second.id),
            &json!({"tags": ["x"]}),
        )
        .await?;
    assert_eq!(patched.status, 500, "{patched:?}");
    let replaced = admin
        .put_json(
            &format!("/certificates/{}", second.id),
            &json!({"cert": second.cert, "key": second.key, "snis": [second.sni]}),
        )
        .await?;
    assert_eq!(replaced.status, 200, "{replaced:?}");
    assert_keys_served(admin, &certs).await?;

    // The data plane serves the certificates (the snapshot carries the opened keys).
    let dp = cluster.dp("dp1").await?;
    dp.wait_until_ready(patience()).await?;
    for cert in &certs {
        wait_served(&dp, &cert.sni, &cert.cert).await?;
    }
    for logs in [cluster.cp.logs(), dp.all_logs()] {
        assert_no_key_in(&logs, &keys);
    }

    // Rotation while a writer creates certificates: every write succeeds, and afterwards
    // every row is under the new data key and the old one is gone.
    for n in 0..30 {
        certs.push(create(admin, &format!("bulk{n}.example.test")).await?);
    }
    let written = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (admin, written, failures, stop) = (
            admin.clone(),
            written.clone(),
            failures.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                match create(&admin, &format!("during{n}.example.test")).await {
                    Ok(cert) => written.lock().await.push(cert),
                    Err(e) => {
                        eprintln!("write failed during rotation: {e:#}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                n += 1;
            }
        })
    };
    wait_until("the writer running", patience(), || async {
        Ok((written.lock().await.len() >= 3).then_some(()))
    })
    .await?;
    let before = written.lock().await.len();
    let rotated = keyring(&[
        "rotate",
        "--batch-size",
        "5",
        "--database-url",
        &url,
        "--keyring-key-file",
        &kek_arg,
    ])
    .await?;
    assert!(rotated.contains("dropped 1 retired data keys"), "{rotated}");
    wait_until("writes after the rotation", patience(), || async {
        Ok((written.lock().await.len() >= before + 6).then_some(()))
    })
    .await?;
    stop.store(true, Ordering::SeqCst);
    writer.await?;
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no write failed");
    certs.extend(written.lock().await.iter().cloned());
    assert_eq!(not_under_active_key(&cluster.db).await?, 0);
    let status = keyring_status(&url, &kek_arg).await?;
    assert_eq!(
        status["data_keys"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(status["data_keys"][0]["opens"], json!(true), "{status}");
    assert_eq!(status["values_in_clear"], json!(0), "{status}");
    assert_keys_served(admin, &certs).await?;
    let last = certs.last().context("a certificate")?;
    wait_served(&dp, &last.sni, &last.cert).await?;
    wait_served(&dp, &certs[0].sni, &certs[0].cert).await?;

    // A new KEK: put first in the file, then rotate; the running control plane reads the
    // file again when it meets a data key wrapped by a KEK it does not know.
    keyring(&["init", "--add", "--keyring-key-file", &kek_arg]).await?;
    keyring(&[
        "rotate",
        "--database-url",
        &url,
        "--keyring-key-file",
        &kek_arg,
    ])
    .await?;
    let status = keyring_status(&url, &kek_arg).await?;
    assert_eq!(status["data_keys"][0]["kek"], status["keks"][0], "{status}");
    assert_ne!(status["keks"][0], status["keks"][1], "{status}");
    assert_keys_served(admin, &certs).await?;
    // The old KEK can go now.
    let text = std::fs::read_to_string(&kek)?;
    let first: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(1)
        .collect();
    std::fs::write(&kek, format!("{}\n", first.join("")))?;
    let status = keyring_status(&url, &kek_arg).await?;
    assert_eq!(status["data_keys"][0]["opens"], json!(true), "{status}");
    let dump = cluster.db.dump().await?;
    keys.extend(certs.iter().map(|c| (c.cert.clone(), c.key.clone())));
    assert_no_key_in(&dump, &keys);

    // The data plane's cache file is encrypted; restarted with the control plane down, the
    // data plane serves from it.
    let cached = std::fs::read(dp.cache_dir().join("snapshot.bin"))?;
    assert!(cached.starts_with(b"GHCACHE2"), "the cache is encrypted");
    let cached_text = String::from_utf8_lossy(&cached);
    assert_no_key_in(&cached_text, &keys);
    let mut dp = dp;
    let mut cluster = cluster;
    cluster.kill_cp(&[&dp]).await?;
    dp.restart().await?;
    dp.wait_for_log("loaded cached snapshot", patience())
        .await?;
    wait_served(&dp, &certs[0].sni, &certs[0].cert).await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_or_wrong_keyring_is_refused_at_startup() -> Result<()> {
    let dir = TempDir::new("keyring")?;
    let kek = dir.join("keyring.keys");
    let kek_arg = kek.to_string_lossy().into_owned();
    keyring(&["init", "--keyring-key-file", &kek_arg]).await?;
    let cluster = Cluster::start(
        &[],
        &key_file_args(&kek)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await?;
    let one = create(cluster.admin(), "one.example.test").await?;

    // Without the keyring: the database holds sealed keys, serving them is impossible.
    let out = refused_serve(&cluster.db, &[]).await?;
    assert!(out.contains("encrypted at rest"), "{out}");
    assert!(out.contains("--keyring-key-file"), "{out}");

    // A KEK with the same id but other bytes: a clear error, and no key in it.
    let text = std::fs::read_to_string(&kek)?;
    let entry = text
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .context("entry")?;
    let (id, secret) = entry.split_once(':').context("ID:BASE64")?;
    let wrong = dir.join("wrong.keys");
    let other = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    std::fs::write(&wrong, format!("{id}:{other}\n"))?;
    let out = refused_serve(
        &cluster.db,
        &["--keyring-key-file", &wrong.to_string_lossy()],
    )
    .await?;
    assert!(
        out.contains(&format!("does not open with KEK '{id}'")),
        "{out}"
    );
    assert!(!out.contains(secret) && !out.contains(&other), "{out}");

    // An unknown KEK id and a malformed file: clear errors, no key quoted.
    std::fs::write(&wrong, format!("other:{other}\n"))?;
    let out = refused_serve(
        &cluster.db,
        &["--keyring-key-file", &wrong.to_string_lossy()],
    )
    .await?;
    assert!(out.contains(&format!("wrapped by KEK '{id}'")), "{out}");
    std::fs::write(&wrong, format!("{id}:{}\n", &secret[..20]))?;
    let out = refused_serve(
        &cluster.db,
        &["--keyring-key-file", &wrong.to_string_lossy()],
    )
    .await?;
    assert!(
        out.contains("the key must be the base64 of 32 bytes"),
        "{out}"
    );
    assert!(!out.contains(&secret[..20]), "{out}");

    // The keyring from the environment works as the file does.
    let cp = gatehouse_tests::ControlPlane::start_with(
        &cluster.db,
        &["--status-listen", "off"],
        &[("GATEHOUSE_KEYRING_KEY", entry)],
    )
    .await?;
    let listed = cp.admin().get("/certificates").await?;
    assert_eq!(listed.body["data"][0]["key"], json!(one.key), "{listed:?}");
    Ok(())
}

#[tokio::test]
async fn the_envelope_survives_a_restart_with_keys_written_in_clear_before() -> Result<()> {
    // Keys written before the keyring existed are read in clear, and sealed by `rotate`.
    let db = gatehouse_tests::test_db().await?;
    let cp =
        gatehouse_tests::ControlPlane::start_with(&db, &["--status-listen", "off"], &[]).await?;
    assert!(cp.logs().contains("no keyring configured"), "{}", cp.logs());
    let clear = create(cp.admin(), "clear.example.test").await?;
    drop(cp);
    assert!(db.dump().await?.contains("PRIVATE KEY"));

    let dir = TempDir::new("keyring")?;
    let kek = dir.join("keyring.keys");
    let kek_arg = kek.to_string_lossy().into_owned();
    let out = keyring(&[
        "init",
        "--keyring-key-file",
        &kek_arg,
        "--database-url",
        &db.url,
    ])
    .await?;
    assert!(out.contains("re-encrypted 1 certificate values"), "{out}");
    assert_no_key_in(
        &db.dump().await?,
        &[(clear.cert.clone(), clear.key.clone())],
    );
    let cp = gatehouse_tests::ControlPlane::start_with(
        &db,
        &["--status-listen", "off", "--keyring-key-file", &kek_arg],
        &[],
    )
    .await?;
    assert_keys_served(cp.admin(), std::slice::from_ref(&clear)).await?;
    // Sealed-looking input is refused (it would not open), and nothing is written.
    let pem = self_signed(&["bad.example.test"], Algorithm::Ecdsa, 30)?;
    let refused = cp
        .admin()
        .post_json(
            "/certificates",
            &json!({"cert": pem.cert, "key": format!("ghenc:v1:x:{}", pem.key)}),
        )
        .await?;
    assert_eq!(refused.status, 400, "{refused:?}");
    let listed = cp.admin().get("/certificates").await?;
    assert_eq!(listed.body["data"].as_array().map(Vec::len), Some(1));
    Ok(())
}

/// Writes `text` to `path` atomically (as secret managers do: a new file renamed over).
fn replace_file(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[tokio::test]
async fn secret_references_are_stored_as_references_and_rotate_to_data_planes() -> Result<()> {
    let db = gatehouse_tests::test_db().await?;
    let pki = gatehouse_tests::Pki::new(&["dp1"])?;
    let dir = TempDir::new("secrets")?;
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    let first = self_signed(&["file.example.test"], Algorithm::Ecdsa, 30)?;
    replace_file(&cert_file, &first.cert)?;
    replace_file(&key_file, &first.key)?;
    let from_env = self_signed(&["env.example.test"], Algorithm::Ecdsa, 30)?;
    let json_secret = json!({"crt": from_env.cert, "key": from_env.key}).to_string();
    let mut args = pki.cp_args();
    args.extend(
        [
            "--cluster-listen",
            "127.0.0.1:0",
            "--secret-refresh-interval",
            "1",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cp = gatehouse_tests::ControlPlane::start_with(
        &db,
        &args,
        &[
            ("GH_TEST_TLS", json_secret.as_str()),
            ("GH_TEST_KEY", from_env.key.as_str()),
        ],
    )
    .await?;
    let admin = cp.admin();

    let file_refs = json!({
        "cert": format!("{{vault://file/{}}}", cert_file.display()),
        "key": format!("{{vault://file/{}}}", key_file.display()),
        "snis": ["file.example.test"],
    });
    let created = admin.post_json("/certificates", &file_refs).await?;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(
        created.body["key"], file_refs["key"],
        "the reference, not the secret"
    );
    assert_eq!(created.body["subject"], json!("CN=file.example.test"));
    let id = created.body["id"].as_str().context("id")?.to_owned();
    let got = admin.get(&format!("/certificates/{id}")).await?;
    assert_eq!(got.body["cert"], file_refs["cert"]);
    assert_eq!(got.body["key"], file_refs["key"]);
    // Kong's env vault, with a JSON field, and a plain variable.
    let env_refs = json!({
        "cert": "{vault://env/GH_TEST_TLS/crt}",
        "key": "{vault://env/gh-test-key}",
        "snis": ["env.example.test"],
    });
    let created = admin.post_json("/certificates", &env_refs).await?;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["key"], env_refs["key"]);

    // A reference that does not resolve, or resolves to what is not a key: a Kong-shaped
    // 400, nothing written.
    let before = config_version(admin).await?;
    for (key, why) in [
        ("{vault://env/GH_TEST_MISSING}", "could not resolve"),
        ("{vault://vault/secret/tls}", "unknown vault"),
        (&format!("{{vault://file/{}}}", cert_file.display()), "key"),
    ] {
        let refused = admin
            .post_json(
                "/certificates",
                &json!({"cert": file_refs["cert"], "key": key, "snis": ["bad.example.test"]}),
            )
            .await?;
        assert_eq!(refused.status, 400, "{refused:?}");
        assert_eq!(
            refused.body["name"],
            json!("schema violation"),
            "{refused:?}"
        );
        assert!(refused.body.to_string().contains(why), "{refused:?}");
    }
    assert_eq!(config_version(admin).await?, before, "nothing written");

    // The data plane gets the values; the database and the logs never see them.
    let cluster_addr = cp.cluster_addr().context("cluster listener")?;
    let dp =
        DataPlane::start(gatehouse_tests::DataPlaneOptions::new(cluster_addr).pki(&pki, "dp1"))
            .await?;
    dp.wait_until_ready(patience()).await?;
    wait_served(&dp, "file.example.test", &first.cert).await?;
    wait_served(&dp, "env.example.test", &from_env.cert).await?;

    // Rotation of the files (as cert-manager or Vault Agent does): the data plane follows.
    let second = self_signed(&["file.example.test"], Algorithm::Ecdsa, 30)?;
    let version = config_version(admin).await?;
    replace_file(&key_file, &second.key)?;
    replace_file(&cert_file, &second.cert)?;
    wait_served(&dp, "file.example.test", &second.cert).await?;
    assert!(
        config_version(admin).await? > version,
        "a new config version"
    );
    assert_eq!(
        admin.get(&format!("/certificates/{id}")).await?.body["key"],
        file_refs["key"]
    );

    // A reference that stops resolving keeps its last good value (reported), never empty.
    std::fs::remove_file(&key_file)?;
    cp.wait_for_log("last good value", patience()).await?;
    wait_served(&dp, "file.example.test", &second.cert).await?;
    let status = gatehouse_tests::clustering_status(admin).await?;
    let failing = &status["secret_references"]["failing"];
    assert_eq!(failing[0]["reference"], file_refs["key"], "{status}");
    assert_eq!(failing[0]["last_good_value_used"], json!(true), "{status}");
    // Back: no longer reported.
    replace_file(&key_file, &second.key)?;
    wait_until("the reference resolving again", patience(), || async {
        let status = gatehouse_tests::clustering_status(admin).await?;
        Ok((status["secret_references"]["failing"] == json!([])).then_some(()))
    })
    .await?;

    let pairs = [
        (first.cert.clone(), first.key.clone()),
        (second.cert.clone(), second.key.clone()),
        (from_env.cert.clone(), from_env.key.clone()),
    ];
    assert_no_key_in(&db.dump().await?, &pairs);
    assert_no_key_in(&cp.logs(), &pairs);
    Ok(())
}

/// Figures for BENCHMARKS.md, not a check: `keyring rotate` over N certificates (default
/// 1000, `GATEHOUSE_KEYRING_BENCH_ROWS`) while a writer creates certificates. Run with
/// `cargo nextest run -p gatehouse-tests --test keyring --run-ignored only --no-capture
/// rotation_figures`.
#[tokio::test]
#[ignore = "a measurement; see BENCHMARKS.md"]
async fn rotation_figures() -> Result<()> {
    let rows: usize = std::env::var("GATEHOUSE_KEYRING_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = TempDir::new("keyring")?;
    let kek_arg = dir.join("keyring.keys").to_string_lossy().into_owned();
    keyring(&["init", "--keyring-key-file", &kek_arg]).await?;
    let db = gatehouse_tests::test_db().await?;
    let cp = gatehouse_tests::ControlPlane::start_with(
        &db,
        &["--status-listen", "off", "--keyring-key-file", &kek_arg],
        &[],
    )
    .await?;
    let admin = cp.admin().clone();
    let pem = self_signed(&["bench.example.test"], Algorithm::Ecdsa, 30)?;
    for n in 0..rows {
        let created = admin
            .post_json(
                "/certificates",
                &json!({"cert": pem.cert, "key": pem.key, "snis": [format!("b{n}.example.test")]}),
            )
            .await?;
        ensure!(created.status == 201, "{created:?}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (admin, stop, pem) = (admin.clone(), stop.clone(), pem.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed, mut slowest) = (0u32, 0u32, std::time::Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                let started = std::time::Instant::now();
                let body = json!({"cert": pem.cert, "key": pem.key});
                match admin.post_json("/certificates", &body).await {
                    Ok(r) if r.status == 201 => ok += 1,
                    _ => failed += 1,
                }
                slowest = slowest.max(started.elapsed());
            }
            (ok, failed, slowest)
        })
    };
    let started = std::time::Instant::now();
    let out = keyring(&[
        "rotate",
        "--database-url",
        &db.url,
        "--keyring-key-file",
        &kek_arg,
    ])
    .await?;
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (ok, failed, slowest) = writer.await?;
    println!(
        "KEYRING ROTATION: {rows} certificates (+{ok} written meanwhile): {} ms, {:.0} rows/s; \
         writes during it: {ok} ok, {failed} failed, slowest {} ms\n{out}",
        took.as_millis(),
        rows as f64 / took.as_secs_f64(),
        slowest.as_millis()
    );
    Ok(())
}
