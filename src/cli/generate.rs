//! `tomex generate`: one image, or several in one UNet batch, with the time.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use super::resolve::model_dir;
use super::Global;
use crate::diffusion::pipeline::{ModelDefaults, Request, StableDiffusion};
use crate::diffusion::prompt::{cut_prompt, THESIS_MAX_CHARS};
use crate::diffusion::scheduler::SchedulerKind;
use crate::engine::{Device, Runtime};
use crate::onnx::{Attention, Fusion};
use crate::tome::{Targets, TomeConfig};

#[derive(Args)]
pub struct GenerateArgs {
    /// Model directory, or a name in models.lock.
    #[arg(long, default_value = "demo")]
    model: String,
    /// The prompt; repeat the flag for several images in one UNet batch (diffusers'
    /// list of prompts).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Images of each prompt in the batch (diffusers' num_images_per_prompt; prompt 1's
    /// images first).
    #[arg(long, default_value_t = 1, value_name = "N")]
    images_per_prompt: usize,
    /// Seed of torch's CPU generator for the initial latents (as diffusers), one per
    /// image; a single seed S gives the batch's images S, S+1, ... (diffusers with a
    /// list of generators seeded so).
    #[arg(long, required = true, value_delimiter = ',')]
    seed: Vec<u64>,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale. Default: the model's pipeline's (7.5; SDXL 5.0)
    #[arg(long)]
    guidance: Option<f32>,
    /// Default: what diffusers' pipeline takes for this model, the UNet's sample_size
    /// times the VAE's scale factor (512 for SD 1.5, 256 for the demo model).
    #[arg(long)]
    width: Option<usize>,
    /// Default: as --width.
    #[arg(long)]
    height: Option<usize>,
    /// pndm, ddim, euler or dpmpp-2m. Default: the model's own (scheduler_config.json).
    #[arg(long)]
    scheduler: Option<SchedulerKind>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Cut prompts over 300 characters at the last comma, as the thesis did.
    #[arg(long)]
    cut_prompt: bool,
    /// Output PNG file; with several images `NAME-0.png`, `NAME-1.png`, ... in batch
    /// order.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    tome: TomeArgs,
}

/// Token Merging, as tomesd's `apply_patch` takes it.
#[derive(Args)]
pub struct TomeArgs {
    /// Fraction of tokens to merge (0 = no ToMe; at most 1 - 1/(sx*sy)).
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    tome_ratio: f64,
    /// Components to merge before: self_attn, cross_attn, mlp (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "self_attn",
        value_name = "LIST"
    )]
    tome_merge: Vec<MergeTarget>,
    /// Stride of the dst grid along x.
    #[arg(long, default_value_t = 2, value_name = "N")]
    tome_sx: usize,
    /// Stride of the dst grid along y.
    #[arg(long, default_value_t = 2, value_name = "N")]
    tome_sy: usize,
    /// Always the top-left token of each cell as dst (tomesd's use_rand=False).
    #[arg(long)]
    tome_no_rand: bool,
    /// Seed of the generator for random dst cells.
    #[arg(long, default_value_t = 0, value_name = "N")]
    tome_seed: u64,
    /// Merge only where the latent is downsampled at most this much (1, 2, 4 or 8).
    #[arg(long, default_value_t = 1, value_name = "N")]
    tome_max_downsample: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum MergeTarget {
    SelfAttn,
    CrossAttn,
    Mlp,
}

impl TomeArgs {
    /// The configuration, or `None` when the ratio is 0.
    pub fn config(&self) -> Option<TomeConfig> {
        (self.tome_ratio != 0.0).then(|| self.config_or_zero())
    }

    /// The configuration, also when its ratio is 0.
    pub fn config_or_zero(&self) -> TomeConfig {
        let has = |t| self.tome_merge.contains(&t);
        TomeConfig {
            ratio: self.tome_ratio,
            targets: Targets {
                self_attn: has(MergeTarget::SelfAttn),
                cross_attn: has(MergeTarget::CrossAttn),
                mlp: has(MergeTarget::Mlp),
            },
            sx: self.tome_sx,
            sy: self.tome_sy,
            random: !self.tome_no_rand,
            seed: self.tome_seed,
            max_downsample: self.tome_max_downsample,
        }
    }
}

