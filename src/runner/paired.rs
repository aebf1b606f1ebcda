//! The paired-metric step: PSNR and SSIM (`crate::metrics::paired`) of every stored
//! r > 0 image against its stored r = 0 twin, into the report folder's `paired.csv`.
//! Store keys name image content, so a pair's values never change: only pairs the file
//! does not hold yet are computed, in parallel. A pair with a damaged image (one whose
//! digest is not its record's, or that does not decode: damage at the same size, which the
//! cheap `is_done` check does not see) is left out, counted for a warning, and never
//! cached.

use std::path::Path;

use rayon::prelude::*;

use super::RunnerError;

use crate::metrics::paired::{paired, Paired};
use crate::plan::{Job, Plan};
use crate::report::model::{ratio_key, CellJobs, PairedCache};
use crate::report::PAIRED_FILE;
use crate::spec::Spec;
use crate::store::Store;

/// What [`update_paired`] did.
#[derive(Debug, Default, PartialEq)]
pub struct PairedUpdate {
    /// Pairs computed now.
    pub computed: usize,
    /// Pairs left out because an image is damaged (not what its record says).
    pub damaged: usize,
}

/// Computes the paired metrics of `spec`'s stored pairs that `<dir>/paired.csv` lacks and
/// rewrites the file (atomically) with them.
pub fn update_paired(
    spec: &Spec,
    plan: &Plan,
    store: &Store,
    dir: &Path,
) -> Result<PairedUpdate, RunnerError> {
    let path = dir.join(PAIRED_FILE);
    let mut cache = PairedCache::read(&path);
    let todo = new_pairs(spec, plan, store, &cache);
    let computed: Vec<Option<(&Job, &Job, Paired)>> = todo
        .par_iter()
        .map(|&(job, twin)| -> Result<_, RunnerError> {
            // Each image read once: checked against its record, then decoded.
            let open = |key: &str| store.checked_image(key).ok().and_then(|b| decode_rgb(&b));
            let (Some(a), Some(b)) = (open(&twin.key), open(&job.key)) else {
                return Ok(None);
            };
            let m = paired(&a, &b).map_err(|error| RunnerError::Paired {
                key: job.key.clone(),
                error,
            })?;
            Ok(Some((job, twin, m)))
        })
        .collect::<Result<_, _>>()?;
    let mut update = PairedUpdate::default();
    for pair in computed {
        match pair {
            Some((job, twin, m)) => {
                cache.insert(&twin.key, &job.key, m);
                update.computed += 1;
            }
            None => update.damaged += 1,
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| RunnerError::io("creating", dir, e))?;
    crate::fsx::write_atomic(&path, cache.to_csv().as_bytes())
        .map_err(|e| RunnerError::io("writing", &path, e))?;
    Ok(update)
}

/// (r > 0 job, its r = 0 twin) of every possible cell, both stored, not in `cache`;
/// a pair shared by several cells once.
fn new_pairs<'p>(
    spec: &Spec,
    plan: &'p Plan,
    store: &Store,
    cache: &PairedCache,
) -> Vec<(&'p Job, &'p Job)> {
    let by_cell = CellJobs::of(plan, &spec.name);
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for config in &spec.configs {
        for &r in &spec.ratios {
            if ratio_key(r) == 0 || spec.is_skipped(&config.name, r) {
                continue;
            }
            for (prompt, job) in by_cell.cell(&config.name, r) {
                let Some(twin) = by_cell.job(&config.name, 0.0, prompt) else {
                    continue;
                };
                let pair = (twin.key.clone(), job.key.clone());
                if cache.get(&pair.0, &pair.1).is_some()
                    || !store.is_done(&job.key)
                    || !store.is_done(&twin.key)
                    || !seen.insert(pair)
                {
                    continue;
                }
                out.push((job, twin));
            }
        }
    }
    out
}

/// The PNG `bytes` as RGB, or `None` where they do not decode.
fn decode_rgb(bytes: &[u8]) -> Option<image::RgbImage> {
    image::load_from_memory(bytes).ok().map(|i| i.to_rgb8())
}
