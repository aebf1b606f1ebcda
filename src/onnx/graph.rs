//! Small graph utilities over the protobuf messages: who produces and consumes each
//! tensor, a topological order, and the element type of every tensor.

use std::collections::{HashMap, HashSet};

use super::proto::{
    attribute_proto::AttributeType, GraphProto, NodeProto, TensorProto, TypeProto, ValueInfoProto,
};

/// ONNX `TensorProto.DataType` codes used here.
pub mod dtype {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const STRING: i32 = 8;
    pub const BOOL: i32 = 9;
}

/// Every tensor a node reads: its inputs, plus names its subgraphs (If/Loop/Scan bodies)
/// take from the enclosing scope.
pub fn node_inputs(node: &NodeProto) -> Vec<&str> {
    let mut names: Vec<&str> = node
        .input
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    for attr in &node.attribute {
        for g in attr.g.as_ref().into_iter().chain(attr.graphs.iter()) {
            outer_references(g, &mut names);
        }
    }
    names
}

fn outer_references<'g>(graph: &'g GraphProto, names: &mut Vec<&'g str>) {
    let mut defined: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    defined.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    defined.extend(
        graph
            .sparse_initializer
            .iter()
            .map(|s| s.values.name.as_str()),
    );
    for node in &graph.node {
        defined.extend(node.output.iter().map(String::as_str));
    }
    for node in &graph.node {
        for name in node_inputs(node) {
            if !defined.contains(name) {
                names.push(name);
            }
        }
    }
}

/// Producer (node index) of every node output.
pub fn producers(nodes: &[NodeProto]) -> HashMap<&str, usize> {
    let mut map = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            map.insert(out.as_str(), i);
        }
    }
    map
}

/// Consumers (node indices) of every tensor.
pub fn consumers(nodes: &[NodeProto]) -> HashMap<&str, Vec<usize>> {
    let mut map: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for name in node_inputs(node) {
            let list = map.entry(name).or_default();
            if list.last() != Some(&i) {
                list.push(i);
            }
        }
    }
    map
}

/// A topological order of `nodes`, stable (the given order wherever it is already
/// valid); `None` if the graph has a cycle.
pub fn topological_order(nodes: &[NodeProto]) -> Option<Vec<usize>> {
    let producer = producers(nodes);
    let mut pending: Vec<usize> = vec![0; nodes.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        let mut deps: Vec<usize> = node_inputs(node)
            .into_iter()
            .filter_map(|n| producer.get(n).copied())
            .filter(|&p| p != i)
            .collect();
        deps.sort_unstable();
        deps.dedup();
        pending[i] = deps.len();
        for p in deps {
            users[p].push(i);
        }
    }
    // A min-heap on the original index keeps the order stable.
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..nodes.len())
        .filter(|&i| pending[i] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &u in &users[i] {
            pending[u] -= 1;
            if pending[u] == 0 {
                ready.push(std::cmp::Reverse(u));
            }
        }
    }
    (order.len() == nodes.len()).then_some(order)
}

