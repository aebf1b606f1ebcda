//! ToMe's token ops run by ONNX Runtime as graphs ([`crate::onnx::token_ops`]) rather
//! than by the Rust host code: the operations the device-resident path runs beside the
//! UNet's parts. On the CPU this is the parity reference for that path: the same
//! matching as [`crate::tome`] up to near-tied scores, the same merge and unmerge.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Array3, ArrayView3};
use ort::session::Session;
use ort::value::{DynValue, Tensor};

use super::device::Device;
use super::io::{run_error, unexpected};
use super::resident::{download_f32, run_resident, to_host, upload};
use super::runtime::{EngineError, Runtime};
use crate::onnx::{self, token_ops};
use crate::tome::BlockPartition;

/// The three token-op sessions, on the runtime's device.
pub struct GraphTokenOps {
    matching: Session,
    merge: Session,
    unmerge: Session,
    device: Device,
}

/// One block's matching, its indices on the device that computed them (int64, as
/// the graphs take them).
pub struct GraphMerge {
    a_idx: DynValue,
    b_idx: DynValue,
    unm_idx: DynValue,
    src_idx: DynValue,
    dst_idx: DynValue,
    device: Device,
}

impl GraphMerge {
    /// `[unm_idx, src_idx, dst_idx]`, each [B, k], copied to the host.
    pub fn indices(&self) -> Result<[Array2<i64>; 3], EngineError> {
        let path = name("matching");
        let host = |v: &DynValue, k: &str| -> Result<Array2<i64>, EngineError> {
            let err = |e| run_error(&path, e);
            let host = to_host(v, self.device).map_err(err)?;
            let v = host.as_ref().unwrap_or(v);
            v.try_extract_array::<i64>()
                .map_err(err)?
                .to_owned()
                .into_dimensionality()
                .map_err(|e| unexpected(&path, format!("`{k}`: {e}")))
        };
        Ok([
            host(&self.unm_idx, "unm_idx")?,
            host(&self.src_idx, "src_idx")?,
            host(&self.dst_idx, "dst_idx")?,
        ])
    }
}

fn name(graph: &str) -> PathBuf {
    Path::new("<tomex token ops>").join(graph)
}

fn open(runtime: &Runtime, graph: &str, model: &onnx::ModelProto) -> Result<Session, EngineError> {
    let bytes = onnx::encode_model(model)
        .map_err(|e| unexpected(&name(graph), format!("cannot encode: {e}")))?;
    runtime.session_from_memory(&bytes, &name(graph))
}

/// A host array as a value on `device`.
fn on_device<T, D>(a: ndarray::Array<T, D>, device: Device) -> ort::Result<DynValue>
where
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
    D: ndarray::Dimension + 'static,
{
    upload(Tensor::from_array(a)?.into_dyn(), device)
}

fn indices(v: &[usize]) -> Array1<i64> {
    v.iter().map(|&i| i as i64).collect()
}

/// The output `key` of a token-op run.
fn take(
    outputs: &mut Vec<(String, DynValue)>,
    key: &str,
    graph: &str,
) -> Result<DynValue, EngineError> {
    let at = outputs.iter().position(|(n, _)| n == key);
    at.map(|i| outputs.swap_remove(i).1)
        .ok_or_else(|| unexpected(&name(graph), format!("no output `{key}`")))
}

impl GraphTokenOps {
    pub fn load(runtime: &Runtime) -> Result<GraphTokenOps, EngineError> {
        Ok(GraphTokenOps {
            matching: open(runtime, "matching", &token_ops::matching_graph())?,
            merge: open(runtime, "merge", &token_ops::merge_graph())?,
            unmerge: open(runtime, "unmerge", &token_ops::unmerge_graph())?,
            device: runtime.device(),
        })
    }

