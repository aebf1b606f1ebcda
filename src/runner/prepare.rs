//! A spec, its model and its prompts, expanded into a plan. `tomex plan` prepares
//! leniently (a missing model or prompt file is noted and jobs are still counted);
//! `tomex run` strictly (either is an error that says what to do).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::RunnerError;
use crate::diffusion::pipeline::ModelDefaults;
use crate::model::{digest_files, DigestCache, ModelDir, ModelsLock};
use crate::plan::{self, Plan};
use crate::spec::{self, Location, ModelRef, Problem, Spec};

/// Where the spec's model stands.
#[derive(Debug)]
pub enum ModelStatus {
    /// Present and (for a lock name) matching its digests.
    Ready {
        dir: ModelDir,
        files: BTreeMap<String, String>,
    },
    /// Known by its digests (a lock entry) but not checked or not present.
    Pinned {
        files: BTreeMap<String, String>,
        note: String,
        /// Where the lock says the model is, when that folder exists.
        dir: Option<PathBuf>,
    },
    /// Unknown: job keys are provisional.
    Missing(String),
}

/// Where the spec's prompts stand.
#[derive(Debug)]
pub enum PromptStatus {
    /// The prompt file's column holds this many prompts.
    Read(usize),
    /// The file could not be read; jobs are counted on placeholders.
    Missing(String),
}

/// A spec expanded into its plan.
pub struct Prepared {
    pub spec: Spec,
    pub plan: Plan,
    pub model: ModelStatus,
    pub prompts: PromptStatus,
}

impl Prepared {
    /// The model directory, for running.
    pub fn model_dir(&self) -> Option<&ModelDir> {
        match &self.model {
            ModelStatus::Ready { dir, .. } => Some(dir),
            _ => None,
        }
    }
}

/// The store a command works on: `--store` when given, else the spec's `store`, whose
/// problems (a file where a folder belongs) are then located at that key.
pub fn store_dir(spec: &Spec, arg: Option<&Path>) -> Result<PathBuf, RunnerError> {
    let (dir, from_spec) = match arg {
        Some(a) => (a.to_path_buf(), false),
        None => (spec.store.clone(), true),
    };
    if dir.exists() && !dir.is_dir() {
        let message = crate::store::StoreError::NotAFolder(dir.clone()).to_string();
        return Err(if from_spec {
            RunnerError::at(spec, "store", message)
        } else {
            RunnerError::Flag {
                flag: "store",
                message,
            }
        });
    }
    Ok(dir)
}

/// Opens (or creates) the store of [`store_dir`]; a store that cannot be opened (a
/// read-only folder, a file) is an error located like the spec's other values.
pub fn open_store(
    spec: &Spec,
    arg: Option<&Path>,
) -> Result<(PathBuf, crate::store::Store), RunnerError> {
    let dir = store_dir(spec, arg)?;
    match crate::store::Store::open(&dir) {
        Ok(store) => Ok((dir, store)),
        Err(e) if arg.is_none() => Err(RunnerError::at(
            spec,
            "store",
            format!("cannot open the store: {e}"),
        )),
        Err(e) => Err(RunnerError::Flag {
            flag: "store",
            message: format!("cannot open the store: {e}"),
        }),
    }
}

/// Loads and validates `spec_path` and expands it. `strict`: the model must be
/// present and match `models.lock`, and the prompt file readable.
pub fn prepare(
    spec_path: &Path,
    lock: Option<&Path>,
    strict: bool,
) -> Result<Prepared, RunnerError> {
    let mut spec = spec::load(spec_path)?;
    if strict {
        let problems = spec::check_inputs(&spec);
        if !problems.is_empty() {
            return Err(RunnerError::Located(problems));
        }
    }
    let model = model_status(&spec, lock, strict)?;
    take_model_defaults(&mut spec, &model)?;
    let files = match &model {
        ModelStatus::Ready { files, .. } | ModelStatus::Pinned { files, .. } => Some(files),
        ModelStatus::Missing(_) => None,
    };
    let (prompts, status) = match spec::read_prompts(&spec.prompts.file, &spec.prompts.column) {
        Ok(all) => {
            let n = all.len();
            (all, PromptStatus::Read(n))
        }
        Err(e) if strict => return Err(RunnerError::Prompts(e)),
        Err(e) => {
            let Some(sample) = spec.prompts.sample else {
                return Err(RunnerError::Uncountable(e));
            };
            let placeholders = (0..sample).map(|i| format!("<prompt {i}>")).collect();
            (
                placeholders,
                PromptStatus::Missing(format!("{e}; jobs counted on {sample} placeholder prompts")),
            )
        }
    };
    let plan = plan::expand(&spec, files, &prompts).map_err(|e| {
        // Too few prompts: say it as `run`'s input check says it, at `prompts.sample`.
        let located: Vec<Problem> = spec::check_inputs(&spec)
            .into_iter()
            .filter(|p| p.key == "prompts.sample")
            .collect();
        if located.is_empty() {
            RunnerError::from(e)
        } else {
            RunnerError::Located(located)
        }
    })?;
    Ok(Prepared {
        spec,
        plan,
        model,
        prompts: status,
    })
}

