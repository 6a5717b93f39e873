//! The Kafka pipeline: source → batch → transform → sink, then commit.
//!
//! Two stages run concurrently. The scoring stage consumes a micro-batch, scores it and
//! enqueues its records to the producer; the commit stage waits for those records'
//! acknowledgements and only then commits the batch's offsets. A bounded channel between
//! them lets batch N+1 be scored while batch N is in flight, and stops consumption when
//! acknowledgements fall behind.

pub mod batch;
pub mod commit;
pub mod sink;
pub mod source;
pub mod transaction;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::model::ModelStore;
use crate::record::SourcePosition;
use crate::transform::{transform_batch, Input};
use batch::{Batch, Batcher};
use sink::{Pending, Sink};
use source::{create_consumer, Assignment, Consumer, InFlight, SourceContext};

/// Batches scored but not yet acknowledged; beyond this the scoring stage waits.
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;
/// How long shutdown waits for librdkafka to deliver what is still queued.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// The delivery guarantee of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Guarantee {
    /// Outputs are acknowledged before offsets are committed; a crash can repeat the
    /// uncommitted tail. Batches overlap: the fastest mode.
    #[default]
    AtLeastOnce,
    /// Each batch is one Kafka transaction holding its outputs and its offsets; readers with
    /// `isolation.level=read_committed` see every result once. Batches run one at a time.
    ExactlyOnce { transactional_id: String },
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub brokers: String,
    /// librdkafka properties applied to both the consumer and the producer (`-X`).
    pub properties: Vec<(String, String)>,
    /// librdkafka properties for the consumer only, applied after `properties`.
    pub consumer_properties: Vec<(String, String)>,
    pub input_topic: String,
    pub output_topic: String,
    pub dead_letter_topic: String,
    pub group: String,
    pub batch_interval: Duration,
    pub max_batch: usize,
    pub max_record_bytes: usize,
    pub guarantee: Guarantee,
}

/// What the pipeline shares with the HTTP side port.
pub struct Shared {
    pub store: Arc<ModelStore>,
    pub metrics: Arc<Metrics>,
    pub assignment: Arc<Assignment>,
}

struct ScoredBatch {
    pending: Vec<Pending>,
    offsets: rdkafka::TopicPartitionList,
    opened: Instant,
    size: usize,
    model_version: String,
}

/// Runs until `shutdown` is cancelled (then drains, commits and returns `Ok`) or until a
/// record cannot be delivered (then returns the error with that batch uncommitted).
pub async fn run(
    config: PipelineConfig,
    shared: &Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let in_flight = Arc::new(InFlight::default());
    let consumer = Arc::new(
        create_consumer(
            &config,
            SourceContext {
                input_topic: config.input_topic.clone(),
                client_errors: Default::default(),
                metrics: Arc::clone(&shared.metrics),
                assignment: Arc::clone(&shared.assignment),
                in_flight: Arc::clone(&in_flight),
            },
        )
        .context("creating the consumer")?,
    );
    consumer
        .subscribe(&[&config.input_topic])
        .with_context(|| format!("subscribing to {}", config.input_topic))?;
    let sink =
        Arc::new(Sink::new(&config, Arc::clone(&shared.metrics)).context("creating the producer")?);
    if matches!(config.guarantee, Guarantee::ExactlyOnce { .. }) {
        transaction::init(&sink).await?;
    }
    info!(
        brokers = %config.brokers,
        input = %config.input_topic,
        output = %config.output_topic,
        dead_letters = %config.dead_letter_topic,
        group = %config.group,
        guarantee = ?config.guarantee,
        "pipeline started"
    );

    let (to_commit, scored) = mpsc::channel(MAX_BATCHES_IN_FLIGHT);
    let committer = tokio::spawn(commit_stage(
        scored,
        Arc::clone(&sink),
        Arc::clone(&consumer),
        Arc::clone(&shared.metrics),
        Arc::clone(&in_flight),
    ));
    let scoring = score_stage(
        &config, shared, &consumer, &sink, &in_flight, to_commit, &shutdown,
    )
    .await;
    // The commit stage ends once the scoring stage has dropped its sender and every batch
    // it sent is committed.
    let committed = committer.await.context("the commit stage panicked")?;
    if let Err(e) = sink.flush(SHUTDOWN_FLUSH_TIMEOUT) {
        warn!(error = %e, "flush at shutdown");
    }
    scoring.and(committed)?;
    info!("pipeline stopped; every consumed record is committed");
    Ok(())
}

