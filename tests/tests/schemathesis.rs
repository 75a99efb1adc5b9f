//! Schemathesis (PyPI) against a real control plane, from the OpenAPI document the control plane
//! serves: every response conforms to the document, no 5xx, invalid requests are refused, and a
//! request valid by the document is refused only for a rule the document can state in prose
//! only (see `tests/schemathesis/gatehouse_hooks.py`).
//!
//! The run is bounded (`GATEHOUSE_ST_EXAMPLES` examples per operation, 10 by default, with a
//! fixed seed, `GATEHOUSE_ST_SEED`, so that a failure reproduces). Without the `st` command the
//! test is skipped with a loud message, unless `GATEHOUSE_REQUIRE_SCHEMATHESIS=1`, which
//! `deploy/test.sh` sets after installing it: in CI the run always happens.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::process::Command;

use gatehouse_tests::{ControlPlane, TempDir, config_version, test_db};

/// The `st` command, or `None` when it is not installed.
fn st_command() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GATEHOUSE_ST_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("st"))
        .find(|candidate| candidate.is_file())
}

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name}={value:?} is not a number")),
        Err(_) => Ok(default),
    }
}

#[tokio::test]
async fn schemathesis_finds_no_failure() -> Result<()> {
    let Some(st) = st_command() else {
        let required = std::env::var("GATEHOUSE_REQUIRE_SCHEMATHESIS").is_ok_and(|v| v == "1");
        ensure!(
            !required,
            "GATEHOUSE_REQUIRE_SCHEMATHESIS=1 but the schemathesis `st` command is not in PATH"
        );
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             SKIPPED: schemathesis is not installed (no `st` in PATH), so the Admin API was NOT\n\
             fuzzed. Install it with `pip install schemathesis==4.32.5`, or run deploy/test.sh,\n\
             which does.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return Ok(());
    };
    let examples = env_number("GATEHOUSE_ST_EXAMPLES", 10)?;
    let seed = env_number("GATEHOUSE_ST_SEED", 1)?;

    let db = test_db().await?;
    // Not one line per write (thousands): errors and warnings are what this test looks for.
    let cp = ControlPlane::start_with(&db, &[], &[("RUST_LOG", "info,gatehouse_cp::admin=warn")])
        .await?;
    let before = config_version(cp.admin()).await?;
    let hooks = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis");
    let work = TempDir::new("schemathesis")?;
    let schema_url = format!("{}/openapi.json", cp.admin_url());

    let mut command = Command::new(&st);
    command
        .args(["--no-color", "run", &schema_url])
        .args(["--checks", "all"])
        // Replaced by the hook's `schema_valid_refused_only_by_prose_rules`.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", &examples.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "30"])
        .current_dir(work.path())
        .env("PYTHONPATH", &hooks)
        .env("SCHEMATHESIS_HOOKS", "gatehouse_hooks")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(900), command.output())
        .await
        .context("schemathesis ran for more than 15 minutes")?
        .with_context(|| format!("running {}", st.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The summary, for the test log (and RELIABILITY.md).
    let summary: Vec<&str> = stdout
        .lines()
        .skip_while(|line| !line.contains("SUMMARY"))
        .collect();
    eprintln!("schemathesis summary:\n{}", summary.join("\n"));
    if !output.status.success() {
        bail!(
            "schemathesis failed ({}); reproduce with `st run {schema_url} --checks all \
             --exclude-checks positive_data_acceptance -n {examples} --seed {seed}` and \
             PYTHONPATH={} SCHEMATHESIS_HOOKS=gatehouse_hooks\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status,
            hooks.display()
        );
    }
    ensure!(
        stdout.contains("Tested:"),
        "schemathesis tested nothing:\n{stdout}"
    );

    // The control plane survived every request, answered none with a 5xx, and panicked nowhere.
    let logs = cp.logs();
    ensure!(
        !logs.contains("panicked"),
        "the control plane panicked:\n{logs}"
    );
    ensure!(
        !logs.contains("admin request failed"),
        "the control plane answered a 500:\n{logs}"
    );
    let status = cp.admin().get("/status").await?;
    ensure!(status.status == 200, "{status:?}");
    // Writes went through (the run is not only refusals): the version moved.
    ensure!(
        config_version(cp.admin()).await? > before,
        "schemathesis made no successful write"
    );
    // Nothing is half written: every stored entity reads back whole by its id, as listed.
    let mut read_back = 0;
    for collection in COLLECTIONS {
        let mut path = format!("/{collection}?size=1000");
        loop {
            let page = cp.admin().get(&path).await?;
            ensure!(page.status == 200, "GET {path}: {page:?}");
            for entity in page.body["data"].as_array().into_iter().flatten() {
                let id = entity["id"].as_str().context("an entity without id")?;
                let one = cp.admin().get(&format!("/{collection}/{id}")).await?;
                ensure!(
                    one.status == 200 && &one.body == entity,
                    "/{collection}/{id} reads back as {one:?}, listed as {entity}"
                );
                read_back += 1;
            }
            match page.body["next"].as_str() {
                Some(next) => path = next.to_owned(),
                None => break,
            }
        }
    }
    eprintln!("{read_back} entities read back whole after the run");
    Ok(())
}

/// The URL segment of every collection.
const COLLECTIONS: &[&str] = gatehouse_tests::COLLECTION_PATHS;
