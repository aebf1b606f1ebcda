//! `models.lock`: model names, where each model's files live, where they came from,
//! and the SHA-256 of every file.
//!
//! ```toml
//! [models.tiny]
//! path = "models/tiny"            # relative to the lock file
//! source = "tools/make_tiny_model.py (random weights)"
//! [models.tiny.files]
//! "unet/model.onnx" = "sha256:…"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::DigestCache;

pub const LOCK_FILE: &str = "models.lock";

const HEADER: &str = "# models.lock: every file of every model, pinned by digest.\n\
# Written by `tomex models add`; checked by `tomex models verify [NAME]`.\n\n";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path} has no model named `{name}`; it names: {known}")]
    UnknownName {
        path: PathBuf,
        name: String,
        known: String,
    },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("model `{name}` in {path} has {count} .onnx files; a single-network model (e.g. the FID Inception) needs exactly one (register the file itself: `tomex models add {name} FILE.onnx --source TEXT`)")]
    NotOneNetwork {
        path: PathBuf,
        name: String,
        count: usize,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// Model directory, relative to the lock file (or absolute).
    pub path: PathBuf,
    /// Where the files came from, for the reader.
    pub source: String,
    /// File path within the model directory → `sha256:<hex>`.
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockFile {
    #[serde(default)]
    models: BTreeMap<String, LockEntry>,
}

/// One file that does not match the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Missing {
        file: PathBuf,
    },
    WrongDigest {
        file: PathBuf,
        expected: String,
        actual: String,
    },
    Unreadable {
        file: PathBuf,
        reason: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing { file } => write!(f, "{}: missing", file.display()),
            Problem::WrongDigest {
                file,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "{}: wrong digest (models.lock has {expected}, the file is {actual})",
                    file.display()
                )
            }
            Problem::Unreadable { file, reason } => {
                write!(f, "{}: unreadable ({reason})", file.display())
            }
        }
    }
}

pub struct ModelsLock {
    path: PathBuf,
    lock: LockFile,
}

