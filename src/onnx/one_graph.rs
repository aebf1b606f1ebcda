//! A cut UNet and ToMe's token ops as one model, so one UNet evaluation is one ONNX
//! Runtime `Run`: the parts of a [`SplitManifest`] in order, with the matching graph at
//! each merged block's input and the merge and unmerge graphs around each cut
//! component ([`super::token_ops`]), the block partitions as inputs
//! (`<block>/a_idx`, `<block>/b_idx`, `<block>/r`).
//!
//! Names: the tensors passed between parts keep their names; every other tensor and
//! node of part `i` gets the prefix `p<i>/` (a shape value the cut recomputes on both
//! sides is then two tensors, as in the parts), and each token-op use the prefix of its
//! block or component. A component's input and output become `<component>/merged_in`
//! and `<component>/merged_out` inside it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use super::proto::{GraphProto, ModelProto, NodeProto, ValueInfoProto};
use super::split::{PartKind, SplitManifest};
use super::token_ops;
use super::unet::BlockId;
use super::OnnxError;

/// Version of the composition, in the composed file's name: a model composed by an
/// older tomex is made again, not reused from the cache.
pub const FORMAT: u32 = 1;

/// Where the composed model of `manifest`'s cut is cached: beside its parts, named by
/// the cut's key (the prefix of its part files) and [`FORMAT`].
pub fn model_path(manifest: &SplitManifest) -> PathBuf {
    let key = manifest
        .parts
        .first()
        .and_then(|p| p.file.split('-').next())
        .unwrap_or("cut");
    manifest.dir.join(format!("{key}-one-graph-v{FORMAT}.onnx"))
}

/// The graph inputs of block `block`'s partition: `a_idx`, `b_idx`, `r`.
pub fn partition_input_names(block: &BlockId) -> [String; 3] {
    let p = block.path();
    [format!("{p}/a_idx"), format!("{p}/b_idx"), format!("{p}/r")]
}

/// The blocks whose partitions the composed model takes, in the order the split path
/// meets them (so a partition generator drawn in this order draws as it does there).
pub fn merged_blocks(manifest: &SplitManifest) -> Vec<BlockId> {
    let mut blocks = Vec::new();
    for part in &manifest.parts {
        if let PartKind::Component { id, .. } = &part.kind {
            if !blocks.contains(&id.block) {
                blocks.push(id.block);
            }
        }
    }
    blocks
}

