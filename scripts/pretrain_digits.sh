#!/usr/bin/env bash
# Re-create the shipped demo checkpoint src/ddpm/assets/digits/ with the project's own `ddpm train`.
# This is the exact recipe used for the shipped weights (see src/ddpm/assets/digits/README.md for the
# hardware and wall time): the `digits` preset (class-conditional, label drop-out 0.1, GroupNorm with 8
# groups) at batch 32, one CPU thread, 12,000 steps, checkpoints every 400 steps; then the average of the
# raw weights of the last $AVERAGE checkpoints up to step $STEPS (10,000 ... 12,000: stochastic weight
# averaging, `ddpm export --average-last`), stored in float16.
#   Usage: bash scripts/pretrain_digits.sh    (STEPS, AVERAGE, RUN, PY may be set in the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
RUN="${RUN:-runs/digits-pretrain}"
STEPS="${STEPS:-12000}"
AVERAGE="${AVERAGE:-6}"
if [ -d "$RUN/checkpoints" ]; then
  "$PY" -m ddpm train --resume --run-dir "$RUN" --steps "$STEPS" --threads 1 --no-progress
else
  "$PY" -m ddpm train --preset digits --batch-size 32 --run-dir "$RUN" --steps "$STEPS" --threads 1 --no-progress \
      --set train.ckpt_every=400 --set train.keep_checkpoints=40
fi
step_dir="$RUN/checkpoints/$(printf 'step_%07d' "$STEPS")"
# the export writes a fresh directory: keep the asset's hand-written README.md.
readme=$(mktemp)
cp src/ddpm/assets/digits/README.md "$readme" 2>/dev/null || true
"$PY" -m ddpm export "$step_dir" src/ddpm/assets/digits --average-last "$AVERAGE" --fp16 --overwrite
[ -s "$readme" ] && cp "$readme" src/ddpm/assets/digits/README.md
rm -f "$readme"
chmod 644 src/ddpm/assets/digits/*
