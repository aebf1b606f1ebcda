//! Splitting the GEGLU projection of each feed-forward in two.
//!
//! diffusers' `GEGLU` computes `hidden, gate = proj(x).chunk(2, dim=-1)` and returns
//! `hidden * gelu(gate)`. The export spells the chunk as two `Slice`s of the
//! `[B, N, 2F]` projection whose bounds come from its runtime `Shape`, so ONNX Runtime
//! copies both halves out of the largest activation in the UNet (2 × 9216 × 2560
//! floats per block at a 96×96 latent) and cannot fold the projection's bias into a
//! fused kernel. The pattern matched, with `W` `[C, 2F]` and `b` `[2F]` constants:
//!
//! ```text
//! p = Add(b, MatMul(x, W))        (either operand order)
//! hidden = Slice(p, 0, F, axes=[-1])   gate = Slice(p, F, 2F, axes=[-1])
//! ```
//!
//! where `F` and `2F` may be computed from `Shape(p)` (checked by evaluating the bounds
//! with the last dimension at `2F`). It becomes `hidden = Add(b[:F], MatMul(x, W[:, :F]))`
//! and the same for `gate` with the second halves; the weight halves are `Slice`s of
//! the constants, which ONNX Runtime folds when it loads the graph, so no second copy
//! of the weights is written. Each output element is the same dot product as before
//! over the same `C` terms, so the rewrite is exact up to the kernel's blocking.

use std::collections::HashSet;

use super::graph::{dtype, int64_values};
use super::pattern::{int64_constant_node, remove_dead_nodes, Mismatch, View};
use super::proto::{ModelProto, NodeProto, TensorProto};

/// One projection to split: node indices and the tensors the halves are built from.
struct Match {
    matmul: usize,
    add: usize,
    slices: [usize; 2],
    x: String,
    weight: String,
    bias: String,
    /// The bias as `Add`'s first operand (kept so the sums are the same expression).
    bias_first: bool,
    half: i64,
    /// The `hidden` and `gate` outputs, in that order.
    outputs: [String; 2],
}

/// Splits every GEGLU projection of `model`'s main graph; returns how many.
pub fn split_geglu(model: &mut ModelProto) -> usize {
    let graph = model.graph.mut_or_insert_default();
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let matches: Vec<Match> = {
        let view = View::new(&graph.node, &graph.initializer, &outputs);
        (0..graph.node.len())
            .filter(|&i| graph.node[i].op_type == "Add")
            .filter_map(|i| view.geglu(i).ok())
            .collect()
    };
    if matches.is_empty() {
        return 0;
    }
    let mut replaced: Vec<Option<Vec<NodeProto>>> = vec![None; graph.node.len()];
    let mut dropped = HashSet::new();
    for m in &matches {
        replaced[m.matmul] = Some(halves(&graph.node[m.matmul].name, m));
        dropped.extend([m.add, m.slices[0], m.slices[1]]);
    }
    let nodes = std::mem::take(&mut graph.node);
    for (i, node) in nodes.into_iter().enumerate() {
        match replaced[i].take() {
            Some(new) => graph.node.extend(new),
            None if dropped.contains(&i) => {}
            None => graph.node.push(node),
        }
    }
    remove_dead_nodes(graph);
    matches.len()
}

/// The nodes computing both halves, in place of the projection's `MatMul` (where `x`
/// is already computed and the constants are at hand). Names keep the `MatMul`'s
/// prefix, which is how the UNet cut finds a component's nodes.
fn halves(matmul_name: &str, m: &Match) -> Vec<NodeProto> {
    let prefix = matmul_name.rsplit_once('/').map_or(matmul_name, |(p, _)| p);
    let name = |what: &str| format!("{prefix}/geglu_{what}");
    let mut nodes = vec![
        int64_constant_node(&name("start"), 0),
        int64_constant_node(&name("half"), m.half),
        int64_constant_node(&name("end"), 2 * m.half),
        int64_constant_node(&name("columns"), 1),
        int64_constant_node(&name("rows"), 0),
    ];
    let ranges = [("hidden", "start", "half"), ("gate", "half", "end")];
    for ((what, from, to), out) in ranges.into_iter().zip(&m.outputs) {
        let (from, to) = (name(from), name(to));
        let weight = name(&format!("{what}_weight"));
        let bias = name(&format!("{what}_bias"));
        let product = name(&format!("{what}_MatMul"));
        let node = |op: &str, suffix: &str, input: Vec<String>, output: &str| NodeProto {
            name: name(&format!("{what}_{suffix}")),
            op_type: op.into(),
            input,
            output: vec![output.to_string()],
            ..Default::default()
        };
        let sum_inputs = if m.bias_first {
            vec![bias.clone(), product.clone()]
        } else {
            vec![product.clone(), bias.clone()]
        };
        nodes.extend([
            node(
                "Slice",
                "weight",
                vec![m.weight.clone(), from.clone(), to.clone(), name("columns")],
                &weight,
            ),
            node(
                "Slice",
                "bias",
                vec![m.bias.clone(), from, to, name("rows")],
                &bias,
            ),
            node(
                "MatMul",
                "MatMul",
                vec![m.x.clone(), weight.clone()],
                &product,
            ),
            node("Add", "Add", sum_inputs, out),
        ]);
    }
    nodes
}

