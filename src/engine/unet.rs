//! The UNet graph: noisy latents, timestep and text states in, noise prediction out.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use ndarray::{Array0, Array1, Array2, Array3, Array4, ArrayView2, ArrayView3};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, TensorRef};

use super::io::{input_spec, output_name, run_error, unexpected, InputSpec};
use super::runtime::{EngineError, Runtime};
use crate::onnx::{self, Fusion, SplitOptions};

pub struct Unet {
    session: Session,
    path: PathBuf,
    inputs: UnetInputs,
    output: String,
}

/// SDXL's added conditions (`added_cond_kwargs` in diffusers): the second text
/// encoder's pooled embedding `text_embeds` `[batch, dim]` and `time_ids` `[batch, 6]`
/// (original size, crop top-left, target size).
#[derive(Clone, Debug, PartialEq)]
pub struct AddedConditions {
    pub text_embeds: Array2<f32>,
    pub time_ids: Array2<f32>,
}

/// What the UNet is conditioned on besides the noisy sample and the timestep: the text
/// states, and SDXL's added conditions. A plain `&Array3` of text states converts.
#[derive(Clone, Copy, Debug)]
pub struct Conditioning<'a> {
    pub hidden: ArrayView3<'a, f32>,
    pub added: Option<&'a AddedConditions>,
}

impl<'a> From<&'a Array3<f32>> for Conditioning<'a> {
    fn from(hidden: &'a Array3<f32>) -> Self {
        Conditioning {
            hidden: hidden.view(),
            added: None,
        }
    }
}

impl<'a> Conditioning<'a> {
    pub fn new(hidden: &'a Array3<f32>, added: Option<&'a AddedConditions>) -> Self {
        Conditioning {
            hidden: hidden.view(),
            added,
        }
    }

    pub fn text_embeds(&self) -> Option<ArrayView2<'a, f32>> {
        self.added.map(|a| a.text_embeds.view())
    }

    pub fn time_ids(&self) -> Option<ArrayView2<'a, f32>> {
        self.added.map(|a| a.time_ids.view())
    }
}

/// The graph input names of SDXL's added conditions.
#[derive(Clone, Debug)]
pub(super) struct AddedNames {
    pub text_embeds: String,
    pub time_ids: String,
}

/// The UNet's graph inputs as an export declares them: their names, and the
/// timestep's type and shape (shared by [`Unet`] and the split executor).
pub(super) struct UnetInputs {
    pub sample: String,
    pub timestep: InputSpec,
    pub hidden: String,
    /// SDXL's `text_embeds` and `time_ids`, when the graph takes them.
    pub added: Option<AddedNames>,
}

impl UnetInputs {
    /// Checks that the sample is float32 and the timestep a float or integer scalar or vector.
    pub fn new(
        path: &Path,
        sample: InputSpec,
        timestep: InputSpec,
        hidden: String,
    ) -> Result<UnetInputs, EngineError> {
        if sample.element != TensorElementType::Float32 {
            return Err(unexpected(
                path,
                format!(
                    "`{}` is {:?}; only float32 exports are supported",
                    sample.name, sample.element
                ),
            ));
        }
        let supported = [
            TensorElementType::Float32,
            TensorElementType::Float64,
            TensorElementType::Int64,
            TensorElementType::Int32,
        ];
        if !supported.contains(&timestep.element) || timestep.shape.len() > 1 {
            return Err(unexpected(
                path,
                format!(
                    "timestep `{}` is {:?} of rank {}; expected a float or integer scalar or vector",
                    timestep.name,
                    timestep.element,
                    timestep.shape.len()
                ),
            ));
        }
        Ok(UnetInputs {
            sample: sample.name,
            timestep,
            hidden,
            added: None,
        })
    }

