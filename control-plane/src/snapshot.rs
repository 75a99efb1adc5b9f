//! The snapshot builder: LISTENs on `gatehouse_config`, reads the whole configuration at one
//! version, encodes it once, and publishes it to every data-plane stream through a `watch`
//! channel (each stream clones an `Arc`, nobody re-encodes).
//!
//! Bursts are coalesced: a notification that arrives within [`MIN_INTERVAL`] of the previous
//! build waits for the interval's end, and every notification that arrived meanwhile is served
//! by one build. The build reads the *current* version, so the last write is always delivered.
//! A build that fails is retried with a growing delay, and the version is also polled every
//! [`POLL_INTERVAL`] in case a notification was lost with its connection.
//!
//! Every control-plane replica runs its own builder on the same database; the snapshot of one
//! version has the same hash on all of them (see `gatehouse_shared::snapshot`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, NoTls};

use gatehouse_shared::snapshot::{self, EncodedSnapshot};
use gatehouse_shared::{model, x509};
use uuid::Uuid;

use crate::store::{Export, NOTIFY_CHANNEL, Slot, Store};

/// Shortest time between two snapshot builds.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How often the config version is read even without a notification.
const POLL_INTERVAL: Duration = Duration::from_secs(10);
/// First wait before reconnecting the LISTEN connection (doubling up to [`RECONNECT_MAX`]).
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between two LISTEN reconnection attempts: a database back from an outage is
/// listened to again (and the snapshot rebuilt) within this.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Longest time to open the LISTEN connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest wait before retrying a failed build.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The latest snapshot, `None` until the first build.
pub(crate) type Latest = watch::Receiver<Option<Arc<EncodedSnapshot>>>;

/// Counters of config sync on this node, for tests and status.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Snapshots built and published.
    pub(crate) built: AtomicU64,
    /// Snapshots sent to data planes, one per stream and snapshot.
    pub(crate) sent: AtomicU64,
}

// === impl Stats ===

impl Stats {
    /// `(built, sent)`.
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.built.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
        )
    }
}

/// Starts the builder; returns the channel carrying the latest snapshot.
pub(crate) fn spawn(store: Arc<Store>, database_url: String, stats: Arc<Stats>) -> Latest {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(run(store, database_url, tx, stats));
    rx
}

