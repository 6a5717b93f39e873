//! The observer: what the delivery loops tell it once per batch, and the figures it keeps
//! for the status page, the windows and the shadow model.
//!
//! The scoring thread pays for it once per record (a label count, a few probability sums,
//! one binary search per input feature for drift) and once per batch (one lock to fold the
//! batch into its window pane). Windows close on the emitter's thread, not here.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rdkafka::message::Message;
use serde_json::{json, Value};

use super::tally::Tally;
use super::window::{Closed, TimeBasis, Windows};
use super::{now_ms, StatsConfig};
use crate::metrics::ObserveMetrics;
use crate::model::LoadedModel;
use crate::online::Overlay;
use crate::record::registry::Framing;
use crate::record::{Reason, SourcePosition};
use crate::shadow::{Shadow, ShadowCounters};
use crate::transform::{transform_batch_watched, Input, Outcome, Watch};
use prometheus::{Histogram, IntCounter};

/// Seconds of input and processing rate the status page charts.
pub const RATE_SECONDS: usize = 300;
/// Batches whose timing the status page shows.
pub const RECENT_BATCHES: usize = 60;
/// Items listed for a recommender's window.
pub const TOP_ITEMS: usize = 10;
/// Batches produced but not yet committed whose timing is kept: the in-flight limit, with
/// room for a commit stage that answers late.
const PENDING_BATCHES: usize = 16;

/// One scored record's answer, compared between the served and the shadow model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    Class(u32),
    /// A recommender's first item (none: an empty list).
    Item(Option<i64>),
    Value(f64),
}

impl Answer {
    /// Whether two models agree: the same class or first item, or values within 1e-9
    /// relative.
    pub fn agrees(&self, other: &Answer) -> bool {
        match (self, other) {
            (Answer::Value(a), Answer::Value(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
            _ => self == other,
        }
    }
}

/// Collects what `transform_batch_watched` saw, in the order it saw it.
#[derive(Default)]
pub struct Collector<'m> {
    edges: Vec<&'m [f64]>,
    classes: usize,
    /// Per decoded row, the bin of each feature (`u8::MAX`: missing).
    bins: Vec<u8>,
    answers: Vec<Answer>,
    /// Per classified record, its probabilities (`classes` wide).
    probabilities: Vec<f64>,
    /// Per recommended record, its items, with `item_ends` closing each record's run.
    items: Vec<i64>,
    item_ends: Vec<usize>,
    pub decoded_at: Option<Instant>,
}

impl<'m> Collector<'m> {
    pub fn new(model: &'m LoadedModel, drift: bool) -> Self {
        let edges = match (&model.reference, drift) {
            (Some(reference), true) => reference
                .features
                .iter()
                .map(|f| f.edges.as_slice())
                .collect(),
            _ => Vec::new(),
        };
        Self {
            edges,
            classes: model.meta.classes.len(),
            ..Self::default()
        }
    }

    /// One answer per input (none: rejected), in input order.
    pub fn answers_per_input(&self, outcomes: &[Outcome]) -> Vec<Option<Answer>> {
        let mut answers = self.answers.iter();
        outcomes
            .iter()
            .map(|o| match o {
                Outcome::Scored(_) => answers.next().copied(),
                Outcome::Rejected(_) => None,
            })
            .collect()
    }
}

impl Watch for Collector<'_> {
    fn rows(&mut self, features: &[f64], width: usize) {
        if self.edges.is_empty() || self.edges.len() != width {
            return;
        }
        self.bins.reserve(features.len());
        for row in features.chunks_exact(width) {
            for (x, edges) in row.iter().zip(&self.edges) {
                self.bins.push(if x.is_nan() {
                    u8::MAX
                } else {
                    super::drift::bin(edges, *x) as u8
                });
            }
        }
    }

    fn decoded(&mut self) {
        self.decoded_at = Some(Instant::now());
    }

    fn class<P: Copy + Into<f64>>(&mut self, label: usize, probabilities: &[P]) {
        self.answers.push(Answer::Class(label as u32));
        // Exactly `classes` values per record, so that record k's are at k × classes.
        let start = self.probabilities.len();
        self.probabilities
            .extend(probabilities.iter().take(self.classes).map(|p| (*p).into()));
        self.probabilities.resize(start + self.classes, 0.0);
    }

