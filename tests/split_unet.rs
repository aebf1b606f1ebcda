//! The UNet cut at transformer components computes what the whole graph computes, and
//! hooks that change the token count run without shape errors.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{s, Array3, Array4, ArrayView3, Axis};
use tomex::engine::{transformer_blocks, NoHooks, SplitUnet, TokenHooks, Unet};
use tomex::onnx::{
    self, Attention, BlockId, CacheStatus, ComponentId, ComponentKind, SplitOptions,
    TransformerBlock,
};

fn tiny_unet() -> PathBuf {
    common::tiny_model().join("unet/model.onnx")
}

/// Attention as exported: these tests check the cut itself (shape values recomputed
/// across it, bit-exact outputs) on the graph as exported, whose attention carries the
/// shape arithmetic; tests/fused_attention.rs covers cuts of the fused graph.
fn options(cache: &Path) -> SplitOptions {
    SplitOptions {
        cache_root: cache.to_path_buf(),
        model_digest: None,
        attention: Attention::Exported,
        ..SplitOptions::default()
    }
}

/// Deterministic values in [-1, 1) (a small LCG; the numbers only need to vary).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn inputs(batch: usize, h: usize, w: usize) -> (Array4<f32>, Array3<f32>) {
    let sample = Array4::from_shape_vec((batch, 4, h, w), values(batch * 4 * h * w, 1)).unwrap();
    let hidden = Array3::from_shape_vec((batch, 77, 32), values(batch * 77 * 32, 2)).unwrap();
    (sample, hidden)
}

fn components(
    blocks: &[TransformerBlock],
    keep: impl Fn(&BlockId, ComponentKind) -> bool,
) -> Vec<ComponentId> {
    blocks
        .iter()
        .flat_map(|b| b.component_ids())
        .filter(|c| keep(&c.block, c.kind))
        .collect()
}

/// The split UNet with no-op hooks against the whole graph, at each (batch, h, w).
fn assert_split_matches(model: &Path, cut: &[ComponentId], shapes: &[(usize, usize, usize)]) {
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let mut whole = Unet::load(&runtime, model).unwrap();
    let mut split = SplitUnet::load(&runtime, model, cut, &options(cache.path())).unwrap();
    assert_eq!(split.components().len(), cut.len());
    for &(batch, h, w) in shapes {
        let (sample, hidden) = inputs(batch, h, w);
        let expected = whole.predict(&sample, 501.0, &hidden).unwrap();
        let got = split
            .predict(&sample, 501.0, &hidden, &mut NoHooks)
            .unwrap();
        let diff = common::max_relative_difference(&expected, &got);
        assert!(
            diff <= 1e-6,
            "{} components, batch {batch}, {h}x{w}: max relative difference {diff}",
            cut.len()
        );
    }
}

#[test]
fn the_tiny_unet_has_seven_blocks_with_levels() {
    let blocks = transformer_blocks(&tiny_unet()).unwrap();
    let summary: Vec<(String, usize)> = blocks.iter().map(|b| (b.id.path(), b.id.level)).collect();
    assert_eq!(
        summary,
        vec![
            (
                "down_blocks.0.attentions.0.transformer_blocks.0".to_string(),
                0
            ),
            (
                "down_blocks.1.attentions.0.transformer_blocks.0".to_string(),
                1
            ),
            ("mid_block.attentions.0.transformer_blocks.0".to_string(), 2),
            (
                "up_blocks.1.attentions.0.transformer_blocks.0".to_string(),
                1
            ),
            (
                "up_blocks.1.attentions.1.transformer_blocks.0".to_string(),
                1
            ),
            (
                "up_blocks.2.attentions.0.transformer_blocks.0".to_string(),
                0
            ),
            (
                "up_blocks.2.attentions.1.transformer_blocks.0".to_string(),
                0
            ),
        ]
    );
    for b in &blocks {
        assert_eq!(b.components, ComponentKind::ALL.to_vec());
    }
}

