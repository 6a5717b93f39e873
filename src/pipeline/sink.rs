//! The output side: one idempotent producer writing predictions and dead letters. Delivery
//! reports are counted per batch in the producer's context (see `acks`), so producing a
//! record costs one enqueue into librdkafka and nothing per record afterwards.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tracing::warn;

use super::acks::{BatchAcks, Failure};
use super::{Guarantee, PipelineConfig};
use crate::logging::LogThrottle;
use crate::record::{Reason, SourcePosition};
use crate::transform::Outcome;

/// Pause before re-offering a record to a full producer queue.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);

pub use crate::record::headers::{
    HEADER_ERROR, HEADER_PAYLOAD_OMITTED, HEADER_REASON, HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
};

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

    /// Moves a refused record from where it was counted to `undeliverable`.
    pub fn reroute_undeliverable(&mut self, failure: &Failure, dead_letter_topic: &str) {
        let record = &failure.record;
        if record.topic() == dead_letter_topic {
            let reason = record
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == HEADER_REASON))
                .and_then(|h| std::str::from_utf8(h.value?).ok())
                .and_then(Reason::from_code);
            if let Some(reason) = reason {
                let slot = &mut self.dead_letters[reason as usize];
                *slot = slot.saturating_sub(1);
            }
        } else {
            self.outputs = self.outputs.saturating_sub(1);
        }
        self.dead_letters[Reason::Undeliverable as usize] += 1;
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
    input_topic: String,
    output_topic: String,
    dead_letter_topic: String,
}

