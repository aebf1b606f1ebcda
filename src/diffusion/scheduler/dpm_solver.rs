//! Multistep DPM-Solver / DPM-Solver++ (DPM++ 2M with the defaults): mirrors diffusers'
//! `DPMSolverMultistepScheduler` (`diffusers/schedulers/scheduling_dpmsolver_multistep.py`).
//!
//! Keys read (diffusers defaults): the beta keys ([`super::betas::BetaConfig`]),
//! `solver_order` (2; 1–3 supported), `prediction_type` ("epsilon"; also
//! "v_prediction", "sample"), `algorithm_type` ("dpmsolver++"; also "dpmsolver",
//! and "deis", which diffusers maps to "dpmsolver++"), `solver_type` ("midpoint";
//! also "heun"; "logrho"/"bh1"/"bh2" map to "midpoint"), `lower_order_final`
//! (true), `euler_at_final` (false), `final_sigmas_type` ("zero"; also
//! "sigma_min"), `lambda_min_clipped` (-inf), `timestep_spacing` ("linspace"),
//! `steps_offset` (0), `rescale_betas_zero_snr` (false).
//! Rejected when switched on: `thresholding`, `use_karras_sigmas`,
//! `use_exponential_sigmas`, `use_beta_sigmas`, `use_lu_lambdas`,
//! `use_flow_sigmas`, a non-null `variance_type`, the SDE algorithm types.
//!
//! Precision: sigmas are the `f32` training sigmas at integer timesteps; every
//! per-step scalar (`alpha_t = 1 / sqrt(σ² + 1)`, `λ = ln α - ln σ`, `h`, `exp(-h)`,
//! …) is an `f32` 0-d tensor operation in diffusers and is `f32` here.

use ndarray::ArrayD;

