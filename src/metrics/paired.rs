//! Paired image metrics: an r > 0 image against its r = 0 twin (same prompt and
//! seed). Both on 8-bit RGB of equal size, computed in f64.
//!
//! * [`psnr`]: `10·log10(255² / MSE)` over all pixels and channels, as skimage's
//!   `peak_signal_noise_ratio(a, b, data_range=255)`; `f64::INFINITY` for equal
//!   images.
//! * [`ssim`]: Wang et al. 2004 SSIM, exactly skimage's
//!   `structural_similarity(a, b, channel_axis=2, gaussian_weights=True,
//!   sigma=1.5, use_sample_covariance=False, data_range=255)`: per channel, local
//!   means, variances and covariance from a Gaussian window (σ = 1.5, truncated at
//!   3.5σ: 11 taps, normalised); `C1 = (0.01·255)²`, `C2 = (0.03·255)²`; the SSIM
//!   map is averaged over the pixels at least 5 (the window's half width) from every
//!   border, then over channels. Those pixels' windows lie inside the image, so
//!   skimage's border mode (`scipy.ndimage`'s `reflect`) never enters the mean, and
//!   only they are filtered.
//!
//! Golden values: `tools/golden_paired.py` writes `golden/paired/` from skimage;
//! the tests below read them.

use image::RgbImage;

/// Peak value of 8-bit images.
const DATA_RANGE: f64 = 255.0;
/// Gaussian σ of the SSIM window.
const SIGMA: f64 = 1.5;
/// Half width of the window: skimage's `truncate = 3.5` gives `int(3.5·1.5 + 0.5) = 5`.
const RADIUS: usize = 5;

/// Errors of the paired metrics.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PairedError {
    #[error("images differ in size: {a:?} against {b:?}")]
    SizeMismatch { a: (u32, u32), b: (u32, u32) },
    #[error("image of {0}x{1} is smaller than the 11x11 SSIM window")]
    TooSmall(u32, u32),
}

/// PSNR and SSIM of one pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    pub psnr: f64,
    pub ssim: f64,
}

/// Both metrics of `test` against `reference`.
pub fn paired(reference: &RgbImage, test: &RgbImage) -> Result<Paired, PairedError> {
    Ok(Paired {
        psnr: psnr(reference, test)?,
        ssim: ssim(reference, test)?,
    })
}

fn check_sizes(a: &RgbImage, b: &RgbImage) -> Result<(), PairedError> {
    if a.dimensions() != b.dimensions() {
        return Err(PairedError::SizeMismatch {
            a: a.dimensions(),
            b: b.dimensions(),
        });
    }
    Ok(())
}

/// Peak signal-to-noise ratio in dB (`data_range = 255`); infinite for equal images.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> Result<f64, PairedError> {
    check_sizes(a, b)?;
    let n = a.as_raw().len();
    let sse: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum();
    let mse = sse / n as f64;
    Ok(10.0 * (DATA_RANGE * DATA_RANGE / mse).log10())
}

/// The normalised 11-tap Gaussian window (σ = 1.5), as scipy's `gaussian_filter`.
fn gaussian_taps() -> [f64; 2 * RADIUS + 1] {
    let mut w = [0.0; 2 * RADIUS + 1];
    for (i, v) in w.iter_mut().enumerate() {
        let x = i as f64 - RADIUS as f64;
        *v = (-0.5 * x * x / (SIGMA * SIGMA)).exp();
    }
    let s: f64 = w.iter().sum();
    w.iter_mut().for_each(|v| *v /= s);
    w
}

/// The separable Gaussian filter of an `h × w` plane (rows, then columns) at the
/// pixels whose window lies inside the plane: `(h − 2R) × (w − 2R)` values, row-major.
/// Those are the only pixels the SSIM mean reads, and their windows never reach the
/// border, so scipy's `reflect` border mode cannot change them. Each value sums its
/// taps in the same order as a per-pixel loop would (so the same bits); the loops run
/// along rows, which the compiler vectorises.
fn filter_inside(plane: &[f64], w: usize, h: usize, taps: &[f64]) -> Vec<f64> {
    let (iw, ih) = (w - 2 * RADIUS, h - 2 * RADIUS);
    let mut rows = vec![0.0; h * iw];
    for (src, dst) in plane.chunks_exact(w).zip(rows.chunks_exact_mut(iw)) {
        for (k, &t) in taps.iter().enumerate() {
            for (o, &v) in dst.iter_mut().zip(&src[k..k + iw]) {
                *o += t * v;
            }
        }
    }
    let mut out = vec![0.0; ih * iw];
    for (y, dst) in out.chunks_exact_mut(iw).enumerate() {
        for (k, &t) in taps.iter().enumerate() {
            let src = &rows[(y + k) * iw..(y + k + 1) * iw];
            for (o, &v) in dst.iter_mut().zip(src) {
                *o += t * v;
            }
        }
    }
    out
}