#[test]
fn all_components_of_all_blocks_match_the_whole_graph() {
    let blocks = transformer_blocks(&tiny_unet()).unwrap();
    let cut = components(&blocks, |_, _| true);
    assert_eq!(cut.len(), 21);
    assert_split_matches(&tiny_unet(), &cut, &[(1, 8, 8), (2, 10, 6), (2, 7, 9)]);
}

#[test]
fn self_attention_at_level_zero_matches_the_whole_graph() {
    let blocks = transformer_blocks(&tiny_unet()).unwrap();
    let cut = components(&blocks, |b, k| b.level == 0 && k == ComponentKind::Attn1);
    assert_eq!(cut.len(), 3);
    assert_split_matches(&tiny_unet(), &cut, &[(1, 8, 8), (2, 7, 9)]);
}

#[test]
fn cross_attention_and_mlp_match_the_whole_graph() {
    let blocks = transformer_blocks(&tiny_unet()).unwrap();
    let cut = components(&blocks, |_, k| k != ComponentKind::Attn1);
    assert_eq!(cut.len(), 14);
    assert_split_matches(&tiny_unet(), &cut, &[(1, 8, 8), (2, 10, 6)]);
}

#[test]
fn releasing_memory_after_each_part_changes_nothing_else() {
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let blocks = transformer_blocks(&tiny_unet()).unwrap();
    let cut = components(&blocks, |b, _| b.level == 0);
    let mut split = SplitUnet::load(&runtime, &tiny_unet(), &cut, &options(cache.path())).unwrap();
    let (sample, hidden) = inputs(2, 8, 8);
    let kept = split.predict(&sample, 7.0, &hidden, &mut NoHooks).unwrap();
    split.set_release_memory(true).unwrap();
    let released = split.predict(&sample, 7.0, &hidden, &mut NoHooks).unwrap();
    assert_eq!(kept, released);
}

#[test]
fn no_cut_is_one_graph_that_matches() {
    assert_split_matches(&tiny_unet(), &[], &[(1, 8, 8)]);
}

/// Drops the last `k` tokens before each component and pads its output back by copying
/// its last token: any tensor that leaks out of a component with the merged count fails.
#[derive(Default)]
struct DropTokens {
    k: usize,
    tokens: HashMap<ComponentId, usize>,
    blocks_seen: Vec<(BlockId, (usize, usize, usize))>,
    calls: Vec<String>,
}

impl TokenHooks for DropTokens {
    fn block_input(&mut self, block: &BlockId, x: ArrayView3<f32>) {
        self.blocks_seen.push((*block, x.dim()));
        self.calls.push(format!("block {block}"));
    }

    fn before_component(&mut self, c: &ComponentId, x: ArrayView3<f32>) -> Option<Array3<f32>> {
        let n = x.dim().1;
        self.tokens.insert(*c, n);
        self.calls.push(format!("before {c}"));
        Some(x.slice(s![.., ..n - self.k, ..]).to_owned())
    }

    fn after_component(&mut self, c: &ComponentId, y: ArrayView3<f32>) -> Option<Array3<f32>> {
        self.calls.push(format!("after {c}"));
        let n = self.tokens[c];
        assert_eq!(y.dim().1, n - self.k, "{c} ran on the merged tokens");
        let last = y.slice(s![.., n - self.k - 1..n - self.k, ..]);
        let mut views = vec![y.view()];
        views.extend(std::iter::repeat_n(last, self.k));
        Some(ndarray::concatenate(Axis(1), &views).unwrap())
    }
}

