//! Random-forest classifier compiled to flat node arrays.
//!
//! The model file stores each tree as a list of nodes (the shape training produces); loading
//! validates that list and compiles every tree into one contiguous `Vec<FlatNode>` that a
//! row walks with no allocation and no boxed pointers. Trees of up to 64 leaves are also
//! compiled into a branch-free form that scores a block of rows at once (`MaskTree`), which
//! is how whole blocks of a batch are scored; the rows left over walk.

use std::ops::Range;

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::mask::{self, BLOCK};
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

/// Class weights in groups that one vector addition adds up.
type Lanes = [f32; 4];

/// A tree as a set of independent tests instead of a walk (see `mask`).
#[derive(Debug, Clone)]
struct MaskTree {
    /// This tree's part of `Forest::splits`.
    splits: Range<usize>,
    /// This tree's part of `Forest::mask_probs`.
    probs: Range<usize>,
    /// This tree's part of `Forest::class_values`.
    class_values: Range<usize>,
}

/// The scoring form of a forest: every tree's nodes in one array.
#[derive(Debug, Clone)]
pub struct Forest {
    n_features: usize,
    n_classes: usize,
    nodes: Vec<FlatNode>,
    roots: Vec<u32>,
    /// Leaf class distributions, each zero-padded to `lanes` whole `Lanes`: adding one to a
    /// row's sums is then a few vector additions instead of a loop over the classes. Each
    /// lane is the same single addition that loop would do, so no sum changes by a bit.
    leaf_probs: Vec<Lanes>,
    lanes: usize,
    /// Per tree, its mask form, if it has at most `mask::MAX_LEAVES` leaves.
    masks: Vec<Option<MaskTree>>,
    splits: Vec<mask::Split>,
    /// The distributions of each mask tree's leaves in left-to-right order, so that the
    /// leaf number is the index.
    mask_probs: Vec<Lanes>,
    /// The same per class: each mask tree's leaf weights of class 0 in leaf order, padded
    /// by `mask::pad_values`, then class 1, and so on, for the AVX-512 tiles' look-ups.
    class_values: Vec<f32>,
}

/// How `predict_proba` takes rows through the mask trees: 8 at a time in general-purpose
/// code, or 64 at a time with AVX-512 where the CPU has it. Both give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Blocks,
    #[cfg(target_arch = "x86_64")]
    Tiles,
}

impl Form {
    fn fastest() -> Self {
        #[cfg(target_arch = "x86_64")]
        if mask::avx512::available() {
            return Form::Tiles;
        }
        Form::Blocks
    }

    /// Every form this CPU runs, for tests that hold them to one another.
    #[cfg(test)]
    fn available() -> Vec<Self> {
        let mut forms = vec![Form::Blocks];
        if Form::fastest() != Form::Blocks {
            forms.push(Form::fastest());
        }
        forms
    }
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
        let lanes = n_classes.div_ceil(4);
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
                        leaf_probs.extend(distribution.chunks(4).map(|weights| {
                            let mut lane = Lanes::default();
                            lane[..weights.len()].copy_from_slice(weights);
                            lane
                        }));
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
        let mut mask_probs = Vec::new();
        let mut class_values = Vec::new();
        let mut one_class = Vec::new();
        let (mut tree_splits, mut leaves) = (Vec::new(), Vec::new());
        let masks = roots
            .iter()
            .map(|&root| {
                tree_splits.clear();
                leaves.clear();
                let shape = |at: u32| {
                    let node = nodes[at as usize];
                    if node.feature == LEAF {
                        mask::Shape::Leaf(node.left)
                    } else {
                        mask::Shape::Split {
                            threshold: node.threshold,
                            feature: node.feature,
                            yes: node.left,
                            no: node.right,
                            // `comparable` makes a NaN +∞, which fails every split.
                            missing_yes: false,
                        }
                    }
                };
                mask::build(root, &shape, &mut tree_splits, &mut leaves)?;
                let (first_split, first_prob) = (splits.len(), mask_probs.len());
                splits.extend_from_slice(&tree_splits);
                for &leaf in &leaves {
                    let leaf = leaf as usize;
                    mask_probs.extend_from_slice(&leaf_probs[leaf..leaf + lanes]);
                }
                let first_value = class_values.len();
                for class in 0..n_classes {
                    one_class.clear();
                    one_class.extend(
                        leaves
                            .iter()
                            .map(|&leaf| leaf_probs[leaf as usize + class / 4][class % 4]),
                    );
                    mask::pad_values(&one_class, &mut class_values);
                }
                Some(MaskTree {
                    splits: first_split..splits.len(),
                    probs: first_prob..mask_probs.len(),
                    class_values: first_value..class_values.len(),
                })
            })
            .collect();

