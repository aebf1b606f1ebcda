//! Upsampling to the skip connection's size, as diffusers' `upsample_size` does.
//!
//! Where the latent is not a multiple of the UNet's total downsampling (`2^(levels-1)`:
//! 8 for SD 1.5, so any image size not a multiple of 64), diffusers' UNet passes each
//! upsampler the spatial size of the skip connection the next up block concatenates
//! (`upsample_size`). A graph exported at a size that divides has a fixed 2x `Resize`
//! instead, and ONNX Runtime's `Concat` then fails: a 25-row latent goes 25 -> 13 -> 7
//! down and 7 -> 14 up against a 13-row skip. The pattern, with `skip` the down path's
//! tensor the up path meets:
//!
//! ```text
//! u = Resize(x, roi, scales = [1, 1, 2, 2] (a constant), mode = nearest)
//! c = Conv(u)                          the upsampler's convolution
//! Concat(c, skip, axis = 1)            the next block's first resnet
//! ```
//!
//! The `Resize` takes `sizes = Concat(Shape(x)[0:2], Shape(skip)[2:4])` instead. Where
//! the latent divides, those sizes are exactly twice the input's and nearest
//! interpolation reads the same source pixels as with scale 2 (`floor(i * in / out)`,
//! asymmetric), so the rewrite changes no output there. Where it does not, the output
//! is one row or column short of 2x, and the source of row `i` is `floor(i * in / out)`
//! as torch's `interpolate(size=...)` computes it (`in` and `2 in - 1` are coprime, so
//! no product lands on an integer that float rounding could move).

use std::collections::HashSet;

use super::graph::dtype;
use super::pattern::{attr, int64_constant_node, is_default_domain, View};
use super::proto::{AttributeProto, ModelProto, NodeProto, TensorProto};

/// One fixed-scale upsampler: its `Resize` and the skip it must match.
struct Match {
    resize: usize,
    skip: String,
}

/// Makes every fixed 2x nearest `Resize` of `model`'s main graph that feeds a skip
/// concatenation (through its convolution) take its size from the skip. Returns how
/// many.
pub fn upsample_to_skips(model: &mut ModelProto) -> usize {
    let graph = model.graph.mut_or_insert_default();
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let matches: Vec<Match> = {
        let view = View::new(&graph.node, &graph.initializer, &outputs);
        (0..graph.node.len())
            .filter(|&i| graph.node[i].op_type == "Resize" && is_default_domain(&graph.node[i]))
            .filter_map(|i| view.upsampler(i))
            .collect()
    };
    if matches.is_empty() {
        return 0;
    }
    let mut sizes_before: Vec<Option<Vec<NodeProto>>> = vec![None; graph.node.len()];
    for m in &matches {
        let resize = &mut graph.node[m.resize];
        let (nodes, sizes) = size_nodes(&resize.name, &resize.input[0], &m.skip);
        resize.input.resize(4, String::new());
        resize.input[2] = String::new();
        resize.input[3] = sizes;
        sizes_before[m.resize] = Some(nodes);
    }
    // The skip is computed on the down path, before the up path's `Resize`: the size
    // nodes go right before it, which keeps the node list in topological order.
    let nodes = std::mem::take(&mut graph.node);
    for (i, node) in nodes.into_iter().enumerate() {
        if let Some(new) = sizes_before[i].take() {
            graph.node.extend(new);
        }
        graph.node.push(node);
    }
    super::pattern::remove_dead_nodes(graph);
    matches.len()
}

/// The nodes computing `Concat(Shape(x)[0:2], Shape(skip)[2:4])`, named under the
/// `Resize`'s prefix, and the name of their output.
fn size_nodes(resize_name: &str, x: &str, skip: &str) -> (Vec<NodeProto>, String) {
    let prefix = resize_name.rsplit_once('/').map_or(resize_name, |(p, _)| p);
    let name = |what: &str| format!("{prefix}/upsample_size_{what}");
    let node = |op: &str, what: &str, input: Vec<String>| NodeProto {
        name: name(what),
        op_type: op.into(),
        input,
        output: vec![name(what)],
        ..Default::default()
    };
    let mut concat = node(
        "Concat",
        "sizes",
        vec![name("batch_channels"), name("rows_columns")],
    );
    concat.attribute.push(AttributeProto {
        name: "axis".into(),
        type_: super::proto::attribute_proto::AttributeType::INT.into(),
        i: 0,
        ..Default::default()
    });
    let nodes = vec![
        int64_constant_node(&name("zero"), 0),
        int64_constant_node(&name("two"), 2),
        int64_constant_node(&name("four"), 4),
        node("Shape", "x_shape", vec![x.to_string()]),
        node("Shape", "skip_shape", vec![skip.to_string()]),
        node(
            "Slice",
            "batch_channels",
            vec![name("x_shape"), name("zero"), name("two")],
        ),
        node(
            "Slice",
            "rows_columns",
            vec![name("skip_shape"), name("two"), name("four")],
        ),
        concat,
    ];
    (nodes, name("sizes"))
}

