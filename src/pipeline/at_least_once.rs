//! At-least-once delivery, the default: score and produce batch after batch on the scoring
//! thread while the commit stage confirms and commits them in order on its own. At most
//! `in_flight.capacity()` batches are produced but uncommitted at any moment; that is what
//! a crash can repeat.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::Context;

use super::acks::BatchAcks;
use super::batch::Batcher;
use super::commit::{next_offsets, CommitStage, ProducedBatch};
use super::in_flight::InFlight;
use super::sink::Sink;
use super::source::Consumer;
use super::{PipelineConfig, Stop};
use crate::record::registry::Framing;
use crate::service::state::ServiceState;

/// How often a wait for a free in-flight slot checks whether it should give up.
const SLOT_POLL: Duration = Duration::from_millis(50);

pub fn run(
    config: &PipelineConfig,
    state: &Arc<ServiceState>,
    consumer: &Arc<Consumer>,
    sink: &Arc<Sink>,
    in_flight: &Arc<InFlight>,
    stop: &Stop,
) -> anyhow::Result<()> {
    // Opened here, on the scoring thread, where its blocking registry client lives.
    let mut framing = Framing::open(&config.format).context("schema registry")?;
    let (to_commit, produced) = mpsc::channel::<ProducedBatch>();
    let commit_failed = Arc::new(AtomicBool::new(false));
    let committer = {
        let stage = CommitStage {
            consumer: Arc::clone(consumer),
            sink: Arc::clone(sink),
            state: Arc::clone(state),
            input_topic: config.input_topic.clone(),
        };
        let failed = Arc::clone(&commit_failed);
        std::thread::Builder::new()
            .name("commit".into())
            .spawn(move || {
                let result = stage.run(produced);
                if result.is_err() {
                    failed.store(true, Ordering::Release);
                }
                result
            })
            .context("starting the commit thread")?
    };
    let give_up = || stop.requested() || commit_failed.load(Ordering::Acquire);
    let batcher = Batcher::new(config.batch_limits());
    let metrics = &state.metrics;
    let scoring = (|| {
        while let Some(batch) = batcher.next(&**consumer, give_up) {
            let model = state.store.current();
            let outcomes = state.observe.transform_framed(
                &model,
                state.overlay(),
                &batch.records,
                config.max_record_bytes,
                batch.opened,
                &mut framing,
            );
            // Not `give_up`: a shutdown still finishes the batch it holds, and the commit
            // stage keeps freeing slots until the pipeline has failed.
            let failed = || state.health.has_failed() || commit_failed.load(Ordering::Acquire);
            let Some(slot) = in_flight.acquire(SLOT_POLL, failed) else {
                break;
            };
            let acks = Arc::new(BatchAcks::new(batch.records.len()));
            let destinations = sink.send_batch(&batch.records, &outcomes, &acks, failed)?;
            state.observe.produced(batch.opened);
            metrics.records_in.inc_by(batch.records.len() as u64);
            metrics.batch_size.observe(batch.records.len() as f64);
            let produced = ProducedBatch {
                acks,
                offsets: next_offsets(&batch.records),
                destinations,
                opened: batch.opened,
                model_version: Arc::from(model.version.as_str()),
                slot,
            };
            if to_commit.send(produced).is_err() {
                break;
            }
        }
        Ok::<(), anyhow::Error>(())
    })();
    // Hanging up lets the commit stage finish what it holds and return.
    drop(to_commit);
    let committed = match committer.join() {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("the commit thread panicked")),
    };
    committed.context("a batch could not be delivered; its offsets stay uncommitted")?;
    scoring
}
