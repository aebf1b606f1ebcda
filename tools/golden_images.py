#!/usr/bin/env python3
"""Golden images from diffusers' StableDiffusionPipeline (torch, CPU, float32).

Reads the PyTorch copy of the tiny model (tools/.work/tiny_pt, written by
tools/make_tiny_model.py) and writes golden/images/index.json plus one PNG per
case.  Settings follow the thesis' script: negative prompt default (""),
guidance 7.5, generator=torch.Generator().manual_seed(seed), output_type "pil".

Self-check (printed, not committed): the same generations are replayed with a
hand-written copy of the pipeline's loop, first with the torch modules (must be
bit-identical to the pipeline, which proves the loop is a faithful copy), then
with the ONNX Runtime sessions of models/tiny (int64 scalar timestep) and
tests/fixtures/tiny_variant (float32 [batch] timestep).  The maximum absolute
8-bit pixel difference against the golden image must be <= 1.

Usage (from the repository root):
  tools/.venv/bin/python tools/golden_images.py            # write goldens + self-check
  tools/.venv/bin/python tools/golden_images.py --no-check # write goldens only
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
PT_DIR = ROOT / "tools" / ".work" / "tiny_pt"
ONNX_DIR = ROOT / "models" / "tiny"
VARIANT_DIR = ROOT / "tests" / "fixtures" / "tiny_variant"
OUT_DIR = ROOT / "golden" / "images"
TOKENS_JSON = ROOT / "golden" / "clip_tokens.json"

GUIDANCE = 7.5

# scheduler key -> how it is built from the pipeline's (SD 1.5 PNDM) config
SCHEDULERS = {
    "pndm": "PNDMScheduler (the pipeline's own, SD 1.5 scheduler_config.json)",
    "ddim": "DDIMScheduler.from_config(pipe.scheduler.config)",
    "euler": "EulerDiscreteScheduler.from_config(pipe.scheduler.config)",
    "dpmpp-2m": "DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # dpmsolver++, order 2",
}

# (prompt, seed, width, height, steps, scheduler)
CASES = [
    ("a photo of an astronaut riding a horse on mars", 0, 64, 64, 12, "pndm"),
    ("a cozy cabin in the snowy woods, oil painting, by greg rutkowski", 4294967295, 80, 48, 20, "pndm"),
    ("portrait of a cat wearing a tiny hat, highly detailed, artstation", 42, 96, 64, 12, "ddim"),
    ("a red apple on a wooden table", 1234, 64, 64, 15, "euler"),
    ("cyberpunk city at night, neon lights, rain, 4k", 2147483648, 80, 48, 20, "dpmpp-2m"),
    ("", 7, 96, 64, 12, "pndm"),
    ("a watercolor painting of a lighthouse", 99, 64, 96, 12, "dpmpp-2m"),
    ("an isometric voxel castle, trending on artstation", 31337, 48, 80, 20, "euler"),
    ("a bowl of soup that is also a portal to another dimension", 3000000000, 64, 64, 20, "ddim"),
]


def case_file(i: int, c) -> str:
    prompt, seed, w, h, steps, sched = c
    return f"{i:02d}_{sched}_{w}x{h}_{steps}steps_seed{seed}.png"


def make_scheduler(pipe, key: str):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    cfg = pipe.scheduler.config
    cls = {"pndm": PNDMScheduler, "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler,
           "dpmpp-2m": DPMSolverMultistepScheduler}[key]
    s = cls.from_config(cfg)
    if key == "dpmpp-2m":
        assert s.config.algorithm_type == "dpmsolver++" and s.config.solver_order == 2
    return s


def load_pipe():
    from diffusers import StableDiffusionPipeline

    if not PT_DIR.exists():
        sys.exit(f"{PT_DIR} missing: run tools/make_tiny_model.py first")
    pipe = StableDiffusionPipeline.from_pretrained(str(PT_DIR), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.to("cpu")
    return pipe


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """diffusers' VaeImageProcessor.postprocess for output_type='pil' (before PIL)."""
    image = (image / 2 + 0.5).clamp(0, 1)
    image = image.cpu().permute(0, 2, 3, 1).float().numpy()
    return (image * 255).round().astype("uint8")


