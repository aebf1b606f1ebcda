//! The UNet with ToMe as one graph ([`crate::onnx::one_graph`]): one ONNX Runtime `Run`
//! per evaluation, every tensor on the device, only the block partitions (drawn on the
//! host, a few KB) going up. The same cut, token-op graphs and partition draws as the
//! graph token-op path ([`super::graph_token_ops`]).
//!
//! On CUDA the inputs and output live in fixed device buffers ([`FixedBuffers`]) and
//! ONNX Runtime captures the evaluation as a CUDA graph: a job's shapes stay fixed, so
//! every later evaluation replays the recorded kernels. A graph ONNX Runtime will not
//! capture (a node on the CPU) runs uncaptured, said once on stderr.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array4};
use ort::session::Session;
use ort::value::{DynValue, Tensor};

use super::device::Device;
use super::fixed_buffers::FixedBuffers;
use super::io::{input_spec, output_name, run_error, unexpected};
use super::runtime::{EngineError, Runtime};
use super::split_unet::OrtProbe;
use super::unet::{Conditioning, UnetInputs};
use crate::onnx::{self, one_graph, BlockId, ComponentId, SplitOptions};
use crate::tome::BlockPartition;

/// How an evaluation hands its tensors to ONNX Runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// A fresh feed per `Run` (the CPU's way: nothing to capture).
    PerRun,
    /// Inputs and output in fixed buffers on the runtime's device, on CUDA with the
    /// evaluation captured as a CUDA graph where ONNX Runtime allows it.
    Fixed,
}

impl Binding {
    /// Fixed buffers (and capture) on CUDA, a feed per run on the CPU.
    pub fn for_device(device: Device) -> Binding {
        match device {
            Device::Cuda(_) => Binding::Fixed,
            Device::Cpu => Binding::PerRun,
        }
    }
}

pub struct OneGraphUnet {
    runtime: Runtime,
    session: Session,
    /// Set with [`Binding::Fixed`]; made again, with a new session where the graph is
    /// captured, when a job's shapes differ from the last job's.
    buffers: Option<FixedBuffers>,
    capturing: bool,
    path: PathBuf,
    inputs: UnetInputs,
    output: String,
    /// The merged blocks, in the order their partitions are drawn.
    blocks: Vec<BlockId>,
}

