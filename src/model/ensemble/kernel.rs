//! The fast form of an imported ensemble.
//!
//! A tree of depth ≤ `MAX_PERFECT_DEPTH` is laid out as a perfect binary tree in level order
//! (a leaf above the bottom fills every bottom slot of its subtree, so the filler nodes
//! below it may go either way): finding a leaf is `depth` steps of `i = 2i + 1 + no` with no
//! data-dependent branch, done for a block of rows at once so that their independent steps
//! overlap. Deeper trees (LightGBM's leaf-wise trees can be) are walked node by node.
//! A tree of at most 64 leaves also has the native forest's leaf-bitmask form (`mask`),
//! which scores blocks of rows: every split is `x < threshold` on the prepared value (in
//! `f32` lanes against the threshold rounded up to `f32` when the rows are `f32`s), the
//! same test the other forms make, and a NaN goes where its split sends missing values.
//! Only blocks with a zero that some split treats as missing (LightGBM's missing type
//! Zero) take the level-order or walking form, which handle every missing-value rule.
//! On a CPU with AVX-512 the mask trees take 16 rows per register (`mask::avx512`); the
//! plain x86-64 and AVX2 builds of the same loops remain for other CPUs (`Path`).
//! Each row's accumulators start at the base score and take the leaves' weights tree by
//! tree, in the library's precision: the same additions in the same order as the library.

use std::ops::Range;

use super::{Ensemble, Node};
use crate::model::mask;

const MAX_PERFECT_DEPTH: usize = 10;
/// The mask form tests every split of a tree, the level form one per level, so a tree with
/// many splits per level is cheaper by levels. The bound is a judgement from few runs: with
/// SSE2 and `f64` lanes 6 a level was about even; with `f32` lanes and AVX2 a mask split
/// costs about a third as much, and 8 puts every tree of the 100-tree depth-6 XGBoost
/// fixture (up to 46 splits) in the mask form.
const MASK_SPLITS_PER_LEVEL: usize = 8;
const BLOCK: usize = mask::BLOCK;
/// Rows a tree sees before the next tree is loaded.
const TILE: usize = 64;
const SPECIAL_YES: u32 = 1;
const ZERO_SPECIAL: u32 = 2;
const LEAF: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, Default)]
struct Step {
    threshold: f64,
    feature: u32,
    flags: u32,
}

impl Step {
    /// Whether a value goes to the `yes` side.
    #[inline(always)]
    fn yes(self, x: f64) -> bool {
        // Bitwise, not `if`: the comparison's outcome is as good as random, and a branch on
        // it would be mispredicted half the time.
        let special = x.is_nan() | ((x == 0.0) & (self.flags & ZERO_SPECIAL != 0));
        (special & (self.flags & SPECIAL_YES != 0)) | (!special & (x < self.threshold))
    }
}

#[derive(Debug, Clone, Copy)]
struct WalkNode {
    step: Step,
    /// `LEAF` for a leaf, whose id is then `no`.
    yes: u32,
    no: u32,
}

/// What a block of rows holds, which decides the forms it can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// No missing value: every split is `x < threshold`.
    Plain,
    /// Some NaN, but no zero that a split treats as missing: the mask forms' missing-value
    /// variant handles it.
    Missing,
    /// A zero where some split treats zero as missing: the level or walking forms.
    ZeroSpecial,
}

#[derive(Debug, Clone, Copy)]
enum Layout {
    Perfect { depth: u32, steps: u32, slots: u32 },
    Walk { root: u32 },
}

/// The instruction sets the kernel is compiled for, slowest first. Each computes the same
/// comparisons and the same additions in the same order, so they agree to the bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Path {
    /// Plain x86-64 (SSE2), or whatever the target has.
    Portable,
    /// `run` compiled with AVX2.
    Avx2,
    /// Mask trees 16 rows at a time (`mask::avx512`).
    Avx512,
}

impl Path {
    /// The forms this CPU runs.
    pub(super) fn available() -> Vec<Path> {
        #[allow(unused_mut)]
        let mut paths = vec![Path::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") {
                paths.push(Path::Avx2);
                if mask::avx512::available() {
                    paths.push(Path::Avx512);
                }
            }
        }
        paths
    }
}

