//! Reading and writing ONNX models, and cutting the UNet graph at the transformer
//! components that Token Merging wraps (see `shared/DESIGN.md`, "Executing ToMe").
//!
//! * [`proto`]: the ONNX protobuf messages, from the `onnx-protobuf` crate (MPL-2.0),
//!   which carries ONNX's schema and the Rust code rust-protobuf generated from it, so
//!   this repository holds neither. It is pure Rust (no `protoc`, no C++ protobuf), its
//!   generated code pins the `protobuf` runtime to exactly 3.4.0, and like all
//!   rust-protobuf messages its messages keep the fields they do not know as unknown
//!   fields and write them back: its schema is ONNX IR 10 (ONNX 1.16), and a newer
//!   model's fields (device configurations, for one) survive a read and a write.
//! * [`unet`]: which `BasicTransformerBlock`s the UNet has, found by node names.
//! * [`split`]: the cut itself, an ordered list of segment and component graphs.
//! * [`cache`]: where the cut graphs live on disk, keyed by model digest and cut set.
//!
//! This module never opens an ONNX Runtime session and never reads external weights.

pub mod cache;
mod graph;
pub use onnx_protobuf as proto;
pub mod split;
pub mod unet;

use std::path::{Path, PathBuf};

use protobuf::Message;

pub use cache::{default_cache_root, prepare_split, CacheStatus, SplitOptions};
pub use proto::ModelProto;
pub use split::{BlockPart, DataFile, Part, PartKind, ShapeProbe, SplitManifest, TensorInfo};
pub use unet::{transformer_blocks, BlockId, ComponentId, ComponentKind, Stage, TransformerBlock};

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a readable ONNX model: {reason}", .path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("{} has no {what}", .model.display())]
    NotFound { model: PathBuf, what: String },
    #[error("{}: cannot cut the graph at {component}: {reason}", .model.display())]
    BadCut {
        model: PathBuf,
        component: String,
        reason: String,
    },
    #[error("{}: {reason}", .model.display())]
    Unsupported { model: PathBuf, reason: String },
}

impl OnnxError {
    /// The message without the model's path, for callers that name the model themselves.
    pub fn detail(&self) -> String {
        match self {
            OnnxError::NotFound { what, .. } => format!("it has no {what}"),
            OnnxError::BadCut {
                component, reason, ..
            } => format!("cannot cut the graph at {component}: {reason}"),
            OnnxError::Unsupported { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> OnnxError + '_ {
    move |source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Parses a model file. External data is not read (only its references are).
pub fn read_model(path: &Path) -> Result<ModelProto, OnnxError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    ModelProto::parse_from_bytes(&bytes).map_err(|e| OnnxError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes a model to `path` atomically (a temporary name in the same folder, then a rename).
pub fn write_model(model: &ModelProto, path: &Path) -> Result<(), OnnxError> {
    let bytes = model.write_to_bytes().map_err(|e| OnnxError::Parse {
        path: path.to_path_buf(),
        reason: format!("cannot encode: {e}"),
    })?;
    cache::write_atomic(path, &bytes)
}

