//! The Kafka pipeline: source → batch → transform → sink, then commit.
//!
//! It runs on a dedicated thread ("scoring") that polls the consumer, closes micro-batches,
//! scores them and hands their records to the producer, all synchronously and without a
//! task switch per record. Each delivery mode is one loop over that thread, written top to
//! bottom in its own module: `at_least_once` (batches overlap; a commit thread confirms and
//! commits them in order) and `exactly_once` (one transaction per batch).

pub mod acks;
pub mod at_least_once;
pub mod batch;
pub mod commit;
pub mod exactly_once;
pub mod in_flight;
pub mod replays;
pub mod sink;
pub mod source;
pub mod transaction;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::Consumer as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::record::Reason;
use crate::service::state::ServiceState;
use batch::BatchLimits;
use in_flight::InFlight;
use sink::{Destinations, Sink};
use source::{create_consumer, SourceContext};

/// Batches produced but not yet committed (at-least-once); beyond this the scoring loop
/// waits. This is exactly the most a crash can repeat: `MAX_BATCHES_IN_FLIGHT` batches.
pub const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// How long shutdown waits for librdkafka to deliver what is still queued.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Default ceiling on one batch's payload bytes, so that 1,000 records of a megabyte each are
/// not one batch: sized for the 256 MiB container limit in `deploy/` with in-flight batches,
/// the consumer's prefetch and the producer's queue all at once.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 16 << 20;

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
    /// Zero: latency mode, a batch closes as soon as nothing more is ready.
    pub batch_interval: Duration,
    pub max_batch: usize,
    pub max_batch_bytes: usize,
    pub max_record_bytes: usize,
    pub guarantee: Guarantee,
    /// JSON (default) or Schema Registry framing of input and output values.
    pub format: crate::record::registry::RecordFormat,
}

impl PipelineConfig {
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            interval: self.batch_interval,
            max_records: self.max_batch,
            max_bytes: self.max_batch_bytes,
        }
    }
}

/// Why the scoring loop should stop taking new records: shutdown was requested, or the
/// service can no longer make progress.
pub struct Stop {
    shutdown: CancellationToken,
    state: Arc<ServiceState>,
}

impl Stop {
    pub fn requested(&self) -> bool {
        self.shutdown.is_cancelled() || self.state.health.has_failed()
    }
}

/// Runs until `shutdown` is cancelled (then drains, commits and returns `Ok`) or until a
/// record cannot be delivered (then returns the error with that batch uncommitted).
pub async fn run(
    config: PipelineConfig,
    state: Arc<ServiceState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("scoring".into())
        .spawn(move || {
            let _ = done.send(run_blocking(&config, &state, shutdown));
        })
        .context("starting the scoring thread")?;
    result
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the scoring thread panicked")))
}

fn run_blocking(
    config: &PipelineConfig,
    state: &Arc<ServiceState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let in_flight = InFlight::new(match config.guarantee {
        Guarantee::AtLeastOnce => MAX_BATCHES_IN_FLIGHT,
        Guarantee::ExactlyOnce { .. } => 1,
    });
    let context = SourceContext::new(
        &config.input_topic,
        Arc::clone(state),
        Arc::clone(&in_flight),
    )
    .with_group_protocol(crate::config::GroupProtocol::of(
        config.properties.iter().chain(&config.consumer_properties),
    ));
    let consumer = Arc::new(create_consumer(config, context).context("creating the consumer")?);
    consumer
        .subscribe(&[&config.input_topic])
        .with_context(|| format!("subscribing to {}", config.input_topic))?;
    let sink = Arc::new(Sink::new(config).context("creating the producer")?);
    info!(
        brokers = %config.brokers,
        input = %config.input_topic,
        output = %config.output_topic,
        dead_letters = %config.dead_letter_topic,
        group = %config.group,
        guarantee = ?config.guarantee,
        "pipeline started"
    );
    let stop = Stop {
        shutdown,
        state: Arc::clone(state),
    };
    let result = match config.guarantee {
        Guarantee::AtLeastOnce => {
            at_least_once::run(config, state, &consumer, &sink, &in_flight, &stop)
        }
        Guarantee::ExactlyOnce { .. } => exactly_once::run(config, state, &consumer, &sink, &stop),
    };
    if let Err(e) = sink.flush(SHUTDOWN_FLUSH_TIMEOUT) {
        warn!(error = %e, "flush at shutdown");
    }
    let result = result.and_then(|()| match state.health.failure() {
        Some(reason) => Err(anyhow::anyhow!(reason)),
        None => Ok(()),
    });
    match &result {
        Ok(()) => info!("pipeline stopped; every consumed record is committed"),
        Err(e) => {
            state.health.fail(format!("{e:#}"));
            warn!(error = %format!("{e:#}"), "pipeline stopped with records uncommitted; they will be read again");
        }
    }
    result
}

/// Counts a batch whose records are all acknowledged (and committed).
fn count_delivered(
    state: &ServiceState,
    destinations: &Destinations,
    opened: Instant,
    model_version: &str,
) {
    let metrics = &state.metrics;
    metrics.records_out.inc_by(destinations.outputs);
    for (reason, n) in Reason::ALL.iter().zip(destinations.dead_letters) {
        if n > 0 {
            metrics
                .records_dead_lettered
                .with_label_values(&[reason.code()])
                .inc_by(n);
        }
    }
    let latency = opened.elapsed();
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        metrics.last_commit.set(now.as_secs_f64());
    }
    metrics.batches.inc();
    metrics.batch_latency.observe(latency.as_secs_f64());
    state.observe.delivered(
        opened,
        destinations.outputs,
        destinations.total() - destinations.outputs,
    );
    debug!(
        size = destinations.total(),
        latency_ms = latency.as_secs_f64() * 1e3,
        model_version,
        "batch committed"
    );
}
