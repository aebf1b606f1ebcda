//! Image-set metrics, computed as the thesis's Python tools computed them.
//!
//! * FID exactly as pytorch-fid 0.3.0: [`preprocess`] (8-bit RGB to `[0, 1]`, bilinear
//!   resize to 299×299 as torch's `F.interpolate`, `2x − 1`), [`inception`] (features from
//!   the exported network through ONNX Runtime, in pytorch-fid's file order),
//!   [`stats`] (mean and `np.cov` covariance in f64, `.npz` files like pytorch-fid's),
//!   [`frechet`] (the Fréchet distance with faer's symmetric eigensolver).
//! * [`cache`]: set statistics on disk, keyed by the set's content (image keys, dims,
//!   Inception digest), so the r = 0 set is featurised once.
//! * [`paired`]: PSNR and SSIM of an image against its r = 0 twin.
//!
//! Golden files: `tools/golden_fid.py` writes `golden/fid/` from pytorch-fid;
//! `tests/fid_parity.rs` compares against them.

pub mod cache;
pub mod frechet;
pub mod inception;
pub mod paired;
pub mod preprocess;
pub mod stats;
pub mod synthetic;

use std::path::PathBuf;

use crate::engine::EngineError;

pub use frechet::frechet_distance;
pub use inception::{
    fid_of_paths, image_files, statistics_of_path, FeaturiseTimes, Inception, FID_DIMS,
};
pub use stats::Statistics;

/// Errors of the FID computation, each naming what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum FidError {
    #[error(
        "{what} has {n} image(s); FID needs at least 2 per set (the covariance divides by n − 1)"
    )]
    TooFewImages { what: String, n: usize },
    #[error("{path}: no images (pytorch-fid reads files ending in .{})", IMAGE_EXTENSIONS.join(", ."))]
    NoImages { path: PathBuf },
    #[error("{path} is a folder of images: its statistics need the Inception network (--inception MODEL)")]
    NoInception { path: PathBuf },
    #[error("--dims {0} is not one of pytorch-fid's feature sizes 64, 192, 768, 2048")]
    Dims(usize),
    #[error("the statistics have different sizes: {a} and {b} dimensions")]
    SizeMismatch { a: usize, b: usize },
    #[error("cannot read image {path}: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path} is not a pytorch-fid statistics file (`mu`, `sigma`): {reason}")]
    Npz { path: PathBuf, reason: String },
    #[error("the eigendecomposition did not converge: {0}")]
    Eigen(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// File extensions pytorch-fid reads from a folder (`IMAGE_EXTENSIONS`; lower case only,
/// as its case-sensitive glob). tomex decodes PNG; other formats fail with a message
/// naming the file.
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp",
];
