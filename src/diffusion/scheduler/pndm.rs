//! Pseudo numerical methods (PLMS, optionally with a Runge-Kutta warm-up): mirrors
//! diffusers' `PNDMScheduler` (`diffusers/schedulers/scheduling_pndm.py`).
//!
//! Keys read (diffusers defaults): the beta keys ([`super::betas::BetaConfig`]),
//! `skip_prk_steps` (false), `set_alpha_to_one` (false), `prediction_type`
//! ("epsilon" or "v_prediction"), `timestep_spacing` ("leading"), `steps_offset` (0).
//! `PNDMScheduler` has no `rescale_betas_zero_snr`, so that key is ignored.
//!
//! With `skip_prk_steps` (SD 1.5) the schedule has `n + 1` timesteps: the second
//! entry repeats the first, and the first two steps together form one
//! second-order (Heun-like) step. Without it, the last four grid points are
//! refined by 12 pseudo Runge-Kutta half steps before the linear multistep part.
//! The step logic (its `counter`, `ets` history and `cur_sample`) is a line by line
//! port; all scalar arithmetic is `f32`.

use ndarray::ArrayD;

use super::betas::{alphas_cumprod, BetaConfig};
use super::ddim::PredictionType;
use super::timesteps::{np_arange_f64, np_linspace, np_round, Spacing};
use super::{
    check_steps, zip2, zip3, zip4, Scheduler, SchedulerConfig, SchedulerError, SchedulerKind,
};

/// diffusers' `PNDMScheduler`.
#[derive(Debug, Clone)]
pub struct Pndm {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    prediction: PredictionType,
    skip_prk_steps: bool,
    prk_len: usize,
    prk_timesteps: Vec<i64>,
    timesteps_i: Vec<i64>,
    timesteps: Vec<f32>,
    // diffusers' mutable state.
    counter: usize,
    ets: Vec<ArrayD<f32>>,
    cur_model_output: Option<ArrayD<f32>>,
    cur_sample: Option<ArrayD<f32>>,
}

/// `self._timesteps` of `PNDMScheduler.set_timesteps` (ascending).
fn base_timesteps(spacing: Spacing, t: usize, n: usize, steps_offset: i64) -> Vec<i64> {
    match spacing {
        Spacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .map(|v| np_round(v) as i64)
            .collect(),
        Spacing::Leading => {
            let ratio = (t / n) as i64;
            (0..n as i64).map(|i| i * ratio + steps_offset).collect()
        }
        Spacing::Trailing => np_arange_f64(t as f64, 0.0, -(t as f64 / n as f64))
            .into_iter()
            .rev()
            .map(|v| np_round(v) as i64 - 1)
            .collect(),
    }
}

impl Pndm {
    /// `PNDMScheduler.from_config(config)` then `set_timesteps(num_inference_steps)`.
    pub fn new(
        config: &SchedulerConfig,
        num_inference_steps: usize,
    ) -> Result<Self, SchedulerError> {
        let kind = SchedulerKind::Pndm;
        let beta_config = BetaConfig::from_config(config)?;
        let skip_prk_steps = config.bool_or("skip_prk_steps", false)?;
        let set_alpha_to_one = config.bool_or("set_alpha_to_one", false)?;
        let prediction =
            PredictionType::parse(kind, config.str_or("prediction_type", "epsilon")?, false)?;
        let spacing = Spacing::parse(config.str_or("timestep_spacing", "leading")?)?;
        let steps_offset = config.i64_or("steps_offset", 0)?;

        let betas = beta_config.betas()?;
        let alphas_cumprod = alphas_cumprod(&betas);
        let final_alpha_cumprod = if set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };

        let t = beta_config.num_train_timesteps;
        let n = num_inference_steps;
        check_steps(kind, n, t)?;
        let base = base_timesteps(spacing, t, n, steps_offset);

