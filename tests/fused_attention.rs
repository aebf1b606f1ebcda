//! The exported attention rewritten into ONNX Runtime's `MultiHeadAttention` (and each
//! GEGLU projection split in two, which rides along with the fused graphs): every
//! attention and projection of the tiny UNet is found, and the fused graphs (whole and
//! cut, with ToMe merging) compute what the exported ones compute, both with ONNX
//! Runtime's kernel (`fused`) and with tomex's own (`flash`, on CPUs with AVX-512F or AVX2, its
//! fastest body taking every head).
//!
//! Tolerance: 1e-4 relative (max abs difference over max abs value), the bound.
//! Both kernels accumulate the softmax online over tiles in float32 instead of
//! materialising it, so outputs differ from the exported graph by float rounding only
//! (about 1e-6 measured here); a wrong head split, scale or layout gives O(1).

mod common;

use std::path::{Path, PathBuf};

use ndarray::{Array3, Array4};
use tomex::engine::{TomeUnet, Unet};
use tomex::onnx::{self, Attention, CacheStatus, ComponentKind, SplitOptions};
use tomex::tome::{PartitionRng, Targets, TomeConfig};

fn tiny_unet() -> PathBuf {
    common::tiny_model().join("unet/model.onnx")
}

fn options(cache: &Path, attention: Attention) -> SplitOptions {
    SplitOptions {
        cache_root: cache.to_path_buf(),
        model_digest: None,
        attention,
        ..SplitOptions::default()
    }
}

/// The fused kinds this CPU runs: ONNX Runtime's kernel, and tomex's where it can.
fn fused_kinds() -> Vec<Attention> {
    if tomex::kernel::flash_attention::available() {
        vec![Attention::Fused, Attention::Flash]
    } else {
        eprintln!(
            "note: no AVX-512F or AVX2 here, so tomex's flash attention kernel is not tested"
        );
        vec![Attention::Fused]
    }
}

fn inputs(batch: usize, h: usize, w: usize, dim: usize) -> (Array4<f32>, Array3<f32>) {
    let sample = Array4::from_shape_vec(
        (batch, 4, h, w),
        common::pseudo_random(batch * 4 * h * w, 3),
    )
    .unwrap();
    let hidden =
        Array3::from_shape_vec((batch, 77, dim), common::pseudo_random(batch * 77 * dim, 4))
            .unwrap();
    (sample, hidden)
}

#[test]
fn every_attention_of_the_tiny_unet_is_fused() {
    let mut model = onnx::read_model(&tiny_unet()).unwrap();
    let fusion = onnx::fuse_attention(&mut model);
    assert!(fusion.skipped.is_empty(), "{:?}", fusion.skipped);
    // 7 transformer blocks, each with a self- and a cross-attention.
    assert_eq!(fusion.fused.len(), 14);
    let blocks = onnx::transformer_blocks(&model);
    for block in &blocks {
        for kind in [ComponentKind::Attn1, ComponentKind::Attn2] {
            let name = format!(
                "{}/MultiHeadAttention",
                block.component(kind).unwrap().node_prefix()
            );
            assert!(fusion.fused.contains(&name), "{name} not fused");
        }
    }
    let graph = &model.graph;
    assert!(!graph.node.iter().any(|n| n.op_type == "Softmax"));
    let mha: Vec<_> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "MultiHeadAttention")
        .collect();
    assert_eq!(mha.len(), 14);
    for n in mha {
        assert_eq!(n.domain, "com.microsoft");
        let heads = n.attribute.iter().find(|a| a.name == "num_heads").unwrap();
        assert_eq!(
            heads.i, 4,
            "the tiny UNet's attention_head_dim (= heads) is 4"
        );
        // The default scale 1/sqrt(head size) is left to the operator.
        assert!(!n.attribute.iter().any(|a| a.name == "scale"));
    }
    assert!(model
        .opset_import
        .iter()
        .any(|o| o.domain == "com.microsoft" && o.version == 1));
}

