//! Step 1: the matching (tomesd's `bipartite_soft_matching_random2d` up to
//! the point where it returns its closures).

use ndarray::{s, Array2, ArrayView1, ArrayView2, ArrayView3};
use rayon::prelude::*;

use super::merge::Merge;
use super::partition::partition;
use super::torch_sort::{argsort_unstable, descending_nan_first};

/// src rows per score block: the scores of one block, [rows, num_dst], are
/// all that exists of the [N_src, num_dst] score matrix at any time per task.
/// Blocks hold about 2 MiB of scores (a core's L2 cache on the machines we
/// measure), within [MIN_SCORE_ROWS, SCORE_ROWS] rows: the max over a block
/// reads it back from cache, and taller blocks than 1 MiB's 113 rows at
/// 2304 dst made the 96×96 matching 20% faster (0.115 -> 0.091 s).
const SCORE_ROWS: usize = 512;
const MIN_SCORE_ROWS: usize = 32;
const SCORE_BLOCK_FLOATS: usize = 1 << 19;

fn score_rows(num_dst: usize) -> usize {
    (SCORE_BLOCK_FLOATS / num_dst.max(1)).clamp(MIN_SCORE_ROWS, SCORE_ROWS)
}

/// Rows per score block for `num_src` src rows of one batch element when `tasks`
/// blocks should run at once: at most [`score_rows`], and blocks of equal height, so
/// that e.g. 768 src rows on 2 threads make two blocks of 384, not 512 and 256 (the
/// short block's thread would wait for the tall one).
fn balanced_rows(num_src: usize, num_dst: usize, tasks: usize) -> usize {
    let blocks = num_src
        .div_ceil(score_rows(num_dst))
        .max(tasks)
        .min(num_src.div_ceil(MIN_SCORE_ROWS))
        .max(1);
    num_src.div_ceil(blocks).max(1)
}

/// Partition the tokens of `metric` [B, N, C] (an `h × w` grid) into src and
/// dst with one dst per `sy × sx` cell, and match the `r` src tokens most
/// similar to some dst to their most similar dst.
///
/// `dst_cell` [hsy * wsx] is the dst chosen in each cell (row-major cells,
/// row-major within a cell); `None` is tomesd's `no_rand` (top-left). The
/// partition is shared by the batch; the matching is per batch element.
/// Returns `None` where tomesd's merge and unmerge do nothing (`r == 0`, or
/// after capping `r` at the number of src tokens), and also where no cell
/// fits in the grid (tomesd fails there: the max over an empty dst set).
///
/// Panics if `h * w != N`.
pub fn bipartite_soft_matching_random2d(
    metric: ArrayView3<f32>,
    w: usize,
    h: usize,
    sx: usize,
    sy: usize,
    r: usize,
    dst_cell: Option<&[usize]>,
) -> Option<Merge> {
    let (batch, n, _c) = metric.dim();
    assert_eq!(h * w, n, "a {h}x{w} token grid for a metric of {n} tokens");
    if r == 0 {
        return None;
    }
    // a_idx [N_src], b_idx [num_dst]
    let part = partition(h, w, sx, sy, dst_cell);
    let num_dst = part.dst.len();
    // Can't reduce more than the # tokens in src
    let r = r.min(part.src.len());
    if r == 0 || num_dst == 0 {
        return None;
    }

    // node_max, node_idx [B, N_src]: each src's best cosine similarity to a dst, and that dst
    let num_src = part.src.len();
    let mut node_max = Array2::<f32>::zeros((batch, num_src));
    let mut node_idx = Array2::<usize>::zeros((batch, num_src));
    // Batch elements side by side, each in score blocks of equal height, enough to keep
    // every thread busy (the batch of 2 that guidance makes, on 2 cores: 4 blocks).
    let tasks = rayon::current_num_threads().div_ceil(batch);
    node_max
        .as_slice_mut()
        .expect("standard layout")
        .par_chunks_mut(num_src)
        .zip(
            node_idx
                .as_slice_mut()
                .expect("standard layout")
                .par_chunks_mut(num_src),
        )
        .enumerate()
        .for_each(|(b, (max, idx))| {
            let x = metric.index_axis(ndarray::Axis(0), b);
            // metric = metric / metric.norm(dim=-1, keepdim=True); a, b = split(metric)
            let a = normalized_rows(x, &part.src); // [N_src, C]
            let d = normalized_rows(x, &part.dst); // [num_dst, C]
            best_dst(
                a.view(),
                d.view(),
                max,
                idx,
                balanced_rows(num_src, num_dst, tasks),
            );
        });

    // edge_idx = node_max.argsort(dim=-1, descending=True): unm_idx = edge_idx[r:], src_idx = edge_idx[:r]
    let edges: Vec<Vec<usize>> = node_max
        .as_slice()
        .expect("standard layout")
        .par_chunks(part.src.len())
        .map(|m| argsort_unstable(m, descending_nan_first))
        .collect();
    let unm_len = part.src.len() - r;
    let mut unm_idx = Array2::<usize>::zeros((batch, unm_len));
    let mut src_idx = Array2::<usize>::zeros((batch, r));
    let mut dst_idx = Array2::<usize>::zeros((batch, r));
    for (b, edge) in edges.iter().enumerate() {
        unm_idx.row_mut(b).assign(&ArrayView1::from(&edge[r..]));
        for (k, &e) in edge[..r].iter().enumerate() {
            src_idx[[b, k]] = e;
            // dst_idx = gather(node_idx, src_idx)
            dst_idx[[b, k]] = node_idx[[b, e]];
        }
    }
    Some(Merge::new(n, part.src, part.dst, unm_idx, src_idx, dst_idx))
}

