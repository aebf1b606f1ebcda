//! One attention node in a session of its own (`onnx::lone_attention_model`): ONNX
//! Runtime's `MultiHeadAttention` or tomex's flash kernel on the same inputs, as the
//! UNet's sessions run them (same session options, the intra-op thread pool), so
//! `tomex bench-attention` compares the kernels and nothing else.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ndarray::Array3;
use ort::session::Session;
use ort::value::TensorRef;

use super::io::{run_error, unexpected};
use super::runtime::{EngineError, Runtime};
use crate::kernel::flash_attention::Dims;
use crate::onnx::{encode_model, lone_attention_model};

pub struct LoneAttention {
    session: Session,
    name: PathBuf,
    q: Array3<f32>,
    kv: Array3<f32>,
}

impl LoneAttention {
    /// A session of one attention of shape `dims` (self-attention when `queries ==
    /// keys`), `flash` for tomex's kernel, with fixed inputs in [-0.5, 0.5).
    pub fn new(runtime: &Runtime, dims: Dims, flash: bool) -> Result<LoneAttention, EngineError> {
        let name = Path::new(if flash {
            "<tomex.FlashAttention>"
        } else {
            "<com.microsoft.MultiHeadAttention>"
        })
        .to_path_buf();
        let bytes = encode_model(&lone_attention_model(dims.heads as i64, flash))
            .map_err(|e| unexpected(&name, e.to_string()))?;
        let session = runtime.session_from_memory(&bytes, &name)?;
        let width = dims.heads * dims.head_size;
        let fill = |rows: usize, salt: usize| {
            Array3::from_shape_fn((dims.batch, rows, width), |(b, r, c)| {
                (((b * 31 + r * 7919 + c * 104_729 + salt) % 1000) as f32) / 1000.0 - 0.5
            })
        };
        Ok(LoneAttention {
            session,
            name,
            q: fill(dims.queries, 0),
            kv: fill(dims.keys, 1),
        })
    }

    /// Runs the attention once (`q` against `k = v`); its output and wall time.
    pub fn run(&mut self) -> Result<(Array3<f32>, Duration), EngineError> {
        let err = |e| run_error(&self.name, e);
        let q = TensorRef::from_array_view(self.q.view()).map_err(err)?;
        let k = TensorRef::from_array_view(self.kv.view()).map_err(err)?;
        let v = TensorRef::from_array_view(self.kv.view()).map_err(err)?;
        let start = Instant::now();
        let outputs = self
            .session
            .run(ort::inputs!["q" => q, "k" => k, "v" => v])
            .map_err(err)?;
        let elapsed = start.elapsed();
        let out = outputs["out"].try_extract_array::<f32>().map_err(err)?;
        let out = out
            .to_owned()
            .into_dimensionality()
            .map_err(|e| unexpected(&self.name, e.to_string()))?;
        Ok((out, elapsed))
    }
}
