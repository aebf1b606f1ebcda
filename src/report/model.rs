//! The report model: everything the renderers show, built from the store alone
//! (or from the thesis's `tables.csv`), so every renderer reads one structure.

use std::collections::BTreeMap;
use std::path::Path;

use crate::metrics::paired::Paired;
use crate::onnx::Precision;
use crate::plan::{Job, Plan};
use crate::spec::{Spec, DEFAULT_INCEPTION};
use crate::store::Store;

/// How many of the lowest-SSIM prompts a cell lists.
pub const WORST_PROMPTS: usize = 3;

/// A ratio as an exact key: r in thousandths.
pub fn ratio_key(r: f64) -> i64 {
    (r * 1000.0).round() as i64
}

/// r as the thesis writes it: a percentage, without decimals where it has none.
pub fn ratio_pct(r: f64) -> String {
    let p = (r * 1000.0).round() / 10.0;
    if p.fract() == 0.0 {
        format!("{}", p as i64)
    } else {
        format!("{p}")
    }
}

/// A spec's jobs by cell: (configuration, r, prompt index) → job.
pub struct CellJobs<'p>(BTreeMap<(String, i64, usize), &'p Job>);

impl<'p> CellJobs<'p> {
    /// The cells of the spec named `spec` in `plan`.
    pub fn of(plan: &'p Plan, spec: &str) -> CellJobs<'p> {
        let mut by_cell = BTreeMap::new();
        for job in plan.jobs() {
            for cell in job.cells.iter().filter(|c| c.spec == spec) {
                let at = (
                    cell.config.clone(),
                    ratio_key(cell.ratio),
                    cell.prompt_index,
                );
                by_cell.insert(at, job);
            }
        }
        CellJobs(by_cell)
    }

    /// The jobs of `config` at `r`, by prompt index.
    pub fn cell(&self, config: &str, r: f64) -> Vec<(usize, &'p Job)> {
        let (config, rk) = (config.to_string(), ratio_key(r));
        self.0
            .range((config.clone(), rk, 0)..=(config, rk, usize::MAX))
            .map(|((_, _, p), j)| (*p, *j))
            .collect()
    }

    /// Every job of `config` (all ratios), with its prompt index.
    pub fn of_config<'a>(&'a self, config: &'a str) -> impl Iterator<Item = (usize, &'p Job)> + 'a {
        self.0
            .iter()
            .filter(move |((c, _, _), _)| c == config)
            .map(|((_, _, p), j)| (*p, *j))
    }

    /// The job of prompt `prompt_index` in `config` at `r`.
    pub fn job(&self, config: &str, r: f64, prompt_index: usize) -> Option<&'p Job> {
        let at = (config.to_string(), ratio_key(r), prompt_index);
        self.0.get(&at).copied()
    }
}

/// FID per (configuration, r), from the metrics step; missing entries render as `n/a`.
#[derive(Debug, Clone, Default)]
pub struct FidValues {
    values: BTreeMap<(String, i64), f64>,
}

impl FidValues {
    pub fn new() -> FidValues {
        FidValues::default()
    }

    pub fn insert(&mut self, config: &str, ratio: f64, fid: f64) {
        self.values
            .insert((config.to_string(), ratio_key(ratio)), fid);
    }

