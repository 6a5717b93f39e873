//! The input side: a group consumer polled on the scoring thread, whose context keeps the
//! service's view of the assignment, lets partitions go only once their produced batches are
//! committed, notes which partitions were revoked for the batcher, and feeds lag into the
//! metrics.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::{error, info, warn};

use super::commit::{to_partition_list, UnsavedOffsets};
use super::in_flight::InFlight;
use super::PipelineConfig;
use crate::config::GroupProtocol;
use crate::logging::LogThrottle;
use crate::service::state::ServiceState;

/// Longest a revoke waits for produced batches to commit before letting the partitions go.
const REVOKE_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub type Consumer = BaseConsumer<SourceContext>;

/// The consumer group session timeout unless `-X session.timeout.ms` says otherwise.
pub const DEFAULT_SESSION_TIMEOUT_MS: &str = "10000";

pub struct SourceContext {
    input_topic: String,
    state: Arc<ServiceState>,
    in_flight: Arc<InFlight>,
    client_errors: LogThrottle,
    /// Partitions revoked since the batcher last looked. Kept apart from the assignment,
    /// because a partition revoked and assigned again inside one batch window must still
    /// lose the records the batch holds: its new owner (us) restarts from the committed
    /// offset and reads them again.
    revoked: Mutex<BTreeSet<i32>>,
    /// Whether `revoked` may hold anything: the batcher asks after every poll, and a flag
    /// costs it less than a lock.
    revoked_pending: AtomicBool,
    /// Offsets the commit stage delivered but could not commit; committed on revoke.
    pub unsaved: UnsavedOffsets,
    /// Set under KIP-848 until the group first answers: librdkafka retries a broker without
    /// ConsumerGroupHeartbeat forever and says why only in its debug log, so the service
    /// says it once this much time has passed.
    kip848_silence: Mutex<Option<Instant>>,
}

/// How long a KIP-848 member may wait for its first assignment before the service says that
/// the broker may not support the protocol.
const KIP848_FIRST_ASSIGNMENT: Duration = Duration::from_secs(20);

impl SourceContext {
    pub fn new(input_topic: &str, state: Arc<ServiceState>, in_flight: Arc<InFlight>) -> Self {
        Self {
            input_topic: input_topic.to_owned(),
            state,
            in_flight,
            client_errors: LogThrottle::default(),
            revoked: Mutex::new(BTreeSet::new()),
            revoked_pending: AtomicBool::new(false),
            unsaved: UnsavedOffsets::default(),
            kip848_silence: Mutex::new(None),
        }
    }

    /// Watches for the first assignment under KIP-848 (see `kip848_silence`).
    pub fn with_group_protocol(self, protocol: GroupProtocol) -> Self {
        let deadline =
            (protocol == GroupProtocol::Consumer).then(|| Instant::now() + KIP848_FIRST_ASSIGNMENT);
        *self
            .kip848_silence
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = deadline;
        self
    }

    /// Under KIP-848, once the group has stayed silent too long: readiness says why, once.
    fn check_kip848_silence(&self) {
        let mut silence = self
            .kip848_silence
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(deadline) = *silence else { return };
        if self.state.assignment.received() {
            *silence = None;
        } else if Instant::now() >= deadline {
            *silence = None;
            let why = format!(
                "no assignment from the consumer group after {} s with --group-protocol consumer: \
                 the broker may not support KIP-848 (ConsumerGroupHeartbeat: Apache Kafka 4.0+; \
                 tansu 0.6 and older Kafka do not), and librdkafka retries without saying so; \
                 use --group-protocol classic with such a broker",
                KIP848_FIRST_ASSIGNMENT.as_secs()
            );
            warn!("{why}");
            self.state.health.set_degraded(Some(why));
        }
    }

