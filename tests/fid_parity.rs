//! FID parity with pytorch-fid 0.3.0 (golden/fid/, written by tools/golden_fid.py).
//!
//! The network is tests/fixtures/inception_tiny.onnx: NOT Inception but a slim random
//! network with the same input and four outputs (tools/export_inception.py --tiny); tomex
//! treats the network as a black box, so this checks tomex's preprocessing, batching,
//! statistics and Fréchet distance against pytorch-fid's code run over the same network.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ndarray::{Array2, Array3};
use ndarray_npy::read_npy;
use tomex::metrics::preprocess::{load_rgb, preprocess};
use tomex::metrics::synthetic::synthetic_samples;
use tomex::metrics::{
    fid_of_paths, frechet_distance, image_files, statistics_of_path, FidError, Inception,
    Statistics,
};

fn fid_golden(rel: &str) -> PathBuf {
    common::golden("fid").join(rel)
}

fn golden_json() -> serde_json::Value {
    common::read_json(&fid_golden("fid.json"))
}

fn tiny_inception() -> PathBuf {
    common::repo().join("tests/fixtures/inception_tiny.onnx")
}

fn rel_err(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs()
}

#[test]
fn preprocessing_matches_torch_interpolate() {
    for (name, png) in [("a00", "images/a/00.png"), ("big", "images/big.png")] {
        let want: Array3<f32> = read_npy(fid_golden(&format!("preprocessed_{name}.npy"))).unwrap();
        let got = preprocess(&load_rgb(&fid_golden(png)).unwrap());
        assert_eq!(got.dim(), want.dim());
        let max = got
            .iter()
            .zip(want.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{name}: max |tomex - torch| = {max:e}");
        assert!(max <= 2e-6, "{name}: {max}");
    }
}

#[test]
fn features_match_pytorch_fid() {
    let runtime = common::runtime();
    let mut net = Inception::load(&runtime, &tiny_inception()).unwrap();
    for set in ["a", "b", "c"] {
        let files = image_files(&fid_golden(&format!("images/{set}"))).unwrap();
        for dims in [64, 192, 768, 2048] {
            let want: Array2<f32> =
                read_npy(fid_golden(&format!("features_{set}_{dims}.npy"))).unwrap();
            let got = net.features_of_files(&files, dims, 5, &mut |_| {}).unwrap();
            assert_eq!(got.dim(), want.dim());
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let max = got
                .iter()
                .zip(want.iter())
                .map(|(a, &b)| (a - f64::from(b)).abs())
                .fold(0f64, f64::max);
            println!("set {set}, dims {dims}: max |tomex - pytorch-fid| = {max:e} (max |feature| {scale:.3})");
            assert!(max <= 1e-4, "set {set} dims {dims}: {max}");
        }
    }
}

#[test]
fn fid_end_to_end_matches_pytorch_fid() {
    let golden = golden_json();
    let runtime = common::runtime();
    let mut net = Inception::load(&runtime, &tiny_inception()).unwrap();
    for dims in [64, 192, 768, 2048] {
        let want = golden["dims"][dims.to_string()]["fid"].as_f64().unwrap();
        let got = fid_of_paths(
            &fid_golden("images/a"),
            &fid_golden("images/b"),
            Some(&mut net),
            dims,
            50,
        )
        .unwrap();
        println!(
            "dims {dims}: FID tomex {got}, pytorch-fid {want}, rel {:e}",
            rel_err(got, want)
        );
        assert!(rel_err(got, want) < 1e-3, "dims {dims}: {got} vs {want}");
    }
}

#[test]
fn pytorch_fid_npz_statistics_load_and_agree() {
    let golden = golden_json();
    for dims in [64, 192] {
        let a = Statistics::load_npz(&fid_golden(&format!("stats_a_{dims}.npz"))).unwrap();
        let b = Statistics::load_npz(&fid_golden(&format!("stats_b_{dims}.npz"))).unwrap();
        assert_eq!(a.sigma.dim(), (dims, dims));
        // Our mean and np.cov over pytorch-fid's own features.
        let feats: Array2<f32> = read_npy(fid_golden(&format!("features_a_{dims}.npy"))).unwrap();
        let ours = Statistics::from_features(feats.mapv(f64::from).view(), "a").unwrap();
        let close = |x: &f64, y: &f64| (x - y).abs() <= 1e-12 * (1.0 + y.abs());
        assert!(ours.mu.iter().zip(a.mu.iter()).all(|(x, y)| close(x, y)));
        assert!(ours
            .sigma
            .iter()
            .zip(a.sigma.iter())
            .all(|(x, y)| close(x, y)));
        // The Fréchet distance of pytorch-fid's own statistics.
        let want = golden["dims"][dims.to_string()]["fid"].as_f64().unwrap();
        let got = frechet_distance(&a, &b).unwrap();
        println!("dims {dims}: FID of pytorch-fid's statistics {got} vs {want}");
        assert!(rel_err(got, want) < 1e-6, "dims {dims}: {got} vs {want}");
        // Statistics files and folders mix, as in pytorch-fid.
        let runtime = common::runtime();
        let mut net = Inception::load(&runtime, &tiny_inception()).unwrap();
        let mixed = fid_of_paths(
            &fid_golden(&format!("stats_a_{dims}.npz")),
            &fid_golden("images/b"),
            Some(&mut net),
            dims,
            7,
        )
        .unwrap();
        assert!(rel_err(mixed, want) < 1e-3, "{mixed} vs {want}");
    }
}

/// (tomex, scipy, numpy eigh, seconds of tomex's Fréchet distance) of a synthetic case.
fn synthetic_case(name: &str) -> (f64, f64, f64, f64) {
    let golden = golden_json();
    let case = golden["synthetic"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone();
    let n = case["n"].as_u64().unwrap() as usize;
    let dims = case["dims"].as_u64().unwrap() as usize;
    let seeds: Vec<u64> = case["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    let shifts: Vec<f64> = case["shifts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect();
    let x1 = synthetic_samples(seeds[0], n, dims, shifts[0]);
    let x2 = synthetic_samples(seeds[1], n, dims, shifts[1]);
    let first: Vec<f64> = case["x1_first"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // serde_json's default float parsing may be 1 ulp off; the samples are the same bits.
    for (got, want) in x1.row(0).iter().zip(&first) {
        assert!(
            rel_err(*got, *want) < 1e-15,
            "the samples differ from Python's"
        );
    }
    let s1 = Statistics::from_features(x1.view(), "x1").unwrap();
    let s2 = Statistics::from_features(x2.view(), "x2").unwrap();
    let trace = s1.sigma.diag().sum();
    assert!(rel_err(trace, case["trace_sigma1"].as_f64().unwrap()) < 1e-12);
    let start = Instant::now();
    let got = frechet_distance(&s1, &s2).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let scipy = case["scipy"].as_f64().unwrap();
    let eigh = case["eigh"].as_f64().unwrap();
    println!(
        "{name} (n = {n}, d = {dims}): tomex {got}, scipy {scipy} (rel {:e}), numpy eigh {eigh} (rel {:e}); Fréchet distance {seconds:.3} s",
        rel_err(got, scipy),
        rel_err(got, eigh)
    );
    (got, scipy, eigh, seconds)
}

#[test]
fn frechet_full_rank_2048_matches_scipy() {
    let (got, scipy, eigh, _) = synthetic_case("full_rank");
    assert!(rel_err(got, scipy) < 1e-6, "{got} vs scipy {scipy}");
    assert!(rel_err(got, eigh) < 1e-9, "{got} vs eigh {eigh}");
}

/// Rank 99 (100 samples, 2048 dims): scipy's `sqrtm` of the singular product `Σ₁Σ₂` is
/// ill-conditioned (the square roots of its ~1950 round-off eigenvalues near 0 are where its
/// error is), so its value is only reproducible to about 1e-7 relative (numpy's `eigh` with
/// eigenvalues merely clipped at 0 is off by as much, for the same reason); tomex cuts those
/// eigenvalues at the numerical rank, which on the small-set goldens gives the 40-digit value
/// to ~1e-12 (see src/metrics/frechet.rs).
#[test]
fn frechet_rank_deficient_matches_scipy() {
    let (got, scipy, eigh, _) = synthetic_case("rank_deficient");
    assert!(rel_err(got, scipy) < 1e-6, "{got} vs scipy {scipy}");
    assert!(rel_err(got, eigh) < 1e-6, "{got} vs eigh {eigh}");
}

#[test]
fn too_small_sets_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    std::fs::create_dir(&one).unwrap();
    std::fs::copy(fid_golden("images/a/00.png"), one.join("00.png")).unwrap();
    let err = statistics_of_path(&one, None, 2048, 50, &mut |_| {}).unwrap_err();
    assert!(matches!(err, FidError::TooFewImages { n: 1, .. }), "{err}");
    assert!(err.to_string().contains("FID needs at least 2"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = statistics_of_path(&empty, None, 2048, 50, &mut |_| {}).unwrap_err();
    assert!(matches!(err, FidError::NoImages { .. }), "{err}");
    let f = Array2::<f64>::zeros((1, 8));
    assert!(matches!(
        Statistics::from_features(f.view(), "x"),
        Err(FidError::TooFewImages { n: 1, .. })
    ));
    // Through the command line.
    let out = Command::new(env!("CARGO_BIN_EXE_tomex"))
        .arg("fid")
        .arg(&one)
        .arg(fid_golden("images/b"))
        .arg("--inception")
        .arg(tiny_inception())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has 1 image(s); FID needs at least 2"),
        "{stderr}"
    );
}

#[test]
fn cli_prints_fid_and_reuses_saved_statistics() {
    let golden = golden_json();
    let want = golden["dims"]["192"]["fid"].as_f64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("a.npz");
    let fid = |a: &Path, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tomex"))
            .arg("fid")
            .arg(a)
            .arg(fid_golden("images/b"))
            .args(["--dims", "192", "--batch-size", "5", "--inception"])
            .arg(tiny_inception())
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let value = stdout
            .trim()
            .strip_prefix("FID:  ")
            .unwrap_or_else(|| panic!("not pytorch-fid's output line: {stdout:?}"));
        value.parse::<f64>().unwrap()
    };
    let first = fid(
        &fid_golden("images/a"),
        &["--save-stats", stats.to_str().unwrap()],
    );
    assert!(rel_err(first, want) < 1e-3, "{first} vs {want}");
    let again = fid(&stats, &[]);
    assert!(rel_err(again, first) < 1e-12, "{again} vs {first}");
}
