//! The UNet's `BasicTransformerBlock`s and their three components, found by the module
//! paths that the standard (TorchScript) export writes into node names:
//! `/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::proto::{ModelProto, NodeProto};

/// Where in the UNet a block sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Down,
    Mid,
    Up,
}

/// One `BasicTransformerBlock`: `down_blocks.{block}.attentions.{attention}.transformer_blocks.{transformer}`
/// (`mid_block.attentions...` for the middle block, where `block` is 0).
///
/// `level` is the block's resolution level: 0 at the latent size, `i` after `i`
/// downsamplings (`down_blocks.i` → `i`, `mid_block` → the deepest level,
/// `up_blocks.i` → levels in reverse). ToMe's `max_downsample` compares against `2^level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockId {
    pub stage: Stage,
    pub block: usize,
    pub attention: usize,
    pub transformer: usize,
    pub level: usize,
}

impl BlockId {
    /// The diffusers module path, `down_blocks.0.attentions.0.transformer_blocks.0`.
    pub fn path(&self) -> String {
        let stage = match self.stage {
            Stage::Down => format!("down_blocks.{}", self.block),
            Stage::Mid => "mid_block".to_string(),
            Stage::Up => format!("up_blocks.{}", self.block),
        };
        format!(
            "{stage}.attentions.{}.transformer_blocks.{}",
            self.attention, self.transformer
        )
    }

    /// The prefix of this block's node names, `/down_blocks.0/attentions.0/transformer_blocks.0`.
    pub fn node_prefix(&self) -> String {
        format!(
            "/{}",
            self.path()
                .replace(".attentions.", "/attentions.")
                .replace(".transformer_blocks.", "/transformer_blocks.")
        )
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

/// The three components of a `BasicTransformerBlock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    /// Self-attention, after `norm1`.
    Attn1,
    /// Cross-attention (also reads `encoder_hidden_states`), after `norm2`.
    Attn2,
    /// The MLP, after `norm3`.
    Ff,
}

impl ComponentKind {
    pub const ALL: [ComponentKind; 3] = [
        ComponentKind::Attn1,
        ComponentKind::Attn2,
        ComponentKind::Ff,
    ];

    /// The module name, `attn1` / `attn2` / `ff`.
    pub fn name(self) -> &'static str {
        match self {
            ComponentKind::Attn1 => "attn1",
            ComponentKind::Attn2 => "attn2",
            ComponentKind::Ff => "ff",
        }
    }

    /// The norm whose output the component reads.
    pub fn norm(self) -> &'static str {
        match self {
            ComponentKind::Attn1 => "norm1",
            ComponentKind::Attn2 => "norm2",
            ComponentKind::Ff => "norm3",
        }
    }

    fn from_name(name: &str) -> Option<ComponentKind> {
        ComponentKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One component of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ComponentId {
    pub block: BlockId,
    pub kind: ComponentKind,
}

impl ComponentId {
    pub fn new(block: BlockId, kind: ComponentKind) -> ComponentId {
        ComponentId { block, kind }
    }

    /// The prefix of the component's node names, `/down_blocks.0/.../transformer_blocks.0/attn1`.
    pub fn node_prefix(&self) -> String {
        format!("{}/{}", self.block.node_prefix(), self.kind.name())
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.block, self.kind)
    }
}

/// A transformer block found in a graph, with the components it has, in graph order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformerBlock {
    pub id: BlockId,
    pub components: Vec<ComponentKind>,
}

impl TransformerBlock {
    pub fn component(&self, kind: ComponentKind) -> Option<ComponentId> {
        self.components
            .contains(&kind)
            .then(|| ComponentId::new(self.id, kind))
    }

    pub fn component_ids(&self) -> impl Iterator<Item = ComponentId> + '_ {
        self.components
            .iter()
            .map(|&k| ComponentId::new(self.id, k))
    }
}

/// The transformer blocks of a UNet graph, in graph order.
pub fn transformer_blocks(model: &ModelProto) -> Vec<TransformerBlock> {
    blocks_of_nodes(&model.graph.node)
}

/// Parsed module path of a node name.
struct NodePath<'n> {
    stage: Stage,
    block: usize,
    attention: usize,
    transformer: usize,
    /// The first path element after the transformer block (`attn1`, `norm1`, ...).
    rest: &'n str,
}

fn indexed(segment: &str, prefix: &str) -> Option<usize> {
    segment
        .strip_prefix(prefix)?
        .strip_prefix('.')?
        .parse()
        .ok()
}

