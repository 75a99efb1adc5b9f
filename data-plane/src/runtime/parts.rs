//! What the data plane compiles per runtime besides the runtime itself, and the apply step
//! that builds all of it before a runtime is swapped in.
//!
//! The proxy and stream listeners each own parts built from a runtime: the plugin plan, the
//! TLS server configurations, the balancer rings, the upstream TLS settings and the stream
//! router. Each registers with [`SharedRuntime`](super::SharedRuntime) as a [`Part`]; the
//! apply step ([`SharedRuntime::apply`](super::SharedRuntime::apply)) asks every part to
//! [`Part::prepare`] the new runtime (off the async threads) and swaps the runtime in only
//! when all of them succeed. So the first request or handshake after a swap finds
//! everything built, and a runtime some part cannot build is rejected whole while the
//! previous one keeps serving (DESIGN: "Apply is atomic or not at all").
//!
//! A part keeps what it built in a [`PerRuntime`]: the few most recent runtimes' builds,
//! looked up by version and hash. Requests still running on the previous runtime during a
//! swap find theirs there; a runtime that was never prepared (unit tests, a request that
//! outlived two swaps) is built on first use, with the same code and the same outcome.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use arc_swap::ArcSwap;

use super::Runtime;

/// How many runtimes' builds a [`PerRuntime`] keeps: the one being applied, the one serving,
/// and one more for requests that straddle two quick swaps.
const KEPT: usize = 3;

/// A part of the data plane compiled per runtime.
pub(crate) trait Part: Send + Sync {
    /// Builds this part for `runtime` and keeps it for the runtime's first use. An error
    /// rejects the runtime (the text says which entity and why, never key material).
    /// Problems that do not stop the runtime from being applied safely (a refusing plugin
    /// instance, say) are pushed to `warnings`. Blocking: called off the async threads.
    fn prepare(&self, runtime: &Arc<Runtime>, warnings: &mut Vec<String>) -> Result<(), String>;
}

/// The registered parts, in registration order (a part may use what an earlier one built
/// for the same runtime: the TLS terminator uses the plugin plan).
#[derive(Default)]
pub(crate) struct Parts {
    parts: Mutex<Vec<Weak<dyn Part>>>,
}

/// A value built from a runtime, for the last few runtimes.
pub(crate) struct PerRuntime<T> {
    recent: ArcSwap<Vec<Entry<T>>>,
}

/// One runtime's build: its version, hash and value.
struct Entry<T> {
    version: u64,
    hash: Arc<str>,
    value: Arc<T>,
}

// === impl Parts ===

impl Parts {
    /// Adds `part`; it is prepared for every runtime applied from now on.
    pub(crate) fn register(&self, part: Weak<dyn Part>) {
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        parts.retain(|p| p.strong_count() > 0);
        parts.push(part);
    }

    /// Prepares every live part for `runtime`, in registration order; the first error
    /// stops and is returned.
    pub(crate) fn prepare(&self, runtime: &Arc<Runtime>) -> Result<Vec<String>, String> {
        let parts: Vec<Arc<dyn Part>> = self
            .parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut warnings = Vec::new();
        for part in parts {
            part.prepare(runtime, &mut warnings)?;
        }
        warnings.sort();
        warnings.dedup();
        Ok(warnings)
    }
}

// === impl PerRuntime ===

impl<T> Default for PerRuntime<T> {
    fn default() -> Self {
        Self {
            recent: ArcSwap::from_pointee(Vec::new()),
        }
    }
}

impl<T> PerRuntime<T> {
    /// The value built for `runtime`, if it is still kept.
    pub(crate) fn get(&self, runtime: &Runtime) -> Option<Arc<T>> {
        self.recent
            .load()
            .iter()
            .find(|e| e.version == runtime.version() && *e.hash == *runtime.hash())
            .map(|e| e.value.clone())
    }

    /// The most recently inserted value (whatever its runtime).
    pub(crate) fn newest(&self) -> Option<Arc<T>> {
        self.recent.load().first().map(|e| e.value.clone())
    }

