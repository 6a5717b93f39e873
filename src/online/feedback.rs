//! The feedback thread: reads every partition of the feedback topic from the offsets the
//! checkpoint reflects, folds each event into the learned state, publishes changed users to
//! the overlay scoring reads, and checkpoints state and offsets together.
//!
//! It is its own consumer, apart from the scoring loop: partitions are assigned by hand
//! (every instance learns from all the feedback, since any instance may be asked about any
//! user), positions come from the checkpoint, not from group commits. The group id
//! (`<group>-feedback`) only carries informational commits, so that the usual tools show
//! the feedback lag too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::state::{Applied, FeedbackEvent, OnlineConfig, OnlineState};
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
        .set("statistics.interval.ms", "0");
    let consumer: BaseConsumer = settings
        .create()
        .context("creating the feedback consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&config.topic), METADATA_TIMEOUT)
        .with_context(|| format!("reading the partitions of feedback topic {}", config.topic))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == config.topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!(
            "feedback topic {} has no partitions (does it exist?)",
            config.topic
        );
    }
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let offset = match state.offsets().get(&p) {
            Some(&next) => Offset::Offset(next),
            None => Offset::Beginning,
        };
        assignment
            .add_partition_offset(&config.topic, p, offset)
            .context("building the feedback assignment")?;
    }
    consumer
        .assign(&assignment)
        .context("assigning the feedback partitions")?;
    info!(topic = %config.topic, partitions = partitions.len(), "feedback consumer started");

    let path = checkpoint::path_in(&config.state_dir);
    let metrics = &overlay.metrics;
    let rejected_log = LogThrottle::default();
    let mut last_checkpoint = Instant::now();
    let mut checkpointed_at = state.applied();
    let mut last_lag = Instant::now() - LAG_EVERY;
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
            let decoded = message
                .payload()
                .ok_or_else(|| "empty record".to_string())
                .and_then(FeedbackEvent::decode);
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
                Err(reason) => {
                    // The record stays in the topic; the state moves past it.
                    state.skip(partition, offset);
                    metrics
                        .feedback_events
                        .with_label_values(&["rejected"])
                        .inc();
                    if let Some(suppressed) = rejected_log.admit() {
                        warn!(partition, offset, %reason, suppressed, "feedback record skipped");
                    }
                }
            }
        }
        if !changed.is_empty() {
            overlay.publish(&state, &changed);
            metrics.users.set(state.users() as i64);
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
            && state.applied() != checkpointed_at
        {
            save(&path, config, &state, &consumer, overlay);
            checkpointed_at = state.applied();
            last_checkpoint = Instant::now();
        }
    }
    save(&path, config, &state, &consumer, overlay);
    info!(
        applied = state.applied(),
        users = state.users(),
        "feedback consumer stopped; state checkpointed"
    );
    Ok(())
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
