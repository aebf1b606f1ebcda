//! Whole images from the tiny model against diffusers' `StableDiffusionPipeline`
//! (golden/images, made by tools/golden_images.py).
//!
//! Tolerance: at most 1 of 255 at any pixel. ONNX Runtime and torch order float
//! sums differently, so the decoded floats differ by ~1e-6; a value that lands near
//! a rounding boundary of ×255 then rounds to the neighbouring level. More than 1
//! would mean a real difference (noise, scheduler, guidance or tokenizer).

mod common;

use std::path::Path;

use tomex::diffusion::pipeline::StableDiffusion;
use tomex::model::ModelDir;

/// Largest per-channel difference and how many channels differ at all.
fn compare(ours: &image::RgbImage, reference: &Path) -> (u8, usize) {
    let theirs = image::open(reference).unwrap().to_rgb8();
    assert_eq!(
        ours.dimensions(),
        theirs.dimensions(),
        "{}",
        reference.display()
    );
    let diffs = ours
        .as_raw()
        .iter()
        .zip(theirs.as_raw())
        .map(|(a, b)| a.abs_diff(*b));
    diffs.fold((0, 0), |(max, n), d| (max.max(d), n + usize::from(d > 0)))
}

fn check_model(model: &Path, schedulers: Option<&[&str]>) {
    let index = common::read_json(&common::golden("images/index.json"));
    let runtime = common::runtime();
    let mut sd = StableDiffusion::load(&runtime, &ModelDir::open(model).unwrap()).unwrap();
    let mut report = Vec::new();
    let mut worst = 0;
    for case in index.as_array().unwrap() {
        let scheduler = case["scheduler"].as_str().unwrap();
        if schedulers.is_some_and(|s| !s.contains(&scheduler)) {
            continue;
        }
        let (image, _) = sd.generate(&common::golden_request(case, None)).unwrap();
        let file = case["file"].as_str().unwrap();
        let (max, count) = compare(&image, &common::golden("images").join(file));
        report.push(format!("{file}: max diff {max}, {count} channels differ"));
        worst = worst.max(max);
    }
    assert!(!report.is_empty());
    eprintln!("{}", report.join("\n"));
    assert!(
        worst <= 1,
        "images differ from diffusers by more than 1/255:\n{}",
        report.join("\n")
    );
}

#[test]
fn tiny_model_images_match_diffusers() {
    check_model(&common::tiny_model(), None);
}

/// The same weights exported with int64 input ids and a float timestep vector give
/// the same images: tomex adapts to the graph's declared input types.
/// (With a float timestep, Euler's fractional timesteps reach the UNet unrounded,
/// so those images match diffusers exactly too.)
#[test]
fn other_export_conventions_give_the_same_images() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&common::tiny_model(), dir.path());
    let variant = common::repo().join("tests/fixtures/tiny_variant");
    for part in ["text_encoder/model.onnx", "unet/model.onnx"] {
        std::fs::copy(variant.join(part), dir.path().join(part)).unwrap();
    }
    check_model(dir.path(), None);
}
