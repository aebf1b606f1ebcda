#!/usr/bin/env python3
"""Whole images on the trained demo model: tomex against diffusers + tomesd, in one run.

Both stacks make the same images: the first --prompts captions of specs/prompts/demo.csv
with seeds 0, 1, ..., at 256x256, 20 PNDM steps, guidance 7.5, at r = 0 and at each
--ratios value with tomesd's defaults (self-attention, 2x2, random dst, max_downsample 1),
on 2 threads.

  torch  a child process per ratio: StableDiffusionPipeline from tools/demo/diffusers (the
         folder models/demo was exported from), `tomesd.apply_patch(pipe, ratio=r)` for
         r > 0, one 1-step warm-up image, then every prompt timed on its own;
  tomex  one `tomex run` over a generated spec with the same prompts, seeds and ratios,
         which warms up each session and split and times every image itself (the
         store's manifest gives the times).

Rounds alternate the two stacks (--rounds), so a slow spell of the machine falls on both;
medians are over every image of every round. Writes the Markdown section on stdout and,
with --write, between <!-- bench-demo:start --> and <!-- bench-demo:end --> in
BENCHMARKS.md.

Usage (from the repository root, after cargo build --release):
  tools/.venv/bin/python tools/bench_demo.py --prompts 8 --ratios 0.5 --rounds 2 --write
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_unet as bu  # noqa: E402  (child runner, machine facts, section writer)

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "tools" / "demo" / "diffusers"
SIZE, STEPS, GUIDANCE = 256, 20, 7.5


def captions(n: int) -> list[str]:
    with open(ROOT / "specs" / "prompts" / "demo.csv", newline="") as f:
        return [row["prompt"] for row in csv.DictReader(f)][:n]


def torch_worker(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    import tomesd
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(PIPELINE), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if a.ratio > 0:
        tomesd.apply_patch(pipe, ratio=a.ratio)

    def image(prompt: str, seed: int, steps: int) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            pipe(prompt, num_inference_steps=steps, height=SIZE, width=SIZE, guidance_scale=GUIDANCE,
                 generator=torch.Generator().manual_seed(seed))
        return time.perf_counter() - t0

    prompts = captions(a.prompts)
    image(prompts[0], 0, 1)
    times = [image(p, i, STEPS) for i, p in enumerate(prompts)]
    print(json.dumps({"median_s": statistics.median(times), "times_s": times}), flush=True)


def spec_text(a) -> str:
    ratios = ", ".join(str(r) for r in [0.0, *a.ratios])
    seeds = ", ".join(str(i) for i in range(a.prompts))
    return f'''name = "bench-demo"
store = "store"

[model]
dir = "{(ROOT / "models" / "demo").resolve()}"

[generation]
width = {SIZE}
height = {SIZE}
steps = {STEPS}
guidance = {GUIDANCE}
scheduler = "pndm"

[prompts]
file = "prompts.csv"
column = "prompt"
replace = false

[seeds]
list = [{seeds}]

[sweep]
ratios = [{ratios}]

[[configs]]
name = "self"
merge = ["self_attn"]

[metrics]
fid = false
paired = false
'''


def tomex_round(a, env) -> dict[float, list[float]]:
    work = ROOT / "target" / "bench" / "demo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with open(work / "prompts.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["prompt"])
        w.writerows([p] for p in captions(a.prompts))
    (work / "spec.toml").write_text(spec_text(a))
    res = bu.run_child([str(a.tomex), "run", str(work / "spec.toml"), "--quiet"], env, a.timeout,
                       expect_json=False)
    if "error" in res:
        sys.exit(f"tomex run failed: {res.get('stdout_tail', '')}")
    times: dict[float, list[float]] = {}
    with open(work / "store" / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            times.setdefault(float(row["r"]), []).append(float(row["wall_s"]))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--ratios", type=lambda s: [float(r) for r in s.split(",")], default=[0.5])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tomex", type=Path, default=ROOT / "target" / "release" / "tomex")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ratio", type=float, default=0.0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_worker:
        torch_worker(a)
        return
    env = bu.child_env(a.threads)
    ratios = [0.0, *a.ratios]
    ours: dict[float, list[float]] = {r: [] for r in ratios}
    theirs: dict[float, list[float]] = {r: [] for r in ratios}
    for _ in range(a.rounds):
        for r, t in tomex_round(a, env).items():
            ours[r] += t
        for r in ratios:
            cmd = [sys.executable, __file__, "--torch-worker", "--ratio", str(r), "--prompts", str(a.prompts),
                   "--threads", str(a.threads)]
            res = bu.run_child(cmd, env, a.timeout)
            if "error" in res:
                sys.exit(f"torch worker failed at r = {r}")
            theirs[r] += res["json"]["times_s"]

    facts = bu.machine_facts(a.threads)
    med = {r: (statistics.median(ours[r]), statistics.median(theirs[r])) for r in ratios}
    lines = [
        "## Demo model: whole images, tomex against diffusers + tomesd",
        "",
        f"{a.prompts} captions of specs/prompts/demo.csv (seeds 0..{a.prompts - 1}), {SIZE}x{SIZE}, {STEPS} PNDM "
        f"steps, guidance {GUIDANCE}, {a.threads} threads; tomesd's defaults for r > 0 (self-attention, "
        f"2x2, random dst). Medians of s/image over {a.rounds} rounds (stacks alternating).",
        "",
        "| r | tomex s/image | % of r = 0 | diffusers + tomesd s/image | % of r = 0 | tomex speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in ratios:
        o, t = med[r]
        lines.append(f"| {r:g} | {o:.3f} | {100 * o / med[0.0][0]:.1f} | {t:.3f} | {100 * t / med[0.0][1]:.1f} | "
                     f"{t / o:.2f}x |")
    lines += ["", f"Machine: {facts.get('cpu', '?')}, {facts.get('logical_cpus')} logical CPUs, "
              f"{', '.join(facts.get('isa', []))}; ONNX Runtime {facts.get('tomex_onnxruntime', '?')}; "
              f"commit {facts.get('git', '?')}; {dt.date.today().isoformat()}.", "",
              f"Command: `{bu.display_command().replace('bench_unet.py', 'bench_demo.py')}`", ""]
    section = "\n".join(lines) + "\n"
    print(section)
    if a.write:
        bu.write_section(a.benchmarks, section, "bench-demo")


if __name__ == "__main__":
    main()
