//! The VAE decoder graph: latents in, images in [-1, 1] out.

use std::path::{Path, PathBuf};

use ndarray::Array4;
use ort::session::{RunOptions, Session};
use ort::value::TensorRef;

use super::io::{input_spec, output_name, run_error, unexpected};
use super::runtime::{EngineError, Runtime};

pub struct VaeDecoder {
    session: Session,
    path: PathBuf,
    input: String,
    output: String,
    /// Hands the decoder's activations back to the system after each decode.
    shrink: RunOptions,
}

impl VaeDecoder {
    pub fn load(runtime: &Runtime, path: &Path) -> Result<VaeDecoder, EngineError> {
        let session = runtime.session(path)?;
        let input = input_spec(&session, path, "latent_sample", 0)?.name;
        let output = output_name(&session, "sample");
        // The decoder's activations (about 1.2 GB at 768 px) would otherwise stay in the
        // shared arena and raise a run's peak by that much over a single image's.
        let shrink = runtime.shrink_arenas().map_err(|e| run_error(path, e))?;
        Ok(VaeDecoder {
            session,
            path: path.to_path_buf(),
            input,
            output,
            shrink,
        })
    }

    /// Decodes already-unscaled latents `[batch, 4, h/8, w/8]` to `[batch, 3, h, w]`.
    pub fn decode(&mut self, latents: &Array4<f32>) -> Result<Array4<f32>, EngineError> {
        let input =
            TensorRef::from_array_view(latents.view()).map_err(|e| run_error(&self.path, e))?;
        let outputs = self
            .session
            .run_with_options(ort::inputs![self.input.as_str() => input], &self.shrink)
            .map_err(|e| run_error(&self.path, e))?;
        let image = outputs[self.output.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| run_error(&self.path, e))?;
        image.to_owned().into_dimensionality().map_err(|e| {
            unexpected(
                &self.path,
                format!("`{}` is not [batch, 3, h, w]: {e}", self.output),
            )
        })
    }
}