/// The float values of a constant tensor (`float_data` or raw little-endian bytes).
fn float_values(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != dtype::FLOAT {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    let raw = t.raw_data.as_slice();
    raw.len().is_multiple_of(4).then(|| {
        raw.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    })
}

impl View<'_> {
    /// The skip concatenation node `resize` upsamples for, if it is the pattern.
    fn upsampler(&self, resize: usize) -> Option<Match> {
        let node = &self.nodes[resize];
        let nearest = attr(node, "mode").is_some_and(|a| a.s == b"nearest");
        let scales = node.input.get(2).filter(|s| !s.is_empty())?;
        let has_sizes = node.input.get(3).is_some_and(|s| !s.is_empty());
        let doubles = self
            .constant_tensor(scales)
            .and_then(float_values)
            .is_some_and(|v| v == [1.0, 1.0, 2.0, 2.0]);
        if !nearest || has_sizes || !doubles {
            return None;
        }
        let conv = self.next_through_casts(&node.output[0], "Conv")?;
        let conv_out = self.through_casts_forward(&self.nodes[conv].output[0]);
        self.readers(conv_out).iter().find_map(|&i| {
            let concat = &self.nodes[i];
            let axis_one = attr(concat, "axis").is_some_and(|a| a.i == 1);
            if concat.op_type != "Concat" || !axis_one || concat.input.len() != 2 {
                return None;
            }
            let other = concat.input.iter().find(|t| t.as_str() != conv_out)?;
            Some(Match {
                resize,
                skip: other.clone(),
            })
        })
    }

    /// The one reader of `tensor`, past `Cast`s, if it is an `op`.
    fn next_through_casts(&self, tensor: &str, op: &str) -> Option<usize> {
        let tensor = self.through_casts_forward(tensor);
        match self.readers(tensor) {
            &[i] if self.nodes[i].op_type == op && is_default_domain(&self.nodes[i]) => Some(i),
            _ => None,
        }
    }

    /// `tensor`, or the output of the chain of single `Cast`s reading it.
    fn through_casts_forward<'t>(&'t self, mut tensor: &'t str) -> &'t str {
        while let &[i] = self.readers(tensor) {
            let node = &self.nodes[i];
            if node.op_type != "Cast" || self.is_graph_output(tensor) {
                break;
            }
            tensor = &node.output[0];
        }
        tensor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::graph;
    use crate::onnx::proto::GraphProto;

    fn node(op: &str, name: &str, input: &[&str], output: &[&str]) -> NodeProto {
        NodeProto {
            name: name.into(),
            op_type: op.into(),
            input: input.iter().map(|s| s.to_string()).collect(),
            output: output.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn with_attr(mut n: NodeProto, a: AttributeProto) -> NodeProto {
        n.attribute.push(a);
        n
    }

    /// skip = Relu(input); x = MaxPool(skip); u = Resize(x, 2x); Concat(Conv(u), skip).
    fn upsampler_graph(scales: [f32; 4]) -> ModelProto {
        let string_attr = |name: &str, v: &str| AttributeProto {
            name: name.into(),
            s: v.as_bytes().to_vec(),
            type_: super::super::proto::attribute_proto::AttributeType::STRING.into(),
            ..Default::default()
        };
        let axis = AttributeProto {
            name: "axis".into(),
            i: 1,
            type_: super::super::proto::attribute_proto::AttributeType::INT.into(),
            ..Default::default()
        };
        let graph = GraphProto {
            node: vec![
                node("Relu", "/down/Relu", &["input"], &["skip"]),
                node("MaxPool", "/down/Pool", &["skip"], &["x"]),
                with_attr(
                    node(
                        "Resize",
                        "/up_blocks.0/upsamplers.0/Resize",
                        &["x", "", "scales"],
                        &["u"],
                    ),
                    string_attr("mode", "nearest"),
                ),
                node(
                    "Conv",
                    "/up_blocks.0/upsamplers.0/conv/Conv",
                    &["u", "w"],
                    &["c"],
                ),
                with_attr(
                    node("Concat", "/up_blocks.1/Concat", &["c", "skip"], &["out"]),
                    axis,
                ),
            ],
            initializer: vec![TensorProto {
                name: "scales".into(),
                dims: vec![4],
                data_type: dtype::FLOAT,
                float_data: scales.to_vec(),
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

    #[test]
    fn a_fixed_2x_upsampler_takes_the_skip_size() {
        let mut model = upsampler_graph([1.0, 1.0, 2.0, 2.0]);
        assert_eq!(upsample_to_skips(&mut model), 1);
        let g = &model.graph;
        let resize = g.node.iter().find(|n| n.op_type == "Resize").unwrap();
        assert_eq!(
            resize.input,
            ["x", "", "", "/up_blocks.0/upsamplers.0/upsample_size_sizes"]
        );
        let shapes: Vec<&str> = g
            .node
            .iter()
            .filter(|n| n.op_type == "Shape")
            .map(|n| n.input[0].as_str())
            .collect();
        assert_eq!(shapes, ["x", "skip"]);
        // Still in topological order, and the scales constant is gone with its reader.
        assert!(graph::topological_order(&g.node).is_some());
        let position = |op: &str| g.node.iter().position(|n| n.op_type == op).unwrap();
        assert!(position("Concat") < position("Resize"));
    }

    #[test]
    fn other_resizes_are_left_alone() {
        let mut model = upsampler_graph([1.0, 1.0, 3.0, 3.0]);
        assert_eq!(upsample_to_skips(&mut model), 0);
        let resize = model
            .graph
            .node
            .iter()
            .find(|n| n.op_type == "Resize")
            .unwrap();
        assert_eq!(resize.input, ["x", "", "scales"]);
    }
}
