//! Rewriting the exported attention into ONNX Runtime's fused `MultiHeadAttention`.
//!
//! torch's ONNX export of `scaled_dot_product_attention` (what diffusers' default
//! attention processor calls) spells attention out: per head, `softmax(q·kᵀ)·v` with
//! the full `batch × heads × N × N` score matrix, which ONNX Runtime materialises (5.4 GB
//! per attention at a 96×96 latent). `com.microsoft.MultiHeadAttention` computes the
//! same thing; on the CPU its float kernel is a tiled flash attention (online softmax)
//! that never holds more than an L2-cache-sized tile of scores, and on CUDA it picks
//! flash or memory-efficient attention. The rewrite is exact up to float rounding.
//!
//! The pattern matched (per `Softmax`), with `B` batch, `S`/`L` query/key tokens, `H`
//! heads and `D` the head size, and tensors `q`, `k`, `v` of shape `[B, S|L, H·D]`:
//!
//! ```text
//! qh = Transpose[0,2,1,3](Reshape(q, [B, -1, H, D]))      kᵀh = Transpose[0,2,3,1](Reshape(k, …))
//! scores = MatMul(Mul(qh, √s), Mul(kᵀh, √s))               vh = Transpose[0,2,1,3](Reshape(v, …))
//! out = Reshape(Transpose[0,2,1,3](MatMul(Softmax(scores, axis=-1), vh)), [B, -1, H·D])
//! ```
//!
//! where `s` is the default `1/√D` (computed from `Shape(qh)` by the exporter) or a
//! constant. `out` becomes `MultiHeadAttention(q, k, v)` with `num_heads = H` (and
//! `scale = s` when it is a constant); the nodes left without readers are removed. An
//! attention that does not match exactly is left as exported, and the reason recorded.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::graph::{self, dtype};
use super::pattern::{attr, default_opset, ints_attr, remove_dead_nodes, Mismatch, View};
use super::proto::attribute_proto::AttributeType;
use super::proto::{AttributeProto, ModelProto, NodeProto, OperatorSetIdProto};
use crate::choice::UnknownChoice;

/// How the graphs tomex runs compute attention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attention {
    /// Rewritten into `MultiHeadAttention` wherever the export matches the pattern.
    #[default]
    Fused,
    /// Fused as above, then run by tomex's own CPU kernel (`tomex.FlashAttention`, see
    /// [`crate::kernel::flash_attention`]) instead of ONNX Runtime's.
    Flash,
    /// As exported (the reference the fused graphs are tested against).
    Exported,
}

impl Attention {
    pub fn name(self) -> &'static str {
        match self {
            Attention::Fused => "fused",
            Attention::Flash => "flash",
            Attention::Exported => "exported",
        }
    }

    /// Whether the graphs get the attention rewrite (and the GEGLU split riding with it).
    pub fn is_fused(self) -> bool {
        self != Attention::Exported
    }
}

impl std::fmt::Display for Attention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Attention {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "fused" => Ok(Attention::Fused),
            "flash" => Ok(Attention::Flash),
            "exported" => Ok(Attention::Exported),
            other => Err(UnknownChoice {
                what: "attention",
                given: other.to_string(),
                choices: "`flash` (tomex's CPU kernel), `fused` (ONNX Runtime's MultiHeadAttention) or `exported` (the graph as exported)",
            }),
        }
    }
}

pub use super::pattern::MS_DOMAIN;

/// The custom operator domain and type of tomex's CPU attention kernel.
pub const FLASH_DOMAIN: &str = "tomex";
pub const FLASH_OP: &str = "FlashAttention";