    fn value(&mut self, prediction: f64) {
        self.answers.push(Answer::Value(prediction));
    }

    fn items(&mut self, items: &mut dyn Iterator<Item = i64>) {
        let start = self.items.len();
        self.items.extend(items);
        self.item_ends.push(self.items.len());
        let first = self.items.get(start).copied();
        self.answers.push(Answer::Item(first));
    }
}

/// Timing of one batch, phase by phase, in milliseconds.
#[derive(Debug, Clone, Default)]
struct BatchTiming {
    opened: Option<Instant>,
    at_ms: i64,
    records: usize,
    poll_ms: f64,
    decode_ms: f64,
    score_ms: f64,
    produce_ms: f64,
    commit_ms: f64,
    scheduling_delay_ms: f64,
    scored_at: Option<Instant>,
}

/// Per-second counts over the last `RATE_SECONDS`.
struct Rates {
    second: Vec<i64>,
    input: Vec<u64>,
    processed: Vec<u64>,
}

impl Rates {
    fn new() -> Self {
        Self {
            second: vec![-1; RATE_SECONDS],
            input: vec![0; RATE_SECONDS],
            processed: vec![0; RATE_SECONDS],
        }
    }

    fn slot(&mut self, second: i64) -> usize {
        let i = second.rem_euclid(RATE_SECONDS as i64) as usize;
        if self.second[i] != second {
            self.second[i] = second;
            self.input[i] = 0;
            self.processed[i] = 0;
        }
        i
    }

    /// Oldest first, ending with the last full second.
    fn series(&self, now_s: i64) -> Vec<Value> {
        (now_s - RATE_SECONDS as i64..now_s)
            .map(|s| {
                let i = s.rem_euclid(RATE_SECONDS as i64) as usize;
                let (input, processed) = if self.second[i] == s {
                    (self.input[i], self.processed[i])
                } else {
                    (0, 0)
                };
                json!([s, input, processed])
            })
            .collect()
    }
}

#[derive(Debug, Clone, Default)]
struct VersionCount {
    records: u64,
    first_ms: i64,
    last_ms: i64,
}

struct Inner {
    windows: Windows<Tally>,
    /// The last windows emitted, newest last, as JSON.
    closed: VecDeque<Value>,
    totals: Tally,
    rates: Rates,
    pending: VecDeque<BatchTiming>,
    recent: VecDeque<BatchTiming>,
    versions: BTreeMap<String, VersionCount>,
    /// Per input partition, the timestamp of the last record consumed.
    last_timestamp: BTreeMap<i32, i64>,
    /// Classes of the model that scored last, to name label indices.
    classes: Vec<String>,
    reference: Option<Arc<crate::stats::drift::Reference>>,
}

/// What the status page says about the pipeline besides its figures.
#[derive(Debug, Clone, Default)]
pub struct About {
    pub guarantee: String,
    pub group: String,
    pub input_topic: String,
    pub output_topic: String,
    pub dead_letter_topic: String,
}

pub struct Observer {
    pub config: StatsConfig,
    pub about: About,
    pub started_ms: i64,
    inner: Mutex<Inner>,
    pub shadow: Shadow,
    pub metrics: ObserveMetrics,
    consumed: IntCounter,
    process: Histogram,
    sent_outputs: IntCounter,
    sent_dead_letters: IntCounter,
}

/// PSI per input feature (none: no inputs in the window).
pub type Drift = Vec<(String, Option<f64>)>;

/// Windows kept in `/status`.
const CLOSED_KEPT: usize = 30;

