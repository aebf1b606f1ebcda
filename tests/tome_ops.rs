//! `tomex::tome` against tomesd 0.1.3 (`golden/tome/ops/`, written by
//! `tools/golden_tome.py`: `bipartite_soft_matching_random2d(no_rand=True)`
//! on random metrics, torch 2.15.0 on the CPU), and the parts of the API that
//! tomesd has no counterpart for (validation, the seeded partition RNG).
//!
//! tomex reproduces torch's *unstable* CPU argsort, so its indices and its
//! merged tensor are compared with the golden `torch_order` indices and
//! `merged_torch_order` tensor. The golden `y`/`unmerged` pair is in the
//! stable (ascending dst) order; `y` is permuted into torch's dst order before
//! unmerging.
//!
//! Everything is compared exactly, floats bit for bit: the golden inputs were
//! drawn so that every similarity that decides a result is at least 1e-5 away
//! from a tie (tomex's scores differ from torch's sgemm by about 1e-7), so the
//! indices must be equal; given equal indices, merge is the same sequence of
//! f32 additions and one f32 division as torch's `scatter_reduce("mean")`
//! on the CPU, and unmerge only copies.

use std::path::{Path, PathBuf};

use ndarray::{Array3, ArrayView2, Axis};
use serde::Deserialize;
use tomex::tome::{
    bipartite_soft_matching_random2d, block_merge, block_params, Component, Merge, PartitionRng,
    Targets, TomeConfig, TomeError,
};

#[derive(Deserialize)]
struct Case {
    name: String,
    #[serde(rename = "B")]
    b: usize,
    h: usize,
    w: usize,
    #[serde(rename = "N")]
    n: usize,
    #[serde(rename = "C")]
    c: usize,
    sx: usize,
    sy: usize,
    ratio: f64,
    r: usize,
    r_eff: usize,
    num_src: usize,
    num_dst: usize,
    indices: Option<Indices>,
    torch_order: Option<Indices>,
    files: Files,
}

#[derive(Deserialize)]
struct Indices {
    a_idx: Vec<usize>,
    b_idx: Vec<usize>,
    unm_idx: Vec<Vec<usize>>,
    src_idx: Vec<Vec<usize>>,
    dst_idx: Vec<Vec<usize>>,
    /// Token ids (stable order only).
    unm_tokens: Option<Vec<Vec<usize>>>,
    src_tokens: Option<Vec<Vec<usize>>>,
    dst_tokens: Option<Vec<Vec<usize>>>,
}

#[derive(Deserialize)]
struct Files {
    x: String,
    y: String,
    merged: String,
    unmerged: String,
    merged_torch_order: Option<String>,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/tome/ops")
}