        Ok(Self {
            n_features,
            n_classes,
            nodes,
            roots,
            leaf_probs,
            lanes,
            masks,
            splits,
            mask_probs,
            class_values,
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
    /// Whole blocks of `BLOCK` rows go through the trees tree-major, which keeps one tree
    /// hot in cache while the batch goes through it, each tree by its mask form when it has
    /// one. The few rows left over walk every tree in turn. Either way each row adds up its
    /// trees' distributions in tree order, so the result is the same to the bit however the
    /// batch is made up.
    pub fn predict_proba(&self, rows: ArrayView2<'_, f64>) -> Array2<f32> {
        self.predict_proba_in(rows, Form::fastest())
    }

    fn predict_proba_in(&self, rows: ArrayView2<'_, f64>, form: Form) -> Array2<f32> {
        debug_assert_eq!(rows.ncols(), self.n_features);
        let n_rows = rows.nrows();
        let w = self.lanes;
        let rows = rows.as_standard_layout();
        let Some(values) = rows.as_slice() else {
            unreachable!("an array in standard layout is one slice")
        };
        let mut sums = vec![Lanes::default(); n_rows * w];
        match form {
            // No features, no splits: every tree is one leaf, and there is nothing to tile.
            #[cfg(target_arch = "x86_64")]
            Form::Tiles if self.n_features > 0 && n_rows >= mask::avx512::WIDE => {
                // SAFETY: `Form::Tiles` is chosen only on a CPU with avx512f and avx512cd.
                unsafe { self.tile_sums(values, n_rows, &mut sums) }
            }
            _ => self.block_sums(values, n_rows, &mut sums),
        }
        let scale = 1.0 / self.roots.len() as f32;
        let mut out = Array2::<f32>::zeros((n_rows, self.n_classes));
        for (mut out, sums) in out.rows_mut().into_iter().zip(sums.chunks_exact(w)) {
            for (p, sum) in out.iter_mut().zip(sums.iter().flatten()) {
                *p = sum * scale;
            }
        }
        out
    }

    /// Each row's class sums, 8 rows at a time through each mask tree.
    fn block_sums(&self, values: &[f64], n_rows: usize, sums: &mut [Lanes]) {
        let n_features = self.n_features;
        let w = self.lanes;
        let blocked_rows = if n_features > 0 {
            n_rows - n_rows % BLOCK
        } else {
            0
        };
        let stride = n_features;
        let row = |r: usize| &values[r * stride..(r + 1) * stride];
        let blocks = if self.masks.iter().any(Option::is_some) {
            feature_major_blocks(values, stride, n_features, blocked_rows)
        } else {
            Vec::new()
        };
        let block_len = n_features * BLOCK;
        let (blocked_sums, rest_sums) = sums.split_at_mut(blocked_rows * w);
        for (&root, mask) in self.roots.iter().zip(&self.masks) {
            let Some(tree) = mask.as_ref().filter(|_| blocked_rows > 0) else {
                for (r, sums) in blocked_sums.chunks_exact_mut(w).enumerate() {
                    let leaf = self.leaf_of(root, row(r)) as usize;
                    add(sums, &self.leaf_probs[leaf..leaf + w]);
                }
                continue;
            };
            let probs = &self.mask_probs[tree.probs.clone()];
            let block_sums = blocked_sums.chunks_exact_mut(BLOCK * w);
            for (block, block_sums) in blocks.chunks_exact(block_len).zip(block_sums) {
                let leaves = self.mask_leaves(tree, block);
                // Up to four classes, the common case, a leaf is one `Lanes`: no inner loop.
                if w == 1 {
                    for (leaf, sum) in leaves.into_iter().zip(block_sums) {
                        add_lanes(sum, &probs[leaf]);
                    }
                    continue;
                }
                for (leaf, sums) in leaves.into_iter().zip(block_sums.chunks_exact_mut(w)) {
                    add(sums, &probs[leaf * w..(leaf + 1) * w]);
                }
            }
        }
        // Too few to block: each goes down every tree in turn, so that a batch of one costs
        // one walk per tree and little else.
        for (r, sums) in (blocked_rows..n_rows).zip(rest_sums.chunks_exact_mut(w)) {
            let row = row(r);
            for &root in &self.roots {
                let leaf = self.leaf_of(root, row) as usize;
                add(sums, &self.leaf_probs[leaf..leaf + w]);
            }
        }
    }

    /// Each row's class sums, in tiles of 64 rows (4 registers of 16) through each mask tree
    /// with AVX-512 (`mask::avx512`, the imported ensembles' form): one compare and one
    /// masked AND per split and 16 rows. The leaves are those `mask::leaves` finds (the same
    /// `x < t` on the same `comparable` values), and each row still adds its trees' leaves in
    /// tree order, so the sums are the same to the bit. A short last tile is padded with its
    /// last row, whose extra leaves are not added.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512cd")]
    fn tile_sums(&self, values: &[f64], n_rows: usize, sums: &mut [Lanes]) {
        use mask::avx512::{self as wide, TILE};
        let n_features = self.n_features;
        let w = self.lanes;
        let mut tiles = Vec::with_capacity(n_rows.div_ceil(TILE) * TILE * n_features);
        let mut tile = Vec::with_capacity(TILE * n_features);
        for first in (0..n_rows).step_by(TILE) {
            let n = (n_rows - first).min(TILE);
            wide::set_tile::<f64>(&mut tile, n_features, &values[first * n_features..], n);
            tiles.extend(tile.iter().map(|&v| mask::comparable(v)));
        }
        // Class `c` of the tile's row `r` at `c * TILE + r` within the tile's part, so that a
        // tree's leaf weights are added 16 rows at a time by register look-ups.
        let n_classes = self.n_classes;
        let per_tile = n_classes * TILE;
        let mut major = vec![0f32; tiles.len() / (TILE * n_features) * per_tile];
        for (&root, mask) in self.roots.iter().zip(&self.masks) {
            let Some(tree) = mask else {
                for r in 0..n_rows {
                    let row = &values[r * n_features..(r + 1) * n_features];
                    let leaf = self.leaf_of(root, row) as usize;
                    let at = r / TILE * per_tile + r % TILE;
                    for class in 0..n_classes {
                        major[at + class * TILE] += self.leaf_probs[leaf + class / 4][class % 4];
                    }
                }
                continue;
            };
            let splits = &self.splits[tree.splits.clone()];
            let class_values = &self.class_values[tree.class_values.clone()];
            let n_leaves = tree.probs.len() / w;
            for (tile, sums) in tiles
                .chunks_exact(TILE * n_features)
                .zip(major.chunks_exact_mut(per_tile))
            {
                let found = wide::leaves::<f64, false>(splits, tile, n_leaves);
                for (values, sums) in class_values
                    .chunks_exact(mask::padded_len(n_leaves))
                    .zip(sums.chunks_exact_mut(TILE))
                {
                    wide::add_leaf_values(&found, values, sums);
                }
            }
        }
        for (r, sums) in sums.chunks_exact_mut(w).enumerate() {
            let at = r / TILE * per_tile + r % TILE;
            for class in 0..n_classes {
                sums[class / 4][class % 4] = major[at + class * TILE];
            }
        }
    }

    /// The leaf number each row of a feature-major block reaches in a mask tree.
    #[inline]
    fn mask_leaves(&self, tree: &MaskTree, block: &[f64]) -> [usize; BLOCK] {
        mask::leaves(&self.splits[tree.splits.clone()], block)
    }

    /// Index into `leaf_probs` of the leaf a row reaches from `root`.
    #[inline]
    fn leaf_of(&self, root: u32, row: &[f64]) -> u32 {
        let mut node = self.nodes[root as usize];
        while node.feature != LEAF {
            let next = if row[node.feature as usize] < node.threshold {
                node.left
            } else {
                node.right
            };
            node = self.nodes[next as usize];
        }
        node.left
    }
}

/// Adds one leaf's class distribution to one row's sums.
#[inline]
fn add(sums: &mut [Lanes], probs: &[Lanes]) {
    for (sum, probs) in sums.iter_mut().zip(probs) {
        add_lanes(sum, probs);
    }
}

#[inline]
fn add_lanes(sum: &mut Lanes, probs: &Lanes) {
    for (sum, p) in sum.iter_mut().zip(probs) {
        *sum += p;
    }
}

/// The first `n_rows` rows (`stride` values apart in `values`) in blocks of `BLOCK`, each
/// block feature-major (feature `f` of the block's row `r` at `f * BLOCK + r`), values made
/// `comparable`.
fn feature_major_blocks(
    values: &[f64],
    stride: usize,
    n_features: usize,
    n_rows: usize,
) -> Vec<f64> {
    let row = |r: usize| &values[r * stride..(r + 1) * stride];
    let mut blocks = Vec::with_capacity(n_rows * n_features);
    for first in (0..n_rows).step_by(BLOCK) {
        mask::push_block(&mut blocks, n_features, |r| row(first + r));
    }
    blocks
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

    /// What `predict_proba` must equal, bit for bit: every row walked down every tree of
    /// the spec, distributions added in tree order, then scaled.
    fn reference(spec: &ForestSpec, n_classes: usize, rows: ArrayView2<'_, f64>) -> Array2<f32> {
        let mut out = Array2::<f32>::zeros((rows.nrows(), n_classes));
        for (row, mut sums) in rows.rows().into_iter().zip(out.rows_mut()) {
            for tree in &spec.trees {
                let mut at = 0;
                let distribution = loop {
                    match &tree.nodes[at] {
                        NodeSpec::Split {
                            feature,
                            threshold,
                            left,
                            right,
                        } => {
                            at = if row[*feature] < *threshold {
                                *left
                            } else {
                                *right
                            }
                        }
                        NodeSpec::Leaf { distribution } => break distribution,
                    }
                };
                for (sum, p) in sums.iter_mut().zip(distribution) {
                    *sum += p;
                }
            }
        }
        let scale = 1.0 / spec.trees.len() as f32;
        out.mapv_inplace(|p| p * scale);
        out
    }

    /// Values where `<` is delicate: equal to a threshold, either zero, subnormal, huge
    /// enough that a difference overflows, infinite, NaN of either sign.
    const EDGES: [f64; 13] = [
        -1.0,
        -0.0,
        0.0,
        0.5,
        1.0,
        5e-324,
        -5e-324,
        1e308,
        -1e308,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -f64::NAN,
    ];

    fn random_tree(
        rng: &mut impl rand::Rng,
        n_features: usize,
        n_classes: usize,
        max_depth: usize,
    ) -> TreeSpec {
        let mut nodes: Vec<NodeSpec> = Vec::new();
        let mut depths = vec![0];
        let mut i = 0;
        while i < depths.len() {
            let depth = depths[i];
            let split = depth < max_depth && (depth < 2 || rng.gen_bool(0.7));
            nodes.push(if split {
                let threshold = if rng.gen_bool(0.5) {
                    EDGES[rng.gen_range(0..EDGES.len() - 4)]
                } else {
                    rng.gen_range(-2.0..2.0)
                };
                depths.extend([depth + 1, depth + 1]);
                NodeSpec::Split {
                    feature: rng.gen_range(0..n_features),
                    threshold,
                    left: depths.len() - 2,
                    right: depths.len() - 1,
                }
            } else {
                let mut distribution: Vec<f32> =
                    (0..n_classes).map(|_| rng.gen_range(0.0..1.0)).collect();
                let total: f32 = distribution.iter().sum();
                distribution.iter_mut().for_each(|p| *p /= total);
                NodeSpec::Leaf { distribution }
            });
            i += 1;
        }
        // Now and then a child shared by two parents: a valid file, if not one training makes.
        if rng.gen_bool(0.3) {
            let at = rng.gen_range(0..nodes.len());
            let len = nodes.len();
            if let NodeSpec::Split { right, .. } = &mut nodes[at] {
                *right = rng.gen_range(at + 1..len);
            }
        }
        TreeSpec { nodes }
    }

    fn random_rows(rng: &mut impl rand::Rng, n_rows: usize, n_cols: usize) -> Array2<f64> {
        Array2::from_shape_fn((n_rows, n_cols), |_| {
            if rng.gen_bool(0.3) {
                EDGES[rng.gen_range(0..EDGES.len())]
            } else {
                rng.gen_range(-2.0..2.0)
            }
        })
    }

    #[test]
    fn equals_walking_every_tree_to_the_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7);
        for round in 0..60 {
            let n_features = rng.gen_range(1..5);
            let n_classes = rng.gen_range(1..7);
            // Depth 8 grows trees past 64 leaves, which are walked rather than masked.
            let max_depth = if round % 4 == 0 { 8 } else { 5 };
            let spec = ForestSpec {
                trees: (0..rng.gen_range(1..12))
                    .map(|_| random_tree(&mut rng, n_features, n_classes, max_depth))
                    .collect(),
            };
            let forest = Forest::compile(&spec, n_features, n_classes).unwrap();
            for n_rows in [0, 1, 7, 8, 9, 16, 37, 64, 65, 150] {
                let rows = random_rows(&mut rng, n_rows, n_features);
                let want = reference(&spec, n_classes, rows.view());
                for form in Form::available() {
                    let got = forest.predict_proba_in(rows.view(), form);
                    assert_eq!(got.shape(), want.shape());
                    for (g, w) in got.iter().zip(&want) {
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "round {round}, {n_rows} rows, {form:?}"
                        );
                    }
                }
            }
            // Rows in a column-major array score the same.
            let rows = random_rows(&mut rng, 21, n_features);
            let column_major = rows.t().as_standard_layout().into_owned();
            let (got, want) = (
                forest.predict_proba(column_major.t()),
                forest.predict_proba(rows.view()),
            );
            assert!(got
                .iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits()));
        }
    }

    #[test]
    fn a_forest_of_leaves_needs_no_features() {
        let spec = ForestSpec {
            trees: vec![TreeSpec {
                nodes: vec![NodeSpec::Leaf {
                    distribution: vec![0.25, 0.75],
                }],
            }],
        };
        let forest = Forest::compile(&spec, 0, 2).unwrap();
        let probs = forest.predict_proba(Array2::<f64>::zeros((9, 0)).view());
        assert_eq!(
            probs,
            Array2::from_shape_fn((9, 2), |(_, c)| [0.25, 0.75][c])
        );
    }
}
