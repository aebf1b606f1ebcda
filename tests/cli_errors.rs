//! Bad input fails fast with a clear message and a non-zero exit, never a panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn tomex(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tomex"))
        .args(args)
        .current_dir(common::repo())
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

/// Runs `generate` with `overrides` replacing defaults; expects failure with `message`.
fn generate_fails(overrides: &[(&str, &str)], message: &str) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("x.png");
    let mut args: Vec<(String, String)> = [
        ("--model", common::tiny_model().to_str().unwrap()),
        ("--prompt", "a cat"),
        ("--seed", "1"),
        ("--steps", "2"),
        ("--width", "64"),
        ("--height", "64"),
        ("--out", out.to_str().unwrap()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in overrides {
        match args.iter_mut().find(|(a, _)| a == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => args.push((k.to_string(), v.to_string())),
        }
    }
    let mut argv = vec!["generate".to_string()];
    argv.extend(args.into_iter().flat_map(|(k, v)| [k, v]));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    expect_failure(&tomex(&argv), message);
    assert!(!out.exists(), "no image may be written on failure");
}

fn expect_failure(output: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(
        stderr.contains(message),
        "expected {message:?} in:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "panic:\n{stderr}"
    );
}

#[test]
fn missing_model_directory() {
    generate_fails(
        &[("--model", "/nonexistent/model")],
        "model directory /nonexistent/model does not exist",
    );
}

#[test]
fn model_directory_missing_a_file() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&common::tiny_model(), dir.path());
    std::fs::remove_file(dir.path().join("unet/model.onnx")).unwrap();
    generate_fails(
        &[("--model", dir.path().to_str().unwrap())],
        "lacks unet/model.onnx",
    );
}

#[test]
fn unknown_lock_name() {
    generate_fails(
        &[("--model", "no-such-model")],
        "has no model named `no-such-model`; it names: demo, demo-fid, tiny",
    );
}

#[test]
fn wrong_digest_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&common::tiny_model(), &dir.path().join("tiny"));
    let lock = dir.path().join("models.lock");
    let text = std::fs::read_to_string(common::repo().join("models.lock")).unwrap();
    std::fs::write(
        &lock,
        text.replace("path = \"models/tiny\"", "path = \"tiny\""),
    )
    .unwrap();
    let config = dir.path().join("tiny/scheduler/scheduler_config.json");
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("0.012", "0.013"),
    )
    .unwrap();

    let out = tomex(&["models", "verify", "tiny", "--lock", lock.to_str().unwrap()]);
    expect_failure(&out, "do not match");
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("scheduler/scheduler_config.json: wrong digest"));
    generate_fails(
        &[("--model", "tiny"), ("--lock", lock.to_str().unwrap())],
        "scheduler_config.json: wrong digest",
    );
}

#[test]
fn width_or_height_not_a_multiple_of_eight() {
    generate_fails(
        &[("--width", "100")],
        "width 100 is not a positive multiple of 8",
    );
    generate_fails(
        &[("--height", "60")],
        "height 60 is not a positive multiple of 8",
    );
}

#[test]
fn unknown_scheduler() {
    generate_fails(&[("--scheduler", "heun")], "heun");
}

#[test]
fn zero_steps() {
    generate_fails(
        &[("--steps", "0")],
        "steps must be 1 to 1000 (the scheduler's training timesteps), got 0",
    );
}

#[test]
fn limits_of_generate() {
    generate_fails(
        &[("--steps", "2000")],
        "steps must be 1 to 1000 (the scheduler's training timesteps), got 2000",
    );
    generate_fails(
        &[("--guidance", "1e30")],
        "guidance must be a number from -100 to 100",
    );
    generate_fails(
        &[("--width", "8192")],
        "width 8192 is above the largest side, 4096",
    );
}

