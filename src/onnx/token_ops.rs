//! ToMe's token operations as ONNX graphs, for executing them where the UNet runs
//! (the device-resident path: on CUDA the tensors need not visit the host between
//! the parts). Three graphs, opset 17, the same operations as [`crate::tome`]:
//!
//! * [`matching_graph`]: `x` [B, N, C], `a_idx` [Ns], `b_idx` [Nd], `r` [1] →
//!   `unm_idx` [B, Ns − r], `src_idx` [B, r], `dst_idx` [B, r]. Rows normalised as
//!   the host does (sum of squares and square root in float64, then a float32
//!   division); scores `a · bᵀ` (`MatMul`); best dst per src (`ReduceMax`,
//!   `ArgMax`: the first of ties, as torch); the edge order by `TopK` over all srcs.
//! * [`merge_graph`]: `x`, the partition and the three index sets →
//!   `cat[unmerged src, mean(dst and its srcs)]` [B, N − r, C], the mean as a
//!   `ScatterElements` add (in edge order, as the host sums) over a count.
//! * [`unmerge_graph`]: the component output [B, N − r, C] → [B, N, C], every src
//!   taking its dst's row (`GatherElements`, `ScatterElements`).
//!
//! Where they can differ from the host (and from tomesd): the scores come from
//! another sgemm (about 1e-7), and `TopK` orders srcs with equal best scores by
//! index where torch's unstable sort may not, so only near-ties can choose other
//! tokens. Merge and unmerge on the same indices are exact.

use super::graph;
use super::proto::attribute_proto::AttributeType;
use super::proto::tensor_proto::DataType;
use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    ValueInfoProto,
};

const OPSET: i64 = 17;
/// ONNX IR version 8 (ONNX 1.10+), which every ONNX Runtime since 1.10 reads.
const IR_VERSION: i64 = 8;

/// A graph under construction: nodes in order, constants as initializers.
struct Builder {
    /// The default domain's opset the graph is written for.
    opset: i64,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    count: usize,
}

impl Builder {
    fn new(opset: i64) -> Builder {
        Builder {
            opset,
            nodes: Vec::new(),
            initializers: Vec::new(),
            count: 0,
        }
    }

