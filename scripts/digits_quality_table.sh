#!/usr/bin/env bash
# The quality table of the shipped digits model (docs/quality.md): every setting at N images (default 500,
# --class all), into one resumable sweep file; then the plot and the Markdown table of all rows.
# The settings the targets compare (Algorithm 2, DDIM-10 and DDIM-50 with eta = 0) are measured on three
# seeds, i.e. three independent sets of N, so the table's ± for them is the spread over sets; the rest on
# seed 0 (their ± is the within-set delete-half jackknife). Every row's 8-bit images are kept in SAMPLES:
# delete the JSON and run again to re-score all rows without sampling (e.g. after an instrument change).
# THREADS (default 1) changes the seconds per image, and may move the last digits of a score through
# the floating-point summation order.
# FEATURES (default digits) picks the instrument: digits-v1 reproduces tables measured with version 1.
#   Usage: bash scripts/digits_quality_table.sh   (CK, FEATURES, N, OUT, PY, SAMPLES, THREADS may be set)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
CK="${CK:-src/ddpm/assets/digits}"
N="${N:-500}"
OUT="${OUT:-docs/quality/digits_table}"
SAMPLES="${SAMPLES:-outputs/quality_samples/$(basename "$OUT")}"
THREADS="${THREADS:-1}"
FEATURES="${FEATURES:-digits}"
run() { "$PY" -m ddpm eval sweep --ckpt "$CK" -n "$N" --json "$OUT.json" --samples "$SAMPLES" \
        --threads "$THREADS" --features "$FEATURES" --no-progress "$@"; }
for seed in 0 1 2; do run --seed "$seed" --samplers ddpm --steps 1000; done   # Algorithm 2
# Algorithm 2 with sigma^2 = beta-tilde (Ho et al. 2020, Sec. 3.2) instead of the config's beta: DDIM
# with eta = 1 on all 1,000 steps is exactly that sampler (tests/test_ddim.py)
run --samplers ddim:eta=1 --steps 1000
run --samplers ddpm --steps 50,100,250                                       # respaced ancestral
run --samplers ddim:eta=0,ddim:eta=1 --steps 10,20,50,100                    # DDIM
for seed in 1 2; do run --seed "$seed" --samplers ddim:eta=0 --steps 10,50; done
run --samplers ddim:eta=0 --steps 20 --guidance 1,2,4 \
    --plot "$OUT.png" --markdown "$OUT.md"                                   # classifier-free guidance