/// Hands the fused attentions (a `MultiHeadAttention` with just `q`, `k`, `v`) to
/// tomex's kernel: same inputs, attributes and output, domain [`FLASH_DOMAIN`]. With
/// `max_head_size`, only those whose head size is known ([`head_size`]) and at most
/// that; the others stay ONNX Runtime's. Returns how many nodes changed.
pub fn use_flash_kernel(model: &mut ModelProto, max_head_size: Option<usize>) -> usize {
    let graph = model.graph.mut_or_insert_default();
    let handed: Vec<usize> = {
        let outputs = HashSet::new();
        let view = View::new(&graph.node, &graph.initializer, &outputs);
        let small_enough = |node: &NodeProto| match max_head_size {
            None => true,
            Some(max) => head_size(&view, node).is_some_and(|d| d <= max),
        };
        graph
            .node
            .iter()
            .enumerate()
            .filter(|(_, node)| {
                node.op_type == "MultiHeadAttention"
                    && node.domain == MS_DOMAIN
                    && node.input.len() == 3
                    && node.output.len() == 1
                    && small_enough(node)
            })
            .map(|(i, _)| i)
            .collect()
    };
    for &i in &handed {
        graph.node[i].op_type = FLASH_OP.into();
        graph.node[i].domain = FLASH_DOMAIN.into();
    }
    if !handed.is_empty() && !model.opset_import.iter().any(|o| o.domain == FLASH_DOMAIN) {
        model.opset_import.push(OperatorSetIdProto {
            domain: FLASH_DOMAIN.into(),
            version: 1,
            ..Default::default()
        });
    }
    handed.len()
}

/// The head size of a `MultiHeadAttention` whose `q` is a projection (`MatMul` by a
/// constant `[C, heads·D]` weight, as diffusers' bias-free `to_q` exports): `D`.
fn head_size(view: &View, mha: &NodeProto) -> Option<usize> {
    let heads = attr(mha, "num_heads")?.i;
    let projection = view.made_by(&mha.input[0], "MatMul").ok()?;
    let weight = view.constant_tensor(projection.input.get(1)?)?;
    match weight.dims.as_slice() {
        &[_, width] if heads > 0 && width % heads == 0 => usize::try_from(width / heads).ok(),
        _ => None,
    }
}

/// A graph of one attention node, `out = attention(q, k, v)` with `q [B, S, H·D]` and
/// `k`/`v [B, L, H·D]` (float32, dimensions symbolic): ONNX Runtime's
/// `MultiHeadAttention` as [`fuse_attention`] writes it, or with `flash` tomex's kernel
/// as [`use_flash_kernel`] hands it over. For benchmarks of the kernels alone.
pub fn lone_attention_model(heads: i64, flash: bool) -> ModelProto {
    let value =
        |name: &str, rows: &str| graph::tensor_value(name, dtype::FLOAT, &["batch", rows, "width"]);
    let mut model = ModelProto {
        ir_version: 8,
        producer_name: "tomex".into(),
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: 17,
                ..Default::default()
            },
            OperatorSetIdProto {
                domain: MS_DOMAIN.into(),
                version: 1,
                ..Default::default()
            },
        ],
        graph: Some(super::proto::GraphProto {
            name: "attention".into(),
            node: vec![plain_mha("attention", ["q", "k", "v"], "out", heads)],
            input: vec![
                value("q", "queries"),
                value("k", "keys"),
                value("v", "keys"),
            ],
            output: vec![value("out", "queries")],
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    if flash {
        use_flash_kernel(&mut model, None);
    }
    model
}

/// What [`fuse_attention`] did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fusion {
    /// Names of the `MultiHeadAttention` nodes written, in graph order.
    pub fused: Vec<String>,
    /// How many of them [`use_flash_kernel`] then handed to tomex's kernel.
    pub flash: usize,
    /// Each `Softmax` left as exported, with why.
    pub skipped: Vec<(String, String)>,
}

/// One matched attention.
struct Match {
    softmax: usize,
    /// The final `Reshape`, whose output the fused node takes over.
    reshape: usize,
    q: String,
    k: String,
    v: String,
    heads: i64,
    /// `None`: the default `1/√D`.
    scale: Option<f32>,
}

