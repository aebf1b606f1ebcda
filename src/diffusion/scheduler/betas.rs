//! The training noise schedule shared by every scheduler: `betas`, `alphas_cumprod`.
//!
//! Mirrors the `__init__` prologue that `PNDMScheduler`, `DDIMScheduler`,
//! `EulerDiscreteScheduler` and `DPMSolverMultistepScheduler` share in diffusers
//! (plus the module-level `betas_for_alpha_bar` and `rescale_zero_terminal_snr`),
//! operation by operation in the same precision:
//!
//! * `linear`: `torch.linspace(beta_start, beta_end, T, dtype=float32)`;
//!   `scaled_linear`: `torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=float32) ** 2`
//!   (the square roots are Python `float` powers, the square is `f32`).
//!   torch's CPU linspace works in `f32`: `step = (end - start) / (T - 1)`, element
//!   `i` is `fma(step, i, start)` for the first half and `fma(-step, T - 1 - i, end)`
//!   for the second half (the compiler contracts `start + step * i` to an FMA in
//!   the PyPI build; checked bit for bit against torch 2.15).
//! * `squaredcos_cap_v2`: `betas_for_alpha_bar`, computed in Python `float` (f64)
//!   and then rounded to `f32` by `torch.tensor(..., dtype=float32)`. Every
//!   division there is a float division (the classic port bug of dividing the
//!   integers `i / T` is avoided and tested).
//! * `trained_betas`: f64 values rounded to `f32`.
//! * `alphas = 1.0 - betas` in `f32`; `alphas_cumprod = torch.cumprod(alphas)`:
//!   torch's CPU cumprod accumulates in **f64** (`acc_type<float, false>`) and
//!   rounds every partial product to `f32`.

use super::config::SchedulerConfig;
use super::SchedulerError;

/// The keys every one of the four diffusers classes accepts, with the (shared)
/// diffusers defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct BetaConfig {
    /// `num_train_timesteps` (default 1000).
    pub num_train_timesteps: usize,
    /// `beta_start` (default 0.0001).
    pub beta_start: f64,
    /// `beta_end` (default 0.02).
    pub beta_end: f64,
    /// `beta_schedule` (default `"linear"`).
    pub beta_schedule: String,
    /// `trained_betas` (default `None`); overrides the three keys above.
    pub trained_betas: Option<Vec<f64>>,
}

impl BetaConfig {
    /// Reads the beta keys with diffusers' defaults.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        Ok(Self {
            num_train_timesteps: config.usize_or("num_train_timesteps", 1000)?,
            beta_start: config.f64_or("beta_start", 0.0001)?,
            beta_end: config.f64_or("beta_end", 0.02)?,
            beta_schedule: config.str_or("beta_schedule", "linear")?.to_string(),
            trained_betas: config.opt_f64_list("trained_betas")?,
        })
    }

    /// The `f32` betas, as the diffusers constructors compute them.
    pub fn betas(&self) -> Result<Vec<f32>, SchedulerError> {
        let t = self.num_train_timesteps;
        if t == 0 {
            return Err(SchedulerError::Config(
                "num_train_timesteps must be at least 1".into(),
            ));
        }
        if let Some(trained) = &self.trained_betas {
            if trained.len() != t {
                return Err(SchedulerError::Config(format!(
                    "trained_betas has {} values but num_train_timesteps is {t}",
                    trained.len()
                )));
            }
            return Ok(trained.iter().map(|&b| b as f32).collect());
        }
        match self.beta_schedule.as_str() {
            "linear" => Ok(torch_linspace_f32(self.beta_start, self.beta_end, t)),
            "scaled_linear" => Ok(torch_linspace_f32(
                self.beta_start.powf(0.5),
                self.beta_end.powf(0.5),
                t,
            )
            .into_iter()
            .map(|b| b * b)
            .collect()),
            "squaredcos_cap_v2" => Ok(betas_for_alpha_bar_cosine(t, 0.999)),
            other => Err(SchedulerError::Config(format!(
                "beta_schedule `{other}` is not supported (valid: linear, scaled_linear, squaredcos_cap_v2)"
            ))),
        }
    }
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU.
///
/// `start`/`end` arrive as Python floats and are rounded to `f32` first.
pub fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let start = start as f32;
    let end = end as f32;
    match steps {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (steps - 1) as f32;
            let halfway = steps / 2;
            (0..steps)
                .map(|i| {
                    if i < halfway {
                        step.mul_add(i as f32, start)
                    } else {
                        (-step).mul_add((steps - i - 1) as f32, end)
                    }
                })
                .collect()
        }
    }
}

