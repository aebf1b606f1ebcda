//! Half precision (`--precision fp16`): the UNet's graphs rewritten to compute their
//! activations in float16, as diffusers' `torch_dtype=torch.float16` pipelines do and
//! as the ToMe paper measured on GPUs.
//!
//! The graph keeps its float32 inputs and outputs, so the host, the token ops and the
//! scheduler see the same tensors at either precision; casts at the edges are the only
//! extra work. Inside, the rewrite follows the data:
//!
//! * a float input of rank 2 or more (latents, text states, a cut part's hidden states)
//!   is cast to float16 where the graph reads it; rank 0 and 1 inputs (the timestep)
//!   stay float32, so the sinusoidal timestep embedding is computed in float32 as
//!   diffusers computes it (`t * freq` in float16 would lose the phase of `sin`);
//!   SDXL's `time_ids` (rank 2) stay float32 for the same reason: diffusers embeds them
//!   in float32 and casts the embedding to float16 where it joins `text_embeds`;
//! * a node that reads a float16 activation computes in float16: its other float
//!   inputs (weights, constants, the float32 timestep path) are cast to float16 where
//!   it reads them, and its float outputs become float16. ONNX Runtime folds the casts
//!   of weights and constants into float16 initializers when it loads the graph, so no
//!   float16 copy of the weights is written;
//! * a `Cast` to float32 on the float16 path casts to float16 instead;
//! * `Resize`'s `roi` and `scales` stay float32 (the operator requires it);
//! * float16 outputs are cast back to float32 under the output's own name.
//!
//! Nodes that read no float16 activation (shape arithmetic, the timestep embedding and
//! its MLP) are left as they are.

use std::collections::{HashMap, HashSet};

use super::graph::{self, dtype};
use super::proto::attribute_proto::AttributeType;
use super::proto::{AttributeProto, GraphProto, NodeProto};
use crate::choice::UnknownChoice;

/// The floating-point precision the UNet computes in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// The graph as exported (float32).
    #[default]
    Fp32,
    /// Activations in float16, inputs and outputs float32 (see the module docs).
    Fp16,
}

impl Precision {
    pub const NAMES: [&'static str; 2] = ["fp32", "fp16"];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "float32" => Ok(Precision::Fp32),
            "fp16" | "float16" => Ok(Precision::Fp16),
            other => Err(UnknownChoice {
                what: "precision",
                given: other.to_string(),
                choices: "`fp32` (as exported) or `fp16` (activations in float16)",
            }),
        }
    }
}

/// ONNX's float16 element type code.
pub const FLOAT16: i32 = 10;

/// What [`to_half`] did to one graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HalfReport {
    /// Nodes that now compute in float16.
    pub half_nodes: usize,
    /// Nodes left in float32 (shape arithmetic, the timestep path).
    pub float_nodes: usize,
    /// Casts inserted (inputs, weights and constants to float16; outputs back).
    pub casts: usize,
}

