//! Folding a user in: their bias and factors re-solved from their ratings with the item
//! factors held fixed, by regularised least squares.
//!
//! With `z_i = [1, q_i]` and `x = [b_u, p_u]`, a user's ratings `r_i` are fitted by minimising
//! `Σ (r_i − μ − b_i − z_i·x)² + λ‖x − x₀‖²_…`, whose normal equations are the
//! `(k+1)×(k+1)` symmetric positive-definite system `A x = c`:
//!
//! - a user the model never saw starts from nothing: `A = λI + Σ z_i z_iᵀ`,
//!   `c = Σ z_i (r_i − μ − b_i)`;
//! - a user the model knows keeps their training ratings as evidence. The model file does
//!   not hold the values of those ratings, but it does hold which items they were, and the
//!   trained `x₀` is (approximately) the solution of exactly their system. So their system
//!   is `A₀ = λI + Σ_{training items} z_i z_iᵀ` with right-hand side `A₀ x₀`, and new ratings
//!   add to it: `A = A₀ + Σ_new z_i z_iᵀ`, `c = A₀ x₀ + Σ_new z_i (r_i − μ − b_i)`. With no
//!   new ratings the answer is `x₀` itself: folding in never moves a user without evidence.
//!
//! One user costs `O(k² · ratings)` to build `A` (one Gram product `ZᵀZ` by ndarray's
//! matrix multiply, no BLAS needed) and `O(k³)` to factor it: `k` is small, so a
//! hand-written Cholesky in `f64` is enough. The rows run in a canonical order (ascending
//! item index), so the same ratings give bit-identical factors however their events arrived.

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
/// sorted by item and hold each item once. `reg` is λ (> 0 keeps `A` positive definite).
pub fn solve_user(
    model: &Recommender,
    known: Option<usize>,
    evidence: &[Evidence],
    reg: f64,
) -> Result<Solved, SolveError> {
    let d = model.factors() + 1;
    // Rows `z_i`: first the training items (a known user's prior), then the new evidence.
    let trained = known.map_or(&[][..], |u| model.rated_of(u));
    let rows = trained.len() + evidence.len();
    let mut z = Array2::<f64>::zeros((rows, d));
    let items = trained
        .iter()
        .copied()
        .chain(evidence.iter().map(|e| e.item));
    for (mut row, i) in z.rows_mut().into_iter().zip(items) {
        row[0] = 1.0;
        for (zf, q) in row.iter_mut().skip(1).zip(model.item_factors(i)) {
            *zf = f64::from(*q);
        }
    }
    // The O(k² · ratings) part is one Gram product, done by ndarray's matrix multiply.
    let mut a = z.t().dot(&z);
    for f in 0..d {
        a[[f, f]] += reg;
    }
    let targets: Array1<f64> = evidence
        .iter()
        .map(|e| f64::from(e.rating) - f64::from(model.item_base(e.item)))
        .collect();
    let new_rows = z.slice(ndarray::s![trained.len().., ..]);
    let mut c = new_rows.t().dot(&targets);
    if let Some(u) = known {
        // c += A₀ x₀ = λ x₀ + Z₀ᵀ (Z₀ x₀).
        let (bias, factors) = model.user_params(u);
        let x0: Array1<f64> = std::iter::once(bias)
            .chain(factors.iter().copied())
            .map(f64::from)
            .collect();
        let z0 = z.slice(ndarray::s![..trained.len(), ..]);
        c += &z0.t().dot(&z0.dot(&x0));
        c.scaled_add(reg, &x0);
    }
    let x = cholesky_solve(a, c)?;
    let solved = Solved {
        bias: x[0] as f32,
        factors: x.iter().skip(1).map(|&v| v as f32).collect(),
    };
    if !solved.bias.is_finite() || solved.factors.iter().any(|v| !v.is_finite()) {
        return Err(SolveError::NotFinite);
    }
    Ok(solved)
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
        // Also refuses NaN.
        if !(pivot > 0.0) {
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
