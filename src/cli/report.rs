//! `tomex report SPEC`: the spec's tables, figure, grids and summary from the
//! store alone (what is stored; the summary lists what is missing).

use std::path::PathBuf;

use clap::Args;

use super::Global;
use crate::report::render_spec;
use crate::runner::prepare;
use crate::store::Store;

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
    let store_dir = args
        .store
        .clone()
        .unwrap_or_else(|| prepared.spec.store.clone());
    let store = Store::open(&store_dir)?;
    let rendered = render_spec(&prepared, &store, args.out.as_deref())?;
    println!(
        "report of `{}`: {} files in {}",
        prepared.spec.name,
        rendered.files.len(),
        rendered.dir.display()
    );
    if rendered.missing > 0 {
        println!(
            "partial: {} planned images are not stored (listed in summary.md)",
            rendered.missing
        );
    }
    Ok(())
}
