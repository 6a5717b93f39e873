//! The micro-batcher: a batch opens with its first record and closes when the batch interval
//! has passed since then, when it holds `max_batch` records, or on shutdown.

use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::source::{Assignment, Consumer, LogThrottle};

pub struct Batch {
    pub records: Vec<OwnedMessage>,
    /// When the first record arrived; batch latency is measured from here.
    pub opened: Instant,
}

pub struct Batcher {
    pub interval: Duration,
    pub max_records: usize,
    pub consumer_errors: LogThrottle,
}

impl Batcher {
    /// The next batch, or `None` once shutdown is requested and nothing is pending.
    pub async fn next(
        &self,
        consumer: &Consumer,
        assignment: &Assignment,
        shutdown: &CancellationToken,
    ) -> Option<Batch> {
        let mut records = Vec::with_capacity(self.max_records.min(4096));
        let mut generation = assignment.generation();
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            first = self.recv(consumer) => first,
        };
        records.push(first);
        let opened = Instant::now();
        let deadline = opened + self.interval;
        loop {
            if assignment.generation() != generation {
                // A rebalance happened inside recv: records of partitions we no longer own
                // belong to their next owner, who starts from the committed offset. Dropping
                // them here is what keeps a rebalance from producing duplicates.
                generation = assignment.generation();
                records.retain(|r| assignment.owns(r.partition()));
            }
            if records.len() >= self.max_records {
                break;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                record = self.recv(consumer) => records.push(record),
            }
        }
        Some(Batch { records, opened })
    }

    async fn recv(&self, consumer: &Consumer) -> OwnedMessage {
        loop {
            match consumer.recv().await {
                Ok(message) => return message.detach(),
                // Consumer errors are reports (a broker went away, a fetch failed);
                // librdkafka recovers by itself, so note them and keep reading.
                Err(e) => {
                    if let Some(suppressed) = self.consumer_errors.admit() {
                        warn!(error = %e, suppressed, "consumer error");
                    }
                }
            }
        }
    }
}
