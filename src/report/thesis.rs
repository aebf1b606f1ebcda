//! The thesis's own numbers ([`super::THESIS_TABLES`], a copy of its
//! `thesis/tables.csv`) as report models, so Tables 7–13 and Figures 5–11 go
//! through the same renderers as our results.
//!
//! Columns: `table,figure,size,series,merge,sx,sy,r_pct,fid,s_per_img,rel_time_pct`;
//! an empty `fid` marks a ratio the configuration cannot reach (`-`).

use super::model::{CellStats, ConfigInfo, ReportModel};
use super::ReportError;

/// Line colours for series that carry none (matplotlib's first ten).
pub const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// One row of `tables.csv`; an empty `fid` is a ratio the configuration cannot reach.
#[derive(serde::Deserialize)]
struct Row {
    table: u32,
    figure: String,
    size: String,
    series: String,
    r_pct: f64,
    fid: Option<f64>,
    s_per_img: Option<f64>,
    rel_time_pct: Option<f64>,
}

/// The table numbers `table` (7 to 13) of `csv` as a report model; series in
/// order of first appearance.
pub fn thesis_model(csv: &str, table: u32) -> Result<ReportModel, ReportError> {
    let rows = crate::csv_text::rows::<Row>(csv).map_err(|e| ReportError::Thesis(e.to_string()))?;
    let mut configs: Vec<ConfigInfo> = Vec::new();
    let mut cells = Vec::new();
    let mut ratios: Vec<f64> = Vec::new();
    let mut figure = String::new();
    let mut size = String::new();
    for (_, row) in rows.into_iter().filter(|(_, row)| row.table == table) {
        let series = row.series;
        if !configs.iter().any(|c| c.label == series) {
            configs.push(ConfigInfo {
                name: series.clone(),
                label: series.clone(),
                color: PALETTE[configs.len() % PALETTE.len()].to_string(),
            });
        }
        figure = row.figure;
        size = row.size;
        let r = row.r_pct / 100.0;
        if !ratios.iter().any(|x| (x - r).abs() < 1e-9) {
            ratios.push(r);
        }
        let fid = row.fid;
        let possible = fid.is_some();
        cells.push(CellStats {
            config: series,
            ratio: r,
            possible,
            planned: 0,
            done: 0,
            fid,
            s_per_image: row.s_per_img,
            rel_time_pct: row.rel_time_pct,
            peak_host_bytes: None,
            peak_device_bytes: None,
            psnr: None,
            ssim: None,
            worst: vec![],
        });
    }
    if configs.is_empty() {
        return Err(ReportError::Thesis(format!("no rows for table {table}")));
    }
    ratios.sort_by(f64::total_cmp);
    Ok(ReportModel {
        name: format!("thesis_table_{table}"),
        title: format!("Thesis Table {table} / Figure {figure} ({size}×{size})"),
        configs,
        ratios,
        cells,
        missing: vec![],
        grids: vec![],
        notes: vec![format!("the thesis's own numbers, Table {table}")],
        fid_network: None,
        fid_notes: vec![],
    })
}
