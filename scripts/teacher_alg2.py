"""Copy a teacher's Algorithm 2 rows (1,000 ancestral steps, every seed) out of its quality table into a
sweep file of their own, for the distillation folders of docs/quality/distill:

    python scripts/teacher_alg2.py TEACHER TABLE OUT.json

The rows must be of the teacher's weights (``ddpm.evaluate.sweep.check_same_model``: the weight
fingerprint, or path and step for rows recorded before fingerprints), so a table of another model is
refused rather than quietly compared with.
"""

from __future__ import annotations

import json
import sys

from ddpm.checkpoint import load_checkpoint
from ddpm.errors import ConfigError
from ddpm.evaluate.sweep import check_same_model, weights_fingerprint


def _fail(message: str) -> None:
    print(f"teacher_alg2.py: {message}", file=sys.stderr)
    sys.exit(2)


def main(teacher: str, table: str, out: str) -> None:
    data = json.load(open(table))
    rows = [r for r in data["rows"] if r["sampler"] == "ddpm" and r["steps"] == 1000]
    if not rows:
        _fail(f"{table} has no Algorithm 2 row (sampler ddpm, 1000 steps); measure the teacher's table first")
    ck = load_checkpoint(teacher)
    try:
        check_same_model(rows, ck, weights_fingerprint(ck.model), table)
    except ConfigError:
        _fail(f"{table}: its Algorithm 2 rows are not of the weights of {teacher}; give the teacher's own table")
    with open(out, "w") as f:
        json.dump({**{k: v for k, v in data.items() if k != "rows"}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        _fail("usage: python scripts/teacher_alg2.py TEACHER TABLE OUT.json")
    main(*sys.argv[1:])
