//! The AVX2 + FMA body of [`super::flash_attention`]: the AVX-512 body's algorithm with
//! 8-float vectors, for the many CPUs without AVX-512 (most laptops, many cloud CPUs).
//!
//! Sixteen 8-float registers hold a 4 × 24 tile (three vectors per row) with its
//! operands, so each strip of [`STRIP`] queries is worked as two halves of 24; scores stay
//! transposed (`st[key][query]`) as in the AVX-512 body, so the softmax is vertical.
//! `2^x` has no `scalef` here: the exponent goes into the float's bits, with arguments
//! clamped at −126, where `2^x` is below every weight that counts (the sum of a query's
//! weights is at least 1).

use std::arch::x86_64::*;

use super::flash_attention::{Tile, EXP2_TAYLOR, KV_BLOCK, STRIP};

/// Register rows of the micro-tile: 4 × 3 accumulators, 3 operand vectors, 1 broadcast.
const ROWS: usize = 4;
/// Queries per half strip: three 8-float vectors.
const HALF: usize = STRIP / 2;

/// `2^x` for each lane (see the module doc for the clamp).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp2(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(-126.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm256_sub_ps(x, n);
    let mut p = _mm256_set1_ps(EXP2_TAYLOR[7]);
    for &c in EXP2_TAYLOR[..7].iter().rev() {
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
    }
    let exponent = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(exponent)))
}

/// The [`HALF`] floats at `at` as three vectors.
///
/// # Safety
/// `at` points at [`HALF`] readable floats.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load_half(at: *const f32) -> [__m256; 3] {
    [
        _mm256_loadu_ps(at),
        _mm256_loadu_ps(at.add(8)),
        _mm256_loadu_ps(at.add(16)),
    ]
}

/// `st[r][·] = Σ_d k[r][d] · qt[d][·]` for `R` keys and one half strip, folding each
/// score into the half's running maximum `max`.
///
/// # Safety
/// `k` holds `R` rows of `depth` floats `ldk` apart, `qt` `depth` rows of a half strip
/// `ldq` apart, and `st` room for `R` rows [`STRIP`] apart.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn scores<const R: usize>(
    k: *const f32,
    ldk: usize,
    qt: *const f32,
    ldq: usize,
    depth: usize,
    st: *mut f32,
    max: &mut [__m256; 3],
) {
    let mut acc = [[_mm256_setzero_ps(); 3]; R];
    for d in 0..depth {
        let b = load_half(qt.add(d * ldq));
        for (r, row) in acc.iter_mut().enumerate() {
            let a = _mm256_set1_ps(*k.add(r * ldk + d));
            for c in 0..3 {
                row[c] = _mm256_fmadd_ps(a, b[c], row[c]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for c in 0..3 {
            _mm256_storeu_ps(st.add(r * STRIP + c * 8), row[c]);
            max[c] = _mm256_max_ps(max[c], row[c]);
        }
    }
}

/// `ot[r][·] = alpha · ot[r][·] + Σ_j v[j][r] · st[j][·]` for `R` value columns and one
/// half strip, over `keys` keys.
///
/// # Safety
/// `v` holds `keys` rows `ldv` apart with `R` floats each, `st` `keys` rows [`STRIP`]
/// apart, and `ot` `R` rows of a half strip `ldo` apart.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn values<const R: usize>(
    v: *const f32,
    ldv: usize,
    st: *const f32,
    keys: usize,
    ot: *mut f32,
    ldo: usize,
    alpha: &[__m256; 3],
) {
    let mut acc = [[_mm256_setzero_ps(); 3]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        for (c, lane) in row.iter_mut().enumerate() {
            *lane = _mm256_mul_ps(_mm256_loadu_ps(ot.add(r * ldo + c * 8)), alpha[c]);
        }
    }
    for j in 0..keys {
        let p = load_half(st.add(j * STRIP));
        let vj = v.add(j * ldv);
        for (r, row) in acc.iter_mut().enumerate() {
            let a = _mm256_set1_ps(*vj.add(r));
            for c in 0..3 {
                row[c] = _mm256_fmadd_ps(a, p[c], row[c]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, &lane) in row.iter().enumerate() {
            _mm256_storeu_ps(ot.add(r * ldo + c * 8), lane);
        }
    }
}

/// Calls `$kernel::<R>` with `R = $rows` (1 to [`ROWS`]) made a constant.
macro_rules! by_rows {
    ($rows:expr, $kernel:ident($($arg:expr),* $(,)?)) => {
        match $rows {
            1 => $kernel::<1>($($arg),*),
            2 => $kernel::<2>($($arg),*),
            3 => $kernel::<3>($($arg),*),
            _ => $kernel::<4>($($arg),*),
        }
    };
}

/// Attention for one query tile of one head (see [`Tile`]).
///
/// # Safety
/// The CPU has AVX2 and FMA, and `tile`'s pointers and sizes satisfy [`Tile`]'s contract.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn attend_tile(tile: &Tile) {
    let Tile {
        k,
        v,
        ld_kv,
        depth,
        keys,
        ..
    } = *tile;
    let width = tile.width();
    let (qt, ot, max, sum, st) = tile.scratch();
    tile.start();

    for key0 in (0..keys).step_by(KV_BLOCK) {
        let block = KV_BLOCK.min(keys - key0);
        let k_block = k.add(key0 * ld_kv);
        let v_block = v.add(key0 * ld_kv);
        for col in (0..width).step_by(HALF) {
            let half = col % STRIP;
            let mut block_max = [_mm256_set1_ps(f32::MIN); 3];
            for r0 in (0..block).step_by(ROWS) {
                by_rows!(
                    block - r0,
                    scores(
                        k_block.add(r0 * ld_kv),
                        ld_kv,
                        qt.add(col),
                        width,
                        depth,
                        st.add(r0 * STRIP + half),
                        &mut block_max,
                    )
                );
            }
            let mut alpha = [_mm256_setzero_ps(); 3];
            let mut new_max = [_mm256_setzero_ps(); 3];
            for c in 0..3 {
                let old = _mm256_loadu_ps(max.add(col + c * 8));
                new_max[c] = _mm256_max_ps(old, block_max[c]);
                alpha[c] = exp2(_mm256_sub_ps(old, new_max[c]));
                _mm256_storeu_ps(max.add(col + c * 8), new_max[c]);
            }
            let mut block_sum = [_mm256_setzero_ps(); 3];
            for j in 0..block {
                for c in 0..3 {
                    let at = st.add(j * STRIP + half + c * 8);
                    let p = exp2(_mm256_sub_ps(_mm256_loadu_ps(at), new_max[c]));
                    _mm256_storeu_ps(at, p);
                    block_sum[c] = _mm256_add_ps(block_sum[c], p);
                }
            }
            for c in 0..3 {
                let at = sum.add(col + c * 8);
                _mm256_storeu_ps(
                    at,
                    _mm256_fmadd_ps(alpha[c], _mm256_loadu_ps(at), block_sum[c]),
                );
            }
            for d0 in (0..depth).step_by(ROWS) {
                by_rows!(
                    depth - d0,
                    values(
                        v_block.add(d0),
                        ld_kv,
                        st.add(half),
                        block,
                        ot.add(d0 * width + col),
                        width,
                        &alpha,
                    )
                );
            }
        }
    }

    tile.finish();
}