/// Rewrites every attention of `model`'s main graph that matches the exported pattern.
pub fn fuse_attention(model: &mut ModelProto) -> Fusion {
    let opset = default_opset(&model.opset_import);
    let graph = model.graph.mut_or_insert_default();
    let types = graph::elem_types(graph, &graph.node);
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut fusion = Fusion::default();
    let matches: Vec<Match> = {
        let view = View::new(&graph.node, &graph.initializer, &outputs);
        graph
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| n.op_type == "Softmax" && super::pattern::is_default_domain(n))
            .filter_map(|(i, n)| match view.attention(i, opset, &types) {
                Ok(m) => Some(m),
                Err(reason) => {
                    fusion.skipped.push((n.name.clone(), reason.0));
                    None
                }
            })
            .collect()
    };
    if matches.is_empty() {
        return fusion;
    }
    for m in &matches {
        let name = fused_name(&graph.node[m.softmax].name);
        let out = graph.node[m.reshape].output[0].clone();
        graph.node[m.reshape] = mha_node(&name, m, &out);
        fusion.fused.push(name);
    }
    remove_dead_nodes(graph);
    if !model.opset_import.iter().any(|o| o.domain == MS_DOMAIN) {
        model.opset_import.push(OperatorSetIdProto {
            domain: MS_DOMAIN.into(),
            version: 1,
            ..Default::default()
        });
    }
    fusion
}

/// `/…/attn1/Softmax` → `/…/attn1/MultiHeadAttention`: the fused node keeps the
/// component's name prefix, which is how the UNet cut finds a component's nodes.
fn fused_name(softmax: &str) -> String {
    match softmax.rfind('/') {
        Some(i) => format!("{}/MultiHeadAttention", &softmax[..i]),
        None => format!("{softmax}/MultiHeadAttention"),
    }
}

fn mha_node(name: &str, m: &Match, out: &str) -> NodeProto {
    let mut node = plain_mha(name, [&m.q, &m.k, &m.v], out, m.heads);
    if let Some(scale) = m.scale {
        node.attribute.push(AttributeProto {
            name: "scale".into(),
            type_: AttributeType::FLOAT.into(),
            f: scale,
            ..Default::default()
        });
    }
    node
}

