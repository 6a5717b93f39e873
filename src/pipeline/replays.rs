//! Exactly-once replays, bounded. An aborted transaction rewinds its batch to be read again;
//! what makes the replay different from the failed attempt is decided here:
//!
//! - a record whose output the broker refused for good (`sink::is_poison`) is dead-lettered
//!   as `undeliverable` on the replay, so one bad record cannot abort every attempt;
//! - if the dead-letter topic refuses that too, the service stops with the batch uncommitted;
//! - replays back off (100 ms, doubling, up to 5 s), readiness goes false from the second
//!   abort in a row until a transaction commits, and `MAX_ABORTS_IN_A_ROW` aborts stop the
//!   service instead of replaying forever.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use rdkafka::message::{Headers, Message};
use tracing::warn;

use super::acks::{BatchAcks, Failure};
use super::sink::{is_poison, source_of, HEADER_REASON};
use crate::record::{Reason, Rejection, SourcePosition};
use crate::service::state::ServiceState;
use crate::transform::Outcome;

/// Aborted transactions in a row after which the service stops rather than replay again.
pub const MAX_ABORTS_IN_A_ROW: u32 = 8;
/// Aborts in a row from which `/readyz` says not ready.
pub const NOT_READY_AFTER_ABORTS: u32 = 2;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long to wait, after an abort, for the aborted records' delivery reports.
const REPORT_WAIT: Duration = Duration::from_secs(10);

pub struct Replays {
    dead_letter_topic: String,
    /// Inputs whose output the broker refused for good, with why: dead-lettered on replay.
    poisoned: BTreeMap<SourcePosition, String>,
    aborts_in_a_row: u32,
}

impl Replays {
    pub fn new(dead_letter_topic: &str) -> Self {
        Self {
            dead_letter_topic: dead_letter_topic.to_owned(),
            poisoned: BTreeMap::new(),
            aborts_in_a_row: 0,
        }
    }

    /// Turns the outcome of every poisoned input of the batch into an `undeliverable` dead
    /// letter; returns how many.
    pub fn apply<M: Message>(&self, records: &[M], outcomes: &mut [Outcome]) -> usize {
        if self.poisoned.is_empty() {
            return 0;
        }
        let mut applied = 0;
        for (record, outcome) in records.iter().zip(outcomes.iter_mut()) {
            let position = SourcePosition {
                partition: record.partition(),
                offset: record.offset(),
            };
            if let Some(why) = self.poisoned.get(&position) {
                *outcome = Outcome::Rejected(Rejection::new(Reason::Undeliverable, why.clone()));
                applied += 1;
            }
        }
        applied
    }