#[test]
fn hooks_that_change_the_token_count_run_without_shape_errors() {
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let blocks = transformer_blocks(&tiny_unet()).unwrap();
    let cut = components(&blocks, |_, _| true);
    let mut split = SplitUnet::load(&runtime, &tiny_unet(), &cut, &options(cache.path())).unwrap();
    let mut whole = Unet::load(&runtime, &tiny_unet()).unwrap();
    for (batch, h, w) in [(1, 8, 8), (2, 7, 9)] {
        let (sample, hidden) = inputs(batch, h, w);
        let mut hooks = DropTokens {
            k: 3,
            ..Default::default()
        };
        let got = split.predict(&sample, 21.0, &hidden, &mut hooks).unwrap();
        assert_eq!(got.shape(), &[batch, 4, h, w]);
        let expected = whole.predict(&sample, 21.0, &hidden).unwrap();
        assert!(
            common::max_relative_difference(&expected, &got) > 1e-4,
            "the hooks changed nothing"
        );
        // Every block shows its input once, before its components, in graph order.
        let seen: Vec<BlockId> = hooks.blocks_seen.iter().map(|(b, _)| *b).collect();
        assert_eq!(seen, blocks.iter().map(|b| b.id).collect::<Vec<_>>());
        let block_in = hooks.blocks_seen[0].1;
        assert_eq!(
            block_in,
            (batch, h * w, 16),
            "level-0 block input is [B, h*w, C]"
        );
        assert_eq!(hooks.calls.len(), 7 + 2 * 21);
        assert_eq!(hooks.calls[0], format!("block {}", blocks[0].id));
        assert_eq!(hooks.calls[1], format!("before {}", cut[0]));
        assert_eq!(hooks.calls[2], format!("after {}", cut[0]));
    }
}

#[test]
fn a_hook_that_forgets_to_unmerge_is_an_error() {
    struct Forget;
    impl TokenHooks for Forget {
        fn block_input(&mut self, _: &BlockId, _: ArrayView3<f32>) {}
        fn before_component(&mut self, _: &ComponentId, x: ArrayView3<f32>) -> Option<Array3<f32>> {
            Some(x.slice(s![.., 1.., ..]).to_owned())
        }
        fn after_component(&mut self, _: &ComponentId, _: ArrayView3<f32>) -> Option<Array3<f32>> {
            None
        }
    }
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let blocks = transformer_blocks(&tiny_unet()).unwrap();
    let cut = components(&blocks, |_, k| k == ComponentKind::Ff);
    let mut split = SplitUnet::load(&runtime, &tiny_unet(), &cut, &options(cache.path())).unwrap();
    let (sample, hidden) = inputs(1, 8, 8);
    let err = split
        .predict(&sample, 1.0, &hidden, &mut Forget)
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not unmerge"), "{err}");
}

#[test]
fn the_cut_is_cached_and_reused() {
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let blocks = transformer_blocks(&tiny_unet()).unwrap();
    let cut = components(&blocks, |b, _| b.level == 0);
    let first = SplitUnet::load(&runtime, &tiny_unet(), &cut, &options(cache.path())).unwrap();
    assert_eq!(first.cache_status(), CacheStatus::Built);
    let manifest = first.manifest().clone();
    let files: Vec<PathBuf> = manifest
        .parts
        .iter()
        .map(|p| manifest.part_path(p))
        .collect();
    let mtimes: Vec<_> = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().modified().unwrap())
        .collect();
    // Another order of the same set is the same cut.
    let mut reversed = cut.clone();
    reversed.reverse();
    let second =
        SplitUnet::load(&runtime, &tiny_unet(), &reversed, &options(cache.path())).unwrap();
    assert_eq!(second.cache_status(), CacheStatus::Hit);
    assert_eq!(second.manifest().dir, manifest.dir);
    let again: Vec<_> = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().modified().unwrap())
        .collect();
    assert_eq!(mtimes, again, "part files were rewritten");
    // A different set is a different cut in the same model folder, sharing the weights.
    let other = SplitUnet::load(&runtime, &tiny_unet(), &cut[..1], &options(cache.path())).unwrap();
    assert_eq!(other.cache_status(), CacheStatus::Built);
    assert_eq!(other.manifest().dir, manifest.dir);
    assert_ne!(other.manifest().parts[0].file, manifest.parts[0].file);
    let weights: Vec<_> = std::fs::read_dir(&manifest.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".bin"))
        .collect();
    assert_eq!(weights.len(), 1, "one weights file per model");
}

