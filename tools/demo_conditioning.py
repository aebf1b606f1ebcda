#!/usr/bin/env python3
"""Where the demo model's shape following fails: its words, or its drawing.

Two measures on a diffusers folder of the demo model (default tools/demo/diffusers),
judged by tools/demo_judge.py's geometry:

  words    the same seed with `a <colour> <shape>` for each of the three shapes: how
           often the judged shape changes with the word (a UNet that reads the shape
           word draws three different objects; one that ignores it draws one blob
           three times), and how often it is the word's shape
  drawing  held-out scenes (world seed 2) encoded, noised to t = 100 ... 700, and the
           UNet's one-step estimate of the clean image decoded: the shape right per t
           shows whether the UNet can keep a shape it is shown

Usage:
  tools/.venv/bin/python tools/demo_conditioning.py [--pipeline DIR] [--seeds 12] [--scenes 60]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_judge  # noqa: E402
import demo_world  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def words(pipe, seeds: int) -> None:
    changed = right = total = 0
    colours = list(demo_world.COLOURS)
    for k in range(seeds):
        colour = colours[k % len(colours)]
        judged = []
        for shape in demo_world.SHAPES:
            image = pipe(f"a {colour} {shape}", height=256, width=256, num_inference_steps=20, guidance_scale=7.5,
                         generator=torch.Generator().manual_seed(2000 + k)).images[0]
            judged.append(demo_judge.judge(np.asarray(image.convert("RGB")))[1])
        changed += len(set(judged)) > 1
        right += sum(j == s for j, s in zip(judged, demo_world.SHAPES))
        total += len(judged)
        print(f"  seed {2000 + k}, {colour}: circle/square/triangle judged {judged}")
    print(f"words: the judged shape changes with the shape word for {changed} of {seeds} seeds; "
          f"shape right {right} of {total}")


def drawing(pipe, count: int) -> None:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    vae, unet = pipe.vae, pipe.unet
    scale = vae.config.scaling_factor
    scenes = [demo_world.single_caption_scene(2, i) for i in range(count)]
    with torch.no_grad():
        images = torch.from_numpy(np.stack([demo_world.render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
        latents = vae.encode(images).latent_dist.mean * scale
        states = pipe.encode_prompt([s.caption for s in scenes], "cpu", 1, False)[0]
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        for tv in (100, 300, 500, 700):
            t = torch.full((count,), tv)
            noisy = sched.add_noise(latents, noise, t)
            eps = unet(noisy, t, encoder_hidden_states=states).sample
            a = sched.alphas_cumprod[tv]
            clean = (noisy - (1 - a).sqrt() * eps) / a.sqrt()
            out = ((vae.decode(clean / scale).sample.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
            per = {s: [0, 0] for s in demo_world.SHAPES}
            for s, image in zip(scenes, out):
                want = s.objects[0].shape
                per[want][0] += demo_judge.judge(image)[1] == want
                per[want][1] += 1
            print(f"drawing: t = {tv}: shape right " + ", ".join(f"{s} {r} of {n}" for s, (r, n) in per.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", type=Path, default=ROOT / "tools" / "demo" / "diffusers")
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--scenes", type=int, default=60)
    args = ap.parse_args()
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(2)
    pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    words(pipe, args.seeds)
    drawing(pipe, args.scenes)


if __name__ == "__main__":
    main()
