//! ToMe around the split UNet: which components to cut for a latent size, and the
//! hooks between the parts: [`TokenHooks`] calling the `tome` module on the host, or
//! [`ResidentHooks`] running the token-op graphs where the tensors are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ndarray::{Array3, Array4, ArrayView3};
use ort::value::DynValue;

use super::graph_token_ops::{GraphMerge, GraphTokenOps};
use super::one_graph_unet::{Binding, OneGraphUnet};
use super::resident;
use super::runtime::{EngineError, Runtime};
use super::split_unet::{transformer_blocks, ResidentHooks, SplitUnet, TokenHooks};
use super::unet::Conditioning;
use crate::choice::UnknownChoice;
use crate::onnx::{BlockId, ComponentId, ComponentKind, SplitOptions, TransformerBlock};
use crate::tome::{self, Component, Merge, PartitionRng, TomeConfig};

/// Where ToMe's token ops run between the UNet's parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenOps {
    /// The Rust host code ([`crate::tome`]), exactly tomesd's.
    #[default]
    Host,
    /// ONNX graphs run by ONNX Runtime on the UNet's device
    /// ([`crate::onnx::token_ops`]), with every tensor left on that device between
    /// the parts (the device-resident path).
    Graph,
    /// The same token-op graphs spliced with the UNet's parts into one graph
    /// ([`crate::onnx::one_graph`]): one `Run` per evaluation.
    OneGraph,
}

impl std::str::FromStr for TokenOps {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "host" => Ok(TokenOps::Host),
            "graph" => Ok(TokenOps::Graph),
            "one-graph" => Ok(TokenOps::OneGraph),
            other => Err(UnknownChoice {
                what: "token ops",
                given: other.to_string(),
                choices: "`host` (Rust, exactly tomesd's), `graph` (ONNX graphs on the UNet's device) or `one-graph` (those graphs and the UNet's parts as one graph)",
            }),
        }
    }
}

/// The UNet with ToMe: one split per cut set (in practice one per latent size and
/// configuration), opened on first use and kept until [`close_others`](Self::close_others).
pub struct TomeUnet {
    runtime: Runtime,
    path: PathBuf,
    blocks: Vec<TransformerBlock>,
    options: SplitOptions,
    splits: HashMap<Vec<ComponentId>, SplitUnet>,
    /// Host time spent in token ops (matching, merge, unmerge) since the last reset.
    token_ops: Duration,
    /// The token-op graphs, when [`TokenOps::Graph`] is chosen.
    graph_ops: Option<GraphTokenOps>,
    /// [`TokenOps::OneGraph`]: one model per cut instead of the splits.
    one_graph: bool,
    one_graphs: HashMap<Vec<ComponentId>, OneGraphUnet>,
    /// How the one graph takes its tensors: fixed buffers (and CUDA-graph capture) on
    /// CUDA, a feed per run on the CPU.
    binding: Binding,
}