/// Rewrites `graph` to compute its activations in float16 (see the module docs). The
/// graph's inputs and outputs keep their names and float32 types.
pub fn to_half(graph: &mut GraphProto) -> HalfReport {
    let types = graph::elem_types(graph, &graph.node);
    let ranks = graph::ranks(graph, &graph.node);
    let is_float = |name: &str| types.get(name) == Some(&dtype::FLOAT);
    let order =
        graph::topological_order(&graph.node).unwrap_or_else(|| (0..graph.node.len()).collect());

    // Float16 tensors, keyed by their float32 name; graph inputs are cast on entry.
    let mut half: HashSet<String> = HashSet::new();
    let mut casts: HashMap<String, String> = HashMap::new();
    let mut new_nodes: Vec<NodeProto> = Vec::with_capacity(graph.node.len() + 64);
    let mut report = HalfReport::default();
    let activation_inputs: HashSet<String> = graph
        .input
        .iter()
        .filter(|v| is_float(&v.name) && ranks.get(&v.name).is_none_or(|&r| r >= 2))
        .filter(|v| v.name != "time_ids")
        .map(|v| v.name.clone())
        .collect();

    let mut nodes = std::mem::take(&mut graph.node);
    for i in order {
        let mut node = std::mem::take(&mut nodes[i]);
        let reads_half = node
            .input
            .iter()
            .any(|n| half.contains(n) || activation_inputs.contains(n));
        if !reads_half {
            report.float_nodes += 1;
            new_nodes.push(node);
            continue;
        }
        report.half_nodes += 1;
        if node.op_type == "Cast" && is_standard(&node) {
            // The float16 path stays float16; casts to other types keep their target.
            if let Some(to) = node.attribute.iter_mut().find(|a| a.name == "to") {
                if to.i == i64::from(dtype::FLOAT) {
                    to.i = i64::from(FLOAT16);
                    half.extend(node.output.iter().cloned());
                }
            }
            let input = node.input[0].clone();
            node.input[0] = half_name(
                &input,
                &half,
                &activation_inputs,
                &mut casts,
                &mut new_nodes,
            );
            new_nodes.push(node);
            continue;
        }
        for k in 0..node.input.len() {
            let name = node.input[k].clone();
            if name.is_empty() || !is_float(&name) || keeps_float_input(&node, k) {
                continue;
            }
            node.input[k] = half_name(&name, &half, &activation_inputs, &mut casts, &mut new_nodes);
        }
        for (k, out) in node.output.iter().enumerate() {
            if !out.is_empty() && is_float(out) && !keeps_float_output(&node, k) {
                half.insert(out.clone());
            }
        }
        new_nodes.push(node);
    }
    report.casts = casts.len();

    // Outputs: the float16 tensor is renamed, and a cast back takes the output's name.
    let output_names: Vec<String> = graph
        .output
        .iter()
        .map(|v| v.name.clone())
        .filter(|n| half.contains(n))
        .collect();
    for out in output_names {
        let renamed = format!("{out}__fp16");
        for node in &mut new_nodes {
            for name in node.output.iter_mut().chain(node.input.iter_mut()) {
                if *name == out {
                    name.clone_from(&renamed);
                }
            }
        }
        new_nodes.push(cast_node(&renamed, &out, dtype::FLOAT));
        half.remove(&out);
        half.insert(renamed);
        report.casts += 1;
    }
    graph.node = new_nodes;

    // Declared types of the tensors that changed.
    for v in &mut graph.value_info {
        if half.contains(&v.name) {
            set_elem_type(v, FLOAT16);
        }
    }
    report
}

/// The float16 version of `name` for a float16 node: the tensor itself when it is
/// already float16, else a cast made once and placed before its first reader.
fn half_name(
    name: &str,
    half: &HashSet<String>,
    activation_inputs: &HashSet<String>,
    casts: &mut HashMap<String, String>,
    new_nodes: &mut Vec<NodeProto>,
) -> String {
    if half.contains(name) {
        return name.to_string();
    }
    if let Some(cast) = casts.get(name) {
        return cast.clone();
    }
    let cast = if activation_inputs.contains(name) {
        format!("{name}__fp16")
    } else {
        format!("{name}__to_fp16")
    };
    new_nodes.push(cast_node(name, &cast, FLOAT16));
    casts.insert(name.to_string(), cast.clone());
    cast
}

