//! Expanding a [`Spec`] into jobs: one image each, keyed by the digest of what
//! determines it, deduplicated across configurations and specs, and sliced into
//! shards for concurrent workers.
//!
//! A spec's cells are prompt × r × configuration: for each prompt `i` of
//! [`prompts::draw`] (with its image seed), each `r` of the sweep and each
//! configuration, skipping the cells the spec lists in `skipped` (r above the
//! configuration's maximum, shown as "-" in tables, as the thesis did). A cell
//! becomes a [`JobMaterial`]: the model identity, the prompt after the cut rule,
//! negative prompt, seed, size, steps, scheduler, guidance, batch size and the
//! ToMe configuration normalised at that `r` ([`NormalTome::of`]):
//!
//! * `r = 0`, or a configuration that merges no component, is "no ToMe": the same
//!   job for every configuration;
//! * the partition seed counts only when the partition is random;
//! * floats are keyed by their shortest decimal text, so `0.3` from one spec and
//!   `0.3` from another are the same ratio.
//!
//! The job's key is the SHA-256 of the material's canonical JSON ([`key`]); the
//! plan holds each key once, with every cell that uses it, in the order the
//! cells were expanded: configuration, then r, then prompt, within each of the
//! spec's `sweep.rounds` consecutive shares of the prompts ([`round_shares`]; one
//! share unless the spec asks for more). The shared `r = 0` jobs come first (the
//! first configuration's), then each configuration's merged cells: one UNet
//! switch per configuration and round, as r changes the ToMe cut only where a
//! level merges nothing at one r and something at another. So the thesis's
//! experiment 4 (three configurations × r = 0…0.6 × 1000 prompts, the 1×2
//! configuration stopping at its maximum 0.5) is 1000 × 18 jobs: one shared
//! `r = 0` image and 6 + 6 + 5 merged ones per prompt, not 1000 × 21.

pub mod key;
pub mod numpy;
pub mod prompts;
pub mod shard;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

pub use key::{JobMaterial, ModelIdentity, NormalTome, KEY_FORMAT};
pub use numpy::NumpyRandomState;
pub use prompts::{DrawnPrompt, PromptError};
pub use shard::{Shard, ShardError};

use crate::onnx::Precision;
use crate::spec::{ModelRef, SkippedCell, Spec};

/// One use of a job by a spec: the configuration, the ratio and the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// The spec's name.
    pub spec: String,
    /// The configuration's name.
    pub config: String,
    pub ratio: f64,
    /// Index of the prompt in the spec's drawn prompts (0..sample).
    pub prompt_index: usize,
    /// Row of the prompt in the prompt file.
    pub row: usize,
}

/// A unique image to make, and every cell that uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// [`JobMaterial::key`] of `material`.
    pub key: String,
    pub material: JobMaterial,
    pub cells: Vec<Cell>,
}

/// The unique jobs of one or more specs.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    jobs: Vec<Job>,
    index: HashMap<String, usize>,
    /// Cells not planned because r exceeds the configuration's maximum, with the
    /// spec they belong to.
    pub skipped: Vec<(String, SkippedCell)>,
}

impl Plan {
    pub fn new() -> Plan {
        Plan::default()
    }

    /// The unique jobs, in the order their first cell was planned.
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn job(&self, key: &str) -> Option<&Job> {
        self.index.get(key).map(|&i| &self.jobs[i])
    }

    /// Cells over all jobs (a job used by three configurations counts three times).
    pub fn cell_count(&self) -> usize {
        self.jobs.iter().map(|j| j.cells.len()).sum()
    }

    /// Whether any key was made without the model's file digests.
    pub fn is_provisional(&self) -> bool {
        self.jobs.iter().any(|j| j.material.is_provisional())
    }

    /// Adds one cell, as a new job or to the job with the same key.
    pub fn add(&mut self, material: JobMaterial, cell: Cell) {
        let key = material.key();
        self.add_keyed(key, material, vec![cell]);
    }

    fn add_keyed(&mut self, key: String, material: JobMaterial, cells: Vec<Cell>) {
        match self.index.get(&key) {
            Some(&i) => {
                let job = &mut self.jobs[i];
                for cell in cells {
                    if !job.cells.contains(&cell) {
                        job.cells.push(cell);
                    }
                }
            }
            None => {
                self.index.insert(key.clone(), self.jobs.len());
                self.jobs.push(Job {
                    key,
                    material,
                    cells,
                });
            }
        }
    }

    /// Adds `other`'s jobs: identical jobs of two specs become one job with the
    /// cells of both.
    pub fn merge(&mut self, other: Plan) {
        for job in other.jobs {
            self.add_keyed(job.key, job.material, job.cells);
        }
        self.skipped.extend(other.skipped);
    }

