//! The trained demo model (models/demo: optimum's export of tools/demo/diffusers) against
//! diffusers + tomesd 0.1.3 on the diffusers folder it came from (golden/demo, made by
//! tools/golden_demo.py): 20 PNDM steps at 256x256, and at 200x136 and 136x200, whose
//! latents the UNet's downsampling does not divide (diffusers' `upsample_size`; tomex's
//! rewrite in src/onnx/upsample.rs), one of them with ToMe.
//!
//! Tolerances are the tiny model's (tests/golden_images.rs, tests/tome_golden.rs): at
//! most 1 of 255 per channel without ToMe (ONNX Runtime and torch sum floats in other
//! orders, ~1e-6 relative, and a value next to a rounding boundary of x255 lands on the
//! neighbouring level), at most 2 of 255 with ToMe (the merged tokens' means add their
//! own rounding). Each ToMe golden differs from the same image made without ToMe by more
//! than 2, so the bound tells merged from unmerged.
//!
//! With ToMe, one patch may go beyond 2: on the trained model's flat backgrounds many src
//! tokens have near-equal best-match scores, and where two straddle the r-th place within
//! the float summation difference, which one is merged depends on the order of the sums.
//! diffusers + tomesd itself does this between torch's thread counts, so
//! tools/golden_demo.py keeps only seeds whose ToMe image torch makes alike on 1 and 2
//! threads (it fails on the others: with a sixth training run's model, not kept, 4 of 12
//! seeds of case 03 moved thousands of values by up to 26). A ToMe image may still differ by up to 8 in at
//! most 0.1% of its values (`FLIP_PATCH_*`), for a tie this machine's sums do not show,
//! and by at most 2 everywhere else.

mod common;

use std::path::PathBuf;

use tomex::diffusion::pipeline::StableDiffusion;
use tomex::model::{DigestCache, ModelDir, ModelsLock};

fn demo_model() -> PathBuf {
    common::repo().join("models/demo")
}

#[test]
fn demo_images_match_diffusers_and_tomesd() {
    let dir = common::golden("demo");
    let index = common::read_json(&dir.join("index.json"));
    let mut sd =
        StableDiffusion::load(&common::runtime(), &ModelDir::open(&demo_model()).unwrap()).unwrap();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let cases = index["cases"].as_array().unwrap();
    assert!(cases.iter().any(|c| c.get("tome").is_some()));
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let config = case.get("tome").map(common::golden_tome);
        let bound = if config.is_some() { 2 } else { 1 };
        let (image, _) = sd.generate(&common::golden_request(case, config)).unwrap();
        let diff = common::max_pixel_diff(&image, &dir.join(file));
        let beyond = values_beyond(&image, &dir.join(file), bound);
        let total = image.as_raw().len();
        report.push(format!(
            "{file}: max diff {diff} (bound {bound}), {beyond} of {total} values beyond it"
        ));
        let flip_patch = config.is_some()
            && diff <= FLIP_PATCH_MAX
            && beyond as f64 <= FLIP_PATCH_SHARE * total as f64;
        if diff > bound && !flip_patch {
            failures.push(file.to_string());
        }
        if let Some(unpatched) = case.get("unpatched_file") {
            let (plain, _) = sd.generate(&common::golden_request(case, None)).unwrap();
            let unpatched = dir.join(unpatched.as_str().unwrap());
            let same = common::max_pixel_diff(&plain, &unpatched);
            let moved = common::max_pixel_diff(&plain, &dir.join(file));
            report.push(format!(
                "  without ToMe: {same} from diffusers' unpatched image, {moved} from the ToMe golden"
            ));
            if same > 1 || moved <= 2 {
                failures.push(format!("{file} (unpatched twin)"));
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{failures:?}\n{}", report.join("\n"));
}

/// A ToMe image's allowance for a merge decided differently at a near-tie (module doc).
const FLIP_PATCH_MAX: u8 = 8;
const FLIP_PATCH_SHARE: f64 = 0.001;

/// How many channel values of `ours` differ from the PNG at `reference` by more than `bound`.
fn values_beyond(ours: &image::RgbImage, reference: &std::path::Path, bound: u8) -> usize {
    let theirs = image::open(reference).unwrap().to_rgb8();
    ours.as_raw()
        .iter()
        .zip(theirs.as_raw())
        .filter(|(a, b)| a.abs_diff(**b) > bound)
        .count()
}

/// The demo model and its FID network are pinned in models.lock, and the files there
/// are the ones pinned; all weights together stay under 25 MB.
#[test]
fn demo_model_is_pinned_and_small() {
    let lock = ModelsLock::load(&common::repo().join("models.lock")).unwrap();
    for name in ["demo", "demo-fid"] {
        let mut cache = DigestCache::in_memory();
        let problems = lock.verify(name, &mut cache).unwrap();
        assert!(problems.is_empty(), "{name}: {problems:?}");
    }
    let mut weights = 0;
    for part in ["text_encoder", "unet", "vae_decoder", "vae_encoder"] {
        let path = demo_model().join(part).join("model.onnx");
        weights += std::fs::metadata(&path).unwrap().len();
    }
    assert!(weights < 25_000_000, "{weights} bytes of weights");
}
