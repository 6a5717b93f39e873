//! The stats emitter: a thread that closes windows as the watermark passes them, writes each
//! as one JSON record to the stats topic, and sets the drift gauges.
//!
//! **Once, across restarts.** Every window record carries this instance's name and its end.
//! Windows go to partition 0 of the stats topic, in order, through an idempotent producer
//! (no duplicates from librdkafka's own retries). At start the service reads the tail of that
//! partition and resumes after the last window it finds for its instance: a window already
//! on the topic is never emitted again, even in event time, where the records a restart
//! re-reads would otherwise rebuild it. A window being emitted when the process dies is
//! either on the topic (and skipped after the restart) or not (and lost, with the
//! in-memory counts of the window still open: statistics are not part of the offsets a
//! batch commits).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::now_ms;
use crate::service::state::ServiceState;

/// How many of the stats topic's last records a restart searches for its own windows.
const RESUME_SCAN: i64 = 1000;
const RESUME_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the end of the last window `instance` wrote to `topic` (partition 0), if any.
pub fn last_emitted(
    mut client: ClientConfig,
    topic: &str,
    instance: &str,
) -> anyhow::Result<Option<i64>> {
    let consumer: BaseConsumer = client
        .set("group.id", format!("{instance}-stats-resume"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, RESUME_TIMEOUT)?;
    if high <= low {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset((high - RESUME_SCAN).max(low)))?;
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + RESUME_TIMEOUT;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let window = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok());
                if let Some(w) = window.filter(|w| w["instance"] == instance) {
                    if let Some(end) = w["window_end_ms"].as_i64() {
                        last = last.max(Some(end));
                    }
                }
                if m.offset() + 1 >= high {
                    break;
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => warn!(error = %e, "reading the stats topic back"),
            None => {}
        }
    }
    Ok(last)
}

/// Closes windows every `tick` until `shutdown`; writes them to the stats topic when one is
/// configured. Runs on its own thread.
pub fn spawn(
    state: Arc<ServiceState>,
    producer: Option<ClientConfig>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = &state.observe.config;
    let topic = config.topic.clone();
    let tick = Duration::from_millis((config.window.slide_ms / 10).clamp(50, 1000) as u64);
    let producer: Option<ThreadedProducer<DefaultProducerContext>> = match (&topic, producer) {
        (Some(_), Some(mut client)) => Some(
            client
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .create()?,
        ),
        _ => None,
    };
    std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || {
            while !shutdown.is_cancelled() {
                std::thread::sleep(tick);
                emit(&state, producer.as_ref(), topic.as_deref(), now_ms());
            }
            if let Some(p) = &producer {
                if let Err(e) = p.flush(Duration::from_secs(10)) {
                    warn!(error = %e, "flushing the stats topic at shutdown");
                }
            }
        })?;
    Ok(())
}

/// One round at `now` (ms): close what the watermark passed, publish it, set the gauges.
/// Returns the windows closed.
pub fn emit(
    state: &ServiceState,
    producer: Option<&ThreadedProducer<DefaultProducerContext>>,
    topic: Option<&str>,
    now: i64,
) -> Vec<serde_json::Value> {
    let observe = &state.observe;
    let metrics = &observe.metrics;
    let mut emitted = Vec::new();
    for (window, drift) in observe.close_windows(now) {
        metrics.windows_emitted.inc();
        metrics
            .late_records
            .inc_by(window["late_records"].as_u64().unwrap_or(0));
        let threshold = observe.config.drift_threshold;
        let mut drifted = 0;
        for (feature, psi) in &drift {
            if let Some(psi) = psi {
                metrics.feature_psi.with_label_values(&[feature]).set(*psi);
                drifted += i64::from(*psi > threshold);
            }
        }
        // A window without inputs says nothing about drift: the gauges keep the last window
        // that had some.
        if drift.iter().any(|(_, psi)| psi.is_some()) {
            metrics.features_drifted.set(drifted);
        }
        if drifted > 0 {
            info!(
                drifted,
                window_end = %window["window_end"],
                "input drift above the threshold"
            );
        }
        if let (Some(producer), Some(topic)) = (producer, topic) {
            let key = format!(
                "{}/{}",
                observe.config.instance,
                window["window_start"].as_str().unwrap_or_default()
            );
            let value = window.to_string();
            let record = BaseRecord::<str, str>::to(topic)
                .partition(0)
                .key(&key)
                .payload(&value);
            if let Err((e, _)) = producer.send(record) {
                warn!(error = %e, "a stats window could not be queued for the stats topic");
            }
        }
        emitted.push(window);
    }
    emitted
}
