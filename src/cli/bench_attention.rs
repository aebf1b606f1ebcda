//! `tomex bench-attention`: one attention on its own, ONNX Runtime's
//! `MultiHeadAttention` against tomex's flash kernel (the body this process picks,
//! `TOMEX_FLASH_BODY` to name one), in sessions set up as the UNet's are. Prints one
//! JSON line per kernel: best and median wall time, GFLOP/s (4·B·H·S·L·D flops), and
//! the largest difference from ONNX Runtime's output.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::Global;
use crate::engine::{Device, LoneAttention, Runtime};
use crate::kernel::flash_attention::{Body, Dims};

#[derive(Args)]
pub struct BenchAttentionArgs {
    /// Queries (and keys, unless --keys): 4096 is SD 1.5's full-resolution level at a
    /// 64×64 latent, 9216 at 96×96.
    #[arg(long, default_value_t = 4096)]
    tokens: usize,
    /// Keys and values (77 for cross-attention); default: --tokens.
    #[arg(long)]
    keys: Option<usize>,
    #[arg(long, default_value_t = 8)]
    heads: usize,
    #[arg(long, default_value_t = 40)]
    head_size: usize,
    /// Batch (2: classifier-free guidance's two halves of one image).
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Intra-op threads (default: ONNX Runtime's choice, one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed runs of each kernel after one warm-up.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

pub fn run(global: &Global, args: BenchAttentionArgs) -> anyhow::Result<()> {
    let mut runtime = Runtime::new(global.ort_lib.as_deref(), Device::Cpu)?;
    if let Some(n) = args.threads {
        runtime = runtime.with_threads(n);
    }
    let dims = Dims {
        batch: args.batch,
        heads: args.heads,
        head_size: args.head_size,
        queries: args.tokens,
        keys: args.keys.unwrap_or(args.tokens),
    };
    let flops = 4.0 * (dims.batch * dims.heads * dims.queries * dims.keys * dims.head_size) as f64;
    let mut reference = None;
    for flash in [false, true] {
        let kernel = if flash {
            match Body::fastest() {
                Some(body) => format!("tomex flash ({body:?})"),
                None => {
                    say!(
                        "{}",
                        serde_json::json!({"kernel": "tomex flash", "skipped": "this CPU runs no SIMD body of it"})
                    );
                    continue;
                }
            }
        } else {
            "onnxruntime MultiHeadAttention".to_string()
        };
        let mut lone = LoneAttention::new(&runtime, dims, flash)?;
        let (out, _) = lone.run().context("warm-up")?;
        let mut times = Vec::with_capacity(args.repeats);
        for _ in 0..args.repeats {
            times.push(lone.run()?.1);
        }
        let max_diff = match &reference {
            None => 0.0,
            Some(r) => (&out - r).iter().fold(0f32, |m: f32, d| m.max(d.abs())),
        };
        if reference.is_none() {
            reference = Some(out);
        }
        times.sort();
        let best = times.first().map_or(0.0, Duration::as_secs_f64);
        let median = times
            .get(times.len() / 2)
            .map_or(0.0, Duration::as_secs_f64);
        say!(
            "{}",
            serde_json::json!({
                "kernel": kernel,
                "batch": dims.batch, "queries": dims.queries, "keys": dims.keys,
                "heads": dims.heads, "head_size": dims.head_size,
                "threads": args.threads,
                "best_s": best, "median_s": median,
                "gflops": if best > 0.0 { flops / best / 1e9 } else { 0.0 },
                "max_abs_diff_from_onnxruntime": max_diff,
                "onnxruntime": runtime.version(),
            })
        );
    }
    Ok(())
}