#[test]
fn the_shared_batch_size_of_cross_attention_is_recomputed_not_passed() {
    // The exporter computes Shape(encoder_hidden_states)[0] once, inside the first attn2,
    // and every later attn2 reads it from there.
    let cache = tempfile::tempdir().unwrap();
    let blocks = transformer_blocks(&tiny_unet()).unwrap();
    let cut = components(&blocks, |_, k| k == ComponentKind::Attn2);
    let (manifest, _) =
        onnx::prepare_split(&tiny_unet(), &cut, &options(cache.path()), None).unwrap();
    let first_attn2 = "/down_blocks.0/attentions.0/transformer_blocks.0/attn2/Gather_output_0";
    assert!(
        manifest
            .recomputed
            .iter()
            .any(|r| r.starts_with(first_attn2)),
        "{:#?}",
        manifest.recomputed
    );
    for part in &manifest.parts {
        assert!(
            !part.outputs.iter().any(|o| o == first_attn2),
            "{} passes {first_attn2}",
            part.file
        );
        if let onnx::PartKind::Component { input, .. } = &part.kind {
            let others: Vec<&String> = part
                .inputs
                .iter()
                .filter(|i| *i != input && *i != "encoder_hidden_states")
                .collect();
            assert!(others.is_empty(), "{} also reads {others:?}", part.file);
        }
    }
}

