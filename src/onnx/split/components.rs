//! Step 1 of a cut: finding each component's nodes, its activation input and its output,
//! and which nodes outside components compute from constants only.

use std::collections::HashSet;

use super::super::graph::{self, node_inputs};
use super::super::proto::NodeProto;
use super::super::unet::{blocks_of_nodes, ComponentId};
use super::super::OnnxError;
use super::{Comp, Ctx};

/// Operators allowed in a shape computation that is recomputed across a cut.
pub(super) const SHAPE_OPS: &[&str] = &[
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

pub(super) fn is_shape_op(node: &NodeProto) -> bool {
    (node.domain.is_empty() || node.domain == "ai.onnx")
        && SHAPE_OPS.contains(&node.op_type.as_str())
}

/// Which nodes compute from constants only (initializers, `Constant`s, and nodes of
/// both, like the `Identity` an exporter uses to share one weight): outside
/// components they are copied into every part that reads them.
pub(super) fn static_nodes(nodes: &[NodeProto], initializers: &HashSet<String>) -> Vec<bool> {
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

/// Drops copies made outside components that nothing reads (every reader recomputed
/// the value inside itself).
pub(super) fn remove_unused_copies(
    ctx: &Ctx,
    nodes: &mut Vec<NodeProto>,
    owner: &mut Vec<Option<usize>>,
) {
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

pub(super) const OUTSIDE: &str = "/tomex_outside";

pub(super) fn find_components(
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

pub(super) fn owned_by(owner: &[Option<usize>], k: usize) -> impl Iterator<Item = usize> + '_ {
    owner
        .iter()
        .enumerate()
        .filter(move |(_, o)| **o == Some(k))
        .map(|(i, _)| i)
}

/// Tensors read by component `k`'s nodes that none of its nodes compute, in order.
pub(super) fn external_inputs(
    nodes: &[NodeProto],
    owner: &[Option<usize>],
    k: usize,
) -> Vec<String> {
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
pub(super) fn find_activation(
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
