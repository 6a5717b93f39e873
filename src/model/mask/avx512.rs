//! The mask form on 16 rows at once with AVX-512. A block's feature is one 512-bit register
//! of `f32` lanes (or two of `f64`), and a split is a load, one compare into a lane mask and
//! one masked AND of the reachable-leaf words, where AVX2 spends a compare, an OR and an AND
//! on 8 rows. The compare is the same `x < t` on the same values as `leaves_with`, so the
//! leaves are the same; a leaf's value is found by permutes across the registers holding the
//! tree's values, and added in the sum's own precision, as the portable form adds it.
//!
//! Every function here asks for `avx512f` and `avx512cd` (`vplzcnt` finds the lowest bit);
//! the caller checks the CPU has both before taking this form.

use std::arch::x86_64::{
    __m512, __m512d, __m512i, _mm512_add_pd, _mm512_add_ps, _mm512_and_si512,
    _mm512_castsi256_si512, _mm512_castsi512_si256, _mm512_cmp_pd_mask, _mm512_cmp_ps_mask,
    _mm512_cvtepi64_epi32, _mm512_cvtepu32_epi64, _mm512_extracti64x4_epi64, _mm512_inserti64x4,
    _mm512_loadu_pd, _mm512_loadu_ps, _mm512_lzcnt_epi32, _mm512_lzcnt_epi64,
    _mm512_mask_and_epi32, _mm512_mask_and_epi64, _mm512_mask_blend_pd, _mm512_mask_blend_ps,
    _mm512_permutex2var_pd, _mm512_permutex2var_ps, _mm512_set1_epi32, _mm512_set1_epi64,
    _mm512_set1_pd, _mm512_set1_ps, _mm512_setzero_pd, _mm512_setzero_ps, _mm512_setzero_si512,
    _mm512_storeu_epi32, _mm512_storeu_pd, _mm512_storeu_ps, _mm512_sub_epi32, _mm512_sub_epi64,
    _mm512_test_epi32_mask, _mm512_test_epi64_mask, _CMP_GE_OQ, _CMP_UNORD_Q,
};

use super::Split;

/// Whether this CPU runs this form: every function here needs avx512f and avx512cd.
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512cd")
}

/// Rows in one block of this form: the `f32` lanes of a 512-bit register.
pub const WIDE: usize = 16;

/// A lane type of this form, `f32` or `f64`: the rows' values, the thresholds and the sums.
pub trait Lane: super::Lane {
    /// Over a block's 16 values of one feature: the rows not below `threshold` (false for
    /// NaN), and with `MISSING` the rows whose value is NaN (else 0), one bit per row.
    ///
    /// # Safety
    /// The CPU must have avx512f.
    unsafe fn test<const MISSING: bool>(values: &[Self; WIDE], threshold: Self) -> (u16, u16);

    /// Adds to each row's sum the value of its leaf (`leaves`, from `leaves`): `values` in
    /// leaf order, from `super::pad_values` (32 or 64 of them).
    ///
    /// # Safety
    /// The CPU must have avx512f.
    unsafe fn add_values(leaves: __m512i, values: &[Self], sums: &mut [Self; WIDE]);
}

impl Lane for f32 {
    #[inline(always)]
    unsafe fn test<const MISSING: bool>(values: &[f32; WIDE], threshold: f32) -> (u16, u16) {
        // SAFETY: the caller vouches for the CPU.
        unsafe { test32::<MISSING>(values, threshold) }
    }

    #[inline(always)]
    unsafe fn add_values(leaves: __m512i, values: &[f32], sums: &mut [f32; WIDE]) {
        // SAFETY: the caller vouches for the CPU.
        unsafe { add_values32(leaves, values, sums) }
    }
}

impl Lane for f64 {
    #[inline(always)]
    unsafe fn test<const MISSING: bool>(values: &[f64; WIDE], threshold: f64) -> (u16, u16) {
        // SAFETY: the caller vouches for the CPU.
        unsafe { test64::<MISSING>(values, threshold) }
    }

