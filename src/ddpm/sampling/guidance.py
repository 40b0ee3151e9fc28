"""Classifier-free guidance (Ho & Salimans 2021) as a model wrapper.

With guidance scale w ≥ 0 the guided noise prediction is

    ε̃(x, c) = (1 + w) · ε(x, c) − w · ε(x, ∅)

(Ho & Salimans' convention: w = 0 is the conditional model alone; diffusers/Imagen's "scale" s is
1 + w). The conditional and unconditional passes run as ONE forward of batch 2B. Because x̂0 and the
x_{t−1} mean are affine in ε for fixed x_t, the same combination applied to an ``xstart`` or ``xprev``
output is the same guidance, so the wrapper combines the mean channels whatever the mean type. With
learned variances (2C output channels) only the first C channels are guided; the variance channels
are the conditional pass's.
"""

from __future__ import annotations

import torch

from ddpm.errors import ConfigError


class ClassifierFreeGuidance:
    """``model(x, t, y=labels)`` → guided output; ``null_label`` is the label index meaning "∅".

    ``data_channels`` is the number of image channels C; outputs with 2C channels are treated as
    [mean part, variance part]. Calls with ``y=None`` run the unconditional model unguided.
    """

    def __init__(self, model, scale: float, null_label: int, data_channels: int):
        if scale < 0:
            raise ConfigError(f"guidance scale must be ≥ 0 (0 = conditional model alone), got {scale}")
        self.model = model
        self.scale = float(scale)
        self.null_label = int(null_label)
        self.data_channels = int(data_channels)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if y is None or self.scale == 0.0:
            return self.model(x, t, y=y, **kwargs)
        null = torch.full_like(y, self.null_label)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null]), **kwargs)
        cond, uncond = out.chunk(2)
        return guided_output(cond, uncond, self.scale, self.data_channels)


def guided_output(cond: torch.Tensor, uncond: torch.Tensor, scale: float, data_channels: int) -> torch.Tensor:
    """(1 + w)·cond − w·uncond on the first ``data_channels`` channels; the rest (a learned
    variance) are taken from ``cond`` unchanged."""
    c = data_channels
    mean = (1.0 + scale) * cond[:, :c] - scale * uncond[:, :c]
    if cond.shape[1] == c:
        return mean
    return torch.cat([mean, cond[:, c:]], dim=1)