/// `x[rows] / ||x[rows]||` [rows.len(), C]: the rows of `x` [N, C] in the
/// given order, each divided by its L2 norm (summed in f64, rounded to f32,
/// then an f32 division as torch's `metric / norm`). A zero row becomes NaN,
/// as in torch.
fn normalized_rows(x: ArrayView2<f32>, rows: &[usize]) -> Array2<f32> {
    let c = x.ncols();
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout");
    let mut out = Array2::<f32>::zeros((rows.len(), c));
    if c == 0 {
        return out;
    }
    let out_rows = out
        .as_slice_mut()
        .expect("standard layout")
        .par_chunks_mut(c);
    out_rows.zip(rows).with_min_len(64).for_each(|(o, &t)| {
        let row = &x[t * c..(t + 1) * c];
        let norm = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt() as f32;
        for (o, &v) in o.iter_mut().zip(row) {
            *o = v / norm;
        }
    });
    out
}

/// For each row of `a` [N_src, C]: the max over `d` [num_dst, C] of the dot
/// products (`scores = a @ d^T`, `scores.max(dim=-1)`), into `node_max` and
/// `node_idx` [N_src]. Scores are computed `block_rows` src rows at a time (at most
/// [`score_rows`]), in parallel, with faer's sgemm (about twice matrixmultiply's rate
/// here).
fn best_dst(
    a: ArrayView2<f32>,
    d: ArrayView2<f32>,
    node_max: &mut [f32],
    node_idx: &mut [usize],
    block_rows: usize,
) {
    let num_dst = d.nrows();
    node_max
        .par_chunks_mut(block_rows)
        .zip(node_idx.par_chunks_mut(block_rows))
        .enumerate()
        .for_each_init(
            || Array2::<f32>::zeros((block_rows, num_dst)),
            |scores, (block, (max, idx))| {
                let start = block * block_rows;
                let rows = max.len();
                let mut scores = scores.slice_mut(s![..rows, ..]);
                // scores [rows, num_dst] = a[start..start+rows] @ d^T
                let c = a.ncols();
                let lhs = faer::MatRef::from_row_major_slice(
                    &a.as_slice().expect("standard layout")[start * c..(start + rows) * c],
                    rows,
                    c,
                );
                let rhs = faer::MatRef::from_row_major_slice(
                    d.as_slice().expect("standard layout"),
                    num_dst,
                    c,
                );
                let dst = faer::MatMut::from_row_major_slice_mut(
                    scores.as_slice_mut().expect("standard layout"),
                    rows,
                    num_dst,
                );
                faer::linalg::matmul::matmul(
                    dst,
                    faer::Accum::Replace,
                    lhs,
                    rhs.transpose(),
                    1.0,
                    faer::Par::Seq,
                );
                for ((row, m), i) in scores.outer_iter().zip(max.iter_mut()).zip(idx.iter_mut()) {
                    (*m, *i) = torch_max(row.as_slice().expect("standard layout"));
                }
            },
        );
}

