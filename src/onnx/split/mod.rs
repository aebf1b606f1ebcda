//! Cutting the UNet graph at transformer components.
//!
//! The result is an ordered list of parts: segments (everything that is not a cut
//! component) and components (one `attn1`, `attn2` or `ff` each). Running the parts in
//! order, passing tensors by name, computes exactly what the whole graph computes; ToMe
//! merges the tokens of a component's one activation input and unmerges its one output.
//!
//! How a component is cut (`cut`):
//!
//! 1. Its nodes are those named `<block>/<attn1|attn2|ff>/...`. Its activation input is
//!    the one tensor it reads from `<block>/<norm1|norm2|norm3>/...`; its output is the
//!    one tensor it computes that the rest of the graph reads.
//! 2. Other tensors that cross the boundary must be shape values (made only of shape
//!    arithmetic: `Shape`, `Gather`, `Unsqueeze`, `Concat`, ...). The exporter shares
//!    such values between modules, e.g. the batch size `Shape(encoder_hidden_states)[0]`
//!    of the first `attn2` is reused by every later one. They are never passed across
//!    a cut, since a value computed inside a merged component would carry the merged
//!    token count: a shape value the rest of the graph reads from inside a component is
//!    recomputed outside it (the chain of nodes duplicated onto the un-merged tensors),
//!    and one a component reads from outside is recomputed inside it (onto the merged
//!    input, or onto `encoder_hidden_states`/constants).
//! 3. Nodes outside components go to the earliest segment their inputs allow; a
//!    component that would need a tensor from a later part is not a proper cut.
//!    `Constant` nodes are copied into every part that reads them.
//! 4. Each block with a cut component exposes its input (the hidden states entering
//!    `norm1`) as a part output, for the similarity ToMe computes once per block.

mod boundary;
mod components;
mod emit;
mod manifest;
mod parts;

use boundary::{block_inputs, cut_inputs, cut_outputs};
use components::{find_activation, find_components, remove_unused_copies};
use parts::{assign_parts, part_io};

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::proto::{GraphProto, ModelProto, NodeProto};
use super::unet::ComponentId;
use super::OnnxError;

pub(crate) use emit::finish;
pub use manifest::{
    BlockPart, DataFile, Part, PartKind, ProbeError, ShapeProbe, SplitManifest, TensorInfo,
};

/// Bumped whenever the cut or the cache layout changes, so old caches are not reused
/// (4: whole-graph records count the attentions handed to tomex's kernel).
pub const FORMAT: u32 = 4;

/// What the cut knows about one component while it works.
struct Comp {
    id: ComponentId,
    prefix: String,
    activation: String,
    output: String,
}

struct Ctx {
    path: PathBuf,
    initializers: HashSet<String>,
    graph_inputs: Vec<String>,
    /// Graph inputs without the token dimension (all but the sample).
    token_free: HashSet<String>,
    graph_outputs: Vec<String>,
}

impl Ctx {
    fn bad(&self, c: &ComponentId, reason: String) -> OnnxError {
        OnnxError::BadCut {
            model: self.path.clone(),
            component: c.to_string(),
            reason,
        }
    }

    fn is_source(&self, name: &str) -> bool {
        self.initializers.contains(name) || self.graph_inputs.iter().any(|g| g == name)
    }
}

/// Per part: the tensors it reads from elsewhere, and those it passes on.
type PartIo = (Vec<String>, Vec<String>);

/// A cut worked out but not yet written: the rewritten nodes, which part each goes to,
/// and what each part reads and passes on.
pub(crate) struct Plan {
    ctx: Ctx,
    nodes: Vec<NodeProto>,
    comps: Vec<Comp>,
    blocks: Vec<BlockPart>,
    /// Per part: `None` for a segment, `Some(k)` for component `k`.
    kinds: Vec<Option<usize>>,
    /// Per part: node indices in execution order.
    part_nodes: Vec<Vec<usize>>,
    io: Vec<PartIo>,
    recomputed: Vec<String>,
}

