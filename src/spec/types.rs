//! What a validated experiment spec says, independent of TOML. `spec::load` builds it;
//! `plan` expands it into jobs.

use std::path::PathBuf;

use crate::diffusion::scheduler::SchedulerKind;
use crate::onnx::Precision;
use crate::tome::TomeConfig;

use super::errors::Problem;
use super::schema::Locations;

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
    /// `sweep.rounds`: the drawn prompts are made in this many consecutive shares,
    /// each share running every (configuration, r) cell before the next begins, so
    /// that a slow spell of the machine falls on every cell's timings alike rather
    /// than on a few cells'. 1 (the default): one share of all prompts. Images and
    /// keys do not depend on it (`plan::round_shares`).
    pub rounds: usize,
    pub configs: Vec<ConfigSpec>,
    /// Where results go (default `results/`, against the spec's folder).
    pub store: PathBuf,
    pub metrics: Metrics,
    pub report: ReportOptions,
    /// Cells (config, r) that cannot run because r exceeds the configuration's
    /// maximum; reported at load time and shown as "-" in tables, as the thesis did.
    pub skipped: Vec<SkippedCell>,
    /// What `load` found worth saying but not wrong (the skipped cells above, two
    /// configurations that merge identically); print them as `warning: {w}`.
    pub warnings: Vec<Problem>,
    /// Where every key was written (files of `extends` included), so later checks
    /// (`check_inputs`, the plan, the model lookup) can point into the spec:
    /// `spec.locations.problem("model.name", "not in models.lock")`.
    pub locations: Locations,
}

impl Spec {
    /// Whether `(config, ratio)` is a skipped cell (r above the configuration's
    /// maximum).
    pub fn is_skipped(&self, config: &str, ratio: f64) -> bool {
        self.skipped
            .iter()
            .any(|c| c.config == config && c.ratio == ratio)
    }

    /// The sweep's ratios that `config` runs (its skipped cells left out).
    pub fn ratios_of(&self, config: &str) -> Vec<f64> {
        self.ratios
            .iter()
            .copied()
            .filter(|&r| !self.is_skipped(config, r))
            .collect()
    }
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
    /// Images per UNet batch. The thesis generated one image at a time (its
    /// "batches" in experiment 3 are ToMe's sx × sy cells, not image batches), so
    /// every thesis spec uses 1.
    pub batch_size: usize,
    /// The UNet's precision (`fp16`: activations in float16, for CUDA).
    pub precision: Precision,
    /// The keys the spec leaves out that the model decides, as diffusers' pipeline
    /// does: until [`Generation::take_model_defaults`] they hold 512 and PNDM.
    pub from_model: FromModel,
}

/// Which of `width`, `height`, `scheduler` and `guidance` a spec leaves to the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FromModel {
    pub width: bool,
    pub height: bool,
    pub scheduler: bool,
    pub guidance: bool,
}

impl FromModel {
    pub fn any(&self) -> bool {
        self.width || self.height || self.scheduler || self.guidance
    }
}

impl Generation {
    /// Fills the keys the spec left out with the model's own image size (its UNet's
    /// `sample_size` times the VAE's scale factor), scheduler and guidance scale.
    pub fn take_model_defaults(&mut self, size: usize, scheduler: SchedulerKind, guidance: f32) {
        if self.from_model.width {
            self.width = size;
        }
        if self.from_model.height {
            self.height = size;
        }
        if self.from_model.scheduler {
            self.scheduler = scheduler;
        }
        if self.from_model.guidance {
            self.guidance = guidance;
        }
        self.from_model = FromModel::default();
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PromptSource {
    /// CSV file (resolved against the spec's folder).
    pub file: PathBuf,
    pub column: String,
    /// How many prompts to draw; all, in file order, when `None`.
    pub sample: Option<usize>,
    /// Seed of the draw (numpy-compatible, see `plan`); at most 2^32 - 1, numpy's
    /// seed range.
    pub sampling_seed: u64,
    /// Draw with replacement, as the thesis's `np.random.randint(0, n, sample)`
    /// did (default); without replacement `sample` may not exceed the prompts.
    pub replace: bool,
    /// The thesis's cut of prompts over 300 characters.
    pub cut_long_prompts: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SeedSource {
    /// One image seed per prompt, drawn like the thesis's
    /// `np.random.randint(0, 4294967295, n)` from this seed (a stream of its own,
    /// not continuing the prompt draw, so a spec sampling 1000 prompts shares its
    /// first 500 prompt/seed pairs with one sampling 500 under the same seeds).
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

/// The `models.lock` name of pytorch-fid's Inception, `[metrics] inception`'s default.
pub const DEFAULT_INCEPTION: &str = "inception-fid";

#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    pub fid: bool,
    /// Inception model for FID: a `models.lock` name, or an `.onnx` file (then
    /// already resolved against the spec's folder); `None` when `fid` is off.
    pub inception: Option<String>,
    pub fid_dims: usize,
    pub paired: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReportOptions {
    /// Prompts shown in image grids (0: no grids).
    pub grid_prompts: usize,
    /// Output kinds, a subset of [`ReportOptions::FORMATS`], in the spec's order.
    pub formats: Vec<String>,
    /// The thesis's data table (7 to 13, `thesis/tables.csv`) that this spec
    /// reproduces; reports can set its numbers beside ours (configs are matched by
    /// `label`, which the thesis specs set to the table's series names).
    pub thesis_table: Option<u32>,
}

impl ReportOptions {
    /// Every output kind a report can render.
    pub const FORMATS: [&'static str; 5] = ["png", "svg", "md", "csv", "tex"];
}

#[derive(Clone, Debug, PartialEq)]
pub struct SkippedCell {
    pub config: String,
    pub ratio: f64,
    pub max_ratio: f64,
}
