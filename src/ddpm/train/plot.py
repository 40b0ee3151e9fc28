"""A run's training curves as one figure: the loss (log scale, raw and smoothed), the loss by timestep
bucket, and — when the run directory holds ``ddpm eval quality --json`` / ``ddpm eval sweep`` results —
the quality instrument's FD against the training step."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ddpm.errors import ConfigError, UserError
from ddpm.train.metrics import bucket_edges, read_metrics

FORMATS = (".png", ".pdf", ".svg")


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased so the first points are not pulled to 0 (as TensorBoard's
    smoothing slider); ``weight`` 0 returns the values."""
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(acc / norm if norm > 0 else v)
    return out


def quality_points(run_dir: Path) -> list[dict]:
    """Rows with ``step`` and ``fd`` from JSON files under ``run_dir`` written by ``ddpm eval quality --json``
    (one row) or ``ddpm eval sweep`` ({"rows": [...]}); other JSON files are ignored."""
    rows = []
    for path in sorted(run_dir.rglob("*.json")):
        if any(part in ("checkpoints", "tensorboard") for part in path.relative_to(run_dir).parts):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        candidates = data.get("rows", [data]) if isinstance(data, dict) else []
        for r in candidates if isinstance(candidates, list) else []:
            if isinstance(r, dict) and isinstance(r.get("step"), int) and isinstance(r.get("fd"), (int, float)):
                rows.append(r)
    return rows


def check_output(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"--out {out}: the plot is written as {', '.join(FORMATS)}; pick one of those suffixes")
    return out


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, smoothing: float = 0.9) -> Path:
    """Write the figure of ``run_dir`` to ``out`` (default ``RUN/loss.png``); returns the path."""
    run = Path(run_dir)
    if not (run / "metrics.jsonl").is_file():
        raise UserError(f"{run} has no metrics.jsonl; pass a run directory written by `ddpm train`")
    out = check_output(out if out is not None else run / "loss.png")
    records = [r for r in read_metrics(run) if isinstance(r.get("loss"), (int, float))]
    if not records:
        raise UserError(f"{run}/metrics.jsonl holds no loss yet; plot again after the first log step")
    try:
        T = int(json.loads((run / "config.json").read_text())["diffusion"]["num_timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        T = None
    quality = quality_points(run)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if quality else 1
    fig, axes = plt.subplots(panels, 1, figsize=(8, 4.5 * panels), squeeze=False, sharex=True)
    ax = axes[0][0]
    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    ax.plot(steps, losses, color="0.75", lw=0.8, label="loss (logged)")
    ax.plot(steps, smooth(losses, smoothing), color="k", lw=1.6, label=f"loss (smoothed {smoothing:g})")
    by_t = [r for r in records if isinstance(r.get("loss_by_t"), list)]
    if by_t:
        n = len(by_t[0]["loss_by_t"])
        edges = bucket_edges(T) if T and len(bucket_edges(T)) == n + 1 else None
        cmap = plt.get_cmap("viridis")
        for k in range(n):
            pts = [(r["step"], r["loss_by_t"][k]) for r in by_t
                   if len(r["loss_by_t"]) == n and r["loss_by_t"][k] is not None and r["loss_by_t"][k] > 0]
            if not pts:
                continue
            label = f"t {edges[k]}–{edges[k + 1] - 1}" if edges else f"bucket {k}"
            ax.plot([p[0] for p in pts], smooth([p[1] for p in pts], smoothing), color=cmap(k / max(n - 1, 1)),
                    lw=1.0, label=label)
    ax.set_yscale("log")
    ax.set_ylabel("training loss")
    ax.set_title(f"{run.name}: loss by step" + (" and by timestep bucket" if by_t else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if quality:
        qa = axes[1][0]
        groups: dict[str, list[dict]] = {}
        for r in quality:
            key = r.get("describe") or f"{r.get('sampler', '?')} {r.get('steps') or 'all'} steps"
            groups.setdefault(str(key), []).append(r)
        for key, rows in sorted(groups.items()):
            rows.sort(key=lambda r: r["step"])
            err = [r.get("fd_std") if isinstance(r.get("fd_std"), (int, float)) and math.isfinite(r["fd_std"])
                   else 0.0 for r in rows]
            qa.errorbar([r["step"] for r in rows], [r["fd"] for r in rows], yerr=err, marker="o", capsize=3,
                        label=f"{key} (n = {rows[0].get('n', '?')})")
        qa.set_ylabel("FD (digits features) ± its recorded std")
        qa.grid(True, alpha=0.3)
        qa.legend(fontsize=7)
    axes[-1][0].set_xlabel("step")
    fig.tight_layout()
    tmp = out.with_name(f".tmp-{out.name}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, out)  # a failed write leaves the previous plot, never a partial one
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return out


__all__ = ["plot_run", "quality_points", "smooth"]
