//! Exactly-once delivery: each micro-batch is one Kafka transaction holding its outputs and
//! its offsets, one batch at a time, on the scoring thread: read a batch, begin, produce,
//! send the offsets, commit; on an abortable error, abort and rewind so that the same
//! records are read again.

use std::sync::Arc;

use super::acks::BatchAcks;
use super::batch::Batcher;
use super::sink::Sink;
use super::source::Consumer;
use super::transaction::{self, BatchResult, KafkaTransactions};
use super::{inputs_of, PipelineConfig, Stop};
use crate::service::state::ServiceState;
use crate::transform::transform_batch_with;

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
    let batcher = Batcher::new(config.batch_limits());
    let metrics = &state.metrics;
    let give_up = || stop.requested();
    while let Some(batch) = batcher.next(consumer, give_up) {
        let model = state.store.current();
        let outcomes = transform_batch_with(
            &model,
            state.overlay(),
            &inputs_of(&batch.records),
            config.max_record_bytes,
        );
        let acks = Arc::new(BatchAcks::new(batch.records.len()));
        let (result, destinations) =
            transaction::run_batch(&txn, &config.input_topic, &batch.records, || {
                sink.send_batch(&batch.records, &outcomes, &acks, give_up)
            })?;
        let label = match result {
            BatchResult::Committed => "committed",
            BatchResult::Aborted => "aborted",
        };
        metrics.transactions.with_label_values(&[label]).inc();
        let Some(destinations) = destinations else {
            continue;
        };
        metrics.records_in.inc_by(batch.records.len() as u64);
        metrics.batch_size.observe(batch.records.len() as f64);
        // The committed transaction holds every record; its delivery reports are in or
        // arrive with librdkafka's next poll, and say nothing the commit did not.
        super::count_delivered(state, &destinations, batch.opened, &model.version);
    }
    Ok(())
}