        let (prk_timesteps, plms_timesteps): (Vec<i64>, Vec<i64>) = if skip_prk_steps {
            // concat(_t[:-1], _t[-2:-1], _t[-1:])[::-1]
            let len = base.len();
            let mut v: Vec<i64> = base[..len.saturating_sub(1)].to_vec();
            v.extend_from_slice(&base[len.saturating_sub(2)..len.saturating_sub(1)]);
            v.extend_from_slice(&base[len.saturating_sub(1)..]);
            v.reverse();
            (Vec::new(), v)
        } else {
            const PNDM_ORDER: usize = 4;
            if base.len() < PNDM_ORDER {
                // numpy cannot broadcast `_timesteps[-4:].repeat(2)` against
                // `np.tile([0, half], 4)`: diffusers raises.
                return Err(SchedulerError::Steps(format!(
                    "{kind}: with skip_prk_steps false, num_inference_steps must be at least 4 \
                     (got {n}; diffusers raises)"
                )));
            }
            let half = (t / n / 2) as i64;
            // _t[-4:].repeat(2) + tile([0, half], 4)
            let tail = &base[base.len().saturating_sub(PNDM_ORDER)..];
            let mut pairs = Vec::new();
            for (k, &ts) in tail.iter().flat_map(|ts| [ts, ts]).enumerate() {
                pairs.push(ts + if k % 2 == 1 { half } else { 0 });
            }
            // (prk[:-1].repeat(2)[1:-1])[::-1]
            pairs.pop();
            let doubled: Vec<i64> = pairs.iter().flat_map(|&x| [x, x]).collect();
            let mut prk = if doubled.len() >= 2 {
                doubled[1..doubled.len() - 1].to_vec()
            } else {
                Vec::new()
            };
            prk.reverse();
            let plms: Vec<i64> = base[..base.len().saturating_sub(3)]
                .iter()
                .rev()
                .copied()
                .collect();
            (prk, plms)
        };
        let timesteps_i: Vec<i64> = prk_timesteps
            .iter()
            .chain(&plms_timesteps)
            .copied()
            .collect();

