//! Noise schedulers, numerically matching diffusers 0.42.
//!
//! | [`SchedulerKind`] | diffusers class | file |
//! |---|---|---|
//! | `pndm` | `PNDMScheduler` (PLMS; PRK warm-up when `skip_prk_steps` is false) | [`pndm`] |
//! | `ddim` | `DDIMScheduler` (eta = 0) | [`ddim`] |
//! | `euler` | `EulerDiscreteScheduler` (no churn) | [`euler`] |
//! | `dpmpp-2m` | `DPMSolverMultistepScheduler` (defaults: DPM-Solver++ 2M) | [`dpm_solver`] |
//!
//! A scheduler is built from a model's `scheduler_config.json` exactly as
//! `SchedulerClass.from_config(config)` does (see [`config`]): each class reads
//! only the keys its `__init__` accepts and falls back to *its own* defaults.
//!
//! # Precision
//!
//! diffusers keeps `betas`/`alphas_cumprod`/`sigmas` as `float32` torch tensors and
//! does the per-step scalar arithmetic on 0-d `float32` tensors; timestep grids and
//! sigma interpolation are numpy `float64`. This module reproduces that operation by
//! operation (same association order, same rounding points). What cannot be
//! reproduced bit for bit is torch's `sqrt`/`log`/`exp` on CPU: torch hands those to
//! MKL's VML, whose results differ from the correctly rounded value by one ulp for
//! a fraction of a percent of inputs — and differ between MKL's AVX2 and AVX-512
//! code paths, so diffusers itself is not bit-reproducible across machines. Here
//! those functions are correctly rounded. The golden test
//! (`tests/scheduler_parity.rs`) bounds the resulting difference at 1e-6 relative
//! per step.
//!
//! # Use
//!
//! ```no_run
//! # use tomex::diffusion::scheduler::*;
//! # fn unet(x: &ndarray::ArrayD<f32>, t: f32) -> ndarray::ArrayD<f32> { x.clone() }
//! # fn main() -> Result<(), SchedulerError> {
//! let config = SchedulerConfig::from_json(r#"{"beta_schedule":"scaled_linear","beta_start":0.00085,"beta_end":0.012}"#)?;
//! let mut scheduler = build(SchedulerKind::Euler, &config, 30)?;
//! let mut latents = ndarray::ArrayD::<f32>::zeros(vec![1, 4, 8, 8]);
//! latents.mapv_inplace(|x| x * scheduler.init_noise_sigma());
//! for i in 0..scheduler.timesteps().len() {
//!     let t = scheduler.timesteps()[i];
//!     let input = scheduler.scale_model_input(&latents, i);
//!     let noise_pred = unet(&input, t);
//!     latents = scheduler.step(&noise_pred, i, &latents);
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;

use ndarray::{ArrayD, Zip};

pub mod betas;
pub mod config;
pub mod ddim;
pub mod dpm_solver;
pub mod euler;
pub mod pndm;
pub mod timesteps;

pub use config::SchedulerConfig;

/// Errors from configuring or building a scheduler.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SchedulerError {
    /// The scheduler config is malformed or asks for something unsupported.
    #[error("{0}")]
    Config(String),
    /// `num_inference_steps` is unusable for this config.
    #[error("{0}")]
    Steps(String),
    /// An unknown scheduler name.
    #[error("unknown scheduler `{0}` (valid: {valid})", valid = SchedulerKind::NAMES.join(", "))]
    UnknownKind(String),
}

/// Which scheduler to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `PNDMScheduler`, SD 1.5's default.
    Pndm,
    /// `DDIMScheduler` with eta = 0.
    Ddim,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `DPMSolverMultistepScheduler` (DPM-Solver++ 2M with its defaults).
    DpmPp2m,
}

