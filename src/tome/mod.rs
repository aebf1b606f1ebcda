//! Token Merging for Stable Diffusion, as tomesd 0.1.3 does it.
//!
//! Pure numerics over `ndarray` (no ONNX Runtime, no files), in two steps as
//! in tomesd's `merge.py`:
//!
//! 1. **Matching** ([`block_merge`], tomesd's `compute_merge` +
//!    `bipartite_soft_matching_random2d`): from a transformer block's input
//!    `x` [B, N, C] (before `norm1`), split the `h × w` token grid into one dst
//!    per `sy × sx` cell and src for the rest; score every src against every
//!    dst by cosine similarity; the `r` srcs with the highest best score merge
//!    into their best dst. The result is a [`Merge`].
//! 2. **Merge / unmerge** ([`Merge::merge`], [`Merge::unmerge`]): before a
//!    merged component, [B, N, C] -> [B, N - r, C] (`cat[unmerged src, dst]`,
//!    each dst the mean of itself and its srcs); after it, [B, N - r, C] ->
//!    [B, N, C] (every merged src gets a copy of its dst's output).
//!
//! One matching serves every merged component of its block (`attn1`,
//! `attn2`, `ff`, per [`TomeConfig::merges`]); the residual adds stay at full
//! size.
//!
//! # What is reproduced exactly, and the subtle parts
//!
//! With tomesd's `no_rand` (top-left dst, [`TomeConfig::random`] off) the
//! indices and the merged tensor are tomesd's on the CPU, including the
//! *order* of tokens in the merged tensor, which comes from two `argsort`
//! calls torch makes with its unstable sort:
//!
//! * The dst | src split is `argsort` of a buffer of `-1` (dst) / `0` (src).
//!   For more than 16 tokens torch's CPU sort (libstdc++'s introsort) does not
//!   keep equal keys in index order, so the dst and the src tokens are *not*
//!   in raster order; `torch_sort` reproduces that sort step for step.
//! * The edge order is `argsort(node_max, descending=True)`, the same sort
//!   with NaN first: srcs with equal best scores are ordered as torch orders
//!   them, which matters for which srcs merge when ties straddle `r`.
//! * `scores.max(dim=-1)` takes the first dst on ties; a NaN score wins.
//! * The mean is `scatter_reduce("mean", include_self=True)`: the dst plus
//!   its srcs in edge order, summed in f32, divided by the count. Given the
//!   same indices, merge and unmerge are bit-exact.
//! * The similarities themselves are f32 dot products of unit vectors
//!   computed with another summation order than torch's sgemm, so they agree
//!   to about 1e-7; only near-ties (within that) can differ from tomesd.
//! * A batch of odd size never uses random dsts (tomesd forces `no_rand`,
//!   since the unconditional and conditional halves would differ) and draws
//!   nothing from the RNG.
//!
//! Random dsts come from tomex's [`PartitionRng`], drawn when tomesd draws
//! (see there); torch's own draws are not reproduced.

mod config;
mod matching;
mod merge;
mod partition;
mod torch_sort;

use ndarray::ArrayView3;

pub use config::{Component, Targets, TomeConfig, TomeError};
pub use matching::bipartite_soft_matching_random2d;
pub use merge::Merge;
pub use partition::PartitionRng;

/// tomesd's `compute_merge` downsample of a block with `tokens` tokens in a
/// UNet whose latent is `latent_hw` = (H0, W0): `ceil(sqrt(H0*W0 // N))`
/// (1 at full resolution, then 2, 4, 8). Computed on integers, which equals
/// the float formula for every size that fits memory.
///
/// Panics if `tokens` is 0. Returns 0 for more tokens than latent cells.
pub fn downsample(latent_hw: (usize, usize), tokens: usize) -> usize {
    assert!(tokens > 0, "a transformer block with no tokens");
    let q = latent_hw.0 * latent_hw.1 / tokens;
    let mut ds = q.isqrt();
    if ds * ds < q {
        ds += 1;
    }
    ds
}

/// How tomesd's `compute_merge` treats one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockParams {
    /// `downsample(latent_hw, N)`
    pub downsample: usize,
    /// Token grid height `ceil(H0 / downsample)`.
    pub h: usize,
    /// Token grid width `ceil(W0 / downsample)`.
    pub w: usize,
    /// Tokens to remove before the cap at the number of src tokens: `floor(N * ratio)`.
    pub r: usize,
}

