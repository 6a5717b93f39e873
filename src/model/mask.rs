//! The leaf-bitmask form of a small tree (the QuickScorer idea), shared by the native forest
//! and the imported ensembles.
//!
//! Leaves are numbered left to right, and each split knows which leaves a row that fails its
//! test can no longer reach: those of its `yes` subtree. A row's leaf is the leftmost one
//! that no failed test ruled out. That tests every split rather than one path, but the tests
//! have no branches and do not wait on each other, so they vectorise and pipeline, where a
//! walk is a chain of dependent loads that ends in a mispredicted branch.

#[cfg(target_arch = "x86_64")]
pub mod avx512;

/// Trees with at most this many leaves have a mask form (one bit per leaf in a `u64`).
pub const MAX_LEAVES: usize = 64;

/// Rows that go through the mask form together, laid out feature-major so that testing one
/// split on all of them is a handful of vector instructions.
pub const BLOCK: usize = 8;

#[derive(Debug, Clone, Copy)]
pub struct Split<T = f64> {
    threshold: T,
    /// The leaves still reachable by a row that fails `value < threshold`.
    keep: u64,
    /// The leaves still reachable by a row whose value is missing (NaN): all of them if a
    /// missing value goes to `yes`, else `keep`.
    nan_keep: u64,
    feature: u32,
}

/// A node as the mask builder sees it: `value < threshold` goes to `yes`, and a missing value
/// to `yes` when `missing_yes`.
pub enum Shape {
    Leaf(u32),
    Split {
        threshold: f64,
        feature: u32,
        yes: u32,
        no: u32,
        missing_yes: bool,
    },
}

/// Builds the mask form of the tree at `at` into empty (they number the leaves) `splits` (in any order) and `leaves`
/// (the caller's leaf ids, left to right); `None` if it has more than `MAX_LEAVES` leaves or
/// a threshold that is not finite (the sign test in `leaves` needs a finite one). A node
/// reachable along two paths counts once per path, as a walk sees it. Every split is
/// appended before its subtrees are visited, and a tree of at most 64 leaves has at most 63
/// splits, so the recursion stays shallow whatever the file holds.
pub fn build(
    at: u32,
    shape: &impl Fn(u32) -> Shape,
    splits: &mut Vec<Split>,
    leaves: &mut Vec<u32>,
) -> Option<()> {
    match shape(at) {
        Shape::Leaf(id) => {
            if leaves.len() == MAX_LEAVES {
                return None;
            }
            leaves.push(id);
            Some(())
        }
        Shape::Split {
            threshold,
            feature,
            yes,
            no,
            missing_yes,
        } => {
            if splits.len() == MAX_LEAVES - 1 || !threshold.is_finite() {
                return None;
            }
            let slot = splits.len();
            splits.push(Split {
                threshold,
                keep: u64::MAX,
                nan_keep: u64::MAX,
                feature,
            });
            let first = leaves.len();
            build(yes, shape, splits, leaves)?;
            let keep = !(leaf_bits(leaves.len()) & !leaf_bits(first));
            splits[slot].keep = keep;
            if !missing_yes {
                splits[slot].nan_keep = keep;
            }
            build(no, shape, splits, leaves)
        }
    }
}

impl Split {
    /// The same split for rows whose values are all `f32`s: for such an `x`, `x < t` exactly
    /// when `x < t'` with `t'` the least `f32` not below `t`, so the test can be made on
    /// `f32`s, twice as many to a vector.
    pub fn narrow(self) -> Split<f32> {
        Split {
            threshold: f32_at_least(self.threshold),
            keep: self.keep,
            nan_keep: self.nan_keep,
            feature: self.feature,
        }
    }
}

/// The least `f32` that is not below `t` (+∞ above the largest `f32`).
pub fn f32_at_least(t: f64) -> f32 {
    let f = t as f32;
    if f.is_nan() || f64::from(f) >= t {
        return f;
    }
    // `f` is below `t`, so it is finite or -∞, and the next `f32` up is the answer.
    if f == 0.0 {
        f32::from_bits(1)
    } else if f > 0.0 {
        f32::from_bits(f.to_bits() + 1)
    } else {
        f32::from_bits(f.to_bits() - 1)
    }
}

/// A value type of a block: `f32` or `f64`.
pub trait Lane: Copy + PartialOrd {
    fn of(value: f64) -> Self;
    fn is_nan(self) -> bool;
}

impl Lane for f32 {
    #[inline(always)]
    fn of(value: f64) -> Self {
        value as f32
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        self.is_nan()
    }
}

impl Lane for f64 {
    #[inline(always)]
    fn of(value: f64) -> Self {
        value
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        self.is_nan()
    }
}

/// The reachable-leaves word: `u32` for trees of at most 32 leaves (as wide as an `f32`
/// lane, so a vector of compares masks a vector of words directly), else `u64`.
pub trait Word: Copy + std::ops::BitAnd<Output = Self> + std::ops::BitOr<Output = Self> {
    const ONES: Self;
    /// The low bits of `bits` (a `u32` word is only used for trees of ≤ 32 leaves).
    fn of(bits: u64) -> Self;
    /// All ones if `b`, else zero.
    fn all(b: bool) -> Self;
    fn lowest(self) -> usize;
}

