//! Offset tracking: what a finished batch lets us commit, and committing it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::source::Consumer;

const COMMIT_ATTEMPTS: u32 = 3;
const COMMIT_BACKOFF: Duration = Duration::from_millis(200);

/// Per partition, the offset after the last record of the batch: the position a restarted
/// consumer resumes from. Records within a partition arrive in offset order, but taking
/// the maximum keeps this right even if a batch were assembled out of order.
pub fn next_offsets(records: &[OwnedMessage]) -> BTreeMap<(String, i32), i64> {
    let mut next = BTreeMap::new();
    for r in records {
        let slot = next
            .entry((r.topic().to_owned(), r.partition()))
            .or_insert(0);
        *slot = (*slot).max(r.offset() + 1);
    }
    next
}

pub fn to_partition_list(
    offsets: &BTreeMap<(String, i32), i64>,
) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for ((topic, partition), offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(tpl)
}

/// Commits synchronously on a blocking thread, so a commit error is known before the
/// batch counts as done, without stalling the async workers for the round trip.
pub async fn commit(consumer: &Arc<Consumer>, offsets: TopicPartitionList) -> KafkaResult<()> {
    let mut attempt = 1;
    loop {
        let consumer = Arc::clone(consumer);
        let tpl = offsets.clone();
        let result = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .unwrap_or(Err(KafkaError::Canceled));
        match result {
            Err(e) if attempt < COMMIT_ATTEMPTS && is_retriable(&e) => {
                attempt += 1;
                tokio::time::sleep(COMMIT_BACKOFF).await;
            }
            other => return other,
        }
    }
}

fn is_retriable(e: &KafkaError) -> bool {
    e.rdkafka_error_code().is_some_and(|code| {
        use rdkafka::types::RDKafkaErrorCode as C;
        matches!(
            code,
            C::CoordinatorLoadInProgress
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
                | C::RequestTimedOut
                | C::NetworkException
                | C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::OperationTimedOut
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Timestamp;

    fn msg(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "in".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn commits_one_past_the_highest_offset_per_partition() {
        let next = next_offsets(&[msg(0, 5), msg(1, 2), msg(0, 7), msg(0, 6)]);
        assert_eq!(next.get(&("in".into(), 0)), Some(&8));
        assert_eq!(next.get(&("in".into(), 1)), Some(&3));
        assert_eq!(next.len(), 2);
    }
}
