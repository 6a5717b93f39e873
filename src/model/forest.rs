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

const LEAF: u32 = u32::MAX;

/// A split node, or a leaf when `feature == LEAF` (then `left` indexes `leaf_probs`).
#[derive(Debug, Clone, Copy)]
struct FlatNode {
    threshold: f64,
    feature: u32,
    left: u32,
    right: u32,
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
        if total >= LEAF as usize {
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
                        let offset = leaf_probs.len() as u32;
                        leaf_probs.extend_from_slice(distribution);
                        FlatNode {
                            threshold: 0.0,
                            feature: LEAF,
                            left: offset,
                            right: 0,
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
    /// through it, which is what makes batching pay off.
    pub fn predict_proba(&self, rows: ArrayView2<'_, f64>) -> Array2<f32> {
        debug_assert_eq!(rows.ncols(), self.n_features);
        let n_rows = rows.nrows();
        let k = self.n_classes;
        let mut out = Array2::<f32>::zeros((n_rows, k));
        let Some(out_slice) = out.as_slice_mut() else {
            unreachable!("a freshly allocated array is contiguous")
        };
        for &root in &self.roots {
            for (r, row) in rows.rows().into_iter().enumerate() {
                let leaf = self.leaf_of(root, |f| row[f]);
                let dist = &self.leaf_probs[leaf..leaf + k];
                for (acc, p) in out_slice[r * k..(r + 1) * k].iter_mut().zip(dist) {
                    *acc += p;
                }
            }
        }
        let scale = 1.0 / self.roots.len() as f32;
        out.mapv_inplace(|p| p * scale);
        out
    }

    /// Index into `leaf_probs` of the leaf a row reaches from `root`.
    #[inline]
    fn leaf_of(&self, root: u32, feature_value: impl Fn(usize) -> f64) -> usize {
        let mut node = self.nodes[root as usize];
        while node.feature != LEAF {
            let next = if feature_value(node.feature as usize) < node.threshold {
                node.left
            } else {
                node.right
            };
            node = self.nodes[next as usize];
        }
        node.left as usize
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