impl ModelsLock {
    pub fn load(path: &Path) -> Result<ModelsLock, LockError> {
        let text = std::fs::read_to_string(path).map_err(|e| LockError::Read {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let lock = toml::from_str(&text).map_err(|e| LockError::Parse {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Ok(ModelsLock {
            path: path.to_path_buf(),
            lock,
        })
    }

    /// The lock at `path`, or an empty one that `save` will create.
    pub fn load_or_new(path: &Path) -> Result<ModelsLock, LockError> {
        if path.exists() {
            Self::load(path)
        } else {
            Ok(ModelsLock {
                path: path.to_path_buf(),
                lock: LockFile::default(),
            })
        }
    }

    /// `models.lock` in the working directory or next to the executable's project.
    pub fn find_default() -> Option<PathBuf> {
        let mut roots: Vec<PathBuf> = std::env::current_dir().into_iter().collect();
        if let Ok(exe) = std::env::current_exe() {
            roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
        }
        roots
            .into_iter()
            .map(|r| r.join(LOCK_FILE))
            .find(|p| p.is_file())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.lock.models.keys().map(String::as_str)
    }

    pub fn entry(&self, name: &str) -> Result<&LockEntry, LockError> {
        self.lock
            .models
            .get(name)
            .ok_or_else(|| LockError::UnknownName {
                path: self.path.clone(),
                name: name.to_string(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })
    }

    /// The model directory of an entry, resolved against the lock file's folder.
    pub fn model_dir(&self, entry: &LockEntry) -> PathBuf {
        self.base_dir().join(&entry.path)
    }

    /// Every file of `name` that is missing or does not match its digest.
    pub fn verify(&self, name: &str, cache: &mut DigestCache) -> Result<Vec<Problem>, LockError> {
        let entry = self.entry(name)?;
        let dir = self.model_dir(entry);
        let mut problems = Vec::new();
        for (rel, expected) in &entry.files {
            let file = dir.join(rel);
            if !file.is_file() {
                problems.push(Problem::Missing { file });
                continue;
            }
            match cache.digest(&file) {
                Ok(actual) if &actual == expected => {}
                Ok(actual) => problems.push(Problem::WrongDigest {
                    file,
                    expected: expected.clone(),
                    actual,
                }),
                Err(e) => problems.push(Problem::Unreadable {
                    file,
                    reason: e.to_string(),
                }),
            }
        }
        Ok(problems)
    }

    /// The one `.onnx` file of a single-network model (the FID Inception): an entry made
    /// from a file, or from a directory holding exactly one network.
    pub fn network_file(&self, name: &str) -> Result<PathBuf, LockError> {
        let entry = self.entry(name)?;
        let onnx: Vec<&String> = entry
            .files
            .keys()
            .filter(|f| f.to_ascii_lowercase().ends_with(".onnx"))
            .collect();
        match onnx[..] {
            [one] => Ok(self.model_dir(entry).join(one)),
            _ => Err(LockError::NotOneNetwork {
                path: self.path.clone(),
                name: name.to_string(),
                count: onnx.len(),
            }),
        }
    }

    /// Records model `name` (replacing an older entry): every file under `path` when it is
    /// a directory (a Stable Diffusion export), or the one file `path` (a single network
    /// such as the FID Inception; the entry's folder is then the file's).
    pub fn add(
        &mut self,
        name: &str,
        path: &Path,
        source: &str,
        cache: &mut DigestCache,
    ) -> Result<(), LockError> {
        let read_err = |e: std::io::Error| LockError::Read {
            path: path.into(),
            reason: e.to_string(),
        };
        let (dir, files) = if path.is_file() {
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| read_err(std::io::Error::other("no file name")))?;
            let digest = cache.digest(path).map_err(read_err)?;
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (dir, BTreeMap::from([(file_name, digest)]))
        } else {
            (
                path.to_path_buf(),
                digest_files(path, cache).map_err(read_err)?,
            )
        };
        let dir = dir.as_path();
        let base = self.base_dir().canonicalize().ok();
        let abs = dir.canonicalize().map_err(read_err)?;
        let path = match base.as_deref().and_then(|b| abs.strip_prefix(b).ok()) {
            Some(rel) => rel.to_path_buf(),
            None => abs,
        };
        self.lock.models.insert(
            name.to_string(),
            LockEntry {
                path,
                source: source.to_string(),
                files,
            },
        );
        Ok(())
    }

    /// The folder that entry paths are relative to: the lock file's own.
    fn base_dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    pub fn save(&self) -> Result<(), LockError> {
        let write_err = |reason: String| LockError::Write {
            path: self.path.clone(),
            reason,
        };
        let body = toml::to_string_pretty(&self.lock).map_err(|e| write_err(e.to_string()))?;
        crate::fsx::write_atomic(&self.path, format!("{HEADER}{body}").as_bytes())
            .map_err(|e| write_err(e.to_string()))
    }
}

/// Every file under `dir` (hidden ones skipped) by its `/`-separated relative path,
/// with its `sha256:` digest: what `models.lock` pins, and a model's identity in
/// job keys when it is given as a directory.
pub fn digest_files(
    dir: &Path,
    cache: &mut DigestCache,
) -> std::io::Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    for file in files_under(dir)? {
        let rel = file.strip_prefix(dir).expect("listed under dir");
        let rel = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        files.insert(rel, cache.digest(&file)?);
    }
    Ok(files)
}

/// Regular files under `dir`, sorted, hidden files skipped. Symlinks are followed
/// only inside the model: one that resolves outside `dir` is refused (ONNX Runtime
/// refuses such external data too, and a copy of the model would not have it), and one
/// that points back to a folder above it is a cycle, named in the error.
fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let root = dir.canonicalize()?;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::from([root.clone()]);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            let kind = std::fs::symlink_metadata(&p)?.file_type();
            let target = if kind.is_symlink() {
                let target = p.canonicalize().map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: a broken symlink: {e}", p.display()))
                })?;
                if !target.starts_with(&root) {
                    return Err(std::io::Error::other(format!(
                        "{} is a symlink to {}, outside the model directory {}; refused (ONNX \
                         Runtime refuses such files too): copy the file into the model",
                        p.display(),
                        target.display(),
                        dir.display()
                    )));
                }
                target
            } else {
                p.clone()
            };
            if target.is_dir() {
                if kind.is_symlink() && d.canonicalize()?.starts_with(&target) {
                    return Err(std::io::Error::other(format!(
                        "{} is a symlink to {}, a folder that contains it: a cycle",
                        p.display(),
                        target.display()
                    )));
                }
                // A folder reached twice (a symlink to a sibling) is listed once.
                if seen.insert(target.canonicalize()?) {
                    stack.push(p);
                }
            } else if target.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_cycles_and_outside_files_are_named_not_followed() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("m");
        std::fs::create_dir_all(model.join("unet")).unwrap();
        std::fs::write(model.join("unet/model.onnx"), b"graph").unwrap();
        // a link to a sibling inside the model is followed, its folder listed once
        symlink(model.join("unet"), model.join("unet-link")).unwrap();
        let mut cache = DigestCache::in_memory();
        let files = digest_files(&model, &mut cache).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");