    pub fn get(&self, config: &str, ratio: f64) -> Option<f64> {
        self.values
            .get(&(config.to_string(), ratio_key(ratio)))
            .copied()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `config,r,fid` rows under a header, as [`FidValues::from_csv`] reads them (r as a
    /// fraction, FID at full precision), configurations and r in sorted order.
    pub fn to_csv(&self) -> String {
        let rows = self.values.iter().map(|((config, r), fid)| {
            [
                config.clone(),
                (*r as f64 / 1000.0).to_string(),
                fid.to_string(),
            ]
        });
        crate::csv_text::to_string(&["config", "r", "fid"], rows)
    }

    /// Reads `config,r,fid` rows (a header first; r as a fraction, e.g. 0.3).
    pub fn from_csv(text: &str) -> Result<FidValues, crate::csv_text::CsvError> {
        #[derive(serde::Deserialize)]
        struct Row {
            config: String,
            r: f64,
            fid: f64,
        }
        let mut out = FidValues::new();
        for (_, row) in crate::csv_text::rows::<Row>(text)? {
            out.insert(&row.config, row.r, row.fid);
        }
        Ok(out)
    }
}

/// Paired metrics already computed, by (r = 0 image key, r > 0 image key): store
/// keys name image content, so a pair's values never change. Kept as
/// `paired.csv` in the report folder so a report after a run only computes the
/// new pairs.
#[derive(Debug, Clone, Default)]
pub struct PairedCache {
    values: BTreeMap<(String, String), Paired>,
}

impl PairedCache {
    pub fn get(&self, reference: &str, test: &str) -> Option<Paired> {
        self.values
            .get(&(reference.to_string(), test.to_string()))
            .copied()
    }

    pub fn insert(&mut self, reference: &str, test: &str, value: Paired) {
        self.values
            .insert((reference.to_string(), test.to_string()), value);
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Reads `reference,test,psnr,ssim` rows (header first); a cache that cannot be
    /// read is empty (its pairs are recomputed).
    pub fn from_csv(text: &str) -> PairedCache {
        #[derive(serde::Deserialize)]
        struct Row {
            reference: String,
            test: String,
            psnr: f64,
            ssim: f64,
        }
        let mut cache = PairedCache::default();
        for (_, row) in crate::csv_text::rows::<Row>(text).unwrap_or_default() {
            let value = Paired {
                psnr: row.psnr,
                ssim: row.ssim,
            };
            cache.insert(&row.reference, &row.test, value);
        }
        cache
    }

    /// The cache in `path` (empty when absent or unreadable: its pairs are recomputed).
    pub fn read(path: &Path) -> PairedCache {
        std::fs::read_to_string(path)
            .map(|t| PairedCache::from_csv(&t))
            .unwrap_or_default()
    }

    /// The cache as CSV (full precision; `inf` for equal images' PSNR).
    pub fn to_csv(&self) -> String {
        let rows = self
            .values
            .iter()
            .map(|((a, b), m)| [a.clone(), b.clone(), m.psnr.to_string(), m.ssim.to_string()]);
        crate::csv_text::to_string(&["reference", "test", "psnr", "ssim"], rows)
    }
}

/// A configuration as the report shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigInfo {
    pub name: String,
    /// Legend and column text.
    pub label: String,
    /// `#rrggbb`.
    pub color: String,
}

/// One prompt's paired metrics against its r = 0 twin.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptScore {
    pub prompt_index: usize,
    pub prompt: String,
    pub seed: u64,
    pub psnr: f64,
    pub ssim: f64,
}

/// Mean and worst of one paired metric over a set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanWorst {
    pub mean: f64,
    /// Lowest value (worst for both PSNR and SSIM).
    pub worst: f64,
}

impl MeanWorst {
    fn of(values: impl Iterator<Item = f64>) -> Option<MeanWorst> {
        let v: Vec<f64> = values.collect();
        if v.is_empty() {
            return None;
        }
        // Equal images give an infinite PSNR; the mean then stays infinite, honestly.
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let worst = v.iter().copied().fold(f64::INFINITY, f64::min);
        Some(MeanWorst { mean, worst })
    }
}

/// Everything measured for one (configuration, r).
#[derive(Debug, Clone, PartialEq)]
pub struct CellStats {
    pub config: String,
    pub ratio: f64,
    /// False where r exceeds the configuration's maximum (rendered `-`).
    pub possible: bool,
    /// Images the plan wants, and how many are stored.
    pub planned: usize,
    pub done: usize,
    pub fid: Option<f64>,
    /// Mean `wall_s` over the stored images.
    pub s_per_image: Option<f64>,
    /// `s_per_image` as a percentage of the configuration's r = 0.
    pub rel_time_pct: Option<f64>,
    /// Mean peak resident memory (bytes).
    pub peak_host_bytes: Option<f64>,
    /// Mean peak device memory (bytes), where the execution provider reports it.
    pub peak_device_bytes: Option<f64>,
    pub psnr: Option<MeanWorst>,
    pub ssim: Option<MeanWorst>,
    /// Lowest SSIM first, at most [`WORST_PROMPTS`].
    pub worst: Vec<PromptScore>,
}

impl CellStats {
    fn empty(config: &str, ratio: f64, possible: bool) -> CellStats {
        CellStats {
            config: config.to_string(),
            ratio,
            possible,
            planned: 0,
            done: 0,
            fid: None,
            s_per_image: None,
            rel_time_pct: None,
            peak_host_bytes: None,
            peak_device_bytes: None,
            psnr: None,
            ssim: None,
            worst: vec![],
        }
    }
}

/// An image the report wanted and the store does not have.
#[derive(Debug, Clone, PartialEq)]
pub struct MissingImage {
    pub config: String,
    pub ratio: f64,
    pub prompt_index: usize,
    pub key: String,
    /// `failed: <error>` or `not run`.
    pub status: String,
}

