//! The synthetic feature sets of `tools/golden_fid.py`, bit for bit: the
//! Fréchet-distance parity tests and `tomex bench-fid` use the same statistics
//! as the golden file without storing 2048-d samples.

use ndarray::Array2;

/// splitmix64's `k`-th output (k from 1) for `seed`, scaled to [0, 1).
fn splitmix_uniform(seed: u64, count: usize) -> Vec<f64> {
    (1..=count as u64)
        .map(|k| {
            let mut z = seed.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 * 2f64.powi(-53)
        })
        .collect()
}

/// `n` samples of `dim` features: uniform noise of growing scale per dimension, one
/// shared factor (so the covariance is not diagonal), and a mean offset `shift`.
pub fn synthetic_samples(seed: u64, n: usize, dim: usize, shift: f64) -> Array2<f64> {
    let u = splitmix_uniform(seed, n * dim);
    let f = splitmix_uniform(seed + 1, n);
    Array2::from_shape_fn((n, dim), |(i, d)| {
        let scale = 0.5 + d as f64 / dim as f64;
        let load = ((d % 7) as f64 - 3.0) * 0.1;
        (u[i * dim + d] - 0.5) * scale + load * (f[i] - 0.5) + shift * (d % 5) as f64
    })
}
