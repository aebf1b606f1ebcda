//! ToMe's token ops run by ONNX Runtime as graphs ([`crate::onnx::token_ops`]) rather
//! than by the Rust host code: the operations the device-resident path runs beside the
//! UNet's parts. On the CPU this is the parity reference for that path: the same
//! matching as [`crate::tome`] up to near-tied scores, the same merge and unmerge.

use std::path::Path;

use ndarray::{Array1, Array2, Array3, ArrayView3};
use ort::session::Session;
use ort::value::TensorRef;

use super::io::{run_error, unexpected};
use super::runtime::{EngineError, Runtime};
use crate::onnx::{self, token_ops};
use crate::tome::BlockPartition;

/// The three token-op sessions.
pub struct GraphTokenOps {
    matching: Session,
    merge: Session,
    unmerge: Session,
}

/// One block's matching as the graphs computed it (int64 indices, as they take them).
#[derive(Clone, Debug)]
pub struct GraphMerge {
    a_idx: Array1<i64>,
    b_idx: Array1<i64>,
    unm_idx: Array2<i64>,
    src_idx: Array2<i64>,
    dst_idx: Array2<i64>,
}

impl GraphMerge {
    /// `(unm_idx, src_idx, dst_idx)`, each [B, k].
    pub fn indices(&self) -> (&Array2<i64>, &Array2<i64>, &Array2<i64>) {
        (&self.unm_idx, &self.src_idx, &self.dst_idx)
    }
}

fn name(graph: &str) -> std::path::PathBuf {
    Path::new("<tomex token ops>").join(graph)
}

fn open(runtime: &Runtime, graph: &str, model: &onnx::ModelProto) -> Result<Session, EngineError> {
    let bytes = onnx::encode_model(model)
        .map_err(|e| unexpected(&name(graph), format!("cannot encode: {e}")))?;
    runtime.session_from_memory(&bytes, &name(graph))
}

fn indices(v: &[usize]) -> Array1<i64> {
    v.iter().map(|&i| i as i64).collect()
}

impl GraphTokenOps {
    pub fn load(runtime: &Runtime) -> Result<GraphTokenOps, EngineError> {
        Ok(GraphTokenOps {
            matching: open(runtime, "matching", &token_ops::matching_graph())?,
            merge: open(runtime, "merge", &token_ops::merge_graph())?,
            unmerge: open(runtime, "unmerge", &token_ops::unmerge_graph())?,
        })
    }

    /// The matching of block input `x` [B, N, C] over `partition`.
    pub fn matching(
        &mut self,
        x: ArrayView3<f32>,
        partition: &BlockPartition,
    ) -> Result<GraphMerge, EngineError> {
        let path = name("matching");
        let err = |e| run_error(&path, e);
        let x = x.as_standard_layout();
        let (a_idx, b_idx) = (indices(&partition.src), indices(&partition.dst));
        let r = Array1::from_elem(1, partition.r as i64);
        let outputs = self
            .matching
            .run(ort::inputs![
                "x" => TensorRef::from_array_view(x.view()).map_err(err)?,
                "a_idx" => TensorRef::from_array_view(a_idx.view()).map_err(err)?,
                "b_idx" => TensorRef::from_array_view(b_idx.view()).map_err(err)?,
                "r" => TensorRef::from_array_view(r.view()).map_err(err)?,
            ])
            .map_err(err)?;
        let take = |k: &str| -> Result<Array2<i64>, EngineError> {
            outputs[k]
                .try_extract_array::<i64>()
                .map_err(err)?
                .to_owned()
                .into_dimensionality()
                .map_err(|e| unexpected(&path, format!("`{k}`: {e}")))
        };
        Ok(GraphMerge {
            unm_idx: take("unm_idx")?,
            src_idx: take("src_idx")?,
            dst_idx: take("dst_idx")?,
            a_idx,
            b_idx,
        })
    }

    /// [B, N, C] → [B, N − r, C].
    pub fn merge(
        &mut self,
        m: &GraphMerge,
        x: ArrayView3<f32>,
    ) -> Result<Array3<f32>, EngineError> {
        run_indexed(&mut self.merge, "merge", ("x", "merged"), m, x)
    }

    /// [B, N − r, C] → [B, N, C].
    pub fn unmerge(
        &mut self,
        m: &GraphMerge,
        y: ArrayView3<f32>,
    ) -> Result<Array3<f32>, EngineError> {
        run_indexed(&mut self.unmerge, "unmerge", ("y", "unmerged"), m, y)
    }
}

fn run_indexed(
    session: &mut Session,
    graph: &str,
    (input, output): (&str, &str),
    m: &GraphMerge,
    x: ArrayView3<f32>,
) -> Result<Array3<f32>, EngineError> {
    let path = name(graph);
    let err = |e| run_error(&path, e);
    let x = x.as_standard_layout();
    let outputs = session
        .run(ort::inputs![
            input => TensorRef::from_array_view(x.view()).map_err(err)?,
            "a_idx" => TensorRef::from_array_view(m.a_idx.view()).map_err(err)?,
            "b_idx" => TensorRef::from_array_view(m.b_idx.view()).map_err(err)?,
            "unm_idx" => TensorRef::from_array_view(m.unm_idx.view()).map_err(err)?,
            "src_idx" => TensorRef::from_array_view(m.src_idx.view()).map_err(err)?,
            "dst_idx" => TensorRef::from_array_view(m.dst_idx.view()).map_err(err)?,
        ])
        .map_err(err)?;
    outputs[output]
        .try_extract_array::<f32>()
        .map_err(err)?
        .to_owned()
        .into_dimensionality()
        .map_err(|e| unexpected(&path, format!("`{output}`: {e}")))
}
