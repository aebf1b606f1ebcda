//! Decoded images to 8-bit RGB, exactly as diffusers' `VaeImageProcessor.postprocess`
//! with `output_type="pil"`: `(x / 2 + 0.5).clamp(0, 1)`, × 255, numpy's round
//! (half to even), as `uint8`.

use image::RgbImage;
use ndarray::ArrayView3;

/// One `[3, h, w]` image in [-1, 1] to pixels.
pub fn to_rgb8(image: ArrayView3<f32>) -> RgbImage {
    let (h, w) = (image.shape()[1], image.shape()[2]);
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let px = |c: usize| to_u8(image[[c, y as usize, x as usize]]);
        image::Rgb([px(0), px(1), px(2)])
    })
}

/// Same float32 operations and order as torch, then numpy.
fn to_u8(v: f32) -> u8 {
    let unit = (v / 2.0 + 0.5).clamp(0.0, 1.0);
    (unit * 255.0).round_ties_even() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_diffusers_rounding() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(5.0), 255);
        assert_eq!(to_u8(-3.0), 0);
        assert_eq!(to_u8(0.0), 128); // 127.5 rounds to even
        assert_eq!(to_u8(f32::NAN), 0);
    }
}
