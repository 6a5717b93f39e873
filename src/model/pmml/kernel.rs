//! The fast form of a forest: every tree as binary tests over a dense feature block, scored
//! a block of rows at a time by leaf bitmasks (the native forest's QuickScorer kernel, in
//! double precision), or walked when a tree has more than 64 leaves.
//!
//! It scores rows whose columns the trees read are all present and finite; for those, PMML's
//! first-true-child rule reduces every node to a chain of two-way tests, and the comparisons
//! reduce to `x < t` (`x <= t` is `x < next_up(t)`; `>` and `>=` swap the branches) or a
//! category bitmask. Sums run in tree order, with the same additions and divisions as the
//! exact evaluator, so the two agree to the bit. Anything else (a row with a missing value,
//! a model chain, segment predicates, more than 64 string categories) takes the exact path.

use std::ops::Range;

use super::fields::Column;
use super::model::{Kind, Method, Node, Prediction};
use super::predicate::{Op, Predicate};
use super::tree::{argmax, Tree};
use super::PmmlModel;

const MAX_MASK_LEAVES: usize = 64;
const BLOCK: usize = 8;
const NO_CHILD: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
enum Test {
    /// `x < threshold`
    Below { feature: u32, threshold: f64 },
    /// `x`'s category code is in the set.
    In { feature: u32, set: u64 },
}

impl Test {
    #[inline]
    fn holds(self, row: &[f64]) -> bool {
        match self {
            Test::Below { feature, threshold } => row[feature as usize] < threshold,
            Test::In { feature, set } => in_set(row[feature as usize], set),
        }
    }
}

#[inline]
fn in_set(x: f64, set: u64) -> bool {
    let code = x as i64;
    (0..64).contains(&code) && (set >> code) & 1 == 1
}

/// A node of a compiled tree: a test with its two subtrees, or a leaf (`yes == NO_CHILD`,
/// `no` the leaf's index).
#[derive(Debug, Clone, Copy)]
struct Bin {
    test: Test,
    yes: u32,
    no: u32,
}

/// Leaf values in groups one vector addition adds up.
type Lanes = [f64; 4];

#[derive(Debug, Clone)]
struct MaskTree {
    below: Range<usize>,
    sets: Range<usize>,
    /// This tree's part of `Kernel::mask_values`.
    values: Range<usize>,
}

#[derive(Debug, Clone, Copy)]
struct MaskBelow {
    threshold: f64,
    keep: u64,
    feature: u32,
}

#[derive(Debug, Clone, Copy)]
struct MaskSet {
    set: u64,
    keep: u64,
    feature: u32,
}

#[derive(Debug)]
pub struct Kernel {
    /// Row columns the trees read, by dense feature index.
    features: Vec<usize>,
    nodes: Vec<Bin>,
    roots: Vec<u32>,
    /// Per leaf, what it adds to a row's sums (NaN for a null leaf), `width` values zero-padded
    /// to `lanes` whole `Lanes`: adding one is a few vector additions, not a loop over the
    /// classes, and each lane is the same single addition, so no sum changes by a bit.
    leaf_values: Vec<Lanes>,
    /// Single trees: the leaf's own label.
    leaf_labels: Vec<usize>,
    width: usize,
    lanes: usize,
    masks: Vec<Option<MaskTree>>,
    /// Each mask tree's leaf values in left-to-right order, so that a leaf's position in the
    /// mask is its index.
    mask_values: Vec<Lanes>,
    /// For each feature, the input it is (when no derived field stands between): rows are
    /// gathered straight from the inputs instead of through a full row.
    direct: Option<Vec<usize>>,
    below: Vec<MaskBelow>,
    sets: Vec<MaskSet>,
    aggregate: Aggregate,
}

#[derive(Debug, Clone, Copy)]
enum Aggregate {
    /// One tree: its leaf is the prediction.
    Single { classification: bool },
    /// Sums divided by `divisor`; a classification's label is the largest.
    Ensemble { classification: bool, divisor: f64 },
}