fn parse_node_path(name: &str) -> Option<NodePath<'_>> {
    let mut it = name.strip_prefix('/')?.split('/');
    let first = it.next()?;
    let (stage, block) = if first == "mid_block" {
        (Stage::Mid, 0)
    } else if let Some(i) = indexed(first, "down_blocks") {
        (Stage::Down, i)
    } else {
        (Stage::Up, indexed(first, "up_blocks")?)
    };
    let attention = indexed(it.next()?, "attentions")?;
    let transformer = indexed(it.next()?, "transformer_blocks")?;
    let rest = it.next()?;
    Some(NodePath {
        stage,
        block,
        attention,
        transformer,
        rest,
    })
}

/// How many `down_blocks.i` / `up_blocks.i` the graph has (from any node name).
fn stage_counts(nodes: &[NodeProto]) -> (usize, usize) {
    let (mut down, mut up) = (0, 0);
    for node in nodes {
        let Some(first) = node
            .name
            .as_str()
            .strip_prefix('/')
            .and_then(|n| n.split('/').next())
        else {
            continue;
        };
        if let Some(i) = indexed(first, "down_blocks") {
            down = down.max(i + 1);
        } else if let Some(i) = indexed(first, "up_blocks") {
            up = up.max(i + 1);
        }
    }
    (down, up)
}

pub(crate) fn blocks_of_nodes(nodes: &[NodeProto]) -> Vec<TransformerBlock> {
    let (down, up) = stage_counts(nodes);
    // (stage, block, attention, transformer) → (first node index, components)
    type Found = BTreeMap<(Stage, usize, usize, usize), (usize, Vec<ComponentKind>)>;
    let mut found: Found = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let Some(p) = parse_node_path(node.name.as_str()) else {
            continue;
        };
        let entry = found
            .entry((p.stage, p.block, p.attention, p.transformer))
            .or_insert((i, Vec::new()));
        if let Some(kind) = ComponentKind::from_name(p.rest) {
            if !entry.1.contains(&kind) {
                entry.1.push(kind);
            }
        }
    }
    let mut blocks: Vec<(usize, TransformerBlock)> = found
        .into_iter()
        .map(
            |((stage, block, attention, transformer), (first, mut components))| {
                components.sort();
                let level = match stage {
                    Stage::Down => block,
                    Stage::Mid => down.saturating_sub(1),
                    Stage::Up => up.saturating_sub(1).saturating_sub(block),
                };
                let id = BlockId {
                    stage,
                    block,
                    attention,
                    transformer,
                    level,
                };
                (first, TransformerBlock { id, components })
            },
        )
        .collect();
    blocks.sort_by_key(|(first, _)| *first);
    blocks.into_iter().map(|(_, b)| b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> NodeProto {
        NodeProto {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn finds_blocks_with_levels() {
        let nodes: Vec<NodeProto> = [
            "/conv_in/Conv",
            "/down_blocks.0/attentions.0/transformer_blocks.0/norm1/LayerNormalization",
            "/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul",
            "/down_blocks.0/attentions.0/transformer_blocks.0/ff/net.0/proj/MatMul",
            "/down_blocks.2/resnets.0/conv1/Conv",
            "/mid_block/attentions.0/transformer_blocks.0/attn2/to_k/MatMul",
            "/up_blocks.1/attentions.1/transformer_blocks.0/attn1/MatMul",
            "/up_blocks.2/resnets.0/conv1/Conv",
        ]
        .into_iter()
        .map(named)
        .collect();
        let blocks = blocks_of_nodes(&nodes);
        let summary: Vec<(String, usize, Vec<ComponentKind>)> = blocks
            .iter()
            .map(|b| (b.id.path(), b.id.level, b.components.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "down_blocks.0.attentions.0.transformer_blocks.0".to_string(),
                    0,
                    vec![ComponentKind::Attn1, ComponentKind::Ff]
                ),
                (
                    "mid_block.attentions.0.transformer_blocks.0".to_string(),
                    2,
                    vec![ComponentKind::Attn2]
                ),
                (
                    "up_blocks.1.attentions.1.transformer_blocks.0".to_string(),
                    1,
                    vec![ComponentKind::Attn1]
                ),
            ]
        );
        let c = blocks[0].component(ComponentKind::Attn1).unwrap();
        assert_eq!(
            c.node_prefix(),
            "/down_blocks.0/attentions.0/transformer_blocks.0/attn1"
        );
        assert_eq!(
            c.to_string(),
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
        );
        assert_eq!(
            blocks[1].id.node_prefix(),
            "/mid_block/attentions.0/transformer_blocks.0"
        );
    }
}
