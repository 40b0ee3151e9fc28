#!/usr/bin/env bash
# FD against network calls for every fast sampler on the digits model (docs/sampling.md, "Fast samplers
# on the digits model"): N images per setting (default 500), seed 0, one thread, niced, into one resumable
# sweep file; the settings that answer "≤ 15 calls as good as Algorithm 2?" run first. Then the plot and
# the Markdown table of all rows. Algorithm 2 at 1000 steps is docs/quality/digits_table.json's row when
# it was measured on the same checkpoint, n and seed; set ALG2=1 to measure it here too.
#   Usage: bash scripts/solvers_sweep.sh        (CK, N, OUT, PY, ALG2 may be set in the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
CK="${CK:-src/ddpm/assets/digits}"
N="${N:-500}"
OUT="${OUT:-docs/quality/solvers_sweep}"
run() { nice -n 10 "$PY" -m ddpm eval sweep --ckpt "$CK" -n "$N" --json "$OUT.json" --threads 1 --no-progress "$@"; }
SOLVERS=dpmpp-2m,unipc,dpmpp-3m,euler,heun,dpmpp-2s,dpm-solver
run --samplers "$SOLVERS,ddim:eta=0" --steps 5,10,15                       # the target: ≤ 15 steps
run --samplers euler-ancestral,pc,langevin:n_steps=2 --steps 5,10,15     # stochastic and score-based
run --samplers ode:rtol=0.001:atol=0.001,ode:rtol=1e-05:atol=1e-05 --steps 1   # adaptive: NFE measured
run --samplers "$SOLVERS,ddim:eta=0,euler-ancestral,pc,langevin:n_steps=2" --steps 20,50
if [ "${ALG2:-0}" = 1 ]; then run --samplers ddpm --steps 1000; fi           # Algorithm 2
run --samplers ddim:eta=0 --steps 10 --plot "$OUT.png" --markdown "$OUT.md"   # (kept) redraw plot + table
