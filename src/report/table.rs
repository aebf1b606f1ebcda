//! The thesis's data table (Tables 7–13) as text cells, shared by the Markdown,
//! CSV and LaTeX renderers: `r%`, FID per configuration, `r%` again, then
//! `s/im (% to r=0%)` per configuration.
//!
//! Number formats as the thesis prints them: two decimals (`41.60`, `57.20`); at
//! r = 0 the FID is `0` and the relative time `(100)`; `-` where a ratio is
//! impossible for a configuration; `n/a` where a value is not (yet) measured.

use super::model::{ratio_key, ratio_pct, CellStats, ReportModel};

/// The table as text: a header and rows of equal length.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column titles: `r%`, `FID: <label>`…, `r%`, `s/im (% to r=0%): <label>`…
    /// (`FID (<network>): <label>` for FID over another network than pytorch-fid's).
    pub header: Vec<String>,
    /// Configurations' labels, in column order.
    pub labels: Vec<String>,
    /// What the FID columns are called ([`ReportModel::fid_label`]).
    pub fid_label: String,
    pub rows: Vec<Vec<String>>,
}

/// A renderer of [`Table`]s into one file format.
pub trait TableRenderer {
    /// File extension, without the dot.
    fn extension(&self) -> &'static str;
    fn render(&self, table: &Table) -> String;
}

/// Every table renderer, in the order of [`crate::spec::ReportOptions::FORMATS`].
pub fn renderers() -> Vec<Box<dyn TableRenderer>> {
    vec![
        Box::new(super::markdown::Markdown),
        Box::new(super::csv::Csv),
        Box::new(super::latex::Latex),
    ]
}

/// Two decimals, as the thesis prints its numbers.
pub fn two_decimals(v: f64) -> String {
    format!("{v:.2}")
}

/// A cell's FID text.
pub fn fid_text(cell: Option<&CellStats>) -> String {
    match cell {
        None => "-".into(),
        Some(c) if !c.possible => "-".into(),
        Some(c) => match c.fid {
            None => "n/a".into(),
            Some(v) if ratio_key(c.ratio) == 0 && v == 0.0 => "0".into(),
            Some(v) => two_decimals(v),
        },
    }
}

/// A cell's `s/im (% of r = 0)` text.
pub fn time_text(cell: Option<&CellStats>) -> String {
    match cell {
        None => "-".into(),
        Some(c) if !c.possible => "-".into(),
        Some(c) => match c.s_per_image {
            None => "n/a".into(),
            Some(s) => match c.rel_time_pct {
                Some(p) if ratio_key(c.ratio) == 0 && (p - 100.0).abs() < 1e-9 => {
                    format!("{} (100)", two_decimals(s))
                }
                Some(p) => format!("{} ({})", two_decimals(s), two_decimals(p)),
                None => format!("{} (n/a)", two_decimals(s)),
            },
        },
    }
}

impl Table {
    /// The table of `model`: one row per r.
    pub fn of(model: &ReportModel) -> Table {
        let labels: Vec<String> = model.configs.iter().map(|c| c.label.clone()).collect();
        let mut header = vec!["r%".to_string()];
        let fid = model.fid_label();
        header.extend(labels.iter().map(|l| format!("{fid}: {l}")));
        header.push("r%".into());
        header.extend(labels.iter().map(|l| format!("s/im (% to r=0%): {l}")));
        let mut rows = Vec::new();
        for &r in &model.ratios {
            let pct = ratio_pct(r);
            let mut row = vec![pct.clone()];
            row.extend(
                model
                    .configs
                    .iter()
                    .map(|c| fid_text(model.cell(&c.name, r))),
            );
            row.push(pct);
            row.extend(
                model
                    .configs
                    .iter()
                    .map(|c| time_text(model.cell(&c.name, r))),
            );
            rows.push(row);
        }
        Table {
            header,
            labels,
            fid_label: fid,
            rows,
        }
    }
}