impl SchedulerKind {
    /// Every kind, in a fixed order.
    pub const ALL: [SchedulerKind; 4] = [Self::Pndm, Self::Ddim, Self::Euler, Self::DpmPp2m];
    /// The command-line names of [`Self::ALL`].
    pub const NAMES: [&'static str; 4] = ["pndm", "ddim", "euler", "dpmpp-2m"];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pndm => "pndm",
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::DpmPp2m => "dpmpp-2m",
        }
    }

    /// The kind that mirrors a diffusers scheduler class, as `scheduler_config.json`'s
    /// `_class_name` names it.
    pub fn from_diffusers_class(class: &str) -> Option<SchedulerKind> {
        Self::ALL.into_iter().find(|k| k.diffusers_class() == class)
    }

    /// The diffusers class this kind mirrors.
    pub fn diffusers_class(self) -> &'static str {
        match self {
            Self::Pndm => "PNDMScheduler",
            Self::Ddim => "DDIMScheduler",
            Self::Euler => "EulerDiscreteScheduler",
            Self::DpmPp2m => "DPMSolverMultistepScheduler",
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = SchedulerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| SchedulerError::UnknownKind(s.to_string()))
    }
}

/// One denoising schedule, set up for a fixed number of inference steps.
///
/// The pipeline loop is
///
/// ```text
/// latents *= init_noise_sigma()
/// for i in 0..timesteps().len():
///     input   = scale_model_input(latents, i)
///     eps     = unet(input, timesteps()[i])          (plus guidance)
///     latents = step(eps, i, latents)
/// ```
///
/// `step` must be called once per index, in order `0, 1, 2, …` (PNDM and
/// DPM-Solver keep a history of model outputs, like their diffusers classes); it
/// panics on an out-of-order or out-of-range index. Tensors may have any shape, but
/// `model_output` and `sample` must have the same shape.
pub trait Scheduler {
    /// Which kind this is.
    fn kind(&self) -> SchedulerKind;
    /// The value passed to the UNet at each step (diffusers' `scheduler.timesteps`;
    /// integers for PNDM/DDIM/DPM-Solver, fractional for Euler with `linspace`).
    /// Its length is the number of UNet calls, which is not always
    /// `num_inference_steps` (PNDM runs one extra step; `trailing` spacing sometimes
    /// yields one extra, as in diffusers).
    fn timesteps(&self) -> &[f32];
    /// The standard deviation of the initial noise (1 except for Euler).
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    /// The UNet input for step `step` (identity except for Euler).
    fn scale_model_input(&self, sample: &ArrayD<f32>, _step: usize) -> ArrayD<f32> {
        sample.clone()
    }
    /// One denoising step; returns diffusers' `prev_sample`.
    fn step(
        &mut self,
        model_output: &ArrayD<f32>,
        step: usize,
        sample: &ArrayD<f32>,
    ) -> ArrayD<f32>;
}

/// Builds `kind` from a model's scheduler config, as
/// `SchedulerClass.from_config(config)` followed by `set_timesteps(num_inference_steps)`.
///
/// Errors when `num_inference_steps` is 0 or exceeds `num_train_timesteps`, when the
/// config is malformed, or when it asks for a feature that is not implemented
/// (named in the message).
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    num_inference_steps: usize,
) -> Result<Box<dyn Scheduler + Send>, SchedulerError> {
    Ok(match kind {
        SchedulerKind::Pndm => Box::new(pndm::Pndm::new(config, num_inference_steps)?),
        SchedulerKind::Ddim => Box::new(ddim::Ddim::new(config, num_inference_steps)?),
        SchedulerKind::Euler => Box::new(euler::Euler::new(config, num_inference_steps)?),
        SchedulerKind::DpmPp2m => Box::new(dpm_solver::DpmSolverMultistep::new(
            config,
            num_inference_steps,
        )?),
    })
}

/// The common check on the requested step count.
fn check_steps(
    kind: SchedulerKind,
    num_inference_steps: usize,
    num_train_timesteps: usize,
) -> Result<(), SchedulerError> {
    if num_inference_steps == 0 {
        return Err(SchedulerError::Steps(format!(
            "{kind}: num_inference_steps must be at least 1"
        )));
    }
    if num_inference_steps > num_train_timesteps {
        return Err(SchedulerError::Steps(format!(
            "{kind}: num_inference_steps ({num_inference_steps}) cannot exceed the model's \
             num_train_timesteps ({num_train_timesteps})"
        )));
    }
    Ok(())
}

