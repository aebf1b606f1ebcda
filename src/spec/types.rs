//! What a validated experiment spec says, independent of TOML. `spec::load` builds it;
//! `plan` expands it into jobs.

use std::path::PathBuf;

use crate::diffusion::scheduler::SchedulerKind;
use crate::tome::TomeConfig;

/// One experiment: a model, a generation setting, prompts × seeds, a sweep over r
/// and the ToMe configurations to compare.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The spec file (after `extends` is resolved, the file that was named).
    pub path: PathBuf,
    /// `name`, else the file stem; names the spec's report folder.
    pub name: String,
    pub description: String,
    /// A `models.lock` name or a model directory (resolved against the spec's folder).
    pub model: ModelRef,
    pub generation: Generation,
    pub prompts: PromptSource,
    pub seeds: SeedSource,
    /// The r values to sweep, ascending, each in [0, 1); 0 is the baseline every
    /// configuration shares.
    pub ratios: Vec<f64>,
    pub configs: Vec<ConfigSpec>,
    /// Where results go (default `results/`, against the spec's folder).
    pub store: PathBuf,
    pub metrics: Metrics,
    pub report: ReportOptions,
    /// Cells (config, r) that cannot run because r exceeds the configuration's
    /// maximum; reported at load time and shown as "-" in tables, as the thesis did.
    pub skipped: Vec<SkippedCell>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelRef {
    LockName(String),
    Dir(PathBuf),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance: f32,
    pub scheduler: SchedulerKind,
    pub negative_prompt: String,
    /// Images per UNet batch (the thesis's `3_batches` experiment); 1 otherwise.
    pub batch_size: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PromptSource {
    /// CSV file (resolved against the spec's folder).
    pub file: PathBuf,
    pub column: String,
    /// How many prompts to draw; all, in file order, when `None`.
    pub sample: Option<usize>,
    /// Seed of the draw (numpy-compatible, see `plan`).
    pub sampling_seed: u64,
    /// The thesis's cut of prompts over 300 characters.
    pub cut_long_prompts: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SeedSource {
    /// One image seed per prompt, drawn like the thesis's
    /// `np.random.randint(0, 4294967295, n)` from this seed.
    Drawn { seed: u64 },
    /// Explicit image seeds, one per prompt (cycled when fewer).
    Listed(Vec<u64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConfigSpec {
    /// Identifier used in file names and tables.
    pub name: String,
    /// Legend text in figures.
    pub label: String,
    /// Line colour in figures, `#rrggbb`.
    pub color: String,
    /// The ToMe settings; its `ratio` is replaced by each r of the sweep.
    pub tome: TomeConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    pub fid: bool,
    /// Inception model for FID (a `models.lock` name or an ONNX file).
    pub inception: Option<String>,
    pub fid_dims: usize,
    pub paired: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReportOptions {
    /// Prompts shown in image grids.
    pub grid_prompts: usize,
    pub formats: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SkippedCell {
    pub config: String,
    pub ratio: f64,
    pub max_ratio: f64,
}
