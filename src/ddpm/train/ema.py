"""Exponential moving average of the weights (the authors' ``make_ema``; decay 0.9999, Ho et al. 2020, App. B).

The first update copies the weights (TF used decay 1e-10 at global step 0); afterwards
``ema = decay * ema + (1 - decay) * w``, once per optimizer step, as one fused foreach call.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds an eval-mode copy of ``model`` whose parameters track an exponential moving average."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.initialized = False  # False until the first update has copied the weights
        self._ema = [p for p in self.model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = [p.detach() for p in model.parameters()]
        if not self.initialized:
            torch._foreach_copy_(self._ema, params)
            self.initialized = True
        else:
            torch._foreach_lerp_(self._ema, params, 1.0 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], initialized: bool = True) -> None:
        self.model.load_state_dict(state)
        self.initialized = initialized