    /// With SDXL's added conditions when the graph's inputs (`names`) include both
    /// `text_embeds` and `time_ids`; one without the other is an error.
    pub fn with_added<'n>(
        mut self,
        path: &Path,
        names: impl Iterator<Item = &'n str> + Clone,
    ) -> Result<UnetInputs, EngineError> {
        let has = |want: &str| names.clone().any(|n| n == want);
        self.added = match (has("text_embeds"), has("time_ids")) {
            (true, true) => Some(AddedNames {
                text_embeds: "text_embeds".into(),
                time_ids: "time_ids".into(),
            }),
            (false, false) => None,
            _ => {
                return Err(unexpected(
                    path,
                    "it takes one of SDXL's added conditions `text_embeds` and `time_ids` but not the other".into(),
                ))
            }
        };
        Ok(self)
    }

    /// Checks that `cond` carries the added conditions exactly when the graph takes them.
    pub fn check(&self, path: &Path, cond: &Conditioning<'_>) -> Result<(), EngineError> {
        match (&self.added, cond.added) {
            (Some(_), None) => Err(unexpected(
                path,
                "the UNet takes SDXL's `text_embeds` and `time_ids`, but the pipeline gave none (is the model's model_index.json an SDXL one, with text_encoder_2/?)".into(),
            )),
            (None, Some(_)) => Err(unexpected(
                path,
                "the pipeline gave SDXL's `text_embeds` and `time_ids`, but the UNet takes neither".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The graph's inputs for one evaluation: views of `sample` and the conditioning,
    /// the timestep in the graph's type.
    pub fn feed<'v, 'c: 'v>(
        &'v self,
        sample: &'v Array4<f32>,
        timestep: f32,
        cond: Conditioning<'c>,
    ) -> ort::Result<Vec<(Cow<'v, str>, SessionInputValue<'v>)>> {
        // The conditioning's views, for as long as the feed lives.
        let hidden: ArrayView3<'v, f32> = cond.hidden;
        let added: Option<&'v AddedConditions> = cond.added;
        let t = self.timestep_value(timestep, sample.shape()[0])?;
        let mut feed = ort::inputs![
            self.sample.as_str() => TensorRef::from_array_view(sample.view())?,
            self.timestep.name.as_str() => t,
            self.hidden.as_str() => TensorRef::from_array_view(hidden)?,
        ];
        if let (Some(names), Some(added)) = (&self.added, added) {
            let text = TensorRef::from_array_view(added.text_embeds.view())?;
            let time = TensorRef::from_array_view(added.time_ids.view())?;
            feed.push((names.text_embeds.as_str().into(), text.into()));
            feed.push((names.time_ids.as_str().into(), time.into()));
        }
        Ok(feed)
    }

    /// The timestep in the graph's type and shape: a scalar, `[1]` when the graph fixes
    /// one element, else one per batch element (as torch broadcasts it).
    pub fn timestep_value(&self, t: f32, batch: usize) -> ort::Result<DynValue> {
        let len = match self.timestep.shape.as_slice() {
            [] => None,
            [1] => Some(1),
            _ => Some(batch),
        };
        fn make<T>(v: T, len: Option<usize>) -> ort::Result<DynValue>
        where
            T: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug + 'static,
            Tensor<T>: Into<DynValue>,
        {
            Ok(match len {
                None => Tensor::from_array(Array0::from_elem((), v))?.into(),
                Some(n) => Tensor::from_array(Array1::from_elem(n, v))?.into(),
            })
        }
        // Integer exports truncate as torch's `.long()` would; SD timesteps are whole anyway.
        match self.timestep.element {
            TensorElementType::Float32 => make(t, len),
            TensorElementType::Float64 => make(t as f64, len),
            TensorElementType::Int32 => make(t as i32, len),
            _ => make(t as i64, len),
        }
    }
}

impl Unet {
    /// The UNet at `path` as `options` say: with its attention fused (the rewritten graph
    /// from the cache, made on first use) or as exported. Errors name `path`.
    pub fn prepare(
        runtime: &Runtime,
        path: &Path,
        options: &SplitOptions,
    ) -> Result<(Unet, Fusion), EngineError> {
        let whole = onnx::prepare_whole(path, options).map_err(|e| unexpected(path, e.detail()))?;
        let unet = Self::load_prepared(runtime, &whole.path, path)?;
        Ok((unet, whole.fusion))
    }

    /// The graph at `graph` (a rewrite [`onnx::prepare_whole`] made), whose errors name
    /// the model's own `source` UNet.
    pub fn load_prepared(
        runtime: &Runtime,
        graph: &Path,
        source: &Path,
    ) -> Result<Unet, EngineError> {
        let mut unet = Self::load(runtime, graph)?;
        unet.path = source.to_path_buf();
        Ok(unet)
    }

    /// The UNet graph at `path` exactly as it is.
    pub fn load(runtime: &Runtime, path: &Path) -> Result<Unet, EngineError> {
        let session = runtime.session(path)?;
        let inputs = UnetInputs::new(
            path,
            input_spec(&session, path, "sample", 0)?,
            input_spec(&session, path, "timestep", 1)?,
            input_spec(&session, path, "encoder_hidden_states", 2)?.name,
        )?
        .with_added(path, session.inputs().iter().map(|o| o.name()))?;
        let output = output_name(&session, "out_sample");
        Ok(Unet {
            session,
            path: path.to_path_buf(),
            inputs,
            output,
        })
    }

    /// Predicts noise for `sample` `[batch, 4, h, w]` at `timestep` given text states
    /// (and SDXL's added conditions).
    pub fn predict<'c>(
        &mut self,
        sample: &Array4<f32>,
        timestep: f32,
        cond: impl Into<Conditioning<'c>>,
    ) -> Result<Array4<f32>, EngineError> {
        let cond = cond.into();
        self.inputs.check(&self.path, &cond)?;
        let run_err = |e| run_error(&self.path, e);
        let feed = self.inputs.feed(sample, timestep, cond).map_err(run_err)?;
        let outputs = self.session.run(feed).map_err(run_err)?;
        let noise = outputs[self.output.as_str()]
            .try_extract_array::<f32>()
            .map_err(run_err)?;
        noise.to_owned().into_dimensionality().map_err(|e| {
            unexpected(
                &self.path,
                format!("`{}` is not [batch, c, h, w]: {e}", self.output),
            )
        })
    }
}
