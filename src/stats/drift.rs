//! Input drift: a reference distribution per input feature, stored in the model file at
//! training (or import) time, and the population stability index (PSI) of a window's
//! inputs against it.
//!
//! PSI is the measure credit-risk and model-monitoring teams already alert on: for bins `i`
//! with reference share `e_i` and observed share `a_i`, `PSI = Σ (a_i − e_i) · ln(a_i / e_i)`.
//! Its usual reading is < 0.1 stable, 0.1–0.25 a moderate shift, > 0.25 a significant one.
//! The bins are the training data's deciles, so every bin holds about a tenth of the
//! reference and a shift of the bulk of the data moves mass between bins.

use serde::{Deserialize, Serialize};

/// Bins per feature (deciles of the training data, fewer where values repeat).
pub const BINS: usize = 10;
/// A share of zero would make PSI infinite; an empty bin counts as this share instead (the
/// usual smoothing).
const EMPTY_SHARE: f64 = 1e-4;
/// The PSI above which a feature is reported as drifted, by default: "significant shift".
pub const DEFAULT_THRESHOLD: f64 = 0.25;

/// The reference histogram of one input feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureReference {
    pub feature: String,
    /// Inner cut points, ascending: bin `i` holds `edges[i-1] <= x < edges[i]`, so there are
    /// `edges.len() + 1` bins and the outer two are open-ended.
    pub edges: Vec<f64>,
    /// Training rows per bin.
    pub counts: Vec<u64>,
}

/// The reference distribution of every input feature the model reads, in its order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub features: Vec<FeatureReference>,
}

impl FeatureReference {
    /// Deciles of `values` (missing values, NaN, skipped) as bin edges, and the counts.
    pub fn from_values(feature: &str, values: impl IntoIterator<Item = f64>) -> Self {
        let mut sorted: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = Vec::with_capacity(BINS - 1);
        if !sorted.is_empty() {
            for q in 1..BINS {
                let edge = sorted[(q * sorted.len() / BINS).min(sorted.len() - 1)];
                // Repeated values would make empty bins that say nothing; a cut at the
                // minimum would make one that is always empty.
                if edge > sorted[0] && edges.last().is_none_or(|last| edge > *last) {
                    edges.push(edge);
                }
            }
        }
        let mut counts = vec![0u64; edges.len() + 1];
        for v in &sorted {
            counts[bin(&edges, *v)] += 1;
        }
        Self {
            feature: feature.to_owned(),
            edges,
            counts,
        }
    }

    pub fn bins(&self) -> usize {
        self.counts.len()
    }
}

impl Reference {
    /// One histogram per column of a row-major matrix of `names.len()` columns.
    pub fn from_rows(names: &[String], rows: &[f64]) -> Self {
        let width = names.len().max(1);
        Self {
            features: names
                .iter()
                .enumerate()
                .map(|(j, name)| {
                    FeatureReference::from_values(name, rows.chunks_exact(width).map(|row| row[j]))
                })
                .collect(),
        }
    }

    /// Checks that the reference fits a model reading `features`.
    pub fn validate(&self, features: &[String]) -> Result<(), String> {
        let names: Vec<&str> = self.features.iter().map(|f| f.feature.as_str()).collect();
        if names != features.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(format!(
                "the drift reference describes {names:?} but the model reads {features:?}"
            ));
        }
        for f in &self.features {
            let ascending = f.edges.windows(2).all(|w| w[0] < w[1]);
            if !ascending || f.edges.iter().any(|e| !e.is_finite()) {
                return Err(format!(
                    "the drift reference of {} has edges that are not finite and ascending",
                    f.feature
                ));
            }
            if f.counts.len() != f.edges.len() + 1 || f.counts.iter().sum::<u64>() == 0 {
                return Err(format!(
                    "the drift reference of {} needs one count per bin and at least one row",
                    f.feature
                ));
            }
        }
        Ok(())
    }
}

/// The bin of `x`: the number of edges at or below it. A value within a millionth (relative)
/// below an edge counts as on it: PMML `float` fields reach the model rounded to `f32`
/// (1.3 becomes 1.2999999523), while the reference was cut from the training data's doubles,
/// and the same training value must land in the same bin.
#[inline]
pub fn bin(edges: &[f64], x: f64) -> usize {
    let x = x + x.abs() * 1e-6;
    edges.partition_point(|e| *e <= x)
}

/// Population stability index of `observed` counts against `reference` counts (same bins).
/// `None` when either side is empty.
pub fn psi(reference: &[u64], observed: &[u64]) -> Option<f64> {
    let (r_total, o_total) = (
        reference.iter().sum::<u64>() as f64,
        observed.iter().sum::<u64>() as f64,
    );
    if r_total == 0.0 || o_total == 0.0 || reference.len() != observed.len() {
        return None;
    }
    Some(
        reference
            .iter()
            .zip(observed)
            .map(|(r, o)| {
                let e = (*r as f64 / r_total).max(EMPTY_SHARE);
                let a = (*o as f64 / o_total).max(EMPTY_SHARE);
                (a - e) * (a / e).ln()
            })
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deciles_make_about_equal_bins() {
        let r = FeatureReference::from_values("x", (0..1000).map(f64::from));
        assert_eq!(r.bins(), 10);
        assert!(r.counts.iter().all(|c| *c == 100), "{:?}", r.counts);
        assert_eq!(bin(&r.edges, -5.0), 0);
        assert_eq!(bin(&r.edges, 100.0), 1, "an edge value opens its bin");
        assert_eq!(bin(&r.edges, 1e9), 9);
        assert_eq!(
            bin(&[1.3], f64::from(1.3f32)),
            1,
            "an f32-rounded edge value is on the edge"
        );
    }

    #[test]
    fn repeated_values_do_not_make_empty_bins() {
        let r = FeatureReference::from_values("x", [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 3.0, f64::NAN]);
        assert!(r.counts.iter().all(|c| *c > 0), "{r:?}");
        assert_eq!(r.counts.iter().sum::<u64>(), 7, "NaN is not a value");
    }

    #[test]
    fn psi_is_zero_for_the_same_shape_and_large_for_a_shift() {
        let r = FeatureReference::from_values("x", (0..1000).map(f64::from));
        let same: Vec<u64> = r.counts.iter().map(|c| c * 3).collect();
        assert!(psi(&r.counts, &same).unwrap().abs() < 1e-12);
        let mut shifted = vec![0u64; r.bins()];
        for v in 500..1500 {
            shifted[bin(&r.edges, f64::from(v))] += 1;
        }
        assert!(psi(&r.counts, &shifted).unwrap() > DEFAULT_THRESHOLD);
        assert_eq!(psi(&r.counts, &vec![0; r.bins()]), None);
    }

    #[test]
    fn validation_refuses_a_reference_for_other_features() {
        let reference = Reference::from_rows(&["a".into(), "b".into()], &[1.0, 2.0, 3.0, 4.0]);
        assert!(reference.validate(&["a".into(), "b".into()]).is_ok());
        assert!(reference.validate(&["b".into(), "a".into()]).is_err());
    }
}
