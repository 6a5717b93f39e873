//! The output side: one idempotent producer writing predictions and dead letters, and the
//! wait for their acknowledgements that gates every offset commit.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tracing::warn;

use super::{Guarantee, PipelineConfig};
use crate::metrics::Metrics;
use crate::record::Reason;
use crate::transform::Outcome;

/// Re-sends of one record before the pipeline gives up and stops uncommitted.
const MAX_SEND_ATTEMPTS: u32 = 5;
/// Pause before re-offering a record to a full producer queue.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);

pub const HEADER_REASON: &str = "streamscore.reason";
pub const HEADER_ERROR: &str = "streamscore.error";
pub const HEADER_SOURCE_TOPIC: &str = "streamscore.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "streamscore.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "streamscore.source.offset";
/// Present when the original value was too large for the dead-letter topic and was dropped.
pub const HEADER_PAYLOAD_OMITTED: &str = "streamscore.payload.omitted";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Output,
    DeadLetter(Reason),
}

/// A record handed to librdkafka and not yet acknowledged.
pub struct Pending {
    delivery: DeliveryFuture,
    destination: Destination,
    attempts: u32,
    /// The input record this output answers, named in every error about it.
    source: (i32, i64),
}

pub struct Sink {
    producer: FutureProducer,
    output_topic: String,
    dead_letter_topic: String,
    metrics: Arc<Metrics>,
}

