//! One image from a prompt and a seed, step for step as diffusers'
//! `StableDiffusionPipeline.__call__` does it.

use std::time::{Duration, Instant};

use image::RgbImage;
use ndarray::{concatenate, s, Array2, Array3, Array4, Axis, Ix4};

use super::pixels::to_rgb8;
use super::rng::randn;
use super::scheduler::{self, SchedulerConfig, SchedulerKind};
use super::tokenizer::{ClipTokenizer, TokenizerError};
use crate::engine::{
    AddedConditions, Conditioning, EngineError, Runtime, TextEncoder, TokenOps, TomeUnet, Unet,
    VaeDecoder,
};
use crate::model::{LatentStats, ModelDir, ModelError};
use crate::onnx::{Attention, Fusion, Precision, SplitOptions};
use crate::tome::{PartitionRng, TomeConfig, TomeError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{0}")]
    Scheduler(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tome(#[from] TomeError),
}

/// What diffusers' pipeline would take for a model when the caller says nothing: the
/// image side (the UNet's sample_size times the VAE's scale factor; 512, SD 1.x's, when
/// the export lacks the configs), the scheduler class it was saved with, and the
/// guidance scale (`StableDiffusionXLPipeline`'s 5.0, `StableDiffusionPipeline`'s 7.5).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDefaults {
    pub size: usize,
    pub guidance: f32,
    /// `scheduler_config.json`'s `_class_name`, if it names one.
    pub scheduler_class: Option<String>,
    scheduler_config: std::path::PathBuf,
}

impl ModelDefaults {
    pub fn of(model: &ModelDir) -> Result<ModelDefaults, ModelError> {
        Ok(ModelDefaults {
            size: model.default_image_size()?.unwrap_or(512),
            guidance: if model.is_xl() { 5.0 } else { 7.5 },
            scheduler_class: model.scheduler_class()?,
            scheduler_config: model.scheduler_config.clone(),
        })
    }

    /// The scheduler the model was saved with (PNDM when its config names none); one
    /// tomex does not implement is an error that says to choose one.
    pub fn scheduler(&self) -> Result<SchedulerKind, PipelineError> {
        let Some(class) = &self.scheduler_class else {
            return Ok(SchedulerKind::Pndm);
        };
        SchedulerKind::from_diffusers_class(class).ok_or_else(|| {
            PipelineError::Scheduler(format!(
                "{}: the model's scheduler {class} is not one tomex implements; choose one with --scheduler ({})",
                self.scheduler_config.display(),
                SchedulerKind::NAMES.join(", ")
            ))
        })
    }
}

/// The largest image side tomex accepts: at 4096 x 4096 the VAE decoder's widest
/// activations (128 channels at full size, float32) take 8 GiB each, so a larger image
/// cannot decode in the memory of the machines tomex targets.
pub const MAX_SIDE: usize = 4096;
/// The largest guidance scale accepted: Stable Diffusion is used at 1 to 20; a scale
/// beyond 100 saturates every pixel, and one beyond float32's range is infinite.
pub const MAX_GUIDANCE: f32 = 100.0;
/// The most denoising steps: the schedulers' training timesteps (1000 for every Stable
/// Diffusion; a scheduler cannot space more inference steps over them).
pub const MAX_STEPS: usize = 1000;

/// Everything that determines one image.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub steps: usize,
    pub guidance: f32,
    pub width: usize,
    pub height: usize,
    pub scheduler: SchedulerKind,
    /// Token Merging; `None`, a zero ratio or no target runs the whole, uncut UNet.
    pub tome: Option<TomeConfig>,
}

