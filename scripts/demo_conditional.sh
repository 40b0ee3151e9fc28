#!/usr/bin/env bash
# Class-conditional digits with classifier-free guidance: a 10-row PNG grid, row r = digit r.
#
#   bash scripts/demo_conditional.sh [CKPT] [OUT.png]
#
# OUT defaults to outputs/digits_conditional.png (git-ignored); the image shown in the README,
# docs/images/digits_conditional.png, is only replaced when you name it as OUT.
# CKPT: a class-conditional checkpoint (run dir, checkpoint dir or weights file); default: the
# bundled digits checkpoint. Settings via environment: PER_ROW (8), GUIDANCE (2.0, Ho & Salimans'
# w: eps = (1+w) eps(x,c) - w eps(x,null)), SAMPLER (ddim), STEPS (50), SEED (0), SCALE (3: the
# grid is upscaled with nearest neighbours so 28x28 digits are readable in the docs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CKPT=${1:-src/ddpm/assets/digits}
OUT=${2:-outputs/digits_conditional.png}
start=$(date +%s.%N)
"$PY" - "$CKPT" "$OUT" <<'PYEOF'
import os
import sys

import torch

from ddpm.errors import UserError
from ddpm.images import make_grid, save_image, to_uint8
from ddpm.sampling.api import generate
from ddpm.checkpoint import load_checkpoint

ckpt_path, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
per_row = int(os.environ.get("PER_ROW", 8))
guidance = float(os.environ.get("GUIDANCE", 2.0))
sampler = os.environ.get("SAMPLER", "ddim")
steps = int(os.environ.get("STEPS", 50))
seed = int(os.environ.get("SEED", 0))
scale = int(os.environ.get("SCALE", 3))
torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count() or 1)))
try:
    ckpt = load_checkpoint(ckpt_path)
    classes = ckpt.config.model.num_classes
    if classes is None:
        raise UserError(f"{ckpt_path} is unconditional; this demo needs a class-conditional checkpoint")
    labels = [r for r in range(classes) for _ in range(per_row)]
    x = generate(ckpt.model, ckpt.diffusion, len(labels), batch_size=len(labels), sampler=sampler,
                 steps=steps, class_labels=labels, guidance=guidance, seed=seed, progress=sys.stderr.isatty())
except UserError as e:
    sys.exit(f"demo_conditional: error: {e}")
grid = make_grid(to_uint8(x), nrow=per_row)
grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
save_image(grid, out)
print(f"wrote {out}: {classes} rows (row r = digit r) x {per_row}, {sampler} {steps} steps, "
      f"guidance w={guidance}, seed {seed}, {ckpt.weights} weights of step {ckpt.step}")
PYEOF
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" 'BEGIN { printf "wall time %.1f s\n", e - s }'
