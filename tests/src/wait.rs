//! Waiting for a condition with a deadline, instead of sleeping a fixed time.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::time::Instant;

/// Scales every patience of the cluster tests, e.g. `GATEHOUSE_TEST_PATIENCE_SECS=60` on a
/// slow machine (default 20).
const ENV_PATIENCE: &str = "GATEHOUSE_TEST_PATIENCE_SECS";
/// The default patience, generous enough for debug builds under parallel tests on 2 cores.
const DEFAULT_PATIENCE: Duration = Duration::from_secs(20);
/// How often [`wait_until`] probes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// How long a test waits for something that should happen "soon": `$GATEHOUSE_TEST_PATIENCE_SECS`
/// seconds, default 20.
pub fn patience() -> Duration {
    std::env::var(ENV_PATIENCE)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|secs| *secs > 0)
        .map_or(DEFAULT_PATIENCE, Duration::from_secs)
}

/// Calls `probe` every [`POLL_INTERVAL`] until it returns `Ok(Some(value))`, and returns that
/// value; fails after `patience`, naming `what` and the last probe error, if any.
///
/// A probe error does not end the wait (a process may be restarting); only the deadline does.
///
/// ```no_run
/// # async fn example(dp: &gatehouse_tests::DataPlane) -> anyhow::Result<()> {
/// use gatehouse_tests::{patience, wait_until};
/// let version = wait_until("a config version", patience(), || async {
///     Ok(dp.status().await?["config_version"].as_i64())
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn wait_until<T, F, Fut>(what: &str, patience: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + patience;
    let mut last_error;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => last_error = None,
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => bail!("{what}: not reached within {patience:?}; last error: {e:#}"),
                None => bail!("{what}: not reached within {patience:?}"),
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