impl Request {
    /// The checks diffusers makes before it starts, with messages that name the value.
    pub fn validate(&self) -> Result<(), PipelineError> {
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if v == 0 || v % 8 != 0 {
                return Err(PipelineError::Invalid(format!(
                    "{name} {v} is not a positive multiple of 8"
                )));
            }
            if v > MAX_SIDE {
                return Err(PipelineError::Invalid(format!(
                    "{name} {v} is above the largest side, {MAX_SIDE}"
                )));
            }
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(PipelineError::Invalid(format!(
                "steps must be 1 to {MAX_STEPS} (the scheduler's training timesteps), got {}",
                self.steps
            )));
        }
        if !self.guidance.is_finite() || self.guidance.abs() > MAX_GUIDANCE {
            return Err(PipelineError::Invalid(format!(
                "guidance must be a number from -{MAX_GUIDANCE} to {MAX_GUIDANCE}, got {}",
                self.guidance
            )));
        }
        if let Some(tome) = &self.tome {
            tome.validate()?;
        }
        Ok(())
    }

    /// The ToMe configuration when it merges anything.
    fn merging(&self) -> Option<&TomeConfig> {
        self.tome.as_ref().filter(|t| t.merges_anything())
    }
}

/// Wall time of one image and of its stages.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    pub text_encoding: Duration,
    pub unet: Duration,
    pub vae: Duration,
    pub total: Duration,
}

/// The loaded graphs and configuration of one model.
///
/// One UNet is open at a time: the whole graph for images that merge nothing, or
/// the split for one ToMe cut. Each holds all of the UNet's weights (3.4 GB for
/// SD 1.5), so a run that mixes r = 0 and r > 0 closes one before opening the other.
pub struct StableDiffusion {
    tokenizer: ClipTokenizer,
    text_encoder: TextEncoder,
    /// SDXL's second tokenizer and text encoder (OpenCLIP bigG's layout).
    xl: Option<SecondEncoder>,
    /// SDXL: an empty negative prompt conditions on zeros (model_index.json's
    /// `force_zeros_for_empty_prompt`), as diffusers does when no negative prompt is given.
    force_zeros_for_empty_prompt: bool,
    /// The whole UNet (attention rewritten as `unet_options` say), when open.
    unet: Option<Unet>,
    /// The graph it is opened from (the cached rewrite, or the export itself).
    whole_unet: std::path::PathBuf,
    /// How the UNet graphs compute attention, and where their rewrites are cached.
    unet_options: SplitOptions,
    /// What the attention rewrite did to the whole UNet.
    fusion: Fusion,
    /// Where ToMe's token ops run.
    token_ops: TokenOps,
    /// The split UNet for ToMe, opened on the first request that merges.
    tome_unet: Option<TomeUnet>,
    runtime: Runtime,
    unet_path: std::path::PathBuf,
    vae: VaeDecoder,
    scheduler_config: SchedulerConfig,
    vae_scaling_factor: f32,
    /// SDXL only (diffusers' SD 1.x/2.x pipelines ignore them): the VAE config's
    /// `latents_mean`/`latents_std`, undone with the scaling factor before decoding.
    vae_latent_stats: Option<LatentStats>,
}

struct SecondEncoder {
    tokenizer: ClipTokenizer,
    text_encoder: TextEncoder,
}

/// The UNet's conditioning for one image: text states, and SDXL's added conditions.
struct Conditions {
    hidden: Array3<f32>,
    added: Option<AddedConditions>,
}

impl Conditions {
    fn view(&self) -> Conditioning<'_> {
        Conditioning::new(&self.hidden, self.added.as_ref())
    }
}

impl StableDiffusion {
    /// The model with the UNet's attention fused (cached under the default cache root).
    pub fn load(runtime: &Runtime, model: &ModelDir) -> Result<StableDiffusion, PipelineError> {
        Self::load_with(runtime, model, SplitOptions::default())
    }

