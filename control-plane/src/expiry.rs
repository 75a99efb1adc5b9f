//! Expiry warnings: every `--cert-expiry-check-interval` the control plane looks for
//! certificates and CA certificates that are expired or whose `not_after` falls within
//! `--cert-expiry-warning`, and logs each one at most once a day (not at every look).
//! `/clustering/status` shows the counts (`certificate_expiry`).

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::config::ExpirySettings;
use crate::store::{Store, unix_now};

/// Least time between two warnings about one certificate, in seconds.
const REPEAT_AFTER: i64 = 86_400;

/// When each certificate was last warned about.
#[derive(Debug, Default)]
pub(crate) struct Warned {
    last: HashMap<Uuid, i64>,
}

// === impl Warned ===

impl Warned {
    /// Whether certificate `id` is to be warned about at `now` (and records it if so).
    pub(crate) fn due(&mut self, id: Uuid, now: i64) -> bool {
        match self.last.get(&id) {
            Some(last) if now - last < REPEAT_AFTER => false,
            _ => {
                self.last.insert(id, now);
                true
            }
        }
    }

    /// Forgets certificates no longer expiring (renewed or deleted).
    pub(crate) fn keep_only(&mut self, ids: &[Uuid]) {
        self.last.retain(|id, _| ids.contains(id));
    }
}

/// Runs the periodic look until the process ends.
pub(crate) fn spawn(store: Arc<Store>, settings: ExpirySettings) {
    tokio::spawn(async move {
        let mut warned = Warned::default();
        let mut tick = tokio::time::interval(settings.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = unix_now();
            let expiring = match store
                .expiring(now.saturating_add(settings.warning_window))
                .await
            {
                Ok(expiring) => expiring,
                Err(error) => {
                    tracing::warn!(error = %error.detail(), "expiry check failed");
                    continue;
                }
            };
            let ids: Vec<Uuid> = expiring.iter().map(|e| e.id).collect();
            warned.keep_only(&ids);
            for cert in expiring {
                if !warned.due(cert.id, now) {
                    continue;
                }
                let expires_in_days = (cert.not_after - now) / 86_400;
                if cert.not_after <= now {
                    tracing::warn!(
                        collection = cert.collection,
                        id = %cert.id,
                        subject = %cert.subject,
                        not_after = cert.not_after,
                        "certificate expired"
                    );
                } else {
                    tracing::warn!(
                        collection = cert.collection,
                        id = %cert.id,
                        subject = %cert.subject,
                        not_after = cert.not_after,
                        expires_in_days,
                        "certificate expires within the warning window"
                    );
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_certificate_is_warned_about_once_a_day() {
        let mut warned = Warned::default();
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        assert!(warned.due(a, 1_000));
        assert!(!warned.due(a, 1_060), "not at the next look");
        assert!(warned.due(b, 1_060));
        assert!(!warned.due(a, 1_000 + REPEAT_AFTER - 1));
        assert!(warned.due(a, 1_000 + REPEAT_AFTER), "again a day later");
        // Renewed, then expiring again: warned at once.
        warned.keep_only(&[b]);
        assert!(warned.due(a, 1_000 + REPEAT_AFTER + 1));
    }
}