class TorchModels:
    name = "torch-loop"

    def __init__(self, pipe):
        self.pipe = pipe

    def text(self, ids: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.pipe.text_encoder(torch.from_numpy(ids))[0]

    def unet(self, x: torch.Tensor, t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.pipe.unet(x, t, encoder_hidden_states=e, return_dict=False)[0]

    def vae(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.pipe.vae.decode(z, return_dict=False)[0]


class OrtModels:
    """ONNX Runtime sessions; adapts to the graph's declared input dtypes/ranks."""

    def __init__(self, unet_dir: Path, text_dir: Path, timestep_cast: str = "trunc"):
        import onnx
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        mk = lambda p: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])  # noqa: E731
        self.te = mk(text_dir / "text_encoder" / "model.onnx")
        self.un = mk(unet_dir / "unet" / "model.onnx")
        self.va = mk(ONNX_DIR / "vae_decoder" / "model.onnx")
        np_t = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32}
        self.ids_dtype = np_t[self.te.get_inputs()[0].type]
        ts = next(i for i in self.un.get_inputs() if i.name == "timestep")
        self.t_dtype, self.t_rank = np_t[ts.type], len(ts.shape)
        self.timestep_cast = timestep_cast
        self.name = (f"ort {unet_dir.relative_to(ROOT)} (t {np.dtype(self.t_dtype).name}"
                     f"{'[b]' if self.t_rank else ' scalar'}"
                     f"{', ' + timestep_cast if self.t_dtype == np.int64 else ''})")
        del onnx

    def text(self, ids: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.te.run(None, {"input_ids": ids.astype(self.ids_dtype)})[0])

    def unet(self, x: torch.Tensor, t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        tv = float(t)
        if self.t_dtype == np.int64:
            tv = np.round(tv) if self.timestep_cast == "round" else np.trunc(tv)
        ts = np.array(tv, dtype=self.t_dtype)
        if self.t_rank == 1:
            ts = np.full((x.shape[0],), tv, dtype=self.t_dtype)
        out = self.un.run(None, {"sample": x.numpy(), "timestep": ts, "encoder_hidden_states": e.numpy()})[0]
        return torch.from_numpy(out)

    def vae(self, z: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.va.run(None, {"latent_sample": z.numpy()})[0])


def replay(pipe, models, prompt, seed, w, h, steps, sched_key) -> np.ndarray:
    """A line-by-line copy of StableDiffusionPipeline.__call__ for this setup."""
    from diffusers.utils.torch_utils import randn_tensor

    tok = pipe.tokenizer
    scheduler = make_scheduler(pipe, sched_key)
    generator = torch.Generator().manual_seed(seed)
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="np").input_ids
    cond = models.text(ids)
    uids = tok([""], padding="max_length", max_length=cond.shape[1], truncation=True,
               return_tensors="np").input_ids
    uncond = models.text(uids)
    embeds = torch.cat([uncond, cond])

    scheduler.set_timesteps(steps, device="cpu")
    timesteps = scheduler.timesteps
    vsf = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    shape = (1, pipe.unet.config.in_channels, h // vsf, w // vsf)
    latents = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
    latents = latents * scheduler.init_noise_sigma

    params = set(inspect.signature(scheduler.step).parameters.keys())
    extra = {}
    if "eta" in params:
        extra["eta"] = 0.0
    if "generator" in params:
        extra["generator"] = generator

    for t in timesteps:
        x = torch.cat([latents] * 2)
        x = scheduler.scale_model_input(x, t)
        noise = models.unet(x, t, embeds)
        nu, nt = noise.chunk(2)
        noise = nu + GUIDANCE * (nt - nu)
        latents = scheduler.step(noise, t, latents, **extra, return_dict=False)[0]

    image = models.vae(latents / pipe.vae.config.scaling_factor)
    return to_uint8(image)[0]


def golden_tokens_lookup() -> dict[str, list[int]]:
    if not TOKENS_JSON.exists():
        return {}
    data = json.loads(TOKENS_JSON.read_text(encoding="utf-8"))
    return {c["prompt"]: c["input_ids"] for c in data["cases"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime self-check")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    pipe = load_pipe()
    pipe_scheduler = pipe.scheduler

    # The image prompts must tokenize exactly as the slow-tokenizer goldens say.
    gt = golden_tokens_lookup()
    for prompt, *_ in CASES:
        ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        if prompt in gt:
            assert ids == gt[prompt], f"tokenizer mismatch for {prompt!r}"
        else:
            print(f"note: {prompt!r} not in {TOKENS_JSON.relative_to(ROOT)}")

    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)
    index = []
    goldens = []
    for i, c in enumerate(CASES):
        prompt, seed, w, h, steps, sched = c
        pipe.scheduler = pipe_scheduler if sched == "pndm" else make_scheduler(pipe, sched)
        img = pipe(prompt, height=h, width=w, num_inference_steps=steps, guidance_scale=GUIDANCE,
                   generator=torch.Generator().manual_seed(seed), output_type="pil").images[0]
        assert img.size == (w, h)
        f = case_file(i, c)
        img.save(OUT_DIR / f, format="PNG", optimize=False)
        arr = np.asarray(img)
        goldens.append(arr)
        index.append({"file": f, "prompt": prompt, "seed": seed, "width": w, "height": h,
                      "steps": steps, "guidance": GUIDANCE, "scheduler": sched})
        px = arr.astype(np.float64)
        print(f"{f}: std={px.std():.1f} clamped={100 * np.mean((arr == 0) | (arr == 255)):.2f}%")
    pipe.scheduler = pipe_scheduler
    with open(OUT_DIR / "index.json", "w", encoding="utf-8", newline="\n") as fh:
        json.dump(index, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    print(f"wrote {len(index)} images to {OUT_DIR.relative_to(ROOT)}")

    if args.no_check:
        return

    backends = [
        TorchModels(pipe),
        OrtModels(ONNX_DIR, ONNX_DIR, "trunc"),
        OrtModels(ONNX_DIR, ONNX_DIR, "round"),
        OrtModels(VARIANT_DIR, VARIANT_DIR),
    ]
    print()
    header = "| case | " + " | ".join(b.name for b in backends) + " |"
    print(header)
    print("|" + "---|" * (len(backends) + 1))
    failures = []
    for i, c in enumerate(CASES):
        row = []
        for b in backends:
            arr = replay(pipe, b, *c)
            d = int(np.abs(arr.astype(np.int32) - goldens[i].astype(np.int32)).max())
            n = int(np.count_nonzero(arr != goldens[i]))
            row.append(f"{d} ({n} px)")
            if isinstance(b, TorchModels) and d != 0:
                failures.append(f"{case_file(i, c)}: replay loop is not bit-identical to the pipeline")
            fractional = c[5] == "euler"
            if isinstance(b, OrtModels) and d > 1 and not (fractional and b.t_dtype == np.int64):
                failures.append(f"{case_file(i, c)}: {b.name} max diff {d} > 1")
        print(f"| {case_file(i, c)} | " + " | ".join(row) + " |")
    print("\ncells: max |8-bit pixel difference| vs golden (number of differing channel values)")
    if failures:
        print("\n".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
