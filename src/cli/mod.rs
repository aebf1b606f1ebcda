//! The command line: clap definitions and the glue from arguments to library calls.
//! Errors come back as located, human messages; nothing here panics on bad input.

/// `println!` that ignores a closed stdout (`tomex run … | head -1`): the command goes
/// on to its FID and report and ends quietly, where `println!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod bench;
mod bench_attention;
mod bench_fid;
mod fid;
mod fid_step;
mod generate;
mod models;
mod plan;
mod report;
mod resolve;
mod run;
mod store;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::engine::{Device, TokenOps};
use crate::kernel::flash_attention;
use crate::onnx::{Attention, Precision, SplitOptions};

#[derive(Parser)]
#[command(
    name = "tomex",
    version,
    about = "Token Merging experiments on Stable Diffusion, through ONNX Runtime"
)]
struct Cli {
    /// ONNX Runtime library to load (else ORT_DYLIB_PATH, .ort/lib, then Python's onnxruntime).
    #[arg(long, global = true, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// models.lock to read model names from (else ./models.lock or the project's).
    #[arg(long, global = true, value_name = "PATH")]
    lock: Option<PathBuf>,
    /// How the UNet computes attention: `flash` (tomex's CPU kernel, float32 on
    /// AVX-512; on AVX2 for heads of at most 8, ONNX Runtime's for larger ones), `fused`
    /// (ONNX Runtime's MultiHeadAttention) or `exported` (the graph as exported, with the
    /// N x N scores). Default: `flash` where it can run (CPU, fp32, AVX-512F or AVX2 and
    /// FMA), else `fused`.
    #[arg(long, global = true, value_name = "flash|fused|exported")]
    attention: Option<Attention>,
    /// Where ToMe's token ops run: `host` (Rust, exactly tomesd's), `graph` (ONNX
    /// graphs run by ONNX Runtime beside the UNet's parts, tensors left on the device)
    /// or `one-graph` (those graphs and the UNet's parts composed into one graph: one
    /// ONNX Runtime run per UNet evaluation). Default: `host` on the CPU, `graph` on
    /// CUDA (no copies across PCIe per block).
    #[arg(long, global = true, value_name = "host|graph|one-graph")]
    token_ops: Option<TokenOps>,
    /// The UNet's precision: `fp32` (as exported) or `fp16` (activations in float16,
    /// for CUDA; on the CPU ONNX Runtime runs most float16 nodes through float32).
    /// `tomex run` takes it from the spec's `[generation] precision` instead.
    #[arg(long, global = true, value_name = "fp32|fp16")]
    precision: Option<Precision>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate one image for a prompt and a seed.
    Generate(generate::GenerateArgs),
    /// Generate, time and store every image an experiment spec needs.
    Run(run::RunArgs),
    /// Count a spec's jobs, what is stored, and estimate the time left.
    Plan(plan::PlanArgs),
    /// Tables, figure, image grids and summaries of a spec from the store alone.
    Report(report::ReportArgs),
    /// Time single UNet evaluations (uncut, cut, with ToMe); prints one JSON line.
    BenchUnet(bench::BenchUnetArgs),
    /// Time one attention, ONNX Runtime's against tomex's flash kernel; prints one JSON line per kernel.
    BenchAttention(bench_attention::BenchAttentionArgs),
    /// Time the Fréchet distance and featurising (decode, preprocess, network, statistics); prints one JSON line.
    BenchFid(bench_fid::BenchFidArgs),
    /// FID of two image folders (or .npz statistics), as `python -m pytorch_fid`.
    Fid(fid::FidArgs),
    /// List, verify and add models in models.lock.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Check (and repair) a results store.
    #[command(subcommand)]
    Store(store::StoreCommand),
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let global = Global {
        ort_lib: cli.ort_lib,
        lock: cli.lock,
        attention: cli.attention,
        token_ops: cli.token_ops,
        precision: cli.precision,
    };
    // Each command's exit code: 0 on success unless it says otherwise.
    let ok = |r: anyhow::Result<()>| r.map(|()| 0);
    let result = match cli.command {
        Command::Generate(args) => ok(generate::run(&global, args)),
        Command::Models(cmd) => ok(models::run(&global, cmd)),
        Command::BenchUnet(args) => ok(bench::run(&global, args)),
        Command::Run(args) => ok(run::run(&global, args)),
        Command::Plan(args) => ok(plan::run(&global, args)),
        Command::Report(args) => ok(report::run(&global, args)),
        Command::Fid(args) => ok(fid::run(&global, args)),
        Command::BenchFid(args) => ok(bench_fid::run(&global, args)),
        Command::BenchAttention(args) => ok(bench_attention::run(&global, args)),
        Command::Store(cmd) => store::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// A word on the console where float16 cannot be fast.
pub(crate) fn note_precision(device: Device, precision: Precision) {
    if precision == Precision::Fp16 && device == Device::Cpu {
        eprintln!(
            "note: float16 on the CPU: ONNX Runtime computes most float16 nodes in float32, \
             so it is no faster than fp32 (it is meant for --device cuda)"
        );
    }
}

/// Options every command shares.
pub(crate) struct Global {
    pub ort_lib: Option<PathBuf>,
    pub lock: Option<PathBuf>,
    /// `--attention`, when given.
    pub attention: Option<Attention>,
    /// `--token-ops`, when given.
    pub token_ops: Option<TokenOps>,
    /// `--precision`, when given.
    pub precision: Option<Precision>,
}

impl Global {
    /// Where ToMe's token ops run on `device`: as asked, else where the tensors are.
    pub fn token_ops(&self, device: Device) -> TokenOps {
        self.token_ops.unwrap_or(match device {
            Device::Cpu => TokenOps::Host,
            Device::Cuda(_) => TokenOps::Graph,
        })
    }

    /// Where and how the UNet's graphs are made for `device` in `precision`.
    pub fn unet_options(
        &self,
        device: Device,
        precision: Precision,
    ) -> anyhow::Result<SplitOptions> {
        let attention = resolve_attention(
            self.attention,
            device,
            precision,
            flash_attention::available(),
        )
        .map_err(anyhow::Error::msg)?;
        // The AVX2 body takes only the head sizes it wins at (Body::max_head_size).
        let flash_max_head_size = flash_attention::Body::fastest().and_then(|b| b.max_head_size());
        Ok(SplitOptions {
            attention,
            flash_max_head_size,
            precision,
            ..SplitOptions::default()
        })
    }
}

/// `--attention` as asked, else the fastest that runs here: tomex's kernel on a CPU
/// with AVX-512F, or AVX2 and FMA (there for small heads only), in float32; ONNX
/// Runtime's `MultiHeadAttention` otherwise.
pub(crate) fn resolve_attention(
    asked: Option<Attention>,
    device: Device,
    precision: Precision,
    kernel_available: bool,
) -> Result<Attention, String> {
    let flash_fits = device == Device::Cpu && precision == Precision::Fp32;
    match asked {
        None if flash_fits && kernel_available => Ok(Attention::Flash),
        None => Ok(Attention::Fused),
        Some(Attention::Flash) if device != Device::Cpu => Err(format!(
            "--attention flash is tomex's CPU kernel and cannot run on --device {device}; use --attention fused"
        )),
        Some(Attention::Flash) if precision != Precision::Fp32 => Err(format!(
            "--attention flash computes in float32, not {precision}; use --attention fused"
        )),
        Some(Attention::Flash) if !kernel_available => Err(
            "--attention flash needs a CPU with AVX-512F, or AVX2 and FMA, which this one lacks; use --attention fused"
                .into(),
        ),
        Some(attention) => Ok(attention),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_defaults_to_the_flash_kernel_only_where_it_runs() {
        let (cpu, gpu) = (Device::Cpu, Device::Cuda(0));
        let (fp32, fp16) = (Precision::Fp32, Precision::Fp16);
        assert_eq!(
            resolve_attention(None, cpu, fp32, true),
            Ok(Attention::Flash)
        );
        assert_eq!(
            resolve_attention(None, cpu, fp32, false),
            Ok(Attention::Fused)
        );
        assert_eq!(
            resolve_attention(None, cpu, fp16, true),
            Ok(Attention::Fused)
        );
        assert_eq!(
            resolve_attention(None, gpu, fp32, true),
            Ok(Attention::Fused)
        );
        for asked in [Attention::Fused, Attention::Exported] {
            assert_eq!(resolve_attention(Some(asked), cpu, fp32, true), Ok(asked));
            assert_eq!(resolve_attention(Some(asked), gpu, fp16, false), Ok(asked));
        }
        assert_eq!(
            resolve_attention(Some(Attention::Flash), cpu, fp32, true),
            Ok(Attention::Flash)
        );
    }

    #[test]
    fn asking_for_the_flash_kernel_where_it_cannot_run_says_why() {
        let flash = Some(Attention::Flash);
        let cuda = resolve_attention(flash, Device::Cuda(1), Precision::Fp32, true).unwrap_err();
        assert!(cuda.contains("--device cuda:1"), "{cuda}");
        let half = resolve_attention(flash, Device::Cpu, Precision::Fp16, true).unwrap_err();
        assert!(half.contains("float32, not fp16"), "{half}");
        let old_cpu = resolve_attention(flash, Device::Cpu, Precision::Fp32, false).unwrap_err();
        assert!(old_cpu.contains("AVX-512F"), "{old_cpu}");
    }
}
