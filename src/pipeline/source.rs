//! The input side: a group consumer whose context tracks the assignment, waits for
//! in-flight batches before giving partitions up, and feeds lag into the metrics.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::{info, warn};

use super::PipelineConfig;
use crate::metrics::Metrics;

/// While the broker is unreachable librdkafka reports the same error many times a second;
/// one line per kind per interval says as much without flooding the logs.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Logs an error at most once per `ERROR_LOG_INTERVAL`, counting what it held back.
#[derive(Default)]
pub struct LogThrottle {
    state: Mutex<Option<(std::time::Instant, u64)>>,
}

impl LogThrottle {
    /// Returns `Some(suppressed)` when this occurrence should be logged.
    pub fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match &mut *state {
            Some((since, suppressed)) if now.duration_since(*since) < ERROR_LOG_INTERVAL => {
                *suppressed += 1;
                None
            }
            slot => {
                let suppressed = slot.map_or(0, |(_, n)| n);
                *slot = Some((now, 0));
                Some(suppressed)
            }
        }
    }
}

/// Longest a revoke waits for in-flight batches to commit before letting the partitions go.
const REVOKE_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Which input partitions this instance owns, shared with the batcher and `/readyz`.
#[derive(Default)]
pub struct Assignment {
    partitions: Mutex<HashSet<i32>>,
    /// Bumped on every rebalance, so the batcher can tell its records may be stale.
    generation: AtomicU64,
    /// Set by the first assignment, even an empty one: the group has answered.
    received: std::sync::atomic::AtomicBool,
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

    pub fn received(&self) -> bool {
        self.received.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, topic: &str, change: &TopicPartitionList, assign: bool) {
        let mut owned = self.lock();
        for elem in change.elements_for_topic(topic) {
            if assign {
                owned.insert(elem.partition());
            } else {
                owned.remove(&elem.partition());
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        if assign {
            self.received.store(true, Ordering::Release);
        }
    }
}

/// Batches handed to the sink whose offsets are not committed yet.
#[derive(Default)]
pub struct InFlight {
    count: Mutex<usize>,
    drained: Condvar,
}

impl InFlight {
    pub fn started(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    pub fn finished(&self) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.drained.notify_all();
        }
    }

    /// Blocks until no batch is in flight or `timeout` passes; true when drained.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        let (n, _) = self
            .drained
            .wait_timeout_while(n, timeout, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        *n == 0
    }
}

pub struct SourceContext {
    pub input_topic: String,
    pub client_errors: LogThrottle,
    pub metrics: Arc<Metrics>,
    pub assignment: Arc<Assignment>,
    pub in_flight: Arc<InFlight>,
}

impl ClientContext for SourceContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if let Some(suppressed) = self.client_errors.admit() {
            warn!(error = %error, reason, suppressed, "Kafka client error");
        }
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.input_topic) else {
            return;
        };
        for (id, partition) in &topic.partitions {
            // librdkafka reports -1 for partitions it has no figure for (and the internal
            // UA partition); those are not lag.
            if *id >= 0 && partition.consumer_lag >= 0 {
                self.metrics
                    .consumer_lag
                    .with_label_values(&[&self.input_topic, &id.to_string()])
                    .set(partition.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Finish what was already produced from these partitions before the next owner
            // starts on them, so a rebalance does not turn into duplicates. Blocking here is
            // only safe where other tasks can run meanwhile (a multi-threaded runtime).
            let multi_threaded = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if multi_threaded {
                let drained = tokio::task::block_in_place(|| {
                    self.in_flight.wait_drained(REVOKE_DRAIN_TIMEOUT)
                });
                if !drained {
                    warn!(
                        "partitions revoked with batches still uncommitted; they will be re-read"
                    );
                }
            }
            self.assignment.apply(&self.input_topic, partitions, false);
            info!(partitions = partitions.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.assignment.apply(&self.input_topic, partitions, true);
                info!(partitions = partitions.count(), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
        self.metrics
            .assigned_partitions
            .set(self.assignment.count() as i64);
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Offsets are committed synchronously by the pipeline, which reports its own
            // failures; this sees librdkafka's own commits (on close), which matter too.
            warn!(error = %e, "offset commit failed");
        }
    }
}

pub type Consumer = StreamConsumer<SourceContext>;

pub fn create_consumer(config: &PipelineConfig, context: SourceContext) -> KafkaResult<Consumer> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Apache Kafka answers a fetch as soon as data arrives, but some brokers (tansu,
        // librdkafka's mock) hold a fetch that found nothing for the full wait, which would
        // add up to 500 ms to every record that arrives while one is pending. 50 ms bounds
        // that at a few idle fetches a second.
        .set("fetch.wait.max.ms", "50")
        .set("statistics.interval.ms", "5000")
        // Bound what is fetched ahead of the pipeline (librdkafka's defaults prefetch up to
        // 100,000 records or 64 MiB): a slow sink then pauses fetching instead of buffering
        // the topic in memory, and peak RSS stays small. 20,000 records is still many
        // batches ahead at the default --max-batch.
        .set("queued.min.messages", "20000")
        .set("queued.max.messages.kbytes", "8192")
        // One fetch response is one allocation; 50 MiB (the default) would be most of the
        // service's memory for no gain in throughput.
        .set("fetch.max.bytes", "4194304");
    for (key, value) in config.properties.iter().chain(&config.consumer_properties) {
        client.set(key, value);
    }
    client.create_with_context(context)
}
