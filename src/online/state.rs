//! The learned state: every user's feedback since the model was trained, their solved
//! factors, and the feedback offsets it reflects.
//!
//! The state is a pure function of (the model, the feedback applied so far): a user's
//! factors are solved from their whole kept log every time it changes, never nudged
//! incrementally, so replaying the same events from a checkpoint gives bit-identical
//! factors, and a new model is taken on by solving every log again against it.
//!
//! Each partition's next offset is kept with the state, and an event below it is skipped:
//! what the state reflects and where reading resumes can never disagree, so a replay
//! applies nothing twice and skips nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::foldin::{known_precision, solve_user_with, Evidence, Solved};
use crate::model::Recommender;

/// Tuning of the online learner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OnlineConfig {
    /// λ of the fold-in's least squares.
    pub reg: f64,
    /// An implicit event (no rating) counts as a rating of `μ + implicit_boost`.
    pub implicit_boost: f32,
    /// Users kept; beyond it the least recently updated user is forgotten (they fall back
    /// to the model's own view of them).
    pub max_users: usize,
    /// Items kept per user; beyond it the oldest event is forgotten.
    pub max_events_per_user: usize,
    /// Ratings outside `[min, max]` are dead-lettered, not learned from.
    pub rating_range: (f32, f32),
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            reg: 3.0,
            implicit_boost: 1.0,
            max_users: 100_000,
            max_events_per_user: 500,
            rating_range: (1.0, 5.0),
        }
    }
}

/// One feedback record: a rating, or an implicit event (a view, a click) without one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackEvent {
    pub uid: i64,
    pub item: i64,
    #[serde(default)]
    pub rating: Option<f32>,
}

/// What scoring sees of one user: published by the feedback thread, read per batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Learned {
    /// The model the factors were solved against; scoring on another model uses only `seen`.
    pub model_version: Arc<str>,
    /// `None` when nothing usable was learned (only items the model does not know).
    pub solved: Option<Solved>,
    /// Every item id in the user's kept log, ascending.
    pub seen: Box<[i64]>,
}

#[derive(Debug, Clone, PartialEq)]
struct UserLog {
    /// One entry per item, oldest first; a new event for an item replaces its old one.
    events: Vec<(i64, Option<f32>)>,
    /// `applied` at this user's last event: the eviction order.
    touched: u64,
    /// A known user's prior precision under the current model (`foldin::known_precision`),
    /// kept so that each event costs a solve over the new ratings only, not a pass over
    /// the user's whole training history; cleared when the model changes.
    prior: Option<Box<[f64]>>,
}

/// The outcome of offering one event to the state.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Already reflected (its offset is below the partition's next one).
    AlreadyApplied,
    /// Folded in; `evicted` is the user forgotten to make room, if any.
    FoldedIn { uid: i64, evicted: Option<i64> },
}

pub struct OnlineState {
    config: OnlineConfig,
    model_version: Arc<str>,
    users: HashMap<i64, UserLog>,
    /// `touched` → user, oldest first.
    by_touch: BTreeMap<u64, i64>,
    learned: HashMap<i64, Arc<Learned>>,
    /// Next offset to apply, per partition of the feedback topic.
    offsets: BTreeMap<i32, i64>,
    /// Events applied since the state began (across restarts: it is checkpointed).
    applied: u64,
    evicted: u64,
    solve_failures: u64,
}

impl OnlineState {
    pub fn new(config: OnlineConfig, model_version: &str) -> Self {
        Self {
            config,
            model_version: Arc::from(model_version),
            users: HashMap::new(),
            by_touch: BTreeMap::new(),
            learned: HashMap::new(),
            offsets: BTreeMap::new(),
            applied: 0,
            evicted: 0,
            solve_failures: 0,
        }
    }

    pub fn config(&self) -> &OnlineConfig {
        &self.config
    }