/// The grid and `r` of a block with `tokens` tokens, `Ok(None)` where tomesd
/// does not merge it (nothing targeted, `ratio == 0`, a downsample above
/// `max_downsample`, or `r == 0`). Depends on shapes only, so it also tells
/// which blocks a graph must be cut at, before anything runs.
///
/// [`TomeError::GridMismatch`] where tomesd raises: `downsample` is a guess
/// from the token count, and for some small odd latents (e.g. 7×5 at the
/// third level: 4 tokens, guessed downsample 3, a 3×2 grid) the grid it
/// implies does not hold the block's tokens. Latents whose sides are
/// multiples of 8 never hit this.
pub fn block_params(
    latent_hw: (usize, usize),
    tokens: usize,
    cfg: &TomeConfig,
) -> Result<Option<BlockParams>, TomeError> {
    if !cfg.merges_anything() {
        return Ok(None);
    }
    let ds = downsample(latent_hw, tokens);
    if ds == 0 || ds > cfg.max_downsample {
        return Ok(None);
    }
    let (h, w) = (latent_hw.0.div_ceil(ds), latent_hw.1.div_ceil(ds));
    // int(x.shape[1] * ratio)
    let r = (tokens as f64 * cfg.ratio) as usize;
    if r == 0 {
        // tomesd returns before it looks at the grid
        return Ok(None);
    }
    if h * w != tokens {
        let (latent_h, latent_w) = latent_hw;
        return Err(TomeError::GridMismatch {
            latent_h,
            latent_w,
            tokens,
            downsample: ds,
            h,
            w,
        });
    }
    Ok(Some(BlockParams {
        downsample: ds,
        h,
        w,
        r,
    }))
}

/// The matching for one transformer block from its input `x` [B, N, C]
/// (before `norm1`), or `None` when the block does not merge (see
/// [`block_params`]). `cfg` should have passed [`TomeConfig::validate`]
/// (a ratio above the maximum is capped here, as tomesd does).
///
/// With `cfg.random` and an even batch, draws the block's dst cells from
/// `partition_rng` (one draw per cell, shared by the batch); otherwise the
/// top-left token of each cell is dst and nothing is drawn.
///
/// Panics where [`block_params`] is an error (where tomesd raises); check the
/// blocks' token counts with it when planning the run.
pub fn block_merge(
    x: ArrayView3<f32>,
    latent_hw: (usize, usize),
    cfg: &TomeConfig,
    partition_rng: &mut PartitionRng,
) -> Option<Merge> {
    let (batch, tokens, _) = x.dim();
    let p = block_params(latent_hw, tokens, cfg).unwrap_or_else(|e| panic!("{e}"))?;
    // tomesd: an odd batch cannot hold matching cond/uncond halves, so no_rand
    let use_rand = cfg.random && batch.is_multiple_of(2);
    let dst_cell =
        use_rand.then(|| partition_rng.dst_cells((p.h / cfg.sy) * (p.w / cfg.sx), cfg.sx * cfg.sy));
    bipartite_soft_matching_random2d(x, p.w, p.h, cfg.sx, cfg.sy, p.r, dst_cell.as_deref())
}

/// A block's partition and merge count as [`block_merge`] makes them, for
/// executors that compute the matching themselves (the graph token ops).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPartition {
    /// `a_idx`: the src token ids, in tomesd's order.
    pub src: Vec<usize>,
    /// `b_idx`: the dst token ids, in tomesd's order.
    pub dst: Vec<usize>,
    /// Tokens merged, capped at the number of src tokens (at least 1).
    pub r: usize,
}

/// The partition [`block_merge`] would use for a block input of `batch` ×
/// `tokens`, drawing the same dst cells from `partition_rng`; `None` exactly
/// where [`block_merge`] returns `None`. Panics as [`block_merge`] does.
pub fn block_partition(
    batch: usize,
    tokens: usize,
    latent_hw: (usize, usize),
    cfg: &TomeConfig,
    partition_rng: &mut PartitionRng,
) -> Option<BlockPartition> {
    let p = block_params(latent_hw, tokens, cfg).unwrap_or_else(|e| panic!("{e}"))?;
    let use_rand = cfg.random && batch.is_multiple_of(2);
    let dst_cell =
        use_rand.then(|| partition_rng.dst_cells((p.h / cfg.sy) * (p.w / cfg.sx), cfg.sx * cfg.sy));
    let part = partition::partition(p.h, p.w, cfg.sx, cfg.sy, dst_cell.as_deref());
    let r = p.r.min(part.src.len());
    (r > 0 && !part.dst.is_empty()).then_some(BlockPartition {
        src: part.src,
        dst: part.dst,
        r,
    })
}

#[cfg(test)]
mod tests;
