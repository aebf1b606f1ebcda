//! Inception features through ONNX Runtime, and the statistics of a folder of images as
//! pytorch-fid's `compute_statistics_of_path` computes them.
//!
//! The network is a black box with input `images` `[n, 3, 299, 299]` (already
//! preprocessed, see [`super::preprocess`]) and outputs `features_64`, `features_192`,
//! `features_768`, `features_2048` `[n, d]`: pytorch-fid's four blocks, globally
//! average-pooled as its `get_activations` does. `tools/export_inception.py` writes it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array2, Array4, ArrayViewMut3};
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::TensorRef;
use rayon::prelude::*;

use super::preprocess::{load_rgb, preprocess_into, INCEPTION_SIZE};
use super::{frechet_distance, FidError, Statistics, IMAGE_EXTENSIONS};
use crate::engine::{EngineError, Runtime};

/// pytorch-fid's feature sizes (`InceptionV3.BLOCK_INDEX_BY_DIM`).
pub const FID_DIMS: [usize; 4] = [64, 192, 768, 2048];

/// The exported FID Inception on an ONNX Runtime session.
pub struct Inception {
    session: Session,
    path: PathBuf,
    input: String,
}

impl Inception {
    /// Opens `path` and checks that it has the four feature outputs.
    pub fn load(runtime: &Runtime, path: &Path) -> Result<Inception, FidError> {
        let session = runtime.session(path)?;
        let unexpected = |reason: String| EngineError::Unexpected {
            model: path.to_path_buf(),
            reason,
        };
        let input = session
            .inputs()
            .iter()
            .find(|o| o.name() == "images")
            .or_else(|| session.inputs().first())
            .map(|o| o.name().to_string())
            .ok_or_else(|| unexpected("it has no input".into()))?;
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        for dims in FID_DIMS {
            if !outputs.iter().any(|o| *o == output_name(dims)) {
                return Err(unexpected(format!(
                    "it has no output `{}` (outputs: {}); export it with tools/export_inception.py",
                    output_name(dims),
                    outputs.join(", ")
                ))
                .into());
            }
        }
        Ok(Inception {
            session,
            path: path.to_path_buf(),
            input,
        })
    }

    /// Features `[n, dims]` of a preprocessed batch `[n, 3, 299, 299]`.
    pub fn features(&mut self, batch: &Array4<f32>, dims: usize) -> Result<Array2<f32>, FidError> {
        self.run_selected(batch, dims).map(|(features, _)| features)
    }

    /// [`Inception::features`], and the names of the outputs ONNX Runtime returned: only
    /// `features_<dims>` is asked for, so the blocks after it (for 64 or 192, most of the
    /// network) are not run.
    fn run_selected(
        &mut self,
        batch: &Array4<f32>,
        dims: usize,
    ) -> Result<(Array2<f32>, Vec<String>), FidError> {
        if !FID_DIMS.contains(&dims) {
            return Err(FidError::Dims(dims));
        }
        let run_err = |e: ort::Error| EngineError::Run {
            model: self.path.clone(),
            reason: e.to_string(),
        };
        let name = output_name(dims);
        let options = RunOptions::new()
            .map_err(run_err)?
            .with_outputs(OutputSelector::no_default().with(name.as_str()));
        let input = TensorRef::from_array_view(batch.view()).map_err(run_err)?;
        let outputs = self
            .session
            .run_with_options(ort::inputs![self.input.as_str() => input], &options)
            .map_err(run_err)?;
        let returned: Vec<String> = outputs.keys().map(str::to_string).collect();
        let array = outputs[name.as_str()]
            .try_extract_array::<f32>()
            .map_err(run_err)?;
        let n = batch.dim().0;
        let features = array
            .to_owned()
            .into_shape_with_order((n, dims))
            .map_err(|e| EngineError::Unexpected {
                model: self.path.clone(),
                reason: format!("`{name}` is not [{n}, {dims}]: {e}"),
            })?;
        Ok((features, returned))
    }

