//! Multi-head attention `softmax(q·kᵀ·scale)·v` without the `N × N` score matrix.
//!
//! Inputs and output keep the layout of `com.microsoft.MultiHeadAttention`'s 3-D form:
//! `q`/`out` are `[batch, queries, heads·head_size]`, `k`/`v` `[batch, keys,
//! heads·head_size]`, row-major. The work splits into tiles of up to
//! [`TILE_QUERIES`] queries of one head; each tile streams all keys in blocks of
//! [`KV_BLOCK`] with an online softmax (running maximum and sum per query, earlier
//! partial outputs rescaled when the maximum grows), so its memory is a few tens of
//! kilobytes whatever the token count.

use std::cell::RefCell;

/// Queries per strip: the width of the register tile (three 16-float vectors).
pub const STRIP: usize = 48;
/// Queries per tile (four strips): tall enough that each key block, once in cache,
/// serves 192 queries.
pub const TILE_QUERIES: usize = 4 * STRIP;
/// Keys per block: one strip of scores (`KV_BLOCK × STRIP` floats, 24 KiB) stays in L1.
pub const KV_BLOCK: usize = 128;

/// `2^f` on `[-½, ½]` by its Taylor series to degree 7, `(f ln 2)^k / k!`; the
/// truncation error, `(½ ln 2)^8 / 8! · √2 < 1e-8`, is below float rounding.
pub(super) const EXP2_TAYLOR: [f32; 8] = [
    1.0,
    std::f32::consts::LN_2,
    0.240_226_5,
    0.055_504_11,
    0.009_618_129,
    0.001_333_355_8,
    0.000_154_035_3,
    0.000_015_252_734,
];

/// The shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub head_size: usize,
    pub queries: usize,
    pub keys: usize,
}

impl Dims {
    fn width(&self) -> usize {
        self.heads * self.head_size
    }

    fn query_tiles(&self) -> usize {
        self.queries.div_ceil(TILE_QUERIES)
    }

    /// The independent pieces of work [`attend`] hands to its `for_each`.
    pub fn tiles(&self) -> usize {
        self.batch * self.heads * self.query_tiles()
    }
}

/// The code that computes a tile: the same algorithm at different widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// 16-float vectors, an 8 × 48 register tile (x86-64 with AVX-512F).
    Avx512,
    /// 8-float vectors, a 4 × 24 register tile (x86-64 with AVX2 and FMA).
    Avx2,
    /// Plain Rust, one query at a time: the tiling's reference, on every CPU.
    Portable,
}

/// Chooses the body instead of [`Body::fastest`] (`avx512`, `avx2` or `portable`), e.g.
/// to measure the AVX2 body on a CPU that has AVX-512 too; read once per process.
pub const BODY_ENV: &str = "TOMEX_FLASH_BODY";

impl Body {
    /// Whether this CPU can run the body.
    pub fn runs_here(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Body::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Body::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Body::Avx512 | Body::Avx2 => false,
            Body::Portable => true,
        }
    }

    /// The body [`BODY_ENV`] names, if this CPU runs it; else the AVX-512 body where
    /// the CPU has it, else the AVX2 body where it has AVX2 and FMA (which takes only
    /// small heads, [`Body::max_head_size`]). The portable one is slower than ONNX
    /// Runtime's attention and runs only when named.
    pub fn fastest() -> Option<Body> {
        // Decided once per process: `attend` asks on every attention call.
        static CHOSEN: std::sync::OnceLock<Option<Body>> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(Body::choose)
    }

    fn choose() -> Option<Body> {
        let named = std::env::var(BODY_ENV).ok().and_then(|v| match v.as_str() {
            "avx512" => Some(Body::Avx512),
            "avx2" => Some(Body::Avx2),
            "portable" => Some(Body::Portable),
            _ => None,
        });
        match named {
            Some(body) => body.runs_here().then_some(body),
            None => [Body::Avx512, Body::Avx2]
                .into_iter()
                .find(|body| body.runs_here()),
        }
    }

    /// The largest head size this body beats ONNX Runtime's `MultiHeadAttention` at
    /// (`None`: every size). Measured with `tomex bench-attention` on a 2-core AMD EPYC
    /// without AVX-512, where ONNX Runtime runs its AVX2 kernels (BENCHMARKS.md, "Flash
    /// kernel bodies alone"): the AVX2 body is 1.6–3× faster at heads of 4, even at 8,
    /// and 1.3–1.6× slower from 16 up (SD 1.5's 40, SD 2's 64), where ONNX Runtime's
    /// sgemm does most of the work and the softmax little.
    pub fn max_head_size(self) -> Option<usize> {
        match self {
            Body::Avx2 => Some(AVX2_MAX_HEAD_SIZE),
            Body::Avx512 | Body::Portable => None,
        }
    }
}

