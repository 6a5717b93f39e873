//! The commit stage (at-least-once): waits for each produced batch's acknowledgements, sends
//! again what the broker refused, and only then commits the batch's offsets. It runs on its
//! own thread so the scoring loop can score and produce the next batches meanwhile; batches
//! that are already acknowledged when the head one is done are committed together, in one
//! round trip.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::acks::BatchAcks;
use super::in_flight::InFlightGuard;
use super::sink::{is_poison, Destinations, Sink};
use super::source::Consumer;
use crate::service::state::ServiceState;

/// Rounds of re-sending a batch's refused records before the pipeline stops uncommitted.
pub const MAX_SEND_ATTEMPTS: u32 = 5;
const COMMIT_ATTEMPTS: u32 = 3;
const COMMIT_BACKOFF: Duration = Duration::from_millis(200);
/// How often a wait for acknowledgements looks up to log that it is still waiting.
const ACK_WAIT_SLICE: Duration = Duration::from_secs(10);
/// How long a stopping instance keeps trying to save offsets a failed commit left unsaved:
/// long enough for a rebalance to finish (the session timeout), short of the 60 s a pod is
/// given to stop.
const SHUTDOWN_COMMIT_RETRY: Duration = Duration::from_secs(15);

/// Per partition, the offset after the last record of a batch: where a restarted consumer
/// resumes. Taking the maximum keeps this right even for a batch assembled out of order.
pub type NextOffsets = BTreeMap<i32, i64>;

pub fn next_offsets<M: Message>(records: &[M]) -> NextOffsets {
    let mut next = NextOffsets::new();
    for r in records {
        let slot = next.entry(r.partition()).or_insert(0);
        *slot = (*slot).max(r.offset() + 1);
    }
    next
}

pub fn to_partition_list(topic: &str, offsets: &NextOffsets) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(tpl)
}

/// Offsets of delivered batches whose commit failed and that no later commit has covered.
/// A failed commit frees its batch's in-flight slot like a successful one, so without this
/// a revoke would let the partitions go with their last batches delivered but unsaved, and
/// their next owner would score them again; the revoke commits these first (from inside
/// the rebalance callback, while this member still belongs to the generation).
#[derive(Default)]
pub struct UnsavedOffsets(std::sync::Mutex<NextOffsets>);

impl UnsavedOffsets {
    pub fn failed(&self, offsets: &NextOffsets) {
        let mut unsaved = self.lock();
        for (partition, next) in offsets {
            let slot = unsaved.entry(*partition).or_insert(*next);
            *slot = (*slot).max(*next);
        }
    }

    pub fn saved(&self, offsets: &NextOffsets) {
        let mut unsaved = self.lock();
        for (partition, next) in offsets {
            if unsaved.get(partition).is_some_and(|u| u <= next) {
                unsaved.remove(partition);
            }
        }
    }

    /// Every unsaved offset, forgotten here.
    pub fn take_all(&self) -> NextOffsets {
        std::mem::take(&mut *self.lock())
    }

