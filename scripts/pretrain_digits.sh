#!/usr/bin/env bash
# Re-create the shipped demo checkpoint src/ddpm/assets/digits/ with the project's own `ddpm train`.
# The exact recipe of the shipped weights (src/ddpm/assets/digits/README.md gives the hardware and wall
# times), in two runs:
#   1. the `digits` preset (class-conditional, label drop-out 0.1, GroupNorm with 8 groups), batch 32,
#      Adam at a constant 1e-3, 16,000 steps;
#   2. a new run started from step 16,000's weights (`--init-from`): 8,000 more steps whose learning rate
#      falls from 1e-3 to 0 on a cosine (seed 1, so the batches are not those of run 1's first steps);
# then the EMA weights of run 2's last step, stored in float16 (`ddpm export --fp16`).
#   Usage: bash scripts/pretrain_digits.sh    (RUN, THREADS, PY may be set in the environment)
# STEPS (run 1, default 16000), ANNEAL (run 2, default 8000) and DEST (default the shipped asset folder)
# train and export a variant elsewhere, e.g. the model shipped before 2026-12-07 (docs/quality.md,
# "Annealing the learning rate"): RUN=runs/digits-g8 STEPS=12000 ANNEAL=4000 DEST=runs/digits-g8-export
# CH (default 32) sets the U-Net's base width of run 1 (run 2 inherits its config), e.g. the ch 48 run of
# docs/quality.md ("Width"): RUN=runs/digits-ch48 CH=48 DEST=... .
# The shipped weights were trained with THREADS=2 (the default); another thread count changes the float
# rounding, hence the weights' last bits, not the recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
RUN="${RUN:-runs/digits-pretrain}"
THREADS="${THREADS:-2}"
STEPS="${STEPS:-16000}"
ANNEAL="${ANNEAL:-8000}"
DEST="${DEST:-src/ddpm/assets/digits}"
CH="${CH:-32}"
train() { "$PY" -m ddpm train --threads "$THREADS" --no-progress "$@"; }
if [ -d "$RUN/checkpoints" ]; then
  train --resume --run-dir "$RUN" --steps "$STEPS"
else
  train --preset digits --batch-size 32 --run-dir "$RUN" --steps "$STEPS" \
      --set train.ckpt_every=400 --set train.keep_checkpoints=40 --set model.ch="$CH"
fi
if [ -d "$RUN-anneal/checkpoints" ]; then
  train --resume --run-dir "$RUN-anneal"
else
  train --config "$RUN/config.json" --init-from "$RUN/checkpoints/$(printf step_%07d "$STEPS")" \
      --run-dir "$RUN-anneal" --steps "$ANNEAL" --set train.lr_schedule=cosine --set train.lr_final_ratio=0 --set train.seed=1
fi
# the export writes a fresh directory: keep the asset's hand-written README.md.
readme=$(mktemp)
cp "$DEST/README.md" "$readme" 2>/dev/null || true
"$PY" -m ddpm export "$RUN-anneal/checkpoints/$(printf step_%07d "$ANNEAL")" "$DEST" --fp16 --overwrite
[ -s "$readme" ] && cp "$readme" "$DEST/README.md"
rm -f "$readme"
chmod 644 "$DEST"/*
