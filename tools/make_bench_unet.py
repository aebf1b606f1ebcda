#!/usr/bin/env python3
"""Build the random-weight UNet with Stable Diffusion 1.5's layout used by the ToMe benchmark.

UNet2DConditionModel with SD 1.5's config (the SD 1.5 down/up block types,
layers_per_block 2, cross_attention_dim 768, attention_head_dim 8,
sample_size 64, ...) except block_out_channels, which defaults to the
reduced (128, 256, 512, 512); `--channels 320,640,1280,1280` gives SD 1.5's
full size. Weights are diffusers' random init after torch.manual_seed(SEED).

Writes
  DIR/torch/                  unet.save_pretrained() (config.json + safetensors),
                              loaded by tools/bench_unet.py's torch runs
  DIR/onnx/unet/model.onnx    torch.onnx.export(unet, dynamo=False, opset 17) of the
  DIR/onnx/unet/model.onnx_data   module itself (node names carry module paths such as
                              /down_blocks.0/attentions.0/transformer_blocks.0/attn1/...),
                              weights as external data in one file next to it
  DIR/onnx/unet/config.json   copy of the PyTorch config (informational)

ONNX inputs/outputs as models/tiny/unet (see tools/README.md): sample float32
[batch_size, 4, height, width], timestep int64 scalar (rank 0),
encoder_hidden_states float32 [batch_size, sequence_length, 768] -> out_sample
float32 [batch_size, 4, height, width].

The graph is traced at a latent divisible by 8 (16x16 by default), as SD 1.5
exports are, so the up-sampling Resize nodes use a fixed scale factor 2 and
the graph needs latents divisible by 2**3 = 8 (64x64 and 96x96 are).

Afterwards ONNX Runtime (CPU) and torch are compared on one batch-2 input at
the check latent (16x16): relative L2 error must be below 1e-4.

Usage (from the repository root; takes a few minutes on 2 cores):
  nice tools/.venv/bin/python tools/make_bench_unet.py [--channels 128,256,512,512] [--out target/bench/unet-128]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SEED = 20250101
OPSET = 17

# Stable Diffusion 1.5's unet/config.json, less block_out_channels (set per run).
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    # diffusers' historical naming: for UNet2DConditionModel this is the number of heads.
    attention_head_dim=8,
)


# Stable Diffusion XL base 1.0's unet/config.json, less block_out_channels, the head
# counts (which follow the channels: 64 per head, as SDXL's 5/10/20 at 320/640/1280) and
# transformer_layers_per_block (set per run; SDXL: 1, 2, 10).
SDXL_UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # pooled text 1280 + 6 x 256
)
SDXL_TEXT_EMBEDS = 1280


def parse_pair(s: str) -> tuple[int, int]:
    a, b = s.split(",")
    return int(a), int(b)


def build_unet(channels: tuple[int, ...], layout: str = "sd15", layers: tuple[int, ...] = (1, 2, 10)):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED)
    if layout == "sdxl":
        heads = tuple(c // 64 for c in channels)
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG, block_out_channels=channels, attention_head_dim=heads,
                                    transformer_layers_per_block=layers)
    else:
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG, block_out_channels=channels)
    return unet.eval()


def is_xl(unet) -> bool:
    return unet.config.addition_embed_type == "text_time"


def added_inputs(unet, batch: int, hw: tuple[int, int], g) -> dict:
    """SDXL's added conditions for a batch: random pooled text, time_ids of an 8h x 8w image."""
    if not is_xl(unet):
        return {}
    h, w = hw
    return {"text_embeds": torch.randn(batch, SDXL_TEXT_EMBEDS, generator=g),
            "time_ids": torch.tensor([[8.0 * h, 8.0 * w, 0.0, 0.0, 8.0 * h, 8.0 * w]] * batch)}


def export_unet(unet, out_dir: Path, trace_hw: tuple[int, int]) -> Path:
    """Export to out_dir/model.onnx + out_dir/model.onnx_data (one external-data file)."""
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".export-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    g = torch.Generator().manual_seed(0)
    h, w = trace_hw
    sample = torch.randn(2, 4, h, w, generator=g)
    ehs = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    timestep = torch.tensor(981, dtype=torch.int64)
    added = added_inputs(unet, 2, trace_hw, g)
    t0 = time.perf_counter()
    # Models over 2 GB (the full 320-channel layout) get external data from torch
    # itself (one file per tensor); either way we re-save below as one file.
    args, names = (sample, timestep, ehs), ["sample", "timestep", "encoder_hidden_states"]
    axes = {
        "sample": {0: "batch_size", 2: "height", 3: "width"},
        "timestep": {},
        "encoder_hidden_states": {0: "batch_size", 1: "sequence_length"},
        "out_sample": {0: "batch_size", 2: "height", 3: "width"},
    }
    if added:
        # SDXL: the added conditions as graph inputs of their own, as optimum exports them.
        # The UNet's own forward is replaced (not wrapped in a module), so node names keep
        # diffusers' module paths (/down_blocks.1/attentions.0/...), which tomex's cut reads.
        inner = unet.forward

        def forward(sample, timestep, encoder_hidden_states, text_embeds, time_ids):
            return inner(sample, timestep, encoder_hidden_states, return_dict=False,
                         added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids})[0]

        unet.forward = forward
        args = args + (added["text_embeds"], added["time_ids"])
        names += ["text_embeds", "time_ids"]
        axes.update({"text_embeds": {0: "batch_size"}, "time_ids": {0: "batch_size"}})
    try:
        torch.onnx.export(
            unet,
            args,
            str(tmp / "model.onnx"),
            kwargs={} if added else {"return_dict": False},
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=names,
            output_names=["out_sample"],
            dynamic_axes=axes,
        )
    finally:
        if added:
            del unet.forward  # the class's forward again
    print(f"torch.onnx.export: {time.perf_counter() - t0:.1f} s")
    model = onnx.load(str(tmp / "model.onnx"), load_external_data=True)
    path = out_dir / "model.onnx"
    for p in (path, out_dir / "model.onnx_data"):
        p.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx_data",
        size_threshold=1024,
    )
    del model
    shutil.rmtree(tmp)
    return path


