#!/usr/bin/env bash
# The measurements of docs/distillation.md: every distilled digits model and its teacher with
# `ddpm eval sweep` (n = 500, seed 0, requested classes i % 10, EMA weights), the noisy classifier's
# held-out accuracy by noise level, and classifier guidance against the scale s. Each sweep file is
# resumable (finished rows are kept), so the script can be rerun after an interruption.
#
#   TEACHER=runs/teacher8000 RUNS=runs OUT=docs/quality/distill bash scripts/measure_distillation.sh
#
# cd_800.json and ct_700.json are earlier measurements of the same runs, where they had stopped then.
# RUNS holds the trained procedures: pd/steps-K (ddpm distill progressive), cd (ddpm distill
# consistency), digits-ct (ddpm train --preset digits-ct) and digits-classifier (ddpm train --preset
# digits-classifier). Then `python scripts/distill_table.py "$OUT"` prints the tables.
set -euo pipefail
PY=${PY:-.venv/bin/python}
TEACHER=${TEACHER:?set TEACHER to the teacher checkpoint}
RUNS=${RUNS:-runs}
OUT=${OUT:-docs/quality/distill}
N=${N:-500}
mkdir -p "$OUT"
sweep() { nice -n 10 "$PY" -m ddpm eval sweep -n "$N" --threads 1 --no-progress "$@"; }

# the teacher with DDIM at the students' step counts: the default (uniform) spacing and the students' own
sweep --ckpt "$TEACHER" --samplers ddim --steps 8,4,2,1 --json "$OUT/teacher_ddim_uniform.json"
sweep --ckpt "$TEACHER" --samplers ddim --steps 8,4,2,1 --spacing trailing --json "$OUT/teacher_ddim_trailing.json"

# the teacher's Algorithm 2 at 1000 steps: its row of a quality table of the same weights, n and seed
# (ALG2_TABLE: docs/quality/digits_table.json for the shipped model, digits_table_annealed_v1.json for the
# one shipped before it, digits_table_ema.json for the EMA of step 12,000, the teacher of the recorded
# runs); scripts/teacher_alg2.py refuses a table of other weights
"$PY" scripts/teacher_alg2.py "$TEACHER" "${ALG2_TABLE:-docs/quality/digits_table.json}" "$OUT/teacher_alg2.json"

# progressive distillation: each student at its own step count (its recorded sampler: DDIM, trailing),
# one file per student (a sweep file holds the rows of one model)
for k in 8 4 2 1; do
  if [ -d "$RUNS/pd/steps-$k" ]; then
    sweep --ckpt "$RUNS/pd/steps-$k" --samplers ddim --steps "$k" --spacing trailing --json "$OUT/steps-$k.json"
  fi
done

# consistency models: one-step and multistep consistency sampling; the distillation's kept checkpoints
# (1 and 4 steps: its learning curve) and the shipped float16 copy
if [ -d "$RUNS/cd" ]; then
  sweep --ckpt "$RUNS/cd" --samplers consistency --steps 1,2,4,8 --json "$OUT/cd.json"
  mkdir -p "$OUT/cd_trend"
  for c in $(ls -d "$RUNS"/cd/checkpoints/step_* | head -n -1); do
    sweep --ckpt "$c" --samplers consistency --steps 1,4 --json "$OUT/cd_trend/$(basename "$c" | sed 's/step_0*/step_/').json"
  done
fi
[ -d src/ddpm/assets/digits_consistency ] && sweep --ckpt src/ddpm/assets/digits_consistency \
  --samplers consistency --steps 1,2,4,8 --json "$OUT/cd_shipped.json"
[ -d "$RUNS/digits-ct" ] && sweep --ckpt "$RUNS/digits-ct" --samplers consistency --steps 1,2,4,8 --json "$OUT/ct.json"

# classifier guidance: held-out accuracy by t, then s = 0, 1, 2, 5, 10 on the teacher's null label
if [ -d "$RUNS/digits-classifier" ]; then
  nice -n 10 "$PY" -m ddpm eval classifier --ckpt "$RUNS/digits-classifier" --threads 1 --no-progress \
    --json "$OUT/classifier_accuracy.json"
  sweep --ckpt "$TEACHER" --model-null-label --classifier "$RUNS/digits-classifier" \
    --classifier-scale 0,1,2,5,10 --samplers ddim --steps "${GUIDED_STEPS:-20}" --json "$OUT/classifier_guidance.json"
fi
"$PY" scripts/distill_table.py "$OUT"
