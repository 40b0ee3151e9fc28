"""The measured table of docs/distillation.md from the JSON files of scripts/measure_distillation.sh.

    python scripts/distill_table.py docs/quality/distill            # prints Markdown

Every row is one `ddpm eval sweep` row (n images, seed, FD and KID with the ± the row was scored with —
the bootstrap and subset stds for rows recorded before 2026-12-07, see docs/quality.md —, class
accuracy ± binomial std); the floor is the real-vs-real floor at the same n. Training times come from
``train_times.json`` (wall-clock and CPU seconds of each procedure, written by the measuring script).
Every progressive student has its own file ``steps-K.json`` (a sweep file holds one model's rows); the
rows of one setting measured on several seeds (independent sets) print as one, mean ± std over the sets.
``sets/`` holds such repeated measurements of the last student and of its teacher's DDIM at the same
steps (scripts/measure_progressive.sh), ``rerun_steps-K.json`` a re-run of the last round and
``finetune_steps-K.json`` that re-run trained on; ``snr_steps-K.json`` a first round weighted by SNR,
``longer_steps-8.json`` the first round's student trained on, ``longer_steps-4.json`` the round
distilled from it and ``shipped_steps-4.json`` that student as shipped (float16).
Progressive distillation from later teachers lives in sub-folders ``pd_*_teacher/`` laid out the same
way (the teacher's files beside its students', a ``train_times.json`` of their own); each gets a table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ddpm.evaluate.sweep import MIN_SETS_FOR_STD, aggregate_seeds

# (label, file, which procedure's training time)
SOURCES = (
    ("teacher, Algorithm 2", "teacher_alg2.json", None),
    ("teacher, DDIM (uniform)", "teacher_ddim_uniform.json", None),
    ("teacher, DDIM (trailing)", "teacher_ddim_trailing.json", None),
    ("teacher, DDIM (trailing), independent sets", "sets/teacher_ddim_*.json", None),
    ("progressive distillation", "steps-*.json", "progressive"),
    ("progressive distillation, independent sets", "sets/student_*.json", None),
    ("progressive distillation, last round re-run", "rerun_steps-*.json", "progressive-rerun"),
    ("progressive distillation, re-run fine-tuned", "finetune_steps-*.json", "progressive-finetune"),
    ("progressive distillation, round 1 weighted by SNR", "snr_steps-*.json", "progressive-snr"),
    ("progressive distillation, round 1 trained on", "longer_steps-8.json", "progressive-round1-longer"),
    ("progressive distillation, round 2 from that", "longer_steps-4.json", "progressive-round2-from-longer"),
    ("progressive distillation, shipped (float16)", "shipped_steps-4.json", None),
    ("consistency distillation, 800 steps", "cd_800.json", "consistency-distillation-800"),
    ("consistency distillation, 5,000 steps", "cd.json", "consistency-distillation"),
    ("consistency distillation, shipped (float16)", "cd_shipped.json", None),
    ("consistency training, step 700", "ct_700.json", "consistency-training-700"),
    ("consistency training", "ct.json", "consistency-training"),
)


def _fmt_time(t: dict | None) -> str:
    if not t:
        return ""
    wall, cpu = t.get("wall_s"), t.get("cpu_s")
    parts = []
    if wall is not None:
        parts.append(f"{wall / 60:.0f} min wall")
    if cpu is not None:
        parts.append(f"{cpu / 60:.0f} min CPU")
    steps = f"{t['steps']} steps" if "steps" in t else ""
    return ", ".join(x for x in (steps, " / ".join(parts)) if x)


def table(folder: Path) -> str:
    times = json.loads((folder / "train_times.json").read_text()) if (folder / "train_times.json").is_file() else {}
    lines = ["| method | sampler | NFE | FD | KID | class accuracy | training |",
             "|---|---|---:|---:|---:|---:|---|"]
    floor, n = None, None
    for label, pattern, proc in SOURCES:
        rows = []
        for path in folder.glob(pattern):
            data = json.loads(path.read_text())
            floor = floor or data.get("floor")
            rows += aggregate_seeds(data["rows"])  # a file holds one model: its seeds are independent sets
        for i, r in enumerate(sorted(rows, key=lambda r: -r["nfe"])):
            n = r["n"]
            acc = "" if r.get("accuracy") is None else f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f} %"
            train = _fmt_time(times.get(proc)) if i == 0 else ""
            sets = f", {r['sets']} sets (± over them)" if r["sets"] >= MIN_SETS_FOR_STD else (
                f", seeds {r['seeds']}" if r["sets"] > 1 else "")
            lines.append(f"| {label} | {r['describe']}{sets} | {r['nfe']} | {r['fd']:.2f} ± {r['fd_std']:.2f} | "
                         f"{r['kid']:.4f} ± {r['kid_std']:.4f} | {acc} | {train} |")
    if floor:
        fd, kid, acc = floor["fd"], floor["kid"], floor["accuracy"]
        lines.append(f"| real vs real (floor), n = {floor.get('n', n)} | | | {fd[0]:.2f} ± {fd[1]:.2f} | "
                     f"{kid[0]:.4f} ± {kid[1]:.4f} | {100 * acc[0]:.1f} % | |")
    return "\n".join(lines)


def trend_table(folder: Path) -> str:
    """FD of the consistency-distillation run's checkpoints (``cd_trend/step_N.json``, the 800- and
    5,000-step files) against its training steps."""
    found = {}
    for path in [folder / "cd_800.json", *sorted((folder / "cd_trend").glob("step_*.json")), folder / "cd.json"]:
        if path.is_file():
            for r in json.loads(path.read_text())["rows"]:
                found.setdefault(r["step"], {})[r["steps"]] = r
    if not found:
        return ""
    lines = ["| CD training steps | 1 step: FD ± | accuracy | 4 steps: FD ± | accuracy |", "|---:|---|---:|---|---:|"]
    for step in sorted(found):
        cells = []
        for k in (1, 4):
            r = found[step].get(k)
            cells += ([f"{r['fd']:.2f} ± {r['fd_std']:.2f}", f"{100 * r['accuracy']:.1f} %"] if r else ["", ""])
        lines.append(f"| {step:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SWAP_FILES = (  # (file in swaps/, which student and teacher)
    ("steps-8.json", "first run's 8-step student, 2,500 steps; teacher: the shipped model"),
    ("snr_steps-8.json", "first round weighted by SNR"),
    ("longer_steps-8.json", "first run's 8-step student trained 2,500 more"),
    ("rerun_steps-4.json", "re-run's 4-step student; teacher: the first run's 8-step student"),
    ("longer_steps-4.json", "4-step student of the longer first round; teacher: that 8-step student"),
)


def swaps_table(folder: Path) -> str:
    """FD of the chains of ``scripts/pd_diagnose.py swaps`` (``swaps/*.json``: n images from one shared
    x_T each), one row per chain."""
    lines = ["| student (and teacher) | chain | FD (paired) | class accuracy |", "|---|---|---:|---:|"]
    for name, label in SWAP_FILES:
        path = folder / "swaps" / name
        if path.is_file():
            for r in json.loads(path.read_text())["rows"]:
                lines.append(f"| {label} | {r['chain']} | {r['fd']:.3f} ± {r['fd_std']:.3f} | "
                             f"{100 * r['accuracy']:.1f} % |")
    return "\n".join(lines) if len(lines) > 2 else ""


def guidance_table(folder: Path) -> str:
    out = []
    acc_path = folder / "classifier_accuracy.json"
    if acc_path.is_file():
        data = json.loads(acc_path.read_text())
        out += ["| t range (code steps) | n | held-out accuracy |", "|---|---:|---:|"]
        for r in data["rows"]:
            lo, hi = r["t_range"]
            out.append(f"| {lo}–{hi} | {r['n']} | {100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f} % |")
        out.append("")
    path = folder / "classifier_guidance.json"
    if path.is_file():
        data = json.loads(path.read_text())
        out += ["| classifier scale s | sampler | FD | KID | requested-class accuracy |", "|---:|---|---:|---:|---:|"]
        for r in sorted(data["rows"], key=lambda r: (r["describe"], r["classifier_scale"])):
            acc = f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f} %"
            out.append(f"| {r['classifier_scale']:g} | {r['describe']} | {r['fd']:.2f} ± {r['fd_std']:.2f} | "
                       f"{r['kid']:.4f} ± {r['kid_std']:.4f} | {acc} |")
    return "\n".join(out)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/quality/distill")
    print(table(folder))
    for sub in sorted(folder.glob("pd_*_teacher")):
        print(f"\n{sub.name}:\n")
        print(table(sub))
        if swaps_table(sub):
            print(f"\n{sub.name}, paired chains (scripts/pd_diagnose.py swaps):\n")
            print(swaps_table(sub))
    print()
    print(trend_table(folder))
    print()
    print(guidance_table(folder))