impl Observer {
    pub fn new(config: StatsConfig, about: About, metrics: ObserveMetrics) -> Self {
        let windows = Windows::new(config.window, config.basis, None);
        let group = [
            "kafka",
            about.input_topic.as_str(),
            about.group.as_str(),
            "process",
        ];
        let consumed = metrics.consumed_messages.with_label_values(&[
            "kafka",
            &about.input_topic,
            &about.group,
            "poll",
        ]);
        let process = metrics.process_duration.with_label_values(&group);
        let sent_outputs =
            metrics
                .sent_messages
                .with_label_values(&["kafka", &about.output_topic, "send"]);
        let sent_dead_letters =
            metrics
                .sent_messages
                .with_label_values(&["kafka", &about.dead_letter_topic, "send"]);
        let shadow = Shadow::new(ShadowCounters {
            records: metrics.shadow_records.clone(),
            dropped: metrics.shadow_dropped_records.clone(),
            seconds: metrics.shadow_batch_seconds.clone(),
        });
        Self {
            config,
            about,
            started_ms: now_ms(),
            inner: Mutex::new(Inner {
                windows,
                closed: VecDeque::new(),
                totals: Tally::default(),
                rates: Rates::new(),
                pending: VecDeque::new(),
                recent: VecDeque::new(),
                versions: BTreeMap::new(),
                last_timestamp: BTreeMap::new(),
                classes: Vec::new(),
                reference: None,
            }),
            shadow,
            metrics,
            consumed,
            process,
            sent_outputs,
            sent_dead_letters,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts emission after `end_ms`, the end of the last window a previous run emitted.
    pub fn resume_after(&self, end_ms: i64) {
        self.lock().windows.resume_after(end_ms);
    }

    /// The delivery loops' hook: scores the batch (as `transform_batch`) and records what
    /// went through. `opened` is when the batch's first record arrived.
    pub fn transform<M: Message>(
        &self,
        model: &Arc<LoadedModel>,
        overlay: Option<&Overlay>,
        records: &[M],
        max_record_bytes: usize,
        opened: Instant,
    ) -> Vec<Outcome> {
        self.transform_framed(
            model,
            overlay,
            records,
            max_record_bytes,
            opened,
            &mut Framing::json(),
        )
    }

    /// `transform` for values framed by a Schema Registry format (`record::registry`).
    pub fn transform_framed<M: Message>(
        &self,
        model: &Arc<LoadedModel>,
        overlay: Option<&Overlay>,
        records: &[M],
        max_record_bytes: usize,
        opened: Instant,
        framing: &mut Framing,
    ) -> Vec<Outcome> {
        let mut outcomes =
            self.transform_json(model, overlay, records, max_record_bytes, opened, framing);
        framing.encode_outputs(&mut outcomes);
        outcomes
    }

    fn transform_json<M: Message>(
        &self,
        model: &Arc<LoadedModel>,
        overlay: Option<&Overlay>,
        records: &[M],
        max_record_bytes: usize,
        opened: Instant,
        framing: &mut Framing,
    ) -> Vec<Outcome> {
        let started = Instant::now();
        // Registry input: each record as JSON, or its rejection (then scored as absent and
        // its outcome replaced below, before anything is counted).
        let framed = framing.decode_all(records.iter().map(|r| r.payload()), max_record_bytes);
        let inputs: Vec<Input<'_>> = records
            .iter()
            .enumerate()
            .map(|(i, r)| Input {
                payload: match framed.get(i) {
                    None => r.payload(),
                    Some(Ok(json)) => Some(json.as_slice()),
                    Some(Err(_)) => None,
                },
                source: SourcePosition {
                    partition: r.partition(),
                    offset: r.offset(),
                },
            })
            .collect();
        // The size limit applied to the framed bytes; their JSON may be larger.
        let max_record_bytes = if framed.is_empty() {
            max_record_bytes
        } else {
            usize::MAX
        };
        let shadowed = self.shadow.is_active();
        if !self.config.enabled && !shadowed {
            let mut outcomes =
                crate::transform::transform_batch_with(model, overlay, &inputs, max_record_bytes);
            Framing::reject_inputs(framed, &mut outcomes);
            let scored_at = Instant::now();
            self.consumed.inc_by(records.len() as u64);
            self.process
                .observe(scored_at.duration_since(started).as_secs_f64());
            self.fold_batch_only(model, records.len(), &outcomes, opened, started, scored_at);
            return outcomes;
        }
        let mut collector = Collector::new(model, self.config.enabled);
        let mut outcomes =
            transform_batch_watched(model, overlay, &inputs, max_record_bytes, &mut collector);
        Framing::reject_inputs(framed, &mut outcomes);
        let scored_at = Instant::now();
        self.consumed.inc_by(records.len() as u64);
        self.process
            .observe(scored_at.duration_since(started).as_secs_f64());
        let now = now_ms();
        let served = self
            .shadow
            .is_active()
            .then(|| collector.answers_per_input(&outcomes));
        self.fold(
            model, records, &outcomes, &collector, now, opened, started, scored_at,
        );
        if let Some(served) = served {
            self.shadow.offer(records, served, model, max_record_bytes);
        }
        outcomes
    }

    /// With statistics off: the per-batch figures of the status page only (rates, timing,
    /// records per model version), nothing per record.
    fn fold_batch_only(
        &self,
        model: &LoadedModel,
        records: usize,
        outcomes: &[Outcome],
        opened: Instant,
        started: Instant,
        scored_at: Instant,
    ) {
        let now = now_ms();
        let scored = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Scored(_)))
            .count() as u64;
        let timing = BatchTiming {
            opened: Some(opened),
            at_ms: now,
            records,
            poll_ms: ms(started.duration_since(opened)),
            score_ms: ms(scored_at.duration_since(started)),
            scored_at: Some(scored_at),
            ..BatchTiming::default()
        };
        let mut inner = self.lock();
        let slot = inner.rates.slot(now.div_euclid(1000));
        inner.rates.input[slot] += records as u64;
        let version = inner.versions.entry(model.version.clone()).or_default();
        if version.records == 0 {
            version.first_ms = now;
        }
        version.records += scored;
        version.last_ms = now;
        if inner.pending.len() >= PENDING_BATCHES {
            inner.pending.pop_front();
        }
        inner.pending.push_back(timing);
    }

