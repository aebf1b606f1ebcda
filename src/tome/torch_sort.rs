//! torch's unstable CPU `argsort`, reproduced permutation for permutation.
//!
//! tomesd calls `argsort` twice without `stable=True`: on the `-1`/`0`
//! partition buffer (which fixes the order of the dst and src tokens) and on
//! `node_max` (which fixes the order of the unmerged and merged src tokens).
//! Both orders are visible in the merged tensor, so tomex needs the very
//! permutation torch returns, ties included.
//!
//! On the CPU, `at::native::sort_kernel` (ATen/native/cpu/SortingKernel.cpp)
//! sorts each row of `(value, index)` pairs with `std::sort` and a comparator
//! on the value alone (`KeyValueCompAsc` / `KeyValueCompDesc`, which order NaN
//! as the largest value). The official Linux wheels are built with GCC, so
//! that is libstdc++'s introsort: median-of-three quicksort (pivot candidates
//! `first + 1`, `mid`, `last - 1`, moved to `first`; Hoare's unguarded
//! partition), recursion into the right part and iteration on the left,
//! heapsort below a depth of `2 * floor(log2 n)`, ranges of at most 16 left
//! for a final insertion sort. It is not stable: for `n > 16` equal values do
//! not keep their index order (for `n <= 16` it is a plain insertion sort,
//! which is). Checked against torch 2.15.0 with `ATEN_CPU_CAPABILITY` set to
//! `default`, `avx2` and `avx512` (all three give the same permutation: that
//! wheel does not route these sorts to x86-simd-sort), on partition buffers
//! from 4×4 to 128×128 tokens and on float rows of 5 to 6912 values with and
//! without ties.
//!
//! torch on CUDA sorts differently (bitonic or segmented radix sort), so
//! tomesd's token order on a GPU is not this one; only ties and float
//! summation order depend on it.

/// `torch.argsort(keys)` on the CPU (`stable=False`) for a total order given
/// by `less`: the indices of `keys` in the order libstdc++'s `std::sort`
/// leaves them.
pub(crate) fn argsort_unstable<T: Copy>(keys: &[T], less: impl Fn(T, T) -> bool) -> Vec<usize> {
    let mut items: Vec<(T, usize)> = keys.iter().copied().zip(0..).collect();
    std_sort(&mut items, |a, b| less(a.0, b.0));
    items.into_iter().map(|(_, i)| i).collect()
}

/// `KeyValueCompAsc` on integers.
pub(crate) fn ascending<T: PartialOrd>(a: T, b: T) -> bool {
    a < b
}

/// `KeyValueCompDesc<float>`: NaN first, then descending.
pub(crate) fn descending_nan_first(a: f32, b: f32) -> bool {
    (a.is_nan() && !b.is_nan()) || a > b
}

/// libstdc++'s `_S_threshold`.
const THRESHOLD: usize = 16;

/// `std::sort(first, last, comp)` (libstdc++ `std::__sort`).
fn std_sort<E: Copy>(v: &mut [E], less: impl Fn(&E, &E) -> bool + Copy) {
    let n = v.len();
    if n < 2 {
        return;
    }
    let depth_limit = 2 * n.ilog2() as usize;
    introsort_loop(v, depth_limit, less);
    final_insertion_sort(v, less);
}

/// `std::__introsort_loop`: partition until ranges are at most 16 long.
fn introsort_loop<E: Copy>(
    mut v: &mut [E],
    mut depth_limit: usize,
    less: impl Fn(&E, &E) -> bool + Copy,
) {
    while v.len() > THRESHOLD {
        if depth_limit == 0 {
            heap_sort(v, less); // std::__partial_sort(first, last, last)
            return;
        }
        depth_limit -= 1;
        let cut = unguarded_partition_pivot(v, less);
        let (left, right) = v.split_at_mut(cut);
        introsort_loop(right, depth_limit, less);
        v = left;
    }
}

/// `std::__unguarded_partition_pivot`: median of `v[1]`, `v[mid]`, `v[n-1]`
/// moved to `v[0]`, then Hoare partition of `v[1..]` around it.
fn unguarded_partition_pivot<E: Copy>(v: &mut [E], less: impl Fn(&E, &E) -> bool) -> usize {
    let n = v.len();
    let mid = n / 2;
    move_median_to_first(v, 1, mid, n - 1, &less);
    // std::__unguarded_partition(first + 1, last, first)
    let (mut lo, mut hi) = (1, n);
    loop {
        while less(&v[lo], &v[0]) {
            lo += 1;
        }
        hi -= 1;
        while less(&v[0], &v[hi]) {
            hi -= 1;
        }
        if lo >= hi {
            return lo;
        }
        v.swap(lo, hi);
        lo += 1;
    }
}

/// `std::__move_median_to_first(result = 0, a, b, c)`.
fn move_median_to_first<E: Copy>(
    v: &mut [E],
    a: usize,
    b: usize,
    c: usize,
    less: impl Fn(&E, &E) -> bool,
) {
    let median = if less(&v[a], &v[b]) {
        if less(&v[b], &v[c]) {
            b
        } else if less(&v[a], &v[c]) {
            c
        } else {
            a
        }
    } else if less(&v[a], &v[c]) {
        a
    } else if less(&v[b], &v[c]) {
        c
    } else {
        b
    };
    v.swap(0, median);
}