#[derive(Debug)]
pub struct Kernel {
    layouts: Vec<Layout>,
    steps: Vec<Step>,
    /// Bottom slots of perfect trees: the leaf each one is.
    slots: Vec<u32>,
    walk: Vec<WalkNode>,
    /// Per tree, its range in `mask_splits` and `mask_leaves`, if it has a mask form.
    masks: Vec<Option<(Range<usize>, Range<usize>)>>,
    mask_splits: Vec<mask::Split>,
    /// `mask_splits` narrowed to `f32`, for the formats whose rows are `f32`s (else empty).
    mask_splits32: Vec<mask::Split<f32>>,
    /// Leaf ids of the mask trees' leaves, left to right.
    mask_leaves: Vec<u32>,
    /// Per tree, the one accumulator every leaf adds one weight to, if it has one (XGBoost,
    /// LightGBM, regressions): its mask leaves then add `mask_values` without a look-up.
    single_output: Vec<Option<u32>>,
    /// Parallel to `mask_leaves`: the leaf's weight when its tree has a `single_output`.
    mask_values: Vec<f64>,
    /// `mask_values` in the sums' precision (`f32` or `f64`, the other one empty), each
    /// tree's padded (`mask::pad_values`) for the AVX-512 form; per tree, where its values
    /// start.
    wide_values32: Vec<f32>,
    wide_values64: Vec<f64>,
    wide_values_at: Vec<usize>,
    /// The fastest form this CPU runs.
    path: Path,
    /// Per leaf id, its range in `weights`.
    leaves: Vec<(u32, u32)>,
    weights: Vec<(u32, f64)>,
    single_precision: bool,
    /// Some split treats zero as missing (LightGBM's missing type Zero).
    zero_special: bool,
}

/// A lane type of the AVX-512 form and where the kernel keeps its splits and values.
#[cfg(target_arch = "x86_64")]
trait WideLane: mask::avx512::Lane + Acc {
    fn splits(k: &Kernel) -> &[mask::Split<Self>];
    fn values(k: &Kernel) -> &[Self];
}

#[cfg(target_arch = "x86_64")]
impl WideLane for f32 {
    fn splits(k: &Kernel) -> &[mask::Split<f32>] {
        &k.mask_splits32
    }
    fn values(k: &Kernel) -> &[f32] {
        &k.wide_values32
    }
}

#[cfg(target_arch = "x86_64")]
impl WideLane for f64 {
    fn splits(k: &Kernel) -> &[mask::Split<f64>] {
        &k.mask_splits
    }
    fn values(k: &Kernel) -> &[f64] {
        &k.wide_values64
    }
}

/// The two accumulator precisions.
trait Acc: Copy {
    fn of(v: f64) -> Self;
    fn add(&mut self, w: f64);
    fn get(self) -> f64;
}

impl Acc for f32 {
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn add(&mut self, w: f64) {
        *self += w as f32;
    }
    #[inline(always)]
    fn get(self) -> f64 {
        f64::from(self)
    }
}

