//! Random-forest classifier compiled to flat node arrays.
//!
//! The model file stores each tree as a list of nodes (the shape training produces); loading
//! validates that list and compiles every tree into one contiguous `Vec<FlatNode>` so that
//! scoring is a tight index-chasing loop with no allocation and no boxed pointers.

use ndarray::{Array2, ArrayView2, Axis};
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

/// Trees with at most this many leaves are also compiled to masks (see `MaskTree`): one bit
/// per leaf in a `u64`.
const MAX_MASK_LEAVES: usize = 64;

/// Rows scored together by the mask form, laid out feature-major so that one split tests
/// them all with a few vector instructions.
const BLOCK: usize = 8;

/// A tree as a set of independent tests rather than a walk (the QuickScorer idea): leaves
/// are numbered left to right and every split knows which leaves its right branch rules
/// out (those of its left subtree). A row's leaf is the leftmost one that no failed test
/// ruled out. Evaluating every split costs more comparisons than walking one path, but
/// they have no branches and no chains of dependent loads, so they pipeline and vectorise
/// where a walk waits on memory and mispredicts its exit.
#[derive(Debug, Clone)]
struct MaskTree {
    /// This tree's slice of `Forest::splits`.
    splits: std::ops::Range<usize>,
    /// This tree's slice of `Forest::mask_leaves`.
    leaves: std::ops::Range<usize>,
}

#[derive(Debug, Clone, Copy)]
struct MaskSplit {
    threshold: f64,
    /// Leaves still possible when `value < threshold` fails: all but the left subtree's.
    keep: u64,
    feature: u32,
}

