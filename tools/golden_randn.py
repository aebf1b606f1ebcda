#!/usr/bin/env python3
"""Write golden torch CPU random-normal outputs for tests/torch_randn.rs.

Usage (from the repository root):

    tools/.venv/bin/python tools/golden_randn.py [--out golden/randn]

Each case is a sequence of calls on ONE generator,
``g = torch.Generator().manual_seed(seed)``; a call is
``torch.randn(shape, generator=g, dtype=torch.float32)`` (or, when mean/std
are not 0/1, ``torch.empty(shape).normal_(mean, std, generator=g)``). The
float32 outputs of all calls are concatenated and stored as raw little-endian
f32 (``<name>.f32``):

* ``"stored": "full"``: the file holds every element;
* ``"stored": "head_tail"``: the file holds the first and the last ``edge``
  elements (to keep the golden directory small); the SHA-256 of the full
  little-endian output is always in ``sha256``.

``path`` says which torch float32 ``normal_fill`` kernel produced the case:
``"avx2"`` for ATEN_CPU_CAPABILITY=avx2 / avx512 (both checked to agree,
the default on any x86-64 host with AVX2) and ``"scalar"`` for
ATEN_CPU_CAPABILITY=default (libm logf/cosf/sinf, so tied to glibc). Each
capability is run in its own subprocess because torch reads the variable once.
"""

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys

SEEDS_BIG = [0, 1, 42, 2**31 - 1, 4294967295, 3141592653, 1234567890123, 2**64 - 1]
SMALL_SHAPES = [[2, 4, 8, 8], [1, 4, 13, 7], [1, 4, 9, 11], [7], [15], [16], [17], [1, 4, 6, 10], [1], [3, 5]]
EDGE = 512  # elements kept at each end of a head_tail case


def call(shape, mean=0.0, std=1.0):
    return {"shape": shape, "mean": mean, "std": std}


def build_cases():
    """(name, path, seed, calls, stored) tuples."""
    cases = []
    # Latent-sized tensors: one stored in full, the others as head/tail + hash.
    cases.append(("latent64_seed0", "avx2", 0, [call([1, 4, 64, 64])], "full"))
    for seed in SEEDS_BIG[1:]:
        cases.append((f"latent64_s{seed}", "avx2", seed, [call([1, 4, 64, 64])], "head_tail"))
    for seed in [1, 42, 4294967295, 2**64 - 1]:
        cases.append((f"latent96_s{seed}", "avx2", seed, [call([1, 4, 96, 96])], "head_tail"))
    # Small and odd shapes (sizes < 16, not multiples of 16), every seed.
    for seed in SEEDS_BIG:
        for shape in SMALL_SHAPES:
            name = "x".join(map(str, shape))
            cases.append((f"small_{name}_s{seed}", "avx2", seed, [call(shape)], "full"))
    # Several draws from one generator: the cached second Box-Muller sample
    # of the < 16 path carries over between calls; mean/std variants.
    seq = [call([5]), call([3]), call([20]), call([1, 4, 6, 10]), call([1])]
    cases.append(("sequence_s7", "avx2", 7, seq, "full"))
    cases.append(("sequence_s2pow40", "avx2", 2**40 + 7, seq, "full"))
    cases.append(("normal_mean_std_s11", "avx2", 11,
                  [call([9], 0.5, 2.0), call([33], -1.25, 0.3), call([16], 3.0, 0.125)], "full"))
    # The DEFAULT-capability (scalar libm) kernel.
    cases.append(("scalar_latent64_s0", "scalar", 0, [call([1, 4, 64, 64])], "head_tail"))
    cases.append(("scalar_latent64_s42", "scalar", 42, [call([1, 4, 64, 64])], "head_tail"))
    for shape in [[1, 4, 13, 7], [17], [15], [1, 4, 6, 10]]:
        name = "x".join(map(str, shape))
        cases.append((f"scalar_{name}_s1", "scalar", 1, [call(shape)], "full"))
    cases.append(("scalar_normal_mean_std_s11", "scalar", 11,
                  [call([9], 0.5, 2.0), call([33], -1.25, 0.3), call([16], 3.0, 0.125)], "full"))
    return cases


