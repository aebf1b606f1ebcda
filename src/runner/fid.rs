//! The FID step of a spec (`[metrics] fid = true`), after `run` and in `report`: for each
//! configuration and each r > 0, the FID of its stored images against the r = 0 images of
//! the same prompts and seeds, with the spec's Inception at `fid_dims`, written to the
//! report folder's `fid.csv` (`config,r,fid`, what [`crate::report::FidValues`] reads).
//!
//! * Only stored images count; nothing is generated. A set is the prompts whose r > 0
//!   image *and* r = 0 twin are stored, so a partial result compares like with like.
//!   Fewer than 2 such pairs: no value (`n/a`), and a note says why.
//! * Set statistics are cached in `<store>/reports/fid-stats/` by content
//!   ([`crate::metrics::cache`]): the r = 0 set, shared by every configuration, is
//!   featurised once, and a report re-renders without featurising unchanged sets. The
//!   network is loaded only when a set is not cached.
//! * A set about to be featurised has its images checked against their records'
//!   digests first (in `report` too, which otherwise checks only signatures and sizes): a
//!   pair with a damaged image is left out and named in a note, so FID never reads an
//!   image that is not what its job made.
//! * `fid.csv` is rewritten (atomically) after every value, so an interrupted step keeps
//!   what it computed; a set that fails (e.g. an unreadable image) is noted and the other
//!   cells go on.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Prepared, RunnerError};
use crate::engine::Runtime;
use crate::metrics::cache::{set_key, StatsCache};
use crate::metrics::{frechet_distance, Inception, Statistics};
use crate::model::{DigestCache, ModelsLock};
use crate::plan::Job;
use crate::report::model::{ratio_key, ratio_pct, CellJobs};
use crate::report::{FidValues, FID_FILE};
use crate::spec::Spec;
use crate::store::{ObjectState, Store};

/// Where set statistics are cached, under the store's `reports/` folder (shared by all
/// specs of the store: the keys are content, so specs with common images share sets).
pub const STATS_DIR: &str = "fid-stats";

/// Images per Inception batch (pytorch-fid's default `--batch-size`).
pub const BATCH_SIZE: usize = 50;

/// How to export and register the FID Inception, for messages.
pub const INCEPTION_HELP: &str = "export pytorch-fid's network with `tools/.venv/bin/python tools/export_inception.py --weights pt_inception-2015-12-05-6726825d.pth --out models/inception/pt_inception.onnx`, then register it with `tomex models add inception-fid models/inception/pt_inception.onnx --source \"tools/export_inception.py --weights pt_inception-2015-12-05-6726825d.pth\"` (or set `[metrics] fid = false`)";

/// The spec's Inception network: its file and digest (part of every set's cache key).
#[derive(Debug, Clone)]
pub struct InceptionSource {
    /// As the spec names it: a `models.lock` name or an `.onnx` path.
    pub name: String,
    pub path: PathBuf,
    /// `sha256:<hex>` of the file.
    pub digest: String,
}

/// Resolves `[metrics] inception`: an `.onnx` file (already resolved against the spec's
/// folder), else a `models.lock` name whose file is checked against its digest. Errors are
/// located at the spec's `metrics.inception` and say how to export and register it.
pub fn resolve_inception(spec: &Spec, lock: Option<&Path>) -> Result<InceptionSource, RunnerError> {
    let Some(name) = spec.metrics.inception.clone() else {
        return Err(RunnerError::at(
            spec,
            "metrics.fid",
            "the spec does not compute FID (`[metrics] fid = false`)",
        ));
    };
    let located = |message: String| RunnerError::at(spec, "metrics.inception", message);
    if name.to_ascii_lowercase().ends_with(".onnx") {
        let path = PathBuf::from(&name);
        if !path.is_file() {
            return Err(located(format!(
                "Inception network {} does not exist; {INCEPTION_HELP}",
                path.display()
            )));
        }
        let mut cache = DigestCache::open_default();
        let digest = cache
            .digest(&path)
            .map_err(|e| RunnerError::io("reading", &path, e))?;
        cache.save();
        return Ok(InceptionSource { name, path, digest });
    }
    let lock_path = lock
        .map(Path::to_path_buf)
        .or_else(ModelsLock::find_default)
        .ok_or_else(|| {
            located(format!(
                "the FID Inception `{name}` is a models.lock name, but there is no models.lock here; {INCEPTION_HELP}"
            ))
        })?;
    let lock = ModelsLock::load(&lock_path)?;
    if lock.entry(&name).is_err() {
        return Err(located(format!(
            "the FID Inception `{name}` is not registered in {}; {INCEPTION_HELP}",
            lock_path.display()
        )));
    }
    let path = lock
        .network_file(&name)
        .map_err(|e| located(e.to_string()))?;
    let mut cache = DigestCache::open_default();
    let problems = lock.verify(&name, &mut cache)?;
    cache.save();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        return Err(located(format!(
            "the FID Inception `{name}` does not match {}:\n{}",
            lock_path.display(),
            list.join("\n")
        )));
    }
    let entry = lock.entry(&name)?;
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let digest = entry.files.get(&file).cloned().unwrap_or_default();
    Ok(InceptionSource { name, path, digest })
}

