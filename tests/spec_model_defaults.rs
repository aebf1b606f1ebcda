//! A spec that leaves out the image size, the scheduler or the guidance gets the model's own, as
//! diffusers' pipeline defaults them: the UNet's `sample_size` times the VAE's scale
//! factor, and the class `scheduler_config.json` names.

mod common;

use std::path::Path;

use tomex::diffusion::scheduler::SchedulerKind;
use tomex::runner::prepare;

/// A spec over the model at `model` whose `[generation]` holds `generation`.
fn spec(dir: &Path, model: &Path, generation: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("prompts.csv"), "prompt\na cat\n").unwrap();
    let path = dir.join("spec.toml");
    let text = format!(
        "name = \"defaults\"
store = \"results\"
[model]
dir = \"{}\"
[generation]
steps = 3
{generation}
[prompts]
file = \"prompts.csv\"
[sweep]
ratios = [0.0, 0.5]
[[configs]]
name = \"self\"
merge = [\"self_attn\"]
",
        model.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A copy of the tiny model whose scheduler config names `class`.
fn tiny_with_scheduler(dir: &Path, class: &str) -> std::path::PathBuf {
    let model = dir.join("model");
    common::copy_dir(&common::tiny_model(), &model);
    let config = model.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("PNDMScheduler", class)).unwrap();
    model
}

#[test]
fn left_out_keys_come_from_the_model_and_written_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_with_scheduler(dir.path(), "DDIMScheduler");

    // The tiny UNet samples 8x8 latents and its VAE scales by 8: 64x64, DDIM.
    let prepared = prepare(&spec(dir.path(), &model, ""), None, false).unwrap();
    let g = &prepared.spec.generation;
    assert_eq!(
        (g.width, g.height, g.scheduler),
        (64, 64, SchedulerKind::Ddim)
    );
    assert!(!g.from_model.any());
    let keys: Vec<_> = prepared
        .plan
        .jobs()
        .iter()
        .map(|j| j.material.width)
        .collect();
    assert!(keys.iter().all(|&w| w == 64), "{keys:?}");

    // What the spec says wins, key by key.
    let written = "width = 128\nscheduler = \"euler\"";
    let prepared = prepare(&spec(dir.path(), &model, written), None, false).unwrap();
    let g = &prepared.spec.generation;
    assert_eq!(
        (g.width, g.height, g.scheduler),
        (128, 64, SchedulerKind::Euler)
    );
}

#[test]
fn a_scheduler_tomex_lacks_is_named_with_the_key_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_with_scheduler(dir.path(), "LMSDiscreteScheduler");
    let error = prepare(&spec(dir.path(), &model, ""), None, false)
        .err()
        .expect("an unknown scheduler class is refused");
    let message = format!("{error:#}");
    assert!(
        message.contains("generation.scheduler is left to the model")
            && message.contains("LMSDiscreteScheduler is not one tomex implements"),
        "{message}"
    );
    // Naming one in the spec is the way out.
    let chosen = spec(dir.path(), &model, "scheduler = \"pndm\"");
    assert!(prepare(&chosen, None, false).is_ok());
}

/// SDXL: a spec that leaves everything to the model gets StableDiffusionXLPipeline's
/// defaults (the model's 128 px here, SDXL base's 1024; Euler; guidance 5.0); SD 1.x's
/// guidance default stays 7.5, and a written guidance wins.
#[test]
fn an_sdxl_spec_gets_the_xl_pipelines_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let xl = common::repo().join("tests/fixtures/tiny_sdxl");
    let prepared = prepare(&spec(dir.path(), &xl, ""), None, false).unwrap();
    let g = &prepared.spec.generation;
    assert_eq!(
        (g.width, g.height, g.scheduler, g.guidance),
        (128, 128, SchedulerKind::Euler, 5.0)
    );
    let prepared = prepare(&spec(dir.path(), &xl, "guidance = 3.5"), None, false).unwrap();
    assert_eq!(prepared.spec.generation.guidance, 3.5);
    let tiny = common::tiny_model();
    let prepared = prepare(&spec(dir.path(), &tiny, ""), None, false).unwrap();
    assert_eq!(prepared.spec.generation.guidance, 7.5);
}
