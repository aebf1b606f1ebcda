//! The process-wide ONNX Runtime environment and session construction.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;

use super::device::Device;
use super::device_memory::{sample_peak, DeviceMemory, SAMPLE_EVERY};
use super::flash_operator::flash_domain;
use super::library::{find_library, FETCH_HINT};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no ONNX Runtime library found; looked in:\n  {}\nfetch one with: {FETCH_HINT}\nor point --ort-lib / ORT_DYLIB_PATH at a libonnxruntime.so", .tried.join("\n  "))]
    LibraryNotFound { tried: Vec<String> },
    #[error("could not load the ONNX Runtime library {path}: {reason}\nfetch a matching one (ONNX Runtime 1.31) with: {FETCH_HINT}")]
    LibraryLoad { path: PathBuf, reason: String },
    #[error(
        "ONNX Runtime was already loaded from {loaded} in this process; cannot switch to {wanted}"
    )]
    LibraryConflict { loaded: PathBuf, wanted: PathBuf },
    #[error("the ONNX Runtime library {path} has no CUDA execution provider (it is the CPU build); fetch the GPU build with: bash tools/fetch-onnxruntime.sh --gpu")]
    NoCudaProvider { path: PathBuf },
    #[error(transparent)]
    CudaLibraries(#[from] super::cuda_libraries::CudaLibraryError),
    #[error("the CUDA execution provider on GPU {device} failed to start for {model}: {reason}")]
    CudaStart {
        device: i32,
        model: PathBuf,
        reason: String,
    },
    #[error("ONNX Runtime could not load {model}: {reason}")]
    SessionLoad { model: PathBuf, reason: String },
    #[error("{model} is not the graph tomex expects: {reason}")]
    Unexpected { model: PathBuf, reason: String },
    /// A ToMe configuration that cannot merge at this size (tomesd raises here too).
    #[error(transparent)]
    Tome(#[from] crate::tome::TomeError),
    #[error("running {model} failed: {reason}")]
    Run { model: PathBuf, reason: String },
}

/// The loaded library: one per process, as ONNX Runtime allows one environment.
struct Loaded {
    path: PathBuf,
    environment: Environment,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();

/// A handle to the loaded ONNX Runtime plus the device that sessions run on.
#[derive(Clone, Copy)]
pub struct Runtime {
    loaded: &'static Loaded,
    device: Device,
    /// Intra-op threads per session; ONNX Runtime's default (one per core) when `None`.
    threads: Option<usize>,
}

impl Runtime {
    /// Loads the library found by [`find_library`] (once per process) for `device`.
    pub fn new(explicit_library: Option<&Path>, device: Device) -> Result<Runtime, EngineError> {
        let path =
            find_library(explicit_library).map_err(|search| EngineError::LibraryNotFound {
                tried: search.tried,
            })?;
        let loaded = match LOADED.get() {
            Some(loaded) => loaded,
            None => {
                // ONNX Runtime allows one environment per process: a second first call
                // racing this one would fail to build its own (tests open runtimes from
                // parallel threads), so the first calls take turns and the later ones
                // find the environment made.
                static INIT: Mutex<()> = Mutex::new(());
                let _turn = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match LOADED.get() {
                    Some(loaded) => loaded,
                    None => {
                        let load_err = |reason: String| EngineError::LibraryLoad {
                            path: path.clone(),
                            reason,
                        };
                        let environment = ort::init_from(&path)
                            .map_err(|e| load_err(e.to_string()))?
                            .with_name("tomex")
                            .build()
                            .map_err(|e| load_err(e.to_string()))?;
                        share_cpu_arena(&environment, &path)?;
                        let _ = LOADED.set(Loaded {
                            path: path.clone(),
                            environment,
                        });
                        LOADED.get().expect("set above")
                    }
                }
            }
        };
        if same_file(&loaded.path, &path) || explicit_library.is_none() {
            Ok(Runtime {
                loaded,
                device,
                threads: None,
            })
        } else {
            Err(EngineError::LibraryConflict {
                loaded: loaded.path.clone(),
                wanted: path,
            })
        }
    }

    /// The same runtime with `n` intra-op threads per session (benchmarks compare
    /// with torch at the same thread count).
    pub fn with_threads(self, n: usize) -> Runtime {
        Runtime {
            threads: Some(n),
            ..self
        }
    }

    /// Run options that hand the arenas' unused memory back at the end of a run.
    pub fn shrink_arenas(&self) -> ort::Result<ort::session::RunOptions> {
        shrink_arenas(self.device)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs `work`, sampling this process's memory on the runtime's GPU meanwhile
    /// ([`super::device_memory`]); its peak in bytes, `None` on the CPU or where NVML
    /// cannot report (said once on stderr).
    pub fn with_device_peak<R>(&self, work: impl FnOnce() -> R) -> (R, Option<u64>) {
        let Device::Cuda(index) = self.device else {
            return (work(), None);
        };
        static NVML: OnceLock<Option<DeviceMemory>> = OnceLock::new();
        let nvml = NVML.get_or_init(|| match DeviceMemory::open(index.max(0) as u32) {
            Ok(nvml) => Some(nvml),
            Err(e) => {
                eprintln!("warning: {e}; records leave GPU memory empty");
                None
            }
        });
        match nvml {
            Some(nvml) => sample_peak(&|| nvml.used(), SAMPLE_EVERY, work),
            None => (work(), None),
        }
    }

    pub fn library_path(&self) -> &Path {
        &self.loaded.path
    }

    /// The library's version as its file name states it (`libonnxruntime.so.1.31.1`).
    pub fn version(&self) -> String {
        let name = self
            .loaded
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        version_like(name).unwrap_or_else(|| "unknown".into())
    }

    /// Opens `model` on this runtime's device. A CUDA provider that cannot start is an
    /// error, never a silent fall-back to the CPU.
    pub fn session(&self, model: &Path) -> Result<Session, EngineError> {
        self.session_capturing(model, false)
    }

    /// Opens `model` as [`Runtime::session`] does, on CUDA with `capture` asking ONNX
    /// Runtime to record each evaluation as a CUDA graph and replay it (the caller binds
    /// inputs and output at fixed addresses: [`super::fixed_buffers`]). ONNX Runtime
    /// refuses capture, with an error here, when a node of the graph runs on the CPU.
    pub fn session_capturing(&self, model: &Path, capture: bool) -> Result<Session, EngineError> {
        let load_err = |e: &dyn std::fmt::Display| EngineError::SessionLoad {
            model: model.to_path_buf(),
            reason: e.to_string(),
        };
        let mut builder = self.builder(model, capture)?;
        let _turn = commit_turn();
        builder.commit_from_file(model).map_err(|e| load_err(&e))
    }

    /// Opens a model held in memory (graphs tomex builds itself); `name` stands for
    /// it in messages.
    pub fn session_from_memory(&self, bytes: &[u8], name: &Path) -> Result<Session, EngineError> {
        let mut builder = self.builder(name, false)?;
        let _turn = commit_turn();
        builder
            .commit_from_memory(bytes)
            .map_err(|e| EngineError::SessionLoad {
                model: name.to_path_buf(),
                reason: e.to_string(),
            })
    }

    fn builder(
        &self,
        model: &Path,
        capture: bool,
    ) -> Result<ort::session::builder::SessionBuilder, EngineError> {
        let load_err = |e: &dyn std::fmt::Display| EngineError::SessionLoad {
            model: model.to_path_buf(),
            reason: e.to_string(),
        };
        // All sessions draw from the environment's one CPU arena (a split UNet has dozens
        // of sessions; one arena each would multiply peak memory). Worker threads spin
        // between the operators of a run (waking a sleeping thread per operator cost
        // about 10% at a 96x96 latent) but stop spinning when the run ends, so the
        // sessions of one split and the Rust token ops between them do not compete.
        // No memory pattern: from the second run on ONNX Runtime would take one block
        // for all planned tensors on top of the arena's chunks it already holds (at a
        // 96x96 latent +500 to +750 MB of peak for the whole UNet), and it is no faster.
        let mut builder = Session::builder(&self.loaded.environment)
            .and_then(|b| b.with_env_allocators().map_err(Into::into))
            .and_then(|b| b.with_intra_op_spinning(true).map_err(Into::into))
            .and_then(|b| b.with_memory_pattern(false).map_err(Into::into))
            .and_then(|b| {
                b.with_config_entry("session.force_spinning_stop", "1")
                    .map_err(Into::into)
            })
            .map_err(|e: ort::Error| load_err(&e))?;
        if let Some(n) = self.threads {
            builder = builder.with_intra_threads(n).map_err(|e| load_err(&e))?;
        }
        if self.device == Device::Cpu {
            // Graphs made with `Attention::Flash` call tomex's kernel; others never do.
            builder = flash_domain()
                .and_then(|domain| builder.with_operators(domain).map_err(Into::into))
                .map_err(|e: ort::Error| load_err(&e))?;
        }
        if let Device::Cuda(id) = self.device {
            if !ep::CUDA::is_available().unwrap_or(false) {
                return Err(EngineError::NoCudaProvider {
                    path: self.loaded.path.clone(),
                });
            }
            super::cuda_libraries::preload(&self.loaded.path)?;
            let cuda = ep::CUDA::default()
                .with_device_id(id)
                .with_cuda_graph(capture)
                .build()
                .error_on_failure();
            builder =
                builder
                    .with_execution_providers([cuda])
                    .map_err(|e| EngineError::CudaStart {
                        device: id,
                        model: model.into(),
                        reason: e.to_string(),
                    })?;
        }
        Ok(builder)
    }
}

/// Registers one CPU arena allocator on the environment for sessions that opt in with
/// `with_env_allocators`. ort has no safe wrapper for this call.
fn share_cpu_arena(environment: &Environment, library: &Path) -> Result<(), EngineError> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    use ort::AsPointer;
    let refused = |reason: String| EngineError::LibraryLoad {
        path: library.to_path_buf(),
        reason: format!("cannot register the shared CPU memory arena: {reason}"),
    };
    let info = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Arena,
        MemoryType::Default,
    )
    .map_err(|e| refused(e.to_string()))?;
    let api = ort::api();
    // SAFETY: the environment and memory info are live ONNX Runtime objects for the
    // duration of the call; a null arena configuration selects ONNX Runtime's defaults.
    let status = unsafe {
        (api.CreateAndRegisterAllocator)(environment.ptr().cast_mut(), info.ptr(), std::ptr::null())
    };
    if status.0.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null status is an error object that we own and release once.
    let message = unsafe { std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0)) }
        .to_string_lossy()
        .into_owned();
    unsafe { (api.ReleaseStatus)(status.0) };
    Err(refused(message))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// `1.31.1` out of `libonnxruntime.so.1.31.1`.
fn version_like(file_name: &str) -> Option<String> {
    let start = file_name.find(|c: char| c.is_ascii_digit())?;
    let v = &file_name[start..];
    v.split('.')
        .all(|p| p.parse::<u32>().is_ok())
        .then(|| v.to_string())
}

/// Run options that hand the arenas' unused memory back to the system at the end of a
/// run, on `device` and the host.
pub fn shrink_arenas(device: Device) -> ort::Result<ort::session::RunOptions> {
    let devices = match device {
        Device::Cpu => "cpu:0".to_string(),
        Device::Cuda(id) => format!("cpu:0;gpu:{id}"),
    };
    let mut options = ort::session::RunOptions::new()?;
    options.set("memory.enable_memory_arena_shrinkage", devices)?;
    Ok(options)
}

/// Sessions are created one at a time: each CPU session registers the `tomex` custom
/// operator domain in ONNX Runtime's process-wide schema registry, and two threads doing
/// so at once fail with "the domain is already exist" (seen in parallel tests).
fn commit_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