/// What the FID step tells its observer (the command line prints it on stderr).
pub trait FidObserver {
    /// A set's statistics are needed: `label` names it; `cached` when they come from the
    /// cache (then no image is read).
    fn set_started(&mut self, label: &str, images: usize, cached: bool);
    /// Images of the current set featurised so far.
    fn images_done(&mut self, done: usize);
    fn set_finished(&mut self);
}

/// An observer that shows nothing.
pub struct Silent;

impl FidObserver for Silent {
    fn set_started(&mut self, _: &str, _: usize, _: bool) {}
    fn images_done(&mut self, _: usize) {}
    fn set_finished(&mut self) {}
}

/// What the FID step did.
#[derive(Debug, Default)]
pub struct FidOutcome {
    /// Every value written to `fid.csv` (r = 0 rows are 0).
    pub values: FidValues,
    /// (config, r > 0) cells that can run.
    pub cells: usize,
    /// Of those, the ones with a value.
    pub measured: usize,
    /// Sets featurised by this step, and sets taken from the cache.
    pub featurised: usize,
    pub cached: usize,
    /// Why a cell has no value, or has one over part of its prompts.
    pub notes: Vec<String>,
    /// The `fid.csv` written.
    pub file: PathBuf,
}

/// Set statistics from memory, the cache, or the network (loaded on first use).
struct Sets<'a> {
    store: &'a Store,
    cache: StatsCache,
    memo: HashMap<String, Statistics>,
    runtime: &'a Runtime,
    source: &'a InceptionSource,
    net: Option<Inception>,
    /// The network could not be loaded: no set can be featurised.
    load_failed: bool,
    dims: usize,
    featurised: usize,
    cached: usize,
    /// Images whose digest was checked: `Some(why)` when damaged.
    checked: HashMap<String, Option<String>>,
}

