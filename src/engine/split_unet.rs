//! The UNet cut at transformer components (`onnx::split`), run part by part with
//! [`TokenHooks`] between the parts: ToMe merges the tokens entering a component and
//! unmerges what leaves it, in Rust, while the rest runs as ONNX Runtime graphs.
//!
//! One executor loop runs the parts whatever the token ops' placement (`execute`): on
//! host values ([`SplitUnet::predict`], hooks on arrays) or with every value left on the
//! device ([`SplitUnet::predict_resident`], hooks on device values). Tensors pass between
//! parts as ONNX Runtime values, without copies: a part's outputs stay the values it
//! returned until the last part that reads them has run, and a hook's arrays are moved
//! into values; the caller's inputs are copied in once per evaluation.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{Array3, Array4, ArrayView3, Ix3};
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, Tensor, ValueType};

use super::device::Device;
use super::io::{input_spec, run_error, unexpected};
use super::resident::{dims, download_f32, run_resident, upload};
use super::runtime::{shrink_arenas, EngineError, Runtime};
use super::unet::{Conditioning, UnetInputs};
use crate::onnx::{
    self, BlockId, CacheStatus, ComponentId, PartKind, ProbeError, ShapeProbe, SplitManifest,
    SplitOptions, TensorInfo, TransformerBlock,
};

/// What runs between the parts. All arrays are `[batch, tokens, channels]`.
pub trait TokenHooks {
    /// The hidden states entering a block (before `norm1`), once per block and call,
    /// before its first cut component.
    fn block_input(&mut self, block: &BlockId, x: ArrayView3<f32>);
    /// The merged input of a component, or `None` to run it on `x` as it is.
    fn before_component(&mut self, c: &ComponentId, x: ArrayView3<f32>) -> Option<Array3<f32>>;
    /// The unmerged output of a component (as many tokens as its input had before
    /// merging), or `None` to pass `y` on as it is.
    fn after_component(&mut self, c: &ComponentId, y: ArrayView3<f32>) -> Option<Array3<f32>>;
}

/// The same hooks on values that stay on the device ([`SplitUnet::predict_resident`]):
/// `[batch, tokens, channels]` tensors the hooks must not bring to the host.
pub trait ResidentHooks {
    /// The hidden states entering a block, as [`TokenHooks::block_input`].
    fn block_input(&mut self, block: &BlockId, x: &DynValue) -> Result<(), EngineError>;
    /// The merged input of a component, or `None` to run it on `x`.
    fn before_component(
        &mut self,
        c: &ComponentId,
        x: &DynValue,
    ) -> Result<Option<DynValue>, EngineError>;
    /// The unmerged output of a component, or `None` to pass `y` on.
    fn after_component(
        &mut self,
        c: &ComponentId,
        y: &DynValue,
    ) -> Result<Option<DynValue>, EngineError>;
}

/// Hooks that change nothing: the split UNet computes what the whole graph computes.
pub struct NoHooks;

impl TokenHooks for NoHooks {
    fn block_input(&mut self, _: &BlockId, _: ArrayView3<f32>) {}
    fn before_component(&mut self, _: &ComponentId, _: ArrayView3<f32>) -> Option<Array3<f32>> {
        None
    }
    fn after_component(&mut self, _: &ComponentId, _: ArrayView3<f32>) -> Option<Array3<f32>> {
        None
    }
}

impl ResidentHooks for NoHooks {
    fn block_input(&mut self, _: &BlockId, _: &DynValue) -> Result<(), EngineError> {
        Ok(())
    }
    fn before_component(
        &mut self,
        _: &ComponentId,
        _: &DynValue,
    ) -> Result<Option<DynValue>, EngineError> {
        Ok(None)
    }
    fn after_component(
        &mut self,
        _: &ComponentId,
        _: &DynValue,
    ) -> Result<Option<DynValue>, EngineError> {
        Ok(None)
    }
}

/// Where a part's input comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    Sample,
    Timestep,
    Hidden,
    /// SDXL's added conditions.
    TextEmbeds,
    TimeIds,
    /// The value slot an earlier part filled.
    Slot(usize),
}

struct Component {
    id: ComponentId,
    input: usize,
    output: usize,
    /// The block input to show [`TokenHooks::block_input`] before this component, when
    /// it is the block's first cut component.
    block: Option<(BlockId, usize)>,
}

struct PartRun {
    session: Session,
    path: PathBuf,
    inputs: Vec<(String, Source)>,
    /// Slot of each session output, by output name.
    outputs: Vec<(String, usize)>,
    component: Option<Component>,
    /// Slots no later part reads, emptied after this part.
    release: Vec<usize>,
}

