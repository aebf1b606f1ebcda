//! Bit-exact reproduction of PyTorch's CPU random normal sampling.
//!
//! [`randn`] returns exactly the bits of
//!
//! ```python
//! torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
//! ```
//!
//! which is what diffusers' `randn_tensor` does on the CPU to draw the initial
//! latents. [`TorchGenerator`] is a re-implementation of torch's
//! `CPUGeneratorImpl` (an MT19937 engine plus the cached second Box-Muller
//! sample), so several draws from one generator also line up with torch.
//!
//! # How torch samples, and what is reproduced here
//!
//! * **Engine.** `manual_seed(seed)` builds a fresh 32-bit MT19937 initialised
//!   with the classic `init_genrand` recurrence from `seed & 0xffff_ffff`
//!   (torch keeps the full 64-bit seed for `initial_seed()`, but only its low 32
//!   bits reach the state, so seeds `s` and `s + 2^32` give the same numbers).
//!   Seeding also clears the cached normal sample. `random()` is one engine
//!   output; `random64()` is `(first << 32) | second`.
//! * **Uniforms.** `uniform_real_distribution<float>(0, 1)` is
//!   `(random() & (2^24 - 1)) * 2^-24`; the `double` one is
//!   `(random64() & (2^53 - 1)) * 2^-53`. Both are exact.
//! * **`normal_` on a contiguous tensor with at least 16 elements** (the
//!   `normal_fill` path; every latent tensor takes it): first the *whole*
//!   buffer is filled with float uniforms, then it is transformed in place 16
//!   at a time by Box-Muller over the lane pairs `(j, j + 8)`:
//!   `u1 = 1 - d[j]`, `u2 = d[j + 8]`, `r = sqrt(-2 ln u1)`, `θ = 2π u2`,
//!   `d[j] = r cos θ`, `d[j + 8] = r sin θ` (each then `fma(·, std, mean)`).
//!   If the size is not a multiple of 16, 16 *fresh* uniforms are drawn into
//!   the last 16 slots (overwriting already transformed values) and that
//!   window is transformed again.
//! * **`normal_` with fewer than 16 elements**: a serial loop over
//!   `at::normal_distribution<double>`: `u1`, `u2` are double uniforms,
//!   `r = sqrt(-2 log1p(-u2))`, `θ = 2π u1`; it returns `r cos θ` and caches
//!   `r sin θ` in the generator for the next element, then rounds to `f32`.
//!
//! ## Which 16-wide Box-Muller kernel ([`NormalPath`])
//!
//! The float32 `normal_fill` kernel is compiled once per ATen CPU capability:
//!
//! * **AVX2 and AVX512 capabilities** (every x86-64 host with AVX2+FMA, i.e.
//!   practically all current desktops, servers and GPU nodes):
//!   `NormalFill16<float>` / `normal_fill_16_AVX2` calls `log256_ps` and
//!   `sincos256_ps` from `ATen/native/cpu/avx_mathfun.h` — Cephes-style fp32
//!   polynomials, *not* libm and *not* Sleef. The official Linux wheels build
//!   them with GCC, whose default `-ffp-contract=fast` fuses some of the
//!   written multiply/add pairs into FMA instructions; which pairs are fused
//!   changes the last bits, so [`NormalPath::Avx2`] evaluates the exact same
//!   operation sequence, with `mul_add` exactly where GCC 13 fuses. This is
//!   the default ([`randn`]) and was verified bit for bit against torch 2.15.0
//!   (GCC 13.3 build) with `ATEN_CPU_CAPABILITY` set to `avx2` and to
//!   `avx512` (both run the same kernel).
//! * **DEFAULT capability** (x86-64 without AVX2, or `ATEN_CPU_CAPABILITY=default`):
//!   a scalar loop with `std::log`, `std::cos`, `std::sin` on `float`, i.e. the
//!   C library's `logf`/`cosf`/`sinf`, and `θ` computed in `double` then
//!   rounded. [`NormalPath::Scalar`] reproduces it with Rust's `f32::ln`,
//!   `f32::cos`, `f32::sin`, which call the same glibc functions on
//!   `*-linux-gnu`; it is bit-exact when run against the same glibc that torch
//!   uses (verified on glibc 2.36), but other libms may differ in the last bit.
//!
//! Elsewhere results can differ: aarch64 builds (NEON/SVE capabilities) do not
//! use `avx_mathfun.h`; builds made with another compiler (e.g. clang, or MSVC
//! on Windows) may fuse different operations; older torch releases gated the
//! AVX2 kernel on `CPU_CAPABILITY_AVX2` only, so on AVX512 machines they ran
//! the scalar libm kernel instead; and versions before the switch to
//! `log1p(-u2)` computed the small-tensor path with `log(1 - u2)`.
//! The small-tensor (`< 16` elements) path uses only `f64` libm functions
//! (`log1p`, `sin`, `cos`, `sqrt`), identical on every capability.

