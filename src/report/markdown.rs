//! Markdown renderers: the data table, and the paired-metric and memory summary.

use super::table::{Table, TableRenderer};

/// GitHub-flavoured Markdown table, numbers right-aligned.
pub struct Markdown;

/// `|` and line breaks would end a Markdown cell.
pub fn escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

impl TableRenderer for Markdown {
    fn extension(&self) -> &'static str {
        "md"
    }

    fn render(&self, table: &Table) -> String {
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|c| escape(c)).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut out = line(&table.header);
        out.push_str(&format!("|{}\n", "---:|".repeat(table.header.len())));
        for row in &table.rows {
            out.push_str(&line(row));
        }
        out
    }
}
