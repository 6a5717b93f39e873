//! The feedback thread: reads every partition of the feedback topic from the offsets the
//! checkpoint reflects, folds each event into the learned state, publishes changed users to
//! the overlay scoring reads, and checkpoints state and offsets together.
//!
//! It is its own consumer, apart from the scoring loop: partitions are assigned by hand
//! (every instance learns from all the feedback, since any instance may be asked about any
//! user), positions come from the checkpoint, not from group commits. The group id
//! (`<group>-feedback`) only carries informational commits, so that the usual tools show
//! the feedback lag too. Partitions added to the topic while it runs are found by a
//! metadata check every `PARTITION_CHECK_EVERY` and read from their beginning.
//!
//! A record that is not a usable event (`reject`) is dead-lettered with its reason and the
//! state moves past it; the checkpoint that records the move is written only once its dead
//! letter is acknowledged (`dead_letter`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::dead_letter::DeadLetters;
use super::reject::{self, Rejection};
use super::state::{Applied, OnlineConfig, OnlineState};
use super::{checkpoint, Overlay};
use crate::logging::LogThrottle;
use crate::model::{LoadedModel, Model};
use crate::pipeline::source::consumer_settings;
use crate::pipeline::PipelineConfig;
use crate::service::state::ServiceState;

/// Most events applied between two publications to the overlay.
const MAX_CHUNK_EVENTS: usize = 256;
/// ... and most time spent applying them, so a slow solve cannot hold changes back long.
const MAX_CHUNK_TIME: Duration = Duration::from_millis(20);
const POLL_WAIT: Duration = Duration::from_millis(100);
const LAG_EVERY: Duration = Duration::from_secs(1);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the topic's partition count is looked up again (one metadata request).
const PARTITION_CHECK_EVERY: Duration = Duration::from_secs(10);
const PARTITION_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the dead letters of a checkpoint's records to be acknowledged.
const DEAD_LETTER_FLUSH: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct FeedbackConfig {
    pub topic: String,
    /// The checkpoint lives here (`online-state.json`).
    pub state_dir: PathBuf,
    pub checkpoint_interval: Duration,
    pub online: OnlineConfig,
}

/// Restores the state (from the checkpoint, or empty) against the current model and
/// publishes it; refuses a model that is not a recommender and a checkpoint it cannot trust.
pub fn restore(
    config: &FeedbackConfig,
    model: &LoadedModel,
    overlay: &Overlay,
) -> anyhow::Result<OnlineState> {
    let Model::Recommender(recommender) = &model.model else {
        bail!(
            "--feedback-topic needs a recommender model, and {} is a {}",
            model.version,
            model.kind()
        );
    };
    let (low, high) = config.online.rating_range;
    if !(low.is_finite() && high.is_finite() && low <= high) {
        bail!("the feedback rating range {low}..{high} is empty or not finite");
    }
    let path = checkpoint::path_in(&config.state_dir);
    let state = match checkpoint::read(&path, &config.topic)? {
        Some(saved) => {
            let state =
                OnlineState::from_checkpoint(config.online, saved, recommender, &model.version);
            info!(path = %path.display(), users = state.users(), applied = state.applied(),
                  offsets = ?state.offsets(), "learned state restored from its checkpoint");
            state
        }
        None => {
            info!(path = %path.display(), "no checkpoint yet: learning from the start of the feedback topic");
            OnlineState::new(config.online, &model.version)
        }
    };
    overlay.publish_all(&state);
    overlay.metrics.users.set(state.users() as i64);
    Ok(state)
}

