#!/usr/bin/env python3
"""Benchmark one UNet evaluation: tomex (ONNX Runtime, split UNet + Rust ToMe) against
diffusers + tomesd (torch on the CPU), on the random-weight SD 1.5-layout UNet made by
tools/make_bench_unet.py.

For each latent size (batch 2, as with classifier-free guidance; timestep 500;
encoder_hidden_states [2, 77, 768]) and each case

  exported     tomex runs the whole UNet graph as exported (attention spelt out, the
               N x N scores materialised: `--attention exported`), tomex only; run at
               latents up to --exported-max (default 64: at 96x96 it peaks near 23 GB)
  uncut        tomex runs the whole UNet graph as one ONNX Runtime session, attention
               fused (tomex only; torch's r = 0 run is shown in this row too)
  cuts         tomex runs the UNet split at the transformer blocks, r = 0;
               torch runs the unpatched UNet
  self         r = 0.5, merging for self-attention only
  self+cross   r = 0.5, merging for self- and cross-attention

it runs, one process at a time (never two at once, so peaks and times are each
process's own):

  torch  `python tools/bench_unet.py --torch-worker ...`: loads DIR/torch, for r > 0
         tomesd.apply_patch(unet, ratio=r, merge_attn=..., merge_crossattn=..., use_rand=False)
         (tomesd's defaults otherwise: max_downsample=1, sx=sy=2), torch.set_num_threads(T),
         under torch.no_grad() one warm-up evaluation and `--repeats` timed ones;
  tomex  `target/release/tomex [--attention KIND] bench-unet --unet DIR/onnx/unet/model.onnx --latent H,W
         --batch 2 --repeats N --threads T [--uncut]
         [--tome-ratio R --tome-merge self_attn[,cross_attn] --tome-no-rand]`
         (the "cuts" case passes neither --uncut nor --tome-*), which prints one JSON line
         {"median_s", "times_s", "peak_rss_mb", "tome_ops_s", "parts", "attention"}.
         KIND is `exported` for the exported case and --attention otherwise (default:
         none, so tomex picks: `flash`, its own kernel, on a CPU with AVX-512F in fp32,
         else ONNX Runtime's `fused` MultiHeadAttention).

The floor of each row is the evaluation's FLOPs (counted by torch's FlopCounterMode
during the torch worker's untimed warm-up, tomesd's merged token counts included)
divided by the machine's float32 matmul rate (`--matmul-worker`: best 4096^3 sgemm
in torch at the same thread count, measured once per run).

Both children print one JSON line on stdout; peak memory is the child's ru_maxrss as
reported to this (light, torch-free) parent by wait4(), the same measure for both.

Writes the Markdown section (table, targets, machine facts, exact command line) to
stdout, the raw results as JSON to --json (default target/bench/bench_unet-<stamp>.json),
and with --write replaces the section between <!-- bench-unet:start --> and
<!-- bench-unet:end --> in BENCHMARKS.md (creating the file if missing).

Usage (from the repository root, on a quiet machine):
  cargo build --release
  tools/.venv/bin/python tools/make_bench_unet.py                 # once; target/bench/unet-128
  tools/.venv/bin/python tools/bench_unet.py --latents 64,96 --threads 2 --repeats 3 --write
Only one side: --only torch | --only tomex. Subset of cases: --cases cuts,self.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = ROOT / "target" / "bench" / "unet-128"
DEFAULT_TOMEX = ROOT / "target" / "release" / "tomex"
START, END = "<!-- bench-unet:start -->", "<!-- bench-unet:end -->"
BATCH = 2
TIMESTEP = 500
TEXT_LEN = 77
SDXL_TEXT_EMBEDS = 1280  # pooled text_embeds of an SDXL-layout UNet (addition_embed_type text_time)

# name, label, ratio, merge targets, uncut (tomex), torch runs this case itself
CASES = [
    ("exported", "uncut, r = 0, exported attention", 0.0, (), True, False),
    ("uncut", "uncut, r = 0", 0.0, (), True, False),
    ("cuts", "cuts, r = 0", 0.0, (), False, True),
    ("self", "r = 0.5, self-attn", 0.5, ("self_attn",), False, True),
    ("self+cross", "r = 0.5, self+cross", 0.5, ("self_attn", "cross_attn"), False, True),
]
RATIO = 0.5
PRECISION_TEXT = {"fp32": "float32", "fp16": "float16 (torch: `unet.half()`; tomex: `--precision fp16`)"}


# --------------------------------------------------------------------------
# torch worker (a child process; the only place torch is imported)
# --------------------------------------------------------------------------


def torch_worker(args) -> None:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    import diffusers
    import tomesd
    from diffusers import UNet2DConditionModel

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    import_mib = peak_mib()
    h, w = parse_pair(args.latent)
    merge = tuple(m for m in args.merge.split(",") if m)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(str(Path(args.model_dir) / "torch"),
                                                low_cpu_mem_usage=False).eval()
    if args.ratio > 0:
        tomesd.apply_patch(unet, ratio=args.ratio, merge_attn="self_attn" in merge,
                           merge_crossattn="cross_attn" in merge, use_rand=False,
                           max_downsample=args.max_downsample)
    load_s = time.perf_counter() - t0
    load_mib = peak_mib()
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(args.batch, 4, h, w, generator=g)
    ehs = torch.randn(args.batch, TEXT_LEN, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor(TIMESTEP, dtype=torch.int64)
    # SDXL: the added conditions (pooled text, time_ids of an 8h x 8w image), as
    # tools/make_bench_unet.py's export takes them.
    added = None
    if unet.config.addition_embed_type == "text_time":
        added = {"text_embeds": torch.randn(args.batch, SDXL_TEXT_EMBEDS, generator=g),
                 "time_ids": torch.tensor([[8.0 * h, 8.0 * w, 0.0, 0.0, 8.0 * h, 8.0 * w]] * args.batch)}
    cuda = args.device.startswith("cuda")
    if args.precision == "fp16":
        unet, sample, ehs = unet.half(), sample.half(), ehs.half()
        added = added and {k: v.half() for k, v in added.items()}
    if cuda:
        dev = torch.device(args.device)
        unet, sample, ehs, t = unet.to(dev), sample.to(dev), ehs.to(dev), t.to(dev)
        added = added and {k: v.to(dev) for k, v in added.items()}
        torch.cuda.reset_peak_memory_stats(dev)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()
    times = []
    flops = None
    with torch.no_grad():
        for i in range(args.repeats + 1):
            t1 = time.perf_counter()
            if i == 0:
                # The untimed warm-up also counts the evaluation's FLOPs (matmuls,
                # convolutions, attention), tomesd's smaller token counts included.
                from torch.utils.flop_counter import FlopCounterMode

                with FlopCounterMode(display=False) as counter:
                    out = unet(sample, t, encoder_hidden_states=ehs, added_cond_kwargs=added,
                               return_dict=False)[0]
                flops = counter.get_total_flops()
            else:
                out = unet(sample, t, encoder_hidden_states=ehs, added_cond_kwargs=added, return_dict=False)[0]
            sync()
            dt_s = time.perf_counter() - t1
            if i > 0:
                times.append(dt_s)
            print(f"  torch {h}x{w} r={args.ratio} {'+'.join(merge) or '-'}: "
                  f"{'warm-up' if i == 0 else f'run {i}'} {dt_s:.3f} s", file=sys.stderr, flush=True)
    print(json.dumps({
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_rss_mb": peak_mib(),
        "peak_rss_after_import_mb": import_mib,
        "peak_rss_after_load_mb": load_mib,
        "load_s": load_s,
        "out_std": float(out.std()),
        "flops": flops,
        "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "tomesd": getattr(tomesd, "__version__", None) or pkg_version("tomesd")},
    }), flush=True)


def matmul_worker(args) -> None:
    """The device's matrix-multiply rate at the benchmark's precision: the best of several
    4096^3 products (torch; on the CPU with `--threads` threads), the denominator of the floor."""
    import torch

    torch.set_num_threads(args.threads)
    n = 4096
    dtype = torch.float16 if args.precision == "fp16" else torch.float32
    dev = torch.device(args.device)
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()
    torch.mm(a, b)
    sync()
    best = float("inf")
    for _ in range(5 if dev.type == "cpu" else 20):
        t1 = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t1)
    print(json.dumps({"gflops": 2 * n**3 / best / 1e9, "n": n, "threads": torch.get_num_threads(),
                      "median_s": best}), flush=True)


def pkg_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


# --------------------------------------------------------------------------
# Parent: run children one at a time, measure their peak RSS with wait4
# --------------------------------------------------------------------------


def parse_pair(s: str) -> tuple[int, int]:
    a, b = s.replace("x", ",").split(",")
    return int(a), int(b)


def run_child(cmd: list[str], env: dict[str, str], timeout_s: float, expect_json: bool = True) -> dict:
    """Run cmd (stderr passed through), return its last JSON stdout line plus rc, wall time and
    the child's peak RSS from wait4 (MiB). Without `expect_json`, only the exit status counts."""
    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=None, env=env, cwd=ROOT)
        timed_out = False
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() - t0 > timeout_s and not timed_out:
                timed_out = True
                proc.kill()
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped
        out.seek(0)
        stdout = out.read()
    res: dict = {"rc": proc.returncode, "wall_s": wall, "wait4_maxrss_mib": ru.ru_maxrss / 1024,
                 "timed_out": timed_out}
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                res["json"] = json.loads(line)
            except json.JSONDecodeError:
                pass
            break
    if "json" not in res:
        res["stdout_tail"] = stdout[-2000:]
    if proc.returncode != 0 or (expect_json and "json" not in res):
        why = "timed out" if timed_out else f"rc {proc.returncode}"
        if proc.returncode == -9 and not timed_out:
            why += " (SIGKILL: out of memory?)"
        res["error"] = why
        print(f"  failed: {why}; peak RSS {res['wait4_maxrss_mib']:.0f} MiB", file=sys.stderr)
    elif "json" in res:
        j = res["json"]
        print(f"  median {j['median_s']:.3f} s, peak RSS {res['wait4_maxrss_mib']:.0f} MiB",
              file=sys.stderr, flush=True)
    else:
        print(f"  done; peak RSS {res['wait4_maxrss_mib']:.0f} MiB", file=sys.stderr, flush=True)
    return res


