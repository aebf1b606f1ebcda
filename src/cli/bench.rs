//! `tomex bench-unet`: times single UNet evaluations (uncut, cut at r = 0, or with
//! ToMe) for tools/bench_unet.py, which compares them with diffusers + tomesd.
//! Prints one JSON line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use ndarray::{Array2, Array3, Array4};

use super::generate::TomeArgs;
use super::Global;
use crate::diffusion::rng::randn;
use crate::engine::{AddedConditions, Conditioning, Device, Runtime, TomeUnet, Unet};
use crate::tome::PartitionRng;

#[derive(Args)]
pub struct BenchUnetArgs {
    /// The UNet graph (`unet/model.onnx`).
    #[arg(long)]
    unet: PathBuf,
    /// Latent height and width, e.g. `64,64`.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 64])]
    latent: Vec<usize>,
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Width of the text states (768 for SD 1.x, 2048 for SDXL).
    #[arg(long, default_value_t = 768)]
    hidden_dim: usize,
    /// SDXL: width of the pooled `text_embeds` (1280 for SDXL); with it the UNet also
    /// gets the `time_ids` of an image of 8 x the latent.
    #[arg(long)]
    text_embeds_dim: Option<usize>,
    /// Timed evaluations after one warm-up.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Threads for ONNX Runtime and for the token ops (default: ONNX Runtime's choice).
    #[arg(long)]
    threads: Option<usize>,
    /// Run the whole graph, not the split one.
    #[arg(long)]
    uncut: bool,
    #[arg(long, default_value = "cpu")]
    device: Device,
    #[command(flatten)]
    tome: TomeArgs,
}

pub fn run(global: &Global, args: BenchUnetArgs) -> anyhow::Result<()> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("rayon thread pool")?;
    }
    let mut runtime = Runtime::new(global.ort_lib.as_deref(), args.device)?;
    if let Some(n) = args.threads {
        runtime = runtime.with_threads(n);
    }
    let [h, w] = args.latent[..] else {
        anyhow::bail!("--latent takes two sizes, H,W (got {:?})", args.latent);
    };
    let sample: Array4<f32> = randn(0, &[args.batch, 4, h, w]).into_dimensionality()?;
    let hidden: Array3<f32> = randn(1, &[args.batch, 77, args.hidden_dim]).into_dimensionality()?;
    let added = match args.text_embeds_dim {
        Some(d) => {
            let (ih, iw) = ((8 * h) as f32, (8 * w) as f32);
            Some(AddedConditions {
                text_embeds: randn(2, &[args.batch, d]).into_dimensionality()?,
                time_ids: Array2::from_shape_fn((args.batch, 6), |(_, k)| {
                    [ih, iw, 0.0, 0.0, ih, iw][k]
                }),
            })
        }
        None => None,
    };
    let cond = Conditioning::new(&hidden, added.as_ref());
    let timestep = 500.0;

    let options = global.unet_options(args.device, global.precision.unwrap_or_default())?;
    let mut times = Vec::with_capacity(args.repeats);
    let mut token_ops = Vec::with_capacity(args.repeats);
    let mut fused = None;
    let parts = if args.uncut {
        let (mut unet, fusion) = Unet::prepare(&runtime, &args.unet, &options)?;
        fused = Some(fusion.fused.len());
        for i in 0..=args.repeats {
            let start = Instant::now();
            unet.predict(&sample, timestep, cond)?;
            if i > 0 {
                times.push(start.elapsed());
            }
        }
        1
    } else {
        // With ratio 0 this measures the cuts alone: the configuration's components at
        // the levels it may merge, all passed through unmerged.
        let cfg = args.tome.config_or_zero();
        cfg.validate()?;
        let mut unet = TomeUnet::load(&runtime, &args.unet, options.clone())?;
        unet.set_token_ops(global.token_ops(args.device))?;
        let cut = unet.cut_ignoring_ratio((h, w), &cfg)?;
        for i in 0..=args.repeats {
            let mut rng = PartitionRng::new(cfg.seed);
            let start = Instant::now();
            unet.predict_with_cut(&sample, timestep, cond, &cfg, &mut rng, cut.clone())?;
            let elapsed = start.elapsed();
            let ops = unet.take_token_ops_time();
            if i > 0 {
                times.push(elapsed);
                token_ops.push(ops);
            }
        }
        unet.parts(&cut).unwrap_or(0)
    };
    let secs = |d: &Duration| d.as_secs_f64();
    let json = serde_json::json!({
        "median_s": median(&times),
        "times_s": times.iter().map(secs).collect::<Vec<_>>(),
        "tome_ops_s": if token_ops.is_empty() { 0.0 } else { median(&token_ops) },
        "peak_rss_mb": crate::host::peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64),
        "parts": parts,
        "attention": options.attention.name(),
        "precision": options.precision.name(),
        "fused_attentions": fused,
        "onnxruntime": runtime.version(),
    });
    say!("{json}");
    Ok(())
}

fn median(values: &[Duration]) -> f64 {
    let mut v: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