/// See [`Body::max_head_size`].
pub const AVX2_MAX_HEAD_SIZE: usize = 8;

/// Why [`attend`] computed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttendError {
    #[error("tomex's flash attention needs a CPU with AVX-512F, or AVX2 and FMA")]
    NoSimdBody,
    #[error("this CPU cannot run the {0:?} body of tomex's flash attention")]
    Unsupported(Body),
    #[error("{what} holds {len} floats, not batch {batch} × {rows} tokens × {heads} heads × {head_size}")]
    Length {
        what: &'static str,
        len: usize,
        batch: usize,
        rows: usize,
        heads: usize,
        head_size: usize,
    },
}

/// Whether a SIMD body of the kernel runs here, so fusing attention into it pays.
pub fn available() -> bool {
    Body::fastest().is_some()
}

/// Computes attention into `out` with the fastest body ([`Body::fastest`]).
/// `for_each(n, work)` must call `work(i)` once for every `i < n`, in any order and on
/// any threads (ONNX Runtime's thread pool in the operator, a plain loop in tests).
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    dims: Dims,
    scale: f32,
    for_each: impl FnOnce(usize, &(dyn Fn(usize) + Sync)),
) -> Result<(), AttendError> {
    let body = Body::fastest().ok_or(AttendError::NoSimdBody)?;
    attend_with(body, q, k, v, out, dims, scale, for_each)
}

/// As [`attend`], with the given body.
#[allow(clippy::too_many_arguments)]
pub fn attend_with(
    body: Body,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    dims: Dims,
    scale: f32,
    for_each: impl FnOnce(usize, &(dyn Fn(usize) + Sync)),
) -> Result<(), AttendError> {
    if !body.runs_here() {
        return Err(AttendError::Unsupported(body));
    }
    let width = dims.width();
    let expect = |what: &'static str, len: usize, rows: usize| {
        if len == dims.batch * rows * width {
            Ok(())
        } else {
            Err(AttendError::Length {
                what,
                len,
                batch: dims.batch,
                rows,
                heads: dims.heads,
                head_size: dims.head_size,
            })
        }
    };
    expect("query", q.len(), dims.queries)?;
    expect("key", k.len(), dims.keys)?;
    expect("value", v.len(), dims.keys)?;
    expect("output", out.len(), dims.queries)?;
    if dims.tiles() == 0 || dims.keys == 0 || dims.head_size == 0 {
        out.fill(0.0);
        return Ok(());
    }

    let q_scale = scale * std::f32::consts::LOG2_E;
    let out = SharedOut(out.as_mut_ptr());
    let work = |index: usize| {
        let query_tile = index % dims.query_tiles();
        let head = (index / dims.query_tiles()) % dims.heads;
        let batch = index / (dims.query_tiles() * dims.heads);
        let row0 = query_tile * TILE_QUERIES;
        let queries = TILE_QUERIES.min(dims.queries - row0);
        let q_at = (batch * dims.queries + row0) * width + head * dims.head_size;
        let kv_at = batch * dims.keys * width + head * dims.head_size;
        SCRATCH.with_borrow_mut(|scratch| {
            let tile = Tile {
                q: q[q_at..].as_ptr(),
                k: k[kv_at..].as_ptr(),
                v: v[kv_at..].as_ptr(),
                // SAFETY: `q_at` lies inside `out` (same shape as `q`).
                out: unsafe { out.at(q_at) },
                ld: width,
                ld_kv: width,
                depth: dims.head_size,
                queries,
                keys: dims.keys,
                q_scale,
                scratch: Tile::reserve(scratch, dims.head_size, queries),
            };
            // SAFETY: `runs_here()` checked the CPU. The pointers cover this tile's
            // rows and head (the lengths were checked against `dims`), tiles write
            // disjoint elements of `out`, and the scratch is this thread's own.
            unsafe {
                match body {
                    #[cfg(target_arch = "x86_64")]
                    Body::Avx512 => super::avx512::attend_tile(&tile),
                    #[cfg(target_arch = "x86_64")]
                    Body::Avx2 => super::avx2::attend_tile(&tile),
                    #[cfg(not(target_arch = "x86_64"))]
                    Body::Avx512 | Body::Avx2 => unreachable!("no x86 SIMD off x86-64"),
                    Body::Portable => super::portable::attend_tile(&tile),
                }
            };
        });
    };
    for_each(dims.tiles(), &work);
    Ok(())
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The output pointer shared by the tiles, which write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every tile writes only its own rows × head columns of the buffer.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `offset` lies inside the buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// One query tile of one head, as pointers for a body.
///
/// `q`/`out` point at the tile's first query row and its head's first column, rows
/// `ld` apart; `k`/`v` at the batch's first key and the head's first column, rows
/// `ld_kv` apart; `depth` is the head size. `scratch` holds [`Tile::scratch_len`]
/// floats.
pub(super) struct Tile {
    pub q: *const f32,
    pub k: *const f32,
    pub v: *const f32,
    pub out: *mut f32,
    pub ld: usize,
    pub ld_kv: usize,
    pub depth: usize,
    pub queries: usize,
    pub keys: usize,
    /// `scale · log₂e`: the softmax is taken in powers of two.
    pub q_scale: f32,
    pub scratch: *mut f32,
}

