#!/usr/bin/env python3
"""Golden images of the tiny SDXL pipeline from diffusers + tomesd 0.1.3 (torch, CPU, float32).

The reference is tools/.work/tiny_sdxl_pt (tools/make_tiny_sdxl.py); tomex runs its optimum
export, tests/fixtures/tiny_sdxl. Cases: the model's own scheduler (Euler, as diffusers'
pipeline defaults it) at the model's own size, no negative prompt (zeroed negative
conditioning, `force_zeros_for_empty_prompt`) and a negative prompt (encoded by both
encoders), explicit DDIM and DPM-Solver++, a size whose latent the UNet's downsampling
does not divide, and ToMe: tomesd's default `max_downsample = 1` (which on SDXL merges
nothing: the full-resolution level has no attention) and `max_downsample = 2`. One case
with per-channel latent statistics in the VAE config (index.json's "latents_stats").

One UNet evaluation besides (golden/sdxl/unet/): random sample, text states, `text_embeds`
and the `time_ids` of a 128x128 image at timestep 500, the unpatched output and tomesd's
with `max_downsample = 2` merging self-attention, cross-attention and the MLP at r = 0.5,
as little-endian float32 files (shapes in index.json's "unet").

Writes golden/sdxl/*.png, golden/sdxl/unet/*.f32 and golden/sdxl/index.json.

Usage (from the repository root):
  tools/.venv/bin/python tools/golden_sdxl.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
PT_DIR = ROOT / "tools" / ".work" / "tiny_sdxl_pt"
ONNX_DIR = ROOT / "tests" / "fixtures" / "tiny_sdxl"
OUT = ROOT / "golden" / "sdxl"

GUIDANCE = 5.0  # SDXL's usual guidance
STEPS = 10
SELF_MD2 = dict(ratio=0.5, merge=["self_attn"], sx=2, sy=2, max_downsample=2)
ALL_MD2 = dict(ratio=0.5, merge=["self_attn", "cross_attn", "mlp"], sx=2, sy=2, max_downsample=2)
SELF_MD1 = dict(ratio=0.5, merge=["self_attn"], sx=2, sy=2, max_downsample=1)  # tomesd's default
# (scheduler: None = the model's own, prompt, negative prompt, seed, (width, height), tome)
CASES = [
    (None, "a photograph of an astronaut riding a horse", None, 3, (128, 128), None),
    (None, "a red circle on a white background", "blurry, low quality", 11, (64, 64), None),
    ("ddim", "a castle on a hill at sunset", None, 5, (64, 64), None),
    ("dpmpp-2m", "a bowl of fruit", None, 8, (72, 40), None),
    (None, "a small blue square", None, 21, (128, 128), SELF_MD2),
    (None, "a lighthouse in a storm", "people", 4, (64, 96), ALL_MD2),
    (None, "a small blue square", None, 21, (128, 128), SELF_MD1),
]
# A VAE config with per-channel latent statistics (as SDXL-family models such as
# Playground v2.5 ship): diffusers' SDXL pipeline decodes latents * std / scaling_factor
# + mean. The ONNX graphs are the same; tomex reads the statistics from
# vae_decoder/config.json (tests/sdxl_golden.rs writes them into a copy of the fixture).
LATENTS_STATS = dict(latents_mean=[0.4, -0.3, 0.2, -0.1], latents_std=[0.8, 1.3, 0.9, 1.1])
LATENTS_STATS_CASE = ("a red circle on a white background", 12, (64, 64))
# `pipe(prompt, generator=...)` and nothing else: what `tomex generate --model M --prompt P
# --seed S` must reproduce (50 steps, guidance 5.0, the model's size and scheduler).
DEFAULTS_CASE = ("a cat sitting on a chair", 7)


def scheduler_for(own, name: str | None):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name is None:
        return own
    if name == "ddim":
        return DDIMScheduler.from_config(own.config)
    if name == "dpmpp-2m":
        return DPMSolverMultistepScheduler.from_config(own.config)
    sys.exit(f"golden_sdxl: unknown scheduler {name}")


def main() -> None:
    import tomesd
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    torch.set_num_threads(1)
    if not PT_DIR.exists():
        sys.exit(f"golden_sdxl: {PT_DIR} missing: run tools/make_tiny_sdxl.py first")
    pipe = StableDiffusionXLPipeline.from_pretrained(str(PT_DIR), torch_dtype=torch.float32, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.force_zeros_for_empty_prompt
    # The scheduler config tomex reads: the export's (optimum writes every default).
    own = EulerDiscreteScheduler.from_pretrained(str(ONNX_DIR / "scheduler"))

    def gen(prompt, negative, seed, size):
        width, height = size
        return pipe(prompt, negative_prompt=negative, height=height, width=width, num_inference_steps=STEPS,
                    guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(seed),
                    output_type="pil").images[0]

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    index = []
    for i, (scheduler, prompt, negative, seed, size, t) in enumerate(CASES):
        pipe.scheduler = scheduler_for(own, scheduler)
        width, height = size
        base = f"{i:02d}_{scheduler or 'default'}_{width}x{height}_seed{seed}"
        entry = {"prompt": prompt, "negative_prompt": negative or "", "seed": seed, "width": width,
                 "height": height, "steps": STEPS, "guidance": GUIDANCE, "scheduler": scheduler or "euler",
                 "model_default_scheduler": scheduler is None}
        if t is None:
            entry["file"] = f"{base}.png"
            gen(prompt, negative, seed, size).save(OUT / entry["file"], format="PNG", optimize=False)
        else:
            plain = gen(prompt, negative, seed, size)
            tomesd.apply_patch(pipe, ratio=t["ratio"], max_downsample=t["max_downsample"], sx=t["sx"], sy=t["sy"],
                               use_rand=False, merge_attn="self_attn" in t["merge"],
                               merge_crossattn="cross_attn" in t["merge"], merge_mlp="mlp" in t["merge"])
            merged = gen(prompt, negative, seed, size)
            tomesd.remove_patch(pipe)
            tag = "+".join(m.replace("_attn", "") for m in t["merge"])
            entry["file"] = f"{base}_tome_{tag}_r{t['ratio']:g}_md{t['max_downsample']}.png"
            merged.save(OUT / entry["file"], format="PNG", optimize=False)
            a, b = np.asarray(merged).astype(np.int32), np.asarray(plain).astype(np.int32)
            entry["tome"] = {**t, "use_rand": False}
            entry["diff_vs_unpatched"] = int(np.abs(a - b).max())
            merges = t["max_downsample"] >= 2
            if merges and entry["diff_vs_unpatched"] < 3:
                sys.exit(f"golden_sdxl: {entry['file']}: ToMe barely changes the image")
            if not merges and entry["diff_vs_unpatched"] != 0:
                sys.exit(f"golden_sdxl: {entry['file']}: max_downsample 1 changed the image")
        index.append(entry)
        print(f"{entry['file']}: {prompt!r} {entry.get('diff_vs_unpatched', '')}")
    prompt, seed = DEFAULTS_CASE
    pipe.scheduler = own
    image = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="pil").images[0]
    entry = {"prompt": prompt, "negative_prompt": "", "seed": seed, "width": image.width, "height": image.height,
             "steps": 50, "guidance": 5.0, "scheduler": "euler", "model_default_scheduler": True,
             "all_defaults": True, "file": f"{len(index):02d}_all_defaults_seed{seed}.png"}
    image.save(OUT / entry["file"], format="PNG", optimize=False)
    index.append(entry)
    print(f"{entry['file']}: {prompt!r}")
    stats_case = gen_latents_stats(pipe, gen)
    unet_case = gen_unet(pipe.unet, tomesd)
    with open(OUT / "index.json", "w", encoding="utf-8", newline="\n") as fh:
        json.dump({"model": "tools/.work/tiny_sdxl_pt (= tests/fixtures/tiny_sdxl)", "cases": index,
                   "latents_stats": stats_case, "unet": unet_case}, fh, indent=2)
        fh.write("\n")
    print(f"wrote {len(index)} cases to {OUT.relative_to(ROOT)}")


def gen_latents_stats(pipe, gen) -> dict:
    """The LATENTS_STATS case: the same generation with and without the VAE config's
    latent statistics (they must change the image, or the case tests nothing)."""
    prompt, seed, size = LATENTS_STATS_CASE
    plain = np.asarray(gen(prompt, None, seed, size)).astype(np.int32)
    pipe.vae.register_to_config(**LATENTS_STATS)
    image = gen(prompt, None, seed, size)
    pipe.vae.register_to_config(latents_mean=None, latents_std=None)
    moved = int(np.abs(np.asarray(image).astype(np.int32) - plain).max())
    if moved < 10:
        sys.exit(f"golden_sdxl: the latent statistics barely change the image ({moved})")
    name = f"latents_stats_{size[0]}x{size[1]}_seed{seed}.png"
    image.save(OUT / name, format="PNG", optimize=False)
    print(f"{name}: {prompt!r} {moved}")
    return {"prompt": prompt, "negative_prompt": "", "seed": seed, "width": size[0], "height": size[1],
            "steps": STEPS, "guidance": GUIDANCE, "scheduler": "euler", "model_default_scheduler": True,
            "file": name, **LATENTS_STATS, "diff_vs_without": moved}


def gen_unet(unet, tomesd) -> dict:
    """One evaluation of the UNet with its added conditions, unpatched and with ToMe."""
    d = OUT / "unet"
    d.mkdir()
    g = torch.Generator().manual_seed(2026)
    dim = unet.config.cross_attention_dim
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    inputs = {
        "sample": torch.randn(2, 4, 16, 16, generator=g),
        "encoder_hidden_states": torch.randn(2, 77, dim, generator=g),
        "text_embeds": torch.randn(2, pooled, generator=g),
        "time_ids": torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]] * 2),
    }
    timestep = 500

    def run():
        with torch.no_grad():
            return unet(inputs["sample"], torch.tensor(timestep, dtype=torch.int64),
                        encoder_hidden_states=inputs["encoder_hidden_states"],
                        added_cond_kwargs={"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]},
                        return_dict=False)[0]

    plain = run()
    tome = dict(ALL_MD2)
    tomesd.apply_patch(unet, ratio=tome["ratio"], max_downsample=tome["max_downsample"], sx=tome["sx"],
                       sy=tome["sy"], use_rand=False, merge_attn=True, merge_crossattn=True, merge_mlp=True)
    merged = run()
    tomesd.remove_patch(unet)
    moved = float((merged - plain).norm() / plain.norm())
    if moved < 1e-3:
        sys.exit(f"golden_sdxl: ToMe moves the UNet output by only {moved:.1e}")
    files = {}
    for name, t in {**inputs, "unpatched_out": plain, "tome_out": merged}.items():
        a = np.ascontiguousarray(t.numpy(), dtype="<f4")
        a.tofile(d / f"{name}.f32")
        files[name] = {"file": f"unet/{name}.f32", "shape": list(a.shape)}
    print(f"unet: ToMe moves the output by {moved:.2e} (relative L2)")
    return {"timestep": timestep, "tome": {**tome, "use_rand": False}, "tensors": files, "tome_moves": moved}


if __name__ == "__main__":
    main()
