//! What follows the jobs in `tomex run` and is the whole of `tomex report`: the FID step
//! (when the spec asks for it), the paired-metric step, then the report's files. Both
//! commands call [`finish`]; each step's failure leaves the later ones to render what
//! there is.

use std::path::{Path, PathBuf};

use super::fid::{measure_fid, FidObserver, FidOutcome, InceptionSource};
use super::paired::{update_paired, PairedUpdate};
use super::{Prepared, RunnerError};
use crate::engine::Runtime;
use crate::report::{render_spec, Rendered, ReportError};
use crate::store::Store;

/// How the FID step goes this time.
pub enum FidStep<'a> {
    /// The spec does not compute FID (`[metrics] fid = false`).
    NotAsked,
    /// Not now, for the reason given (a shard's run holds part of every set).
    Deferred(String),
    /// The network cannot be had (not registered, its file changed, no ONNX Runtime).
    Unavailable(RunnerError),
    /// Measure with this network on this runtime.
    Measure {
        runtime: &'a Runtime,
        inception: &'a InceptionSource,
    },
}

/// How the FID step went.
pub enum FidResult {
    NotAsked,
    Deferred(String),
    Unavailable(RunnerError),
    Measured(FidOutcome),
    /// It began and stopped (the network does not load, `fid.csv` cannot be written);
    /// what it computed before is in `fid.csv`.
    Stopped(RunnerError),
}

impl FidResult {
    /// What the report's summary says about FID.
    fn notes(&self) -> Vec<String> {
        match self {
            FidResult::NotAsked => vec![],
            FidResult::Deferred(note) => vec![note.clone()],
            FidResult::Unavailable(e) => vec![format!("FID not computed: {e:#}")],
            FidResult::Measured(o) => o.notes.clone(),
            FidResult::Stopped(e) => vec![format!("the FID step stopped: {e:#}")],
        }
    }

    /// The error that kept FID values from the report, if any.
    pub fn error(self) -> Option<RunnerError> {
        match self {
            FidResult::Unavailable(e) | FidResult::Stopped(e) => Some(e),
            _ => None,
        }
    }
}

/// What [`finish`] did, step by step.
pub struct Finished {
    /// The report folder.
    pub dir: PathBuf,
    pub fid: FidResult,
    pub paired: Result<PairedUpdate, RunnerError>,
    pub rendered: Result<Rendered, ReportError>,
}

/// FID (as `fid` says), paired metrics, and the report of `prepared` from `store`, into
/// `dir`.
pub fn finish(
    prepared: &Prepared,
    store: &Store,
    dir: &Path,
    fid: FidStep<'_>,
    observer: &mut dyn FidObserver,
) -> Finished {
    let fid = match fid {
        FidStep::NotAsked => FidResult::NotAsked,
        FidStep::Deferred(note) => FidResult::Deferred(note),
        FidStep::Unavailable(e) => FidResult::Unavailable(e),
        FidStep::Measure { runtime, inception } => {
            match measure_fid(prepared, store, runtime, inception, dir, observer) {
                Ok(outcome) => FidResult::Measured(outcome),
                Err(e) => FidResult::Stopped(e),
            }
        }
    };
    let (spec, plan) = (&prepared.spec, &prepared.plan);
    let paired = update_paired(spec, plan, store, dir);
    let mut notes = fid.notes();
    if let Err(e) = &paired {
        notes.push(format!("paired metrics not computed: {e:#}"));
    }
    let rendered = render_spec(spec, plan, store, dir, &notes);
    Finished {
        dir: dir.to_path_buf(),
        fid,
        paired,
        rendered,
    }
}