fn cast_node(input: &str, output: &str, to: i32) -> NodeProto {
    NodeProto {
        name: format!("tomex_cast/{output}"),
        op_type: "Cast".into(),
        input: vec![input.into()],
        output: vec![output.into()],
        attribute: vec![AttributeProto {
            name: "to".into(),
            type_: AttributeType::INT.into(),
            i: i64::from(to),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn is_standard(node: &NodeProto) -> bool {
    node.domain.is_empty() || node.domain == "ai.onnx"
}

/// Inputs an operator requires in float32 whatever its data type.
fn keeps_float_input(node: &NodeProto, k: usize) -> bool {
    is_standard(node) && matches!(node.op_type.as_str(), "Resize" | "Upsample") && k >= 1
}

/// Outputs that keep float32: LayerNormalization's mean and inverse deviation
/// (its `stash_type`).
fn keeps_float_output(node: &NodeProto, k: usize) -> bool {
    is_standard(node) && node.op_type == "LayerNormalization" && k >= 1
}

fn set_elem_type(v: &mut super::proto::ValueInfoProto, elem: i32) {
    use super::proto::type_proto::Value;
    if let Some(Value::TensorType(tt)) = v.type_.as_mut().and_then(|t| t.value.as_mut()) {
        tt.elem_type = elem;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::tensor_proto::DataType;
    use crate::onnx::proto::{TensorProto, ValueInfoProto};

    fn value(name: &str, elem: i32, rank: usize) -> ValueInfoProto {
        graph::tensor_value(name, elem, &["d0", "d1", "d2", "d3"][..rank])
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            name: format!("/{output}"),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn float_initializer(name: &str, dims: &[i64]) -> TensorProto {
        TensorProto {
            name: name.into(),
            data_type: DataType::FLOAT as i32,
            dims: dims.to_vec(),
            float_data: vec![0.5; dims.iter().product::<i64>() as usize],
            ..Default::default()
        }
    }

    /// A UNet in miniature: a timestep embedding, a convolution, an addition of the
    /// two, an up-sampling `Resize` and a `Cast` to float on the data path.
    fn miniature() -> GraphProto {
        let mut cast_t = node("Cast", &["t"], "tf");
        cast_t
            .attribute
            .push(cast_node("", "", dtype::FLOAT).attribute.remove(0));
        let mut cast_a = node("Cast", &["a"], "af");
        cast_a.attribute = cast_t.attribute.clone();
        GraphProto {
            node: vec![
                cast_t,
                node("Mul", &["tf", "freq"], "targ"),
                node("Sin", &["targ"], "ts"),
                node("Conv", &["x", "w"], "c"),
                node("Add", &["c", "ts"], "a"),
                cast_a,
                node("Resize", &["af", "", "scales"], "y"),
            ],
            input: vec![value("x", dtype::FLOAT, 4), value("t", dtype::INT64, 0)],
            output: vec![value("y", dtype::FLOAT, 4)],
            value_info: vec![value("c", dtype::FLOAT, 4), value("ts", dtype::FLOAT, 1)],
            initializer: vec![
                float_initializer("freq", &[1]),
                float_initializer("w", &[4, 4, 1, 1]),
                float_initializer("scales", &[4]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_data_path_is_half_and_the_timestep_path_float() {
        let mut g = miniature();
        let report = to_half(&mut g);
        let types = graph::elem_types(&g, &g.node);
        for name in ["tf", "targ", "ts", "freq", "scales", "x", "y"] {
            assert_eq!(types[name], dtype::FLOAT, "{name}");
        }
        for name in [
            "x__fp16",
            "w__to_fp16",
            "ts__to_fp16",
            "c",
            "a",
            "af",
            "y__fp16",
        ] {
            assert_eq!(types[name], FLOAT16, "{name}");
        }
        let by_output = |o: &str| g.node.iter().find(|n| n.output[0] == o).unwrap();
        assert_eq!(by_output("c").input, ["x__fp16", "w__to_fp16"]);
        assert_eq!(by_output("a").input, ["c", "ts__to_fp16"]);
        assert_eq!(by_output("y__fp16").input, ["af", "", "scales"]);
        assert_eq!(by_output("y").op_type, "Cast");
        assert_eq!(
            report,
            HalfReport {
                half_nodes: 4,
                float_nodes: 3,
                casts: 4
            }
        );
        let declared = |n: &str| {
            let v = g.value_info.iter().find(|v| v.name == n).unwrap();
            graph::tensor_elem_type(v.type_.as_ref().unwrap())
        };
        assert_eq!(declared("c"), Some(FLOAT16));
        assert_eq!(declared("ts"), Some(dtype::FLOAT));
        assert!(graph::topological_order(&g.node)
            .is_some_and(|o| o.iter().enumerate().all(|(i, &k)| i == k)));
    }

    /// SDXL's `time_ids` ([batch, 6], rank 2) are embedded in float32 like the timestep;
    /// `text_embeds` (rank 2 as well) is an activation and enters in float16.
    #[test]
    fn sdxl_time_ids_stay_float_and_text_embeds_go_half() {
        let mut g = GraphProto {
            node: vec![
                node("Mul", &["time_ids", "freq"], "targ"),
                node("Sin", &["targ"], "tsin"),
                node("Concat", &["text_embeds", "tsin"], "added"),
            ],
            input: vec![
                value("time_ids", dtype::FLOAT, 2),
                value("text_embeds", dtype::FLOAT, 2),
            ],
            output: vec![value("added", dtype::FLOAT, 2)],
            initializer: vec![float_initializer("freq", &[1])],
            ..Default::default()
        };
        to_half(&mut g);
        let types = graph::elem_types(&g, &g.node);
        for name in ["targ", "tsin", "added"] {
            assert_eq!(types[name], dtype::FLOAT, "{name}");
        }
        let by_output = |o: &str| g.node.iter().find(|n| n.output[0] == o).unwrap();
        assert_eq!(by_output("targ").input, ["time_ids", "freq"]);
        assert_eq!(
            by_output("added__fp16").input,
            ["text_embeds__fp16", "tsin__to_fp16"]
        );
    }

    #[test]
    fn names_parse_and_print() {
        assert_eq!("fp16".parse::<Precision>().unwrap(), Precision::Fp16);
        assert_eq!("FLOAT32".parse::<Precision>().unwrap(), Precision::Fp32);
        assert!("bf16"
            .parse::<Precision>()
            .unwrap_err()
            .to_string()
            .contains("fp16"));
        assert_eq!(Precision::Fp16.to_string(), "fp16");
    }
}
