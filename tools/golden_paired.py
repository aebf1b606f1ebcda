#!/usr/bin/env python3
"""Golden values for src/metrics/paired.rs: PSNR and SSIM from scikit-image.

    tools/.venv/bin/python tools/golden_paired.py [--out golden/paired]

Writes small 8-bit RGB image pairs (PNG) and values.csv with
`reference,test,psnr,ssim`, where

    psnr = skimage.metrics.peak_signal_noise_ratio(ref, test, data_range=255)
    ssim = skimage.metrics.structural_similarity(
        ref, test, channel_axis=2, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255)

(Wang et al. 2004: Gaussian window σ 1.5, 11 taps, K1 0.01, K2 0.03).
"""
import argparse
import os

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def pairs(rng):
    h, w = 40, 56
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx * 4, yy * 6, (xx + yy) * 2], axis=2).clip(0, 255).astype(np.uint8)
    noisy = (smooth + rng.normal(0, 12, smooth.shape)).clip(0, 255).astype(np.uint8)
    yield "smooth", smooth, "smooth_noisy", noisy
    blocky = smooth.copy()
    blocky[8:24, 10:30] = 200
    yield "smooth", smooth, "smooth_block", blocky
    a = rng.integers(0, 256, (33, 21, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (33, 21, 3), dtype=np.uint8)
    yield "rand_a", a, "rand_b", b
    c = (a.astype(np.int32) + rng.integers(-3, 4, a.shape)).clip(0, 255).astype(np.uint8)
    yield "rand_a", a, "rand_a_close", c
    yield "smooth", smooth, "smooth", smooth
    dark = np.zeros((11, 11, 3), np.uint8)
    dark[5, 5] = [255, 128, 3]
    yield "tiny_zero", np.zeros((11, 11, 3), np.uint8), "tiny_dot", dark


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "golden", "paired"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(5)
    rows = ["reference,test,psnr,ssim"]
    for an, a, bn, b in pairs(rng):
        for n, im in ((an, a), (bn, b)):
            Image.fromarray(im).save(os.path.join(args.out, n + ".png"))
        p = peak_signal_noise_ratio(a, b, data_range=255)
        s = structural_similarity(a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, data_range=255)
        rows.append(f"{an}.png,{bn}.png,{float(p)!r},{float(s)!r}")
    with open(os.path.join(args.out, "values.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
