//! Helpers shared by the integration tests: the repository paths, the tiny model,
//! and one ONNX Runtime per test process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tomex::diffusion::pipeline::Request;
use tomex::engine::{Device, Runtime};
use tomex::tome::TomeConfig;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn golden(rel: &str) -> PathBuf {
    repo().join("golden").join(rel)
}

pub fn tiny_model() -> PathBuf {
    repo().join("models/tiny")
}

/// The CPU runtime; the library comes from `tools/fetch-onnxruntime.sh` (`.ort/lib`).
pub fn runtime() -> Runtime {
    Runtime::new(None, Device::Cpu).expect("ONNX Runtime library (run tools/fetch-onnxruntime.sh)")
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Copies a directory tree (test fixtures built from the tiny model).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Deterministic values in [-1, 1) (xorshift; the numbers only need to vary).
pub fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Max absolute difference over the max absolute value of `a`.
pub fn max_relative_difference<D: ndarray::Dimension>(
    a: &ndarray::Array<f32, D>,
    b: &ndarray::Array<f32, D>,
) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(b.iter())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// The tomex binary, run from the repository root, without SLURM's array index or an
/// ONNX Runtime override from the environment.
pub fn tomex_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tomex"));
    cmd.current_dir(repo())
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("ORT_DYLIB_PATH");
    cmd
}

/// The stdout of a run that must have succeeded (else the test fails showing both
/// streams).
pub fn succeeded(o: std::process::Output) -> String {
    assert!(
        o.status.success(),
        "tomex failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Writes `prompts.csv` (a `prompt` header, then `prompts` as CSV lines) and
/// `<file>.toml`, a spec on the tiny model: `header` (the top-level keys, `name`
/// first), the results store, `size`×`size` images of `steps` steps, every prompt
/// drawn once, then `rest` (sweep, configurations, metrics, report).
pub fn write_tiny_spec(
    dir: &Path,
    file: &str,
    header: &str,
    prompts: &[&str],
    (size, steps): (usize, usize),
    rest: &str,
) -> PathBuf {
    let csv: String = std::iter::once("prompt")
        .chain(prompts.iter().copied())
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(dir.join("prompts.csv"), csv).unwrap();
    let spec = dir.join(format!("{file}.toml"));
    let text = format!(
        "{header}
store = \"results\"
[model]
dir = \"{model}\"
[generation]
width = {size}
height = {size}
steps = {steps}
[prompts]
file = \"prompts.csv\"
sample = {count}
replace = false
{rest}",
        model = tiny_model().display(),
        count = prompts.len(),
    );
    std::fs::write(&spec, text).unwrap();
    spec
}

/// The generation a golden index case describes (`prompt`, `seed`, `steps`, `guidance`,
/// `width`, `height`, `scheduler`; no negative prompt), with `tome` or without.
/// A golden case's `tome` object (tomesd's `apply_patch` arguments, as the golden
/// scripts write them) as a configuration.
pub fn golden_tome(tome: &serde_json::Value) -> TomeConfig {
    let merge: Vec<&str> = tome["merge"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    TomeConfig {
        ratio: tome["ratio"].as_f64().unwrap(),
        targets: tomex::tome::Targets {
            self_attn: merge.contains(&"self_attn"),
            cross_attn: merge.contains(&"cross_attn"),
            mlp: merge.contains(&"mlp"),
        },
        sx: tome["sx"].as_u64().unwrap() as usize,
        sy: tome["sy"].as_u64().unwrap() as usize,
        random: tome["use_rand"].as_bool().unwrap(),
        seed: 0,
        max_downsample: tome["max_downsample"].as_u64().unwrap() as usize,
    }
}

pub fn golden_request(case: &serde_json::Value, tome: Option<TomeConfig>) -> Request {
    Request {
        prompt: case["prompt"].as_str().unwrap().to_string(),
        negative_prompt: case["negative_prompt"].as_str().unwrap_or("").to_string(),
        seed: case["seed"].as_u64().unwrap(),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance: case["guidance"].as_f64().unwrap() as f32,
        width: case["width"].as_u64().unwrap() as usize,
        height: case["height"].as_u64().unwrap() as usize,
        scheduler: case["scheduler"].as_str().unwrap().parse().unwrap(),
        tome,
    }
}

/// The largest per-channel difference between `ours` and the PNG at `reference`.
pub fn max_pixel_diff(ours: &image::RgbImage, reference: &Path) -> u8 {
    let theirs = image::open(reference).unwrap().to_rgb8();
    assert_eq!(ours.dimensions(), theirs.dimensions());
    ours.as_raw()
        .iter()
        .zip(theirs.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap()
}

/// A little-endian float32 file (the golden scripts' `.f32`) as an array of `shape`.
pub fn read_f32(path: &Path, shape: &[usize]) -> ndarray::ArrayD<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), values).unwrap()
}

/// Relative L2 distance of `a` from the reference `b`.
pub fn rel_l2(a: &ndarray::ArrayD<f32>, b: &ndarray::ArrayD<f32>) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Changes the PNG at `path` at its size, so that it still decodes: the first pixel
/// inverted, re-encoded at the best compression and padded after its end with zeros to
/// the old length (decoders stop at `IEND`). Damage that only a digest check finds.
pub fn damage_keeping_size(path: &Path) {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let old = std::fs::read(path).unwrap();
    let mut img = image::load_from_memory(&old).unwrap().to_rgb8();
    let p = img.get_pixel_mut(0, 0);
    p.0 = p.0.map(|c| 255 - c);
    let mut new = Vec::new();
    let encoder =
        PngEncoder::new_with_quality(&mut new, CompressionType::Best, FilterType::Adaptive);
    img.write_with_encoder(encoder).unwrap();
    assert!(
        new.len() <= old.len(),
        "{}: re-encoded PNG is larger",
        path.display()
    );
    new.resize(old.len(), 0);
    image::load_from_memory(&new).expect("the damaged PNG still decodes");
    std::fs::write(path, new).unwrap();
}
