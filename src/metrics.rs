//! Prometheus metrics, one registry per service instance (tests run several in a process).

use prometheus::core::Collector;
use prometheus::{
    exponential_buckets, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub records_in: IntCounter,
    pub records_out: IntCounter,
    pub records_dead_lettered: IntCounterVec,
    pub batches: IntCounter,
    pub batch_size: Histogram,
    pub batch_latency: Histogram,
    pub delivery_retries: IntCounter,
    pub commit_failures: IntCounter,
    pub reloads: IntCounterVec,
    pub transactions: IntCounterVec,
    pub model_info: IntGaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub assigned_partitions: IntGauge,
    pub last_commit: prometheus::Gauge,
}

pub(crate) fn register<T: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<T>,
) -> T {
    // invariant: every name, help text and label set below is a fixed, distinct literal, so
    // neither creating nor registering a metric can fail at run time.
    let metric = metric.expect("static metric definition is valid"); // invariant: see above
    registry
        .register(Box::new(metric.clone()))
        .expect("static metric names are distinct"); // invariant: see above
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let ns = |name: &str| format!("streamscore_{name}");
        let m = Self {
            records_in: register(
                &r,
                IntCounter::new(
                    ns("records_in_total"),
                    "Records consumed from the input topic",
                ),
            ),
            records_out: register(
                &r,
                IntCounter::new(
                    ns("records_out_total"),
                    "Predictions acknowledged on the output topic",
                ),
            ),
            records_dead_lettered: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        ns("records_dead_lettered_total"),
                        "Records acknowledged on the dead-letter topic, by reason",
                    ),
                    &["reason"],
                ),
            ),
            batches: register(
                &r,
                IntCounter::new(ns("batches_total"), "Micro-batches committed"),
            ),
            batch_size: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(ns("batch_size_records"), "Records per micro-batch")
                        .buckets(vec![
                            1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
                        ]),
                ),
            ),
            batch_latency: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        ns("batch_latency_seconds"),
                        "From a batch's first record consumed to all its outputs acknowledged",
                    )
                    .buckets(exponential_buckets(0.001, 2.0, 14).unwrap_or_default()),
                ),
            ),
            delivery_retries: register(
                &r,
                IntCounter::new(
                    ns("delivery_retries_total"),
                    "Output records re-sent after a failed delivery",
                ),
            ),
            commit_failures: register(
                &r,
                IntCounter::new(
                    ns("commit_failures_total"),
                    "Offset commits that failed (those records will be re-read)",
                ),
            ),
            reloads: register(
                &r,
                IntCounterVec::new(
                    Opts::new(ns("model_reloads_total"), "Model reloads, by result"),
                    &["result"],
                ),
            ),
            transactions: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        ns("transactions_total"),
                        "Exactly-once batches, by result (committed or aborted)",
                    ),
                    &["result"],
                ),
            ),
            model_info: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(ns("model_info"), "The model scoring now (value 1)"),
                    &["kind", "version"],
                ),
            ),
            consumer_lag: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        ns("consumer_lag_records"),
                        "Records behind the high watermark per input partition",
                    ),
                    &["topic", "partition"],
                ),
            ),
            assigned_partitions: register(
                &r,
                IntGauge::new(
                    ns("assigned_partitions"),
                    "Input partitions assigned to this instance",
                ),
            ),
            last_commit: register(
                &r,
                prometheus::Gauge::new(
                    ns("last_commit_timestamp_seconds"),
                    "Unix time of the last batch whose outputs were acknowledged and offsets committed",
                ),
            ),
            registry: r,
        };
        // Every series exists from the start, so dashboards and alerts see zeros, not gaps.
        for reason in crate::record::Reason::ALL {
            m.records_dead_lettered.with_label_values(&[reason.code()]);
        }
        m.reloads.with_label_values(&["ok"]);
        m.reloads.with_label_values(&["failed"]);
        m.transactions.with_label_values(&["committed"]);
        m.transactions.with_label_values(&["aborted"]);
        m
    }

    /// The registry, for metrics of optional parts (the observer, the online learner).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn set_model(&self, kind: &str, version: &str) {
        self.model_info.reset();
        self.model_info.with_label_values(&[kind, version]).set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid label data, which we never produce.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The observer's metrics: drift, windows, the shadow model, and the measures OpenTelemetry's
