//! The CUDA libraries ONNX Runtime's CUDA provider links against, loaded before it
//! starts, as the Python package's `onnxruntime.preload_dlls()` does: the provider
//! (`libonnxruntime_providers_cuda.so`) finds cuBLAS, cuDNN and the CUDA runtime only
//! if they are already in the process or on the system's library path.
//!
//! Where they are looked for, in order: `cuda/` beside the ONNX Runtime library (what
//! `tools/fetch-onnxruntime.sh --gpu` writes, from the PyPI wheels ONNX Runtime 1.31's
//! `[cuda,cudnn]` extras name), the `nvidia/cu13/lib` and `nvidia/cudnn/lib` folders of
//! the Python environment that holds ONNX Runtime (a `pip install
//! onnxruntime-gpu[cuda,cudnn]`, or torch's), then the system's library path. The
//! driver (`libcuda.so.1`) comes only from the system. Each failure names what is
//! missing and how to get it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

/// The fetch script's folder for the libraries, beside the ONNX Runtime library.
pub const LOCAL_CUDA_DIR: &str = "cuda";

/// What ONNX Runtime 1.31's CUDA build (CUDA 13.0, cuDNN 9) links against, in load
/// order (cuBLAS needs cuBLASLt first). `true`: needed; NVRTC is optional, as in
/// `preload_dlls`.
pub const LIBRARIES: [(&str, bool); 7] = [
    ("libcudart.so.13", true),
    ("libcublasLt.so.13", true),
    ("libcublas.so.13", true),
    ("libcurand.so.10", true),
    ("libcufft.so.12", true),
    ("libnvrtc.so.13", false),
    ("libcudnn.so.9", true),
];

/// The CUDA version ONNX Runtime 1.31's GPU build was made with (`cuda_version` of its
/// wheel), as `cudaDriverGetVersion` counts: 1000 × major + 10 × minor.
const BUILT_FOR_CUDA: i32 = 13_000;

/// Why the CUDA libraries could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaLibraryError {
    #[error("no NVIDIA driver: libcuda.so.1 could not be loaded ({reason}); install the NVIDIA driver (CUDA {major} needs driver 580 or newer)", major = BUILT_FOR_CUDA / 1000)]
    NoDriver { reason: String },
    #[error("the NVIDIA driver supports CUDA {}.{}; ONNX Runtime's CUDA build needs CUDA {}.{} (driver 580 or newer): update the driver", .driver / 1000, .driver % 1000 / 10, BUILT_FOR_CUDA / 1000, BUILT_FOR_CUDA % 1000 / 10)]
    OldDriver { driver: i32 },
    #[error("ONNX Runtime's CUDA build needs {} (looked in {} and the system's library path); fetch them from PyPI with: bash tools/fetch-onnxruntime.sh --gpu", .missing.join(", "), .searched.join(", "))]
    Missing {
        missing: Vec<String>,
        searched: Vec<String>,
    },
    #[error("{library} was found but could not be loaded: {reason}")]
    Load { library: String, reason: String },
}

/// Where each library is: a file in one of `dirs`, else `None` (the system's library
/// path, by name). Missing needed ones are an error.
pub fn locate(dirs: &[PathBuf]) -> Vec<(&'static str, Option<PathBuf>)> {
    LIBRARIES
        .iter()
        .map(|&(name, _)| {
            let file = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
            (name, file)
        })
        .collect()
}

/// The folders searched for `ort_library`'s CUDA libraries (see the module docs).
pub fn search_dirs(ort_library: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = ort_library.parent() {
        dirs.push(dir.join(LOCAL_CUDA_DIR));
        // .../site-packages/onnxruntime/capi/libonnxruntime.so.*: the wheels' folders.
        if let Some(site) = dir.parent().and_then(Path::parent) {
            dirs.push(site.join("nvidia/cu13/lib"));
            dirs.push(site.join("nvidia/cudnn/lib"));
        }
    }
    dirs
}

/// Loads the driver and the libraries once per process (later calls give the first
/// call's result). The libraries stay loaded for the process's life.
pub fn preload(ort_library: &Path) -> Result<(), CudaLibraryError> {
    static DONE: OnceLock<Result<(), CudaLibraryError>> = OnceLock::new();
    DONE.get_or_init(|| load_all(ort_library)).clone()
}

fn open(name_or_path: &std::ffi::OsStr) -> Result<Library, libloading::Error> {
    // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's
    // libraries, which ONNX Runtime's CUDA provider would load the same way.
    unsafe { Library::open(Some(name_or_path), RTLD_NOW | RTLD_GLOBAL) }
}