fn load_cases() -> Vec<Case> {
    let path = golden_dir().join("index.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("parse golden/tome/ops/index.json")
}

fn read_f32(file: &str, shape: (usize, usize, usize)) -> Array3<f32> {
    let path = golden_dir().join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Array3::from_shape_vec(shape, values).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rows(a: ArrayView2<usize>) -> Vec<Vec<usize>> {
    a.outer_iter().map(|r| r.to_vec()).collect()
}

fn assert_bits_eq(got: &Array3<f32>, want: &Array3<f32>, what: &str) {
    assert_eq!(got.dim(), want.dim(), "{what}: shape");
    for ((i, g), w) in got.indexed_iter().zip(want) {
        assert_eq!(g.to_bits(), w.to_bits(), "{what} at {i:?}: {g} vs {w}");
    }
}

fn check_indices(case: &Case, m: &Merge) {
    let t = case.torch_order.as_ref().expect("torch_order indices");
    let name = &case.name;
    assert_eq!(m.tokens(), (case.n, case.n - case.r_eff), "{name}: tokens");
    assert_eq!(m.a_idx(), t.a_idx, "{name}: a_idx");
    assert_eq!(m.b_idx(), t.b_idx, "{name}: b_idx");
    assert_eq!(rows(m.unm_idx()), t.unm_idx, "{name}: unm_idx");
    assert_eq!(rows(m.src_idx()), t.src_idx, "{name}: src_idx");
    assert_eq!(rows(m.dst_idx()), t.dst_idx, "{name}: dst_idx");

    // The same merges in token terms as the stable-order run of tomesd.
    let s = case.indices.as_ref().expect("stable indices");
    let tokens = |idx: ArrayView2<usize>, of: &[usize]| -> Vec<Vec<usize>> {
        idx.outer_iter()
            .map(|r| r.iter().map(|&i| of[i]).collect())
            .collect()
    };
    assert_eq!(
        Some(tokens(m.unm_idx(), m.a_idx())),
        s.unm_tokens,
        "{name}: unmerged tokens"
    );
    assert_eq!(
        Some(tokens(m.src_idx(), m.a_idx())),
        s.src_tokens,
        "{name}: merged src tokens"
    );
    assert_eq!(
        Some(tokens(m.dst_idx(), m.b_idx())),
        s.dst_tokens,
        "{name}: their dst tokens"
    );
}

#[test]
fn matches_tomesd_bipartite_soft_matching() {
    let cases = load_cases();
    assert!(
        cases.len() >= 20,
        "golden/tome/ops has {} cases",
        cases.len()
    );
    for case in &cases {
        let name = &case.name;
        let (b, n, c) = (case.b, case.n, case.c);
        assert_eq!(case.h * case.w, n);
        let x = read_f32(&case.files.x, (b, n, c));
        let m = bipartite_soft_matching_random2d(
            x.view(),
            case.w,
            case.h,
            case.sx,
            case.sy,
            case.r,
            None,
        );
        let m_len = n - case.r_eff;
        let y = read_f32(&case.files.y, (b, m_len, c));
        let Some(m) = m else {
            // r == 0: tomesd's merge and unmerge are the identity
            assert_eq!(
                case.r_eff, 0,
                "{name}: tomex merges nothing, tomesd merges {}",
                case.r_eff
            );
            assert_bits_eq(&read_f32(&case.files.merged, (b, n, c)), &x, name);
            assert_bits_eq(&read_f32(&case.files.unmerged, (b, n, c)), &y, name);
            continue;
        };
        assert_eq!(
            (m.a_idx().len(), m.b_idx().len()),
            (case.num_src, case.num_dst),
            "{name}"
        );
        check_indices(case, &m);

        let merged = m.merge(x.view());
        let golden = case
            .files
            .merged_torch_order
            .as_deref()
            .expect("merged_torch_order");
        assert_bits_eq(
            &merged,
            &read_f32(golden, (b, m_len, c)),
            &format!("{name}: merge"),
        );

        // y is in the stable dst order (ascending token ids); put its dst rows in torch's
        let stable_b = &case.indices.as_ref().unwrap().b_idx;
        let unm_len = m_len - case.num_dst;
        let y_torch = Array3::from_shape_fn((b, m_len, c), |(bi, i, ci)| {
            if i < unm_len {
                y[[bi, i, ci]]
            } else {
                let token = m.b_idx()[i - unm_len];
                let j = stable_b.iter().position(|&t| t == token).unwrap();
                y[[bi, unm_len + j, ci]]
            }
        });
        let unmerged = m.unmerge(y_torch.view());
        assert_bits_eq(
            &unmerged,
            &read_f32(&case.files.unmerged, (b, n, c)),
            &format!("{name}: unmerge"),
        );

        // The same through the block-level API (compute_merge's r = int(N * ratio))
        let cfg = TomeConfig {
            ratio: case.ratio,
            sx: case.sx,
            sy: case.sy,
            random: false,
            ..Default::default()
        };
        let p = block_params((case.h, case.w), n, &cfg)
            .unwrap()
            .expect("a full-resolution block merges");
        assert_eq!(p.r, case.r, "{name}: r");
        let via_block =
            block_merge(x.view(), (case.h, case.w), &cfg, &mut PartitionRng::new(0)).unwrap();
        assert_eq!(via_block, m, "{name}: block_merge");
    }
}

#[test]
fn validate_rejects_what_tomesd_would_cap() {
    let too_much = TomeConfig {
        ratio: 0.8,
        ..Default::default()
    };
    let err = too_much.validate().unwrap_err();
    assert!(matches!(err, TomeError::RatioOutOfRange { max, .. } if max == 0.75));
    let msg = err.to_string();
    assert!(msg.contains("0.8") && msg.contains("0.75"), "{msg}");

    let wide = TomeConfig {
        ratio: 0.9,
        sx: 3,
        sy: 4,
        ..Default::default()
    };
    assert!(wide.validate().is_ok(), "max 1 - 1/12");
    let msg = TomeConfig {
        ratio: 0.95,
        ..wide
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(msg.contains("0.9166666666666666"), "{msg}");

    assert!(TomeConfig {
        ratio: 0.75,
        ..Default::default()
    }
    .validate()
    .is_ok());
    assert!(TomeConfig {
        ratio: -0.1,
        ..Default::default()
    }
    .validate()
    .is_err());
    assert!(TomeConfig {
        ratio: f64::NAN,
        ..Default::default()
    }
    .validate()
    .is_err());
    let msg = TomeConfig {
        ratio: 0.5,
        sx: 1,
        sy: 1,
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("maximum is 0") || msg.contains("between 0 and 0 "),
        "{msg}"
    );
    let msg = TomeConfig {
        sx: 0,
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(msg.contains("sx = 0"), "{msg}");
    let msg = TomeConfig {
        max_downsample: 3,
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(msg.contains("1, 2, 4 or 8") && msg.contains('3'), "{msg}");
    for ds in [1, 2, 4, 8] {
        assert!(TomeConfig {
            max_downsample: ds,
            ..Default::default()
        }
        .validate()
        .is_ok());
    }
}

#[test]
fn merges_follows_ratio_and_targets() {
    let cfg = TomeConfig {
        targets: Targets {
            self_attn: false,
            cross_attn: true,
            mlp: true,
        },
        ..Default::default()
    };
    assert!(
        !cfg.merges(Component::SelfAttn)
            && cfg.merges(Component::CrossAttn)
            && cfg.merges(Component::Mlp)
    );
    assert!(cfg.merges_anything());
    assert!(!TomeConfig { ratio: 0.0, ..cfg }.merges_anything());
    assert_eq!(
        Component::ALL.map(Component::module_name),
        ["attn1", "attn2", "ff"]
    );
}

fn test_x(b: usize, n: usize, c: usize) -> Array3<f32> {
    Array3::from_shape_fn((b, n, c), |(bi, t, ci)| {
        (((bi * 131 + t * 71 + ci * 37) % 97) as f32 - 48.0) / 7.0
    })
}

/// Each `sy × sx` cell of the `h × w` grid holds exactly one dst.
fn one_dst_per_cell(m: &Merge, h: usize, w: usize, sx: usize, sy: usize) -> bool {
    let mut count = vec![0; (h / sy) * (w / sx)];
    for &t in m.b_idx() {
        let (y, x) = (t / w, t % w);
        if y >= (h / sy) * sy || x >= (w / sx) * sx {
            return false;
        }
        count[(y / sy) * (w / sx) + x / sx] += 1;
    }
    count.iter().all(|&c| c == 1)
}

#[test]
fn random_partitions_are_reproducible_from_the_seed() {
    let (h, w) = (16, 12);
    let x = test_x(2, h * w, 8);
    let cfg = TomeConfig {
        seed: 42,
        ..Default::default()
    };
    let run = |seed: u64| {
        let mut rng = PartitionRng::new(seed);
        // two merged blocks of one UNet call draw one after the other
        let first = block_merge(x.view(), (h, w), &cfg, &mut rng).unwrap();
        let second = block_merge(x.view(), (h, w), &cfg, &mut rng).unwrap();
        (first, second)
    };
    let (a1, a2) = run(cfg.seed);
    let (b1, b2) = run(cfg.seed);
    assert_eq!(
        (&a1, &a2),
        (&b1, &b2),
        "same seed, same partitions and matchings"
    );
    assert_ne!(a1.b_idx(), a2.b_idx(), "each block call draws anew");
    let (c1, _) = run(cfg.seed + 1);
    assert_ne!(a1.b_idx(), c1.b_idx(), "another seed, another partition");
    for m in [&a1, &a2, &c1] {
        assert!(one_dst_per_cell(m, h, w, 2, 2));
        assert_eq!(m.tokens(), (192, 96));
    }
    let top_left = block_merge(
        x.view(),
        (h, w),
        &TomeConfig {
            random: false,
            ..cfg
        },
        &mut PartitionRng::new(42),
    );
    assert_ne!(top_left.unwrap().b_idx(), a1.b_idx());

    // non-square cells and leftover rows/columns
    let x = test_x(2, 7 * 11, 4);
    let cfg = TomeConfig {
        sx: 3,
        sy: 2,
        ratio: 0.5,
        ..Default::default()
    };
    let m = block_merge(x.view(), (7, 11), &cfg, &mut PartitionRng::new(5)).unwrap();
    assert!(one_dst_per_cell(&m, 7, 11, 3, 2));
}

#[test]
fn nothing_to_merge_is_none() {
    let x = test_x(2, 64, 4);
    let mut rng = PartitionRng::new(3);
    let none = |cfg: TomeConfig, rng: &mut PartitionRng| block_merge(x.view(), (8, 8), &cfg, rng);
    // r = int(64 * 0.01) = 0
    assert!(none(
        TomeConfig {
            ratio: 0.01,
            ..Default::default()
        },
        &mut rng
    )
    .is_none());
    assert!(none(
        TomeConfig {
            ratio: 0.0,
            ..Default::default()
        },
        &mut rng
    )
    .is_none());
    let untargeted = Targets {
        self_attn: false,
        cross_attn: false,
        mlp: false,
    };
    assert!(none(
        TomeConfig {
            targets: untargeted,
            ..Default::default()
        },
        &mut rng
    )
    .is_none());
    // a block at downsample 2 with max_downsample 1
    assert!(block_merge(x.view(), (16, 16), &TomeConfig::default(), &mut rng).is_none());
    assert_eq!(
        rng,
        PartitionRng::new(3),
        "blocks that do not merge draw nothing"
    );
    assert!(bipartite_soft_matching_random2d(x.view(), 8, 8, 2, 2, 0, None).is_none());
    // eligible at max_downsample 2
    let cfg = TomeConfig {
        max_downsample: 2,
        ..Default::default()
    };
    assert_eq!(
        block_merge(x.view(), (16, 16), &cfg, &mut rng)
            .unwrap()
            .tokens(),
        (64, 32)
    );
}

#[test]
fn merge_then_unmerge_shapes() {
    let x = test_x(2, 96, 6);
    let m = bipartite_soft_matching_random2d(x.view(), 12, 8, 2, 2, 48, None).unwrap();
    let merged = m.merge(x.view());
    assert_eq!(merged.dim(), (2, 48, 6));
    // a component that changes the channel count is fine
    let wide = Array3::from_shape_fn((2, 48, 10), |(b, i, c)| (b * 1000 + i * 10 + c) as f32);
    let back = m.unmerge(wide.view());
    assert_eq!(back.dim(), (2, 96, 10));
    // every output row is one of the merged rows
    for (b, plane) in back.axis_iter(Axis(0)).enumerate() {
        for row in plane.outer_iter() {
            assert!(wide.index_axis(Axis(0), b).outer_iter().any(|w| w == row));
        }
    }
}

/// The cost at SD 1.5's full-resolution blocks for 768×768 images (96×96
/// latent, N = 9216, C = 320, B = 2, ratio 0.5): `cargo test --release
/// --test tome_ops -- --ignored --nocapture`. Numbers go to BENCHMARKS.md.
#[test]
#[ignore]
fn timing_96x96() {
    use std::time::Instant;
    let (b, n, c) = (2, 96 * 96, 320);
    // smooth-ish random tokens
    let mut state = 1u64;
    let x = Array3::from_shape_simple_fn((b, n, c), || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    });
    let cfg = TomeConfig::default();
    let mut rng = PartitionRng::new(0);
    let mut best = [f64::INFINITY; 3];
    for _ in 0..5 {
        let t0 = Instant::now();
        let m = block_merge(x.view(), (96, 96), &cfg, &mut rng).unwrap();
        let t1 = Instant::now();
        let merged = m.merge(x.view());
        let t2 = Instant::now();
        let back = m.unmerge(merged.view());
        let t3 = Instant::now();
        assert_eq!(back.dim(), (b, n, c));
        for (slot, d) in best.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
            *slot = slot.min(d.as_secs_f64() * 1e3);
        }
    }
    println!(
        "N={n} C={c} B={b} ratio 0.5, {} rayon threads, best of 5: block_merge {:.1} ms, merge {:.2} ms, unmerge {:.2} ms, total {:.1} ms",
        rayon::current_num_threads(),
        best[0],
        best[1],
        best[2],
        best.iter().sum::<f64>()
    );
}