pub fn run(global: &Global, args: GenerateArgs) -> anyhow::Result<()> {
    check_writable(&args.out)?;
    let prompts: Vec<String> = args
        .prompt
        .iter()
        .flat_map(|p| std::iter::repeat_n(p, args.images_per_prompt))
        .map(|p| {
            if args.cut_prompt {
                cut_prompt(p, THESIS_MAX_CHARS)
            } else {
                p.clone()
            }
        })
        .collect();
    if prompts.is_empty() {
        bail!("--images-per-prompt must be at least 1");
    }
    let seeds = image_seeds(&args.seed, prompts.len())?;
    let outs = out_paths(&args.out, prompts.len());
    let model = model_dir(global, &args.model)?;
    let defaults = ModelDefaults::of(&model)?;
    let scheduler = match args.scheduler {
        Some(kind) => kind,
        None => defaults.scheduler()?,
    };
    let requests: Vec<Request> = prompts
        .into_iter()
        .zip(&seeds)
        .map(|(prompt, &seed)| Request {
            prompt,
            negative_prompt: args.negative_prompt.clone(),
            seed,
            steps: args.steps,
            guidance: args.guidance.unwrap_or(defaults.guidance),
            width: args.width.unwrap_or(defaults.size),
            height: args.height.unwrap_or(defaults.size),
            scheduler,
            tome: args.tome.config(),
        })
        .collect();
    requests[0].validate()?;
    let runtime = Runtime::new(global.ort_lib.as_deref(), args.device)?;
    let mut sd = StableDiffusion::load_with(
        &runtime,
        &model,
        global.unet_options(args.device, global.precision.unwrap_or_default())?,
    )?;
    sd.set_token_ops(global.token_ops(args.device))?;
    super::note_precision(args.device, sd.precision());
    if let Some(why) = sd.tome_merges_nothing(&requests[0])? {
        eprintln!("warning: --tome-ratio {} {why}", args.tome.tome_ratio);
    }
    let (made, device_peak) = runtime.with_device_peak(|| sd.generate_batch(&requests));
    let (images, timings) = made?;
    for (image, out) in images.iter().zip(&outs) {
        write_png_atomically(image, out)?;
    }
    let per_image = if images.len() > 1 {
        format!(
            " for {} images ({:.3} s per image)",
            images.len(),
            timings.total.as_secs_f64() / images.len() as f64
        )
    } else {
        String::new()
    };
    let written: Vec<String> = outs.iter().map(|o| o.display().to_string()).collect();
    let gpu_memory = device_peak.map_or(String::new(), |b| {
        format!(
            ", peak GPU memory {:.0} MiB",
            b as f64 / (1u64 << 20) as f64
        )
    });
    say!(
        "{}: {:.3} s{per_image} (text {:.3} s, unet {:.3} s, vae {:.3} s) on {} with ONNX Runtime {}, {}{gpu_memory}",
        written.join(", "),
        timings.total.as_secs_f64(),
        timings.text_encoding.as_secs_f64(),
        timings.unet.as_secs_f64(),
        timings.vae.as_secs_f64(),
        runtime.device(),
        runtime.version(),
        attention_summary(sd.attention(), sd.fusion())
    );
    Ok(())
}

/// One seed per image: as given, or from one seed S the run S, S+1, ...
fn image_seeds(given: &[u64], images: usize) -> anyhow::Result<Vec<u64>> {
    match given {
        [one] => (0..images as u64)
            .map(|i| {
                one.checked_add(i)
                    .with_context(|| format!("--seed {one}: seed {one} + {i} is above 2^64 - 1"))
            })
            .collect(),
        many if many.len() == images => Ok(many.to_vec()),
        many => bail!(
            "--seed: {} seeds for {images} images; give one seed (S, S+1, ... are used) or one per image",
            many.len()
        ),
    }
}

/// `out` for one image; `NAME-0.png`, `NAME-1.png`, ... beside it for several.
fn out_paths(out: &Path, images: usize) -> Vec<PathBuf> {
    if images == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    (0..images)
        .map(|i| out.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}

/// `flash attention (14 of 14)`, `flash attention (2 of 14, 12 fused)`, `exported
/// attention`: what the UNet ran.
pub(crate) fn attention_summary(attention: Attention, fusion: &Fusion) -> String {
    let total = fusion.fused.len() + fusion.skipped.len();
    match attention {
        Attention::Exported => "exported attention".into(),
        Attention::Fused => format!("fused attention ({} of {total})", fusion.fused.len()),
        Attention::Flash if fusion.flash == fusion.fused.len() => {
            format!("flash attention ({} of {total})", fusion.flash)
        }
        Attention::Flash => format!(
            "flash attention ({} of {total}, {} fused: heads too large for this CPU's kernel)",
            fusion.flash,
            fusion.fused.len() - fusion.flash
        ),
    }
}

/// Fails before any work when the image could not be written afterwards.
fn check_writable(out: &Path) -> anyhow::Result<()> {
    if out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
        != Some("png")
    {
        bail!("--out {}: the output must be a .png file", out.display());
    }
    if out.is_dir() {
        bail!("--out {} is a directory, not a file", out.display());
    }
    let dir = parent_dir(out);
    if !dir.is_dir() {
        bail!(
            "--out {}: folder {} does not exist",
            out.display(),
            dir.display()
        );
    }
    let probe = dir.join(format!(".tomex-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("--out {}: cannot write in {}", out.display(), dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

fn parent_dir(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes to a temporary name and renames, so a crash never leaves half a PNG.
fn write_png_atomically(image: &image::RgbImage, out: &Path) -> anyhow::Result<()> {
    crate::fsx::write_png(out, image).with_context(|| format!("cannot write {}", out.display()))
}
