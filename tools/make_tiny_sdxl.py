#!/usr/bin/env python3
"""Build a tiny random-weight Stable Diffusion XL pipeline and export it as a user would.

SDXL's layout at toy width: two text encoders (a CLIP-L-like `CLIPTextModel` and an
OpenCLIP-bigG-like `CLIPTextModelWithProjection` whose tokenizer pads with `!`), the
UNet's added conditioning (`addition_embed_type = "text_time"`: the second encoder's
pooled `text_embeds` and six `time_ids`), no attention at the full-resolution level,
several transformer layers per block at the lower levels, linear projections, SDXL
base's scheduler config (Euler, `leading` spacing) and `force_zeros_for_empty_prompt`.

Writes
  tools/.work/tiny_sdxl_pt/   diffusers StableDiffusionXLPipeline (the golden script's
                              reference; git-ignored)
  tests/fixtures/tiny_sdxl/   optimum's ONNX export of it (`optimum-cli export onnx
                              --task text-to-image`, the export venv of tools/export_demo.sh)

Usage (from the repository root):
  tools/.venv/bin/python tools/make_tiny_sdxl.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_model  # noqa: E402
import make_tiny_sd2  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PT_DIR = ROOT / "tools" / ".work" / "tiny_sdxl_pt"
ONNX_DIR = ROOT / "tests" / "fixtures" / "tiny_sdxl"
TOKENIZER_DIR = ROOT / "models" / "tiny" / "tokenizer"

SEED = 20261206
write_json = make_tiny_model.write_json

# stabilityai/stable-diffusion-xl-base-1.0's scheduler/scheduler_config.json.
SDXL_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

TEXT_CONFIG = dict(make_tiny_model.TEXT_CONFIG)  # CLIP ViT-L's conventions
TEXT_2_CONFIG = dict(make_tiny_model.TEXT_CONFIG, hidden_act="gelu", projection_dim=24)  # bigG's
ADDITION_TIME_EMBED_DIM = 8
# SDXL base: block_out_channels (320, 640, 1280), transformer_layers_per_block (1, 2, 10),
# heads (5, 10, 20), added embedding = pooled text (1280) + 6 time ids x 256.
UNET_CONFIG = dict(
    sample_size=16,  # 128 px by default (SDXL: 128 latents, 1024 px)
    in_channels=4,
    out_channels=4,
    block_out_channels=(16, 32, 32),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2),
    attention_head_dim=(2, 4, 4),
    use_linear_projection=True,
    cross_attention_dim=TEXT_CONFIG["hidden_size"] + TEXT_2_CONFIG["hidden_size"],
    addition_embed_type="text_time",
    addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
    projection_class_embeddings_input_dim=TEXT_2_CONFIG["projection_dim"] + 6 * ADDITION_TIME_EMBED_DIM,
    norm_num_groups=8,
)
VAE_CONFIG = dict(make_tiny_model.VAE_CONFIG, sample_size=128, scaling_factor=0.13025, force_upcast=True)


def build():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    torch.manual_seed(SEED + 3)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2_CONFIG))
    make_tiny_sd2.bfloat16_weights(unet, vae, text_encoder, text_encoder_2)
    if PT_DIR.exists():
        shutil.rmtree(PT_DIR)
    PT_DIR.mkdir(parents=True)
    shutil.copytree(TOKENIZER_DIR, PT_DIR / "tokenizer-src")
    make_tiny_sd2.sd2_tokenizer(PT_DIR / "tokenizer_2-src")  # OpenCLIP's `!` padding
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(str(PT_DIR / "tokenizer-src")),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(PT_DIR / "tokenizer_2-src")),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(str(PT_DIR), safe_serialization=True)
    write_json(PT_DIR / "scheduler" / "scheduler_config.json", SDXL_SCHEDULER_CONFIG)
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(PT_DIR / name)
        (PT_DIR / f"{name}-src").rename(PT_DIR / name)
    for name in ("text_encoder", "text_encoder_2"):
        make_tiny_sd2.text_model_prefix(PT_DIR / name / "model.safetensors")
    index = json.loads((PT_DIR / "model_index.json").read_text())
    assert index.get("force_zeros_for_empty_prompt") is True, index
    print(f"wrote {PT_DIR.relative_to(ROOT)}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    build()
    make_tiny_sd2.export(PT_DIR, ONNX_DIR)
