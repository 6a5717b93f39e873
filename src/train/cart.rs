//! CART classification trees (Gini impurity), fitted deterministically.
//!
//! Why not linfa-trees' `DecisionTree`: it sums class weights by iterating a `HashMap`
//! whose order is randomised per process, so two candidate splits of equal impurity win or
//! lose by a last-bit rounding difference and the same seed grows different trees from run
//! to run. Model files must be reproducible (same data and seed, same bytes), so the tree
//! here visits classes, features and thresholds in a fixed order and breaks ties by that
//! order. It also draws a fresh feature subset at every split (Breiman's random forest)
//! rather than one per tree.

use ndarray::ArrayView2;
use rand::seq::index::sample;
use rand::Rng;

use crate::model::forest::{NodeSpec, TreeSpec};

#[derive(Debug, Clone, Copy)]
pub struct TreeParams {
    pub max_depth: Option<usize>,
    /// Features considered at each split (at most the number of features).
    pub features_per_split: usize,
    /// Nodes with fewer rows than this become leaves.
    pub min_rows_to_split: usize,
}

/// Grows one tree on `rows` (indices into `records`, repeats allowed: a bootstrap sample).
/// Leaves carry the class frequencies of the rows that reach them.
pub fn fit_tree(
    records: ArrayView2<'_, f64>,
    targets: &[usize],
    n_classes: usize,
    rows: &[usize],
    params: &TreeParams,
    rng: &mut impl Rng,
) -> TreeSpec {
    let n_features = records.ncols();
    let per_split = params.features_per_split.clamp(1, n_features.max(1));
    let mut rows = rows.to_vec();
    let mut nodes: Vec<NodeSpec> = Vec::new();
    // (row range, depth, parent slot to patch: (node index, is_left))
    let mut stack = vec![(0..rows.len(), 0usize, None::<(usize, bool)>)];
    let mut sorted: Vec<usize> = Vec::with_capacity(rows.len());
    while let Some((range, depth, parent)) = stack.pop() {
        let index = nodes.len();
        if let Some((p, is_left)) = parent {
            if let NodeSpec::Split { left, right, .. } = &mut nodes[p] {
                *(if is_left { left } else { right }) = index;
            }
        }
        let node_rows = &mut rows[range.clone()];
        let counts = class_counts(node_rows, targets, n_classes);
        let pure = counts.iter().filter(|c| **c > 0).count() <= 1;
        let too_deep = params.max_depth.is_some_and(|max| depth >= max);
        let split = if pure || too_deep || node_rows.len() < params.min_rows_to_split {
            None
        } else {
            let features = sample(rng, n_features, per_split).into_vec();
            best_split(
                records,
                targets,
                n_classes,
                node_rows,
                &features,
                &counts,
                &mut sorted,
            )
        };
        let Some((feature, threshold)) = split else {
            let total = node_rows.len().max(1) as f32;
            nodes.push(NodeSpec::Leaf {
                distribution: counts.iter().map(|c| *c as f32 / total).collect(),
            });
            continue;
        };
        let left_len = partition(node_rows, |r| records[[r, feature]] < threshold);
        nodes.push(NodeSpec::Split {
            feature,
            threshold,
            left: 0,
            right: 0,
        });
        let mid = range.start + left_len;
        // Right first so that the left subtree is numbered next (depth-first, left-first).
        stack.push((mid..range.end, depth + 1, Some((index, false))));
        stack.push((range.start..mid, depth + 1, Some((index, true))));
    }
    TreeSpec { nodes }
}

fn class_counts(rows: &[usize], targets: &[usize], n_classes: usize) -> Vec<usize> {
    let mut counts = vec![0; n_classes];
    for &r in rows {
        counts[targets[r]] += 1;
    }
    counts
}

/// Gini impurity of a node times its row count: `n - Σ c² / n`. Comparing these sums
/// between candidate splits is the same as comparing weighted impurities.
fn weighted_gini(counts: &[usize], n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let sum_sq: f64 = counts.iter().map(|&c| (c as f64) * (c as f64)).sum();
    n as f64 - sum_sq / n as f64
}

