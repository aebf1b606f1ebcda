//! LaTeX renderer of the data table: a `tabular` with the thesis's two blocks.

use super::table::{Table, TableRenderer};

/// A `tabular` (booktabs-free, so it compiles with no extra package).
pub struct Latex;

/// Escapes LaTeX's special characters.
pub fn escape(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        match ch {
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(ch);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '\\' => out.push_str("\\textbackslash{}"),
            _ => out.push(ch),
        }
    }
    out
}

impl TableRenderer for Latex {
    fn extension(&self) -> &'static str {
        "tex"
    }

    fn render(&self, table: &Table) -> String {
        let n = table.labels.len();
        let cols = "r".repeat(n);
        let mut out = format!("\\begin{{tabular}}{{r|{cols}|r|{cols}}}\n\\hline\n");
        out.push_str(&format!(
            "r\\% & \\multicolumn{{{n}}}{{c|}}{{{}}} & r\\% & \\multicolumn{{{n}}}{{c}}{{s/im (\\% to r=0\\%)}} \\\\\n",
            escape(&table.fid_label)
        ));
        let labels: Vec<String> = table.labels.iter().map(|l| escape(l)).collect();
        out.push_str(&format!(
            " & {} & & {} \\\\\n\\hline\n",
            labels.join(" & "),
            labels.join(" & ")
        ));
        for row in &table.rows {
            let cells: Vec<String> = row.iter().map(|c| escape(c)).collect();
            out.push_str(&format!("{} \\\\\n", cells.join(" & ")));
        }
        out.push_str("\\hline\n\\end{tabular}\n");
        out
    }
}
