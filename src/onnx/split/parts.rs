//! Step 3 of a cut: assigning every node to a part (segments in the earliest place their
//! inputs allow, one part per component) and working out what each part reads and
//! passes on.

use std::collections::{HashMap, HashSet};

use super::super::graph::{self, node_inputs};
use super::super::proto::NodeProto;
use super::super::OnnxError;
use super::components::static_nodes;
use super::manifest::BlockPart;
use super::{Comp, Ctx, PartIo};

/// Which part each node belongs to. Returns the parts (index order = execution order,
/// empty segments dropped) and, per part, its node indices in topological order.
#[allow(clippy::type_complexity)]
pub(super) fn assign_parts(
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
pub(super) fn part_io(
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