/// Works out the cut of `model` at `wanted` (component ids as
/// [`super::transformer_blocks`] lists them).
pub(crate) fn plan(
    model: &ModelProto,
    path: &Path,
    wanted: &[ComponentId],
) -> Result<Plan, OnnxError> {
    let graph: &GraphProto = &model.graph;
    if graph.node.is_empty() {
        return Err(OnnxError::Unsupported {
            model: path.to_path_buf(),
            reason: "the model has no graph nodes".into(),
        });
    }
    let mut initializers: HashSet<String> =
        graph.initializer.iter().map(|t| t.name.clone()).collect();
    initializers.extend(
        graph
            .sparse_initializer
            .iter()
            .map(|s| s.values.name.clone()),
    );
    let graph_inputs: Vec<String> = graph
        .input
        .iter()
        .map(|v| v.name.clone())
        .filter(|n| !initializers.contains(n))
        .collect();
    let sample = graph_inputs
        .iter()
        .find(|n| *n == "sample")
        .or(graph_inputs.first())
        .cloned();
    let token_free = graph_inputs
        .iter()
        .filter(|n| Some(*n) != sample.as_ref())
        .cloned()
        .collect();
    let ctx = Ctx {
        path: path.to_path_buf(),
        initializers,
        graph_inputs,
        token_free,
        graph_outputs: graph.output.iter().map(|v| v.name.clone()).collect(),
    };

    let mut nodes: Vec<NodeProto> = graph.node.clone();
    let mut comps = find_components(&ctx, &nodes, wanted)?;
    let mut owner: Vec<Option<usize>> = nodes
        .iter()
        .map(|n| {
            comps.iter().position(|c| {
                n.name.starts_with(&c.prefix) && n.name[c.prefix.len()..].starts_with('/')
            })
        })
        .collect();
    let mut recomputed = Vec::new();
    for k in 0..comps.len() {
        find_activation(&ctx, &nodes, &owner, k, &mut comps)?;
    }
    for k in 0..comps.len() {
        cut_outputs(&ctx, &mut nodes, &mut owner, k, &mut comps, &mut recomputed)?;
    }
    for k in 0..comps.len() {
        cut_inputs(&ctx, &mut nodes, &mut owner, k, &comps, &mut recomputed)?;
    }
    remove_unused_copies(&ctx, &mut nodes, &mut owner);
    let blocks = block_inputs(&ctx, &nodes, &comps)?;
    let (kinds, part_nodes) = assign_parts(&ctx, &nodes, &owner, &comps)?;
    let io = part_io(&ctx, &nodes, &comps, &blocks, &kinds, &part_nodes)?;
    Ok(Plan {
        ctx,
        nodes,
        comps,
        blocks,
        kinds,
        part_nodes,
        io,
        recomputed,
    })
}

#[cfg(test)]
mod tests {
    //! Each step of the cut on a graph of one transformer block small enough to read:
    //!
    //! ```text
    //! sample → proj_in → x → norm1 → n1 → attn1: MatMul(n1, w), Shape(n1) = s, Reshape → a1
    //! h = a1 + x;  out = proj_out(Reshape(h, s))      (s, a shape value, read outside attn1)
    //! ```
    use super::*;
    use crate::onnx::graph::{self, dtype};
    use crate::onnx::proto::TensorProto;
    use crate::onnx::unet::blocks_of_nodes;

    const B: &str = "/down_blocks.0/attentions.0/transformer_blocks.0";

