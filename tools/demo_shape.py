#!/usr/bin/env python3
"""Does a demo run show the thesis's shape? Reads what `tomex run specs/demo.toml` stored.

  * FID against r, per configuration: the values of fid.csv, and FID at the highest r of
    the configuration over FID at r = 0.1 (the issue asks for at least 3x);
  * time: median s/image per (configuration, r) from the store's manifest, as a share of
    r = 0's median (the issue asks for at most 0.85x at r = 0.5 for the self-attention
    configuration); and, paired, the median over prompts of each prompt's s/image over
    its own r = 0 image's. A prompt's images are made in the same round of the spec
    (`sweep.rounds`), seconds apart, so a slow spell of a shared machine that outlasts a
    round moves both sides of the pair alike.

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
    by_prompt: dict[tuple[str, float], dict[int, float]] = defaultdict(dict)
    for row in store_rows.latest_model_rows(a.store / "manifest.csv", a.spec):
        cell = (row["config"], float(row["r"]))
        times[cell].append(float(row["wall_s"]))
        by_prompt[cell][int(row["prompt_index"])] = float(row["wall_s"])
    print("| config | FID at r = 0.1 ... highest r | highest / 0.1 |")
    print("|---|---|---|")
    for config, values in fid.items():
        rs = sorted(r for r in values if r > 0)
        series = ", ".join(f"{values[r]:.2f}" for r in rs)
        ratio = values[rs[-1]] / values[0.1] if 0.1 in values and values[0.1] > 0 else float("nan")
        print(f"| {config} | {series} | {ratio:.1f}x |")
    print()
    print("| config | r | images | median s/image | % of r = 0 | paired: median % of own r = 0 |")
    print("|---|---|---|---|---|---|")
    for (config, r), t in sorted(times.items()):
        base = statistics.median(times[(config, 0.0)]) if (config, 0.0) in times else float("nan")
        m = statistics.median(t)
        own = by_prompt.get((config, 0.0), {})
        pairs = [s / own[i] for i, s in by_prompt[(config, r)].items() if i in own]
        paired = 100 * statistics.median(pairs) if pairs else float("nan")
        print(f"| {config} | {r:g} | {len(t)} | {m:.3f} | {100 * m / base:.1f} | {paired:.1f} |")


if __name__ == "__main__":
    main()
