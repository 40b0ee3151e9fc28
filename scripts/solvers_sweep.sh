#!/usr/bin/env bash
# FD against network calls for the fast samplers on the digits model (docs/sampling.md, "Fast samplers on
# the digits model"): N images per setting (default 500), seed 0, one thread, niced, into one resumable
# sweep file, most informative settings first (the target is "≤ 15 network calls as good as Algorithm 2").
# 50 steps only for the one-call-per-step samplers (the two- and three-call ones would cost 99-148 calls
# per image at a point where every solver has converged). Algorithm 2 at 1000 steps is the row of
# docs/quality/digits_table.json (same checkpoint, n and seed); set ALG2=1 to measure it here too.
#   Usage: bash scripts/solvers_sweep.sh        (CK, N, OUT, PY, ALG2 may be set in the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
CK="${CK:-src/ddpm/assets/digits}"
N="${N:-500}"
OUT="${OUT:-docs/quality/solvers_sweep}"
run() { nice -n 10 "$PY" -m ddpm eval sweep --ckpt "$CK" -n "$N" --json "$OUT.json" --threads 1 --no-progress "$@"; }
ONE=dpmpp-2m,unipc,dpmpp-3m,euler,ddim:eta=0,euler-ancestral          # one network call per step
TWO=heun,dpmpp-2s,dpm-solver,pc,langevin:n_steps=2                     # two or three per step
run --samplers dpmpp-2m,unipc,dpmpp-3m,euler,heun,dpmpp-2s,dpm-solver,ddim:eta=0 --steps 5,10,15
run --samplers ode:rtol=0.001:atol=0.001,ode:rtol=1e-05:atol=1e-05 --steps 1   # adaptive: NFE measured
run --samplers euler-ancestral,pc,langevin:n_steps=2 --steps 5,10,15
run --samplers "$ONE,$TWO" --steps 20
run --samplers "$ONE" --steps 50
if [ "${ALG2:-0}" = 1 ]; then run --samplers ddpm --steps 1000; fi           # Algorithm 2
run --samplers ddim:eta=0 --steps 10 --plot "$OUT.png" --markdown "$OUT.md"   # (kept) redraw plot + table