/// A copy of the tiny UNet with the nodes of one component renamed.
fn renamed_copy(dir: &Path, from: &str, to: &str) -> PathBuf {
    let mut model = onnx::read_model(&tiny_unet()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    for node in &mut graph.node {
        node.name = node.name.replace(from, to);
    }
    let path = dir.join("model.onnx");
    onnx::write_model(&model, &path).unwrap();
    path
}

#[test]
fn a_missing_component_is_an_error_naming_it() {
    let runtime = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let block = "/down_blocks.0/attentions.0/transformer_blocks.0";
    let model = renamed_copy(
        dir.path(),
        &format!("{block}/attn1/"),
        &format!("{block}/self_attention/"),
    );
    let blocks = transformer_blocks(&tiny_unet()).unwrap();
    let cut = vec![blocks[0].component(ComponentKind::Attn1).unwrap()];
    let err = SplitUnet::load(&runtime, &model, &cut, &options(dir.path()))
        .err()
        .expect("no attn1 to cut")
        .to_string();
    assert!(err.contains(&format!("`{block}/attn1/...`")), "{err}");
    assert!(
        err.contains("down_blocks.0.attentions.0.transformer_blocks.0 [attn2, ff]"),
        "{err}"
    );

    let vae = common::tiny_model().join("vae_decoder/model.onnx");
    let err = onnx::prepare_split(&vae, &cut, &options(dir.path()), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no transformer blocks at all"), "{err}");
}

#[test]
fn a_component_without_its_norm_is_an_error() {
    let runtime = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let block = "/down_blocks.0/attentions.0/transformer_blocks.0";
    let model = renamed_copy(
        dir.path(),
        &format!("{block}/norm2/"),
        &format!("{block}/norm_b/"),
    );
    let blocks = transformer_blocks(&tiny_unet()).unwrap();
    let cut = vec![blocks[0].component(ComponentKind::Attn2).unwrap()];
    let err = SplitUnet::load(&runtime, &model, &cut, &options(dir.path()))
        .err()
        .expect("attn2 has no norm2")
        .to_string();
    assert!(
        err.contains("down_blocks.0.attentions.0.transformer_blocks.0.attn2"),
        "{err}"
    );
    assert!(err.contains(&format!("`{block}/norm2/...`")), "{err}");
}

/// The tiny UNet with its weights in an external data file, as large exports store them.
fn external_data_copy(dir: &Path) -> PathBuf {
    use tomex::onnx::proto::{tensor_proto::DataLocation, StringStringEntryProto};
    let mut model = onnx::read_model(&tiny_unet()).unwrap();
    let mut data: Vec<u8> = Vec::new();
    for t in &mut model.graph.as_mut().unwrap().initializer {
        if t.raw_data.len() < 256 {
            continue;
        }
        let raw = std::mem::take(&mut t.raw_data);
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: k.into(),
            value: v,
            ..Default::default()
        };
        t.external_data = vec![
            entry("location", "weights.pb".into()),
            entry("offset", data.len().to_string()),
            entry("length", raw.len().to_string()),
        ];
        t.data_location = DataLocation::EXTERNAL.into();
        data.extend(raw);
    }
    std::fs::write(dir.join("weights.pb"), &data).unwrap();
    let path = dir.join("model.onnx");
    onnx::write_model(&model, &path).unwrap();
    path
}

#[test]
fn external_weights_are_linked_not_copied() {
    let model_dir = tempfile::tempdir().unwrap();
    let model = external_data_copy(model_dir.path());
    let weights = model_dir.path().join("weights.pb");
    let data_len = std::fs::metadata(&weights).unwrap().len();
    assert!(std::fs::metadata(&model).unwrap().len() * 2 < data_len);

    let blocks = transformer_blocks(&model).unwrap();
    let cut = components(&blocks, |_, _| true);
    assert_split_matches(&model, &cut, &[(1, 8, 8), (2, 7, 9)]);

    let cache = tempfile::tempdir().unwrap();
    let (manifest, _) = onnx::prepare_split(&model, &cut, &options(cache.path()), None).unwrap();
    assert_eq!(manifest.data_files.len(), 1);
    let linked = manifest.dir.join(&manifest.data_files[0].location);
    assert!(!manifest.data_files[0].copied);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (
            std::fs::metadata(&weights).unwrap(),
            std::fs::metadata(&linked).unwrap(),
        );
        assert_eq!(
            (a.dev(), a.ino()),
            (b.dev(), b.ino()),
            "a hard link, not a copy"
        );
    }
    let parts: u64 = manifest
        .parts
        .iter()
        .map(|p| std::fs::metadata(manifest.part_path(p)).unwrap().len())
        .sum();
    assert!(
        parts < data_len / 2,
        "part files hold weights: {parts} bytes"
    );
    let names: Vec<String> = std::fs::read_dir(&manifest.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".bin")), "{names:?}");

    // The model's data file replaced by a new one: the link follows on the next load.
    std::fs::remove_file(&weights).unwrap();
    std::fs::copy(&linked, &weights).unwrap();
    let (again, status) = onnx::prepare_split(&model, &cut, &options(cache.path()), None).unwrap();
    assert_eq!(status, CacheStatus::Hit);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let linked = again.dir.join(&again.data_files[0].location);
        let (a, b) = (
            std::fs::metadata(&weights).unwrap(),
            std::fs::metadata(&linked).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "re-linked to the new file");
    }
}

