//! Prometheus metrics, one registry per service instance (tests run several in a process).

use prometheus::core::Collector;
use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
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
        m
    }

    /// The registry, for metrics of optional parts (the online learner) to join.
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