struct Builder<'b> {
    columns: &'b [Column],
    features: Vec<usize>,
    nodes: Vec<Bin>,
    leaf_values: Vec<f64>,
    leaf_labels: Vec<usize>,
    width: usize,
    has_null: bool,
}

impl Kernel {
    pub fn compile(root: &Node, columns: &[Column]) -> Option<Self> {
        if !root.local.is_empty() {
            return None;
        }
        let classification = root.categories.is_some();
        if root.rescale.is_some() && classification {
            return None;
        }
        let width = root.categories.as_ref().map_or(1, |c| c.len());
        let mut b = Builder {
            columns,
            features: Vec::new(),
            nodes: Vec::new(),
            leaf_values: Vec::new(),
            leaf_labels: Vec::new(),
            width,
            has_null: false,
        };
        let mut roots = Vec::new();
        let aggregate = match &root.kind {
            Kind::Tree(tree) => {
                roots.push(b.tree(tree, 1.0, None)?);
                Aggregate::Single { classification }
            }
            Kind::Mining(m) => {
                let vote = matches!(
                    m.method,
                    Method::MajorityVote | Method::WeightedMajorityVote
                );
                let weighted = matches!(
                    m.method,
                    Method::WeightedAverage | Method::WeightedMajorityVote
                );
                if !matches!(
                    m.method,
                    Method::Average
                        | Method::WeightedAverage
                        | Method::Sum
                        | Method::MajorityVote
                        | Method::WeightedMajorityVote
                ) {
                    return None;
                }
                let mut weights = 0.0;
                for seg in &m.segments {
                    let plain = matches!(seg.predicate, Predicate::True)
                        && seg.model.local.is_empty()
                        && seg.model.rescale.is_none();
                    let Kind::Tree(tree) = &seg.model.kind else {
                        return None;
                    };
                    if !plain {
                        return None;
                    }
                    let w = if weighted { seg.weight } else { 1.0 };
                    roots.push(b.tree(tree, w, Some(vote))?);
                    weights += seg.weight;
                }
                // A null tree skipped ("continue") changes the divisor: only the exact path
                // follows that.
                if b.has_null && !m.return_missing {
                    return None;
                }
                let divisor = match m.method {
                    Method::Sum => 1.0,
                    Method::Average | Method::MajorityVote => m.segments.len() as f64,
                    _ => weights,
                };
                Aggregate::Ensemble {
                    classification,
                    divisor,
                }
            }
            Kind::Regression(_) => return None,
        };
        let lanes = width.div_ceil(4);
        let leaf_values = b
            .leaf_values
            .chunks_exact(width)
            .flat_map(|values| {
                values.chunks(4).map(|part| {
                    let mut lane = Lanes::default();
                    lane[..part.len()].copy_from_slice(part);
                    lane
                })
            })
            .collect();
        let mut kernel = Kernel {
            features: b.features,
            nodes: b.nodes,
            roots,
            leaf_values,
            leaf_labels: b.leaf_labels,
            width,
            lanes,
            masks: Vec::new(),
            mask_values: Vec::new(),
            direct: None,
            below: Vec::new(),
            sets: Vec::new(),
            aggregate,
        };
        kernel.masks = kernel
            .roots
            .clone()
            .into_iter()
            .map(|r| kernel.mask_form(r))
            .collect();
        Some(kernel)
    }

    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    /// Lets rows be gathered straight from the inputs: `inputs[i]` is the column input `i`
    /// fills, and `derived` whether any derived field is computed before the model.
    pub fn gather_from_inputs(&mut self, inputs: &[usize], derived: bool) {
        if derived {
            return;
        }
        self.direct = self
            .features
            .iter()
            .map(|c| inputs.iter().position(|i| i == c))
            .collect();
    }