    /// The jobs of one shard, in plan order (see [`shard`] for the rule).
    pub fn shard(&self, shard: Shard) -> Vec<&Job> {
        let mut order: Vec<usize> = (0..self.jobs.len()).collect();
        order.sort_by(|&a, &b| self.jobs[a].key.cmp(&self.jobs[b].key));
        let mut mine = vec![false; self.jobs.len()];
        for (rank, &i) in order.iter().enumerate() {
            mine[i] = shard.holds_rank(rank);
        }
        self.jobs
            .iter()
            .zip(mine)
            .filter_map(|(job, m)| m.then_some(job))
            .collect()
    }
}

/// A spec whose prompts or seeds cannot be drawn.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("spec `{spec}`: {problem}")]
pub struct PlanError {
    pub spec: String,
    /// Not a `#[source]`: the message already says it, once.
    pub problem: PromptError,
}

/// The model identity for keys: the lock's (or the caller's) file digests, else
/// [`ModelIdentity::Unresolved`] naming the spec's model.
pub fn model_identity(spec: &Spec, files: Option<&BTreeMap<String, String>>) -> ModelIdentity {
    match files {
        Some(files) => ModelIdentity::from_files(files),
        None => ModelIdentity::Unresolved(match &spec.model {
            ModelRef::LockName(name) => format!("lock:{name}"),
            ModelRef::Dir(dir) => format!("dir:{}", dir.display()),
        }),
    }
}

/// Expands `spec` over `all_prompts` (every prompt of its prompt file, see
/// [`crate::spec::read_prompts`]): draws the prompts and seeds, then
/// [`expand_drawn`]. `model_files` are the model's file digests (path →
/// `sha256:<hex>`); without them the keys are provisional.
pub fn expand(
    spec: &Spec,
    model_files: Option<&BTreeMap<String, String>>,
    all_prompts: &[String],
) -> Result<Plan, PlanError> {
    let drawn =
        prompts::draw(&spec.prompts, &spec.seeds, all_prompts).map_err(|problem| PlanError {
            spec: spec.name.clone(),
            problem,
        })?;
    Ok(expand_drawn(
        spec,
        &model_identity(spec, model_files),
        &drawn,
    ))
}

/// Expands `spec` over prompts already drawn.
pub fn expand_drawn(spec: &Spec, model: &ModelIdentity, prompts: &[DrawnPrompt]) -> Plan {
    let g = &spec.generation;
    let mut plan = Plan::new();
    plan.skipped = spec
        .skipped
        .iter()
        .map(|s| (spec.name.clone(), s.clone()))
        .collect();
    for share in round_shares(prompts.len(), spec.rounds) {
        for config in &spec.configs {
            for &ratio in &spec.ratios {
                if spec.is_skipped(&config.name, ratio) || ratio > config.tome.max_ratio() {
                    continue;
                }
                let tome = NormalTome::of(&config.tome, ratio);
                for prompt_index in share.clone() {
                    let p = &prompts[prompt_index];
                    let material = JobMaterial {
                        format: KEY_FORMAT,
                        model: model.clone(),
                        prompt: p.prompt.clone(),
                        negative_prompt: g.negative_prompt.clone(),
                        seed: p.seed,
                        width: g.width,
                        height: g.height,
                        steps: g.steps,
                        scheduler: g.scheduler.name().to_string(),
                        guidance: key::f32_to_canonical_f64(g.guidance),
                        batch_size: g.batch_size,
                        precision: (g.precision != Precision::Fp32)
                            .then(|| g.precision.name().to_string()),
                        tome: tome.clone(),
                    };
                    plan.add(
                        material,
                        Cell {
                            spec: spec.name.clone(),
                            config: config.name.clone(),
                            ratio,
                            prompt_index,
                            row: p.row,
                        },
                    );
                }
            }
        }
    }
    plan
}

/// The prompt indices of each round: `rounds` consecutive shares of `0..prompts`
/// whose sizes differ by at most one, none empty; one share of all prompts when
/// `rounds` is 1, one prompt each when `rounds` exceeds them.
pub fn round_shares(prompts: usize, rounds: usize) -> Vec<std::ops::Range<usize>> {
    let rounds = rounds.clamp(1, prompts.max(1));
    (0..rounds)
        .map(|k| k * prompts / rounds..(k + 1) * prompts / rounds)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::round_shares;
    use std::ops::Range;

    #[test]
    fn round_shares_cover_every_prompt_once_in_order() {
        assert_eq!(round_shares(64, 1), vec![Range { start: 0, end: 64 }]);
        assert_eq!(round_shares(64, 4), [0..16, 16..32, 32..48, 48..64]);
        assert_eq!(round_shares(10, 4), [0..2, 2..5, 5..7, 7..10]);
        assert_eq!(round_shares(3, 8), [0..1, 1..2, 2..3]);
        assert_eq!(round_shares(0, 4), vec![Range { start: 0, end: 0 }]);
    }
}
