#!/usr/bin/env bash
# The quality table of the shipped digits model (docs/quality.md): every setting at N images (default 500),
# seed 0, one thread, into one resumable sweep file; then the plot and the Markdown table of all rows.
# THREADS (default 1) changes the seconds per image, and may move the last digits of a score through
# the floating-point summation order.
#   Usage: bash scripts/digits_quality_table.sh   (CK, N, OUT, PY, THREADS may be set in the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
CK="${CK:-src/ddpm/assets/digits}"
N="${N:-500}"
OUT="${OUT:-docs/quality/digits_table}"
THREADS="${THREADS:-1}"
run() { "$PY" -m ddpm eval sweep --ckpt "$CK" -n "$N" --json "$OUT.json" --threads "$THREADS" --no-progress "$@"; }
run --samplers ddpm --steps 1000                              # Algorithm 2
run --samplers ddpm --steps 50,100,250                        # respaced ancestral
run --samplers ddim:eta=0,ddim:eta=1 --steps 10,20,50,100     # DDIM
run --samplers ddim:eta=0 --steps 20 --guidance 1,2,4 \
    --plot "$OUT.png" --markdown "$OUT.md"                    # classifier-free guidance (w = 0 is above)