impl Sink {
    pub fn new(config: &PipelineConfig) -> KafkaResult<Self> {
        Ok(Self {
            producer: producer_settings(config).create_with_context(DeliveryReports::default())?,
            input_topic: config.input_topic.clone(),
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
        // One creation time for the batch's records, which are produced within the same
        // millisecond or two anyway: left unset, librdkafka reads the wall clock once per
        // record (about 40 ns each here, a percent of the service's CPU per record).
        let created = batch_timestamp_ms();
        for (sent, (input, outcome)) in inputs.iter().zip(outcomes).enumerate() {
            let result = match outcome {
                Outcome::Scored(value) => {
                    let mut record =
                        BaseRecord::with_opaque_to(&self.output_topic, Arc::clone(acks))
                            .payload(value.as_slice())
                            .timestamp(created);
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
                            .headers(headers)
                            .timestamp(created);
                    if let Some(key) = input.key() {
                        record = record.key(key);
                    }
                    if rejection.reason == Reason::Undeliverable {
                        // The same rule as `undeliverable_headers`: the input is named by its
                        // position, not carried, so its size cannot be refused again.
                        record = without_payload(record);
                    } else if let Some(payload) = input.payload() {
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

    /// Sends records the broker refused for good to the dead-letter topic as `undeliverable`
    /// (see `undeliverable_headers`), each settling `acks`.
    pub fn divert(
        &self,
        failures: &[Failure],
        acks: &Arc<BatchAcks>,
        mut give_up: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        for (sent, failure) in failures.iter().enumerate() {
            let headers =
                undeliverable_headers(failure, &self.dead_letter_topic, &self.input_topic);
            let mut record = BaseRecord::with_opaque_to(&self.dead_letter_topic, Arc::clone(acks))
                .headers(headers);
            if let Some(key) = failure.record.key() {
                record = record.key(key);
            }
            if let Err(e) = self.enqueue(record, &mut give_up) {
                acks.withdraw(failures.len() - sent);
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn output_topic(&self) -> &str {
        &self.output_topic
    }

    pub fn dead_letter_topic(&self) -> &str {
        &self.dead_letter_topic
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
        // A few ms of linger turns a micro-batch into a handful of produce requests. In
        // latency mode a batch is enqueued whole the moment it closes, so lingering would
        // only delay it: librdkafka still packs what is queued into one request.
        .set(
            "linger.ms",
            if config.batch_interval.is_zero() {
                "0"
            } else {
                "5"
            },
        )
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

/// Milliseconds since the epoch, the records' CreateTime. A clock before 1970 gives 0,
/// which librdkafka replaces with its own reading.
fn batch_timestamp_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
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

/// A refusal that re-sending the same record cannot cure: the broker judged the record
/// itself (its size, its format, a null key on a compacted topic), not its own state.
pub fn is_poison(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidTimestamp
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::PolicyViolation
        )
    )
}

/// Where a refused record came from: a dead letter names it in its headers, a prediction in
/// its own JSON (every output carries its input's `partition` and `offset`).
pub fn source_of(record: &OwnedMessage) -> Option<SourcePosition> {
    if let Some(headers) = record.headers() {
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| std::str::from_utf8(h.value?).ok())
                .and_then(|v| v.parse::<i64>().ok())
        };
        if let (Some(partition), Some(offset)) = (
            header(HEADER_SOURCE_PARTITION),
            header(HEADER_SOURCE_OFFSET),
        ) {
            return Some(SourcePosition {
                partition: i32::try_from(partition).ok()?,
                offset,
            });
        }
    }
    #[derive(serde::Deserialize)]
    struct Position {
        partition: i32,
        offset: i64,
    }
    let position: Position = serde_json::from_slice(record.payload()?).ok()?;
    Some(SourcePosition {
        partition: position.partition,
        offset: position.offset,
    })
}

/// The headers of an `undeliverable` dead letter standing in for a refused record: the
/// refused record's own headers (a dead letter's original ones, say) without its reason and
/// error, then reason `undeliverable`, the broker's error, and where the input came from. It
/// never carries a value: whatever made the broker refuse the record must not make it refuse
/// this one, and the input can be read again at the position named.
pub fn undeliverable_headers(
    failure: &Failure,
    dead_letter_topic: &str,
    input_topic: &str,
) -> OwnedHeaders {
    let record = &failure.record;
    let mut headers = OwnedHeaders::new();
    let mut has_source = false;
    if let Some(own) = record.headers() {
        for h in own.iter() {
            if h.key == HEADER_REASON || h.key == HEADER_ERROR || h.key == HEADER_PAYLOAD_OMITTED {
                continue;
            }
            has_source |= h.key == HEADER_SOURCE_TOPIC;
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let refused = if record.topic() == dead_letter_topic {
        "dead letter"
    } else {
        "output"
    };
    headers = headers
        .insert(Header {
            key: HEADER_REASON,
            value: Some(Reason::Undeliverable.code()),
        })
        .insert(Header {
            key: HEADER_ERROR,
            value: Some(&format!(
                "the broker refused the {refused} on {}: {}",
                record.topic(),
                failure.error
            )),
        })
        .insert(Header {
            key: HEADER_PAYLOAD_OMITTED,
            value: Some("true"),
        });
    if !has_source {
        if let Some(source) = source_of(record) {
            headers = headers
                .insert(Header {
                    key: HEADER_SOURCE_TOPIC,
                    value: Some(input_topic),
                })
                .insert(Header {
                    key: HEADER_SOURCE_PARTITION,
                    value: Some(&source.partition.to_string()),
                })
                .insert(Header {
                    key: HEADER_SOURCE_OFFSET,
                    value: Some(&source.offset.to_string()),
                });
        }
    }
    headers
}

pub(crate) fn dead_letter_headers(
    input: &impl Message,
    reason: &str,
    detail: &str,
) -> OwnedHeaders {
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

#[cfg(test)]
mod tests {
    //! The sink's re-send rules, without a broker: a producer pointed at a closed loopback
    //! port takes records into its queue and reports each one failed after
    //! `message.timeout.ms`, which is all these rules need.
    use super::*;
    use rdkafka::message::Timestamp;
    use std::time::Duration;

    fn config(extra: &[(&str, &str)]) -> PipelineConfig {
        let mut properties = vec![
            ("message.timeout.ms".to_owned(), "200".to_owned()),
            ("enable.idempotence".to_owned(), "false".to_owned()),
        ];
        properties.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        PipelineConfig {
            brokers: "127.0.0.1:1".into(),
            properties,
            consumer_properties: Vec::new(),
            input_topic: "in".into(),
            output_topic: "out".into(),
            dead_letter_topic: "dlq".into(),
            group: "g".into(),
            batch_interval: Duration::from_millis(10),
            max_batch: 10,
            max_batch_bytes: 1 << 20,
            max_record_bytes: 1 << 20,
            guarantee: Guarantee::AtLeastOnce,
            format: Default::default(),
        }
    }

    fn header<'a>(headers: &'a OwnedHeaders, name: &str) -> Vec<&'a str> {
        headers
            .iter()
            .filter(|h| h.key == name)
            .filter_map(|h| std::str::from_utf8(h.value?).ok())
            .collect()
    }

    fn failure(
        topic: &str,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        code: RDKafkaErrorCode,
    ) -> Failure {
        Failure {
            error: KafkaError::MessageProduction(code),
            record: OwnedMessage::new(
                payload.map(<[u8]>::to_vec),
                Some(b"key-7".to_vec()),
                topic.into(),
                Timestamp::NotAvailable,
                0,
                -1,
                headers,
            ),
        }
    }

    fn input(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"{\"x\":1}".to_vec()),
            Some(b"key-7".to_vec()),
            "in".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn a_batch_given_up_midway_withdraws_exactly_the_records_not_handed_over() {
        // A queue of one message: the first output is taken, the second finds the queue
        // full, and giving up at once ends the batch there.
        let sink = Sink::new(&config(&[("queue.buffering.max.messages", "1")])).unwrap();
        let inputs: Vec<_> = (0..4).map(|offset| input(0, offset)).collect();
        let outcomes: Vec<_> = (0..4)
            .map(|_| Outcome::Scored(br#"{"label":"x"}"#.to_vec()))
            .collect();
        let acks = Arc::new(BatchAcks::new(inputs.len()));
        let sent = sink.send_batch(&inputs, &outcomes, &acks, || true);
        assert!(sent.is_err(), "the batch is given up");
        assert!(
            !acks.is_settled(),
            "the one record handed over is still pending"
        );
        // Its report (a timeout against the closed port) is the last one the batch waits for.
        assert!(
            acks.wait(Duration::from_secs(10)),
            "settled by that one report"
        );
        assert_eq!(acks.take_failures().len(), 1);
    }

    #[test]
    fn only_a_dead_letter_too_large_to_produce_loses_its_value() {
        let sink = Sink::new(&config(&[("message.max.bytes", "1000")])).unwrap();
        let big = OwnedMessage::new(
            Some(vec![b'x'; 5000]),
            Some(b"key-7".to_vec()),
            "in".into(),
            Timestamp::NotAvailable,
            0,
            1,
            None,
        );
        // An output that large is a fault of the model's schema, not of one record: dropping
        // its value would deliver an empty prediction, so the batch fails instead.
        let acks = Arc::new(BatchAcks::new(1));
        let output = [Outcome::Scored(vec![b'y'; 5000])];
        let err = sink
            .send_batch(std::slice::from_ref(&big), &output, &acks, || true)
            .expect_err("an output over message.max.bytes is refused");
        assert!(
            format!("{err:#}").contains("cannot produce to out"),
            "{err:#}"
        );

        // The input itself as a dead letter goes without its value, and says so.
        let acks = Arc::new(BatchAcks::new(1));
        let rejected = [Outcome::Rejected(crate::record::Rejection::new(
            Reason::InvalidJson,
            "not JSON",
        ))];
        let sent = sink
            .send_batch(std::slice::from_ref(&big), &rejected, &acks, || true)
            .expect("a dead letter without its value fits");
        assert_eq!(sent.dead_letters[Reason::InvalidJson as usize], 1);
    }

    #[test]
    fn poison_is_what_the_broker_refuses_for_good() {
        use RDKafkaErrorCode as C;
        for code in [
            C::MessageSizeTooLarge,
            C::InvalidRecord,
            C::InvalidMessage,
            C::PolicyViolation,
        ] {
            assert!(is_poison(&KafkaError::MessageProduction(code)), "{code:?}");
        }
        for code in [
            C::MessageTimedOut,
            C::NotEnoughReplicas,
            C::TopicAuthorizationFailed,
            C::UnknownTopicOrPartition,
            C::QueueFull,
        ] {
            assert!(!is_poison(&KafkaError::MessageProduction(code)), "{code:?}");
        }
    }

    #[test]
    fn an_undeliverable_output_names_its_input_and_carries_no_value() {
        let refused = failure(
            "out",
            Some(br#"{"id":3,"label":"setosa","partition":2,"offset":41}"#),
            None,
            RDKafkaErrorCode::InvalidRecord,
        );
        let headers = undeliverable_headers(&refused, "dlq", "in");
        assert_eq!(header(&headers, HEADER_REASON), ["undeliverable"]);
        assert_eq!(header(&headers, HEADER_SOURCE_TOPIC), ["in"]);
        assert_eq!(header(&headers, HEADER_SOURCE_PARTITION), ["2"]);
        assert_eq!(header(&headers, HEADER_SOURCE_OFFSET), ["41"]);
        assert_eq!(header(&headers, HEADER_PAYLOAD_OMITTED), ["true"]);
        let error = header(&headers, HEADER_ERROR).join("");
        assert!(error.contains("output on out"), "{error}");
    }

    #[test]
    fn an_undeliverable_dead_letter_keeps_its_headers_with_one_new_reason() {
        let original = dead_letter_headers(&input(1, 9), "too_large", "10 MB")
            .insert(Header {
                key: "trace",
                value: Some("abc"),
            })
            .insert(Header {
                key: HEADER_PAYLOAD_OMITTED,
                value: Some("true"),
            });
        let refused = failure(
            "dlq",
            None,
            Some(original),
            RDKafkaErrorCode::MessageSizeTooLarge,
        );
        let headers = undeliverable_headers(&refused, "dlq", "in");
        assert_eq!(header(&headers, HEADER_REASON), ["undeliverable"]);
        assert_eq!(
            header(&headers, HEADER_SOURCE_PARTITION),
            ["1"],
            "not repeated"
        );
        assert_eq!(header(&headers, HEADER_SOURCE_OFFSET), ["9"]);
        assert_eq!(header(&headers, HEADER_PAYLOAD_OMITTED), ["true"]);
        assert_eq!(header(&headers, "trace"), ["abc"]);
        assert_eq!(header(&headers, HEADER_ERROR).len(), 1);
    }

    #[test]
    fn rerouting_moves_the_count_to_undeliverable() {
        let mut d = Destinations {
            outputs: 3,
            ..Destinations::default()
        };
        d.dead_letters[Reason::TooLarge as usize] = 1;
        d.reroute_undeliverable(
            &failure("out", Some(b"{}"), None, RDKafkaErrorCode::InvalidRecord),
            "dlq",
        );
        let refused_letter = failure(
            "dlq",
            None,
            Some(dead_letter_headers(&input(0, 1), "too_large", "")),
            RDKafkaErrorCode::MessageSizeTooLarge,
        );
        d.reroute_undeliverable(&refused_letter, "dlq");
        assert_eq!(d.outputs, 2);
        assert_eq!(d.dead_letters[Reason::TooLarge as usize], 0);
        assert_eq!(d.dead_letters[Reason::Undeliverable as usize], 2);
        assert_eq!(d.total(), 4, "nothing counted twice or lost");
    }

    #[test]
    fn a_dead_letter_too_large_for_its_topic_is_resent_without_its_value() {
        let sink = Sink::new(&config(&[])).unwrap();
        let too_large = failure(
            "dlq",
            Some(&[7u8; 64]),
            Some(dead_letter_headers(&input(0, 5), "invalid_json", "")),
            RDKafkaErrorCode::MessageSizeTooLarge,
        );
        let output = failure(
            "out",
            Some(b"{}"),
            None,
            RDKafkaErrorCode::MessageSizeTooLarge,
        );
        let acks = Arc::new(BatchAcks::new(2));
        sink.resend(&[too_large, output], &acks, || false).unwrap();
        assert!(acks.wait(Duration::from_secs(20)), "reported");
        let mut failures = acks.take_failures();
        failures.sort_by(|a, b| a.record.topic().cmp(b.record.topic()));
        let (letter, output) = (&failures[0].record, &failures[1].record);
        assert_eq!(letter.topic(), "dlq");
        assert!(letter.payload().is_none(), "value dropped");
        let headers = letter.headers().unwrap().clone();
        assert_eq!(header(&headers, HEADER_PAYLOAD_OMITTED), ["true"]);
        assert_eq!(header(&headers, HEADER_REASON), ["invalid_json"]);
        assert_eq!(
            output.payload(),
            Some(&b"{}"[..]),
            "an output keeps its value"
        );
    }

    #[test]
    fn a_diverted_record_goes_to_the_dead_letter_topic_keyed_and_empty() {
        let sink = Sink::new(&config(&[])).unwrap();
        let refused = failure(
            "out",
            Some(br#"{"partition":0,"offset":1}"#),
            None,
            RDKafkaErrorCode::InvalidRecord,
        );
        let acks = Arc::new(BatchAcks::new(1));
        sink.divert(&[refused], &acks, || false).unwrap();
        assert!(acks.wait(Duration::from_secs(20)));
        let failures = acks.take_failures();
        let letter = &failures[0].record;
        assert_eq!(letter.topic(), "dlq");
        assert_eq!(letter.key(), Some(&b"key-7"[..]));
        assert!(letter.payload().is_none());
        let headers = letter.headers().unwrap().clone();
        assert_eq!(header(&headers, HEADER_REASON), ["undeliverable"]);
    }

    #[test]
    fn a_full_queue_gives_up_when_told_and_withdraws_the_rest() {
        let sink = Sink::new(&config(&[("queue.buffering.max.messages", "1")])).unwrap();
        let inputs = [input(0, 1), input(0, 2), input(0, 3)];
        let outcomes = vec![Outcome::Scored(b"{}".to_vec()); 3];
        let acks = Arc::new(BatchAcks::new(3));
        let mut asked = 0;
        let err = sink
            .send_batch(&inputs, &outcomes, &acks, || {
                asked += 1;
                asked > 3
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("offset 2"), "{err:#}");
        assert!(asked > 3, "waited while the queue was full");
        // The one record handed over is reported; the two withdrawn never will be.
        assert!(acks.wait(Duration::from_secs(20)), "settled");
    }
}
