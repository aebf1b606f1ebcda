#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library from PyPI's `onnxruntime` wheel (or
# `onnxruntime-gpu` with --gpu) into .ort/lib/, where tomex looks for it.
# With --gpu it also fetches the CUDA 13 and cuDNN 9 libraries that build links
# against, from the PyPI wheels its `[cuda,cudnn]` extras name (versions pinned
# below, as pip resolved them on 2026-12-06), into .ort/lib/cuda/, which tomex loads
# before the CUDA provider starts (as `onnxruntime.preload_dlls()` does). The
# machine then needs only the NVIDIA driver (580 or newer for CUDA 13).
# Needs only python3 with pip and access to PyPI.
set -euo pipefail

version="1.31.1"   # ort 2.0.0-rc.15 is built for ONNX Runtime 1.31
package="onnxruntime"
# onnxruntime-gpu 1.31.1's extras: cuda = nvrtc, runtime, cufft, curand (13.x);
# cudnn = nvidia-cudnn-cu13 9.x, which brings cuBLAS; cuFFT needs nvJitLink.
cuda_wheels=(
  nvidia-cuda-runtime==13.5.37
  nvidia-cublas==13.10.0.20
  nvidia-cufft==12.5.0.14
  nvidia-curand==10.4.5.25
  nvidia-cuda-nvrtc==13.5.37
  nvidia-nvjitlink==13.5.37
  nvidia-cudnn-cu13==9.28.1.4
)
case "${1:-}" in
  --gpu) package="onnxruntime-gpu" ;;
  "") ;;
  *) echo "usage: $0 [--gpu]" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.ort/lib"
stamp="$dest/.fetched"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$package==$version" ]; then
  echo "ONNX Runtime ($package $version) already in $dest"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --dest "$work" "$package==$version"
wheel="$(ls "$work"/onnxruntime*.whl)"
if [ "$package" = "onnxruntime-gpu" ]; then
  mkdir -p "$work/cuda"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$work/cuda" "${cuda_wheels[@]}"
fi

rm -rf "$dest"
mkdir -p "$dest"
# The wheel is a zip: take the shared libraries out of onnxruntime/capi/.
python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and ".so" in base and "pybind11" not in base:
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
            print("  " + base)
PY
if [ "$package" = "onnxruntime-gpu" ]; then
  mkdir -p "$dest/cuda"
  # The shared libraries of nvidia/cu13/lib and nvidia/cudnn/lib, names kept (cuDNN
  # loads its sub-libraries by name from beside itself).
  python3 - "$dest/cuda" "$work"/cuda/*.whl <<'PY'
import sys, zipfile, os
dest, wheels = sys.argv[1], sys.argv[2:]
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            parts = name.split("/")
            if len(parts) == 4 and parts[0] == "nvidia" and parts[2] == "lib" and ".so" in parts[3]:
                with z.open(name) as src, open(os.path.join(dest, parts[3]), "wb") as out:
                    out.write(src.read())
                print("  cuda/" + parts[3])
PY
fi
echo "$package==$version" > "$stamp"
echo "ONNX Runtime ($package $version) is in $dest"
