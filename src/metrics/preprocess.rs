//! pytorch-fid's preprocessing, outside the Inception graph.
//!
//! pytorch-fid 0.3.0 reads an image with `PIL.Image.open(path).convert('RGB')`, turns it into
//! `[3, H, W]` f32 in `[0, 1]` (torchvision's `ToTensor`: `value / 255`), and
//! `InceptionV3.forward` then resizes it with `F.interpolate(size=(299, 299),
//! mode='bilinear', align_corners=False)` (no antialiasing) and scales it with `2x - 1`.
//! [`preprocess`] does the same in the same f32 arithmetic as torch's CPU kernel (per
//! output row and column: source coordinate `scale·(i + 0.5) − 0.5` clamped at 0,
//! `scale = in / out` in f32, the two neighbours and `λ = src − floor(src)`; the value is
//! `(a·λw0 + b·λw1)·λh0 + (c·λw0 + d·λw1)·λh1`).

use std::path::Path;

use image::RgbImage;
use ndarray::{Array3, ArrayViewMut3};

use super::FidError;

/// Side of the square that pytorch-fid's Inception sees.
pub const INCEPTION_SIZE: usize = 299;

/// An image file as pytorch-fid sees it after `PIL.Image.open(path).convert('RGB')`:
/// grey is replicated, alpha is dropped (not composited), palettes are expanded.
pub fn load_rgb(path: &Path) -> Result<RgbImage, FidError> {
    let img = image::open(path).map_err(|e| FidError::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(img.to_rgb8())
}

/// `[3, 299, 299]` f32 in `[-1, 1]`: `ToTensor`, bilinear resize, `2x - 1`.
pub fn preprocess(img: &RgbImage) -> Array3<f32> {
    let mut out = Array3::<f32>::zeros((3, INCEPTION_SIZE, INCEPTION_SIZE));
    preprocess_into(img, out.view_mut());
    out
}

/// [`preprocess`] into `out` (`[3, 299, 299]`), e.g. one image of a batch.
pub fn preprocess_into(img: &RgbImage, mut out: ArrayViewMut3<f32>) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let rows = linear_taps(h, INCEPTION_SIZE);
    let cols = linear_taps(w, INCEPTION_SIZE);
    let raw = img.as_raw();
    let mut plane = vec![0f32; w * h];
    for c in 0..3 {
        // ToTensor: the byte as f32, divided by 255 (torch's `div`).
        for (p, v) in plane.iter_mut().enumerate() {
            *v = f32::from(raw[p * 3 + c]) / 255.0;
        }
        let mut dst = out.index_axis_mut(ndarray::Axis(0), c);
        for (oy, row_tap) in rows.iter().enumerate() {
            let r0 = &plane[row_tap.i0 * w..row_tap.i0 * w + w];
            let r1 = &plane[row_tap.i1 * w..row_tap.i1 * w + w];
            for (ox, col_tap) in cols.iter().enumerate() {
                let t0 = r0[col_tap.i0] * col_tap.w0 + r0[col_tap.i1] * col_tap.w1;
                let t1 = r1[col_tap.i0] * col_tap.w0 + r1[col_tap.i1] * col_tap.w1;
                let v = t0 * row_tap.w0 + t1 * row_tap.w1;
                dst[[oy, ox]] = 2.0 * v - 1.0;
            }
        }
    }
}

/// The two source indices and weights of one output index.
#[derive(Clone, Copy, Debug)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

/// torch's `compute_indices_weights_linear` for `align_corners=False` and no given scale:
/// `scale = in / out` (f32), `src = max(scale·(i + 0.5) − 0.5, 0)`, `i0 = min(floor(src),
/// in − 1)`, `i1 = i0 + 1` unless at the last index, `λ1 = clamp(src − i0, 0, 1)`,
/// `λ0 = 1 − λ1`.
fn linear_taps(input: usize, output: usize) -> Vec<Tap> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let w1 = (src - i0 as f32).clamp(0.0, 1.0);
            Tap {
                i0,
                i1,
                w0: 1.0 - w1,
                w1,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_keeps_pixels() {
        let taps = linear_taps(299, 299);
        for (i, t) in taps.iter().enumerate() {
            assert_eq!((t.i0, t.w0, t.w1), (i, 1.0, 0.0));
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(17, 9, image::Rgb([255, 0, 51]));
        let x = preprocess(&img);
        assert!(x.index_axis(ndarray::Axis(0), 0).iter().all(|&v| v == 1.0));
        assert!(x.index_axis(ndarray::Axis(0), 1).iter().all(|&v| v == -1.0));
        let want = 2.0 * (51.0f32 / 255.0) - 1.0;
        assert!(x
            .index_axis(ndarray::Axis(0), 2)
            .iter()
            .all(|&v| (v - want).abs() < 1e-6));
    }
}
