//! Read-only lookups for the graph rewrites (`attention`, `geglu`): who makes and who
//! reads a tensor, constants behind names, and the clean-up after a rewrite.

use std::collections::{HashMap, HashSet};

use super::graph::{self, dtype, node_inputs};
use super::proto::{AttributeProto, GraphProto, NodeProto, OperatorSetIdProto, TensorProto};

/// ONNX Runtime's contrib operator domain.
pub const MS_DOMAIN: &str = "com.microsoft";

/// Why a subgraph is not the pattern a rewrite looks for: the rewrite leaves it as it
/// is and reports this as a note, so it is a reason, never a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(super) struct Mismatch(pub(super) String);

impl From<String> for Mismatch {
    fn from(reason: String) -> Mismatch {
        Mismatch(reason)
    }
}

impl From<&str> for Mismatch {
    fn from(reason: &str) -> Mismatch {
        Mismatch(reason.to_string())
    }
}

/// Lookups over one graph's nodes for matching.
pub(super) struct View<'g> {
    pub(super) nodes: &'g [NodeProto],
    producer: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Vec<usize>>,
    initializers: HashMap<&'g str, &'g TensorProto>,
    outputs: &'g HashSet<String>,
}

impl<'g> View<'g> {
    pub(super) fn new(
        nodes: &'g [NodeProto],
        initializers: &'g [TensorProto],
        outputs: &'g HashSet<String>,
    ) -> View<'g> {
        View {
            nodes,
            producer: graph::producers(nodes),
            consumers: graph::consumers(nodes),
            initializers: initializers.iter().map(|t| (t.name.as_str(), t)).collect(),
            outputs,
        }
    }

    /// The node computing `tensor`, if it is an `op` of the standard domain.
    pub(super) fn made_by(&self, tensor: &str, op: &str) -> Result<&'g NodeProto, Mismatch> {
        let node = self
            .producer
            .get(tensor)
            .map(|&i| &self.nodes[i])
            .ok_or_else(|| format!("`{tensor}` is not computed by a node"))?;
        if node.op_type == op && is_default_domain(node) {
            Ok(node)
        } else {
            Err(format!(
                "`{tensor}` comes from {} `{}`, not {op}",
                node.op_type, node.name
            )
            .into())
        }
    }

    /// Index of the node computing `tensor`.
    pub(super) fn producer_of(&self, tensor: &str) -> Option<usize> {
        self.producer.get(tensor).copied()
    }

    /// The nodes reading `tensor`.
    pub(super) fn readers(&self, tensor: &str) -> &[usize] {
        self.consumers.get(tensor).map_or(&[], Vec::as_slice)
    }

    pub(super) fn is_graph_output(&self, tensor: &str) -> bool {
        self.outputs.contains(tensor)
    }

    /// The one node reading `tensor` (which must not be a graph output); `what` names
    /// the pattern for the message.
    pub(super) fn only_reader(&self, tensor: &str, what: &str) -> Result<usize, Mismatch> {
        match self.readers(tensor) {
            &[i] if !self.is_graph_output(tensor) => Ok(i),
            _ => Err(format!("`{tensor}` is read by more than the {what}").into()),
        }
    }

    /// The value of an initializer or a `Constant`'s tensor.
    pub(super) fn constant_tensor(&self, name: &str) -> Option<&'g TensorProto> {
        if let Some(t) = self.initializers.get(name) {
            return Some(t);
        }
        let node = self.made_by(name, "Constant").ok()?;
        node.attribute
            .iter()
            .find(|a| a.name == "value")
            .and_then(|a| a.t.as_ref())
    }

    pub(super) fn int_constant(&self, name: &str) -> Option<Vec<i64>> {
        if let Ok(node) = self.made_by(name, "Constant") {
            if let Some(a) = node.attribute.iter().find(|a| a.name == "value_ints") {
                return Some(a.ints.clone());
            }
            if let Some(a) = node.attribute.iter().find(|a| a.name == "value_int") {
                return Some(vec![a.i]);
            }
        }
        graph::int64_values(self.constant_tensor(name)?)
    }

    pub(super) fn float_constant(&self, name: &str) -> Option<f32> {
        if let Ok(node) = self.made_by(name, "Constant") {
            if let Some(a) = node.attribute.iter().find(|a| a.name == "value_float") {
                return Some(a.f);
            }
        }
        let t = self.constant_tensor(name)?;
        if t.data_type != dtype::FLOAT || t.dims.iter().product::<i64>() != 1 {
            return None;
        }
        match (t.float_data.as_slice(), t.raw_data.as_slice()) {
            (&[v], _) => Some(v),
            (_, raw) if raw.len() == 4 => Some(f32::from_le_bytes(raw.try_into().ok()?)),
            _ => None,
        }
    }

    /// The tensor behind a chain of `Cast`s.
    pub(super) fn through_casts(&self, mut tensor: &'g str) -> &'g str {
        while let Ok(c) = self.made_by(tensor, "Cast") {
            tensor = &c.input[0];
        }
        tensor
    }
}

/// A `Constant` node named `name` whose output (of the same name) is the int64 `[value]`.
pub(super) fn int64_constant_node(name: &str, value: i64) -> NodeProto {
    NodeProto {
        name: name.into(),
        op_type: "Constant".into(),
        output: vec![name.into()],
        attribute: vec![AttributeProto {
            name: "value".into(),
            type_: super::proto::attribute_proto::AttributeType::TENSOR.into(),
            t: Some(TensorProto {
                dims: vec![1],
                data_type: dtype::INT64,
                int64_data: vec![value],
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(super) fn is_default_domain(n: &NodeProto) -> bool {
    n.domain.is_empty() || n.domain == "ai.onnx"
}

/// The standard domain's opset version.
pub(super) fn default_opset(model_opsets: &[OperatorSetIdProto]) -> i64 {
    model_opsets
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version)
}

pub(super) fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

pub(super) fn ints_attr(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

/// Removes nodes none of whose outputs is read (by a node or as a graph output), until
/// none is left (a replaced pattern's shape chains go this way), then the value infos
/// of tensors no node makes any more.
pub(super) fn remove_dead_nodes(graph: &mut GraphProto) {
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let nodes = &mut graph.node;
    loop {
        let read: HashSet<String> = nodes
            .iter()
            .flat_map(|n| node_inputs(n).into_iter().map(str::to_string))
            .chain(outputs.iter().cloned())
            .collect();
        let before = nodes.len();
        nodes.retain(|n| n.output.iter().any(|o| !o.is_empty() && read.contains(o)));
        if nodes.len() == before {
            break;
        }
    }
    let live: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().cloned())
        .collect();
    graph.value_info.retain(|v| live.contains(&v.name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_chains_are_removed_and_live_ones_kept() {
        let node = |op: &str, i: &[&str], o: &[&str]| NodeProto {
            op_type: op.into(),
            input: i.iter().map(|s| s.to_string()).collect(),
            output: o.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let mut graph = GraphProto {
            node: vec![
                node("Shape", &["x"], &["s"]),
                node("Sqrt", &["s"], &["r"]), // read by nothing: goes, then Shape goes
                node("Relu", &["x"], &["y"]),
                node("Neg", &["y"], &["out"]),
            ],
            output: vec![graph::tensor_value("out", dtype::FLOAT, &[])],
            ..Default::default()
        };
        remove_dead_nodes(&mut graph);
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Relu", "Neg"]);
    }
}
