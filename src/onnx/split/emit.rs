//! Step 4 of a cut: one model per part (its nodes, declared inputs and outputs, the
//! weights it reads) and the manifest.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use super::super::graph::{self, node_inputs};
use super::super::proto::{
    tensor_shape_proto, type_proto, GraphProto, ModelProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use super::super::OnnxError;
use super::manifest::{Cut, Part, PartKind, SplitManifest, TensorInfo};
use super::{Plan, FORMAT};

impl Plan {
    /// Tensors passed between parts (not graph inputs), each once.
    pub fn boundary(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.io
            .iter()
            .flat_map(|(i, o)| i.iter().chain(o))
            .filter(|n| !self.ctx.graph_inputs.contains(n) && seen.insert(n.as_str()))
            .cloned()
            .collect()
    }

    /// The whole rewritten graph with the boundary tensors as outputs, for a
    /// [`ShapeProbe`]. Initializers stored outside the model become typed inputs, so
    /// loading it reads no weights.
    pub fn probe_model(&self, model: &ModelProto) -> ModelProto {
        let graph: &GraphProto = &model.graph;
        let (external, embedded): (Vec<_>, Vec<_>) = graph
            .initializer
            .iter()
            .partition(|t| !t.external_data.is_empty() && t.raw_data.is_empty());
        let mut input = graph.input.clone();
        for t in external {
            let mut tt = TypeProto::default();
            tt.set_tensor_type(type_proto::Tensor {
                elem_type: t.data_type,
                shape: Some(TensorShapeProto {
                    dim: t
                        .dims
                        .iter()
                        .map(|&d| {
                            let mut dim = tensor_shape_proto::Dimension::default();
                            dim.set_dim_value(d);
                            dim
                        })
                        .collect(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            });
            input.push(ValueInfoProto {
                name: t.name.clone(),
                type_: Some(tt).into(),
                ..Default::default()
            });
        }
        let mut output = graph.output.clone();
        for name in self.boundary() {
            if !self.ctx.graph_outputs.contains(&name) {
                output.push(ValueInfoProto {
                    name,
                    ..Default::default()
                });
            }
        }
        let mut probe = model.clone_without_graph();
        probe.graph = Some(GraphProto {
            name: graph.name.clone(),
            node: self.nodes.clone(),
            initializer: embedded.into_iter().cloned().collect(),
            sparse_initializer: graph.sparse_initializer.clone(),
            input,
            output,
            ..Default::default()
        })
        .into();
        probe
    }
}

/// The part models and the manifest of a planned cut; `probed` holds the runtime's
/// types and shapes of the boundary tensors (empty: element types inferred here only).
pub(crate) fn finish(
    model: &ModelProto,
    plan: Plan,
    probed: &HashMap<String, TensorInfo>,
    model_digest: &str,
) -> Result<Cut, OnnxError> {
    let Plan {
        ctx,
        nodes,
        comps,
        blocks,
        kinds,
        part_nodes,
        io,
        recomputed,
    } = plan;
    let graph: &GraphProto = &model.graph;
    let declared = Declared {
        graph: graph
            .input
            .iter()
            .chain(graph.output.iter())
            .chain(graph.value_info.iter())
            .map(|v| (v.name.as_str(), v))
            .collect(),
        probed,
        types: graph::elem_types(graph, &nodes),
        ranks: graph::ranks(graph, &nodes),
    };
    let producer = graph::producers(&nodes);
    let mut out_parts = Vec::new();
    let mut models = Vec::new();
    for (p, ((inputs, outputs), kind)) in io.into_iter().zip(&kinds).enumerate() {
        let kind = match kind {
            None => PartKind::Segment,
            Some(k) => PartKind::Component {
                id: comps[*k].id,
                input: comps[*k].activation.clone(),
                output: comps[*k].output.clone(),
            },
        };
        let file = match &kind {
            PartKind::Segment => format!("{p:03}-segment.onnx"),
            PartKind::Component { id, .. } => format!("{p:03}-{id}.onnx"),
        };
        let merged = |n: &str| match &kind {
            PartKind::Component { input, output, .. } => n == input || n == output,
            PartKind::Segment => false,
        };
        let describe = |n: &str| {
            declared.value_info(n, merged(n)).ok_or_else(|| OnnxError::Unsupported {
                model: ctx.path.clone(),
                reason: format!(
                    "cannot tell the element type of `{n}` (made by {} node `{}`) to pass it between cut graphs",
                    producer.get(n).map_or("no", |&i| nodes[i].op_type.as_str()),
                    producer.get(n).map_or("", |&i| nodes[i].name.as_str())
                ),
            })
        };
        let input_infos = inputs
            .iter()
            .map(|n| describe(n))
            .collect::<Result<Vec<_>, _>>()?;
        let output_infos = outputs
            .iter()
            .map(|n| describe(n))
            .collect::<Result<Vec<_>, _>>()?;
        let used: HashSet<&str> = part_nodes[p]
            .iter()
            .flat_map(|&i| {
                node_inputs(&nodes[i])
                    .into_iter()
                    .chain(nodes[i].output.iter().map(String::as_str))
            })
            .collect();
        let part_graph = GraphProto {
            name: format!("{}_{}", graph.name, file.trim_end_matches(".onnx")),
            node: part_nodes[p].iter().map(|&i| nodes[i].clone()).collect(),
            initializer: graph
                .initializer
                .iter()
                .filter(|t| used.contains(t.name.as_str()))
                .cloned()
                .collect(),
            sparse_initializer: graph
                .sparse_initializer
                .iter()
                .filter(|s| used.contains(s.values.name.as_str()))
                .cloned()
                .collect(),
            input: input_infos,
            output: output_infos,
            value_info: graph
                .value_info
                .iter()
                .filter(|v| {
                    used.contains(v.name.as_str())
                        && !inputs.iter().chain(&outputs).any(|n| n == v.name.as_str())
                        && !matches!(kind, PartKind::Component { .. })
                })
                .cloned()
                .collect(),
            quantization_annotation: graph
                .quantization_annotation
                .iter()
                .filter(|a| used.contains(a.tensor_name.as_str()))
                .cloned()
                .collect(),
            metadata_props: graph.metadata_props.clone(),
            special_fields: graph.special_fields.clone(),
            ..Default::default()
        };
        let mut part_model = model.clone_without_graph();
        part_model.graph = Some(part_graph).into();
        models.push(part_model);
        out_parts.push(Part {
            file,
            kind,
            inputs,
            outputs,
        });
    }
    let manifest = SplitManifest {
        format: FORMAT,
        model_digest: model_digest.to_string(),
        components: comps.iter().map(|c| c.id).collect(),
        graph_inputs: ctx.graph_inputs.clone(),
        graph_outputs: ctx.graph_outputs.clone(),
        parts: out_parts,
        blocks,
        data_files: Vec::new(),
        recomputed,
        probed: !probed.is_empty(),
        dir: PathBuf::new(),
    };
    Ok(Cut { manifest, models })
}

pub(super) trait CloneWithoutGraph {
    fn clone_without_graph(&self) -> ModelProto;
}

impl CloneWithoutGraph for ModelProto {
    /// Everything but the graph (and training info, which a cut graph cannot carry).
    fn clone_without_graph(&self) -> ModelProto {
        ModelProto {
            ir_version: self.ir_version,
            opset_import: self.opset_import.clone(),
            producer_name: self.producer_name.clone(),
            producer_version: self.producer_version.clone(),
            domain: self.domain.clone(),
            model_version: self.model_version,
            doc_string: self.doc_string.clone(),
            metadata_props: self.metadata_props.clone(),
            functions: self.functions.clone(),
            special_fields: self.special_fields.clone(),
            ..Default::default()
        }
    }
}

/// Element type and shape to declare for a tensor that crosses a cut. Component inputs
/// and outputs get dynamic dimensions (their token count changes when merged).
struct Declared<'a> {
    graph: HashMap<&'a str, &'a ValueInfoProto>,
    probed: &'a HashMap<String, TensorInfo>,
    types: HashMap<String, i32>,
    ranks: HashMap<String, usize>,
}

impl Declared<'_> {
    fn value_info(&self, name: &str, merged: bool) -> Option<ValueInfoProto> {
        let (elem, dims): (i32, Option<Vec<Option<i64>>>) =
            match (self.graph.get(name), self.probed.get(name)) {
                (Some(v), _) if !merged => return Some((*v).clone()),
                (_, Some(t)) => {
                    // Rank 0 means "scalar" or "unknown": our own rank inference decides.
                    let dims = (!t.dims.is_empty() || self.ranks.get(name) == Some(&0))
                        .then(|| t.dims.clone());
                    (t.elem_type, dims)
                }
                (Some(v), None) => (v.type_.as_ref().and_then(graph::tensor_elem_type)?, None),
                (None, None) => (*self.types.get(name)?, None),
            };
        let dims = match (merged, dims) {
            (true, Some(d)) => Some(vec![None; d.len()]),
            (true, None) => Some(vec![None; 3]),
            (false, d) => d,
        };
        let tensor = type_proto::Tensor {
            elem_type: elem,
            shape: match dims {
                Some(d) => Some(TensorShapeProto {
                    dim: d
                        .into_iter()
                        .map(|v| {
                            let mut dim = tensor_shape_proto::Dimension::default();
                            if let Some(v) = v {
                                dim.set_dim_value(v);
                            }
                            dim
                        })
                        .collect(),
                    ..Default::default()
                })
                .into(),
                None => Default::default(),
            },
            ..Default::default()
        };
        let mut t = TypeProto::default();
        t.set_tensor_type(tensor);
        Some(ValueInfoProto {
            name: name.to_string(),
            type_: Some(t).into(),
            ..Default::default()
        })
    }
}
