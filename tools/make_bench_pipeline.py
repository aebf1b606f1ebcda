#!/usr/bin/env python3
"""Build a full-size random-weight Stable Diffusion 1.5 pipeline for the whole-image
benchmark (tools/bench_images.py), around the full-width UNet of make_bench_unet.py.

SD 1.5's architectures with random weights (seeded): the UNet is
`make_bench_unet.py --channels 320,640,1280,1280`'s (reused, not copied: its ONNX files
are hard-linked), the CLIP ViT-L/14 text encoder (12 layers, width 768, vocabulary
49408) and the VAE (128, 256, 512, 512) are made here. The tokenizer and the PNDM
scheduler configuration are the tiny model's (which are SD 1.5's).

Writes
  OUT/torch/text_encoder, OUT/torch/vae    save_pretrained (the torch side builds the
                                           pipeline from these and UNET_DIR/torch)
  OUT/onnx/                                the ONNX layout tomex reads: model_index.json,
                                           tokenizer/, scheduler/, text_encoder/model.onnx,
                                           unet/model.onnx(+_data, hard links),
                                           vae_decoder/model.onnx

Usage (from the repository root, after make_bench_unet.py --channels 320,640,1280,1280
--out target/bench/unet-320):
  tools/.venv/bin/python tools/make_bench_pipeline.py [--unet-dir target/bench/unet-320]
      [--out target/bench/sd-320]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_model as tiny  # noqa: E402  (its exporters and SD 1.5 constants)

ROOT = Path(__file__).resolve().parent.parent
SEED = 20261126

TEXT_CONFIG = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                   projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4,
                  down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                  block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
                  act_fn="silu", sample_size=512, scaling_factor=0.18215)


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unet-dir", type=Path, default=ROOT / "target" / "bench" / "unet-320")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "bench" / "sd-320")
    a = ap.parse_args()
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_onnx = a.unet_dir / "onnx" / "unet"
    if not (unet_onnx / "model.onnx").exists() or not (a.unet_dir / "torch" / "config.json").exists():
        sys.exit(f"{a.unet_dir}: run tools/make_bench_unet.py --channels 320,640,1280,1280 --out {a.unet_dir}")
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).eval()
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    for m in (text_encoder, vae):
        m.requires_grad_(False)
    pt = a.out / "torch"
    text_encoder.save_pretrained(str(pt / "text_encoder"))
    vae.save_pretrained(str(pt / "vae"))

    onnx_dir = a.out / "onnx"
    with torch.no_grad():
        tiny.export_text_encoder(text_encoder, onnx_dir / "text_encoder" / "model.onnx", torch.int32)
        tiny.export_vae_decoder(vae, onnx_dir / "vae_decoder" / "model.onnx")
    shutil.copyfile(pt / "text_encoder" / "config.json", onnx_dir / "text_encoder" / "config.json")
    shutil.copyfile(pt / "vae" / "config.json", onnx_dir / "vae_decoder" / "config.json")
    for name in ("model.onnx", "model.onnx_data", "config.json"):
        link(unet_onnx / name, onnx_dir / "unet" / name)
    for name in ("model_index.json", "tokenizer", "scheduler"):
        src, dst = tiny.ONNX_DIR / name, onnx_dir / name
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
