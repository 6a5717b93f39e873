//! The shadow model: a candidate scored on every batch beside the served model, off the
//! output path, to see how it would do on live traffic before it replaces the served one.
//!
//! The scoring thread copies a batch's payloads and the served model's answers into a job
//! and offers it to the shadow's own thread through a bounded channel; when the shadow falls
//! behind, the job is dropped and counted rather than waited for, so the stream's outputs
//! and their latency do not depend on the shadow. The shadow thread scores the job with the
//! candidate, compares answers record by record (agreement rate, served × shadow confusion),
//! times itself, and optionally writes its own predictions to `--shadow-topic`.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::model::{LoadedModel, ModelError};
use crate::record::SourcePosition;
use crate::stats::observe::{rfc3339_ms, Answer, Collector};
use crate::stats::tally::Tally;
use crate::transform::{transform_batch_watched, Input, Outcome};

/// Batches waiting for the shadow thread; beyond this a batch is skipped.
const QUEUE_BATCHES: usize = 4;

/// One batch for the shadow: its payloads (copied, since the consumer's buffers go back to
/// librdkafka), keys and positions, and what the served model answered.
struct Job {
    bytes: Vec<u8>,
    /// Per record, the payload's range in `bytes` (none: no payload), and its key's.
    payloads: Vec<Option<(usize, usize)>>,
    keys: Vec<Option<(usize, usize)>>,
    positions: Vec<SourcePosition>,
    served: Vec<Option<Answer>>,
    served_classes: Arc<[String]>,
    max_record_bytes: usize,
}

/// What the shadow has done since it was loaded.
#[derive(Default)]
struct Figures {
    batches: u64,
    records: u64,
    /// Records both models scored.
    compared: u64,
    agreed: u64,
    /// Records the served model scored and the shadow refused.
    shadow_refused: u64,
    /// Records the shadow scored and the served model refused.
    served_refused: u64,
    /// (served answer, shadow answer) → records.
    confusion: BTreeMap<(String, String), u64>,
    dropped_batches: u64,
    dropped_records: u64,
    produce_errors: u64,
    latency: Tally,
}

struct Running {
    model: Arc<LoadedModel>,
    jobs: SyncSender<Job>,
    figures: Arc<Mutex<Figures>>,
}

/// Where the shadow's predictions go, when `--shadow-topic` is set.
#[derive(Clone)]
pub struct ShadowOutput {
    pub producer: ClientConfig,
    pub topic: String,
}

/// The shadow's Prometheus series (registered with the service's other metrics).
#[derive(Clone)]
pub struct ShadowCounters {
    pub records: prometheus::IntCounterVec,
    pub dropped: prometheus::IntCounter,
    pub seconds: prometheus::Histogram,
}

pub struct Shadow {
    running: Mutex<Option<Running>>,
    output: Mutex<Option<ShadowOutput>>,
    active: std::sync::atomic::AtomicBool,
    counters: ShadowCounters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shadow {
    pub fn new(counters: ShadowCounters) -> Self {
        Self {
            running: Mutex::new(None),
            output: Mutex::new(None),
            active: std::sync::atomic::AtomicBool::new(false),
            counters,
        }
    }

    pub fn set_output(&self, output: Option<ShadowOutput>) {
        *lock(&self.output) = output;
    }

    /// A cheap check for the scoring thread: is there a shadow to feed?
    pub fn is_active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn model(&self) -> Option<Arc<LoadedModel>> {
        lock(&self.running).as_ref().map(|r| Arc::clone(&r.model))
    }

    /// Starts shadowing with `model` (replacing any shadow running).
    pub fn start(&self, model: Arc<LoadedModel>) -> Result<(), ModelError> {
        let (jobs, queue) = sync_channel(QUEUE_BATCHES);
        let figures = Arc::new(Mutex::new(Figures::default()));
        let output = match lock(&self.output).clone() {
            None => None,
            Some(out) => match out
                .producer
                .create::<ThreadedProducer<DefaultProducerContext>>()
            {
                Ok(p) => Some((p, out.topic)),
                Err(e) => {
                    return Err(ModelError::Invalid(format!(
                        "cannot create the shadow topic's producer: {e}"
                    )))
                }
            },
        };
        let worker = Worker {
            model: Arc::clone(&model),
            figures: Arc::clone(&figures),
            output,
            counters: self.counters.clone(),
        };
        std::thread::Builder::new()
            .name("shadow".into())
            .spawn(move || worker.run(queue))
            .map_err(|e| ModelError::Invalid(format!("cannot start the shadow thread: {e}")))?;
        info!(version = %model.version, "shadow model started");
        // Dropping the old sender ends the old thread once it has drained its queue.
        *lock(&self.running) = Some(Running {
            model,
            jobs,
            figures,
        });
        self.active
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Stops shadowing; returns the model that was the shadow.
    pub fn stop(&self) -> Option<Arc<LoadedModel>> {
        self.active
            .store(false, std::sync::atomic::Ordering::Release);
        lock(&self.running).take().map(|r| r.model)
    }

    /// Offers a batch to the shadow; never waits. Called on the scoring thread.
    pub fn offer<M: Message>(
        &self,
        records: &[M],
        served: Vec<Option<Answer>>,
        served_model: &LoadedModel,
        max_record_bytes: usize,
    ) {
        let running = lock(&self.running);
        let Some(running) = running.as_ref() else {
            return;
        };
        let total: usize = records
            .iter()
            .map(|r| r.payload().map_or(0, <[u8]>::len) + r.key().map_or(0, <[u8]>::len))
            .sum();
        let mut bytes = Vec::with_capacity(total);
        let mut copy = |part: Option<&[u8]>| {
            part.map(|p| {
                let start = bytes.len();
                bytes.extend_from_slice(p);
                (start, bytes.len())
            })
        };
        let payloads: Vec<_> = records.iter().map(|r| copy(r.payload())).collect();
        let keys: Vec<_> = records.iter().map(|r| copy(r.key())).collect();
        let job = Job {
            bytes,
            payloads,
            keys,
            positions: records
                .iter()
                .map(|r| SourcePosition {
                    partition: r.partition(),
                    offset: r.offset(),
                })
                .collect(),
            served,
            served_classes: served_model.meta.classes.clone().into(),
            max_record_bytes,
        };
        let n = records.len() as u64;
        match running.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.inc_by(n);
                let mut f = lock(&running.figures);
                f.dropped_batches += 1;
                f.dropped_records += n;
            }
        }
    }