/// One image of a grid: the stored image's path, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct GridCell {
    pub prompt_index: usize,
    pub ratio: f64,
    pub image: Option<std::path::PathBuf>,
}

/// A prompts × r grid for one configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub config: String,
    pub ratios: Vec<f64>,
    /// (prompt index, prompt text) per row.
    pub prompts: Vec<(usize, String)>,
    /// Row-major: `prompts.len() × ratios.len()`.
    pub cells: Vec<GridCell>,
}

/// The report of one spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportModel {
    /// The spec's name (the report folder's name).
    pub name: String,
    pub title: String,
    pub configs: Vec<ConfigInfo>,
    /// Every r of the sweep, ascending.
    pub ratios: Vec<f64>,
    /// One per (config, r), configs in spec order, r ascending.
    pub cells: Vec<CellStats>,
    pub missing: Vec<MissingImage>,
    pub grids: Vec<Grid>,
    /// Where the numbers come from (e.g. the devices of the records).
    pub notes: Vec<String>,
    /// Why FID values are missing or partial (from the FID step).
    pub fid_notes: Vec<String>,
    /// The network whose features the FIDs compare, as the spec names it (a
    /// `models.lock` name, or an `.onnx` file's name); `None` when the spec computes
    /// no FID, or for numbers from elsewhere (the thesis's tables).
    pub fid_network: Option<String>,
}

impl ReportModel {
    /// What FID values are called in tables and figures: `FID` for pytorch-fid's
    /// Inception (the `inception-fid` entry specs use by default) or when no network is
    /// named, else `FID (<network>)`, so a FID over another network's features (the demo's)
    /// is never read as one comparable with published FIDs.
    pub fn fid_label(&self) -> String {
        match self.fid_network.as_deref() {
            None | Some(DEFAULT_INCEPTION) => "FID".into(),
            Some(network) => format!("FID ({network})"),
        }
    }

    pub fn cell(&self, config: &str, ratio: f64) -> Option<&CellStats> {
        self.cells
            .iter()
            .find(|c| c.config == config && ratio_key(c.ratio) == ratio_key(ratio))
    }

    /// Unique images (jobs) planned and not stored; an r = 0 image shared by
    /// several configurations counts once.
    pub fn missing_images(&self) -> usize {
        let keys: std::collections::BTreeSet<&str> =
            self.missing.iter().map(|m| m.key.as_str()).collect();
        keys.len()
    }