    fn node(op: &str, name: &str, input: &[&str], output: &[&str]) -> NodeProto {
        NodeProto {
            name: name.into(),
            op_type: op.into(),
            input: input.iter().map(|s| s.to_string()).collect(),
            output: output.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn block_nodes() -> Vec<NodeProto> {
        vec![
            node(
                "Identity",
                "/down_blocks.0/attentions.0/proj_in/Identity",
                &["sample"],
                &["x"],
            ),
            node("Identity", &format!("{B}/norm1/Identity"), &["x"], &["n1"]),
            node("Shape", &format!("{B}/attn1/Shape"), &["n1"], &["s"]),
            node("MatMul", &format!("{B}/attn1/MatMul"), &["n1", "w"], &["q"]),
            node(
                "Reshape",
                &format!("{B}/attn1/Reshape"),
                &["q", "s"],
                &["a1"],
            ),
            node("Add", &format!("{B}/Add"), &["a1", "x"], &["h"]),
            node(
                "Reshape",
                "/down_blocks.0/attentions.0/proj_out/Reshape",
                &["h", "s"],
                &["out"],
            ),
        ]
    }

    fn model(nodes: Vec<NodeProto>) -> ModelProto {
        let graph = GraphProto {
            node: nodes,
            input: vec![
                graph::tensor_value("sample", dtype::FLOAT, &["b", "n", "c"]),
                graph::tensor_value("encoder_hidden_states", dtype::FLOAT, &["b", "t", "d"]),
            ],
            initializer: vec![TensorProto {
                name: "w".into(),
                dims: vec![1, 1],
                data_type: dtype::FLOAT,
                float_data: vec![1.0],
                ..Default::default()
            }],
            output: vec![graph::tensor_value("out", dtype::FLOAT, &[])],
            ..Default::default()
        };
        ModelProto {
            graph: Some(graph).into(),
            ..Default::default()
        }
    }

    fn attn1(nodes: &[NodeProto]) -> ComponentId {
        let block = &blocks_of_nodes(nodes)[0];
        block.component(crate::onnx::ComponentKind::Attn1).unwrap()
    }

    fn plan_of(nodes: Vec<NodeProto>) -> Result<Plan, OnnxError> {
        let wanted = [attn1(&nodes)];
        plan(&model(nodes), Path::new("unet.onnx"), &wanted)
    }

    #[test]
    fn components_are_found_by_node_names_with_their_activation_and_output() {
        let p = plan_of(block_nodes()).unwrap();
        assert_eq!(p.comps.len(), 1);
        assert_eq!(p.comps[0].prefix, format!("{B}/attn1"));
        assert_eq!(p.comps[0].activation, "n1");
        assert_eq!(p.comps[0].output, "a1");
        // Each block with a cut component shows the tensor entering its norm1.
        assert_eq!(p.blocks.len(), 1);
        assert_eq!(p.blocks[0].input, "x");
    }

    #[test]
    fn a_shape_value_read_outside_its_component_is_recomputed_outside() {
        let p = plan_of(block_nodes()).unwrap();
        assert_eq!(p.recomputed.len(), 1);
        assert!(
            p.recomputed[0].starts_with("s (from "),
            "{:?}",
            p.recomputed
        );
        // Segment, component, segment; the component passes on only its output, and no
        // later part reads the shape value it computed on merged tokens.
        assert_eq!(p.kinds, vec![None, Some(0), None]);
        let (reads, passes) = &p.io[1];
        assert!(reads.contains(&"n1".to_string()), "{reads:?}");
        assert_eq!(passes, &vec!["a1".to_string()]);
        assert!(!p.io[2].0.contains(&"s".to_string()), "{:?}", p.io[2].0);
        // The copy outside reads the un-merged activation.
        let copy = p
            .nodes
            .iter()
            .find(|n| n.op_type == "Shape" && n.name.ends_with(components::OUTSIDE))
            .expect("a copy of the Shape node outside attn1");
        assert_eq!(copy.input, vec!["n1".to_string()]);
    }

    #[test]
    fn every_node_lands_in_exactly_one_part_in_order() {
        let p = plan_of(block_nodes()).unwrap();
        let mut seen: Vec<usize> = p.part_nodes.iter().flatten().copied().collect();
        let in_order = p.part_nodes[1]
            .iter()
            .map(|&i| p.nodes[i].name.clone())
            .collect::<Vec<_>>();
        assert_eq!(
            in_order,
            ["Shape", "MatMul", "Reshape"].map(|op| format!("{B}/attn1/{op}"))
        );
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), p.nodes.len());
        assert_eq!(
            p.boundary().len(),
            p.boundary().iter().collect::<HashSet<_>>().len()
        );
    }

    #[test]
    fn a_missing_component_lists_the_blocks_found() {
        let nodes = block_nodes();
        let mut wanted = attn1(&nodes);
        wanted.kind = crate::onnx::ComponentKind::Attn2;
        let e = plan(&model(nodes), Path::new("unet.onnx"), &[wanted])
            .err()
            .expect("attn2 is not in the graph");
        assert!(matches!(e, OnnxError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("transformer blocks found"), "{e}");
    }

    #[test]
    fn a_component_reading_two_norm_outputs_is_not_a_proper_cut() {
        let mut nodes = block_nodes();
        nodes.insert(
            2,
            node("Identity", &format!("{B}/norm1/Other"), &["x"], &["n1b"]),
        );
        nodes[4].input[1] = "n1b".into(); // MatMul(n1, n1b)
        let e = plan_of(nodes).err().expect("two activations");
        assert!(matches!(e, OnnxError::BadCut { .. }), "{e}");
        assert!(e.to_string().contains("expected one"), "{e}");
    }

    #[test]
    fn a_data_tensor_leaving_a_component_besides_its_output_is_refused() {
        let mut nodes = block_nodes();
        // proj_out reads q, a data tensor computed inside attn1 on merged tokens.
        nodes[6].input[0] = "q".into();
        let e = plan_of(nodes).err().expect("q crosses the cut");
        assert!(matches!(e, OnnxError::BadCut { .. }), "{e}");
    }
}
