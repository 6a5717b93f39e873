//! The output side: one idempotent producer writing predictions and dead letters. Delivery
//! reports are counted per batch in the producer's context (see `acks`), so producing a
//! record costs one enqueue into librdkafka and nothing per record afterwards.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tracing::warn;

use super::acks::{BatchAcks, Failure};
use super::{Guarantee, PipelineConfig};
use crate::logging::LogThrottle;
use crate::record::Reason;
use crate::transform::Outcome;

/// Pause before re-offering a record to a full producer queue.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);

pub const HEADER_REASON: &str = "streamscore.reason";
pub const HEADER_ERROR: &str = "streamscore.error";
pub const HEADER_SOURCE_TOPIC: &str = "streamscore.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "streamscore.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "streamscore.source.offset";
/// Present when the original value was too large for the dead-letter topic and was dropped.
pub const HEADER_PAYLOAD_OMITTED: &str = "streamscore.payload.omitted";

/// How many of a batch's records went where, counted once they are acknowledged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Destinations {
    pub outputs: u64,
    pub dead_letters: [u64; Reason::ALL.len()],
}

impl Destinations {
    pub fn total(&self) -> u64 {
        self.outputs + self.dead_letters.iter().sum::<u64>()
    }
}

/// The producer's context: settles each record's batch when its delivery report arrives.
#[derive(Default)]
pub struct DeliveryReports {
    client_errors: LogThrottle,
}

impl ClientContext for DeliveryReports {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(suppressed) = self.client_errors.admit() {
            warn!(error = %error, reason, suppressed, "Kafka producer error");
        }
    }
}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = Arc<BatchAcks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<BatchAcks>) {
        match result {
            Ok(_) => acks.delivered(),
            Err((error, message)) => acks.failed(Failure {
                error: error.clone(),
                record: message.detach(),
            }),
        }
    }
}

pub type OutputProducer = ThreadedProducer<DeliveryReports>;

pub struct Sink {
    producer: OutputProducer,
    output_topic: String,
    dead_letter_topic: String,
}

impl Sink {
    pub fn new(config: &PipelineConfig) -> KafkaResult<Self> {
        Ok(Self {
            producer: producer_settings(config).create_with_context(DeliveryReports::default())?,
            output_topic: config.output_topic.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
        })
    }

    /// Enqueues one record per input (the prediction, or the input itself as a dead letter),
    /// each settling `acks` when the broker answers. `give_up` is asked while the producer's
    /// queue stays full.
    pub fn send_batch<M: Message>(
        &self,
        inputs: &[M],
        outcomes: &[Outcome],
        acks: &Arc<BatchAcks>,
        mut give_up: impl FnMut() -> bool,
    ) -> anyhow::Result<Destinations> {
        let mut destinations = Destinations::default();
        for (sent, (input, outcome)) in inputs.iter().zip(outcomes).enumerate() {
            let result = match outcome {
                Outcome::Scored(value) => {
                    let mut record =
                        BaseRecord::with_opaque_to(&self.output_topic, Arc::clone(acks))
                            .payload(value.as_slice());
                    if let Some(key) = input.key() {
                        record = record.key(key);
                    }
                    if let Some(trace) = crate::record::trace::trace_headers(input) {
                        record = record.headers(trace);
                    }
                    destinations.outputs += 1;
                    self.enqueue(record, &mut give_up)
                }
                Outcome::Rejected(rejection) => {
                    let headers =
                        dead_letter_headers(input, rejection.reason.code(), &rejection.detail);
                    let mut record =
                        BaseRecord::with_opaque_to(&self.dead_letter_topic, Arc::clone(acks))
                            .headers(headers);
                    if let Some(key) = input.key() {
                        record = record.key(key);
                    }
                    if let Some(payload) = input.payload() {
                        record = record.payload(payload);
                    }
                    destinations.dead_letters[rejection.reason as usize] += 1;
                    self.enqueue(record, &mut give_up)
                }
            };
            if let Err(e) = result {
                // The records not handed over will never be reported; the batch is given
                // up uncommitted by the caller.
                acks.withdraw(inputs.len() - sent);
                return Err(e.context(format!(
                    "producing the output of input partition {} offset {}",
                    input.partition(),
                    input.offset()
                )));
            }
        }
        Ok(destinations)
    }

    /// Sends failed records again, each settling `acks`.
    pub fn resend(
        &self,
        failures: &[Failure],
        acks: &Arc<BatchAcks>,
        mut give_up: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        for (sent, failure) in failures.iter().enumerate() {
            let message = &failure.record;
            let mut record = BaseRecord::with_opaque_to(message.topic(), Arc::clone(acks));
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(headers) = message.headers() {
                record = record.headers(headers.clone());
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            if matches!(
                failure.error,
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
            ) && message.topic() == self.dead_letter_topic
            {
                record = without_payload(record);
            }
            if let Err(e) = self.enqueue(record, &mut give_up) {
                acks.withdraw(failures.len() - sent);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Hands a record to librdkafka, waiting while its queue is full: this is where a slow
    /// broker pushes back on consumption instead of memory growing without bound.
    fn enqueue(
        &self,
        mut record: BaseRecord<'_, [u8], [u8], Arc<BatchAcks>>,
        give_up: &mut impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if give_up() {
                        bail!("the producer's queue stayed full until shutdown");
                    }
                    record = back;
                    std::thread::sleep(QUEUE_FULL_BACKOFF);
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

    pub fn producer(&self) -> &OutputProducer {
        &self.producer
    }

    /// Waits for everything queued in librdkafka to be delivered (used at shutdown).
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(timeout)
    }
}

/// The producer's settings, also used by `bench` for the loopback ceiling.
pub fn producer_settings(config: &PipelineConfig) -> ClientConfig {
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
    client
}

/// A dead letter too large for the dead-letter topic keeps its key and headers, loses its
/// value, and says so, rather than blocking the partition forever.
fn without_payload<'a, D: rdkafka::util::IntoOpaque>(
    record: BaseRecord<'a, [u8], [u8], D>,
) -> BaseRecord<'a, [u8], [u8], D> {
    let headers = record.headers.clone().unwrap_or_default().insert(Header {
        key: HEADER_PAYLOAD_OMITTED,
        value: Some("true"),
    });
    BaseRecord {
        payload: None,
        headers: Some(headers),
        ..record
    }
}

fn dead_letter_headers(input: &impl Message, reason: &str, detail: &str) -> OwnedHeaders {
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
