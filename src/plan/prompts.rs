//! Prompts from a CSV file, sampled and seeded the way the thesis did it.
//!
//! The thesis (`src/gen_imgs.py`) read `pd.read_csv(path)[column].values`, then
//!
//! ```python
//! idcs = np.random.randint(0, len(all_prompts), sample_size)
//! prompts = all_prompts[idcs]
//! seeds = np.random.randint(0, 4294967295, len(prompts))
//! ```
//!
//! on numpy's global `RandomState`, which it never seeded (so its draws cannot be
//! repeated). [`draw`] makes the same two calls on one
//! [`NumpyRandomState`] seeded with `prompts.sampling_seed`: rows are drawn with
//! replacement (a prompt can come twice, with two seeds, as in the thesis), and
//! with `seeds = { draw = S }` where `S` equals the sampling seed the image seeds
//! continue the same state, exactly the thesis's sequence. A different `S` draws
//! the seeds from a fresh `RandomState(S)` instead; without `sample`, every row
//! is used in file order and the seeds come from `RandomState(S)`.
//!
//! [`read_column`] reads CSV as pandas' default `read_csv` does for these files:
//! the first row names the columns; fields are separated by `,` and may be
//! quoted with `"` (a quoted field holds commas, line breaks and `""` for a
//! quote); lines end with `\n`, `\r\n` or `\r`; blank lines are skipped (so row
//! numbers, and hence the thesis's indices, match pandas); a UTF-8 byte-order
//! mark is dropped. Unlike pandas, empty fields and texts such as `NA` stay
//! strings rather than becoming `NaN`.

use std::path::{Path, PathBuf};

use super::numpy::{NumpyRandomState, SeedOutOfRange};
use crate::diffusion::prompt::{cut_prompt, THESIS_MAX_CHARS};
use crate::spec::{PromptSource, SeedSource};

/// The thesis's `high` for image seeds: `np.random.randint(0, 4294967295, n)`
/// (so the seed `2^32 - 1` itself is never drawn).
pub const THESIS_SEED_HIGH: i64 = 4_294_967_295;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read prompt file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}:{line}: {reason}")]
    Csv {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("prompt file {path} is empty (it needs a header row naming the columns)")]
    NoHeader { path: PathBuf },
    #[error("prompt file {path} has no column `{column}`; its columns are: {available}")]
    NoColumn {
        path: PathBuf,
        column: String,
        available: String,
    },
    #[error("cannot sample {sample} prompts from an empty prompt list")]
    NoPrompts { sample: usize },
    #[error("prompt sampling: {0}")]
    SamplingSeed(SeedOutOfRange),
    #[error("image seeds: {0}")]
    ImageSeed(SeedOutOfRange),
    #[error("the seed list is empty")]
    NoSeeds,
}

/// One prompt of an experiment with its image seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawnPrompt {
    /// Row in the prompt file (0 = first row after the header).
    pub row: usize,
    /// The prompt as the file has it.
    pub text: String,
    /// What the text encoder gets: `text` after the cut rule when it is on.
    pub prompt: String,
    pub seed: u64,
}

/// One CSV record with the line it starts on (1-based).
type CsvRecord = (usize, Vec<String>);

/// Parses CSV text (see the module docs for the dialect).
pub fn parse_csv(text: &str) -> Result<Vec<CsvRecord>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    loop {
        if chars.peek().is_none() {
            break;
        }
        let start_line = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted_field = false;
        let mut in_quotes = false;
        let mut ended_line = false;
        while let Some(c) = chars.next() {
            if in_quotes {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => in_quotes = false,
                    '\n' => {
                        line += 1;
                        field.push(c);
                    }
                    '\r' => {
                        if chars.peek() != Some(&'\n') {
                            line += 1;
                        }
                        field.push(c);
                    }
                    _ => field.push(c),
                }
                continue;
            }
            match c {
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    quoted_field = false;
                }
                '"' if field.is_empty() && !quoted_field => {
                    in_quotes = true;
                    quoted_field = true;
                }
                '\n' | '\r' => {
                    if c == '\r' && chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    line += 1;
                    ended_line = true;
                    break;
                }
                // text after a closing quote, or a quote inside an unquoted
                // field, is kept as it is (pandas' C parser does the same)
                _ => field.push(c),
            }
        }
        if in_quotes {
            return Err((start_line, "a quoted field is not closed".to_string()));
        }
        let blank = fields.is_empty() && field.is_empty() && !quoted_field;
        fields.push(field);
        if !blank {
            records.push((start_line, fields));
        }
        if !ended_line {
            break;
        }
    }
    Ok(records)
}

