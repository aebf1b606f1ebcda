//! A tiny SDXL pipeline (tools/make_tiny_sdxl.py: two text encoders, `text_embeds` and
//! `time_ids`, no attention at the full-resolution level, several transformer layers per
//! block, SDXL base's Euler config and `force_zeros_for_empty_prompt`), exported by
//! optimum's exporter (tests/fixtures/tiny_sdxl), against diffusers + tomesd 0.1.3 on the
//! diffusers folder it came from (golden/sdxl, made by tools/golden_sdxl.py).
//!
//! Tolerances are the tiny SD 1.x model's (tests/golden_images.rs, tests/tome_golden.rs):
//! at most 1 of 255 per channel without ToMe (ONNX Runtime and torch sum floats in other
//! orders; a value next to a rounding boundary of x255 lands on the neighbouring level),
//! at most 2 with ToMe (the merged tokens' means add their own rounding).

mod common;

use std::path::PathBuf;

use tomex::diffusion::pipeline::{ModelDefaults, StableDiffusion};
use tomex::diffusion::scheduler::SchedulerKind;
use tomex::model::ModelDir;

fn fixture() -> PathBuf {
    common::repo().join("tests/fixtures/tiny_sdxl")
}

#[test]
fn sdxl_defaults_are_the_models_own() {
    let model = ModelDir::open(&fixture()).unwrap();
    assert!(model.is_xl());
    assert!(model.force_zeros_for_empty_prompt);
    let defaults = ModelDefaults::of(&model).unwrap();
    // SDXL's scheduler config names Euler; sample_size 16 x 8 (SDXL base: 128 x 8 = 1024).
    assert_eq!(defaults.scheduler().unwrap(), SchedulerKind::Euler);
    assert_eq!(defaults.size, 128);
}

#[test]
fn sdxl_images_match_diffusers_and_tomesd() {
    let golden = common::golden("sdxl");
    let index = common::read_json(&golden.join("index.json"));
    let runtime = common::runtime();
    let model = ModelDir::open(&fixture()).unwrap();
    let mut sd = StableDiffusion::load(&runtime, &model).unwrap();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for case in index["cases"].as_array().unwrap() {
        let file = case["file"].as_str().unwrap();
        let config = case.get("tome").map(common::golden_tome);
        let bound = if config.is_some() { 2 } else { 1 };
        let request = common::golden_request(case, config);
        // tomesd's default max_downsample = 1 merges nothing on SDXL, and tomex says so.
        let merges_nothing = sd.tome_merges_nothing(&request).unwrap();
        let md1 = config.is_some_and(|c| c.max_downsample == 1);
        assert_eq!(merges_nothing.is_some(), md1, "{file}: {merges_nothing:?}");
        let (image, _) = sd.generate(&request).unwrap();
        let diff = common::max_pixel_diff(&image, &golden.join(file));
        report.push(format!("{file}: max diff {diff} (bound {bound})"));
        if diff > bound {
            failures.push(file.to_string());
        }
    }
    eprintln!("{}", report.join("\n"));
    assert_eq!(report.len(), 8, "every golden case ran");
    assert!(failures.is_empty(), "{failures:?}\n{}", report.join("\n"));
}

