//! What one pane (and so one window) of the prediction stream counts. Everything merges by
//! addition, so a window is its panes summed.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::drift::{psi, Reference};
use super::window::Aggregate;
use crate::record::Reason;

/// Latency histogram buckets: bucket `i` holds latencies up to `0.1 ms × 1.25^i`, which
/// spans 0.1 ms to about 20 minutes with a quantile error under 25 %.
pub const LATENCY_BUCKETS: usize = 64;
const LATENCY_BASE_MS: f64 = 0.1;
const LATENCY_GROWTH: f64 = 1.25;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub records_in: u64,
    pub scored: u64,
    /// Classifier: predictions per class index.
    pub labels: Vec<u64>,
    /// Classifier: the sum of each class's probability over the scored records.
    pub probability_sums: Vec<f64>,
    /// Recommender: how often each item was recommended.
    pub items: HashMap<i64, u64>,
    /// Regression: the sum of predictions.
    pub value_sum: f64,
    pub dead_letters: [u64; Reason::ALL.len()],
    pub latency: Vec<u64>,
    /// Per input feature, decoded values per reference bin.
    pub bins: Vec<Vec<u64>>,
}

fn add_into<T: Copy + std::ops::AddAssign + Default>(into: &mut Vec<T>, from: &[T]) {
    if into.len() < from.len() {
        into.resize(from.len(), T::default());
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += *b;
    }
}

impl Aggregate for Tally {
    fn merge(&mut self, other: &Self) {
        self.records_in += other.records_in;
        self.scored += other.scored;
        add_into(&mut self.labels, &other.labels);
        add_into(&mut self.probability_sums, &other.probability_sums);
        for (item, n) in &other.items {
            *self.items.entry(*item).or_default() += n;
        }
        self.value_sum += other.value_sum;
        for (a, b) in self.dead_letters.iter_mut().zip(&other.dead_letters) {
            *a += b;
        }
        add_into(&mut self.latency, &other.latency);
        if self.bins.len() < other.bins.len() {
            self.bins.resize(other.bins.len(), Vec::new());
        }
        for (a, b) in self.bins.iter_mut().zip(&other.bins) {
            add_into(a, b);
        }
    }
}

pub fn latency_bucket(ms: f64) -> usize {
    if ms <= LATENCY_BASE_MS {
        return 0;
    }
    ((ms / LATENCY_BASE_MS).ln() / LATENCY_GROWTH.ln()).ceil() as usize
}

fn bucket_upper_ms(i: usize) -> f64 {
    LATENCY_BASE_MS * LATENCY_GROWTH.powi(i as i32)
}

impl Tally {
    pub fn add_latency(&mut self, ms: f64, n: u64) {
        let i = latency_bucket(ms).min(LATENCY_BUCKETS - 1);
        if self.latency.len() <= i {
            self.latency.resize(LATENCY_BUCKETS, 0);
        }
        self.latency[i] += n;
    }

    /// The `q` quantile of latency (the upper bound of its bucket), or `None` when empty.
    pub fn latency_quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper_ms(i));
            }
        }
        None
    }

    pub fn dead_letter_total(&self) -> u64 {
        self.dead_letters.iter().sum()
    }

    /// PSI per feature against `reference`, where the window has decoded values.
    pub fn drift(&self, reference: &Reference) -> Vec<(String, Option<f64>)> {
        reference
            .features
            .iter()
            .enumerate()
            .map(|(j, f)| {
                let observed = self.bins.get(j).map_or(&[][..], Vec::as_slice);
                let observed: Vec<u64> = (0..f.counts.len())
                    .map(|b| observed.get(b).copied().unwrap_or(0))
                    .collect();
                (f.feature.clone(), psi(&f.counts, &observed))
            })
            .collect()
    }

    /// The window's JSON figures (without its bounds): what the stats topic and `/status`
    /// carry. `classes` names label indices; `top` bounds the recommender's item list.
    pub fn to_json(
        &self,
        classes: &[String],
        reference: Option<&Reference>,
        threshold: f64,
        top: usize,
    ) -> Value {
        let mut predictions = serde_json::Map::new();
        let mut mean_probability = serde_json::Map::new();
        for (i, class) in classes.iter().enumerate() {
            predictions.insert(
                class.clone(),
                json!(self.labels.get(i).copied().unwrap_or(0)),
            );
            let mean = match self.scored {
                0 => None,
                n => Some(self.probability_sums.get(i).copied().unwrap_or(0.0) / n as f64),
            };
            mean_probability.insert(class.clone(), json!(mean));
        }
        let mut items: Vec<(i64, u64)> = self.items.iter().map(|(i, n)| (*i, *n)).collect();
        items.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        items.truncate(top);
        let dead: serde_json::Map<String, Value> = Reason::ALL
            .iter()
            .zip(&self.dead_letters)
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| (r.code().to_owned(), json!(n)))
            .collect();
        let drift: Vec<Value> = reference
            .map(|r| self.drift(r))
            .unwrap_or_default()
            .into_iter()
            .map(|(feature, psi)| {
                json!({
                    "feature": feature,
                    "psi": psi,
                    "drifted": psi.is_some_and(|p| p > threshold),
                })
            })
            .collect();
        let mut doc = json!({
            "records_in": self.records_in,
            "scored": self.scored,
            "dead_letters": dead,
            "dead_letters_total": self.dead_letter_total(),
            "latency_p50_ms": self.latency_quantile_ms(0.5),
            "latency_p99_ms": self.latency_quantile_ms(0.99),
            "drift": drift,
        });
        if !classes.is_empty() {
            doc["predictions"] = Value::Object(predictions);
            doc["mean_probability"] = Value::Object(mean_probability);
        } else if !self.items.is_empty() {
            doc["top_items"] = items
                .into_iter()
                .map(|(item, n)| json!({"item": item, "count": n}))
                .collect();
        } else if self.scored > 0 {
            doc["mean_prediction"] = json!(self.value_sum / self.scored as f64);
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_come_from_buckets() {
        let mut t = Tally::default();
        t.add_latency(1.0, 98);
        t.add_latency(100.0, 2);
        let p50 = t.latency_quantile_ms(0.5).unwrap();
        assert!((1.0..1.25).contains(&p50), "{p50}");
        let p99 = t.latency_quantile_ms(0.99).unwrap();
        assert!((100.0..125.0).contains(&p99), "{p99}");
        assert_eq!(Tally::default().latency_quantile_ms(0.5), None);
    }

    #[test]
    fn merging_adds_every_figure() {
        let mut a = Tally {
            records_in: 2,
            labels: vec![1, 1],
            ..Tally::default()
        };
        let b = Tally {
            records_in: 3,
            labels: vec![0, 1, 2],
            bins: vec![vec![1, 2]],
            ..Tally::default()
        };
        a.merge(&b);
        assert_eq!(a.records_in, 5);
        assert_eq!(a.labels, vec![1, 2, 2]);
        assert_eq!(a.bins, vec![vec![1, 2]]);
    }
}