    #[inline(always)]
    unsafe fn add_values(leaves: __m512i, values: &[f64], sums: &mut [f64; WIDE]) {
        // SAFETY: the caller vouches for the CPU.
        unsafe { add_values64(leaves, values, sums) }
    }
}

// The bodies are functions of their own so that they carry the target features: a trait
// method cannot, and intrinsics outside such a function are calls, not instructions.

#[inline]
#[target_feature(enable = "avx512f")]
fn test32<const MISSING: bool>(values: &[f32; WIDE], threshold: f32) -> (u16, u16) {
    // SAFETY: `values` is 16 `f32`s, one unaligned load.
    let x = unsafe { _mm512_loadu_ps(values.as_ptr()) };
    let fails = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(threshold));
    let nan = if MISSING {
        _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x)
    } else {
        0
    };
    (fails, nan)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn test64<const MISSING: bool>(values: &[f64; WIDE], threshold: f64) -> (u16, u16) {
    let t = _mm512_set1_pd(threshold);
    // SAFETY: `values` is 16 `f64`s, two unaligned loads of 8.
    let (low, high) = unsafe {
        (
            _mm512_loadu_pd(values.as_ptr()),
            _mm512_loadu_pd(values.as_ptr().add(8)),
        )
    };
    let fails = u16::from(_mm512_cmp_pd_mask::<_CMP_GE_OQ>(low, t))
        | (u16::from(_mm512_cmp_pd_mask::<_CMP_GE_OQ>(high, t)) << 8);
    let nan = if MISSING {
        u16::from(_mm512_cmp_pd_mask::<_CMP_UNORD_Q>(low, low))
            | (u16::from(_mm512_cmp_pd_mask::<_CMP_UNORD_Q>(high, high)) << 8)
    } else {
        0
    };
    (fails, nan)
}

