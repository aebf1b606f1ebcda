//! Step 2 of a cut: the tensors that cross a component's boundary. Shape values are
//! recomputed on the side that reads them (never passed across a cut, where they would
//! carry the merged token count); each block exposes the input of its `norm1`.

use std::collections::{HashMap, HashSet};

use super::super::graph::{self, node_inputs};
use super::super::proto::NodeProto;
use super::super::OnnxError;
use super::components::{external_inputs, is_shape_op, owned_by, static_nodes, OUTSIDE};
use super::manifest::BlockPart;
use super::{Comp, Ctx};

/// Nodes of component `k` that compute `t` from tensors outside the component, if all of
/// them are shape arithmetic; `None` otherwise.
pub(super) fn shape_closure_within(
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
pub(super) fn duplicate(
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
pub(super) fn cut_outputs(
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
pub(super) fn cut_inputs(
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

/// Why a value a component reads from outside cannot be recomputed inside it (the
/// message completes "it reads `t` from outside, which ...").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum NotShapeValue {
    #[error("depends on the values of graph input `{0}`")]
    GraphInput(String),
    #[error("depends on the values of the component's input")]
    ComponentInput,
    #[error("depends on `{0}`, which nothing computes")]
    Uncomputed(String),
    #[error("depends on the component's own result")]
    OwnResult,
    #[error("is computed by {op} node `{node}`, not a shape computation")]
    NotShapeOp { op: String, node: String },
    #[error("is the shape of `{0}`, not of the component's input, so its token count is unknown after merging")]
    ShapeOfOther(String),
}

/// The nodes outside component `k` that compute shape value `t`, stopping at the
/// component's own input (whose shape is then taken inside, after merging),
/// initializers and graph inputs without tokens. Errors say why `t` is not such a value.
pub(super) fn shape_closure_outside(
    ctx: &Ctx,
    nodes: &[NodeProto],
    owner: &[Option<usize>],
    producer: &HashMap<&str, usize>,
    comp: &Comp,
    k: usize,
    t: &str,
) -> Result<Vec<usize>, NotShapeValue> {
    let mut found = Vec::new();
    let mut stack: Vec<&str> = vec![t];
    let mut seen = HashSet::new();
    while let Some(name) = stack.pop() {
        if ctx.initializers.contains(name) || ctx.token_free.contains(name) {
            continue;
        }
        if ctx.graph_inputs.iter().any(|g| g == name) {
            return Err(NotShapeValue::GraphInput(name.to_string()));
        }
        if name == comp.activation {
            return Err(NotShapeValue::ComponentInput);
        }
        let Some(&p) = producer.get(name) else {
            return Err(NotShapeValue::Uncomputed(name.to_string()));
        };
        if !seen.insert(p) {
            continue;
        }
        let node = &nodes[p];
        if owner[p] == Some(k) {
            return Err(NotShapeValue::OwnResult);
        }
        if !is_shape_op(node) {
            return Err(NotShapeValue::NotShapeOp {
                op: node.op_type.clone(),
                node: node.name.clone(),
            });
        }
        found.push(p);
        if matches!(node.op_type.as_str(), "Shape" | "Size") {
            let x = node.input.first().map(String::as_str).unwrap_or("");
            let ok =
                x == comp.activation || ctx.token_free.contains(x) || ctx.initializers.contains(x);
            if !ok {
                return Err(NotShapeValue::ShapeOfOther(x.to_string()));
            }
            continue;
        }
        stack.extend(node_inputs(node));
    }
    found.sort_unstable();
    Ok(found)
}

/// For each block with a cut component: the tensor entering its `norm1`.
pub(super) fn block_inputs(
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