    /// Features `[files, dims]` in f64 of image files, `batch_size` at a time (pytorch-fid's
    /// `get_activations`); `progress` gets the number of images done after each batch.
    pub fn features_of_files(
        &mut self,
        files: &[PathBuf],
        dims: usize,
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Array2<f64>, FidError> {
        self.features_of_files_timed(files, dims, batch_size, progress)
            .map(|(features, _)| features)
    }

    /// [`Inception::features_of_files`], and where its time went (`tomex bench-fid`).
    pub fn features_of_files_timed(
        &mut self,
        files: &[PathBuf],
        dims: usize,
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<(Array2<f64>, FeaturiseTimes), FidError> {
        let batch_size = batch_size.clamp(1, files.len().max(1));
        let mut out = Array2::<f64>::zeros((files.len(), dims));
        let mut times = FeaturiseTimes::default();
        let plane = 3 * INCEPTION_SIZE * INCEPTION_SIZE;
        for (b, chunk) in files.chunks(batch_size).enumerate() {
            let t = Instant::now();
            let images = chunk
                .par_iter()
                .map(|path| load_rgb(path))
                .collect::<Result<Vec<_>, _>>()?;
            times.decode_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut batch = Array4::<f32>::zeros((chunk.len(), 3, INCEPTION_SIZE, INCEPTION_SIZE));
            batch
                .as_slice_mut()
                .expect("a new array is contiguous")
                .par_chunks_mut(plane)
                .zip(images.par_iter())
                .for_each(|(dst, img)| {
                    let view = ArrayViewMut3::from_shape((3, INCEPTION_SIZE, INCEPTION_SIZE), dst)
                        .expect("one image's plane");
                    preprocess_into(img, view);
                });
            times.preprocess_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let features = self.features(&batch, dims)?;
            times.network_s += t.elapsed().as_secs_f64();
            let start = b * batch_size;
            out.slice_mut(ndarray::s![start..start + chunk.len(), ..])
                .zip_mut_with(&features, |o, &f| *o = f64::from(f));
            progress(start + chunk.len());
        }
        Ok((out, times))
    }
}

/// Seconds spent featurising, by stage: decoding the image files, pytorch-fid's
/// preprocessing (ours), and the Inception network (ONNX Runtime).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FeaturiseTimes {
    pub decode_s: f64,
    pub preprocess_s: f64,
    pub network_s: f64,
}

fn output_name(dims: usize) -> String {
    format!("features_{dims}")
}

/// The image files of `dir` in pytorch-fid's order: the files ending in one of
/// [`IMAGE_EXTENSIONS`] (lower case), sorted by path.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>, FidError> {
    let io = |e: std::io::Error| FidError::Io {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if IMAGE_EXTENSIONS.contains(&ext) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Statistics of `path`: a pytorch-fid `.npz` file, else a folder of images featurised by
/// `inception` (which only a folder needs). Fewer than 2 images is an error.
pub fn statistics_of_path(
    path: &Path,
    inception: Option<&mut Inception>,
    dims: usize,
    batch_size: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Statistics, FidError> {
    if !FID_DIMS.contains(&dims) {
        return Err(FidError::Dims(dims));
    }
    if path.extension().is_some_and(|e| e == "npz") {
        return Statistics::load_npz(path);
    }
    if !path.is_dir() {
        return Err(FidError::Io {
            path: path.to_path_buf(),
            reason: "not a folder of images nor an .npz statistics file".into(),
        });
    }
    let files = image_files(path)?;
    if files.is_empty() {
        return Err(FidError::NoImages {
            path: path.to_path_buf(),
        });
    }
    let what = path.display().to_string();
    if files.len() < 2 {
        return Err(FidError::TooFewImages {
            what,
            n: files.len(),
        });
    }
    let inception = inception.ok_or_else(|| FidError::NoInception {
        path: path.to_path_buf(),
    })?;
    let features = inception.features_of_files(&files, dims, batch_size, progress)?;
    Statistics::from_features(features.view(), &what)
}

/// pytorch-fid's `calculate_fid_given_paths`: the FID between two folders or `.npz` files.
pub fn fid_of_paths(
    a: &Path,
    b: &Path,
    mut inception: Option<&mut Inception>,
    dims: usize,
    batch_size: usize,
) -> Result<f64, FidError> {
    let sa = statistics_of_path(a, inception.as_deref_mut(), dims, batch_size, &mut |_| {})?;
    let sb = statistics_of_path(b, inception, dims, batch_size, &mut |_| {})?;
    frechet_distance(&sa, &sb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Device;

    #[test]
    fn only_the_requested_output_is_computed() {
        let runtime = Runtime::new(None, Device::Cpu).expect("ONNX Runtime (.ort/lib)");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inception_tiny.onnx");
        let mut net = Inception::load(&runtime, &path).unwrap();
        let batch = Array4::<f32>::from_elem((2, 3, INCEPTION_SIZE, INCEPTION_SIZE), 0.25);
        for dims in FID_DIMS {
            let (features, returned) = net.run_selected(&batch, dims).unwrap();
            assert_eq!(features.dim(), (2, dims));
            assert_eq!(returned, vec![output_name(dims)]);
        }
    }
}