/// messaging semantic conventions name, under their Prometheus spelling
/// (`messaging.client.consumed.messages` → `messaging_client_consumed_messages_total`) and
/// attribute names (`messaging.destination.name` → `messaging_destination_name`).
pub struct ObserveMetrics {
    pub feature_psi: GaugeVec,
    pub features_drifted: IntGauge,
    pub windows_emitted: IntCounter,
    pub late_records: IntCounter,
    pub shadow_records: IntCounterVec,
    pub shadow_dropped_records: IntCounter,
    pub shadow_batch_seconds: Histogram,
    /// `messaging.client.consumed.messages`, by destination and consumer group.
    pub consumed_messages: IntCounterVec,
    /// `messaging.client.sent.messages`, by destination.
    pub sent_messages: IntCounterVec,
    /// `messaging.process.duration`: one observation per micro-batch processed.
    pub process_duration: HistogramVec,
}

impl ObserveMetrics {
    pub fn new(r: &Registry) -> Self {
        let ns = |name: &str| format!("streamscore_{name}");
        let otel = [
            "messaging_system",
            "messaging_destination_name",
            "messaging_operation_name",
        ];
        let otel_group = [
            "messaging_system",
            "messaging_destination_name",
            "messaging_consumer_group_name",
            "messaging_operation_name",
        ];
        let m = Self {
            feature_psi: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        ns("feature_psi"),
                        "Population stability index of each input feature over the last closed stats window, against the model's training reference",
                    ),
                    &["feature"],
                ),
            ),
            features_drifted: register(
                r,
                IntGauge::new(
                    ns("features_drifted"),
                    "Input features whose PSI in the last closed window is above the drift threshold",
                ),
            ),
            windows_emitted: register(
                r,
                IntCounter::new(ns("stats_windows_total"), "Statistics windows closed and emitted"),
            ),
            late_records: register(
                r,
                IntCounter::new(
                    ns("stats_late_records_total"),
                    "Records left out of the statistics because every window they belong to was already emitted (event time)",
                ),
            ),
            shadow_records: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        ns("shadow_records_total"),
                        "Records scored by the shadow model, by comparison with the served model (agreed, disagreed, shadow_refused, served_refused)",
                    ),
                    &["result"],
                ),
            ),
            shadow_dropped_records: register(
                r,
                IntCounter::new(
                    ns("shadow_dropped_records_total"),
                    "Records the shadow model skipped because it fell behind the stream",
                ),
            ),
            shadow_batch_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(ns("shadow_batch_seconds"), "Shadow model scoring time per batch")
                        .buckets(exponential_buckets(0.0001, 2.0, 16).unwrap_or_default()),
                ),
            ),
            consumed_messages: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "messaging_client_consumed_messages_total",
                        "OpenTelemetry messaging.client.consumed.messages: messages delivered to the application by the consumer",
                    ),
                    &otel_group,
                ),
            ),
            sent_messages: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "messaging_client_sent_messages_total",
                        "OpenTelemetry messaging.client.sent.messages: messages the producer sent and the broker acknowledged",
                    ),
                    &otel,
                ),
            ),
            process_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "messaging_process_duration_seconds",
                        "OpenTelemetry messaging.process.duration: decode and score of one consumed micro-batch",
                    )
                    .buckets(exponential_buckets(0.0001, 2.0, 18).unwrap_or_default()),
                    &otel_group,
                ),
            ),
        };
        for result in ["agreed", "disagreed", "shadow_refused", "served_refused"] {
            m.shadow_records.with_label_values(&[result]);
        }
        m
    }
}
