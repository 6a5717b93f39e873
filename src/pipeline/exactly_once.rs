//! Exactly-once delivery: each micro-batch is one Kafka transaction holding its outputs and
//! its offsets, one batch at a time, on the scoring thread: read a batch, begin, produce,
//! send the offsets, commit; on an abortable error, abort and rewind so that the same
//! records are read again.

use std::sync::Arc;

use anyhow::Context;

use super::acks::BatchAcks;
use super::batch::Batcher;
use super::replays::Replays;
use super::sink::Sink;
use super::source::Consumer;
use super::transaction::{self, BatchResult, KafkaTransactions};
use super::{PipelineConfig, Stop};
use crate::record::registry::Framing;
use crate::service::state::ServiceState;

pub fn run(
    config: &PipelineConfig,
    state: &Arc<ServiceState>,
    consumer: &Consumer,
    sink: &Sink,
    stop: &Stop,
) -> anyhow::Result<()> {
    transaction::init(sink)?;
    let txn = KafkaTransactions {
        sink,
        consumer,
        input_topic: &config.input_topic,
    };
    // Opened here, on the scoring thread, where its blocking registry client lives.
    let mut framing = Framing::open(&config.format).context("schema registry")?;
    let batcher = Batcher::new(config.batch_limits());
    let metrics = &state.metrics;
    let give_up = || stop.requested();
    let mut replays = Replays::new(&config.dead_letter_topic);
    while let Some(batch) = batcher.next(consumer, give_up) {
        let model = state.store.current();
        let mut outcomes = state.observe.transform_framed(
            &model,
            state.overlay(),
            &batch.records,
            config.max_record_bytes,
            batch.opened,
            &mut framing,
        );
        replays.apply(&batch.records, &mut outcomes);
        let acks = Arc::new(BatchAcks::new(batch.records.len()));
        let (result, destinations) =
            transaction::run_batch(&txn, &config.input_topic, &batch.records, || {
                let sent = sink.send_batch(&batch.records, &outcomes, &acks, give_up);
                state.observe.produced(batch.opened);
                sent
            })?;
        let label = match result {
            BatchResult::Committed => "committed",
            BatchResult::Aborted => "aborted",
        };
        metrics.transactions.with_label_values(&[label]).inc();
        let Some(destinations) = destinations else {
            replays.after_abort(&acks, state, give_up)?;
            continue;
        };
        replays.after_commit(&batch.records, state);
        metrics.records_in.inc_by(batch.records.len() as u64);
        metrics.batch_size.observe(batch.records.len() as f64);
        // The committed transaction holds every record; its delivery reports are in or
        // arrive with librdkafka's next poll, and say nothing the commit did not.
        super::count_delivered(state, &destinations, batch.opened, &model.version);
    }
    Ok(())
}
