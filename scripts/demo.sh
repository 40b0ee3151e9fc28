#!/usr/bin/env bash
# The offline demo: install, fine-tune the shipped digits checkpoint briefly with the real Trainer,
# then sample a grid of digits with the paper's 1000-step ancestral sampler and the EMA weights.
# No GPU or internet needed (after the installation). Knobs (environment variables):
#   DEMO_OUT (outputs/demo)  DEMO_STEPS fine-tuning steps (60)  DEMO_SAMPLES images (20)
#   DEMO_CLASS  'all' = column c shows digit c (default); 'none' = unconditional (null label); or 0-9
#   DEMO_THREADS torch CPU threads (2)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh .venv
PY=.venv/bin/python
OUT="${DEMO_OUT:-outputs/demo}"
STEPS="${DEMO_STEPS:-60}"
N="${DEMO_SAMPLES:-20}"
CLASS="${DEMO_CLASS:-all}"
THREADS="${DEMO_THREADS:-2}"
start=$(date +%s)
rm -rf "$OUT/run"
mkdir -p "$OUT"
echo "== fine-tuning the shipped checkpoint for $STEPS steps on the bundled digits"
"$PY" -m ddpm train --init-from src/ddpm/assets/digits --run-dir "$OUT/run" --steps "$STEPS" \
  --threads "$THREADS" --set train.lr=2e-4 --set train.sample_every=0 --set train.log_every=10 --progress
echo "== sampling $N digits (1000 ancestral steps, EMA weights)"
class_args=()
[ "$CLASS" != "none" ] && class_args=(--class "$CLASS")
"$PY" -m ddpm sample --ckpt "$OUT/run" -n "$N" --batch-size "$N" --threads "$THREADS" "${class_args[@]}" \
  --nrow 10 --grid "$OUT/digits.png" --overwrite --progress
echo "== done in $(( $(date +%s) - start )) s; the grid is $OUT/digits.png"