def combine(runs: list[dict]) -> dict:
    """One result from several rounds of a side: every timed run, their median, the
    highest peak; the first failure if any round failed."""
    failed = [r for r in runs if not ok(r)]
    if failed or len(runs) == 1:
        return (failed or runs)[0]
    out = dict(runs[0])
    j = dict(runs[0]["json"])
    j["times_s"] = [t for r in runs for t in r["json"]["times_s"]]
    j["median_s"] = statistics.median(j["times_s"])
    if all("tome_ops_s" in r["json"] for r in runs):
        j["tome_ops_s"] = statistics.median(r["json"]["tome_ops_s"] for r in runs)
    j["rounds"] = len(runs)
    out["json"] = j
    out["wait4_maxrss_mib"] = max(r["wait4_maxrss_mib"] for r in runs)
    return out


def torch_cmd(a, hw, ratio, merge) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--torch-worker", "--model-dir", str(a.model_dir),
            "--latent", f"{hw[0]},{hw[1]}", "--batch", str(BATCH), "--repeats", str(a.repeats),
            "--threads", str(a.threads), "--ratio", str(ratio), "--merge", ",".join(merge),
            "--device", a.device, "--precision", a.precision, "--max-downsample", str(a.max_downsample)]


def attention_text(results) -> str:
    """How tomex's fused rows computed attention, from what its runs reported."""
    kinds = sorted({side.get("json", {}).get("attention") for rows in results.values() for name, row in rows.items()
                    if name != "exported" for key, side in row.items() if key == "tomex"} - {None})
    words = {"flash": "`flash`: tomex's own AVX-512 kernel, `tomex.FlashAttention`",
             "fused": "`fused`: ONNX Runtime's `MultiHeadAttention`"}
    return "; ".join(words.get(k, f"`{k}`") for k in kinds) or "as tomex chose"