impl Acc for f64 {
    #[inline(always)]
    fn of(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn add(&mut self, w: f64) {
        *self += w;
    }
    #[inline(always)]
    fn get(self) -> f64 {
        self
    }
}

impl Kernel {
    pub fn compile(e: &Ensemble) -> Self {
        let mut k = Kernel {
            layouts: Vec::with_capacity(e.trees.len()),
            steps: Vec::new(),
            slots: Vec::new(),
            walk: Vec::new(),
            masks: Vec::with_capacity(e.trees.len()),
            mask_splits: Vec::new(),
            mask_splits32: Vec::new(),
            mask_leaves: Vec::new(),
            single_output: Vec::with_capacity(e.trees.len()),
            mask_values: Vec::new(),
            wide_values32: Vec::new(),
            wide_values64: Vec::new(),
            wide_values_at: Vec::with_capacity(e.trees.len()),
            path: Path::available()
                .into_iter()
                .last()
                .unwrap_or(Path::Portable),
            leaves: Vec::new(),
            weights: Vec::new(),
            single_precision: e.format.single_precision(),
            zero_special: e.trees.iter().any(|t| {
                t.nodes.iter().any(|n| {
                    matches!(
                        n,
                        Node::Split {
                            zero_special: true,
                            ..
                        }
                    )
                })
            }),
        };
        for tree in &e.trees {
            // Leaf ids of this tree's nodes.
            let mut leaf_of = vec![0u32; tree.nodes.len()];
            for (i, node) in tree.nodes.iter().enumerate() {
                if let Node::Leaf { weights } = node {
                    leaf_of[i] = k.leaves.len() as u32;
                    let start = k.weights.len() as u32;
                    k.weights.extend_from_slice(weights);
                    k.leaves.push((start, k.weights.len() as u32));
                }
            }
            let shape = |at: u32| match &tree.nodes[at as usize] {
                Node::Leaf { .. } => mask::Shape::Leaf(leaf_of[at as usize]),
                Node::Split {
                    feature,
                    threshold,
                    yes,
                    no,
                    special_yes,
                    ..
                } => mask::Shape::Split {
                    threshold: *threshold,
                    feature: *feature,
                    yes: *yes,
                    no: *no,
                    missing_yes: *special_yes,
                },
            };
            let depth = depth(tree);
            // Where this tree's padded values start, if it is a mask tree.
            k.wide_values_at.push(if k.single_precision {
                k.wide_values32.len()
            } else {
                k.wide_values64.len()
            });
            let mut outputs = tree.nodes.iter().filter_map(|n| match n {
                Node::Leaf { weights } => Some(match weights.as_slice() {
                    [(o, _)] => Some(*o),
                    _ => None,
                }),
                Node::Split { .. } => None,
            });
            let first = outputs.next().flatten();
            let single = first.filter(|o| outputs.all(|p| p == Some(*o)));
            k.single_output.push(single);
            // `build` numbers leaves from the start of the vectors it is given.
            let (mut splits, mut leaves) = (Vec::new(), Vec::new());
            k.masks.push(
                mask::build(tree.root, &shape, &mut splits, &mut leaves)
                    .filter(|_| splits.len() <= MASK_SPLITS_PER_LEVEL * depth)
                    .map(|()| {
                        let (s, l) = (k.mask_splits.len(), k.mask_leaves.len());
                        k.mask_splits.extend_from_slice(&splits);
                        if k.single_precision {
                            k.mask_splits32.extend(splits.iter().map(|s| s.narrow()));
                        }
                        k.mask_leaves.extend_from_slice(&leaves);
                        k.mask_values.extend(leaves.iter().map(|id| {
                            let (start, end) = k.leaves[*id as usize];
                            match (single, &k.weights[start as usize..end as usize]) {
                                (Some(_), [(_, w)]) => *w,
                                _ => 0.0,
                            }
                        }));
                        let values = &k.mask_values[l..];
                        if k.single_precision {
                            let narrow: Vec<f32> = values.iter().map(|v| *v as f32).collect();
                            mask::pad_values(&narrow, &mut k.wide_values32);
                        } else {
                            mask::pad_values(values, &mut k.wide_values64);
                        }
                        (s..k.mask_splits.len(), l..k.mask_leaves.len())
                    }),
            );
            // A sparse deep tree (a chain, say) would be mostly filler: a file could make the
            // layout hundreds of times its own size. Such trees are walked.
            if depth <= MAX_PERFECT_DEPTH && (1usize << depth) <= 16 * tree.nodes.len() {
                let steps = k.steps.len();
                let slots = k.slots.len();
                k.steps
                    .resize(steps + (1usize << depth) - 1, Step::default());
                k.slots.resize(slots + (1usize << depth), 0);
                let mut stack = vec![(tree.root as usize, 0usize, 0usize)];
                while let Some((i, level, p)) = stack.pop() {
                    match &tree.nodes[i] {
                        Node::Leaf { .. } => {
                            let shift = depth - level;
                            for s in (p << shift)..((p + 1) << shift) {
                                k.slots[slots + s] = leaf_of[i];
                            }
                        }
                        Node::Split { yes, no, .. } => {
                            k.steps[steps + (1 << level) - 1 + p] = step(&tree.nodes[i]);
                            stack.push((*yes as usize, level + 1, 2 * p));
                            stack.push((*no as usize, level + 1, 2 * p + 1));
                        }
                    }
                }
                k.layouts.push(Layout::Perfect {
                    depth: depth as u32,
                    steps: steps as u32,
                    slots: slots as u32,
                });
            } else {
                let offset = k.walk.len() as u32;
                for (i, node) in tree.nodes.iter().enumerate() {
                    k.walk.push(match node {
                        Node::Leaf { .. } => WalkNode {
                            step: Step::default(),
                            yes: LEAF,
                            no: leaf_of[i],
                        },
                        Node::Split { yes, no, .. } => WalkNode {
                            step: step(node),
                            yes: offset + yes,
                            no: offset + no,
                        },
                    });
                }
                k.layouts.push(Layout::Walk {
                    root: offset + tree.root,
                });
            }
        }
        k
    }

