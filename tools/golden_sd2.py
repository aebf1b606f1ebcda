#!/usr/bin/env python3
"""Golden images of the tiny SD 2.x pipeline from diffusers + tomesd 0.1.3 (torch, CPU, float32).

The reference is tools/.work/tiny_sd2_pt (tools/make_tiny_sd2.py); tomex runs its optimum
export, tests/fixtures/tiny_sd2. Cases cover SD 2.1's v-prediction and the epsilon
prediction of SD 2.0-base/2.1-base (the same weights with `prediction_type` changed, as
the test makes its model copy), the model's own scheduler (DDIM, as diffusers' pipeline
defaults) and an explicit one, ToMe, and a size whose latent the UNet's downsampling does
not divide.

Writes golden/sd2/*.png and golden/sd2/index.json.

Usage (from the repository root):
  tools/.venv/bin/python tools/golden_sd2.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
PT_DIR = ROOT / "tools" / ".work" / "tiny_sd2_pt"
ONNX_DIR = ROOT / "tests" / "fixtures" / "tiny_sd2"
OUT = ROOT / "golden" / "sd2"

GUIDANCE = 7.5
STEPS = 10
SELF = dict(ratio=0.5, merge=["self_attn"], sx=2, sy=2)
SELF_CROSS = dict(ratio=0.5, merge=["self_attn", "cross_attn"], sx=2, sy=2)
# (prediction type, scheduler: None = the model's own, prompt, seed, (width, height), tome)
CASES = [
    ("v_prediction", None, "a photograph of an astronaut riding a horse", 3, (64, 64), None),
    ("v_prediction", "euler", "a red circle on a white background", 11, (64, 64), None),
    ("v_prediction", None, "a castle on a hill at sunset", 5, (64, 64), SELF),
    ("v_prediction", None, "a bowl of fruit", 8, (72, 40), None),
    ("epsilon", None, "a photograph of an astronaut riding a horse", 3, (64, 64), None),
    ("epsilon", "dpmpp-2m", "a small blue square", 21, (64, 64), SELF_CROSS),
]


def scheduler_for(pipe, prediction: str, name: str | None):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    config = dict(pipe.scheduler.config)
    config["prediction_type"] = prediction
    if name is None:
        return DDIMScheduler.from_config(config)  # the model's own (scheduler_config.json)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "dpmpp-2m":
        return DPMSolverMultistepScheduler.from_config(config)
    sys.exit(f"golden_sd2: unknown scheduler {name}")


def main() -> None:
    import tomesd
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    if not PT_DIR.exists():
        sys.exit(f"golden_sd2: {PT_DIR} missing: run tools/make_tiny_sd2.py first")
    from diffusers import DDIMScheduler

    pipe = StableDiffusionPipeline.from_pretrained(str(PT_DIR), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    # The scheduler config tomex reads: the export's, which optimum writes with every
    # default filled in (`timestep_spacing: leading` explicit, so Euler and DPM-Solver
    # built from it space their steps as DDIM does, not by their own `linspace` default).
    pipe.scheduler = DDIMScheduler.from_pretrained(str(ONNX_DIR / "scheduler"))
    own = pipe.scheduler

    def gen(prompt, seed, size):
        width, height = size
        return pipe(prompt, height=height, width=width, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                    generator=torch.Generator().manual_seed(seed), output_type="pil").images[0]

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    index = []
    for i, (prediction, scheduler, prompt, seed, size, t) in enumerate(CASES):
        pipe.scheduler = scheduler_for(pipe, prediction, scheduler) if scheduler or prediction != "v_prediction" else own
        width, height = size
        name = scheduler or "default"
        base = f"{i:02d}_{prediction}_{name}_{width}x{height}_seed{seed}"
        entry = {"prompt": prompt, "seed": seed, "width": width, "height": height, "steps": STEPS,
                 "guidance": GUIDANCE, "prediction_type": prediction,
                 "scheduler": scheduler or "ddim", "model_default_scheduler": scheduler is None}
        if t is None:
            entry["file"] = f"{base}.png"
            gen(prompt, seed, size).save(OUT / entry["file"], format="PNG", optimize=False)
        else:
            plain = gen(prompt, seed, size)
            tomesd.apply_patch(pipe, ratio=t["ratio"], max_downsample=1, sx=t["sx"], sy=t["sy"], use_rand=False,
                               merge_attn="self_attn" in t["merge"], merge_crossattn="cross_attn" in t["merge"],
                               merge_mlp="mlp" in t["merge"])
            merged = gen(prompt, seed, size)
            tomesd.remove_patch(pipe)
            tag = "+".join(m.replace("_attn", "") for m in t["merge"])
            entry["file"] = f"{base}_tome_{tag}_r{t['ratio']:g}.png"
            merged.save(OUT / entry["file"], format="PNG", optimize=False)
            a, b = np.asarray(merged).astype(np.int32), np.asarray(plain).astype(np.int32)
            entry["tome"] = {**t, "use_rand": False, "max_downsample": 1}
            entry["diff_vs_unpatched"] = int(np.abs(a - b).max())
            if entry["diff_vs_unpatched"] < 3:
                sys.exit(f"golden_sd2: {entry['file']}: ToMe barely changes the image")
        index.append(entry)
        print(f"{entry['file']}: {prompt!r} {entry.get('diff_vs_unpatched', '')}")
    with open(OUT / "index.json", "w", encoding="utf-8", newline="\n") as fh:
        json.dump({"model": "tools/.work/tiny_sd2_pt (= tests/fixtures/tiny_sd2)", "cases": index}, fh, indent=2)
        fh.write("\n")
    print(f"wrote {len(index)} cases to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