#[test]
fn every_geglu_projection_of_the_tiny_unet_is_split() {
    for path in [
        tiny_unet(),
        common::repo().join("tests/fixtures/tiny_variant/unet/model.onnx"),
    ] {
        let mut model = onnx::read_model(&path).unwrap();
        let slices_before = count(&model, "Slice");
        assert_eq!(onnx::split_geglu(&mut model), 7, "{}", path.display());
        // Each projection's two activation Slices become four constant ones (weight
        // and bias halves, folded at load), all inside the block's feed-forward.
        assert_eq!(count(&model, "Slice"), slices_before + 7 * 2);
        for block in onnx::transformer_blocks(&model) {
            let ff = block.component(ComponentKind::Ff).unwrap().node_prefix();
            let halves = model
                .graph
                .node
                .iter()
                .filter(|n| n.op_type == "MatMul" && n.name.starts_with(&ff))
                .filter(|n| n.name.contains("geglu_"))
                .count();
            assert_eq!(halves, 2, "{ff}");
        }
        assert_eq!(onnx::split_geglu(&mut model), 0, "a second pass finds none");
    }
}

fn count(model: &onnx::ModelProto, op: &str) -> usize {
    model.graph.node.iter().filter(|n| n.op_type == op).count()
}

#[test]
fn the_fused_whole_graph_matches_the_exported_one() {
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let mut exported = Unet::load(&runtime, &tiny_unet()).unwrap();
    for attention in fused_kinds() {
        let fused_options = options(cache.path(), attention);
        let (mut fused, fusion) = Unet::prepare(&runtime, &tiny_unet(), &fused_options).unwrap();
        assert_eq!(fusion.fused.len(), 14);
        for (batch, h, w) in [(2, 8, 8), (1, 12, 10), (2, 16, 16)] {
            let (sample, hidden) = inputs(batch, h, w, 32);
            let want = exported.predict(&sample, 321.0, &hidden).unwrap();
            let got = fused.predict(&sample, 321.0, &hidden).unwrap();
            let diff = common::max_relative_difference(&want, &got);
            eprintln!("{attention} whole graph, batch {batch}, {h}x{w}: {diff:.2e}");
            assert!(diff <= 1e-4, "{attention}, batch {batch}, {h}x{w}: {diff}");
        }
        // The rewrite is cached: the second preparation reads it back.
        let again = onnx::prepare_whole(&tiny_unet(), &fused_options).unwrap();
        assert_eq!(again.status, CacheStatus::Hit);
        assert_eq!(again.fusion.fused.len(), 14);
        assert!(again.path.starts_with(cache.path()));
        // Each kind's graph calls its own kernel, 14 times.
        let graph = onnx::read_model(&again.path).unwrap();
        let (mha, flash) = (
            count(&graph, "MultiHeadAttention"),
            count(&graph, onnx::FLASH_OP),
        );
        match attention {
            Attention::Flash => assert_eq!((mha, flash), (0, 14)),
            _ => assert_eq!((mha, flash), (14, 0)),
        }
    }
    // Exported attention uses the model file itself: nothing else is rewritten (the
    // tiny export already sizes its upsamplers by their skips).
    let plain = onnx::prepare_whole(&tiny_unet(), &options(cache.path(), Attention::Exported));
    assert_eq!(plain.unwrap().path, tiny_unet());
}

#[test]
fn the_other_export_conventions_fuse_too() {
    let variant = common::repo().join("tests/fixtures/tiny_variant/unet/model.onnx");
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let mut exported = Unet::load(&runtime, &variant).unwrap();
    let (sample, hidden) = inputs(2, 8, 8, 32);
    let want = exported.predict(&sample, 999.0, &hidden).unwrap();
    for attention in fused_kinds() {
        let (mut fused, fusion) =
            Unet::prepare(&runtime, &variant, &options(cache.path(), attention)).unwrap();
        assert_eq!(fusion.fused.len(), 14, "{:?}", fusion.skipped);
        let got = fused.predict(&sample, 999.0, &hidden).unwrap();
        let diff = common::max_relative_difference(&want, &got);
        assert!(diff <= 1e-4, "{attention}: {diff}");
    }
}