        // two links back to the model's root: an error naming one, no hang
        symlink(&model, model.join("a")).unwrap();
        symlink(&model, model.join("b")).unwrap();
        let e = digest_files(&model, &mut cache).unwrap_err().to_string();
        assert!(e.contains("a folder that contains it: a cycle"), "{e}");
        std::fs::remove_file(model.join("a")).unwrap();
        std::fs::remove_file(model.join("b")).unwrap();

        // a weight file that resolves outside the model is refused
        std::fs::write(tmp.path().join("outside.bin"), b"weights").unwrap();
        symlink(
            tmp.path().join("outside.bin"),
            model.join("unet/weights.pb"),
        )
        .unwrap();
        let e = digest_files(&model, &mut cache).unwrap_err().to_string();
        assert!(e.contains("outside the model directory"), "{e}");
        assert!(e.contains("weights.pb"), "{e}");
    }

    #[test]
    fn add_verify_and_detect_tampering() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("m");
        std::fs::create_dir_all(model.join("unet")).unwrap();
        std::fs::write(model.join("unet/model.onnx"), b"weights").unwrap();
        std::fs::write(model.join("model_index.json"), b"{}").unwrap();
        let lock_path = tmp.path().join(LOCK_FILE);
        let mut cache = DigestCache::in_memory();
        let mut lock = ModelsLock::load_or_new(&lock_path).unwrap();
        lock.add("m", &model, "test", &mut cache).unwrap();
        lock.save().unwrap();

        let lock = ModelsLock::load(&lock_path).unwrap();
        assert_eq!(lock.entry("m").unwrap().path, PathBuf::from("m"));
        assert!(lock
            .verify("m", &mut DigestCache::in_memory())
            .unwrap()
            .is_empty());

        std::fs::write(model.join("unet/model.onnx"), b"tampered").unwrap();
        std::fs::remove_file(model.join("model_index.json")).unwrap();
        let problems = lock.verify("m", &mut DigestCache::in_memory()).unwrap();
        assert_eq!(problems.len(), 2);
        assert!(problems
            .iter()
            .any(|p| matches!(p, Problem::Missing { file } if file.ends_with("model_index.json"))));
        assert!(problems
            .iter()
            .any(|p| p.to_string().contains("unet/model.onnx: wrong digest")));

        let err = lock.entry("nope").unwrap_err().to_string();
        assert!(err.contains("no model named `nope`; it names: m"), "{err}");
    }

    #[test]
    fn a_single_network_file_is_its_own_model() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("inception");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pt_inception.onnx"), b"net").unwrap();
        std::fs::write(dir.join("notes.txt"), b"other file, not pinned").unwrap();
        let lock_path = tmp.path().join(LOCK_FILE);
        let mut cache = DigestCache::in_memory();
        let mut lock = ModelsLock::load_or_new(&lock_path).unwrap();
        lock.add("inc", &dir.join("pt_inception.onnx"), "export", &mut cache)
            .unwrap();
        // A directory with two networks is a model, but not a single network.
        std::fs::write(dir.join("other.onnx"), b"net2").unwrap();
        lock.add("two", &dir, "two", &mut cache).unwrap();
        lock.save().unwrap();

        let lock = ModelsLock::load(&lock_path).unwrap();
        let entry = lock.entry("inc").unwrap();
        assert_eq!(entry.path, PathBuf::from("inception"));
        assert_eq!(
            entry.files.keys().collect::<Vec<_>>(),
            vec!["pt_inception.onnx"]
        );
        assert_eq!(
            lock.network_file("inc").unwrap(),
            tmp.path().join("inception/pt_inception.onnx")
        );
        assert!(lock
            .verify("inc", &mut DigestCache::in_memory())
            .unwrap()
            .is_empty());
        let err = lock.network_file("two").unwrap_err().to_string();
        assert!(err.contains("has 2 .onnx files"), "{err}");
        std::fs::write(dir.join("pt_inception.onnx"), b"changed").unwrap();
        assert_eq!(
            lock.verify("inc", &mut DigestCache::in_memory())
                .unwrap()
                .len(),
            1
        );
    }
}
