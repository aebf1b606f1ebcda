#!/usr/bin/env bash
# The CUDA checks for a machine with an NVIDIA GPU: parity of tomex's CUDA path with its
# CPU path on the embedded tiny model, then the UNet timing table against diffusers +
# tomesd on the GPU. Nothing is fetched here: prepare where the package registries are
# reachable, then run this (from the repository root).
#
#   bash tools/fetch-onnxruntime.sh --gpu          # onnxruntime-gpu's libraries into .ort/lib
#   cargo build --release
#   tools/.venv/bin/python tools/make_bench_unet.py # target/bench/unet-128 (optional: timing)
#   bash tools/gpu_check.sh [OUT_DIR] [CUDA_DEVICE]
#
# Parity: for token ops on the host and as graphs, one ToMe image (r = 0.5) and one
# without, generated on cuda and on cpu, must be within 2/255 per channel (float
# rounding differs between the providers' kernels; a broken path gives noise).
# Timing: tools/bench_unet.py --device cuda (torch needs a CUDA build; skipped, with a
# note, when it has none or when the bench model is missing). Results go to OUT_DIR
# (default target/gpu_check).
set -euo pipefail

out=${1:-target/gpu_check}
device=${2:-cuda:0}
tomex=target/release/tomex
python=${PYTHON:-tools/.venv/bin/python}
[ -x "$python" ] || python=python3
mkdir -p "$out"

die() { echo "gpu_check: $*" >&2; exit 1; }
[ -x "$tomex" ] || die "$tomex missing: cargo build --release"
ls .ort/lib/libonnxruntime_providers_cuda.so >/dev/null 2>&1 \
  || die ".ort/lib has no CUDA provider: bash tools/fetch-onnxruntime.sh --gpu"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt" \
  || die "nvidia-smi failed: no usable GPU"

echo "== parity: cpu vs $device (tiny model)"
common=(generate --model tiny --prompt "a photo of a cat, highly detailed" --seed 42
        --steps 20 --width 128 --height 96)
for ops in host graph; do
  for ratio in 0 0.5; do
    for dev in cpu "$device"; do
      tag="${dev//:/}-$ops-r$ratio"
      "$tomex" --token-ops "$ops" "${common[@]}" --device "$dev" --tome-ratio "$ratio" \
        --out "$out/$tag.png" | tee -a "$out/parity.log"
    done
  done
done
"$python" - "$out" "${device//:/}" <<'EOF' | tee -a "$out/parity.log"
import sys
from pathlib import Path

import numpy as np
from PIL import Image

out, dev = Path(sys.argv[1]), sys.argv[2]
worst = 0
for ops in ("host", "graph"):
    for ratio in ("0", "0.5"):
        a = np.asarray(Image.open(out / f"cpu-{ops}-r{ratio}.png"), dtype=np.int16)
        b = np.asarray(Image.open(out / f"{dev}-{ops}-r{ratio}.png"), dtype=np.int16)
        d = int(np.abs(a - b).max())
        worst = max(worst, d)
        print(f"token ops {ops}, r = {ratio}: max |cpu - {dev}| = {d}/255, "
              f"{int((a != b).sum())} of {a.size} channels differ")
print("parity:", "ok" if worst <= 2 else "FAILED", f"(worst {worst}/255, bound 2/255)")
sys.exit(0 if worst <= 2 else 1)
EOF

echo "== timing: one UNet evaluation on $device"
if [ ! -f target/bench/unet-128/onnx/unet/model.onnx ]; then
  echo "skipped: target/bench/unet-128 missing (tools/make_bench_unet.py)" | tee "$out/timing.md"
  exit 0
fi
only=()
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
  || { echo "note: torch without CUDA here: tomex only"; only=(--only tomex); }
for ops in host graph; do
  "$python" tools/bench_unet.py --device "$device" --token-ops "$ops" --latents 64,96 \
    --exported-max 96 --repeats 5 "${only[@]}" --json "$out/bench_unet-$ops.json" \
    > "$out/timing-$ops.md"
done
echo "gpu_check: done; see $out/"