use ndarray::{ArrayD, IxDyn};

/// Size of the MT19937 state, in 32-bit words.
const MT_N: usize = 624;
/// MT19937 middle word offset.
const MT_M: usize = 397;
/// MT19937 twist matrix constant.
const MT_MATRIX_A: u32 = 0x9908_b0df;
const MT_UPPER_MASK: u32 = 0x8000_0000;
const MT_LOWER_MASK: u32 = 0x7fff_ffff;

/// A 32-bit Mersenne Twister (MT19937), seeded like torch's `at::mt19937`
/// (`init_genrand` with the low 32 bits of the seed).
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; MT_N],
    /// Index of the next state word to temper; `MT_N` means "regenerate first".
    index: usize,
}

impl Mt19937 {
    /// Seeds the engine. Only the low 32 bits of `seed` are used, like torch.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed as u32;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Mt19937 { state, index: MT_N }
    }

    /// Regenerates the whole state block (the "twist").
    fn twist(&mut self) {
        for k in 0..MT_N {
            let mixed =
                (self.state[k] & MT_UPPER_MASK) | (self.state[(k + 1) % MT_N] & MT_LOWER_MASK);
            let mut next = mixed >> 1;
            if self.state[(k + 1) % MT_N] & 1 != 0 {
                next ^= MT_MATRIX_A;
            }
            self.state[k] = self.state[(k + MT_M) % MT_N] ^ next;
        }
        self.index = 0;
    }

    /// Next tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// Which float32 Box-Muller kernel of torch's `normal_fill` to reproduce.
/// See the [module documentation](self) for when torch takes each one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NormalPath {
    /// The AVX2/AVX512 kernel (`avx_mathfun.h` log/sincos, GCC FMA
    /// contraction): what torch does on any x86-64 host with AVX2.
    #[default]
    Avx2,
    /// The DEFAULT-capability scalar kernel (libm `logf`/`cosf`/`sinf`): what
    /// torch does on x86-64 hosts without AVX2 or with
    /// `ATEN_CPU_CAPABILITY=default`.
    Scalar,
}

/// torch's CPU generator (`at::CPUGeneratorImpl`): an MT19937 engine and the
/// cached second sample of the double Box-Muller transform.
///
/// `TorchGenerator::new(seed)` is `torch.Generator().manual_seed(seed)`.
#[derive(Clone, Debug)]
pub struct TorchGenerator {
    engine: Mt19937,
    seed: u64,
    next_double_normal: Option<f64>,
}

impl TorchGenerator {
    /// Same as `torch.Generator().manual_seed(seed)`. Every `u64` is accepted;
    /// only the low 32 bits influence the stream (as in torch).
    pub fn new(seed: u64) -> Self {
        TorchGenerator {
            engine: Mt19937::new(seed),
            seed,
            next_double_normal: None,
        }
    }

    /// `generator.manual_seed(seed)`: resets the engine and drops the cached
    /// normal sample.
    pub fn manual_seed(&mut self, seed: u64) {
        *self = TorchGenerator::new(seed);
    }

    /// `generator.initial_seed()`: the full 64-bit seed last set.
    pub fn initial_seed(&self) -> u64 {
        self.seed
    }

