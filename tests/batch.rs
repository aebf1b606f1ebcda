//! Several images in one pipeline call (`StableDiffusion::generate_batch`, a spec's
//! `batch_size`, `generate --prompt … --images-per-prompt`) against each image made
//! alone.
//!
//! Bound: identical pixels. Each image starts from its own seed's noise and ToMe's
//! partitions are drawn once per UNet call for the whole batch (tomesd's `rand_idx`),
//! and ONNX Runtime's CPU kernels (MLAS's GEMMs and convolutions, tomex's flash kernel
//! and token ops) compute each batch row with the same sums whatever the batch, so the
//! math allows no difference. A GPU's kernels may pick other algorithms per batch size;
//! there the bound would be the 1/255 of the images against diffusers
//! (tests/golden_images.rs).

mod common;

use std::path::Path;

use tomex::diffusion::pipeline::{Request, StableDiffusion};
use tomex::model::ModelDir;
use tomex::tome::{Targets, TomeConfig};

fn request(prompt: &str, seed: u64, tome: Option<TomeConfig>) -> Request {
    Request {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        seed,
        steps: 8,
        guidance: 7.5,
        width: 64,
        height: 48,
        scheduler: "pndm".parse().unwrap(),
        tome,
    }
}

fn differences(a: &image::RgbImage, b: &image::RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .fold((0, 0), |(max, n), d| (max.max(d), n + usize::from(d > 0)))
}

/// Each image of `requests` made in one batch and alone: the largest difference.
fn batch_against_alone(model: &Path, requests: &[Request]) -> u8 {
    let runtime = common::runtime();
    let mut sd = StableDiffusion::load(&runtime, &ModelDir::open(model).unwrap()).unwrap();
    let (batch, _) = sd.generate_batch(requests).unwrap();
    assert_eq!(batch.len(), requests.len());
    let mut worst = 0;
    for (i, (r, in_batch)) in requests.iter().zip(&batch).enumerate() {
        let (alone, _) = sd.generate(r).unwrap();
        let (max, count) = differences(in_batch, &alone);
        eprintln!(
            "image {i} ({:?}, seed {}): max diff {max}, {count} channels differ",
            r.prompt, r.seed
        );
        worst = worst.max(max);
    }
    worst
}

fn tome(ratio: f64, random: bool) -> Option<TomeConfig> {
    Some(TomeConfig {
        ratio,
        targets: Targets {
            self_attn: true,
            cross_attn: true,
            mlp: false,
        },
        sx: 2,
        sy: 2,
        random,
        seed: 7,
        max_downsample: 1,
    })
}

#[test]
fn each_image_of_a_batch_is_its_own_call() {
    let requests = [
        request("a photo of an astronaut riding a horse on mars", 0, None),
        request("a cozy cabin in the snowy woods", 4_294_967_295, None),
        request("a bowl of soup", 42, None),
    ];
    let worst = batch_against_alone(&common::tiny_model(), &requests);
    assert_eq!(worst, 0, "a batch changed an image by {worst}/255");
}

/// With ToMe's random partitions: one draw per UNet call serves the whole batch, as
/// tomesd's `rand_idx`, so each image sees the partitions it sees alone.
#[test]
fn a_batch_with_random_tome_partitions_is_each_image_alone() {
    for random in [true, false] {
        let requests = [
            request("a red fox", 1, tome(0.5, random)),
            request("a blue whale", 2, tome(0.5, random)),
        ];
        let worst = batch_against_alone(&common::tiny_model(), &requests);
        assert!(
            worst <= 1,
            "random {random}: a batch changed an image by {worst}/255"
        );
    }
}

/// SDXL's zeroed unconditional half (an empty negative prompt with the model's
/// `force_zeros_for_empty_prompt`) covers the whole batch.
#[test]
fn sdxl_batches_zero_the_unconditional_half_for_every_image() {
    let model = common::repo().join("tests/fixtures/tiny_sdxl");
    let mut requests = [
        request("a red fox", 1, None),
        request("a blue whale", 2, None),
    ];
    for r in &mut requests {
        r.scheduler = "euler".parse().unwrap();
        r.guidance = 5.0;
    }
    let worst = batch_against_alone(&model, &requests);
    assert_eq!(worst, 0, "a batch changed an image by {worst}/255");

    // An empty negative for one image only cannot be said to diffusers (None zeroes all).
    requests[1].negative_prompt = "blurry".into();
    let runtime = common::runtime();
    let mut sd = StableDiffusion::load(&runtime, &ModelDir::open(&model).unwrap()).unwrap();
    let err = sd.generate_batch(&requests).unwrap_err().to_string();
    assert!(err.contains("all empty or all given"), "{err}");
}

