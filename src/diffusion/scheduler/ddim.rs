//! DDIM with `eta = 0`: mirrors diffusers' `DDIMScheduler`
//! (`diffusers/schedulers/scheduling_ddim.py`).
//!
//! Keys read (diffusers defaults): the beta keys ([`super::betas::BetaConfig`]),
//! `clip_sample` (true), `set_alpha_to_one` (true), `steps_offset` (0),
//! `prediction_type` ("epsilon"; also "sample", "v_prediction"),
//! `clip_sample_range` (1.0), `timestep_spacing` ("leading"),
//! `rescale_betas_zero_snr` (false). `thresholding: true` is rejected.
//!
//! The previous timestep is `t - T // n` at every step, whatever the spacing (as in
//! diffusers), and all scalar arithmetic is `f32`.

use ndarray::ArrayD;

use super::betas::{alphas_cumprod, rescale_zero_terminal_snr, BetaConfig};
use super::timesteps::{np_arange_f64, np_linspace, np_round, Spacing};
use super::{
    check_steps, reject_flags, zip2, Scheduler, SchedulerConfig, SchedulerError, SchedulerKind,
};

/// What the model predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PredictionType {
    Epsilon,
    Sample,
    VPrediction,
}

impl PredictionType {
    pub(crate) fn parse(
        kind: SchedulerKind,
        s: &str,
        allow_sample: bool,
    ) -> Result<Self, SchedulerError> {
        match s {
            "epsilon" => Ok(Self::Epsilon),
            "v_prediction" => Ok(Self::VPrediction),
            "sample" if allow_sample => Ok(Self::Sample),
            other => Err(SchedulerError::Config(format!(
                "{kind}: prediction_type `{other}` is not supported (valid: epsilon, v_prediction{})",
                if allow_sample { ", sample" } else { "" }
            ))),
        }
    }
}

/// Integer timesteps of the DDIM grid, exactly as `DDIMScheduler.set_timesteps`.
pub(crate) fn ddim_timesteps(
    spacing: Spacing,
    num_train_timesteps: usize,
    n: usize,
    steps_offset: i64,
) -> Vec<i64> {
    let t = num_train_timesteps;
    match spacing {
        Spacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|v| np_round(v) as i64)
            .collect(),
        Spacing::Leading => {
            let ratio = (t / n) as i64;
            (0..n as i64)
                .rev()
                .map(|i| i * ratio + steps_offset)
                .collect()
        }
        Spacing::Trailing => np_arange_f64(t as f64, 0.0, -(t as f64 / n as f64))
            .into_iter()
            .map(|v| np_round(v) as i64 - 1)
            .collect(),
    }
}

/// diffusers' `DDIMScheduler` (deterministic, eta = 0).
#[derive(Debug, Clone)]
pub struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    prediction: PredictionType,
    clip_sample: Option<f32>,
    timesteps_i: Vec<i64>,
    timesteps: Vec<f32>,
}

impl Ddim {
    /// `DDIMScheduler.from_config(config)` then `set_timesteps(num_inference_steps)`.
    pub fn new(
        config: &SchedulerConfig,
        num_inference_steps: usize,
    ) -> Result<Self, SchedulerError> {
        let kind = SchedulerKind::Ddim;
        let beta_config = BetaConfig::from_config(config)?;
        let clip_sample = config.bool_or("clip_sample", true)?;
        let set_alpha_to_one = config.bool_or("set_alpha_to_one", true)?;
        let steps_offset = config.i64_or("steps_offset", 0)?;
        let prediction =
            PredictionType::parse(kind, config.str_or("prediction_type", "epsilon")?, true)?;
        let clip_sample_range = config.f64_or("clip_sample_range", 1.0)?;
        let spacing = Spacing::parse(config.str_or("timestep_spacing", "leading")?)?;
        let rescale = config.bool_or("rescale_betas_zero_snr", false)?;
        reject_flags(kind, config, &["thresholding"])?;

        let mut betas = beta_config.betas()?;
        if rescale {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas_cumprod = alphas_cumprod(&betas);
        let final_alpha_cumprod = if set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };

        let t = beta_config.num_train_timesteps;
        check_steps(kind, num_inference_steps, t)?;
        let timesteps_i = ddim_timesteps(spacing, t, num_inference_steps, steps_offset);
        // diffusers would index alphas_cumprod with these (negative ones wrap around
        // in Python, larger ones raise): refuse them up front.
        if let Some(&bad) = timesteps_i.iter().find(|&&ts| ts < 0 || ts >= t as i64) {
            return Err(SchedulerError::Steps(format!(
                "{kind}: num_inference_steps {num_inference_steps} with timestep_spacing \
                 {spacing:?} and steps_offset {steps_offset} gives timestep {bad}, outside \
                 0..{t} (diffusers would index out of range); choose another step count"
            )));
        }
        Ok(Self {
            timesteps: timesteps_i.iter().map(|&v| v as f32).collect(),
            timesteps_i,
            alphas_cumprod,
            final_alpha_cumprod,
            num_train_timesteps: t,
            num_inference_steps,
            prediction,
            clip_sample: clip_sample.then_some(clip_sample_range as f32),
        })
    }
}

impl Scheduler for Ddim {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddim
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &ArrayD<f32>,
        step: usize,
        sample: &ArrayD<f32>,
    ) -> ArrayD<f32> {
        let timestep = self.timesteps_i[step];
        let prev_timestep = timestep - (self.num_train_timesteps / self.num_inference_steps) as i64;
        let alpha_prod_t = self.alphas_cumprod[timestep as usize];
        let alpha_prod_t_prev = if prev_timestep >= 0 {
            self.alphas_cumprod[prev_timestep as usize]
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let sqrt_alpha_t = alpha_prod_t.sqrt();
        let sqrt_beta_t = beta_prod_t.sqrt();

        let (mut pred_original_sample, pred_epsilon) = match self.prediction {
            PredictionType::Epsilon => (
                zip2(sample, model_output, |s, m| {
                    (s - sqrt_beta_t * m) / sqrt_alpha_t
                }),
                model_output.clone(),
            ),
            PredictionType::Sample => (
                model_output.clone(),
                zip2(sample, model_output, |s, m| {
                    (s - sqrt_alpha_t * m) / sqrt_beta_t
                }),
            ),
            PredictionType::VPrediction => (
                zip2(sample, model_output, |s, m| {
                    sqrt_alpha_t * s - sqrt_beta_t * m
                }),
                zip2(sample, model_output, |s, m| {
                    sqrt_alpha_t * m + sqrt_beta_t * s
                }),
            ),
        };
        if let Some(range) = self.clip_sample {
            // torch.clamp(x, -r, r) = min(max(x, -r), r), NaN propagating.
            pred_original_sample.mapv_inplace(|x| {
                if x.is_nan() {
                    x
                } else {
                    x.max(-range).min(range)
                }
            });
        }
        // eta = 0: variance = beta_prev / beta_t * (1 - a_t / a_prev), std_dev_t = 0 * sqrt(variance).
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let variance = beta_prod_t_prev / beta_prod_t * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = 0.0 * variance.sqrt();
        let direction_coeff = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
        let sqrt_alpha_prev = alpha_prod_t_prev.sqrt();
        zip2(&pred_original_sample, &pred_epsilon, |x0, eps| {
            sqrt_alpha_prev * x0 + direction_coeff * eps
        })
    }
}
