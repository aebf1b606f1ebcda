#!/usr/bin/env python3
"""Time tomex's FID pieces for BENCHMARKS.md ("FID: featurising and the Fréchet distance").

1. The network: pytorch-fid's Inception-v3 architecture with RANDOM weights
   (`tools/export_inception.py --random-seed 0`, about 95 MB, cached in --work). Its compute
   cost is the real network's (the same graph, other numbers); pytorch-fid's weights cannot
   be downloaded here.
2. Images: --count seeded PNGs of --size x --size (smooth colour fields plus noise, so PNG
   decoding costs about what a generated image costs), in --work.
3. `tomex bench-fid --images DIR --inception ONNX --dims 2048 --repeats R`: featurising
   split into decode + preprocess + statistics (tomex's code) and the Inception network
   (ONNX Runtime), after one warm-up batch; and the 2048-d Fréchet distance on the
   synthetic statistics of tools/golden_fid.py by the eigenvector route (tomex before the
   Cholesky route) and by `frechet_distance` (now), median of R.

Prints a Markdown section; --json also keeps tomex's JSON line.

Usage (from the repository root, after `cargo build --release`):
  tools/.venv/bin/python tools/bench_fid.py --tomex target/release/tomex
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def network(work: Path) -> Path:
    out = work / "inception_random_seed0.onnx"
    if not out.exists():
        subprocess.run(
            [sys.executable, str(ROOT / "tools/export_inception.py"), "--random-seed", "0", "--out", str(out)],
            check=True,
        )
    return out


def images(work: Path, count: int, size: int) -> Path:
    folder = work / f"images_{count}_{size}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        path = folder / f"{i:04d}.png"
        if path.exists():
            continue
        a, b, c = rng.uniform(0, 2 * np.pi, 3)
        field = np.stack(
            [np.sin(3 * x + a) * np.cos(2 * y + b), np.sin(5 * y + c), np.cos(4 * (x + y) + a)], axis=-1
        )
        pixels = 127.5 + 100 * field + rng.normal(0, 12, field.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return folder


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tomex", default=str(ROOT / "target/release/tomex"))
    p.add_argument("--count", type=int, default=100, help="images to featurise")
    p.add_argument("--size", type=int, default=768, help="image side (the thesis's 768)")
    p.add_argument("--repeats", type=int, default=3, help="Fréchet timings per case and route")
    p.add_argument("--work", default=str(ROOT / "tools/.work/bench_fid"))
    p.add_argument("--json", help="also write tomex's JSON line here")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    net = network(work)
    folder = images(work, args.count, args.size)
    load_start = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cmd = [
        args.tomex, "bench-fid", "--images", str(folder), "--inception", str(net),
        "--dims", "2048", "--repeats", str(args.repeats),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    load_end = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")

    f = result["featurise"]
    ours = f["decode_s"] + f["preprocess_s"] + f["stats_s"]
    total = ours + f["network_s"]
    n = f["images"]
    print(f"Made by `tools/.venv/bin/python tools/bench_fid.py {' '.join(sys.argv[1:])}` on {started}.\n")
    print(f"* Machine: {cpu_name()} ({os.cpu_count()} logical CPUs); tomex's rayon threads: {result['threads']}; "
          f"load average (1 min) at start / end: {load_start:.2f} / {load_end:.2f}.")
    print(f"* Network: pytorch-fid's Inception-v3 with random weights (`export_inception.py --random-seed 0`, "
          f"the real network's cost), ONNX Runtime CPU. Images: {n} PNGs of {args.size}×{args.size}, "
          f"batches of {f['batch_size']}, 2048-d features, after one warm-up batch.\n")
    print("### Featurising: where the time goes\n")
    print("| stage | whose | s | ms/image | share |")
    print("|---|---|---:|---:|---:|")
    for name, whose, s in [
        ("decode PNG", "tomex (image crate)", f["decode_s"]),
        ("preprocess (resize to 299, 2x−1)", "tomex", f["preprocess_s"]),
        ("mean + covariance (f64)", "tomex (faer)", f["stats_s"]),
        ("Inception-v3", "ONNX Runtime", f["network_s"]),
    ]:
        print(f"| {name} | {whose} | {s:.3f} | {1000 * s / n:.1f} | {100 * s / total:.1f}% |")
    print(f"| **ours (decode + preprocess + stats)** | | {ours:.3f} | {1000 * ours / n:.1f} | {100 * ours / total:.1f}% |")
    print()
    print("### Fréchet distance, 2048-d\n")
    print("Synthetic statistics of `tools/golden_fid.py` (the cases of `tests/fid_parity.rs`). "
          "Before: the eigenvector route (eigendecomposition of Σ₁ with eigenvectors, then the eigenvalues "
          "of √Σ₁ Σ₂ √Σ₁ on its range), what tomex did for every input. After: `frechet_distance`, which "
          "takes the Cholesky route (Σ₁ = L Lᵀ, eigenvalues only of Lᵀ Σ₂ L) when a covariance is safely "
          "positive definite, else the eigenvector route.\n")
    print("| case | before s (median) | after s (median) | speed-up | runs before / after |")
    print("|---|---:|---:|---:|---|")
    for c in result["frechet"]:
        b, a = c["eigenvector_route_median_s"], c["frechet_distance_median_s"]
        runs = ", ".join(f"{x:.3f}" for x in c["eigenvector_route_s"]) + " / " + ", ".join(
            f"{x:.3f}" for x in c["frechet_distance_s"])
        print(f"| {c['case'].replace('_', ' ')} (n = {c['n']}) | {b:.3f} | {a:.3f} | {b / a:.2f}× | {runs} |")


if __name__ == "__main__":
    main()