/// Runs until `stop` is cancelled (then checkpoints a last time) or an error stops it.
pub fn run(
    config: &FeedbackConfig,
    pipeline: &PipelineConfig,
    service: &Arc<ServiceState>,
    overlay: &Overlay,
    mut state: OnlineState,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut settings = consumer_settings(pipeline);
    settings
        .set("group.id", format!("{}-feedback", pipeline.group))
        .set("statistics.interval.ms", "0")
        // Scoring waits 10 ms per idle fetch for latency; learning needs no such haste, and
        // against a broker that holds an idle fetch for the full wait (librdkafka's mock,
        // tansu) every round trip is CPU the scoring thread could have had. Apache Kafka
        // answers as soon as a record arrives either way.
        .set("fetch.wait.max.ms", "100");
    let consumer: BaseConsumer = settings
        .create()
        .context("creating the feedback consumer")?;
    let mut partitions = topic_partitions(&consumer, &config.topic, METADATA_TIMEOUT)
        .with_context(|| format!("reading the partitions of feedback topic {}", config.topic))?;
    if partitions.is_empty() {
        bail!(
            "feedback topic {} has no partitions (does it exist?)",
            config.topic
        );
    }
    consumer
        .assign(&assignment(&config.topic, &partitions, state.offsets())?)
        .context("assigning the feedback partitions")?;
    info!(topic = %config.topic, partitions = partitions.len(), "feedback consumer started");
    let mut dead_letters = DeadLetters::new(pipeline);

    let path = checkpoint::path_in(&config.state_dir);
    let metrics = &overlay.metrics;
    let rejected_log = LogThrottle::default();
    let mut last_checkpoint = Instant::now();
    let mut checkpointed_at: BTreeMap<i32, i64> = state.offsets().clone();
    let mut last_lag = Instant::now() - LAG_EVERY;
    let mut last_partition_check = Instant::now();
    let mut changed: Vec<i64> = Vec::with_capacity(MAX_CHUNK_EVENTS);

    while !stop.is_cancelled() && !service.health.has_failed() {
        let model = service.store.current();
        let Model::Recommender(recommender) = &model.model else {
            // A kind change was allowed: nothing to learn for until a recommender is back.
            std::thread::sleep(POLL_WAIT);
            continue;
        };
        if model.version != state.model_version() {
            let started = Instant::now();
            state.rebase(recommender, &model.version);
            overlay.publish_all(&state);
            info!(version = %model.version, users = state.users(),
                  ms = started.elapsed().as_secs_f64() * 1e3,
                  "new model: learned users solved again against it");
        }

        changed.clear();
        let opened = Instant::now();
        let mut wait = POLL_WAIT;
        while changed.len() < MAX_CHUNK_EVENTS && opened.elapsed() < MAX_CHUNK_TIME {
            let Some(polled) = consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let message = match polled {
                Ok(message) => message,
                Err(e) => {
                    if let Some(suppressed) = rejected_log.admit() {
                        warn!(error = %e, suppressed, "feedback consumer error");
                    }
                    continue;
                }
            };
            let (partition, offset) = (message.partition(), message.offset());
            if state.is_applied(partition, offset) {
                metrics
                    .feedback_events
                    .with_label_values(&["replayed"])
                    .inc();
                continue;
            }
            let decoded =
                reject::decode(message.payload(), pipeline.max_record_bytes).and_then(|event| {
                    reject::check(&event, recommender, config.online.rating_range).map(|()| event)
                });
            match decoded {
                Ok(event) => match state.apply(recommender, partition, offset, event) {
                    Applied::AlreadyApplied => {
                        metrics
                            .feedback_events
                            .with_label_values(&["replayed"])
                            .inc();
                    }
                    Applied::FoldedIn { uid, evicted } => {
                        metrics
                            .feedback_events
                            .with_label_values(&["applied"])
                            .inc();
                        metrics.users_folded_in.inc();
                        changed.push(uid);
                        if let Some(gone) = evicted {
                            metrics.users_evicted.inc();
                            changed.push(gone);
                        }
                    }
                },
                Err(rejection) => {
                    reject_record(
                        &mut dead_letters,
                        &message,
                        &rejection,
                        overlay,
                        &rejected_log,
                    )?;
                    // Dead-lettered; the state moves past it (checkpointed once delivered).
                    state.skip(partition, offset);
                }
            }
        }
        if !changed.is_empty() {
            overlay.publish(&state, &changed);
            metrics.users.set(state.users() as i64);
        }

        if last_partition_check.elapsed() >= PARTITION_CHECK_EVERY {
            last_partition_check = Instant::now();
            match topic_partitions(&consumer, &config.topic, PARTITION_CHECK_TIMEOUT) {
                Ok(now) if has_new(&partitions, &now) => {
                    // The whole assignment again, every partition from the state's own
                    // offsets: what was fetched but not yet polled is fetched again, and
                    // nothing the state has not applied is skipped.
                    consumer
                        .assign(&assignment(&config.topic, &now, state.offsets())?)
                        .context("assigning the feedback partitions again")?;
                    info!(topic = %config.topic, before = partitions.len(), now = now.len(),
                          "feedback topic has new partitions: reading them from the beginning");
                    partitions = now;
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(suppressed) = rejected_log.admit() {
                        warn!(error = %format!("{e:#}"), suppressed, "feedback partition check failed");
                    }
                }
            }
        }
        if last_lag.elapsed() >= LAG_EVERY {
            last_lag = Instant::now();
            metrics.state_bytes.set(state.memory_bytes() as i64);
            let mut lag = 0i64;
            for &p in &partitions {
                if let Ok((_, high)) =
                    consumer.fetch_watermarks(&config.topic, p, Duration::from_millis(500))
                {
                    let next = state.offsets().get(&p).copied().unwrap_or(0);
                    lag += (high - next).max(0);
                }
            }
            metrics.feedback_lag.set(lag);
        }
        metrics
            .checkpoint_age
            .set(last_checkpoint.elapsed().as_secs_f64());
        if last_checkpoint.elapsed() >= config.checkpoint_interval
            && *state.offsets() != checkpointed_at
        {
            dead_letters.flush(DEAD_LETTER_FLUSH)?;
            save(&path, config, &state, &consumer, overlay);
            checkpointed_at = state.offsets().clone();
            last_checkpoint = Instant::now();
        }
    }
    dead_letters.flush(DEAD_LETTER_FLUSH)?;
    save(&path, config, &state, &consumer, overlay);
    info!(
        applied = state.applied(),
        users = state.users(),
        "feedback consumer stopped; state checkpointed"
    );
    Ok(())
}

