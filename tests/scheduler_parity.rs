//! Parity of `tomex::diffusion::scheduler` with diffusers 0.42 (torch 2.15, CPU).
//!
//! The reference runs are in `golden/schedulers/` (written by
//! `tools/golden_schedulers.py`; see its docstring for the file layout). Every case
//! builds a scheduler from a `scheduler_config.json` dict exactly like
//! `Class.from_config(config)` + `set_timesteps(n)`, then runs the pipeline loop on
//! fixed (seeded `torch.randn`) model outputs.
//!
//! What is asserted:
//!
//! * timesteps: **exactly** equal (as `f32`; Euler's log-derived continuous
//!   timesteps within 1e-6 relative), for every case and for the grid of
//!   step counts × spacings × schedulers in `schedules`;
//! * `alphas_cumprod`: exactly equal (`rescale_betas_zero_snr` aside, where torch's
//!   MKL `sqrt` enters; there within 1e-6 relative);
//! * sigmas and `init_noise_sigma`: within 1e-6 relative, element by element;
//! * the trajectory, **free running** (the Rust scheduler steps its own previous
//!   output, so errors may accumulate over the whole run): at every step `i`, for
//!   both the scaled model input and `prev_sample`,
//!
//!   `err_i = max_j |rust_i[j] - ref_i[j]| / max_j |ref_i[j]|  <=  1e-6`
//!
//!   (max absolute difference over the tensor divided by the max absolute value of
//!   the reference tensor at that step); 1e-5 for third-order DPM-Solver, an
//!   extension beyond DPM++ 2M whose f32 formula is ill-conditioned (see below).
//!
//! Run with `--nocapture` to see the worst error per scheduler.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use serde_json::Value;
use tomex::diffusion::scheduler::betas::{alphas_cumprod, rescale_zero_terminal_snr, BetaConfig};
use tomex::diffusion::scheduler::dpm_solver::DpmSolverMultistep;
use tomex::diffusion::scheduler::euler::Euler;
use tomex::diffusion::scheduler::{build, SchedulerConfig, SchedulerKind};

/// The per-step tolerance on `max|diff| / max|ref|`.
const TOL: f64 = 1e-6;
/// The same for third-order DPM-Solver (see `full_runs_match_diffusers`).
const TOL_DPM_ORDER3: f64 = 1e-5;

/// `golden/schedulers`, or `$TOMEX_SCHEDULER_GOLDEN` (e.g. goldens regenerated on
/// another machine).
fn golden_dir() -> PathBuf {
    match std::env::var_os("TOMEX_SCHEDULER_GOLDEN") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/schedulers"),
    }
}

fn read_index() -> Value {
    let text = std::fs::read_to_string(golden_dir().join("index.json"))
        .expect("golden/schedulers/index.json (run tools/golden_schedulers.py)");
    serde_json::from_str(&text).expect("index.json parses")
}

fn read_f32(file: &str) -> Vec<f32> {
    let bytes = std::fs::read(golden_dir().join(file)).expect("golden data file");
    assert_eq!(bytes.len() % 4, 0);
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn config_of(case: &Value) -> SchedulerConfig {
    let map = case["config"].as_object().expect("config object").clone();
    SchedulerConfig::from_map(map).expect("config")
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let max_ref = want.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs()));
    let max_diff = got.iter().zip(want).fold(0f64, |m, (&a, &b)| {
        m.max((f64::from(a) - f64::from(b)).abs())
    });
    if max_diff == 0.0 {
        0.0
    } else {
        max_diff / max_ref
    }
}