    /// Predictions for the rows of `inputs` (prepared, `model.features().len()` each): `None`
    /// for a row the kernel cannot take, which the caller scores exactly.
    pub fn predict(&self, model: &PmmlModel, inputs: &[f64]) -> Vec<Option<Prediction>> {
        let n_inputs = model.features().len().max(1);
        let n_rows = inputs.len() / n_inputs;
        let nf = self.features.len();
        // Dense feature values of the rows the kernel takes, row-major, and their indices.
        let mut dense = Vec::with_capacity(n_rows * nf);
        let mut taken = Vec::with_capacity(n_rows);
        let mut full = Vec::new();
        for (r, values) in inputs.chunks_exact(n_inputs).enumerate() {
            let start = dense.len();
            match &self.direct {
                Some(direct) => dense.extend(direct.iter().map(|&i| values[i])),
                None => {
                    full.resize(model.width(), f64::NAN);
                    model.fill(values, &mut full);
                    dense.extend(self.features.iter().map(|&c| full[c]));
                }
            }
            if dense[start..].iter().all(|v| v.is_finite()) {
                taken.push(r);
            } else {
                dense.truncate(start);
            }
        }
        let lanes = self.lanes;
        let mut sums = vec![Lanes::default(); taken.len() * lanes];
        // With no features there is nothing to block (every tree is one leaf).
        let blocked = if nf == 0 {
            0
        } else {
            taken.len() / BLOCK * BLOCK
        };
        let blocks = feature_major(&dense, nf, blocked);
        let (blocked_sums, rest_sums) = sums.split_at_mut(blocked * lanes);
        for (t, &root) in self.roots.iter().enumerate() {
            let Some(mask) = self.masks[t].as_ref().filter(|_| nf > 0) else {
                for (row, sums) in blocked_sums.chunks_exact_mut(lanes).enumerate() {
                    let leaf = self.walk(root, &dense[row * nf..(row + 1) * nf]) as usize;
                    add(sums, &self.leaf_values[leaf * lanes..(leaf + 1) * lanes]);
                }
                continue;
            };
            let values = &self.mask_values[mask.values.clone()];
            let block_sums = blocked_sums.chunks_exact_mut(BLOCK * lanes);
            for (block, block_sums) in blocks.chunks_exact(nf * BLOCK).zip(block_sums) {
                let leaves = self.mask_leaves(mask, block);
                // Up to four classes, the common case, a leaf is one `Lanes`: no inner loop.
                if lanes == 1 {
                    for (leaf, sum) in leaves.into_iter().zip(block_sums) {
                        add_lanes(sum, &values[leaf]);
                    }
                    continue;
                }
                for (leaf, sums) in leaves.into_iter().zip(block_sums.chunks_exact_mut(lanes)) {
                    add(sums, &values[leaf * lanes..(leaf + 1) * lanes]);
                }
            }
        }
        // Too few to block: each goes down every tree in turn.
        for (row, sums) in (blocked..taken.len()).zip(rest_sums.chunks_exact_mut(lanes)) {
            let values = &dense[row * nf..(row + 1) * nf];
            for &root in &self.roots {
                let leaf = self.walk(root, values) as usize;
                add(sums, &self.leaf_values[leaf * lanes..(leaf + 1) * lanes]);
            }
        }
        let mut out = vec![None; n_rows];
        for (i, &r) in taken.iter().enumerate() {
            let label = match self.aggregate {
                // One tree's label is its leaf's score, not the largest probability.
                Aggregate::Single { .. } => {
                    let leaf = self.walk(self.roots[0], &dense[i * nf..(i + 1) * nf]);
                    self.leaf_labels[leaf as usize]
                }
                Aggregate::Ensemble { .. } => 0,
            };
            let row = sums[i * lanes..(i + 1) * lanes].as_flattened();
            out[r] = Some(self.finish(model, &row[..self.width], label));
        }
        out
    }