impl Word for u32 {
    const ONES: Self = u32::MAX;
    #[inline(always)]
    fn of(bits: u64) -> Self {
        bits as u32
    }
    #[inline(always)]
    fn all(b: bool) -> Self {
        0u32.wrapping_sub(u32::from(b))
    }
    #[inline(always)]
    fn lowest(self) -> usize {
        self.trailing_zeros() as usize
    }
}

impl Word for u64 {
    const ONES: Self = u64::MAX;
    #[inline(always)]
    fn of(bits: u64) -> Self {
        bits
    }
    #[inline(always)]
    fn all(b: bool) -> Self {
        0u64.wrapping_sub(u64::from(b))
    }
    #[inline(always)]
    fn lowest(self) -> usize {
        self.trailing_zeros() as usize
    }
}

/// `leaves` on a feature-major block of raw values (`push_raw_block`) by plain comparisons,
/// with splits whose thresholds are of the block's type (`narrow` for `f32`). With
/// `MISSING`, a NaN goes where its split sends missing values; without, the block must hold
/// no NaN. Over a fixed block of lanes the compares, selects and masks become vector
/// instructions with no branch (checked in the generated code), so a block with a missing
/// value costs one compare and select more per split, not a slower form.
#[inline(always)]
pub fn leaves_with<V: Lane, W: Word, const MISSING: bool>(
    splits: &[Split<V>],
    block: &[V],
) -> [usize; BLOCK] {
    let mut reachable = [W::ONES; BLOCK];
    for split in splits {
        let at = split.feature as usize * BLOCK;
        let values: &[V; BLOCK] = match block[at..at + BLOCK].try_into() {
            Ok(v) => v,
            // invariant: the range is BLOCK long.
            Err(_) => unreachable!(),
        };
        let (keep, nan_keep) = (W::of(split.keep), W::of(split.nan_keep));
        for (reachable, value) in reachable.iter_mut().zip(values) {
            let mut kept = keep | W::all(*value < split.threshold);
            if MISSING {
                kept = if value.is_nan() { nan_keep } else { kept };
            }
            *reachable = *reachable & kept;
        }
    }
    // A row's own leaf is never ruled out, so the lowest bit set is a leaf of the tree.
    reachable.map(W::lowest)
}

/// Appends `BLOCK` rows as one feature-major block for `leaves_with`: the values as they
/// are (NaN stays NaN), in the lane type (exact for rows that are `f32`s already).
pub fn push_raw_block<'a, V: Lane>(
    out: &mut Vec<V>,
    n_features: usize,
    row: impl Fn(usize) -> &'a [f64],
) {
    for f in 0..n_features {
        out.extend((0..BLOCK).map(|r| V::of(row(r)[f])));
    }
}

/// The leaf number (position in `build`'s `leaves`) each row of a feature-major block of
/// `comparable` values reaches.
#[inline(always)]
pub fn leaves(splits: &[Split], block: &[f64]) -> [usize; BLOCK] {
    let mut reachable = [u64::MAX; BLOCK];
    for split in splits {
        let at = split.feature as usize * BLOCK;
        for (reachable, value) in reachable.iter_mut().zip(&block[at..at + BLOCK]) {
            // All ones if `value < threshold`, from the sign of the difference: for the
            // values `comparable` leaves and a finite threshold, the difference is
            // negative exactly then. A comparison would do, but the compiler is apt to
            // turn `if value < threshold` (or its mask) into a branch, and which way a
            // row goes is as unpredictable as branches get.
            let below = (*value - split.threshold).to_bits() as i64 >> 63;
            *reachable &= split.keep | below as u64;
        }
    }
    // A row's own leaf is never ruled out, so the lowest bit set is a leaf of the tree.
    let mut leaves = [0; BLOCK];
    for (leaf, reachable) in leaves.iter_mut().zip(reachable) {
        *leaf = reachable.trailing_zeros() as usize;
    }
    leaves
}

/// Appends `BLOCK` rows (each `n_features` values, `row(r)` for `r` in `0..BLOCK`) as one
/// feature-major block (feature `f` of row `r` at `f * BLOCK + r`), values made `comparable`.
pub fn push_block<'a>(out: &mut Vec<f64>, n_features: usize, row: impl Fn(usize) -> &'a [f64]) {
    for f in 0..n_features {
        out.extend((0..BLOCK).map(|r| comparable(row(r)[f])));
    }
}

/// A value that compares with every threshold as `value` does, and whose difference with a
/// finite threshold is negative exactly when it is below it: NaN, below nothing, becomes
/// +∞; -0, whose difference with 0 would be -0, becomes +0.
pub fn comparable(value: f64) -> f64 {
    if value.is_nan() {
        f64::INFINITY
    } else {
        // x + 0 is x for every other x.
        value + 0.0
    }
}