/// diffusers' `betas_for_alpha_bar(T, max_beta, alpha_transform_type="cosine")`:
/// `beta_i = min(1 - ᾱ((i+1)/T) / ᾱ(i/T), max_beta)` with
/// `ᾱ(t) = cos((t + 0.008) / 1.008 * π / 2) ** 2`, all in f64, then rounded to `f32`.
pub fn betas_for_alpha_bar_cosine(num_diffusion_timesteps: usize, max_beta: f64) -> Vec<f32> {
    fn alpha_bar(t: f64) -> f64 {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    }
    let n = num_diffusion_timesteps as f64;
    (0..num_diffusion_timesteps)
        .map(|i| {
            let t1 = i as f64 / n;
            let t2 = (i + 1) as f64 / n;
            let beta = 1.0 - alpha_bar(t2) / alpha_bar(t1);
            // Python's min(a, b) returns a unless b < a.
            (if max_beta < beta { max_beta } else { beta }) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr(betas)` (arXiv 2305.08891, Algorithm 1), in `f32`.
pub fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|&b| 1.0 - b).collect();
    let cumprod = torch_cumprod(&alphas);
    let mut sqrt_bar: Vec<f32> = cumprod.iter().map(|&a| a.sqrt()).collect();
    let first = sqrt_bar[0];
    let last = sqrt_bar[sqrt_bar.len() - 1];
    let scale = first / (first - last);
    for v in &mut sqrt_bar {
        *v -= last;
        *v *= scale;
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|&v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for w in bar.windows(2) {
        out.push(1.0 - w[1] / w[0]);
    }
    out
}

/// `torch.cumprod` of an `f32` tensor on the CPU: f64 accumulator, each partial
/// product rounded to `f32`.
pub fn torch_cumprod(values: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .iter()
        .map(|&v| {
            acc *= f64::from(v);
            acc as f32
        })
        .collect()
}

/// `alphas_cumprod = torch.cumprod(1.0 - betas)`.
pub fn alphas_cumprod(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|&b| 1.0 - b).collect();
    torch_cumprod(&alphas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_betas_are_not_integer_divided() {
        let b = betas_for_alpha_bar_cosine(1000, 0.999);
        assert_eq!(b.len(), 1000);
        // An integer-division port gives t1 = t2 = 0 and all-zero betas.
        assert!(b.iter().all(|&x| x > 0.0 && x <= 0.999));
        assert!(b[0] < 1e-4, "first beta {}", b[0]);
        assert_eq!(b[999], 0.999);
        assert!(b.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn linspace_endpoints() {
        let v = torch_linspace_f32(0.1, 0.7, 77);
        assert_eq!(v[0], 0.1f32);
        assert_eq!(v[76], 0.7f32);
        assert_eq!(torch_linspace_f32(0.3, 0.5, 1), vec![0.3f32]);
    }

    #[test]
    fn zero_snr_rescale_ends_at_zero() {
        let betas = torch_linspace_f32(0.00085f64.sqrt(), 0.012f64.sqrt(), 1000)
            .into_iter()
            .map(|b| b * b)
            .collect::<Vec<_>>();
        let r = rescale_zero_terminal_snr(&betas);
        assert_eq!(r[999], 1.0);
        assert_eq!(alphas_cumprod(&r)[999], 0.0);
    }
}