    /// `CPUGeneratorImpl::random()`: one 32-bit engine output.
    pub fn random(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// `CPUGeneratorImpl::random64()`: `(first << 32) | second`.
    pub fn random64(&mut self) -> u64 {
        let hi = self.engine.next_u32();
        let lo = self.engine.next_u32();
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// `at::uniform_real_distribution<float>(0, 1)`: a value in `[0, 1)` with
    /// 24 random bits, consuming one `random()`.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.random() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `at::uniform_real_distribution<double>(0, 1)`: a value in `[0, 1)` with
    /// 53 random bits, consuming one `random64()`.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.random64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `at::normal_distribution<double>(mean, std)`, including the cached
    /// second sample: a fresh pair draws `u1`, `u2`, returns
    /// `r cos(2π u1) * std + mean` with `r = sqrt(-2 log1p(-u2))` and keeps
    /// `r sin(2π u1)` for the next call.
    pub fn normal_f64(&mut self, mean: f64, std: f64) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return cached * std + mean;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos() * std + mean
    }

    /// `tensor.normal_(mean, std, generator=self)` for a contiguous float32
    /// tensor whose elements are `out`, with the given fp32 kernel for the
    /// `len >= 16` case.
    ///
    /// The small-tensor path computes `value * std + mean` in `f64`; for the
    /// AVX2 path this is evaluated as one fused multiply-add (as the GCC-built
    /// AVX2/AVX512 kernels do), for the scalar path as a multiply then an add.
    /// With the defaults `mean = 0`, `std = 1` both are exact; a few other
    /// `(mean, std)` pairs are in the golden tests (`golden/randn`).
    pub fn normal_fill_f32(&mut self, out: &mut [f32], mean: f64, std: f64, path: NormalPath) {
        let size = out.len();
        if size < 16 {
            for v in out.iter_mut() {
                let sample = self.normal_f64(0.0, 1.0);
                let scaled = match path {
                    NormalPath::Avx2 => sample.mul_add(std, mean),
                    NormalPath::Scalar => sample * std + mean,
                };
                *v = scaled as f32;
            }
            return;
        }
        let (mean, std) = (mean as f32, std as f32);
        let fill16 = |chunk: &mut [f32]| match path {
            NormalPath::Avx2 => box_muller16_avx2(chunk, mean, std),
            NormalPath::Scalar => box_muller16_scalar(chunk, mean, std),
        };
        for v in out.iter_mut() {
            *v = self.uniform_f32();
        }
        let mut start = 0;
        while start + 16 <= size {
            fill16(&mut out[start..start + 16]);
            start += 16;
        }
        if !size.is_multiple_of(16) {
            let tail = &mut out[size - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            fill16(tail);
        }
    }

    /// `torch.randn(shape, generator=self, dtype=torch.float32)` on the CPU,
    /// advancing this generator like torch does, with the AVX2 kernel.
    pub fn randn(&mut self, shape: &[usize]) -> ArrayD<f32> {
        self.randn_with_path(shape, NormalPath::Avx2)
    }

    /// [`TorchGenerator::randn`] with an explicit fp32 kernel.
    pub fn randn_with_path(&mut self, shape: &[usize], path: NormalPath) -> ArrayD<f32> {
        let numel: usize = shape.iter().product();
        let mut data = vec![0f32; numel];
        self.normal_fill_f32(&mut data, 0.0, 1.0, path);
        ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape matches element count")
    }
}

/// `torch.randn(shape, generator=torch.Generator().manual_seed(seed),
/// dtype=torch.float32)`, bit for bit, as computed by torch on an x86-64 host
/// with AVX2 ([`NormalPath::Avx2`]; see the module documentation).
pub fn randn(seed: u64, shape: &[usize]) -> ArrayD<f32> {
    TorchGenerator::new(seed).randn(shape)
}

/// [`randn`] with an explicit fp32 kernel ([`NormalPath::Scalar`] matches a
/// torch running its DEFAULT CPU capability).
pub fn randn_with_path(seed: u64, shape: &[usize], path: NormalPath) -> ArrayD<f32> {
    TorchGenerator::new(seed).randn_with_path(shape, path)
}

/// The DEFAULT-capability kernel (`NormalFill16<float>` primary template):
/// libm float functions, `θ` formed in double.
fn box_muller16_scalar(d: &mut [f32], mean: f32, std: f32) {
    const TWO_PI_F64: f64 = 2.0 * std::f64::consts::PI;
    for j in 0..8 {
        let u1 = 1.0 - d[j];
        let u2 = d[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = (TWO_PI_F64 * f64::from(u2)) as f32;
        d[j] = (radius * theta.cos()).mul_add(std, mean);
        d[j + 8] = (radius * theta.sin()).mul_add(std, mean);
    }
}

/// The AVX2/AVX512 kernel, one lane at a time (lanes are independent).
fn box_muller16_avx2(d: &mut [f32], mean: f32, std: f32) {
    // _mm256_set1_ps(2.0f * c10::pi<double>): 2π rounded to float.
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0 - d[j];
        let u2 = d[j + 8];
        let radius = (-2.0 * cephes_log(u1)).sqrt();
        let theta = two_pi * u2;
        let (sin, cos) = cephes_sincos(theta);
        d[j] = (radius * cos).mul_add(std, mean);
        d[j + 8] = (radius * sin).mul_add(std, mean);
    }
}

// Constants of avx_mathfun.h (Cephes single-precision log and sin/cos). The
// C source initialises `float` arrays from double literals, so each value is
// the decimal rounded to f64 and then to f32, which is what `as f32` does.
// 0.707106781186547524 in the C source, which rounds to this f64.
const SQRTHF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
const LOG_P: [f32; 9] = [
    7.037_683_629_2e-2_f64 as f32,
    -1.151_461_031_0e-1_f64 as f32,
    1.167_699_874_0e-1_f64 as f32,
    -1.242_014_084_6e-1_f64 as f32,
    1.424_932_278_7e-1_f64 as f32,
    -1.666_805_766_5e-1_f64 as f32,
    2.000_071_476_5e-1_f64 as f32,
    -2.499_999_399_3e-1_f64 as f32,
    3.333_333_117_4e-1_f64 as f32,
];
const LOG_Q1: f32 = -2.121_944_40e-4_f64 as f32;
const LOG_Q2: f32 = 0.693_359_375_f64 as f32;
const MINUS_DP1: f32 = -0.785_156_25_f64 as f32;
// Spelled as in the C source (these are exact binary fractions).
#[allow(clippy::excessive_precision)]
const MINUS_DP2: f32 = -2.418_756_484_985_351_562_5e-4_f64 as f32;
#[allow(clippy::excessive_precision)]
const MINUS_DP3: f32 = -3.774_894_977_445_941_08e-8_f64 as f32;
const SINCOF: [f32; 3] = [
    -1.951_529_589_1e-4_f64 as f32,
    8.332_160_873_6e-3_f64 as f32,
    -1.666_665_461_1e-1_f64 as f32,
];
const COSCOF: [f32; 3] = [
    2.443_315_711_809_948e-5_f64 as f32,
    -1.388_731_625_493_765e-3_f64 as f32,
    4.166_664_568_298_827e-2_f64 as f32,
];
const FOPI: f32 = 1.273_239_544_735_16_f64 as f32; // 4 / π

/// `log256_ps` for one lane, for the inputs `normal_fill` feeds it
/// (`(0, 1]`; no NaN/denormal handling needed but kept harmless).
/// `mul_add` marks the multiply/add pairs that GCC contracts into FMA.
fn cephes_log(x: f32) -> f32 {
    // Cut off denormals (max with the smallest normal), then split.
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 0x7f;
    let mut m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = m < SQRTHF;
    let tmp = if below { m } else { 0.0 };
    m -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    m += tmp;
    let x = m;
    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    // y * z + e * q1: GCC fuses the first multiply it meets (y * z).
    y = y.mul_add(z, e * LOG_Q1);
    y = (-z).mul_add(0.5, y);
    let x = x + y;
    e.mul_add(LOG_Q2, x)
}

/// `sincos256_ps` for one lane: returns `(sin x, cos x)`.
fn cephes_sincos(x: f32) -> (f32, f32) {
    let sign_sin = x.to_bits() & 0x8000_0000;
    let x = x.abs();
    let y = x * FOPI;
    // cvttps: truncation; the out-of-range case (0x8000_0000) cannot happen
    // for the 0..2π angles used here, but `as i32` saturates harmlessly.
    let mut j = y as i32;
    j = (j + 1) & !1;
    let y = j as f32;
    let swap_sign_sin = ((j & 4) as u32) << 29;
    let poly_mask = (j & 2) == 0;
    let sign_cos = ((!(j - 2) & 4) as u32) << 29;
    let sign_sin = sign_sin ^ swap_sign_sin;

    // Extended precision modular arithmetic, each step one FMA.
    let x = y.mul_add(MINUS_DP1, x);
    let x = y.mul_add(MINUS_DP2, x);
    let x = y.mul_add(MINUS_DP3, x);

    let z = x * x;
    // Cosine polynomial on [-π/4, π/4].
    let mut yc = COSCOF[0].mul_add(z, COSCOF[1]);
    yc = yc.mul_add(z, COSCOF[2]);
    yc *= z;
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;
    // Sine polynomial on [-π/4, π/4].
    let mut ys = SINCOF[0].mul_add(z, SINCOF[1]);
    ys = ys.mul_add(z, SINCOF[2]);
    ys *= z;
    ys = ys.mul_add(x, x);

    // Select with masks and adds exactly as the vector code does (this
    // matters only for the sign of zero).
    let (ysin2, ysin1) = if poly_mask { (ys, 0.0) } else { (0.0, yc) };
    let y2 = ys - ysin2;
    let y1 = yc - ysin1;
    let sin = ysin1 + ysin2;
    let cos = y1 + y2;
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_outputs(seed: u64, n: usize) -> Vec<u32> {
        let mut mt = Mt19937::new(seed);
        (0..n).map(|_| mt.next_u32()).collect()
    }

    /// (seed, first five outputs, outputs #623, #624 (first of the second
    /// block) and #9999). Seed 5489 is C++'s `std::mt19937` default, whose
    /// 10000th output 4123659995 is required by the C++ standard; the others
    /// come from numpy's MT19937 with legacy `init_genrand` seeding.
    const MT_REFERENCE: [(u64, [u32; 5], [u32; 3]); 4] = [
        (
            5489,
            [3499211612, 581869302, 3890346734, 3586334585, 545404204],
            [4020325887, 4178893912, 4123659995],
        ),
        (
            0,
            [2357136044, 2546248239, 3071714933, 3626093760, 2588848963],
            [3791854820, 341544762, 1543171712],
        ),
        (
            42,
            [1608637542, 3421126067, 4083286876, 787846414, 3143890026],
            [1077437785, 108880612, 1399405940],
        ),
        (
            4294967295,
            [419326371, 479346978, 3918654476, 2416749639, 3388880820],
            [1027084080, 3860652269, 1117955853],
        ),
    ];

    #[test]
    fn mt19937_known_values() {
        for (seed, first, later) in MT_REFERENCE {
            let out = first_outputs(seed, 10_000);
            assert_eq!(out[..5], first, "seed {seed}");
            assert_eq!([out[623], out[624], out[9_999]], later, "seed {seed}");
        }
    }

    #[test]
    fn seed_uses_low_32_bits_only() {
        assert_eq!(first_outputs(1 << 32, 700), first_outputs(0, 700));
        assert_eq!(
            first_outputs(u64::MAX, 700),
            first_outputs(u64::from(u32::MAX), 700)
        );
        assert_eq!(TorchGenerator::new(u64::MAX).initial_seed(), u64::MAX);
    }

    #[test]
    fn random64_is_hi_then_lo() {
        let mut g = TorchGenerator::new(0);
        assert_eq!(g.random64(), (2_357_136_044u64 << 32) | 2_546_248_239);
    }

    #[test]
    fn uniforms_are_exact_masks() {
        let mut g = TorchGenerator::new(0);
        assert_eq!(
            g.uniform_f32(),
            (2_357_136_044u32 & 0xff_ffff) as f32 / 16_777_216.0
        );
        let mut g = TorchGenerator::new(0);
        let bits = ((2_357_136_044u64 << 32) | 2_546_248_239) & ((1 << 53) - 1);
        assert_eq!(g.uniform_f64(), bits as f64 / 9_007_199_254_740_992.0);
    }

    #[test]
    fn small_path_matches_known_torch_values() {
        // torch.randn(3, generator=torch.Generator().manual_seed(0)) printed
        // as [1.5410, -0.2934, -2.1788] (4 decimals).
        let a = randn(0, &[3]);
        let expect = [1.5410f32, -0.2934, -2.1788];
        for (x, e) in a.iter().zip(expect) {
            assert!((x - e).abs() < 1e-4, "{x} vs {e}");
        }
    }

    #[test]
    fn cephes_functions_are_accurate() {
        for i in 1..=1000 {
            let x = i as f32 / 1000.0;
            assert!((cephes_log(x) - x.ln()).abs() <= 2e-7 * x.ln().abs().max(1.0));
            let t = x * std::f32::consts::TAU * 0.9999;
            let (s, c) = cephes_sincos(t);
            assert!(
                (s - t.sin()).abs() < 1e-6 && (c - t.cos()).abs() < 1e-6,
                "{t}"
            );
        }
    }

    #[test]
    fn shapes_and_empty() {
        assert_eq!(randn(1, &[2, 3, 5]).shape(), &[2, 3, 5]);
        assert_eq!(randn(1, &[0, 4]).len(), 0);
        assert_eq!(randn(1, &[]).len(), 1);
    }
}