/// Dead-letters one unusable feedback record, counted by reason and logged (throttled).
fn reject_record(
    dead_letters: &mut DeadLetters,
    message: &impl Message,
    rejection: &Rejection,
    overlay: &Overlay,
    log: &LogThrottle,
) -> anyhow::Result<()> {
    dead_letters.send(message, rejection)?;
    let metrics = &overlay.metrics;
    metrics
        .feedback_events
        .with_label_values(&["rejected"])
        .inc();
    metrics
        .feedback_dead_lettered
        .with_label_values(&[rejection.reason.code()])
        .inc();
    if let Some(suppressed) = log.admit() {
        warn!(partition = message.partition(), offset = message.offset(),
              reason = rejection.reason.code(), detail = %rejection.detail, suppressed,
              "feedback record dead-lettered");
    }
    Ok(())
}

/// The partition ids of `topic`, ascending, as the broker's metadata has them now.
fn topic_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions.sort_unstable();
    Ok(partitions)
}

/// Whether `now` has a partition `assigned` lacks (Kafka adds partitions, never removes).
fn has_new(assigned: &[i32], now: &[i32]) -> bool {
    now.iter().any(|p| !assigned.contains(p))
}

/// Every partition of `partitions` from the state's next offset, or from the beginning for
/// one the state has never read (new to the state, or added to the topic since).
fn assignment(
    topic: &str,
    partitions: &[i32],
    offsets: &BTreeMap<i32, i64>,
) -> anyhow::Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for &p in partitions {
        let offset = match offsets.get(&p) {
            Some(&next) => Offset::Offset(next),
            None => Offset::Beginning,
        };
        list.add_partition_offset(topic, p, offset)
            .context("building the feedback assignment")?;
    }
    Ok(list)
}

/// Writes the checkpoint; a failure keeps the previous one (a later replay covers the gap)
/// and is counted and logged, not fatal.
fn save(
    path: &std::path::Path,
    config: &FeedbackConfig,
    state: &OnlineState,
    consumer: &BaseConsumer,
    overlay: &Overlay,
) {
    let metrics = &overlay.metrics;
    match checkpoint::write(path, &state.to_checkpoint(&config.topic)) {
        Ok(bytes) => {
            metrics.checkpoint_bytes.set(bytes as i64);
            metrics.checkpoint_age.set(0.0);
            if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
                metrics.checkpoint_timestamp.set(now.as_secs_f64());
            }
            // Informational only (restores read the checkpoint): lets Kafka tools show lag.
            let mut offsets = TopicPartitionList::new();
            for (&p, &next) in state.offsets() {
                let _ = offsets.add_partition_offset(&config.topic, p, Offset::Offset(next));
            }
            if offsets.count() > 0 {
                let _ = consumer.commit(&offsets, CommitMode::Async);
            }
        }
        Err(e) => {
            metrics.checkpoint_failures.inc();
            warn!(error = %format!("{e:#}"), path = %path.display(), "checkpoint failed; the previous one stays");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_partitions_are_read_from_the_beginning_and_the_rest_from_the_state() {
        // Before: partitions 0 and 1, the state has read 0 up to 5 and nothing of 1 yet.
        let offsets: BTreeMap<i32, i64> = [(0, 5)].into_iter().collect();
        let before = [0, 1];
        assert!(!has_new(&before, &[0, 1]));
        assert!(!has_new(&before, &[1, 0]));
        // The topic grows to four partitions; the state meanwhile read 1 up to 7.
        let now = [0, 1, 2, 3];
        assert!(has_new(&before, &now));
        let offsets: BTreeMap<i32, i64> = offsets.into_iter().chain([(1, 7)]).collect();
        let list = assignment("fb", &now, &offsets).unwrap();
        let got: Vec<(i32, Offset)> = list
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, Offset::Offset(5)),
                (1, Offset::Offset(7)),
                (2, Offset::Beginning),
                (3, Offset::Beginning),
            ]
        );
        assert!(list.elements().iter().all(|e| e.topic() == "fb"));
    }
}