use super::betas::{alphas_cumprod, rescale_zero_terminal_snr, BetaConfig};
use super::euler::train_sigmas;
use super::timesteps::{np_arange_f64, np_interp_arange, np_linspace, np_round, Spacing};
use super::{
    check_steps, exp_f32, ln_f32, reject_flags, zip2, zip3, Scheduler, SchedulerConfig,
    SchedulerError, SchedulerKind,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    /// DPM-Solver++: the model output is converted to a data (x0) prediction.
    DpmSolverPp,
    /// DPM-Solver: the model output is converted to a noise prediction.
    DpmSolver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

/// diffusers' `DPMSolverMultistepScheduler` (deterministic variants).
#[derive(Debug, Clone)]
pub struct DpmSolverMultistep {
    algorithm: Algorithm,
    solver_type: SolverType,
    solver_order: usize,
    prediction: PredictionType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigmas_zero: bool,
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    // diffusers' mutable state.
    model_outputs: Vec<Option<ArrayD<f32>>>,
    lower_order_nums: usize,
    step_index: usize,
}

impl DpmSolverMultistep {
    /// `DPMSolverMultistepScheduler.from_config(config)` then `set_timesteps(num_inference_steps)`.
    pub fn new(
        config: &SchedulerConfig,
        num_inference_steps: usize,
    ) -> Result<Self, SchedulerError> {
        let kind = SchedulerKind::DpmPp2m;
        let beta_config = BetaConfig::from_config(config)?;
        let solver_order = config.usize_or("solver_order", 2)?;
        if !(1..=3).contains(&solver_order) {
            return Err(SchedulerError::Config(format!(
                "{kind}: solver_order {solver_order} is not supported (valid: 1, 2, 3)"
            )));
        }
        let prediction = match config.str_or("prediction_type", "epsilon")? {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::VPrediction,
            "sample" => PredictionType::Sample,
            other => {
                return Err(SchedulerError::Config(format!(
                    "{kind}: prediction_type `{other}` is not supported (valid: epsilon, v_prediction, sample)"
                )))
            }
        };
        let algorithm = match config.str_or("algorithm_type", "dpmsolver++")? {
            "dpmsolver++" | "deis" => Algorithm::DpmSolverPp,
            "dpmsolver" => Algorithm::DpmSolver,
            other => {
                return Err(SchedulerError::Config(format!(
                    "{kind}: algorithm_type `{other}` is not supported (valid: dpmsolver++, dpmsolver; \
                     the SDE variants need noise and are not implemented)"
                )))
            }
        };
        let solver_type = match config.str_or("solver_type", "midpoint")? {
            "midpoint" | "logrho" | "bh1" | "bh2" => SolverType::Midpoint,
            "heun" => SolverType::Heun,
            other => {
                return Err(SchedulerError::Config(format!(
                    "{kind}: solver_type `{other}` is not supported (valid: midpoint, heun)"
                )))
            }
        };
        let lower_order_final = config.bool_or("lower_order_final", true)?;
        let euler_at_final = config.bool_or("euler_at_final", false)?;
        let final_sigmas_type = config.str_or("final_sigmas_type", "zero")?;
        let final_sigmas_zero = match final_sigmas_type {
            "zero" => true,
            "sigma_min" => false,
            other => {
                return Err(SchedulerError::Config(format!(
                    "{kind}: final_sigmas_type `{other}` is not supported (valid: zero, sigma_min)"
                )))
            }
        };
        if algorithm == Algorithm::DpmSolver && final_sigmas_zero {
            return Err(SchedulerError::Config(format!(
                "{kind}: final_sigmas_type zero is not supported with algorithm_type dpmsolver \
                 (diffusers raises); use sigma_min"
            )));
        }
        let lambda_min_clipped = config.f64_or("lambda_min_clipped", f64::NEG_INFINITY)?;
        let spacing = Spacing::parse(config.str_or("timestep_spacing", "linspace")?)?;
        let steps_offset = config.i64_or("steps_offset", 0)?;
        let rescale = config.bool_or("rescale_betas_zero_snr", false)?;
        reject_flags(
            kind,
            config,
            &[
                "thresholding",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_lu_lambdas",
                "use_flow_sigmas",
            ],
        )?;
        if let Some(v) = config.opt_str("variance_type")? {
            return Err(SchedulerError::Config(format!(
                "{kind}: variance_type `{v}` is not supported"
            )));
        }

        let mut betas = beta_config.betas()?;
        if rescale {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let mut alphas_cumprod = alphas_cumprod(&betas);
        if rescale {
            *alphas_cumprod.last_mut().expect("at least one train step") = 2f32.powi(-24);
        }

        let t = beta_config.num_train_timesteps;
        let n = num_inference_steps;
        check_steps(kind, n, t)?;

        // clipped_idx = torch.searchsorted(torch.flip(lambda_t, [0]), lambda_min_clipped)
        let lambda_min_clipped = lambda_min_clipped as f32;
        let clipped_idx = alphas_cumprod
            .iter()
            .rev()
            .map(|&a| ln_f32(a.sqrt()) - ln_f32((1.0 - a).sqrt()))
            .filter(|&l| l < lambda_min_clipped)
            .count();
        let last_timestep = t - clipped_idx;
        if last_timestep == 0 {
            return Err(SchedulerError::Config(format!(
                "{kind}: lambda_min_clipped {lambda_min_clipped} clips every timestep"
            )));
        }

        let timesteps_i: Vec<i64> = match spacing {
            Spacing::Linspace => {
                let mut v: Vec<i64> = np_linspace(0.0, (last_timestep - 1) as f64, n + 1)
                    .into_iter()
                    .rev()
                    .map(|x| np_round(x) as i64)
                    .collect();
                v.pop();
                v
            }
            Spacing::Leading => {
                let ratio = (last_timestep / (n + 1)) as i64;
                (1..=n as i64)
                    .rev()
                    .map(|i| i * ratio + steps_offset)
                    .collect()
            }
            Spacing::Trailing => np_arange_f64(last_timestep as f64, 0.0, -(t as f64 / n as f64))
                .into_iter()
                .map(|x| np_round(x) as i64 - 1)
                .collect(),
        };
        if timesteps_i.is_empty() {
            return Err(SchedulerError::Steps(format!(
                "{kind}: no timesteps for {n} steps"
            )));
        }
        if timesteps_i[1..].contains(&timesteps_i[0]) {
            // diffusers' index_for_timestep would start at the *second* occurrence.
            return Err(SchedulerError::Steps(format!(
                "{kind}: num_inference_steps {n} with timestep_spacing {spacing:?} repeats the \
                 first timestep {} (diffusers would skip the first step); choose another step count",
                timesteps_i[0]
            )));
        }

        let train = train_sigmas(&alphas_cumprod);
        let mut sigmas: Vec<f32> = timesteps_i
            .iter()
            .map(|&ts| np_interp_arange(ts as f64, &train) as f32)
            .collect();
        sigmas.push(if final_sigmas_zero {
            0.0
        } else {
            ((1.0 - alphas_cumprod[0]) / alphas_cumprod[0]).sqrt()
        });

        Ok(Self {
            algorithm,
            solver_type,
            solver_order,
            prediction,
            lower_order_final,
            euler_at_final,
            final_sigmas_zero,
            sigmas,
            timesteps: timesteps_i.iter().map(|&v| v as f32).collect(),
            model_outputs: vec![None; solver_order],
            lower_order_nums: 0,
            step_index: 0,
        })
    }

    /// The sigma of each step, plus the final one (diffusers' `scheduler.sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// `_sigma_to_alpha_sigma_t`: `alpha_t = 1 / (σ² + 1) ** 0.5`, `sigma_t = σ * alpha_t`.
    fn alpha_sigma(&self, index: usize) -> (f32, f32) {
        let sigma = self.sigmas[index];
        let alpha_t = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha_t, sigma * alpha_t)
    }

    /// `convert_model_output`.
    fn convert_model_output(
        &self,
        model_output: &ArrayD<f32>,
        sample: &ArrayD<f32>,
    ) -> ArrayD<f32> {
        let (alpha_t, sigma_t) = self.alpha_sigma(self.step_index);
        match (self.algorithm, self.prediction) {
            (Algorithm::DpmSolverPp, PredictionType::Epsilon) => {
                zip2(sample, model_output, |s, m| (s - sigma_t * m) / alpha_t)
            }
            (Algorithm::DpmSolverPp, PredictionType::Sample) => model_output.clone(),
            (Algorithm::DpmSolverPp, PredictionType::VPrediction) => {
                zip2(sample, model_output, |s, m| alpha_t * s - sigma_t * m)
            }
            (Algorithm::DpmSolver, PredictionType::Epsilon) => model_output.clone(),
            (Algorithm::DpmSolver, PredictionType::Sample) => {
                zip2(sample, model_output, |s, m| (s - alpha_t * m) / sigma_t)
            }
            (Algorithm::DpmSolver, PredictionType::VPrediction) => {
                zip2(sample, model_output, |s, m| alpha_t * m + sigma_t * s)
            }
        }
    }

    /// `lambda = log(alpha) - log(sigma)` at sigma index `index`, with its alpha/sigma.
    fn lambda(&self, index: usize) -> (f32, f32, f32) {
        let (alpha, sigma) = self.alpha_sigma(index);
        (ln_f32(alpha) - ln_f32(sigma), alpha, sigma)
    }

    /// `dpm_solver_first_order_update`.
    fn first_order(&self, m0: &ArrayD<f32>, sample: &ArrayD<f32>) -> ArrayD<f32> {
        let i = self.step_index;
        let (lambda_t, alpha_t, sigma_t) = self.lambda(i + 1);
        let (lambda_s, alpha_s, sigma_s) = self.lambda(i);
        let h = lambda_t - lambda_s;
        match self.algorithm {
            Algorithm::DpmSolverPp => {
                let a = sigma_t / sigma_s;
                let b = alpha_t * (exp_f32(-h) - 1.0);
                zip2(sample, m0, |s, m| a * s - b * m)
            }
            Algorithm::DpmSolver => {
                let a = alpha_t / alpha_s;
                let b = sigma_t * (exp_f32(h) - 1.0);
                zip2(sample, m0, |s, m| a * s - b * m)
            }
        }
    }

    /// `multistep_dpm_solver_second_order_update`.
    fn second_order(&self, sample: &ArrayD<f32>) -> ArrayD<f32> {
        let i = self.step_index;
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1]
            .as_ref()
            .expect("DPM-Solver: current output");
        let m1 = self.model_outputs[k - 2]
            .as_ref()
            .expect("DPM-Solver: previous output");
        let (lambda_t, alpha_t, sigma_t) = self.lambda(i + 1);
        let (lambda_s0, alpha_s0, sigma_s0) = self.lambda(i);
        let (lambda_s1, _, _) = self.lambda(i - 1);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let r0 = h_0 / h;
        let inv_r0 = 1.0 / r0;
        // D0 = m0, D1 = (1 / r0) * (m0 - m1)
        match (self.algorithm, self.solver_type) {
            (Algorithm::DpmSolverPp, SolverType::Midpoint) => {
                let a = sigma_t / sigma_s0;
                let b = alpha_t * (exp_f32(-h) - 1.0);
                let c = 0.5 * (alpha_t * (exp_f32(-h) - 1.0));
                zip3(sample, m0, m1, |s, d0, m1| {
                    a * s - b * d0 - c * (inv_r0 * (d0 - m1))
                })
            }
            (Algorithm::DpmSolverPp, SolverType::Heun) => {
                let a = sigma_t / sigma_s0;
                let b = alpha_t * (exp_f32(-h) - 1.0);
                let c = alpha_t * ((exp_f32(-h) - 1.0) / h + 1.0);
                zip3(sample, m0, m1, |s, d0, m1| {
                    a * s - b * d0 + c * (inv_r0 * (d0 - m1))
                })
            }
            (Algorithm::DpmSolver, SolverType::Midpoint) => {
                let a = alpha_t / alpha_s0;
                let b = sigma_t * (exp_f32(h) - 1.0);
                let c = 0.5 * (sigma_t * (exp_f32(h) - 1.0));
                zip3(sample, m0, m1, |s, d0, m1| {
                    a * s - b * d0 - c * (inv_r0 * (d0 - m1))
                })
            }
            (Algorithm::DpmSolver, SolverType::Heun) => {
                let a = alpha_t / alpha_s0;
                let b = sigma_t * (exp_f32(h) - 1.0);
                let c = sigma_t * ((exp_f32(h) - 1.0) / h - 1.0);
                zip3(sample, m0, m1, |s, d0, m1| {
                    a * s - b * d0 - c * (inv_r0 * (d0 - m1))
                })
            }
        }
    }

    /// `multistep_dpm_solver_third_order_update`.
    fn third_order(&self, sample: &ArrayD<f32>) -> ArrayD<f32> {
        let i = self.step_index;
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1]
            .as_ref()
            .expect("DPM-Solver: current output");
        let m1 = self.model_outputs[k - 2]
            .as_ref()
            .expect("DPM-Solver: previous output");
        let m2 = self.model_outputs[k - 3]
            .as_ref()
            .expect("DPM-Solver: older output");
        let (lambda_t, alpha_t, sigma_t) = self.lambda(i + 1);
        let (lambda_s0, alpha_s0, sigma_s0) = self.lambda(i);
        let (lambda_s1, _, _) = self.lambda(i - 1);
        let (lambda_s2, _, _) = self.lambda(i - 2);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let h_1 = lambda_s1 - lambda_s2;
        let r0 = h_0 / h;
        let r1 = h_1 / h;
        let inv_r0 = 1.0 / r0;
        let inv_r1 = 1.0 / r1;
        let w = r0 / (r0 + r1);
        let inv_r01 = 1.0 / (r0 + r1);
        let (a, b, c, d, sign_c) = match self.algorithm {
            Algorithm::DpmSolverPp => {
                let e = exp_f32(-h);
                (
                    sigma_t / sigma_s0,
                    alpha_t * (e - 1.0),
                    alpha_t * ((e - 1.0) / h + 1.0),
                    alpha_t * ((e - 1.0 + h) / (h * h) - 0.5),
                    1.0f32,
                )
            }
            Algorithm::DpmSolver => {
                let e = exp_f32(h);
                (
                    alpha_t / alpha_s0,
                    sigma_t * (e - 1.0),
                    sigma_t * ((e - 1.0) / h - 1.0),
                    sigma_t * ((e - 1.0 - h) / (h * h) - 0.5),
                    -1.0f32,
                )
            }
        };
        let mut out = sample.clone();
        ndarray::Zip::from(&mut out)
            .and(m0)
            .and(m1)
            .and(m2)
            .for_each(|s, &m0, &m1, &m2| {
                let d1_0 = inv_r0 * (m0 - m1);
                let d1_1 = inv_r1 * (m1 - m2);
                let d1 = d1_0 + w * (d1_0 - d1_1);
                let d2 = inv_r01 * (d1_0 - d1_1);
                let base = a * *s - b * m0;
                // dpmsolver++: base + c*D1 - d*D2; dpmsolver: base - c*D1 - d*D2.
                *s = if sign_c > 0.0 {
                    base + c * d1 - d * d2
                } else {
                    base - c * d1 - d * d2
                };
            });
        out
    }
}

impl Scheduler for DpmSolverMultistep {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::DpmPp2m
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
        assert_eq!(
            step, self.step_index,
            "DPM-Solver: steps must be taken in order 0, 1, 2, … (got {step}, expected {})",
            self.step_index
        );
        let n = self.timesteps.len();
        assert!(step < n, "DPM-Solver: step {step} out of range (0..{n})");
        let lower_order_final = step == n - 1
            && (self.euler_at_final
                || (self.lower_order_final && n < 15)
                || self.final_sigmas_zero);
        let lower_order_second = step + 2 == n && self.lower_order_final && n < 15;

        let converted = self.convert_model_output(model_output, sample);
        self.model_outputs.rotate_left(1);
        let last = self.model_outputs.len() - 1;
        self.model_outputs[last] = Some(converted);

        let prev = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            let m0 = self.model_outputs[last].as_ref().expect("just stored");
            self.first_order(m0, sample)
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(sample)
        } else {
            self.third_order(sample)
        };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index += 1;
        prev
    }
}