def run_worker(capability, cases):
    """Runs the cases in a subprocess with the given ATen CPU capability."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    payload = json.dumps([[seed, calls] for (_, _, seed, calls, _) in cases])
    res = subprocess.run([sys.executable, __file__, "--worker"], input=payload, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def worker():
    import numpy as np
    import torch

    jobs = json.loads(sys.stdin.read())
    outs = []
    for seed, calls in jobs:
        g = torch.Generator().manual_seed(seed)
        parts = []
        for c in calls:
            if c["mean"] == 0.0 and c["std"] == 1.0:
                t = torch.randn(c["shape"], generator=g, dtype=torch.float32)
            else:
                t = torch.empty(c["shape"], dtype=torch.float32).normal_(c["mean"], c["std"], generator=g)
            parts.append(t.contiguous().numpy().astype("<f4").ravel())
        outs.append(np.concatenate(parts).tobytes().hex())
    json.dump({"capability": torch.backends.cpu.get_cpu_capability(),
               "torch": torch.__version__, "outputs": outs}, sys.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="golden/randn")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker()
        return

    cases = build_cases()
    avx2_cases = [c for c in cases if c[1] == "avx2"]
    scalar_cases = [c for c in cases if c[1] == "scalar"]
    r_avx2 = run_worker("avx2", avx2_cases)
    r_avx512 = run_worker("avx512", avx2_cases)
    r_default = run_worker("default", scalar_cases)
    assert r_avx2["capability"] == "AVX2", r_avx2["capability"]
    assert r_default["capability"] == "DEFAULT", r_default["capability"]
    if r_avx512["capability"] == "AVX512":
        assert r_avx512["outputs"] == r_avx2["outputs"], "AVX2 and AVX512 kernels disagree"
    results = dict(zip([c[0] for c in avx2_cases], r_avx2["outputs"]))
    results.update(zip([c[0] for c in scalar_cases], r_default["outputs"]))

    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.out):
        if f.endswith(".f32"):
            os.remove(os.path.join(args.out, f))
    index = []
    for name, path, seed, calls, stored in cases:
        raw = bytes.fromhex(results[name])
        numel = len(raw) // 4
        if stored == "head_tail" and numel <= 2 * EDGE:
            stored = "full"
        data = raw if stored == "full" else raw[: 4 * EDGE] + raw[-4 * EDGE:]
        with open(os.path.join(args.out, name + ".f32"), "wb") as fh:
            fh.write(data)
        entry = {"name": name, "path": path, "seed": str(seed), "calls": calls, "numel": numel,
                 "stored": stored, "file": name + ".f32", "sha256": hashlib.sha256(raw).hexdigest()}
        if stored == "head_tail":
            entry["edge"] = EDGE
        index.append(entry)

    meta = {
        "description": "torch CPU randn goldens; see tools/golden_randn.py",
        "torch": r_avx2["torch"],
        "capabilities_checked": sorted({r_avx2["capability"], r_avx512["capability"], r_default["capability"]}),
        "glibc": platform.libc_ver()[1],
        "machine": platform.machine(),
        "cases": index,
    }
    # One case per line keeps the index short and diffs readable.
    text = json.dumps({k: v for k, v in meta.items() if k != "cases"}, indent=1)[:-2]
    text += ',\n "cases": [\n' + ",\n".join("  " + json.dumps(c) for c in index) + "\n ]\n}\n"
    json.loads(text)
    with open(os.path.join(args.out, "index.json"), "w") as fh:
        fh.write(text)
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"wrote {len(index)} cases, {total} bytes to {args.out}")


if __name__ == "__main__":
    main()