    /// The model with the UNet's graphs made as `unet_options` say.
    pub fn load_with(
        runtime: &Runtime,
        model: &ModelDir,
        unet_options: SplitOptions,
    ) -> Result<StableDiffusion, PipelineError> {
        let whole = crate::onnx::prepare_whole(&model.unet, &unet_options).map_err(|e| {
            EngineError::Unexpected {
                model: model.unet.clone(),
                reason: e.detail(),
            }
        })?;
        let scheduler_config = SchedulerConfig::from_json(&model.scheduler_config_text()?)
            .map_err(|e| {
                PipelineError::Scheduler(format!("{}: {e}", model.scheduler_config.display()))
            })?;
        // SDXL reads both encoders' penultimate layers, and the second's pooled output.
        let (text_encoder, xl) = match &model.text_encoder_2 {
            None => (TextEncoder::load(runtime, &model.text_encoder)?, None),
            Some(second) => {
                let text_encoder_2 = TextEncoder::load_penultimate(runtime, &second.text_encoder)?;
                if !text_encoder_2.has_pooled() {
                    return Err(PipelineError::Invalid(format!(
                        "{}: SDXL's second text encoder has no `text_embeds` output",
                        second.text_encoder.display()
                    )));
                }
                (
                    TextEncoder::load_penultimate(runtime, &model.text_encoder)?,
                    Some(SecondEncoder {
                        tokenizer: ClipTokenizer::from_dir(&second.tokenizer_dir)?,
                        text_encoder: text_encoder_2,
                    }),
                )
            }
        };
        Ok(StableDiffusion {
            tokenizer: ClipTokenizer::from_dir(&model.tokenizer_dir)?,
            text_encoder,
            xl,
            force_zeros_for_empty_prompt: model.force_zeros_for_empty_prompt,
            unet: None,
            whole_unet: whole.path,
            unet_options,
            fusion: whole.fusion,
            token_ops: TokenOps::Host,
            tome_unet: None,
            runtime: *runtime,
            unet_path: model.unet.clone(),
            vae: VaeDecoder::load(runtime, &model.vae_decoder)?,
            scheduler_config,
            vae_scaling_factor: model.vae_scaling_factor()?,
            vae_latent_stats: if model.is_xl() {
                model.vae_latents_stats()?
            } else {
                None
            },
        })
    }

    /// The latents as the VAE decodes them: `latents / scaling_factor`, or with SDXL's
    /// latent statistics `latents * std / scaling_factor + mean` per channel (diffusers'
    /// order of float32 operations).
    fn unscaled(&self, mut latents: Array4<f32>) -> Array4<f32> {
        let factor = self.vae_scaling_factor;
        match &self.vae_latent_stats {
            None => latents.mapv_inplace(|v| v / factor),
            Some(stats) => {
                for (c, mut plane) in latents.axis_iter_mut(Axis(1)).enumerate() {
                    let (mean, std) = (stats.mean[c], stats.std[c]);
                    plane.mapv_inplace(|v| v * std / factor + mean);
                }
            }
        }
        latents
    }

    /// How the UNet computes attention.
    pub fn attention(&self) -> Attention {
        self.unet_options.attention
    }

    /// The precision the UNet computes in.
    pub fn precision(&self) -> Precision {
        self.unet_options.precision
    }

    /// Runs ToMe's token ops on the host (the default) or as ONNX graphs.
    pub fn set_token_ops(&mut self, ops: TokenOps) -> Result<(), PipelineError> {
        self.token_ops = ops;
        if let Some(t) = self.tome_unet.as_mut() {
            t.set_token_ops(ops)?;
        }
        Ok(())
    }

    /// How many UNet graphs (the whole one, ToMe splits) are open: at most one.
    pub fn open_unets(&self) -> usize {
        usize::from(self.unet.is_some()) + self.tome_unet.as_ref().map_or(0, |t| t.open_splits())
    }

    /// What the attention rewrite did to the whole UNet (nothing with `Exported`).
    pub fn fusion(&self) -> &Fusion {
        &self.fusion
    }

    pub fn generate(&mut self, req: &Request) -> Result<(RgbImage, Timings), PipelineError> {
        let (mut images, timings) = self.generate_batch(std::slice::from_ref(req))?;
        Ok((images.remove(0), timings))
    }

