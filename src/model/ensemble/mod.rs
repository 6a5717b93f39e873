//! Tree ensembles from other libraries — XGBoost JSON, LightGBM text and ONNX `ai.onnx.ml`
//! tree ensembles — compiled into one form and scored the way their own library scores them.
//!
//! Each loader (`xgboost`, `lightgbm`, `onnx`) reads its file into an [`Ensemble`]: binary
//! trees whose every split is `x < threshold` (the library's own comparison rewritten into
//! that form at load time: `<=` becomes `<` of the next representable threshold, `>=` swaps
//! the branches), one "special" branch for a missing value (and, for LightGBM's zero-as-missing
//! splits, for zero), leaves adding weights to output accumulators, and a [`Finish`] that turns
//! the accumulators into the library's prediction. Accumulation runs in the library's own
//! precision (`f32` for XGBoost and onnxruntime, `f64` for LightGBM) and in its tree order, so
//! the sums, not just the labels, come out as the library's.
//!
//! [`Ensemble::validate`] is the one gate every loader's output passes: indices in range,
//! every tree a tree (no node reached twice, so no cycles, and every path ends at a leaf),
//! no NaN threshold or non-finite leaf, outputs consistent with the classes.

mod finish;
mod kernel;
pub mod lightgbm;
pub mod onnx;
pub mod xgboost;

use crate::model::pmml::Prediction;
use crate::model::ModelError;

pub use self::finish::Finish;
use self::kernel::Kernel;

/// The library a model came from; decides how inputs are read and sums are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Xgboost,
    Lightgbm,
    Onnx,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Xgboost => "xgboost",
            Format::Lightgbm => "lightgbm",
            Format::Onnx => "onnx",
        }
    }

    /// XGBoost and onnxruntime read features as `f32` and add leaves in `f32`; LightGBM
    /// keeps doubles throughout.
    fn single_precision(self) -> bool {
        !matches!(self, Format::Lightgbm)
    }
}

/// Largest tree depth accepted: far beyond any trained model (LightGBM's deepest default
/// trees are a few dozen levels), small enough that a walk is always short.
pub const MAX_DEPTH: usize = 4096;
/// Largest number of nodes in one file, over all trees.
pub const MAX_NODES: usize = 1 << 24;
/// Largest input width and class count a file may state: what it states is allocated before
/// the trees can contradict it, so a hostile count must not reach the allocator.
pub const MAX_FEATURES: usize = 1 << 20;
pub const MAX_CLASSES: usize = 1 << 16;

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `x < threshold` goes to `yes`, otherwise to `no`; a missing value (NaN), and zero when
    /// `zero_special`, goes to `yes` if `special_yes`, else `no`.
    Split {
        feature: u32,
        threshold: f64,
        yes: u32,
        no: u32,
        special_yes: bool,
        zero_special: bool,
    },
    /// Weights added to the accumulators (`(output, weight)`, in the file's order).
    Leaf { weights: Vec<(u32, f64)> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub nodes: Vec<Node>,
    pub root: u32,
}

/// A loaded ensemble: trees, accumulators and the library's finishing step.
#[derive(Debug)]
pub struct Ensemble {
    pub format: Format,
    /// Input columns, in the order rows hold them.
    pub features: Vec<String>,
    /// A classifier's classes, in output order; empty for a regression.
    pub classes: Vec<String>,
    pub trees: Vec<Tree>,
    /// Number of accumulators the leaves add to.
    pub n_outputs: usize,
    /// What each accumulator starts from (already in the library's margin form).
    pub base: Vec<f64>,
    pub finish: Finish,
    /// What the file says about itself (objective, library version, ...), for `GET /model`.
    pub summary: serde_json::Value,
    kernel: Option<Kernel>,
}