/// `std::__final_insertion_sort`.
fn final_insertion_sort<E: Copy>(v: &mut [E], less: impl Fn(&E, &E) -> bool + Copy) {
    if v.len() > THRESHOLD {
        insertion_sort(&mut v[..THRESHOLD], less);
        // std::__unguarded_insertion_sort: the first 16 hold the minimum.
        for i in THRESHOLD..v.len() {
            unguarded_linear_insert(v, i, less);
        }
    } else {
        insertion_sort(v, less);
    }
}

/// `std::__insertion_sort`.
fn insertion_sort<E: Copy>(v: &mut [E], less: impl Fn(&E, &E) -> bool + Copy) {
    for i in 1..v.len() {
        if less(&v[i], &v[0]) {
            let val = v[i];
            v.copy_within(0..i, 1);
            v[0] = val;
        } else {
            unguarded_linear_insert(v, i, less);
        }
    }
}

/// `std::__unguarded_linear_insert`: move `v[last]` left while it is less.
fn unguarded_linear_insert<E: Copy>(v: &mut [E], mut last: usize, less: impl Fn(&E, &E) -> bool) {
    let val = v[last];
    while less(&val, &v[last - 1]) {
        v[last] = v[last - 1];
        last -= 1;
    }
    v[last] = val;
}

/// `std::__make_heap` then `std::__sort_heap` (what `__partial_sort(first,
/// last, last)` reduces to).
fn heap_sort<E: Copy>(v: &mut [E], less: impl Fn(&E, &E) -> bool + Copy) {
    let len = v.len();
    if len >= 2 {
        let mut parent = (len - 2) / 2;
        loop {
            let value = v[parent];
            adjust_heap(v, parent, len, value, less);
            if parent == 0 {
                break;
            }
            parent -= 1;
        }
    }
    let mut last = len;
    while last > 1 {
        last -= 1;
        // std::__pop_heap(first, last, last)
        let value = v[last];
        v[last] = v[0];
        adjust_heap(v, 0, last, value, less);
    }
}

/// `std::__adjust_heap` followed by its `std::__push_heap`.
fn adjust_heap<E: Copy>(
    v: &mut [E],
    mut hole: usize,
    len: usize,
    value: E,
    less: impl Fn(&E, &E) -> bool,
) {
    let top = hole;
    let mut child = hole;
    while child < len.saturating_sub(1) / 2 {
        child = 2 * (child + 1);
        if less(&v[child], &v[child - 1]) {
            child -= 1;
        }
        v[hole] = v[child];
        hole = child;
    }
    if len.is_multiple_of(2) && len >= 2 && child == (len - 2) / 2 {
        child = 2 * (child + 1);
        v[hole] = v[child - 1];
        hole = child - 1;
    }
    // std::__push_heap(first, hole, top, value)
    while hole > top {
        let parent = (hole - 1) / 2;
        if !less(&v[parent], &value) {
            break;
        }
        v[hole] = v[parent];
        hole = parent;
    }
    v[hole] = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for test data.
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn sorts_like_a_sort() {
        let mut s = 7;
        for n in [0, 1, 2, 3, 15, 16, 17, 33, 100, 1000, 5000] {
            for distinct in [2, 5, 1_000_000] {
                let keys: Vec<u64> = (0..n).map(|_| lcg(&mut s) % distinct).collect();
                let order = argsort_unstable(&keys, ascending);
                let mut seen = order.clone();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "a permutation");
                assert!(order.windows(2).all(|w| keys[w[0]] <= keys[w[1]]), "n {n}");
            }
        }
    }

    #[test]
    fn heap_sort_sorts() {
        let mut s = 3;
        for n in [0, 1, 2, 3, 4, 5, 16, 17, 64, 101] {
            let mut v: Vec<u64> = (0..n).map(|_| lcg(&mut s) % 10).collect();
            heap_sort(&mut v, |a, b| a < b);
            assert!(v.windows(2).all(|w| w[0] <= w[1]), "n {n}: {v:?}");
        }
    }

    #[test]
    fn small_rows_are_stable_insertion_sorts() {
        // n <= 16: plain insertion sort, so ties keep their order.
        let keys = [0, -1, 0, -1, 0, 0, -1, 0];
        assert_eq!(
            argsort_unstable(&keys, ascending),
            vec![1, 3, 6, 0, 2, 4, 5, 7]
        );
    }

    #[test]
    fn matches_torch_on_a_partition_buffer() {
        // torch 2.15.0: the 8×8 top-left partition buffer (sx = sy = 2),
        // `idx_buffer.reshape(1, -1, 1).argsort(dim=1)[0, :20, 0]`.
        let keys: Vec<i8> = (0..64)
            .map(|t| {
                if (t / 8) % 2 == 0 && t % 2 == 0 {
                    -1
                } else {
                    0
                }
            })
            .collect();
        let order = argsort_unstable(&keys, ascending);
        assert_eq!(
            order[..20],
            [18, 36, 38, 34, 32, 48, 22, 20, 50, 16, 52, 54, 0, 2, 4, 6, 47, 62, 39, 40]
        );
    }

    #[test]
    fn nan_sorts_first_when_descending() {
        let keys = [0.5, f32::NAN, 0.7, 0.1];
        assert_eq!(
            argsort_unstable(&keys, descending_nan_first),
            vec![1, 2, 0, 3]
        );
    }
}
