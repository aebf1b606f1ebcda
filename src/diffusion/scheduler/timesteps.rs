//! numpy emulation for the timestep grids (`set_timesteps`) and sigma interpolation.
//!
//! diffusers builds its inference timesteps with numpy in f64 and rounds with
//! `np.round` (ties to even). These helpers reproduce the numpy functions it uses
//! bit for bit, including their corner cases:
//!
//! * `np.linspace(start, stop, num)`: `y[i] = i * ((stop - start) / (num - 1)) + start`,
//!   the last element is set to `stop`; `num == 1` gives `[start]`.
//! * `np.arange(start, stop, step)` with a float step: the length is
//!   `ceil((stop - start) / step)` and `y[i] = start + i * ((start + step) - start)`.
//!   For `timestep_spacing="trailing"` this yields **n + 1** values for some `n`
//!   (e.g. 1000 train steps, `n = 61`), exactly as diffusers does.
//! * `np.interp(x, arange(len(fp)), fp)` in f64.

use super::SchedulerError;

/// `np.linspace(start, stop, num)` (float64, endpoint included).
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let div = num - 1;
    let delta = stop - start;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64).collect();
    if div > 0 {
        let step = delta / div as f64;
        if step == 0.0 {
            for v in &mut y {
                *v = *v / div as f64 * delta;
            }
        } else {
            for v in &mut y {
                *v *= step;
            }
        }
    } else {
        for v in &mut y {
            *v *= delta;
        }
    }
    for v in &mut y {
        *v += start;
    }
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// `np.arange(start, stop, step)` for a float (negative or positive) step.
pub fn np_arange_f64(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if !len.is_finite() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| {
            if i == 0 {
                start
            } else {
                start + i as f64 * delta
            }
        })
        .collect()
}

/// `np.interp(x, np.arange(0, fp.len()), fp)` with `fp` given as `f32` (as diffusers'
/// sigma arrays are), computed in f64.
pub fn np_interp_arange(x: f64, fp: &[f32]) -> f64 {
    let n = fp.len();
    let y = |j: usize| f64::from(fp[j]);
    if x.is_nan() {
        return x;
    }
    if x < 0.0 {
        return y(0);
    }
    let last = (n - 1) as f64;
    if x >= last {
        return y(n - 1);
    }
    let j = x.floor() as usize;
    let xj = j as f64;
    if xj == x {
        return y(j);
    }
    // xp[j+1] - xp[j] == 1 exactly.
    let slope = (y(j + 1) - y(j)) / 1.0;
    let r = slope * (x - xj) + y(j);
    if r.is_nan() {
        let r2 = slope * (x - (xj + 1.0)) + y(j + 1);
        if r2.is_nan() && y(j) == y(j + 1) {
            return y(j);
        }
        return r2;
    }
    r
}

/// `timestep_spacing`, the three ways diffusers lays the inference steps over the
/// training steps (Table 2 of arXiv 2305.08891).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// `"linspace"`: evenly from 0 to `T - 1`.
    Linspace,
    /// `"leading"`: multiples of `T // n`, plus `steps_offset`.
    Leading,
    /// `"trailing"`: counted down from `T`, minus one.
    Trailing,
}

impl Spacing {
    /// Parses the `timestep_spacing` value.
    pub fn parse(s: &str) -> Result<Self, SchedulerError> {
        match s {
            "linspace" => Ok(Self::Linspace),
            "leading" => Ok(Self::Leading),
            "trailing" => Ok(Self::Trailing),
            other => Err(SchedulerError::Config(format!(
                "timestep_spacing `{other}` is not supported (valid: linspace, leading, trailing)"
            ))),
        }
    }
}

/// `np.round` (half to even).
pub fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_basic() {
        assert_eq!(np_linspace(0.0, 999.0, 1), vec![0.0]);
        assert_eq!(np_linspace(0.0, 999.0, 2), vec![0.0, 999.0]);
        assert_eq!(np_linspace(0.0, 999.0, 3), vec![0.0, 499.5, 999.0]);
        assert_eq!(np_round(499.5), 500.0);
        assert_eq!(np_round(500.5), 500.0);
    }

    #[test]
    fn arange_trailing_overshoot() {
        // numpy gives 62 values for np.arange(1000, 0, -1000/61).
        assert_eq!(np_arange_f64(1000.0, 0.0, -1000.0 / 61.0).len(), 62);
        assert_eq!(np_arange_f64(1000.0, 0.0, -1000.0 / 50.0).len(), 50);
    }

    #[test]
    fn interp() {
        let fp = [1.0f32, 3.0, 7.0];
        assert_eq!(np_interp_arange(-1.0, &fp), 1.0);
        assert_eq!(np_interp_arange(0.5, &fp), 2.0);
        assert_eq!(np_interp_arange(1.0, &fp), 3.0);
        assert_eq!(np_interp_arange(1.25, &fp), 4.0);
        assert_eq!(np_interp_arange(2.0, &fp), 7.0);
        assert_eq!(np_interp_arange(9.0, &fp), 7.0);
    }
}