/// Rejects config keys whose feature is not implemented, when they are switched on.
fn reject_flags(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    keys: &[&str],
) -> Result<(), SchedulerError> {
    for key in keys {
        if config.bool_or(key, false)? {
            return Err(SchedulerError::Config(format!(
                "{kind}: `{key}: true` in the scheduler config is not supported"
            )));
        }
    }
    Ok(())
}

/// The correctly rounded `f32` natural logarithm.
fn ln_f32(x: f32) -> f32 {
    f64::from(x).ln() as f32
}

/// The correctly rounded `f32` exponential.
fn exp_f32(x: f32) -> f32 {
    f64::from(x).exp() as f32
}

fn assert_same_shape(a: &ArrayD<f32>, b: &ArrayD<f32>) {
    assert_eq!(
        a.shape(),
        b.shape(),
        "scheduler step: model_output and sample must have the same shape"
    );
}

/// `f(a, b)` element by element.
fn zip2(a: &ArrayD<f32>, b: &ArrayD<f32>, f: impl Fn(f32, f32) -> f32) -> ArrayD<f32> {
    assert_same_shape(a, b);
    Zip::from(a).and(b).map_collect(|&x, &y| f(x, y))
}

/// `f(a, b, c)` element by element.
fn zip3(
    a: &ArrayD<f32>,
    b: &ArrayD<f32>,
    c: &ArrayD<f32>,
    f: impl Fn(f32, f32, f32) -> f32,
) -> ArrayD<f32> {
    assert_same_shape(a, b);
    assert_same_shape(a, c);
    Zip::from(a)
        .and(b)
        .and(c)
        .map_collect(|&x, &y, &z| f(x, y, z))
}

/// `f(a, b, c, d)` element by element.
fn zip4(
    a: &ArrayD<f32>,
    b: &ArrayD<f32>,
    c: &ArrayD<f32>,
    d: &ArrayD<f32>,
    f: impl Fn(f32, f32, f32, f32) -> f32,
) -> ArrayD<f32> {
    assert_same_shape(a, b);
    assert_same_shape(a, c);
    assert_same_shape(a, d);
    Zip::from(a)
        .and(b)
        .and(c)
        .and(d)
        .map_collect(|&x, &y, &z, &w| f(x, y, z, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for k in SchedulerKind::ALL {
            assert_eq!(k.to_string().parse::<SchedulerKind>().unwrap(), k);
        }
        let err = "heun".parse::<SchedulerKind>().unwrap_err().to_string();
        assert!(
            err.contains("heun") && err.contains("pndm, ddim, euler, dpmpp-2m"),
            "{err}"
        );
    }

    #[test]
    fn diffusers_class_names_map_to_kinds() {
        for k in SchedulerKind::ALL {
            assert_eq!(
                SchedulerKind::from_diffusers_class(k.diffusers_class()),
                Some(k)
            );
        }
        assert_eq!(
            SchedulerKind::from_diffusers_class("LMSDiscreteScheduler"),
            None
        );
    }

    #[test]
    fn bad_step_counts_are_errors() {
        let c = SchedulerConfig::from_json(r#"{"skip_prk_steps": true}"#).unwrap();
        for k in SchedulerKind::ALL {
            let e = build(k, &c, 0).err().expect("0 steps").to_string();
            assert!(e.contains("at least 1"), "{e}");
            let e = build(k, &c, 1001).err().expect("1001 steps").to_string();
            assert!(e.contains("1001") && e.contains("1000"), "{e}");
            assert!(build(k, &c, 1000).is_ok(), "{k}");
            assert!(build(k, &c, 1).is_ok(), "{k}");
        }
        // PNDM's Runge-Kutta warm-up needs 4 grid points (diffusers raises below that).
        let prk = SchedulerConfig::from_json("{}").unwrap();
        assert!(build(SchedulerKind::Pndm, &prk, 3).is_err());
        assert!(build(SchedulerKind::Pndm, &prk, 4).is_ok());
    }
}
