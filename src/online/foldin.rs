//! Folding a user in: their bias and factors re-solved from their ratings with the item
//! factors held fixed, by regularised least squares.
//!
//! With `z_i = [1, q_i]`, `x = [b_u, p_u]` and targets `t_i = r_i − μ − b_i`, a user is
//! `x = argmin ‖Z x − t‖² + (x − x₀)ᵀ P (x − x₀)` over the rows `Z` of their new ratings,
//! for a prior mean `x₀` and a diagonal prior precision `P`:
//!
//! - a user the model never saw: `x₀ = 0`, `P = λI` (plain ridge regression);
//! - a user the model knows keeps their training ratings as evidence: `x₀` is their trained
//!   vector, which (approximately) minimises the same loss over the training ratings, and
//!   `P` is the diagonal of that loss's curvature, `λ + Σ_{training items} z_i²` (the model
//!   file says which items they rated, though not how). With no new ratings the answer is
//!   `x₀` itself: folding in never moves a user without evidence, and a user with a long
//!   history moves less per rating than a new one.
//!
//! Two exact ways to the same answer, the cheaper one taken by the number `n` of new
//! ratings against `d = k + 1`:
//! - `n ≥ d`, normal equations: `(P + ZᵀZ) x = P x₀ + Zᵀ t`, `O(n·d² + d³)`;
//! - `n < d`, dual form: `x = x₀ + P⁻¹Zᵀ (Z P⁻¹ Zᵀ + I)⁻¹ (t − Z x₀)`, `O(n²·d + n³)`,
//!   so a user with a handful of ratings costs microseconds, not a `d³` factorisation.
//!
//! Gram products go through ndarray's matrix multiply (no BLAS needed); the small SPD
//! systems through a hand-written Cholesky in `f64`. Rows run in a canonical order
//! (ascending item index), so the same ratings give bit-identical factors however their
//! events arrived.

use ndarray::{Array1, Array2};

use crate::model::Recommender;

/// One piece of evidence about a user, in the model's item indices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    pub item: u32,
    pub rating: f32,
}

