//! A tiny SD 2.x pipeline (tools/make_tiny_sd2.py: per-level heads, linear projections,
//! upcast attention, `!` padding, SD 2.1's DDIM v-prediction config), exported by
//! optimum's exporter (tests/fixtures/tiny_sd2), against diffusers + tomesd 0.1.3 on the
//! diffusers folder it came from (golden/sd2, made by tools/golden_sd2.py): v-prediction
//! and epsilon, the model's own scheduler (as diffusers' pipeline defaults it) and
//! explicit ones, ToMe, and a 72x40 image whose latent the UNet's downsampling does not
//! divide.
//!
//! Tolerances are the tiny SD 1.x model's (tests/golden_images.rs, tests/tome_golden.rs):
//! at most 1 of 255 per channel without ToMe (ONNX Runtime and torch sum floats in other
//! orders; a value next to a rounding boundary of x255 lands on the neighbouring level),
//! at most 2 with ToMe (the merged tokens' means add their own rounding).

mod common;

use std::path::{Path, PathBuf};

use tomex::diffusion::pipeline::{ModelDefaults, StableDiffusion};
use tomex::diffusion::scheduler::SchedulerKind;
use tomex::model::ModelDir;

fn fixture() -> PathBuf {
    common::repo().join("tests/fixtures/tiny_sd2")
}

/// The fixture with `prediction_type` set to epsilon (SD 2.0-base, 2.1-base).
fn epsilon_copy(dir: &Path) -> PathBuf {
    let model = dir.join("tiny_sd2_epsilon");
    common::copy_dir(&fixture(), &model);
    let config = model.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\"v_prediction\""));
    std::fs::write(&config, text.replace("\"v_prediction\"", "\"epsilon\"")).unwrap();
    model
}

#[test]
fn sd2_images_match_diffusers_and_tomesd() {
    let golden = common::golden("sd2");
    let index = common::read_json(&golden.join("index.json"));
    let tmp = tempfile::tempdir().unwrap();
    let models = [
        ("v_prediction", fixture()),
        ("epsilon", epsilon_copy(tmp.path())),
    ];
    let runtime = common::runtime();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (prediction, path) in &models {
        let model = ModelDir::open(path).unwrap();
        // diffusers' pipeline runs the class scheduler_config.json names: SD 2.1's DDIM.
        let own = ModelDefaults::of(&model).unwrap().scheduler().unwrap();
        assert_eq!(own, SchedulerKind::Ddim);
        let mut sd = StableDiffusion::load(&runtime, &model).unwrap();
        for case in index["cases"].as_array().unwrap() {
            if case["prediction_type"] != *prediction {
                continue;
            }
            let file = case["file"].as_str().unwrap();
            let config = case.get("tome").map(common::golden_tome);
            let bound = if config.is_some() { 2 } else { 1 };
            let mut request = common::golden_request(case, config);
            if case["model_default_scheduler"] == true {
                request.scheduler = own;
            }
            let (image, _) = sd.generate(&request).unwrap();
            let diff = common::max_pixel_diff(&image, &golden.join(file));
            report.push(format!("{file}: max diff {diff} (bound {bound})"));
            if diff > bound {
                failures.push(file.to_string());
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert_eq!(report.len(), 6, "every golden case ran");
    assert!(failures.is_empty(), "{failures:?}\n{}", report.join("\n"));
}
