//! `tomex report SPEC`: the spec's tables, figure, grids and summary from the
//! store alone (what is stored; the summary lists what is missing), with FID computed
//! from the stored images when the spec asks for it (nothing is generated).

use std::path::PathBuf;

use clap::Args;

use super::fid_step::finish_and_say;
use super::Global;
use crate::engine::{Device, Runtime};
use crate::report::default_dir;
use crate::runner::fid::resolve_inception;
use crate::runner::finish::FidStep;
use crate::runner::prepare;

#[derive(Args)]
pub struct ReportArgs {
    /// The experiment spec (TOML).
    pub spec: PathBuf,
    /// Results directory (default: the spec's `store`).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Report folder (default: <store>/reports/<spec name>/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the FID Inception runs (when the spec computes FID): cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
}

pub fn run(global: &Global, args: ReportArgs) -> anyhow::Result<()> {
    let prepared = prepare(&args.spec, global.lock.as_deref(), false)?;
    for warning in &prepared.spec.warnings {
        eprintln!("warning: {warning}");
    }
    if prepared.plan.is_provisional() {
        eprintln!(
            "warning: the spec's model is unknown, so job keys are provisional and stored images may not be found"
        );
    }
    let (_, store) = crate::runner::open_store(&prepared.spec, args.store.as_deref())?;
    let report_dir = args
        .out
        .clone()
        .unwrap_or_else(|| default_dir(&store, &prepared.spec.name));
    // FID from stored images only; the rest of the report renders even when it fails.
    let runtime;
    let inception;
    let fid = if !prepared.spec.metrics.fid {
        FidStep::NotAsked
    } else {
        match resolve_inception(&prepared.spec, global.lock.as_deref())
            .and_then(|i| Ok((Runtime::new(global.ort_lib.as_deref(), args.device)?, i)))
        {
            Ok((r, i)) => {
                (runtime, inception) = (r, i);
                FidStep::Measure {
                    runtime: &runtime,
                    inception: &inception,
                }
            }
            Err(e) => FidStep::Unavailable(e),
        }
    };
    let finished = finish_and_say(&prepared, &store, &report_dir, fid, false);
    let rendered = finished.rendered?;
    say!(
        "report of `{}`: {} files in {}",
        prepared.spec.name,
        rendered.files.len(),
        rendered.dir.display()
    );
    if rendered.missing > 0 {
        say!(
            "partial: {} planned images are not stored (listed in summary.md)",
            rendered.missing
        );
    }
    if let Some(e) = finished.fid.error() {
        return Err(
            anyhow::Error::from(e).context("the report was rendered without these FID values")
        );
    }
    if let Err(e) = finished.paired {
        return Err(anyhow::Error::from(e)
            .context("the report was rendered without the new PSNR/SSIM values"));
    }
    Ok(())
}