/// A solved user.
#[derive(Debug, Clone, PartialEq)]
pub struct Solved {
    pub bias: f32,
    pub factors: Vec<f32>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SolveError {
    #[error("the normal equations are not positive definite (pivot {0})")]
    NotPositiveDefinite(usize),
    #[error("the solution is not finite")]
    NotFinite,
}

/// Solves user `known` (the model's index, if it knows them) from `evidence`, which must be
/// sorted by item and hold each item once. `reg` is λ (> 0 keeps every system SPD).
pub fn solve_user(
    model: &Recommender,
    known: Option<usize>,
    evidence: &[Evidence],
    reg: f64,
) -> Result<Solved, SolveError> {
    let precision = known.map(|u| known_precision(model, u, reg));
    solve_user_with(model, known, precision.as_deref(), evidence, reg)
}

/// The diagonal prior precision of known user `u`, `λ + Σ_{training items} z_i²`: a pass
/// over every item they rated at training time (`O(ratings · k)`), which the state computes
/// once per user and model rather than once per event.
pub fn known_precision(model: &Recommender, u: usize, reg: f64) -> Box<[f64]> {
    let mut precision = vec![reg; model.factors() + 1];
    let trained = model.rated_of(u);
    precision[0] += trained.len() as f64;
    for &i in trained {
        for (p, q) in precision[1..].iter_mut().zip(item_row(model, i)) {
            let q = f64::from(*q);
            *p += q * q;
        }
    }
    precision.into()
}

/// `solve_user` with known user `known`'s prior precision already computed
/// (`known_precision`; computed here when `None`). Ignored for a new user.
pub fn solve_user_with(
    model: &Recommender,
    known: Option<usize>,
    known_prior: Option<&[f64]>,
    evidence: &[Evidence],
    reg: f64,
) -> Result<Solved, SolveError> {
    let d = model.factors() + 1;
    let n = evidence.len();
    let item = |i: u32| item_row(model, i);
    // Prior: mean and diagonal precision.
    let mut x0 = Array1::<f64>::zeros(d);
    let precision = match known {
        Some(u) => {
            let (bias, factors) = model.user_params(u);
            for (x, v) in x0
                .iter_mut()
                .zip(std::iter::once(bias).chain(factors.iter().copied()))
            {
                *x = f64::from(v);
            }
            match known_prior.filter(|p| p.len() == d) {
                Some(p) => Array1::from(p.to_vec()),
                None => Array1::from(known_precision(model, u, reg).into_vec()),
            }
        }
        None => Array1::from_elem(d, reg),
    };
    let mut z = Array2::<f64>::zeros((n, d));
    for (mut row, e) in z.rows_mut().into_iter().zip(evidence) {
        let Some(row) = row.as_slice_mut() else {
            unreachable!("rows of a standard-layout array are contiguous")
        };
        row[0] = 1.0;
        for (zf, q) in row[1..].iter_mut().zip(item(e.item)) {
            *zf = f64::from(*q);
        }
    }
    let t: Array1<f64> = evidence
        .iter()
        .map(|e| f64::from(e.rating) - f64::from(model.item_base(e.item)))
        .collect();

    let x = if n >= d {
        let mut a = z.t().dot(&z);
        for f in 0..d {
            a[[f, f]] += precision[f];
        }
        let c = &precision * &x0 + z.t().dot(&t);
        cholesky_solve(a, c)?
    } else {
        // Z P⁻¹: column f scaled by 1/P_f.
        let mut zp = z.clone();
        for (mut column, p) in zp.columns_mut().into_iter().zip(&precision) {
            column.mapv_inplace(|v| v / p);
        }
        let mut k = zp.dot(&z.t());
        for j in 0..n {
            k[[j, j]] += 1.0;
        }
        let residual = &t - &z.dot(&x0);
        let w = cholesky_solve(k, residual)?;
        x0 + zp.t().dot(&w)
    };
    let solved = Solved {
        bias: x[0] as f32,
        factors: x.iter().skip(1).map(|&v| v as f32).collect(),
    };
    if !solved.bias.is_finite() || solved.factors.iter().any(|v| !v.is_finite()) {
        return Err(SolveError::NotFinite);
    }
    Ok(solved)
}

/// Item `i`'s factor row as a slice.
fn item_row(model: &Recommender, i: u32) -> &[f32] {
    // invariant: item rows are contiguous (`Recommender` keeps them items × factors,
    // standard layout).
    model.item_factors(i).to_slice().unwrap_or_default()
}

/// Solves `A x = c` for symmetric positive-definite `A`, reading its lower triangle only:
/// `A = L Lᵀ` in place (row-major, so every inner product is over two contiguous row
/// prefixes), then forward and back substitution.
pub fn cholesky_solve(a: Array2<f64>, c: Array1<f64>) -> Result<Array1<f64>, SolveError> {
    let d = c.len();
    let mut a = a.as_standard_layout().into_owned();
    let Some(l) = a.as_slice_mut() else {
        unreachable!("a standard-layout array is one contiguous slice")
    };
    let mut y = c.to_vec();
    for j in 0..d {
        let (above, from_j) = l.split_at_mut(j * d);
        let row_j = &mut from_j[..d];
        let pivot = row_j[j] - dot(&row_j[..j], &row_j[..j]);
        if pivot.is_nan() || pivot <= 0.0 {
            return Err(SolveError::NotPositiveDefinite(j));
        }
        let diag = pivot.sqrt();
        row_j[j] = diag;
        // Column j of L below the diagonal: rows after j, which live in `from_j`.
        let (row_j, below) = from_j.split_at_mut(d);
        for i in 0..d - j - 1 {
            let row_i = &mut below[i * d..(i + 1) * d];
            row_i[j] = (row_i[j] - dot(&row_i[..j], &row_j[..j])) / diag;
        }
        let _ = above;
    }
    // L y = c
    for i in 0..d {
        let row = &l[i * d..(i + 1) * d];
        y[i] = (y[i] - dot(&row[..i], &y[..i])) / row[i];
    }
    // Lᵀ x = y, walking L by columns.
    for i in (0..d).rev() {
        let mut v = y[i];
        for p in i + 1..d {
            v -= l[p * d + i] * y[p];
        }
        y[i] = v / l[i * d + i];
    }
    Ok(Array1::from(y))
}

/// A dot product in four independent lanes, so it vectorises; the summation order is fixed,
/// so results are the same from run to run.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0f64; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = a4
        .remainder()
        .iter()
        .zip(b4.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a4.zip(b4) {
        for lane in 0..4 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RecommenderSpec;

    #[test]
    fn cholesky_solves_a_known_system() {
        // A = M Mᵀ + I for a fixed M: SPD; check A x = c by multiplying back.
        let m = [[2.0, -1.0, 0.5], [0.3, 1.5, -2.0], [1.0, 0.0, 3.0]];
        let mut a = Array2::<f64>::zeros((3, 3));
        for i in 0..3 {
            for j in 0..3 {
                a[[i, j]] = (0..3).map(|p| m[i][p] * m[j][p]).sum::<f64>() + f64::from(i == j);
            }
        }
        let c = Array1::from(vec![1.0, -2.0, 0.25]);
        let x = cholesky_solve(a.clone(), c.clone()).unwrap();
        let back = a.dot(&x);
        for (got, want) in back.iter().zip(&c) {
            assert!((got - want).abs() < 1e-12, "{back} vs {c}");
        }
        let not_spd = Array2::from_shape_vec((2, 2), vec![1.0, 0.0, 2.0, 1.0]).unwrap();
        assert_eq!(
            cholesky_solve(not_spd, Array1::zeros(2)),
            Err(SolveError::NotPositiveDefinite(1))
        );
    }

    fn model() -> Recommender {
        Recommender::compile(&RecommenderSpec {
            factors: 2,
            global_mean: 3.0,
            user_ids: vec![10],
            user_bias: vec![0.25],
            user_factors: vec![0.5, -0.5],
            item_ids: vec![100, 200, 300, 400],
            item_bias: vec![0.0, 0.2, -0.2, 0.1],
            item_factors: vec![1.0, 0.0, 0.5, 0.5, 0.0, 1.0, -1.0, 3.0],
            item_titles: Vec::new(),
            rated: vec![vec![0, 2]],
        })
        .unwrap()
    }

    #[test]
    fn a_new_user_fits_noise_free_ratings_of_a_planted_vector() {
        let model = model();
        // Ratings made by x = [b, p] = [0.5, 1.0, -1.0] with no noise: with tiny λ the
        // least-squares answer is x (four consistent equations of rank three).
        let truth = [0.5f32, 1.0, -1.0];
        let evidence: Vec<Evidence> = (0..4u32)
            .map(|i| {
                let q = model.item_factors(i);
                let rating = model.item_base(i) + truth[0] + q[0] * truth[1] + q[1] * truth[2];
                Evidence { item: i, rating }
            })
            .collect();
        let solved = solve_user(&model, None, &evidence, 1e-9).unwrap();
        assert!((solved.bias - 0.5).abs() < 1e-4, "{solved:?}");
        assert!((solved.factors[0] - 1.0).abs() < 1e-4, "{solved:?}");
        assert!((solved.factors[1] + 1.0).abs() < 1e-4, "{solved:?}");
        // No evidence at all: the prior, zero.
        let empty = solve_user(&model, None, &[], 0.1).unwrap();
        assert_eq!(empty.bias, 0.0);
        assert_eq!(empty.factors, vec![0.0, 0.0]);
    }

    #[test]
    fn the_dual_and_the_normal_equations_agree() {
        // d = 3: two ratings take the dual form, three and four the normal equations.
        let model = model();
        let evidence: Vec<Evidence> = [(0, 4.0), (1, 2.5), (2, 3.5), (3, 5.0)]
            .iter()
            .map(|&(item, rating)| Evidence { item, rating })
            .collect();
        for known in [None, Some(0)] {
            for n in 1..=4 {
                let solved = solve_user(&model, known, &evidence[..n], 0.7).unwrap();
                // Brute force: the same objective's normal equations, dense.
                let mut a = Array2::<f64>::zeros((3, 3));
                let mut c = Array1::<f64>::zeros(3);
                let (x0, p) = match known {
                    None => (vec![0.0; 3], vec![0.7; 3]),
                    Some(u) => {
                        let (b, f) = model.user_params(u);
                        let mut p = vec![0.7; 3];
                        for &i in model.rated_of(u) {
                            let q = model.item_factors(i);
                            p[0] += 1.0;
                            p[1] += f64::from(q[0] * q[0]);
                            p[2] += f64::from(q[1] * q[1]);
                        }
                        (vec![f64::from(b), f64::from(f[0]), f64::from(f[1])], p)
                    }
                };
                for f in 0..3 {
                    a[[f, f]] = p[f];
                    c[f] = p[f] * x0[f];
                }
                for e in &evidence[..n] {
                    let q = model.item_factors(e.item);
                    let z = [1.0, f64::from(q[0]), f64::from(q[1])];
                    let t = f64::from(e.rating) - f64::from(model.item_base(e.item));
                    for r in 0..3 {
                        c[r] += z[r] * t;
                        for col in 0..3 {
                            a[[r, col]] += z[r] * z[col];
                        }
                    }
                }
                let want = cholesky_solve(a, c).unwrap();
                let got = [solved.bias, solved.factors[0], solved.factors[1]];
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (f64::from(*g) - w).abs() < 1e-5,
                        "{known:?} n {n}: {got:?} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_known_user_without_new_evidence_keeps_the_trained_vector() {
        let model = model();
        let solved = solve_user(&model, Some(0), &[], 0.1).unwrap();
        assert!((solved.bias - 0.25).abs() < 1e-6, "{solved:?}");
        assert!((solved.factors[0] - 0.5).abs() < 1e-6);
        assert!((solved.factors[1] + 0.5).abs() < 1e-6);
        // A new high rating of item 400 (q = [-1, 3]) moves p towards it.
        let high = Evidence {
            item: 3,
            rating: 5.0,
        };
        let moved = solve_user(&model, Some(0), &[high], 0.1).unwrap();
        let before = -solved.factors[0] + 3.0 * solved.factors[1] + solved.bias;
        let after = -moved.factors[0] + 3.0 * moved.factors[1] + moved.bias;
        assert!(after > before + 0.5, "{before} → {after}");
    }
}
