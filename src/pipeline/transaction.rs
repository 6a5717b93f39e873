//! Exactly-once mode: each micro-batch is one Kafka transaction.
//!
//! Per batch: begin → produce outputs and dead letters → send the batch's next offsets to the
//! transaction (with the consumer's group metadata, so a zombie from an older generation is
//! fenced) → commit. An abortable failure aborts the transaction and rewinds the consumer to
//! the batch's first offsets, so the same records are read and scored again; nothing is
//! skipped. A fatal failure (e.g. fenced by another instance with the same transactional id)
//! stops the service: continuing could only produce duplicates.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail};
use rdkafka::consumer::Consumer as _;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use super::commit;
use super::sink::{OutputProducer, Sink};
use super::source::Consumer;

/// Bound on each blocking transactional call.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries of a call librdkafka reports as retriable before giving up on the batch.
const RETRIABLE_ATTEMPTS: u32 = 5;
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchResult {
    Committed,
    /// Aborted and rewound: the batch's records will be consumed again.
    Aborted,
}

/// How a failed transactional call may be recovered, as librdkafka classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnErrorKind {
    /// Call the same operation again.
    Retriable,
    /// Abort the transaction and start the batch over.
    Abortable,
    /// The producer is unusable (fenced, or a protocol violation): stop.
    Fatal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TxnError {
    pub kind: TxnErrorKind,
    pub message: String,
}

impl From<KafkaError> for TxnError {
    fn from(e: KafkaError) -> Self {
        let kind = match &e {
            KafkaError::Transaction(err) if err.is_fatal() => TxnErrorKind::Fatal,
            KafkaError::Transaction(err) if err.is_retriable() => TxnErrorKind::Retriable,
            // Anything else (including a plain produce error) leaves the transaction
            // unfinished; aborting and starting over is always safe.
            _ => TxnErrorKind::Abortable,
        };
        Self {
            kind,
            message: e.to_string(),
        }
    }
}

/// The transactional calls the pipeline makes, in order, so that their sequence can be
/// checked without a broker.
pub trait Transactional {
    fn begin(&self) -> Result<(), TxnError>;
    fn send_offsets(&self, offsets: &TopicPartitionList) -> Result<(), TxnError>;
    fn commit(&self) -> Result<(), TxnError>;
    fn abort(&self) -> Result<(), TxnError>;
    /// Moves the consumer back to these offsets after an abort.
    fn rewind(&self, to: &TopicPartitionList) -> Result<(), TxnError>;
}

/// The real thing: the sink's transactional producer and the pipeline's consumer. Its calls
/// block on broker round trips, which is what the scoring thread is for.
pub struct KafkaTransactions<'a> {
    pub sink: &'a Sink,
    pub consumer: &'a Consumer,
    pub input_topic: &'a str,
}

impl Transactional for KafkaTransactions<'_> {
    fn begin(&self) -> Result<(), TxnError> {
        Ok(self.sink.producer().begin_transaction()?)
    }

    fn send_offsets(&self, offsets: &TopicPartitionList) -> Result<(), TxnError> {
        let metadata = self.consumer.group_metadata().ok_or_else(|| TxnError {
            kind: TxnErrorKind::Abortable,
            message: "the consumer has no group metadata yet".into(),
        })?;
        Ok(self.sink.producer().send_offsets_to_transaction(
            offsets,
            &metadata,
            TXN_CALL_TIMEOUT,
        )?)
    }

    fn commit(&self) -> Result<(), TxnError> {
        commit_transaction(self.sink.producer(), TXN_CALL_TIMEOUT)
    }

    fn abort(&self) -> Result<(), TxnError> {
        Ok(self.sink.producer().abort_transaction(TXN_CALL_TIMEOUT)?)
    }

    fn rewind(&self, to: &TopicPartitionList) -> Result<(), TxnError> {
        let result = self
            .consumer
            .seek_partitions(to.clone(), TXN_CALL_TIMEOUT)?;
        // A seek reports per-partition failures inside the returned list, not as an error:
        // a partition left unrewound would skip the aborted batch's records.
        let failed: Vec<String> = result
            .elements()
            .iter()
            .filter_map(|e| {
                e.error()
                    .err()
                    .map(|err| format!("{}: {err}", e.partition()))
            })
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(TxnError {
            kind: TxnErrorKind::Fatal,
            message: format!(
                "rewinding {} after an abort failed for partition(s) {}",
                self.input_topic,
                failed.join(", ")
            ),
        })
    }
}

