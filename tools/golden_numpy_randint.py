#!/usr/bin/env python3
"""Write golden numpy legacy ``RandomState.randint``/``choice`` outputs for tests/plan_store.rs.

Usage (from the repository root):

    tools/.venv/bin/python tools/golden_numpy_randint.py [--out golden/numpy_randint.json]

The thesis drew its prompts and image seeds with numpy's legacy global
RandomState (``src/gen_imgs.py``, NumPy 1.19.5):

    idcs = np.random.randint(0, len(all_prompts), sample_size)
    prompts = all_prompts[idcs]
    seeds = np.random.randint(0, 4294967295, len(prompts))

``tomex::plan::NumpyRandomState`` reproduces this. Each case is a sequence of
calls on ONE ``np.random.RandomState(seed)`` (the same state as
``np.random.seed(seed)`` gives the global functions); a call is
``randint(low, high, size)`` with the default dtype (int64), or, written
``["choice", n, size]``, ``choice(n, size, replace=False)`` (what a spec with
``replace = false`` samples). The case stores every output of every call, in
order. The script checks, before writing, that
its own plain-Python model of numpy's algorithm (MT19937 ``init_genrand``
seeding; masked rejection sampling on 32-bit draws when ``high - 1 - low`` fits
in 32 bits, on 64-bit draws ``(hi << 32) | lo`` otherwise) gives the same
numbers, so the JSON documents the algorithm as well as the values.
"""

import argparse
import json
import os

import numpy as np

THESIS_PROMPTS = 80000  # rows of the thesis's prompt collection
THESIS_SEED_HIGH = 4294967295

CASES = [
    # the thesis's two calls, as `gen_imgs.py` made them, for the sizes it used
    {"name": "thesis_500_seed0", "seed": 0,
     "calls": [[0, THESIS_PROMPTS, 500], [0, THESIS_SEED_HIGH, 500]]},
    {"name": "thesis_1000_seed42", "seed": 42,
     "calls": [[0, THESIS_PROMPTS, 1000], [0, THESIS_SEED_HIGH, 1000]]},
    {"name": "thesis_1000_seed_max", "seed": 2**32 - 1,
     "calls": [[0, THESIS_PROMPTS, 1000], [0, THESIS_SEED_HIGH, 1000]]},
    # small ranges, powers of two, a range of one value (draws nothing)
    {"name": "small_ranges", "seed": 7,
     "calls": [[0, 1, 3], [0, 2, 20], [0, 3, 20], [5, 6, 2], [0, 8, 16], [0, 9, 16], [-5, 5, 20]]},
    # rng == 2^32 - 1: one unmasked 32-bit draw per value
    {"name": "full_32_bits", "seed": 123, "calls": [[0, 2**32, 10], [-2**31, 2**31, 10]]},
    # ranges above 32 bits: masked 64-bit draws
    {"name": "wide_64_bits", "seed": 2024,
     "calls": [[0, 2**32 + 1, 10], [0, 2**40, 10], [-2**62, 2**62, 10], [0, 2**63 - 1, 10],
               [0, 5, 5]]},
    # a prompt file of 7 rows, sampled 12 times (with replacement), then 12 seeds
    {"name": "tiny_file_oversampled", "seed": 3141592653,
     "calls": [[0, 7, 12], [0, THESIS_SEED_HIGH, 12]]},
    # enough draws to cross several MT19937 state refills (624 words each)
    {"name": "many_draws", "seed": 99, "calls": [[0, 1000, 3000]]},
    # sampling without replacement, then seeds from the same state
    {"name": "choice_no_replace", "seed": 5,
     "calls": [["choice", 10, 5], ["choice", 1, 1], ["choice", 80000, 50], [0, 100, 5]]},
]


class Mt19937:
    """MT19937 seeded as numpy's legacy ``RandomState.seed(int)`` (``init_genrand``)."""

    def __init__(self, seed):
        assert 0 <= seed < 2**32
        self.mt = [0] * 624
        self.mt[0] = seed
        for i in range(1, 624):
            prev = self.mt[i - 1]
            self.mt[i] = (1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF
        self.index = 624

    def next32(self):
        if self.index >= 624:
            for k in range(624):
                y = (self.mt[k] & 0x80000000) | (self.mt[(k + 1) % 624] & 0x7FFFFFFF)
                v = self.mt[(k + 397) % 624] ^ (y >> 1)
                if y & 1:
                    v ^= 0x9908B0DF
                self.mt[k] = v
            self.index = 0
        y = self.mt[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y

    def next64(self):
        hi = self.next32()
        return (hi << 32) | self.next32()


def model_randint(mt, low, high, size):
    """numpy's `random_bounded_uint64_fill` with use_masked=True (legacy)."""
    rng = high - 1 - low
    mask = rng
    for s in (1, 2, 4, 8, 16, 32):
        mask |= mask >> s
    out = []
    for _ in range(size):
        if rng == 0:
            v = 0
        elif rng == 0xFFFFFFFF:
            v = mt.next32()
        elif rng < 0xFFFFFFFF:
            v = mt.next32() & mask
            while v > rng:
                v = mt.next32() & mask
        else:
            v = mt.next64() & mask
            while v > rng:
                v = mt.next64() & mask
        out.append(low + v)
    return out


def model_choice(mt, n, size):
    """``choice(n, size, replace=False)``: ``permutation(n)[:size]``."""
    x = list(range(n))
    for i in range(n - 1, 0, -1):
        mask = i
        for s in (1, 2, 4, 8, 16, 32):
            mask |= mask >> s
        while True:
            j = (mt.next32() if i <= 0xFFFFFFFF else mt.next64()) & mask
            if j <= i:
                break
        x[i], x[j] = x[j], x[i]
    return x[:size]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="golden/numpy_randint.json")
    args = ap.parse_args()

    cases = []
    for case in CASES:
        rs = np.random.RandomState(case["seed"])
        np.random.seed(case["seed"])  # the global functions the thesis called
        mt = Mt19937(case["seed"])
        outputs = []
        for low, high, size in case["calls"]:
            if low == "choice":
                got = rs.choice(high, size, replace=False)
                glob = np.random.choice(high, size, replace=False)
                model = model_choice(mt, high, size)
            else:
                got = rs.randint(low, high, size)
                assert got.dtype == np.int64, got.dtype
                glob = np.random.randint(low, high, size)
                model = model_randint(mt, low, high, size)
            assert (got == glob).all(), "RandomState and np.random.seed disagree"
            assert [int(x) for x in got] == model, f"model disagrees in {case['name']}"
            outputs.append([int(x) for x in got])
        cases.append({**case, "outputs": outputs})

    doc = {
        "generator": "tools/golden_numpy_randint.py",
        "numpy": np.__version__,
        "call": "np.random.RandomState(seed).randint(low, high, size), dtype int64, calls in order",
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}: {len(cases)} cases, numpy {np.__version__}")


if __name__ == "__main__":
    main()
