//! Feature statistics: the mean and covariance pytorch-fid computes
//! (`np.mean(act, axis=0)`, `np.cov(act, rowvar=False)`, i.e. divided by n − 1), in f64,
//! and pytorch-fid's `.npz` files (`np.savez_compressed(path, mu=mu, sigma=sigma)`).

use std::fs::File;
use std::path::Path;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use ndarray::{Array1, Array2, ArrayView2};
use ndarray_npy::{NpzReader, NpzWriter, WriteNpzError};

use super::FidError;

/// Mean `mu` `[d]` and covariance `sigma` `[d, d]` of a set's features.
#[derive(Clone, Debug, PartialEq)]
pub struct Statistics {
    pub mu: Array1<f64>,
    pub sigma: Array2<f64>,
}

impl Statistics {
    /// Statistics of `features` `[n, d]` (one row per image); `what` names the set in the
    /// error when `n < 2`.
    pub fn from_features(features: ArrayView2<f64>, what: &str) -> Result<Statistics, FidError> {
        let (n, d) = features.dim();
        if n < 2 {
            return Err(FidError::TooFewImages {
                what: what.to_string(),
                n,
            });
        }
        let mu = features.sum_axis(ndarray::Axis(0)) / n as f64;
        // Centred features, column-major for faer: x[(i, j)] = f[i, j] − mu[j].
        let x = Mat::<f64>::from_fn(n, d, |i, j| features[[i, j]] - mu[j]);
        let mut c = Mat::<f64>::zeros(d, d);
        matmul(
            c.as_mut(),
            Accum::Replace,
            x.transpose(),
            x.as_ref(),
            1.0 / (n - 1) as f64,
            Par::rayon(0),
        );
        // Exactly symmetric (the product is, up to the order of summation).
        let sigma =
            Array2::from_shape_fn((d, d), |(i, j)| if i <= j { c[(i, j)] } else { c[(j, i)] });
        Ok(Statistics { mu, sigma })
    }

    /// Feature size `d`.
    pub fn dims(&self) -> usize {
        self.mu.len()
    }

    /// Reads pytorch-fid's `.npz` (`mu` `[d]`, `sigma` `[d, d]`, f64 or f32).
    pub fn load_npz(path: &Path) -> Result<Statistics, FidError> {
        let bad = |reason: String| FidError::Npz {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| FidError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut npz = NpzReader::new(file).map_err(|e| bad(e.to_string()))?;
        let mu: Array1<f64> = match npz.by_name::<_, ndarray::Ix1>("mu") {
            Ok(a) => a,
            Err(_) => npz
                .by_name::<ndarray::OwnedRepr<f32>, ndarray::Ix1>("mu")
                .map_err(|e| bad(format!("`mu`: {e}")))?
                .mapv(f64::from),
        };
        let sigma: Array2<f64> = match npz.by_name::<_, ndarray::Ix2>("sigma") {
            Ok(a) => a,
            Err(_) => npz
                .by_name::<ndarray::OwnedRepr<f32>, ndarray::Ix2>("sigma")
                .map_err(|e| bad(format!("`sigma`: {e}")))?
                .mapv(f64::from),
        };
        let d = mu.len();
        if sigma.dim() != (d, d) {
            return Err(bad(format!(
                "`mu` has {d} entries but `sigma` is {:?}",
                sigma.dim()
            )));
        }
        Ok(Statistics { mu, sigma })
    }

    /// Writes pytorch-fid's `.npz` (compressed, f64 `mu` and `sigma`), through a temporary
    /// file renamed into place.
    pub fn save_npz(&self, path: &Path) -> Result<(), FidError> {
        write_npz(path, |npz| {
            npz.add_array("mu", &self.mu)?;
            npz.add_array("sigma", &self.sigma)
        })
    }
}

/// A compressed `.npz` at `path` holding the arrays `add` puts in, written atomically.
pub(super) fn write_npz(
    path: &Path,
    add: impl FnOnce(&mut NpzWriter<&mut std::io::Cursor<Vec<u8>>>) -> Result<(), WriteNpzError>,
) -> Result<(), FidError> {
    let io = |e: &dyn std::fmt::Display| FidError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut bytes = std::io::Cursor::new(Vec::new());
    let mut npz = NpzWriter::new_compressed(&mut bytes);
    add(&mut npz).map_err(|e| io(&e))?;
    npz.finish().map_err(|e| io(&e))?;
    crate::fsx::write_atomic(path, bytes.get_ref()).map_err(|e| io(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn covariance_is_np_cov() {
        // np.cov([[1, 2], [3, 5], [4, 4]], rowvar=False)
        let f = array![[1.0, 2.0], [3.0, 5.0], [4.0, 4.0]];
        let s = Statistics::from_features(f.view(), "test").unwrap();
        assert_eq!(s.mu, array![8.0 / 3.0, 11.0 / 3.0]);
        let want = array![[7.0 / 3.0, 11.0 / 6.0], [11.0 / 6.0, 7.0 / 3.0]];
        for (a, b) in s.sigma.iter().zip(want.iter()) {
            assert!((a - b).abs() < 1e-14, "{a} vs {b}");
        }
    }

    #[test]
    fn one_image_is_an_error() {
        let f = array![[1.0, 2.0]];
        let err = Statistics::from_features(f.view(), "set A").unwrap_err();
        assert!(err.to_string().contains("set A has 1 image(s)"), "{err}");
    }

    #[test]
    fn npz_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.npz");
        let f = array![[1.0, 2.0, 0.5], [3.0, 5.0, 0.25], [4.0, 4.0, 1.0]];
        let s = Statistics::from_features(f.view(), "t").unwrap();
        s.save_npz(&path).unwrap();
        assert_eq!(Statistics::load_npz(&path).unwrap(), s);
    }
}