/// Commits the open transaction by calling librdkafka directly.
///
/// The rdkafka crate's `commit_transaction` first runs its own `flush`, which serves the
/// producer's event queue in 100 ms slices and returns only once a whole slice has passed:
/// every transaction paid 100 ms, whatever its size (measured: ~10 commits/s on the mock). In
/// event mode librdkafka's own commit flushes by waiting on its message count, and the
/// `ThreadedProducer`'s thread serves the delivery reports meanwhile, so nothing is lost by
/// skipping the crate's wrapper.
fn commit_transaction(producer: &OutputProducer, timeout: Duration) -> Result<(), TxnError> {
    use rdkafka::bindings as rd;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is the live producer's, borrowed for the duration of the call;
    // librdkafka's transactional API may be called from any thread.
    let error =
        unsafe { rd::rd_kafka_commit_transaction(producer.client().native_ptr(), timeout_ms) };
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: `error` is a non-null error object that this call owns: it is read, then
    // destroyed exactly once, and the message is copied out before the destroy.
    let (kind, message) = unsafe {
        let kind = if rd::rd_kafka_error_is_fatal(error) != 0 {
            TxnErrorKind::Fatal
        } else if rd::rd_kafka_error_is_retriable(error) != 0 {
            TxnErrorKind::Retriable
        } else {
            TxnErrorKind::Abortable
        };
        let message = std::ffi::CStr::from_ptr(rd::rd_kafka_error_string(error))
            .to_string_lossy()
            .into_owned();
        rd::rd_kafka_error_destroy(error);
        (kind, message)
    };
    Err(TxnError {
        kind,
        message: format!("Transaction error: {message}"),
    })
}

/// Calls `op` until it succeeds, fails for good, or runs out of retriable attempts.
fn with_retries(what: &str, mut op: impl FnMut() -> Result<(), TxnError>) -> Result<(), TxnError> {
    let mut attempt = 1;
    loop {
        match op() {
            Err(e) if e.kind == TxnErrorKind::Retriable && attempt < RETRIABLE_ATTEMPTS => {
                warn!(error = %e, attempt, "{what} failed; retrying");
                attempt += 1;
                std::thread::sleep(RETRY_BACKOFF);
            }
            other => return other,
        }
    }
}

/// Initialises the transactional producer, retrying what librdkafka calls retriable.
pub fn init(sink: &Sink) -> anyhow::Result<()> {
    with_retries("initialising transactions", || {
        Ok(sink.producer().init_transactions(TXN_CALL_TIMEOUT)?)
    })
    .map_err(|e| anyhow!("cannot initialise the transactional producer: {e}"))
}