impl Sink {
    pub fn new(config: &PipelineConfig, metrics: Arc<Metrics>) -> KafkaResult<Self> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            // Idempotence makes librdkafka's own retries safe: no duplicates, no reordering
            // within a partition, from broker-side retries.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // A few ms of linger turns a micro-batch into a handful of produce requests.
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            // Dead letters carry the original value, which may be as large as anything the
            // input topic accepted.
            .set("message.max.bytes", "16777216");
        if let Guarantee::ExactlyOnce { transactional_id } = &config.guarantee {
            client.set("transactional.id", transactional_id);
        }
        for (key, value) in &config.properties {
            client.set(key, value);
        }
        Ok(Self {
            producer: client.create()?,
            output_topic: config.output_topic.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            metrics,
        })
    }

    /// Enqueues one record per input: the prediction, or the input itself as a dead letter.
    pub async fn send_batch(
        &self,
        inputs: &[OwnedMessage],
        outcomes: Vec<Outcome>,
    ) -> anyhow::Result<Vec<Pending>> {
        let mut pending = Vec::with_capacity(inputs.len());
        for (input, outcome) in inputs.iter().zip(outcomes) {
            let (destination, delivery) = match outcome {
                Outcome::Scored(value) => {
                    let mut record = FutureRecord::<[u8], [u8]>::to(&self.output_topic)
                        .payload(value.as_slice());
                    if let Some(key) = input.key() {
                        record = record.key(key);
                    }
                    (Destination::Output, self.enqueue(record).await?)
                }
                Outcome::Rejected(rejection) => {
                    let headers =
                        dead_letter_headers(input, rejection.reason.code(), &rejection.detail);
                    let record = self.dead_letter_record(input.key(), input.payload(), headers);
                    (
                        Destination::DeadLetter(rejection.reason),
                        self.enqueue(record).await?,
                    )
                }
            };
            pending.push(Pending {
                delivery,
                destination,
                attempts: 1,
                source: (input.partition(), input.offset()),
            });
        }
        Ok(pending)
    }

    fn dead_letter_record<'a>(
        &'a self,
        key: Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
        headers: OwnedHeaders,
    ) -> FutureRecord<'a, [u8], [u8]> {
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.dead_letter_topic).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        record
    }

    /// Hands a record to librdkafka, waiting while its queue is full: this is where a slow
    /// broker pushes back on consumption instead of memory growing without bound.
    async fn enqueue<'a>(
        &self,
        mut record: FutureRecord<'a, [u8], [u8]>,
    ) -> anyhow::Result<DeliveryFuture> {
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((
                    KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                    back,
                )) if back.topic == self.dead_letter_topic && back.payload.is_some() => {
                    record = without_payload(back);
                }
                Err((e, back)) => bail!("cannot produce to {}: {e}", back.topic),
            }
        }
    }

    /// Waits for every record of a batch to be acknowledged, re-sending the ones that
    /// failed. Returns an error only when a record keeps failing: the caller then stops
    /// without committing, so the batch is re-read on restart and nothing is lost.
    pub async fn confirm(&self, pending: Vec<Pending>) -> anyhow::Result<()> {
        let mut queue = pending;
        while !queue.is_empty() {
            let mut failed = Vec::new();
            for p in queue {
                match p.delivery.await {
                    Ok(Ok(_)) => self.count_acknowledged(p.destination),
                    Ok(Err((error, message))) => {
                        failed.push((p.destination, p.attempts, p.source, error, message))
                    }
                    Err(_) => bail!("the producer shut down before acknowledging a record"),
                }
            }
            queue = Vec::with_capacity(failed.len());
            for (destination, attempts, source, error, message) in failed {
                let (partition, offset) = source;
                if attempts >= MAX_SEND_ATTEMPTS {
                    return Err(anyhow!(
                        "giving up on the output of input partition {partition} offset {offset} \
                         to {} after {attempts} attempts: {error}",
                        message.topic()
                    ));
                }
                warn!(topic = message.topic(), input_partition = partition, input_offset = offset,
                      error = %error, attempt = attempts, "delivery failed; re-sending");
                self.metrics.delivery_retries.inc();
                let mut record = FutureRecord::<[u8], [u8]>::to(message.topic());
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if let Some(headers) = message.headers() {
                    record = record.headers(headers.clone());
                }
                if let Some(payload) = message.payload() {
                    record = record.payload(payload);
                }
                let too_large = matches!(
                    error,
                    KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
                );
                if too_large && matches!(destination, Destination::DeadLetter(_)) {
                    record = without_payload(record);
                }
                queue.push(Pending {
                    delivery: self.enqueue(record).await?,
                    destination,
                    attempts: attempts + 1,
                    source,
                });
            }
        }
        Ok(())
    }

    /// Counts the records of a committed transaction, whose deliveries have all completed.
    pub async fn count_committed(&self, pending: Vec<Pending>) {
        for p in pending {
            match p.delivery.await {
                Ok(Ok(_)) => self.count_acknowledged(p.destination),
                // The broker committed the transaction, so this record is in the log; a
                // report saying otherwise is librdkafka's bookkeeping, not a lost record.
                _ => warn!("a committed transaction reported a failed delivery"),
            }
        }
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    fn count_acknowledged(&self, destination: Destination) {
        match destination {
            Destination::Output => self.metrics.records_out.inc(),
            Destination::DeadLetter(reason) => self
                .metrics
                .records_dead_lettered
                .with_label_values(&[reason.code()])
                .inc(),
        }
    }

    /// Waits for everything queued in librdkafka to be delivered (used at shutdown).
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        rdkafka::producer::Producer::flush(&self.producer, timeout)
    }
}

/// A dead letter too large for the dead-letter topic keeps its key and headers, loses its
/// value, and says so, rather than blocking the partition forever.
fn without_payload(record: FutureRecord<'_, [u8], [u8]>) -> FutureRecord<'_, [u8], [u8]> {
    let headers = record.headers.clone().unwrap_or_default().insert(Header {
        key: HEADER_PAYLOAD_OMITTED,
        value: Some("true"),
    });
    FutureRecord {
        payload: None,
        headers: Some(headers),
        ..record
    }
}

fn dead_letter_headers(input: &OwnedMessage, reason: &str, detail: &str) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(5 + input.headers().map_or(0, |h| h.count()));
    // The input's own headers travel with it, so a replay can restore the record exactly.
    if let Some(original) = input.headers() {
        for h in original.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    headers
        .insert(Header {
            key: HEADER_REASON,
            value: Some(reason),
        })
        .insert(Header {
            key: HEADER_ERROR,
            value: Some(detail),
        })
        .insert(Header {
            key: HEADER_SOURCE_TOPIC,
            value: Some(input.topic()),
        })
        .insert(Header {
            key: HEADER_SOURCE_PARTITION,
            value: Some(&input.partition().to_string()),
        })
        .insert(Header {
            key: HEADER_SOURCE_OFFSET,
            value: Some(&input.offset().to_string()),
        })
}