/// The scoring form of a forest: every tree's nodes in one array.
#[derive(Debug, Clone)]
pub struct Forest {
    n_features: usize,
    n_classes: usize,
    nodes: Vec<FlatNode>,
    roots: Vec<u32>,
    leaf_probs: Vec<f32>,
    /// Per tree, its mask form if it is small enough to have one.
    masks: Vec<Option<MaskTree>>,
    splits: Vec<MaskSplit>,
    /// Offsets into `leaf_probs`, each mask tree's leaves from left to right.
    mask_leaves: Vec<u32>,
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
                        let offset = u32::try_from(leaf_probs.len()).map_err(|_| {
                            ModelError::Invalid("the forest has too many leaves".into())
                        })?;
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
        let mut splits = Vec::new();
        let mut mask_leaves = Vec::new();
        let masks = roots
            .iter()
            .map(|&root| {
                let (first_split, first_leaf) = (splits.len(), mask_leaves.len());
                let fits = add_mask_form(&nodes, root, &mut splits, &mut mask_leaves).is_some();
                if !fits {
                    splits.truncate(first_split);
                    mask_leaves.truncate(first_leaf);
                }
                fits.then(|| MaskTree {
                    splits: first_split..splits.len(),
                    leaves: first_leaf..mask_leaves.len(),
                })
            })
            .collect();
        Ok(Self {
            n_features,
            n_classes,
            nodes,
            roots,
            leaf_probs,
            masks,
            splits,
            mask_leaves,
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
    /// Tree-major order keeps one tree hot in cache while the whole batch goes through it,
    /// which is what makes batching pay off. Each row still adds up its trees' distributions
    /// in tree order, so the result is the same to the bit however the batch is split.
    pub fn predict_proba(&self, rows: ArrayView2<'_, f64>) -> Array2<f32> {
        debug_assert_eq!(rows.ncols(), self.n_features);
        let n_rows = rows.nrows();
        let k = self.n_classes;
        let mut out = Array2::<f32>::zeros((n_rows, k));
        if n_rows == 0 {
            return out;
        }
        // Whole blocks go through the mask form; the rows left over walk.
        let blocked_rows = if self.masks.iter().any(Option::is_some) {
            n_rows - n_rows % BLOCK
        } else {
            0
        };
        let blocks = self.feature_major_blocks(rows, blocked_rows);
        let block_len = self.n_features * BLOCK;
        // Per tree, the offset in `leaf_probs` of the leaf each row reached.
        let mut reached = vec![0u32; n_rows];
        // Class-major, so that adding a tree's leaves is one plain loop per class rather than
        // a short loop per row.
        let mut sums = vec![0f32; k * n_rows];
        for (&root, mask) in self.roots.iter().zip(&self.masks) {
            let walk_from = match mask {
                Some(tree) => {
                    for (b, reached) in reached[..blocked_rows].chunks_exact_mut(BLOCK).enumerate()
                    {
                        let block = &blocks[b * block_len..(b + 1) * block_len];
                        self.leaves_by_masks(tree, block, reached);
                    }
                    blocked_rows
                }
                None => 0,
            };
            for (row, reached) in rows.rows().into_iter().zip(&mut reached).skip(walk_from) {
                *reached = self.leaf_of(root, |f| row[f]);
            }
            for (class, class_sums) in sums.chunks_exact_mut(n_rows).enumerate() {
                let probs = &self.leaf_probs[class..];
                for (sum, &leaf) in class_sums.iter_mut().zip(&reached) {
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

    /// The first `n_rows` rows in blocks of `BLOCK`, each block feature-major: feature `f`
    /// of the block's row `r` is at `f * BLOCK + r`.
    fn feature_major_blocks(&self, rows: ArrayView2<'_, f64>, n_rows: usize) -> Vec<f64> {
        let mut blocks = Vec::with_capacity(n_rows * self.n_features);
        for block in rows.axis_chunks_iter(Axis(0), BLOCK).take(n_rows / BLOCK) {
            for f in 0..self.n_features {
                blocks.extend(block.column(f));
            }
        }
        blocks
    }

    /// The leaf (offset in `leaf_probs`) each row of a feature-major block reaches.
    #[inline]
    fn leaves_by_masks(&self, tree: &MaskTree, block: &[f64], reached: &mut [u32]) {
        let mut possible = [u64::MAX; BLOCK];
        for split in &self.splits[tree.splits.clone()] {
            let at = split.feature as usize * BLOCK;
            for (possible, value) in possible.iter_mut().zip(&block[at..at + BLOCK]) {
                *possible &= if *value < split.threshold {
                    u64::MAX
                } else {
                    split.keep
                };
            }
        }
        let leaves = &self.mask_leaves[tree.leaves.clone()];
        for (reached, possible) in reached.iter_mut().zip(possible) {
            // The row's own leaf is never ruled out, so some bit below `leaves.len()` is set.
            *reached = leaves[possible.trailing_zeros() as usize];
        }
    }

    /// Index into `leaf_probs` of the leaf a row reaches from `root`.
    #[inline]
    fn leaf_of(&self, root: u32, feature_value: impl Fn(usize) -> f64) -> u32 {
        let mut node = self.nodes[root as usize];
        while node.feature != LEAF {
            let next = if feature_value(node.feature as usize) < node.threshold {
                node.left
            } else {
                node.right
            };
            node = self.nodes[next as usize];
        }
        node.left
    }
}

/// Appends the mask form of the tree at `at` (leaves left to right, splits in any order);
/// `None` once it would have more than `MAX_MASK_LEAVES` leaves. A node reachable along two
/// paths counts once per path, which is how a walk sees it too. Every split descended into
/// adds a split to `splits` first, and a tree of at most 64 leaves has fewer than 64 splits,
/// so the recursion is never deeper than that, whatever the file holds.
fn add_mask_form(
    nodes: &[FlatNode],
    at: u32,
    splits: &mut Vec<MaskSplit>,
    leaves: &mut Vec<u32>,
) -> Option<()> {
    let node = nodes[at as usize];
    if node.feature == LEAF {
        if leaves.len() == MAX_MASK_LEAVES {
            return None;
        }
        leaves.push(node.left);
        return Some(());
    }
    if splits.len() == MAX_MASK_LEAVES - 1 {
        return None;
    }
    let slot = splits.len();
    splits.push(MaskSplit {
        threshold: node.threshold,
        keep: u64::MAX,
        feature: node.feature,
    });
    let first = leaves.len();
    add_mask_form(nodes, node.left, splits, leaves)?;
    let left_subtree = leaf_bits(leaves.len()) & !leaf_bits(first);
    splits[slot].keep = !left_subtree;
    add_mask_form(nodes, node.right, splits, leaves)
}

/// The bits of leaves `0..n`, for `n <= 64`.
fn leaf_bits(n: usize) -> u64 {
    u64::MAX.checked_shr(64 - n as u32).unwrap_or(0)
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