#[test]
fn unwritable_output() {
    generate_fails(
        &[("--out", "/nonexistent/dir/x.png")],
        "folder /nonexistent/dir does not exist",
    );
    generate_fails(&[("--out", "image.jpg")], "the output must be a .png file");
}

#[test]
fn no_onnx_runtime_library() {
    generate_fails(
        &[("--ort-lib", "/nonexistent/libonnxruntime.so")],
        "bash tools/fetch-onnxruntime.sh",
    );
}

/// `--device cuda` either runs on CUDA (a GPU build of ONNX Runtime on a machine with a
/// GPU) or fails saying why; it never makes the image on the CPU instead.
#[test]
fn cuda_runs_on_cuda_or_is_an_error_never_a_fallback() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("x.png");
    let model = common::tiny_model();
    let args = [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--seed",
        "1",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--device",
        "cuda",
        "--out",
        out.to_str().unwrap(),
    ];
    let output = tomex(&args);
    if output.status.success() {
        let said = String::from_utf8_lossy(&output.stdout);
        eprintln!("this ONNX Runtime runs CUDA: checked that the image was made there");
        assert!(said.contains(" on cuda"), "made, but not on CUDA: {said}");
        assert!(out.exists());
    } else {
        expect_failure(&output, "CUDA");
        assert!(!out.exists(), "no image may be written on failure");
    }
}

