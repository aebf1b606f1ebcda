//! What a cut is, as the cache stores it: the manifest of parts, blocks and data files,
//! and the shapes the runtime infers for the tensors between parts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::super::proto::ModelProto;
use super::super::unet::{BlockId, ComponentId};

/// The cut graph as stored on disk: `<cache>/<cut key>.json` beside the part files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SplitManifest {
    pub format: u32,
    /// `sha256:<hex>` of the model file that was cut.
    pub model_digest: String,
    /// The cut components, sorted.
    pub components: Vec<ComponentId>,
    /// The whole graph's inputs and outputs, in declared order.
    pub graph_inputs: Vec<String>,
    pub graph_outputs: Vec<String>,
    /// The parts, in execution order.
    pub parts: Vec<Part>,
    /// Each block with a cut component, and the tensor that enters its `norm1`.
    pub blocks: Vec<BlockPart>,
    /// External data files the parts reference, relative to the cache folder.
    pub data_files: Vec<DataFile>,
    /// Shape values recomputed on the other side of a cut (for the record).
    pub recomputed: Vec<String>,
    /// Whether the parts declare the shapes a [`ShapeProbe`] inferred.
    pub probed: bool,
    /// The folder holding the part files (set when the manifest is read).
    #[serde(skip)]
    pub dir: PathBuf,
}

impl SplitManifest {
    pub fn part_path(&self, part: &Part) -> PathBuf {
        self.dir.join(&part.file)
    }
}

/// One graph of the cut.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Part {
    /// File name in the cache folder.
    pub file: String,
    pub kind: PartKind,
    /// Tensors the part reads: graph inputs or outputs of earlier parts.
    pub inputs: Vec<String>,
    /// Tensors the part computes that later parts (or the caller) read.
    pub outputs: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PartKind {
    Segment,
    /// A cut component: `input` (`[B, N, C]`) is the one tensor ToMe merges, `output`
    /// the one it unmerges.
    Component {
        id: ComponentId,
        input: String,
        output: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlockPart {
    pub id: BlockId,
    /// The block input (hidden states before `norm1`), an output of an earlier part.
    pub input: String,
}

/// An external data file the parts reference.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataFile {
    /// Path relative to the cache folder, as written in the parts' `location`s.
    pub location: String,
    /// The model's own file it stands for (hard-linked or copied), or `None` for the
    /// file tomex wrote itself from weights embedded in the model.
    pub source: Option<PathBuf>,
    /// True when the file had to be copied because it could not be hard-linked.
    pub copied: bool,
}

/// The cut: the manifest (without files) and one model per part.
pub(crate) struct Cut {
    pub manifest: SplitManifest,
    pub models: Vec<ModelProto>,
}

/// Element type and dimensions (`None` = dynamic) of a tensor, as the runtime infers them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ONNX `TensorProto.DataType` code.
    pub elem_type: i32,
    /// Rank 0 also stands for "rank unknown" (ONNX Runtime reports both alike).
    pub dims: Vec<Option<i64>>,
}

/// Shape inference by the runtime that will run the parts: it loads a graph (weights
/// left out, declared as inputs) and reports the type and shape of each of its outputs.
/// The parts then declare those, so ONNX Runtime's own inference inside each part knows
/// as much as it did in the whole graph (e.g. the length of a `Resize` size vector).
pub trait ShapeProbe {
    /// The probe's own error travels boxed: the runtime's error type lives in a layer
    /// above this one.
    fn probe(&mut self, model: &Path) -> Result<Vec<TensorInfo>, ProbeError>;
}

/// Why a [`ShapeProbe`] could not infer the shapes.
pub type ProbeError = Box<dyn std::error::Error + Send + Sync>;
