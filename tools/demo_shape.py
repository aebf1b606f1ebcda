#!/usr/bin/env python3
"""Does a demo run show the thesis's shape? Reads what `tomex run specs/demo.toml` stored.

  * FID against r, per configuration: the values of fid.csv, and FID at the highest r of
    the configuration over FID at r = 0.1 (the issue asks for at least 3x);
  * time: median s/image per (configuration, r) from the store's manifest, and r = 0.5
    over r = 0 for the self-attention configuration (the issue asks for at most 0.85x).

Usage:
  tools/.venv/bin/python tools/demo_shape.py --store results --spec demo
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import store_rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path("results"))
    ap.add_argument("--spec", default="demo")
    a = ap.parse_args()
    fid: dict[str, dict[float, float]] = defaultdict(dict)
    with open(a.store / "reports" / a.spec / "fid.csv", newline="") as f:
        for row in csv.DictReader(f):
            fid[row["config"]][float(row["r"])] = float(row["fid"])
    times: dict[tuple[str, float], list[float]] = defaultdict(list)
    for row in store_rows.latest_model_rows(a.store / "manifest.csv", a.spec):
        times[(row["config"], float(row["r"]))].append(float(row["wall_s"]))
    print("| config | FID at r = 0.1 ... highest r | highest / 0.1 |")
    print("|---|---|---|")
    for config, values in fid.items():
        rs = sorted(r for r in values if r > 0)
        series = ", ".join(f"{values[r]:.2f}" for r in rs)
        ratio = values[rs[-1]] / values[0.1] if 0.1 in values and values[0.1] > 0 else float("nan")
        print(f"| {config} | {series} | {ratio:.1f}x |")
    print()
    print("| config | r | images | median s/image | % of r = 0 |")
    print("|---|---|---|---|---|")
    for (config, r), t in sorted(times.items()):
        base = statistics.median(times[(config, 0.0)]) if (config, 0.0) in times else float("nan")
        m = statistics.median(t)
        print(f"| {config} | {r:g} | {len(t)} | {m:.3f} | {100 * m / base:.1f} |")


if __name__ == "__main__":
    main()