/// Register `i` of 16 of a tree's padded values (zero past the end).
#[inline]
#[target_feature(enable = "avx512f")]
fn reg32(values: &[f32], i: usize) -> __m512 {
    match values.get(i * WIDE..(i + 1) * WIDE) {
        // SAFETY: the slice is 16 `f32`s, one unaligned load.
        Some(v) => unsafe { _mm512_loadu_ps(v.as_ptr()) },
        None => _mm512_setzero_ps(),
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn add_values32(leaves: __m512i, values: &[f32], sums: &mut [f32; WIDE]) {
    // A permute reads the low 5 bits of each leaf number; bit 5 picks the upper pair.
    let mut v = _mm512_permutex2var_ps(reg32(values, 0), leaves, reg32(values, 1));
    if values.len() > 2 * WIDE {
        let upper = _mm512_permutex2var_ps(reg32(values, 2), leaves, reg32(values, 3));
        let high = _mm512_test_epi32_mask(leaves, _mm512_set1_epi32(32));
        v = _mm512_mask_blend_ps(high, v, upper);
    }
    // SAFETY: `sums` is 16 `f32`s.
    unsafe {
        let s = _mm512_loadu_ps(sums.as_ptr());
        _mm512_storeu_ps(sums.as_mut_ptr(), _mm512_add_ps(s, v));
    }
}

/// Register `i` of 8 of a tree's padded values (zero past the end).
#[inline]
#[target_feature(enable = "avx512f")]
fn reg64(values: &[f64], i: usize) -> __m512d {
    match values.get(i * 8..(i + 1) * 8) {
        // SAFETY: the slice is 8 `f64`s, one unaligned load.
        Some(v) => unsafe { _mm512_loadu_pd(v.as_ptr()) },
        None => _mm512_setzero_pd(),
    }
}

/// The values of 8 leaves (numbers in 64-bit lanes).
#[inline]
#[target_feature(enable = "avx512f")]
fn look64(values: &[f64], idx: __m512i) -> __m512d {
    // A permute reads the low 4 bits of each leaf number; bits 4 and 5 pick the pair.
    let mut v = _mm512_permutex2var_pd(reg64(values, 0), idx, reg64(values, 1));
    let bit4 = _mm512_test_epi64_mask(idx, _mm512_set1_epi64(16));
    if values.len() > 16 {
        let b = _mm512_permutex2var_pd(reg64(values, 2), idx, reg64(values, 3));
        v = _mm512_mask_blend_pd(bit4, v, b);
    }
    if values.len() > 32 {
        let c = _mm512_permutex2var_pd(reg64(values, 4), idx, reg64(values, 5));
        let d = _mm512_permutex2var_pd(reg64(values, 6), idx, reg64(values, 7));
        let upper = _mm512_mask_blend_pd(bit4, c, d);
        let bit5 = _mm512_test_epi64_mask(idx, _mm512_set1_epi64(32));
        v = _mm512_mask_blend_pd(bit5, v, upper);
    }
    v
}

#[inline]
#[target_feature(enable = "avx512f")]
fn add_values64(leaves: __m512i, values: &[f64], sums: &mut [f64; WIDE]) {
    let low = look64(
        values,
        _mm512_cvtepu32_epi64(_mm512_castsi512_si256(leaves)),
    );
    let high = look64(
        values,
        _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64::<1>(leaves)),
    );
    // SAFETY: `sums` is 16 `f64`s, two unaligned loads and stores of 8.
    unsafe {
        let s = sums.as_mut_ptr();
        _mm512_storeu_pd(s, _mm512_add_pd(_mm512_loadu_pd(s), low));
        _mm512_storeu_pd(s.add(8), _mm512_add_pd(_mm512_loadu_pd(s.add(8)), high));
    }
}

/// Blocks of `WIDE` rows that go through a tree together: a split's threshold, words and
/// feature are loaded once for all of them, and their chains of masks overlap.
pub const BLOCKS: usize = 4;
/// Rows in one tile, `BLOCKS` blocks.
pub const TILE: usize = WIDE * BLOCKS;

/// Sets `out` to a tile of `n` rows (`rows`, `n_features` values each, 1 ≤ n ≤ `TILE`)
/// feature-major (feature `f` of row `r` at `f * TILE + r`), in the lane type (exact for
/// rows that are `f32`s already); the rows past `n` repeat the last one, so they hold no
/// value the real ones do not.
pub fn set_tile<V: Lane>(out: &mut Vec<V>, n_features: usize, rows: &[f64], n: usize) {
    out.clear();
    out.resize(n_features * TILE, V::of(0.0));
    for r in 0..TILE {
        let at = r.min(n - 1) * n_features;
        for (f, x) in rows[at..at + n_features].iter().enumerate() {
            out[f * TILE + r] = V::of(*x);
        }
    }
}

#[inline(always)]
fn lanes<V: Lane>(tile: &[V], feature: u32) -> &[[V; WIDE]; BLOCKS] {
    let at = feature as usize * TILE;
    match tile[at..at + TILE].as_chunks::<WIDE>().0.try_into() {
        Ok(v) => v,
        // invariant: the range is TILE long, BLOCKS chunks of WIDE.
        Err(_) => unreachable!(),
    }
}

/// The leaf number of each of a tile's rows in a tree of at most 32 leaves (`u32` words),
/// per block. With `MISSING`, a NaN goes where its split sends missing values; without, the
/// tile must hold no NaN (a NaN would then go to `yes` everywhere, still a leaf).
#[inline]
#[target_feature(enable = "avx512f,avx512cd")]
pub fn leaves_narrow<V: Lane, const MISSING: bool>(
    splits: &[Split<V>],
    tile: &[V],
) -> [__m512i; BLOCKS] {
    let mut reachable = [_mm512_set1_epi32(-1); BLOCKS];
    for split in splits {
        let values = lanes(tile, split.feature);
        let keep = _mm512_set1_epi32(split.keep as u32 as i32);
        let nan_keep = _mm512_set1_epi32(split.nan_keep as u32 as i32);
        for (r, v) in reachable.iter_mut().zip(values) {
            // SAFETY: this function's features include avx512f.
            let (fails, nan) = unsafe { V::test::<MISSING>(v, split.threshold) };
            // A row not below the threshold leaves the `yes` subtree.
            *r = _mm512_mask_and_epi32(*r, fails, *r, keep);
            if MISSING {
                *r = _mm512_mask_and_epi32(*r, nan, *r, nan_keep);
            }
        }
    }
    // The lowest bit set: isolate it, count the zeros above it.
    reachable.map(|r| {
        let lowest = _mm512_and_si512(r, _mm512_sub_epi32(_mm512_setzero_si512(), r));
        _mm512_sub_epi32(_mm512_set1_epi32(31), _mm512_lzcnt_epi32(lowest))
    })
}

/// `leaves_narrow` for trees of 33 to 64 leaves: `u64` words, a block's rows 0–7 in one
/// register and 8–15 in another, each masked by its half of the compare.
#[inline]
#[target_feature(enable = "avx512f,avx512cd")]
pub fn leaves_wide<V: Lane, const MISSING: bool>(
    splits: &[Split<V>],
    tile: &[V],
) -> [__m512i; BLOCKS] {
    let mut reachable = [[_mm512_set1_epi64(-1); 2]; BLOCKS];
    for split in splits {
        let values = lanes(tile, split.feature);
        let keep = _mm512_set1_epi64(split.keep as i64);
        let nan_keep = _mm512_set1_epi64(split.nan_keep as i64);
        for ([low, high], v) in reachable.iter_mut().zip(values) {
            // SAFETY: this function's features include avx512f.
            let (fails, nan) = unsafe { V::test::<MISSING>(v, split.threshold) };
            *low = _mm512_mask_and_epi64(*low, fails as u8, *low, keep);
            *high = _mm512_mask_and_epi64(*high, (fails >> 8) as u8, *high, keep);
            if MISSING {
                *low = _mm512_mask_and_epi64(*low, nan as u8, *low, nan_keep);
                *high = _mm512_mask_and_epi64(*high, (nan >> 8) as u8, *high, nan_keep);
            }
        }
    }
    reachable.map(|[low, high]| {
        let index = |r: __m512i| {
            let lowest = _mm512_and_si512(r, _mm512_sub_epi64(_mm512_setzero_si512(), r));
            let n = _mm512_sub_epi64(_mm512_set1_epi64(63), _mm512_lzcnt_epi64(lowest));
            _mm512_cvtepi64_epi32(n)
        };
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(index(low)), index(high))
    })
}

