#!/usr/bin/env python3
"""Golden files for tomex's Token Merging (ToMe) from tomesd 0.1.3 + diffusers (torch, CPU, float32).

Writes (see tools/README.md, section "golden/tome/", for the formats):
  golden/tome/ops/      tomesd.merge.bipartite_soft_matching_random2d(no_rand=True) on random
                        metrics: inputs, merge(x), unmerge(y) and every index tensor
  golden/tome/unet/     single evaluations of the tiny UNet (tools/.work/tiny_pt/unet) patched
                        with tomesd.apply_patch(unet, ...), plus the unpatched outputs
  golden/tome/images/   whole StableDiffusionPipeline generations with tomesd.apply_patch(pipe, ...)
                        plus the unpatched generation of each case

Self-checks (the script exits non-zero when one fails):
  * a line-by-line NumPy re-implementation of the documented algorithm (stable partition order,
    sequential float32 summation) reproduces tomesd's merge/unmerge bit for bit on every ops case;
  * tomesd with torch's default argsort (not stable) and with a stable argsort give the same
    merge/unmerge up to the order of the dst rows (bitwise);
  * apply_patch replaces all 7 BasicTransformerBlocks; with r = 0 (or nothing to merge) the
    patched UNet is bit-identical to the unpatched one; with r > 0 it differs (rel. L2 > 1e-3).

Usage (from the repository root):
  tools/.venv/bin/python tools/golden_tome.py                 # everything
  tools/.venv/bin/python tools/golden_tome.py --only ops unet # some parts
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
PT_DIR = ROOT / "tools" / ".work" / "tiny_pt"
OUT = ROOT / "golden" / "tome"
GOLDEN_IMAGES = ROOT / "golden" / "images"

GUIDANCE = 7.5
TIMESTEP = 500
TIE_EPS = 1e-5  # minimum gap between similarity scores that decide the ops results
UNET_GAP_MIN = 1e-4  # same for the merges inside the UNet cases (see gen_unet)

# --------------------------------------------------------------------------------------------
# helpers


def fail(msg: str) -> None:
    print(f"FAILED: {msg}")
    sys.exit(1)


def dumps(obj) -> str:
    """JSON with 2-space indent, but innermost lists of numbers on one line."""
    s = json.dumps(obj, indent=2, ensure_ascii=False)
    return re.sub(r"\[\s*([-0-9.eE+,\s]*?)\s*\]",
                  lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",") if v.strip()) + "]", s) + "\n"


def write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(dumps(obj))


def save_f32(path: Path, t) -> list[int]:
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    a = np.ascontiguousarray(a, dtype="<f4")
    a.tofile(path)
    return list(a.shape)


def max_ratio(sx: int, sy: int) -> float:
    return 1 - 1 / (sx * sy)


@contextlib.contextmanager
def stable_argsort():
    """Force torch.Tensor.argsort to stable=True (tomesd calls the method form)."""
    orig = torch.Tensor.argsort

    def argsort(self, dim=-1, descending=False, stable=False):  # noqa: ARG001
        return torch.argsort(self, dim=dim, descending=descending, stable=True)

    torch.Tensor.argsort = argsort
    try:
        yield
    finally:
        torch.Tensor.argsort = orig


def canonical_partition(h: int, w: int, sx: int, sy: int) -> tuple[np.ndarray, np.ndarray]:
    """(src token indices, dst token indices), both ascending (the stable order)."""
    hsy, wsx = h // sy, w // sx
    is_dst = np.zeros((h, w), dtype=bool)
    is_dst[0:hsy * sy:sy, 0:wsx * sx:sx] = True
    flat = is_dst.reshape(-1)
    return np.nonzero(~flat)[0], np.nonzero(flat)[0]


def score_gaps(metric: np.ndarray, a_idx: np.ndarray, b_idx: np.ndarray) -> tuple[float, float]:
    """(min gap between sorted best-scores, min gap best vs second-best dst) over the batch, float64."""
    m = metric.astype(np.float64)
    m = m / np.linalg.norm(m, axis=-1, keepdims=True)
    s = m[:, a_idx] @ m[:, b_idx].transpose(0, 2, 1)  # [B, src, dst]
    best = np.sort(s, axis=-1)
    node_max = best[..., -1]
    g1 = float(np.min(np.diff(np.sort(node_max, axis=-1), axis=-1))) if node_max.shape[-1] > 1 else math.inf
    g2 = float(np.min(best[..., -1] - best[..., -2])) if s.shape[-1] > 1 else math.inf
    return g1, g2


def decisive_gaps(metric: np.ndarray, a_idx: np.ndarray, b_idx: np.ndarray, r: int):
    """The similarity gaps that decide a merge (float64, min over the batch), None where nothing is
    decided: (best score of the r-th merged src - best of the first unmerged src,
    best - second-best dst score over the merged src tokens)."""
    if r <= 0:
        return None, None
    m = metric.astype(np.float64)
    m = m / np.linalg.norm(m, axis=-1, keepdims=True)
    s = m[:, a_idx] @ m[:, b_idx].transpose(0, 2, 1)  # [B, src, dst]
    node_max = s.max(-1)
    order = np.argsort(-node_max, axis=-1, kind="stable")
    srt = np.take_along_axis(node_max, order, axis=-1)
    g_set = float(np.min(srt[:, r - 1] - srt[:, r])) if r < len(a_idx) else None
    g_dst = None
    if len(b_idx) > 1:
        top2 = np.sort(s, axis=-1)[..., -2:]
        d = top2[..., 1] - top2[..., 0]  # [B, src]
        g_dst = float(np.min(np.take_along_axis(d, order[:, :r], axis=-1)))
    return g_set, g_dst


# --------------------------------------------------------------------------------------------
# 1. ops


# (h, w, sx, sy, ratio or "max", B)
OPS_CASES = [
    (8, 8, 2, 2, 0.5, 1),
    (8, 8, 2, 2, "max", 2),
    (8, 8, 3, 3, 0.3, 2),
    (8, 8, 3, 2, 0.3, 2),
    (8, 8, 1, 2, "max", 2),
    (6, 10, 2, 2, 0.5, 2),
    (6, 10, 3, 3, "max", 1),
    (6, 10, 1, 2, 0.3, 2),
    (6, 10, 2, 1, 0.9, 2),
    (6, 10, 2, 2, 0.95, 1),
    (7, 5, 2, 2, 0.3, 1),
    (7, 5, 2, 2, "max", 2),
    (7, 5, 3, 2, 0.5, 2),
    (7, 5, 1, 2, 0.1, 2),
    (7, 5, 2, 1, 0.3, 2),
    (9, 9, 3, 3, 0.5, 2),
    (9, 9, 3, 3, "max", 1),
    (9, 9, 2, 2, 0.1, 2),
    (9, 9, 2, 1, 0.5, 1),
    (9, 9, 3, 2, 0.95, 2),
    (4, 6, 2, 2, 0.5, 2),
    (4, 6, 3, 2, "max", 2),
    (4, 6, 3, 3, 0.3, 1),
    (4, 6, 1, 2, 0.9, 2),
    (3, 3, 2, 2, 0.5, 2),
    (3, 3, 3, 3, "max", 2),
    (3, 3, 2, 2, 0.1, 1),
]
OPS_C = 8


def bsm_indices(m, u) -> dict:
    cv = inspect.getclosurevars(u).nonlocals
    return {k: cv[k] for k in ("a_idx", "b_idx", "unm_idx", "src_idx", "dst_idx", "r")}


def np_reference(x: np.ndarray, h: int, w: int, sx: int, sy: int, r: int, y: np.ndarray | None):
    """The algorithm as documented in tools/README.md, in the stable order, float32 throughout
    for the values (the similarity only decides indices; it is computed in float64 here)."""
    B, N, C = x.shape
    a_idx, b_idx = canonical_partition(h, w, sx, sy)
    if r <= 0:
        return x.copy(), (y.copy() if y is not None else None)
    m = x.astype(np.float64)
    m = m / np.linalg.norm(m, axis=-1, keepdims=True)
    scores = m[:, a_idx] @ m[:, b_idx].transpose(0, 2, 1)
    node_idx = scores.argmax(-1)
    node_max = scores.max(-1)
    r = min(r, len(a_idx))
    merged, unmerged = [], []
    for bi in range(B):
        edge = np.argsort(-node_max[bi], kind="stable")
        unm, src = edge[r:], edge[:r]
        dst_of = node_idx[bi][src]
        xs, xd = x[bi][a_idx], x[bi][b_idx]
        acc = xd.astype(np.float32).copy()
        cnt = np.ones(len(b_idx), dtype=np.float32)
        for k in range(r):  # scatter_reduce(mean, include_self): sequential in merge order
            acc[dst_of[k]] = acc[dst_of[k]] + xs[src[k]]
            cnt[dst_of[k]] += 1
        acc = acc / cnt[:, None]
        merged.append(np.concatenate([xs[unm], acc], axis=0))
        if y is not None:
            nu = len(unm)
            yu, yd = y[bi][:nu], y[bi][nu:]
            out = np.zeros((N, C), dtype=np.float32)
            out[b_idx] = yd
            out[a_idx[unm]] = yu
            out[a_idx[src]] = yd[dst_of]
            unmerged.append(out)
    return np.stack(merged), (np.stack(unmerged) if y is not None else None)


def gen_ops() -> None:
    from tomesd.merge import bipartite_soft_matching_random2d as bsm

    d = OUT / "ops"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    index = []
    for ci, (h, w, sx, sy, ratio_kind, B) in enumerate(OPS_CASES):
        N = h * w
        ratio = max_ratio(sx, sy) if ratio_kind == "max" else float(ratio_kind)
        r = int(N * ratio)
        a_c, b_c = canonical_partition(h, w, sx, sy)
        num_src, num_dst = len(a_c), len(b_c)
        r_eff = min(r, num_src) if r > 0 else 0
        # draw x until no near-ties decide the result
        seed = 1000 + 100 * ci
        while True:
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(B, N, OPS_C, generator=g)
            g1, g2 = score_gaps(x.numpy(), a_c, b_c)
            if g1 >= TIE_EPS and g2 >= TIE_EPS:
                break
            seed += 1
        rk = "max" if ratio_kind == "max" else f"{ratio:g}"
        name = f"{ci:02d}_b{B}_{h}x{w}_s{sx}x{sy}_r{rk}"

        m_t, u_t = bsm(x, w, h, sx, sy, r, no_rand=True)
        with stable_argsort():
            m_s, u_s = bsm(x, w, h, sx, sy, r, no_rand=True)
        merged_t, merged_s = m_t(x), m_s(x)
        M = N - r_eff
        assert merged_s.shape == (B, M, OPS_C), (name, merged_s.shape)
        y = torch.randn(B, M, OPS_C, generator=g)  # canonical (stable) order
        unmerged_s = u_s(y)

        entry = {"name": name, "B": B, "h": h, "w": w, "N": N, "C": OPS_C, "sx": sx, "sy": sy,
                 "ratio": ratio, "ratio_kind": "max" if ratio_kind == "max" else
                 ("above_max" if ratio > max_ratio(sx, sy) else "plain"),
                 "r": r, "r_eff": r_eff, "num_src": num_src, "num_dst": num_dst, "seed": seed,
                 "min_gap_sorted_best": g1, "min_gap_best_second": g2 if num_dst > 1 else None}
        files = {"x": f"{name}.x.f32", "merged": f"{name}.merged.f32", "y": f"{name}.y.f32",
                 "unmerged": f"{name}.unmerged.f32"}
        save_f32(d / files["x"], x)
        save_f32(d / files["merged"], merged_s)
        save_f32(d / files["y"], y)
        save_f32(d / files["unmerged"], unmerged_s)

        # NumPy re-implementation of the documented algorithm: must be bit-exact
        ref_m, ref_u = np_reference(x.numpy(), h, w, sx, sy, r, y.numpy())
        if not np.array_equal(ref_m, merged_s.numpy()):
            fail(f"ops {name}: NumPy reference merge != tomesd (max {np.abs(ref_m - merged_s.numpy()).max()})")
        if not np.array_equal(ref_u, unmerged_s.numpy()):
            fail(f"ops {name}: NumPy reference unmerge != tomesd")

        if r > 0:
            it, is_ = bsm_indices(m_t, u_t), bsm_indices(m_s, u_s)
            assert it["r"] == r_eff and is_["r"] == r_eff
            a_s, b_s = is_["a_idx"].reshape(-1), is_["b_idx"].reshape(-1)
            a_t, b_t = it["a_idx"].reshape(-1), it["b_idx"].reshape(-1)
            if not (np.array_equal(a_s.numpy(), a_c) and np.array_equal(b_s.numpy(), b_c)):
                fail(f"ops {name}: stable tomesd partition != canonical partition")
            # torch order vs stable order: same tokens, dst rows permuted
            perm = torch.argsort(b_t)  # torch dst row i -> canonical row b_t[i]'s rank
            rank = torch.empty_like(b_t)
            rank[perm] = torch.arange(len(b_t))
            nu = num_src - r_eff
            if not torch.equal(merged_t[:, :nu], merged_s[:, :nu]) or \
                    not torch.equal(merged_t[:, nu:], merged_s[:, nu:][:, rank]):
                fail(f"ops {name}: torch-order merge is not a dst-row permutation of the stable one")
            y_t = torch.cat([y[:, :nu], y[:, nu:][:, rank]], dim=1)
            if not torch.equal(u_t(y_t), unmerged_s):
                fail(f"ops {name}: torch-order unmerge differs")
            files["merged_torch_order"] = f"{name}.merged_torch_order.f32"
            save_f32(d / files["merged_torch_order"], merged_t)

            def tok(ix):  # [B, k, 1] positions in a_idx -> token indices [B][k]
                return a_s[ix[..., 0]].tolist()

            entry["indices"] = {
                "a_idx": a_s.tolist(), "b_idx": b_s.tolist(),
                "unm_idx": is_["unm_idx"][..., 0].tolist(), "src_idx": is_["src_idx"][..., 0].tolist(),
                "dst_idx": is_["dst_idx"][..., 0].tolist(),
                "unm_tokens": tok(is_["unm_idx"]), "src_tokens": tok(is_["src_idx"]),
                "dst_tokens": b_s[is_["dst_idx"][..., 0]].tolist(),
            }
            entry["torch_order"] = {
                "a_idx": a_t.tolist(), "b_idx": b_t.tolist(),
                "unm_idx": it["unm_idx"][..., 0].tolist(), "src_idx": it["src_idx"][..., 0].tolist(),
                "dst_idx": it["dst_idx"][..., 0].tolist(),
            }
        else:
            if not (torch.equal(merged_s, x) and torch.equal(unmerged_s, y)):
                fail(f"ops {name}: r = 0 is not the identity")
            entry["indices"] = None
            entry["torch_order"] = None
        entry["files"] = files
        index.append(entry)
        print(f"ops {name}: r={r} r_eff={r_eff} src={num_src} dst={num_dst} gaps={g1:.2e},{g2:.2e}")
    write_json(d / "index.json", index)
    print(f"wrote {len(index)} ops cases to {d.relative_to(ROOT)}")


# --------------------------------------------------------------------------------------------
# 2. UNet

TARGETS = {
    "self": ("self_attn",), "self+cross": ("self_attn", "cross_attn"), "self+mlp": ("self_attn", "mlp"),
    "cross": ("cross_attn",), "cross+mlp": ("cross_attn", "mlp"),
    "self+cross+mlp": ("self_attn", "cross_attn", "mlp"), "none": (),
}
LATENTS = [(8, 8), (10, 6), (7, 9), (12, 12)]
LATENT_SEEDS = {(8, 8): 47603, (10, 6): 17925, (7, 9): 22847, (12, 12): 83283}  # see gen_unet

# (targets, sx, sy, ratio or "max", (h, w), max_downsample) ; batch 2, use_rand False
UNET_CASES = [
    ("self", 2, 2, 0.5, (8, 8), 1),
    ("self", 2, 2, 0.3, (10, 6), 1),
    ("self", 3, 3, "max", (12, 12), 2),
    ("self", 1, 2, 0.1, (7, 9), 2),
    ("self", 2, 1, 0.5, (8, 8), 2),
    ("self", 3, 3, 0.5, (10, 6), 1),
    ("self", 2, 2, "max", (8, 8), 2),
    ("self", 2, 2, 0.1, (12, 12), 1),
    ("self", 2, 2, 0.9, (7, 9), 1),          # above the max: r capped at the src count
    ("self+cross", 2, 2, 0.5, (8, 8), 1),
    ("self+cross", 3, 3, 0.3, (10, 6), 2),
    ("self+cross", 1, 2, "max", (12, 12), 1),
    ("self+cross", 2, 1, 0.1, (7, 9), 1),
    ("self+cross", 2, 2, "max", (7, 9), 4),
    ("self+cross", 2, 2, 0.3, (7, 9), 2),
    ("self+mlp", 2, 2, 0.3, (12, 12), 1),
    ("self+mlp", 3, 3, 0.5, (7, 9), 1),
    ("self+mlp", 1, 2, 0.3, (8, 8), 2),
    ("self+mlp", 2, 1, "max", (10, 6), 2),
    ("cross", 2, 2, 0.5, (10, 6), 1),
    ("cross", 3, 3, 0.1, (8, 8), 2),
    ("cross", 1, 2, 0.5, (7, 9), 1),
    ("cross", 2, 1, 0.3, (12, 12), 2),
    ("cross+mlp", 2, 2, 0.1, (12, 12), 2),
    ("cross+mlp", 3, 3, "max", (8, 8), 1),
    ("cross+mlp", 1, 2, 0.3, (10, 6), 2),
    ("cross+mlp", 2, 1, 0.5, (7, 9), 2),
    ("self+cross+mlp", 2, 2, "max", (10, 6), 2),
    ("self+cross+mlp", 3, 3, 0.3, (7, 9), 2),
    ("self+cross+mlp", 1, 2, 0.5, (12, 12), 2),
    ("self+cross+mlp", 2, 1, 0.1, (8, 8), 1),
    ("self+cross+mlp", 2, 2, 0.5, (12, 12), 4),
    ("self+cross+mlp", 3, 3, "max", (12, 12), 2),
    ("self+cross+mlp", 2, 2, 0.3, (8, 8), 4),
    # r = 0 everywhere: bit-identical to the unpatched UNet
    ("self", 2, 2, 0.0, (8, 8), 1),
    ("self+cross+mlp", 2, 2, 0.01, (10, 6), 2),  # int(60 * 0.01) = 0, int(15 * 0.01) = 0
    ("none", 2, 2, 0.5, (7, 9), 2),              # merges nothing
]
# batch 1 with use_rand=True: tomesd forces use_rand off for odd batches (the extra case)
UNET_ODD_BATCH_CASE = ("self+cross", 2, 2, 0.5, (8, 8), 2)

BLOCK_NAMES = [
    "down_blocks.0.attentions.0.transformer_blocks.0",
    "down_blocks.1.attentions.0.transformer_blocks.0",
    "mid_block.attentions.0.transformer_blocks.0",
    "up_blocks.1.attentions.0.transformer_blocks.0",
    "up_blocks.1.attentions.1.transformer_blocks.0",
    "up_blocks.2.attentions.0.transformer_blocks.0",
    "up_blocks.2.attentions.1.transformer_blocks.0",
]


class MergeRecorder:
    """Wraps tomesd.patch.compute_merge to record, per block call, what tomesd decided."""

    def __init__(self, unet):
        import tomesd.patch

        self.mod = tomesd.patch
        self.orig = tomesd.patch.compute_merge
        self.log: list[dict] = []
        self.current = None
        self.hooks = []
        for name, module in unet.named_modules():
            if name in BLOCK_NAMES:
                self.hooks.append(module.register_forward_pre_hook(self._pre(name)))
        assert len(self.hooks) == len(BLOCK_NAMES)

    def _pre(self, name):
        def hook(_m, _a):
            self.current = name
        return hook

    def __enter__(self):
        orig = self.orig

        def compute_merge(x, tome_info):
            res = orig(x, tome_info)
            H0, W0 = tome_info["size"]
            a = tome_info["args"]
            N = x.shape[1]
            ds = int(math.ceil(math.sqrt(H0 * W0 // N)))
            e = {"block": self.current, "N": N, "ds": ds, "tome": ds <= a["max_downsample"]}
            if e["tome"]:
                w, h = int(math.ceil(W0 / ds)), int(math.ceil(H0 / ds))
                r = int(N * a["ratio"])
                a_c, b_c = canonical_partition(h, w, a["sx"], a["sy"])
                r_eff = min(r, len(a_c)) if r > 0 else 0
                g_set, g_dst = decisive_gaps(x.detach().numpy(), a_c, b_c, r_eff)
                e.update({"w": w, "h": h, "r": r, "r_eff": r_eff, "num_src": len(a_c), "num_dst": len(b_c),
                          "gap_merge_boundary": g_set, "gap_dst_choice": g_dst})
            self.log.append(e)
            return res

        self.mod.compute_merge = compute_merge
        return self

    def __exit__(self, *exc):
        self.mod.compute_merge = self.orig
        for hk in self.hooks:
            hk.remove()


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


class DocToMe:
    """An independent re-implementation of ToMe in the UNet, written from the description in
    tools/README.md (not from tomesd's code paths): stable partition order, float64 similarity,
    sequential float32 mean.  Used as a check that the documentation says what tomesd does."""

    def __init__(self, unet, H0: int, W0: int, kw: dict):
        from diffusers.models.attention import BasicTransformerBlock

        self.cls, self.unet, self.H0, self.W0, self.kw = BasicTransformerBlock, unet, H0, W0, kw

    def merge_fns(self, x: torch.Tensor):
        kw, (B, N, _) = self.kw, x.shape
        ds = int(math.ceil(math.sqrt(self.H0 * self.W0 // N)))
        r = int(N * kw["ratio"])
        if ds > kw["max_downsample"] or r <= 0:
            return None
        w, h = -(-self.W0 // ds), -(-self.H0 // ds)
        a_idx, b_idx = canonical_partition(h, w, kw["sx"], kw["sy"])
        r = min(r, len(a_idx))
        m = x.detach().double().numpy()
        m = m / np.linalg.norm(m, axis=-1, keepdims=True)
        scores = m[:, a_idx] @ m[:, b_idx].transpose(0, 2, 1)
        plans = []
        for bi in range(B):
            edge = np.argsort(-scores[bi].max(-1), kind="stable")
            plans.append((edge[r:], edge[:r], scores[bi].argmax(-1)[edge[:r]]))
        a_t, b_t = torch.from_numpy(a_idx), torch.from_numpy(b_idx)

        def merge(t):
            rows = []
            for bi, (unm, src, dst) in enumerate(plans):
                xs, xd = t[bi, a_t], t[bi, b_t].clone()
                cnt = torch.ones(len(b_idx), dtype=t.dtype)
                for k in range(r):
                    xd[dst[k]] = xd[dst[k]] + xs[src[k]]
                    cnt[dst[k]] += 1
                rows.append(torch.cat([xs[torch.from_numpy(unm)], xd / cnt[:, None]]))
            return torch.stack(rows)

        def unmerge(t):
            out = torch.zeros(B, N, t.shape[-1], dtype=t.dtype)
            for bi, (unm, src, dst) in enumerate(plans):
                nu = len(unm)
                out[bi, b_t] = t[bi, nu:]
                out[bi, a_t[torch.from_numpy(unm)]] = t[bi, :nu]
                out[bi, a_t[torch.from_numpy(src)]] = t[bi, nu:][torch.from_numpy(dst)]
            return out

        return merge, unmerge

    def __enter__(self):
        doc, kw = self, self.kw
        self.orig = self.cls.forward

        def forward(block, hidden_states, attention_mask=None, encoder_hidden_states=None, **_):
            fns = doc.merge_fns(hidden_states)
            ident = lambda t: t  # noqa: E731
            m, u = fns if fns else (ident, ident)
            ma, ua = (m, u) if kw["merge_attn"] else (ident, ident)
            mc, uc = (m, u) if kw["merge_crossattn"] else (ident, ident)
            mm, um = (m, u) if kw["merge_mlp"] else (ident, ident)
            x = hidden_states
            x = ua(block.attn1(ma(block.norm1(x)))) + x
            x = uc(block.attn2(mc(block.norm2(x)), encoder_hidden_states=encoder_hidden_states)) + x
            x = um(block.ff(mm(block.norm3(x)))) + x
            return x

        self.cls.forward = forward
        return self

    def __exit__(self, *exc):
        self.cls.forward = self.orig


def tome_kwargs(case) -> dict:
    tkey, sx, sy, ratio_kind, _hw, md = case
    targets = TARGETS[tkey]
    ratio = max_ratio(sx, sy) if ratio_kind == "max" else float(ratio_kind)
    return dict(ratio=ratio, max_downsample=md, sx=sx, sy=sy, merge_attn="self_attn" in targets,
                merge_crossattn="cross_attn" in targets, merge_mlp="mlp" in targets)


def min_decisive_gap(blocks: list[dict]) -> float:
    gaps = [g for b in blocks if b["tome"] for g in (b["gap_merge_boundary"], b["gap_dst_choice"]) if g is not None]
    return min(gaps, default=math.inf)


def gen_unet(search: bool = False) -> list[dict]:
    import tomesd
    from diffusers import UNet2DConditionModel

    d = OUT / "unet"
    if d.exists():
        shutil.rmtree(d)
    (d / "inputs").mkdir(parents=True)
    unet = UNet2DConditionModel.from_pretrained(str(PT_DIR / "unet"), torch_dtype=torch.float32).eval()
    n_blocks = sum(1 for _, m in unet.named_modules() if type(m).__name__ == "BasicTransformerBlock")
    assert n_blocks == 7, n_blocks

    def run(sample, ehs):
        with torch.no_grad():
            return unet(sample, torch.tensor(TIMESTEP, dtype=torch.int64), encoder_hidden_states=ehs,
                        return_dict=False)[0]

    def run_patched(case, sample, ehs, use_rand=False, stable_too=False):
        tomesd.apply_patch(unet, use_rand=use_rand, **tome_kwargs(case))
        n_tome = sum(1 for _, m in unet.named_modules() if type(m).__name__ == "ToMeBlock")
        if n_tome != 7:
            fail(f"unet {case}: apply_patch replaced {n_tome} of 7 BasicTransformerBlocks")
        with MergeRecorder(unet) as rec:
            out = run(sample, ehs)
        out_stable = None
        if stable_too:
            with stable_argsort():
                out_stable = run(sample, ehs)
        tomesd.remove_patch(unet)
        if any(type(m).__name__ == "ToMeBlock" for _, m in unet.named_modules()):
            fail("remove_patch left ToMeBlocks behind")
        assert [b["block"] for b in rec.log] == BLOCK_NAMES, [b["block"] for b in rec.log]
        return out, out_stable, rec.log

    g = torch.Generator().manual_seed(77)
    ehs = torch.randn(2, 77, 32, generator=g)
    ehs_file = "inputs/encoder_hidden_states.f32"
    save_f32(d / ehs_file, ehs)
    cases = [(c, 2, False) for c in UNET_CASES] + [(UNET_ODD_BATCH_CASE, 1, True)]

    # Per latent size, a sample seed for which no case's merge decision hinges on a similarity gap
    # below UNET_GAP_MIN (a Rust/ORT run must make the same decisions).  --search redoes the search
    # (the first of 1000*h + w + 7919*k, k = 0, 1, ..., that passes: LATENT_SEEDS).
    def gap_of(h, w, s):
        gap = math.inf
        for (case, B, use_rand) in cases:
            if case[4] == (h, w) and TARGETS[case[0]]:
                _, _, blocks = run_patched(case, s[:B], ehs[:B], use_rand)
                gap = min(gap, min_decisive_gap(blocks))
        return gap

    def sample_for(seed, h, w):
        return torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(seed))

    inputs = {}
    for (h, w) in LATENTS:
        if search:
            for k in range(40):
                seed = 1000 * h + w + 7919 * k
                gap = gap_of(h, w, sample_for(seed, h, w))
                if gap >= UNET_GAP_MIN:
                    break
        else:
            seed = LATENT_SEEDS[(h, w)]
            gap = gap_of(h, w, sample_for(seed, h, w))
        s = sample_for(seed, h, w)
        print(f"unet inputs {h}x{w}: seed {seed}, smallest decisive similarity gap {gap:.2e}")
        if gap < UNET_GAP_MIN:
            fail(f"sample seed {seed} for {h}x{w}: a decisive gap is {gap:.2e} < {UNET_GAP_MIN}")
        ref = run(s, ehs)
        f_s, f_r = f"inputs/sample_{h}x{w}.f32", f"inputs/unpatched_out_{h}x{w}.f32"
        save_f32(d / f_s, s)
        save_f32(d / f_r, ref)
        inputs[(h, w)] = (s, ref, f_s, f_r, seed)

    index = []
    for ci, (case, B, use_rand) in enumerate(cases):
        tkey, sx, sy, ratio_kind, (h, w), md = case
        kw = tome_kwargs(case)
        ratio, targets = kw["ratio"], TARGETS[tkey]
        s, ref, f_s, f_r, seed = inputs[(h, w)]
        e_in = ehs
        if B == 1:
            s, e_in = s[:1], ehs[:1]
            ref = run(s, e_in)
        rk = "max" if ratio_kind == "max" else f"{ratio:g}"
        name = f"{ci:02d}_{tkey}_s{sx}x{sy}_r{rk}_{h}x{w}_md{md}" + ("_b1_rand" if B == 1 else "")
        out, out_stable, blocks = run_patched(case, s, e_in, use_rand, stable_too=True)
        merges = bool(targets) and any(b["tome"] and b["r_eff"] > 0 for b in blocks)
        rel = rel_l2(out, ref)
        mx = float((out - ref).abs().max())
        stable_mx = float((out - out_stable).abs().max())
        if not merges and not torch.equal(out, ref):
            fail(f"unet {name}: merges nothing but differs from the unpatched UNet (max {mx})")
        if merges and rel < 1e-3:
            fail(f"unet {name}: merging changes the output too little (rel L2 {rel:.2e})")
        if stable_mx > 1e-5:
            fail(f"unet {name}: torch-order and stable-order partitions differ by {stable_mx:.2e}")
        with DocToMe(unet, h, w, kw):
            out_doc = run(s, e_in)
        doc_mx = float((out - out_doc).abs().max())
        if doc_mx > 1e-5:
            fail(f"unet {name}: the documented algorithm (DocToMe) differs from tomesd by {doc_mx:.2e}")
        f_out = f"{name}.out.f32"
        save_f32(d / f_out, out)
        entry = {
            "name": name, "B": B, "h": h, "w": w, "timestep": TIMESTEP, "sample_seed": seed,
            "tome": {"ratio": ratio, "ratio_kind": "max" if ratio_kind == "max" else
                     ("above_max" if ratio > max_ratio(sx, sy) else "plain"),
                     "merge": list(targets), "sx": sx, "sy": sy, "use_rand": use_rand, "max_downsample": md},
            "merges": merges,
            "files": {"sample": f_s, "encoder_hidden_states": ehs_file, "out_sample": f_out,
                      "unpatched_out_sample": f_r},
            "batch_rows": [0] if B == 1 else [0, 1],
            "rel_l2_vs_unpatched": rel, "max_abs_vs_unpatched": mx,
            "max_abs_torch_vs_stable_argsort": stable_mx, "max_abs_doc_reimplementation": doc_mx,
            "min_decisive_gap": min_decisive_gap(blocks) if merges else None,
            "blocks": blocks,
        }
        if B == 1:
            f_ru = f"{name}.unpatched_out.f32"
            save_f32(d / f_ru, ref)
            entry["files"]["unpatched_out_sample"] = f_ru
        index.append(entry)
        per = " ".join(f"{b['N']}:{'r' + str(b['r_eff']) if b['tome'] else '-'}" for b in blocks)
        print(f"unet {name}: rel_l2={rel:.3e} max={mx:.3e} stable_diff={stable_mx:.1e} doc_diff={doc_mx:.1e} [{per}]")

    # The unpatched reference of one case, through apply_patch + remove_patch (must be the plain UNet)
    s, ref, *_ = inputs[(8, 8)]
    tomesd.apply_patch(unet, ratio=0.5)
    tomesd.remove_patch(unet)
    if not torch.equal(run(s, ehs), ref):
        fail("unet after remove_patch differs from the unpatched UNet")
    # The unpatched torch outputs against ONNX Runtime on models/tiny (the floor of any tolerance)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(ROOT / "models" / "tiny" / "unet" / "model.onnx"), so,
                                providers=["CPUExecutionProvider"])
    ort_diff = {}
    for (h, w) in LATENTS:
        s, ref, *_ = inputs[(h, w)]
        o = sess.run(None, {"sample": s.numpy(), "timestep": np.array(TIMESTEP, dtype=np.int64),
                            "encoder_hidden_states": ehs.numpy()})[0]
        ort_diff[(h, w)] = float(np.abs(o - ref.numpy()).max())
        print(f"unet unpatched {h}x{w}: ORT models/tiny vs torch max abs diff {ort_diff[(h, w)]:.2e}")
        if ort_diff[(h, w)] > 1e-4:
            fail(f"ORT models/tiny differs from the torch UNet at {h}x{w}")
    write_json(d / "index.json", {
        "timestep": TIMESTEP, "timestep_dtype": "int64 scalar",
        "model": "tools/.work/tiny_pt/unet (= models/tiny/unet/model.onnx)",
        "unpatched": [{"h": h, "w": w, "sample_seed": inputs[(h, w)][4], "sample": inputs[(h, w)][2],
                       "encoder_hidden_states": ehs_file, "out_sample": inputs[(h, w)][3],
                       "ort_models_tiny_max_abs_diff": ort_diff[(h, w)]}
                      for (h, w) in LATENTS],
        "cases": index,
    })
    print(f"wrote {len(index)} UNet cases to {d.relative_to(ROOT)}")
    return index


# --------------------------------------------------------------------------------------------
# 3. images

# (prompt, seed, width, height, tome config) ; PNDM 12 steps.  Seeds chosen (by trying seed, seed+1,
# ...) so that no merge decision in the 13 UNet calls hinges on a similarity gap below IMAGE_GAP_MIN.
IMAGE_GAP_MIN = 5e-5
IMAGE_CASES = [
    ("a photo of an astronaut riding a horse on mars", 1, 64, 64,
     dict(ratio=0.5, merge=["self_attn"], sx=2, sy=2, max_downsample=1)),
    ("a cozy cabin in the snowy woods, oil painting, by greg rutkowski", 4294967295, 80, 48,
     dict(ratio=0.3, merge=["self_attn", "cross_attn", "mlp"], sx=2, sy=2, max_downsample=1)),
    ("portrait of a cat wearing a tiny hat, highly detailed, artstation", 44, 64, 64,
     dict(ratio=0.6, merge=["self_attn"], sx=3, sy=3, max_downsample=1)),
    ("a red apple on a wooden table", 1241, 80, 48,
     dict(ratio=0.5, merge=["self_attn", "cross_attn"], sx=2, sy=2, max_downsample=2)),
]
IMAGE_STEPS = 12


def gen_images() -> list[dict]:
    import tomesd
    from diffusers import StableDiffusionPipeline

    d = OUT / "images"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    pipe = StableDiffusionPipeline.from_pretrained(str(PT_DIR), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.to("cpu")
    golden_index = json.loads((GOLDEN_IMAGES / "index.json").read_text(encoding="utf-8"))

    def gen(prompt, seed, w, h):
        return pipe(prompt, height=h, width=w, num_inference_steps=IMAGE_STEPS, guidance_scale=GUIDANCE,
                    generator=torch.Generator().manual_seed(seed), output_type="pil").images[0]

    index = []
    for i, (prompt, seed, w, h, t) in enumerate(IMAGE_CASES):
        assert t["ratio"] <= max_ratio(t["sx"], t["sy"])
        tag = "+".join(m.replace("_attn", "") for m in t["merge"])
        base = f"{i:02d}_pndm_{w}x{h}_{IMAGE_STEPS}steps_seed{seed}"
        f_img = f"{base}_tome_{tag}_s{t['sx']}x{t['sy']}_r{t['ratio']:g}_md{t['max_downsample']}.png"
        f_ref = f"{base}_unpatched.png"
        ref = gen(prompt, seed, w, h)
        ref.save(d / f_ref, format="PNG", optimize=False)
        # Where golden/images has the same generation, it must be the same image.
        for gi in golden_index:
            if (gi["prompt"], gi["seed"], gi["width"], gi["height"], gi["steps"], gi["scheduler"]) == \
                    (prompt, seed, w, h, IMAGE_STEPS, "pndm"):
                from PIL import Image
                if not np.array_equal(np.asarray(Image.open(GOLDEN_IMAGES / gi["file"])), np.asarray(ref)):
                    fail(f"unpatched {f_ref} differs from golden/images/{gi['file']}")
                print(f"images {f_ref} == golden/images/{gi['file']}")
        tomesd.apply_patch(pipe, ratio=t["ratio"], max_downsample=t["max_downsample"], sx=t["sx"], sy=t["sy"],
                           use_rand=False, merge_attn="self_attn" in t["merge"],
                           merge_crossattn="cross_attn" in t["merge"], merge_mlp="mlp" in t["merge"])
        with MergeRecorder(pipe.unet) as rec:
            img = gen(prompt, seed, w, h)
        tomesd.remove_patch(pipe)
        gap = min_decisive_gap(rec.log)
        n_merges = sum(1 for b in rec.log if b["tome"] and b["r_eff"] > 0)
        if gap < IMAGE_GAP_MIN:
            fail(f"images {f_img}: a merge decision hinges on a similarity gap of {gap:.2e}")
        img.save(d / f_img, format="PNG", optimize=False)
        a, b = np.asarray(img).astype(np.int32), np.asarray(ref).astype(np.int32)
        diff = {"max": int(np.abs(a - b).max()), "mean": round(float(np.abs(a - b).mean()), 4),
                "changed_fraction": round(float(np.mean(a != b)), 4)}
        if diff["max"] < 3 or diff["changed_fraction"] < 0.1:  # ORT vs torch: max 1, few values
            fail(f"images {f_img}: ToMe barely changes the image ({diff})")
        index.append({"file": f_img, "prompt": prompt, "seed": seed, "width": w, "height": h,
                      "steps": IMAGE_STEPS, "guidance": GUIDANCE, "scheduler": "pndm",
                      "tome": {"ratio": t["ratio"], "merge": t["merge"], "sx": t["sx"], "sy": t["sy"],
                               "use_rand": False, "max_downsample": t["max_downsample"]},
                      "unpatched_file": f_ref, "diff_vs_unpatched": diff,
                      "merging_block_calls": n_merges, "min_decisive_gap": gap})
        print(f"images {f_img}: vs unpatched {diff}; {n_merges} merging block calls, min decisive gap {gap:.2e}")
    with open(d / "index.json", "w", encoding="utf-8", newline="\n") as fh:
        json.dump(index, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    print(f"wrote {len(index)} images to {d.relative_to(ROOT)}")
    return index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--search", action="store_true",
                    help="search the UNet sample seeds again instead of using LATENT_SEEDS")
    ap.add_argument("--only", nargs="+", choices=["ops", "unet", "images"], default=["ops", "unet", "images"])
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    import tomesd  # noqa: F401
    from importlib.metadata import version

    print(f"tomesd {version('tomesd')}, diffusers {version('diffusers')}, torch {torch.__version__}")
    if not PT_DIR.exists():
        sys.exit(f"{PT_DIR} missing: run tools/make_tiny_model.py first")
    if "ops" in args.only:
        gen_ops()
    if "unet" in args.only:
        gen_unet(args.search)
    if "images" in args.only:
        gen_images()


if __name__ == "__main__":
    main()