/// The values of `column` in the CSV file at `path`, one per data row.
pub fn read_column(path: &Path, column: &str) -> Result<Vec<String>, PromptError> {
    let text = std::fs::read_to_string(path).map_err(|e| PromptError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    column_of(&text, column).map_err(|e| match e {
        ColumnError::Csv(line, reason) => PromptError::Csv {
            path: path.to_path_buf(),
            line,
            reason,
        },
        ColumnError::NoHeader => PromptError::NoHeader {
            path: path.to_path_buf(),
        },
        ColumnError::NoColumn(available) => PromptError::NoColumn {
            path: path.to_path_buf(),
            column: column.to_string(),
            available,
        },
    })
}

enum ColumnError {
    Csv(usize, String),
    NoHeader,
    NoColumn(String),
}

fn column_of(text: &str, column: &str) -> Result<Vec<String>, ColumnError> {
    let records = parse_csv(text).map_err(|(l, r)| ColumnError::Csv(l, r))?;
    let mut records = records.into_iter();
    let (_, header) = records.next().ok_or(ColumnError::NoHeader)?;
    let idx = header.iter().position(|h| h == column).ok_or_else(|| {
        ColumnError::NoColumn(
            header
                .iter()
                .map(|h| format!("`{h}`"))
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    records
        .map(|(line, mut fields)| {
            if fields.len() > header.len() {
                return Err(ColumnError::Csv(
                    line,
                    format!(
                        "{} fields where the header has {}",
                        fields.len(),
                        header.len()
                    ),
                ));
            }
            Ok(if idx < fields.len() {
                fields.swap_remove(idx)
            } else {
                String::new()
            })
        })
        .collect()
}

/// The experiment's prompts and seeds from all the prompts of its file (see the
/// module docs for the draw).
pub fn draw(
    source: &PromptSource,
    seeds: &SeedSource,
    all: &[String],
) -> Result<Vec<DrawnPrompt>, PromptError> {
    let mut sampler = None;
    let rows: Vec<usize> = match source.sample {
        Some(n) => {
            if all.is_empty() && n > 0 {
                return Err(PromptError::NoPrompts { sample: n });
            }
            let mut rs =
                NumpyRandomState::new(source.sampling_seed).map_err(PromptError::SamplingSeed)?;
            let rows = rs
                .randint(0, all.len() as i64, n)
                .into_iter()
                .map(|i| i as usize)
                .collect();
            sampler = Some(rs);
            rows
        }
        None => (0..all.len()).collect(),
    };
    let image_seeds: Vec<u64> = match seeds {
        SeedSource::Drawn { seed } => {
            let mut rs = match sampler {
                Some(rs) if *seed == source.sampling_seed => rs,
                _ => NumpyRandomState::new(*seed).map_err(PromptError::ImageSeed)?,
            };
            rs.randint(0, THESIS_SEED_HIGH, rows.len())
                .into_iter()
                .map(|s| s as u64)
                .collect()
        }
        SeedSource::Listed(list) => {
            if list.is_empty() && !rows.is_empty() {
                return Err(PromptError::NoSeeds);
            }
            (0..rows.len()).map(|i| list[i % list.len()]).collect()
        }
    };
    Ok(rows
        .into_iter()
        .zip(image_seeds)
        .map(|(row, seed)| {
            let text = all[row].clone();
            let prompt = if source.cut_long_prompts {
                cut_prompt(&text, THESIS_MAX_CHARS)
            } else {
                text.clone()
            };
            DrawnPrompt {
                row,
                text,
                prompt,
                seed,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(text: &str) -> Vec<String> {
        match column_of(text, "prompt") {
            Ok(v) => v,
            Err(_) => panic!("not parsed"),
        }
    }

    #[test]
    fn quoted_fields_hold_commas_quotes_and_line_breaks() {
        let text = "\u{feff}id,prompt\r\n1,\"a cat, \"\"cute\"\", 4k\"\r\n\r\n2,plain\n3,\"two\nlines\"\n4,\n5,ab\"c\n6";
        assert_eq!(
            col(text),
            [
                "a cat, \"cute\", 4k",
                "plain",
                "two\nlines",
                "",
                "ab\"c",
                ""
            ]
        );
    }

    #[test]
    fn single_column_files_and_blank_lines() {
        assert_eq!(col("prompt\nx\n\n\ny\n"), ["x", "y"]);
        assert_eq!(col("prompt\r\"q\"\rz"), ["q", "z"]);
        assert_eq!(col("prompt\n\"\"\n"), [""]);
    }

    #[test]
    fn csv_errors_name_the_line() {
        assert!(matches!(
            column_of("prompt\nok\n\"open\n\n", "prompt"),
            Err(ColumnError::Csv(3, _))
        ));
        assert!(matches!(
            column_of("prompt\na,b\n", "prompt"),
            Err(ColumnError::Csv(2, _))
        ));
        assert!(matches!(
            column_of("", "prompt"),
            Err(ColumnError::NoHeader)
        ));
        match column_of("Prompt,x\n", "prompt") {
            Err(ColumnError::NoColumn(a)) => assert_eq!(a, "`Prompt`, `x`"),
            _ => panic!("expected NoColumn"),
        }
    }
}
