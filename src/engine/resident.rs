//! Device residency: values stay in the memory of the device that computed them.
//!
//! A session run through [`run_resident`] takes its inputs as they are (ONNX Runtime
//! copies only those that sit on another device) and leaves every output on the
//! device (I/O binding with outputs bound to the device's memory). On CUDA a UNet
//! part's outputs are so in GPU memory when the next part and the token-op graphs
//! read them; on the CPU the same code keeps them in host memory, so the CPU runs,
//! and tests, the path that CUDA runs.

use ndarray::ArrayD;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{RunOptions, Session};
use ort::value::{DynTensorValueType, DynValue, ValueType};

use super::device::Device;

/// The memory a device's outputs are allocated in.
pub fn memory_info(device: Device) -> ort::Result<MemoryInfo<'static>> {
    let (allocation, id) = match device {
        Device::Cpu => (AllocationDevice::CPU, 0),
        Device::Cuda(id) => (AllocationDevice::CUDA, id),
    };
    MemoryInfo::new(allocation, id, AllocatorType::Device, MemoryType::Default)
}

/// `value` (in host memory) copied to `device`; on the CPU, `value` itself.
pub fn upload(value: DynValue, device: Device) -> ort::Result<DynValue> {
    match device {
        Device::Cpu => Ok(value),
        Device::Cuda(id) => Ok(value
            .downcast::<DynTensorValueType>()?
            .to(AllocationDevice::CUDA, id)?
            .into_dyn()),
    }
}

/// A tensor on `device` copied to host memory; on the CPU, `None` (use it as it is).
pub fn to_host(value: &DynValue, device: Device) -> ort::Result<Option<DynValue>> {
    match device {
        Device::Cpu => Ok(None),
        Device::Cuda(_) => Ok(Some(
            value
                .view()
                .downcast::<DynTensorValueType>()?
                .to(AllocationDevice::CPU, 0)?
                .into_dyn(),
        )),
    }
}

/// A float tensor on `device` as a host array (one copy from the device on CUDA).
pub fn download_f32(value: &DynValue, device: Device) -> ort::Result<ArrayD<f32>> {
    let host = to_host(value, device)?;
    let value = host.as_ref().unwrap_or(value);
    Ok(value.try_extract_array::<f32>()?.to_owned())
}

/// A tensor's dimensions, wherever it is (read from its type, not its data).
pub fn dims(value: &DynValue) -> Option<Vec<usize>> {
    match value.dtype() {
        ValueType::Tensor { shape, .. } => shape.iter().map(|&d| usize::try_from(d).ok()).collect(),
        _ => None,
    }
}

/// Runs `session` on `inputs` (by input name) with every output left on `device`;
/// the outputs by name. A fresh binding per run: the outputs are the caller's alone.
pub fn run_resident(
    session: &mut Session,
    inputs: &[(&str, &DynValue)],
    device: Device,
    options: Option<&RunOptions>,
) -> ort::Result<Vec<(String, DynValue)>> {
    let memory = memory_info(device)?;
    let outputs: Vec<String> = session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    let mut binding = session.create_binding()?;
    for (name, value) in inputs {
        binding.bind_input(*name, *value)?;
    }
    for name in &outputs {
        binding.bind_output_to_device(name.as_str(), &memory)?;
    }
    let results = match options {
        Some(options) => session.run_binding_with_options(&binding, options)?,
        None => session.run_binding(&binding)?,
    };
    Ok(results
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect())
}
