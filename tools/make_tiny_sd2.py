#!/usr/bin/env python3
"""Build a tiny random-weight Stable Diffusion 2.x pipeline and export it as a user would.

SD 2.1's layout at toy width: per-level head counts, linear projections in the
transformers (`use_linear_projection`), attention upcast to float32 (`upcast_attention`),
a GELU text encoder, the OpenCLIP tokenizer convention of padding with `!` (id 0) and
SD 2.1's scheduler config (DDIM, v-prediction). The epsilon variant (SD 2.0-base, 2.1-base)
differs only in `prediction_type`; the tests make it from a copy of this one.

Writes
  tools/.work/tiny_sd2_pt/   diffusers StableDiffusionPipeline (the golden script's
                             reference; git-ignored)
  tests/fixtures/tiny_sd2/   optimum's ONNX export of it (`optimum-cli export onnx
                             --task text-to-image`, the export venv of tools/export_demo.sh)

Usage (from the repository root):
  tools/.venv/bin/python tools/make_tiny_sd2.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import golden_schedulers  # noqa: E402
import make_tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PT_DIR = ROOT / "tools" / ".work" / "tiny_sd2_pt"
ONNX_DIR = ROOT / "tests" / "fixtures" / "tiny_sd2"
TOKENIZER_DIR = ROOT / "models" / "tiny" / "tokenizer"
EXPORT_VENV = ROOT / "tools" / ".work" / "venv-export"

SEED = 20261205

# stabilityai/stable-diffusion-2-1's scheduler/scheduler_config.json, and the tiny SD 1.x
# model's VAE (the VAE did not change between SD 1 and 2).
SD21_SCHEDULER_CONFIG = golden_schedulers.SD21
VAE_CONFIG = make_tiny_model.VAE_CONFIG
write_json = make_tiny_model.write_json

# The tiny SD 1.x model's sizes with SD 2.x's choices.
UNET_CONFIG = dict(
    make_tiny_model.UNET_CONFIG,
    # per-level head counts (diffusers' historical name), here 2 then 4
    attention_head_dim=(2, 4, 4),
    use_linear_projection=True,
    upcast_attention=True,
)
TEXT_CONFIG = dict(make_tiny_model.TEXT_CONFIG, hidden_act="gelu", pad_token_id=0)


def sd2_tokenizer(dst: Path) -> None:
    """The tiny model's CLIP vocabulary with SD 2's padding: `!` (id 0), not the end token."""
    shutil.copytree(TOKENIZER_DIR, dst)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = dst / name
        config = json.loads(path.read_text(encoding="utf-8"))
        config["pad_token"] = "!"
        write_json(path, config)
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(dst))
    assert tok.pad_token == "!" and tok.pad_token_id == 0, (tok.pad_token, tok.pad_token_id)


def build():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    bfloat16_weights(unet, vae, text_encoder)
    if PT_DIR.exists():
        shutil.rmtree(PT_DIR)
    PT_DIR.mkdir(parents=True)
    sd2_tokenizer(PT_DIR / "tokenizer-src")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(PT_DIR / "tokenizer-src")),
        unet=unet,
        scheduler=DDIMScheduler.from_config(SD21_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(PT_DIR), safe_serialization=True)
    write_json(PT_DIR / "scheduler" / "scheduler_config.json", SD21_SCHEDULER_CONFIG)
    shutil.rmtree(PT_DIR / "tokenizer")
    (PT_DIR / "tokenizer-src").rename(PT_DIR / "tokenizer")
    text_model_prefix(PT_DIR / "text_encoder" / "model.safetensors")
    print(f"wrote {PT_DIR.relative_to(ROOT)}")


def bfloat16_weights(*modules) -> None:
    """Rounds every weight to a bfloat16-representable float32 (the files compress ~2x
    in git) and puts the modules in eval mode (also used by tools/make_tiny_sdxl.py)."""
    for m in modules:
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
        m.eval()


def text_model_prefix(weights: Path) -> None:
    """transformers 5 writes CLIP text models' weights without the `text_model.` prefix,
    which transformers 4 (optimum's exporter) would not find: rewrite them as SD has them
    (a `CLIPTextModelWithProjection`'s `text_projection.` stays as it is)."""
    from safetensors.torch import load_file, save_file

    state = load_file(weights)
    keep = ("text_model.", "text_projection.")
    save_file({k if k.startswith(keep) else f"text_model.{k}": v for k, v in state.items()}, weights,
              metadata={"format": "pt"})


def export(pt_dir: Path = PT_DIR, onnx_dir: Path = ONNX_DIR) -> None:
    """optimum's export of the diffusers folder `pt_dir` into `onnx_dir` (also used by
    tools/make_tiny_sdxl.py)."""
    cli = EXPORT_VENV / "bin" / "optimum-cli"
    if not cli.exists():
        sys.exit(f"{cli} missing: run `bash tools/export_demo.sh` once (it makes the export venv)")
    if onnx_dir.exists():
        shutil.rmtree(onnx_dir)
    subprocess.run([str(cli), "export", "onnx", "--model", str(pt_dir), "--task", "text-to-image", str(onnx_dir)],
                   check=True)
    # Only what tomex reads: the text encoders, UNet, VAE decoder, configs and tokenizers.
    for unused in ("vae_encoder",):
        shutil.rmtree(onnx_dir / unused, ignore_errors=True)
    size = sum(p.stat().st_size for p in onnx_dir.rglob("*") if p.is_file())
    print(f"wrote {onnx_dir.relative_to(ROOT)} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    build()
    export()
