//! ToMe's token ops as ONNX graphs (the device path's operations), run here on the CPU
//! execution provider, against the Rust host code that matches tomesd.
//!
//! Expected: the same indices (the scores differ by sgemm rounding, about 1e-7, and
//! the inputs here have no near-ties), merge and unmerge bit-identical on those
//! indices, and so the same UNet outputs and images. The graph ops run on the
//! device-resident path (`SplitUnet::predict_resident`: I/O binding, outputs left on
//! the device), which on the CPU must equal the host path bit for bit.

mod common;

use ndarray::{Array3, Array4};
use tomex::diffusion::pipeline::{Request, StableDiffusion};
use tomex::diffusion::scheduler::SchedulerKind;
use tomex::engine::{Binding, GraphTokenOps, NoHooks, SplitUnet, TokenOps, TomeUnet, Unet};
use tomex::model::ModelDir;
use tomex::onnx::{Attention, SplitOptions};
use tomex::tome::{block_merge, block_partition, PartitionRng, Targets, TomeConfig};

fn config(ratio: f64, sx: usize, sy: usize, random: bool) -> TomeConfig {
    TomeConfig {
        ratio,
        sx,
        sy,
        random,
        seed: 5,
        ..TomeConfig::default()
    }
}

/// Graph rewrites and cuts cached in `dir` (a test's own temporary folder).
fn cached_in(dir: &std::path::Path) -> SplitOptions {
    SplitOptions {
        cache_root: dir.to_path_buf(),
        ..SplitOptions::default()
    }
}

/// Every component of every block it may merge.
fn all_targets(cfg: TomeConfig, max_downsample: usize) -> TomeConfig {
    TomeConfig {
        targets: Targets {
            self_attn: true,
            cross_attn: true,
            mlp: true,
        },
        max_downsample,
        ..cfg
    }
}

#[test]
fn graph_matching_merge_and_unmerge_equal_the_host() {
    let runtime = common::runtime();
    let mut ops = GraphTokenOps::load(&runtime).unwrap();
    let cases = [
        ((16, 16), config(0.5, 2, 2, false)),
        ((16, 16), config(0.3, 2, 2, true)),
        ((12, 10), config(0.5, 1, 2, true)),
        ((9, 11), config(0.6, 3, 3, false)),
        ((8, 8), config(0.75, 2, 2, true)),
    ];
    for (k, ((h, w), cfg)) in cases.into_iter().enumerate() {
        let (b, n, c) = (2, h * w, 24);
        let x = Array3::from_shape_vec((b, n, c), common::pseudo_random(b * n * c, k as u64 + 1))
            .unwrap();
        let host = block_merge(x.view(), (h, w), &cfg, &mut PartitionRng::new(cfg.seed)).unwrap();
        let part = block_partition(b, n, (h, w), &cfg, &mut PartitionRng::new(cfg.seed)).unwrap();
        assert_eq!(part.src, host.a_idx());
        assert_eq!(part.dst, host.b_idx());
        assert_eq!(part.r, host.r());
        let graph = ops.matching(x.view(), &part).unwrap();
        let [unm, src, dst] = graph.indices().unwrap();
        let as_i64 = |a: ndarray::ArrayView2<usize>| a.mapv(|v| v as i64);
        assert_eq!(unm, as_i64(host.unm_idx()), "case {k}: unm_idx");
        assert_eq!(src, as_i64(host.src_idx()), "case {k}: src_idx");
        assert_eq!(dst, as_i64(host.dst_idx()), "case {k}: dst_idx");

        let merged = ops.merge(&graph, x.view()).unwrap();
        assert_eq!(merged, host.merge(x.view()), "case {k}: merge");
        let y = merged.mapv(|v| v * 1.5 - 0.25); // a component's output
        let unmerged = ops.unmerge(&graph, y.view()).unwrap();
        assert_eq!(unmerged, host.unmerge(y.view()), "case {k}: unmerge");
    }
}

#[test]
fn the_unet_with_graph_token_ops_equals_the_host_path() {
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let unet = common::tiny_model().join("unet/model.onnx");
    let options = cached_in(cache.path());
    let mut host = TomeUnet::load(&runtime, &unet, options.clone()).unwrap();
    let mut graph = TomeUnet::load(&runtime, &unet, options).unwrap();
    graph.set_token_ops(TokenOps::Graph).unwrap();
    let cfg = all_targets(config(0.5, 2, 2, true), 2);
    let sample =
        Array4::from_shape_vec((2, 4, 16, 16), common::pseudo_random(2 * 4 * 256, 9)).unwrap();
    let hidden =
        Array3::from_shape_vec((2, 77, 32), common::pseudo_random(2 * 77 * 32, 10)).unwrap();
    let run = |u: &mut TomeUnet| {
        u.predict(&sample, 301.0, &hidden, &cfg, &mut PartitionRng::new(3))
            .unwrap()
    };
    assert_eq!(run(&mut graph), run(&mut host));
}

