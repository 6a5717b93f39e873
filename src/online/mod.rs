//! Online learning for the recommender: a feedback topic of ratings and implicit events
//! folded into per-user state that scoring consults on top of the immutable model.
//!
//! - `foldin`: the math (a user's bias and factors re-solved with the item factors fixed);
//! - `state`: the learned state, a pure function of (model, feedback applied), with the
//!   feedback offsets it reflects;
//! - `checkpoint`: the state on disk, written atomically with those offsets;
//! - `reject`: why a feedback record is unusable; `dead_letter`: where it goes then;
//! - `feedback`: the thread that consumes the feedback topic, applies, publishes and
//!   checkpoints;
//! - `eval`: the prequential (test-then-learn) evaluation of frozen vs online.
//!
//! The served model stays the immutable `Arc` the store swaps; what is learned lives in
//! `Overlay`, a map from user id to an `Arc<Learned>` that the feedback thread replaces
//! entry by entry and scoring reads once per batch. Item factors and biases stay fixed:
//! every instance then learns the same thing from the same feedback, a user's state is
//! re-solvable from their own log alone (which is what makes checkpoint replay and model
//! reloads exact), and a stream of feedback cannot drift the catalogue away from the
//! offline model between retrains.

pub mod checkpoint;
pub mod dead_letter;
pub mod eval;
pub mod feedback;
pub mod foldin;
pub mod reject;
pub mod state;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

use crate::metrics::{register, Metrics};
pub use state::{FeedbackEvent, Learned, OnlineConfig, OnlineState};

/// The learned users scoring consults, and the online learner's metrics.
pub struct Overlay {
    users: RwLock<HashMap<i64, Arc<Learned>>>,
    pub metrics: OnlineMetrics,
}

impl Overlay {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            users: RwLock::new(HashMap::new()),
            metrics: OnlineMetrics::new(metrics),
        }
    }

    /// The learned state of each user, in order: one read lock for the whole batch.
    pub fn lookup(&self, uids: impl Iterator<Item = i64>) -> Vec<Option<Arc<Learned>>> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        if users.is_empty() {
            return uids.map(|_| None).collect();
        }
        uids.map(|uid| users.get(&uid).cloned()).collect()
    }

    /// Replaces the entries of `uids` with the state's (removing those it no longer has).
    /// Holds the write lock for at most `PUBLISH_CHUNK` map updates at a time, so that a
    /// batch waiting to read waits for no more than that.
    pub fn publish(&self, state: &OnlineState, uids: &[i64]) {
        for chunk in uids.chunks(PUBLISH_CHUNK) {
            let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
            for uid in chunk {
                match state.learned(*uid) {
                    Some(learned) => {
                        users.insert(*uid, Arc::clone(learned));
                    }
                    None => {
                        users.remove(uid);
                    }
                }
            }
        }
    }

    /// Replaces everything with the state's (start-up, model change).
    pub fn publish_all(&self, state: &OnlineState) {
        let stale: Vec<i64> = {
            let users = self.users.read().unwrap_or_else(|p| p.into_inner());
            users
                .keys()
                .filter(|uid| state.learned(**uid).is_none())
                .copied()
                .collect()
        };
        let mut uids: Vec<i64> = state.all_learned().map(|(uid, _)| uid).collect();
        uids.extend(stale);
        self.publish(state, &uids);
    }

    pub fn len(&self) -> usize {
        self.users.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Most map updates one write-lock hold makes.
pub const PUBLISH_CHUNK: usize = 256;

pub struct OnlineMetrics {
    /// Feedback records by result: applied, replayed (already in the state), rejected.
    pub feedback_events: IntCounterVec,
    /// Feedback records dead-lettered, by reason code.
    pub feedback_dead_lettered: IntCounterVec,
    pub users_folded_in: IntCounter,
    pub users: IntGauge,
    pub users_evicted: IntCounter,
    pub state_bytes: IntGauge,
    pub feedback_lag: IntGauge,
    pub checkpoint_timestamp: prometheus::Gauge,
    pub checkpoint_age: prometheus::Gauge,
    pub checkpoint_bytes: IntGauge,
    pub checkpoint_failures: IntCounter,
}

impl OnlineMetrics {
    fn new(metrics: &Metrics) -> Self {
        let r = metrics.registry();
        let ns = |name: &str| format!("streamscore_{name}");
        let m = Self {
            feedback_events: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        ns("feedback_events_total"),
                        "Feedback records read, by result (applied, replayed, rejected)",
                    ),
                    &["result"],
                ),
            ),
            feedback_dead_lettered: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        ns("feedback_dead_lettered_total"),
                        "Feedback records sent to the dead-letter topic, by reason",
                    ),
                    &["reason"],
                ),
            ),
            users_folded_in: register(
                r,
                IntCounter::new(
                    ns("online_users_folded_in_total"),
                    "User re-solves from feedback (one per applied event)",
                ),
            ),
            users: register(
                r,
                IntGauge::new(ns("online_users"), "Users with learned state"),
            ),
            users_evicted: register(
                r,
                IntCounter::new(
                    ns("online_users_evicted_total"),
                    "Users forgotten to stay under --online-max-users",
                ),
            ),
            state_bytes: register(
                r,
                IntGauge::new(
                    ns("online_state_bytes"),
                    "Approximate memory held by the learned state",
                ),
            ),
            feedback_lag: register(
                r,
                IntGauge::new(
                    ns("feedback_lag_records"),
                    "Feedback records not yet applied (high watermark minus position, all partitions)",
                ),
            ),
            checkpoint_timestamp: register(
                r,
                prometheus::Gauge::new(
                    ns("checkpoint_timestamp_seconds"),
                    "Unix time of the last checkpoint of the learned state",
                ),
            ),
            checkpoint_age: register(
                r,
                prometheus::Gauge::new(
                    ns("checkpoint_age_seconds"),
                    "Seconds since the last checkpoint of the learned state",
                ),
            ),
            checkpoint_bytes: register(
                r,
                IntGauge::new(ns("checkpoint_bytes"), "Size of the last checkpoint file"),
            ),
            checkpoint_failures: register(
                r,
                IntCounter::new(
                    ns("checkpoint_failures_total"),
                    "Checkpoints that could not be written (the previous one stays)",
                ),
            ),
        };
        for result in ["applied", "replayed", "rejected"] {
            m.feedback_events.with_label_values(&[result]);
        }
        m
    }
}
