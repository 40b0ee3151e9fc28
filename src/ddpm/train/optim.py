"""The optimizer side of a training step: learning rate (warm-up, then an optional decay), Adam or AdamW,
and the loss scaler of fp16 training.

The paper's recipe is the default: Adam without weight decay and a constant rate after a linear warm-up
(Ho et al. 2020, App. B). The other settings are knobs practitioners expect:

- ``train.lr_schedule``: ``constant`` (the paper), ``cosine`` (Loshchilov & Hutter 2017, SGDR, without
  restarts) or ``linear`` decay from ``train.lr`` after the warm-up to ``train.lr·train.lr_final_ratio``
  at ``train.steps``, constant after that;
- ``train.weight_decay`` > 0: AdamW, decoupled weight decay (Loshchilov & Hutter 2019);
- ``train.precision=fp16``: float16 autocast needs its loss scaled so that small gradients do not flush
  to zero (Micikevicius et al. 2018, Mixed Precision Training, §3.2) — PyTorch's ``GradScaler``, which
  also skips a step whose gradients overflowed. bf16 has fp32's exponent range and needs no scaler.
"""

from __future__ import annotations

import math

import torch

from ddpm import accel

LR_SCHEDULES = ("constant", "cosine", "linear")


def warmup_lr(base_lr: float, warmup: int, step: int) -> float:
    """Learning rate of update number ``step`` (1 for the first update): lr·min(step/warmup, 1).

    The authors' ``get_warmed_up_lr`` evaluates the same formula at the global step *before* the
    increment, so their first update has lr 0 and only primes Adam's moments; we count the first update
    as 1, which shifts their ramp by one step (documented in docs/training.md).
    """
    if warmup <= 0:
        return base_lr
    return base_lr * min(step / warmup, 1.0)


def learning_rate(train, step: int) -> float:
    """Learning rate of update ``step`` (1-based) under ``train`` (a TrainConfig): the warm-up ramp,
    then ``train.lr_schedule`` over the updates ``warmup`` … ``steps``."""
    lr = warmup_lr(train.lr, train.warmup, step)
    if train.lr_schedule == "constant" or step <= train.warmup:
        return lr
    span = max(train.steps - train.warmup, 1)
    progress = min((step - train.warmup) / span, 1.0)
    r = train.lr_final_ratio
    if train.lr_schedule == "cosine":
        return train.lr * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return train.lr * (1.0 - (1.0 - r) * progress)  # linear


def build_optimizer(params, train, device) -> torch.optim.Optimizer:
    """Adam as in the paper, or AdamW when ``train.weight_decay`` > 0; fused where PyTorch has it."""
    kw = dict(lr=train.lr, betas=tuple(train.adam_betas), eps=train.adam_eps, **accel.optimizer_kwargs(device))
    if train.weight_decay > 0:
        return torch.optim.AdamW(params, weight_decay=train.weight_decay, **kw)
    return torch.optim.Adam(params, weight_decay=0.0, **kw)


class LossScaler:
    """``torch.amp.GradScaler`` for fp16; for every other precision each call is the plain one."""

    def __init__(self, precision: str, device: torch.device):
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:  # skips the update when the scaled gradients overflowed, then adapts the scale
            self.scaler.step(optimizer)
            self.scaler.update()

    @property
    def skips_overflow(self) -> bool:
        """Whether an inf/NaN gradient is a skipped step (fp16) rather than a failed run."""
        return self.scaler is not None

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


__all__ = ["LR_SCHEDULES", "warmup_lr", "learning_rate", "build_optimizer", "LossScaler"]