impl Tile {
    /// Queries rounded up to whole strips (the padding queries are zeros, never written out).
    pub fn width(&self) -> usize {
        self.queries.div_ceil(STRIP) * STRIP
    }

    fn scratch_len(depth: usize, queries: usize) -> usize {
        let width = queries.div_ceil(STRIP) * STRIP;
        2 * depth * width + 2 * width + KV_BLOCK * STRIP
    }

    fn reserve(scratch: &mut Vec<f32>, depth: usize, queries: usize) -> *mut f32 {
        let len = Tile::scratch_len(depth, queries);
        if scratch.len() < len {
            scratch.resize(len, 0.0);
        }
        scratch.as_mut_ptr()
    }

    /// Packs the queries (scaled, transposed, padded with zeros to whole strips) and
    /// clears the output, the running maxima and the sums: every body's first step.
    ///
    /// # Safety
    /// The pointers and sizes satisfy [`Tile`]'s contract.
    pub unsafe fn start(&self) {
        let (width, depth, queries) = (self.width(), self.depth, self.queries);
        let (qt, ot, max, sum, _) = self.scratch();
        for d in 0..depth {
            for i in 0..width {
                *qt.add(d * width + i) = if i < queries {
                    *self.q.add(i * self.ld + d) * self.q_scale
                } else {
                    0.0
                };
                *ot.add(d * width + i) = 0.0;
            }
        }
        for i in 0..width {
            *max.add(i) = f32::MIN;
            *sum.add(i) = 0.0;
        }
    }

    /// Writes the normalised output rows: every body's last step.
    ///
    /// # Safety
    /// As [`Tile::start`], after the body's key blocks.
    pub unsafe fn finish(&self) {
        let width = self.width();
        let (_, ot, _, sum, _) = self.scratch();
        for i in 0..self.queries {
            let total = *sum.add(i);
            for d in 0..self.depth {
                *self.out.add(i * self.ld + d) = *ot.add(d * width + i) / total;
            }
        }
    }

