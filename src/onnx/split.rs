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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::graph::{self, node_inputs};
use super::proto::{
    tensor_shape_proto, type_proto, GraphProto, ModelProto, NodeProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use super::unet::{blocks_of_nodes, BlockId, ComponentId};
use super::OnnxError;

/// Bumped whenever the cut or the cache layout changes, so old caches are not reused.
pub const FORMAT: u32 = 3;

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

/// Operators allowed in a shape computation that is recomputed across a cut.
const SHAPE_OPS: &[&str] = &[
    "Shape",
    "Size",
    "Constant",
    "ConstantOfShape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Cast",
    "Slice",
    "Identity",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Mod",
    "Neg",
    "Abs",
    "Floor",
    "Ceil",
    "Sqrt",
    "Min",
    "Max",
    "Equal",
    "Less",
    "Greater",
    "Not",
    "Where",
    "Range",
    "Reshape",
    "Expand",
    "ReduceProd",
];

fn is_shape_op(node: &NodeProto) -> bool {
    (node.domain.is_empty() || node.domain == "ai.onnx")
        && SHAPE_OPS.contains(&node.op_type.as_str())
}

/// Which nodes compute from constants only (initializers, `Constant`s, and nodes of
/// both, like the `Identity` an exporter uses to share one weight): outside
/// components they are copied into every part that reads them.
fn static_nodes(nodes: &[NodeProto], initializers: &HashSet<String>) -> Vec<bool> {
    let producer = graph::producers(nodes);
    let order = graph::topological_order(nodes).unwrap_or_else(|| (0..nodes.len()).collect());
    let mut stat = vec![false; nodes.len()];
    for i in order {
        stat[i] = node_inputs(&nodes[i])
            .into_iter()
            .all(|n| initializers.contains(n) || producer.get(n).is_some_and(|&p| stat[p]));
    }
    stat
}

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
    fn probe(&mut self, model: &Path) -> Result<Vec<TensorInfo>, String>;
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

/// Drops copies made outside components that nothing reads (every reader recomputed
/// the value inside itself).
fn remove_unused_copies(ctx: &Ctx, nodes: &mut Vec<NodeProto>, owner: &mut Vec<Option<usize>>) {
    loop {
        let dead: Vec<usize> = {
            let consumers = graph::consumers(nodes);
            (0..nodes.len())
                .filter(|&i| owner[i].is_none() && nodes[i].name.ends_with(OUTSIDE))
                .filter(|&i| {
                    nodes[i].output.iter().all(|o| {
                        !consumers.contains_key(o.as_str()) && !ctx.graph_outputs.contains(o)
                    })
                })
                .collect()
        };
        if dead.is_empty() {
            return;
        }
        let mut i = 0;
        nodes.retain(|_| {
            i += 1;
            !dead.contains(&(i - 1))
        });
        let mut i = 0;
        owner.retain(|_| {
            i += 1;
            !dead.contains(&(i - 1))
        });
    }
}

const OUTSIDE: &str = "/tomex_outside";

fn find_components(
    ctx: &Ctx,
    nodes: &[NodeProto],
    wanted: &[ComponentId],
) -> Result<Vec<Comp>, OnnxError> {
    let blocks = blocks_of_nodes(nodes);
    let mut ids: Vec<ComponentId> = Vec::new();
    for w in wanted {
        let prefix = w.node_prefix();
        let found = blocks
            .iter()
            .find(|b| b.id.path() == w.block.path())
            .and_then(|b| b.component(w.kind));
        let Some(id) = found else {
            let listing = if blocks.is_empty() {
                "no transformer blocks at all (no node named `/<down_blocks.i|mid_block|up_blocks.i>/attentions.j/transformer_blocks.k/...`: not the standard TorchScript export, or attention was fused)".to_string()
            } else {
                let names: Vec<String> = blocks
                    .iter()
                    .map(|b| {
                        let kinds: Vec<&str> = b.components.iter().map(|k| k.name()).collect();
                        format!("{} [{}]", b.id, kinds.join(", "))
                    })
                    .collect();
                format!("transformer blocks found: {}", names.join("; "))
            };
            return Err(OnnxError::NotFound {
                model: ctx.path.to_path_buf(),
                what: format!("component {w} (no node named `{prefix}/...`); {listing}"),
            });
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids
        .into_iter()
        .map(|id| Comp {
            prefix: id.node_prefix(),
            id,
            activation: String::new(),
            output: String::new(),
        })
        .collect())
}

fn owned_by(owner: &[Option<usize>], k: usize) -> impl Iterator<Item = usize> + '_ {
    owner
        .iter()
        .enumerate()
        .filter(move |(_, o)| **o == Some(k))
        .map(|(i, _)| i)
}

/// Tensors read by component `k`'s nodes that none of its nodes compute, in order.
fn external_inputs(nodes: &[NodeProto], owner: &[Option<usize>], k: usize) -> Vec<String> {
    let produced: HashSet<&str> = owned_by(owner, k)
        .flat_map(|i| nodes[i].output.iter().map(String::as_str))
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for i in owned_by(owner, k) {
        for name in node_inputs(&nodes[i]) {
            if !produced.contains(name) && seen.insert(name) {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// The component's activation input: the one tensor it reads from its block's norm.
fn find_activation(
    ctx: &Ctx,
    nodes: &[NodeProto],
    owner: &[Option<usize>],
    k: usize,
    comps: &mut [Comp],
) -> Result<(), OnnxError> {
    let producer = graph::producers(nodes);
    let norm_prefix = format!(
        "{}/{}/",
        comps[k].id.block.node_prefix(),
        comps[k].id.kind.norm()
    );
    let from_norm: Vec<String> = external_inputs(nodes, owner, k)
        .into_iter()
        .filter(|t| {
            producer
                .get(t.as_str())
                .is_some_and(|&p| nodes[p].name.starts_with(&norm_prefix))
        })
        .collect();
    match from_norm.as_slice() {
        [one] => {
            comps[k].activation = one.clone();
            Ok(())
        }
        [] => Err(ctx.bad(
            &comps[k].id,
            format!("it reads no tensor from the norm before it (no input made by a node named `{norm_prefix}...`)"),
        )),
        many => Err(ctx.bad(
            &comps[k].id,
            format!("it reads {} tensors from `{norm_prefix}...` ({}); expected one", many.len(), many.join(", ")),
        )),
    }
}

/// Nodes of component `k` that compute `t` from tensors outside the component, if all of
/// them are shape arithmetic; `None` otherwise.
fn shape_closure_within(
    nodes: &[NodeProto],
    owner: &[Option<usize>],
    producer: &HashMap<&str, usize>,
    k: usize,
    t: &str,
) -> Option<Vec<usize>> {
    let mut found = Vec::new();
    let mut stack = vec![t];
    let mut seen = HashSet::new();
    while let Some(name) = stack.pop() {
        let Some(&p) = producer.get(name) else {
            continue;
        };
        if owner[p] != Some(k) || !seen.insert(p) {
            continue;
        }
        if !is_shape_op(&nodes[p]) {
            return None;
        }
        found.push(p);
        stack.extend(node_inputs(&nodes[p]));
    }
    found.sort_unstable();
    Some(found)
}

/// Copies `list` (node indices, in order) with every output renamed by `rename`, inputs
/// produced inside the list following the renaming; returns the old→new output names.
fn duplicate(
    nodes: &mut Vec<NodeProto>,
    owner: &mut Vec<Option<usize>>,
    list: &[usize],
    new_owner: Option<usize>,
    suffix: &str,
) -> HashMap<String, String> {
    let mut renamed: HashMap<String, String> = HashMap::new();
    for &i in list {
        for o in nodes[i].output.iter().filter(|o| !o.is_empty()) {
            renamed.insert(o.clone(), format!("{o}{suffix}"));
        }
    }
    for &i in list {
        let mut copy = nodes[i].clone();
        if !copy.name.is_empty() {
            copy.name = format!("{}{suffix}", copy.name);
        }
        for name in copy.input.iter_mut().chain(copy.output.iter_mut()) {
            if let Some(new) = renamed.get(name.as_str()) {
                *name = new.clone();
            }
        }
        nodes.push(copy);
        owner.push(new_owner);
    }
    renamed
}

/// Finds component `k`'s output, and recomputes outside it every shape value it
/// shares with the rest of the graph.
fn cut_outputs(
    ctx: &Ctx,
    nodes: &mut Vec<NodeProto>,
    owner: &mut Vec<Option<usize>>,
    k: usize,
    comps: &mut [Comp],
    recomputed: &mut Vec<String>,
) -> Result<(), OnnxError> {
    let id = comps[k].id;
    let (plans, mains) = {
        let producer = graph::producers(nodes);
        let consumers = graph::consumers(nodes);
        let mut plans: Vec<(String, Vec<usize>)> = Vec::new();
        let mut mains: Vec<String> = Vec::new();
        for i in owned_by(owner, k) {
            for o in nodes[i].output.iter().filter(|o| !o.is_empty()) {
                let outside = consumers
                    .get(o.as_str())
                    .is_some_and(|c| c.iter().any(|&j| owner[j] != Some(k)))
                    || ctx.graph_outputs.contains(o);
                if !outside {
                    continue;
                }
                match shape_closure_within(nodes, owner, &producer, k, o) {
                    Some(list) if !ctx.graph_outputs.contains(o) => plans.push((o.clone(), list)),
                    _ => mains.push(o.clone()),
                }
            }
        }
        (plans, mains)
    };
    match mains.as_slice() {
        [one] => comps[k].output = one.clone(),
        [] => return Err(ctx.bad(&id, "nothing outside it reads its result".into())),
        many => {
            return Err(ctx.bad(
                &id,
                format!(
                    "{} of its tensors are read outside it ({}); expected one output",
                    many.len(),
                    many.join(", ")
                ),
            ))
        }
    }
    if plans.is_empty() {
        return Ok(());
    }
    let mut list: Vec<usize> = plans.iter().flat_map(|(_, l)| l.iter().copied()).collect();
    list.sort_unstable();
    list.dedup();
    let renamed = duplicate(nodes, owner, &list, None, OUTSIDE);
    let shared: HashSet<&str> = plans.iter().map(|(t, _)| t.as_str()).collect();
    for (j, node) in nodes.iter_mut().enumerate() {
        if owner[j] == Some(k) {
            continue;
        }
        for name in node.input.iter_mut() {
            if shared.contains(name.as_str()) {
                *name = renamed[name.as_str()].clone();
            }
        }
    }
    for (t, l) in &plans {
        recomputed.push(format!(
            "{t} (from {id}) recomputed outside it ({} nodes)",
            l.len()
        ));
    }
    Ok(())
}

/// Recomputes inside component `k` every shape value it reads from outside.
fn cut_inputs(
    ctx: &Ctx,
    nodes: &mut Vec<NodeProto>,
    owner: &mut Vec<Option<usize>>,
    k: usize,
    comps: &[Comp],
    recomputed: &mut Vec<String>,
) -> Result<(), OnnxError> {
    let comp = &comps[k];
    let mut to_copy: Vec<usize> = Vec::new();
    let mut values: Vec<String> = Vec::new();
    {
        let producer = graph::producers(nodes);
        let stat = static_nodes(nodes, &ctx.initializers);
        for t in external_inputs(nodes, owner, k) {
            let from_constants = producer
                .get(t.as_str())
                .is_some_and(|&p| stat[p] && owner[p].is_none());
            if ctx.is_source(&t) || t == comp.activation || from_constants {
                continue;
            }
            let list = shape_closure_outside(ctx, nodes, owner, &producer, comp, k, &t).map_err(
                |why| {
                    ctx.bad(
                        &comp.id,
                        format!("it reads `{t}` from outside, which {why}"),
                    )
                },
            )?;
            to_copy.extend(list);
            values.push(t);
        }
    }
    if values.is_empty() {
        return Ok(());
    }
    to_copy.sort_unstable();
    to_copy.dedup();
    let renamed = duplicate(nodes, owner, &to_copy, Some(k), &format!("/tomex_in{k}"));
    let own: Vec<usize> = owned_by(owner, k).collect();
    for i in own {
        for name in nodes[i].input.iter_mut() {
            if values.contains(name) {
                *name = renamed[name.as_str()].clone();
            }
        }
    }
    for t in values {
        let t = t.trim_end_matches(OUTSIDE);
        recomputed.push(format!("{t} recomputed inside {}", comp.id));
    }
    Ok(())
}

/// The nodes outside component `k` that compute shape value `t`, stopping at the
/// component's own input (whose shape is then taken inside, after merging),
/// initializers and graph inputs without tokens. Errors say why `t` is not such a value.
fn shape_closure_outside(
    ctx: &Ctx,
    nodes: &[NodeProto],
    owner: &[Option<usize>],
    producer: &HashMap<&str, usize>,
    comp: &Comp,
    k: usize,
    t: &str,
) -> Result<Vec<usize>, String> {
    let mut found = Vec::new();
    let mut stack: Vec<&str> = vec![t];
    let mut seen = HashSet::new();
    while let Some(name) = stack.pop() {
        if ctx.initializers.contains(name) || ctx.token_free.contains(name) {
            continue;
        }
        if ctx.graph_inputs.iter().any(|g| g == name) {
            return Err(format!("depends on the values of graph input `{name}`"));
        }
        if name == comp.activation {
            return Err("depends on the values of the component's input".into());
        }
        let Some(&p) = producer.get(name) else {
            return Err(format!("depends on `{name}`, which nothing computes"));
        };
        if !seen.insert(p) {
            continue;
        }
        let node = &nodes[p];
        if owner[p] == Some(k) {
            return Err("depends on the component's own result".into());
        }
        if !is_shape_op(node) {
            return Err(format!(
                "is computed by {} node `{}`, not a shape computation",
                node.op_type.as_str(),
                node.name.as_str()
            ));
        }
        found.push(p);
        if matches!(node.op_type.as_str(), "Shape" | "Size") {
            let x = node.input.first().map(String::as_str).unwrap_or("");
            let ok =
                x == comp.activation || ctx.token_free.contains(x) || ctx.initializers.contains(x);
            if !ok {
                return Err(format!(
                    "is the shape of `{x}`, not of the component's input, so its token count is unknown after merging"
                ));
            }
            continue;
        }
        stack.extend(node_inputs(node));
    }
    found.sort_unstable();
    Ok(found)
}

/// For each block with a cut component: the tensor entering its `norm1`.
fn block_inputs(
    ctx: &Ctx,
    nodes: &[NodeProto],
    comps: &[Comp],
) -> Result<Vec<BlockPart>, OnnxError> {
    let mut out: Vec<BlockPart> = Vec::new();
    for c in comps {
        if out.iter().any(|b| b.id == c.id.block) {
            continue;
        }
        let prefix = format!("{}/norm1/", c.id.block.node_prefix());
        let scope: Vec<&NodeProto> = nodes
            .iter()
            .filter(|n| n.name.starts_with(&prefix))
            .collect();
        let produced: HashSet<&str> = scope
            .iter()
            .flat_map(|n| n.output.iter().map(String::as_str))
            .collect();
        let mut inputs: Vec<&str> = Vec::new();
        for n in &scope {
            for i in node_inputs(n) {
                if !produced.contains(i) && !ctx.initializers.contains(i) && !inputs.contains(&i) {
                    inputs.push(i);
                }
            }
        }
        let producer = graph::producers(nodes);
        let stat = static_nodes(nodes, &ctx.initializers);
        inputs.retain(|i| producer.get(i).is_none_or(|&p| !stat[p]));
        match inputs.as_slice() {
            [one] => out.push(BlockPart {
                id: c.id.block,
                input: one.to_string(),
            }),
            _ => {
                return Err(OnnxError::NotFound {
                    model: ctx.path.to_path_buf(),
                    what: format!(
                        "block input of {} (expected one tensor entering the nodes named `{prefix}...`, found {})",
                        c.id.block,
                        inputs.len()
                    ),
                })
            }
        }
    }
    Ok(out)
}

/// Which part each node belongs to. Returns the parts (index order = execution order,
/// empty segments dropped) and, per part, its node indices in topological order.
#[allow(clippy::type_complexity)]
fn assign_parts(
    ctx: &Ctx,
    nodes: &[NodeProto],
    owner: &[Option<usize>],
    comps: &[Comp],
) -> Result<(Vec<Option<usize>>, Vec<Vec<usize>>), OnnxError> {
    let order = graph::topological_order(nodes).ok_or_else(|| OnnxError::Unsupported {
        model: ctx.path.to_path_buf(),
        reason: "the graph has a cycle".into(),
    })?;
    // Components in the order their first node appears.
    let mut rank: Vec<Option<usize>> = vec![None; comps.len()];
    let mut next = 0;
    for &i in &order {
        if let Some(k) = owner[i] {
            if rank[k].is_none() {
                rank[k] = Some(next);
                next += 1;
            }
        }
    }
    let comp_part = |k: usize| 2 * rank[k].expect("every component has nodes") + 1;
    let producer = graph::producers(nodes);
    let stat = static_nodes(nodes, &ctx.initializers);
    let copied = |i: usize| stat[i] && owner[i].is_none();
    let mut part_of: Vec<usize> = vec![0; nodes.len()];
    for &i in &order {
        let node = &nodes[i];
        if copied(i) {
            continue; // copied into each part that reads it
        }
        let needs = node_inputs(node)
            .into_iter()
            .filter_map(|n| producer.get(n).map(|&p| (n, p)))
            .filter(|&(_, p)| !copied(p))
            .map(|(n, p)| (n, p, part_of[p]));
        match owner[i] {
            Some(k) => {
                let me = comp_part(k);
                for (name, p, level) in needs {
                    if owner[p] != Some(k) && level >= me {
                        return Err(ctx.bad(
                            &comps[k].id,
                            format!(
                                "it reads `{name}`, which is computed after it (by `{}`)",
                                nodes[p].name.as_str()
                            ),
                        ));
                    }
                }
                part_of[i] = me;
            }
            None => {
                let level = needs.map(|(_, _, l)| l).max().unwrap_or(0);
                part_of[i] = level + (level % 2);
            }
        }
    }
    let count = 2 * comps.len() + 1;
    let mut part_nodes: Vec<Vec<usize>> = vec![Vec::new(); count];
    for &i in &order {
        if copied(i) {
            continue;
        }
        part_nodes[part_of[i]].push(i);
    }
    // Parts: None = segment, Some(k) = component k; empty segments dropped.
    let mut parts: Vec<Option<usize>> = Vec::new();
    let mut kept: Vec<Vec<usize>> = Vec::new();
    for (p, list) in part_nodes.into_iter().enumerate() {
        let kind =
            (p % 2 == 1).then(|| (0..comps.len()).find(|&k| comp_part(k) == p).expect("rank"));
        if kind.is_none() && list.is_empty() {
            continue;
        }
        parts.push(kind);
        kept.push(list);
    }
    // Each part also gets copies of the constant computations it reads.
    let position: HashMap<usize, usize> =
        order.iter().enumerate().map(|(pos, &i)| (i, pos)).collect();
    let mut with_constants = Vec::with_capacity(kept.len());
    for list in kept {
        let mut reads: Vec<usize> = Vec::new();
        let mut stack: Vec<usize> = list.clone();
        while let Some(i) = stack.pop() {
            for n in node_inputs(&nodes[i]) {
                if let Some(&p) = producer.get(n) {
                    if copied(p) && !reads.contains(&p) {
                        reads.push(p);
                        stack.push(p);
                    }
                }
            }
        }
        reads.sort_unstable_by_key(|i| position[i]);
        reads.extend(list);
        with_constants.push(reads);
    }
    Ok((parts, with_constants))
}

/// What each part reads from elsewhere and what it passes on.
fn part_io(
    ctx: &Ctx,
    nodes: &[NodeProto],
    comps: &[Comp],
    blocks: &[BlockPart],
    kinds: &[Option<usize>],
    part_nodes: &[Vec<usize>],
) -> Result<Vec<PartIo>, OnnxError> {
    let produced: Vec<HashSet<&str>> = part_nodes
        .iter()
        .map(|l| {
            l.iter()
                .flat_map(|&i| nodes[i].output.iter().map(String::as_str))
                .collect()
        })
        .collect();
    let mut reads: Vec<Vec<&str>> = Vec::new();
    for (p, list) in part_nodes.iter().enumerate() {
        let mut r: Vec<&str> = Vec::new();
        for &i in list {
            for n in node_inputs(&nodes[i]) {
                if !produced[p].contains(n) && !ctx.initializers.contains(n) && !r.contains(&n) {
                    r.push(n);
                }
            }
        }
        reads.push(r);
    }
    // Block inputs are read (by the hooks) where the block's first cut component runs.
    let mut hook_reads: Vec<Vec<&str>> = vec![Vec::new(); kinds.len()];
    for b in blocks {
        let first = kinds
            .iter()
            .position(|k| k.is_some_and(|k| comps[k].id.block == b.id))
            .expect("a block part has a component");
        hook_reads[first].push(b.input.as_str());
    }
    let mut io = Vec::with_capacity(kinds.len());
    for p in 0..kinds.len() {
        for n in reads[p].iter().chain(&hook_reads[p]) {
            let known =
                ctx.graph_inputs.iter().any(|g| g == n) || (0..p).any(|q| produced[q].contains(n));
            if !known {
                return Err(OnnxError::Unsupported {
                    model: ctx.path.clone(),
                    reason: format!(
                        "internal error: part {p} reads `{n}`, which no earlier part computes"
                    ),
                });
            }
        }
        let mut outputs: Vec<String> = Vec::new();
        for &i in &part_nodes[p] {
            for o in nodes[i].output.iter().filter(|o| !o.is_empty()) {
                let later = (p + 1..kinds.len())
                    .any(|q| reads[q].contains(&o.as_str()) || hook_reads[q].contains(&o.as_str()));
                if (later || ctx.graph_outputs.contains(o)) && !outputs.contains(o) {
                    outputs.push(o.clone());
                }
            }
        }
        io.push((reads[p].iter().map(|s| s.to_string()).collect(), outputs));
    }
    Ok(io)
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

trait CloneWithoutGraph {
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