/// Composes `parts` (the models of `manifest.parts`, in order) and the token ops for
/// a UNet whose default-domain opset is that of the parts.
pub fn compose(manifest: &SplitManifest, parts: &[ModelProto]) -> Result<ModelProto, OnnxError> {
    let bad = |reason: String| OnnxError::Unsupported {
        model: manifest.dir.clone(),
        reason,
    };
    if parts.len() != manifest.parts.len() || parts.is_empty() {
        return Err(bad(format!(
            "{} part models for {} parts",
            parts.len(),
            manifest.parts.len()
        )));
    }
    let opset = parts[0]
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(17, |o| o.version);
    let ops = [
        token_ops::matching_graph_at(opset),
        token_ops::merge_graph_at(opset),
        token_ops::unmerge_graph_at(opset),
    ];
    let mut out = Composer::default();
    let mut matched: HashSet<BlockId> = HashSet::new();
    for (i, (part, model)) in manifest.parts.iter().zip(parts).enumerate() {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| bad(format!("part {i} has no graph")))?;
        if graph.node.iter().any(|n| {
            n.attribute
                .iter()
                .any(|a| a.g.is_some() || !a.graphs.is_empty())
        }) {
            return Err(bad(format!("part {i} has a node with a subgraph")));
        }
        let mut rename: HashMap<String, String> = HashMap::new();
        let boundary: HashSet<&str> = part
            .inputs
            .iter()
            .chain(&part.outputs)
            .map(String::as_str)
            .collect();
        for node in &graph.node {
            for o in &node.output {
                if !o.is_empty() && !boundary.contains(o.as_str()) {
                    rename.insert(o.clone(), format!("p{i}/{o}"));
                }
            }
        }
        if let PartKind::Component { id, input, output } = &part.kind {
            let prefix = id.node_prefix();
            let block = manifest
                .blocks
                .iter()
                .find(|b| b.id == id.block)
                .ok_or_else(|| bad(format!("no block input for {id}")))?;
            let [a_idx, b_idx, r] = partition_input_names(&id.block);
            let idx = |k: &str| format!("{}/{k}", id.block.path());
            if matched.insert(id.block) {
                out.instance(
                    &ops[0],
                    &format!("{}/tome_matching", id.block.path()),
                    &[
                        ("x", block.input.as_str()),
                        ("a_idx", &a_idx),
                        ("b_idx", &b_idx),
                        ("r", &r),
                    ],
                    &[
                        ("unm_idx", &idx("unm_idx")),
                        ("src_idx", &idx("src_idx")),
                        ("dst_idx", &idx("dst_idx")),
                    ],
                );
            }
            // The token ops' shapes are data-dependent, so ONNX's inference gives
            // their outputs no rank; declaring the merged and unmerged tensors as
            // [B, N, C] (dimensions free) lets it carry on into the component (tomex's
            // flash operator needs its inputs' rank when the session is made).
            let elem = graph
                .input
                .iter()
                .find(|v| &v.name == input)
                .and_then(|v| v.type_.as_ref())
                .and_then(super::graph::tensor_elem_type)
                .unwrap_or(super::graph::dtype::FLOAT);
            for name in [format!("{prefix}/merged_in"), output.clone()] {
                let dims = ["b", "n", "c"].map(|d| format!("{name}/{d}"));
                let dims: Vec<&str> = dims.iter().map(String::as_str).collect();
                out.shapes
                    .push(super::graph::tensor_value(&name, elem, &dims));
            }
            let merged_in = format!("{prefix}/merged_in");
            let merged_out = format!("{prefix}/merged_out");
            let indices = [
                ("a_idx", a_idx.clone()),
                ("b_idx", b_idx.clone()),
                ("unm_idx", idx("unm_idx")),
                ("src_idx", idx("src_idx")),
                ("dst_idx", idx("dst_idx")),
            ];
            let mut ins: Vec<(&str, &str)> = vec![("x", input.as_str())];
            ins.extend(indices.iter().map(|(k, v)| (*k, v.as_str())));
            out.instance(
                &ops[1],
                &format!("{prefix}/tome_merge"),
                &ins,
                &[("merged", &merged_in)],
            );
            rename.insert(input.clone(), merged_in);
            rename.insert(output.clone(), merged_out.clone());
            out.part(i, graph, &rename);
            let mut ins: Vec<(&str, &str)> = vec![("y", merged_out.as_str())];
            ins.extend(indices.iter().map(|(k, v)| (*k, v.as_str())));
            out.instance(
                &ops[2],
                &format!("{prefix}/tome_unmerge"),
                &ins,
                &[("unmerged", output)],
            );
        } else {
            out.part(i, graph, &rename);
        }
    }
    // Graph inputs and outputs as the parts declare them, then the partitions.
    let declared = |name: &str, outputs: bool| -> Option<ValueInfoProto> {
        parts.iter().find_map(|m| {
            let g = m.graph.as_ref()?;
            let list = if outputs { &g.output } else { &g.input };
            list.iter().find(|v| v.name == name).cloned()
        })
    };
    let mut input = Vec::new();
    for name in &manifest.graph_inputs {
        input.push(
            declared(name, false).ok_or_else(|| bad(format!("no part declares input `{name}`")))?,
        );
    }
    for block in merged_blocks(manifest) {
        let names = partition_input_names(&block);
        let matching = ops[0].graph.as_ref().expect("built with a graph");
        for (name, key) in names.iter().zip(["a_idx", "b_idx", "r"]) {
            let mut v = matching
                .input
                .iter()
                .find(|v| v.name == key)
                .cloned()
                .expect("the matching graph declares its partition inputs");
            v.name = name.clone();
            input.push(v);
        }
    }
    let mut output = Vec::new();
    for name in &manifest.graph_outputs {
        output.push(
            declared(name, true).ok_or_else(|| bad(format!("no part declares output `{name}`")))?,
        );
    }
    let mut opset_import = parts[0].opset_import.clone();
    for m in parts {
        for o in &m.opset_import {
            if !opset_import.iter().any(|p| p.domain == o.domain) {
                opset_import.push(o.clone());
            }
        }
    }
    Ok(ModelProto {
        ir_version: parts[0].ir_version,
        producer_name: "tomex".into(),
        opset_import,
        graph: Some(GraphProto {
            name: "unet_tome_one_graph".into(),
            node: out.nodes,
            initializer: out.initializers,
            value_info: out.shapes,
            input,
            output,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
}

/// The model being put together.
#[derive(Default)]
struct Composer {
    nodes: Vec<NodeProto>,
    initializers: Vec<super::proto::TensorProto>,
    initializer_names: HashSet<String>,
    /// Declared shapes of the tensors around the token ops.
    shapes: Vec<ValueInfoProto>,
}

impl Composer {
    /// Part `i`'s nodes, initializers and value infos, renamed by `rename`.
    fn part(&mut self, i: usize, graph: &GraphProto, rename: &HashMap<String, String>) {
        let map = |n: &String| rename.get(n).cloned().unwrap_or_else(|| n.clone());
        for node in &graph.node {
            let mut node = node.clone();
            node.name = format!("p{i}/{}", node.name);
            node.input = node.input.iter().map(map).collect();
            node.output = node.output.iter().map(map).collect();
            self.nodes.push(node);
        }
        for t in &graph.initializer {
            if self.initializer_names.insert(t.name.clone()) {
                self.initializers.push(t.clone());
            }
        }
        // The parts' declared shapes (what the probe inferred for the cut graph) are
        // left out: some hold the unmerged token count of a tensor that now carries
        // merged tokens, and in one graph ONNX Runtime infers across the old cuts itself.
    }

    /// One use of a token-op graph: its inputs and outputs wired to `inputs` and
    /// `outputs` (graph name → tensor), everything else prefixed with `prefix`.
    fn instance(
        &mut self,
        model: &ModelProto,
        prefix: &str,
        inputs: &[(&str, &str)],
        outputs: &[(&str, &str)],
    ) {
        let graph = model
            .graph
            .as_ref()
            .expect("token-op graphs are built with a graph");
        let wired: HashMap<&str, &str> = inputs.iter().chain(outputs).copied().collect();
        let map = |n: &String| match wired.get(n.as_str()) {
            Some(to) => to.to_string(),
            None if n.is_empty() => String::new(),
            None => format!("{prefix}/{n}"),
        };
        for node in &graph.node {
            let mut node = node.clone();
            node.name = format!("{prefix}/{}", node.name);
            node.input = node.input.iter().map(map).collect();
            node.output = node.output.iter().map(map).collect();
            self.nodes.push(node);
        }
        for t in &graph.initializer {
            let mut t = t.clone();
            t.name = map(&t.name);
            self.initializer_names.insert(t.name.clone());
            self.initializers.push(t);
        }
    }
}
