//! CSV renderers: the data table in the thesis's layout, and every measured value
//! per (configuration, r) in long form for other tools.

use super::model::{ratio_pct, ReportModel};
use super::table::{Table, TableRenderer};
use crate::csv_text;

/// The data table as CSV (`crate::csv_text`), cells as the thesis prints them.
pub struct Csv;

impl TableRenderer for Csv {
    fn extension(&self) -> &'static str {
        "csv"
    }

    fn render(&self, table: &Table) -> String {
        csv_text::to_string(&table.header, &table.rows)
    }
}

/// Columns of [`long_csv`].
pub const LONG_COLUMNS: [&str; 16] = [
    "config",
    "label",
    "r_pct",
    "possible",
    "planned",
    "done",
    "fid",
    "s_per_image",
    "rel_time_pct",
    "peak_host_bytes_mean",
    "peak_device_bytes_mean",
    "psnr_mean",
    "psnr_worst",
    "ssim_mean",
    "ssim_worst",
    "worst_prompts",
];

/// One line per (configuration, r) with full-precision numbers; empty where absent.
pub fn long_csv(model: &ReportModel) -> String {
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut rows = Vec::new();
    for c in &model.cells {
        let label = model
            .configs
            .iter()
            .find(|k| k.name == c.config)
            .map(|k| k.label.clone())
            .unwrap_or_default();
        let worst: Vec<String> = c.worst.iter().map(|w| w.prompt_index.to_string()).collect();
        rows.push([
            c.config.clone(),
            label,
            ratio_pct(c.ratio),
            c.possible.to_string(),
            c.planned.to_string(),
            c.done.to_string(),
            opt(c.fid),
            opt(c.s_per_image),
            opt(c.rel_time_pct),
            opt(c.peak_host_bytes),
            opt(c.peak_device_bytes),
            opt(c.psnr.map(|m| m.mean)),
            opt(c.psnr.map(|m| m.worst)),
            opt(c.ssim.map(|m| m.mean)),
            opt(c.ssim.map(|m| m.worst)),
            worst.join(" "),
        ]);
    }
    csv_text::to_string(&LONG_COLUMNS, rows)
}