/// `torch.max(row, dim=-1)`: the largest value and the first index holding
/// it; NaN wins (the first NaN), as torch's max propagates NaN.
///
/// Two passes: the max over 8 independent lanes (vectorizes), then the first
/// index holding it.
fn torch_max(row: &[f32]) -> (f32, usize) {
    const LANES: usize = 8;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut nan = [false; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for k in 0..LANES {
            let v = chunk[k];
            lanes[k] = if v > lanes[k] { v } else { lanes[k] };
            nan[k] |= v.is_nan();
        }
    }
    if nan.contains(&true) {
        let first = row.iter().position(|v| v.is_nan()).expect("a NaN");
        return (row[first], first);
    }
    let mut max = lanes
        .into_iter()
        .fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m });
    for &v in tail {
        if v.is_nan() {
            let first = row.iter().position(|v| v.is_nan()).expect("a NaN");
            return (row[first], first);
        }
        max = if v > max { v } else { max };
    }
    // all -inf (or empty lanes): the first element holds the max
    let first = row.iter().position(|&v| v == max).unwrap_or(0);
    (row[first], first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn torch_max_takes_the_first_of_ties_and_propagates_nan() {
        assert_eq!(torch_max(&[0.5, 0.9, 0.9, 0.1, 0.9]), (0.9, 1));
        let (m, i) = torch_max(&[1.0, f32::NAN, 3.0, f32::NAN]);
        assert!(m.is_nan() && i == 1);
        assert_eq!(torch_max(&[-1.0]), (-1.0, 0));
        // ties across lanes and in the tail: the first index
        let mut row = vec![0.0f32; 21];
        row[13] = 2.0;
        row[5] = 2.0;
        row[20] = 2.0;
        assert_eq!(torch_max(&row), (2.0, 5));
        assert_eq!(torch_max(&[f32::NEG_INFINITY; 11]), (f32::NEG_INFINITY, 0));
        let mut row = vec![1.0f32; 19];
        row[17] = f32::NAN;
        let (m, i) = torch_max(&row);
        assert!(m.is_nan() && i == 17);
        // against a plain scan on pseudo-random rows with many ties
        for n in 1..40 {
            let row: Vec<f32> = (0..n).map(|i| ((i * 7919 + n * 31) % 5) as f32).collect();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let first = row.iter().position(|&v| v == max).unwrap();
            assert_eq!(torch_max(&row), (max, first), "{row:?}");
        }
    }

    /// `best_dst` against a naive loop on small integers (every product and sum
    /// exact, so any blocking must give the same maxima and indices).
    fn check_best_dst(ns: usize, nd: usize, c: usize, block_rows: usize) {
        let a = Array2::from_shape_fn((ns, c), |(i, k)| ((i * 31 + k * 17) % 23) as f32 - 11.0);
        let d = Array2::from_shape_fn((nd, c), |(j, k)| ((j * 13 + k * 7) % 19) as f32 - 9.0);
        let mut max = vec![0.0; ns];
        let mut idx = vec![0; ns];
        best_dst(a.view(), d.view(), &mut max, &mut idx, block_rows);
        for i in 0..ns {
            let scores: Vec<f32> = (0..nd).map(|j| a.row(i).dot(&d.row(j))).collect();
            assert_eq!((max[i], idx[i]), torch_max(&scores), "row {i}");
        }
    }

    #[test]
    fn best_dst_matches_a_naive_loop() {
        check_best_dst(
            SCORE_ROWS * 2 + 37,
            50,
            24,
            balanced_rows(SCORE_ROWS * 2 + 37, 50, 2),
        );
    }

    #[test]
    fn score_blocks_stay_near_two_mebibytes() {
        assert_eq!(score_rows(50), SCORE_ROWS);
        assert_eq!(score_rows(1024), 512);
        assert_eq!(score_rows(2304), 227);
        assert_eq!(score_rows(100_000), MIN_SCORE_ROWS);
    }

    #[test]
    fn score_blocks_are_balanced_across_threads() {
        // 32x32 latent, 2x2 cells, batch 2 on 2 threads: two blocks of 384 per element
        assert_eq!(balanced_rows(768, 256, 1), 384);
        // two threads per element: halves
        assert_eq!(balanced_rows(768, 256, 2), 384);
        assert_eq!(balanced_rows(768, 256, 4), 192);
        // never above score_rows(), never below MIN_SCORE_ROWS unless there are fewer rows
        assert_eq!(balanced_rows(3072, 1024, 1), 512);
        assert_eq!(balanced_rows(3072, 1024, 2), 512);
        assert_eq!(balanced_rows(64, 16, 8), MIN_SCORE_ROWS);
        assert_eq!(balanced_rows(5, 16, 8), 5);
        assert_eq!(balanced_rows(0, 16, 2), 1);
    }

    #[test]
    fn best_dst_matches_a_naive_loop_with_small_blocks() {
        // 2304 dst: 227-row blocks, so 300 src rows make two blocks, the last short.
        check_best_dst(300, 2304, 8, score_rows(2304));
    }

    #[test]
    fn r_zero_does_nothing() {
        let x = Array3::<f32>::ones((2, 16, 3));
        assert!(bipartite_soft_matching_random2d(x.view(), 4, 4, 2, 2, 0, None).is_none());
        // sx = sy = 1: every token is dst, nothing is src, r caps to 0
        assert!(bipartite_soft_matching_random2d(x.view(), 4, 4, 1, 1, 5, None).is_none());
        // a 1-row grid has no 2x2 cell
        assert!(bipartite_soft_matching_random2d(x.view(), 16, 1, 2, 2, 5, None).is_none());
    }
}
