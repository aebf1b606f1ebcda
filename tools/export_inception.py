#!/usr/bin/env python3
"""Export pytorch-fid's FID Inception-v3 to ONNX for tomex (`tomex fid --inception MODEL`).

The graph takes `images`, float32 [N, 3, 299, 299], already resized and scaled to [-1, 1]
(pytorch-fid's `resize_input` and `normalize_input` steps stay out of the graph: tomex does
them in Rust, see src/metrics/preprocess.rs), and has four outputs, float32 [N, D]: the
globally average-pooled outputs of pytorch-fid's four blocks, which is what
`pytorch_fid.fid_score.get_activations` computes for each `--dims`:

  features_64    block 0 (first max pooling)        = --dims 64
  features_192   block 1 (second max pooling)       = --dims 192
  features_768   block 2 (input of the aux classifier) = --dims 768
  features_2048  block 3 (final average pooling)    = --dims 2048

Network variants:
  --weights PTH        pytorch-fid's network (pytorch_fid.inception.InceptionV3, built by its own
                       code) with the user's `pt_inception-2015-12-05-6726825d.pth`.
  --random-seed N      the same architecture with random weights (about 95 MB; for checks of
                       the export, not for committing).
  --tiny --random-seed N
                       NOT Inception: a slim random network with the same input and the same
                       four outputs (built from the same ops: BasicConv2d = conv + batch norm +
                       ReLU, max pooling, average pooling without padded zeros, concatenation,
                       adaptive average pooling), about 1.5 MB. tomex treats the network as a
                       black box with four outputs, so this variant tests tomex's code; the
                       committed tests/fixtures/inception_tiny.onnx is made with
                       `--tiny --random-seed 0`.

Usage (from the repository root):
  tools/.venv/bin/python tools/export_inception.py --weights pt_inception-2015-12-05-6726825d.pth \
      --out models/inception/pt_inception.onnx
  tools/.venv/bin/python tools/export_inception.py --tiny --random-seed 0 \
      --out tests/fixtures/inception_tiny.onnx

tools/golden_fid.py imports `build_blocks` and `FeatureHeads` from here so that its golden
features come from pytorch-fid's own forward (InceptionV3.forward + get_activations) over the
very blocks exported.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import pytorch_fid.inception as pfi
from torchvision.models.inception import BasicConv2d

DIMS = (64, 192, 768, 2048)
OUTPUT_NAMES = [f"features_{d}" for d in DIMS]


def fid_inception_blocks(weights: str | None, seed: int | None) -> nn.ModuleList:
    """pytorch-fid's `InceptionV3(output_blocks=[0, 1, 2, 3])` blocks, built by pytorch-fid's own
    code; its weight download is replaced by the local file (or by random weights)."""

    def load(_url, progress=True):  # stands in for load_state_dict_from_url
        if weights is not None:
            return torch.load(weights, map_location="cpu", weights_only=True)
        torch.manual_seed(seed)
        net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = pfi.FIDInceptionE_1(1280)
        net.Mixed_7c = pfi.FIDInceptionE_2(2048)
        randomize_batch_norms(net, seed)
        return net.state_dict()

    saved = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = load
    try:
        model = pfi.InceptionV3([0, 1, 2, 3], resize_input=False, normalize_input=False)
    finally:
        pfi.load_state_dict_from_url = saved
    return model.blocks


class _AvgPoolNoPad(nn.Module):
    """Average pooling 3x3/1 that ignores padded zeros, as pytorch-fid's FIDInception blocks."""

    def forward(self, x):
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _MaxPool3(nn.Module):
    def forward(self, x):
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class _Branches(nn.Module):
    """Concatenation of branches, each a sequence of modules."""

    def __init__(self, *branches):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*b) for b in branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


def tiny_blocks(seed: int) -> nn.ModuleList:
    """A slim random network with pytorch-fid's four block outputs (64, 192, 768, 2048 channels)."""
    torch.manual_seed(seed)
    blocks = nn.ModuleList(
        [
            nn.Sequential(
                BasicConv2d(3, 8, kernel_size=3, stride=2),
                BasicConv2d(8, 16, kernel_size=3, stride=2),
                BasicConv2d(16, 64, kernel_size=3, padding=1),
                nn.MaxPool2d(kernel_size=3, stride=2),
            ),
            nn.Sequential(
                BasicConv2d(64, 192, kernel_size=1),
                nn.MaxPool2d(kernel_size=3, stride=2),
            ),
            nn.Sequential(
                _Branches(
                    [BasicConv2d(192, 256, kernel_size=1)],
                    [_AvgPoolNoPad(), BasicConv2d(192, 512, kernel_size=3, padding=1, groups=16)],
                ),
                nn.MaxPool2d(kernel_size=3, stride=2),
            ),
            nn.Sequential(
                _Branches(
                    [BasicConv2d(768, 1024, kernel_size=1, groups=8)],
                    [_MaxPool3(), BasicConv2d(768, 1024, kernel_size=1, groups=8)],
                ),
                nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            ),
        ]
    )
    randomize_batch_norms(blocks, seed)
    return blocks


def randomize_batch_norms(net: nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine terms, so that the export's folding of batch
    norms is exercised (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))


def build_blocks(args) -> nn.ModuleList:
    if args.tiny:
        if args.random_seed is None:
            sys.exit("--tiny needs --random-seed")
        return tiny_blocks(args.random_seed)
    if (args.weights is None) == (args.random_seed is None):
        sys.exit("give exactly one of --weights PTH and --random-seed N")
    return fid_inception_blocks(args.weights, args.random_seed)


class FeatureHeads(nn.Module):
    """The four blocks in sequence; each output globally average-pooled to [N, D], exactly as
    pytorch_fid.fid_score.get_activations pools a block's output (adaptive_avg_pool2d to 1x1)."""

    def __init__(self, blocks: nn.ModuleList):
        super().__init__()
        self.blocks = blocks

    def forward(self, x):
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(F.adaptive_avg_pool2d(x, output_size=(1, 1)).flatten(1))
        return tuple(outs)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--random-seed", type=int, help="random weights from this seed (tests)")
    p.add_argument("--tiny", action="store_true", help="slim test network (not Inception), same outputs")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17)
    return p


def export(blocks: nn.ModuleList, out: str, opset: int) -> None:
    heads = FeatureHeads(blocks).eval()
    example = torch.rand(2, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        torch.onnx.export(
            heads,
            (example,),
            out,
            input_names=["images"],
            output_names=OUTPUT_NAMES,
            dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    # Check the export against torch on the example.
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = sess.run(OUTPUT_NAMES, {"images": example.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in heads(example)]
    for name, g, w in zip(OUTPUT_NAMES, got, want):
        err = float(np.max(np.abs(g - w)))
        print(f"{name}: shape {g.shape}, max |onnx - torch| = {err:.3g}")
        if err > 1e-4 * max(1.0, float(np.max(np.abs(w)))):
            sys.exit(f"export check failed for {name}")


def main() -> None:
    args = parser().parse_args()
    blocks = build_blocks(args)
    export(blocks.eval(), args.out, args.opset)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