/// A tree's leaf values for `avx512::add_values`: `values` in leaf order, zero-padded to 32 (up to 32
/// leaves) or 64, so that a look-up is whole registers.
pub fn pad_values<V: Copy + Default>(values: &[V], out: &mut Vec<V>) {
    let padded = padded_len(values.len());
    out.extend_from_slice(values);
    out.resize(out.len() + padded - values.len(), V::default());
}

/// How many values `pad_values` makes of `n`.
pub fn padded_len(n: usize) -> usize {
    if n <= 32 {
        32
    } else {
        64
    }
}

/// The bits of leaves `0..n`, for `n <= 64`.
fn leaf_bits(n: usize) -> u64 {
    u64::MAX.checked_shr(64 - n as u32).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For every `f32` row value, `x < t` in `f64` and `x < f32_at_least(t)` in `f32` agree:
    /// at thresholds that are `f32`s, between two `f32`s, at ±0, subnormals, beyond the
    /// largest `f32`, and on the `f32` values around each.
    #[test]
    fn narrowing_keeps_every_comparison() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(3);
        let mut thresholds = vec![
            0.0,
            -0.0,
            1e-300,
            -1e-300,
            1e-45,
            -1e-45,
            f64::from(f32::MAX),
            f64::from(f32::MAX) * 1.5,
            -f64::from(f32::MAX) * 1.5,
            f64::MAX,
            f64::MIN,
            0.1,
            -0.1,
        ];
        for _ in 0..2000 {
            let t: f64 = rng.gen_range(-3.0..3.0);
            thresholds.push(t);
            thresholds.push(f64::from(t as f32));
        }
        for t in thresholds {
            let narrow = f32_at_least(t);
            let near = t as f32;
            let mut xs = vec![0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, near];
            for step in 1..3u32 {
                xs.push(f32::from_bits(near.to_bits().wrapping_add(step)));
                xs.push(f32::from_bits(near.to_bits().wrapping_sub(step)));
            }
            for x in xs.into_iter().filter(|x| !x.is_nan()) {
                assert_eq!(
                    f64::from(x) < t,
                    x < narrow,
                    "x {x:e}, t {t:e}, narrow {narrow:e}"
                );
            }
        }
    }

    /// Root `a < 1` (missing: yes) → leaf 0 | split `b < 2` (missing: no) → leaf 1 | leaf 2.
    fn two_splits() -> (Vec<Split>, Vec<u32>) {
        let shape = |at: u32| match at {
            0 => Shape::Split {
                threshold: 1.0,
                feature: 0,
                yes: 1,
                no: 2,
                missing_yes: true,
            },
            2 => Shape::Split {
                threshold: 2.0,
                feature: 1,
                yes: 3,
                no: 4,
                missing_yes: false,
            },
            1 => Shape::Leaf(10),
            3 => Shape::Leaf(11),
            _ => Shape::Leaf(12),
        };
        let (mut splits, mut leaves) = (Vec::new(), Vec::new());
        build(0, &shape, &mut splits, &mut leaves).unwrap();
        (splits, leaves)
    }

    /// Missing values go each split's own way, in both lane types and word widths; values
    /// compare as they are.
    #[test]
    fn missing_values_take_each_splits_default() {
        let (splits, ids) = two_splits();
        let nan = f64::NAN;
        let rows: [[f64; 2]; BLOCK] = [
            [nan, 5.0],  // a missing → yes: leaf 10
            [nan, nan],  // a missing → leaf 10
            [3.0, nan],  // b missing → no: leaf 12
            [3.0, 1.0],  // leaf 11
            [1.0, 2.0],  // a = t is not below: b = t is not below: leaf 12
            [0.5, nan],  // leaf 10
            [-0.0, 9.0], // leaf 10
            [1.5, -1.0], // leaf 11
        ];
        let expected = [10, 10, 12, 11, 12, 10, 10, 11];
        let mut block64 = Vec::new();
        push_raw_block::<f64>(&mut block64, 2, |r| &rows[r]);
        let mut block32 = Vec::new();
        push_raw_block::<f32>(&mut block32, 2, |r| &rows[r]);
        let narrow: Vec<Split<f32>> = splits.iter().map(|s| s.narrow()).collect();
        let got = [
            leaves_with::<f64, u64, true>(&splits, &block64),
            leaves_with::<f32, u64, true>(&narrow, &block32),
            leaves_with::<f32, u32, true>(&narrow, &block32),
        ];
        for found in got {
            assert_eq!(found.map(|l| ids[l]), expected);
        }
        // Without NaN the plain variant agrees with the missing-value one.
        let mut plain = Vec::new();
        push_raw_block::<f32>(&mut plain, 2, |r| &rows[[3, 4, 6, 7, 3, 4, 6, 7][r]]);
        assert_eq!(
            leaves_with::<f32, u32, false>(&narrow, &plain),
            leaves_with::<f32, u32, true>(&narrow, &plain)
        );
    }
}