    /// Several images in one UNet batch, as diffusers' pipeline called with lists of
    /// prompts, negative prompts and generators (one per image): each image starts from
    /// its own seed's noise and ToMe's partition generator is drawn once per UNet call
    /// for the whole batch, as tomesd draws it, so every image is its batch-of-one twin
    /// (pixel for pixel on the CPU, tests/batch.rs). The requests may differ only in
    /// prompt, negative prompt and seed. Timings are the batch's.
    pub fn generate_batch(
        &mut self,
        reqs: &[Request],
    ) -> Result<(Vec<RgbImage>, Timings), PipelineError> {
        let req = batch_settings(reqs)?;
        let batch = reqs.len();
        let start = Instant::now();
        let mut scheduler = scheduler::build(req.scheduler, &self.scheduler_config, req.steps)
            .map_err(|e| PipelineError::Scheduler(e.to_string()))?;
        let guided = req.guidance > 1.0;

        let prompts: Vec<&str> = reqs.iter().map(|r| r.prompt.as_str()).collect();
        let negatives: Vec<&str> = reqs.iter().map(|r| r.negative_prompt.as_str()).collect();
        let conditions = self.conditions(
            &prompts,
            guided.then_some(negatives.as_slice()),
            (req.height, req.width),
        )?;
        let text_encoding = start.elapsed();

        // Initial noise from torch's CPU generator, one per image (diffusers with a
        // list of generators), scaled as the scheduler wants.
        let shape = [1, 4, req.height / 8, req.width / 8];
        let sigma = scheduler.init_noise_sigma();
        let noise: Vec<ndarray::ArrayD<f32>> = reqs.iter().map(|r| randn(r.seed, &shape)).collect();
        let views: Vec<_> = noise.iter().map(|n| n.view()).collect();
        let mut latents = concatenate(Axis(0), &views)
            .map_err(|e| PipelineError::Invalid(format!("internal: batch noise: {e}")))?
            .mapv(|v| v * sigma);

        self.open_unet(req)?;
        let tome = req.merging();
        // A fresh partition generator per batch: the same seed gives the same image.
        let mut partition_rng = PartitionRng::new(tome.map_or(0, |t| t.seed));

        let unet_start = Instant::now();
        for (i, &t) in scheduler.timesteps().to_vec().iter().enumerate() {
            let scaled = four_d(scheduler.scale_model_input(&latents, i))?;
            let input = if guided {
                concatenate![Axis(0), scaled, scaled]
            } else {
                scaled
            };
            let noise =
                self.predict_noise(&input, t, conditions.view(), tome, &mut partition_rng)?;
            let noise = if guided {
                let (uncond, text) = (
                    noise.slice(s![0..batch, .., .., ..]),
                    noise.slice(s![batch..2 * batch, .., .., ..]),
                );
                // Same float32 operations as torch: uncond + g * (text - uncond).
                &uncond + &((&text - &uncond) * req.guidance)
            } else {
                noise
            };
            latents = scheduler.step(&noise.into_dyn(), i, &latents);
        }
        let unet = unet_start.elapsed();

        let vae_start = Instant::now();
        let latents = self.unscaled(four_d(latents)?);
        let decoded = self.vae.decode(&latents)?;
        let images = decoded.axis_iter(Axis(0)).map(to_rgb8).collect();
        let vae = vae_start.elapsed();

        Ok((
            images,
            Timings {
                text_encoding,
                unet,
                vae,
                total: start.elapsed(),
            },
        ))
    }
}

