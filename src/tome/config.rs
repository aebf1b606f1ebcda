//! What a ToMe run merges: tomesd's `apply_patch` arguments.

use serde::{Deserialize, Serialize};

/// Which components of a `BasicTransformerBlock` see merged tokens
/// (tomesd's `merge_attn`, `merge_crossattn`, `merge_mlp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Targets {
    pub self_attn: bool,
    pub cross_attn: bool,
    pub mlp: bool,
}

impl Default for Targets {
    /// tomesd's default: self-attention only.
    fn default() -> Self {
        Targets {
            self_attn: true,
            cross_attn: false,
            mlp: false,
        }
    }
}

/// One component of a `BasicTransformerBlock`, named after its diffusers module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Component {
    /// `attn1`
    SelfAttn,
    /// `attn2`
    CrossAttn,
    /// `ff`
    Mlp,
}

impl Component {
    /// In the order a block runs them.
    pub const ALL: [Component; 3] = [Component::SelfAttn, Component::CrossAttn, Component::Mlp];

    /// The diffusers module name, as it appears in exported node names
    /// (`.../transformer_blocks.0/attn1/...`).
    pub fn module_name(self) -> &'static str {
        match self {
            Component::SelfAttn => "attn1",
            Component::CrossAttn => "attn2",
            Component::Mlp => "ff",
        }
    }
}

/// tomesd's `apply_patch` arguments, plus the seed of tomex's own partition RNG.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TomeConfig {
    /// Fraction of a block's tokens to remove, `r = floor(N * ratio)`.
    pub ratio: f64,
    pub targets: Targets,
    /// Width of a dst cell in tokens.
    pub sx: usize,
    /// Height of a dst cell in tokens.
    pub sy: usize,
    /// tomesd's `use_rand`: a random dst per cell instead of the top-left one.
    pub random: bool,
    /// Seed of the [`PartitionRng`](super::PartitionRng) for random dst cells.
    pub seed: u64,
    /// Merge only in blocks whose tokens are downsampled at most this much
    /// from the latent (1, 2, 4 or 8).
    pub max_downsample: usize,
}

impl Default for TomeConfig {
    /// tomesd 0.1.3's `apply_patch` defaults (seed 0 is tomex's).
    fn default() -> Self {
        TomeConfig {
            ratio: 0.5,
            targets: Targets::default(),
            sx: 2,
            sy: 2,
            random: true,
            seed: 0,
            max_downsample: 1,
        }
    }
}

/// A [`TomeConfig`] that tomesd would not run as written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TomeError {
    #[error(
        "ToMe ratio {ratio} is out of range: it must be between 0 and {max} \
         (1 - 1/(sx*sy) with sx = {sx}, sy = {sy}); tomesd would silently merge only {max}"
    )]
    RatioOutOfRange {
        ratio: f64,
        max: f64,
        sx: usize,
        sy: usize,
    },
    #[error("ToMe strides must be at least 1, got sx = {sx}, sy = {sy}")]
    ZeroStride { sx: usize, sy: usize },
    #[error("ToMe max_downsample must be 1, 2, 4 or 8, got {0}")]
    MaxDownsample(usize),
    #[error(
        "ToMe cannot merge a block of {tokens} tokens in a {latent_h}x{latent_w} latent: tomesd's \
         downsample ceil(sqrt({latent_h}*{latent_w} // {tokens})) = {downsample} gives a {h}x{w} token \
         grid, which does not hold {tokens} tokens (tomesd raises here); use max_downsample below \
         {downsample} or a larger latent"
    )]
    GridMismatch {
        latent_h: usize,
        latent_w: usize,
        tokens: usize,
        downsample: usize,
        h: usize,
        w: usize,
    },
}

impl TomeConfig {
    /// The largest ratio tomesd can honour: every cell keeps its dst, so at
    /// most `1 - 1/(sx*sy)` of the tokens can go (`r` is capped at the
    /// number of src tokens).
    pub fn max_ratio(&self) -> f64 {
        1.0 - 1.0 / (self.sx * self.sy) as f64
    }

    /// Rejects what tomesd would silently cap or crash on.
    pub fn validate(&self) -> Result<(), TomeError> {
        let (sx, sy) = (self.sx, self.sy);
        if sx == 0 || sy == 0 {
            return Err(TomeError::ZeroStride { sx, sy });
        }
        let max = self.max_ratio();
        if !(0.0..=max).contains(&self.ratio) {
            return Err(TomeError::RatioOutOfRange {
                ratio: self.ratio,
                max,
                sx,
                sy,
            });
        }
        if ![1, 2, 4, 8].contains(&self.max_downsample) {
            return Err(TomeError::MaxDownsample(self.max_downsample));
        }
        Ok(())
    }

    /// Whether any component of any block sees fewer tokens (`ratio > 0` and
    /// some target). When not, the UNet runs uncut.
    pub fn merges_anything(&self) -> bool {
        Component::ALL.into_iter().any(|c| self.merges(c))
    }

    /// Whether `c` sees merged tokens in eligible blocks.
    pub fn merges(&self, c: Component) -> bool {
        let targeted = match c {
            Component::SelfAttn => self.targets.self_attn,
            Component::CrossAttn => self.targets.cross_attn,
            Component::Mlp => self.targets.mlp,
        };
        targeted && self.ratio > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_tomesds() {
        let c = TomeConfig::default();
        assert_eq!(
            (c.ratio, c.sx, c.sy, c.random, c.max_downsample),
            (0.5, 2, 2, true, 1)
        );
        assert_eq!(
            c.targets,
            Targets {
                self_attn: true,
                cross_attn: false,
                mlp: false
            }
        );
        assert_eq!(c.max_ratio(), 0.75);
        assert!(c.validate().is_ok());
        assert!(
            c.merges(Component::SelfAttn)
                && !c.merges(Component::CrossAttn)
                && !c.merges(Component::Mlp)
        );
    }

    #[test]
    fn nothing_merges_at_ratio_zero_or_without_targets() {
        let zero = TomeConfig {
            ratio: 0.0,
            ..Default::default()
        };
        assert!(zero.validate().is_ok() && !zero.merges_anything());
        let none = TomeConfig {
            targets: Targets {
                self_attn: false,
                cross_attn: false,
                mlp: false,
            },
            ..Default::default()
        };
        assert!(!none.merges_anything());
        let mlp = TomeConfig {
            targets: Targets {
                self_attn: false,
                cross_attn: false,
                mlp: true,
            },
            ..Default::default()
        };
        assert!(mlp.merges_anything() && mlp.merges(Component::Mlp));
    }
}
