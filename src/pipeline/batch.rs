//! The micro-batcher: a batch opens with its first record and closes when the batch interval
//! has passed since then, when it holds `max_records` records or `max_bytes` of payload, or
//! on shutdown. With a zero interval (latency mode) it closes as soon as the consumer has
//! nothing more ready, so a lone record waits for no window while a backlog still fills
//! whole batches.
//!
//! Records are the consumer's own messages, borrowed from its fetch buffers: nothing is
//! copied until the producer takes the outputs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use tracing::warn;

use super::source::Consumer;
use crate::logging::LogThrottle;

/// How long one poll waits while no batch is open, so a shutdown is seen this quickly.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// While records keep coming, the clock is read once per this many of them.
const RECORDS_PER_CLOCK_READ: u32 = 64;

/// Where the batcher gets records: the consumer, or a script in tests.
pub trait RecordSource {
    type Record<'a>: Message
    where
        Self: 'a;

    fn poll(&self, timeout: Duration) -> Option<Result<Self::Record<'_>, KafkaError>>;

    /// Partitions revoked since the last call (a rebalance runs inside `poll`).
    fn take_revoked(&self) -> BTreeSet<i32>;
}

impl RecordSource for Consumer {
    type Record<'a> = BorrowedMessage<'a>;

    fn poll(&self, timeout: Duration) -> Option<Result<BorrowedMessage<'_>, KafkaError>> {
        let polled = rdkafka::consumer::BaseConsumer::poll(self, timeout);
        if let Some(Err(e)) = &polled {
            let context = rdkafka::consumer::Consumer::context(self);
            if context.unrecoverable_now(e).is_some() {
                // Stops the pipeline through its health: `stop` is asked before the next poll.
                context.consumer_error(e, "");
            }
        }
        polled
    }

    fn take_revoked(&self) -> BTreeSet<i32> {
        rdkafka::consumer::Consumer::context(self).take_revoked()
    }
}

pub struct Batch<R> {
    pub records: Vec<R>,
    /// When the first record arrived; batch latency is measured from here.
    pub opened: Instant,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Zero: close as soon as nothing more is ready.
    pub interval: Duration,
    pub max_records: usize,
    pub max_bytes: usize,
}

pub struct Batcher {
    limits: BatchLimits,
    consumer_errors: LogThrottle,
}

impl Batcher {
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            consumer_errors: LogThrottle::default(),
        }
    }

    /// The next batch, or `None` once `stop` says so with nothing pending. A batch that is
    /// open when `stop` turns true is returned as it is, so that it is finished.
    pub fn next<'s, S: RecordSource>(
        &self,
        source: &'s S,
        mut stop: impl FnMut() -> bool,
    ) -> Option<Batch<S::Record<'s>>> {
        let mut records: Vec<S::Record<'s>> = Vec::new();
        let mut bytes = 0usize;
        let mut opened: Option<Instant> = None;
        // Records taken since the clock was last read: while records are ready, a poll needs
        // no timeout and the window needs checking only now and then (64 records go by in
        // well under a millisecond at the rates where this saves anything).
        let mut unclocked = 0u32;
        loop {
            // Asked at each clock read rather than per record: the shutdown token's check
            // takes a lock, and 64 records more before a shutdown is seen cost nothing.
            if (unclocked == 0 || unclocked >= RECORDS_PER_CLOCK_READ) && stop() {
                return opened.map(|opened| Batch { records, opened });
            }
            let mut polled = None;
            let mut looked_without_waiting = false;
            if opened.is_some() && unclocked < RECORDS_PER_CLOCK_READ {
                polled = source.poll(Duration::ZERO);
                looked_without_waiting = true;
            }
            // In latency mode a look that found nothing closes the batch (below): no wait.
            if polled.is_none() && !(looked_without_waiting && self.limits.interval.is_zero()) {
                unclocked = 0;
                // One clock read serves both the poll's timeout and the window check.
                let now = Instant::now();
                let timeout = match opened {
                    None => IDLE_POLL,
                    Some(started) => {
                        let deadline = started + self.limits.interval;
                        if now >= deadline && !self.limits.interval.is_zero() {
                            return Some(Batch {
                                records,
                                opened: started,
                            });
                        }
                        deadline.saturating_duration_since(now)
                    }
                };
                polled = source.poll(timeout);
            }
            let revoked = source.take_revoked();
            if !revoked.is_empty() && !records.is_empty() {
                // Their next owner (perhaps us again) starts from the committed offset, so
                // scoring these would only produce duplicates.
                records.retain(|r| !revoked.contains(&r.partition()));
                bytes = records.iter().map(payload_len).sum();
                if records.is_empty() {
                    opened = None;
                }
            }
            match polled {
                Some(Ok(record)) => {
                    unclocked += 1;
                    bytes += payload_len(&record);
                    records.push(record);
                    if opened.is_none() {
                        // `now` was read before a poll that may have waited for this record.
                        opened = Some(Instant::now());
                    }
                    if records.len() >= self.limits.max_records || bytes >= self.limits.max_bytes {
                        break;
                    }
                }
                Some(Err(e)) => {
                    // Most consumer errors are reports (a broker went away, a fetch failed)
                    // that librdkafka recovers from by itself; the others have already
                    // failed the pipeline's health (`SourceContext::unrecoverable_now`).
                    if let Some(suppressed) = self.consumer_errors.admit() {
                        warn!(error = %e, suppressed, "consumer error");
                    }
                }
                // Nothing was ready: in latency mode that closes the batch; otherwise the
                // next round's clock read decides.
                None if self.limits.interval.is_zero() && opened.is_some() => break,
                None => {}
            }
        }
        opened.map(|opened| Batch { records, opened })
    }
}