    /// The unsaved offsets of `partitions`, forgotten here.
    pub fn take(&self, partitions: &[i32]) -> NextOffsets {
        let mut unsaved = self.lock();
        partitions
            .iter()
            .filter_map(|p| unsaved.remove(p).map(|next| (*p, next)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NextOffsets> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A batch handed to the producer, travelling to the commit stage with its in-flight slot.
pub struct ProducedBatch {
    pub acks: Arc<BatchAcks>,
    pub offsets: NextOffsets,
    pub destinations: Destinations,
    pub opened: Instant,
    pub model_version: Arc<str>,
    pub slot: InFlightGuard,
}

pub struct CommitStage {
    pub consumer: Arc<Consumer>,
    pub sink: Arc<Sink>,
    pub state: Arc<ServiceState>,
    pub input_topic: String,
}

impl CommitStage {
    /// Runs until the scoring loop hangs up (then `Ok`, everything committed) or a batch
    /// cannot be delivered (then the error, with that batch and every later one uncommitted).
    pub fn run(&self, batches: Receiver<ProducedBatch>) -> anyhow::Result<()> {
        let mut carried: Option<ProducedBatch> = None;
        // The error of the last commit, while no later one has superseded it.
        let mut unsaved: Option<KafkaError> = None;
        loop {
            let head = match carried.take() {
                Some(batch) => batch,
                None => match batches.recv() {
                    Ok(batch) => batch,
                    Err(_) => {
                        return match unsaved {
                            Some(_) if self.save_unsaved_before_leaving() => Ok(()),
                            // Delivered, but the position is not saved: a restart re-reads
                            // the last batches. Not a clean stop.
                            Some(e) => Err(anyhow!(
                                "the last offset commit failed ({e}); the last batches' records \
                                 are delivered but will be read again"
                            )),
                            None => Ok(()),
                        };
                    }
                },
            };
            let mut head = head;
            self.confirm(&mut head)?;
            let mut group = vec![head];
            loop {
                match batches.try_recv() {
                    Ok(mut next) if next.acks.is_settled() => {
                        self.confirm(&mut next)?;
                        group.push(next);
                    }
                    Ok(next) => {
                        carried = Some(next);
                        break;
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            unsaved = self.commit(&group).err();
            // Dropping the group frees its in-flight slots.
        }
    }

    /// Waits for every record of the batch, sending refused ones again; records the broker
    /// still refuses for good after `MAX_SEND_ATTEMPTS` rounds go to the dead-letter topic as
    /// `undeliverable`. The pipeline's readiness goes false the moment this gives up.
    fn confirm(&self, batch: &mut ProducedBatch) -> anyhow::Result<()> {
        let result = self.confirm_or_divert(batch);
        if let Err(e) = &result {
            self.state.health.fail(format!("{e:#}"));
        }
        result
    }

    fn confirm_or_divert(&self, batch: &mut ProducedBatch) -> anyhow::Result<()> {
        let mut acks = Arc::clone(&batch.acks);
        let mut round = 1;
        let mut diverted = false;
        loop {
            while !acks.wait(ACK_WAIT_SLICE) {
                warn!(
                    waited_s = ACK_WAIT_SLICE.as_secs(),
                    "still waiting for the broker to acknowledge a batch"
                );
            }
            let failures = acks.take_failures();
            let Some(first) = failures.first() else {
                return Ok(());
            };
            if diverted {
                return Err(anyhow!(
                    "{} record(s) the broker refused could not be written to the dead-letter \
                     topic {} as `undeliverable` either: {}; their batch stays uncommitted",
                    failures.len(),
                    self.sink.dead_letter_topic(),
                    first.error
                ));
            }
            if round >= MAX_SEND_ATTEMPTS {
                if !failures.iter().all(|f| is_poison(&f.error)) {
                    return Err(anyhow!(
                        "giving up on {} record(s) to {} after {round} attempts: {}; \
                         their batch stays uncommitted",
                        failures.len(),
                        first.record.topic(),
                        first.error
                    ));
                }
                warn!(records = failures.len(), topic = first.record.topic(), error = %first.error,
                      attempts = round, "the broker refuses these records for good; dead-lettering them as undeliverable");
                for failure in &failures {
                    batch
                        .destinations
                        .reroute_undeliverable(failure, self.sink.dead_letter_topic());
                }
                let diversion = Arc::new(BatchAcks::new(failures.len()));
                self.sink.divert(&failures, &diversion, || false)?;
                acks = diversion;
                diverted = true;
                continue;
            }
            warn!(records = failures.len(), topic = first.record.topic(), error = %first.error,
                  attempt = round, "delivery failed; re-sending");
            self.state
                .metrics
                .delivery_retries
                .inc_by(failures.len() as u64);
            let retry = Arc::new(BatchAcks::new(failures.len()));
            self.sink.resend(&failures, &retry, || false)?;
            acks = retry;
            round += 1;
        }
    }

    /// At shutdown, after the last commit failed (typically `RebalanceInProgress` while
    /// another member joins or leaves): the scoring loop no longer polls, so the consumer
    /// cannot rejoin the group and every retry would fail the same way. Polling here lets it
    /// rejoin; a revoke on the way commits the unsaved offsets itself (`pre_rebalance`), or
    /// a retried commit does. Records a poll returns are dropped uncommitted: their position
    /// is not stored, so they are read again by whoever owns the partition next.
    fn save_unsaved_before_leaving(&self) -> bool {
        let deadline = Instant::now() + SHUTDOWN_COMMIT_RETRY;
        let unsaved = &self.consumer.context().unsaved;
        loop {
            let offsets = unsaved.take_all();
            if offsets.is_empty() {
                info!("offsets left unsaved by a failed commit were committed before leaving");
                return true;
            }
            let result = to_partition_list(&self.input_topic, &offsets)
                .and_then(|tpl| self.consumer.commit(&tpl, CommitMode::Sync));
            match result {
                Ok(()) => {
                    info!("offsets left unsaved by a failed commit were committed before leaving");
                    return true;
                }
                Err(e) if Instant::now() >= deadline => {
                    unsaved.failed(&offsets);
                    warn!(error = %e, "could not commit the last offsets before leaving");
                    return false;
                }
                Err(_) => {
                    unsaved.failed(&offsets);
                    let _ = self.consumer.poll(Duration::from_millis(100));
                }
            }
        }
    }

    fn commit(&self, group: &[ProducedBatch]) -> KafkaResult<()> {
        let mut offsets = NextOffsets::new();
        for batch in group {
            for (partition, next) in &batch.offsets {
                let slot = offsets.entry(*partition).or_insert(0);
                *slot = (*slot).max(*next);
            }
        }
        let result = to_partition_list(&self.input_topic, &offsets)
            .and_then(|tpl| commit_with_retries(|| self.consumer.commit(&tpl, CommitMode::Sync)));
        let unsaved = &self.consumer.context().unsaved;
        match &result {
            Ok(()) => unsaved.saved(&offsets),
            Err(_) => unsaved.failed(&offsets),
        }
        let metrics = &self.state.metrics;
        if let Err(e) = &result {
            // The records are delivered; only the position is not saved, so they will be
            // re-read and scored again (at-least-once). The next commit for the same
            // partitions supersedes this one.
            metrics.commit_failures.inc();
            warn!(error = %e, "offset commit failed");
        }
        for batch in group {
            super::count_delivered(
                &self.state,
                &batch.destinations,
                batch.opened,
                &batch.model_version,
            );
        }
        result
    }
}

/// A commit, tried again after a pause while the group coordinator is briefly unavailable;
/// any other error is final at once (a retry could not change it, and would only hold up
/// the batches behind it).
fn commit_with_retries(mut commit: impl FnMut() -> KafkaResult<()>) -> KafkaResult<()> {
    let mut attempt = 1;
    loop {
        match commit() {
            Err(e) if attempt < COMMIT_ATTEMPTS && is_retriable(&e) => {
                attempt += 1;
                std::thread::sleep(COMMIT_BACKOFF);
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
    use rdkafka::message::{OwnedMessage, Timestamp};
    use rdkafka::types::RDKafkaErrorCode;

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
    fn unsaved_offsets_are_kept_until_a_later_commit_covers_them() {
        let unsaved = UnsavedOffsets::default();
        unsaved.failed(&NextOffsets::from([(0, 10), (1, 5)]));
        unsaved.failed(&NextOffsets::from([(0, 12)]));
        unsaved.saved(&NextOffsets::from([(1, 4)]));
        assert_eq!(
            unsaved.take(&[1]),
            NextOffsets::from([(1, 5)]),
            "an older commit does not cover it"
        );
        unsaved.failed(&NextOffsets::from([(1, 5)]));
        unsaved.saved(&NextOffsets::from([(1, 6)]));
        assert!(unsaved.take(&[1]).is_empty(), "a later commit covers it");
        assert_eq!(unsaved.take(&[0, 2]), NextOffsets::from([(0, 12)]));
        assert!(unsaved.take(&[0]).is_empty(), "taken once");
    }

    /// Runs `commit_with_retries` over scripted answers; returns its result and the attempts.
    fn retried(answers: &[Option<RDKafkaErrorCode>]) -> (KafkaResult<()>, usize) {
        let mut attempts = 0;
        let result = commit_with_retries(|| {
            let answer = answers.get(attempts).copied().flatten();
            attempts += 1;
            match answer {
                None => Ok(()),
                Some(code) => Err(KafkaError::ConsumerCommit(code)),
            }
        });
        (result, attempts)
    }

    #[test]
    fn a_commit_is_retried_only_while_the_coordinator_is_unavailable() {
        use RDKafkaErrorCode as C;
        let (result, attempts) = retried(&[Some(C::CoordinatorNotAvailable), None]);
        assert!(result.is_ok(), "the retry succeeded");
        assert_eq!(attempts, 2);

        let (result, attempts) = retried(&[Some(C::RebalanceInProgress), None]);
        assert!(result.is_err(), "a rebalance is not waited out here");
        assert_eq!(attempts, 1, "a final error is not retried");

        let unavailable = [Some(C::NotCoordinator); 10];
        let (result, attempts) = retried(&unavailable);
        assert!(result.is_err());
        assert_eq!(attempts, COMMIT_ATTEMPTS as usize, "retries are bounded");
    }

    #[test]
    fn commits_one_past_the_highest_offset_per_partition() {
        let next = next_offsets(&[msg(0, 5), msg(1, 2), msg(0, 7), msg(0, 6)]);
        assert_eq!(next, NextOffsets::from([(0, 8), (1, 3)]));
    }
}