    #[cfg(test)]
    pub fn n_masked(&self) -> usize {
        self.masks.iter().filter(|m| m.is_some()).count()
    }

    /// Mask trees with `u32` words (≤ 32 leaves).
    #[cfg(test)]
    pub fn n_masked_narrow(&self) -> usize {
        self.masks
            .iter()
            .flatten()
            .filter(|(_, leaves)| leaves.len() <= 32)
            .count()
    }

    /// Each row's accumulators after every tree (`n_outputs` per row, row-major).
    pub fn sums(&self, e: &Ensemble, rows: &[f64]) -> Vec<f64> {
        self.sums_on(self.path, e, rows)
    }

    /// `sums` in the given form, which the CPU must run (`Path::available`).
    pub(super) fn sums_on(&self, path: Path, e: &Ensemble, rows: &[f64]) -> Vec<f64> {
        let (nf, width) = (e.features.len(), e.n_outputs);
        let n = rows.len() / nf;
        let special: Vec<bool> = rows.chunks_exact(nf).map(|r| !self.plain(r)).collect();
        let n_special = special.iter().filter(|s| **s).count();
        if n_special == 0 || n_special == n {
            return self.run_on(path, e, rows);
        }
        // Rows with a missing value grouped after the others, so that the blocks of complete
        // rows take the plain steps; each row's sums are its own, so order is free.
        let order: Vec<usize> = (0..n)
            .filter(|r| !special[*r])
            .chain((0..n).filter(|r| special[*r]))
            .collect();
        let permuted: Vec<f64> = order
            .iter()
            .flat_map(|r| rows[r * nf..(r + 1) * nf].iter().copied())
            .collect();
        let sums = self.run_on(path, e, &permuted);
        let mut out = vec![0.0; n * width];
        for (i, r) in order.into_iter().enumerate() {
            out[r * width..(r + 1) * width].copy_from_slice(&sums[i * width..(i + 1) * width]);
        }
        out
    }

    /// Each row's accumulators in the given form, which the CPU must run
    /// (`Path::available`), rows in any order.
    pub(super) fn run_on(&self, path: Path, e: &Ensemble, rows: &[f64]) -> Vec<f64> {
        #[cfg(target_arch = "x86_64")]
        if path == Path::Avx512 {
            // SAFETY: `Path::available` lists AVX-512 only for a CPU with avx2, avx512f and
            // avx512cd, all `run_avx512` asks for.
            return unsafe {
                if self.single_precision {
                    self.run_avx512::<f32>(e, rows)
                } else {
                    self.run_avx512::<f64>(e, rows)
                }
            };
        }
        #[cfg(target_arch = "x86_64")]
        if path != Path::Portable {
            // SAFETY: `avx2` says the CPU has AVX2, all `run_avx2` asks for.
            return unsafe {
                if self.single_precision {
                    self.run_avx2::<f32>(e, rows)
                } else {
                    self.run_avx2::<f64>(e, rows)
                }
            };
        }
        if self.single_precision {
            self.run::<f32>(e, rows)
        } else {
            self.run::<f64>(e, rows)
        }
    }