/// Per partition, the first offset of the batch: where to rewind after an abort.
pub fn first_offsets<M: Message>(topic: &str, records: &[M]) -> anyhow::Result<TopicPartitionList> {
    let mut first: BTreeMap<i32, i64> = BTreeMap::new();
    for r in records {
        let slot = first.entry(r.partition()).or_insert(i64::MAX);
        *slot = (*slot).min(r.offset());
    }
    let mut tpl = TopicPartitionList::with_capacity(first.len());
    for (partition, offset) in first {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(tpl)
}

/// Runs one batch as a transaction. `produce` (called once the transaction has begun)
/// enqueues the batch's records; the commit then waits for their acknowledgement. On commit,
/// returns what `produce` returned.
pub fn run_batch<T: Transactional, M: Message, P>(
    txn: &T,
    topic: &str,
    records: &[M],
    produce: impl FnOnce() -> anyhow::Result<P>,
) -> anyhow::Result<(BatchResult, Option<P>)> {
    txn.begin()
        .map_err(|e| anyhow!("cannot begin a transaction: {e}"))?;
    let attempt = (|| {
        let produced = produce().map_err(|e| TxnError {
            kind: TxnErrorKind::Abortable,
            message: format!("{e:#}"),
        })?;
        let offsets = commit::to_partition_list(topic, &commit::next_offsets(records))?;
        with_retries("sending offsets to the transaction", || {
            txn.send_offsets(&offsets)
        })?;
        with_retries("committing the transaction", || txn.commit())?;
        Ok::<P, TxnError>(produced)
    })();
    let failure = match attempt {
        Ok(produced) => return Ok((BatchResult::Committed, Some(produced))),
        Err(e) if e.kind == TxnErrorKind::Fatal => {
            bail!("transaction failed fatally (fenced by another instance?): {e}")
        }
        Err(failure) => failure,
    };
    warn!(error = %failure, records = records.len(), "transaction failed; aborting and rewinding");
    with_retries("aborting the transaction", || txn.abort())
        .map_err(|e| anyhow!("cannot abort the transaction after {failure}: {e}"))?;
    txn.rewind(&first_offsets(topic, records)?)
        .map_err(|e| anyhow!("cannot rewind the consumer after an abort: {e}"))?;
    Ok((BatchResult::Aborted, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedMessage, Timestamp};
    use std::cell::RefCell;

    /// Records the calls made and fails the ones it is told to.
    #[derive(Default)]
    struct Script {
        calls: RefCell<Vec<String>>,
        fail_commit_with: RefCell<Vec<TxnError>>,
        fail_offsets_with: RefCell<Vec<TxnError>>,
    }

    impl Script {
        fn record(&self, call: &str, offsets: Option<&TopicPartitionList>) {
            let mut entry = call.to_owned();
            if let Some(tpl) = offsets {
                let desc: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}:{}", e.partition(), e.offset().to_raw().unwrap_or(-1)))
                    .collect();
                entry = format!("{call} {}", desc.join(","));
            }
            self.calls.borrow_mut().push(entry);
        }

        fn outcome(failures: &RefCell<Vec<TxnError>>) -> Result<(), TxnError> {
            failures.borrow_mut().pop().map_or(Ok(()), Err)
        }
    }

    impl Transactional for Script {
        fn begin(&self) -> Result<(), TxnError> {
            self.record("begin", None);
            Ok(())
        }
        fn send_offsets(&self, offsets: &TopicPartitionList) -> Result<(), TxnError> {
            self.record("send_offsets", Some(offsets));
            Self::outcome(&self.fail_offsets_with)
        }
        fn commit(&self) -> Result<(), TxnError> {
            self.record("commit", None);
            Self::outcome(&self.fail_commit_with)
        }
        fn abort(&self) -> Result<(), TxnError> {
            self.record("abort", None);
            Ok(())
        }
        fn rewind(&self, to: &TopicPartitionList) -> Result<(), TxnError> {
            self.record("rewind", Some(to));
            Ok(())
        }
    }

    fn batch() -> Vec<OwnedMessage> {
        [(0, 10), (1, 4), (0, 11), (0, 12), (1, 5)]
            .iter()
            .map(|(p, o)| {
                OwnedMessage::new(
                    None,
                    None,
                    "in".into(),
                    Timestamp::NotAvailable,
                    *p,
                    *o,
                    None,
                )
            })
            .collect()
    }

    fn failure(kind: TxnErrorKind) -> TxnError {
        TxnError {
            kind,
            message: format!("injected {kind:?}"),
        }
    }

    fn run(script: &Script, records: &[OwnedMessage]) -> anyhow::Result<BatchResult> {
        let produce = || {
            script
                .calls
                .borrow_mut()
                .push(format!("produce {}", records.len()));
            Ok(())
        };
        run_batch(script, "in", records, produce).map(|(result, _)| result)
    }

    #[test]
    fn a_batch_is_begin_produce_offsets_commit() {
        let script = Script::default();
        assert_eq!(run(&script, &batch()).unwrap(), BatchResult::Committed);
        assert_eq!(
            *script.calls.borrow(),
            vec!["begin", "produce 5", "send_offsets 0:13,1:6", "commit"]
        );
    }

    #[test]
    fn an_abortable_error_aborts_and_rewinds_to_the_batch_start() {
        let script = Script::default();
        script
            .fail_commit_with
            .borrow_mut()
            .push(failure(TxnErrorKind::Abortable));
        assert_eq!(run(&script, &batch()).unwrap(), BatchResult::Aborted);
        assert_eq!(
            *script.calls.borrow(),
            vec![
                "begin",
                "produce 5",
                "send_offsets 0:13,1:6",
                "commit",
                "abort",
                "rewind 0:10,1:4"
            ]
        );
    }

    #[test]
    fn a_retriable_error_retries_the_same_call() {
        let script = Script::default();
        script
            .fail_offsets_with
            .borrow_mut()
            .push(failure(TxnErrorKind::Retriable));
        assert_eq!(run(&script, &batch()).unwrap(), BatchResult::Committed);
        assert_eq!(
            *script.calls.borrow(),
            vec![
                "begin",
                "produce 5",
                "send_offsets 0:13,1:6",
                "send_offsets 0:13,1:6",
                "commit"
            ]
        );
    }

    #[test]
    fn a_fatal_error_stops_without_aborting_into_a_fenced_producer() {
        let script = Script::default();
        script
            .fail_commit_with
            .borrow_mut()
            .push(failure(TxnErrorKind::Fatal));
        let err = run(&script, &batch()).unwrap_err();
        assert!(err.to_string().contains("fatally"), "{err}");
        assert!(!script.calls.borrow().contains(&"abort".to_string()));
    }
}
