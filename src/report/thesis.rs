//! The thesis's own numbers (`golden/thesis/tables.csv`, a copy of
//! `thesis/tables.csv`) as report models, so Tables 7–13 and Figures 5–11 go
//! through the same renderers as our results.
//!
//! Columns: `table,figure,size,series,merge,sx,sy,r_pct,fid,s_per_img,rel_time_pct`;
//! an empty `fid` marks a ratio the configuration cannot reach (`-`).

use anyhow::{bail, Context};

use super::model::{CellStats, ConfigInfo, ReportModel};

/// Line colours for series that carry none (matplotlib's first ten).
pub const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// Splits one CSV line (double-quoted fields may hold commas and `""`).
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().unwrap().push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            _ => out.last_mut().unwrap().push(ch),
        }
    }
    out
}

/// The table numbers `table` (7 to 13) of `csv` as a report model; series in
/// order of first appearance.
pub fn thesis_model(csv: &str, table: u32) -> anyhow::Result<ReportModel> {
    let mut lines = csv.lines();
    let header = fields(lines.next().context("empty tables.csv")?);
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("tables.csv has no column {name}"))
    };
    let (c_table, c_fig, c_size, c_series, c_r, c_fid, c_s, c_rel) = (
        col("table")?,
        col("figure")?,
        col("size")?,
        col("series")?,
        col("r_pct")?,
        col("fid")?,
        col("s_per_img")?,
        col("rel_time_pct")?,
    );
    let mut configs: Vec<ConfigInfo> = Vec::new();
    let mut cells = Vec::new();
    let mut ratios: Vec<f64> = Vec::new();
    let mut figure = String::new();
    let mut size = String::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f = fields(line);
        if f.get(c_table).map(String::as_str) != Some(table.to_string().as_str()) {
            continue;
        }
        let num = |c: usize| -> anyhow::Result<Option<f64>> {
            let s = f.get(c).map(String::as_str).unwrap_or("");
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse()
                    .map(Some)
                    .with_context(|| format!("tables.csv line {}: {s:?}", i + 2))
            }
        };
        let series = f[c_series].clone();
        if !configs.iter().any(|c| c.label == series) {
            configs.push(ConfigInfo {
                name: series.clone(),
                label: series.clone(),
                color: PALETTE[configs.len() % PALETTE.len()].to_string(),
            });
        }
        figure = f[c_fig].clone();
        size = f[c_size].clone();
        let r = num(c_r)?.context("r_pct missing")? / 100.0;
        if !ratios.iter().any(|x| (x - r).abs() < 1e-9) {
            ratios.push(r);
        }
        let fid = num(c_fid)?;
        let possible = fid.is_some();
        cells.push(CellStats {
            config: series,
            ratio: r,
            possible,
            planned: 0,
            done: 0,
            fid,
            s_per_image: num(c_s)?,
            rel_time_pct: num(c_rel)?,
            peak_host_bytes: None,
            peak_device_bytes: None,
            psnr: None,
            ssim: None,
            worst: vec![],
        });
    }
    if configs.is_empty() {
        bail!("tables.csv has no rows for table {table}");
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

#[cfg(test)]
mod tests {
    use super::fields;

    #[test]
    fn quoted_fields() {
        assert_eq!(fields(r#"7,"a, ""b""",,1"#), vec!["7", "a, \"b\"", "", "1"]);
    }
}