impl TomeUnet {
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        options: SplitOptions,
    ) -> Result<TomeUnet, EngineError> {
        Ok(TomeUnet {
            runtime: *runtime,
            path: path.to_path_buf(),
            blocks: transformer_blocks(path)?,
            options,
            splits: HashMap::new(),
            token_ops: Duration::ZERO,
            graph_ops: None,
            one_graph: false,
            one_graphs: HashMap::new(),
            binding: Binding::for_device(runtime.device()),
        })
    }

    /// Chooses how one-graph models take their tensors (tests run the CUDA path's
    /// fixed buffers on the CPU); models opened before are opened again.
    pub fn set_binding(&mut self, binding: Binding) {
        self.binding = binding;
        self.one_graphs.clear();
    }

    /// Runs the token ops on the host (the default) or as graphs.
    pub fn set_token_ops(&mut self, ops: TokenOps) -> Result<(), EngineError> {
        self.one_graph = ops == TokenOps::OneGraph;
        self.graph_ops = match ops {
            TokenOps::Host | TokenOps::OneGraph => None,
            TokenOps::Graph => match self.graph_ops.take() {
                Some(g) => Some(g),
                None => Some(GraphTokenOps::load(&self.runtime)?),
            },
        };
        Ok(())
    }

    /// The components ToMe merges for a `latent_hw` latent: the targeted components of
    /// every block that tomesd's `compute_merge` would merge at that size.
    pub fn cut_for(
        &self,
        latent_hw: (usize, usize),
        cfg: &TomeConfig,
    ) -> Result<Vec<ComponentId>, EngineError> {
        let mut cut = Vec::new();
        for block in &self.blocks {
            let tokens = tokens_at_level(latent_hw, block.id.level);
            let params = tome::block_params(latent_hw, tokens, cfg)?;
            if params.is_some() {
                cut.extend(targeted(block, cfg));
            }
        }
        Ok(cut)
    }

    /// Why `cfg` merges nothing at a `latent_hw` latent although its ratio is above 0,
    /// if it does not (see [`merges_nothing`]).
    pub fn merges_nothing(&self, latent_hw: (usize, usize), cfg: &TomeConfig) -> Option<String> {
        merges_nothing(&self.blocks, latent_hw, cfg)
    }

    /// The components a configuration targets at the levels it may merge, whatever
    /// the ratio: the cut that `r = 0` runs with when measuring the cuts' own cost.
    pub fn cut_ignoring_ratio(
        &self,
        latent_hw: (usize, usize),
        cfg: &TomeConfig,
    ) -> Result<Vec<ComponentId>, EngineError> {
        let any = TomeConfig {
            ratio: cfg.max_ratio(),
            ..*cfg
        };
        self.cut_for(latent_hw, &any)
    }

    /// One UNet evaluation with ToMe; `rng` draws the random dst cells (one fresh
    /// generator per image keeps images reproducible whatever ran before).
    pub fn predict<'c>(
        &mut self,
        sample: &Array4<f32>,
        timestep: f32,
        cond: impl Into<Conditioning<'c>>,
        cfg: &TomeConfig,
        rng: &mut PartitionRng,
    ) -> Result<Array4<f32>, EngineError> {
        let latent_hw = (sample.shape()[2], sample.shape()[3]);
        let cut = self.cut_for(latent_hw, cfg)?;
        self.predict_with_cut(sample, timestep, cond, cfg, rng, cut)
    }

    /// As [`predict`](Self::predict) on an explicit cut (benchmarks: cuts at r = 0).
    pub fn predict_with_cut<'c>(
        &mut self,
        sample: &Array4<f32>,
        timestep: f32,
        cond: impl Into<Conditioning<'c>>,
        cfg: &TomeConfig,
        rng: &mut PartitionRng,
        cut: Vec<ComponentId>,
    ) -> Result<Array4<f32>, EngineError> {
        let cond = cond.into();
        let latent_hw = (sample.shape()[2], sample.shape()[3]);
        self.open(&cut)?;
        if self.one_graph {
            let one = self.one_graphs.get_mut(&cut).expect("opened above");
            let start = Instant::now();
            let batch = sample.shape()[0];
            let mut partitions = Vec::with_capacity(one.blocks().len());
            for block in one.blocks() {
                let tokens = tokens_at_level(latent_hw, block.level);
                let p = match tome::block_partition(batch, tokens, latent_hw, cfg, rng) {
                    Some(p) => p,
                    // A block the cut holds but this ratio does not merge (a cut made
                    // whatever the ratio, as `bench-unet` measures at r = 0): its tokens
                    // go through the token ops with r = 0, reordered and put back.
                    None => {
                        let any = TomeConfig {
                            ratio: cfg.max_ratio(),
                            ..*cfg
                        };
                        let mut fixed = PartitionRng::new(cfg.seed);
                        let mut p =
                            tome::block_partition(batch, tokens, latent_hw, &any, &mut fixed)
                                .ok_or_else(|| EngineError::Unexpected {
                                    model: self.path.clone(),
                                    reason: format!(
                                        "block {block:?} has no dst cells at this size"
                                    ),
                                })?;
                        p.r = 0;
                        p
                    }
                };
                partitions.push(p);
            }
            self.token_ops += start.elapsed();
            return one.predict(sample, timestep, cond, &partitions);
        }
        let split = self.splits.get_mut(&cut).expect("opened above");
        if let Some(ops) = self.graph_ops.as_mut() {
            let mut hooks = GraphHooks {
                ops,
                cfg,
                latent_hw,
                rng,
                merges: HashMap::new(),
                elapsed: Duration::ZERO,
            };
            let out = split.predict_resident(sample, timestep, cond, &mut hooks);
            self.token_ops += hooks.elapsed;
            return out;
        }
        let mut hooks = MergeHooks {
            cfg,
            latent_hw,
            rng,
            merges: HashMap::new(),
            elapsed: Duration::ZERO,
        };
        // On one of rayon's workers: the token ops' parallel loops then start on this
        // thread instead of waking a sleeping worker and waiting for it, which cost
        // more than the work itself at small latents (about 0.1 ms per loop).
        let out = rayon::scope(|_| split.predict(sample, timestep, cond, &mut hooks))?;
        self.token_ops += hooks.elapsed;
        Ok(out)
    }

    /// Opens the split for `cut` unless it is open; `true` when it was opened now.
    pub fn open(&mut self, cut: &[ComponentId]) -> Result<bool, EngineError> {
        if self.one_graph {
            if self.one_graphs.contains_key(cut) {
                return Ok(false);
            }
            let one =
                OneGraphUnet::load(&self.runtime, &self.path, cut, &self.options, self.binding)?;
            self.one_graphs.insert(cut.to_vec(), one);
            return Ok(true);
        }
        if self.splits.contains_key(cut) {
            return Ok(false);
        }
        let split = SplitUnet::load(&self.runtime, &self.path, cut, &self.options)?;
        self.splits.insert(cut.to_vec(), split);
        Ok(true)
    }

    /// Closes every open split but the one for `keep` (all of them with `None`):
    /// each split holds the whole UNet's weights.
    pub fn close_others(&mut self, keep: Option<&[ComponentId]>) {
        self.splits.retain(|cut, _| Some(cut.as_slice()) == keep);
        self.one_graphs
            .retain(|cut, _| Some(cut.as_slice()) == keep);
    }

    /// How many splits (or one-graph models) are open.
    pub fn open_splits(&self) -> usize {
        self.splits.len() + self.one_graphs.len()
    }

    /// Host time spent in token ops since the last call, and resets it.
    pub fn take_token_ops_time(&mut self) -> Duration {
        std::mem::take(&mut self.token_ops)
    }

    /// Number of graph parts of the split for `cut` (1 for one graph), when it is open.
    pub fn parts(&self, cut: &[ComponentId]) -> Option<usize> {
        if self.one_graphs.contains_key(cut) {
            return Some(1);
        }
        self.splits.get(cut).map(|s| s.manifest().parts.len())
    }
}

