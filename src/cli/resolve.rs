//! `--model` resolution: a model directory, or a name in models.lock whose files are
//! checked against their digests before anything runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::Global;
use crate::model::{DigestCache, ModelDir, ModelsLock};

/// The lock file named by `--lock`, else the default one.
pub fn lock_path(global: &Global) -> anyhow::Result<PathBuf> {
    match &global.lock {
        Some(p) => Ok(p.clone()),
        None => ModelsLock::find_default().context(
            "no models.lock in this folder or the project's; pass --lock PATH or a model directory",
        ),
    }
}

pub fn model_dir(global: &Global, model: &str) -> anyhow::Result<ModelDir> {
    let as_path = Path::new(model);
    if as_path.is_dir() || model.contains(std::path::MAIN_SEPARATOR) || model.starts_with('.') {
        return Ok(ModelDir::open(as_path)?);
    }
    let lock = ModelsLock::load(&lock_path(global)?)?;
    let entry = lock.entry(model)?;
    let mut cache = DigestCache::open_default();
    let problems = lock.verify(model, &mut cache)?;
    cache.save();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        bail!(
            "model `{model}` does not match {}:\n{}",
            lock.path().display(),
            list.join("\n")
        );
    }
    Ok(ModelDir::open(&lock.model_dir(entry))?)
}

/// A single-network model (the FID Inception): an `.onnx` path, or a name in models.lock
/// whose one `.onnx` file is checked against its digest.
pub fn network_file(global: &Global, model: &Path) -> anyhow::Result<PathBuf> {
    let text = model.to_string_lossy();
    if model.exists() || text.contains(std::path::MAIN_SEPARATOR) || text.ends_with(".onnx") {
        return Ok(model.to_path_buf());
    }
    let lock = ModelsLock::load(&lock_path(global)?)?;
    if lock.entry(&text).is_err() {
        bail!(
            "`{text}` is neither a file nor a model in {}; {}",
            lock.path().display(),
            crate::runner::fid::INCEPTION_HELP
        );
    }
    let file = lock.network_file(&text)?;
    let mut cache = DigestCache::open_default();
    let problems = lock.verify(&text, &mut cache)?;
    cache.save();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        bail!(
            "model `{text}` does not match {}:\n{}",
            lock.path().display(),
            list.join("\n")
        );
    }
    Ok(file)
}