/// Largest element-wise relative difference.
fn elementwise_rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter().zip(want).fold(0f64, |m, (&a, &b)| {
        let (a, b) = (f64::from(a), f64::from(b));
        if a == b {
            m
        } else {
            m.max((a - b).abs() / b.abs())
        }
    })
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// The `alphas_cumprod` a class computes from a config (PNDM has no zero-SNR rescale;
/// Euler and DPM-Solver clamp the last value to 2^-24 after it).
fn expected_alphas_cumprod(kind: SchedulerKind, config: &SchedulerConfig) -> Vec<f32> {
    let mut betas = BetaConfig::from_config(config).unwrap().betas().unwrap();
    let rescale =
        kind != SchedulerKind::Pndm && config.bool_or("rescale_betas_zero_snr", false).unwrap();
    if rescale {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let mut ac = alphas_cumprod(&betas);
    if rescale && matches!(kind, SchedulerKind::Euler | SchedulerKind::DpmPp2m) {
        *ac.last_mut().unwrap() = 2f32.powi(-24);
    }
    ac
}

#[derive(Default, Debug)]
struct Worst {
    step: f64,
    step_case: String,
    scaled: f64,
    sigma: f64,
    init_sigma: f64,
    cases: usize,
}

#[test]
fn full_runs_match_diffusers() {
    let index = read_index();
    let cases = index["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    let mut worst: BTreeMap<String, Worst> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let kind: SchedulerKind = case["kind"].as_str().unwrap().parse().unwrap();
        let config = config_of(case);
        let n = case["num_inference_steps"].as_u64().unwrap() as usize;
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let numel: usize = shape.iter().product();
        let data = read_f32(case["file"].as_str().unwrap());
        let n_ac = case["num_train_alphas"].as_u64().unwrap() as usize;
        let n_sig = case["num_sigmas"].as_u64().unwrap() as usize;
        let (ac_ref, rest) = data.split_at(n_ac);
        let (sig_ref, rest) = rest.split_at(n_sig);
        let (sample0, steps) = rest.split_at(numel);
        // Third-order DPM-Solver (an extension; DPM++ 2M is order 2) evaluates
        // `(exp(-h) - 1 + h) / h²` in f32, which cancels catastrophically: one ulp of
        // torch's (MKL's) `exp`/`log` moves the step by ~2e-6, and diffusers itself
        // differs by 2.2e-6 between MKL's AVX2 and AVX-512 code paths on these cases.
        let order3 =
            kind == SchedulerKind::DpmPp2m && config.usize_or("solver_order", 2).unwrap() == 3;
        let tol = if order3 { TOL_DPM_ORDER3 } else { TOL };
        let group = if order3 {
            format!("{kind} (order 3)")
        } else {
            kind.to_string()
        };
        let w = worst.entry(group).or_default();
        w.cases += 1;

        // alphas_cumprod
        let ac = expected_alphas_cumprod(kind, &config);
        let zsnr = config.bool_or("rescale_betas_zero_snr", false).unwrap();
        if zsnr && kind != SchedulerKind::Pndm {
            let e = elementwise_rel(&ac, ac_ref);
            if e > TOL {
                failures.push(format!("{name}: alphas_cumprod rel err {e:e}"));
            }
        } else if ac != ac_ref {
            let bad = ac.iter().zip(ac_ref).filter(|(a, b)| a != b).count();
            failures.push(format!(
                "{name}: alphas_cumprod differs in {bad} of {n_ac} values"
            ));
        }

        let mut sched = match build(kind, &config, n) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{name}: build failed: {e}"));
                continue;
            }
        };
        let ts_ref = f32s(&case["timesteps"]);
        // Timesteps are compared exactly, except Euler's `timestep_type: continuous`
        // ones (0.25 * ln σ, through MKL's `log` in diffusers): 1e-6 relative there.
        let continuous = config.str_or("timestep_type", "discrete").unwrap() == "continuous";
        let ts_ok = if continuous {
            elementwise_rel(sched.timesteps(), &ts_ref) <= TOL
        } else {
            sched.timesteps() == ts_ref.as_slice()
        };
        if !ts_ok {
            failures.push(format!(
                "{name}: timesteps differ:\n  rust {:?}\n  ref  {:?}",
                sched.timesteps(),
                ts_ref
            ));
            continue;
        }
        let init_ref = case["init_noise_sigma"].as_f64().unwrap() as f32;
        let e = elementwise_rel(&[sched.init_noise_sigma()], &[init_ref]);
        w.init_sigma = w.init_sigma.max(e);
        if e > TOL {
            failures.push(format!(
                "{name}: init_noise_sigma {} vs {init_ref}",
                sched.init_noise_sigma()
            ));
        }
        if n_sig > 0 {
            let sig = match kind {
                SchedulerKind::Euler => Euler::new(&config, n).unwrap().sigmas().to_vec(),
                SchedulerKind::DpmPp2m => DpmSolverMultistep::new(&config, n)
                    .unwrap()
                    .sigmas()
                    .to_vec(),
                _ => unreachable!(),
            };
            let e = elementwise_rel(&sig, sig_ref);
            w.sigma = w.sigma.max(e);
            if e > TOL {
                failures.push(format!("{name}: sigmas rel err {e:e}"));
            }
        }

        assert_eq!(steps.len(), ts_ref.len() * 3 * numel, "{name}: data size");
        let mut case_worst = 0f64;
        let mut sample = ArrayD::from_shape_vec(IxDyn(&shape), sample0.to_vec()).unwrap();
        for (i, chunk) in steps.chunks_exact(3 * numel).enumerate() {
            let (mo, rest) = chunk.split_at(numel);
            let (scaled_ref, prev_ref) = rest.split_at(numel);
            let model_output = ArrayD::from_shape_vec(IxDyn(&shape), mo.to_vec()).unwrap();
            let scaled = sched.scale_model_input(&sample, i);
            let e_scaled = rel_err(scaled.as_slice().unwrap(), scaled_ref);
            let prev = sched.step(&model_output, i, &sample);
            let e_prev = rel_err(prev.as_slice().unwrap(), prev_ref);
            w.scaled = w.scaled.max(e_scaled);
            case_worst = case_worst.max(e_prev).max(e_scaled);
            if e_prev > w.step {
                w.step = e_prev;
                w.step_case = format!("{name} step {i}");
            }
            if e_scaled > tol || e_prev > tol || !e_prev.is_finite() {
                failures.push(format!(
                    "{name} step {i} (t = {}): scaled input err {e_scaled:e}, prev_sample err {e_prev:e}",
                    ts_ref[i]
                ));
                break;
            }
            sample = prev;
        }
        if std::env::var_os("TOMEX_SCHEDULER_VERBOSE").is_some() {
            println!("{name:>32}: worst step error {case_worst:.3e}");
        }
    }
    println!("metric: max|rust - ref| / max|ref| per step, free-running trajectories");
    for (k, w) in &worst {
        println!(
            "{k:>9}: {} cases, worst prev_sample {:.3e} ({}), worst scaled input {:.3e}, \
             worst sigma {:.3e}, worst init_noise_sigma {:.3e}",
            w.cases, w.step, w.step_case, w.scaled, w.sigma, w.init_sigma
        );
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn schedule_grids_match_diffusers() {
    let index = read_index();
    let sched = &index["schedules"];
    let base =
        SchedulerConfig::from_map(sched["base_config"].as_object().unwrap().clone()).unwrap();
    let data = read_f32(sched["file"].as_str().unwrap());
    let mut failures = Vec::new();
    let mut refused = Vec::new();
    let mut worst_sigma = 0f64;
    let entries = sched["entries"].as_array().unwrap();
    for e in entries {
        let kind: SchedulerKind = e["kind"].as_str().unwrap().parse().unwrap();
        let spacing = e["timestep_spacing"].as_str().unwrap();
        let n = e["num_inference_steps"].as_u64().unwrap() as usize;
        let off = e["offset"].as_u64().unwrap() as usize;
        let nt = e["num_timesteps"].as_u64().unwrap() as usize;
        let ns = e["num_sigmas"].as_u64().unwrap() as usize;
        let ts_ref = &data[off..off + nt];
        let sig_ref = &data[off + nt..off + nt + ns];
        let mut config = base.clone();
        config.set("timestep_spacing", Value::String(spacing.into()));
        let label = format!("{kind} {spacing} n={n}");
        match build(kind, &config, n) {
            Ok(s) => {
                if s.timesteps() != ts_ref {
                    failures.push(format!(
                        "{label}: timesteps differ\n  rust {:?}\n  ref  {:?}",
                        s.timesteps(),
                        ts_ref
                    ));
                    continue;
                }
                let init_ref = e["init_noise_sigma"].as_f64().unwrap() as f32;
                let ei = elementwise_rel(&[s.init_noise_sigma()], &[init_ref]);
                if ei > TOL {
                    failures.push(format!("{label}: init_noise_sigma rel err {ei:e}"));
                }
            }
            Err(err) => {
                // Only where diffusers itself would go wrong: a timestep outside the
                // training range used as an index, or (DPM) a repeated first timestep.
                let out_of_range = ts_ref.iter().any(|&t| !(0.0..1000.0).contains(&t));
                let first_repeated = ts_ref[1..].contains(&ts_ref[0]);
                let pndm_overflow = kind == SchedulerKind::Pndm
                    && ts_ref.len() > 1
                    && ts_ref[1] + (1000 / n) as f32 >= 1000.0;
                if !(out_of_range || first_repeated || pndm_overflow) {
                    failures.push(format!("{label}: refused without reason: {err}"));
                }
                refused.push(label);
                continue;
            }
        }
        if ns > 0 {
            let sig = match kind {
                SchedulerKind::Euler => Euler::new(&config, n).unwrap().sigmas().to_vec(),
                SchedulerKind::DpmPp2m => DpmSolverMultistep::new(&config, n)
                    .unwrap()
                    .sigmas()
                    .to_vec(),
                _ => unreachable!(),
            };
            let es = elementwise_rel(&sig, sig_ref);
            worst_sigma = worst_sigma.max(es);
            if es > TOL {
                failures.push(format!("{label}: sigmas rel err {es:e}"));
            }
        }
    }
    println!(
        "{} schedules checked; worst sigma rel err {worst_sigma:.3e}; refused (diffusers mis-indexes): {refused:?}",
        entries.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn unsupported_settings_are_clear_errors() {
    let cases: &[(SchedulerKind, &str, &str)] = &[
        (
            SchedulerKind::Euler,
            r#"{"use_karras_sigmas": true}"#,
            "use_karras_sigmas",
        ),
        (
            SchedulerKind::DpmPp2m,
            r#"{"algorithm_type": "sde-dpmsolver++"}"#,
            "sde-dpmsolver++",
        ),
        (
            SchedulerKind::DpmPp2m,
            r#"{"algorithm_type": "dpmsolver"}"#,
            "sigma_min",
        ),
        (
            SchedulerKind::Ddim,
            r#"{"thresholding": true}"#,
            "thresholding",
        ),
        (
            SchedulerKind::Pndm,
            r#"{"prediction_type": "sample"}"#,
            "prediction_type",
        ),
        (
            SchedulerKind::Ddim,
            r#"{"beta_schedule": "cubic"}"#,
            "cubic",
        ),
        (
            SchedulerKind::Euler,
            r#"{"timestep_spacing": "middle"}"#,
            "middle",
        ),
        (
            SchedulerKind::Ddim,
            r#"{"beta_start": "small"}"#,
            "beta_start",
        ),
        (
            SchedulerKind::Ddim,
            r#"{"trained_betas": [0.1, 0.2]}"#,
            "trained_betas",
        ),
    ];
    for (kind, json, needle) in cases {
        let config = SchedulerConfig::from_json(json).unwrap();
        let err = build(*kind, &config, 20).err().expect(json).to_string();
        assert!(err.contains(needle), "{kind} {json}: {err}");
    }
    // Trailing spacing with 61 of 1000 steps ends at timestep -1 in diffusers; DDIM and
    // PNDM would index alphas_cumprod[-1], so they refuse.
    let trailing =
        SchedulerConfig::from_json(r#"{"timestep_spacing": "trailing", "skip_prk_steps": true}"#)
            .unwrap();
    for kind in [SchedulerKind::Ddim, SchedulerKind::Pndm] {
        let err = build(kind, &trailing, 61)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("-1"), "{err}");
    }
    assert_eq!(
        build(SchedulerKind::Euler, &trailing, 61)
            .unwrap()
            .timesteps()
            .len(),
        62
    );
}