    /// The shadow's part of `/status` (null when there is none).
    pub fn status(&self) -> Value {
        let running = lock(&self.running);
        let Some(running) = running.as_ref() else {
            return Value::Null;
        };
        let f = lock(&running.figures);
        let confusion: Vec<Value> = f
            .confusion
            .iter()
            .map(|((served, shadow), n)| json!({"served": served, "shadow": shadow, "records": n}))
            .collect();
        json!({
            "version": running.model.version,
            "kind": running.model.kind(),
            "loaded_at": rfc3339_ms(running.model.loaded_at_ms),
            "batches": f.batches,
            "records": f.records,
            "compared": f.compared,
            "agreed": f.agreed,
            "agreement": (f.compared > 0).then(|| f.agreed as f64 / f.compared as f64),
            "shadow_refused": f.shadow_refused,
            "served_refused": f.served_refused,
            "confusion": confusion,
            "dropped_batches": f.dropped_batches,
            "dropped_records": f.dropped_records,
            "produce_errors": f.produce_errors,
            "latency_p50_ms": f.latency.latency_quantile_ms(0.5),
            "latency_p99_ms": f.latency.latency_quantile_ms(0.99),
        })
    }
}

struct Worker {
    model: Arc<LoadedModel>,
    figures: Arc<Mutex<Figures>>,
    output: Option<(ThreadedProducer<DefaultProducerContext>, String)>,
    counters: ShadowCounters,
}

impl Worker {
    fn run(self, queue: Receiver<Job>) {
        while let Ok(job) = queue.recv() {
            self.score(&job);
        }
        if let Some((producer, _)) = &self.output {
            let _ = producer.flush(std::time::Duration::from_secs(5));
        }
    }

    fn score(&self, job: &Job) {
        let slice = |range: &Option<(usize, usize)>| range.map(|(a, b)| &job.bytes[a..b]);
        let inputs: Vec<Input<'_>> = job
            .payloads
            .iter()
            .zip(&job.positions)
            .map(|(p, source)| Input {
                payload: slice(p),
                source: *source,
            })
            .collect();
        let started = Instant::now();
        let mut collector = Collector::new(&self.model, false);
        let outcomes = transform_batch_watched(
            &self.model,
            None,
            &inputs,
            job.max_record_bytes,
            &mut collector,
        );
        let took_ms = started.elapsed().as_secs_f64() * 1e3;
        let answers = collector.answers_per_input(&outcomes);
        let mut produce_errors = 0;
        if let Some((producer, topic)) = &self.output {
            for (outcome, key) in outcomes.iter().zip(&job.keys) {
                let Outcome::Scored(value) = outcome else {
                    continue;
                };
                let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(value.as_slice());
                if let Some(key) = slice(key) {
                    record = record.key(key);
                }
                if producer.send(record).is_err() {
                    produce_errors += 1;
                }
            }
        }
        self.counters.seconds.observe(took_ms / 1e3);
        let count = |result: &str| self.counters.records.with_label_values(&[result]).inc();
        let mut f = lock(&self.figures);
        f.batches += 1;
        f.records += job.payloads.len() as u64;
        f.produce_errors += produce_errors;
        f.latency.add_latency(took_ms, 1);
        for (served, shadow) in job.served.iter().zip(&answers) {
            match (served, shadow) {
                (Some(a), Some(b)) => {
                    f.compared += 1;
                    if a.agrees(b) {
                        f.agreed += 1;
                        count("agreed");
                    } else {
                        count("disagreed");
                    }
                    let key = (
                        name(a, &job.served_classes),
                        name(b, &self.model.meta.classes),
                    );
                    *f.confusion.entry(key).or_default() += 1;
                }
                (Some(_), None) => {
                    f.shadow_refused += 1;
                    count("shadow_refused");
                }
                (None, Some(_)) => {
                    f.served_refused += 1;
                    count("served_refused");
                }
                (None, None) => {}
            }
        }
        if produce_errors > 0 {
            warn!(
                records = produce_errors,
                "shadow predictions not produced (queue full or topic refused)"
            );
        }
    }
}

/// A readable name for an answer in the confusion table: the class, the item, or
/// "value" for regressions (whose agreement is numeric).
fn name(answer: &Answer, classes: &[String]) -> String {
    match answer {
        Answer::Class(i) => classes
            .get(*i as usize)
            .cloned()
            .unwrap_or_else(|| i.to_string()),
        Answer::Item(Some(item)) => format!("item {item}"),
        Answer::Item(None) => "no items".into(),
        Answer::Value(_) => "value".into(),
    }
}