def tomex_cmd(a, hw, ratio, merge, uncut, attention=None) -> list[str]:
    cmd = [str(a.tomex)] + (["--attention", attention] if attention else [])
    cmd += ["--token-ops", a.token_ops, "--precision", a.precision,
           "bench-unet",
           "--device", a.device, "--unet", str(Path(a.model_dir) / "onnx" / "unet" / "model.onnx"),
           "--latent", f"{hw[0]},{hw[1]}", "--batch", str(BATCH), "--repeats", str(a.repeats),
           "--threads", str(a.threads)]
    config = json.loads((Path(a.model_dir) / "torch" / "config.json").read_text())
    cmd += ["--hidden-dim", str(config["cross_attention_dim"])]
    if config.get("addition_embed_type") == "text_time":
        cmd += ["--text-embeds-dim", str(SDXL_TEXT_EMBEDS)]
    if uncut:
        cmd.append("--uncut")
    elif ratio == 0 and a.max_downsample != 1:
        cmd += ["--tome-max-downsample", str(a.max_downsample)]  # the cuts at the levels it may merge
    if ratio > 0:
        cmd += ["--tome-ratio", str(ratio), "--tome-merge", ",".join(merge), "--tome-no-rand",
                "--tome-max-downsample", str(a.max_downsample)]
    return cmd


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


