#!/usr/bin/env bash
# Re-create the shipped demo checkpoint src/ddpm/assets/digits/ with the project's own `ddpm train`.
# This is the exact recipe used for the shipped weights (see docs/training.md for the hardware and
# wall time): the `digits` preset (class-conditional, label drop-out 0.1) at batch 32, one CPU thread,
# then the EMA weights of step $STEPS exported in float16.
#   Usage: bash scripts/pretrain_digits.sh            (STEPS, RUN, PY may be set in the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
RUN="${RUN:-runs/digits-pretrain}"
STEPS="${STEPS:-3200}"
if [ -d "$RUN/checkpoints" ]; then
  nice -n 5 "$PY" -m ddpm train --resume --run-dir "$RUN" --steps "$STEPS" --threads 1 --no-progress
else
  nice -n 5 "$PY" -m ddpm train --preset digits --batch-size 32 --run-dir "$RUN" --steps "$STEPS" --threads 1 --no-progress
fi
step_dir="$RUN/checkpoints/$(printf 'step_%07d' "$STEPS")"
# export_weights writes a fresh directory: keep the asset's hand-written README.md.
readme=$(mktemp)
cp src/ddpm/assets/digits/README.md "$readme" 2>/dev/null || true
"$PY" - "$step_dir" <<'PY'
import sys, torch
from ddpm.checkpoint import export_weights
print(export_weights(sys.argv[1], "src/ddpm/assets/digits", dtype=torch.float16))
PY
[ -s "$readme" ] && cp "$readme" src/ddpm/assets/digits/README.md
rm -f "$readme"
