//! A session's inputs and output at fixed addresses, as ONNX Runtime's CUDA-graph
//! capture needs: the first runs record the evaluation's kernels, later runs replay
//! them on the same device pointers, so every bound tensor must keep its address and
//! shape. Each evaluation copies its new host values into the same buffers.

use std::borrow::Cow;

use ndarray::ArrayD;
use ort::memory::Allocator;
use ort::session::{IoBinding, Session, SessionInputValue};
use ort::value::{
    DynTensor, DynTensorValueType, PrimitiveTensorElementType, Tensor, TensorElementType,
};

use super::device::Device;
use super::resident::{download_f32, memory_info};

/// What a buffer holds: its element type and shape. A captured graph replays one
/// signature; another needs a new session ([`FixedBuffers::fits`]).
#[derive(Clone, Debug, PartialEq)]
struct Slot {
    element: TensorElementType,
    shape: Vec<i64>,
}

pub struct FixedBuffers {
    device: Device,
    allocator: Allocator,
    binding: IoBinding,
    inputs: Vec<(String, Slot, DynTensor)>,
    output: Option<(String, DynTensor)>,
}

impl FixedBuffers {
    /// Buffers for `session`'s inputs and output in `device`'s memory (the GPU's for a
    /// captured CUDA graph; the host's on the CPU, which runs the same path in tests).
    pub fn new(session: &Session, device: Device) -> ort::Result<FixedBuffers> {
        let allocator = match device {
            Device::Cpu => Allocator::default(),
            Device::Cuda(_) => Allocator::new(session, memory_info(device)?)?,
        };
        Ok(FixedBuffers {
            device,
            allocator,
            binding: session.create_binding()?,
            inputs: Vec::new(),
            output: None,
        })
    }

    /// Whether `feed` has exactly the names, types and shapes the buffers were made
    /// for (true before the first evaluation).
    pub fn fits(&self, feed: &[(Cow<'_, str>, SessionInputValue<'_>)]) -> ort::Result<bool> {
        if self.inputs.is_empty() {
            return Ok(true);
        }
        if feed.len() != self.inputs.len() {
            return Ok(false);
        }
        for ((name, value), (have, slot, _)) in feed.iter().zip(&self.inputs) {
            if name.as_ref() != have || slot_of(value)? != *slot {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Copies `feed` into the buffers (made on the first call) and runs `session` on
    /// them; the output called `output`, shaped like the input `like`, back on the host.
    pub fn run(
        &mut self,
        session: &mut Session,
        feed: &[(Cow<'_, str>, SessionInputValue<'_>)],
        output: &str,
        like: &str,
    ) -> ort::Result<ArrayD<f32>> {
        if self.inputs.is_empty() {
            for (name, value) in feed {
                let slot = slot_of(value)?;
                let buffer = DynTensor::new(&self.allocator, slot.element, slot.shape.clone())?;
                // Bound once: the binding holds the buffer itself, not a copy, so the
                // values copied in below are what each run reads.
                self.binding.bind_input(name.as_ref(), &buffer)?;
                self.inputs.push((name.to_string(), slot, buffer));
            }
            let shape = self
                .inputs
                .iter()
                .find(|(name, ..)| name == like)
                .map(|(_, slot, _)| slot.shape.clone())
                .ok_or_else(|| ort::Error::new(format!("no input `{like}` to shape `{output}`")))?;
            let mut buffer = DynTensor::new(&self.allocator, TensorElementType::Float32, shape)?;
            self.binding.bind_output(output, &mut buffer)?;
            self.output = Some((output.to_string(), buffer));
        }
        for ((_, value), (_, _, buffer)) in feed.iter().zip(self.inputs.iter_mut()) {
            let source = value.view().downcast::<DynTensorValueType>()?;
            owned(&source)?.copy_into(&mut *buffer)?;
        }
        session.run_binding(&self.binding)?;
        let (_, buffer) = self.output.as_ref().expect("made with the inputs");
        download_f32(&buffer.view().into_dyn(), self.device)
    }
}

/// An owned host copy of `value`. ort copies between devices with a session of its own,
/// and a borrowed source (the feed's views) makes it clone the source with that same
/// session, which deadlocks on ort's lock (ort 2.0.0-rc.15, seen here).
fn owned(value: &DynTensor) -> ort::Result<DynTensor> {
    fn copy<T: PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        value: &DynTensor,
    ) -> ort::Result<DynTensor> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        Tensor::from_array((shape.to_vec(), data.to_vec()))?
            .into_dyn()
            .downcast::<DynTensorValueType>()
    }
    match value.data_type() {
        TensorElementType::Float32 => copy::<f32>(value),
        TensorElementType::Float64 => copy::<f64>(value),
        TensorElementType::Int32 => copy::<i32>(value),
        TensorElementType::Int64 => copy::<i64>(value),
        other => Err(ort::Error::new(format!(
            "fixed buffers cannot take a {other} input"
        ))),
    }
}

fn slot_of(value: &SessionInputValue<'_>) -> ort::Result<Slot> {
    let tensor = value.view().downcast::<DynTensorValueType>()?;
    Ok(Slot {
        element: *tensor.data_type(),
        shape: tensor.shape().to_vec(),
    })
}
