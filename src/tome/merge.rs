//! Step 2: merge and unmerge with a computed matching (tomesd's `merge` and
//! `unmerge` closures).

use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use rayon::prelude::*;

/// Output rows per rayon task in merge and unmerge.
const MIN_ROWS_PER_TASK: usize = 128;

/// The matching of one transformer block: which tokens merge into which, for
/// each batch element. Apply [`merge`](Merge::merge) before a component and
/// [`unmerge`](Merge::unmerge) after it.
///
/// Indices are tomesd's: `a_idx`/`b_idx` are token ids of the src/dst
/// tokens, `unm_idx` and `src_idx` are positions in `a_idx`, `dst_idx`
/// positions in `b_idx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// N
    tokens: usize,
    /// a_idx [N_src]
    a_idx: Vec<usize>,
    /// b_idx [num_dst]
    b_idx: Vec<usize>,
    /// unm_idx [B, N_src - r]: src left alone, in edge order (least similar last)
    unm_idx: Array2<usize>,
    /// src_idx [B, r]: src merged, in edge order (most similar first)
    src_idx: Array2<usize>,
    /// dst_idx [B, r]: the dst each of `src_idx` merges into
    dst_idx: Array2<usize>,
    /// [B, num_dst + 1]: where each dst's merged srcs start in `group_tokens`
    group_start: Array2<usize>,
    /// [B, r]: token ids of the merged srcs grouped by dst, in edge order within a group
    group_tokens: Array2<usize>,
    /// [B, N]: the row of the merged tensor each token's output comes from
    unmerge_row: Array2<usize>,
}

impl Merge {
    pub(crate) fn new(
        tokens: usize,
        a_idx: Vec<usize>,
        b_idx: Vec<usize>,
        unm_idx: Array2<usize>,
        src_idx: Array2<usize>,
        dst_idx: Array2<usize>,
    ) -> Merge {
        let (batch, r) = src_idx.dim();
        let unm_len = unm_idx.ncols();
        let num_dst = b_idx.len();
        assert_eq!(unm_len + r, a_idx.len());
        assert_eq!(a_idx.len() + num_dst, tokens);

        let mut group_start = Array2::<usize>::zeros((batch, num_dst + 1));
        let mut group_tokens = Array2::<usize>::zeros((batch, r));
        let mut unmerge_row = Array2::<usize>::zeros((batch, tokens));
        for b in 0..batch {
            // counting sort of the merged srcs by dst; stable, so edge order within a dst
            let mut start = group_start.row_mut(b);
            for &j in dst_idx.row(b) {
                start[j + 1] += 1;
            }
            for j in 0..num_dst {
                start[j + 1] += start[j];
            }
            let mut next = start.to_vec();
            for (&i, &j) in src_idx.row(b).iter().zip(dst_idx.row(b)) {
                group_tokens[[b, next[j]]] = a_idx[i];
                next[j] += 1;
            }
            // unmerge: dst rows follow the unmerged rows; a merged src copies its dst's row
            let mut row = unmerge_row.row_mut(b);
            for (j, &t) in b_idx.iter().enumerate() {
                row[t] = unm_len + j;
            }
            for (k, &i) in unm_idx.row(b).iter().enumerate() {
                row[a_idx[i]] = k;
            }
            for (&i, &j) in src_idx.row(b).iter().zip(dst_idx.row(b)) {
                row[a_idx[i]] = unm_len + j;
            }
        }
        Merge {
            tokens,
            a_idx,
            b_idx,
            unm_idx,
            src_idx,
            dst_idx,
            group_start,
            group_tokens,
            unmerge_row,
        }
    }

    /// (N, N - r): tokens before and after merging.
    pub fn tokens(&self) -> (usize, usize) {
        (self.tokens, self.tokens - self.r())
    }

    /// r: tokens removed (after tomesd's cap at the number of src tokens).
    pub fn r(&self) -> usize {
        self.src_idx.ncols()
    }

    /// B: the batch the matching was computed for.
    pub fn batch(&self) -> usize {
        self.src_idx.nrows()
    }

    /// tomesd's `a_idx` [N_src]: src token ids.
    pub fn a_idx(&self) -> &[usize] {
        &self.a_idx
    }

