//! The portable body of [`super::flash_attention`]: the AVX-512 body's algorithm in
//! plain Rust, one query and one key at a time. It is the reference for the SIMD bodies'
//! tiling (strips, key blocks, padding, the running maximum's rescaling), tested on every
//! CPU; ONNX Runtime's attention is faster than it, so tomex never fuses attention into
//! it.

use super::flash_attention::{Tile, KV_BLOCK, STRIP};

/// Attention for one query tile of one head (see [`Tile`]).
///
/// # Safety
/// `tile`'s pointers and sizes satisfy [`Tile`]'s contract.
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
        for col in (0..width).step_by(STRIP) {
            // Scores of the strip, transposed: st[key][query].
            let mut block_max = [f32::MIN; STRIP];
            for j in 0..block {
                for (i, m) in block_max.iter_mut().enumerate() {
                    let mut s = 0.0f32;
                    for d in 0..depth {
                        s = (*k_block.add(j * ld_kv + d)).mul_add(*qt.add(d * width + col + i), s);
                    }
                    *st.add(j * STRIP + i) = s;
                    *m = m.max(s);
                }
            }
            let mut alpha = [0.0f32; STRIP];
            for i in 0..STRIP {
                let old = *max.add(col + i);
                let new = old.max(block_max[i]);
                alpha[i] = (old - new).exp2();
                *max.add(col + i) = new;
                let mut block_sum = 0.0f32;
                for j in 0..block {
                    let p = (*st.add(j * STRIP + i) - new).exp2();
                    *st.add(j * STRIP + i) = p;
                    block_sum += p;
                }
                *sum.add(col + i) = alpha[i].mul_add(*sum.add(col + i), block_sum);
            }
            for d in 0..depth {
                for (i, a) in alpha.iter().enumerate() {
                    let at = ot.add(d * width + col + i);
                    let mut acc = *at * a;
                    for j in 0..block {
                        acc = (*v_block.add(j * ld_kv + d)).mul_add(*st.add(j * STRIP + i), acc);
                    }
                    *at = acc;
                }
            }
        }
    }

    tile.finish();
}
