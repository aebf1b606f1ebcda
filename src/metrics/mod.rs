//! Image metrics: paired (PSNR, SSIM of an image against its r = 0 twin).

pub mod paired;
