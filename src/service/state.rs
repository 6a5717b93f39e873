//! The service's state, owned in one place and handed to every task that needs it: the
//! model store, the metrics, the partitions this instance owns, and whether the pipeline can
//! still make progress. The pipeline writes it, the side port reads it, and a reload goes
//! through it, so neither side has to reach into the other.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tracing::{info, warn};

use crate::metrics::{Metrics, ObserveMetrics};
use crate::model::{LoadedModel, ModelError, ModelStore};
use crate::online::Overlay;
use crate::stats::observe::About;
use crate::stats::{Observer, StatsConfig};

pub struct ServiceState {
    pub store: ModelStore,
    pub metrics: Metrics,
    pub assignment: Assignment,
    pub health: Health,
    /// Windowed statistics, drift, the status page's figures and the shadow model.
    pub observe: Observer,
    /// What the recommender learned from feedback, when `--feedback-topic` is set.
    pub online: OnceLock<Arc<Overlay>>,
}

impl ServiceState {
    pub fn new(store: ModelStore) -> Arc<Self> {
        Self::with_stats(store, StatsConfig::default(), About::default())
    }

    pub fn with_stats(store: ModelStore, stats: StatsConfig, about: About) -> Arc<Self> {
        let metrics = Metrics::new();
        let model = store.current();
        metrics.set_model(&model.kind().to_string(), &model.version);
        let observe = Observer::new(stats, about, ObserveMetrics::new(metrics.registry()));
        Arc::new(Self {
            store,
            metrics,
            assignment: Assignment::default(),
            health: Health::default(),
            observe,
            online: OnceLock::new(),
        })
    }

    /// Starts shadowing with a file in the model directory, refused by the rules of a
    /// reload (same kind and inputs as the served model).
    pub fn load_shadow(&self, path: &std::path::Path) -> Result<Arc<LoadedModel>, ModelError> {
        let candidate = Arc::new(self.store.load_candidate(path)?);
        self.observe.shadow.start(Arc::clone(&candidate))?;
        Ok(candidate)
    }

    /// Makes the shadow the served model, atomically, under the rules of a reload; the
    /// shadow stops. Without a shadow, or when refused, nothing changes.
    pub fn promote(&self) -> Result<Arc<LoadedModel>, ModelError> {
        let Some(candidate) = self.observe.shadow.model() else {
            return Err(ModelError::Invalid(
                "there is no shadow model to promote".into(),
            ));
        };
        match self.store.replace_shared(Arc::clone(&candidate)) {
            Ok(model) => {
                self.observe.shadow.stop();
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                self.metrics
                    .set_model(&model.kind().to_string(), &model.version);
                info!(kind = %model.kind(), version = %model.version, "shadow model promoted");
                Ok(model)
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failed"]).inc();
                warn!(error = %e, "promotion refused; the served model keeps scoring");
                Err(e)
            }
        }
    }

    /// The learned-users overlay scoring consults, if online learning is on.
    pub fn overlay(&self) -> Option<&Overlay> {
        self.online.get().map(|o| &**o)
    }

    /// Reloads the model (the configured file, or `path` in its directory) and records the
    /// outcome; shared by `POST /model/reload` and SIGHUP.
    pub fn reload(&self, path: Option<&std::path::Path>) -> Result<Arc<LoadedModel>, ModelError> {
        match self.store.reload(path) {
            Ok(model) => {
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                self.metrics
                    .set_model(&model.kind().to_string(), &model.version);
                info!(kind = %model.kind(), version = %model.version, "model reloaded");
                Ok(model)
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failed"]).inc();
                warn!(error = %e, "model reload refused; the previous model keeps scoring");
                Err(e)
            }
        }
    }

    /// Ready: the group has answered and nothing has stopped the pipeline.
    pub fn ready(&self) -> Result<(), String> {
        if let Some(reason) = self.health.failure() {
            return Err(reason);
        }
        if let Some(reason) = self.health.degraded() {
            return Err(reason);
        }
        if !self.assignment.received() {
            return Err("waiting for the consumer group to assign partitions".into());
        }
        Ok(())
    }
}

/// Which input partitions this instance owns. The rebalance callbacks write it; the batcher
/// and `/readyz` read it.
#[derive(Default)]
pub struct Assignment {
    partitions: Mutex<BTreeSet<i32>>,
    /// Bumped on every change, so a reader can tell that its view may be stale.
    generation: AtomicU64,
    /// Set by the first assignment, even an empty one: the group has answered.
    received: AtomicBool,
}

impl Assignment {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.lock().contains(&partition)
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    pub fn partitions(&self) -> Vec<i32> {
        self.lock().iter().copied().collect()
    }

    pub fn received(&self) -> bool {
        self.received.load(Ordering::Acquire)
    }

    pub fn assign(&self, partitions: impl IntoIterator<Item = i32>) {
        self.lock().extend(partitions);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.received.store(true, Ordering::Release);
    }

    pub fn revoke(&self, partitions: impl IntoIterator<Item = i32>) {
        let mut owned = self.lock();
        for p in partitions {
            owned.remove(&p);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<i32>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Set once when the pipeline hits an error it cannot recover from: readiness goes false
/// at that moment, before the process has finished shutting down.
#[derive(Default)]
pub struct Health {
    failure: Mutex<Option<String>>,
    /// Mirrors `failure.is_some()`: the scoring loop asks at every poll, so the question
    /// must cost a load, not a lock and a copy of the reason.
    failed: AtomicBool,
    /// Not ready for now, but still trying (transactions aborting in a row): clears itself.
    degraded: Mutex<Option<String>>,
}

impl Health {
    pub fn fail(&self, reason: impl Into<String>) {
        let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| reason.into());
        self.failed.store(true, Ordering::Release);
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the service not ready while `reason` holds; `None` clears it.
    pub fn set_degraded(&self, reason: Option<String>) {
        *self.degraded.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    pub fn degraded(&self) -> Option<String> {
        self.degraded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_tracks_changes_and_first_answer() {
        let a = Assignment::default();
        assert!(!a.received());
        let g0 = a.generation();
        a.assign([]);
        assert!(a.received(), "an empty assignment is still an answer");
        a.assign([0, 2]);
        a.revoke([0]);
        assert_eq!(a.partitions(), vec![2]);
        assert!(a.generation() >= g0 + 3);
    }

    #[test]
    fn the_first_failure_is_kept() {
        let h = Health::default();
        assert_eq!(h.failure(), None);
        assert!(!h.has_failed());
        h.fail("fenced");
        assert!(h.has_failed());
        h.fail("later");
        assert_eq!(h.failure().as_deref(), Some("fenced"));
    }
}
