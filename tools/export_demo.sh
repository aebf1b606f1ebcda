#!/usr/bin/env bash
# Exports the trained demo model (tools/demo/diffusers, from tools/train_demo.py) the way a
# user exports Stable Diffusion: optimum's ONNX exporter, into models/demo; then pins it,
# and the demo's FID feature network, in models.lock.
#
# optimum's exporter (optimum-onnx) needs transformers 4, so it lives in a venv of its own,
# tools/.work/venv-export (tools/requirements-export.txt), beside the reference stack's.
#
# Usage (from the repository root): bash tools/export_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv=tools/.work/venv-export
if [ ! -x "$venv/bin/optimum-cli" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -r tools/requirements-export.txt
fi

rm -rf models/demo
"$venv/bin/optimum-cli" export onnx --model tools/demo/diffusers --task text-to-image models/demo
# The exporter copies the diffusers folder's configs and tokenizer beside the graphs.
ls -R models/demo

cargo run --release --quiet -- models add demo models/demo \
  --source "tools/train_demo.py (trained on tools/demo_world.py), exported by tools/export_demo.sh: optimum-cli export onnx --task text-to-image"
cargo run --release --quiet -- models add demo-fid models/demo_fid/features.onnx \
  --source "tools/train_demo.py: the demo world's feature network with pytorch-fid's four outputs; NOT Inception, its FIDs compare only with each other"
