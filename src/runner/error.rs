//! Why a run, a report or one of their steps could not go on. Problems in the user's
//! files are located (file, line, key) as the spec's own checks locate them; OS errors
//! are part of the message (not a `source`), so a chain of contexts says them once.

use std::path::PathBuf;

use crate::diffusion::pipeline::PipelineError;
use crate::engine::EngineError;
use crate::metrics::paired::PairedError;
use crate::metrics::FidError;
use crate::model::{LockError, ModelError};
use crate::plan::PlanError;
use crate::report::ReportError;
use crate::spec::{Problem, PromptFileError, SpecErrors};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// Problems found in the spec's values or inputs, one located line each.
    #[error("{}", lines(.0))]
    Located(Vec<Problem>),
    /// A problem with a command-line flag (`--store`).
    #[error("--{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    #[error(transparent)]
    Spec(#[from] SpecErrors),
    #[error("reading the prompts: {0}")]
    Prompts(PromptFileError),
    /// The prompt file is missing and `prompts.sample` does not say how many there are.
    #[error("{0}; without the file or `prompts.sample` the jobs cannot be counted")]
    Uncountable(PromptFileError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A model's files differ from what `models.lock` pins.
    #[error("model `{name}` does not match {}:\n{}", lock.display(), indented(.problems))]
    ModelMismatch {
        name: String,
        lock: PathBuf,
        problems: Vec<String>,
    },
    #[error("{}: generation.scheduler is left to the model: {error}", spec.display())]
    ModelScheduler { spec: PathBuf, error: PipelineError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The FID Inception could not be loaded: no set can be featurised.
    #[error("loading the FID Inception `{name}` ({}): {error}", path.display())]
    InceptionLoad {
        name: String,
        path: PathBuf,
        error: FidError,
    },
    #[error(transparent)]
    Fid(#[from] FidError),
    #[error("caching the statistics of the {label}: {error}")]
    FidCache { label: String, error: FidError },
    #[error("paired metrics of {key}: {error}")]
    Paired { key: String, error: PairedError },
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("{action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
}

impl RunnerError {
    /// One problem at `key` of the spec.
    pub fn at(spec: &crate::spec::Spec, key: &str, message: impl Into<String>) -> RunnerError {
        RunnerError::Located(vec![spec.locations.problem(key, message.into())])
    }

    pub fn io(action: &'static str, path: &std::path::Path, error: std::io::Error) -> RunnerError {
        RunnerError::Io {
            action,
            path: path.to_path_buf(),
            error,
        }
    }
}

/// Why one job made no image. Its text is what the store records for the job
/// (`error.json`), so the variants carry the lower layers' messages as text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Scheduler(String),
    #[error("the job asks for a {wanted} UNet, this pipeline runs {runs}")]
    Precision { wanted: String, runs: String },
    /// Opening or warming up a UNet the jobs need (every job would fail alike).
    #[error("warm-up: {0}")]
    WarmUp(String),
    #[error("{0}")]
    Generate(String),
    #[error("encoding the PNG: {0}")]
    Png(String),
}

fn lines(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

fn indented(problems: &[String]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    lines.join("\n")
}