/// The split UNet: same inputs and output as [`super::Unet`], plus hooks.
pub struct SplitUnet {
    parts: Vec<PartRun>,
    path: PathBuf,
    inputs: UnetInputs,
    output: usize,
    output_name: String,
    slots: usize,
    manifest: SplitManifest,
    status: CacheStatus,
    device: Device,
    /// Run options that shrink the memory arenas after each part, when asked for.
    shrink: Option<RunOptions>,
}

fn onnx_err(model: &Path) -> impl Fn(onnx::OnnxError) -> EngineError + '_ {
    move |e| unexpected(model, e.detail())
}

/// Shape inference by ONNX Runtime itself, on the CPU: loads the probe graph (no
/// weights) and reads its outputs' declared types and shapes.
pub(super) struct OrtProbe {
    runtime: Runtime,
}

impl OrtProbe {
    /// A probe on the CPU of `runtime`'s library.
    pub(super) fn on_cpu(runtime: &Runtime) -> Result<OrtProbe, EngineError> {
        Ok(OrtProbe {
            runtime: Runtime::new(Some(runtime.library_path()), Device::Cpu)?,
        })
    }
}

impl ShapeProbe for OrtProbe {
    fn probe(&mut self, model: &Path) -> Result<Vec<TensorInfo>, ProbeError> {
        let session = self.runtime.session(model)?;
        Ok(session
            .outputs()
            .iter()
            .filter_map(|o| match o.dtype() {
                ValueType::Tensor { ty, shape, .. } => Some(TensorInfo {
                    name: o.name().to_string(),
                    elem_type: ort::sys::ONNXTensorElementDataType::from(*ty) as i32,
                    dims: shape.iter().map(|&d| (d >= 0).then_some(d)).collect(),
                }),
                _ => None,
            })
            .collect())
    }
}

/// The transformer blocks of the UNet at `path`, with their levels, in graph order, for
/// choosing what to cut.
pub fn transformer_blocks(path: &Path) -> Result<Vec<TransformerBlock>, EngineError> {
    let model = onnx::read_model(path).map_err(onnx_err(path))?;
    Ok(onnx::transformer_blocks(&model))
}

