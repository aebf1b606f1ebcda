#!/usr/bin/env python3
"""Golden reference runs of diffusers' schedulers for tests/scheduler_parity.rs.

Usage (from the repository root, with the reference stack of tools/requirements.txt):

    tools/.venv/bin/python tools/golden_schedulers.py [--out golden/schedulers]

Writes, under --out:

* ``index.json``: the environment (versions, CPU/MKL path) and two lists.
  ``cases``: full runs. Each names the diffusers class, the scheduler_config.json
  dict handed to ``Class.from_config``, ``num_inference_steps``, the tensor shape,
  the resulting ``timesteps`` and ``init_noise_sigma``, and a raw data file.
  ``schedules``: timestep/sigma grids only, for many step counts and spacings.
* ``<case>.f32``: little-endian float32, in this order:
  ``alphas_cumprod`` (T values), ``sigmas`` (S values; S = 0 for PNDM/DDIM),
  ``sample0`` (N values: randn * init_noise_sigma), then for every step i:
  ``model_output_i``, ``scaled_input_i`` (scale_model_input(sample_i, t_i)) and
  ``prev_sample_i`` (step(model_output_i, t_i, sample_i).prev_sample), N values each.
  ``sample_{i+1} = prev_sample_i``.
* ``schedules.f32``: for each entry of ``schedules``, its timesteps then its sigmas
  (float32), at the offsets recorded in the entry.

The model outputs are "fixed": torch.randn from their own seeded generator, one
draw per step, independent of the sample. The loop is the one of diffusers'
StableDiffusionPipeline (minus the UNet and guidance).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np
import torch

import diffusers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

CLASSES = {
    "pndm": PNDMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpmpp-2m": DPMSolverMultistepScheduler,
}

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json (minus diffusers_version).
SD15 = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# stabilityai/stable-diffusion-2-1 (768, v-prediction) scheduler_config.json.
SD21 = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

SHAPE = [1, 4, 4, 4]
SAMPLE_SEED = 1234
NOISE_SEED = 5678


def sd15(**overrides):
    c = dict(SD15)
    c.update(overrides)
    return c


def case_list():
    """(name, kind, config, num_inference_steps)."""
    cases = []
    for kind in CLASSES:
        for n in (50, 10, 25, 1):
            cases.append((f"sd15-{kind}-{n}", kind, SD15, n))
    variations = {
        "cosine": sd15(beta_schedule="squaredcos_cap_v2"),
        "linear": sd15(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
        "sd21-vpred": SD21,
        "trailing": sd15(timestep_spacing="trailing"),
        "linspace": sd15(timestep_spacing="linspace"),
        "zsnr-vpred-trailing": sd15(
            rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"
        ),
        # Unknown keys are ignored; `_use_default_values` resets a key to the class default.
        "unknown-and-defaults": sd15(
            foo_bar=3, timestep_spacing="trailing", _use_default_values=["timestep_spacing"]
        ),
    }
    for vname, config in variations.items():
        for kind in CLASSES:
            cases.append((f"{vname}-{kind}-20", kind, config, 20))
    # Trailing spacing with 61 steps: numpy's arange yields 62 timesteps (the last one -1).
    for kind in ("euler", "dpmpp-2m"):
        cases.append((f"trailing-{kind}-61", kind, sd15(timestep_spacing="trailing"), 61))
    # PNDM with the Runge-Kutta warm-up.
    for n in (50, 10, 4):
        cases.append((f"pndm-prk-{n}", "pndm", sd15(skip_prk_steps=False), n))
    cases.append(("pndm-prk-vpred-15", "pndm", dict(SD21, skip_prk_steps=False), 15))
    cases.append(("pndm-prk-linspace-30", "pndm", sd15(skip_prk_steps=False, timestep_spacing="linspace"), 30))
    # DDIM specifics.
    cases.append(("ddim-alpha-one-50", "ddim", sd15(set_alpha_to_one=True), 50))
    cases.append(("ddim-defaults-clip-50", "ddim", {}, 50))
    cases.append(("ddim-sample-pred-20", "ddim", sd15(prediction_type="sample"), 20))
    cases.append(("ddim-clip-range-20", "ddim", sd15(clip_sample=True, clip_sample_range=2.5), 20))
    # Euler specifics.
    cases.append(("euler-leading-30", "euler", sd15(timestep_spacing="leading"), 30))
    cases.append(("euler-log-linear-30", "euler", sd15(interpolation_type="log_linear"), 30))
    cases.append(("euler-continuous-vpred-30", "euler", dict(SD21, timestep_type="continuous"), 30))
    cases.append(("euler-sigma-min-30", "euler", sd15(final_sigmas_type="sigma_min"), 30))
    cases.append(("euler-sample-pred-20", "euler", sd15(prediction_type="sample"), 20))
    # DPM-Solver specifics.
    cases.append(("dpm-order3-30", "dpmpp-2m", sd15(solver_order=3), 30))
    cases.append(("dpm-order3-10", "dpmpp-2m", sd15(solver_order=3), 10))
    cases.append(("dpm-order1-20", "dpmpp-2m", sd15(solver_order=1), 20))
    cases.append(("dpm-heun-30", "dpmpp-2m", sd15(solver_type="heun"), 30))
    cases.append(("dpm-heun-order3-30", "dpmpp-2m", sd15(solver_type="heun", solver_order=3), 30))
    cases.append(("dpm-euler-at-final-30", "dpmpp-2m", sd15(euler_at_final=True, final_sigmas_type="sigma_min"), 30))
    cases.append(("dpm-no-lower-final-10", "dpmpp-2m", sd15(lower_order_final=False, final_sigmas_type="sigma_min"), 10))
    cases.append(("dpm-sigma-min-20", "dpmpp-2m", sd15(final_sigmas_type="sigma_min"), 20))
    for order in (1, 2, 3):
        cases.append((f"dpm-dpmsolver-o{order}-20", "dpmpp-2m",
                      sd15(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", solver_order=order), 20))
    cases.append(("dpm-dpmsolver-heun-20", "dpmpp-2m",
                  sd15(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", solver_type="heun"), 20))
    cases.append(("dpm-sample-pred-20", "dpmpp-2m", sd15(prediction_type="sample"), 20))
    cases.append(("dpm-leading-20", "dpmpp-2m", sd15(timestep_spacing="leading"), 20))
    cases.append(("dpm-lambda-clip-20", "dpmpp-2m", sd15(lambda_min_clipped=-5.1), 20))
    # Trained betas with a non-default number of train steps.
    tb = [float(x) for x in np.linspace(0.0005, 0.03, 100) ** 1.5]
    for kind in CLASSES:
        cfg = {"trained_betas": tb, "num_train_timesteps": 100, "skip_prk_steps": True}
        cases.append((f"trained-betas-{kind}-12", kind, cfg, 12))
    return cases


def f32_list(x) -> list:
    return [float(v) for v in np.asarray(x, dtype=np.float32).reshape(-1)]


def timesteps_json(ts: torch.Tensor) -> list:
    if ts.dtype in (torch.int64, torch.int32):
        return [int(v) for v in ts.tolist()]
    return f32_list(ts.numpy())


def sigmas_of(s) -> np.ndarray:
    if hasattr(s, "sigmas") and not isinstance(s, (PNDMScheduler, DDIMScheduler)):
        return np.asarray(s.sigmas, dtype=np.float32)
    return np.zeros(0, dtype=np.float32)


def run_case(name, kind, config, n, out_dir):
    cls = CLASSES[kind]
    s = cls.from_config(dict(config))
    s.set_timesteps(n)
    timesteps = s.timesteps
    init_sigma = float(np.float32(s.init_noise_sigma))
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(SAMPLE_SEED), dtype=torch.float32)
    sample = sample * s.init_noise_sigma
    noise_gen = torch.Generator().manual_seed(NOISE_SEED)
    blobs = [
        np.asarray(s.alphas_cumprod, dtype=np.float32).reshape(-1),
        sigmas_of(s),
        sample.numpy().reshape(-1).astype(np.float32),
    ]
    for t in timesteps:
        model_output = torch.randn(SHAPE, generator=noise_gen, dtype=torch.float32)
        scaled = s.scale_model_input(sample, t)
        prev = s.step(model_output, t, sample).prev_sample
        blobs += [model_output.numpy().reshape(-1), scaled.numpy().reshape(-1), prev.numpy().reshape(-1)]
        sample = prev
    data = np.concatenate([b.astype("<f4") for b in blobs])
    fname = f"{name}.f32"
    data.tofile(os.path.join(out_dir, fname))
    return {
        "name": name,
        "kind": kind,
        "class": cls.__name__,
        "config": config,
        "num_inference_steps": n,
        "shape": SHAPE,
        "timesteps": timesteps_json(timesteps),
        "init_noise_sigma": init_sigma,
        "num_train_alphas": int(blobs[0].size),
        "num_sigmas": int(blobs[1].size),
        "file": fname,
    }


def schedule_grid(out_dir):
    ns = sorted(set(range(1, 31)) | {33, 40, 49, 50, 51, 61, 77, 100, 127, 250, 333, 500, 999, 1000})
    entries, chunks, offset = [], [], 0
    for kind in CLASSES:
        for spacing in ("linspace", "leading", "trailing"):
            config = sd15(timestep_spacing=spacing)
            for n in ns:
                s = CLASSES[kind].from_config(dict(config))
                s.set_timesteps(n)
                ts = np.asarray(s.timesteps.numpy(), dtype=np.float32)
                sig = sigmas_of(s)
                entries.append({
                    "kind": kind,
                    "timestep_spacing": spacing,
                    "num_inference_steps": n,
                    "offset": offset,
                    "num_timesteps": int(ts.size),
                    "num_sigmas": int(sig.size),
                    "init_noise_sigma": float(np.float32(s.init_noise_sigma)),
                })
                chunks += [ts, sig]
                offset += ts.size + sig.size
    np.concatenate(chunks).astype("<f4").tofile(os.path.join(out_dir, "schedules.f32"))
    return {"base_config": SD15, "file": "schedules.f32", "entries": entries}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="golden/schedulers")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    cases = [run_case(*c, args.out) for c in case_list()]
    index = {
        "about": "diffusers scheduler reference runs; see tools/golden_schedulers.py",
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "numpy": np.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl_enable_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS"),
            "machine": platform.machine(),
        },
        "sample_seed": SAMPLE_SEED,
        "noise_seed": NOISE_SEED,
        "cases": cases,
        "schedules": schedule_grid(args.out),
    }
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases and {len(index['schedules']['entries'])} schedules to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
