//! The mask form on 16 rows at once with AVX-512, for `f32` rows: one 512-bit register of
//! `f32` lanes is a block's feature, and a split is a load, one compare into a lane mask
//! and one masked AND of the reachable-leaf words, where AVX2 spends a compare, an OR and
//! an AND on 8 rows (and SSE2-width halves for `u32` words). The compare is the same `x < t`
//! on the same `f32`s as `leaves_with`, so the leaves are the same.
//!
//! Every function here asks for `avx512f` and `avx512cd` (`vplzcnt` finds the lowest bit);
//! the caller checks the CPU has both before taking this form.

use std::arch::x86_64::{
    __m512, __m512i, _mm512_add_ps, _mm512_and_si512, _mm512_castsi256_si512, _mm512_cmp_ps_mask,
    _mm512_cvtepi64_epi32, _mm512_inserti64x4, _mm512_loadu_ps, _mm512_lzcnt_epi32,
    _mm512_lzcnt_epi64, _mm512_mask_and_epi32, _mm512_mask_and_epi64, _mm512_mask_blend_ps,
    _mm512_permutex2var_ps, _mm512_set1_epi32, _mm512_set1_epi64, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_setzero_si512, _mm512_storeu_epi32, _mm512_storeu_ps,
    _mm512_sub_epi32, _mm512_sub_epi64, _mm512_test_epi32_mask, _CMP_GE_OQ, _CMP_UNORD_Q,
};

use super::Split;

/// Rows in one block of this form: the `f32` lanes of a 512-bit register.
pub const WIDE: usize = 16;

/// Appends `WIDE` rows as one feature-major block of `f32`s (feature `f` of row `r` at
/// `f * WIDE + r`), exact for rows that are `f32`s already.
pub fn push_block<'a>(out: &mut Vec<f32>, n_features: usize, row: impl Fn(usize) -> &'a [f64]) {
    for f in 0..n_features {
        out.extend((0..WIDE).map(|r| row(r)[f] as f32));
    }
}

#[inline(always)]
fn lanes(block: &[f32], feature: u32) -> &[f32; WIDE] {
    let at = feature as usize * WIDE;
    match block[at..at + WIDE].try_into() {
        Ok(v) => v,
        // invariant: the range is WIDE long.
        Err(_) => unreachable!(),
    }
}

/// The leaf number of each of a block's 16 rows in a tree of at most 32 leaves (`u32`
/// words). With `MISSING`, a NaN goes where its split sends missing values; without, the
/// block must hold no NaN (a NaN would then go to `yes` everywhere, still a leaf).
#[inline]
#[target_feature(enable = "avx512f,avx512cd")]
pub fn leaves_narrow<const MISSING: bool>(splits: &[Split<f32>], block: &[f32]) -> __m512i {
    let mut reachable = _mm512_set1_epi32(-1);
    for split in splits {
        // SAFETY: `lanes` is 16 `f32`s, one unaligned 512-bit load.
        let x = unsafe { _mm512_loadu_ps(lanes(block, split.feature).as_ptr()) };
        // Not below the threshold (false for NaN): the row leaves the `yes` subtree.
        let fails = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(split.threshold));
        let keep = _mm512_set1_epi32(split.keep as u32 as i32);
        reachable = _mm512_mask_and_epi32(reachable, fails, reachable, keep);
        if MISSING {
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            let nan_keep = _mm512_set1_epi32(split.nan_keep as u32 as i32);
            reachable = _mm512_mask_and_epi32(reachable, nan, reachable, nan_keep);
        }
    }
    // The lowest bit set: isolate it, count the zeros above it.
    let lowest = _mm512_and_si512(
        reachable,
        _mm512_sub_epi32(_mm512_setzero_si512(), reachable),
    );
    _mm512_sub_epi32(_mm512_set1_epi32(31), _mm512_lzcnt_epi32(lowest))
}

/// `leaves_narrow` for trees of 33 to 64 leaves: `u64` words, rows 0–7 in one register and
/// 8–15 in another, each masked by its half of the compare.
#[inline]
#[target_feature(enable = "avx512f,avx512cd")]
pub fn leaves_wide<const MISSING: bool>(splits: &[Split<f32>], block: &[f32]) -> __m512i {
    let mut low = _mm512_set1_epi64(-1);
    let mut high = low;
    for split in splits {
        // SAFETY: `lanes` is 16 `f32`s, one unaligned 512-bit load.
        let x = unsafe { _mm512_loadu_ps(lanes(block, split.feature).as_ptr()) };
        let fails = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(split.threshold));
        let keep = _mm512_set1_epi64(split.keep as i64);
        low = _mm512_mask_and_epi64(low, fails as u8, low, keep);
        high = _mm512_mask_and_epi64(high, (fails >> 8) as u8, high, keep);
        if MISSING {
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            let nan_keep = _mm512_set1_epi64(split.nan_keep as i64);
            low = _mm512_mask_and_epi64(low, nan as u8, low, nan_keep);
            high = _mm512_mask_and_epi64(high, (nan >> 8) as u8, high, nan_keep);
        }
    }
    let index = |r: __m512i| {
        let lowest = _mm512_and_si512(r, _mm512_sub_epi64(_mm512_setzero_si512(), r));
        let n = _mm512_sub_epi64(_mm512_set1_epi64(63), _mm512_lzcnt_epi64(lowest));
        _mm512_cvtepi64_epi32(n)
    };
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(index(low)), index(high))
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

/// Adds to each row's sum the value of its leaf (`values` from `mask::pad_values`), one `f32`
/// addition per row as the portable form makes. The look-up is a permute across the
/// registers that hold the values, not a gather: a gather of 16 lanes is 16 loads (and
/// slower still on CPUs with the gather-data-sampling fix), a permute is one instruction.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn add_values(leaves: __m512i, values: &[f32], sums: &mut [f32; WIDE]) {
    let reg = |i: usize| -> __m512 {
        match values.get(i * WIDE..(i + 1) * WIDE) {
            // SAFETY: the slice is 16 `f32`s, one unaligned 512-bit load.
            Some(v) => unsafe { _mm512_loadu_ps(v.as_ptr()) },
            None => _mm512_setzero_ps(),
        }
    };
    // The permutes read the low 5 bits of each leaf number; bit 5 picks the upper pair.
    let mut v = _mm512_permutex2var_ps(reg(0), leaves, reg(1));
    if values.len() > 2 * WIDE {
        let upper = _mm512_permutex2var_ps(reg(2), leaves, reg(3));
        let high = _mm512_test_epi32_mask(leaves, _mm512_set1_epi32(32));
        v = _mm512_mask_blend_ps(high, v, upper);
    }
    // SAFETY: `sums` is 16 `f32`s.
    unsafe {
        let s = _mm512_loadu_ps(sums.as_ptr());
        _mm512_storeu_ps(sums.as_mut_ptr(), _mm512_add_ps(s, v));
    }
}
