//! `tomex plan SPEC`: what a run would do, without the model if need be.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;

use super::Global;
use crate::plan::{NormalTome, Shard};
use crate::runner::{prepare, ModelStatus, Prepared, PromptStatus};
use crate::store::Store;

#[derive(Args)]
pub struct PlanArgs {
    /// The experiment spec (TOML).
    pub spec: PathBuf,
    /// Results directory (default: the spec's `store`).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// This worker's slice, `i/n` (default: SLURM_ARRAY_TASK_ID/COUNT, else all).
    #[arg(long)]
    pub shard: Option<Shard>,
}

pub fn run(global: &Global, args: PlanArgs) -> anyhow::Result<()> {
    let prepared = prepare(&args.spec, global.lock.as_deref(), false)?;
    let spec = &prepared.spec;
    for warning in &spec.warnings {
        eprintln!("warning: {warning}");
    }
    let shard = super::run::shard(args.shard)?;
    say!("spec `{}` ({})", spec.name, spec.path.display());
    match &prepared.model {
        ModelStatus::Ready { dir, .. } => say!("  model: {}", dir.root.display()),
        ModelStatus::Pinned { note, .. } => say!("  model: {note}"),
        ModelStatus::Missing(note) => say!("  model: {note} (job keys are provisional)"),
    }
    match &prepared.prompts {
        PromptStatus::Read(n) => say!(
            "  prompts: {} ({n} in column `{}`)",
            spec.prompts.file.display(),
            spec.prompts.column
        ),
        PromptStatus::Missing(note) => say!("  prompts: {note}"),
    }
    let plan = &prepared.plan;
    for warning in cuts_that_merge_nothing(&prepared) {
        eprintln!("warning: {warning}");
    }
    let jobs = plan.shard(shard);
    say!(
        "jobs: {} unique for {} cells ({} configurations x {} ratios x {} prompts, r = 0 shared){}{}",
        plan.len(),
        plan.cell_count(),
        spec.configs.len(),
        spec.ratios.len(),
        spec.prompts
            .sample
            .map_or("all".to_string(), |n| n.to_string()),
        if spec.rounds > 1 {
            format!(", in {} rounds (sweep.rounds)", spec.rounds)
        } else {
            String::new()
        },
        if shard.count > 1 {
            format!("; shard {shard}: {}", jobs.len())
        } else {
            String::new()
        }
    );
    let store_dir = crate::runner::store_dir(spec, args.store.as_deref())?;
    if !store_dir.join("objects").is_dir() {
        let what = if store_dir.is_dir() {
            "holds no tomex store yet"
        } else {
            "does not exist"
        };
        say!(
            "stored: none yet ({} {what}); to run: {}",
            store_dir.display(),
            jobs.len()
        );
        say!("estimate: no timings stored yet");
        return Ok(());
    }
    let store = Store::open(&store_dir)?;
    let counts = store.counts(jobs.iter().copied());
    for (key, why) in &counts.damaged {
        eprintln!("warning: {}", Store::damage_message(key, why));
    }
    say!(
        "stored: {}, failed earlier (retried on the next run): {}, to run: {}",
        counts.done,
        counts.failed,
        counts.failed + counts.todo
    );

    // Mean wall time per ToMe setting among stored jobs of this plan.
    let mut by_tome: HashMap<String, (f64, usize)> = HashMap::new();
    for job in &jobs {
        if let Ok(Some(record)) = store.record(&job.key) {
            let e = by_tome.entry(tome_key(&job.material.tome)).or_default();
            e.0 += record.timings.wall_s;
            e.1 += 1;
        }
    }
    let (all_s, all_n) = by_tome
        .values()
        .fold((0.0, 0), |(s, n), (s2, n2)| (s + s2, n + n2));
    if all_n == 0 {
        say!("estimate: no timings stored yet");
        return Ok(());
    }
    let mean_all = all_s / all_n as f64;
    let estimate: f64 = jobs
        .iter()
        .filter(|j| !store.is_done(&j.key))
        .map(|j| {
            by_tome
                .get(&tome_key(&j.material.tome))
                .map_or(mean_all, |(s, n)| s / *n as f64)
        })
        .sum();
    say!(
        "estimate: {} (from {all_n} stored images, mean {mean_all:.2} s/image)",
        hms(estimate)
    );
    Ok(())
}

fn tome_key(tome: &Option<NormalTome>) -> String {
    format!("{tome:?}")
}

fn hms(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, s) => format!("{m} min {s} s"),
        (h, m, _) => format!("{h} h {m} min"),
    }
}

/// A warning for each configuration that merges nothing at the spec's size (no
/// transformer block within its `max_downsample`), read from the model's UNet graph
/// when the model is here.
fn cuts_that_merge_nothing(prepared: &Prepared) -> Vec<String> {
    let unet = match &prepared.model {
        ModelStatus::Ready { dir, .. } => Some(dir.unet.clone()),
        ModelStatus::Pinned {
            dir: Some(path), ..
        } => crate::model::ModelDir::open(path).ok().map(|d| d.unet),
        _ => None,
    };
    let Some(unet) = unet else {
        return Vec::new();
    };
    let Ok(blocks) = crate::engine::transformer_blocks(&unet) else {
        return Vec::new(); // `run` reports an unreadable graph where it matters
    };
    let mut warned = Vec::new();
    let mut out = Vec::new();
    for job in prepared.plan.jobs() {
        let (Some(cfg), Some(cell)) = (job.material.tome_config(), job.cells.first()) else {
            continue;
        };
        if warned.contains(&cell.config) {
            continue;
        }
        let latent_hw = (job.material.height / 8, job.material.width / 8);
        if let Some(why) = crate::engine::merges_nothing(&blocks, latent_hw, &cfg) {
            out.push(format!("configuration `{}` {why}", cell.config));
            warned.push(cell.config.clone());
        }
    }
    out
}