    /// The partitions revoked since the last call.
    pub fn take_revoked(&self) -> BTreeSet<i32> {
        if !self.revoked_pending.load(Ordering::Relaxed)
            || !self.revoked_pending.swap(false, Ordering::Acquire)
        {
            return BTreeSet::new();
        }
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn partitions_of(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(&self.input_topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

impl SourceContext {
    /// Sees every consumer error, from the client's error callback and from polls: one that
    /// librdkafka cannot recover from by itself stops the pipeline (readiness false now, exit
    /// non-zero), the rest are logged, throttled.
    pub fn consumer_error(&self, error: &KafkaError, reason: &str) {
        if let Some(why) = self.unrecoverable_now(error) {
            error!(error = %error, reason, "{why}; stopping with uncommitted records left for a restart");
            self.state
                .health
                .fail(format!("{why}: {error} {reason}").trim_end().to_owned());
            return;
        }
        if let Some(suppressed) = self.client_errors.admit() {
            warn!(error = %error, reason, suppressed, "Kafka consumer error");
        }
    }
}

impl SourceContext {
    /// `unrecoverable`, plus TLS failures before the group has ever answered: then they are
    /// the configuration (an untrusted certificate, a missing CA file), which librdkafka
    /// would retry forever while the service looked merely slow to start. Later ones may be
    /// a broker restarting or rotating its certificate, and are left to librdkafka.
    pub fn unrecoverable_now(&self, error: &KafkaError) -> Option<&'static str> {
        unrecoverable(error).or_else(|| {
            (error.rdkafka_error_code() == Some(RDKafkaErrorCode::SSL)
                && !self.state.assignment.received())
            .then_some("cannot connect to the brokers over TLS")
        })
    }
}

/// Consumer errors that librdkafka does not get past by itself, or gets past only by
/// skipping records: a fenced static member, missing permissions, a batch it cannot
/// decompress or parse (it fetches that batch again and again, so the partition stalls while
/// the instance looks healthy: `tests/consumer_errors.rs`).
pub fn unrecoverable(error: &KafkaError) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    Some(match error.rdkafka_error_code()? {
        C::Fatal | C::FencedInstanceId | C::Fenced => "fatal consumer error",
        C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication => "not authorized to consume",
        C::BadCompression | C::UnsupportedCompressionType | C::NotImplemented | C::BadMessage => {
            "input records that cannot be read"
        }
        _ => return None,
    })
}

impl SourceContext {
    /// Commits what the commit stage delivered but failed to commit for these partitions,
    /// so that their next owner does not score those records again.
    fn commit_unsaved(&self, consumer: &BaseConsumer<Self>, partitions: &[i32]) {
        let unsaved = self.unsaved.take(partitions);
        if unsaved.is_empty() {
            return;
        }
        let result = to_partition_list(&self.input_topic, &unsaved)
            .and_then(|tpl| consumer.commit(&tpl, CommitMode::Sync));
        match result {
            Ok(()) => info!(
                partitions = unsaved.len(),
                "committed offsets whose earlier commit had failed before letting the partitions go"
            ),
            Err(e) => {
                self.state.metrics.commit_failures.inc();
                warn!(error = %e, "partitions revoked with delivered records uncommitted; they will be scored again");
            }
        }
    }
}

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.consumer_error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.check_kip848_silence();
        let Some(topic) = statistics.topics.get(&self.input_topic) else {
            return;
        };
        for (id, partition) in &topic.partitions {
            // librdkafka reports -1 for partitions it has no figure for (and the internal
            // UA partition); those are not lag.
            if *id >= 0 && partition.consumer_lag >= 0 {
                self.state
                    .metrics
                    .consumer_lag
                    .with_label_values(&[&self.input_topic, &id.to_string()])
                    .set(partition.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // This runs inside the scoring thread's poll, while the commit stage runs on its
            // own thread: waiting here lets the batches already produced from these
            // partitions commit before their next owner starts on them.
            if !self.in_flight.wait_drained(REVOKE_DRAIN_TIMEOUT) {
                warn!("partitions revoked with batches still uncommitted; they will be re-read");
            }
            let revoked = self.partitions_of(partitions);
            self.commit_unsaved(consumer, &revoked);
            self.revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(revoked.iter().copied());
            self.revoked_pending.store(true, Ordering::Release);
            self.state.assignment.revoke(revoked);
            info!(partitions = partitions.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                if !self.state.assignment.received()
                    && self
                        .state
                        .health
                        .degraded()
                        .is_some_and(|d| d.contains("KIP-848"))
                {
                    self.state.health.set_degraded(None);
                }
                self.state.assignment.assign(self.partitions_of(partitions));
                info!(partitions = partitions.count(), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
        self.state
            .metrics
            .assigned_partitions
            .set(self.state.assignment.count() as i64);
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // The pipeline commits synchronously and reports its own failures; this sees
            // librdkafka's own commits (on close), which matter too.
            warn!(error = %e, "offset commit failed");
        }
    }
}

pub fn create_consumer(config: &PipelineConfig, context: SourceContext) -> KafkaResult<Consumer> {
    consumer_settings(config).create_with_context(context)
}

/// The consumer's settings, also used by `bench` for the loopback ceiling.
pub fn consumer_settings(config: &PipelineConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Apache Kafka answers a fetch as soon as data arrives, but some brokers (tansu,
        // librdkafka's mock) hold a fetch that found nothing at the moment it came in for the
        // full wait, even if records arrive meanwhile. A consumer that keeps up sends its next
        // fetch right after the last answer, when there is nothing yet, so each round trip
        // took the whole wait: librdkafka's 500 ms, or 50 ms, was added to record latency.
        // 10 ms costs at most a hundred idle fetches a second against such a broker; latency
        // mode halves the wait, as it trades idle round trips for latency everywhere.
        .set(
            "fetch.wait.max.ms",
            if config.batch_interval.is_zero() {
                "5"
            } else {
                "10"
            },
        )
        .set("statistics.interval.ms", "5000")
        // Prefetch is bounded so that a slow sink pauses fetching instead of buffering the
        // topic in memory: 4 MiB of queued records, about 25,000 iris records. librdkafka
        // (>= 2.2) then pauses fetching for `fetch.queue.backoff.ms` before it looks again;
        // its default of 1 s turned every backlog into a stall of a second per queue-full.
        // 10 ms keeps the fetcher within a few batches of the pipeline at a cost of at most
        // a hundred cheap checks a second while the queue is full.
        .set("queued.min.messages", "10000")
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.queue.backoff.ms", "10")
        // The prefetch bounds above are checked before each fetch, so one response comes on
        // top of them, and it grows when it is read: every record of a compressed batch
        // becomes an op of its own (heaptrack: 18 MB of them at one e2e peak, from 16
        // partitions' batches of thousands of lz4 records in one 4 MiB response). About the
        // least librdkafka allows (at least `message.max.bytes`, 1 MB) bounds that, and
        // still carries tens of thousands of small records per fetch.
        .set("fetch.max.bytes", "1048576");
    let settings = config.properties.iter().chain(&config.consumer_properties);
    // Under KIP-848 the broker owns the session, the heartbeat and the assignment, and
    // librdkafka refuses a client that sets them.
    if GroupProtocol::of(settings) == GroupProtocol::Classic {
        client
            // librdkafka's 45 s default is how long a crashed instance's partitions sit idle
            // before the group gives them to someone else (measured: 44-88 s per restart on
            // the mock). A service that restarts in milliseconds and heartbeats from its own
            // thread needs far less; with static membership (`--instance-id`) a restart
            // within this window takes its partitions back without any rebalance.
            .set("session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS)
            .set("heartbeat.interval.ms", "2000")
            // The eager assignors (librdkafka's default range,roundrobin) revoke every
            // partition of every member on each join or leave, so the whole group stops
            // until the rebalance is over. Cooperative-sticky revokes only the partitions
            // that change owner; the others keep flowing. The revoke handling is the same
            // for both: `pre_rebalance` sees just the partitions that go.
            .set("partition.assignment.strategy", "cooperative-sticky");
    }
    for (key, value) in config.properties.iter().chain(&config.consumer_properties) {
        client.set(key, value);
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::sink::producer_settings;
    use crate::pipeline::Guarantee;

    fn config(batch_interval: Duration, properties: &[(&str, &str)]) -> PipelineConfig {
        PipelineConfig {
            brokers: "127.0.0.1:9".into(),
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            consumer_properties: Vec::new(),
            input_topic: "in".into(),
            output_topic: "out".into(),
            dead_letter_topic: "dlq".into(),
            group: "g".into(),
            batch_interval,
            max_batch: 1000,
            max_batch_bytes: 1 << 20,
            max_record_bytes: 1 << 20,
            guarantee: Guarantee::AtLeastOnce,
            format: Default::default(),
        }
    }

    #[test]
    fn latency_mode_neither_lingers_nor_waits_as_long_for_empty_fetches() {
        let windowed = config(Duration::from_millis(100), &[]);
        let latency = config(Duration::ZERO, &[]);
        assert_eq!(producer_settings(&windowed).get("linger.ms"), Some("5"));
        assert_eq!(producer_settings(&latency).get("linger.ms"), Some("0"));
        assert_eq!(
            consumer_settings(&windowed).get("fetch.wait.max.ms"),
            Some("10")
        );
        assert_eq!(
            consumer_settings(&latency).get("fetch.wait.max.ms"),
            Some("5")
        );
    }

    #[test]
    fn passthrough_properties_override_the_mode_defaults() {
        let latency = config(
            Duration::ZERO,
            &[("linger.ms", "2"), ("fetch.wait.max.ms", "50")],
        );
        assert_eq!(producer_settings(&latency).get("linger.ms"), Some("2"));
        assert_eq!(
            consumer_settings(&latency).get("fetch.wait.max.ms"),
            Some("50")
        );
    }

    #[test]
    fn classic_groups_rebalance_cooperatively_and_kip848_leaves_the_group_to_the_broker() {
        let classic = consumer_settings(&config(Duration::ZERO, &[]));
        assert_eq!(
            classic.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(
            classic.get("session.timeout.ms"),
            Some(DEFAULT_SESSION_TIMEOUT_MS)
        );
        let eager = consumer_settings(&config(
            Duration::ZERO,
            &[("partition.assignment.strategy", "range")],
        ));
        assert_eq!(eager.get("partition.assignment.strategy"), Some("range"));

        let mut kip848 = config(Duration::ZERO, &[]);
        kip848.consumer_properties = vec![("group.protocol".into(), "consumer".into())];
        let kip848 = consumer_settings(&kip848);
        assert_eq!(kip848.get("group.protocol"), Some("consumer"));
        for key in [
            "session.timeout.ms",
            "heartbeat.interval.ms",
            "partition.assignment.strategy",
            "group.protocol.type",
        ] {
            assert_eq!(kip848.get(key), None, "{key}");
        }
    }

    #[test]
    fn errors_librdkafka_cannot_get_past_are_unrecoverable() {
        use RDKafkaErrorCode as C;
        for code in [
            C::Fatal,
            C::FencedInstanceId,
            C::TopicAuthorizationFailed,
            C::GroupAuthorizationFailed,
            C::SaslAuthenticationFailed,
            C::BadCompression,
            C::UnsupportedCompressionType,
            C::BadMessage,
        ] {
            assert!(
                unrecoverable(&KafkaError::MessageConsumption(code)).is_some(),
                "{code:?}"
            );
        }
        for code in [
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::NotCoordinator,
            C::UnknownTopicOrPartition,
            C::RequestTimedOut,
        ] {
            assert!(
                unrecoverable(&KafkaError::MessageConsumption(code)).is_none(),
                "{code:?}"
            );
        }
        assert!(unrecoverable(&KafkaError::Global(C::Fatal)).is_some());
    }
}
