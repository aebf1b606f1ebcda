//! Peak GPU memory while an image is made: NVML (the NVIDIA driver's management
//! library, what `nvidia-smi` reads) sampled from a second thread every few
//! milliseconds. It counts what the process holds on the device (the CUDA context,
//! ONNX Runtime's arenas, cuDNN's workspaces): the memory a user must have, as
//! `nvidia-smi` shows it. Where NVML does not list this process (a container whose
//! PIDs NVML does not see), the device's used memory stands in, and other processes
//! on the GPU count too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use libloading::Library;

/// How often the sampler reads: a UNet evaluation of SD 1.5 on a GPU takes tens of
/// milliseconds, so a peak lasting one evaluation is seen.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(2);

/// Runs `work` on this thread while another calls `read` every `every` (and once
/// before and after); the largest reading, `None` when every reading was `None`.
pub fn sample_peak<R>(
    read: &(dyn Fn() -> Option<u64> + Sync),
    every: Duration,
    work: impl FnOnce() -> R,
) -> (R, Option<u64>) {
    let peak = AtomicU64::new(0);
    let seen = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let note = |v: Option<u64>| {
        if let Some(v) = v {
            peak.fetch_max(v, Ordering::Relaxed);
            seen.store(true, Ordering::Relaxed);
        }
    };
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                note(read());
                std::thread::sleep(every);
            }
        });
        note(read());
        let result = work();
        note(read());
        done.store(true, Ordering::Relaxed);
        result
    });
    let peak = seen
        .load(Ordering::Relaxed)
        .then(|| peak.load(Ordering::Relaxed));
    (result, peak)
}

/// Why NVML cannot report (no NVIDIA driver's NVML, no such GPU): the records then
/// leave device memory empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NVML (libnvidia-ml.so.1) cannot report GPU memory: {reason}")]
pub struct NvmlUnavailable {
    pub reason: String,
}

/// NVML's view of one GPU, opened once.
pub struct DeviceMemory {
    _nvml: Library,
    device: *mut std::ffi::c_void,
    running: RunningProcesses,
    memory_info: MemoryInfo,
}

// SAFETY: NVML's functions are thread-safe (NVML's documentation), and the device
// handle is an opaque pointer NVML owns for the library's lifetime.
unsafe impl Send for DeviceMemory {}
unsafe impl Sync for DeviceMemory {}

/// `nvmlProcessInfo_v2_t`, what `nvmlDeviceGetComputeRunningProcesses_v3` fills.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ProcessInfo {
    pid: u32,
    used_gpu_memory: u64,
    gpu_instance_id: u32,
    compute_instance_id: u32,
}

/// `nvmlMemory_t`.
#[repr(C)]
#[derive(Default)]
struct Memory {
    total: u64,
    free: u64,
    used: u64,
}

type RunningProcesses =
    unsafe extern "C" fn(*mut std::ffi::c_void, *mut u32, *mut ProcessInfo) -> i32;
type MemoryInfo = unsafe extern "C" fn(*mut std::ffi::c_void, *mut Memory) -> i32;

/// NVML's `usedGpuMemory` when it cannot tell.
const NOT_AVAILABLE: u64 = u64::MAX;

impl DeviceMemory {
    /// NVML on GPU `index`, or why not (no driver's NVML, no such GPU).
    pub fn open(index: u32) -> Result<DeviceMemory, NvmlUnavailable> {
        let err = |reason: String| NvmlUnavailable { reason };
        type Init = unsafe extern "C" fn() -> i32;
        type ByIndex = unsafe extern "C" fn(u32, *mut *mut std::ffi::c_void) -> i32;
        // SAFETY: NVML's C entry points with the signatures of nvml.h; the library
        // stays loaded as long as the returned value holds it.
        unsafe {
            let nvml = Library::new("libnvidia-ml.so.1").map_err(|e| err(e.to_string()))?;
            let init = *nvml
                .get::<Init>(b"nvmlInit_v2\0")
                .map_err(|e| err(e.to_string()))?;
            let by_index = *nvml
                .get::<ByIndex>(b"nvmlDeviceGetHandleByIndex_v2\0")
                .map_err(|e| err(e.to_string()))?;
            let running = *nvml
                .get::<RunningProcesses>(b"nvmlDeviceGetComputeRunningProcesses_v3\0")
                .map_err(|e| err(e.to_string()))?;
            let memory_info = *nvml
                .get::<MemoryInfo>(b"nvmlDeviceGetMemoryInfo\0")
                .map_err(|e| err(e.to_string()))?;
            match init() {
                0 => {}
                code => return Err(err(format!("nvmlInit_v2 returned {code}"))),
            }
            let mut device = std::ptr::null_mut();
            match by_index(index, &mut device) {
                0 => {}
                code => return Err(err(format!("no GPU {index} (NVML error {code})"))),
            }
            Ok(DeviceMemory {
                _nvml: nvml,
                device,
                running,
                memory_info,
            })
        }
    }

    /// Bytes this process holds on the GPU; the device's used bytes where NVML does
    /// not list this process.
    pub fn used(&self) -> Option<u64> {
        let mut infos = [ProcessInfo::default(); 64];
        let mut count = infos.len() as u32;
        // SAFETY: `infos` has room for `count` entries, as NVML requires.
        let code = unsafe { (self.running)(self.device, &mut count, infos.as_mut_ptr()) };
        let pid = std::process::id();
        if code == 0 {
            let own = infos[..count as usize]
                .iter()
                .find(|p| p.pid == pid && p.used_gpu_memory != NOT_AVAILABLE);
            if let Some(p) = own {
                return Some(p.used_gpu_memory);
            }
        }
        let mut memory = Memory::default();
        // SAFETY: `memory` is an `nvmlMemory_t` NVML fills.
        let code = unsafe { (self.memory_info)(self.device, &mut memory) };
        (code == 0).then_some(memory.used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn the_peak_is_the_largest_reading_while_the_work_runs() {
        // The reading is 100 before and after the work and 900 for a moment inside
        // it: the work holds 900 until the sampler has read twice more.
        let level = AtomicU64::new(100);
        let reads = AtomicUsize::new(0);
        let read = || {
            reads.fetch_add(1, Ordering::SeqCst);
            Some(level.load(Ordering::SeqCst))
        };
        let (value, peak) = sample_peak(&read, Duration::from_micros(100), || {
            level.store(900, Ordering::SeqCst);
            let seen = reads.load(Ordering::SeqCst);
            while reads.load(Ordering::SeqCst) < seen + 2 {
                std::thread::yield_now();
            }
            level.store(100, Ordering::SeqCst);
            7
        });
        assert_eq!(value, 7);
        assert_eq!(peak, Some(900));
    }

    #[test]
    fn no_readings_no_peak_and_zero_is_a_reading() {
        let ((), peak) = sample_peak(&|| None, Duration::from_millis(1), || ());
        assert_eq!(peak, None);
        let ((), peak) = sample_peak(&|| Some(0), Duration::from_millis(1), || ());
        assert_eq!(peak, Some(0));
    }

    #[test]
    fn without_nvml_opening_says_why() {
        // SAFETY: loaded and dropped to see whether the driver's NVML exists here.
        if unsafe { Library::new("libnvidia-ml.so.1") }.is_ok() {
            eprintln!("skipped: this machine has NVML");
            return;
        }
        let err = DeviceMemory::open(0).err().unwrap().to_string();
        assert!(err.contains("libnvidia-ml.so.1"), "{err}");
    }
}