    /// Adds `op` reading `inputs`; returns its first output's name.
    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op_n(op, inputs, attrs, 1).remove(0)
    }

    fn op_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        self.count += 1;
        let name = format!("{op}_{}", self.count);
        let outs: Vec<String> = (0..outputs).map(|k| format!("{name}_out{k}")).collect();
        self.nodes.push(NodeProto {
            name,
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outs.clone(),
            attribute: attrs,
            ..Default::default()
        });
        outs
    }

    /// An int64 vector constant.
    fn ints(&mut self, values: &[i64]) -> String {
        self.count += 1;
        let name = format!("const_{}", self.count);
        self.initializers.push(TensorProto {
            name: name.clone(),
            data_type: DataType::INT64 as i32,
            dims: vec![values.len() as i64],
            int64_data: values.to_vec(),
            ..Default::default()
        });
        name
    }

    /// `idx` [B, k] → [B, k, C] (each index repeated over the channels of `c`, a
    /// one-element shape vector), as `GatherElements`/`ScatterElements` want.
    fn over_channels(&mut self, idx: &str, c: &str) -> String {
        let axis2 = self.ints(&[2]);
        let unsqueezed = self.op("Unsqueeze", &[idx, &axis2], vec![]);
        let idx_shape = self.op("Shape", &[idx], vec![]);
        let shape = self.op("Concat", &[&idx_shape, c], vec![int("axis", 0)]);
        self.op("Expand", &[&unsqueezed, &shape], vec![])
    }

    /// `Shape(x)[start..end]`.
    fn dims(&mut self, x: &str, start: i64, end: i64) -> String {
        let shape = self.op("Shape", &[x], vec![]);
        let (s, e) = (self.ints(&[start]), self.ints(&[end]));
        self.op("Slice", &[&shape, &s, &e], vec![])
    }

    fn finish(
        self,
        name: &str,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
    ) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "tomex".into(),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
                ..Default::default()
            }],
            graph: Some(GraphProto {
                name: name.into(),
                node: self.nodes,
                initializer: self.initializers,
                input: inputs,
                output: outputs,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INT.into(),
        i: v,
        ..Default::default()
    }
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INTS.into(),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::STRING.into(),
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn scalar_tensor(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::TENSOR.into(),
        t: Some(TensorProto {
            data_type: DataType::FLOAT as i32,
            dims: vec![1],
            float_data: vec![value],
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// A declared graph input or output: element type and named (symbolic) dims.
fn value(name: &str, elem: DataType, dims: &[&str]) -> ValueInfoProto {
    graph::tensor_value(name, elem as i32, dims)
}

fn partition_inputs() -> Vec<ValueInfoProto> {
    vec![
        value("a_idx", DataType::INT64, &["Ns"]),
        value("b_idx", DataType::INT64, &["Nd"]),
    ]
}

fn index_inputs() -> Vec<ValueInfoProto> {
    vec![
        value("unm_idx", DataType::INT64, &["B", "Nu"]),
        value("src_idx", DataType::INT64, &["B", "R"]),
        value("dst_idx", DataType::INT64, &["B", "R"]),
    ]
}

/// The matching: block input and partition in, the three index sets out.
pub fn matching_graph() -> ModelProto {
    matching_graph_at(OPSET)
}

/// [`matching_graph`] for a model of default-domain opset `opset` (17 or later).
pub fn matching_graph_at(opset: i64) -> ModelProto {
    let mut g = Builder::new(opset);
    // Row norms as the host computes them: squares summed in f64, sqrt, to f32.
    let x64 = g.op("Cast", &["x"], vec![int("to", DataType::DOUBLE as i64)]);
    let sq = g.op("Mul", &[&x64, &x64], vec![]);
    let last = g.ints(&[-1]);
    let sum = g.op("ReduceSum", &[&sq, &last], vec![int("keepdims", 1)]);
    let norm64 = g.op("Sqrt", &[&sum], vec![]);
    let norm = g.op("Cast", &[&norm64], vec![int("to", DataType::FLOAT as i64)]);
    let xn = g.op("Div", &["x", &norm], vec![]);
    let a = g.op("Gather", &[&xn, "a_idx"], vec![int("axis", 1)]);
    let b = g.op("Gather", &[&xn, "b_idx"], vec![int("axis", 1)]);
    let bt = g.op("Transpose", &[&b], vec![ints_attr("perm", &[0, 2, 1])]);
    let scores = g.op("MatMul", &[&a, &bt], vec![]);
    // Opset 18 moved ReduceMax's axes from an attribute to an input.
    let node_max = if opset >= 18 {
        g.op("ReduceMax", &[&scores, &last], vec![int("keepdims", 0)])
    } else {
        g.op(
            "ReduceMax",
            &[&scores],
            vec![ints_attr("axes", &[-1]), int("keepdims", 0)],
        )
    };
    let node_idx = g.op(
        "ArgMax",
        &[&scores],
        vec![int("axis", -1), int("keepdims", 0)],
    );
    let ns = g.op("Shape", &["a_idx"], vec![]);
    let edge = g.op_n(
        "TopK",
        &[&node_max, &ns],
        vec![int("axis", -1), int("largest", 1), int("sorted", 1)],
        2,
    );
    let (zero, one, end) = (g.ints(&[0]), g.ints(&[1]), g.ints(&[i64::MAX]));
    let unm = g.op("Slice", &[&edge[1], "r", &end, &one], vec![]);
    let src = g.op("Slice", &[&edge[1], &zero, "r", &one], vec![]);
    let dst = g.op("GatherElements", &[&node_idx, &src], vec![int("axis", 1)]);
    for (from, to) in [(&unm, "unm_idx"), (&src, "src_idx"), (&dst, "dst_idx")] {
        g.op_n("Identity", &[from], vec![], 1);
        g.nodes.last_mut().expect("just added").output[0] = to.into();
    }
    let mut inputs = vec![value("x", DataType::FLOAT, &["B", "N", "C"])];
    inputs.extend(partition_inputs());
    inputs.push(value("r", DataType::INT64, &["one"]));
    g.finish("tome_matching", inputs, index_inputs())
}

/// The merge: `x` [B, N, C] → [B, N − r, C].
pub fn merge_graph() -> ModelProto {
    merge_graph_at(OPSET)
}

/// [`merge_graph`] for a model of default-domain opset `opset` (17 or later).
pub fn merge_graph_at(opset: i64) -> ModelProto {
    let mut g = Builder::new(opset);
    let c = g.dims("x", 2, 3);
    let src = g.op("Gather", &["x", "a_idx"], vec![int("axis", 1)]);
    let dst = g.op("Gather", &["x", "b_idx"], vec![int("axis", 1)]);
    let unm_c = g.over_channels("unm_idx", &c);
    let src_c = g.over_channels("src_idx", &c);
    let dst_c = g.over_channels("dst_idx", &c);
    let unm = g.op("GatherElements", &[&src, &unm_c], vec![int("axis", 1)]);
    let srcs = g.op("GatherElements", &[&src, &src_c], vec![int("axis", 1)]);
    let sums = g.op(
        "ScatterElements",
        &[&dst, &dst_c, &srcs],
        vec![int("axis", 1), string("reduction", "add")],
    );
    // counts [B, Nd, 1]: 1 (the dst) + the srcs merged into it
    let one = g.ints(&[1]);
    let batch = g.dims("dst_idx", 0, 1);
    let nd = g.op("Shape", &["b_idx"], vec![]);
    let count_shape = g.op("Concat", &[&batch, &nd, &one], vec![int("axis", 0)]);
    let ones_d = g.op(
        "ConstantOfShape",
        &[&count_shape],
        vec![scalar_tensor("value", 1.0)],
    );
    let idx_shape = g.op("Shape", &["dst_idx"], vec![]);
    let r_shape = g.op("Concat", &[&idx_shape, &one], vec![int("axis", 0)]);
    let ones_r = g.op(
        "ConstantOfShape",
        &[&r_shape],
        vec![scalar_tensor("value", 1.0)],
    );
    let axis2 = g.ints(&[2]);
    let dst_1 = g.op("Unsqueeze", &["dst_idx", &axis2], vec![]);
    let counts = g.op(
        "ScatterElements",
        &[&ones_d, &dst_1, &ones_r],
        vec![int("axis", 1), string("reduction", "add")],
    );
    let mean = g.op("Div", &[&sums, &counts], vec![]);
    g.op_n("Concat", &[&unm, &mean], vec![int("axis", 1)], 1);
    g.nodes.last_mut().expect("just added").output[0] = "merged".into();
    let mut inputs = vec![value("x", DataType::FLOAT, &["B", "N", "C"])];
    inputs.extend(partition_inputs());
    inputs.extend(index_inputs());
    let outputs = vec![value("merged", DataType::FLOAT, &["B", "M", "C"])];
    g.finish("tome_merge", inputs, outputs)
}

/// The unmerge: `y` [B, N − r, C] → [B, N, C].
pub fn unmerge_graph() -> ModelProto {
    unmerge_graph_at(OPSET)
}

/// [`unmerge_graph`] for a model of default-domain opset `opset` (17 or later).
pub fn unmerge_graph_at(opset: i64) -> ModelProto {
    let mut g = Builder::new(opset);
    let c = g.dims("y", 2, 3);
    let batch = g.dims("y", 0, 1);
    let nu = g.dims("unm_idx", 1, 2);
    let (zero, one, end) = (g.ints(&[0]), g.ints(&[1]), g.ints(&[i64::MAX]));
    let unm = g.op("Slice", &["y", &zero, &nu, &one], vec![]);
    let dst = g.op("Slice", &["y", &nu, &end, &one], vec![]);
    let dst_c = g.over_channels("dst_idx", &c);
    let src = g.op("GatherElements", &[&dst, &dst_c], vec![int("axis", 1)]);
    // out [B, Ns + Nd, C] = 0, then the dst, unmerged src and merged src rows
    let ns = g.op("Shape", &["a_idx"], vec![]);
    let nd = g.op("Shape", &["b_idx"], vec![]);
    let n = g.op("Add", &[&ns, &nd], vec![]);
    let shape = g.op("Concat", &[&batch, &n, &c], vec![int("axis", 0)]);
    let zeros = g.op(
        "ConstantOfShape",
        &[&shape],
        vec![scalar_tensor("value", 0.0)],
    );
    // b_idx [Nd] → [B, Nd] rows of positions
    let axis0 = g.ints(&[0]);
    let b_row = g.op("Unsqueeze", &["b_idx", &axis0], vec![]);
    let b_shape = g.op("Concat", &[&batch, &nd], vec![int("axis", 0)]);
    let b_pos = g.op("Expand", &[&b_row, &b_shape], vec![]);
    let b_c = g.over_channels(&b_pos, &c);
    let with_dst = g.op(
        "ScatterElements",
        &[&zeros, &b_c, &dst],
        vec![int("axis", 1)],
    );
    let unm_pos = g.op("Gather", &["a_idx", "unm_idx"], vec![int("axis", 0)]);
    let unm_c = g.over_channels(&unm_pos, &c);
    let with_unm = g.op(
        "ScatterElements",
        &[&with_dst, &unm_c, &unm],
        vec![int("axis", 1)],
    );
    let src_pos = g.op("Gather", &["a_idx", "src_idx"], vec![int("axis", 0)]);
    let src_c = g.over_channels(&src_pos, &c);
    g.op_n(
        "ScatterElements",
        &[&with_unm, &src_c, &src],
        vec![int("axis", 1)],
        1,
    );
    g.nodes.last_mut().expect("just added").output[0] = "unmerged".into();
    let mut inputs = vec![value("y", DataType::FLOAT, &["B", "M", "C"])];
    inputs.extend(partition_inputs());
    inputs.extend(index_inputs());
    let outputs = vec![value("unmerged", DataType::FLOAT, &["B", "N", "C"])];
    g.finish("tome_unmerge", inputs, outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphs_are_topologically_ordered_and_declare_their_io() {
        for (model, outputs) in [
            (matching_graph(), vec!["unm_idx", "src_idx", "dst_idx"]),
            (merge_graph(), vec!["merged"]),
            (unmerge_graph(), vec!["unmerged"]),
        ] {
            let graph = &model.graph;
            let order = super::super::graph::topological_order(&graph.node).unwrap();
            assert!(order.iter().enumerate().all(|(i, &k)| i == k));
            let declared: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
            assert_eq!(declared, outputs);
            let produced: Vec<&str> = graph
                .node
                .iter()
                .flat_map(|n| n.output.iter().map(String::as_str))
                .collect();
            assert!(outputs.iter().all(|o| produced.contains(o)));
        }
    }
}