#[test]
fn a_batch_must_share_everything_but_prompt_negative_and_seed() {
    let runtime = common::runtime();
    let mut sd =
        StableDiffusion::load(&runtime, &ModelDir::open(&common::tiny_model()).unwrap()).unwrap();
    let mut other = request("b", 2, None);
    other.steps = 9;
    let err = sd
        .generate_batch(&[request("a", 1, None), other])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("must share steps, guidance, size, scheduler and ToMe"),
        "{err}"
    );
    assert!(sd.generate_batch(&[]).is_err());
}

/// `tomex generate` with two prompts, two images each: four files in batch order,
/// each the image `generate` makes for its prompt and seed alone.
#[test]
fn generate_writes_a_batch_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model();
    let base = |cmd: &mut std::process::Command| {
        cmd.args(["generate", "--model"])
            .arg(&model)
            .args(["--steps", "4", "--width", "64", "--height", "64"]);
    };
    let mut batch = common::tomex_command();
    base(&mut batch);
    let out = common::succeeded(
        batch
            .args(["--prompt", "a red fox", "--prompt", "a clock"])
            .args(["--images-per-prompt", "2", "--seed", "10", "--out"])
            .arg(dir.path().join("b.png"))
            .output()
            .unwrap(),
    );
    assert!(out.contains("for 4 images"), "{out}");
    for (i, (prompt, seed)) in [
        ("a red fox", 10),
        ("a red fox", 11),
        ("a clock", 12),
        ("a clock", 13),
    ]
    .into_iter()
    .enumerate()
    {
        let alone = dir.path().join(format!("alone-{i}.png"));
        let mut one = common::tomex_command();
        base(&mut one);
        common::succeeded(
            one.args(["--prompt", prompt, "--seed", &seed.to_string(), "--out"])
                .arg(&alone)
                .output()
                .unwrap(),
        );
        let batched = image::open(dir.path().join(format!("b-{i}.png")))
            .unwrap()
            .to_rgb8();
        let alone = image::open(&alone).unwrap().to_rgb8();
        let (max, _) = differences(&batched, &alone);
        assert_eq!(max, 0, "image {i}: {max}/255 from its own call");
    }
    // Seeds must be one, or one per image.
    let mut wrong = common::tomex_command();
    base(&mut wrong);
    let o = wrong
        .args([
            "--prompt", "a", "--prompt", "b", "--prompt", "c", "--seed", "1,2", "--out",
        ])
        .arg(dir.path().join("w.png"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("2 seeds for 3 images"), "{err}");
}

/// A spec's `batch_size`: every job stored, each record with the batch's times divided
/// by its images, each image its batch-of-one twin.
#[test]
fn a_spec_with_batch_size_stores_every_image_of_its_batches() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = ["a red fox", "a blue whale", "a bowl of soup"];
    let rest = "[sweep]\nratios = [0.0, 0.5]\n[[configs]]\nname = \"self\"\nmerge = [\"self_attn\"]\n[metrics]\nfid = false\n";
    let spec = |name: &str, batch: usize| {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        let spec = common::write_tiny_spec(
            &sub,
            "s",
            &format!("name = \"{name}\""),
            &prompts,
            (64, 4),
            rest,
        );
        let text = std::fs::read_to_string(&spec)
            .unwrap()
            .replace("steps = 4\n", &format!("steps = 4\nbatch_size = {batch}\n"));
        std::fs::write(&spec, text).unwrap();
        let out = common::succeeded(
            common::tomex_command()
                .args(["run", "--quiet"])
                .arg(&spec)
                .output()
                .unwrap(),
        );
        assert!(out.contains("6 generated"), "{out}");
        sub.join("results")
    };
    let batched = spec("batched", 2);
    let single = spec("single", 1);
    let images = |store: &Path| {
        let mut rows: Vec<(String, u64, f64, image::RgbImage, f64)> = Vec::new();
        for d in std::fs::read_dir(store.join("objects")).unwrap() {
            let d = d.unwrap().path();
            let rec = common::read_json(&d.join("record.json"));
            let m = &rec["job"];
            rows.push((
                m["prompt"].as_str().unwrap().to_string(),
                m["seed"].as_u64().unwrap(),
                m["tome"]["ratio"].as_f64().unwrap_or(0.0),
                image::open(d.join("image.png")).unwrap().to_rgb8(),
                rec["timings"]["wall_s"].as_f64().unwrap(),
            ));
            assert_eq!(
                m["batch_size"].as_u64(),
                Some(if store.starts_with(dir.path().join("batched")) {
                    2
                } else {
                    1
                })
            );
        }
        rows.sort_by(|a, b| (&a.0, a.1, a.2.to_bits()).cmp(&(&b.0, b.1, b.2.to_bits())));
        rows
    };
    let (b, s) = (images(&batched), images(&single));
    assert_eq!(b.len(), 6);
    for (x, y) in b.iter().zip(&s) {
        assert_eq!((&x.0, x.1, x.2), (&y.0, y.1, y.2));
        let (max, _) = differences(&x.3, &y.3);
        assert_eq!(max, 0, "{:?} r {}: {max}/255 from batch 1", x.0, x.2);
        assert!(x.4 > 0.0);
    }
}
