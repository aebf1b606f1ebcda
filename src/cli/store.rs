//! `tomex store verify [--repair] STORE`: the store's own integrity check.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::metrics::Statistics;
use crate::runner::fid::{cached_statistics, drop_cached_statistics};
use crate::store::Store;

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Check every stored image against its record (digest, size, PNG), every claim
    /// log, and the cached FID statistics; exit 1 when something is wrong. With
    /// --repair, make the store consistent: damaged objects move to `damaged/`, claim
    /// logs that hold back jobs the store lacks are removed, and FID statistics are
    /// dropped when an image was repaired (they are recomputed), so the next `run`
    /// regenerates exactly what was lost. Run it with no worker on the store.
    Verify {
        /// The store's folder (a spec's `store`).
        store: PathBuf,
        #[arg(long)]
        repair: bool,
    },
}

pub fn run(cmd: StoreCommand) -> anyhow::Result<i32> {
    let StoreCommand::Verify { store, repair } = cmd;
    let opened = Store::open(&store).with_context(|| format!("store {}", store.display()))?;
    let report = opened.verify(repair)?;
    for f in &report.findings {
        match &f.action {
            Some(action) => say!("objects/{}: {} ({action})", f.key, f.problem),
            None => say!("objects/{}: {}", f.key, f.problem),
        }
    }
    // Cached FID statistics: unreadable files; all of them once an image was
    // repaired (a statistic may have been computed from the damaged image).
    let mut stats_problems = 0;
    let images_repaired = repair && report.findings.iter().any(|f| f.action.is_some());
    for path in cached_statistics(&opened) {
        if let Err(e) = Statistics::load_npz(&path) {
            stats_problems += 1;
            say!("{}: unreadable FID statistics: {e}", path.display());
            if repair && !images_repaired {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    if images_repaired {
        drop_cached_statistics(&opened)?;
    }
    let problems = report.findings.len() + stats_problems;
    say!(
        "store {}: {} objects, {} intact, {problems} problem(s){}",
        store.display(),
        report.objects,
        report.intact,
        match (problems, repair) {
            (0, _) => "",
            (_, true) => "; repaired: the next run regenerates what was lost",
            (_, false) => "; run with --repair to make the store consistent",
        }
    );
    Ok(i32::from(problems > 0 && !repair))
}