    /// `run` compiled for AVX2: the mask loop's compares and masks take 8 lanes of `f32`
    /// at a time instead of SSE2's 2 lanes of `f64` (the same operations, so the same
    /// answers). Chosen at run time, so the binary still runs on any x86-64.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2<A: Acc>(&self, e: &Ensemble, rows: &[f64]) -> Vec<f64> {
        self.run::<A>(e, rows)
    }

    /// `run` with AVX-512: every mask tree takes tiles of 64 rows, 4 blocks of 16
    /// (`mask::avx512`), a short last tile padded with copies of its last row, whose sums
    /// are not kept. Other trees, and tiles with a zero some split treats as missing, take
    /// the level or walking form row by row. A tile's sums are kept output-major, so that a
    /// tree whose leaves all add to one output adds 16 rows' values at once; each is still
    /// one addition per tree in tree order, in the sums' precision.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512cd")]
    fn run_avx512<V: WideLane>(&self, e: &Ensemble, rows: &[f64]) -> Vec<f64> {
        use mask::avx512::{self as wide, TILE, WIDE};
        let nf = e.features.len();
        let width = e.n_outputs;
        let n_rows = rows.len() / nf;
        let base: Vec<V> = e.base.iter().map(|b| <V as Acc>::of(*b)).collect();
        let mut out = Vec::with_capacity(n_rows * width);
        let mut major: Vec<V> = Vec::with_capacity(TILE * nf);
        // Output `o` of the tile's row `r` at `o * TILE + r`.
        let mut sums: Vec<V> = Vec::with_capacity(width * TILE);
        let (all_splits, all_values) = (V::splits(self), V::values(self));
        for tile in rows.chunks(TILE * nf) {
            let n = tile.len() / nf;
            if n == 0 {
                // Only a ragged end shorter than a row; `set_tile` needs one.
                continue;
            }
            let class = self.class(tile);
            wide::set_tile(&mut major, nf, tile, n);
            sums.clear();
            for b in &base {
                sums.extend(std::iter::repeat_n(*b, TILE));
            }
            for (t, layout) in self.layouts.iter().enumerate() {
                let Some((splits, leaves)) = self.masks[t]
                    .as_ref()
                    .filter(|_| class != Class::ZeroSpecial)
                else {
                    for r in 0..n {
                        let leaf = self.leaf_of_row(*layout, &tile[r * nf..(r + 1) * nf]);
                        self.add_major(leaf, &mut sums, r);
                    }
                    continue;
                };
                let s = &all_splits[splits.clone()];
                let found = if class == Class::Plain {
                    wide::leaves::<V, false>(s, &major, leaves.len())
                } else {
                    wide::leaves::<V, true>(s, &major, leaves.len())
                };
                if let Some(o) = self.single_output[t] {
                    let at = self.wide_values_at[t];
                    let values = &all_values[at..at + mask::padded_len(leaves.len())];
                    let at = o as usize * TILE;
                    wide::add_leaf_values(&found, values, &mut sums[at..at + TILE]);
                    continue;
                }
                let ids = &self.mask_leaves[leaves.clone()];
                let found = found.map(|f| wide::to_array(f));
                for r in 0..n {
                    self.add_major(ids[found[r / WIDE][r % WIDE] as usize], &mut sums, r);
                }
            }
            for r in 0..n {
                out.extend((0..width).map(|o| sums[o * TILE + r].get()));
            }
        }
        out
    }

