//! The AVX-512 body of [`super::flash_attention`]: one query tile of one head.
//!
//! Scores are kept transposed, `st[key][query]`, a strip of [`STRIP`] queries (three
//! 16-float vectors) wide. Then the running maximum, the exponentials and the running
//! sums are all vertical (one lane per query), and both products are the same 8 × 48
//! register tile: `st = K · Qᵀ` broadcasts key elements against packed query columns,
//! `Oᵀ += Vᵀ · st` broadcasts value elements against score rows. Queries are
//! pre-scaled by `scale · log₂e`, so the softmax is `2^(s − max)`.

use std::arch::x86_64::*;

use super::flash_attention::{Tile, EXP2_TAYLOR, KV_BLOCK, STRIP};

/// Register rows of the micro-tile: 8 × 3 accumulators leave room for the operands.
const ROWS: usize = 8;

/// `2^x` for each lane; arguments below −150 (where `2^x` rounds to zero) are clamped
/// so that `f32::MIN`, the maximum before any key, gives 0 rather than NaN.
#[target_feature(enable = "avx512f")]
#[inline]
fn exp2(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-150.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm512_sub_ps(x, n);
    let mut p = _mm512_set1_ps(EXP2_TAYLOR[7]);
    for &c in EXP2_TAYLOR[..7].iter().rev() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// The [`STRIP`] floats at `at` as three vectors.
///
/// # Safety
/// `at` points at [`STRIP`] readable floats.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_strip(at: *const f32) -> [__m512; 3] {
    [
        _mm512_loadu_ps(at),
        _mm512_loadu_ps(at.add(16)),
        _mm512_loadu_ps(at.add(32)),
    ]
}

/// `st[r][·] = Σ_d k[r][d] · qt[d][·]` for `R` keys and one strip, folding each score
/// into the strip's running maximum `max`.
///
/// # Safety
/// `k` holds `R` rows of `depth` floats `ldk` apart, `qt` `depth` rows of a strip
/// `ldq` apart, and `st` room for `R` rows of a strip.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn scores<const R: usize>(
    k: *const f32,
    ldk: usize,
    qt: *const f32,
    ldq: usize,
    depth: usize,
    st: *mut f32,
    max: &mut [__m512; 3],
) {
    let mut acc = [[_mm512_setzero_ps(); 3]; R];
    for d in 0..depth {
        let b = load_strip(qt.add(d * ldq));
        for (r, row) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*k.add(r * ldk + d));
            for c in 0..3 {
                row[c] = _mm512_fmadd_ps(a, b[c], row[c]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for c in 0..3 {
            _mm512_storeu_ps(st.add(r * STRIP + c * 16), row[c]);
            max[c] = _mm512_max_ps(max[c], row[c]);
        }
    }
}

/// `ot[r][·] = alpha · ot[r][·] + Σ_j v[j][r] · st[j][·]` for `R` value columns and
/// one strip, over `keys` keys.
///
/// # Safety
/// `v` holds `keys` rows `ldv` apart with `R` floats each, `st` `keys` rows of a
/// strip, and `ot` `R` rows of a strip `ldo` apart.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn values<const R: usize>(
    v: *const f32,
    ldv: usize,
    st: *const f32,
    keys: usize,
    ot: *mut f32,
    ldo: usize,
    alpha: &[__m512; 3],
) {
    let mut acc = [[_mm512_setzero_ps(); 3]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        for (c, lane) in row.iter_mut().enumerate() {
            *lane = _mm512_mul_ps(_mm512_loadu_ps(ot.add(r * ldo + c * 16)), alpha[c]);
        }
    }
    for j in 0..keys {
        let p = load_strip(st.add(j * STRIP));
        let vj = v.add(j * ldv);
        for (r, row) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*vj.add(r));
            for c in 0..3 {
                row[c] = _mm512_fmadd_ps(a, p[c], row[c]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, &lane) in row.iter().enumerate() {
            _mm512_storeu_ps(ot.add(r * ldo + c * 16), lane);
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
            4 => $kernel::<4>($($arg),*),
            5 => $kernel::<5>($($arg),*),
            6 => $kernel::<6>($($arg),*),
            7 => $kernel::<7>($($arg),*),
            _ => $kernel::<8>($($arg),*),
        }
    };
}

/// Attention for one query tile of one head (see [`Tile`]).
///
/// # Safety
/// The CPU has AVX-512F, and `tile`'s pointers and sizes satisfy [`Tile`]'s contract.
#[target_feature(enable = "avx512f")]
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
    let strips = tile.queries.div_ceil(STRIP);
    let (qt, ot, max, sum, st) = tile.scratch();

    tile.start();

    for key0 in (0..keys).step_by(KV_BLOCK) {
        let block = KV_BLOCK.min(keys - key0);
        let k_block = k.add(key0 * ld_kv);
        let v_block = v.add(key0 * ld_kv);
        for s in 0..strips {
            let col = s * STRIP;
            let mut block_max = [_mm512_set1_ps(f32::MIN); 3];
            for r0 in (0..block).step_by(ROWS) {
                by_rows!(
                    block - r0,
                    scores(
                        k_block.add(r0 * ld_kv),
                        ld_kv,
                        qt.add(col),
                        width,
                        depth,
                        st.add(r0 * STRIP),
                        &mut block_max,
                    )
                );
            }
            let mut alpha = [_mm512_setzero_ps(); 3];
            let mut new_max = [_mm512_setzero_ps(); 3];
            for c in 0..3 {
                let old = _mm512_loadu_ps(max.add(col + c * 16));
                new_max[c] = _mm512_max_ps(old, block_max[c]);
                alpha[c] = exp2(_mm512_sub_ps(old, new_max[c]));
                _mm512_storeu_ps(max.add(col + c * 16), new_max[c]);
            }
            let mut block_sum = [_mm512_setzero_ps(); 3];
            for j in 0..block {
                for c in 0..3 {
                    let at = st.add(j * STRIP + c * 16);
                    let p = exp2(_mm512_sub_ps(_mm512_loadu_ps(at), new_max[c]));
                    _mm512_storeu_ps(at, p);
                    block_sum[c] = _mm512_add_ps(block_sum[c], p);
                }
            }
            for c in 0..3 {
                let at = sum.add(col + c * 16);
                _mm512_storeu_ps(
                    at,
                    _mm512_fmadd_ps(alpha[c], _mm512_loadu_ps(at), block_sum[c]),
                );
            }
            for d0 in (0..depth).step_by(ROWS) {
                by_rows!(
                    depth - d0,
                    values(
                        v_block.add(d0),
                        ld_kv,
                        st,
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