        let pndm = Self {
            timesteps: timesteps_i.iter().map(|&v| v as f32).collect(),
            prk_len: prk_timesteps.len(),
            prk_timesteps,
            timesteps_i,
            alphas_cumprod,
            final_alpha_cumprod,
            num_train_timesteps: t,
            num_inference_steps: n,
            prediction,
            skip_prk_steps,
            counter: 0,
            ets: Vec::new(),
            cur_model_output: None,
            cur_sample: None,
        };
        pndm.validate()?;
        Ok(pndm)
    }

    /// Dry-runs the timestep bookkeeping of every step, so that what would raise or
    /// index out of range in diffusers is an error here instead of a panic later.
    fn validate(&self) -> Result<(), SchedulerError> {
        let kind = SchedulerKind::Pndm;
        let n = self.num_inference_steps;
        if self.timesteps_i.is_empty() {
            return Err(SchedulerError::Steps(format!(
                "{kind}: num_inference_steps {n} with skip_prk_steps false gives no steps at all \
                 in diffusers; use at least 2"
            )));
        }
        let t = self.num_train_timesteps as i64;
        let mut ets = 0usize;
        for (counter, &ts) in self.timesteps_i.iter().enumerate() {
            let (timestep, prev) = if counter < self.prk_len && !self.skip_prk_steps {
                let diff = if counter % 2 == 1 {
                    0
                } else {
                    t / n as i64 / 2
                };
                if counter % 4 == 0 {
                    ets += 1;
                }
                (self.prk_timesteps[counter / 4 * 4], ts - diff)
            } else {
                if !self.skip_prk_steps && ets < 3 {
                    return Err(SchedulerError::Steps(format!(
                        "{kind}: num_inference_steps {n} is too small for the Runge-Kutta \
                         warm-up (diffusers raises); use at least 4 or skip_prk_steps"
                    )));
                }
                let ratio = t / n as i64;
                if counter == 1 {
                    (ts + ratio, ts)
                } else {
                    ets += 1;
                    (ts, ts - ratio)
                }
            };
            if timestep < 0 || timestep >= t || prev >= t {
                return Err(SchedulerError::Steps(format!(
                    "{kind}: num_inference_steps {n} with this config reaches timestep {timestep} \
                     (previous {prev}), outside 0..{t} (diffusers would index out of range); \
                     choose another step count"
                )));
            }
        }
        Ok(())
    }

    fn alpha_at(&self, timestep: i64) -> f32 {
        self.alphas_cumprod[timestep as usize]
    }

    /// `PNDMScheduler._get_prev_sample`: formula (9) of the PNDM paper.
    fn prev_sample(
        &self,
        sample: &ArrayD<f32>,
        timestep: i64,
        prev_timestep: i64,
        model_output: &ArrayD<f32>,
    ) -> ArrayD<f32> {
        let alpha_prod_t = self.alpha_at(timestep);
        let alpha_prod_t_prev = if prev_timestep >= 0 {
            self.alpha_at(prev_timestep)
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let converted;
        let model_output = if self.prediction == PredictionType::VPrediction {
            let (a, b) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
            converted = zip2(model_output, sample, |m, s| a * m + b * s);
            &converted
        } else {
            model_output
        };
        let sample_coeff = (alpha_prod_t_prev / alpha_prod_t).sqrt();
        let denom = alpha_prod_t * beta_prod_t_prev.sqrt()
            + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).sqrt();
        let diff = alpha_prod_t_prev - alpha_prod_t;
        zip2(sample, model_output, |s, m| {
            sample_coeff * s - diff * m / denom
        })
    }

    /// `PNDMScheduler.step_prk`.
    fn step_prk(
        &mut self,
        model_output: &ArrayD<f32>,
        timestep: i64,
        sample: &ArrayD<f32>,
    ) -> ArrayD<f32> {
        let t = self.num_train_timesteps as i64;
        let n = self.num_inference_steps as i64;
        let diff_to_prev = if self.counter % 2 == 1 { 0 } else { t / n / 2 };
        let prev_timestep = timestep - diff_to_prev;
        let timestep = self.prk_timesteps[self.counter / 4 * 4];

        let sixth = (1.0f64 / 6.0) as f32;
        let third = (1.0f64 / 3.0) as f32;
        let mut combined = None;
        match self.counter % 4 {
            0 => {
                // cur_model_output (0 or a tensor) += 1/6 * model_output
                self.cur_model_output = Some(add_scaled(
                    self.cur_model_output.take(),
                    sixth,
                    model_output,
                ));
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
            }
            1 | 2 => {
                self.cur_model_output = Some(add_scaled(
                    self.cur_model_output.take(),
                    third,
                    model_output,
                ));
            }
            _ => {
                combined = Some(add_scaled(
                    self.cur_model_output.take(),
                    sixth,
                    model_output,
                ));
            }
        }
        let model_output = combined.as_ref().unwrap_or(model_output);
        let cur_sample = self.cur_sample.as_ref().unwrap_or(sample);
        let prev = self.prev_sample(cur_sample, timestep, prev_timestep, model_output);
        self.counter += 1;
        prev
    }

    /// `PNDMScheduler.step_plms`.
    fn step_plms(
        &mut self,
        model_output: &ArrayD<f32>,
        timestep: i64,
        sample: &ArrayD<f32>,
    ) -> ArrayD<f32> {
        let ratio = (self.num_train_timesteps / self.num_inference_steps) as i64;
        let mut timestep = timestep;
        let mut prev_timestep = timestep - ratio;
        if self.counter != 1 {
            // ets = ets[-3:] + [model_output]
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.clone());
        } else {
            prev_timestep = timestep;
            timestep += ratio;
        }

        let e = &self.ets;
        let k = e.len();
        let mut sample = sample;
        let taken_sample;
        let combined: ArrayD<f32> = if k == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            model_output.clone()
        } else if k == 1 && self.counter == 1 {
            let c = zip2(model_output, &e[k - 1], |m, e1| (m + e1) / 2.0);
            taken_sample = self
                .cur_sample
                .take()
                .expect("PNDM: cur_sample set at counter 0");
            sample = &taken_sample;
            c
        } else if k == 2 {
            zip2(&e[1], &e[0], |e1, e2| (3.0 * e1 - e2) / 2.0)
        } else if k == 3 {
            zip3(&e[2], &e[1], &e[0], |e1, e2, e3| {
                (23.0 * e1 - 16.0 * e2 + 5.0 * e3) / 12.0
            })
        } else {
            let c = (1.0f64 / 24.0) as f32;
            zip4(
                &e[k - 1],
                &e[k - 2],
                &e[k - 3],
                &e[k - 4],
                |e1, e2, e3, e4| c * (55.0 * e1 - 59.0 * e2 + 37.0 * e3 - 9.0 * e4),
            )
        };
        let prev = self.prev_sample(sample, timestep, prev_timestep, &combined);
        self.counter += 1;
        prev
    }
}

/// `acc + c * x`, where a missing `acc` is diffusers' integer `0` (and `0 + y == y`).
fn add_scaled(acc: Option<ArrayD<f32>>, c: f32, x: &ArrayD<f32>) -> ArrayD<f32> {
    match acc {
        None => x.mapv(|v| c * v),
        Some(a) => zip2(&a, x, |a, v| a + c * v),
    }
}

impl Scheduler for Pndm {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Pndm
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
            step, self.counter,
            "PNDM: steps must be taken in order 0, 1, 2, … (got {step}, expected {})",
            self.counter
        );
        let timestep = self.timesteps_i[step];
        if self.counter < self.prk_len && !self.skip_prk_steps {
            self.step_prk(model_output, timestep, sample)
        } else {
            self.step_plms(model_output, timestep, sample)
        }
    }
}