/// Tokens of a block at UNet `level`: each downsampling conv (kernel 3, stride 2,
/// padding 1) maps a side `s` to `ceil(s / 2)`, and up blocks match their skip's size.
/// Why a configuration with `r > 0` merges nothing at a `latent_hw` latent, if it does
/// not: no block holding a component it targets sits at a downsample
/// `cfg.max_downsample` allows. SDXL has no transformer block at full resolution, so
/// tomesd's default (`max_downsample = 1`) merges nothing there; the message names the
/// smallest `max_downsample` that would merge.
pub fn merges_nothing(
    blocks: &[TransformerBlock],
    latent_hw: (usize, usize),
    cfg: &TomeConfig,
) -> Option<String> {
    if !cfg.merges_anything() {
        return None;
    }
    let downsamples = blocks
        .iter()
        .filter(|b| targeted(b, cfg).next().is_some())
        .map(|b| tome::downsample(latent_hw, tokens_at_level(latent_hw, b.id.level)));
    let first = downsamples.min();
    if first.is_some_and(|ds| ds <= cfg.max_downsample) {
        return None;
    }
    let (h, w) = latent_hw;
    let hint = match first {
        Some(ds) => format!("; use max_downsample = {ds}"),
        None => "; the UNet has no transformer block with a component it targets".to_string(),
    };
    Some(format!(
        "merges nothing at a {h}x{w} latent: no transformer block at downsample <= {}{hint}",
        cfg.max_downsample
    ))
}

fn tokens_at_level(latent_hw: (usize, usize), level: usize) -> usize {
    let (mut h, mut w) = latent_hw;
    for _ in 0..level {
        (h, w) = (h.div_ceil(2), w.div_ceil(2));
    }
    h * w
}

fn targeted<'b>(
    block: &'b TransformerBlock,
    cfg: &'b TomeConfig,
) -> impl Iterator<Item = ComponentId> + 'b {
    [
        ComponentKind::Attn1,
        ComponentKind::Attn2,
        ComponentKind::Ff,
    ]
    .into_iter()
    .filter(|&kind| cfg.merges(component(kind)))
    .filter_map(|kind| block.component(kind))
}

fn component(kind: ComponentKind) -> Component {
    match kind {
        ComponentKind::Attn1 => Component::SelfAttn,
        ComponentKind::Attn2 => Component::CrossAttn,
        ComponentKind::Ff => Component::Mlp,
    }
}

/// tomesd's patched `BasicTransformerBlock`: the matching comes from the block input
/// and serves every merged component of the block.
struct MergeHooks<'a> {
    cfg: &'a TomeConfig,
    latent_hw: (usize, usize),
    rng: &'a mut PartitionRng,
    merges: HashMap<BlockId, Option<Merge>>,
    elapsed: Duration,
}

impl TokenHooks for MergeHooks<'_> {
    fn block_input(&mut self, block: &BlockId, x: ArrayView3<f32>) {
        let start = Instant::now();
        let merge = tome::block_merge(x, self.latent_hw, self.cfg, self.rng);
        self.merges.insert(*block, merge);
        self.elapsed += start.elapsed();
    }

    fn before_component(&mut self, c: &ComponentId, x: ArrayView3<f32>) -> Option<Array3<f32>> {
        let start = Instant::now();
        let merged = self.merges.get(&c.block)?.as_ref().map(|m| m.merge(x));
        self.elapsed += start.elapsed();
        merged
    }

    fn after_component(&mut self, c: &ComponentId, y: ArrayView3<f32>) -> Option<Array3<f32>> {
        let start = Instant::now();
        let unmerged = self.merges.get(&c.block)?.as_ref().map(|m| m.unmerge(y));
        self.elapsed += start.elapsed();
        unmerged
    }
}

