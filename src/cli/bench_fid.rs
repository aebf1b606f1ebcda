//! `tomex bench-fid`: where FID's time goes, for BENCHMARKS.md (tools/bench_fid.py runs it).
//!
//! * Fréchet distance at `--dims` on the synthetic statistics of tools/golden_fid.py (the
//!   samples of tests/fid_parity.rs): full rank (n = 2500) and rank-deficient (n = 100),
//!   by the eigenvector route (what tomex did before the Cholesky route) and by
//!   `frechet_distance` (which picks the route), median of `--repeats`.
//! * With `--images DIR --inception MODEL`: featurising split into decoding, preprocessing
//!   and statistics (our code) against the Inception network (ONNX Runtime).
//!
//! Prints one JSON line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use faer::Mat;
use ndarray::Array2;
use serde_json::json;

use super::Global;
use crate::engine::{Device, Runtime};
use crate::metrics::frechet::trace_sqrt_product_eigen;
use crate::metrics::synthetic::synthetic_samples;
use crate::metrics::{frechet_distance, image_files, Inception, Statistics, FID_DIMS};

#[derive(Args)]
pub struct BenchFidArgs {
    /// Feature size of the Fréchet cases and of featurising.
    #[arg(long, default_value_t = 2048)]
    dims: usize,
    /// Timed Fréchet distances per case and route (0: none).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// A folder of images to featurise (with --inception).
    #[arg(long)]
    images: Option<PathBuf>,
    /// The Inception ONNX (tools/export_inception.py).
    #[arg(long)]
    inception: Option<PathBuf>,
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

pub fn run(global: &Global, args: BenchFidArgs) -> anyhow::Result<()> {
    if !FID_DIMS.contains(&args.dims) {
        bail!("--dims {} is not one of 64, 192, 768, 2048", args.dims);
    }
    let mut frechet = Vec::new();
    if args.repeats > 0 {
        for (case, n) in [("full_rank", 2500), ("rank_deficient", 100)] {
            let s1 = synthetic_statistics(11, n, args.dims, 0.0)?;
            let s2 = synthetic_statistics(23, n, args.dims, 0.01)?;
            let (m1, m2) = (to_mat(&s1.sigma), to_mat(&s2.sigma));
            let mut before = Vec::new();
            let mut after = Vec::new();
            let mut values = (0.0, 0.0);
            for _ in 0..args.repeats {
                let t = Instant::now();
                values.0 = trace_sqrt_product_eigen(m1.as_ref(), m2.as_ref())?;
                before.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                values.1 = frechet_distance(&s1, &s2)?;
                after.push(t.elapsed().as_secs_f64());
            }
            eprintln!(
                "Fréchet {case} (n = {n}, d = {}): eigenvector route {:.3} s, frechet_distance {:.3} s",
                args.dims,
                median(&before),
                median(&after)
            );
            frechet.push(json!({
                "case": case, "n": n, "dims": args.dims,
                "eigenvector_route_s": before, "frechet_distance_s": after,
                "eigenvector_route_median_s": median(&before),
                "frechet_distance_median_s": median(&after),
                "fid": values.1,
            }));
        }
    }
    let featurise = match (&args.images, &args.inception) {
        (Some(dir), Some(model)) => {
            let files = image_files(dir)?;
            if files.len() < 2 {
                bail!("{}: at least 2 images needed", dir.display());
            }
            let runtime = Runtime::new(global.ort_lib.as_deref(), args.device)?;
            let mut net = Inception::load(&runtime, model)?;
            // One warm-up batch: session start-up is not featurising.
            let warm = &files[..files.len().min(args.batch_size).min(2)];
            net.features_of_files(warm, args.dims, args.batch_size, &mut |_| {})?;
            let t = Instant::now();
            let (features, times) =
                net.features_of_files_timed(&files, args.dims, args.batch_size, &mut |_| {})?;
            let featurise_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            Statistics::from_features(features.view(), "bench")?;
            let stats_s = t.elapsed().as_secs_f64();
            let ours = times.decode_s + times.preprocess_s + stats_s;
            let total = ours + times.network_s;
            eprintln!(
                "featurising {} images: decode {:.3} s, preprocess {:.3} s, stats {:.3} s (ours {:.1}%), network {:.3} s ({:.1}%)",
                files.len(),
                times.decode_s,
                times.preprocess_s,
                stats_s,
                100.0 * ours / total,
                times.network_s,
                100.0 * times.network_s / total
            );
            Some(json!({
                "images": files.len(), "dims": args.dims, "batch_size": args.batch_size,
                "decode_s": times.decode_s, "preprocess_s": times.preprocess_s,
                "stats_s": stats_s, "network_s": times.network_s,
                "featurise_wall_s": featurise_s,
                "ours_share": ours / total, "network_share": times.network_s / total,
            }))
        }
        (None, None) => None,
        _ => bail!("featurising needs both --images DIR and --inception MODEL"),
    };
    say!(
        "{}",
        json!({
            "threads": rayon::current_num_threads(),
            "frechet": frechet,
            "featurise": featurise,
        })
    );
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn to_mat(a: &Array2<f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[[i, j]])
}

/// tools/golden_fid.py's synthetic samples, as statistics.
fn synthetic_statistics(seed: u64, n: usize, dim: usize, shift: f64) -> anyhow::Result<Statistics> {
    let x = synthetic_samples(seed, n, dim, shift);
    Ok(Statistics::from_features(x.view(), "synthetic")?)
}
