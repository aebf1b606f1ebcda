//! The CLIP text encoder graph: token ids in, `last_hidden_state` out.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3};
use ort::session::Session;
use ort::value::{Tensor, TensorElementType};

use super::io::{input_spec, output_name, run_error, unexpected, InputSpec};
use super::runtime::{EngineError, Runtime};

pub struct TextEncoder {
    session: Session,
    path: PathBuf,
    ids: InputSpec,
    output: String,
}

impl TextEncoder {
    pub fn load(runtime: &Runtime, path: &Path) -> Result<TextEncoder, EngineError> {
        let session = runtime.session(path)?;
        let ids = input_spec(&session, path, "input_ids", 0)?;
        if !matches!(
            ids.element,
            TensorElementType::Int32 | TensorElementType::Int64
        ) {
            return Err(unexpected(
                path,
                format!("input_ids are {:?}, expected int32 or int64", ids.element),
            ));
        }
        let output = output_name(&session, "last_hidden_state");
        Ok(TextEncoder {
            session,
            path: path.to_path_buf(),
            ids,
            output,
        })
    }

    /// Hidden states `[batch, tokens, dim]` for a batch of id rows.
    pub fn encode(&mut self, ids: &[Vec<u32>]) -> Result<Array3<f32>, EngineError> {
        let (batch, len) = (ids.len(), ids.first().map_or(0, Vec::len));
        let flat = ids.iter().flatten();
        let input = match self.ids.element {
            TensorElementType::Int32 => {
                let a = Array2::from_shape_vec((batch, len), flat.map(|&i| i as i32).collect())
                    .expect("rectangular");
                Tensor::from_array(a).map(|t| t.upcast())
            }
            _ => {
                let a = Array2::from_shape_vec((batch, len), flat.map(|&i| i as i64).collect())
                    .expect("rectangular");
                Tensor::from_array(a).map(|t| t.upcast())
            }
        }
        .map_err(|e| run_error(&self.path, e))?;
        let outputs = self
            .session
            .run(ort::inputs![self.ids.name.as_str() => input])
            .map_err(|e| run_error(&self.path, e))?;
        let hidden = outputs[self.output.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| run_error(&self.path, e))?;
        hidden.to_owned().into_dimensionality().map_err(|e| {
            unexpected(
                &self.path,
                format!("`{}` is not [batch, tokens, dim]: {e}", self.output),
            )
        })
    }
}
