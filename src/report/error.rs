//! Why a report could not be built or written.

use std::path::PathBuf;

use crate::csv_text::CsvError;
use crate::store::StoreError;

/// A report's failure, with the file or drawing it concerns. OS errors are part of the
/// message (not a `source`), so a chain of contexts says them once.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{action} {}: {error}", path.display())]
    Io {
        /// `writing`, `creating`, …
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("reading {}: {error}", path.display())]
    Csv { path: PathBuf, error: CsvError },
    #[error("drawing {what}: {message}")]
    Draw { what: &'static str, message: String },
    #[error("the thesis's tables: {0}")]
    Thesis(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReportError {
    pub fn writing(path: &std::path::Path, error: std::io::Error) -> ReportError {
        ReportError::Io {
            action: "writing",
            path: path.to_path_buf(),
            error,
        }
    }

    pub fn creating(path: &std::path::Path, error: std::io::Error) -> ReportError {
        ReportError::Io {
            action: "creating",
            path: path.to_path_buf(),
            error,
        }
    }
}
