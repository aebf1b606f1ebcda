//! Euler's method in sigma space (k-diffusion's `sample_euler`, no churn): mirrors
//! diffusers' `EulerDiscreteScheduler` (`diffusers/schedulers/scheduling_euler_discrete.py`).
//!
//! Keys read (diffusers defaults): the beta keys ([`super::betas::BetaConfig`]),
//! `prediction_type` ("epsilon"; also "v_prediction", "sample"/"original_sample"),
//! `interpolation_type` ("linear"; also "log_linear"), `timestep_spacing`
//! ("linspace"), `timestep_type` ("discrete"; "continuous" matters with
//! v-prediction), `steps_offset` (0), `rescale_betas_zero_snr` (false),
//! `final_sigmas_type` ("zero" or "sigma_min"). `use_karras_sigmas`,
//! `use_exponential_sigmas` and `use_beta_sigmas` set to true are rejected.
//!
//! Precision: `sigmas = ((1 - ᾱ) / ᾱ) ** 0.5` in `f32`, interpolated at the
//! (`f32`) timesteps by `np.interp` in f64 and rounded to `f32`; the step is `f32`.

use ndarray::ArrayD;

use super::betas::{alphas_cumprod, rescale_zero_terminal_snr, torch_linspace_f32, BetaConfig};
use super::timesteps::{np_arange_f64, np_interp_arange, np_linspace, np_round, Spacing};
use super::{
    check_steps, exp_f32, ln_f32, reject_flags, zip2, Scheduler, SchedulerConfig, SchedulerError,
    SchedulerKind,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EulerPrediction {
    Epsilon,
    VPrediction,
    Sample,
}

/// diffusers' `EulerDiscreteScheduler` with `s_churn = 0`.
#[derive(Debug, Clone)]
pub struct Euler {
    prediction: EulerPrediction,
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    init_noise_sigma: f32,
}

/// `sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5`, in `f32`.
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

impl Euler {
    /// `EulerDiscreteScheduler.from_config(config)` then `set_timesteps(num_inference_steps)`.
    pub fn new(
        config: &SchedulerConfig,
        num_inference_steps: usize,
    ) -> Result<Self, SchedulerError> {
        let kind = SchedulerKind::Euler;
        let beta_config = BetaConfig::from_config(config)?;
        let prediction = match config.str_or("prediction_type", "epsilon")? {
            "epsilon" => EulerPrediction::Epsilon,
            "v_prediction" => EulerPrediction::VPrediction,
            "sample" | "original_sample" => EulerPrediction::Sample,
            other => {
                return Err(SchedulerError::Config(format!(
                    "{kind}: prediction_type `{other}` is not supported \
                     (valid: epsilon, v_prediction, sample, original_sample)"
                )))
            }
        };
        let interpolation = config.str_or("interpolation_type", "linear")?;
        let spacing = Spacing::parse(config.str_or("timestep_spacing", "linspace")?)?;
        let timestep_type = config.str_or("timestep_type", "discrete")?;
        let steps_offset = config.i64_or("steps_offset", 0)?;
        let rescale = config.bool_or("rescale_betas_zero_snr", false)?;
        let final_sigmas_type = config.str_or("final_sigmas_type", "zero")?;
        reject_flags(
            kind,
            config,
            &[
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
            ],
        )?;

        let mut betas = beta_config.betas()?;
        if rescale {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let mut alphas_cumprod = alphas_cumprod(&betas);
        if rescale {
            // diffusers: alphas_cumprod[-1] = 2 ** -24, so the last sigma is finite.
            *alphas_cumprod.last_mut().expect("at least one train step") = 2f32.powi(-24);
        }

        let t = beta_config.num_train_timesteps;
        let n = num_inference_steps;
        check_steps(kind, n, t)?;

        // set_timesteps: the grid, as float32.
        let timesteps: Vec<f32> = match spacing {
            Spacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
                .into_iter()
                .rev()
                .map(|v| v as f32)
                .collect(),
            Spacing::Leading => {
                let ratio = (t / n) as i64;
                (0..n as i64)
                    .rev()
                    .map(|i| (i * ratio) as f32 + steps_offset as f32)
                    .collect()
            }
            Spacing::Trailing => np_arange_f64(t as f64, 0.0, -(t as f64 / n as f64))
                .into_iter()
                .map(|v| np_round(v) as f32 - 1.0)
                .collect(),
        };

        let train_sigmas = train_sigmas(&alphas_cumprod);
        let mut sigmas: Vec<f32> = match interpolation {
            "linear" => timesteps
                .iter()
                .map(|&ts| np_interp_arange(f64::from(ts), &train_sigmas) as f32)
                .collect(),
            "log_linear" => {
                // torch.linspace(log(sigmas[-1]), log(sigmas[0]), n + 1).exp()
                let hi = ln_f32(train_sigmas[train_sigmas.len() - 1]);
                let lo = ln_f32(train_sigmas[0]);
                torch_linspace_f32(f64::from(hi), f64::from(lo), n + 1)
                    .into_iter()
                    .map(exp_f32)
                    .collect()
            }
            other => {
                return Err(SchedulerError::Config(format!(
                "{kind}: interpolation_type `{other}` is not supported (valid: linear, log_linear)"
            )))
            }
        };
        let sigma_last = match final_sigmas_type {
            "zero" => 0.0,
            "sigma_min" => ((1.0 - alphas_cumprod[0]) / alphas_cumprod[0]).sqrt(),
            other => {
                return Err(SchedulerError::Config(format!(
                    "{kind}: final_sigmas_type `{other}` is not supported (valid: zero, sigma_min)"
                )))
            }
        };
        sigmas.push(sigma_last);

        let timesteps = match (timestep_type, prediction) {
            ("continuous", EulerPrediction::VPrediction) => sigmas[..sigmas.len() - 1]
                .iter()
                .map(|&s| 0.25 * ln_f32(s))
                .collect(),
            ("continuous" | "discrete", _) => timesteps,
            (other, _) => {
                return Err(SchedulerError::Config(format!(
                    "{kind}: timestep_type `{other}` is not supported (valid: discrete, continuous)"
                )))
            }
        };
        // With `log_linear` diffusers makes n + 2 sigmas for n timesteps (a quirk of
        // `torch.linspace(..., n + 1)` plus the final sigma); steps use sigmas[i], sigmas[i + 1].
        let max_sigma = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => max_sigma,
            Spacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Ok(Self {
            prediction,
            sigmas,
            timesteps,
            init_noise_sigma,
        })
    }

    /// The sigma of each step, plus the final one (diffusers' `scheduler.sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for Euler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Euler
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &ArrayD<f32>, step: usize) -> ArrayD<f32> {
        let sigma = self.sigmas[step];
        let d = (sigma * sigma + 1.0).sqrt();
        sample.mapv(|x| x / d)
    }

    fn step(
        &mut self,
        model_output: &ArrayD<f32>,
        step: usize,
        sample: &ArrayD<f32>,
    ) -> ArrayD<f32> {
        assert!(
            step < self.timesteps.len(),
            "Euler: step {step} out of range (0..{})",
            self.timesteps.len()
        );
        let sigma = self.sigmas[step];
        // gamma = 0 (no churn): sigma_hat = sigma * (0.0 + 1).
        let sigma_hat = sigma * 1.0;
        let pred_original_sample = match self.prediction {
            EulerPrediction::Epsilon => zip2(sample, model_output, |s, m| s - sigma_hat * m),
            EulerPrediction::VPrediction => {
                let s2p1 = sigma * sigma + 1.0;
                let c_out = -sigma / s2p1.sqrt();
                zip2(sample, model_output, |s, m| m * c_out + s / s2p1)
            }
            EulerPrediction::Sample => model_output.clone(),
        };
        let dt = self.sigmas[step + 1] - sigma_hat;
        zip2(sample, &pred_original_sample, |s, x0| {
            let derivative = (s - x0) / sigma_hat;
            s + derivative * dt
        })
    }
}