    /// `(qt, ot, max, sum, st)`: queries packed transposed (`depth × width`), the
    /// unnormalised output transposed (`depth × width`), the running maximum and sum
    /// per query, and one strip of scores (`KV_BLOCK × STRIP`).
    pub fn scratch(&self) -> (*mut f32, *mut f32, *mut f32, *mut f32, *mut f32) {
        let width = self.width();
        let plane = self.depth * width;
        // SAFETY: `reserve` sized the scratch for these five regions.
        unsafe {
            let qt = self.scratch;
            let ot = qt.add(plane);
            let max = ot.add(plane);
            let sum = max.add(width);
            let st = sum.add(width);
            (qt, ot, max, sum, st)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention in f64, one query at a time.
    fn reference(q: &[f32], k: &[f32], v: &[f32], dims: Dims, scale: f32) -> Vec<f32> {
        let width = dims.width();
        let mut out = vec![0.0; q.len()];
        for b in 0..dims.batch {
            for h in 0..dims.heads {
                let col = h * dims.head_size;
                for i in 0..dims.queries {
                    let qi = &q[(b * dims.queries + i) * width + col..][..dims.head_size];
                    let scores: Vec<f64> = (0..dims.keys)
                        .map(|j| {
                            let kj = &k[(b * dims.keys + j) * width + col..][..dims.head_size];
                            qi.iter()
                                .zip(kj)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for d in 0..dims.head_size {
                        let value: f64 = (0..dims.keys)
                            .map(|j| weights[j] * v[(b * dims.keys + j) * width + col + d] as f64)
                            .sum();
                        out[(b * dims.queries + i) * width + col + d] = (value / total) as f32;
                    }
                }
            }
        }
        out
    }

    /// Deterministic values in [-amplitude, amplitude).
    fn noise(len: usize, seed: u64, amplitude: f32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amplitude
            })
            .collect()
    }

    fn sequential(n: usize, work: &(dyn Fn(usize) + Sync)) {
        (0..n).for_each(work);
    }

    /// The bodies a test runs: the portable one always, each SIMD body where the CPU
    /// runs it (said on stderr where it does not).
    fn bodies(test: &str) -> Vec<Body> {
        [Body::Avx512, Body::Avx2, Body::Portable]
            .into_iter()
            .filter(|b| {
                let runs = b.runs_here();
                if !runs {
                    eprintln!("{test}: skipped the {b:?} body (this CPU cannot run it)");
                }
                runs
            })
            .collect()
    }

    /// Largest |ours − reference| relative to the largest |reference|.
    fn check(body: Body, dims: Dims, amplitude: f32) -> f32 {
        let width = dims.width();
        let q = noise(dims.batch * dims.queries * width, 1, amplitude);
        let k = noise(dims.batch * dims.keys * width, 2, amplitude);
        let v = noise(dims.batch * dims.keys * width, 3, 1.0);
        let scale = 1.0 / (dims.head_size as f32).sqrt();
        let mut out = vec![f32::NAN; q.len()];
        attend_with(body, &q, &k, &v, &mut out, dims, scale, sequential).unwrap();
        let want = reference(&q, &k, &v, dims, scale);
        let peak = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        out.iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / peak)
            .fold(0.0, f32::max)
    }

    #[test]
    fn matches_f64_attention_on_ragged_shapes() {
        for body in bodies("matches_f64_attention_on_ragged_shapes") {
            // Tails everywhere: queries not a multiple of a strip or tile, keys not of a
            // block or the register rows, head sizes not of 8.
            for (heads, head_size, queries, keys) in [
                (2, 40, 250, 300),
                (1, 8, 7, 77),
                (3, 5, 49, 129),
                (2, 13, 193, 1),
                (1, 64, 48, 128),
            ] {
                let dims = Dims {
                    batch: 2,
                    heads,
                    head_size,
                    queries,
                    keys,
                };
                // Scores spread over several units of magnitude exercise the running
                // maximum. Bound: a few float32 roundings of the scores (up to about ±10
                // here) and of the sums; a wrong tail, rescale or layout gives O(1).
                let error = check(body, dims, 3.0);
                assert!(error < 2e-6, "{body:?} {dims:?}: relative error {error}");
            }
        }
    }

    #[test]
    fn peaked_softmax_late_in_the_keys_rescales_earlier_blocks() {
        for body in bodies("peaked_softmax_late_in_the_keys_rescales_earlier_blocks") {
            let dims = Dims {
                batch: 1,
                heads: 1,
                head_size: 16,
                queries: 50,
                keys: 700,
            };
            // Large scores (up to about ±100) make the maximum jump between key blocks.
            // One float rounding of a score of 100 already moves its weight by 100 · 2⁻²³
            // ≈ 1.2e-5 relative, in any float32 attention; hence the wider bound.
            let error = check(body, dims, 10.0);
            assert!(error < 3e-5, "{body:?}: relative error {error}");
        }
    }

    #[test]
    fn wrong_lengths_are_an_error_not_a_panic() {
        let dims = Dims {
            batch: 1,
            heads: 2,
            head_size: 4,
            queries: 3,
            keys: 5,
        };
        let q = vec![0.0; 24];
        let kv = vec![0.0; 39];
        let mut out = vec![0.0; 24];
        let error = attend_with(
            Body::Portable,
            &q,
            &kv,
            &kv,
            &mut out,
            dims,
            1.0,
            sequential,
        )
        .unwrap_err();
        assert!(error.to_string().contains("key holds 39 floats"), "{error}");
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    /// Each body on one Stable Diffusion 1.5 attention (batch 2, 4096 queries and keys,
    /// 8 heads of 40: the 64×64 latent's full-resolution level), single thread, best of 5.
    /// Run with `cargo test --release --lib kernel::flash_attention::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bodies_on_sd_shapes() {
        let dims = Dims {
            batch: 2,
            heads: 8,
            head_size: 40,
            queries: 4096,
            keys: 4096,
        };
        let len = dims.batch * dims.queries * dims.width();
        let q: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mut out = vec![0.0; len];
        let flops =
            4.0 * (dims.batch * dims.heads * dims.queries * dims.keys * dims.head_size) as f64;
        // The portable body (about 1 GFLOP/s) is the tiling's reference, not timed here.
        for body in [Body::Avx512, Body::Avx2] {
            if !body.runs_here() {
                eprintln!("{body:?}: skipped (this CPU cannot run it)");
                continue;
            }
            let mut best = f64::MAX;
            for _ in 0..5 {
                let start = std::time::Instant::now();
                attend_with(body, &q, &q, &q, &mut out, dims, 0.158, |n, work| {
                    (0..n).for_each(work)
                })
                .unwrap();
                best = best.min(start.elapsed().as_secs_f64());
            }
            eprintln!(
                "{body:?}: {best:.3} s, {:.0} GFLOP/s (1 thread)",
                flops / best / 1e9
            );
        }
    }
}
