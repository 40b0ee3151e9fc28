"""What a run directory says about its training: progress, time trained, newest sample grid, and which
checkpoints verify — for ``ddpm info RUN`` and ``ddpm plot RUN``."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ddpm import checkpoint as ckpt
from ddpm.errors import CheckpointError
from ddpm.train.loop_io import format_duration
from ddpm.train.metrics import read_metrics


@dataclass
class CheckpointStatus:
    path: Path
    ok: bool
    detail: str  # "sha256" / "sizes only (...)" when ok, else the reason it fails
    resumable: bool = False


@dataclass
class RunSummary:
    run_dir: Path
    lines: list[str] = field(default_factory=list)
    checkpoints: list[CheckpointStatus] = field(default_factory=list)

    @property
    def usable(self) -> Path | None:
        """The newest checkpoint that verifies (what sampling and --resume use)."""
        ok = [c for c in self.checkpoints if c.ok]
        return ok[-1].path if ok else None

    @property
    def resumable(self) -> Path | None:
        ok = [c for c in self.checkpoints if c.ok and c.resumable]
        return ok[-1].path if ok else None


def checkpoint_status(directory: Path) -> CheckpointStatus:
    """Whether ``directory`` passes :func:`ddpm.checkpoint.check_checkpoint` (hashes, keys, shapes, finite
    weights) and, for training checkpoints, whether its training state is complete."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the no-hash note is part of the detail here
        try:
            manifest = ckpt.check_checkpoint(directory)
            resumable = "train_state.json" in manifest["files"]
            if resumable:
                ckpt.load_train_state(directory)
        except CheckpointError as e:
            return CheckpointStatus(directory, False, str(e))
    how = "sha256" if "sha256" in manifest else "sizes only: written before content hashes"
    return CheckpointStatus(directory, True, how, resumable)


def _last(records: list[dict], key: str):
    for r in reversed(records):
        if r.get(key) is not None:
            return r
    return None


def run_summary(run_dir: str | Path) -> RunSummary:
    run = Path(run_dir)
    out = RunSummary(run)
    target = None
    try:
        target = json.loads((run / "config.json").read_text())["train"]["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    records = read_metrics(run) if (run / "metrics.jsonl").is_file() else []
    last = _last(records, "loss")
    if last is not None:
        of = f" of {target:,} ({100 * last['step'] / target:.1f}%)" if isinstance(target, int) and target > 0 else ""
        timed = _last(records, "elapsed")
        trained = f"; trained {format_duration(timed['elapsed'])}" if timed else ""
        out.lines.append(f"progress:    step {last['step']:,}{of}; last logged loss {last['loss']:.4g}{trained}")
    else:
        out.lines.append("progress:    nothing logged yet")
    grids = sorted((run / "samples").glob("step_*.png")) if (run / "samples").is_dir() else []
    if grids:
        out.lines.append(f"newest grid: {grids[-1]}")
    for d in ckpt.list_checkpoints(run):
        st = checkpoint_status(d)
        out.checkpoints.append(st)
        if st.ok:
            out.lines.append(f"verifies:    {d.name} yes ({st.detail}){'' if st.resumable else ', weights only'}")
        else:
            out.lines.append(f"verifies:    {d.name} NO: {st.detail}")
    return out


__all__ = ["RunSummary", "CheckpointStatus", "checkpoint_status", "run_summary"]