/// Time per call of the split UNet against the whole graph (no-op hooks), for
/// `SPLIT_BENCH_MODEL` (default: the tiny UNet) at `SPLIT_BENCH_HW` (8) with
/// `SPLIT_BENCH_CTX` (32) text channels, batch 2, `SPLIT_BENCH_ITERS` (20) interleaved
/// calls. Run with `cargo test --release --test split_unet -- --ignored --nocapture`.
#[test]
#[ignore]
fn overhead_against_the_whole_graph() {
    let var = |k: &str, d: usize| std::env::var(k).map_or(d, |v| v.parse().unwrap());
    let model = std::env::var_os("SPLIT_BENCH_MODEL").map_or_else(tiny_unet, PathBuf::from);
    let (hw, ctx, iters) = (
        var("SPLIT_BENCH_HW", 8),
        var("SPLIT_BENCH_CTX", 32),
        var("SPLIT_BENCH_ITERS", 20),
    );
    let runtime = common::runtime();
    let cache = tempfile::tempdir().unwrap();
    let blocks = transformer_blocks(&model).unwrap();
    let cuts = [
        (
            "attn1 at level 0",
            components(&blocks, |b, k| b.level == 0 && k == ComponentKind::Attn1),
        ),
        ("all components", components(&blocks, |_, _| true)),
    ];
    let mut whole = Unet::load(&runtime, &model).unwrap();
    let mut splits: Vec<(&str, SplitUnet)> = cuts
        .into_iter()
        .map(|(name, cut)| {
            (
                name,
                SplitUnet::load(&runtime, &model, &cut, &options(cache.path())).unwrap(),
            )
        })
        .collect();
    let sample = Array4::from_shape_vec((2, 4, hw, hw), values(2 * 4 * hw * hw, 1)).unwrap();
    let hidden = Array3::from_shape_vec((2, 77, ctx), values(2 * 77 * ctx, 2)).unwrap();
    let mut times = vec![Vec::new(); 1 + splits.len()];
    for _ in 0..iters {
        let t = std::time::Instant::now();
        whole.predict(&sample, 500.0, &hidden).unwrap();
        times[0].push(t.elapsed().as_secs_f64());
        for (i, (_, split)) in splits.iter_mut().enumerate() {
            let t = std::time::Instant::now();
            split
                .predict(&sample, 500.0, &hidden, &mut NoHooks)
                .unwrap();
            times[i + 1].push(t.elapsed().as_secs_f64());
        }
    }
    for t in &mut times {
        t.sort_by(f64::total_cmp);
    }
    let median = |t: &Vec<f64>| t[t.len() / 2];
    let (base, base_min) = (median(&times[0]), times[0][0]);
    println!(
        "{}: whole graph median {:.2} ms, min {:.2} ms",
        model.display(),
        base * 1e3,
        base_min * 1e3
    );
    for (i, (name, split)) in splits.iter().enumerate() {
        let (m, n) = (median(&times[i + 1]), times[i + 1][0]);
        println!(
            "{name} ({} parts): median {:.2} ms ({:+.1}%), min {:.2} ms ({:+.1}%)",
            split.manifest().parts.len(),
            m * 1e3,
            (m / base - 1.0) * 100.0,
            n * 1e3,
            (n / base_min - 1.0) * 100.0
        );
    }
}

/// A weight file that is a symlink resolving outside the model's folder is refused, as
/// ONNX Runtime refuses it, instead of being linked or copied into the split cache.
#[test]
fn external_weights_linked_from_outside_the_model_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let model_dir = tempfile::tempdir().unwrap();
    let model = external_data_copy(model_dir.path());
    let weights = model_dir.path().join("weights.pb");
    std::fs::rename(&weights, outside.path().join("weights.pb")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("weights.pb"), &weights).unwrap();
    let blocks = transformer_blocks(&model).unwrap();
    let cut = components(&blocks, |_, _| true);
    let cache = tempfile::tempdir().unwrap();
    let err = onnx::prepare_split(&model, &cut, &options(cache.path()), None)
        .unwrap_err()
        .detail();
    assert!(err.contains("outside the model's folder; refused"), "{err}");
    // Inside the model, a symlink is fine.
    std::fs::remove_file(&weights).unwrap();
    std::fs::create_dir(model_dir.path().join("data")).unwrap();
    std::fs::rename(
        outside.path().join("weights.pb"),
        model_dir.path().join("data/weights.pb"),
    )
    .unwrap();
    std::os::unix::fs::symlink(model_dir.path().join("data/weights.pb"), &weights).unwrap();
    onnx::prepare_split(&model, &cut, &options(cache.path()), None).unwrap();
}