/// ToMe merging around fused components: the cut parts carry the fused attention, and
/// the merged evaluation matches the exported graph's merged evaluation.
#[test]
fn tome_on_fused_parts_matches_tome_on_exported_parts() {
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let load = |attention| {
        TomeUnet::load(&runtime, &tiny_unet(), options(cache.path(), attention)).unwrap()
    };
    let mut exported = load(Attention::Exported);
    let mut kinds: Vec<(Attention, TomeUnet)> =
        fused_kinds().into_iter().map(|a| (a, load(a))).collect();
    let configs = [
        TomeConfig {
            ratio: 0.5,
            random: false,
            ..TomeConfig::default()
        },
        TomeConfig {
            ratio: 0.6,
            targets: Targets {
                self_attn: true,
                cross_attn: true,
                mlp: true,
            },
            sx: 2,
            sy: 2,
            random: true,
            seed: 7,
            max_downsample: 2,
        },
    ];
    for cfg in &configs {
        for (batch, h, w) in [(2, 16, 16), (2, 12, 10)] {
            let (sample, hidden) = inputs(batch, h, w, 32);
            let run = |unet: &mut TomeUnet| {
                let mut rng = PartitionRng::new(cfg.seed);
                unet.predict(&sample, 401.0, &hidden, cfg, &mut rng)
                    .unwrap()
            };
            let want = run(&mut exported);
            for (attention, fused) in &mut kinds {
                let got = run(fused);
                let diff = common::max_relative_difference(&want, &got);
                eprintln!(
                    "{attention}, ToMe r = {}, batch {batch}, {h}x{w}: {diff:.2e}",
                    cfg.ratio
                );
                assert!(
                    diff <= 1e-4,
                    "{attention}, {cfg:?}, batch {batch}, {h}x{w}: {diff}"
                );
            }
        }
    }
}

/// An attention that does not match the pattern is left as exported, with the reason,
/// and the rest are still fused; the graph computes the same.
#[test]
fn an_unfamiliar_attention_is_left_as_exported() {
    let mut model = onnx::read_model(&tiny_unet()).unwrap();
    let graph = model.graph.mut_or_insert_default();
    let softmax = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "Softmax")
        .unwrap();
    let name = softmax.name.clone();
    // An extra reader of the scores: fusing would lose it.
    let scores = softmax.input[0].clone();
    graph.node.push(onnx::proto::NodeProto {
        name: "/extra/Identity".into(),
        op_type: "Identity".into(),
        input: vec![scores],
        output: vec!["extra_scores".into()],
        ..Default::default()
    });
    let fusion = onnx::fuse_attention(&mut model);
    assert_eq!(fusion.fused.len(), 13);
    assert_eq!(fusion.skipped.len(), 1);
    assert_eq!(fusion.skipped[0].0, name);
    assert!(
        fusion.skipped[0]
            .1
            .contains("read by more than the attention"),
        "{}",
        fusion.skipped[0].1
    );
    let softmaxes = model
        .graph
        .node
        .iter()
        .filter(|n| n.op_type == "Softmax")
        .count();
    assert_eq!(softmaxes, 1);
}

/// `tomex bench-attention` on a small ragged shape: one JSON line per kernel, the flash
/// kernel's output within the kernel's bound of ONNX Runtime's (or said to be skipped on
/// a CPU that runs no SIMD body of it).
#[test]
fn bench_attention_times_both_kernels_on_the_same_inputs() {
    let out = common::succeeded(
        common::tomex_command()
            .args([
                "bench-attention",
                "--tokens",
                "50",
                "--keys",
                "77",
                "--heads",
                "2",
            ])
            .args([
                "--head-size",
                "8",
                "--batch",
                "1",
                "--repeats",
                "1",
                "--threads",
                "1",
            ])
            .output()
            .unwrap(),
    );
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["kernel"], "onnxruntime MultiHeadAttention");
    assert!(lines[0]["best_s"].as_f64().unwrap() > 0.0);
    let flash = &lines[1];
    if flash.get("skipped").is_none() {
        assert!(flash["kernel"].as_str().unwrap().starts_with("tomex flash"));
        let diff = flash["max_abs_diff_from_onnxruntime"].as_f64().unwrap();
        assert!(diff < 2e-6, "{diff}");
        assert_eq!(
            (flash["queries"].as_u64(), flash["keys"].as_u64()),
            (Some(50), Some(77))
        );
    }
}
