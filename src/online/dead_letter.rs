//! Feedback records that cannot be learned from go to the service's dead-letter topic, with
//! the headers a scoring input's dead letter carries (reason, detail, where it came from,
//! the original key, value and headers).
//!
//! Nothing is lost: the checkpoint that moves the feedback offsets past a dead-lettered
//! record is written only after `flush` has seen every dead letter acknowledged, so a crash
//! before that replays the record and dead-letters it again (at least once, like scoring
//! input). A dead letter the broker refuses stops the feedback thread with an error rather
//! than move past a record that went nowhere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::reject::Rejection;
use crate::pipeline::sink::{dead_letter_headers, producer_settings};
use crate::pipeline::PipelineConfig;

/// How long a full producer queue may hold one dead letter up before the thread gives up.
const QUEUE_FULL_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Reports {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| {
                format!(
                    "{error} (dead letter of feedback partition {} offset {})",
                    header(message, crate::pipeline::sink::HEADER_SOURCE_PARTITION),
                    header(message, crate::pipeline::sink::HEADER_SOURCE_OFFSET),
                )
            });
        }
    }
}

fn header(message: &impl Message, name: &str) -> String {
    use rdkafka::message::Headers;
    message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == name))
        .and_then(|h| std::str::from_utf8(h.value?).ok())
        .unwrap_or("?")
        .to_owned()
}

pub struct DeadLetters {
    settings: ClientConfig,
    /// Made at the first dead letter: a feedback stream without bad records costs no
    /// producer (its threads and connections) at all.
    producer: Option<ThreadedProducer<Reports>>,
    topic: String,
}

impl DeadLetters {
    pub fn new(pipeline: &PipelineConfig) -> Self {
        let mut settings = producer_settings(pipeline);
        // Its own idempotent producer, outside the scoring path's transactions: a feedback
        // dead letter belongs to no scoring batch.
        settings.remove("transactional.id");
        Self {
            settings,
            producer: None,
            topic: pipeline.dead_letter_topic.clone(),
        }
    }

    /// Enqueues the dead letter of `record`.
    pub fn send(&mut self, record: &impl Message, rejection: &Rejection) -> anyhow::Result<()> {
        let producer = match &mut self.producer {
            Some(producer) => producer,
            None => self.producer.insert(
                self.settings
                    .create_with_context(Reports::default())
                    .context("creating the feedback dead-letter producer")?,
            ),
        };
        let headers = dead_letter_headers(record, rejection.reason.code(), &rejection.detail);
        let mut letter = BaseRecord::to(&self.topic).headers(headers);
        if let Some(key) = record.key() {
            letter = letter.key(key);
        }
        if let Some(value) = record.payload() {
            letter = letter.payload(value);
        }
        let started = Instant::now();
        loop {
            match producer.send(letter) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if started.elapsed() < QUEUE_FULL_PATIENCE =>
                {
                    letter = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    return Err(e).with_context(|| {
                        format!("dead-lettering a feedback record to {}", self.topic)
                    })
                }
            }
        }
    }

    /// Waits until every dead letter sent is acknowledged; an error if one was refused or
    /// the broker did not answer in time (the caller must then not checkpoint past them).
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        let Some(producer) = &self.producer else {
            return Ok(());
        };
        producer
            .flush(timeout)
            .with_context(|| format!("delivering feedback dead letters to {}", self.topic))?;
        let context = producer.context();
        if context.failed.load(Ordering::Relaxed) > 0 {
            let first = context
                .first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            bail!(
                "{} feedback dead letter(s) refused by the broker, first: {first}",
                context.failed.load(Ordering::Relaxed)
            );
        }
        Ok(())
    }
}
