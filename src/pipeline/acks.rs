//! Acknowledgements of one batch's records, counted in the producer's delivery callback.
//!
//! Every record of a batch carries the same `Arc<BatchAcks>` as its delivery opaque, so a
//! delivery report costs an atomic decrement, not a future and a wake-up per record; the
//! commit stage sleeps on the batch as a whole and wakes once, when its last record settles.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;

/// A record the broker did not take, kept whole so that it can be sent again.
#[derive(Debug)]
pub struct Failure {
    pub error: KafkaError,
    pub record: OwnedMessage,
}

#[derive(Debug)]
pub struct BatchAcks {
    remaining: AtomicUsize,
    failures: Mutex<Vec<Failure>>,
    settled: Mutex<bool>,
    settled_cv: Condvar,
}

impl BatchAcks {
    /// Expects `records` delivery reports.
    pub fn new(records: usize) -> Self {
        Self {
            remaining: AtomicUsize::new(records),
            failures: Mutex::new(Vec::new()),
            settled: Mutex::new(records == 0),
            settled_cv: Condvar::new(),
        }
    }

    pub fn delivered(&self) {
        self.settle_one();
    }

    pub fn failed(&self, failure: Failure) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(failure);
        self.settle_one();
    }

    /// A record that was never handed to the producer will get no report.
    pub fn withdraw(&self, records: usize) {
        for _ in 0..records {
            self.settle_one();
        }
    }

    fn settle_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.settled.lock().unwrap_or_else(|p| p.into_inner()) = true;
            self.settled_cv.notify_all();
        }
    }

    pub fn is_settled(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }

    /// Waits until every record has a report, or `timeout`; true when settled.
    pub fn wait(&self, timeout: Duration) -> bool {
        let settled = self.settled.lock().unwrap_or_else(|p| p.into_inner());
        let (settled, _) = self
            .settled_cv
            .wait_timeout_while(settled, timeout, |s| !*s)
            .unwrap_or_else(|p| p.into_inner());
        *settled
    }

    pub fn take_failures(&self) -> Vec<Failure> {
        std::mem::take(&mut *self.failures.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Timestamp;
    use rdkafka::types::RDKafkaErrorCode;
    use std::sync::Arc;

    #[test]
    fn settles_on_the_last_report_and_keeps_failures() {
        let acks = Arc::new(BatchAcks::new(3));
        acks.delivered();
        assert!(!acks.is_settled());
        assert!(!acks.wait(Duration::from_millis(5)));
        let remote = Arc::clone(&acks);
        let t = std::thread::spawn(move || {
            remote.failed(Failure {
                error: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                record: OwnedMessage::new(
                    None,
                    None,
                    "out".into(),
                    Timestamp::NotAvailable,
                    0,
                    -1,
                    None,
                ),
            });
            remote.delivered();
        });
        assert!(acks.wait(Duration::from_secs(10)));
        t.join().unwrap();
        assert_eq!(acks.take_failures().len(), 1);
        assert!(acks.take_failures().is_empty());
    }

    #[test]
    fn an_empty_batch_is_settled_at_once() {
        assert!(BatchAcks::new(0).wait(Duration::ZERO));
        let acks = BatchAcks::new(2);
        acks.withdraw(2);
        assert!(acks.is_settled());
    }
}