    /// The matching of block input `x` [B, N, C] (on the device) over `partition`.
    pub fn matching_value(
        &mut self,
        x: &DynValue,
        partition: &BlockPartition,
    ) -> Result<GraphMerge, EngineError> {
        let path = name("matching");
        let err = |e| run_error(&path, e);
        let device = self.device;
        let a_idx = on_device(indices(&partition.src), device).map_err(err)?;
        let b_idx = on_device(indices(&partition.dst), device).map_err(err)?;
        let r = on_device(Array1::from_elem(1, partition.r as i64), device).map_err(err)?;
        let inputs = [("x", x), ("a_idx", &a_idx), ("b_idx", &b_idx), ("r", &r)];
        let mut outputs = run_resident(&mut self.matching, &inputs, device, None).map_err(err)?;
        Ok(GraphMerge {
            unm_idx: take(&mut outputs, "unm_idx", "matching")?,
            src_idx: take(&mut outputs, "src_idx", "matching")?,
            dst_idx: take(&mut outputs, "dst_idx", "matching")?,
            a_idx,
            b_idx,
            device,
        })
    }

    /// [B, N, C] → [B, N − r, C], on the device.
    pub fn merge_value(&mut self, m: &GraphMerge, x: &DynValue) -> Result<DynValue, EngineError> {
        run_indexed(&mut self.merge, "merge", ("x", "merged"), m, x)
    }

    /// [B, N − r, C] → [B, N, C], on the device.
    pub fn unmerge_value(&mut self, m: &GraphMerge, y: &DynValue) -> Result<DynValue, EngineError> {
        run_indexed(&mut self.unmerge, "unmerge", ("y", "unmerged"), m, y)
    }

    /// [`matching_value`](Self::matching_value) of a host array.
    pub fn matching(
        &mut self,
        x: ArrayView3<f32>,
        partition: &BlockPartition,
    ) -> Result<GraphMerge, EngineError> {
        let x = self.host_value(x, "matching")?;
        self.matching_value(&x, partition)
    }

    /// [`merge_value`](Self::merge_value) of a host array, back on the host.
    pub fn merge(
        &mut self,
        m: &GraphMerge,
        x: ArrayView3<f32>,
    ) -> Result<Array3<f32>, EngineError> {
        let x = self.host_value(x, "merge")?;
        let merged = self.merge_value(m, &x)?;
        self.host_array(&merged, "merge")
    }

    /// [`unmerge_value`](Self::unmerge_value) of a host array, back on the host.
    pub fn unmerge(
        &mut self,
        m: &GraphMerge,
        y: ArrayView3<f32>,
    ) -> Result<Array3<f32>, EngineError> {
        let y = self.host_value(y, "unmerge")?;
        let unmerged = self.unmerge_value(m, &y)?;
        self.host_array(&unmerged, "unmerge")
    }

    fn host_value(&self, a: ArrayView3<f32>, graph: &str) -> Result<DynValue, EngineError> {
        on_device(a.to_owned(), self.device).map_err(|e| run_error(&name(graph), e))
    }

    fn host_array(&self, v: &DynValue, graph: &str) -> Result<Array3<f32>, EngineError> {
        let path = name(graph);
        download_f32(v, self.device)
            .map_err(|e| run_error(&path, e))?
            .into_dimensionality()
            .map_err(|e| unexpected(&path, format!("not [B, N, C]: {e}")))
    }
}

fn run_indexed(
    session: &mut Session,
    graph: &str,
    (input, output): (&str, &str),
    m: &GraphMerge,
    x: &DynValue,
) -> Result<DynValue, EngineError> {
    let path = name(graph);
    let inputs = [
        (input, x),
        ("a_idx", &m.a_idx),
        ("b_idx", &m.b_idx),
        ("unm_idx", &m.unm_idx),
        ("src_idx", &m.src_idx),
        ("dst_idx", &m.dst_idx),
    ];
    let mut outputs =
        run_resident(session, &inputs, m.device, None).map_err(|e| run_error(&path, e))?;
    take(&mut outputs, output, graph)
}
