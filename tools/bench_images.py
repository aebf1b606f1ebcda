#!/usr/bin/env python3
"""Whole images: tomex (`tomex run` on a generated spec) against diffusers + tomesd
(torch on the CPU), on the full-size random-weight SD 1.5 pipeline of
tools/make_bench_pipeline.py, at several sizes and merge ratios, in one run.

For each size S (default 512 and 768 px) and ratio r (default 0, 0.3, 0.5):

  torch  a child process: StableDiffusionPipeline from the pipeline's parts (PNDM,
         guidance 7.5), for r > 0 `tomesd.apply_patch(pipe, ratio=r)` (tomesd's
         defaults: self-attention, random dst, max_downsample 1), one warm-up call
         with 1 step, then one timed image of --steps steps (seed 0);
  tomex  one `tomex run` per size over a spec with the same prompt, seed, steps,
         guidance and ratios (one configuration: self-attention, tomesd's defaults),
         which warms up each session and split and then times every image itself;
         the times and per-image peak memory come from the store's manifest.

Peak memory: torch's is the child's peak RSS (wait4), model load included; tomex's is
the process's peak RSS while making that image (reset before each image, so the
whole pipeline's weights are included: resident, not the high-water mark of loading).

Writes the Markdown section on stdout, progress on stderr, and with --write replaces
the section between <!-- bench-images:start --> and <!-- bench-images:end --> in
BENCHMARKS.md.

Usage (from the repository root, after cargo build --release, make_bench_unet.py
--channels 320,640,1280,1280 --out target/bench/unet-320 and make_bench_pipeline.py):
  tools/.venv/bin/python tools/bench_images.py --sizes 512,768 --ratios 0,0.3,0.5 --steps 5 --write
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_unet as bu  # noqa: E402  (child runner, machine facts, section writer)

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
SEED = 0


def torch_worker(a) -> None:
    import resource

    import torch

    torch.set_num_threads(a.threads)
    import tomesd
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe_dir = Path(a.pipeline)
    unet = UNet2DConditionModel.from_pretrained(str(Path(a.unet_dir) / "torch"))
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(str(pipe_dir / "torch" / "vae")),
        text_encoder=CLIPTextModel.from_pretrained(str(pipe_dir / "torch" / "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(str(pipe_dir / "onnx" / "tokenizer")),
        unet=unet,
        scheduler=PNDMScheduler.from_pretrained(str(pipe_dir / "onnx" / "scheduler")),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if a.ratio > 0:
        tomesd.apply_patch(pipe, ratio=a.ratio)

    def image(steps: int) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            pipe(PROMPT, num_inference_steps=steps, height=a.size, width=a.size, guidance_scale=7.5,
                 generator=torch.Generator().manual_seed(SEED))
        return time.perf_counter() - t0

    warm = image(1)
    t = image(a.steps)
    print(f"  torch {a.size}px r={a.ratio}: warm-up {warm:.1f} s, image {t:.1f} s", file=sys.stderr)
    print(json.dumps({"median_s": t, "times_s": [t], "warmup_s": warm,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def spec_text(a, size: int) -> str:
    ratios = ", ".join(str(r) for r in a.ratios)
    return f'''name = "bench-images-{size}"
store = "store"

[model]
dir = "{(Path(a.pipeline) / "onnx").resolve()}"

[generation]
width = {size}
height = {size}
steps = {a.steps}
guidance = 7.5
scheduler = "pndm"

[prompts]
file = "prompts.csv"
column = "prompt"
sample = 1

[seeds]
list = [{SEED}]

[sweep]
ratios = [{ratios}]

[[configs]]
name = "self"
merge = ["self_attn"]

[metrics]
fid = false
paired = false
'''


def tomex_size(a, size: int, env) -> dict:
    """One `tomex run` at `size`: {ratio: manifest row} plus the child's result."""
    work = ROOT / "target" / "bench" / f"images-{size}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "prompts.csv").write_text(f'prompt\n"{PROMPT}"\n')
    (work / "spec.toml").write_text(spec_text(a, size))
    res = bu.run_child([str(a.tomex), "run", str(work / "spec.toml"), "--quiet"], env, a.timeout,
                       expect_json=False)  # `tomex run` prints a summary, not a JSON line
    rows = {}
    manifests = sorted((work / "store").rglob("*.csv"))
    for m in manifests:
        if "manifest" not in m.name:
            continue
        with m.open() as f:
            for row in csv.DictReader(f):
                rows[float(row["r"])] = row
    res["rows"] = rows
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default=str(ROOT / "target" / "bench" / "sd-320"))
    ap.add_argument("--unet-dir", default=str(ROOT / "target" / "bench" / "unet-320"))
    ap.add_argument("--sizes", default="512,768")
    ap.add_argument("--ratios", default="0,0.3,0.5")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tomex", type=Path, default=ROOT / "target" / "release" / "tomex")
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ratio", type=float, default=0.0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_worker:
        torch_worker(a)
        return
    a.sizes = [int(s) for s in a.sizes.split(",") if s]
    a.ratios = [float(r) for r in a.ratios.split(",") if r]
    env = bu.child_env(a.threads)
    facts = bu.machine_facts(a.threads)
    facts["loadavg_start"] = bu.loadavg()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results: dict = {}
    for size in a.sizes:
        print(f"== {size} px", file=sys.stderr, flush=True)
        torch_runs = {}
        for r in a.ratios:
            torch_runs[r] = bu.run_child(
                [sys.executable, str(Path(__file__).resolve()), "--torch-worker", "--pipeline", a.pipeline,
                 "--unet-dir", a.unet_dir, "--size", str(size), "--ratio", str(r), "--steps", str(a.steps),
                 "--threads", str(a.threads)], env, a.timeout)
        results[size] = {"torch": torch_runs, "tomex": tomex_size(a, size, env)}
    facts["loadavg_end"] = bu.loadavg()

    L = ["## Whole images: tomex vs diffusers + tomesd, full-size SD 1.5 (random weights)", "",
         f"Made by `{bu.display_command().replace('bench_unet.py', 'bench_images.py')}` on {stamp}.", "",
         f"* Pipeline: `tools/make_bench_pipeline.py` (SD 1.5's UNet, CLIP ViT-L/14 text encoder and VAE "
         f"architectures, random weights), PNDM, guidance 7.5, {a.steps} steps, one prompt, seed {SEED}, "
         f"float32 on the CPU, {a.threads} threads for both.",
         "* torch: diffusers `StableDiffusionPipeline` (+ `tomesd.apply_patch(pipe, ratio=r)`, tomesd's "
         "defaults), one 1-step warm-up, then the timed image. tomex: `tomex run` on a spec with the same "
         "settings (one configuration, self-attention, tomesd's defaults), which warms up its sessions and "
         "splits, then times each image; peak = resident memory while making the image.",
         f"* Machine: {facts.get('cpu', '?')} ({facts.get('logical_cpus', '?')} logical CPUs), load average "
         f"{facts['loadavg_start']} / {facts['loadavg_end']}.", "",
         "| size | r | torch s/image | tomex s/image | speed-up | tomex UNet s | torch peak MiB | tomex peak MiB |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for size, res in results.items():
        rows = res["tomex"].get("rows", {})
        for r in a.ratios:
            tr = res["torch"].get(r)
            row = rows.get(r)
            ts = f"{bu.med(tr):.1f}" if bu.ok(tr) else (tr or {}).get("error", "—")
            xs = f"{float(row['wall_s']):.1f}" if row else "—"
            sp = f"{bu.med(tr) / float(row['wall_s']):.2f}×" if bu.ok(tr) and row else "—"
            us = f"{float(row['unet_s']):.1f}" if row else "—"
            tp = f"{tr['wait4_maxrss_mib']:.0f}" if tr else "—"
            xp = (f"{int(row['peak_host_rss_bytes']) / 2**20:.0f}"
                  if row and row.get("peak_host_rss_bytes") else "—")
            L.append(f"| {size} | {r:g} | {ts} | {xs} | {sp} | {us} | {tp} | {xp} |")
    section = "\n".join(L) + "\n"
    print(section)
    out = ROOT / "target" / "bench" / "bench_images.json"
    out.write_text(json.dumps({"facts": facts, "results": {str(k): v for k, v in results.items()}},
                              indent=2, default=str))
    if a.write:
        bu.write_section(a.benchmarks, section, "bench-images")


if __name__ == "__main__":
    main()