/// The settings a batch's requests share (all but prompt, negative prompt and seed),
/// checked; the first request stands for them.
fn batch_settings(reqs: &[Request]) -> Result<&Request, PipelineError> {
    let first = reqs
        .first()
        .ok_or_else(|| PipelineError::Invalid("a batch needs at least one request".into()))?;
    first.validate()?;
    for r in &reqs[1..] {
        let same = r.steps == first.steps
            && r.guidance.to_bits() == first.guidance.to_bits()
            && (r.width, r.height) == (first.width, first.height)
            && r.scheduler == first.scheduler
            && r.tome == first.tome;
        if !same {
            return Err(PipelineError::Invalid(
                "the images of one batch must share steps, guidance, size, scheduler and ToMe; \
                 only prompt, negative prompt and seed may differ"
                    .into(),
            ));
        }
    }
    Ok(first)
}

impl StableDiffusion {
    /// The UNet's conditioning: text states, unconditional row first as diffusers
    /// concatenates [negative, positive] when `negative` is given (guidance).
    ///
    /// SDXL (diffusers' `StableDiffusionXLPipeline.encode_prompt`): each encoder's
    /// penultimate hidden states, concatenated along the channels; the second encoder's
    /// pooled `text_embeds`; `time_ids` = (original size, crop top-left (0, 0), target
    /// size), both sizes the image's. An empty negative prompt with the model's
    /// `force_zeros_for_empty_prompt` conditions on zeros, as diffusers does when no
    /// negative prompt is given.
    fn conditions(
        &mut self,
        prompts: &[&str],
        negatives: Option<&[&str]>,
        (height, width): (usize, usize),
    ) -> Result<Conditions, PipelineError> {
        let Some(xl) = self.xl.as_mut() else {
            let mut rows = Vec::with_capacity(2 * prompts.len());
            for text in negatives.unwrap_or_default().iter().chain(prompts) {
                rows.push(self.tokenizer.encode(text)?);
            }
            return Ok(Conditions {
                hidden: self.text_encoder.encode(&rows)?,
                added: None,
            });
        };
        // diffusers zeroes the whole unconditional half when no negative prompt is
        // given; a batch cannot have it for some images only.
        let empty = negatives.map(|n| n.iter().filter(|t| t.is_empty()).count());
        let zero_negative = self.force_zeros_for_empty_prompt && empty == Some(prompts.len());
        if self.force_zeros_for_empty_prompt && empty.is_some_and(|e| e > 0 && e < prompts.len()) {
            return Err(PipelineError::Invalid(
                "this model conditions an empty negative prompt on zeros (force_zeros_for_empty_prompt), \
                 so a batch's negative prompts must be all empty or all given"
                    .into(),
            ));
        }
        let mut texts: Vec<&str> = Vec::with_capacity(2 * prompts.len());
        if let Some(negatives) = negatives.filter(|_| !zero_negative) {
            texts.extend(negatives);
        }
        texts.extend(prompts);
        let rows = |tok: &ClipTokenizer| -> Result<Vec<Vec<u32>>, TokenizerError> {
            texts.iter().map(|p| tok.encode(p)).collect()
        };
        let first = self.text_encoder.encode(&rows(&self.tokenizer)?)?;
        let second = xl.text_encoder.encode_states(&rows(&xl.tokenizer)?)?;
        let mut hidden = concatenate![Axis(2), first, second.hidden];
        let mut pooled = second.pooled.ok_or_else(|| {
            PipelineError::Invalid("internal: the second text encoder gave no pooled output".into())
        })?;
        if zero_negative {
            hidden = concatenate![Axis(0), Array3::zeros(hidden.raw_dim()), hidden];
            pooled = concatenate![Axis(0), Array2::zeros(pooled.raw_dim()), pooled];
        }
        // ONNX Runtime takes row-major arrays; a concatenation along the last axis is not.
        let hidden = hidden.as_standard_layout().into_owned();
        let pooled = pooled.as_standard_layout().into_owned();
        let rows = hidden.shape()[0];
        let (h, w) = (height as f32, width as f32);
        let time_ids = Array2::from_shape_fn((rows, 6), |(_, k)| [h, w, 0.0, 0.0, h, w][k]);
        Ok(Conditions {
            hidden,
            added: Some(AddedConditions {
                text_embeds: pooled,
                time_ids,
            }),
        })
    }