impl SplitUnet {
    /// Cuts the UNet at `path` at `components` (or takes the cut from the cache) and
    /// opens one session per part.
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        components: &[ComponentId],
        options: &SplitOptions,
    ) -> Result<SplitUnet, EngineError> {
        let mut probe = OrtProbe::on_cpu(runtime)?;
        let (manifest, status) = onnx::prepare_split(path, components, options, Some(&mut probe))
            .map_err(onnx_err(path))?;
        Self::from_manifest(runtime, path, manifest, status)
    }

    /// Whether each part hands its unused arena memory back after it runs (ONNX
    /// Runtime's `memory.enable_memory_arena_shrinkage`). Every part is a session with
    /// its own arena, which keeps the part's peak: with many cut components at a large
    /// latent that adds up to several times the whole graph's memory. Shrinking keeps
    /// memory near the whole graph's, at a cost in speed (measured in the report of the
    /// change that added it: about +50% on the CPU for a 97-part cut). Off by default.
    pub fn set_release_memory(&mut self, release: bool) -> Result<(), EngineError> {
        self.shrink = if release {
            Some(shrink_arenas(self.device).map_err(|e| run_error(&self.path, e))?)
        } else {
            None
        };
        Ok(())
    }

    fn from_manifest(
        runtime: &Runtime,
        path: &Path,
        manifest: SplitManifest,
        status: CacheStatus,
    ) -> Result<SplitUnet, EngineError> {
        let by_name_or_position = |name: &str, position: usize| -> Option<String> {
            let g = &manifest.graph_inputs;
            g.iter()
                .find(|n| *n == name)
                .or_else(|| g.get(position))
                .cloned()
        };
        let sample = by_name_or_position("sample", 0);
        let timestep = by_name_or_position("timestep", 1);
        let hidden = by_name_or_position("encoder_hidden_states", 2);
        let (Some(sample), Some(timestep), Some(hidden)) = (sample, timestep, hidden) else {
            return Err(unexpected(
                path,
                format!(
                    "it has {} inputs ({}); expected sample, timestep, encoder_hidden_states",
                    manifest.graph_inputs.len(),
                    manifest.graph_inputs.join(", ")
                ),
            ));
        };
        let output_name = manifest
            .graph_outputs
            .iter()
            .find(|n| *n == "out_sample")
            .or(manifest.graph_outputs.first())
            .cloned()
            .ok_or_else(|| unexpected(path, "it has no output".into()))?;

        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let mut last_use: Vec<usize> = Vec::new();
        let mut parts = Vec::with_capacity(manifest.parts.len());
        let mut specs: HashMap<String, super::io::InputSpec> = HashMap::new();
        let mut blocks_shown: Vec<BlockId> = Vec::new();
        for (p, part) in manifest.parts.iter().enumerate() {
            let part_path = manifest.part_path(part);
            let session = runtime.session(&part_path)?;
            let mut inputs = Vec::with_capacity(part.inputs.len());
            for name in &part.inputs {
                let source = if *name == sample {
                    Source::Sample
                } else if *name == timestep {
                    Source::Timestep
                } else if *name == hidden {
                    Source::Hidden
                } else if *name == "text_embeds" {
                    Source::TextEmbeds
                } else if *name == "time_ids" {
                    Source::TimeIds
                } else {
                    let slot = *slot_of.get(name).ok_or_else(|| {
                        unexpected(
                            &part_path,
                            format!("no earlier part computes its input `{name}`"),
                        )
                    })?;
                    last_use[slot] = p;
                    Source::Slot(slot)
                };
                if !matches!(source, Source::Slot(_)) && !specs.contains_key(name) {
                    specs.insert(
                        name.clone(),
                        input_spec(&session, &part_path, name, usize::MAX)?,
                    );
                }
                inputs.push((name.clone(), source));
            }
            let mut outputs = Vec::with_capacity(part.outputs.len());
            for outlet in session.outputs() {
                let slot = last_use.len();
                last_use.push(p);
                slot_of.insert(outlet.name().to_string(), slot);
                outputs.push((outlet.name().to_string(), slot));
            }
            let component = match &part.kind {
                PartKind::Segment => None,
                PartKind::Component { id, input, output } => {
                    let find = |name: &str| {
                        slot_of.get(name).copied().ok_or_else(|| {
                            unexpected(
                                &part_path,
                                format!("`{name}` is not passed between the parts"),
                            )
                        })
                    };
                    let block = match manifest.blocks.iter().find(|b| b.id == id.block) {
                        Some(b) if !blocks_shown.contains(&b.id) => {
                            blocks_shown.push(b.id);
                            let slot = find(&b.input)?;
                            last_use[slot] = last_use[slot].max(p);
                            Some((b.id, slot))
                        }
                        _ => None,
                    };
                    Some(Component {
                        id: *id,
                        input: find(input)?,
                        output: find(output)?,
                        block,
                    })
                }
            };
            parts.push(PartRun {
                session,
                path: part_path,
                inputs,
                outputs,
                component,
                release: Vec::new(),
            });
        }
        let output = *slot_of.get(&output_name).ok_or_else(|| {
            unexpected(path, format!("no part computes the output `{output_name}`"))
        })?;
        last_use[output] = usize::MAX;
        for (slot, &p) in last_use.iter().enumerate() {
            if let Some(part) = parts.get_mut(p) {
                part.release.push(slot);
            }
        }
        let spec = |name: &str| {
            specs.get(name).cloned().ok_or_else(|| {
                unexpected(
                    path,
                    format!("no part of the cut graph reads the input `{name}`"),
                )
            })
        };
        let inputs = UnetInputs::new(path, spec(&sample)?, spec(&timestep)?, hidden)?
            .with_added(path, manifest.graph_inputs.iter().map(String::as_str))?;
        Ok(SplitUnet {
            parts,
            path: path.to_path_buf(),
            inputs,
            output,
            output_name,
            slots: last_use.len(),
            manifest,
            status,
            device: runtime.device(),
            shrink: None,
        })
    }

    /// The cut: parts, blocks, and where they are cached.
    pub fn manifest(&self) -> &SplitManifest {
        &self.manifest
    }

    /// The cut components, sorted.
    pub fn components(&self) -> &[ComponentId] {
        &self.manifest.components
    }

    /// Whether the cut came from the cache or was made by [`SplitUnet::load`].
    pub fn cache_status(&self) -> CacheStatus {
        self.status
    }

    /// Predicts noise for `sample` `[batch, 4, h, w]` at `timestep` given text states,
    /// calling `hooks` around every cut component, with every value on the host.
    pub fn predict<'c>(
        &mut self,
        sample: &Array4<f32>,
        timestep: f32,
        cond: impl Into<Conditioning<'c>>,
        hooks: &mut dyn TokenHooks,
    ) -> Result<Array4<f32>, EngineError> {
        let mut on_host = HostHooks {
            hooks,
            model: self.path.clone(),
        };
        self.execute(sample, timestep, cond.into(), &mut on_host, None)
    }

    /// As [`predict`](Self::predict) with every tensor left on the device between
    /// the parts (I/O binding): the inputs go to the device once, the hooks work on
    /// device values, and only the noise prediction comes back to the host.
    pub fn predict_resident<'c>(
        &mut self,
        sample: &Array4<f32>,
        timestep: f32,
        cond: impl Into<Conditioning<'c>>,
        hooks: &mut dyn ResidentHooks,
    ) -> Result<Array4<f32>, EngineError> {
        let device = self.device;
        self.execute(sample, timestep, cond.into(), hooks, Some(device))
    }

    /// The one loop over the parts, whatever the token ops' placement. `device`: `None`
    /// runs each part on host values (ONNX Runtime's plain `Run`), `Some` keeps every
    /// value on that device (I/O binding) and brings only the noise back.
    fn execute(
        &mut self,
        sample: &Array4<f32>,
        timestep: f32,
        cond: Conditioning<'_>,
        hooks: &mut dyn ResidentHooks,
        device: Option<Device>,
    ) -> Result<Array4<f32>, EngineError> {
        self.inputs.check(&self.path, &cond)?;
        let model = self.path.as_path();
        let err = |e| run_error(model, e);
        let place = |v: DynValue| match device {
            Some(d) => upload(v, d).map_err(err),
            None => Ok(v),
        };
        let owned = |a: ndarray::ArrayViewD<'_, f32>| {
            Tensor::from_array(a.to_owned())
                .map(|t| t.into_dyn())
                .map_err(err)
        };
        let t = place(
            self.inputs
                .timestep_value(timestep, sample.shape()[0])
                .map_err(err)?,
        )?;
        let sample = place(owned(sample.view().into_dyn())?)?;
        let hidden = place(owned(cond.hidden.into_dyn())?)?;
        // SDXL's added conditions are placed once, as the other inputs.
        let added = match cond.added {
            Some(a) => Some((
                place(owned(a.text_embeds.view().into_dyn())?)?,
                place(owned(a.time_ids.view().into_dyn())?)?,
            )),
            None => None,
        };
        let mut values: Vec<Option<DynValue>> = (0..self.slots).map(|_| None).collect();
        for part in &mut self.parts {
            let part_path = part.path.as_path();
            // Merge before a component.
            let mut merged: Option<(usize, DynValue, usize)> = None;
            if let Some(c) = &part.component {
                if let Some((block, slot)) = &c.block {
                    hooks.block_input(block, filled(&values, *slot, part_path)?)?;
                }
                let x = filled(&values, c.input, part_path)?;
                let x_dims = token_dims(x, part_path)?;
                if let Some(m) = hooks.before_component(&c.id, x)? {
                    let m_dims = token_dims(&m, part_path)?;
                    if m_dims[0] != x_dims[0] || m_dims[2] != x_dims[2] {
                        return Err(unexpected(
                            part_path,
                            format!("the hook merged {} to {m_dims:?}, which changes more than the token count of {x_dims:?}", c.id),
                        ));
                    }
                    merged = Some((c.input, m, x_dims[1]));
                }
            }
            let mut feed: Vec<(&str, &DynValue)> = Vec::with_capacity(part.inputs.len());
            for (name, source) in &part.inputs {
                let value = match *source {
                    Source::Sample => &sample,
                    Source::Hidden => &hidden,
                    Source::Timestep => &t,
                    Source::TextEmbeds | Source::TimeIds => {
                        let (text, time) = added
                            .as_ref()
                            .expect("checked: the graph's added inputs are given");
                        if *source == Source::TextEmbeds {
                            text
                        } else {
                            time
                        }
                    }
                    Source::Slot(s) => match &merged {
                        Some((slot, m, _)) if *slot == s => m,
                        _ => values[s]
                            .as_ref()
                            .expect("an earlier part filled every slot it reads"),
                    },
                };
                feed.push((name.as_str(), value));
            }
            let shrink = self.shrink.as_ref();
            let outputs = match device {
                Some(d) => run_resident(&mut part.session, &feed, d, shrink),
                None => run_on_host(&mut part.session, &feed, shrink),
            }
            .map_err(|e| run_error(part_path, e))?;
            for (name, value) in outputs {
                if let Some((_, slot)) = part.outputs.iter().find(|(n, _)| *n == name) {
                    values[*slot] = Some(value);
                }
            }
            // Unmerge after it.
            if let Some(c) = &part.component {
                let y = filled(&values, c.output, part_path)?;
                let y_dims = token_dims(y, part_path)?;
                let tokens = merged.as_ref().map(|(_, _, n)| *n);
                match hooks.after_component(&c.id, y)? {
                    Some(u) => {
                        let want = vec![y_dims[0], tokens.unwrap_or(y_dims[1]), y_dims[2]];
                        let got = token_dims(&u, part_path)?;
                        if got != want {
                            return Err(unexpected(
                                part_path,
                                format!("the hook unmerged {} to {got:?}; expected {want:?}", c.id),
                            ));
                        }
                        values[c.output] = Some(u);
                    }
                    None if tokens.is_some_and(|t| t != y_dims[1]) => {
                        return Err(unexpected(
                            part_path,
                            format!("{} ran on merged tokens ({}) but the hook did not unmerge its output", c.id, y_dims[1]),
                        ));
                    }
                    None => {}
                }
            }
            for &slot in &part.release {
                values[slot] = None;
            }
        }
        let out = values[self.output]
            .as_ref()
            .expect("the last part computes the output");
        let noise = match device {
            Some(d) => download_f32(out, d),
            None => out.try_extract_array::<f32>().map(|a| a.to_owned()),
        }
        .map_err(err)?;
        noise.into_dimensionality().map_err(|e| {
            unexpected(
                model,
                format!("`{}` is not [batch, c, h, w]: {e}", self.output_name),
            )
        })
    }
}

