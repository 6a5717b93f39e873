//! The leaf-bitmask form of a small tree (the QuickScorer idea), shared by the native forest
//! and the imported ensembles.
//!
//! Leaves are numbered left to right, and each split knows which leaves a row that fails its
//! test can no longer reach: those of its `yes` subtree. A row's leaf is the leftmost one
//! that no failed test ruled out. That tests every split rather than one path, but the tests
//! have no branches and do not wait on each other, so they vectorise and pipeline, where a
//! walk is a chain of dependent loads that ends in a mispredicted branch.

/// Trees with at most this many leaves have a mask form (one bit per leaf in a `u64`).
pub const MAX_LEAVES: usize = 64;

/// Rows that go through the mask form together, laid out feature-major so that testing one
/// split on all of them is a handful of vector instructions.
pub const BLOCK: usize = 8;

#[derive(Debug, Clone, Copy)]
pub struct Split {
    threshold: f64,
    /// The leaves still reachable by a row that fails `value < threshold`.
    keep: u64,
    feature: u32,
}

/// A node as the mask builder sees it: `value < threshold` goes to `yes`.
pub enum Shape {
    Leaf(u32),
    Split {
        threshold: f64,
        feature: u32,
        yes: u32,
        no: u32,
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
        } => {
            if splits.len() == MAX_LEAVES - 1 || !threshold.is_finite() {
                return None;
            }
            let slot = splits.len();
            splits.push(Split {
                threshold,
                keep: u64::MAX,
                feature,
            });
            let first = leaves.len();
            build(yes, shape, splits, leaves)?;
            splits[slot].keep = !(leaf_bits(leaves.len()) & !leaf_bits(first));
            build(no, shape, splits, leaves)
        }
    }
}

/// The leaf number (position in `build`'s `leaves`) each row of a feature-major block of
/// `comparable` values reaches.
#[inline]
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

/// The bits of leaves `0..n`, for `n <= 64`.
fn leaf_bits(n: usize) -> u64 {
    u64::MAX.checked_shr(64 - n as u32).unwrap_or(0)
}