    /// tomesd's `b_idx` [num_dst]: dst token ids.
    pub fn b_idx(&self) -> &[usize] {
        &self.b_idx
    }

    /// tomesd's `unm_idx` [B, N_src - r]: positions in `a_idx`.
    pub fn unm_idx(&self) -> ArrayView2<'_, usize> {
        self.unm_idx.view()
    }

    /// tomesd's `src_idx` [B, r]: positions in `a_idx`.
    pub fn src_idx(&self) -> ArrayView2<'_, usize> {
        self.src_idx.view()
    }

    /// tomesd's `dst_idx` [B, r]: positions in `b_idx`.
    pub fn dst_idx(&self) -> ArrayView2<'_, usize> {
        self.dst_idx.view()
    }

    /// `x` [B, N, C] -> [B, N - r, C]: `cat[unm, dst]`, the unmerged src
    /// tokens in `unm_idx` order, then every dst in `b_idx` order replaced by
    /// the mean of itself and the srcs merged into it.
    ///
    /// The mean is torch's `scatter_reduce(mode="mean", include_self=True)`
    /// on the CPU, to the bit: the dst, plus each of its srcs in `src_idx`
    /// order, summed in f32, then divided by `1 + count`.
    ///
    /// Panics if `x` is not [B, N, C] for this matching's B and N.
    pub fn merge(&self, x: ArrayView3<f32>) -> Array3<f32> {
        let (batch, n, c) = x.dim();
        self.check_shape("merge", (batch, n), (self.batch(), self.tokens));
        let out_n = n - self.r();
        let mut out = Array3::<f32>::zeros((batch, out_n, c));
        if c == 0 {
            return out;
        }
        let x = x.as_standard_layout();
        let x = x.as_slice().expect("standard layout");
        let unm_len = self.unm_idx.ncols();
        let out_rows = out
            .as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(c);
        out_rows
            .enumerate()
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(g, o)| {
                let (b, i) = (g / out_n, g % out_n);
                let row = |t: usize| &x[(b * n + t) * c..(b * n + t + 1) * c];
                if i < unm_len {
                    // unm = gather(src, unm_idx)
                    o.copy_from_slice(row(self.a_idx[self.unm_idx[[b, i]]]));
                } else {
                    // dst.scatter_reduce(-2, dst_idx, src, reduce="mean")
                    let j = i - unm_len;
                    o.copy_from_slice(row(self.b_idx[j]));
                    let group = self.group_start[[b, j]]..self.group_start[[b, j + 1]];
                    if !group.is_empty() {
                        let count = (group.len() + 1) as f32;
                        for k in group {
                            for (o, &v) in o.iter_mut().zip(row(self.group_tokens[[b, k]])) {
                                *o += v;
                            }
                        }
                        o.iter_mut().for_each(|o| *o /= count);
                    }
                }
            });
        out
    }

    /// `y` [B, N - r, C] -> [B, N, C]: each unmerged src and each dst gets
    /// its own row back, each merged src a copy of its dst's row.
    ///
    /// Panics if `y` is not [B, N - r, C] for this matching's B, N and r.
    pub fn unmerge(&self, y: ArrayView3<f32>) -> Array3<f32> {
        let (batch, m, c) = y.dim();
        self.check_shape("unmerge", (batch, m), (self.batch(), self.tokens().1));
        let n = self.tokens;
        let mut out = Array3::<f32>::zeros((batch, n, c));
        if c == 0 {
            return out;
        }
        let y = y.as_standard_layout();
        let y = y.as_slice().expect("standard layout");
        let out_rows = out
            .as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(c);
        out_rows
            .enumerate()
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(g, o)| {
                let (b, t) = (g / n, g % n);
                let from = b * m + self.unmerge_row[[b, t]];
                o.copy_from_slice(&y[from * c..(from + 1) * c]);
            });
        out
    }

    fn check_shape(&self, what: &str, got: (usize, usize), want: (usize, usize)) {
        assert!(
            got == want,
            "ToMe {what}: input has batch {} and {} tokens, the matching expects batch {} and {} tokens",
            got.0,
            got.1,
            want.0,
            want.1
        );
    }
}