#[test]
fn the_resident_split_equals_the_host_split_and_the_whole_graph() {
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let unet = common::tiny_model().join("unet/model.onnx");
    let options = cached_in(cache.path());
    let tome = TomeUnet::load(&runtime, &unet, options.clone()).unwrap();
    let all = all_targets(config(0.5, 2, 2, false), 8);
    let cut = tome.cut_for((8, 8), &all).unwrap();
    let mut split = SplitUnet::load(&runtime, &unet, &cut, &options).unwrap();
    let sample =
        Array4::from_shape_vec((2, 4, 8, 8), common::pseudo_random(2 * 4 * 64, 4)).unwrap();
    let hidden =
        Array3::from_shape_vec((2, 77, 32), common::pseudo_random(2 * 77 * 32, 5)).unwrap();
    let resident = split
        .predict_resident(&sample, 41.0, &hidden, &mut NoHooks)
        .unwrap();
    let host = split.predict(&sample, 41.0, &hidden, &mut NoHooks).unwrap();
    let whole = Unet::prepare(&runtime, &unet, &options)
        .unwrap()
        .0
        .predict(&sample, 41.0, &hidden)
        .unwrap();
    assert_eq!(resident, host);
    assert_eq!(resident, whole);
}

#[test]
fn images_with_graph_token_ops_equal_the_host_images() {
    let runtime = common::runtime();
    let model = ModelDir::open(&common::tiny_model()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let options = cached_in(cache.path());
    let request = Request {
        prompt: "a red bicycle leaning on a wall".into(),
        negative_prompt: String::new(),
        seed: 42,
        steps: 6,
        guidance: 7.5,
        width: 128,
        height: 96,
        scheduler: SchedulerKind::Pndm,
        tome: Some(config(0.5, 2, 2, true)),
    };
    let mut host = StableDiffusion::load_with(&runtime, &model, options.clone()).unwrap();
    let mut graph = StableDiffusion::load_with(&runtime, &model, options).unwrap();
    graph.set_token_ops(TokenOps::Graph).unwrap();
    let (a, _) = host.generate(&request).unwrap();
    let (b, _) = graph.generate(&request).unwrap();
    assert_eq!(a.as_raw(), b.as_raw());
}

/// The cut parts and the token-op graphs as one graph (`--token-ops one-graph`, one
/// `Run` per evaluation) against the host path: every targeted component of every
/// block, random and fixed dst cells, two latent sizes.
#[test]
fn the_one_graph_unet_equals_the_host_path() {
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let unet = common::tiny_model().join("unet/model.onnx");
    // tomex's flash operator, where this CPU runs it: it needs its inputs' rank when
    // the session is made, which the one graph must declare around the token ops.
    let attention = if tomex::kernel::flash_attention::available() {
        Attention::Flash
    } else {
        eprintln!("flash attention: skipped (no SIMD body of it runs here); fused instead");
        Attention::Fused
    };
    let options = SplitOptions {
        attention,
        ..cached_in(cache.path())
    };
    let mut host = TomeUnet::load(&runtime, &unet, options.clone()).unwrap();
    let mut one = TomeUnet::load(&runtime, &unet, options.clone()).unwrap();
    one.set_token_ops(TokenOps::OneGraph).unwrap();
    // CUDA's way on the CPU: inputs and output in fixed buffers, copied into before each
    // run; the cases change shapes, which must make the buffers again.
    let mut fixed = TomeUnet::load(&runtime, &unet, options).unwrap();
    fixed.set_token_ops(TokenOps::OneGraph).unwrap();
    fixed.set_binding(Binding::Fixed);
    let cases = [
        ((16, 16), all_targets(config(0.5, 2, 2, true), 2)),
        ((12, 10), all_targets(config(0.4, 2, 2, false), 1)),
        ((16, 16), config(0.5, 1, 2, true)),
        ((16, 16), all_targets(config(0.5, 2, 2, true), 2)),
    ];
    for (k, ((h, w), cfg)) in cases.into_iter().enumerate() {
        let sample =
            Array4::from_shape_vec((2, 4, h, w), common::pseudo_random(2 * 4 * h * w, 9)).unwrap();
        let hidden =
            Array3::from_shape_vec((2, 77, 32), common::pseudo_random(2 * 77 * 32, 10)).unwrap();
        let run = |u: &mut TomeUnet| {
            u.predict(&sample, 301.0, &hidden, &cfg, &mut PartitionRng::new(3))
                .unwrap()
        };
        let (a, b) = (run(&mut one), run(&mut host));
        let cut = one.cut_for((h, w), &cfg).unwrap();
        assert_eq!(one.parts(&cut), Some(1), "case {k}: not run as one graph");
        // Twice: the second run reads the buffers' new contents, not the first's.
        let first = run(&mut fixed);
        let sample2 = sample.mapv(|v| -v);
        let again = fixed
            .predict(&sample2, 301.0, &hidden, &cfg, &mut PartitionRng::new(3))
            .unwrap();
        let again_host = host
            .predict(&sample2, 301.0, &hidden, &cfg, &mut PartitionRng::new(3))
            .unwrap();
        assert_eq!(
            first, b,
            "case {k}: fixed buffers differ from the host path"
        );
        assert_eq!(
            again, again_host,
            "case {k}: fixed buffers kept stale inputs"
        );
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert_eq!(
            a, b,
            "case {k}: one graph differs from the host path by up to {diff}"
        );
    }
}

/// Images of the tiny SD 1.x, SD 2.x (linear projections, per-level heads) and SDXL
/// (several transformer layers per block, merging at downsample 2) layouts.
#[test]
fn images_with_one_graph_equal_the_host_images() {
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let options = cached_in(cache.path());
    let fixtures = common::repo().join("tests/fixtures");
    for (model, cfg) in [
        (common::tiny_model(), config(0.5, 2, 2, true)),
        (
            fixtures.join("tiny_sd2"),
            all_targets(config(0.5, 2, 2, true), 2),
        ),
        (
            fixtures.join("tiny_sdxl"),
            all_targets(config(0.5, 2, 2, false), 2),
        ),
    ] {
        let request = Request {
            prompt: "a red bicycle leaning on a wall".into(),
            negative_prompt: String::new(),
            seed: 42,
            steps: 6,
            guidance: 7.5,
            width: 72,
            height: 40,
            scheduler: SchedulerKind::Pndm,
            tome: Some(cfg),
        };
        let model = ModelDir::open(&model).unwrap();
        let mut host = StableDiffusion::load_with(&runtime, &model, options.clone()).unwrap();
        let mut one = StableDiffusion::load_with(&runtime, &model, options.clone()).unwrap();
        one.set_token_ops(TokenOps::OneGraph).unwrap();
        let (a, _) = host.generate(&request).unwrap();
        let (b, _) = one.generate(&request).unwrap();
        assert_eq!(a.as_raw(), b.as_raw(), "{}", model.root.display());
    }
}

/// A cut made whatever the ratio, run at r = 0 (`bench-unet`'s measure of the cuts'
/// own cost): the one graph passes each block's tokens through the token ops with
/// r = 0 (reordered and put back), which leaves the UNet's output as the whole graph's
/// up to the order of the attention's sums (bound 1e-5 relative L2, the fused
/// attention's against the exported graph being 1e-4).
#[test]
fn the_one_graph_at_r_0_passes_tokens_through() {
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let unet = common::tiny_model().join("unet/model.onnx");
    let options = cached_in(cache.path());
    let mut one = TomeUnet::load(&runtime, &unet, options.clone()).unwrap();
    one.set_token_ops(TokenOps::OneGraph).unwrap();
    let cfg = all_targets(config(0.0, 2, 2, false), 2);
    let cut = one.cut_ignoring_ratio((16, 16), &cfg).unwrap();
    assert!(!cut.is_empty());
    let sample =
        Array4::from_shape_vec((2, 4, 16, 16), common::pseudo_random(2 * 4 * 256, 9)).unwrap();
    let hidden =
        Array3::from_shape_vec((2, 77, 32), common::pseudo_random(2 * 77 * 32, 10)).unwrap();
    let through = one
        .predict_with_cut(
            &sample,
            301.0,
            &hidden,
            &cfg,
            &mut PartitionRng::new(3),
            cut.clone(),
        )
        .unwrap();
    assert_eq!(one.parts(&cut), Some(1));
    let whole = Unet::prepare(&runtime, &unet, &options)
        .unwrap()
        .0
        .predict(&sample, 301.0, &hidden)
        .unwrap();
    let rel = common::rel_l2(&through.into_dyn(), &whole.into_dyn());
    assert!(rel < 1e-5, "relative L2 {rel}");
}
