//! Experiment specs: the TOML schema, defaults, `extends`, and validation with
//! file/line/column messages. The format is documented in README.md, "Spec
//! reference".
//!
//! * [`load`] reads a spec file and the files it `extends`, checks syntax, keys,
//!   types and the semantics that need nothing but the spec, and returns a
//!   [`Spec`] or *every* problem found ([`SpecErrors`]). It opens no model, no
//!   prompt file and no ONNX Runtime, so `tomex plan` works anywhere.
//! * [`check_inputs`] checks the files a run reads (the prompt CSV, a model
//!   directory); `tomex run` calls it before generating.
//!
//! Steps: `source` (located TOML trees, `extends`, deep merge) → `schema` (keys,
//! types, where each key was written) → `validate` (defaults and semantic checks
//! into [`Spec`]).

mod errors;
mod inputs;
mod schema;
mod source;
mod types;
mod validate;

use std::path::Path;

pub use errors::{Location, Pos, Problem, SpecErrors};
pub use inputs::{check_inputs, read_prompts, PromptFileError};
pub use schema::Locations;
pub use types::*;
pub use validate::{COMPONENTS, FID_DIMS, MAX_NUMPY_SEED, PALETTE, THESIS_RATIOS};

/// Reads, merges (`extends`) and validates the spec at `path`.
///
/// Paths in the spec (`store`, `prompts.file`, `model.dir`, an `.onnx`
/// `metrics.inception`) are resolved against the folder of the file that wrote
/// them; messages name files as `path` names them (a base file: joined onto its
/// includer's folder). Warnings (cells skipped because r exceeds a
/// configuration's maximum, …) come back in [`Spec::warnings`].
pub fn load(path: &Path) -> Result<Spec, SpecErrors> {
    let mut ctx = schema::Ctx::new(path);
    let tree = source::load_tree(path, &mut ctx.problems);
    let spec = match tree {
        // Problems in an `extends` chain stop here too: the merged tree would
        // report keys as missing that the broken base was meant to give.
        Some(tree) if ctx.problems.is_empty() => validate::build(&mut ctx, path, &tree),
        _ => None,
    };
    if !ctx.problems.is_empty() {
        let mut problems = ctx.problems;
        sort_problems(&mut problems, path);
        return Err(SpecErrors { problems });
    }
    let mut spec = spec.expect("a spec without problems is built");
    let mut warnings = ctx.warnings;
    sort_problems(&mut warnings, path);
    spec.warnings = warnings;
    Ok(spec)
}

/// File order: the loaded file first, then base files in the order first seen;
/// within a file by position.
fn sort_problems(problems: &mut [Problem], root: &Path) {
    let mut files: Vec<&Path> = vec![root];
    for p in problems.iter() {
        if !files.contains(&p.file()) {
            files.push(p.file());
        }
    }
    let rank: Vec<(std::path::PathBuf, usize)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.to_path_buf(), i))
        .collect();
    let file_rank = |p: &Problem| {
        rank.iter()
            .find(|(f, _)| f == p.file())
            .map_or(usize::MAX, |(_, i)| *i)
    };
    problems.sort_by_key(|p| (file_rank(p), p.location.pos));
}