impl Sets<'_> {
    /// The set's image keys, sorted (its image order never depends on the plan's), and its
    /// cache key.
    fn key_of(&self, jobs: &[&Job]) -> (Vec<String>, String) {
        let mut keys: Vec<String> = jobs.iter().map(|j| j.key.clone()).collect();
        keys.sort();
        let key = set_key(&keys, self.dims, &self.source.digest);
        (keys, key)
    }

    /// Whether the set's statistics are at hand without reading an image.
    fn known(&self, jobs: &[&Job]) -> bool {
        let (_, key) = self.key_of(jobs);
        self.memo.contains_key(&key) || self.cache.path(&key).is_file()
    }

    /// The images among `jobs` that do not match their records (digest, or decoding for
    /// records without one): key and why, each image checked once per step.
    fn damaged(&mut self, jobs: &[&Job]) -> Vec<(String, String)> {
        let unchecked: Vec<&str> = jobs
            .iter()
            .map(|j| j.key.as_str())
            .filter(|k| !self.checked.contains_key(*k))
            .collect();
        let store = self.store;
        let states: Vec<Option<String>> = unchecked
            .par_iter()
            .map(|key| match store.checked_state(key) {
                ObjectState::Damaged(why) => Some(why),
                _ => None,
            })
            .collect();
        for (key, state) in unchecked.into_iter().zip(states) {
            self.checked.insert(key.to_string(), state);
        }
        jobs.iter()
            .filter_map(|j| {
                let why = self.checked.get(&j.key)?.as_ref()?;
                Some((j.key.clone(), why.clone()))
            })
            .collect()
    }

    fn network(&mut self) -> Result<&mut Inception, RunnerError> {
        if self.net.is_none() {
            let loaded = Inception::load(self.runtime, &self.source.path);
            let net = loaded.map_err(|error| {
                self.load_failed = true;
                RunnerError::InceptionLoad {
                    name: self.source.name.clone(),
                    path: self.source.path.clone(),
                    error,
                }
            })?;
            self.net = Some(net);
        }
        Ok(self.net.as_mut().expect("loaded above"))
    }

    /// The statistics of a set of stored images (`label` names it in progress and errors).
    fn statistics(
        &mut self,
        label: &str,
        jobs: &[&Job],
        observer: &mut dyn FidObserver,
    ) -> Result<Statistics, RunnerError> {
        let (keys, key) = self.key_of(jobs);
        if let Some(s) = self.memo.get(&key) {
            return Ok(s.clone());
        }
        if let Some(s) = self.cache.get(&key, self.dims) {
            observer.set_started(label, jobs.len(), true);
            observer.set_finished();
            self.cached += 1;
            self.memo.insert(key, s.clone());
            return Ok(s);
        }
        let files: Vec<PathBuf> = keys.iter().map(|k| self.store.image_path(k)).collect();
        let dims = self.dims;
        let net = self.network()?;
        observer.set_started(label, files.len(), false);
        let features = net.features_of_files(&files, dims, BATCH_SIZE, &mut |done| {
            observer.images_done(done)
        });
        observer.set_finished();
        let features = features?;
        let stats = Statistics::from_features(features.view(), label)?;
        self.cache
            .put(&key, features.view(), &stats)
            .map_err(|error| RunnerError::FidCache {
                label: label.to_string(),
                error,
            })?;
        self.featurised += 1;
        self.memo.insert(key, stats.clone());
        Ok(stats)
    }
}

/// Computes the spec's FID values from `store` into `<report_dir>/fid.csv`. Per-cell
/// problems become notes; an error is returned only when nothing can go on (the network
/// cannot be loaded, `fid.csv` cannot be written), after writing what was computed.
pub fn measure_fid(
    prepared: &Prepared,
    store: &Store,
    runtime: &Runtime,
    inception: &InceptionSource,
    report_dir: &Path,
    observer: &mut dyn FidObserver,
) -> Result<FidOutcome, RunnerError> {
    let spec = &prepared.spec;
    let dims = spec.metrics.fid_dims;
    let mut sets = Sets {
        store,
        cache: StatsCache::new(store.root().join("reports").join(STATS_DIR)),
        memo: HashMap::new(),
        runtime,
        source: inception,
        net: None,
        load_failed: false,
        dims,
        featurised: 0,
        cached: 0,
        checked: HashMap::new(),
    };
    let mut out = FidOutcome {
        file: report_dir.join(FID_FILE),
        ..FidOutcome::default()
    };
    std::fs::create_dir_all(report_dir).map_err(|e| RunnerError::io("creating", report_dir, e))?;

    let by_cell = CellJobs::of(&prepared.plan, &spec.name);

    for config in &spec.configs {
        let label = &config.name;
        let baseline: BTreeMap<usize, &Job> = by_cell
            .cell(label, 0.0)
            .into_iter()
            .filter(|(_, j)| store.is_done(&j.key))
            .collect();
        if baseline.len() >= 2 {
            // FID of the r = 0 set against itself, as the thesis's tables show it.
            out.values.insert(label, 0.0, 0.0);
        }
        for r in spec.ratios_of(label) {
            let rk = ratio_key(r);
            if rk == 0 {
                continue;
            }
            out.cells += 1;
            let at = format!("`{label}` at r = {}%", ratio_pct(r));
            let jobs = by_cell.cell(label, r);
            let mut pairs: Vec<(&Job, &Job)> = jobs
                .iter()
                .filter(|(_, j)| store.is_done(&j.key))
                .filter_map(|(p, j)| baseline.get(p).map(|twin| (*twin, *j)))
                .collect();
            if let Some(note) = leave_out_damaged(&mut sets, &mut pairs) {
                out.notes.push(format!("{at}: {note}"));
            }
            if pairs.len() < 2 {
                out.notes.push(format!(
                    "{at}: n/a, {} of {} prompts have both the r > 0 image and its r = 0 twin stored; FID needs at least 2",
                    pairs.len(),
                    jobs.len()
                ));
                continue;
            }
            if pairs.len() < jobs.len() {
                out.notes.push(format!(
                    "{at}: over {} of {} prompts (both images stored), against the r = 0 images of the same prompts",
                    pairs.len(),
                    jobs.len()
                ));
            }
            let reference: Vec<&Job> = pairs.iter().map(|(b, _)| *b).collect();
            let test: Vec<&Job> = pairs.iter().map(|(_, t)| *t).collect();
            let result = sets
                .statistics(
                    &format!("r = 0 set of {label} ({} images)", reference.len()),
                    &reference,
                    observer,
                )
                .and_then(|a| {
                    let b = sets.statistics(
                        &format!("{label}, r = {}% ({} images)", ratio_pct(r), test.len()),
                        &test,
                        observer,
                    )?;
                    Ok(frechet_distance(&a, &b)?)
                });
            match result {
                Ok(fid) if fid.is_finite() => {
                    out.values.insert(label, r, fid);
                    out.measured += 1;
                    write_fid_csv(&out.file, &out.values)?;
                }
                Ok(fid) => out.notes.push(format!("{at}: n/a, the distance is {fid}")),
                // Without the network no set can be featurised: stop, keeping what exists.
                Err(e) if sets.load_failed => {
                    write_fid_csv(&out.file, &out.values)?;
                    return Err(e);
                }
                Err(e) => out.notes.push(format!("{at}: n/a, {e:#}")),
            }
        }
    }
    write_fid_csv(&out.file, &out.values)?;
    out.featurised = sets.featurised;
    out.cached = sets.cached;
    Ok(out)
}

