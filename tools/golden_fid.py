#!/usr/bin/env python3
"""Golden files for tomex's FID (src/metrics/) from pytorch-fid 0.3.0 (torch, CPU, float32; scipy).

Writes golden/fid/ (tests/fid_parity.rs reads it):
  images/a/*.png       12 RGB images 64x48 (smooth random fields plus noise)
  images/b/*.png       12 RGB images 80x80
  images/c/*.png       6 images 64x48 in PNG modes L, LA, RGBA, P, RGB (PIL's convert('RGB'))
  images/big.png       one 420x350 RGB image (a down-sampling case of the resize)
  preprocessed_<name>.npy  float32 [3, 299, 299]: pytorch-fid's ToTensor + F.interpolate(299, bilinear,
                       align_corners=False) + 2x-1 of images/a/00.png and images/big.png
  features_<set>_<dims>.npy  float32 [n, dims]: pytorch_fid.fid_score.get_activations (ImagePathDataset,
                       ToTensor, InceptionV3.forward with resize and normalisation, adaptive_avg_pool2d)
                       over the files in pytorch-fid's order, batch size 5 (so batches of 5, 5, 2)
  stats_<set>_<dims>.npz   pytorch-fid's save format (np.savez_compressed mu=, sigma=), dims 64 and 192
  fid.json             per dims: FID(a, b) from calculate_frechet_distance over
                       compute_statistics_of_path, the traces, plus the synthetic Fréchet cases

The network is the committed tests/fixtures/inception_tiny.onnx's (tools/export_inception.py
--tiny --random-seed 0): its torch blocks are put into pytorch-fid's InceptionV3 in place of
the downloaded Inception, so every step but the blocks' weights is pytorch-fid's own code.

Synthetic Fréchet cases (no files: the samples come from splitmix64, which
tests/fid_parity.rs reimplements bit for bit): two sets of n samples of 2048 dims,
x[i, d] = (u(seed, i*D + d) - 0.5) * (0.5 + d / D) + ((d % 7) - 3) * 0.1 * (u(seed + 1, i) - 0.5)
          + shift * (d % 5),
u(seed, k) = (splitmix64 output k of `seed`) >> 11, times 2^-53. n = 2500 (full rank) and
n = 100 (rank 99: fewer samples than dimensions). For each: scipy's value
(calculate_frechet_distance) and a numpy eigh value (the same formula tomex uses, in f64).

Usage (from the repository root):
  tools/.venv/bin/python tools/export_inception.py --tiny --random-seed 0 --out tests/fixtures/inception_tiny.onnx
  tools/.venv/bin/python tools/golden_fid.py
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as TF
from PIL import Image

import pytorch_fid.fid_score as fs
import pytorch_fid.inception as pfi

sys.path.insert(0, os.path.dirname(__file__))
from export_inception import tiny_blocks  # noqa: E402

OUT = pathlib.Path("golden/fid")
DIMS = (64, 192, 768, 2048)
BATCH = 5
MASK = (1 << 64) - 1


def field(rng, h, w):
    """A smooth random RGB field plus noise, 8-bit."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(3):
            fy, fx, ph = rng.uniform(0.02, 0.3), rng.uniform(0.02, 0.3), rng.uniform(0, 6.3)
            img[..., c] += rng.uniform(20, 60) * np.sin(fy * yy + fx * xx + ph)
        img[..., c] += rng.uniform(60, 190)
    img += rng.normal(0, 12, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_images():
    rng = np.random.default_rng(5)
    for name, (w, h), n in (("a", (64, 48), 12), ("b", (80, 80), 12)):
        d = OUT / "images" / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = field(rng, h, w)
            if name == "b":  # a different distribution: brighter, more contrast
                arr = np.clip(arr.astype(np.int32) * 5 // 4, 0, 255).astype(np.uint8)
            Image.fromarray(arr, "RGB").save(d / f"{i:02d}.png")
    d = OUT / "images" / "c"
    d.mkdir(parents=True, exist_ok=True)
    for i, mode in enumerate(("L", "LA", "RGBA", "P", "RGB", "RGBA")):
        rgb = Image.fromarray(field(rng, 48, 64), "RGB")
        if mode == "RGBA":
            img = rgb.convert("RGBA")
            alpha = rng.integers(0, 256, size=(48, 64), dtype=np.uint8)
            img.putalpha(Image.fromarray(alpha, "L"))
        elif mode == "P":
            img = rgb.quantize(colors=64)
        else:
            img = rgb.convert(mode)
        img.save(d / f"{i:02d}.png")
    Image.fromarray(field(rng, 350, 420), "RGB").save(OUT / "images" / "big.png")


def preprocessed(path):
    """pytorch-fid's steps before the network: ToTensor, InceptionV3's resize and 2x-1."""
    x = TF.ToTensor()(Image.open(path).convert("RGB"))[None]
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return (2 * x - 1)[0].numpy().astype(np.float32)


def pytorch_fid_model(blocks, dims):
    """pytorch-fid's InceptionV3 for `dims`, with `blocks` in place of the downloaded network."""
    idx = pfi.InceptionV3.BLOCK_INDEX_BY_DIM[dims]
    m = pfi.InceptionV3.__new__(pfi.InceptionV3)
    nn.Module.__init__(m)
    m.resize_input = True
    m.normalize_input = True
    m.output_blocks = [idx]
    m.last_needed_block = idx
    m.blocks = blocks
    return m.eval()


def files_of(path):
    """pytorch-fid's file order (compute_statistics_of_path)."""
    path = pathlib.Path(path)
    return sorted([f for ext in fs.IMAGE_EXTENSIONS for f in path.glob("*.{}".format(ext))])


def splitmix_uniform(seed, count):
    k = np.arange(1, count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + k * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def synthetic_samples(seed, n, dim, shift):
    u = splitmix_uniform(seed, n * dim).reshape(n, dim)
    f = splitmix_uniform(seed + 1, n)
    d = np.arange(dim)
    scale = 0.5 + d.astype(np.float64) / dim
    load = ((d % 7).astype(np.float64) - 3.0) * 0.1
    return (u - 0.5) * scale + load * (f[:, None] - 0.5) + shift * (d % 5).astype(np.float64)


def eigh_frechet(mu1, s1, mu2, s2):
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root @ s2 @ root
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


def synthetic_cases():
    cases = []
    for name, n in (("full_rank", 2500), ("rank_deficient", 100)):
        x1 = synthetic_samples(11, n, 2048, 0.0)
        x2 = synthetic_samples(23, n, 2048, 0.01)
        mu1, s1 = x1.mean(0), np.cov(x1, rowvar=False)
        mu2, s2 = x2.mean(0), np.cov(x2, rowvar=False)
        t = time.time()
        scipy_value = float(fs.calculate_frechet_distance(mu1, s1, mu2, s2))
        scipy_s = time.time() - t
        cases.append(
            {
                "name": name,
                "n": n,
                "dims": 2048,
                "seeds": [11, 23],
                "shifts": [0.0, 0.01],
                "scipy": scipy_value,
                "scipy_seconds": scipy_s,
                "eigh": eigh_frechet(mu1, s1, mu2, s2),
                "trace_sigma1": float(np.trace(s1)),
                "trace_sigma2": float(np.trace(s2)),
                "mean_diff_sq": float((mu1 - mu2) @ (mu1 - mu2)),
                "x1_first": x1[0, :4].tolist(),
            }
        )
        print(name, cases[-1]["scipy"], cases[-1]["eigh"], f"scipy {scipy_s:.1f}s")
    return cases


def main():
    torch.set_grad_enabled(False)
    OUT.mkdir(parents=True, exist_ok=True)
    write_images()
    for name, path in (("a00", OUT / "images/a/00.png"), ("big", OUT / "images/big.png")):
        np.save(OUT / f"preprocessed_{name}.npy", preprocessed(path))

    blocks = tiny_blocks(0).eval()
    report = {"batch_size": BATCH, "network": "tests/fixtures/inception_tiny.onnx", "dims": {}}
    for dims in DIMS:
        model = pytorch_fid_model(blocks, dims)
        for s in ("a", "b", "c"):
            act = fs.get_activations(files_of(OUT / "images" / s), model, BATCH, dims, "cpu", 0)
            np.save(OUT / f"features_{s}_{dims}.npy", act.astype(np.float32))
            assert np.array_equal(act.astype(np.float32).astype(np.float64), act)
        m1, s1 = fs.compute_statistics_of_path(str(OUT / "images/a"), model, BATCH, dims, "cpu", 0)
        m2, s2 = fs.compute_statistics_of_path(str(OUT / "images/b"), model, BATCH, dims, "cpu", 0)
        if dims in (64, 192):
            for s, (m, sg) in (("a", (m1, s1)), ("b", (m2, s2))):
                np.savez_compressed(OUT / f"stats_{s}_{dims}.npz", mu=m, sigma=sg)
        fid = float(fs.calculate_frechet_distance(m1, s1, m2, s2))
        report["dims"][str(dims)] = {
            "fid": fid,
            "eigh": eigh_frechet(m1, s1, m2, s2),
            "trace_sigma_a": float(np.trace(s1)),
            "trace_sigma_b": float(np.trace(s2)),
        }
        print(f"dims {dims}: FID {fid}")
    report["synthetic"] = synthetic_cases()
    (OUT / "fid.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
