//! `tomex models list|verify|add`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;

use super::resolve::lock_path;
use super::Global;
use crate::model::{DigestCache, ModelsLock};

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// List the models in models.lock.
    List,
    /// Check every file of a model (or of all models) against its digest.
    Verify {
        /// Model name; all models when omitted.
        name: Option<String>,
        /// Hash every file again instead of trusting the digest cache (which rehashes
        /// a file whenever its size, modification time, inode or status-change time
        /// changed).
        #[arg(long)]
        full: bool,
    },
    /// Record a model under a name: a directory (every file in it, e.g. a Stable
    /// Diffusion export) or one .onnx file (a single network, e.g. the FID Inception from
    /// tools/export_inception.py), with the digests of its files.
    Add {
        name: String,
        /// A model directory, or a single .onnx file.
        path: PathBuf,
        /// Where the files came from (an export command, a URL, a paper).
        #[arg(long)]
        source: String,
    },
}

pub fn run(global: &Global, cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::List => {
            let lock = ModelsLock::load(&lock_path(global)?)?;
            for name in lock.names() {
                let entry = lock.entry(name)?;
                say!(
                    "{name}\t{}\t{} files\t{}",
                    entry.path.display(),
                    entry.files.len(),
                    entry.source
                );
            }
            Ok(())
        }
        ModelsCommand::Verify { name, full } => {
            let lock = ModelsLock::load(&lock_path(global)?)?;
            let names: Vec<String> = match name {
                Some(n) => vec![n],
                None => lock.names().map(str::to_string).collect(),
            };
            let mut cache = if full {
                DigestCache::in_memory()
            } else {
                DigestCache::open_default()
            };
            let mut bad = 0;
            for name in &names {
                let problems = lock.verify(name, &mut cache)?;
                if problems.is_empty() {
                    let how = if full {
                        "every file hashed"
                    } else {
                        "unchanged files from the digest cache; --full rehashes"
                    };
                    say!(
                        "{name}: ok ({} files; {how})",
                        lock.entry(name)?.files.len()
                    );
                } else {
                    bad += 1;
                    say!("{name}: {} problem(s)", problems.len());
                    for p in problems {
                        say!("  {p}");
                    }
                }
            }
            cache.save();
            if bad > 0 {
                bail!(
                    "{bad} of {} model(s) do not match {}",
                    names.len(),
                    lock.path().display()
                );
            }
            Ok(())
        }
        ModelsCommand::Add { name, path, source } => {
            if !path.exists() {
                bail!("{} does not exist", path.display());
            }
            if path.is_file()
                && !path
                    .to_string_lossy()
                    .to_ascii_lowercase()
                    .ends_with(".onnx")
            {
                bail!(
                    "{} is a file but not an .onnx network; give a model directory or one .onnx file",
                    path.display()
                );
            }
            let lock_path = global
                .lock
                .clone()
                .unwrap_or_else(|| PathBuf::from(crate::model::LOCK_FILE));
            let mut lock = ModelsLock::load_or_new(&lock_path)?;
            let mut cache = DigestCache::open_default();
            lock.add(&name, &path, &source, &mut cache)?;
            cache.save();
            lock.save()?;
            say!(
                "{name}: {} files recorded in {}",
                lock.entry(&name)?.files.len(),
                lock_path.display()
            );
            Ok(())
        }
    }
}