/// Mean SSIM over the three channels (definition in the module docs).
pub fn ssim(a: &RgbImage, b: &RgbImage) -> Result<f64, PairedError> {
    check_sizes(a, b)?;
    let (w, h) = (a.width() as usize, a.height() as usize);
    if w < 2 * RADIUS + 1 || h < 2 * RADIUS + 1 {
        return Err(PairedError::TooSmall(a.width(), a.height()));
    }
    let taps = gaussian_taps();
    let c1 = (0.01 * DATA_RANGE).powi(2);
    let c2 = (0.03 * DATA_RANGE).powi(2);
    let mut total = 0.0;
    for c in 0..3 {
        let x: Vec<f64> = a
            .as_raw()
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| v as f64)
            .collect();
        let y: Vec<f64> = b
            .as_raw()
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| v as f64)
            .collect();
        let xx: Vec<f64> = x.iter().map(|v| v * v).collect();
        let yy: Vec<f64> = y.iter().map(|v| v * v).collect();
        let xy: Vec<f64> = x.iter().zip(&y).map(|(p, q)| p * q).collect();
        let ux = filter_inside(&x, w, h, &taps);
        let uy = filter_inside(&y, w, h, &taps);
        let uxx = filter_inside(&xx, w, h, &taps);
        let uyy = filter_inside(&yy, w, h, &taps);
        let uxy = filter_inside(&xy, w, h, &taps);
        let mut sum = 0.0;
        for i in 0..ux.len() {
            let (mx, my) = (ux[i], uy[i]);
            let vx = uxx[i] - mx * mx;
            let vy = uyy[i] - my * my;
            let vxy = uxy[i] - mx * my;
            let num = (2.0 * mx * my + c1) * (2.0 * vxy + c2);
            let den = (mx * mx + my * my + c1) * (vx + vy + c2);
            sum += num / den;
        }
        total += sum / ux.len() as f64;
    }
    Ok(total / 3.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn golden_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/paired")
    }

    fn load(name: &str) -> RgbImage {
        image::open(golden_dir().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .to_rgb8()
    }

    /// golden/paired/values.csv: `reference,test,psnr,ssim` from skimage.
    #[test]
    fn psnr_and_ssim_match_skimage() {
        #[derive(serde::Deserialize)]
        struct Row {
            reference: String,
            test: String,
            psnr: f64,
            ssim: f64,
        }
        let text = std::fs::read_to_string(golden_dir().join("values.csv")).unwrap();
        let mut n = 0;
        for (line, row) in crate::csv_text::rows::<Row>(&text).unwrap() {
            let (a, b) = (load(&row.reference), load(&row.test));
            let (want_psnr, want_ssim) = (row.psnr, row.ssim);
            let got = paired(&a, &b).unwrap();
            if want_psnr.is_infinite() {
                assert!(got.psnr.is_infinite(), "{line}: psnr {}", got.psnr);
            } else {
                assert!(
                    (got.psnr - want_psnr).abs() < 1e-9 * want_psnr.abs().max(1.0),
                    "{line}: psnr {}",
                    got.psnr
                );
            }
            assert!(
                (got.ssim - want_ssim).abs() < 1e-9,
                "{line}: ssim {} (diff {:e})",
                got.ssim,
                got.ssim - want_ssim
            );
            n += 1;
        }
        assert!(n >= 4, "golden values: {n} pairs");
    }

    #[test]
    fn equal_images_and_errors() {
        let a = RgbImage::from_fn(16, 12, |x, y| image::Rgb([x as u8 * 9, y as u8 * 13, 77]));
        assert_eq!(ssim(&a, &a).unwrap(), 1.0);
        assert!(psnr(&a, &a).unwrap().is_infinite());
        let b = RgbImage::new(12, 16);
        assert!(matches!(
            paired(&a, &b),
            Err(PairedError::SizeMismatch { .. })
        ));
        let t = RgbImage::new(10, 10);
        assert_eq!(ssim(&t, &t), Err(PairedError::TooSmall(10, 10)));
    }
}
