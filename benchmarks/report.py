#!/usr/bin/env python
"""Render a bench.py results JSON as the Markdown tables used in BENCHMARKS.md.

    python benchmarks/report.py benchmarks/results/cpu.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CPU_TARGET, GPU_TARGET = 1.1, 1.5  # issue #6: ddpm's lead over the stronger diffusers variant

TITLES = {"train": "Training step (forward, backward, clip, Adam, EMA)",
          "ddpm": "Ancestral sampling, 1000 steps (per-step time extrapolated)",
          "ddim": "DDIM sampling, 50 steps, η = 0 (per-step time extrapolated)"}


def render(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"Command: `{res['command']}`  ",
        f"Date (UTC): {res['date_utc']}  ",
        f"Machine: {m.get('gpu', m['processor'])}, {m['cpu_count']} CPU cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), diffusers {m.get('diffusers', '-')}, Python {m['python']}  ",
        f"Load average (1 min) at start / end: {m['loadavg_start'][0]:.2f} / {m['loadavg_end'][0]:.2f}  ",
        f"Model: preset `{res['preset']}`, {res['params']:,} parameters; "
        f"max |ddpm − diffusers| output difference with the same weights: "
        f"{res.get('max_abs_diff_vs_diffusers', float('nan')):.1e}  ",
        f"FLOPs per image (torch.utils.flop_counter): forward {res['flops']['forward_per_image'] / 1e9:.2f} G, "
        f"training step {res['flops']['train_step_per_image'] / 1e9:.2f} G  ",
        f"ddpm training step measured through: `{res.get('ddpm_train_step', '?')}`",
        "",
    ]
    for precision, mode in res["modes"].items():
        lines.append(f"### {precision} (peak {mode['peak_flops'] / 1e12:.3f} TFLOP/s, {mode['peak_source']})")
        lines.append("")
        for group in ("train", "ddpm", "ddim"):
            if group not in mode:
                continue
            g = mode[group]
            chain = {"train": None, "ddpm": 1000, "ddim": 50}[group]
            lines.append(f"**{TITLES[group]}**, batch {g['batch']}, "
                         f"{len(next(iter(g['contenders'].values()))['sec_per_step_all'])} timed rounds")
            lines.append("")
            if chain is None:
                lines.append("| contender | s/step (median) | images/s | % of peak | ratio ddpm/x (wall) | ratio (CPU time) |")
                lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
            else:
                lines.append(f"| contender | s/step (median) | NFE/s | images/s ({chain} steps) | % of peak "
                             "| ratio ddpm/x (wall) | ratio (CPU time) |")
                lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for name, row in g["contenders"].items():
                key = next((k for k in g["ratios"] if k.endswith("/" + name)), None)
                ratio = f"{g['ratios'][key]:.2f}×" if key else "—"
                cratio = f"{g['cpu_time_ratios'][key]:.2f}×" if key and "cpu_time_ratios" in g else "—"
                peak = f"{100 * row.get('fraction_of_peak', 0):.1f}"
                if chain is None:
                    lines.append(f"| {name} | {row['sec_per_step_median']:.3f} | {row['images_per_s']:.2f} | {peak} "
                                 f"| {ratio} | {cratio} |")
                else:
                    lines.append(f"| {name} | {row['sec_per_step_median']:.3f} | {row['nfe_per_s']:.2f} "
                                 f"| {row['images_per_s_extrapolated']:.4f} | {peak} | {ratio} | {cratio} |")
            lines.append("")
            paired = g.get("paired_ratios", {})
            if paired:  # results files from before run 8 lack the per-round pairing
                target = GPU_TARGET if "gpu" in m else CPU_TARGET
                conf = round(100 * next(iter(paired.values()))["confidence"])
                lines.append(f"| ddpm against | per-round ratio, median | {conf} % bootstrap interval "
                             f"| ≥ {target}× target |")
                lines.append("| --- | ---: | ---: | --- |")
                for key, pr in paired.items():
                    lines.append(f"| {key.split('/', 1)[1]} | {pr['median']:.3f}× | {pr['ci_low']:.3f}–{pr['ci_high']:.3f}× "
                                 f"| {verdict(pr, target)} |")
                lines.append("")
    return "\n".join(lines)


def verdict(summary: dict, target: float) -> str:
    """'met' when the whole interval is at or above ``target``, 'not met' when it lies below it,
    else 'undecided': the rounds cannot tell."""
    if summary["ci_low"] >= target:
        return "met"
    return "not met" if summary["ci_high"] < target else "undecided"


def main(argv=None) -> int:
    for path in (argv if argv is not None else sys.argv[1:]):
        print(render(json.loads(Path(path).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
