//! numpy's legacy `RandomState`, as far as the thesis used it: seeding with an
//! integer and `randint(low, high, size)` with the default `int64` dtype; and
//! `choice(n, size, replace=False)` for specs that sample without replacement.
//!
//! * **Seeding.** `np.random.seed(s)` / `RandomState(s)` for an integer
//!   `0 <= s < 2^32` runs MT19937's classic `init_genrand(s)` (numpy's
//!   `mt19937_seed`), the same recurrence torch uses, so the engine is
//!   [`crate::diffusion::rng::Mt19937`]. numpy rejects larger seeds
//!   ("Seed must be between 0 and 2**32 - 1"), and so does [`NumpyRandomState::new`].
//!   (Arrays and `None` take other paths, `init_by_array` and OS entropy; the
//!   thesis passed neither.)
//! * **`randint(low, high)`** draws from `[low, high)` with `rng = high - 1 - low`
//!   (numpy's `random_bounded_uint64_fill` with `use_masked = true`, which the
//!   legacy generator always uses): `rng == 0` draws nothing and gives `low`;
//!   `rng == 2^32 - 1` is one 32-bit output; any other `rng < 2^32` repeats
//!   `v = next_u32() & mask` until `v <= rng`, where `mask` is the smallest
//!   `2^k - 1 >= rng`; wider ranges do the same on 64-bit outputs
//!   `(next_u32() << 32) | next_u32()`. The result is `low + v`.
//! * **`choice(n, size, replace=False)`** is `permutation(n)[:size]`, and
//!   `permutation(n)` shuffles `arange(n)` from the last element down, swapping
//!   `x[i]` with `x[j]`, `j = random_interval(i)`: the same masked rejection,
//!   on `[0, i]`.
//!
//! numpy's stream-compatibility policy (NEP 19) freezes `RandomState`, so the
//! thesis's NumPy 1.19.5 and the NumPy of `tools/golden_numpy_randint.py` (whose
//! outputs `tests/plan_store.rs` checks) give the same numbers.

use crate::diffusion::rng::Mt19937;

/// The seed numpy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("numpy seeds must be between 0 and 2**32 - 1 (4294967295), got {0}")]
pub struct SeedOutOfRange(pub u64);

/// numpy's legacy `RandomState` (MT19937), for `randint` only.
#[derive(Clone, Debug)]
pub struct NumpyRandomState {
    mt: Mt19937,
}

impl NumpyRandomState {
    /// `np.random.RandomState(seed)`, equivalently the state `np.random.seed(seed)`
    /// gives the global functions.
    pub fn new(seed: u64) -> Result<Self, SeedOutOfRange> {
        if seed > u32::MAX as u64 {
            return Err(SeedOutOfRange(seed));
        }
        Ok(NumpyRandomState {
            mt: Mt19937::new(seed),
        })
    }

    /// One `randint(low, high)` value (`int64`). Panics when `high <= low`, where
    /// numpy raises `ValueError: low >= high`.
    pub fn randint_one(&mut self, low: i64, high: i64) -> i64 {
        assert!(high > low, "randint: low >= high ({low} >= {high})");
        let rng = (high as i128 - 1 - low as i128) as u64;
        let v = if rng == 0 {
            0
        } else if rng == u32::MAX as u64 {
            self.mt.next_u32() as u64
        } else if rng < u32::MAX as u64 {
            let mask = mask_for(rng);
            loop {
                let v = self.mt.next_u32() as u64 & mask;
                if v <= rng {
                    break v;
                }
            }
        } else {
            let mask = mask_for(rng);
            loop {
                let hi = self.mt.next_u32() as u64;
                let v = ((hi << 32) | self.mt.next_u32() as u64) & mask;
                if v <= rng {
                    break v;
                }
            }
        };
        (low as i128 + v as i128) as i64
    }

    /// `randint(low, high, size)`.
    pub fn randint(&mut self, low: i64, high: i64, size: usize) -> Vec<i64> {
        (0..size).map(|_| self.randint_one(low, high)).collect()
    }

    /// numpy's legacy `random_interval(max)`: uniform in `[0, max]` by masked
    /// rejection on 32-bit outputs (64-bit ones when `max` needs more bits).
    fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = mask_for(max);
        loop {
            let v = if max <= u32::MAX as u64 {
                self.mt.next_u32() as u64 & mask
            } else {
                let hi = self.mt.next_u32() as u64;
                ((hi << 32) | self.mt.next_u32() as u64) & mask
            };
            if v <= max {
                return v;
            }
        }
    }

    /// `permutation(n)`: `arange(n)` shuffled by numpy's legacy Fisher-Yates
    /// (`for i in n-1..1: swap(x[i], x[random_interval(i)])`).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut x: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u64) as usize;
            x.swap(i, j);
        }
        x
    }

    /// `choice(n, size, replace=False)` without weights: `permutation(n)[:size]`.
    /// Panics when `size > n`, where numpy raises.
    pub fn choice_without_replacement(&mut self, n: usize, size: usize) -> Vec<usize> {
        assert!(
            size <= n,
            "choice: cannot take {size} of {n} without replacement"
        );
        let mut p = self.permutation(n);
        p.truncate(size);
        p
    }
}

/// Smallest `2^k - 1 >= rng` (numpy's `gen_mask`).
fn mask_for(rng: u64) -> u64 {
    if rng == 0 {
        0
    } else {
        u64::MAX >> rng.leading_zeros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask_for(1), 1);
        assert_eq!(mask_for(79_999), 0x1_ffff);
        assert_eq!(mask_for(4_294_967_294), 0xffff_ffff);
        assert_eq!(mask_for(1 << 40), (1 << 41) - 1);
    }

    #[test]
    fn seed_range_is_numpys() {
        assert!(NumpyRandomState::new(u32::MAX as u64).is_ok());
        assert_eq!(
            NumpyRandomState::new(1 << 32).unwrap_err().to_string(),
            "numpy seeds must be between 0 and 2**32 - 1 (4294967295), got 4294967296"
        );
    }

    #[test]
    fn matches_numpy_seed_5() {
        // np.random.seed(5); randint(0, 80000, 5); randint(0, 4294967295, 5)
        let mut rs = NumpyRandomState::new(5).unwrap();
        assert_eq!(rs.randint(0, 80_000, 5), [35683, 18638, 20463, 5520, 59465]);
        assert_eq!(
            rs.randint(0, 4_294_967_295, 5),
            [2097710088, 385778404, 2627419879, 1703970750, 3289549211]
        );
    }
}