fn payload_len(record: &impl Message) -> usize {
    record.payload().map_or(0, <[u8]>::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedMessage, Timestamp};
    use std::cell::RefCell;
    use std::collections::VecDeque;

    /// One scripted poll: a record of (partition, offset, payload bytes), nothing, or a
    /// revocation that happens inside that poll.
    enum Step {
        Record(i32, i64, usize),
        Nothing,
        RevokeThenRecord(Vec<i32>, i32, i64),
    }

    struct Script {
        steps: RefCell<VecDeque<Step>>,
        revoked: RefCell<BTreeSet<i32>>,
        polls: RefCell<Vec<Duration>>,
    }

    impl Script {
        fn new(steps: Vec<Step>) -> Self {
            Self {
                steps: RefCell::new(steps.into()),
                revoked: RefCell::default(),
                polls: RefCell::default(),
            }
        }
    }

    fn message(partition: i32, offset: i64, bytes: usize) -> OwnedMessage {
        OwnedMessage::new(
            Some(vec![b'x'; bytes]),
            None,
            "in".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    impl RecordSource for Script {
        type Record<'a> = OwnedMessage;

        fn poll(&self, timeout: Duration) -> Option<Result<OwnedMessage, KafkaError>> {
            self.polls.borrow_mut().push(timeout);
            match self.steps.borrow_mut().pop_front()? {
                Step::Record(p, o, b) => Some(Ok(message(p, o, b))),
                Step::Nothing => None,
                Step::RevokeThenRecord(revoked, p, o) => {
                    self.revoked.borrow_mut().extend(revoked);
                    Some(Ok(message(p, o, 1)))
                }
            }
        }

        fn take_revoked(&self) -> BTreeSet<i32> {
            std::mem::take(&mut *self.revoked.borrow_mut())
        }
    }

    fn limits(interval_ms: u64, max_records: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            interval: Duration::from_millis(interval_ms),
            max_records,
            max_bytes,
        }
    }

    fn positions(batch: &Batch<OwnedMessage>) -> Vec<(i32, i64)> {
        batch
            .records
            .iter()
            .map(|r| (r.partition(), r.offset()))
            .collect()
    }

    /// Stops once the script has run out, so a test can never spin.
    fn until_exhausted(script: &Script) -> impl FnMut() -> bool + '_ {
        move || script.steps.borrow().is_empty() && script.polls.borrow().len() > 100
    }

    #[test]
    fn closes_at_max_records_and_max_bytes() {
        let script = Script::new(vec![
            Step::Record(0, 1, 1),
            Step::Record(0, 2, 1),
            Step::Record(0, 3, 1),
            Step::Record(0, 4, 1),
        ]);
        let batcher = Batcher::new(limits(60_000, 2, usize::MAX));
        let batch = batcher.next(&script, until_exhausted(&script)).unwrap();
        assert_eq!(positions(&batch), vec![(0, 1), (0, 2)]);

        let script = Script::new(vec![
            Step::Record(0, 1, 600),
            Step::Record(0, 2, 600),
            Step::Record(0, 3, 1),
        ]);
        let batcher = Batcher::new(limits(60_000, 1000, 1000));
        let batch = batcher.next(&script, until_exhausted(&script)).unwrap();
        assert_eq!(
            positions(&batch),
            vec![(0, 1), (0, 2)],
            "closes once it holds 1,000 bytes"
        );
    }

    #[test]
    fn latency_mode_closes_when_nothing_more_is_ready() {
        let script = Script::new(vec![
            Step::Nothing,
            Step::Record(1, 7, 1),
            Step::Record(1, 8, 1),
            Step::Nothing,
            Step::Record(1, 9, 1),
        ]);
        let batcher = Batcher::new(limits(0, 1000, usize::MAX));
        let batch = batcher.next(&script, until_exhausted(&script)).unwrap();
        assert_eq!(positions(&batch), vec![(1, 7), (1, 8)]);
        let polls = script.polls.borrow();
        assert_eq!(polls[0], IDLE_POLL, "waits while no batch is open");
        assert!(
            polls[2..].iter().all(|t| t.is_zero()),
            "never waits once one is: {polls:?}"
        );
    }

    #[test]
    fn a_revoke_drops_the_revoked_partitions_records_even_if_assigned_again() {
        // Partition 0 is revoked (and, as far as the batcher can tell, assigned again)
        // inside the window: its records will be re-read from the committed offset.
        let script = Script::new(vec![
            Step::Record(0, 10, 1),
            Step::Record(1, 20, 1),
            Step::RevokeThenRecord(vec![0], 0, 10),
            Step::Record(1, 21, 1),
        ]);
        let batcher = Batcher::new(limits(60_000, 3, usize::MAX));
        let batch = batcher.next(&script, until_exhausted(&script)).unwrap();
        assert_eq!(positions(&batch), vec![(1, 20), (0, 10), (1, 21)]);
    }

    #[test]
    fn a_batch_emptied_by_a_revoke_reopens_with_its_next_record() {
        let script = Script::new(vec![
            Step::Record(0, 1, 1),
            Step::RevokeThenRecord(vec![0], 2, 5),
            Step::Record(2, 6, 1),
        ]);
        let batcher = Batcher::new(limits(60_000, 2, usize::MAX));
        let batch = batcher.next(&script, until_exhausted(&script)).unwrap();
        assert_eq!(positions(&batch), vec![(2, 5), (2, 6)]);
    }

    #[test]
    fn stop_returns_the_open_batch_then_nothing() {
        let script = Script::new(vec![Step::Record(0, 1, 1)]);
        let batcher = Batcher::new(limits(60_000, 10, usize::MAX));
        let mut polls = 0;
        let batch = batcher.next(&script, || {
            polls += 1;
            polls > 2
        });
        assert_eq!(positions(&batch.unwrap()), vec![(0, 1)]);
        assert!(batcher.next(&script, || true).is_none());
    }

    /// A backlog never leaves the consumer empty; a shutdown must still be seen within a few
    /// dozen records, not only when the batch is full.
    #[test]
    fn stop_is_seen_while_records_keep_coming() {
        let script = Script::new((0..5_000).map(|o| Step::Record(0, o, 1)).collect());
        let batcher = Batcher::new(limits(60_000, 5_000, usize::MAX));
        let batch = batcher
            .next(&script, || script.polls.borrow().len() >= 100)
            .unwrap();
        let taken = batch.records.len();
        assert!(
            (100..=100 + RECORDS_PER_CLOCK_READ as usize).contains(&taken),
            "{taken} records taken after the stop"
        );
    }

    #[test]
    fn the_interval_closes_a_batch_that_is_not_full() {
        let script = Script::new(vec![Step::Record(0, 1, 1), Step::Nothing, Step::Nothing]);
        let batcher = Batcher::new(limits(1, 10, usize::MAX));
        std::thread::sleep(Duration::from_millis(2));
        let batch = batcher
            .next(&script, || {
                std::thread::sleep(Duration::from_millis(1));
                false
            })
            .unwrap();
        assert_eq!(positions(&batch), vec![(0, 1)]);
    }
}
