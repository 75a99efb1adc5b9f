//! The deployment artefacts in `deploy/`: `--version`, the container image's root filesystem
//! and Containerfile, the systemd units (`systemd-analyze verify`), and the Kubernetes manifests
//! (every overlay rendered with `kubectl kustomize`, validated offline against the Kubernetes
//! schemas with `kubernetes-validate`, and linted).
//!
//! Tools: `systemd-analyze` (Debian `systemd`), `kubectl` (Debian `kubernetes-client`) and
//! `kubernetes-validate` (PyPI, in a virtualenv) are installed by `deploy/test.sh`, which sets
//! `GATEHOUSE_REQUIRE_DEPLOY_TOOLS=1` so that a missing tool fails instead of skipping.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use gatehouse_tests::{TempDir, cp_bin, dp_bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(command: &mut Command) -> Result<Output> {
    let what = format!("{command:?}");
    command.output().with_context(|| format!("running {what}"))
}

fn ok(output: &Output, what: &str) -> Result<String> {
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A tool from PATH (or the given fallbacks); `None` means skip, unless the tools are
/// required (`GATEHOUSE_REQUIRE_DEPLOY_TOOLS=1`), then it fails.
fn tool(name: &str, fallbacks: &[PathBuf]) -> Result<Option<PathBuf>> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .chain(fallbacks.iter().cloned())
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("GATEHOUSE_REQUIRE_DEPLOY_TOOLS").as_deref() == Ok("1") {
            bail!("{name} is required (deploy/test.sh installs it)");
        }
        eprintln!("SKIPPED: {name} is not installed");
    }
    Ok(found)
}

#[test]
fn version_shows_the_crate_version_and_the_commit() -> Result<()> {
    let expected = std::env::var("CARGO_PKG_VERSION")?;
    for bin in [cp_bin()?, dp_bin()?] {
        let out = ok(&run(Command::new(&bin).arg("--version"))?, "--version")?;
        assert!(out.contains(&format!(" {expected} (commit ")), "{out}");
        let commit = out
            .trim()
            .rsplit_once("(commit ")
            .and_then(|(_, c)| c.strip_suffix(')'))
            .context("no commit")?;
        // In a git checkout, the commit of HEAD (the build script asked git).
        if let Ok(head) = run(Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(repo()))
            && head.status.success()
        {
            let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
            assert!(commit.starts_with(&head), "{out} vs HEAD {head}");
        } else {
            assert!(!commit.is_empty(), "{out}");
        }
    }
    Ok(())
}

/// Parses a Containerfile into its stages: (base, name, instructions).
fn stages(text: &str) -> Vec<(String, String, Vec<String>)> {
    let mut stages: Vec<(String, String, Vec<String>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[0].eq_ignore_ascii_case("FROM") {
            let base = words.get(1).copied().unwrap_or_default().to_owned();
            let name = match words.get(2) {
                Some(w) if w.eq_ignore_ascii_case("AS") => {
                    words.get(3).copied().unwrap_or_default()
                }
                _ => "",
            };
            stages.push((base, name.to_owned(), Vec::new()));
        } else if let Some(stage) = stages.last_mut() {
            stage.2.push(line.to_owned());
        }
    }
    stages
}

