//! `tomex run SPEC`: generate, time and store every image the spec needs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::fid_step::finish_and_say;
use super::Global;
use crate::diffusion::pipeline::StableDiffusion;
use crate::engine::{Device, Runtime};
use crate::plan::Shard;
use crate::runner::fid::resolve_inception;
use crate::runner::finish::FidStep;
use crate::runner::{execute, prepare, JobError, RunObserver, Summary};

#[derive(Args)]
pub struct RunArgs {
    /// The experiment spec (TOML).
    pub spec: PathBuf,
    /// Results directory (default: the spec's `store`).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// This worker's slice, `i/n` (default: SLURM_ARRAY_TASK_ID/COUNT, else all).
    #[arg(long)]
    pub shard: Option<Shard>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// No progress bar; only the summary.
    #[arg(long)]
    pub quiet: bool,
}

/// `--shard`, else SLURM's array variables, else everything.
pub fn shard(flag: Option<Shard>) -> anyhow::Result<Shard> {
    Ok(match flag {
        Some(s) => s,
        None => Shard::from_env()?.unwrap_or(Shard::ALL),
    })
}

pub fn run(global: &Global, args: RunArgs) -> anyhow::Result<()> {
    let prepared = prepare(&args.spec, global.lock.as_deref(), true)?;
    for warning in &prepared.spec.warnings {
        eprintln!("warning: {warning}");
    }
    // Checked before generating: a missing network is found in seconds, not after hours.
    let inception = if prepared.spec.metrics.fid {
        Some(resolve_inception(&prepared.spec, global.lock.as_deref())?)
    } else {
        None
    };
    let shard = shard(args.shard)?;
    let (store_dir, store) = crate::runner::open_store(&prepared.spec, args.store.as_deref())?;
    let model = prepared
        .model_dir()
        .expect("strict preparation checks the model");
    let runtime = Runtime::new(global.ort_lib.as_deref(), args.device)?;
    let precision = prepared.spec.generation.precision;
    if let Some(flag) = global.precision.filter(|&p| p != precision) {
        bail!(
            "--precision {flag} contradicts {}: its [generation] precision is {precision} (the spec decides what `tomex run` makes; drop --precision)",
            prepared.spec.path.display()
        );
    }
    let options = global.unet_options(args.device, precision)?;
    let mut sd = StableDiffusion::load_with(&runtime, model, options)?;
    sd.set_token_ops(global.token_ops(args.device))?;
    super::note_precision(args.device, precision);
    for (softmax, why) in &sd.fusion().skipped {
        eprintln!("note: attention at `{softmax}` runs as exported: {why}");
    }
    let mut observer = Progress::new(args.quiet);
    let summary = execute(&prepared, &store, shard, &runtime, &mut sd, &mut observer)?;
    observer.finish();
    let (manifest, rows) = store.write_manifest_for(&prepared.plan, None)?;
    print_summary(&prepared.spec.name, shard, &summary);
    say!(
        "store: {} (manifest: {}, {rows} rows)",
        store_dir.display(),
        manifest.display()
    );
    let report_dir = crate::report::default_dir(&store, &prepared.spec.name);
    let fid = match &inception {
        None => FidStep::NotAsked,
        // A shard holds part of every set; FID waits for all of them.
        Some(_) if shard.count > 1 => FidStep::Deferred(format!(
            "FID is not computed by a shard's run (its sets are partial); run `tomex report {}` when every shard is done",
            args.spec.display()
        )),
        Some(inception) => FidStep::Measure {
            runtime: &runtime,
            inception,
        },
    };
    // The report renders whatever is stored, so a shard's run shows its partial view.
    let finished = finish_and_say(&prepared, &store, &report_dir, fid, args.quiet);
    match finished.rendered {
        Ok(r) => say!("report: {} files in {}", r.files.len(), r.dir.display()),
        Err(e) => eprintln!("warning: the report could not be rendered: {e:#}"),
    }
    if !summary.failed.is_empty() {
        bail!(
            "{} job(s) failed; their errors are in the store and they are retried on the next run",
            summary.failed.len()
        );
    }
    if let Some(e) = finished.fid.error() {
        return Err(anyhow::Error::from(e).context(
            "the images are stored; after fixing this, `tomex report` computes FID from them",
        ));
    }
    Ok(())
}

fn print_summary(spec: &str, shard: Shard, s: &Summary) {
    let shard = if shard.count > 1 {
        format!(" (shard {shard})")
    } else {
        String::new()
    };
    say!(
        "{spec}{shard}: {} jobs: {} generated, {} already stored, {} done by other workers, {} held by other workers, {} failed",
        s.planned,
        s.generated,
        s.already_stored,
        s.done_elsewhere,
        s.held_elsewhere,
        s.failed.len()
    );
    for f in &s.failed {
        let key = &f.key[..12.min(f.key.len())];
        say!("  failed {key} ({}): {}", f.label, f.error);
    }
}

/// A progress bar with ETA and the current configuration and r, on stderr.
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        let bar = ProgressBar::hidden();
        if !quiet {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} images, ETA {eta} | {msg}")
                    .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(500));
        }
        Progress { bar }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl RunObserver for Progress {
    fn start(&mut self, todo: usize) {
        self.bar.set_length(todo as u64);
    }

    fn job_started(&mut self, label: &str) {
        self.bar.set_message(label.to_string());
    }

    fn job_finished(&mut self, outcome: &Result<f64, JobError>) {
        if let Err(e) = outcome {
            self.bar.println(format!("failed: {e}"));
        }
        self.bar.inc(1);
    }

    fn warning(&mut self, message: &str) {
        // Shown even with --quiet: it says the run will not measure what was asked.
        eprintln!("warning: {message}");
    }
}
