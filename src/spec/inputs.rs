//! The files a spec names, checked when a run needs them (`check_inputs`) rather
//! than when the spec is loaded: `tomex plan` counts the jobs of a thesis spec
//! whose prompt collection and model are not on this machine, while `tomex run`
//! refuses to start without them.
//!
//! Also the prompt CSV reader the plan uses ([`read_prompts`]): RFC 4180 (quoted
//! fields with commas, doubled quotes and line breaks; `\n` or `\r\n`), a header
//! row, blank lines skipped, as pandas' `read_csv` reads the thesis's files.

use std::fmt;
use std::path::{Path, PathBuf};

use super::errors::{did_you_mean, Problem};
use super::types::{ModelRef, Spec};

/// Why a prompt file cannot be used.
#[derive(Debug)]
pub enum PromptFileError {
    Missing(PathBuf),
    Read(PathBuf, std::io::Error),
    /// Nothing in the file (not even a header).
    Empty(PathBuf),
    /// A header but no rows.
    NoRows(PathBuf),
    /// Not CSV: `line` is 1-based.
    Csv {
        file: PathBuf,
        line: usize,
        message: String,
    },
    NoColumn {
        file: PathBuf,
        column: String,
        columns: Vec<String>,
    },
}

impl fmt::Display for PromptFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PromptFileError::Missing(p) => {
                write!(f, "prompt file `{}` does not exist", p.display())
            }
            PromptFileError::Read(p, e) => {
                write!(f, "prompt file `{}` cannot be read: {e}", p.display())
            }
            PromptFileError::Empty(p) => write!(f, "prompt file `{}` is empty", p.display()),
            PromptFileError::NoRows(p) => {
                write!(
                    f,
                    "prompt file `{}` has a header but no prompts",
                    p.display()
                )
            }
            PromptFileError::Csv {
                file,
                line,
                message,
            } => write!(
                f,
                "prompt file `{}` is not valid CSV: line {line}: {message}",
                file.display()
            ),
            PromptFileError::NoColumn {
                file,
                column,
                columns,
            } => {
                let hint = did_you_mean(column, columns.iter().map(String::as_str));
                let list = columns
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                write!(
                    f,
                    "prompt file `{}` has no column `{column}`{hint} (its columns: {list})",
                    file.display()
                )
            }
        }
    }
}

impl std::error::Error for PromptFileError {}

/// The prompts of `column` in the CSV `file`, in file order.
pub fn read_prompts(file: &Path, column: &str) -> Result<Vec<String>, PromptFileError> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PromptFileError::Missing(file.to_path_buf()))
        }
        Err(e) => return Err(PromptFileError::Read(file.to_path_buf(), e)),
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        PromptFileError::Csv {
            file: file.to_path_buf(),
            line,
            message: "not UTF-8 text".to_string(),
        }
    })?;
    let records = crate::csv_text::records(&text).map_err(|e| PromptFileError::Csv {
        file: file.to_path_buf(),
        line: e.line as usize,
        message: e.message,
    })?;
    let mut records = records.into_iter();
    let Some((_, header)) = records.next() else {
        return Err(PromptFileError::Empty(file.to_path_buf()));
    };
    let Some(index) = header.iter().position(|h| h == column) else {
        return Err(PromptFileError::NoColumn {
            file: file.to_path_buf(),
            column: column.to_string(),
            columns: header,
        });
    };
    let mut prompts = Vec::new();
    for (line, fields) in records {
        let line = line as usize;
        if fields.len() > header.len() {
            return Err(PromptFileError::Csv {
                file: file.to_path_buf(),
                line,
                message: format!(
                    "{} fields, but the header has {}",
                    fields.len(),
                    header.len()
                ),
            });
        }
        prompts.push(fields.get(index).cloned().unwrap_or_default());
    }
    if prompts.is_empty() {
        return Err(PromptFileError::NoRows(file.to_path_buf()));
    }
    Ok(prompts)
}

/// Checks the files `spec` reads: the prompt file (exists, is CSV, has rows and
/// the column; enough prompts when sampling without replacement) and a model
/// directory named by `dir`. A `models.lock` name is checked where the lock is
/// read (`model`), not here. `tomex run` calls this before generating anything;
/// `spec::load` does not, so `tomex plan` works without the inputs.
pub fn check_inputs(spec: &Spec) -> Vec<Problem> {
    let mut problems = Vec::new();
    let p = &spec.prompts;
    match read_prompts(&p.file, &p.column) {
        Ok(prompts) => {
            if let Some(n) = p.sample {
                if !p.replace && n > prompts.len() {
                    problems.push(spec.locations.problem(
                        "prompts.sample",
                        format!(
                            "{n} prompts cannot be drawn without replacement from the {} in `{}` \
                             (set `replace = true` to draw with replacement, as the thesis did)",
                            prompts.len(),
                            p.file.display()
                        ),
                    ));
                }
            }
        }
        Err(e) => {
            let key = if matches!(e, PromptFileError::NoColumn { .. }) {
                "prompts.column"
            } else {
                "prompts.file"
            };
            problems.push(spec.locations.problem(key, e.to_string()));
        }
    }
    if let ModelRef::Dir(dir) = &spec.model {
        if !dir.is_dir() {
            let what = if dir.exists() {
                "is a file, not a model directory"
            } else {
                "does not exist"
            };
            problems.push(spec.locations.problem(
                "model.dir",
                format!("model directory `{}` {what}", dir.display()),
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_quotes_commas_and_line_breaks() {
        let text = "\u{feff}id,prompt\r\n1,\"a cat, sitting\"\r\n\n2,\"say \"\"hi\"\"\nthen go\"\n3,plain\n";
        let r = crate::csv_text::records(text).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0], (1, vec!["id".to_string(), "prompt".to_string()]));
        assert_eq!(r[1].1[1], "a cat, sitting");
        assert_eq!(
            r[2],
            (4, vec!["2".to_string(), "say \"hi\"\nthen go".to_string()])
        );
        assert_eq!(r[3], (6, vec!["3".to_string(), "plain".to_string()]));
    }

    #[test]
    fn csv_unclosed_quote() {
        let e = crate::csv_text::records("prompt\n\"open\n").unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (2, "a quoted field is never closed")
        );
    }
}