#[test]
fn container_image_holds_only_the_binary_its_libraries_ca_roots_and_a_non_root_user() -> Result<()>
{
    let containerfile = std::fs::read_to_string(repo().join("deploy/Containerfile"))?;
    let stages = stages(&containerfile);
    let context = TempDir::new("image-context")?;
    let bin_dir = cp_bin()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let output = run(Command::new(repo().join("deploy/build-image.sh"))
        .arg(context.path())
        .env("BIN_DIR", &bin_dir)
        .env("ROOTFS_ONLY", "1"))?;
    ok(&output, "deploy/build-image.sh")?;

    for (plane, binary) in [("cp", "gatehouse-cp"), ("dp", "gatehouse-dp")] {
        let (base, _, instructions) = stages
            .iter()
            .find(|(_, name, _)| name == plane)
            .with_context(|| format!("no stage {plane}"))?;
        assert_eq!(base, "scratch", "the {plane} image starts from nothing");
        let user = instructions
            .iter()
            .rev()
            .find_map(|i| i.strip_prefix("USER "))
            .context("no USER")?;
        let uid = user.split(':').next().unwrap_or_default();
        assert!(
            uid != "0" && uid != "root" && !uid.is_empty(),
            "USER {user}"
        );
        let entrypoint = instructions
            .iter()
            .find_map(|i| i.strip_prefix("ENTRYPOINT "))
            .context("no ENTRYPOINT")?;
        let entrypoint: Vec<String> = serde_json::from_str(entrypoint)
            .context("ENTRYPOINT must be the exec form (there is no shell)")?;
        assert_eq!(entrypoint, [format!("/usr/local/bin/{binary}")]);

        let root = context.path().join(plane);
        let file = |p: &str| root.join(p.trim_start_matches('/'));
        assert!(file(&entrypoint[0]).is_file(), "{} missing", entrypoint[0]);
        let passwd = std::fs::read_to_string(file("/etc/passwd"))?;
        assert!(
            passwd
                .lines()
                .any(|l| l.starts_with(&format!("gatehouse:x:{uid}:"))),
            "{passwd}"
        );
        assert!(
            passwd.lines().all(|l| l.ends_with(":/sbin/nologin")),
            "{passwd}"
        );
        let roots = std::fs::read_to_string(file("/etc/ssl/certs/ca-certificates.crt"))?;
        assert!(roots.matches("BEGIN CERTIFICATE").count() > 10, "CA roots");
        // No shell and no package manager: only what the binary needs.
        for absent in ["/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/apt-get"] {
            assert!(!file(absent).exists(), "{absent} in the {plane} image");
        }

        // The same binary runs inside that filesystem as the image's user, with nothing from
        // the host (chroot; as root, or in a user namespace).
        let chroot = if nix_is_root() {
            Some(vec!["chroot".to_owned(), format!("--userspec={user}")])
        } else if run(Command::new("unshare").args(["-r", "true"]))
            .is_ok_and(|o| o.status.success())
        {
            Some(vec!["unshare".into(), "-r".into(), "chroot".into()])
        } else {
            eprintln!("SKIPPED: running the image's binary needs root or user namespaces");
            None
        };
        if let Some(prefix) = chroot {
            let mut command = Command::new(&prefix[0]);
            command
                .args(&prefix[1..])
                .arg(&root)
                .arg(&entrypoint[0])
                .arg("--version");
            let out = ok(&run(&mut command)?, "the binary in the image root")?;
            assert!(out.starts_with(binary), "{out}");
            if plane == "cp" {
                // Real work inside: a cluster PKI written to the image's /tmp.
                let mut command = Command::new(&prefix[0]);
                command
                    .args(&prefix[1..])
                    .arg(&root)
                    .arg(&entrypoint[0])
                    .args(["pki", "init", "--out", "/tmp/pki", "--dp", "dp1"]);
                ok(&run(&mut command)?, "pki init in the image root")?;
                assert!(root.join("tmp/pki/ca.crt").is_file());
            }
        }
    }
    Ok(())
}

