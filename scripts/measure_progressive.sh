#!/usr/bin/env bash
# One progressive-distillation run measured against its teacher, into a folder laid out like
# docs/quality/distill/pd_*_teacher/ (printed by scripts/distill_table.py):
#
#   TEACHER=src/ddpm/assets/digits RUN=runs/pd-long OUT=docs/quality/distill/pd_long_teacher \
#       ALG2_TABLE=docs/quality/digits_table.json bash scripts/measure_progressive.sh
#
# - teacher_alg2.json: the teacher's Algorithm 2 rows (1,000 steps, every seed) copied from its quality
#   table, which must be of the same weights (the fingerprints are compared);
# - teacher_ddim_trailing.json: the teacher's DDIM (η = 0, trailing spacing — the students' sampler) at
#   16, 8 and 4 steps, seed 0;
# - steps-K.json: every student RUN/steps-K at its own K steps, seed 0;
# - sets/: the last student and the teacher's DDIM at the same steps on SEEDS (independent sets of N),
#   whose std over the sets is the ± that judges a target.
# Every sweep file is resumable: finished rows are kept, so a rerun after an interruption goes on.
set -euo pipefail
PY=${PY:-.venv/bin/python}
TEACHER=${TEACHER:?set TEACHER to the teacher checkpoint}
RUN=${RUN:?set RUN to the --run-dir of ddpm distill progressive}
OUT=${OUT:?set OUT to the output folder}
ALG2_TABLE=${ALG2_TABLE:-docs/quality/digits_table.json}
N=${N:-500}
SEEDS=${SEEDS:-0 1 2 3 4}
THREADS=${THREADS:-2}
mkdir -p "$OUT/sets"
sweep() { "$PY" -m ddpm eval sweep -n "$N" --threads "$THREADS" --no-progress "$@"; }

"$PY" scripts/teacher_alg2.py "$TEACHER" "$ALG2_TABLE" "$OUT/teacher_alg2.json"

sweep --ckpt "$TEACHER" --samplers ddim --steps 16,8,4 --spacing trailing --json "$OUT/teacher_ddim_trailing.json"
last=
for dir in $(ls -d "$RUN"/steps-* | sort -t- -k2 -n -r); do
  k=${dir##*-}
  sweep --ckpt "$dir" --samplers ddim --steps "$k" --spacing trailing --json "$OUT/steps-$k.json"
  last=$k
done
[ -n "$last" ] || { echo "measure_progressive.sh: no student in $RUN (expected $RUN/steps-K)" >&2; exit 2; }

for seed in $SEEDS; do
  sweep --ckpt "$RUN/steps-$last" --samplers ddim --steps "$last" --spacing trailing --seed "$seed" \
    --json "$OUT/sets/student_$last.json" --markdown "$OUT/sets/student_$last.md"
  sweep --ckpt "$TEACHER" --samplers ddim --steps "$last" --spacing trailing --seed "$seed" \
    --json "$OUT/sets/teacher_ddim_$last.json" --markdown "$OUT/sets/teacher_ddim_$last.md"
done
"$PY" scripts/distill_table.py "$(dirname "$OUT")"