    fn finish(&self, model: &PmmlModel, sums: &[f64], label: usize) -> Prediction {
        if sums.iter().any(|v| v.is_nan()) {
            return Prediction::Missing;
        }
        match self.aggregate {
            Aggregate::Single {
                classification: true,
            } => Prediction::Class {
                label,
                probabilities: sums.to_vec(),
            },
            Aggregate::Single {
                classification: false,
            } => Prediction::Value(model.rescaled(sums[0])),
            Aggregate::Ensemble {
                classification: true,
                divisor,
            } => {
                let probabilities: Vec<f64> = sums.iter().map(|s| s / divisor).collect();
                Prediction::Class {
                    label: argmax(&probabilities),
                    probabilities,
                }
            }
            Aggregate::Ensemble {
                classification: false,
                divisor,
            } => Prediction::Value(model.rescaled(sums[0] / divisor)),
        }
    }

    #[inline]
    fn walk(&self, root: u32, row: &[f64]) -> u32 {
        let mut node = self.nodes[root as usize];
        while node.yes != NO_CHILD {
            let next = if node.test.holds(row) {
                node.yes
            } else {
                node.no
            };
            node = self.nodes[next as usize];
        }
        node.no
    }

    /// The leaf each row of a feature-major block reaches: a failed test rules out its `yes`
    /// subtree's leaves, and the row's leaf is the leftmost one left.
    #[inline]
    fn mask_leaves(&self, tree: &MaskTree, block: &[f64]) -> [usize; BLOCK] {
        let mut reachable = [u64::MAX; BLOCK];
        for s in &self.below[tree.below.clone()] {
            let at = s.feature as usize * BLOCK;
            for (reachable, value) in reachable.iter_mut().zip(&block[at..at + BLOCK]) {
                // All ones when `value < threshold`, from the sign of the difference (values
                // are finite and +0 for -0, so the sign is exactly the comparison): no branch.
                let below = (*value - s.threshold).to_bits() as i64 >> 63;
                *reachable &= s.keep | below as u64;
            }
        }
        for s in &self.sets[tree.sets.clone()] {
            let at = s.feature as usize * BLOCK;
            for (reachable, value) in reachable.iter_mut().zip(&block[at..at + BLOCK]) {
                let inside = 0u64.wrapping_sub(in_set(*value, s.set) as u64);
                *reachable &= s.keep | inside;
            }
        }
        let mut out = [0; BLOCK];
        for (o, r) in out.iter_mut().zip(reachable) {
            // invariant: a row's own leaf is never ruled out, so a bit below the tree's leaf
            // count is set.
            *o = r.trailing_zeros() as usize;
        }
        out
    }

    fn mask_form(&mut self, root: u32) -> Option<MaskTree> {
        let mut below = Vec::new();
        let mut sets = Vec::new();
        let mut leaves = Vec::new();
        add_mask(&self.nodes, root, &mut below, &mut sets, &mut leaves)?;
        let (b0, s0, v0) = (self.below.len(), self.sets.len(), self.mask_values.len());
        self.below.extend(below);
        self.sets.extend(sets);
        for leaf in leaves {
            let at = leaf as usize * self.lanes;
            self.mask_values
                .extend_from_slice(&self.leaf_values[at..at + self.lanes]);
        }
        Some(MaskTree {
            below: b0..self.below.len(),
            sets: s0..self.sets.len(),
            values: v0..self.mask_values.len(),
        })
    }
}

/// A test's subtrees are visited only while the tree has at most 63 tests, so the recursion
/// stops within 64 levels whatever the tree's depth.
fn add_mask(
    nodes: &[Bin],
    at: u32,
    below: &mut Vec<MaskBelow>,
    sets: &mut Vec<MaskSet>,
    leaves: &mut Vec<u32>,
) -> Option<()> {
    let node = nodes[at as usize];
    if node.yes == NO_CHILD {
        if leaves.len() == MAX_MASK_LEAVES {
            return None;
        }
        leaves.push(node.no);
        return Some(());
    }
    if below.len() + sets.len() >= MAX_MASK_LEAVES - 1 {
        return None;
    }
    // Reserve the test's place before its subtrees, so that the count above bounds depth.
    let slot = match node.test {
        Test::Below { feature, threshold } => {
            below.push(MaskBelow {
                threshold,
                keep: u64::MAX,
                feature,
            });
            Ok(below.len() - 1)
        }
        Test::In { feature, set } => {
            sets.push(MaskSet {
                set,
                keep: u64::MAX,
                feature,
            });
            Err(sets.len() - 1)
        }
    };
    let first = leaves.len();
    add_mask(nodes, node.yes, below, sets, leaves)?;
    let keep = !(leaf_bits(leaves.len()) & !leaf_bits(first));
    match slot {
        Ok(i) => below[i].keep = keep,
        Err(i) => sets[i].keep = keep,
    }
    add_mask(nodes, node.no, below, sets, leaves)
}