# --------------------------------------------------------------------------
# Machine facts and report
# --------------------------------------------------------------------------


def machine_facts(threads: int) -> dict:
    facts: dict = {"logical_cpus": os.cpu_count(), "threads": threads, "kernel": platform.release()}
    try:
        info = Path("/proc/cpuinfo").read_text()
        for line in info.splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
        facts["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
                        if f in flags]
    except OSError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()
        facts["mem_total_gib"] = round(int(mem[1]) / 1024**2, 1)
    except (OSError, IndexError, ValueError):
        pass
    stamp = ROOT / ".ort" / "lib" / ".fetched"
    if stamp.exists():
        facts["tomex_onnxruntime"] = stamp.read_text().strip()
    try:
        facts["git"] = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                                      capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return facts


def model_facts(model_dir: Path) -> dict:
    facts: dict = {}
    try:
        cfg = json.loads((model_dir / "torch" / "config.json").read_text())
        facts["block_out_channels"] = cfg.get("block_out_channels")
        facts["cross_attention_dim"] = cfg.get("cross_attention_dim")
        facts["xl"] = cfg.get("addition_embed_type") == "text_time"
        facts["transformer_layers_per_block"] = cfg.get("transformer_layers_per_block")
    except (OSError, json.JSONDecodeError):
        pass
    try:
        facts.update(json.loads((model_dir / "bench_unet.json").read_text()))
    except (OSError, json.JSONDecodeError):
        pass
    data = model_dir / "onnx" / "unet" / "model.onnx_data"
    if data.exists():
        facts["weights_mb"] = round(data.stat().st_size / 1e6)
    return facts


def fmt_s(run: dict | None) -> str:
    if run is None:
        return "—"
    if "error" in run:
        return f"failed ({run['error']})"
    return f"{run['json']['median_s']:.3f}"


def fmt_mib(run: dict | None) -> str:
    if run is None:
        return "—"
    return f"{run['wait4_maxrss_mib']:.0f}"


def ok(run: dict | None) -> bool:
    return run is not None and "error" not in run


def med(run: dict) -> float:
    return run["json"]["median_s"]