    pub fn model_version(&self) -> &str {
        &self.model_version
    }

    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn solve_failures(&self) -> u64 {
        self.solve_failures
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn learned(&self, uid: i64) -> Option<&Arc<Learned>> {
        self.learned.get(&uid)
    }

    pub fn all_learned(&self) -> impl Iterator<Item = (i64, &Arc<Learned>)> {
        self.learned.iter().map(|(&uid, l)| (uid, l))
    }

    /// Whether the event at `offset` of `partition` is already reflected.
    pub fn is_applied(&self, partition: i32, offset: i64) -> bool {
        self.offsets
            .get(&partition)
            .is_some_and(|&next| offset < next)
    }

    /// Moves past a record that is not a usable event (it stays in the topic, counted and
    /// logged by the caller), so that the offsets stay those of the state.
    pub fn skip(&mut self, partition: i32, offset: i64) {
        if !self.is_applied(partition, offset) {
            self.offsets.insert(partition, offset + 1);
        }
    }

    /// Folds one event in: logs it, re-solves its user against `model`, evicts the least
    /// recently updated user beyond the cap.
    pub fn apply(
        &mut self,
        model: &Recommender,
        partition: i32,
        offset: i64,
        event: FeedbackEvent,
    ) -> Applied {
        if self.is_applied(partition, offset) {
            return Applied::AlreadyApplied;
        }
        self.offsets.insert(partition, offset + 1);
        self.applied += 1;
        let touched = self.applied;
        let log = self.users.entry(event.uid).or_insert_with(|| UserLog {
            events: Vec::new(),
            touched,
            prior: None,
        });
        self.by_touch.remove(&log.touched);
        log.touched = touched;
        self.by_touch.insert(touched, event.uid);
        log.events.retain(|(item, _)| *item != event.item);
        log.events.push((event.item, event.rating));
        if log.events.len() > self.config.max_events_per_user {
            let excess = log.events.len() - self.config.max_events_per_user;
            log.events.drain(..excess);
        }
        self.resolve(model, event.uid);

        let mut evicted = None;
        while self.users.len() > self.config.max_users.max(1) {
            let Some((_, oldest)) = self.by_touch.pop_first() else {
                break;
            };
            self.users.remove(&oldest);
            self.learned.remove(&oldest);
            self.evicted += 1;
            evicted = Some(oldest);
        }
        Applied::FoldedIn {
            uid: event.uid,
            evicted,
        }
    }

    /// Takes on a new model: every kept log is solved again against it. Evidence the new
    /// model was trained on (an item in its rated list for that user) is not counted twice.
    pub fn rebase(&mut self, model: &Recommender, model_version: &str) {
        self.model_version = Arc::from(model_version);
        for log in self.users.values_mut() {
            log.prior = None;
        }
        let uids: Vec<i64> = self.users.keys().copied().collect();
        for uid in uids {
            self.resolve(model, uid);
        }
    }

    fn resolve(&mut self, model: &Recommender, uid: i64) {
        let Some(log) = self.users.get_mut(&uid) else {
            return;
        };
        let known = model.user_index(uid);
        if let (Some(u), None) = (known, &log.prior) {
            log.prior = Some(known_precision(model, u, self.config.reg));
        }
        let log = &*log;
        let trained_on = known.map_or(&[][..], |u| model.rated_of(u));
        let implicit = model.global_mean() + self.config.implicit_boost;
        let mut evidence: Vec<Evidence> = log
            .events
            .iter()
            .filter_map(|&(item, rating)| {
                let item = model.item_index(item)?;
                // `rated_of` is ascending.
                if trained_on.binary_search(&item).is_ok() {
                    return None;
                }
                Some(Evidence {
                    item,
                    rating: rating.unwrap_or(implicit),
                })
            })
            .collect();
        evidence.sort_unstable_by_key(|e| e.item);
        let solved = if evidence.is_empty() && known.is_none() {
            None
        } else {
            match solve_user_with(
                model,
                known,
                log.prior.as_deref(),
                &evidence,
                self.config.reg,
            ) {
                Ok(solved) => Some(solved),
                Err(_) => {
                    self.solve_failures += 1;
                    None
                }
            }
        };
        let mut seen: Vec<i64> = log.events.iter().map(|(item, _)| *item).collect();
        seen.sort_unstable();
        let learned = Learned {
            model_version: Arc::clone(&self.model_version),
            solved,
            seen: seen.into(),
        };
        self.learned.insert(uid, Arc::new(learned));
    }

    /// Approximate heap bytes the state holds (logs, seen lists, factors, map entries).
    pub fn memory_bytes(&self) -> usize {
        let per_user_fixed = 3 * 64;
        self.users
            .values()
            .map(|log| {
                log.events.capacity() * std::mem::size_of::<(i64, Option<f32>)>()
                    + log.prior.as_ref().map_or(0, |p| p.len() * 8)
            })
            .sum::<usize>()
            + self
                .learned
                .values()
                .map(|l| {
                    std::mem::size_of::<Learned>()
                        + l.seen.len() * 8
                        + l.solved.as_ref().map_or(0, |s| s.factors.capacity() * 4)
                })
                .sum::<usize>()
            + self.users.len() * per_user_fixed
    }

    /// The checkpoint form: users in id order, numbers widened to f64 (exact both ways).
    pub fn to_checkpoint(&self, topic: &str) -> Checkpoint {
        let mut uids: Vec<i64> = self.users.keys().copied().collect();
        uids.sort_unstable();
        let users = uids
            .into_iter()
            .filter_map(|uid| {
                let log = self.users.get(&uid)?;
                let solved = self.learned.get(&uid).and_then(|l| l.solved.as_ref());
                Some(UserCheckpoint {
                    uid,
                    touched: log.touched,
                    events: log
                        .events
                        .iter()
                        .map(|&(item, rating)| (item, rating.map(f64::from)))
                        .collect(),
                    bias: solved.map(|s| f64::from(s.bias)),
                    factors: solved.map(|s| s.factors.iter().map(|&v| f64::from(v)).collect()),
                })
            })
            .collect();
        Checkpoint {
            format: CHECKPOINT_FORMAT,
            topic: topic.to_owned(),
            model_version: self.model_version.to_string(),
            offsets: self.offsets.clone(),
            applied: self.applied,
            evicted: self.evicted,
            users,
        }
    }

    /// Restores a checkpoint. Factors solved against `model_version` are taken as they
    /// are; against another model (an offline retrain was loaded since), every user is
    /// solved again from their log.
    pub fn from_checkpoint(
        config: OnlineConfig,
        checkpoint: Checkpoint,
        model: &Recommender,
        model_version: &str,
    ) -> Self {
        let mut state = Self::new(config, &checkpoint.model_version);
        state.offsets = checkpoint.offsets;
        state.applied = checkpoint.applied;
        state.evicted = checkpoint.evicted;
        let k = model.factors();
        let same_model = checkpoint.model_version == model_version;
        let mut stale = false;
        for user in checkpoint.users {
            let events: Vec<(i64, Option<f32>)> = user
                .events
                .iter()
                .map(|&(item, rating)| (item, rating.map(|r| r as f32)))
                .collect();
            let mut seen: Vec<i64> = events.iter().map(|(item, _)| *item).collect();
            seen.sort_unstable();
            let solved = match (user.bias, user.factors) {
                (Some(bias), Some(factors)) if factors.len() == k => Some(Solved {
                    bias: bias as f32,
                    factors: factors.iter().map(|&v| v as f32).collect(),
                }),
                (None, None) => None,
                _ => {
                    stale = true;
                    None
                }
            };
            state.by_touch.insert(user.touched, user.uid);
            state.users.insert(
                user.uid,
                UserLog {
                    events,
                    touched: user.touched,
                    prior: None,
                },
            );
            state.learned.insert(
                user.uid,
                Arc::new(Learned {
                    model_version: Arc::clone(&state.model_version),
                    solved,
                    seen: seen.into(),
                }),
            );
        }
        if !same_model || stale {
            state.rebase(model, model_version);
        }
        state
    }
}

pub const CHECKPOINT_FORMAT: u32 = 1;

/// The file form of the state (see `checkpoint`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: u32,
    /// The feedback topic the offsets belong to.
    pub topic: String,
    pub model_version: String,
    /// Next offset to apply, per partition.
    pub offsets: BTreeMap<i32, i64>,
    pub applied: u64,
    pub evicted: u64,
    pub users: Vec<UserCheckpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserCheckpoint {
    pub uid: i64,
    pub touched: u64,
    /// `(item, rating)` oldest first; `null` rating: implicit.
    pub events: Vec<(i64, Option<f64>)>,
    pub bias: Option<f64>,
    pub factors: Option<Vec<f64>>,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::recommender::{Request, UserOverride};
    use crate::train::ratings::{generate, GenParams};
    use crate::train::recommender::{build_spec, fit, MfParams};

    fn model() -> Recommender {
        let synthetic = generate(&GenParams {
            users: 60,
            items: 80,
            ratings: 2400,
            rank: 3,
            seed: 9,
            ..GenParams::default()
        })
        .unwrap();
        let params = MfParams {
            factors: 3,
            epochs: 20,
            lr: 0.01,
            ..MfParams::default()
        };
        let fitted = fit(&synthetic.ratings, &params, false);
        Recommender::compile(&build_spec(&fitted, &synthetic.ratings, &HashMap::new())).unwrap()
    }

    fn items_for(model: &Recommender, state: &OnlineState, uid: i64, n: usize) -> Vec<i64> {
        let learned = state.learned(uid);
        let overrides = [learned.map(|l| UserOverride {
            learned: l.solved.as_ref().map(|s| (s.bias, &s.factors[..])),
            seen: &l.seen,
        })];
        let out = model.recommend_batch_with(&[Request { uid, n }], &overrides);
        out[0].items.iter().map(|s| s.item).collect()
    }

    #[test]
    fn a_user_never_sees_again_what_they_rated() {
        let model = model();
        let mut state = OnlineState::new(OnlineConfig::default(), "v1");
        let mut offset = 0;
        for uid in [7, 1_000_001] {
            let before = items_for(&model, &state, uid, 5);
            assert_eq!(before.len(), 5);
            for (at, &item) in before.iter().enumerate() {
                // Low and high ratings and an implicit event: all leave the list.
                let rating = [Some(1.0), Some(5.0), None, Some(3.0), Some(2.5)][at];
                state.apply(&model, 0, offset, FeedbackEvent { uid, item, rating });
                offset += 1;
                let after = items_for(&model, &state, uid, 20);
                assert_eq!(after.len(), 20);
                for gone in &before[..=at] {
                    assert!(!after.contains(gone), "user {uid} rated {gone}: {after:?}");
                }
            }
        }
    }

    /// Feedback over three partitions, each user's events on one partition.
    fn events(n: usize) -> Vec<(i32, i64, FeedbackEvent)> {
        let mut next = [0i64; 3];
        (0..n)
            .map(|i| {
                let uid = [3, 12, 40, 2_000_000, 2_000_001][i % 5] + (i as i64 / 97);
                let partition = (uid % 3) as i32;
                let offset = next[partition as usize];
                next[partition as usize] += 1;
                let item = 1 + ((i * 37) % 80) as i64;
                let rating = (i % 7 != 0).then_some(1.0 + (i % 9) as f32 * 0.5);
                (partition, offset, FeedbackEvent { uid, item, rating })
            })
            .collect()
    }

    #[test]
    fn a_crash_and_a_replay_from_the_checkpoint_give_the_same_state() {
        let model = model();
        let feedback = events(600);
        let config = OnlineConfig {
            max_users: 1000,
            ..OnlineConfig::default()
        };
        let mut uninterrupted = OnlineState::new(config, "v1");
        for &(p, o, e) in &feedback {
            uninterrupted.apply(&model, p, o, e);
        }

        let mut crashed = OnlineState::new(config, "v1");
        let mut saved = None;
        for (at, &(p, o, e)) in feedback.iter().enumerate() {
            crashed.apply(&model, p, o, e);
            if at == 250 {
                let text = serde_json::to_vec(&crashed.to_checkpoint("fb")).unwrap();
                saved = Some(text);
            }
            if at == 400 {
                // Dropped with no final checkpoint.
                break;
            }
        }
        drop(crashed);
        let saved: Checkpoint = serde_json::from_slice(&saved.unwrap()).unwrap();
        let mut restarted = OnlineState::from_checkpoint(config, saved, &model, "v1");
        // The consumer resumes at the checkpoint's offsets; offering everything again from
        // the start also checks that nothing below them is applied twice.
        let mut replayed = 0;
        for &(p, o, e) in &feedback {
            if restarted.apply(&model, p, o, e) == Applied::AlreadyApplied {
                replayed += 1;
            }
        }
        assert_eq!(replayed, 251);
        assert_eq!(restarted.applied(), 600);
        assert_eq!(
            restarted.to_checkpoint("fb"),
            uninterrupted.to_checkpoint("fb")
        );
        for (uid, learned) in uninterrupted.all_learned() {
            let other = restarted.learned(uid).unwrap();
            let bits = |l: &Learned| {
                l.solved.as_ref().map(|s| {
                    (
                        s.bias.to_bits(),
                        s.factors.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
                    )
                })
            };
            assert_eq!(bits(other), bits(learned), "user {uid}");
            assert!(bits(learned).is_some());
        }
    }

    #[test]
    fn the_least_recently_updated_user_is_evicted_beyond_the_cap() {
        let model = model();
        let config = OnlineConfig {
            max_users: 2,
            max_events_per_user: 3,
            ..OnlineConfig::default()
        };
        let mut state = OnlineState::new(config, "v1");
        let event = |uid, item| FeedbackEvent {
            uid,
            item,
            rating: Some(4.0),
        };
        state.apply(&model, 0, 0, event(1, 1));
        state.apply(&model, 0, 1, event(2, 1));
        state.apply(&model, 0, 2, event(1, 2));
        let outcome = state.apply(&model, 0, 3, event(3, 1));
        assert_eq!(
            outcome,
            Applied::FoldedIn {
                uid: 3,
                evicted: Some(2)
            }
        );
        assert!(state.learned(2).is_none());
        assert_eq!(state.users(), 2);
        assert_eq!(state.evicted(), 1);
        for (offset, item) in (4..).zip([3, 4, 5, 3]) {
            state.apply(&model, 0, offset, event(1, item));
        }
        // Three items kept, the latest event of item 3 last.
        assert_eq!(&*state.learned(1).unwrap().seen, &[3, 4, 5]);
        assert!(state.memory_bytes() > 0);
        // Below the partition's next offset: ignored.
        assert_eq!(
            state.apply(&model, 0, 5, event(9, 9)),
            Applied::AlreadyApplied
        );
        state.skip(1, 0);
        assert_eq!(state.offsets()[&1], 1);
    }

    #[test]
    fn a_new_model_re_solves_everyone_from_their_logs() {
        let model = model();
        let mut state = OnlineState::new(OnlineConfig::default(), "v1");
        for (o, item) in (0..).zip([5, 9, 11]) {
            let event = FeedbackEvent {
                uid: 555,
                item,
                rating: Some(4.5),
            };
            state.apply(&model, 0, o, event);
        }
        let before = state.learned(555).unwrap().clone();
        assert_eq!(&*before.model_version, "v1");
        state.rebase(&model, "v2");
        let after = state.learned(555).unwrap();
        assert_eq!(&*after.model_version, "v2");
        // Same model content, same logs: same factors (a pure function of both).
        assert_eq!(after.solved, before.solved);

        // A checkpoint made on v1 restored under v2 is re-solved, not trusted.
        let cp = state.to_checkpoint("fb");
        let restored = OnlineState::from_checkpoint(OnlineConfig::default(), cp, &model, "v3");
        assert_eq!(restored.model_version(), "v3");
        assert_eq!(&*restored.learned(555).unwrap().model_version, "v3");
    }
}
