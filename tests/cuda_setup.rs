//! Loading the CUDA libraries ONNX Runtime's CUDA provider needs
//! (`engine::cuda_libraries`), on whatever this machine has: with no NVIDIA driver the
//! error names the driver; the libraries of PyPI's CUDA wheels (here those of torch's
//! environment, `tools/.venv`, when it exists) load without one. Each test says when
//! the machine lacks what it needs.

mod common;

use std::path::{Path, PathBuf};

use tomex::engine::cuda_libraries::{load_libraries, preload, CudaLibraryError, LIBRARIES};

fn has_driver() -> bool {
    // SAFETY: the NVIDIA driver's library, loaded and dropped to see whether it exists.
    unsafe { libloading::Library::new("libcuda.so.1") }.is_ok()
}

#[test]
fn without_a_driver_the_error_names_the_driver() {
    if has_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let err = preload(Path::new("/nonexistent/capi/libonnxruntime.so.1.31.1")).unwrap_err();
    assert!(matches!(err, CudaLibraryError::NoDriver { .. }), "{err}");
    assert!(
        err.to_string().contains("install the NVIDIA driver"),
        "{err}"
    );
}

#[test]
fn missing_libraries_are_named_with_the_fetch_command() {
    let empty = tempfile::tempdir().unwrap();
    match load_libraries(&[empty.path().to_path_buf()]) {
        // (Libraries another test of this process loaded count as found by name.)
        Ok(_) => eprintln!("skipped: the CUDA libraries are on the system's library path"),
        Err(err) => {
            let text = err.to_string();
            let CudaLibraryError::Missing { missing, .. } = &err else {
                panic!("{text}");
            };
            assert!(!missing.is_empty());
            for name in missing {
                assert!(text.contains(name.as_str()), "{text}");
            }
            assert!(
                text.contains("bash tools/fetch-onnxruntime.sh --gpu"),
                "{text}"
            );
        }
    }
}

/// `site-packages/nvidia/{cu13,cudnn}/lib` of torch's environment, if it was made.
fn wheel_dirs() -> Option<Vec<PathBuf>> {
    let lib = common::repo().join("tools/.venv/lib");
    let python = std::fs::read_dir(&lib).ok()?.find_map(|e| {
        let p = e.ok()?.path();
        p.file_name()?.to_str()?.starts_with("python").then_some(p)
    })?;
    let nvidia = python.join("site-packages/nvidia");
    let dirs = vec![nvidia.join("cu13/lib"), nvidia.join("cudnn/lib")];
    dirs.iter().all(|d| d.is_dir()).then_some(dirs)
}

#[test]
fn the_cuda_wheels_libraries_load_without_a_driver() {
    let Some(dirs) = wheel_dirs() else {
        eprintln!("skipped: no tools/.venv with PyPI's CUDA 13 wheels (tools/README.md makes it)");
        return;
    };
    match load_libraries(&dirs) {
        Ok(loaded) => {
            let needed = LIBRARIES.iter().filter(|(_, needed)| *needed).count();
            assert!(
                loaded.len() >= needed,
                "{} of {needed} loaded",
                loaded.len()
            );
        }
        // Every library that is there loaded (one that does not is a `Load` error); torch
        // does not install all that ONNX Runtime needs (cuRAND).
        Err(CudaLibraryError::Missing { missing, .. }) => {
            for name in &missing {
                assert!(
                    !dirs.iter().any(|d| d.join(name).is_file()),
                    "{name} is there but reported missing"
                );
            }
            eprintln!("torch's environment lacks {missing:?}; the others loaded");
        }
        Err(e) => panic!("{e}"),
    }
}

/// What `tools/fetch-onnxruntime.sh --gpu` put in `.ort/lib/cuda`, when it was run here:
/// every library ONNX Runtime's CUDA build needs is there and loads.
#[test]
fn the_fetched_cuda_libraries_load_without_a_driver() {
    let dir = common::repo().join(".ort/lib/cuda");
    if !dir.is_dir() {
        eprintln!("skipped: no .ort/lib/cuda (bash tools/fetch-onnxruntime.sh --gpu makes it)");
        return;
    }
    for (name, _) in LIBRARIES {
        assert!(
            dir.join(name).is_file(),
            "{name} is not in {}",
            dir.display()
        );
    }
    let loaded = load_libraries(&[dir]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.len(), LIBRARIES.len());
}