/// The same hooks with the token ops run as graphs on the device, beside the parts:
/// the block inputs, merged and unmerged tensors never leave it (only the partition's
/// index lists, drawn on the host, go to it).
struct GraphHooks<'a> {
    ops: &'a mut GraphTokenOps,
    cfg: &'a TomeConfig,
    latent_hw: (usize, usize),
    rng: &'a mut PartitionRng,
    merges: HashMap<BlockId, Option<GraphMerge>>,
    elapsed: Duration,
}

impl ResidentHooks for GraphHooks<'_> {
    fn block_input(&mut self, block: &BlockId, x: &DynValue) -> Result<(), EngineError> {
        let start = Instant::now();
        let (batch, tokens) = match resident::dims(x).as_deref() {
            Some(&[b, n, _]) => (b, n),
            d => {
                return Err(EngineError::Unexpected {
                    model: "<tomex token ops>".into(),
                    reason: format!(
                        "block {block:?}'s input is not [batch, tokens, channels]: {d:?}"
                    ),
                })
            }
        };
        let partition = tome::block_partition(batch, tokens, self.latent_hw, self.cfg, self.rng);
        let merge = match partition {
            Some(p) => Some(self.ops.matching_value(x, &p)?),
            None => None,
        };
        self.merges.insert(*block, merge);
        self.elapsed += start.elapsed();
        Ok(())
    }

    fn before_component(
        &mut self,
        c: &ComponentId,
        x: &DynValue,
    ) -> Result<Option<DynValue>, EngineError> {
        let Some(Some(m)) = self.merges.get(&c.block) else {
            return Ok(None);
        };
        let start = Instant::now();
        let merged = self.ops.merge_value(m, x)?;
        self.elapsed += start.elapsed();
        Ok(Some(merged))
    }

    fn after_component(
        &mut self,
        c: &ComponentId,
        y: &DynValue,
    ) -> Result<Option<DynValue>, EngineError> {
        let Some(Some(m)) = self.merges.get(&c.block) else {
            return Ok(None);
        };
        let start = Instant::now();
        let unmerged = self.ops.unmerge_value(m, y)?;
        self.elapsed += start.elapsed();
        Ok(Some(unmerged))
    }
}

#[cfg(test)]
mod tests {
    use super::{merges_nothing, tokens_at_level};
    use crate::onnx::{BlockId, ComponentKind, Stage, TransformerBlock};
    use crate::tome::TomeConfig;

    /// One full transformer block (self, cross, MLP) at `level` of the down path.
    fn block_at(level: usize) -> TransformerBlock {
        TransformerBlock {
            id: BlockId {
                stage: Stage::Down,
                block: level,
                attention: 0,
                transformer: 0,
                level,
            },
            components: vec![
                ComponentKind::Attn1,
                ComponentKind::Attn2,
                ComponentKind::Ff,
            ],
        }
    }

    #[test]
    fn a_cut_without_blocks_in_reach_is_named_with_the_downsample_that_merges() {
        let half = TomeConfig {
            ratio: 0.5,
            ..TomeConfig::default()
        };
        // SD 1.x: blocks at full resolution; tomesd's default merges there.
        assert_eq!(
            merges_nothing(&[block_at(0), block_at(1)], (128, 128), &half),
            None
        );
        // SDXL: no block at full resolution, the first at downsample 2.
        let sdxl = [block_at(1), block_at(2)];
        let message = merges_nothing(&sdxl, (128, 128), &half).expect("merges nothing");
        assert!(
            message.contains("downsample <= 1; use max_downsample = 2"),
            "{message}"
        );
        let two = TomeConfig {
            max_downsample: 2,
            ..half
        };
        assert_eq!(merges_nothing(&sdxl, (128, 128), &two), None);
        // r = 0 merges nothing anywhere by design: no warning.
        let zero = TomeConfig { ratio: 0.0, ..half };
        assert_eq!(merges_nothing(&sdxl, (128, 128), &zero), None);
    }

    #[test]
    fn token_counts_follow_the_downsampling_convs() {
        assert_eq!(tokens_at_level((64, 64), 0), 4096);
        assert_eq!(tokens_at_level((96, 96), 3), 144);
        assert_eq!(tokens_at_level((10, 6), 1), 15);
        assert_eq!(tokens_at_level((7, 9), 2), 6);
    }
}