    /// Learns from an aborted attempt's refused records; returns how long to wait before the
    /// replay, or the error to stop with.
    pub fn aborted(&mut self, failures: &[Failure]) -> anyhow::Result<Duration> {
        for failure in failures.iter().filter(|f| is_poison(&f.error)) {
            let record = &failure.record;
            let Some(position) = source_of(record) else {
                continue;
            };
            let to_dead_letters = record.topic() == self.dead_letter_topic;
            let was_undeliverable = to_dead_letters
                && record
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == HEADER_REASON))
                    .is_some_and(|h| h.value == Some(Reason::Undeliverable.code().as_bytes()));
            if was_undeliverable {
                return Err(anyhow!(
                    "the dead-letter topic {} refused the `undeliverable` dead letter of input \
                     partition {} offset {}: {}; the batch stays uncommitted",
                    self.dead_letter_topic,
                    position.partition,
                    position.offset,
                    failure.error
                ));
            }
            let what = if to_dead_letters {
                "dead letter"
            } else {
                "output"
            };
            self.poisoned.insert(
                position,
                format!(
                    "the broker refused the {what} on {}: {}",
                    record.topic(),
                    failure.error
                ),
            );
        }
        self.aborts_in_a_row += 1;
        if self.aborts_in_a_row >= MAX_ABORTS_IN_A_ROW {
            return Err(anyhow!(
                "{} transactions aborted in a row; stopping instead of replaying again \
                 (the batch stays uncommitted)",
                self.aborts_in_a_row
            ));
        }
        let doublings = self.aborts_in_a_row.saturating_sub(1).min(16);
        Ok(FIRST_BACKOFF
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF))
    }

    /// Why the service is not ready, while transactions keep aborting.
    pub fn not_ready(&self) -> Option<String> {
        (self.aborts_in_a_row >= NOT_READY_AFTER_ABORTS).then(|| {
            format!(
                "{} transactions aborted in a row; replaying with backoff",
                self.aborts_in_a_row
            )
        })
    }

    /// A transaction committed: the streak ends, and its inputs need no more care.
    pub fn committed<M: Message>(&mut self, records: &[M]) {
        self.aborts_in_a_row = 0;
        if self.poisoned.is_empty() {
            return;
        }
        for r in records {
            self.poisoned.remove(&SourcePosition {
                partition: r.partition(),
                offset: r.offset(),
            });
        }
    }

    /// After an abort: collects the aborted records' reports, learns from them, updates
    /// readiness and waits out the backoff (cut short by `stop`).
    pub fn after_abort(
        &mut self,
        acks: &BatchAcks,
        state: &ServiceState,
        stop: impl Fn() -> bool,
    ) -> anyhow::Result<()> {
        if !acks.wait(REPORT_WAIT) {
            warn!("delivery reports of an aborted transaction still missing");
        }
        let backoff = match self.aborted(&acks.take_failures()) {
            Ok(backoff) => backoff,
            Err(e) => {
                state.health.fail(format!("{e:#}"));
                return Err(e);
            }
        };
        state.health.set_degraded(self.not_ready());
        warn!(
            aborts_in_a_row = self.aborts_in_a_row,
            poisoned = self.poisoned.len(),
            backoff_ms = backoff.as_millis() as u64,
            "replaying an aborted batch"
        );
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop() {
            std::thread::sleep(Duration::from_millis(20).min(backoff));
        }
        Ok(())
    }

    /// After a commit: ends the streak and clears the not-ready state.
    pub fn after_commit<M: Message>(&mut self, records: &[M], state: &ServiceState) {
        let was_degraded = self.aborts_in_a_row >= NOT_READY_AFTER_ABORTS;
        self.committed(records);
        if was_degraded {
            state.health.set_degraded(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
    use rdkafka::types::RDKafkaErrorCode;

    fn input(partition: i32, offset: i64) -> OwnedMessage {
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

    fn refused_output(partition: i32, offset: i64, code: RDKafkaErrorCode) -> Failure {
        let value = format!(r#"{{"label":"setosa","partition":{partition},"offset":{offset}}}"#);
        Failure {
            error: KafkaError::MessageProduction(code),
            record: OwnedMessage::new(
                Some(value.into_bytes()),
                Some(b"k".to_vec()),
                "out".into(),
                Timestamp::NotAvailable,
                0,
                -1,
                None,
            ),
        }
    }

    fn refused_dead_letter(partition: i32, offset: i64, reason: &str) -> Failure {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: super::super::sink::HEADER_SOURCE_PARTITION,
                value: Some(&partition.to_string()),
            })
            .insert(Header {
                key: super::super::sink::HEADER_SOURCE_OFFSET,
                value: Some(&offset.to_string()),
            });
        Failure {
            error: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            record: OwnedMessage::new(
                Some(vec![0; 10]),
                None,
                "dlq".into(),
                Timestamp::NotAvailable,
                0,
                -1,
                Some(headers),
            ),
        }
    }

    fn scored() -> Outcome {
        Outcome::Scored(b"{}".to_vec())
    }

    #[test]
    fn a_refused_output_becomes_an_undeliverable_dead_letter_on_replay() {
        let mut replays = Replays::new("dlq");
        let backoff = replays
            .aborted(&[refused_output(1, 7, RDKafkaErrorCode::InvalidRecord)])
            .unwrap();
        assert_eq!(backoff, FIRST_BACKOFF);
        let records = [input(0, 7), input(1, 7), input(1, 8)];
        let mut outcomes = vec![scored(), scored(), scored()];
        assert_eq!(replays.apply(&records, &mut outcomes), 1);
        assert_eq!(outcomes[0], scored());
        assert_eq!(outcomes[2], scored());
        match &outcomes[1] {
            Outcome::Rejected(r) => {
                assert_eq!(r.reason, Reason::Undeliverable);
                assert!(r.detail.contains("output on out"), "{}", r.detail);
            }
            other => panic!("{other:?}"),
        }
        replays.committed(&records);
        let mut outcomes = vec![scored(), scored(), scored()];
        assert_eq!(
            replays.apply(&records, &mut outcomes),
            0,
            "forgotten once committed"
        );
    }

    #[test]
    fn transient_failures_are_replayed_unchanged() {
        let mut replays = Replays::new("dlq");
        replays
            .aborted(&[refused_output(0, 1, RDKafkaErrorCode::RequestTimedOut)])
            .unwrap();
        let mut outcomes = vec![scored()];
        assert_eq!(replays.apply(&[input(0, 1)], &mut outcomes), 0);
    }

    #[test]
    fn a_refused_dead_letter_is_replayed_as_undeliverable_then_stops() {
        let mut replays = Replays::new("dlq");
        replays
            .aborted(&[refused_dead_letter(2, 3, "too_large")])
            .unwrap();
        let mut outcomes = vec![scored()];
        assert_eq!(replays.apply(&[input(2, 3)], &mut outcomes), 1);
        let err = replays
            .aborted(&[refused_dead_letter(2, 3, "undeliverable")])
            .unwrap_err();
        assert!(err.to_string().contains("partition 2 offset 3"), "{err:#}");
    }

    #[test]
    fn aborts_back_off_go_unready_and_stop_after_the_bound() {
        let mut replays = Replays::new("dlq");
        let mut backoffs = Vec::new();
        for _ in 1..MAX_ABORTS_IN_A_ROW {
            backoffs.push(replays.aborted(&[]).unwrap());
            if backoffs.len() < NOT_READY_AFTER_ABORTS as usize {
                assert!(replays.not_ready().is_none());
            } else {
                assert!(replays.not_ready().is_some());
            }
        }
        assert!(backoffs.windows(2).all(|w| w[0] <= w[1]), "{backoffs:?}");
        assert!(backoffs[1] > backoffs[0]);
        assert!(backoffs.iter().all(|b| *b <= MAX_BACKOFF));
        assert!(replays.aborted(&[]).is_err(), "bounded");

        let mut replays = Replays::new("dlq");
        replays.aborted(&[]).unwrap();
        replays.aborted(&[]).unwrap();
        replays.committed(&[input(0, 0)]);
        assert!(replays.not_ready().is_none(), "a commit ends the streak");
        assert_eq!(replays.aborted(&[]).unwrap(), FIRST_BACKOFF);
    }

    fn state() -> std::sync::Arc<ServiceState> {
        let model =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/iris-forest.json");
        ServiceState::new(crate::model::ModelStore::open(&model, false).unwrap())
    }

    #[test]
    fn readiness_follows_the_abort_streak_and_a_refused_undeliverable_stops() {
        let state = state();
        let mut replays = Replays::new("dlq");
        let settled = BatchAcks::new(0);
        replays.after_abort(&settled, &state, || true).unwrap();
        assert!(state.ready().is_ok() || !state.assignment.received());
        assert!(
            state.health.degraded().is_none(),
            "one abort is not a streak"
        );
        replays.after_abort(&settled, &state, || true).unwrap();
        let reason = state
            .health
            .degraded()
            .expect("not ready from the second abort");
        assert!(reason.contains("2 transactions aborted"), "{reason}");
        replays.after_commit(&[input(0, 0)], &state);
        assert!(state.health.degraded().is_none(), "a commit clears it");

        let acks = BatchAcks::new(1);
        acks.failed(refused_dead_letter(4, 2, "undeliverable"));
        let err = replays.after_abort(&acks, &state, || true).unwrap_err();
        assert!(!state.health.failure().unwrap_or_default().is_empty());
        assert!(err.to_string().contains("offset 2"), "{err:#}");
    }

    #[test]
    fn the_backoff_is_waited_out_unless_stopped() {
        let state = state();
        let mut replays = Replays::new("dlq");
        let started = Instant::now();
        replays
            .after_abort(&BatchAcks::new(0), &state, || false)
            .unwrap();
        assert!(
            started.elapsed() >= FIRST_BACKOFF,
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        replays
            .after_abort(&BatchAcks::new(0), &state, || true)
            .unwrap();
        assert!(started.elapsed() < FIRST_BACKOFF * 2, "cut short by stop");
    }
}
