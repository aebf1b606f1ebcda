//! The command line: clap definitions and the glue from arguments to library calls.
//! Errors come back as located, human messages; nothing here panics on bad input.

mod bench;
mod bench_fid;
mod fid;
mod fid_step;
mod generate;
mod models;
mod plan;
mod report;
mod resolve;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::engine::{Device, TokenOps};
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
    /// How the UNet computes attention: `fused` (ONNX Runtime's MultiHeadAttention,
    /// which never holds the N x N scores) or `exported` (the graph as exported).
    #[arg(
        long,
        global = true,
        value_name = "fused|exported",
        default_value = "fused"
    )]
    attention: Attention,
    /// Where ToMe's token ops run: `host` (Rust, exactly tomesd's) or `graph` (ONNX
    /// graphs run by ONNX Runtime beside the UNet's parts, tensors left on the device).
    /// Default: `host` on the CPU, `graph` on CUDA (no copies across PCIe per block).
    #[arg(long, global = true, value_name = "host|graph")]
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
    /// Time the Fréchet distance and featurising (decode, preprocess, network, statistics); prints one JSON line.
    BenchFid(bench_fid::BenchFidArgs),
    /// FID of two image folders (or .npz statistics), as `python -m pytorch_fid`.
    Fid(fid::FidArgs),
    /// List, verify and add models in models.lock.
    #[command(subcommand)]
    Models(models::ModelsCommand),
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
    let result = match cli.command {
        Command::Generate(args) => generate::run(&global, args),
        Command::Models(cmd) => models::run(&global, cmd),
        Command::BenchUnet(args) => bench::run(&global, args),
        Command::Run(args) => run::run(&global, args),
        Command::Plan(args) => plan::run(&global, args),
        Command::Report(args) => report::run(&global, args),
        Command::Fid(args) => fid::run(&global, args),
        Command::BenchFid(args) => bench_fid::run(&global, args),
    };
    match result {
        Ok(()) => 0,
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
    pub attention: Attention,
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

    /// Where and how the UNet's graphs are made (fused attention, precision, cuts).
    pub fn unet_options(&self) -> SplitOptions {
        SplitOptions {
            attention: self.attention,
            precision: self.precision.unwrap_or_default(),
            ..SplitOptions::default()
        }
    }
}
