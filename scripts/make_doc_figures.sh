#!/usr/bin/env bash
# Re-create the example figures shown in the README from the shipped digits checkpoint (CPU, minutes).
# Each PNG carries its provenance (checkpoint, sampler, seed, versions, wall time) in its text chunk
# and in a NAME.png.json sidecar.
#   Usage: bash scripts/make_doc_figures.sh [CKPT]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
CKPT="${1:-src/ddpm/assets/digits}"
OUT=docs/images
mkdir -p "$OUT"
"$PY" -m ddpm figure progressive --ckpt "$CKPT" --chains 4 --frames 10 --out "$OUT/fig6_progressive.png" --overwrite
"$PY" -m ddpm figure shared --ckpt "$CKPT" --branch-at 1000,750,500,250 --samples 6 --out "$OUT/fig7_shared.png" --overwrite
"$PY" -m ddpm figure interpolate --ckpt "$CKPT" --data digits --split test --index 0 160 \
  --t 0,250,500,750,1000 --lambdas 3 --out "$OUT/fig9_interpolation.png" --overwrite
