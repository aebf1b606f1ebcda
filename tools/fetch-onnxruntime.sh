#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library from PyPI's `onnxruntime` wheel (or
# `onnxruntime-gpu` with --gpu) into .ort/lib/, where tomex looks for it.
# Needs only python3 with pip and access to PyPI.
set -euo pipefail

version="1.31.1"   # ort 2.0.0-rc.15 is built for ONNX Runtime 1.31
package="onnxruntime"
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
wheel="$(ls "$work"/*.whl)"

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
echo "$package==$version" > "$stamp"
echo "ONNX Runtime ($package $version) is in $dest"
