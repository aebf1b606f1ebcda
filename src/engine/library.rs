//! Finding the ONNX Runtime shared library (loaded with ort's `load-dynamic`).
//!
//! Order: an explicit path (`--ort-lib`), `ORT_DYLIB_PATH`, the project-local copy
//! that `tools/fetch-onnxruntime.sh` writes to `.ort/lib/`, then the library inside
//! an installed Python `onnxruntime` package.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The command that fetches a library, quoted in every "not found" message.
pub const FETCH_HINT: &str = "bash tools/fetch-onnxruntime.sh   (or `--gpu` for the CUDA build)";

/// Folder, relative to a project root, where the fetch script puts the library.
const LOCAL_DIR: &str = ".ort/lib";

/// Every place that was looked at, for the error message when nothing is found.
#[derive(Debug, Default)]
pub struct LibrarySearch {
    pub tried: Vec<String>,
}

/// Finds the library, or lists where it looked.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, LibrarySearch> {
    let mut search = LibrarySearch::default();
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        search
            .tried
            .push(format!("--ort-lib {} (no such file)", path.display()));
        return Err(search);
    }
    if let Some(value) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        if path.is_file() {
            return Ok(path);
        }
        search
            .tried
            .push(format!("ORT_DYLIB_PATH={} (no such file)", path.display()));
        return Err(search);
    }
    for root in project_roots() {
        let dir = root.join(LOCAL_DIR);
        if let Some(lib) = library_in(&dir) {
            return Ok(lib);
        }
        search.tried.push(dir.display().to_string());
    }
    match python_onnxruntime_dir() {
        Some(dir) => {
            if let Some(lib) = library_in(&dir) {
                return Ok(lib);
            }
            search.tried.push(dir.display().to_string());
        }
        None => search
            .tried
            .push("python3 -c 'import onnxruntime' (not installed)".into()),
    }
    Err(search)
}

/// The working directory and every ancestor of the executable: a binary in
/// `target/release/` finds the copy in the repository it was built from.
fn project_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.dedup();
    roots
}

/// `libonnxruntime.so.1.x.y` (or the unversioned name) in `dir`, newest first.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let (prefix, suffix) = (std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let stem = format!("{prefix}onnxruntime{suffix}");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == stem || n.starts_with(&format!("{stem}.")))
        })
        .collect();
    found.sort();
    found.pop()
}

/// `site-packages/onnxruntime/capi` of the first `python3` on the PATH, if any.
fn python_onnxruntime_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim()).join("capi"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_versioned_library_in_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(library_in(dir.path()), None);
        std::fs::write(dir.path().join("libonnxruntime_providers_shared.so"), b"").unwrap();
        std::fs::write(dir.path().join("libonnxruntime.so.1.31.1"), b"").unwrap();
        assert_eq!(
            library_in(dir.path()),
            Some(dir.path().join("libonnxruntime.so.1.31.1"))
        );
    }

    #[test]
    fn an_explicit_path_that_does_not_exist_is_reported() {
        let err = find_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert_eq!(err.tried.len(), 1);
        assert!(err.tried[0].contains("--ort-lib /nonexistent"));
    }
}
