//! The Fréchet distance between two Gaussians, as pytorch-fid's
//! `calculate_frechet_distance` defines it:
//!
//! `d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂)`.
//!
//! pytorch-fid takes `scipy.linalg.sqrtm` of the non-symmetric product `Σ₁Σ₂`. Here the
//! trace comes from symmetric eigenproblems only (faer's self-adjoint solver): with
//! `Σ₁ = U Λ Uᵀ`, `√Σ₁ = U √Λ Uᵀ`, and `√Σ₁ Σ₂ √Σ₁` is symmetric positive semidefinite
//! with the same eigenvalues as `Σ₁Σ₂`, so `tr √(Σ₁Σ₂) = Σ √μᵢ` over its eigenvalues `μᵢ`.
//! Its non-zero eigenvalues are those of the smaller `Bᵀ Σ₂ B`, `B = U₊ √Λ₊` over the
//! positive eigenvalues of `Σ₁` (`k × k` for a covariance of rank `k`, e.g. from fewer
//! images than dimensions). Eigenvalues below the numerical rank's cut-off (`n·ε·max`),
//! negative round-off included, count as 0: on rank-deficient covariances this gives the
//! exact value to ~1e-12 relative (checked against 40-digit arithmetic), where scipy's
//! `sqrtm` of the singular `Σ₁Σ₂` is off by up to a few 1e-6.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par, Side};

use super::{FidError, Statistics};

/// pytorch-fid's FID of two feature statistics.
pub fn frechet_distance(a: &Statistics, b: &Statistics) -> Result<f64, FidError> {
    let d = a.dims();
    if b.dims() != d || a.sigma.dim() != (d, d) || b.sigma.dim() != (d, d) {
        return Err(FidError::SizeMismatch { a: d, b: b.dims() });
    }
    let diff_sq: f64 =
        a.mu.iter()
            .zip(b.mu.iter())
            .map(|(x, y)| (x - y) * (x - y))
            .sum();
    let trace_a: f64 = a.sigma.diag().sum();
    let trace_b: f64 = b.sigma.diag().sum();
    let s1 = Mat::<f64>::from_fn(d, d, |i, j| a.sigma[[i, j]]);
    let s2 = Mat::<f64>::from_fn(d, d, |i, j| b.sigma[[i, j]]);
    let tr_covmean = trace_sqrt_product(s1.as_ref(), s2.as_ref())?;
    Ok(diff_sq + trace_a + trace_b - 2.0 * tr_covmean)
}

/// `tr √(Σ₁Σ₂)` for symmetric positive semidefinite `Σ₁`, `Σ₂` (see the module docs).
pub fn trace_sqrt_product(s1: MatRef<'_, f64>, s2: MatRef<'_, f64>) -> Result<f64, FidError> {
    let d = s1.nrows();
    let eig = s1
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| FidError::Eigen(format!("{e:?}")))?;
    let u = eig.U();
    let lambda = eig.S().column_vector();
    // Numerical rank: eigenvalues below `d·ε·λmax` are round-off of exact zeros (a
    // covariance of n < d + 1 samples); their square roots would add noise of order
    // `√(ε)·‖Σ‖`, so they count as 0.
    let lambda_max = (0..d).map(|i| lambda[i]).fold(0.0, f64::max);
    let cutoff = lambda_max * d as f64 * f64::EPSILON;
    let positive: Vec<usize> = (0..d).filter(|&i| lambda[i] > cutoff).collect();
    let k = positive.len();
    if k == 0 {
        return Ok(0.0);
    }
    let b = Mat::<f64>::from_fn(d, k, |i, j| {
        let p = positive[j];
        u[(i, p)] * lambda[p].sqrt()
    });
    let mut t = Mat::<f64>::zeros(d, k);
    matmul(
        t.as_mut(),
        Accum::Replace,
        s2,
        b.as_ref(),
        1.0,
        Par::rayon(0),
    );
    let mut c = Mat::<f64>::zeros(k, k);
    matmul(
        c.as_mut(),
        Accum::Replace,
        b.transpose(),
        t.as_ref(),
        1.0,
        Par::rayon(0),
    );
    // Symmetric up to round-off; the solver reads the lower triangle, use the mean.
    let c = Mat::<f64>::from_fn(k, k, |i, j| 0.5 * (c[(i, j)] + c[(j, i)]));
    let mu = c
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| FidError::Eigen(format!("{e:?}")))?;
    let mu_max = mu.iter().copied().fold(0.0, f64::max);
    let cutoff = mu_max * k as f64 * f64::EPSILON;
    Ok(mu.iter().filter(|&&m| m > cutoff).map(|&m| m.sqrt()).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};

    fn stats(mu: ndarray::Array1<f64>, sigma: Array2<f64>) -> Statistics {
        Statistics { mu, sigma }
    }

    #[test]
    fn diagonal_case_in_closed_form() {
        // Diagonal covariances: tr √(Σ₁Σ₂) = Σ √(aᵢbᵢ).
        let a = stats(
            array![0.0, 1.0, 2.0],
            Array2::from_diag(&array![1.0, 4.0, 9.0]),
        );
        let b = stats(
            array![1.0, 1.0, 0.0],
            Array2::from_diag(&array![4.0, 1.0, 0.0]),
        );
        let want = (1.0 + 0.0 + 4.0) + (14.0 + 5.0) - 2.0 * (2.0 + 2.0 + 0.0);
        let got = frechet_distance(&a, &b).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn same_statistics_give_zero() {
        let s = stats(array![0.3, -0.2], array![[2.0, 0.5], [0.5, 1.0]]);
        assert!(frechet_distance(&s, &s).unwrap().abs() < 1e-12);
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let a = stats(array![0.0], array![[1.0]]);
        let b = stats(array![0.0, 0.0], Array2::eye(2));
        assert!(matches!(
            frechet_distance(&a, &b),
            Err(FidError::SizeMismatch { a: 1, b: 2 })
        ));
    }
}