/// `out = MultiHeadAttention(q, k, v)` with `heads` heads and the default scale.
fn plain_mha(name: &str, [q, k, v]: [&str; 3], out: &str, heads: i64) -> NodeProto {
    NodeProto {
        name: name.into(),
        op_type: "MultiHeadAttention".into(),
        domain: MS_DOMAIN.into(),
        input: vec![q.into(), k.into(), v.into()],
        output: vec![out.into()],
        attribute: vec![AttributeProto {
            name: "num_heads".into(),
            type_: AttributeType::INT.into(),
            i: heads,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Attention-specific matching over the shared [`View`].
impl<'g> View<'g> {
    /// `Transpose(Reshape(x, shape), perm)`: returns `x` and the head count in `shape`.
    fn heads_of(&self, tensor: &str, perm: &[i64]) -> Result<(String, i64), Mismatch> {
        let t = self.made_by(tensor, "Transpose")?;
        if ints_attr(t, "perm").as_deref() != Some(perm) {
            return Err(format!("`{}` is not a Transpose {perm:?}", t.name).into());
        }
        let r = self.made_by(&t.input[0], "Reshape")?;
        let shape = r.input.get(1).ok_or("a Reshape without a shape")?;
        let heads = self
            .shape_entry(shape, 2)
            .ok_or_else(|| format!("the head count of `{}` is not a constant", r.name))?;
        if heads <= 0 {
            return Err(format!("`{}` has {heads} heads", r.name).into());
        }
        Ok((r.input[0].clone(), heads))
    }

    /// Entry `k` of a 4-d shape: a constant, or a `Concat` whose `k`th input is one.
    fn shape_entry(&self, shape: &str, k: usize) -> Option<i64> {
        if let Some(v) = self.int_constant(shape) {
            return (v.len() == 4).then(|| v[k]);
        }
        let concat = self.made_by(shape, "Concat").ok()?;
        if concat.input.len() != 4 {
            return None;
        }
        match self.int_constant(&concat.input[k])?.as_slice() {
            [v] => Some(*v),
            _ => None,
        }
    }

    /// `x` scaled: `Mul(x, f)` or `Mul(f, x)` with `x` made by a `Transpose`.
    fn scaled(&self, tensor: &str) -> Result<(&'g str, &'g str), Mismatch> {
        let mul = self.made_by(tensor, "Mul")?;
        let (a, b) = (mul.input[0].as_str(), mul.input[1].as_str());
        if self.made_by(a, "Transpose").is_ok() {
            Ok((a, b))
        } else if self.made_by(b, "Transpose").is_ok() {
            Ok((b, a))
        } else {
            Err(format!("`{}` does not scale a head tensor", mul.name).into())
        }
    }

    /// The scale `s` given the two factors `√s` applied to q and kᵀ; `Ok(None)` for the
    /// exporter's `1/√D`, computed from the shape of `qh`.
    fn scale(&self, fq: &str, fk: &str, qh: &str) -> Result<Option<f32>, Mismatch> {
        let sq = self.made_by(fq, "Sqrt")?;
        let sk = self.made_by(fk, "Sqrt")?;
        if sq.input[0] != sk.input[0] {
            return Err("q and k are scaled by different factors".into());
        }
        let s = sq.input[0].as_str();
        if let Some(c) = self.float_constant(self.through_casts(s)) {
            return Ok(Some(c));
        }
        // s = 1 / √(float(Shape(qh)[-1:])): the default scale.
        let div = self.made_by(self.through_casts(s), "Div")?;
        if self.float_constant(self.through_casts(&div.input[0])) != Some(1.0) {
            return Err(format!("`{}` is not 1 / √D", div.name).into());
        }
        let sqrt = self.made_by(self.through_casts(&div.input[1]), "Sqrt")?;
        let slice = self.made_by(self.through_casts(&sqrt.input[0]), "Slice")?;
        let shape = self.made_by(&slice.input[0], "Shape")?;
        let last = slice.input.get(1).and_then(|s| self.int_constant(s));
        if shape.input[0] != qh || last.as_deref() != Some(&[-1]) {
            return Err(format!("`{}` is not the head size of q", slice.name).into());
        }
        Ok(None)
    }

    /// The attention around the `Softmax` at index `softmax`, if it is the pattern.
    fn attention(
        &self,
        softmax: usize,
        opset: i64,
        types: &HashMap<String, i32>,
    ) -> Result<Match, Mismatch> {
        let sm = &self.nodes[softmax];
        let axis = attr(sm, "axis").map(|a| a.i);
        if !(axis == Some(-1) || axis == Some(3) || (axis.is_none() && opset >= 13)) {
            return Err("the softmax is not over the last axis".into());
        }
        let scores = self.made_by(&sm.input[0], "MatMul")?;
        // Another reader of the scores would keep the N x N matrix alive: no gain.
        self.only_reader(&sm.input[0], "attention")?;
        let m2 = &self.nodes[self.only_reader(&sm.output[0], "attention")?];
        if m2.op_type != "MatMul" || m2.input[0] != sm.output[0] {
            return Err("the softmax does not feed a MatMul with v".into());
        }
        let (qh, fq) = self.scaled(&scores.input[0])?;
        let (kh, fk) = self.scaled(&scores.input[1])?;
        let (q, hq) = self.heads_of(qh, &[0, 2, 1, 3])?;
        let (k, hk) = self.heads_of(kh, &[0, 2, 3, 1])?;
        let (v, hv) = self.heads_of(&m2.input[1], &[0, 2, 1, 3])?;
        if hq != hk || hq != hv {
            return Err(format!("q, k and v have {hq}, {hk} and {hv} heads").into());
        }
        let scale = self.scale(fq, fk, qh)?;
        let back = &self.nodes[self.only_reader(&m2.output[0], "attention")?];
        if back.op_type != "Transpose" || ints_attr(back, "perm").as_deref() != Some(&[0, 2, 1, 3])
        {
            return Err("the attention output is not transposed back".into());
        }
        let reshape = self.only_reader(&back.output[0], "attention")?;
        if self.nodes[reshape].op_type != "Reshape" {
            return Err("the attention output is not reshaped back".into());
        }
        // ONNX Runtime's CPU kernel is float only.
        if [&q, &k, &v]
            .iter()
            .any(|t| types.get(t.as_str()) != Some(&dtype::FLOAT))
        {
            return Err("q, k and v are not all float32".into());
        }
        Ok(Match {
            softmax,
            reshape,
            q,
            k,
            v,
            heads: hq,
            scale,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::TensorProto;
    use super::*;

    #[test]
    fn fused_node_keeps_the_component_prefix() {
        assert_eq!(
            fused_name("/down_blocks.0/attentions.0/transformer_blocks.0/attn1/Softmax"),
            "/down_blocks.0/attentions.0/transformer_blocks.0/attn1/MultiHeadAttention"
        );
        assert_eq!(fused_name("Softmax_3"), "Softmax_3/MultiHeadAttention");
    }

    #[test]
    fn only_plain_multi_head_attentions_go_to_the_flash_kernel() {
        let mha = |name: &str, inputs: &[&str]| NodeProto {
            name: name.into(),
            op_type: "MultiHeadAttention".into(),
            domain: MS_DOMAIN.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![format!("{name}_out")],
            ..Default::default()
        };
        let mut model = ModelProto::default();
        let graph = model.graph.mut_or_insert_default();
        graph.node.push(mha("plain", &["q", "k", "v"]));
        // With a bias input: not the form the kernel takes.
        graph.node.push(mha("biased", &["q", "k", "v", "bias"]));
        graph.node.push(NodeProto {
            op_type: "Softmax".into(),
            ..Default::default()
        });
        assert_eq!(use_flash_kernel(&mut model, None), 1);
        let nodes = &model.graph.node;
        assert_eq!(
            (nodes[0].domain.as_str(), nodes[0].op_type.as_str()),
            (FLASH_DOMAIN, FLASH_OP)
        );
        assert_eq!(nodes[1].op_type, "MultiHeadAttention");
        assert_eq!(nodes[2].op_type, "Softmax");
        assert_eq!(nodes[0].input, ["q", "k", "v"]);
        assert!(model
            .opset_import
            .iter()
            .any(|o| o.domain == FLASH_DOMAIN && o.version == 1));
        // A second pass changes nothing and imports the domain once.
        assert_eq!(use_flash_kernel(&mut model, None), 0);
        assert_eq!(
            model
                .opset_import
                .iter()
                .filter(|o| o.domain == FLASH_DOMAIN)
                .count(),
            1
        );
    }

    #[test]
    fn a_head_size_bound_hands_over_only_the_heads_it_allows() {
        // q = MatMul(x, W [C, heads·D]) for D = 4, 8 and 40, and one whose q has no
        // projection to read D from.
        let mut model = ModelProto::default();
        let graph = model.graph.mut_or_insert_default();
        for (name, width, heads) in [("d4", 32, 8), ("d8", 64, 8), ("d40", 320, 8)] {
            graph.initializer.push(TensorProto {
                name: format!("{name}_w"),
                dims: vec![16, width],
                ..Default::default()
            });
            graph.node.push(NodeProto {
                op_type: "MatMul".into(),
                input: vec!["x".into(), format!("{name}_w")],
                output: vec![format!("{name}_q")],
                ..Default::default()
            });
            graph
                .node
                .push(mha_with_heads(name, &format!("{name}_q"), heads));
        }
        graph.node.push(mha_with_heads("unknown", "x", 8));
        let mut all = model.clone();
        assert_eq!(use_flash_kernel(&mut model, Some(8)), 2);
        let kinds: Vec<(&str, &str)> = model
            .graph
            .node
            .iter()
            .filter(|n| n.op_type != "MatMul")
            .map(|n| (n.name.as_str(), n.op_type.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("d4", FLASH_OP),
                ("d8", FLASH_OP),
                ("d40", "MultiHeadAttention"),
                ("unknown", "MultiHeadAttention")
            ]
        );
        assert_eq!(use_flash_kernel(&mut all, None), 4);
    }

    fn mha_with_heads(name: &str, q: &str, heads: i64) -> NodeProto {
        plain_mha(name, [q, "k", "v"], &format!("{name}_out"), heads)
    }
}