    /// `add` for a tile's output-major sums (`run_avx512`).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn add_major<A: Acc>(&self, leaf: u32, sums: &mut [A], row: usize) {
        let (start, end) = self.leaves[leaf as usize];
        for &(o, w) in &self.weights[start as usize..end as usize] {
            sums[o as usize * mask::avx512::TILE + row].add(w);
        }
    }

    #[inline(always)]
    fn run<A: Acc>(&self, e: &Ensemble, rows: &[f64]) -> Vec<f64> {
        let nf = e.features.len();
        let width = e.n_outputs;
        let n_rows = rows.len() / nf;
        let base: Vec<A> = e.base.iter().map(|b| A::of(*b)).collect();
        let mut acc: Vec<A> = Vec::with_capacity(n_rows * width);
        for _ in 0..n_rows {
            acc.extend_from_slice(&base);
        }
        // Tiles of rows go through every tree in turn: a tree's steps stay in L1 while the
        // tile's rows pass, and each row still takes the trees in order.
        for (tile, tile_acc) in rows.chunks(TILE * nf).zip(acc.chunks_mut(TILE * width)) {
            let full = tile.len() / nf / BLOCK * BLOCK;
            let classes: Vec<Class> = tile[..full * nf]
                .chunks_exact(BLOCK * nf)
                .map(|block| self.class(block))
                .collect();
            // The blocks feature-major, for the mask forms (those they cannot take are left
            // zero), in `f32` when the rows are `f32`s.
            let (mut major, mut major32) = (Vec::new(), Vec::new());
            for (block, class) in tile[..full * nf].chunks_exact(BLOCK * nf).zip(&classes) {
                let row = |r: usize| &block[r * nf..(r + 1) * nf];
                match (*class == Class::ZeroSpecial, self.single_precision) {
                    (false, true) => mask::push_raw_block(&mut major32, nf, row),
                    (false, false) => mask::push_raw_block(&mut major, nf, row),
                    (true, true) => major32.resize(major32.len() + BLOCK * nf, 0.0),
                    (true, false) => major.resize(major.len() + BLOCK * nf, 0.0),
                }
            }
            for ((layout, masked), single) in self
                .layouts
                .iter()
                .zip(&self.masks)
                .zip(&self.single_output)
            {
                for (b, ((block, sums), class)) in tile[..full * nf]
                    .chunks_exact(BLOCK * nf)
                    .zip(tile_acc.chunks_exact_mut(BLOCK * width))
                    .zip(&classes)
                    .enumerate()
                {
                    let plain = *class == Class::Plain;
                    let leaves = match (*layout, masked) {
                        (_, Some((splits, leaves))) if *class != Class::ZeroSpecial => {
                            let span = b * BLOCK * nf..(b + 1) * BLOCK * nf;
                            let found = self.mask_leaves_of(
                                splits.clone(),
                                leaves.len(),
                                plain,
                                &major,
                                &major32,
                                span,
                            );
                            if let Some(o) = *single {
                                let values = &self.mask_values[leaves.clone()];
                                for (r, leaf) in found.into_iter().enumerate() {
                                    sums[r * width + o as usize].add(values[leaf]);
                                }
                                continue;
                            }
                            let ids = &self.mask_leaves[leaves.clone()];
                            found.map(|leaf| ids[leaf])
                        }
                        (
                            Layout::Perfect {
                                depth,
                                steps,
                                slots,
                            },
                            _,
                        ) if plain => self.perfect_block::<true>(block, nf, depth, steps, slots),
                        (
                            Layout::Perfect {
                                depth,
                                steps,
                                slots,
                            },
                            _,
                        ) => self.perfect_block::<false>(block, nf, depth, steps, slots),
                        (Layout::Walk { root }, _) => {
                            std::array::from_fn(|r| self.walk(root, &block[r * nf..(r + 1) * nf]))
                        }
                    };
                    for (r, leaf) in leaves.into_iter().enumerate() {
                        self.add(leaf, &mut sums[r * width..(r + 1) * width]);
                    }
                }
                for (row, sums) in tile[full * nf..]
                    .chunks_exact(nf)
                    .zip(tile_acc[full * width..].chunks_exact_mut(width))
                {
                    self.add(self.leaf_of_row(*layout, row), sums);
                }
            }
        }
        acc.into_iter().map(A::get).collect()
    }

    /// Whether no value of the block takes a split's special branch (no NaN, and no zero
    /// when some split treats zero as missing): then every split is just `x < threshold`.
    #[inline]
    fn plain(&self, block: &[f64]) -> bool {
        self.class(block) == Class::Plain
    }

    #[inline]
    fn class(&self, block: &[f64]) -> Class {
        if self.zero_special && block.contains(&0.0) {
            Class::ZeroSpecial
        } else if block.iter().any(|x| x.is_nan()) {
            Class::Missing
        } else {
            Class::Plain
        }
    }

    /// The leaf numbers of a block's rows in a mask tree: `f32` lanes for the formats whose
    /// rows are `f32`s, `u32` words for trees of ≤ 32 leaves, the missing-value variant only
    /// for blocks that need it.
    #[inline(always)]
    fn mask_leaves_of(
        &self,
        splits: Range<usize>,
        n_leaves: usize,
        plain: bool,
        major: &[f64],
        major32: &[f32],
        span: Range<usize>,
    ) -> [usize; BLOCK] {
        use mask::leaves_with;
        if self.single_precision {
            let (s, m) = (&self.mask_splits32[splits], &major32[span]);
            match (n_leaves <= 32, plain) {
                (true, true) => leaves_with::<f32, u32, false>(s, m),
                (true, false) => leaves_with::<f32, u32, true>(s, m),
                (false, true) => leaves_with::<f32, u64, false>(s, m),
                (false, false) => leaves_with::<f32, u64, true>(s, m),
            }
        } else {
            let (s, m) = (&self.mask_splits[splits], &major[span]);
            if plain {
                leaves_with::<f64, u64, false>(s, m)
            } else {
                leaves_with::<f64, u64, true>(s, m)
            }
        }
    }

    #[inline(always)]
    fn perfect_block<const PLAIN: bool>(
        &self,
        block: &[f64],
        nf: usize,
        depth: u32,
        steps: u32,
        slots: u32,
    ) -> [u32; BLOCK] {
        let steps = &self.steps[steps as usize..];
        let mut at = [0usize; BLOCK];
        for _ in 0..depth {
            for (r, i) in at.iter_mut().enumerate() {
                let s = steps[*i];
                let x = block[r * nf + s.feature as usize];
                let yes = if PLAIN { x < s.threshold } else { s.yes(x) };
                *i = 2 * *i + 2 - usize::from(yes);
            }
        }
        let first = (1usize << depth) - 1;
        let slots = &self.slots[slots as usize..];
        at.map(|i| slots[i - first])
    }

    /// One row's leaf by the level or walking form.
    #[inline(always)]
    fn leaf_of_row(&self, layout: Layout, row: &[f64]) -> u32 {
        match layout {
            Layout::Perfect {
                depth,
                steps,
                slots,
            } => {
                let mut i = 0usize;
                for _ in 0..depth {
                    let s = self.steps[steps as usize + i];
                    i = 2 * i + 2 - usize::from(s.yes(row[s.feature as usize]));
                }
                self.slots[slots as usize + i - ((1usize << depth) - 1)]
            }
            Layout::Walk { root } => self.walk(root, row),
        }
    }

    #[inline]
    fn walk(&self, root: u32, row: &[f64]) -> u32 {
        let mut node = self.walk[root as usize];
        while node.yes != LEAF {
            let next = if node.step.yes(row[node.step.feature as usize]) {
                node.yes
            } else {
                node.no
            };
            node = self.walk[next as usize];
        }
        node.no
    }

    #[inline(always)]
    fn add<A: Acc>(&self, leaf: u32, sums: &mut [A]) {
        let (start, end) = self.leaves[leaf as usize];
        for &(o, w) in &self.weights[start as usize..end as usize] {
            sums[o as usize].add(w);
        }
    }
}

fn step(node: &Node) -> Step {
    match node {
        Node::Split {
            feature,
            threshold,
            special_yes,
            zero_special,
            ..
        } => Step {
            threshold: *threshold,
            feature: *feature,
            flags: (u32::from(*special_yes) * SPECIAL_YES)
                | (u32::from(*zero_special) * ZERO_SPECIAL),
        },
        Node::Leaf { .. } => Step::default(),
    }
}

/// Depth of a validated tree (every node reached once from the root).
fn depth(tree: &super::Tree) -> usize {
    let mut max = 0;
    let mut stack = vec![(tree.root as usize, 0usize)];
    while let Some((i, d)) = stack.pop() {
        max = max.max(d);
        if let Node::Split { yes, no, .. } = &tree.nodes[i] {
            stack.push((*yes as usize, d + 1));
            stack.push((*no as usize, d + 1));
        }
    }
    max
}
