"""The uniform average of several checkpoints' weights, written as one sampling checkpoint.

This is stochastic weight averaging (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and
Better Generalization", Algorithm 1 with a constant learning rate): the mean of the iterates a run
passed through, taken after training from the checkpoints it kept. It is the post-hoc counterpart of
the trainer's EMA, whose horizon is fixed before training (decay 0.995 averages over about 200 steps):
averaging the checkpoints of the last few thousand steps gives a longer horizon without re-training.
On the shipped digits model it is what made deterministic sampling match Algorithm 2 (docs/quality.md).

The average goes into the checkpoint's EMA slot, the weights that sampling and evaluation load by
default; ``averaged.json`` beside it records which checkpoints and which of their weights went in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from ddpm.checkpoint import (check_checkpoint, config_from_metadata, list_checkpoints, read_weights,
                             save_checkpoint)
from ddpm.errors import CheckpointError

WEIGHTS = {"ema": "ema.safetensors", "raw": "model.safetensors"}


def last_checkpoints(source: str | os.PathLike, k: int) -> list[Path]:
    """The ``k`` newest checkpoints of a run directory ``source``, or, when ``source`` is one checkpoint
    of a run (``RUN/checkpoints/step_N``), that one and the ``k - 1`` before it; oldest first."""
    src = Path(source)
    if (src / "checkpoints").is_dir():
        found = list_checkpoints(src)
    elif src.parent.name == "checkpoints" and src.name.startswith("step_") and src.is_dir():
        found = [p for p in list_checkpoints(src.parent.parent) if p.name <= src.name]
    else:
        found = []
    if not found:
        raise CheckpointError(f"{source} is not a run directory with checkpoints, nor a checkpoint inside one "
                              "(RUN/checkpoints/step_N); averaging needs the checkpoints of a run")
    if k > len(found):
        raise CheckpointError(f"{source} has {len(found)} checkpoint(s) to average, fewer than the {k} asked for; "
                              f"average {len(found)} or fewer")
    return found[-k:]


def average_checkpoints(sources: Sequence[str | os.PathLike], directory: str | os.PathLike, *,
                        weights: str = "raw", dtype: torch.dtype | None = None) -> Path:
    """Write the mean of the ``weights`` ("raw" or "ema") of the checkpoint directories ``sources`` (all of
    one network) to the checkpoint directory ``directory``; its config and step are the newest source's."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {sorted(WEIGHTS)}, not {weights!r}")
    if not sources:
        raise CheckpointError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    steps, network = [], None
    for src in sources:
        d = Path(src)
        check_checkpoint(d)
        path = d / WEIGHTS[weights]
        if not path.is_file():
            raise CheckpointError(f"{d} has no {WEIGHTS[weights]} (an exported, sampling-only checkpoint?); "
                                  "average training checkpoints, or choose the other --weights")
        state, meta = read_weights(path)
        cfg = config_from_metadata(meta, path)
        if network is None:
            network, first = (cfg.model, cfg.diffusion), d
        elif (cfg.model, cfg.diffusion) != network:
            raise CheckpointError(f"{d} is a different model from {first} (network or diffusion config differ); "
                                  "average checkpoints of one run")
        steps.append((int(meta.get("step", 0)), d, cfg))
        for k, v in state.items():
            if v.is_floating_point():  # float64 sums, rounded once to float32: order-independent in practice
                total[k] = total[k] + v.double() if k in total else v.double()
            else:  # integer buffers (counters) are not averaged: keep the last source's (the newest, in run order)
                total[k] = v
    mean = {k: (v / len(sources)).float() if v.is_floating_point() else v for k, v in total.items()}
    step, _, cfg = max(steps, key=lambda s: s[0])
    record = {"weights": weights, "count": len(sources),
              "sources": [{"checkpoint": str(d), "step": s} for s, d, _ in steps]}
    return save_checkpoint(directory, config=cfg, step=step, ema_state=mean, dtype=dtype,
                           extra_json={"averaged.json": record})