fn nix_is_root() -> bool {
    run(Command::new("id").arg("-u"))
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() -> Result<()> {
    let Some(analyze) = tool("systemd-analyze", &[])? else {
        return Ok(());
    };
    let root = TempDir::new("systemd-root")?;
    let units = root.path().join("etc/systemd/system");
    let bin = root.path().join("usr/local/bin");
    std::fs::create_dir_all(&units)?;
    std::fs::create_dir_all(&bin)?;
    // The system's own units (targets the service units order against).
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("sysinit.target").is_file())
        .context("no systemd system units (sysinit.target)")?;
    let lib = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&lib)?;
    for entry in std::fs::read_dir(system_units)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), lib.join(entry.file_name()))?;
        }
    }
    std::fs::copy(cp_bin()?, bin.join("gatehouse-cp"))?;
    std::fs::copy(dp_bin()?, bin.join("gatehouse-dp"))?;
    let mut paths = Vec::new();
    for unit in ["gatehouse-cp.service", "gatehouse-dp.service"] {
        let text = std::fs::read_to_string(repo().join("deploy/systemd").join(unit))?;
        for needed in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "DynamicUser=yes",
            "ExecStart=/usr/local/bin/",
        ] {
            assert!(text.contains(needed), "{unit}: {needed}");
        }
        if unit == "gatehouse-dp.service" {
            assert!(text.contains("StateDirectory=gatehouse-dp"));
            assert!(text.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"));
        } else {
            assert!(
                !text.contains("CAP_NET_BIND_SERVICE"),
                "the CP binds no port < 1024"
            );
        }
        std::fs::write(units.join(unit), text)?;
        paths.push(units.join(unit));
    }
    let output = run(Command::new(&analyze)
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("--man=no")
        .args(&paths))?;
    ok(&output, "systemd-analyze verify")?;
    // Unknown keys are only warnings: none is allowed.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");

    // The check can fail: a unit whose binary is missing is refused.
    std::fs::remove_file(bin.join("gatehouse-cp"))?;
    let output = run(Command::new(&analyze)
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("--man=no")
        .arg(&paths[0]))?;
    assert!(
        !output.status.success(),
        "verify accepted a missing ExecStart binary"
    );
    Ok(())
}

/// Every document of a rendered multi-document YAML stream, as JSON.
fn documents(yaml: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)
        .map_err(|e| anyhow::anyhow!("rendered YAML does not parse: {e}"))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The usual mistakes: `latest` or untagged images, containers without probes, requests or
/// limits, pods that may run as root or write their root filesystem.
fn lint(overlay: &str, docs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let pod = match kind {
            "Deployment" | "Job" => &doc["spec"]["template"]["spec"],
            _ => continue,
        };
        let at = |what: &str| format!("{overlay}: {kind}/{name}: {what}");
        if pod["securityContext"]["runAsNonRoot"] != true {
            problems.push(at("pod securityContext.runAsNonRoot is not true"));
        }
        if pod["automountServiceAccountToken"] != false {
            problems.push(at("a service account token is mounted"));
        }
        for container in pod["containers"].as_array().into_iter().flatten() {
            let image = container["image"].as_str().unwrap_or_default();
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
            if tag.is_empty() || tag == "latest" || tag.contains('/') {
                problems.push(at(&format!("image {image} has no fixed tag")));
            }
            let security = &container["securityContext"];
            if security["readOnlyRootFilesystem"] != true {
                problems.push(at("root filesystem is writable"));
            }
            if security["allowPrivilegeEscalation"] != false {
                problems.push(at("privilege escalation allowed"));
            }
            for resource in ["requests", "limits"] {
                for what in ["cpu", "memory"] {
                    if container["resources"][resource][what].is_null() {
                        problems.push(at(&format!("no {resource}.{what}")));
                    }
                }
            }
            if kind == "Deployment" {
                for probe in ["readinessProbe", "livenessProbe"] {
                    if container[probe].is_null() {
                        problems.push(at(&format!("no {probe}")));
                    }
                }
            }
        }
    }
    problems
}