    /// True when every planned image is stored.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// The report of `spec` (whose jobs are `plan`) from what `store` holds: FID from
    /// `fid` (absent values render `n/a`), PSNR and SSIM from `paired`, which the runner's
    /// paired step has filled for every stored pair (`crate::runner::paired`); a stored
    /// pair it holds no values for has a damaged image (not what its record says).
    pub fn from_spec_plan(
        spec: &Spec,
        plan: &Plan,
        store: &Store,
        fid: &FidValues,
        paired: &PairedCache,
    ) -> Result<ReportModel, super::ReportError> {
        let configs: Vec<ConfigInfo> = spec
            .configs
            .iter()
            .map(|c| ConfigInfo {
                name: c.name.clone(),
                label: c.label.clone(),
                color: c.color.clone(),
            })
            .collect();
        let mut ratios = spec.ratios.clone();
        ratios.sort_by(f64::total_cmp);
        ratios.dedup_by_key(|r| ratio_key(*r));

        let by_cell = CellJobs::of(plan, &spec.name);

        let mut cells = Vec::new();
        let mut missing = Vec::new();
        let mut devices = BTreeMap::<String, usize>::new();
        for config in &configs {
            let mut base_s: Option<f64> = None;
            for &r in &ratios {
                let possible = !spec.is_skipped(&config.name, r);
                let mut stats = CellStats::empty(&config.name, r, possible);
                stats.fid = fid.get(&config.name, r);
                let jobs = by_cell.cell(&config.name, r);
                stats.planned = jobs.len();
                let mut walls = Vec::new();
                let mut hosts = Vec::new();
                let mut devs = Vec::new();
                let mut pairs = Vec::new();
                for (prompt_index, job) in &jobs {
                    match store.record(&job.key)? {
                        Some(rec) => {
                            walls.push(rec.timings.wall_s);
                            hosts.extend(rec.peak_memory.host_rss_bytes.map(|b| b as f64));
                            devs.extend(rec.peak_memory.device_bytes.map(|b| b as f64));
                            *devices.entry(rec.device.clone()).or_default() += 1;
                            if ratio_key(r) != 0 {
                                let twin = by_cell
                                    .job(&config.name, 0.0, *prompt_index)
                                    .filter(|t| store.is_done(&t.key));
                                if let Some(twin) = twin {
                                    pairs.push((*prompt_index, *job, twin));
                                }
                            }
                        }
                        None => {
                            let status = match store.error(&job.key)? {
                                Some(e) => format!("failed: {}", e.error),
                                None => "not run".to_string(),
                            };
                            missing.push(MissingImage {
                                config: config.name.clone(),
                                ratio: r,
                                prompt_index: *prompt_index,
                                key: job.key.clone(),
                                status,
                            });
                        }
                    }
                }
                stats.done = walls.len();
                stats.s_per_image = mean(&walls);
                stats.peak_host_bytes = mean(&hosts);
                stats.peak_device_bytes = mean(&devs);
                if ratio_key(r) == 0 {
                    base_s = stats.s_per_image;
                }
                stats.rel_time_pct = match (stats.s_per_image, base_s) {
                    (Some(s), Some(b)) if b > 0.0 => Some(100.0 * s / b),
                    _ => None,
                };
                let mut scores = Vec::with_capacity(pairs.len());
                for (p, job, twin) in &pairs {
                    let Some(m) = paired.get(&twin.key, &job.key) else {
                        // Damaged at the same size (the paired step checks digests).
                        missing.push(MissingImage {
                            config: config.name.clone(),
                            ratio: r,
                            prompt_index: *p,
                            key: job.key.clone(),
                            status: "stored, but an image of the pair is damaged (not what its record says; `tomex run` regenerates it)".into(),
                        });
                        continue;
                    };
                    scores.push(PromptScore {
                        prompt_index: *p,
                        prompt: job.material.prompt.clone(),
                        seed: job.material.seed,
                        psnr: m.psnr,
                        ssim: m.ssim,
                    });
                }
                stats.psnr = MeanWorst::of(scores.iter().map(|s| s.psnr));
                stats.ssim = MeanWorst::of(scores.iter().map(|s| s.ssim));
                let mut worst = scores;
                worst.sort_by(|a, b| a.ssim.total_cmp(&b.ssim));
                worst.truncate(WORST_PROMPTS);
                stats.worst = worst;
                cells.push(stats);
            }
        }

        let mut grids = Vec::new();
        if spec.report.grid_prompts > 0 {
            for config in &configs {
                let rs: Vec<f64> = ratios
                    .iter()
                    .copied()
                    .filter(|r| !spec.is_skipped(&config.name, *r))
                    .collect();
                let mut prompts = BTreeMap::<usize, String>::new();
                for (p, job) in by_cell.of_config(&config.name) {
                    prompts
                        .entry(p)
                        .or_insert_with(|| job.material.prompt.clone());
                }
                let prompts: Vec<(usize, String)> =
                    prompts.into_iter().take(spec.report.grid_prompts).collect();
                let mut gcells = Vec::new();
                for (p, _) in &prompts {
                    for &r in &rs {
                        let image = by_cell
                            .job(&config.name, r, *p)
                            .filter(|j| store.is_done(&j.key))
                            .map(|j| store.image_path(&j.key));
                        gcells.push(GridCell {
                            prompt_index: *p,
                            ratio: r,
                            image,
                        });
                    }
                }
                grids.push(Grid {
                    config: config.name.clone(),
                    ratios: rs,
                    prompts,
                    cells: gcells,
                });
            }
        }

        let mut notes = Vec::new();
        if spec.generation.precision != Precision::Fp32 {
            notes.push(format!(
                "the UNet computed in {} ([generation] precision)",
                spec.generation.precision
            ));
        }
        for (device, n) in devices {
            notes.push(format!("{n} stored image(s) made on {device}"));
        }
        Ok(ReportModel {
            name: spec.name.clone(),
            title: if spec.description.is_empty() {
                spec.name.clone()
            } else {
                spec.description.clone()
            },
            configs,
            ratios,
            cells,
            missing,
            grids,
            notes,
            fid_notes: Vec::new(),
            fid_network: fid_network_name(spec),
        })
    }
}

/// `[metrics] inception` as a short name: the lock name, or the `.onnx` file's name.
fn fid_network_name(spec: &Spec) -> Option<String> {
    if !spec.metrics.fid {
        return None;
    }
    let name = spec.metrics.inception.as_deref()?;
    let path = Path::new(name);
    Some(if name.to_ascii_lowercase().ends_with(".onnx") {
        path.file_name()
            .map_or(name.to_string(), |f| f.to_string_lossy().into_owned())
    } else {
        name.to_string()
    })
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}