/// The leaf number of each of a tile's rows in a tree of `n_leaves` leaves (at most 64):
/// `leaves_narrow` up to 32 leaves, `leaves_wide` above.
#[inline]
#[target_feature(enable = "avx512f,avx512cd")]
pub fn leaves<V: Lane, const MISSING: bool>(
    splits: &[Split<V>],
    tile: &[V],
    n_leaves: usize,
) -> [__m512i; BLOCKS] {
    if n_leaves <= 32 {
        leaves_narrow::<V, MISSING>(splits, tile)
    } else {
        leaves_wide::<V, MISSING>(splits, tile)
    }
}

/// Adds each of a tile's rows its leaf's value (`values` from `super::pad_values`) into
/// `sums`, one output's `TILE` sums in row order.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn add_leaf_values<V: Lane>(leaves: &[__m512i; BLOCKS], values: &[V], sums: &mut [V]) {
    debug_assert_eq!(sums.len(), TILE);
    for (leaves, sums) in leaves.iter().zip(sums.as_chunks_mut::<WIDE>().0) {
        // SAFETY: this function's features include avx512f.
        unsafe { V::add_values(*leaves, values, sums) };
    }
}

/// The 16 leaf numbers as an array.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn to_array(leaves: __m512i) -> [u32; WIDE] {
    let mut out = [0u32; WIDE];
    // SAFETY: `out` is 16 `u32`s, one unaligned 512-bit store.
    unsafe { _mm512_storeu_epi32(out.as_mut_ptr().cast(), leaves) };
    out
}