/// The (feature, threshold) with the lowest weighted child impurity that actually lowers
/// the node's, or `None`. Thresholds are midpoints between distinct neighbouring values.
fn best_split(
    records: ArrayView2<'_, f64>,
    targets: &[usize],
    n_classes: usize,
    rows: &[usize],
    features: &[usize],
    counts: &[usize],
    sorted: &mut Vec<usize>,
) -> Option<(usize, f64)> {
    let n = rows.len();
    let mut best: Option<(f64, usize, f64)> = None;
    let parent = weighted_gini(counts, n);
    let mut left = vec![0usize; n_classes];
    let mut right = vec![0usize; n_classes];
    for &feature in features {
        sorted.clear();
        sorted.extend_from_slice(rows);
        sorted.sort_by(|&a, &b| records[[a, feature]].total_cmp(&records[[b, feature]]));
        left.iter_mut().for_each(|c| *c = 0);
        right.copy_from_slice(counts);
        for i in 0..n - 1 {
            let class = targets[sorted[i]];
            left[class] += 1;
            right[class] -= 1;
            let here = records[[sorted[i], feature]];
            let next = records[[sorted[i + 1], feature]];
            if here == next {
                continue;
            }
            let score = weighted_gini(&left, i + 1) + weighted_gini(&right, n - i - 1);
            if best.is_none_or(|(b, _, _)| score < b) {
                best = Some((score, feature, here + (next - here) / 2.0));
            }
        }
    }
    best.filter(|(score, _, _)| *score < parent - 1e-12)
        .map(|(_, feature, threshold)| (feature, threshold))
}

/// Moves the rows satisfying `goes_left` to the front; returns how many there are.
fn partition(rows: &mut [usize], goes_left: impl Fn(usize) -> bool) -> usize {
    let mut boundary = 0;
    for i in 0..rows.len() {
        if goes_left(rows[i]) {
            rows.swap(i, boundary);
            boundary += 1;
        }
    }
    boundary
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    #[test]
    fn splits_a_separable_feature_at_the_midpoint() {
        let records = array![[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [3.0, 5.0]];
        let targets = [0, 0, 1, 1];
        let params = TreeParams {
            max_depth: None,
            features_per_split: 2,
            min_rows_to_split: 2,
        };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let tree = fit_tree(
            records.view(),
            &targets,
            2,
            &[0, 1, 2, 3],
            &params,
            &mut rng,
        );
        assert_eq!(
            tree.nodes,
            vec![
                NodeSpec::Split {
                    feature: 0,
                    threshold: 1.5,
                    left: 1,
                    right: 2
                },
                NodeSpec::Leaf {
                    distribution: vec![1.0, 0.0]
                },
                NodeSpec::Leaf {
                    distribution: vec![0.0, 1.0]
                },
            ]
        );
    }

    #[test]
    fn depth_limit_and_constant_features_make_leaves() {
        let records = array![[1.0], [1.0], [1.0]];
        let params = TreeParams {
            max_depth: None,
            features_per_split: 1,
            min_rows_to_split: 2,
        };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let tree = fit_tree(records.view(), &[0, 1, 1], 2, &[0, 1, 2], &params, &mut rng);
        assert_eq!(tree.nodes.len(), 1, "no split separates identical rows");
        let NodeSpec::Leaf { distribution } = &tree.nodes[0] else {
            panic!()
        };
        assert!((distribution[1] - 2.0 / 3.0).abs() < 1e-6);

        let records = array![[0.0], [1.0], [2.0], [3.0]];
        let shallow = TreeParams {
            max_depth: Some(0),
            ..params
        };
        let tree = fit_tree(
            records.view(),
            &[0, 1, 0, 1],
            2,
            &[0, 1, 2, 3],
            &shallow,
            &mut rng,
        );
        assert_eq!(tree.nodes.len(), 1);
    }
}
