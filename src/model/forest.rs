//! Random-forest classifier compiled to flat node arrays.
//!
//! The model file stores each tree as a list of nodes (the shape training produces); loading
//! validates that list and compiles every tree into one contiguous `Vec<FlatNode>` so that
//! scoring is a tight index-chasing loop with no allocation and no boxed pointers.

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::ModelError;

/// One node of a tree as it is written in the model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NodeSpec {
    /// Rows whose `feature` is `< threshold` go left, the rest go right.
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
    /// Class frequencies of the training rows that reached this leaf (sums to 1).
    Leaf { distribution: Vec<f32> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeSpec {
    pub nodes: Vec<NodeSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForestSpec {
    pub trees: Vec<TreeSpec>,
}

/// `FlatNode::leaf` of a split node.
const NOT_A_LEAF: u32 = u32::MAX;

/// Rows that walk one tree side by side. Their walks are independent chains of dependent
/// loads, so interleaving them lets the CPU overlap the chains instead of waiting out each
/// one; eight keeps the cursors in registers.
const ROWS_PER_BLOCK: usize = 8;

/// A split node, or a leaf. A leaf is a split on feature 0 whose both children are the leaf
/// itself, so that a walk can take further steps after reaching it without going anywhere:
/// rows walking in lockstep need no per-row test of whether they have arrived.
#[derive(Debug, Clone, Copy)]
struct FlatNode {
    threshold: f64,
    feature: u32,
    left: u32,
    right: u32,
    /// Offset of a leaf's class distribution in `leaf_probs`; `NOT_A_LEAF` for a split.
    leaf: u32,
}

/// The scoring form of a forest: every tree's nodes in one array.
#[derive(Debug, Clone)]
pub struct Forest {
    n_features: usize,
    n_classes: usize,
    nodes: Vec<FlatNode>,
    roots: Vec<u32>,
    leaf_probs: Vec<f32>,
}

impl Forest {
    /// Validates a forest read from a file and compiles it. Child indices must point forward
    /// within their tree, which rules out cycles and dangling references in one check.
    pub fn compile(
        spec: &ForestSpec,
        n_features: usize,
        n_classes: usize,
    ) -> Result<Self, ModelError> {
        let invalid = |tree: usize, node: usize, why: String| {
            ModelError::Invalid(format!("tree {tree}, node {node}: {why}"))
        };
        if spec.trees.is_empty() {
            return Err(ModelError::Invalid("the forest has no trees".into()));
        }
        if n_classes == 0 {
            return Err(ModelError::Invalid("the forest has no classes".into()));
        }
        let total: usize = spec.trees.iter().map(|t| t.nodes.len()).sum();
        if total >= NOT_A_LEAF as usize {
            return Err(ModelError::Invalid("the forest has too many nodes".into()));
        }
        let mut nodes = Vec::with_capacity(total);
        let mut roots = Vec::with_capacity(spec.trees.len());
        let mut leaf_probs = Vec::new();
        for (t, tree) in spec.trees.iter().enumerate() {
            if tree.nodes.is_empty() {
                return Err(ModelError::Invalid(format!("tree {t} has no nodes")));
            }
            let base = nodes.len();
            roots.push(base as u32);
            for (i, node) in tree.nodes.iter().enumerate() {
                let flat = match node {
                    NodeSpec::Split {
                        feature,
                        threshold,
                        left,
                        right,
                    } => {
                        if *feature >= n_features {
                            return Err(invalid(t, i, format!("feature {feature} out of range")));
                        }
                        if !threshold.is_finite() {
                            return Err(invalid(t, i, "threshold is not finite".into()));
                        }
                        for child in [*left, *right] {
                            if child <= i || child >= tree.nodes.len() {
                                return Err(invalid(t, i, format!("child {child} out of range")));
                            }
                        }
                        FlatNode {
                            threshold: *threshold,
                            feature: *feature as u32,
                            left: (base + left) as u32,
                            right: (base + right) as u32,
                            leaf: NOT_A_LEAF,
                        }
                    }
                    NodeSpec::Leaf { distribution } => {
                        if distribution.len() != n_classes {
                            return Err(invalid(
                                t,
                                i,
                                format!(
                                    "{} class weights for {n_classes} classes",
                                    distribution.len()
                                ),
                            ));
                        }
                        if distribution.iter().any(|p| !p.is_finite() || *p < 0.0) {
                            return Err(invalid(
                                t,
                                i,
                                "class weights must be finite and >= 0".into(),
                            ));
                        }
                        let offset = u32::try_from(leaf_probs.len()).map_err(|_| {
                            ModelError::Invalid("the forest has too many leaves".into())
                        })?;
                        leaf_probs.extend_from_slice(distribution);
                        let me = (base + i) as u32;
                        FlatNode {
                            threshold: 0.0,
                            feature: 0,
                            left: me,
                            right: me,
                            leaf: offset,
                        }
                    }
                };
                nodes.push(flat);
            }
        }
        Ok(Self {
            n_features,
            n_classes,
            nodes,
            roots,
            leaf_probs,
        })
    }

    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Mean of the leaf class distributions over all trees, one row per input row.
    ///
    /// Tree-major order keeps one tree's nodes hot in cache while the whole batch goes
    /// through it, which is what makes batching pay off. Each row still adds up its trees'
    /// distributions in tree order, so the result is the same to the bit whatever the batch.
    pub fn predict_proba(&self, rows: ArrayView2<'_, f64>) -> Array2<f32> {
        debug_assert_eq!(rows.ncols(), self.n_features);
        // Rows are read through one flat slice: with fewer columns than the features the
        // trees test, a row would silently read its neighbour's values.
        assert!(
            rows.ncols() >= self.n_features,
            "{} feature columns for a forest of {} features",
            rows.ncols(),
            self.n_features
        );
        let n_rows = rows.nrows();
        let k = self.n_classes;
        let mut out = Array2::<f32>::zeros((n_rows, k));
        if n_rows == 0 {
            return out;
        }
        let rows = rows.as_standard_layout();
        let Some(values) = rows.as_slice() else {
            unreachable!("a standard-layout array is contiguous")
        };
        // A forest of no features is all leaves, yet a leaf's idle step reads feature 0.
        let padded: Vec<f64>;
        let (values, stride) = if rows.ncols() == 0 {
            padded = vec![0.0; n_rows];
            (&padded[..], 1)
        } else {
            (values, rows.ncols())
        };

        let full = n_rows - n_rows % ROWS_PER_BLOCK;
        // Per tree, the leaf each row reached (its offset in `leaf_probs`).
        let mut leaves = vec![0u32; n_rows];
        // Class-major, so that adding a tree's leaves is one plain loop per class rather
        // than a short, unpredictable loop per row.
        let mut sums = vec![0f32; k * n_rows];
        for &root in &self.roots {
            let blocks = values[..full * stride]
                .chunks_exact(ROWS_PER_BLOCK * stride)
                .zip(leaves[..full].chunks_exact_mut(ROWS_PER_BLOCK));
            for (block, reached) in blocks {
                self.walk::<ROWS_PER_BLOCK>(root, block, stride, reached);
            }
            let rest = values[full * stride..]
                .chunks_exact(stride)
                .zip(leaves[full..].chunks_exact_mut(1));
            for (row, reached) in rest {
                self.walk::<1>(root, row, stride, reached);
            }
            for (class, class_sums) in sums.chunks_exact_mut(n_rows).enumerate() {
                let probs = &self.leaf_probs[class..];
                for (sum, &leaf) in class_sums.iter_mut().zip(&leaves) {
                    *sum += probs[leaf as usize];
                }
            }
        }

        let scale = 1.0 / self.roots.len() as f32;
        for (class, class_sums) in sums.chunks_exact(n_rows).enumerate() {
            for (p, sum) in out.column_mut(class).iter_mut().zip(class_sums) {
                *p = sum * scale;
            }
        }
        out
    }

    /// Walks `R` rows (`values`, `stride` apart) down the tree at `root` in lockstep and
    /// writes where in `leaf_probs` the leaf each one reaches keeps its distribution.
    #[inline(always)]
    fn walk<const R: usize>(&self, root: u32, values: &[f64], stride: usize, reached: &mut [u32]) {
        let mut at = [root; R];
        // Done when a step moves no row: each stands on a leaf, which loops to itself.
        loop {
            let mut moved = false;
            for (r, cursor) in at.iter_mut().enumerate() {
                let node = &self.nodes[*cursor as usize];
                let next = if values[r * stride + node.feature as usize] < node.threshold {
                    node.left
                } else {
                    node.right
                };
                moved |= next != *cursor;
                *cursor = next;
            }
            if !moved {
                break;
            }
        }
        for (leaf, cursor) in reached.iter_mut().zip(at) {
            *leaf = self.nodes[cursor as usize].leaf;
        }
    }
}

/// Index of the largest probability in each row (the first one on ties).
pub fn argmax_rows(probs: &Array2<f32>) -> Vec<usize> {
    probs
        .rows()
        .into_iter()
        .map(|row| {
            let mut best = 0;
            for (i, p) in row.iter().enumerate() {
                if *p > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn stump() -> ForestSpec {
        ForestSpec {
            trees: vec![TreeSpec {
                nodes: vec![
                    NodeSpec::Split {
                        feature: 1,
                        threshold: 2.5,
                        left: 1,
                        right: 2,
                    },
                    NodeSpec::Leaf {
                        distribution: vec![1.0, 0.0],
                    },
                    NodeSpec::Leaf {
                        distribution: vec![0.25, 0.75],
                    },
                ],
            }],
        }
    }

    #[test]
    fn routes_rows_by_threshold() {
        let forest = Forest::compile(&stump(), 2, 2).unwrap();
        let probs = forest.predict_proba(array![[0.0, 1.0], [0.0, 2.5], [9.0, 3.0]].view());
        assert_eq!(probs, array![[1.0, 0.0], [0.25, 0.75], [0.25, 0.75]]);
        assert_eq!(argmax_rows(&probs), vec![0, 1, 1]);
    }

    #[test]
    fn averages_trees() {
        let mut spec = stump();
        spec.trees.push(TreeSpec {
            nodes: vec![NodeSpec::Leaf {
                distribution: vec![0.0, 1.0],
            }],
        });
        let forest = Forest::compile(&spec, 2, 2).unwrap();
        let probs = forest.predict_proba(array![[0.0, 1.0]].view());
        assert_eq!(probs, array![[0.5, 0.5]]);
    }

    #[test]
    fn refuses_malformed_trees() {
        let cycle = ForestSpec {
            trees: vec![TreeSpec {
                nodes: vec![NodeSpec::Split {
                    feature: 0,
                    threshold: 1.0,
                    left: 0,
                    right: 0,
                }],
            }],
        };
        assert!(Forest::compile(&cycle, 2, 2).is_err());
        assert!(
            Forest::compile(&stump(), 1, 2).is_err(),
            "feature index out of range"
        );
        assert!(
            Forest::compile(&stump(), 2, 3).is_err(),
            "wrong distribution length"
        );
        assert!(Forest::compile(&ForestSpec { trees: vec![] }, 2, 2).is_err());
    }
}