impl Ensemble {
    /// Checks the trees and compiles the scoring kernel.
    // The parts are independent facts each loader reads from its file; a builder struct
    // would only restate them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        format: Format,
        features: Vec<String>,
        classes: Vec<String>,
        trees: Vec<Tree>,
        n_outputs: usize,
        base: Vec<f64>,
        finish: Finish,
        summary: serde_json::Value,
    ) -> Result<Self, ModelError> {
        let mut ensemble = Self {
            format,
            features,
            classes,
            trees,
            n_outputs,
            base,
            finish,
            summary,
            kernel: None,
        };
        ensemble.validate()?;
        ensemble.kernel = Some(Kernel::compile(&ensemble));
        Ok(ensemble)
    }

    pub fn is_classification(&self) -> bool {
        !self.classes.is_empty()
    }

    pub fn n_trees(&self) -> usize {
        self.trees.len()
    }

    /// The structural checks every loader's output passes before it can score.
    fn validate(&self) -> Result<(), ModelError> {
        let invalid = |m: String| Err(ModelError::Invalid(m));
        if self.features.is_empty() {
            return invalid("the model reads no features".into());
        }
        if self.n_outputs == 0 || self.base.len() != self.n_outputs {
            return invalid(format!(
                "{} base values for {} outputs",
                self.base.len(),
                self.n_outputs
            ));
        }
        if let Some(b) = self.base.iter().find(|b| !b.is_finite()) {
            return invalid(format!("base score {b} is not finite"));
        }
        self.finish.check(self)?;
        let n_features = self.features.len();
        let total: usize = self.trees.iter().map(|t| t.nodes.len()).sum();
        if total > MAX_NODES {
            return invalid(format!("{total} nodes: more than {MAX_NODES}"));
        }
        let mut seen = Vec::new();
        let mut stack = Vec::new();
        for (t, tree) in self.trees.iter().enumerate() {
            let n = tree.nodes.len();
            if n == 0 {
                return invalid(format!("tree {t} has no nodes"));
            }
            if tree.root as usize >= n {
                return invalid(format!("tree {t}: root {} out of range", tree.root));
            }
            seen.clear();
            seen.resize(n, false);
            stack.clear();
            stack.push((tree.root, 0usize));
            while let Some((i, depth)) = stack.pop() {
                let i = i as usize;
                if std::mem::replace(&mut seen[i], true) {
                    return invalid(format!(
                        "tree {t}: node {i} is reached twice (a cycle or a shared subtree), so the tree does not end in leaves"
                    ));
                }
                if depth > MAX_DEPTH {
                    return invalid(format!("tree {t} is deeper than {MAX_DEPTH}"));
                }
                match &tree.nodes[i] {
                    Node::Split {
                        feature,
                        threshold,
                        yes,
                        no,
                        ..
                    } => {
                        if *feature as usize >= n_features {
                            return invalid(format!(
                                "tree {t}, node {i}: feature {feature} out of range (the model has {n_features})"
                            ));
                        }
                        if threshold.is_nan() {
                            return invalid(format!("tree {t}, node {i}: threshold is NaN"));
                        }
                        for child in [*yes, *no] {
                            if child as usize >= n {
                                return invalid(format!(
                                    "tree {t}, node {i}: child {child} out of range ({n} nodes)"
                                ));
                            }
                            stack.push((child, depth + 1));
                        }
                    }
                    Node::Leaf { weights } => {
                        for (output, w) in weights {
                            if *output as usize >= self.n_outputs {
                                return invalid(format!(
                                    "tree {t}, leaf {i}: output {output} out of range ({} outputs)",
                                    self.n_outputs
                                ));
                            }
                            if !w.is_finite() {
                                return invalid(format!(
                                    "tree {t}, leaf {i}: weight {w} is not finite"
                                ));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Predictions for rows of `features.len()` values each; NaN is a missing value.
    pub fn predict_rows(&self, rows: &[f64]) -> Vec<Prediction> {
        self.predict_rows_on(None, rows)
    }

    /// `predict_rows` in the kernel's given form (`kernel::Path::available`), else its own.
    fn predict_rows_on(&self, path: Option<kernel::Path>, rows: &[f64]) -> Vec<Prediction> {
        let n = self.features.len();
        let prepared = self.prepare(rows);
        let sums = match (&self.kernel, path) {
            (Some(k), Some(path)) => k.sums_on(path, self, &prepared),
            (Some(k), None) => k.sums(self, &prepared),
            (None, _) => Vec::new(),
        };
        let width = self.n_outputs;
        prepared
            .chunks_exact(n)
            .enumerate()
            .map(|(r, _)| self.finish.apply(self, &sums[r * width..(r + 1) * width]))
            .collect()
    }

    /// Predictions by walking every tree node by node, one row at a time: the reference the
    /// kernel is tested against.
    pub fn predict_rows_walked(&self, rows: &[f64]) -> Vec<Prediction> {
        let n = self.features.len();
        let prepared = self.prepare(rows);
        prepared
            .chunks_exact(n)
            .map(|row| {
                let sums = if self.format.single_precision() {
                    let mut acc: Vec<f32> = self.base.iter().map(|b| *b as f32).collect();
                    for tree in &self.trees {
                        for (o, w) in self.leaf(tree, row) {
                            acc[*o as usize] += *w as f32;
                        }
                    }
                    acc.into_iter().map(f64::from).collect::<Vec<_>>()
                } else {
                    let mut acc = self.base.clone();
                    for tree in &self.trees {
                        for (o, w) in self.leaf(tree, row) {
                            acc[*o as usize] += *w;
                        }
                    }
                    acc
                };
                self.finish.apply(self, &sums)
            })
            .collect()
    }

    fn leaf<'t>(&self, tree: &'t Tree, row: &[f64]) -> &'t [(u32, f64)] {
        let mut i = tree.root as usize;
        loop {
            match &tree.nodes[i] {
                Node::Leaf { weights } => return weights,
                Node::Split {
                    feature,
                    threshold,
                    yes,
                    no,
                    special_yes,
                    zero_special,
                } => {
                    let x = row[*feature as usize];
                    let go_yes = if x.is_nan() || (*zero_special && x == 0.0) {
                        *special_yes
                    } else {
                        x < *threshold
                    };
                    i = if go_yes { *yes } else { *no } as usize;
                }
            }
        }
    }

    /// Rows as the library sees them: XGBoost and onnxruntime read `f32`; LightGBM's dense
    /// input drops values within ±1e-35 (its `kZeroThreshold`), which then read as 0.
    fn prepare(&self, rows: &[f64]) -> Vec<f64> {
        match self.format {
            Format::Xgboost | Format::Onnx => rows.iter().map(|v| *v as f32 as f64).collect(),
            Format::Lightgbm => rows
                .iter()
                .map(|v| {
                    if v.abs() <= lightgbm::ZERO_THRESHOLD {
                        0.0
                    } else {
                        *v
                    }
                })
                .collect(),
        }
    }

    /// One row's prediction from named arguments (Openscoring's evaluate): absent or null
    /// is missing; anything but a number is refused.
    pub fn evaluate(
        &self,
        arguments: &serde_json::Map<String, serde_json::Value>,
        names: &[String],
    ) -> Result<Prediction, String> {
        let mut row = Vec::with_capacity(names.len());
        for name in names {
            row.push(match arguments.get(name) {
                None | Some(serde_json::Value::Null) => f64::NAN,
                Some(serde_json::Value::Number(n)) => n
                    .as_f64()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| format!("argument `{name}` is out of range"))?,
                Some(other) => {
                    return Err(format!("argument `{name}` must be a number, not {other}"))
                }
            });
        }
        Ok(self
            .predict_rows(&row)
            .into_iter()
            .next()
            .unwrap_or(Prediction::Missing))
    }
}

/// `next_up` of a double (the smallest value above it): `x <= t` is `x < next_up(t)`.
pub(crate) fn next_up_f64(t: f64) -> f64 {
    if t.is_nan() || t == f64::INFINITY {
        return t;
    }
    if t == 0.0 {
        return f64::from_bits(1);
    }
    let bits = t.to_bits();
    f64::from_bits(if t > 0.0 { bits + 1 } else { bits - 1 })
}

/// `next_up` in `f32`: for `f32` inputs, `x <= t` is `x < next_up_f32(t)`.
pub(crate) fn next_up_f32(t: f32) -> f32 {
    if t.is_nan() || t == f32::INFINITY {
        return t;
    }
    if t == 0.0 {
        return f32::from_bits(1);
    }
    let bits = t.to_bits();
    f32::from_bits(if t > 0.0 { bits + 1 } else { bits - 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_up_is_the_next_value() {
        assert!(next_up_f64(1.0) > 1.0);
        assert_eq!(next_up_f64(-0.0), f64::from_bits(1));
        assert!(next_up_f64(-1.0) > -1.0);
        assert!((next_up_f32(1.0) as f64) > 1.0);
        let t = 0.3f32;
        let up = next_up_f32(t);
        assert!(t < up);
        assert_eq!(up.to_bits(), t.to_bits() + 1);
    }
}

/// The names to use: `given` (a rename, which must name every one) or the file's own.
pub(crate) fn rename(
    own: Vec<String>,
    given: &[String],
    what: &str,
) -> Result<Vec<String>, ModelError> {
    if given.is_empty() {
        return Ok(own);
    }
    if given.len() != own.len() {
        return Err(ModelError::Invalid(format!(
            "{} {what} names given for a model of {} ({own:?})",
            given.len(),
            own.len()
        )));
    }
    Ok(given.to_vec())
}

#[cfg(test)]
mod deep_tree_tests {
    use super::finish::LgbTransform;
    use super::*;

    /// A chain 40 splits deep (walked, not laid out) next to a shallow tree (laid out), with
    /// missing and zero-special splits: the kernel agrees with the plain walk on every row.
    #[test]
    fn deep_and_shallow_trees_agree_with_the_walk() {
        let depth = 40u32;
        let mut nodes = Vec::new();
        for i in 0..depth {
            nodes.push(Node::Split {
                feature: i % 3,
                threshold: f64::from(i) * 0.1 - 1.0,
                yes: 2 * i + 1,
                no: 2 * i + 2,
                special_yes: i % 2 == 0,
                zero_special: i % 5 == 0,
            });
            nodes.push(Node::Leaf {
                weights: vec![(0, f64::from(i))],
            });
        }
        // Node 2i+2 is the next split; the last one is a leaf.
        let mut chain = Vec::new();
        for i in 0..depth as usize {
            chain.push(nodes[2 * i].clone());
            chain.push(nodes[2 * i + 1].clone());
        }
        chain.push(Node::Leaf {
            weights: vec![(0, -7.5)],
        });
        let deep = Tree {
            nodes: chain,
            root: 0,
        };
        let shallow = Tree {
            nodes: vec![
                Node::Split {
                    feature: 1,
                    threshold: 0.0,
                    yes: 1,
                    no: 2,
                    special_yes: false,
                    zero_special: true,
                },
                Node::Leaf {
                    weights: vec![(0, 0.25)],
                },
                Node::Leaf {
                    weights: vec![(0, -0.5)],
                },
            ],
            root: 0,
        };
        let e = Ensemble::new(
            Format::Lightgbm,
            vec!["a".into(), "b".into(), "c".into()],
            Vec::new(),
            vec![deep, shallow],
            1,
            vec![0.0],
            Finish::Lightgbm {
                transform: LgbTransform::Identity,
                divisor: None,
            },
            serde_json::Value::Null,
        )
        .unwrap();
        let values = [f64::NAN, 0.0, -1.2, -0.35, 0.0999, 3.0, 1e-36];
        let mut rows = Vec::new();
        for a in values {
            for b in values {
                for c in values {
                    rows.extend([a, b, c]);
                }
            }
        }
        let fast = e.predict_rows(&rows);
        assert_eq!(fast, e.predict_rows_walked(&rows));
        assert_eq!(fast.len(), values.len().pow(3));
    }

    /// Random trees, most of at most 64 leaves (scored by leaf masks in plain blocks) and
    /// some larger (laid out or walked), on rows that hit the thresholds, ±0, ±∞ and their
    /// neighbours, some with a missing value: the kernel agrees with the walk on every row.
    #[test]
    fn masked_trees_agree_with_the_walk() {
        use rand::{Rng, SeedableRng};
        const EDGES: [f64; 11] = [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            1e-300,
            -1e-300,
            1e300,
            -1e300,
            f64::MAX,
            f64::MIN,
        ];
        /// A random tree of at most `depth` levels, whose node at `depth` levels from the
        /// bottom is a leaf with probability `leaf(depth)`.
        fn grow(
            rng: &mut impl Rng,
            nodes: &mut Vec<Node>,
            depth: u32,
            leaf: &dyn Fn(u32) -> f64,
        ) -> u32 {
            let at = nodes.len() as u32;
            if depth == 0 || rng.gen_bool(leaf(depth)) {
                nodes.push(Node::Leaf {
                    weights: vec![(0, rng.gen_range(-1.0..1.0))],
                });
                return at;
            }
            nodes.push(Node::Leaf { weights: vec![] });
            let yes = grow(rng, nodes, depth - 1, leaf);
            let no = grow(rng, nodes, depth - 1, leaf);
            nodes[at as usize] = Node::Split {
                feature: rng.gen_range(0..3),
                threshold: if rng.gen_bool(0.5) {
                    EDGES[rng.gen_range(0..EDGES.len())]
                } else {
                    rng.gen_range(-2.0..2.0)
                },
                yes,
                no,
                special_yes: rng.gen_bool(0.5),
                zero_special: false,
            };
            at
        }
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7);
        let trees: Vec<Tree> = (0..40)
            .map(|t| {
                let mut nodes = Vec::new();
                // Deep trees (laid out or walked), bushy ones of 33-64 leaves (`u64` masks)
                // and small ones (`u32` masks).
                match t % 5 {
                    0 => grow(&mut rng, &mut nodes, 9, &|_| 0.3),
                    // Complete to depth 5 and a few splits below: ≈ 37 leaves.
                    1 => grow(&mut rng, &mut nodes, 6, &|d| if d > 1 { 0.0 } else { 0.85 }),
                    _ => grow(&mut rng, &mut nodes, 6, &|_| 0.3),
                };
                Tree { nodes, root: 0 }
            })
            .collect();
        let thresholds: Vec<f64> = trees
            .iter()
            .flat_map(|t| &t.nodes)
            .filter_map(|n| match n {
                Node::Split { threshold, .. } => Some(*threshold),
                Node::Leaf { .. } => None,
            })
            .collect();
        let mut rows = Vec::new();
        for r in 0..4000 {
            for _ in 0..3 {
                rows.push(match rng.gen_range(0..5) {
                    0 => EDGES[rng.gen_range(0..EDGES.len())],
                    1 => f64::INFINITY * if rng.gen_bool(0.5) { 1.0 } else { -1.0 },
                    2 => {
                        let t = thresholds[rng.gen_range(0..thresholds.len())];
                        // The `f64` neighbours, and the `f32`s around `t` (what the
                        // narrowed `f32` thresholds must get right).
                        let f = t as f32;
                        let up = f32::from_bits(f.to_bits().wrapping_add(1));
                        let down = f32::from_bits(f.to_bits().wrapping_sub(1));
                        [
                            t,
                            t.next_up(),
                            t.next_down(),
                            f64::from(f),
                            f64::from(up),
                            f64::from(down),
                        ][rng.gen_range(0..6)]
                    }
                    _ => rng.gen_range(-2.0..2.0),
                });
            }
            // Rows with missing values, so that plain blocks and blocks with a missing value
            // (which the mask forms also take) both occur.
            if r % 11 == 0 {
                let n = rows.len();
                rows[n - 1 - r % 3] = f64::NAN;
                if r % 3 == 0 {
                    rows[n - 1 - (r + 1) % 3] = f64::NAN;
                }
            }
        }
        // LightGBM's f64 sums, and XGBoost's f32 rows (where -1e-300 reads as -0) and sums.
        for (format, finish) in [
            (
                Format::Lightgbm,
                Finish::Lightgbm {
                    transform: LgbTransform::Identity,
                    divisor: None,
                },
            ),
            (
                Format::Xgboost,
                Finish::Xgboost(finish::XgbObjective::Identity),
            ),
        ] {
            let e = Ensemble::new(
                format,
                vec!["a".into(), "b".into(), "c".into()],
                Vec::new(),
                trees.clone(),
                1,
                vec![0.0],
                finish,
                serde_json::Value::Null,
            )
            .unwrap();
            let kernel = e.kernel.as_ref().unwrap();
            assert!(kernel.n_masked() >= 25, "{} mask trees", kernel.n_masked());
            // Both word widths of the mask form are exercised.
            let narrow = kernel.n_masked_narrow();
            assert!(
                narrow >= 5 && kernel.n_masked() - narrow >= 3,
                "{narrow} narrow of {}",
                kernel.n_masked()
            );
            let walked = e.predict_rows_walked(&rows);
            assert_eq!(e.predict_rows(&rows), walked, "{format:?}");
            // Every form this CPU runs (portable, AVX2, AVX-512) on its own.
            for path in kernel::Path::available() {
                let fast = e.predict_rows_on(Some(path), &rows);
                assert_eq!(fast, walked, "{format:?} {path:?}");
                // A last block of 16 rows that is not full (5 rows of padding).
                let n = 1003;
                let part = e.predict_rows_on(Some(path), &rows[..3 * n]);
                assert_eq!(part, walked[..n], "{format:?} {path:?} part");
            }
            // In blocks of 8 in any order, so that a row with a missing value shares its
            // block with complete rows (`predict_rows` groups them apart).
            let shuffled: Vec<f64> = (0..rows.len() / 3)
                .map(|r| (r * 7919) % (rows.len() / 3))
                .flat_map(|r| rows[r * 3..r * 3 + 3].iter().copied())
                .collect();
            let prepared = e.prepare(&shuffled);
            let grouped = kernel.sums(&e, &prepared);
            for path in kernel::Path::available() {
                let mixed = kernel.run_on(path, &e, &prepared);
                assert_eq!(mixed, grouped, "{format:?} {path:?} mixed blocks");
            }
            assert_eq!(
                e.predict_rows(&shuffled),
                e.predict_rows_walked(&shuffled),
                "{format:?} shuffled"
            );
        }
        // LightGBM's missing type Zero: zeros take the default branch too, so blocks with a
        // zero keep the level form, blocks with only NaN take the masks.
        let zero_trees: Vec<Tree> = trees
            .iter()
            .map(|t| Tree {
                nodes: t
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| match n {
                        Node::Split {
                            feature,
                            threshold,
                            yes,
                            no,
                            special_yes,
                            ..
                        } => Node::Split {
                            feature: *feature,
                            threshold: *threshold,
                            yes: *yes,
                            no: *no,
                            special_yes: *special_yes,
                            zero_special: i % 4 == 0,
                        },
                        leaf => leaf.clone(),
                    })
                    .collect(),
                root: t.root,
            })
            .collect();
        let e = Ensemble::new(
            Format::Lightgbm,
            vec!["a".into(), "b".into(), "c".into()],
            Vec::new(),
            zero_trees,
            1,
            vec![0.0],
            Finish::Lightgbm {
                transform: LgbTransform::Identity,
                divisor: None,
            },
            serde_json::Value::Null,
        )
        .unwrap();
        let walked = e.predict_rows_walked(&rows);
        for path in kernel::Path::available() {
            assert_eq!(
                e.predict_rows_on(Some(path), &rows),
                walked,
                "zero {path:?}"
            );
        }
    }
}