/// A float constant's dimensions.
fn float_dims(t: &TensorProto) -> Option<&[i64]> {
    (t.data_type == dtype::FLOAT).then_some(t.dims.as_slice())
}

impl View<'_> {
    /// The GEGLU projection whose bias `Add` is node `add`, if it is the pattern.
    fn geglu(&self, add: usize) -> Result<Match, Mismatch> {
        let sum = &self.nodes[add];
        let p = sum.output.first().ok_or("an Add without output")?;
        let (mm, bias, bias_first) = match sum.input.as_slice() {
            [a, b] if self.made_by(b, "MatMul").is_ok() => (b, a, true),
            [a, b] if self.made_by(a, "MatMul").is_ok() => (a, b, false),
            _ => return Err("not a bias added to a MatMul".into()),
        };
        let matmul = self.producer_of(mm).ok_or("no MatMul")?;
        self.only_reader(mm, "projection")?;
        let (x, weight) = match self.nodes[matmul].input.as_slice() {
            [x, w] => (x, w),
            _ => return Err("a MatMul without two inputs".into()),
        };
        let w_dims = self
            .constant_tensor(weight)
            .and_then(float_dims)
            .ok_or("the weight is not a float constant")?;
        let b_dims = self
            .constant_tensor(bias)
            .and_then(float_dims)
            .ok_or("the bias is not a float constant")?;
        let &[_, width] = w_dims else {
            return Err("the weight is not a matrix".into());
        };
        if b_dims != [width] || width % 2 != 0 || width == 0 || self.is_graph_output(p) {
            return Err("not a projection to an even width".into());
        }
        let half = width / 2;
        // Readers: exactly the two halves' Slices, plus Shapes that size them.
        let mut hidden = None;
        let mut gate = None;
        for &r in self.readers(p) {
            let node = &self.nodes[r];
            match node.op_type.as_str() {
                "Shape" if node.attribute.is_empty() => {}
                "Slice" if node.input[0] == *p => match self.slice_bounds(node, p, width)? {
                    (0, e) if e == half && hidden.is_none() => hidden = Some(r),
                    (s, e) if s == half && e >= width && gate.is_none() => gate = Some(r),
                    other => return Err(format!("a Slice of {other:?}").into()),
                },
                other => return Err(format!("the projection is also read by {other}").into()),
            }
        }
        let (Some(hidden), Some(gate)) = (hidden, gate) else {
            return Err("the projection is not cut in two halves".into());
        };
        Ok(Match {
            matmul,
            add,
            slices: [hidden, gate],
            x: x.clone(),
            weight: weight.clone(),
            bias: bias.clone(),
            bias_first,
            half,
            outputs: [
                self.nodes[hidden].output[0].clone(),
                self.nodes[gate].output[0].clone(),
            ],
        })
    }

    /// `[start, end)` of a last-axis, unit-step `Slice` of `p`, whose last dimension is
    /// `width`.
    fn slice_bounds(&self, slice: &NodeProto, p: &str, width: i64) -> Result<(i64, i64), Mismatch> {
        let at = |k: usize| slice.input.get(k).filter(|s| !s.is_empty());
        let value = |k: usize| -> Result<i64, Mismatch> {
            let name = at(k).ok_or("a Slice without bounds")?;
            match self.scalar(name, p, width).as_deref() {
                Some(&[v]) => Ok(v),
                _ => Err(format!("the bound `{name}` is not known").into()),
            }
        };
        if self.int_constant(at(3).ok_or("a Slice without axes")?) != Some(vec![-1]) {
            return Err("not a slice of the last axis".into());
        }
        if let Some(steps) = at(4) {
            if self.int_constant(steps) != Some(vec![1]) {
                return Err("a Slice with steps".into());
            }
        }
        Ok((value(1)?, value(2)?))
    }

    /// The value of a one-element integer tensor: a constant, or integer arithmetic on
    /// the last entry of `Shape(p)`, taken as `width`.
    fn scalar(&self, name: &str, p: &str, width: i64) -> Option<Vec<i64>> {
        if let Some(v) = self.int_constant(name) {
            return (v.len() == 1).then_some(v);
        }
        let node = &self.nodes[self.producer_of(name)?];
        let arg = |k: usize| -> Option<i64> {
            match self.scalar(node.input.get(k)?, p, width)?.as_slice() {
                &[v] => Some(v),
                _ => None,
            }
        };
        let v = match node.op_type.as_str() {
            "Gather" => {
                let shape = self.made_by(&node.input[0], "Shape").ok()?;
                let index = self
                    .constant_tensor(&node.input[1])
                    .and_then(int64_values)?;
                (shape.input[0] == p && shape.attribute.is_empty() && index == [-1])
                    .then_some(width)?
            }
            "Unsqueeze" | "Squeeze" | "Identity" | "Cast" => arg(0)?,
            "Add" => arg(0)?.checked_add(arg(1)?)?,
            "Sub" => arg(0)?.checked_sub(arg(1)?)?,
            "Mul" => arg(0)?.checked_mul(arg(1)?)?,
            // Integer division of the non-negative sizes the exporter computes.
            "Div" => {
                let (a, b) = (arg(0)?, arg(1)?);
                (a >= 0 && b > 0).then(|| a / b)?
            }
            _ => return None,
        };
        Some(vec![v])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::graph::tensor_value;
    use crate::onnx::proto::GraphProto;

    fn node(op: &str, name: &str, i: &[&str], o: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: i.iter().map(|s| s.to_string()).collect(),
            output: o.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn float_init(name: &str, dims: &[i64]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: dtype::FLOAT,
            float_data: vec![0.5; dims.iter().product::<i64>() as usize],
            ..Default::default()
        }
    }

    fn int_init(name: &str, v: i64) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: vec![1],
            data_type: dtype::INT64,
            int64_data: vec![v],
            ..Default::default()
        }
    }

    /// The exporter's pattern for a [C=3, 2F=8] projection: bounds from `Shape(p)` as
    /// `torch.chunk` computes them, `(d + 1) / 2 * k`.
    fn exported() -> ModelProto {
        let nodes = vec![
            node("MatMul", "/ff/net.0/proj/MatMul", &["x", "W"], &["mm"]),
            node("Add", "/ff/net.0/proj/Add", &["b", "mm"], &["p"]),
            node("Shape", "/ff/net.0/Shape", &["p"], &["shape"]),
            node("Gather", "/ff/net.0/Gather", &["shape", "last"], &["d"]),
            node("Add", "/ff/net.0/Add", &["d", "one"], &["d1"]),
            node("Div", "/ff/net.0/Div", &["d1", "two"], &["h"]),
            node("Mul", "/ff/net.0/Mul", &["h", "one"], &["e0"]),
            node(
                "Slice",
                "/ff/net.0/Slice",
                &["p", "zero", "e0", "last"],
                &["hidden"],
            ),
            node("Mul", "/ff/net.0/Mul_1", &["h", "two"], &["e1"]),
            node(
                "Slice",
                "/ff/net.0/Slice_1",
                &["p", "e0", "e1", "last"],
                &["gate"],
            ),
            node("Mul", "/ff/net.0/Mul_4", &["hidden", "gate"], &["y"]),
        ];
        ModelProto {
            graph: Some(GraphProto {
                node: nodes,
                initializer: vec![
                    float_init("W", &[3, 8]),
                    float_init("b", &[8]),
                    int_init("last", -1),
                    int_init("zero", 0),
                    int_init("one", 1),
                    int_init("two", 2),
                ],
                input: vec![tensor_value("x", dtype::FLOAT, &["B", "N", "3"])],
                output: vec![tensor_value("y", dtype::FLOAT, &["B", "N", "4"])],
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_exported_chunk_becomes_two_projections() {
        let mut model = exported();
        assert_eq!(split_geglu(&mut model), 1);
        let graph = model.graph.as_ref().unwrap();
        let ops: Vec<&str> = graph
            .node
            .iter()
            .filter(|n| n.op_type != "Constant")
            .map(|n| n.op_type.as_str())
            .collect();
        assert_eq!(
            ops,
            ["Slice", "Slice", "MatMul", "Add", "Slice", "Slice", "MatMul", "Add", "Mul"]
        );
        let made = |out: &str| graph.node.iter().find(|n| n.output[0] == out).unwrap();
        let hidden = made("hidden");
        assert_eq!(hidden.op_type, "Add");
        assert!(hidden.name.starts_with("/ff/net.0/proj/"));
        let w = made(&made(&hidden.input[1]).input[1]);
        assert_eq!(w.input[0], "W");
        // bias first, as exported
        assert_eq!(made(&hidden.input[0]).input[0], "b");
        let gate_w = made(&made(&made("gate").input[1]).input[1]);
        let bound = |name: &str| int64_values(made(name).attribute[0].t.as_ref().unwrap());
        assert_eq!(bound(&gate_w.input[1]), Some(vec![4]));
        assert_eq!(bound(&gate_w.input[2]), Some(vec![8]));
        assert_eq!(bound(&gate_w.input[3]), Some(vec![1]));
        // the shape chain is gone
        assert!(!graph.node.iter().any(|n| n.op_type == "Shape"));
    }

    #[test]
    fn other_slices_are_left_alone() {
        // a third reader of the projection
        let mut model = exported();
        let graph = model.graph.as_mut().unwrap();
        graph.node.push(node("Relu", "r", &["p"], &["q"]));
        graph.output.push(tensor_value("q", dtype::FLOAT, &[]));
        assert_eq!(split_geglu(&mut model), 0);
        // uneven halves: the first slice ends at 3 of 8
        let mut model = exported();
        let graph = model.graph.as_mut().unwrap();
        graph.node[7].input[2] = "three".into();
        graph.initializer.push(int_init("three", 3));
        assert_eq!(split_geglu(&mut model), 0);
    }
}