#[test]
fn verify_the_committed_tiny_model() {
    let out = tomex(&["models", "verify", "tiny"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tiny: ok"));
    assert!(Path::new(&common::repo().join("models.lock")).is_file());
}

#[test]
fn generate_writes_a_png_and_reports_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cat.png");
    let output = tomex(&[
        "generate",
        "--model",
        "tiny",
        "--prompt",
        "a cat",
        "--seed",
        "7",
        "--steps",
        "3",
        "--width",
        "64",
        "--height",
        "48",
        "--scheduler",
        "ddim",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(" s (text "), "{stdout}");
    let image = image::open(&out).unwrap();
    assert_eq!((image.width(), image.height()), (64, 48));
}

#[test]
fn tome_ratio_above_the_maximum_names_it() {
    generate_fails(
        &[("--tome-ratio", "0.8")],
        "ToMe ratio 0.8 is out of range: it must be between 0 and 0.75",
    );
    generate_fails(
        &[("--tome-ratio", "0.6"), ("--tome-sx", "1")],
        "it must be between 0 and 0.5",
    );
}

#[test]
fn unknown_tome_target() {
    generate_fails(
        &[("--tome-ratio", "0.5"), ("--tome-merge", "self_attn,attn3")],
        "attn3",
    );
}

#[test]
fn generate_with_tome_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tome.png");
    let output = tomex(&[
        "generate",
        "--prompt",
        "a cat",
        "--seed",
        "7",
        "--steps",
        "3",
        "--width",
        "64",
        "--height",
        "64",
        "--tome-ratio",
        "0.5",
        "--tome-merge",
        "self_attn,mlp",
        "--tome-no-rand",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(image::open(&out).is_ok());
}

#[test]
fn generate_defaults_to_the_models_own_size_and_scheduler() {
    // `generate` on `model` with only prompt, seed and steps (plus `extra`) into `out`.
    let bare = |model: &str, out: &Path, extra: &[&str]| {
        let mut argv = vec!["generate", "--model", model, "--prompt", "a cat"];
        argv.extend([
            "--seed",
            "7",
            "--steps",
            "3",
            "--out",
            out.to_str().unwrap(),
        ]);
        argv.extend(extra);
        tomex(&argv)
    };
    // The tiny model's UNet samples 8x8 latents and its VAE scales by 8: diffusers'
    // pipeline makes 64x64 images of it, with the PNDM scheduler its config names.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("default.png");
    let output = bare("tiny", &out, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let image = image::open(&out).unwrap();
    assert_eq!((image.width(), image.height()), (64, 64));

    // A model saved with a scheduler tomex does not implement: named, with the way out.
    let model = dir.path().join("lms");
    common::copy_dir(&common::tiny_model(), &model);
    let config = model.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("PNDMScheduler", "LMSDiscreteScheduler"),
    )
    .unwrap();
    let lms_out = dir.path().join("lms.png");
    let model = model.to_str().unwrap();
    expect_failure(
        &bare(model, &lms_out, &[]),
        "the model's scheduler LMSDiscreteScheduler is not one tomex implements; choose one with --scheduler",
    );
    assert!(!lms_out.exists());
    assert!(bare(model, &lms_out, &["--scheduler", "euler"])
        .status
        .success());
}

/// Spec problems found after loading are located at their key, worded the same by
/// `plan` and `run`, and say an OS error once: an unknown model name, a spec that is
/// not UTF-8, a store that is a file, a model directory that is a file, too few prompts.
#[test]
fn spec_input_problems_are_located_and_worded_alike() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.csv"), "prompt\na\nb\n").unwrap();
    std::fs::write(d.join("afile"), b"").unwrap();
    let base = "[prompts]\nfile = \"p.csv\"\n[metrics]\nfid = false\n[[configs]]\nname = \"a\"\n";
    let write = |name: &str, head: &str| {
        let path = d.join(name);
        std::fs::write(&path, format!("{head}{base}")).unwrap();
        path
    };
    let lock = common::repo().join("models.lock");
    let both = |spec: &Path, message: &str, run_only: bool| {
        for cmd in ["plan", "run"] {
            if run_only && cmd == "plan" {
                continue;
            }
            let out = Command::new(env!("CARGO_BIN_EXE_tomex"))
                .args([
                    cmd,
                    spec.to_str().unwrap(),
                    "--lock",
                    lock.to_str().unwrap(),
                ])
                .current_dir(d)
                .output()
                .unwrap();
            expect_failure(&out, message);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !err.contains("does not exist") || !err.contains("afile"),
                "{err}"
            );
            assert!(
                !err.contains("os error") || err.matches("os error").count() == 1,
                "{err}"
            );
        }
    };
    let unknown = write("unknown.toml", "[model]\nname = \"nosuchmodel\"\n");
    both(
        &unknown,
        "unknown.toml:2:8: model.name: ",
        true, // plan counts jobs on a provisional key instead
    );
    let few = d.join("few.toml");
    std::fs::write(
        &few,
        "[model]\nname = \"tiny\"\n[prompts]\nfile = \"p.csv\"\nsample = 5\nreplace = false\n[metrics]\nfid = false\n[[configs]]\nname = \"a\"\n",
    )
    .unwrap();
    both(
        &few,
        "few.toml:5:10: prompts.sample: 5 prompts cannot be drawn without replacement from the 2",
        false,
    );
    let store_file = write(
        "store.toml",
        "store = \"afile\"\n[model]\nname = \"tiny\"\n",
    );
    both(&store_file, "store.toml:1:9: store: store ", false);
    // A store that cannot be written (a read-only file system: /sys, since tests may
    // run as root, whom permissions do not stop): located at `store` by run.
    if Path::new("/sys/kernel").is_dir() {
        let read_only = write(
            "readonly.toml",
            "store = \"/sys/kernel\"\n[model]\nname = \"tiny\"\n",
        );
        both(
            &read_only,
            "readonly.toml:1:9: store: cannot open the store: /sys/kernel/objects: ",
            true, // plan only reads: "holds no tomex store yet"
        );
    }
    let model_file = write("modelfile.toml", "[model]\ndir = \"afile\"\n");
    both(
        &model_file,
        "modelfile.toml:2:7: model.dir: model directory ",
        true,
    );
    let not_utf8 = d.join("latin1.toml");
    std::fs::write(&not_utf8, b"name = \"caf\xe9\"\n").unwrap();
    both(
        &not_utf8,
        "latin1.toml:1:12: not valid UTF-8 here; a spec is a UTF-8 TOML file",
        false,
    );
}
