//! `tomex::diffusion::rng` against torch's own CPU `randn` output.
//!
//! The goldens in `golden/randn/` come from `tools/golden_randn.py` (torch
//! 2.15.0, ATEN_CPU_CAPABILITY avx2/avx512 for `"path": "avx2"` cases and
//! `default` for `"path": "scalar"` cases). Every comparison is on the f32
//! bit patterns, not on values.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tomex::diffusion::rng::{NormalPath, TorchGenerator};

#[derive(Deserialize)]
struct Index {
    torch: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Call {
    shape: Vec<usize>,
    mean: f64,
    std: f64,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    path: String,
    seed: String,
    calls: Vec<Call>,
    numel: usize,
    stored: String,
    file: String,
    sha256: String,
    #[serde(default)]
    edge: usize,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/randn")
}

fn load_index() -> Index {
    let text =
        std::fs::read_to_string(golden_dir().join("index.json")).expect("golden/randn/index.json");
    serde_json::from_str(&text).expect("parse golden/randn/index.json")
}

fn read_f32_bits(path: &Path) -> Vec<u32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        bytes.len() % 4,
        0,
        "{}: not a whole number of f32",
        path.display()
    );
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Replays a case's calls on one generator, concatenating the outputs.
fn compute(case: &Case, path: NormalPath) -> Vec<f32> {
    let seed: u64 = case.seed.parse().expect("seed is a u64");
    let mut g = TorchGenerator::new(seed);
    let mut all = Vec::with_capacity(case.numel);
    for call in &case.calls {
        if call.mean == 0.0 && call.std == 1.0 {
            let a = g.randn_with_path(&call.shape, path);
            assert_eq!(a.shape(), call.shape.as_slice());
            all.extend(a.iter().copied());
        } else {
            let mut buf = vec![0f32; call.shape.iter().product()];
            g.normal_fill_f32(&mut buf, call.mean, call.std, path);
            all.extend(buf);
        }
    }
    all
}

/// Bitwise comparison of `ours[offset..]` with `expected`; describes the first
/// mismatch (index into the full output, both values and bit patterns).
fn first_mismatch(ours: &[f32], offset: usize, expected: &[u32]) -> Option<String> {
    let total = expected
        .iter()
        .enumerate()
        .filter(|&(i, &e)| ours[offset + i].to_bits() != e)
        .count();
    let (i, &e) = expected
        .iter()
        .enumerate()
        .find(|&(i, &e)| ours[offset + i].to_bits() != e)?;
    let o = ours[offset + i];
    Some(format!(
        "{total} mismatching elements; first at index {}: ours {o:e} (0x{:08x}) vs torch {:e} (0x{e:08x})",
        offset + i,
        o.to_bits(),
        f32::from_bits(e),
    ))
}

/// Checks one case; returns a description of the failure, if any.
fn check_case(case: &Case, path: NormalPath) -> Option<String> {
    let ours = compute(case, path);
    if ours.len() != case.numel {
        return Some(format!("{} elements, torch has {}", ours.len(), case.numel));
    }
    let stored = read_f32_bits(&golden_dir().join(&case.file));
    let mismatch = match case.stored.as_str() {
        "full" => {
            assert_eq!(stored.len(), case.numel, "{}: truncated file", case.file);
            first_mismatch(&ours, 0, &stored)
        }
        "head_tail" => {
            let edge = case.edge;
            assert_eq!(
                stored.len(),
                2 * edge,
                "{}: wrong head/tail size",
                case.file
            );
            first_mismatch(&ours, 0, &stored[..edge])
                .or_else(|| first_mismatch(&ours, case.numel - edge, &stored[edge..]))
        }
        other => panic!("{}: unknown storage {other:?}", case.name),
    };
    if mismatch.is_some() {
        return mismatch;
    }
    let mut hasher = Sha256::new();
    for v in &ours {
        hasher.update(v.to_le_bytes());
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (digest != case.sha256).then(|| {
        format!(
            "stored elements agree but the SHA-256 of all {} elements differs (ours {digest})",
            case.numel
        )
    })
}

fn check_path(path_name: &str, path: NormalPath) -> usize {
    let index = load_index();
    let cases: Vec<&Case> = index.cases.iter().filter(|c| c.path == path_name).collect();
    assert!(
        !cases.is_empty(),
        "no {path_name} cases in the golden index"
    );
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| check_case(c, path).map(|m| format!("{} (seed {}): {m}", c.name, c.seed)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} {path_name} cases differ from torch {}:\n{}",
        failures.len(),
        cases.len(),
        index.torch,
        failures.join("\n")
    );
    cases.len()
}

/// The kernel torch runs on x86-64 with AVX2/AVX512 (the default `randn`).
#[test]
fn avx2_path_matches_torch_bit_for_bit() {
    let n = check_path("avx2", NormalPath::Avx2);
    assert!(n >= 8);
}

/// The DEFAULT-capability kernel uses libm's `logf`/`cosf`/`sinf`; the goldens
/// were made with glibc 2.36, so only check where Rust uses glibc's libm too.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn scalar_path_matches_torch_bit_for_bit() {
    check_path("scalar", NormalPath::Scalar);
}

/// The public one-shot API is the AVX2 path with a fresh generator.
#[test]
fn randn_function_matches_golden_latent() {
    let index = load_index();
    let case = index
        .cases
        .iter()
        .find(|c| c.name == "latent64_seed0")
        .expect("latent64_seed0 case");
    let ours = tomex::diffusion::rng::randn(0, &[1, 4, 64, 64]);
    assert_eq!(ours.shape(), &[1, 4, 64, 64]);
    let ours: Vec<f32> = ours.iter().copied().collect();
    let stored = read_f32_bits(&golden_dir().join(&case.file));
    if let Some(m) = first_mismatch(&ours, 0, &stored) {
        panic!("randn(0, [1,4,64,64]): {m}");
    }
}

/// Seeds that differ only above bit 31 give the same numbers (torch seeds
/// its MT19937 with the low 32 bits), and the golden cases agree.
#[test]
fn seeds_above_u32_wrap_like_torch() {
    let a = tomex::diffusion::rng::randn(1_234_567_890_123, &[17]);
    let b = tomex::diffusion::rng::randn(1_234_567_890_123 & 0xffff_ffff, &[17]);
    assert!(a
        .iter()
        .zip(b.iter())
        .all(|(x, y)| x.to_bits() == y.to_bits()));
}
