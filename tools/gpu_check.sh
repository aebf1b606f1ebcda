#!/usr/bin/env bash
# The CUDA checks for a machine with an NVIDIA GPU: parity of tomex's CUDA path with its
# CPU path on the embedded tiny model, then the UNet timing table against diffusers +
# tomesd on the GPU. Nothing is fetched here: prepare where the package registries are
# reachable, then run this (from the repository root).
#
#   bash tools/fetch-onnxruntime.sh --gpu          # onnxruntime-gpu and its CUDA/cuDNN libraries into .ort/lib
#   cargo build --release
#   tools/.venv/bin/python tools/make_bench_unet.py # target/bench/unet-128 (optional: timing)
#   bash tools/gpu_check.sh [OUT_DIR] [CUDA_DEVICE]
#
# BENCH_DIR (default target/bench/unet-128) picks the timing model, e.g. the full-width
# one from `make_bench_unet.py --channels 320,640,1280,1280 --out target/bench/unet-320`;
# LATENTS (default 64,96), CASES (default: all of bench_unet.py's) and PRECISIONS
# (default "fp32 fp16") narrow the tables; ONLY=parity or ONLY=timing runs one half.
#
# Batch: two images in one call, each within 2/255 of its own call; generate prints the
# peak GPU memory (NVML) of each call.
# Parity: for token ops on the host, as graphs and as one graph (on CUDA in fixed buffers,
# captured as a CUDA graph unless parity.log warns that ONNX Runtime refused), one ToMe image (r = 0.5) and one
# without, generated on cuda and on cpu, must be within 2/255 per channel (float
# rounding differs between the providers' kernels; a broken path gives noise); with
# --precision fp16 on cuda, within 4/255 of the float32 image on cpu.
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

if [ "${ONLY:-}" != timing ]; then
  echo "== parity: cpu vs $device (tiny model)"
  common=(generate --model tiny --prompt "a photo of a cat, highly detailed" --seed 42
          --steps 20 --width 128 --height 96)
  for ops in host graph one-graph; do
    for ratio in 0 0.5; do
      for dev in cpu "$device"; do
        for precision in fp32 fp16; do
          tag="${dev//:/}-$ops-r$ratio-$precision"
          # stderr too: one-graph on CUDA warns there when ONNX Runtime will not capture
          "$tomex" --token-ops "$ops" --precision "$precision" "${common[@]}" --device "$dev" \
            --tome-ratio "$ratio" --out "$out/$tag.png" 2>&1 | tee -a "$out/parity.log"
        done
      done
    done
  done
  "$python" - "$out" "${device//:/}" <<'EOF' | tee -a "$out/parity.log"
import sys
from pathlib import Path

import numpy as np
from PIL import Image

out, dev = Path(sys.argv[1]), sys.argv[2]
load = lambda name: np.asarray(Image.open(out / f"{name}.png"), dtype=np.int16)
ok = True
# fp32: the providers' kernels round differently (1/255). fp16 on the GPU computes in
# float16 where the CPU provider computes float16 nodes in float32; it is compared with
# the float32 image, which a broken half path (noise) would fail.
for precision, bound in (("fp32", 2), ("fp16", 4)):
    for ops in ("host", "graph", "one-graph"):
        for ratio in ("0", "0.5"):
            a = load(f"cpu-{ops}-r{ratio}-fp32")
            b = load(f"{dev}-{ops}-r{ratio}-{precision}")
            d = int(np.abs(a - b).max())
            ok &= d <= bound
            print(f"{precision}, token ops {ops}, r = {ratio}: max |cpu fp32 - {dev} {precision}| = "
                  f"{d}/255 (bound {bound}), {int((a != b).sum())} of {a.size} channels differ")
print("parity:", "ok" if ok else "FAILED")
sys.exit(0 if ok else 1)
EOF
  echo "== batch: two images in one call against each alone on $device (and peak GPU memory)"
  batch=(generate --model tiny --steps 20 --width 128 --height 96 --device "$device" --tome-ratio 0.5)
  "$tomex" "${batch[@]}" --prompt "a photo of a cat, highly detailed" --prompt "a red fox" \
    --seed 42 --out "$out/batch.png" | tee -a "$out/batch.log"
  "$tomex" "${batch[@]}" --prompt "a photo of a cat, highly detailed" --seed 42 \
    --out "$out/alone-0.png" | tee -a "$out/batch.log"
  "$tomex" "${batch[@]}" --prompt "a red fox" --seed 43 --out "$out/alone-1.png" | tee -a "$out/batch.log"
  "$python" - "$out" <<'EOF' | tee -a "$out/batch.log"
import sys
from pathlib import Path

import numpy as np
from PIL import Image

out = Path(sys.argv[1])
load = lambda name: np.asarray(Image.open(out / f"{name}.png"), dtype=np.int16)
# The CPU makes a batch's images pixel for pixel (tests/batch.rs); a GPU's kernels may
# choose other algorithms per batch size: the bound is the providers' 2/255.
worst = max(int(np.abs(load(f"batch-{i}") - load(f"alone-{i}")).max()) for i in (0, 1))
print(f"batch: max |batch - alone| = {worst}/255 (bound 2)")
sys.exit(0 if worst <= 2 else 1)
EOF
fi

[ "${ONLY:-}" = parity ] && exit 0
echo "== timing: one UNet evaluation on $device"
bench_dir=${BENCH_DIR:-target/bench/unet-128}
if [ ! -f "$bench_dir/onnx/unet/model.onnx" ]; then
  echo "skipped: $bench_dir missing (tools/make_bench_unet.py)" | tee "$out/timing.md"
  exit 0
fi
cases=()
[ -n "${CASES:-}" ] && cases=(--cases "$CASES")
only=()
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
  || { echo "note: torch without CUDA here: tomex only"; only=(--only tomex); }
for precision in ${PRECISIONS:-fp32 fp16}; do
  side=("${only[@]}")
  for ops in graph one-graph host; do
    "$python" tools/bench_unet.py --device "$device" --token-ops "$ops" --precision "$precision" \
      --model-dir "$bench_dir" --latents "${LATENTS:-64,96}" --exported-max 96 --repeats 5 \
      "${side[@]}" "${cases[@]}" --json "$out/bench_unet-$ops-$precision.json" \
      > "$out/timing-$ops-$precision.md"
    # torch's side does not depend on where tomex's token ops run: measure it once.
    side=(--only tomex)
  done
done
echo "gpu_check: done; see $out/"
