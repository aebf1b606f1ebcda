//! `tomex fid`: pytorch-fid's `python -m pytorch_fid` in Rust (see `metrics`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::resolve::network_file;
use super::Global;
use crate::engine::{Device, Runtime};
use crate::metrics::{
    frechet_distance, image_files, statistics_of_path, Inception, Statistics, FID_DIMS,
};

#[derive(Args)]
pub struct FidArgs {
    /// Two folders of images, or pytorch-fid `.npz` statistics files; with one path and
    /// --save-stats, only its statistics are written.
    #[arg(required = true, num_args = 1..=2, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// The FID Inception exported by tools/export_inception.py (needed for folders): an
    /// .onnx file or its models.lock name (e.g. inception-fid).
    #[arg(long, value_name = "MODEL")]
    inception: Option<PathBuf>,
    /// Feature size: 64, 192, 768 or 2048 (pytorch-fid's --dims).
    #[arg(long, default_value_t = 2048, value_parser = parse_dims)]
    dims: usize,
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// Write the first path's statistics to this .npz (pytorch-fid's format), so that a
    /// reference set is featurised once.
    #[arg(long, value_name = "FILE.npz")]
    save_stats: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
}

fn parse_dims(s: &str) -> Result<usize, String> {
    let dims: usize = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if FID_DIMS.contains(&dims) {
        Ok(dims)
    } else {
        Err(format!("{dims} is not one of 64, 192, 768, 2048"))
    }
}

pub fn run(global: &Global, args: FidArgs) -> anyhow::Result<()> {
    if args.paths.len() == 1 && args.save_stats.is_none() {
        bail!("give two paths to compare, or one path and --save-stats FILE.npz");
    }
    for p in &args.paths {
        if !p.exists() {
            bail!("invalid path: {}", p.display());
        }
    }
    let needs_network = args
        .paths
        .iter()
        .any(|p| p.extension().is_none_or(|e| e != "npz"));
    let mut inception = match (&args.inception, needs_network) {
        (Some(model), true) => {
            let model = network_file(global, model)?;
            let runtime = Runtime::new(global.ort_lib.as_deref(), args.device)?;
            Some(Inception::load(&runtime, &model)?)
        }
        (None, true) => bail!("folders of images need the network: --inception MODEL"),
        (_, false) => None,
    };
    let mut stats: Vec<Statistics> = Vec::new();
    for path in &args.paths {
        stats.push(statistics(path, inception.as_mut(), &args)?);
    }
    if let Some(out) = &args.save_stats {
        stats[0]
            .save_npz(out)
            .with_context(|| format!("saving the statistics of {}", args.paths[0].display()))?;
        eprintln!(
            "saved the statistics of {} to {}",
            args.paths[0].display(),
            out.display()
        );
    }
    if stats.len() == 2 {
        let fid = frechet_distance(&stats[0], &stats[1])?;
        // As `python -m pytorch_fid` prints it: print('FID: ', fid_value).
        say!("FID:  {fid}");
    }
    Ok(())
}

fn statistics(
    path: &Path,
    inception: Option<&mut Inception>,
    args: &FidArgs,
) -> anyhow::Result<Statistics> {
    let bar = if path.is_dir() {
        let n = image_files(path)?.len() as u64;
        let bar = ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} images [{elapsed}<{eta}]")
                .expect("a valid template"),
        );
        bar.set_message(path.display().to_string());
        bar
    } else {
        ProgressBar::hidden()
    };
    let stats = statistics_of_path(path, inception, args.dims, args.batch_size, &mut |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    Ok(stats)
}
