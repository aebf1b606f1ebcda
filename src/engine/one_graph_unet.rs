//! The UNet with ToMe as one graph ([`crate::onnx::one_graph`]): one ONNX Runtime `Run`
//! per evaluation, every tensor on the device, only the block partitions (drawn on the
//! host, a few KB) going up. The same cut, token-op graphs and partition draws as the
//! graph token-op path ([`super::graph_token_ops`]).

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array4};
use ort::session::Session;
use ort::value::{DynValue, Tensor};

use super::io::{input_spec, output_name, run_error, unexpected};
use super::runtime::{EngineError, Runtime};
use super::split_unet::OrtProbe;
use super::unet::{Conditioning, UnetInputs};
use crate::onnx::{self, one_graph, BlockId, ComponentId, SplitOptions};
use crate::tome::BlockPartition;

pub struct OneGraphUnet {
    session: Session,
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
        let session = runtime.session(&file)?;
        let inputs = UnetInputs::new(
            &file,
            input_spec(&session, &file, "sample", 0)?,
            input_spec(&session, &file, "timestep", 1)?,
            input_spec(&session, &file, "encoder_hidden_states", 2)?.name,
        )?
        .with_added(&file, session.inputs().iter().map(|o| o.name()))?;
        let output = output_name(&session, "out_sample");
        Ok(OneGraphUnet {
            session,
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
        let outputs = self.session.run(feed).map_err(err)?;
        let noise = outputs[self.output.as_str()]
            .try_extract_array::<f32>()
            .map_err(err)?;
        noise.to_owned().into_dimensionality().map_err(|e| {
            unexpected(
                &self.path,
                format!("`{}` is not [batch, c, h, w]: {e}", self.output),
            )
        })
    }
}