#[inline]
fn add(sums: &mut [Lanes], values: &[Lanes]) {
    for (sum, v) in sums.iter_mut().zip(values) {
        add_lanes(sum, v);
    }
}

#[inline]
fn add_lanes(sum: &mut Lanes, values: &Lanes) {
    for (s, v) in sum.iter_mut().zip(values) {
        *s += v;
    }
}

fn leaf_bits(n: usize) -> u64 {
    u64::MAX.checked_shr(64 - n as u32).unwrap_or(0)
}

/// The first `n_rows` rows in blocks of `BLOCK`, each block feature-major.
fn feature_major(rows: &[f64], nf: usize, n_rows: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n_rows * nf);
    for first in (0..n_rows).step_by(BLOCK) {
        for f in 0..nf {
            // +0 for -0: see `mask_leaves`.
            out.extend((first..first + BLOCK).map(|r| rows[r * nf + f] + 0.0));
        }
    }
    out
}

/// A tree test in the kernel's terms: the test and whether the predicate is its negation.
enum Compiled {
    Always,
    Never,
    Test(Test, bool),
}

impl Builder<'_> {
    fn feature(&mut self, column: usize) -> u32 {
        match self.features.iter().position(|c| *c == column) {
            Some(i) => i as u32,
            None => {
                self.features.push(column);
                (self.features.len() - 1) as u32
            }
        }
    }

    fn leaf(&mut self, values: &[f64], label: usize) -> u32 {
        let index = (self.leaf_values.len() / self.width) as u32;
        self.leaf_values.extend_from_slice(values);
        self.leaf_labels.push(label);
        self.nodes.push(Bin {
            test: Test::Below {
                feature: 0,
                threshold: 0.0,
            },
            yes: NO_CHILD,
            no: index,
        });
        (self.nodes.len() - 1) as u32
    }

    fn null_leaf(&mut self) -> u32 {
        self.has_null = true;
        let values = vec![f64::NAN; self.width];
        self.leaf(&values, 0)
    }

    /// `vote`: `None` for a single tree (leaves are its result), `Some(true)` for a vote (a
    /// leaf adds `weight` to its label), `Some(false)` for sums of probabilities or values.
    fn tree(&mut self, tree: &Tree, weight: f64, vote: Option<bool>) -> Option<u32> {
        match self.compile_predicate(&tree.nodes[0].predicate)? {
            Compiled::Always => self.node(tree, 0, weight, vote),
            _ => None,
        }
    }

    fn node(&mut self, tree: &Tree, at: u32, weight: f64, vote: Option<bool>) -> Option<u32> {
        if tree.nodes[at as usize].children.is_empty() {
            return Some(self.scored_leaf(tree, at, weight, vote));
        }
        self.chain(tree, at, 0, weight, vote)
    }

    /// Children `from..` of node `at`, each taken if its predicate holds and no earlier one
    /// did; past the last, the node's own score (`returnLastPrediction`) or null.
    fn chain(
        &mut self,
        tree: &Tree,
        at: u32,
        from: usize,
        weight: f64,
        vote: Option<bool>,
    ) -> Option<u32> {
        let node = &tree.nodes[at as usize];
        let Some(&child) = node.children.get(from) else {
            return Some(if tree.last_prediction && node.score.is_some() {
                self.scored_leaf(tree, at, weight, vote)
            } else {
                self.null_leaf()
            });
        };
        let predicate = &tree.nodes[child as usize].predicate;
        // A last child whose predicate is the complement of the one before it holds whenever
        // it is reached on a complete row.
        let complement = from + 2 == node.children.len()
            && complements(
                predicate,
                &tree.nodes[node.children[from + 1] as usize].predicate,
            );
        match self.compile_predicate(predicate)? {
            Compiled::Always => self.node(tree, child, weight, vote),
            Compiled::Never => self.chain(tree, at, from + 1, weight, vote),
            Compiled::Test(test, negated) => {
                let taken = self.node(tree, child, weight, vote)?;
                let rest = if complement {
                    self.node(tree, node.children[from + 1], weight, vote)?
                } else {
                    self.chain(tree, at, from + 1, weight, vote)?
                };
                let (yes, no) = if negated {
                    (rest, taken)
                } else {
                    (taken, rest)
                };
                self.nodes.push(Bin { test, yes, no });
                Some((self.nodes.len() - 1) as u32)
            }
        }
    }

    fn scored_leaf(&mut self, tree: &Tree, at: u32, weight: f64, vote: Option<bool>) -> u32 {
        let node = &tree.nodes[at as usize];
        let Some(score) = node.score else {
            return self.null_leaf();
        };
        let label = score as usize;
        let values: Vec<f64> = match (vote, node.probabilities.is_empty()) {
            (Some(true), _) => (0..self.width)
                .map(|c| if c == label { weight } else { 0.0 })
                .collect(),
            (_, false) if weight == 1.0 => node.probabilities.clone(),
            (_, false) => node.probabilities.iter().map(|p| weight * p).collect(),
            (_, true) if weight == 1.0 => vec![score],
            (_, true) => vec![weight * score],
        };
        self.leaf(&values, label)
    }

    fn compile_predicate(&mut self, p: &Predicate) -> Option<Compiled> {
        Some(match p {
            Predicate::True => Compiled::Always,
            Predicate::False => Compiled::Never,
            // On a complete row these are constants.
            Predicate::IsMissing(_) => Compiled::Never,
            Predicate::IsNotMissing(_) => Compiled::Always,
            Predicate::Compare { column, op, value } => {
                // Category codes are whole numbers; numbers tested for equality are not
                // codes (1.5 would truncate to 1), so those stay on the exact path.
                if self.columns[*column].is_string() {
                    let feature = self.feature(*column);
                    let set = code_set(&[*value])?;
                    return Some(Compiled::Test(
                        Test::In { feature, set },
                        *op == Op::NotEqual,
                    ));
                }
                if value.is_nan() {
                    return None;
                }
                let (threshold, negated) = match op {
                    Op::LessThan => (*value, false),
                    Op::LessOrEqual => (next_up(*value), false),
                    Op::GreaterThan => (next_up(*value), true),
                    Op::GreaterOrEqual => (*value, true),
                    Op::Equal | Op::NotEqual => return None,
                };
                let feature = self.feature(*column);
                Compiled::Test(Test::Below { feature, threshold }, negated)
            }
            Predicate::Set {
                column,
                values,
                is_in,
            } => {
                if !self.columns[*column].is_string() {
                    return None;
                }
                let feature = self.feature(*column);
                let set = code_set(values)?;
                Compiled::Test(Test::In { feature, set }, !is_in)
            }
            _ => return None,
        })
    }
}