/// A VAE config with per-channel latent statistics (`latents_mean`, `latents_std`: set
/// in a copy of the fixture, the graphs unchanged) is decoded as diffusers' SDXL pipeline
/// decodes it, `latents * std / scaling_factor + mean`. Bound 1/255 as above; without the
/// statistics the image is farther off than that. Statistics of the wrong length are a
/// clear error naming the file.
#[test]
fn sdxl_latent_statistics_are_undone_before_decoding() {
    let golden = common::golden("sdxl");
    let index = common::read_json(&golden.join("index.json"));
    let case = &index["latents_stats"];
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny_sdxl");
    common::copy_dir(&fixture(), &model_dir);
    let config_path = model_dir.join("vae_decoder/config.json");
    let mut config = common::read_json(&config_path);
    config["latents_mean"] = case["latents_mean"].clone();
    config["latents_std"] = case["latents_std"].clone();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let runtime = common::runtime();
    let request = common::golden_request(case, None);
    let file = golden.join(case["file"].as_str().unwrap());
    let model = ModelDir::open(&model_dir).unwrap();
    let mut sd = StableDiffusion::load(&runtime, &model).unwrap();
    let diff = common::max_pixel_diff(&sd.generate(&request).unwrap().0, &file);
    assert!(diff <= 1, "{}: max diff {diff} (bound 1)", file.display());
    let plain = ModelDir::open(&fixture()).unwrap();
    let mut sd = StableDiffusion::load(&runtime, &plain).unwrap();
    let without = common::max_pixel_diff(&sd.generate(&request).unwrap().0, &file);
    assert!(without > 1, "the statistics change nothing ({without})");

    config["latents_std"] = serde_json::json!([1.0, 1.0, 1.0]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = ModelDir::open(&model_dir).unwrap();
    let err = match StableDiffusion::load(&runtime, &model) {
        Ok(_) => panic!("statistics of the wrong length were accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("vae_decoder/config.json") && err.contains("`latents_std` 3 numbers"),
        "{err}"
    );
}

/// `tomex generate --model <sdxl export> --prompt P --seed S` and nothing else is
/// diffusers' `StableDiffusionXLPipeline(prompt, generator=...)`: 50 Euler steps,
/// guidance 5.0, the model's size, zeroed negative conditioning. Bound 1/255 as above.
#[test]
fn sdxl_generate_without_flags_is_the_pipelines_defaults() {
    let golden = common::golden("sdxl");
    let index = common::read_json(&golden.join("index.json"));
    let case = index["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["all_defaults"] == true)
        .expect("golden_sdxl.py writes an all-defaults case");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("defaults.png");
    let o = common::tomex_command()
        .args(["generate", "--model"])
        .arg(fixture())
        .args(["--prompt", case["prompt"].as_str().unwrap()])
        .args(["--seed", &case["seed"].to_string()])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    common::succeeded(o);
    let image = image::open(&out).unwrap().to_rgb8();
    let file = golden.join(case["file"].as_str().unwrap());
    let diff = common::max_pixel_diff(&image, &file);
    assert!(diff <= 1, "{}: max diff {diff} (bound 1)", file.display());
}

/// The UNet's added conditions reach every path: one evaluation of golden/sdxl/unet with
/// the whole graph (float32 and float16), the split graph at r = 0, and ToMe
/// (`max_downsample = 2`, self, cross and MLP) with host and graph token ops.
///
/// Bounds: relative L2 at most 1e-4 in float32, tome_golden.rs's bound for UNet
/// evaluations (ONNX Runtime and torch differ by ~1e-6; ToMe moves this output by 4e-2,
/// so a wrong merge or a missing added condition fails). Float16 at most 3e-3 and more
/// than 1e-5 (in effect): tome_golden.rs's float16 bound on the SD 1.x UNet is 1e-3 per
/// evaluation; SDXL's added embedding adds one more float16 MLP.
#[test]
fn sdxl_unet_paths_carry_the_added_conditions() {
    use ndarray::{Array3, Array4, Ix2, Ix3, Ix4};
    use tomex::engine::{AddedConditions, Conditioning, TokenOps, TomeUnet, Unet};
    use tomex::onnx::{Precision, SplitOptions};
    use tomex::tome::PartitionRng;

    let golden = common::golden("sdxl");
    let index = common::read_json(&golden.join("index.json"));
    let unet_case = &index["unet"];
    let tensor = |name: &str| {
        let t = &unet_case["tensors"][name];
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        common::read_f32(&golden.join(t["file"].as_str().unwrap()), &shape)
    };
    let sample: Array4<f32> = tensor("sample").into_dimensionality::<Ix4>().unwrap();
    let hidden: Array3<f32> = tensor("encoder_hidden_states")
        .into_dimensionality::<Ix3>()
        .unwrap();
    let added = AddedConditions {
        text_embeds: tensor("text_embeds").into_dimensionality::<Ix2>().unwrap(),
        time_ids: tensor("time_ids").into_dimensionality::<Ix2>().unwrap(),
    };
    let cond = Conditioning::new(&hidden, Some(&added));
    let (plain, merged) = (tensor("unpatched_out"), tensor("tome_out"));
    let t = unet_case["timestep"].as_f64().unwrap() as f32;
    let tome = common::golden_tome(&unet_case["tome"]);

    let tmp = tempfile::tempdir().unwrap();
    let runtime = common::runtime();
    let path = fixture().join("unet/model.onnx");
    let options = |precision| SplitOptions {
        cache_root: tmp.path().to_path_buf(),
        model_digest: None,
        precision,
        ..Default::default()
    };
    let mut report = Vec::new();
    let mut check = |name: &str, got: Array4<f32>, want: &ndarray::ArrayD<f32>, bound: f64| {
        let err = common::rel_l2(&got.into_dyn(), want);
        report.push(format!("{name}: relative L2 {err:.2e} (bound {bound:.0e})"));
        err
    };

    let mut whole = Unet::prepare(&runtime, &path, &options(Precision::Fp32))
        .unwrap()
        .0;
    let err = check(
        "whole",
        whole.predict(&sample, t, cond).unwrap(),
        &plain,
        1e-4,
    );
    assert!(err <= 1e-4, "{report:?}");
    // Without the added conditions the UNet says what it lacks.
    let message = whole.predict(&sample, t, &hidden).unwrap_err().to_string();
    assert!(message.contains("text_embeds"), "{message}");

    for ops in [TokenOps::Host, TokenOps::Graph] {
        let mut split = TomeUnet::load(&runtime, &path, options(Precision::Fp32)).unwrap();
        split.set_token_ops(ops).unwrap();
        let zero = tomex::tome::TomeConfig { ratio: 0.0, ..tome };
        let cut = split.cut_for((16, 16), &tome).unwrap();
        assert!(!cut.is_empty(), "max_downsample 2 cuts the 8x8 level");
        let mut rng = PartitionRng::new(0);
        let out = split
            .predict_with_cut(&sample, t, cond, &zero, &mut rng, cut)
            .unwrap();
        let err = check(&format!("split r = 0, {ops:?}"), out, &plain, 1e-4);
        assert!(err <= 1e-4, "{report:?}");
        let mut rng = PartitionRng::new(0);
        let out = split.predict(&sample, t, cond, &tome, &mut rng).unwrap();
        let err = check(&format!("ToMe, {ops:?} token ops"), out, &merged, 1e-4);
        assert!(err <= 1e-4, "{report:?}");
    }

    let mut half = Unet::prepare(&runtime, &path, &options(Precision::Fp16))
        .unwrap()
        .0;
    let err = check(
        "whole, float16",
        half.predict(&sample, t, cond).unwrap(),
        &plain,
        3e-3,
    );
    assert!(err <= 3e-3 && err > 1e-5, "{report:?}");
    eprintln!("{}", report.join("\n"));
}
