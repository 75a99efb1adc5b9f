//! A bounded cache whose misses are single-flight: concurrent lookups of one key share one
//! fetch, so a burst of handshakes does not stampede a CRL server or OCSP responder.
//!
//! Successful answers are kept until the caller's time to live or the answer's own expiry
//! (nextUpdate), whichever comes first; the time to live is the caller's so that plugins with
//! different `cache_ttl` can share the cache. Failures are shared by the lookups waiting on that
//! fetch, then dropped: the next lookup fetches again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

/// The cache; `V` is the checked answer.
pub(super) struct FlightCache<K, V> {
    slots: Mutex<HashMap<K, Arc<Slot<V>>>>,
    capacity: usize,
}

/// One key: in flight while the cell is empty.
struct Slot<V> {
    cell: OnceCell<Result<Entry<V>, String>>,
}

struct Entry<V> {
    value: Arc<V>,
    fetched: Instant,
    /// The answer's own expiry.
    expires: Option<Instant>,
}

// === impl FlightCache ===

impl<K: Eq + Hash + Clone, V> FlightCache<K, V> {
    /// A cache of at most about `capacity` keys (keys in flight are never dropped).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The answer for `key`: cached if fetched less than `ttl` ago and not expired, else the one
    /// of the fetch in flight, else `fetch()`'s (a value and its expiry).
    ///
    /// If the caller is dropped while it runs `fetch`, a waiting lookup takes over with its own.
    pub(super) async fn get<F, Fut>(
        &self,
        key: &K,
        ttl: Duration,
        fetch: F,
    ) -> Result<Arc<V>, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Option<Instant>), String>>,
    {
        let slot = self.slot(key, ttl);
        let fetched = slot
            .cell
            .get_or_init(|| async {
                let (value, expires) = fetch().await?;
                Ok(Entry {
                    value: Arc::new(value),
                    fetched: Instant::now(),
                    expires,
                })
            })
            .await;
        match fetched {
            Ok(entry) => Ok(entry.value.clone()),
            Err(e) => Err(e.clone()),
        }
    }

    /// How many keys are held.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The slot to wait on: the current one if usable, else a new (empty) one.
    fn slot(&self, key: &K, ttl: Duration) -> Arc<Slot<V>> {
        let now = Instant::now();
        let mut slots = self.lock();
        if let Some(slot) = slots.get(key)
            && slot.usable(now, ttl)
        {
            return slot.clone();
        }
        if slots.len() >= self.capacity && !slots.contains_key(key) {
            evict(&mut slots, now, self.capacity);
        }
        let slot = Arc::new(Slot {
            cell: OnceCell::new(),
        });
        slots.insert(key.clone(), slot.clone());
        slot
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<Slot<V>>>> {
        // The map stays consistent even if a holder panicked (no multi-step updates).
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Slot ===

impl<V> Slot<V> {
    /// In flight, or fetched successfully less than `ttl` ago and not expired.
    fn usable(&self, now: Instant, ttl: Duration) -> bool {
        match self.cell.get() {
            None => true,
            Some(Ok(entry)) => {
                entry.fetched.checked_add(ttl).is_none_or(|end| now < end)
                    && entry.expires.is_none_or(|end| now < end)
            }
            Some(Err(_)) => false,
        }
    }
}

/// Makes room for one key: drops failures and expired answers, then the oldest answers.
fn evict<K: Eq + Hash + Clone, V>(
    slots: &mut HashMap<K, Arc<Slot<V>>>,
    now: Instant,
    capacity: usize,
) {
    slots.retain(|_, slot| match slot.cell.get() {
        None => true,
        Some(Ok(entry)) => entry.expires.is_none_or(|end| now < end),
        Some(Err(_)) => false,
    });
    while slots.len() >= capacity {
        let oldest = slots
            .iter()
            .filter_map(|(key, slot)| match slot.cell.get() {
                Some(Ok(entry)) => Some((entry.fetched, key)),
                _ => None,
            })
            .min_by_key(|(fetched, _)| *fetched)
            .map(|(_, key)| key.clone());
        match oldest {
            Some(key) => {
                slots.remove(&key);
            }
            // Everything is in flight: go over capacity (bounded by concurrent checks).
            None => break,
        }
    }
}