/// Before a set is featurised, its images are checked against their records (`is_done`
/// checks only the PNG signature and size): a pair with a damaged image counts as not
/// stored and leaves the set, so FID never reads an image that is not what its job made.
/// Sets already cached were featurised from checked images and are not read again.
/// Returns the note that says which images were left out.
fn leave_out_damaged(sets: &mut Sets<'_>, pairs: &mut Vec<(&Job, &Job)>) -> Option<String> {
    let reference: Vec<&Job> = pairs.iter().map(|(b, _)| *b).collect();
    let test: Vec<&Job> = pairs.iter().map(|(_, t)| *t).collect();
    if pairs.len() < 2 || (sets.known(&reference) && sets.known(&test)) {
        return None;
    }
    let all: Vec<&Job> = reference.iter().chain(&test).copied().collect();
    let damaged = sets.damaged(&all);
    if damaged.is_empty() {
        return None;
    }
    pairs.retain(|(b, t)| !damaged.iter().any(|(k, _)| *k == b.key || *k == t.key));
    let shown: Vec<String> = damaged
        .iter()
        .take(3)
        .map(|(key, why)| format!("objects/{key}: {why}"))
        .collect();
    let more = if damaged.len() > shown.len() {
        format!("; and {} more", damaged.len() - shown.len())
    } else {
        String::new()
    };
    Some(format!(
        "{} stored image(s) do not match their records and are left out with their twins \
         ({}{more}); `tomex run` regenerates them",
        damaged.len(),
        shown.join("; ")
    ))
}

/// Removes the store's cached set statistics (`<store>/reports/fid-stats/*.npz`), so the
/// next FID step featurises every set again (`tomex run` finding damage, `tomex store
/// verify --repair` after repairing an image); returns how many were removed.
pub fn drop_cached_statistics(store: &Store) -> Result<usize, RunnerError> {
    let mut removed = 0;
    for path in cached_statistics(store) {
        std::fs::remove_file(&path).map_err(|e| RunnerError::io("removing", &path, e))?;
        removed += 1;
    }
    Ok(removed)
}

/// The files of the store's statistics cache (`<store>/reports/fid-stats/*.npz`).
pub fn cached_statistics(store: &Store) -> Vec<PathBuf> {
    let dir = store.root().join("reports").join(STATS_DIR);
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "npz"))
        .collect()
}

fn write_fid_csv(path: &Path, values: &FidValues) -> Result<(), RunnerError> {
    crate::fsx::write_atomic(path, values.to_csv().as_bytes())
        .map_err(|e| RunnerError::io("writing", path, e))
}