/// The least double above `v` (∞ for ∞): `x <= v` is `x < next_up(v)` for every double `x`.
fn next_up(v: f64) -> f64 {
    if v.is_nan() || v == f64::INFINITY {
        return v;
    }
    if v == 0.0 {
        return f64::from_bits(1);
    }
    let bits = v.to_bits();
    f64::from_bits(if v > 0.0 { bits + 1 } else { bits - 1 })
}

/// Category codes 0..64 as a bitmask; `None` if a value is not such a code.
fn code_set(values: &[f64]) -> Option<u64> {
    let mut set = 0u64;
    for v in values {
        if v.fract() != 0.0 || !(0.0..64.0).contains(v) {
            return None;
        }
        set |= 1 << (*v as u32);
    }
    Some(set)
}

fn complements(a: &Predicate, b: &Predicate) -> bool {
    match (a, b) {
        (
            Predicate::Compare {
                column: c1,
                op: o1,
                value: v1,
            },
            Predicate::Compare {
                column: c2,
                op: o2,
                value: v2,
            },
        ) => {
            let opposite = matches!(
                (o1, o2),
                (Op::LessOrEqual, Op::GreaterThan)
                    | (Op::GreaterThan, Op::LessOrEqual)
                    | (Op::LessThan, Op::GreaterOrEqual)
                    | (Op::GreaterOrEqual, Op::LessThan)
                    | (Op::Equal, Op::NotEqual)
                    | (Op::NotEqual, Op::Equal)
            );
            c1 == c2 && v1 == v2 && opposite
        }
        (
            Predicate::Set {
                column: c1,
                values: v1,
                is_in: i1,
            },
            Predicate::Set {
                column: c2,
                values: v2,
                is_in: i2,
            },
        ) => c1 == c2 && v1 == v2 && i1 != i2,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::super::fields::Raw;
    use super::super::PmmlModel;

    const COLORS: [&str; 4] = ["red", "green", "blue", "amber"];

    /// A random subtree as PMML: numeric splits of all four orderings (the second child the
    /// complement or `True`), string equality and set splits.
    fn node(rng: &mut impl Rng, depth: usize, out: &mut String, classification: bool) {
        if depth == 0 || rng.gen_bool(0.15) {
            if classification {
                let a: f64 = rng.gen_range(0.0..1.0);
                let label = if a > 0.5 { "yes" } else { "no" };
                let at = out.rfind("<Node").unwrap() + 5;
                out.insert_str(at, &format!(r#" score="{label}""#));
                out.push_str(&format!(
                    r#"<ScoreDistribution value="yes" recordCount="{a}"/><ScoreDistribution value="no" recordCount="{}"/>"#,
                    1.0 - a
                ));
            }
            return;
        }
        let (first, second) = match rng.gen_range(0..4) {
            0 => {
                let t: f64 = (rng.gen_range(-2.0..2.0f64) * 4.0).round() / 4.0;
                let ops = [
                    ("lessOrEqual", "greaterThan"),
                    ("lessThan", "greaterOrEqual"),
                    ("greaterThan", "lessOrEqual"),
                    ("greaterOrEqual", "lessThan"),
                ];
                let (a, b) = ops[rng.gen_range(0..4)];
                let f = ["x", "y"][rng.gen_range(0..2)];
                let second = if rng.gen_bool(0.5) {
                    format!(r#"<SimplePredicate field="{f}" operator="{b}" value="{t}"/>"#)
                } else {
                    "<True/>".into()
                };
                (
                    format!(r#"<SimplePredicate field="{f}" operator="{a}" value="{t}"/>"#),
                    second,
                )
            }
            1 => {
                let c = COLORS[rng.gen_range(0..4)];
                let op = if rng.gen_bool(0.5) {
                    "equal"
                } else {
                    "notEqual"
                };
                (
                    format!(r#"<SimplePredicate field="color" operator="{op}" value="{c}"/>"#),
                    "<True/>".into(),
                )
            }
            _ => {
                let op = if rng.gen_bool(0.5) { "isIn" } else { "isNotIn" };
                let (a, b) = (COLORS[rng.gen_range(0..4)], COLORS[rng.gen_range(0..4)]);
                (
                    format!(
                        r#"<SimpleSetPredicate field="color" booleanOperator="{op}"><Array type="string">{a} {b}</Array></SimpleSetPredicate>"#
                    ),
                    "<True/>".into(),
                )
            }
        };
        for predicate in [first, second] {
            out.push_str("<Node>");
            out.push_str(&predicate);
            node(rng, depth - 1, out, classification);
            out.push_str("</Node>");
        }
    }

    fn forest(rng: &mut impl Rng, trees: usize, depth: usize, classification: bool) -> String {
        let function = if classification {
            "classification"
        } else {
            "regression"
        };
        let mut segments = String::new();
        for i in 0..trees {
            let mut body = String::from("<Node><True/>");
            node(rng, depth, &mut body, classification);
            body.push_str("</Node>");
            if !classification {
                // Regression: a score on every node, so that `returnLastPrediction` has one.
                let mut scored = String::new();
                for (k, piece) in body.split("<Node>").enumerate() {
                    if k > 0 {
                        let score: f64 = rng.gen_range(-5.0..5.0);
                        scored.push_str(&format!(r#"<Node score="{score}">"#));
                    }
                    scored.push_str(piece);
                }
                body = scored;
            }
            segments.push_str(&format!(
                r#"<Segment id="{i}"><True/><TreeModel functionName="{function}" noTrueChildStrategy="returnLastPrediction"><MiningSchema><MiningField name="x"/><MiningField name="y"/><MiningField name="color"/></MiningSchema>{body}</TreeModel></Segment>"#
            ));
        }
        let target = if classification {
            r#"<DataField name="t" optype="categorical" dataType="string"><Value value="yes"/><Value value="no"/></DataField>"#
        } else {
            r#"<DataField name="t" optype="continuous" dataType="double"/>"#
        };
        let method = if classification { "average" } else { "sum" };
        format!(
            r#"<PMML xmlns="http://www.dmg.org/PMML-4_4" version="4.4"><DataDictionary>{target}<DataField name="x" optype="continuous" dataType="double"/><DataField name="y" optype="continuous" dataType="float"/><DataField name="color" optype="categorical" dataType="string"><Value value="red"/><Value value="green"/><Value value="blue"/><Value value="amber"/></DataField></DataDictionary><MiningModel functionName="{function}"><MiningSchema><MiningField name="t" usageType="target"/><MiningField name="x"/><MiningField name="y"/><MiningField name="color" invalidValueTreatment="asIs"/></MiningSchema><Segmentation multipleModelMethod="{method}" missingPredictionTreatment="returnMissing">{segments}</Segmentation></MiningModel></PMML>"#
        )
    }

    #[test]
    fn kernel_equals_the_exact_walk_to_the_bit() {
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(9);
        for round in 0..24 {
            let classification = round % 2 == 0;
            // Depth 8 grows trees past 64 leaves, which are walked rather than masked.
            let depth = if round % 3 == 0 { 8 } else { 4 };
            let trees = rng.gen_range(1..6);
            let text = forest(&mut rng, trees, depth, classification);
            let model = PmmlModel::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert!(model.has_kernel(), "round {round}");
            for n_rows in [0, 1, 7, 8, 9, 17, 40] {
                let mut inputs = Vec::new();
                for _ in 0..n_rows {
                    let edges = [-2.0, -0.0, 0.0, 0.25, 1.0, 2.0];
                    let value = |rng: &mut rand_xoshiro::Xoshiro256PlusPlus| {
                        if rng.gen_bool(0.4) {
                            edges[rng.gen_range(0..edges.len())]
                        } else {
                            rng.gen_range(-2.5..2.5)
                        }
                    };
                    let (x, y) = (value(&mut rng), value(&mut rng));
                    let color = ["red", "green", "blue", "amber", "violet"][rng.gen_range(0..5)];
                    inputs.push(model.prepare(0, Raw::Number(x)).unwrap());
                    inputs.push(model.prepare(1, Raw::Number(y)).unwrap());
                    inputs.push(model.prepare(2, Raw::Text(color)).unwrap());
                }
                assert_eq!(
                    model.predict_rows(&inputs),
                    model.predict_rows_exact(&inputs),
                    "round {round}, {n_rows} rows"
                );
            }
        }
    }
}