/// One part's `Run` on host values.
fn run_on_host(
    session: &mut Session,
    feed: &[(&str, &DynValue)],
    options: Option<&RunOptions>,
) -> ort::Result<Vec<(String, DynValue)>> {
    let inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = feed
        .iter()
        .map(|&(name, value)| (Cow::Borrowed(name), value.into()))
        .collect();
    let outputs = match options {
        Some(options) => session.run_with_options(inputs, options)?,
        None => session.run(inputs)?,
    };
    Ok(outputs
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect())
}

/// [`TokenHooks`] (host arrays) as the executor's value hooks: views of the values
/// go in, the hooks' arrays come back as values (moved, not copied).
struct HostHooks<'h> {
    hooks: &'h mut dyn TokenHooks,
    model: PathBuf,
}

impl HostHooks<'_> {
    fn value(&self, array: Array3<f32>) -> Result<DynValue, EngineError> {
        Tensor::from_array(array)
            .map(|t| t.into_dyn())
            .map_err(|e| run_error(&self.model, e))
    }
}

impl ResidentHooks for HostHooks<'_> {
    fn block_input(&mut self, block: &BlockId, x: &DynValue) -> Result<(), EngineError> {
        self.hooks.block_input(block, view3(x, &self.model)?);
        Ok(())
    }

    fn before_component(
        &mut self,
        c: &ComponentId,
        x: &DynValue,
    ) -> Result<Option<DynValue>, EngineError> {
        match self.hooks.before_component(c, view3(x, &self.model)?) {
            Some(m) => Ok(Some(self.value(m)?)),
            None => Ok(None),
        }
    }

    fn after_component(
        &mut self,
        c: &ComponentId,
        y: &DynValue,
    ) -> Result<Option<DynValue>, EngineError> {
        match self.hooks.after_component(c, view3(y, &self.model)?) {
            Some(u) => Ok(Some(self.value(u)?)),
            None => Ok(None),
        }
    }
}

/// The value in `slot`, which an earlier part must have filled.
fn filled<'v>(
    values: &'v [Option<DynValue>],
    slot: usize,
    part: &Path,
) -> Result<&'v DynValue, EngineError> {
    values[slot]
        .as_ref()
        .ok_or_else(|| unexpected(part, "a slot is read before a part fills it".into()))
}

/// A component's input or output dimensions, which must be [batch, tokens, channels].
fn token_dims(value: &DynValue, part: &Path) -> Result<Vec<usize>, EngineError> {
    match dims(value) {
        Some(d) if d.len() == 3 => Ok(d),
        d => Err(unexpected(
            part,
            format!("a component's input or output is not [batch, tokens, channels]: {d:?}"),
        )),
    }
}

/// A host value as `[batch, tokens, channels]`.
fn view3<'v>(value: &'v DynValue, part: &Path) -> Result<ArrayView3<'v, f32>, EngineError> {
    let view = value
        .try_extract_array::<f32>()
        .map_err(|e| run_error(part, e))?;
    view.into_dimensionality::<Ix3>().map_err(|e| {
        unexpected(
            part,
            format!("a component's input or output is not [batch, tokens, channels]: {e}"),
        )
    })
}
