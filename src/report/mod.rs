//! Reports from the store alone: one [`ReportModel`] per spec, and small
//! renderers that each write one kind of output from it (as hyperfine's
//! exporters do):
//!
//! * [`table`]: the thesis's data table (Tables 7–13) as text cells, written by
//!   [`markdown`], [`csv`] and [`latex`] behind [`table::TableRenderer`];
//! * [`figure`]: the two-panel figure (Figures 5–11), PNG and SVG;
//! * [`grid`]: image grids, prompts × r, per configuration (PNG);
//! * [`summary`]: paired metrics (PSNR, SSIM), memory, worst prompts, what is missing.
//!
//! [`thesis`] turns the thesis's own numbers into the same model.
//! [`render_spec`] renders a spec's report; `crate::runner::finish` calls it after the
//! FID and paired-metric steps, for `tomex run` and `tomex report` alike.

pub mod csv;
mod error;
pub mod figure;
pub mod grid;
pub mod latex;
pub mod markdown;
pub mod model;
pub mod summary;
pub mod table;
pub mod thesis;

use std::path::{Path, PathBuf};

pub use error::ReportError;
pub use model::{FidValues, PairedCache, ReportModel};
pub use table::{Table, TableRenderer};

use crate::plan::Plan;
use crate::spec::Spec;
use crate::store::Store;

/// The file FID values are read from, in a report folder: `config,r,fid` lines
/// written by the metrics step (absent: FID `n/a`).
pub const FID_FILE: &str = "fid.csv";

/// The paired-metric cache in a report folder (see [`PairedCache`]).
pub const PAIRED_FILE: &str = "paired.csv";

/// The thesis's data tables (its `thesis/tables.csv`, kept beside this file as
/// `thesis_tables.csv`), carried in the binary so any report can set them beside its own
/// numbers.
pub const THESIS_TABLES: &str = include_str!("thesis_tables.csv");

/// The default report folder of a spec: `<store>/reports/<spec name>/`.
pub fn default_dir(store: &Store, spec_name: &str) -> PathBuf {
    store.root().join("reports").join(spec_name)
}

/// Which outputs to write (file extensions: png, svg, md, csv, tex).
pub fn wants(formats: &[String], ext: &str) -> bool {
    formats.is_empty() || formats.iter().any(|f| f == ext)
}

/// Writes every output of `model` into `dir` (created); returns the paths
/// written. `formats` as the spec's `[report] formats` (empty: all).
pub fn render_model(
    model: &ReportModel,
    dir: &Path,
    formats: &[String],
) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|e| ReportError::creating(dir, e))?;
    let mut written = Vec::new();
    let table = Table::of(model);
    for r in table::renderers() {
        if wants(formats, r.extension()) {
            let path = dir.join(format!("table.{}", r.extension()));
            crate::fsx::write_atomic(&path, r.render(&table).as_bytes())
                .map_err(|e| ReportError::writing(&path, e))?;
            written.push(path);
        }
    }
    if wants(formats, "csv") {
        let path = dir.join("results.csv");
        crate::fsx::write_atomic(&path, csv::long_csv(model).as_bytes())
            .map_err(|e| ReportError::writing(&path, e))?;
        written.push(path);
    }
    if wants(formats, "png") {
        let path = dir.join("figure.png");
        figure::write_png(model, &path)?;
        written.push(path);
    }
    if wants(formats, "svg") {
        let path = dir.join("figure.svg");
        figure::write_svg(model, &path)?;
        written.push(path);
    }
    for g in &model.grids {
        let path = dir.join(format!("grid_{}.png", g.config));
        if grid::write_grid(g, &path)? {
            written.push(path);
        }
    }
    let path = dir.join("summary.md");
    crate::fsx::write_atomic(&path, summary::summary_markdown(model).as_bytes())
        .map_err(|e| ReportError::writing(&path, e))?;
    written.push(path);
    Ok(written)
}

/// What [`render_spec`] did.
#[derive(Debug)]
pub struct Rendered {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// Images planned but not stored (unique jobs).
    pub missing: usize,
}

/// Builds the report of `spec` (whose jobs are `plan`) from `store` and writes it into
/// `dir`: FID values from `<dir>/fid.csv` and paired metrics from `<dir>/paired.csv` when
/// present (the runner writes both), `fid_notes` (from the FID step: why values are
/// missing or partial) in the summary. Where the spec names a thesis table
/// (`[report] thesis_table`), the thesis's own numbers are rendered beside ours in
/// `<dir>/thesis/`.
pub fn render_spec(
    spec: &Spec,
    plan: &Plan,
    store: &Store,
    dir: &Path,
    fid_notes: &[String],
) -> Result<Rendered, ReportError> {
    let fid_path = dir.join(FID_FILE);
    let fid = match std::fs::read_to_string(&fid_path) {
        Ok(text) => FidValues::from_csv(&text).map_err(|error| ReportError::Csv {
            path: fid_path.clone(),
            error,
        })?,
        Err(_) => FidValues::new(),
    };
    let paired = PairedCache::read(&dir.join(PAIRED_FILE));
    let mut model = ReportModel::from_spec_plan(spec, plan, store, &fid, &paired)?;
    model.fid_notes = fid_notes.to_vec();
    let mut files = render_model(&model, dir, &spec.report.formats)?;
    if let Some(n) = spec.report.thesis_table {
        // The thesis's own numbers for this experiment, beside ours.
        let theirs = thesis::thesis_model(THESIS_TABLES, n)?;
        files.extend(render_model(
            &theirs,
            &dir.join("thesis"),
            &spec.report.formats,
        )?);
    }
    Ok(Rendered {
        dir: dir.to_path_buf(),
        files,
        missing: model.missing_images(),
    })
}