async fn score_stage(
    config: &PipelineConfig,
    shared: &Shared,
    consumer: &Consumer,
    sink: &Sink,
    in_flight: &InFlight,
    to_commit: mpsc::Sender<ScoredBatch>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let batcher = Batcher {
        interval: config.batch_interval,
        max_records: config.max_batch,
        consumer_errors: Default::default(),
    };
    while let Some(batch) = batcher.next(consumer, &shared.assignment, shutdown).await {
        if batch.records.is_empty() {
            continue;
        }
        shared.metrics.records_in.inc_by(batch.records.len() as u64);
        shared
            .metrics
            .batch_size
            .observe(batch.records.len() as f64);
        let model = shared.store.current();
        let outcomes = transform_batch(&model, &inputs_of(&batch.records), config.max_record_bytes);
        if let Guarantee::ExactlyOnce { .. } = config.guarantee {
            transact(shared, consumer, sink, &batch, outcomes, &model.version).await?;
            continue;
        }
        let pending = sink.send_batch(&batch.records, outcomes).await?;
        let offsets = commit::to_partition_list(&commit::next_offsets(&batch.records))?;
        in_flight.started();
        let scored = ScoredBatch {
            pending,
            offsets,
            opened: batch.opened,
            size: batch.records.len(),
            model_version: model.version.clone(),
        };
        if to_commit.send(scored).await.is_err() {
            // The commit stage stopped on an error, which `run` reports.
            in_flight.finished();
            break;
        }
    }
    Ok(())
}

/// Exactly-once: the batch's outputs and offsets in one transaction, before the next batch.
async fn transact(
    shared: &Shared,
    consumer: &Consumer,
    sink: &Sink,
    batch: &Batch,
    outcomes: Vec<crate::transform::Outcome>,
    model_version: &str,
) -> anyhow::Result<()> {
    let txn = transaction::KafkaTransactions { sink, consumer };
    let produce = sink.send_batch(&batch.records, outcomes);
    let (result, pending) = transaction::run_batch(&txn, &batch.records, produce).await?;
    let label = match result {
        transaction::BatchResult::Committed => "committed",
        transaction::BatchResult::Aborted => "aborted",
    };
    shared
        .metrics
        .transactions
        .with_label_values(&[label])
        .inc();
    if let Some(pending) = pending {
        sink.count_committed(pending).await;
        let latency = batch.opened.elapsed();
        shared.metrics.batches.inc();
        shared.metrics.batch_latency.observe(latency.as_secs_f64());
        debug!(
            size = batch.records.len(),
            latency_ms = latency.as_secs_f64() * 1e3,
            model_version,
            "transaction committed"
        );
    }
    Ok(())
}

fn inputs_of(records: &[OwnedMessage]) -> Vec<Input<'_>> {
    records
        .iter()
        .map(|r| Input {
            payload: r.payload(),
            source: SourcePosition {
                partition: r.partition(),
                offset: r.offset(),
            },
        })
        .collect()
}

async fn commit_stage(
    mut scored: mpsc::Receiver<ScoredBatch>,
    sink: Arc<Sink>,
    consumer: Arc<Consumer>,
    metrics: Arc<Metrics>,
    in_flight: Arc<InFlight>,
) -> anyhow::Result<()> {
    while let Some(batch) = scored.recv().await {
        let confirmed = sink.confirm(batch.pending).await;
        if let Err(e) = confirmed {
            in_flight.finished();
            return Err(e.context("a batch could not be delivered; its offsets stay uncommitted"));
        }
        if let Err(e) = commit::commit(&consumer, batch.offsets).await {
            // The records are delivered; only the position is not saved, so they will be
            // re-read and scored again (at-least-once). The next batch's commit for the
            // same partitions supersedes this one.
            metrics.commit_failures.inc();
            warn!(error = %e, "offset commit failed");
        }
        let latency = batch.opened.elapsed();
        metrics.batches.inc();
        metrics.batch_latency.observe(latency.as_secs_f64());
        debug!(
            size = batch.size,
            latency_ms = latency.as_secs_f64() * 1e3,
            model_version = %batch.model_version,
            "batch committed"
        );
        in_flight.finished();
    }
    Ok(())
}