    #[allow(clippy::too_many_arguments)]
    fn fold<M: Message>(
        &self,
        model: &Arc<LoadedModel>,
        records: &[M],
        outcomes: &[Outcome],
        collector: &Collector<'_>,
        now: i64,
        opened: Instant,
        started: Instant,
        scored_at: Instant,
    ) {
        let classes = model.meta.classes.len();
        let features = collector.edges.len();
        let event_time = matches!(self.config.basis, TimeBasis::Event { .. });
        let slide = self.config.window.slide_ms;
        let latency_ms = scored_at.duration_since(opened).as_secs_f64() * 1e3;
        // Timestamps: the batch's first record (scheduling delay) and each partition's last
        // (lag in seconds): one read per partition, not per record, unless the windows run
        // on event time.
        let first_timestamp = records
            .first()
            .and_then(|r| r.timestamp().to_millis())
            .unwrap_or(i64::MAX);
        let mut last_timestamp: Vec<(i32, Option<i64>)> = Vec::new();
        for r in records.iter().rev() {
            let p = r.partition();
            if !last_timestamp.iter().any(|(q, _)| *q == p) {
                last_timestamp.push((p, r.timestamp().to_millis()));
            }
        }
        // Per pane, this batch's tally: one pane in processing time, a few in event time.
        let mut panes: Vec<(i64, Tally)> = Vec::with_capacity(1);
        let (mut answer, mut row, mut items) = (0usize, 0usize, 0usize);
        for (record, outcome) in records.iter().zip(outcomes) {
            let at = if event_time {
                record.timestamp().to_millis().unwrap_or(now)
            } else {
                now
            };
            // One tally per pane (slide), not per distinct timestamp.
            let at = at.div_euclid(slide) * slide;
            let i = match panes.iter().rposition(|(t, _)| *t == at) {
                Some(i) => i,
                None => {
                    panes.push((at, new_tally(classes, collector)));
                    panes.len() - 1
                }
            };
            let tally = &mut panes[i].1;
            tally.records_in += 1;
            let decoded = match outcome {
                Outcome::Scored(_) => true,
                Outcome::Rejected(r) => {
                    tally.dead_letters[r.reason as usize] += 1;
                    r.reason == Reason::NoPrediction
                }
            };
            if decoded && features > 0 {
                if let Some(bins) = collector.bins.get(row * features..(row + 1) * features) {
                    for (counts, b) in tally.bins.iter_mut().zip(bins) {
                        if let Some(count) = counts.get_mut(*b as usize) {
                            *count += 1;
                        }
                    }
                }
                row += 1;
            }
            if !matches!(outcome, Outcome::Scored(_)) {
                continue;
            }
            tally.scored += 1;
            match collector.answers.get(answer) {
                Some(Answer::Class(label)) => {
                    if let Some(n) = tally.labels.get_mut(*label as usize) {
                        *n += 1;
                    }
                    let probs = collector
                        .probabilities
                        .get(answer * classes..(answer + 1) * classes)
                        .unwrap_or_default();
                    for (sum, p) in tally.probability_sums.iter_mut().zip(probs) {
                        *sum += p;
                    }
                }
                Some(Answer::Item(_)) => {
                    let start = items.checked_sub(1).map_or(0, |i| collector.item_ends[i]);
                    let end = collector.item_ends.get(items).copied().unwrap_or(start);
                    for item in collector.items.get(start..end).unwrap_or_default() {
                        *tally.items.entry(*item).or_default() += 1;
                    }
                    items += 1;
                }
                Some(Answer::Value(v)) => tally.value_sum += v,
                None => {}
            }
            answer += 1;
        }
        // Every record of a batch waited as long: one histogram update per pane.
        for (_, tally) in &mut panes {
            let scored = tally.scored;
            tally.add_latency(latency_ms, scored);
        }
        let decode_end = collector.decoded_at.unwrap_or(started);
        let timing = BatchTiming {
            opened: Some(opened),
            at_ms: now,
            records: records.len(),
            poll_ms: ms(started.duration_since(opened)),
            decode_ms: ms(decode_end.duration_since(started)),
            score_ms: ms(scored_at.duration_since(decode_end)),
            scheduling_delay_ms: if first_timestamp == i64::MAX {
                0.0
            } else {
                let opened_ms = now - opened.elapsed().as_millis() as i64;
                (opened_ms - first_timestamp).max(0) as f64
            },
            scored_at: Some(scored_at),
            ..BatchTiming::default()
        };

        let mut inner = self.lock();
        if inner.classes != model.meta.classes {
            inner.classes = model.meta.classes.clone();
        }
        let reference_changed = match (&inner.reference, &model.reference) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (None, None) => false,
            _ => true,
        };
        if reference_changed {
            inner.reference = model.reference.clone();
        }
        for (at, tally) in &panes {
            super::window::Aggregate::merge(&mut inner.totals, tally);
            let n = tally.records_in;
            if let Some(pane) = inner.windows.pane(*at, now, n) {
                super::window::Aggregate::merge(pane, tally);
            }
        }
        let slot = inner.rates.slot(now.div_euclid(1000));
        inner.rates.input[slot] += records.len() as u64;
        let scored: u64 = panes.iter().map(|(_, t)| t.scored).sum();
        let version = inner.versions.entry(model.version.clone()).or_default();
        if version.records == 0 {
            version.first_ms = now;
        }
        version.records += scored;
        version.last_ms = now;
        for (p, ts) in last_timestamp {
            if let Some(ts) = ts {
                let last = inner.last_timestamp.entry(p).or_insert(ts);
                *last = (*last).max(ts);
            }
        }
        if inner.pending.len() >= PENDING_BATCHES {
            inner.pending.pop_front();
        }
        inner.pending.push_back(timing);
    }

    /// The batch that opened at `opened` has been handed to the producer.
    pub fn produced(&self, opened: Instant) {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(t) = inner.pending.iter_mut().find(|t| t.opened == Some(opened)) {
            t.produce_ms = t.scored_at.map_or(0.0, |s| ms(now.duration_since(s)));
            t.scored_at = Some(now);
        }
    }

    /// The batch that opened at `opened` is acknowledged and committed: `outputs`
    /// predictions and `dead_letters` dead letters.
    pub fn delivered(&self, opened: Instant, outputs: u64, dead_letters: u64) {
        self.sent_outputs.inc_by(outputs);
        self.sent_dead_letters.inc_by(dead_letters);
        let records = outputs + dead_letters;
        let now = Instant::now();
        let mut inner = self.lock();
        let slot = inner.rates.slot(now_ms().div_euclid(1000));
        inner.rates.processed[slot] += records;
        if let Some(i) = inner.pending.iter().position(|t| t.opened == Some(opened)) {
            if let Some(mut t) = inner.pending.remove(i) {
                t.commit_ms = t.scored_at.map_or(0.0, |s| ms(now.duration_since(s)));
                if inner.recent.len() >= RECENT_BATCHES {
                    inner.recent.pop_front();
                }
                inner.recent.push_back(t);
            }
        }
    }

    /// Closes every window the watermark has passed; returns them as JSON records, oldest
    /// first, and keeps them for `/status`.
    pub fn close_windows(&self, now: i64) -> Vec<(Value, Drift)> {
        let mut inner = self.lock();
        let closed = inner.windows.close(now);
        let mut out = Vec::with_capacity(closed.len());
        for window in closed {
            let drift = inner
                .reference
                .as_deref()
                .map(|r| window.value.drift(r))
                .unwrap_or_default();
            let doc = self.window_json(&inner, &window, true);
            if inner.closed.len() >= CLOSED_KEPT {
                inner.closed.pop_front();
            }
            inner.closed.push_back(doc.clone());
            out.push((doc, drift));
        }
        out
    }

    fn window_json(&self, inner: &Inner, window: &Closed<Tally>, closed: bool) -> Value {
        let mut doc = window.value.to_json(
            &inner.classes,
            inner.reference.as_deref(),
            self.config.drift_threshold,
            TOP_ITEMS,
        );
        let extra = json!({
            "instance": self.config.instance,
            "window_start": rfc3339_ms(window.start_ms),
            "window_end": rfc3339_ms(window.end_ms),
            "window_start_ms": window.start_ms,
            "window_end_ms": window.end_ms,
            "time": match self.config.basis {
                TimeBasis::Processing => "processing",
                TimeBasis::Event { .. } => "event",
            },
            "closed": closed,
            // A processing-time window that began before this process did misses the
            // records scored before the start.
            "complete": window.start_ms >= self.started_ms
                || matches!(self.config.basis, TimeBasis::Event { .. }),
            "late_records": window.late_records,
        });
        if let (Some(doc), Value::Object(extra)) = (doc.as_object_mut(), extra) {
            doc.extend(extra);
        }
        doc
    }

    /// The observer's part of `/status`.
    pub fn status(&self, lag: &[(i32, i64)]) -> Value {
        let now = now_ms();
        let inner = self.lock();
        let current = inner
            .windows
            .current(now)
            .map(|w| self.window_json(&inner, &w, false));
        let batches: Vec<Value> = inner
            .recent
            .iter()
            .map(|t| {
                json!({
                    "at_ms": t.at_ms,
                    "records": t.records,
                    "poll_ms": t.poll_ms,
                    "decode_ms": t.decode_ms,
                    "score_ms": t.score_ms,
                    "produce_ms": t.produce_ms,
                    "commit_ms": t.commit_ms,
                    "scheduling_delay_ms": t.scheduling_delay_ms,
                })
            })
            .collect();
        let versions: Vec<Value> = inner
            .versions
            .iter()
            .map(|(v, c)| {
                json!({
                    "version": v,
                    "records": c.records,
                    "first_seen": rfc3339_ms(c.first_ms),
                    "last_seen": rfc3339_ms(c.last_ms),
                })
            })
            .collect();
        let lag: Vec<Value> = lag
            .iter()
            .map(|(p, records)| {
                let seconds = match inner.last_timestamp.get(p) {
                    Some(ts) if *records > 0 => ((now - ts).max(0) as f64) / 1e3,
                    _ => 0.0,
                };
                json!({"partition": p, "records": records, "seconds": seconds})
            })
            .collect();
        let totals = inner.totals.to_json(
            &inner.classes,
            inner.reference.as_deref(),
            self.config.drift_threshold,
            TOP_ITEMS,
        );
        json!({
            "now_ms": now,
            "started_ms": self.started_ms,
            "rates": {
                "seconds": RATE_SECONDS,
                "series": inner.rates.series(now.div_euclid(1000)),
            },
            "batches": batches,
            "versions": versions,
            "lag": lag,
            "totals": totals,
            "window": {
                "length_ms": self.config.window.length_ms,
                "slide_ms": self.config.window.slide_ms,
                "time": match self.config.basis {
                    TimeBasis::Processing => "processing".to_owned(),
                    TimeBasis::Event { lateness_ms } => format!("event (lateness {lateness_ms} ms)"),
                },
                "topic": self.config.topic,
                "drift_threshold": self.config.drift_threshold,
                "current": current,
                "last": inner.closed.back(),
                "emitted": inner.closed.iter().rev().take(6).collect::<Vec<_>>(),
            },
            "drift_reference": inner.reference.is_some(),
        })
    }
}

fn new_tally(classes: usize, collector: &Collector<'_>) -> Tally {
    Tally {
        labels: vec![0; classes],
        probability_sums: vec![0.0; classes],
        bins: collector
            .edges
            .iter()
            .map(|e| vec![0; e.len() + 1])
            .collect(),
        ..Tally::default()
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `2026-12-06T01:02:03.456Z`, without pulling in a date crate for one format.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_764_982_923_456), "2025-12-06T01:02:03.456Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