/// A declared tensor value (graph input, output or `value_info`) with symbolic dimensions.
pub(crate) fn tensor_value(name: &str, elem: i32, dims: &[&str]) -> ValueInfoProto {
    use super::proto::tensor_shape_proto::{dimension, Dimension};
    use super::proto::type_proto::{Tensor, Value};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(dimension::Value::DimParam(d.to_string())),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto {
            value: Some(Value::TensorType(Tensor {
                elem_type: elem,
                shape: Some(super::proto::TensorShapeProto {
                    dim,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// The element type of a declared value (`ValueInfoProto.type`), if it is a tensor.
pub fn tensor_elem_type(t: &TypeProto) -> Option<i32> {
    use super::proto::type_proto::Value;
    match &t.value {
        Some(Value::TensorType(tt)) => Some(tt.elem_type),
        Some(Value::SparseTensorType(tt)) => Some(tt.elem_type),
        _ => None,
    }
    .filter(|&e| e != 0)
}

/// Element types of every tensor of `graph` whose type can be told: declared values
/// (inputs, outputs, `value_info`), initializers, and node outputs inferred forward with
/// the rules of the standard operators (most ops keep their first input's type).
pub fn elem_types(graph: &GraphProto, nodes: &[NodeProto]) -> HashMap<String, i32> {
    let mut types: HashMap<String, i32> = HashMap::new();
    for v in graph
        .input
        .iter()
        .chain(graph.output.iter())
        .chain(graph.value_info.iter())
    {
        if let Some(t) = v.type_.as_ref().and_then(tensor_elem_type) {
            types.insert(v.name.clone(), t);
        }
    }
    for t in &graph.initializer {
        types.insert(t.name.clone(), t.data_type);
    }
    for s in &graph.sparse_initializer {
        types.insert(s.values.name.clone(), s.values.data_type);
    }
    let order = topological_order(nodes).unwrap_or_else(|| (0..nodes.len()).collect());
    for i in order {
        let node = &nodes[i];
        let outs = node_output_types(node, &types);
        for (name, t) in node.output.iter().zip(outs) {
            if let (false, Some(t)) = (name.is_empty(), t) {
                types.entry(name.clone()).or_insert(t);
            }
        }
    }
    types
}

/// Ranks of the tensors whose rank follows from the graph alone (initializers,
/// constants, and shape arithmetic on them); used to tell a scalar from a tensor of
/// unknown rank, which ONNX Runtime reports alike.
pub fn ranks(graph: &GraphProto, nodes: &[NodeProto]) -> HashMap<String, usize> {
    let mut ranks: HashMap<String, usize> = HashMap::new();
    let mut values: HashMap<String, Vec<i64>> = HashMap::new();
    for t in &graph.initializer {
        ranks.insert(t.name.clone(), t.dims.len());
        if let Some(v) = int64_values(t) {
            values.insert(t.name.clone(), v);
        }
    }
    for v in graph.input.iter().chain(graph.value_info.iter()) {
        use super::proto::type_proto::Value;
        if let Some(Value::TensorType(tt)) = v.type_.as_ref().and_then(|t| t.value.as_ref()) {
            if let Some(shape) = tt.shape.as_ref() {
                ranks.insert(v.name.clone(), shape.dim.len());
            }
        }
    }
    let order = topological_order(nodes).unwrap_or_else(|| (0..nodes.len()).collect());
    for i in order {
        let node = &nodes[i];
        let standard = node.domain.is_empty() || node.domain == "ai.onnx";
        let Some(out) = node.output.first().filter(|o| !o.is_empty()) else {
            continue;
        };
        let rank = |k: usize| node.input.get(k).and_then(|n| ranks.get(n)).copied();
        let axes = || {
            attr(node, "axes")
                .map(|a| a.ints.len())
                .or_else(|| node.input.get(1).and_then(|n| values.get(n)).map(Vec::len))
        };
        let r = if !standard {
            None
        } else {
            match node.op_type.as_str() {
                "Constant" => {
                    let a = node.attribute.first();
                    match a.map(|a| a.name.as_str()) {
                        Some("value") => a.and_then(|a| a.t.as_ref()).map(|t| {
                            if let Some(v) = int64_values(t) {
                                values.insert(out.clone(), v);
                            }
                            t.dims.len()
                        }),
                        Some("value_float" | "value_int" | "value_string") => Some(0),
                        Some("value_floats" | "value_ints" | "value_strings") => Some(1),
                        _ => None,
                    }
                }
                "Shape" | "Range" | "NonZero" => Some(1),
                "Size" => Some(0),
                "Gather" => rank(0).zip(rank(1)).map(|(d, i)| (d + i).saturating_sub(1)),
                "Unsqueeze" => rank(0).zip(axes()).map(|(r, a)| r + a),
                "Squeeze" => rank(0).zip(axes()).map(|(r, a)| r.saturating_sub(a)),
                "Cast" | "Identity" | "Neg" | "Abs" | "Floor" | "Ceil" | "Sqrt" | "Not"
                | "Slice" | "Concat" | "Relu" | "Sigmoid" | "Softmax" | "Transpose"
                | "LayerNormalization" | "Erf" | "Exp" | "Log" | "Tanh" | "Sin" | "Cos" => rank(0),
                "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Mod" | "Min" | "Max" | "Equal"
                | "Less" | "Greater" | "And" | "Or" | "Where" => {
                    let rs: Option<Vec<usize>> = node_inputs(node)
                        .into_iter()
                        .map(|n| ranks.get(n).copied())
                        .collect();
                    rs.and_then(|rs| rs.into_iter().max())
                }
                _ => None,
            }
        };
        if let Some(r) = r {
            ranks.insert(out.clone(), r);
        }
    }
    ranks
}

/// The values of an INT64 scalar or vector stored in the model itself (`raw_data` or
/// `int64_data`); `None` for other tensors and for data stored outside the model.
pub(crate) fn int64_values(t: &TensorProto) -> Option<Vec<i64>> {
    if t.data_type != dtype::INT64 || t.dims.len() > 1 {
        return None;
    }
    let v: Vec<i64> = if t.raw_data.is_empty() {
        t.int64_data.clone()
    } else {
        t.raw_data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    };
    (v.len() as i64 == t.dims.iter().product::<i64>()).then_some(v)
}

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n super::proto::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name)
        .filter(|a| a.type_.enum_value() == Ok(AttributeType::INT))
        .map(|a| a.i)
}

/// Output element types of one node, given its input types.
fn node_output_types(node: &NodeProto, types: &HashMap<String, i32>) -> Vec<Option<i32>> {
    let input = |k: usize| {
        node.input
            .get(k)
            .filter(|n| !n.is_empty())
            .and_then(|n| types.get(n).copied())
    };
    let first = node
        .input
        .iter()
        .filter(|n| !n.is_empty())
        .find_map(|n| types.get(n).copied());
    let n = node.output.len();
    let all = |t: Option<i32>| vec![t; n];
    let standard = node.domain.is_empty() || node.domain == "ai.onnx";
    if !standard {
        return all(first);
    }
    match node.op_type.as_str() {
        "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => all(Some(dtype::INT64)),
        "Cast" => all(attr_int(node, "to").map(|t| t as i32)),
        "CastLike" => all(input(1)),
        "Constant" => all(constant_type(node)),
        "ConstantOfShape" => all(Some(
            attr(node, "value")
                .and_then(|a| a.t.as_ref())
                .map_or(dtype::FLOAT, |t| t.data_type),
        )),
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor"
        | "Not" | "IsNaN" | "IsInf" => all(Some(dtype::BOOL)),
        "Where" => all(input(1)),
        "TopK" => vec![first, Some(dtype::INT64)],
        "Unique" => {
            let mut v = all(Some(dtype::INT64));
            if let Some(t) = v.first_mut() {
                *t = first;
            }
            v
        }
        "Dropout" => {
            let mut v = vec![first; n];
            if n > 1 {
                v[1] = Some(dtype::BOOL);
            }
            v
        }
        "MaxPool" => {
            let mut v = vec![first; n];
            if n > 1 {
                v[1] = Some(dtype::INT64);
            }
            v
        }
        "LayerNormalization" => {
            let stash = attr_int(node, "stash_type").map_or(dtype::FLOAT, |t| t as i32);
            let mut v = vec![Some(stash); n];
            if let Some(t) = v.first_mut() {
                *t = first;
            }
            v
        }
        "RandomNormal" | "RandomUniform" | "EyeLike" => all(Some(
            attr_int(node, "dtype").map_or(dtype::FLOAT, |t| t as i32),
        )),
        "RandomNormalLike" | "RandomUniformLike" => {
            all(attr_int(node, "dtype").map(|t| t as i32).or(first))
        }
        "Multinomial" => all(Some(
            attr_int(node, "dtype").map_or(dtype::INT32, |t| t as i32),
        )),
        "QuantizeLinear" => all(input(2).or(Some(dtype::UINT8))),
        "DequantizeLinear" => all(input(1)),
        "DynamicQuantizeLinear" => vec![Some(dtype::UINT8), Some(dtype::FLOAT), Some(dtype::UINT8)],
        "MatMulInteger" | "ConvInteger" => all(Some(dtype::INT32)),
        "StringNormalizer" | "RegexFullMatch" => all(Some(dtype::STRING)),
        _ => all(first),
    }
}

fn constant_type(node: &NodeProto) -> Option<i32> {
    let a = node.attribute.first()?;
    match a.name.as_str() {
        "value" => a.t.as_ref().map(|t| t.data_type),
        "sparse_value" => a.sparse_tensor.as_ref().map(|s| s.values.data_type),
        "value_float" | "value_floats" => Some(dtype::FLOAT),
        "value_int" | "value_ints" => Some(dtype::INT64),
        "value_string" | "value_strings" => Some(dtype::STRING),
        _ => match a.type_.enum_value_or_default() {
            AttributeType::TENSOR => a.t.as_ref().map(|t| t.data_type),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn topological_order_is_stable_and_fixes_misplaced_nodes() {
        let nodes = vec![
            node("Relu", &["b"], &["c"]),
            node("Relu", &["x"], &["a"]),
            node("Relu", &["a"], &["b"]),
            node("Relu", &["x"], &["d"]),
        ];
        assert_eq!(topological_order(&nodes), Some(vec![1, 2, 0, 3]));
        let cycle = vec![node("Relu", &["b"], &["a"]), node("Relu", &["a"], &["b"])];
        assert_eq!(topological_order(&cycle), None);
    }

    #[test]
    fn element_types_follow_operator_rules() {
        let mut graph = GraphProto::default();
        let mut t = TypeProto::default();
        t.set_tensor_type(super::super::proto::type_proto::Tensor {
            elem_type: dtype::FLOAT,
            ..Default::default()
        });
        let x = super::super::proto::ValueInfoProto {
            name: "x".into(),
            type_: Some(t).into(),
            ..Default::default()
        };
        graph.input.push(x);
        let mut cast = node("Cast", &["s"], &["c"]);
        cast.attribute.push(super::super::proto::AttributeProto {
            name: "to".into(),
            type_: AttributeType::INT.into(),
            i: dtype::INT32 as i64,
            ..Default::default()
        });
        let nodes = vec![
            node("Shape", &["x"], &["s"]),
            cast,
            node("Mul", &["x", "x"], &["m"]),
            node("Equal", &["s", "s"], &["e"]),
            node("Where", &["e", "m", "m"], &["w"]),
        ];
        let types = elem_types(&graph, &nodes);
        assert_eq!(types["s"], dtype::INT64);
        assert_eq!(types["c"], dtype::INT32);
        assert_eq!(types["m"], dtype::FLOAT);
        assert_eq!(types["e"], dtype::BOOL);
        assert_eq!(types["w"], dtype::FLOAT);
    }
}
