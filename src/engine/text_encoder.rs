//! The CLIP text encoder graph: token ids in, `last_hidden_state` out (SD 1.x, 2.x), or
//! for SDXL the penultimate layer's hidden states and the pooled, projected `text_embeds`.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, Ix2};
use ort::session::Session;
use ort::value::{Tensor, TensorElementType};

use super::io::{input_spec, output_name, run_error, unexpected, InputSpec};
use super::runtime::{EngineError, Runtime};

pub struct TextEncoder {
    session: Session,
    path: PathBuf,
    ids: InputSpec,
    /// The hidden states it returns: `last_hidden_state`, or SDXL's penultimate layer.
    output: String,
    /// SDXL's pooled output (`text_embeds` of the second encoder), when read.
    pooled: Option<String>,
}

/// What SDXL reads from an encoder.
pub struct TextStates {
    /// `[batch, tokens, dim]`
    pub hidden: Array3<f32>,
    /// `[batch, projection dim]`, the second encoder's `text_embeds`
    pub pooled: Option<Array2<f32>>,
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
            pooled: None,
        })
    }

    /// An SDXL encoder: it returns `hidden_states[-2]` (the penultimate layer, as
    /// diffusers' SDXL pipeline reads it with `clip_skip` unset) and, where the graph has
    /// it, the pooled `text_embeds`. optimum exports SDXL's encoders with every layer's
    /// `hidden_states.<i>` as outputs.
    pub fn load_penultimate(runtime: &Runtime, path: &Path) -> Result<TextEncoder, EngineError> {
        let mut encoder = Self::load(runtime, path)?;
        let layers: Vec<usize> = encoder
            .session
            .outputs()
            .iter()
            .filter_map(|o| o.name().strip_prefix("hidden_states.")?.parse().ok())
            .collect();
        let Some(last) = layers.iter().max().filter(|&&l| l >= 1) else {
            return Err(unexpected(
                path,
                "it has no `hidden_states.<i>` outputs (an SDXL text encoder is exported with every layer's hidden states)".into(),
            ));
        };
        encoder.output = format!("hidden_states.{}", last - 1);
        encoder.pooled = encoder
            .session
            .outputs()
            .iter()
            .find(|o| o.name() == "text_embeds")
            .map(|o| o.name().to_string());
        Ok(encoder)
    }

    /// Whether [`encode_states`](Self::encode_states) returns a pooled embedding.
    pub fn has_pooled(&self) -> bool {
        self.pooled.is_some()
    }

    /// Hidden states `[batch, tokens, dim]` for a batch of id rows.
    pub fn encode(&mut self, ids: &[Vec<u32>]) -> Result<Array3<f32>, EngineError> {
        Ok(self.encode_states(ids)?.hidden)
    }

    /// Hidden states and, for SDXL's second encoder, the pooled embedding.
    pub fn encode_states(&mut self, ids: &[Vec<u32>]) -> Result<TextStates, EngineError> {
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
        let hidden = hidden.to_owned().into_dimensionality().map_err(|e| {
            unexpected(
                &self.path,
                format!("`{}` is not [batch, tokens, dim]: {e}", self.output),
            )
        })?;
        let pooled = match &self.pooled {
            None => None,
            Some(name) => {
                let pooled = outputs[name.as_str()]
                    .try_extract_array::<f32>()
                    .map_err(|e| run_error(&self.path, e))?;
                Some(
                    pooled
                        .to_owned()
                        .into_dimensionality::<Ix2>()
                        .map_err(|e| {
                            unexpected(&self.path, format!("`{name}` is not [batch, dim]: {e}"))
                        })?,
                )
            }
        };
        Ok(TextStates { hidden, pooled })
    }
}
