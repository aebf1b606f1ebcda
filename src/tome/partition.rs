//! Which tokens are dst and which are src: tomesd's partition of the token
//! grid into `sy × sx` cells with one dst each, and tomex's seeded RNG for the
//! random dst choice.

use super::torch_sort::{argsort_unstable, ascending};

/// tomesd's dst/src split of an `h × w` token grid (row-major token ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Partition {
    /// `a_idx` [N - num_dst]: the src token ids, in tomesd's order.
    pub src: Vec<usize>,
    /// `b_idx` [num_dst]: the dst token ids, in tomesd's order.
    pub dst: Vec<usize>,
}

/// The partition of an `h × w` grid with one dst per `sy × sx` cell.
///
/// `dst_cell` [hsy * wsx] gives, for each cell in row-major cell order, the
/// index of its dst within the cell (row-major in the `sy × sx` cell, as
/// tomesd's `rand_idx`); `None` is tomesd's `no_rand`: the top-left token.
/// Rows `>= (h / sy) * sy` and columns `>= (w / sx) * sx` belong to no cell
/// and are always src.
///
/// tomesd marks dst with `-1` and src with `0` in a buffer [h, w] and takes
/// `argsort` of it: dst | src. That argsort is torch's unstable CPU sort, so
/// neither part is in ascending token order (see `torch_sort`); the order is
/// reproduced because it is the order of tokens in the merged tensor.
pub(crate) fn partition(
    h: usize,
    w: usize,
    sx: usize,
    sy: usize,
    dst_cell: Option<&[usize]>,
) -> Partition {
    let (hsy, wsx) = (h / sy, w / sx);
    if let Some(cells) = dst_cell {
        assert_eq!(
            cells.len(),
            hsy * wsx,
            "one dst choice per {sy}x{sx} cell of a {h}x{w} grid"
        );
    }
    // idx_buffer [h, w]: -1 = dst, 0 = src
    let mut buffer = vec![0i8; h * w];
    for cy in 0..hsy {
        for cx in 0..wsx {
            let k = dst_cell.map_or(0, |cells| cells[cy * wsx + cx]);
            assert!(k < sx * sy, "dst choice {k} outside a {sy}x{sx} cell");
            // scatter into [hsy, wsx, sy*sx], view as [hsy, wsx, sy, sx],
            // transpose(1, 2) and reshape to [hsy*sy, wsx*sx]
            let (dy, dx) = (k / sx, k % sx);
            buffer[(cy * sy + dy) * w + cx * sx + dx] = -1;
        }
    }
    // rand_idx = idx_buffer.reshape(1, -1, 1).argsort(dim=1): dst | src
    let mut order = argsort_unstable(&buffer, ascending);
    let src = order.split_off(hsy * wsx);
    Partition { src, dst: order }
}

/// The seeded RNG that picks random dst cells (tomesd's `use_rand`).
///
/// tomesd draws `torch.randint(sy*sx, (hsy, wsx, 1))` from a generator forked
/// from torch's global RNG, once per call of a merging block (the block's
/// input has `r > 0`, an eligible downsample and an even batch). tomex draws
/// at exactly those points, in the same row-major cell order, from its own
/// generator, so a run is reproducible from [`TomeConfig::seed`](super::TomeConfig::seed)
/// alone (torch's numbers are not reproduced: tomesd's fork is not seeded).
///
/// tomesd forks its generator once and keeps drawing from it across all the
/// images a process generates; tomex starts a fresh `PartitionRng` per image from
/// the configuration's seed alone (`diffusion::pipeline`), so that an image does not
/// depend on which jobs ran before it.
///
/// The algorithm, fixed so that seeds mean the same in every version:
/// SplitMix64 (Steele, Lea, Flood 2014; the `splitmix64.c` of Vigna) with the
/// seed as its initial state, and each draw below `n` by Lemire's
/// multiply-and-reject method (2019) on one or more 64-bit outputs: `m = x *
/// n` as 128 bits, rejected while `(m mod 2^64) < (2^64 - n) mod n`, the
/// result `m >> 64`. For `n` a power of two (`sx*sy = 4` by default) nothing
/// is rejected and a draw is the top bits of one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRng {
    state: u64,
}

impl PartitionRng {
    pub fn new(seed: u64) -> Self {
        PartitionRng { state: seed }
    }

    /// The next SplitMix64 output.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (Lemire's unbiased method). `n > 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "PartitionRng::below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// tomesd's `rand_idx` [hsy, wsx]: for each of `cells` cells in row-major
    /// order, the index of its dst among the `cell_size` tokens of the cell.
    pub fn dst_cells(&mut self, cells: usize, cell_size: usize) -> Vec<usize> {
        (0..cells)
            .map(|_| self.below(cell_size as u64) as usize)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_left_partition_of_4x4() {
        // dst = (0,0) (0,2) (2,0) (2,2); n = 16 sorts stably (insertion sort).
        let p = partition(4, 4, 2, 2, None);
        assert_eq!(p.dst, vec![0, 2, 8, 10]);
        assert_eq!(p.src, vec![1, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 15]);
    }

    #[test]
    fn chosen_cells_of_4x4() {
        // cell (0,0) -> bottom-right 5, (0,1) -> top-right 3, (1,0) -> bottom-left 12, (1,1) -> top-left 10
        let p = partition(4, 4, 2, 2, Some(&[3, 1, 2, 0]));
        assert_eq!(p.dst, vec![3, 5, 10, 12]);
        assert_eq!(p.src.len(), 12);
    }

    #[test]
    fn leftover_rows_and_columns_are_src() {
        // 5 x 3 grid, 2x2 cells: rows 4 and column 2 belong to no cell.
        let p = partition(5, 3, 2, 2, None);
        assert_eq!(p.dst, vec![0, 6]);
        let mut all: Vec<usize> = p.src.iter().chain(&p.dst).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..15).collect::<Vec<_>>());
    }

    #[test]
    fn non_square_cells() {
        // sx = 3, sy = 1 on a 2 x 6 grid: dst at columns 0 and 3 of each row.
        let p = partition(2, 6, 3, 1, None);
        assert_eq!(p.dst, vec![0, 3, 6, 9]);
        // choice k = 2 is the right-most token of a 1x3 cell
        let p = partition(2, 6, 3, 1, Some(&[2, 1, 0, 2]));
        assert_eq!(p.dst, vec![2, 4, 6, 11]);
    }

    #[test]
    fn splitmix64_reference_values() {
        // splitmix64.c with state 1234567: 6457827717110365317, 3203168211198807973, ...
        let mut rng = PartitionRng::new(1234567);
        assert_eq!(rng.next_u64(), 6457827717110365317);
        assert_eq!(rng.next_u64(), 3203168211198807973);
        assert_eq!(rng.next_u64(), 9817491932198370423);
    }

    #[test]
    fn draws_are_in_range_and_cover_it() {
        let mut rng = PartitionRng::new(0);
        for n in [1, 2, 3, 4, 6, 9] {
            let draws = rng.dst_cells(1000, n);
            assert!(draws.iter().all(|&d| d < n));
            assert!((0..n).all(|v| draws.contains(&v)));
        }
    }
}