def describe_onnx(path: Path) -> str:
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def fmt(v):
        t = v.type.tensor_type
        dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
        return f"{v.name}:{onnx.TensorProto.DataType.Name(t.elem_type).lower()}[{','.join(dims)}]"

    ins = ", ".join(fmt(v) for v in m.graph.input)
    outs = ", ".join(fmt(v) for v in m.graph.output)
    n_attn = sum(1 for n in m.graph.node if "/transformer_blocks." in n.name and n.op_type == "Softmax")
    data = path.with_name("model.onnx_data")
    return (f"{path} ({path.stat().st_size / 1e6:.2f} MB graph + {data.stat().st_size / 1e6:.1f} MB "
            f"{data.name}): {ins} -> {outs}; {len(m.graph.node)} nodes, "
            f"{n_attn} attention softmaxes in transformer blocks")


def check_ort_vs_torch(unet, path: Path, hw: tuple[int, int], threads: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    h, w = hw
    x = torch.randn(2, 4, h, w, generator=g)
    e = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    t = 500
    added = added_inputs(unet, 2, hw, g)
    with torch.no_grad():
        ref = unet(x, torch.tensor(t), encoder_hidden_states=e, return_dict=False,
                   added_cond_kwargs=added or None)[0].numpy()
    feed = {"sample": x.numpy(), "timestep": np.array(t, np.int64), "encoder_hidden_states": e.numpy()}
    feed.update({k: v.numpy() for k, v in added.items()})
    out = sess.run(None, feed)[0]
    rel = float(np.linalg.norm((out - ref).ravel()) / np.linalg.norm(ref.ravel()))
    print(f"check b=2 latent {h}x{w}: |out| std={ref.std():.4f} max={np.abs(ref).max():.4f}; "
          f"ORT vs torch max|diff|={np.abs(out - ref).max():.3e} relative L2={rel:.3e}")
    return rel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", choices=("sd15", "sdxl"), default="sd15",
                    help="sd15 (default) or sdxl: SDXL base's config (added text_embeds/time_ids inputs)")
    ap.add_argument("--channels", default=None,
                    help="block_out_channels (default 128,256,512,512; SD 1.5: 320,640,1280,1280; "
                         "sdxl default 128,256,512, SDXL: 320,640,1280)")
    ap.add_argument("--transformer-layers", default="1,2,10",
                    help="sdxl: transformer_layers_per_block (default SDXL's 1,2,10)")
    ap.add_argument("--out", default=None,
                    help="output directory (default target/bench/unet-<first channel count>)")
    ap.add_argument("--trace-latent", default="16,16", help="H,W traced by the exporter (divisible by 8)")
    ap.add_argument("--check-latent", default="16,16", help="H,W of the ORT-vs-torch check")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-check", action="store_true")
    args = ap.parse_args()

    default_channels = "128,256,512" if args.layout == "sdxl" else "128,256,512,512"
    channels = tuple(int(c) for c in (args.channels or default_channels).split(","))
    levels = 3 if args.layout == "sdxl" else 4
    if len(channels) != levels:
        sys.exit(f"--channels: the {args.layout} layout has {levels} levels")
    layers = tuple(int(c) for c in args.transformer_layers.split(","))
    prefix = "unet-sdxl" if args.layout == "sdxl" else "unet"
    out = Path(args.out) if args.out else ROOT / "target" / "bench" / f"{prefix}-{channels[0]}"
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    unet = build_unet(channels, args.layout, layers)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"UNet2DConditionModel block_out_channels={channels}: {n_params / 1e6:.1f} M parameters "
          f"({n_params * 4 / 1e6:.0f} MB float32), built in {time.perf_counter() - t0:.1f} s")

    unet.save_pretrained(str(out / "torch"))
    print(f"wrote {out / 'torch'}")
    path = export_unet(unet, out / "onnx" / "unet", parse_pair(args.trace_latent))
    shutil.copyfile(out / "torch" / "config.json", out / "onnx" / "unet" / "config.json")
    (out / "bench_unet.json").write_text(json.dumps({
        "block_out_channels": list(channels), "seed": SEED, "opset": OPSET,
        "trace_latent": list(parse_pair(args.trace_latent)),
        "torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
    }, indent=2) + "\n")
    print(describe_onnx(path))

    if not args.skip_check:
        rel = check_ort_vs_torch(unet, path, parse_pair(args.check_latent), args.threads)
        if not rel < 1e-4:
            sys.exit(f"ORT vs torch relative L2 {rel:.3e} >= 1e-4")
        print("check ok (relative L2 < 1e-4)")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