    /// Keeps `value` as `runtime`'s, dropping the oldest beyond [`KEPT`].
    pub(crate) fn insert(&self, runtime: &Runtime, value: Arc<T>) {
        let hash: Arc<str> = Arc::from(runtime.hash());
        self.recent.rcu(|recent| {
            let mut next = Vec::with_capacity(KEPT);
            next.push(Entry {
                version: runtime.version(),
                hash: hash.clone(),
                value: value.clone(),
            });
            next.extend(
                recent
                    .iter()
                    .filter(|e| !(e.version == runtime.version() && e.hash == hash))
                    .take(KEPT - 1)
                    .map(|e| Entry {
                        version: e.version,
                        hash: e.hash.clone(),
                        value: e.value.clone(),
                    }),
            );
            next
        });
    }

    /// The value of `runtime`: the kept one, else `build`'s (kept for the next use).
    pub(crate) fn get_or_insert_with(
        &self,
        runtime: &Runtime,
        build: impl FnOnce() -> T,
    ) -> Arc<T> {
        if let Some(found) = self.get(runtime) {
            return found;
        }
        let built = Arc::new(build());
        self.insert(runtime, built.clone());
        built
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn runtime(version: u64, hash: &str) -> Runtime {
        Runtime::empty().with_identity(version, hash)
    }

    #[test]
    fn keeps_the_last_three_runtimes() {
        let kept = PerRuntime::<u64>::default();
        for v in 1..=4 {
            kept.insert(&runtime(v, &format!("h{v}")), Arc::new(v));
        }
        assert!(kept.get(&runtime(1, "h1")).is_none());
        for v in 2..=4 {
            assert_eq!(kept.get(&runtime(v, &format!("h{v}"))).as_deref(), Some(&v));
        }
        assert_eq!(kept.newest().as_deref(), Some(&4));
        // Same version, other hash: another runtime.
        assert!(kept.get(&runtime(4, "other")).is_none());
    }

    #[test]
    fn builds_once_per_runtime() {
        let kept = PerRuntime::<u64>::default();
        let mut builds = 0;
        for _ in 0..3 {
            kept.get_or_insert_with(&runtime(7, "h"), || {
                builds += 1;
                7
            });
        }
        assert_eq!(builds, 1);
    }

    struct Failing;
    impl Part for Failing {
        fn prepare(&self, _: &Arc<Runtime>, warnings: &mut Vec<String>) -> Result<(), String> {
            warnings.push("seen".to_owned());
            Err("cannot build".to_owned())
        }
    }

    struct Warning(&'static str);
    impl Part for Warning {
        fn prepare(&self, _: &Arc<Runtime>, warnings: &mut Vec<String>) -> Result<(), String> {
            warnings.push(self.0.to_owned());
            Ok(())
        }
    }

    #[test]
    fn the_first_failing_part_rejects_and_dropped_parts_are_skipped() {
        let parts = Parts::default();
        let b: Arc<dyn Part> = Arc::new(Warning("b"));
        let a: Arc<dyn Part> = Arc::new(Warning("a"));
        parts.register(Arc::downgrade(&b));
        parts.register(Arc::downgrade(&a));
        parts.register(Arc::downgrade(&b));
        assert_eq!(
            parts.prepare(&Arc::new(runtime(1, "h"))),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        let failing: Arc<dyn Part> = Arc::new(Failing);
        parts.register(Arc::downgrade(&failing));
        assert_eq!(
            parts.prepare(&Arc::new(runtime(1, "h"))),
            Err("cannot build".to_owned())
        );
        drop(failing);
        assert!(parts.prepare(&Arc::new(runtime(1, "h"))).is_ok());
    }

    #[test]
    fn a_runtime_a_part_cannot_build_is_not_swapped_in() {
        let shared = super::super::SharedRuntime::new(runtime(1, "h1"));
        let warning: Arc<dyn Part> = Arc::new(Warning("made safe"));
        shared.register(Arc::downgrade(&warning));
        let applied = shared.apply(Arc::new(runtime(2, "h2"))).unwrap();
        assert_eq!(applied.previous.version(), 1);
        assert_eq!(applied.warnings, vec!["made safe".to_owned()]);
        assert_eq!(shared.load().version(), 2);

        let failing: Arc<dyn Part> = Arc::new(Failing);
        shared.register(Arc::downgrade(&failing));
        assert_eq!(
            shared.apply(Arc::new(runtime(3, "h3"))).unwrap_err(),
            "cannot build"
        );
        assert_eq!(
            shared.load().version(),
            2,
            "the previous runtime keeps serving"
        );
    }
}