#[test]
fn kubernetes_overlays_render_validate_and_pass_the_lint() -> Result<()> {
    let Some(kubectl) = tool("kubectl", &[])? else {
        return Ok(());
    };
    let venv_validate = std::env::var_os("GATEHOUSE_KV_VENV")
        .map(PathBuf::from)
        .map(|v| v.join("bin/kubernetes-validate"));
    let Some(validate) = tool(
        "kubernetes-validate",
        &venv_validate.into_iter().collect::<Vec<_>>(),
    )?
    else {
        return Ok(());
    };
    let overlays_dir = repo().join("deploy/kubernetes/overlays");
    let mut overlays: Vec<PathBuf> = std::fs::read_dir(&overlays_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    overlays.sort();
    assert!(overlays.len() >= 3, "{overlays:?}");
    let out = TempDir::new("kustomize")?;
    for overlay in &overlays {
        let name = overlay
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let rendered = ok(
            &run(Command::new(&kubectl).arg("kustomize").arg(overlay))?,
            &format!("kubectl kustomize {name}"),
        )?;
        let file = out.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &rendered)?;
        let validated = run(Command::new(&validate)
            .args(["--strict", "--quiet"])
            .arg(&file))?;
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&validated.stdout),
            String::from_utf8_lossy(&validated.stderr)
        );
        assert!(validated.status.success(), "{name}: {report}");
        let docs = documents(&rendered)?;
        // Every schema was found but the CloudNativePG Cluster's (a CRD, checked below).
        for line in report
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
        {
            assert!(
                line.contains("kind Cluster with api version postgresql.cnpg.io/v1"),
                "{name}: {line}"
            );
        }
        let problems = lint(&name, &docs);
        assert!(problems.is_empty(), "{problems:#?}");

        let find = |kind: &str, id: &str| {
            docs.iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == id)
                .cloned()
                .unwrap_or(Value::Null)
        };
        let cp = find("Deployment", "gatehouse-cp");
        assert_eq!(cp["spec"]["replicas"], 2, "{name}");
        let dp = find("Deployment", "gatehouse-dp");
        let dp_pod = &dp["spec"]["template"]["spec"];
        let container = &dp_pod["containers"][0];
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"],
            "/status/ready"
        );
        // The grace period covers the preStop pause and the whole drain.
        let drain = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|a| a.strip_prefix("--drain-timeout="))
            .and_then(|d| d.strip_suffix('s'))
            .and_then(|d| d.parse::<i64>().ok())
            .context("--drain-timeout=Ns")?;
        let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_i64()
            .context("preStop sleep")?;
        let grace = dp_pod["terminationGracePeriodSeconds"]
            .as_i64()
            .context("grace")?;
        assert!(
            grace > pause + drain,
            "{name}: grace {grace} <= {pause} + {drain}"
        );
        let cache = dp_pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "cache")
            .context("cache volume")?;
        assert!(cache["emptyDir"].is_object());
        assert!(!dp_pod["affinity"]["podAntiAffinity"].is_null());
        assert!(
            !find("HorizontalPodAutoscaler", "gatehouse-dp").is_null(),
            "{name}"
        );
        assert!(
            !find("PodDisruptionBudget", "gatehouse-dp").is_null(),
            "{name}"
        );
        assert!(
            !find("PodDisruptionBudget", "gatehouse-cp").is_null(),
            "{name}"
        );
        assert!(!find("Job", "gatehouse-migrations").is_null(), "{name}");
        let env: Vec<&str> = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str())
            .collect();
        if name == "pki-secret" {
            assert!(
                !env.contains(&"GATEHOUSE_CLUSTER_BOOTSTRAP_TOKEN"),
                "{env:?}"
            );
        } else {
            // Data planes start with a bootstrap token from a Secret, not copied certificates.
            assert!(
                env.contains(&"GATEHOUSE_CLUSTER_BOOTSTRAP_TOKEN"),
                "{name}: {env:?}"
            );
        }
        if name == "cloudnativepg" {
            let cluster = find("Cluster", "gatehouse-pg");
            assert_eq!(cluster["apiVersion"], "postgresql.cnpg.io/v1");
            assert!(
                cluster["spec"]["instances"]
                    .as_i64()
                    .is_some_and(|n| n >= 3)
            );
            let url = &cp["spec"]["template"]["spec"]["containers"][0]["env"];
            assert!(url.to_string().contains("gatehouse-pg-app"), "{url}");
        }
    }

    // The lint can fail: a `latest` image and a missing probe are caught.
    let mut bad = documents(&std::fs::read_to_string(
        out.path().join("external-postgres.yaml"),
    )?)?;
    for doc in &mut bad {
        if doc["kind"] == "Deployment" {
            let container = &mut doc["spec"]["template"]["spec"]["containers"][0];
            container["image"] = Value::from("ghcr.io/gatehouse/gatehouse-dp:latest");
            if let Value::Object(c) = container {
                c.remove("livenessProbe");
            }
        }
    }
    let problems = lint("mutated", &bad);
    assert!(
        problems.iter().any(|p| p.contains("no fixed tag")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("no livenessProbe")),
        "{problems:?}"
    );
    Ok(())
}