def render(results: dict, a, facts: dict, mfacts: dict, command: str, stamp: str) -> str:
    L: list[str] = []
    ch = mfacts.get("block_out_channels")
    chs = f"({', '.join(map(str, ch))})" if ch else "?"
    L.append(f"## One UNet evaluation: tomex vs diffusers + tomesd, channels {chs}")
    L.append("")
    L.append(f"Made by `{command}` on {stamp}.")
    L.append("")
    layout = "SD 1.5's layout"
    if mfacts.get("xl"):
        layout = f"SDXL base's layout (transformer_layers_per_block {mfacts.get('transformer_layers_per_block')})"
    L.append(f"* Model: random-weight `UNet2DConditionModel` with {layout}, block_out_channels {chs}"
             + (f" ({mfacts['weights_mb']} MB float32 weights)" if "weights_mb" in mfacts else "")
             + f", made by `tools/make_bench_unet.py`; computed in {PRECISION_TEXT[a.precision]}"
             + (f" on {a.device}." if a.device != "cpu" else ", CPU.")),
    L.append(f"* Input: batch {BATCH} (as with guidance), timestep {TIMESTEP}, encoder_hidden_states "
             f"[{BATCH}, {TEXT_LEN}, {mfacts.get('cross_attention_dim') or 768}]"
             + (f", text_embeds [{BATCH}, {SDXL_TEXT_EMBEDS}] and the time_ids of an image 8x the latent; "
                if mfacts.get("xl") else "; ")
             + (f"one warm-up evaluation, then the median of {a.repeats} timed ones." if a.rounds == 1 else
                f"{a.rounds} processes per side and case, in rounds that alternate torch with every tomex case "
                f"of the same r (at r = 0: torch, then tomex uncut and cut, their order swapped every other round), each one warm-up evaluation "
                f"then {a.repeats} timed ones; the median of all {a.rounds * a.repeats}."))
    L.append("* torch: diffusers' UNet (default attention processor, `scaled_dot_product_attention`) under "
             "`torch.no_grad()`; r > 0: `tomesd.apply_patch(unet, ratio=0.5, merge_attn=True, "
             f"merge_crossattn=<self+cross>, use_rand=False, max_downsample={a.max_downsample})` (sx=sy=2: "
             + ("merging in the highest-resolution transformer blocks only). " if a.max_downsample == 1 else
                f"merging in the transformer blocks at downsample <= {a.max_downsample}). ")
             + "tomex: `tomex bench-unet` (ONNX Runtime, "
             f"{'CPU' if a.device == 'cpu' else 'CUDA'}, token ops `{a.token_ops}`); "
             "\"uncut\" is the whole graph in one session, the other rows the graph cut at the transformer "
             "blocks with Rust token ops in between (`--tome-no-rand`); attention is fused (" + attention_text(results)
             + ") except in the \"exported attention\" row (the graph as exported, which "
             "materialises the N×N scores).")
    v = facts.get("versions", {})
    mach = (f"* Machine: {facts.get('cpu', '?')} ({facts.get('logical_cpus', '?')} logical CPUs"
            + (f", {', '.join(facts['isa'])}" if facts.get("isa") else "")
            + (f", {facts['mem_total_gib']} GiB RAM" if "mem_total_gib" in facts else "")
            + f"), Linux {facts.get('kernel', '?')}; {a.threads} threads for both"
            + (f"; device {a.device} ({facts.get('gpu', '?')}), peaks are host RSS" if a.device != "cpu" else "")
            + ".")
    L.append(mach)
    sw = [f"torch {v['torch']}" if v.get("torch") else None,
          f"diffusers {v['diffusers']}" if v.get("diffusers") else None,
          f"tomesd {v['tomesd']}" if v.get("tomesd") else None,
          f"tomex's ONNX Runtime {facts['tomex_onnxruntime']}" if facts.get("tomex_onnxruntime") else None,
          f"tomex at {facts['git']}" if facts.get("git") else None]
    L.append("* Software: " + ", ".join(s for s in sw if s) + ".")
    if "loadavg_start" in facts:
        L.append(f"* Load average (1 min) at start / end: {facts['loadavg_start']} / "
                 f"{facts.get('loadavg_end', '?')}.")
    L.append("")
    rate = facts.get("matmul_gflops")
    L.append("Speed-up = torch s / tomex s (above 1: tomex faster). Peak = the process's peak RSS "
             "(model load included). Token-op share = time in tomex's Rust token ops / tomex's median. "
             "Floor = the evaluation's FLOPs (torch's `FlopCounterMode`: matmuls, convolutions, attention; "
             f"with tomesd's smaller token counts where it merges) / the {a.device} {a.precision} matmul rate measured"
             + (f" ({rate:.0f} GFLOP/s: best 4096³ product in torch"
                + (f", {a.threads} threads)" if a.device == "cpu" else ")") if rate else "")
             + "; × floor = tomex s / floor s.")
    L.append("")
    L.append("| latent | case | torch s | tomex s | speed-up | torch peak MiB | tomex peak MiB "
             "| tomex token-op share | tomex parts | GFLOP | floor s | tomex × floor |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for lat in a.latents:
        key = f"{lat[0]}x{lat[1]}"
        rows = results.get(key, {})
        for name, label, *_ in CASES:
            if name not in a.cases or name not in rows:
                continue
            r = rows.get(name, {})
            tr, xr = r.get("torch"), r.get("tomex")
            sp = f"{med(tr) / med(xr):.2f}×" if ok(tr) and ok(xr) else "—"
            share = parts = "—"
            if ok(xr):
                j = xr["json"]
                if j.get("tome_ops_s") is not None and j["median_s"] > 0:
                    share = f"{100 * j['tome_ops_s'] / j['median_s']:.1f}%"
                if j.get("parts") is not None:
                    parts = str(j["parts"])
            gflop = floor = times_floor = "—"
            flops = tr["json"].get("flops") if ok(tr) else None
            if flops:
                gflop = f"{flops / 1e9:.0f}"
                if rate:
                    fl = flops / (rate * 1e9)
                    floor = f"{fl:.3f}"
                    if ok(xr):
                        times_floor = f"{med(xr) / fl:.2f}×"
            L.append(f"| {lat[0]}×{lat[1]} | {label} | {fmt_s(tr)} | {fmt_s(xr)} | {sp} | {fmt_mib(tr)} "
                     f"| {fmt_mib(xr)} | {share} | {parts} | {gflop} | {floor} | {times_floor} |")
    L.append("")
    L.append("Torch has no cuts: its r = 0 run (unpatched UNet) appears in every r = 0 row.")
    imp = [r["json"]["peak_rss_after_import_mb"] for rows in results.values() for r in
           (c.get("torch") for c in rows.values()) if ok(r) and "peak_rss_after_import_mb" in r["json"]]
    if imp:
        L.append(f"The torch processes' peak includes about {min(imp):.0f} MiB reached by importing torch "
                 "and diffusers (which imports transformers) before the model is loaded.")
    L.append("")
    L.append("Targets:")
    L.append("")
    for lat in a.latents:
        key = f"{lat[0]}x{lat[1]}"
        rows = results.get(key, {})
        u, c = rows.get("uncut", {}).get("tomex"), rows.get("cuts", {}).get("tomex")
        if ok(u) and ok(c):
            ov = 100 * (med(c) - med(u)) / med(u)
            L.append(f"* {lat[0]}×{lat[1]}: split overhead at r = 0 (cuts vs uncut) {ov:+.1f}% "
                     f"(target ≤ 5%: {'met' if ov <= 5 else 'NOT met'})")
        for name in ("self", "self+cross"):
            r = rows.get(name, {})
            tr, xr = r.get("torch"), r.get("tomex")
            if ok(tr) and ok(xr):
                L.append(f"* {lat[0]}×{lat[1]}: r = 0.5 {name}: tomex {med(xr):.3f} s vs torch + tomesd "
                         f"{med(tr):.3f} s, {med(tr) / med(xr):.2f}× (target tomex ≤ torch: "
                         f"{'met' if med(xr) <= med(tr) else 'NOT met'}; issue 6's ≥ 1.2×: "
                         f"{'met' if med(tr) >= 1.2 * med(xr) else 'NOT met'})")
        tr, xr = rows.get("cuts", {}).get("torch"), u
        if ok(tr) and ok(xr):
            L.append(f"* {lat[0]}×{lat[1]}: r = 0 uncut: tomex {med(xr):.3f} s vs torch {med(tr):.3f} s, "
                     f"{med(tr) / med(xr):.2f}× (issue 6's ≥ 1.2×: {'met' if med(tr) >= 1.2 * med(xr) else 'NOT met'}); "
                     f"peak {fmt_mib(xr)} vs {fmt_mib(tr)} MiB (issue 6's tomex ≤ torch: "
                     f"{'met' if xr['wait4_maxrss_mib'] <= tr['wait4_maxrss_mib'] else 'NOT met'})")
    if L[-1] == "":
        L.append("* (no tomex/torch pairs measured in this run)")
    L.append("")
    L.append("<details><summary>Timed runs (s)</summary>")
    L.append("")
    for lat in a.latents:
        key = f"{lat[0]}x{lat[1]}"
        for name, label, *_ in CASES:
            for side in ("torch", "tomex"):
                if side == "torch" and name in ("uncut", "exported") and "cuts" in a.cases:
                    continue  # the same run as the cuts row
                r = results.get(key, {}).get(name, {}).get(side)
                if ok(r):
                    ts = ", ".join(f"{t:.3f}" for t in r["json"].get("times_s", []))
                    L.append(f"* {lat[0]}×{lat[1]} {label}, {side}: {ts}")
    L.append("")
    L.append("</details>")
    return "\n".join(L) + "\n"


def markers(name: str) -> tuple[str, str]:
    """The section's markers: bench-unet's own, or bench-unet-NAME's."""
    if name == "bench-unet":
        return START, END
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(path: Path, section: str, name: str = "bench-unet") -> None:
    START, END = markers(name)
    block = f"{START}\n{section}{END}\n"
    if not path.exists():
        path.write_text("# Benchmarks\n\nEach section is made by a committed script; its command line is "
                        "given in the section. Sections are replaced between their markers.\n\n" + block)
        return
    text = path.read_text()
    i, j = text.find(START), text.find(END)
    if i >= 0 and j > i:
        end = j + len(END)
        if text[end:end + 1] == "\n":
            end += 1
        text = text[:i] + block + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def display_command() -> str:
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(ROOT)) if exe.is_absolute() else str(exe)
    except ValueError:
        exe_s = "python3"
    return shlex.join([exe_s, "tools/bench_unet.py", *sys.argv[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                    help="output of make_bench_unet.py (default target/bench/unet-128)")
    ap.add_argument("--latents", default="64,96", help="comma-separated square latent sizes, or HxW items")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1,
                    help="processes per side and case, in rounds through torch and every tomex case of the same r (timed runs: rounds x repeats)")
    ap.add_argument("--cases", default=",".join(c[0] for c in CASES),
                    help="subset of " + ",".join(c[0] for c in CASES))
    ap.add_argument("--only", choices=("torch", "tomex"), help="run one side only")
    ap.add_argument("--device", default="cpu",
                    help="cpu, or cuda[:N]: torch and tomex on that GPU (tools/gpu_check.sh)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16"),
                    help="fp16: torch runs unet.half() on half inputs, tomex --precision fp16")
    ap.add_argument("--token-ops", default="host", choices=("host", "graph", "one-graph"),
                    help="where tomex runs ToMe's token ops (tomex --token-ops)")
    ap.add_argument("--attention", choices=("flash", "fused"),
                    help="tomex --attention for the fused cases (default: tomex's choice for the device)")
    ap.add_argument("--max-downsample", type=int, default=1,
                    help="tomesd's max_downsample for both sides (default 1, tomesd's; an SDXL layout "
                         "needs 2: its full-resolution level has no attention)")
    ap.add_argument("--exported-max", type=int, default=64,
                    help="run the exported-attention case only at latents up to this side (default 64)")
    ap.add_argument("--tomex", type=Path, default=DEFAULT_TOMEX, help="tomex binary (default target/release/tomex)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    ap.add_argument("--write", action="store_true", help="replace the section in --benchmarks")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--section", default="bench-unet",
                    help="marker name of the section --write replaces (default bench-unet; e.g. "
                         "bench-unet-320 for a second model's section)")
    ap.add_argument("--json", type=Path, help="raw results (default target/bench/bench_unet-<stamp>.json)")
    ap.add_argument("--dry-run", action="store_true", help="print the child commands only")
    # torch worker (internal)
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--latent", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    ap.add_argument("--ratio", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--merge", default="", help=argparse.SUPPRESS)
    ap.add_argument("--matmul-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.torch_worker:
        torch_worker(a)
        return
    if a.matmul_worker:
        matmul_worker(a)
        return

    a.latents = [parse_pair(s) if "x" in s else (int(s), int(s)) for s in a.latents.split(",") if s]
    a.cases = [c for c in a.cases.split(",") if c]
    unknown = set(a.cases) - {c[0] for c in CASES}
    if unknown:
        ap.error(f"unknown cases: {', '.join(sorted(unknown))}")
    for lat in a.latents:
        if lat[0] % 8 or lat[1] % 8:
            ap.error(f"latent {lat[0]}x{lat[1]}: the exported graph needs sizes divisible by 8")
    a.model_dir = a.model_dir.resolve()
    run_torch, run_tomex = a.only != "tomex", a.only != "torch"
    if not a.dry_run:
        if not (a.model_dir / "torch" / "config.json").exists() or \
                not (a.model_dir / "onnx" / "unet" / "model.onnx").exists():
            sys.exit(f"{a.model_dir}: run tools/make_bench_unet.py first")
        if run_tomex and not a.tomex.exists():
            sys.exit(f"{a.tomex} not found: cargo build --release (or --only torch)")

    command = display_command()
    now = dt.datetime.now(dt.timezone.utc)
    stamp = now.strftime("%Y-%m-%d %H:%M UTC")
    facts = machine_facts(a.threads)
    facts["loadavg_start"] = loadavg()
    facts["device"] = a.device
    if a.device.startswith("cuda"):
        try:
            facts["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                          capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            facts["gpu"] = "?"
    env = child_env(a.threads)
    results: dict = {}
    if run_torch and not a.dry_run:
        mm = run_child([sys.executable, str(Path(__file__).resolve()), "--matmul-worker",
                        "--threads", str(a.threads), "--device", a.device, "--precision", a.precision],
                       env, a.timeout)
        if ok(mm):
            facts["matmul_gflops"] = mm["json"]["gflops"]
    for lat in a.latents:
        key = f"{lat[0]}x{lat[1]}"
        rows = results.setdefault(key, {})
        # The r = 0 cases form one group (torch's unpatched run, tomex uncut, tomex cut,
        # the exported graph), each r = 0.5 case its own: rounds go through every side
        # of a group in turn, so the machine's drift over minutes falls on all alike,
        # the uncut/cut comparison included.
        chosen = [c for c in CASES if c[0] in a.cases
                  and not (c[0] == "exported" and max(lat) > a.exported_max)]
        groups = [[c for c in chosen if c[2] == 0.0]] + [[c] for c in chosen if c[2] != 0.0]
        for group in filter(None, groups):
            sides = []
            for name, label, ratio, merge, uncut, torch_runs in group:
                print(f"== {key} {label}", file=sys.stderr, flush=True)
                if run_torch and torch_runs:
                    sides.append((name, "torch", torch_cmd(a, lat, ratio, merge)))
                if run_tomex:
                    sides.append((name, "tomex", tomex_cmd(a, lat, ratio, merge, uncut,
                                                           "exported" if name == "exported" else a.attention)))
            torch_sides = [s for s in sides if s[1] == "torch"]
            tomex_sides = [s for s in sides if s[1] == "tomex"]
            runs: dict = {(name, side): [] for name, side, _ in sides}
            for k in range(a.rounds):
                # torch first; the tomex cases in table order, reversed every other round
                order = torch_sides + (tomex_sides if k % 2 == 0 else tomex_sides[::-1])
                for name, side, cmd in order:
                    if a.dry_run:
                        print(shlex.join(cmd))
                    else:
                        runs[(name, side)].append(run_child(cmd, env, a.timeout))
            for (name, side), side_runs in runs.items():
                if side_runs:
                    rows.setdefault(name, {})[side] = combine(side_runs)
                    v = rows[name][side].get("json", {}).get("versions")
                    if side == "torch" and v:
                        facts["versions"] = v
        # torch's unpatched r = 0 run serves every r = 0 row
        for other in ("uncut", "exported"):
            if "cuts" in rows and other in rows and "torch" in rows["cuts"]:
                rows[other]["torch"] = rows["cuts"]["torch"]
    if a.dry_run:
        return
    facts["loadavg_end"] = loadavg()

    section = render(results, a, facts, model_facts(a.model_dir), command, stamp)
    print(section)
    jpath = a.json or ROOT / "target" / "bench" / f"bench_unet-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    jpath.parent.mkdir(parents=True, exist_ok=True)
    jpath.write_text(json.dumps({"command": command, "date": stamp, "facts": facts,
                                 "model": model_facts(a.model_dir), "results": results}, indent=2) + "\n")
    print(f"raw results: {jpath}", file=sys.stderr)
    if a.write:
        write_section(a.benchmarks, section, a.section)
        print(f"wrote the section in {a.benchmarks}", file=sys.stderr)


if __name__ == "__main__":
    main()