async fn run(
    store: Arc<Store>,
    database_url: String,
    tx: watch::Sender<Option<Arc<EncodedSnapshot>>>,
    stats: Arc<Stats>,
) {
    let mut last_build: Option<Instant> = None;
    let mut reconnect = RECONNECT_DELAY;
    loop {
        let (notified_tx, mut notified) = mpsc::unbounded_channel::<()>();
        let listener = match listen(&database_url, notified_tx).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(
                    %error,
                    retry_in_ms = reconnect.as_millis(),
                    "cannot LISTEN for config changes"
                );
                // Still publish what the database holds, if it can be read.
                if let Err(error) = build(&store, &tx, &stats).await {
                    tracing::debug!(%error, "snapshot build failed");
                }
                tokio::time::sleep(reconnect).await;
                reconnect = (reconnect * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        if reconnect > RECONNECT_DELAY {
            tracing::info!("listening for config changes again");
        }
        reconnect = RECONNECT_DELAY;
        // Anything may have changed while we were not listening.
        let mut pending = true;
        let mut retry = RETRY_MIN;
        loop {
            if pending {
                if let Some(last) = last_build {
                    tokio::time::sleep_until(last + MIN_INTERVAL).await;
                }
                // One build serves every notification received so far.
                while notified.try_recv().is_ok() {}
                let result = build(&store, &tx, &stats).await;
                last_build = Some(Instant::now());
                match result {
                    Ok(()) => {
                        pending = false;
                        retry = RETRY_MIN;
                    }
                    Err(error) => {
                        tracing::error!(%error, retry_in_ms = retry.as_millis(), "snapshot build failed");
                    }
                }
            }
            let wait = if pending { retry } else { POLL_INTERVAL };
            tokio::select! {
                notification = notified.recv() => {
                    if notification.is_none() {
                        break;
                    }
                }
                () = tokio::time::sleep(wait) => {
                    if pending {
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                }
            }
            pending = true;
        }
        tracing::warn!("LISTEN connection lost; reconnecting");
        drop(listener);
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// Opens a dedicated connection LISTENing on the config channel; each notification sends `()`.
/// The sender is dropped when the connection fails.
async fn listen(
    database_url: &str,
    notified: mpsc::UnboundedSender<()>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = database_url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let (client, mut connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) if n.channel() == NOTIFY_CHANNEL => {
                    if notified.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "LISTEN connection failed");
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await?;
    Ok(client)
}

/// Builds and publishes the snapshot of the current version, unless it is already published.
async fn build(
    store: &Store,
    tx: &watch::Sender<Option<Arc<EncodedSnapshot>>>,
    stats: &Stats,
) -> Result<(), String> {
    let started = Instant::now();
    let published = tx
        .borrow()
        .as_ref()
        .and_then(|current| i64::try_from(current.version).ok());
    let Some(export) = store
        .export(published)
        .await
        .map_err(|e| format!("cannot read the configuration: {}", e.detail()))?
    else {
        return Ok(());
    };
    let read_ms = started.elapsed().as_secs_f64() * 1000.0;
    // Converting and encoding (hashing, compressing) is CPU work proportional to the config:
    // keep it off the async workers.
    let encoded = tokio::task::spawn_blocking(move || encode(export))
        .await
        .map_err(|e| format!("snapshot encoding task failed: {e}"))??;
    let fresh = tx
        .borrow()
        .as_ref()
        .is_none_or(|current| current.version < encoded.version);
    if fresh {
        tracing::info!(
            version = encoded.version,
            hash = %encoded.hash,
            bytes = encoded.wire_size(),
            config_bytes = encoded.config_size(),
            read_ms,
            took_ms = started.elapsed().as_secs_f64() * 1000.0,
            "snapshot built"
        );
        stats.built.fetch_add(1, Ordering::Relaxed);
        crate::metrics::PROPAGATION.published(encoded.version, started.into_std());
        tx.send_replace(Some(Arc::new(encoded)));
    }
    Ok(())
}

fn encode(export: Export) -> Result<EncodedSnapshot, String> {
    let version = u64::try_from(export.version).map_err(|_| "negative config version")?;
    let mut config: model::Config =
        serde_json::from_value(serde_json::Value::Object(export.collections)).map_err(|e| {
            format!(
                "stored configuration does not fit the model: {}",
                redact_long_strings(&e.to_string())
            )
        })?;
    attach_staples(&mut config, &export.ocsp_staples);
    Ok(snapshot::encode(&config, version))
}

/// Puts each OCSP staple on its certificate, only while the chain's leaf is the one the staple
/// is about (a replaced certificate goes without until the stapler fetched for the new leaf).
/// Depends on the stored rows only, so every replica builds the same snapshot.
fn attach_staples(config: &mut model::Config, staples: &HashMap<(Uuid, Slot), (String, Vec<u8>)>) {
    if staples.is_empty() {
        return;
    }
    let leaf_sha256 = |pem: &str| {
        x509::parse_certificates(pem)
            .ok()
            .and_then(|chain| chain.first().map(|leaf| x509::sha256_hex(leaf)))
    };
    for certificate in &mut config.certificates {
        if let Some((leaf, response)) = staples.get(&(certificate.id, Slot::Cert))
            && *leaf == certificate.fingerprint_sha256
        {
            certificate.ocsp_response = Some(response.clone());
        }
        if let Some((leaf, response)) = staples.get(&(certificate.id, Slot::CertAlt))
            && certificate
                .cert_alt
                .as_deref()
                .and_then(leaf_sha256)
                .as_ref()
                == Some(leaf)
        {
            certificate.ocsp_response_alt = Some(response.clone());
        }
    }
}

/// Replaces every quoted string longer than 64 bytes by its length: serde quotes the values
/// it refuses, and a stored value may be a certificate or a private key.
fn redact_long_strings(text: &str) -> String {
    const LONGEST: usize = 64;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..=start]);
        rest = &rest[start + 1..];
        match rest.find('"') {
            Some(end) => {
                if end > LONGEST {
                    out.push_str(&format!("<{end} bytes>"));
                } else {
                    out.push_str(&rest[..end]);
                }
                out.push('"');
                rest = &rest[end + 1..];
            }
            None => {
                out.push_str(rest);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_quoted_values_are_redacted() {
        let key = "-----BEGIN PRIVATE KEY-----".repeat(4);
        let text = format!("invalid value: string \"{key}\", expected \"a uuid\"");
        assert_eq!(
            redact_long_strings(&text),
            "invalid value: string \"<108 bytes>\", expected \"a uuid\""
        );
        assert_eq!(redact_long_strings("no quotes"), "no quotes");
        assert_eq!(redact_long_strings("odd \"quote"), "odd \"quote");
    }
}