    /// Opens the UNet that `req` needs and closes the other ones first, so that
    /// only one copy of the weights is ever held. `true` when it was opened now.
    fn open_unet(&mut self, req: &Request) -> Result<bool, PipelineError> {
        let Some(cfg) = req.merging() else {
            if let Some(t) = self.tome_unet.as_mut() {
                t.close_others(None);
            }
            if self.unet.is_some() {
                return Ok(false);
            }
            let unet = Unet::load_prepared(&self.runtime, &self.whole_unet, &self.unet_path)?;
            self.unet = Some(unet);
            return Ok(true);
        };
        self.unet = None;
        let tome_unet = self.tome_unet()?;
        let cut = tome_unet.cut_for((req.height / 8, req.width / 8), cfg)?;
        tome_unet.close_others(Some(&cut));
        Ok(tome_unet.open(&cut)?)
    }

    /// The ToMe UNet, read now if it was not (its graph's blocks; no session opens).
    fn tome_unet(&mut self) -> Result<&mut TomeUnet, PipelineError> {
        if self.tome_unet.is_none() {
            let options = self.unet_options.clone();
            let mut tome_unet = TomeUnet::load(&self.runtime, &self.unet_path, options)?;
            tome_unet.set_token_ops(self.token_ops)?;
            self.tome_unet = Some(tome_unet);
        }
        Ok(self.tome_unet.as_mut().expect("read above"))
    }

    /// Why `req`'s ToMe merges nothing at its size, if it asks for merging and does
    /// not (SDXL's first level has no attention: tomesd's default merges nothing).
    pub fn tome_merges_nothing(&mut self, req: &Request) -> Result<Option<String>, PipelineError> {
        let Some(cfg) = req.merging() else {
            return Ok(None);
        };
        let latent_hw = (req.height / 8, req.width / 8);
        Ok(self.tome_unet()?.merges_nothing(latent_hw, cfg))
    }

    /// Makes the UNet for `req` ready before an image is timed: opened (closing the
    /// others), and when newly opened, run once at `req`'s size, so that the timed
    /// image pays neither for the session nor for its first run's allocations.
    pub fn prepare_unet(&mut self, req: &Request) -> Result<(), PipelineError> {
        req.validate()?;
        if !self.open_unet(req)? {
            return Ok(());
        }
        let guided = req.guidance > 1.0;
        let conditions =
            self.conditions(&[""], guided.then_some(&[""][..]), (req.height, req.width))?;
        let one = four_d(randn(req.seed, &[1, 4, req.height / 8, req.width / 8]))?;
        let sample = if guided {
            concatenate![Axis(0), one, one]
        } else {
            one
        };
        let mut rng = PartitionRng::new(0);
        self.predict_noise(&sample, 999.0, conditions.view(), req.merging(), &mut rng)?;
        Ok(())
    }

    /// One UNet evaluation on the open UNet, with ToMe when `tome` is given.
    fn predict_noise(
        &mut self,
        sample: &Array4<f32>,
        t: f32,
        cond: Conditioning<'_>,
        tome: Option<&TomeConfig>,
        rng: &mut PartitionRng,
    ) -> Result<Array4<f32>, PipelineError> {
        let closed = || PipelineError::Invalid("internal: the UNet is not open".into());
        Ok(match tome {
            Some(cfg) => {
                let split = self.tome_unet.as_mut().ok_or_else(closed)?;
                split.predict(sample, t, cond, cfg, rng)?
            }
            None => self
                .unet
                .as_mut()
                .ok_or_else(closed)?
                .predict(sample, t, cond)?,
        })
    }
}

fn four_d(a: ndarray::ArrayD<f32>) -> Result<Array4<f32>, PipelineError> {
    a.into_dimensionality::<Ix4>()
        .map_err(|e| PipelineError::Invalid(format!("latents are not 4-D: {e}")))
}