/// The image size and scheduler a spec leaves out, from its model as diffusers'
/// pipeline takes them. A model that is not here leaves 512 and PNDM, and a warning
/// that the job keys are provisional.
fn take_model_defaults(spec: &mut Spec, model: &ModelStatus) -> Result<(), RunnerError> {
    if !spec.generation.from_model.any() {
        return Ok(());
    }
    let dir = match model {
        ModelStatus::Ready { dir, .. } => Some(dir.clone()),
        ModelStatus::Pinned {
            dir: Some(path), ..
        } => ModelDir::open(path).ok(),
        _ => None,
    };
    let Some(dir) = dir else {
        spec.warnings.push(Problem::new(
            Location::new(&spec.path, None),
            "generation",
            "the model is not here to say its image size, scheduler or guidance, which the spec \
             leaves out: 512x512, PNDM and 7.5 until it is (job keys are provisional)",
        ));
        return Ok(());
    };
    let defaults = ModelDefaults::of(&dir)?;
    let scheduler = if spec.generation.from_model.scheduler {
        defaults
            .scheduler()
            .map_err(|error| RunnerError::ModelScheduler {
                spec: spec.path.clone(),
                error,
            })?
    } else {
        spec.generation.scheduler
    };
    spec.generation
        .take_model_defaults(defaults.size, scheduler, defaults.guidance);
    Ok(())
}

fn model_status(
    spec: &Spec,
    lock: Option<&Path>,
    strict: bool,
) -> Result<ModelStatus, RunnerError> {
    // What `run` refuses, located at the spec's key (`plan` only notes it).
    let located = |key: &str, message: String| RunnerError::at(spec, key, message);
    match &spec.model {
        ModelRef::Dir(dir) => {
            if !dir.is_dir() {
                let what = if dir.exists() {
                    "is a file, not a model directory"
                } else {
                    "does not exist"
                };
                let message = format!("model directory {} {what}", dir.display());
                if strict {
                    return Err(located("model.dir", message));
                }
                return Ok(ModelStatus::Missing(message));
            }
            let model = ModelDir::open(dir)?;
            let mut cache = DigestCache::open_default();
            let files =
                digest_files(dir, &mut cache).map_err(|e| RunnerError::io("reading", dir, e))?;
            cache.save();
            Ok(ModelStatus::Ready { dir: model, files })
        }
        ModelRef::LockName(name) => {
            let register = format!("register it with `tomex models add {name} DIR --source TEXT`");
            let lock_path: Option<PathBuf> = lock
                .map(Path::to_path_buf)
                .or_else(ModelsLock::find_default);
            let Some(lock_path) = lock_path else {
                if strict {
                    return Err(located(
                        "model.name",
                        format!("no models.lock found for model `{name}`; {register}"),
                    ));
                }
                return Ok(ModelStatus::Missing(format!(
                    "no models.lock found for model `{name}`"
                )));
            };
            let lock = ModelsLock::load(&lock_path)?;
            let entry = match lock.entry(name) {
                Ok(entry) => entry,
                Err(e) if strict => return Err(located("model.name", format!("{e}; {register}"))),
                Err(_) => {
                    return Ok(ModelStatus::Missing(format!(
                        "model `{name}` is not in {}; {register}",
                        lock_path.display()
                    )))
                }
            };
            let files = entry.files.clone();
            let dir = lock.model_dir(entry);
            if !strict {
                let note = if dir.is_dir() {
                    format!("model `{name}` at {}", dir.display())
                } else {
                    format!(
                        "model `{name}` is pinned in {} but {} is missing",
                        lock_path.display(),
                        dir.display()
                    )
                };
                let dir = dir.is_dir().then_some(dir);
                return Ok(ModelStatus::Pinned { files, note, dir });
            }
            let mut cache = DigestCache::open_default();
            let problems = lock.verify(name, &mut cache)?;
            cache.save();
            if !problems.is_empty() {
                return Err(RunnerError::ModelMismatch {
                    name: name.clone(),
                    lock: lock_path,
                    problems: problems.iter().map(ToString::to_string).collect(),
                });
            }
            Ok(ModelStatus::Ready {
                dir: ModelDir::open(&dir)?,
                files,
            })
        }
    }
}