/// The loader's message: libloading's own is only "dlopen failed", with the loader's
/// as its source.
fn reason(e: libloading::Error) -> String {
    match std::error::Error::source(&e) {
        Some(why) => why.to_string(),
        None => e.to_string(),
    }
}

fn load_all(ort_library: &Path) -> Result<(), CudaLibraryError> {
    let driver = open("libcuda.so.1".as_ref())
        .map_err(|e| CudaLibraryError::NoDriver { reason: reason(e) })?;
    let libraries = load_libraries(&search_dirs(ort_library))?;
    let driver_version = driver_cuda_version(&driver);
    // Loaded for good: the provider resolves its symbols against them from now on.
    std::mem::forget(driver);
    std::mem::forget(libraries);
    match driver_version {
        Some(v) if v < BUILT_FOR_CUDA => Err(CudaLibraryError::OldDriver { driver: v }),
        _ => Ok(()),
    }
}

/// Loads [`LIBRARIES`] from `dirs` (else by name from the system's library path), in
/// order, into the process's global symbol scope. Needs no driver.
pub fn load_libraries(dirs: &[PathBuf]) -> Result<Vec<Library>, CudaLibraryError> {
    let mut loaded = Vec::new();
    let mut missing = Vec::new();
    for ((name, file), (_, needed)) in locate(dirs).into_iter().zip(LIBRARIES) {
        let target = file.as_deref().map_or(name.as_ref(), Path::as_os_str);
        match open(target) {
            Ok(lib) => loaded.push(lib),
            Err(e) if file.is_some() => {
                return Err(CudaLibraryError::Load {
                    library: target.to_string_lossy().into_owned(),
                    reason: reason(e),
                })
            }
            Err(_) if needed => missing.push(name.to_string()),
            Err(_) => {}
        }
    }
    if missing.is_empty() {
        Ok(loaded)
    } else {
        Err(CudaLibraryError::Missing {
            missing,
            searched: dirs.iter().map(|d| d.display().to_string()).collect(),
        })
    }
}

/// The CUDA version the driver supports (`cuDriverGetVersion`), if it says.
fn driver_cuda_version(driver: &Library) -> Option<i32> {
    type GetVersion = unsafe extern "C" fn(*mut i32) -> i32;
    // SAFETY: `cuDriverGetVersion(int*)` is the driver API's C signature; it writes
    // one int and returns CUDA_SUCCESS (0) or an error code.
    unsafe {
        let f = driver.get::<GetVersion>(b"cuDriverGetVersion\0").ok()?;
        let mut version = 0;
        (f(&mut version) == 0).then_some(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_are_found_in_the_fetch_folder_first() {
        let root = tempfile::tempdir().unwrap();
        let capi = root.path().join("site-packages/onnxruntime/capi");
        let fetched = capi.join(LOCAL_CUDA_DIR);
        let wheel = root.path().join("site-packages/nvidia/cudnn/lib");
        std::fs::create_dir_all(&fetched).unwrap();
        std::fs::create_dir_all(&wheel).unwrap();
        std::fs::write(fetched.join("libcudart.so.13"), b"").unwrap();
        std::fs::write(wheel.join("libcudnn.so.9"), b"").unwrap();
        std::fs::write(wheel.join("libcudart.so.13"), b"").unwrap();
        let dirs = search_dirs(&capi.join("libonnxruntime.so.1.31.1"));
        assert_eq!(dirs[0], fetched);
        let found = locate(&dirs);
        assert_eq!(
            found[0],
            ("libcudart.so.13", Some(fetched.join("libcudart.so.13")))
        );
        assert_eq!(
            found[6],
            ("libcudnn.so.9", Some(wheel.join("libcudnn.so.9")))
        );
        assert_eq!(found[1], ("libcublasLt.so.13", None));
    }

    #[test]
    fn messages_say_what_is_missing_and_how_to_get_it() {
        let missing = CudaLibraryError::Missing {
            missing: vec!["libcublasLt.so.13".into(), "libcudnn.so.9".into()],
            searched: vec![".ort/lib/cuda".into()],
        }
        .to_string();
        assert!(
            missing.contains("needs libcublasLt.so.13, libcudnn.so.9"),
            "{missing}"
        );
        assert!(
            missing.contains("tools/fetch-onnxruntime.sh --gpu"),
            "{missing}"
        );
        let old = CudaLibraryError::OldDriver { driver: 12_040 }.to_string();
        assert!(
            old.contains("supports CUDA 12.4") && old.contains("needs CUDA 13.0"),
            "{old}"
        );
        let none = CudaLibraryError::NoDriver {
            reason: "not found".into(),
        }
        .to_string();
        assert!(none.contains("install the NVIDIA driver"), "{none}");
    }
}