impl OneGraphUnet {
    /// The UNet at `path` cut at `components` (the cut cached as the split path makes
    /// it), composed with the token ops into one graph beside the parts, and opened.
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        components: &[ComponentId],
        options: &SplitOptions,
        binding: Binding,
    ) -> Result<OneGraphUnet, EngineError> {
        let onnx_err = |e: onnx::OnnxError| unexpected(path, e.to_string());
        let mut probe = OrtProbe::on_cpu(runtime)?;
        let (manifest, _) =
            onnx::prepare_split(path, components, options, Some(&mut probe)).map_err(onnx_err)?;
        let file = one_graph::model_path(&manifest);
        if !file.is_file() {
            let parts = manifest
                .parts
                .iter()
                .map(|p| onnx::read_model(&manifest.part_path(p)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(onnx_err)?;
            let model = one_graph::compose(&manifest, &parts).map_err(onnx_err)?;
            onnx::write_model(&model, &file).map_err(onnx_err)?;
        }
        let capture = binding == Binding::Fixed && runtime.device() != Device::Cpu;
        let (session, capturing) = open(runtime, &file, capture)?;
        let inputs = UnetInputs::new(
            &file,
            input_spec(&session, &file, "sample", 0)?,
            input_spec(&session, &file, "timestep", 1)?,
            input_spec(&session, &file, "encoder_hidden_states", 2)?.name,
        )?
        .with_added(&file, session.inputs().iter().map(|o| o.name()))?;
        let output = output_name(&session, "out_sample");
        let buffers = match binding {
            Binding::Fixed => Some(
                FixedBuffers::new(&session, runtime.device()).map_err(|e| run_error(&file, e))?,
            ),
            Binding::PerRun => None,
        };
        Ok(OneGraphUnet {
            runtime: *runtime,
            session,
            buffers,
            capturing,
            path: file,
            inputs,
            output,
            blocks: one_graph::merged_blocks(&manifest),
        })
    }

    /// The merged blocks, in the order their partitions are drawn.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Predicts noise with `partitions[i]` for block `blocks()[i]`.
    pub fn predict(
        &mut self,
        sample: &Array4<f32>,
        timestep: f32,
        cond: Conditioning<'_>,
        partitions: &[BlockPartition],
    ) -> Result<Array4<f32>, EngineError> {
        self.inputs.check(&self.path, &cond)?;
        if partitions.len() != self.blocks.len() {
            return Err(unexpected(
                &self.path,
                format!(
                    "{} partitions for {} merged blocks",
                    partitions.len(),
                    self.blocks.len()
                ),
            ));
        }
        let err = |e| run_error(&self.path, e);
        let mut feed = self.inputs.feed(sample, timestep, cond).map_err(err)?;
        let index = |v: &[usize]| -> ort::Result<DynValue> {
            Ok(
                Tensor::from_array(v.iter().map(|&i| i as i64).collect::<Array1<i64>>())?
                    .into_dyn(),
            )
        };
        for (block, p) in self.blocks.iter().zip(partitions) {
            let [a, b, r] = one_graph::partition_input_names(block);
            feed.push((a.into(), index(&p.src).map_err(err)?.into()));
            feed.push((b.into(), index(&p.dst).map_err(err)?.into()));
            feed.push((r.into(), index(&[p.r]).map_err(err)?.into()));
        }
        let noise = match self.buffers.as_mut() {
            None => {
                let outputs = self.session.run(feed).map_err(err)?;
                let noise = outputs[self.output.as_str()]
                    .try_extract_array::<f32>()
                    .map_err(err)?;
                noise.to_owned()
            }
            Some(buffers) => {
                if !buffers.fits(&feed).map_err(err)? {
                    // A captured graph replays the shapes and addresses it recorded: new
                    // shapes need new buffers and, when capturing, a new session.
                    if self.capturing {
                        (self.session, self.capturing) = open(&self.runtime, &self.path, true)?;
                    }
                    *buffers =
                        FixedBuffers::new(&self.session, self.runtime.device()).map_err(err)?;
                }
                let sample = self.inputs.sample.as_str();
                match buffers.run(&mut self.session, &feed, &self.output, sample) {
                    Ok(noise) => noise,
                    // A capture that fails when it records: the job goes on uncaptured.
                    Err(e) if self.capturing => {
                        eprintln!(
                            "warning: capturing {} as a CUDA graph failed ({e}); running it \
                             uncaptured",
                            self.path.display()
                        );
                        (self.session, self.capturing) = open(&self.runtime, &self.path, false)?;
                        *buffers =
                            FixedBuffers::new(&self.session, self.runtime.device()).map_err(err)?;
                        buffers
                            .run(&mut self.session, &feed, &self.output, sample)
                            .map_err(err)?
                    }
                    Err(e) => return Err(err(e)),
                }
            }
        };
        noise.into_dimensionality().map_err(|e| {
            unexpected(
                &self.path,
                format!("`{}` is not [batch, c, h, w]: {e}", self.output),
            )
        })
    }
}

/// The composed model's session; on CUDA with `capture`, recorded as a CUDA graph where
/// ONNX Runtime accepts it, else uncaptured (said once on stderr). True when capturing.
fn open(runtime: &Runtime, file: &Path, capture: bool) -> Result<(Session, bool), EngineError> {
    match runtime.session_capturing(file, capture) {
        Ok(session) => Ok((session, capture)),
        Err(EngineError::SessionLoad { reason, .. }) if capture => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "warning: ONNX Runtime will not capture {} as a CUDA graph ({reason}); \
                     running it uncaptured",
                    file.display()
                )
            });
            Ok((runtime.session(file)?, false))
        }
        Err(e) => Err(e),
    }
}
